//! Map keys and values shared by the sg datapath (`sg-ebpf`) and its control
//! plane (`sg-ctl`).
//!
//! Every type here is `#[repr(C)]` with explicit padding and no `bool`, enum
//! or `Option` fields, so both sides agree on the bytes; a `size_of`
//! assertion per type keeps them honest. The userspace trait impls (`aya::Pod`)
//! sit behind the `user` feature so that the kernel side never sees them.
#![no_std]

use core::mem::size_of;

/// Ports one host can hold: the size of the per-port maps.
pub const MAX_PORTS: u32 = 1024;

/// Prefixes the blocklist trie can hold, all ports together.
pub const MAX_BLOCKED_PREFIXES: u32 = 65_536;

/// IPv6 extension headers walked before the packet is given up as
/// unparseable. Linux itself accepts any number; real traffic carries one
/// or two.
pub const MAX_IPV6_EXT_HEADERS: u32 = 8;

/// VLAN tags (802.1Q / 802.1ad) stripped before the IP header.
pub const MAX_VLAN_TAGS: u32 = 2;

/// Names of the maps in the eBPF object, as pinned under `<pin dir>/maps/`.
pub mod map_names {
    pub const PORTS: &str = "SG_PORTS";
    pub const STATS: &str = "SG_STATS";
    pub const BLOCKED: &str = "SG_BLOCKED";
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// XDP on the host side of a port: traffic leaving the workload.
    pub const XDP: &str = "sg_xdp";
    /// TC clsact egress on the host side of a port: traffic toward the workload.
    pub const TC: &str = "sg_tc";
}

/// The global variable, one per loaded program instance, that holds the
/// port's slot in the per-port maps.
pub const PORT_SLOT_GLOBAL: &str = "PORT_SLOT";

/// Direction of a packet as seen from the workload.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sent by the workload (XDP on the host-side interface).
    Egress = 0,
    /// Sent to the workload (TC egress on the host-side interface).
    Ingress = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Egress, Direction::Ingress];

    pub const fn name(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        }
    }
}

/// What happened to a packet: the counter it is added to. Codes are never
/// renumbered; a retired one stays reserved.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An IPv4 or IPv6 packet passed.
    Pass = 0,
    /// A frame that is neither IPv4 nor IPv6 (ARP, LLDP, …) passed.
    PassNonIp = 1,
    /// Dropped: the address is in a blocked prefix of the port.
    DropBlocked = 2,
    /// Dropped: a header is truncated or invalid.
    DropMalformed = 3,
    /// Dropped: more IPv6 extension headers than `MAX_IPV6_EXT_HEADERS`.
    DropExtHeaders = 4,
    /// Dropped: more VLAN tags than `MAX_VLAN_TAGS`.
    DropVlanTags = 5,
}

/// Counter slots reserved per port and direction: room for outcomes to come.
pub const OUTCOME_SLOTS: u32 = 32;

/// Entries of the statistics map.
pub const STATS_ENTRIES: u32 = MAX_PORTS * 2 * OUTCOME_SLOTS;

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Pass,
        Outcome::PassNonIp,
        Outcome::DropBlocked,
        Outcome::DropMalformed,
        Outcome::DropExtHeaders,
        Outcome::DropVlanTags,
    ];

    pub const fn is_drop(self) -> bool {
        !matches!(self, Outcome::Pass | Outcome::PassNonIp)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::PassNonIp => "pass-non-ip",
            Outcome::DropBlocked => "drop-blocked",
            Outcome::DropMalformed => "drop-malformed",
            Outcome::DropExtHeaders => "drop-ipv6-ext-headers",
            Outcome::DropVlanTags => "drop-vlan-tags",
        }
    }

    /// Index of the counter for this outcome of a port's slot and direction
    /// in the statistics map.
    #[inline(always)]
    pub const fn stat_index(self, slot: u32, direction: Direction) -> u32 {
        (slot * 2 + direction as u32) * OUTCOME_SLOTS + self as u32
    }
}

/// Packets and bytes; per CPU in the statistics map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// `PortConfig::flags`: the port's programs enforce; unset while the port is
/// being attached or detached, when its programs let everything through
/// uncounted.
pub const PORT_ACTIVE: u32 = 1;

/// One port (a host-side interface), at its slot in the ports map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// Interface name, NUL-padded.
    pub ifname: [u8; 16],
    /// Inode of the network namespace the interface lives in.
    pub netns: u64,
    pub ifindex: u32,
    pub flags: u32,
    /// `XdpMode` the XDP program was attached with (see sg-ctl).
    pub xdp_mode: u32,
    pub _pad: u32,
}

impl PortConfig {
    pub const EMPTY: PortConfig = PortConfig {
        ifname: [0; 16],
        netns: 0,
        ifindex: 0,
        flags: 0,
        xdp_mode: 0,
        _pad: 0,
    };

    pub const fn is_active(&self) -> bool {
        self.flags & PORT_ACTIVE != 0
    }
}

/// Data of a key of the blocklist trie: the port's slot, then an IPv6
/// address (IPv4 as `::ffff:a.b.c.d`). The trie's prefix length always
/// covers the 32 bits of the slot, so a port only matches its own prefixes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockKey {
    pub slot: u32,
    pub addr: [u8; 16],
}

/// Bits of the `BlockKey` in front of the address.
pub const BLOCK_KEY_SLOT_BITS: u32 = 32;

/// Prefix length, in the trie, of an IPv4 prefix mapped into IPv6.
pub const IPV4_MAPPED_PREFIX_BITS: u32 = 96;

/// The `::ffff:0:0/96` prefix IPv4 addresses are mapped into.
#[inline(always)]
pub const fn ipv4_mapped(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(size_of::<PortConfig>() == 40);
const _: () = assert!(size_of::<BlockKey>() == 20);
const _: () = assert!(OUTCOME_SLOTS as usize >= Outcome::ALL.len());

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: plain `#[repr(C)]` data without implicit padding.
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for PortConfig {}
    unsafe impl aya::Pod for BlockKey {}
}
