//! The IP protocol catalogue: every protocol number 0–255 with its IANA
//! keyword, the aliases users type, and what a rule may say about it
//! (ports, ICMP type and code, address family).

use std::{fmt, str::FromStr};

use serde::Serialize;

use super::{EtherType, FieldError, syntax::serde_as_text};
use crate::text::Quoted;

/// One IP protocol number (the IPv4 `protocol` / IPv6 `next header` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    pub const ICMP: Self = Self(1);
    pub const IPIP: Self = Self(4);
    pub const TCP: Self = Self(6);
    pub const UDP: Self = Self(17);
    pub const DCCP: Self = Self(33);
    pub const GRE: Self = Self(47);
    pub const ESP: Self = Self(50);
    pub const AH: Self = Self(51);
    pub const IPV6_ICMP: Self = Self(58);
    pub const SCTP: Self = Self(132);
    pub const UDPLITE: Self = Self(136);

    /// The protocols whose headers carry ports, most used first.
    pub const WITH_PORTS: [Self; 5] = [Self::TCP, Self::UDP, Self::SCTP, Self::DCCP, Self::UDPLITE];

    /// The lowercase keyword, `None` for numbers IANA left unassigned or
    /// reserved (they can still be used by number).
    pub fn name(self) -> Option<&'static str> {
        KEYWORDS
            .iter()
            .find(|(number, _)| *number == self.0)
            .map(|(_, name)| *name)
    }

    /// Other names accepted for this protocol when parsing.
    pub fn aliases(self) -> impl Iterator<Item = &'static str> {
        ALIASES
            .iter()
            .filter(move |(_, number)| *number == self.0)
            .map(|(alias, _)| *alias)
    }

    /// Whether rules may give destination ports for this protocol.
    pub fn has_ports(self) -> bool {
        Self::WITH_PORTS.contains(&self)
    }

    /// Whether rules may give an ICMP type and code for this protocol.
    pub fn has_icmp(self) -> bool {
        self == Self::ICMP || self == Self::IPV6_ICMP
    }

    /// The address family this protocol exists in: ICMP is IPv4's and
    /// ICMPv6 is IPv6's; every other number is valid in both.
    pub fn ethertype(self) -> EtherType {
        match self {
            Self::ICMP => EtherType::Ipv4,
            Self::IPV6_ICMP => EtherType::Ipv6,
            _ => EtherType::Any,
        }
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl FromStr for IpProtocol {
    type Err = FieldError;

    /// A keyword or alias (any case) or a number 0–255.
    fn from_str(text: &str) -> Result<Self, FieldError> {
        let word = text.trim().to_ascii_lowercase();
        if let Ok(number) = word.parse::<u64>() {
            return u8::try_from(number).map(Self).map_err(|_| {
                FieldError::new("protocol", format!("{number} is out of range; use 0-255"))
            });
        }
        KEYWORDS
            .iter()
            .map(|&(number, name)| (name, number))
            .chain(ALIASES.iter().copied())
            .find(|(name, _)| *name == word)
            .map(|(_, number)| Self(number))
            .ok_or_else(|| {
                FieldError::new(
                    "protocol",
                    format!("{} {PROTOCOL_FORMS}", Quoted(text.trim())),
                )
            })
    }
}

const PROTOCOL_FORMS: &str = "is not a protocol; use any, a name such as tcp, udp, icmp, \
     ipv6-icmp, sctp, gre, esp (`sg-ctl protocols` lists them all), a number 0-255, \
     or a comma list such as tcp,udp";

/// The protocol field of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Every protocol; the rule then gives neither ports nor ICMP type.
    #[default]
    Any,
    /// These protocols (non-empty; parsing sorts and deduplicates them).
    List(Vec<IpProtocol>),
}

impl Protocol {
    /// Whether a packet of `protocol` matches, ignoring address family.
    pub fn contains(&self, protocol: IpProtocol) -> bool {
        match self {
            Self::Any => true,
            Self::List(list) => list.contains(&protocol),
        }
    }

    /// The address family the protocols exist in: their union.
    pub fn ethertype(&self) -> EtherType {
        match self {
            Self::Any => EtherType::Any,
            Self::List(list) => list
                .iter()
                .map(|protocol| protocol.ethertype())
                .reduce(EtherType::union)
                .unwrap_or(EtherType::Any),
        }
    }
}

