//! The one per-connection loop that every transport reuses: [`Engine::serve`] takes a
//! `Stream` of inbound frames and a `Sink` of outbound frames and runs a session on them.
//!
//! Two halves run side by side on the connection's task: the session (reads, handles each
//! request in order, queues replies) and the writer (drains the outbox, feeds every queued frame
//! and flushes once, pings when nothing was sent for a heartbeat). A transport only turns bytes
//! into [`Inbound`] items and `Bytes` frames back into bytes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream};
use tokio::time::{sleep, timeout, Instant};

use crate::engine::Engine;
use crate::outbox::Outbox;
use crate::protocol::{encode_ping, ByeReason};
use crate::session::Session;

/// One thing a transport read from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// One whole frame's JSON bytes.
    Frame(Bytes),
    /// A frame that is not text (a binary WebSocket message): `bad_frame`.
    Binary,
    /// A frame longer than `max_frame`, which the transport did not read into memory:
    /// `frame_too_large`. The transport may end the stream right after it.
    TooLarge,
    /// A transport-level sign of life (a WebSocket ping or pong).
    Alive,
}

/// What the transport knows about a connection.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: Option<SocketAddr>,
    /// The transport's name, for logs (`"tcp"`, `"ws"`).
    pub transport: &'static str,
}

impl Engine {
    /// Runs one connection to its end: the `chat/1` session over `inbound` and `outbound`.
    ///
    /// `inbound` yields what the peer sent (an `Err` or the end of the stream means the peer is
    /// gone); `outbound` takes whole frames. Resolves when the session is over and `outbound`
    /// was closed. Every transport calls this and does nothing else with the protocol.
    ///
    /// Every frame written to `outbound` is one JSON object in valid UTF-8: transports may
    /// rely on it (the WebSocket transport sends frames as text without validating them again).
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
    pub async fn serve<I, E, O>(&self, inbound: I, outbound: O, conn: ConnInfo)
    where
        I: Stream<Item = Result<Inbound, E>> + Unpin + Send,
        E: std::fmt::Display,
        O: Sink<Bytes> + Unpin + Send,
    {
        let inner = &self.inner;
        let _running = inner.tracker.token();
        let c = &inner.config;
        let outbox = Arc::new(Outbox::new(c.outbox_frames, c.outbox_bytes));
        if inner.shutdown.is_cancelled() {
            outbox.close(ByeReason::Shutdown, []);
        }
        let mut session = Session::new(inner.clone(), outbox.clone(), conn);
        let reader = session.run(inbound);
        let writer = write_loop(&outbox, outbound, c.heartbeat, c.close_timeout);
        futures::future::join(reader, writer).await;
    }
}

/// Feeds every frame of the batch, then flushes once. False when the sink failed.
async fn write_batch<O: Sink<Bytes> + Unpin>(sink: &mut O, batch: &mut VecDeque<Bytes>) -> bool {
    for frame in batch.drain(..) {
        if sink.feed(frame).await.is_err() {
            return false;
        }
    }
    sink.flush().await.is_ok()
}

/// The writer half: outbox → sink, with heartbeat pings, until the session is over.
async fn write_loop<O: Sink<Bytes> + Unpin>(
    outbox: &Outbox,
    mut sink: O,
    heartbeat: Duration,
    close_timeout: Duration,
) {
    let mut batch = VecDeque::new();
    let ping_at = sleep(heartbeat);
    tokio::pin!(ping_at);
    loop {
        let more = tokio::select! {
            more = outbox.next_batch(&mut batch) => more,
            _ = &mut ping_at => {
                batch.push_back(encode_ping());
                true
            }
        };
        if !more {
            break;
        }
        let written = {
            let write = write_batch(&mut sink, &mut batch);
            tokio::pin!(write);
            if outbox.ended().is_cancelled() {
                // The last frames: a peer that does not read gets close_timeout, no more.
                Box::pin(timeout(close_timeout, write)).await.unwrap_or(false)
            } else {
                tokio::select! {
                    ok = &mut write => ok,
                    _ = outbox.ended().cancelled() => Box::pin(timeout(close_timeout, &mut write)).await.unwrap_or(false),
                }
            }
        };
        batch.clear();
        if !written {
            outbox.abandon();
            break;
        }
        ping_at.as_mut().reset(Instant::now() + heartbeat);
    }
    let _ = Box::pin(timeout(close_timeout, sink.close())).await;
}
