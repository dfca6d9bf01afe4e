//! The policy maps: installing a port's compiled policy beside the one in
//! force and switching to it with one write; the policy it replaced is
//! retired, its entries removed once no program run can still hold it.

use std::{
    collections::HashSet,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use aya::{
    Pod,
    maps::{
        Array, HashMap, IterableMap, LpmTrie, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key,
    },
};
use sg_common::{
    Class, Counter, DhcpServerKey, FragmentKey, L4Key, LocalKey, NO_POLICY, REMOTE_SLOTS,
    RemoteGroup, RemoteKey, RemoteSlot, SCOPE_BITS, VerdictKey, map_names, skip,
};

use super::{
    error::{Context as _, DatapathError, Result},
    pins::Pins,
    ports::sum_cpus,
    shared::Shared,
    sys,
};
use sg_core::compile::{Compiled, TrieEntry};

/// How long retired entries stay where the kernel cannot say when the
/// program runs under way have ended (see `sys::wait_for_program_runs`):
/// far longer than any run that may still hold a retired policy id.
const GRACE: Duration = Duration::from_millis(20);

/// The pinned policy maps.
pub(super) struct PolicyMaps {
    port_policy: Array<MapData, u32>,
    port_skips: Array<MapData, u32>,
    local: LpmTrie<MapData, LocalKey, u32>,
    remote: LpmTrie<MapData, RemoteKey, Class>,
    remote_exact: Shared<RemoteGroup>,
    l4: LpmTrie<MapData, L4Key, Class>,
    l4_exact: HashMap<MapData, L4Key, Class>,
    verdict: HashMap<MapData, VerdictKey, u64>,
    dhcp_servers: LpmTrie<MapData, DhcpServerKey, u32>,
    fragments: HashMap<MapData, FragmentKey, u64>,
    rule_stats: PerCpuArray<MapData, Counter>,
    /// Ids switched away from whose entries are still in the maps.
    retired: Vec<u32>,
}

impl PolicyMaps {
    pub(super) fn open(pins: &Pins) -> Result<PolicyMaps> {
        Ok(PolicyMaps {
            port_policy: pins.open(map_names::PORT_POLICY)?,
            port_skips: pins.open(map_names::PORT_SKIPS)?,
            local: pins.open(map_names::LOCAL)?,
            remote: pins.open(map_names::REMOTE)?,
            remote_exact: Shared::open(pins, map_names::REMOTE_EXACT)?,
            l4: pins.open(map_names::L4)?,
            l4_exact: pins.open(map_names::L4_EXACT)?,
            verdict: pins.open(map_names::VERDICT)?,
            dhcp_servers: pins.open(map_names::DHCP_SERVERS)?,
            fragments: pins.open(map_names::FRAGMENTS)?,
            rule_stats: pins.open(map_names::RULE_STATS)?,
            retired: Vec::new(),
        })
    }

    /// The policy id in force on a slot.
    pub(super) fn policy_of(&self, slot: u32) -> Result<u32> {
        self.port_policy
            .get(&slot, 0)
            .context(|| format!("reading the policy of slot {slot}"))
    }

    /// An id no port uses and none retired has.
    pub(super) fn next_policy_id(&self) -> Result<u32> {
        let mut max = self.retired.iter().copied().max().unwrap_or(NO_POLICY);
        for slot in 0..self.port_policy.len() {
            max = max.max(self.policy_of(slot)?);
        }
        Ok(max.wrapping_add(1).max(NO_POLICY + 1))
    }

    /// Writes `compiled` (built for `id`) and switches the slot to it: the
    /// port enforces it from then on, as soon as its entries are in. The
    /// slot's previous policy is retired. Retired entries stay beside the
    /// new ones, so that installs on many ports wait for one grace period
    /// between them all, not one each; when the maps cannot take the new
    /// policy beside them, what was written is removed, the retired
    /// entries go, and the write is tried again. So an install fits when
    /// the policies in force and the one being written do. When the write
    /// fails, what was written is removed and the previous policy stays in
    /// force. The lookups the policy cannot need (`Compiled::skips`) are
    /// written for the slot before it is switched.
    pub(super) fn install(&mut self, slot: u32, id: u32, compiled: &Compiled) -> Result<()> {
        let mut written = self.write_or_remove(id, compiled);
        if written.is_err() && !self.retired.is_empty() {
            self.remove_retired()?;
            written = self.write_or_remove(id, compiled);
        }
        written?;
        self.port_skips
            .set(slot, skip::word(id, compiled.skips()), 0)
            .context(|| format!("writing the lookups slot {slot} may skip"))?;
        let old = self.policy_of(slot)?;
        self.port_policy
            .set(slot, id, 0)
            .context(|| format!("switching slot {slot} to policy {id}"))?;
        if old != NO_POLICY && old != id {
            self.retired.push(old);
        }
        Ok(())
    }

    /// Takes the slot's policy away (see `Datapath::clear_policy` for what
    /// the port does after) and removes its entries. The fragmented
    /// datagrams it decided are forgotten.
    pub(super) fn clear(&mut self, slot: u32) -> Result<()> {
        let old = self.policy_of(slot)?;
        self.port_policy
            .set(slot, NO_POLICY, 0)
            .context(|| format!("clearing the policy of slot {slot}"))?;
        if old != NO_POLICY {
            self.retired.push(old);
        }
        self.remove_retired()?;
        remove(&self.fragments, map_names::FRAGMENTS, |k: &FragmentKey| {
            k.slot == slot
        })
    }

    /// Removes the entries of the retired policies, once the program runs
    /// that may hold one have ended.
    pub(super) fn remove_retired(&mut self) -> Result<()> {
        if self.retired.is_empty() {
            return Ok(());
        }
        sys::wait_for_program_runs(GRACE);
        let retired = std::mem::take(&mut self.retired);
        if let Err(e) = self.remove_entries(|policy| retired.contains(&policy)) {
            self.retired = retired;
            return Err(e);
        }
        Ok(())
    }

    /// Removes the entries of every policy id no slot has: those of a
    /// process killed between switching a slot and removing what it
    /// replaced, which a later install could otherwise find under the id
    /// it was given. Only while no other process writes a policy.
    pub(super) fn remove_orphans(&mut self) -> Result<()> {
        let in_force = (0..self.port_policy.len())
            .map(|slot| self.policy_of(slot))
            .collect::<Result<HashSet<u32>>>()?;
        sys::wait_for_program_runs(GRACE);
        self.remove_entries(|policy| !in_force.contains(&policy))?;
        self.retired.clear();
        Ok(())
    }

    /// Writes the entries of `compiled` (built for `id`); when a write
    /// fails, removes what was written.
    fn write_or_remove(&mut self, id: u32, compiled: &Compiled) -> Result<()> {
        let written = self.write(compiled);
        if written.is_err() {
            self.remove_entries(|policy| policy == id)?;
        }
        written
    }

    /// Writes the entries of `compiled`, each map's in one call. The
    /// single remote addresses whose groups are full go to the trie.
    fn write(&mut self, compiled: &Compiled) -> Result<()> {
        let full = self.remote_exact.place(&compiled.remote_exact);
        write(&self.local, map_names::LOCAL, trie(&compiled.local))?;
        write(
            &self.remote,
            map_names::REMOTE,
            trie(&compiled.remote).chain(full),
        )?;
        write(&self.l4, map_names::L4, trie(&compiled.l4))?;
        write(
            &self.dhcp_servers,
            map_names::DHCP_SERVERS,
            trie(&compiled.dhcp_servers),
        )?;
        write(
            &self.l4_exact,
            map_names::L4_EXACT,
            compiled.l4_exact.iter().copied(),
        )?;
        write(
            &self.verdict,
            map_names::VERDICT,
            compiled.verdict.iter().copied(),
        )
    }

    /// Removes every entry of the policy ids that `gone` takes.
    fn remove_entries(&mut self, gone: impl Fn(u32) -> bool) -> Result<()> {
        remove(&self.local, map_names::LOCAL, |k: &Key<LocalKey>| {
            gone(k.data().policy)
        })?;
        remove(&self.remote, map_names::REMOTE, |k: &Key<RemoteKey>| {
            gone(k.data().scope.policy)
        })?;
        remove(&self.l4, map_names::L4, |k: &Key<L4Key>| {
            gone(k.data().scope.policy)
        })?;
        remove(
            &self.dhcp_servers,
            map_names::DHCP_SERVERS,
            |k: &Key<DhcpServerKey>| gone(k.data().policy),
        )?;
        self.remote_exact.free(&gone);
        remove(&self.l4_exact, map_names::L4_EXACT, |k: &L4Key| {
            gone(k.scope.policy)
        })?;
        remove(&self.verdict, map_names::VERDICT, |k: &VerdictKey| {
            gone(k.scope.policy)
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

impl Drop for PolicyMaps {
    /// What is retired goes with the handle: the next handle does not know
    /// of it. A failure here leaves the entries of an id no slot uses.
    fn drop(&mut self) {
        let _ = self.remove_retired();
    }
}

impl Shared<RemoteGroup> {
    /// A slot of the table.
    fn slot(&self, group: u32, slot: usize) -> *mut RemoteSlot {
        let group = self.entry(group).expect("a group of the table");
        // SAFETY: a slot of the group, within the mapping.
        unsafe { &raw mut (*group).slots[slot] }
    }

    /// A slot's policy id, the word that makes it used (see `RemoteSlot`).
    fn policy(&self, slot: *mut RemoteSlot) -> &AtomicU32 {
        // SAFETY: an aligned u32 of the mapping (a slot of `slot`), written
        // only atomically.
        unsafe { AtomicU32::from_ptr(&raw mut (*slot).key.scope.policy) }
    }

    /// Puts each of `entries` in a free slot of its group, its policy id
    /// last: a lookup takes a slot as that key's only once the id is in,
    /// and none looks the id up before the port is switched to it. Those
    /// whose groups are full come back as full-length prefixes for the
    /// trie, which answers the same for them.
    fn place(
        &self,
        entries: &[(RemoteKey, Class)],
    ) -> impl Iterator<Item = (Key<RemoteKey>, Class)> + use<> {
        let groups = self.len() as u32;
        let mut full = Vec::new();
        for &(key, class) in entries {
            let group = RemoteKey::group(&key.words(), groups);
            let free = (0..REMOTE_SLOTS)
                .map(|slot| self.slot(group, slot))
                .find(|&slot| self.policy(slot).load(Ordering::Relaxed) == NO_POLICY);
            let Some(slot) = free else {
                full.push((Key::new(SCOPE_BITS + 128, key), class));
                continue;
            };
            // SAFETY: a free slot of the mapping, which no lookup takes
            // for any key while its id is `NO_POLICY`.
            unsafe {
                (&raw mut (*slot).class).write(class);
                (&raw mut (*slot).key.addr).write(key.addr);
                (&raw mut (*slot).key.scope.local_class).write(key.scope.local_class);
                (&raw mut (*slot).key.scope.direction).write(key.scope.direction);
                (&raw mut (*slot).key.scope.family).write(key.scope.family);
            }
            self.policy(slot).store(key.scope.policy, Ordering::Release);
        }
        full.into_iter()
    }

    /// Frees the slots of the policy ids that `gone` takes.
    fn free(&self, gone: impl Fn(u32) -> bool) {
        for group in 0..self.len() as u32 {
            for slot in 0..REMOTE_SLOTS {
                let policy = self.policy(self.slot(group, slot));
                let id = policy.load(Ordering::Relaxed);
                if id != NO_POLICY && gone(id) {
                    policy.store(NO_POLICY, Ordering::Release);
                }
            }
        }
    }
}

/// A trie's entries as the map takes them.
fn trie<K: Pod, V: Pod>(entries: &[TrieEntry<K, V>]) -> impl Iterator<Item = (Key<K>, V)> + '_ {
    entries
        .iter()
        .map(|&(bits, key, value)| (Key::new(bits, key), value))
}

/// Writes `entries` into one of the policy maps, in one call.
fn write<K: Pod, V: Pod>(
    map: &impl IterableMap<K, V>,
    name: &str,
    entries: impl Iterator<Item = (K, V)>,
) -> Result<()> {
    sys::update_batch(map.map(), entries).map_err(|(written, source)| DatapathError::Kernel {
        what: format!("writing {name} (is it full?) after {written} entries"),
        source: source.into(),
    })
}

/// Removes the entries of one of the policy maps that `belongs` takes,
/// listing and deleting them a batch at a time.
fn remove<K: Pod, V: Pod>(
    map: &impl IterableMap<K, V>,
    name: &str,
    belongs: impl Fn(&K) -> bool,
) -> Result<()> {
    let mut keys = sys::keys_batch::<K, V>(map.map()).context(|| format!("listing {name}"))?;
    keys.retain(|k| belongs(k));
    let mut at = 0;
    while at < keys.len() {
        match sys::delete_batch(map.map(), &keys[at..]) {
            Ok(()) => break,
            // Gone meanwhile (the datapath forgets fragments itself): the
            // rest still go.
            Err((deleted, e)) if e.raw_os_error() == Some(libc::ENOENT) => at += deleted + 1,
            Err((deleted, source)) => {
                return Err(DatapathError::Kernel {
                    what: format!("removing from {name} after {} entries", at + deleted),
                    source: source.into(),
                });
            }
        }
    }
    Ok(())
}
