//! `cargo xtask bench` (after the BPF_PROG_TEST_RUN microbenchmark): live
//! traffic through a veth into a host namespace, filtered on the way in by
//! sg, by nftables (a rule per rule, and verdict maps) and by iptables, all
//! loaded with the same policies of 0 to 50k rules, against the ceiling of
//! an empty XDP program; TCP bulk throughput through each; how long a
//! policy update takes to be enforced; the memory of sg's maps. Runs it
//! all three times (`--runs`), writes the first run to
//! `docs/bench/loadbench.{json,md,png}` (`--out`) and the spread of the
//! three, with the goals each met, to `spread.md`. `--quick` runs every
//! scenario briefly, to check the harness, and writes into
//! `target/loadbench-quick/` unless told otherwise.
//!
//! Traffic: 64-byte UDP/IPv4 frames from an XDP program run with
//! BPF_PROG_TEST_RUN in live-frames mode, on one CPU; the rate is what
//! `port0` received over a window. The filters track connections (sg's
//! table; the translations' `ct state established,related accept`), so
//! three kinds: `Drop`, random flows the policy drops; `Pass`, new flows,
//! random flows the policy passes, with the tracked flows forgotten before
//! each window and windows short enough that sg's table never fills;
//! `Established`, a bounded set of flows the policy passes, established in
//! the filter before they are measured.

mod filter;
mod plot;
mod report;
mod spread;
mod testbed;
mod translate;

use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use ipnet::IpNet;
use sg_core::model::{
    Action, Direction, Group, IcmpMatch, IpProtocol, MacAddr, Policy, Port, PortRange, PortSpec,
    Protocol, Remote, Rule,
    reference::{self, Packet},
};
use sg_tests::{HOST_V4, PORT, WORKLOAD_V4};

use crate::{
    filter::{Attached, BENCH_PORT, Filter},
    report::{Ceiling, Iperf, Memory, Rate, Report, Traffic, Update},
    testbed::{CPU, FIRST_SPORT, Flows, NICE, Round, SOURCES, SPORTS, Testbed},
};

#[derive(Parser)]
#[command(about = "Live-traffic benchmark of sg against nftables and iptables (root)")]
struct Args {
    /// Every scenario briefly, smaller policies: checks the harness.
    #[arg(long)]
    quick: bool,
    /// Where the JSON, Markdown and PNG go [default: docs/bench, quick:
    /// target/loadbench-quick].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only these filters [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    filter: Vec<Filter>,
    /// Only these rule counts [default: 0,10,1000,10000,50000; quick:
    /// 0,10,1000].
    #[arg(long, value_delimiter = ',')]
    rules: Vec<usize>,
    /// The generator sends one frame in N of those it times and drops the
    /// others itself: the rates of a slower machine, to check that the
    /// benchmark holds at any rate.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    throttle: u32,
    /// Runs of the whole configuration, to see their spread (`spread.md`)
    /// [default: 3, quick: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10))]
    runs: Option<u32>,
}

/// How long and how big.
struct Plan {
    sizes: Cow<'static, [usize]>,
    window: Duration,
    /// A rate is the best of this many windows: other work on the CPU
    /// only ever lowers one.
    rounds: usize,
    /// The rule count of the iperf3 runs and of the update.
    at: usize,
    iperf_seconds: u32,
    /// The frames of a round of new flows, nearly each a flow of its own:
    /// fewer than sg's connection table holds, whatever the rate.
    new_flows: u32,
    /// Runs of the whole configuration.
    runs: u32,
}

const FULL: Plan = Plan {
    sizes: Cow::Borrowed(&[0, 10, 1_000, 10_000, 50_000]),
    window: Duration::from_secs(1),
    rounds: 3,
    at: 10_000,
    iperf_seconds: 3,
    new_flows: NEW_FLOWS,
    runs: 3,
};
const QUICK: Plan = Plan {
    sizes: Cow::Borrowed(&[0, 10, 1_000]),
    window: Duration::from_millis(50),
    rounds: 1,
    at: 1_000,
    iperf_seconds: 1,
    new_flows: NEW_FLOWS / 4,
    runs: 1,
};
const PROBES: u32 = 32;
/// A round of new flows: 70% of sg's connection table, so that it never
/// fills (a full table fails closed, and the rate would be that of drops).
pub const NEW_FLOWS: u32 = sg_common::MAX_CONNTRACK_ENTRIES / 10 * 7;
/// Tries of a round of new flows that yielded no rate.
const ATTEMPTS: usize = 3;
/// The established traffic: about this many flows, to up to
/// `ESTABLISHED_DESTINATIONS` of the allowed remotes, at every port, from
/// `ESTABLISHED_SOURCES` sources and as many source ports as it takes.
const ESTABLISHED_FLOWS: u32 = 16_384;
const ESTABLISHED_DESTINATIONS: u32 = 64;
const ESTABLISHED_SOURCES: u32 = 16;

