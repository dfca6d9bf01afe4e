//! The harness of sg's integration tests: network namespaces, veth pairs and
//! tap devices made per test and removed when the test ends, panics
//! included; a pin directory of its own per test; the `sg-ctl` binary.
//!
//! Test hosts use 198.18.0.0/15 and 2001:db8::/32 and talk only to the
//! namespaces their test made.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    net::{IpAddr, TcpListener, TcpStream},
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{fs::PermissionsExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::maps::{Array, Map, MapData};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::Value;
use sg_common::{Direction, NO_POLICY, Outcome, PORT_ACTIVE, PortConfig, RemoteGroup, map_names};
use sg_core::{
    compile::{compile, counter_ids},
    model::Policy,
};
use sg_ctl::datapath::{Datapath, Forward, MapSizes, Pins, TestRun, WithoutPolicy, XdpModeArg};

/// Whether the tests may create namespaces and load eBPF programs.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns from the test, saying why, when it is not run as root.
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::require_root!(())
    };
    ($skipped:expr) => {
        if !$crate::is_root() {
            eprintln!(
                "skipped {}: needs root (network namespaces and eBPF); \
                 `cargo xtask test` as root runs it",
                module_path!()
            );
            return $skipped;
        }
    };
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name no other test of any running test process uses. The first
/// call of a process removes what killed test processes left.
fn unique(prefix: &str) -> String {
    static REAPED: Once = Once::new();
    REAPED.call_once(reap_leftovers);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Removes the namespaces, pin directories, daemon directories and pins'
/// lock files named (by `unique`) after processes that are gone: what a test or benchmark
/// killed by a signal left behind, since destructors did not run.
fn reap_leftovers() {
    type Remove = fn(&Path) -> Result<()>;
    let namespace: Remove = |path| {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        run("ip", &["netns", "del", &name]).map(drop)
    };
    let pins: Remove = |path| {
        Datapath::new(Pins::new(path)).detach_all()?;
        Ok(fs::remove_dir_all(path)?)
    };
    let directory: Remove = |path| Ok(fs::remove_dir_all(path)?);
    let file: Remove = |path| Ok(fs::remove_file(path)?);
    let temp = std::env::temp_dir();
    let locks = Pins::default().lock_path();
    let locks = locks.parent().unwrap_or(Path::new("/run"));
    let kinds = [
        (Path::new("/run/netns"), "sgt-", namespace),
        (Path::new("/sys/fs/bpf"), "sg-test-", pins),
        (temp.as_path(), "sg-daemon-", directory),
        (locks, "pins_sys_fs_bpf_sg-test-", file),
    ];
    for (dir, prefix, remove) in kinds {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let Some(pid) = name
                .strip_prefix(prefix)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            match remove(&path) {
                Ok(()) => eprintln!("removed {}, left by process {pid}, gone", path.display()),
                Err(e) => eprintln!("removing {}: {e:#}", path.display()),
            }
        }
    }
}

/// Polls `check` until it holds, for `timeout` at most: for what takes as
/// long as it takes on the machine at hand (a reconcile, a connection's
/// last segments), never for a fixed time.
pub fn eventually(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion; fails with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

/// A network namespace, deleted when dropped.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new() -> Result<Netns> {
        let name = unique("sgt");
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a command inside the namespace; its output, success or not.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.name))
    }

    /// Runs a command inside the namespace; fails with its stderr when it
    /// fails.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        let out = self.exec(program, args)?;
        ensure!(
            out.status.success(),
            "{program} {} in {}: {}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Runs a command inside the namespace with `input` on its standard
    /// input; fails with (the start of) its stderr when it fails.
    pub fn feed(&self, program: &str, args: &[&str], input: &str) -> Result<()> {
        let started = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {program}: `cargo xtask setup` installs it"))?;
        child
            .stdin
            .take()
            .context("no stdin")?
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "{program} {} in {} refused its input ({:?}): {}",
            args.join(" "),
            self.name,
            started.elapsed(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
        Ok(())
    }

    /// Whether one ping (IPv4 or IPv6) from this namespace gets its reply
    /// within a second.
    pub fn ping(&self, to: IpAddr) -> Result<bool> {
        let to = to.to_string();
        let out = self.exec("ping", &["-c", "1", "-W", "1", "-q", &to])?;
        Ok(out.status.success())
    }

    /// Runs `f` on a thread inside the namespace. Sockets it opens stay in
    /// the namespace after the thread ends.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> thread::JoinHandle<Result<T>> {
        let name = self.name.clone();
        thread::spawn(move || {
            sg_ctl::netns::enter(&name)?;
            f()
        })
    }

    /// Runs `f` inside the namespace and waits for it.
    pub fn within<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        join(self.spawn(f))
    }

    /// A namespace with interfaces `d0`, `d1`, ... (veths whose peers
    /// `e0`, `e1`, ... stay beside them), up, for ports that need an
    /// interface but no traffic.
    pub fn with_interfaces(count: usize) -> Result<Netns> {
        let ns = Netns::new()?;
        for i in 0..count {
            let (name, peer) = (format!("d{i}"), format!("e{i}"));
            ns.ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer])?;
            for dev in [&name, &peer] {
                ns.ip(&["link", "set", dev, "up"])?;
            }
        }
        Ok(ns)
    }

    /// Adds a veth pair: `port` here, `eth0` in `workload`.
    pub fn add_veth(&self, port: &str, workload: &Netns) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            workload.name(),
        ])
        .map(drop)
    }

    /// Adds an address; IPv6 addresses skip duplicate address detection.
    pub fn add_addr(&self, dev: &str, addr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", addr, "dev", dev];
        if addr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("cleaning up: {e:#}");
        }
    }
}

