//! Connection tracking: one table of flows, keyed by port and the flow's
//! addresses and ports as the workload sees them (see `ConntrackKey`),
//! shared by the XDP and TC programs. A flow starts with a packet the
//! policy allows (for TCP only a SYN); later packets of the flow, either
//! way, pass on its entry; ICMP errors that quote one of its packets pass
//! as related.
//!
//! The table is a plain hash, not an LRU: an LRU would let a flood of
//! new flows push established ones out. Each port holds at most its limit
//! of flows (`SG_PORT_FLOWS`); a new flow past it is dropped. A new flow
//! that finds the table full takes the room of an expired or unreplied
//! flow among those started before it (`SG_CONNTRACK_RING`, looked at in
//! turn by a clock hand), as Linux's early drop does, and is dropped when
//! it finds none: established flows are never evicted. Entries expire by
//! their timeouts: the datapath treats an expired entry as absent, takes
//! its room when it needs it, and `sg-ctl` deletes the rest.

#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys are passed by reference to stay in their per-CPU slot: by value, a key is a copy on the stack"
)]

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use sg_common::{
    CONNTRACK_EVENTS_BYTES, CONNTRACK_EVENTS_PER_SECOND, CONNTRACK_RECLAIM_TRIES, ConntrackClock,
    ConntrackEntry, ConntrackEvent, ConntrackKey, ConntrackTimeouts, Direction, FAMILY_IPV4,
    MAX_CONNTRACK_ENTRIES, MAX_PORTS, PRESENCE_COUNTERS_PER_ENTRY, PortFlows, PresenceCounters,
    conntrack_event, conntrack_state, ipv4_mapped, presence_counters,
    proto::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, icmp, icmpv6, tcp},
};

use crate::{
    buf::Buf,
    parse::{IpPacket, has_ports},
    policy::copy_addr,
};

/// Preallocated: an entry added in the datapath takes one from a free
/// list rather than allocating memory (which took three times the rest of
/// a new flow's cost, and could fail under memory pressure).
#[map(name = "SG_CONNTRACK")]
static SG_CONNTRACK: HashMap<ConntrackKey, ConntrackEntry> =
    HashMap::pinned(MAX_CONNTRACK_ENTRIES, 0);

/// New, closed and expired flows, for `sg-ctl conntrack watch`.
#[map(name = "SG_CONNTRACK_EVENTS")]
static SG_CONNTRACK_EVENTS: RingBuf = RingBuf::pinned(CONNTRACK_EVENTS_BYTES, 0);

/// This CPU's events of the current second: the second, and how many.
#[repr(C)]
struct EventBudget {
    second: u64,
    sent: u64,
}

#[map(name = "SG_CONNTRACK_EVENT_BUDGET")]
static SG_CONNTRACK_EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

/// The timeouts, written by `sg-ctl` from its settings.
#[map(name = "SG_CONNTRACK_TIMEOUTS")]
static SG_CONNTRACK_TIMEOUTS: Array<ConntrackTimeouts> = Array::pinned(1, 0);

/// Slot → the flows the port holds and its limit. Added to and taken from
/// atomically, here and by `sg-ctl` through its mapping of the same
/// memory, only when a flow starts or is removed: a packet of a tracked
/// flow never touches it.
#[map(name = "SG_PORT_FLOWS")]
static SG_PORT_FLOWS: Array<PortFlows> = Array::pinned(MAX_PORTS, BPF_F_MMAPABLE);

/// The keys of the flows in the order they started, as many as the table
/// holds: where a full table looks for room.
#[map(name = "SG_CONNTRACK_RING")]
static SG_CONNTRACK_RING: Array<ConntrackKey> = Array::pinned(MAX_CONNTRACK_ENTRIES, 0);

/// The ring's head and the clock hand that goes round it.
#[map(name = "SG_CONNTRACK_CLOCK")]
static SG_CONNTRACK_CLOCK: Array<ConntrackClock> = Array::pinned(1, 0);

