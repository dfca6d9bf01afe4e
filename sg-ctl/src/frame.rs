//! Ethernet frames built from a packet description: what `trace` and the
//! tests run the real programs on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, IpHeaders, IpNumber, Ipv4Extensions,
    Ipv4Header, Ipv6Extensions, Ipv6FlowLabel, Ipv6Header, PacketBuilder, PacketBuilderStep,
    VlanId,
};

/// The transport part of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: TcpFlags,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// ICMP for IPv4, ICMPv6 for IPv6. Echo messages carry id 1, sequence 1.
    Icmp {
        type_: u8,
        code: u8,
    },
    /// A transport with ports that sg builds no full header for (SCTP,
    /// DCCP, UDP-Lite): the two ports, then zeros.
    Ports {
        protocol: u8,
        src_port: u16,
        dst_port: u16,
    },
    /// Any other IP protocol, with an opaque payload.
    Other {
        protocol: u8,
    },
    /// An IPv6 neighbour solicitation (135) or advertisement (136) for
    /// `target`, with the frame's source MAC as its link-layer address
    /// option; hop limit 255 as neighbour discovery requires.
    NeighbourDiscovery {
        type_: u8,
        target: Ipv6Addr,
    },
}

/// The TCP flags a traced packet carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

impl TcpFlags {
    pub const SYN: TcpFlags = TcpFlags {
        syn: true,
        ack: false,
        fin: false,
        rst: false,
    };
}

/// A packet to build a frame from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// 802.1Q tags, outermost first (at most two).
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub transport: Transport,
    /// Bytes of payload after the transport header.
    pub payload_len: usize,
}

/// Why a packet description cannot become a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(
        "source {src} and destination {dst} are of different IP versions; use two IPv4 or two IPv6 addresses"
    )]
    MixedFamilies { src: IpAddr, dst: IpAddr },
    #[error("vlan: {count} tags given; a frame carries at most 2")]
    TooManyVlans { count: usize },
    #[error("vlan: {id} is out of range; use 0-4095")]
    VlanId { id: u16 },
    #[error("the packet does not fit in a frame: {0}")]
    Build(String),
}

/// IPv4 time to live and IPv6 hop limit of built packets.
const TTL: u8 = 64;
/// ICMP echo identifier and sequence number of built packets.
const ECHO_ID_SEQ: [u8; 4] = [0, 1, 0, 1];
/// The only hop limit neighbour discovery accepts.
const ND_HOP_LIMIT: u8 = 255;
const NEIGHBOUR_ADVERT: u8 = 136;

impl Packet {
    /// A UDP packet between two addresses with made-up MAC addresses.
    pub fn udp(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Packet {
        Packet {
            src_mac: [0x02, 0, 0, 0, 0, 1],
            dst_mac: [0x02, 0, 0, 0, 0, 2],
            vlans: Vec::new(),
            src,
            dst,
            transport: Transport::Udp { src_port, dst_port },
            payload_len: 0,
        }
    }

    /// A TCP segment between two addresses with made-up MAC addresses.
    pub fn tcp(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16, flags: TcpFlags) -> Packet {
        Packet {
            transport: Transport::Tcp {
                src_port,
                dst_port,
                flags,
            },
            ..Packet::udp(src, dst, src_port, dst_port)
        }
    }

    /// The Ethernet frame, with valid lengths and checksums.
    pub fn frame(&self) -> Result<Vec<u8>, FrameError> {
        let ip = match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let header = Ipv4Header::new(0, TTL, IpNumber(0), src.octets(), dst.octets())
                    .map_err(|e| FrameError::Build(e.to_string()))?;
                IpHeaders::Ipv4(header, Ipv4Extensions::default())
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => IpHeaders::Ipv6(
                Ipv6Header {
                    traffic_class: 0,
                    flow_label: Ipv6FlowLabel::ZERO,
                    payload_length: 0,
                    next_header: IpNumber(0),
                    hop_limit: match self.transport {
                        Transport::NeighbourDiscovery { .. } => ND_HOP_LIMIT,
                        _ => TTL,
                    },
                    source: src.octets(),
                    destination: dst.octets(),
                },
                Ipv6Extensions::default(),
            ),
            (src, dst) => return Err(FrameError::MixedFamilies { src, dst }),
        };
        let vlan = |id: u16| VlanId::try_new(id).map_err(|_| FrameError::VlanId { id });
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let step = match self.vlans[..] {
            [] => eth.ip(ip),
            [outer] => eth.single_vlan(vlan(outer)?).ip(ip),
            [outer, inner] => eth.double_vlan(vlan(outer)?, vlan(inner)?).ip(ip),
            _ => {
                return Err(FrameError::TooManyVlans {
                    count: self.vlans.len(),
                });
            }
        };
        self.write(step, self.src.is_ipv4())
    }

