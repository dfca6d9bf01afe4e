//! One rule of a group: its fields, the text forms they parse from, and
//! the checks between fields.

use std::{fmt, net::IpAddr, ops::RangeInclusive, str::FromStr};

use ipnet::IpNet;
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{Error as _, MapAccess, Visitor},
    ser::SerializeMap,
};

use super::{
    FieldError, IpProtocol, Protocol,
    syntax::{self, Text, serde_as_text, visit_text},
};
use crate::text::Quoted;

/// The priorities a rule may have; 1 is evaluated first.
pub const PRIORITIES: RangeInclusive<u32> = 1..=65535;
/// The priority of a rule that gives none. Rules of equal priority keep
/// their order (group order, then rule order), so leaving every rule at the
/// default gives plain first-match order; the room on both sides lets a
/// rule go before the usual ones (e.g. Memset orderings 1–30) or after.
pub const DEFAULT_PRIORITY: u32 = 1000;
/// The longest description, in characters.
pub const MAX_DESCRIPTION: usize = 255;

/// Which packets of a port a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent to the workload; the remote address is the source.
    Ingress,
    /// Sent by the workload; the remote address is the destination.
    Egress,
}

/// The IP version(s) a rule applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum EtherType {
    #[default]
    Any,
    Ipv4,
    Ipv6,
}

/// What a matching rule does with the packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Action {
    #[default]
    Allow,
    /// Discard silently.
    Drop,
    /// Discard and tell the sender (TCP RST, ICMP unreachable).
    Reject,
}

/// Parses one of a few keywords (any case) of a field.
fn keyword<T: Copy>(
    field: &'static str,
    text: &str,
    words: &[(&str, T)],
    form: &str,
) -> Result<T, FieldError> {
    let word = text.trim().to_ascii_lowercase();
    words
        .iter()
        .find(|(name, _)| *name == word)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            FieldError::new(
                field,
                format!("{} is not accepted; use {form}", Quoted(text.trim())),
            )
        })
}

impl FromStr for Direction {
    type Err = FieldError;

    fn from_str(text: &str) -> Result<Self, FieldError> {
        use Direction::*;
        let words = [
            ("ingress", Ingress),
            ("in", Ingress),
            ("inbound", Ingress),
            ("egress", Egress),
            ("out", Egress),
            ("outbound", Egress),
        ];
        keyword("direction", text, &words, "ingress or egress")
    }
}

impl FromStr for EtherType {
    type Err = FieldError;

    fn from_str(text: &str) -> Result<Self, FieldError> {
        use EtherType::*;
        let words = [
            ("any", Any),
            ("all", Any),
            ("ipv4", Ipv4),
            ("4", Ipv4),
            ("ipv6", Ipv6),
            ("6", Ipv6),
        ];
        keyword("ethertype", text, &words, "any, ipv4 or ipv6")
    }
}

impl FromStr for Action {
    type Err = FieldError;

    fn from_str(text: &str) -> Result<Self, FieldError> {
        use Action::*;
        let words = [
            ("allow", Allow),
            ("accept", Allow),
            ("drop", Drop),
            ("deny", Drop),
            ("reject", Reject),
        ];
        keyword("action", text, &words, "allow, drop or reject")
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Any => "any",
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Drop => "drop",
            Self::Reject => "reject",
        })
    }
}

impl EtherType {
    /// The family of an address.
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::Ipv4,
            IpAddr::V6(_) => Self::Ipv6,
        }
    }

    /// Whether every family of `other` is one of `self`'s.
    pub fn contains(self, other: Self) -> bool {
        self == Self::Any || self == other
    }

    /// The families in either.
    pub fn union(self, other: Self) -> Self {
        if self == other { self } else { Self::Any }
    }

    /// The families in both; `None` when they share none.
    pub fn intersect(self, other: Self) -> Option<Self> {
        match (self, other) {
            (Self::Any, family) | (family, Self::Any) => Some(family),
            (a, b) => (a == b).then_some(a),
        }
    }

    /// How messages name the family: `IPv4`, `IPv6`, `IPv4 and IPv6`.
    fn label(self) -> &'static str {
        match self {
            Self::Any => "IPv4 and IPv6",
            Self::Ipv4 => "IPv4",
            Self::Ipv6 => "IPv6",
        }
    }
}

const PORT_FORMS: &str = "is not a port; use a number 1-65535, a range such as 8000-8080, \
     or a comma list such as 22,80,443";

