//! Port security of one port in the datapath: its compiled form (see
//! `sg_core::port_security`) written to `SG_PORT_SECURITY` and `SG_OWNED`,
//! and read back.

use aya::maps::{Array, LpmTrie, MapData, lpm_trie::Key};
use ipnet::IpNet;
use serde::Serialize;
use sg_common::{
    BLOCK_KEY_SLOT_BITS, BlockKey, OwnedMacs, PORTSEC_ALLOW_MULTICAST, PORTSEC_ALLOW_VLAN,
    PORTSEC_ENABLED, PortSecurityConfig, map_names,
};
use sg_core::{
    model::MacAddr,
    port_security::{CompiledPortSecurity, PortSecurity, macs_of},
};

use super::{
    error::{Context as _, DatapathError, Result},
    pins::Pins,
    ports::{block_key, prefix_of},
};

/// The pinned port security maps.
pub(super) struct PortSecurityMaps {
    config: Array<MapData, PortSecurityConfig>,
    owned: LpmTrie<MapData, BlockKey, OwnedMacs>,
}

impl PortSecurityMaps {
    pub(super) fn open(pins: &Pins) -> Result<PortSecurityMaps> {
        Ok(PortSecurityMaps {
            config: pins.open(map_names::PORT_SECURITY)?,
            owned: pins.open(map_names::OWNED)?,
        })
    }

    /// Writes the port security of the port at `slot`: everything is
    /// checked before anything is written, and a failed write leaves the
    /// previous owned addresses in place.
    pub(super) fn install(&mut self, slot: u32, security: &PortSecurity) -> Result<()> {
        let compiled = security
            .compile()
            .map_err(DatapathError::InvalidPortSecurity)?;
        self.write(slot, &compiled)
    }

    fn owned_entries(&self, slot: u32) -> Result<Vec<(Key<BlockKey>, OwnedMacs)>> {
        let mut out = Vec::new();
        for entry in self.owned.iter() {
            let (key, value) = entry.context(|| format!("reading {}", map_names::OWNED))?;
            if key.data().slot == slot {
                out.push((key, value));
            }
        }
        Ok(out)
    }

    /// Writes a slot's port security. The new owned prefixes go in first
    /// and the stale ones go last, so a port switched on never meets an
    /// empty trie; when a write fails, the slot's previous entries are put
    /// back and the error returned.
    fn write(&mut self, slot: u32, compiled: &CompiledPortSecurity) -> Result<()> {
        let old = self.owned_entries(slot)?;
        let new: Vec<(Key<BlockKey>, OwnedMacs)> = compiled
            .owned
            .iter()
            .map(|&(prefix, macs)| (block_key(slot, prefix), macs))
            .collect();
        let same_key = |a: &Key<BlockKey>, b: &Key<BlockKey>| {
            a.prefix_len() == b.prefix_len() && a.data() == b.data()
        };
        for (index, (key, macs)) in new.iter().enumerate() {
            if let Err(e) = self.owned.insert(key, macs, 0) {
                for (key, _) in &new[..index] {
                    if !old.iter().any(|(k, _)| same_key(k, key)) {
                        let _ = self.owned.remove(key);
                    }
                }
                for (key, macs) in &old {
                    let _ = self.owned.insert(key, macs, 0);
                }
                return Err(e).context(|| format!("writing {} (is it full?)", map_names::OWNED));
            }
        }
        self.config
            .set(slot, compiled.config, 0)
            .context(|| format!("writing the port security of slot {slot}"))?;
        for (key, _) in &old {
            if !new.iter().any(|(k, _)| same_key(k, key)) {
                match self.owned.remove(key) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => {
                        return Err(e).context(|| format!("removing from {}", map_names::OWNED));
                    }
                }
            }
        }
        Ok(())
    }

    /// What a slot's port security is.
    pub(super) fn read(&self, slot: u32) -> Result<PortSecurityStatus> {
        let config = self
            .config
            .get(&slot, 0)
            .context(|| format!("reading the port security of slot {slot}"))?;
        let mut owned: Vec<OwnedStatus> = self
            .owned_entries(slot)?
            .into_iter()
            .map(|(key, value)| OwnedStatus {
                prefix: prefix_of(key.data().addr, key.prefix_len() - BLOCK_KEY_SLOT_BITS),
                macs: macs_of(&value.macs),
            })
            .collect();
        owned.sort_by_key(|o| o.prefix);
        Ok(PortSecurityStatus {
            enabled: config.flags & PORTSEC_ENABLED != 0,
            allow_vlan: config.flags & PORTSEC_ALLOW_VLAN != 0,
            allow_multicast: config.flags & PORTSEC_ALLOW_MULTICAST != 0,
            macs: if config.flags & PORTSEC_ENABLED != 0 {
                macs_of(&config.macs)
            } else {
                Vec::new()
            },
            owned,
        })
    }
}

/// A port's port security as `status` shows it.
#[derive(Debug, Serialize)]
pub struct PortSecurityStatus {
    pub enabled: bool,
    pub allow_vlan: bool,
    pub allow_multicast: bool,
    /// The MACs the workload may send from and receive at, its own first.
    pub macs: Vec<MacAddr>,
    /// Owned prefixes and the MACs that may use each.
    pub owned: Vec<OwnedStatus>,
}

#[derive(Debug, Serialize)]
pub struct OwnedStatus {
    pub prefix: IpNet,
    pub macs: Vec<MacAddr>,
}
