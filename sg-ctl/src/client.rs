//! The client of the daemon's API: a method per operation, with the
//! routes and the request and answer types of [`crate::daemon::api`];
//! each call is one HTTP/1.1 request over the Unix socket.

use std::{
    io,
    os::fd::AsRawFd as _,
    path::PathBuf,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode, body::Bytes, header};
use hyper_util::rt::TokioIo;
use nix::sys::socket::{MsgFlags, send};
use serde::{Serialize, de::DeserializeOwned};
use tokio::{
    io::{AsyncRead, AsyncWrite, Interest, ReadBuf},
    net::UnixStream,
};

use crate::{
    daemon::api::{
        Applied, ApplyQuery, CreatedToken, Document, ErrorBody, FlowQuery, GroupView, GroupsBody,
        NameBody, PlugBody, PortView, PortsBody, RoleBody, RuleRef, routes,
    },
    datapath::conntrack::Flow,
};
use sg_core::{
    access::{Role, TokenInfo},
    model::{Group, Port, Rule},
    settings::Settings,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the daemon at {socket}: {source}; start it with `sg-ctl daemon`, \
         or point --socket (SG_SOCKET) at its socket"
    )]
    Connect {
        socket: String,
        source: std::io::Error,
    },
    /// The daemon refused the request; `status` is the HTTP status, shown
    /// with the message unless it is one the exit code tells already.
    #[error("{}", refusal(*status, message))]
    Api { status: StatusCode, message: String },
    #[error("talking to the daemon: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether the daemon answered 404: no such object.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A client of one daemon, with the token it presents, if any.
pub struct Client {
    socket: PathBuf,
    token: Option<String>,
}

const NO_BODY: Option<&()> = None;

impl Client {
    pub fn new(socket: impl Into<PathBuf>, token: Option<String>) -> Self {
        Self {
            socket: socket.into(),
            token,
        }
    }

    // Groups.

    pub async fn groups(&self) -> Result<Vec<GroupView>> {
        self.get(routes::GROUPS.into()).await
    }

    pub async fn group(&self, name: &str) -> Result<GroupView> {
        self.get(path(routes::GROUP, &[name])).await
    }

    pub async fn create_group(&self, group: &Group) -> Result<GroupView> {
        let path = routes::GROUPS.into();
        self.send(Method::POST, path, Some(group), None).await
    }

    /// Replaces group `name` (the same name: groups are not renamed) if it
    /// is still at `revision`, when given.
    pub async fn replace_group(
        &self,
        name: &str,
        group: &Group,
        revision: Option<u64>,
    ) -> Result<GroupView> {
        let path = path(routes::GROUP, &[name]);
        self.send_at(Method::PUT, path, Some(group), revision).await
    }

    pub async fn delete_group(&self, name: &str, revision: Option<u64>) -> Result<()> {
        let path = path(routes::GROUP, &[name]);
        self.send_at(Method::DELETE, path, NO_BODY, revision).await
    }

    /// Copies group `from` and its rules as `name`.
    pub async fn clone_group(&self, from: &str, name: &str) -> Result<GroupView> {
        let path = path(routes::CLONE_GROUP, &[from]);
        let body = NameBody { name: name.into() };
        self.send(Method::POST, path, Some(&body), None).await
    }

    /// Appends rules to a group.
    pub async fn add_rules(
        &self,
        group: &str,
        rules: &[Rule],
        revision: Option<u64>,
    ) -> Result<GroupView> {
        let path = path(routes::RULES, &[group]);
        self.send_at(Method::POST, path, Some(rules), revision)
            .await
    }

    /// Rule `at` (its id, or its index) of a group, with its ETag.
    pub async fn rule(&self, group: &str, at: &RuleRef) -> Result<(Rule, String)> {
        let path = path(routes::RULE, &[group, &at.to_string()]);
        let (rule, etag) = self.exchange(Method::GET, path, NO_BODY, None).await?;
        Ok((rule, etag.unwrap_or_default()))
    }

    /// Replaces (`Some`) or deletes (`None`) rule `at` of a group; with
    /// `if_match` (the rule's ETag, or the group's revision) only if it is
    /// still as it was then.
    pub async fn set_rule(
        &self,
        group: &str,
        at: &RuleRef,
        rule: Option<&Rule>,
        if_match: Option<String>,
    ) -> Result<GroupView> {
        let path = path(routes::RULE, &[group, &at.to_string()]);
        match rule {
            Some(rule) => self.send(Method::PUT, path, Some(rule), if_match).await,
            None => self.send(Method::DELETE, path, NO_BODY, if_match).await,
        }
    }

    /// Attaches a group to many ports at once.
    pub async fn assign_group(&self, group: &str, ports: &[String]) -> Result<GroupView> {
        let path = path(routes::ASSIGN_GROUP, &[group]);
        let body = PortsBody {
            ports: ports.to_vec(),
        };
        self.send(Method::POST, path, Some(&body), None).await
    }

