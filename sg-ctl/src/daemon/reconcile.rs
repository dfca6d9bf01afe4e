//! Bringing the datapath in line with the desired state.
//!
//! For every port the daemon records the compiler's input it last
//! installed (the port, its groups with their rules' counter ids, and the
//! members of every group its rules name as remote) and the policy id it
//! installed under. A port is recompiled only when that input changed or
//! the datapath no longer holds that id; so a membership change recompiles
//! only the ports whose rules name the group, and a restarted daemon adopts
//! the policies in force instead of reinstalling them (policy ids and rule
//! counters stay). Interfaces are attached with `datapath::attach`, which
//! leaves an attached one as it is; the port's security (its MAC, fixed IPs
//! and allowed address pairs, on unless `port_security: false`) is written
//! with its policy.

use std::{
    collections::{BTreeMap, HashMap},
    thread,
};

use ipnet::IpNet;
use serde::Serialize;
use sg_common::NO_POLICY;

use super::links::Awaited;
use super::{
    Daemon, Planned, Result,
    api::{ApiError, ErrorKind},
};
use crate::{
    datapath::{Attached, Datapath, DatapathError, WithoutPolicy, XdpModeArg},
    netns,
    store::PortState,
};
use sg_core::{
    capacity::{self, Install, Usage},
    compile,
    model::{Group, Policy, Port, Remote, Rule},
    port_security::PortSecurity,
    status::PortPhase,
};

/// What the compiled policy of one port depends on.
#[derive(Serialize)]
struct CompileInput<'a> {
    port: &'a Port,
    /// The port's groups in order, each with its rules' counter ids.
    groups: Vec<(&'a Group, Vec<u32>)>,
    /// The members of every group the rules name as remote.
    members: BTreeMap<&'a str, Vec<IpNet>>,
}

impl<'a> CompileInput<'a> {
    fn new(policy: &'a Policy, port: &'a Port, counters: &HashMap<(String, usize), u32>) -> Self {
        let groups: Vec<&Group> = port
            .groups
            .iter()
            .filter_map(|name| policy.group(name))
            .collect();
        let members = groups
            .iter()
            .flat_map(|group| &group.rules)
            .filter_map(|rule| match &rule.remote {
                Remote::Group(name) => Some((name.as_str(), policy.members(name))),
                _ => None,
            })
            .collect();
        let groups = groups
            .into_iter()
            .map(|group| {
                let ids = (0..group.rules.len())
                    .map(|index| counters[&(group.name.clone(), index)])
                    .collect();
                (group, ids)
            })
            .collect();
        Self {
            port,
            groups,
            members,
        }
    }
}

/// The compiler's input of `port`, as recorded with its installed policy.
fn input_of(policy: &Policy, port: &Port, counters: &HashMap<(String, usize), u32>) -> String {
    serde_json::to_string(&CompileInput::new(policy, port, counters))
        .expect("the compiler's input serializes")
}

/// Runs `f` on a thread of its own inside the network namespace `netns`
/// (the daemon's own when `None`): `setns` moves only the calling thread,
/// and the daemon's other threads stay where they are.
fn in_netns<T: Send>(
    netns: Option<&str>,
    f: impl FnOnce() -> Result<T, DatapathError> + Send,
) -> Result<T, DatapathError> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(name) = netns {
                    netns::enter(name)?;
                }
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The counter moves that keep each rule's counts with the rule when
/// counter ids change from `before` to `after` (id → group and rule):
/// `(to, from)`, from the id that counted the same rule of the same group,
/// or `None` (zeros) for a rule that is new, and for an id no rule has
/// any more. Ids that keep their rule are left alone.
pub(super) fn renumbering(
    before: &HashMap<u32, (String, Rule)>,
    after: &HashMap<u32, (String, Rule)>,
) -> Vec<(u32, Option<u32>)> {
    let mut sources: HashMap<&(String, Rule), Vec<u32>> = HashMap::new();
    let mut old: Vec<_> = before.iter().collect();
    old.sort_by_key(|(id, _)| **id);
    for (id, rule) in old {
        sources.entry(rule).or_default().push(*id);
    }
    let mut new: Vec<_> = after.iter().collect();
    new.sort_by_key(|(id, _)| **id);
    let mut moves = Vec::new();
    for (&id, rule) in new {
        let from = sources.get_mut(rule).and_then(|ids| {
            // The same id if it counted this rule, else the first.
            let at = ids.iter().position(|&old| old == id).unwrap_or(0);
            (!ids.is_empty()).then(|| ids.remove(at))
        });
        if from != Some(id) {
            moves.push((id, from));
        }
    }
    let mut gone: Vec<u32> = before
        .keys()
        .filter(|id| !after.contains_key(id))
        .copied()
        .collect();
    gone.sort_unstable();
    moves.extend(gone.into_iter().map(|id| (id, None)));
    moves
}

