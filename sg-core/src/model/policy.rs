//! Ports and the policy: every group and every port of a host, checked
//! against each other.

use std::{collections::HashSet, fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sg_common::MAX_DHCP_SERVERS;

use super::{
    Action, Direction, FieldError, Group, IpProtocol, PolicyError, PortSpec, Protocol, Remote,
    Rule,
    syntax::{self, check_name, serde_as_text},
};
use crate::text::{Quoted, is_control};

/// The group [`Policy::with_outbound_smtp_blocked`] adds. It starts with
/// `_`, which names of users' groups may not, so it never meets one.
pub const SMTP_BLOCK_GROUP: &str = "_smtp-block";
/// SMTP's port, blocked outbound unless a port's rules name it.
pub const SMTP_PORT: u16 = 25;

/// An Ethernet address, written `52:54:00:12:34:56` (or with `-`).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Neither multicast/broadcast nor all zeros: an address a port can own.
    pub fn is_unicast(self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl FromStr for MacAddr {
    type Err = FieldError;

    fn from_str(text: &str) -> Result<Self, FieldError> {
        let bytes: Option<Vec<u8>> = text
            .trim()
            .split([':', '-'])
            .map(|byte| {
                let hex = byte.len() == 2 && byte.bytes().all(|b| b.is_ascii_hexdigit());
                hex.then(|| u8::from_str_radix(byte, 16).ok()).flatten()
            })
            .collect();
        bytes
            .and_then(|bytes| bytes.try_into().ok())
            .map(Self)
            .ok_or_else(|| {
                FieldError::new(
                    "mac",
                    format!(
                        "{} is not a MAC address; use six hex bytes such as 52:54:00:12:34:56",
                        Quoted(text.trim())
                    ),
                )
            })
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

serde_as_text!(MacAddr);

/// Addresses a port may also send from (a VIP, a container network
/// behind a VM), with the MAC they use if not the port's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPair {
    #[serde(deserialize_with = "syntax::cidr")]
    pub ip: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// A prefix wider than the host's settings allow (see
    /// `Settings::check_pairs`), said to be meant: the port is then a
    /// member, for `remote: {group: …}` rules, of every address in it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_wide: bool,
}

/// A pair as users write it on a command line: `IP` or `CIDR`, then
/// optionally `,MAC`.
impl FromStr for AddressPair {
    type Err = FieldError;

    fn from_str(text: &str) -> Result<Self, FieldError> {
        let (ip, mac) = match text.split_once(',') {
            Some((ip, mac)) => (ip, Some(mac)),
            None => (text, None),
        };
        Ok(AddressPair {
            ip: syntax::parse_cidr(ip)
                .map_err(|message| FieldError::new("allowed_address_pairs", message))?,
            mac: mac.map(str::parse).transpose()?,
            allow_wide: false,
        })
    }
}

/// A workload's port: the host-side interface of a VM's tap or a
/// container's veth, and what it may send and receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// Same form as group names.
    pub name: String,
    /// The host-side interface.
    pub ifname: String,
    pub mac: MacAddr,
    /// Fixed IPs: the workload's own addresses.
    #[serde(default, deserialize_with = "syntax::ip_list")]
    pub ips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_address_pairs: Vec<AddressPair>,
    /// Attached groups, at least one; their order breaks priority ties.
    pub groups: Vec<String>,
    /// Layer-2 and source-address anti-spoofing; on unless turned off.
    #[serde(default = "port_security_default")]
    pub port_security: bool,
    /// With port security: 802.1Q/802.1ad tagged frames may leave the
    /// workload (they are dropped otherwise).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_vlan: bool,
    /// With port security: any broadcast and multicast may leave the
    /// workload, not only what ARP, DHCP and neighbour discovery need.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_multicast: bool,
    /// The DHCP and DHCPv6 servers whose replies the port accepts, by
    /// address (a DHCPv6 server answers from its link-local one); any when
    /// empty. Their replies, and the workload's requests, pass whatever
    /// the rules say; replies from other servers are dropped.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "syntax::server_list"
    )]
    pub dhcp_servers: Vec<IpAddr>,
    /// The network namespace (a name of `ip netns`) holding `ifname`;
    /// `None` is the control plane's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The host whose daemon enforces the port, where several share the
    /// desired state (`sg-ctl daemon --store etcd://… --host NAME`); the
    /// daemon a port is made through fills in its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The flows the port may hold in the connection table; `None`, the
    /// host's `max_flows_per_port`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "max_flows"
    )]
    pub max_flows: Option<u32>,
}

