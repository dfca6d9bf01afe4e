//! Tracing: the port's real programs, in a tracer instance, say what they
//! do with a described packet and which rule decided, and count nothing.

use anyhow::Result;
use serde_json::json;
use sg_common::Direction;
use sg_core::model::{Group, Policy};
use sg_ctl::{
    datapath::{Datapath, DatapathError, Forward, Pins, WithoutPolicy},
    frame::{Packet, TcpFlags, Transport},
    trace::{Trace, trace},
};
use sg_tests::{PORT, TestPins, VethPort, WORKLOAD_V4, addr, require_root, vm_policy};

fn policy() -> Policy {
    vm_policy(
        json!([
            {
                "name": "web",
                "rules": [
                    {"direction": "ingress", "protocol": "tcp", "ports": "22",
                     "remote": "198.18.1.0/24"},
                    {"direction": "ingress", "protocol": "tcp", "ports": "80,443"},
                    {"direction": "ingress", "protocol": "tcp", "ports": "23",
                     "action": "reject"},
                    {"direction": "egress"},
                ],
            },
            {
                "name": "ops",
                "rules": [
                    {"direction": "ingress", "protocol": "icmp"},
                    {"direction": "ingress", "remote": "198.18.2.0/24", "action": "drop"},
                ],
            },
        ]),
        &["web", "ops"],
    )
}

fn tcp(from: &str, port: u16) -> Packet {
    Packet::tcp(addr(from), addr(WORKLOAD_V4), 40000, port, TcpFlags::SYN)
}

/// Traces an inbound packet on the port, from inside its namespace.
fn run(port: &VethPort, pins: &Pins, packet: Packet, policy: Option<Policy>) -> Result<Trace> {
    let datapath = Datapath::new(pins.clone());
    port.host.within(move || {
        let policy = policy.as_ref().map(|p| (p, "vm"));
        Ok(trace(&datapath, PORT, Direction::Ingress, &packet, policy)?)
    })
}

#[test]
fn trace_names_the_deciding_rule_and_counts_nothing() {
    require_root!();
    let port = VethPort::new().unwrap();
    let pins = TestPins::new();
    pins.sg_ctl_ok(&["--netns", port.host.name(), "attach", PORT])
        .unwrap();
    let untraced = run(&port, &pins.pins, tcp("198.18.1.5", 22), None).unwrap();
    assert_eq!(untraced.forward, Forward::Pass);
    assert!(untraced.reason.contains("no policy"), "{untraced:?}");

    pins.install(PORT, &policy(), "vm").unwrap();
    let policy = Some(policy());
    let cases = [
        (
            tcp("198.18.1.5", 22),
            Forward::Pass,
            "pass",
            Some(("web", 0)),
        ),
        (tcp("198.18.3.5", 22), Forward::Drop, "drop-default", None),
        (
            tcp("198.18.3.5", 443),
            Forward::Pass,
            "pass",
            Some(("web", 1)),
        ),
        (
            tcp("198.18.3.5", 23),
            Forward::Reply,
            "reject",
            Some(("web", 2)),
        ),
        (
            tcp("198.18.2.5", 8080),
            Forward::Drop,
            "drop-rule",
            Some(("ops", 1)),
        ),
    ];
    for (packet, forward, outcome, rule) in cases {
        let traced = run(&port, &pins.pins, packet.clone(), policy.clone()).unwrap();
        let what = format!("{packet:?}: {traced:#?}");
        assert_eq!(traced.forward, forward, "{what}");
        assert_eq!(traced.outcome, outcome, "{what}");
        let named = traced.rule.as_ref().map(|r| (r.group.as_str(), r.index));
        assert_eq!(named, rule, "{what}");
    }
    let mut ping = tcp("198.18.3.5", 0);
    ping.transport = Transport::Icmp { type_: 8, code: 0 };
    let traced = run(&port, &pins.pins, ping, policy.clone()).unwrap();
    assert_eq!(
        traced.matched_on,
        Some("protocol/port (any remote address)"),
        "{traced:#?}"
    );
    assert!(traced.rule.unwrap().rule.contains("ingress allow icmp"));

    pins.sg_ctl_ok(&["--netns", port.host.name(), "block", PORT, WORKLOAD_V4])
        .unwrap();
    let blocked = run(&port, &pins.pins, tcp("198.18.1.5", 22), policy).unwrap();
    assert_eq!(blocked.outcome, "drop-blocked");

    // Nothing counted. (Only the link's own neighbour discovery and ARP
    // cross the port meanwhile.)
    for outcome in [
        "pass",
        "drop-default",
        "drop-rule",
        "reject",
        "drop-blocked",
    ] {
        assert_eq!(
            pins.counter(PORT, "ingress", outcome).unwrap(),
            0,
            "{outcome}"
        );
    }
}

