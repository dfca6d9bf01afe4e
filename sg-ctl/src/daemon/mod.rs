//! `sg-ctl daemon`: the desired state in the store, its changes checked as
//! a whole before they are committed, and the datapath kept in line with
//! it (see [`reconcile`]). [`api`] serves it over HTTP on a Unix socket,
//! [`metrics`] exports the counters.

pub mod api;
mod links;
pub mod metrics;
mod reconcile;
mod view;

pub use metrics::Hits;
pub use view::{View, Views};

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use tokio::sync::Notify;

use serde::Serialize;

use api::{
    Action, ApiError, Applied, Change, Document, ErrorKind, Expected, GroupView, Kind, Phase,
    PortView, RuleRef,
};

use links::Links;

use crate::{
    datapath::Datapath,
    store::{State, Store, StoreError},
};
use sg_core::{
    access::{Role, TokenInfo},
    capacity::Usage,
    compile,
    model::{DEFAULT_GROUP, Group, Policy, Port, Remote, Rule},
    port_security::PortSecurity,
    settings::Settings,
};

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The daemon: the store, the state it holds, and the datapath.
pub struct Daemon {
    store: Store,
    state: State,
    datapath: Arc<Datapath>,
    /// The rule each counter id counted at the last reconcile: counter ids
    /// follow rule order, so a change that moves rules moves their counts
    /// too (`reconcile::renumbering`). Empty until the first.
    counted: HashMap<u32, (String, Rule)>,
    /// What each port's installed policy and port security take of the
    /// maps, as the last install or adoption left them.
    installed: HashMap<String, Usage>,
    /// What each port takes in the desired state (`check`'s).
    planned: Planned,
    /// The namespaces of the ports, followed for their interfaces.
    links: Links,
    /// Woken for a reconcile: an interface came or went.
    wake: Arc<Notify>,
    /// What reads are served from, published after each change.
    views: Views,
    /// The host whose ports this daemon enforces, where several share the
    /// store; `None` enforces every port.
    host: Option<String>,
}

/// How often a change is redone on a state another host changed meanwhile
/// before it is refused.
const STALE_RETRIES: usize = 10;

