//! [`WsOptions`]: what a host may tune about the WebSocket transport (path, allowed origins,
//! buffer sizes, connection limits, TLS handshake timeout). Frame limits are not here: they
//! come from the engine's `max_frame`, and the handshake deadline from its
//! `handshake_timeout`, so both transports enforce the same bounds.

use std::time::Duration;

use chat_core::ConnectionLimits;

use crate::deflate::DeflateOptions;

/// The subprotocol of `chat/1` over WebSocket (PROTOCOL.md §1).
pub const SUBPROTOCOL: &str = "chat.v1";

/// Settings of the WebSocket transport. The defaults are safe on the open internet and keep
/// idle connections cheap.
///
/// ```
/// use chat_transport_ws::WsOptions;
/// let options = WsOptions::default()
///     .path("/chat")
///     .allowed_origins(["https://chat.example.com"])
///     .write_buffer_size(16 * 1024);
/// assert_eq!(options.get_path(), "/chat");
/// assert!(options.origin_allowed(None)); // non-browser clients send no Origin
/// assert!(options.origin_allowed(Some("https://CHAT.example.com")));
/// assert!(!options.origin_allowed(Some("https://evil.example")));
/// assert_eq!(options.limits().max_connections(), 25_000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsOptions {
    pub(crate) path: String,
    pub(crate) allowed_origins: Option<Vec<String>>,
    pub(crate) write_buffer_size: usize,
    pub(crate) tls_handshake_timeout: Option<Duration>,
    pub(crate) connection_limits: ConnectionLimits,
    pub(crate) deflate: Option<DeflateOptions>,
}

impl Default for WsOptions {
    fn default() -> Self {
        WsOptions {
            path: "/ws".to_owned(),
            allowed_origins: None,
            write_buffer_size: 64 * 1024,
            tls_handshake_timeout: None,
            connection_limits: ConnectionLimits::default(),
            deflate: None,
        }
    }
}

impl WsOptions {
    /// The endpoint's path for [`router`](crate::router) and [`WsServer`](crate::WsServer).
    /// Default `/ws`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The endpoint's path.
    pub fn get_path(&self) -> &str {
        &self.path
    }

    /// Restricts which browser pages may open a connection: an upgrade request whose `Origin`
    /// header is not one of `origins` (compared ASCII-case-insensitively, e.g.
    /// `https://chat.example.com`) is refused with 403. Requests without `Origin` (non-browser
    /// clients) are always accepted.
    ///
    /// Default: every origin is accepted. That is safe for `chat/1` because authentication
    /// travels in `hello.token`, never in cookies, so a foreign page cannot ride on a
    /// user's browser session (no cross-site WebSocket hijacking); set a list when the host's
    /// authenticator relies on anything ambient, or to keep other sites from embedding the chat.
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Whether an upgrade request with this `Origin` header is accepted.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match (&self.allowed_origins, origin) {
            (None, _) | (_, None) => true,
            (Some(list), Some(origin)) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }

    /// Outbound bytes gathered before they are written to the socket while a batch of frames
    /// is fed (the batch is flushed at its end anyway): a fan-out burst goes out in writes of
    /// this size. Default 64 KiB. The buffer exists only while a batch is written: it is freed
    /// after any flush that ended a batch smaller than a quarter of this, so a connection that
    /// goes quiet holds none (at the latest after its next heartbeat ping).
    pub fn write_buffer_size(mut self, bytes: usize) -> Self {
        self.write_buffer_size = bytes;
        self
    }

    /// A bound on the TLS handshake of [`WsServer`](crate::WsServer) shorter than the one it
    /// always has: what is left of the engine's handshake deadline (`handshake_timeout`, from
    /// accept to `welcome`). Default: that deadline alone.
    pub fn tls_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.tls_handshake_timeout = Some(timeout);
        self
    }

    /// How many connections are admitted, in total and per IP address: beyond them an upgrade
    /// is answered `503 Service Unavailable` before any session exists ([`WsServer`](crate::WsServer)
    /// answers at accept, without reading the request). Give the node's other transports the
    /// same limiter to make the limits node-wide. Default: [`ConnectionLimits::default`]
    /// (25,000 connections, 1,000 per IP address), one limiter per `WsOptions::default()`.
    ///
    /// Behind the host's own axum server ([`router`](crate::router), [`handler`](crate::handler))
    /// the handler takes a place per upgrade request, from the peer address of
    /// `ConnectInfo<SocketAddr>` when the router is served with it (otherwise against the total
    /// only); the host's server bounds its own HTTP connections.
    pub fn connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.connection_limits = limits;
        self
    }

    /// The connection limits in force (and how many connections hold a place).
    pub fn limits(&self) -> &ConnectionLimits {
        &self.connection_limits
    }

    /// Offers permessage-deflate (RFC 7692) to clients that ask for it (browsers do): messages
    /// of at least `options.min_size` bytes go out compressed, and compressed messages are
    /// accepted. Without context takeover in either direction, so a connection keeps no
    /// compression state between messages (no memory while idle) and a message fanned out to
    /// many recipients is compressed once. An inflated message counts against the engine's
    /// `max_frame` as it is inflated (a decompression bomb is `frame_too_large`). Default: off.
    pub fn deflate(mut self, options: DeflateOptions) -> Self {
        self.deflate = Some(options);
        self
    }

    /// The permessage-deflate settings, when it is offered.
    pub fn get_deflate(&self) -> Option<&DeflateOptions> {
        self.deflate.as_ref()
    }
}
