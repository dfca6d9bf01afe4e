//! The programs run on crafted frames through BPF_PROG_TEST_RUN: what they
//! pass, drop and count, malformed frames included.

use std::net::IpAddr;

use aya::maps::{Array, MapData, MapInfo};
use sg_common::{Direction, MAX_PORTS, Outcome, map_names, skip};
use sg_core::{
    compile::{compile, counter_ids},
    model::Policy,
};
use sg_ctl::{
    datapath::{Datapath, Forward, MapSizes, WithoutPolicy, conntrack::FlowFilter},
    frame::{Packet, TcpFlags, Transport},
};
use sg_tests::{TestPort, addr, require_root, vm_policy};

const SLOT: u32 = 7;
const WORKLOAD: &str = "198.18.0.2";
const PEER: &str = "198.18.1.1";
const WORKLOAD6: &str = "2001:db8::2";
const PEER6: &str = "2001:db8:1::1";

/// One port's programs on test pins, with the port active and without a
/// policy, as `sg-ctl attach` leaves it: its blocklist applies.
struct Port(TestPort);

impl Port {
    fn new() -> Port {
        Port(TestPort::new(SLOT, WithoutPolicy::Pass).expect("loading the programs"))
    }

    fn block(&mut self, prefix: &str) {
        self.0
            .datapath
            .block_slot(SLOT, prefix.parse().unwrap())
            .unwrap();
    }

    fn unblock(&mut self, prefix: &str) -> bool {
        self.0
            .datapath
            .unblock_slot(SLOT, prefix.parse().unwrap())
            .unwrap()
    }

    fn check(&self, direction: Direction, frame: &[u8], want: Forward, outcome: Outcome) {
        self.0.check(direction, frame, want, outcome);
    }
}

/// A port skips a lookup only as its skip word says for the policy in
/// force: a word of another id (a switch under way) skips nothing, and one
/// that wrongly skipped the local classes would let a rule of the
/// workload's address go unmatched.
#[test]
fn lookups_are_skipped_only_for_the_policy_the_word_names() {
    require_root!();
    let mut port = Port::new();
    let policy = vm_policy(
        serde_json::json!([{"name": "dns", "rules": [
            {"direction": "egress", "protocol": "udp", "ports": "53", "action": "drop",
             "local": [format!("{WORKLOAD}/32")]},
            {"direction": "egress", "protocol": "udp", "ports": "53"},
        ]}]),
        &["dns"],
    );
    port.0.install(&policy, "vm").unwrap();
    let dns = packet(Direction::Egress, WORKLOAD, PEER, transports()[1])
        .frame()
        .unwrap();
    port.check(Direction::Egress, &dns, Forward::Drop, Outcome::DropRule);
    let id = port.0.datapath.policy_of(SLOT).unwrap();
    let mut skips: Array<MapData, u32> = port.0.pins().open(map_names::PORT_SKIPS).unwrap();
    assert_eq!(
        skips.get(&SLOT, 0).unwrap(),
        skip::word(id, skip::REMOTE_EXACT)
    );
    skips.set(SLOT, skip::word(id + 1, skip::LOCAL), 0).unwrap();
    port.check(Direction::Egress, &dns, Forward::Drop, Outcome::DropRule);
    // The word is what the datapath goes by.
    skips.set(SLOT, skip::word(id, skip::LOCAL), 0).unwrap();
    port.check(Direction::Egress, &dns, Forward::Pass, Outcome::Pass);
    // An install writes its own: the flow the skip let start ends.
    port.0.install(&policy, "vm").unwrap();
    port.check(Direction::Egress, &dns, Forward::Drop, Outcome::DropRevoked);
}

/// What the workload sends (`Egress`) or receives (`Ingress`).
fn packet(direction: Direction, workload: &str, peer: &str, transport: Transport) -> Packet {
    let (src, dst) = match direction {
        Direction::Egress => (addr(workload), addr(peer)),
        Direction::Ingress => (addr(peer), addr(workload)),
    };
    let mut packet = Packet::udp(src, dst, 0, 0);
    packet.transport = transport;
    packet
}

fn transports() -> [Transport; 4] {
    [
        Transport::Tcp {
            src_port: 40000,
            dst_port: 443,
            flags: TcpFlags::SYN,
        },
        Transport::Udp {
            src_port: 5353,
            dst_port: 53,
        },
        Transport::Icmp { type_: 8, code: 0 },
        Transport::Other { protocol: 47 },
    ]
}