/// Waits for a thread and passes on its error or panic.
pub fn join<T>(handle: thread::JoinHandle<Result<T>>) -> Result<T> {
    match handle.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The addresses of the two ends of a test link.
pub const HOST_V4: &str = "198.18.0.1";
pub const WORKLOAD_V4: &str = "198.18.0.2";
pub const HOST_V6: &str = "2001:db8::1";
pub const WORKLOAD_V6: &str = "2001:db8::2";
/// The port: the host side of a workload's veth or tap.
pub const PORT: &str = "port0";

pub fn addr(s: &str) -> IpAddr {
    s.parse().expect("a valid test address")
}

/// A workload behind a veth pair: `workload` holds `eth0` (MAC
/// `GUEST_MAC`), `host` holds the port `port0`, with HOST_* and WORKLOAD_*
/// addresses on them.
pub struct VethPort {
    pub host: Netns,
    pub workload: Netns,
}

impl VethPort {
    pub fn new() -> Result<VethPort> {
        let host = Netns::new()?;
        let workload = Netns::new()?;
        host.add_veth(PORT, &workload)?;
        // The workload's MAC is known, as a hypervisor's is: a port with
        // port security names it.
        workload.ip(&["link", "set", "eth0", "address", &guest_mac()])?;
        for (ns, dev, v4, v6) in [
            (&host, PORT, HOST_V4, HOST_V6),
            (&workload, "eth0", WORKLOAD_V4, WORKLOAD_V6),
        ] {
            ns.add_addr(dev, &format!("{v4}/24"))?;
            ns.add_addr(dev, &format!("{v6}/64"))?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        // A fresh link takes a moment before IPv6 neighbour discovery
        // answers; tests start once both families do.
        for to in [WORKLOAD_V4, WORKLOAD_V6] {
            eventually(
                &format!("{to} reachable over a fresh veth"),
                Duration::from_secs(15),
                || host.ping(addr(to)),
            )?;
        }
        Ok(VethPort { host, workload })
    }
}

/// A tap device `port0` in `host`, with HOST_* addresses; the test is the
/// guest: it writes the frames the workload sends and reads those it
/// receives. The guest has WORKLOAD_* addresses and GUEST_MAC, known to the
/// host as static neighbours.
pub struct TapPort {
    pub host: Netns,
    pub host_mac: [u8; 6],
    /// The guest's side: what it writes, the workload sends.
    pub guest: FrameFile,
}

pub const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x02];

/// `GUEST_MAC` as `ip` and policy files write it.
pub fn guest_mac() -> String {
    GUEST_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);

/// Opens the tun or tap device `name` of the calling thread's namespace
/// (`flags`: `IFF_TUN` or `IFF_TAP`, and more), creating it if it is not
/// there; it lives while the file is open, unless made persistent.
pub fn open_tun(name: &str, flags: libc::c_int) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF with an ifreq that outlives the call.
    unsafe { tun_set_iff(file.as_raw_fd(), &req) }.with_context(|| format!("opening {name}"))?;
    Ok(file)
}

