//! Connection tracking on crafted frames through BPF_PROG_TEST_RUN: the
//! TCP state machine, replies that pass whatever the other direction's
//! rules say, ICMP errors related to a flow, a policy change that revokes
//! a flow, expiry, the tracer, a full table, a port at its limit of flows,
//! unreplied flows making room and expiring early.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, MapData};
use sg_common::{
    ConntrackEntry, ConntrackKey, Direction, MAX_CONNTRACK_ENTRIES, Outcome, PresenceCounters,
    map_names,
};
use sg_core::settings;
use sg_ctl::{
    datapath::{
        Forward, MapSizes, WithoutPolicy,
        conntrack::{Flow, FlowFilter},
    },
    frame::{Packet, TcpFlags, Transport},
};
use sg_tests::{
    TestPort, addr, dns_ping_http_policy as policy, require_root, set_echo_id, vm_policy,
};

const SLOT: u32 = 5;
const WORKLOAD: &str = "198.18.0.2";
const PEER: &str = "198.18.1.1";
const WORKLOAD6: &str = "2001:db8::2";
const PEER6: &str = "2001:db8:1::1";

struct Port(TestPort);

impl Port {
    fn new() -> Port {
        Port::with_sizes(MapSizes::default())
    }

    fn with_sizes(sizes: MapSizes) -> Port {
        let mut port =
            TestPort::with_sizes(SLOT, WithoutPolicy::Drop, sizes).expect("loading the programs");
        port.install(&policy(true), "vm").expect("installing");
        Port(port)
    }

    /// The flows the port holds, as its count says.
    fn count(&self) -> u64 {
        self.0.datapath.port_flows(SLOT).unwrap().flows
    }

    /// Runs the frame; checks the verdict and the outcome it was counted as.
    fn check(&self, direction: Direction, packet: &Packet, want: Forward, outcome: Outcome) {
        let frame = packet.frame().unwrap();
        self.check_frame(direction, &frame, want, outcome);
    }

    fn check_frame(&self, direction: Direction, frame: &[u8], want: Forward, outcome: Outcome) {
        self.0.check(direction, frame, want, outcome);
    }

    fn flows(&self) -> Vec<Flow> {
        self.0.datapath.flows(&FlowFilter::default()).unwrap()
    }
}

fn tcp(direction: Direction, v6: bool, ports: (u16, u16), flags: TcpFlags) -> Packet {
    let (workload, peer) = ends(v6);
    // `ports`: the workload's, the peer's.
    let (src, dst, src_port, dst_port) = match direction {
        Direction::Egress => (workload, peer, ports.0, ports.1),
        Direction::Ingress => (peer, workload, ports.1, ports.0),
    };
    Packet::tcp(src, dst, src_port, dst_port, flags)
}

fn udp(direction: Direction, v6: bool, ports: (u16, u16)) -> Packet {
    let (workload, peer) = ends(v6);
    match direction {
        Direction::Egress => Packet::udp(workload, peer, ports.0, ports.1),
        Direction::Ingress => Packet::udp(peer, workload, ports.1, ports.0),
    }
}

fn icmp(direction: Direction, v6: bool, type_: u8) -> Packet {
    let mut packet = udp(direction, v6, (0, 0));
    packet.transport = Transport::Icmp { type_, code: 0 };
    packet
}

fn ends(v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        (addr(WORKLOAD6), addr(PEER6))
    } else {
        (addr(WORKLOAD), addr(PEER))
    }
}

const SYN: TcpFlags = TcpFlags::SYN;
const SYN_ACK: TcpFlags = TcpFlags {
    syn: true,
    ack: true,
    fin: false,
    rst: false,
};
const ACK: TcpFlags = TcpFlags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
};
const FIN_ACK: TcpFlags = TcpFlags {
    syn: false,
    ack: true,
    fin: true,
    rst: false,
};
const RST: TcpFlags = TcpFlags {
    syn: false,
    ack: false,
    fin: false,
    rst: true,
};

const HTTP: (u16, u16) = (80, 40000);

