//! Where a port's policy stands in the datapath.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortPhase {
    /// Changed in the store, not yet in the datapath.
    Pending,
    /// The datapath enforces the stored policy.
    Active,
    /// The datapath could not be given the policy; `reason` says why.
    Error,
}

impl PortPhase {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Error => "error",
        }
    }

    /// The phase of a name from `name`; anything else is pending.
    pub fn from_name(text: &str) -> Self {
        match text {
            "active" => Self::Active,
            "error" => Self::Error,
            _ => Self::Pending,
        }
    }
}