fn icmp_echo(ip: IpAddr) -> Transport {
    let type_ = if ip.is_ipv4() { 8 } else { 128 };
    Transport::Icmp { type_, code: 0 }
}

#[test]
fn passes_and_counts_unblocked_traffic_both_ways() {
    require_root!();
    let port = Port::new();
    for (direction, frame) in every_frame() {
        port.check(direction, &frame, Forward::Pass, passed_as(&frame));
    }
}

#[test]
fn drops_the_blocked_prefixes_source_when_sent_destination_when_received() {
    require_root!();
    let mut port = Port::new();
    port.block("198.18.0.0/24");
    port.block("2001:db8::/64");
    for (workload, peer) in [(WORKLOAD, PEER), (WORKLOAD6, PEER6)] {
        for direction in [Direction::Egress, Direction::Ingress] {
            let frame = packet(direction, workload, peer, icmp_echo(addr(peer)))
                .frame()
                .unwrap();
            port.check(direction, &frame, Forward::Drop, Outcome::DropBlocked);
        }
        // The peer's address is not the workload's side: it passes.
        let frame = packet(Direction::Egress, peer, workload, icmp_echo(addr(peer)))
            .frame()
            .unwrap();
        port.check(Direction::Egress, &frame, Forward::Pass, Outcome::Pass);
    }
}

/// A port that blocks nothing skips the blocklist, by a count of its
/// prefixes that follows them: one blocked twice counts once, and when one
/// of two goes the other still drops.
#[test]
fn the_blocklist_is_looked_up_while_the_port_blocks_anything() {
    require_root!();
    let mut port = Port::new();
    let ping = |workload: &str, peer: &str| {
        packet(Direction::Egress, workload, peer, icmp_echo(addr(peer)))
            .frame()
            .unwrap()
    };
    let (v4, v6) = (ping(WORKLOAD, PEER), ping(WORKLOAD6, PEER6));
    port.block("198.18.0.0/24");
    port.block("198.18.0.0/24");
    port.block("2001:db8::/64");
    assert!(port.unblock("198.18.0.0/24"));
    assert!(!port.unblock("198.18.0.0/24"));
    port.check(Direction::Egress, &v4, Forward::Pass, Outcome::Pass);
    port.check(Direction::Egress, &v6, Forward::Drop, Outcome::DropBlocked);
    assert!(port.unblock("2001:db8::/64"));
    port.check(Direction::Egress, &v6, Forward::Pass, Outcome::Pass);
    port.block("2001:db8::/64");
    port.check(Direction::Egress, &v6, Forward::Drop, Outcome::DropBlocked);
}

#[test]
fn prefix_edges_decide_exactly() {
    require_root!();
    let mut port = Port::new();
    port.block("198.18.0.128/25");
    port.block("2001:db8::8000/113");
    for (inside, outside) in [
        ("198.18.0.128", "198.18.0.127"),
        ("198.18.0.255", "198.18.1.0"),
        ("2001:db8::8000", "2001:db8::7fff"),
        ("2001:db8::ffff", "2001:db8::1:0"),
    ] {
        let peer = if inside.contains(':') { PEER6 } else { PEER };
        let udp = Transport::Udp {
            src_port: 1,
            dst_port: 2,
        };
        let frame = packet(Direction::Egress, inside, peer, udp)
            .frame()
            .unwrap();
        port.check(
            Direction::Egress,
            &frame,
            Forward::Drop,
            Outcome::DropBlocked,
        );
        let frame = packet(Direction::Egress, outside, peer, udp)
            .frame()
            .unwrap();
        port.check(Direction::Egress, &frame, Forward::Pass, Outcome::Pass);
    }
}

/// Every kind of frame both ways: the transports over IPv4 and IPv6, an
/// ARP request, LLDP.
fn every_frame() -> Vec<(Direction, Vec<u8>)> {
    let mut frames = Vec::new();
    for direction in [Direction::Egress, Direction::Ingress] {
        for (workload, peer) in [(WORKLOAD, PEER), (WORKLOAD6, PEER6)] {
            for transport in transports() {
                let transport = match transport {
                    Transport::Icmp { .. } => icmp_echo(addr(peer)),
                    t => t,
                };
                let frame = packet(direction, workload, peer, transport);
                frames.push((direction, frame.frame().unwrap()));
            }
        }
        for ether_type in [0x0806, 0x88cc] {
            let mut frame = eth(ether_type);
            frame.resize(60, 0);
            frames.push((direction, frame));
        }
    }
    frames
}