/// Destination ports `start..=end`, both within 1–65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }

    fn check(self) -> Result<(), String> {
        if self.start == 0 {
            Err("0 is out of range; use 1-65535".into())
        } else if self.start > self.end {
            Err(format!(
                "{self} starts after it ends; write {}-{}",
                self.end, self.start
            ))
        } else {
            Ok(())
        }
    }

    fn parse(item: &str) -> Result<Self, String> {
        let port = |text: &str| -> Result<u16, String> {
            let number: u64 = text
                .trim()
                .parse()
                .map_err(|_| format!("{} {PORT_FORMS}", Quoted(item.trim())))?;
            u16::try_from(number)
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| format!("{number} is out of range; use 1-65535"))
        };
        let range = match item.split_once('-') {
            Some((start, end)) => Self {
                start: port(start)?,
                end: port(end)?,
            },
            None => {
                let port = port(item)?;
                Self {
                    start: port,
                    end: port,
                }
            }
        };
        range.check()?;
        Ok(range)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// The destination ports of a rule: a list of ranges, any of which
/// matches; empty means any port (and is written `any`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PortSpec(pub Vec<PortRange>);

impl PortSpec {
    pub fn is_any(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for PortSpec {
    type Err = FieldError;

    /// `any`, `80`, `8000-8080`, or a comma list such as `22,80,443,1000-2000`.
    fn from_str(text: &str) -> Result<Self, FieldError> {
        if text.trim().eq_ignore_ascii_case("any") {
            return Ok(Self::default());
        }
        text.split(',')
            .map(PortRange::parse)
            .collect::<Result<_, _>>()
            .map(Self)
            .map_err(|message| FieldError::new("ports", message))
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_any() {
            return f.write_str("any");
        }
        let ranges: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&ranges.join(","))
    }
}

/// The ICMP (or ICMPv6) type and code a rule matches; `None` is any. A
/// code needs a type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpMatch {
    #[serde(
        rename = "type",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "icmp_value"
    )]
    pub type_: Option<u8>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "icmp_value"
    )]
    pub code: Option<u8>,
}

impl IcmpMatch {
    /// From the command line's `--icmp-type` and `--icmp-code`.
    pub fn parse(type_: Option<&str>, code: Option<&str>) -> Result<Self, FieldError> {
        let value = |field, text: Option<&str>| {
            text.map(|text| {
                parse_icmp_value(text).map_err(|message| FieldError::new(field, message))
            })
            .transpose()
        };
        let icmp = Self {
            type_: value("icmp.type", type_)?,
            code: value("icmp.code", code)?,
        };
        icmp.check()?;
        Ok(icmp)
    }

    pub fn is_any(&self) -> bool {
        self.type_.is_none() && self.code.is_none()
    }

    fn check(&self) -> Result<(), FieldError> {
        match (self.type_, self.code) {
            (None, Some(_)) => Err(FieldError::new(
                "icmp.code",
                "needs icmp.type; give the type too (e.g. type 3 code 4 for fragmentation needed)",
            )),
            _ => Ok(()),
        }
    }
}

fn parse_icmp_value(text: &str) -> Result<u8, String> {
    let number = syntax::whole_number(text, u8::MAX.into(), "0-255")?;
    Ok(u8::try_from(number).expect("at most 255"))
}

fn icmp_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u8>, D::Error> {
    Option::<Text>::deserialize(deserializer)?
        .map(|text| parse_icmp_value(&text.0))
        .transpose()
        .map_err(D::Error::custom)
}

/// The other end of the packets a rule matches: the source of ingress
/// packets, the destination of egress packets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Remote {
    /// Any address, IPv4 or IPv6.
    #[default]
    Any,
    /// An address within one of these (non-empty; IPv4 and IPv6 may mix).
    Cidrs(Vec<IpNet>),
    /// An address of a member of this group (see `Policy::members`),
    /// current as members come and go.
    Group(String),
}

impl FromStr for Remote {
    type Err = FieldError;

    /// `any`, or a comma list of addresses and CIDRs. Groups are not
    /// written here (a group could be named like a typo of an address):
    /// policy files say `{group: web}`, the command line `--remote-group`.
    fn from_str(text: &str) -> Result<Self, FieldError> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("any") {
            return Ok(Self::Any);
        }
        syntax::parse_cidrs("remote", text)
            .map(Self::Cidrs)
            .map_err(|error| {
                // A lone word is most likely a group given the wrong way.
                let word = syntax::check_name("remote", text).is_ok()
                    && text.contains(|c: char| c.is_ascii_alphabetic());
                if !word {
                    return error;
                }
                FieldError::new(
                    "remote",
                    format!(
                        "'{text}' is not an address or CIDR; for the members of group {text} \
                     write {{group: {text}}} (command line: --remote-group {text})"
                    ),
                )
            })
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Cidrs(nets) => {
                let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
                f.write_str(&nets.join(","))
            }
            Self::Group(name) => write!(f, "group {name}"),
        }
    }
}

impl Serialize for Remote {
    /// `any`, a list of CIDRs, or `{group: NAME}`.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Any => serializer.serialize_str("any"),
            Self::Cidrs(nets) => serializer.collect_seq(nets.iter().map(ToString::to_string)),
            Self::Group(name) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("group", name)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Remote {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RemoteVisitor)
    }
}

