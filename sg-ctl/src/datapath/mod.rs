//! The datapath on this host: sg's eBPF object loaded per port, attached to
//! interfaces, and its pinned maps read and written, through one handle,
//! [`Datapath`].
//!
//! Links and maps are pinned (see [`pins`]), so enforcement goes on when
//! sg-ctl exits; detaching a port removes its links, and the last detach
//! removes the maps. The handle keeps the maps it opened: each call checks
//! that the pins still hold the same maps (another sg-ctl may have removed
//! them and attached afresh) and opens them again when not.

mod attach;
pub mod conntrack;
mod error;
mod load;
mod pins;
mod policy;
pub mod port_security;
mod ports;
mod status;
mod sys;
mod test_run;

use std::{
    net::IpAddr,
    str::FromStr,
    sync::{Mutex, MutexGuard},
};

use aya::maps::MapInfo;
use ipnet::IpNet;
use sg_common::{Counter, Direction, Outcome, PortConfig, map_names};

pub use attach::{Attached, XdpModeArg};
use conntrack::ConntrackMaps;
use error::{Context, not_attached, require_root};
pub use error::{DatapathError, Result};
pub use load::EBPF_OBJECT;
pub use pins::{DEFAULT_PIN_DIR, Pins};
use policy::PolicyMaps;
use port_security::PortSecurityMaps;
pub use port_security::{PortSecurity, PortSecurityStatus};
pub use ports::PortMaps;
pub use status::{CounterRow, PortStats, PortStatus};
pub use test_run::{Forward, TestRun};

use crate::netns;

/// Every map family, opened from the pins together.
struct MapSet {
    /// The kernel's id of the `SG_PORTS` opened: the pins hold these maps
    /// while their `SG_PORTS` has it.
    id: u32,
    ports: PortMaps,
    policy: PolicyMaps,
    security: PortSecurityMaps,
    conntrack: ConntrackMaps,
}

impl MapSet {
    fn open(pins: &Pins, id: u32) -> Result<MapSet> {
        Ok(MapSet {
            id,
            ports: PortMaps::open(pins)?,
            policy: PolicyMaps::open(pins)?,
            security: PortSecurityMaps::open(pins)?,
            conntrack: ConntrackMaps::open(pins)?,
        })
    }
}

/// The datapath under one pin directory: the pins and the maps opened from
/// them. Its methods may be called from any thread; those about an
/// interface by name take it in the calling thread's network namespace.
pub struct Datapath {
    pins: Pins,
    /// Boxed: the maps' handles are large, the handle is moved about.
    maps: Mutex<Option<Box<MapSet>>>,
}

