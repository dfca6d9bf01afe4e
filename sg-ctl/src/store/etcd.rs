//! The desired state in etcd (v3 API), shared by the daemons of several
//! hosts.
//!
//! Keys, under `/sg/`: `groups/NAME` and `ports/NAME` (each `{position,
//! revision, spec}`, as SQLite's rows; a port's spec names its host),
//! `settings`, `tokens/DIGEST` (`{role, created}`: only the digest of a
//! token is kept), `hosts/NAME` (held by the host's lease, see below) and
//! `state`, which every change of the desired state writes. A change is
//! one transaction guarded by `state`'s revision as this daemon read it:
//! when another host changed anything since, nothing is written and the
//! daemon reads the state again and redoes the change (a change made
//! against a revision the client read, `If-Match`, then fails 409).
//!
//! Every key under `/sg/` is kept in memory, current through a watch: a
//! read never asks etcd, and the policy in force stays as it is while etcd
//! is away. A watch ends when etcd does; it is made again from the last
//! revision seen, or, when etcd compacted that away, the whole state is
//! read again. Each host keeps a lease alive (every [`KEEP_ALIVE_EVERY`],
//! lasting [`LEASE_TTL`]) holding `hosts/NAME`: a host whose daemon is gone
//! shows as down once its lease expires. Its ports stay in the desired
//! state, and members of their groups, until they are deleted: the host's
//! datapath keeps enforcing their policy without the daemon, and their
//! workloads may well be running.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

use super::{
    HostStatus, Location, Result, Row, State, StoreError, StoreHealth, rows,
    sqlite::{TOKEN_ID_LEN, json, parse},
    token_digest,
};
use sg_core::{
    access::{Role, TokenInfo},
    model::{Group, Policy, Port},
    settings::Settings,
};

const PREFIX: &str = "/sg/";
const GROUPS: &str = "/sg/groups/";
const PORTS: &str = "/sg/ports/";
const TOKENS: &str = "/sg/tokens/";
const HOSTS: &str = "/sg/hosts/";
const SETTINGS: &str = "/sg/settings";
/// Written by every change of the desired state: its revision is the
/// state's.
const STATE: &str = "/sg/state";

/// How long a host's lease outlives its last keep-alive.
pub const LEASE_TTL: i64 = 5;
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(1);
/// How long one call to etcd may take before the store counts as
/// unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the daemon waits for etcd at start.
const START_WAIT: Duration = Duration::from_secs(10);
/// How long a change waits for the watch to bring its own write back.
const WRITE_SEEN_WAIT: Duration = Duration::from_secs(2);

/// A group or port as stored.
#[derive(Serialize, Deserialize)]
struct Stored<T> {
    position: usize,
    revision: u64,
    spec: T,
}

#[derive(Serialize, Deserialize)]
struct StoredToken {
    role: Role,
    created: i64,
}

#[derive(Serialize, Deserialize)]
struct HostRecord {
    /// When its daemon started (Unix seconds).
    started: i64,
}

struct Entry {
    value: Vec<u8>,
    created: i64,
    modified: i64,
}

/// Every key under `/sg/` as of `revision`.
#[derive(Default)]
struct Cache {
    entries: BTreeMap<String, Entry>,
    revision: i64,
    /// Why etcd is unreachable; empty while it answers.
    error: String,
}

impl Cache {
    fn replace(&mut self, kvs: &[KeyValue], revision: i64) {
        if revision < self.revision {
            return;
        }
        self.entries = kvs.iter().filter_map(entry).collect();
        self.revision = revision;
    }

    fn state_revision(&self) -> u64 {
        self.entries
            .get(STATE)
            .map_or(0, |entry| entry.modified as u64)
    }
}

fn entry(kv: &KeyValue) -> Option<(String, Entry)> {
    Some((
        kv.key_str().ok()?.to_string(),
        Entry {
            value: kv.value().to_vec(),
            created: kv.create_revision(),
            modified: kv.mod_revision(),
        },
    ))
}

/// The cache with what waits on it.
struct Shared {
    /// The store, as `--store` names it.
    name: String,
    cache: Mutex<Cache>,
    /// Notified as the cache moves to a newer revision.
    moved: Condvar,
    /// Called when the state changed or etcd came or went.
    wake: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
}

