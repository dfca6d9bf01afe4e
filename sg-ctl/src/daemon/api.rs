//! The daemon's HTTP/JSON API on a Unix socket (docs/openapi.yaml): the
//! types of its requests and answers, which [`crate::client`] shares, the
//! server, and the optional Prometheus listener.
//!
//! Who the client is: a token in `Authorization: Bearer TOKEN` gives that
//! token's role; without one, a client running as root (uid 0, from the
//! socket's SO_PEERCRED) is an owner, as root could edit the database or
//! the maps anyway; anyone else is anonymous and may read public groups.
//! [`http`] is the transport under it, with the limits that keep one
//! client from taking the API from the others.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, FromRequestParts, Path as UrlPath, Request, State},
    http::{HeaderMap, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};
use tokio::net::{TcpListener, UnixListener};

use super::{Daemon, Hits, View, Views};
use crate::{
    datapath::conntrack::Flow,
    fields::{self, Subject},
    store::{StoreError, StoreHealth},
};
use sg_core::{
    access::{Role, TokenInfo},
    model::{Group, Port, Rule, RuleId, check_name, parse_cidr},
    settings::Settings,
    status::PortPhase,
    text::Quoted,
};

pub mod console;
pub mod http;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/sg/sg.sock";
/// How often the daemon re-checks the datapath against the store, besides
/// when an interface of a port comes or goes (what another sg-ctl did, a
/// namespace that appears later).
pub(super) const RECONCILE_EVERY: Duration = Duration::from_secs(5);
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
    /// The store holding the desired state cannot be reached.
    Unavailable,
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
        let kind = match error {
            StoreError::Unreachable { .. } => ErrorKind::Unavailable,
            StoreError::Refused { .. } => ErrorKind::Invalid,
            StoreError::Stale => ErrorKind::Conflict,
            _ => ErrorKind::Internal,
        };
        Self::new(kind, error.to_string())
    }
}

/// Where a port's policy stands, or a group's over the ports attaching
/// it; in order of concern, a group taking its ports' worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// A group no port attaches.
    Na,
    /// A port another host's daemon enforces (its phase is that host's to
    /// tell).
    Remote,
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
            Self::Remote => "remote",
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

/// Where a group stands on one of the ports attaching it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    pub port: String,
    #[serde(flatten)]
    pub status: Status,
}

/// A group as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupView {
    pub revision: u64,
    pub spec: Group,
    /// Ports attaching the group.
    pub ports: Vec<String>,
    pub status: Status,
    /// The group on each of its ports, in the order of `ports`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_status: Vec<PortStatus>,
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
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "prefix"
    )]
    pub address: Option<ipnet::IpNet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// An address or CIDR, as rules take them.
fn prefix<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<ipnet::IpNet>, D::Error> {
    use serde::de::Error as _;
    Option::<String>::deserialize(deserializer)?
        .map(|text| parse_cidr(&text).map_err(D::Error::custom))
        .transpose()
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

/// The ports of `POST /v1/groups/{name}/assign`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortsBody {
    pub ports: Vec<String>,
}

/// What a port's datapath counted in one direction with one outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounter {
    pub direction: String,
    pub outcome: String,
    pub packets: u64,
    pub bytes: u64,
}

/// A preset of `GET /v1/presets` with the rules it adds (ingress from
/// anywhere; a client sets their direction and remote).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresetView {
    pub name: String,
    pub description: String,
    pub rules: Vec<Rule>,
}

/// A rule in a path: its id (`r-…`), which names it whatever moves, or
/// its index, which names whatever rule is at that position when the
/// request arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleRef {
    Id(RuleId),
    Index(usize),
}

impl std::str::FromStr for RuleRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.starts_with("r-") {
            return text
                .parse()
                .map(RuleRef::Id)
                .map_err(|e: sg_core::model::FieldError| e.to_string());
        }
        text.parse().map(RuleRef::Index).map_err(|_| {
            format!(
                "rule: {} is neither a rule's id (r-…) nor its index (from 0); \
                 `sg-ctl rule list GROUP` shows both",
                Quoted(text)
            )
        })
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => id.fmt(f),
            Self::Index(index) => index.fmt(f),
        }
    }
}

/// What a change of a rule expects of it (`If-Match`): its ETag, or the
/// group's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Anything,
    Revision(u64),
    Tag(String),
}

/// A rule's ETag, from its content (its id included): it changes when the
/// rule does, and only then.
pub fn rule_etag(rule: &Rule) -> String {
    use sha2::Digest as _;
    let json = serde_json::to_vec(rule).unwrap_or_default();
    let digest = sha2::Sha256::digest(&json);
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"rule-{hex}\"")
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
    pub const ASSIGN_GROUP: &str = "/v1/groups/{name}/assign";
    pub const RULES: &str = "/v1/groups/{name}/rules";
    pub const RULE: &str = "/v1/groups/{name}/rules/{rule}";
    pub const PORTS: &str = "/v1/ports";
    pub const PORT: &str = "/v1/ports/{name}";
    pub const ATTACH_GROUPS: &str = "/v1/ports/{name}/attach";
    pub const DETACH_GROUPS: &str = "/v1/ports/{name}/detach";
    pub const PLUG: &str = "/v1/ports/{name}/plug";
    pub const UNPLUG: &str = "/v1/ports/{name}/unplug";
    pub const FLOWS: &str = "/v1/ports/{name}/flows";
    pub const PORT_STATS: &str = "/v1/ports/{name}/stats";
    pub const PROTOCOLS: &str = "/v1/protocols";
    pub const PRESETS: &str = "/v1/presets";
    pub const WHOAMI: &str = "/v1/whoami";
    pub const SETTINGS: &str = "/v1/settings";
    pub const EXPORT: &str = "/v1/export";
    pub const APPLY: &str = "/v1/apply";
    pub const TOKENS: &str = "/v1/tokens";
    pub const TOKEN: &str = "/v1/tokens/{id}";
    pub const STATUS: &str = "/v1/status";
}

