//! The connection table from userspace: its timeouts, the ports' flow
//! counts and limits, listing, flushing, and the expiry of idle flows (the
//! datapath ignores them, and takes their room when it needs it). Every
//! removal here takes its flow from its port's count and its presence
//! counter, as the datapath's own removals do.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use aya::maps::{Array, HashMap, Map, MapData, RingBuf};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sg_common::{
    ConntrackEntry, ConntrackEvent, ConntrackKey, ConntrackTimeouts, Direction, FAMILY_IPV4,
    Outcome, PRESENCE_COUNTERS_PER_ENTRY, PortFlows, PresenceCounters, Timeout, conntrack_event,
    map_names,
};

use super::{
    error::{self, Context as _, DatapathError, Result},
    pins::Pins,
    ports::PortMaps,
    shared::Shared,
    sys::ifname_of,
};
use sg_core::{flow::FlowState, model::IpProtocol, settings};

/// The table, its timeouts, the ports' flows and the presence counters,
/// opened from their pins.
pub(super) struct ConntrackMaps {
    table: HashMap<MapData, ConntrackKey, ConntrackEntry>,
    timeouts: Array<MapData, ConntrackTimeouts>,
    ports: Shared<PortFlows>,
    presence: Shared<PresenceCounters>,
}

impl Shared<PortFlows> {
    fn flows(&self, slot: u32) -> Option<&AtomicU64> {
        // SAFETY: an aligned u64 of the mapping, only used atomically.
        self.entry(slot)
            .map(|entry| unsafe { AtomicU64::from_ptr(&raw mut (*entry).flows) })
    }

    fn limit(&self, slot: u32) -> Option<&AtomicU32> {
        // SAFETY: an aligned u32 of the mapping, only used atomically.
        self.entry(slot)
            .map(|entry| unsafe { AtomicU32::from_ptr(&raw mut (*entry).limit) })
    }

    fn get(&self, slot: u32) -> PortFlows {
        PortFlows {
            flows: self.flows(slot).map_or(0, |f| f.load(Ordering::Relaxed)),
            limit: self.limit(slot).map_or(0, |l| l.load(Ordering::Relaxed)),
            _pad: 0,
        }
    }

