//! What a desired state takes of the datapath's shared maps: the entries
//! each port's compiled policy and port security need, the most the maps
//! hold at once while the daemon installs the ports one by one (a port's
//! new policy goes in beside its old one, which goes after the switch),
//! and, when that is more than a map holds, the rule or port that needs
//! the most of it.

use std::collections::HashMap;

use ipnet::IpNet;
use sg_common::map_names;

use crate::{
    compile::Compiled,
    model::{Policy, Port, Remote, Rule},
    port_security::CompiledPortSecurity,
};

/// The shared maps whose entries the ports' policies and port security
/// take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Local,
    Remote,
    RemoteExact,
    L4,
    L4Exact,
    Verdict,
    Owned,
}

impl Table {
    pub const ALL: [Table; 7] = [
        Table::Local,
        Table::Remote,
        Table::RemoteExact,
        Table::L4,
        Table::L4Exact,
        Table::Verdict,
        Table::Owned,
    ];

    /// The name of the map, as pinned and as `--map-size` takes it.
    pub fn map_name(self) -> &'static str {
        match self {
            Table::Local => map_names::LOCAL,
            Table::Remote => map_names::REMOTE,
            Table::RemoteExact => map_names::REMOTE_EXACT,
            Table::L4 => map_names::L4,
            Table::L4Exact => map_names::L4_EXACT,
            Table::Verdict => map_names::VERDICT,
            Table::Owned => map_names::OWNED,
        }
    }
}

/// Entries in each table (`Table::ALL`'s order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage([usize; Table::ALL.len()]);

impl Usage {
    /// What a port's compiled policy and port security take.
    pub fn of(policy: &Compiled, security: &CompiledPortSecurity) -> Usage {
        Usage([
            policy.local.len(),
            policy.remote.len(),
            policy.remote_exact.len(),
            policy.l4.len(),
            policy.l4_exact.len(),
            policy.verdict.len(),
            security.owned.len(),
        ])
    }

    /// So many entries in each table (as the capacities are given).
    pub fn of_tables(entries: impl Fn(Table) -> usize) -> Usage {
        Usage(Table::ALL.map(entries))
    }

    pub fn get(&self, table: Table) -> usize {
        self.0[table as usize]
    }

    fn total(&self) -> usize {
        self.0.iter().sum()
    }

    fn add(&mut self, other: &Usage) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    fn sub(&mut self, other: &Usage) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_sub(b);
        }
    }

    fn max(&mut self, other: &Usage) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = (*a).max(b);
        }
    }
}

/// A port as the daemon will install it: what it takes after, and what it
/// takes now (nothing for a new port; `None`: not known); unchanged ones
/// are not installed again.
#[derive(Debug, Clone)]
pub struct Install {
    pub port: String,
    pub before: Option<Usage>,
    pub after: Usage,
    pub changed: bool,
}

/// The order the daemon installs the changed ports in: those that shrink
/// first, so that the room they free is there before the others take it.
pub fn install_order(ports: &[Install]) -> Vec<&Install> {
    let mut changed: Vec<&Install> = ports.iter().filter(|p| p.changed).collect();
    changed.sort_by_key(|p| {
        let before = p.before.map_or(0, |u| u.total());
        (p.after.total() as i64 - before as i64, p.port.clone())
    });
    changed
}

/// The most each table holds at once while `ports` are installed in
/// install order (ports deleted or moved are detached before, and take
/// nothing). A port whose present entries are not known is counted as
/// taking its new ones twice while it is installed.
pub fn peak(ports: &[Install]) -> Usage {
    let mut now = Usage::default();
    for port in ports {
        now.add(&port.before.unwrap_or(port.after));
    }
    let mut most = now;
    for port in install_order(ports) {
        let mut during = now;
        during.add(&port.after);
        most.max(&during);
        now.sub(&port.before.unwrap_or(port.after));
        now.add(&port.after);
    }
    most
}

/// A table that would not hold what a change needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overflow {
    pub table: Table,
    pub need: usize,
    pub capacity: usize,
}

/// The first table whose peak is over its capacity.
pub fn overflow(peak: &Usage, capacity: &Usage) -> Option<Overflow> {
    Table::ALL.into_iter().find_map(|table| {
        let (need, capacity) = (peak.get(table), capacity.get(table));
        (need > capacity).then_some(Overflow {
            table,
            need,
            capacity,
        })
    })
}

