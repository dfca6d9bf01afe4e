//! The compiled datapath against the reference: random policies and
//! packets, run through the real programs with BPF_PROG_TEST_RUN; the
//! verdict and the counters that move must be the reference's. Once with
//! the connection table flushed before each packet, so that every packet
//! is the first of its flow and the policy alone decides it, as the
//! matcher (`reference::evaluate`) does; once with the table kept, over
//! sequences of packets between a few pairs of ends (requests, replies,
//! other codes and identifiers, TCP's flags, both ways), as the tracker
//! (`reference::Tracker`) decides them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use sg_common::{Direction as Dir, Outcome};
use sg_core::model::{
    Action, Direction, EtherType, Group, IcmpMatch, IpProtocol, MacAddr, Policy, Port, PortRange,
    PortSpec, Protocol, Remote, Rule,
    reference::{self, LinkService, Tracked, Tracker, Verdict},
};
use sg_ctl::{
    datapath::{Forward, MapSizes, WithoutPolicy, conntrack::FlowFilter},
    frame::{self, TcpFlags, Transport},
};
use sg_tests::{RuleIds, TestPort, require_root, set_echo_id};

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
const PORT_EDGES: [u16; 18] = [
    1, 21, 22, 23, 53, 67, 68, 79, 80, 81, 443, 546, 547, 1023, 1024, 8080, 65534, 65535,
];
/// DHCP's and DHCPv6's (source, destination) ports, either way.
const DHCP_PORTS: [(u16, u16); 4] = [(68, 67), (67, 68), (546, 547), (547, 546)];
/// DHCP servers a port may accept: addresses `random_remote` gives often.
const DHCP_SERVERS: [&str; 4] = ["198.18.1.7", "198.18.0.0", "2001:db8:1::7", "2001:db8::"];
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
    if rng.random_bool(0.3) {
        let servers = rng.random_range(1..=2);
        own.dhcp_servers = DHCP_SERVERS
            .choose_multiple(rng, servers)
            .map(|s| s.parse().unwrap())
            .collect();
    }
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
}

/// TCP's flags as real segments carry them: SYN, SYN-ACK, ACK, FIN-ACK,
/// RST, RST-ACK.
const TCP_FLAGS: [u8; 6] = [0x02, 0x12, 0x10, 0x11, 0x04, 0x14];

/// The workload's address: mostly its own, of the family `v4` says.
fn random_own(rng: &mut StdRng, v4: bool) -> IpAddr {
    match (v4, rng.random_bool(0.9)) {
        (true, true) => OWN_V4.parse().unwrap(),
        (true, false) => "198.18.0.3".parse().unwrap(),
        (false, true) => OWN_V6.parse().unwrap(),
        (false, false) => "2001:db8:0:1::2".parse().unwrap(),
    }
}

