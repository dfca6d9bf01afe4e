//! The datapath on this host: loading sg's eBPF object, attaching it to
//! ports, and reading and writing its pinned maps.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/sg`):
//!
//! ```text
//! maps/SG_PORTS  SG_STATS  SG_BLOCKED     shared by every port
//! ports/<slot>/xdp  ports/<slot>/tc       the links of one port
//! ```
//!
//! Links and maps are pinned, so enforcement goes on when sg-ctl exits;
//! detaching a port removes its links, and the last detach removes the maps.

use std::{
    ffi::CString,
    fmt,
    fs::{self, File},
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, Xdp,
        XdpMode, links::FdLink, tc::TcAttachOptions,
    },
};
use ipnet::IpNet;
use serde::Serialize;
use sg_common::{
    BLOCK_KEY_SLOT_BITS, BlockKey, Counter, Direction, IPV4_MAPPED_PREFIX_BITS, MAX_PORTS, Outcome,
    PORT_ACTIVE, PORT_REPLY_VIA_TC, PORT_SLOT_GLOBAL, PortConfig, TRACE_GLOBAL, TraceRecord,
    ipv4_mapped, map_names, program_names,
};

use crate::netns;

pub mod conntrack;
mod policy;
pub mod port_security;
pub use policy::PolicyMaps;
pub use port_security::{PortSecurity, PortSecurityStatus};

/// The compiled eBPF object, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SG_EBPF_OBJECT"));

/// Default pin directory on the host's bpffs.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sg";

const BPFFS_ROOT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("the packet to trace: {reason}")]
    Frame { reason: String },
    #[error("{action} needs root (CAP_BPF and CAP_NET_ADMIN): run sg-ctl as root, e.g. with sudo")]
    NotRoot { action: &'static str },
    #[error(
        "interface '{name}' does not exist in network namespace {netns}: \
         `ip link show` lists the interfaces (use --netns NAME for another namespace)"
    )]
    NoSuchInterface { name: String, netns: String },
    #[error(
        "interface '{name}' has no sg filter in network namespace {netns}: \
         `sg-ctl status` lists the attached ports"
    )]
    NotAttached { name: String, netns: String },
    #[error(
        "no port is attached under {}: attach one first (`sg-ctl attach IFACE`)",
        dir.display()
    )]
    NothingAttached { dir: PathBuf },
    #[error("all {MAX_PORTS} port slots are in use: detach a port first (`sg-ctl detach IFACE`)")]
    PortsFull,
    #[error(
        "attaching XDP to '{iface}' in {mode} mode failed: {source}; \
         try --xdp-mode generic, which every interface supports"
    )]
    XdpAttach {
        iface: String,
        mode: XdpModeArg,
        source: Box<ProgramError>,
    },
    #[error(
        "attaching the TC egress program to '{iface}' failed: {source}; \
         sg needs TCX links (Linux 6.6 or newer)"
    )]
    TcAttach {
        iface: String,
        source: Box<ProgramError>,
    },
    #[error(
        "the pinned maps under {dir} do not match this sg-ctl ({source}): \
         they come from another version; `sg-ctl detach --all` removes them"
    )]
    IncompatiblePins {
        dir: PathBuf,
        source: Box<aya::EbpfError>,
    },
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the {direction:?} program returned {code}, which sg does not use; is the object out of date? Rebuild with `cargo xtask build`"
    )]
    UnexpectedReturn { direction: Direction, code: u32 },
    #[error("invalid port security: {0}")]
    InvalidPortSecurity(crate::model::FieldError),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
}

pub type Result<T, E = DatapathError> = std::result::Result<T, E>;

trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| DatapathError::Kernel {
            what: what(),
            source: Box::new(source),
        })
    }
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeArg {
    /// Native if the driver supports it, else generic.
    #[default]
    Auto,
    /// In the driver (veth, tap, most physical NICs).
    Native,
    /// In the kernel's network stack, after the skb is built.
    Generic,
}

impl XdpModeArg {
    fn to_aya(self) -> XdpMode {
        match self {
            XdpModeArg::Auto => XdpMode::Default,
            XdpModeArg::Native => XdpMode::Driver,
            XdpModeArg::Generic => XdpMode::Skb,
        }
    }

    fn from_raw(raw: u32) -> Self {
        match raw {
            1 => XdpModeArg::Native,
            2 => XdpModeArg::Generic,
            _ => XdpModeArg::Auto,
        }
    }

    fn to_raw(self) -> u32 {
        match self {
            XdpModeArg::Auto => 0,
            XdpModeArg::Native => 1,
            XdpModeArg::Generic => 2,
        }
    }
}