    /// One flow of the slot less (none below zero: a flow some other
    /// writer put in the table was never counted).
    fn release(&self, slot: u32) {
        if let Some(flows) = self.flows(slot) {
            let _ = flows.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// The slot with no flows and the default limit, for its next port.
    fn reset(&self, slot: u32) {
        if let (Some(flows), Some(limit)) = (self.flows(slot), self.limit(slot)) {
            flows.store(0, Ordering::Relaxed);
            limit.store(0, Ordering::Relaxed);
        }
    }
}

impl Shared<PresenceCounters> {
    /// One flow less of the share of `key` (see `SG_CONNTRACK_PRESENCE`),
    /// none below zero.
    fn release(&self, key: &ConntrackKey) {
        let (entry, lane) = key.presence_place(self.len() as u32 * PRESENCE_COUNTERS_PER_ENTRY);
        if let Some(entry) = self.entry(entry) {
            // SAFETY: an aligned u32 of the mapping, only used atomically.
            let count = unsafe { AtomicU32::from_ptr(&raw mut (*entry)[lane]) };
            let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }
}

impl ConntrackMaps {
    pub(super) fn open(pins: &Pins) -> Result<ConntrackMaps> {
        Ok(ConntrackMaps {
            table: pins.open(map_names::CONNTRACK)?,
            timeouts: pins.open(map_names::CONNTRACK_TIMEOUTS)?,
            ports: Shared::open(pins, map_names::PORT_FLOWS)?,
            presence: Shared::open(pins, map_names::CONNTRACK_PRESENCE)?,
        })
    }

    /// The flows a port holds and its limit (`PortFlows::limit()`).
    pub(super) fn port_flows(&self, slot: u32) -> PortFlows {
        self.ports.get(slot)
    }

    /// Sets the flows a port may hold; those it holds beyond stay.
    pub(super) fn set_flow_limit(&self, slot: u32, limit: u32) -> Result<()> {
        let entry = self
            .ports
            .limit(slot)
            .ok_or_else(|| DatapathError::Kernel {
                what: format!("setting the flow limit of slot {slot}"),
                source: format!("{} has no such slot", map_names::PORT_FLOWS).into(),
            })?;
        entry.store(limit, Ordering::Relaxed);
        Ok(())
    }

    fn timeouts(&self) -> Result<ConntrackTimeouts> {
        self.timeouts
            .get(&0, 0)
            .context(|| "reading the connection-tracking timeouts".to_string())
    }

    /// Every flow, read at once. Flows that come and go meanwhile may be
    /// missed (a hash map's walk is not a snapshot).
    fn entries(&self) -> Result<Vec<(ConntrackKey, ConntrackEntry)>> {
        let mut out = Vec::new();
        for item in self.table.iter() {
            match item {
                Ok(pair) => out.push(pair),
                // Deleted under the walk.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => {
                    return Err(e).context(|| "reading the connection table".to_string());
                }
            }
        }
        Ok(out)
    }

    /// Removes the flows `remove` picks; how many it removed.
    fn remove_where(
        &mut self,
        mut remove: impl FnMut(&ConntrackKey, &ConntrackEntry) -> bool,
    ) -> Result<usize> {
        let mut removed = 0;
        for (key, entry) in self.entries()? {
            if !remove(&key, &entry) {
                continue;
            }
            // A flow the datapath removed meanwhile is its to count.
            if error::removed(self.table.remove(&key)).context(|| "removing a flow".to_string())? {
                self.ports.release(key.slot);
                self.presence.release(&key);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Forgets every flow of a port's slot, and its limit.
    pub(super) fn forget_slot(&mut self, slot: u32) -> Result<()> {
        self.remove_where(|key, _| key.slot == slot)?;
        self.ports.reset(slot);
        Ok(())
    }

    /// Writes the timeouts the datapath applies.
    pub(super) fn set_timeouts(&mut self, timeouts: &settings::ConntrackTimeouts) -> Result<()> {
        self.timeouts
            .set(0, kernel_timeouts(timeouts), 0)
            .context(|| "writing the connection-tracking timeouts".to_string())
    }

    /// Removes the flows idle longer than their timeout; how many. The
    /// datapath treats them as gone already: this only frees their room.
    pub(super) fn expire(&mut self) -> Result<usize> {
        let timeouts = self.timeouts()?;
        let now = now_ns();
        self.remove_where(|key, entry| {
            timeouts.expired(key.protocol, entry.state, entry.last_seen, now)
        })
    }

    /// Removes the flows `filter` takes; how many.
    pub(super) fn flush(&mut self, filter: &FlowFilter) -> Result<usize> {
        self.remove_where(|key, entry| filter.matches(key, entry))
    }
}

/// The timeouts of the settings as the datapath reads them.
fn kernel_timeouts(timeouts: &settings::ConntrackTimeouts) -> ConntrackTimeouts {
    let mut seconds = [0; Timeout::COUNT];
    for (_, kind, value) in timeouts.each() {
        seconds[kind as usize] = value;
    }
    ConntrackTimeouts { seconds }
}

/// `CLOCK_MONOTONIC`: the datapath's times (`bpf_ktime_get_coarse_ns`,
/// the same clock as of the last tick) are never later.
fn now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Which flows `list` and `flush` take; `None` fields take all.
#[derive(Debug, Default, Clone)]
pub struct FlowFilter {
    pub slot: Option<u32>,
    /// Either end of the flow in this prefix.
    pub address: Option<IpNet>,
    pub protocol: Option<IpProtocol>,
    pub state: Option<FlowState>,
}

impl FlowFilter {
    fn matches(&self, key: &ConntrackKey, entry: &ConntrackEntry) -> bool {
        self.slot.is_none_or(|slot| slot == key.slot)
            && self.address.is_none_or(|net| {
                net.contains(&address(key.family, key.local))
                    || net.contains(&address(key.family, key.remote))
            })
            && self.protocol.is_none_or(|p| p.0 == key.protocol)
            && self.state.is_none_or(|state| state.raw() == entry.state)
    }
}

fn address(family: u8, addr: [u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(addr[12], addr[13], addr[14], addr[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(addr))
    }
}

/// A flow's ends, as a key gives them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ends {
    pub slot: u32,
    pub protocol: String,
    /// The workload's end.
    pub local: IpAddr,
    /// Absent for protocols without ports.
    pub local_port: Option<u16>,
    pub remote: IpAddr,
    pub remote_port: Option<u16>,
    /// An ICMP echo flow's identifier.
    pub icmp_id: Option<u16>,
    /// And its code.
    pub icmp_code: Option<u8>,
}

impl Ends {
    /// The protocol, with the echo identifier of an ICMP flow (and its
    /// code, when it is not 0).
    pub fn protocol_label(&self) -> String {
        match (self.icmp_id, self.icmp_code) {
            (Some(id), Some(code)) if code != 0 => format!("{} id {id} code {code}", self.protocol),
            (Some(id), _) => format!("{} id {id}", self.protocol),
            (None, _) => self.protocol.clone(),
        }
    }

    fn of(key: &ConntrackKey) -> Ends {
        let protocol = IpProtocol(key.protocol);
        let port = |bytes: [u8; 2], used: bool| used.then(|| u16::from_be_bytes(bytes));
        Ends {
            slot: key.slot,
            protocol: protocol.to_string(),
            local: address(key.family, key.local),
            local_port: port(key.local_port, protocol.has_ports()),
            remote: address(key.family, key.remote),
            remote_port: port(key.remote_port, protocol.has_ports()),
            // The identifier as the local port; the type the workload sends
            // and the code as the remote one.
            icmp_id: protocol
                .has_icmp()
                .then(|| u16::from_be_bytes(key.local_port)),
            icmp_code: protocol.has_icmp().then_some(key.remote_port[1]),
        }
    }
}

/// One flow as `sg-ctl conntrack list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flow {
    pub interface: String,
    #[serde(flatten)]
    pub ends: Ends,
    pub state: FlowState,
    /// Who started the flow: egress (the workload) or ingress.
    pub origin: String,
    /// The port's policy that last allowed it.
    pub policy: u32,
    pub packets_egress: u64,
    pub bytes_egress: u64,
    pub packets_ingress: u64,
    pub bytes_ingress: u64,
    pub age_seconds: u64,
    pub idle_seconds: u64,
    /// Seconds left before it expires, if idle until then.
    pub expires_in_seconds: u64,
}

/// The table's size and what the datapath counted, all ports together.
pub(super) fn stats(
    pins: &Pins,
    table: &ConntrackMaps,
    ports: &PortMaps,
) -> Result<ConntrackStats> {
    let path = pins.map(map_names::CONNTRACK);
    let capacity = aya::maps::MapInfo::from_pin(&path)
        .context(|| format!("reading the size of {}", path.display()))?
        .max_entries();
    let entries = table.entries()?.len();
    let slots = ports.ports()?;
    let total = |outcome: Outcome| -> Result<u64> {
        let mut sum = 0;
        for (slot, _) in &slots {
            for direction in Direction::ALL {
                sum += ports.counter(*slot, direction, outcome)?.packets;
            }
        }
        Ok(sum)
    };
    Ok(ConntrackStats {
        entries,
        capacity,
        pressure: entries as f64 * 100.0 / f64::from(capacity.max(1)),
        new: total(Outcome::Pass)?,
        established: total(Outcome::PassEstablished)?,
        related: total(Outcome::PassRelated)?,
        invalid: total(Outcome::DropInvalid)?,
        full: total(Outcome::DropConntrackFull)?,
        port_full: total(Outcome::DropConntrackPortFull)?,
        revoked: total(Outcome::DropRevoked)?,
    })
}

/// The flows of the table that `filter` takes, oldest first.
pub(super) fn flows(
    table: &ConntrackMaps,
    ports: &PortMaps,
    filter: &FlowFilter,
) -> Result<Vec<Flow>> {
    let timeouts = table.timeouts()?;
    let ports = ports.ports()?;
    let now = now_ns();
    let mut flows: Vec<(u64, Flow)> = table
        .entries()?
        .into_iter()
        .filter(|(key, entry)| filter.matches(key, entry))
        .filter(|(key, entry)| !timeouts.expired(key.protocol, entry.state, entry.last_seen, now))
        // A state this side does not know (a newer datapath's) is not shown.
        .filter_map(|(key, entry)| Some((key, entry, FlowState::from_raw(entry.state)?)))
        .map(|(key, entry, state)| {
            let interface = ports
                .iter()
                .find(|(slot, _)| *slot == key.slot)
                .map(|(_, config)| ifname_of(config))
                .unwrap_or_default();
            let timeout =
                u64::from(timeouts.seconds(sg_common::Timeout::of(key.protocol, entry.state)));
            let secs = |ns: u64| Duration::from_nanos(ns).as_secs();
            let idle = secs(now.saturating_sub(entry.last_seen));
            let flow = Flow {
                interface,
                ends: Ends::of(&key),
                state,
                origin: if entry.origin == Direction::Egress as u8 {
                    "egress"
                } else {
                    "ingress"
                }
                .to_string(),
                policy: entry.policy,
                packets_egress: entry.packets[Direction::Egress as usize],
                bytes_egress: entry.bytes[Direction::Egress as usize],
                packets_ingress: entry.packets[Direction::Ingress as usize],
                bytes_ingress: entry.bytes[Direction::Ingress as usize],
                age_seconds: secs(now.saturating_sub(entry.first_seen)),
                idle_seconds: idle,
                expires_in_seconds: timeout.saturating_sub(idle),
            };
            (entry.first_seen, flow)
        })
        .collect();
    flows.sort_by_key(|(first_seen, _)| *first_seen);
    Ok(flows.into_iter().map(|(_, flow)| flow).collect())
}

/// A flow's event as `sg-ctl conntrack watch` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FlowEvent {
    /// `new`, `closed` (an RST, FINs both ways, or revoked) or `expired`
    /// (found idle past its timeout by its next packet; flows that expiry
    /// removes have no event).
    pub event: &'static str,
    /// Nanoseconds of CLOCK_MONOTONIC.
    pub time_ns: u64,
    #[serde(flatten)]
    pub ends: Ends,
}

/// The events of new, closed and expired flows as the datapath sends them
/// (at most `CONNTRACK_EVENTS_PER_SECOND` a CPU). One reader takes each
/// event: two watchers share them out.
pub struct FlowEvents {
    ring: RingBuf<MapData>,
}

impl FlowEvents {
    /// Opens the ring of events: what the datapath sends from now on (and
    /// what it sent that no one read yet) is read.
    pub(super) fn open(pins: &Pins) -> Result<FlowEvents> {
        let path = pins.map(map_names::CONNTRACK_EVENTS);
        let what = || format!("opening {}", path.display());
        if !path.exists() {
            return Err(DatapathError::NothingAttached {
                dir: pins.root().to_path_buf(),
            });
        }
        let map = MapData::from_pin(&path).context(what)?;
        let ring = Map::RingBuf(map).try_into().context(what)?;
        Ok(FlowEvents { ring })
    }

    /// Hands `each` the events as they come, until `each` says stop or
    /// `until` passes.
    pub fn watch(
        &mut self,
        until: Option<std::time::Instant>,
        mut each: impl FnMut(FlowEvent) -> std::io::Result<bool>,
    ) -> Result<()> {
        use std::os::fd::AsFd as _;

        loop {
            while let Some(item) = self.ring.next() {
                if item.len() < size_of::<ConntrackEvent>() {
                    continue;
                }
                // SAFETY: the datapath writes whole `ConntrackEvent`s.
                let event: ConntrackEvent =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                let event = FlowEvent {
                    event: conntrack_event::name(event.kind),
                    time_ns: event.time,
                    ends: Ends::of(&event.key),
                };
                if !each(event).context(|| "printing an event".to_string())? {
                    return Ok(());
                }
            }
            if until.is_some_and(|until| std::time::Instant::now() >= until) {
                return Ok(());
            }
            let mut fds = [nix::poll::PollFd::new(
                self.ring.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context(|| "waiting for events".to_string()),
            }
        }
    }
}

/// The table's size and what the datapath counted, all ports together.
#[derive(Debug, Clone, Serialize)]
pub struct ConntrackStats {
    pub entries: usize,
    pub capacity: u32,
    /// `entries` / `capacity`, in percent.
    pub pressure: f64,
    /// Flows started: packets the policy passed (`pass`), which start a
    /// flow where the protocol has them.
    pub new: u64,
    pub established: u64,
    pub related: u64,
    pub invalid: u64,
    pub full: u64,
    /// New flows of ports that held their limit of flows.
    pub port_full: u64,
    pub revoked: u64,
}

impl ConntrackStats {
    /// While nothing is attached: no table yet, the size it will have.
    pub(super) fn empty(capacity: u32) -> ConntrackStats {
        ConntrackStats {
            entries: 0,
            capacity,
            pressure: 0.0,
            new: 0,
            established: 0,
            related: 0,
            invalid: 0,
            full: 0,
            port_full: 0,
            revoked: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use sg_common::conntrack_state;

    use super::*;

    fn key(local: [u8; 16], remote: [u8; 16]) -> ConntrackKey {
        ConntrackKey {
            slot: 3,
            protocol: 6,
            family: 6,
            local_port: [0, 80],
            remote_port: [0x9c, 0x40],
            _pad: [0; 2],
            local,
            remote,
        }
    }

    fn entry(state: u8) -> ConntrackEntry {
        ConntrackEntry {
            first_seen: 0,
            last_seen: 0,
            packets: [0; 2],
            bytes: [0; 2],
            policy: 1,
            state,
            origin: 0,
            fins: 0,
            _pad: 0,
        }
    }

    #[test]
    fn an_echo_flow_shows_its_identifier_whichever_end_asked() {
        let mut echo = key([0; 16], [0; 16]);
        echo.protocol = IpProtocol::IPV6_ICMP.0;
        // The workload's request, its reply to the other end's, and a
        // request of code 4.
        for (remote_port, label) in [
            ([128, 0], "ipv6-icmp id 4660"),
            ([129, 0], "ipv6-icmp id 4660"),
            ([128, 4], "ipv6-icmp id 4660 code 4"),
        ] {
            let ends = Ends::of(&ConntrackKey {
                local_port: [0x12, 0x34],
                remote_port,
                ..echo
            });
            assert_eq!(
                (ends.local_port, ends.remote_port, ends.icmp_id),
                (None, None, Some(0x1234))
            );
            assert_eq!(ends.protocol_label(), label);
        }
        let tcp = Ends::of(&key([0; 16], [0; 16]));
        assert_eq!(
            (tcp.local_port, tcp.remote_port, tcp.icmp_id),
            (Some(80), Some(40000), None)
        );
    }

    #[test]
    fn filters_take_either_end_and_the_state_by_name() {
        let local: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let remote: Ipv6Addr = "2001:db8:1::9".parse().unwrap();
        let key = key(local.octets(), remote.octets());
        let established = entry(conntrack_state::ESTABLISHED);
        let by_address = |net: &str| FlowFilter {
            address: Some(net.parse().unwrap()),
            ..FlowFilter::default()
        };
        assert!(by_address("2001:db8:1::/48").matches(&key, &established));
        assert!(by_address("2001:db8::2/128").matches(&key, &established));
        assert!(!by_address("2001:db8:2::/48").matches(&key, &established));
        let by_state = FlowFilter {
            state: Some(FlowState::Established),
            slot: Some(3),
            ..FlowFilter::default()
        };
        assert!(by_state.matches(&key, &established));
        assert!(!by_state.matches(&key, &entry(conntrack_state::SYN_SENT)));
    }

    #[test]
    fn timeouts_take_the_settings_and_default_where_unset() {
        let settings = settings::ConntrackTimeouts {
            udp: 5,
            ..Default::default()
        };
        let timeouts = kernel_timeouts(&settings);
        assert_eq!(timeouts.seconds(sg_common::Timeout::Udp), 5);
        assert_eq!(timeouts.seconds(sg_common::Timeout::Other), 600);
        let unset = ConntrackTimeouts::default();
        assert_eq!(unset.seconds(sg_common::Timeout::TcpEstablished), 432_000);
        let second = 1_000_000_000;
        // UDP idle 5 s is not yet expired; 5 s and a nanosecond is.
        assert!(!timeouts.expired(17, conntrack_state::REPLIED, second, 6 * second));
        assert!(timeouts.expired(17, conntrack_state::REPLIED, second, 6 * second + 1));
        // TCP: established for days, the handshake for two minutes.
        let hour = 3600 * second;
        assert!(!timeouts.expired(6, conntrack_state::ESTABLISHED, 0, hour));
        assert!(timeouts.expired(6, conntrack_state::SYN_SENT, 0, hour));
        // A clock read before the entry was written is no age.
        assert!(!timeouts.expired(17, conntrack_state::NEW, 2 * hour, hour));
        // Unreplied, UDP and other protocols go by the unreplied timeout
        // (30 s), then by their own: protocol 253 600 s.
        assert!(timeouts.expired(253, conntrack_state::NEW, 0, 31 * second));
        assert!(!timeouts.expired(253, conntrack_state::REPLIED, 0, 599 * second));
        assert!(!timeouts.expired(17, conntrack_state::NEW, 0, 29 * second));
        assert!(timeouts.expired(17, conntrack_state::NEW, 0, 31 * second));
        // TCP's opening has its own.
        assert!(!timeouts.expired(6, conntrack_state::SYN_SENT, 0, 31 * second));
    }

    #[test]
    fn ipv4_flows_show_their_ipv4_addresses() {
        let addr = sg_common::ipv4_mapped([198, 18, 0, 2]);
        assert_eq!(
            address(FAMILY_IPV4, addr),
            "198.18.0.2".parse::<IpAddr>().unwrap()
        );
    }
}