impl TapPort {
    pub fn new() -> Result<TapPort> {
        let host = Netns::new()?;
        let file = host.within(|| open_tun(PORT, libc::IFF_TAP | libc::IFF_NO_PI))?;
        let mac = guest_mac();
        host.add_addr(PORT, &format!("{HOST_V4}/24"))?;
        host.add_addr(PORT, &format!("{HOST_V6}/64"))?;
        host.ip(&["link", "set", PORT, "up"])?;
        for guest in [WORKLOAD_V4, WORKLOAD_V6] {
            host.ip(&[
                "neigh",
                "replace",
                guest,
                "lladdr",
                &mac,
                "dev",
                PORT,
                "nud",
                "permanent",
            ])?;
        }
        let host_mac = mac_of(&host, PORT)?;
        Ok(TapPort {
            host,
            host_mac,
            guest: FrameFile { file },
        })
    }
}

/// Whole Ethernet frames through a file descriptor: a tap's, where the
/// test is the guest, or an AF_PACKET socket's on an interface.
pub struct FrameFile {
    file: File,
}

impl FrameFile {
    /// An AF_PACKET socket on `iface` of `ns`: it sends raw frames out of
    /// the interface, as the workload behind a veth would, and reads every
    /// frame the interface sends or receives; `promiscuous` also those
    /// addressed to other MACs.
    pub fn packet_socket(ns: &Netns, iface: &str, promiscuous: bool) -> Result<FrameFile> {
        let iface = iface.to_string();
        let file = ns.within(move || {
            let protocol = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2).
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol.into()) };
            ensure!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
            // SAFETY: a descriptor just returned, owned from here on.
            let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            let name = std::ffi::CString::new(iface.clone())?;
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            ensure!(ifindex != 0, "no interface {iface}");
            // SAFETY: an all-zero sockaddr_ll is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = protocol;
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: bind(2) with an address that outlives the call.
            let rc = unsafe {
                libc::bind(
                    file.as_raw_fd(),
                    (&raw const sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            ensure!(
                rc == 0,
                "binding to {iface}: {}",
                io::Error::last_os_error()
            );
            if promiscuous {
                // SAFETY: an all-zero packet_mreq is valid.
                let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
                mreq.mr_ifindex = ifindex as i32;
                mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
                // SAFETY: setsockopt(2) with a value that outlives the call.
                let rc = unsafe {
                    libc::setsockopt(
                        file.as_raw_fd(),
                        libc::SOL_PACKET,
                        libc::PACKET_ADD_MEMBERSHIP,
                        (&raw const mreq).cast(),
                        std::mem::size_of::<libc::packet_mreq>() as u32,
                    )
                };
                ensure!(
                    rc == 0,
                    "promiscuous {iface}: {}",
                    io::Error::last_os_error()
                );
            }
            Ok(file)
        })?;
        Ok(FrameFile { file })
    }

    /// Sends a frame.
    pub fn send(&mut self, frame: &[u8]) -> Result<()> {
        self.file.write_all(frame).context("sending a frame")
    }

    /// Waits up to `timeout` for a frame that `want` accepts; other frames
    /// (neighbour discovery, say) are skipped.
    pub fn receive(
        &mut self,
        timeout: Duration,
        want: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(millis))? == 0 {
                return Ok(None);
            }
            let n = self.file.read(&mut buf).context("reading a frame")?;
            if want(&buf[..n]) {
                return Ok(Some(buf[..n].to_vec()));
            }
        }
    }
}

/// The MAC address of an interface of a namespace.
pub fn mac_of(ns: &Netns, iface: &str) -> Result<[u8; 6]> {
    let link = ns.ip(&["-j", "link", "show", iface])?;
    let link: Value = serde_json::from_slice(&link.stdout)?;
    parse_mac(link[0]["address"].as_str().unwrap_or_default())
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bytes = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("MAC address {s:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC address {s:?}"))
}

/// A pin directory of the test's own, emptied when dropped: the test's
/// ports are detached and its maps removed whatever happens.
pub struct TestPins {
    pub pins: Pins,
}

impl TestPins {
    pub fn new() -> TestPins {
        TestPins {
            pins: Pins::new(format!("/sys/fs/bpf/{}", unique("sg-test"))),
        }
    }

    pub fn dir(&self) -> &str {
        self.pins.root().to_str().expect("a UTF-8 path")
    }

    /// Runs `sg-ctl --pin-dir DIR ARGS` and returns its output, whatever
    /// its exit status.
    pub fn sg_ctl(&self, args: &[&str]) -> Result<Output> {
        Command::new(sg_ctl_binary())
            .arg("--pin-dir")
            .arg(self.dir())
            .args(args)
            .output()
            .context("running sg-ctl")
    }

