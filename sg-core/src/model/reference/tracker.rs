//! The reference tracker: what connection tracking makes of a sequence of
//! packets of one port, said as plainly as it can be, beside the matcher
//! (`evaluate`) it asks about each flow's first packet.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use super::{Packet, Verdict, evaluate, link_service};
use crate::model::{Action, Direction, Policy, PolicyError};

/// What the tracker makes of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracked {
    /// A packet of a tracked flow that fits it: it passes, whatever the
    /// rules of its direction say.
    Established,
    /// Dropped as invalid: TCP that does not fit its flow's state (`None`:
    /// no rule was asked), or TCP of no flow that cannot start one
    /// although the policy allows it (`Some`: the rule that allows it, or
    /// the default, was asked all the same).
    Invalid(Option<Verdict>),
    /// What the policy says ([`evaluate`]); allowed, a packet that may
    /// start a flow started one.
    Policy(Verdict),
    /// Dropped: a packet that would start a flow the policy allows (the
    /// rule that allows it, or the default), but the port holds as many
    /// flows as its limit.
    PortFull(Verdict),
}

/// The flows one port's connection table holds under one policy (the
/// datapath checks a flow again when the port's policy changes; this
/// model never changes it), and what each packet makes of them, in this
/// order:
///
/// 0. A link service (neighbour discovery, DHCP: [`link_service`]) is no
///    flow's: the policy decides it, by no rule.
/// 1. A packet of a tracked flow passes if it fits the flow, and is
///    invalid if not: only TCP can not fit (below).
/// 2. A packet that may start a flow goes to the policy and, if allowed,
///    starts it: an echo request, a TCP SYN alone (no ACK, RST or FIN),
///    and any packet of other protocols but ICMP.
/// 3. TCP of no flow: an RST goes to the policy; anything else that is no
///    SYN alone is invalid where the policy allows it, and what the
///    policy says where it does not.
/// 4. Other ICMP (an echo reply of no flow; errors, whose quotes this
///    model does not read; every other type): the policy alone.
///
/// Flows. ICMP echo (icmp of IPv4, ipv6-icmp of IPv6) as Linux keys it: the
/// end that asked, both addresses, the identifier and the code; requests
/// from that end and replies of the same code from the other belong to
/// it. Anything else: the protocol and both ends, with their ports for
/// tcp, udp, sctp, dccp and udplite. The port's side of a flow is the
/// source of what it sends (egress) and the destination of what it
/// receives.
///
/// TCP states. A SYN alone starts the flow in `SynSent`: the opener's SYN
/// (again) fits, the other end's SYN-ACK moves it to `SynReceived`. There
/// that SYN-ACK (again) fits, and the opener's ACK without SYN moves it to
/// `Open`. Nothing else fits those two. After them a SYN fits only as the
/// other end's SYN-ACK. A FIN that fits is remembered by its end; once
/// both ends sent one the flow is closed, and then a SYN alone from the
/// opener forgets it (the SYN is of no flow). An RST fits any state and
/// forgets the flow.
///
/// The port's limit: a packet that would start a flow while the port
/// holds as many flows as its limit starts none and is dropped. Timeouts
/// and a full table are not modelled.
#[derive(Debug, Default)]
pub struct Tracker {
    flows: HashMap<FlowId, Flow>,
    /// The flows the port may hold; `None`, no limit.
    limit: Option<usize>,
}

/// What identifies a flow.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FlowId {
    Echo {
        asker: Direction,
        local: IpAddr,
        remote: IpAddr,
        id: u16,
        code: u8,
    },
    Ends {
        protocol: u8,
        local: (IpAddr, Option<u16>),
        remote: (IpAddr, Option<u16>),
    },
}

