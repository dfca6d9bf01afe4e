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
    pub const PORT_BLOCKS: &str = "SG_PORT_BLOCKS";
    pub const PORT_POLICY: &str = "SG_PORT_POLICY";
    pub const PORT_SKIPS: &str = "SG_PORT_SKIPS";
    pub const LOCAL: &str = "SG_LOCAL";
    pub const REMOTE: &str = "SG_REMOTE";
    pub const L4: &str = "SG_L4";
    pub const VERDICT: &str = "SG_VERDICT";
    pub const RULE_STATS: &str = "SG_RULE_STATS";
    pub const FRAGMENTS: &str = "SG_FRAGMENTS";
    pub const REMOTE_EXACT: &str = "SG_REMOTE_EXACT";
    pub const L4_EXACT: &str = "SG_L4_EXACT";
    /// A tracer's own record, not pinned.
    pub const TRACE: &str = "SG_TRACE";
    pub const PORT_SECURITY: &str = "SG_PORT_SECURITY";
    pub const OWNED: &str = "SG_OWNED";
    pub const DHCP_SERVERS: &str = "SG_DHCP_SERVERS";
    pub const CONNTRACK: &str = "SG_CONNTRACK";
    pub const CONNTRACK_TIMEOUTS: &str = "SG_CONNTRACK_TIMEOUTS";
    pub const CONNTRACK_EVENTS: &str = "SG_CONNTRACK_EVENTS";
    pub const PORT_FLOWS: &str = "SG_PORT_FLOWS";
    pub const CONNTRACK_RING: &str = "SG_CONNTRACK_RING";
    pub const CONNTRACK_CLOCK: &str = "SG_CONNTRACK_CLOCK";
    pub const CONNTRACK_PRESENCE: &str = "SG_CONNTRACK_PRESENCE";
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// XDP on the host side of a port: traffic leaving the workload.
    pub const XDP: &str = "sg_xdp";
    /// TC clsact egress on the host side of a port: traffic toward the workload.
    pub const TC: &str = "sg_tc";
    /// TC clsact ingress on the host side of a veth port: sends the XDP
    /// program's replies to the workload (see `PORT_REPLY_VIA_TC`).
    pub const TC_REPLY: &str = "sg_tc_reply";
}

/// The global variable, one per loaded program instance, that holds the
/// port's slot in the per-port maps.
pub const PORT_SLOT_GLOBAL: &str = "PORT_SLOT";

/// The global variable that makes an instance a tracer (`sg-ctl trace`):
/// it counts nothing, remembers no fragment, leaves the connection table
/// alone (the policy decides as on a flow's first packet), and writes
/// what it decided to its own `SG_TRACE` map. Zero in the instances attached to ports, where
/// the verifier removes the tracing code as dead.
pub const TRACE_GLOBAL: &str = "TRACE";

/// The global variable that holds the entries of `SG_CONNTRACK_RING` (the
/// size the table was made with), set by the loader from the pinned ring
/// or the size it makes it with.
pub const CONNTRACK_RING_GLOBAL: &str = "CONNTRACK_RING";

/// The global variable that holds the counters of `SG_CONNTRACK_PRESENCE`,
/// set by the loader from the pinned map or the size it makes it with
/// (`presence_counters`).
pub const CONNTRACK_PRESENCE_GLOBAL: &str = "CONNTRACK_PRESENCE";

/// The global variable that holds the groups of `SG_REMOTE_EXACT`, set by
/// the loader from the pinned map or the size it makes it with
/// (`remote_groups`).
pub const REMOTE_GROUPS_GLOBAL: &str = "REMOTE_GROUPS";

/// What a tracer decided on a frame, in `SG_TRACE[0]`. The candidates are
/// `candidate::NONE` where the program did not look (or found nothing).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    /// `Outcome` code; `u32::MAX` until the program counts.
    pub outcome: u32,
    pub local_class: u32,
    pub remote_class: u32,
    pub l4_class: u32,
    /// The best rule that needs only the remote address.
    pub remote_best: u64,
    /// The best rule that needs only the protocol and port.
    pub l4_best: u64,
    /// The best rule that needs both.
    pub pair_best: u64,
    /// The deciding candidate.
    pub best: u64,
}

impl TraceRecord {
    pub const UNSET: TraceRecord = TraceRecord {
        outcome: u32::MAX,
        local_class: 0,
        remote_class: 0,
        l4_class: 0,
        remote_best: candidate::NONE,
        l4_best: candidate::NONE,
        pair_best: candidate::NONE,
        best: candidate::NONE,
    };
}

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
    /// Dropped by a rule whose action is drop.
    DropRule = 6,
    /// Dropped: no rule of the port's policy allows it.
    DropDefault = 7,
    /// Rejected by a rule whose action is reject: the sender got a TCP RST
    /// or an ICMP "administratively prohibited" instead. (A packet that
    /// may not get a reply, an ICMP error for one, is `DropRule`.)
    Reject = 8,
    /// IPv6 neighbour discovery or MLD passed: no rule applies to them.
    PassNeighbourDiscovery = 9,
    /// Dropped: a fragment after the first of a datagram whose first
    /// fragment the port has not seen (or has forgotten).
    DropFragment = 10,
    /// Port security: the workload sent from a MAC address that is not the
    /// port's nor an allowed address pair's.
    DropSpoofedMac = 11,
    /// Port security: an IPv4 source the port does not own (with that MAC).
    DropSpoofedIpv4 = 12,
    /// Port security: an IPv6 source the port does not own (with that MAC).
    DropSpoofedIpv6 = 13,
    /// Port security: ARP with another sender MAC, or for a sender address
    /// the port does not own.
    DropArpSpoof = 14,
    /// A DHCP or DHCPv6 server's message the port does not carry: sent by
    /// the workload (port security: source port 67, 547), or toward it from
    /// a server the port's policy does not accept (its DHCP servers).
    DropDhcpServer = 15,
    /// Port security: an IPv6 router advertisement or redirect.
    DropRouterAdvert = 16,
    /// Port security: a neighbour advertisement, or a duplicate address
    /// detection solicitation, for an address the port does not own.
    DropNdSpoof = 17,
    /// Port security: broadcast or multicast that neither ARP, the DHCP
    /// client nor neighbour discovery needs.
    DropMulticast = 18,
    /// Port security: an 802.1Q/802.1ad tagged frame from a port that does
    /// not allow them.
    DropVlanTagged = 19,
    /// Port security: a unicast frame toward the workload whose destination
    /// MAC is not the port's nor an allowed address pair's.
    DropForeignMac = 20,
    /// Passed as a packet of a tracked flow (either way), whatever the
    /// rules of its direction say.
    PassEstablished = 21,
    /// Passed as an ICMP error (destination unreachable, packet too big,
    /// time exceeded, parameter problem) about a tracked flow.
    PassRelated = 22,
    /// Dropped: TCP that fits no tracked flow (no SYN to start one, as an
    /// ACK scan) or breaks its flow's state, though a rule allows it.
    DropInvalid = 23,
    /// Dropped: a new flow the policy allows, but the connection table is
    /// full.
    DropConntrackFull = 24,
    /// Dropped: a packet of a tracked flow that the port's changed policy
    /// no longer allows; the flow is forgotten.
    DropRevoked = 25,
    /// Dropped: the program could not do its work: the per-CPU slot of the
    /// parsed packet (`SG_PACKET`) or of the keys of its lookups
    /// (`SG_KEYS`) was not found, which the kernel never lets happen. A
    /// bug, not a verdict on the packet.
    DropInternal = 26,
    /// Dropped: the port has no policy in force: it is being attached or
    /// detached, or attached by the daemon before its policy is installed
    /// (or after an install that never succeeded). Only a port attached
    /// with `PORT_OPEN_WITHOUT_POLICY` passes without one.
    DropNoPolicy = 27,
    /// DHCP or DHCPv6 passed, whatever the rules: the workload's client
    /// request (UDP 68→67, 546→547), or a server's reply toward it (67→68,
    /// 547→546) from a server its policy accepts.
    PassDhcp = 28,
    /// Dropped: a new flow the policy allows, but the port holds as many
    /// flows as its limit (`PortFlows::limit`); other ports' flows, and
    /// its own tracked ones, are untouched.
    DropConntrackPortFull = 29,
}

