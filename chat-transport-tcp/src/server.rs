//! The server side: [`TcpServer`] accepts connections (optionally over TLS) and hands each to
//! the engine; [`serve_connection`] does that for one already-open byte stream.
//!
//! Every connection gets its own task running [`Engine::serve`] over the framing of
//! [`crate::codec`]; nothing of the protocol is decided here. A connection beyond the server's
//! [`ConnectionLimits`] is closed at accept, before any task or session exists; an admitted one
//! keeps its permit for as long as its task runs. The handshake deadline
//! (`Config::handshake_timeout`) counts from accept: a TLS handshake gets what is left of it,
//! the engine the rest. The accept loop survives accept errors (running out of file
//! descriptors backs off instead of spinning) and stops when the engine's shutdown begins,
//! which closes the listening socket.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use chat_core::{ConnInfo, ConnectionLimits, ConnectionPermit, Engine};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream, ToSocketAddrs};
use tokio::time::Instant;

use crate::codec::{FrameReader, FrameWriter};
#[cfg(feature = "tls")]
use crate::tls::TlsConfig;

/// The transport's name in [`ConnInfo`] and logs.
const TRANSPORT: &str = "tcp";
#[cfg(feature = "tls")]
const TRANSPORT_TLS: &str = "tcp+tls";

/// The shortest and longest pause after an accept error that is not about one connection.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// The listen backlog of [`TcpServer::bind`] (the kernel caps it at `net.core.somaxconn`).
/// std and mio use 128, which a reconnect storm overflows: dropped SYNs cost each client a
/// retransmit of a second or more.
const BACKLOG: u32 = 1024;

/// A TCP listener serving `chat/1` with an [`Engine`].
///
/// It admits connections within its [`ConnectionLimits`] (default: 25,000, 1,000 per IP
/// address; give the same limiter to every transport of the node to make them node-wide) and
/// closes the others as soon as they are accepted.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), chat_transport_tcp::Error> {
/// use chat_core::Engine;
/// use chat_transport_tcp::TcpServer;
///
/// let engine = Engine::builder().build().await.expect("in-memory broker");
/// let server = TcpServer::bind("127.0.0.1:0", engine.clone()).await?;
/// let addr = server.local_addr()?;
/// let running = tokio::spawn(server.run());
/// // ... clients connect to `addr` ...
/// engine.shutdown().await; // sessions get `bye shutdown`, the listener closes
/// running.await.expect("the accept loop ends on shutdown");
/// assert!(tokio::net::TcpStream::connect(addr).await.is_err());
/// # Ok(()) }
/// ```
pub struct TcpServer {
    listener: TcpListener,
    engine: Engine,
    limits: ConnectionLimits,
    #[cfg(feature = "tls")]
    tls: Option<TlsConfig>,
}

impl std::fmt::Debug for TcpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("TcpServer");
        d.field("local_addr", &self.listener.local_addr().ok()).field("engine", &self.engine);
        d.field("limits", &self.limits);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls.is_some());
        d.finish()
    }
}

impl TcpServer {
    /// Binds a listening socket on `addr` (port 0 picks a free port), with a backlog of 1024
    /// pending connections (a host wanting another can bind itself and use
    /// [`from_listener`](Self::from_listener)).
    pub async fn bind(addr: impl ToSocketAddrs, engine: Engine) -> io::Result<TcpServer> {
        Ok(Self::from_listener(listen(addr, BACKLOG).await?, engine))
    }