fn max_flows<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    syntax::flows(deserializer).map(Some)
}

fn port_security_default() -> bool {
    true
}

fn is_false(value: &bool) -> bool {
    !value
}

/// Linux's IFNAMSIZ less the terminating NUL.
const IFNAME_MAX: usize = 15;
/// Linux's NAME_MAX: a namespace name is a file name under /run/netns.
const NETNS_MAX: usize = 255;

impl Port {
    /// A port in the `default` group, with port security on and no IPs yet.
    pub fn new(name: impl Into<String>, ifname: impl Into<String>, mac: MacAddr) -> Self {
        Self {
            name: name.into(),
            ifname: ifname.into(),
            mac,
            ips: Vec::new(),
            allowed_address_pairs: Vec::new(),
            groups: vec![super::DEFAULT_GROUP.into()],
            port_security: true,
            allow_vlan: false,
            allow_multicast: false,
            dhcp_servers: Vec::new(),
            netns: None,
            host: None,
            max_flows: None,
        }
    }

    /// Checks the port's own fields; whether its groups exist is the
    /// policy's to check.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.check().map_err(|error| PolicyError::Port {
            port: self.name.clone(),
            error,
        })
    }

    fn check(&self) -> Result<(), FieldError> {
        check_name("name", &self.name)?;
        let name = &self.ifname;
        if name.is_empty()
            || name.len() > IFNAME_MAX
            || name == "."
            || name == ".."
            || name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace() || is_control(c))
        {
            return Err(FieldError::new(
                "ifname",
                format!(
                    "{} is not an interface name; use 1-15 characters \
                     without /, :, spaces or control characters, as `ip link` shows them",
                    Quoted(name)
                ),
            ));
        }
        if let Some(netns) = &self.netns
            && (netns.is_empty()
                || netns.len() > NETNS_MAX
                || netns == "."
                || netns == ".."
                || netns.contains(|c: char| c == '/' || c.is_whitespace() || is_control(c)))
        {
            return Err(FieldError::new(
                "netns",
                format!(
                    "{} is not a namespace name; use a name of `ip netns list` \
                     (1-255 characters without /, spaces or control characters), or leave \
                     it out for the control plane's own namespace",
                    Quoted(netns)
                ),
            ));
        }
        if let Some(host) = &self.host {
            check_name("host", host)?;
        }
        let macs = std::iter::once(("mac", self.mac)).chain(
            self.allowed_address_pairs
                .iter()
                .filter_map(|pair| pair.mac)
                .map(|mac| ("allowed_address_pairs", mac)),
        );
        for (field, mac) in macs {
            if !mac.is_unicast() {
                return Err(FieldError::new(
                    field,
                    format!("{mac} is not a unicast address; use one such as 52:54:00:12:34:56"),
                ));
            }
        }
        for pair in &self.allowed_address_pairs {
            syntax::check_cidr(&pair.ip)
                .map_err(|message| FieldError::new("allowed_address_pairs", message))?;
        }
        self.check_dhcp_servers()?;
        if self.max_flows == Some(0) {
            return Err(FieldError::new(
                "max_flows",
                "0 leaves the port no flow; use 1 or more, or leave it out for the \
                 host's max_flows_per_port",
            ));
        }
        if self.groups.is_empty() {
            return Err(FieldError::new(
                "groups",
                "none attached; attach at least one (e.g. default)",
            ));
        }
        let mut seen = HashSet::new();
        for group in &self.groups {
            check_name("groups", group)?;
            if !seen.insert(group) {
                return Err(FieldError::new(
                    "groups",
                    format!("{group} is attached twice; attach each group once"),
                ));
            }
        }
        Ok(())
    }

    fn check_dhcp_servers(&self) -> Result<(), FieldError> {
        let servers = &self.dhcp_servers;
        if servers.len() > MAX_DHCP_SERVERS {
            return Err(FieldError::new(
                "dhcp_servers",
                format!(
                    "{} servers given; a port accepts at most {MAX_DHCP_SERVERS} (or any, when none is given)",
                    servers.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        for server in servers {
            let unicast = match server {
                IpAddr::V4(a) => !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast(),
                IpAddr::V6(a) => !a.is_unspecified() && !a.is_multicast(),
            };
            if !unicast {
                return Err(FieldError::new(
                    "dhcp_servers",
                    format!(
                        "{server} is not a server's address; use the unicast address it answers from \
                         (e.g. 198.18.0.1, or a DHCPv6 server's link-local fe80::1)"
                    ),
                ));
            }
            if !seen.insert(server) {
                return Err(FieldError::new(
                    "dhcp_servers",
                    format!("{server} is given twice; give each server once"),
                ));
            }
        }
        Ok(())
    }
}

/// Every group and port of a host: what the compiler turns into maps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub groups: Vec<Group>,
    #[serde(default)]
    pub ports: Vec<Port>,
}

/// A project as it starts: the `default` group and no ports.
impl Default for Policy {
    fn default() -> Self {
        Self::new()
    }
}

impl Policy {
    /// A policy holding the `default` group and no ports.
    pub fn new() -> Self {
        Self {
            groups: vec![Group::default_group()],
            ports: Vec::new(),
        }
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|group| group.name == name)
    }

    pub fn port(&self, name: &str) -> Option<&Port> {
        self.ports.iter().find(|port| port.name == name)
    }

    /// Checks every group and port, unique names and interfaces, and that
    /// every group a port attaches or a rule names as remote exists.
    /// Returns the first problem found.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let names = |kind, names: Vec<&String>| {
            let mut seen = HashSet::new();
            match names.into_iter().find(|name| !seen.insert(*name)) {
                Some(name) => Err(PolicyError::Duplicate {
                    kind,
                    name: name.clone(),
                }),
                None => Ok(()),
            }
        };
        names(
            "group",
            self.groups.iter().map(|group| &group.name).collect(),
        )?;
        names("port", self.ports.iter().map(|port| &port.name).collect())?;
        for group in &self.groups {
            group.validate()?;
            for (index, rule) in group.rules.iter().enumerate() {
                if let Remote::Group(name) = &rule.remote {
                    self.check_group_exists("remote", name)
                        .map_err(|error| PolicyError::Rule {
                            group: group.name.clone(),
                            index,
                            error,
                        })?;
                }
            }
        }
        for (index, port) in self.ports.iter().enumerate() {
            port.validate()?;
            let at_port = |error| PolicyError::Port {
                port: port.name.clone(),
                error,
            };
            for group in &port.groups {
                self.check_group_exists("groups", group).map_err(at_port)?;
            }
            if let Some(other) = self.ports[..index]
                .iter()
                .find(|other| other.ifname == port.ifname && other.host == port.host)
            {
                return Err(at_port(FieldError::new(
                    "ifname",
                    format!(
                        "{} is already the interface of port {}; each port has its own",
                        port.ifname, other.name
                    ),
                )));
            }
        }
        Ok(())
    }

    fn check_group_exists(&self, field: &'static str, name: &str) -> Result<(), FieldError> {
        if self.group(name).is_some() {
            return Ok(());
        }
        let known: Vec<&str> = self
            .groups
            .iter()
            .map(|group| group.name.as_str())
            .collect();
        Err(FieldError::new(
            field,
            format!(
                "no group named '{name}'; create it first, or use one of: {}",
                known.join(", ")
            ),
        ))
    }

    /// The addresses that stand for `group` when a rule's remote is that
    /// group: the fixed IPs (as /32 or /128) and the allowed address pairs
    /// of every port attached to it, and its external members; sorted,
    /// without repeats. Address pairs count because the port may send from
    /// them, as in OpenStack.
    pub fn members(&self, group: &str) -> Vec<IpNet> {
        let ports = self
            .ports
            .iter()
            .filter(|port| port.groups.iter().any(|g| g == group));
        let mut members: Vec<IpNet> = ports
            .flat_map(|port| {
                let ips = port.ips.iter().map(|&ip| IpNet::from(ip));
                ips.chain(port.allowed_address_pairs.iter().map(|pair| pair.ip))
            })
            .chain(
                self.group(group)
                    .into_iter()
                    .flat_map(|g| g.external_members.iter().copied()),
            )
            .collect();
        members.sort();
        members.dedup();
        members
    }
}

