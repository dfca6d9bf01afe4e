//! Port security. Through BPF_PROG_TEST_RUN on crafted frames: every drop
//! reason and its legitimate counterpart, allowed address pairs, the VLAN
//! and multicast switches, port security off, and reconfiguration. With
//! real traffic: frames a workload sends through a veth and a tap, what of
//! them reaches the host and how `sg-ctl stats` counts the rest; and two
//! workloads on a bridge, one of them promiscuous, that see nothing of each
//! other's traffic.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::Value;
use sg_common::{Direction, Outcome};
use sg_core::{
    model::MacAddr,
    port_security::{PortSecurity, link_local},
};
use sg_ctl::{
    datapath::{Forward, WithoutPolicy},
    frame::{Arp, Packet, Transport},
};
use sg_tests::{
    FrameFile, HOST_V4, HOST_V6, Netns, PORT, TapPort, TestPins, TestPort, VethPort, WORKLOAD_V4,
    WORKLOAD_V6, addr, mac_of, require_root,
};

const SLOT: u32 = 5;
const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x02];
const PAIR_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x05];
const OTHER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x09];
const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
const BROADCAST: [u8; 6] = [0xff; 6];
const OWN: &str = "198.18.0.2";
const OWN6: &str = "2001:db8::2";
const PEER: &str = "198.18.1.1";
const PEER6: &str = "2001:db8:1::1";

fn security() -> PortSecurity {
    PortSecurity {
        enabled: true,
        mac: MacAddr(MAC),
        ips: vec![addr(OWN), addr(OWN6)],
        allowed_address_pairs: vec![
            "198.18.8.0/24,02:00:5e:10:00:05".parse().unwrap(),
            "198.18.0.100".parse().unwrap(),
        ],
        ..PortSecurity::OFF
    }
}

/// One port's programs on test pins with `security` installed.
struct Port(TestPort);

impl Port {
    fn new(security: &PortSecurity) -> Port {
        let port = Port(TestPort::new(SLOT, WithoutPolicy::Pass).expect("loading the programs"));
        port.install(security);
        port
    }

    fn install(&self, security: &PortSecurity) {
        self.0
            .datapath
            .install_port_security(SLOT, security)
            .unwrap();
    }

    /// Runs the frame and checks the verdict and the counter it landed in.
    fn check(&self, what: &str, direction: Direction, frame: &[u8], outcome: Outcome) {
        let want = if outcome.is_drop() {
            Forward::Drop
        } else {
            Forward::Pass
        };
        eprintln!("{what}");
        self.0.check(direction, frame, want, outcome);
    }

    fn sent(&self, what: &str, frame: &[u8], outcome: Outcome) {
        self.check(what, Direction::Egress, frame, outcome);
    }
}

/// A frame between two MACs and two addresses.
fn frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: &str,
    dst: &str,
    transport: Transport,
) -> Vec<u8> {
    let mut packet = Packet::udp(addr(src), addr(dst), 0, 0);
    packet.src_mac = src_mac;
    packet.dst_mac = dst_mac;
    packet.transport = transport;
    packet.frame().unwrap()
}

fn udp(src_port: u16, dst_port: u16) -> Transport {
    Transport::Udp { src_port, dst_port }
}

fn icmpv6(type_: u8) -> Transport {
    Transport::Icmp { type_, code: 0 }
}

fn nd(type_: u8, target: &str) -> Transport {
    Transport::NeighbourDiscovery {
        type_,
        target: target.parse().unwrap(),
    }
}

/// Where the link-layer address option of `nd`'s untagged frame starts:
/// after the Ethernet and IPv6 headers, ICMPv6's 8 bytes and the target.
const ND_OPTION: usize = 14 + 40 + 8 + 16;

/// An `nd` frame whose link-layer address option says `mac` (the
/// checksum left as it was: nothing on the way checks it).
fn nd_claiming(mut frame: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
    frame[ND_OPTION + 2..ND_OPTION + 8].copy_from_slice(&mac);
    frame
}

fn own_link_local() -> String {
    link_local(MacAddr(MAC)).to_string()
}

/// The Ethernet multicast address of an IPv6 multicast group.
fn multicast_mac(group: &str) -> [u8; 6] {
    let octets = group.parse::<Ipv6Addr>().unwrap().octets();
    [0x33, 0x33, octets[12], octets[13], octets[14], octets[15]]
}