/// What a frame of `every_frame` passes as.
fn passed_as(frame: &[u8]) -> Outcome {
    match frame[12..14] {
        [0x08, 0x00] | [0x86, 0xdd] => Outcome::Pass,
        _ => Outcome::PassNonIp,
    }
}

#[test]
fn an_inactive_port_drops_and_counts_everything() {
    require_root!();
    let port = Port::new();
    port.0.set_active(false).unwrap();
    for (direction, frame) in every_frame() {
        port.check(direction, &frame, Forward::Drop, Outcome::DropNoPolicy);
    }
    // Active again, as `sg-ctl attach` leaves it: no policy, open.
    port.0.set_active(true).unwrap();
    for (direction, frame) in every_frame() {
        port.check(direction, &frame, Forward::Pass, passed_as(&frame));
    }
}

/// A policy that lets everything through, both ways.
fn open_policy() -> Policy {
    vm_policy(
        serde_json::json!([{"name": "all", "rules": [
            {"direction": "egress"},
            {"direction": "ingress"},
        ]}]),
        &["all"],
    )
}

/// Checks that each frame of `every_frame` passes, as the first of its
/// flow (the other protocol's would be established the other way).
fn every_frame_passes(port: &TestPort) {
    for (direction, frame) in every_frame() {
        port.datapath.flush_flows(&FlowFilter::default()).unwrap();
        port.check(direction, &frame, Forward::Pass, passed_as(&frame));
    }
}

#[test]
fn a_port_the_daemon_attached_drops_everything_until_its_policy_is_in_force() {
    require_root!();
    let mut port = TestPort::new(SLOT, WithoutPolicy::Drop).expect("loading the programs");
    for (direction, frame) in every_frame() {
        port.check(direction, &frame, Forward::Drop, Outcome::DropNoPolicy);
    }
    port.install(&open_policy(), "vm").unwrap();
    every_frame_passes(&port);
    // Its policy taken away: closed again, the tracked flow's packets too.
    port.datapath.clear_policy(SLOT).unwrap();
    for (direction, frame) in every_frame() {
        port.check(direction, &frame, Forward::Drop, Outcome::DropNoPolicy);
    }
}

/// Pins of maps laid out otherwise (another version's) are refused, the map
/// and both layouts named, and neither the pins nor the programs loaded on
/// them change.
#[test]
fn pins_laid_out_otherwise_are_refused_by_name() {
    require_root!();
    let mut port = TestPort::new(SLOT, WithoutPolicy::Drop).expect("loading the programs");
    port.install(&open_policy(), "vm").unwrap();
    // The skip words as 8 bytes rather than 4.
    let path = port.pins().map(map_names::PORT_SKIPS);
    std::fs::remove_file(&path).unwrap();
    let other: Array<MapData, u64> = Array::create(MAX_PORTS, 0).unwrap();
    other.pin(&path).unwrap();
    let other = MapInfo::from_pin(&path).unwrap().id();
    let Err(error) = port.datapath.test_run(SLOT + 1) else {
        panic!("programs loaded on a map laid out otherwise");
    };
    let error = error.to_string();
    assert!(
        error.contains(
            "SG_PORT_SKIPS is pinned with type 2, 4-byte keys, 8-byte values, flags 0x0, \
             where this version has type 2, 4-byte keys, 4-byte values, flags 0x0"
        ) && error.contains("`sg-ctl detach --all` removes them"),
        "{error}"
    );
    let pinned = MapInfo::from_pin(&path).unwrap();
    assert_eq!((pinned.id(), pinned.value_size()), (other, 8));
    every_frame_passes(&port);
    // As the error says, `detach --all` takes them away.
    assert_eq!(port.datapath.detach_all().unwrap(), 1);
    assert!(!port.pins().root().exists());
}

