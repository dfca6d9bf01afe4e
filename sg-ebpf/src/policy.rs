//! The policy stage: the port's policy applied to an IP packet in a few
//! map lookups whatever its number of rules (see the compiler in
//! `sg_ctl::compile`), the deciding rule counted, and the verdicts of
//! fragmented datagrams remembered for their later fragments. Also the
//! per-CPU slot that holds the keys of these lookups and the connection
//! tracker's work space.

#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys are passed by reference to stay in their per-CPU slot: by value, a key is a copy on the stack"
)]

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, lpm_trie::Key},
};
use sg_common::{
    Class, Direction, FragmentKey, L4Key, LocalKey, Outcome, RemoteKey, SCOPE_BITS, Scope,
    VerdictKey, candidate, skip,
};

use crate::{
    conntrack,
    instance::Instance,
    maps::{
        REMOTE_GROUPS, SG_FRAGMENTS, SG_L4, SG_L4_EXACT, SG_LOCAL, SG_PORT_SKIPS, SG_REMOTE,
        SG_REMOTE_EXACT, SG_RULE_STATS, SG_VERDICT,
    },
    parse::IpPacket,
};

/// The keys of one packet's policy lookups, and the connection tracker's
/// work space (its key, a new entry, an ICMP error's quote). In this CPU's
/// slot rather than on the stack, of which a program has 512 bytes for
/// everything; one program runs at a time on a CPU, so the slot is the
/// run's. 8-aligned, with padding that puts every address on an 8-byte
/// boundary, so that keys are written in words rather than byte by byte.
#[repr(C, align(8))]
pub struct Keys {
    _pad_local: u32,
    local: TrieKey<LocalKey>,
    _pad_remote: u32,
    remote: TrieKey<RemoteKey>,
    l4_exact: L4Key,
    l4: TrieKey<L4Key>,
    pair: VerdictKey,
    fragment: FragmentKey,
    pub conntrack: conntrack::Scratch,
}

/// Copies an address in loads and stores of `W` (`u32` or `u64`) words.
/// Copied as an array, between two map values it cannot tell apart, the
/// compiler makes it a call to a byte-wise `memmove`, and copied as bytes
/// it takes 32 instructions; volatile accesses it leaves as they are.
///
/// # Safety
/// Both ends are aligned for `W`.
#[inline(always)]
pub unsafe fn copy_addr<W>(to: &mut [u8; 16], from: &[u8; 16]) {
    const { assert!(16 % size_of::<W>() == 0) };
    let to = (to as *mut [u8; 16]).cast::<W>();
    let from = (from as *const [u8; 16]).cast::<W>();
    for i in 0..16 / size_of::<W>() {
        // SAFETY: aligned, as the caller promises, and within both.
        unsafe { to.add(i).write_volatile(from.add(i).read_volatile()) };
    }
}

const _: () = {
    use core::mem::offset_of;
    let local =
        offset_of!(Keys, local) + offset_of!(TrieKey<LocalKey>, data) + offset_of!(LocalKey, addr);
    let remote = offset_of!(Keys, remote)
        + offset_of!(TrieKey<RemoteKey>, data)
        + offset_of!(RemoteKey, addr);
    assert!(local % 8 == 0 && remote % 8 == 0);
    assert!(offset_of!(IpPacket, src) % 8 == 0 && offset_of!(IpPacket, dst) % 8 == 0);
};

/// An LPM trie key laid out as `Key`, which is packed: the same bytes (the
/// keys here are 4-aligned, so nothing pads them), but written in words
/// rather than byte by byte.
#[repr(C)]
struct TrieKey<K> {
    prefix_len: u32,
    data: K,
}

impl<K> TrieKey<K> {
    #[inline(always)]
    fn as_key(&self) -> &Key<K> {
        const { assert!(size_of::<TrieKey<K>>() == size_of::<Key<K>>()) };
        // SAFETY: the same layout (asserted above), and `Key` is packed, so
        // any address is aligned for it.
        unsafe { &*(self as *const Self).cast::<Key<K>>() }
    }
}

#[map(name = "SG_KEYS")]
static SG_KEYS: PerCpuArray<Keys> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's keys; `None` only if the map lookup fails.
#[inline(always)]
pub fn keys() -> Option<&'static mut Keys> {
    let keys = SG_KEYS.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, this run's alone (see `Keys`).
    Some(unsafe { &mut *keys })
}

