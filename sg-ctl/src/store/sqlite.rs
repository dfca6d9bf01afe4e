//! The desired state in SQLite: groups, ports (with the groups they
//! attach), settings, API tokens, and what the datapath was last given
//! per port.
//!
//! Groups and ports are stored one row each, their model form as JSON, in
//! policy order, with a revision that grows with every change (the API's
//! optimistic concurrency). Every change of the desired state is one
//! transaction that writes exactly the rows that differ, so a crash leaves
//! the old state or the new one. One daemon holds a database at a time:
//! the lock is in a directory beside it that only root may enter
//! ([`lock_dir`]). The schema version is SQLite's
//! `user_version`; [`MIGRATIONS`] brings any older database up to date.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Row, rows};
use crate::lock::{self, LockError, LockFile};

use rusqlite::{Connection, Transaction, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use sg_core::{
    access::{Role, TokenInfo},
    model::{Group, Policy, Port},
    settings::Settings,
    status::PortPhase,
};

/// The schema, one step per version: step `i` takes version `i` to `i + 1`.
/// Steps are never edited once released; a change is a new step.
const MIGRATIONS: &[&str] = &[
    // 1: the desired state, tokens, and what each port was given.
    "CREATE TABLE groups (
         name     TEXT PRIMARY KEY,
         position INTEGER NOT NULL,
         revision INTEGER NOT NULL,
         spec     TEXT NOT NULL
     );
     CREATE TABLE ports (
         name     TEXT PRIMARY KEY,
         position INTEGER NOT NULL,
         revision INTEGER NOT NULL,
         spec     TEXT NOT NULL
     );
     CREATE TABLE settings (
         id    INTEGER PRIMARY KEY CHECK (id = 1),
         value TEXT NOT NULL
     );
     CREATE TABLE tokens (
         digest  TEXT PRIMARY KEY,
         role    TEXT NOT NULL CHECK (role IN ('owner', 'viewer')),
         created INTEGER NOT NULL
     );
     CREATE TABLE port_state (
         port      TEXT PRIMARY KEY,
         netns     TEXT,
         ifname    TEXT NOT NULL,
         slot      INTEGER,
         policy_id INTEGER,
         applied   TEXT,
         state     TEXT NOT NULL,
         reason    TEXT NOT NULL DEFAULT ''
     );",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this sg-ctl knows ({known}); \
         run the sg-ctl that wrote it"
    )]
    TooNew {
        path: String,
        found: usize,
        known: usize,
    },
    #[error(
        "database {path} is in use by {holder}; stop it first, or give this one another --db \
         (and --socket)"
    )]
    InUse { path: String, holder: String },
    #[error("database {path}: {source}")]
    Lock { path: String, source: LockError },
    #[error("database {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database holds an unreadable {what}: {source}")]
    Corrupt {
        what: String,
        source: serde_json::Error,
    },
    #[error(
        "the store {store} is unreachable ({error}); the policy in force stays as it is, and \
         changes are refused until the store is back"
    )]
    Unreachable { store: String, error: String },
    #[error("the store {store}: {error}")]
    Refused { store: String, error: String },
    /// Another host changed the desired state since it was read.
    #[error("the desired state changed in the store while this change was prepared")]
    Stale,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How many hex digits of a token's digest name it in lists.
pub(super) const TOKEN_ID_LEN: usize = 12;

/// The desired state with the revision of every group and port.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub policy: Policy,
    pub settings: Settings,
    pub group_revisions: HashMap<String, u64>,
    pub port_revisions: HashMap<String, u64>,
    /// The store's revision of the state as a whole when it was read: a
    /// change is written only while it still is (etcd's; 0 in SQLite,
    /// which one daemon holds alone).
    pub revision: u64,
}

/// What the datapath of one port was last given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortState {
    pub netns: Option<String>,
    pub ifname: String,
    /// The datapath's slot of the interface, once attached.
    pub slot: Option<u32>,
    /// The policy id installed, if any.
    pub policy_id: Option<u32>,
    /// The compiler's input for that policy, to tell whether it is current.
    pub applied: Option<String>,
    pub phase: PortPhase,
    pub reason: String,
}

/// The open database, held by one daemon at a time.
pub struct Database {
    conn: Connection,
    _lock: LockFile,
}

