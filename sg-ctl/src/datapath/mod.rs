//! The datapath on this host: sg's eBPF object loaded per port, attached to
//! interfaces, and its pinned maps read and written, through one handle,
//! [`Datapath`].
//!
//! Links and maps are pinned (see `pins`), so enforcement goes on when
//! sg-ctl exits; detaching a port removes its links, and the last detach
//! removes the maps. The handle keeps the maps it opened (`maps`): each call
//! checks that the pins still hold them (another sg-ctl may have removed
//! them and attached afresh) and opens them again when not.
//!
//! The modules below by concern, each using only those above it in this
//! list: `error`, `mode`, `pins`, `sys` (raw system calls); the map families
//! `ports`, `policy`, `port_security`, `conntrack`; `maps` (all of them
//! together), `load`; `attach` (the lifecycle), `status`, `test_run`; and
//! the handle here, which only composes them.

mod attach;
pub mod conntrack;
mod error;
mod load;
mod maps;
mod mode;
mod pins;
mod policy;
pub mod port_security;
mod ports;
mod shared;
mod sizes;
mod status;
mod sys;
mod test_run;

use std::sync::{Mutex, MutexGuard};

use aya::maps::MapInfo;
use ipnet::IpNet;
use sg_common::{Counter, Direction, Outcome, PortConfig, PortFlows, map_names, remote_entries};
use sg_core::{
    capacity::{Table, Usage},
    compile::Compiled,
    port_security::PortSecurity,
    settings::ConntrackTimeouts,
};

pub use attach::{Attached, Prepared, WithoutPolicy};
use conntrack::{ConntrackStats, Flow, FlowEvents, FlowFilter};
use error::{Context as _, not_attached, require_root};
pub use error::{DatapathError, Result};
pub use load::EBPF_OBJECT;
use maps::MapSet;
pub use mode::XdpModeArg;
pub use pins::{DEFAULT_PIN_DIR, Pins};
pub use port_security::PortSecurityStatus;
pub use ports::CounterRow;
pub use sizes::MapSizes;
pub use status::{PortStats, PortStatus};
pub use test_run::{Forward, TestRun};

use crate::netns;

/// The datapath under one pin directory: the pins and the maps opened from
/// them. Its methods may be called from any thread; those about an
/// interface by name take it in the calling thread's network namespace.
pub struct Datapath {
    pins: Pins,
    /// The sizes of the maps it makes (maps already pinned keep theirs).
    sizes: MapSizes,
    /// Boxed: the maps' handles are large, and the handle is moved about.
    maps: Mutex<Option<Box<MapSet>>>,
}

impl Datapath {
    /// The datapath under `pins`; nothing is opened until it is used.
    pub fn new(pins: Pins) -> Datapath {
        Datapath::with_sizes(pins, MapSizes::default())
    }

