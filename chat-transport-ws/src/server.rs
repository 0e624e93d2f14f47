//! [`WsServer`]: a standalone listener for hosts that do not run axum themselves. One accept
//! loop over a `TcpListener` (plain or TLS) serves HTTP/1.1 with hyper and routes through an
//! axum `Router`: the `chat/1` endpoint plus whatever routes the host adds (the example server's
//! `GET /` page). It stops accepting when the engine's shutdown token fires.
//!
//! A manual hyper accept loop rather than `axum::serve`, because `axum::serve` cannot do TLS and
//! one loop for both keeps them identical. Per connection: one task for HTTP, which ends once
//! the connection is upgraded; the session then runs on the task the upgrade spawns.
//!
//! What a connection may hold before it is a session is bounded here: beyond the connection
//! limits it is answered a canned 503 at accept (nothing read, no task); the TLS handshake and
//! the HTTP phase end by the handshake deadline (`Config::handshake_timeout` from accept), and
//! request heads are read into at most 16 KiB.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use chat_core::{ConnectionLimits, Engine};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Error;
use crate::handler::router;
use crate::options::WsOptions;
use crate::upgrade::Admitted;

/// The most bytes of a request head (request line and headers) read into memory: a larger
/// head is answered `431` and the connection closed.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How long a connection's HTTP exchange in progress may go on once its handshake deadline has
/// passed (or shutdown began), after which the connection is dropped.
const HTTP_GRACE: Duration = Duration::from_secs(1);

/// The answer at accept beyond the connection limits; written without reading the request.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n\
Content-Length: 21\r\n\r\ntoo many connections\n";

/// A standalone WebSocket server for an [`Engine`]: `chat/1` at `/ws` (see
/// [`WsOptions::path`]), optional extra routes, optional TLS.
///
/// Bounds per connection: [`WsOptions::connection_limits`] at accept (beyond them: `503` and
/// close, or a bare close over TLS); the engine's `handshake_timeout` from accept covers the
/// TLS handshake, the HTTP request (whatever route it is for: an HTTP connection that is not
/// upgraded lasts no longer, plus a second to finish a response in progress) and `hello`;
/// request heads are capped at [`MAX_HEADER_BYTES`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use chat_transport_ws::{WsOptions, WsServer};
/// let engine = chat_core::Engine::builder().build().await.unwrap();
/// let page = axum::Router::new().route("/", axum::routing::get(|| async { "<!doctype html>..." }));
/// let server = WsServer::bind("127.0.0.1:0", engine.clone(), WsOptions::default()).await.unwrap().with_routes(page);
/// let addr = server.local_addr();
/// let running = tokio::spawn(server.run());
/// // ... clients connect to ws://{addr}/ws ...
/// engine.shutdown().await; // the server stops accepting and every session gets `bye shutdown`
/// running.await.unwrap().unwrap();
/// # let _ = addr;
/// # }
/// ```
pub struct WsServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    engine: Engine,
    app: Router,
    limits: ConnectionLimits,
    #[cfg(feature = "tls")]
    tls_handshake_timeout: Option<Duration>,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for WsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsServer")
            .field("local_addr", &self.local_addr)
            .field("engine", &self.engine)
            .field("limits", &self.limits)
            .finish()
    }
}

