//! The attach lifecycle of a port: a slot found or freed, the object
//! loaded for it, its links made and pinned, the port marked active last;
//! and its release, in the reverse order.

use std::{fmt, fs};

use aya::{
    Ebpf,
    programs::{LinkOrder, TcAttachType, XdpMode, links::FdLink, tc::TcAttachOptions},
};
use serde::Serialize;
use sg_common::{PORT_ACTIVE, PORT_REPLY_VIA_TC, PortConfig, program_names};

use super::{
    Context as _, Datapath, DatapathError, MapSet, Pins, PortSecurity, Result, load, not_attached,
    pins::remove_if_exists,
    require_root,
    sys::{driver_of, ifindex_of, ifname_bytes},
};
use crate::netns;

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeArg {
    /// Native if the driver supports it, else generic.
    #[default]
    Auto,
    /// In the driver (veth, tap, most physical NICs).
    Native,
    /// In the kernel's network stack, after the skb is built.
    Generic,
}

impl XdpModeArg {
    fn to_aya(self) -> XdpMode {
        match self {
            XdpModeArg::Auto => XdpMode::Default,
            XdpModeArg::Native => XdpMode::Driver,
            XdpModeArg::Generic => XdpMode::Skb,
        }
    }

    pub(super) fn from_raw(raw: u32) -> Self {
        match raw {
            1 => XdpModeArg::Native,
            2 => XdpModeArg::Generic,
            _ => XdpModeArg::Auto,
        }
    }

    fn to_raw(self) -> u32 {
        match self {
            XdpModeArg::Auto => 0,
            XdpModeArg::Native => 1,
            XdpModeArg::Generic => 2,
        }
    }
}

impl fmt::Display for XdpModeArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpModeArg::Auto => "auto",
            XdpModeArg::Native => "native",
            XdpModeArg::Generic => "generic",
        })
    }
}

/// What `attach` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Attached {
    New { slot: u32 },
    Already { slot: u32 },
}

impl Datapath {
    /// Attaches the filter to an interface of the calling thread's
    /// namespace. Attaching an attached interface changes nothing.
    pub fn attach(&self, iface: &str, mode: XdpModeArg) -> Result<Attached> {
        require_root("attaching a filter")?;
        let netns = netns::current()?;
        let ifindex = ifindex_of(iface).ok_or_else(|| DatapathError::NoSuchInterface {
            name: iface.to_string(),
            netns: netns::describe(netns),
        })?;
        self.pins.ensure_bpffs()?;
        let _lock = self.pins.lock()?;

        let slot = {
            let mut guard = self.maps()?;
            match guard.as_mut() {
                None => 0,
                Some(maps) => match maps.ports.find(netns, iface)? {
                    Some((slot, port))
                        if port.is_active()
                            && port.ifindex == ifindex
                            && links_exist(&self.pins, slot, &port) =>
                    {
                        return Ok(Attached::Already { slot });
                    }
                    // Left over from an interface of the same name that is
                    // gone, or from an attach that did not finish.
                    Some((slot, _)) => {
                        release(&self.pins, &mut guard, slot)?;
                        slot
                    }
                    None => maps.ports.free_slot()?,
                },
            }
        };

        let mut ebpf = load::instance(&self.pins, slot, false)?;
        let mut guard = self.maps()?;
        // A veth's peer drops XDP_TX frames unless it runs XDP or GRO
        // itself; generic XDP transmits them without the driver.
        let reply_via_tc =
            mode != XdpModeArg::Generic && driver_of(iface).as_deref() == Some("veth");
        let mut config = PortConfig {
            ifname: ifname_bytes(iface),
            netns,
            ifindex,
            flags: 0,
            xdp_mode: mode.to_raw(),
            _pad: 0,
        };
        let maps = guard.as_mut().expect("loading pinned the maps");
        maps.ports.set_port(slot, &config)?;
        maps.ports.reset_counters(slot)?;

        if let Err(e) = link(&self.pins, &mut ebpf, slot, iface, mode, reply_via_tc) {
            release(&self.pins, &mut guard, slot)?;
            return Err(e);
        }
        config.flags = PORT_ACTIVE | if reply_via_tc { PORT_REPLY_VIA_TC } else { 0 };
        let maps = guard
            .as_mut()
            .expect("the maps stay while a port is attached");
        maps.ports.set_port(slot, &config)?;
        Ok(Attached::New { slot })
    }

    /// Detaches the filter from an interface of the calling thread's
    /// namespace. The interface itself may be gone already.
    pub fn detach(&self, iface: &str) -> Result<()> {
        require_root("detaching a filter")?;
        let netns = netns::current()?;
        let not_attached = || not_attached(iface, netns);
        let _lock = self.pins.lock()?;
        let mut guard = self.maps()?;
        let maps = guard.as_mut().ok_or_else(not_attached)?;
        let (slot, _) = maps.ports.find(netns, iface)?.ok_or_else(not_attached)?;
        release(&self.pins, &mut guard, slot)
    }