impl fmt::Display for XdpModeArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpModeArg::Auto => "auto",
            XdpModeArg::Native => "native",
            XdpModeArg::Generic => "generic",
        })
    }
}

/// Paths under the pin directory.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Pins { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    fn port_dir(&self, slot: u32) -> PathBuf {
        self.root.join("ports").join(slot.to_string())
    }

    fn xdp_link(&self, slot: u32) -> PathBuf {
        self.port_dir(slot).join("xdp")
    }

    fn tc_link(&self, slot: u32) -> PathBuf {
        self.port_dir(slot).join("tc")
    }

    fn tc_reply_link(&self, slot: u32) -> PathBuf {
        self.port_dir(slot).join("tc-reply")
    }

    /// Serialises changes to the pins by concurrent sg-ctl processes.
    fn lock(&self) -> Result<File> {
        let dir = Path::new("/run/lock");
        fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
        let name = self.root.to_string_lossy().replace('/', "_");
        let path = dir.join(format!("sg{name}.lock"));
        let file = File::create(&path).context(|| format!("creating {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error())
                .context(|| format!("locking {}", path.display()));
        }
        Ok(file)
    }
}

impl Default for Pins {
    fn default() -> Self {
        Pins::new(DEFAULT_PIN_DIR)
    }
}

fn require_root(action: &'static str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(DatapathError::NotRoot { action })
    }
}

/// Mounts the BPF filesystem at `/sys/fs/bpf` where nothing mounted it.
fn ensure_bpffs(pins: &Pins) -> Result<()> {
    if !pins.root.starts_with(BPFFS_ROOT) {
        return Ok(());
    }
    let stat = nix::sys::statfs::statfs(BPFFS_ROOT).context(|| format!("statfs {BPFFS_ROOT}"))?;
    if stat.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS_ROOT,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .context(|| format!("mounting the BPF filesystem at {BPFFS_ROOT}"))
}

fn ifname_bytes(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = name.len().min(15);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

fn ifname_of(config: &PortConfig) -> String {
    let end = config.ifname.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&config.ifname[..end]).into_owned()
}

fn ifindex_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => None,
        index => Some(index),
    }
}

/// The shared maps, opened from their pins.
pub struct Maps {
    ports: Array<MapData, PortConfig>,
    stats: PerCpuArray<MapData, Counter>,
    blocked: LpmTrie<MapData, BlockKey, u32>,
}

fn open_pinned(pins: &Pins, name: &str) -> Result<Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).context(|| format!("opening {}", path.display()))?;
    Map::from_map_data(data).context(|| format!("opening {}", path.display()))
}

impl Maps {
    /// Opens the pinned maps; `None` when nothing is attached yet.
    pub fn open(pins: &Pins) -> Result<Option<Maps>> {
        if !pins.map(map_names::PORTS).exists() {
            return Ok(None);
        }
        let what = || "the pinned maps have unexpected types".to_string();
        Ok(Some(Maps {
            ports: open_pinned(pins, map_names::PORTS)?
                .try_into()
                .context(what)?,
            stats: open_pinned(pins, map_names::STATS)?
                .try_into()
                .context(what)?,
            blocked: open_pinned(pins, map_names::BLOCKED)?
                .try_into()
                .context(what)?,
        }))
    }

    /// Every used slot with its port.
    pub fn ports(&self) -> Result<Vec<(u32, PortConfig)>> {
        let mut out = Vec::new();
        for slot in 0..self.ports.len() {
            let config = self
                .ports
                .get(&slot, 0)
                .context(|| format!("reading port slot {slot}"))?;
            if config != PortConfig::EMPTY {
                out.push((slot, config));
            }
        }
        Ok(out)
    }

    fn find(&self, netns: u64, ifname: &str) -> Result<Option<(u32, PortConfig)>> {
        let name = ifname_bytes(ifname);
        Ok(self
            .ports()?
            .into_iter()
            .find(|(_, p)| p.netns == netns && p.ifname == name))
    }

    fn free_slot(&self) -> Result<u32> {
        let used: Vec<u32> = self.ports()?.into_iter().map(|(slot, _)| slot).collect();
        (0..MAX_PORTS)
            .find(|slot| !used.contains(slot))
            .ok_or(DatapathError::PortsFull)
    }

    pub fn set_port(&mut self, slot: u32, config: &PortConfig) -> Result<()> {
        self.ports
            .set(slot, config, 0)
            .context(|| format!("writing port slot {slot}"))
    }

    /// Counter of one outcome, summed over CPUs.
    pub fn counter(&self, slot: u32, direction: Direction, outcome: Outcome) -> Result<Counter> {
        let index = outcome.stat_index(slot, direction);
        let values = self
            .stats
            .get(&index, 0)
            .context(|| format!("reading counter {index}"))?;
        Ok(sum_cpus(&values))
    }