    fn write(&self, step: PacketBuilderStep<IpHeaders>, v4: bool) -> Result<Vec<u8>, FrameError> {
        let payload = vec![0u8; self.payload_len];
        let mut out = Vec::with_capacity(128 + payload.len());
        let result = match self.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
            } => {
                let mut tcp = step.tcp(src_port, dst_port, 1, 65535);
                if flags.syn {
                    tcp = tcp.syn();
                }
                if flags.ack {
                    tcp = tcp.ack(1);
                }
                if flags.fin {
                    tcp = tcp.fin();
                }
                if flags.rst {
                    tcp = tcp.rst();
                }
                tcp.write(&mut out, &payload)
            }
            Transport::Udp { src_port, dst_port } => {
                step.udp(src_port, dst_port).write(&mut out, &payload)
            }
            Transport::Icmp { type_, code } if v4 => step
                .icmpv4_raw(type_, code, ECHO_ID_SEQ)
                .write(&mut out, &payload),
            Transport::Icmp { type_, code } => step
                .icmpv6_raw(type_, code, ECHO_ID_SEQ)
                .write(&mut out, &payload),
            Transport::Ports {
                protocol,
                src_port,
                dst_port,
            } => {
                let mut header = [src_port.to_be_bytes(), dst_port.to_be_bytes()].concat();
                header.resize(12, 0);
                header.extend_from_slice(&payload);
                step.write(&mut out, IpNumber(protocol), &header)
            }
            Transport::Other { protocol } => step.write(&mut out, IpNumber(protocol), &payload),
            Transport::NeighbourDiscovery { type_, target } => {
                // Advertisements: solicited and override; the option is the
                // target's link-layer address (2), else the source's (1).
                let (flags, option) = if type_ == NEIGHBOUR_ADVERT {
                    ([0x60, 0, 0, 0], 2)
                } else {
                    ([0; 4], 1)
                };
                let body = [&target.octets()[..], &[option, 1], &self.src_mac, &payload].concat();
                step.icmpv6_raw(type_, 0, flags).write(&mut out, &body)
            }
        };
        result.map_err(|e| FrameError::Build(e.to_string()))?;
        Ok(out)
    }
}

/// An ARP packet for IPv4 over Ethernet, in a frame of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arp {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// 1 request, 2 reply.
    pub operation: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

impl Arp {
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;

    /// A broadcast request from `mac` at `sender_ip` for `target_ip`.
    pub fn request(mac: [u8; 6], sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Arp {
        Arp {
            src_mac: mac,
            dst_mac: [0xff; 6],
            operation: Arp::REQUEST,
            sender_mac: mac,
            sender_ip,
            target_mac: [0; 6],
            target_ip,
        }
    }

    /// The Ethernet frame.
    pub fn frame(&self) -> Result<Vec<u8>, FrameError> {
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation(self.operation),
            &self.sender_mac,
            &self.sender_ip.octets(),
            &self.target_mac,
            &self.target_ip.octets(),
        )
        .map_err(|e| FrameError::Build(e.to_string()))?;
        let mut out = Vec::with_capacity(64);
        PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .arp(arp)
            .write(&mut out)
            .map_err(|e| FrameError::Build(e.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn builds_a_udp_frame_with_a_valid_ipv4_checksum() {
        let frame = Packet::udp(v4("198.18.0.1"), v4("198.18.0.2"), 1000, 53)
            .frame()
            .unwrap();
        assert_eq!(frame.len(), 14 + 20 + 8);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        let ip = Ipv4Header::from_slice(&frame[14..]).unwrap().0;
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        assert_eq!(ip.protocol, IpNumber::UDP);
    }

    #[test]
    fn tags_frames_with_up_to_two_vlans() {
        let mut packet = Packet::udp(v4("2001:db8::1"), v4("2001:db8::2"), 1, 2);
        packet.vlans = vec![10, 20];
        let frame = packet.frame().unwrap();
        assert_eq!(&frame[12..14], &[0x88, 0xa8]);
        assert_eq!(&frame[20..22], &[0x86, 0xdd]);
        packet.vlans.push(30);
        assert!(matches!(
            packet.frame(),
            Err(FrameError::TooManyVlans { count: 3 })
        ));
    }

    #[test]
    fn builds_arp_and_neighbour_discovery() {
        let arp = Arp::request(
            [2, 0, 0, 0, 0, 1],
            "198.18.0.2".parse().unwrap(),
            "198.18.0.1".parse().unwrap(),
        )
        .frame()
        .unwrap();
        assert_eq!(arp.len(), 14 + 28);
        assert_eq!(&arp[12..14], &[0x08, 0x06]);
        assert_eq!(&arp[14 + 14..14 + 18], &[198, 18, 0, 2]);

        let mut packet = Packet::udp(v4("fe80::1"), v4("ff02::1"), 0, 0);
        let target: Ipv6Addr = "2001:db8::2".parse().unwrap();
        packet.transport = Transport::NeighbourDiscovery {
            type_: NEIGHBOUR_ADVERT,
            target,
        };
        let frame = packet.frame().unwrap();
        let ip = 14;
        assert_eq!(frame[ip + 7], ND_HOP_LIMIT);
        assert_eq!(frame[ip + 40], NEIGHBOUR_ADVERT);
        assert_eq!(&frame[ip + 48..ip + 64], &target.octets());
        assert_eq!(&frame[ip + 64..ip + 66], &[2, 1]);
        assert_eq!(&frame[ip + 66..ip + 72], &packet.src_mac);
    }

    #[test]
    fn refuses_mixed_families() {
        let err = Packet::udp(v4("198.18.0.1"), v4("2001:db8::1"), 1, 2)
            .frame()
            .unwrap_err();
        assert!(err.to_string().contains("different IP versions"));
    }
}
