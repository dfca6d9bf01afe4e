//! The attach lifecycle of a port: a slot found or freed, the object
//! loaded for it, its links made and pinned, the port marked active last;
//! and its release, in the reverse order. The callers hold the pins' lock.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{LinkOrder, TcAttachType, links::FdLink, tc::TcAttachOptions},
};
use serde::Serialize;
use sg_common::{
    PORT_ACTIVE, PORT_OPEN_WITHOUT_POLICY, PORT_REPLY_VIA_TC, PortConfig, program_names,
};
use sg_core::port_security::PortSecurity;

use super::{
    error::{Context as _, DatapathError, Result},
    load,
    maps::MapSet,
    mode::XdpModeArg,
    pins::{Pins, remove_if_exists},
    sizes::MapSizes,
    sys::{driver_of, ifindex_of, ifname_bytes},
};
use crate::netns;

/// What `attach` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Attached {
    New { slot: u32 },
    Already { slot: u32 },
}

/// What a port does while it has no policy in force. Whatever this says, a
/// port drops everything while it is being attached or detached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WithoutPolicy {
    /// Drops everything (`drop-no-policy`), both ways: a port the daemon
    /// attaches, before its policy is in force.
    Drop,
    /// Its blocklist and port security apply, nothing else: the low-level
    /// `sg-ctl attach`, which has no policies (`PORT_OPEN_WITHOUT_POLICY`).
    Pass,
}

impl WithoutPolicy {
    /// Its bit of `PortConfig::flags`.
    pub fn flag(self) -> u32 {
        match self {
            WithoutPolicy::Drop => 0,
            WithoutPolicy::Pass => PORT_OPEN_WITHOUT_POLICY,
        }
    }

    pub fn of(config: &PortConfig) -> WithoutPolicy {
        if config.flags & PORT_OPEN_WITHOUT_POLICY != 0 {
            WithoutPolicy::Pass
        } else {
            WithoutPolicy::Drop
        }
    }
}

/// A port's programs loaded and through the verifier under a slot kept for
/// it, waiting for its interface: attaching them then takes no load, so the
/// interface is enforced moments after it appears.
pub struct Prepared {
    slot: u32,
    netns: u64,
    iface: String,
    mode: XdpModeArg,
    without_policy: WithoutPolicy,
    ebpf: Ebpf,
}

impl Prepared {
    pub fn slot(&self) -> u32 {
        self.slot
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }
}

/// Attaches the filter to `iface`, of the calling thread's namespace;
/// maps not pinned yet are made with `sizes`; without a policy the port
/// does what `without_policy` says. Attaching an attached interface
/// changes nothing, but for closing it: `WithoutPolicy::Drop` takes an
/// open port's `PORT_OPEN_WITHOUT_POLICY` away (the daemon takes over a
/// port `sg-ctl attach` made), while `Pass` leaves a closed port closed.
pub(super) fn attach(
    pins: &Pins,
    sizes: &MapSizes,
    maps: &mut Option<Box<MapSet>>,
    iface: &str,
    mode: XdpModeArg,
    without_policy: WithoutPolicy,
) -> Result<Attached> {
    let netns = netns::current()?;
    let ifindex = ifindex_of(iface).ok_or_else(|| no_such_interface(iface, netns))?;
    if let Some(set) = maps.as_deref_mut()
        && let Some((slot, mut port)) = set.ports.find(netns, iface)?
        && port.is_active()
        && port.ifindex == ifindex
        && links_exist(pins, slot, &port)
    {
        if without_policy == WithoutPolicy::Drop && WithoutPolicy::of(&port) == WithoutPolicy::Pass
        {
            port.flags &= !PORT_OPEN_WITHOUT_POLICY;
            set.ports.set_port(slot, &port)?;
        }
        return Ok(Attached::Already { slot });
    }
    let mut prepared = prepare(pins, sizes, maps, iface, mode, without_policy)?;
    attach_prepared(pins, maps, &mut prepared)
}

/// Keeps a slot for `iface`, of the calling thread's namespace, whether
/// the interface is there or not, and loads its programs: a slot the name
/// had (left over from an interface of the same name that is gone, or from
/// an attach that did not finish) is released first.
pub(super) fn prepare(
    pins: &Pins,
    sizes: &MapSizes,
    maps: &mut Option<Box<MapSet>>,
    iface: &str,
    mode: XdpModeArg,
    without_policy: WithoutPolicy,
) -> Result<Prepared> {
    let netns = netns::current()?;
    let slot = match maps.as_deref() {
        None => 0,
        Some(set) => match set.ports.find(netns, iface)? {
            Some((slot, _)) => {
                release(pins, maps, slot)?;
                slot
            }
            None => set.ports.free_slot()?,
        },
    };
    let mut ebpf = load::instance(pins, sizes, slot, false)?;
    MapSet::refresh(pins, maps)?;
    let config = PortConfig {
        ifname: ifname_bytes(iface),
        netns,
        ifindex: 0,
        flags: 0,
        xdp_mode: mode.to_raw(),
        _pad: 0,
    };
    // From here until its policy is in force the port drops everything.
    let set = maps.as_deref_mut().expect("loading pinned the maps");
    set.ports.set_port(slot, &config)?;
    set.ports.reset_counters(slot)?;
    let verified = load::xdp_program(&mut ebpf).map(drop).and_then(|()| {
        [program_names::TC, program_names::TC_REPLY]
            .into_iter()
            .try_for_each(|name| load::tc_program(&mut ebpf, name).map(drop))
    });
    if let Err(e) = verified {
        release(pins, maps, slot)?;
        return Err(e);
    }
    Ok(Prepared {
        slot,
        netns,
        iface: iface.to_string(),
        mode,
        without_policy,
        ebpf,
    })
}