impl Shared {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        let wake = self.wake.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(wake) = wake {
            wake();
        }
    }

    /// Records whether etcd answered; wakes the daemon when that changed.
    fn reached(&self, result: std::result::Result<(), String>) {
        let error = result.err().unwrap_or_default();
        let changed = {
            let mut cache = self.cache();
            let changed = cache.error.is_empty() != error.is_empty();
            if changed && error.is_empty() {
                eprintln!("sg-ctl daemon: the store {} answers again", self.name);
            } else if changed {
                eprintln!(
                    "sg-ctl daemon: the store {} is unreachable ({error}); the policy in force \
                     stays, changes are refused until it is back",
                    self.name
                );
            }
            cache.error = error;
            changed
        };
        if changed {
            self.wake();
        }
    }
}

/// The desired state in etcd, as one host's daemon sees it.
pub struct Cluster {
    name: String,
    host: String,
    /// Runs the watch and the lease; `None` once dropped.
    runtime: Option<Runtime>,
    client: Client,
    shared: Arc<Shared>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The daemon may end inside its own runtime, where waiting for
        // this one's threads is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Cluster {
    /// Connects to etcd at `endpoints` (waiting for it a while), gives an
    /// empty store the `default` group and default settings, reads the
    /// state, and starts the watch and the lease of `host`.
    pub fn open(endpoints: &[String], host: &str) -> Result<Cluster> {
        sg_core::model::check_name("host", host).map_err(|e| StoreError::Refused {
            store: "--host".into(),
            error: e.to_string(),
        })?;
        let name = Location::Etcd(endpoints.to_vec()).to_string();
        let unreachable = |error: String| StoreError::Unreachable {
            store: name.clone(),
            error,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sg-etcd")
            .enable_all()
            .build()
            .map_err(|e| unreachable(format!("starting its client: {e}")))?;
        let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT);
        let mut client = runtime
            .block_on(Client::connect(&urls, Some(options)))
            .map_err(|e| unreachable(e.to_string()))?;
        // `connect` succeeds without a server: ask it something.
        let deadline = Instant::now() + START_WAIT;
        while let Err(e) = runtime.block_on(client.status()) {
            if Instant::now() > deadline {
                return Err(unreachable(format!(
                    "{e}; start etcd, or give --store the endpoints it listens on"
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let cluster = Cluster {
            name: name.clone(),
            host: host.to_string(),
            client,
            shared: Arc::new(Shared {
                name,
                cache: Mutex::new(Cache::default()),
                moved: Condvar::new(),
                wake: Mutex::new(None),
            }),
            runtime: Some(runtime),
        };
        cluster.initialize()?;
        cluster.reload()?;
        let runtime = cluster.runtime.as_ref().expect("running");
        runtime.spawn(watch(cluster.client.clone(), cluster.shared.clone()));
        runtime.spawn(lease(
            cluster.client.clone(),
            cluster.shared.clone(),
            cluster.host.clone(),
        ));
        Ok(cluster)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn on_change(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        *self.shared.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake);
    }

    pub fn revision(&self) -> u64 {
        self.shared.cache().state_revision()
    }

    fn call<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> std::result::Result<T, etcd_client::Error>,
    ) -> Result<T> {
        let mut client = self.client.clone();
        let runtime = self.runtime.as_ref().expect("running");
        let result = runtime
            .block_on(f(&mut client))
            .map_err(|e| self.refusal(e));
        // A refusal is an answer: etcd is there.
        self.shared.reached(match &result {
            Err(StoreError::Unreachable { error, .. }) => Err(error.clone()),
            _ => Ok(()),
        });
        result
    }

    fn refusal(&self, error: etcd_client::Error) -> StoreError {
        let store = self.name.clone();
        match &error {
            etcd_client::Error::GRpcStatus(status)
                if status.code() == tonic::Code::InvalidArgument
                    || status.code() == tonic::Code::ResourceExhausted =>
            {
                StoreError::Refused {
                    store,
                    error: format!(
                        "{}: one change is one transaction, within etcd's --max-txn-ops and \
                         --max-request-bytes; make the change in smaller steps, or raise those \
                         limits",
                        status.message()
                    ),
                }
            }
            _ => StoreError::Unreachable {
                store,
                error: error.to_string(),
            },
        }
    }

    /// Writes the `default` group and default settings unless a state is
    /// there.
    fn initialize(&self) -> Result<()> {
        let default = Group::default_group();
        let txn = Txn::new()
            .when([Compare::version(STATE, CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(
                    format!("{GROUPS}{}", default.name),
                    json(&Stored {
                        position: 0,
                        revision: 1,
                        spec: &default,
                    }),
                    None,
                ),
                TxnOp::put(SETTINGS, json(&Settings::default()), None),
                TxnOp::put(STATE, "", None),
            ]);
        self.call(async move |c| c.txn(txn).await).map(drop)
    }

    /// Reads every key again.
    fn reload(&self) -> Result<()> {
        let response =
            self.call(async |c| c.get(PREFIX, Some(GetOptions::new().with_prefix())).await)?;
        let revision = response.header().map_or(0, |h| h.revision());
        self.shared.cache().replace(response.kvs(), revision);
        self.shared.moved.notify_all();
        Ok(())
    }

    /// Waits until the cache holds revision `revision`; reads every key
    /// again when the watch does not bring it soon.
    fn seen(&self, revision: i64) -> Result<()> {
        let deadline = Instant::now() + WRITE_SEEN_WAIT;
        let mut cache = self.shared.cache();
        while cache.revision < revision {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(cache);
                return self.reload();
            }
            cache = self
                .shared
                .moved
                .wait_timeout(cache, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    pub fn health(&self) -> StoreHealth {
        let cache = self.shared.cache();
        let mut hosts: BTreeMap<String, bool> = cache
            .entries
            .keys()
            .filter_map(|key| key.strip_prefix(HOSTS))
            .map(|host| (host.to_string(), true))
            .collect();
        for (key, entry) in cache.entries.range(PORTS.to_string()..) {
            if !key.starts_with(PORTS) {
                break;
            }
            if let Ok(port) = serde_json::from_slice::<Stored<Port>>(&entry.value)
                && let Some(host) = port.spec.host
            {
                hosts.entry(host).or_insert(false);
            }
        }
        StoreHealth {
            store: self.name.clone(),
            reachable: cache.error.is_empty(),
            error: cache.error.clone(),
            revision: cache.state_revision(),
            host: Some(self.host.clone()),
            hosts: hosts
                .into_iter()
                .map(|(name, up)| HostStatus { name, up })
                .collect(),
        }
    }

    pub fn load(&self) -> Result<State> {
        let cache = self.shared.cache();
        let (groups, group_revisions) = objects::<Group>(&cache, GROUPS)?;
        let (ports, port_revisions) = objects::<Port>(&cache, PORTS)?;
        let settings = match cache.entries.get(SETTINGS) {
            Some(entry) => parse("settings", &String::from_utf8_lossy(&entry.value))?,
            None => Settings::default(),
        };
        Ok(State {
            policy: Policy { groups, ports },
            settings,
            group_revisions,
            port_revisions,
            revision: cache.state_revision(),
        })
    }

    /// Writes what differs between `old` and `policy` and `settings` in
    /// one transaction, as long as the state in etcd is still `old`'s.
    pub fn save(&self, old: &State, policy: &Policy, settings: &Settings) -> Result<State> {
        let mut ops = Vec::new();
        put_rows(
            &mut ops,
            GROUPS,
            rows(
                &old.policy.groups,
                &policy.groups,
                |g| &g.name,
                &old.group_revisions,
            ),
            &old.group_revisions,
        );
        put_rows(
            &mut ops,
            PORTS,
            rows(
                &old.policy.ports,
                &policy.ports,
                |p| &p.name,
                &old.port_revisions,
            ),
            &old.port_revisions,
        );
        if *settings != old.settings {
            ops.push(TxnOp::put(SETTINGS, json(settings), None));
        }
        ops.push(TxnOp::put(STATE, "", None));
        let txn = Txn::new()
            .when([Compare::mod_revision(
                STATE,
                CompareOp::Equal,
                old.revision as i64,
            )])
            .and_then(ops)
            .or_else([TxnOp::get(PREFIX, Some(GetOptions::new().with_prefix()))]);
        let response = self.call(async move |c| c.txn(txn).await)?;
        let revision = response.header().map_or(0, |h| h.revision());
        if !response.succeeded() {
            if let Some(etcd_client::TxnOpResponse::Get(get)) =
                response.op_responses().into_iter().next()
            {
                self.shared.cache().replace(get.kvs(), revision);
                self.shared.moved.notify_all();
            }
            return Err(StoreError::Stale);
        }
        self.seen(revision)?;
        self.load()
    }

    pub fn create_token(&self, role: Role) -> Result<(String, TokenInfo)> {
        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let digest = token_digest(&token);
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let value = json(&StoredToken { role, created });
        let key = format!("{TOKENS}{digest}");
        let response = self.call(async move |c| c.put(key, value, None).await)?;
        self.seen(response.header().map_or(0, |h| h.revision()))?;
        Ok((
            token,
            TokenInfo {
                id: digest[..TOKEN_ID_LEN].to_string(),
                role,
                created,
            },
        ))
    }

    /// Every token, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let mut tokens: Vec<(i64, TokenInfo)> = self
            .stored_tokens()?
            .into_iter()
            .map(|(digest, created_at, token)| {
                let info = TokenInfo {
                    id: digest[..TOKEN_ID_LEN.min(digest.len())].to_string(),
                    role: token.role,
                    created: token.created,
                };
                (created_at, info)
            })
            .collect();
        tokens.sort_by_key(|(created_at, _)| *created_at);
        Ok(tokens.into_iter().map(|(_, info)| info).collect())
    }

    pub fn revoke_token(&self, id: &str) -> Result<bool> {
        let Some(digest) = self
            .stored_tokens()?
            .into_iter()
            .map(|(digest, _, _)| digest)
            .find(|digest| id.len() == TOKEN_ID_LEN && digest.starts_with(id))
        else {
            return Ok(false);
        };
        let key = format!("{TOKENS}{digest}");
        let response = self.call(async move |c| c.delete(key, None).await)?;
        self.seen(response.header().map_or(0, |h| h.revision()))?;
        Ok(response.deleted() > 0)
    }

    pub fn token_roles(&self) -> Result<HashMap<String, Role>> {
        Ok(self
            .stored_tokens()?
            .into_iter()
            .map(|(digest, _, token)| (digest, token.role))
            .collect())
    }

    /// Each token's digest, the revision that created it, and its record.
    fn stored_tokens(&self) -> Result<Vec<(String, i64, StoredToken)>> {
        let cache = self.shared.cache();
        let mut tokens = Vec::new();
        for (key, entry) in cache.entries.range(TOKENS.to_string()..) {
            let Some(digest) = key.strip_prefix(TOKENS) else {
                break;
            };
            let token = parse(
                &format!("token {}", &digest[..TOKEN_ID_LEN.min(digest.len())]),
                &String::from_utf8_lossy(&entry.value),
            )?;
            tokens.push((digest.to_string(), entry.created, token));
        }
        Ok(tokens)
    }
}

/// The objects stored under `prefix`, in policy order, and their revisions.
fn objects<T: for<'de> Deserialize<'de>>(
    cache: &Cache,
    prefix: &str,
) -> Result<(Vec<T>, HashMap<String, u64>)> {
    let mut objects = Vec::new();
    let mut revisions = HashMap::new();
    for (key, entry) in cache.entries.range(prefix.to_string()..) {
        let Some(name) = key.strip_prefix(prefix) else {
            break;
        };
        let stored: Stored<T> = parse(
            &format!("key {key}"),
            &String::from_utf8_lossy(&entry.value),
        )?;
        objects.push((stored.position, stored.spec));
        revisions.insert(name.to_string(), stored.revision);
    }
    objects.sort_by_key(|(position, _)| *position);
    Ok((objects.into_iter().map(|(_, o)| o).collect(), revisions))
}

/// The operations that write `rows` of the objects under `prefix`.
fn put_rows<T: Serialize>(
    ops: &mut Vec<TxnOp>,
    prefix: &str,
    rows: Vec<Row<'_, T>>,
    revisions: &HashMap<String, u64>,
) {
    for row in rows {
        let (name, stored) = match row {
            Row::Delete(name) => {
                ops.push(TxnOp::delete(format!("{prefix}{name}"), None));
                continue;
            }
            Row::Move {
                name,
                position,
                object,
            } => (
                name,
                Stored {
                    position,
                    revision: revisions.get(name).copied().unwrap_or(1),
                    spec: object,
                },
            ),
            Row::Put {
                name,
                position,
                revision,
                object,
            } => (
                name,
                Stored {
                    position,
                    revision,
                    spec: object,
                },
            ),
        };
        ops.push(TxnOp::put(format!("{prefix}{name}"), json(&stored), None));
    }
}

/// Keeps the cache current: a watch of `/sg/` from the revision after the
/// cache's, made again whenever it ends (etcd restarted, the connection
/// broke); the whole state read again when that revision was compacted.
async fn watch(mut client: Client, shared: Arc<Shared>) {
    loop {
        let from = shared.cache().revision + 1;
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let ended = match client.watch(PREFIX, Some(options)).await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(response))
                        if response.canceled() || response.compact_revision() > 0 =>
                    {
                        eprintln!(
                            "sg-ctl daemon: the store {} compacted the revisions from {from} \
                             away (up to {}): reading the whole state again",
                            shared.name,
                            response.compact_revision()
                        );
                        match client
                            .get(PREFIX, Some(GetOptions::new().with_prefix()))
                            .await
                        {
                            Ok(all) => {
                                let revision = all.header().map_or(0, |h| h.revision());
                                shared.cache().replace(all.kvs(), revision);
                                shared.moved.notify_all();
                                shared.wake();
                                break String::new();
                            }
                            Err(e) => break e.to_string(),
                        }
                    }
                    Ok(Some(response)) => {
                        shared.reached(Ok(()));
                        if apply(&shared, response.events()) {
                            shared.moved.notify_all();
                            shared.wake();
                        }
                    }
                    Ok(None) => break "the watch ended".to_string(),
                    Err(e) => break e.to_string(),
                }
            },
            Err(e) => e.to_string(),
        };
        if !ended.is_empty() {
            shared.reached(Err(ended));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Applies watch events newer than the cache (the events of one
/// transaction share its revision); whether any was.
fn apply(shared: &Shared, events: &[etcd_client::Event]) -> bool {
    let mut cache = shared.cache();
    let before = cache.revision;
    let mut moved = false;
    for event in events {
        let Some(kv) = event.kv() else { continue };
        if kv.mod_revision() <= before {
            continue;
        }
        match event.event_type() {
            EventType::Put => {
                if let Some((key, entry)) = entry(kv) {
                    cache.entries.insert(key, entry);
                }
            }
            EventType::Delete => {
                if let Ok(key) = kv.key_str() {
                    cache.entries.remove(key);
                }
            }
        }
        cache.revision = kv.mod_revision();
        moved = true;
    }
    moved
}

/// Holds `hosts/HOST` with a lease kept alive, granted again (and the key
/// written again) whenever it expired, as it does while etcd is away.
async fn lease(mut client: Client, shared: Arc<Shared>, host: String) {
    let key = format!("{HOSTS}{host}");
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let record = json(&HostRecord { started });
    loop {
        let held = async {
            let id = client.lease_grant(LEASE_TTL, None).await?.id();
            let options = PutOptions::new().with_lease(id);
            client
                .put(key.as_str(), record.as_str(), Some(options))
                .await?;
            let (mut keeper, mut responses) = client.lease_keep_alive(id).await?;
            loop {
                keeper.keep_alive().await?;
                match responses.message().await? {
                    Some(response) if response.ttl() > 0 => shared.reached(Ok(())),
                    _ => return Ok::<_, etcd_client::Error>(()),
                }
                tokio::time::sleep(KEEP_ALIVE_EVERY).await;
            }
        };
        if let Err(e) = held.await {
            shared.reached(Err(e.to_string()));
        }
        tokio::time::sleep(KEEP_ALIVE_EVERY).await;
    }
}
