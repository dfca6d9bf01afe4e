//! `cargo xtask bench`: the cost per packet of port security and of sg's
//! policy as the rule count grows, measured with BPF_PROG_TEST_RUN on the
//! real programs, and the kernel memory of the compiled policy. Every
//! number is from this run.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::Result;
use ipnet::IpNet;
use sg_common::{Direction as Dir, map_names};
use sg_core::{
    compile::{compile, counter_ids},
    model::{
        Action, Direction, Group, IpProtocol, MacAddr, Policy, Port, PortRange, PortSpec, Protocol,
        Remote, Rule,
    },
    port_security::PortSecurity,
};
use sg_ctl::{
    datapath::{Forward, TestRun, WithoutPolicy, conntrack::FlowFilter},
    frame::{Packet, TcpFlags, Transport},
};
use sg_tests::TestPort;

const SLOT: u32 = 0;
const PORT: &str = "vm";
const OWN: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
const OWN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const SIZES: [usize; 4] = [10, 1_000, 10_000, 50_000];
const REPEAT: u32 = 200_000;
const ROUNDS: usize = 5;

/// What the rules of a benchmark policy look like. Rule `i` allows (even
/// `i`) or drops (odd) TCP from one remote to some ports: nothing that a
/// class could merge.
#[derive(Clone, Copy)]
enum Shape {
    /// One IPv4 address and one port per rule: the exact hashes.
    Hosts,
    /// One IPv6 /64 and a range of 4 ports per rule: the tries.
    Prefixes,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Hosts => "one IPv4 address and one TCP port per rule",
            Shape::Prefixes => "one IPv6 /64 and a range of 4 TCP ports per rule",
        }
    }

    /// Rule `i`'s remote, a packet's source in it, and its first port.
    fn target(self, i: usize) -> (IpNet, IpAddr, u16) {
        match self {
            Shape::Hosts => {
                let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i as u32);
                let net = IpNet::from(IpAddr::V4(addr));
                (net, IpAddr::V4(addr), 1 + (i * 7 % 65_535) as u16)
            }
            Shape::Prefixes => {
                let net = Ipv6Addr::new(0x2001, 0xdb8, 1, i as u16, 0, 0, 0, 0);
                let host = Ipv6Addr::new(0x2001, 0xdb8, 1, i as u16, 0, 0, 0, 9);
                let net = IpNet::new(IpAddr::V6(net), 64).expect("a valid prefix");
                (net, IpAddr::V6(host), 1 + (i * 4 % 65_532) as u16)
            }
        }
    }

    fn ports(self) -> u16 {
        match self {
            Shape::Hosts => 1,
            Shape::Prefixes => 4,
        }
    }

    fn policy(self, n: usize) -> Policy {
        let mut group = Group::empty("bench").expect("a valid name");
        for i in 0..n {
            let (remote, _, port) = self.target(i);
            let mut rule = Rule::new(Direction::Ingress);
            rule.protocol = Protocol::List(vec![IpProtocol::TCP]);
            rule.ports = PortSpec(vec![PortRange {
                start: port,
                end: port + self.ports() - 1,
            }]);
            rule.remote = Remote::Cidrs(vec![remote]);
            rule.action = if i % 2 == 0 {
                Action::Allow
            } else {
                Action::Drop
            };
            group.rules.push(rule);
        }
        let mut port = Port::new(PORT, "bench0", MacAddr([0x02, 0, 0, 0, 0, 2]));
        port.ips = vec![IpAddr::V4(OWN), IpAddr::V6(OWN6)];
        port.groups = vec!["bench".to_string()];
        Policy {
            groups: vec![group],
            ports: vec![port],
        }
    }

    /// A SYN that the last of `n` rules decides.
    fn last(self, n: usize) -> Result<Vec<u8>> {
        let (_, from, port) = self.target(n - 1);
        syn(from, port + self.ports() - 1)
    }

    /// A SYN that no rule matches.
    fn unmatched(self) -> Result<Vec<u8>> {
        match self {
            Shape::Hosts => syn(IpAddr::V4(Ipv4Addr::new(198, 19, 255, 254)), 9),
            Shape::Prefixes => syn(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1)),
                9,
            ),
        }
    }
}

fn syn(from: IpAddr, port: u16) -> Result<Vec<u8>> {
    segment(Dir::Ingress, from, (40000, port), TcpFlags::SYN)
}

