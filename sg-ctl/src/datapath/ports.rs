//! The maps of the ports themselves, shared by every port's programs:
//! `SG_PORTS` (slot → the port's record), `SG_STATS` (its counters per
//! direction and outcome), `SG_BLOCKED` (its blocked prefixes) and
//! `SG_PORT_BLOCKS` (how many it has, so that a port with none skips the
//! trie).

use std::net::IpAddr;

use aya::maps::{Array, LpmTrie, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key};
use ipnet::IpNet;
use serde::Serialize;
use sg_common::{
    BLOCK_KEY_SLOT_BITS, BlockKey, Counter, Direction, IPV4_MAPPED_PREFIX_BITS, MAX_PORTS, Outcome,
    PortConfig, ipv4_mapped, map_names,
};

use super::{
    error::{self, Context as _, DatapathError, Result},
    pins::Pins,
    sys::ifname_bytes,
};

/// A non-zero counter.
#[derive(Debug, Serialize)]
pub struct CounterRow {
    pub direction: &'static str,
    pub outcome: &'static str,
    pub drop: bool,
    pub packets: u64,
    pub bytes: u64,
}

/// The maps of the ports themselves: their records, counters and
/// blocklists.
pub struct PortMaps {
    ports: Array<MapData, PortConfig>,
    stats: PerCpuArray<MapData, Counter>,
    blocked: LpmTrie<MapData, BlockKey, u32>,
    /// Never fewer than the slot's prefixes in `blocked`: counted before an
    /// insert, after a removal.
    block_counts: Array<MapData, u32>,
}

impl PortMaps {
    pub(super) fn open(pins: &Pins) -> Result<PortMaps> {
        Ok(PortMaps {
            ports: pins.open(map_names::PORTS)?,
            stats: pins.open(map_names::STATS)?,
            blocked: pins.open(map_names::BLOCKED)?,
            block_counts: pins.open(map_names::PORT_BLOCKS)?,
        })
    }

    /// Every used slot with its port.
    pub fn ports(&self) -> Result<Vec<(u32, PortConfig)>> {
        let mut out = Vec::new();
        for slot in 0..self.ports.len() {
            let config = self
                .ports
                .get(&slot, 0)
                .context(|| format!("reading port slot {slot}"))?;
            if config != PortConfig::EMPTY {
                out.push((slot, config));
            }
        }
        Ok(out)
    }

    /// The record of a slot.
    pub(super) fn port(&self, slot: u32) -> Result<PortConfig> {
        self.ports
            .get(&slot, 0)
            .context(|| format!("reading port slot {slot}"))
    }

    pub(super) fn find(&self, netns: u64, ifname: &str) -> Result<Option<(u32, PortConfig)>> {
        let name = ifname_bytes(ifname);
        Ok(self
            .ports()?
            .into_iter()
            .find(|(_, p)| p.netns == netns && p.ifname == name))
    }

    pub(super) fn free_slot(&self) -> Result<u32> {
        let used: Vec<u32> = self.ports()?.into_iter().map(|(slot, _)| slot).collect();
        (0..MAX_PORTS)
            .find(|slot| !used.contains(slot))
            .ok_or(DatapathError::PortsFull)
    }

    pub fn set_port(&mut self, slot: u32, config: &PortConfig) -> Result<()> {
        self.ports
            .set(slot, config, 0)
            .context(|| format!("writing port slot {slot}"))
    }

    /// Counter of one outcome, summed over CPUs.
    pub fn counter(&self, slot: u32, direction: Direction, outcome: Outcome) -> Result<Counter> {
        let index = outcome.stat_index(slot, direction);
        let values = self
            .stats
            .get(&index, 0)
            .context(|| format!("reading counter {index}"))?;
        Ok(sum_cpus(&values))
    }

    /// A slot's non-zero counters.
    pub(super) fn counter_rows(&self, slot: u32) -> Result<Vec<CounterRow>> {
        let mut rows = Vec::new();
        for direction in Direction::ALL {
            for outcome in Outcome::ALL {
                let c = self.counter(slot, direction, outcome)?;
                if c.packets > 0 {
                    rows.push(CounterRow {
                        direction: direction.name(),
                        outcome: outcome.name(),
                        drop: outcome.is_drop(),
                        packets: c.packets,
                        bytes: c.bytes,
                    });
                }
            }
        }
        Ok(rows)
    }

