//! The reference matcher: what a policy means for one packet, found by
//! trying every rule in turn; and the reference tracker ([`Tracker`]):
//! what a sequence of packets means with connection tracking. Deliberately
//! plain (no index, no precomputation, nothing shared with the compiler or
//! the datapath) so that property tests can hold the compiled datapath to
//! them.

use std::net::IpAddr;

use super::{
    Action, Direction, EtherType, IpProtocol, Policy, PolicyError, Port, Protocol, Remote, Rule,
};

mod tracker;

pub use tracker::{Tracked, Tracker};

/// What the matcher and the tracker need to know of a packet. `src` and
/// `dst` are of the same IP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 protocol or IPv6 (upper-layer) next header.
    pub protocol: u8,
    /// For tcp, udp, sctp, dccp and udplite (as `dst_port`).
    pub src_port: Option<u16>,
    /// For tcp, udp, sctp, dccp and udplite; `None` when the packet has no
    /// port to look at (e.g. a non-first fragment).
    pub dst_port: Option<u16>,
    /// `(type, code)` for icmp (IPv4) and ipv6-icmp (IPv6).
    pub icmp: Option<(u8, u8)>,
    /// The identifier of an echo request or reply (icmp types 8 and 0,
    /// ipv6-icmp 128 and 129); only the tracker looks at it.
    pub echo_id: Option<u16>,
    /// TCP's flags (FIN 1, SYN 2, RST 4, ACK 16); only the tracker looks
    /// at them.
    pub tcp_flags: u8,
}

/// Which rule decided: a group by name and a position in its rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub group: String,
    pub rule: usize,
}

/// What happens to the packet, and the rule that said so (`None` for the
/// default).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Verdict {
    pub action: Action,
    pub rule: Option<RuleRef>,
}

/// ICMPv6 types that IPv6 needs to work on a link, as ARP does for IPv4:
/// multicast listener query, report and done (130-132), MLDv2 report
/// (143), router solicitation and advertisement (133, 134), neighbour
/// solicitation and advertisement (135, 136). No rule applies to them;
/// port security limits what a workload may send of them.
pub const NEIGHBOUR_DISCOVERY: [u8; 8] = [130, 131, 132, 133, 134, 135, 136, 143];

/// What a workload needs of its link, which no rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkService {
    /// IPv6 neighbour discovery and MLD ([`NEIGHBOUR_DISCOVERY`]): allowed.
    NeighbourDiscovery,
    /// DHCP or DHCPv6: the workload's client request (egress UDP 68→67 of
    /// IPv4, 546→547 of IPv6), or a server's reply toward it (ingress
    /// 67→68, 547→546) from a server the port accepts (any when its
    /// `dhcp_servers` is empty): allowed.
    Dhcp,
    /// A DHCP or DHCPv6 server's reply toward the workload from a server
    /// the port does not accept: dropped.
    RefusedDhcpServer,
}

/// The link service `packet` going `direction` through `port` is, if any.
pub fn link_service(port: &Port, direction: Direction, packet: &Packet) -> Option<LinkService> {
    let v6 = packet.src.is_ipv6();
    if let (true, Some((kind, _))) = (v6, packet.icmp)
        && NEIGHBOUR_DISCOVERY.contains(&kind)
    {
        return Some(LinkService::NeighbourDiscovery);
    }
    if packet.protocol != 17 {
        return None;
    }
    let (client, server) = if v6 { (546, 547) } else { (68, 67) };
    let ports = (packet.src_port?, packet.dst_port?);
    match direction {
        Direction::Egress if ports == (client, server) => Some(LinkService::Dhcp),
        Direction::Ingress if ports == (server, client) => {
            if port.dhcp_servers.is_empty() || port.dhcp_servers.contains(&packet.src) {
                Some(LinkService::Dhcp)
            } else {
                Some(LinkService::RefusedDhcpServer)
            }
        }
        _ => None,
    }
}