impl Daemon {
    /// Opens the store and brings the datapath in line with it, adopting
    /// what is already installed.
    pub fn start(store: Store, datapath: Datapath) -> Result<Daemon> {
        let state = store.load()?;
        let datapath = Arc::new(datapath);
        let wake = Arc::new(Notify::new());
        let waker = wake.clone();
        let links = Links::new(datapath.clone(), Arc::new(move || waker.notify_one()));
        let waker = wake.clone();
        store.on_change(Arc::new(move || waker.notify_one()));
        let host = store.host().map(str::to_string);
        let views = Views::new(View {
            state: state.clone(),
            port_states: BTreeMap::new(),
            tokens: Vec::new(),
            roles: HashMap::new(),
            datapath: datapath.clone(),
            store: store.health(),
        });
        let mut daemon = Daemon {
            store,
            state,
            datapath,
            links,
            wake,
            views,
            counted: HashMap::new(),
            installed: HashMap::new(),
            planned: Planned::new(),
            host,
        };
        // What the state takes; a state stored by another version that no
        // longer checks still gets its ports reconciled.
        daemon.planned = check(&daemon.state.policy, &daemon.state.settings).unwrap_or_default();
        // Rules stored before rules had ids get theirs.
        let mut rules = daemon.state.policy.groups.iter().flat_map(|g| &g.rules);
        if rules.any(|rule| rule.id.is_none())
            && let Err(e) = daemon.change(Role::Owner, |_, _| Ok(()))
        {
            eprintln!("sg-ctl daemon: giving the stored rules their ids: {e}");
        }
        // What a daemon killed mid-change left.
        if let Err(e) = daemon.datapath.remove_orphans() {
            eprintln!("sg-ctl daemon: removing the entries of policies no port has: {e}");
        }
        daemon.reconcile()?;
        Ok(daemon)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The datapath the daemon keeps in line, for work beside it (the
    /// connection table's expiry).
    pub fn datapath(&self) -> &Arc<Datapath> {
        &self.datapath
    }

    /// Notified when the datapath wants a reconcile now: an interface of a
    /// port came or went, or the state in the store changed.
    pub fn wakes(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Where the state as the last change left it is published.
    pub fn views(&self) -> Views {
        self.views.clone()
    }

    /// Publishes the state as it is now for reads. What cannot be read of
    /// the store stays as the last view had it.
    fn publish(&self) {
        let last = self.views.current();
        let or_last = |what: &str, e: StoreError| {
            eprintln!("sg-ctl daemon: reading the {what} to publish: {e}");
        };
        let port_states = self.store.port_states().unwrap_or_else(|e| {
            or_last("ports' states", e);
            last.port_states.clone()
        });
        let (tokens, roles) = match (self.store.tokens(), self.store.token_roles()) {
            (Ok(tokens), Ok(roles)) => (tokens, roles),
            (Err(e), _) | (_, Err(e)) => {
                or_last("tokens", e);
                (last.tokens.clone(), last.roles.clone())
            }
        };
        self.views.publish(View {
            state: self.state.clone(),
            port_states,
            tokens,
            roles,
            datapath: self.datapath.clone(),
            store: self.store.health(),
        });
    }

    /// Takes the state in the store when another host changed it.
    fn refresh(&mut self) -> Result<()> {
        if self.store.revision() == self.state.revision {
            return Ok(());
        }
        self.state = self.store.load()?;
        // The host that made the change checked the whole state; this one
        // plans its own ports.
        let host = self.host.clone();
        self.planned = plan(&self.state.policy, &self.state.settings, |port| {
            port.host == host
        })
        .unwrap_or_default();
        Ok(())
    }

    /// Whether this daemon enforces `port`.
    fn is_local(&self, port: &Port) -> bool {
        port.host == self.host
    }

    /// Checks `change` applied to a copy of the desired state, then commits
    /// it and reconciles the datapath. Nothing is written when the change
    /// or the state it leads to is invalid.
    fn change(
        &mut self,
        role: Role,
        change: impl FnMut(&mut Policy, &mut Settings) -> Result<()>,
    ) -> Result<()> {
        self.change_at(role, None, change)
    }

    /// [`Daemon::change`], of an object that must still be at a revision
    /// (`If-Match`) when given one. A change that another host's overtook
    /// in the store is checked and made again on the state as it is now.
    fn change_at(
        &mut self,
        role: Role,
        expect: Option<(Kind, &str, Option<u64>)>,
        mut change: impl FnMut(&mut Policy, &mut Settings) -> Result<()>,
    ) -> Result<()> {
        require(role, Role::Owner)?;
        for _ in 0..STALE_RETRIES {
            if let Some((kind, name, revision)) = expect {
                self.check_revision(kind, name, revision)?;
            }
            let mut policy = self.state.policy.clone();
            let mut settings = self.state.settings.clone();
            change(&mut policy, &mut settings)?;
            give_rule_ids(&mut policy, &self.state.policy);
            self.place_ports(&mut policy)?;
            let planned = check(&policy, &settings)?;
            self.check_room(&policy.effective(&settings), &planned)?;
            match self.store.save(&self.state, &policy, &settings) {
                Ok(state) => {
                    self.state = state;
                    self.planned = planned;
                    return self.reconcile();
                }
                Err(StoreError::Stale) => self.refresh()?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::new(
            ErrorKind::Conflict,
            format!(
                "the desired state changed on other hosts {STALE_RETRIES} times while this \
                 change was made; try again"
            ),
        ))
    }

    /// Gives a port that names no host the one it had, or this daemon's.
    /// A port may be put on another host only while that host's daemon is
    /// up (holds its lease): on a host no daemon enforces, its interface
    /// would pass everything.
    fn place_ports(&self, policy: &mut Policy) -> Result<()> {
        let Some(host) = &self.host else {
            return match policy.ports.iter().find(|p| p.host.is_some()) {
                Some(port) => Err(ApiError::invalid(format!(
                    "port '{}': host: ports are placed on hosts only where several share an \
                     etcd store (sg-ctl daemon --store etcd://… --host NAME); leave it out",
                    port.name
                ))),
                None => Ok(()),
            };
        };
        let up = self.store.health().hosts;
        for port in &mut policy.ports {
            let before = self
                .state
                .policy
                .port(&port.name)
                .and_then(|p| p.host.clone());
            let placed = port
                .host
                .get_or_insert_with(|| before.clone().unwrap_or(host.clone()));
            let known = *placed == *host
                || before.as_ref() == Some(placed)
                || up.iter().any(|h| h.name == *placed && h.up);
            if !known {
                return Err(ApiError::invalid(format!(
                    "port '{}': host: no daemon of host '{placed}' is up (none holds its \
                     lease); start it first, or make the port through that host's daemon",
                    port.name
                )));
            }
        }
        Ok(())
    }

    // Groups.

    pub fn create_group(&mut self, role: Role, group: Group) -> Result<GroupView> {
        let name = group.name.clone();
        self.change(role, |policy, _| {
            if policy.group(&group.name).is_some() {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!(
                        "group '{}' exists; update it, or choose another name",
                        group.name
                    ),
                ));
            }
            policy.groups.push(group.clone());
            Ok(())
        })?;
        self.views.current().group(role, &name)
    }

    /// Replaces a group (same name); `revision`, when given, must be the
    /// group's current one.
    pub fn replace_group(
        &mut self,
        role: Role,
        name: &str,
        group: Group,
        revision: Option<u64>,
    ) -> Result<GroupView> {
        if group.name != name {
            return Err(ApiError::invalid(format!(
                "name: '{}' differs from the group '{name}' being updated; \
                 groups cannot be renamed (clone it, then delete the old one)",
                group.name
            )));
        }
        self.change_at(role, Some((Kind::Group, name, revision)), |policy, _| {
            *group_mut(policy, name)? = group.clone();
            Ok(())
        })?;
        self.views.current().group(role, name)
    }

    pub fn delete_group(&mut self, role: Role, name: &str, revision: Option<u64>) -> Result<()> {
        self.change_at(role, Some((Kind::Group, name, revision)), |policy, _| {
            group_mut(policy, name)?;
            if name == DEFAULT_GROUP {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    "the default group cannot be deleted; remove its rules instead",
                ));
            }
            let ports: Vec<&str> = policy
                .ports
                .iter()
                .filter(|port| port.groups.iter().any(|g| g == name))
                .map(|port| port.name.as_str())
                .collect();
            if !ports.is_empty() {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!(
                        "group '{name}' is attached to port(s) {}; detach it first \
                         (`sg-ctl port detach PORT {name}`)",
                        ports.join(", ")
                    ),
                ));
            }
            let users: Vec<&str> = policy
                .groups
                .iter()
                .filter(|g| {
                    g.name != name
                        && g.rules
                            .iter()
                            .any(|rule| rule.remote == Remote::Group(name.into()))
                })
                .map(|g| g.name.as_str())
                .collect();
            if !users.is_empty() {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!(
                        "rules of group(s) {} name group '{name}' as remote; \
                         delete or change those rules first",
                        users.join(", ")
                    ),
                ));
            }
            policy.groups.retain(|g| g.name != name);
            Ok(())
        })
    }

    /// Copies a group under a new name; the copy is not public.
    pub fn clone_group(&mut self, role: Role, from: &str, name: &str) -> Result<GroupView> {
        let group = Group {
            name: name.into(),
            public: false,
            ..self
                .state
                .policy
                .group(from)
                .ok_or_else(|| no_group(from))?
                .clone()
        };
        self.create_group(role, group)
    }

    /// Appends rules to a group.
    pub fn add_rules(
        &mut self,
        role: Role,
        name: &str,
        rules: Vec<Rule>,
        revision: Option<u64>,
    ) -> Result<GroupView> {
        self.change_at(role, Some((Kind::Group, name, revision)), |policy, _| {
            group_mut(policy, name)?.rules.extend(rules.iter().cloned());
            Ok(())
        })?;
        self.views.current().group(role, name)
    }

    /// Replaces (`Some`) or deletes (`None`) rule `at` of a group, when
    /// it is as `expected`. A replaced rule keeps its id.
    pub fn set_rule(
        &mut self,
        role: Role,
        name: &str,
        at: &RuleRef,
        rule: Option<Rule>,
        expected: Expected,
    ) -> Result<GroupView> {
        let revision = match &expected {
            Expected::Revision(revision) => Some((Kind::Group, name, Some(*revision))),
            _ => None,
        };
        self.change_at(role, revision, |policy, _| {
            let group = group_mut(policy, name)?;
            let index = find_rule(group, at)?;
            let old = &group.rules[index];
            if let Expected::Tag(tag) = &expected
                && *tag != api::rule_etag(old)
            {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!(
                        "rule {at} of group '{name}' changed since it was read (ETag {tag}, now \
                         {}); read it again",
                        api::rule_etag(old)
                    ),
                ));
            }
            match rule.clone() {
                Some(mut rule) => {
                    if rule.id.is_some() && rule.id != old.id {
                        return Err(ApiError::invalid(format!(
                            "group '{name}': rules[{index}]: id: a rule keeps its id; leave it \
                             out, or send {}",
                            old.id.as_ref().map_or("none", |id| id.as_str())
                        )));
                    }
                    rule.id = old.id.clone();
                    group.rules[index] = rule;
                }
                None => {
                    group.rules.remove(index);
                }
            }
            Ok(())
        })?;
        self.views.current().group(role, name)
    }

    // Ports.

    pub fn create_port(&mut self, role: Role, port: Port) -> Result<PortView> {
        let name = port.name.clone();
        self.change(role, |policy, _| {
            if policy.port(&port.name).is_some() {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!(
                        "port '{}' exists; update it, or choose another name",
                        port.name
                    ),
                ));
            }
            policy.ports.push(port.clone());
            Ok(())
        })?;
        self.views.current().port(role, &name)
    }

    pub fn replace_port(
        &mut self,
        role: Role,
        name: &str,
        port: Port,
        revision: Option<u64>,
    ) -> Result<PortView> {
        if port.name != name {
            return Err(ApiError::invalid(format!(
                "name: '{}' differs from the port '{name}' being updated; \
                 ports cannot be renamed",
                port.name
            )));
        }
        self.change_at(role, Some((Kind::Port, name, revision)), |policy, _| {
            *port_mut(policy, name)? = port.clone();
            Ok(())
        })?;
        self.views.current().port(role, name)
    }

    pub fn delete_port(&mut self, role: Role, name: &str, revision: Option<u64>) -> Result<()> {
        self.change_at(role, Some((Kind::Port, name, revision)), |policy, _| {
            port_mut(policy, name)?;
            policy.ports.retain(|port| port.name != name);
            Ok(())
        })
    }

    /// Puts a port's policy in force on its interface now, and says whether
    /// it is: for hypervisor scripts and container runtimes, which call it
    /// once the interface is made and before the workload runs. `iface`,
    /// when given, becomes the port's interface (in `netns`, or where the
    /// port's is). Fails, and the caller must not start the workload, when
    /// the port is not enforced there.
    pub fn plug(
        &mut self,
        role: Role,
        name: &str,
        iface: Option<String>,
        netns: Option<String>,
    ) -> Result<PortView> {
        require(role, Role::Owner)?;
        let port = self.state.policy.port(name).ok_or_else(|| no_port(name))?;
        if !self.is_local(port) {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "port '{name}' is on host {}; plug it through that host's daemon",
                    port.host.as_deref().unwrap_or("(none)")
                ),
            ));
        }
        let moved = iface.as_ref().is_some_and(|iface| *iface != port.ifname)
            || netns
                .as_ref()
                .is_some_and(|netns| port.netns.as_ref() != Some(netns));
        if moved {
            self.change(role, |policy, _| {
                let port = port_mut(policy, name)?;
                if let Some(iface) = &iface {
                    port.ifname = iface.clone();
                }
                if netns.is_some() {
                    port.netns = netns.clone();
                }
                Ok(())
            })?;
        } else {
            self.reconcile()?;
        }
        let view = self.views.current().port(role, name)?;
        if view.status.state != Phase::Active {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "port '{name}' is not enforced on {}: {}; its workload must not start",
                    view.spec.ifname, view.status.reason
                ),
            ));
        }
        Ok(view)
    }

    /// Removes a port whose workload is gone, as a VM's tap goes away with
    /// its VM: the port leaves the desired state (its addresses and slot
    /// are free for others), and the answer, the port as it was, comes once
    /// its filter is detached from its interface. For hypervisor scripts,
    /// which call it as the VM stops. A port that is not there is
    /// `NotFound`, which such a script takes as unplugged already; a filter
    /// that cannot be detached is an error naming why, and the reconcile
    /// tries again.
    pub fn unplug(&mut self, role: Role, name: &str) -> Result<Port> {
        require(role, Role::Owner)?;
        let port = self.state.policy.port(name).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "no port named '{name}': it is unplugged already, or was never made; \
                     `sg-ctl port list` shows the ports"
                ),
            )
        })?;
        self.delete_port(role, name, None)?;
        // The reconcile keeps a deleted port's record, with the reason,
        // until its filter is gone.
        if let Some(state) = self.store.port_states()?.get(name) {
            return Err(ApiError::new(
                ErrorKind::Internal,
                format!(
                    "port '{name}' is removed, but its filter is still on {}: {}; the daemon \
                     tries again every {} s, or `sg-ctl {}detach {}` removes it",
                    state.ifname,
                    state.reason,
                    api::RECONCILE_EVERY.as_secs(),
                    state
                        .netns
                        .as_ref()
                        .map(|netns| format!("--netns {netns} "))
                        .unwrap_or_default(),
                    state.ifname
                ),
            ));
        }
        Ok(port)
    }

    /// Attaches groups to a port (after its others), live.
    pub fn attach_groups(&mut self, role: Role, name: &str, groups: &[String]) -> Result<PortView> {
        self.change(role, |policy, _| {
            let port = port_mut(policy, name)?;
            for group in groups {
                if !port.groups.contains(group) {
                    port.groups.push(group.clone());
                }
            }
            Ok(())
        })?;
        self.views.current().port(role, name)
    }

    /// Attaches one group to many ports (after their others), in one
    /// change: every port gets it, or, when one is unknown or the result
    /// does not check, none.
    pub fn assign_group(&mut self, role: Role, name: &str, ports: &[String]) -> Result<GroupView> {
        if ports.is_empty() {
            return Err(ApiError::invalid(
                "ports: name at least one port to attach the group to",
            ));
        }
        self.change(role, |policy, _| {
            if policy.group(name).is_none() {
                return Err(no_group(name));
            }
            for port in ports {
                let port = port_mut(policy, port)?;
                if !port.groups.iter().any(|g| g == name) {
                    port.groups.push(name.to_string());
                }
            }
            Ok(())
        })?;
        self.views.current().group(role, name)
    }

    /// Detaches groups from a port, live; a port keeps at least one.
    pub fn detach_groups(&mut self, role: Role, name: &str, groups: &[String]) -> Result<PortView> {
        self.change(role, |policy, _| {
            let port = port_mut(policy, name)?;
            if let Some(group) = groups.iter().find(|g| !port.groups.contains(g)) {
                return Err(ApiError::new(
                    ErrorKind::NotFound,
                    format!(
                        "group '{group}' is not attached to port '{name}'; it has {}",
                        port.groups.join(", ")
                    ),
                ));
            }
            port.groups.retain(|g| !groups.contains(g));
            if port.groups.is_empty() {
                return Err(ApiError::invalid(format!(
                    "port '{name}': groups: a port keeps at least one group; \
                     attach another first (e.g. `sg-ctl port attach {name} default`)"
                )));
            }
            Ok(())
        })?;
        self.views.current().port(role, name)
    }

    // Settings, documents, tokens.

    pub fn set_settings(&mut self, role: Role, settings: Settings) -> Result<Settings> {
        self.change(role, |_, current| {
            *current = settings.clone();
            Ok(())
        })?;
        Ok(self.state.settings.clone())
    }

    /// Makes the desired state the document's: its groups (the `default`
    /// group stays when the document leaves it out), its ports, and its
    /// settings if it has them. Applying the same document twice changes
    /// nothing the second time.
    pub fn apply(&mut self, role: Role, document: Document, dry_run: bool) -> Result<Applied> {
        let mut groups = document.groups;
        if !groups.iter().any(|g| g.name == DEFAULT_GROUP)
            && let Some(default) = self.state.policy.group(DEFAULT_GROUP)
        {
            groups.insert(0, default.clone());
        }
        let mut policy = Policy {
            groups,
            ports: document.ports,
        };
        give_rule_ids(&mut policy, &self.state.policy);
        let settings = document
            .settings
            .unwrap_or_else(|| self.state.settings.clone());
        let changes = diff(&self.state, &policy, &settings);
        if dry_run {
            require(role, Role::Viewer)?;
            let planned = check(&policy, &settings)?;
            self.check_room(&policy.effective(&settings), &planned)?;
        } else if !changes.is_empty() {
            self.change(role, |current, current_settings| {
                *current = policy.clone();
                *current_settings = settings.clone();
                Ok(())
            })?;
        } else {
            require(role, Role::Owner)?;
        }
        Ok(Applied { dry_run, changes })
    }

    /// A new token with its listing.
    pub fn create_token(&self, role: Role, token_role: Role) -> Result<(String, TokenInfo)> {
        require(role, Role::Owner)?;
        if token_role == Role::Anonymous {
            return Err(ApiError::invalid(
                "role: use owner or viewer; clients without a token are anonymous already",
            ));
        }
        let created = self.store.create_token(token_role)?;
        self.publish();
        Ok(created)
    }

    pub fn revoke_token(&self, role: Role, id: &str) -> Result<()> {
        require(role, Role::Owner)?;
        if self.store.revoke_token(id)? {
            self.publish();
            return Ok(());
        }
        Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no token with id '{id}'; `sg-ctl daemon token list` shows the ids"),
        ))
    }

    /// Refuses a change prepared from another revision than the object's.
    fn check_revision(&self, kind: Kind, name: &str, expected: Option<u64>) -> Result<()> {
        let revisions = match kind {
            Kind::Group => &self.state.group_revisions,
            Kind::Port => &self.state.port_revisions,
            Kind::Settings => return Ok(()),
        };
        match (revisions.get(name), expected) {
            (Some(&current), Some(expected)) if current != expected => Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "{kind} '{name}' is at revision {current}, not {expected}: someone changed \
                     it meanwhile; read it again and redo the change"
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Refuses a client whose role is below `needed`.
fn require(role: Role, needed: Role) -> Result<()> {
    if role >= needed {
        return Ok(());
    }
    Err(match role {
        Role::Anonymous => ApiError::new(
            ErrorKind::Unauthenticated,
            "this needs a token (--token, or SG_TOKEN; an owner creates one with \
             `sg-ctl daemon token create --role viewer`) or root",
        ),
        _ => ApiError::new(
            ErrorKind::Forbidden,
            "a viewer token is read-only; changes need an owner token or root",
        ),
    })
}

fn no_group(name: &str) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("no group named '{name}'; `sg-ctl group list` shows the groups"),
    )
}

