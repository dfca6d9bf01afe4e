//! The daemon's HTTP/JSON API on a Unix socket (docs/openapi.yaml): the
//! types of its requests and answers, which [`crate::client`] shares, the
//! server, and the optional Prometheus listener.
//!
//! Who the client is: a token in `Authorization: Bearer TOKEN` gives that
//! token's role; without one, a client running as root (uid 0, from the
//! socket's SO_PEERCRED) is an owner, as root could edit the database or
//! the maps anyway; anyone else is anonymous and may read public groups.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        ConnectInfo, FromRequestParts, Path as UrlPath, Query, State, connect_info::Connected,
    },
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
    serve::IncomingStream,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::net::{TcpListener, UnixListener};

use super::{Daemon, Hits};
use crate::{datapath::conntrack::Flow, store::StoreError};
use sg_core::{
    access::{Role, TokenInfo},
    model::{Group, Port, Rule},
    settings::Settings,
    status::PortPhase,
};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/sg/sg.sock";
/// How often the daemon re-checks the datapath against the store, besides
/// when an interface of a port comes or goes (what another sg-ctl did, a
/// namespace that appears later).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// How often idle flows leave the connection table.
const CONNTRACK_GC_EVERY: Duration = Duration::from_secs(10);

/// Why a request was refused; each kind is one HTTP status and one exit
/// code of the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Invalid,
    NotFound,
    /// No credentials: neither a token nor root.
    Unauthenticated,
    Forbidden,
    Conflict,
    Internal,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub(super) fn invalid(error: impl ToString) -> Self {
        Self::new(ErrorKind::Invalid, error.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        Self::new(ErrorKind::Internal, error.to_string())
    }
}

/// Where a port's policy stands, or a group's over the ports attaching
/// it; in order of concern, a group taking its ports' worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// A group no port attaches.
    Na,
    Active,
    Pending,
    Error,
}

impl From<PortPhase> for Phase {
    fn from(phase: PortPhase) -> Self {
        match phase {
            PortPhase::Pending => Self::Pending,
            PortPhase::Active => Self::Active,
            PortPhase::Error => Self::Error,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Na => "na",
            Self::Active => "active",
            Self::Pending => "pending",
            Self::Error => "error",
        })
    }
}

/// A phase, with the reason of an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub state: Phase,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A group as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupView {
    pub revision: u64,
    pub spec: Group,
    /// Ports attaching the group.
    pub ports: Vec<String>,
    pub status: Status,
    /// What each rule decided, in rule order (empty while no port is
    /// attached).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hits: Vec<Hits>,
}

/// A port as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortView {
    pub revision: u64,
    pub spec: Port,
    pub status: Status,
    /// The datapath's policy id for the port, once installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<u32>,
}

/// A whole desired state, as `sg-ctl apply` reads it and `sg-ctl export`
/// writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(default)]
    pub groups: Vec<Group>,
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Left out: the settings stay as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Settings>,
}

/// What a change does to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

/// The objects of a desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Group,
    Port,
    Settings,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Group => "group",
            Self::Port => "port",
            Self::Settings => "settings",
        })
    }
}

/// One difference between the desired state and a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub action: Action,
    pub kind: Kind,
    pub name: String,
    /// For updates, the fields that differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

/// What `apply` did or, with `dry_run`, would do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub dry_run: bool,
    pub changes: Vec<Change>,
}

/// Which of a port's flows `GET /v1/ports/{name}/flows` lists.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FlowQuery {
    /// Either end in this prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<ipnet::IpNet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// The query of `POST /v1/apply`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ApplyQuery {
    #[serde(default)]
    pub dry_run: bool,
}

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// The new name of `POST /v1/groups/{name}/clone`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NameBody {
    pub name: String,
}

/// The groups of `POST /v1/ports/{name}/attach` and `…/detach`.
#[derive(Debug, Serialize, Deserialize)]
pub struct GroupsBody {
    pub groups: Vec<String>,
}

/// Where `POST /v1/ports/{name}/plug` puts the port: its interface and that
/// interface's namespace, when they change.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlugBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

/// The role of a token `POST /v1/tokens` creates.
#[derive(Debug, Serialize, Deserialize)]
pub struct RoleBody {
    pub role: Role,
}

