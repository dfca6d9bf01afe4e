//! Port security: layer-2 and source-address anti-spoofing of a port.
//!
//! From the workload, in this order (the first that fails decides):
//!
//! 1. a VLAN-tagged frame needs `PORTSEC_ALLOW_VLAN` (`drop-vlan-tagged`);
//! 2. the source MAC is the port's or an allowed address pair's
//!    (`drop-spoofed-mac`);
//! 3. ARP: sender MAC = source MAC, sender address owned with that MAC, or
//!    0.0.0.0 in a request (an RFC 5227 probe) (`drop-arp-spoof`);
//!    IPv4: no DHCP server (source port 67, `drop-dhcp-server`); the source
//!    owned with the source MAC, or 0.0.0.0 for a DHCP client's UDP 68→67
//!    (`drop-spoofed-ipv4`);
//!    IPv6: no router advertisement or redirect (`drop-router-advert`), no
//!    DHCPv6 server (source port 547, `drop-dhcp-server`); the source owned
//!    with the source MAC, or `::` for a router or neighbour solicitation or
//!    an MLD report (`drop-spoofed-ipv6`); the target of a neighbour advertisement,
//!    and of a solicitation from `::` (duplicate address detection), owned
//!    with the source MAC, and the link-layer address option of either, if
//!    any, the source MAC (`drop-nd-spoof`; up to four options are read,
//!    more, a malformed one or two addresses that differ are a drop too);
//! 4. a broadcast or multicast destination only for ARP, the DHCP client
//!    (UDP 68→67), neighbour discovery and MLD reports (ICMPv6 131, 132,
//!    133, 135, 136, 143), the DHCPv6 client (UDP 546→547), or any with
//!    `PORTSEC_ALLOW_MULTICAST` (`drop-multicast`).
//!
//! Toward the workload: a unicast destination MAC is the port's or an
//! allowed address pair's (`drop-foreign-mac`), so a promiscuous workload
//! sees none of its neighbours' traffic.
//!
//! Owned addresses are one LPM trie lookup per address checked: the value
//! lists the MACs that may use the longest configured prefix that holds it.

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, lpm_trie::Key},
};
use sg_common::{
    BLOCK_KEY_SLOT_BITS, BlockKey, Direction, FAMILY_IPV4, MAX_OWNED_PREFIXES, MAX_PORTS, Outcome,
    OwnedMacs, PORTSEC_ALLOW_MULTICAST, PORTSEC_ALLOW_VLAN, PORTSEC_ENABLED, PortSecurityConfig,
    ipv4_mapped, mac_word,
    proto::{
        IPPROTO_ICMPV6, IPPROTO_UDP, dhcp,
        icmpv6::{
            MLD_DONE, MLD_REPORT, MLD2_REPORT, NEIGHBOUR_ADVERT, NEIGHBOUR_SOLICIT, REDIRECT,
            ROUTER_ADVERT, ROUTER_SOLICIT,
        },
    },
};

use crate::parse::{ArpPacket, Ethernet, Frame, IpPacket, ethernet};

/// Slot → the port's MACs and port-security flags.
#[map(name = "SG_PORT_SECURITY")]
static SG_PORT_SECURITY: Array<PortSecurityConfig> = Array::pinned(MAX_PORTS, 0);

/// (slot, owned prefix) → the MACs that may send from it.
#[map(name = "SG_OWNED")]
static SG_OWNED: LpmTrie<BlockKey, OwnedMacs> = LpmTrie::pinned(MAX_OWNED_PREFIXES, 0);

const ARP_REQUEST: u16 = 1;

/// Applies the port's security to a parsed frame; nothing when the port
/// has it off.
#[inline(always)]
pub fn check(
    slot: u32,
    direction: Direction,
    start: usize,
    end: usize,
    frame: &Frame,
) -> Result<(), Outcome> {
    let Some(config) = SG_PORT_SECURITY.get(slot) else {
        return Ok(());
    };
    if config.flags & PORTSEC_ENABLED == 0 {
        return Ok(());
    }
    let eth = ethernet(start, end)?;
    match direction {
        Direction::Egress => from_workload(slot, config, &eth, frame),
        Direction::Ingress if is_group(eth.dst_mac) || has_mac(&config.macs, eth.dst_mac) => Ok(()),
        Direction::Ingress => Err(Outcome::DropForeignMac),
    }
}

#[inline(always)]
fn from_workload(
    slot: u32,
    config: &PortSecurityConfig,
    eth: &Ethernet,
    frame: &Frame,
) -> Result<(), Outcome> {
    if eth.tagged && config.flags & PORTSEC_ALLOW_VLAN == 0 {
        return Err(Outcome::DropVlanTagged);
    }
    let src_mac = eth.src_mac;
    if !has_mac(&config.macs, src_mac) {
        return Err(Outcome::DropSpoofedMac);
    }
    let needs_group = match frame {
        Frame::Arp(arp) => {
            check_arp(slot, arp, src_mac)?;
            true
        }
        Frame::NonIp => false,
        Frame::Ip(ip) if ip.family == FAMILY_IPV4 => check_ipv4(slot, ip, src_mac)?,
        Frame::Ip(ip) => check_ipv6(slot, ip, src_mac)?,
    };
    if is_group(eth.dst_mac) && !needs_group && config.flags & PORTSEC_ALLOW_MULTICAST == 0 {
        return Err(Outcome::DropMulticast);
    }
    Ok(())
}

