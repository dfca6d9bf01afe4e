//! `cargo xtask`: set-up, builds, the demo and the test suite of sg.

mod demo;
mod guest;
mod hosts_demo;
mod testrun;
mod toolchain;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Set-up, builds, demo and tests of sg")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install (or find) what the eBPF build, the tests and the demo need.
    Setup,
    /// Build the eBPF object (after `setup`).
    BuildEbpf,
    /// Build everything: the eBPF object, then sg-ctl and sg-cni.
    Build {
        /// Build sg-ctl and sg-cni with optimisations.
        #[arg(long)]
        release: bool,
    },
    /// Build, then show the filter at work between network namespaces.
    Demo {
        /// Show instead a group spanning this many hosts, each with a
        /// daemon of its own, sharing the desired state in etcd.
        #[arg(long, value_name = "N")]
        hosts: Option<usize>,
    },
    /// Build, then measure the cost per packet of growing policies, then
    /// live traffic through sg, nftables and iptables (root).
    Bench {
        /// Only the live-traffic benchmark, each scenario briefly (checks
        /// the harness; the numbers mean little).
        #[arg(long)]
        quick: bool,
    },
    /// Build, check formatting and lints, and run every test (as root, the
    /// integration tests in network namespaces too), failing binaries
    /// included; a summary names each failed test.
    Test {
        /// Arguments for `cargo test`, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => toolchain::setup().map(drop),
        Task::BuildEbpf => toolchain::setup()
            .and_then(|t| toolchain::build_ebpf(&t))
            .map(drop),
        Task::Build { release } => build(release).map(drop),
        Task::Demo { hosts: None } => build(false).and_then(|sg_ctl| demo::run_demo(&sg_ctl)),
        Task::Demo { hosts: Some(hosts) } => {
            build(false).and_then(|sg_ctl| hosts_demo::run_demo(&sg_ctl, hosts))
        }
        Task::Test { args } => test(&args),
        Task::Bench { quick } => bench(quick),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

/// Builds the eBPF object, sg-ctl and the CNI plugin; returns the sg-ctl
/// binary.
fn build(release: bool) -> Result<PathBuf> {
    let toolchain = toolchain::setup()?;
    let object = toolchain::build_ebpf(&toolchain)?;
    println!("==> building sg-ctl and sg-cni");
    let mut cmd = cargo();
    cmd.args(["build", "--package", "sg-ctl", "--package", "sg-cni"])
        .env("SG_EBPF_OBJECT", &object);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    Ok(workspace_root().join("target").join(profile).join("sg-ctl"))
}

fn test(args: &[String]) -> Result<()> {
    let sg_ctl = build(false)?;
    println!("==> cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    println!("==> cargo clippy");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("==> cargo test (every test binary, then a summary)");
    testrun::run_tests(
        cargo()
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(args)
            .env("SG_CTL", &sg_ctl),
    )
}

fn bench(quick: bool) -> Result<()> {
    build(true)?;
    let run_bin = |bin: &str, args: &[&str]| {
        run(cargo()
            .args(["run", "--quiet", "--release", "--package", "sg-bench"])
            .args(["--bin", bin, "--"])
            .args(args))
    };
    if quick {
        println!("==> live-traffic benchmark, quick mode");
        return run_bin("sg-loadbench", &["--quick"]);
    }
    println!("==> benchmark: BPF_PROG_TEST_RUN");
    run_bin("sg-bench", &[])?;
    println!("==> benchmark: live traffic (writes docs/bench/)");
    run_bin("sg-loadbench", &[])
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Numbered progress lines: `==> [2/4] what`.
pub struct Step {
    what: &'static str,
    at: usize,
    of: usize,
}

impl Step {
    pub fn new(what: &'static str, of: usize) -> Self {
        Step { what, at: 0, of }
    }

    pub fn next(&mut self, name: &str) {
        self.at += 1;
        println!("==> {} [{}/{}] {name}", self.what, self.at, self.of);
    }
}

pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command with its output shown; fails unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs a command quietly and returns its standard output.
pub fn cmd_output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", describe(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
