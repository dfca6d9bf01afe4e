//! Every map family, opened from the pins together, and kept in line with
//! them: another sg-ctl may have removed the maps and attached afresh.

use aya::maps::MapInfo;
use sg_common::map_names;

use super::{
    conntrack::ConntrackMaps,
    error::{Context as _, Result},
    pins::Pins,
    policy::PolicyMaps,
    port_security::PortSecurityMaps,
    ports::PortMaps,
};

pub(super) struct MapSet {
    /// The kernel's id of the `SG_PORTS` opened: the pins hold these maps
    /// while their `SG_PORTS` has it.
    id: u32,
    pub(super) ports: PortMaps,
    pub(super) policy: PolicyMaps,
    pub(super) security: PortSecurityMaps,
    pub(super) conntrack: ConntrackMaps,
}

impl MapSet {
    /// Opens the maps again when the pins hold others than `maps`; `None`
    /// when nothing is attached (no maps are pinned).
    pub(super) fn refresh(pins: &Pins, maps: &mut Option<Box<MapSet>>) -> Result<()> {
        let path = pins.map(map_names::PORTS);
        let pinned = match MapInfo::from_pin(&path) {
            Ok(info) => Some(info.id()),
            Err(_) if !path.exists() => None,
            Err(e) => return Err(e).context(|| format!("reading {}", path.display())),
        };
        match pinned {
            None => *maps = None,
            Some(id) if maps.as_ref().is_none_or(|m| m.id != id) => {
                *maps = Some(Box::new(MapSet {
                    id,
                    ports: PortMaps::open(pins)?,
                    policy: PolicyMaps::open(pins)?,
                    security: PortSecurityMaps::open(pins)?,
                    conntrack: ConntrackMaps::open(pins)?,
                }));
            }
            Some(_) => {}
        }
        Ok(())
    }
}