/// Entries of `SG_CONNTRACK_RING`; set by the loader
/// (`CONNTRACK_RING_GLOBAL`).
#[unsafe(no_mangle)]
static CONNTRACK_RING: u32 = MAX_CONNTRACK_ENTRIES;

/// How many flows of the table have keys of each counter's share (see
/// `ConntrackKey::presence_index`): a packet whose counter is zero is of
/// no flow, known without a lookup in the table. Mapped by `sg-ctl`, which
/// takes from it atomically after its own removals.
#[map(name = "SG_CONNTRACK_PRESENCE")]
static SG_CONNTRACK_PRESENCE: Array<PresenceCounters> = Array::pinned(
    presence_counters(MAX_CONNTRACK_ENTRIES) / PRESENCE_COUNTERS_PER_ENTRY,
    BPF_F_MMAPABLE,
);

/// Counters of `SG_CONNTRACK_PRESENCE`; set by the loader
/// (`CONNTRACK_PRESENCE_GLOBAL`).
#[unsafe(no_mangle)]
static CONNTRACK_PRESENCE: u32 = presence_counters(MAX_CONNTRACK_ENTRIES);

/// Where a transport header the tracker reads may start.
const MAX_L4: usize = 512;
/// An ICMP header, in front of the quoted packet of an error.
const ICMP_HDR: usize = 8;
/// `::ffff:0.0.0.0`, which IPv4 addresses are mapped into.
const IPV4_MAPPED: [u8; 16] = ipv4_mapped([0; 4]);

/// The tracker's work space: in this CPU's slot (see `Keys` in policy.rs),
/// not on the stack.
pub struct Scratch {
    pub key: ConntrackKey,
    /// A new flow's entry, on its way into the table.
    pub entry: ConntrackEntry,
    pub quote: Quote,
    /// The key of a flow a full table looks at, copied from the ring
    /// (which another CPU may write meanwhile).
    pub victim: ConntrackKey,
    /// The clock when `lookup` found the packet's flow (`Flow::Tracked`),
    /// read once for the timeout and the flow's last seen.
    pub now: u64,
}

/// The packet an ICMP error quotes: its IP header (IPv4's without
/// options), the first bytes of its transport header, and its addresses
/// (IPv4 mapped), 8-aligned as those of `IpPacket` are.
#[repr(C, align(8))]
pub struct Quote {
    ip: [u8; 40],
    l4: [u8; 8],
    src: [u8; 16],
    dst: [u8; 16],
}

/// Copies `len` bytes from the frame.
///
/// # Safety
/// `from` has `len` bytes in the frame; `to` has room for them.
#[inline(always)]
unsafe fn copy<T>(from: *mut T, to: *mut u8, len: usize) {
    // SAFETY: as the caller promises.
    unsafe { core::ptr::copy_nonoverlapping(from as *const u8, to, len) };
}

/// What the table says of a packet; the key is in the caller's slot.
pub enum Flow {
    /// Not for the table: the policy alone decides (ICMP other than echo
    /// requests and errors about a tracked flow, echo replies and TCP RSTs
    /// of no flow, other packets whose headers the tracker cannot read).
    Untracked,
    /// An ICMP error about a tracked flow.
    Related,
    /// A packet of a tracked flow.
    Tracked(*mut ConntrackEntry),
    /// No flow yet; the packet starts one if the policy allows it.
    New,
    /// TCP of no flow that cannot start one: not a SYN alone, or a
    /// header cut short of its flags.
    Stray,
}

/// What a packet of a tracked flow does to it.
pub enum Step {
    Pass,
    /// The last FIN: the flow waits out its closing timeout.
    Closing,
    /// An RST: the flow ends with it.
    Close,
    /// Does not fit the flow's state.
    Invalid,
}