fn arp(src_mac: [u8; 6], operation: u16, sender_mac: [u8; 6], sender_ip: &str) -> Vec<u8> {
    let IpAddr::V4(sender_ip) = addr(sender_ip) else {
        panic!("an IPv4 sender");
    };
    Arp {
        src_mac,
        sender_mac,
        operation,
        sender_ip,
        ..Arp::request(src_mac, sender_ip, PEER.parse().unwrap())
    }
    .frame()
    .unwrap()
}

const ECHO: Transport = Transport::Icmp { type_: 8, code: 0 };
const ECHO6: u8 = 128;
const MLD_QUERY: u8 = 130;
const MLD2_REPORT: u8 = 143;
const ROUTER_SOLICIT: u8 = 133;
const ROUTER_ADVERT: u8 = 134;
const NEIGHBOUR_SOLICIT: u8 = 135;
const NEIGHBOUR_ADVERT: u8 = 136;
const REDIRECT: u8 = 137;

#[test]
fn what_a_workload_needs_passes() {
    require_root!();
    let port = Port::new(&security());
    let ll = own_link_local();
    let cases: Vec<(&str, Vec<u8>, Outcome)> = vec![
        (
            "own IPv4",
            frame(MAC, ROUTER_MAC, OWN, PEER, udp(5000, 53)),
            Outcome::Pass,
        ),
        (
            "own IPv6",
            frame(MAC, ROUTER_MAC, OWN6, PEER6, udp(5000, 53)),
            Outcome::Pass,
        ),
        (
            "own link-local address",
            frame(MAC, ROUTER_MAC, &ll, "fe80::1", icmpv6(ECHO6)),
            Outcome::Pass,
        ),
        (
            "ARP request",
            arp(MAC, Arp::REQUEST, MAC, OWN),
            Outcome::PassNonIp,
        ),
        (
            "ARP reply",
            arp(MAC, Arp::REPLY, MAC, OWN),
            Outcome::PassNonIp,
        ),
        (
            "ARP probe",
            arp(MAC, Arp::REQUEST, MAC, "0.0.0.0"),
            Outcome::PassNonIp,
        ),
        (
            "DHCP discover",
            frame(MAC, BROADCAST, "0.0.0.0", "255.255.255.255", udp(68, 67)),
            Outcome::Pass,
        ),
        (
            "DHCP renewal",
            frame(MAC, ROUTER_MAC, OWN, PEER, udp(68, 67)),
            Outcome::Pass,
        ),
        (
            "DHCPv6 solicit",
            frame(
                MAC,
                multicast_mac("ff02::1:2"),
                &ll,
                "ff02::1:2",
                udp(546, 547),
            ),
            Outcome::Pass,
        ),
        (
            "duplicate address detection",
            frame(
                MAC,
                multicast_mac("ff02::1:ff00:2"),
                "::",
                "ff02::1:ff00:2",
                nd(NEIGHBOUR_SOLICIT, OWN6),
            ),
            Outcome::PassNeighbourDiscovery,
        ),
        (
            "neighbour solicitation for a peer",
            frame(
                MAC,
                multicast_mac("ff02::1:ff00:1"),
                OWN6,
                "ff02::1:ff00:1",
                nd(NEIGHBOUR_SOLICIT, PEER6),
            ),
            Outcome::PassNeighbourDiscovery,
        ),
        (
            "neighbour advertisement for itself",
            frame(MAC, ROUTER_MAC, OWN6, PEER6, nd(NEIGHBOUR_ADVERT, OWN6)),
            Outcome::PassNeighbourDiscovery,
        ),
        (
            "unsolicited neighbour advertisement",
            frame(
                MAC,
                multicast_mac("ff02::1"),
                &ll,
                "ff02::1",
                nd(NEIGHBOUR_ADVERT, &ll),
            ),
            Outcome::PassNeighbourDiscovery,
        ),
        (
            "router solicitation",
            frame(
                MAC,
                multicast_mac("ff02::2"),
                &ll,
                "ff02::2",
                icmpv6(ROUTER_SOLICIT),
            ),
            Outcome::PassNeighbourDiscovery,
        ),
        (
            "router solicitation before an address is ready",
            frame(
                MAC,
                multicast_mac("ff02::2"),
                "::",
                "ff02::2",
                icmpv6(ROUTER_SOLICIT),
            ),
            Outcome::PassNeighbourDiscovery,
        ),
        (
            "MLD report while the address is tentative",
            frame(
                MAC,
                multicast_mac("ff02::16"),
                "::",
                "ff02::16",
                icmpv6(MLD2_REPORT),
            ),
            Outcome::PassNeighbourDiscovery,
        ),
        (
            "an allowed pair's prefix with its MAC",
            frame(PAIR_MAC, ROUTER_MAC, "198.18.8.7", PEER, ECHO),
            Outcome::Pass,
        ),
        (
            "an allowed pair with the port's MAC",
            frame(MAC, ROUTER_MAC, "198.18.0.100", PEER, ECHO),
            Outcome::Pass,
        ),
        (
            "ARP for an allowed pair with its MAC",
            arp(PAIR_MAC, Arp::REPLY, PAIR_MAC, "198.18.8.7"),
            Outcome::PassNonIp,
        ),
    ];
    for (what, frame, outcome) in cases {
        port.sent(what, &frame, outcome);
    }
}

