//! The tables (and lines) the commands print without `-o json`. Text from
//! users (descriptions, interface names, reasons that quote them) is
//! printed escaped: it may hold what drives a terminal.

use std::{
    io::{self, Write},
    net::IpAddr,
};

use ipnet::IpNet;
use serde::Serialize;
use sg_core::{
    access::TokenInfo,
    model::{AddressPair, IpProtocol, ProtocolInfo},
    preset::PRESETS,
    text::escaped,
};
use sg_ctl::{
    daemon::api::{Action, Applied, GroupView, PortView},
    datapath::{
        CounterRow, Forward, PortSecurityStatus, PortStats, PortStatus, WithoutPolicy,
        conntrack::{ConntrackStats, Flow, FlowEvent},
    },
    frame::{Packet, Transport},
    trace::Trace,
};

/// The warning for a pair said to be wide on purpose.
pub fn wide_pair(port: &str, pair: &AddressPair) {
    eprintln!(
        "warning: with the pair {}, port {port} is a member of every address in it: rules \
         with `remote: {{group}}` of its groups match them all",
        pair.ip
    );
}

pub fn join(prefixes: &[IpNet]) -> String {
    prefixes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// An end of a flow or packet: address and port.
fn end(addr: IpAddr, port: Option<u16>) -> String {
    match (addr, port) {
        (IpAddr::V6(addr), Some(port)) => format!("[{addr}]:{port}"),
        (addr, Some(port)) => format!("{addr}:{port}"),
        (addr, None) => addr.to_string(),
    }
}

/// `status`: every attached port with its blocked prefixes, port security
/// and counters.
pub fn status(ports: &[PortStatus]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if ports.is_empty() {
        writeln!(out, "no ports attached")?;
        return Ok(());
    }
    for port in ports {
        writeln!(
            out,
            "{} (ifindex {}, netns {}, slot {}): {}, xdp {}",
            port.interface, port.ifindex, port.netns, port.slot, port.state, port.xdp_mode
        )?;
        let blocked = if port.blocked.is_empty() {
            "none".to_string()
        } else {
            join(&port.blocked)
        };
        let policy = match (port.policy, port.without_policy) {
            (Some(id), _) => format!("{id}"),
            (None, WithoutPolicy::Drop) => "none: drops everything until one is in force".into(),
            (None, WithoutPolicy::Pass) => "none: its blocklist and port security only".into(),
        };
        writeln!(out, "  policy: {policy}")?;
        writeln!(out, "  blocked: {blocked}")?;
        port_security(&mut out, &port.port_security)?;
        counters(&mut out, &port.counters)?;
    }
    Ok(())
}

fn port_security(out: &mut impl Write, security: &PortSecurityStatus) -> io::Result<()> {
    if !security.enabled {
        return writeln!(out, "  port security: off");
    }
    let macs: Vec<String> = security.macs.iter().map(ToString::to_string).collect();
    let mut allowed = Vec::new();
    if security.allow_vlan {
        allowed.push("vlan tags");
    }
    if security.allow_multicast {
        allowed.push("multicast");
    }
    let allowed = if allowed.is_empty() {
        String::new()
    } else {
        format!(", allows {}", allowed.join(" and "))
    };
    writeln!(
        out,
        "  port security: on, macs {}{allowed}",
        macs.join(", ")
    )?;
    for owned in &security.owned {
        let macs: Vec<String> = owned.macs.iter().map(ToString::to_string).collect();
        writeln!(out, "    owns {} with {}", owned.prefix, macs.join(", "))?;
    }
    Ok(())
}

fn counters(out: &mut impl Write, counters: &[CounterRow]) -> io::Result<()> {
    if counters.is_empty() {
        writeln!(out, "  no packets yet")?;
    }
    for c in counters {
        writeln!(
            out,
            "  {:<8} {:<26} {:>12} packets {:>14} bytes",
            c.direction, c.outcome, c.packets, c.bytes
        )?;
    }
    Ok(())
}

/// `stats`: the counters of every port, or of one.
pub fn stats(ports: &[PortStats]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if ports.is_empty() {
        writeln!(out, "no ports attached")?;
    }
    for port in ports {
        writeln!(
            out,
            "{} (slot {}, netns {})",
            port.interface, port.slot, port.netns
        )?;
        counters(&mut out, &port.counters)?;
    }
    Ok(())
}

/// Tracked flows, from the pins or from the daemon.
pub fn flows(flows: &[Flow]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if flows.is_empty() {
        writeln!(out, "no flows")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<12} {:<18} {:<40} {:<40} {:<12} {:<8} {:>16} {:>16} {:>8}",
        "PORT",
        "PROTO",
        "LOCAL",
        "REMOTE",
        "STATE",
        "ORIGIN",
        "OUT pkts/bytes",
        "IN pkts/bytes",
        "EXPIRES"
    )?;
    for flow in flows {
        writeln!(
            out,
            "{:<12} {:<18} {:<40} {:<40} {:<12} {:<8} {:>16} {:>16} {:>7}s",
            flow.interface,
            flow.ends.protocol_label(),
            end(flow.ends.local, flow.ends.local_port),
            end(flow.ends.remote, flow.ends.remote_port),
            flow.state,
            flow.origin,
            format!("{}/{}", flow.packets_egress, flow.bytes_egress),
            format!("{}/{}", flow.packets_ingress, flow.bytes_ingress),
            flow.expires_in_seconds,
        )?;
    }
    Ok(())
}