/// UDP between two ports, from `src_mac` to `dst_mac`.
fn udp_frame(mac: ([u8; 6], [u8; 6]), src: &str, dst: &str, ports: (u16, u16)) -> Vec<u8> {
    let mut packet = Packet::udp(addr(src), addr(dst), ports.0, ports.1);
    (packet.src_mac, packet.dst_mac) = mac;
    packet.frame().unwrap()
}

#[test]
fn dhcp_passes_whatever_the_rules_say_from_the_servers_the_port_accepts() {
    require_root!();
    let mut port = TestPort::new(SLOT, WithoutPolicy::Drop).expect("loading the programs");
    let mut policy = vm_policy(
        serde_json::json!([{"name": "closed", "rules": []}]),
        &["closed"],
    );
    port.install(&policy, "vm").unwrap();
    const WORKLOAD_MAC: [u8; 6] = [0x02, 0, 0x5e, 0x10, 0, 2];
    const SERVER_MAC: [u8; 6] = [0x02, 0, 0x5e, 0x10, 0, 1];
    const BROADCAST: [u8; 6] = [0xff; 6];
    let sent =
        |dst_mac, src: &str, dst: &str, ports| udp_frame((WORKLOAD_MAC, dst_mac), src, dst, ports);
    let received =
        |dst_mac, src: &str, dst: &str, ports| udp_frame((SERVER_MAC, dst_mac), src, dst, ports);
    let (e, i) = (Direction::Egress, Direction::Ingress);
    let requests = [
        sent(BROADCAST, "0.0.0.0", "255.255.255.255", (68, 67)),
        sent(SERVER_MAC, WORKLOAD, "198.18.0.1", (68, 67)),
        sent([0x33, 0x33, 0, 1, 0, 2], "fe80::2", "ff02::1:2", (546, 547)),
    ];
    let replies = |server: &str, server6: &str| {
        [
            received(BROADCAST, server, "255.255.255.255", (67, 68)),
            received(WORKLOAD_MAC, server, WORKLOAD, (67, 68)),
            received(WORKLOAD_MAC, server6, "fe80::2", (547, 546)),
        ]
    };
    for frame in &requests {
        port.check(e, frame, Forward::Pass, Outcome::PassDhcp);
    }
    for frame in replies("198.18.0.1", "fe80::1") {
        port.check(i, &frame, Forward::Pass, Outcome::PassDhcp);
    }
    // The workload as a server, or asked as one, and the other family's
    // ports: the rules (none here).
    for (direction, frame) in [
        (e, sent(SERVER_MAC, WORKLOAD, "198.18.0.9", (67, 68))),
        (i, received(WORKLOAD_MAC, "198.18.0.9", WORKLOAD, (68, 67))),
        (i, received(WORKLOAD_MAC, "fe80::1", "fe80::2", (67, 68))),
    ] {
        port.check(direction, &frame, Forward::Drop, Outcome::DropDefault);
    }
    // No flow: each passed on its own.
    assert!(
        port.datapath
            .flows(&FlowFilter::default())
            .unwrap()
            .is_empty()
    );

    // A port that accepts two servers only.
    policy.ports[0].dhcp_servers = vec![addr("198.18.0.1"), addr("fe80::1")];
    port.install(&policy, "vm").unwrap();
    for frame in replies("198.18.0.1", "fe80::1") {
        port.check(i, &frame, Forward::Pass, Outcome::PassDhcp);
    }
    for frame in replies("198.18.0.9", "fe80::9") {
        port.check(i, &frame, Forward::Drop, Outcome::DropDhcpServer);
    }
    for frame in &requests {
        port.check(e, frame, Forward::Pass, Outcome::PassDhcp);
    }
}

fn eth(ether_type: u16) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame
}

#[test]
fn non_ip_frames_pass_as_non_ip() {
    require_root!();
    let port = Port::new();
    // An ARP request and an LLDP frame.
    for ether_type in [0x0806, 0x88cc] {
        let mut frame = eth(ether_type);
        frame.resize(60, 0);
        for direction in [Direction::Egress, Direction::Ingress] {
            port.check(direction, &frame, Forward::Pass, Outcome::PassNonIp);
        }
    }
}