    /// Runs `sg-ctl` and fails when it fails.
    pub fn sg_ctl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.sg_ctl(args)?;
        if !out.status.success() {
            bail!(
                "sg-ctl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `iface`'s entry in `sg-ctl status --output json`.
    fn status(&self, iface: &str) -> Result<Value> {
        let status: Value = serde_json::from_str(&self.sg_ctl_ok(&["-o", "json", "status"])?)?;
        let ports = status.as_array().context("status is a list")?;
        ports
            .iter()
            .find(|p| p["interface"] == iface)
            .cloned()
            .with_context(|| format!("{iface} is not in the status"))
    }

    /// The slot of an attached interface.
    pub fn slot(&self, iface: &str) -> Result<u32> {
        let slot = self.status(iface)?["slot"].as_u64().context("a slot")?;
        Ok(u32::try_from(slot)?)
    }

    /// A handle on the datapath under these pins.
    pub fn datapath(&self) -> Datapath {
        Datapath::new(self.pins.clone())
    }

    /// Attaches the filter to `iface` of `ns` as the daemon does
    /// (`WithoutPolicy::Drop`) or as `sg-ctl attach` does (`Pass`).
    pub fn attach(&self, ns: &Netns, iface: &str, without_policy: WithoutPolicy) -> Result<()> {
        let datapath = self.datapath();
        let iface = iface.to_string();
        ns.within(move || {
            datapath.attach(&iface, XdpModeArg::Auto, without_policy)?;
            Ok(())
        })
    }

    /// Compiles `policy` for its port `port` and puts it in force on the
    /// attached interface `iface`.
    pub fn install(&self, iface: &str, policy: &Policy, port: &str) -> Result<RuleIds> {
        install(&self.datapath(), self.slot(iface)?, policy, port)
    }

    /// Packets counted on `iface` for a direction and outcome, from
    /// `sg-ctl status --output json`.
    pub fn counter(&self, iface: &str, direction: &str, outcome: &str) -> Result<u64> {
        let port = self.status(iface)?;
        Ok(port["counters"]
            .as_array()
            .context("counters is a list")?
            .iter()
            .filter(|c| c["direction"] == direction && c["outcome"] == outcome)
            .filter_map(|c| c["packets"].as_u64())
            .sum())
    }
}

impl Default for TestPins {
    fn default() -> Self {
        TestPins::new()
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        if let Err(e) = self.datapath().detach_all() {
            eprintln!("cleaning up {}: {e}", self.dir());
        }
        match fs::remove_dir_all(self.pins.root()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                eprintln!("cleaning up {}: {e}", self.dir());
            }
            _ => {}
        }
        // No one else takes these pins' lock.
        let _ = fs::remove_file(self.pins.lock_path());
    }
}

/// One port slot's programs loaded on pins of their own and attached
/// nowhere, with the port active: the datapath without traffic, for
/// BPF_PROG_TEST_RUN.
pub struct TestPort {
    pub run: TestRun,
    pub datapath: Datapath,
    pub slot: u32,
    /// What the port does without a policy: as the daemon attaches it
    /// (`Drop`) or as `sg-ctl attach` does (`Pass`).
    without_policy: WithoutPolicy,
    /// Last: the pins go when everything else is dropped.
    pins: TestPins,
}

impl TestPort {
    pub fn new(slot: u32, without_policy: WithoutPolicy) -> Result<TestPort> {
        TestPort::with_sizes(slot, without_policy, MapSizes::default())
    }

    /// A port whose maps are made with `sizes`.
    pub fn with_sizes(
        slot: u32,
        without_policy: WithoutPolicy,
        sizes: MapSizes,
    ) -> Result<TestPort> {
        let pins = TestPins::new();
        let datapath = Datapath::with_sizes(pins.pins.clone(), sizes);
        let run = datapath.test_run(slot)?;
        let port = TestPort {
            run,
            datapath,
            slot,
            without_policy,
            pins,
        };
        port.set_active(true)?;
        Ok(port)
    }

    pub fn pins(&self) -> &Pins {
        &self.pins.pins
    }

    /// Compiles `policy` for its port `port` and puts it in force here.
    pub fn install(&mut self, policy: &Policy, port: &str) -> Result<RuleIds> {
        install(&self.datapath, self.slot, policy, port)
    }

    /// Runs the program of `direction` on `frame` and checks that it
    /// counted the frame, once, under `outcome`; what the program did and
    /// the frame as it left it. Panics, with what it saw, otherwise.
    pub fn run_counted(
        &self,
        direction: Direction,
        frame: &[u8],
        outcome: Outcome,
    ) -> (Forward, Vec<u8>) {
        let counter = || {
            self.datapath
                .counter(self.slot, direction, outcome)
                .unwrap()
        };
        let before = counter();
        let out = self.run.run_out(direction, frame).unwrap();
        let after = counter();
        assert_eq!(
            (after.packets - before.packets, after.bytes - before.bytes),
            (1, frame.len() as u64),
            "{direction:?}, verdict {:?}: one frame counted as {}",
            out.0,
            outcome.name()
        );
        out
    }