/// The first remote of the benchmark rules; rule `i` has the next `i`-th.
const FIRST_REMOTE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
const FIRST_PORT: u16 = 1000;
const PORTS: u16 = 16;
const RULES_PER_GROUP: usize = 1000;
const IPERF_PORT: u16 = 5201;

fn remote(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(FIRST_REMOTE) + i as u32)
}

/// The policy of `n` rules: groups of up to 1000 egress rules, rule `i`
/// allowing (even `i`) or dropping (odd) UDP ports 1000–1015 to its own
/// remote address; and after them a group that lets iperf3's connection
/// to the host through, so that its packets are decided last.
fn bench_policy(n: usize) -> Policy {
    let host: IpNet = IpAddr::from(HOST_V4.parse::<Ipv4Addr>().expect("an address")).into();
    let mut base = Group::empty("base").expect("a valid name");
    base.rules.push(Rule {
        protocol: Protocol::List(vec![IpProtocol::TCP]),
        ports: PortSpec(vec![PortRange {
            start: IPERF_PORT,
            end: IPERF_PORT,
        }]),
        remote: Remote::Cidrs(vec![host]),
        ..Rule::new(Direction::Egress)
    });
    base.rules.push(Rule {
        protocol: Protocol::List(vec![IpProtocol::TCP]),
        remote: Remote::Cidrs(vec![host]),
        ..Rule::new(Direction::Ingress)
    });
    let mut groups = Vec::new();
    for i in 0..n {
        if i % RULES_PER_GROUP == 0 {
            let name = format!("bench-{}", i / RULES_PER_GROUP);
            groups.push(Group::empty(name).expect("a valid name"));
        }
        let rule = Rule {
            protocol: Protocol::List(vec![IpProtocol::UDP]),
            ports: PortSpec(vec![PortRange {
                start: FIRST_PORT,
                end: FIRST_PORT + PORTS - 1,
            }]),
            remote: Remote::Cidrs(vec![IpAddr::V4(remote(i)).into()]),
            action: if i % 2 == 0 {
                Action::Allow
            } else {
                Action::Drop
            },
            ..Rule::new(Direction::Egress)
        };
        groups.last_mut().expect("a group").rules.push(rule);
    }
    groups.push(base);
    let mut port = Port::new(BENCH_PORT, PORT, MacAddr([0x02, 0, 0, 0, 0, 2]));
    port.ips = vec![WORKLOAD_V4.parse().expect("an address")];
    port.groups = groups.iter().map(|g| g.name.clone()).collect();
    Policy {
        groups,
        ports: vec![port],
    }
}

fn rule(direction: Direction, protocol: &str, ports: &str, remote: &str) -> Rule {
    Rule {
        protocol: protocol.parse().expect("a protocol"),
        ports: if ports.is_empty() {
            PortSpec::default()
        } else {
            ports.parse().expect("ports")
        },
        remote: remote.parse().expect("a remote"),
        ..Rule::new(direction)
    }
}

