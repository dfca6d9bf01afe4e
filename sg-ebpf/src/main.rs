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

mod parse;
mod portsec;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use sg_common::{
    BLOCK_KEY_SLOT_BITS, BlockKey, Class, Counter, Direction, L4Key, LocalKey,
    MAX_BLOCKED_PREFIXES, MAX_L4_ENTRIES, MAX_LOCAL_ENTRIES, MAX_PORTS, MAX_REMOTE_ENTRIES,
    MAX_RULE_COUNTERS, MAX_VERDICT_ENTRIES, NO_POLICY, Outcome, PortConfig, RemoteKey, SCOPE_BITS,
    STATS_ENTRIES, Scope, VerdictKey, candidate,
};

use crate::parse::{Frame, IpPacket, parse};

/// This instance's port; set by the loader.
#[unsafe(no_mangle)]
static PORT_SLOT: u32 = 0;

#[map(name = "SG_PORTS")]
static SG_PORTS: Array<PortConfig> = Array::pinned(MAX_PORTS, 0);

#[map(name = "SG_STATS")]
static SG_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(STATS_ENTRIES, 0);

#[map(name = "SG_BLOCKED")]
static SG_BLOCKED: LpmTrie<BlockKey, u32> = LpmTrie::pinned(MAX_BLOCKED_PREFIXES, 0);

/// Slot → the port's current policy (`NO_POLICY`: none).
#[map(name = "SG_PORT_POLICY")]
static SG_PORT_POLICY: Array<u32> = Array::pinned(MAX_PORTS, 0);

/// The port's own address → its local class.
#[map(name = "SG_LOCAL")]
static SG_LOCAL: LpmTrie<LocalKey, u32> = LpmTrie::pinned(MAX_LOCAL_ENTRIES, 0);

/// The remote address → its class, and the best rule that needs no more.
#[map(name = "SG_REMOTE")]
static SG_REMOTE: LpmTrie<RemoteKey, Class> = LpmTrie::pinned(MAX_REMOTE_ENTRIES, 0);

/// Protocol and port (or ICMP type and code) → class and best rule.
#[map(name = "SG_L4")]
static SG_L4: LpmTrie<L4Key, Class> = LpmTrie::pinned(MAX_L4_ENTRIES, 0);

/// (remote class, L4 class) → the best rule that needs both.
#[map(name = "SG_VERDICT")]
static SG_VERDICT: HashMap<VerdictKey, u64> =
    HashMap::pinned(MAX_VERDICT_ENTRIES, BPF_F_NO_PREALLOC);

/// Packets and bytes each rule decided.
#[map(name = "SG_RULE_STATS")]
static SG_RULE_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(MAX_RULE_COUNTERS, 0);

#[inline(always)]
fn port_slot() -> u32 {
    // SAFETY: a plain read of a global the loader may have rewritten.
    unsafe { core::ptr::read_volatile(&PORT_SLOT) }
}

/// The port's slot if the port is active; `None` while it is being attached
/// or detached.
#[inline(always)]
fn active_slot() -> Option<u32> {
    let slot = port_slot();
    SG_PORTS.get(slot).filter(|p| p.is_active()).map(|_| slot)
}

#[inline(always)]
fn add(counter: Option<*mut Counter>, bytes: u64) {
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
    add(
        SG_STATS.get_ptr_mut(outcome.stat_index(slot, direction)),
        bytes,
    );
}

/// Applies the port's policy: the first rule that matches decides. Four
/// lookups whatever the number of rules: the local address's class, then
/// the remote address's and the protocol/port's, then the pair's.
#[inline(always)]
fn classify(
    slot: u32,
    direction: Direction,
    ip: &IpPacket,
    bytes: u64,
) -> Result<Outcome, Outcome> {
    let policy = match SG_PORT_POLICY.get(slot) {
        Some(&policy) if policy != NO_POLICY => policy,
        _ => return Ok(Outcome::Pass),
    };
    let (local, remote) = match direction {
        Direction::Egress => (ip.src, ip.dst),
        Direction::Ingress => (ip.dst, ip.src),
    };
    let local = LocalKey {
        policy,
        family: ip.family as u32,
        addr: local,
    };
    let local_class = SG_LOCAL
        .get(Key::new(SCOPE_BITS + 128, local))
        .copied()
        .unwrap_or(0);
    let scope = Scope {
        policy,
        local_class: local_class as u16,
        direction: direction as u8,
        family: ip.family,
    };
    let remote = SG_REMOTE.get(Key::new(
        SCOPE_BITS + 128,
        RemoteKey {
            scope,
            addr: remote,
        },
    ));
    let l4 = L4Key {
        scope,
        protocol: ip.protocol,
        _pad: 0,
        value: ip.l4,
    };
    let l4 = SG_L4.get(Key::new(SCOPE_BITS + 32, l4));
    // Every scope has root entries in both tries; a miss is a policy being
    // removed under this packet.
    let (Some(remote), Some(l4)) = (remote, l4) else {
        return Err(Outcome::DropDefault);
    };
    let mut best = if remote.best < l4.best {
        remote.best
    } else {
        l4.best
    };
    let pair = VerdictKey {
        scope,
        remote_class: remote.class,
        l4_class: l4.class,
    };
    // SAFETY: a plain read of a hash map value.
    if let Some(&both) = unsafe { SG_VERDICT.get(pair) }
        && both < best
    {
        best = both;
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
        _ => Err(Outcome::DropRule),
    }
}

/// Parses the frame and decides on it. The address checked is the
/// workload's side of the conversation: the source of what it sends, the
/// destination of what it receives.
#[inline(always)]
fn try_filter(
    slot: u32,
    direction: Direction,
    start: usize,
    end: usize,
    bytes: u64,
) -> Result<Outcome, Outcome> {
    let frame = parse(start, end)?;
    portsec::check(slot, direction, start, end, &frame)?;
    let ip = match frame {
        Frame::Ip(ip) => ip,
        Frame::Arp(_) | Frame::NonIp => return Ok(Outcome::PassNonIp),
    };
    let addr = match direction {
        Direction::Egress => ip.src,
        Direction::Ingress => ip.dst,
    };
    let key = Key::new(BLOCK_KEY_SLOT_BITS + 128, BlockKey { slot, addr });
    if SG_BLOCKED.get(&key).is_some() {
        return Err(Outcome::DropBlocked);
    }
    classify(slot, direction, &ip, bytes)
}

#[inline(always)]
fn filter(slot: u32, direction: Direction, start: usize, end: usize, bytes: u64) -> Outcome {
    let outcome = try_filter(slot, direction, start, end, bytes).unwrap_or_else(|drop| drop);
    count(slot, direction, outcome, bytes);
    outcome
}

#[xdp]
pub fn sg_xdp(ctx: XdpContext) -> u32 {
    let Some(slot) = active_slot() else {
        return xdp_action::XDP_PASS;
    };
    let (start, end) = (ctx.data(), ctx.data_end());
    match filter(slot, Direction::Egress, start, end, (end - start) as u64) {
        outcome if outcome.is_drop() => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// Bytes of headers the TC program wants in the linear part of the skb.
const TC_HEADER_BYTES: u32 = 128;

#[classifier]
pub fn sg_tc(ctx: TcContext) -> i32 {
    let Some(slot) = active_slot() else {
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
    match filter(
        slot,
        Direction::Ingress,
        ctx.data(),
        ctx.data_end(),
        len as u64,
    ) {
        outcome if outcome.is_drop() => TC_ACT_SHOT,
        // UNSPEC lets the next program of the TCX chain run.
        _ => TC_ACT_UNSPEC,
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