    /// `run_counted`, and the program did `want`.
    pub fn check(&self, direction: Direction, frame: &[u8], want: Forward, outcome: Outcome) {
        let (got, _) = self.run_counted(direction, frame, outcome);
        assert_eq!(got, want, "{direction:?} {}: verdict", outcome.name());
    }

    /// The programs of another slot on the same maps, active, with
    /// `policy` for its port `port` in force: a neighbour of this port.
    pub fn neighbour(&self, slot: u32, policy: &Policy, port: &str) -> Result<(TestRun, RuleIds)> {
        let run = self.datapath.test_run(slot)?;
        self.datapath.set_port(slot, &self.config(true))?;
        Ok((run, install(&self.datapath, slot, policy, port)?))
    }

    /// An inactive port's programs drop everything (`drop-no-policy`),
    /// as while a port is attached or detached.
    pub fn set_active(&self, active: bool) -> Result<()> {
        Ok(self.datapath.set_port(self.slot, &self.config(active))?)
    }

    fn config(&self, active: bool) -> PortConfig {
        PortConfig {
            ifname: *b"test0\0\0\0\0\0\0\0\0\0\0\0",
            netns: 0,
            ifindex: 1,
            flags: if active { PORT_ACTIVE } else { 0 } | self.without_policy.flag(),
            xdp_mode: 0,
            _pad: 0,
        }
    }
}

/// Splits the IP packet of an untagged Ethernet frame into fragments of
/// `size` bytes of payload (a multiple of 8), with identification `id`, as
/// a router would: IPv4 flags and offset, or an IPv6 fragment header.
pub fn fragments(frame: &[u8], size: usize, id: u32) -> Vec<Vec<u8>> {
    assert!(
        size.is_multiple_of(8),
        "fragment payloads are multiples of 8 bytes"
    );
    let (eth, ip) = frame.split_at(14);
    let v4 = ip[0] >> 4 == 4;
    let header = if v4 {
        usize::from(ip[0] & 0x0f) * 4
    } else {
        40
    };
    let payload = &ip[header..];
    let chunks: Vec<&[u8]> = payload.chunks(size).collect();
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let offset = (i * size / 8) as u16;
            let more = u16::from(i != last);
            let mut out = eth.to_vec();
            let mut head = ip[..header].to_vec();
            if v4 {
                let total = (header + chunk.len()) as u16;
                head[2..4].copy_from_slice(&total.to_be_bytes());
                head[4..6].copy_from_slice(&(id as u16).to_be_bytes());
                head[6..8].copy_from_slice(&(more << 13 | offset).to_be_bytes());
                head[10..12].copy_from_slice(&[0, 0]);
                let checksum = !ones_complement_sum(&head);
                head[10..12].copy_from_slice(&checksum.to_be_bytes());
                out.extend_from_slice(&head);
            } else {
                let length = (8 + chunk.len()) as u16;
                let next = head[6];
                head[4..6].copy_from_slice(&length.to_be_bytes());
                head[6] = 44;
                out.extend_from_slice(&head);
                out.extend_from_slice(&[next, 0]);
                out.extend_from_slice(&(offset << 3 | more).to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
            }
            out.extend_from_slice(chunk);
            out
        })
        .collect()
}

/// Sets the identifier of the ICMP or ICMPv6 echo message in an untagged
/// frame (which the frame builder makes 1). The checksum is left as it
/// was: nothing on the way checks it.
pub fn set_echo_id(frame: &mut [u8], id: u16) {
    let header = match frame[14] >> 4 {
        4 => usize::from(frame[14] & 0x0f) * 4,
        _ => 40,
    };
    let at = 14 + header + 4;
    frame[at..at + 2].copy_from_slice(&id.to_be_bytes());
}

/// The ones'-complement sum of big-endian 16-bit words (an odd byte padded
/// with zero), folded to 16 bits: what IP checksums are made of.
pub fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A valid policy of `groups` (their JSON, as policy files write them) and
/// one port `vm`: interface `PORT`, MAC `GUEST_MAC`, the WORKLOAD_*
/// addresses, the named groups attached in order.
pub fn vm_policy(groups: Value, attached: &[&str]) -> Policy {
    let policy: Policy = serde_json::from_value(serde_json::json!({
        "groups": groups,
        "ports": [{
            "name": "vm",
            "ifname": PORT,
            "mac": guest_mac(),
            "ips": [WORKLOAD_V4, WORKLOAD_V6],
            "groups": attached,
        }],
    }))
    .expect("a well-formed policy");
    policy.validate().expect("a valid policy");
    policy
}

