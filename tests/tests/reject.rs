//! REJECT: the sender of a rejected packet gets a TCP RST or an ICMP
//! "administratively prohibited", in both directions; what gets no reply is
//! dropped. First on crafted frames through BPF_PROG_TEST_RUN (the reply's
//! every field and checksum), then with real connections between
//! namespaces.

use std::{
    io::ErrorKind,
    net::{IpAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::Result;
use serde_json::json;
use sg_common::{Direction, Outcome};
use sg_core::model::Policy;
use sg_ctl::{
    datapath::{Forward, WithoutPolicy},
    frame::{Packet, TcpFlags, Transport},
};
use sg_tests::{
    GUEST_MAC, HOST_V4, HOST_V6, PORT, TapPort, TestPins, TestPort, VethPort, WORKLOAD_V4,
    WORKLOAD_V6, addr, ones_complement_sum, require_root, vm_policy,
};

const SLOT: u32 = 3;
const PEER_V4: &str = "198.18.1.1";
const PEER_V6: &str = "2001:db8:1::1";
const WORKLOAD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

/// Rejects telnet and SNMP coming in and SMTP and syslog going out; allows
/// the rest, ICMP coming in aside.
fn policy() -> Policy {
    vm_policy(
        json!([{
            "name": "edge",
            "rules": [
                {"direction": "ingress", "protocol": "tcp", "ports": "23", "action": "reject"},
                {"direction": "ingress", "protocol": "udp", "ports": "161", "action": "reject"},
                {"direction": "ingress", "protocol": "icmp", "action": "reject"},
                {"direction": "ingress"},
                {"direction": "egress", "protocol": "tcp", "ports": "25", "action": "reject",
                 "priority": 10},
                {"direction": "egress", "protocol": "udp", "ports": "514", "action": "reject",
                 "priority": 10},
                {"direction": "egress"},
            ],
        }]),
        &["edge"],
    )
}

struct Port(TestPort);

impl Port {
    fn new() -> Port {
        let mut port = TestPort::new(SLOT, WithoutPolicy::Drop).expect("loading the programs");
        port.install(&policy(), "vm")
            .expect("installing the policy");
        Port(port)
    }

    /// Runs the frame of `packet`, checks that `outcome` counted it, and
    /// returns the verdict and the frame as the program left it.
    fn run(&self, direction: Direction, packet: &Packet, outcome: Outcome) -> (Forward, Vec<u8>) {
        self.0
            .run_counted(direction, &packet.frame().unwrap(), outcome)
    }
}

/// A packet between the workload and a peer, in `direction`.
fn packet(direction: Direction, v6: bool, transport: Transport) -> Packet {
    let (workload, peer) = if v6 {
        (WORKLOAD_V6, PEER_V6)
    } else {
        (WORKLOAD_V4, PEER_V4)
    };
    let ((src, src_mac), (dst, dst_mac)) = match direction {
        Direction::Egress => ((workload, WORKLOAD_MAC), (peer, PEER_MAC)),
        Direction::Ingress => ((peer, PEER_MAC), (workload, WORKLOAD_MAC)),
    };
    Packet {
        src_mac,
        dst_mac,
        vlans: Vec::new(),
        src: addr(src),
        dst: addr(dst),
        transport,
        payload_len: 0,
    }
}

fn tcp(dst_port: u16, flags: TcpFlags) -> Transport {
    Transport::Tcp {
        src_port: 40000,
        dst_port,
        flags,
    }
}

/// The parts of a reply frame, with its checksums verified.
struct Reply {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    /// The transport header and what follows it.
    transport: Vec<u8>,
}

/// Ones'-complement sum of parts of even length (the last may be odd).
fn sum(parts: &[&[u8]]) -> u16 {
    ones_complement_sum(&parts.concat())
}

fn parse_reply(frame: &[u8], vlans: usize) -> Reply {
    let l3 = 14 + 4 * vlans;
    let ip = &frame[l3..];
    let (src, dst, protocol, header, length) = match ip[0] >> 4 {
        4 => {
            assert_eq!(ip[0], 0x45, "a 20-byte IPv4 header");
            assert_eq!(sum(&[&ip[..20]]), 0xffff, "IPv4 header checksum");
            let src: [u8; 4] = ip[12..16].try_into().unwrap();
            let dst: [u8; 4] = ip[16..20].try_into().unwrap();
            let length = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            (IpAddr::from(src), IpAddr::from(dst), ip[9], 20, length)
        }
        6 => {
            let src: [u8; 16] = ip[8..24].try_into().unwrap();
            let dst: [u8; 16] = ip[24..40].try_into().unwrap();
            let length = 40 + u16::from_be_bytes([ip[4], ip[5]]) as usize;
            (IpAddr::from(src), IpAddr::from(dst), ip[6], 40, length)
        }
        version => panic!("IP version {version}"),
    };
    assert_eq!(length, ip.len(), "the IP length is the frame's");
    let transport = ip[header..].to_vec();
    let pseudo: Vec<u8> = match (src, dst) {
        // ICMP's checksum has no pseudo-header.
        (IpAddr::V4(_), _) if protocol == 1 => Vec::new(),
        (IpAddr::V4(s), IpAddr::V4(d)) => [
            &s.octets()[..],
            &d.octets(),
            &[0, protocol],
            &(transport.len() as u16).to_be_bytes(),
        ]
        .concat(),
        (IpAddr::V6(s), IpAddr::V6(d)) => [
            &s.octets()[..],
            &d.octets(),
            &(transport.len() as u32).to_be_bytes(),
            &[0, 0, 0, protocol],
        ]
        .concat(),
        _ => unreachable!(),
    };
    assert_eq!(sum(&[&pseudo, &transport]), 0xffff, "transport checksum");
    Reply {
        dst_mac: frame[..6].try_into().unwrap(),
        src_mac: frame[6..12].try_into().unwrap(),
        src,
        dst,
        protocol,
        transport,
    }
}

/// Checks that the reply goes from where the packet went to where it came
/// from, on the same VLANs.
fn check_addressed_back(reply: &Reply, packet: &Packet, frame: &[u8]) {
    assert_eq!(
        (reply.src_mac, reply.dst_mac),
        (packet.dst_mac, packet.src_mac)
    );
    assert_eq!((reply.src, reply.dst), (packet.dst, packet.src));
    let original = packet.frame().unwrap();
    let tags = 4 * packet.vlans.len();
    assert_eq!(frame[12..14 + tags], original[12..14 + tags], "VLAN tags");
}

#[test]
fn a_rejected_tcp_connection_gets_a_reset_in_both_directions() {
    require_root!();
    let port = Port::new();
    for v6 in [false, true] {
        for (direction, service) in [(Direction::Ingress, 23), (Direction::Egress, 25)] {
            for vlans in [vec![], vec![7], vec![7, 8]] {
                let mut syn = packet(direction, v6, tcp(service, TcpFlags::SYN));
                syn.vlans = vlans;
                let what = format!("{direction:?} v6={v6} vlans={:?}", syn.vlans);
                let (forward, frame) = port.run(direction, &syn, Outcome::Reject);
                assert_eq!(forward, Forward::Reply, "{what}");
                let reply = parse_reply(&frame, syn.vlans.len());
                check_addressed_back(&reply, &syn, &frame);
                assert_eq!(reply.protocol, 6, "{what}");
                let t = &reply.transport;
                assert_eq!(t.len(), 20, "{what}: a bare TCP header");
                assert_eq!(u16::from_be_bytes([t[0], t[1]]), service);
                assert_eq!(u16::from_be_bytes([t[2], t[3]]), 40000);
                assert_eq!(t[4..8], [0; 4], "{what}: sequence number");
                // The SYN had sequence number 1 and takes one.
                assert_eq!(t[8..12], 2u32.to_be_bytes(), "{what}: acknowledges the SYN");
                assert_eq!(t[13], 0x14, "{what}: RST and ACK");
            }
        }
    }
}

#[test]
fn a_rejected_segment_with_an_ack_gets_a_reset_at_its_ack() {
    require_root!();
    let port = Port::new();
    let ack = TcpFlags {
        ack: true,
        ..TcpFlags::default()
    };
    for v6 in [false, true] {
        let mut segment = packet(Direction::Ingress, v6, tcp(23, ack));
        segment.payload_len = 700;
        let (forward, frame) = port.run(Direction::Ingress, &segment, Outcome::Reject);
        assert_eq!(forward, Forward::Reply);
        let reply = parse_reply(&frame, 0);
        check_addressed_back(&reply, &segment, &frame);
        let t = &reply.transport;
        assert_eq!(t.len(), 20);
        // The frame builder acknowledges 1.
        assert_eq!(t[4..8], 1u32.to_be_bytes(), "sequence number = their ack");
        assert_eq!(t[13], 0x04, "RST alone");
    }
}

#[test]
fn other_rejected_packets_get_an_administratively_prohibited_error() {
    require_root!();
    let port = Port::new();
    let udp = |dst_port| Transport::Udp {
        src_port: 40000,
        dst_port,
    };
    let cases = [
        (Direction::Ingress, false, udp(161), 0),
        (Direction::Ingress, false, udp(161), 1000),
        (Direction::Egress, false, udp(514), 3),
        (Direction::Ingress, true, udp(161), 1000),
        (Direction::Egress, true, udp(514), 1),
        (
            Direction::Ingress,
            false,
            Transport::Icmp { type_: 8, code: 0 },
            56,
        ),
    ];
    for (direction, v6, transport, payload_len) in cases {
        for vlans in [vec![], vec![7]] {
            let mut sent = packet(direction, v6, transport);
            sent.payload_len = payload_len;
            sent.vlans = vlans;
            let what = format!("{direction:?} v6={v6} {transport:?} + {payload_len}");
            let (forward, frame) = port.run(direction, &sent, Outcome::Reject);
            assert_eq!(forward, Forward::Reply, "{what}");
            let reply = parse_reply(&frame, sent.vlans.len());
            check_addressed_back(&reply, &sent, &frame);
            let t = &reply.transport;
            let (protocol, kind) = if v6 { (58, [1, 1]) } else { (1, [3, 13]) };
            assert_eq!(reply.protocol, protocol, "{what}");
            assert_eq!(t[..2], kind, "{what}: type and code");
            assert_eq!(t[4..8], [0; 4], "{what}: unused");
            // The quote: the packet from its IP header, cut at 256 bytes
            // and to whole 16-bit words.
            let original = sent.frame().unwrap();
            let ip = &original[14 + 4 * sent.vlans.len()..];
            let quoted = ip.len().min(256) & !1;
            assert_eq!(t[8..], ip[..quoted], "{what}: the quote");
        }
    }
}

#[test]
fn packets_that_may_get_no_reply_are_dropped() {
    require_root!();
    let port = Port::new();
    let rst = TcpFlags {
        rst: true,
        ..TcpFlags::default()
    };
    let mut multicast = packet(
        Direction::Egress,
        false,
        Transport::Udp {
            src_port: 40000,
            dst_port: 514,
        },
    );
    multicast.dst = addr("224.0.0.251");
    let mut multicast6 = packet(
        Direction::Egress,
        true,
        Transport::Udp {
            src_port: 40000,
            dst_port: 514,
        },
    );
    multicast6.dst = addr("ff02::fb");
    let cases = [
        packet(Direction::Ingress, false, tcp(23, rst)),
        packet(Direction::Ingress, true, tcp(23, rst)),
        packet(
            Direction::Ingress,
            false,
            Transport::Icmp { type_: 3, code: 1 },
        ),
        multicast,
        multicast6,
    ];
    for sent in cases {
        let direction = if addr(WORKLOAD_V4) == sent.src || addr(WORKLOAD_V6) == sent.src {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let (forward, _) = port.run(direction, &sent, Outcome::DropRule);
        assert_eq!(forward, Forward::Drop, "{sent:?}");
    }
}

#[test]
fn neighbour_discovery_passes_whatever_the_rules() {
    require_root!();
    let mut port = TestPort::new(SLOT, WithoutPolicy::Drop).expect("loading the programs");
    let mut closed = policy();
    closed.groups[0].rules.clear();
    port.install(&closed, "vm").unwrap();
    let port = Port(port);
    for direction in Direction::ALL {
        for type_ in [133, 134, 135, 136, 143] {
            let mut nd = packet(direction, true, Transport::Icmp { type_, code: 0 });
            // A solicitation or advertisement carries its target.
            nd.payload_len = 16;
            let (forward, _) = port.run(direction, &nd, Outcome::PassNeighbourDiscovery);
            assert_eq!(forward, Forward::Pass, "{direction:?} ICMPv6 type {type_}");
        }
        let echo = packet(
            direction,
            true,
            Transport::Icmp {
                type_: 128,
                code: 0,
            },
        );
        let (forward, _) = port.run(direction, &echo, Outcome::DropDefault);
        assert_eq!(forward, Forward::Drop, "{direction:?} echo request");
    }
}

const WAIT: Duration = Duration::from_secs(2);

/// What a TCP connection attempt from `client` to a listener on `to` (in
/// `server`) ends with.
fn connect(
    client: &sg_tests::Netns,
    server: &sg_tests::Netns,
    to: IpAddr,
    port: u16,
) -> Result<std::result::Result<(), ErrorKind>> {
    let listener = server.within(move || Ok(TcpListener::bind((to, port))?))?;
    let target = listener.local_addr()?;
    client.within(move || {
        Ok(TcpStream::connect_timeout(&target, WAIT)
            .map(drop)
            .map_err(|e| e.kind()))
    })
}

#[test]
fn a_rejected_connection_is_refused_at_once_in_both_directions() {
    require_root!();
    // Native XDP sends its replies through the TC ingress program of the
    // veth, generic XDP with XDP_TX.
    for mode in ["native", "generic"] {
        refused_through_veth(mode)
            .map_err(|e| e.context(format!("XDP mode {mode}")))
            .unwrap();
    }
}

fn refused_through_veth(mode: &str) -> Result<()> {
    let port = VethPort::new()?;
    let pins = TestPins::new();
    pins.sg_ctl_ok(&[
        "--netns",
        port.host.name(),
        "attach",
        "--xdp-mode",
        mode,
        PORT,
    ])?;
    pins.install(PORT, &policy(), "vm")?;

    for (workload, host) in [(WORKLOAD_V4, HOST_V4), (WORKLOAD_V6, HOST_V6)] {
        let (workload, host) = (addr(workload), addr(host));
        // Into the workload: the RST comes from sg's TC program, not from
        // the workload, whose listener would accept.
        assert_eq!(connect(&port.host, &port.workload, workload, 80)?, Ok(()));
        assert_eq!(
            connect(&port.host, &port.workload, workload, 23)?,
            Err(ErrorKind::ConnectionRefused),
            "telnet to {workload}"
        );
        // Out of the workload: the RST comes from sg's XDP program.
        assert_eq!(
            connect(&port.workload, &port.host, host, 25)?,
            Err(ErrorKind::ConnectionRefused),
            "SMTP to {host}"
        );
        // UDP: the sender's socket hears of the ICMP error.
        let socket = port.host.within(move || {
            let socket = UdpSocket::bind((host, 0))?;
            socket.connect((workload, 161))?;
            Ok(socket)
        })?;
        socket.set_read_timeout(Some(WAIT))?;
        socket.send(b"get")?;
        let error = socket.recv(&mut [0u8; 16]).unwrap_err();
        let expected = if workload.is_ipv4() {
            libc::EHOSTUNREACH
        } else {
            libc::EACCES
        };
        assert_eq!(
            error.raw_os_error(),
            Some(expected),
            "SNMP to {workload}: {error}"
        );
    }
    assert!(pins.counter(PORT, "ingress", "reject")? >= 4);
    assert!(pins.counter(PORT, "egress", "reject")? >= 2);
    Ok(())
}

#[test]
fn a_guest_behind_a_tap_gets_its_reset() {
    require_root!();
    let mut tap = TapPort::new().unwrap();
    let pins = TestPins::new();
    pins.sg_ctl_ok(&["--netns", tap.host.name(), "attach", PORT])
        .unwrap();
    pins.install(PORT, &policy(), "vm").unwrap();
    for (from, to) in [(WORKLOAD_V4, HOST_V4), (WORKLOAD_V6, HOST_V6)] {
        let syn = Packet {
            src_mac: GUEST_MAC,
            dst_mac: tap.host_mac,
            vlans: Vec::new(),
            src: addr(from),
            dst: addr(to),
            transport: tcp(25, TcpFlags::SYN),
            payload_len: 0,
        };
        tap.guest.send(&syn.frame().unwrap()).unwrap();
        let reset = tap
            .guest
            .receive(WAIT, |frame| {
                let l4 = frame.len().saturating_sub(20);
                frame.len() >= 54 && frame[l4 + 13] == 0x14
            })
            .unwrap();
        let reset = reset.unwrap_or_else(|| panic!("no RST for the SYN to {to}"));
        let reply = parse_reply(&reset, 0);
        check_addressed_back(&reply, &syn, &reset);
    }
    assert_eq!(pins.counter(PORT, "egress", "reject").unwrap(), 2);
}