    // Ports.

    pub async fn ports(&self) -> Result<Vec<PortView>> {
        self.get(routes::PORTS.into()).await
    }

    pub async fn port(&self, name: &str) -> Result<PortView> {
        self.get(path(routes::PORT, &[name])).await
    }

    pub async fn create_port(&self, port: &Port) -> Result<PortView> {
        let path = routes::PORTS.into();
        self.send(Method::POST, path, Some(port), None).await
    }

    /// Replaces port `name` (the same name) if it is still at `revision`,
    /// when given.
    pub async fn replace_port(
        &self,
        name: &str,
        port: &Port,
        revision: Option<u64>,
    ) -> Result<PortView> {
        let path = path(routes::PORT, &[name]);
        self.send_at(Method::PUT, path, Some(port), revision).await
    }

    pub async fn delete_port(&self, name: &str, revision: Option<u64>) -> Result<()> {
        let path = path(routes::PORT, &[name]);
        self.send_at(Method::DELETE, path, NO_BODY, revision).await
    }

    /// Creates the port, or replaces the one of its name: for hooks that
    /// describe a workload's port afresh each time it starts.
    pub async fn put_port(&self, port: &Port) -> Result<PortView> {
        match self.port(&port.name).await {
            Ok(_) => self.replace_port(&port.name, port, None).await,
            Err(e) if e.is_not_found() => self.create_port(port).await,
            Err(e) => Err(e),
        }
    }

    /// Attaches groups to a port after its others.
    pub async fn attach_groups(&self, name: &str, groups: &[String]) -> Result<PortView> {
        self.post_groups(routes::ATTACH_GROUPS, name, groups).await
    }

    pub async fn detach_groups(&self, name: &str, groups: &[String]) -> Result<PortView> {
        self.post_groups(routes::DETACH_GROUPS, name, groups).await
    }

    /// Puts the port's policy in force on its interface now (on `at`'s
    /// interface, when it says one); fails unless it is.
    pub async fn plug(&self, name: &str, at: &PlugBody) -> Result<PortView> {
        let path = path(routes::PLUG, &[name]);
        self.send(Method::POST, path, Some(at), None).await
    }

    /// Removes the port and detaches its filter; answers the port as it
    /// was. A port that is not there is `is_not_found`.
    pub async fn unplug(&self, name: &str) -> Result<Port> {
        let path = path(routes::UNPLUG, &[name]);
        self.send(Method::POST, path, NO_BODY, None).await
    }

    async fn post_groups(&self, route: &str, name: &str, groups: &[String]) -> Result<PortView> {
        let body = GroupsBody {
            groups: groups.to_vec(),
        };
        let path = path(route, &[name]);
        self.send(Method::POST, path, Some(&body), None).await
    }

    /// The tracked flows of an attached port that `query` takes.
    pub async fn flows(&self, name: &str, query: &FlowQuery) -> Result<Vec<Flow>> {
        self.get(path(routes::FLOWS, &[name]) + &query_of(query)?)
            .await
    }

    // Settings, documents, tokens.

    pub async fn settings(&self) -> Result<Settings> {
        self.get(routes::SETTINGS.into()).await
    }

    pub async fn set_settings(&self, settings: &Settings) -> Result<Settings> {
        let path = routes::SETTINGS.into();
        self.send(Method::PUT, path, Some(settings), None).await
    }

    /// The whole desired state, as `apply` takes it.
    pub async fn export(&self) -> Result<Document> {
        self.get(routes::EXPORT.into()).await
    }

    /// Makes the desired state the document's or, with `dry_run`, says
    /// what that would change.
    pub async fn apply(&self, document: &Document, dry_run: bool) -> Result<Applied> {
        let path = routes::APPLY.to_string() + &query_of(&ApplyQuery { dry_run })?;
        self.send(Method::POST, path, Some(document), None).await
    }

    pub async fn create_token(&self, role: Role) -> Result<CreatedToken> {
        let path = routes::TOKENS.into();
        self.send(Method::POST, path, Some(&RoleBody { role }), None)
            .await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        self.get(routes::TOKENS.into()).await
    }

