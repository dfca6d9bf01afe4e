//! `sg-ctl`: the daemon that keeps security groups in force, the client
//! commands that manage them, and the low-level commands that attach sg's
//! filter to ports and look at what it does.

mod cli;
mod trace_cli;

use std::{
    io::Write as _,
    net::IpAddr,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use hyper::StatusCode;
use ipnet::IpNet;
use sg_core::model::{AddressPair, IpProtocol, MacAddr, parse_cidr};
use sg_core::{
    access::Role,
    flow::FlowState,
    port_security::{PortSecurity, parse_address_pair},
};
use sg_ctl::{
    client::{Client, ClientError},
    daemon::{Daemon, api},
    datapath::{
        self, Attached, Datapath, DatapathError, Pins, PortStatus, XdpModeArg,
        conntrack::{self, FlowFilter},
    },
    netns,
    store::Store,
};

use cli::{GroupCommand, Invalid, PortCommand, RuleCommand, Session, SettingsCommand};

#[derive(Parser)]
#[command(
    name = "sg-ctl",
    version,
    about = "Security groups for VMs and containers, enforced in eBPF",
    after_help = "Examples:
  sg-ctl daemon                            keep the stored policy in force, serve the API
  sg-ctl group create web                  a group with allow-all egress
  sg-ctl rule add web --preset ssh --remote 203.0.113.0/24
  sg-ctl port create vm1 --iface tap1 --mac 52:54:00:12:34:56 --ip 10.0.0.5 --group web
  sg-ctl apply -f policy.yaml --dry-run    what applying a file would change
  sg-ctl -o json port list

Low-level datapath commands (no daemon):
  sg-ctl attach tap0                       filter the port of a VM
  sg-ctl --netns host1 attach veth-web     an interface in another namespace
  sg-ctl block tap0 198.18.0.0/24          drop traffic of those addresses
  sg-ctl port-security tap0 --mac 52:54:00:12:34:56 --ip 198.18.0.2
                                           anti-spoofing for the workload's MAC and IP
  sg-ctl status                            ports, blocked prefixes, counters
  sg-ctl stats tap0                        a port's counters
  sg-ctl conntrack list --iface tap0       the port's tracked flows
  sg-ctl detach tap0

Exit codes: 0 ok, 1 failure, 2 invalid, 3 not found, 4 not permitted, 5 conflict."
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

    /// The daemon's API socket.
    #[arg(long, global = true, env = "SG_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,

    /// API token (`sg-ctl daemon token create`); root needs none.
    #[arg(long, global = true, env = "SG_TOKEN", hide_env_values = true)]
    token: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
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
        #[arg(required = true, value_parser = parse_cidr)]
        prefixes: Vec<IpNet>,
    },
    /// Stop blocking prefixes.
    Unblock {
        /// Interface name.
        iface: String,
        /// Prefixes or addresses, IPv4 or IPv6.
        #[arg(required = true, value_parser = parse_cidr)]
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
    /// Run the daemon (or, with `token create`, make an API token).
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:
  sg-ctl daemon                                  /var/lib/sg/sg.db, /run/sg/sg.sock
  sg-ctl daemon --db /tmp/sg.db --socket /tmp/sg.sock --metrics 127.0.0.1:9400
  sg-ctl daemon token create --role viewer       prints a read-only token
  sg-ctl daemon token list                       ids and roles
  sg-ctl daemon token revoke 3f2a9c01b7de"
    )]
    Daemon {
        #[command(subcommand)]
        command: Option<DaemonCommand>,
        /// The database holding the desired state.
        #[arg(long, env = "SG_DB", default_value = "/var/lib/sg/sg.db")]
        db: PathBuf,
        /// Serve Prometheus metrics on this TCP address (e.g. 127.0.0.1:9400).
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Security groups: create, list, show, update, delete, clone.
    #[command(subcommand)]
    Group(GroupCommand),
    /// The rules of a group: add (fields or a preset), list, update, delete.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Workload ports and the groups attached to them.
    #[command(subcommand)]
    Port(PortCommand),
    /// Limits, outbound SMTP, conntrack timeouts.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// Make the desired state that of a YAML or JSON file (`-` for stdin).
    #[command(after_help = "Examples:
  sg-ctl apply -f policy.yaml --dry-run    print what would change
  sg-ctl apply -f policy.yaml              change it; applying again changes nothing
  sg-ctl export > policy.yaml              the current state in the same form")]
    Apply {
        #[arg(short, long)]
        file: PathBuf,
        /// Print the changes without making them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the desired state as YAML (JSON with -o json), as apply reads it.
    Export,
    /// The IP protocols rules may name, with what each accepts.
    Protocols,
    /// The presets of `rule add --preset`.
    Presets,
    /// What the port's programs do with a packet: the verdict, the rule
    /// that decided and why.
    Trace(trace_cli::TraceArgs),
    /// The packet and byte counters of every port, or of one, per
    /// direction and outcome (each drop reason has its own).
    Stats {
        /// Interface name; every port when left out.
        iface: Option<String>,
    },
    /// The connection table: tracked flows, its fill, flushing, expiry.
    #[command(subcommand)]
    Conntrack(ConntrackCommand),
    /// Print a shell completion script.
    #[command(after_help = "Example:
  sg-ctl completions bash > /etc/bash_completion.d/sg-ctl")]
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum ConntrackCommand {
    /// The tracked flows, oldest first.
    #[command(after_help = "Examples:
  sg-ctl conntrack list --iface tap1 --protocol tcp --state established
  sg-ctl -o json conntrack list --address 198.18.0.0/24")]
    List(FlowArgs),
    /// Entries, capacity, and the conntrack outcomes of every port.
    Stats,
    /// Forget flows: their next packets are those of new flows, which the
    /// policy decides on.
    #[command(after_help = "Examples:
  sg-ctl conntrack flush --all
  sg-ctl conntrack flush --iface tap1 --address 203.0.113.7")]
    Flush {
        #[command(flatten)]
        flows: FlowArgs,
        /// Every flow of every port (without a filter, required).
        #[arg(long, conflicts_with_all = ["iface", "address", "protocol", "state"])]
        all: bool,
    },
    /// Remove the flows idle past their timeout now (the daemon does it
    /// every few seconds).
    Gc,
    /// Print flows as they start, close and expire (at most 1000 events a
    /// second per CPU; flows that `gc` removes have none).
    #[command(after_help = "Examples:
  sg-ctl conntrack watch
  sg-ctl -o json conntrack watch --count 10 --seconds 30")]
    Watch {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
    },
}

/// Which flows a conntrack command takes.
#[derive(clap::Args)]
struct FlowArgs {
    /// The flows of this port (interface name).
    #[arg(long)]
    iface: Option<String>,
    #[command(flatten)]
    of: FlowMatch,
}

/// Which of a port's flows a command takes.
#[derive(clap::Args)]
pub struct FlowMatch {
    /// Flows with either end in this prefix or address.
    #[arg(long, value_parser = parse_cidr)]
    address: Option<IpNet>,
    /// Flows of this protocol (a name or a number).
    #[arg(long, value_parser = parse_protocol)]
    protocol: Option<IpProtocol>,
    /// Flows in this state: new, replied, syn-sent, syn-received,
    /// established, fin-wait, time-wait.
    #[arg(long)]
    state: Option<FlowState>,
}

impl FlowMatch {
    fn is_empty(&self) -> bool {
        self.address.is_none() && self.protocol.is_none() && self.state.is_none()
    }

    /// The same as the query of `GET /v1/ports/{name}/flows`.
    pub fn query(&self) -> String {
        let fields = [
            ("address", self.address.map(|a| a.to_string())),
            ("protocol", self.protocol.map(|p| p.0.to_string())),
            ("state", self.state.map(|s| s.to_string())),
        ];
        let pairs: Vec<String> = fields
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| format!("{name}={v}")))
            .collect();
        if pairs.is_empty() {
            String::new()
        } else {
            format!("?{}", pairs.join("&"))
        }
    }
}

