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

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use sg_common::{
    BLOCK_KEY_SLOT_BITS, BlockKey, Counter, Direction, MAX_BLOCKED_PREFIXES, MAX_PORTS, Outcome,
    PortConfig, STATS_ENTRIES,
};

use crate::parse::{Frame, parse};

/// This instance's port; set by the loader.
#[unsafe(no_mangle)]
static PORT_SLOT: u32 = 0;

#[map(name = "SG_PORTS")]
static SG_PORTS: Array<PortConfig> = Array::pinned(MAX_PORTS, 0);

#[map(name = "SG_STATS")]
static SG_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(STATS_ENTRIES, 0);

#[map(name = "SG_BLOCKED")]
static SG_BLOCKED: LpmTrie<BlockKey, u32> = LpmTrie::pinned(MAX_BLOCKED_PREFIXES, 0);

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
fn count(slot: u32, direction: Direction, outcome: Outcome, bytes: u64) {
    if let Some(counter) = SG_STATS.get_ptr_mut(outcome.stat_index(slot, direction)) {
        // SAFETY: a per-CPU value, written by this CPU only.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
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
) -> Result<Outcome, Outcome> {
    let ip = match parse(start, end)? {
        Frame::Ip(ip) => ip,
        Frame::NonIp => return Ok(Outcome::PassNonIp),
    };
    let addr = match direction {
        Direction::Egress => ip.src,
        Direction::Ingress => ip.dst,
    };
    let key = Key::new(BLOCK_KEY_SLOT_BITS + 128, BlockKey { slot, addr });
    if SG_BLOCKED.get(&key).is_some() {
        return Err(Outcome::DropBlocked);
    }
    Ok(Outcome::Pass)
}

#[inline(always)]
fn filter(slot: u32, direction: Direction, start: usize, end: usize, bytes: u64) -> Outcome {
    let outcome = try_filter(slot, direction, start, end).unwrap_or_else(|drop| drop);
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
