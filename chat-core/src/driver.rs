//! The one per-connection loop that every transport reuses: [`Engine::serve`] takes a
//! `Stream` of inbound frames and a `Sink` of outbound frames and runs a session on them.
//!
//! One task per connection and one future, with no timer: the session reads and handles each
//! request in order and queues replies; the [`Writer`] is driven beside it on every wake of the
//! task (drain the outbox, feed every queued frame, flush once). Nothing else waits per
//! connection: kick, shutdown, overflow and the engine's heartbeat task (pings, timeouts) act
//! on the outbox, which wakes the task. A transport only turns bytes into [`Inbound`] items and
//! `Bytes` frames back into bytes.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Sink, Stream};

use crate::engine::Engine;
use crate::outbox::Outbox;
use crate::session::Session;
use crate::transport::{ConnInfo, Inbound, Writer};

impl Engine {
    /// Runs one connection to its end: the `chat/1` session over `inbound` and `outbound`.
    ///
    /// `inbound` yields what the peer sent (an `Err` or the end of the stream means the peer is
    /// gone); `outbound` takes whole frames. Resolves when the session is over and `outbound`
    /// was closed. Every transport calls this and does nothing else with the protocol.
    ///
    /// Every frame written to `outbound` is one JSON object in valid UTF-8, on one line (no
    /// raw line break: message bodies are kept compact, see [`compact`](crate::protocol::compact)):
    /// transports may rely on it (the WebSocket transport sends frames as text without
    /// validating them again; a line-framed transport, NDJSON or server-sent events, writes
    /// them as they are).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use bytes::Bytes;
    /// use chat_core::{ConnInfo, Engine, Inbound};
    /// use futures::{SinkExt, StreamExt};
    ///
    /// let engine = Engine::builder().build().await.unwrap();
    /// // An in-memory "connection": two channels standing in for a socket.
    /// let (mut to_server, inbound) = futures::channel::mpsc::unbounded::<Result<Inbound, std::io::Error>>();
    /// let (outbound, mut from_server) = futures::channel::mpsc::unbounded::<Bytes>();
    /// let session = tokio::spawn({
    ///     let engine = engine.clone();
    ///     async move { engine.serve(inbound, outbound, ConnInfo::default()).await }
    /// });
    /// let hello = r#"{"type":"hello","id":1,"protocol":1,"user":"alice"}"#;
    /// to_server.send(Ok(Inbound::Frame(Bytes::from(hello)))).await.unwrap();
    /// let welcome = from_server.next().await.unwrap();
    /// assert!(welcome.starts_with(br#"{"type":"welcome","id":1"#));
    /// engine.shutdown().await; // the session gets `bye shutdown`
    /// let bye = from_server.next().await.unwrap();
    /// assert_eq!(&bye[..], br#"{"type":"bye","reason":"shutdown","reconnect":true}"#);
    /// session.await.unwrap();
    /// # }
    /// ```
    ///
    /// The session is registered when `serve` is called (shutdown reaches it from then on);
    /// the returned future runs it.
    pub fn serve<I, E, O>(
        &self,
        inbound: I,
        outbound: O,
        conn: ConnInfo,
    ) -> impl Future<Output = ()> + Send + use<'_, I, E, O>
    where
        I: Stream<Item = Result<Inbound, E>> + Unpin + Send,
        E: std::fmt::Display,
        O: Sink<Bytes> + Unpin + Send,
    {
        // Built here, not in the future: what it needs no longer (`conn`) is not kept in it,
        // and an `async` block keeps each captured value once (an `async fn` would keep its
        // arguments twice).
        let c = &self.inner.config;
        let close_timeout = c.close_timeout;
        let outbox = Arc::new(Outbox::new(c.outbox_frames, c.outbox_bytes));
        let running = self.inner.tracker.token();
        let counted = crate::metrics::Connection::open(conn.transport);
        let mut session = Session::new(self.inner.clone(), outbox, conn);
        let mut writer = Writer::new(outbound);
        async move {
            session.run(inbound, &mut writer).await;
            // Boxed: the last writes' timers are needed once, not for the connection's life.
            Box::pin(writer.finish(session.outbox(), close_timeout)).await;
            drop(running);
            drop(counted);
        }
    }
}
