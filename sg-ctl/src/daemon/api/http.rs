//! The API's transport, which no client can take from the others: the
//! accept loop with its connection limits (per client uid from
//! SO_PEERCRED, and in total for every uid but root's, so that no local
//! user can hold root's room), the request head read within
//! [`HEAD_TIMEOUT`] and its limits, the body within [`BODY_TIMEOUT`] and
//! its limit, and a JSON `{"error": …}` for every refusal, the HTTP
//! layer's and the router's own included.
//!
//! Each connection carries one request: the head is read here (httparse
//! checks it, so that a malformed or oversized head gets a JSON answer
//! rather than hyper's bare status), then hyper serves that request with
//! keep-alive off. A client that hangs up, sends less body than it
//! announced or stops reading the answer ends its own connection only: the
//! daemon ignores SIGPIPE, and every write error is that connection's.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::Request,
    http::{HeaderMap, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::{TcpListener, UnixListener},
    task::JoinSet,
    time::Instant,
};
use tower::ServiceExt as _;

/// The longest request head (request line and headers), in bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header lines a request may have.
pub const MAX_HEADERS: usize = 100;
/// The longest request target (path and query), in bytes.
pub const MAX_URI: usize = 8 * 1024;
/// How long a client has to send its request head once connected.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client has to send its body once the head is read.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutting down waits for the requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a refusal may take to write, and then to read what the
/// client still sends, before the connection is dropped.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Descriptors kept for the daemon's own use (maps, programs, the
/// database, netlink) when the total of connections is derived from
/// RLIMIT_NOFILE.
const RESERVED_DESCRIPTORS: u64 = 256;

/// The peer of a connection: its uid on a Unix socket (SO_PEERCRED), or
/// its address over TCP (where it has no uid, so it is never root).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub uid: Option<u32>,
    pub address: Option<IpAddr>,
}

impl Peer {
    /// A local client, by its uid.
    pub fn local(uid: Option<u32>) -> Peer {
        Peer { uid, address: None }
    }

    fn is_root(self) -> bool {
        self.uid == Some(0)
    }

    /// Whether it came over the network, where only a token says who it is.
    pub fn is_remote(self) -> bool {
        self.address.is_some()
    }
}

/// How many connections a listener holds at once: per peer (uid), and in
/// total for every peer but root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub per_peer: usize,
    pub total: usize,
}

impl Limits {
    /// The API's: 64 per uid (root's included), and 1024 in total for the
    /// others, fewer when the descriptors the process may open would not
    /// hold them beside root's and its own.
    pub fn api(open_files: u64) -> Limits {
        const PER_PEER: usize = 64;
        let room = open_files.saturating_sub(RESERVED_DESCRIPTORS + PER_PEER as u64);
        Limits {
            per_peer: PER_PEER,
            total: usize::try_from(room)
                .unwrap_or(usize::MAX)
                .clamp(PER_PEER, 1024),
        }
    }

    /// The metrics listener's.
    pub const METRICS: Limits = Limits {
        per_peer: 16,
        total: 16,
    };

    /// The console's: a browser opens a few connections at once, and polls.
    pub const CONSOLE: Limits = Limits {
        per_peer: 32,
        total: 256,
    };
}

/// Raises the soft limit of open files to the hard limit, so that the
/// connection limits, not the descriptors, decide who is refused; returns
/// the limit in force.
pub fn raise_open_files() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}

/// The open-files limit in force.
pub fn open_files() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

/// An error answer: `{"error": MESSAGE}` with `status`.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    let message = sg_core::text::escaped(&message.into()).into_owned();
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// A listener the loop accepts from, with who connected; `open` makes the
/// accepted connection one requests are read from (a TLS handshake), on
/// the connection's own task and within its head's deadline.
pub trait Listen {
    type Accepted: Send + 'static;
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Accepted, Peer)>> + Send;
    fn open(
        &self,
        accepted: Self::Accepted,
    ) -> impl Future<Output = io::Result<Self::Io>> + Send + 'static;
}

impl Listen for UnixListener {
    type Accepted = tokio::net::UnixStream;
    type Io = tokio::net::UnixStream;

    async fn accept(&self) -> io::Result<(Self::Accepted, Peer)> {
        let (stream, _) = UnixListener::accept(self).await?;
        let uid = stream.peer_cred().ok().map(|cred| cred.uid());
        Ok((stream, Peer::local(uid)))
    }

    fn open(&self, stream: Self::Accepted) -> impl Future<Output = io::Result<Self::Io>> + 'static {
        std::future::ready(Ok(stream))
    }
}

impl Listen for TcpListener {
    type Accepted = tokio::net::TcpStream;
    type Io = tokio::net::TcpStream;