/// The packet's flow in the table. `scratch.key` is filled for `Tracked`,
/// `New` and `Stray`; `flags` gets TCP's flags.
#[inline(always)]
pub fn lookup(
    slot: u32,
    direction: Direction,
    ip: &IpPacket,
    (start, end): (usize, usize),
    scratch: &mut Scratch,
    flags: &mut u8,
) -> Flow {
    // TCP the tracker cannot read starts no flow and fits none.
    let unreadable = if ip.protocol == IPPROTO_TCP {
        Flow::Stray
    } else {
        Flow::Untracked
    };
    let Some(buf) = Buf::of(start, end) else {
        return unreadable;
    };
    let Some(l4) = buf.launder(ip.l4_offset).filter(|&l4| l4 <= MAX_L4) else {
        return unreadable;
    };
    let icmp = icmp_protocol(ip.family);
    // Source and destination "ports" of the packet: ICMP echo's (see
    // `echo_ports`), zeros for protocols without ports.
    let (src_port, dst_port) = if ip.protocol == icmp {
        let [kind, code] = ip.l4;
        if is_error(ip.family, kind) {
            return related(slot, direction, ip.family, buf, l4 + ICMP_HDR, scratch);
        }
        let Some(sent) = echo_sent(ip.family, direction, kind) else {
            return Flow::Untracked;
        };
        let Some(id) = buf.read::<2>(l4 + 4) else {
            return Flow::Untracked;
        };
        echo_ports(direction, id, sent, code)
    } else {
        if ip.protocol == IPPROTO_TCP {
            // Two bytes, data offset and flags: for one the compiler checks
            // bounds in a way the verifier does not follow.
            let Some([_, tcp_flags]) = buf.read::<2>(l4 + 12) else {
                return unreadable;
            };
            *flags = tcp_flags;
        }
        (ip.src_port, ip.l4)
    };
    let key = &mut scratch.key;
    fill(
        key,
        slot,
        direction,
        ip.family,
        ip.protocol,
        (&ip.src, src_port),
        (&ip.dst, dst_port),
    );
    if let Some(entry) = present(key)
        .then(|| SG_CONNTRACK.get_ptr_mut(&*key))
        .flatten()
    {
        let now = now();
        // SAFETY: the entry stays valid for this program run (RCU).
        let (state, last_seen, origin) =
            unsafe { ((*entry).state, (*entry).last_seen, (*entry).origin) };
        let restart = ip.protocol == IPPROTO_TCP
            && state == conntrack_state::TIME_WAIT
            && origin == direction as u8
            && *flags & (tcp::SYN | tcp::ACK | tcp::RST) == tcp::SYN;
        let expired = SG_CONNTRACK_TIMEOUTS
            .get(0)
            .is_some_and(|timeouts| timeouts.expired(ip.protocol, state, last_seen, now));
        if !restart && !expired {
            scratch.now = now;
            return Flow::Tracked(entry);
        }
        remove(key);
        if expired {
            emit(key, conntrack_event::EXPIRED, now);
        }
    }
    if ip.protocol == IPPROTO_TCP {
        if *flags & (tcp::SYN | tcp::ACK | tcp::RST | tcp::FIN) == tcp::SYN {
            Flow::New
        } else if *flags & tcp::RST != 0 {
            // An RST ends what it finds and starts nothing: the policy
            // decides. (So passes the RST of a reject rule on TC, which
            // the XDP program of a port in generic mode sees again.)
            Flow::Untracked
        } else {
            Flow::Stray
        }
    } else if ip.protocol == icmp && ip.l4[0] == echo_reply(ip.family) {
        Flow::Untracked
    } else {
        Flow::New
    }
}