/// Counter slots reserved per port and direction: room for outcomes to come.
pub const OUTCOME_SLOTS: u32 = 32;

/// Entries of the statistics map.
pub const STATS_ENTRIES: u32 = MAX_PORTS * 2 * OUTCOME_SLOTS;

impl Outcome {
    pub const ALL: [Outcome; 30] = [
        Outcome::Pass,
        Outcome::PassNonIp,
        Outcome::DropBlocked,
        Outcome::DropMalformed,
        Outcome::DropExtHeaders,
        Outcome::DropVlanTags,
        Outcome::DropRule,
        Outcome::DropDefault,
        Outcome::Reject,
        Outcome::PassNeighbourDiscovery,
        Outcome::DropFragment,
        Outcome::DropSpoofedMac,
        Outcome::DropSpoofedIpv4,
        Outcome::DropSpoofedIpv6,
        Outcome::DropArpSpoof,
        Outcome::DropDhcpServer,
        Outcome::DropRouterAdvert,
        Outcome::DropNdSpoof,
        Outcome::DropMulticast,
        Outcome::DropVlanTagged,
        Outcome::DropForeignMac,
        Outcome::PassEstablished,
        Outcome::PassRelated,
        Outcome::DropInvalid,
        Outcome::DropConntrackFull,
        Outcome::DropRevoked,
        Outcome::DropInternal,
        Outcome::DropNoPolicy,
        Outcome::PassDhcp,
        Outcome::DropConntrackPortFull,
    ];

    pub const fn is_drop(self) -> bool {
        !matches!(
            self,
            Outcome::Pass
                | Outcome::PassNonIp
                | Outcome::PassNeighbourDiscovery
                | Outcome::PassEstablished
                | Outcome::PassRelated
                | Outcome::PassDhcp
        )
    }

    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::PassNonIp => "pass-non-ip",
            Outcome::DropBlocked => "drop-blocked",
            Outcome::DropMalformed => "drop-malformed",
            Outcome::DropExtHeaders => "drop-ipv6-ext-headers",
            Outcome::DropVlanTags => "drop-vlan-tags",
            Outcome::DropRule => "drop-rule",
            Outcome::DropDefault => "drop-default",
            Outcome::Reject => "reject",
            Outcome::PassNeighbourDiscovery => "pass-neighbour-discovery",
            Outcome::DropFragment => "drop-fragment",
            Outcome::DropSpoofedMac => "drop-spoofed-mac",
            Outcome::DropSpoofedIpv4 => "drop-spoofed-ipv4",
            Outcome::DropSpoofedIpv6 => "drop-spoofed-ipv6",
            Outcome::DropArpSpoof => "drop-arp-spoof",
            Outcome::DropDhcpServer => "drop-dhcp-server",
            Outcome::DropRouterAdvert => "drop-router-advert",
            Outcome::DropNdSpoof => "drop-nd-spoof",
            Outcome::DropMulticast => "drop-multicast",
            Outcome::DropVlanTagged => "drop-vlan-tagged",
            Outcome::DropForeignMac => "drop-foreign-mac",
            Outcome::PassEstablished => "pass-established",
            Outcome::PassRelated => "pass-related",
            Outcome::DropInvalid => "drop-invalid",
            Outcome::DropConntrackFull => "drop-conntrack-full",
            Outcome::DropRevoked => "drop-revoked",
            Outcome::DropInternal => "drop-internal",
            Outcome::DropNoPolicy => "drop-no-policy",
            Outcome::PassDhcp => "pass-dhcp",
            Outcome::DropConntrackPortFull => "drop-conntrack-port-full",
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
/// being attached or detached, when its programs drop everything
/// (`Outcome::DropNoPolicy`).
pub const PORT_ACTIVE: u32 = 1;

/// `PortConfig::flags`: replies the XDP program makes (REJECT) go back to the
/// workload through the TC ingress program rather than `XDP_TX`. Set for a
/// veth in native mode, whose peer drops `XDP_TX` frames unless it runs
/// XDP or GRO itself.
pub const PORT_REPLY_VIA_TC: u32 = 2;

/// `PortConfig::flags`: without a policy in force (`NO_POLICY`), the port's
/// traffic is subject to its blocklist and port security only. Set by the
/// low-level `sg-ctl attach`, which works without the daemon and its
/// policies; a port the daemon attaches has it unset, so that it drops
/// everything until its policy is in force.
pub const PORT_OPEN_WITHOUT_POLICY: u32 = 4;

/// XDP metadata in front of a reply on its way to the TC ingress program.
pub const REPLY_META: u32 = 0x5347_5250;

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

/// Data of a key of the per-port address tries (the blocklist and the
/// addresses a port owns): the port's slot, then an IPv6 address (IPv4 as
/// `::ffff:a.b.c.d`). The trie's prefix length always covers the 32 bits of
/// the slot, so a port only matches its own prefixes.
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
    // Two 64-bit words, not sixteen bytes: in BPF a run of ten zero bytes
    // becomes a call to a byte-wise `memset`.
    let low = u64::from_ne_bytes([0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3]]);
    // SAFETY: two u64s are sixteen bytes, any of which are valid u8s.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([0, low]) }
}

