//! `sg-ctl`: attach sg's filter to ports and look at what it does.

use std::{io::Write as _, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use sg_ctl::{
    datapath::{self, Attached, DatapathError, Pins, PortStatus, XdpModeArg},
    netns,
};

#[derive(Parser)]
#[command(
    name = "sg-ctl",
    version,
    about = "Security groups for VMs and containers, enforced in eBPF",
    after_help = "Examples:
  sg-ctl attach tap0                       filter the port of a VM
  sg-ctl --netns host1 attach veth-web     an interface in another namespace
  sg-ctl block tap0 198.18.0.0/24          drop traffic of those addresses
  sg-ctl status                            ports, blocked prefixes, counters
  sg-ctl detach tap0"
)]
struct Cli {
    /// Directory on the BPF filesystem for sg's pinned maps and links.
    #[arg(long, global = true, env = "SG_PIN_DIR", default_value = datapath::DEFAULT_PIN_DIR)]
    pin_dir: String,

    /// Work on interfaces of this network namespace (a name of `ip netns`).
    #[arg(long, global = true)]
    netns: Option<String>,

    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the filter to the host side of a port (a tap or veth).
    ///
    /// XDP filters what the workload sends, TC egress what it receives.
    /// Attaching an attached port changes nothing.
    Attach {
        /// Interface name.
        iface: String,
        /// Where the XDP program runs.
        #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
        xdp_mode: XdpModeArg,
    },
    /// Detach the filter from a port and remove its pins.
    Detach {
        /// Interface name.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        iface: Option<String>,
        /// Detach every port, in every namespace.
        #[arg(long)]
        all: bool,
    },
    /// Drop packets of the workload from (sent) or to (received) these
    /// addresses.
    Block {
        /// Interface name.
        iface: String,
        /// Prefixes or addresses, IPv4 or IPv6.
        #[arg(required = true, value_parser = datapath::parse_prefix)]
        prefixes: Vec<IpNet>,
    },
    /// Stop blocking prefixes.
    Unblock {
        /// Interface name.
        iface: String,
        /// Prefixes or addresses, IPv4 or IPv6.
        #[arg(required = true, value_parser = datapath::parse_prefix)]
        prefixes: Vec<IpNet>,
    },
    /// Attached ports, their blocked prefixes and counters.
    Status,
}

fn main() -> ExitCode {
    // Piped into `head`, end quietly like other command-line tools.
    // SAFETY: restoring the default disposition of a signal.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sg-ctl: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Exit codes: 1 anything else, 2 invalid arguments (clap), 3 not found,
/// 4 forbidden.
fn exit_code(e: &anyhow::Error) -> u8 {
    let netns = match e.downcast_ref::<DatapathError>() {
        Some(DatapathError::NoSuchInterface { .. } | DatapathError::NotAttached { .. }) => {
            return 3;
        }
        Some(DatapathError::NotRoot { .. }) => return 4,
        Some(DatapathError::Netns(netns)) => Some(netns),
        _ => e.downcast_ref::<netns::NetnsError>(),
    };
    match netns {
        Some(netns::NetnsError::NotFound { .. }) => 3,
        _ => 1,
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Some(name) = &cli.netns {
        netns::enter(name)?;
    }
    let pins = Pins::new(&cli.pin_dir);
    match &cli.command {
        Command::Attach { iface, xdp_mode } => match datapath::attach(&pins, iface, *xdp_mode)? {
            Attached::New { slot } => println!("attached to {iface} (slot {slot})"),
            Attached::Already { slot } => println!("{iface} is already attached (slot {slot})"),
        },
        Command::Detach {
            iface: Some(iface), ..
        } => {
            datapath::detach(&pins, iface)?;
            println!("detached from {iface}");
        }
        Command::Detach { iface: None, .. } => {
            let n = datapath::detach_all(&pins)?;
            println!("detached {n} port(s)");
        }
        Command::Block { iface, prefixes } => {
            datapath::block(&pins, iface, prefixes)?;
            println!("{iface}: blocking {}", join(prefixes));
        }
        Command::Unblock { iface, prefixes } => {
            let missing = datapath::unblock(&pins, iface, prefixes)?;
            if !missing.is_empty() {
                eprintln!("{iface}: {} were not blocked", join(&missing));
            }
        }
        Command::Status => {
            let ports = datapath::status(&pins)?;
            match cli.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&ports)?),
                Output::Table => print_status(&ports)?,
            }
        }
    }
    Ok(())
}

fn join(prefixes: &[IpNet]) -> String {
    prefixes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_status(ports: &[PortStatus]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if ports.is_empty() {
        writeln!(out, "no ports attached")?;
        return Ok(());
    }
    for port in ports {
        writeln!(
            out,
            "{} (ifindex {}, netns {}, slot {}): {}, xdp {}",
            port.interface, port.ifindex, port.netns, port.slot, port.state, port.xdp_mode
        )?;
        let blocked = if port.blocked.is_empty() {
            "none".to_string()
        } else {
            join(&port.blocked)
        };
        writeln!(out, "  blocked: {blocked}")?;
        if port.counters.is_empty() {
            writeln!(out, "  no packets yet")?;
        }
        for c in &port.counters {
            writeln!(
                out,
                "  {:<8} {:<22} {:>12} packets {:>14} bytes",
                c.direction, c.outcome, c.packets, c.bytes
            )?;
        }
    }
    Ok(())
}
