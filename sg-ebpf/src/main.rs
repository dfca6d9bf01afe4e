//! sg's datapath: an XDP program for traffic leaving a workload and a TC
//! egress program for traffic toward it, both on the host side of the
//! workload's port (a tap or the host end of a veth).
//!
//! One instance of the object is loaded per port, with the port's slot in
//! the `PORT_SLOT` global; the maps are shared by all instances, pinned
//! under the pin directory by name.
// Built for `bpfel-unknown-none`; on the host only checked by clippy.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod conntrack;
mod maps;
mod parse;
mod portsec;
mod reject;

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::{
        bpf_redirect, bpf_redirect_peer, bpf_skb_change_head, bpf_skb_change_tail,
        bpf_skb_change_type, bpf_xdp_adjust_head, bpf_xdp_adjust_meta, bpf_xdp_adjust_tail,
    },
    macros::{classifier, map, xdp},
    maps::{PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use sg_common::{
    BLOCK_KEY_SLOT_BITS, BlockKey, Counter, Direction, FAMILY_IPV6, FragmentKey, L4Key, LocalKey,
    NO_POLICY, Outcome, PORT_REPLY_VIA_TC, REPLY_META, RemoteKey, SCOPE_BITS, Scope, TraceRecord,
    VerdictKey, candidate,
};

use crate::{
    conntrack::{Flow, Step},
    maps::{
        SG_BLOCKED, SG_FRAGMENTS, SG_L4, SG_L4_EXACT, SG_LOCAL, SG_PORT_POLICY, SG_PORTS,
        SG_REMOTE, SG_REMOTE_EXACT, SG_RULE_STATS, SG_STATS, SG_TRACE, SG_VERDICT,
    },
    parse::{Frame, IPPROTO_ICMPV6, IpPacket, parse},
    reject::Resizable,
};

/// This instance's port; set by the loader.
#[unsafe(no_mangle)]
static PORT_SLOT: u32 = 0;

/// Set by `sg-ctl trace` in its own instance (see `TRACE_GLOBAL`).
#[unsafe(no_mangle)]
static TRACE: u32 = 0;

/// The keys of one packet's policy lookups, and the connection tracker's
/// work space (its key, a new entry, an ICMP error's quote). In this CPU's
/// slot rather than on the stack, of which a program has 512 bytes for
/// everything; one program runs at a time on a CPU, so the slot is the
/// run's. 8-aligned, with padding that puts every address on an 8-byte
/// boundary, so that keys are written in words rather than byte by byte.
#[repr(C, align(8))]
struct Keys {
    _pad_local: u32,
    local: TrieKey<LocalKey>,
    /// For the exact hash; `remote` holds the same for the trie.
    remote_exact: RemoteKey,
    _pad_remote: u32,
    remote: TrieKey<RemoteKey>,
    l4_exact: L4Key,
    l4: TrieKey<L4Key>,
    pair: VerdictKey,
    fragment: FragmentKey,
    conntrack: conntrack::Scratch,
}

/// Copies an address as two 8-byte loads and stores. Copied as an array,
/// between two map values it cannot tell apart, the compiler makes it a
/// call to a byte-wise `memmove`; volatile accesses it leaves as they are.
/// Both ends are 8-aligned: the addresses lead `IpPacket`, and `Keys` pads
/// its keys so that theirs are (asserted below).
#[inline(always)]
fn copy_addr(to: &mut [u8; 16], from: &[u8; 16]) {
    let to = (to as *mut [u8; 16]).cast::<u64>();
    let from = (from as *const [u8; 16]).cast::<u64>();
    // SAFETY: both 8-aligned (see above), 16 bytes each.
    unsafe {
        to.write_volatile(from.read_volatile());
        to.add(1).write_volatile(from.add(1).read_volatile());
    }
}

const _: () = {
    use core::mem::offset_of;
    let local =
        offset_of!(Keys, local) + offset_of!(TrieKey<LocalKey>, data) + offset_of!(LocalKey, addr);
    let remote_exact = offset_of!(Keys, remote_exact) + offset_of!(RemoteKey, addr);
    let remote = offset_of!(Keys, remote)
        + offset_of!(TrieKey<RemoteKey>, data)
        + offset_of!(RemoteKey, addr);
    assert!(local % 8 == 0 && remote_exact % 8 == 0 && remote % 8 == 0);
    assert!(offset_of!(IpPacket, src) % 8 == 0 && offset_of!(IpPacket, dst) % 8 == 0);
};

/// An LPM trie key laid out as `Key`, which is packed: the same bytes (the
/// keys here are 4-aligned, so nothing pads them), but written in words
/// rather than byte by byte.
#[repr(C)]
struct TrieKey<K> {
    prefix_len: u32,
    data: K,
}

impl<K> TrieKey<K> {
    #[inline(always)]
    fn as_key(&self) -> &Key<K> {
        const { assert!(size_of::<TrieKey<K>>() == size_of::<Key<K>>()) };
        // SAFETY: the same layout (asserted above), and `Key` is packed, so
        // any address is aligned for it.
        unsafe { &*(self as *const Self).cast::<Key<K>>() }
    }
}

#[map(name = "SG_KEYS")]
static SG_KEYS: PerCpuArray<Keys> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn port_slot() -> u32 {
    // SAFETY: a plain read of a global the loader may have rewritten.
    unsafe { core::ptr::read_volatile(&PORT_SLOT) }
}

/// The port's slot and flags if the port is active; `None` while it is
/// being attached or detached.
#[inline(always)]
fn active_port() -> Option<(u32, u32)> {
    let slot = port_slot();
    SG_PORTS
        .get(slot)
        .filter(|p| p.is_active())
        .map(|p| (slot, p.flags))
}

/// Whether this instance traces rather than filters. A read-only global:
/// in a port's instance the verifier knows it is zero and drops every
/// branch that depends on it.
#[inline(always)]
fn tracing() -> bool {
    // SAFETY: a plain read of a global the loader may have rewritten.
    unsafe { core::ptr::read_volatile(&TRACE) != 0 }
}

/// The tracer's record, when tracing.
#[inline(always)]
fn trace() -> Option<*mut TraceRecord> {
    if tracing() {
        SG_TRACE.get_ptr_mut(0)
    } else {
        None
    }
}

#[inline(always)]
fn add(counter: Option<*mut Counter>, bytes: u64) {
    if tracing() {
        return;
    }
    if let Some(counter) = counter {
        // SAFETY: a per-CPU value, written by this CPU only.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

#[inline(always)]
fn count(slot: u32, direction: Direction, outcome: Outcome, bytes: u64) {
    if let Some(record) = trace() {
        // SAFETY: the tracer's own record.
        unsafe { (*record).outcome = outcome as u32 };
    }
    add(
        SG_STATS.get_ptr_mut(outcome.stat_index(slot, direction)),
        bytes,
    );
}

/// Applies the port's policy: the first rule that matches decides. A
/// fragment after the first gets the verdict of its datagram's first
/// fragment.
#[inline(always)]
// The keys are passed by reference to stay in their slot: a key passed by
// value is a copy on the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
fn classify(
    keys: &mut Keys,
    slot: u32,
    policy: u32,
    direction: Direction,
    ip: &IpPacket,
    bytes: u64,
) -> Result<Outcome, Outcome> {
    if !ip.fragmented {
        return decide(lookup(keys, policy, direction, ip)?, bytes);
    }
    set_fragment_key(keys, slot, direction, ip);
    let best = if ip.first_fragment {
        let best = lookup(keys, policy, direction, ip)?;
        if !tracing() {
            remember_fragment(keys, best);
        }
        best
    } else {
        // SAFETY: a plain read of a hash map value.
        match unsafe { SG_FRAGMENTS.get(&keys.fragment) } {
            Some(&best) => best,
            None => return Err(Outcome::DropFragment),
        }
    };
    decide(best, bytes)
}

#[inline(always)]
fn set_fragment_key(keys: &mut Keys, slot: u32, direction: Direction, ip: &IpPacket) {
    keys.fragment = FragmentKey {
        slot,
        id: ip.fragment_id,
        src: ip.src,
        dst: ip.dst,
        protocol: ip.protocol,
        direction: direction as u8,
        _pad: [0; 2],
    };
}

/// Lets `best` decide the later fragments of the datagram in
/// `keys.fragment`.
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)] // As in `classify`.
fn remember_fragment(keys: &Keys, best: u64) {
    // Full: the later fragments of this datagram are dropped.
    let _ = SG_FRAGMENTS.insert(&keys.fragment, best, 0);
}

/// Decides on a packet with the connection table: a packet of a tracked
/// flow passes; one that starts a flow passes if the policy allows it and
/// the table takes the flow.
///
/// Rule of order:
/// 1. An ICMP error about a tracked flow passes (related).
/// 2. A packet of a tracked flow in the direction that started it is
///    checked again when the port's policy changed since; if the policy no
///    longer allows it the flow ends (revoked).
/// 3. A packet of a tracked flow that fits its state passes (established).
/// 4. A packet that may start a flow (a TCP SYN alone, UDP, an echo
///    request, other protocols) is classified; if allowed, the flow starts
///    (or the packet drops when the table is full).
/// 5. TCP of no flow that is no SYN: what the policy says, but invalid
///    where the policy would allow it.
/// 6. Everything else (untracked ICMP): the policy alone.
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)] // As in `classify`.
fn track(
    keys: &mut Keys,
    slot: u32,
    policy: u32,
    direction: Direction,
    ip: &IpPacket,
    frame: (usize, usize),
    bytes: u64,
) -> Result<Outcome, Outcome> {
    let mut flags = 0;
    let flow = conntrack::lookup(slot, direction, ip, frame, &mut keys.conntrack, &mut flags);
    let check = match flow {
        Flow::Related => false,
        // SAFETY: the table's entry, valid for this run (RCU).
        Flow::Tracked(entry) => unsafe {
            (*entry).origin == direction as u8 && (*entry).policy != policy
        },
        _ => true,
    };
    // One place that classifies: each inlined copy would take stack of its
    // own.
    let verdict = if check {
        classify(keys, slot, policy, direction, ip, bytes)
    } else {
        Ok(Outcome::Pass)
    };
    match flow {
        Flow::Tracked(entry) => {
            // SAFETY: as above.
            let entry = unsafe { &mut *entry };
            /* 2 */
            if check {
                if verdict.is_err() {
                    conntrack::forget(&keys.conntrack);
                    return Err(Outcome::DropRevoked);
                }
                entry.policy = policy;
            }
            /* 3 */
            match conntrack::advance(entry, direction, ip.protocol, flags) {
                Step::Invalid => return Err(Outcome::DropInvalid),
                Step::Close => conntrack::forget(&keys.conntrack),
                Step::Closing => {
                    conntrack::account(entry, direction, bytes);
                    conntrack::closed(&keys.conntrack);
                }
                Step::Pass => conntrack::account(entry, direction, bytes),
            }
            if ip.fragmented {
                set_fragment_key(keys, slot, direction, ip);
                remember_fragment(keys, candidate::new(0, 0, candidate::ALLOW));
            }
            Ok(Outcome::PassEstablished)
        }
        /* 4 */
        Flow::New => {
            let outcome = verdict?;
            if conntrack::start(&mut keys.conntrack, direction, policy, bytes) {
                Ok(outcome)
            } else {
                Err(Outcome::DropConntrackFull)
            }
        }
        /* 5 */
        Flow::Stray => verdict.and(Err(Outcome::DropInvalid)),
        /* 1 */
        Flow::Related => Ok(Outcome::PassRelated),
        /* 6 */
        Flow::Untracked => verdict,
    }
}

