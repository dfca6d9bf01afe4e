//! What `sg-ctl status` and `sg-ctl stats` show of the attached ports.

use ipnet::IpNet;
use serde::Serialize;

use sg_common::NO_POLICY;

use super::{
    attach::{WithoutPolicy, links_exist},
    error::{Result, not_attached},
    maps::MapSet,
    mode::XdpModeArg,
    pins::Pins,
    port_security::PortSecurityStatus,
    ports::CounterRow,
    sys::{ifname_of, link_alive},
};
use crate::netns;

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
    /// The policy id in force; `None` for none.
    pub policy: Option<u32>,
    /// What the port does while it has none.
    pub without_policy: WithoutPolicy,
    pub blocked: Vec<IpNet>,
    pub port_security: PortSecurityStatus,
    pub counters: Vec<CounterRow>,
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
pub(super) fn stats(maps: Option<&MapSet>, iface: Option<&str>) -> Result<Vec<PortStats>> {
    let netns = netns::current()?;
    let Some(maps) = maps else {
        return match iface {
            Some(iface) => Err(not_attached(iface, netns)),
            None => Ok(Vec::new()),
        };
    };
    let ports = match iface {
        Some(iface) => vec![
            maps.ports
                .find(netns, iface)?
                .ok_or_else(|| not_attached(iface, netns))?,
        ],
        None => maps.ports.ports()?,
    };
    ports
        .into_iter()
        .map(|(slot, config)| {
            Ok(PortStats {
                slot,
                interface: ifname_of(&config),
                netns: netns::describe(config.netns),
                counters: maps.ports.counter_rows(slot)?,
            })
        })
        .collect()
}

/// Every attached port with its blocked prefixes and non-zero counters.
pub(super) fn status(pins: &Pins, maps: &MapSet) -> Result<Vec<PortStatus>> {
    let mut out = Vec::new();
    for (slot, config) in maps.ports.ports()? {
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
            policy: Some(maps.policy.policy_of(slot)?).filter(|&id| id != NO_POLICY),
            without_policy: WithoutPolicy::of(&config),
            blocked: maps.ports.blocked(slot)?,
            port_security: maps.security.read(slot)?,
            counters: maps.ports.counter_rows(slot)?,
        });
    }
    Ok(out)
}
