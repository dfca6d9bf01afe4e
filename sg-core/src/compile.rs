//! The policy compiler: one port's rules become the entries of the tries
//! and the hash that the datapath looks up, so that the cost per packet
//! does not depend on the number of rules.
//!
//! Within a scope (policy generation, local-address class, direction,
//! family) every rule is a candidate `order << 32 | counter << 2 | action`
//! and the smallest matching candidate decides. Rules are split by what
//! they constrain:
//!
//! - the remote address only: folded into the value of every remote-trie
//!   entry their prefixes cover;
//! - protocol/port only: folded into the value of the L4-trie entries of
//!   the protocols and port intervals they match;
//! - both: one `SG_VERDICT` entry per (remote class, L4 class) pair they
//!   match, where a class is the set of rules an address (or a
//!   protocol/port) matches, so addresses or ports that no rule tells apart
//!   share one;
//! - neither: folded into every remote entry, like the default verdict.
//!
//! A packet's verdict is the smallest of the three values it finds.
//!
//! The port's DHCP servers go with its policy: an `SG_DHCP_SERVERS` entry
//! per server it accepts, or one of `::/0` when it accepts any.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use ipnet::IpNet;
use rustc_hash::FxHashMap;
use sg_common::{
    Class, DHCP_SERVER_KEY_POLICY_BITS, DhcpServerKey, FAMILY_IPV4, FAMILY_IPV6, L4Key, LocalKey,
    MAX_RULE_COUNTERS, RemoteKey, SCOPE_BITS, Scope, VerdictKey, candidate, ipv4_mapped, skip,
};

use crate::model::{
    Action, Direction, EtherType, IpProtocol, Policy, Port, Protocol, Remote, Rule,
};

/// A trie entry: prefix length in bits and key.
pub type TrieEntry<K, V> = (u32, K, V);

/// The map entries of one port's policy under one policy id.
#[derive(Debug, Default)]
pub struct Compiled {
    pub local: Vec<TrieEntry<LocalKey, u32>>,
    pub remote: Vec<TrieEntry<RemoteKey, Class>>,
    /// Single addresses: the hash in front of the remote trie.
    pub remote_exact: Vec<(RemoteKey, Class)>,
    pub l4: Vec<TrieEntry<L4Key, Class>>,
    /// Single ports, ICMP type/code pairs and the values of short ranges
    /// (see `spread`): the hash in front of the L4 trie.
    pub l4_exact: Vec<(L4Key, Class)>,
    pub verdict: Vec<(VerdictKey, u64)>,
    /// The DHCP servers whose replies the port accepts.
    pub dhcp_servers: Vec<TrieEntry<DhcpServerKey, u32>>,
}

impl Compiled {
    pub fn entries(&self) -> usize {
        self.local.len()
            + self.remote.len()
            + self.remote_exact.len()
            + self.l4.len()
            + self.l4_exact.len()
            + self.verdict.len()
            + self.dhcp_servers.len()
    }

    /// The lookups the datapath may skip for this policy (`sg_common::skip`
    /// bits): the local trie when no address of the port is in a class of
    /// its own, an exact hash that holds nothing.
    pub fn skips(&self) -> u32 {
        let mut skips = 0;
        if self.local.iter().all(|&(_, _, class)| class == 0) {
            skips |= skip::LOCAL;
        }
        if self.remote_exact.is_empty() {
            skips |= skip::REMOTE_EXACT;
        }
        if self.l4_exact.is_empty() {
            skips |= skip::L4_EXACT;
        }
        skips
    }

    /// Moves the full-length trie entries to the exact hashes. The longest
    /// prefix that matches an address is the address itself when the trie
    /// holds it, so a hit in the hash is what the trie would answer, in
    /// one hash lookup rather than a walk as deep as the trie. The L4
    /// trie's short blocks go there too, spread.
    fn split_exact(&mut self) {
        let (exact, prefixes) = std::mem::take(&mut self.remote)
            .into_iter()
            .partition(|&(bits, ..)| bits == SCOPE_BITS + 128);
        self.remote = prefixes;
        self.remote_exact = exact.into_iter().map(|(_, k, v)| (k, v)).collect();
        let (short, prefixes) = std::mem::take(&mut self.l4)
            .into_iter()
            .partition(|&(bits, ..)| bits + L4_SPREAD_BITS >= SCOPE_BITS + 32);
        self.l4 = prefixes;
        self.l4_exact = spread(short);
    }
}

