//! The client's one error type, [`ClientError`], whatever the transport: a refused request
//! carries the server's code as an enum ([`ServerCode`]), a connection that could not be opened
//! is [`ClientError::Connect`], one that went away is [`ClientError::Closed`].

use std::fmt;

use serde::Deserialize;

use crate::protocol::ErrorCode;

/// What can go wrong for a client, over any transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered the request with an `error` frame.
    #[error("{0}")]
    Server(ServerError),
    /// The transport could not open the connection (address, socket, TLS, WebSocket upgrade).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server answered the connection attempt (a WebSocket upgrade) with this HTTP status
    /// instead of opening the connection: 403 for a refused `Origin`, 404 for a wrong path,
    /// 503 while shutting down or full.
    #[error("the server refused the connection: HTTP {0}")]
    Rejected(u16),
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// The server sent something this client cannot read.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server did not answer `hello` within [`HELLO_TIMEOUT`](super::HELLO_TIMEOUT).
    #[error("no welcome from the server in time")]
    Timeout,
    /// [`Reconnecting`](super::Reconnecting) already keeps as many unacknowledged sends as it
    /// may ([`max_unacked`](super::ReconnectOptions::max_unacked)); this one was not sent.
    #[error("too many sends wait for a connection")]
    Backlog,
}

impl ClientError {
    /// The server's error code, when the server refused the request with a code this client
    /// knows (see [`ServerCode`] for the others).
    ///
    /// ```
    /// use chat_core::client::{ClientError, ServerCode, ServerError};
    /// use chat_core::ErrorCode;
    /// let refused = ClientError::Server(ServerError::new(ErrorCode::NotMember, "join first"));
    /// assert_eq!(refused.code(), Some(ErrorCode::NotMember));
    /// assert_eq!(refused.to_string(), "not_member: join first");
    /// assert_eq!(ClientError::Closed.code(), None);
    /// ```
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e) => e.code.known(),
            _ => None,
        }
    }

    /// Whether trying again later cannot help: the server refused the session itself (a
    /// fatal code: `unauthorized`, `unsupported_protocol`...) or the connection attempt
    /// ([`Rejected`](Self::Rejected) with a 4xx status).
    pub fn is_refusal(&self) -> bool {
        match self {
            ClientError::Server(e) => e.code.known().is_some_and(ErrorCode::is_fatal),
            ClientError::Rejected(status) => (400..500).contains(status),
            _ => false,
        }
    }
}

/// An `error` frame: the answer to a refused request, or an event when it has no `id`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServerError {
    /// What went wrong.
    pub code: ServerCode,
    /// The server's explanation, for people.
    #[serde(default)]
    pub message: String,
}

impl ServerError {
    /// An error with a known code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ServerError {
        ServerError { code: ServerCode::Known(code), message: message.into() }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The `code` of an `error` frame: one of PROTOCOL.md §6, or one a newer server introduced.
///
/// ```
/// use chat_core::client::ServerCode;
/// use chat_core::ErrorCode;
/// assert_eq!(ServerCode::from("forbidden"), ServerCode::Known(ErrorCode::Forbidden));
/// assert_eq!(ServerCode::from("brand_new"), ServerCode::Unknown("brand_new".into()));
/// assert_eq!(ServerCode::from("brand_new").as_str(), "brand_new");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerCode {
    /// A code this client knows.
    Known(ErrorCode),
    /// A code this client does not know, as written on the wire.
    Unknown(String),
}

impl ServerCode {
    /// The code as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ServerCode::Known(code) => code.as_str(),
            ServerCode::Unknown(code) => code,
        }
    }

    /// The code, when this client knows it.
    pub fn known(&self) -> Option<ErrorCode> {
        match self {
            ServerCode::Known(code) => Some(*code),
            ServerCode::Unknown(_) => None,
        }
    }
}

impl From<&str> for ServerCode {
    fn from(wire: &str) -> ServerCode {
        ErrorCode::from_wire(wire).map_or_else(|| ServerCode::Unknown(wire.to_owned()), ServerCode::Known)
    }
}

impl PartialEq<ErrorCode> for ServerCode {
    fn eq(&self, other: &ErrorCode) -> bool {
        self.known() == Some(*other)
    }
}

impl fmt::Display for ServerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ServerCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = String::deserialize(d)?;
        Ok(ServerCode::from(wire.as_str()))
    }
}
