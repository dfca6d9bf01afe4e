//! The same policy for nftables and iptables, from the `Policy` sg runs,
//! for one port: what the port sends (sg's egress rules) in a chain that
//! the input and forward hooks jump to for packets from the port's
//! interface, what it receives (ingress) in one that forward and output
//! jump to for packets toward it.
//!
//! Stateful, as OpenStack's drivers write them and as sg tracks
//! connections: each chain starts by accepting the packets of flows
//! netfilter's connection tracking knows (`ct state established,related`)
//! and dropping those it finds invalid, so the rules decide a flow's first
//! packet only. Then the rules apply in sg's order (priority, group
//! position, rule position); the first that matches decides; IPv6
//! neighbour discovery passes first; the default ends each chain. (Unlike
//! sg, netfilter keeps a flow established when a new policy no longer
//! allows it.)
//!
//! Two nftables forms: `PerRule`, one rule per sg rule and remote prefix,
//! as a translator that maps rules one by one writes them (OpenStack's
//! iptables driver does that); `Sets`, consecutive rules of one shape
//! folded into a verdict map keyed by the concatenation of remote address,
//! protocol and port interval, split where an entry would overlap one
//! before it (a map cannot hold both, and the earlier must win).

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use ipnet::IpNet;
use sg_core::model::{
    Action, Direction, EtherType, IpProtocol, Policy, PortRange, Protocol, Remote, Rule,
    reference::NEIGHBOUR_DISCOVERY,
};

/// How the nftables translation is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NftStyle {
    PerRule,
    Sets,
}

const FROM_PORT: &str = "sg-from-port";
const TO_PORT: &str = "sg-to-port";
const REJECT: &str = "sg-reject";

/// One address family's share of a rule: the rule with its remote and
/// local prefixes and protocols narrowed to that family.
struct Match {
    family: EtherType,
    remotes: Vec<Option<IpNet>>,
    locals: Vec<Option<IpNet>>,
    protocols: Vec<IpProtocol>,
    ports: Vec<PortRange>,
    icmp: (Option<u8>, Option<u8>),
    action: Action,
}

/// The rules of `port` for `direction`, in the order they decide, each
/// split by family; and the default action.
fn ordered(policy: &Policy, port: &str, direction: Direction) -> (Vec<Match>, Action) {
    let Some(port) = policy.port(port) else {
        return (Vec::new(), Action::Drop);
    };
    let groups: Vec<_> = port.groups.iter().filter_map(|g| policy.group(g)).collect();
    let mut rules: Vec<(u32, usize, usize, &Rule)> = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        for (r, rule) in group.rules.iter().enumerate() {
            if rule.direction == direction {
                rules.push((rule.priority, g, r, rule));
            }
        }
    }
    rules.sort_by_key(|&(priority, g, r, _)| (priority, g, r));
    let matches = rules
        .into_iter()
        .flat_map(|(.., rule)| split_by_family(policy, rule))
        .collect();
    let open = direction == Direction::Egress
        && groups.iter().any(|g| g.egress_open_until_first_rule)
        && !groups.iter().any(|g| g.has_rules(Direction::Egress));
    (matches, if open { Action::Allow } else { Action::Drop })
}

fn split_by_family(policy: &Policy, rule: &Rule) -> Vec<Match> {
    let Some(families) = rule.effective_ethertype() else {
        return Vec::new();
    };
    let remotes = match &rule.remote {
        Remote::Any => None,
        Remote::Cidrs(nets) => Some(nets.clone()),
        Remote::Group(group) => Some(policy.members(group)),
    };
    [EtherType::Ipv4, EtherType::Ipv6]
        .into_iter()
        .filter(|&family| families.contains(family))
        .filter_map(|family| {
            let of_family = |nets: &[IpNet]| -> Option<Vec<Option<IpNet>>> {
                let nets: Vec<_> = nets
                    .iter()
                    .filter(|net| EtherType::of(net.addr()) == family)
                    .map(|net| Some(*net))
                    .collect();
                (!nets.is_empty()).then_some(nets)
            };
            let remotes = match &remotes {
                None => vec![None],
                Some(nets) => of_family(nets)?,
            };
            let locals = if rule.local.is_empty() {
                vec![None]
            } else {
                of_family(&rule.local)?
            };
            let protocols = match &rule.protocol {
                Protocol::Any => Vec::new(),
                Protocol::List(list) => {
                    let list: Vec<_> = list
                        .iter()
                        .copied()
                        .filter(|p| p.ethertype().contains(family))
                        .collect();
                    if list.is_empty() {
                        return None;
                    }
                    list
                }
            };
            // A rule of any family and any remote needs no family match.
            let family = if rule.effective_ethertype() == Some(EtherType::Any)
                && remotes == [None]
                && locals == [None]
                && !protocols.iter().any(|p| p.has_icmp())
            {
                EtherType::Any
            } else {
                family
            };
            Some(Match {
                family,
                remotes,
                locals,
                protocols,
                ports: rule.ports.0.clone(),
                icmp: (rule.icmp.type_, rule.icmp.code),
                action: rule.action,
            })
        })
        .fold(Vec::new(), |mut out: Vec<Match>, m| {
            // Both families folded into one family-free rule: keep one.
            if !(m.family == EtherType::Any && out.iter().any(|o| o.family == EtherType::Any)) {
                out.push(m);
            }
            out
        })
}