fn no_port(name: &str) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("no port named '{name}'; `sg-ctl port list` shows the ports"),
    )
}

/// The position of rule `at` in `group`.
fn find_rule(group: &Group, at: &RuleRef) -> Result<usize> {
    let name = &group.name;
    match at {
        RuleRef::Index(index) if *index < group.rules.len() => Ok(*index),
        RuleRef::Index(index) => {
            let count = group.rules.len();
            Err(ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "group '{name}' has no rule {index}; it has {count} (0-{}); \
                     `sg-ctl rule list {name}` shows them",
                    count.saturating_sub(1)
                ),
            ))
        }
        RuleRef::Id(id) => group
            .rules
            .iter()
            .position(|rule| rule.id.as_ref() == Some(id))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::NotFound,
                    format!(
                        "group '{name}' has no rule {id} (deleted, or never there); \
                         `sg-ctl rule list {name}` shows its rules"
                    ),
                )
            }),
    }
}

/// Gives every rule without an id one: the id of the same rule in the
/// group's last state (so that a document without ids, applied again,
/// changes nothing), else a new random one.
fn give_rule_ids(policy: &mut Policy, old: &Policy) {
    for group in &mut policy.groups {
        group.give_rule_ids(old.group(&group.name), || {
            rand::random::<u64>() & 0xffff_ffff_ffff
        });
    }
}