/// How long opening waits for another daemon to let go of the database (a
/// restart's old one, ending).
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// The directory of the database's lock, beside it: `sg.db.locks/`.
pub fn lock_dir(path: &Path) -> PathBuf {
    let mut dir = path.as_os_str().to_owned();
    dir.push(".locks");
    PathBuf::from(dir)
}

impl Database {
    /// Opens (creating if needed) the database, brings its schema up to
    /// date, and gives a new one the `default` group and default settings.
    pub fn open(path: &Path) -> Result<Database> {
        let shown = path.display().to_string();
        let file_error = |source| StoreError::File {
            path: shown.clone(),
            source,
        };
        let what = "the daemon's lock";
        let lock =
            lock::acquire(&lock_dir(path), "daemon.lock", what, LOCK_WAIT).map_err(|error| {
                match error {
                    LockError::Held { holder, .. } => StoreError::InUse {
                        path: shown.clone(),
                        holder: holder.unwrap_or_else(|| "another sg-ctl daemon".into()),
                    },
                    source => StoreError::Lock {
                        path: shown.clone(),
                        source,
                    },
                }
            })?;
        let open = |source| StoreError::Open {
            path: shown.clone(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open)?;
        // Token digests and the host's policy: for root's eyes only.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(file_error)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open)?;
        let tx = conn.transaction()?;
        let version: usize = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::TooNew {
                path: shown,
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        for step in &MIGRATIONS[version..] {
            tx.execute_batch(step)?;
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
        let groups: u64 = tx.query_row("SELECT count(*) FROM groups", [], |row| row.get(0))?;
        if groups == 0 {
            put(
                &tx,
                "groups",
                &Group::default_group().name,
                0,
                1,
                &Group::default_group(),
            )?;
        }
        tx.execute(
            "INSERT OR IGNORE INTO settings (id, value) VALUES (1, ?1)",
            [json(&Settings::default())],
        )?;
        tx.commit()?;
        Ok(Database { conn, _lock: lock })
    }

    /// The desired state as stored.
    pub fn load(&self) -> Result<State> {
        let (groups, group_revisions) = self.objects::<Group>("groups")?;
        let (ports, port_revisions) = self.objects::<Port>("ports")?;
        let settings: String =
            self.conn
                .query_row("SELECT value FROM settings WHERE id = 1", [], |row| {
                    row.get(0)
                })?;
        Ok(State {
            policy: Policy { groups, ports },
            settings: parse("settings", &settings)?,
            group_revisions,
            port_revisions,
            revision: 0,
        })
    }

    fn objects<T: for<'de> Deserialize<'de>>(
        &self,
        table: &str,
    ) -> Result<(Vec<T>, HashMap<String, u64>)> {
        let mut statement = self.conn.prepare(&format!(
            "SELECT name, revision, spec FROM {table} ORDER BY position"
        ))?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, u64>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut objects = Vec::new();
        let mut revisions = HashMap::new();
        for row in rows {
            let (name, revision, spec) = row?;
            objects.push(parse(&format!("{table} row {name}"), &spec)?);
            revisions.insert(name, revision);
        }
        Ok((objects, revisions))
    }

    /// Replaces the stored desired state `old` by `policy` and `settings`
    /// in one transaction: rows of unchanged objects stay as they are,
    /// changed ones get the next revision, and the state read back is
    /// returned. Ports that changed are marked pending.
    pub fn save(&mut self, old: &State, policy: &Policy, settings: &Settings) -> Result<State> {
        let tx = self.conn.transaction()?;
        let mut changed_ports = Vec::new();
        sync(
            &tx,
            "groups",
            &old.policy.groups,
            &policy.groups,
            |g| &g.name,
            &old.group_revisions,
            |_| {},
        )?;
        sync(
            &tx,
            "ports",
            &old.policy.ports,
            &policy.ports,
            |p| &p.name,
            &old.port_revisions,
            |port: &Port| changed_ports.push(port.clone()),
        )?;
        for port in changed_ports {
            tx.execute(
                "INSERT INTO port_state (port, netns, ifname, state) VALUES (?1, ?2, ?3, 'pending')
                 ON CONFLICT (port) DO UPDATE SET state = 'pending', reason = ''",
                params![port.name, port.netns, port.ifname],
            )?;
        }
        if *settings != old.settings {
            tx.execute(
                "UPDATE settings SET value = ?1 WHERE id = 1",
                [json(settings)],
            )?;
        }
        tx.commit()?;
        self.load()
    }

    /// What every port's datapath was last given, by port name (ports
    /// deleted from the desired state stay until their filter is gone).
    pub fn port_states(&self) -> Result<BTreeMap<String, PortState>> {
        let mut statement = self.conn.prepare(
            "SELECT port, netns, ifname, slot, policy_id, applied, state, reason FROM port_state",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                PortState {
                    netns: row.get(1)?,
                    ifname: row.get(2)?,
                    slot: row.get(3)?,
                    policy_id: row.get(4)?,
                    applied: row.get(5)?,
                    phase: PortPhase::from_name(&row.get::<_, String>(6)?),
                    reason: row.get(7)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn set_port_state(&self, port: &str, state: &PortState) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO port_state
                 (port, netns, ifname, slot, policy_id, applied, state, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                port,
                state.netns,
                state.ifname,
                state.slot,
                state.policy_id,
                state.applied,
                state.phase.name(),
                state.reason
            ],
        )?;
        Ok(())
    }

    pub fn remove_port_state(&self, port: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM port_state WHERE port = ?1", [port])?;
        Ok(())
    }

    /// Creates a token with `role`; returns it with what lists it. Only
    /// its digest is kept.
    pub fn create_token(&self, role: Role) -> Result<(String, TokenInfo)> {
        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let digest = token_digest(&token);
        self.conn.execute(
            "INSERT INTO tokens (digest, role, created) VALUES (?1, ?2, unixepoch())",
            params![digest, role_text(role)],
        )?;
        let info = self
            .tokens()?
            .into_iter()
            .find(|info| digest.starts_with(&info.id))
            .expect("the token was just stored");
        Ok((token, info))
    }

    /// Every token, oldest first, by id.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let mut statement = self
            .conn
            .prepare("SELECT substr(digest, 1, ?1), role, created FROM tokens ORDER BY rowid")?;
        let rows = statement.query_map([TOKEN_ID_LEN], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get(2)?,
            ))
        })?;
        let mut tokens = Vec::new();
        for row in rows {
            let (id, role, created) = row?;
            tokens.push(TokenInfo {
                id,
                role: parse_role(&role)?,
                created,
            });
        }
        Ok(tokens)
    }