/// Evaluates `packet` on `port` in `direction`:
///
/// 0. A link service ([`link_service`]: neighbour discovery, DHCP) is
///    allowed, by no rule, but for a DHCP server's reply that the port
///    does not accept, dropped by no rule.
/// 1. Take the rules of every group attached to the port, in the port's
///    group order. (Groups the port names but the policy lacks add none;
///    `Policy::validate` refuses such policies.)
/// 2. Keep the rules that match the packet, field by field (see [`Rule`]);
///    the remote address is the source of ingress packets and the
///    destination of egress packets, the local address the other one.
/// 3. The rule with the lowest (priority, group position, rule position)
///    decides.
/// 4. No rule matches: ingress is dropped. Egress is dropped too, unless
///    some attached group has `egress_open_until_first_rule` and no
///    attached group holds any egress rule (the Exoscale variant: open
///    until the first egress rule exists); then it is allowed.
pub fn evaluate(
    policy: &Policy,
    port: &str,
    direction: Direction,
    packet: &Packet,
) -> Result<Verdict, PolicyError> {
    let port = policy
        .port(port)
        .ok_or_else(|| PolicyError::UnknownPort(port.to_owned()))?;
    if let Some(service) = link_service(port, direction, packet) {
        let action = match service {
            LinkService::RefusedDhcpServer => Action::Drop,
            LinkService::NeighbourDiscovery | LinkService::Dhcp => Action::Allow,
        };
        return Ok(Verdict { action, rule: None });
    }
    let groups: Vec<_> = port
        .groups
        .iter()
        .filter_map(|name| policy.group(name))
        .collect();

    let mut best: Option<((u32, usize, usize), RuleRef, Action)> = None;
    for (group_position, group) in groups.iter().enumerate() {
        for (rule_position, rule) in group.rules.iter().enumerate() {
            let key = (rule.priority, group_position, rule_position);
            if matches(policy, rule, direction, packet)
                && best.as_ref().is_none_or(|(best, ..)| key < *best)
            {
                let rule_ref = RuleRef {
                    group: group.name.clone(),
                    rule: rule_position,
                };
                best = Some((key, rule_ref, rule.action));
            }
        }
    }
    if let Some((_, rule, action)) = best {
        return Ok(Verdict {
            action,
            rule: Some(rule),
        });
    }

    let egress_open = direction == Direction::Egress
        && groups
            .iter()
            .any(|group| group.egress_open_until_first_rule)
        && !groups
            .iter()
            .any(|group| group.has_rules(Direction::Egress));
    let action = if egress_open {
        Action::Allow
    } else {
        Action::Drop
    };
    Ok(Verdict { action, rule: None })
}

