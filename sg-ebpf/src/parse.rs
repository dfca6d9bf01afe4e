//! Bounds-checked header parsing shared by the XDP and TC programs.
//!
//! Every read goes through `ptr_at`, which proves to the verifier that the
//! bytes lie between `start` and `end`. A frame that ends inside a header it
//! announces is `DropMalformed`, never a verifier failure.

use core::mem::size_of;

use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};
use sg_common::{
    FAMILY_IPV4, FAMILY_IPV6, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, Outcome, ipv4_mapped,
};

/// The header fields the filter decides on. IPv4 addresses are mapped
/// into IPv6 (`::ffff:a.b.c.d`) so that one trie serves both families.
pub struct IpPacket {
    pub family: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The upper-layer protocol, after any IPv6 extension headers.
    pub protocol: u8,
    /// What rules match besides the protocol: the destination port of
    /// TCP, UDP, SCTP, DCCP and UDP-Lite, ICMP's type and code, as the
    /// bytes appear in the packet; zero for other protocols and for
    /// fragments after the first, which carry no transport header.
    pub l4: [u8; 2],
    /// Offset of the IP header in the frame.
    pub l3: usize,
    /// Offset of the transport header (after any extension headers).
    pub l4_offset: usize,
    /// Length of the IP packet as its header gives it, headers included.
    pub ip_len: usize,
    /// Not a fragment, or the first fragment of a datagram.
    pub first_fragment: bool,
    /// A fragment of a datagram, first or later.
    pub fragmented: bool,
    /// The datagram's identification, when fragmented.
    pub fragment_id: u32,
}

/// A parsed frame: an IP packet, or something else that the filter lets
/// through (ARP, LLDP, …).
pub enum Frame {
    Ip(IpPacket),
    NonIp,
}

const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MH: u8 = 135;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_DCCP: u8 = 33;
pub const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

/// The two bytes rules match on in the transport header at `offset`.
#[inline(always)]
fn l4_value(
    start: usize,
    end: usize,
    offset: usize,
    family: u8,
    protocol: u8,
) -> Result<[u8; 2], Outcome> {
    let at = match protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_DCCP | IPPROTO_SCTP | IPPROTO_UDPLITE => 2,
        IPPROTO_ICMP if family == FAMILY_IPV4 => 0,
        IPPROTO_ICMPV6 if family == FAMILY_IPV6 => 0,
        _ => return Ok([0, 0]),
    };
    let value: *const [u8; 2] = ptr_at(start, end, offset + at)?;
    Ok(unsafe { *value })
}

#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Result<*const T, Outcome> {
    if start + offset + size_of::<T>() > end {
        return Err(Outcome::DropMalformed);
    }
    Ok((start + offset) as *const T)
}

/// Parses the Ethernet, VLAN and IP headers of the frame in `[start, end)`.
#[inline(always)]
pub fn parse(start: usize, end: usize) -> Result<Frame, Outcome> {
    let eth: *const EthHdr = ptr_at(start, end, 0)?;
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut offset = EthHdr::LEN;

    let mut tags = 0;
    while ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        if tags == MAX_VLAN_TAGS {
            return Err(Outcome::DropVlanTags);
        }
        let vlan: *const VlanHdr = ptr_at(start, end, offset)?;
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        offset += size_of::<VlanHdr>();
        tags += 1;
    }

    if ether_type == u16::from_be(EtherType::Ipv4.into()) {
        parse_ipv4(start, end, offset).map(Frame::Ip)
    } else if ether_type == u16::from_be(EtherType::Ipv6.into()) {
        parse_ipv6(start, end, offset).map(Frame::Ip)
    } else {
        Ok(Frame::NonIp)
    }
}

#[inline(always)]
fn parse_ipv4(start: usize, end: usize, offset: usize) -> Result<IpPacket, Outcome> {
    let ip: *const Ipv4Hdr = ptr_at(start, end, offset)?;
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 || ip.vihl & 0x0f < 5 {
        return Err(Outcome::DropMalformed);
    }
    let first_fragment = ip.frags[0] & 0x1f == 0 && ip.frags[1] == 0;
    // More fragments follow (MF), or some came before.
    let fragmented = ip.frags[0] & 0x20 != 0 || !first_fragment;
    let l4_offset = offset + ((ip.vihl & 0x0f) as usize) * 4;
    let l4 = if first_fragment {
        l4_value(start, end, l4_offset, FAMILY_IPV4, ip.proto)?
    } else {
        [0, 0]
    };
    Ok(IpPacket {
        family: FAMILY_IPV4,
        src: ipv4_mapped(ip.src_addr),
        dst: ipv4_mapped(ip.dst_addr),
        protocol: ip.proto,
        l4,
        l3: offset,
        l4_offset,
        ip_len: u16::from_be_bytes(ip.tot_len) as usize,
        first_fragment,
        fragmented,
        fragment_id: u16::from_be_bytes(ip.id) as u32,
    })
}

/// An extension header's first two bytes: next header and length.
#[repr(C)]
struct ExtHdr {
    next_hdr: u8,
    len: u8,
}

#[inline(always)]
fn parse_ipv6(start: usize, end: usize, l3: usize) -> Result<IpPacket, Outcome> {
    let ip: *const Ipv6Hdr = ptr_at(start, end, l3)?;
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(Outcome::DropMalformed);
    }
    let mut proto = ip.next_hdr;
    let mut offset = l3 + Ipv6Hdr::LEN;
    let mut walked = 0;
    // The fragment header's bytes, zero for none. (Its contents, not its
    // offset: an offset would be a known number on each path through the
    // loop and keep the verifier from merging them.)
    let mut fragment = [0u8; 8];
    loop {
        let len = match proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH => {
                let ext: *const ExtHdr = ptr_at(start, end, offset)?;
                (unsafe { (*ext).len } as usize + 1) * 8
            }
            IPPROTO_AH => {
                let ext: *const ExtHdr = ptr_at(start, end, offset)?;
                (unsafe { (*ext).len } as usize + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                let header: *const [u8; 8] = ptr_at(start, end, offset)?;
                fragment = unsafe { *header };
                8
            }
            _ => break,
        };
        if walked == MAX_IPV6_EXT_HEADERS {
            return Err(Outcome::DropExtHeaders);
        }
        // The whole extension header must be in the frame, not only its
        // first two bytes.
        ptr_at::<u8>(start, end, offset + len - 1)?;
        let ext: *const ExtHdr = ptr_at(start, end, offset)?;
        proto = unsafe { (*ext).next_hdr };
        offset += len;
        walked += 1;
    }
    // The chain is complete: `proto` is the upper-layer protocol.
    // Fragment offset: the 13 high bits of bytes 2-3, then the M flag;
    // the identification in bytes 4-7. An atomic fragment (offset 0, no
    // M) is a whole datagram.
    let first_fragment = fragment[2] == 0 && fragment[3] & 0xf8 == 0;
    let fragmented = !first_fragment || fragment[3] & 1 != 0;
    let fragment_id = u32::from_be_bytes([fragment[4], fragment[5], fragment[6], fragment[7]]);
    let l4 = if first_fragment {
        l4_value(start, end, offset, FAMILY_IPV6, proto)?
    } else {
        [0, 0]
    };
    Ok(IpPacket {
        family: FAMILY_IPV6,
        src: ip.src_addr,
        dst: ip.dst_addr,
        protocol: proto,
        l4,
        l3,
        l4_offset: offset,
        ip_len: Ipv6Hdr::LEN + u16::from_be_bytes(ip.payload_len) as usize,
        first_fragment,
        fragmented,
        fragment_id,
    })
}