impl Datapath {
    /// The datapath under `pins`; nothing is opened until it is used.
    pub fn new(pins: Pins) -> Datapath {
        Datapath {
            pins,
            maps: Mutex::new(None),
        }
    }

    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// The maps, opened again when the pins hold others than those opened;
    /// `None` when nothing is attached (no maps are pinned).
    fn maps(&self) -> Result<MutexGuard<'_, Option<Box<MapSet>>>> {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.pins.map(map_names::PORTS);
        let pinned = match MapInfo::from_pin(&path) {
            Ok(info) => Some(info.id()),
            Err(_) if !path.exists() => None,
            Err(e) => return Err(e).context(|| format!("reading {}", path.display())),
        };
        match pinned {
            None => *maps = None,
            Some(id) if maps.as_ref().is_none_or(|m| m.id != id) => {
                *maps = Some(Box::new(MapSet::open(&self.pins, id)?));
            }
            Some(_) => {}
        }
        Ok(maps)
    }

    /// Runs `f` on the maps; `None` when nothing is attached.
    fn with_maps<T>(&self, f: impl FnOnce(&mut MapSet) -> Result<T>) -> Result<Option<T>> {
        self.maps()?.as_deref_mut().map(f).transpose()
    }

    /// Runs `f` on the maps and the slot of the port of `iface`, an
    /// interface of the calling thread's namespace.
    fn with_port<T>(
        &self,
        iface: &str,
        f: impl FnOnce(&mut MapSet, u32) -> Result<T>,
    ) -> Result<T> {
        require_root("changing the filter's maps")?;
        let netns = netns::current()?;
        let not_attached = || not_attached(iface, netns);
        let mut guard = self.maps()?;
        let maps = guard.as_mut().ok_or_else(not_attached)?;
        let (slot, _) = maps.ports.find(netns, iface)?.ok_or_else(not_attached)?;
        f(maps, slot)
    }

    /// The slot of the port of `iface`, an interface of the calling
    /// thread's namespace.
    pub fn slot_of(&self, iface: &str) -> Result<u32> {
        self.with_port(iface, |_, slot| Ok(slot))
    }

    /// Whether any port is attached: the maps are there while one is.
    pub fn has_ports(&self) -> Result<bool> {
        Ok(self.maps()?.is_some())
    }

    /// Every used slot with its port's record.
    pub fn ports(&self) -> Result<Vec<(u32, PortConfig)>> {
        Ok(self
            .with_maps(|maps| maps.ports.ports())?
            .unwrap_or_default())
    }

    /// Writes a slot's record as it is given: for programs run through
    /// `BPF_PROG_TEST_RUN` on a slot no interface has (`attach` writes the
    /// records of real ports).
    pub fn set_port(&self, slot: u32, config: &PortConfig) -> Result<()> {
        self.with_maps(|maps| maps.ports.set_port(slot, config))?
            .ok_or_else(|| self.nothing_attached())
    }

    /// Counter of one outcome on a slot, summed over CPUs.
    pub fn counter(&self, slot: u32, direction: Direction, outcome: Outcome) -> Result<Counter> {
        self.with_maps(|maps| maps.ports.counter(slot, direction, outcome))?
            .ok_or_else(|| self.nothing_attached())
    }

    /// Drops, on the port of `iface`, packets from (XDP) or to (TC)
    /// addresses in the prefixes.
    pub fn block(&self, iface: &str, prefixes: &[IpNet]) -> Result<()> {
        let _lock = self.pins.lock()?;
        self.with_port(iface, |maps, slot| {
            prefixes
                .iter()
                .try_for_each(|prefix| maps.ports.block(slot, *prefix))
        })
    }

    /// Drops, on the port at `slot`, packets from or to `prefix` (for a
    /// slot no interface has; `block` is the one for ports).
    pub fn block_slot(&self, slot: u32, prefix: IpNet) -> Result<()> {
        self.with_maps(|maps| maps.ports.block(slot, prefix))?
            .ok_or_else(|| self.nothing_attached())
    }

    /// Removes blocked prefixes; returns the ones that were not blocked.
    pub fn unblock(&self, iface: &str, prefixes: &[IpNet]) -> Result<Vec<IpNet>> {
        let _lock = self.pins.lock()?;
        self.with_port(iface, |maps, slot| {
            let mut missing = Vec::new();
            for prefix in prefixes {
                if !maps.ports.unblock(slot, *prefix)? {
                    missing.push(*prefix);
                }
            }
            Ok(missing)
        })
    }

    fn nothing_attached(&self) -> DatapathError {
        DatapathError::NothingAttached {
            dir: self.pins.root().to_path_buf(),
        }
    }
}

/// A prefix as users write it: `198.18.0.0/15`, `2001:db8::/32`, or a bare
/// address meaning a single host.
pub fn parse_prefix(s: &str) -> std::result::Result<IpNet, String> {
    IpNet::from_str(s)
        .or_else(|_| IpAddr::from_str(s).map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| {
            format!("'{s}' is not an address or prefix: write e.g. 198.18.0.0/15, 2001:db8::/32 or 198.18.0.2")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_with_and_without_length() {
        assert_eq!(
            parse_prefix("198.18.0.7").unwrap().to_string(),
            "198.18.0.7/32"
        );
        assert_eq!(
            parse_prefix("198.18.3.7/16").unwrap().to_string(),
            "198.18.0.0/16"
        );
        assert_eq!(
            parse_prefix("2001:db8::1/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        let err = parse_prefix("198.18.0.0/33").unwrap_err();
        assert!(err.contains("198.18.0.0/33"), "{err}");
        assert!(parse_prefix("web").is_err());
    }
}
