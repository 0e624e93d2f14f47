//! The engine's side of a connection: what a transport reads from its peer ([`Inbound`]), what
//! it knows of the connection ([`ConnInfo`]), and the `Writer` that moves the session's
//! outbox into the transport's sink. `Engine::serve` (in `driver`) puts them together.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Sink, SinkExt};
use tokio::time::timeout;

use crate::outbox::Outbox;

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
    /// that a TLS handshake or an HTTP upgrade before [`Engine::serve`](crate::Engine::serve) counts too. `None`:
    /// from the call to `serve`.
    pub accepted: Option<tokio::time::Instant>,
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
    pub(crate) fn new(sink: O) -> Self {
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
    pub(crate) async fn finish(&mut self, outbox: &Outbox, close_timeout: Duration) {
        if timeout(close_timeout, poll_fn(|cx| self.poll_write(cx, outbox))).await.is_err() {
            outbox.abandon();
        }
        let _ = timeout(close_timeout, self.sink.close()).await;
    }
}