/// What the handlers share: the daemon, which changes take in turn, and
/// the view its last change or reconcile published, which reads take
/// without waiting for them.
#[derive(Clone)]
struct Shared {
    daemon: Arc<Mutex<Daemon>>,
    views: Views,
}

impl Shared {
    fn new(daemon: Daemon) -> Shared {
        Shared {
            views: daemon.views(),
            daemon: Arc::new(Mutex::new(daemon)),
        }
    }
}
type Reply<T> = Result<Json<T>, ApiError>;

/// The largest body a client with a token (or root) may send: a policy of
/// 50,000 rules is 8.4 MB as the CLI sends it (JSON, 168 bytes a rule with
/// a remote address, ports and a description), so this leaves room for
/// seven times that.
pub const MAX_BODY: usize = 64 << 20;
/// The largest body of a client without a token: an anonymous client may
/// only read, so it has nothing large to send.
pub const MAX_ANONYMOUS_BODY: usize = 64 << 10;

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.kind {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        http::json_error(status, self.message)
    }
}

/// The role of the client making a request, which [`admit`] found.
#[derive(Clone, Copy)]
struct Caller(Role);

impl<S: Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .copied()
            .ok_or_else(|| ApiError::new(ErrorKind::Internal, "the request was not admitted"))
    }
}

/// Middleware: who the client is (its token's role, or its uid's), then
/// its body, read whole within that role's limit and [`http::BODY_TIMEOUT`],
/// before anything answers (so that a client still sending gets the
/// answer, not a broken pipe).
async fn admit(State(daemon): State<Shared>, request: Request, next: Next) -> Response {
    let deadline = tokio::time::Instant::now() + http::BODY_TIMEOUT;
    let peer = request.extensions().get::<http::Peer>().copied();
    let role = role_of(&daemon, request.headers(), peer);
    let (limit, note) = match role {
        Ok(role) if role >= Role::Viewer => (MAX_BODY, "send a smaller document"),
        _ => (
            MAX_ANONYMOUS_BODY,
            "clients without a token (--token, or SG_TOKEN) or root send no more",
        ),
    };
    let (mut parts, body) = request.into_parts();
    let bytes = match http::read_body(body, limit, deadline, note).await {
        Ok(bytes) => bytes,
        Err(refused) => return refused,
    };
    match role {
        Ok(role) => {
            parts.extensions.insert(Caller(role));
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => e.into_response(),
    }
}

/// A token's role, or root's without one, or anonymous.
fn role_of(
    daemon: &Shared,
    headers: &HeaderMap,
    peer: Option<http::Peer>,
) -> Result<Role, ApiError> {
    match bearer(headers)? {
        Some(token) => daemon.views.current().role_of(&token).ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unauthenticated,
                "unknown token; an owner creates tokens with \
                     `sg-ctl daemon token create --role viewer|owner`",
            )
        }),
        None if peer.and_then(|p| p.uid) == Some(0) => Ok(Role::Owner),
        // Over the network nobody is root, and nothing is public either:
        // who may read is said by a token alone.
        None if peer.is_some_and(http::Peer::is_remote) => Err(ApiError::new(
            ErrorKind::Unauthenticated,
            "over TCP every request needs `Authorization: Bearer TOKEN`, with a token of \
             `sg-ctl daemon token create --role viewer|owner`",
        )),
        None => Ok(Role::Anonymous),
    }
}

/// The token of `Authorization: Bearer TOKEN`, the scheme in any case
/// (RFC 7235); `None` without the header.
fn bearer(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let refused = || {
        ApiError::new(
            ErrorKind::Unauthenticated,
            "Authorization: use `Bearer TOKEN` with a token of `sg-ctl daemon token create`",
        )
    };
    let text = value.to_str().map_err(|_| refused())?.trim();
    let (scheme, token) = text.split_once([' ', '\t']).ok_or_else(refused)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(refused());
    }
    Ok(Some(token.to_string()))
}

fn lock(daemon: &Shared) -> std::sync::MutexGuard<'_, Daemon> {
    // A panic inside a request leaves the state as committed (changes are
    // checked before they are written), so the lock stays usable.
    daemon
        .daemon
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

/// Runs `f` on the view in force and answers with its result as JSON;
/// it waits for no change.
async fn read<T: Serialize + Send + 'static>(
    daemon: Shared,
    f: impl FnOnce(&View) -> Result<T, ApiError> + Send + 'static,
) -> Result<Json<T>, ApiError> {
    blocking(move || f(&daemon.views.current())).await.map(Json)
}

/// A JSON body as `subject`; its errors name the field.
fn body<T: DeserializeOwned>(bytes: &[u8], subject: Subject) -> Result<T, ApiError> {
    fields::from_json(bytes, subject).map_err(ApiError::invalid)
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

/// The path's segments by name.
async fn segments(parts: &mut Parts) -> Result<HashMap<String, String>, ApiError> {
    let UrlPath(segments) = UrlPath::<HashMap<String, String>>::from_request_parts(parts, &())
        .await
        .map_err(|e| ApiError::invalid(e.body_text()))?;
    Ok(segments)
}

/// The `{name}` of the path, a group's or a port's, checked as names are:
/// no error then quotes more of it than a name may hold.
struct Named(String);

impl<S: Sync> FromRequestParts<S> for Named {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let name = segments(parts).await?.remove("name").unwrap_or_default();
        check_name("name", &name).map_err(ApiError::invalid)?;
        Ok(Named(name))
    }
}

/// The `{name}` and `{rule}` of a rule's path.
struct RuleAt(String, RuleRef);

impl<S: Sync> FromRequestParts<S> for RuleAt {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Named(name) = Named::from_request_parts(parts, state).await?;
        let rule = segments(parts).await?.remove("rule").unwrap_or_default();
        Ok(RuleAt(name, rule.parse().map_err(ApiError::invalid)?))
    }
}

