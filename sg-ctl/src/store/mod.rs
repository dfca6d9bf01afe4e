//! Where the daemon keeps the desired state: an SQLite database of its own
//! ([`sqlite`], the default), or etcd, shared by the daemons of several
//! hosts ([`etcd`]). Either way a change is one transaction that writes
//! the objects that differ, and what this host's datapath was given per
//! port stays in the host's own database.
//!
//! [`Store`] is the one interface the daemon sees: reads of the state are
//! answered from memory (etcd's are kept current by a watch), so the policy
//! in force never waits on the store; changes go to the store holding the
//! desired state, and fail with [`StoreError::Unreachable`] while it cannot
//! be reached.

pub mod etcd;
pub mod sqlite;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

pub use sqlite::{Database, PortState, Result, State, StoreError, lock_dir, token_digest};

use sg_core::{
    access::{Role, TokenInfo},
    model::Policy,
    settings::Settings,
};

/// Where the desired state is, as `--store` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `sqlite:PATH`.
    Sqlite(PathBuf),
    /// `etcd://HOST:PORT[,HOST:PORT…]`: the endpoints.
    Etcd(Vec<String>),
}

impl std::str::FromStr for Location {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("sqlite: needs a path, e.g. sqlite:/var/lib/sg/sg.db".into());
            }
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        let Some(endpoints) = text.strip_prefix("etcd://") else {
            return Err(format!(
                "{} is not a store; use sqlite:PATH or etcd://HOST:PORT[,HOST:PORT…]",
                sg_core::text::Quoted(text)
            ));
        };
        let endpoints: Vec<String> = endpoints.split(',').map(str::to_string).collect();
        for endpoint in &endpoints {
            let port = endpoint
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(_))) if !host.is_empty() && !host.contains('/')) {
                return Err(format!(
                    "{} is not HOST:PORT; use etcd://HOST:PORT[,HOST:PORT…], e.g. \
                     etcd://127.0.0.1:2379",
                    sg_core::text::Quoted(endpoint)
                ));
            }
        }
        Ok(Location::Etcd(endpoints))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Location::Etcd(endpoints) => write!(f, "etcd://{}", endpoints.join(",")),
        }
    }
}

/// How the store stands, for `sg-ctl daemon status` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// The store, as `--store` names it.
    pub store: String,
    pub reachable: bool,
    /// Why it is not, when it is not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The store's revision of the state this daemon holds.
    pub revision: u64,
    /// This daemon's host, with etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The hosts sharing the store, each up while its daemon holds its
    /// lease (and the ports' hosts, up or not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub name: String,
    pub up: bool,
}

/// The desired state's store, and this host's record of its datapath.
pub struct Store {
    /// The ports' states; without etcd, the desired state too.
    local: Database,
    cluster: Option<etcd::Cluster>,
    shown: String,
}

impl Store {
    /// The desired state in the SQLite database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        Ok(Store {
            local: Database::open(path)?,
            cluster: None,
            shown: Location::Sqlite(path.to_path_buf()).to_string(),
        })
    }

    /// The desired state in etcd, shared with other hosts, this one named
    /// `host`; what this host's datapath was given in the database at
    /// `local`.
    pub fn with_etcd(local: &Path, endpoints: &[String], host: &str) -> Result<Store> {
        let local = Database::open(local)?;
        let cluster = etcd::Cluster::open(endpoints, host)?;
        Ok(Store {
            local,
            shown: cluster.name().to_string(),
            cluster: Some(cluster),
        })
    }

    /// The host whose ports this daemon enforces: `None` without etcd,
    /// where every port is this host's.
    pub fn host(&self) -> Option<&str> {
        self.cluster.as_ref().map(etcd::Cluster::host)
    }

    /// Calls `wake` whenever the state in the store changed, or the store
    /// became reachable or unreachable (from a thread of the store's).
    pub fn on_change(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        if let Some(cluster) = &self.cluster {
            cluster.on_change(wake);
        }
    }

    /// The store's revision of the desired state now: a state of another
    /// revision is to be loaded again.
    pub fn revision(&self) -> u64 {
        self.cluster.as_ref().map_or(0, etcd::Cluster::revision)
    }

    pub fn health(&self) -> StoreHealth {
        match &self.cluster {
            Some(cluster) => cluster.health(),
            None => StoreHealth {
                store: self.shown.clone(),
                reachable: true,
                error: String::new(),
                revision: 0,
                host: None,
                hosts: Vec::new(),
            },
        }
    }

    /// The desired state, as the store last said it was.
    pub fn load(&self) -> Result<State> {
        match &self.cluster {
            Some(cluster) => cluster.load(),
            None => self.local.load(),
        }
    }

    /// Replaces the stored desired state `old` by `policy` and `settings`
    /// in one transaction, written only while the store still holds `old`
    /// ([`StoreError::Stale`] otherwise); returns the state read back.
    /// Without etcd, ports that changed are marked pending.
    pub fn save(&mut self, old: &State, policy: &Policy, settings: &Settings) -> Result<State> {
        match &self.cluster {
            // The ports' states follow at the reconcile after it.
            Some(cluster) => cluster.save(old, policy, settings),
            None => self.local.save(old, policy, settings),
        }
    }

    pub fn port_states(&self) -> Result<BTreeMap<String, PortState>> {
        self.local.port_states()
    }

    pub fn set_port_state(&self, port: &str, state: &PortState) -> Result<()> {
        self.local.set_port_state(port, state)
    }

    pub fn remove_port_state(&self, port: &str) -> Result<()> {
        self.local.remove_port_state(port)
    }

    /// Creates a token with `role`; returns it with what lists it. Only
    /// its digest is kept.
    pub fn create_token(&self, role: Role) -> Result<(String, TokenInfo)> {
        match &self.cluster {
            Some(cluster) => cluster.create_token(role),
            None => self.local.create_token(role),
        }
    }

    /// Every token, oldest first, by id.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>> {
        match &self.cluster {
            Some(cluster) => cluster.tokens(),
            None => self.local.tokens(),
        }
    }

    /// Revokes the token of an id; whether there was one.
    pub fn revoke_token(&self, id: &str) -> Result<bool> {
        match &self.cluster {
            Some(cluster) => cluster.revoke_token(id),
            None => self.local.revoke_token(id),
        }
    }

    /// Every token's role, by the digest of the token.
    pub fn token_roles(&self) -> Result<HashMap<String, Role>> {
        match &self.cluster {
            Some(cluster) => cluster.token_roles(),
            None => self.local.token_roles(),
        }
    }
}