/// A token `POST /v1/tokens` created: the token itself, shown only then,
/// and its listing.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// The paths of the API's operations, as the router serves them and the
/// client asks them; `{…}` stands for a path segment.
pub mod routes {
    pub const GROUPS: &str = "/v1/groups";
    pub const GROUP: &str = "/v1/groups/{name}";
    pub const CLONE_GROUP: &str = "/v1/groups/{name}/clone";
    pub const RULES: &str = "/v1/groups/{name}/rules";
    pub const RULE: &str = "/v1/groups/{name}/rules/{index}";
    pub const PORTS: &str = "/v1/ports";
    pub const PORT: &str = "/v1/ports/{name}";
    pub const ATTACH_GROUPS: &str = "/v1/ports/{name}/attach";
    pub const DETACH_GROUPS: &str = "/v1/ports/{name}/detach";
    pub const PLUG: &str = "/v1/ports/{name}/plug";
    pub const FLOWS: &str = "/v1/ports/{name}/flows";
    pub const SETTINGS: &str = "/v1/settings";
    pub const EXPORT: &str = "/v1/export";
    pub const APPLY: &str = "/v1/apply";
    pub const TOKENS: &str = "/v1/tokens";
    pub const TOKEN: &str = "/v1/tokens/{id}";
}

type Shared = Arc<Mutex<Daemon>>;
type Reply<T> = Result<Json<T>, ApiError>;

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.kind {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// The peer of a Unix-socket connection.
#[derive(Clone, Copy, Debug)]
struct Peer {
    uid: Option<u32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        Peer {
            uid: stream.io().peer_cred().ok().map(|cred| cred.uid()),
        }
    }
}

/// The role of the client making a request.
struct Caller(Role);

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, daemon: &Shared) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .map(|info| info.0);
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(|token| token.trim().to_string());
        match token {
            Some(token) => {
                let daemon = daemon.clone();
                let role = blocking(move || Ok(lock(&daemon).store().role_of(&token)?)).await?;
                role.map(Caller).ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::Unauthenticated,
                        "unknown token; an owner creates tokens with \
                         `sg-ctl daemon token create --role viewer|owner`",
                    )
                })
            }
            None if peer.and_then(|p| p.uid) == Some(0) => Ok(Caller(Role::Owner)),
            None => Ok(Caller(Role::Anonymous)),
        }
    }
}

fn lock(daemon: &Shared) -> std::sync::MutexGuard<'_, Daemon> {
    // A panic inside a request leaves the state as committed (changes are
    // checked before they are written), so the lock stays usable.
    daemon
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs store and datapath work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("request failed: {e}")))?
}

/// Runs `f` on the daemon and answers with its result as JSON.
async fn with<T: Serialize + Send + 'static>(
    daemon: Shared,
    f: impl FnOnce(&mut Daemon) -> Result<T, ApiError> + Send + 'static,
) -> Result<Json<T>, ApiError> {
    blocking(move || f(&mut lock(&daemon))).await.map(Json)
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::new(ErrorKind::Invalid, e.to_string()))
}

/// The revision a change expects, from `If-Match`.
fn revision(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|text| text.trim().trim_matches('"'))
        .and_then(|text| text.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::Invalid,
                "If-Match: use the revision number the object was read at",
            )
        })
}

type Name = UrlPath<String>;
type NameIndex = UrlPath<(String, usize)>;

fn router(daemon: Shared) -> Router {
    Router::new()
        .route(routes::GROUPS, get(list_groups).post(create_group))
        .route(
            routes::GROUP,
            get(show_group).put(update_group).delete(delete_group),
        )
        .route(routes::CLONE_GROUP, post(clone_group))
        .route(routes::RULES, post(add_rules))
        .route(routes::RULE, put(update_rule).delete(delete_rule))
        .route(routes::PORTS, get(list_ports).post(create_port))
        .route(
            routes::PORT,
            get(show_port).put(update_port).delete(delete_port),
        )
        .route(routes::ATTACH_GROUPS, post(attach_groups))
        .route(routes::DETACH_GROUPS, post(detach_groups))
        .route(routes::PLUG, post(plug))
        .route(routes::FLOWS, get(port_flows))
        .route(routes::SETTINGS, get(show_settings).put(update_settings))
        .route(routes::EXPORT, get(export))
        .route(routes::APPLY, post(apply))
        .route(routes::TOKENS, get(list_tokens).post(create_token))
        .route(routes::TOKEN, delete(revoke_token))
        .with_state(daemon)
}

