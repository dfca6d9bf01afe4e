//! The results of a run: a Markdown table (printed and written), the same
//! as JSON, and a plot, with the machine they came from.

use std::{fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::filter::Filter;

/// What a rate was measured with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Traffic {
    /// Random flows the policy drops (XDP_DROP for the ceiling).
    #[default]
    Drop,
    /// New flows: random flows the policy passes, each frame most likely
    /// the first of its flow (XDP_PASS for the ceiling).
    Pass,
    /// A bounded set of flows the policy passes, all established in the
    /// filter before (the XDP_PASS ceiling).
    Established,
}

impl Traffic {
    pub const ALL: [Traffic; 3] = [Traffic::Drop, Traffic::Pass, Traffic::Established];

    pub fn label(self) -> &'static str {
        match self {
            Traffic::Drop => "Drop",
            Traffic::Pass => "Pass, new flows",
            Traffic::Established => "Pass, established",
        }
    }

    /// The traffic of the empty program whose rate is this one's ceiling.
    pub fn ceiling(self) -> Traffic {
        match self {
            Traffic::Drop => Traffic::Drop,
            Traffic::Pass | Traffic::Established => Traffic::Pass,
        }
    }
}

#[derive(Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub nft: String,
    pub iptables: String,
}

/// The rate of an empty program: `Drop` for XDP_DROP, `Pass` for
/// XDP_PASS.
#[derive(Serialize)]
pub struct Ceiling {
    pub traffic: Traffic,
    pub pps: f64,
}

#[derive(Serialize)]
pub struct Rate {
    pub filter: Filter,
    pub rules: usize,
    pub traffic: Traffic,
    pub pps: f64,
    /// The window `pps` was counted over (new flows: the middle of a
    /// round, as long as it took).
    pub window_ms: f64,
    pub ns_per_packet: f64,
    /// `ns_per_packet` less the ceiling's: the filter's own cost, without
    /// the generator's and the empty program's.
    pub over_ceiling_ns: f64,
    /// To the empty program's rate for the same verdict.
    pub to_ceiling: f64,
    /// To nftables' rates with the same rules and traffic.
    pub to_nft_rules: Option<f64>,
    pub to_nft_sets: Option<f64>,
}

impl Default for Rate {
    fn default() -> Self {
        Rate {
            filter: Filter::Sg,
            rules: 0,
            traffic: Traffic::Drop,
            pps: 0.0,
            window_ms: 0.0,
            ns_per_packet: 0.0,
            over_ceiling_ns: 0.0,
            to_ceiling: 0.0,
            to_nft_rules: None,
            to_nft_sets: None,
        }
    }
}

#[derive(Serialize)]
pub struct Iperf {
    /// `None`: no filter (the empty XDP program only).
    pub filter: Option<Filter>,
    pub rules: usize,
    pub gbits: f64,
}

#[derive(Serialize)]
pub struct Update {
    pub filter: Filter,
    pub rules: usize,
    pub ms: f64,
}

#[derive(Serialize)]
pub struct Memory {
    pub rules: usize,
    pub entries: usize,
    pub bytes: u64,
}

#[derive(Serialize)]
pub struct Goal {
    pub goal: String,
    pub value: f64,
    pub met: bool,
}

#[derive(Serialize)]
pub struct Report {
    pub machine: Machine,
    pub generator: String,
    pub quick: bool,
    pub window_ms: u128,
    /// The flows of the established traffic, per filter and size.
    pub established_flows: u64,
    /// The frames, nearly each a new flow, of a round of new flows.
    pub new_flows: u32,
    /// Of the frames timed, the generator sent one in this many
    /// (`--throttle`; 1: every one).
    pub throttle: u32,
    pub rounds: usize,
    pub ceilings: Vec<Ceiling>,
    pub rates: Vec<Rate>,
    pub iperf: Vec<Iperf>,
    pub updates: Vec<Update>,
    pub memory: Vec<Memory>,
    pub goals: Vec<Goal>,
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Machine {
    fn this() -> Result<Machine> {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo")?;
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        Ok(Machine {
            kernel: nix::sys::utsname::uname()?
                .release()
                .to_string_lossy()
                .into_owned(),
            cpu,
            cpus: std::thread::available_parallelism()?.get(),
            nft: command_line("nft", &["--version"]),
            iptables: command_line("iptables", &["--version"]),
        })
    }
}

impl Report {
    pub fn new(generator: String, quick: bool, window: Duration, rounds: usize) -> Result<Report> {
        Ok(Report {
            machine: Machine::this()?,
            generator,
            quick,
            window_ms: window.as_millis(),
            established_flows: 0,
            new_flows: 0,
            throttle: 1,
            rounds,
            ceilings: Vec::new(),
            rates: Vec::new(),
            iperf: Vec::new(),
            updates: Vec::new(),
            memory: Vec::new(),
            goals: Vec::new(),
        })
    }

