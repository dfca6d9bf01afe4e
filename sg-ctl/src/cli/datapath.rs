//! The low-level commands on the pinned maps, without the daemon: attach,
//! detach, block, unblock, port-security, status, stats.

use std::net::IpAddr;

use anyhow::Result;
use clap::{Args, ValueEnum};
use ipnet::IpNet;
use sg_core::{
    model::{AddressPair, MacAddr, parse_cidr},
    port_security::PortSecurity,
};
use sg_ctl::{
    datapath::{Attached, Datapath, MapSizes, WithoutPolicy, XdpModeArg},
    netns,
};

use super::{Invalid, Output, print};

#[derive(Args)]
pub struct Attach {
    /// Interface name.
    iface: String,
    /// Where the XDP program runs.
    #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
    xdp_mode: XdpMode,
    /// The entries a shared map holds, NAME=ENTRIES (repeat for more), as
    /// `sg-ctl daemon --map-size` takes them: taken when the maps are made,
    /// by the first attach.
    #[arg(long = "map-size", value_name = "NAME=ENTRIES")]
    map_sizes: Vec<String>,
}

/// The values of `--xdp-mode`, each the [`XdpModeArg`] of its name.
#[derive(Clone, Copy, ValueEnum)]
enum XdpMode {
    /// Native if the driver supports it, else generic.
    Auto,
    /// In the driver (veth, tap, most physical NICs).
    Native,
    /// In the kernel's network stack, after the skb is built.
    Generic,
}

impl From<XdpMode> for XdpModeArg {
    fn from(mode: XdpMode) -> Self {
        match mode {
            XdpMode::Auto => XdpModeArg::Auto,
            XdpMode::Native => XdpModeArg::Native,
            XdpMode::Generic => XdpModeArg::Generic,
        }
    }
}

#[derive(Args)]
pub struct Detach {
    /// Interface name.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    iface: Option<String>,
    /// Detach every port, in every namespace.
    #[arg(long)]
    all: bool,
}

/// The prefixes of `block` and `unblock`.
#[derive(Args)]
pub struct Prefixes {
    /// Interface name.
    iface: String,
    /// Prefixes or addresses, IPv4 or IPv6.
    #[arg(required = true, value_parser = parse_cidr)]
    prefixes: Vec<IpNet>,
}

#[derive(Args)]
pub struct PortSecurityArgs {
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
    #[arg(long = "allowed-pair", value_name = "IP[,MAC]")]
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
}

#[derive(Args)]
pub struct Stats {
    /// Interface name; every port when left out.
    iface: Option<String>,
}

fn parse_mac(text: &str) -> Result<MacAddr, String> {
    text.parse()
        .map_err(|e: sg_core::model::FieldError| e.message)
}

impl Attach {
    pub fn run(&self, datapath: &Datapath) -> Result<()> {
        let iface = &self.iface;
        let sizes = MapSizes::parse(self.map_sizes.iter().map(String::as_str)).map_err(Invalid)?;
        let datapath = Datapath::with_sizes(datapath.pins().clone(), sizes);
        match datapath.attach(iface, self.xdp_mode.into(), WithoutPolicy::Pass)? {
            Attached::New { slot } => println!("attached to {iface} (slot {slot})"),
            Attached::Already { slot } => {
                println!("{iface} is already attached (slot {slot})");
            }
        }
        Ok(())
    }
}

impl Detach {
    /// Detaches the interface of the namespace `netns` (the current one
    /// when `None`), or every port of every namespace.
    pub fn run(&self, datapath: &Datapath, netns: Option<&str>) -> Result<()> {
        match &self.iface {
            Some(iface) => {
                if let Some(name) = netns {
                    netns::enter(name)?;
                }
                datapath.detach(iface)?;
                println!("detached from {iface}");
            }
            None => {
                let n = datapath.detach_all()?;
                println!("detached {n} port(s)");
            }
        }
        Ok(())
    }
}

impl Prefixes {
    pub fn block(&self, datapath: &Datapath) -> Result<()> {
        datapath.block(&self.iface, &self.prefixes)?;
        println!("{}: blocking {}", self.iface, print::join(&self.prefixes));
        Ok(())
    }

    pub fn unblock(&self, datapath: &Datapath) -> Result<()> {
        let missing = datapath.unblock(&self.iface, &self.prefixes)?;
        if !missing.is_empty() {
            eprintln!("{}: {} were not blocked", self.iface, print::join(&missing));
        }
        Ok(())
    }
}

impl PortSecurityArgs {
    pub fn run(&self, datapath: &Datapath) -> Result<()> {
        let iface = &self.iface;
        let security = match self.mac {
            Some(mac) if !self.off => PortSecurity {
                enabled: true,
                mac,
                ips: self.ips.clone(),
                allowed_address_pairs: self.allowed_pairs.clone(),
                allow_vlan: self.allow_vlan,
                allow_multicast: self.allow_multicast,
            },
            _ => PortSecurity::OFF,
        };
        datapath.set_port_security(iface, &security)?;
        if security.enabled {
            println!("{iface}: port security on for {}", security.mac);
        } else {
            println!("{iface}: port security off");
        }
        Ok(())
    }
}

/// `status`: the attached ports.
pub fn status(datapath: &Datapath, output: Output) -> Result<()> {
    output.print(&datapath.status()?, |ports| print::status(ports))
}

impl Stats {
    pub fn run(&self, datapath: &Datapath, output: Output) -> Result<()> {
        let stats = datapath.stats(self.iface.as_deref())?;
        output.print(&stats, |stats| print::stats(stats))
    }
}