    /// Revokes the token of an id that [`Client::tokens`] lists.
    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        let path = path(routes::TOKEN, &[id]);
        self.send(Method::DELETE, path, NO_BODY, None).await
    }

    /// The store of the desired state, and the hosts sharing it.
    pub async fn status(&self) -> Result<crate::store::StoreHealth> {
        self.get(routes::STATUS.into()).await
    }

    async fn get<T: DeserializeOwned>(&self, path: String) -> Result<T> {
        self.send(Method::GET, path, NO_BODY, None).await
    }

    /// Sends a request with an optional JSON body and expected revision or
    /// ETag (`If-Match`); reads the answer's JSON (`null` when it has none).
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<&(impl Serialize + ?Sized)>,
        if_match: Option<String>,
    ) -> Result<T> {
        Ok(self.exchange(method, path, body, if_match).await?.0)
    }

    /// [`Self::send`], if what it changes is still at `revision`, when
    /// given.
    async fn send_at<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<&(impl Serialize + ?Sized)>,
        revision: Option<u64>,
    ) -> Result<T> {
        self.send(method, path, body, revision.map(|r| r.to_string()))
            .await
    }

    /// [`Self::send`], with the answer's ETag.
    async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<&(impl Serialize + ?Sized)>,
        if_match: Option<String>,
    ) -> Result<(T, Option<String>)> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.display().to_string(),
                    source,
                })?;
        let stream = TokioIo::new(NoSigPipe(stream));
        let (mut sender, connection) = hyper::client::conn::http1::handshake(stream)
            .await
            .map_err(protocol)?;
        tokio::spawn(connection);

        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "sg");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(expected) = if_match {
            request = request.header(header::IF_MATCH, expected);
        }
        let payload = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                serde_json::to_vec(body).map_err(protocol)?
            }
            None => Vec::new(),
        };
        let request = request
            .body(Full::new(Bytes::from(payload)))
            .map_err(protocol)?;
        let response = sender.send_request(request).await.map_err(protocol)?;
        let status = response.status();
        let etag = response
            .headers()
            .get(header::ETAG)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(protocol)?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|body| body.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(ClientError::Api { status, message });
        }
        let json: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        Ok((serde_json::from_slice(json).map_err(protocol)?, etag))
    }
}

/// How a refusal reads: the message alone for the API's everyday
/// refusals (invalid, no credentials, forbidden, not found, conflict),
/// with the status for any other.
fn refusal(status: StatusCode, message: &str) -> String {
    let everyday = [
        StatusCode::BAD_REQUEST,
        StatusCode::UNAUTHORIZED,
        StatusCode::FORBIDDEN,
        StatusCode::NOT_FOUND,
        StatusCode::CONFLICT,
    ];
    match message {
        "" => format!("the daemon answered {status}"),
        message if everyday.contains(&status) => message.to_string(),
        message => format!("the daemon answered {status}: {message}"),
    }
}

/// The daemon's socket, written with MSG_NOSIGNAL: a daemon that closes
/// the connection early gives the client an error (EPIPE), never SIGPIPE,
/// which the CLI keeps at its default so that printing into a closed pipe
/// ends it quietly.
struct NoSigPipe(UnixStream);

impl AsyncRead for NoSigPipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for NoSigPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.0;
        loop {
            ready!(stream.poll_write_ready(cx))?;
            let sent = stream.try_io(Interest::WRITABLE, || {
                send(stream.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                sent => return Poll::Ready(sent),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

fn protocol(error: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(error.to_string())
}

/// `route` with its `{…}` segments replaced, in order, by `values`,
/// escaped: a name may hold any character.
fn path(route: &str, values: &[&str]) -> String {
    let mut values = values.iter();
    route
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                escape(
                    values
                        .next()
                        .expect("a value for every segment of the route"),
                )
            } else {
                segment.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn escape(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `?` and the query's fields, or nothing when it has none.
fn query_of(query: &impl Serialize) -> Result<String> {
    let text = serde_urlencoded::to_string(query).map_err(protocol)?;
    Ok(if text.is_empty() {
        text
    } else {
        format!("?{text}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fill_the_segments_of_routes_escaped() {
        assert_eq!(path(routes::GROUPS, &[]), "/v1/groups");
        assert_eq!(
            path(routes::RULE, &["web tier", "3"]),
            "/v1/groups/web%20tier/rules/3"
        );
        assert_eq!(path(routes::TOKEN, &["a/b"]), "/v1/tokens/a%2Fb");
    }

    #[test]
    fn queries_hold_the_fields_given() {
        assert_eq!(query_of(&FlowQuery::default()).unwrap(), "");
        let query = FlowQuery {
            address: Some("198.18.0.0/24".parse().unwrap()),
            state: Some("established".into()),
            ..FlowQuery::default()
        };
        assert_eq!(
            query_of(&query).unwrap(),
            "?address=198.18.0.0%2F24&state=established"
        );
        assert_eq!(
            query_of(&ApplyQuery { dry_run: true }).unwrap(),
            "?dry_run=true"
        );
    }

    #[test]
    fn refusals_read_with_their_status_unless_everyday() {
        let refused = |status, message: &str| {
            ClientError::Api {
                status,
                message: message.into(),
            }
            .to_string()
        };
        assert_eq!(
            refused(StatusCode::CONFLICT, "group 'web' exists"),
            "group 'web' exists"
        );
        assert_eq!(
            refused(StatusCode::PAYLOAD_TOO_LARGE, "the request's body is 70 MB"),
            "the daemon answered 413 Payload Too Large: the request's body is 70 MB"
        );
        assert_eq!(
            refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, ""),
            "the daemon answered 431 Request Header Fields Too Large"
        );
    }
}