/// What a change of a rule expects, from `If-Match`: a rule's ETag
/// (`"rule-…"`, as `GET` gives it), or the group's revision.
fn expected(headers: &HeaderMap) -> Result<Expected, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(Expected::Anything);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text.trim_matches('"').starts_with("rule-") {
        return Ok(Expected::Tag(format!("\"{}\"", text.trim_matches('"'))));
    }
    revision(headers).map(|revision| revision.map_or(Expected::Anything, Expected::Revision))
}

/// A query string as `T`; its errors name the field.
struct Queried<T>(T);

impl<T: DeserializeOwned, S: Sync> FromRequestParts<S> for Queried<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        fields::from_query(parts.uri.query().unwrap_or_default())
            .map(Queried)
            .map_err(ApiError::invalid)
    }
}

fn router(daemon: Shared) -> Router {
    let api = Router::new()
        .route(routes::GROUPS, get(list_groups).post(create_group))
        .route(
            routes::GROUP,
            get(show_group).put(update_group).delete(delete_group),
        )
        .route(routes::CLONE_GROUP, post(clone_group))
        .route(routes::ASSIGN_GROUP, post(assign_group))
        .route(routes::RULES, post(add_rules))
        .route(
            routes::RULE,
            get(show_rule).put(update_rule).delete(delete_rule),
        )
        .route(routes::PORTS, get(list_ports).post(create_port))
        .route(
            routes::PORT,
            get(show_port).put(update_port).delete(delete_port),
        )
        .route(routes::ATTACH_GROUPS, post(attach_groups))
        .route(routes::DETACH_GROUPS, post(detach_groups))
        .route(routes::PLUG, post(plug))
        .route(routes::UNPLUG, post(unplug))
        .route(routes::FLOWS, get(port_flows))
        .route(routes::PORT_STATS, get(port_stats))
        .route(routes::PROTOCOLS, get(protocols))
        .route(routes::PRESETS, get(presets))
        .route(routes::WHOAMI, get(whoami))
        .route(routes::SETTINGS, get(show_settings).put(update_settings))
        .route(routes::EXPORT, get(export))
        .route(routes::APPLY, post(apply))
        .route(routes::TOKENS, get(list_tokens).post(create_token))
        .route(routes::TOKEN, delete(revoke_token))
        .route(routes::STATUS, get(status))
        .layer(middleware::from_fn_with_state(daemon.clone(), admit))
        // `admit` read the body within its own limit already.
        .layer(DefaultBodyLimit::disable())
        .with_state(daemon);
    // Around the whole router, so that it sees its answers as they leave
    // (a 405 gets its Allow header last).
    Router::new()
        .fallback_service(api)
        .layer(middleware::from_fn(http::json_errors))
}

async fn list_groups(State(d): State<Shared>, Caller(role): Caller) -> Reply<Vec<GroupView>> {
    read(d, move |v| v.groups(role)).await
}

async fn create_group(
    State(d): State<Shared>,
    Caller(role): Caller,
    b: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let group: Group = body(&b, Subject::Group(None))?;
    let view = with(d, move |d| d.create_group(role, group)).await?;
    Ok((StatusCode::CREATED, view))
}

async fn show_group(
    State(d): State<Shared>,
    Caller(role): Caller,
    Named(name): Named,
) -> Reply<GroupView> {
    read(d, move |v| v.group(role, &name)).await
}

async fn update_group(
    State(d): State<Shared>,
    Caller(role): Caller,
    Named(name): Named,
    headers: HeaderMap,
    b: Bytes,
) -> Reply<GroupView> {
    let group: Group = body(&b, Subject::Group(Some(&name)))?;
    check_name("name", &group.name).map_err(ApiError::invalid)?;
    let revision = revision(&headers)?;
    with(d, move |d| d.replace_group(role, &name, group, revision)).await
}