/// Whether the quoted packet of an ICMP error at `inner` is of a tracked
/// flow. The quote went the other way than the error: an error the
/// workload receives quotes what it sent. The quoted IPv6 header is taken
/// as followed by its transport header (extension headers are not
/// walked).
#[inline(always)]
fn related(
    slot: u32,
    direction: Direction,
    family: u8,
    buf: Buf,
    inner: usize,
    scratch: &mut Scratch,
) -> Flow {
    let quote = &mut scratch.quote;
    // Copied out of the frame first: read there, at offsets that differ
    // from packet to packet, the fields would take stack.
    // SAFETY (both copies): in bounds, checked by `at`.
    let l4 = if family == FAMILY_IPV4 {
        let Some(header) = buf.at::<[u8; 20]>(inner) else {
            return Flow::Untracked;
        };
        unsafe { copy(header, quote.ip.as_mut_ptr(), 20) };
        let vihl = quote.ip[0];
        if vihl >> 4 != 4 || vihl & 0x0f < 5 {
            return Flow::Untracked;
        }
        inner + (vihl & 0x0f) as usize * 4
    } else {
        let Some(header) = buf.at::<[u8; 40]>(inner) else {
            return Flow::Untracked;
        };
        unsafe { copy(header, quote.ip.as_mut_ptr(), 40) };
        inner + 40
    };
    let Some(header) = buf.at::<[u8; 8]>(l4) else {
        return Flow::Untracked;
    };
    // SAFETY: as above.
    unsafe { copy(header, quote.l4.as_mut_ptr(), 8) };
    let protocol = if family == FAMILY_IPV4 {
        quote.ip[9]
    } else {
        quote.ip[6]
    };
    let l4 = &quote.l4;
    let quoted = match direction {
        Direction::Egress => Direction::Ingress,
        Direction::Ingress => Direction::Egress,
    };
    let (src_port, dst_port) = if protocol == icmp_protocol(family) {
        // An echo request or reply, the only ICMP of a flow.
        let Some(sent) = echo_sent(family, quoted, l4[0]) else {
            return Flow::Untracked;
        };
        echo_ports(quoted, [l4[4], l4[5]], sent, l4[1])
    } else if has_ports(protocol) {
        ([l4[0], l4[1]], [l4[2], l4[3]])
    } else {
        ([0, 0], [0, 0])
    };
    if family == FAMILY_IPV4 {
        quote.src = IPV4_MAPPED;
        quote.dst = IPV4_MAPPED;
        quote.src[12..].copy_from_slice(&quote.ip[12..16]);
        quote.dst[12..].copy_from_slice(&quote.ip[16..20]);
    } else {
        quote.src.copy_from_slice(&quote.ip[8..24]);
        quote.dst.copy_from_slice(&quote.ip[24..40]);
    }
    fill(
        &mut scratch.key,
        slot,
        quoted,
        family,
        protocol,
        (&scratch.quote.src, src_port),
        (&scratch.quote.dst, dst_port),
    );
    if present(&scratch.key) && SG_CONNTRACK.get_ptr_mut(&scratch.key).is_some() {
        Flow::Related
    } else {
        Flow::Untracked
    }
}

/// `(local, remote)` of a packet's source and destination in `direction`.
#[inline(always)]
fn local_remote<T>(direction: Direction, src: T, dst: T) -> (T, T) {
    match direction {
        Direction::Egress => (src, dst),
        Direction::Ingress => (dst, src),
    }
}

/// The key of a packet from `src` to `dst` (address, port) in `direction`.
#[inline(always)]
fn fill(
    key: &mut ConntrackKey,
    slot: u32,
    direction: Direction,
    family: u8,
    protocol: u8,
    src: (&[u8; 16], [u8; 2]),
    dst: (&[u8; 16], [u8; 2]),
) {
    let (local, remote) = local_remote(direction, src, dst);
    key.slot = slot;
    key.protocol = protocol;
    key.family = family;
    key.local_port = local.1;
    key.remote_port = remote.1;
    key._pad = [0; 2];
    // Copied from where they are: as values, both addresses would be
    // loaded byte by byte for the choice of local and remote, and kept on
    // the stack.
    // SAFETY: both ends 4-aligned: the key's addresses follow three words
    // of it, and those of `IpPacket` and `Quote` are 8-aligned.
    unsafe {
        copy_addr::<u32>(&mut key.local, local.0);
        copy_addr::<u32>(&mut key.remote, remote.0);
    }
}

/// What became of a new flow.
pub enum Start {
    /// It is in the table (or another CPU put it there first).
    Started,
    /// The port holds as many flows as its limit.
    PortFull,
    /// The table is full, of flows that are neither expired nor unreplied
    /// among those the clock hand looked at.
    TableFull,
}

