//! The policy maps: installing a port's compiled policy beside the one in
//! force and switching to it with one write.

use std::{thread, time::Duration};

use aya::maps::{
    Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key,
};
use sg_common::{
    Class, Counter, DhcpServerKey, FragmentKey, L4Key, LocalKey, NO_POLICY, RemoteKey, VerdictKey,
    map_names,
};

use super::{
    error::{Context as _, Result},
    pins::Pins,
    ports::sum_cpus,
};
use sg_core::compile::Compiled;

/// How long old policy entries stay after the switch: longer than any
/// program run that may still hold the old policy id.
const GRACE: Duration = Duration::from_millis(20);

/// The pinned policy maps.
pub(super) struct PolicyMaps {
    port_policy: Array<MapData, u32>,
    local: LpmTrie<MapData, LocalKey, u32>,
    remote: LpmTrie<MapData, RemoteKey, Class>,
    remote_exact: HashMap<MapData, RemoteKey, Class>,
    l4: LpmTrie<MapData, L4Key, Class>,
    l4_exact: HashMap<MapData, L4Key, Class>,
    verdict: HashMap<MapData, VerdictKey, u64>,
    dhcp_servers: LpmTrie<MapData, DhcpServerKey, u32>,
    fragments: HashMap<MapData, FragmentKey, u64>,
    rule_stats: PerCpuArray<MapData, Counter>,
}

impl PolicyMaps {
    pub(super) fn open(pins: &Pins) -> Result<PolicyMaps> {
        Ok(PolicyMaps {
            port_policy: pins.open(map_names::PORT_POLICY)?,
            local: pins.open(map_names::LOCAL)?,
            remote: pins.open(map_names::REMOTE)?,
            remote_exact: pins.open(map_names::REMOTE_EXACT)?,
            l4: pins.open(map_names::L4)?,
            l4_exact: pins.open(map_names::L4_EXACT)?,
            verdict: pins.open(map_names::VERDICT)?,
            dhcp_servers: pins.open(map_names::DHCP_SERVERS)?,
            fragments: pins.open(map_names::FRAGMENTS)?,
            rule_stats: pins.open(map_names::RULE_STATS)?,
        })
    }

    /// The policy id in force on a slot.
    pub(super) fn policy_of(&self, slot: u32) -> Result<u32> {
        self.port_policy
            .get(&slot, 0)
            .context(|| format!("reading the policy of slot {slot}"))
    }

    /// An id no port uses.
    pub(super) fn next_policy_id(&self) -> Result<u32> {
        let mut max = NO_POLICY;
        for slot in 0..self.port_policy.len() {
            max = max.max(self.policy_of(slot)?);
        }
        Ok(max.wrapping_add(1).max(NO_POLICY + 1))
    }

    /// Writes `compiled` (built for `id`), switches the slot to it, then
    /// removes the slot's previous policy. When a write fails, what was
    /// written is removed and the previous policy stays in force.
    pub(super) fn install(&mut self, slot: u32, id: u32, compiled: &Compiled) -> Result<()> {
        if let Err(e) = self.write(compiled) {
            self.remove_entries(id)?;
            return Err(e);
        }
        let old = self.policy_of(slot)?;
        self.port_policy
            .set(slot, id, 0)
            .context(|| format!("switching slot {slot} to policy {id}"))?;
        if old != NO_POLICY && old != id {
            thread::sleep(GRACE);
            self.remove_entries(old)?;
        }
        Ok(())
    }

    /// Takes the slot's policy away (see `Datapath::clear_policy` for what
    /// the port does after). The fragmented datagrams it decided are
    /// forgotten.
    pub(super) fn clear(&mut self, slot: u32) -> Result<()> {
        let old = self.policy_of(slot)?;
        self.port_policy
            .set(slot, NO_POLICY, 0)
            .context(|| format!("clearing the policy of slot {slot}"))?;
        if old != NO_POLICY {
            thread::sleep(GRACE);
            self.remove_entries(old)?;
        }
        remove_hash(&mut self.fragments, map_names::FRAGMENTS, |k| {
            k.slot == slot
        })
    }