async fn delete_group(
    State(d): State<Shared>,
    Caller(role): Caller,
    Named(name): Named,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let revision = revision(&headers)?;
    blocking(move || lock(&d).delete_group(role, &name, revision)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clone_group(
    State(d): State<Shared>,
    Caller(role): Caller,
    Named(name): Named,
    b: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let to: NameBody = body(&b, Subject::Body)?;
    let view = with(d, move |d| d.clone_group(role, &name, &to.name)).await?;
    Ok((StatusCode::CREATED, view))
}

async fn assign_group(
    State(d): State<Shared>,
    Caller(role): Caller,
    Named(name): Named,
    b: Bytes,
) -> Reply<GroupView> {
    let ports: PortsBody = body(&b, Subject::Body)?;
    for port in &ports.ports {
        check_name("ports", port).map_err(ApiError::invalid)?;
    }
    with(d, move |d| d.assign_group(role, &name, &ports.ports)).await
}

async fn add_rules(
    State(d): State<Shared>,
    Caller(role): Caller,
    Named(name): Named,
    headers: HeaderMap,
    b: Bytes,
) -> Reply<GroupView> {
    let subject = |offset| Subject::NewRules {
        group: &name,
        offset,
    };
    let rules: Vec<Rule> = match fields::from_json(&b, subject(0)) {
        Ok(rules) => rules,
        // Said again with the indexes the rules would have in the group.
        Err(_) => {
            let view = d.views.current();
            let offset = view.state.policy.group(&name).map_or(0, |g| g.rules.len());
            return Err(body::<Vec<Rule>>(&b, subject(offset))
                .err()
                .unwrap_or_else(|| {
                    ApiError::new(ErrorKind::Internal, "the rules read on a second reading")
                }));
        }
    };
    let revision = revision(&headers)?;
    with(d, move |d| d.add_rules(role, &name, rules, revision)).await
}

async fn show_rule(
    State(d): State<Shared>,
    Caller(role): Caller,
    RuleAt(name, at): RuleAt,
) -> Result<impl IntoResponse, ApiError> {
    let Json(rule) = read(d, move |v| v.rule(role, &name, &at)).await?;
    Ok(([(header::ETAG, rule_etag(&rule))], Json(rule)))
}

async fn update_rule(
    State(d): State<Shared>,
    Caller(role): Caller,
    RuleAt(name, at): RuleAt,
    headers: HeaderMap,
    b: Bytes,
) -> Reply<GroupView> {
    let index = match &at {
        RuleRef::Index(index) => *index,
        // Its errors name it as its present position would.
        RuleRef::Id(_) => {
            let view = d.views.current();
            let group = view.state.policy.group(&name);
            group
                .and_then(|g| super::find_rule(g, &at).ok())
                .unwrap_or(0)
        }
    };
    let subject = Subject::Rule {
        group: &name,
        index,
    };
    let (rule, expected) = (body(&b, subject)?, expected(&headers)?);
    with(d, move |d| {
        d.set_rule(role, &name, &at, Some(rule), expected)
    })
    .await
}

async fn delete_rule(
    State(d): State<Shared>,
    Caller(role): Caller,
    RuleAt(name, at): RuleAt,
    headers: HeaderMap,
) -> Reply<GroupView> {
    let expected = expected(&headers)?;
    with(d, move |d| d.set_rule(role, &name, &at, None, expected)).await
}

async fn list_ports(State(d): State<Shared>, Caller(role): Caller) -> Reply<Vec<PortView>> {
    read(d, move |v| v.ports(role)).await
}

async fn port_flows(
    State(d): State<Shared>,
    Caller(role): Caller,
    Named(name): Named,
    Queried(query): Queried<FlowQuery>,
) -> Reply<Vec<Flow>> {
    read(d, move |v| v.flows(role, &name, query)).await
}

async fn port_stats(
    State(d): State<Shared>,
    Caller(role): Caller,
    Named(name): Named,
) -> Reply<Vec<PortCounter>> {
    read(d, move |v| v.port_stats(role, &name)).await
}

/// What rules may name; anyone may read it, as the CLI's `protocols`.
async fn protocols() -> Json<Vec<sg_core::model::ProtocolInfo>> {
    Json(sg_core::model::catalogue())
}

async fn presets() -> Json<Vec<PresetView>> {
    let template = Rule::new(sg_core::model::Direction::Ingress);
    Json(
        sg_core::preset::PRESETS
            .iter()
            .map(|preset| PresetView {
                name: preset.name.into(),
                description: preset.description.into(),
                rules: sg_core::preset::expand(preset.name, &template)
                    .expect("every preset expands from an ingress rule from anywhere"),
            })
            .collect(),
    )
}

/// The role the client's credentials give it, which the console shows
/// and hides its controls by.
async fn whoami(Caller(role): Caller) -> Json<RoleBody> {
    Json(RoleBody { role })
}

async fn create_port(
    State(d): State<Shared>,
    Caller(role): Caller,
    b: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let port: Port = body(&b, Subject::Port(None))?;
    let view = with(d, move |d| d.create_port(role, port)).await?;
    Ok((StatusCode::CREATED, view))
}

async fn show_port(
    State(d): State<Shared>,
    Caller(role): Caller,
    Named(name): Named,
) -> Reply<PortView> {
    read(d, move |v| v.port(role, &name)).await
}

async fn update_port(
    State(d): State<Shared>,
    Caller(role): Caller,
    Named(name): Named,
    headers: HeaderMap,
    b: Bytes,
) -> Reply<PortView> {
    let port: Port = body(&b, Subject::Port(Some(&name)))?;
    check_name("name", &port.name).map_err(ApiError::invalid)?;
    let revision = revision(&headers)?;
    with(d, move |d| d.replace_port(role, &name, port, revision)).await
}

async fn delete_port(
    State(d): State<Shared>,
    Caller(role): Caller,
    Named(name): Named,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let revision = revision(&headers)?;
    blocking(move || lock(&d).delete_port(role, &name, revision)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn attach_groups(
    State(d): State<Shared>,
    Caller(role): Caller,
    Named(name): Named,
    b: Bytes,
) -> Reply<PortView> {
    let groups: GroupsBody = body(&b, Subject::Body)?;
    with(d, move |d| d.attach_groups(role, &name, &groups.groups)).await
}

async fn plug(
    State(d): State<Shared>,
    Caller(role): Caller,
    Named(name): Named,
    b: Bytes,
) -> Reply<PortView> {
    let at: PlugBody = body(&b, Subject::Body)?;
    with(d, move |d| d.plug(role, &name, at.ifname, at.netns)).await
}

async fn unplug(State(d): State<Shared>, Caller(role): Caller, Named(name): Named) -> Reply<Port> {
    with(d, move |d| d.unplug(role, &name)).await
}

async fn detach_groups(
    State(d): State<Shared>,
    Caller(role): Caller,
    Named(name): Named,
    b: Bytes,
) -> Reply<PortView> {
    let groups: GroupsBody = body(&b, Subject::Body)?;
    for group in &groups.groups {
        check_name("groups", group).map_err(ApiError::invalid)?;
    }
    with(d, move |d| d.detach_groups(role, &name, &groups.groups)).await
}

async fn show_settings(State(d): State<Shared>, Caller(role): Caller) -> Reply<Settings> {
    read(d, move |v| v.settings(role)).await
}

async fn update_settings(
    State(d): State<Shared>,
    Caller(role): Caller,
    b: Bytes,
) -> Reply<Settings> {
    let settings: Settings = body(&b, Subject::Settings)?;
    with(d, move |d| d.set_settings(role, settings)).await
}

async fn status(State(d): State<Shared>, Caller(role): Caller) -> Reply<StoreHealth> {
    read(d, move |v| v.status(role)).await
}

async fn export(State(d): State<Shared>, Caller(role): Caller) -> Reply<Document> {
    read(d, move |v| v.export(role)).await
}

async fn apply(
    State(d): State<Shared>,
    Caller(role): Caller,
    Queried(query): Queried<ApplyQuery>,
    b: Bytes,
) -> Reply<Applied> {
    let document = body(&b, Subject::Document)?;
    with(d, move |d| d.apply(role, document, query.dry_run)).await
}

async fn create_token(
    State(d): State<Shared>,
    Caller(role): Caller,
    b: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let request: RoleBody = body(&b, Subject::Body)?;
    let Json((token, info)) = with(d, move |d| d.create_token(role, request.role)).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, info })))
}