/// The best candidate of the port's policy for the packet. A few lookups
/// whatever the number of rules: the local address's class, then the
/// remote address's and the protocol/port's (each an exact hash, then a
/// trie on a miss), then the pair's.
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)] // As in `classify`.
fn lookup(
    keys: &mut Keys,
    policy: u32,
    direction: Direction,
    ip: &IpPacket,
) -> Result<u64, Outcome> {
    let (local, remote) = match direction {
        Direction::Egress => (&ip.src, &ip.dst),
        Direction::Ingress => (&ip.dst, &ip.src),
    };
    keys.local.prefix_len = SCOPE_BITS + 128;
    keys.local.data.policy = policy;
    keys.local.data.family = ip.family as u32;
    copy_addr(&mut keys.local.data.addr, local);
    let local_class = SG_LOCAL.get(keys.local.as_key()).copied().unwrap_or(0);
    let scope = Scope {
        policy,
        local_class: local_class as u16,
        direction: direction as u8,
        family: ip.family,
    };
    keys.remote_exact.scope = scope;
    copy_addr(&mut keys.remote_exact.addr, remote);
    keys.remote.prefix_len = SCOPE_BITS + 128;
    keys.remote.data.scope = scope;
    copy_addr(&mut keys.remote.data.addr, remote);
    // SAFETY: a plain read of a hash map value.
    let remote = match unsafe { SG_REMOTE_EXACT.get(&keys.remote_exact) } {
        Some(class) => Some(class),
        None => SG_REMOTE.get(keys.remote.as_key()),
    };
    keys.l4_exact = L4Key {
        scope,
        protocol: ip.protocol,
        _pad: 0,
        value: ip.l4,
    };
    keys.l4 = TrieKey {
        prefix_len: SCOPE_BITS + 32,
        data: keys.l4_exact,
    };
    // SAFETY: a plain read of a hash map value.
    let l4 = match unsafe { SG_L4_EXACT.get(&keys.l4_exact) } {
        Some(class) => Some(class),
        None => SG_L4.get(keys.l4.as_key()),
    };
    // Every scope has root entries in both tries; a miss is a policy being
    // removed under this packet.
    let (Some(remote), Some(l4)) = (remote, l4) else {
        return Err(Outcome::DropDefault);
    };
    let best = if remote.best < l4.best {
        remote.best
    } else {
        l4.best
    };
    keys.pair = VerdictKey {
        scope,
        remote_class: remote.class,
        l4_class: l4.class,
    };
    // SAFETY: a plain read of a hash map value.
    let both = unsafe { SG_VERDICT.get(&keys.pair) }.copied();
    if let Some(record) = trace() {
        // SAFETY: the tracer's own record, field by field (a whole record
        // would take stack the port's programs cannot spare).
        unsafe {
            (*record).local_class = local_class;
            (*record).remote_class = remote.class;
            (*record).l4_class = l4.class;
            (*record).remote_best = remote.best;
            (*record).l4_best = l4.best;
            (*record).pair_best = both.unwrap_or(candidate::NONE);
        }
    }
    match both {
        Some(both) if both < best => Ok(both),
        _ => Ok(best),
    }
}

