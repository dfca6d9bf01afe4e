//! Where the load benchmark's traffic flows: a workload namespace whose
//! `eth0` sends, a host namespace whose `port0` receives and carries the
//! filter, and a tun device without a reader in the host that takes (and
//! drops) what the host forwards, and through which the host is handed the
//! replies that make flows established. The generator and the programs of
//! the ceiling.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramError, TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId,
    },
};
use sg_ctl::frame::Packet;
use sg_tests::{FrameFile, Netns, PORT, VethPort, WORKLOAD_V4, mac_of};

/// Where forwarded traffic leaves the host: a tun device nobody reads,
/// without carrier, so what is routed to it is freed at once. (Forwarded
/// packets are counted by the host's IP statistics: `OutTransmits`, after
/// the netfilter hooks, less `OutRequests`, the host's own packets, as the
/// ICMP errors of a reject. `ForwDatagrams` counts before the forward
/// hook.)
pub const SINK: &str = "sink0";
/// The destinations of generated traffic (routed to `SINK`).
pub const DESTINATIONS: &str = "198.19.0.0/16";
/// The CPU the generator (and with it the receiving veth's NAPI) and
/// iperf3 run on.
pub const CPU: usize = 1;

/// `cargo xtask build-ebpf` puts the generator's object here.
fn object_path() -> PathBuf {
    std::env::var_os("SG_TRAFFICGEN_OBJECT").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/ebpf/bpfel-unknown-none/release/sg-trafficgen")
        },
        PathBuf::from,
    )
}

fn object() -> Result<Vec<u8>> {
    let path = object_path();
    std::fs::read(&path).with_context(|| {
        format!(
            "reading the generator's eBPF object {}: `cargo xtask build-ebpf` builds it",
            path.display()
        )
    })
}

/// Generated frames come from `FIRST_SOURCE` and at most the next
/// `SOURCES - 1` addresses, all on the workload's subnet.
const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const SOURCES: u32 = 200;
/// The source ports of random flows: `FIRST_SPORT` and the next
/// `SPORTS - 1`. The probes' source ports come after them.
pub const FIRST_SPORT: u16 = 1024;
pub const SPORTS: u16 = 32_768;
const FIRST_PROBE_SPORT: u16 = FIRST_SPORT + SPORTS;

/// What the generator sends: UDP from one of `sources` addresses from
/// `FIRST_SOURCE`, from one of `sports` ports from `first_sport`, to
/// `base + stride * k` for a `k < count`, at one of `ports` ports from
/// `first_port`: a flow at random for each frame, or (`establish`) each in
/// turn.
#[derive(Clone, Copy, Debug)]
pub struct Flows {
    pub sources: u32,
    pub first_sport: u16,
    pub sports: u16,
    pub base: Ipv4Addr,
    pub stride: u32,
    pub count: u32,
    pub first_port: u16,
    pub ports: u16,
}

impl Flows {
    /// How many different flows there are.
    pub fn len(&self) -> u64 {
        u64::from(self.sources)
            * u64::from(self.sports)
            * u64::from(self.count)
            * u64::from(self.ports)
    }

    /// Every flow's reply, in the generator's sequential order: UDP from
    /// the destination and its port to the source and its port.
    fn replies(&self) -> impl Iterator<Item = Packet> {
        let flows = *self;
        (0..flows.len()).map(move |n| {
            let (count, ports) = (u64::from(flows.count), u64::from(flows.ports));
            let rest = n / count / ports;
            let k = (n % count) as u32;
            let dst = Ipv4Addr::from(u32::from(flows.base) + flows.stride * k);
            let dport = flows.first_port + (n / count % ports) as u16;
            let src =
                Ipv4Addr::from(u32::from(FIRST_SOURCE) + (rest % u64::from(flows.sources)) as u32);
            let sport = flows.first_sport + (rest / u64::from(flows.sources)) as u16;
            Packet::udp(dst.into(), src.into(), dport, sport)
        })
    }
}