/// What needs the most of `table` in `policy`: a rule (its entries on
/// every port attaching its group), or for port security a port.
pub fn largest_need(policy: &Policy, table: Table) -> Option<String> {
    if table == Table::Owned {
        let (port, owned) = policy
            .ports
            .iter()
            .map(|port| (port, owned(port)))
            .max_by_key(|(_, owned)| *owned)?;
        return Some(format!(
            "port '{}' owns {owned} addresses and prefixes",
            port.name
        ));
    }
    let mut attaching: HashMap<&str, Vec<&str>> = HashMap::new();
    for port in &policy.ports {
        for group in &port.groups {
            attaching.entry(group).or_default().push(&port.name);
        }
    }
    let (group, index, per_port, ports) = policy
        .groups
        .iter()
        .flat_map(|group| {
            let ports = attaching
                .get(group.name.as_str())
                .cloned()
                .unwrap_or_default();
            group.rules.iter().enumerate().map(move |(index, rule)| {
                let per_port = need_of(policy, rule, table);
                (group, index, per_port, ports.clone())
            })
        })
        .filter(|(_, _, per_port, ports)| *per_port > 0 && !ports.is_empty())
        .max_by_key(|(_, _, per_port, ports)| per_port * ports.len())?;
    let what = match table {
        Table::RemoteExact => "single remote addresses",
        Table::Remote => "remote prefixes",
        Table::L4Exact => "single ports",
        Table::L4 => "port ranges",
        Table::Verdict => "remote and port pairs",
        Table::Local => "local prefixes",
        Table::Owned => unreachable!("port security is counted by port"),
    };
    let shown: Vec<&str> = ports.iter().take(5).copied().collect();
    let more = if ports.len() > shown.len() {
        ", …"
    } else {
        ""
    };
    Some(format!(
        "group '{}' rule {index} has {per_port} {what}, on {} port(s) ({}{more})",
        group.name,
        ports.len(),
        shown.join(", ")
    ))
}

/// Roughly what a rule takes of a table on one port: its prefixes or
/// ports of the table's kind.
fn need_of(policy: &Policy, rule: &Rule, table: Table) -> usize {
    let remotes: Vec<IpNet> = match &rule.remote {
        Remote::Any => Vec::new(),
        Remote::Cidrs(cidrs) => cidrs.clone(),
        Remote::Group(group) => policy.members(group),
    };
    let host = |net: &&IpNet| net.prefix_len() == net.max_prefix_len();
    let single_ports = rule.ports.0.iter().filter(|r| r.start == r.end).count();
    match table {
        Table::RemoteExact => remotes.iter().filter(host).count(),
        Table::Remote => remotes.iter().filter(|n| !host(n)).count(),
        Table::L4Exact => single_ports,
        Table::L4 => rule.ports.0.len() - single_ports,
        Table::Verdict => remotes.len() * rule.ports.0.len(),
        Table::Local => rule.local.len(),
        Table::Owned => 0,
    }
}

/// The addresses and prefixes a port owns: its fixed IPs, its pairs, the
/// link-local address of its MAC.
fn owned(port: &Port) -> usize {
    port.ips.len() + port.allowed_address_pairs.len() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(remote_exact: usize) -> Usage {
        let mut usage = Usage::default();
        usage.0[Table::RemoteExact as usize] = remote_exact;
        usage
    }

    fn install(port: &str, before: Option<usize>, after: usize) -> Install {
        Install {
            port: port.into(),
            before: before.map(usage),
            after: usage(after),
            changed: before != Some(after),
        }
    }

    #[test]
    fn a_new_policy_goes_in_beside_the_old_one() {
        // Two ports of 10 each; one grows to 14: 10 + 10 + 14 at once.
        let ports = [install("a", Some(10), 14), install("b", Some(10), 10)];
        assert_eq!(peak(&ports).get(Table::RemoteExact), 34);
    }

    #[test]
    fn shrinking_ports_go_first() {
        // a grows 10 → 14, b shrinks 10 → 1: b first, 10 + 10 + 1, then
        // 10 + 1 + 14.
        let ports = [install("a", Some(10), 14), install("b", Some(10), 1)];
        let order: Vec<&str> = install_order(&ports)
            .iter()
            .map(|p| p.port.as_str())
            .collect();
        assert_eq!(order, ["b", "a"]);
        assert_eq!(peak(&ports).get(Table::RemoteExact), 25);
    }

    #[test]
    fn ports_of_unknown_entries_count_twice() {
        let ports = [install("a", None, 30), install("new", Some(0), 5)];
        assert_eq!(peak(&ports).get(Table::RemoteExact), 65);
        let capacity = usage(50);
        let over = overflow(&peak(&ports), &capacity).unwrap();
        assert_eq!(
            over,
            Overflow {
                table: Table::RemoteExact,
                need: 65,
                capacity: 50
            }
        );
    }

    #[test]
    fn the_largest_need_names_the_rule_and_its_ports() {
        let policy: Policy = serde_json::from_value(serde_json::json!({
            "groups": [{"name": "web", "rules": [
                {"direction": "ingress", "protocol": "tcp", "ports": "80"},
                {"direction": "ingress", "remote": ["198.18.0.1", "198.18.0.2", "198.18.1.0/24"]}
            ]}],
            "ports": [
                {"name": "vm1", "ifname": "tap1", "mac": "52:54:00:00:00:01", "groups": ["web"]},
                {"name": "vm2", "ifname": "tap2", "mac": "52:54:00:00:00:02", "groups": ["web"]}
            ]
        }))
        .unwrap();
        assert_eq!(
            largest_need(&policy, Table::RemoteExact).unwrap(),
            "group 'web' rule 1 has 2 single remote addresses, on 2 port(s) (vm1, vm2)"
        );
        assert!(
            largest_need(&policy, Table::L4Exact)
                .unwrap()
                .contains("rule 0")
        );
        assert!(
            largest_need(&policy, Table::Owned)
                .unwrap()
                .ends_with("owns 1 addresses and prefixes")
        );
    }
}
