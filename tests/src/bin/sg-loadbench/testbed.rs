//! Where the load benchmark's traffic flows: a workload namespace whose
//! `eth0` sends, a host namespace whose `port0` receives and carries the
//! filter, and a tun device without a reader in the host that takes (and
//! drops) what the host
//! forwards. The generator and the programs of the ceiling.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
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
use serde_json::Value;
use sg_ctl::frame::Packet;
use sg_tests::{Netns, PORT, VethPort, WORKLOAD_V4, mac_of};

/// Where forwarded traffic leaves the host: a tun device nobody reads,
/// without carrier, so what is routed to it is freed at once. (Forwarded
/// packets are counted by the host's IP statistics, `OutTransmits`, after
/// the netfilter hooks.)
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

/// Generated frames come from `FIRST_SOURCE` and the next `SOURCES - 1`
/// addresses, all on the workload's subnet.
const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SOURCES: u32 = 200;

/// What the generator sends: UDP from a random source (`SOURCES`) and
/// source port to `base + stride * k` for a random `k < count`, at a random
/// port of `ports`.
#[derive(Clone, Copy, Debug)]
pub struct Flows {
    pub base: Ipv4Addr,
    pub stride: u32,
    pub count: u32,
    pub first_port: u16,
    pub ports: u16,
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

/// Nice value of the generator thread and iperf3: other work on the
/// machine then takes little of `CPU` from them.
pub const NICE: i32 = -20;

/// Pins the calling thread to `CPU`, at `NICE`.
fn take_cpu() -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(CPU)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning to CPU {CPU}"))?;
    // SAFETY: setpriority(2) on the calling thread (who 0).
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
    ensure!(
        rc == 0,
        "setting nice {NICE}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Interface counters from `ip -s -j link`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkCounters {
    /// Frames `port0` received (before its XDP program's verdict).
    pub received: u64,
    /// Datagrams the host sent on (to `SINK`): what the filter passed.
    pub forwarded: u64,
}

pub struct Testbed {
    pub link: VethPort,
    /// `eth0`'s index in the workload namespace.
    eth0: u32,
    template: Vec<u8>,
    ceiling: Ebpf,
}

impl Testbed {
    pub fn new() -> Result<Testbed> {
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
        let mut packet = Packet::udp(
            WORKLOAD_V4.parse()?,
            Ipv4Addr::new(198, 19, 0, 0).into(),
            1024,
            1024,
        );
        packet.src_mac = mac_of(&link.workload, "eth0")?;
        packet.dst_mac = mac_of(host, PORT)?;
        let mut template = packet.frame()?;
        // 64 bytes on the wire with the FCS: the usual small-packet test.
        template.resize(60, 0);
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
            template,
            ceiling,
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

    pub fn counters(&self) -> Result<LinkCounters> {
        let host = &self.link.host;
        let out = host.ip(&["-s", "-j", "link", "show", PORT])?;
        let link: Value = serde_json::from_slice(&out.stdout)?;
        let received = link[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .context("no rx packets in `ip -s -j link`")?;
        let snmp = host.exec("cat", &["/proc/net/snmp"])?;
        let snmp = String::from_utf8(snmp.stdout)?;
        let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
        let (names, values) = (ip.next(), ip.next());
        let forwarded = names
            .zip(values)
            .and_then(|(names, values)| {
                names
                    .split_whitespace()
                    .zip(values.split_whitespace())
                    .find(|(name, _)| *name == "OutTransmits")
            })
            .and_then(|(_, value)| value.parse().ok())
            .context("no OutTransmits in the host's /proc/net/snmp")?;
        Ok(LinkCounters {
            received,
            forwarded,
        })
    }

    /// Sends `flows` from `eth0` on `CPU` in one run of the generator (at
    /// most `limit` frames) and returns what `port0` received per second
    /// over `window`, counted from `SETTLE` after the start. A signal ends
    /// the run: at the end of each run the kernel waits for an RCU grace
    /// period before it frees the run's frames, so a train of short runs
    /// leaves the CPU idle most of the time. A window that does not count
    /// (a run cut short by something else, as the kernel ends a run on any
    /// pending signal; or nothing received) is tried again, up to
    /// `ATTEMPTS` times.
    pub fn rate(&self, flows: Flows, window: Duration, limit: u32) -> Result<f64> {
        const ATTEMPTS: usize = 3;
        let generator = Generator::load(flows)?;
        interruptible()?;
        let mut void = Vec::new();
        for _ in 0..ATTEMPTS {
            match self.window(&generator, window, limit)? {
                Ok(rate) => return Ok(rate),
                Err(why) => void.push(why),
            }
        }
        bail!(
            "no window of the generator's runs counted: {}",
            void.join("; ")
        )
    }

    /// One run of `generator`, and the rate over `window`; or why the
    /// window does not count (the run ended before it, or nothing
    /// arrived).
    fn window(
        &self,
        generator: &Generator,
        window: Duration,
        limit: u32,
    ) -> Result<Result<f64, String>> {
        const SETTLE: Duration = Duration::from_millis(100);
        let sender = AtomicU64::new(0);
        let done = AtomicBool::new(false);
        thread::scope(|scope| {
            let run = scope.spawn(|| {
                let result = (|| {
                    sg_ctl::netns::enter(self.link.workload.name())?;
                    take_cpu()?;
                    // SAFETY: the calling thread's own id.
                    sender.store(unsafe { libc::pthread_self() }, Ordering::SeqCst);
                    let started = Instant::now();
                    generator.send(&self.template, self.eth0, limit)?;
                    anyhow::Ok((started, Instant::now()))
                })();
                done.store(true, Ordering::SeqCst);
                result
            });
            let measured = (|| {
                // From when the run is about to start.
                while sender.load(Ordering::SeqCst) == 0 && !done.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(1));
                }
                thread::sleep(SETTLE);
                let (before, since) = self.received()?;
                thread::sleep(window);
                let (after, until) = self.received()?;
                anyhow::Ok((after - before, until - since, until))
            })();
            while !done.load(Ordering::SeqCst) {
                let thread = sender.load(Ordering::SeqCst);
                if thread != 0 {
                    // SAFETY: a thread of this scope, running until `done`.
                    unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
                }
                thread::sleep(Duration::from_millis(5));
            }
            let (started, ended) = run
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            let (received, over, until) = measured?;
            Ok(if ended < until {
                Err(format!("a run ended after {:?}", ended - started))
            } else if received == 0 {
                Err(format!("nothing arrived in {over:?}"))
            } else {
                Ok(received as f64 / over.as_secs_f64())
            })
        })
    }