impl FlowArgs {
    fn is_empty(&self) -> bool {
        self.iface.is_none() && self.of.is_empty()
    }

    /// The filter, with the port of `--iface` (in the namespace entered).
    fn filter(&self, datapath: &Datapath) -> anyhow::Result<FlowFilter> {
        Ok(FlowFilter {
            slot: self
                .iface
                .as_deref()
                .map(|iface| datapath.slot_of(iface))
                .transpose()?,
            address: self.of.address,
            protocol: self.of.protocol,
            state: self.of.state,
        })
    }
}

fn parse_protocol(text: &str) -> Result<IpProtocol, String> {
    text.parse()
        .map_err(|e: sg_core::model::FieldError| e.to_string())
}

#[derive(Subcommand)]
enum DaemonCommand {
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (only its digest is stored).
    Create {
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// List the tokens by id and role (the tokens themselves are not kept).
    List,
    /// Revoke a token by the id `token list` shows.
    Revoke { id: String },
}

fn parse_role(text: &str) -> Result<Role, String> {
    match text {
        "owner" => Ok(Role::Owner),
        "viewer" => Ok(Role::Viewer),
        _ => Err(format!("'{text}' is not a role; use owner or viewer")),
    }
}

fn parse_mac(text: &str) -> Result<MacAddr, String> {
    text.parse()
        .map_err(|e: sg_core::model::FieldError| e.message)
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
/// security), 3 not found, 4 forbidden, 5 conflict.
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Invalid>().is_some() {
        return 2;
    }
    if let Some(ClientError::Api { status, .. }) = e.downcast_ref::<ClientError>() {
        return match *status {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => 2,
            StatusCode::NOT_FOUND => 3,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => 4,
            StatusCode::CONFLICT => 5,
            _ => 1,
        };
    }
    let netns = match e.downcast_ref::<DatapathError>() {
        Some(
            DatapathError::NoSuchInterface { .. }
            | DatapathError::NotAttached { .. }
            | DatapathError::NothingAttached { .. },
        ) => {
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
    let datapath = Datapath::new(Pins::new(&cli.pin_dir));
    // The datapath commands work on interfaces of the --netns namespace;
    // the client commands keep it as the namespace of the ports they make.
    let enter_netns = || cli.netns.as_deref().map(netns::enter).transpose();
    let session = || Session {
        client: Client::new(&cli.socket, cli.token.clone()),
        output: cli.output,
        netns: cli.netns.clone(),
    };
    match &cli.command {
        Command::Attach { iface, xdp_mode } => {
            enter_netns()?;
            match datapath.attach(iface, *xdp_mode)? {
                Attached::New { slot } => println!("attached to {iface} (slot {slot})"),
                Attached::Already { slot } => {
                    println!("{iface} is already attached (slot {slot})");
                }
            }
        }
        Command::Detach {
            iface: Some(iface), ..
        } => {
            enter_netns()?;
            datapath.detach(iface)?;
            println!("detached from {iface}");
        }
        Command::Detach { iface: None, .. } => {
            let n = datapath.detach_all()?;
            println!("detached {n} port(s)");
        }
        Command::Block { iface, prefixes } => {
            enter_netns()?;
            datapath.block(iface, prefixes)?;
            println!("{iface}: blocking {}", join(prefixes));
        }
        Command::Unblock { iface, prefixes } => {
            enter_netns()?;
            let missing = datapath.unblock(iface, prefixes)?;
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
            enter_netns()?;
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
            datapath.set_port_security(iface, &security)?;
            if security.enabled {
                println!("{iface}: port security on for {}", security.mac);
            } else {
                println!("{iface}: port security off");
            }
        }
        Command::Status => {
            enter_netns()?;
            let ports = datapath.status()?;
            match cli.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&ports)?),
                Output::Table => print_status(&ports)?,
            }
        }
        Command::Daemon {
            command: None,
            db,
            metrics,
        } => {
            if let Some(dir) = db.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let daemon = Daemon::start(Store::open(db)?, datapath)?;
            block_on(async {
                let metrics = match metrics {
                    Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
                    None => None,
                };
                api::serve(daemon, &cli.socket, metrics).await
            })?;
        }
        Command::Daemon {
            command: Some(DaemonCommand::Token(command)),
            ..
        } => block_on(session().token(command))?,
        Command::Group(command) => block_on(session().group(command))?,
        Command::Rule(command) => block_on(session().rule(command))?,
        Command::Port(command) => block_on(session().port(command))?,
        Command::Settings(command) => block_on(session().settings(command))?,
        Command::Apply { file, dry_run } => block_on(session().apply(file, *dry_run))?,
        Command::Export => block_on(session().export())?,
        Command::Trace(args) => {
            let known = match args.port() {
                Some(name) => {
                    let document = block_on(session().export_document())?;
                    Some(trace_cli::known(document, name)?)
                }
                None => None,
            };
            trace_cli::run(args, &datapath, cli.netns.as_deref(), known, cli.output)?;
        }
        Command::Protocols => cli::print_protocols(cli.output)?,
        Command::Presets => cli::print_presets(cli.output)?,
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "sg-ctl",
                &mut std::io::stdout(),
            );
        }
        Command::Conntrack(command) => {
            enter_netns()?;
            conntrack_command(&datapath, command, cli.output)?;
        }
        Command::Stats { iface } => {
            enter_netns()?;
            let stats = datapath.stats(iface.as_deref())?;
            match cli.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&stats)?),
                Output::Table => print_stats(&stats)?,
            }
        }
    }
    Ok(())
}