/// Starts the flow of `scratch.key` with this packet, if its port is under
/// its limit and the table has room or can make some.
#[inline(always)]
pub fn start(scratch: &mut Scratch, direction: Direction, policy: u32, bytes: u64) -> Start {
    let (key, entry, victim) = (&scratch.key, &mut scratch.entry, &mut scratch.victim);
    let now = now();
    let d = direction as usize & 1;
    entry.first_seen = now;
    entry.last_seen = now;
    entry.packets = [0; 2];
    entry.bytes = [0; 2];
    entry.packets[d] = 1;
    entry.bytes[d] = bytes;
    entry.policy = policy;
    entry.state = if key.protocol == IPPROTO_TCP {
        conntrack_state::SYN_SENT
    } else {
        conntrack_state::NEW
    };
    entry.origin = direction as u8;
    entry.fins = 0;
    entry._pad = 0;
    let Some(port) = SG_PORT_FLOWS.get_ptr_mut(key.slot) else {
        return Start::PortFull;
    };
    // The port's room is taken before the insert and given back if the
    // insert fails. Expired flows (its own or others') may make room.
    let room = reserve(port) || reclaim(victim, now, false) && reserve(port);
    if !room {
        return Start::PortFull;
    }
    // Counted present before it is, so that no CPU finds the flow's
    // counter at zero while it is in the table.
    let presence = presence(key);
    if let Some(counter) = presence {
        // SAFETY: a map entry, valid for this run, only written atomically.
        unsafe { add(counter, 1) };
    }
    const EEXIST: i32 = 17;
    const NOEXIST: u64 = aya_ebpf::bindings::BPF_NOEXIST as u64;
    let mut inserted = SG_CONNTRACK.insert(key, &*entry, NOEXIST);
    // Full: the room of an expired or unreplied flow, if the hand finds
    // one.
    if inserted.is_err_and(|error| error != -EEXIST) && reclaim(victim, now, true) {
        inserted = SG_CONNTRACK.insert(key, &*entry, NOEXIST);
    }
    match inserted {
        Ok(()) => {
            remember(key);
            emit(key, conntrack_event::NEW, now);
            Start::Started
        }
        Err(error) => {
            release(port);
            if let Some(counter) = presence {
                // SAFETY: as above.
                unsafe { add(counter, u32::MAX) };
            }
            // Another CPU may have started the flow meanwhile: as good.
            if error == -EEXIST {
                Start::Started
            } else {
                Start::TableFull
            }
        }
    }
}

/// Takes room for one flow of the port: `false` when it has none. The
/// count is read, then added to: new flows of one port started on other
/// CPUs at the same instant may pass the limit, by one each at most.
#[inline(always)]
fn reserve(port: *mut PortFlows) -> bool {
    // SAFETY: a map entry, valid for this run, whose flows are only
    // written atomically.
    let (flows, limit) = unsafe { ((*port).flows, (*port).limit()) };
    if flows >= u64::from(limit) {
        return false;
    }
    // SAFETY: as above.
    unsafe { add(&raw mut (*port).flows, 1) };
    true
}

/// Gives back the room of one flow of the port.
#[inline(always)]
fn release(port: *mut PortFlows) {
    // SAFETY: as in `reserve`.
    unsafe { add(&raw mut (*port).flows, u64::MAX) };
}

/// The integers the programs add to atomically: a port's flows (`u64`)
/// and the presence counters (`u32`).
trait Atomic: Copy {
    /// Adds atomically on the host, where the programs are only checked.
    ///
    /// # Safety
    /// As for `add`.
    #[cfg(not(target_arch = "bpf"))]
    unsafe fn host_add(at: *mut Self, value: Self);
}

impl Atomic for u32 {
    #[cfg(not(target_arch = "bpf"))]
    unsafe fn host_add(at: *mut u32, value: u32) {
        use core::sync::atomic::{AtomicU32, Ordering};
        // SAFETY: as the caller promises.
        unsafe { AtomicU32::from_ptr(at).fetch_add(value, Ordering::Relaxed) };
    }
}

