//! The command line: the global options and the commands, each family of
//! commands in a module of its own (its arguments and what it runs), and
//! [`print`], which prints their tables.

pub mod apply;
pub mod catalogue;
mod conntrack;
mod daemon;
pub mod datapath;
mod groups;
mod hooks;
mod ports;
mod print;
mod rules;
mod settings;
mod tokens;
mod trace;

use std::{io, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use sg_core::model::IpProtocol;
use sg_ctl::{client::Client, daemon::api, datapath::DEFAULT_PIN_DIR};

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
pub struct Cli {
    /// Directory on the BPF filesystem for sg's pinned maps and links.
    #[arg(long, global = true, env = "SG_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: String,

    /// Work on interfaces of this network namespace (a name of `ip netns`).
    #[arg(long, global = true)]
    pub netns: Option<String>,

    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    /// The daemon's API socket.
    #[arg(long, global = true, env = "SG_SOCKET", default_value = api::DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// API token (`sg-ctl daemon token create`); root needs none.
    #[arg(long, global = true, env = "SG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

impl Output {
    /// Prints `value` as JSON, or as `table` prints it.
    fn print<T: Serialize + ?Sized>(
        self,
        value: &T,
        table: impl FnOnce(&T) -> io::Result<()>,
    ) -> anyhow::Result<()> {
        match self {
            Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
            Output::Table => table(value)?,
        }
        Ok(())
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Attach the filter to the host side of a port (a tap or veth).
    ///
    /// XDP filters what the workload sends, TC egress what it receives.
    /// Attaching an attached port changes nothing.
    Attach(datapath::Attach),
    /// Detach the filter from a port and remove its pins.
    Detach(datapath::Detach),
    /// Drop packets of the workload from (sent) or to (received) these
    /// addresses.
    Block(datapath::Prefixes),
    /// Stop blocking prefixes.
    Unblock(datapath::Prefixes),
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
    PortSecurity(datapath::PortSecurityArgs),
    /// Attached ports, their blocked prefixes, port security and counters.
    Status,
    /// Run the daemon (or, with `token create`, make an API token; with
    /// `status`, ask it about its store).
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:
  sg-ctl daemon                                  /var/lib/sg/sg.db, /run/sg/sg.sock
  sg-ctl daemon --db /tmp/sg.db --socket /tmp/sg.sock --metrics 127.0.0.1:9400
  sg-ctl daemon --store etcd://10.0.0.1:2379,10.0.0.2:2379 --host hv1
                                                 several hosts sharing the desired state
  sg-ctl daemon status                           the store, and the hosts up
  sg-ctl daemon token create --role viewer       prints a read-only token
  sg-ctl daemon token list                       ids and roles
  sg-ctl daemon token revoke 3f2a9c01b7de"
    )]
    Daemon(daemon::DaemonArgs),
    /// Security groups: create, list, show, update, delete, clone.
    #[command(subcommand)]
    Group(groups::GroupCommand),
    /// The rules of a group: add (fields or a preset), list, update, delete.
    #[command(subcommand)]
    Rule(rules::RuleCommand),
    /// Workload ports and the groups attached to them.
    #[command(subcommand)]
    Port(ports::PortCommand),
    /// Limits, outbound SMTP, conntrack timeouts.
    #[command(subcommand)]
    Settings(settings::SettingsCommand),
    /// Make the desired state that of a YAML or JSON file (`-` for stdin).
    #[command(after_help = "Examples:
  sg-ctl apply -f policy.yaml --dry-run    print what would change
  sg-ctl apply -f policy.yaml              change it; applying again changes nothing
  sg-ctl export > policy.yaml              the current state in the same form")]
    Apply(apply::ApplyArgs),
    /// Print the desired state as YAML (JSON with -o json), as apply reads it.
    Export,
    /// The IP protocols rules may name, with what each accepts.
    Protocols,
    /// The presets of `rule add --preset`.
    Presets,
    /// What the port's programs do with a packet: the verdict, the rule
    /// that decided and why.
    Trace(trace::TraceArgs),
    /// The packet and byte counters of every port, or of one, per
    /// direction and outcome (each drop reason has its own).
    Stats(datapath::Stats),
    /// The connection table: tracked flows, its fill, flushing, expiry.
    #[command(subcommand)]
    Conntrack(conntrack::ConntrackCommand),
    /// The qemu scripts and libvirt hook that plug a VM's tap before its
    /// guest runs.
    #[command(subcommand)]
    Hooks(HooksCommand),
    /// Print a shell completion script.
    #[command(after_help = "Example:
  sg-ctl completions bash > /etc/bash_completion.d/sg-ctl")]
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
pub enum HooksCommand {
    /// Install them, naming this sg-ctl; installing again replaces them.
    #[command(after_help = "Examples:
  sg-ctl hooks install                     /etc/sg/qemu-ifup, /etc/sg/qemu-ifdown
  sg-ctl hooks install --libvirt           and /etc/libvirt/hooks/qemu
  sg-ctl hooks install --dir /usr/local/libexec/sg")]
    Install(hooks::HooksInstall),
    /// What libvirt's hook runs: the domain's XML on stdin; at "start
    /// begin" its ports (its <metadata>'s sg:port elements) described and
    /// plugged, or a failure that stops the VM; at "stopped end" unplugged.
    #[command(after_help = "Example (as libvirt runs it):
  sg-ctl hooks libvirt vm1 start begin - < vm1.xml")]
    Libvirt(hooks::LibvirtHook),
}

/// An argument the daemon was not asked about because it is wrong on its
/// face; exits 2 like clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// A client command with where to send it.
pub struct Session {
    pub client: Client,
    pub output: Output,
    /// The `--netns` of the command line: a new port's namespace, or that
    /// of `trace --iface`.
    pub netns: Option<String>,
}

impl Session {
    /// Says what a delete command deleted.
    fn deleted(&self, kind: &str, name: &str) -> anyhow::Result<()> {
        let deleted = serde_json::json!({ "deleted": { "kind": kind, "name": name } });
        self.output.print(&deleted, |_| {
            println!("deleted {kind} {name}");
            Ok(())
        })
    }
}

/// Runs the daemon or a client command on a runtime of its own.
pub fn block_on<T, E: Into<anyhow::Error>>(
    work: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(work)
        .map_err(Into::into)
}

/// A protocol as rules name it: a name or a number.
fn parse_protocol(text: &str) -> Result<IpProtocol, String> {
    text.parse()
        .map_err(|e: sg_core::model::FieldError| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_fixed_ip_is_an_address_and_its_error_says_where_a_prefix_goes() {
        let port = |ip: &str| {
            Cli::try_parse_from([
                "sg-ctl",
                "port",
                "create",
                "vm1",
                "--iface",
                "tap1",
                "--mac",
                "52:54:00:12:34:56",
                "--ip",
                ip,
            ])
        };
        assert!(port("198.18.0.5").is_ok());
        let error = port("198.18.0.0/24").err().unwrap().to_string();
        assert!(
            error.contains(
                "invalid value '198.18.0.0/24' for '--ip <IPS>': 198.18.0.0/24 is a prefix, not \
                 an address; use one address such as 198.18.0.0 (a prefix the workload may use \
                 is an allowed address pair)"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_plug_describes_a_port_with_a_mac_and_an_interface_only() {
        let plug = |args: &[&str]| {
            let mut all = vec!["sg-ctl", "port", "plug", "vm1"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).map(drop)
        };
        let mac = ["--mac", "52:54:00:12:34:56"];
        assert!(plug(&[]).is_ok());
        assert!(plug(&["--iface", "tap1"]).is_ok());
        assert!(plug(&[&["--iface", "tap1"][..], &mac, &["--ip", "198.18.0.5"]].concat()).is_ok());
        for wrong in [
            &mac[..],
            &["--iface", "tap1", "--ip", "198.18.0.5"],
            &["--iface", "tap1", "--group", "web"],
        ] {
            let error = plug(wrong).err().unwrap();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{wrong:?}"
            );
        }
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