/// `conntrack stats`: the table's fill and the conntrack outcomes.
pub fn conntrack_stats(stats: &ConntrackStats) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "entries {} of {} ({:.1}%)",
        stats.entries, stats.capacity, stats.pressure
    )?;
    writeln!(
        out,
        "new {}  established {}  related {}  invalid {}  full {}  port-full {}  revoked {}",
        stats.new,
        stats.established,
        stats.related,
        stats.invalid,
        stats.full,
        stats.port_full,
        stats.revoked
    )
}

/// One line of `conntrack watch`.
pub fn flow_event(out: &mut impl Write, event: &FlowEvent) -> io::Result<()> {
    let ends = &event.ends;
    writeln!(
        out,
        "{:<8} slot {:<4} {:<18} {} {}",
        event.event,
        ends.slot,
        ends.protocol_label(),
        end(ends.local, ends.local_port),
        end(ends.remote, ends.remote_port)
    )
}

pub fn protocols(protocols: &[ProtocolInfo]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:>3}  {:<16} {:<6} {:<5} {:<6} ALIASES",
        "NUM", "NAME", "PORTS", "ICMP", "FAMILY"
    )?;
    for p in protocols.iter().filter(|p| p.name.is_some()) {
        let yes = |b: bool| if b { "yes" } else { "-" };
        writeln!(
            out,
            "{:>3}  {:<16} {:<6} {:<5} {:<6} {}",
            p.number,
            p.name.unwrap_or_default(),
            yes(p.ports),
            yes(p.icmp),
            p.ethertype,
            p.aliases.join(",")
        )?;
    }
    writeln!(out, "(numbers without a name are accepted too: any 0-255)")
}

pub fn presets() -> io::Result<()> {
    let mut out = io::stdout().lock();
    for preset in PRESETS {
        writeln!(out, "{:<12} {}", preset.name, preset.description)?;
    }
    Ok(())
}

pub fn groups(groups: &[GroupView]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:<20} {:>4} {:>5} {:<6} {:<8} {:<20} DESCRIPTION",
        "NAME", "REV", "RULES", "PUBLIC", "STATUS", "PORTS"
    )?;
    for view in groups {
        writeln!(
            out,
            "{:<20} {:>4} {:>5} {:<6} {:<8} {:<20} {}",
            view.spec.name,
            view.revision,
            view.spec.rules.len(),
            if view.spec.public { "yes" } else { "no" },
            view.status.state.to_string(),
            view.ports.join(","),
            escaped(&view.spec.description)
        )?;
    }
    Ok(())
}

pub fn group(view: &GroupView) -> io::Result<()> {
    let group = &view.spec;
    let mut out = io::stdout().lock();
    writeln!(out, "group {} (revision {})", group.name, view.revision)?;
    if !group.description.is_empty() {
        writeln!(out, "  description: {}", escaped(&group.description))?;
    }
    writeln!(out, "  public: {}", group.public)?;
    if group.egress_open_until_first_rule {
        writeln!(out, "  egress open until the first egress rule")?;
    }
    if !group.external_members.is_empty() {
        writeln!(out, "  external members: {}", join(&group.external_members))?;
    }
    let ports = if view.ports.is_empty() {
        "none".into()
    } else {
        view.ports.join(", ")
    };
    writeln!(out, "  ports: {ports}")?;
    let reason = if view.status.reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", escaped(&view.status.reason))
    };
    writeln!(out, "  status: {}{reason}", view.status.state)?;
    rules(view)
}

/// A group's rules with their indexes and, once ports are attached, the
/// packets each decided.
pub fn rules(view: &GroupView) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:>3}  {:<8} {:<5} {:<10} {:<12} {:<28} {:<7} {:>5} {:>10}  DESCRIPTION",
        "#", "DIR", "ETHER", "PROTO", "PORTS/ICMP", "REMOTE", "ACTION", "PRIO", "PACKETS"
    )?;
    for (index, rule) in view.spec.rules.iter().enumerate() {
        let packets = view
            .hits
            .get(index)
            .map_or("-".to_string(), |hits| hits.packets.to_string());
        let l4 = match (rule.icmp.type_, rule.icmp.code) {
            (Some(t), Some(c)) => format!("type {t} code {c}"),
            (Some(t), None) => format!("type {t}"),
            _ => rule.ports.to_string(),
        };
        writeln!(
            out,
            "{index:>3}  {:<8} {:<5} {:<10} {:<12} {:<28} {:<7} {:>5} {packets:>10}  {}",
            rule.direction.to_string(),
            rule.ethertype.to_string(),
            rule.protocol.to_string(),
            l4,
            rule.remote.to_string(),
            rule.action.to_string(),
            rule.priority,
            escaped(&rule.description)
        )?;
    }
    Ok(())
}

