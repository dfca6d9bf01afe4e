//! Who may do what: the roles of the API's clients, and the tokens that
//! give them.

use serde::{Deserialize, Serialize};

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads public groups only: a local client with neither a token nor
    /// root.
    Anonymous,
    /// Reads everything.
    Viewer,
    /// Reads and changes everything.
    Owner,
}

/// A token as listed: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The first digits of the token's SHA-256 digest.
    pub id: String,
    pub role: Role,
    /// Unix time of creation.
    pub created: i64,
}
