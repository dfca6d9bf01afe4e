//! Bounds-checked header parsing shared by the XDP and TC programs.
//!
//! Every read goes through `ptr_at`, which proves to the verifier that the
//! bytes lie between `start` and `end`. A frame that ends inside a header it
//! announces is `DropMalformed`, never a verifier failure.

use core::mem::size_of;

use aya_ebpf::{macros::map, maps::PerCpuArray};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};
use sg_common::{
    FAMILY_IPV4, FAMILY_IPV6, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, Outcome, ipv4_mapped, mac_word,
    proto::{
        IPPROTO_AH, IPPROTO_DCCP, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPPROTO_MH, IPPROTO_ROUTING, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
        IPPROTO_UDPLITE, icmpv6,
    },
};

use crate::buf::Buf;

/// The header fields the filter decides on. IPv4 addresses are mapped
/// into IPv6 (`::ffff:a.b.c.d`) so that one trie serves both families.
///
/// The addresses first, in an 8-aligned struct: the compiler then copies
/// them in 8-byte words, not byte by byte (BPF has no unaligned access).
#[repr(C, align(8))]
pub struct IpPacket {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub family: u8,
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
    /// The source port of TCP, UDP, SCTP, DCCP and UDP-Lite as the bytes
    /// appear in the packet; zero otherwise.
    pub src_port: [u8; 2],
    /// The target address of an IPv6 neighbour solicitation or
    /// advertisement. (An `Option` rather than zeros: sixteen zero bytes
    /// become a call to a byte-wise `memset` in BPF.)
    pub nd_target: Option<[u8; 16]>,
    /// The link-layer address (as `mac_word`) that the options of a
    /// neighbour solicitation or advertisement give, 0 for none, or
    /// `ND_LLADDR_UNCHECKABLE`.
    pub nd_lladdr: u64,
}

/// `IpPacket::nd_lladdr` of options that cannot be checked: more than
/// `ND_OPTIONS`, malformed, or two link-layer addresses that differ. (No
/// MAC is this word: a MAC has 48 bits.)
pub const ND_LLADDR_UNCHECKABLE: u64 = u64::MAX;
/// How many options of a neighbour solicitation or advertisement are read.
const ND_OPTIONS: usize = 4;
/// ND options: source and target link-layer address.
const ND_OPT_SOURCE_LLADDR: u8 = 1;
const ND_OPT_TARGET_LLADDR: u8 = 2;

/// Where the parsed IP packet lives: this CPU's slot rather than the stack,
/// of which a program has 512 bytes for everything. One program runs at a
/// time on a CPU (softirq or bottom halves off), so the slot is the run's.
#[map(name = "SG_PACKET")]
static SG_PACKET: PerCpuArray<IpPacket> = PerCpuArray::with_max_entries(1, 0);

/// An ARP packet, as far as port security decides on it.
pub struct ArpPacket {
    /// Ethernet hardware addresses and IPv4 protocol addresses, of their
    /// lengths: the only ARP port security lets through.
    pub ethernet_ipv4: bool,
    pub operation: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: [u8; 4],
}