/// L4-trie prefixes of up to `1 << L4_SPREAD_BITS` values (short port
/// ranges) go to the exact hash too, an entry per value: a packet of such
/// a range then takes one hash lookup where it took a trie walk, for at
/// most eight entries where there were one or two.
const L4_SPREAD_BITS: u32 = 3;

/// The exact entries of L4-trie prefixes that cover few values: each
/// value with the class of the longest of them that covers it, which is
/// what the trie would answer (any prefix left in the trie is shorter).
/// In key order.
fn spread(mut prefixes: Vec<TrieEntry<L4Key, Class>>) -> Vec<(L4Key, Class)> {
    prefixes.sort_by_key(|&(bits, ..)| bits);
    let mut values = BTreeMap::new();
    for (bits, key, class) in prefixes {
        let free = SCOPE_BITS + 32 - bits;
        let last = ((1u32 << free) - 1) as u16;
        let first = u16::from_be_bytes(key.value) & !last;
        for value in first..=first | last {
            let key = L4Key {
                value: value.to_be_bytes(),
                ..key
            };
            values.insert((key.scope, key.protocol, value), (key, class));
        }
    }
    values.into_values().collect()
}

/// Why a policy cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("port '{0}' is not in the policy")]
    UnknownPort(String),
    #[error(
        "the policy has {count} rules; this host counts at most {max} (remove rules or split groups)"
    )]
    TooManyRules { count: usize, max: u32 },
}

/// Counter ids of every rule of a policy: 1, 2, … in group and rule order
/// (0 is the default verdict's).
pub fn counter_ids(policy: &Policy) -> Result<HashMap<(String, usize), u32>, CompileError> {
    let count: usize = policy.groups.iter().map(|g| g.rules.len()).sum();
    if count >= MAX_RULE_COUNTERS as usize {
        return Err(CompileError::TooManyRules {
            count,
            max: MAX_RULE_COUNTERS - 1,
        });
    }
    let mut ids = HashMap::new();
    for group in &policy.groups {
        for index in 0..group.rules.len() {
            let id = ids.len() as u32 + 1;
            ids.insert((group.name.clone(), index), id);
        }
    }
    Ok(ids)
}

/// A rule of the port in evaluation order, with its candidate.
struct Ranked<'a> {
    rule: &'a Rule,
    candidate: u64,
}

/// Compiles the policy of `port` under `policy_id`.
pub fn compile(
    policy: &Policy,
    port: &str,
    policy_id: u32,
    counters: &HashMap<(String, usize), u32>,
) -> Result<Compiled, CompileError> {
    let port = policy
        .port(port)
        .ok_or_else(|| CompileError::UnknownPort(port.to_string()))?;
    let groups: Vec<_> = port
        .groups
        .iter()
        .filter_map(|name| policy.group(name))
        .collect();

    let mut ordered = Vec::new();
    for (position, group) in groups.iter().enumerate() {
        for (index, rule) in group.rules.iter().enumerate() {
            let action = match rule.action {
                Action::Allow => candidate::ALLOW,
                Action::Drop => candidate::DROP,
                Action::Reject => candidate::REJECT,
            };
            let counter = counters[&(group.name.clone(), index)];
            ordered.push(((rule.priority, position, index), rule, counter, action));
        }
    }
    ordered.sort_by_key(|(key, ..)| *key);
    let ranked: Vec<Ranked> = ordered
        .iter()
        .enumerate()
        .map(|(order, (_, rule, counter, action))| Ranked {
            rule,
            candidate: candidate::new(order as u32, *counter, *action),
        })
        .collect();

    let egress_open = groups.iter().any(|g| g.egress_open_until_first_rule)
        && !groups.iter().any(|g| g.has_rules(Direction::Egress));
    let default = |direction| {
        let action = if direction == Direction::Egress && egress_open {
            candidate::ALLOW
        } else {
            candidate::DROP
        };
        candidate::new(u32::MAX, 0, action)
    };

    let mut out = Compiled {
        dhcp_servers: dhcp_servers(port, policy_id),
        ..Compiled::default()
    };
    let local_classes = local_classes(&ranked, policy_id, &mut out);
    for (local_class, applies) in local_classes.iter().enumerate() {
        for direction in [Direction::Egress, Direction::Ingress] {
            for family in [EtherType::Ipv4, EtherType::Ipv6] {
                let scope = Scope {
                    policy: policy_id,
                    local_class: local_class as u16,
                    direction: match direction {
                        Direction::Egress => sg_common::Direction::Egress as u8,
                        Direction::Ingress => sg_common::Direction::Ingress as u8,
                    },
                    family: family_byte(family),
                };
                let rules: Vec<ScopedRule> = ranked
                    .iter()
                    .enumerate()
                    .filter(|(i, r)| r.rule.direction == direction && applies[*i])
                    .filter_map(|(_, r)| ScopedRule::new(policy, r, family))
                    .collect();
                compile_scope(scope, &rules, default(direction), &mut out);
            }
        }
    }
    out.split_exact();
    Ok(out)
}