    async fn accept(&self) -> io::Result<(Self::Accepted, Peer)> {
        let (stream, from) = TcpListener::accept(self).await?;
        let peer = Peer {
            uid: None,
            address: Some(from.ip()),
        };
        Ok((stream, peer))
    }

    fn open(&self, stream: Self::Accepted) -> impl Future<Output = io::Result<Self::Io>> + 'static {
        std::future::ready(Ok(stream))
    }
}

/// The connections held, per peer and in total (root's apart).
struct Admission {
    limits: Limits,
    held: Mutex<(HashMap<Peer, usize>, usize)>,
}

/// A connection's place, given back when it ends.
struct Ticket {
    admission: Arc<Admission>,
    peer: Peer,
}

impl Admission {
    /// A place for a connection of `peer`, or why there is none.
    fn admit(self: &Arc<Self>, peer: Peer) -> Result<Ticket, String> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let (per_peer, total) = &mut *held;
        let mine = per_peer.entry(peer).or_default();
        if *mine >= self.limits.per_peer {
            let who = peer
                .uid
                .map_or("this address".to_string(), |uid| format!("uid {uid}"));
            return Err(format!(
                "too many connections from {who} ({} at once); close some, or wait for them \
                 to end",
                self.limits.per_peer
            ));
        }
        if !peer.is_root() && *total >= self.limits.total {
            return Err(format!(
                "too many connections ({} at once from users other than root); try again",
                self.limits.total
            ));
        }
        *mine += 1;
        if !peer.is_root() {
            *total += 1;
        }
        Ok(Ticket {
            admission: self.clone(),
            peer,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut held = self
            .admission
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (per_peer, total) = &mut *held;
        if let Some(count) = per_peer.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                per_peer.remove(&self.peer);
            }
        }
        if !self.peer.is_root() {
            *total -= 1;
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then gives the requests in
/// progress [`SHUTDOWN_GRACE`] to finish. Each request finds its [`Peer`]
/// in its extensions.
pub async fn serve<L: Listen>(
    listener: L,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let admission = Arc::new(Admission {
        limits,
        held: Mutex::default(),
    });
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let (accepted, peer) = match accepted {
            Ok(accepted) => accepted,
            // Out of descriptors or memory, or an aborted connection: the
            // listener itself is fine; wait a little rather than spin.
            Err(e) => {
                eprintln!("sg-ctl daemon: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match admission.admit(peer) {
            Ok(ticket) => {
                let app = app.clone();
                let opening = listener.open(accepted);
                connections.spawn(async move {
                    let _ticket = ticket;
                    // The handshake counts against the head's deadline.
                    let deadline = Instant::now() + HEAD_TIMEOUT;
                    if let Ok(Ok(io)) = tokio::time::timeout_at(deadline, opening).await {
                        connection(io, peer, app, deadline).await;
                    }
                });
            }
            // Refused at once: lingering would hold a descriptor that no
            // limit counts. Over TLS the handshake comes first, within the
            // refusal's time.
            Err(message) => {
                let status = StatusCode::SERVICE_UNAVAILABLE;
                let opening = listener.open(accepted);
                connections.spawn(async move {
                    if let Ok(Ok(io)) = tokio::time::timeout(REFUSAL_TIMEOUT, opening).await {
                        refuse(io, status, message, Duration::ZERO).await;
                    }
                });
            }
        }
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

/// One connection: its request head, then hyper for the request.
async fn connection<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut io: I,
    peer: Peer,
    app: Router,
    deadline: Instant,
) {
    let head = match tokio::time::timeout_at(deadline, read_head(&mut io)).await {
        Ok(Ok(head)) => head,
        Ok(Err(Refused::Closed)) => return,
        Ok(Err(Refused::With(status, message))) => {
            return refuse(io, status, message, REFUSAL_TIMEOUT).await;
        }
        Err(_) => {
            let message = format!(
                "the request head did not arrive within {} s; send it at once",
                HEAD_TIMEOUT.as_secs()
            );
            return refuse(io, StatusCode::REQUEST_TIMEOUT, message, REFUSAL_TIMEOUT).await;
        }
    };
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(peer);
        app.clone().oneshot(request)
    });
    // Errors are the client's (it hung up, or sent a body shorter than
    // announced): they end this connection and nothing else.
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(Rewind::new(head, io)), service)
        .await;
}

/// Why a request head is not served.
enum Refused {
    /// The client went away; there is no one to answer.
    Closed,
    With(StatusCode, String),
}

/// Reads up to the blank line that ends the request head and checks it as
/// hyper will parse it; returns what was read (the head, perhaps the start
/// of the body).
async fn read_head<I: AsyncRead + Unpin>(io: &mut I) -> Result<Vec<u8>, Refused> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    // A blank line ends the head, but a client may send blank lines
    // before its request line; each is a parse of all that was read.
    let mut parses = 0;
    loop {
        let searched = buffer.len().saturating_sub(3);
        let read = io.read(&mut chunk).await.map_err(|_| Refused::Closed)?;
        if read == 0 {
            return Err(Refused::Closed);
        }
        buffer.extend_from_slice(&chunk[..read]);
        let ended = buffer[searched..]
            .windows(2)
            .any(|pair| pair == b"\n\n" || pair == b"\n\r");
        if ended {
            if let Some(()) = check_head(&buffer)? {
                return Ok(buffer);
            }
            parses += 1;
            if parses > 4 {
                return Err(Refused::With(
                    StatusCode::BAD_REQUEST,
                    "malformed request: blank lines before the request line".into(),
                ));
            }
        }
        if buffer.len() > MAX_HEAD {
            return Err(Refused::With(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "the request head is over {} KiB; send less",
                    MAX_HEAD / 1024
                ),
            ));
        }
        if !buffer.contains(&b'\n') && buffer.len() > MAX_URI + 64 {
            return Err(uri_too_long());
        }
    }
}