    pub(super) fn reset_counters(&mut self, slot: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| DatapathError::Kernel {
            what: what.to_string(),
            source: Box::new(e),
        })?;
        for direction in Direction::ALL {
            for outcome in Outcome::ALL {
                let zero = PerCpuValues::try_from(vec![Counter::default(); cpus])
                    .context(|| "building zero counters".to_string())?;
                let index = outcome.stat_index(slot, direction);
                self.stats
                    .set(index, zero, 0)
                    .context(|| format!("resetting counter {index}"))?;
            }
        }
        Ok(())
    }

    /// Blocked prefixes of a slot.
    pub fn blocked(&self, slot: u32) -> Result<Vec<IpNet>> {
        let mut out = Vec::new();
        for key in self.blocked.keys() {
            let key = key.context(|| "reading the blocklist".to_string())?;
            let data = key.data();
            if data.slot == slot {
                out.push(prefix_of(data.addr, key.prefix_len() - BLOCK_KEY_SLOT_BITS));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Blocks `prefix` on the slot (already blocked: nothing changes).
    pub fn block(&mut self, slot: u32, prefix: IpNet) -> Result<()> {
        let key = block_key(slot, prefix);
        if self.blocked.get(&key, 0).is_ok() {
            return Ok(());
        }
        // Counted first, so that the programs look the prefix up from the
        // moment it is in.
        let count = self.block_count(slot)?;
        self.set_block_count(slot, count.saturating_add(1))?;
        let inserted = self
            .blocked
            .insert(&key, 1, 0)
            .context(|| format!("blocking {prefix}"));
        if inserted.is_err() {
            self.set_block_count(slot, count)?;
        }
        inserted
    }

    pub fn unblock(&mut self, slot: u32, prefix: IpNet) -> Result<bool> {
        let removed = error::removed(self.blocked.remove(&block_key(slot, prefix)))
            .context(|| format!("unblocking {prefix}"))?;
        if removed {
            let count = self.block_count(slot)?;
            self.set_block_count(slot, count.saturating_sub(1))?;
        }
        Ok(removed)
    }

    /// Removes every prefix the slot blocks; its count starts again from
    /// zero (a process killed between counting and writing leaves it
    /// higher than the prefixes).
    pub fn unblock_all(&mut self, slot: u32) -> Result<()> {
        for prefix in self.blocked(slot)? {
            self.unblock(slot, prefix)?;
        }
        self.set_block_count(slot, 0)
    }

    fn block_count(&self, slot: u32) -> Result<u32> {
        self.block_counts
            .get(&slot, 0)
            .context(|| format!("reading the blocklist count of slot {slot}"))
    }

    fn set_block_count(&mut self, slot: u32, count: u32) -> Result<()> {
        self.block_counts
            .set(slot, count, 0)
            .context(|| format!("writing the blocklist count of slot {slot}"))
    }
}

/// A counter summed over CPUs.
pub(super) fn sum_cpus(values: &PerCpuValues<Counter>) -> Counter {
    values.iter().fold(Counter::default(), |sum, c| Counter {
        packets: sum.packets + c.packets,
        bytes: sum.bytes + c.bytes,
    })
}

pub(super) fn block_key(slot: u32, prefix: IpNet) -> Key<BlockKey> {
    let prefix = prefix.trunc();
    let (addr, bits) = match prefix {
        IpNet::V4(net) => (
            ipv4_mapped(net.addr().octets()),
            IPV4_MAPPED_PREFIX_BITS + u32::from(net.prefix_len()),
        ),
        IpNet::V6(net) => (net.addr().octets(), u32::from(net.prefix_len())),
    };
    Key::new(BLOCK_KEY_SLOT_BITS + bits, BlockKey { slot, addr })
}

pub(super) fn prefix_of(addr: [u8; 16], bits: u32) -> IpNet {
    let v6 = std::net::Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) if bits >= IPV4_MAPPED_PREFIX_BITS => {
            IpNet::new(IpAddr::V4(v4), (bits - IPV4_MAPPED_PREFIX_BITS) as u8)
        }
        _ => IpNet::new(IpAddr::V6(v6), bits as u8),
    }
    .expect("prefix lengths in the trie are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_keys_round_trip() {
        for s in [
            "198.18.0.0/15",
            "0.0.0.0/0",
            "198.18.0.2/32",
            "2001:db8::/32",
            "::/0",
        ] {
            let net: IpNet = s.parse().unwrap();
            let key = block_key(7, net);
            assert_eq!(key.data().slot, 7);
            let back = prefix_of(key.data().addr, key.prefix_len() - BLOCK_KEY_SLOT_BITS);
            assert_eq!(back, net, "{s}");
        }
    }

    #[test]
    fn ipv4_prefixes_live_under_the_mapped_prefix() {
        let key = block_key(0, "198.18.0.0/15".parse().unwrap());
        assert_eq!(key.prefix_len(), 32 + 96 + 15);
        assert_eq!(
            &key.data().addr[..12],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
        );
    }
}