async fn list_groups(State(d): State<Shared>, Caller(role): Caller) -> Reply<Vec<GroupView>> {
    with(d, move |d| d.groups(role)).await
}

async fn create_group(
    State(d): State<Shared>,
    Caller(role): Caller,
    b: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let group: Group = body(&b)?;
    let view = with(d, move |d| d.create_group(role, group)).await?;
    Ok((StatusCode::CREATED, view))
}

async fn show_group(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath(name): Name,
) -> Reply<GroupView> {
    with(d, move |d| d.group(role, &name)).await
}

async fn update_group(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath(name): Name,
    headers: HeaderMap,
    b: Bytes,
) -> Reply<GroupView> {
    let (group, revision) = (body(&b)?, revision(&headers)?);
    with(d, move |d| d.replace_group(role, &name, group, revision)).await
}

async fn delete_group(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath(name): Name,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let revision = revision(&headers)?;
    blocking(move || lock(&d).delete_group(role, &name, revision)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clone_group(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath(name): Name,
    b: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let to: NameBody = body(&b)?;
    let view = with(d, move |d| d.clone_group(role, &name, &to.name)).await?;
    Ok((StatusCode::CREATED, view))
}

async fn add_rules(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath(name): Name,
    headers: HeaderMap,
    b: Bytes,
) -> Reply<GroupView> {
    let (rules, revision): (Vec<Rule>, _) = (body(&b)?, revision(&headers)?);
    with(d, move |d| d.add_rules(role, &name, rules, revision)).await
}

async fn update_rule(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath((name, index)): NameIndex,
    headers: HeaderMap,
    b: Bytes,
) -> Reply<GroupView> {
    let (rule, revision) = (body(&b)?, revision(&headers)?);
    with(d, move |d| {
        d.set_rule(role, &name, index, Some(rule), revision)
    })
    .await
}

async fn delete_rule(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath((name, index)): NameIndex,
    headers: HeaderMap,
) -> Reply<GroupView> {
    let revision = revision(&headers)?;
    with(d, move |d| d.set_rule(role, &name, index, None, revision)).await
}

async fn list_ports(State(d): State<Shared>, Caller(role): Caller) -> Reply<Vec<PortView>> {
    with(d, move |d| d.ports(role)).await
}

async fn port_flows(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath(name): Name,
    Query(query): Query<FlowQuery>,
) -> Reply<Vec<Flow>> {
    with(d, move |d| d.flows(role, &name, query)).await
}

async fn create_port(
    State(d): State<Shared>,
    Caller(role): Caller,
    b: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let port: Port = body(&b)?;
    let view = with(d, move |d| d.create_port(role, port)).await?;
    Ok((StatusCode::CREATED, view))
}

async fn show_port(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath(name): Name,
) -> Reply<PortView> {
    with(d, move |d| d.port(role, &name)).await
}

async fn update_port(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath(name): Name,
    headers: HeaderMap,
    b: Bytes,
) -> Reply<PortView> {
    let (port, revision) = (body(&b)?, revision(&headers)?);
    with(d, move |d| d.replace_port(role, &name, port, revision)).await
}

async fn delete_port(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath(name): Name,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let revision = revision(&headers)?;
    blocking(move || lock(&d).delete_port(role, &name, revision)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn attach_groups(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath(name): Name,
    b: Bytes,
) -> Reply<PortView> {
    let groups: GroupsBody = body(&b)?;
    with(d, move |d| d.attach_groups(role, &name, &groups.groups)).await
}

async fn plug(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath(name): Name,
    b: Bytes,
) -> Reply<PortView> {
    let at: PlugBody = body(&b)?;
    with(d, move |d| d.plug(role, &name, at.ifname, at.netns)).await
}

async fn detach_groups(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath(name): Name,
    b: Bytes,
) -> Reply<PortView> {
    let groups: GroupsBody = body(&b)?;
    with(d, move |d| d.detach_groups(role, &name, &groups.groups)).await
}

async fn show_settings(State(d): State<Shared>, Caller(role): Caller) -> Reply<Settings> {
    with(d, move |d| d.settings(role)).await
}

async fn update_settings(
    State(d): State<Shared>,
    Caller(role): Caller,
    b: Bytes,
) -> Reply<Settings> {
    let settings: Settings = body(&b)?;
    with(d, move |d| d.set_settings(role, settings)).await
}

async fn export(State(d): State<Shared>, Caller(role): Caller) -> Reply<Document> {
    with(d, move |d| d.export(role)).await
}

async fn apply(
    State(d): State<Shared>,
    Caller(role): Caller,
    Query(query): Query<ApplyQuery>,
    b: Bytes,
) -> Reply<Applied> {
    let document = body(&b)?;
    with(d, move |d| d.apply(role, document, query.dry_run)).await
}

async fn create_token(
    State(d): State<Shared>,
    Caller(role): Caller,
    b: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let request: RoleBody = body(&b)?;
    let Json((token, info)) = with(d, move |d| d.create_token(role, request.role)).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, info })))
}