/// Prefixes the owned-address trie can hold, all ports together.
pub const MAX_OWNED_PREFIXES: u32 = 65_536;

/// MAC addresses one port may send from: its own and those of its allowed
/// address pairs.
pub const MAX_PORT_MACS: usize = 8;

/// MAC addresses one owned prefix may be used with.
pub const MAX_ADDRESS_MACS: usize = 4;

/// A MAC address as the datapath compares it: the six bytes in the low 48
/// bits, first byte lowest.
#[inline(always)]
pub const fn mac_word(mac: [u8; 6]) -> u64 {
    (mac[0] as u64)
        | (mac[1] as u64) << 8
        | (mac[2] as u64) << 16
        | (mac[3] as u64) << 24
        | (mac[4] as u64) << 32
        | (mac[5] as u64) << 40
}

/// An unused entry of a MAC list: no 48-bit address equals it.
pub const NO_MAC: u64 = u64::MAX;

/// `PortSecurityConfig::flags`: anti-spoofing is on for the port. Unset
/// (the zero value of a port nobody configured), the port's traffic is
/// only subject to the blocklist and the policy.
pub const PORTSEC_ENABLED: u32 = 1;
/// The workload may send 802.1Q/802.1ad tagged frames (checked like
/// untagged ones).
pub const PORTSEC_ALLOW_VLAN: u32 = 2;
/// The workload may send any broadcast and multicast.
pub const PORTSEC_ALLOW_MULTICAST: u32 = 4;

/// `SG_PORT_SECURITY` value, at the port's slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSecurityConfig {
    /// `mac_word`s the port sends from and receives at, the port's own
    /// first; unused entries are `NO_MAC`.
    pub macs: [u64; MAX_PORT_MACS],
    pub flags: u32,
    pub _pad: u32,
}

impl PortSecurityConfig {
    /// No anti-spoofing.
    pub const OFF: PortSecurityConfig = PortSecurityConfig {
        macs: [NO_MAC; MAX_PORT_MACS],
        flags: 0,
        _pad: 0,
    };
}

/// `SG_OWNED` value: the MACs an owned prefix may be used with (those of
/// every configured prefix that contains it); unused entries are `NO_MAC`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnedMacs {
    pub macs: [u64; MAX_ADDRESS_MACS],
}

/// `SG_PORT_POLICY` value of a port without a policy: it drops everything,
/// unless it has `PORT_OPEN_WITHOUT_POLICY` (then only its blocklist and
/// port security apply).
pub const NO_POLICY: u32 = 0;

/// `SG_PORT_SKIPS` value: the lookups a port's policy cannot need, and
/// the id of the policy that says so. Written before the port is switched
/// to that policy (`SG_PORT_POLICY`), in one 32-bit word with the id, so
/// that the datapath skips a lookup only for the policy whose tables it
/// describes: a word of another id (a switch under way) skips nothing.
pub mod skip {
    /// No local classes: every address of the port is in class 0, and
    /// `SG_LOCAL` is not looked up.
    pub const LOCAL: u32 = 1 << 31;
    /// No entries in `SG_REMOTE_EXACT`: the remote trie alone answers.
    pub const REMOTE_EXACT: u32 = 1 << 30;
    /// No entries in `SG_L4_EXACT`: the L4 trie alone answers.
    pub const L4_EXACT: u32 = 1 << 29;
    /// The bits of the word that hold the policy id. A policy id wider
    /// than them matches no word, and its port skips nothing.
    pub const ID: u32 = L4_EXACT - 1;

    /// The word for `policy` skipping `lookups`.
    pub const fn word(policy: u32, lookups: u32) -> u32 {
        if policy & !ID == 0 {
            policy | lookups
        } else {
            0
        }
    }

    /// Whether `word` lets `policy` skip `lookup`.
    #[inline(always)]
    pub const fn skips(word: u32, policy: u32, lookup: u32) -> bool {
        word & ID == policy && word & lookup != 0
    }
}

/// Entries of the policy maps, all ports and both generations of a policy
/// update together.
pub const MAX_LOCAL_ENTRIES: u32 = 16_384;
pub const MAX_REMOTE_ENTRIES: u32 = 262_144;
pub const MAX_L4_ENTRIES: u32 = 262_144;
pub const MAX_VERDICT_ENTRIES: u32 = 1_048_576;
/// DHCP servers a port may restrict itself to.
pub const MAX_DHCP_SERVERS: usize = 8;
/// Entries of `SG_DHCP_SERVERS`, all ports and both generations of a policy
/// update together: a port accepts at most `MAX_DHCP_SERVERS` servers
/// (one entry, `::/0`, when it accepts any).
pub const MAX_DHCP_SERVER_ENTRIES: u32 = MAX_PORTS * 2 * MAX_DHCP_SERVERS as u32;

/// `SG_DHCP_SERVERS` trie key: a DHCP server's address (IPv4 mapped into
/// IPv6) under a policy id; the value is 1. The prefix length covers the
/// policy id first. A policy that accepts any server has the one entry
/// of prefix `::/0`; one that accepts some, an entry per server.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DhcpServerKey {
    pub policy: u32,
    pub addr: [u8; 16],
}

/// Bits of a `DhcpServerKey` in front of the address.
pub const DHCP_SERVER_KEY_POLICY_BITS: u32 = 32;

/// Rules with a counter of their own, all ports together. Counter 0 is the
/// default verdict's, which has none.
pub const MAX_RULE_COUNTERS: u32 = 131_072;