    /// Serves an already-bound tokio listener.
    pub fn from_listener(listener: TcpListener, engine: Engine) -> TcpServer {
        TcpServer {
            listener,
            engine,
            limits: ConnectionLimits::default(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Serves an already-bound std listener (set to non-blocking here). Must be called within
    /// a tokio runtime.
    pub fn from_std(listener: std::net::TcpListener, engine: Engine) -> io::Result<TcpServer> {
        listener.set_nonblocking(true)?;
        Ok(Self::from_listener(TcpListener::from_std(listener)?, engine))
    }

    /// Serves TLS on this listener: every connection starts with a TLS handshake, then speaks
    /// the same framing inside it.
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, tls: TlsConfig) -> TcpServer {
        self.tls = Some(tls);
        self
    }

    /// Admits connections within `limits` (shared with the node's other transports, if they
    /// are given the same limiter). Default: [`ConnectionLimits::default`], this server's own.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
    /// use chat_core::{ConnectionLimits, Engine};
    /// use chat_transport_tcp::TcpServer;
    ///
    /// let engine = Engine::builder().build().await.expect("in-memory broker");
    /// let limits = ConnectionLimits::new(10_000, 100).expect("limits are at least 1");
    /// let server = TcpServer::bind("127.0.0.1:0", engine.clone()).await?.connection_limits(limits.clone());
    /// assert_eq!(server.limits().max_connections_per_ip(), 100);
    /// # engine.shutdown().await; Ok(()) }
    /// ```
    pub fn connection_limits(mut self, limits: ConnectionLimits) -> TcpServer {
        self.limits = limits;
        self
    }

    /// The connection limits in force (and how many connections hold a place).
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The engine connections are handed to.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Accepts connections until the engine's shutdown begins, one task per connection; then
    /// drops the listener, so that new connections are refused. Sessions already running end
    /// through the engine's shutdown (`bye shutdown`), not here.
    pub async fn run(self) {
        let shutdown = self.engine.shutdown_token();
        let mut backoff = ACCEPT_BACKOFF.0;
        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF.0;
                    let accepted = Instant::now();
                    match self.limits.try_acquire(peer.ip()) {
                        Some(permit) => self.spawn_connection(stream, peer, accepted, permit),
                        // Dropped here: closed before anything is spent on it.
                        None => tracing::debug!(%peer, "connection limit reached; closed at accept"),
                    }
                }
                // About that one connection (it was reset before we took it): go on at once.
                Err(e) if is_per_connection(&e) => tracing::debug!(error = %e, "accept: connection lost"),
                // About the process (EMFILE, ENFILE, ENOBUFS...): retrying at once would spin.
                Err(e) => {
                    tracing::warn!(error = %e, pause = ?backoff, "accept failed; pausing");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                }
            }
        }
        tracing::debug!("tcp listener closed");
    }

    /// One task per admitted connection; `permit` lives as long as it.
    fn spawn_connection(&self, stream: TcpStream, peer: SocketAddr, accepted: Instant, permit: ConnectionPermit) {
        #[cfg(not(feature = "tls"))]
        let _ = accepted; // only a TLS handshake comes between the accept and the session
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
        }
        let engine = self.engine.clone();
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let acceptor = tls.acceptor();
            tokio::spawn(async move {
                let shutdown = engine.shutdown_token();
                // What is left of the handshake deadline after the TLS handshake is the
                // engine's, for `hello`.
                // (Capped at a day: an absurd setting must not overflow the clock.)
                let deadline = accepted + engine.config().handshake_timeout.min(Duration::from_secs(86_400));
                let handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream));
                let stream = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    done = handshake => match done {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    },
                };
                let (reader, writer) = tokio::io::split(stream);
                let conn = ConnInfo { peer: Some(peer), transport: TRANSPORT_TLS, accepted: Some(accepted) };
                serve_halves(&engine, reader, writer, conn).await;
                drop(permit); // held for the connection's life
            });
            return;
        }
        let mut stream = stream; // captured and split in place, not copied into the task twice
        tokio::spawn(async move {
            // `serve_halves` inlined: an async fn keeps its arguments for its whole life, and
            // this task is what an idle connection costs. Here the `ConnInfo` is gone once the
            // session is built, and the deadline counts from now (the accept, a moment ago).
            let (reader, writer) = stream.split();
            let (mut reader, mut writer) = framed(&engine, reader, writer);
            engine
                .serve(&mut reader, &mut writer, ConnInfo { peer: Some(peer), transport: TRANSPORT, accepted: None })
                .await;
            Box::pin(reader.linger()).await;
            drop(permit); // held for the connection's life
        });
    }
}

/// Binds the first of `addr`'s addresses that can be bound, like `TcpListener::bind`, but with
/// the given backlog.
async fn listen(addr: impl ToSocketAddrs, backlog: u32) -> io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        #[cfg(not(windows))]
        socket.set_reuseaddr(true)?;
        if let Err(e) = socket.bind(addr) {
            last = Some(e);
            continue;
        }
        match socket.listen(backlog) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind")))
}

/// Accept errors that concern only the connection being accepted.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Runs one `chat/1` session over an open byte stream (a TCP stream, a TLS stream, a Unix
/// socket...) with the TCP framing. [`TcpServer`] uses it for each connection; hosts with
/// listeners of their own can too (and then apply their own [`ConnectionLimits`]; the
/// handshake deadline counts from this call).
///
/// Returns when the session is over; if the peer was still sending then, after draining what
/// it sends for at most a second, so that closing does not reset the connection before the
/// peer has read the final `bye`.
pub async fn serve_connection<IO>(engine: &Engine, io: IO, peer: Option<SocketAddr>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (reader, writer) = tokio::io::split(io);
    serve_halves(engine, reader, writer, ConnInfo { peer, transport: TRANSPORT, accepted: None }).await;
}

/// The framing on both halves, the session, then a short lingering read (see
/// [`FrameReader::linger`]) before the connection is dropped.
async fn serve_halves<R, W>(engine: &Engine, reader: R, writer: W, conn: ConnInfo)
where
    R: AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin,
{
    let (mut reader, mut writer) = framed(engine, reader, writer);
    engine.serve(&mut reader, &mut writer, conn).await;
    // Boxed: its scratch buffer is needed once, at the end, not for the connection's life.
    Box::pin(reader.linger()).await;
}

/// The TCP framing on both halves of a connection.
fn framed<R, W>(engine: &Engine, reader: R, writer: W) -> (FrameReader<R>, FrameWriter<W>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    (FrameReader::new(reader, engine.config().max_frame), FrameWriter::new(writer))
}