/// SYN in, SYN-ACK out, ACK in: the handshake of a connection to the
/// workload's port 80.
fn handshake(port: &Port, v6: bool) {
    let (i, e) = (Direction::Ingress, Direction::Egress);
    port.check(i, &tcp(i, v6, HTTP, SYN), Forward::Pass, Outcome::Pass);
    port.check(
        e,
        &tcp(e, v6, HTTP, SYN_ACK),
        Forward::Pass,
        Outcome::PassEstablished,
    );
    port.check(
        i,
        &tcp(i, v6, HTTP, ACK),
        Forward::Pass,
        Outcome::PassEstablished,
    );
}

#[test]
fn a_tcp_connection_passes_both_ways_on_an_ingress_rule_and_closes_with_fins() {
    require_root!();
    let port = Port::new();
    let (i, e) = (Direction::Ingress, Direction::Egress);
    for v6 in [false, true] {
        handshake(&port, v6);
        let flows = port.flows();
        assert_eq!(flows.len(), 1, "{flows:?}");
        let flow = &flows[0];
        assert_eq!(
            (
                flow.state.name(),
                flow.origin.as_str(),
                flow.ends.protocol.as_str()
            ),
            ("established", "ingress", "tcp")
        );
        assert_eq!(flow.ends.local, ends(v6).0);
        assert_eq!(
            (flow.ends.local_port, flow.ends.remote_port),
            (Some(80), Some(40000))
        );
        assert_eq!((flow.packets_ingress, flow.packets_egress), (2, 1));
        port.check(
            e,
            &tcp(e, v6, HTTP, ACK),
            Forward::Pass,
            Outcome::PassEstablished,
        );
        port.check(
            e,
            &tcp(e, v6, HTTP, FIN_ACK),
            Forward::Pass,
            Outcome::PassEstablished,
        );
        assert_eq!(port.flows()[0].state.name(), "fin-wait");
        port.check(
            i,
            &tcp(i, v6, HTTP, FIN_ACK),
            Forward::Pass,
            Outcome::PassEstablished,
        );
        assert_eq!(port.flows()[0].state.name(), "time-wait");
        port.check(
            e,
            &tcp(e, v6, HTTP, ACK),
            Forward::Pass,
            Outcome::PassEstablished,
        );
        // A new connection on the same ports starts over.
        port.check(i, &tcp(i, v6, HTTP, SYN), Forward::Pass, Outcome::Pass);
        assert_eq!(port.flows()[0].state.name(), "syn-sent");
        port.0.datapath.flush_flows(&FlowFilter::default()).unwrap();
    }
}

#[test]
fn unsolicited_and_stray_tcp_is_dropped() {
    require_root!();
    let port = Port::new();
    let (i, e) = (Direction::Ingress, Direction::Egress);
    for v6 in [false, true] {
        // An ACK scan of the open port: no flow, invalid.
        port.check(
            i,
            &tcp(i, v6, HTTP, ACK),
            Forward::Drop,
            Outcome::DropInvalid,
        );
        // Another port: the policy's default.
        port.check(
            i,
            &tcp(i, v6, (22, 40000), SYN),
            Forward::Drop,
            Outcome::DropDefault,
        );
        // A SYN-ACK of no flow from the workload: no egress rule for it.
        port.check(
            e,
            &tcp(e, v6, HTTP, SYN_ACK),
            Forward::Drop,
            Outcome::DropDefault,
        );
        // Before the SYN-ACK, the client's ACK does not fit the flow.
        port.check(i, &tcp(i, v6, HTTP, SYN), Forward::Pass, Outcome::Pass);
        port.check(
            i,
            &tcp(i, v6, HTTP, ACK),
            Forward::Drop,
            Outcome::DropInvalid,
        );
        port.0.datapath.flush_flows(&FlowFilter::default()).unwrap();
    }
    assert!(port.flows().is_empty());
}

#[test]
fn a_reset_ends_the_flow() {
    require_root!();
    let port = Port::new();
    let (i, e) = (Direction::Ingress, Direction::Egress);
    for v6 in [false, true] {
        handshake(&port, v6);
        port.check(
            e,
            &tcp(e, v6, HTTP, RST),
            Forward::Pass,
            Outcome::PassEstablished,
        );
        assert!(port.flows().is_empty());
        port.check(
            i,
            &tcp(i, v6, HTTP, ACK),
            Forward::Drop,
            Outcome::DropInvalid,
        );
    }
}