async fn list_tokens(State(d): State<Shared>, Caller(role): Caller) -> Reply<Vec<TokenInfo>> {
    read(d, move |v| v.tokens(role)).await
}

async fn revoke_token(
    State(d): State<Shared>,
    Caller(role): Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!(
                "no token with id {}; `sg-ctl daemon token list` shows the ids",
                Quoted(&id)
            ),
        ));
    }
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
    console: Option<console::ConsoleListener>,
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
    let daemon = Shared::new(daemon);
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
        let app = Router::new()
            .route(
                "/metrics",
                get(move || async move {
                    let text = blocking(move || Ok(daemon.views.current().metrics())).await;
                    text.map(|text| ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
                }),
            )
            .layer(middleware::from_fn(http::json_errors));
        let limits = http::Limits::METRICS;
        tokio::spawn(http::serve(listener, app, limits, std::future::pending()));
    }
    if let Some(listener) = console {
        let app = console::with_page(router(daemon.clone()));
        tokio::spawn(listener.serve(app, std::future::pending()));
    }
    let limits = http::Limits::api(http::open_files());
    eprintln!(
        "sg-ctl daemon: listening on {} ({} connections per uid, {} in all for other users than \
         root)",
        socket.display(),
        limits.per_peer,
        limits.total
    );
    http::serve(listener, router(daemon), limits, shutdown()).await;
    Ok(())
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
    use axum::http::Request;
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

    /// Removes a lock file when dropped.
    struct LockRemoved(PathBuf);

    impl Drop for LockRemoved {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Serves the API of `daemon` on a socket in `dir`, as the daemon does.
    fn serving(dir: &tempfile::TempDir, daemon: Daemon) -> PathBuf {
        let socket = dir.path().join("sg.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let app = router(Shared::new(daemon));
        let limits = http::Limits::api(1024);
        tokio::spawn(http::serve(listener, app, limits, std::future::pending()));
        socket
    }

    /// Every operation docs/openapi.yaml describes is routed: the answer
    /// comes from a handler (a JSON body), not from the router's 404 or 405.
    #[tokio::test]
    async fn every_documented_operation_is_served() {
        let spec: serde_json::Value =
            serde_norway::from_str(include_str!("../../../docs/openapi.yaml")).unwrap();
        let dir = temp_dir();
        let app = router(Shared::new(daemon(&dir)));
        let paths = spec["paths"].as_object().unwrap();
        let mut operations = 0;
        for (path, item) in paths {
            let uri = path
                .replace("{name}", "default")
                .replace("{rule}", "0")
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
        assert_eq!(operations, 33);
    }
    /// Each method of the client asks a route and method the router
    /// serves, with a body and query its handler reads: one call per
    /// operation, as an owner, through the socket.
    #[tokio::test]
    async fn the_client_asks_what_the_router_serves() {
        let dir = temp_dir();
        // Its port's attach takes the pins' lock, which lives outside `dir`.
        let _lock = LockRemoved(Pins::new(dir.path().join("pins")).lock_path());
        let daemon = daemon(&dir);
        let (token, _) = daemon.create_token(Role::Owner, Role::Owner).unwrap();
        let socket = serving(&dir, daemon);
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
        let at = RuleRef::Index(2);
        let revision = Some(web.revision.to_string());
        let web = client
            .set_rule("web", &at, Some(&rule), revision)
            .await
            .unwrap();
        let (read, etag) = client.rule("web", &at).await.unwrap();
        assert_eq!(read.id, web.spec.rules[2].id);
        let at = RuleRef::Id(read.id.unwrap());
        let web = client.set_rule("web", &at, None, Some(etag)).await;
        assert_eq!(web.unwrap().spec.rules.len(), 2);
        let groups = ["vm".to_string()];
        let assigned = client.assign_group("web", &groups).await;
        assert!(
            matches!(&assigned, Err(ClientError::Api { status, .. }) if *status == StatusCode::NOT_FOUND),
            "{assigned:?}"
        );
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
        // What a hook does: describe the port afresh, then unplug it, twice.
        client.put_port(&port).await.unwrap();
        let moved = Port {
            ifname: "sg-no-iface2".into(),
            ..port.clone()
        };
        let vm = client.put_port(&moved).await.unwrap();
        assert_eq!(vm.spec.ifname, "sg-no-iface2");
        assert_eq!(client.unplug("vm").await.unwrap(), moved);
        assert!(client.unplug("vm").await.unwrap_err().is_not_found());

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
        let status = client.status().await.unwrap();
        assert!(
            status.reachable && status.store.starts_with("sqlite:"),
            "{status:?}"
        );
    }

    /// Asks `app` as `peer` (root when `Some(0)`), with these headers.
    async fn ask(
        app: &Router,
        peer: Option<u32>,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(body.into()).unwrap();
        request.extensions_mut().insert(http::Peer::local(peer));
        let response = app.clone().oneshot(request).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {uri}: {status} {e}: {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, headers, json)
    }

    /// The router's own refusals and the extractors' answer JSON, each
    /// naming what is wrong.
    #[tokio::test]
    async fn every_refusal_is_json_and_names_what_is_wrong() {
        let dir = temp_dir();
        let app = router(Shared::new(daemon(&dir)));
        let long = format!("/v1/groups/{}", "x".repeat(10_000));
        let icmp = r#"{"name": "web", "rules": [{"direction": "ingress", "protocol": "icmp",
                       "icmp": {"type": 256}}]}"#;
        let priority = r#"[{"direction": "ingress", "priority": 18446744073709551616}]"#;
        let escape = r#"{"name": "a\u001b[2Jb"}"#;
        let cases = [
            (
                "GET",
                "/v1/nope",
                "",
                StatusCode::NOT_FOUND,
                "no operation at /v1/nope; docs/openapi.yaml lists the API's operations",
            ),
            (
                "DELETE",
                "/v1/settings",
                "",
                StatusCode::METHOD_NOT_ALLOWED,
                "/v1/settings does not take DELETE; it takes GET, HEAD, PUT",
            ),
            (
                "DELETE",
                "/v1/groups/web/rules/x",
                "",
                StatusCode::BAD_REQUEST,
                "rule: 'x' is neither a rule's id (r-…) nor its index (from 0)",
            ),
            (
                "GET",
                "/v1/groups/default/rules/r-XYZ",
                "",
                StatusCode::BAD_REQUEST,
                "id: 'r-XYZ' is not a rule id; ids are r- and up to 16 hex digits",
            ),
            (
                "GET",
                "/v1/groups/default/rules/r-0",
                "",
                StatusCode::NOT_FOUND,
                "group 'default' has no rule r-0 (deleted, or never there)",
            ),
            (
                "GET",
                "/v1/ports/vm/flows?address=198.18.0.1/24",
                "",
                StatusCode::BAD_REQUEST,
                "address: 198.18.0.1/24 has host bits set",
            ),
            (
                "POST",
                "/v1/apply?dry_run=maybe",
                "{}",
                StatusCode::BAD_REQUEST,
                "dry_run: ",
            ),
            ("GET", &long, "", StatusCode::BAD_REQUEST, "name: 'xxxxxxxx"),
            (
                "POST",
                "/v1/groups",
                icmp,
                StatusCode::BAD_REQUEST,
                "group 'web': rules[0]: icmp.type: 256 is out of range; use 0-255",
            ),
            (
                "POST",
                "/v1/groups/default/rules",
                priority,
                StatusCode::BAD_REQUEST,
                "group 'default': rules[4]: priority: 18446744073709552000 is out of range; \
                 use 1-65535 (1 goes first)",
            ),
            (
                "POST",
                "/v1/groups",
                escape,
                StatusCode::BAD_REQUEST,
                r"group 'a\u{1b}[2Jb': name: 'a\u{1b}[2Jb' contains '\u{1b}'",
            ),
        ];
        for (method, uri, body, status, message) in cases {
            let (got, headers, json) = ask(&app, Some(0), method, uri, &[], body).await;
            let error = json["error"].as_str().unwrap();
            assert_eq!(got, status, "{method} {uri}: {error}");
            assert!(error.starts_with(message), "{method} {uri}: {error}");
            assert!(error.len() < 300, "{method} {uri}: {error}");
            if status == StatusCode::METHOD_NOT_ALLOWED {
                assert!(headers.contains_key(header::ALLOW));
            }
        }
        // An anonymous client sends little: its body is read, then refused.
        let big = vec![b' '; MAX_ANONYMOUS_BODY + 1];
        let (status, _, json) = ask(&app, None, "POST", "/v1/apply", &[], big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            json["error"]
                .as_str()
                .unwrap()
                .starts_with("the request's body is 65537 bytes, over the limit of 65536 (64 KiB)"),
            "{json}"
        );
    }

    /// Rules are named by ids that do not move: two clients that read a
    /// group and both delete its second rule, at once, delete that rule
    /// and nothing else (by index, the second would have deleted the rule
    /// after it). Each refusal of the rule routes, then.
    #[tokio::test]
    async fn two_deletes_of_one_rule_delete_it_and_nothing_else() {
        let dir = temp_dir();
        let mut daemon = daemon(&dir);
        let mut web = Group::new("web").unwrap();
        for port in ["22", "80", "443"] {
            let mut rule = Rule::new(Direction::Ingress);
            rule.protocol = "tcp".parse().unwrap();
            rule.ports = port.parse().unwrap();
            web.rules.push(rule);
        }
        let read = daemon.create_group(Role::Owner, web).unwrap();
        let ids: Vec<RuleId> = read
            .spec
            .rules
            .iter()
            .map(|r| r.id.clone().unwrap())
            .collect();
        assert_eq!(
            ids.iter().collect::<std::collections::HashSet<_>>().len(),
            5
        );
        let socket = serving(&dir, daemon);
        let (a, b) = (Client::new(&socket, None), Client::new(&socket, None));
        // Both read rule 3 (tcp 80), then delete it.
        let at = RuleRef::Index(3);
        let ((rule_a, tag_a), (rule_b, tag_b)) = (
            a.rule("web", &at).await.unwrap(),
            b.rule("web", &at).await.unwrap(),
        );
        assert_eq!((&rule_a.id, &tag_a), (&rule_b.id, &tag_b));
        let (id_a, id_b) = (
            RuleRef::Id(rule_a.id.unwrap()),
            RuleRef::Id(rule_b.id.unwrap()),
        );
        let (first, second) = tokio::join!(
            a.set_rule("web", &id_a, None, Some(tag_a)),
            b.set_rule("web", &id_b, None, None),
        );
        let (won, lost) = match (first, second) {
            (Ok(view), Err(e)) | (Err(e), Ok(view)) => (view, e),
            other => panic!("one delete deletes, the other finds nothing: {other:?}"),
        };
        assert!(
            matches!(&lost, ClientError::Api { status, message }
                if *status == StatusCode::NOT_FOUND && message.contains("(deleted, or never there)")),
            "{lost:?}"
        );
        let left: Vec<&RuleId> = won
            .spec
            .rules
            .iter()
            .filter_map(|r| r.id.as_ref())
            .collect();
        assert_eq!(left, [&ids[0], &ids[1], &ids[2], &ids[4]]);
        assert_eq!(a.group("web").await.unwrap().spec.rules.len(), 4);

        // A stale ETag, an id changed in the body, a path that is neither.
        let at = RuleRef::Id(ids[4].clone());
        let (rule, tag) = a.rule("web", &at).await.unwrap();
        let mut changed = rule.clone();
        changed.ports = "8443".parse().unwrap();
        a.set_rule("web", &at, Some(&changed), Some(tag.clone()))
            .await
            .unwrap();
        let stale = a.set_rule("web", &at, None, Some(tag)).await;
        assert!(
            matches!(&stale, Err(ClientError::Api { status, message })
                if *status == StatusCode::CONFLICT && message.contains("changed since it was read")),
            "{stale:?}"
        );
        let (now, _) = a.rule("web", &at).await.unwrap();
        assert_eq!(
            (now.id.as_ref(), now.ports.to_string().as_str()),
            (Some(&ids[4]), "8443")
        );
        changed.id = Some(RuleId::from_number(7));
        let renamed = a.set_rule("web", &at, Some(&changed), None).await;
        assert!(
            matches!(&renamed, Err(ClientError::Api { status, message })
                if *status == StatusCode::BAD_REQUEST && message.contains("id: a rule keeps its id")),
            "{renamed:?}"
        );
        // A group applied without ids keeps them, and again changes nothing.
        let mut document = a.export().await.unwrap();
        for group in &mut document.groups {
            for rule in &mut group.rules {
                rule.id = None;
            }
        }
        assert!(a.apply(&document, false).await.unwrap().changes.is_empty());
        let web = a.group("web").await.unwrap();
        assert_eq!(web.spec.rules[3].id.as_ref(), Some(&ids[4]));
    }

    /// Over TCP (the console's listener), only a token says who asks.
    #[tokio::test]
    async fn over_tcp_every_request_needs_a_token() {
        let dir = temp_dir();
        let daemon = daemon(&dir);
        let (viewer, _) = daemon.create_token(Role::Owner, Role::Viewer).unwrap();
        let app = router(Shared::new(daemon));
        let ask_tcp = |uri: &'static str, token: Option<String>| {
            let app = app.clone();
            async move {
                let mut request = Request::builder().uri(uri);
                if let Some(token) = token {
                    request = request.header("authorization", format!("Bearer {token}"));
                }
                let mut request = request.body(Body::empty()).unwrap();
                let peer = http::Peer {
                    uid: None,
                    address: Some("127.0.0.1".parse().unwrap()),
                };
                request.extensions_mut().insert(peer);
                let response = app.oneshot(request).await.unwrap();
                let status = response.status();
                let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                (
                    status,
                    serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
                )
            }
        };
        // What the socket shows anyone (public groups, the protocols) is
        // not shown over TCP without a token.
        for uri in ["/v1/groups", "/v1/protocols", "/v1/whoami", "/v1/settings"] {
            let (status, json) = ask_tcp(uri, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
            assert!(
                json["error"].as_str().unwrap().starts_with("over TCP"),
                "{json}"
            );
            let (status, _) = ask_tcp(uri, Some("sgt_unknown".into())).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        }
        let (status, json) = ask_tcp("/v1/whoami", Some(viewer.clone())).await;
        assert_eq!(
            (status, json),
            (StatusCode::OK, serde_json::json!({"role": "viewer"}))
        );
        let (status, json) = ask_tcp("/v1/protocols", Some(viewer)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json.as_array().unwrap().len(), 256);
        assert_eq!(json[6]["name"], "tcp");
        assert_eq!(json[6]["ports"], true);
        assert_eq!(json[58]["icmp"], true);
        assert_eq!(json[58]["ethertype"], "ipv6");
    }

    /// One group to many ports in one change, or to none: each refusal
    /// leaves every port as it was.
    #[tokio::test]
    async fn bulk_assign_is_whole_or_refused() {
        let dir = temp_dir();
        let _lock = LockRemoved(Pins::new(dir.path().join("pins")).lock_path());
        let mut daemon = daemon(&dir);
        let (viewer, _) = daemon.create_token(Role::Owner, Role::Viewer).unwrap();
        for (i, name) in ["vm1", "vm2"].iter().enumerate() {
            let port = Port::new(
                *name,
                format!("sg-no-if{i}"),
                MacAddr([2, 0, 0, 0, 0, i as u8]),
            );
            daemon.create_port(Role::Owner, port).unwrap();
        }
        for g in ["web", "g1", "g2", "g3", "g4"] {
            daemon
                .create_group(Role::Owner, Group::new(g).unwrap())
                .unwrap();
        }
        let app = router(Shared::new(daemon));
        let bearer = format!("Bearer {viewer}");
        // The group, the body, the headers, the answer and its message.
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a [(&'a str, &'a str)],
            StatusCode,
            &'a str,
        );
        let cases: [Case; 7] = [
            (
                "web",
                r#"{"ports": []}"#,
                &[],
                StatusCode::BAD_REQUEST,
                "ports: name at least one port",
            ),
            (
                "web",
                r#"{"ports": ["vm1", "nope"]}"#,
                &[],
                StatusCode::NOT_FOUND,
                "no port named 'nope'",
            ),
            (
                "nope",
                r#"{"ports": ["vm1"]}"#,
                &[],
                StatusCode::NOT_FOUND,
                "no group named 'nope'",
            ),
            (
                "web",
                r#"{"ports": ["a b"]}"#,
                &[],
                StatusCode::BAD_REQUEST,
                "ports: 'a b'",
            ),
            (
                "web",
                r#"{"port": ["vm1"]}"#,
                &[],
                StatusCode::BAD_REQUEST,
                "unknown field `port`",
            ),
            (
                "web",
                r#"{"ports": ["vm1"]}"#,
                &[("authorization", &bearer)],
                StatusCode::FORBIDDEN,
                "a viewer token is read-only",
            ),
            (
                "web",
                r#"{"ports": ["vm1", "vm2"]}"#,
                &[],
                StatusCode::OK,
                "",
            ),
        ];
        for (group, body, headers, status, message) in cases {
            let uri = format!("/v1/groups/{group}/assign");
            let (got, _, json) = ask(&app, Some(0), "POST", &uri, headers, body.to_string()).await;
            assert_eq!(got, status, "{body}: {json}");
            if status != StatusCode::OK {
                let error = json["error"].as_str().unwrap();
                assert!(error.contains(message), "{body}: {error}");
                let (_, _, ports) = ask(&app, Some(0), "GET", "/v1/ports", &[], "").await;
                for port in ports.as_array().unwrap() {
                    assert_eq!(
                        port["spec"]["groups"],
                        serde_json::json!(["default"]),
                        "{body}"
                    );
                }
            } else {
                assert_eq!(json["ports"], serde_json::json!(["vm1", "vm2"]));
                assert_eq!(json["port_status"][1]["port"], "vm2");
            }
        }
        // vm1 has default and web; four more would be six, over the limit
        // of five: refused for vm2 too.
        for g in ["g1", "g2", "g3"] {
            let uri = format!("/v1/groups/{g}/assign");
            let (got, _, json) =
                ask(&app, Some(0), "POST", &uri, &[], r#"{"ports": ["vm2"]}"#).await;
            assert_eq!(got, StatusCode::OK, "{json}");
        }
        let body = r#"{"ports": ["vm2", "vm1"]}"#;
        let (got, _, json) = ask(&app, Some(0), "POST", "/v1/groups/g4/assign", &[], body).await;
        assert_eq!(got, StatusCode::BAD_REQUEST, "{json}");
        assert!(json["error"].as_str().unwrap().contains("vm2"), "{json}");
        let (_, _, vm1) = ask(&app, Some(0), "GET", "/v1/ports/vm1", &[], "").await;
        assert_eq!(vm1["spec"]["groups"], serde_json::json!(["default", "web"]));
    }

    #[tokio::test]
    async fn port_stats_and_presets_refuse_as_reads_do() {
        let dir = temp_dir();
        let app = router(Shared::new(daemon(&dir)));
        let (status, _, json) = ask(&app, Some(0), "GET", "/v1/ports/nope/stats", &[], "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{json}");
        let (status, _, _) = ask(&app, Some(1000), "GET", "/v1/ports/nope/stats", &[], "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _, presets) = ask(&app, Some(1000), "GET", "/v1/presets", &[], "").await;
        assert_eq!(status, StatusCode::OK);
        let ping = presets
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "ping")
            .unwrap();
        assert_eq!(ping["rules"].as_array().unwrap().len(), 2, "{ping}");
        let (_, _, role) = ask(&app, Some(1000), "GET", "/v1/whoami", &[], "").await;
        assert_eq!(role, serde_json::json!({"role": "anonymous"}));
    }

    #[tokio::test]
    async fn the_bearer_scheme_is_any_case() {
        let header = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            bearer(&headers)
        };
        for value in ["Bearer abc", "bearer abc", "BEARER  abc ", "BeArEr\tabc"] {
            assert_eq!(header(value).unwrap().as_deref(), Some("abc"), "{value}");
        }
        for value in ["Basic abc", "Bearer", "Bearer ", "Bearerabc"] {
            assert_eq!(
                header(value).unwrap_err().kind,
                ErrorKind::Unauthenticated,
                "{value}"
            );
        }
        assert_eq!(bearer(&HeaderMap::new()).unwrap(), None);

        let dir = temp_dir();
        let daemon = daemon(&dir);
        let (token, _) = daemon.create_token(Role::Owner, Role::Viewer).unwrap();
        let app = router(Shared::new(daemon));
        let lower = format!("bearer {token}");
        let headers = [("authorization", lower.as_str())];
        let (status, _, _) = ask(&app, Some(65534), "GET", "/v1/settings", &headers, "").await;
        assert_eq!(status, StatusCode::OK);
        let basic = [("authorization", "Basic cm9vdDo=")];
        let (status, _, json) = ask(&app, Some(0), "GET", "/v1/settings", &basic, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(json["error"].as_str().unwrap().contains("Bearer TOKEN"));
    }

    /// Sends `request` as is over the socket and reads the answer whole.
    async fn raw(socket: &Path, request: &[u8]) -> (u16, serde_json::Value) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        // The daemon may answer (and close) before all is written.
        let _ = stream.write_all(request).await;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, json)
    }

    /// What the HTTP layer refuses is JSON too, and a client that hangs up
    /// leaves the others served.
    #[tokio::test]
    async fn the_transport_answers_json_and_outlives_its_clients() {
        let dir = temp_dir();
        let socket = serving(&dir, daemon(&dir));
        let (status, json) = raw(&socket, b"GARBAGE\x01 /v1 HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 400);
        assert!(
            json["error"]
                .as_str()
                .unwrap()
                .starts_with("malformed request")
        );
        let huge = format!(
            "GET /v1/settings HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(http::MAX_HEAD)
        );
        let (status, json) = raw(&socket, huge.as_bytes()).await;
        assert_eq!(status, 431, "{json}");
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(2 * http::MAX_URI));
        let (status, json) = raw(&socket, long.as_bytes()).await;
        assert_eq!(status, 414, "{json}");
        // A body shorter than announced, then gone; a head cut short.
        for request in [
            &b"PUT /v1/settings HTTP/1.1\r\nHost: sg\r\nContent-Length: 1000\r\n\r\n{"[..],
            b"GET /v1/settings HTTP/1.1\r\nHo",
        ] {
            let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            std::io::Write::write_all(&mut stream, request).unwrap();
        }
        let client = Client::new(&socket, None);
        assert_eq!(client.groups().await.unwrap().len(), 1);
    }
}