    /// A slot's non-zero counters.
    fn counter_rows(&self, slot: u32) -> Result<Vec<CounterRow>> {
        let mut rows = Vec::new();
        for direction in Direction::ALL {
            for outcome in Outcome::ALL {
                let c = self.counter(slot, direction, outcome)?;
                if c.packets > 0 {
                    rows.push(CounterRow {
                        direction: direction.name(),
                        outcome: outcome.name(),
                        drop: outcome.is_drop(),
                        packets: c.packets,
                        bytes: c.bytes,
                    });
                }
            }
        }
        Ok(rows)
    }

    fn reset_counters(&mut self, slot: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| DatapathError::Kernel {
            what: what.to_string(),
            source: Box::new(e),
        })?;
        for direction in Direction::ALL {
            for outcome in Outcome::ALL {
                let zero = PerCpuValues::try_from(vec![Counter::default(); cpus])
                    .context(|| "building zero counters".to_string())?;
                let index = outcome.stat_index(slot, direction);
                self.stats
                    .set(index, zero, 0)
                    .context(|| format!("resetting counter {index}"))?;
            }
        }
        Ok(())
    }

    /// Blocked prefixes of a slot.
    pub fn blocked(&self, slot: u32) -> Result<Vec<IpNet>> {
        let mut out = Vec::new();
        for key in self.blocked.keys() {
            let key = key.context(|| "reading the blocklist".to_string())?;
            let data = key.data();
            if data.slot == slot {
                out.push(prefix_of(data.addr, key.prefix_len() - BLOCK_KEY_SLOT_BITS));
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn block(&mut self, slot: u32, prefix: IpNet) -> Result<()> {
        self.blocked
            .insert(&block_key(slot, prefix), 1, 0)
            .context(|| format!("blocking {prefix}"))
    }

    pub fn unblock(&mut self, slot: u32, prefix: IpNet) -> Result<bool> {
        match self.blocked.remove(&block_key(slot, prefix)) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e).context(|| format!("unblocking {prefix}")),
        }
    }
}

/// A counter summed over CPUs.
fn sum_cpus(values: &PerCpuValues<Counter>) -> Counter {
    values.iter().fold(Counter::default(), |sum, c| Counter {
        packets: sum.packets + c.packets,
        bytes: sum.bytes + c.bytes,
    })
}

fn block_key(slot: u32, prefix: IpNet) -> Key<BlockKey> {
    let prefix = prefix.trunc();
    let (addr, bits) = match prefix {
        IpNet::V4(net) => (
            ipv4_mapped(net.addr().octets()),
            IPV4_MAPPED_PREFIX_BITS + u32::from(net.prefix_len()),
        ),
        IpNet::V6(net) => (net.addr().octets(), u32::from(net.prefix_len())),
    };
    Key::new(BLOCK_KEY_SLOT_BITS + bits, BlockKey { slot, addr })
}

fn prefix_of(addr: [u8; 16], bits: u32) -> IpNet {
    let v6 = std::net::Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) if bits >= IPV4_MAPPED_PREFIX_BITS => {
            IpNet::new(IpAddr::V4(v4), (bits - IPV4_MAPPED_PREFIX_BITS) as u8)
        }
        _ => IpNet::new(IpAddr::V6(v6), bits as u8),
    }
    .expect("prefix lengths in the trie are valid")
}

/// Loads the eBPF object for one port slot, creating or reusing the pinned
/// maps. The programs are loaded into the kernel but not attached.
pub fn load(pins: &Pins, slot: u32) -> Result<Ebpf> {
    load_instance(pins, slot, false)
}

/// `load`, for a port's programs or (`trace`) for a tracer of the port.
fn load_instance(pins: &Pins, slot: u32, trace: bool) -> Result<Ebpf> {
    let maps = pins.maps();
    fs::create_dir_all(&maps).context(|| format!("creating {}", maps.display()))?;
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(&maps)
        .override_global(PORT_SLOT_GLOBAL, &slot, true)
        .override_global(TRACE_GLOBAL, &u32::from(trace), true)
        .load(EBPF_OBJECT)
        .map_err(|source| match source {
            aya::EbpfError::MapError(_) => DatapathError::IncompatiblePins {
                dir: maps,
                source: Box::new(source),
            },
            source => DatapathError::Kernel {
                what: "loading the eBPF object".to_string(),
                source: Box::new(source),
            },
        })?;
    Ok(ebpf)
}