#[test]
fn truncated_and_malformed_headers_are_dropped_as_malformed() {
    require_root!();
    let port = Port::new();
    let v4 = packet(Direction::Egress, WORKLOAD, PEER, icmp_echo(addr(PEER)))
        .frame()
        .unwrap();
    let v6 = packet(Direction::Egress, WORKLOAD6, PEER6, icmp_echo(addr(PEER6)))
        .frame()
        .unwrap();
    let mut bad_ihl = v4.clone();
    bad_ihl[14] = 0x44;
    let mut v6_in_v4 = v4.clone();
    v6_in_v4[14] = 0x65;
    let mut v4_in_v6 = v6.clone();
    v4_in_v6[14] = 0x45;
    // Room for 40 bytes of options and the ICMP header behind them, so
    // that only the lengths are wrong.
    let mut long = packet(Direction::Egress, WORKLOAD, PEER, icmp_echo(addr(PEER)));
    long.payload_len = 64;
    let long = long.frame().unwrap();
    let mut header_past_total = long.clone();
    header_past_total[14] = 0x4f;
    header_past_total[16..18].copy_from_slice(&20u16.to_be_bytes());
    let mut total_under_20 = long.clone();
    total_under_20[16..18].copy_from_slice(&19u16.to_be_bytes());
    let cases: [(&str, Vec<u8>); 9] = [
        ("IPv4 ethertype, no header", eth(0x0800)),
        ("IPv4 header cut short", v4[..14 + 19].to_vec()),
        ("IPv6 header cut short", v6[..14 + 39].to_vec()),
        ("VLAN tag cut short", [eth(0x8100), vec![0, 10]].concat()),
        ("IPv4 header length 4", bad_ihl),
        ("version 6 in an IPv4 frame", v6_in_v4),
        ("version 4 in an IPv6 frame", v4_in_v6),
        (
            "IPv4 header of 60 bytes, total length 20",
            header_past_total,
        ),
        ("IPv4 total length 19", total_under_20),
    ];
    for (what, frame) in cases {
        eprintln!("{what}");
        port.check(
            Direction::Egress,
            &frame,
            Forward::Drop,
            Outcome::DropMalformed,
        );
        // The kernel makes no test skb of an IP ethertype shorter than its
        // IP header; behind a VLAN tag it does.
        let tagged = [&frame[..12], &[0x81, 0x00, 0x00, 0x0a], &frame[12..]].concat();
        port.check(
            Direction::Ingress,
            &tagged,
            Forward::Drop,
            Outcome::DropMalformed,
        );
    }
}

#[test]
fn vlan_tagged_frames_are_filtered_on_their_ip_header() {
    require_root!();
    let mut port = Port::new();
    port.block("198.18.0.2/32");
    port.block("2001:db8::2/128");
    for tags in [vec![10], vec![100, 10]] {
        for (workload, peer, blocked) in [
            (WORKLOAD, PEER, true),
            (WORKLOAD6, PEER6, true),
            (PEER, WORKLOAD, false),
        ] {
            let mut packet = packet(Direction::Egress, workload, peer, icmp_echo(addr(peer)));
            packet.vlans = tags.clone();
            let frame = packet.frame().unwrap();
            let (want, outcome) = if blocked {
                (Forward::Drop, Outcome::DropBlocked)
            } else {
                (Forward::Pass, Outcome::Pass)
            };
            port.check(Direction::Egress, &frame, want, outcome);
        }
    }
    // A third tag is more than sg looks through.
    let v4 = packet(Direction::Egress, PEER, WORKLOAD, icmp_echo(addr(PEER)))
        .frame()
        .unwrap();
    let mut frame = v4[..12].to_vec();
    for _ in 0..3 {
        frame.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
    }
    frame.extend_from_slice(&v4[12..]);
    for direction in [Direction::Egress, Direction::Ingress] {
        port.check(direction, &frame, Forward::Drop, Outcome::DropVlanTags);
    }
}

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AH: u8 = 51;
const DEST_OPTS: u8 = 60;