#[test]
fn udp_and_ping_replies_pass_on_egress_rules() {
    require_root!();
    let port = Port::new();
    let (i, e) = (Direction::Ingress, Direction::Egress);
    for v6 in [false, true] {
        let dns = (40000, 53);
        port.check(e, &udp(e, v6, dns), Forward::Pass, Outcome::Pass);
        port.check(i, &udp(i, v6, dns), Forward::Pass, Outcome::PassEstablished);
        // From another port of the server: no flow, no rule.
        port.check(
            i,
            &udp(i, v6, (40000, 54)),
            Forward::Drop,
            Outcome::DropDefault,
        );
        let (request, reply) = if v6 { (128, 129) } else { (8, 0) };
        // A reply before any request: no rule allows it.
        port.check(i, &icmp(i, v6, reply), Forward::Drop, Outcome::DropDefault);
        port.check(e, &icmp(e, v6, request), Forward::Pass, Outcome::Pass);
        port.check(
            i,
            &icmp(i, v6, reply),
            Forward::Pass,
            Outcome::PassEstablished,
        );
    }
    let flows = port.flows();
    assert_eq!(flows.len(), 4, "{flows:?}");
    assert!(
        flows
            .iter()
            .all(|f| f.state.name() == "replied" && f.origin == "egress")
    );
    let ping = flows.iter().find(|f| f.ends.protocol == "icmp").unwrap();
    // Echo's identifier, as the frame builder sets it.
    assert_eq!(
        (
            ping.ends.local_port,
            ping.ends.remote_port,
            ping.ends.icmp_id
        ),
        (None, None, Some(1))
    );
}

/// An ICMP error toward the workload about `quoted`, a packet it sent.
fn error_about(v6: bool, type_: u8, code: u8, quoted: &Packet) -> Vec<u8> {
    error_about_frame(v6, type_, code, &quoted.frame().unwrap())
}

/// The same about the packet of an untagged frame.
fn error_about_frame(v6: bool, type_: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let quoted = &quoted[14..];
    let mut error = icmp(Direction::Ingress, v6, type_);
    error.transport = Transport::Icmp { type_, code };
    error.payload_len = quoted.len();
    let mut frame = error.frame().unwrap();
    let at = frame.len() - quoted.len();
    frame[at..].copy_from_slice(quoted);
    frame
}

#[test]
fn icmp_errors_about_a_tracked_flow_pass_as_related() {
    require_root!();
    let port = Port::new();
    let (i, e) = (Direction::Ingress, Direction::Egress);
    for v6 in [false, true] {
        // Fragmentation needed / packet too big, and port unreachable.
        let errors: [(u8, u8); 2] = if v6 {
            [(2, 0), (1, 4)]
        } else {
            [(3, 4), (3, 3)]
        };
        let dns = udp(e, v6, (40000, 53));
        port.check(e, &dns, Forward::Pass, Outcome::Pass);
        for (type_, code) in errors {
            let frame = error_about(v6, type_, code, &dns);
            port.check_frame(i, &frame, Forward::Pass, Outcome::PassRelated);
            // About a flow there is not: the policy has no rule for it.
            let frame = error_about(v6, type_, code, &udp(e, v6, (40001, 53)));
            port.check_frame(i, &frame, Forward::Drop, Outcome::DropDefault);
        }
        // About a tracked TCP connection, to the server's side.
        handshake(&port, v6);
        let frame = error_about(v6, errors[0].0, errors[0].1, &tcp(e, v6, HTTP, ACK));
        port.check_frame(i, &frame, Forward::Pass, Outcome::PassRelated);
    }
}

/// An echo request or reply of `code` and identifier `id`.
fn echo(direction: Direction, v6: bool, type_: u8, code: u8, id: u16) -> Vec<u8> {
    let mut packet = icmp(direction, v6, type_);
    packet.transport = Transport::Icmp { type_, code };
    let mut frame = packet.frame().unwrap();
    set_echo_id(&mut frame, id);
    frame
}

