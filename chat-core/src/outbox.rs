//! Each session's bounded outbound queue, and the slow-consumer policy.
//!
//! Fan-out pushes a shared `Bytes` (a reference count, no copy) under a short synchronous lock
//! and never waits for a socket. The session's writer drains everything queued at once and
//! flushes once. When a push would exceed the bounds (frames or bytes) the queue is dropped and
//! replaced by `bye slow_consumer`: that session ends, nobody else notices. Ephemeral frames
//! are dropped instead once the queue is half full.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::protocol::{encode_bye, ByeReason};

pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer when it waits for frames (and on close).
    wake: Notify,
    /// Cancelled when the session must end (overflow, kick, close).
    ended: CancellationToken,
    max_frames: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// Set once: why the session ends. Nothing is queued after it but the final frames.
    closed: Option<ByeReason>,
    /// The connection is gone: nothing more will be written.
    abandoned: bool,
    /// The writer found the queue empty and waits to be woken: only then does a push pay for
    /// a wake-up.
    writer_waiting: bool,
}

/// How a frame is to be treated when the queue is full.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Class {
    /// Replies and stored messages: overflow ends the session (`slow_consumer`).
    Must,
    /// Ephemeral messages: dropped when the queue is half full.
    Droppable,
    /// Bounded bursts the session asked for itself (recovery replay, a history page): queued
    /// past the bounds.
    Forced,
}

impl Outbox {
    pub(crate) fn new(max_frames: usize, max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            ended: CancellationToken::new(),
            max_frames: max_frames.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one frame. Returns false when the frame was not queued (dropped, overflow, or the
    /// session is already closing).
    pub(crate) fn push(&self, frame: Bytes, class: Class) -> bool {
        let mut s = self.lock();
        if s.closed.is_some() || s.abandoned {
            return false;
        }
        let (frames, bytes) = (s.queue.len() + 1, s.bytes + frame.len());
        match class {
            Class::Forced => {}
            Class::Droppable if frames * 2 > self.max_frames || bytes * 2 > self.max_bytes => return false,
            Class::Droppable => {}
            Class::Must if frames > self.max_frames || bytes > self.max_bytes => {
                Self::close_locked(&mut s, ByeReason::SlowConsumer, [], true);
                drop(s);
                self.ended.cancel();
                self.wake.notify_one();
                return false;
            }
            Class::Must => {}
        }
        let wake = std::mem::take(&mut s.writer_waiting);
        s.bytes = bytes;
        s.queue.push_back(frame);
        drop(s);
        if wake {
            self.wake.notify_one();
        }
        true
    }

    fn close_locked<const N: usize>(s: &mut State, reason: ByeReason, last: [Bytes; N], discard: bool) {
        if discard {
            s.queue.clear();
            s.bytes = 0;
        }
        for frame in last {
            s.bytes += frame.len();
            s.queue.push_back(frame);
        }
        s.queue.push_back(encode_bye(reason));
        s.closed = Some(reason);
    }

    /// Ends the session: queues `last` (an error, say) and `bye reason` after whatever is
    /// queued. Only the first close counts; returns whether this one did.
    pub(crate) fn close<const N: usize>(&self, reason: ByeReason, last: [Bytes; N]) -> bool {
        let mut s = self.lock();
        if s.closed.is_some() || s.abandoned {
            return false;
        }
        Self::close_locked(&mut s, reason, last, false);
        drop(s);
        self.ended.cancel();
        self.wake.notify_one();
        true
    }

    /// The connection is gone (the peer left or the socket broke): drop what is queued, accept
    /// nothing more, end the session.
    pub(crate) fn abandon(&self) {
        let mut s = self.lock();
        s.abandoned = true;
        s.queue.clear();
        s.bytes = 0;
        drop(s);
        self.ended.cancel();
        self.wake.notify_one();
    }

    /// Abandons the connection unless the session was closed on purpose (whose `bye` must
    /// still go out).
    pub(crate) fn abandon_unless_closed(&self) {
        if self.lock().closed.is_none() {
            self.abandon();
        }
    }

    /// Why the session is ending, once it is.
    pub(crate) fn closed(&self) -> Option<ByeReason> {
        self.lock().closed
    }

    /// Resolves once the session must end.
    pub(crate) fn ended(&self) -> &CancellationToken {
        &self.ended
    }

    /// Moves whatever is queued into `out` without waiting (benches).
    #[doc(hidden)]
    pub fn drain_now(&self, out: &mut VecDeque<Bytes>) {
        let mut s = self.lock();
        std::mem::swap(&mut s.queue, out);
        s.bytes = 0;
    }

    /// Waits for frames and moves all of them into `out` (which must be empty). Returns false
    /// once the session is closed and everything, its `bye` included, has been handed out.
    pub(crate) async fn next_batch(&self, out: &mut VecDeque<Bytes>) -> bool {
        loop {
            {
                let mut s = self.lock();
                if !s.queue.is_empty() {
                    std::mem::swap(&mut s.queue, out);
                    s.bytes = 0;
                    return true;
                }
                if s.closed.is_some() || s.abandoned {
                    return false;
                }
                s.writer_waiting = true;
            }
            // A push between the unlock and this await leaves a permit: no wake-up is lost.
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_replaces_the_queue_with_bye() {
        let o = Outbox::new(3, 1 << 20);
        for _ in 0..3 {
            assert!(o.push(Bytes::from_static(b"m"), Class::Must));
        }
        assert!(!o.push(Bytes::from_static(b"m"), Class::Droppable), "ephemeral dropped past half");
        assert!(!o.push(Bytes::from_static(b"m"), Class::Must));
        assert_eq!(o.closed(), Some(ByeReason::SlowConsumer));
        assert!(o.ended().is_cancelled());
        let mut out = VecDeque::new();
        assert!(o.next_batch(&mut out).await);
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with(br#"{"type":"bye","reason":"slow_consumer""#));
        out.clear();
        assert!(!o.next_batch(&mut out).await);
    }

    #[tokio::test]
    async fn bytes_bound_and_close_order() {
        let o = Outbox::new(100, 10);
        assert!(o.push(Bytes::from_static(b"12345"), Class::Must));
        assert!(o.push(Bytes::from_static(b"12345678901234"), Class::Forced));
        assert!(o.close(ByeReason::Shutdown, [Bytes::from_static(b"err")]));
        assert!(!o.close(ByeReason::Timeout, []));
        let mut out = VecDeque::new();
        assert!(o.next_batch(&mut out).await);
        assert_eq!(out.len(), 4);
        assert_eq!(&out[2][..], b"err");
    }
}