    /// Detaches every port, in every namespace, and removes all pins; how
    /// many ports there were.
    pub fn detach_all(&self) -> Result<usize> {
        require_root("detaching filters")?;
        let _lock = self.pins.lock()?;
        let mut guard = self.maps()?;
        let Some(maps) = guard.as_mut() else {
            return Ok(0);
        };
        let ports = maps.ports.ports()?;
        for (slot, _) in &ports {
            release(&self.pins, &mut guard, *slot)?;
        }
        Ok(ports.len())
    }
}

/// Frees a slot: links, blocked prefixes, policy, port security, flows,
/// counters, record; and the maps when it was the last port (`maps` is
/// `None` after).
fn release(pins: &Pins, maps: &mut Option<Box<MapSet>>, slot: u32) -> Result<()> {
    let set = maps.as_mut().expect("a port to release has maps");
    if let Ok(mut config) = set.ports.port(slot) {
        config.flags &= !PORT_ACTIVE;
        set.ports.set_port(slot, &config)?;
    }
    // Removing the pins drops the last references to the links, which
    // detaches the programs.
    let dir = pins.port_dir(slot);
    for link in [
        pins.xdp_link(slot),
        pins.tc_link(slot),
        pins.tc_reply_link(slot),
    ] {
        remove_if_exists(&link)?;
    }
    if dir.exists() {
        fs::remove_dir(&dir).context(|| format!("removing {}", dir.display()))?;
    }
    for prefix in set.ports.blocked(slot)? {
        set.ports.unblock(slot, prefix)?;
    }
    set.policy.clear(slot)?;
    set.security.install(slot, &PortSecurity::OFF)?;
    // The slot's next port starts with no flows.
    set.conntrack.forget_slot(slot)?;
    set.ports.reset_counters(slot)?;
    set.ports.set_port(slot, &PortConfig::EMPTY)?;

    if set.ports.ports()?.is_empty() {
        *maps = None;
        let maps_dir = pins.maps();
        let pinned =
            fs::read_dir(&maps_dir).context(|| format!("listing {}", maps_dir.display()))?;
        for entry in pinned {
            let entry = entry.context(|| format!("listing {}", maps_dir.display()))?;
            remove_if_exists(&entry.path())?;
        }
        for dir in [pins.maps(), pins.ports(), pins.root().to_path_buf()] {
            if dir.exists() {
                fs::remove_dir(&dir).context(|| format!("removing {}", dir.display()))?;
            }
        }
    }
    Ok(())
}

/// Whether the pins of every link a port needs are there.
pub(super) fn links_exist(pins: &Pins, slot: u32, port: &PortConfig) -> bool {
    pins.xdp_link(slot).exists()
        && pins.tc_link(slot).exists()
        && (port.flags & PORT_REPLY_VIA_TC == 0 || pins.tc_reply_link(slot).exists())
}

fn link(
    pins: &Pins,
    ebpf: &mut Ebpf,
    slot: u32,
    iface: &str,
    mode: XdpModeArg,
    reply_via_tc: bool,
) -> Result<()> {
    let dir = pins.port_dir(slot);
    fs::create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?;

    let xdp = load::xdp_program(ebpf)?;
    let id = xdp
        .attach(iface, mode.to_aya())
        .map_err(|source| DatapathError::XdpAttach {
            iface: iface.to_string(),
            mode,
            source: Box::new(source),
        })?;
    let link: FdLink = xdp
        .take_link(id)
        .context(|| "taking the XDP link".to_string())?
        .try_into()
        .context(|| format!("the XDP link of '{iface}' is not a bpf_link"))?;
    link.pin(pins.xdp_link(slot))
        .context(|| format!("pinning the XDP link of '{iface}'"))?;

    link_tc(ebpf, program_names::TC, iface, TcAttachType::Egress)?
        .pin(pins.tc_link(slot))
        .context(|| format!("pinning the TC link of '{iface}'"))?;
    if reply_via_tc {
        link_tc(ebpf, program_names::TC_REPLY, iface, TcAttachType::Ingress)?
            .pin(pins.tc_reply_link(slot))
            .context(|| format!("pinning the TC ingress link of '{iface}'"))?;
    }
    Ok(())
}

/// Attaches a TC program of the object with TCX, first in line.
fn link_tc(ebpf: &mut Ebpf, name: &str, iface: &str, at: TcAttachType) -> Result<FdLink> {
    let tc = load::tc_program(ebpf, name)?;
    let id = tc
        .attach_with_options(iface, at, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .map_err(|source| DatapathError::TcAttach {
            iface: iface.to_string(),
            source: Box::new(source),
        })?;
    tc.take_link(id)
        .context(|| format!("taking the TC link of {name}"))?
        .try_into()
        .context(|| format!("the TC link of '{iface}' is not a bpf_link"))
}