fn conntrack_command(
    datapath: &Datapath,
    command: &ConntrackCommand,
    output: Output,
) -> anyhow::Result<()> {
    match command {
        ConntrackCommand::List(flows) => {
            let flows = datapath.flows(&flows.filter(datapath)?)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&flows)?),
                Output::Table => print_flows(&flows)?,
            }
        }
        ConntrackCommand::Stats => {
            let stats = datapath.conntrack_stats()?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&stats)?),
                Output::Table => {
                    println!(
                        "entries {} of {} ({:.1}%)",
                        stats.entries, stats.capacity, stats.pressure
                    );
                    println!(
                        "new {}  established {}  related {}  invalid {}  full {}  revoked {}",
                        stats.new,
                        stats.established,
                        stats.related,
                        stats.invalid,
                        stats.full,
                        stats.revoked
                    );
                }
            }
        }
        ConntrackCommand::Flush { flows, all } => {
            if !all && flows.is_empty() {
                return Err(Invalid(
                    "conntrack flush: say which flows: --iface, --address, --protocol, --state, \
                     or --all for every flow"
                        .to_string(),
                )
                .into());
            }
            let removed = datapath.flush_flows(&flows.filter(datapath)?)?;
            report(output, "flushed", removed)?;
        }
        ConntrackCommand::Watch { count, seconds } => {
            let mut events = datapath.flow_events()?;
            // Said once the ring is open: what happens from here on is shown.
            eprintln!("watching flows as they start, close and expire");
            let until = seconds.map(|s| Instant::now() + Duration::from_secs(s));
            let mut seen = 0;
            let mut out = std::io::stdout().lock();
            events.watch(until, |event| {
                match output {
                    Output::Json => writeln!(out, "{}", serde_json::to_string(&event)?)?,
                    Output::Table => {
                        let ends = &event.ends;
                        writeln!(
                            out,
                            "{:<8} slot {:<4} {:<18} {} {}",
                            event.event,
                            ends.slot,
                            ends.protocol_label(),
                            end(ends.local, ends.local_port),
                            end(ends.remote, ends.remote_port)
                        )?;
                    }
                }
                out.flush()?;
                seen += 1;
                Ok(count.is_none_or(|count| seen < count))
            })?;
        }
        ConntrackCommand::Gc => {
            let removed = datapath.expire_flows()?;
            report(output, "expired", removed)?;
        }
    }
    Ok(())
}

