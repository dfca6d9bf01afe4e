//! sg's datapath: an XDP program for traffic leaving a workload and a TC
//! egress program for traffic toward it, both on the host side of the
//! workload's port (a tap or the host end of a veth).
//!
//! One instance of the object is loaded per port, with the port's slot in
//! the `PORT_SLOT` global; the maps are shared by all instances, pinned
//! under the pin directory by name.
//!
//! This file holds the entry points, the globals, and the pipeline that
//! composes the stages, each in a module of its own: parsing (`parse`),
//! port security (`portsec`), the link services that pass whatever the
//! rules say (`link`: neighbour discovery, DHCP), the policy (`policy`)
//! through the connection table (`conntrack`), and REJECT's replies
//! (`reject`). Below them: the frame and its bounds-checked reader
//! (`buf`), the shared maps (`maps`), and what a stage may ask of the
//! instance it runs in (`instance`). Each module uses only those listed
//! before it in `buf`, `maps`, `instance`, `parse`, `portsec`, `link`,
//! `conntrack`, `policy`, `reject`; none uses this file.
// Built for `bpfel-unknown-none`; on the host only checked by clippy.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds (see `conntrack::fetch_add`): the BPF target has no atomic
// types.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod buf;
mod conntrack;
mod instance;
mod link;
mod maps;
mod parse;
mod policy;
mod portsec;
mod reject;

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::{
        bpf_redirect, bpf_redirect_peer, bpf_skb_change_head, bpf_skb_change_tail,
        bpf_skb_change_type, bpf_xdp_adjust_head, bpf_xdp_adjust_meta, bpf_xdp_adjust_tail,
    },
    macros::{classifier, xdp},
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use sg_common::{
    BLOCK_KEY_SLOT_BITS, BlockKey, Direction, NO_POLICY, Outcome, PORT_ACTIVE,
    PORT_OPEN_WITHOUT_POLICY, PORT_REPLY_VIA_TC, REPLY_META,
};

use crate::{
    buf::Resizable,
    conntrack::{Flow, Start, Step},
    instance::Instance,
    maps::{SG_BLOCKED, SG_PORT_BLOCKS, SG_PORT_POLICY, SG_PORTS, SG_STATS},
    parse::{Frame, IpPacket, parse},
};

/// This instance's port; set by the loader.
#[unsafe(no_mangle)]
static PORT_SLOT: u32 = 0;

/// Set by `sg-ctl trace` in its own instance (see `TRACE_GLOBAL`).
#[unsafe(no_mangle)]
static TRACE: u32 = 0;

#[inline(always)]
fn port_slot() -> u32 {
    // SAFETY: a plain read of a global the loader may have rewritten.
    unsafe { core::ptr::read_volatile(&PORT_SLOT) }
}

/// The flags of the port at `slot` (zero for none: inactive).
#[inline(always)]
fn port_flags(slot: u32) -> u32 {
    SG_PORTS.get(slot).map_or(0, |port| port.flags)
}

/// Whether the port's programs decide on its frames: it is active and has
/// a policy in force, or was attached open without one
/// (`PORT_OPEN_WITHOUT_POLICY`, as `sg-ctl attach` does; its blocklist and
/// port security apply). Otherwise (being attached or detached, or no
/// policy yet) every frame is dropped, `drop-no-policy`.
///
/// A yes or no, from flags and a policy id read here and nowhere kept: a
/// register known to hold one bit on one path and not on the other would
/// have the verifier go through everything after twice. Who needs them
/// later reads them again.
#[inline(always)]
fn enforcing(slot: u32) -> bool {
    let flags = port_flags(slot);
    flags & PORT_ACTIVE != 0
        && (flags & PORT_OPEN_WITHOUT_POLICY != 0
            || SG_PORT_POLICY
                .get(slot)
                .is_some_and(|&policy| policy != NO_POLICY))
}

/// Whether the port at `slot` has prefixes in `SG_BLOCKED`, as its count
/// tells (see `SG_PORT_BLOCKS`); a count that cannot be read says yes.
#[inline(always)]
fn blocks_anything(slot: u32) -> bool {
    SG_PORT_BLOCKS.get(slot).is_none_or(|&blocks| blocks != 0)
}

/// Whether the workload's side of the packet, the source of what it sends
/// and the destination of what it receives, is in a prefix the port
/// blocks; a port that blocks nothing skips the trie.
#[inline(always)]
fn is_blocked(slot: u32, direction: Direction, ip: &IpPacket) -> bool {
    let addr = match direction {
        Direction::Egress => ip.src,
        Direction::Ingress => ip.dst,
    };
    let key = Key::new(BLOCK_KEY_SLOT_BITS + 128, BlockKey { slot, addr });
    blocks_anything(slot) && SG_BLOCKED.get(&key).is_some()
}

/// This instance, as its globals tell.
struct Globals;