impl Daemon {
    /// Refuses a desired state (its effective `policy`, and what `check`
    /// planned for each port) whose ports' policies and port security would
    /// not fit the maps at some moment of their install, port by port in
    /// reconcile's order (see `sg_core::capacity`). The error names the map,
    /// what it would need and hold, and what needs the most of it.
    pub(super) fn check_room(&self, policy: &Policy, planned: &Planned) -> Result<()> {
        let internal = |e: DatapathError| ApiError::new(ErrorKind::Internal, e.to_string());
        let capacity = self.datapath.capacities().map_err(internal)?;
        let counters = compile::counter_ids(policy).map_err(ApiError::invalid)?;
        let installs = self.installs(policy, planned, &self.store.port_states()?, &counters);
        let Some(over) = capacity::overflow(&capacity::peak(&installs), &capacity) else {
            return Ok(());
        };
        let map = over.table.map_name();
        let cause = capacity::largest_need(policy, over.table)
            .map(|cause| format!("; {cause}"))
            .unwrap_or_default();
        Err(ApiError::invalid(format!(
            "{map} would need {} entries and holds {}{cause}: remove rules, remotes or ports, \
             or start the daemon with a larger --map-size {map}=ENTRIES (taken when the maps \
             are made, while no port is attached)",
            over.need, over.capacity
        )))
    }

    /// Each port of `policy` as it will be installed: what it takes of the
    /// maps now (as recorded) and after (`planned`), and whether its policy
    /// changes (its compiler input is not the one installed).
    fn installs(
        &self,
        policy: &Policy,
        planned: &Planned,
        states: &BTreeMap<String, PortState>,
        counters: &HashMap<(String, usize), u32>,
    ) -> Vec<Install> {
        policy
            .ports
            .iter()
            .filter(|port| self.is_local(port))
            .filter_map(|port| {
                let after = *planned.get(&port.name)?;
                let state = states
                    .get(&port.name)
                    .filter(|s| s.ifname == port.ifname && s.netns == port.netns);
                let (before, changed) = match state {
                    Some(state) if state.policy_id.is_some() => (
                        self.installed.get(&port.name).copied(),
                        state.applied.as_deref() != Some(&input_of(policy, port, counters)),
                    ),
                    // Nothing installed for it: a new port, or one whose
                    // install failed.
                    _ => (Some(Usage::default()), true),
                };
                Some(Install {
                    port: port.name.clone(),
                    before,
                    after,
                    changed,
                })
            })
            .collect()
    }

    /// Moves the rule counters with their rules when `counters` (of
    /// `policy`) numbers them differently from the last reconcile. A
    /// failure is logged: counts are not worth failing a change for.
    fn follow_counters(&mut self, policy: &Policy, counters: &HashMap<(String, usize), u32>) {
        let now: HashMap<u32, (String, Rule)> = counters
            .iter()
            .filter_map(|((group, index), &id)| {
                let rule = policy.group(group)?.rules.get(*index)?;
                Some((id, (group.clone(), rule.clone())))
            })
            .collect();
        if !self.counted.is_empty() && self.counted != now {
            let moves = renumbering(&self.counted, &now);
            if !moves.is_empty()
                && self.datapath.has_ports().unwrap_or(false)
                && let Err(e) = self.datapath.move_counters(&moves)
            {
                eprintln!("sg-ctl daemon: moving rule counters with their rules: {e}");
            }
        }
        self.counted = now;
    }

    /// Brings every port's datapath in line with the desired state and
    /// records each port's status. A port that fails (interface missing,
    /// maps full) is marked `error` with the reason and keeps what it had;
    /// the others go on. Reads see the outcome once it is whole.
    /// Another host's change in the store is taken first.
    pub(super) fn reconcile(&mut self) -> Result<()> {
        let result = self.refresh().and_then(|()| self.reconcile_ports());
        self.publish();
        result
    }

