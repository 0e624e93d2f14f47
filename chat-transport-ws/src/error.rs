//! The crate's one error type, [`Error`]: what can go wrong binding, serving or connecting.
//!
//! Errors a peer causes on a live connection never surface here: the core answers them on the
//! wire (PROTOCOL.md §6) and the transport only closes the socket.

use chat_core::client::ClientError;
use tokio_tungstenite::tungstenite;

/// What can go wrong binding a server or connecting a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed (bind, accept, connect).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The WebSocket handshake or connection failed.
    #[error("websocket error: {0}")]
    WebSocket(Box<tungstenite::Error>),
    /// The server answered the upgrade request with this HTTP status instead of switching
    /// protocols (403 for a refused `Origin`, 404 for a wrong path, 503 while shutting down).
    #[error("the server refused the WebSocket upgrade: HTTP {0}")]
    Refused(axum::http::StatusCode),
    /// The URL cannot be used (not `ws://` or `wss://`, no host...).
    #[error("invalid URL: {0}")]
    Url(String),
    /// The chat session failed: the server refused `hello` (`unauthorized`...), or the
    /// connection closed before `welcome`.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The TLS configuration is unusable (unreadable PEM, key not matching the certificate...)
    /// or the TLS handshake failed.
    #[error("TLS error: {0}")]
    Tls(String),
}

impl From<tungstenite::Error> for Error {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Http(response) => Error::Refused(response.status()),
            tungstenite::Error::Io(e) => Error::Io(e),
            e => Error::WebSocket(Box::new(e)),
        }
    }
}

impl Error {
    /// The server's error code when it refused the session (`unauthorized`,
    /// `unsupported_protocol`...).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Client(e) => e.code(),
            _ => None,
        }
    }
}