#[test]
fn echo_flows_are_keyed_by_type_code_and_identifier() {
    require_root!();
    let mut port = TestPort::new(SLOT, WithoutPolicy::Drop).expect("loading the programs");
    // Only echo requests of code 0 from the peer, nothing out.
    port.install(
        &vm_policy(
            serde_json::json!([{"name": "ping", "rules": [
                {"direction": "ingress", "protocol": "icmp", "icmp": {"type": 8, "code": 0},
                 "remote": format!("{PEER}/32")},
                {"direction": "ingress", "protocol": "ipv6-icmp",
                 "icmp": {"type": 128, "code": 0}, "remote": format!("{PEER6}/128")},
            ]}]),
            &["ping"],
        ),
        "vm",
    )
    .unwrap();
    let port = Port(port);
    let (i, e) = (Direction::Ingress, Direction::Egress);
    let (pass, drop) = (Forward::Pass, Forward::Drop);
    for v6 in [false, true] {
        let (request, reply, other_code) = if v6 { (128, 129, 4) } else { (8, 0, 1) };
        let check = |direction, frame: Vec<u8>, want, outcome| {
            port.check_frame(direction, &frame, want, outcome);
        };
        check(i, echo(i, v6, request, 0, 7), pass, Outcome::Pass);
        check(e, echo(e, v6, reply, 0, 7), pass, Outcome::PassEstablished);
        check(
            i,
            echo(i, v6, request, 0, 7),
            pass,
            Outcome::PassEstablished,
        );
        // A request of another code: its own flow, which no rule allows.
        check(
            i,
            echo(i, v6, request, other_code, 7),
            drop,
            Outcome::DropDefault,
        );
        // A reply going the request's way.
        check(i, echo(i, v6, reply, 0, 7), drop, Outcome::DropDefault);
        // Replies of another code or identifier.
        check(
            e,
            echo(e, v6, reply, other_code, 7),
            drop,
            Outcome::DropDefault,
        );
        check(e, echo(e, v6, reply, 0, 8), drop, Outcome::DropDefault);
        // The workload's own request with the peer's identifier: another
        // flow, which no rule allows.
        check(e, echo(e, v6, request, 0, 7), drop, Outcome::DropDefault);
        // An error about the workload's reply is related to the flow; about
        // a reply of another code it is not.
        let (unreachable, code) = if v6 { (1, 0) } else { (3, 1) };
        for (quoted_code, outcome) in [
            (0, Outcome::PassRelated),
            (other_code, Outcome::DropDefault),
        ] {
            let quoted = echo(e, v6, reply, quoted_code, 7);
            let frame = error_about_frame(v6, unreachable, code, &quoted);
            let want = if outcome.is_drop() { drop } else { pass };
            check(i, frame, want, outcome);
        }
    }
    let flows = port.flows();
    // (Both started within one tick of the coarse clock: in either order.)
    let mut labels: Vec<String> = flows.iter().map(|f| f.ends.protocol_label()).collect();
    labels.sort();
    assert_eq!(labels, ["icmp id 7", "ipv6-icmp id 7"], "{flows:?}");
    assert!(flows.iter().all(|f| f.origin == "ingress"), "{flows:?}");
}

#[test]
fn a_policy_that_no_longer_allows_a_flow_revokes_it() {
    require_root!();
    let mut port = Port::new();
    let (i, e) = (Direction::Ingress, Direction::Egress);
    handshake(&port, false);
    let dns = (40000, 53);
    port.check(e, &udp(e, false, dns), Forward::Pass, Outcome::Pass);
    let before = port.flows();
    // Without port 80: the connection ends on its client's next packet.
    port.0.install(&policy(false), "vm").unwrap();
    // The server's side passes until then.
    port.check(
        e,
        &tcp(e, false, HTTP, ACK),
        Forward::Pass,
        Outcome::PassEstablished,
    );
    port.check(
        i,
        &tcp(i, false, HTTP, ACK),
        Forward::Drop,
        Outcome::DropRevoked,
    );
    port.check(
        e,
        &tcp(e, false, HTTP, ACK),
        Forward::Drop,
        Outcome::DropDefault,
    );
    // The DNS flow is still allowed: checked once, it goes on under the
    // new policy.
    port.check(
        e,
        &udp(e, false, dns),
        Forward::Pass,
        Outcome::PassEstablished,
    );
    let after = port.flows();
    assert_eq!(after.len(), 1, "{after:?}");
    let dns_before = before.iter().find(|f| f.ends.protocol == "udp").unwrap();
    assert_ne!(after[0].policy, dns_before.policy, "the new policy's id");
}

