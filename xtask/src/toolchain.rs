//! The eBPF toolchain: what building `sg-ebpf` for `bpfel-unknown-none`
//! needs, found or installed, idempotently.
//!
//! `-Z build-std=core` needs the sources of the standard library matching
//! the compiler. A rustup nightly with `rust-src` has them; where there is
//! none (and rustup cannot download one), Debian's `rustc-web` with
//! `rust-web-src` does, linked into rustup as the `sg-bpf` toolchain and run
//! with `RUSTC_BOOTSTRAP=1`. `bpf-linker` must be built against the LLVM
//! major version of that compiler.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{Step, cmd_output, guest, run, workspace_root};

/// The name the Debian compiler is linked into rustup under.
const SYSTEM_TOOLCHAIN: &str = "sg-bpf";
const SYSTEM_PREFIX: &str = "/usr";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Packages the integration tests and the demo run.
const RUNTIME_PACKAGES: &[&str] = &["iproute2", "iputils-ping"];
/// What the live-traffic benchmark compares sg with and measures TCP with.
const BENCH_PACKAGES: &[&str] = &["nftables", "iptables", "iperf3", "conntrack"];
/// The reference CNI plugins (bridge, host-local, …) in /usr/lib/cni that
/// sg-cni's tests chain it after.
const CNI_PACKAGES: &[&str] = &["containernetworking-plugins"];
/// The headless browser and its WebDriver that the console's tests drive,
/// and fonts for its pages (chromium brings none).
const BROWSER_PACKAGES: &[&str] = &[
    "chromium",
    "chromium-driver",
    "fonts-dejavu-core",
    "fonts-liberation",
];
/// What the VM test boots its guest with and serves it DHCP from:
/// qemu, busybox for its initramfs (packed with cpio), dnsmasq, and kmod to
/// order the guest kernel's modules.
const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "dnsmasq-base",
    "cpio",
    "kmod",
];
/// The C compiler that builds the SQLite sg-ctl embeds (rusqlite, bundled),
/// and protoc with the well-known types, which etcd-client's build compiles
/// etcd's API with.
const BUILD_PACKAGES: &[&str] = &["gcc", "protobuf-compiler", "libprotobuf-dev"];
/// The etcd that the tests of several hosts share a desired state in.
const ETCD_PACKAGES: &[&str] = &["etcd-server", "etcd-client"];
const SYSTEM_RUST_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "rust-web-src"];

/// The compiler that builds the eBPF object.
#[derive(Clone, Debug)]
pub enum EbpfToolchain {
    /// A rustup nightly with `rust-src`.
    Nightly,
    /// Debian's compiler and library sources, linked into rustup.
    System,
}

impl EbpfToolchain {
    fn rustup_name(&self) -> &'static str {
        match self {
            EbpfToolchain::Nightly => "nightly",
            EbpfToolchain::System => SYSTEM_TOOLCHAIN,
        }
    }

    fn rustc(&self) -> Command {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", self.rustup_name(), "rustc"]);
        cmd
    }

    /// Major version of the LLVM the compiler emits bitcode for.
    fn llvm_major(&self) -> Result<u32> {
        let out = cmd_output(self.rustc().arg("-vV"))?;
        out.lines()
            .find_map(|l| l.strip_prefix("LLVM version: "))
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse().ok())
            .context("`rustc -vV` does not name its LLVM version")
    }
}

fn nightly_has_rust_src() -> bool {
    let Ok(sysroot) =
        cmd_output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
    else {
        return false;
    };
    Path::new(sysroot.trim())
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}

fn system_rust_present() -> bool {
    Path::new(SYSTEM_PREFIX).join("bin/rustc").exists()
        && Path::new(SYSTEM_PREFIX).join("bin/cargo").exists()
        && Path::new(SYSTEM_PREFIX)
            .join("lib/rustlib/src/rust/library/core/Cargo.toml")
            .exists()
}

fn is_root() -> bool {
    cmd_output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}

fn has_apt() -> bool {
    Path::new("/usr/bin/apt-get").exists() && Path::new("/usr/bin/dpkg-query").exists()
}

fn package_installed(name: &str) -> bool {
    cmd_output(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
        .is_ok_and(|s| s.contains("install ok installed"))
}

/// Installs the Debian packages that are missing, or says how to.
fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    if !has_apt() {
        let missing = packages.join(" ");
        bail!(
            "{why} needs {missing}; this system has no apt-get: install the equivalents with \
             your package manager (or, for the compiler, a rustup nightly with \
             `rustup toolchain install nightly --component rust-src`)"
        );
    }
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        println!("    {why}: {} already installed", packages.join(" "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{why} needs the packages {0}: install them with `sudo apt-get install -y {0}` \
             (or run this command as root)",
            missing.join(" ")
        );
    }
    println!("    {why}: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn bpf_linker() -> PathBuf {
    cargo_bin_dir().join("bpf-linker")
}

/// The LLVM major version a dynamically linked bpf-linker uses; `None`
/// when it is linked statically or cannot be told.
fn bpf_linker_llvm_major(linker: &Path) -> Option<u32> {
    let ldd = cmd_output(Command::new("ldd").arg(linker)).ok()?;
    ldd.lines()
        .find_map(|l| l.trim().strip_prefix("libLLVM.so."))
        .or_else(|| ldd.lines().find_map(|l| l.trim().strip_prefix("libLLVM-")))
        .and_then(|v| v.split(['.', ' ']).next())
        .and_then(|v| v.parse().ok())
}

fn ensure_bpf_linker(llvm: u32) -> Result<()> {
    let linker = bpf_linker();
    if linker.exists() {
        match bpf_linker_llvm_major(&linker) {
            Some(major) if major != llvm => println!(
                "    bpf-linker uses LLVM {major}, the compiler LLVM {llvm}: rebuilding it"
            ),
            _ => {
                println!("    bpf-linker: {} already installed", linker.display());
                return Ok(());
            }
        }
    }
    let prefix = format!("/usr/lib/llvm-{llvm}");
    apt_install(
        &[
            &format!("llvm-{llvm}-dev"),
            &format!("libpolly-{llvm}-dev"),
            "libzstd-dev",
            "zlib1g-dev",
        ],
        "building bpf-linker",
    )?;
    println!("    building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (a few minutes)");
    let path = format!("{prefix}/bin:{}", env::var("PATH").unwrap_or_default());
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env("PATH", path))
}