fn random_direction(rng: &mut StdRng) -> Direction {
    if rng.random_bool(0.5) {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

/// Two ends that packets go between, either way: the workload's address
/// and port (or echo identifier), the other end's, and a protocol.
struct Conversation {
    own: (IpAddr, u16),
    remote: (IpAddr, u16),
    protocol: u8,
}

impl Conversation {
    /// The family's ICMP, TCP and UDP, which the tracker tells apart, each
    /// a fifth of the time; any of `PROTOCOLS` otherwise.
    fn random(rng: &mut StdRng) -> Conversation {
        let v4 = rng.random_bool(0.5);
        let protocol = match rng.random_range(0..5) {
            0 if v4 => 1,
            0 => 58,
            1 => 6,
            2 => 17,
            _ => *PROTOCOLS.choose(rng).unwrap(),
        };
        let mut remote = random_remote(rng, v4);
        let (own_port, remote_port) = if protocol == 17 && rng.random_bool(0.3) {
            // Half the time with a server a port may accept.
            if rng.random_bool(0.5) {
                let servers = DHCP_SERVERS.iter().map(|s| s.parse::<IpAddr>().unwrap());
                let ours: Vec<IpAddr> = servers.filter(|s| s.is_ipv4() == v4).collect();
                remote = *ours.choose(rng).unwrap();
            }
            *DHCP_PORTS.choose(rng).unwrap()
        } else {
            (
                *PORT_EDGES.choose(rng).unwrap(),
                *PORT_EDGES.choose(rng).unwrap(),
            )
        };
        Conversation {
            own: (random_own(rng, v4), own_port),
            remote: (remote, remote_port),
            protocol,
        }
    }

    /// A packet between the two ends going `direction`: ICMP of `icmp`
    /// (type, code), with `echo_id` for echo messages; TCP with `flags`.
    fn packet(
        &self,
        direction: Direction,
        icmp: (u8, u8),
        echo_id: u16,
        flags: u8,
    ) -> reference::Packet {
        let (src, dst) = match direction {
            Direction::Ingress => (self.remote, self.own),
            Direction::Egress => (self.own, self.remote),
        };
        let protocol = self.protocol;
        let v4 = src.0.is_ipv4();
        let is_icmp = (v4 && protocol == 1) || (!v4 && protocol == 58);
        let echo = if v4 { [8, 0] } else { [128, 129] };
        let has_ports = IpProtocol(protocol).has_ports();
        reference::Packet {
            src: src.0,
            dst: dst.0,
            protocol,
            src_port: has_ports.then_some(src.1),
            dst_port: has_ports.then_some(dst.1),
            icmp: is_icmp.then_some(icmp),
            echo_id: (is_icmp && echo.contains(&icmp.0)).then_some(echo_id),
            tcp_flags: if protocol == 6 { flags } else { 0 },
        }
    }
}

/// A packet on its own: a TCP SYN, the echo identifier the frame builder
/// gives, from port 40000 to one of the edges (or DHCP's ports).
fn random_case(rng: &mut StdRng) -> Case {
    let mut conversation = Conversation::random(rng);
    let direction = random_direction(rng);
    let (src_port, dst_port) = if rng.random_bool(0.1) {
        *DHCP_PORTS.choose(rng).unwrap()
    } else {
        (40000, *PORT_EDGES.choose(rng).unwrap())
    };
    (conversation.own.1, conversation.remote.1) = match direction {
        Direction::Egress => (src_port, dst_port),
        Direction::Ingress => (dst_port, src_port),
    };
    let icmp = (*ICMP_TYPES.choose(rng).unwrap(), rng.random_range(0..2));
    Case {
        direction,
        packet: conversation.packet(direction, icmp, 1, 0x02),
    }
}

/// A packet of one of `conversations`, either way: an echo request or
/// reply (of another code or identifier now and then) or another ICMP
/// type, TCP with any of its flags, UDP, another protocol.
fn random_turn(rng: &mut StdRng, conversations: &[Conversation]) -> Case {
    let conversation = conversations.choose(rng).unwrap();
    let direction = random_direction(rng);
    let v4 = conversation.own.0.is_ipv4();
    let echo: [u8; 2] = if v4 { [8, 0] } else { [128, 129] };
    let type_ = if rng.random_bool(0.8) {
        *echo.choose(rng).unwrap()
    } else {
        *ICMP_TYPES.choose(rng).unwrap()
    };
    let code = u8::from(rng.random_bool(0.2));
    let echo_id = conversation.own.1 % 2 + u16::from(rng.random_bool(0.1));
    let flags = *TCP_FLAGS.choose(rng).unwrap();
    Case {
        direction,
        packet: conversation.packet(direction, (type_, code), echo_id, flags),
    }
}

/// The frame of a case.
fn frame_of(case: &Case) -> Vec<u8> {
    let packet = &case.packet;
    let flags = |bit: u8| packet.tcp_flags & bit != 0;
    let transport = match (packet.icmp, packet.src_port.zip(packet.dst_port)) {
        (Some((type_, code)), _) => Transport::Icmp { type_, code },
        (None, Some((src_port, dst_port))) => match packet.protocol {
            6 => Transport::Tcp {
                src_port,
                dst_port,
                flags: TcpFlags {
                    syn: flags(0x02),
                    ack: flags(0x10),
                    fin: flags(0x01),
                    rst: flags(0x04),
                },
            },
            17 => Transport::Udp { src_port, dst_port },
            protocol => Transport::Ports {
                protocol,
                src_port,
                dst_port,
            },
        },
        (None, None) => Transport::Other {
            protocol: packet.protocol,
        },
    };
    let mut frame = frame::Packet {
        src_mac: [0x02, 0, 0, 0, 0, 1],
        dst_mac: [0x02, 0, 0, 0, 0, 2],
        vlans: Vec::new(),
        src: packet.src,
        dst: packet.dst,
        transport,
        // Room for the target of a neighbour solicitation or advertisement.
        payload_len: 16,
    }
    .frame()
    .unwrap();
    if let Some(id) = packet.echo_id {
        set_echo_id(&mut frame, id);
    }
    frame
}

/// Whether a rejected packet gets a reply: not to or from a multicast or
/// broadcast address, not to an ICMP error or a TCP RST.
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
    let reset = packet.protocol == 6 && packet.tcp_flags & 0x04 != 0;
    unicast(packet.src) && unicast(packet.dst) && !icmp_error && !reset
}

struct Datapath(TestPort);

impl Datapath {
    /// A port whose `SG_REMOTE_EXACT` has a few groups only: single
    /// addresses fill them up, and the ones beyond go to the trie, so that
    /// the cases take both ways.
    fn new() -> Datapath {
        let sizes = MapSizes::parse(["SG_REMOTE_EXACT=8"]).expect("a size");
        Datapath(
            TestPort::with_sizes(SLOT, WithoutPolicy::Drop, sizes).expect("loading the programs"),
        )
    }

    /// Installs `policy` and removes the one it replaced, as the daemon
    /// does after its installs: the policy finds the groups free.
    fn install(&mut self, policy: &Policy) -> RuleIds {
        let ids = self.0.install(policy, PORT).unwrap();
        self.0.datapath.remove_retired().unwrap();
        ids
    }

    /// Runs the case on `port`; checks the verdict and that the counters
    /// `tracked` says moved by one: the deciding rule's (or the
    /// default's), the link services' and the connection table's
    /// outcomes.
    fn check(
        &self,
        (port, ids): (&Port, &RuleIds),
        case: &Case,
        tracked: &Tracked,
        what: &dyn Fn() -> String,
    ) {
        let dir = match case.direction {
            Direction::Egress => Dir::Egress,
            Direction::Ingress => Dir::Ingress,
        };
        let frame = frame_of(case);
        let service = reference::link_service(port, case.direction, &case.packet);
        let policy_counter = |verdict: &Verdict| match (&verdict.rule, service) {
            (_, Some(LinkService::NeighbourDiscovery)) => {
                Some(Counter::Outcome(Outcome::PassNeighbourDiscovery))
            }
            (_, Some(LinkService::Dhcp)) => Some(Counter::Outcome(Outcome::PassDhcp)),
            (_, Some(LinkService::RefusedDhcpServer)) => {
                Some(Counter::Outcome(Outcome::DropDhcpServer))
            }
            (Some(rule), None) => Some(Counter::Rule(ids[&(rule.group.clone(), rule.rule)])),
            (None, None) if verdict.action == Action::Allow => None,
            (None, None) => Some(Counter::Outcome(Outcome::DropDefault)),
        };
        let (expected, counters) = match tracked {
            Tracked::Established => (
                Forward::Pass,
                vec![Counter::Outcome(Outcome::PassEstablished)],
            ),
            Tracked::Invalid(asked) => {
                let rule = asked.as_ref().and_then(policy_counter);
                let counters = [Some(Counter::Outcome(Outcome::DropInvalid)), rule];
                (Forward::Drop, counters.into_iter().flatten().collect())
            }
            Tracked::PortFull(verdict) => {
                let rule = policy_counter(verdict);
                let counters = [Some(Counter::Outcome(Outcome::DropConntrackPortFull)), rule];
                (Forward::Drop, counters.into_iter().flatten().collect())
            }
            Tracked::Policy(verdict) => {
                let forward = match verdict.action {
                    Action::Allow => Forward::Pass,
                    Action::Reject if gets_reply(&case.packet) => Forward::Reply,
                    _ => Forward::Drop,
                };
                (forward, policy_counter(verdict).into_iter().collect())
            }
        };
        let read = |counter: &Counter| match *counter {
            Counter::Rule(id) => self.0.datapath.rule_counter(id).unwrap().packets,
            Counter::Outcome(outcome) => {
                self.0.datapath.counter(SLOT, dir, outcome).unwrap().packets
            }
        };
        let before: Vec<u64> = counters.iter().map(read).collect();
        let got = self.0.run.run(dir, &frame).unwrap();
        assert_eq!(
            got,
            expected,
            "{}: verdict; reference says {tracked:?}",
            what()
        );
        for (counter, before) in counters.iter().zip(before) {
            assert_eq!(
                read(counter) - before,
                1,
                "{}: counter {counter:?}; reference says {tracked:?}",
                what()
            );
        }
    }
}

/// A counter that a case moves.
#[derive(Debug)]
enum Counter {
    Rule(u32),
    Outcome(Outcome),
}

/// The seed of a run, and a number from the environment (or its default).
fn run_settings(count: &str, default: usize) -> (u64, usize) {
    let seed: u64 = std::env::var("SG_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let count = std::env::var(count)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (seed, count)
}

/// What went wrong where, for a failing case.
fn describe(seed: u64, n: usize, k: usize, case: &Case, policy: &Policy) -> String {
    format!(
        "seed {seed}, policy {n}, packet {k}: {:?} {:?}\npolicy: {}",
        case.direction,
        case.packet,
        serde_json::to_string(policy).unwrap()
    )
}

#[test]
fn the_compiled_datapath_decides_like_the_reference_matcher() {
    require_root!();
    let (seed, policies) = run_settings("SG_PROPTEST_POLICIES", 250);
    const PACKETS: usize = 400;
    eprintln!(
        "seed {seed} (SG_PROPTEST_SEED={seed} repeats this run), {policies} policies × {PACKETS} packets"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut datapath = Datapath::new();
    for n in 0..policies {
        let policy = random_policy(&mut rng);
        let ids = datapath.install(&policy);
        for k in 0..PACKETS {
            let case = random_case(&mut rng);
            let want = reference::evaluate(&policy, PORT, case.direction, &case.packet).unwrap();
            // Every case a new flow: the cases repeat addresses and ports,
            // and a flow an earlier case started would pass this one
            // whatever the policy says (the stateful test below has them).
            datapath
                .0
                .datapath
                .flush_flows(&FlowFilter::default())
                .unwrap();
            let what = || describe(seed, n, k, &case, &policy);
            let port = policy.port(PORT).unwrap();
            datapath.check((port, &ids), &case, &Tracked::Policy(want), &what);
        }
    }
}

#[test]
fn the_datapath_tracks_connections_like_the_reference_tracker() {
    require_root!();
    let (seed, policies) = run_settings("SG_PROPTEST_STATEFUL_POLICIES", 120);
    const CONVERSATIONS: usize = 4;
    const PACKETS: usize = 160;
    eprintln!(
        "seed {seed} (SG_PROPTEST_SEED={seed} repeats this run), {policies} policies × \
         {PACKETS} packets of {CONVERSATIONS} conversations"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut datapath = Datapath::new();
    let mut full = 0;
    for n in 0..policies {
        let policy = random_policy(&mut rng);
        let ids = datapath.install(&policy);
        // The flows of one policy: the datapath checks those of an earlier
        // one again, which the tracker does not model.
        datapath
            .0
            .datapath
            .flush_flows(&FlowFilter::default())
            .unwrap();
        // A port that may hold a few flows, or as many as it likes.
        let mut tracker = match rng.random_range(0..4) {
            0 => Tracker::new(),
            _ => Tracker::with_limit(rng.random_range(1..=6)),
        };
        let limit = tracker.limit().map_or(0, |limit| limit as u32);
        datapath.0.datapath.set_flow_limit(SLOT, limit).unwrap();
        let conversations: Vec<Conversation> = (0..CONVERSATIONS)
            .map(|_| Conversation::random(&mut rng))
            .collect();
        for k in 0..PACKETS {
            let case = random_turn(&mut rng, &conversations);
            let tracked = tracker
                .decide(&policy, PORT, case.direction, &case.packet)
                .unwrap();
            let what = || describe(seed, n, k, &case, &policy);
            let port = policy.port(PORT).unwrap();
            datapath.check((port, &ids), &case, &tracked, &what);
            full += usize::from(matches!(tracked, Tracked::PortFull(_)));
            // The port's count of flows is exact.
            let flows = datapath.0.datapath.port_flows(SLOT).unwrap().flows;
            assert_eq!(flows, tracker.flows() as u64, "{}: flows", what());
        }
    }
    eprintln!("{full} packets found their port at its limit of flows");
    assert!(
        policies < 20 || full > 0,
        "seed {seed}: no port reached its limit"
    );
}
