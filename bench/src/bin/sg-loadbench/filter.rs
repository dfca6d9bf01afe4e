//! The filters under test on `port0`, each put in force from the same
//! `Policy`: sg's programs and compiled maps, or the nftables and iptables
//! translations (behind an empty XDP program, which gives the veth the
//! NAPI context that frames sent with XDP_TX need to arrive).

use anyhow::{Context as _, Result};
use aya::programs::xdp::XdpLinkId;
use serde::Serialize;
use sg_common::{Direction, Outcome};
use sg_core::{
    compile::{compile, counter_ids},
    model::Policy,
};
use sg_ctl::datapath::{
    Attached as Slot, Datapath, WithoutPolicy, XdpModeArg, conntrack::FlowFilter,
};
use sg_tests::{PORT, TestPins};

use crate::{
    testbed::{Testbed, inside},
    translate::{self, NftStyle},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Filter {
    Sg,
    NftRules,
    NftSets,
    Iptables,
}

impl Filter {
    pub const ALL: [Filter; 4] = [
        Filter::Sg,
        Filter::NftRules,
        Filter::NftSets,
        Filter::Iptables,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Filter::Sg => "sg",
            Filter::NftRules => "nftables, a rule per rule",
            Filter::NftSets => "nftables, verdict maps",
            Filter::Iptables => "iptables",
        }
    }
}

/// The name of the port in the benchmark's policies.
pub const BENCH_PORT: &str = "bench";

/// A filter attached to `port0`, detached when dropped.
pub struct Attached<'a> {
    pub filter: Filter,
    bed: &'a mut Testbed,
    state: State,
}

enum State {
    Sg {
        datapath: Datapath,
        slot: u32,
        /// Last: the pins go once the port is detached.
        pins: TestPins,
    },
    Netfilter {
        link: Option<XdpLinkId>,
    },
}

/// sg's counters of the packets the workload sent that started a flow
/// (`pass`), belonged to one (`pass-established`), and of new flows it
/// dropped because the connection table was full (both ways).
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowCounters {
    pub new: u64,
    pub established: u64,
    pub full: u64,
}

impl std::ops::Sub for FlowCounters {
    type Output = FlowCounters;

    fn sub(self, before: FlowCounters) -> FlowCounters {
        FlowCounters {
            new: self.new - before.new,
            established: self.established - before.established,
            full: self.full - before.full,
        }
    }
}

/// What putting a policy in force took, and the size of sg's maps.
pub struct Installed {
    pub map_entries: Option<usize>,
    pub map_bytes: Option<u64>,
}