fn head_too_large() -> Refused {
    Refused::With(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        format!(
            "the request head is over {} KiB; send less",
            MAX_HEAD / 1024
        ),
    )
}

fn uri_too_long() -> Refused {
    Refused::With(
        StatusCode::URI_TOO_LONG,
        format!("the request target is over {} KiB", MAX_URI / 1024),
    )
}

/// `Some` when `buffer` holds a whole head hyper will take, `None` when
/// it holds only part of one.
fn check_head(buffer: &[u8]) -> Result<Option<()>, Refused> {
    let malformed = |what: String| {
        Refused::With(
            StatusCode::BAD_REQUEST,
            format!("malformed request: {what}; the API speaks HTTP/1.1"),
        )
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buffer) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(length)) if length > MAX_HEAD => return Err(head_too_large()),
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refused::With(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("the request has over {MAX_HEADERS} header lines; send fewer"),
            ));
        }
        Err(e) => return Err(malformed(e.to_string())),
    }
    let path = request.path.unwrap_or_default();
    if path.len() > MAX_URI {
        return Err(uri_too_long());
    }
    Uri::try_from(path).map_err(|e| malformed(format!("the target: {e}")))?;
    // What hyper refuses of the headers that frame the body.
    let values = |name: &'static str| {
        request
            .headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let lengths: Vec<String> = values("content-length").collect();
    if lengths.iter().any(|l| l.parse::<u64>().is_err()) || lengths.windows(2).any(|w| w[0] != w[1])
    {
        return Err(malformed("Content-Length is not one number".into()));
    }
    if let Some(coding) = values("transfer-encoding").next_back()
        && !coding.ends_with("chunked")
    {
        return Err(malformed(
            "Transfer-Encoding does not end with chunked".into(),
        ));
    }
    Ok(Some(()))
}

/// Answers `status` with a JSON error and closes, first reading and
/// dropping what the client sent for up to `linger` (nothing but what has
/// arrived already, with none): a Unix socket closed with unread data
/// resets its peer, which may then lose the answer. A client that does not
/// read is not waited for.
async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(
    mut io: I,
    status: StatusCode,
    message: String,
    linger: Duration,
) {
    let body = serde_json::json!({ "error": sg_core::text::escaped(&message) }).to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    );
    let written = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        io.write_all(head.as_bytes()).await?;
        io.write_all(body.as_bytes()).await?;
        io.shutdown().await
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        let mut sink = [0u8; 16 * 1024];
        let _ = tokio::time::timeout(linger, async {
            while io.read(&mut sink).await? > 0 {}
            io::Result::Ok(())
        })
        .await;
    }
}

/// A stream that first gives back what was read of it already.
struct Rewind<I> {
    read: Vec<u8>,
    position: usize,
    io: I,
}

impl<I> Rewind<I> {
    fn new(read: Vec<u8>, io: I) -> Self {
        Self {
            read,
            position: 0,
            io,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.position < this.read.len() {
            let rest = &this.read[this.position..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.position += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Reads a request's whole body, at most `limit` bytes, by `deadline`. A
/// longer body is read to its end (and dropped) before the 413, so that the
/// client, still sending, gets the answer rather than a broken pipe; `note`
/// ends that answer with what to do.
pub async fn read_body(
    body: Body,
    limit: usize,
    deadline: Instant,
    note: &str,
) -> Result<Bytes, Response> {
    let mut body = body;
    let mut bytes = Vec::new();
    let mut total = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(json_error(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request's body: {e}"),
                ));
            }
            Err(_) if total > limit => break,
            Err(_) => {
                return Err(json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request's body did not arrive within {} s; send it at once",
                        BODY_TIMEOUT.as_secs()
                    ),
                ));
            }
        };
        if let Ok(data) = frame.into_data() {
            total = total.saturating_add(data.len());
            if total <= limit {
                bytes.extend_from_slice(&data);
            }
        }
    }
    if total > limit {
        return Err(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request's body is {total} bytes, over the limit of {limit} ({}); {note}",
                size(limit)
            ),
        ));
    }
    Ok(bytes.into())
}