    fn pps(&self, filter: Filter, rules: usize, traffic: Traffic) -> Option<f64> {
        self.rates
            .iter()
            .find(|r| r.filter == filter && r.rules == rules && r.traffic == traffic)
            .map(|r| r.pps)
    }

    /// The ceiling of `traffic`, if measured.
    pub fn ceiling(&self, traffic: Traffic) -> Option<f64> {
        self.ceilings
            .iter()
            .find(|c| c.traffic == traffic.ceiling())
            .map(|c| c.pps)
    }

    /// Ratios and the goals, from the rates.
    pub fn finish(&mut self) {
        let ratios: Vec<_> = self
            .rates
            .iter()
            .map(|r| {
                let nft = |filter| self.pps(filter, r.rules, r.traffic).map(|p| r.pps / p);
                (
                    r.pps / self.ceiling(r.traffic).unwrap_or(f64::NAN),
                    nft(Filter::NftRules),
                    nft(Filter::NftSets),
                )
            })
            .collect();
        for (rate, (ceiling, rules, sets)) in self.rates.iter_mut().zip(ratios) {
            rate.ns_per_packet = 1e9 / rate.pps;
            rate.over_ceiling_ns = rate.ns_per_packet - rate.ns_per_packet * ceiling;
            rate.to_ceiling = ceiling;
            rate.to_nft_rules = rules;
            rate.to_nft_sets = sets;
        }
        self.goals = self.goals_met();
    }

