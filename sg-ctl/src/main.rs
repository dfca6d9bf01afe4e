//! `sg-ctl`: attach sg's filter to ports and look at what it does.

use std::{io::Write as _, net::IpAddr, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use sg_ctl::{
    datapath::{
        self, Attached, DatapathError, Pins, PortSecurity, PortStatus, XdpModeArg,
        port_security::parse_address_pair,
    },
    model::{AddressPair, MacAddr},
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
  sg-ctl port-security tap0 --mac 52:54:00:12:34:56 --ip 198.18.0.2
                                           anti-spoofing for the workload's MAC and IP
  sg-ctl status                            ports, blocked prefixes, counters
  sg-ctl stats tap0                        a port's counters
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
    /// Set a port's port security (anti-spoofing), replacing what it had.
    ///
    /// From the workload only its MAC (or an allowed pair's) and its
    /// addresses pass, with ARP, the DHCP client and neighbour discovery
    /// for them; no DHCP server, router advertisement or foreign neighbour
    /// advertisement; broadcast and multicast only for those. Toward it,
    /// unicast only to its MACs.
    #[command(after_help = "Examples:
  sg-ctl port-security tap0 --mac 52:54:00:12:34:56 --ip 198.18.0.2 --ip 2001:db8::2
  sg-ctl port-security tap0 --mac 52:54:00:12:34:56 --ip 198.18.0.2 \\
      --allowed-pair 198.18.0.100 --allowed-pair 198.18.8.0/24,52:54:00:00:00:08
  sg-ctl port-security tap0 --off")]
    PortSecurity {
        /// Interface name.
        iface: String,
        /// The workload's MAC address.
        #[arg(long, required_unless_present = "off", value_parser = parse_mac)]
        mac: Option<MacAddr>,
        /// A fixed IP of the workload (repeat for more).
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<IpAddr>,
        /// Another address or prefix the workload may use, with the MAC it
        /// uses for it if not its own: IP[,MAC] or CIDR[,MAC] (repeat for
        /// more).
        #[arg(long = "allowed-pair", value_name = "IP[,MAC]", value_parser = parse_pair)]
        allowed_pairs: Vec<AddressPair>,
        /// Let 802.1Q/802.1ad tagged frames leave the workload.
        #[arg(long)]
        allow_vlan: bool,
        /// Let any broadcast and multicast leave the workload.
        #[arg(long)]
        allow_multicast: bool,
        /// Turn port security off: no anti-spoofing (the group policy
        /// still applies).
        #[arg(long, conflicts_with_all = ["mac", "ips", "allowed_pairs", "allow_vlan", "allow_multicast"])]
        off: bool,
    },
    /// Attached ports, their blocked prefixes, port security and counters.
    Status,
    /// The packet and byte counters of every port, or of one, per
    /// direction and outcome (each drop reason has its own).
    Stats {
        /// Interface name; every port when left out.
        iface: Option<String>,
    },
}

fn parse_mac(text: &str) -> Result<MacAddr, String> {
    text.parse()
        .map_err(|e: sg_ctl::model::FieldError| e.message)
}

fn parse_pair(text: &str) -> Result<AddressPair, String> {
    parse_address_pair(text).map_err(|e| e.to_string())
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

/// Exit codes: 1 anything else, 2 invalid arguments (clap, port
/// security), 3 not found, 4 forbidden.
fn exit_code(e: &anyhow::Error) -> u8 {
    let netns = match e.downcast_ref::<DatapathError>() {
        Some(DatapathError::NoSuchInterface { .. } | DatapathError::NotAttached { .. }) => {
            return 3;
        }
        Some(DatapathError::InvalidPortSecurity(_)) => return 2,
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
        Command::PortSecurity {
            iface,
            mac,
            ips,
            allowed_pairs,
            allow_vlan,
            allow_multicast,
            off,
        } => {
            let security = match mac {
                Some(mac) if !off => PortSecurity {
                    enabled: true,
                    mac: *mac,
                    ips: ips.clone(),
                    allowed_address_pairs: allowed_pairs.clone(),
                    allow_vlan: *allow_vlan,
                    allow_multicast: *allow_multicast,
                },
                _ => PortSecurity::OFF,
            };
            datapath::set_port_security(&pins, iface, &security)?;
            if security.enabled {
                println!("{iface}: port security on for {}", security.mac);
            } else {
                println!("{iface}: port security off");
            }
        }
        Command::Status => {
            let ports = datapath::status(&pins)?;
            match cli.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&ports)?),
                Output::Table => print_status(&ports)?,
            }
        }
        Command::Stats { iface } => {
            let stats = datapath::stats(&pins, iface.as_deref())?;
            match cli.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&stats)?),
                Output::Table => print_stats(&stats)?,
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
        print_port_security(&mut out, &port.port_security)?;
        print_counters(&mut out, &port.counters)?;
    }
    Ok(())
}

fn print_port_security(
    out: &mut impl std::io::Write,
    security: &datapath::PortSecurityStatus,
) -> std::io::Result<()> {
    if !security.enabled {
        return writeln!(out, "  port security: off");
    }
    let macs: Vec<String> = security.macs.iter().map(ToString::to_string).collect();
    let mut allowed = Vec::new();
    if security.allow_vlan {
        allowed.push("vlan tags");
    }
    if security.allow_multicast {
        allowed.push("multicast");
    }
    let allowed = if allowed.is_empty() {
        String::new()
    } else {
        format!(", allows {}", allowed.join(" and "))
    };
    writeln!(
        out,
        "  port security: on, macs {}{allowed}",
        macs.join(", ")
    )?;
    for owned in &security.owned {
        let macs: Vec<String> = owned.macs.iter().map(ToString::to_string).collect();
        writeln!(out, "    owns {} with {}", owned.prefix, macs.join(", "))?;
    }
    Ok(())
}

fn print_counters(
    out: &mut impl std::io::Write,
    counters: &[datapath::CounterRow],
) -> std::io::Result<()> {
    if counters.is_empty() {
        writeln!(out, "  no packets yet")?;
    }
    for c in counters {
        writeln!(
            out,
            "  {:<8} {:<22} {:>12} packets {:>14} bytes",
            c.direction, c.outcome, c.packets, c.bytes
        )?;
    }
    Ok(())
}

fn print_stats(ports: &[datapath::PortStats]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if ports.is_empty() {
        writeln!(out, "no ports attached")?;
    }
    for port in ports {
        writeln!(
            out,
            "{} (slot {}, netns {})",
            port.interface, port.slot, port.netns
        )?;
        print_counters(&mut out, &port.counters)?;
    }
    Ok(())
}