/// How many flows a command removed.
fn report(output: Output, what: &str, flows: usize) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::json!({ what: flows })),
        Output::Table => println!("{what} {flows} flows"),
    }
    Ok(())
}

/// An end of a flow: address and port.
fn end(addr: IpAddr, port: Option<u16>) -> String {
    match (addr, port) {
        (IpAddr::V6(addr), Some(port)) => format!("[{addr}]:{port}"),
        (addr, Some(port)) => format!("{addr}:{port}"),
        (addr, None) => addr.to_string(),
    }
}

pub fn print_flows(flows: &[conntrack::Flow]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if flows.is_empty() {
        writeln!(out, "no flows")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<12} {:<18} {:<40} {:<40} {:<12} {:<8} {:>16} {:>16} {:>8}",
        "PORT",
        "PROTO",
        "LOCAL",
        "REMOTE",
        "STATE",
        "ORIGIN",
        "OUT pkts/bytes",
        "IN pkts/bytes",
        "EXPIRES"
    )?;
    for flow in flows {
        writeln!(
            out,
            "{:<12} {:<18} {:<40} {:<40} {:<12} {:<8} {:>16} {:>16} {:>7}s",
            flow.interface,
            flow.ends.protocol_label(),
            end(flow.ends.local, flow.ends.local_port),
            end(flow.ends.remote, flow.ends.remote_port),
            flow.state,
            flow.origin,
            format!("{}/{}", flow.packets_egress, flow.bytes_egress),
            format!("{}/{}", flow.packets_ingress, flow.bytes_ingress),
            flow.expires_in_seconds,
        )?;
    }
    Ok(())
}

/// Runs the daemon or a client command on a runtime of its own.
fn block_on<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(work)
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
            "  {:<8} {:<26} {:>12} packets {:>14} bytes",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn presets_exclude_the_fields_they_set() {
        let parsed = Cli::try_parse_from([
            "sg-ctl", "rule", "add", "web", "--preset", "ssh", "--port", "80",
        ]);
        assert!(parsed.is_err());
        let parsed = Cli::try_parse_from([
            "sg-ctl",
            "rule",
            "add",
            "web",
            "--preset",
            "ssh",
            "--remote",
            "203.0.113.0/24",
        ]);
        assert!(parsed.is_ok());
    }
}