#[test]
fn trace_says_a_port_without_its_policy_yet_drops_everything() {
    require_root!();
    let port = VethPort::new().unwrap();
    let pins = TestPins::new();
    pins.attach(&port.host, PORT, WithoutPolicy::Drop).unwrap();
    let traced = run(&port, &pins.pins, tcp("198.18.1.5", 22), None).unwrap();
    assert_eq!(
        (traced.forward, traced.outcome),
        (Forward::Drop, "drop-no-policy"),
        "{traced:#?}"
    );
    assert!(traced.reason.contains("no policy in force"), "{traced:#?}");
    pins.install(PORT, &policy(), "vm").unwrap();
    let traced = run(&port, &pins.pins, tcp("198.18.1.5", 22), Some(policy())).unwrap();
    assert_eq!(traced.outcome, "pass", "{traced:#?}");
}

/// `sg-ctl trace --iface` of a UDP packet toward the workload: its
/// outcome and why.
fn traced_udp(
    port: &VethPort,
    pins: &TestPins,
    from: &str,
    to: &str,
    ports: (u16, u16),
) -> (String, String) {
    let (sport, dport) = (ports.0.to_string(), ports.1.to_string());
    let out = pins
        .sg_ctl_ok(&[
            "--netns",
            port.host.name(),
            "-o",
            "json",
            "trace",
            "--iface",
            PORT,
            "--direction",
            "ingress",
            "--protocol",
            "udp",
            "--from",
            from,
            "--to",
            to,
            "--sport",
            &sport,
            "--dport",
            &dport,
        ])
        .unwrap();
    let traced: serde_json::Value = serde_json::from_str(&out).unwrap();
    let field = |name: &str| traced["trace"][name].as_str().unwrap().to_string();
    (field("outcome"), field("reason"))
}

#[test]
fn dhcp_replies_pass_under_the_default_group_from_the_servers_the_port_accepts() {
    require_root!();
    let port = VethPort::new().unwrap();
    let pins = TestPins::new();
    pins.attach(&port.host, PORT, WithoutPolicy::Drop).unwrap();
    let mut policy = vm_policy(
        serde_json::to_value([Group::default_group()]).unwrap(),
        &["default"],
    );
    pins.install(PORT, &policy, "vm").unwrap();
    let offers = [
        ("198.18.0.1", "255.255.255.255", (67, 68)),
        ("198.18.0.1", WORKLOAD_V4, (67, 68)),
        ("fe80::1", "fe80::2", (547, 546)),
    ];
    for (from, to, ports) in offers {
        let (outcome, reason) = traced_udp(&port, &pins, from, to, ports);
        assert_eq!(outcome, "pass-dhcp", "{from} → {to}: {reason}");
        assert!(reason.contains("DHCP server's reply"), "{reason}");
    }
    // Not a server's reply: the default group has no rule for it.
    let (outcome, _) = traced_udp(&port, &pins, "198.18.0.1", WORKLOAD_V4, (68, 67));
    assert_eq!(outcome, "drop-default");

    // A port that accepts another server only drops the offer.
    policy.ports[0].dhcp_servers = vec![addr("198.18.0.9")];
    pins.install(PORT, &policy, "vm").unwrap();
    let (outcome, reason) = traced_udp(&port, &pins, "198.18.0.1", "255.255.255.255", (67, 68));
    assert_eq!(outcome, "drop-dhcp-server", "{reason}");
    assert!(reason.contains("does not accept"), "{reason}");
    let (outcome, _) = traced_udp(&port, &pins, "198.18.0.9", "255.255.255.255", (67, 68));
    assert_eq!(outcome, "pass-dhcp");
}

#[test]
fn tracing_a_port_without_sg_says_so() {
    require_root!();
    let port = VethPort::new().unwrap();
    let pins = TestPins::new();
    let error = run(&port, &pins.pins, tcp("198.18.1.5", 22), None).unwrap_err();
    assert!(
        matches!(
            error.downcast_ref::<DatapathError>(),
            Some(DatapathError::NotAttached { .. })
        ),
        "{error:#}"
    );
}