impl Atomic for u64 {
    #[cfg(not(target_arch = "bpf"))]
    unsafe fn host_add(at: *mut u64, value: u64) {
        use core::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: as the caller promises.
        unsafe { AtomicU64::from_ptr(at).fetch_add(value, Ordering::Relaxed) };
    }
}

/// Adds `value` to `*at` atomically (wrapping: `MAX` takes one away).
///
/// # Safety
/// `at` is valid and aligned, and only written atomically meanwhile.
#[inline(always)]
unsafe fn add<T: Atomic>(at: *mut T, value: T) {
    // The BPF target has no atomic types; the intrinsic, its result
    // unused, becomes the atomic add every BPF CPU version has
    // (BPF_ATOMIC | BPF_ADD, of 32 or 64 bits; a fetch needs version 3).
    #[cfg(target_arch = "bpf")]
    // SAFETY: as the caller promises.
    unsafe {
        core::intrinsics::atomic_xadd::<T, T, { core::intrinsics::AtomicOrdering::Relaxed }>(
            at, value,
        );
    }
    // SAFETY: as the caller promises.
    #[cfg(not(target_arch = "bpf"))]
    unsafe {
        T::host_add(at, value)
    };
}

/// Takes the next position of the clock's `head` or `hand` within `span`
/// entries: read, then written one more. Two CPUs may take one position
/// at once: then one key is lost from the ring (that flow is left to
/// expiry), or one entry is looked at twice.
///
/// # Safety
/// `at` is a field of the clock's entry, valid for this run.
#[inline(always)]
unsafe fn next(at: *mut u64, span: u64) -> u32 {
    // SAFETY: as the caller promises.
    let position = unsafe { core::ptr::read_volatile(at) };
    unsafe { core::ptr::write_volatile(at, position.wrapping_add(1)) };
    (position % span) as u32
}

/// Removes the flow of `key` from the table, and from its port's count if
/// this was the removal that took it (`true`).
#[inline(always)]
fn remove(key: &ConntrackKey) -> bool {
    if SG_CONNTRACK.remove(key).is_err() {
        return false;
    }
    if let Some(port) = SG_PORT_FLOWS.get_ptr_mut(key.slot) {
        release(port);
    }
    if let Some(counter) = presence(key) {
        // SAFETY: a map entry, valid for this run, only written atomically.
        unsafe { add(counter, u32::MAX) };
    }
    true
}

/// The presence counter of `key`'s share (see `SG_CONNTRACK_PRESENCE`).
#[inline(always)]
fn presence(key: &ConntrackKey) -> Option<*mut u32> {
    // SAFETY: a plain read of a global the loader may have rewritten.
    let counters = unsafe { core::ptr::read_volatile(&CONNTRACK_PRESENCE) };
    let (entry, lane) = key.presence_place(counters);
    let entry = SG_CONNTRACK_PRESENCE.get_ptr_mut(entry)?;
    // SAFETY: a lane of the entry.
    Some(unsafe { entry.cast::<u32>().add(lane) })
}

/// Whether a flow of `key` may be in the table: not when its presence
/// counter is zero.
#[inline(always)]
fn present(key: &ConntrackKey) -> bool {
    // SAFETY: a map entry, valid for this run.
    presence(key).is_none_or(|counter| unsafe { core::ptr::read_volatile(counter) } != 0)
}

#[inline(always)]
fn ring_entries() -> u64 {
    // SAFETY: a plain read of a global the loader may have rewritten.
    u64::from(unsafe { core::ptr::read_volatile(&CONNTRACK_RING) }).max(1)
}

/// Puts the key of a flow that just started at the ring's head.
#[inline(always)]
fn remember(key: &ConntrackKey) {
    let Some(clock) = SG_CONNTRACK_CLOCK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the clock's entry, valid for this run.
    let at = unsafe { next(&raw mut (*clock).head, ring_entries()) };
    if let Some(slot) = SG_CONNTRACK_RING.get_ptr_mut(at) {
        // SAFETY: the ring's entry; from the caller's slot, whole.
        unsafe { core::ptr::copy_nonoverlapping(key, slot, 1) };
    }
}

