//! IP fragments: the first fragment of a datagram is classified like any
//! packet and the later ones, which carry no transport header, follow its
//! verdict; a later fragment whose first was not seen is dropped. On
//! crafted fragments through BPF_PROG_TEST_RUN, then with datagrams larger
//! than the link's MTU between namespaces.

use std::{net::UdpSocket, time::Duration};

use serde_json::json;
use sg_common::{Direction, Outcome};
use sg_core::model::Policy;
use sg_ctl::{
    datapath::{Forward, WithoutPolicy},
    frame::Packet,
};
use sg_tests::{
    HOST_V4, HOST_V6, PORT, RuleIds, TestPins, TestPort, VethPort, WORKLOAD_V4, WORKLOAD_V6, addr,
    fragments, require_root, vm_policy,
};

const SLOT: u32 = 5;
const PEER_V4: &str = "198.18.1.1";
const PEER_V6: &str = "2001:db8:1::1";

/// UDP 5000 in allowed, 6000 dropped by a rule, the rest by default.
fn policy() -> Policy {
    vm_policy(
        json!([{
            "name": "udp",
            "rules": [
                {"direction": "ingress", "protocol": "udp", "ports": "5000"},
                {"direction": "ingress", "protocol": "udp", "ports": "6000", "action": "drop"},
                {"direction": "egress"},
            ],
        }]),
        &["udp"],
    )
}

/// An inbound UDP datagram of 3000 bytes in three fragments.
fn datagram(v6: bool, dst_port: u16, id: u32) -> Vec<Vec<u8>> {
    let src = if v6 { PEER_V6 } else { PEER_V4 };
    datagram_from(src, dst_port, id)
}

fn datagram_from(src: &str, dst_port: u16, id: u32) -> Vec<Vec<u8>> {
    let dst = if src.contains(':') {
        WORKLOAD_V6
    } else {
        WORKLOAD_V4
    };
    let mut packet = Packet::udp(addr(src), addr(dst), 40000, dst_port);
    packet.payload_len = 3000;
    fragments(&packet.frame().unwrap(), 1200, id)
}

struct Port {
    port: TestPort,
    rules: RuleIds,
}

impl Port {
    fn new() -> Port {
        let mut port = TestPort::new(SLOT, WithoutPolicy::Drop).expect("loading the programs");
        let rules = port
            .install(&policy(), "vm")
            .expect("installing the policy");
        Port { port, rules }
    }

    /// Runs the fragments one by one: what became of each and the
    /// outcome each was counted as.
    fn run(&self, frames: &[Vec<u8>]) -> Vec<(Forward, Outcome)> {
        let maps = &self.port.datapath;
        frames
            .iter()
            .map(|frame| {
                let before: Vec<u64> = Outcome::ALL
                    .iter()
                    .map(|&o| maps.counter(SLOT, Direction::Ingress, o).unwrap().packets)
                    .collect();
                let forward = self.port.run.run(Direction::Ingress, frame).unwrap();
                let counted: Vec<Outcome> = Outcome::ALL
                    .iter()
                    .zip(before)
                    .filter(|&(&o, b)| {
                        maps.counter(SLOT, Direction::Ingress, o).unwrap().packets > b
                    })
                    .map(|(&o, _)| o)
                    .collect();
                assert_eq!(counted.len(), 1, "one outcome per fragment: {counted:?}");
                (forward, counted[0])
            })
            .collect()
    }

    fn rule_packets(&self, rule: usize) -> u64 {
        let id = self.rules[&("udp".to_string(), rule)];
        self.port.datapath.rule_counter(id).unwrap().packets
    }
}