/// Counts the packet on the deciding rule and says what its action means.
#[inline(always)]
fn decide(best: u64, bytes: u64) -> Result<Outcome, Outcome> {
    if let Some(record) = trace() {
        // SAFETY: the tracer's own record.
        unsafe { (*record).best = best };
    }
    if best == candidate::NONE {
        return Err(Outcome::DropDefault);
    }
    let counter = candidate::counter(best);
    if counter != 0 {
        add(SG_RULE_STATS.get_ptr_mut(counter), bytes);
    }
    match (candidate::action(best), counter) {
        (candidate::ALLOW, _) => Ok(Outcome::Pass),
        (_, 0) => Err(Outcome::DropDefault),
        (candidate::REJECT, _) => Err(Outcome::Reject),
        _ => Err(Outcome::DropRule),
    }
}

/// IPv6 neighbour discovery and MLD, which no rule applies to (as ARP):
/// ICMPv6 types 130-136 and 143.
#[inline(always)]
fn is_neighbour_discovery(ip: &IpPacket) -> bool {
    let kind = ip.l4[0];
    ip.family == FAMILY_IPV6
        && ip.protocol == IPPROTO_ICMPV6
        && ((130..=136).contains(&kind) || kind == 143)
}

/// Decides on an IP packet. The address checked against the blocklist is
/// the workload's side of the conversation: the source of what it sends,
/// the destination of what it receives.
#[inline(always)]
fn decide_ip(
    slot: u32,
    direction: Direction,
    ip: &IpPacket,
    frame: (usize, usize),
    bytes: u64,
) -> Outcome {
    let addr = match direction {
        Direction::Egress => ip.src,
        Direction::Ingress => ip.dst,
    };
    let key = Key::new(BLOCK_KEY_SLOT_BITS + 128, BlockKey { slot, addr });
    if SG_BLOCKED.get(&key).is_some() {
        return Outcome::DropBlocked;
    }
    if is_neighbour_discovery(ip) {
        return Outcome::PassNeighbourDiscovery;
    }
    let policy = match SG_PORT_POLICY.get(slot) {
        Some(&policy) if policy != NO_POLICY => policy,
        _ => return Outcome::Pass,
    };
    let Some(keys) = SG_KEYS.get_ptr_mut(0) else {
        return Outcome::DropDefault;
    };
    // SAFETY: this CPU's slot, this run's alone (see `Keys`).
    let keys = unsafe { &mut *keys };
    // A tracer leaves the table alone, and a later fragment has no ports
    // to find its flow by: the policy (or its first fragment) decides.
    if tracing() || !ip.first_fragment {
        classify(keys, slot, policy, direction, ip, bytes)
    } else {
        track(keys, slot, policy, direction, ip, frame, bytes)
    }
    .unwrap_or_else(|drop| drop)
}