    fn reconcile_ports(&mut self) -> Result<()> {
        let policy = self.state.policy.effective(&self.state.settings);
        let counters = compile::counter_ids(&policy).map_err(ApiError::invalid)?;
        self.follow_counters(&policy, &counters);
        let states = self.store.port_states()?;

        for (name, state) in &states {
            let port = policy.port(name).filter(|port| self.is_local(port));
            let moved =
                port.is_none_or(|port| port.ifname != state.ifname || port.netns != state.netns);
            let mut detached = Ok(());
            // Whatever its state: a port whose install failed may be
            // attached all the same, one awaiting its interface has a slot.
            if moved {
                self.links
                    .awaited()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(state.netns.clone(), state.ifname.clone()));
                let result = in_netns(state.netns.as_deref(), || {
                    self.datapath.detach(&state.ifname)
                });
                match result {
                    Ok(())
                    | Err(DatapathError::NotAttached { .. })
                    | Err(DatapathError::Netns(netns::NetnsError::NotFound { .. })) => {
                        eprintln!("sg-ctl daemon: port {name}: detached {}", state.ifname);
                    }
                    Err(e) => {
                        let reason = format!("detaching {}: {e}", state.ifname);
                        eprintln!("sg-ctl daemon: port {name}: {reason}");
                        detached = Err(reason);
                    }
                }
            }
            // A deleted port's record stays until its filter is gone, with
            // the reason, so that the next pass tries again and an unplug
            // can say why.
            match (port, detached) {
                (None, Ok(())) => {
                    self.store.remove_port_state(name)?;
                    self.installed.remove(name);
                }
                (None, Err(reason)) => {
                    let failed = PortState {
                        phase: PortPhase::Error,
                        reason,
                        ..state.clone()
                    };
                    self.store.set_port_state(name, &failed)?;
                }
                (Some(_), _) => {}
            }
        }

        // The changing ports in the order `check_room` counted them, then
        // the others (each checked, and left as it is when it is in force).
        let installs = self.installs(&policy, &self.planned, &states, &counters);
        let mut order: Vec<&str> = capacity::install_order(&installs)
            .into_iter()
            .map(|install| install.port.as_str())
            .collect();
        let unchanged: Vec<&str> = policy
            .ports
            .iter()
            .filter(|port| self.is_local(port))
            .map(|port| port.name.as_str())
            .filter(|name| !order.contains(name))
            .collect();
        order.extend(unchanged);
        for port in order.into_iter().filter_map(|name| policy.port(name)) {
            let prior = states
                .get(&port.name)
                .filter(|state| state.ifname == port.ifname && state.netns == port.netns);
            let input = input_of(&policy, port, &counters);
            let awaited = self.links.awaited().clone();
            let flow_limit = port
                .max_flows
                .unwrap_or(self.state.settings.max_flows_per_port);
            let state = match install(
                &self.datapath,
                &awaited,
                (&policy, port),
                &counters,
                prior,
                input,
                flow_limit,
            ) {
                Ok(state) => {
                    if let Some(usage) = self.planned.get(&port.name) {
                        self.installed.insert(port.name.clone(), *usage);
                    }
                    state
                }
                Err(e) => PortState {
                    netns: port.netns.clone(),
                    ifname: port.ifname.clone(),
                    slot: prior.and_then(|p| p.slot),
                    policy_id: prior.and_then(|p| p.policy_id),
                    applied: prior.and_then(|p| p.applied.clone()),
                    phase: PortPhase::Error,
                    reason: e,
                },
            };
            let before = states.get(&port.name);
            if before.is_none_or(|b| b.policy_id != state.policy_id || b.reason != state.reason) {
                match state.phase {
                    PortPhase::Error => {
                        eprintln!("sg-ctl daemon: port {}: {}", port.name, state.reason);
                    }
                    _ => eprintln!(
                        "sg-ctl daemon: port {}: policy {} in force on {}",
                        port.name,
                        state.policy_id.unwrap_or_default(),
                        port.ifname
                    ),
                }
            }
            self.store.set_port_state(&port.name, &state)?;
        }
        let namespaces = policy
            .ports
            .iter()
            .filter(|port| self.is_local(port))
            .map(|p| p.netns.clone())
            .collect();
        self.links.follow(&namespaces);
        // The policies the ports' installs replaced, after one grace period
        // for them all (an install removes them earlier only when the maps
        // have no room for its policy beside them).
        if let Err(e) = self.datapath.remove_retired() {
            eprintln!("sg-ctl daemon: removing replaced policies: {e}");
        }
        // After the ports: attaching the first creates the maps.
        if let Err(e) = self
            .datapath
            .set_conntrack_timeouts(&self.state.settings.conntrack)
        {
            eprintln!("sg-ctl daemon: conntrack timeouts: {e}");
        }
        Ok(())
    }
}

/// Where a port's programs are.
enum Slot {
    Attached(u32),
    /// Prepared under the slot, its interface awaited (see `links`).
    Awaiting(u32),
}

