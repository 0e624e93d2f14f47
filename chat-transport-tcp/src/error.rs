//! The crate's one error type, for everything a host or a client can get back from it:
//! socket errors, a refused handshake, and (with the `tls` feature) TLS setup and handshakes.

use std::io;

use chat_core::client::ClientError;

/// What can go wrong binding, serving or connecting over TCP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket (or file) operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The connection was made but the `chat/1` session was not (the server refused the
    /// `hello`, or closed).
    #[error("chat session: {0}")]
    Client(#[from] ClientError),
    /// A TLS failure.
    #[cfg(feature = "tls")]
    #[error("tls: {0}")]
    Tls(#[from] tokio_rustls::rustls::Error),
    /// A certificate, key or server name could not be used.
    #[cfg(feature = "tls")]
    #[error("invalid TLS configuration: {0}")]
    TlsConfig(String),
}

impl Error {
    /// The server's error code when it refused the session (`unauthorized`...).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Client(e) => e.code(),
            _ => None,
        }
    }
}