impl WsServer {
    /// Binds `addr` (port 0 picks a free port; see [`local_addr`](Self::local_addr)).
    pub async fn bind(addr: impl ToSocketAddrs, engine: Engine, options: WsOptions) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        #[cfg(feature = "tls")]
        let tls_handshake_timeout = options.tls_handshake_timeout;
        let limits = options.connection_limits.clone();
        let app = router(engine.clone(), options);
        Ok(WsServer {
            listener,
            local_addr,
            engine,
            app,
            limits,
            #[cfg(feature = "tls")]
            tls_handshake_timeout,
            #[cfg(feature = "tls")]
            tls: None,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connection limits in force (those of the options it was bound with).
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Adds the host's routes (a browser page at `GET /`, health checks...). Handlers may
    /// extract `ConnectInfo<SocketAddr>`.
    ///
    /// # Panics
    ///
    /// When `routes` has a route at the WebSocket endpoint's path (axum's `Router::merge`).
    pub fn with_routes(mut self, routes: Router) -> Self {
        self.app = self.app.merge(routes);
        self
    }

    /// Serves TLS (`wss://`, `https://`) with this certificate chain and private key, both PEM.
    #[cfg(feature = "tls")]
    pub fn with_tls_pem(self, cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        Ok(self.with_tls_config(crate::tls::server_config(cert_chain_pem, key_pem)?))
    }

    /// Serves TLS with a rustls configuration of the host's own (client certificates,
    /// resumption...). Its ALPN list should offer `http/1.1` or nothing.
    #[cfg(feature = "tls")]
    pub fn with_tls_config(mut self, config: std::sync::Arc<tokio_rustls::rustls::ServerConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// Accepts connections until the engine's shutdown begins, then stops accepting, lets HTTP
    /// requests in flight finish, and resolves. WebSocket sessions are the engine's: await
    /// [`Engine::shutdown`] to know they are over.
    pub async fn run(self) -> Result<(), Error> {
        let shutdown = self.engine.shutdown_token();
        let tracker = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = shutdown.cancelled() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            };
            let accepted = Instant::now();
            let Some(permit) = self.limits.try_acquire(peer.ip()) else {
                self.refuse(tcp, peer);
                continue;
            };
            let admitted = Admitted::new(accepted, permit);
            // (Capped at a day: an absurd setting must not overflow the clock.)
            let deadline = accepted + self.engine.config().handshake_timeout.min(Duration::from_secs(86_400));
            let _ = tcp.set_nodelay(true);
            let app = self.app.clone();
            let shutdown = shutdown.clone();
            #[cfg(feature = "tls")]
            if let Some(acceptor) = &self.tls {
                let acceptor = acceptor.clone();
                let tls_deadline = self.tls_handshake_timeout.map_or(deadline, |t| deadline.min(accepted + t));
                tracker.spawn(async move {
                    let handshake = tokio::time::timeout_at(tls_deadline, acceptor.accept(tcp));
                    let tls = tokio::select! {
                        tls = handshake => tls,
                        _ = shutdown.cancelled() => return,
                    };
                    match tls {
                        Ok(Ok(tls)) => serve_http(tls, app, peer, admitted, deadline, shutdown).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
                continue;
            }
            tracker.spawn(serve_http(tcp, app, peer, admitted, deadline, shutdown));
        }
        drop(self.listener);
        tracker.close();
        tracker.wait().await;
        Ok(())
    }

    /// A connection beyond the limits: a canned `503` if the socket takes it at once (a fresh
    /// socket's send buffer is empty), then closed; nothing is read, nothing spawned. Over TLS
    /// the connection is closed bare (answering would take a TLS handshake).
    fn refuse(&self, tcp: TcpStream, peer: SocketAddr) {
        tracing::debug!(%peer, "connection limit reached; refused at accept");
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return;
        }
        let _ = tcp.try_write(BUSY);
    }
}

/// Errors of one connection that do not concern the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Serves HTTP/1.1 (with upgrades) on one connection until it closes or is upgraded, at the
/// latest at `deadline` (or shutdown): then it shuts down gracefully (an idle connection closes
/// at once) and is dropped if that takes longer than [`HTTP_GRACE`] (a request head still
/// trickling in, say). The connection's place within the limits (`admitted`) is dropped with
/// it, unless an upgrade took it into the session.
async fn serve_http<IO>(
    io: IO,
    app: Router,
    peer: SocketAddr,
    admitted: Admitted,
    deadline: Instant,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(admitted.clone());
        // A Router is always ready; calling it without `poll_ready` is allowed.
        tower_service::Service::call(&mut app.clone(), request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.max_buf_size(MAX_HEADER_BYTES);
    let connection = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => Some(result),
        _ = tokio::time::sleep_until(deadline) => None,
        _ = shutdown.cancelled() => None,
    };
    let result = match result {
        Some(result) => result,
        None => {
            connection.as_mut().graceful_shutdown();
            let grace = deadline.max(Instant::now()) + HTTP_GRACE;
            match tokio::time::timeout_at(grace, connection).await {
                Ok(result) => result,
                Err(_) => return tracing::debug!(%peer, "http connection dropped at its deadline"),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "http connection failed");
    }
}

#[cfg(test)]
mod tests {
    use super::BUSY;

    #[test]
    fn the_canned_503_is_well_formed() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(head.contains("\r\nConnection: close\r\n"));
        assert!(head.ends_with(&format!("Content-Length: {}", body.len())));
    }
}