/// A TCP segment between `peer` and the workload in `direction`; `ports`
/// are the peer's and the workload's.
fn segment(direction: Dir, peer: IpAddr, ports: (u16, u16), flags: TcpFlags) -> Result<Vec<u8>> {
    let own = match peer {
        IpAddr::V4(_) => IpAddr::V4(OWN),
        IpAddr::V6(_) => IpAddr::V6(OWN6),
    };
    let (src, dst, src_port, dst_port) = match direction {
        Dir::Ingress => (peer, own, ports.0, ports.1),
        Dir::Egress => (own, peer, ports.1, ports.0),
    };
    Ok(Packet::tcp(src, dst, src_port, dst_port, flags).frame()?)
}

/// New flows: single runs on SYNs of distinct connections.
const NEW_FLOWS: u16 = 5_000;

/// Prints what connection tracking costs per packet: the first packet of
/// a flow (classified, then entered in the table) and a packet of a
/// tracked flow (found in the table, its state and counters updated).
fn conntrack_cost(port: &mut TestPort) -> Result<()> {
    port.install(&Shape::Hosts.policy(SIZES[0]), PORT)?;
    // Rule 0 allows its remote to its port.
    let (_, peer, service) = Shape::Hosts.target(0);
    let mut total = Duration::ZERO;
    for n in 0..NEW_FLOWS {
        let frame = segment(Dir::Ingress, peer, (10_000 + n, service), TcpFlags::SYN)?;
        let (forward, took) = port.run.run_repeated(Dir::Ingress, &frame, 1)?;
        anyhow::ensure!(forward == Forward::Pass, "a new flow passes");
        total += took;
    }
    let new = total.as_nanos() as f64 / f64::from(NEW_FLOWS);
    port.datapath.flush_flows(&FlowFilter::default())?;
    let ports = (40000, service);
    let ack = TcpFlags {
        ack: true,
        ..TcpFlags::default()
    };
    let syn_ack = TcpFlags { syn: true, ..ack };
    port.run.run(
        Dir::Ingress,
        &segment(Dir::Ingress, peer, ports, TcpFlags::SYN)?,
    )?;
    port.run
        .run(Dir::Egress, &segment(Dir::Egress, peer, ports, syn_ack)?)?;
    let established = segment(Dir::Ingress, peer, ports, ack)?;
    // The same single runs on a tracked flow: what a single run costs
    // besides the program.
    let mut total = Duration::ZERO;
    for _ in 0..NEW_FLOWS {
        total += port.run.run_repeated(Dir::Ingress, &established, 1)?.1;
    }
    let single = total.as_nanos() as f64 / f64::from(NEW_FLOWS);
    let tracked = ns_per_packet(&port.run, Dir::Ingress, &established)?;
    let reply = ns_per_packet(
        &port.run,
        Dir::Egress,
        &segment(Dir::Egress, peer, ports, ack)?,
    )?;
    port.datapath.flush_flows(&FlowFilter::default())?;
    port.datapath.clear_policy(SLOT)?;
    println!(
        "connection tracking cost per packet ({} rules, TCP)",
        SIZES[0]
    );
    println!("mean of {NEW_FLOWS} single runs (TC), each timed with its run's overhead:");
    println!("  new flow (SYN, classified and entered): {new:.1} ns");
    println!("  established flow: {single:.1} ns");
    println!(
        "  the table's kernel memory ({} entries): {:.1} MB, and its ring of started flows {:.1} MB",
        sg_common::MAX_CONNTRACK_ENTRIES,
        sg_tests::map_memory(port.pins(), map_names::CONNTRACK)? as f64 / 1e6,
        sg_tests::map_memory(port.pins(), map_names::CONNTRACK_RING)? as f64 / 1e6
    );
    println!("best of {ROUNDS} × {REPEAT} runs:");
    println!("  established flow, toward the workload (TC): {tracked:.1} ns/packet");
    println!("  established flow, from the workload (XDP): {reply:.1} ns/packet");
    println!();
    Ok(())
}

/// The best of a few rounds of the kernel's mean time per run of the
/// program of `direction`.
fn ns_per_packet(run: &TestRun, direction: Dir, frame: &[u8]) -> Result<f64> {
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        best = best.min(run.run_repeated(direction, frame, REPEAT)?.1);
    }
    Ok(best.as_nanos() as f64)
}