    /// `port0`'s received frames, and when they were counted.
    fn received(&self) -> Result<(u64, Instant)> {
        let asked = Instant::now();
        let received = self.counters()?.received;
        Ok((received, asked + asked.elapsed() / 2))
    }

    /// Sends `count` frames of one flow; returns how many the host
    /// forwarded (the filter passed).
    pub fn probe(&self, to: Ipv4Addr, port: u16, count: u32) -> Result<u64> {
        let flows = Flows {
            base: to,
            stride: 1,
            count: 1,
            first_port: port,
            ports: 1,
        };
        let generator = Generator::load(flows)?;
        let before = self.counters()?;
        inside(&self.link.workload, || {
            generator.send(&self.template, self.eth0, count)
        })?;
        // What was sent is through the host once the softirq that
        // received it ran; give a preempted one a moment.
        let deadline = Instant::now() + Duration::from_millis(200);
        loop {
            let after = self.counters()?;
            if after.received - before.received >= u64::from(count) || Instant::now() > deadline {
                thread::sleep(Duration::from_millis(5));
                return Ok(self.counters()?.forwarded - before.forwarded);
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
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

/// The generator program, loaded with its flows.
struct Generator {
    ebpf: Ebpf,
}

impl Generator {
    fn load(flows: Flows) -> Result<Generator> {
        let base = u32::from(flows.base);
        let (first_port, ports) = (u32::from(flows.first_port), u32::from(flows.ports));
        let mut ebpf = EbpfLoader::new()
            .override_global("SRC_BASE", &u32::from(FIRST_SOURCE), true)
            .override_global("SRC_COUNT", &SOURCES, true)
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
    fn send(&self, frame: &[u8], ifindex: u32, repeat: u32) -> Result<()> {
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
                Ok(())
            }
            run => run
                .map(drop)
                .context("generating frames (BPF_PROG_TEST_RUN, live frames)"),
        }
    }
}
