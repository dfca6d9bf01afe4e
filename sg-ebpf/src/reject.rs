//! REJECT: a packet that a reject rule decided on becomes, in place, the
//! reply its sender gets: a TCP RST for TCP, an ICMP (type 3 code 13) or
//! ICMPv6 (type 1 code 1) "administratively prohibited" error quoting the
//! packet for everything else. The program then sends the reply back the
//! way the packet came.
//!
//! As RFC 1122 and 4443 ask, no reply goes to an RST, an ICMP error, a
//! fragment after the first, or to or from a multicast or broadcast
//! address; such packets are dropped like those of a drop rule.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use sg_common::FAMILY_IPV4;

use crate::parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IpPacket};

/// The packet's header offsets pass through here on their way to the reply
/// code. On each path through the parser they are numbers the verifier
/// knows, and it would check the reply code once per path; read back from
/// a map they are numbers it does not know, and one check serves all.
#[map(name = "SG_REPLY_OFFSETS")]
static OFFSETS: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Where the IP header starts, at most after two VLAN tags.
const MAX_L3: usize = ETH_HDR + 2 * VLAN_HDR;
/// Where a transport header replied to may start.
const MAX_L4: usize = 512;

/// Offsets in the frame of the IP and transport headers.
struct Offsets {
    l3: usize,
    l4: usize,
}

/// A frame whose length can change: an XDP buffer or a TC skb.
pub trait Resizable {
    /// The frame's bytes, `[start, end)`.
    fn bounds(&self) -> (usize, usize);
    /// Cuts the frame to `len` bytes, which it has.
    fn truncate(&mut self, len: usize) -> Option<()>;
    /// Adds `len` bytes in front of the frame.
    fn grow_head(&mut self, len: usize) -> Option<()>;
}

const ETH_ADDRS: usize = 12;
const ETH_HDR: usize = 14;
const VLAN_HDR: usize = 4;
const IPV4_HDR: usize = 20;
const IPV6_HDR: usize = 40;
const TCP_HDR: usize = 20;
const ICMP_HDR: usize = 8;
const TTL: u8 = 64;
/// Bytes of the rejected packet quoted in an ICMP error.
const QUOTE_MAX: usize = 256;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Turns the frame into the reply to its packet. `None`: the packet gets
/// no reply, or the frame could not be changed; it is to be dropped.
#[inline(always)]
pub fn reply<F: Resizable>(frame: &mut F, ip: &IpPacket) -> Option<()> {
    if !ip.first_fragment || !unicast(ip, &ip.src) || !unicast(ip, &ip.dst) {
        return None;
    }
    let at = offsets(ip)?;
    if ip.protocol == IPPROTO_TCP {
        tcp_reset(frame, ip, &at)
    } else {
        prohibited(frame, ip, &at)
    }
}

#[inline(always)]
fn offsets(ip: &IpPacket) -> Option<Offsets> {
    let slot = OFFSETS.get_ptr_mut(0)?;
    // SAFETY: this CPU's value, written then read back.
    let [l3, l4] = unsafe {
        slot.write([ip.l3 as u32, ip.l4_offset as u32]);
        slot.read_volatile()
    };
    let (l3, l4) = (l3 as usize, l4 as usize);
    (l3 <= MAX_L3 && l4 <= MAX_L4 && l3 <= l4).then_some(Offsets { l3, l4 })
}

#[inline(always)]
fn unicast(ip: &IpPacket, addr: &[u8; 16]) -> bool {
    if ip.family == FAMILY_IPV4 {
        let first = addr[12];
        let limited_broadcast = addr[12..] == [255; 4];
        first != 0 && first < 224 && !limited_broadcast
    } else {
        addr[0] != 0xff && *addr != [0; 16]
    }
}