/// The protocol numbers the datapath reads: IP protocol numbers (IANA's
/// list, IPv6 extension headers included), TCP's flags, and the ICMP and
/// ICMPv6 types and codes it looks at or sends. Named after Linux's
/// headers (`IPPROTO_*` of `<netinet/in.h>`, `TCPHDR_*`, `ICMP_*`,
/// `ICMPV6_*`).
pub mod proto {
    pub const IPPROTO_HOPOPTS: u8 = 0;
    pub const IPPROTO_ICMP: u8 = 1;
    pub const IPPROTO_TCP: u8 = 6;
    pub const IPPROTO_UDP: u8 = 17;
    pub const IPPROTO_DCCP: u8 = 33;
    pub const IPPROTO_ROUTING: u8 = 43;
    pub const IPPROTO_FRAGMENT: u8 = 44;
    pub const IPPROTO_AH: u8 = 51;
    pub const IPPROTO_ICMPV6: u8 = 58;
    pub const IPPROTO_DSTOPTS: u8 = 60;
    pub const IPPROTO_SCTP: u8 = 132;
    /// IPv6 mobility header.
    pub const IPPROTO_MH: u8 = 135;
    pub const IPPROTO_UDPLITE: u8 = 136;

    /// TCP's flags, byte 13 of its header.
    pub mod tcp {
        pub const FIN: u8 = 0x01;
        pub const SYN: u8 = 0x02;
        pub const RST: u8 = 0x04;
        pub const ACK: u8 = 0x10;
    }

    /// The UDP ports of DHCP (RFC 2131) and DHCPv6 (RFC 8415).
    pub mod dhcp {
        pub const SERVER: u16 = 67;
        pub const CLIENT: u16 = 68;
        pub const V6_CLIENT: u16 = 546;
        pub const V6_SERVER: u16 = 547;
    }

    /// ICMP types (RFC 792) and codes.
    pub mod icmp {
        pub const ECHO_REPLY: u8 = 0;
        pub const DEST_UNREACH: u8 = 3;
        pub const SOURCE_QUENCH: u8 = 4;
        pub const REDIRECT: u8 = 5;
        pub const ECHO_REQUEST: u8 = 8;
        pub const TIME_EXCEEDED: u8 = 11;
        pub const PARAMETER_PROBLEM: u8 = 12;
        /// `DEST_UNREACH`'s code for "communication administratively
        /// prohibited" (RFC 1812 5.2.7.1).
        pub const CODE_ADMIN_PROHIBITED: u8 = 13;

        /// Whether a message of type `kind` is an error, which no ICMP
        /// error may answer (RFC 1122 3.2.2).
        #[inline(always)]
        pub const fn is_error(kind: u8) -> bool {
            matches!(
                kind,
                DEST_UNREACH | SOURCE_QUENCH | REDIRECT | TIME_EXCEEDED | PARAMETER_PROBLEM
            )
        }
    }

    /// ICMPv6 types (RFC 4443, 4861, 2710 and 3810) and codes.
    pub mod icmpv6 {
        pub const DEST_UNREACH: u8 = 1;
        pub const PACKET_TOO_BIG: u8 = 2;
        pub const TIME_EXCEEDED: u8 = 3;
        pub const PARAMETER_PROBLEM: u8 = 4;
        pub const ECHO_REQUEST: u8 = 128;
        pub const ECHO_REPLY: u8 = 129;
        pub const MLD_QUERY: u8 = 130;
        pub const MLD_REPORT: u8 = 131;
        pub const MLD_DONE: u8 = 132;
        pub const ROUTER_SOLICIT: u8 = 133;
        pub const ROUTER_ADVERT: u8 = 134;
        pub const NEIGHBOUR_SOLICIT: u8 = 135;
        pub const NEIGHBOUR_ADVERT: u8 = 136;
        pub const REDIRECT: u8 = 137;
        pub const MLD2_REPORT: u8 = 143;
        /// `DEST_UNREACH`'s code for "communication with destination
        /// administratively prohibited".
        pub const CODE_ADMIN_PROHIBITED: u8 = 1;

        /// Whether a message of type `kind` is an error: its type's high
        /// bit is clear (RFC 4443 2.1). No ICMPv6 error may answer one.
        #[inline(always)]
        pub const fn is_error(kind: u8) -> bool {
            kind & 0x80 == 0
        }

        /// Whether a message of type `kind` is neighbour discovery or MLD:
        /// what IPv6 needs to work on a link, as ARP for IPv4, which no
        /// rule applies to. Listener query, report and done, router and
        /// neighbour solicitation and advertisement, MLDv2 report.
        #[inline(always)]
        pub fn is_neighbour_discovery(kind: u8) -> bool {
            (MLD_QUERY..=NEIGHBOUR_ADVERT).contains(&kind) || kind == MLD2_REPORT
        }
    }
}

/// Address families as they appear in the policy keys.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// What one set of compiled tables applies to: one generation of one port's
/// policy, one class of the port's own (local) addresses, one direction,
/// one address family. Every policy key starts with it, matched in full.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub policy: u32,
    pub local_class: u16,
    pub direction: u8,
    pub family: u8,
}

/// Bits of a `Scope` at the front of a trie key.
pub const SCOPE_BITS: u32 = 64;

/// `SG_LOCAL` trie key: the packet's local address (the workload's side)
/// within a policy and family; the value is the local class (`u32`).
/// Prefix length: 64 bits of policy and family, then the address's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalKey {
    pub policy: u32,
    pub family: u32,
    pub addr: [u8; 16],
}

/// `SG_REMOTE` trie key: the packet's remote address within a scope.
/// Addresses are in IPv4-mapped form like everywhere else.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteKey {
    pub scope: Scope,
    pub addr: [u8; 16],
}

/// `SG_L4` trie key: IP protocol and the 16-bit value the rules match on,
/// the destination port (TCP, UDP, SCTP, DCCP, UDP-Lite) or ICMP
/// `type << 8 | code`, big-endian so that ranges become prefixes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Key {
    pub scope: Scope,
    pub protocol: u8,
    pub _pad: u8,
    pub value: [u8; 2],
}

/// Bits of an `L4Key` in front of its 16-bit value.
pub const L4_VALUE_OFFSET_BITS: u32 = SCOPE_BITS + 16;

/// Value of the remote and L4 tries: the equivalence class of the address
/// or protocol/port (rules that match exactly the same packets share one),
/// the best candidate among the rules that need nothing else to match,
/// and the class's pairs with the other dimension's classes (rules that
/// need both) when it has one or none: then the datapath needs no
/// `SG_VERDICT` lookup, which holds only the pairs of two classes that
/// both have more. An L4 class may also decide alone (`Class::ALONE`):
/// then the remote address is not looked up at all.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    pub best: u64,
    pub class: u32,
    /// The other dimension's class of this one's only pair, or
    /// `Class::NO_PAIR`, or `Class::PAIRS`: look in `SG_VERDICT`, or
    /// `Class::ALONE`.
    pub pair: u32,
    /// The only pair's best candidate.
    pub pair_best: u64,
}