/// A policy with every form a rule can take: overlapping prefixes, a
/// priority, reject, protocol lists, ICMP type and code, a remote group,
/// local addresses, both families.
fn sample_policy() -> Policy {
    let mut web = Group::empty("web").expect("a valid name");
    web.rules = vec![
        rule(Direction::Egress, "udp", "53", "198.19.0.0/24"),
        Rule {
            action: Action::Drop,
            ..rule(Direction::Egress, "udp", "53", "198.19.0.5")
        },
        Rule {
            priority: 10,
            action: Action::Reject,
            ..rule(Direction::Egress, "tcp,udp", "25,465-587", "any")
        },
        Rule {
            icmp: IcmpMatch {
                type_: Some(8),
                code: Some(0),
            },
            ..rule(Direction::Ingress, "icmp", "", "any")
        },
        Rule {
            icmp: IcmpMatch {
                type_: Some(128),
                code: None,
            },
            ..rule(Direction::Ingress, "ipv6-icmp", "", "2001:db8::/64")
        },
        Rule {
            remote: Remote::Group("web".into()),
            local: vec!["198.18.0.2/32".parse().expect("a prefix")],
            ..rule(Direction::Ingress, "tcp", "22", "any")
        },
        rule(Direction::Ingress, "gre", "", "any"),
        Rule {
            action: Action::Drop,
            ..rule(Direction::Egress, "udp", "9", "198.19.1.0/24")
        },
        rule(Direction::Egress, "any", "", "any"),
    ];
    web.external_members = vec!["198.18.9.0/24".parse().expect("a prefix")];
    let mut port = Port::new(BENCH_PORT, PORT, MacAddr([2, 0, 0, 0, 0, 2]));
    port.ips = vec![
        WORKLOAD_V4.parse().expect("an address"),
        "2001:db8::2".parse().expect("an address"),
    ];
    port.groups = vec!["web".into()];
    Policy {
        groups: vec![web],
        ports: vec![port],
    }
}

/// Flows of `sample_policy` that its rules decide differently.
const SAMPLE_FLOWS: [(Ipv4Addr, u16); 5] = [
    (Ipv4Addr::new(198, 19, 0, 5), 53),
    (Ipv4Addr::new(198, 19, 0, 7), 53),
    (Ipv4Addr::new(198, 19, 1, 1), 25),
    (Ipv4Addr::new(198, 19, 1, 1), 9),
    (Ipv4Addr::new(198, 19, 1, 1), 10),
];