/// A tracked flow: which way it started, and for TCP its state and the
/// ends that sent a FIN.
#[derive(Debug)]
struct Flow {
    origin: Direction,
    state: TcpState,
    fins: HashSet<Direction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcpState {
    SynSent,
    SynReceived,
    /// After the handshake (FINs aside).
    Open,
}

const TCP: u8 = 6;
const FIN: u8 = 1;
const SYN: u8 = 2;
const RST: u8 = 4;
const ACK: u8 = 16;

fn reverse(direction: Direction) -> Direction {
    match direction {
        Direction::Egress => Direction::Ingress,
        Direction::Ingress => Direction::Egress,
    }
}

/// The flow a packet going `direction` belongs to, if it may belong to
/// one, and whether it may start it (without TCP's flags, which
/// `Tracker::decide` looks at).
fn flow_of(direction: Direction, packet: &Packet) -> Option<(FlowId, bool)> {
    let (local, remote) = match direction {
        Direction::Egress => (packet.src, packet.dst),
        Direction::Ingress => (packet.dst, packet.src),
    };
    let (request, reply) = if local.is_ipv4() { (8, 0) } else { (128, 129) };
    match (packet.icmp, packet.echo_id) {
        (Some((kind, code)), Some(id)) if kind == request || kind == reply => {
            let asker = if kind == request {
                direction
            } else {
                reverse(direction)
            };
            let echo = FlowId::Echo {
                asker,
                local,
                remote,
                id,
                code,
            };
            Some((echo, kind == request))
        }
        (Some(_), _) => None,
        (None, _) => {
            let (local_port, remote_port) = match direction {
                Direction::Egress => (packet.src_port, packet.dst_port),
                Direction::Ingress => (packet.dst_port, packet.src_port),
            };
            let ends = FlowId::Ends {
                protocol: packet.protocol,
                local: (local, local_port),
                remote: (remote, remote_port),
            };
            Some((ends, true))
        }
    }
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// A tracker of a port that may hold `limit` flows.
    pub fn with_limit(limit: usize) -> Tracker {
        Tracker {
            limit: Some(limit),
            ..Tracker::default()
        }
    }

    /// The flows the port holds.
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// The flows the port may hold, if it has a limit.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// What the packet going `direction` through `port` is, and what it
    /// does to the flows.
    pub fn decide(
        &mut self,
        policy: &Policy,
        port: &str,
        direction: Direction,
        packet: &Packet,
    ) -> Result<Tracked, PolicyError> {
        let verdict = evaluate(policy, port, direction, packet)?;
        let service = policy
            .port(port)
            .and_then(|port| link_service(port, direction, packet));
        let Some((id, may_start)) = flow_of(direction, packet).filter(|_| service.is_none()) else {
            return Ok(Tracked::Policy(verdict));
        };
        let tcp = packet.protocol == TCP && packet.dst_port.is_some();
        let flags = if tcp { packet.tcp_flags } else { 0 };
        if let Some(flow) = self.flows.get_mut(&id) {
            let starts_over = tcp
                && flow.fins.len() == 2
                && direction == flow.origin
                && flags & (SYN | ACK | RST) == SYN;
            if !starts_over {
                return Ok(if tcp {
                    self.tcp_step(&id, direction, flags)
                } else {
                    Tracked::Established
                });
            }
            self.flows.remove(&id);
        }
        let starts = may_start && (!tcp || flags & (SYN | ACK | RST | FIN) == SYN);
        let allowed = verdict.action == Action::Allow;
        if starts && allowed {
            if self.limit.is_some_and(|limit| self.flows.len() >= limit) {
                return Ok(Tracked::PortFull(verdict));
            }
            self.flows.insert(
                id,
                Flow {
                    origin: direction,
                    state: TcpState::SynSent,
                    fins: HashSet::new(),
                },
            );
        }
        Ok(if tcp && !starts && flags & RST == 0 && allowed {
            Tracked::Invalid(Some(verdict))
        } else {
            Tracked::Policy(verdict)
        })
    }

    /// A TCP segment of the tracked flow `id`, going `direction`.
    fn tcp_step(&mut self, id: &FlowId, direction: Direction, flags: u8) -> Tracked {
        if flags & RST != 0 {
            self.flows.remove(id);
            return Tracked::Established;
        }
        let flow = self.flows.get_mut(id).expect("a tracked flow");
        let (syn, ack) = (flags & SYN != 0, flags & ACK != 0);
        let opener = direction == flow.origin;
        let syn_ack_back = syn && ack && !opener;
        match flow.state {
            TcpState::SynSent if opener && syn && !ack => {}
            TcpState::SynSent if syn_ack_back => flow.state = TcpState::SynReceived,
            TcpState::SynReceived if syn_ack_back => {}
            TcpState::SynReceived if opener && ack && !syn => flow.state = TcpState::Open,
            TcpState::SynSent | TcpState::SynReceived => return Tracked::Invalid(None),
            TcpState::Open if syn && !syn_ack_back => return Tracked::Invalid(None),
            TcpState::Open => {}
        }
        if flags & FIN != 0 {
            flow.fins.insert(direction);
        }
        Tracked::Established
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Group, Port, Rule};

    const WORKLOAD: &str = "198.18.0.2";
    const PEER: &str = "198.18.1.1";

    /// A port that lets echo requests of code 0 from the peer in, and UDP
    /// and TCP to port 53 out; nothing else.
    fn policy() -> Policy {
        let rule = |json: serde_json::Value| -> Rule { serde_json::from_value(json).unwrap() };
        let mut group = Group::empty("g").unwrap();
        group.rules = vec![
            rule(
                serde_json::json!({"direction": "ingress", "protocol": "icmp",
                "icmp": {"type": 8, "code": 0}, "remote": "198.18.1.1/32"}),
            ),
            rule(serde_json::json!({"direction": "egress", "protocol": "udp,tcp", "ports": "53"})),
        ];
        let mut port = Port::new("vm", "tap0", "02:00:00:00:00:02".parse().unwrap());
        port.ips = vec![WORKLOAD.parse().unwrap()];
        port.groups = vec!["g".into()];
        let policy = Policy {
            groups: vec![group],
            ports: vec![port],
        };
        policy.validate().unwrap();
        policy
    }

    fn ends(direction: Direction) -> (IpAddr, IpAddr) {
        let (workload, peer) = (WORKLOAD.parse().unwrap(), PEER.parse().unwrap());
        match direction {
            Direction::Egress => (workload, peer),
            Direction::Ingress => (peer, workload),
        }
    }

    fn echo(direction: Direction, kind: u8, code: u8, id: u16) -> Packet {
        let (src, dst) = ends(direction);
        Packet {
            src,
            dst,
            protocol: 1,
            src_port: None,
            dst_port: None,
            icmp: Some((kind, code)),
            echo_id: Some(id),
            tcp_flags: 0,
        }
    }

    /// UDP or TCP (with `flags`) between the workload's port 40000 and the
    /// peer's 53.
    fn ports(direction: Direction, protocol: u8, flags: u8) -> Packet {
        let (src, dst) = ends(direction);
        let (src_port, dst_port) = match direction {
            Direction::Egress => (40000, 53),
            Direction::Ingress => (53, 40000),
        };
        Packet {
            src,
            dst,
            protocol,
            src_port: Some(src_port),
            dst_port: Some(dst_port),
            icmp: None,
            echo_id: None,
            tcp_flags: flags,
        }
    }

    /// Runs the packets in turn; what each was, `E` established, `I`
    /// invalid, `P` allowed by the policy, `D` not, `F` allowed but the
    /// port full.
    fn run(packets: &[(Direction, Packet)]) -> String {
        run_with(Tracker::new(), packets)
    }

    fn run_with(mut tracker: Tracker, packets: &[(Direction, Packet)]) -> String {
        let policy = policy();
        packets
            .iter()
            .map(
                |(direction, packet)| match tracker.decide(&policy, "vm", *direction, packet) {
                    Ok(Tracked::Established) => 'E',
                    Ok(Tracked::Invalid(_)) => 'I',
                    Ok(Tracked::Policy(v)) if v.action == Action::Allow => 'P',
                    Ok(Tracked::Policy(_)) => 'D',
                    Ok(Tracked::PortFull(_)) => 'F',
                    Err(e) => panic!("{e}"),
                },
            )
            .collect()
    }

    const IN: Direction = Direction::Ingress;
    const OUT: Direction = Direction::Egress;

    #[test]
    fn echo_flows_are_keyed_by_asker_identifier_and_code() {
        let got = run(&[
            (IN, echo(IN, 0, 0, 7)),   // a reply before the request: no flow
            (IN, echo(IN, 8, 0, 7)),   // the request starts one
            (OUT, echo(OUT, 0, 0, 7)), // its reply
            (IN, echo(IN, 8, 0, 7)),   // the request again
            (IN, echo(IN, 8, 1, 7)),   // another code: no rule
            (IN, echo(IN, 0, 0, 7)),   // a reply going the request's way
            (OUT, echo(OUT, 0, 0, 8)), // another identifier
            (OUT, echo(OUT, 8, 0, 7)), // the workload asking: no rule out
        ]);
        assert_eq!(got, "DPEEDDDD");
    }

    #[test]
    fn udp_replies_pass_on_the_flow_an_allowed_packet_started() {
        let udp = |direction| ports(direction, 17, 0);
        assert_eq!(run(&[(IN, udp(IN)), (OUT, udp(OUT)), (IN, udp(IN))]), "DPE");
    }

    #[test]
    fn tcp_follows_the_handshake_and_starts_over_after_both_fins() {
        let tcp = |direction, flags| ports(direction, 6, flags);
        let got = run(&[
            (OUT, tcp(OUT, ACK)),       // no flow: allowed, but invalid
            (IN, tcp(IN, SYN)),         // no rule in
            (OUT, tcp(OUT, SYN)),       // starts the flow
            (OUT, tcp(OUT, SYN)),       // retransmitted
            (IN, tcp(IN, ACK)),         // not the SYN-ACK
            (IN, tcp(IN, SYN | ACK)),   // the SYN-ACK
            (OUT, tcp(OUT, ACK)),       // open
            (IN, tcp(IN, SYN)),         // a SYN after the handshake
            (IN, tcp(IN, FIN | ACK)),   // one FIN
            (OUT, tcp(OUT, FIN | ACK)), // both: closed
            (OUT, tcp(OUT, SYN)),       // starts over
            (IN, tcp(IN, RST)),         // ends it
            (IN, tcp(IN, ACK)),         // no flow, no rule in
        ]);
        assert_eq!(got, "IDPEIEEIEEPED");
    }

    #[test]
    fn a_port_at_its_limit_starts_no_flow_and_keeps_its_own() {
        let udp = |direction, port: u16| {
            let mut packet = ports(direction, 17, 0);
            match direction {
                Direction::Egress => packet.src_port = Some(port),
                Direction::Ingress => packet.dst_port = Some(port),
            }
            packet
        };
        let tcp = |direction, flags| ports(direction, 6, flags);
        let got = run_with(
            Tracker::with_limit(2),
            &[
                (OUT, udp(OUT, 1)),   // one flow
                (OUT, tcp(OUT, SYN)), // two
                (OUT, udp(OUT, 2)),   // a third: full
                (IN, udp(IN, 1)),     // the first's reply still passes
                (IN, tcp(IN, RST)),   // an RST ends the second
                (OUT, udp(OUT, 2)),   // room again
                (IN, udp(IN, 3)),     // no rule in: the policy's drop
            ],
        );
        assert_eq!(got, "PPFEEPD");
    }
}