/// Runs `f` on a thread inside `ns` and waits for it; unlike
/// `Netns::within`, `f` may borrow.
pub fn inside<T: Send>(ns: &Netns, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                sg_ctl::netns::enter(ns.name())?;
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// How long a rate's generator runs before its window starts.
pub const SETTLE: Duration = Duration::from_millis(100);
/// How long frames sent may take to be received and forwarded, at most.
const SETTLED: Duration = Duration::from_secs(5);
/// No run sends more than this, whatever the window.
const RUN_LIMIT: u32 = 200_000_000;

/// Nice value of the generator thread, the thread that samples its rate,
/// and iperf3: other work on the machine then takes little time from them.
pub const NICE: i32 = -20;

/// Pins the calling thread to `CPU`, at `NICE`.
fn take_cpu() -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(CPU)?;
    run_on(&set)
}

/// Keeps the calling thread off `CPU`, where it would take time from the
/// generator and the receiver, at `NICE`, where other work on the machine
/// takes little time from it.
fn leave_cpu() -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    let cpus = thread::available_parallelism()?.get();
    for cpu in (0..cpus).filter(|&cpu| cpu != CPU) {
        set.set(cpu)?;
    }
    run_on(&set)
}

/// Runs the calling thread on `cpus` at `NICE`.
fn run_on(cpus: &nix::sched::CpuSet) -> Result<()> {
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), cpus)
        .context("setting the CPUs of a thread")?;
    // SAFETY: setpriority(2) on the calling thread (who 0).
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
    ensure!(
        rc == 0,
        "setting nice {NICE}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The host's counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkCounters {
    /// Frames `port0` received (before its XDP program's verdict).
    pub received: u64,
    /// Datagrams the host sent on (to `SINK`): what the filter passed.
    pub forwarded: u64,
}

/// The host's counters, read by a thread in the host namespace from its
/// `/proc/thread-self/net`: a process (`ip`) would take long to start when
/// the machine is busy, and the counts would be read late.
fn read_counters() -> Result<LinkCounters> {
    let received = read_received()?;
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next(), ip.next());
    let field = |field: &str| -> Result<u64> {
        names
            .zip(values)
            .and_then(|(names, values)| {
                names
                    .split_whitespace()
                    .zip(values.split_whitespace())
                    .find(|(name, _)| *name == field)
            })
            .and_then(|(_, value)| value.parse().ok())
            .with_context(|| format!("no {field} in the host's /proc/net/snmp"))
    };
    Ok(LinkCounters {
        received,
        forwarded: field("OutTransmits")? - field("OutRequests")?,
    })
}

/// The frames `port0` received, as `read_counters`.
fn read_received() -> Result<u64> {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    // `  port0: rx_bytes rx_packets …`
    dev.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim() == PORT)
        .and_then(|(_, stats)| stats.split_whitespace().nth(1)?.parse().ok())
        .with_context(|| format!("no {PORT} in the host's /proc/net/dev"))
}

pub struct Testbed {
    pub link: VethPort,
    /// `eth0`'s index in the workload namespace.
    eth0: u32,
    /// The frames the generator sends are this one's, flow by flow.
    packet: Packet,
    template: Vec<u8>,
    ceiling: Ebpf,
    /// The source port of the next probe: each probe is a new flow.
    probe_sport: AtomicU16,
    /// Of the frames of a rate, the generator sends one in `thin`.
    thin: u32,
}

impl Testbed {
    /// The generator sends one frame in `thin` of those whose rate it
    /// measures (`--throttle`).
    pub fn new(thin: u32) -> Result<Testbed> {
        ensure!(thin >= 1, "the throttle is 1 (none) or more");
        let link = VethPort::new()?;
        let host = &link.host;
        host.ip(&["tuntap", "add", SINK, "mode", "tun"])?;
        host.ip(&["link", "set", SINK, "up"])?;
        host.ip(&["route", "add", DESTINATIONS, "dev", SINK])?;
        let out = host.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        ensure!(
            out.status.success(),
            "enabling forwarding in the host namespace"
        );
        let eth0 = inside(&link.workload, || ifindex("eth0"))?;
        let workload_mac = mac_of(&link.workload, "eth0")?;
        // Replies to the generated flows leave through `port0` without
        // asking for the sources' addresses, which nothing answers for.
        let neighbours: String = (0..SOURCES)
            .map(|i| {
                let source = Ipv4Addr::from(u32::from(FIRST_SOURCE) + i);
                let mac = workload_mac.map(|b| format!("{b:02x}")).join(":");
                format!("neigh replace {source} lladdr {mac} dev {PORT} nud permanent\n")
            })
            .collect();
        host.feed("ip", &["-batch", "-"], &neighbours)?;
        let mut packet = Packet::udp(
            WORKLOAD_V4.parse()?,
            Ipv4Addr::new(198, 19, 0, 0).into(),
            1024,
            1024,
        );
        packet.src_mac = workload_mac;
        packet.dst_mac = mac_of(host, PORT)?;
        let template = small_frame(&packet)?;
        let mut ceiling = EbpfLoader::new().load(&object()?)?;
        for name in ["sg_bench_pass", "sg_bench_drop"] {
            let program: &mut Xdp = ceiling
                .program_mut(name)
                .with_context(|| format!("the generator's object has no {name}"))?
                .try_into()?;
            program.load()?;
        }
        Ok(Testbed {
            link,
            eth0,
            packet,
            template,
            ceiling,
            probe_sport: AtomicU16::new(FIRST_PROBE_SPORT),
            thin,
        })
    }