/// Finds or installs everything the eBPF build needs, and the tools the
/// tests and the demo run. Safe to run again: what is there is kept.
pub fn setup() -> Result<EbpfToolchain> {
    let mut step = Step::new("setting up", 5);

    step.next("tools the build, the tests and the demo use");
    if has_apt() {
        apt_install(RUNTIME_PACKAGES, "network namespaces and ping")?;
        apt_install(BENCH_PACKAGES, "the live-traffic benchmark")?;
        apt_install(CNI_PACKAGES, "the CNI plugin's tests")?;
        apt_install(BROWSER_PACKAGES, "the web console's tests")?;
        apt_install(VM_PACKAGES, "the VM test")?;
        apt_install(
            BUILD_PACKAGES,
            "the SQLite and etcd client built into sg-ctl",
        )?;
        apt_install(ETCD_PACKAGES, "the tests of several hosts on etcd")?;
    } else {
        println!(
            "    no apt-get: make sure `ip` (iproute2), `ping`, nft, iptables, iperf3, conntrack, the \
             reference CNI plugins (bridge and host-local in /usr/lib/cni), qemu-system-x86_64, \
             busybox (static), dnsmasq, cpio, depmod, chromium with its chromedriver, a C \
             compiler (gcc), protoc with the protobuf well-known types, and etcd are installed"
        );
    }

    step.next("the VM test's guest kernel");
    if has_apt() {
        guest::ensure_kernel()?;
    } else {
        println!("    no apt-get: the VM test fails without Debian's kernel in target/vm-guest");
    }

    step.next("a compiler with the library sources for -Z build-std");
    let toolchain = if nightly_has_rust_src() {
        println!("    using the rustup nightly, which has rust-src");
        EbpfToolchain::Nightly
    } else {
        if !system_rust_present() {
            apt_install(
                SYSTEM_RUST_PACKAGES,
                "the eBPF build (no nightly with rust-src here)",
            )?;
        } else {
            println!("    using the system compiler in {SYSTEM_PREFIX}/bin");
        }
        EbpfToolchain::System
    };

    step.next("the compiler as a rustup toolchain");
    if let EbpfToolchain::System = toolchain {
        let list = cmd_output(Command::new("rustup").args(["toolchain", "list"]))?;
        if list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(SYSTEM_TOOLCHAIN))
        {
            println!("    rustup toolchain {SYSTEM_TOOLCHAIN} already linked");
        } else {
            run(Command::new("rustup").args([
                "toolchain",
                "link",
                SYSTEM_TOOLCHAIN,
                SYSTEM_PREFIX,
            ]))?;
        }
    } else {
        println!("    nothing to do for nightly");
    }

    step.next("bpf-linker");
    let llvm = toolchain.llvm_major()?;
    ensure_bpf_linker(llvm)?;
    Ok(toolchain)
}

/// Where `build_ebpf` puts the object (and where sg-ctl's build looks).
pub fn ebpf_object() -> PathBuf {
    workspace_root().join("target/ebpf/bpfel-unknown-none/release/sg-ebpf")
}

/// Builds the eBPF object with the toolchain `setup` found.
pub fn build_ebpf(toolchain: &EbpfToolchain) -> Result<PathBuf> {
    println!(
        "==> building the eBPF object with the {} toolchain",
        toolchain.rustup_name()
    );
    let root = workspace_root();
    let mut cmd = Command::new("rustup");
    // The datapath, and the benchmark's generator beside it (only that
    // program of its crate is built for the kernel).
    cmd.args([
        "run",
        toolchain.rustup_name(),
        "cargo",
        "build",
        "--release",
    ])
    .args(["--package", "sg-ebpf", "--bin", "sg-ebpf"])
    .args(["--package", "sg-bench", "--bin", "sg-trafficgen"])
    .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
    .arg("--target-dir")
    .arg(root.join("target/ebpf"))
    .current_dir(&root);
    // Settings of the host build must not leak into the eBPF one.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    if let EbpfToolchain::System = toolchain {
        // Lets this stable compiler take -Z build-std; only for this build.
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    let path = format!(
        "{}:{}",
        cargo_bin_dir().display(),
        env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path);
    run(&mut cmd)?;
    let object = ebpf_object();
    if !object.exists() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    Ok(object)
}