/// Applies the port's policy: the first rule that matches decides. A
/// fragment after the first gets the verdict of its datagram's first
/// fragment.
#[inline(always)]
pub fn classify<I: Instance>(
    keys: &mut Keys,
    slot: u32,
    policy: u32,
    direction: Direction,
    ip: &IpPacket,
    bytes: u64,
) -> Result<Outcome, Outcome> {
    if !ip.fragmented {
        return decide::<I>(lookup::<I>(keys, slot, policy, direction, ip)?, bytes);
    }
    set_fragment_key(keys, slot, direction, ip);
    let best = if ip.first_fragment {
        let best = lookup::<I>(keys, slot, policy, direction, ip)?;
        if !I::tracing() {
            remember_fragment(keys, best);
        }
        best
    } else {
        // SAFETY: a plain read of a hash map value.
        match unsafe { SG_FRAGMENTS.get(&keys.fragment) } {
            Some(&best) => best,
            None => return Err(Outcome::DropFragment),
        }
    };
    decide::<I>(best, bytes)
}

#[inline(always)]
pub fn set_fragment_key(keys: &mut Keys, slot: u32, direction: Direction, ip: &IpPacket) {
    keys.fragment = FragmentKey {
        slot,
        id: ip.fragment_id,
        src: ip.src,
        dst: ip.dst,
        protocol: ip.protocol,
        direction: direction as u8,
        _pad: [0; 2],
    };
}

/// Lets `best` decide the later fragments of the datagram in
/// `keys.fragment`.
#[inline(always)]
pub fn remember_fragment(keys: &Keys, best: u64) {
    // Full: the later fragments of this datagram are dropped.
    let _ = SG_FRAGMENTS.insert(&keys.fragment, best, 0);
}

/// Lets the later fragments of `ip`'s datagram pass, as its first fragment
/// did by no rule (on a flow, or as DHCP): they carry no ports to tell.
#[inline(always)]
pub fn pass_later_fragments(keys: &mut Keys, slot: u32, direction: Direction, ip: &IpPacket) {
    if ip.fragmented {
        set_fragment_key(keys, slot, direction, ip);
        remember_fragment(keys, candidate::new(0, 0, candidate::ALLOW));
    }
}

/// Whether the port at `slot`, deciding by `policy`, may skip `lookup`
/// (see `sg_common::skip`). Read again at each use, rather than kept: a
/// register known to hold a bit on one path and not on the other would
/// have the verifier go through what follows twice.
#[inline(always)]
fn skips(slot: u32, policy: u32, lookup: u32) -> bool {
    SG_PORT_SKIPS
        .get(slot)
        .is_some_and(|&word| skip::skips(word, policy, lookup))
}

