//! `sg-ctl trace`: the command line of `sg_ctl::trace`.

use std::net::IpAddr;

use anyhow::Result;
use clap::{Args, ValueEnum};
use sg_common::Direction;
use sg_core::model::{IpProtocol, Policy};
use sg_ctl::{
    daemon::api::Document,
    datapath::{Datapath, DatapathError},
    frame::{Packet, TcpFlags, Transport},
    netns, trace,
};

use super::{Invalid, Session, block_on, parse_protocol, print};

#[derive(Args)]
#[command(after_help = "Examples:
  sg-ctl trace vm1 --direction ingress --protocol tcp --from 203.0.113.9 --to 10.0.0.5 --dport 22
  sg-ctl trace vm1 --direction egress --protocol udp --from 10.0.0.5 --to 192.0.2.53 --dport 53
  sg-ctl trace vm1 --direction ingress --protocol icmp --from 203.0.113.9 --to 10.0.0.5
  sg-ctl --netns host1 trace --iface tap0 --direction ingress --protocol tcp \\
      --from 203.0.113.9 --to 10.0.0.5 --dport 443         without the daemon: no rule names

The packet runs through the port's own programs on its maps (BPF_PROG_TEST_RUN)
in an instance that counts nothing.")]
pub struct TraceArgs {
    /// The daemon's port (its interface, namespace and policy come from the
    /// daemon).
    #[arg(required_unless_present = "iface", conflicts_with = "iface")]
    port: Option<String>,
    /// An attached interface instead (of `--netns`, if given).
    #[arg(long)]
    iface: Option<String>,
    /// As seen from the workload: ingress is what it receives.
    #[arg(long, value_enum)]
    direction: DirectionArg,
    /// A protocol name or number, as rules take it.
    #[arg(long, value_parser = parse_protocol)]
    protocol: IpProtocol,
    /// Source address.
    #[arg(long)]
    from: IpAddr,
    /// Destination address.
    #[arg(long)]
    to: IpAddr,
    /// Destination port (tcp, udp, sctp, dccp, udplite).
    #[arg(long)]
    dport: Option<u16>,
    /// Source port.
    #[arg(long, default_value_t = 49152)]
    sport: u16,
    /// ICMP or ICMPv6 type (default: echo request).
    #[arg(long)]
    icmp_type: Option<u8>,
    /// ICMP or ICMPv6 code.
    #[arg(long, default_value_t = 0)]
    icmp_code: u8,
    /// TCP flags, comma-separated from syn, ack, fin, rst.
    #[arg(long, default_value = "syn", value_parser = parse_flags)]
    tcp_flags: TcpFlags,
    /// 802.1Q tags, outermost first.
    #[arg(long)]
    vlan: Vec<u16>,
}

#[derive(Clone, Copy, ValueEnum)]
enum DirectionArg {
    Ingress,
    Egress,
}

fn parse_flags(text: &str) -> Result<TcpFlags, String> {
    let mut flags = TcpFlags::default();
    for flag in text.split(',').map(str::trim) {
        match flag {
            "syn" => flags.syn = true,
            "ack" => flags.ack = true,
            "fin" => flags.fin = true,
            "rst" => flags.rst = true,
            _ => {
                return Err(format!(
                    "'{flag}' is not a TCP flag; use syn, ack, fin, rst"
                ));
            }
        }
    }
    Ok(flags)
}

impl TraceArgs {
    /// Runs the trace on the calling thread, which enters the port's
    /// namespace (that of the daemon's port, else `--netns`), and prints it.
    pub fn run(&self, datapath: &Datapath, session: &Session) -> Result<()> {
        let known = match &self.port {
            Some(name) => Some(known(block_on(session.client.export())?, name)?),
            None => None,
        };
        let packet = self.packet()?;
        let direction = match self.direction {
            DirectionArg::Ingress => Direction::Ingress,
            DirectionArg::Egress => Direction::Egress,
        };
        let (iface, netns_name) = match &known {
            Some(k) => (k.iface.as_str(), k.netns.as_deref()),
            None => (
                self.iface.as_deref().unwrap_or_default(),
                session.netns.as_deref(),
            ),
        };
        if let Some(name) = netns_name {
            netns::enter(name)?;
        }
        let policy = known.as_ref().map(|k| (&k.policy, k.port.as_str()));
        let traced = trace::trace(datapath, iface, direction, &packet, policy)?;
        let json = serde_json::json!({
            "interface": iface,
            "packet": print::packet(&packet),
            "trace": traced,
        });
        session
            .output
            .print(&json, |_| print::trace(iface, &packet, &traced))
    }

    fn packet(&self) -> Result<Packet, Invalid> {
        if self.from.is_ipv4() != self.to.is_ipv4() {
            return Err(Invalid(format!(
                "--from {} and --to {} are of different IP versions; give two IPv4 or two IPv6 addresses",
                self.from, self.to
            )));
        }
        let protocol = self.protocol;
        let icmp = (self.from.is_ipv4() && protocol == IpProtocol::ICMP)
            || (self.from.is_ipv6() && protocol == IpProtocol(58));
        if self.dport.is_some() && !protocol.has_ports() {
            return Err(Invalid(format!(
                "--dport: {protocol} has no ports; leave it out or trace tcp, udp, sctp, dccp or udplite"
            )));
        }
        if self.icmp_type.is_some() && !icmp {
            return Err(Invalid(format!(
                "--icmp-type: {protocol} is not the ICMP of {}; use icmp for IPv4, ipv6-icmp for IPv6",
                if self.from.is_ipv4() { "IPv4" } else { "IPv6" }
            )));
        }
        let dst_port = self.dport.unwrap_or(0);
        let transport = match protocol.0 {
            _ if icmp => Transport::Icmp {
                type_: self
                    .icmp_type
                    .unwrap_or(if self.from.is_ipv4() { 8 } else { 128 }),
                code: self.icmp_code,
            },
            6 => Transport::Tcp {
                src_port: self.sport,
                dst_port,
                flags: self.tcp_flags,
            },
            17 => Transport::Udp {
                src_port: self.sport,
                dst_port,
            },
            number if protocol.has_ports() => Transport::Ports {
                protocol: number,
                src_port: self.sport,
                dst_port,
            },
            number => Transport::Other { protocol: number },
        };
        Ok(Packet {
            src_mac: [0x02, 0, 0, 0, 0, 1],
            dst_mac: [0x02, 0, 0, 0, 0, 2],
            vlans: self.vlan.clone(),
            src: self.from,
            dst: self.to,
            transport,
            payload_len: 0,
        })
    }
}

/// What the daemon says of a port: its interface, namespace, and the policy
/// in force.
struct Known {
    iface: String,
    netns: Option<String>,
    policy: Policy,
    port: String,
}

/// The port `name` of an exported desired state.
fn known(document: Document, name: &str) -> Result<Known> {
    let settings = document.settings.unwrap_or_default();
    let policy = Policy {
        groups: document.groups,
        ports: document.ports,
    }
    .effective(&settings);
    let port = policy
        .port(name)
        .ok_or_else(|| DatapathError::NotAttached {
            name: name.to_string(),
            netns: "the daemon's ports (`sg-ctl port list`)".to_string(),
        })?;
    Ok(Known {
        iface: port.ifname.clone(),
        netns: port.netns.clone(),
        port: name.to_string(),
        policy: policy.clone(),
    })
}
