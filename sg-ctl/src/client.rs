//! The client of the daemon's API: one HTTP/1.1 request per call over the
//! Unix socket.

use std::path::PathBuf;

use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode, body::Bytes, header};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;

use crate::daemon::api::ErrorBody;

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
    /// The daemon refused the request; `status` is the HTTP status.
    #[error("{message}")]
    Api { status: StatusCode, message: String },
    #[error("talking to the daemon: {0}")]
    Protocol(String),
}

/// A client of one daemon, with the token it presents, if any.
pub struct Client {
    socket: PathBuf,
    token: Option<String>,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>, token: Option<String>) -> Self {
        Self {
            socket: socket.into(),
            token,
        }
    }

    /// Sends a request with an optional JSON body and expected revision
    /// (`If-Match`); returns the response's JSON (`null` when it has none).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        revision: Option<u64>,
    ) -> Result<serde_json::Value, ClientError> {
        let protocol = |e: &dyn std::fmt::Display| ClientError::Protocol(e.to_string());
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.display().to_string(),
                    source,
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| protocol(&e))?;
        tokio::spawn(connection);

        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "sg");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(revision) = revision {
            request = request.header(header::IF_MATCH, revision.to_string());
        }
        let payload = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                serde_json::to_vec(body).map_err(|e| protocol(&e))?
            }
            None => Vec::new(),
        };
        let request = request
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| protocol(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| protocol(&e))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| protocol(&e))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|body| body.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(ClientError::Api { status, message });
        }
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| protocol(&e))
    }

    /// [`Client::request`] with the response read as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        revision: Option<u64>,
    ) -> Result<T, ClientError> {
        let value = self.request(method, path, body, revision).await?;
        serde_json::from_value(value).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}