#[test]
fn each_spoof_is_dropped_and_counted_by_its_reason() {
    require_root!();
    let port = Port::new(&security());
    let ll = own_link_local();
    let other_ll = link_local(MacAddr(OTHER_MAC)).to_string();
    let mut tagged = Packet::udp(addr(OWN), addr(PEER), 5000, 53);
    tagged.src_mac = MAC;
    tagged.vlans = vec![10];
    let mut lldp = [&[0x01, 0x80, 0xc2, 0, 0, 0x0e][..], &MAC, &[0x88, 0xcc]].concat();
    lldp.resize(60, 0);
    let cases: Vec<(&str, Vec<u8>, Outcome)> = vec![
        (
            "another MAC",
            frame(OTHER_MAC, ROUTER_MAC, OWN, PEER, ECHO),
            Outcome::DropSpoofedMac,
        ),
        (
            "ARP from another MAC",
            arp(OTHER_MAC, Arp::REQUEST, OTHER_MAC, OWN),
            Outcome::DropSpoofedMac,
        ),
        (
            "a broadcast MAC as source",
            frame(BROADCAST, ROUTER_MAC, OWN, PEER, ECHO),
            Outcome::DropSpoofedMac,
        ),
        (
            "another IPv4 address",
            frame(MAC, ROUTER_MAC, "198.18.0.3", PEER, ECHO),
            Outcome::DropSpoofedIpv4,
        ),
        (
            "0.0.0.0 that is no DHCP client",
            frame(MAC, ROUTER_MAC, "0.0.0.0", PEER, udp(5000, 53)),
            Outcome::DropSpoofedIpv4,
        ),
        (
            "a pair's prefix with the port's MAC",
            frame(MAC, ROUTER_MAC, "198.18.8.7", PEER, ECHO),
            Outcome::DropSpoofedIpv4,
        ),
        (
            "a fixed IP with the pair's MAC",
            frame(PAIR_MAC, ROUTER_MAC, OWN, PEER, ECHO),
            Outcome::DropSpoofedIpv4,
        ),
        (
            "another IPv6 address",
            frame(MAC, ROUTER_MAC, "2001:db8::3", PEER6, icmpv6(ECHO6)),
            Outcome::DropSpoofedIpv6,
        ),
        (
            "another MAC's link-local address",
            frame(MAC, ROUTER_MAC, &other_ll, "fe80::1", icmpv6(ECHO6)),
            Outcome::DropSpoofedIpv6,
        ),
        (
            ":: that is no neighbour discovery",
            frame(MAC, ROUTER_MAC, "::", PEER6, udp(5000, 53)),
            Outcome::DropSpoofedIpv6,
        ),
        (
            "ARP reply for an address not owned",
            arp(MAC, Arp::REPLY, MAC, "198.18.0.1"),
            Outcome::DropArpSpoof,
        ),
        (
            "gratuitous ARP for an address not owned",
            arp(MAC, Arp::REQUEST, MAC, "198.18.0.1"),
            Outcome::DropArpSpoof,
        ),
        (
            "ARP with another sender MAC",
            arp(MAC, Arp::REPLY, OTHER_MAC, OWN),
            Outcome::DropArpSpoof,
        ),
        (
            "ARP reply from 0.0.0.0",
            arp(MAC, Arp::REPLY, MAC, "0.0.0.0"),
            Outcome::DropArpSpoof,
        ),
        (
            "DHCP offer",
            frame(MAC, BROADCAST, OWN, "255.255.255.255", udp(67, 68)),
            Outcome::DropDhcpServer,
        ),
        (
            "DHCPv6 advertise",
            frame(MAC, ROUTER_MAC, &ll, "fe80::1", udp(547, 546)),
            Outcome::DropDhcpServer,
        ),
        (
            "router advertisement",
            frame(
                MAC,
                multicast_mac("ff02::1"),
                &ll,
                "ff02::1",
                icmpv6(ROUTER_ADVERT),
            ),
            Outcome::DropRouterAdvert,
        ),
        (
            "redirect",
            frame(MAC, ROUTER_MAC, &ll, "fe80::1", icmpv6(REDIRECT)),
            Outcome::DropRouterAdvert,
        ),
        (
            "neighbour advertisement for another address",
            frame(
                MAC,
                ROUTER_MAC,
                OWN6,
                PEER6,
                nd(NEIGHBOUR_ADVERT, "2001:db8::1"),
            ),
            Outcome::DropNdSpoof,
        ),
        (
            "neighbour advertisement giving another's MAC as its own",
            nd_claiming(
                frame(MAC, ROUTER_MAC, OWN6, PEER6, nd(NEIGHBOUR_ADVERT, OWN6)),
                OTHER_MAC,
            ),
            Outcome::DropNdSpoof,
        ),
        (
            "neighbour solicitation giving another's MAC as its own",
            nd_claiming(
                frame(
                    MAC,
                    multicast_mac("ff02::1:ff00:1"),
                    OWN6,
                    "ff02::1:ff00:1",
                    nd(NEIGHBOUR_SOLICIT, PEER6),
                ),
                OTHER_MAC,
            ),
            Outcome::DropNdSpoof,
        ),
        (
            "neighbour advertisement with an option of no length",
            {
                let mut frame = frame(MAC, ROUTER_MAC, OWN6, PEER6, nd(NEIGHBOUR_ADVERT, OWN6));
                frame[ND_OPTION + 1] = 0;
                frame
            },
            Outcome::DropNdSpoof,
        ),
        (
            "duplicate address detection of another address",
            frame(
                MAC,
                multicast_mac("ff02::1:ff00:1"),
                "::",
                "ff02::1:ff00:1",
                nd(NEIGHBOUR_SOLICIT, "2001:db8::1"),
            ),
            Outcome::DropNdSpoof,
        ),
        (
            "IPv4 broadcast",
            frame(MAC, BROADCAST, OWN, "198.18.0.255", udp(5000, 5000)),
            Outcome::DropMulticast,
        ),
        (
            "IPv4 multicast (mDNS)",
            frame(
                MAC,
                [0x01, 0, 0x5e, 0, 0, 0xfb],
                OWN,
                "224.0.0.251",
                udp(5353, 5353),
            ),
            Outcome::DropMulticast,
        ),
        (
            "IPv6 multicast (mDNS)",
            frame(
                MAC,
                multicast_mac("ff02::fb"),
                &ll,
                "ff02::fb",
                udp(5353, 5353),
            ),
            Outcome::DropMulticast,
        ),
        (
            "MLD query",
            frame(
                MAC,
                multicast_mac("ff02::1"),
                &ll,
                "ff02::1",
                icmpv6(MLD_QUERY),
            ),
            Outcome::DropMulticast,
        ),
        ("LLDP", lldp, Outcome::DropMulticast),
        (
            "802.1Q tagged",
            tagged.frame().unwrap(),
            Outcome::DropVlanTagged,
        ),
    ];
    for (what, frame, outcome) in cases {
        port.sent(what, &frame, outcome);
    }
}