/// The loaded XDP program of an object from `load`.
pub fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let program: &mut Xdp = ebpf
        .program_mut(program_names::XDP)
        .expect("the object has the XDP program")
        .try_into()
        .context(|| "the XDP program has another type".to_string())?;
    verify(|| program.load())
        .context(|| "the kernel's verifier rejected the XDP program".to_string())?;
    Ok(program)
}

/// A loaded TC program of an object from `load`: `program_names::TC` or
/// `program_names::TC_REPLY`.
pub fn tc_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .expect("the object has the TC programs")
        .try_into()
        .context(|| format!("the program {name} has another type"))?;
    verify(|| program.load())
        .context(|| format!("the kernel's verifier rejected the program {name}"))?;
    Ok(program)
}

/// Loads a program. The verifier gives up with EAGAIN when a signal
/// arrives while it works, which a long verification makes likely; like
/// libbpf, load again a few times.
fn verify(
    mut load: impl FnMut() -> std::result::Result<(), ProgramError>,
) -> std::result::Result<(), ProgramError> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS =>
            {
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// What a program did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    Pass,
    Drop,
    /// Sent back to the sender: the frame became a reply (REJECT).
    Reply,
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;

/// Room for a frame to grow in a test run: an ICMP error's headers.
const TEST_RUN_GROWTH: usize = 64;

/// The programs of one port slot, loaded into the kernel and attached
/// nowhere, run on frames through `BPF_PROG_TEST_RUN`: the real datapath on
/// the real maps, without traffic.
pub struct TestRun {
    ebpf: Ebpf,
}

impl TestRun {
    pub fn load(pins: &Pins, slot: u32) -> Result<TestRun> {
        TestRun::load_instance(pins, slot, false)
    }

    /// A tracer of the slot's port: the same programs on the same maps,
    /// counting nothing and remembering no fragment, that say what they
    /// decided (see `trace`).
    pub fn tracer(pins: &Pins, slot: u32) -> Result<TestRun> {
        TestRun::load_instance(pins, slot, true)
    }

    fn load_instance(pins: &Pins, slot: u32, trace: bool) -> Result<TestRun> {
        require_root("running the filter on test frames")?;
        ensure_bpffs(pins)?;
        let mut ebpf = load_instance(pins, slot, trace)?;
        xdp_program(&mut ebpf)?;
        tc_program(&mut ebpf, program_names::TC)?;
        Ok(TestRun { ebpf })
    }

    /// Runs the program of `direction` on an Ethernet frame (at least 14
    /// bytes, as the kernel requires).
    pub fn run(&self, direction: Direction, frame: &[u8]) -> Result<Forward> {
        self.run_repeated(direction, frame, 1)
            .map(|(forward, _)| forward)
    }

    /// Per program: its name and the instructions the kernel's verifier
    /// went through to accept it.
    pub fn verified_instructions(&self) -> Result<Vec<(&'static str, u32)>> {
        let mut out = Vec::new();
        for name in [program_names::XDP, program_names::TC] {
            let program = self
                .ebpf
                .program(name)
                .expect("the object has both programs");
            let info = program
                .info()
                .context(|| format!("reading the kernel's information on {name}"))?;
            out.push((name, info.verified_instruction_count().unwrap_or(0)));
        }
        Ok(out)
    }

    /// Runs a tracer (see `tracer`) on a frame: what the program did, the
    /// frame as it left it, and its record of why.
    pub fn trace(
        &mut self,
        direction: Direction,
        frame: &[u8],
    ) -> Result<(Forward, Vec<u8>, TraceRecord)> {
        let mut record: Array<&mut MapData, TraceRecord> = self
            .ebpf
            .map_mut(map_names::TRACE)
            .expect("the object has the trace map")
            .try_into()
            .context(|| "the trace map has another type".to_string())?;
        record
            .set(0, TraceRecord::UNSET, 0)
            .context(|| "clearing the trace record".to_string())?;
        let (forward, out) = self.run_out(direction, frame)?;
        let record: Array<&MapData, TraceRecord> = self
            .ebpf
            .map(map_names::TRACE)
            .expect("the object has the trace map")
            .try_into()
            .context(|| "the trace map has another type".to_string())?;
        let record = record
            .get(&0, 0)
            .context(|| "reading the trace record".to_string())?;
        Ok((forward, out, record))
    }

    /// Runs the program of `direction` once on a frame; what it did and the
    /// frame as the program left it (the reply, for `Forward::Reply`).
    pub fn run_out(&self, direction: Direction, frame: &[u8]) -> Result<(Forward, Vec<u8>)> {
        let mut out = vec![0; frame.len() + TEST_RUN_GROWTH];
        let (forward, _, len) = self.execute(direction, frame, 1, &mut out)?;
        out.truncate(len);
        Ok((forward, out))
    }

    /// Runs the program `repeat` times on the frame; what it did and the
    /// kernel's measure of the mean time per run.
    pub fn run_repeated(
        &self,
        direction: Direction,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(Forward, Duration)> {
        let mut out = vec![0; frame.len() + TEST_RUN_GROWTH];
        self.execute(direction, frame, repeat, &mut out)
            .map(|(forward, duration, _)| (forward, duration))
    }

    fn execute(
        &self,
        direction: Direction,
        frame: &[u8],
        repeat: u32,
        out: &mut [u8],
    ) -> Result<(Forward, Duration, usize)> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            repeat,
            ..TestRunOptions::new()
        };
        let what = || format!("running the {direction:?} program on a test frame");
        let result = match direction {
            Direction::Egress => {
                let program: &Xdp = self.program(program_names::XDP)?;
                program.test_run(opts).context(what)?
            }
            Direction::Ingress => {
                let program: &SchedClassifier = self.program(program_names::TC)?;
                program.test_run(opts).context(what)?
            }
        };
        let forward = match (direction, result.return_value) {
            (Direction::Egress, XDP_PASS) => Forward::Pass,
            (Direction::Egress, XDP_DROP) => Forward::Drop,
            (Direction::Egress, XDP_TX) => Forward::Reply,
            (Direction::Ingress, code) => match code as i32 {
                TC_ACT_UNSPEC | TC_ACT_OK => Forward::Pass,
                TC_ACT_SHOT => Forward::Drop,
                TC_ACT_REDIRECT => Forward::Reply,
                _ => return Err(DatapathError::UnexpectedReturn { direction, code }),
            },
            (_, code) => return Err(DatapathError::UnexpectedReturn { direction, code }),
        };
        Ok((forward, result.duration, result.data_size_out as usize))
    }

    fn program<'a, T>(&'a self, name: &str) -> Result<&'a T>
    where
        &'a T: TryFrom<&'a aya::programs::Program, Error = ProgramError>,
    {
        self.ebpf
            .program(name)
            .expect("the object has both programs")
            .try_into()
            .context(|| format!("the program {name} has another type"))
    }
}