#[test]
fn idle_flows_expire_by_their_timeouts() {
    require_root!();
    let port = Port::new();
    let (i, e) = (Direction::Ingress, Direction::Egress);
    // Unreplied, the UDP flows go by the unreplied timeout.
    let timeouts = settings::ConntrackTimeouts {
        unreplied: 1,
        ..Default::default()
    };
    port.0.datapath.set_conntrack_timeouts(&timeouts).unwrap();
    let (dns, other) = ((40000, 53), (40001, 53));
    port.check(e, &udp(e, false, dns), Forward::Pass, Outcome::Pass);
    port.check(e, &udp(e, false, other), Forward::Pass, Outcome::Pass);
    handshake(&port, false);
    assert_eq!(port.0.datapath.expire_flows().unwrap(), 0);
    std::thread::sleep(Duration::from_millis(2100));
    // The datapath no longer knows the flow, before any expiry: the reply
    // is a new flow, which no rule allows.
    port.check(i, &udp(i, false, dns), Forward::Drop, Outcome::DropDefault);
    // Expiry removes the other (the first is gone already).
    assert_eq!(port.0.datapath.expire_flows().unwrap(), 1);
    // The events: three flows new, the one its packet found idle expired
    // (expiry's removals have none).
    let mut events = Vec::new();
    let mut ring = port.0.datapath.flow_events().unwrap();
    // All are in the ring already: take them as they are read, then make
    // sure that no other follows.
    let until = Instant::now() + Duration::from_secs(5);
    ring.watch(Some(until), |event| {
        events.push((event.event, event.ends.protocol, event.ends.local_port));
        Ok(events.len() < 4)
    })
    .unwrap();
    ring.watch(Some(Instant::now()), |event| {
        events.push((event.event, event.ends.protocol, event.ends.local_port));
        Ok(true)
    })
    .unwrap();
    let udp = |port| ("udp".to_string(), Some(port));
    let tcp = ("tcp".to_string(), Some(80));
    let events: Vec<_> = events
        .into_iter()
        .map(|(kind, protocol, port)| (kind, (protocol, port)))
        .collect();
    assert_eq!(
        events,
        [
            ("new", udp(40000)),
            ("new", udp(40001)),
            ("new", tcp.clone()),
            ("expired", udp(40000)),
        ]
    );
    let flows = port.flows();
    assert_eq!(flows.len(), 1, "the TCP connection stays: {flows:?}");
    assert_eq!(flows[0].ends.protocol, "tcp");
}

#[test]
fn the_tracer_leaves_the_table_alone() {
    require_root!();
    let port = Port::new();
    let mut tracer = port.0.datapath.tracer(SLOT).unwrap();
    let i = Direction::Ingress;
    let syn = tcp(i, false, HTTP, SYN).frame().unwrap();
    let (forward, _, record) = tracer.trace(i, &syn).unwrap();
    assert_eq!(forward, Forward::Pass);
    assert_eq!(record.outcome, Outcome::Pass as u32);
    assert!(port.flows().is_empty());
    // Nor does it use the flows there are: it says what the policy says.
    handshake(&port, false);
    let syn_ack = tcp(Direction::Egress, false, HTTP, SYN_ACK)
        .frame()
        .unwrap();
    let (forward, _, record) = tracer.trace(Direction::Egress, &syn_ack).unwrap();
    assert_eq!(forward, Forward::Drop);
    assert_eq!(record.outcome, Outcome::DropDefault as u32);
    assert_eq!(port.flows()[0].packets_egress, 1);
}