#[test]
fn toward_the_workload_only_its_macs_and_group_addresses_pass() {
    require_root!();
    let port = Port::new(&security());
    let ingress = |what, dst_mac, outcome| {
        let frame = frame(ROUTER_MAC, dst_mac, PEER, OWN, ECHO);
        port.check(what, Direction::Ingress, &frame, outcome);
    };
    ingress("to its MAC", MAC, Outcome::Pass);
    ingress("to its pair's MAC", PAIR_MAC, Outcome::Pass);
    ingress("broadcast", BROADCAST, Outcome::Pass);
    ingress("multicast", [0x01, 0, 0x5e, 0, 0, 0xfb], Outcome::Pass);
    ingress("to a neighbour's MAC", OTHER_MAC, Outcome::DropForeignMac);
    // The workload's own traffic is not checked on its way in.
    let frame = frame(ROUTER_MAC, MAC, PEER, "198.18.0.3", ECHO);
    port.check(
        "to another address",
        Direction::Ingress,
        &frame,
        Outcome::Pass,
    );
}

#[test]
fn vlan_and_multicast_switches_let_them_through() {
    require_root!();
    let mut open = security();
    open.allow_vlan = true;
    open.allow_multicast = true;
    let port = Port::new(&open);
    let mut tagged = Packet::udp(addr(OWN), addr(PEER), 5000, 53);
    tagged.src_mac = MAC;
    tagged.vlans = vec![10];
    port.sent("802.1Q tagged", &tagged.frame().unwrap(), Outcome::Pass);
    // Behind the tag, the same checks.
    tagged.src = addr("198.18.0.3");
    port.sent(
        "802.1Q tagged from another address",
        &tagged.frame().unwrap(),
        Outcome::DropSpoofedIpv4,
    );
    let mdns = frame(
        MAC,
        [0x01, 0, 0x5e, 0, 0, 0xfb],
        OWN,
        "224.0.0.251",
        udp(5353, 5353),
    );
    port.sent("IPv4 multicast", &mdns, Outcome::Pass);
    // Multicast from a spoofed address is still spoofed.
    let spoofed = frame(
        MAC,
        [0x01, 0, 0x5e, 0, 0, 0xfb],
        PEER,
        "224.0.0.251",
        udp(5353, 5353),
    );
    port.sent("spoofed multicast", &spoofed, Outcome::DropSpoofedIpv4);
}