#[inline(always)]
fn check_arp(slot: u32, arp: &ArpPacket, src_mac: u64) -> Result<(), Outcome> {
    let probe = arp.sender_ip == [0; 4] && arp.operation == ARP_REQUEST;
    if arp.ethernet_ipv4
        && mac_word(arp.sender_mac) == src_mac
        && (probe || owns(slot, ipv4_mapped(arp.sender_ip), src_mac))
    {
        Ok(())
    } else {
        Err(Outcome::DropArpSpoof)
    }
}

/// The UDP source and destination ports of a packet that has them.
#[inline(always)]
fn udp_ports(ip: &IpPacket) -> Option<(u16, u16)> {
    (ip.protocol == IPPROTO_UDP)
        .then(|| (u16::from_be_bytes(ip.src_port), u16::from_be_bytes(ip.l4)))
}

/// Checks an IPv4 packet from the workload; whether it may go to a
/// broadcast or multicast MAC.
#[inline(always)]
fn check_ipv4(slot: u32, ip: &IpPacket, src_mac: u64) -> Result<bool, Outcome> {
    let ports = udp_ports(ip);
    if matches!(ports, Some((dhcp::SERVER, _))) {
        return Err(Outcome::DropDhcpServer);
    }
    let dhcp_client = ports == Some((dhcp::CLIENT, dhcp::SERVER));
    // The unspecified address is looked at only when the source is not
    // owned: the common case compares no address.
    let allowed = owns(slot, ip.src, src_mac) || (dhcp_client && ip.src == ipv4_mapped([0; 4]));
    if !allowed {
        return Err(Outcome::DropSpoofedIpv4);
    }
    Ok(dhcp_client)
}

/// Checks an IPv6 packet from the workload; whether it may go to a
/// multicast MAC.
#[inline(always)]
fn check_ipv6(slot: u32, ip: &IpPacket, src_mac: u64) -> Result<bool, Outcome> {
    // Zero in fragments after the first: none of the types below.
    let icmp_type = if ip.protocol == IPPROTO_ICMPV6 {
        ip.l4[0]
    } else {
        0
    };
    if icmp_type == ROUTER_ADVERT || icmp_type == REDIRECT {
        return Err(Outcome::DropRouterAdvert);
    }
    let ports = udp_ports(ip);
    if matches!(ports, Some((dhcp::V6_SERVER, _))) {
        return Err(Outcome::DropDhcpServer);
    }
    // As for IPv4, `::` is looked at only when the source is not owned;
    // past this check, a source not owned is `::`.
    let from_unspecified = !owns(slot, ip.src, src_mac);
    if from_unspecified
        && !(matches!(
            icmp_type,
            ROUTER_SOLICIT | NEIGHBOUR_SOLICIT | MLD_REPORT | MLD2_REPORT
        ) && ip.src == [0; 16])
    {
        return Err(Outcome::DropSpoofedIpv6);
    }
    // An advertisement claims its target; so does a solicitation for
    // duplicate address detection.
    if let Some(target) = ip.nd_target
        && (icmp_type == NEIGHBOUR_ADVERT || from_unspecified)
        && !owns(slot, target, src_mac)
    {
        return Err(Outcome::DropNdSpoof);
    }
    // And its link-layer address option is the sender's MAC, or neighbours
    // would send to another's. (Options it cannot check count as another.)
    if ip.nd_lladdr != 0 && ip.nd_lladdr != src_mac {
        return Err(Outcome::DropNdSpoof);
    }
    Ok(matches!(
        icmp_type,
        MLD_REPORT | MLD_DONE | ROUTER_SOLICIT | NEIGHBOUR_SOLICIT | NEIGHBOUR_ADVERT | MLD2_REPORT
    ) || ports == Some((dhcp::V6_CLIENT, dhcp::V6_SERVER)))
}

/// Whether the port owns `addr` (IPv6, or IPv4-mapped) for use with `mac`.
#[inline(always)]
fn owns(slot: u32, addr: [u8; 16], mac: u64) -> bool {
    let key = Key::new(BLOCK_KEY_SLOT_BITS + 128, BlockKey { slot, addr });
    SG_OWNED
        .get(&key)
        .is_some_and(|owned| has_mac(&owned.macs, mac))
}

#[inline(always)]
fn has_mac<const N: usize>(macs: &[u64; N], mac: u64) -> bool {
    macs.contains(&mac)
}

/// The group bit of the first byte: broadcast and multicast.
#[inline(always)]
fn is_group(mac: u64) -> bool {
    mac & 1 != 0
}