    fn write(&mut self, compiled: &Compiled) -> Result<()> {
        let full = |map: &'static str| move || format!("writing {map} (is it full?)");
        for &(bits, key, value) in &compiled.local {
            self.local
                .insert(&Key::new(bits, key), value, 0)
                .context(full(map_names::LOCAL))?;
        }
        for &(bits, key, value) in &compiled.remote {
            self.remote
                .insert(&Key::new(bits, key), value, 0)
                .context(full(map_names::REMOTE))?;
        }
        for &(bits, key, value) in &compiled.l4 {
            self.l4
                .insert(&Key::new(bits, key), value, 0)
                .context(full(map_names::L4))?;
        }
        for (key, value) in &compiled.remote_exact {
            self.remote_exact
                .insert(key, value, 0)
                .context(full(map_names::REMOTE_EXACT))?;
        }
        for (key, value) in &compiled.l4_exact {
            self.l4_exact
                .insert(key, value, 0)
                .context(full(map_names::L4_EXACT))?;
        }
        for (key, value) in &compiled.verdict {
            self.verdict
                .insert(key, value, 0)
                .context(full(map_names::VERDICT))?;
        }
        for &(bits, key, value) in &compiled.dhcp_servers {
            self.dhcp_servers
                .insert(&Key::new(bits, key), value, 0)
                .context(full(map_names::DHCP_SERVERS))?;
        }
        Ok(())
    }

    /// Removes every entry of a policy id.
    fn remove_entries(&mut self, id: u32) -> Result<()> {
        remove_trie(&mut self.local, |k| k.policy == id)?;
        remove_trie(&mut self.remote, |k| k.scope.policy == id)?;
        remove_trie(&mut self.l4, |k| k.scope.policy == id)?;
        remove_trie(&mut self.dhcp_servers, |k| k.policy == id)?;
        remove_hash(&mut self.remote_exact, map_names::REMOTE_EXACT, |k| {
            k.scope.policy == id
        })?;
        remove_hash(&mut self.l4_exact, map_names::L4_EXACT, |k| {
            k.scope.policy == id
        })?;
        remove_hash(&mut self.verdict, map_names::VERDICT, |k| {
            k.scope.policy == id
        })
    }

    /// Moves rule counters: each `(to, from)` gives counter `to` what
    /// counter `from` holds on every CPU, or zeros for `None`. All sources
    /// are read before anything is written.
    pub(super) fn move_counters(&mut self, moves: &[(u32, Option<u32>)]) -> Result<()> {
        let sources = moves
            .iter()
            .map(|&(_, from)| {
                from.map(|from| {
                    self.rule_stats
                        .get(&from, 0)
                        .context(|| format!("reading rule counter {from}"))
                })
                .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context(|| "counting the CPUs".to_string())?;
        for (&(to, _), values) in moves.iter().zip(sources) {
            let values = match values {
                Some(values) => values,
                None => PerCpuValues::try_from(vec![Counter::default(); cpus])
                    .context(|| "zeros for every CPU".to_string())?,
            };
            self.rule_stats
                .set(to, values, 0)
                .context(|| format!("writing rule counter {to}"))?;
        }
        Ok(())
    }

    /// Packets and bytes a rule decided, summed over CPUs.
    pub(super) fn rule_counter(&self, counter: u32) -> Result<Counter> {
        let values = self
            .rule_stats
            .get(&counter, 0)
            .context(|| format!("reading rule counter {counter}"))?;
        Ok(sum_cpus(&values))
    }
}

fn remove_trie<K: aya::Pod, V: aya::Pod>(
    trie: &mut LpmTrie<MapData, K, V>,
    belongs: impl Fn(&K) -> bool,
) -> Result<()> {
    let keys: Vec<Key<K>> = trie
        .keys()
        .filter_map(std::result::Result::ok)
        .filter(|k| belongs(&k.data()))
        .collect();
    for key in keys {
        ignore_missing(trie.remove(&key)).context(|| "removing a policy entry".to_string())?;
    }
    Ok(())
}

fn remove_hash<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &str,
    belongs: impl Fn(&K) -> bool,
) -> Result<()> {
    let keys: Vec<K> = map
        .keys()
        .filter_map(std::result::Result::ok)
        .filter(|k| belongs(k))
        .collect();
    for key in keys {
        ignore_missing(map.remove(&key)).context(|| format!("removing from {name}"))?;
    }
    Ok(())
}

fn ignore_missing(result: std::result::Result<(), MapError>) -> std::result::Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}