fn group_mut<'a>(policy: &'a mut Policy, name: &str) -> Result<&'a mut Group> {
    policy
        .groups
        .iter_mut()
        .find(|g| g.name == name)
        .ok_or_else(|| no_group(name))
}

fn port_mut<'a>(policy: &'a mut Policy, name: &str) -> Result<&'a mut Port> {
    policy
        .ports
        .iter_mut()
        .find(|p| p.name == name)
        .ok_or_else(|| no_port(name))
}

/// What each port's policy and port security take of the maps.
type Planned = BTreeMap<String, Usage>;

/// Checks a whole desired state: the settings, the policy, the limits, and
/// that every port compiles; what each port then takes of the maps.
fn check(policy: &Policy, settings: &Settings) -> Result<Planned> {
    settings
        .validate()
        .map_err(|e| ApiError::invalid(format!("settings: {e}")))?;
    policy.validate().map_err(ApiError::invalid)?;
    for group in &policy.groups {
        if group.rules.len() > settings.max_rules_per_group {
            return Err(ApiError::invalid(format!(
                "group '{}': rules: {} rules is over the limit of {} per group; remove rules \
                 or raise the limit (`sg-ctl settings set max_rules_per_group N`)",
                group.name,
                group.rules.len(),
                settings.max_rules_per_group
            )));
        }
    }
    for port in &policy.ports {
        if port.groups.len() > settings.max_groups_per_port {
            return Err(ApiError::invalid(format!(
                "port '{}': groups: {} groups is over the limit of {} per port; detach groups \
                 or raise the limit (`sg-ctl settings set max_groups_per_port N`)",
                port.name,
                port.groups.len(),
                settings.max_groups_per_port
            )));
        }
    }
    for port in &policy.ports {
        settings
            .check_pairs(port)
            .map_err(|e| ApiError::invalid(format!("port '{}': {e}", port.name)))?;
    }
    plan(policy, settings, |_| true)
}