impl Policy {
    /// This policy with outbound SMTP (TCP port 25) dropped, as Exoscale
    /// does, except where a rule of the port lifts it: an egress allow rule
    /// naming tcp and port 25 itself (alone or in a list; a range that
    /// holds 25, such as `1-65535`, does not), and then only toward that
    /// rule's remotes (and from its local addresses). The block is a group
    /// of ordinary rules at priority 1, put first in the port's groups so
    /// that it goes before every other rule, and appended after the
    /// others, so the rules before it keep their counter ids: an allow of
    /// tcp/25 for each lifting rule, then the drop. Ports without a lifting
    /// rule share `SMTP_BLOCK_GROUP`; a port with some has its own
    /// (`SMTP_BLOCK_GROUP.port`), which counts its SMTP. The compiler and
    /// the reference matcher both take the policy this returns.
    pub fn with_outbound_smtp_blocked(&self) -> Policy {
        let mut policy = self.clone();
        let mut groups = Vec::new();
        for port in &mut policy.ports {
            let lifting: Vec<Rule> = port
                .groups
                .iter()
                .filter_map(|name| self.group(name))
                .flat_map(|group| &group.rules)
                .filter(|rule| names_smtp(rule))
                .map(|rule| Rule {
                    ethertype: rule.ethertype,
                    remote: rule.remote.clone(),
                    local: rule.local.clone(),
                    action: Action::Allow,
                    ..smtp_rule()
                })
                .collect();
            let name = if lifting.is_empty() {
                SMTP_BLOCK_GROUP.to_string()
            } else {
                format!("{SMTP_BLOCK_GROUP}.{}", port.name)
            };
            if !groups.iter().any(|group: &Group| group.name == name) {
                let mut rules = lifting;
                rules.push(smtp_rule());
                groups.push(Group {
                    name: name.clone(),
                    description: "outbound SMTP is blocked unless a rule allows tcp port 25 by \
                                  name, toward that rule's remotes"
                        .into(),
                    rules,
                    external_members: Vec::new(),
                    public: false,
                    egress_open_until_first_rule: false,
                });
            }
            port.groups.insert(0, name);
        }
        policy.groups.extend(groups);
        policy
    }
}