/// What `attach` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Attached {
    New { slot: u32 },
    Already { slot: u32 },
}

/// Attaches the filter to an interface of the calling thread's namespace.
/// Attaching an attached interface changes nothing.
pub fn attach(pins: &Pins, iface: &str, mode: XdpModeArg) -> Result<Attached> {
    require_root("attaching a filter")?;
    let netns = netns::current()?;
    let ifindex = ifindex_of(iface).ok_or_else(|| DatapathError::NoSuchInterface {
        name: iface.to_string(),
        netns: netns::describe(netns),
    })?;
    ensure_bpffs(pins)?;
    let _lock = pins.lock()?;

    let slot = match Maps::open(pins)? {
        None => 0,
        Some(maps) => match maps.find(netns, iface)? {
            Some((slot, port))
                if port.is_active()
                    && port.ifindex == ifindex
                    && links_exist(pins, slot, &port) =>
            {
                return Ok(Attached::Already { slot });
            }
            // Left over from an interface of the same name that is gone,
            // or from an attach that did not finish.
            Some((slot, _)) => {
                release(pins, maps, slot)?;
                slot
            }
            None => maps.free_slot()?,
        },
    };

    let mut ebpf = load(pins, slot)?;
    let mut maps = Maps::open(pins)?.expect("load pinned the maps");
    // A veth's peer drops XDP_TX frames unless it runs XDP or GRO itself;
    // generic XDP transmits them without the driver.
    let reply_via_tc = mode != XdpModeArg::Generic && driver_of(iface).as_deref() == Some("veth");
    let mut config = PortConfig {
        ifname: ifname_bytes(iface),
        netns,
        ifindex,
        flags: 0,
        xdp_mode: mode.to_raw(),
        _pad: 0,
    };
    maps.set_port(slot, &config)?;
    maps.reset_counters(slot)?;

    if let Err(e) = link(pins, &mut ebpf, slot, iface, mode, reply_via_tc) {
        release(pins, maps, slot)?;
        return Err(e);
    }
    config.flags = PORT_ACTIVE | if reply_via_tc { PORT_REPLY_VIA_TC } else { 0 };
    maps.set_port(slot, &config)?;
    Ok(Attached::New { slot })
}

/// Whether the pins of every link a port needs are there.
fn links_exist(pins: &Pins, slot: u32, port: &PortConfig) -> bool {
    pins.xdp_link(slot).exists()
        && pins.tc_link(slot).exists()
        && (port.flags & PORT_REPLY_VIA_TC == 0 || pins.tc_reply_link(slot).exists())
}