impl Instance for Globals {
    #[inline(always)]
    fn tracing() -> bool {
        // SAFETY: a plain read of a global the loader may have rewritten.
        unsafe { core::ptr::read_volatile(&TRACE) != 0 }
    }
}

#[inline(always)]
fn count(slot: u32, direction: Direction, outcome: Outcome, bytes: u64) {
    if let Some(record) = Globals::trace() {
        // SAFETY: the tracer's own record.
        unsafe { (*record).outcome = outcome as u32 };
    }
    Globals::add(
        SG_STATS.get_ptr_mut(outcome.stat_index(slot, direction)),
        bytes,
    );
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
///    (or the packet drops when its port holds its limit of flows, or the
///    table is full and has no expired or unreplied flow to make room).
/// 5. TCP of no flow that is no SYN: what the policy says, but invalid
///    where the policy would allow it.
/// 6. Everything else (untracked ICMP): the policy alone.
#[inline(always)]
fn track(
    keys: &mut policy::Keys,
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
        policy::classify::<Globals>(keys, slot, policy, direction, ip, bytes)
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
                    conntrack::account(entry, &keys.conntrack, direction, bytes);
                    conntrack::closed(&keys.conntrack);
                }
                Step::Pass => conntrack::account(entry, &keys.conntrack, direction, bytes),
            }
            policy::pass_later_fragments(keys, slot, direction, ip);
            Ok(Outcome::PassEstablished)
        }
        /* 4 */
        Flow::New => {
            let outcome = verdict?;
            match conntrack::start(&mut keys.conntrack, direction, policy, bytes) {
                Start::Started => Ok(outcome),
                Start::PortFull => Err(Outcome::DropConntrackPortFull),
                Start::TableFull => Err(Outcome::DropConntrackFull),
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

/// Decides on an IP packet, in this order: the blocklist (`is_blocked`),
/// neighbour discovery, an open port without a policy, DHCP (`link`), then
/// the policy through the connection table.
#[inline(always)]
fn decide_ip(
    slot: u32,
    direction: Direction,
    ip: &IpPacket,
    frame: (usize, usize),
    bytes: u64,
) -> Outcome {
    if is_blocked(slot, direction, ip) {
        return Outcome::DropBlocked;
    }
    if link::is_neighbour_discovery(ip) {
        return Outcome::PassNeighbourDiscovery;
    }
    let policy = match SG_PORT_POLICY.get(slot) {
        Some(&policy) if policy != NO_POLICY => policy,
        // Open without a policy (see `enforcing`).
        _ if port_flags(slot) & PORT_OPEN_WITHOUT_POLICY != 0 => return Outcome::Pass,
        // Taken away since `enforcing` looked.
        _ => return Outcome::DropNoPolicy,
    };
    let Some(keys) = policy::keys() else {
        return Outcome::DropInternal;
    };
    if let Some(outcome) = link::dhcp(policy, direction, ip) {
        if outcome == Outcome::PassDhcp && !Globals::tracing() {
            policy::pass_later_fragments(keys, slot, direction, ip);
        }
        return outcome;
    }
    // A tracer leaves the table alone, and a later fragment has no ports
    // to find its flow by: the policy (or its first fragment) decides.
    if Globals::tracing() || !ip.first_fragment {
        policy::classify::<Globals>(keys, slot, policy, direction, ip, bytes)
    } else {
        track(keys, slot, policy, direction, ip, frame, bytes)
    }
    .unwrap_or_else(|drop| drop)
}

/// Parses the frame, decides on it and counts the outcome: `Some(true)`
/// pass, `Some(false)` drop, `None` the frame is now the reply to send
/// back. A port with no policy in force (see `enforcing`) drops every
/// frame before it is parsed.
#[inline(always)]
fn filter<F: Resizable>(
    slot: u32,
    direction: Direction,
    frame: &mut F,
    bytes: u64,
) -> Option<bool> {
    let (start, end) = frame.bounds();
    let outcome = match enforcing(slot) {
        false => Outcome::DropNoPolicy,
        true => match parse(start, end) {
            Err(drop) => drop,
            Ok(parsed) => match (
                portsec::check(slot, direction, start, end, &parsed),
                &parsed,
            ) {
                (Err(drop), _) => drop,
                (Ok(()), Frame::Ip(ip)) => {
                    match decide_ip(slot, direction, ip, (start, end), bytes) {
                        Outcome::Reject if reject::reply(frame, ip).is_none() => Outcome::DropRule,
                        outcome => outcome,
                    }
                }
                (Ok(()), Frame::Arp(_) | Frame::NonIp) => Outcome::PassNonIp,
            },
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
    let slot = port_slot();
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    match filter(slot, Direction::Egress, &mut XdpFrame(&ctx), bytes) {
        Some(true) => xdp_action::XDP_PASS,
        Some(false) => xdp_action::XDP_DROP,
        None if port_flags(slot) & PORT_REPLY_VIA_TC != 0 => mark_reply(&ctx),
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
    let slot = port_slot();
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