/// Inserts IPv6 extension headers of the given kinds (8 bytes each, AH 12)
/// after the IPv6 header of an untagged frame.
fn with_ext_headers(frame: &[u8], kinds: &[u8]) -> Vec<u8> {
    const IP: usize = 14;
    let upper = frame[IP + 6];
    let mut headers = Vec::new();
    for (i, &kind) in kinds.iter().enumerate() {
        let next = kinds.get(i + 1).copied().unwrap_or(upper);
        match kind {
            // Payload length in 4-byte units minus 2: 12 bytes, no ICV.
            AH => headers.extend_from_slice(&[next, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]),
            // The first fragment of a datagram, more to come.
            FRAGMENT => headers.extend_from_slice(&[next, 0, 0, 1, 0, 0, 0, 42]),
            _ => headers.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]),
        }
    }
    let mut out = frame[..IP + 40].to_vec();
    if let Some(&first) = kinds.first() {
        out[IP + 6] = first;
    }
    let payload_len = u16::from_be_bytes([out[IP + 4], out[IP + 5]]) + headers.len() as u16;
    out[IP + 4..IP + 6].copy_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(&headers);
    out.extend_from_slice(&frame[IP + 40..]);
    out
}

#[test]
fn ipv6_extension_headers_are_walked_up_to_the_limit() {
    require_root!();
    let mut port = Port::new();
    port.block("2001:db8::2/128");
    let udp = Transport::Udp {
        src_port: 5353,
        dst_port: 53,
    };
    let blocked = packet(Direction::Egress, WORKLOAD6, PEER6, udp)
        .frame()
        .unwrap();
    let allowed = packet(Direction::Egress, PEER6, WORKLOAD6, udp)
        .frame()
        .unwrap();
    let chains: [&[u8]; 4] = [
        &[HOP_BY_HOP],
        &[HOP_BY_HOP, DEST_OPTS, ROUTING, FRAGMENT, AH, DEST_OPTS],
        &[FRAGMENT],
        &[DEST_OPTS; 8],
    ];
    for chain in chains {
        let frame = with_ext_headers(&blocked, chain);
        port.check(
            Direction::Egress,
            &frame,
            Forward::Drop,
            Outcome::DropBlocked,
        );
        let frame = with_ext_headers(&allowed, chain);
        port.check(Direction::Egress, &frame, Forward::Pass, Outcome::Pass);
    }
    // Nine headers are more than sg walks: dropped whatever the addresses.
    let frame = with_ext_headers(&allowed, &[DEST_OPTS; 9]);
    for direction in [Direction::Egress, Direction::Ingress] {
        port.check(direction, &frame, Forward::Drop, Outcome::DropExtHeaders);
    }
}

#[test]
fn truncated_ipv6_extension_headers_are_malformed() {
    require_root!();
    let port = Port::new();
    let frame = packet(Direction::Egress, PEER6, WORKLOAD6, icmp_echo(addr(PEER6)))
        .frame()
        .unwrap();
    let chained = with_ext_headers(&frame, &[HOP_BY_HOP, DEST_OPTS]);
    // Cut inside the second header, and right after the first one's two
    // leading bytes.
    for cut in [14 + 40 + 8 + 4, 14 + 40 + 2] {
        port.check(
            Direction::Egress,
            &chained[..cut],
            Forward::Drop,
            Outcome::DropMalformed,
        );
    }
    // A header that announces more length than the frame holds.
    let mut long = chained.clone();
    long[14 + 40 + 1] = 200;
    port.check(
        Direction::Ingress,
        &long,
        Forward::Drop,
        Outcome::DropMalformed,
    );
}

/// A policy of `rules` rules, each with a port range, a single IPv4
/// remote, an IPv6 /64 and a local address, and a DHCP server: entries in
/// every policy map.
fn every_map_policy(rules: usize) -> Policy {
    let rules: Vec<_> = (0..rules)
        .map(|i| {
            serde_json::json!({
                "direction": "ingress", "protocol": "tcp",
                "ports": format!("{}-{}", 1000 + i * 4, 1003 + i * 4),
                "remote": [format!("198.18.{}.{}/32", i / 250, i % 250 + 1),
                           format!("2001:db8:{i:x}::/64")],
                "local": ["198.18.0.2/32"],
            })
        })
        .chain([serde_json::json!({"direction": "egress", "protocol": "udp", "ports": "53"})])
        .collect();
    let mut policy = vm_policy(
        serde_json::json!([{"name": "big", "rules": rules}]),
        &["big"],
    );
    policy.ports[0].dhcp_servers = vec!["198.18.0.1".parse().unwrap()];
    policy
}

