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

/// Where offsets pass through on their way to a pointer: this CPU's cell,
/// written and read back, so that neither the compiler nor the verifier
/// knows the number that comes out (see `Buf::at`).
#[map(name = "SG_REPLY_CELL")]
static CELL: PerCpuArray<usize> = PerCpuArray::with_max_entries(1, 0);

/// Where the IP header starts, at most after two VLAN tags.
const MAX_L3: usize = ETH_HDR + 2 * VLAN_HDR;
/// Where a transport header replied to may start.
const MAX_L4: usize = 512;
/// The largest offset the reply code reaches.
const MAX_OFFSET: usize = 1024;

/// Offsets in the frame of the IP and transport headers.
struct Offsets {
    l3: usize,
    l4: usize,
}

/// The frame's bytes, `[start, end)`, and the cell offsets pass through.
/// Also how the connection tracker reads headers at offsets the parser
/// found.
#[derive(Clone, Copy)]
pub(crate) struct Buf {
    start: usize,
    end: usize,
    cell: *mut usize,
}

impl Buf {
    fn new<F: Resizable>(frame: &F, cell: *mut usize) -> Buf {
        let (start, end) = frame.bounds();
        Buf { start, end, cell }
    }

    /// The frame `[start, end)`, with this CPU's cell.
    #[inline(always)]
    pub(crate) fn of(start: usize, end: usize) -> Option<Buf> {
        Some(Buf {
            start,
            end,
            cell: CELL.get_ptr_mut(0)?,
        })
    }

    /// The offset as a number no one knows, but for its bounds.
    #[inline(always)]
    pub(crate) fn launder(&self, offset: usize) -> Option<usize> {
        // SAFETY: this CPU's cell; one program runs at a time on a CPU.
        let offset = unsafe {
            self.cell.write_volatile(offset);
            self.cell.read_volatile()
        };
        (offset <= MAX_OFFSET).then_some(offset)
    }

    /// `size_of::<T>()` bytes at `offset`, if the frame has them.
    ///
    /// The offsets here differ from packet to packet, and the verifier
    /// refuses to go backwards from a pointer made with such an offset,
    /// while the compiler gladly makes one pointer out of another and
    /// reaches it backwards. A laundered offset makes each pointer from
    /// the frame's start, and keeps no stack.
    #[inline(always)]
    pub(crate) fn at<T>(&self, offset: usize) -> Option<*mut T> {
        let at = self.start + self.launder(offset)?;
        (at + core::mem::size_of::<T>() <= self.end).then_some(at as *mut T)
    }

    /// Copies `bytes` to `offset`. (Not `write`: a value would be loaded
    /// early and kept on the stack.)
    #[inline(always)]
    fn copy<const N: usize>(&self, offset: usize, bytes: &[u8; N]) -> Option<()> {
        let to = self.at::<[u8; N]>(offset)?;
        // SAFETY: in bounds, checked by `at`; the program owns the frame.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), to as *mut u8, N) };
        Some(())
    }

    #[inline(always)]
    pub(crate) fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // SAFETY: in bounds, checked by `at`.
        Some(unsafe { self.at::<[u8; N]>(offset)?.read_unaligned() })
    }

    #[inline(always)]
    fn write<const N: usize>(&self, offset: usize, bytes: [u8; N]) -> Option<()> {
        // SAFETY: in bounds, checked by `at`; the program owns the frame.
        unsafe { self.at::<[u8; N]>(offset)?.write_unaligned(bytes) };
        Some(())
    }
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
    let cell = CELL.get_ptr_mut(0)?;
    let buf = Buf::new(frame, cell);
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
        prohibited(frame, cell, ip, &at)
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
    if flags & TCP_RST != 0 {
        return None;
    }
    let headers = at.l4 - at.l3 + (offset >> 4) as usize * 4;
    let mut segment = ip.ip_len.saturating_sub(headers) as u32;
    segment += (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
    // RFC 9293 3.10.7.1: an acceptable reset for what the sender has
    // sent.
    let (seq, ack, flags) = if flags & TCP_ACK != 0 {
        (their_ack, [0; 4], TCP_RST)
    } else {
        (
            [0; 4],
            u32::from_be_bytes(their_seq)
                .wrapping_add(segment)
                .to_be_bytes(),
            TCP_RST | TCP_ACK,
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
fn prohibited<F: Resizable>(
    frame: &mut F,
    cell: *mut usize,
    ip: &IpPacket,
    at: &Offsets,
) -> Option<()> {
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
    let buf = Buf::new(frame, cell);
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
