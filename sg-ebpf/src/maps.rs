//! The maps the XDP and TC programs share with `sg-ctl`, pinned under the
//! pin directory by name (see `sg_common::map_names`), and the tracer's
//! record. The per-CPU work spaces live with the stage that uses them
//! (`SG_PACKET` in parse.rs, `SG_KEYS` in policy.rs, the cell in buf.rs);
//! port security and connection tracking keep their maps beside their code.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use sg_common::{
    BlockKey, Class, Counter, FragmentKey, L4Key, LocalKey, MAX_BLOCKED_PREFIXES,
    MAX_FRAGMENT_ENTRIES, MAX_L4_ENTRIES, MAX_LOCAL_ENTRIES, MAX_PORTS, MAX_REMOTE_ENTRIES,
    MAX_RULE_COUNTERS, MAX_VERDICT_ENTRIES, PortConfig, RemoteGroup, RemoteKey, STATS_ENTRIES,
    TraceRecord, VerdictKey, remote_groups,
};

/// A tracer's record of its last frame; not pinned, so each instance has
/// its own.
#[map(name = "SG_TRACE")]
pub static SG_TRACE: Array<TraceRecord> = Array::with_max_entries(1, 0);

#[map(name = "SG_PORTS")]
pub static SG_PORTS: Array<PortConfig> = Array::pinned(MAX_PORTS, 0);

#[map(name = "SG_STATS")]
pub static SG_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(STATS_ENTRIES, 0);

#[map(name = "SG_BLOCKED")]
pub static SG_BLOCKED: LpmTrie<BlockKey, u32> = LpmTrie::pinned(MAX_BLOCKED_PREFIXES, 0);

/// Slot → how many prefixes the port has in `SG_BLOCKED`, or more (never
/// fewer): a port with none skips the trie.
#[map(name = "SG_PORT_BLOCKS")]
pub static SG_PORT_BLOCKS: Array<u32> = Array::pinned(MAX_PORTS, 0);

/// Slot → the port's current policy (`NO_POLICY`: none).
#[map(name = "SG_PORT_POLICY")]
pub static SG_PORT_POLICY: Array<u32> = Array::pinned(MAX_PORTS, 0);

/// Slot → the lookups the port's policy cannot need, with that policy's
/// id (see `sg_common::skip`).
#[map(name = "SG_PORT_SKIPS")]
pub static SG_PORT_SKIPS: Array<u32> = Array::pinned(MAX_PORTS, 0);

/// The port's own address → its local class.
#[map(name = "SG_LOCAL")]
pub static SG_LOCAL: LpmTrie<LocalKey, u32> = LpmTrie::pinned(MAX_LOCAL_ENTRIES, 0);

/// The remote address → its class, and the best rule that needs no more.
#[map(name = "SG_REMOTE")]
pub static SG_REMOTE: LpmTrie<RemoteKey, Class> = LpmTrie::pinned(MAX_REMOTE_ENTRIES, 0);

/// Single remote addresses, looked up before `SG_REMOTE`: the same answer
/// as the trie, without its walk. A group of slots per entry, the group a
/// key's hash gives (`RemoteKey::group`): one read where a hash map takes
/// two, its bucket and its element. Mapped by `sg-ctl`, which writes it.
#[map(name = "SG_REMOTE_EXACT")]
pub static SG_REMOTE_EXACT: Array<RemoteGroup> =
    Array::pinned(remote_groups(MAX_REMOTE_ENTRIES), BPF_F_MMAPABLE);

/// Groups of `SG_REMOTE_EXACT`; set by the loader (`REMOTE_GROUPS_GLOBAL`).
#[unsafe(no_mangle)]
pub static REMOTE_GROUPS: u32 = remote_groups(MAX_REMOTE_ENTRIES);

/// Single ports and ICMP type/code pairs, looked up before `SG_L4`.
#[map(name = "SG_L4_EXACT")]
pub static SG_L4_EXACT: HashMap<L4Key, Class> = HashMap::pinned(MAX_L4_ENTRIES, BPF_F_NO_PREALLOC);

/// Protocol and port (or ICMP type and code) → class and best rule.
#[map(name = "SG_L4")]
pub static SG_L4: LpmTrie<L4Key, Class> = LpmTrie::pinned(MAX_L4_ENTRIES, 0);

/// (remote class, L4 class) → the best rule that needs both.
#[map(name = "SG_VERDICT")]
pub static SG_VERDICT: HashMap<VerdictKey, u64> =
    HashMap::pinned(MAX_VERDICT_ENTRIES, BPF_F_NO_PREALLOC);

/// A fragmented datagram → the candidate that decided its first fragment.
#[map(name = "SG_FRAGMENTS")]
pub static SG_FRAGMENTS: LruHashMap<FragmentKey, u64> = LruHashMap::pinned(MAX_FRAGMENT_ENTRIES, 0);

/// Packets and bytes each rule decided.
#[map(name = "SG_RULE_STATS")]
pub static SG_RULE_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(MAX_RULE_COUNTERS, 0);
