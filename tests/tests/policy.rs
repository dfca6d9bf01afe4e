//! The compiled datapath against the reference matcher: random policies
//! and packets, run through the real programs with BPF_PROG_TEST_RUN; the
//! verdict and the deciding rule must be the reference's. The connection
//! table is flushed before each packet, so that every packet is the first
//! of its flow and the policy alone decides it (as the reference does).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use sg_common::{Direction as Dir, Outcome};
use sg_core::model::{
    Action, Direction, EtherType, Group, IcmpMatch, IpProtocol, MacAddr, Policy, Port, PortRange,
    PortSpec, Protocol, Remote, Rule,
    reference::{self, Verdict},
};
use sg_ctl::{
    datapath::{Forward, WithoutPolicy, conntrack::FlowFilter},
    frame::{self, TcpFlags, Transport},
};
use sg_tests::{RuleIds, TestPort, require_root};

const SLOT: u32 = 3;
const PORT: &str = "vm";
const OWN_V4: &str = "198.18.0.2";
const OWN_V6: &str = "2001:db8::2";

const PREFIXES: [&str; 12] = [
    "198.18.0.0/15",
    "198.18.0.0/24",
    "198.18.1.0/24",
    "198.18.1.128/25",
    "198.18.1.7/32",
    "198.19.255.0/24",
    "0.0.0.0/0",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "2001:db8:1::8000/113",
    "2001:db8:1::7/128",
    "::/0",
];
const PORT_EDGES: [u16; 14] = [
    1, 21, 22, 23, 53, 79, 80, 81, 443, 1023, 1024, 8080, 65534, 65535,
];
/// tcp udp icmp ipv6-icmp sctp dccp udplite gre esp, and an unnamed one.
const PROTOCOLS: [u8; 10] = [6, 17, 1, 58, 132, 33, 136, 47, 50, 200];
const ICMP_TYPES: [u8; 8] = [0, 3, 8, 11, 128, 129, 135, 143];

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn random_rule(rng: &mut StdRng, groups: &[&str]) -> Rule {
    loop {
        let direction = if rng.random_bool(0.5) {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let mut rule = Rule::new(direction);
        rule.ethertype = *[
            EtherType::Any,
            EtherType::Any,
            EtherType::Ipv4,
            EtherType::Ipv6,
        ]
        .choose(rng)
        .unwrap();
        rule.protocol = match rng.random_range(0..10) {
            0..3 => Protocol::Any,
            3 => Protocol::List(vec![IpProtocol(6), IpProtocol(17)]),
            _ => Protocol::List(vec![IpProtocol(*PROTOCOLS.choose(rng).unwrap())]),
        };
        let protocols = match &rule.protocol {
            Protocol::List(list) => list.clone(),
            Protocol::Any => Vec::new(),
        };
        if !protocols.is_empty() && protocols.iter().all(|p| p.has_ports()) && rng.random_bool(0.7)
        {
            let ranges = (0..rng.random_range(1..=3))
                .map(|_| {
                    let a = *PORT_EDGES.choose(rng).unwrap();
                    let b = *PORT_EDGES.choose(rng).unwrap();
                    PortRange {
                        start: a.min(b),
                        end: a.max(b),
                    }
                })
                .collect();
            rule.ports = PortSpec(ranges);
        }
        if protocols.len() == 1 && protocols[0].has_icmp() && rng.random_bool(0.7) {
            rule.icmp = IcmpMatch {
                type_: Some(*ICMP_TYPES.choose(rng).unwrap()),
                code: rng.random_bool(0.3).then(|| rng.random_range(0..2)),
            };
        }
        rule.remote = match rng.random_range(0..6) {
            0..2 => Remote::Any,
            2 => Remote::Group((*groups.choose(rng).unwrap()).to_string()),
            _ => Remote::Cidrs(
                (0..rng.random_range(1..=3))
                    .map(|_| net(PREFIXES.choose(rng).unwrap()))
                    .collect(),
            ),
        };
        if rng.random_bool(0.1) {
            rule.local = vec![net(if rng.random_bool(0.5) {
                "198.18.0.2/32"
            } else {
                "2001:db8::/64"
            })];
        }
        rule.action = *[Action::Allow, Action::Allow, Action::Drop, Action::Reject]
            .choose(rng)
            .unwrap();
        rule.priority = *[1, 100, 1000, 1000, 1000].choose(rng).unwrap();
        if rule.validate().is_ok() {
            return rule;
        }
    }
}

fn random_policy(rng: &mut StdRng) -> Policy {
    let names = ["web", "db", "ops"];
    let mut groups = Vec::new();
    for name in names {
        let mut group = Group::empty(name).unwrap();
        group.egress_open_until_first_rule = rng.random_bool(0.2);
        for _ in 0..rng.random_range(0..=14) {
            group.rules.push(random_rule(rng, &names));
        }
        if rng.random_bool(0.3) {
            group
                .external_members
                .push(net(PREFIXES.choose(rng).unwrap()));
        }
        groups.push(group);
    }
    let mac = MacAddr([0x02, 0, 0, 0, 0, 2]);
    let mut own = Port::new(PORT, "test0", mac);
    own.ips = vec![OWN_V4.parse().unwrap(), OWN_V6.parse().unwrap()];
    let mut attached: Vec<String> = names
        .iter()
        .filter(|_| rng.random_bool(0.6))
        .map(|s| s.to_string())
        .collect();
    if attached.is_empty() {
        attached.push("web".to_string());
    }
    own.groups = attached;
    let mut peer = Port::new("peer", "test1", MacAddr([0x02, 0, 0, 0, 0, 3]));
    peer.ips = vec![
        "198.18.1.7".parse().unwrap(),
        "2001:db8:1::7".parse().unwrap(),
    ];
    peer.groups = vec!["db".to_string()];
    let policy = Policy {
        groups,
        ports: vec![own, peer],
    };
    policy.validate().expect("generated policies are valid");
    policy
}

/// An address at or next to the edges of the test prefixes.
fn random_remote(rng: &mut StdRng, v4: bool) -> IpAddr {
    let candidates: Vec<IpNet> = PREFIXES
        .iter()
        .map(|s| net(s))
        .filter(|n| n.addr().is_ipv4() == v4)
        .collect();
    let prefix = candidates.choose(rng).unwrap();
    let (first, last) = (prefix.network(), prefix.broadcast());
    let step = |addr: IpAddr, delta: i128| -> IpAddr {
        match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from((u32::from(a) as i128 + delta) as u32)),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from((u128::from(a) as i128 + delta) as u128)),
        }
    };
    match rng.random_range(0..5) {
        0 => first,
        1 => last,
        2 => step(first, -1),
        3 => step(last, 1),
        _ => step(first, rng.random_range(0..300)),
    }
}

