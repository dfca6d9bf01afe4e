//! The programs of the load benchmark (`sg-loadbench`), apart from the
//! datapath: a traffic generator for BPF_PROG_TEST_RUN in live-frames mode,
//! as xdp-trafficgen does it, and the empty programs that give the ceiling.
//!
//! The generator is handed one UDP/IPv4 frame; on every run it rewrites the
//! source and destination addresses and ports within the ranges the loader
//! set, restores the time to live, fixes the IPv4 header checksum, and
//! sends the frame out of the interface of the run's context (`XDP_TX`), so
//! many rules and many flows see traffic. The flow of a frame is random
//! (`bpf_get_prandom_u32`), or, when the loader sets `SEQUENTIAL`, the next
//! of the ranges' flows in turn: destination first, then destination port,
//! source, source port; the first frames of a sequential run are then every
//! flow once.
//!
//! The kernel reuses a frame's page once the frame is freed, without copying
//! the template again: a frame the receiver forwarded comes back with its
//! time to live one less, so every field a receiver may change is written
//! on every run.
// Built for `bpfel-unknown-none` (`cargo xtask build-ebpf`); on the host
// only checked by clippy.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_get_prandom_u32, macros::xdp, programs::XdpContext,
};

/// Source `SRC_BASE + i` for an `i < SRC_COUNT`; set by the loader.
#[unsafe(no_mangle)]
static SRC_BASE: u32 = 0;
#[unsafe(no_mangle)]
static SRC_COUNT: u32 = 1;
/// Source port `SPORT_BASE + p` for a `p < SPORT_COUNT`.
#[unsafe(no_mangle)]
static SPORT_BASE: u32 = 1024;
#[unsafe(no_mangle)]
static SPORT_COUNT: u32 = 1;
/// Destination `DST_BASE + DST_STRIDE * k` for a `k < DST_COUNT`
/// (addresses as host-order numbers); set by the loader.
#[unsafe(no_mangle)]
static DST_BASE: u32 = 0;
#[unsafe(no_mangle)]
static DST_STRIDE: u32 = 1;
#[unsafe(no_mangle)]
static DST_COUNT: u32 = 1;
/// Destination port `DPORT_BASE + j` for a `j < DPORT_COUNT`.
#[unsafe(no_mangle)]
static DPORT_BASE: u32 = 0;
#[unsafe(no_mangle)]
static DPORT_COUNT: u32 = 1;
/// Non-zero: the flows in turn, not at random.
#[unsafe(no_mangle)]
static SEQUENTIAL: u32 = 0;
/// Of random frames, one in `THIN` is sent and the others dropped by the
/// generator itself: a slower generator, to check the benchmark at the low
/// rates of a slow machine. 1 (or 0) sends every frame.
#[unsafe(no_mangle)]
static THIN: u32 = 1;
/// The number of the next frame of a sequential or thinned run (one run's
/// frames are generated one after the other, on one CPU).
static mut NEXT: u32 = 0;

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const TTL: usize = ETH_LEN + 8;
const CHECKSUM: usize = ETH_LEN + 10;
const SRC: usize = ETH_LEN + 12;
const DST: usize = ETH_LEN + 16;
const SPORT: usize = ETH_LEN + IPV4_LEN;
const DPORT: usize = SPORT + 2;
const UDP_CHECKSUM: usize = SPORT + 6;
const FRAME_MIN: usize = SPORT + 8;

fn global(value: &u32) -> u32 {
    // SAFETY: a global the loader may have set; read it, do not fold it.
    unsafe { core::ptr::read_volatile(value) }
}

#[xdp]
pub fn sg_trafficgen(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + FRAME_MIN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let (count, ports) = (global(&DST_COUNT), global(&DPORT_COUNT));
    let (sources, sports) = (global(&SRC_COUNT), global(&SPORT_COUNT));
    if sources == 0 || count == 0 || ports == 0 || sports == 0 {
        return xdp_action::XDP_ABORTED;
    }
    let sequential = global(&SEQUENTIAL) != 0;
    let thin = global(&THIN);
    if !sequential && thin > 1 && !next().is_multiple_of(thin) {
        return xdp_action::XDP_DROP;
    }
    let (k, j, i, p) = if sequential {
        let n = next();
        let rest = n / count / ports;
        (
            n % count,
            n / count % ports,
            rest % sources,
            rest / sources % sports,
        )
    } else {
        // SAFETY: helper calls without arguments.
        let (first, second) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
        (
            first % count,
            (second >> 16) % ports,
            (first >> 16) % sources,
            (second & 0xffff) % sports,
        )
    };
    let dst = global(&DST_BASE).wrapping_add(global(&DST_STRIDE).wrapping_mul(k));
    let dport = global(&DPORT_BASE).wrapping_add(j) as u16;
    let sport = global(&SPORT_BASE).wrapping_add(p) as u16;
    let src = global(&SRC_BASE).wrapping_add(i);
    let frame = start as *mut u8;
    // SAFETY: every write below ends before FRAME_MIN, checked above.
    unsafe {
        write(frame, TTL, &[64]);
        write(frame, SRC, &src.to_be_bytes());
        write(frame, DST, &dst.to_be_bytes());
        write(frame, SPORT, &sport.to_be_bytes());
        write(frame, DPORT, &dport.to_be_bytes());
        // No UDP checksum: allowed in IPv4, and nothing on the way checks it.
        write(frame, UDP_CHECKSUM, &[0, 0]);
        write(frame, CHECKSUM, &[0, 0]);
        let mut sum = 0u32;
        for word in 0..IPV4_LEN / 2 {
            let at = frame.add(ETH_LEN + 2 * word);
            sum += u32::from(u16::from_be_bytes([*at, *at.add(1)]));
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        write(frame, CHECKSUM, &(!(sum as u16)).to_be_bytes());
    }
    xdp_action::XDP_TX
}

/// The number of this frame in a sequential or thinned run.
fn next() -> u32 {
    // SAFETY: the runs of one test run do not overlap.
    unsafe {
        let next = core::ptr::addr_of_mut!(NEXT);
        let n = core::ptr::read_volatile(next);
        core::ptr::write_volatile(next, n.wrapping_add(1));
        n
    }
}

/// # Safety
/// `frame + at + bytes.len()` must be within the packet.
unsafe fn write(frame: *mut u8, at: usize, bytes: &[u8]) {
    for (i, byte) in bytes.iter().enumerate() {
        // SAFETY: within the packet, as the caller checked.
        unsafe { *frame.add(at + i) = *byte };
    }
}

/// The ceiling when the filter passes: an empty program.
#[xdp]
pub fn sg_bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The ceiling when the filter drops.
#[xdp]
pub fn sg_bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
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
