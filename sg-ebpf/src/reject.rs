//! REJECT: a packet that a reject rule decided on becomes, in place, the
//! reply its sender gets: a TCP RST for TCP, an ICMP (type 3 code 13) or
//! ICMPv6 (type 1 code 1) "administratively prohibited" error quoting the
//! packet for everything else. The program then sends the reply back the
//! way the packet came.
//!
//! As RFC 1122 and 4443 ask, no reply goes to an RST, an ICMP error, a
//! fragment after the first, or to or from a multicast or broadcast
//! address; such packets are dropped like those of a drop rule.

use sg_common::{
    FAMILY_IPV4,
    proto::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, icmp, icmpv6, tcp},
};

use crate::{
    buf::{Buf, Resizable},
    parse::IpPacket,
};

/// Where the IP header starts, at most after two VLAN tags.
const MAX_L3: usize = ETH_HDR + 2 * VLAN_HDR;
/// Where a transport header replied to may start.
const MAX_L4: usize = 512;

/// Offsets in the frame of the IP and transport headers.
struct Offsets {
    l3: usize,
    l4: usize,
}

const ETH_HDR: usize = 14;
const VLAN_HDR: usize = 4;
const IPV4_HDR: usize = 20;
const IPV6_HDR: usize = 40;
const TCP_HDR: usize = 20;
const ICMP_HDR: usize = 8;
const TTL: u8 = 64;
/// Bytes of the rejected packet quoted in an ICMP error.
const QUOTE_MAX: usize = 256;