/// The port's DHCP servers as trie entries: one per server, or `::/0` when
/// it accepts any.
fn dhcp_servers(port: &Port, policy_id: u32) -> Vec<TrieEntry<DhcpServerKey, u32>> {
    let entry = |bits, addr| {
        let key = DhcpServerKey {
            policy: policy_id,
            addr,
        };
        (DHCP_SERVER_KEY_POLICY_BITS + bits, key, 1)
    };
    if port.dhcp_servers.is_empty() {
        return vec![entry(0, [0; 16])];
    }
    port.dhcp_servers
        .iter()
        .map(|&server| {
            let (bits, _, addr) = trie_prefix(IpNet::from(server));
            entry(bits, addr)
        })
        .collect()
}

fn family_byte(family: EtherType) -> u8 {
    if family == EtherType::Ipv4 {
        FAMILY_IPV4
    } else {
        FAMILY_IPV6
    }
}

/// Splits the port's own addresses into classes by the rules whose `local`
/// they fall in; writes the local-trie entries and returns, per class,
/// which rules apply (class 0: addresses no `local` list names).
fn local_classes(ranked: &[Ranked], policy_id: u32, out: &mut Compiled) -> Vec<Vec<bool>> {
    let unrestricted: Vec<bool> = ranked.iter().map(|r| r.rule.local.is_empty()).collect();
    let prefixes: Vec<IpNet> = sorted_unique(ranked.iter().flat_map(|r| r.rule.local.clone()));
    let mut classes = vec![unrestricted.clone()];
    for prefix in prefixes {
        let applies: Vec<bool> = ranked
            .iter()
            .zip(&unrestricted)
            .map(|(r, &all)| all || r.rule.local.iter().any(|net| covers(net, &prefix)))
            .collect();
        let class = classes
            .iter()
            .position(|c| *c == applies)
            .unwrap_or_else(|| {
                classes.push(applies);
                classes.len() - 1
            });
        let (bits, family, addr) = trie_prefix(prefix);
        let key = LocalKey {
            policy: policy_id,
            family: u32::from(family),
            addr,
        };
        out.local.push((SCOPE_BITS + bits, key, class as u32));
    }
    classes
}

fn covers(outer: &IpNet, inner: &IpNet) -> bool {
    outer.prefix_len() <= inner.prefix_len() && outer.contains(&inner.network())
}

fn sorted_unique(nets: impl Iterator<Item = IpNet>) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = nets.map(|n| n.trunc()).collect();
    nets.sort();
    nets.dedup();
    nets
}

/// Bits of the address part of a trie key, family, and the address in
/// IPv4-mapped form.
fn trie_prefix(net: IpNet) -> (u32, u8, [u8; 16]) {
    match net.trunc() {
        IpNet::V4(net) => (
            96 + u32::from(net.prefix_len()),
            FAMILY_IPV4,
            ipv4_mapped(net.addr().octets()),
        ),
        IpNet::V6(net) => (
            u32::from(net.prefix_len()),
            FAMILY_IPV6,
            net.addr().octets(),
        ),
    }
}

/// Inclusive ranges of the 16-bit L4 value (port, or ICMP type and code).
type Ranges = Vec<(u16, u16)>;

