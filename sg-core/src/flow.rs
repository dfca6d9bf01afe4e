//! A tracked flow's state, by name: what `sg-ctl conntrack list` shows and
//! `--state` takes, for the datapath's `sg_common::conntrack_state`.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use sg_common::conntrack_state;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowState {
    /// UDP, ICMP echo or another protocol, seen in its origin direction.
    New,
    /// Seen in both directions.
    Replied,
    /// TCP: the SYN went out.
    SynSent,
    /// TCP: the SYN-ACK came back.
    SynReceived,
    Established,
    /// TCP: one side sent a FIN.
    FinWait,
    /// TCP: both sides sent a FIN.
    TimeWait,
}

impl FlowState {
    pub const ALL: [FlowState; 7] = [
        FlowState::New,
        FlowState::Replied,
        FlowState::SynSent,
        FlowState::SynReceived,
        FlowState::Established,
        FlowState::FinWait,
        FlowState::TimeWait,
    ];

    /// The datapath's number of the state.
    pub const fn raw(self) -> u8 {
        match self {
            FlowState::New => conntrack_state::NEW,
            FlowState::Replied => conntrack_state::REPLIED,
            FlowState::SynSent => conntrack_state::SYN_SENT,
            FlowState::SynReceived => conntrack_state::SYN_RECEIVED,
            FlowState::Established => conntrack_state::ESTABLISHED,
            FlowState::FinWait => conntrack_state::FIN_WAIT,
            FlowState::TimeWait => conntrack_state::TIME_WAIT,
        }
    }

    /// The state of the datapath's number; `None` for one this side does
    /// not know.
    pub fn from_raw(raw: u8) -> Option<FlowState> {
        FlowState::ALL.into_iter().find(|state| state.raw() == raw)
    }

    pub const fn name(self) -> &'static str {
        match self {
            FlowState::New => "new",
            FlowState::Replied => "replied",
            FlowState::SynSent => "syn-sent",
            FlowState::SynReceived => "syn-received",
            FlowState::Established => "established",
            FlowState::FinWait => "fin-wait",
            FlowState::TimeWait => "time-wait",
        }
    }
}

impl fmt::Display for FlowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FlowState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        FlowState::ALL
            .into_iter()
            .find(|state| state.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = FlowState::ALL.iter().map(|s| s.name()).collect();
                format!(
                    "{} is not a state; use one of {}",
                    crate::text::Quoted(text),
                    names.join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_go_by_name_and_number_both_ways() {
        for state in FlowState::ALL {
            assert_eq!(FlowState::from_raw(state.raw()), Some(state));
            assert_eq!(state.name().parse::<FlowState>(), Ok(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.name()));
        }
        assert_eq!(FlowState::from_raw(200), None);
        let err = "open".parse::<FlowState>().unwrap_err();
        assert!(err.contains("established"), "{err}");
    }
}