/// Turns the frame into the reply to its packet. `None`: the packet gets
/// no reply, or the frame could not be changed; it is to be dropped.
#[inline(always)]
pub fn reply<F: Resizable>(frame: &mut F, ip: &IpPacket) -> Option<()> {
    if !ip.first_fragment || !unicast(ip, &ip.src) || !unicast(ip, &ip.dst) {
        return None;
    }
    let buf = Buf::of_frame(frame)?;
    // Laundered: on each path through the parser these are numbers the
    // verifier knows, and it would check the reply code once per path.
    let at = Offsets {
        l3: buf.launder(ip.l3)?,
        l4: buf.launder(ip.l4_offset)?,
    };
    if at.l3 > MAX_L3 || at.l4 > MAX_L4 || at.l3 > at.l4 {
        return None;
    }
    if ip.protocol == IPPROTO_TCP {
        tcp_reset(frame, buf, ip, &at)
    } else {
        prohibited(frame, buf, ip, &at)
    }
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
fn tcp_reset<F: Resizable>(frame: &mut F, buf: Buf, ip: &IpPacket, at: &Offsets) -> Option<()> {
    // First: a later check at a variable offset would cover this one for
    // the compiler, not for the verifier. (A frame that gets no reply is
    // dropped: the swap does no harm.)
    swap_macs(buf)?;
    let ports: [u8; 4] = buf.read(at.l4)?;
    let their_seq: [u8; 4] = buf.read(at.l4 + 4)?;
    let their_ack: [u8; 4] = buf.read(at.l4 + 8)?;
    let [offset, flags]: [u8; 2] = buf.read(at.l4 + 12)?;
    if flags & tcp::RST != 0 {
        return None;
    }
    let headers = at.l4 - at.l3 + (offset >> 4) as usize * 4;
    let mut segment = ip.ip_len.saturating_sub(headers) as u32;
    segment += (flags & tcp::SYN != 0) as u32 + (flags & tcp::FIN != 0) as u32;
    // RFC 9293 3.10.7.1: an acceptable reset for what the sender has
    // sent.
    let (seq, ack, flags) = if flags & tcp::ACK != 0 {
        (their_ack, [0; 4], tcp::RST)
    } else {
        (
            [0; 4],
            u32::from_be_bytes(their_seq)
                .wrapping_add(segment)
                .to_be_bytes(),
            tcp::RST | tcp::ACK,
        )
    };
    let mut reset = [0u8; TCP_HDR];
    reset[0..2].copy_from_slice(&ports[2..4]);
    reset[2..4].copy_from_slice(&ports[0..2]);
    reset[4..8].copy_from_slice(&seq);
    reset[8..12].copy_from_slice(&ack);
    reset[12] = (TCP_HDR as u8 / 4) << 4;
    reset[13] = flags;
    let sum = add_words(write_ip(buf, ip, at.l3, IPPROTO_TCP, TCP_HDR)?, &reset);
    reset[16..18].copy_from_slice(&fold(sum));
    let len = at.l3 + ip_header_len(ip) + TCP_HDR;
    buf.write(len - TCP_HDR, reset)?;
    frame.truncate(len)
}

#[inline(always)]
fn prohibited<F: Resizable>(frame: &mut F, buf: Buf, ip: &IpPacket, at: &Offsets) -> Option<()> {
    let (icmp, icmp_type, code) = if ip.family == FAMILY_IPV4 {
        (
            IPPROTO_ICMP,
            icmp::DEST_UNREACH,
            icmp::CODE_ADMIN_PROHIBITED,
        )
    } else {
        (
            IPPROTO_ICMPV6,
            icmpv6::DEST_UNREACH,
            icmpv6::CODE_ADMIN_PROHIBITED,
        )
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
    let buf = buf.resized(frame);
    move_l2(buf, l3, grow)?;
    let mut sum = write_ip(buf, ip, l3, icmp, ICMP_HDR + quote)?;
    if ip.family == FAMILY_IPV4 {
        // ICMP's checksum has no pseudo-header.
        sum = 0;
    }
    // Every write at or after the one before: the verifier refuses a
    // pointer the compiler derives backwards from a checked one.
    let header = [icmp_type, code, 0, 0, 0, 0, 0, 0];
    let at = l3 + grow - ICMP_HDR;
    buf.write(at, header)?;
    sum = add_words(sum, &header);
    sum = add_packet(sum, buf, l3 + grow, quote)?;
    buf.write(at + 2, fold(sum))
}

/// Whether an ICMP packet is an error (no error answers an error); its
/// type is the first byte rules match on.
#[inline(always)]
fn is_icmp_error(ip: &IpPacket) -> bool {
    let kind = ip.l4[0];
    if ip.family == FAMILY_IPV4 {
        icmp::is_error(kind)
    } else {
        icmpv6::is_error(kind)
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
fn write_ip(buf: Buf, ip: &IpPacket, l3: usize, protocol: u8, payload: usize) -> Option<u32> {
    let pseudo = protocol as u32 + payload as u32;
    // The addresses of the pseudo-header are summed from the header as
    // written: summed from `ip`, all 32 bytes would be loaded at once and
    // kept on the stack until here.
    if ip.family == FAMILY_IPV4 {
        let total = ((IPV4_HDR + payload) as u16).to_be_bytes();
        let mut header = [
            0x45, 0, total[0], total[1], 0, 0, 0x40, 0, TTL, protocol, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        header[12..16].copy_from_slice(&ip.dst[12..]);
        header[16..20].copy_from_slice(&ip.src[12..]);
        let sum = fold(add_words(0, &header));
        header[10..12].copy_from_slice(&sum);
        buf.write(l3, header)?;
        add_packet(pseudo, buf, l3 + 12, 8)
    } else {
        let length = (payload as u16).to_be_bytes();
        buf.write(l3, [0x60, 0, 0, 0, length[0], length[1], protocol, TTL])?;
        buf.copy(l3 + 8, &ip.dst)?;
        buf.copy(l3 + 24, &ip.src)?;
        add_packet(pseudo, buf, l3 + 8, 32)
    }
}

/// Swaps the source and destination MAC addresses of the frame.
#[inline(always)]
fn swap_macs(buf: Buf) -> Option<()> {
    let dst: [u8; 6] = buf.read(0)?;
    let src: [u8; 6] = buf.read(6)?;
    buf.write(0, src)?;
    buf.write(6, dst)
}

/// Moves the `len` bytes of the link-layer header (Ethernet and VLAN
/// tags) from `from` to the front of the frame, swapping the addresses.
#[inline(always)]
fn move_l2(buf: Buf, len: usize, from: usize) -> Option<()> {
    let dst: [u8; 6] = buf.read(from)?;
    let src: [u8; 6] = buf.read(from + 6)?;
    let ether_type: [u8; 2] = buf.read(from + 12)?;
    buf.write(0, src)?;
    buf.write(6, dst)?;
    buf.write(12, ether_type)?;
    let mut at = ETH_HDR;
    while at < len && at < ETH_HDR + 2 * VLAN_HDR {
        let tag: [u8; VLAN_HDR] = buf.read(from + at)?;
        buf.write(at, tag)?;
        at += VLAN_HDR;
    }
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
fn add_packet(mut sum: u32, buf: Buf, offset: usize, len: usize) -> Option<u32> {
    let mut i = 0;
    while i < QUOTE_MAX / 2 && 2 * i < len {
        sum += u16::from_be_bytes(buf.read(offset + 2 * i)?) as u32;
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