#[test]
fn a_full_table_drops_new_flows_and_keeps_the_tracked_ones() {
    require_root!();
    let port = Port::new();
    let (i, e) = (Direction::Ingress, Direction::Egress);
    handshake(&port, false);
    // The rest of the table taken by flows of another slot.
    let mut table: HashMap<MapData, ConntrackKey, ConntrackEntry> =
        port.0.pins().open(map_names::CONNTRACK).unwrap();
    let entry = ConntrackEntry {
        first_seen: 0,
        last_seen: u64::MAX / 2,
        packets: [0; 2],
        bytes: [0; 2],
        policy: 0,
        state: 0,
        origin: 0,
        fins: 0,
        _pad: 0,
    };
    let started = Instant::now();
    let mut filled = 1;
    for n in 0..MAX_CONNTRACK_ENTRIES {
        let mut remote = [0u8; 16];
        remote[12..].copy_from_slice(&n.to_be_bytes());
        let key = ConntrackKey {
            slot: SLOT + 1,
            protocol: 17,
            family: 6,
            local_port: [0; 2],
            remote_port: [0; 2],
            _pad: [0; 2],
            local: [0; 16],
            remote,
        };
        if table.insert(key, entry, 0).is_err() {
            break;
        }
        filled += 1;
        assert!(started.elapsed() < Duration::from_secs(60), "filling");
    }
    assert_eq!(filled, MAX_CONNTRACK_ENTRIES);
    port.check(
        i,
        &tcp(i, false, (80, 40001), SYN),
        Forward::Drop,
        Outcome::DropConntrackFull,
    );
    port.check(
        e,
        &udp(e, true, (40000, 53)),
        Forward::Drop,
        Outcome::DropConntrackFull,
    );
    port.check(
        e,
        &tcp(e, false, HTTP, ACK),
        Forward::Pass,
        Outcome::PassEstablished,
    );
    let stats = port.0.datapath.conntrack_stats().unwrap();
    assert_eq!(
        (stats.entries, stats.capacity, stats.full),
        (MAX_CONNTRACK_ENTRIES as usize, MAX_CONNTRACK_ENTRIES, 2)
    );
    let filter = FlowFilter {
        slot: Some(SLOT + 1),
        ..FlowFilter::default()
    };
    assert_eq!(
        port.0.datapath.flush_flows(&filter).unwrap(),
        MAX_CONNTRACK_ENTRIES as usize - 1
    );
    port.check(
        i,
        &tcp(i, false, (80, 40001), SYN),
        Forward::Pass,
        Outcome::Pass,
    );
}

/// A flow of another IP protocol, without ports.
fn raw(direction: Direction, protocol: u8) -> Packet {
    let mut packet = udp(direction, false, (0, 0));
    packet.transport = Transport::Other { protocol };
    packet
}

#[test]
fn a_port_at_its_limit_drops_its_own_new_flows_and_no_other_port_s() {
    require_root!();
    let port = Port::new();
    let (i, e) = (Direction::Ingress, Direction::Egress);
    port.0.datapath.set_flow_limit(SLOT, 3).unwrap();
    handshake(&port, false);
    port.check(e, &udp(e, false, (40000, 53)), Forward::Pass, Outcome::Pass);
    port.check(e, &udp(e, true, (40000, 53)), Forward::Pass, Outcome::Pass);
    assert_eq!(port.count(), 3);
    // Full: its new flows are dropped, whichever way they start.
    let full = Outcome::DropConntrackPortFull;
    port.check(e, &udp(e, false, (40001, 53)), Forward::Drop, full);
    port.check(i, &tcp(i, false, (80, 40001), SYN), Forward::Drop, full);
    // Its tracked flows go on, both ways.
    let established = Outcome::PassEstablished;
    port.check(i, &udp(i, false, (40000, 53)), Forward::Pass, established);
    port.check(e, &tcp(e, false, HTTP, ACK), Forward::Pass, established);
    assert_eq!(port.count(), 3);
    assert_eq!(port.flows().len(), 3);
    // Another port on the same table starts its flows.
    let (other, _) = port.0.neighbour(SLOT + 1, &policy(true), "vm").unwrap();
    let frame = udp(e, false, (40001, 53)).frame().unwrap();
    assert_eq!(other.run(e, &frame).unwrap(), Forward::Pass);
    assert_eq!(port.0.datapath.port_flows(SLOT + 1).unwrap().flows, 1);
    // An RST ends the connection, which leaves room for one.
    port.check(i, &tcp(i, false, HTTP, RST), Forward::Pass, established);
    port.check(e, &udp(e, false, (40001, 53)), Forward::Pass, Outcome::Pass);
    port.check(e, &udp(e, false, (40002, 53)), Forward::Drop, full);
    let stats = port.0.datapath.conntrack_stats().unwrap();
    assert_eq!((stats.entries, stats.port_full, stats.full), (4, 3, 0));
    // Flushed, the port has its room again; the other's flow stays.
    let flushed = port
        .0
        .datapath
        .flush_flows(&FlowFilter {
            slot: Some(SLOT),
            ..FlowFilter::default()
        })
        .unwrap();
    assert_eq!((flushed, port.count()), (3, 0));
    assert_eq!(port.0.datapath.port_flows(SLOT + 1).unwrap().flows, 1);
    // Back to the default limit.
    port.0.datapath.set_flow_limit(SLOT, 0).unwrap();
    let limit = port.0.datapath.port_flows(SLOT).unwrap().limit();
    assert_eq!(limit, sg_common::DEFAULT_FLOWS_PER_PORT);
}

