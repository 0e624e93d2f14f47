//! Hooks the embedding application registers to follow and steer sessions: connect,
//! disconnect (with its reason), join, leave, and send, which may refuse a message
//! (`forbidden`) or rewrite its body (moderation). Every method has a default that does nothing.

use async_trait::async_trait;
use bytes::Bytes;

use crate::auth::Identity;
use crate::protocol::{ByeReason, RoomName};

/// The session a hook is about.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The server-chosen session id (`welcome.session`).
    pub session: String,
    /// Who it is.
    pub identity: Identity,
    /// The peer's address, as the transport reports it.
    pub peer: Option<std::net::SocketAddr>,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The server closed it with this `bye` reason.
    Bye(ByeReason),
    /// The peer went away (closed the connection, or it broke).
    PeerGone,
}

/// What the send hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendDecision {
    /// Store and fan out the body as sent.
    Accept,
    /// Store and fan out this body instead. It must be valid JSON: build it with
    /// [`Bytes::from`] over `serde_json::to_vec` output. It is kept compact, as a client's is
    /// (see [`compact`](crate::protocol::compact)), so every frame stays one line.
    Rewrite(Bytes),
    /// Refuse: the client gets `forbidden` with this message.
    Reject(String),
}

/// Callbacks into the host application. All are awaited on the session's own task, so a slow
/// hook slows only that session.
///
/// ```
/// use chat_core::hooks::{Hooks, SendDecision, SessionInfo};
/// use chat_core::RoomName;
/// struct NoShouting;
/// #[async_trait::async_trait]
/// impl Hooks for NoShouting {
///     async fn on_send(&self, _: &SessionInfo, _: &RoomName, body: &bytes::Bytes) -> SendDecision {
///         if body.iter().any(u8::is_ascii_lowercase) { SendDecision::Accept } else { SendDecision::Reject("no shouting".into()) }
///     }
/// }
/// ```
#[async_trait]
pub trait Hooks: Send + Sync + 'static {
    /// After `welcome`.
    async fn on_connect(&self, _session: &SessionInfo) {}
    /// After the session ended (it is no longer in any room).
    async fn on_disconnect(&self, _session: &SessionInfo, _reason: DisconnectReason) {}
    /// After the session joined `room`.
    async fn on_join(&self, _session: &SessionInfo, _room: &RoomName) {}
    /// After the session left `room` (by `leave` or by disconnecting).
    async fn on_leave(&self, _session: &SessionInfo, _room: &RoomName) {}
    /// Before a message is published (stored or ephemeral).
    async fn on_send(&self, _session: &SessionInfo, _room: &RoomName, _body: &Bytes) -> SendDecision {
        SendDecision::Accept
    }
}

/// The default: no hooks.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {}
