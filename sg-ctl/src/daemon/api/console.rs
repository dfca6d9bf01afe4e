//! The web console's side of the daemon: its listener (TCP, with TLS from
//! `--console-cert` and `--console-key`, plain HTTP only on loopback) and
//! the page, whose files are built into the binary. The page is a client
//! of the same `/v1` API as the socket's; over TCP every request to it
//! needs a token ([`super::role_of`]), so the console adds no way of its
//! own to change anything.

use std::{io, net::SocketAddr, path::Path, sync::Arc};

use anyhow::{Context as _, bail};
use axum::{
    Router,
    extract::Path as UrlPath,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, rustls, server::TlsStream};

use super::http::{self, Listen, Peer};

/// Where the console listens when `--console` names no address.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9401";

/// The page's files: name, media type, content.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../../console/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../console/style.css"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../console/api.js"),
    ),
    (
        "ui.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../console/ui.js"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../console/app.js"),
    ),
    (
        "groups.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../console/groups.js"),
    ),
    (
        "ports.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../console/ports.js"),
    ),
    (
        "catalogue.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../console/catalogue.js"),
    ),
];

/// The console's listener: TLS, or plain TCP on loopback.
pub enum ConsoleListener {
    Plain(TcpListener),
    Tls(TlsListener),
}

/// A TCP listener whose connections speak TLS.
pub struct TlsListener {
    listener: TcpListener,
    acceptor: TlsAcceptor,
}

/// Binds the console on `address`, with TLS when given a certificate and
/// its key (PEM files); without, only a loopback address is taken, since
/// tokens would cross the network in the clear.
pub async fn bind(
    address: SocketAddr,
    tls: Option<(&Path, &Path)>,
) -> anyhow::Result<ConsoleListener> {
    let acceptor = match tls {
        Some((cert, key)) => Some(TlsAcceptor::from(tls_config(cert, key)?)),
        None if address.ip().is_loopback() => None,
        None => bail!(
            "--console {address}: plain HTTP is served on loopback only (127.0.0.1, ::1), as \
             tokens would cross the network in the clear; give --console-cert and \
             --console-key for HTTPS"
        ),
    };
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("--console: listening on {address}"))?;
    Ok(match acceptor {
        Some(acceptor) => ConsoleListener::Tls(TlsListener { listener, acceptor }),
        None => ConsoleListener::Plain(listener),
    })
}

/// The server's TLS configuration from a PEM certificate chain and key.
fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "--console-cert {}: reading its PEM certificates",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        bail!(
            "--console-cert {}: holds no PEM certificate",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "--console-key {}: reading its PEM private key",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS: the protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("--console-cert and --console-key: they do not make a certificate and its key")?;
    Ok(Arc::new(config))
}

impl ConsoleListener {
    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Plain(listener) => listener.local_addr(),
            Self::Tls(tls) => tls.listener.local_addr(),
        }
    }

    /// Serves `app` on it, with the console's limits, until `shutdown`.
    pub async fn serve(self, app: Router, shutdown: impl Future<Output = ()>) {
        let limits = http::Limits::CONSOLE;
        match self {
            Self::Plain(listener) => http::serve(listener, app, limits, shutdown).await,
            Self::Tls(listener) => http::serve(listener, app, limits, shutdown).await,
        }
    }
}

impl Listen for TlsListener {
    type Accepted = TcpStream;
    type Io = TlsStream<TcpStream>;

    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, Peer)>> + Send {
        Listen::accept(&self.listener)
    }

    fn open(&self, stream: TcpStream) -> impl Future<Output = io::Result<Self::Io>> + 'static {
        self.acceptor.accept(stream)
    }
}

/// The page's routes, in front of `api`: `/` and `/console/FILE`.
pub fn with_page(api: Router) -> Router {
    Router::new()
        .route("/", get(|| async { asset("index.html") }))
        .route(
            "/console/{file}",
            get(|UrlPath(file): UrlPath<String>| async move { asset(&file) }),
        )
        .fallback_service(api)
}

fn asset(name: &str) -> Response {
    let Some((_, media_type, content)) = ASSETS.iter().find(|(file, _, _)| *file == name) else {
        return http::json_error(
            StatusCode::NOT_FOUND,
            format!("the console has no file {}", sg_core::text::Quoted(name)),
        );
    };
    let mut response = (*content).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, *media_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_http_only_on_loopback() {
        let refused = bind("0.0.0.0:0".parse().unwrap(), None).await;
        let message = format!("{:#}", refused.err().unwrap());
        assert!(
            message.contains("plain HTTP is served on loopback only"),
            "{message}"
        );
        assert!(message.contains("--console-cert"), "{message}");
        for address in ["127.0.0.1:0", "[::1]:0"] {
            let listener = bind(address.parse().unwrap(), None).await.unwrap();
            assert!(matches!(listener, ConsoleListener::Plain(_)));
        }
    }

    #[test]
    fn certificates_that_do_not_read_are_refused_by_flag() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.path().join("missing.pem");
        let message = format!("{:#}", tls_config(&empty, &missing).unwrap_err());
        assert!(message.starts_with("--console-cert"), "{message}");
        let message = format!("{:#}", tls_config(&missing, &empty).unwrap_err());
        assert!(message.starts_with("--console-cert"), "{message}");
    }

    #[test]
    fn every_file_is_served_with_its_type_and_nothing_else() {
        for (name, media_type, _) in ASSETS {
            let response = asset(name);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[header::CONTENT_TYPE], *media_type);
        }
        assert_eq!(asset("../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }
}