/// What a change writes of one kind of object.
#[derive(Debug, PartialEq)]
pub(crate) enum Row<'a, T> {
    Delete(&'a str),
    /// Unchanged, at another place in policy order: its revision stays.
    Move {
        name: &'a str,
        position: usize,
        object: &'a T,
    },
    /// New or changed, at `position`, with its next revision.
    Put {
        name: &'a str,
        position: usize,
        revision: u64,
        object: &'a T,
    },
}

/// The rows that take the objects `old` (at `revisions`) to `new`:
/// deletions first, then the objects that moved or changed, in order.
pub(crate) fn rows<'a, T: PartialEq>(
    old: &'a [T],
    new: &'a [T],
    name: impl Fn(&T) -> &String,
    revisions: &HashMap<String, u64>,
) -> Vec<Row<'a, T>> {
    let mut rows = Vec::new();
    for object in old {
        if !new.iter().any(|n| name(n) == name(object)) {
            rows.push(Row::Delete(name(object)));
        }
    }
    for (position, object) in new.iter().enumerate() {
        let before = old
            .iter()
            .position(|o| name(o) == name(object))
            .map(|at| (at, &old[at]));
        match before {
            Some((at, before)) if before == object && at == position => {}
            Some((_, before)) if before == object => rows.push(Row::Move {
                name: name(object),
                position,
                object,
            }),
            _ => rows.push(Row::Put {
                name: name(object),
                position,
                revision: revisions.get(name(object)).map_or(1, |r| r + 1),
                object,
            }),
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_are_named_as_sqlite_paths_or_etcd_endpoints() {
        assert_eq!(
            "sqlite:/tmp/sg.db".parse(),
            Ok(Location::Sqlite("/tmp/sg.db".into()))
        );
        let etcd: Location = "etcd://127.0.0.1:2379,10.0.0.2:2379".parse().unwrap();
        assert_eq!(
            etcd,
            Location::Etcd(vec!["127.0.0.1:2379".into(), "10.0.0.2:2379".into()])
        );
        assert_eq!(etcd.to_string(), "etcd://127.0.0.1:2379,10.0.0.2:2379");
        for bad in [
            "sqlite:",
            "etcd://",
            "etcd://host",
            "etcd://:2379",
            "etcd://h:99999",
            "/x",
        ] {
            assert!(bad.parse::<Location>().is_err(), "{bad}");
        }
        assert_eq!(
            "etcd://h".parse::<Location>().unwrap_err(),
            "'h' is not HOST:PORT; use etcd://HOST:PORT[,HOST:PORT…], e.g. etcd://127.0.0.1:2379"
        );
    }

    #[test]
    fn rows_are_what_differs() {
        let names = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let old = names(&["a", "b", "c"]);
        let new = names(&["b", "a", "d"]);
        let revisions = HashMap::from([("a".into(), 3), ("b".into(), 1), ("c".into(), 2)]);
        let rows = rows(&old, &new, |s| s, &revisions);
        assert_eq!(
            rows,
            [
                Row::Delete("c"),
                Row::Move {
                    name: "b",
                    position: 0,
                    object: &new[0]
                },
                Row::Move {
                    name: "a",
                    position: 1,
                    object: &new[1]
                },
                Row::Put {
                    name: "d",
                    position: 2,
                    revision: 1,
                    object: &new[2]
                },
            ]
        );
    }
}