    /// Attaches one of the empty programs (`sg_bench_pass`,
    /// `sg_bench_drop`) to `port0`; `detach_empty` removes it.
    pub fn attach_empty(&mut self, name: &str) -> Result<XdpLinkId> {
        let program: &mut Xdp = self
            .ceiling
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        let host = &self.link.host;
        inside(host, || {
            program
                .attach(PORT, XdpMode::Driver)
                .with_context(|| format!("attaching {name} to {PORT}"))
        })
    }

    pub fn detach_empty(&mut self, name: &str, link: XdpLinkId) -> Result<()> {
        let program: &mut Xdp = self
            .ceiling
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        Ok(program.detach(link)?)
    }

    /// Read on a thread in the host namespace (see `read_counters`).
    pub fn counters(&self) -> Result<LinkCounters> {
        inside(&self.link.host, read_counters)
    }

    /// Sends `flows` from `eth0` on `CPU` in one run of the generator (at
    /// most `RUN_LIMIT` frames) and returns what `port0` received per second
    /// over `window`, counted from `SETTLE` after the start. A signal ends
    /// the run: at the end of each run the kernel waits for an RCU grace
    /// period before it frees the run's frames, so a train of short runs
    /// leaves the CPU idle most of the time. A run interrupted before (a
    /// test run ends with EINTR whenever its thread finds a signal pending;
    /// one full run saw that once, not from a signal of ours) is started
    /// again, and a window it ended in, or in which nothing arrived, is
    /// measured again; one that sent all its frames before the window
    /// ended is an error.
    pub fn rate(&self, flows: Flows, window: Duration) -> Result<f64> {
        const ATTEMPTS: u32 = 3;
        let generator = Generator::load(flows, Order::Random, self.thin)?;
        let limit = RUN_LIMIT;
        interruptible()?;
        let sender = AtomicU64::new(0);
        let (stop, done) = (AtomicBool::new(false), AtomicBool::new(false));
        let runs = AtomicU32::new(0);
        thread::scope(|scope| {
            let run = scope.spawn(|| {
                let result = (|| {
                    sg_ctl::netns::enter(self.link.workload.name())?;
                    take_cpu()?;
                    // SAFETY: the calling thread's own id.
                    sender.store(unsafe { libc::pthread_self() }, Ordering::SeqCst);
                    while !stop.load(Ordering::SeqCst) {
                        if generator.send(&self.template, self.eth0, limit)? == Ended::Sent {
                            break;
                        }
                        runs.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(())
                })();
                done.store(true, Ordering::SeqCst);
                result
            });
            let measured = (|| {
                // From when the first run is about to start.
                while sender.load(Ordering::SeqCst) == 0 && !done.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(1));
                }
                for _ in 0..ATTEMPTS {
                    thread::sleep(SETTLE);
                    let ended = runs.load(Ordering::SeqCst);
                    let (before, since) = self.received()?;
                    thread::sleep(window);
                    let (after, until) = self.received()?;
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                    if runs.load(Ordering::SeqCst) == ended && after > before {
                        return Ok((after - before) as f64 / (until - since).as_secs_f64());
                    }
                }
                bail!(
                    "the generator failed, sent all {limit} frames before the window ended, or \
                     was interrupted or received nothing within each of {ATTEMPTS} windows"
                )
            })();
            stop.store(true, Ordering::SeqCst);
            while !done.load(Ordering::SeqCst) {
                let thread = sender.load(Ordering::SeqCst);
                if thread != 0 {
                    // SAFETY: a thread of this scope, running until `done`.
                    unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
                }
                thread::sleep(Duration::from_millis(5));
            }
            let sent = run
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            sent.and(measured)
        })
    }

    /// Sends `frames` frames of `flows` (at random) from `eth0` on `CPU` in
    /// one run of the generator, while a thread in the host namespace
    /// samples what `port0` received; the rate over the middle of the run,
    /// from when a tenth of what arrived had arrived to when nine tenths
    /// had, and how long that was. A number of frames rather than a time: a
    /// run of new flows must not send more flows than the filter's table
    /// holds, whatever the rate. A run cut short (see `rate`), or one the
    /// sampler saw too little of (its CPU taken by other work), is to be
    /// tried again: its frames went out all the same, so the caller forgets
    /// the flows first.
    pub fn rate_of_count(&self, flows: Flows, frames: u32) -> Result<Round> {
        /// The fewest samples within the band that make a rate.
        const SAMPLES: usize = 3;
        let generator = Generator::load(flows, Order::Random, self.thin)?;
        let generated = frames
            .checked_mul(self.thin)
            .context("too many frames for the throttle")?;
        let start = self.counters()?.received;
        let (sampling, done) = (AtomicBool::new(false), AtomicBool::new(false));
        let (ended, samples) = thread::scope(|scope| {
            let sampler = scope.spawn(|| {
                let result = (|| {
                    sg_ctl::netns::enter(self.link.host.name())?;
                    leave_cpu()?;
                    let mut samples = vec![(Instant::now(), read_received()?)];
                    sampling.store(true, Ordering::SeqCst);
                    loop {
                        // Whether the run ended before this sample was taken.
                        let last = done.load(Ordering::SeqCst);
                        samples.push((Instant::now(), read_received()?));
                        if last {
                            return Ok(samples);
                        }
                    }
                })();
                sampling.store(true, Ordering::SeqCst);
                result
            });
            let ended = inside(&self.link.workload, || {
                take_cpu()?;
                while !sampling.load(Ordering::SeqCst) {
                    thread::yield_now();
                }
                generator.send(&self.template, self.eth0, generated)
            });
            done.store(true, Ordering::SeqCst);
            let samples: Result<Vec<(Instant, u64)>> = sampler
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (ended, samples)
        });
        let samples = samples?;
        if ended? == Ended::Interrupted {
            return Ok(Round::Again("the generator's run was interrupted".into()));
        }
        let arrived = self.settled_at(start, u64::from(frames))? - start;
        let (low, high) = (start + arrived / 10, start + arrived * 9 / 10);
        let band: Vec<_> = samples
            .iter()
            .filter(|&&(_, count)| (low..=high).contains(&count))
            .collect();
        match (band.first(), band.last()) {
            (Some(&&(since, first)), Some(&&(until, last)))
                if band.len() >= SAMPLES && until > since && last > first =>
            {
                let window = until - since;
                Ok(Round::Rate(
                    (last - first) as f64 / window.as_secs_f64(),
                    window,
                ))
            }
            _ => Ok(Round::Again(format!(
                "{} samples of {PORT}'s counter between a tenth and nine tenths of the {arrived} \
                 frames it received: too few for a rate",
                band.len()
            ))),
        }
    }

    /// `port0`'s received frames, and when they were counted.
    fn received(&self) -> Result<(u64, Instant)> {
        let asked = Instant::now();
        let received = self.counters()?.received;
        Ok((received, asked + asked.elapsed() / 2))
    }

    /// Sends `count` frames of one flow from the first source, a new flow
    /// each time (the next source port after the random flows'), so that
    /// the filter's policy decides it and not a tracked flow's state;
    /// returns how many the host forwarded (the filter passed).
    pub fn probe(&self, to: Ipv4Addr, port: u16, count: u32) -> Result<u64> {
        self.send_probe(&mut self.prepare_probe(to, port)?, count)
    }

    /// A probe's flow ready to be sent (see `send_probe`): its frame, and
    /// a packet socket on `eth0`.
    pub fn prepare_probe(&self, to: Ipv4Addr, port: u16) -> Result<Probe> {
        let sport = self
            .probe_sport
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                Some(p.checked_add(1).unwrap_or(FIRST_PROBE_SPORT))
            })
            .unwrap_or(FIRST_PROBE_SPORT);
        let mut packet = Packet::udp(FIRST_SOURCE.into(), to.into(), sport, port);
        (packet.src_mac, packet.dst_mac) = (self.packet.src_mac, self.packet.dst_mac);
        Ok(Probe {
            frame: small_frame(&packet)?,
            socket: FrameFile::packet_socket(&self.link.workload, "eth0", false)?,
        })
    }

    /// Sends `count` frames of `probe`'s flow (see `probe`); how many the
    /// host forwarded.
    pub fn send_probe(&self, probe: &mut Probe, count: u32) -> Result<u64> {
        let before = self.counters()?;
        for _ in 0..count {
            probe.socket.send(&probe.frame)?;
        }
        self.settled(before, u64::from(count), 0)?;
        Ok(self.counters()?.forwarded - before.forwarded)
    }

    /// `port0`'s received frames once it received `frames` more than
    /// `start`, or after `SETTLED` (see `settled`).
    fn settled_at(&self, start: u64, frames: u64) -> Result<u64> {
        let before = LinkCounters {
            received: start,
            forwarded: 0,
        };
        Ok(self.settled(before, frames, 0)?.received)
    }

    /// Waits until `port0` received `received` frames and the host
    /// forwarded `forwarded` packets since `before` (what was sent is
    /// through the host once the softirq that received it ran; give a
    /// preempted one a moment), or `SETTLED` at most; returns the counters
    /// then.
    fn settled(&self, before: LinkCounters, received: u64, forwarded: u64) -> Result<LinkCounters> {
        let deadline = Instant::now() + SETTLED;
        loop {
            let after = self.counters()?;
            if (after.received - before.received >= received
                && after.forwarded - before.forwarded >= forwarded)
                || Instant::now() > deadline
            {
                thread::sleep(Duration::from_millis(5));
                return self.counters();
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Makes every flow of `flows` established in the filter on `port0`,
    /// sg's or netfilter's connection tracking: sends each flow's first
    /// packet (every flow in turn, twice over, so that a frame lost on the
    /// way loses no flow; paced, so that a busy machine loses none), then
    /// hands the host one reply per flow through `SINK`, which it forwards
    /// to `port0` and the workload. Fails unless
    /// every reply went through the host: the translations' chains toward
    /// the port let UDP through only as part of an established flow.
    pub fn establish(&self, flows: Flows) -> Result<()> {
        /// Frames sent before waiting for `port0` to take them: fewer than
        /// its ring holds, so that none is lost however slowly its receive
        /// side runs (the generator's sequence goes on across runs).
        const PACE: u64 = 128;
        let frames = 2 * flows.len();
        let generator = Generator::load(flows, Order::Sequential, 1)?;
        let before = self.counters()?;
        let mut sent = before;
        let mut done = 0;
        while done < frames {
            let chunk = PACE.min(frames - done);
            inside(&self.link.workload, || {
                generator.send_all(&self.template, self.eth0, u32::try_from(chunk)?)
            })?;
            let took = self.settled(sent, chunk, 0)?;
            let lost = took.received - sent.received < chunk;
            (sent, done) = (took, done + chunk);
            if lost {
                break;
            }
        }
        ensure!(
            sent.received - before.received >= frames,
            "{PORT} received {} of the {frames} first packets",
            sent.received - before.received
        );
        inside(&self.link.host, || reply(flows))?;
        let after = self.settled(sent, 0, flows.len())?;
        ensure!(
            after.forwarded - sent.forwarded >= flows.len(),
            "the host forwarded {} of {} replies: the filter did not take every flow as \
             established",
            after.forwarded - sent.forwarded,
            flows.len()
        );
        Ok(())
    }
}

/// Writes the replies of `flows` into `SINK`, as if they came from there;
/// on a thread in the host namespace. The device carries them while it is
/// open.
fn reply(flows: Flows) -> Result<()> {
    let tun = sg_tests::open_tun(SINK, libc::IFF_TUN | libc::IFF_NO_PI)?;
    for packet in flows.replies() {
        let frame = packet.frame()?;
        // The tun device takes the IP packet without the Ethernet header.
        let ip = &frame[14..];
        let written = (&tun).write(ip).context("writing a reply into the sink")?;
        ensure!(written == ip.len(), "a reply was cut short");
    }
    Ok(())
}

/// Lets SIGUSR1 interrupt a system call of the thread it is sent to,
/// and do nothing else.
fn interruptible() -> Result<()> {
    extern "C" fn ignore(_: libc::c_int) {}
    // SAFETY: an empty handler, installed without SA_RESTART.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut())
    };
    ensure!(
        rc == 0,
        "installing a SIGUSR1 handler: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    ensure!(index != 0, "no interface {name}");
    Ok(index)
}

/// Which flow each generated frame belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    Random,
    /// Every flow in turn (`Flows::replies`' order), from the first.
    Sequential,
}

/// One flow ready to be sent (see `Testbed::prepare_probe`). Sent through
/// a socket rather than the generator: a generator's run ends with an RCU
/// grace period, milliseconds that would count in the time a policy update
/// takes.
pub struct Probe {
    frame: Vec<u8>,
    socket: FrameFile,
}

/// `packet`'s frame, 64 bytes on the wire with the FCS: the usual
/// small-packet test.
fn small_frame(packet: &Packet) -> Result<Vec<u8>> {
    let mut frame = packet.frame()?;
    frame.resize(60, 0);
    Ok(frame)
}

/// The generator program, loaded with its flows.
struct Generator {
    ebpf: Ebpf,
}

impl Generator {
    /// `thin`: of random frames, one in `thin` is sent.
    fn load(flows: Flows, order: Order, thin: u32) -> Result<Generator> {
        ensure!(flows.sources <= SOURCES, "more than {SOURCES} sources");
        let base = u32::from(flows.base);
        let (first_port, ports) = (u32::from(flows.first_port), u32::from(flows.ports));
        let (first_sport, sports) = (u32::from(flows.first_sport), u32::from(flows.sports));
        let sequential = u32::from(order == Order::Sequential);
        let mut ebpf = EbpfLoader::new()
            .override_global("SRC_BASE", &u32::from(FIRST_SOURCE), true)
            .override_global("SRC_COUNT", &flows.sources, true)
            .override_global("SPORT_BASE", &first_sport, true)
            .override_global("SPORT_COUNT", &sports, true)
            .override_global("SEQUENTIAL", &sequential, true)
            .override_global("THIN", &thin, true)
            .override_global("DST_BASE", &base, true)
            .override_global("DST_STRIDE", &flows.stride, true)
            .override_global("DST_COUNT", &flows.count, true)
            .override_global("DPORT_BASE", &first_port, true)
            .override_global("DPORT_COUNT", &ports, true)
            .load(&object()?)?;
        let program: &mut Xdp = ebpf
            .program_mut("sg_trafficgen")
            .context("the generator's object has no sg_trafficgen")?
            .try_into()?;
        program.load().context("loading the generator")?;
        Ok(Generator { ebpf })
    }

    /// Transmits `repeat` frames out of `ifindex` (of the calling thread's
    /// namespace), or fewer if a signal interrupts the run:
    /// BPF_PROG_TEST_RUN in live-frames mode.
    fn send(&self, frame: &[u8], ifindex: u32, repeat: u32) -> Result<Ended> {
        // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let program: &Xdp = self
            .ebpf
            .program("sg_trafficgen")
            .context("no sg_trafficgen")?
            .try_into()?;
        match program.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::new()
        }) {
            Err(ProgramError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::Interrupted =>
            {
                Ok(Ended::Interrupted)
            }
            run => {
                run.context("generating frames (BPF_PROG_TEST_RUN, live frames)")?;
                Ok(Ended::Sent)
            }
        }
    }

    /// Transmits `repeat` frames; fails if interrupted.
    fn send_all(&self, frame: &[u8], ifindex: u32, repeat: u32) -> Result<()> {
        let ended = self.send(frame, ifindex, repeat)?;
        ensure!(ended == Ended::Sent, "the generator's run was interrupted");
        Ok(())
    }
}

/// What a round of `rate_of_count` measured.
pub enum Round {
    /// Frames per second, over a window this long.
    Rate(f64, Duration),
    /// Nothing: why, and the round is to be tried again.
    Again(String),
}

/// How a run of the generator ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// All the frames it was asked for sent.
    Sent,
    /// By a signal.
    Interrupted,
}