/// A policy that replaces another leaves only its own entries in the
/// shared maps, every kind of them (tries, exact hashes, pairs, local
/// classes, DHCP servers), once the ones replaced are removed, all at once
/// when asked. One taken away leaves none.
#[test]
fn a_replaced_policy_leaves_only_its_own_entries() {
    require_root!();
    let mut port = Port::new();
    let big = every_map_policy(300);
    let small = vm_policy(
        serde_json::json!([{"name": "small", "rules": [
            {"direction": "ingress", "protocol": "tcp", "ports": "22", "remote": ["198.18.1.1/32"]},
        ]}]),
        &["small"],
    );
    let (big_entries, small_entries) = (entries_of(&big), entries_of(&small));
    port.0.install(&big, "vm").unwrap();
    port.0.install(&small, "vm").unwrap();
    // The replaced ones stay until removed.
    assert_eq!(held(&port), sum(big_entries, small_entries));
    port.0.install(&small, "vm").unwrap();
    assert_eq!(
        held(&port),
        sum(big_entries, sum(small_entries, small_entries))
    );
    port.0.datapath.remove_retired().unwrap();
    assert_eq!(held(&port), small_entries);
    port.0.install(&big, "vm").unwrap();
    port.0.datapath.clear_policy(SLOT).unwrap();
    assert_eq!(held(&port), [0; 7]);
}

/// Single remote addresses beyond what their group of `SG_REMOTE_EXACT`
/// holds go to the trie, which decides them as the groups would: with a
/// table of one group, four of the 24 addresses are in it and the rest in
/// the trie, each with its own rule's action; an address of neither gets
/// the default. Removed, the policy leaves the group free.
#[test]
fn single_addresses_whose_group_is_full_are_decided_by_the_trie() {
    require_root!();
    let sizes = MapSizes::parse(["SG_REMOTE_EXACT=2"]).unwrap();
    let mut port = Port(TestPort::with_sizes(SLOT, WithoutPolicy::Pass, sizes).unwrap());
    let peers: Vec<String> = (1..=12)
        .flat_map(|i| [format!("198.18.1.{i}"), format!("2001:db8:1::{i:x}")])
        .collect();
    let rules: Vec<_> = peers
        .iter()
        .enumerate()
        .map(|(i, peer)| {
            serde_json::json!({
                "direction": "ingress", "protocol": "tcp", "ports": "443",
                "remote": [peer], "action": if i % 4 < 2 { "allow" } else { "drop" },
            })
        })
        .collect();
    let policy = vm_policy(
        serde_json::json!([{"name": "peers", "rules": rules}]),
        &["peers"],
    );
    port.0.install(&policy, "vm").unwrap();
    let slots = sg_tests::map_entries(port.0.pins(), map_names::REMOTE_EXACT).unwrap();
    assert_eq!(slots, 4, "one group of four slots, full");
    let strangers = ["198.18.1.13", "2001:db8:1::d"].map(String::from);
    for (i, peer) in peers.iter().chain(&strangers).enumerate() {
        let (want, outcome) = if i >= peers.len() {
            (Forward::Drop, Outcome::DropDefault)
        } else if i % 4 < 2 {
            (Forward::Pass, Outcome::Pass)
        } else {
            (Forward::Drop, Outcome::DropRule)
        };
        let workload = if peer.contains(':') {
            WORKLOAD6
        } else {
            WORKLOAD
        };
        let frame = packet(Direction::Ingress, workload, peer, transports()[0])
            .frame()
            .unwrap();
        port.check(Direction::Ingress, &frame, want, outcome);
    }
    port.0.datapath.clear_policy(SLOT).unwrap();
    assert_eq!(held(&port), [0; 7]);
}

/// An install whose policy the maps cannot hold beside the retired ones
/// removes those first: it fits whenever the policy in force and the new
/// one do.
#[test]
fn an_install_makes_room_by_removing_what_was_retired() {
    require_root!();
    let policy = every_map_policy(100);
    let entries = entries_of(&policy);
    // Room for two policies in every map that may be sized, not three.
    let sizes = sg_tests::POLICY_MAPS
        .iter()
        .zip(entries)
        .filter(|(name, _)| **name != map_names::DHCP_SERVERS)
        .map(|(name, n)| format!("{name}={}", 2 * n.max(1)))
        .collect::<Vec<_>>();
    let sizes = MapSizes::parse(sizes.iter().map(String::as_str)).unwrap();
    let mut port = Port(TestPort::with_sizes(SLOT, WithoutPolicy::Pass, sizes).unwrap());
    port.0.install(&policy, "vm").unwrap();
    port.0.install(&policy, "vm").unwrap();
    assert_eq!(held(&port), sum(entries, entries));
    // The third does not fit beside both: the retired one goes first.
    port.0.install(&policy, "vm").unwrap();
    assert_eq!(held(&port), sum(entries, entries));
    port.0.datapath.remove_retired().unwrap();
    assert_eq!(held(&port), entries);
}