#[test]
fn later_fragments_follow_the_first() {
    require_root!();
    let port = Port::new();
    for v6 in [false, true] {
        let allowed = datagram(v6, 5000, 0x1234);
        assert_eq!(allowed.len(), 3);
        let before = port.rule_packets(0);
        assert_eq!(
            port.run(&allowed),
            vec![(Forward::Pass, Outcome::Pass); 3],
            "v6={v6}"
        );
        assert_eq!(
            port.rule_packets(0),
            before + 3,
            "the rule counts every fragment"
        );

        let before = port.rule_packets(1);
        assert_eq!(
            port.run(&datagram(v6, 6000, 0x1235)),
            vec![(Forward::Drop, Outcome::DropRule); 3],
            "v6={v6}"
        );
        assert_eq!(port.rule_packets(1), before + 3);

        assert_eq!(
            port.run(&datagram(v6, 7000, 0x1236)),
            vec![(Forward::Drop, Outcome::DropDefault); 3],
            "v6={v6}"
        );
    }
}

#[test]
fn the_later_fragments_of_a_dhcp_reply_pass_with_it() {
    require_root!();
    let port = Port::new();
    for (server, to, ports) in [
        ("198.18.0.1", WORKLOAD_V4, (67, 68)),
        ("fe80::1", "fe80::2", (547, 546)),
    ] {
        let mut reply = Packet::udp(addr(server), addr(to), ports.0, ports.1);
        reply.payload_len = 3000;
        let frames = fragments(&reply.frame().unwrap(), 1200, 0x2345);
        assert_eq!(
            port.run(&frames),
            [
                (Forward::Pass, Outcome::PassDhcp),
                (Forward::Pass, Outcome::Pass),
                (Forward::Pass, Outcome::Pass),
            ],
            "{server}"
        );
    }
}

#[test]
fn a_later_fragment_without_its_first_is_dropped() {
    require_root!();
    let port = Port::new();
    for v6 in [false, true] {
        let frames = datagram(v6, 5000, 0x4321);
        assert_eq!(
            port.run(&frames[1..]),
            vec![(Forward::Drop, Outcome::DropFragment); 2],
            "v6={v6}"
        );
        // Once the first is seen, the later ones follow it; the same id
        // from another source is another datagram.
        assert_eq!(port.run(&frames[..1]), vec![(Forward::Pass, Outcome::Pass)]);
        let other = datagram_from(
            if v6 { "2001:db8:1::2" } else { "198.18.1.2" },
            5000,
            0x4321,
        );
        assert_eq!(
            port.run(&other[1..2]),
            vec![(Forward::Drop, Outcome::DropFragment)],
            "v6={v6}"
        );
        assert_eq!(
            port.run(&frames[1..]),
            vec![(Forward::Pass, Outcome::Pass); 2]
        );
    }
}

#[test]
fn datagrams_larger_than_the_mtu_pass_whole_or_not_at_all() {
    require_root!();
    let port = VethPort::new().unwrap();
    let pins = TestPins::new();
    pins.sg_ctl_ok(&["--netns", port.host.name(), "attach", PORT])
        .unwrap();
    pins.install(PORT, &policy(), "vm").unwrap();
    for (host, workload) in [(HOST_V4, WORKLOAD_V4), (HOST_V6, WORKLOAD_V6)] {
        let (host, workload) = (addr(host), addr(workload));
        for (to, arrives) in [(5000, true), (6000, false)] {
            let receiver = port
                .workload
                .within(move || Ok(UdpSocket::bind((workload, to))?))
                .unwrap();
            receiver
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            let sender = port
                .host
                .within(move || Ok(UdpSocket::bind((host, 0))?))
                .unwrap();
            let sent = vec![0x5a; 4000];
            sender.send_to(&sent, (workload, to)).unwrap();
            let mut buf = vec![0; 8000];
            let got = receiver.recv(&mut buf).ok();
            assert_eq!(
                got == Some(sent.len()),
                arrives,
                "4000 bytes to {workload}:{to}"
            );
        }
    }
    // Three fragments of each passed datagram; of each dropped one the
    // first, after which the sender's stack gives up on the rest.
    assert!(pins.counter(PORT, "ingress", "pass").unwrap() >= 6);
    assert!(pins.counter(PORT, "ingress", "drop-rule").unwrap() >= 2);
}
