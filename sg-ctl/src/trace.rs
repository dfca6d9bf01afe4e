//! `sg-ctl trace`: what the port's real programs do with a packet
//! described on the command line, and why. A tracer instance of the
//! programs (see `Datapath::tracer`) runs on a frame built from the
//! description, through BPF_PROG_TEST_RUN, on the port's maps; it counts
//! nothing and records the classes and candidates it looked up.

use serde::Serialize;
use sg_common::{Direction, Outcome, TraceRecord, candidate};

use crate::{
    datapath::{Datapath, DatapathError, Forward, Result},
    frame::Packet,
};
use sg_core::{
    compile::counter_ids,
    model::{MacAddr, Policy, Rule},
};

/// What the programs did with the packet.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub direction: &'static str,
    pub forward: Forward,
    /// The counter the packet would have gone to.
    pub outcome: &'static str,
    /// The rule counter that decided (0: the default verdict), when the
    /// port's policy decided.
    pub rule_counter: Option<u32>,
    /// Which lookup found the deciding rule.
    pub matched_on: Option<&'static str>,
    /// The rule, when the policy is known.
    pub rule: Option<TracedRule>,
    /// Why, in a sentence.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TracedRule {
    pub group: String,
    /// Position in the group's rules, from 0.
    pub index: usize,
    pub rule: String,
}

/// Runs the packet through the programs of the port of `iface` (an
/// interface of the calling thread's namespace). With the policy in force
/// (`policy`, and the port's name in it), the deciding rule is named.
pub fn trace(
    datapath: &Datapath,
    iface: &str,
    direction: Direction,
    packet: &Packet,
    policy: Option<(&Policy, &str)>,
) -> Result<Trace> {
    let slot = datapath.slot_of(iface)?;
    // The workload's side of the frame carries the port's own MAC, as its
    // real traffic does, so that port security lets it by as it would.
    let mut packet = packet.clone();
    let security = datapath.port_security(slot)?;
    if let Some(&MacAddr(mac)) = security.macs.first() {
        match direction {
            Direction::Egress => packet.src_mac = mac,
            Direction::Ingress => packet.dst_mac = mac,
        }
    }
    let frame = packet.frame().map_err(|e| DatapathError::Frame {
        reason: e.to_string(),
    })?;
    let mut tracer = datapath.tracer(slot)?;
    let (forward, _, record) = tracer.trace(direction, &frame)?;
    Ok(explain(direction, forward, &record, policy))
}

fn explain(
    direction: Direction,
    forward: Forward,
    record: &TraceRecord,
    policy: Option<(&Policy, &str)>,
) -> Trace {
    let outcome = Outcome::ALL
        .iter()
        .copied()
        .find(|o| *o as u32 == record.outcome);
    let decided = record.best != candidate::NONE;
    let counter = decided.then_some(candidate::counter(record.best));
    let matched_on =
        (decided && counter != Some(0)).then_some(if record.best == record.pair_best {
            "remote address and protocol/port"
        } else if record.best == record.remote_best && record.best == record.l4_best {
            "nothing: the rule matches every packet"
        } else if record.best == record.remote_best {
            "remote address (any protocol)"
        } else {
            "protocol/port (any remote address)"
        });
    let rule = counter
        .filter(|&c| c != 0)
        .and_then(|c| policy.and_then(|(policy, port)| find_rule(policy, port, c)));
    let reason = reason(direction, outcome, counter, &rule);
    Trace {
        direction: direction.name(),
        forward,
        outcome: outcome.map_or("none", Outcome::name),
        rule_counter: counter,
        matched_on,
        rule,
        reason,
    }
}

