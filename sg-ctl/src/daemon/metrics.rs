//! Prometheus text exposition of the datapath's counters: per port,
//! direction and outcome, and per rule, named by port, group and rule
//! index rather than by slot and counter id.

use std::{collections::HashMap, fmt::Write as _};

use serde::{Deserialize, Serialize};
use sg_common::{Direction, Outcome};

use super::View;
use sg_core::{compile, status::PortPhase};

/// Packets and bytes a rule decided, on every port attaching its group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hits {
    pub packets: u64,
    pub bytes: u64,
}

impl View {
    /// The hits of every rule by group, in rule order; empty while no
    /// port is attached (no policy maps).
    pub(super) fn rule_hits(&self) -> HashMap<String, Vec<Hits>> {
        let policy = self.state.policy.effective(&self.state.settings);
        let (Ok(true), Ok(counters)) = (self.datapath.has_ports(), compile::counter_ids(&policy))
        else {
            return HashMap::new();
        };
        policy
            .groups
            .iter()
            .map(|group| {
                let hits = (0..group.rules.len())
                    .map(|index| {
                        let id = counters[&(group.name.clone(), index)];
                        self.datapath.rule_counter(id).map_or_else(
                            |_| Hits::default(),
                            |counter| Hits {
                                packets: counter.packets,
                                bytes: counter.bytes,
                            },
                        )
                    })
                    .collect();
                (group.name.clone(), hits)
            })
            .collect()
    }

    /// The metrics page. Counters that cannot be read (no port attached
    /// yet) are left out rather than failing the scrape.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let states = &self.port_states;
        out += "# HELP sg_store_up Whether the store of the desired state answers (1) or not (0).\n\
                # TYPE sg_store_up gauge\n";
        let _ = writeln!(
            out,
            "sg_store_up{{store=\"{}\"}} {}",
            self.store.store.replace(['\\', '"', '\n'], "_"),
            u8::from(self.store.reachable)
        );
        out += "# HELP sg_port_up Whether the port's policy is in force (1) or pending or failed (0).\n\
                # TYPE sg_port_up gauge\n";
        for (port, state) in states {
            let up = u8::from(state.phase == PortPhase::Active);
            let _ = writeln!(out, "sg_port_up{{port=\"{port}\"}} {up}");
        }
        out += "# HELP sg_port_packets_total Packets per port, direction (egress: sent by the \
                workload) and outcome.\n# TYPE sg_port_packets_total counter\n\
                # HELP sg_port_bytes_total Bytes per port, direction and outcome.\n\
                # TYPE sg_port_bytes_total counter\n";
        for (port, state) in states {
            let Some(slot) = state.slot else {
                continue;
            };
            for direction in Direction::ALL {
                for outcome in Outcome::ALL {
                    let Ok(counter) = self.datapath.counter(slot, direction, outcome) else {
                        continue;
                    };
                    let labels = format!(
                        "port=\"{port}\",direction=\"{}\",outcome=\"{}\"",
                        direction.name(),
                        outcome.name()
                    );
                    let _ = writeln!(out, "sg_port_packets_total{{{labels}}} {}", counter.packets);
                    let _ = writeln!(out, "sg_port_bytes_total{{{labels}}} {}", counter.bytes);
                }
            }
        }
        out += "# HELP sg_port_flows Flows the port holds in the connection table.\n\
                # TYPE sg_port_flows gauge\n\
                # HELP sg_port_flow_limit Flows the port may hold; its new flows beyond are \
                dropped (outcome drop-conntrack-port-full).\n\
                # TYPE sg_port_flow_limit gauge\n";
        for (port, state) in states {
            let Some(Ok(flows)) = state.slot.map(|slot| self.datapath.port_flows(slot)) else {
                continue;
            };
            let _ = writeln!(out, "sg_port_flows{{port=\"{port}\"}} {}", flows.flows);
            let _ = writeln!(
                out,
                "sg_port_flow_limit{{port=\"{port}\"}} {}",
                flows.limit()
            );
        }
        out += "# HELP sg_rule_packets_total Packets decided by a rule (group, index in the group).\n\
                # TYPE sg_rule_packets_total counter\n\
                # HELP sg_rule_bytes_total Bytes decided by a rule.\n\
                # TYPE sg_rule_bytes_total counter\n";
        let mut groups: Vec<_> = self.rule_hits().into_iter().collect();
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        for (group, hits) in groups {
            for (index, hits) in hits.iter().enumerate() {
                let labels = format!("group=\"{group}\",rule=\"{index}\"");
                let _ = writeln!(out, "sg_rule_packets_total{{{labels}}} {}", hits.packets);
                let _ = writeln!(out, "sg_rule_bytes_total{{{labels}}} {}", hits.bytes);
            }
        }
        // What happened to flows is in the ports' outcomes (pass-established,
        // drop-invalid, ...); the table's fill is here.
        if let Ok(table) = self.datapath.conntrack_stats() {
            out += "# HELP sg_conntrack_entries Tracked flows, all ports together.
                    # TYPE sg_conntrack_entries gauge
                    # HELP sg_conntrack_capacity Flows the table holds; new ones fail closed beyond.
                    # TYPE sg_conntrack_capacity gauge
";
            let _ = writeln!(out, "sg_conntrack_entries {}", table.entries);
            let _ = writeln!(out, "sg_conntrack_capacity {}", table.capacity);
        }
        out
    }
}
