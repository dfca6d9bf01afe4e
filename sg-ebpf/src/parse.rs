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
use sg_common::{MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, Outcome, ipv4_mapped};

/// The IP header fields the filter decides on. IPv4 addresses are mapped
/// into IPv6 (`::ffff:a.b.c.d`) so that one trie serves both families.
pub struct IpPacket {
    pub src: [u8; 16],
    pub dst: [u8; 16],
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

#[inline(always)]
fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Result<*const T, Outcome> {
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
    Ok(IpPacket {
        src: ipv4_mapped(ip.src_addr),
        dst: ipv4_mapped(ip.dst_addr),
    })
}

/// An extension header's first two bytes: next header and length.
#[repr(C)]
struct ExtHdr {
    next_hdr: u8,
    len: u8,
}

#[inline(always)]
fn parse_ipv6(start: usize, end: usize, offset: usize) -> Result<IpPacket, Outcome> {
    let ip: *const Ipv6Hdr = ptr_at(start, end, offset)?;
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(Outcome::DropMalformed);
    }
    let mut proto = ip.next_hdr;
    let mut offset = offset + Ipv6Hdr::LEN;
    let mut walked = 0;
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
            IPPROTO_FRAGMENT => 8,
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
    Ok(IpPacket {
        src: ip.src_addr,
        dst: ip.dst_addr,
    })
}