async fn list_tokens(State(d): State<Shared>, Caller(role): Caller) -> Reply<Vec<TokenInfo>> {
    with(d, move |d| d.tokens(role)).await
}

async fn revoke_token(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    blocking(move || lock(&d).revoke_token(role, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Serves the API on `socket` (and metrics on `metrics`, if given) until
/// SIGINT or SIGTERM; reconciles the datapath every few seconds meanwhile.
/// Leaving stops nothing in the datapath: the pinned programs and maps go
/// on enforcing the policy.
pub async fn serve(
    daemon: Daemon,
    socket: &Path,
    metrics: Option<TcpListener>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::os::unix::fs::PermissionsExt as _;

    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the old socket {}", socket.display()));
        }
        _ => {}
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("listening on {}", socket.display()))?;
    // Anyone may connect; what they may do is the token's or uid's.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("opening up {}", socket.display()))?;
    let _socket = RemoveOnDrop(socket.to_path_buf());

    let wakes = daemon.wakes();
    let daemon: Shared = Arc::new(Mutex::new(daemon));
    let ticker = daemon.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(RECONCILE_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = wakes.notified() => {}
            }
            let daemon = ticker.clone();
            let result = blocking(move || lock(&daemon).reconcile()).await;
            if let Err(e) = result {
                eprintln!("sg-ctl daemon: reconciling: {e}");
            }
        }
    });
    // Expiry walks the whole connection table: on its own, without the
    // daemon's lock, so that the API does not wait for it.
    let datapath = lock(&daemon).datapath().clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(CONNTRACK_GC_EVERY);
        loop {
            every.tick().await;
            let datapath = datapath.clone();
            let result = blocking(move || {
                datapath
                    .expire_flows()
                    .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))
            })
            .await;
            if let Err(e) = result {
                eprintln!("sg-ctl daemon: expiring idle flows: {e}");
            }
        }
    });
    if let Some(listener) = metrics {
        let daemon = daemon.clone();
        let app = Router::new().route(
            "/metrics",
            get(move || async move {
                let text = blocking(move || Ok(lock(&daemon).metrics())).await;
                text.map(|text| ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("sg-ctl daemon: metrics listener: {e}");
            }
        });
    }
    eprintln!("sg-ctl daemon: listening on {}", socket.display());
    axum::serve(
        listener,
        router(daemon).into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown())
    .await
    .context("serving the API")
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use tower::ServiceExt as _;

    use super::*;
    use crate::{
        client::{Client, ClientError},
        datapath::{Datapath, Pins},
        store::Store,
    };
    use sg_core::model::{Direction, MacAddr};

    fn temp_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("sg-unit-api-")
            .tempdir()
            .unwrap()
    }

    /// A daemon on a fresh database in `dir`; without ports it never
    /// touches the datapath, and the pins it is given are never made.
    fn daemon(dir: &tempfile::TempDir) -> Daemon {
        let store = Store::open(&dir.path().join("sg.db")).unwrap();
        Daemon::start(store, Datapath::new(Pins::new(dir.path().join("pins")))).unwrap()
    }

    /// Every operation docs/openapi.yaml describes is routed: the answer
    /// comes from a handler (a JSON body), not from the router's 404 or 405.
    #[tokio::test]
    async fn every_documented_operation_is_served() {
        let spec: serde_json::Value =
            serde_norway::from_str(include_str!("../../../docs/openapi.yaml")).unwrap();
        let dir = temp_dir();
        let app = router(Arc::new(Mutex::new(daemon(&dir))));
        let paths = spec["paths"].as_object().unwrap();
        let mut operations = 0;
        for (path, item) in paths {
            let uri = path
                .replace("{name}", "default")
                .replace("{index}", "0")
                .replace("{id}", "0");
            for method in ["get", "put", "post", "delete"] {
                if item.get(method).is_none() {
                    continue;
                }
                operations += 1;
                let request = Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(&uri)
                    .body(Body::from("{}"))
                    .unwrap();
                let response = app.clone().oneshot(request).await.unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                assert!(
                    serde_json::from_slice::<serde_json::Value>(&body).is_ok(),
                    "{method} {path}: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
        // As many as `router` has: none is left undocumented.
        assert_eq!(operations, 25);
    }
    /// Each method of the client asks a route and method the router
    /// serves, with a body and query its handler reads: one call per
    /// operation, as an owner, through the socket.
    #[tokio::test]
    async fn the_client_asks_what_the_router_serves() {
        let dir = temp_dir();
        let daemon = daemon(&dir);
        let (token, _) = daemon.store().create_token(Role::Owner).unwrap();
        let socket = dir.path().join("sg.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let app = router(Arc::new(Mutex::new(daemon)));
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await
        });
        let client = Client::new(&socket, Some(token));

        assert_eq!(client.groups().await.unwrap().len(), 1);
        let web = client
            .create_group(&Group::new("web").unwrap())
            .await
            .unwrap();
        let group = Group {
            description: "web tier".into(),
            ..web.spec
        };
        let web = client
            .replace_group("web", &group, Some(web.revision))
            .await
            .unwrap();
        let rule = Rule::new(Direction::Ingress);
        let web = client
            .add_rules("web", std::slice::from_ref(&rule), Some(web.revision))
            .await
            .unwrap();
        assert_eq!(web.spec.rules.len(), 3);
        let web = client
            .set_rule("web", 2, Some(&rule), Some(web.revision))
            .await
            .unwrap();
        let web = client.set_rule("web", 2, None, Some(web.revision)).await;
        assert_eq!(web.unwrap().spec.rules.len(), 2);
        assert_eq!(
            client.group("web").await.unwrap().spec.description,
            "web tier"
        );
        client.clone_group("web", "copy").await.unwrap();
        client.delete_group("copy", None).await.unwrap();

        // The interface does not exist: the port is created, in error.
        let port = Port::new("vm", "sg-no-iface", MacAddr([0x52, 0x54, 0, 0, 0, 1]));
        let vm = client.create_port(&port).await.unwrap();
        assert_eq!(vm.status.state, Phase::Error);
        client
            .replace_port("vm", &vm.spec, Some(vm.revision))
            .await
            .unwrap();
        let groups = ["web".to_string()];
        client.attach_groups("vm", &groups).await.unwrap();
        let vm = client.detach_groups("vm", &groups).await.unwrap();
        assert_eq!(client.port("vm").await.unwrap().revision, vm.revision);
        // Not enforced: plug says so.
        let plugged = client.plug("vm", &PlugBody::default()).await;
        assert!(
            matches!(&plugged, Err(ClientError::Api { status, .. }) if *status == StatusCode::CONFLICT),
            "{plugged:?}"
        );
        assert_eq!(client.ports().await.unwrap().len(), 1);
        let query = FlowQuery {
            address: Some("198.18.0.0/24".parse().unwrap()),
            protocol: Some("tcp".into()),
            state: Some("established".into()),
        };
        // The query is read before the port is found unattached.
        match client.flows("vm", &query).await {
            Err(ClientError::Api { status, message }) => {
                assert_eq!(status, StatusCode::CONFLICT, "{message}");
            }
            other => panic!("the port has no flows: {other:?}"),
        }
        client.delete_port("vm", Some(vm.revision)).await.unwrap();

        let settings = client.settings().await.unwrap();
        assert_eq!(client.set_settings(&settings).await.unwrap(), settings);
        let document = client.export().await.unwrap();
        assert!(
            client
                .apply(&document, true)
                .await
                .unwrap()
                .changes
                .is_empty()
        );
        assert!(
            client
                .apply(&document, false)
                .await
                .unwrap()
                .changes
                .is_empty()
        );

        let viewer = client.create_token(Role::Viewer).await.unwrap();
        assert_eq!(client.tokens().await.unwrap().len(), 2);
        client.revoke_token(&viewer.info.id).await.unwrap();
    }
}