/// A stateful workload's policy: egress DNS (UDP 53) and echo requests,
/// with `with_http` ingress TCP 80, nothing else. Every reply the tests
/// expect to pass has no rule of its own; neighbour discovery passes
/// without rules.
pub fn dns_ping_http_policy(with_http: bool) -> Policy {
    let mut rules = vec![
        serde_json::json!({"direction": "egress", "protocol": "udp", "ports": "53"}),
        serde_json::json!({"direction": "egress", "protocol": "icmp", "icmp": {"type": 8}}),
        serde_json::json!({"direction": "egress", "protocol": "ipv6-icmp", "icmp": {"type": 128}}),
    ];
    if with_http {
        rules.push(serde_json::json!({"direction": "ingress", "protocol": "tcp", "ports": "80"}));
    }
    vm_policy(
        serde_json::json!([{"name": "web", "rules": rules}]),
        &["web"],
    )
}

/// The kernel memory of the policy maps under `pins` (the sum of their
/// fdinfo `memlock`).
pub fn policy_memory(pins: &Pins) -> Result<u64> {
    POLICY_MAPS.iter().map(|name| map_memory(pins, name)).sum()
}

/// The maps that hold the ports' compiled policies.
pub const POLICY_MAPS: [&str; 7] = [
    map_names::LOCAL,
    map_names::REMOTE,
    map_names::REMOTE_EXACT,
    map_names::L4,
    map_names::L4_EXACT,
    map_names::VERDICT,
    map_names::DHCP_SERVERS,
];

/// The used slots of the pinned `SG_REMOTE_EXACT`.
fn remote_slots(pins: &Pins) -> Result<usize> {
    let map = MapData::from_pin(pins.root().join("maps").join(map_names::REMOTE_EXACT))?;
    let groups: Array<MapData, RemoteGroup> = Array::try_from(Map::Array(map))?;
    let mut used = 0;
    for group in groups.iter() {
        used += group?
            .slots
            .iter()
            .filter(|slot| slot.key.scope.policy != NO_POLICY)
            .count();
    }
    Ok(used)
}