#[test]
fn port_security_off_lets_spoofed_traffic_pass() {
    require_root!();
    let port = Port::new(&PortSecurity::OFF);
    port.sent(
        "another MAC and address",
        &frame(OTHER_MAC, ROUTER_MAC, "198.18.0.3", PEER, ECHO),
        Outcome::Pass,
    );
    port.sent(
        "ARP reply for an address not owned",
        &arp(OTHER_MAC, Arp::REPLY, OTHER_MAC, "198.18.0.1"),
        Outcome::PassNonIp,
    );
    port.sent(
        "router advertisement",
        &frame(
            MAC,
            multicast_mac("ff02::1"),
            "fe80::9",
            "ff02::1",
            icmpv6(ROUTER_ADVERT),
        ),
        Outcome::PassNeighbourDiscovery,
    );
    port.check(
        "to a neighbour's MAC",
        Direction::Ingress,
        &frame(ROUTER_MAC, OTHER_MAC, PEER, OWN, ECHO),
        Outcome::Pass,
    );
    // Switched on, then off again: the same frames.
    port.install(&security());
    let spoofed = frame(OTHER_MAC, ROUTER_MAC, "198.18.0.3", PEER, ECHO);
    port.sent("another MAC, on", &spoofed, Outcome::DropSpoofedMac);
    port.install(&PortSecurity::OFF);
    port.sent("another MAC, off again", &spoofed, Outcome::Pass);
    let status = port.0.datapath.port_security(SLOT).unwrap();
    assert!(!status.enabled && status.owned.is_empty(), "{status:?}");
}

#[test]
fn a_new_configuration_replaces_the_old_one() {
    require_root!();
    let port = Port::new(&security());
    let from = |src: &str| frame(MAC, ROUTER_MAC, src, PEER, ECHO);
    port.sent("the first address", &from(OWN), Outcome::Pass);
    let mut moved = security();
    moved.ips = vec![addr("198.18.0.7")];
    moved.allowed_address_pairs.clear();
    port.install(&moved);
    port.sent("the new address", &from("198.18.0.7"), Outcome::Pass);
    port.sent("the old address", &from(OWN), Outcome::DropSpoofedIpv4);
    port.sent(
        "the old pair",
        &from("198.18.0.100"),
        Outcome::DropSpoofedIpv4,
    );
    let status = port.0.datapath.port_security(SLOT).unwrap();
    let owned: Vec<String> = status.owned.iter().map(|o| o.prefix.to_string()).collect();
    assert_eq!(
        owned,
        ["198.18.0.7/32", &format!("{}/128", own_link_local())]
    );
    assert_eq!(status.macs, [MacAddr(MAC)]);
}

#[test]
fn an_invalid_configuration_changes_nothing() {
    require_root!();
    let port = Port::new(&security());
    let mut bad = security();
    bad.ips = vec![addr("198.18.0.7")];
    bad.mac = MacAddr([0x01, 0, 0x5e, 0, 0, 1]);
    let err = port
        .0
        .datapath
        .install_port_security(SLOT, &bad)
        .unwrap_err();
    assert!(err.to_string().contains("mac: "), "{err}");
    let from = |src: &str| frame(MAC, ROUTER_MAC, src, PEER, ECHO);
    port.sent("the address in force", &from(OWN), Outcome::Pass);
    port.sent(
        "the refused address",
        &from("198.18.0.7"),
        Outcome::DropSpoofedIpv4,
    );
}