const WORKLOAD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// Frames of the workload with port security's work on them: its own
/// traffic both ways, and a neighbour advertisement (two owned lookups).
fn port_security_frames() -> Result<Vec<(&'static str, Dir, Vec<u8>)>> {
    let peer = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
    let peer6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    let from = |src: IpAddr, dst: IpAddr| {
        let mut packet = Packet::udp(src, dst, 40000, 53);
        packet.src_mac = WORKLOAD_MAC;
        packet
    };
    let mut advert = from(IpAddr::V6(OWN6), peer6);
    advert.transport = Transport::NeighbourDiscovery {
        type_: 136,
        target: OWN6,
    };
    let mut toward = from(peer, IpAddr::V4(OWN));
    (toward.src_mac, toward.dst_mac) = (toward.dst_mac, WORKLOAD_MAC);
    Ok(vec![
        (
            "from the workload, IPv4 UDP",
            Dir::Egress,
            from(IpAddr::V4(OWN), peer).frame()?,
        ),
        (
            "from the workload, IPv6 UDP",
            Dir::Egress,
            from(IpAddr::V6(OWN6), peer6).frame()?,
        ),
        (
            "from the workload, neighbour advert",
            Dir::Egress,
            advert.frame()?,
        ),
        (
            "toward the workload, IPv4 UDP",
            Dir::Ingress,
            toward.frame()?,
        ),
    ])
}

/// Prints what port security costs per packet: off, then on.
fn port_security_cost(port: &TestPort) -> Result<()> {
    let frames = port_security_frames()?;
    let off = frames
        .iter()
        .map(|(_, direction, frame)| ns_per_packet(&port.run, *direction, frame))
        .collect::<Result<Vec<_>>>()?;
    let security = PortSecurity {
        enabled: true,
        mac: MacAddr(WORKLOAD_MAC),
        ips: vec![IpAddr::V4(OWN), IpAddr::V6(OWN6)],
        ..PortSecurity::OFF
    };
    port.datapath.install_port_security(SLOT, &security)?;
    println!("port security cost per packet (XDP from the workload, TC toward it)");
    println!("{:<36} {:>9} {:>9}", "", "off", "on");
    for ((what, direction, frame), off) in frames.iter().zip(off) {
        let on = ns_per_packet(&port.run, *direction, frame)?;
        println!("{what:<36} {off:>6.1} ns {on:>6.1} ns");
    }
    port.datapath
        .install_port_security(SLOT, &PortSecurity::OFF)?;
    println!();
    Ok(())
}

fn main() -> Result<()> {
    let mut port = TestPort::new(SLOT, WithoutPolicy::Pass)?;
    port_security_cost(&port)?;
    conntrack_cost(&mut port)?;
    let no_policy = ns_per_packet(&port.run, Dir::Ingress, &Shape::Hosts.unmatched()?)?;
    println!(
        "sg policy cost per packet (TC program, BPF_PROG_TEST_RUN, best of {ROUNDS} × {REPEAT} runs)"
    );
    println!("without a policy (parse and blocklist only): {no_policy:.1} ns/packet");
    for (program, count) in port.run.verified_instructions()? {
        println!("{program}: {count} instructions verified");
    }
    for shape in [Shape::Hosts, Shape::Prefixes] {
        println!("\n{}:", shape.name());
        // Each size replaces the one before; the first starts clean.
        port.datapath.clear_policy(SLOT)?;
        run(&mut port, shape)?;
    }
    println!(
        "\nratio: to the same packet at {} rules; goal ≤ 1.2×",
        SIZES[0]
    );
    Ok(())
}

fn run(port: &mut TestPort, shape: Shape) -> Result<()> {
    println!(
        "{:>7} {:>11} {:>12} {:>9} {:>12} {:>9} {:>10} {:>10}",
        "rules", "install", "map entries", "memory", "last rule", "ratio", "no match", "ratio"
    );
    let unmatched = shape.unmatched()?;
    let mut base: Option<(f64, f64)> = None;
    for n in SIZES {
        let policy = shape.policy(n);
        let started = Instant::now();
        let counters = counter_ids(&policy)?;
        let (_, compiled) = port.datapath.install_policy(SLOT, |id| -> Result<_> {
            Ok(compile(&policy, PORT, id, &counters)?)
        })?;
        let took = started.elapsed();
        let memory = sg_tests::policy_memory(port.pins())?;
        let last = ns_per_packet(&port.run, Dir::Ingress, &shape.last(n)?)?;
        let none = ns_per_packet(&port.run, Dir::Ingress, &unmatched)?;
        let (base_last, base_none) = *base.get_or_insert((last, none));
        println!(
            "{n:>7} {:>9.1}ms {:>12} {:>7.1}MB {:>9.1} ns {:>8.2}× {:>7.1} ns {:>8.2}×",
            took.as_secs_f64() * 1e3,
            compiled.entries(),
            memory as f64 / 1e6,
            last,
            last / base_last,
            none,
            none / base_none,
        );
    }
    Ok(())
}