/// Looks at the next flows of the ring under the clock hand, up to
/// `CONNTRACK_RECLAIM_TRIES`, and removes the first that has expired or,
/// with `unreplied`, has had no reply (see `conntrack_state::unreplied`);
/// `true` if it removed one. Established flows stay.
#[inline(always)]
fn reclaim(victim: &mut ConntrackKey, now: u64, unreplied: bool) -> bool {
    let (Some(clock), Some(timeouts)) = (
        SG_CONNTRACK_CLOCK.get_ptr_mut(0),
        SG_CONNTRACK_TIMEOUTS.get(0),
    ) else {
        return false;
    };
    // The hand goes round the part of the ring written so far: all of it
    // once as many flows started as it holds.
    // SAFETY: the clock's entry, valid for this run.
    let span = unsafe { core::ptr::read_volatile(&raw const (*clock).head) }.min(ring_entries());
    if span == 0 {
        return false;
    }
    for _ in 0..CONNTRACK_RECLAIM_TRIES {
        // SAFETY: as above.
        let at = unsafe { next(&raw mut (*clock).hand, span) };
        let Some(slot) = SG_CONNTRACK_RING.get_ptr(at) else {
            return false;
        };
        // SAFETY: the ring's entry, whole, into this CPU's slot.
        unsafe { core::ptr::copy_nonoverlapping(slot, victim, 1) };
        let key = &*victim;
        // SAFETY: the entry stays valid for this run (RCU).
        let Some(entry) = (unsafe { SG_CONNTRACK.get(key) }) else {
            continue;
        };
        let (state, last_seen) = (entry.state, entry.last_seen);
        let expired = timeouts.expired(key.protocol, state, last_seen, now);
        if (expired || unreplied && conntrack_state::unreplied(state)) && remove(key) {
            let kind = if expired {
                conntrack_event::EXPIRED
            } else {
                conntrack_event::EVICTED
            };
            emit(key, kind, now);
            return true;
        }
    }
    false
}

/// Sends an event about the flow of `key`, unless this CPU sent its
/// second's worth already or the ring is full.
#[inline(always)]
fn emit(key: &ConntrackKey, kind: u32, now: u64) {
    let Some(budget) = SG_CONNTRACK_EVENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, this run's alone.
    let budget = unsafe { &mut *budget };
    let second = now / 1_000_000_000;
    if budget.second != second {
        budget.second = second;
        budget.sent = 0;
    }
    if budget.sent >= CONNTRACK_EVENTS_PER_SECOND as u64 {
        return;
    }
    let Some(mut event) = SG_CONNTRACK_EVENTS.reserve::<ConntrackEvent>(0) else {
        return;
    };
    budget.sent += 1;
    let out = event.as_mut_ptr();
    // SAFETY: the reserved entry, written field by field (a whole event
    // would be a copy on the stack).
    unsafe {
        (*out).time = now;
        core::ptr::copy_nonoverlapping(key, &mut (*out).key, 1);
        (*out).kind = kind;
    }
    event.submit(0);
}

/// Forgets the flow of `scratch.key`, which an RST ended or the policy
/// revoked.
#[inline(always)]
pub fn forget(scratch: &Scratch) {
    remove(&scratch.key);
    closed(scratch);
}

/// Says that the flow of `scratch.key` closed.
#[inline(always)]
pub fn closed(scratch: &Scratch) {
    emit(&scratch.key, conntrack_event::CLOSED, now());
}