impl Class {
    /// A class of `best` whose pairs are not known yet: none.
    pub const fn new(best: u64, class: u32) -> Class {
        Class {
            best,
            class,
            pair: Class::NO_PAIR,
            pair_best: candidate::NONE,
        }
    }

    /// `Class::pair` of a class in no pair: no class is this one.
    pub const NO_PAIR: u32 = u32::MAX - 1;
    /// `Class::pair` of a class in more than one pair.
    pub const PAIRS: u32 = u32::MAX;
    /// `Class::pair` of an L4 class in no pair whose best no remote
    /// class of its scope beats: its best decides whatever the remote
    /// address, which the datapath then does not look up.
    pub const ALONE: u32 = u32::MAX - 2;
}

/// A single remote address of a scope and its class, in a slot of
/// `SG_REMOTE_EXACT`. Free while its `key.scope.policy` is `NO_POLICY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteSlot {
    pub key: RemoteKey,
    pub class: Class,
}

/// Slots of a `RemoteGroup`.
pub const REMOTE_SLOTS: usize = 4;

/// `SG_REMOTE_EXACT` entry: the slots of the keys `RemoteKey::group` puts
/// in this group, three cache lines read on one miss. A key whose group is
/// full goes to the remote trie as a full-length prefix, which answers the
/// same.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteGroup {
    pub slots: [RemoteSlot; REMOTE_SLOTS],
}

/// Groups of `SG_REMOTE_EXACT` for a table of `entries` single addresses:
/// twice the slots, so that few groups fill up.
pub const fn remote_groups(entries: u32) -> u32 {
    let groups = entries.div_ceil(REMOTE_SLOTS as u32 / 2);
    if groups == 0 { 1 } else { groups }
}

/// The single addresses a `SG_REMOTE_EXACT` of `groups` groups is made
/// for (see `remote_groups`).
pub const fn remote_entries(groups: u32) -> u32 {
    groups.saturating_mul(REMOTE_SLOTS as u32 / 2)
}

impl RemoteKey {
    /// The key as three words, as read from memory on a little-endian
    /// machine: the scope's (`RemoteKey::scope_word`), then the address's.
    pub fn words(&self) -> [u64; 3] {
        let half = |i: usize| {
            let mut word = [0; 8];
            word.copy_from_slice(&self.addr[i..i + 8]);
            u64::from_le_bytes(word)
        };
        [RemoteKey::scope_word(&self.scope), half(0), half(8)]
    }

    /// A scope's word of `RemoteKey::words`.
    #[inline(always)]
    pub fn scope_word(scope: &Scope) -> u64 {
        u64::from(scope.policy)
            | u64::from(scope.local_class) << 32
            | u64::from(scope.direction) << 48
            | u64::from(scope.family) << 56
    }

    /// The group of `SG_REMOTE_EXACT`, of `groups`, that holds the key of
    /// `words` (`RemoteKey::words`). The addresses are the operator's, not
    /// the workload's; keys that collide only go to the trie.
    #[inline(always)]
    pub fn group(words: &[u64; 3], groups: u32) -> u32 {
        // MurmurHash3's finalizer, folding in a word at a time: every bit
        // of the key moves every bit of the hash.
        let mix = |mut h: u64| {
            h = (h ^ h >> 33).wrapping_mul(0xff51_afd7_ed55_8ccd);
            h = (h ^ h >> 33).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            h ^ h >> 33
        };
        let hash = mix(mix(mix(words[0]) ^ words[1]) ^ words[2]) >> 32;
        // The hash's high half scaled to the groups: any count of them.
        ((hash * u64::from(groups)) >> 32) as u32
    }
}

/// `SG_VERDICT` key: the best candidate among the rules that match both a
/// remote class and an L4 class.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VerdictKey {
    pub scope: Scope,
    pub remote_class: u32,
    pub l4_class: u32,
}

/// `SG_FRAGMENTS` key: one fragmented datagram through one port, in one
/// direction. Its value is the candidate that decided the first fragment,
/// which decides the later ones too.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub slot: u32,
    /// IPv4's 16-bit or IPv6's 32-bit identification.
    pub id: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub protocol: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
}

/// Fragmented datagrams remembered, all ports together; the least recently
/// seen go first.
pub const MAX_FRAGMENT_ENTRIES: u32 = 16_384;

/// A rule as the datapath sees it: `order << 32 | counter << 2 | action`,
/// so that the smallest candidate is the rule that comes first.
pub mod candidate {
    pub const ALLOW: u64 = 0;
    pub const DROP: u64 = 1;
    pub const REJECT: u64 = 2;
    /// No rule.
    pub const NONE: u64 = u64::MAX;

    #[inline(always)]
    pub const fn new(order: u32, counter: u32, action: u64) -> u64 {
        (order as u64) << 32 | ((counter as u64) & 0x3fff_ffff) << 2 | action
    }

    #[inline(always)]
    pub const fn action(candidate: u64) -> u64 {
        candidate & 3
    }

    #[inline(always)]
    pub const fn counter(candidate: u64) -> u32 {
        ((candidate >> 2) & 0x3fff_ffff) as u32
    }

    #[inline(always)]
    pub const fn order(candidate: u64) -> u32 {
        (candidate >> 32) as u32
    }
}

/// Flows the connection table holds, all ports together, unless sized
/// otherwise. A new flow that finds it full takes the room of an expired
/// or unreplied flow if it finds one, and is dropped otherwise
/// (`Outcome::DropConntrackFull`); established flows are never evicted.
pub const MAX_CONNTRACK_ENTRIES: u32 = 262_144;

/// The flows a port may hold when nothing set its limit: a quarter of the
/// default table, so that it takes four ports to fill it.
pub const DEFAULT_FLOWS_PER_PORT: u32 = 65_536;

/// `SG_PORT_FLOWS[slot]`: the flows the port holds in the table, and how
/// many it may hold. The map is mmapable: the datapath and `sg-ctl` add to
/// and take from `flows` with atomic operations on the same memory, and
/// `sg-ctl` writes `limit` there (a write through the map's update call
/// would put back a `flows` read before it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortFlows {
    /// One more for each flow the port started, one less for each of its
    /// flows removed, by whoever removed it.
    pub flows: u64,
    /// Zero: `DEFAULT_FLOWS_PER_PORT`.
    pub limit: u32,
    pub _pad: u32,
}

