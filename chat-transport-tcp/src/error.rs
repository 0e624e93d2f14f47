//! The crate's error type for the server side: socket errors and (with the `tls` feature) TLS
//! setup and handshakes. The client side returns the core's `ClientError`, as every transport
//! does.

use std::io;

/// What can go wrong binding or serving over TCP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket (or file) operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// A TLS failure.
    #[cfg(feature = "tls")]
    #[error("tls: {0}")]
    Tls(#[from] tokio_rustls::rustls::Error),
    /// A certificate, key or server name could not be used.
    #[cfg(feature = "tls")]
    #[error("invalid TLS configuration: {0}")]
    TlsConfig(String),
}