/// The group `name` letting TCP to `port` in from one peer, as the
/// port's policy.
fn tcp_policy(name: &str, port: u16) -> Policy {
    vm_policy(
        serde_json::json!([{"name": name, "rules": [
            {"direction": "ingress", "protocol": "tcp", "ports": port.to_string(),
             "remote": ["198.18.1.1/32"]},
        ]}]),
        &[name],
    )
}

/// What an sg-ctl killed between a switch and its removal left, the
/// replaced policy's entries under an id no slot has, goes with
/// `remove_orphans` (the daemon's start): a later install given that id
/// would otherwise enforce them with its own.
#[test]
fn entries_a_killed_process_left_are_removed_as_orphans() {
    require_root!();
    let port = Port::new();
    let (first, second) = (tcp_policy("first", 22), tcp_policy("second", 80));
    let killed = Datapath::new(port.0.pins().clone());
    for policy in [&first, &second] {
        sg_tests::install(&killed, SLOT, policy, "vm").unwrap();
    }
    // Killed: nothing of it runs after the switch.
    std::mem::forget(killed);
    assert_eq!(held(&port), sum(entries_of(&first), entries_of(&second)));
    port.0.datapath.remove_orphans().unwrap();
    assert_eq!(held(&port), entries_of(&second));
    port.0.datapath.clear_policy(SLOT).unwrap();
    assert_eq!(held(&port), [0; 7]);
}

/// Two processes installing at once never write under one id: each
/// picks its id and writes its policy under the pins' lock. Under one id,
/// the two policies' entries would mix, and the removal of one's replaced
/// entries would take the other's in force.
#[test]
fn two_writers_at_once_never_share_a_policy_id() {
    require_root!();
    let port = Port::new();
    let policies = [tcp_policy("first", 22), tcp_policy("second", 80)];
    let ids: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let writers: Vec<_> = policies
            .iter()
            .zip([SLOT, SLOT + 1])
            .map(|(policy, slot)| {
                let datapath = Datapath::new(port.0.pins().clone());
                scope.spawn(move || {
                    (0..40)
                        .map(|_| {
                            sg_tests::install(&datapath, slot, policy, "vm").unwrap();
                            let id = datapath.policy_of(slot).unwrap();
                            datapath.remove_retired().unwrap();
                            id
                        })
                        .collect()
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert!(
        ids[0].iter().all(|id| !ids[1].contains(id)),
        "ids written by both: {ids:?}"
    );
    assert_eq!(
        held(&port),
        sum(entries_of(&policies[0]), entries_of(&policies[1]))
    );
}

/// The entries the port's pins hold in each of `sg_tests::POLICY_MAPS`,
/// the single remote addresses counted with the trie's (`remote_as_one`).
fn held(port: &Port) -> [usize; 7] {
    remote_as_one(
        sg_tests::POLICY_MAPS.map(|name| sg_tests::map_entries(port.0.pins(), name).unwrap()),
    )
}

/// The entries `policy` compiles to, in the order of `held`.
fn entries_of(policy: &Policy) -> [usize; 7] {
    let compiled = compile(policy, "vm", 1, &counter_ids(policy).unwrap()).unwrap();
    remote_as_one([
        compiled.local.len(),
        compiled.remote.len(),
        compiled.remote_exact.len(),
        compiled.l4.len(),
        compiled.l4_exact.len(),
        compiled.verdict.len(),
        compiled.dhcp_servers.len(),
    ])
}

/// Entries of `SG_REMOTE_EXACT` counted as `SG_REMOTE`'s: a single
/// address whose group is full goes to the trie.
fn remote_as_one(mut entries: [usize; 7]) -> [usize; 7] {
    entries[1] += std::mem::take(&mut entries[2]);
    entries
}

fn sum(a: [usize; 7], b: [usize; 7]) -> [usize; 7] {
    std::array::from_fn(|i| a[i] + b[i])
}