pub fn ports(ports: &[PortView]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:<16} {:<16} {:<12} {:<17} {:<24} {:<20} {:>6}  STATUS",
        "NAME", "IFACE", "NETNS", "MAC", "IPS", "GROUPS", "POLICY"
    )?;
    for view in ports {
        let port = &view.spec;
        let ips: Vec<String> = port.ips.iter().map(ToString::to_string).collect();
        let status = if view.status.reason.is_empty() {
            view.status.state.to_string()
        } else {
            format!("{}: {}", view.status.state, escaped(&view.status.reason))
        };
        writeln!(
            out,
            "{:<16} {:<16} {:<12} {:<17} {:<24} {:<20} {:>6}  {status}",
            port.name,
            escaped(&port.ifname),
            escaped(port.netns.as_deref().unwrap_or("-")),
            port.mac.to_string(),
            ips.join(","),
            port.groups.join(","),
            view.policy_id.map_or("-".into(), |id| id.to_string()),
        )?;
    }
    Ok(())
}

/// What `apply` changed or, in a dry run, would change: `+`, `~` or `-`
/// per object, with the fields that differ.
pub fn applied(applied: &Applied) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if applied.changes.is_empty() {
        writeln!(out, "no changes")?;
    }
    for change in &applied.changes {
        let sign = match change.action {
            Action::Create => '+',
            Action::Update => '~',
            Action::Delete => '-',
        };
        let fields = if change.fields.is_empty() {
            String::new()
        } else {
            format!(" ({})", change.fields.join(", "))
        };
        writeln!(out, "{sign} {} {}{fields}", change.kind, change.name)?;
    }
    if applied.dry_run && !applied.changes.is_empty() {
        writeln!(out, "dry run: nothing changed")?;
    }
    Ok(())
}

pub fn tokens(tokens: &[TokenInfo]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{:<14} {:<7} CREATED (unix time)", "ID", "ROLE")?;
    for token in tokens {
        let role = serde_json::to_value(token.role)?;
        let role = role.as_str().unwrap_or_default();
        writeln!(out, "{:<14} {role:<7} {}", token.id, token.created)?;
    }
    Ok(())
}

/// A value as YAML, as `apply` reads it.
pub fn yaml<T: Serialize + ?Sized>(value: &T) -> io::Result<()> {
    let text = serde_norway::to_string(value).map_err(io::Error::other)?;
    print!("{text}");
    Ok(())
}

/// A packet of `trace` in a line: protocol, flags or ICMP type, ends.
pub fn packet(packet: &Packet) -> String {
    let (what, sport, dport) = match packet.transport {
        Transport::Tcp {
            src_port,
            dst_port,
            flags,
        } => {
            let names: Vec<&str> = [
                (flags.syn, "SYN"),
                (flags.ack, "ACK"),
                (flags.fin, "FIN"),
                (flags.rst, "RST"),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect();
            (
                format!("tcp [{}]", names.join(",")),
                Some(src_port),
                Some(dst_port),
            )
        }
        Transport::Udp { src_port, dst_port } => ("udp".into(), Some(src_port), Some(dst_port)),
        Transport::Ports {
            protocol,
            src_port,
            dst_port,
        } => (
            IpProtocol(protocol).to_string(),
            Some(src_port),
            Some(dst_port),
        ),
        Transport::Icmp { type_, code } => (format!("icmp type {type_} code {code}"), None, None),
        Transport::NeighbourDiscovery { type_, target } => (
            format!("ipv6-icmp type {type_} target {target}"),
            None,
            None,
        ),
        Transport::Other { protocol } => (IpProtocol(protocol).to_string(), None, None),
    };
    format!(
        "{what} {} → {}",
        end(packet.src, sport),
        end(packet.dst, dport)
    )
}

/// `trace`: the verdict, the rule that decided, and why.
pub fn trace(iface: &str, packet: &Packet, traced: &Trace) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{iface} {}: {}",
        traced.direction,
        self::packet(packet)
    )?;
    let verdict = match traced.forward {
        Forward::Pass => "pass",
        Forward::Drop => "drop",
        Forward::Reply => "reject (the sender gets the reply)",
    };
    writeln!(out, "verdict:  {verdict} (counted as {})", traced.outcome)?;
    if let Some(rule) = &traced.rule {
        writeln!(
            out,
            "rule:     {}[{}] {}",
            rule.group, rule.index, rule.rule
        )?;
    } else if let Some(counter) = traced.rule_counter.filter(|&c| c != 0) {
        writeln!(
            out,
            "rule:     counter {counter} (trace a daemon's port to see its name)"
        )?;
    }
    if let Some(matched) = traced.matched_on {
        writeln!(out, "matched:  {matched}")?;
    }
    writeln!(out, "why:      {}", traced.reason)
}