impl<'a> Attached<'a> {
    pub fn new(bed: &'a mut Testbed, filter: Filter) -> Result<Attached<'a>> {
        let state = match filter {
            Filter::Sg => {
                let pins = TestPins::new();
                let datapath = pins.datapath();
                let (Slot::New { slot } | Slot::Already { slot }) = inside(&bed.link.host, || {
                    Ok(datapath.attach(PORT, XdpModeArg::Native, WithoutPolicy::Drop)?)
                })?;
                // The one port may take the whole table: its rounds of new
                // flows are sized to it.
                datapath.set_flow_limit(slot, sg_common::MAX_CONNTRACK_ENTRIES)?;
                State::Sg {
                    datapath,
                    slot,
                    pins,
                }
            }
            _ => State::Netfilter {
                link: Some(bed.attach_empty("sg_bench_pass")?),
            },
        };
        Ok(Attached { filter, bed, state })
    }

    pub fn bed(&self) -> &Testbed {
        self.bed
    }

    /// Forgets the tracked flows, sg's of the port and netfilter's of the
    /// host namespace, so that a scenario starts with none: the random
    /// flows of the one before would fill sg's table, where new flows fail
    /// closed, and flows already tracked skip the rules.
    pub fn forget_flows(&self) -> Result<()> {
        if let State::Sg { datapath, slot, .. } = &self.state {
            let port = FlowFilter {
                slot: Some(*slot),
                ..FlowFilter::default()
            };
            datapath.flush_flows(&port)?;
        }
        self.bed
            .link
            .host
            .run("conntrack", &["-F"])
            .context("flushing netfilter's flows: `cargo xtask setup` installs conntrack")
    }

    /// Removes what sg's last install left of the policy it replaced, as
    /// its daemon does once every port is in line; netfilter's installs
    /// leave nothing.
    pub fn remove_replaced(&self) -> Result<()> {
        if let State::Sg { datapath, .. } = &self.state {
            datapath.remove_retired()?;
        }
        Ok(())
    }

    /// sg's counters of the port (`None` for the other filters).
    pub fn flow_counters(&self) -> Result<Option<FlowCounters>> {
        let State::Sg { datapath, slot, .. } = &self.state else {
            return Ok(None);
        };
        let packets = |direction, outcome| -> Result<u64> {
            Ok(datapath.counter(*slot, direction, outcome)?.packets)
        };
        Ok(Some(FlowCounters {
            new: packets(Direction::Egress, Outcome::Pass)?,
            established: packets(Direction::Egress, Outcome::PassEstablished)?,
            full: [Outcome::DropConntrackFull, Outcome::DropConntrackPortFull]
                .into_iter()
                .flat_map(|outcome| Direction::ALL.map(|direction| packets(direction, outcome)))
                .sum::<Result<u64>>()?,
        }))
    }

    /// Puts `policy` in force, replacing what was.
    pub fn install(&mut self, policy: &Policy) -> Result<Installed> {
        let host = &self.bed.link.host;
        match (&mut self.state, self.filter) {
            (
                State::Sg {
                    datapath,
                    slot,
                    pins,
                },
                _,
            ) => {
                let counters = counter_ids(policy)?;
                let (_, compiled) = datapath.install_policy(*slot, |id| -> Result<_> {
                    Ok(compile(policy, BENCH_PORT, id, &counters)?)
                })?;
                Ok(Installed {
                    map_entries: Some(compiled.entries()),
                    map_bytes: Some(sg_tests::policy_memory(&pins.pins)?),
                })
            }
            (State::Netfilter { .. }, Filter::Iptables) => {
                let rules = translate::iptables(policy, BENCH_PORT, PORT, false);
                host.feed("iptables-restore", &[], &rules)?;
                let rules = translate::iptables(policy, BENCH_PORT, PORT, true);
                host.feed("ip6tables-restore", &[], &rules)?;
                Ok(Installed::NETFILTER)
            }
            (State::Netfilter { .. }, filter) => {
                let style = if filter == Filter::NftSets {
                    NftStyle::Sets
                } else {
                    NftStyle::PerRule
                };
                // One transaction: the old table goes as the new one comes.
                let ruleset = format!(
                    "flush ruleset\n{}",
                    translate::nftables(policy, BENCH_PORT, PORT, style)
                );
                host.feed("nft", &["-f", "-"], &ruleset)?;
                Ok(Installed::NETFILTER)
            }
        }
    }
}

impl Installed {
    const NETFILTER: Installed = Installed {
        map_entries: None,
        map_bytes: None,
    };
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let result = match &mut self.state {
            State::Sg { datapath, .. } => {
                inside(&self.bed.link.host, || Ok(datapath.detach(PORT)?))
            }
            State::Netfilter { link } => {
                let flushed = match self.filter {
                    Filter::Iptables => ["iptables", "ip6tables"].iter().try_for_each(|tool| {
                        for args in [["-F"], ["-X"]] {
                            self.bed.link.host.run(tool, &args)?;
                        }
                        Ok(())
                    }),
                    _ => self.bed.link.host.run("nft", &["flush", "ruleset"]),
                };
                let detached = match link.take() {
                    Some(link) => self.bed.detach_empty("sg_bench_pass", link),
                    None => Ok(()),
                };
                flushed.and(detached)
            }
        };
        if let Err(e) = result {
            eprintln!("removing {}: {e:#}", self.filter.label());
        }
    }
}