fn matches(policy: &Policy, rule: &Rule, direction: Direction, packet: &Packet) -> bool {
    let (remote, local) = match direction {
        Direction::Ingress => (packet.src, packet.dst),
        Direction::Egress => (packet.dst, packet.src),
    };
    let family = EtherType::of(remote);
    let protocol = IpProtocol(packet.protocol);

    if rule.direction != direction {
        return false;
    }
    if !rule.ethertype.contains(family) {
        return false;
    }
    let protocol_matches = match &rule.protocol {
        Protocol::Any => true,
        Protocol::List(list) => list.contains(&protocol) && protocol.ethertype().contains(family),
    };
    if !protocol_matches {
        return false;
    }
    if !rule.ports.is_any() {
        let Some(port) = packet.dst_port.filter(|_| protocol.has_ports()) else {
            return false;
        };
        if !rule
            .ports
            .0
            .iter()
            .any(|range| range.start <= port && port <= range.end)
        {
            return false;
        }
    }
    if let Some(rule_type) = rule.icmp.type_ {
        let Some((packet_type, packet_code)) = packet.icmp.filter(|_| protocol.has_icmp()) else {
            return false;
        };
        if packet_type != rule_type || rule.icmp.code.is_some_and(|code| code != packet_code) {
            return false;
        }
    }
    let remote_matches = match &rule.remote {
        Remote::Any => true,
        Remote::Cidrs(nets) => nets.iter().any(|net| net.contains(&remote)),
        Remote::Group(group) => policy
            .members(group)
            .iter()
            .any(|net| net.contains(&remote)),
    };
    if !remote_matches {
        return false;
    }
    rule.local.is_empty() || rule.local.iter().any(|net| net.contains(&local))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DEFAULT_PRIORITY, Group, IcmpMatch, Port};

    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const ICMP: u8 = 1;
    const ICMPV6: u8 = 58;
    const GRE: u8 = 47;

    fn addr(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn tcp(src: &str, dst: &str, port: u16) -> Packet {
        Packet {
            src: addr(src),
            dst: addr(dst),
            protocol: TCP,
            src_port: Some(40000),
            dst_port: Some(port),
            icmp: None,
            echo_id: None,
            tcp_flags: 2,
        }
    }

    fn udp(src: &str, dst: &str, port: u16) -> Packet {
        Packet {
            protocol: UDP,
            tcp_flags: 0,
            ..tcp(src, dst, port)
        }
    }

    fn icmp(src: &str, dst: &str, type_: u8, code: u8) -> Packet {
        let protocol = if addr(src).is_ipv4() { ICMP } else { ICMPV6 };
        Packet {
            src: addr(src),
            dst: addr(dst),
            protocol,
            src_port: None,
            dst_port: None,
            icmp: Some((type_, code)),
            echo_id: None,
            tcp_flags: 0,
        }
    }

    fn other(src: &str, dst: &str, protocol: u8) -> Packet {
        Packet {
            src: addr(src),
            dst: addr(dst),
            protocol,
            src_port: None,
            dst_port: None,
            icmp: None,
            echo_id: None,
            tcp_flags: 0,
        }
    }

    /// A rule from the command line's forms: direction, protocol, ports,
    /// remote.
    fn rule(direction: Direction, protocol: &str, ports: &str, remote: &str) -> Rule {
        Rule {
            protocol: protocol.parse().unwrap(),
            ports: ports.parse().unwrap(),
            remote: remote.parse().unwrap(),
            ..Rule::new(direction)
        }
    }

    fn ingress(protocol: &str, ports: &str, remote: &str) -> Rule {
        rule(Direction::Ingress, protocol, ports, remote)
    }

    fn group(name: &str, rules: Vec<Rule>) -> Group {
        let mut group = Group::new(name).unwrap();
        group.rules.extend(rules);
        group
    }

    fn port(name: &str, ips: &[&str], groups: &[&str]) -> Port {
        Port {
            ips: ips.iter().map(|ip| addr(ip)).collect(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Port::new(
                name,
                format!("tap-{name}"),
                "52:54:00:12:34:56".parse().unwrap(),
            )
        }
    }

    fn policy(groups: Vec<Group>, ports: Vec<Port>) -> Policy {
        let policy = Policy { groups, ports };
        policy.validate().unwrap();
        policy
    }

    fn check(policy: &Policy, port: &str, direction: Direction, packet: Packet) -> Verdict {
        evaluate(policy, port, direction, &packet).unwrap()
    }

    fn by(action: Action, group: &str, rule: usize) -> Verdict {
        Verdict {
            action,
            rule: Some(RuleRef {
                group: group.into(),
                rule,
            }),
        }
    }

    const DENIED: Verdict = Verdict {
        action: Action::Drop,
        rule: None,
    };
    const OPEN: Verdict = Verdict {
        action: Action::Allow,
        rule: None,
    };

    /// The web server of the provider guides: SSH from the office, HTTP and
    /// HTTPS from anywhere (rules 2, 3, 4 after the two egress rules).
    fn web_server() -> Policy {
        let web = group(
            "web",
            vec![
                ingress("tcp", "22", "203.0.113.7"),
                ingress("tcp", "80", "0.0.0.0/0"),
                ingress("tcp", "443", "0.0.0.0/0"),
            ],
        );
        policy(
            vec![web],
            vec![port("vm1", &["10.0.0.5", "2001:db8::5"], &["web"])],
        )
    }

    #[test]
    fn web_server_from_the_guides() {
        let p = web_server();
        let vm1 = |packet| check(&p, "vm1", Direction::Ingress, packet);
        assert_eq!(
            vm1(tcp("198.51.100.1", "10.0.0.5", 80)),
            by(Action::Allow, "web", 3)
        );
        assert_eq!(
            vm1(tcp("198.51.100.1", "10.0.0.5", 443)),
            by(Action::Allow, "web", 4)
        );
        assert_eq!(
            vm1(tcp("203.0.113.7", "10.0.0.5", 22)),
            by(Action::Allow, "web", 2)
        );
        assert_eq!(vm1(tcp("203.0.113.8", "10.0.0.5", 22)), DENIED);
        assert_eq!(vm1(tcp("198.51.100.1", "10.0.0.5", 8080)), DENIED);
        assert_eq!(vm1(udp("198.51.100.1", "10.0.0.5", 80)), DENIED);
        // 0.0.0.0/0 is IPv4 only.
        assert_eq!(vm1(tcp("2001:db8::1", "2001:db8::5", 80)), DENIED);
        assert_eq!(vm1(icmp("198.51.100.1", "10.0.0.5", 8, 0)), DENIED);
        // Egress: the group's allow-all rules, one per version.
        let out = |packet| check(&p, "vm1", Direction::Egress, packet);
        assert_eq!(
            out(udp("10.0.0.5", "192.0.2.53", 53)),
            by(Action::Allow, "web", 0)
        );
        assert_eq!(
            out(other("2001:db8::5", "2001:db8::1", GRE)),
            by(Action::Allow, "web", 1)
        );
    }

    #[test]
    fn database_open_only_to_the_web_group() {
        let mut web = group("web", vec![]);
        web.external_members = vec!["192.0.2.0/28".parse().unwrap()];
        let db = group(
            "db",
            vec![Rule {
                remote: Remote::Group("web".into()),
                ..ingress("tcp", "3306", "any")
            }],
        );
        let mut p = policy(
            vec![web, db],
            vec![
                port("web1", &["10.0.0.5", "2001:db8::5"], &["web"]),
                port("db1", &["10.0.0.6"], &["db"]),
                port("other", &["10.0.0.7"], &["db"]),
            ],
        );
        let db1 = |p: &Policy, packet| check(p, "db1", Direction::Ingress, packet);
        assert_eq!(
            db1(&p, tcp("10.0.0.5", "10.0.0.6", 3306)),
            by(Action::Allow, "db", 2)
        );
        assert_eq!(
            db1(&p, tcp("2001:db8::5", "2001:db8::6", 3306)),
            by(Action::Allow, "db", 2)
        );
        assert_eq!(
            db1(&p, tcp("192.0.2.15", "10.0.0.6", 3306)),
            by(Action::Allow, "db", 2)
        );
        assert_eq!(db1(&p, tcp("192.0.2.16", "10.0.0.6", 3306)), DENIED);
        assert_eq!(db1(&p, tcp("10.0.0.7", "10.0.0.6", 3306)), DENIED);
        assert_eq!(db1(&p, tcp("10.0.0.5", "10.0.0.6", 3307)), DENIED);
        // Membership is current: attach web to the other port.
        p.ports[2].groups.push("web".into());
        assert_eq!(
            db1(&p, tcp("10.0.0.7", "10.0.0.6", 3306)),
            by(Action::Allow, "db", 2)
        );
    }

    #[test]
    fn ping() {
        let echo = Rule {
            icmp: IcmpMatch {
                type_: Some(8),
                code: None,
            },
            ..ingress("icmp", "any", "0.0.0.0/0")
        };
        let echo_v6 = Rule {
            icmp: IcmpMatch {
                type_: Some(128),
                code: Some(0),
            },
            ..ingress("ipv6-icmp", "any", "any")
        };
        let unreachable = Rule {
            icmp: IcmpMatch {
                type_: Some(3),
                code: Some(4),
            },
            ..ingress("icmp", "any", "any")
        };
        let p = policy(
            vec![
                group("ping", vec![echo, echo_v6, unreachable]),
                group("icmp", vec![ingress("icmp", "any", "any")]),
            ],
            vec![
                port("vm1", &["10.0.0.5", "2001:db8::5"], &["ping"]),
                port("vm2", &["10.0.0.6"], &["icmp"]),
            ],
        );
        let vm1 = |packet| check(&p, "vm1", Direction::Ingress, packet);
        assert_eq!(
            vm1(icmp("198.51.100.1", "10.0.0.5", 8, 0)),
            by(Action::Allow, "ping", 2)
        );
        assert_eq!(
            vm1(icmp("198.51.100.1", "10.0.0.5", 8, 7)),
            by(Action::Allow, "ping", 2)
        );
        assert_eq!(vm1(icmp("198.51.100.1", "10.0.0.5", 0, 0)), DENIED);
        assert_eq!(
            vm1(icmp("198.51.100.1", "10.0.0.5", 3, 4)),
            by(Action::Allow, "ping", 4)
        );
        assert_eq!(vm1(icmp("198.51.100.1", "10.0.0.5", 3, 3)), DENIED);
        assert_eq!(
            vm1(icmp("2001:db8::1", "2001:db8::5", 128, 0)),
            by(Action::Allow, "ping", 3)
        );
        assert_eq!(vm1(icmp("2001:db8::1", "2001:db8::5", 128, 1)), DENIED);
        assert_eq!(vm1(icmp("2001:db8::1", "2001:db8::5", 8, 0)), DENIED);
        // IPv4's ICMP number inside IPv6 is not icmp.
        let mut odd = icmp("2001:db8::1", "2001:db8::5", 8, 0);
        odd.protocol = ICMP;
        assert_eq!(vm1(odd), DENIED);
        // Without a type: every ICMP message, IPv4 only.
        let vm2 = |packet| check(&p, "vm2", Direction::Ingress, packet);
        assert_eq!(
            vm2(icmp("198.51.100.1", "10.0.0.6", 13, 0)),
            by(Action::Allow, "icmp", 2)
        );
        assert_eq!(vm2(icmp("2001:db8::1", "2001:db8::6", 128, 0)), DENIED);
        assert_eq!(vm2(tcp("198.51.100.1", "10.0.0.6", 80)), DENIED);
    }

    #[test]
    fn memset_style_ordered_rules() {
        let ordered = |ordering, action, protocol, ports, remote| Rule {
            priority: ordering,
            action,
            ..ingress(protocol, ports, remote)
        };
        let fw = group(
            "fw",
            vec![
                ordered(2, Action::Allow, "tcp", "22", "any"),
                ordered(1, Action::Drop, "tcp", "22", "203.0.113.0/24"),
                ordered(3, Action::Reject, "tcp,udp", "any", "198.51.100.0/24"),
                ordered(4, Action::Allow, "any", "any", "any"),
            ],
        );
        let p = policy(vec![fw], vec![port("vm1", &["10.0.0.5"], &["fw"])]);
        let vm1 = |packet| check(&p, "vm1", Direction::Ingress, packet);
        assert_eq!(
            vm1(tcp("203.0.113.9", "10.0.0.5", 22)),
            by(Action::Drop, "fw", 3)
        );
        assert_eq!(
            vm1(tcp("198.51.100.1", "10.0.0.5", 22)),
            by(Action::Allow, "fw", 2)
        );
        assert_eq!(
            vm1(tcp("198.51.100.1", "10.0.0.5", 80)),
            by(Action::Reject, "fw", 4)
        );
        assert_eq!(
            vm1(other("198.51.100.1", "10.0.0.5", GRE)),
            by(Action::Allow, "fw", 5)
        );
        assert_eq!(
            vm1(tcp("192.0.2.1", "10.0.0.5", 80)),
            by(Action::Allow, "fw", 5)
        );
    }

    #[test]
    fn union_of_allow_only_groups() {
        let p = policy(
            vec![
                group("ssh", vec![ingress("tcp", "22", "any")]),
                group("web", vec![ingress("tcp", "80,443", "any")]),
            ],
            vec![port("vm1", &["10.0.0.5"], &["ssh", "web"])],
        );
        let vm1 = |packet| check(&p, "vm1", Direction::Ingress, packet);
        assert_eq!(
            vm1(tcp("192.0.2.1", "10.0.0.5", 22)),
            by(Action::Allow, "ssh", 2)
        );
        assert_eq!(
            vm1(tcp("192.0.2.1", "10.0.0.5", 443)),
            by(Action::Allow, "web", 2)
        );
        assert_eq!(vm1(tcp("192.0.2.1", "10.0.0.5", 25)), DENIED);
        // Both groups allow all egress; the first group's rule is named.
        assert_eq!(
            check(
                &p,
                "vm1",
                Direction::Egress,
                tcp("10.0.0.5", "192.0.2.1", 25)
            ),
            by(Action::Allow, "ssh", 0)
        );
    }

    #[test]
    fn priority_then_group_order_then_rule_order() {
        let drop_ssh = |priority| Rule {
            priority,
            action: Action::Drop,
            ..ingress("tcp", "22", "any")
        };
        let allow_ssh = ingress("tcp", "22", "any");
        let groups = |second_priority| {
            vec![
                group("first", vec![allow_ssh.clone()]),
                group("second", vec![drop_ssh(second_priority)]),
            ]
        };
        let packet = tcp("192.0.2.1", "10.0.0.5", 22);
        let ports = || vec![port("vm1", &["10.0.0.5"], &["first", "second"])];
        // A drop of a later group with a lower priority wins.
        let p = policy(groups(10), ports());
        assert_eq!(
            check(&p, "vm1", Direction::Ingress, packet),
            by(Action::Drop, "second", 2)
        );
        // Equal priorities: the group attached first wins.
        let p = policy(groups(DEFAULT_PRIORITY), ports());
        assert_eq!(
            check(&p, "vm1", Direction::Ingress, packet),
            by(Action::Allow, "first", 2)
        );
        let swapped = Policy {
            ports: vec![port("vm1", &["10.0.0.5"], &["second", "first"])],
            ..p
        };
        assert_eq!(
            check(&swapped, "vm1", Direction::Ingress, packet),
            by(Action::Drop, "second", 2)
        );
        // Equal priorities in one group: the earlier rule wins.
        let p = policy(
            vec![group("one", vec![drop_ssh(DEFAULT_PRIORITY), allow_ssh])],
            ports_in("one"),
        );
        assert_eq!(
            check(&p, "vm1", Direction::Ingress, packet),
            by(Action::Drop, "one", 2)
        );
    }

    fn ports_in(group: &str) -> Vec<Port> {
        vec![port("vm1", &["10.0.0.5"], &[group])]
    }

    #[test]
    fn port_range_edges() {
        let p = policy(
            vec![group("g", vec![ingress("tcp", "8000-8080,1,65535", "any")])],
            ports_in("g"),
        );
        let verdict = |port| {
            check(
                &p,
                "vm1",
                Direction::Ingress,
                tcp("192.0.2.1", "10.0.0.5", port),
            )
            .action
        };
        for (port, action) in [
            (7999, Action::Drop),
            (8000, Action::Allow),
            (8080, Action::Allow),
            (8081, Action::Drop),
            (1, Action::Allow),
            (2, Action::Drop),
            (65534, Action::Drop),
            (65535, Action::Allow),
        ] {
            assert_eq!(verdict(port), action, "port {port}");
        }
    }

    #[test]
    fn prefix_edges_and_versions() {
        let p = policy(
            vec![group(
                "g",
                vec![ingress("any", "any", "10.0.0.0/24,2001:db8:1::/64")],
            )],
            ports_in("g"),
        );
        let verdict = |src| {
            check(
                &p,
                "vm1",
                Direction::Ingress,
                other(
                    src,
                    if addr(src).is_ipv4() {
                        "10.0.0.5"
                    } else {
                        "2001:db8::5"
                    },
                    GRE,
                ),
            )
            .action
        };
        for (src, action) in [
            ("10.0.0.0", Action::Allow),
            ("10.0.0.255", Action::Allow),
            ("10.0.1.0", Action::Drop),
            ("9.255.255.255", Action::Drop),
            ("2001:db8:1::", Action::Allow),
            ("2001:db8:1:0:ffff:ffff:ffff:ffff", Action::Allow),
            ("2001:db8:1:1::", Action::Drop),
            ("2001:db8:0:ffff:ffff:ffff:ffff:ffff", Action::Drop),
            ("::ffff:10.0.0.1", Action::Drop),
        ] {
            assert_eq!(verdict(src), action, "{src}");
        }
        let v6_only = Rule {
            ethertype: EtherType::Ipv6,
            ..ingress("tcp", "any", "any")
        };
        let p = policy(vec![group("g", vec![v6_only])], ports_in("g"));
        let verdict = |packet| check(&p, "vm1", Direction::Ingress, packet).action;
        assert_eq!(
            verdict(tcp("2001:db8::1", "2001:db8::5", 80)),
            Action::Allow
        );
        assert_eq!(verdict(tcp("192.0.2.1", "10.0.0.5", 80)), Action::Drop);
    }

    #[test]
    fn ports_only_match_port_protocols() {
        let p = policy(
            vec![group(
                "g",
                vec![ingress("tcp,udp", "53", "any"), ingress("47", "any", "any")],
            )],
            ports_in("g"),
        );
        let verdict = |packet| check(&p, "vm1", Direction::Ingress, packet);
        assert_eq!(
            verdict(udp("192.0.2.1", "10.0.0.5", 53)),
            by(Action::Allow, "g", 2)
        );
        // A port on a protocol without ports is never looked at.
        let sctp = Packet {
            protocol: 132,
            ..udp("192.0.2.1", "10.0.0.5", 53)
        };
        assert_eq!(verdict(sctp), DENIED);
        let gre_with_port = Packet {
            protocol: GRE,
            ..udp("192.0.2.1", "10.0.0.5", 53)
        };
        assert_eq!(verdict(gre_with_port), by(Action::Allow, "g", 3));
        // A tcp packet without a port (a later fragment) misses port rules.
        let fragment = Packet {
            dst_port: None,
            ..tcp("192.0.2.1", "10.0.0.5", 53)
        };
        assert_eq!(verdict(fragment), DENIED);
        let p = policy(
            vec![group("g", vec![ingress("any", "any", "any")])],
            ports_in("g"),
        );
        assert_eq!(
            check(&p, "vm1", Direction::Ingress, fragment).action,
            Action::Allow
        );
        assert_eq!(
            check(
                &p,
                "vm1",
                Direction::Ingress,
                other("192.0.2.1", "10.0.0.5", 253)
            )
            .action,
            Action::Allow
        );
    }

    #[test]
    fn local_addresses_and_egress_sides() {
        let dns = rule(Direction::Egress, "udp", "53", "192.0.2.53");
        let web_on_one_ip = Rule {
            local: vec!["10.0.0.5/32".parse().unwrap()],
            ..ingress("tcp", "80", "any")
        };
        let g = Group {
            rules: vec![dns, web_on_one_ip],
            ..Group::empty("g").unwrap()
        };
        let p = policy(
            vec![g],
            vec![port("vm1", &["10.0.0.5", "10.0.0.9"], &["g"])],
        );
        let verdict = |direction, packet| check(&p, "vm1", direction, packet);
        assert_eq!(
            verdict(Direction::Ingress, tcp("192.0.2.1", "10.0.0.5", 80)),
            by(Action::Allow, "g", 1)
        );
        assert_eq!(
            verdict(Direction::Ingress, tcp("192.0.2.1", "10.0.0.9", 80)),
            DENIED
        );
        // Egress: the remote is the destination, the local the source.
        assert_eq!(
            verdict(Direction::Egress, udp("10.0.0.9", "192.0.2.53", 53)),
            by(Action::Allow, "g", 0)
        );
        assert_eq!(
            verdict(Direction::Egress, udp("10.0.0.5", "192.0.2.54", 53)),
            DENIED
        );
        assert_eq!(
            verdict(Direction::Ingress, udp("192.0.2.53", "10.0.0.5", 53)),
            DENIED
        );
        let p = policy(
            vec![Group {
                rules: vec![Rule {
                    local: vec!["10.0.0.9/32".parse().unwrap()],
                    ..Rule::new(Direction::Egress)
                }],
                ..Group::empty("g").unwrap()
            }],
            vec![port("vm1", &["10.0.0.5", "10.0.0.9"], &["g"])],
        );
        assert_eq!(
            check(
                &p,
                "vm1",
                Direction::Egress,
                udp("10.0.0.9", "192.0.2.1", 53)
            ),
            by(Action::Allow, "g", 0)
        );
        assert_eq!(
            check(
                &p,
                "vm1",
                Direction::Egress,
                udp("10.0.0.5", "192.0.2.1", 53)
            ),
            DENIED
        );
    }

    #[test]
    fn default_group_admits_members() {
        let p = policy(
            vec![Group::default_group()],
            vec![
                port("vm1", &["10.0.0.5", "2001:db8::5"], &["default"]),
                port("vm2", &["10.0.0.6", "2001:db8::6"], &["default"]),
            ],
        );
        let vm1 = |packet| check(&p, "vm1", Direction::Ingress, packet);
        assert_eq!(
            vm1(tcp("10.0.0.6", "10.0.0.5", 5432)),
            by(Action::Allow, "default", 2)
        );
        assert_eq!(
            vm1(tcp("2001:db8::6", "2001:db8::5", 5432)),
            by(Action::Allow, "default", 3)
        );
        // The port itself is a member too.
        assert_eq!(
            vm1(udp("10.0.0.5", "10.0.0.5", 9)),
            by(Action::Allow, "default", 2)
        );
        assert_eq!(vm1(tcp("192.0.2.1", "10.0.0.5", 22)), DENIED);
        assert_eq!(
            check(
                &p,
                "vm1",
                Direction::Egress,
                tcp("10.0.0.5", "192.0.2.1", 443)
            ),
            by(Action::Allow, "default", 0)
        );
    }

    /// UDP between two ports.
    fn udp_ports(src: &str, dst: &str, ports: (u16, u16)) -> Packet {
        Packet {
            src_port: Some(ports.0),
            ..udp(src, dst, ports.1)
        }
    }

    #[test]
    fn dhcp_passes_whatever_the_rules_say_from_the_servers_the_port_accepts() {
        let mut restricted = port("vm2", &["10.0.0.6"], &["default"]);
        restricted.dhcp_servers = vec![addr("10.0.0.1"), addr("fe80::1")];
        let mut p = policy(
            vec![Group::default_group()],
            vec![port("vm1", &["10.0.0.5"], &["default"]), restricted],
        );
        // No egress rule at all, so that only DHCP can pass out.
        p.groups[0]
            .rules
            .retain(|r| r.direction == Direction::Ingress);
        let verdict = |port, direction, packet| check(&p, port, direction, packet);
        let (i, e) = (Direction::Ingress, Direction::Egress);
        let offer = udp_ports("198.18.0.1", "255.255.255.255", (67, 68));
        let offered = udp_ports("198.18.0.1", "10.0.0.5", (67, 68));
        let reply6 = udp_ports("fe80::1", "fe80::2", (547, 546));
        let discover = udp_ports("0.0.0.0", "255.255.255.255", (68, 67));
        let solicit = udp_ports("fe80::2", "ff02::1:2", (546, 547));
        for (port, direction, packet, want) in [
            ("vm1", i, offer, OPEN),
            ("vm1", i, offered, OPEN),
            ("vm1", i, reply6, OPEN),
            ("vm1", e, discover, OPEN),
            ("vm1", e, solicit, OPEN),
            // The workload answering as a server, or asked as one: the
            // rules.
            (
                "vm1",
                e,
                udp_ports("10.0.0.5", "10.0.0.9", (67, 68)),
                DENIED,
            ),
            (
                "vm1",
                i,
                udp_ports("10.0.0.9", "10.0.0.5", (68, 67)),
                DENIED,
            ),
            // The other family's ports are no DHCP of this one.
            ("vm1", i, udp_ports("fe80::1", "fe80::2", (67, 68)), DENIED),
            // A restricted port: its servers, and no other.
            ("vm2", i, udp_ports("10.0.0.1", "10.0.0.6", (67, 68)), OPEN),
            ("vm2", i, reply6, OPEN),
            ("vm2", i, offer, DENIED),
            ("vm2", e, discover, OPEN),
        ] {
            assert_eq!(verdict(port, direction, packet), want, "{port} {packet:?}");
        }
        assert_eq!(
            link_service(p.port("vm2").unwrap(), i, &offer),
            Some(LinkService::RefusedDhcpServer)
        );
    }

    #[test]
    fn deleting_egress_rules_closes_egress() {
        let mut g = group("g", vec![]);
        g.rules.clear();
        let p = policy(vec![g], ports_in("g"));
        assert_eq!(
            check(
                &p,
                "vm1",
                Direction::Egress,
                tcp("10.0.0.5", "192.0.2.1", 443)
            ),
            DENIED
        );
    }

    #[test]
    fn exoscale_egress_open_until_first_rule() {
        let exo = |rules| Group {
            egress_open_until_first_rule: true,
            rules,
            ..Group::empty("exo").unwrap()
        };
        let out = tcp("10.0.0.5", "192.0.2.1", 25);
        let https = tcp("10.0.0.5", "192.0.2.1", 443);

        let p = policy(
            vec![exo(vec![ingress("tcp", "22", "any")])],
            ports_in("exo"),
        );
        assert_eq!(check(&p, "vm1", Direction::Egress, out), OPEN);
        assert_eq!(
            check(
                &p,
                "vm1",
                Direction::Ingress,
                tcp("192.0.2.1", "10.0.0.5", 80)
            ),
            DENIED
        );

        let p = policy(
            vec![exo(vec![rule(Direction::Egress, "tcp", "443", "any")])],
            ports_in("exo"),
        );
        assert_eq!(
            check(&p, "vm1", Direction::Egress, https),
            by(Action::Allow, "exo", 0)
        );
        assert_eq!(check(&p, "vm1", Direction::Egress, out), DENIED);

        // Another attached group's egress rule closes it as well.
        let restricted = Group {
            rules: vec![rule(Direction::Egress, "tcp", "443", "any")],
            ..Group::empty("restricted").unwrap()
        };
        let p = policy(
            vec![exo(vec![]), restricted],
            vec![port("vm1", &["10.0.0.5"], &["exo", "restricted"])],
        );
        assert_eq!(
            check(&p, "vm1", Direction::Egress, https),
            by(Action::Allow, "restricted", 0)
        );
        assert_eq!(check(&p, "vm1", Direction::Egress, out), DENIED);

        // Without the option, an empty group denies egress.
        let p = policy(vec![Group::empty("plain").unwrap()], ports_in("plain"));
        assert_eq!(check(&p, "vm1", Direction::Egress, out), DENIED);
    }

    #[test]
    fn unknown_port() {
        let p = web_server();
        assert_eq!(
            evaluate(
                &p,
                "vm9",
                Direction::Ingress,
                &tcp("192.0.2.1", "10.0.0.5", 80)
            )
            .unwrap_err()
            .to_string(),
            "port 'vm9' does not exist; `sg-ctl port list` shows the ports"
        );
    }
}