impl PortFlows {
    /// The flows the port may hold.
    #[inline(always)]
    pub const fn limit(&self) -> u32 {
        if self.limit == 0 {
            DEFAULT_FLOWS_PER_PORT
        } else {
            self.limit
        }
    }
}

/// The counters of `SG_CONNTRACK_PRESENCE` beside a table of `entries`
/// flows: a power of two, about a quarter as many (at least 1,024). Small
/// enough to stay in a CPU's cache, where the table's own buckets do not:
/// a packet of no flow costs a read of its counter rather than a miss in
/// the table.
pub const fn presence_counters(entries: u32) -> u32 {
    let quarter = entries / 4;
    if quarter <= 1024 {
        1024
    } else {
        quarter.next_power_of_two()
    }
}

/// Presence counters in each entry of `SG_CONNTRACK_PRESENCE`: a cache
/// line of them. An array keeps each entry 8-aligned, so 4-byte counters
/// one to an entry would take 8 bytes each.
pub const PRESENCE_COUNTERS_PER_ENTRY: u32 = 16;

/// An entry of `SG_CONNTRACK_PRESENCE`: counter `i` of the map is lane
/// `i % PRESENCE_COUNTERS_PER_ENTRY` of entry
/// `i / PRESENCE_COUNTERS_PER_ENTRY`.
pub type PresenceCounters = [u32; PRESENCE_COUNTERS_PER_ENTRY as usize];

/// `SG_CONNTRACK_CLOCK[0]`: where the next new flow's key goes in
/// `SG_CONNTRACK_RING` (`head`), and the next entry of the ring a full
/// table looks at for room (`hand`); both count up for ever and are taken
/// modulo the ring's size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackClock {
    pub head: u64,
    pub hand: u64,
}

/// Entries of the ring a full table looks at per new flow for an expired
/// or unreplied flow to take the room of.
pub const CONNTRACK_RECLAIM_TRIES: u32 = 8;

/// `SG_CONNTRACK` key: one flow through one port, seen from the workload.
/// `local` is the workload's address and port (the source of what it
/// sends, the destination of what it receives), so that both directions
/// of a flow find one entry. ICMP echo is keyed as Linux keys it, by type,
/// code and identifier: the identifier is the local port, and the remote
/// port is the type the workload sends in the flow (its request, or its
/// reply to the other end's request) and the code. So a request and its
/// reply find one entry, the two ends' requests make two, and a reply of
/// another code, or going the request's way, finds none.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConntrackKey {
    pub slot: u32,
    pub protocol: u8,
    pub family: u8,
    pub local_port: [u8; 2],
    pub remote_port: [u8; 2],
    pub _pad: [u8; 2],
    pub local: [u8; 16],
    pub remote: [u8; 16],
}

impl ConntrackKey {
    /// The key's counter in `SG_CONNTRACK_PRESENCE`, of `counters` (a power
    /// of two): the flows in the table whose keys share it. Zero says no
    /// flow of this key is there. The datapath adds one before it inserts
    /// a flow and takes one after it removes one; so does `sg-ctl` after
    /// its own removals. Keys a workload chooses to collide only make the
    /// table be looked up.
    #[inline(always)]
    pub fn presence_index(&self, counters: u32) -> u32 {
        const { assert!(size_of::<ConntrackKey>() == 44 && align_of::<ConntrackKey>() == 4) };
        // SAFETY: 44 bytes of integers and no padding, 4-aligned
        // (asserted above).
        let w = unsafe { &*(self as *const Self).cast::<[u32; 11]>() };
        // Pairs of words, each told apart by its own constant and
        // multiplied: six multiplies at once rather than eleven one after
        // the other (a fifth of the program's own time in a profile under
        // live traffic, about 17 ns a packet), then folded and
        // mixed.
        const M: u64 = 0x9e37_79b9_7f4a_7c15;
        let pair =
            |i: usize, k: u64| ((u64::from(w[i]) | u64::from(w[i + 1]) << 32) ^ k).wrapping_mul(M);
        let hash = pair(0, 0x2f4a_7c15)
            ^ pair(2, 0x27d4_eb4f)
            ^ pair(4, 0x1e37_79f9)
            ^ pair(6, 0x6659_fd93)
            ^ pair(8, 0x6d55_8ccd)
            ^ (u64::from(w[10]) ^ 0x1a85_ec53).wrapping_mul(M);
        let hash = (hash ^ hash >> 29).wrapping_mul(M);
        (hash >> 32) as u32 & counters.wrapping_sub(1)
    }

    /// Where `presence_index` puts the key's counter among `counters`: the
    /// entry of `SG_CONNTRACK_PRESENCE` and the lane in it (see
    /// `PresenceCounters`).
    #[inline(always)]
    pub fn presence_place(&self, counters: u32) -> (u32, usize) {
        let index = self.presence_index(counters);
        (
            index / PRESENCE_COUNTERS_PER_ENTRY,
            (index % PRESENCE_COUNTERS_PER_ENTRY) as usize,
        )
    }
}

/// `SG_CONNTRACK` value. Times are `bpf_ktime_get_coarse_ns`
/// (CLOCK_MONOTONIC_COARSE: CLOCK_MONOTONIC to within a tick).
/// Counters are indexed by `Direction`; XDP and TC may update one entry at
/// once on two CPUs, so they may miss a packet under such a race.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackEntry {
    pub first_seen: u64,
    pub last_seen: u64,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// The port's policy (`SG_PORT_POLICY`) that last allowed the flow in
    /// its origin direction.
    pub policy: u32,
    /// `conntrack_state`.
    pub state: u8,
    /// `Direction` of the packet that started the flow.
    pub origin: u8,
    /// TCP: a bit `1 << direction` per direction that sent a FIN.
    pub fins: u8,
    pub _pad: u8,
}

/// `ConntrackEntry::state`.
pub mod conntrack_state {
    /// UDP, ICMP echo or another protocol, seen in its origin direction.
    pub const NEW: u8 = 0;
    /// Seen in both directions.
    pub const REPLIED: u8 = 1;
    /// TCP: the SYN went out.
    pub const SYN_SENT: u8 = 2;
    /// TCP: the SYN-ACK came back.
    pub const SYN_RECEIVED: u8 = 3;
    pub const ESTABLISHED: u8 = 4;
    /// TCP: one side sent a FIN.
    pub const FIN_WAIT: u8 = 5;
    /// TCP: both sides sent a FIN.
    pub const TIME_WAIT: u8 = 6;