struct Case {
    direction: Direction,
    packet: reference::Packet,
    transport: Transport,
}

fn random_case(rng: &mut StdRng) -> Case {
    let v4 = rng.random_bool(0.5);
    let own: IpAddr = match (v4, rng.random_bool(0.9)) {
        (true, true) => OWN_V4.parse().unwrap(),
        (true, false) => "198.18.0.3".parse().unwrap(),
        (false, true) => OWN_V6.parse().unwrap(),
        (false, false) => "2001:db8:0:1::2".parse().unwrap(),
    };
    let remote = random_remote(rng, v4);
    let direction = if rng.random_bool(0.5) {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    let (src, dst) = match direction {
        Direction::Ingress => (remote, own),
        Direction::Egress => (own, remote),
    };
    let protocol = *PROTOCOLS.choose(rng).unwrap();
    let dst_port = *PORT_EDGES.choose(rng).unwrap();
    let icmp = (*ICMP_TYPES.choose(rng).unwrap(), rng.random_range(0..2));
    let is_icmp = (v4 && protocol == 1) || (!v4 && protocol == 58);
    let has_ports = IpProtocol(protocol).has_ports();
    let transport = match protocol {
        _ if is_icmp => Transport::Icmp {
            type_: icmp.0,
            code: icmp.1,
        },
        6 => Transport::Tcp {
            src_port: 40000,
            dst_port,
            flags: TcpFlags::SYN,
        },
        17 => Transport::Udp {
            src_port: 40000,
            dst_port,
        },
        _ if has_ports => Transport::Ports {
            protocol,
            src_port: 40000,
            dst_port,
        },
        _ => Transport::Other { protocol },
    };
    Case {
        direction,
        packet: reference::Packet {
            src,
            dst,
            protocol,
            dst_port: has_ports.then_some(dst_port),
            icmp: is_icmp.then_some(icmp),
        },
        transport,
    }
}

/// Whether a rejected packet gets a reply: not to or from a multicast or
/// broadcast address, not to an ICMP error.
fn gets_reply(packet: &reference::Packet) -> bool {
    let unicast = |addr: IpAddr| match addr {
        IpAddr::V4(a) => !a.is_unspecified() && a.octets()[0] != 0 && a.octets()[0] < 224,
        IpAddr::V6(a) => !a.is_unspecified() && !a.is_multicast(),
    };
    let icmp_error = match (packet.src, packet.icmp) {
        (IpAddr::V4(_), Some((type_, _))) => matches!(type_, 3 | 4 | 5 | 11 | 12),
        (IpAddr::V6(_), Some((type_, _))) => type_ < 128,
        (_, None) => false,
    };
    unicast(packet.src) && unicast(packet.dst) && !icmp_error
}

struct Datapath(TestPort);

impl Datapath {
    fn new() -> Datapath {
        Datapath(TestPort::new(SLOT, WithoutPolicy::Drop).expect("loading the programs"))
    }

    fn install(&mut self, policy: &Policy) -> RuleIds {
        self.0.install(policy, PORT).unwrap()
    }

    /// Runs the case; checks the verdict and that the deciding rule's
    /// counter (or the default's) moved.
    fn check(&self, case: &Case, want: &Verdict, counters: &RuleIds, what: &dyn Fn() -> String) {
        let dir = match case.direction {
            Direction::Egress => Dir::Egress,
            Direction::Ingress => Dir::Ingress,
        };
        let frame = frame::Packet {
            src_mac: [0x02, 0, 0, 0, 0, 1],
            dst_mac: [0x02, 0, 0, 0, 0, 2],
            vlans: Vec::new(),
            src: case.packet.src,
            dst: case.packet.dst,
            transport: case.transport,
            // Room for the target of a neighbour solicitation or advertisement.
            payload_len: 16,
        }
        .frame()
        .unwrap();
        let rule_counter = want
            .rule
            .as_ref()
            .map(|r| counters[&(r.group.clone(), r.rule)]);
        let read = || match rule_counter {
            Some(id) => self.0.datapath.rule_counter(id).unwrap().packets,
            None => {
                self.0
                    .datapath
                    .counter(SLOT, dir, Outcome::DropDefault)
                    .unwrap()
                    .packets
            }
        };
        // Every case a new flow: the cases repeat addresses and ports, and
        // a flow an earlier case started would pass this one whatever the
        // policy says (the connection table has its own tests).
        self.0.datapath.flush_flows(&FlowFilter::default()).unwrap();
        let before = read();
        let got = self.0.run.run(dir, &frame).unwrap();
        let expected = match want.action {
            Action::Allow => Forward::Pass,
            Action::Reject if gets_reply(&case.packet) => Forward::Reply,
            _ => Forward::Drop,
        };
        assert_eq!(
            got,
            expected,
            "{}: verdict; reference says {want:?}",
            what()
        );
        let counted = read() - before;
        let default_allow = want.rule.is_none() && want.action == Action::Allow;
        if !default_allow {
            assert_eq!(
                counted,
                1,
                "{}: deciding rule; reference says {want:?}",
                what()
            );
        }
    }
}

#[test]
fn the_compiled_datapath_decides_like_the_reference_matcher() {
    require_root!();
    let seed: u64 = std::env::var("SG_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let policies: usize = std::env::var("SG_PROPTEST_POLICIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(250);
    const PACKETS: usize = 400;
    eprintln!(
        "seed {seed} (SG_PROPTEST_SEED={seed} repeats this run), {policies} policies × {PACKETS} packets"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut datapath = Datapath::new();
    for n in 0..policies {
        let policy = random_policy(&mut rng);
        let counters = datapath.install(&policy);
        for k in 0..PACKETS {
            let case = random_case(&mut rng);
            let want = reference::evaluate(&policy, PORT, case.direction, &case.packet).unwrap();
            let what = || {
                format!(
                    "seed {seed}, policy {n}, packet {k}: {:?} {:?}\npolicy: {}",
                    case.direction,
                    case.packet,
                    serde_json::to_string(&policy).unwrap()
                )
            };
            datapath.check(&case, &want, &counters, &what);
        }
    }
}
