//! The one per-connection loop that every transport reuses: [`Engine::serve`] takes a
//! `Stream` of inbound frames and a `Sink` of outbound frames and runs a session on them.
//!
//! One task per connection and one future, with no timer: the session reads and handles each
//! request in order and queues replies; the [`Writer`] is driven beside it on every wake of the
//! task (drain the outbox, feed every queued frame, flush once). Nothing else waits per
//! connection: kick, shutdown, overflow and the engine's heartbeat task (pings, timeouts) act
//! on the outbox, which wakes the task. A transport only turns bytes into [`Inbound`] items and
//! `Bytes` frames back into bytes.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream};
use tokio::time::timeout;

use crate::engine::Engine;
use crate::outbox::Outbox;
use crate::session::Session;

/// One thing a transport read from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// When the transport accepted the connection: the handshake deadline
    /// ([`Config::handshake_timeout`](crate::Config::handshake_timeout)) counts from here, so
    /// that a TLS handshake or an HTTP upgrade before [`Engine::serve`] counts too. `None`:
    /// from the call to `serve`.
    pub accepted: Option<tokio::time::Instant>,
}

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

/// The writer half: outbox → sink. Not a task of its own: the session drives it with
/// [`drive`](Writer::drive) while it waits for anything else.
pub(crate) struct Writer<O> {
    sink: O,
    /// Frames taken from the outbox, not yet fed to the sink.
    batch: VecDeque<Bytes>,
    /// Frames were fed since the last flush.
    unflushed: bool,
    /// The outbox is closed and drained, or the sink failed.
    done: bool,
}

impl<O: Sink<Bytes> + Unpin> Writer<O> {
    fn new(sink: O) -> Self {
        Writer { sink, batch: VecDeque::new(), unflushed: false, done: false }
    }

    /// Writes whatever the outbox holds, as far as the sink accepts without waiting: feeds
    /// every frame of a batch, then flushes once. `Ready` once the writer is done: the outbox
    /// was closed and everything in it written, or the sink failed (the outbox is abandoned).
    pub(crate) fn poll_write(&mut self, cx: &mut Context<'_>, outbox: &Outbox) -> Poll<()> {
        if self.done {
            return Poll::Ready(());
        }
        let failed = loop {
            while !self.batch.is_empty() {
                match self.sink.poll_ready_unpin(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => break,
                    Poll::Pending => return Poll::Pending,
                }
                let Some(frame) = self.batch.pop_front() else { break };
                if self.sink.start_send_unpin(frame).is_err() {
                    break;
                }
                self.unflushed = true;
            }
            if !self.batch.is_empty() {
                break true;
            }
            if self.unflushed {
                match self.sink.poll_flush_unpin(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => break true,
                    Poll::Pending => return Poll::Pending,
                }
                self.unflushed = false;
                outbox.mark_sent();
            }
            match outbox.poll_batch(cx, &mut self.batch) {
                Poll::Ready(true) => {}
                Poll::Ready(false) => break false,
                Poll::Pending => return Poll::Pending,
            }
        };
        if failed {
            outbox.abandon();
            self.batch = VecDeque::new();
        }
        self.done = true;
        Poll::Ready(())
    }

    /// Runs `work` to completion, writing whenever it waits. Work that completes at once
    /// does not write: the session's loop writes once the peer's burst of requests is over.
    pub(crate) async fn drive<F: Future>(&mut self, outbox: &Outbox, work: F) -> F::Output {
        let mut work = pin!(work);
        poll_fn(|cx| {
            let done = work.as_mut().poll(cx);
            if done.is_pending() {
                let _ = self.poll_write(cx, outbox);
            }
            done
        })
        .await
    }

    /// The end: writes what is left (the final `bye`) and closes the sink; a peer that does
    /// not read gets `close_timeout` for each, no more.
    async fn finish(&mut self, outbox: &Outbox, close_timeout: Duration) {
        if timeout(close_timeout, poll_fn(|cx| self.poll_write(cx, outbox))).await.is_err() {
            outbox.abandon();
        }
        let _ = timeout(close_timeout, self.sink.close()).await;
    }
}