/// What a rule matches within one family.
struct ScopedRule {
    candidate: u64,
    /// `None`: any remote address.
    remote: Option<Vec<IpNet>>,
    /// `None`: any protocol. Else per protocol the 16-bit value ranges
    /// (`None`: all of them).
    l4: Option<Vec<(u8, Option<Ranges>)>>,
}

impl ScopedRule {
    /// The rule as seen by packets of `family`; `None` when it can match
    /// none of them.
    fn new(policy: &Policy, ranked: &Ranked, family: EtherType) -> Option<ScopedRule> {
        let rule = ranked.rule;
        if !rule.ethertype.contains(family) {
            return None;
        }
        let in_family = |net: &IpNet| EtherType::of(net.addr()) == family;
        let remote: Option<Vec<IpNet>> = match &rule.remote {
            Remote::Any => None,
            Remote::Cidrs(nets) => Some(nets.iter().copied().filter(in_family).collect()),
            Remote::Group(group) => Some(
                policy
                    .members(group)
                    .into_iter()
                    .filter(in_family)
                    .collect(),
            ),
        };
        let remote = match remote {
            Some(nets) if nets.is_empty() => return None,
            Some(nets) if nets.iter().any(|n| n.prefix_len() == 0) => None,
            other => other.map(|nets| sorted_unique(nets.into_iter())),
        };
        let l4 = match &rule.protocol {
            Protocol::Any => None,
            Protocol::List(protocols) => {
                let l4: Vec<_> = protocols
                    .iter()
                    .filter(|p| p.ethertype().contains(family))
                    .filter_map(|&p| l4_values(rule, p).map(|values| (p.0, values)))
                    .collect();
                if l4.is_empty() {
                    return None;
                }
                Some(l4)
            }
        };
        Some(ScopedRule {
            candidate: ranked.candidate,
            remote,
            l4,
        })
    }
}

/// The value ranges a rule matches for one of its protocols: `Some(None)`
/// for all, `None` when the rule's ports or ICMP fields rule the protocol
/// out.
fn l4_values(rule: &Rule, protocol: IpProtocol) -> Option<Option<Ranges>> {
    if !rule.ports.is_any() {
        if !protocol.has_ports() {
            return None;
        }
        return Some(Some(
            rule.ports.0.iter().map(|r| (r.start, r.end)).collect(),
        ));
    }
    if let Some(type_) = rule.icmp.type_ {
        if !protocol.has_icmp() {
            return None;
        }
        let base = u16::from(type_) << 8;
        let range = match rule.icmp.code {
            Some(code) => (base | u16::from(code), base | u16::from(code)),
            None => (base, base | 0xff),
        };
        return Some(Some(vec![range]));
    }
    Some(None)
}

/// Classes of one dimension: sets of rule indexes, numbered in the order
/// first seen.
#[derive(Default)]
struct Classes {
    ids: FxHashMap<Vec<usize>, u32>,
    members: Vec<Vec<usize>>,
}

impl Classes {
    fn id(&mut self, rules: Vec<usize>) -> u32 {
        if let Some(&id) = self.ids.get(&rules) {
            return id;
        }
        let id = self.members.len() as u32;
        self.members.push(rules.clone());
        self.ids.insert(rules, id);
        id
    }
}