/// The best candidate of the port's policy for the packet. A few lookups
/// whatever the number of rules: the local address's class, then the
/// protocol/port's and the remote address's (each an exact hash, then a
/// trie on a miss), then the pair's when neither class carries it. The
/// lookups the policy cannot need are skipped, and so is the remote
/// address when the protocol/port's class decides alone (`Class::ALONE`).
#[inline(always)]
fn lookup<I: Instance>(
    keys: &mut Keys,
    slot: u32,
    policy: u32,
    direction: Direction,
    ip: &IpPacket,
) -> Result<u64, Outcome> {
    let (local, remote) = match direction {
        Direction::Egress => (&ip.src, &ip.dst),
        Direction::Ingress => (&ip.dst, &ip.src),
    };
    let local_class = if skips(slot, policy, skip::LOCAL) {
        0
    } else {
        keys.local.prefix_len = SCOPE_BITS + 128;
        keys.local.data.policy = policy;
        keys.local.data.family = ip.family as u32;
        // SAFETY: both 8-aligned: the addresses lead `IpPacket`, and `Keys`
        // pads its keys so that theirs are (asserted above).
        unsafe { copy_addr::<u64>(&mut keys.local.data.addr, local) };
        SG_LOCAL.get(keys.local.as_key()).copied().unwrap_or(0)
    };
    let scope = Scope {
        policy,
        local_class: local_class as u16,
        direction: direction as u8,
        family: ip.family,
    };
    keys.l4_exact = L4Key {
        scope,
        protocol: ip.protocol,
        _pad: 0,
        value: ip.l4,
    };
    keys.l4 = TrieKey {
        prefix_len: SCOPE_BITS + 32,
        data: keys.l4_exact,
    };
    let exact = if skips(slot, policy, skip::L4_EXACT) {
        None
    } else {
        // SAFETY: a plain read of a hash map value.
        unsafe { SG_L4_EXACT.get(&keys.l4_exact) }
    };
    // Every scope has root entries in both tries; a miss is a policy being
    // removed under this packet.
    let Some(l4) = exact.or_else(|| SG_L4.get(keys.l4.as_key())) else {
        return Err(Outcome::DropDefault);
    };
    // The tracer looks the remote address up even so, to show its class.
    if l4.pair == Class::ALONE && !I::tracing() {
        return Ok(l4.best);
    }
    keys.remote.prefix_len = SCOPE_BITS + 128;
    keys.remote.data.scope = scope;
    // SAFETY: as above.
    unsafe { copy_addr::<u64>(&mut keys.remote.data.addr, remote) };
    let exact = if skips(slot, policy, skip::REMOTE_EXACT) {
        None
    } else {
        remote_exact(&scope, remote)
    };
    let Some(remote) = exact.or_else(|| SG_REMOTE.get(keys.remote.as_key())) else {
        return Err(Outcome::DropDefault);
    };
    let best = if remote.best < l4.best {
        remote.best
    } else {
        l4.best
    };
    // The pair's best: carried by a class in one pair or none, else in
    // `SG_VERDICT` (see `Class::pair`).
    let both = if remote.pair != Class::PAIRS {
        (remote.pair == l4.class).then_some(remote.pair_best)
    } else if l4.pair != Class::PAIRS {
        (l4.pair == remote.class).then_some(l4.pair_best)
    } else {
        keys.pair = VerdictKey {
            scope,
            remote_class: remote.class,
            l4_class: l4.class,
        };
        // SAFETY: a plain read of a hash map value.
        unsafe { SG_VERDICT.get(&keys.pair) }.copied()
    };
    if let Some(record) = I::trace() {
        // SAFETY: the tracer's own record, field by field (a whole record
        // would take stack the port's programs cannot spare).
        unsafe {
            (*record).local_class = local_class;
            (*record).remote_class = remote.class;
            (*record).l4_class = l4.class;
            (*record).remote_best = remote.best;
            (*record).l4_best = l4.best;
            (*record).pair_best = both.unwrap_or(candidate::NONE);
        }
    }
    match both {
        Some(both) if both < best => Ok(both),
        _ => Ok(best),
    }
}

/// The class of a single remote address in `SG_REMOTE_EXACT`: a slot of
/// the key's group whose key is the same, in three words. `sg-ctl` writes
/// a slot's policy id after the rest, and a policy id is looked up only
/// once its slots are written; so a slot being written or freed never
/// matches.
#[inline(always)]
fn remote_exact(scope: &Scope, addr: &[u8; 16]) -> Option<&'static Class> {
    // SAFETY: 8-aligned, as `lookup` says of the addresses of `IpPacket`.
    let addr = unsafe { &*(addr as *const [u8; 16]).cast::<[u64; 2]>() };
    let words = [RemoteKey::scope_word(scope), addr[0], addr[1]];
    // SAFETY: a plain read of a global the loader may have rewritten.
    let groups = unsafe { core::ptr::read_volatile(&REMOTE_GROUPS) };
    let group = SG_REMOTE_EXACT.get(RemoteKey::group(&words, groups))?;
    group.slots.iter().find_map(|slot| {
        // SAFETY: a slot is 8-aligned (its group is, and it is 48 bytes)
        // and its key is three words at its start.
        let key = unsafe { &*(&raw const slot.key).cast::<[u64; 3]>() };
        (*key == words).then_some(&slot.class)
    })
}

const _: () = {
    assert!(size_of::<sg_common::RemoteSlot>() == 48 && size_of::<RemoteKey>() == 24);
    assert!(core::mem::offset_of!(sg_common::RemoteSlot, key) == 0);
};

/// Counts the packet on the deciding rule and says what its action means.
#[inline(always)]
fn decide<I: Instance>(best: u64, bytes: u64) -> Result<Outcome, Outcome> {
    if let Some(record) = I::trace() {
        // SAFETY: the tracer's own record.
        unsafe { (*record).best = best };
    }
    if best == candidate::NONE {
        return Err(Outcome::DropDefault);
    }
    let counter = candidate::counter(best);
    if counter != 0 {
        I::add(SG_RULE_STATS.get_ptr_mut(counter), bytes);
    }
    match (candidate::action(best), counter) {
        (candidate::ALLOW, _) => Ok(Outcome::Pass),
        (_, 0) => Err(Outcome::DropDefault),
        (candidate::REJECT, _) => Err(Outcome::Reject),
        _ => Err(Outcome::DropRule),
    }
}