/// Moves a tracked flow on with a packet in `direction`; TCP's `flags`.
#[inline(always)]
pub fn advance(entry: &mut ConntrackEntry, direction: Direction, protocol: u8, flags: u8) -> Step {
    let origin = entry.origin == direction as u8;
    if protocol != IPPROTO_TCP {
        if !origin {
            entry.state = conntrack_state::REPLIED;
        }
        return Step::Pass;
    }
    if flags & tcp::RST != 0 {
        return Step::Close;
    }
    let syn = flags & tcp::SYN != 0;
    let ack = flags & tcp::ACK != 0;
    let syn_ack_back = syn && ack && !origin;
    match entry.state {
        conntrack_state::SYN_SENT if origin && syn && !ack => {}
        conntrack_state::SYN_SENT if syn_ack_back => entry.state = conntrack_state::SYN_RECEIVED,
        conntrack_state::SYN_RECEIVED if syn_ack_back => {}
        conntrack_state::SYN_RECEIVED if origin && ack && !syn => {
            entry.state = conntrack_state::ESTABLISHED;
        }
        conntrack_state::SYN_SENT | conntrack_state::SYN_RECEIVED => return Step::Invalid,
        // A SYN-ACK again after the handshake (the ACK to it was lost)
        // passes; any other SYN does not belong.
        _ if syn && !syn_ack_back => return Step::Invalid,
        _ => {}
    }
    if flags & tcp::FIN != 0 {
        entry.fins |= 1 << (direction as u8 & 1);
        if entry.fins == 3 {
            entry.state = conntrack_state::TIME_WAIT;
            return Step::Closing;
        }
        entry.state = conntrack_state::FIN_WAIT;
    }
    Step::Pass
}

/// Counts a packet of `bytes` in `direction` on the flow `lookup` found,
/// seen at the time it read (`Scratch::now`).
#[inline(always)]
pub fn account(entry: &mut ConntrackEntry, scratch: &Scratch, direction: Direction, bytes: u64) {
    let d = direction as usize & 1;
    entry.packets[d] += 1;
    entry.bytes[d] += bytes;
    entry.last_seen = scratch.now;
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn icmp_protocol(family: u8) -> u8 {
    if family == FAMILY_IPV4 {
        IPPROTO_ICMP
    } else {
        IPPROTO_ICMPV6
    }
}

/// The ICMP type the workload sends in the echo flow of a message of type
/// `kind` going `direction`: the request it sends, or the reply it answers
/// a request it receives with. `None` for other types. Keyed by it, as
/// Linux keys by the original direction's type, the two ends' requests
/// make two flows, and a message finds its flow only as a request in the
/// request's direction or as the matching reply in the other.
#[inline(always)]
fn echo_sent(family: u8, direction: Direction, kind: u8) -> Option<u8> {
    let (request, reply) = if family == FAMILY_IPV4 {
        (icmp::ECHO_REQUEST, icmp::ECHO_REPLY)
    } else {
        (icmpv6::ECHO_REQUEST, icmpv6::ECHO_REPLY)
    };
    if kind != request && kind != reply {
        return None;
    }
    Some(match direction {
        Direction::Egress => kind,
        // The other of the pair.
        Direction::Ingress => request ^ reply ^ kind,
    })
}

/// The source and destination "ports" of an echo message going
/// `direction`, so that its key has the identifier as the local port and
/// the type the workload sends (`echo_sent`) and the code as the remote
/// port (see `ConntrackKey`).
#[inline(always)]
fn echo_ports(direction: Direction, id: [u8; 2], sent: u8, code: u8) -> ([u8; 2], [u8; 2]) {
    local_remote(direction, id, [sent, code])
}

#[inline(always)]
fn echo_reply(family: u8) -> u8 {
    if family == FAMILY_IPV4 {
        icmp::ECHO_REPLY
    } else {
        icmpv6::ECHO_REPLY
    }
}

/// ICMP destination unreachable (which carries "fragmentation needed"),
/// time exceeded, parameter problem; ICMPv6 the same and packet too big.
#[inline(always)]
fn is_error(family: u8, kind: u8) -> bool {
    if family == FAMILY_IPV4 {
        kind == icmp::DEST_UNREACH || kind == icmp::TIME_EXCEEDED || kind == icmp::PARAMETER_PROBLEM
    } else {
        (icmpv6::DEST_UNREACH..=icmpv6::PARAMETER_PROBLEM).contains(&kind)
    }
}