/// Parses the frame, decides on it and counts the outcome: `Some(true)`
/// pass, `Some(false)` drop, `None` the frame is now the reply to send
/// back.
#[inline(always)]
fn filter<F: Resizable>(
    slot: u32,
    direction: Direction,
    frame: &mut F,
    bytes: u64,
) -> Option<bool> {
    let (start, end) = frame.bounds();
    let outcome = match parse(start, end) {
        Err(drop) => drop,
        Ok(parsed) => match (
            portsec::check(slot, direction, start, end, &parsed),
            &parsed,
        ) {
            (Err(drop), _) => drop,
            (Ok(()), Frame::Ip(ip)) => match decide_ip(slot, direction, ip, (start, end), bytes) {
                Outcome::Reject if reject::reply(frame, ip).is_none() => Outcome::DropRule,
                outcome => outcome,
            },
            (Ok(()), Frame::Arp(_) | Frame::NonIp) => Outcome::PassNonIp,
        },
    };
    count(slot, direction, outcome, bytes);
    match outcome {
        Outcome::Reject => None,
        outcome => Some(!outcome.is_drop()),
    }
}

struct XdpFrame<'a>(&'a XdpContext);

impl Resizable for XdpFrame<'_> {
    fn bounds(&self) -> (usize, usize) {
        let md = self.0.ctx;
        // SAFETY: reads of the context. Volatile, so that the compiler
        // checks bounds on these pointers rather than reasoning from
        // earlier checks on others, which the verifier cannot follow.
        unsafe {
            (
                core::ptr::read_volatile(&(*md).data) as usize,
                core::ptr::read_volatile(&(*md).data_end) as usize,
            )
        }
    }

    fn truncate(&mut self, len: usize) -> Option<()> {
        let (start, end) = self.bounds();
        let delta = len as i32 - (end - start) as i32;
        // SAFETY: a helper call on the program's own context.
        (delta == 0 || unsafe { bpf_xdp_adjust_tail(self.0.ctx, delta) } == 0).then_some(())
    }

    fn grow_head(&mut self, len: usize) -> Option<()> {
        // SAFETY: a helper call on the program's own context.
        (unsafe { bpf_xdp_adjust_head(self.0.ctx, -(len as i32)) } == 0).then_some(())
    }
}