fn compile_scope(scope: Scope, rules: &[ScopedRule], default: u64, out: &mut Compiled) {
    // Rules after the first that matches everything can never decide.
    let end = rules
        .iter()
        .position(|r| r.remote.is_none() && r.l4.is_none())
        .map_or(rules.len(), |i| i + 1);
    let rules = &rules[..end];
    let unconditional = rules
        .iter()
        .filter(|r| r.remote.is_none() && r.l4.is_none())
        .map(|r| r.candidate)
        .fold(default, u64::min);
    let best_of = |members: &[usize], wanted: &dyn Fn(&ScopedRule) -> bool| {
        members
            .iter()
            .map(|&i| &rules[i])
            .filter(|r| wanted(r))
            .map(|r| r.candidate)
            .fold(unconditional, u64::min)
    };

    // Remote addresses.
    let mut remote_classes = Classes::default();
    let family_root = IpNet::new(
        if scope.family == FAMILY_IPV4 {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u8; 16])
        },
        0,
    )
    .expect("a /0 is valid");
    let mut by_prefix: BTreeMap<IpNet, Vec<usize>> = BTreeMap::new();
    by_prefix.insert(family_root, Vec::new());
    for (i, rule) in rules.iter().enumerate() {
        for net in rule.remote.iter().flatten() {
            by_prefix.entry(*net).or_default().push(i);
        }
    }
    let mut remote_entries = Vec::new();
    // Prefixes in order of address, then length: one that covers another
    // comes before it, so the stack holds the chain of prefixes covering
    // the current one, each with the rules of it and of all that cover it.
    let mut covering: Vec<(IpNet, Vec<usize>)> = Vec::new();
    for (prefix, own) in &by_prefix {
        while covering.last().is_some_and(|(net, _)| !covers(net, prefix)) {
            covering.pop();
        }
        let mut members = covering
            .last()
            .map_or_else(Vec::new, |(_, members)| members.clone());
        members.extend(own);
        members.sort_unstable();
        members.dedup();
        covering.push((*prefix, members.clone()));
        let best = best_of(&members, &|r| r.l4.is_none());
        let class = remote_classes.id(members);
        let (bits, _, addr) = trie_prefix(*prefix);
        let value = Class::new(best, class);
        remote_entries.push((SCOPE_BITS + bits, RemoteKey { scope, addr }, value));
    }

    // Protocols and ports.
    let mut l4_classes = Classes::default();
    let root = Class::new(unconditional, l4_classes.id(Vec::new()));
    let key = |protocol: u8, value: u16| L4Key {
        scope,
        protocol,
        _pad: 0,
        value: value.to_be_bytes(),
    };
    let mut l4_entries = vec![(SCOPE_BITS, key(0, 0), root)];
    let mut per_protocol: BTreeMap<u8, Vec<(usize, Option<&Ranges>)>> = BTreeMap::new();
    for (i, rule) in rules.iter().enumerate() {
        for (protocol, values) in rule.l4.iter().flatten() {
            per_protocol
                .entry(*protocol)
                .or_default()
                .push((i, values.as_ref()));
        }
    }
    for (protocol, matches) in &per_protocol {
        let whole: Vec<usize> = matches
            .iter()
            .filter(|(_, values)| values.is_none())
            .map(|(i, _)| *i)
            .collect();
        let best = best_of(&whole, &|r| r.remote.is_none());
        let class = l4_classes.id(whole.clone());
        l4_entries.push((SCOPE_BITS + 16, key(*protocol, 0), Class::new(best, class)));
        // Elementary intervals between the range boundaries, swept in
        // order: at each boundary the rules whose ranges start there join
        // the active ones, those whose ranges ended leave.
        let mut events: BTreeMap<u32, Vec<(usize, bool)>> = BTreeMap::new();
        for (i, values) in matches {
            for &(start, end) in values.iter().copied().flatten() {
                events.entry(u32::from(start)).or_default().push((*i, true));
                events
                    .entry(u32::from(end) + 1)
                    .or_default()
                    .push((*i, false));
            }
        }
        // Rule → how many of its ranges cover the current interval.
        let mut active: BTreeMap<usize, u32> = BTreeMap::new();
        let cuts: Vec<u32> = events.keys().copied().collect();
        for pair in cuts.windows(2) {
            for &(i, starts) in &events[&pair[0]] {
                let covering = active.entry(i).or_default();
                if starts {
                    *covering += 1;
                } else {
                    *covering -= 1;
                    if *covering == 0 {
                        active.remove(&i);
                    }
                }
            }
            if active.is_empty() {
                continue;
            }
            let (start, end) = (pair[0], pair[1] - 1);
            let mut members = whole.clone();
            members.extend(active.keys());
            members.sort_unstable();
            members.dedup();
            let best = best_of(&members, &|r| r.remote.is_none());
            let class = l4_classes.id(members);
            for (value, bits) in range_prefixes(start as u16, end as u16) {
                l4_entries.push((
                    SCOPE_BITS + 16 + bits,
                    key(*protocol, value),
                    Class::new(best, class),
                ));
            }
        }
    }

    // Rules that need both: one entry per class pair, the first rule wins.
    let mut remote_of: Vec<Vec<u32>> = vec![Vec::new(); rules.len()];
    for (class, members) in remote_classes.members.iter().enumerate() {
        for &i in members {
            remote_of[i].push(class as u32);
        }
    }
    let mut l4_of: Vec<Vec<u32>> = vec![Vec::new(); rules.len()];
    for (class, members) in l4_classes.members.iter().enumerate() {
        for &i in members {
            l4_of[i].push(class as u32);
        }
    }
    let mut verdicts: FxHashMap<(u32, u32), u64> = FxHashMap::default();
    for (i, rule) in rules.iter().enumerate() {
        if rule.remote.is_none() || rule.l4.is_none() {
            continue;
        }
        for &remote_class in &remote_of[i] {
            for &l4_class in &l4_of[i] {
                verdicts
                    .entry((remote_class, l4_class))
                    .or_insert(rule.candidate);
            }
        }
    }
    // A class in one pair or none carries it (see `Class::pair`); only
    // the pairs of two classes with more go to `SG_VERDICT`.
    let pairs = |count, other_of: fn((u32, u32)) -> (u32, u32)| {
        let mut only = vec![(Class::NO_PAIR, candidate::NONE); count];
        for (&classes, &best) in &verdicts {
            let (class, other) = other_of(classes);
            let slot = &mut only[class as usize];
            *slot = match slot.0 {
                Class::NO_PAIR => (other, best),
                _ => (Class::PAIRS, candidate::NONE),
            };
        }
        only
    };
    let remote_pairs = pairs(remote_classes.members.len(), |(r, l)| (r, l));
    let l4_pairs = pairs(l4_classes.members.len(), |(r, l)| (l, r));
    let values = remote_entries
        .iter_mut()
        .map(|(_, _, value)| (value, &remote_pairs))
        .chain(
            l4_entries
                .iter_mut()
                .map(|(_, _, value)| (value, &l4_pairs)),
        );
    for (value, pairs) in values {
        (value.pair, value.pair_best) = pairs[value.class as usize];
    }
    let remote_least = remote_entries
        .iter()
        .map(|(.., value)| value.best)
        .fold(candidate::NONE, u64::min);
    for (.., value) in &mut l4_entries {
        if value.pair == Class::NO_PAIR && value.best <= remote_least {
            value.pair = Class::ALONE;
        }
    }
    out.remote.extend(remote_entries);
    out.l4.extend(l4_entries);
    out.verdict.extend(
        verdicts
            .into_iter()
            .filter(|&((r, l), _)| {
                remote_pairs[r as usize].0 == Class::PAIRS && l4_pairs[l as usize].0 == Class::PAIRS
            })
            .map(|((remote_class, l4_class), best)| {
                (
                    VerdictKey {
                        scope,
                        remote_class,
                        l4_class,
                    },
                    best,
                )
            }),
    );
}