    /// Whether a flow in `state` is unreplied: no answer yet (`NEW`), or a
    /// TCP handshake that has not completed. Such flows make room for new
    /// ones when the table is full, as Linux's early drop takes
    /// connections that are not assured; established ones never do.
    #[inline(always)]
    pub const fn unreplied(state: u8) -> bool {
        matches!(state, NEW | SYN_SENT | SYN_RECEIVED)
    }
}

/// What happened to a flow, in `SG_CONNTRACK_EVENTS` (a ring buffer).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackEvent {
    /// `bpf_ktime_get_coarse_ns`.
    pub time: u64,
    pub key: ConntrackKey,
    /// `conntrack_event`.
    pub kind: u32,
}

/// `ConntrackEvent::kind`.
pub mod conntrack_event {
    /// A flow started.
    pub const NEW: u32 = 0;
    /// An RST ended it, FINs went both ways, or the policy revoked it.
    pub const CLOSED: u32 = 1;
    /// Its next packet found it idle past its timeout, or a new flow that
    /// needed its room did.
    pub const EXPIRED: u32 = 2;
    /// Unreplied, it gave its room to a new flow in a full table.
    pub const EVICTED: u32 = 3;

    pub const fn name(kind: u32) -> &'static str {
        match kind {
            NEW => "new",
            CLOSED => "closed",
            EXPIRED => "expired",
            EVICTED => "evicted",
            _ => "unknown",
        }
    }
}

/// Bytes of the events ring buffer.
pub const CONNTRACK_EVENTS_BYTES: u32 = 256 * 1024;

/// Events each CPU may send per second; those past it are not sent (the
/// flows are tracked all the same).
pub const CONNTRACK_EVENTS_PER_SECOND: u32 = 1000;

/// `SG_CONNTRACK_TIMEOUTS[0]`: seconds an idle flow is kept, per kind
/// (`Timeout`); zero for the kind's default (`Timeout::default_seconds`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackTimeouts {
    pub seconds: [u32; Timeout::COUNT],
}

/// The kinds of flows with a timeout of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    TcpEstablished = 0,
    /// TCP opening or closing: every state but established.
    TcpClosing = 1,
    Udp = 2,
    /// ICMP and ICMPv6 echo.
    Icmp = 3,
    /// Every other protocol.
    Other = 4,
    /// A flow of any protocol but TCP that has had no reply.
    Unreplied = 5,
}

impl Timeout {
    pub const COUNT: usize = 6;

    /// Linux's defaults (`nf_conntrack_tcp_timeout_established`,
    /// `…_time_wait`, `nf_conntrack_udp_timeout`,
    /// `nf_conntrack_icmp_timeout`, `nf_conntrack_generic_timeout`), and
    /// for unreplied flows its UDP one (which Linux applies to UDP until
    /// it is a stream).
    pub const DEFAULT_SECONDS: [u32; Timeout::COUNT] = [432_000, 120, 30, 30, 600, 30];

    /// The timeout that applies to a flow of `protocol` in `state`.
    #[inline(always)]
    pub const fn of(protocol: u8, state: u8) -> Timeout {
        match protocol {
            proto::IPPROTO_TCP if state == conntrack_state::ESTABLISHED => Timeout::TcpEstablished,
            proto::IPPROTO_TCP => Timeout::TcpClosing,
            _ if state == conntrack_state::NEW => Timeout::Unreplied,
            proto::IPPROTO_UDP => Timeout::Udp,
            proto::IPPROTO_ICMP | proto::IPPROTO_ICMPV6 => Timeout::Icmp,
            _ => Timeout::Other,
        }
    }
}

impl ConntrackTimeouts {
    /// Seconds for `timeout`, its default when unset. (Matches rather
    /// than an index into the defaults: in BPF a constant array indexed
    /// by a variable is a copy on the stack.)
    #[inline(always)]
    pub const fn seconds(&self, timeout: Timeout) -> u32 {
        let (seconds, default) = match timeout {
            Timeout::TcpEstablished => (self.seconds[0], Timeout::DEFAULT_SECONDS[0]),
            Timeout::TcpClosing => (self.seconds[1], Timeout::DEFAULT_SECONDS[1]),
            Timeout::Udp => (self.seconds[2], Timeout::DEFAULT_SECONDS[2]),
            Timeout::Icmp => (self.seconds[3], Timeout::DEFAULT_SECONDS[3]),
            Timeout::Other => (self.seconds[4], Timeout::DEFAULT_SECONDS[4]),
            Timeout::Unreplied => (self.seconds[5], Timeout::DEFAULT_SECONDS[5]),
        };
        if seconds == 0 { default } else { seconds }
    }

    /// Whether a flow of `protocol` in `state`, last seen at `last_seen`,
    /// has expired at `now` (nanoseconds, as `bpf_ktime_get_coarse_ns`).
    #[inline(always)]
    pub const fn expired(&self, protocol: u8, state: u8, last_seen: u64, now: u64) -> bool {
        let timeout = self.seconds(Timeout::of(protocol, state)) as u64 * 1_000_000_000;
        now > last_seen && now - last_seen > timeout
    }
}

