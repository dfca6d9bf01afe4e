//! What reads are served from: the desired state, the ports' states and
//! the tokens as the last commit or reconcile left them, published by the
//! daemon after each, with the datapath for counters and flows. A read
//! takes no lock of the daemon's, so it never waits behind a change or a
//! reconcile, however many ports those touch.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use super::{
    Hits, Result,
    api::{
        ApiError, Document, ErrorKind, FlowQuery, GroupView, Phase, PortCounter, PortStatus,
        PortView, RuleRef, Status,
    },
    find_rule, no_group, no_port, require,
};
use crate::{
    datapath::{
        Datapath,
        conntrack::{Flow, FlowFilter},
    },
    store::{PortState, State, StoreHealth, token_digest},
};
use sg_core::{
    access::{Role, TokenInfo},
    flow::FlowState,
    model::{Group, Port, Rule},
    settings::Settings,
};

/// The daemon's state as the last commit or reconcile left it.
pub struct View {
    pub(super) state: State,
    pub(super) port_states: BTreeMap<String, PortState>,
    pub(super) tokens: Vec<TokenInfo>,
    /// Each token's role, by its digest.
    pub(super) roles: HashMap<String, Role>,
    pub(super) datapath: Arc<Datapath>,
    pub(super) store: StoreHealth,
}

/// The view in force, swapped whole by the daemon.
#[derive(Clone)]
pub struct Views(Arc<RwLock<Arc<View>>>);

impl Views {
    pub(super) fn new(view: View) -> Views {
        Views(Arc::new(RwLock::new(Arc::new(view))))
    }

    /// The view now; it stays as it is while the caller reads it.
    pub fn current(&self) -> Arc<View> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn publish(&self, view: View) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(view);
    }
}