#[test]
fn a_port_at_its_limit_takes_the_room_of_its_expired_flows_itself() {
    require_root!();
    let port = Port::new();
    let e = Direction::Egress;
    let timeouts = settings::ConntrackTimeouts {
        unreplied: 1,
        ..Default::default()
    };
    port.0.datapath.set_conntrack_timeouts(&timeouts).unwrap();
    port.0.datapath.set_flow_limit(SLOT, 2).unwrap();
    for local in [40000, 40001] {
        port.check(e, &udp(e, false, (local, 53)), Forward::Pass, Outcome::Pass);
    }
    let third = udp(e, false, (40002, 53));
    let full = Outcome::DropConntrackPortFull;
    port.check(e, &third, Forward::Drop, full);
    // Expired, with nothing removing them (no daemon, no `gc`): the next
    // new flow takes the room of one.
    std::thread::sleep(Duration::from_millis(2100));
    port.check(e, &third, Forward::Pass, Outcome::Pass);
    port.check(e, &udp(e, false, (40003, 53)), Forward::Pass, Outcome::Pass);
    assert_eq!(port.count(), 2);
    let mut locals: Vec<_> = port.flows().iter().map(|f| f.ends.local_port).collect();
    locals.sort();
    assert_eq!(locals, [Some(40002), Some(40003)]);
}

#[test]
fn a_full_table_gives_the_room_of_an_unreplied_flow_never_an_established_one() {
    require_root!();
    const ENTRIES: u32 = 64;
    let sizes = MapSizes::parse([format!("SG_CONNTRACK={ENTRIES}").as_str()]).unwrap();
    let port = Port::with_sizes(sizes);
    let (i, e) = (Direction::Ingress, Direction::Egress);
    handshake(&port, false);
    // One flow without a reply, then replied ones to fill the table.
    let unreplied = udp(e, false, (41000, 53));
    port.check(e, &unreplied, Forward::Pass, Outcome::Pass);
    for n in 0..ENTRIES as u16 - 2 {
        let ports = (40000 + n, 53);
        port.check(e, &udp(e, false, ports), Forward::Pass, Outcome::Pass);
        let reply = udp(i, false, ports);
        port.check(i, &reply, Forward::Pass, Outcome::PassEstablished);
    }
    let stats = port.0.datapath.conntrack_stats().unwrap();
    assert_eq!((stats.entries, stats.capacity), (64, ENTRIES));
    // A new flow takes the unreplied one's room.
    let newcomer = (42000, 53);
    port.check(e, &udp(e, false, newcomer), Forward::Pass, Outcome::Pass);
    let flows = port.flows();
    assert_eq!(flows.len(), ENTRIES as usize);
    assert!(!flows.iter().any(|f| f.ends.local_port == Some(41000)));
    // Replied to, every flow is established: the next new one is dropped,
    // and the established ones pass.
    port.check(
        i,
        &udp(i, false, newcomer),
        Forward::Pass,
        Outcome::PassEstablished,
    );
    let late = udp(e, false, (43000, 53));
    port.check(e, &late, Forward::Drop, Outcome::DropConntrackFull);
    port.check(
        e,
        &tcp(e, false, HTTP, ACK),
        Forward::Pass,
        Outcome::PassEstablished,
    );
    port.check(
        i,
        &udp(i, false, (40000, 53)),
        Forward::Pass,
        Outcome::PassEstablished,
    );
    assert_eq!(port.count(), u64::from(ENTRIES));
}