/// How long a frame that passes takes at most to show on the other side.
const WAIT: Duration = Duration::from_millis(300);

/// A frame the workload sends, and the counter that drops it (`None`: it
/// passes).
struct Case {
    what: &'static str,
    frame: Vec<u8>,
    dropped_as: Option<&'static str>,
}

/// Legitimate frames and one spoof per reason, from a workload with `mac`
/// and the WORKLOAD_* addresses, to the host at `host_mac`.
fn workload_cases(mac: [u8; 6], host_mac: [u8; 6]) -> Vec<Case> {
    let ll = link_local(MacAddr(mac)).to_string();
    let other = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x99];
    // Its own source port: without the tag it is no other case's frame.
    let mut tagged = Packet::udp(addr(WORKLOAD_V4), addr(HOST_V4), 40001, 9);
    (tagged.src_mac, tagged.dst_mac, tagged.vlans) = (mac, host_mac, vec![10]);
    let case = |what, frame, dropped_as| Case {
        what,
        frame,
        dropped_as,
    };
    let to_host = |src: &str, transport| {
        let dst = if src.contains(':') { HOST_V6 } else { HOST_V4 };
        frame(mac, host_mac, src, dst, transport)
    };
    vec![
        case("own address", to_host(WORKLOAD_V4, udp(40000, 9)), None),
        case(
            "own IPv6 address",
            to_host(WORKLOAD_V6, udp(40000, 9)),
            None,
        ),
        case(
            "an allowed pair",
            to_host("198.18.0.100", udp(40000, 9)),
            None,
        ),
        case("ARP reply", arp(mac, Arp::REPLY, mac, WORKLOAD_V4), None),
        case(
            "DHCP discover",
            frame(mac, BROADCAST, "0.0.0.0", "255.255.255.255", udp(68, 67)),
            None,
        ),
        case(
            "DHCPv6 solicit",
            frame(
                mac,
                multicast_mac("ff02::1:2"),
                &ll,
                "ff02::1:2",
                udp(546, 547),
            ),
            None,
        ),
        case(
            "neighbour advertisement for itself",
            to_host(WORKLOAD_V6, nd(NEIGHBOUR_ADVERT, WORKLOAD_V6)),
            None,
        ),
        case(
            "neighbour advertisement giving another's MAC",
            nd_claiming(
                to_host(WORKLOAD_V6, nd(NEIGHBOUR_ADVERT, WORKLOAD_V6)),
                other,
            ),
            Some("drop-nd-spoof"),
        ),
        case(
            "spoofed MAC",
            frame(other, host_mac, WORKLOAD_V4, HOST_V4, udp(40000, 9)),
            Some("drop-spoofed-mac"),
        ),
        case(
            "spoofed IPv4",
            to_host("198.18.0.3", udp(40000, 9)),
            Some("drop-spoofed-ipv4"),
        ),
        case(
            "spoofed IPv6",
            to_host("2001:db8::3", udp(40000, 9)),
            Some("drop-spoofed-ipv6"),
        ),
        case(
            "ARP reply for the host's address",
            arp(mac, Arp::REPLY, mac, HOST_V4),
            Some("drop-arp-spoof"),
        ),
        case(
            "DHCP offer",
            frame(mac, BROADCAST, WORKLOAD_V4, "255.255.255.255", udp(67, 68)),
            Some("drop-dhcp-server"),
        ),
        case(
            "router advertisement",
            frame(
                mac,
                multicast_mac("ff02::1"),
                &ll,
                "ff02::1",
                icmpv6(ROUTER_ADVERT),
            ),
            Some("drop-router-advert"),
        ),
        case(
            "neighbour advertisement for the host's address",
            to_host(WORKLOAD_V6, nd(NEIGHBOUR_ADVERT, HOST_V6)),
            Some("drop-nd-spoof"),
        ),
        case(
            "broadcast",
            frame(mac, BROADCAST, WORKLOAD_V4, "198.18.0.255", udp(40000, 9)),
            Some("drop-multicast"),
        ),
        case(
            "802.1Q tagged",
            tagged.frame().unwrap(),
            Some("drop-vlan-tagged"),
        ),
    ]
}