/// A parsed frame: an IP packet, an ARP packet, or something else that
/// the filter lets through (LLDP, …).
pub enum Frame {
    Ip(&'static IpPacket),
    Arp(ArpPacket),
    NonIp,
}

/// The Ethernet header's addresses (as `mac_word`s) and whether a VLAN tag
/// follows them.
pub struct Ethernet {
    pub dst_mac: u64,
    pub src_mac: u64,
    pub tagged: bool,
}

/// Reads the Ethernet header's addresses, for port security.
#[inline(always)]
pub fn ethernet(start: usize, end: usize) -> Result<Ethernet, Outcome> {
    let eth: *const EthHdr = ptr_at(start, end, 0)?;
    let eth = unsafe { &*eth };
    let ether_type = u16::from_be(eth.ether_type);
    Ok(Ethernet {
        dst_mac: mac_word(eth.dst_addr),
        src_mac: mac_word(eth.src_addr),
        tagged: ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD,
    })
}

const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_ARP: u16 = 0x0806;

/// The two bytes rules match on in the transport header at `offset`, and
/// the source port of the protocols with ports: both from one read, so
/// that the verifier sees one bounds check per packet.
#[inline(always)]
fn l4_value(
    start: usize,
    end: usize,
    offset: usize,
    family: u8,
    protocol: u8,
) -> Result<([u8; 2], [u8; 2]), Outcome> {
    match protocol {
        _ if has_ports(protocol) => {
            let ports: *const [u8; 4] = ptr_at(start, end, offset)?;
            let [src_high, src_low, dst_high, dst_low] = unsafe { *ports };
            Ok(([dst_high, dst_low], [src_high, src_low]))
        }
        IPPROTO_ICMP if family == FAMILY_IPV4 => icmp_value(start, end, offset),
        IPPROTO_ICMPV6 if family == FAMILY_IPV6 => icmp_value(start, end, offset),
        _ => Ok(([0, 0], [0, 0])),
    }
}

/// TCP, UDP, SCTP, DCCP and UDP-Lite: the protocols whose header starts
/// with source and destination ports.
#[inline(always)]
pub fn has_ports(protocol: u8) -> bool {
    matches!(
        protocol,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_DCCP | IPPROTO_SCTP | IPPROTO_UDPLITE
    )
}

/// ICMP's type and code; no ports.
#[inline(always)]
fn icmp_value(start: usize, end: usize, offset: usize) -> Result<([u8; 2], [u8; 2]), Outcome> {
    let value: *const [u8; 2] = ptr_at(start, end, offset)?;
    Ok((unsafe { *value }, [0, 0]))
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

    let ipv4 = ether_type == u16::from_be(EtherType::Ipv4.into());
    if ipv4 || ether_type == u16::from_be(EtherType::Ipv6.into()) {
        let packet = SG_PACKET.get_ptr_mut(0).ok_or(Outcome::DropInternal)?;
        // SAFETY: this CPU's slot, this run's alone (see `SG_PACKET`).
        let packet = unsafe { &mut *packet };
        if ipv4 {
            parse_ipv4(start, end, offset, packet)?;
        } else {
            parse_ipv6(start, end, offset, packet)?;
        }
        Ok(Frame::Ip(packet))
    } else if ether_type == ETH_P_ARP {
        parse_arp(start, end, offset).map(Frame::Arp)
    } else {
        Ok(Frame::NonIp)
    }
}

/// ARP's fixed header, with the addresses of IPv4 over Ethernet.
#[repr(C)]
struct ArpHdr {
    hardware: [u8; 2],
    protocol: [u8; 2],
    hardware_len: u8,
    protocol_len: u8,
    operation: [u8; 2],
    sender_mac: [u8; 6],
    sender_ip: [u8; 4],
    _target_mac: [u8; 6],
    _target_ip: [u8; 4],
}

#[inline(always)]
fn parse_arp(start: usize, end: usize, offset: usize) -> Result<ArpPacket, Outcome> {
    let arp: *const ArpHdr = ptr_at(start, end, offset)?;
    let arp = unsafe { &*arp };
    Ok(ArpPacket {
        ethernet_ipv4: arp.hardware == [0, 1]
            && arp.protocol == [0x08, 0x00]
            && arp.hardware_len == 6
            && arp.protocol_len == 4,
        operation: u16::from_be_bytes(arp.operation),
        sender_mac: arp.sender_mac,
        sender_ip: arp.sender_ip,
    })
}

#[inline(always)]
fn parse_ipv4(start: usize, end: usize, offset: usize, out: &mut IpPacket) -> Result<(), Outcome> {
    let ip: *const Ipv4Hdr = ptr_at(start, end, offset)?;
    let ip = unsafe { &*ip };
    let header_len = ((ip.vihl & 0x0f) as usize) * 4;
    let ip_len = u16::from_be_bytes(ip.tot_len) as usize;
    // The header must be at least 20 bytes, and the datagram at least its
    // header (so a total length under 20 is malformed too).
    if ip.vihl >> 4 != 4 || header_len < 20 || ip_len < header_len {
        return Err(Outcome::DropMalformed);
    }
    let first_fragment = ip.frags[0] & 0x1f == 0 && ip.frags[1] == 0;
    // More fragments follow (MF), or some came before.
    let fragmented = ip.frags[0] & 0x20 != 0 || !first_fragment;
    let l4_offset = offset + header_len;
    let (l4, src_port) = if first_fragment {
        l4_value(start, end, l4_offset, FAMILY_IPV4, ip.proto)?
    } else {
        ([0, 0], [0, 0])
    };
    *out = IpPacket {
        family: FAMILY_IPV4,
        src: ipv4_mapped(ip.src_addr),
        dst: ipv4_mapped(ip.dst_addr),
        protocol: ip.proto,
        l4,
        l3: offset,
        l4_offset,
        ip_len,
        first_fragment,
        fragmented,
        fragment_id: u16::from_be_bytes(ip.id) as u32,
        src_port,
        nd_target: None,
        nd_lladdr: 0,
    };
    Ok(())
}

/// An extension header's first two bytes: next header and length.
#[repr(C)]
struct ExtHdr {
    next_hdr: u8,
    len: u8,
}

#[inline(always)]
fn parse_ipv6(start: usize, end: usize, l3: usize, out: &mut IpPacket) -> Result<(), Outcome> {
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
    let (l4, src_port) = if first_fragment {
        l4_value(start, end, offset, FAMILY_IPV6, proto)?
    } else {
        ([0, 0], [0, 0])
    };
    let nd_target = if proto == IPPROTO_ICMPV6
        && (l4[0] == icmpv6::NEIGHBOUR_SOLICIT || l4[0] == icmpv6::NEIGHBOUR_ADVERT)
    {
        // After type, code, checksum and 4 bytes of flags.
        let target: *const [u8; 16] = ptr_at(start, end, offset + 8)?;
        Some(unsafe { *target })
    } else {
        None
    };
    let nd_lladdr = if nd_target.is_some() {
        let payload_end = l3 + Ipv6Hdr::LEN + u16::from_be_bytes(ip.payload_len) as usize;
        nd_lladdr(start, end, offset + 24, payload_end)
    } else {
        0
    };
    *out = IpPacket {
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
        src_port,
        nd_target,
        nd_lladdr,
    };
    Ok(())
}

/// The link-layer address in the options from `at` to `until` (the IP
/// payload's end) of a neighbour solicitation or advertisement in the
/// frame `[start, end)` (see `IpPacket::nd_lladdr`).
#[inline(always)]
fn nd_lladdr(start: usize, end: usize, mut at: usize, until: usize) -> u64 {
    let Some(buf) = Buf::of(start, end) else {
        return ND_LLADDR_UNCHECKABLE;
    };
    let mut found = 0;
    for _ in 0..ND_OPTIONS {
        if at >= until {
            return found;
        }
        let Some([kind, units]) = buf.read::<2>(at) else {
            return ND_LLADDR_UNCHECKABLE;
        };
        if units == 0 {
            return ND_LLADDR_UNCHECKABLE;
        }
        if kind == ND_OPT_SOURCE_LLADDR || kind == ND_OPT_TARGET_LLADDR {
            // An Ethernet address takes one unit of 8 bytes.
            let Some(mac) = buf.read::<6>(at + 2) else {
                return ND_LLADDR_UNCHECKABLE;
            };
            let mac = mac_word(mac);
            if units != 1 || (found != 0 && found != mac) {
                return ND_LLADDR_UNCHECKABLE;
            }
            found = mac;
        }
        at += units as usize * 8;
    }
    if at < until {
        ND_LLADDR_UNCHECKABLE
    } else {
        found
    }
}