/// The block's drop: egress tcp/25 at the first priority.
fn smtp_rule() -> Rule {
    Rule {
        protocol: IpProtocol::TCP.into(),
        ports: PortSpec(vec![super::PortRange {
            start: SMTP_PORT,
            end: SMTP_PORT,
        }]),
        action: Action::Drop,
        priority: *super::PRIORITIES.start(),
        ..Rule::new(Direction::Egress)
    }
}

/// Whether a rule lifts the SMTP block: an egress allow of tcp naming port
/// 25 itself.
fn names_smtp(rule: &Rule) -> bool {
    rule.direction == Direction::Egress
        && rule.action == Action::Allow
        && matches!(&rule.protocol, Protocol::List(list) if list.contains(&IpProtocol::TCP))
        && rule
            .ports
            .0
            .iter()
            .any(|range| range.start == SMTP_PORT && range.end == SMTP_PORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(text: &str) -> MacAddr {
        text.parse().unwrap()
    }

    fn port(name: &str, ifname: &str, ips: &[&str], groups: &[&str]) -> Port {
        Port {
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Port::new(name, ifname, mac("52:54:00:12:34:56"))
        }
    }

    fn policy() -> Policy {
        let mut policy = Policy::new();
        policy.groups.push(Group::new("web").unwrap());
        let mut db = Group::new("db").unwrap();
        db.rules.push(Rule {
            protocol: "tcp".parse().unwrap(),
            ports: "3306".parse().unwrap(),
            remote: Remote::Group("web".into()),
            ..Rule::new(Direction::Ingress)
        });
        db.external_members = vec!["198.51.100.0/24".parse().unwrap()];
        policy.groups.push(db);
        policy.ports.push(port(
            "vm1",
            "tap1",
            &["10.0.0.5", "2001:db8::5"],
            &["web", "default"],
        ));
        policy
            .ports
            .push(port("vm2", "tap2", &["10.0.0.6"], &["db"]));
        policy
    }

    fn invalid(policy: &Policy) -> String {
        policy.validate().unwrap_err().to_string()
    }

    #[test]
    fn macs() {
        assert_eq!(
            mac("52:54:00:12:34:56").0,
            [0x52, 0x54, 0, 0x12, 0x34, 0x56]
        );
        assert_eq!(mac("52-54-00-AB-cd-EF").to_string(), "52:54:00:ab:cd:ef");
        for bad in [
            "52:54:00:12:34",
            "52:54:00:12:34:56:",
            "+2:54:00:12:34:56",
            "52:54:00:12:34:56:78",
            "5254.0012.3456",
            "52:54:00:12:34:5g",
            "2:54:00:12:34:56",
        ] {
            assert_eq!(
                bad.parse::<MacAddr>().unwrap_err().to_string(),
                format!(
                    "mac: '{bad}' is not a MAC address; use six hex bytes such as 52:54:00:12:34:56"
                )
            );
        }
        assert!(mac("52:54:00:12:34:56").is_unicast());
        assert!(!mac("01:00:5e:00:00:01").is_unicast());
        assert!(!mac("ff:ff:ff:ff:ff:ff").is_unicast());
        assert!(!MacAddr::default().is_unicast());
    }

    #[test]
    fn valid_policy_and_lookups() {
        let policy = policy();
        assert_eq!(policy.validate(), Ok(()));
        assert_eq!(policy.port("vm2").unwrap().ifname, "tap2");
        assert!(policy.group("nope").is_none());
        assert_eq!(Policy::new().validate(), Ok(()));
    }

    #[test]
    fn members_are_fixed_ips_pairs_and_external_members() {
        let mut policy = policy();
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        assert_eq!(
            policy.members("web"),
            [net("10.0.0.5/32"), net("2001:db8::5/128")]
        );
        assert_eq!(
            policy.members("db"),
            [net("10.0.0.6/32"), net("198.51.100.0/24")]
        );
        assert!(policy.members("nope").is_empty());
        policy.ports[0].allowed_address_pairs.push(AddressPair {
            ip: net("10.0.0.100/32"),
            mac: None,
            allow_wide: false,
        });
        policy
            .ports
            .push(port("vm3", "tap3", &["10.0.0.5"], &["web"]));
        assert_eq!(
            policy.members("web"),
            [
                net("10.0.0.5/32"),
                net("10.0.0.100/32"),
                net("2001:db8::5/128")
            ]
        );
    }

    #[test]
    fn unknown_groups_are_named() {
        let mut policy = policy();
        policy.ports[1].groups = vec!["dbb".into()];
        assert_eq!(
            invalid(&policy),
            "port 'vm2': groups: no group named 'dbb'; create it first, \
             or use one of: default, web, db"
        );
        let mut policy = self::policy();
        policy.groups[2].rules[2].remote = Remote::Group("wbe".into());
        assert_eq!(
            invalid(&policy),
            "group 'db': rules[2]: remote: no group named 'wbe'; create it first, \
             or use one of: default, web, db"
        );
    }

    #[test]
    fn duplicates_and_port_fields() {
        let mut twice = policy();
        twice.groups.push(Group::new("web").unwrap());
        assert_eq!(
            invalid(&twice),
            "group 'web' is defined twice; group names must be unique"
        );
        let mut twice = policy();
        twice.ports.push(port("vm1", "tap9", &[], &["web"]));
        assert_eq!(
            invalid(&twice),
            "port 'vm1' is defined twice; port names must be unique"
        );
        let mut shared = policy();
        shared.ports.push(port("vm3", "tap1", &[], &["web"]));
        assert_eq!(
            invalid(&shared),
            "port 'vm3': ifname: tap1 is already the interface of port vm1; each port has its own"
        );

        let error = |port: Port| port.validate().unwrap_err().to_string();
        let good = port("vm1", "tap1", &["10.0.0.5"], &["web"]);
        assert_eq!(good.validate(), Ok(()));
        assert_eq!(
            error(Port {
                groups: vec![],
                ..good.clone()
            }),
            "port 'vm1': groups: none attached; attach at least one (e.g. default)"
        );
        assert_eq!(
            error(Port {
                groups: vec!["web".into(), "web".into()],
                ..good.clone()
            }),
            "port 'vm1': groups: web is attached twice; attach each group once"
        );
        assert!(
            error(Port {
                name: "vm 1".into(),
                ..good.clone()
            })
            .starts_with("port 'vm 1': name: 'vm 1' contains ' '")
        );
        for ifname in ["", "a-very-long-ifname", "tap/1", "tap:1", "tap 1", ".."] {
            assert!(
                error(Port {
                    ifname: ifname.into(),
                    ..good.clone()
                })
                .starts_with(&format!(
                    "port 'vm1': ifname: '{ifname}' is not an interface name; use 1-15 characters"
                )),
                "{ifname}"
            );
        }
        assert_eq!(
            error(Port {
                mac: mac("01:00:5e:00:00:01"),
                ..good.clone()
            }),
            "port 'vm1': mac: 01:00:5e:00:00:01 is not a unicast address; \
             use one such as 52:54:00:12:34:56"
        );
        let pair = |ip: &str, mac_text: Option<&str>| AddressPair {
            ip: ip.parse().unwrap(),
            mac: mac_text.map(mac),
            allow_wide: false,
        };
        assert!(
            error(Port {
                allowed_address_pairs: vec![pair("10.0.0.7/24", None)],
                ..good.clone()
            })
            .starts_with("port 'vm1': allowed_address_pairs: 10.0.0.7/24 has host bits set")
        );
        assert!(
            error(Port {
                allowed_address_pairs: vec![pair("10.0.0.7/32", Some("ff:ff:ff:ff:ff:ff"))],
                ..good
            })
            .starts_with(
                "port 'vm1': allowed_address_pairs: ff:ff:ff:ff:ff:ff is not a unicast address"
            )
        );
    }

    #[test]
    fn control_characters_are_refused_and_long_names_cut() {
        let good = Port::new("vm1", "tap1", mac("52:54:00:12:34:56"));
        let error = |port: Port| port.validate().unwrap_err().to_string();
        assert!(
            error(Port {
                ifname: "tap\u{1b}[2J".into(),
                ..good.clone()
            })
            .starts_with(
                "port 'vm1': ifname: 'tap\\u{1b}[2J' is not an interface name; use 1-15 \
                 characters without /, :, spaces or control characters"
            )
        );
        assert!(
            error(Port {
                netns: Some("ns\u{7}".into()),
                ..good.clone()
            })
            .starts_with("port 'vm1': netns: 'ns\\u{7}' is not a namespace name")
        );
        let long = "x".repeat(10_000);
        let message = error(Port {
            name: long.clone(),
            ..good.clone()
        });
        assert!(message.len() < 400, "{message}");
        assert!(
            message.starts_with(&format!(
                "port '{}…' (10000 characters): name: '{0}…' (10000 characters) has 10000 \
                 characters; use 1-64",
                "x".repeat(64)
            )),
            "{message}"
        );
        let group = Group::empty("web").unwrap();
        let policy = Policy {
            groups: vec![
                Group {
                    name: "a\u{1b}]0;owned\u{7}".into(),
                    ..group.clone()
                },
                group,
            ],
            ports: Vec::new(),
        };
        assert_eq!(
            policy.validate().unwrap_err().to_string(),
            "group 'a\\u{1b}]0;owned\\u{7}': name: 'a\\u{1b}]0;owned\\u{7}' contains \
             '\\u{1b}'; use 1-64 characters from a-z A-Z 0-9 . _ - starting with a letter or digit"
        );
    }

    #[test]
    fn fixed_ips_are_addresses_not_prefixes() {
        let port = |ips: &str| {
            crate::parse_json::<Port>(&format!(
                r#"{{"name": "vm1", "ifname": "tap1", "mac": "52:54:00:12:34:56",
                     "groups": ["default"], "ips": {ips}}}"#
            ))
        };
        assert_eq!(
            port(r#"["198.18.0.5", "2001:db8::5"]"#).unwrap().ips.len(),
            2
        );
        assert_eq!(port(r#""198.18.0.5,198.18.0.6""#).unwrap().ips.len(), 2);
        assert!(port("[]").unwrap().ips.is_empty());
        let err = port(r#"["198.18.0.0/24"]"#).unwrap_err();
        assert!(
            err.starts_with(
                "ips: 198.18.0.0/24 is a prefix, not an address; use one address such as \
                 198.18.0.0 (a prefix the workload may use is an allowed address pair)"
            ),
            "{err}"
        );
        let err = port(r#"["web"]"#).unwrap_err();
        assert!(
            err.starts_with("ips: 'web' is not an IP address; use one such as"),
            "{err}"
        );
    }

    #[test]
    fn a_port_s_flow_limit_is_a_number_of_flows_1_or_more() {
        let parsed = |max_flows: &str| {
            crate::parse_json::<Port>(&format!(
                r#"{{"name": "vm1", "ifname": "tap1", "mac": "52:54:00:12:34:56",
                     "groups": ["default"], "max_flows": {max_flows}}}"#
            ))
            .map(|port| port.max_flows)
        };
        assert_eq!(parsed("1000"), Ok(Some(1000)));
        assert_eq!(parsed(r#""1000""#), Ok(Some(1000)));
        let err = parsed("-1").unwrap_err();
        assert!(
            err.starts_with("max_flows: -1 is out of range; use a number of flows, 1 or more"),
            "{err}"
        );
        let none = Port {
            max_flows: Some(0),
            ..port("vm1", "tap1", &["10.0.0.5"], &["web"])
        };
        assert_eq!(
            none.validate().unwrap_err().to_string(),
            "port 'vm1': max_flows: 0 leaves the port no flow; use 1 or more, or leave it out \
             for the host's max_flows_per_port"
        );
    }

    #[test]
    fn dhcp_servers_are_unicast_addresses_each_given_once() {
        let error = |servers: &[&str]| {
            Port {
                dhcp_servers: servers.iter().map(|s| s.parse().unwrap()).collect(),
                ..port("vm1", "tap1", &["10.0.0.5"], &["web"])
            }
            .validate()
            .map_err(|e| e.to_string())
        };
        assert_eq!(error(&["198.18.0.1", "fe80::1"]), Ok(()));
        for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "::", "ff02::1:2"] {
            assert_eq!(
                error(&[bad]),
                Err(format!(
                    "port 'vm1': dhcp_servers: {bad} is not a server's address; use the unicast \
                     address it answers from (e.g. 198.18.0.1, or a DHCPv6 server's link-local fe80::1)"
                ))
            );
        }
        assert_eq!(
            error(&["198.18.0.1", "198.18.0.1"]),
            Err(
                "port 'vm1': dhcp_servers: 198.18.0.1 is given twice; give each server once".into()
            )
        );
        let parsed = |servers: &str| {
            crate::parse_json::<Port>(&format!(
                r#"{{"name": "vm1", "ifname": "tap1", "mac": "52:54:00:12:34:56",
                     "groups": ["default"], "dhcp_servers": {servers}}}"#
            ))
            .map(|port| port.dhcp_servers.len())
        };
        assert_eq!(parsed(r#"["198.18.0.1", "fe80::1"]"#), Ok(2));
        assert_eq!(parsed(r#""198.18.0.1,fe80::1""#), Ok(2));
        let err = parsed(r#"["dhcp"]"#).unwrap_err();
        assert!(
            err.starts_with("dhcp_servers: 'dhcp' is not a server's address; use one such as"),
            "{err}"
        );
        let nine: Vec<String> = (1..=9).map(|n| format!("198.18.0.{n}")).collect();
        let nine: Vec<&str> = nine.iter().map(String::as_str).collect();
        assert!(
            error(&nine)
                .unwrap_err()
                .starts_with("port 'vm1': dhcp_servers: 9 servers given; a port accepts at most 8")
        );
    }

    #[test]
    fn address_pairs_parse_with_the_field_and_the_fix() {
        assert_eq!(
            "198.18.0.0/24,02:00:00:00:00:05".parse(),
            Ok(AddressPair {
                ip: "198.18.0.0/24".parse().unwrap(),
                mac: Some(mac("02:00:00:00:00:05")),
                allow_wide: false,
            })
        );
        let one: AddressPair = "198.18.0.10".parse().unwrap();
        assert_eq!(
            (one.ip.to_string(), one.mac),
            ("198.18.0.10/32".into(), None)
        );
        let err = "198.18.0.1/24".parse::<AddressPair>().unwrap_err();
        assert_eq!(err.field, "allowed_address_pairs");
        assert!(err.message.contains("did you mean 198.18.0.0/24"), "{err}");
        let err = "198.18.0.1,02:00:00".parse::<AddressPair>().unwrap_err();
        assert_eq!(err.field, "mac");
    }

    #[test]
    fn json_round_trip() {
        let policy: Policy = serde_json::from_str(
            r#"{"groups": [{"name": "default"}],
                "ports": [{"name": "vm1", "ifname": "tap1", "mac": "52:54:00:12:34:56",
                           "ips": ["10.0.0.5"], "groups": ["default"],
                           "allowed_address_pairs": [{"ip": "10.0.1.0/24", "mac": "52:54:00:00:00:01"}]}]}"#,
        )
        .unwrap();
        assert_eq!(policy.validate(), Ok(()));
        assert!(policy.ports[0].port_security);
        let json = serde_json::to_string(&policy).unwrap();
        assert!(json.contains(r#""mac":"52:54:00:12:34:56""#), "{json}");
        assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), policy);
        let full = self::policy();
        assert_eq!(
            serde_json::from_str::<Policy>(&serde_json::to_string(&full).unwrap()).unwrap(),
            full
        );
    }

    #[test]
    fn outbound_smtp_is_blocked_unless_a_rule_names_it() {
        use crate::model::reference::{Packet, evaluate};
        let mut policy = policy();
        let mut mail = Group::new("mail").unwrap();
        mail.rules.push(Rule {
            protocol: "tcp".parse().unwrap(),
            ports: "25,587".parse().unwrap(),
            ..Rule::new(Direction::Egress)
        });
        policy.groups.push(mail);
        policy
            .ports
            .push(port("mx", "tap3", &["10.0.0.7"], &["mail"]));
        let blocked = policy.with_outbound_smtp_blocked();
        let to = |port: u16| Packet {
            src: "10.0.0.5".parse().unwrap(),
            dst: "192.0.2.1".parse().unwrap(),
            protocol: 6,
            src_port: Some(40000),
            dst_port: Some(port),
            icmp: None,
            echo_id: None,
            tcp_flags: 2,
        };
        let verdict = |policy: &Policy, port, dst_port| {
            evaluate(policy, port, Direction::Egress, &to(dst_port))
                .unwrap()
                .action
        };
        assert_eq!(verdict(&policy, "vm1", 25), Action::Allow);
        assert_eq!(verdict(&blocked, "vm1", 25), Action::Drop);
        assert_eq!(verdict(&blocked, "vm1", 587), Action::Allow);
        assert_eq!(verdict(&blocked, "mx", 25), Action::Allow);
        assert_eq!(blocked.ports[0].groups[0], SMTP_BLOCK_GROUP);
        assert_eq!(
            blocked.port("mx").unwrap().groups,
            ["_smtp-block.mx", "mail"]
        );
        assert_eq!(blocked.groups[..policy.groups.len()], policy.groups[..]);
        assert_eq!(Policy::new().with_outbound_smtp_blocked(), Policy::new());
    }

    #[test]
    fn only_a_rule_naming_port_25_lifts_the_smtp_block_and_only_to_its_remotes() {
        use crate::model::reference::{Packet, evaluate};
        let mut policy = policy();
        let mut relay = Group::new("relay").unwrap();
        relay.rules = vec![
            // Every port: 25 is in the range, not named.
            Rule {
                protocol: "tcp".parse().unwrap(),
                ports: "1-65535".parse().unwrap(),
                ..Rule::new(Direction::Egress)
            },
            Rule {
                protocol: "tcp".parse().unwrap(),
                ports: "25".parse().unwrap(),
                remote: Remote::Cidrs(vec!["198.18.200.25/32".parse().unwrap()]),
                ..Rule::new(Direction::Egress)
            },
            Rule::new(Direction::Egress),
        ];
        policy.groups.push(relay);
        policy
            .ports
            .push(port("app", "tap4", &["10.0.0.8"], &["relay"]));
        let blocked = policy.with_outbound_smtp_blocked();
        let verdict = |to: &str, dst_port| {
            let packet = Packet {
                src: "10.0.0.8".parse().unwrap(),
                dst: to.parse().unwrap(),
                protocol: 6,
                src_port: Some(40000),
                dst_port: Some(dst_port),
                icmp: None,
                echo_id: None,
                tcp_flags: 2,
            };
            evaluate(&blocked, "app", Direction::Egress, &packet)
                .unwrap()
                .action
        };
        assert_eq!(verdict("198.18.200.25", 25), Action::Allow, "the relay");
        assert_eq!(verdict("192.0.2.1", 25), Action::Drop, "anywhere else");
        assert_eq!(verdict("192.0.2.1", 80), Action::Allow);
    }
}