/// The port's egress drop counters, from `sg-ctl stats PORT`.
fn drops(pins: &TestPins, netns: &str) -> Result<BTreeMap<String, u64>> {
    let stats: Value =
        serde_json::from_str(&pins.sg_ctl_ok(&["--netns", netns, "-o", "json", "stats", PORT])?)?;
    let counters = stats[0]["counters"].as_array().context("counters")?;
    Ok(counters
        .iter()
        .filter(|c| c["direction"] == "egress" && c["drop"] == true)
        .filter_map(|c| Some((c["outcome"].as_str()?.to_string(), c["packets"].as_u64()?)))
        .collect())
}

/// A frame as a packet socket reads it on arrival: the receiving kernel
/// keeps an 802.1Q tag apart from the frame's bytes.
fn as_received(frame: &[u8]) -> Vec<u8> {
    match frame.get(12..14) {
        Some([0x81, 0x00]) => [&frame[..12], &frame[16..]].concat(),
        _ => frame.to_vec(),
    }
}

/// Sends every case, then says which of them reached `seen`.
fn sent_and_seen(
    cases: &[Case],
    send: &mut dyn FnMut(&[u8]) -> Result<()>,
    seen: &mut FrameFile,
) -> Result<Vec<bool>> {
    let expected: Vec<Vec<u8>> = cases.iter().map(|c| as_received(&c.frame)).collect();
    for case in cases {
        send(&case.frame)?;
    }
    let mut arrived = vec![false; cases.len()];
    // Bounded: each round takes a frame of a case or ends the wait.
    for _ in 0..cases.len() {
        let Some(frame) = seen.receive(WAIT, |f| expected.iter().any(|e| e == f))? else {
            break;
        };
        for (expected, arrived) in expected.iter().zip(&mut arrived) {
            *arrived |= *expected == frame;
        }
    }
    Ok(arrived)
}

/// Port security on `PORT` of `netns` (attached): the legitimate frames
/// reach the host, each spoof is dropped and counted by its reason; turned
/// off, the spoofs pass.
fn spoofs_from(
    pins: &TestPins,
    netns: &str,
    mac: [u8; 6],
    host_mac: [u8; 6],
    send: &mut dyn FnMut(&[u8]) -> Result<()>,
    seen: &mut FrameFile,
) {
    let mac_text = MacAddr(mac).to_string();
    pins.sg_ctl_ok(&[
        "--netns",
        netns,
        "port-security",
        PORT,
        "--mac",
        &mac_text,
        "--ip",
        WORKLOAD_V4,
        "--ip",
        WORKLOAD_V6,
        "--allowed-pair",
        "198.18.0.100",
    ])
    .unwrap();
    let cases = workload_cases(mac, host_mac);
    let before = drops(pins, netns).unwrap();
    let arrived = sent_and_seen(&cases, send, seen).unwrap();
    let after = drops(pins, netns).unwrap();
    for (case, arrived) in cases.iter().zip(&arrived) {
        assert_eq!(
            *arrived,
            case.dropped_as.is_none(),
            "{}: arrived {arrived}",
            case.what
        );
    }
    let mut want = before.clone();
    for reason in cases.iter().filter_map(|c| c.dropped_as) {
        *want.entry(reason.to_string()).or_default() += 1;
    }
    assert_eq!(after, want, "each spoof counted once, by its reason");

    pins.sg_ctl_ok(&["--netns", netns, "port-security", PORT, "--off"])
        .unwrap();
    let arrived = sent_and_seen(&cases, send, seen).unwrap();
    for (case, arrived) in cases.iter().zip(&arrived) {
        assert!(arrived, "port security off: {} passes", case.what);
    }
    assert_eq!(drops(pins, netns).unwrap(), after, "off: nothing dropped");
}

#[test]
fn veth_workload_spoofs_are_dropped_and_its_own_traffic_passes() {
    require_root!();
    let port = VethPort::new().unwrap();
    let pins = TestPins::new();
    let netns = port.host.name();
    pins.sg_ctl_ok(&["--netns", netns, "attach", PORT]).unwrap();
    let mac = mac_of(&port.workload, "eth0").unwrap();
    let host_mac = mac_of(&port.host, PORT).unwrap();
    pins.sg_ctl_ok(&[
        "--netns",
        netns,
        "port-security",
        PORT,
        "--mac",
        &MacAddr(mac).to_string(),
        "--ip",
        WORKLOAD_V4,
        "--ip",
        WORKLOAD_V6,
    ])
    .unwrap();
    // The kernels' own ARP and neighbour discovery, from scratch.
    port.host.ip(&["neigh", "flush", "dev", PORT]).unwrap();
    port.workload
        .ip(&["neigh", "flush", "dev", "eth0"])
        .unwrap();
    for to in [WORKLOAD_V4, WORKLOAD_V6] {
        assert!(
            port.host.ping(addr(to)).unwrap(),
            "ping {to} with port security on"
        );
    }
    let mut workload = FrameFile::packet_socket(&port.workload, "eth0", false).unwrap();
    let mut host = FrameFile::packet_socket(&port.host, PORT, false).unwrap();
    spoofs_from(
        &pins,
        netns,
        mac,
        host_mac,
        &mut |frame| workload.send(frame),
        &mut host,
    )
}