#[test]
fn unreplied_flows_expire_on_their_own_timeout_and_replied_ones_keep_theirs() {
    require_root!();
    let mut port = Port::new();
    let open = vm_policy(
        serde_json::json!([{"name": "out", "rules": [{"direction": "egress"}]}]),
        &["out"],
    );
    port.0.install(&open, "vm").unwrap();
    let (i, e) = (Direction::Ingress, Direction::Egress);
    let timeouts = settings::ConntrackTimeouts {
        unreplied: 1,
        ..Default::default()
    };
    port.0.datapath.set_conntrack_timeouts(&timeouts).unwrap();
    let established = Outcome::PassEstablished;
    // UDP and protocol 253, each once replied and once not.
    port.check(e, &udp(e, false, (40000, 53)), Forward::Pass, Outcome::Pass);
    port.check(i, &udp(i, false, (40000, 53)), Forward::Pass, established);
    port.check(e, &udp(e, false, (40001, 53)), Forward::Pass, Outcome::Pass);
    port.check(e, &raw(e, 253), Forward::Pass, Outcome::Pass);
    port.check(i, &raw(i, 253), Forward::Pass, established);
    port.check(e, &raw(e, 254), Forward::Pass, Outcome::Pass);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(port.0.datapath.expire_flows().unwrap(), 2);
    let mut left: Vec<_> = port
        .flows()
        .iter()
        .map(|f| (f.ends.protocol.clone(), f.state.name()))
        .collect();
    left.sort();
    let replied = |protocol: &str| (protocol.to_string(), "replied");
    assert_eq!(left, [replied("253"), replied("udp")]);
    assert_eq!(port.count(), 2);
}

/// Checks that the presence counters count the table's flows exactly:
/// each counter as many as the flows whose keys share it.
fn assert_presence_counts(port: &Port, when: &str) {
    let pins = port.0.pins();
    let table: HashMap<MapData, ConntrackKey, ConntrackEntry> =
        pins.open(map_names::CONNTRACK).unwrap();
    let presence: Array<MapData, PresenceCounters> =
        pins.open(map_names::CONNTRACK_PRESENCE).unwrap();
    let counters: Vec<u32> = presence.iter().flat_map(|c| c.unwrap()).collect();
    let mut want = vec![0; counters.len()];
    for key in table.keys() {
        want[key.unwrap().presence_index(counters.len() as u32) as usize] += 1;
    }
    let wrong: Vec<_> = (0..want.len())
        .filter(|&i| counters[i] != want[i])
        .map(|i| (i, counters[i], want[i]))
        .collect();
    assert!(wrong.is_empty(), "{when}: (counter, is, flows) {wrong:?}");
}

#[test]
fn presence_counters_count_the_flows_through_every_start_and_removal() {
    require_root!();
    let port = Port::new();
    let (i, e) = (Direction::Ingress, Direction::Egress);
    assert_presence_counts(&port, "before any flow");
    for v6 in [false, true] {
        for sport in 40000..40016 {
            port.check(e, &udp(e, v6, (sport, 53)), Forward::Pass, Outcome::Pass);
        }
        handshake(&port, v6);
    }
    assert_eq!(port.flows().len(), 34);
    assert_presence_counts(&port, "after 34 flows started");
    // The replies find their flows.
    port.check(
        i,
        &udp(i, true, (40015, 53)),
        Forward::Pass,
        Outcome::PassEstablished,
    );
    // Removed by the datapath (an RST), by a flush, by expiry.
    port.check(
        e,
        &tcp(e, false, HTTP, RST),
        Forward::Pass,
        Outcome::PassEstablished,
    );
    assert_presence_counts(&port, "after an RST");
    let v6_flows = FlowFilter {
        address: Some(format!("{PEER6}/128").parse().unwrap()),
        ..FlowFilter::default()
    };
    assert_eq!(port.0.datapath.flush_flows(&v6_flows).unwrap(), 17);
    assert_presence_counts(&port, "after a flush");
    // The flushed flow is gone: its reply is a new flow, which no rule
    // allows.
    port.check(
        i,
        &udp(i, true, (40015, 53)),
        Forward::Drop,
        Outcome::DropDefault,
    );
    let timeouts = settings::ConntrackTimeouts {
        unreplied: 1,
        ..Default::default()
    };
    port.0.datapath.set_conntrack_timeouts(&timeouts).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    // One expired flow's room taken by its own next packet, the others
    // removed by expiry.
    port.check(e, &udp(e, false, (40000, 53)), Forward::Pass, Outcome::Pass);
    assert_eq!(port.0.datapath.expire_flows().unwrap(), 15);
    assert_presence_counts(&port, "after expiry");
    assert_eq!(port.flows().len(), 1);
}