const _: () = assert!(size_of::<Scope>() == 8);
const _: () = assert!(size_of::<LocalKey>() == 24);
const _: () = assert!(size_of::<RemoteKey>() == 24);
const _: () = assert!(size_of::<L4Key>() == 12);
const _: () = assert!(size_of::<Class>() == 24);
const _: () = assert!(size_of::<VerdictKey>() == 16);
const _: () = assert!(size_of::<FragmentKey>() == 44);
const _: () = assert!(size_of::<TraceRecord>() == 48);
const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(size_of::<PortConfig>() == 40);
const _: () = assert!(size_of::<BlockKey>() == 20);
const _: () = assert!(size_of::<DhcpServerKey>() == 20);
const _: () = assert!(size_of::<PortSecurityConfig>() == 72);
const _: () = assert!(size_of::<OwnedMacs>() == 32);
const _: () = assert!(size_of::<ConntrackKey>() == 44);
const _: () = assert!(size_of::<ConntrackEntry>() == 56);
const _: () = assert!(size_of::<ConntrackTimeouts>() == 24);
const _: () = assert!(size_of::<PortFlows>() == 16);
const _: () = assert!(size_of::<ConntrackClock>() == 16);
const _: () = assert!(size_of::<ConntrackEvent>() == 56);
const _: () = assert!(OUTCOME_SLOTS as usize >= Outcome::ALL.len());
// `ALL` lists the codes in order, without a gap: userspace names the
// counters from it.
const _: () = {
    let mut code = 0;
    while code < Outcome::ALL.len() {
        assert!(Outcome::ALL[code] as usize == code);
        code += 1;
    }
};

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: plain `#[repr(C)]` data without implicit padding.
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for PortConfig {}
    unsafe impl aya::Pod for BlockKey {}
    unsafe impl aya::Pod for DhcpServerKey {}
    unsafe impl aya::Pod for Scope {}
    unsafe impl aya::Pod for LocalKey {}
    unsafe impl aya::Pod for RemoteKey {}
    unsafe impl aya::Pod for L4Key {}
    unsafe impl aya::Pod for Class {}
    unsafe impl aya::Pod for RemoteGroup {}
    unsafe impl aya::Pod for VerdictKey {}
    unsafe impl aya::Pod for FragmentKey {}
    unsafe impl aya::Pod for TraceRecord {}
    unsafe impl aya::Pod for PortSecurityConfig {}
    unsafe impl aya::Pod for OwnedMacs {}
    unsafe impl aya::Pod for ConntrackKey {}
    unsafe impl aya::Pod for ConntrackEntry {}
    unsafe impl aya::Pod for ConntrackTimeouts {}
    unsafe impl aya::Pod for PortFlows {}
    unsafe impl aya::Pod for ConntrackClock {}
    unsafe impl aya::Pod for ConntrackEvent {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::{collections::HashSet, vec, vec::Vec};

    use super::*;

    /// The counters `keys` fall on, against the about `n (1 - e^(-k/n))`
    /// of `k` keys thrown at random on `n` counters.
    fn spread(keys: impl Iterator<Item = ConntrackKey>) -> (usize, f64) {
        let counters = presence_counters(MAX_CONNTRACK_ENTRIES);
        let mut seen = HashSet::new();
        let mut count = 0;
        for key in keys {
            seen.insert(key.presence_index(counters));
            count += 1;
        }
        let n = f64::from(counters);
        (seen.len(), n * (1.0 - (-(count as f64) / n).exp()))
    }

    fn key(slot: u32, local_port: u16, remote: [u8; 4], remote_port: u16) -> ConntrackKey {
        ConntrackKey {
            slot,
            protocol: 17,
            family: FAMILY_IPV4,
            local_port: local_port.to_be_bytes(),
            remote_port: remote_port.to_be_bytes(),
            _pad: [0; 2],
            local: ipv4_mapped([198, 18, 0, 2]),
            remote: ipv4_mapped(remote),
        }
    }

    /// Flows that differ in one field only, or in a few low bits of
    /// several, spread over the counters as random keys would.
    #[test]
    fn presence_indexes_spread_keys_that_differ_in_any_field() {
        let cases: [(&str, Vec<ConntrackKey>); 4] = [
            (
                "local ports",
                (0..16_384)
                    .map(|p| key(3, p, [198, 19, 0, 1], 53))
                    .collect(),
            ),
            (
                "remote addresses",
                (0..16_384u32)
                    .map(|a| key(3, 40_000, (0xc613_0000 | a).to_be_bytes(), 53))
                    .collect(),
            ),
            (
                "slots and remote ports",
                (0..1024)
                    .flat_map(|s| (0..16).map(move |p| key(s, 40_000, [198, 19, 0, 1], 1000 + p)))
                    .collect(),
            ),
            (
                "a few bits of each",
                (0..16_384u32)
                    .map(|i| {
                        let remote = (0xc613_0000 | (i & 63)).to_be_bytes();
                        key(i >> 12, 1024 + (i >> 6 & 63) as u16, remote, 53)
                    })
                    .collect(),
            ),
        ];
        for (what, keys) in cases {
            let (seen, random) = spread(keys.into_iter());
            assert!(
                seen as f64 > 0.95 * random,
                "{what}: {seen} counters, {random:.0} for random keys"
            );
        }
    }

    /// Single addresses that differ in a few low bits, of IPv4 and IPv6,
    /// of one scope or of many, fill the groups of a table made for them
    /// as random keys would: about 3.7% of them find their group full.
    #[test]
    fn remote_groups_spread_addresses_as_random_keys_would() {
        let scope = |policy: u32, local_class: u16, family: u8| Scope {
            policy,
            local_class,
            direction: 1,
            family,
        };
        let v6 = |i: u32| {
            let mut addr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            addr[12..].copy_from_slice(&i.to_be_bytes());
            addr
        };
        let cases: [(&str, Vec<[u64; 3]>); 3] = [
            (
                "IPv4 addresses in a row",
                (0..65_536u32)
                    .map(|i| {
                        let addr = ipv4_mapped((0xc613_0000 | i).to_be_bytes());
                        RemoteKey {
                            scope: scope(7, 0, FAMILY_IPV4),
                            addr,
                        }
                        .words()
                    })
                    .collect(),
            ),
            (
                "IPv6 addresses in a row",
                (0..65_536u32)
                    .map(|i| {
                        RemoteKey {
                            scope: scope(7, 0, FAMILY_IPV6),
                            addr: v6(i),
                        }
                        .words()
                    })
                    .collect(),
            ),
            (
                "a few addresses of many policies and local classes",
                (0..65_536u32)
                    .map(|i| {
                        let addr = ipv4_mapped((0xc613_0000 | (i & 63)).to_be_bytes());
                        let scope = scope(1 + (i >> 10), (i >> 6 & 15) as u16, FAMILY_IPV4);
                        RemoteKey { scope, addr }.words()
                    })
                    .collect(),
            ),
        ];
        for (what, keys) in cases {
            let groups = remote_groups(keys.len() as u32);
            let mut held = vec![0usize; groups as usize];
            let mut overflow = 0;
            for words in &keys {
                let group = RemoteKey::group(words, groups);
                assert!(group < groups, "{what}: group {group} of {groups}");
                held[group as usize] += 1;
                if held[group as usize] > REMOTE_SLOTS {
                    overflow += 1;
                }
            }
            let share = overflow as f64 / keys.len() as f64;
            assert!(
                share < 0.042,
                "{what}: {:.1}% find their group full",
                share * 100.0
            );
        }
    }
}