fn ip_keyword(family: EtherType) -> &'static str {
    if family == EtherType::Ipv6 {
        "ip6"
    } else {
        "ip"
    }
}

/// The remote's and the local address's field for a direction.
fn address_fields(direction: Direction) -> (&'static str, &'static str) {
    match direction {
        Direction::Egress => ("daddr", "saddr"),
        Direction::Ingress => ("saddr", "daddr"),
    }
}

fn nft_verdict(action: Action) -> String {
    match action {
        Action::Allow => "accept".into(),
        Action::Drop => "drop".into(),
        Action::Reject => format!("jump {REJECT}"),
    }
}

fn nft_ports(ports: &[PortRange]) -> String {
    let items: Vec<String> = ports.iter().map(|r| nft_range(*r)).collect();
    format!("{{ {} }}", items.join(", "))
}

fn nft_range(range: PortRange) -> String {
    if range.start == range.end {
        range.start.to_string()
    } else {
        format!("{}-{}", range.start, range.end)
    }
}

/// The nftables ruleset (`nft -f`) of `port`, whose interface is `iface`.
pub fn nftables(policy: &Policy, port: &str, iface: &str, style: NftStyle) -> String {
    let mut out = String::from("table inet sg {\n");
    let mut maps = 0;
    for (chain, direction) in [
        (FROM_PORT, Direction::Egress),
        (TO_PORT, Direction::Ingress),
    ] {
        let (matches, default) = ordered(policy, port, direction);
        let mut body = vec![
            "ct state established,related accept".to_string(),
            "ct state invalid drop".to_string(),
        ];
        let nd: Vec<String> = NEIGHBOUR_DISCOVERY.iter().map(u8::to_string).collect();
        body.push(format!("icmpv6 type {{ {} }} accept", nd.join(", ")));
        match style {
            NftStyle::PerRule => {
                for m in &matches {
                    body.extend(nft_rules(m, direction));
                }
            }
            NftStyle::Sets => {
                for block in fold_into_maps(&matches) {
                    match block {
                        Block::Rule(m) => body.extend(nft_rules(m, direction)),
                        Block::Map(shape, elements) => {
                            let name = format!("m{maps}");
                            maps += 1;
                            let (selector, definition) =
                                nft_map(&name, shape, &elements, direction);
                            out.push_str(&definition);
                            body.push(format!("{selector} vmap @{name}"));
                        }
                    }
                }
            }
        }
        body.push(nft_verdict(default));
        let _ = writeln!(out, "  chain {chain} {{");
        for line in body {
            let _ = writeln!(out, "    {line}");
        }
        out.push_str("  }\n");
    }
    let _ = writeln!(
        out,
        "  chain {REJECT} {{\n    meta l4proto tcp reject with tcp reset\n    \
         reject with icmpx admin-prohibited\n  }}"
    );
    for (hook, jumps) in [
        ("input", vec![("iifname", FROM_PORT)]),
        (
            "forward",
            vec![("iifname", FROM_PORT), ("oifname", TO_PORT)],
        ),
        ("output", vec![("oifname", TO_PORT)]),
    ] {
        let _ = writeln!(
            out,
            "  chain {hook} {{\n    type filter hook {hook} priority filter; policy accept;"
        );
        for (field, chain) in jumps {
            let _ = writeln!(out, "    {field} \"{iface}\" jump {chain}");
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

/// One nftables rule per remote and local prefix of a match.
fn nft_rules(m: &Match, direction: Direction) -> Vec<String> {
    let (remote_field, local_field) = address_fields(direction);
    let ip = ip_keyword(m.family);
    let mut out = Vec::new();
    for remote in &m.remotes {
        for local in &m.locals {
            let mut parts = Vec::new();
            if m.family != EtherType::Any && remote.is_none() && local.is_none() {
                let family = if m.family == EtherType::Ipv6 {
                    "ipv6"
                } else {
                    "ipv4"
                };
                parts.push(format!("meta nfproto {family}"));
            }
            if let Some(net) = remote {
                parts.push(format!("{ip} {remote_field} {net}"));
            }
            if let Some(net) = local {
                parts.push(format!("{ip} {local_field} {net}"));
            }
            match m.protocols.as_slice() {
                [] => {}
                [one] => parts.push(format!("meta l4proto {}", one.0)),
                many => {
                    let list: Vec<String> = many.iter().map(|p| p.0.to_string()).collect();
                    parts.push(format!("meta l4proto {{ {} }}", list.join(", ")));
                }
            }
            if !m.ports.is_empty() {
                parts.push(format!("th dport {}", nft_ports(&m.ports)));
            }
            if let (Some(type_), code) = m.icmp {
                let icmp = if m.family == EtherType::Ipv6 {
                    "icmpv6"
                } else {
                    "icmp"
                };
                parts.push(format!("{icmp} type {type_}"));
                if let Some(code) = code {
                    parts.push(format!("{icmp} code {code}"));
                }
            }
            parts.push(nft_verdict(m.action));
            out.push(parts.join(" "));
        }
    }
    out
}

/// Which fields a map's key holds, and the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    family: EtherType,
    address: bool,
    protocol: bool,
    ports: bool,
}

/// A map key: the remote prefix, protocol and port interval (as the shape
/// says), and the verdict.
#[derive(Clone, Debug)]
struct Element {
    address: Option<IpNet>,
    protocol: Option<u8>,
    ports: Option<PortRange>,
    action: Action,
}

enum Block<'a> {
    Rule(&'a Match),
    Map(Shape, Vec<Element>),
}

/// A map's elements with an index of their address ranges, to find one
/// that a new element would overlap.
#[derive(Default)]
struct Run {
    elements: Vec<Element>,
    /// First address → (last address, the elements with that prefix).
    by_address: BTreeMap<u128, (u128, Vec<usize>)>,
}

fn address_range(net: Option<IpNet>) -> (u128, u128) {
    let Some(net) = net else {
        return (0, u128::MAX);
    };
    let as_u128 = |a: IpAddr| match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    (as_u128(net.network()), as_u128(net.broadcast()))
}

impl Run {
    /// Adds `element` unless it overlaps one already in.
    fn add(&mut self, element: Element) -> Result<(), Element> {
        let (first, last) = address_range(element.address);
        let clash = |i: &usize| {
            let other: &Element = &self.elements[*i];
            other.protocol == element.protocol
                && match (other.ports, element.ports) {
                    (Some(a), Some(b)) => a.start <= b.end && b.start <= a.end,
                    _ => true,
                }
        };
        if let Some((&at, (end, indexes))) = self.by_address.range(..=last).next_back() {
            let same = at == first && *end == last;
            if *end >= first && (!same || indexes.iter().any(clash)) {
                return Err(element);
            }
        }
        let index = self.elements.len();
        self.elements.push(element);
        self.by_address
            .entry(first)
            .or_insert((last, Vec::new()))
            .1
            .push(index);
        Ok(())
    }
}

/// Consecutive matches of one shape as maps, in order; what a map cannot
/// say (ICMP, local addresses, matching everything) as rules between them.
fn fold_into_maps(matches: &[Match]) -> Vec<Block<'_>> {
    let mut out = Vec::new();
    let mut current: Option<(Shape, Run)> = None;
    let flush = |current: &mut Option<(Shape, Run)>, out: &mut Vec<Block>| {
        if let Some((shape, run)) = current.take() {
            out.push(Block::Map(shape, run.elements));
        }
    };
    for m in matches {
        let shape = Shape {
            family: m.family,
            address: m.remotes != [None],
            protocol: !m.protocols.is_empty(),
            ports: !m.ports.is_empty(),
        };
        let mappable =
            m.icmp.0.is_none() && m.locals == [None] && (shape.address || shape.protocol);
        if !mappable {
            flush(&mut current, &mut out);
            out.push(Block::Rule(m));
            continue;
        }
        if current.as_ref().is_some_and(|(s, _)| *s != shape) {
            flush(&mut current, &mut out);
        }
        let protocols: Vec<Option<u8>> = if shape.protocol {
            m.protocols.iter().map(|p| Some(p.0)).collect()
        } else {
            vec![None]
        };
        let ports: Vec<Option<PortRange>> = if shape.ports {
            m.ports.iter().copied().map(Some).collect()
        } else {
            vec![None]
        };
        for &address in &m.remotes {
            for &protocol in &protocols {
                for &ports in &ports {
                    let mut element = Element {
                        address,
                        protocol,
                        ports,
                        action: m.action,
                    };
                    loop {
                        let (_, run) = current.get_or_insert_with(|| (shape, Run::default()));
                        match run.add(element) {
                            Ok(()) => break,
                            Err(back) => {
                                element = back;
                                flush(&mut current, &mut out);
                            }
                        }
                    }
                }
            }
        }
    }
    flush(&mut current, &mut out);
    out
}

/// The lookup expression and the definition of a verdict map.
fn nft_map(
    name: &str,
    shape: Shape,
    elements: &[Element],
    direction: Direction,
) -> (String, String) {
    let (remote_field, _) = address_fields(direction);
    let mut selector = Vec::new();
    let mut types = Vec::new();
    if shape.address {
        selector.push(format!("{} {remote_field}", ip_keyword(shape.family)));
        types.push(if shape.family == EtherType::Ipv6 {
            "ipv6_addr"
        } else {
            "ipv4_addr"
        });
    }
    if shape.protocol {
        selector.push("meta l4proto".to_string());
        types.push("inet_proto");
    }
    if shape.ports {
        selector.push("th dport".to_string());
        types.push("inet_service");
    }
    let mut selector = selector.join(" . ");
    if !shape.address && shape.family != EtherType::Any {
        let family = if shape.family == EtherType::Ipv6 {
            "ipv6"
        } else {
            "ipv4"
        };
        selector = format!("meta nfproto {family} {selector}");
    }
    let items: Vec<String> = elements
        .iter()
        .map(|e| {
            let mut key = Vec::new();
            key.extend(e.address.map(|a| a.to_string()));
            key.extend(e.protocol.map(|p| p.to_string()));
            key.extend(e.ports.map(nft_range));
            format!("{} : {}", key.join(" . "), nft_verdict(e.action))
        })
        .collect();
    let definition = format!(
        "  map {name} {{\n    type {} : verdict\n    flags interval\n    elements = {{\n      {}\n    }}\n  }}\n",
        types.join(" . "),
        items.join(",\n      ")
    );
    (selector, definition)
}

/// The iptables-restore (`v6`: ip6tables-restore) input for `port`,
/// whose interface is `iface`: one rule per sg rule, remote and local
/// prefix, protocol and group of up to 15 ports (multiport's limit).
pub fn iptables(policy: &Policy, port: &str, iface: &str, v6: bool) -> String {
    let family = if v6 { EtherType::Ipv6 } else { EtherType::Ipv4 };
    let mut out = String::from("*filter\n");
    for chain in [FROM_PORT, TO_PORT, REJECT] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    let _ = writeln!(out, "-A INPUT -i {iface} -j {FROM_PORT}");
    let _ = writeln!(out, "-A FORWARD -i {iface} -j {FROM_PORT}");
    let _ = writeln!(out, "-A FORWARD -o {iface} -j {TO_PORT}");
    let _ = writeln!(out, "-A OUTPUT -o {iface} -j {TO_PORT}");
    let (icmp, icmp_type, reject_with) = if v6 {
        ("ipv6-icmp", "--icmpv6-type", "icmp6-adm-prohibited")
    } else {
        ("icmp", "--icmp-type", "icmp-admin-prohibited")
    };
    for (chain, direction) in [
        (FROM_PORT, Direction::Egress),
        (TO_PORT, Direction::Ingress),
    ] {
        let (remote_flag, local_flag) = match direction {
            Direction::Egress => ("-d", "-s"),
            Direction::Ingress => ("-s", "-d"),
        };
        let _ = writeln!(
            out,
            "-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        );
        let _ = writeln!(out, "-A {chain} -m conntrack --ctstate INVALID -j DROP");
        if v6 {
            for kind in NEIGHBOUR_DISCOVERY {
                let _ = writeln!(out, "-A {chain} -p {icmp} {icmp_type} {kind} -j ACCEPT");
            }
        }
        let (matches, default) = ordered(policy, port, direction);
        for m in matches
            .iter()
            .filter(|m| m.family == EtherType::Any || m.family == family)
        {
            let target = match m.action {
                Action::Allow => "ACCEPT",
                Action::Drop => "DROP",
                Action::Reject => REJECT,
            };
            let protocols: Vec<Option<IpProtocol>> = if m.protocols.is_empty() {
                vec![None]
            } else {
                m.protocols.iter().copied().map(Some).collect()
            };
            let port_groups: Vec<Option<String>> = if m.ports.is_empty() {
                vec![None]
            } else {
                multiport_groups(&m.ports).into_iter().map(Some).collect()
            };
            for remote in &m.remotes {
                for local in &m.locals {
                    for protocol in &protocols {
                        for ports in &port_groups {
                            let mut rule = format!("-A {chain}");
                            if let Some(net) = remote {
                                let _ = write!(rule, " {remote_flag} {net}");
                            }
                            if let Some(net) = local {
                                let _ = write!(rule, " {local_flag} {net}");
                            }
                            match protocol {
                                Some(p) if p.has_icmp() => {
                                    let _ = write!(rule, " -p {icmp}");
                                    match m.icmp {
                                        (Some(t), Some(c)) => {
                                            let _ = write!(rule, " {icmp_type} {t}/{c}");
                                        }
                                        (Some(t), None) => {
                                            let _ = write!(rule, " {icmp_type} {t}");
                                        }
                                        _ => {}
                                    }
                                }
                                Some(p) => {
                                    let _ = write!(rule, " -p {}", p.0);
                                }
                                None => {}
                            }
                            if let Some(ports) = ports {
                                let _ = write!(rule, " -m multiport --dports {ports}");
                            }
                            let _ = writeln!(out, "{rule} -j {target}");
                        }
                    }
                }
            }
        }
        let default = if default == Action::Allow {
            "ACCEPT"
        } else {
            "DROP"
        };
        let _ = writeln!(out, "-A {chain} -j {default}");
    }
    let _ = writeln!(out, "-A {REJECT} -p tcp -j REJECT --reject-with tcp-reset");
    let _ = writeln!(out, "-A {REJECT} -j REJECT --reject-with {reject_with}");
    out.push_str("COMMIT\n");
    out
}

/// Port ranges as multiport lists of at most 15 ports (a range counts 2).
fn multiport_groups(ports: &[PortRange]) -> Vec<String> {
    let mut groups: Vec<(usize, Vec<String>)> = Vec::new();
    for range in ports {
        let (weight, text) = if range.start == range.end {
            (1, range.start.to_string())
        } else {
            (2, format!("{}:{}", range.start, range.end))
        };
        match groups.last_mut() {
            Some((used, items)) if *used + weight <= 15 => {
                *used += weight;
                items.push(text);
            }
            _ => groups.push((weight, vec![text])),
        }
    }
    groups
        .into_iter()
        .map(|(_, items)| items.join(","))
        .collect()
}

#[cfg(test)]
mod tests {
    use sg_tests::{Netns, require_root};

    use super::*;
    use crate::filter::BENCH_PORT;

    fn chain<'a>(ruleset: &'a str, name: &str) -> Vec<&'a str> {
        let start = ruleset
            .find(&format!("chain {name} {{"))
            .expect("the chain is there");
        ruleset[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.trim() != "}")
            .map(str::trim)
            .collect()
    }

    #[test]
    fn per_rule_keeps_sg_order_one_rule_per_remote() {
        let nft = nftables(
            &crate::sample_policy(),
            BENCH_PORT,
            "port0",
            NftStyle::PerRule,
        );
        assert_eq!(
            chain(&nft, FROM_PORT),
            [
                "ct state established,related accept",
                "ct state invalid drop",
                "icmpv6 type { 130, 131, 132, 133, 134, 135, 136, 143 } accept",
                // Priority 10 goes before the default priority.
                "meta l4proto { 6, 17 } th dport { 25, 465-587 } jump sg-reject",
                "ip daddr 198.19.0.0/24 meta l4proto 17 th dport { 53 } accept",
                "ip daddr 198.19.0.5/32 meta l4proto 17 th dport { 53 } drop",
                "ip daddr 198.19.1.0/24 meta l4proto 17 th dport { 9 } drop",
                "accept",
                "drop",
            ]
        );
        assert_eq!(
            chain(&nft, TO_PORT),
            [
                "ct state established,related accept",
                "ct state invalid drop",
                "icmpv6 type { 130, 131, 132, 133, 134, 135, 136, 143 } accept",
                "meta nfproto ipv4 meta l4proto 1 icmp type 8 icmp code 0 accept",
                "ip6 saddr 2001:db8::/64 meta l4proto 58 icmpv6 type 128 accept",
                // The group's members: the port's own addresses and the
                // external members, each with the local address.
                "ip saddr 198.18.0.2/32 ip daddr 198.18.0.2/32 meta l4proto 6 th dport { 22 } accept",
                "ip saddr 198.18.9.0/24 ip daddr 198.18.0.2/32 meta l4proto 6 th dport { 22 } accept",
                "meta l4proto 47 accept",
                "drop",
            ]
        );
    }

    #[test]
    fn maps_split_where_a_later_entry_overlaps_an_earlier_one() {
        let nft = nftables(&crate::sample_policy(), BENCH_PORT, "port0", NftStyle::Sets);
        // 198.19.0.5 is inside 198.19.0.0/24: the /24 must decide first,
        // so the /32 goes to a map of its own after it.
        assert_eq!(
            chain(&nft, FROM_PORT)[3..],
            [
                "meta l4proto . th dport vmap @m0",
                "ip daddr . meta l4proto . th dport vmap @m1",
                "ip daddr . meta l4proto . th dport vmap @m2",
                "accept",
                "drop",
            ]
        );
        assert!(nft.contains("6 . 465-587 : jump sg-reject"), "{nft}");
        assert!(nft.contains("198.19.0.0/24 . 17 . 53 : accept\n"), "{nft}");
        assert!(nft.contains("198.19.0.5/32 . 17 . 53 : drop,\n"), "{nft}");
        assert!(nft.contains("198.19.1.0/24 . 17 . 9 : drop\n"), "{nft}");
    }

    #[test]
    fn iptables_splits_protocols_and_families() {
        let v4 = iptables(&crate::sample_policy(), BENCH_PORT, "port0", false);
        for chain in [FROM_PORT, TO_PORT] {
            let rules: Vec<&str> = v4
                .lines()
                .filter(|l| l.starts_with(&format!("-A {chain} ")))
                .collect();
            assert_eq!(
                rules[..2],
                [
                    format!("-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
                    format!("-A {chain} -m conntrack --ctstate INVALID -j DROP"),
                ]
            );
        }
        assert!(
            v4.contains("-A sg-from-port -p 6 -m multiport --dports 25,465:587 -j sg-reject\n")
        );
        assert!(
            v4.contains("-A sg-from-port -p 17 -m multiport --dports 25,465:587 -j sg-reject\n")
        );
        assert!(v4.contains("-A sg-to-port -p icmp --icmp-type 8/0 -j ACCEPT\n"));
        assert!(!v4.contains("2001:db8"));
        let v6 = iptables(&crate::sample_policy(), BENCH_PORT, "port0", true);
        assert!(
            v6.contains(
                "-A sg-to-port -s 2001:db8::/64 -p ipv6-icmp --icmpv6-type 128 -j ACCEPT\n"
            )
        );
        assert!(v6.contains("-A sg-to-port -p 47 -j ACCEPT\n"));
        assert!(!v6.contains("198.18"));
    }

    #[test]
    fn nft_and_iptables_accept_the_translations() {
        require_root!();
        let ns = Netns::new().unwrap();
        ns.ip(&["link", "add", "port0", "type", "veth"]).unwrap();
        for policy in [crate::sample_policy(), crate::bench_policy(50)] {
            for style in [NftStyle::PerRule, NftStyle::Sets] {
                let ruleset = nftables(&policy, BENCH_PORT, "port0", style);
                ns.feed("nft", &["-c", "-f", "-"], &ruleset).unwrap();
            }
            for (tool, v6) in [("iptables-restore", false), ("ip6tables-restore", true)] {
                let rules = iptables(&policy, BENCH_PORT, "port0", v6);
                ns.feed(tool, &["--test"], &rules).unwrap();
            }
        }
    }
}