const REMOTE_FORMS: &str = "any, a list of addresses and CIDRs, or {group: NAME}";

struct RemoteVisitor;

impl RemoteVisitor {
    fn text<E: serde::de::Error>(self, text: String) -> Result<Remote, E> {
        text.parse().map_err(|e: FieldError| E::custom(e.message))
    }
}

impl<'de> Visitor<'de> for RemoteVisitor {
    type Value = Remote;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REMOTE_FORMS)
    }

    visit_text!();

    /// `{group: NAME}` and nothing else.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Remote, A::Error> {
        let mut group = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "group" {
                return Err(A::Error::custom(format!(
                    "{} is not a key of a remote; a map names a group, as {{group: NAME}}; \
                     otherwise use any, or a list of addresses and CIDRs",
                    Quoted(&key)
                )));
            }
            if group.replace(map.next_value::<String>()?).is_some() {
                return Err(A::Error::custom("group is given twice; name one group"));
            }
        }
        group
            .map(Remote::Group)
            .ok_or_else(|| A::Error::custom(format!("an empty map; use {REMOTE_FORMS}")))
    }
}

serde_as_text!(Direction, EtherType, Action, PortSpec);

/// One rule of a group. Build one with struct update syntax from
/// [`Rule::new`] and check it with [`Rule::validate`].
///
/// A packet matches when every field matches: direction; ethertype (the
/// packet's IP version); protocol (with `any`, every protocol; icmp only in
/// IPv4 and ipv6-icmp only in IPv6); ports, if given, the destination port
/// of a tcp/udp/sctp/dccp/udplite packet; the ICMP type, if given, and
/// code, if given; the remote address; the local address (the port's own
/// side of the packet) within `local`, unless `local` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Names the rule for as long as it lives, whatever its position; the
    /// daemon gives one to every rule that has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RuleId>,
    pub direction: Direction,
    #[serde(default)]
    pub ethertype: EtherType,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "PortSpec::is_any")]
    pub ports: PortSpec,
    #[serde(default, skip_serializing_if = "IcmpMatch::is_any")]
    pub icmp: IcmpMatch,
    #[serde(default)]
    pub remote: Remote,
    /// Which of the port's own addresses the rule is about; empty is all.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "syntax::cidr_list"
    )]
    pub local: Vec<IpNet>,
    #[serde(default)]
    pub action: Action,
    /// Within [`PRIORITIES`]; lower goes first.
    #[serde(default = "default_priority", deserialize_with = "priority")]
    pub priority: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// A rule's id: `r-` and 1 to 16 lowercase hex digits, unique in its
/// group. Ids are not reused, so a client that names a deleted rule's id
/// finds no rule rather than another one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(String);