    /// Revokes the token of an id; whether there was one.
    pub fn revoke_token(&self, id: &str) -> Result<bool> {
        let removed = self.conn.execute(
            "DELETE FROM tokens WHERE substr(digest, 1, ?1) = ?2 AND length(?2) = ?1",
            params![TOKEN_ID_LEN, id],
        )?;
        Ok(removed > 0)
    }

    /// Every token's role, by the digest of the token
    /// ([`token_digest`]).
    pub fn token_roles(&self) -> Result<HashMap<String, Role>> {
        let mut statement = self.conn.prepare("SELECT digest, role FROM tokens")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut roles = HashMap::new();
        for row in rows {
            let (digest, role) = row?;
            roles.insert(digest, parse_role(&role)?);
        }
        Ok(roles)
    }
}

/// Writes the rows of `new` objects that differ from `old` (see
/// [`rows`]), and calls `changed` for each object written.
fn sync<T: Serialize + PartialEq>(
    tx: &Transaction,
    table: &str,
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &String,
    revisions: &HashMap<String, u64>,
    mut changed: impl FnMut(&T),
) -> Result<()> {
    for row in rows(old, new, name, revisions) {
        match row {
            Row::Delete(name) => {
                tx.execute(&format!("DELETE FROM {table} WHERE name = ?1"), [name])?;
            }
            Row::Move { name, position, .. } => {
                tx.execute(
                    &format!("UPDATE {table} SET position = ?1 WHERE name = ?2"),
                    params![position, name],
                )?;
            }
            Row::Put {
                name,
                position,
                revision,
                object,
            } => {
                put(tx, table, name, position, revision, object)?;
                changed(object);
            }
        }
    }
    Ok(())
}

fn put<T: Serialize>(
    tx: &Transaction,
    table: &str,
    name: &str,
    position: usize,
    revision: u64,
    object: &T,
) -> Result<()> {
    tx.execute(
        &format!(
            "INSERT OR REPLACE INTO {table} (name, position, revision, spec)
             VALUES (?1, ?2, ?3, ?4)"
        ),
        params![name, position, revision, json(object)],
    )?;
    Ok(())
}