/// What each port that `of` takes of `policy` takes of the maps, compiled.
fn plan(policy: &Policy, settings: &Settings, of: impl Fn(&Port) -> bool) -> Result<Planned> {
    let effective = policy.effective(settings);
    let counters = compile::counter_ids(&effective).map_err(ApiError::invalid)?;
    let mut usage = BTreeMap::new();
    for port in effective.ports.iter().filter(|port| of(port)) {
        let security = PortSecurity::from_port(port)
            .compile()
            .map_err(|e| ApiError::invalid(format!("port '{}': {e}", port.name)))?;
        let compiled =
            compile::compile(&effective, &port.name, 1, &counters).map_err(ApiError::invalid)?;
        usage.insert(port.name.clone(), Usage::of(&compiled, &security));
    }
    Ok(usage)
}

/// The changes that take `state` to `policy` and `settings`.
fn diff(state: &State, policy: &Policy, settings: &Settings) -> Vec<Change> {
    let mut changes = Vec::new();
    objects_diff(
        Kind::Group,
        &state.policy.groups,
        &policy.groups,
        |g| &g.name,
        &mut changes,
    );
    objects_diff(
        Kind::Port,
        &state.policy.ports,
        &policy.ports,
        |p| &p.name,
        &mut changes,
    );
    if *settings != state.settings {
        changes.push(Change {
            action: Action::Update,
            kind: Kind::Settings,
            name: "settings".into(),
            fields: fields_differing(&state.settings, settings),
        });
    }
    changes
}