/// Attaches the port's interface, or when it is not there yet prepares its
/// programs to be attached as it appears (or attaches those prepared if it
/// is there now); in the port's namespace.
fn attach(datapath: &Datapath, awaited: &Awaited, port: &Port) -> Result<Slot, DatapathError> {
    let place = (port.netns.clone(), port.ifname.clone());
    in_netns(port.netns.as_deref(), || {
        let mut awaited = awaited.lock().unwrap_or_else(|e| e.into_inner());
        let attached = match awaited.get_mut(&place) {
            Some(prepared) => datapath.attach_prepared(prepared),
            None => datapath.attach(&port.ifname, XdpModeArg::Auto, WithoutPolicy::Drop),
        };
        match attached {
            Ok(Attached::New { slot } | Attached::Already { slot }) => {
                awaited.remove(&place);
                Ok(Slot::Attached(slot))
            }
            Err(DatapathError::NoSuchInterface { .. }) => {
                let slot = match awaited.get(&place) {
                    Some(prepared) => prepared.slot(),
                    None => {
                        let prepared = datapath.prepare(
                            &port.ifname,
                            XdpModeArg::Auto,
                            WithoutPolicy::Drop,
                        )?;
                        let slot = prepared.slot();
                        awaited.insert(place, prepared);
                        slot
                    }
                };
                Ok(Slot::Awaiting(slot))
            }
            Err(e) => Err(e),
        }
    })
}

/// Attaches or prepares the port (see `attach`), sets the flows it may
/// hold, and installs its policy unless the one in force was compiled from
/// the same input.
fn install(
    datapath: &Datapath,
    awaited: &Awaited,
    (policy, port): (&Policy, &Port),
    counters: &HashMap<(String, usize), u32>,
    prior: Option<&PortState>,
    input: String,
    flow_limit: u32,
) -> Result<PortState, String> {
    let text = |e: DatapathError| e.to_string();
    let (slot, phase, reason) = match attach(datapath, awaited, port).map_err(text)? {
        Slot::Attached(slot) => (slot, PortPhase::Active, String::new()),
        Slot::Awaiting(slot) => (
            slot,
            PortPhase::Pending,
            format!(
                "its interface '{}' is not there yet; it is enforced as it appears",
                port.ifname
            ),
        ),
    };
    datapath.set_flow_limit(slot, flow_limit).map_err(text)?;
    let current = datapath.policy_of(slot).map_err(text)?;
    let done = |policy_id| PortState {
        netns: port.netns.clone(),
        ifname: port.ifname.clone(),
        slot: Some(slot),
        policy_id: Some(policy_id),
        applied: Some(input.clone()),
        phase,
        reason: reason.clone(),
    };
    if let Some(prior) = prior
        && current != NO_POLICY
        && prior.policy_id == Some(current)
        && prior.applied.as_ref() == Some(&input)
    {
        return Ok(done(current));
    }
    // The port's MAC, addresses and pairs are part of the input: port
    // security goes in with the policy.
    datapath
        .install_port_security(slot, &PortSecurity::from_port(port))
        .map_err(text)?;
    let (id, _) = datapath
        .install_policy(slot, |id| {
            compile::compile(policy, &port.name, id, counters).map_err(anyhow::Error::from)
        })
        .map_err(|e| e.to_string())?;
    Ok(done(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sg_core::model::Direction;

    /// Counter ids 1, 2, … of rules given by their port, all in group g.
    fn numbered(ports: &[u16]) -> HashMap<u32, (String, Rule)> {
        ports
            .iter()
            .enumerate()
            .map(|(i, &port)| {
                let rule = Rule {
                    ports: port.to_string().parse().unwrap(),
                    protocol: "tcp".parse().unwrap(),
                    ..Rule::new(Direction::Ingress)
                };
                (i as u32 + 1, ("g".to_string(), rule))
            })
            .collect()
    }

    #[test]
    fn counts_follow_their_rules_when_ids_change() {
        let before = numbered(&[22, 80, 443]);
        assert_eq!(renumbering(&before, &before), []);
        // The second rule deleted: the third's counts move up, the last id
        // is no rule's.
        assert_eq!(
            renumbering(&before, &numbered(&[22, 443])),
            [(2, Some(3)), (3, None)]
        );
        // A rule in front: every count moves down one; the new rule's id
        // starts from zero.
        assert_eq!(
            renumbering(&before, &numbered(&[8080, 22, 80, 443])),
            [(1, None), (2, Some(1)), (3, Some(2)), (4, Some(3))]
        );
        // A rule changed in place counts afresh.
        assert_eq!(renumbering(&before, &numbered(&[22, 81, 443])), [(2, None)]);
    }
}
