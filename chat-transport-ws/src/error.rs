//! The crate's error type for the server side, [`Error`]: what can go wrong binding or serving.
//! The client ([`connect`](crate::connect)) returns the core's `ClientError`, as every
//! transport does.
//!
//! Errors a peer causes on a live connection never surface here: the core answers them on the
//! wire (PROTOCOL.md §6) and the transport only closes the socket.

/// What can go wrong binding or running a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed (bind, accept).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS configuration is unusable (unreadable PEM, key not matching the certificate...)
    /// or a TLS handshake failed.
    #[error("TLS error: {0}")]
    Tls(String),
}