/// The flows of `traffic` with `n` rules (`None` at 0 for passed traffic:
/// nothing passes).
fn flows(n: usize, traffic: Traffic) -> Option<Flows> {
    let random = |base, stride, count: usize| Flows {
        sources: SOURCES,
        first_sport: FIRST_SPORT,
        sports: SPORTS,
        base,
        stride,
        count: count as u32,
        first_port: FIRST_PORT,
        ports: PORTS,
    };
    match (traffic, n) {
        (Traffic::Pass | Traffic::Established, 0) => None,
        (Traffic::Pass, n) => Some(random(remote(0), 2, n.div_ceil(2))),
        // Nothing but the default: any remote.
        (Traffic::Drop, 0) => Some(random(remote(0), 1, 4096)),
        (Traffic::Drop, n) => Some(random(remote(1), 2, n / 2)),
        (Traffic::Established, n) => {
            let count = (n.div_ceil(2) as u32).min(ESTABLISHED_DESTINATIONS);
            let per_sport = count * u32::from(PORTS) * ESTABLISHED_SOURCES;
            Some(Flows {
                sources: ESTABLISHED_SOURCES,
                sports: ESTABLISHED_FLOWS.div_ceil(per_sport) as u16,
                ..random(remote(0), 2, count as usize)
            })
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        sg_tests::is_root(),
        "needs root: network namespaces, XDP and nftables"
    );
    let mut plan = if args.quick { QUICK } else { FULL };
    if !args.rules.is_empty() {
        plan.sizes = args.rules.into();
    }
    if let Some(runs) = args.runs {
        plan.runs = runs;
    }
    let plan = &plan;
    let filters = if args.filter.is_empty() {
        Filter::ALL.to_vec()
    } else {
        args.filter
    };
    let mut bed = Testbed::new(args.throttle)?;
    let generator = format!(
        "XDP live frames (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES); kernel pktgen: {}",
        if std::path::Path::new("/proc/net/pktgen").exists() {
            "present, not used"
        } else {
            "absent"
        }
    );
    println!("generator: {generator}");
    let mut runs = Vec::new();
    for run in 1..=plan.runs {
        println!("==> run {run} of {}", plan.runs);
        let mut report = Report::new(generator.clone(), args.quick, plan.window, plan.rounds)?;
        report.new_flows = plan.new_flows;
        report.throttle = args.throttle;
        measure_all(&mut bed, plan, &filters, &mut report)?;
        report.finish();
        runs.push(report);
    }
    drop(bed);
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = args.out.unwrap_or_else(|| {
        workspace.join(if args.quick {
            "target/loadbench-quick"
        } else {
            "docs/bench"
        })
    });
    let first = &runs[0];
    first.write(&out)?;
    let plot = out.join("loadbench.png");
    plot::cost(first, &plot)?;
    println!("written: {}", plot.display());
    if runs.len() > 1 {
        spread::write(&runs, &out)?;
    }
    Ok(())
}

/// One run of every filter at every size, with the ceilings before each
/// filter and at the end.
fn measure_all(
    bed: &mut Testbed,
    plan: &Plan,
    filters: &[Filter],
    report: &mut Report,
) -> Result<()> {
    ceilings(bed, plan, report)?;
    report.established_flows = u64::from(ESTABLISHED_FLOWS);
    for &filter in filters {
        if filter != filters[0] {
            ceilings(bed, plan, report)?;
        }
        let mut attached = Attached::new(bed, filter)?;
        let sample = sample_policy();
        attached.install(&sample)?;
        check_verdicts(attached.bed(), &sample, &SAMPLE_FLOWS)
            .with_context(|| format!("{} with the sample policy", filter.label()))?;
        for &n in plan.sizes.iter() {
            measure(&mut attached, plan, n, report)
                .with_context(|| format!("{} with {n} rules", filter.label()))?;
        }
    }
    ceilings(bed, plan, report)
}

/// Measures the ceilings, the empty programs' rates and iperf3 through the
/// empty `XDP_PASS` program, again: before each filter and at the end.
/// Other work on the machine only ever lowers a rate, so each ceiling is
/// the best of all.
fn ceilings(bed: &mut Testbed, plan: &Plan, report: &mut Report) -> Result<()> {
    // The spread of the largest policy's passing traffic (of 10 rules if
    // the run has no other).
    let largest = plan.sizes.iter().copied().max().unwrap_or(0).max(10);
    let flows = flows(largest, Traffic::Pass).context("a policy of rules passes traffic")?;
    for (traffic, program) in [
        (Traffic::Pass, "sg_bench_pass"),
        (Traffic::Drop, "sg_bench_drop"),
    ] {
        let link = bed.attach_empty(program)?;
        let rate = best_rate(bed, flows, plan.window, plan.rounds);
        bed.detach_empty(program, link)?;
        let pps = rate?;
        println!("ceiling, XDP_{traffic:?}: {:.3} Mpps", pps / 1e6);
        match report.ceilings.iter_mut().find(|c| c.traffic == traffic) {
            Some(ceiling) => ceiling.pps = ceiling.pps.max(pps),
            None => report.ceilings.push(Ceiling { traffic, pps }),
        }
    }
    let link = bed.attach_empty("sg_bench_pass")?;
    let gbits = iperf(bed, plan);
    bed.detach_empty("sg_bench_pass", link)?;
    let gbits = gbits?;
    println!("ceiling, iperf3: {gbits:.2} Gbit/s");
    match report.iperf.iter_mut().find(|i| i.filter.is_none()) {
        Some(ceiling) => ceiling.gbits = ceiling.gbits.max(gbits),
        None => report.iperf.push(Iperf {
            filter: None,
            rules: 0,
            gbits,
        }),
    }
    Ok(())
}

/// Every scenario of one filter at one size.
fn measure(attached: &mut Attached, plan: &Plan, n: usize, report: &mut Report) -> Result<()> {
    let filter = attached.filter;
    let policy = bench_policy(n);
    attached.forget_flows()?;
    let started = Instant::now();
    let installed = attached.install(&policy)?;
    let install = started.elapsed();
    attached.remove_replaced()?;
    // The first allowed and dropped flows, if any, and one no rule matches.
    let mut probes = vec![(remote(n + 1), FIRST_PORT + PORTS)];
    probes.extend((0..n.min(2)).map(|i| (remote(i), FIRST_PORT + PORTS - 1)));
    check_verdicts(attached.bed(), &policy, &probes)?;
    if let (Some(entries), Some(bytes)) = (installed.map_entries, installed.map_bytes) {
        report.memory.push(Memory {
            rules: n,
            entries,
            bytes,
        });
    }
    for traffic in Traffic::ALL {
        let Some(flows) = flows(n, traffic) else {
            continue;
        };
        let (pps, window) = match traffic {
            Traffic::Drop => best_rate(attached.bed(), flows, plan.window, plan.rounds)
                .map(|pps| (pps, plan.window)),
            Traffic::Pass => new_flows(attached, flows, plan.new_flows, plan.rounds),
            Traffic::Established => {
                established(attached, flows, plan.window, plan.rounds).map(|pps| (pps, plan.window))
            }
        }
        .with_context(|| traffic.label())?;
        println!(
            "{:<28} {n:>6} rules, {:<18} {:>7.3} Mpps ({:.0} ms to install)",
            filter.label(),
            format!("{}:", traffic.label()),
            pps / 1e6,
            install.as_secs_f64() * 1e3
        );
        report.rates.push(Rate {
            filter,
            rules: n,
            traffic,
            pps,
            window_ms: window.as_secs_f64() * 1e3,
            ..Rate::default()
        });
    }
    if n == plan.at {
        // TCP's own flows only.
        attached.forget_flows()?;
        let gbits = iperf(attached.bed(), plan)?;
        println!(
            "{:<28} {n:>6} rules, iperf3: {gbits:.2} Gbit/s",
            filter.label()
        );
        report.iperf.push(Iperf {
            filter: Some(filter),
            rules: n,
            gbits,
        });
    }
    // How long a change takes to be enforced, at the usual size and at the
    // largest.
    let largest = plan.sizes.iter().copied().max().unwrap_or(0);
    if n == plan.at || (n == largest && n > plan.at) {
        let enforced = update(attached, &policy)?;
        println!(
            "{:<28} {n:>6} rules, update enforced after {:.1} ms",
            filter.label(),
            enforced.as_secs_f64() * 1e3
        );
        report.updates.push(Update {
            filter,
            rules: n,
            ms: enforced.as_secs_f64() * 1e3,
        });
    }
    Ok(())
}

/// The best rate of `rounds` windows.
fn best_rate(bed: &Testbed, flows: Flows, window: Duration, rounds: usize) -> Result<f64> {
    let mut best: f64 = 0.0;
    for _ in 0..rounds {
        best = best.max(bed.rate(flows, window)?);
    }
    Ok(best)
}

/// The best rate of `rounds` rounds of `frames` new flows, each round
/// after the filter forgot the flows it tracked, and the window it was
/// measured over. Fails if sg's table filled up: the rate would be that of
/// new flows dropped as it fails closed.
fn new_flows(
    attached: &Attached,
    flows: Flows,
    frames: u32,
    rounds: usize,
) -> Result<(f64, Duration)> {
    let before = attached.flow_counters()?;
    let mut best = (0.0, Duration::ZERO);
    for _ in 0..rounds {
        let mut attempts = 0;
        let (pps, window) = loop {
            attempts += 1;
            attached.forget_flows()?;
            match attached.bed().rate_of_count(flows, frames)? {
                Round::Rate(pps, window) => break (pps, window),
                Round::Again(why) if attempts == ATTEMPTS => {
                    bail!("no rate of new flows in {ATTEMPTS} rounds; the last: {why}")
                }
                Round::Again(_) => {}
            }
        };
        if pps > best.0 {
            best = (pps, window);
        }
    }
    if let (Some(before), Some(after)) = (before, attached.flow_counters()?) {
        let counted = after - before;
        ensure!(
            counted.full == 0,
            "sg's connection table filled up: {} packets dropped as drop-conntrack-full or \
             drop-conntrack-port-full, {} \
             passed as new flows; rounds of {frames} frames send too much",
            counted.full,
            counted.new
        );
    }
    Ok(best)
}

/// The best rate of `rounds` windows of `flows`, made established in the
/// filter first. Fails if sg took more than a few of the packets in the
/// windows for new flows.
fn established(attached: &Attached, flows: Flows, window: Duration, rounds: usize) -> Result<f64> {
    attached.forget_flows()?;
    attached.bed().establish(flows)?;
    let before = attached.flow_counters()?;
    let pps = best_rate(attached.bed(), flows, window, rounds)?;
    if let (Some(before), Some(after)) = (before, attached.flow_counters()?) {
        let counted = after - before;
        ensure!(
            counted.established > 0 && counted.new * 100 <= counted.established,
            "sg passed {} packets of established flows as such, {} as new flows",
            counted.established,
            counted.new
        );
    }
    Ok(pps)
}

/// What sg's reference matcher says of a UDP packet to `to`:`port`.
fn expected(policy: &Policy, to: Ipv4Addr, port: u16) -> Result<Action> {
    let packet = Packet {
        src: WORKLOAD_V4.parse()?,
        dst: IpAddr::V4(to),
        protocol: IpProtocol::UDP.0,
        src_port: Some(40000),
        dst_port: Some(port),
        icmp: None,
        echo_id: None,
        tcp_flags: 0,
    };
    Ok(reference::evaluate(policy, BENCH_PORT, Direction::Egress, &packet)?.action)
}

/// Real packets through the filter: each flow must pass or not as the
/// reference matcher says (a rejected one does not pass).
fn check_verdicts(bed: &Testbed, policy: &Policy, flows: &[(Ipv4Addr, u16)]) -> Result<()> {
    for &(to, port) in flows {
        let want = match expected(policy, to, port)? {
            Action::Reject => Action::Drop,
            action => action,
        };
        let passed = bed.probe(to, port, PROBES)?;
        let got = match passed {
            0 => Action::Drop,
            p if p == u64::from(PROBES) => Action::Allow,
            p => bail!("{p} of {PROBES} probes to {to}:{port} passed"),
        };
        ensure!(
            got == want,
            "UDP to {to}:{port}: the filter did {got}, sg's reference matcher says {want}"
        );
    }
    Ok(())
}

/// Turns rule 0 from allow into drop; the time from the start of the
/// install to the end of the first probe dropped. Every probe is a new
/// flow (a source port of its own): the filter's policy decides it. A flow
/// already tracked would tell the tracking instead: sg revokes the flows a
/// new policy no longer allows, netfilter keeps them established. The
/// first probe is ready (its frame built, its socket open) before the
/// clock starts.
fn update(attached: &mut Attached, policy: &Policy) -> Result<Duration> {
    const LIMIT: Duration = Duration::from_secs(30);
    let (to, port) = (remote(0), FIRST_PORT);
    ensure!(attached.bed().probe(to, port, PROBES)? == u64::from(PROBES));
    let mut changed = policy.clone();
    changed.groups[0].rules[0].action = Action::Drop;
    let mut probe = attached.bed().prepare_probe(to, port)?;
    let started = Instant::now();
    attached.install(&changed)?;
    while attached.bed().send_probe(&mut probe, PROBES)? != 0 {
        ensure!(
            started.elapsed() < LIMIT,
            "the update was not enforced in {LIMIT:?}"
        );
        probe = attached.bed().prepare_probe(to, port)?;
    }
    let enforced = started.elapsed();
    attached.remove_replaced()?;
    Ok(enforced)
}

/// A child process killed when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// TCP bulk throughput from the workload to the host, iperf3 on `CPU`
/// at `NICE`: the best of `plan.rounds` runs of `plan.iperf_seconds`, as
/// a rate is the best of its windows.
fn iperf(bed: &Testbed, plan: &Plan) -> Result<f64> {
    let mut best = 0f64;
    for _ in 0..plan.rounds {
        best = best.max(iperf_once(bed, plan.iperf_seconds)?);
    }
    Ok(best)
}

/// One iperf3 run of `seconds`.
fn iperf_once(bed: &Testbed, seconds: u32) -> Result<f64> {
    let in_ns = |ns: &sg_tests::Netns| {
        let mut cmd = Command::new("ip");
        let (nice, cpu) = (NICE.to_string(), CPU.to_string());
        cmd.args(["netns", "exec", ns.name(), "nice", "-n", &nice]);
        cmd.args(["taskset", "-c", &cpu]);
        cmd.arg("iperf3");
        cmd
    };
    let port = IPERF_PORT.to_string();
    let _server = Reaped(
        in_ns(&bed.link.host)
            .args(["-s", "-1", "-B", HOST_V4, "-p", &port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3: `cargo xtask setup` installs it")?,
    );
    for _ in 0..50 {
        let out = in_ns(&bed.link.workload)
            .args(["-c", HOST_V4, "-p", &port, "-J", "-t", &seconds.to_string()])
            .output()?;
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bits) = result["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bits / 1e9);
        }
        // The server may not listen yet.
        thread::sleep(Duration::from_millis(100));
    }
    bail!("iperf3 from the workload to {HOST_V4}:{port} did not run")
}
