//! `sg-ctl port`: workload ports, the groups attached to them, and their
//! tracked flows as the daemon reads them.

use std::net::IpAddr;

use anyhow::Result;
use clap::Subcommand;
use sg_core::model::{FieldError, MacAddr, Port, parse_ip};
use sg_ctl::daemon::api::{PlugBody, PortView};

use super::{Invalid, Session, conntrack::FlowMatch, print};

#[derive(Subcommand)]
pub enum PortCommand {
    /// Add a workload's port; its interface is filtered at once.
    #[command(after_help = "Examples:
  sg-ctl port create vm1 --iface tap1 --mac 52:54:00:12:34:56 --ip 10.0.0.5 --ip 2001:db8::5
  sg-ctl --netns host1 port create web1 --iface veth-web --mac 02:00:00:00:00:01 --group web
  sg-ctl port create vm2 --iface tap2 --mac 52:54:00:12:34:57 --dhcp-server 10.0.0.1
  sg-ctl port create vm3 --iface tap3 --mac 52:54:00:12:34:58 --max-flows 100000")]
    Create {
        name: String,
        /// The host-side interface (in --netns, if given).
        #[arg(long)]
        iface: String,
        #[arg(long)]
        mac: MacAddr,
        /// A fixed IP of the workload (repeat for more).
        #[arg(long = "ip", value_parser = parse_ip)]
        ips: Vec<IpAddr>,
        /// An address the workload may also use: CIDR[,MAC] (repeat for more).
        // Parsed once the command is read, so that a wrong pair reads like
        // the daemon's field errors.
        #[arg(long = "address-pair")]
        address_pairs: Vec<String>,
        /// The pairs may be wider than the host's minimum prefixes
        /// (settings min_pair_prefix_ipv4/ipv6): the port is then a member
        /// of every address in them.
        #[arg(long)]
        allow_wide_pair: bool,
        /// Groups to attach, in order (repeat; default: default).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Turn off anti-spoofing for this port.
        #[arg(long)]
        no_port_security: bool,
        /// Let VLAN-tagged frames leave the workload.
        #[arg(long)]
        allow_vlan: bool,
        /// Let any broadcast and multicast leave the workload.
        #[arg(long)]
        allow_multicast: bool,
        /// Accept DHCP replies from this server only (repeat for more;
        /// default: any). A DHCPv6 server answers from its link-local
        /// address.
        #[arg(long = "dhcp-server")]
        dhcp_servers: Vec<IpAddr>,
        /// The flows the port may hold in the connection table (default:
        /// the host's setting max_flows_per_port); its new flows beyond are
        /// dropped.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_flows: Option<u32>,
    },
    /// List the ports with their status.
    List,
    /// Show a port.
    Show { name: String },
    /// Put the port's policy in force on its interface now, and fail
    /// unless it is: for a hypervisor's or container runtime's hook, before
    /// the workload starts. --iface (in --netns, if given) becomes its
    /// interface. With --mac, the port is described afresh first (created,
    /// or replaced whole): its interface, MAC, IPs and groups.
    #[command(after_help = "Examples:
  sg-ctl port plug vm1 --iface tap3
  sg-ctl --netns c1 port plug web-1 --iface eth0
  sg-ctl port plug vm1 --iface tap3 --mac 52:54:00:12:34:56 --ip 10.0.0.5 --group web")]
    Plug {
        name: String,
        #[arg(long)]
        iface: Option<String>,
        /// Describe the port afresh with this MAC (needs --iface).
        #[arg(long, requires = "iface")]
        mac: Option<MacAddr>,
        /// With --mac: a fixed IP of the workload (repeat for more).
        #[arg(long = "ip", value_parser = parse_ip, requires = "mac")]
        ips: Vec<IpAddr>,
        /// With --mac: groups to attach, in order (repeat; default:
        /// default).
        #[arg(long = "group", requires = "mac")]
        groups: Vec<String>,
    },
    /// Remove a port as its workload stops, and answer once its filter is
    /// off its interface; a port not there is unplugged already (exit 0).
    /// For a hypervisor's or container runtime's hook.
    #[command(after_help = "Examples:
  sg-ctl port unplug vm1")]
    Unplug { name: String },
    /// Change a port's interface, MAC, IPs, port security, DHCP servers or
    /// flow limit.
    Update {
        name: String,
        #[arg(long)]
        iface: Option<String>,
        #[arg(long)]
        mac: Option<MacAddr>,
        /// Replaces the fixed IPs (repeat for more).
        #[arg(long = "ip", value_parser = parse_ip)]
        ips: Vec<IpAddr>,
        #[arg(long)]
        port_security: Option<bool>,
        /// VLAN-tagged frames may leave the workload.
        #[arg(long)]
        allow_vlan: Option<bool>,
        /// Any broadcast and multicast may leave the workload.
        #[arg(long)]
        allow_multicast: Option<bool>,
        /// Replaces the DHCP servers the port accepts replies from (repeat
        /// for more).
        #[arg(long = "dhcp-server", conflicts_with = "any_dhcp_server")]
        dhcp_servers: Vec<IpAddr>,
        /// Accept DHCP replies from any server again.
        #[arg(long)]
        any_dhcp_server: bool,
        /// The flows the port may hold in the connection table.
        #[arg(long, conflicts_with = "host_max_flows", value_parser = clap::value_parser!(u32).range(1..))]
        max_flows: Option<u32>,
        /// The port may hold as many flows as the host's setting
        /// max_flows_per_port again.
        #[arg(long)]
        host_max_flows: bool,
    },
    /// Delete a port; its interface stops being filtered.
    Delete { name: String },
    /// Attach groups to a port, live.
    Attach {
        name: String,
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Detach groups from a port, live (a port keeps at least one).
    Detach {
        name: String,
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// The flows the connection tracker holds for an attached port.
    #[command(after_help = "Examples:
  sg-ctl port flows vm1
  sg-ctl port flows vm1 --protocol tcp --state established
  sg-ctl -o json port flows vm1 --address 203.0.113.0/24")]
    Flows {
        name: String,
        #[command(flatten)]
        of: FlowMatch,
    },
}

fn show(session: &Session, view: &PortView) -> Result<()> {
    session
        .output
        .print(view, |view| print::ports(std::slice::from_ref(view)))
}

impl PortCommand {
    pub async fn run(&self, session: &Session) -> Result<()> {
        let client = &session.client;
        match self {
            PortCommand::Create {
                name,
                iface,
                mac,
                ips,
                address_pairs,
                allow_wide_pair,
                groups,
                no_port_security,
                allow_vlan,
                allow_multicast,
                dhcp_servers,
                max_flows,
            } => {
                let mut port = Port::new(name.as_str(), iface.as_str(), *mac);
                port.dhcp_servers = dhcp_servers.clone();
                port.max_flows = *max_flows;
                port.ips = ips.clone();
                port.allowed_address_pairs = address_pairs
                    .iter()
                    .map(|text| text.parse().map_err(|e: FieldError| Invalid(e.to_string())))
                    .collect::<Result<_, _>>()?;
                if *allow_wide_pair {
                    for pair in &mut port.allowed_address_pairs {
                        pair.allow_wide = true;
                        print::wide_pair(name, pair);
                    }
                }
                if !groups.is_empty() {
                    port.groups = groups.clone();
                }
                port.port_security = !no_port_security;
                port.allow_vlan = *allow_vlan;
                port.allow_multicast = *allow_multicast;
                port.netns = session.netns.clone();
                show(session, &client.create_port(&port).await?)
            }
            PortCommand::List => {
                let ports = client.ports().await?;
                session.output.print(&ports, |ports| print::ports(ports))
            }
            PortCommand::Show { name } => show(session, &client.port(name).await?),
            PortCommand::Update {
                name,
                iface,
                mac,
                ips,
                port_security,
                allow_vlan,
                allow_multicast,
                dhcp_servers,
                any_dhcp_server,
                max_flows,
                host_max_flows,
            } => {
                let view = client.port(name).await?;
                let mut port = view.spec;
                if let Some(iface) = iface {
                    port.ifname = iface.clone();
                }
                if let Some(mac) = mac {
                    port.mac = *mac;
                }
                if !ips.is_empty() {
                    port.ips = ips.clone();
                }
                if *any_dhcp_server {
                    port.dhcp_servers.clear();
                } else if !dhcp_servers.is_empty() {
                    port.dhcp_servers = dhcp_servers.clone();
                }
                if *host_max_flows {
                    port.max_flows = None;
                } else if max_flows.is_some() {
                    port.max_flows = *max_flows;
                }
                for (field, value) in [
                    (&mut port.port_security, port_security),
                    (&mut port.allow_vlan, allow_vlan),
                    (&mut port.allow_multicast, allow_multicast),
                ] {
                    if let Some(on) = value {
                        *field = *on;
                    }
                }
                if session.netns.is_some() {
                    port.netns = session.netns.clone();
                }
                let view = client
                    .replace_port(name, &port, Some(view.revision))
                    .await?;
                show(session, &view)
            }
            PortCommand::Plug {
                name,
                iface,
                mac,
                ips,
                groups,
            } => {
                if let (Some(mac), Some(iface)) = (mac, iface) {
                    let mut port = Port::new(name.as_str(), iface.as_str(), *mac);
                    port.ips = ips.clone();
                    if !groups.is_empty() {
                        port.groups = groups.clone();
                    }
                    port.netns = session.netns.clone();
                    client.put_port(&port).await?;
                }
                let at = PlugBody {
                    ifname: iface.clone(),
                    netns: session.netns.clone(),
                };
                show(session, &client.plug(name, &at).await?)
            }
            PortCommand::Unplug { name } => {
                let gone_already = match client.unplug(name).await {
                    Err(e) if e.is_not_found() => true,
                    unplugged => unplugged.map(|_| false)?,
                };
                let unplugged = serde_json::json!({
                    "unplugged": { "name": name, "gone_already": gone_already }
                });
                session.output.print(&unplugged, |_| {
                    if gone_already {
                        println!("port {name} is not there: unplugged already");
                    } else {
                        println!("unplugged port {name}");
                    }
                    Ok(())
                })
            }
            PortCommand::Delete { name } => {
                client.delete_port(name, None).await?;
                session.deleted("port", name)
            }
            PortCommand::Flows { name, of } => {
                let flows = client.flows(name, &of.query()).await?;
                session.output.print(&flows, |flows| print::flows(flows))
            }
            PortCommand::Attach { name, groups } => {
                show(session, &client.attach_groups(name, groups).await?)
            }
            PortCommand::Detach { name, groups } => {
                show(session, &client.detach_groups(name, groups).await?)
            }
        }
    }
}