#[test]
fn tap_guest_spoofs_are_dropped_and_its_own_traffic_passes() {
    require_root!();
    let mut tap = TapPort::new().unwrap();
    let pins = TestPins::new();
    let netns = tap.host.name().to_string();
    pins.sg_ctl_ok(&["--netns", &netns, "attach", PORT])
        .unwrap();
    let mut host = FrameFile::packet_socket(&tap.host, PORT, false).unwrap();
    let host_mac = tap.host_mac;
    spoofs_from(
        &pins,
        &netns,
        sg_tests::GUEST_MAC,
        host_mac,
        &mut |frame| tap.guest.send(frame),
        &mut host,
    )
}

/// Two workloads and a peer on a bridge that floods every unicast frame,
/// as a hub: `a` and `b` behind ports `port0` and `port1` with sg, the peer
/// behind `port2`.
struct Hub {
    host: Netns,
    a: Netns,
    b: Netns,
    peer: Netns,
}

impl Hub {
    fn new() -> Result<Hub> {
        let host = Netns::new()?;
        // No learning: unicast frames go out of every port.
        host.ip(&["link", "add", "br0", "type", "bridge", "ageing_time", "0"])?;
        host.ip(&["link", "set", "br0", "up"])?;
        let hub = Hub {
            a: Netns::new()?,
            b: Netns::new()?,
            peer: Netns::new()?,
            host,
        };
        for (i, ns) in [&hub.a, &hub.b, &hub.peer].into_iter().enumerate() {
            let port = format!("port{i}");
            hub.host.add_veth(&port, ns)?;
            hub.host
                .ip(&["link", "set", &port, "master", "br0", "up"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
        }
        Ok(hub)
    }
}

#[test]
fn a_promiscuous_workload_sees_none_of_its_neighbours_traffic() {
    require_root!();
    let hub = Hub::new().unwrap();
    let pins = TestPins::new();
    let netns = hub.host.name();
    let (a_mac, b_mac) = (
        mac_of(&hub.a, "eth0").unwrap(),
        mac_of(&hub.b, "eth0").unwrap(),
    );
    let peer_mac = mac_of(&hub.peer, "eth0").unwrap();
    for (port, mac, ip) in [
        ("port0", a_mac, "198.18.0.2"),
        ("port1", b_mac, "198.18.0.3"),
    ] {
        pins.sg_ctl_ok(&["--netns", netns, "attach", port]).unwrap();
        pins.sg_ctl_ok(&[
            "--netns",
            netns,
            "port-security",
            port,
            "--mac",
            &MacAddr(mac).to_string(),
            "--ip",
            ip,
        ])
        .unwrap();
    }
    let mut a = FrameFile::packet_socket(&hub.a, "eth0", false).unwrap();
    let mut b = FrameFile::packet_socket(&hub.b, "eth0", true).unwrap();
    let mut peer = FrameFile::packet_socket(&hub.peer, "eth0", false).unwrap();
    let for_a = frame(peer_mac, a_mac, "198.18.0.9", "198.18.0.2", udp(40000, 9));
    let is_for_a = |f: &[u8]| f == for_a.as_slice();

    peer.send(&for_a).unwrap();
    assert!(
        a.receive(WAIT, is_for_a).unwrap().is_some(),
        "a receives its frame"
    );
    assert!(
        b.receive(WAIT, is_for_a).unwrap().is_none(),
        "b does not see it"
    );
    let counted = pins
        .counter("port1", "ingress", "drop-foreign-mac")
        .unwrap();
    assert!(counted >= 1, "port1 counted {counted} foreign frames");

    // Without port security on b's port, the hub shows b everything.
    pins.sg_ctl_ok(&["--netns", netns, "port-security", "port1", "--off"])
        .unwrap();
    peer.send(&for_a).unwrap();
    assert!(
        b.receive(WAIT, is_for_a).unwrap().is_some(),
        "b sees it without port security"
    );
}