impl RuleId {
    /// The id of a number (the daemon's are random).
    pub fn from_number(number: u64) -> Self {
        Self(format!("r-{number:012x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RuleId {
    type Err = FieldError;

    fn from_str(text: &str) -> Result<Self, FieldError> {
        let digits = text.strip_prefix("r-").unwrap_or_default();
        if (1..=16).contains(&digits.len())
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Ok(Self(text.to_string()));
        }
        Err(FieldError::new(
            "id",
            format!(
                "{} is not a rule id; ids are r- and up to 16 hex digits, as `sg-ctl rule list` \
                 shows them",
                Quoted(text)
            ),
        ))
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

serde_as_text!(RuleId);

fn default_priority() -> u32 {
    DEFAULT_PRIORITY
}

const PRIORITY_FORM: &str = "1-65535 (1 goes first)";

fn priority<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let priority = syntax::number_field(deserializer, (*PRIORITIES.end()).into(), PRIORITY_FORM)?;
    check_priority(priority).map_err(|e| D::Error::custom(e.message))?;
    Ok(priority)
}

fn check_priority(priority: u32) -> Result<(), FieldError> {
    if PRIORITIES.contains(&priority) {
        return Ok(());
    }
    Err(FieldError::new(
        "priority",
        format!("{priority} is out of range; use {PRIORITY_FORM}"),
    ))
}

impl Rule {
    /// Allows everything in `direction` at the default priority.
    pub fn new(direction: Direction) -> Self {
        Self {
            id: None,
            direction,
            ethertype: EtherType::Any,
            protocol: Protocol::Any,
            ports: PortSpec::default(),
            icmp: IcmpMatch::default(),
            remote: Remote::Any,
            local: Vec::new(),
            action: Action::Allow,
            priority: DEFAULT_PRIORITY,
            description: String::new(),
        }
    }

    /// The families the rule can match: its ethertype narrowed by its
    /// protocols; `None` (refused by `validate`) when it can match none.
    pub fn effective_ethertype(&self) -> Option<EtherType> {
        self.ethertype.intersect(self.protocol.ethertype())
    }

    /// Checks every field and the fields against each other.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.check_protocol()?;
        self.check_ports()?;
        self.check_icmp()?;
        match &self.remote {
            Remote::Any => {}
            Remote::Cidrs(nets) if nets.is_empty() => {
                return Err(FieldError::new(
                    "remote",
                    "empty list; use any, or at least one address or CIDR",
                ));
            }
            Remote::Cidrs(nets) => self.check_nets("remote", nets)?,
            Remote::Group(name) => syntax::check_name("remote", name)?,
        }
        self.check_nets("local", &self.local)?;
        check_priority(self.priority)?;
        check_description(&self.description)
    }

    fn check_protocol(&self) -> Result<(), FieldError> {
        let Protocol::List(list) = &self.protocol else {
            return Ok(());
        };
        if list.is_empty() {
            return Err(FieldError::new(
                "protocol",
                "empty list; use any, a name such as tcp, a number 0-255, \
                 or a comma list such as tcp,udp",
            ));
        }
        match list
            .iter()
            .find(|p| self.ethertype.intersect(p.ethertype()).is_none())
        {
            // Only icmp and ipv6-icmp are bound to one family.
            Some(&protocol) => {
                let other = if protocol == IpProtocol::ICMP {
                    IpProtocol::IPV6_ICMP
                } else {
                    IpProtocol::ICMP
                };
                Err(FieldError::new(
                    "protocol",
                    format!(
                        "{protocol} is {}-only but ethertype is {}; use {other} for {}",
                        protocol.ethertype().label(),
                        self.ethertype,
                        self.ethertype.label()
                    ),
                ))
            }
            None => Ok(()),
        }
    }

    /// The first protocol of the rule (`any` included) lacking a capability.
    fn protocol_without(&self, capable: fn(IpProtocol) -> bool) -> Option<String> {
        match &self.protocol {
            Protocol::Any => Some("any".into()),
            Protocol::List(list) => list.iter().find(|&&p| !capable(p)).map(ToString::to_string),
        }
    }

    fn check_ports(&self) -> Result<(), FieldError> {
        for range in &self.ports.0 {
            range
                .check()
                .map_err(|message| FieldError::new("ports", message))?;
        }
        match self.protocol_without(IpProtocol::has_ports) {
            Some(protocol) if !self.ports.is_any() => {
                let names: Vec<String> = IpProtocol::WITH_PORTS
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                Err(FieldError::new(
                    "ports",
                    format!(
                        "protocol {protocol} has no ports; ports apply to {}",
                        names.join(", ")
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    fn check_icmp(&self) -> Result<(), FieldError> {
        self.icmp.check()?;
        match self.protocol_without(IpProtocol::has_icmp) {
            Some(protocol) if !self.icmp.is_any() => Err(FieldError::new(
                "icmp.type",
                format!(
                    "protocol {protocol} has no ICMP type; \
                     set protocol icmp (IPv4) or ipv6-icmp (IPv6)"
                ),
            )),
            _ => Ok(()),
        }
    }

    fn check_nets(&self, field: &'static str, nets: &[IpNet]) -> Result<(), FieldError> {
        for net in nets {
            syntax::check_cidr(net).map_err(|message| FieldError::new(field, message))?;
            let family = EtherType::of(net.addr());
            let conflict = if !self.ethertype.contains(family) {
                format!("ethertype is {}", self.ethertype)
            } else if !self.protocol.ethertype().contains(family) {
                format!(
                    "protocol {} is {}-only",
                    self.protocol,
                    self.protocol.ethertype().label()
                )
            } else {
                continue;
            };
            return Err(FieldError::new(
                field,
                format!("{net} is {} but {conflict}", family.label()),
            ));
        }
        Ok(())
    }
}

/// Checks the length of a rule's or group's description.
pub(super) fn check_description(description: &str) -> Result<(), FieldError> {
    let length = description.chars().count();
    if length > MAX_DESCRIPTION {
        return Err(FieldError::new(
            "description",
            format!("has {length} characters; use at most {MAX_DESCRIPTION}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn ports(text: &str) -> Vec<(u16, u16)> {
        let spec: PortSpec = text.parse().unwrap();
        spec.0.iter().map(|r| (r.start, r.end)).collect()
    }

    fn port_error(text: &str) -> String {
        text.parse::<PortSpec>().unwrap_err().to_string()
    }

    /// An ingress rule from the command line's forms.
    fn rule(protocol: &str, port_spec: &str, remote: &str) -> Rule {
        Rule {
            protocol: protocol.parse().unwrap(),
            ports: port_spec.parse().unwrap(),
            remote: remote.parse().unwrap(),
            ..Rule::new(Direction::Ingress)
        }
    }

    fn invalid(rule: &Rule) -> String {
        rule.validate().unwrap_err().to_string()
    }

    #[test]
    fn keywords_parse_in_any_case() {
        assert_eq!("ingress".parse(), Ok(Direction::Ingress));
        assert_eq!("INGRESS".parse(), Ok(Direction::Ingress));
        assert_eq!("inbound".parse(), Ok(Direction::Ingress));
        assert_eq!("out".parse(), Ok(Direction::Egress));
        assert_eq!("IPv4".parse(), Ok(EtherType::Ipv4));
        assert_eq!("6".parse(), Ok(EtherType::Ipv6));
        assert_eq!("all".parse(), Ok(EtherType::Any));
        assert_eq!("ACCEPT".parse(), Ok(Action::Allow));
        assert_eq!("deny".parse(), Ok(Action::Drop));
        assert_eq!("REJECT".parse(), Ok(Action::Reject));
        assert_eq!(
            "sideways".parse::<Direction>().unwrap_err().to_string(),
            "direction: 'sideways' is not accepted; use ingress or egress"
        );
        assert_eq!(
            "ipv5".parse::<EtherType>().unwrap_err().to_string(),
            "ethertype: 'ipv5' is not accepted; use any, ipv4 or ipv6"
        );
        assert_eq!(
            "permit".parse::<Action>().unwrap_err().to_string(),
            "action: 'permit' is not accepted; use allow, drop or reject"
        );
    }

    #[test]
    fn port_forms() {
        assert_eq!(ports("any"), []);
        assert_eq!(ports("ANY"), []);
        assert_eq!(ports("80"), [(80, 80)]);
        assert_eq!(ports("8000-8080"), [(8000, 8080)]);
        assert_eq!(
            ports("22,80,443,1000-2000"),
            [(22, 22), (80, 80), (443, 443), (1000, 2000)]
        );
        assert_eq!(ports(" 22 , 80 - 81"), [(22, 22), (80, 81)]);
        assert_eq!(ports("1-65535"), [(1, 65535)]);
        assert_eq!(ports("65535"), [(65535, 65535)]);
        for text in ["any", "80", "8000-8080", "22,80,443,1000-2000"] {
            assert_eq!(text.parse::<PortSpec>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn port_errors_name_the_field_and_form() {
        assert_eq!(port_error("0"), "ports: 0 is out of range; use 1-65535");
        assert_eq!(
            port_error("65536"),
            "ports: 65536 is out of range; use 1-65535"
        );
        assert_eq!(
            port_error("1-65536"),
            "ports: 65536 is out of range; use 1-65535"
        );
        assert_eq!(port_error("0-80"), "ports: 0 is out of range; use 1-65535");
        assert_eq!(
            port_error("8080-8000"),
            "ports: 8080-8000 starts after it ends; write 8000-8080"
        );
        assert_eq!(
            port_error("http"),
            "ports: 'http' is not a port; use a number 1-65535, a range such as 8000-8080, \
             or a comma list such as 22,80,443"
        );
        assert!(port_error("-5").starts_with("ports: '-5' is not a port"));
        assert!(port_error("80,").starts_with("ports: '' is not a port"));
        assert!(port_error("1-2-3").starts_with("ports: '1-2-3' is not a port"));
        assert!(port_error("").starts_with("ports: '' is not a port"));
    }

    #[test]
    fn icmp_forms() {
        assert_eq!(IcmpMatch::parse(None, None), Ok(IcmpMatch::default()));
        assert_eq!(
            IcmpMatch::parse(Some("8"), None),
            Ok(IcmpMatch {
                type_: Some(8),
                code: None
            })
        );
        assert_eq!(
            IcmpMatch::parse(Some("3"), Some("4")),
            Ok(IcmpMatch {
                type_: Some(3),
                code: Some(4)
            })
        );
        assert_eq!(
            IcmpMatch::parse(Some("255"), Some("0")),
            Ok(IcmpMatch {
                type_: Some(255),
                code: Some(0)
            })
        );
        let err = |t, c| IcmpMatch::parse(t, c).unwrap_err().to_string();
        assert_eq!(
            err(Some("300"), None),
            "icmp.type: 300 is out of range; use 0-255"
        );
        assert_eq!(
            err(Some("3"), Some("-1")),
            "icmp.code: -1 is out of range; use 0-255"
        );
        assert_eq!(
            err(Some("echo"), None),
            "icmp.type: 'echo' is not a number; use 0-255"
        );
        assert!(err(None, Some("4")).starts_with("icmp.code: needs icmp.type;"));
    }

    #[test]
    fn remote_forms() {
        assert_eq!("any".parse(), Ok(Remote::Any));
        assert_eq!(
            "0.0.0.0/0".parse(),
            Ok(Remote::Cidrs(vec![net("0.0.0.0/0")]))
        );
        assert_eq!(
            "203.0.113.5,2001:db8::/32".parse(),
            Ok(Remote::Cidrs(vec![
                net("203.0.113.5/32"),
                net("2001:db8::/32")
            ]))
        );
        let err = |text: &str| text.parse::<Remote>().unwrap_err().to_string();
        assert_eq!(
            err("10.0.0.1/8"),
            "remote: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8 (the network) \
             or 10.0.0.1/32 (one address)?"
        );
        assert_eq!(
            err("web"),
            "remote: 'web' is not an address or CIDR; for the members of group web \
             write {group: web} (command line: --remote-group web)"
        );
        assert!(
            err("10.0.0.256").starts_with("remote: '10.0.0.256' is not an address or CIDR; use")
        );
        assert_eq!(Remote::Group("web".into()).to_string(), "group web");
    }

    #[test]
    fn common_rules_are_valid() {
        for rule in [
            rule("tcp", "22", "203.0.113.7"),
            rule("tcp", "80,443", "0.0.0.0/0,::/0"),
            rule("tcp,udp", "53", "any"),
            rule("sctp", "3868", "any"),
            rule("dccp", "5004-5005", "any"),
            rule("udplite", "9000", "any"),
            rule("icmp", "any", "0.0.0.0/0"),
            rule("gre", "any", "198.51.100.0/24"),
            rule("any", "any", "any"),
            Rule {
                remote: Remote::Group("web".into()),
                ..rule("tcp", "3306", "any")
            },
            Rule {
                icmp: IcmpMatch {
                    type_: Some(8),
                    code: Some(0),
                },
                ..rule("icmp", "any", "any")
            },
            Rule {
                icmp: IcmpMatch {
                    type_: Some(128),
                    code: None,
                },
                ..rule("ipv6-icmp", "any", "::/0")
            },
            Rule {
                icmp: IcmpMatch {
                    type_: Some(3),
                    code: None,
                },
                ..rule("icmp,ipv6-icmp", "any", "any")
            },
            Rule {
                ethertype: EtherType::Ipv6,
                ..rule("ipv6-icmp", "any", "any")
            },
            Rule {
                local: vec![net("10.0.0.5/32")],
                ..rule("tcp", "80", "any")
            },
            Rule {
                priority: 1,
                ..rule("any", "any", "any")
            },
            Rule {
                priority: 65535,
                description: "x".repeat(255),
                ..rule("any", "any", "any")
            },
        ] {
            assert_eq!(rule.validate(), Ok(()), "{rule:?}");
        }
    }

    #[test]
    fn ports_need_a_port_protocol() {
        let expected = "ports apply to tcp, udp, sctp, dccp, udplite";
        assert_eq!(
            invalid(&rule("icmp", "80", "any")),
            format!("ports: protocol icmp has no ports; {expected}")
        );
        assert_eq!(
            invalid(&rule("any", "80", "any")),
            format!("ports: protocol any has no ports; {expected}")
        );
        assert_eq!(
            invalid(&rule("tcp,gre", "80", "any")),
            format!("ports: protocol gre has no ports; {expected}")
        );
        let zero = Rule {
            ports: PortSpec(vec![PortRange { start: 0, end: 10 }]),
            ..rule("tcp", "any", "any")
        };
        assert_eq!(invalid(&zero), "ports: 0 is out of range; use 1-65535");
        let reversed = Rule {
            ports: PortSpec(vec![PortRange { start: 90, end: 80 }]),
            ..zero
        };
        assert_eq!(
            invalid(&reversed),
            "ports: 90-80 starts after it ends; write 80-90"
        );
    }

    #[test]
    fn icmp_needs_an_icmp_protocol() {
        let icmp = |type_, code| IcmpMatch { type_, code };
        assert!(
            invalid(&Rule {
                icmp: icmp(None, Some(4)),
                ..rule("icmp", "any", "any")
            })
            .starts_with("icmp.code: needs icmp.type;")
        );
        assert_eq!(
            invalid(&Rule {
                icmp: icmp(Some(8), None),
                ..rule("tcp", "any", "any")
            }),
            "icmp.type: protocol tcp has no ICMP type; set protocol icmp (IPv4) or ipv6-icmp (IPv6)"
        );
        assert!(
            invalid(&Rule {
                icmp: icmp(Some(8), None),
                ..rule("any", "any", "any")
            })
            .starts_with("icmp.type: protocol any has no ICMP type")
        );
    }

    #[test]
    fn families_must_agree() {
        assert_eq!(
            invalid(&Rule {
                ethertype: EtherType::Ipv6,
                ..rule("icmp", "any", "any")
            }),
            "protocol: icmp is IPv4-only but ethertype is ipv6; use ipv6-icmp for IPv6"
        );
        assert_eq!(
            invalid(&Rule {
                ethertype: EtherType::Ipv4,
                ..rule("tcp,ipv6-icmp", "any", "any")
            }),
            "protocol: ipv6-icmp is IPv6-only but ethertype is ipv4; use icmp for IPv4"
        );
        assert_eq!(
            invalid(&Rule {
                ethertype: EtherType::Ipv4,
                ..rule("tcp", "22", "10.0.0.0/8,2001:db8::/32")
            }),
            "remote: 2001:db8::/32 is IPv6 but ethertype is ipv4"
        );
        assert_eq!(
            invalid(&rule("icmp", "any", "2001:db8::/32")),
            "remote: 2001:db8::/32 is IPv6 but protocol icmp is IPv4-only"
        );
        assert_eq!(
            invalid(&Rule {
                local: vec![net("10.0.0.5/32")],
                ..rule("ipv6-icmp", "any", "any")
            }),
            "local: 10.0.0.5/32 is IPv4 but protocol ipv6-icmp is IPv6-only"
        );
        let rule_v6 = Rule {
            ethertype: EtherType::Ipv6,
            ..rule("tcp", "any", "any")
        };
        assert_eq!(rule_v6.effective_ethertype(), Some(EtherType::Ipv6));
        assert_eq!(
            rule("icmp", "any", "any").effective_ethertype(),
            Some(EtherType::Ipv4)
        );
        assert_eq!(
            Rule {
                ethertype: EtherType::Ipv6,
                ..rule("icmp", "any", "any")
            }
            .effective_ethertype(),
            None
        );
    }

    #[test]
    fn addresses_priority_description() {
        let any = rule("any", "any", "any");
        assert_eq!(
            invalid(&Rule {
                remote: Remote::Cidrs(vec![net("10.0.0.1/8")]),
                ..any.clone()
            }),
            "remote: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8 (the network) \
             or 10.0.0.1/32 (one address)?"
        );
        assert!(
            invalid(&Rule {
                local: vec![net("2001:db8::1/64")],
                ..any.clone()
            })
            .starts_with("local: 2001:db8::1/64 has host bits set; did you mean 2001:db8::/64")
        );
        assert_eq!(
            invalid(&Rule {
                remote: Remote::Cidrs(vec![]),
                ..any.clone()
            }),
            "remote: empty list; use any, or at least one address or CIDR"
        );
        assert!(
            invalid(&Rule {
                remote: Remote::Group("web servers".into()),
                ..any.clone()
            })
            .starts_with("remote: 'web servers' contains ' '; use 1-64 characters")
        );
        assert_eq!(
            invalid(&Rule {
                priority: 0,
                ..any.clone()
            }),
            "priority: 0 is out of range; use 1-65535 (1 goes first)"
        );
        assert!(
            invalid(&Rule {
                priority: 65536,
                ..any.clone()
            })
            .starts_with("priority: 65536 is out of range")
        );
        assert_eq!(
            invalid(&Rule {
                description: "x".repeat(256),
                ..any.clone()
            }),
            "description: has 256 characters; use at most 255"
        );
        assert!(
            invalid(&Rule {
                protocol: Protocol::List(vec![]),
                ..any
            })
            .starts_with("protocol: empty list; use any")
        );
    }

    #[test]
    fn json_round_trip_and_forms() {
        let rule = Rule {
            icmp: IcmpMatch {
                type_: Some(3),
                code: Some(4),
            },
            local: vec![net("10.0.0.5/32")],
            action: Action::Reject,
            priority: 10,
            description: "pmtu".into(),
            ..rule("icmp", "any", "10.0.0.0/8")
        };
        let json = serde_json::to_value(&rule).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "direction": "ingress", "ethertype": "any", "protocol": "icmp",
                "icmp": {"type": 3, "code": 4}, "remote": ["10.0.0.0/8"],
                "local": ["10.0.0.5/32"], "action": "reject", "priority": 10,
                "description": "pmtu"
            })
        );
        assert_eq!(serde_json::from_value::<Rule>(json).unwrap(), rule);

        let group_rule = Rule {
            remote: Remote::Group("web".into()),
            ..Rule::new(Direction::Egress)
        };
        let json = serde_json::to_string(&group_rule).unwrap();
        assert!(json.contains(r#""remote":{"group":"web"}"#), "{json}");
        assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), group_rule);
    }

    #[test]
    fn json_accepts_the_forms_users_write() {
        let parse = crate::parse_json::<Rule>;
        let minimal = parse(r#"{"direction": "INGRESS"}"#).unwrap();
        assert_eq!(minimal, Rule::new(Direction::Ingress));
        let rule = parse(
            r#"{"direction": "in", "ethertype": "IPv4", "protocol": 6, "ports": [22, "8000-8080"],
                "remote": "203.0.113.0/24", "local": "10.0.0.5", "action": "ACCEPT"}"#,
        )
        .unwrap();
        assert_eq!(rule.protocol, Protocol::from(IpProtocol::TCP));
        assert_eq!(rule.ports.to_string(), "22,8000-8080");
        assert_eq!(rule.remote, Remote::Cidrs(vec![net("203.0.113.0/24")]));
        assert_eq!(rule.local, [net("10.0.0.5/32")]);
        assert_eq!(
            parse(r#"{"direction": "egress", "protocol": ["tcp", "udp"], "ports": 53}"#)
                .unwrap()
                .ports
                .to_string(),
            "53"
        );
        assert_eq!(
            parse(r#"{"direction": "egress", "remote": "any"}"#)
                .unwrap()
                .remote,
            Remote::Any
        );

        let err = parse(r#"{"direction": "ingress", "ports": 0}"#).unwrap_err();
        assert!(
            err.starts_with("ports: 0 is out of range; use 1-65535"),
            "{err}"
        );
        let err = parse(r#"{"direction": "ingress", "protocol": "icmp", "icmp": {"type": 300}}"#)
            .unwrap_err();
        assert!(
            err.starts_with("icmp.type: 300 is out of range; use 0-255"),
            "{err}"
        );
        let err = parse(r#"{"direction": "egress", "remote": {"group": "web", "x": "y"}}"#);
        assert!(err.unwrap_err().starts_with(
            "remote: 'x' is not a key of a remote; a map names a group, as {group: NAME};"
        ));
        let err = parse(r#"{"direction": "ingress", "port": 80}"#).unwrap_err();
        assert!(err.contains("unknown field `port`"), "{err}");
        let err = parse(r#"{"direction": "ingress", "local": "10.0.0.1/8"}"#).unwrap_err();
        assert!(err.contains("did you mean 10.0.0.0/8"), "{err}");
    }

    /// The cases of issue 16: each error names its field and what it takes.
    #[test]
    fn serde_errors_name_the_field_and_what_it_takes() {
        let err = |json: &str| crate::parse_json::<Rule>(json).unwrap_err();
        for (json, expected) in [
            (
                r#"{"direction": "egress", "remote": {"group": "x", "extra": 1}}"#,
                "remote: 'extra' is not a key of a remote; a map names a group",
            ),
            (
                r#"{"direction": "egress", "remote": {"group": 5}}"#,
                "remote.group: invalid type: integer `5`, expected a string",
            ),
            (
                r#"{"direction": "egress", "remote": {}}"#,
                "remote: an empty map; use any, a list of addresses and CIDRs, or {group: NAME}",
            ),
            (
                r#"{"direction": "ingress", "protocol": "tcp", "ports": 80.5}"#,
                "ports: '80.5' is not a port; use a number 1-65535",
            ),
            (
                r#"{"direction": "ingress", "protocol": "tcp", "ports": {"from": 80}}"#,
                "ports: invalid type: map, expected a number, a string or a list of them",
            ),
            (
                r#"{"direction": "ingress", "protocol": "icmp", "icmp": {"type": 256}}"#,
                "icmp.type: 256 is out of range; use 0-255",
            ),
            (
                r#"{"direction": "ingress", "protocol": "icmp", "icmp": {"type": -1}}"#,
                "icmp.type: -1 is out of range; use 0-255",
            ),
            (
                r#"{"direction": "ingress", "priority": 18446744073709551616}"#,
                "priority: 18446744073709552000 is out of range; use 1-65535 (1 goes first)",
            ),
            (
                r#"{"direction": "ingress", "priority": 1.5}"#,
                "priority: '1.5' is not a whole number; use 1-65535 (1 goes first)",
            ),
            (
                r#"{"direction": "ingress", "priority": 0}"#,
                "priority: 0 is out of range; use 1-65535 (1 goes first)",
            ),
            (
                r#"{"direction": "sideways"}"#,
                "direction: 'sideways' is not accepted; use ingress or egress",
            ),
        ] {
            let err = err(json);
            assert!(err.starts_with(expected), "{json}: {err}");
        }
        assert_eq!(
            crate::parse_json::<Rule>(r#"{"direction": "ingress", "priority": "10"}"#)
                .unwrap()
                .priority,
            10
        );
    }

    #[test]
    fn values_in_errors_are_cut_and_escaped() {
        let long = format!(r#"{{"direction": "{}"}}"#, "x".repeat(10_000));
        let err = crate::parse_json::<Rule>(&long).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "direction: '{}…' (10000 characters) is not accepted",
                "x".repeat(64)
            )),
            "{err}"
        );
        assert!(err.len() < 300, "{err}");
        let err = crate::parse_json::<Rule>(r#"{"direction": "in\u001b[2J"}"#).unwrap_err();
        assert!(err.starts_with(r"direction: 'in\u{1b}[2J' is not"), "{err}");
    }
}