impl From<IpProtocol> for Protocol {
    fn from(protocol: IpProtocol) -> Self {
        Self::List(vec![protocol])
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::List(list) => {
                let names: Vec<String> = list.iter().map(ToString::to_string).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

impl FromStr for Protocol {
    type Err = FieldError;

    /// `any` (or `all`), one protocol, or a comma list such as `tcp,udp`.
    fn from_str(text: &str) -> Result<Self, FieldError> {
        if matches!(text.trim().to_ascii_lowercase().as_str(), "any" | "all") {
            return Ok(Self::Any);
        }
        let mut list = text
            .split(',')
            .map(|item| match item.trim() {
                "" => Err(FieldError::new(
                    "protocol",
                    format!("{} {PROTOCOL_FORMS}", Quoted(text)),
                )),
                any if any.eq_ignore_ascii_case("any") => Err(FieldError::new(
                    "protocol",
                    "any cannot be part of a list; write any alone",
                )),
                item => item.parse(),
            })
            .collect::<Result<Vec<IpProtocol>, _>>()?;
        list.sort();
        list.dedup();
        Ok(Self::List(list))
    }
}

serde_as_text!(Protocol);

/// One line of the catalogue, as `sg-ctl protocols` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtocolInfo {
    pub number: u8,
    pub name: Option<&'static str>,
    pub aliases: Vec<&'static str>,
    /// Rules may give ports.
    pub ports: bool,
    /// Rules may give an ICMP type and code.
    pub icmp: bool,
    /// The address family the protocol exists in.
    pub ethertype: EtherType,
}

/// All 256 protocol numbers in order, named or not.
pub fn catalogue() -> Vec<ProtocolInfo> {
    (0..=u8::MAX)
        .map(IpProtocol)
        .map(|protocol| ProtocolInfo {
            number: protocol.0,
            name: protocol.name(),
            aliases: protocol.aliases().collect(),
            ports: protocol.has_ports(),
            icmp: protocol.has_icmp(),
            ethertype: protocol.ethertype(),
        })
        .collect()
}

/// IANA's keywords (protocol-numbers registry), lowercased, with spaces
/// turned into dashes. Three depart from IANA, after Linux and OpenStack:
/// 4 is `ipip` (IANA `IPv4`, Linux `IPPROTO_IPIP`), so IANA's `IPIP` (94,
/// KA9Q NOS) becomes `ipip94`; 89 is `ospf` (IANA `OSPFIGP`); 58 is
/// `ipv6-icmp` as IANA has it. Unassigned and reserved numbers (61, 63,
/// 68, 99, 114 "any ..." entries, 146–255) have no keyword.
const KEYWORDS: &[(u8, &str)] = &[
    (0, "hopopt"),
    (1, "icmp"),
    (2, "igmp"),
    (3, "ggp"),
    (4, "ipip"),
    (5, "st"),
    (6, "tcp"),
    (7, "cbt"),
    (8, "egp"),
    (9, "igp"),
    (10, "bbn-rcc-mon"),
    (11, "nvp-ii"),
    (12, "pup"),
    (13, "argus"),
    (14, "emcon"),
    (15, "xnet"),
    (16, "chaos"),
    (17, "udp"),
    (18, "mux"),
    (19, "dcn-meas"),
    (20, "hmp"),
    (21, "prm"),
    (22, "xns-idp"),
    (23, "trunk-1"),
    (24, "trunk-2"),
    (25, "leaf-1"),
    (26, "leaf-2"),
    (27, "rdp"),
    (28, "irtp"),
    (29, "iso-tp4"),
    (30, "netblt"),
    (31, "mfe-nsp"),
    (32, "merit-inp"),
    (33, "dccp"),
    (34, "3pc"),
    (35, "idpr"),
    (36, "xtp"),
    (37, "ddp"),
    (38, "idpr-cmtp"),
    (39, "tp++"),
    (40, "il"),
    (41, "ipv6"),
    (42, "sdrp"),
    (43, "ipv6-route"),
    (44, "ipv6-frag"),
    (45, "idrp"),
    (46, "rsvp"),
    (47, "gre"),
    (48, "dsr"),
    (49, "bna"),
    (50, "esp"),
    (51, "ah"),
    (52, "i-nlsp"),
    (53, "swipe"),
    (54, "narp"),
    (55, "min-ipv4"),
    (56, "tlsp"),
    (57, "skip"),
    (58, "ipv6-icmp"),
    (59, "ipv6-nonxt"),
    (60, "ipv6-opts"),
    (62, "cftp"),
    (64, "sat-expak"),
    (65, "kryptolan"),
    (66, "rvd"),
    (67, "ippc"),
    (69, "sat-mon"),
    (70, "visa"),
    (71, "ipcv"),
    (72, "cpnx"),
    (73, "cphb"),
    (74, "wsn"),
    (75, "pvp"),
    (76, "br-sat-mon"),
    (77, "sun-nd"),
    (78, "wb-mon"),
    (79, "wb-expak"),
    (80, "iso-ip"),
    (81, "vmtp"),
    (82, "secure-vmtp"),
    (83, "vines"),
    (84, "ttp"),
    (85, "nsfnet-igp"),
    (86, "dgp"),
    (87, "tcf"),
    (88, "eigrp"),
    (89, "ospf"),
    (90, "sprite-rpc"),
    (91, "larp"),
    (92, "mtp"),
    (93, "ax.25"),
    (94, "ipip94"),
    (95, "micp"),
    (96, "scc-sp"),
    (97, "etherip"),
    (98, "encap"),
    (100, "gmtp"),
    (101, "ifmp"),
    (102, "pnni"),
    (103, "pim"),
    (104, "aris"),
    (105, "scps"),
    (106, "qnx"),
    (107, "a/n"),
    (108, "ipcomp"),
    (109, "snp"),
    (110, "compaq-peer"),
    (111, "ipx-in-ip"),
    (112, "vrrp"),
    (113, "pgm"),
    (115, "l2tp"),
    (116, "ddx"),
    (117, "iatp"),
    (118, "stp"),
    (119, "srp"),
    (120, "uti"),
    (121, "smp"),
    (122, "sm"),
    (123, "ptp"),
    (124, "isis"),
    (125, "fire"),
    (126, "crtp"),
    (127, "crudp"),
    (128, "sscopmce"),
    (129, "iplt"),
    (130, "sps"),
    (131, "pipe"),
    (132, "sctp"),
    (133, "fc"),
    (134, "rsvp-e2e-ignore"),
    (135, "mobility-header"),
    (136, "udplite"),
    (137, "mpls-in-ip"),
    (138, "manet"),
    (139, "hip"),
    (140, "shim6"),
    (141, "wesp"),
    (142, "rohc"),
    (143, "ethernet"),
    (144, "aggfrag"),
    (145, "nsh"),
];

/// Other spellings users bring from other tools (Linux /etc/protocols,
/// OpenStack, IANA's own keywords where ours differ).
const ALIASES: &[(&str, u8)] = &[
    ("ipv4", 4),
    ("ip-in-ip", 4),
    ("ipencap", 4),
    ("icmpv6", 58),
    ("icmp6", 58),
    ("ipv6-encap", 41),
    ("mobile", 55),
    ("iptm", 84),
    ("ospfigp", 89),
    ("isis-over-ipv4", 124),
    ("mh", 135),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Protocol, String> {
        text.parse::<Protocol>().map_err(|e| e.to_string())
    }

    fn list(numbers: &[u8]) -> Protocol {
        Protocol::List(numbers.iter().copied().map(IpProtocol).collect())
    }

    #[test]
    fn names_parse_in_any_case() {
        for (text, number) in [
            ("tcp", 6),
            ("TCP", 6),
            ("Udp", 17),
            ("icmp", 1),
            ("ipv6-icmp", 58),
            ("sctp", 132),
            ("dccp", 33),
            ("udplite", 136),
            ("UDPLite", 136),
            ("gre", 47),
            ("esp", 50),
            ("ah", 51),
            ("ipip", 4),
            ("igmp", 2),
            ("ospf", 89),
            ("vrrp", 112),
            ("hopopt", 0),
            ("ax.25", 93),
            ("tp++", 39),
            ("3pc", 34),
            ("a/n", 107),
            ("ipip94", 94),
        ] {
            assert_eq!(parse(text), Ok(list(&[number])), "{text}");
        }
    }

    #[test]
    fn aliases_parse() {
        for (alias, number) in [
            ("icmpv6", 58),
            ("ICMP6", 58),
            ("ipv4", 4),
            ("ip-in-ip", 4),
            ("ospfigp", 89),
            ("iptm", 84),
        ] {
            assert_eq!(parse(alias), Ok(list(&[number])), "{alias}");
            assert!(
                IpProtocol(number)
                    .aliases()
                    .any(|a| a == alias.to_ascii_lowercase())
            );
        }
    }

    #[test]
    fn numbers_parse_from_0_to_255() {
        assert_eq!(parse("0"), Ok(list(&[0])));
        assert_eq!(parse("6"), Ok(list(&[6])));
        assert_eq!(parse("255"), Ok(list(&[255])));
        assert_eq!(parse("200"), Ok(list(&[200])));
        assert_eq!(
            parse("256"),
            Err("protocol: 256 is out of range; use 0-255".into())
        );
    }

    #[test]
    fn any_and_lists_parse() {
        assert_eq!(parse("any"), Ok(Protocol::Any));
        assert_eq!(parse("ALL"), Ok(Protocol::Any));
        assert_eq!(parse("tcp,udp"), Ok(list(&[6, 17])));
        assert_eq!(parse("udp, tcp,6"), Ok(list(&[6, 17])));
        assert_eq!(parse("gre,esp,ah,47"), Ok(list(&[47, 50, 51])));
    }

    #[test]
    fn bad_protocols_name_the_field_and_forms() {
        let err = parse("tpc").unwrap_err();
        assert!(
            err.starts_with("protocol: 'tpc' is not a protocol; use any"),
            "{err}"
        );
        assert!(err.contains("a number 0-255"), "{err}");
        assert!(parse("tcp,,udp").unwrap_err().starts_with("protocol: "));
        assert!(parse("").unwrap_err().starts_with("protocol: "));
        assert_eq!(
            parse("tcp,any"),
            Err("protocol: any cannot be part of a list; write any alone".into())
        );
        assert!(parse("-1").unwrap_err().starts_with("protocol: '-1'"));
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "any",
            "tcp",
            "tcp,udp",
            "icmp",
            "ipv6-icmp",
            "200",
            "gre,esp",
        ] {
            assert_eq!(parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn capabilities() {
        for protocol in IpProtocol::WITH_PORTS {
            assert!(protocol.has_ports() && !protocol.has_icmp());
            assert_eq!(protocol.ethertype(), EtherType::Any);
        }
        assert!(IpProtocol::ICMP.has_icmp() && !IpProtocol::ICMP.has_ports());
        assert_eq!(IpProtocol::ICMP.ethertype(), EtherType::Ipv4);
        assert_eq!(IpProtocol::IPV6_ICMP.ethertype(), EtherType::Ipv6);
        assert!(!IpProtocol::GRE.has_ports() && !IpProtocol::GRE.has_icmp());
        assert_eq!(list(&[1, 58]).ethertype(), EtherType::Any);
        assert_eq!(list(&[1]).ethertype(), EtherType::Ipv4);
        assert_eq!(list(&[1, 6]).ethertype(), EtherType::Any);
        assert_eq!(Protocol::Any.ethertype(), EtherType::Any);
    }

    #[test]
    fn catalogue_covers_every_number_once() {
        let all = catalogue();
        assert_eq!(all.len(), 256);
        assert!(
            all.iter()
                .enumerate()
                .all(|(i, info)| usize::from(info.number) == i)
        );
        assert_eq!(all.iter().filter(|info| info.ports).count(), 5);
        assert_eq!(all[132].name, Some("sctp"));
        assert_eq!(all[61].name, None);
        assert_eq!(all[255].name, None);
        assert_eq!(all[58].aliases, ["icmpv6", "icmp6"]);
    }

    #[test]
    fn keywords_and_aliases_are_unique_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for &(number, name) in KEYWORDS {
            assert!(seen.insert(name), "{name} twice");
            assert_eq!(name, name.to_ascii_lowercase());
            assert_eq!(name.parse::<IpProtocol>().unwrap(), IpProtocol(number));
            assert_eq!(IpProtocol(number).to_string(), name);
        }
        for &(alias, _) in ALIASES {
            assert!(seen.insert(alias), "{alias} twice");
        }
        assert!(KEYWORDS.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
