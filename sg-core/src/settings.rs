//! The host's settings: its limits, the outbound SMTP block, the
//! connection-tracking timeouts and the flows a port may hold, with their
//! defaults and validation; and the policy the datapath enforces under
//! them.

use serde::{Deserialize, Deserializer, Serialize};
use sg_common::{DEFAULT_FLOWS_PER_PORT, Timeout};

use ipnet::IpNet;

use crate::model::{FieldError, Policy, Port, flows, number_field};

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
    /// The flows a port may hold in the connection table unless it says
    /// otherwise (`Port::max_flows`), as a cloud's per-interface allowance
    /// of tracked connections: past it, the port's new flows are dropped
    /// (`drop-conntrack-port-full`) and other ports are untouched.
    #[serde(deserialize_with = "flows")]
    pub max_flows_per_port: u32,
    /// The widest allowed address pair a port may have without saying it
    /// means it (`allow_wide`): a pair makes the port a member of every
    /// address in it, so a pair of 0.0.0.0/0 would let a `remote: {group}`
    /// rule match any source.
    #[serde(deserialize_with = "prefix")]
    pub min_pair_prefix_ipv4: u8,
    #[serde(deserialize_with = "prefix")]
    pub min_pair_prefix_ipv6: u8,
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
            max_flows_per_port: DEFAULT_FLOWS_PER_PORT,
            min_pair_prefix_ipv4: 8,
            min_pair_prefix_ipv6: 32,
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
            ("max_flows_per_port", self.max_flows_per_port as usize),
        ] {
            if value == 0 {
                return Err(FieldError::new(field, "0 leaves no room; use 1 or more"));
            }
        }
        for (field, prefix, max) in [
            ("min_pair_prefix_ipv4", self.min_pair_prefix_ipv4, 32),
            ("min_pair_prefix_ipv6", self.min_pair_prefix_ipv6, 128),
        ] {
            if prefix > max {
                return Err(FieldError::new(
                    field,
                    format!("/{prefix} is longer than an address; use 0-{max}"),
                ));
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

    /// Refuses the allowed address pairs of `port` wider than the settings'
    /// minimum prefixes, unless each says it means it.
    pub fn check_pairs(&self, port: &Port) -> Result<(), FieldError> {
        for pair in port.allowed_address_pairs.iter().filter(|p| !p.allow_wide) {
            let (min, setting) = match pair.ip {
                IpNet::V4(_) => (self.min_pair_prefix_ipv4, "min_pair_prefix_ipv4"),
                IpNet::V6(_) => (self.min_pair_prefix_ipv6, "min_pair_prefix_ipv6"),
            };
            if pair.ip.prefix_len() < min {
                return Err(FieldError::new(
                    "allowed_address_pairs",
                    format!(
                        "{} is wider than /{min} (setting {setting}): the port would be a \
                         member of every address in it for its groups' `remote: {{group}}` \
                         rules; use a narrower prefix, or say you mean it (`allow_wide: \
                         true`, or --allow-wide-pair)",
                        pair.ip
                    ),
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
    /// A flow of any protocol but TCP until it has a reply; the kind's
    /// own timeout after.
    #[serde(deserialize_with = "seconds")]
    pub unreplied: u32,
}

/// A limit, as a number or its text (`settings set` sends either).
fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let max = u64::try_from(usize::MAX).unwrap_or(u64::MAX);
    number_field(deserializer, max, "a whole number, 1 or more")
}

fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    number_field(deserializer, u32::MAX.into(), "seconds, 1 or more")
}

/// A prefix length, as a number or its text.
fn prefix<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    number_field(
        deserializer,
        128,
        "a prefix length, 0-32 for IPv4 and 0-128 for IPv6",
    )
}

impl Default for ConntrackTimeouts {
    fn default() -> Self {
        let [tcp_established, tcp_closing, udp, icmp, other, unreplied] = Timeout::DEFAULT_SECONDS;
        Self {
            tcp_established,
            tcp_closing,
            udp,
            icmp,
            other,
            unreplied,
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
            ("conntrack.unreplied", Timeout::Unreplied, self.unreplied),
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
        settings.conntrack.udp = 30;
        settings.max_flows_per_port = 0;
        assert_eq!(
            settings.validate().unwrap_err().to_string(),
            "max_flows_per_port: 0 leaves no room; use 1 or more"
        );
        settings.max_groups_per_port = 0;
        assert_eq!(
            settings.validate().unwrap_err().to_string(),
            "max_groups_per_port: 0 leaves no room; use 1 or more"
        );
    }

    #[test]
    fn pairs_wider_than_the_settings_need_to_say_so() {
        let settings = Settings::default();
        let mut port = Port::new("vm1", "tap1", "52:54:00:00:00:01".parse().unwrap());
        for (pair, ok) in [
            ("198.18.0.0/15", true),
            ("10.0.0.0/8", true),
            ("0.0.0.0/0", false),
            ("2001:db8::/32", true),
            ("2001::/16", false),
        ] {
            port.allowed_address_pairs = vec![pair.parse().unwrap()];
            assert_eq!(settings.check_pairs(&port).is_ok(), ok, "{pair}");
        }
        let err = settings.check_pairs(&port).unwrap_err();
        assert!(err.message.contains("min_pair_prefix_ipv6"), "{err}");
        port.allowed_address_pairs[0].allow_wide = true;
        assert_eq!(settings.check_pairs(&port), Ok(()));
    }

    #[test]
    fn limits_are_whole_numbers_as_numbers_or_text() {
        let settings = |json: &str| crate::parse_json::<Settings>(json);
        assert_eq!(
            settings(
                r#"{"max_rules_per_group": "30", "max_flows_per_port": "1000",
                    "conntrack": {"udp": 60}}"#
            )
            .unwrap(),
            Settings {
                max_rules_per_group: 30,
                max_flows_per_port: 1000,
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
                r#"{"max_flows_per_port": 5000000000}"#,
                "max_flows_per_port: 5000000000 is out of range; use a number of flows, 1 or more",
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
        assert_eq!(sorted, [0, 1, 2, 3, 4, 5]);
        let defaults = ConntrackTimeouts::default().each().map(|(_, _, s)| s);
        for (kind, seconds) in kinds.into_iter().zip(defaults) {
            assert_eq!(Timeout::DEFAULT_SECONDS[kind], seconds);
        }
    }
}