/// Attaches prepared programs to their interface, of the calling thread's
/// namespace, once it is there; the slot's record says active last.
pub(super) fn attach_prepared(
    pins: &Pins,
    maps: &mut Option<Box<MapSet>>,
    prepared: &mut Prepared,
) -> Result<Attached> {
    let (slot, iface, mode) = (prepared.slot, prepared.iface.clone(), prepared.mode);
    let netns = netns::current()?;
    let ifindex = ifindex_of(&iface).ok_or_else(|| no_such_interface(&iface, netns))?;
    let set = maps
        .as_deref_mut()
        .ok_or_else(|| kept_slot_gone(&iface, slot))?;
    let mut config = set.ports.port(slot)?;
    if netns != prepared.netns || config.ifname != ifname_bytes(&iface) || config.is_active() {
        return Err(kept_slot_gone(&iface, slot));
    }
    // A veth's peer drops XDP_TX frames unless it runs XDP or GRO itself;
    // generic XDP transmits them without the driver.
    let reply_via_tc = mode != XdpModeArg::Generic && driver_of(&iface).as_deref() == Some("veth");
    config.ifindex = ifindex;
    set.ports.set_port(slot, &config)?;
    if let Err(e) = link(pins, &mut prepared.ebpf, slot, &iface, mode, reply_via_tc) {
        release(pins, maps, slot)?;
        return Err(e);
    }
    config.flags = PORT_ACTIVE
        | prepared.without_policy.flag()
        | if reply_via_tc { PORT_REPLY_VIA_TC } else { 0 };
    let set = maps
        .as_deref_mut()
        .expect("the maps stay while a port is attached");
    set.ports.set_port(slot, &config)?;
    Ok(Attached::New { slot })
}

fn no_such_interface(iface: &str, netns: u64) -> DatapathError {
    DatapathError::NoSuchInterface {
        name: iface.to_string(),
        netns: netns::describe(netns),
    }
}

/// The slot kept for prepared programs was released meanwhile (another
/// sg-ctl detached it, or the maps went).
fn kept_slot_gone(iface: &str, slot: u32) -> DatapathError {
    DatapathError::Kernel {
        what: format!("attaching the programs prepared for '{iface}'"),
        source: format!("slot {slot} was released meanwhile; attach again").into(),
    }
}

/// Frees a slot: links, blocked prefixes, policy, port security, flows,
/// counters, record; and the maps when it was the last port (`maps` is
/// `None` after).
pub(super) fn release(pins: &Pins, maps: &mut Option<Box<MapSet>>, slot: u32) -> Result<()> {
    let set = maps.as_deref_mut().expect("a port to release has maps");
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
    set.ports.unblock_all(slot)?;
    set.policy.clear(slot)?;
    set.security.install(slot, &PortSecurity::OFF)?;
    // The slot's next port starts with no flows.
    set.conntrack.forget_slot(slot)?;
    set.ports.reset_counters(slot)?;
    set.ports.set_port(slot, &PortConfig::EMPTY)?;

    if set.ports.ports()?.is_empty() {
        *maps = None;
        remove_dirs(pins)?;
    }
    Ok(())
}

/// Takes away every port's links, which detaches its programs, and every
/// map, without opening them as this version's: how the pins of another
/// version go. The ports whose links went.
pub(super) fn remove_all(pins: &Pins) -> Result<usize> {
    let dirs = list(&pins.ports())?;
    for dir in &dirs {
        for link in list(dir)? {
            remove_if_exists(&link)?;
        }
        fs::remove_dir(dir).context(|| format!("removing {}", dir.display()))?;
    }
    remove_dirs(pins)?;
    Ok(dirs.len())
}

/// Removes the pinned maps and the directories under `pins`, once no port
/// is left.
fn remove_dirs(pins: &Pins) -> Result<()> {
    for map in list(&pins.maps())? {
        remove_if_exists(&map)?;
    }
    for dir in [pins.maps(), pins.ports(), pins.root().to_path_buf()] {
        if dir.exists() {
            fs::remove_dir(&dir).context(|| format!("removing {}", dir.display()))?;
        }
    }
    Ok(())
}

/// The paths in `dir`; none when it is not there.
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let listing = || format!("listing {}", dir.display());
    match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        entries => entries
            .context(listing)?
            .map(|entry| Ok(entry.context(listing)?.path()))
            .collect(),
    }
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
