//! Real packets between namespaces through the filter on a veth and a tap:
//! ICMP, UDP and TCP over IPv4 and IPv6, passed, blocked and counted.

use std::{
    net::{IpAddr, TcpListener, UdpSocket},
    time::Duration,
};

use anyhow::Result;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use sg_ctl::{
    datapath::WithoutPolicy,
    frame::{Packet, TcpFlags, Transport},
};
use sg_tests::{
    GUEST_MAC, HOST_V4, HOST_V6, PORT, TapPort, TestPins, VethPort, WORKLOAD_V4, WORKLOAD_V6, addr,
    require_root, tcp_exchange, vm_policy,
};

const WAIT: Duration = Duration::from_secs(1);

/// Whether a UDP datagram from `client` to a socket on `to` (in `server`)
/// gets its answer.
fn udp_exchange(client: &sg_tests::Netns, server: &sg_tests::Netns, to: IpAddr) -> Result<bool> {
    let listener = server.within(move || Ok(UdpSocket::bind((to, 0))?))?;
    let target = listener.local_addr()?;
    let unspecified: IpAddr = if to.is_ipv4() {
        "0.0.0.0".parse()?
    } else {
        "::".parse()?
    };
    let socket = client.within(move || Ok(UdpSocket::bind((unspecified, 0))?))?;
    for s in [&listener, &socket] {
        s.set_read_timeout(Some(WAIT))?;
    }
    socket.send_to(b"question", target)?;
    let mut buf = [0u8; 64];
    let Ok((_, from)) = listener.recv_from(&mut buf) else {
        return Ok(false);
    };
    listener.send_to(b"answer", from)?;
    Ok(socket
        .recv_from(&mut buf)
        .is_ok_and(|(n, _)| &buf[..n] == b"answer"))
}

/// ICMP echo, UDP and TCP from the host to the workload, v4 and v6; what
/// got through.
fn exchanges(port: &VethPort) -> Result<Vec<(&'static str, bool)>> {
    let mut results = Vec::new();
    for (family, to) in [("v4", WORKLOAD_V4), ("v6", WORKLOAD_V6)] {
        let to = addr(to);
        results.push((family, port.host.ping(to)?));
        results.push((family, udp_exchange(&port.host, &port.workload, to)?));
        results.push((family, tcp_exchange(&port.host, &port.workload, to, 0)?));
    }
    Ok(results)
}

#[test]
fn veth_traffic_passes_then_is_blocked_and_counted() {
    require_root!();
    let port = VethPort::new().unwrap();
    let pins = TestPins::new();
    let netns = port.host.name();
    pins.sg_ctl_ok(&["--netns", netns, "attach", PORT]).unwrap();
    let link = port.host.ip(&["link", "show", PORT]).unwrap();
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
        "ip link shows the XDP program"
    );

    let passed = exchanges(&port).unwrap();
    assert!(passed.iter().all(|(_, ok)| *ok), "all pass: {passed:?}");
    let sent = pins.counter(PORT, "egress", "pass").unwrap();
    let received = pins.counter(PORT, "ingress", "pass").unwrap();
    // Each of the six exchanges carried at least one packet each way.
    assert!(
        sent >= 6 && received >= 6,
        "counted {sent} sent, {received} received"
    );

    pins.sg_ctl_ok(&[
        "--netns",
        netns,
        "block",
        PORT,
        WORKLOAD_V4,
        &format!("{WORKLOAD_V6}/128"),
    ])
    .unwrap();
    let blocked = exchanges(&port).unwrap();
    assert!(blocked.iter().all(|(_, ok)| !*ok), "none pass: {blocked:?}");
    let dropped = pins.counter(PORT, "ingress", "drop-blocked").unwrap();
    assert!(dropped >= 6, "counted {dropped} dropped");

    pins.sg_ctl_ok(&["--netns", netns, "unblock", PORT, WORKLOAD_V4])
        .unwrap();
    assert!(
        port.host.ping(addr(WORKLOAD_V4)).unwrap(),
        "unblocked v4 passes"
    );
    assert!(
        !port.host.ping(addr(WORKLOAD_V6)).unwrap(),
        "v6 stays blocked"
    );

    pins.sg_ctl_ok(&["--netns", netns, "detach", PORT]).unwrap();
    let link = port.host.ip(&["link", "show", PORT]).unwrap();
    assert!(!String::from_utf8_lossy(&link.stdout).contains("prog/xdp"));
    assert!(!pins.pins.root().join("maps").exists(), "pins removed");
    assert!(
        port.host.ping(addr(WORKLOAD_V6)).unwrap(),
        "detached: all pass"
    );
}