fn link(
    pins: &Pins,
    ebpf: &mut Ebpf,
    slot: u32,
    iface: &str,
    mode: XdpModeArg,
    reply_via_tc: bool,
) -> Result<()> {
    let dir = pins.port_dir(slot);
    fs::create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?;

    let xdp = xdp_program(ebpf)?;
    let id = xdp
        .attach(iface, mode.to_aya())
        .map_err(|source| DatapathError::XdpAttach {
            iface: iface.to_string(),
            mode,
            source: Box::new(source),
        })?;
    let link: FdLink = xdp
        .take_link(id)
        .context(|| "taking the XDP link".to_string())?
        .try_into()
        .context(|| format!("the XDP link of '{iface}' is not a bpf_link"))?;
    link.pin(pins.xdp_link(slot))
        .context(|| format!("pinning the XDP link of '{iface}'"))?;

    link_tc(ebpf, program_names::TC, iface, TcAttachType::Egress)?
        .pin(pins.tc_link(slot))
        .context(|| format!("pinning the TC link of '{iface}'"))?;
    if reply_via_tc {
        link_tc(ebpf, program_names::TC_REPLY, iface, TcAttachType::Ingress)?
            .pin(pins.tc_reply_link(slot))
            .context(|| format!("pinning the TC ingress link of '{iface}'"))?;
    }
    Ok(())
}

/// Attaches a TC program of the object with TCX, first in line.
fn link_tc(ebpf: &mut Ebpf, name: &str, iface: &str, at: TcAttachType) -> Result<FdLink> {
    let tc = tc_program(ebpf, name)?;
    let id = tc
        .attach_with_options(iface, at, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .map_err(|source| DatapathError::TcAttach {
            iface: iface.to_string(),
            source: Box::new(source),
        })?;
    tc.take_link(id)
        .context(|| format!("taking the TC link of {name}"))?
        .try_into()
        .context(|| format!("the TC link of '{iface}' is not a bpf_link"))
}

/// The name of an interface's driver ("veth", "tun", …) as ethtool gives
/// it; `None` when the interface does not say.
fn driver_of(iface: &str) -> Option<String> {
    /// `struct ethtool_drvinfo` of `<linux/ethtool.h>`.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        counts: [u32; 5],
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;

    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        counts: [0; 5],
    };
    // SAFETY: `ifreq` is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname_bytes(iface);
    for (to, from) in request.ifr_name.iter_mut().zip(name) {
        *to = from as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: a new socket, owned by `socket` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a socket we just opened and own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL reads `request` and writes `info`, both live.
    if unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &raw mut request) } != 0 {
        return None;
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    String::from_utf8(info.driver[..len].to_vec()).ok()
}