    /// The datapath under `pins`, whose maps, when it makes them, hold
    /// `sizes` entries.
    pub fn with_sizes(pins: Pins, sizes: MapSizes) -> Datapath {
        Datapath {
            pins,
            sizes,
            maps: Mutex::new(None),
        }
    }

    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// The maps as the pins hold them now; `None` when nothing is attached.
    fn maps(&self) -> Result<MutexGuard<'_, Option<Box<MapSet>>>> {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        MapSet::refresh(&self.pins, &mut maps)?;
        Ok(maps)
    }

    /// Runs `f` on the maps; `None` when nothing is attached.
    fn with_maps<T>(&self, f: impl FnOnce(&mut MapSet) -> Result<T>) -> Result<Option<T>> {
        self.maps()?.as_deref_mut().map(f).transpose()
    }

    /// Runs `f` on the maps, which must be there.
    fn on_maps<T>(&self, f: impl FnOnce(&mut MapSet) -> Result<T>) -> Result<T> {
        self.with_maps(f)?
            .ok_or_else(|| DatapathError::NothingAttached {
                dir: self.pins.root().to_path_buf(),
            })
    }

    /// Runs `f` on the maps and the slot of the port of `iface`, an
    /// interface of the calling thread's namespace.
    fn on_port<T>(&self, iface: &str, f: impl FnOnce(&mut MapSet, u32) -> Result<T>) -> Result<T> {
        require_root("changing the filter's maps")?;
        let netns = netns::current()?;
        let not_attached = || not_attached(iface, netns);
        let mut guard = self.maps()?;
        let maps = guard.as_deref_mut().ok_or_else(not_attached)?;
        let (slot, _) = maps.ports.find(netns, iface)?.ok_or_else(not_attached)?;
        f(maps, slot)
    }

    // Ports: attaching, detaching, what they are.

    /// Attaches the filter to an interface of the calling thread's
    /// namespace; `without_policy` says what the port does until a policy
    /// is in force (the daemon: `Drop`; `sg-ctl attach`: `Pass`).
    /// Attaching an attached interface changes nothing, except that `Drop`
    /// closes a port attached with `Pass`.
    pub fn attach(
        &self,
        iface: &str,
        mode: XdpModeArg,
        without_policy: WithoutPolicy,
    ) -> Result<Attached> {
        require_root("attaching a filter")?;
        self.pins.ensure_bpffs()?;
        let _lock = self.pins.lock()?;
        attach::attach(
            &self.pins,
            &self.sizes,
            &mut *self.maps()?,
            iface,
            mode,
            without_policy,
        )
    }

    /// Keeps a slot for a port whose interface, `iface` of the calling
    /// thread's namespace, is not there yet, and loads its programs; its
    /// policy and port security can be installed under the slot meanwhile.
    /// Once attached, the port does what `without_policy` says while it has
    /// no policy (the daemon: `Drop`).
    pub fn prepare(
        &self,
        iface: &str,
        mode: XdpModeArg,
        without_policy: WithoutPolicy,
    ) -> Result<Prepared> {
        require_root("preparing a filter")?;
        self.pins.ensure_bpffs()?;
        let _lock = self.pins.lock()?;
        attach::prepare(
            &self.pins,
            &self.sizes,
            &mut *self.maps()?,
            iface,
            mode,
            without_policy,
        )
    }

    /// Attaches prepared programs to their interface once it is there
    /// (called in its namespace): moments, where `attach` loads for long.
    pub fn attach_prepared(&self, prepared: &mut Prepared) -> Result<Attached> {
        require_root("attaching a filter")?;
        let _lock = self.pins.lock()?;
        attach::attach_prepared(&self.pins, &mut *self.maps()?, prepared)
    }

    /// Detaches the filter from an interface of the calling thread's
    /// namespace. The interface itself may be gone already.
    pub fn detach(&self, iface: &str) -> Result<()> {
        require_root("detaching a filter")?;
        let netns = netns::current()?;
        let not_attached = || not_attached(iface, netns);
        let _lock = self.pins.lock()?;
        let mut maps = self.maps()?;
        let set = maps.as_deref().ok_or_else(not_attached)?;
        let (slot, _) = set.ports.find(netns, iface)?.ok_or_else(not_attached)?;
        attach::release(&self.pins, &mut maps, slot)
    }

    /// Detaches every port, in every namespace, and removes all pins; how
    /// many ports there were.
    pub fn detach_all(&self) -> Result<usize> {
        require_root("detaching filters")?;
        let _lock = self.pins.lock()?;
        let mut maps = match self.maps() {
            Ok(maps) => maps,
            // Pins this version cannot open (another version's) go whole.
            Err(_) if self.pins.maps().exists() => return attach::remove_all(&self.pins),
            Err(e) => return Err(e),
        };
        let Some(set) = maps.as_deref() else {
            return Ok(0);
        };
        let ports = set.ports.ports()?;
        for (slot, _) in &ports {
            attach::release(&self.pins, &mut maps, *slot)?;
        }
        Ok(ports.len())
    }

    /// How many entries each of the tables of the ports' policies and port
    /// security holds: the pinned maps' sizes, or the sizes the maps will be
    /// made with while none are pinned.
    pub fn capacities(&self) -> Result<Usage> {
        let mut sizes = [0usize; Table::ALL.len()];
        for (size, table) in sizes.iter_mut().zip(Table::ALL) {
            let name = table.map_name();
            let path = self.pins.map(name);
            *size = if path.exists() {
                MapInfo::from_pin(&path)
                    .context(|| format!("reading the size of {}", path.display()))?
                    .max_entries() as usize
            } else {
                self.sizes.get(name).unwrap_or_default() as usize
            };
        }
        // `SG_REMOTE_EXACT` is made in groups of slots for its entries, and
        // `SG_REMOTE` with room for them too (see `load::instance`).
        if self.pins.map(map_names::REMOTE_EXACT).exists() {
            let exact = remote_entries(sizes[Table::RemoteExact as usize] as u32) as usize;
            sizes[Table::RemoteExact as usize] = exact;
            sizes[Table::Remote as usize] = sizes[Table::Remote as usize].saturating_sub(exact);
        }
        Ok(Usage::of_tables(|table| sizes[table as usize]))
    }

    /// Whether any port is attached: the maps are there while one is.
    pub fn has_ports(&self) -> Result<bool> {
        Ok(self.maps()?.is_some())
    }

    /// Every used slot with its port's record.
    pub fn ports(&self) -> Result<Vec<(u32, PortConfig)>> {
        Ok(self
            .with_maps(|maps| maps.ports.ports())?
            .unwrap_or_default())
    }

    /// The slot of the port of `iface`, an interface of the calling
    /// thread's namespace.
    pub fn slot_of(&self, iface: &str) -> Result<u32> {
        self.on_port(iface, |_, slot| Ok(slot))
    }

    /// Writes a slot's record as it is given: for programs run through
    /// `BPF_PROG_TEST_RUN` on a slot no interface has (`attach` writes the
    /// records of real ports).
    pub fn set_port(&self, slot: u32, config: &PortConfig) -> Result<()> {
        self.on_maps(|maps| maps.ports.set_port(slot, config))
    }

    /// Every attached port with its blocked prefixes and non-zero counters.
    pub fn status(&self) -> Result<Vec<PortStatus>> {
        require_root("reading the filter's maps")?;
        Ok(self
            .with_maps(|maps| status::status(&self.pins, maps))?
            .unwrap_or_default())
    }

    /// The non-zero counters of every port, or of the port of `iface` in
    /// the calling thread's namespace.
    pub fn stats(&self, iface: Option<&str>) -> Result<Vec<PortStats>> {
        require_root("reading the filter's counters")?;
        status::stats(self.maps()?.as_deref(), iface)
    }

    /// Counter of one outcome on a slot, summed over CPUs.
    pub fn counter(&self, slot: u32, direction: Direction, outcome: Outcome) -> Result<Counter> {
        self.on_maps(|maps| maps.ports.counter(slot, direction, outcome))
    }

    // Blocklists and port security.

    /// Drops, on the port of `iface`, packets from (XDP) or to (TC)
    /// addresses in the prefixes.
    pub fn block(&self, iface: &str, prefixes: &[IpNet]) -> Result<()> {
        let _lock = self.pins.lock()?;
        self.on_port(iface, |maps, slot| {
            prefixes
                .iter()
                .try_for_each(|prefix| maps.ports.block(slot, *prefix))
        })
    }

    /// Drops, on the port at `slot`, packets from or to `prefix` (for a
    /// slot no interface has; `block` is the one for ports).
    pub fn block_slot(&self, slot: u32, prefix: IpNet) -> Result<()> {
        let _lock = self.pins.lock()?;
        self.on_maps(|maps| maps.ports.block(slot, prefix))
    }

    /// Stops dropping, on the port at `slot`, packets from or to `prefix`;
    /// whether it was blocked (`unblock` is the one for ports).
    pub fn unblock_slot(&self, slot: u32, prefix: IpNet) -> Result<bool> {
        let _lock = self.pins.lock()?;
        self.on_maps(|maps| maps.ports.unblock(slot, prefix))
    }

    /// Removes blocked prefixes; returns the ones that were not blocked.
    pub fn unblock(&self, iface: &str, prefixes: &[IpNet]) -> Result<Vec<IpNet>> {
        let _lock = self.pins.lock()?;
        self.on_port(iface, |maps, slot| {
            let mut missing = Vec::new();
            for prefix in prefixes {
                if !maps.ports.unblock(slot, *prefix)? {
                    missing.push(*prefix);
                }
            }
            Ok(missing)
        })
    }

    /// Sets the port security of the port of `iface`, an interface of the
    /// calling thread's namespace (see `install_port_security`).
    pub fn set_port_security(&self, iface: &str, security: &PortSecurity) -> Result<()> {
        let _lock = self.pins.lock()?;
        self.on_port(iface, |maps, slot| maps.security.install(slot, security))
    }

    /// Writes the port security of the port at `slot`: everything is
    /// checked before anything is written, and a failed write leaves the
    /// previous owned addresses in place.
    pub fn install_port_security(&self, slot: u32, security: &PortSecurity) -> Result<()> {
        self.on_maps(|maps| maps.security.install(slot, security))
    }

    /// What a slot's port security is.
    pub fn port_security(&self, slot: u32) -> Result<PortSecurityStatus> {
        self.on_maps(|maps| maps.security.read(slot))
    }

    // Policies and their rule counters.

    /// The policy id in force on a slot (`NO_POLICY`: none).
    pub fn policy_of(&self, slot: u32) -> Result<u32> {
        self.on_maps(|maps| maps.policy.policy_of(slot))
    }

    /// Compiles a policy for the slot under an id no port uses nor any
    /// retired policy has (`compile` is given the id), writes it beside
    /// the slot's policy and switches the slot to it: the port enforces it
    /// when this returns. The id is picked and the policy written under
    /// the pins' lock, so that two processes never write under one id. The
    /// previous policy is retired: its entries go at `remove_retired`, at
    /// an install the maps have no room for beside them, or when the
    /// handle is dropped, whichever is first.
    /// When the compiler or a write fails, what was written is removed and
    /// the previous policy stays in force.
    pub fn install_policy<E: From<DatapathError>>(
        &self,
        slot: u32,
        compile: impl FnOnce(u32) -> std::result::Result<Compiled, E>,
    ) -> std::result::Result<(u32, Compiled), E> {
        let _lock = self.pins.lock()?;
        let id = self.on_maps(|maps| maps.policy.next_policy_id())?;
        let compiled = compile(id)?;
        self.on_maps(|maps| maps.policy.install(slot, id, &compiled))?;
        Ok((id, compiled))
    }

    /// Removes the entries of the policies installs replaced, once no
    /// program run can still hold them (an RCU grace period).
    pub fn remove_retired(&self) -> Result<()> {
        let _lock = self.pins.lock()?;
        self.with_maps(|maps| maps.policy.remove_retired())
            .map(drop)
    }

    /// Removes the entries of every policy id no slot has, as they are
    /// when an sg-ctl that installed a policy was killed before it removed
    /// the one it replaced (the daemon does this as it starts).
    pub fn remove_orphans(&self) -> Result<()> {
        let _lock = self.pins.lock()?;
        self.with_maps(|maps| maps.policy.remove_orphans())
            .map(drop)
    }

    /// Takes the slot's policy away: the port drops everything after,
    /// unless it was attached with `WithoutPolicy::Pass` (then only its
    /// blocklist and port security apply).
    pub fn clear_policy(&self, slot: u32) -> Result<()> {
        let _lock = self.pins.lock()?;
        self.on_maps(|maps| maps.policy.clear(slot))
    }

    /// Moves rule counters: each `(to, from)` gives counter `to` what
    /// counter `from` holds on every CPU, or zeros for `None`.
    pub fn move_counters(&self, moves: &[(u32, Option<u32>)]) -> Result<()> {
        self.on_maps(|maps| maps.policy.move_counters(moves))
    }

    /// Packets and bytes a rule decided, summed over CPUs.
    pub fn rule_counter(&self, counter: u32) -> Result<Counter> {
        self.on_maps(|maps| maps.policy.rule_counter(counter))
    }

    // The connection table.

    /// Writes the timeouts the datapath applies; while nothing is attached
    /// there is nothing to write them to.
    pub fn set_conntrack_timeouts(&self, timeouts: &ConntrackTimeouts) -> Result<()> {
        self.with_maps(|maps| maps.conntrack.set_timeouts(timeouts))
            .map(drop)
    }

    /// The flows the port of a slot holds in the table, and its limit
    /// (`PortFlows::limit()`); zeros while nothing is attached.
    pub fn port_flows(&self, slot: u32) -> Result<PortFlows> {
        Ok(self
            .with_maps(|maps| Ok(maps.conntrack.port_flows(slot)))?
            .unwrap_or_default())
    }

    /// Sets the flows the port of a slot may hold (0: the datapath's
    /// default, `DEFAULT_FLOWS_PER_PORT`). A port holding more keeps them,
    /// and starts no flow until it holds fewer.
    pub fn set_flow_limit(&self, slot: u32, limit: u32) -> Result<()> {
        self.on_maps(|maps| maps.conntrack.set_flow_limit(slot, limit))
    }

    /// Removes the flows idle longer than their timeout; how many. The
    /// datapath treats them as gone already: this only frees their room.
    pub fn expire_flows(&self) -> Result<usize> {
        require_root("expiring idle flows")?;
        Ok(self.with_maps(|maps| maps.conntrack.expire())?.unwrap_or(0))
    }

    /// Removes the flows `filter` takes; how many. Their next packets are
    /// those of new flows.
    pub fn flush_flows(&self, filter: &FlowFilter) -> Result<usize> {
        require_root("flushing the connection table")?;
        Ok(self
            .with_maps(|maps| maps.conntrack.flush(filter))?
            .unwrap_or(0))
    }

    /// The flows `filter` takes, oldest first.
    pub fn flows(&self, filter: &FlowFilter) -> Result<Vec<Flow>> {
        require_root("reading the connection table")?;
        Ok(self
            .with_maps(|maps| conntrack::flows(&maps.conntrack, &maps.ports, filter))?
            .unwrap_or_default())
    }

    /// The table's size and what the datapath counted, all ports together.
    pub fn conntrack_stats(&self) -> Result<ConntrackStats> {
        require_root("reading the connection table")?;
        Ok(self
            .with_maps(|maps| conntrack::stats(&self.pins, &maps.conntrack, &maps.ports))?
            .unwrap_or_else(|| {
                ConntrackStats::empty(self.sizes.get(map_names::CONNTRACK).unwrap_or_default())
            }))
    }

    /// The events of flows from now on (see `FlowEvents`).
    pub fn flow_events(&self) -> Result<FlowEvents> {
        require_root("watching the connection table")?;
        FlowEvents::open(&self.pins)
    }

    // Programs on frames.

    /// The programs of a slot, to run on frames (creating the maps if
    /// nothing is attached yet).
    pub fn test_run(&self, slot: u32) -> Result<TestRun> {
        TestRun::load(&self.pins, &self.sizes, slot, false)
    }

    /// A tracer of the slot's port: the same programs on the same maps,
    /// counting nothing and remembering no fragment, that say what they
    /// decided (see `TestRun::trace`).
    pub fn tracer(&self, slot: u32) -> Result<TestRun> {
        TestRun::load(&self.pins, &self.sizes, slot, true)
    }
}