fn objects_diff<T: Serialize + PartialEq>(
    kind: Kind,
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &String,
    changes: &mut Vec<Change>,
) {
    let change = |action, object: &T, fields| Change {
        action,
        kind,
        name: name(object).clone(),
        fields,
    };
    for object in new {
        match old.iter().find(|o| name(o) == name(object)) {
            None => changes.push(change(Action::Create, object, Vec::new())),
            Some(before) if before != object => {
                changes.push(change(
                    Action::Update,
                    object,
                    fields_differing(before, object),
                ));
            }
            Some(_) => {}
        }
    }
    for object in old {
        if !new.iter().any(|n| name(n) == name(object)) {
            changes.push(change(Action::Delete, object, Vec::new()));
        }
    }
}

/// The top-level fields whose values differ.
fn fields_differing<T: Serialize>(old: &T, new: &T) -> Vec<String> {
    let value = |object: &T| match serde_json::to_value(object) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (old, new) = (value(old), value(new));
    let mut fields: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|key| old.get(*key) != new.get(*key))
        .cloned()
        .collect();
    fields.sort();
    fields.dedup();
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::Pins;
    use api::FlowQuery;
    use sg_core::model::Direction;

    /// A daemon on a fresh database; without ports it never touches the
    /// datapath, so this needs no root.
    /// `dir` holds the database (and pins, never made); the daemon must
    /// not outlive it.
    fn daemon(dir: &tempfile::TempDir) -> Daemon {
        let store = Store::open(&dir.path().join("sg.db")).unwrap();
        Daemon::start(store, Datapath::new(Pins::new(dir.path().join("pins")))).unwrap()
    }

    fn temp_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("sg-unit-daemon-")
            .tempdir()
            .unwrap()
    }

    fn document(yaml: &str) -> Document {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn apply_reports_changes_and_is_idempotent() {
        let dir = temp_dir();
        let mut d = daemon(&dir);
        let doc = document(
            "groups:\n  - name: web\n    rules:\n      - {direction: egress}\n\
             settings: {max_rules_per_group: 10}\n",
        );
        let dry = d.apply(Role::Viewer, doc.clone(), true).unwrap();
        let summary: Vec<(Action, &str)> = dry
            .changes
            .iter()
            .map(|c| (c.action, c.name.as_str()))
            .collect();
        assert_eq!(
            summary,
            [(Action::Create, "web"), (Action::Update, "settings")]
        );
        assert!(
            d.state().policy.group("web").is_none(),
            "a dry run changes nothing"
        );
        assert_eq!(
            d.apply(Role::Viewer, doc.clone(), false).unwrap_err().kind,
            ErrorKind::Forbidden
        );
        assert_eq!(
            d.apply(Role::Owner, doc.clone(), false)
                .unwrap()
                .changes
                .len(),
            2
        );
        assert!(
            d.apply(Role::Owner, doc.clone(), false)
                .unwrap()
                .changes
                .is_empty()
        );
        assert!(
            d.state().policy.group(DEFAULT_GROUP).is_some(),
            "default stays"
        );

        let mut changed = doc;
        changed.groups[0].description = "web tier".into();
        let applied = d.apply(Role::Owner, changed, false).unwrap();
        assert_eq!(applied.changes[0].fields, ["description"]);
        assert_eq!(
            d.views
                .current()
                .group(Role::Viewer, "web")
                .unwrap()
                .revision,
            2
        );
    }

    /// Rules stored before rules had ids get theirs when the daemon starts.
    #[test]
    fn stored_rules_get_ids_at_start() {
        let dir = temp_dir();
        let path = dir.path().join("sg.db");
        {
            let mut store = Store::open(&path).unwrap();
            let state = store.load().unwrap();
            let mut policy = state.policy.clone();
            policy.groups.push(Group::new("web").unwrap());
            store.save(&state, &policy, &state.settings).unwrap();
            assert!(store.load().unwrap().policy.groups[1].rules[0].id.is_none());
        }
        let daemon = daemon(&dir);
        let groups = daemon.state().policy.groups.clone();
        assert!(
            groups.iter().flat_map(|g| &g.rules).all(|r| r.id.is_some()),
            "{groups:?}"
        );
        drop(daemon);
        let again = Store::open(&path).unwrap().load().unwrap();
        assert_eq!(again.policy.groups, groups, "the ids are stored");
    }

    #[test]
    fn invalid_documents_change_nothing() {
        let dir = temp_dir();
        let mut d = daemon(&dir);
        let doc = document(
            "groups:\n  - name: web\n    rules:\n      - {direction: ingress, remote: {group: db}}\n",
        );
        let error = d.apply(Role::Owner, doc, false).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid);
        assert_eq!(
            error.message,
            "group 'web': rules[0]: remote: no group named 'db'; create it first, \
             or use one of: default, web"
        );
        assert!(d.state().policy.group("web").is_none());
    }

    #[test]
    fn flows_need_a_viewer_a_valid_query_and_a_port() {
        let dir = temp_dir();
        let d = daemon(&dir).views.current();
        let kind = |role, name: &str, query| d.flows(role, name, query).unwrap_err().kind;
        assert_eq!(
            kind(Role::Anonymous, "vm", FlowQuery::default()),
            ErrorKind::Unauthenticated
        );
        let protocol = FlowQuery {
            protocol: Some("bogus".into()),
            ..FlowQuery::default()
        };
        assert_eq!(kind(Role::Viewer, "vm", protocol), ErrorKind::Invalid);
        let state = FlowQuery {
            state: Some("open".into()),
            ..FlowQuery::default()
        };
        let error = d.flows(Role::Viewer, "vm", state).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid);
        assert!(error.message.contains("established"), "{error}");
        assert_eq!(
            kind(Role::Viewer, "vm", FlowQuery::default()),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn unplug_needs_an_owner_and_names_a_port_gone_already() {
        let dir = temp_dir();
        let mut d = daemon(&dir);
        assert_eq!(
            d.unplug(Role::Anonymous, "vm1").unwrap_err().kind,
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            d.unplug(Role::Viewer, "vm1").unwrap_err().kind,
            ErrorKind::Forbidden
        );
        let error = d.unplug(Role::Owner, "vm1").unwrap_err();
        assert_eq!(error.kind, ErrorKind::NotFound);
        assert!(error.message.contains("unplugged already"), "{error}");
    }

    #[test]
    fn limits_and_roles() {
        let dir = temp_dir();
        let mut d = daemon(&dir);
        let settings = Settings {
            max_rules_per_group: 4,
            ..Settings::default()
        };
        d.set_settings(Role::Owner, settings).unwrap();
        d.create_group(Role::Owner, Group::new("web").unwrap())
            .unwrap();
        let two = vec![Rule::new(Direction::Ingress); 2];
        d.add_rules(Role::Owner, "web", two, None).unwrap();
        let error = d
            .add_rules(
                Role::Owner,
                "web",
                vec![Rule::new(Direction::Ingress)],
                None,
            )
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid);
        assert!(
            error.message.contains("5 rules is over the limit of 4"),
            "{error}"
        );
        let error = d
            .add_rules(Role::Owner, "web", vec![], Some(1))
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Conflict);
        assert_eq!(
            d.create_group(Role::Viewer, Group::new("x").unwrap())
                .unwrap_err()
                .kind,
            ErrorKind::Forbidden
        );
        assert_eq!(d.views.current().groups(Role::Anonymous).unwrap().len(), 0);
        assert_eq!(
            d.views.current().ports(Role::Anonymous).unwrap_err().kind,
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            d.create_token(Role::Owner, Role::Anonymous)
                .unwrap_err()
                .kind,
            ErrorKind::Invalid
        );
    }
}