/// Frees a slot: links, blocked prefixes, counters, record; and the maps
/// when it was the last port.
fn release(pins: &Pins, mut maps: Maps, slot: u32) -> Result<()> {
    if let Ok(mut config) = maps.ports.get(&slot, 0) {
        config.flags &= !PORT_ACTIVE;
        maps.set_port(slot, &config)?;
    }
    // Removing the pins drops the last references to the links, which
    // detaches the programs.
    let dir = pins.port_dir(slot);
    for link in [
        pins.xdp_link(slot),
        pins.tc_link(slot),
        pins.tc_reply_link(slot),
    ] {
        remove_if_exists(&link)?;
    }
    if dir.exists() {
        fs::remove_dir(&dir).context(|| format!("removing {}", dir.display()))?;
    }
    for prefix in maps.blocked(slot)? {
        maps.unblock(slot, prefix)?;
    }
    PolicyMaps::open(pins)?.clear(slot)?;
    port_security::install(pins, slot, &PortSecurity::OFF)?;
    // The slot's next port starts with no flows.
    conntrack::forget_slot(pins, slot)?;
    maps.reset_counters(slot)?;
    maps.set_port(slot, &PortConfig::EMPTY)?;

    if maps.ports()?.is_empty() {
        drop(maps);
        let maps_dir = pins.maps();
        let pinned =
            fs::read_dir(&maps_dir).context(|| format!("listing {}", maps_dir.display()))?;
        for entry in pinned {
            let entry = entry.context(|| format!("listing {}", maps_dir.display()))?;
            remove_if_exists(&entry.path())?;
        }
        for dir in [pins.maps(), pins.root.join("ports"), pins.root.clone()] {
            if dir.exists() {
                fs::remove_dir(&dir).context(|| format!("removing {}", dir.display()))?;
            }
        }
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Detaches the filter from an interface of the calling thread's namespace.
/// The interface itself may be gone already.
pub fn detach(pins: &Pins, iface: &str) -> Result<()> {
    require_root("detaching a filter")?;
    let netns = netns::current()?;
    let not_attached = || not_attached(iface, netns);
    let _lock = pins.lock()?;
    let maps = Maps::open(pins)?.ok_or_else(not_attached)?;
    let (slot, _) = maps.find(netns, iface)?.ok_or_else(not_attached)?;
    release(pins, maps, slot)
}

/// Detaches every port, in every namespace, and removes all pins.
pub fn detach_all(pins: &Pins) -> Result<usize> {
    require_root("detaching filters")?;
    let _lock = pins.lock()?;
    let Some(maps) = Maps::open(pins)? else {
        return Ok(0);
    };
    let ports = maps.ports()?;
    drop(maps);
    for (slot, _) in &ports {
        let maps = Maps::open(pins)?.expect("maps stay until the last port goes");
        release(pins, maps, *slot)?;
    }
    Ok(ports.len())
}

/// One attached port as `status` shows it.
#[derive(Debug, Serialize)]
pub struct PortStatus {
    pub slot: u32,
    pub interface: String,
    pub ifindex: u32,
    pub netns: String,
    pub xdp_mode: XdpModeArg,
    /// `active`, `attaching`, or `interface-gone` when its links were
    /// removed with the interface.
    pub state: &'static str,
    pub blocked: Vec<IpNet>,
    pub port_security: PortSecurityStatus,
    pub counters: Vec<CounterRow>,
}

/// A non-zero counter.
#[derive(Debug, Serialize)]
pub struct CounterRow {
    pub direction: &'static str,
    pub outcome: &'static str,
    pub drop: bool,
    pub packets: u64,
    pub bytes: u64,
}

/// One port's counters as `stats` shows them.
#[derive(Debug, Serialize)]
pub struct PortStats {
    pub slot: u32,
    pub interface: String,
    pub netns: String,
    pub counters: Vec<CounterRow>,
}

/// The non-zero counters of every port, or of the port of `iface` in the
/// calling thread's namespace.
pub fn stats(pins: &Pins, iface: Option<&str>) -> Result<Vec<PortStats>> {
    require_root("reading the filter's counters")?;
    let netns = netns::current()?;
    let Some(maps) = Maps::open(pins)? else {
        return match iface {
            Some(iface) => Err(not_attached(iface, netns)),
            None => Ok(Vec::new()),
        };
    };
    let ports = match iface {
        Some(iface) => vec![
            maps.find(netns, iface)?
                .ok_or_else(|| not_attached(iface, netns))?,
        ],
        None => maps.ports()?,
    };
    ports
        .into_iter()
        .map(|(slot, config)| {
            Ok(PortStats {
                slot,
                interface: ifname_of(&config),
                netns: netns::describe(config.netns),
                counters: maps.counter_rows(slot)?,
            })
        })
        .collect()
}

fn not_attached(iface: &str, netns: u64) -> DatapathError {
    DatapathError::NotAttached {
        name: iface.to_string(),
        netns: netns::describe(netns),
    }
}

/// Every attached port with its blocked prefixes and non-zero counters.
pub fn status(pins: &Pins) -> Result<Vec<PortStatus>> {
    require_root("reading the filter's maps")?;
    let Some(maps) = Maps::open(pins)? else {
        return Ok(Vec::new());
    };
    let security = port_security::PortSecurityMaps::open(pins)?;
    let mut out = Vec::new();
    for (slot, config) in maps.ports()? {
        let state = match (config.is_active(), links_exist(pins, slot, &config)) {
            (true, true) if link_alive(&pins.xdp_link(slot)) => "active",
            (true, _) => "interface-gone",
            (false, _) => "attaching",
        };
        out.push(PortStatus {
            slot,
            interface: ifname_of(&config),
            ifindex: config.ifindex,
            netns: netns::describe(config.netns),
            xdp_mode: XdpModeArg::from_raw(config.xdp_mode),
            state,
            blocked: maps.blocked(slot)?,
            port_security: security.read(slot)?,
            counters: maps.counter_rows(slot)?,
        });
    }
    Ok(out)
}

/// A pinned link whose device went away is defunct: the kernel reports no
/// interface for it any more.
fn link_alive(path: &Path) -> bool {
    link_ifindex(path).is_some_and(|ifindex| ifindex != 0)
}

/// The interface of a pinned XDP or TCX link, from `BPF_OBJ_GET_INFO_BY_FD`
/// (aya does not expose the per-type part of the link info).
fn link_ifindex(path: &Path) -> Option<u32> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// `bpf_link_info`: type, id, prog_id, then the per-type union at
    /// offset 16, where both `xdp` and `tcx` start with the ifindex.
    const IFINDEX_OFFSET: usize = 16;

    /// `bpf_attr` for BPF_OBJ_GET.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    /// `bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }

    let path = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let get = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: the attribute and the path outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &get, size_of::<ObjGet>()) };
    // SAFETY: a descriptor the kernel just gave us, owned from here on.
    let fd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })?;
    let mut info = [0u8; 128];
    let query = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the attribute and the info buffer outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &query,
            size_of::<InfoByFd>(),
        )
    };
    if rc != 0 {
        return None;
    }
    let bytes = info[IFINDEX_OFFSET..IFINDEX_OFFSET + 4].try_into().ok()?;
    Some(u32::from_ne_bytes(bytes))
}

