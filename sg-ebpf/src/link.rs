//! Link services: what a workload needs of its link, which passes whatever
//! the rules say. IPv6 neighbour discovery and MLD, as ARP does for IPv4;
//! and DHCP, as Neutron lets it through: the workload's client requests,
//! and the replies toward it of a server its policy accepts. (Port
//! security, before, keeps the workload from answering as a DHCP server
//! or sending router advertisements.)

use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, lpm_trie::Key},
};
use sg_common::{
    DHCP_SERVER_KEY_POLICY_BITS, DhcpServerKey, Direction, FAMILY_IPV4, FAMILY_IPV6,
    MAX_DHCP_SERVER_ENTRIES, Outcome,
    proto::{IPPROTO_ICMPV6, IPPROTO_UDP, dhcp, icmpv6},
};

use crate::parse::IpPacket;

/// (policy, server prefix) → 1: the DHCP servers a policy accepts (`::/0`
/// for any), written with the policy's other maps.
#[map(name = "SG_DHCP_SERVERS")]
static SG_DHCP_SERVERS: LpmTrie<DhcpServerKey, u32> = LpmTrie::pinned(MAX_DHCP_SERVER_ENTRIES, 0);

/// IPv6 neighbour discovery and MLD, which no rule applies to (as ARP).
#[inline(always)]
pub fn is_neighbour_discovery(ip: &IpPacket) -> bool {
    let kind = ip.l4[0];
    ip.family == FAMILY_IPV6
        && ip.protocol == IPPROTO_ICMPV6
        && icmpv6::is_neighbour_discovery(kind)
}

/// DHCP and DHCPv6 under `policy`: the workload's client request (UDP
/// 68→67, 546→547) is `pass-dhcp`, and so is a server's reply toward it
/// (67→68, 547→546) from a server the policy accepts; from another it is
/// `drop-dhcp-server`. `None` for anything else, which the policy decides.
/// (A later fragment has no ports: it is not one of these.)
#[inline(always)]
pub fn dhcp(policy: u32, direction: Direction, ip: &IpPacket) -> Option<Outcome> {
    if ip.protocol != IPPROTO_UDP {
        return None;
    }
    let (client, server) = if ip.family == FAMILY_IPV4 {
        (dhcp::CLIENT, dhcp::SERVER)
    } else {
        (dhcp::V6_CLIENT, dhcp::V6_SERVER)
    };
    let ports = (u16::from_be_bytes(ip.src_port), u16::from_be_bytes(ip.l4));
    match direction {
        Direction::Egress if ports == (client, server) => Some(Outcome::PassDhcp),
        Direction::Ingress if ports == (server, client) => {
            let key = Key::new(
                DHCP_SERVER_KEY_POLICY_BITS + 128,
                DhcpServerKey {
                    policy,
                    addr: ip.src,
                },
            );
            Some(match SG_DHCP_SERVERS.get(&key) {
                Some(_) => Outcome::PassDhcp,
                None => Outcome::DropDhcpServer,
            })
        }
        _ => None,
    }
}