pub(super) fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("model types serialize")
}

pub(super) fn parse<T: for<'de> Deserialize<'de>>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt {
        what: what.to_string(),
        source,
    })
}

fn role_text(role: Role) -> String {
    serde_json::to_value(role)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .expect("a role serializes as a word")
}

fn parse_role(text: &str) -> Result<Role> {
    parse(
        "token role",
        &serde_json::to_string(text).expect("a string serializes"),
    )
}

/// What the store keeps of a token.
pub fn token_digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory for a database, removed when dropped.
    fn temp_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("sg-store-")
            .tempdir()
            .unwrap()
    }

    #[test]
    fn a_new_store_holds_the_default_group_and_reopens() {
        let dir = temp_dir();
        let path = dir.path().join("sg.db");
        let store = Database::open(&path).unwrap();
        let state = store.load().unwrap();
        assert_eq!(state.policy, Policy::new());
        assert_eq!(state.settings, Settings::default());
        assert_eq!(state.group_revisions["default"], 1);
        assert!(matches!(
            Database::open(&path),
            Err(StoreError::InUse { .. })
        ));
        drop(store);
        let store = Database::open(&path).unwrap();
        assert_eq!(store.load().unwrap().policy, Policy::new());
        let version: usize = store
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
    }

    #[test]
    fn saves_write_what_changed_with_new_revisions() {
        let dir = temp_dir();
        let mut store = Database::open(&dir.path().join("sg.db")).unwrap();
        let old = store.load().unwrap();
        let mut policy = old.policy.clone();
        policy.groups.push(Group::new("web").unwrap());
        let mac = "52:54:00:12:34:56".parse().unwrap();
        policy.ports.push(Port::new("vm1", "tap1", mac));
        let state = store.save(&old, &policy, &old.settings).unwrap();
        assert_eq!(state.policy, policy);
        assert_eq!(state.group_revisions["web"], 1);
        assert_eq!(state.port_revisions["vm1"], 1);
        assert_eq!(
            store.port_states().unwrap()["vm1"].phase,
            PortPhase::Pending
        );

        let mut next = policy.clone();
        next.groups[1].description = "web tier".into();
        next.groups.swap(0, 1);
        let settings = Settings {
            max_rules_per_group: 30,
            ..Settings::default()
        };
        let state = store.save(&state, &next, &settings).unwrap();
        assert_eq!(state.policy, next);
        assert_eq!(state.settings.max_rules_per_group, 30);
        assert_eq!(state.group_revisions["web"], 2);
        assert_eq!(state.group_revisions["default"], 1);
        assert_eq!(state.port_revisions["vm1"], 1);

        next.ports.clear();
        let state = store.save(&state, &next, &settings).unwrap();
        assert!(state.policy.ports.is_empty());
        assert!(state.port_revisions.is_empty());
    }

    #[test]
    fn tokens_have_roles_and_are_stored_as_digests() {
        let dir = temp_dir();
        let store = Database::open(&dir.path().join("sg.db")).unwrap();
        let (viewer, viewer_info) = store.create_token(Role::Viewer).unwrap();
        let (owner, _) = store.create_token(Role::Owner).unwrap();
        assert_eq!(viewer.len(), 64);
        let role_of = |token: &str| {
            store
                .token_roles()
                .unwrap()
                .get(&token_digest(token))
                .copied()
        };
        assert_eq!(role_of(&viewer), Some(Role::Viewer));
        assert_eq!(role_of(&owner), Some(Role::Owner));
        assert_eq!(role_of("nope"), None);
        let stored: u64 = store
            .conn
            .query_row(
                "SELECT count(*) FROM tokens WHERE digest = ?1",
                [&viewer],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(stored, 0);
        let tokens = store.tokens().unwrap();
        assert_eq!(tokens.len(), 2);
        assert!(tokens.contains(&viewer_info));
        assert_eq!(viewer_info.id, token_digest(&viewer)[..TOKEN_ID_LEN]);
        assert!(!store.revoke_token(&viewer_info.id[..4]).unwrap());
        assert!(store.revoke_token(&viewer_info.id).unwrap());
        assert_eq!(role_of(&viewer), None);
        assert_eq!(role_of(&owner), Some(Role::Owner));
    }
}