#[xdp]
pub fn sg_xdp(ctx: XdpContext) -> u32 {
    let Some((slot, flags)) = active_port() else {
        return xdp_action::XDP_PASS;
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    match filter(slot, Direction::Egress, &mut XdpFrame(&ctx), bytes) {
        Some(true) => xdp_action::XDP_PASS,
        Some(false) => xdp_action::XDP_DROP,
        None if flags & PORT_REPLY_VIA_TC != 0 => mark_reply(&ctx),
        // Back out of the port, to the workload.
        None => xdp_action::XDP_TX,
    }
}

/// Passes the reply up to `sg_tc_reply`, marked by `REPLY_META` in front.
#[inline(always)]
fn mark_reply(ctx: &XdpContext) -> u32 {
    const LEN: usize = core::mem::size_of::<u32>();
    // SAFETY: a helper call on the program's own context.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(LEN as i32)) } != 0 {
        return xdp_action::XDP_DROP;
    }
    let meta = ctx.metadata();
    if meta + LEN > ctx.data() {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: in bounds, checked above.
    unsafe { (meta as *mut u32).write_unaligned(REPLY_META) };
    xdp_action::XDP_PASS
}

/// Linux's `PACKET_HOST`: a frame addressed to the receiving host.
const PACKET_HOST: u32 = 0;

/// On TC ingress of a veth port: a reply `sg_xdp` made goes straight into
/// the workload's namespace, as received by its end of the veth; every
/// other frame goes on.
#[classifier]
pub fn sg_tc_reply(ctx: TcContext) -> i32 {
    const LEN: usize = core::mem::size_of::<u32>();
    // SAFETY: reading the skb's metadata pointer.
    let meta = unsafe { (*ctx.skb.skb).data_meta } as usize;
    // SAFETY: in bounds, checked first.
    if meta + LEN > ctx.data() || unsafe { (meta as *const u32).read_unaligned() } != REPLY_META {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: helper calls on the program's own context.
    unsafe {
        bpf_skb_change_type(ctx.skb.skb, PACKET_HOST);
        bpf_redirect_peer((*ctx.skb.skb).ifindex, 0) as i32
    }
}

/// Bytes of headers the TC program wants in the linear part of the skb.
const TC_HEADER_BYTES: u32 = 128;

struct TcFrame<'a>(&'a TcContext);

impl Resizable for TcFrame<'_> {
    fn bounds(&self) -> (usize, usize) {
        let skb = self.0.skb.skb;
        // SAFETY: reads of the context, volatile as in `XdpFrame`.
        unsafe {
            (
                core::ptr::read_volatile(&(*skb).data) as usize,
                core::ptr::read_volatile(&(*skb).data_end) as usize,
            )
        }
    }

    fn truncate(&mut self, len: usize) -> Option<()> {
        // SAFETY: helper calls on the program's own context.
        let changed = unsafe { bpf_skb_change_tail(self.0.skb.skb, len as u32, 0) };
        (changed == 0 && self.0.pull_data(len as u32).is_ok()).then_some(())
    }

    fn grow_head(&mut self, len: usize) -> Option<()> {
        // SAFETY: a helper call on the program's own context.
        (unsafe { bpf_skb_change_head(self.0.skb.skb, len as u32, 0) } == 0).then_some(())
    }
}

#[classifier]
pub fn sg_tc(ctx: TcContext) -> i32 {
    let Some((slot, _)) = active_port() else {
        return TC_ACT_UNSPEC;
    };
    let len = ctx.len();
    let want = if len < TC_HEADER_BYTES {
        len
    } else {
        TC_HEADER_BYTES
    };
    if ctx.data() + want as usize > ctx.data_end() {
        // Headers in paged data: make them linear, or parse what there is
        // and let a truncated header count as malformed.
        let _ = ctx.pull_data(want);
    }
    match filter(slot, Direction::Ingress, &mut TcFrame(&ctx), len as u64) {
        // UNSPEC lets the next program of the TCX chain run.
        Some(true) => TC_ACT_UNSPEC,
        Some(false) => TC_ACT_SHOT,
        // Back in through the port, as if the workload had sent it.
        // SAFETY: reading the skb's interface and a helper call.
        None => unsafe { bpf_redirect((*ctx.skb.skb).ifindex, BPF_F_INGRESS as u64) as i32 },
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