/// The entries of the pinned map `name`, counted key by key
/// (`BPF_MAP_GET_NEXT_KEY`); of `SG_REMOTE_EXACT`, the used slots.
pub fn map_entries(pins: &Pins, name: &str) -> Result<usize> {
    if name == map_names::REMOTE_EXACT {
        return remote_slots(pins);
    }
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    #[repr(C)]
    struct NextKey {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
    }
    let map = MapData::from_pin(pins.root().join("maps").join(name))?;
    let key_size = map.info()?.key_size() as usize;
    let (mut key, mut next) = (vec![0u8; key_size], vec![0u8; key_size]);
    let mut count = 0;
    loop {
        let attr = NextKey {
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: if count == 0 { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // SAFETY: the attribute and both key buffers outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr,
                size_of::<NextKey>(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            ensure!(
                e.raw_os_error() == Some(libc::ENOENT),
                "listing {name}: {e}"
            );
            return Ok(count);
        }
        std::mem::swap(&mut key, &mut next);
        count += 1;
    }
}

/// The kernel memory of the pinned map `name` (its fdinfo `memlock`).
pub fn map_memory(pins: &Pins, name: &str) -> Result<u64> {
    let map = MapData::from_pin(pins.root().join("maps").join(name))?;
    let fd = map.fd().as_fd().as_raw_fd();
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|line| line.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .with_context(|| format!("no memlock in the fdinfo of {name}"))
}

/// Counter ids of a policy's rules, by group name and rule position.
pub type RuleIds = HashMap<(String, usize), u32>;

/// Compiles `policy` for its port `port` under the next policy id and
/// installs it on `slot` through `datapath`.
pub fn install(datapath: &Datapath, slot: u32, policy: &Policy, port: &str) -> Result<RuleIds> {
    let counters = counter_ids(policy)?;
    datapath.install_policy(slot, |id| -> Result<_> {
        Ok(compile(policy, port, id, &counters)?)
    })?;
    Ok(counters)
}

/// Whether a TCP connection from `client` to a listener on `to`:`port`
/// (in `server`; port 0 for any free one) carries a request and its
/// response within a second each way.
pub fn tcp_exchange(client: &Netns, server: &Netns, to: IpAddr, port: u16) -> Result<bool> {
    const WAIT: Duration = Duration::from_secs(1);
    let listener = server.within(move || Ok(TcpListener::bind((to, port))?))?;
    let target = listener.local_addr()?;
    let Ok(mut stream) = client.within(move || Ok(TcpStream::connect_timeout(&target, WAIT)?))
    else {
        return Ok(false);
    };
    let (mut accepted, _) = listener.accept()?;
    for s in [&stream, &accepted] {
        s.set_read_timeout(Some(WAIT))?;
    }
    stream.write_all(b"GET")?;
    let mut buf = [0u8; 3];
    accepted.read_exact(&mut buf)?;
    accepted.write_all(b"200")?;
    Ok(stream.read_exact(&mut buf).is_ok() && &buf == b"200")
}

/// Workloads on one bridge: each in a namespace of its own, its veth's
/// host side `h-<name>` on the bridge in `host`.
pub struct Lan {
    pub host: Netns,
    pub workloads: Vec<(&'static str, Netns, &'static str)>,
}

impl Lan {
    pub fn new(workloads: &[(&'static str, &'static str)]) -> Result<Lan> {
        let host = Netns::new()?;
        host.ip(&["link", "add", "br0", "type", "bridge"])?;
        host.ip(&["link", "set", "br0", "up"])?;
        let mut lan = Lan {
            host,
            workloads: Vec::new(),
        };
        for &(name, ip) in workloads {
            let ns = Netns::new()?;
            let port = format!("h-{name}");
            lan.host.add_veth(&port, &ns)?;
            lan.host
                .ip(&["link", "set", &port, "master", "br0", "up"])?;
            ns.add_addr("eth0", &format!("{ip}/24"))?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            lan.workloads.push((name, ns, ip));
        }
        Ok(lan)
    }

    pub fn ns(&self, name: &str) -> &Netns {
        &self.workloads.iter().find(|w| w.0 == name).unwrap().1
    }

    pub fn ip(&self, name: &str) -> IpAddr {
        addr(self.workloads.iter().find(|w| w.0 == name).unwrap().2)
    }

    /// Whether `from` opens a TCP connection to `to`:`port` and exchanges
    /// a request and a response.
    pub fn tcp(&self, from: &str, to: &str, port: u16) -> Result<bool> {
        tcp_exchange(self.ns(from), self.ns(to), self.ip(to), port)
    }
}

/// A running `sg-ctl daemon` with a database, socket and pin directory of
/// its own, stopped and removed (ports detached) when dropped.
pub struct TestDaemon {
    child: Option<Child>,
    dir: PathBuf,
    /// More arguments of `sg-ctl daemon`.
    args: Vec<String>,
    /// The daemon's metrics listener.
    pub metrics: std::net::SocketAddr,
    pub pins: TestPins,
}

impl TestDaemon {
    pub fn start() -> Result<TestDaemon> {
        TestDaemon::start_with(&[])
    }

    /// A daemon started with these more arguments of `sg-ctl daemon`.
    pub fn start_with(args: &[&str]) -> Result<TestDaemon> {
        let mut daemon = TestDaemon::stopped(args)?;
        daemon.spawn()?;
        Ok(daemon)
    }

    /// Its directory and pins, before its process is started (`spawn`),
    /// with these more arguments of `sg-ctl daemon`.
    pub fn stopped(args: &[&str]) -> Result<TestDaemon> {
        let dir = std::env::temp_dir().join(unique("sg-daemon"));
        fs::create_dir_all(&dir)?;
        // Clients of other users (the anonymous role) reach the socket.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        let metrics = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        Ok(TestDaemon {
            child: None,
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            metrics,
            pins: TestPins::new(),
        })
    }

    /// Whether its process is still there; says how it ended otherwise.
    pub fn running(&mut self) -> Result<()> {
        let child = self.child.as_mut().context("the daemon was not started")?;
        match child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("sg-ctl daemon ended ({status}): {}", self.log()),
        }
    }

    /// The process id of the daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("sg.sock")
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("sg.db")
    }

    /// Starts the daemon on the same database and waits for its socket.
    pub fn spawn(&mut self) -> Result<()> {
        let _ = fs::remove_file(self.socket());
        let log = File::create(self.dir.join("daemon.log"))?;
        let child = Command::new(sg_ctl_binary())
            .args(["--pin-dir", self.pins.dir(), "--socket"])
            .arg(self.socket())
            .args(["daemon", "--db"])
            .arg(self.db())
            .args(["--metrics", &self.metrics.to_string()])
            .args(&self.args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting sg-ctl daemon")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket().exists() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("sg-ctl daemon exited ({status}): {}", self.log());
            }
            ensure!(
                Instant::now() < deadline,
                "sg-ctl daemon did not start: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The daemon's output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL: no chance to clean anything up.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// `sg-ctl --socket SOCKET ARGS` as `uid` (root when `None`). Other
    /// users run a copy in the test's directory, which they can reach
    /// wherever the build is.
    pub fn sg_ctl_as(&self, uid: Option<u32>, args: &[&str]) -> Result<Output> {
        let mut command = match uid {
            None => Command::new(sg_ctl_binary()),
            Some(uid) => {
                let copy = self.dir.join("sg-ctl");
                if !copy.exists() {
                    fs::copy(sg_ctl_binary(), &copy).context("copying sg-ctl")?;
                }
                let mut command = Command::new(copy);
                command.uid(uid).gid(uid);
                command
            }
        };
        command.arg("--socket").arg(self.socket()).args(args);
        command.env_remove("SG_TOKEN");
        // A process another test forks while the copy is written holds it
        // open for writing until that process execs: the copy's own exec
        // fails with ETXTBSY meanwhile. A moment later it runs.
        for _ in 0..100 {
            match command.output() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    thread::sleep(Duration::from_millis(10));
                }
                other => return other.context("running sg-ctl"),
            }
        }
        command.output().context("running sg-ctl")
    }

    /// `sg-ctl` against this daemon; its output whatever its exit status.
    pub fn sg_ctl(&self, args: &[&str]) -> Result<Output> {
        self.sg_ctl_as(None, args)
    }

    /// `sg-ctl` against this daemon; fails when it fails.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.sg_ctl(args)?;
        ensure!(
            out.status.success(),
            "sg-ctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// A new API token of `role` (`owner` or `viewer`).
    pub fn token(&self, role: &str) -> Result<String> {
        let token = self.ok(&["daemon", "token", "create", "--role", role])?;
        Ok(token.trim().to_string())
    }

    /// `sg-ctl -o json ARGS`, parsed.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        Ok(serde_json::from_str(&self.ok(&all)?)?)
    }

    /// The exit code and error message of a command that should fail.
    pub fn fails(&self, args: &[&str]) -> Result<(i32, String)> {
        let out = self.sg_ctl(args)?;
        ensure!(!out.status.success(), "sg-ctl {} succeeded", args.join(" "));
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }

    /// The metrics page.
    pub fn metrics(&self) -> Result<String> {
        let mut stream = TcpStream::connect(self.metrics)?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: sg\r\n\r\n")?;
        let mut page = String::new();
        stream.read_to_string(&mut page)?;
        ensure!(page.starts_with("HTTP/1.0 200"), "metrics: {page}");
        Ok(page)
    }

    /// The value of a metric line (`name{labels}`) on the metrics page.
    pub fn metric(&self, series: &str) -> Result<u64> {
        let page = self.metrics()?;
        let line = page
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .with_context(|| format!("{series} is not on the metrics page"))?;
        Ok(line.trim().parse()?)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: the daemon's orderly exit, which leaves the datapath
            // as it is (TestPins removes it).
            // SAFETY: signalling a child this guard owns and has not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` on a thread of its own as user `uid` (and its group of the
/// same number, without supplementary groups): a local user with neither
/// root nor a token, in the test's own process. Linux keeps credentials
/// per thread; the raw system calls (not libc's wrappers, which change
/// every thread of the process) drop only this thread's, for good. What
/// it opens keeps the user's credentials: a Unix socket it connects has
/// the user's uid for SO_PEERCRED, a file it creates belongs to the user.
pub fn as_user<T: Send + 'static>(
    uid: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<Result<T>> {
    thread::spawn(move || {
        let no_groups: *const libc::gid_t = std::ptr::null();
        // Groups, then the group, then the user: each needs the privilege
        // the next one gives up.
        for (what, call, args) in [
            (
                "setgroups",
                libc::SYS_setgroups,
                [0, no_groups as libc::c_long, 0],
            ),
            ("setresgid", libc::SYS_setresgid, [uid.into(); 3]),
            ("setresuid", libc::SYS_setresuid, [uid.into(); 3]),
        ] {
            // SAFETY: a system call on this thread's own credentials.
            let done = unsafe { libc::syscall(call, args[0], args[1], args[2]) };
            ensure!(done == 0, "{what}: {}", io::Error::last_os_error());
        }
        Ok(f())
    })
}

/// The `sg-ctl` binary under test: `$SG_CTL`, or the workspace's debug
/// build.
pub fn sg_ctl_binary() -> PathBuf {
    std::env::var_os("SG_CTL").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sg-ctl"),
        PathBuf::from,
    )
}