#[test]
fn a_veth_the_daemon_attached_drops_everything_until_its_policy_is_in_force() {
    require_root!();
    let port = VethPort::new().unwrap();
    let pins = TestPins::new();
    pins.attach(&port.host, PORT, WithoutPolicy::Drop).unwrap();
    let closed = exchanges(&port).unwrap();
    assert!(closed.iter().all(|(_, ok)| !*ok), "none pass: {closed:?}");
    for to in [HOST_V4, HOST_V6] {
        assert!(!port.workload.ping(addr(to)).unwrap(), "ping {to}");
    }
    let received = pins.counter(PORT, "ingress", "drop-no-policy").unwrap();
    let sent = pins.counter(PORT, "egress", "drop-no-policy").unwrap();
    assert!(
        received >= 6 && sent >= 2,
        "counted {sent} sent, {received} received"
    );
    for outcome in ["pass", "pass-non-ip", "pass-neighbour-discovery"] {
        for direction in ["egress", "ingress"] {
            assert_eq!(
                pins.counter(PORT, direction, outcome).unwrap(),
                0,
                "{direction} {outcome}"
            );
        }
    }

    let open = vm_policy(
        serde_json::json!([{"name": "all", "rules": [
            {"direction": "egress"},
            {"direction": "ingress"},
        ]}]),
        &["all"],
    );
    pins.install(PORT, &open, "vm").unwrap();
    // Neighbours that went unanswered meanwhile are asked again.
    port.host.ip(&["neigh", "flush", "dev", PORT]).unwrap();
    port.workload
        .ip(&["neigh", "flush", "dev", "eth0"])
        .unwrap();
    let passed = exchanges(&port).unwrap();
    assert!(passed.iter().all(|(_, ok)| *ok), "all pass: {passed:?}");
}

/// An echo request, UDP datagram or TCP SYN from the guest to the host.
fn guest_packet(tap: &TapPort, to: &str, transport: Transport) -> Packet {
    let from = if to.contains(':') {
        WORKLOAD_V6
    } else {
        WORKLOAD_V4
    };
    Packet {
        src_mac: GUEST_MAC,
        dst_mac: tap.host_mac,
        vlans: Vec::new(),
        src: addr(from),
        dst: addr(to),
        transport,
        payload_len: 8,
    }
}

/// What answered the guest: "echo-reply", "udp" or "syn-ack".
fn answer(frame: &[u8]) -> Option<&'static str> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    if !matches!(packet.net, Some(NetSlice::Ipv4(_) | NetSlice::Ipv6(_))) {
        return None;
    }
    match packet.transport? {
        TransportSlice::Icmpv4(icmp) if icmp.type_u8() == 0 => Some("echo-reply"),
        TransportSlice::Icmpv6(icmp) if icmp.type_u8() == 129 => Some("echo-reply"),
        TransportSlice::Udp(_) => Some("udp"),
        TransportSlice::Tcp(tcp) if tcp.syn() && tcp.ack() => Some("syn-ack"),
        _ => None,
    }
}

/// Sends ICMP echo, UDP and TCP SYN from the guest to the host, v4 and v6,
/// and says which got their answer.
fn guest_exchanges(tap: &mut TapPort) -> Result<Vec<(&'static str, bool)>> {
    let mut results = Vec::new();
    for to in [HOST_V4, HOST_V6] {
        let udp = tap
            .host
            .within(move || Ok(UdpSocket::bind((addr(to), 0))?))?;
        udp.set_read_timeout(Some(WAIT))?;
        let tcp = tap
            .host
            .within(move || Ok(TcpListener::bind((addr(to), 0))?))?;
        let echo = if to.contains(':') { 128 } else { 8 };
        let probes = [
            (
                "echo-reply",
                Transport::Icmp {
                    type_: echo,
                    code: 0,
                },
            ),
            (
                "udp",
                Transport::Udp {
                    src_port: 40000,
                    dst_port: udp.local_addr()?.port(),
                },
            ),
            (
                "syn-ack",
                Transport::Tcp {
                    src_port: 40001,
                    dst_port: tcp.local_addr()?.port(),
                    flags: TcpFlags::SYN,
                },
            ),
        ];
        for (want, transport) in probes {
            let frame = guest_packet(tap, to, transport).frame()?;
            tap.guest.send(&frame)?;
            if want == "udp" {
                // The host's socket answers what it received.
                let mut buf = [0u8; 64];
                if let Ok((_, from)) = udp.recv_from(&mut buf) {
                    udp.send_to(b"answer", from)?;
                }
            }
            let got = tap
                .guest
                .receive(WAIT, |frame| answer(frame) == Some(want))?;
            results.push((want, got.is_some()));
        }
    }
    Ok(results)
}

fn tap_traffic(mode: &str, shown_as: &str) {
    let mut tap = TapPort::new().unwrap();
    let pins = TestPins::new();
    let netns = tap.host.name().to_string();
    pins.sg_ctl_ok(&["--netns", &netns, "attach", "--xdp-mode", mode, PORT])
        .unwrap();
    let link = tap.host.ip(&["link", "show", PORT]).unwrap();
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    assert!(link.contains(shown_as), "ip link shows {shown_as}: {link}");

    let passed = guest_exchanges(&mut tap).unwrap();
    assert!(passed.iter().all(|(_, ok)| *ok), "all pass: {passed:?}");
    assert!(pins.counter(PORT, "egress", "pass").unwrap() >= 6);
    assert!(pins.counter(PORT, "ingress", "pass").unwrap() >= 6);

    pins.sg_ctl_ok(&["--netns", &netns, "block", PORT, WORKLOAD_V4, WORKLOAD_V6])
        .unwrap();
    let blocked = guest_exchanges(&mut tap).unwrap();
    assert!(blocked.iter().all(|(_, ok)| !*ok), "none pass: {blocked:?}");
    assert!(pins.counter(PORT, "egress", "drop-blocked").unwrap() >= 6);
}

#[test]
fn tap_traffic_is_filtered_with_native_xdp() {
    require_root!();
    tap_traffic("native", "xdp ")
}

#[test]
fn tap_traffic_is_filtered_with_generic_xdp() {
    require_root!();
    tap_traffic("generic", "xdpgeneric")
}