fn reason(
    direction: Direction,
    outcome: Option<Outcome>,
    counter: Option<u32>,
    rule: &Option<TracedRule>,
) -> String {
    let Some(outcome) = outcome else {
        return "the programs counted no outcome".to_string();
    };
    let named = |counter: u32| match rule {
        Some(r) => format!("rule {}[{}] ({})", r.group, r.index, r.rule),
        None => format!("rule counter {counter}"),
    };
    match (outcome, counter) {
        (Outcome::PassNonIp, _) => "not IPv4 or IPv6: no rule applies (ARP, LLDP, …)".into(),
        (Outcome::PassNeighbourDiscovery, _) => {
            "IPv6 neighbour discovery and MLD pass whatever the rules".into()
        }
        (Outcome::PassDhcp, _) => match direction {
            Direction::Egress => "the workload's DHCP client request passes whatever the rules",
            Direction::Ingress => {
                "a DHCP server's reply toward the workload passes whatever the rules \
                 (the port accepts this server)"
            }
        }
        .into(),
        (Outcome::DropDhcpServer, _) => match direction {
            Direction::Egress => "port security: the workload may not answer as a DHCP server",
            Direction::Ingress => {
                "a DHCP server's reply from a server the port does not accept (its dhcp_servers)"
            }
        }
        .into(),
        (Outcome::DropBlocked, _) => {
            "the workload's address is in a blocked prefix of the port (`sg-ctl status`)".into()
        }
        (Outcome::DropMalformed, _) => "a header is cut short or invalid".into(),
        (Outcome::DropExtHeaders, _) => "more IPv6 extension headers than sg walks".into(),
        (Outcome::DropVlanTags, _) => "more VLAN tags than sg strips".into(),
        (Outcome::DropFragment, _) => {
            "a later fragment whose first fragment the port has not seen".into()
        }
        (Outcome::DropNoPolicy, _) => {
            "the port has no policy in force, so it drops everything: it is being attached or \
             detached, or its policy is not installed yet (`sg-ctl port list` shows why)"
                .into()
        }
        (Outcome::Pass, None) => {
            "the port has no policy and was attached by `sg-ctl attach`: only its blocklist \
             and port security apply"
                .into()
        }
        (Outcome::Pass, Some(0)) => format!(
            "no rule matches; {} is open because a group has egress open until its first egress rule and none has one",
            direction.name()
        ),
        (Outcome::DropDefault, _) => format!(
            "no rule matches: {} is denied unless a rule allows it",
            direction.name()
        ),
        (Outcome::Pass, Some(c)) => format!("{} allows it, the first rule that matches", named(c)),
        (Outcome::DropRule, Some(c)) => format!(
            "{} drops it, the first rule that matches (a reject rule's packet that may get no reply is dropped too)",
            named(c)
        ),
        (Outcome::Reject, Some(c)) => format!(
            "{} rejects it, the first rule that matches: the sender gets a TCP RST or an ICMP administratively prohibited",
            named(c)
        ),
        (outcome, _) => format!("counted as {}", outcome.name()),
    }
}

/// The rule behind a rule counter, with the ids `compile` gives.
fn find_rule(policy: &Policy, port: &str, counter: u32) -> Option<TracedRule> {
    policy.port(port)?;
    let ids = counter_ids(policy).ok()?;
    let (group, index) = ids.into_iter().find(|(_, id)| *id == counter)?.0;
    let rule = &policy.group(&group)?.rules[index];
    Some(TracedRule {
        group,
        index,
        rule: describe(rule),
    })
}

/// A rule in one line: direction, action, what it matches.
pub fn describe(rule: &Rule) -> String {
    let mut out = format!("{} {} {}", rule.direction, rule.action, rule.protocol);
    if !rule.ports.is_any() {
        out += &format!(" ports {}", rule.ports);
    }
    if let Some(type_) = rule.icmp.type_ {
        out += &format!(" type {type_}");
        if let Some(code) = rule.icmp.code {
            out += &format!(" code {code}");
        }
    }
    out += &format!(" remote {}", rule.remote);
    if !rule.local.is_empty() {
        let local: Vec<String> = rule.local.iter().map(ToString::to_string).collect();
        out += &format!(" local {}", local.join(","));
    }
    out += &format!(" priority {}", rule.priority);
    out
}