/// Opens the maps and finds the port of an interface of the calling
/// thread's namespace.
fn port_of(pins: &Pins, iface: &str) -> Result<(Maps, u32)> {
    require_root("changing the filter's maps")?;
    let netns = netns::current()?;
    let not_attached = || not_attached(iface, netns);
    let maps = Maps::open(pins)?.ok_or_else(not_attached)?;
    let (slot, _) = maps.find(netns, iface)?.ok_or_else(not_attached)?;
    Ok((maps, slot))
}

/// The slot of the port of `iface`, an interface of the calling thread's
/// namespace.
pub fn slot_of(pins: &Pins, iface: &str) -> Result<u32> {
    port_of(pins, iface).map(|(_, slot)| slot)
}

/// Drops, on the port of `iface`, packets from (XDP) or to (TC) addresses
/// in the prefixes.
pub fn block(pins: &Pins, iface: &str, prefixes: &[IpNet]) -> Result<()> {
    let _lock = pins.lock()?;
    let (mut maps, slot) = port_of(pins, iface)?;
    for prefix in prefixes {
        maps.block(slot, *prefix)?;
    }
    Ok(())
}

/// Removes blocked prefixes; returns the ones that were not blocked.
pub fn unblock(pins: &Pins, iface: &str, prefixes: &[IpNet]) -> Result<Vec<IpNet>> {
    let _lock = pins.lock()?;
    let (mut maps, slot) = port_of(pins, iface)?;
    let mut missing = Vec::new();
    for prefix in prefixes {
        if !maps.unblock(slot, *prefix)? {
            missing.push(*prefix);
        }
    }
    Ok(missing)
}

/// Sets the port security of the port of `iface` (see
/// `port_security::install`).
pub fn set_port_security(pins: &Pins, iface: &str, security: &PortSecurity) -> Result<()> {
    let _lock = pins.lock()?;
    let (_, slot) = port_of(pins, iface)?;
    port_security::install(pins, slot, security)
}

/// A prefix as users write it: `198.18.0.0/15`, `2001:db8::/32`, or a bare
/// address meaning a single host.
pub fn parse_prefix(s: &str) -> std::result::Result<IpNet, String> {
    IpNet::from_str(s)
        .or_else(|_| IpAddr::from_str(s).map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| {
            format!("'{s}' is not an address or prefix: write e.g. 198.18.0.0/15, 2001:db8::/32 or 198.18.0.2")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_with_and_without_length() {
        assert_eq!(
            parse_prefix("198.18.0.7").unwrap().to_string(),
            "198.18.0.7/32"
        );
        assert_eq!(
            parse_prefix("198.18.3.7/16").unwrap().to_string(),
            "198.18.0.0/16"
        );
        assert_eq!(
            parse_prefix("2001:db8::1/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        let err = parse_prefix("198.18.0.0/33").unwrap_err();
        assert!(err.contains("198.18.0.0/33"), "{err}");
        assert!(parse_prefix("web").is_err());
    }

    #[test]
    fn block_keys_round_trip() {
        for s in [
            "198.18.0.0/15",
            "0.0.0.0/0",
            "198.18.0.2/32",
            "2001:db8::/32",
            "::/0",
        ] {
            let net: IpNet = s.parse().unwrap();
            let key = block_key(7, net);
            assert_eq!(key.data().slot, 7);
            let back = prefix_of(key.data().addr, key.prefix_len() - BLOCK_KEY_SLOT_BITS);
            assert_eq!(back, net, "{s}");
        }
    }

    #[test]
    fn ipv4_prefixes_live_under_the_mapped_prefix() {
        let key = block_key(0, "198.18.0.0/15".parse().unwrap());
        assert_eq!(key.prefix_len(), 32 + 96 + 15);
        assert_eq!(
            &key.data().addr[..12],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
        );
    }

    #[test]
    fn interface_names_are_nul_padded() {
        let config = PortConfig {
            ifname: ifname_bytes("tap0"),
            ..PortConfig::EMPTY
        };
        assert_eq!(ifname_of(&config), "tap0");
        assert_eq!(ifname_bytes("a-very-long-interface-name")[15], 0);
    }
}