/// A size in KiB or MiB.
fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// Middleware: every error answer that is not JSON already (the router's
/// 404 and 405, extractor rejections, anything a layer answers) becomes
/// `{"error": …}` with the same status.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let headers: HeaderMap = response.headers().clone();
    let text = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let path = sg_core::text::Cut(&path);
    let message = match status {
        StatusCode::NOT_FOUND if text.is_empty() => {
            format!("no operation at {path}; docs/openapi.yaml lists the API's operations")
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .replace(',', ", ");
            format!("{path} does not take {method}; it takes {allowed}")
        }
        _ if text.is_empty() => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string(),
        _ => text,
    };
    let mut answer = json_error(status, message);
    if let Some(allow) = headers.get(header::ALLOW) {
        answer.headers_mut().insert(header::ALLOW, allow.clone());
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(head: &[u8]) -> (StatusCode, String) {
        match check_head(head) {
            Err(Refused::With(status, message)) => (status, message),
            Err(Refused::Closed) => panic!("closed"),
            Ok(found) => panic!("accepted ({found:?})"),
        }
    }

    #[test]
    fn heads_are_checked_as_hyper_parses_them() {
        assert!(matches!(
            check_head(b"GET /v1/settings HTTP/1.1\r\nHost: sg\r\n\r\n"),
            Ok(Some(()))
        ));
        assert!(matches!(
            check_head(b"GET /v1/settings HTTP/1.1\r\nHost: s"),
            Ok(None)
        ));
        let (status, message) = refused(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            message.starts_with("malformed request: invalid token"),
            "{message}"
        );
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X-A: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(
            refused(many.as_bytes()).0,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_URI));
        assert_eq!(refused(long.as_bytes()).0, StatusCode::URI_TOO_LONG);
        let (status, message) =
            refused(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("Content-Length"), "{message}");
        let (_, message) = refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert!(message.contains("Transfer-Encoding"), "{message}");
    }

    #[test]
    fn connections_are_limited_per_peer_and_in_total_but_root() {
        let admission = Arc::new(Admission {
            limits: Limits {
                per_peer: 2,
                total: 3,
            },
            held: Mutex::default(),
        });
        let nobody = Peer::local(Some(65534));
        let other = Peer::local(Some(1000));
        let root = Peer::local(Some(0));
        let a = admission.admit(nobody).unwrap();
        let _b = admission.admit(nobody).unwrap();
        let error = admission.admit(nobody).err().unwrap();
        assert!(error.starts_with("too many connections from uid 65534 (2 at once)"));
        let _c = admission.admit(other).unwrap();
        assert!(
            admission
                .admit(other)
                .err()
                .unwrap()
                .contains("other than root")
        );
        let _roots = [
            admission.admit(root).unwrap(),
            admission.admit(root).unwrap(),
        ];
        assert!(
            admission.admit(root).is_err(),
            "root has its own per-uid limit"
        );
        drop(a);
        admission.admit(other).unwrap();
    }

    /// A body that never comes.
    struct Stalled;

    impl axum::body::HttpBody for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    async fn refusal(refused: Response) -> (StatusCode, String) {
        let status = refused.status();
        let bytes = axum::body::to_bytes(refused.into_body(), 1 << 16)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        (status, json["error"].as_str().unwrap().to_string())
    }

    #[tokio::test]
    async fn bodies_are_read_by_their_deadline_and_within_their_limit() {
        let soon = || Instant::now() + Duration::from_millis(50);
        let body = read_body(Body::from("{}"), 2048, soon(), "").await.unwrap();
        assert_eq!(&body[..], b"{}");
        let refused = read_body(Body::new(Stalled), 2048, soon(), "")
            .await
            .unwrap_err();
        assert_eq!(
            refusal(refused).await,
            (
                StatusCode::REQUEST_TIMEOUT,
                "the request's body did not arrive within 30 s; send it at once".into()
            )
        );
        let long = Body::from(vec![b'x'; 4096]);
        let refused = read_body(long, 2048, soon(), "send less")
            .await
            .unwrap_err();
        assert_eq!(
            refusal(refused).await,
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request's body is 4096 bytes, over the limit of 2048 (2 KiB); send less"
                    .into()
            )
        );
    }

    #[test]
    fn the_total_fits_the_descriptors() {
        assert_eq!(Limits::api(1 << 20).total, 1024);
        assert_eq!(Limits::api(1024).total, 704);
        assert_eq!(Limits::api(100).total, 64);
    }
}