#[inline(always)]
fn tcp_reset<F: Resizable>(frame: &mut F, ip: &IpPacket, at: &Offsets) -> Option<()> {
    let (start, end) = frame.bounds();
    // First: a later check at a variable offset would cover this one for
    // the compiler, not for the verifier. (A frame that gets no reply is
    // dropped: the swap does no harm.)
    swap_macs(start, end, 0)?;
    let tcp: *const [u8; TCP_HDR] = ptr_at(start, end, at.l4).ok()?;
    // SAFETY: in bounds, checked by `ptr_at`.
    let tcp = unsafe { *tcp };
    let flags = tcp[13];
    if flags & TCP_RST != 0 {
        return None;
    }
    let headers = at.l4 - at.l3 + (tcp[12] >> 4) as usize * 4;
    let mut segment = ip.ip_len.saturating_sub(headers) as u32;
    segment += (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
    let their_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let their_ack = [tcp[8], tcp[9], tcp[10], tcp[11]];
    // RFC 9293 3.10.7.1: an acceptable reset for what the sender has
    // sent.
    let (seq, ack, flags) = if flags & TCP_ACK != 0 {
        (their_ack, [0; 4], TCP_RST)
    } else {
        (
            [0; 4],
            their_seq.wrapping_add(segment).to_be_bytes(),
            TCP_RST | TCP_ACK,
        )
    };
    let mut reset = [0u8; TCP_HDR];
    reset[0..2].copy_from_slice(&tcp[2..4]);
    reset[2..4].copy_from_slice(&tcp[0..2]);
    reset[4..8].copy_from_slice(&seq);
    reset[8..12].copy_from_slice(&ack);
    reset[12] = (TCP_HDR as u8 / 4) << 4;
    reset[13] = flags;
    let sum = add_words(
        write_ip(start, end, ip, at.l3, IPPROTO_TCP, TCP_HDR)?,
        &reset,
    );
    reset[16..18].copy_from_slice(&fold(sum));
    let len = at.l3 + ip_header_len(ip) + TCP_HDR;
    write(start, end, len - TCP_HDR, reset)?;
    frame.truncate(len)
}

#[inline(always)]
fn prohibited<F: Resizable>(frame: &mut F, ip: &IpPacket, at: &Offsets) -> Option<()> {
    let (icmp, icmp_type, code) = if ip.family == FAMILY_IPV4 {
        (IPPROTO_ICMP, 3, 13)
    } else {
        (IPPROTO_ICMPV6, 1, 1)
    };
    if ip.protocol == icmp && is_icmp_error(ip) {
        return None;
    }
    let (start, end) = frame.bounds();
    let l3 = at.l3;
    let mut quote = end - start - l3;
    if quote > ip.ip_len {
        quote = ip.ip_len;
    }
    if quote > QUOTE_MAX {
        quote = QUOTE_MAX;
    }
    // Whole 16-bit words, for the checksum.
    quote &= !1;
    frame.truncate(l3 + quote)?;
    let grow = ip_header_len(ip) + ICMP_HDR;
    frame.grow_head(grow)?;
    let (start, end) = frame.bounds();
    move_l2(start, end, l3, grow)?;
    let mut sum = write_ip(start, end, ip, l3, icmp, ICMP_HDR + quote)?;
    if ip.family == FAMILY_IPV4 {
        // ICMP's checksum has no pseudo-header.
        sum = 0;
    }
    // Every write at or after the one before: the verifier refuses a
    // pointer the compiler derives backwards from a checked one.
    let header = [icmp_type, code, 0, 0, 0, 0, 0, 0];
    let at = l3 + grow - ICMP_HDR;
    write(start, end, at, header)?;
    sum = add_words(sum, &header);
    sum = add_packet(sum, start, end, l3 + grow, quote)?;
    write(start, end, at + 2, fold(sum))
}

/// `size_of::<T>()` bytes of the frame at `offset`, if the frame has them.
///
/// The offsets here are numbers the verifier does not know, and it refuses
/// to go backwards from a pointer so made. The compiler would gladly make
/// one pointer out of another and reach it backwards; hiding the offset
/// from it makes each pointer from the frame's start.
#[inline(always)]
fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Result<*const T, ()> {
    let at = start + core::hint::black_box(offset);
    if at + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok(at as *const T)
}

/// Whether an ICMP packet is an error (no error answers an error); its
/// type is the first byte rules match on.
#[inline(always)]
fn is_icmp_error(ip: &IpPacket) -> bool {
    let kind = ip.l4[0];
    if ip.family == FAMILY_IPV4 {
        matches!(kind, 3 | 4 | 5 | 11 | 12)
    } else {
        kind < 128
    }
}

#[inline(always)]
fn ip_header_len(ip: &IpPacket) -> usize {
    if ip.family == FAMILY_IPV4 {
        IPV4_HDR
    } else {
        IPV6_HDR
    }
}

/// Writes the reply's IP header at `l3`, from the packet's destination to
/// its source, with `payload` bytes of `protocol` after it. Returns the sum
/// of the transport checksum's pseudo-header.
#[inline(always)]
fn write_ip(
    start: usize,
    end: usize,
    ip: &IpPacket,
    l3: usize,
    protocol: u8,
    payload: usize,
) -> Option<u32> {
    let pseudo = add_words(add_words(0, &ip.src), &ip.dst) + protocol as u32 + payload as u32;
    if ip.family == FAMILY_IPV4 {
        let total = ((IPV4_HDR + payload) as u16).to_be_bytes();
        let mut header = [
            0x45, 0, total[0], total[1], 0, 0, 0x40, 0, TTL, protocol, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        header[12..16].copy_from_slice(&ip.dst[12..]);
        header[16..20].copy_from_slice(&ip.src[12..]);
        let sum = fold(add_words(0, &header));
        header[10..12].copy_from_slice(&sum);
        write(start, end, l3, header)?;
    } else {
        let length = (payload as u16).to_be_bytes();
        let mut header = [0u8; IPV6_HDR];
        header[0] = 0x60;
        header[4..6].copy_from_slice(&length);
        header[6] = protocol;
        header[7] = TTL;
        header[8..24].copy_from_slice(&ip.dst);
        header[24..40].copy_from_slice(&ip.src);
        write(start, end, l3, header)?;
    }
    Some(pseudo)
}

/// Swaps the source and destination MAC addresses of the Ethernet header
/// at `offset`.
#[inline(always)]
fn swap_macs(start: usize, end: usize, offset: usize) -> Option<()> {
    let eth: *const [u8; ETH_ADDRS] = ptr_at(start, end, offset).ok()?;
    // SAFETY: in bounds, checked by `ptr_at`.
    let eth = unsafe { *eth };
    let mut swapped = [0u8; ETH_ADDRS];
    swapped[..6].copy_from_slice(&eth[6..]);
    swapped[6..].copy_from_slice(&eth[..6]);
    write(start, end, 0, swapped)
}

/// Moves the `len` bytes of the link-layer header (Ethernet and VLAN
/// tags) from `from` to the front of the frame, swapping the addresses.
#[inline(always)]
fn move_l2(start: usize, end: usize, len: usize, from: usize) -> Option<()> {
    let eth: *const [u8; ETH_HDR] = ptr_at(start, end, from).ok()?;
    // SAFETY: in bounds, checked by `ptr_at`.
    write(start, end, 0, unsafe { *eth })?;
    swap_macs(start, end, 0)?;
    let mut at = ETH_HDR;
    while at < len && at < ETH_HDR + 2 * VLAN_HDR {
        let tag: *const [u8; VLAN_HDR] = ptr_at(start, end, from + at).ok()?;
        // SAFETY: in bounds, checked by `ptr_at`.
        write(start, end, at, unsafe { *tag })?;
        at += VLAN_HDR;
    }
    Some(())
}

#[inline(always)]
fn write<const N: usize>(start: usize, end: usize, offset: usize, bytes: [u8; N]) -> Option<()> {
    let at: *const [u8; N] = ptr_at(start, end, offset).ok()?;
    // SAFETY: in bounds, checked by `ptr_at`; the program owns the frame.
    unsafe { (at as *mut [u8; N]).write_unaligned(bytes) };
    Some(())
}

/// Adds big-endian 16-bit words to a ones'-complement sum.
#[inline(always)]
fn add_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// Adds `len` bytes of the frame at `offset`: an even number, at most
/// `QUOTE_MAX`.
#[inline(always)]
fn add_packet(mut sum: u32, start: usize, end: usize, offset: usize, len: usize) -> Option<u32> {
    let mut i = 0;
    while i < QUOTE_MAX / 2 && 2 * i < len {
        let word: *const [u8; 2] = ptr_at(start, end, offset + 2 * i).ok()?;
        // SAFETY: in bounds, checked by `ptr_at`.
        sum += u16::from_be_bytes(unsafe { *word }) as u32;
        i += 1;
    }
    Some(sum)
}

/// The ones'-complement checksum of a sum, as it goes in a header.
#[inline(always)]
fn fold(sum: u32) -> [u8; 2] {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}