/// The inclusive range `start..=end` as aligned blocks: (first value,
/// prefix bits of the 16).
fn range_prefixes(start: u16, end: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let mut at = u32::from(start);
    let end = u32::from(end);
    while at <= end {
        let mut size = if at == 0 {
            1 << 16
        } else {
            at & at.wrapping_neg()
        };
        while at + size - 1 > end {
            size /= 2;
        }
        out.push((at as u16, 16 - size.trailing_zeros()));
        at += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MacAddr;

    /// An ingress rule of TCP `ports` from anywhere.
    fn tcp(ports: &str) -> Rule {
        Rule {
            protocol: "tcp".parse().unwrap(),
            ports: ports.parse().unwrap(),
            ..Rule::new(Direction::Ingress)
        }
    }

    /// `rules` in a group of port vm's, compiled as policy 1.
    fn compile_rules(rules: Vec<Rule>) -> Compiled {
        let mut group = crate::model::Group::empty("g").unwrap();
        group.rules = rules;
        let mut port = Port::new("vm", "tap0", MacAddr([2, 0, 0, 0, 0, 2]));
        port.groups = vec!["g".into()];
        let policy = Policy {
            groups: vec![group],
            ports: vec![port],
        };
        compile(&policy, "vm", 1, &counter_ids(&policy).unwrap()).unwrap()
    }

    #[test]
    fn dhcp_servers_go_with_the_policy_any_as_one_root_entry() {
        let mut port = Port::new("vm", "tap0", MacAddr([2, 0, 0, 0, 0, 2]));
        let root = DhcpServerKey {
            policy: 7,
            addr: [0; 16],
        };
        assert_eq!(
            dhcp_servers(&port, 7),
            [(DHCP_SERVER_KEY_POLICY_BITS, root, 1)]
        );
        port.dhcp_servers = vec!["198.18.0.1".parse().unwrap(), "fe80::1".parse().unwrap()];
        let v6: std::net::Ipv6Addr = "fe80::1".parse().unwrap();
        assert_eq!(
            dhcp_servers(&port, 7),
            [
                (
                    DHCP_SERVER_KEY_POLICY_BITS + 128,
                    DhcpServerKey {
                        addr: ipv4_mapped([198, 18, 0, 1]),
                        ..root
                    },
                    1
                ),
                (
                    DHCP_SERVER_KEY_POLICY_BITS + 128,
                    DhcpServerKey {
                        addr: v6.octets(),
                        ..root
                    },
                    1
                ),
            ]
        );
    }

    #[test]
    fn a_class_in_one_pair_carries_it_and_only_pairs_of_two_busier_classes_are_looked_up() {
        // 10.0.0.0/8 pairs with ports 22 and 80; port 22 with 10.0.0.0/8
        // and 192.0.2.0/24; those two with one class each.
        let rule = |ports: &str, remote: &str| Rule {
            protocol: "tcp".parse().unwrap(),
            ports: ports.parse().unwrap(),
            remote: remote.parse().unwrap(),
            ..Rule::new(Direction::Ingress)
        };
        let compiled = compile_rules(vec![
            rule("22", "10.0.0.0/8"),
            rule("22", "192.0.2.0/24"),
            rule("80", "10.0.0.0/8"),
        ]);
        let ingress_v4 = |scope: &Scope| {
            scope.direction == sg_common::Direction::Ingress as u8 && scope.family == FAMILY_IPV4
        };
        let remote = |net: &str| {
            let (bits, _, addr) = trie_prefix(net.parse().unwrap());
            compiled
                .remote
                .iter()
                .find(|(b, key, _)| {
                    *b == SCOPE_BITS + bits && key.addr == addr && ingress_v4(&key.scope)
                })
                .map(|(.., value)| *value)
                .unwrap()
        };
        // Single ports: in the exact hash.
        let port = |number: u16| {
            compiled
                .l4_exact
                .iter()
                .find(|(key, _)| {
                    key.protocol == 6 && key.value == number.to_be_bytes() && ingress_v4(&key.scope)
                })
                .map(|(_, value)| *value)
                .unwrap()
        };
        let (ten, documentation, ssh, http) = (
            remote("10.0.0.0/8"),
            remote("192.0.2.0/24"),
            port(22),
            port(80),
        );
        assert_eq!((ten.pair, ssh.pair), (Class::PAIRS, Class::PAIRS));
        assert_eq!(documentation.pair, ssh.class);
        assert_eq!(candidate::order(documentation.pair_best), 1);
        assert_eq!(http.pair, ten.class);
        assert_eq!(candidate::order(http.pair_best), 2);
        assert_eq!(remote("0.0.0.0/0").pair, Class::NO_PAIR);
        let verdicts: Vec<_> = compiled
            .verdict
            .iter()
            .filter(|(key, _)| ingress_v4(&key.scope))
            .collect();
        assert_eq!(verdicts.len(), 1);
        let (key, best) = verdicts[0];
        assert_eq!((key.remote_class, key.l4_class), (ten.class, ssh.class));
        assert_eq!(candidate::order(*best), 0);
    }

    #[test]
    fn a_protocol_and_port_no_remote_can_overrule_decides_alone() {
        // Port 22 from anywhere, then anything from 192.0.2.0/24, then
        // port 80 from 10.0.0.0/8.
        let compiled = compile_rules(vec![
            tcp("22"),
            Rule {
                remote: "192.0.2.0/24".parse().unwrap(),
                ..Rule::new(Direction::Ingress)
            },
            Rule {
                remote: "10.0.0.0/8".parse().unwrap(),
                ..tcp("80")
            },
        ]);
        let l4 = |protocol: u8, value: u16| {
            compiled
                .l4_exact
                .iter()
                .map(|(key, value)| (key, value))
                .chain(compiled.l4.iter().map(|(_, key, value)| (key, value)))
                .find(|(key, _)| {
                    key.protocol == protocol
                        && key.value == value.to_be_bytes()
                        && key.scope.direction == sg_common::Direction::Ingress as u8
                        && key.scope.family == FAMILY_IPV4
                })
                .map(|(_, value)| *value)
                .unwrap()
        };
        // Rule 0 decides port 22 before any rule of a remote address can.
        assert_eq!(l4(6, 22).pair, Class::ALONE);
        // Port 80 pairs with 10.0.0.0/8.
        assert_ne!(l4(6, 80).pair, Class::ALONE);
        // Other protocols: rule 1 decides for 192.0.2.0/24.
        assert_eq!(l4(0, 0).pair, Class::NO_PAIR);
    }

    #[test]
    fn a_policy_skips_the_lookups_whose_tables_it_leaves_empty() {
        let rule = |ports: &str, remote: &str, local: &[&str]| Rule {
            protocol: "tcp".parse().unwrap(),
            ports: ports.parse().unwrap(),
            remote: remote.parse().unwrap(),
            local: local.iter().map(|net| net.parse().unwrap()).collect(),
            ..Rule::new(Direction::Ingress)
        };
        let skips = |rules: Vec<Rule>| compile_rules(rules).skips();
        let ranges = rule("1024-2047", "10.0.0.0/8", &[]);
        assert_eq!(
            skips(vec![ranges.clone()]),
            skip::LOCAL | skip::REMOTE_EXACT | skip::L4_EXACT
        );
        assert_eq!(
            skips(vec![ranges.clone(), rule("22", "10.0.0.0/8", &[])]),
            skip::LOCAL | skip::REMOTE_EXACT
        );
        assert_eq!(
            skips(vec![ranges.clone(), rule("1024-2047", "192.0.2.1", &[])]),
            skip::LOCAL | skip::L4_EXACT
        );
        assert_eq!(
            skips(vec![
                ranges,
                rule("1024-2047", "10.0.0.0/8", &["198.18.0.0/24"])
            ]),
            skip::REMOTE_EXACT | skip::L4_EXACT
        );
    }

    #[test]
    fn short_port_ranges_spread_into_the_exact_hash_with_the_longest_class() {
        let compiled = compile_rules(vec![
            Rule {
                action: Action::Drop,
                ..tcp("1004-1005")
            },
            tcp("1000-1015"),
            tcp("2000-2999"),
        ]);
        let ingress_tcp_v4 = |key: &L4Key| {
            key.protocol == 6
                && key.scope.direction == sg_common::Direction::Ingress as u8
                && key.scope.family == FAMILY_IPV4
        };
        let exact = |port: u16| {
            compiled
                .l4_exact
                .iter()
                .find(|(key, _)| ingress_tcp_v4(key) && key.value == port.to_be_bytes())
                .map(|(_, class)| class.class)
        };
        let allowed = exact(1000).unwrap();
        for port in 1000..=1015 {
            let class = exact(port).unwrap();
            assert_eq!(class == allowed, !(1004..=1005).contains(&port), "{port}");
        }
        assert_eq!((exact(999), exact(1016)), (None, None));
        // 2000-2999: its last block, 2992-2999, spreads; the longer ones
        // before it stay in the trie.
        assert!((2992..=2999).all(|port| exact(port).is_some() && exact(port) == exact(2999)));
        assert_eq!((exact(2000), exact(2991)), (None, None));
        assert!(
            compiled
                .l4
                .iter()
                .all(|&(bits, ..)| bits + L4_SPREAD_BITS < SCOPE_BITS + 32)
        );
    }

    #[test]
    fn ranges_become_aligned_blocks() {
        assert_eq!(range_prefixes(0, 65535), [(0, 0)]);
        assert_eq!(range_prefixes(80, 80), [(80, 16)]);
        assert_eq!(range_prefixes(8000, 8003), [(8000, 14)]);
        assert_eq!(range_prefixes(1, 3), [(1, 16), (2, 15)]);
        assert_eq!(range_prefixes(65535, 65535), [(65535, 16)]);
        let blocks = range_prefixes(1, 65535);
        let covered: u32 = blocks.iter().map(|&(_, bits)| 1u32 << (16 - bits)).sum();
        assert_eq!(covered, 65535);
    }
}
