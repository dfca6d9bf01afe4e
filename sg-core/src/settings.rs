//! The host's settings: its limits, the outbound SMTP block and the
//! connection-tracking timeouts, with their defaults and validation; and
//! the policy the datapath enforces under them.

use serde::{Deserialize, Deserializer, Serialize};
use sg_common::Timeout;

use crate::model::{FieldError, Policy, number_field};

/// Limits and defaults of this host, changed with `sg-ctl settings set`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Most rules a group may hold.
    #[serde(deserialize_with = "count")]
    pub max_rules_per_group: usize,
    /// Most groups a port may attach.
    #[serde(deserialize_with = "count")]
    pub max_groups_per_port: usize,
    /// Drop outbound TCP 25 unless a rule of the port allows port 25 by
    /// name (see `Policy::with_outbound_smtp_blocked`).
    pub block_outbound_smtp: bool,
    /// Connection-tracking timeouts in seconds, kept for the conntrack.
    pub conntrack: ConntrackTimeouts,
}

impl Default for Settings {
    /// AWS's default of 60 rules per direction, less room for its quotas:
    /// 50 rules per group; 5 groups per port as AWS and OpenStack.
    fn default() -> Self {
        Self {
            max_rules_per_group: 50,
            max_groups_per_port: 5,
            block_outbound_smtp: true,
            conntrack: ConntrackTimeouts::default(),
        }
    }
}

impl Settings {
    /// Refuses settings no host can work with: a limit of 0, a timeout of
    /// 0 seconds.
    pub fn validate(&self) -> Result<(), FieldError> {
        for (field, value) in [
            ("max_rules_per_group", self.max_rules_per_group),
            ("max_groups_per_port", self.max_groups_per_port),
        ] {
            if value == 0 {
                return Err(FieldError::new(field, "0 leaves no room; use 1 or more"));
            }
        }
        for (field, _, seconds) in self.conntrack.each() {
            if seconds == 0 {
                return Err(FieldError::new(
                    field,
                    "0 would end every flow at once; use seconds, 1 or more",
                ));
            }
        }
        Ok(())
    }
}

/// Seconds an idle flow is kept, per kind; Linux's defaults
/// (`sg_common::Timeout::DEFAULT_SECONDS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConntrackTimeouts {
    #[serde(deserialize_with = "seconds")]
    pub tcp_established: u32,
    /// TCP opening or closing (every state but established).
    #[serde(deserialize_with = "seconds")]
    pub tcp_closing: u32,
    #[serde(deserialize_with = "seconds")]
    pub udp: u32,
    /// ICMP and ICMPv6 echo.
    #[serde(deserialize_with = "seconds")]
    pub icmp: u32,
    /// Every other protocol.
    #[serde(deserialize_with = "seconds")]
    pub other: u32,
}

/// A limit, as a number or its text (`settings set` sends either).
fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let max = u64::try_from(usize::MAX).unwrap_or(u64::MAX);
    number_field(deserializer, max, "a whole number, 1 or more")
}

fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    number_field(deserializer, u32::MAX.into(), "seconds, 1 or more")
}

impl Default for ConntrackTimeouts {
    fn default() -> Self {
        let [tcp_established, tcp_closing, udp, icmp, other] = Timeout::DEFAULT_SECONDS;
        Self {
            tcp_established,
            tcp_closing,
            udp,
            icmp,
            other,
        }
    }
}

impl ConntrackTimeouts {
    /// Each timeout: its setting's name, the kind of flow it is for, and
    /// its seconds.
    pub fn each(&self) -> [(&'static str, Timeout, u32); Timeout::COUNT] {
        [
            (
                "conntrack.tcp_established",
                Timeout::TcpEstablished,
                self.tcp_established,
            ),
            (
                "conntrack.tcp_closing",
                Timeout::TcpClosing,
                self.tcp_closing,
            ),
            ("conntrack.udp", Timeout::Udp, self.udp),
            ("conntrack.icmp", Timeout::Icmp, self.icmp),
            ("conntrack.other", Timeout::Other, self.other),
        ]
    }
}

impl Policy {
    /// The policy the datapath enforces under `settings`: this one, with
    /// outbound SMTP blocked when the settings say so.
    pub fn effective(&self, settings: &Settings) -> Policy {
        if settings.block_outbound_smtp {
            self.with_outbound_smtp_blocked()
        } else {
            self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_limits_and_timeouts_name_their_setting() {
        let mut settings = Settings::default();
        assert_eq!(settings.validate(), Ok(()));
        settings.conntrack.udp = 0;
        assert_eq!(settings.validate().unwrap_err().field, "conntrack.udp");
        settings.max_groups_per_port = 0;
        assert_eq!(
            settings.validate().unwrap_err().to_string(),
            "max_groups_per_port: 0 leaves no room; use 1 or more"
        );
    }

    #[test]
    fn limits_are_whole_numbers_as_numbers_or_text() {
        let settings = |json: &str| crate::parse_json::<Settings>(json);
        assert_eq!(
            settings(r#"{"max_rules_per_group": "30", "conntrack": {"udp": 60}}"#).unwrap(),
            Settings {
                max_rules_per_group: 30,
                conntrack: ConntrackTimeouts {
                    udp: 60,
                    ..ConntrackTimeouts::default()
                },
                ..Settings::default()
            }
        );
        for (json, expected) in [
            (
                r#"{"max_rules_per_group": "abc"}"#,
                "max_rules_per_group: 'abc' is not a number; use a whole number, 1 or more",
            ),
            (
                r#"{"max_groups_per_port": -2}"#,
                "max_groups_per_port: -2 is out of range; use a whole number, 1 or more",
            ),
            (
                r#"{"conntrack": {"udp": 1e10}}"#,
                "conntrack.udp: 10000000000 is out of range; use seconds, 1 or more",
            ),
            (
                r#"{"conntrack": {"tcp": 5}}"#,
                "conntrack.tcp: unknown field `tcp`, expected one of",
            ),
        ] {
            let err = settings(json).unwrap_err();
            assert!(err.starts_with(expected), "{json}: {err}");
        }
    }

    #[test]
    fn every_kind_of_flow_has_its_timeout_once() {
        let kinds = ConntrackTimeouts::default()
            .each()
            .map(|(_, kind, _)| kind as usize);
        let mut sorted = kinds;
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3, 4]);
        let defaults = ConntrackTimeouts::default().each().map(|(_, _, s)| s);
        for (kind, seconds) in kinds.into_iter().zip(defaults) {
            assert_eq!(Timeout::DEFAULT_SECONDS[kind], seconds);
        }
    }
}