impl View {
    /// The role of a token; `None` for one no one made.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        self.roles.get(&token_digest(token)).copied()
    }

    pub fn groups(&self, role: Role) -> Result<Vec<GroupView>> {
        require(role, Role::Anonymous)?;
        let states = &self.port_states;
        let hits = self.rule_hits();
        Ok(self
            .state
            .policy
            .groups
            .iter()
            .filter(|group| role >= Role::Viewer || group.public)
            .map(|group| self.group_view(role, group, states, &hits))
            .collect())
    }

    pub fn group(&self, role: Role, name: &str) -> Result<GroupView> {
        require(role, Role::Anonymous)?;
        match self.state.policy.group(name) {
            Some(group) if role >= Role::Viewer || group.public => {
                Ok(self.group_view(role, group, &self.port_states, &self.rule_hits()))
            }
            Some(_) => Err(ApiError::new(
                ErrorKind::Unauthenticated,
                format!(
                    "group '{name}' is not public; reading it needs a viewer or owner token \
                     (--token, or SG_TOKEN) or root"
                ),
            )),
            None => Err(no_group(name)),
        }
    }

    /// A group with its ports, status and rule hits; an anonymous client
    /// is shown neither port names nor reasons nor hits, which speak of
    /// ports.
    fn group_view(
        &self,
        role: Role,
        group: &Group,
        states: &BTreeMap<String, PortState>,
        hits: &HashMap<String, Vec<Hits>>,
    ) -> GroupView {
        let ports: Vec<&Port> = self
            .state
            .policy
            .ports
            .iter()
            .filter(|port| port.groups.contains(&group.name))
            .collect();
        let mut status = Status {
            state: if ports.is_empty() {
                Phase::Na
            } else {
                Phase::Active
            },
            reason: String::new(),
        };
        let mut reasons = Vec::new();
        let mut port_status = Vec::new();
        for port in &ports {
            let one = self.port_status(port, states);
            status.state = status.state.max(one.state);
            if !one.reason.is_empty() && one.state != Phase::Remote {
                reasons.push(format!("port {}: {}", port.name, one.reason));
            }
            port_status.push(PortStatus {
                port: port.name.clone(),
                status: one,
            });
        }
        status.reason = reasons.join("; ");
        let mut ports: Vec<String> = ports.iter().map(|port| port.name.clone()).collect();
        let mut hits = hits.get(&group.name).cloned().unwrap_or_default();
        if role < Role::Viewer {
            ports.clear();
            port_status.clear();
            status.reason.clear();
            hits.clear();
        }
        GroupView {
            revision: self.state.group_revisions[&group.name],
            spec: group.clone(),
            ports,
            status,
            port_status,
            hits,
        }
    }

    /// Rule `at` of a group, as readable as its group.
    pub fn rule(&self, role: Role, name: &str, at: &RuleRef) -> Result<Rule> {
        let view = self.group(role, name)?;
        let index = find_rule(&view.spec, at)?;
        Ok(view.spec.rules[index].clone())
    }

    pub fn ports(&self, role: Role) -> Result<Vec<PortView>> {
        require(role, Role::Viewer)?;
        Ok(self
            .state
            .policy
            .ports
            .iter()
            .map(|port| self.port_view(port, &self.port_states))
            .collect())
    }

    pub fn port(&self, role: Role, name: &str) -> Result<PortView> {
        require(role, Role::Viewer)?;
        let port = self.state.policy.port(name).ok_or_else(|| no_port(name))?;
        Ok(self.port_view(port, &self.port_states))
    }

    /// The tracked flows of an attached port, oldest first, that `query`
    /// takes.
    pub fn flows(&self, role: Role, name: &str, query: FlowQuery) -> Result<Vec<Flow>> {
        require(role, Role::Viewer)?;
        let protocol = query
            .protocol
            .map(|p| p.parse().map_err(ApiError::invalid))
            .transpose()?;
        let flow_state = query
            .state
            .map(|s| {
                s.parse::<FlowState>()
                    .map_err(|e| ApiError::invalid(format!("state: {e}")))
            })
            .transpose()?;
        self.state.policy.port(name).ok_or_else(|| no_port(name))?;
        let state = self.port_states.get(name);
        let Some(slot) = state.and_then(|s| s.slot) else {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "port '{name}' is not attached ({}): it has no flows; `sg-ctl port show \
                     {name}` tells why",
                    state.map_or("pending".into(), |s| s.reason.clone())
                ),
            ));
        };
        let filter = FlowFilter {
            slot: Some(slot),
            address: query.address,
            protocol,
            state: flow_state,
        };
        self.datapath
            .flows(&filter)
            .map_err(|e| ApiError::new(ErrorKind::Internal, format!("{e:#}")))
    }

    /// What the datapath counted on a port, per direction and outcome;
    /// none while it has no slot.
    pub fn port_stats(&self, role: Role, name: &str) -> Result<Vec<PortCounter>> {
        require(role, Role::Viewer)?;
        self.state.policy.port(name).ok_or_else(|| no_port(name))?;
        let Some(slot) = self.port_states.get(name).and_then(|s| s.slot) else {
            return Ok(Vec::new());
        };
        let mut counters = Vec::new();
        for direction in sg_common::Direction::ALL {
            for outcome in sg_common::Outcome::ALL {
                let counter = self
                    .datapath
                    .counter(slot, direction, outcome)
                    .map_err(|e| ApiError::new(ErrorKind::Internal, format!("{e:#}")))?;
                if counter.packets > 0 {
                    counters.push(PortCounter {
                        direction: direction.name().into(),
                        outcome: outcome.name().into(),
                        packets: counter.packets,
                        bytes: counter.bytes,
                    });
                }
            }
        }
        Ok(counters)
    }

    fn port_view(&self, port: &Port, states: &BTreeMap<String, PortState>) -> PortView {
        let state = states.get(&port.name).filter(|_| self.is_local(port));
        PortView {
            revision: self.state.port_revisions[&port.name],
            spec: port.clone(),
            status: self.port_status(port, states),
            policy_id: state.and_then(|s| s.policy_id),
        }
    }

    /// Whether this host's daemon enforces `port`.
    fn is_local(&self, port: &Port) -> bool {
        port.host == self.store.host
    }

    /// A port's phase here, or where it is enforced.
    fn port_status(&self, port: &Port, states: &BTreeMap<String, PortState>) -> Status {
        if !self.is_local(port) {
            let host = port.host.as_deref().unwrap_or_default();
            let up = self.store.hosts.iter().any(|h| h.name == host && h.up);
            return Status {
                state: Phase::Remote,
                reason: if up {
                    format!("enforced on host {host}")
                } else {
                    format!(
                        "on host {host}, which is down (its daemon holds no lease); its \
                         datapath keeps the last policy until the port is deleted"
                    )
                },
            };
        }
        let state = states.get(&port.name);
        Status {
            state: state.map_or(Phase::Pending, |s| s.phase.into()),
            reason: state.map(|s| s.reason.clone()).unwrap_or_default(),
        }
    }

    /// The store and the hosts sharing it.
    pub fn status(&self, role: Role) -> Result<StoreHealth> {
        require(role, Role::Viewer)?;
        Ok(self.store.clone())
    }

    pub fn settings(&self, role: Role) -> Result<Settings> {
        require(role, Role::Viewer)?;
        Ok(self.state.settings.clone())
    }

    pub fn export(&self, role: Role) -> Result<Document> {
        require(role, Role::Viewer)?;
        Ok(Document {
            groups: self.state.policy.groups.clone(),
            ports: self.state.policy.ports.clone(),
            settings: Some(self.state.settings.clone()),
        })
    }

    pub fn tokens(&self, role: Role) -> Result<Vec<TokenInfo>> {
        require(role, Role::Owner)?;
        Ok(self.tokens.clone())
    }
}