    /// The goals of the filter's own cost (ns per packet over the ceiling
    /// of the same run), where the run measured what they need.
    fn goals_met(&self) -> Vec<Goal> {
        let cost = |filter, n, traffic| {
            self.rates
                .iter()
                .find(|r| r.filter == filter && r.rules == n && r.traffic == traffic)
                .map(|r| r.over_ceiling_ns)
        };
        let sg = |n, traffic| cost(Filter::Sg, n, traffic);
        let mut goals: Vec<(String, f64, bool)> = Vec::new();
        let mut at_most = |goal: String, value: Option<f64>, limit: f64| {
            if let Some(value) = value {
                goals.push((goal, value, value <= limit));
            }
        };
        at_most(
            "dropped random flows, 0 rules: ≤ 80 ns over XDP_DROP".into(),
            sg(0, Traffic::Drop),
            80.0,
        );
        at_most(
            "dropped random flows, 50000 rules: ≤ 150 ns over XDP_DROP".into(),
            sg(50_000, Traffic::Drop),
            150.0,
        );
        at_most(
            "dropped random flows: cost at 50000 rules ≤ 1.5× that at 10".into(),
            sg(50_000, Traffic::Drop)
                .zip(sg(10, Traffic::Drop))
                .map(|(a, b)| a / b),
            1.5,
        );
        at_most(
            "established flows, 10000 rules: ≤ 80 ns over XDP_PASS".into(),
            sg(10_000, Traffic::Established),
            80.0,
        );
        for (ms, n) in [(50.0, 10_000), (250.0, 50_000)] {
            let update = self
                .updates
                .iter()
                .find(|u| u.filter == Filter::Sg && u.rules == n)
                .map(|u| u.ms);
            at_most(format!("policy update, {n} rules: < {ms} ms"), update, ms);
        }
        for (traffic, times) in [
            (Traffic::Drop, 5.0),
            (Traffic::Established, 2.5),
            (Traffic::Pass, 2.0),
        ] {
            let ratio = cost(Filter::NftSets, 10_000, traffic)
                .zip(sg(10_000, traffic))
                .map(|(nft, sg)| nft / sg);
            if let Some(ratio) = ratio {
                goals.push((
                    format!(
                        "10000 rules, {}: ≥ {times}× cheaper than nftables with maps",
                        traffic.label()
                    ),
                    ratio,
                    ratio >= times,
                ));
            }
        }
        let gbits = |filter| {
            self.iperf
                .iter()
                .find(|i| i.filter == filter)
                .map(|i| i.gbits)
        };
        if let (Some(sg), Some(ceiling)) = (gbits(Some(Filter::Sg)), gbits(None)) {
            let ratio = sg / ceiling;
            goals.push((
                "TCP bulk: ≥ 0.97 of the empty program's".into(),
                ratio,
                ratio >= 0.97,
            ));
        }
        goals
            .into_iter()
            .map(|(goal, value, met)| Goal { goal, value, met })
            .collect()
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Load benchmark{}\n",
            if self.quick { " (quick mode)" } else { "" }
        );
        let _ = writeln!(
            out,
            "Kernel {}, {} ({} CPUs), {}, {}.\n\nGenerator: {}{}; 64-byte UDP/IPv4 frames, \
             generator and receiver on CPU {} (nice {}); a rate is the best of {} windows. The \
             filters track connections: sg's table, and the translations' `ct state \
             established,related accept` ahead of the rules. Traffic:\n\n\
             - **Drop**: random flows (random sources, source ports, destinations and ports) \
             that the policy drops; windows of {} ms.\n\
             - **Pass, new flows**: random flows that the policy passes, nearly every frame the \
             first of a new flow; both sg's and netfilter's flows forgotten before each round. \
             A round is {} frames, fewer than sg's connection table holds whatever the rate; \
             its window is from when a tenth of them had arrived to when nine tenths had \
             ({} new flows), {:.1} ms at the longest in this run.\n\
             - **Pass, established**: about {} flows that the policy passes, made established in \
             the filter before (each flow's first packet from the workload, then a reply through the \
             host), picked at random; windows of {} ms.\n",
            m.kernel,
            m.cpu,
            m.cpus,
            m.nft,
            m.iptables,
            self.generator,
            if self.throttle > 1 {
                format!(
                    ", throttled: it sent one frame in {} of those timed",
                    self.throttle
                )
            } else {
                String::new()
            },
            crate::testbed::CPU,
            crate::testbed::NICE,
            self.rounds,
            self.window_ms,
            self.new_flows,
            self.new_flows / 10 * 8,
            self.rates
                .iter()
                .filter(|r| r.traffic == Traffic::Pass)
                .map(|r| r.window_ms)
                .fold(0.0, f64::max),
            self.established_flows,
            self.window_ms
        );
        for c in &self.ceilings {
            let _ = writeln!(
                out,
                "Ceiling, empty XDP program, XDP_{}: {:.3} Mpps ({:.1} ns/packet)  ",
                format!("{:?}", c.traffic).to_uppercase(),
                c.pps / 1e6,
                1e9 / c.pps
            );
        }
        out.push_str(
            "\n| filter | rules | traffic | Mpps | ns/packet | ns over ceiling | × ceiling | × nft per rule | × nft maps |\n\
             |---|---:|---|---:|---:|---:|---:|---:|---:|\n",
        );
        let ratio = |v: Option<f64>| v.map_or("".to_string(), |v| format!("{v:.2}"));
        for r in &self.rates {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.3} | {:.1} | {:.1} | {:.2} | {} | {} |",
                r.filter.label(),
                r.rules,
                r.traffic.label(),
                r.pps / 1e6,
                r.ns_per_packet,
                r.over_ceiling_ns,
                r.to_ceiling,
                ratio(r.to_nft_rules),
                ratio(r.to_nft_sets)
            );
        }
        let _ = write!(
            out,
            "\nTCP bulk: each filter's the best of {} iperf3 runs; the empty program's, the best of those before each filter and at the end.\n\n| TCP bulk (iperf3), filter | rules | Gbit/s |\n|---|---:|---:|\n",
            self.rounds
        );
        for i in &self.iperf {
            let label = i.filter.map_or("none (empty XDP program)", Filter::label);
            let _ = writeln!(out, "| {label} | {} | {:.2} |", i.rules, i.gbits);
        }
        out.push_str(
            "\n| policy update, filter | rules | enforced after (ms) |\n|---|---:|---:|\n",
        );
        for u in &self.updates {
            let _ = writeln!(out, "| {} | {} | {:.1} |", u.filter.label(), u.rules, u.ms);
        }
        out.push_str("\n| sg rules | map entries | map memory (MB) |\n|---:|---:|---:|\n");
        for mem in &self.memory {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} |",
                mem.rules,
                mem.entries,
                mem.bytes as f64 / 1e6
            );
        }
        out.push_str("\n| goal | value | met |\n|---|---:|---|\n");
        for g in &self.goals {
            let _ = writeln!(
                out,
                "| {} | {:.3} | {} |",
                g.goal,
                g.value,
                if g.met { "yes" } else { "no" }
            );
        }
        out
    }

    /// Prints the Markdown and writes `loadbench.{md,json}` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let markdown = self.markdown();
        println!("\n{markdown}");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = &dir.canonicalize()?;
        fs::write(dir.join("loadbench.md"), &markdown)?;
        fs::write(
            dir.join("loadbench.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        println!("written: {}/loadbench.{{md,json}}", dir.display());
        Ok(())
    }
}
