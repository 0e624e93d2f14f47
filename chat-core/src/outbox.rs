//! Each session's bounded outbound queue, and the slow-consumer policy.
//!
//! Fan-out pushes a shared `Bytes` (a reference count, no copy) under a short synchronous lock
//! and never waits for a socket. The session's writer drains everything queued at once and
//! flushes once. Everything queued for the session counts against its bounds (frames and
//! bytes), the batch the writer took and has not yet written included:
//!
//! * an event (a stored message, a membership event, a ping) that would exceed them drops the
//!   queue and replaces it with `bye slow_consumer`: that session ends, nobody else notices;
//! * an ephemeral message is dropped instead once the queue is half full;
//! * a reply (to something the session asked) is always queued, and the session stops reading
//!   requests while the outbox is [full](Outbox::is_full) (read-side backpressure), so a client
//!   that asks without reading holds at most the bounds plus one reply.
//!
//! The outbox is also how anybody else (kick, shutdown, overflow) ends a session: it holds the
//! session task's waker and wakes it on a push the writer waits for and on close. That
//! replaces a `Notify` and a cancellation token per session: an idle connection costs less.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::task::AtomicWaker;

use crate::frames::encode_bye;
use crate::protocol::ByeReason;

pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Set once the session must end (overflow, kick, shutdown, close, a broken connection):
    /// read without the lock on every wake of the session task.
    ending: AtomicBool,
    /// The peer sent something since the heartbeat task last looked (see `heartbeat`).
    seen: AtomicBool,
    /// The writer flushed something since the heartbeat task last looked.
    sent: AtomicBool,
    /// The host kicked the session from rooms ([`mark_kicked`](Outbox::mark_kicked)), which
    /// the session task has not yet left.
    kicks: AtomicBool,
    /// The session task, woken when the writer waits and a frame arrives, and on close. Kept
    /// out of `state`: a push touches one cache line of each recipient's outbox, not two.
    waker: AtomicWaker,
    max_frames: u32,
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// The batch the writer took and has not finished writing: it counts against the bounds
    /// until the writer comes back for more. (Frames as a `u32` beside the flags: an outbox
    /// stays within the allocation size it had before this was counted.)
    inflight_bytes: usize,
    inflight_frames: u32,
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
    /// Events the session must not miss (stored messages, membership events, pings):
    /// overflow ends the session (`slow_consumer`).
    Must,
    /// Ephemeral messages: dropped when the queue is half full.
    Droppable,
    /// Replies to the session's own requests (a history page, a recovery replay, `sent`...):
    /// always queued and counted; the session reads no more requests while the outbox is full.
    Reply,
}

impl Outbox {
    pub(crate) fn new(max_frames: usize, max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            ending: AtomicBool::new(false),
            seen: AtomicBool::new(false),
            sent: AtomicBool::new(false),
            kicks: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            max_frames: max_frames.clamp(1, u32::MAX as usize) as u32,
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
        let (total_frames, total_bytes) = (frames + s.inflight_frames as usize, bytes + s.inflight_bytes);
        let max_frames = self.max_frames as usize;
        match class {
            Class::Reply => {}
            Class::Droppable if total_frames * 2 > max_frames || total_bytes * 2 > self.max_bytes => {
                crate::metrics::dropped_ephemeral();
                return false;
            }
            Class::Droppable => {}
            Class::Must if total_frames > max_frames || total_bytes > self.max_bytes => {
                // What was queued goes, and so does this event (`chat_dropped_total`).
                crate::metrics::dropped("slow_consumer", s.queue.len() + 1);
                Self::close_locked(&mut s, ByeReason::SlowConsumer, [], true);
                self.end(s);
                return false;
            }
            Class::Must => {}
        }
        let wake = std::mem::take(&mut s.writer_waiting);
        s.bytes = bytes;
        s.queue.push_back(frame);
        drop(s);
        if wake {
            self.waker.wake();
        }
        true
    }

    fn close_locked<const N: usize>(s: &mut State, reason: ByeReason, last: [Bytes; N], discard: bool) {
        if discard {
            s.queue = VecDeque::new();
            s.bytes = 0;
        }
        for frame in last {
            s.bytes += frame.len();
            s.queue.push_back(frame);
        }
        s.queue.push_back(encode_bye(reason));
        s.closed = Some(reason);
        crate::metrics::closed(Some(reason));
    }

    /// Ends the session: queues `last` (an error, say) and `bye reason` after whatever is
    /// queued. Only the first close counts; returns whether this one did.
    pub(crate) fn close<const N: usize>(&self, reason: ByeReason, last: [Bytes; N]) -> bool {
        let mut s = self.lock();
        if s.closed.is_some() || s.abandoned {
            return false;
        }
        Self::close_locked(&mut s, reason, last, false);
        self.end(s);
        true
    }

    /// The connection is gone (the peer left or the socket broke): drop what is queued, accept
    /// nothing more, end the session.
    pub(crate) fn abandon(&self) {
        let mut s = self.lock();
        if s.closed.is_none() && !s.abandoned {
            crate::metrics::closed(None); // the peer went first
        }
        s.abandoned = true;
        s.queue = VecDeque::new();
        s.bytes = 0;
        (s.inflight_frames, s.inflight_bytes) = (0, 0);
        self.end(s);
    }

    /// Marks the session as ending and wakes its task (after unlocking).
    fn end(&self, s: MutexGuard<'_, State>) {
        self.ending.store(true, Ordering::Release);
        drop(s);
        self.waker.wake();
    }

    /// Abandons the connection unless the session was closed on purpose (whose `bye` must
    /// still go out).
    pub(crate) fn abandon_unless_closed(&self) {
        if self.lock().closed.is_none() {
            self.abandon();
        }
    }

    /// Whether the session must stop reading requests: what is queued and in flight reaches
    /// a bound. The session task is woken when the writer makes progress (it drives the
    /// writer itself), so it looks again then.
    pub(crate) fn is_full(&self) -> bool {
        let s = self.lock();
        s.queue.len() + s.inflight_frames as usize >= self.max_frames as usize
            || s.bytes + s.inflight_bytes >= self.max_bytes
    }

    /// Frames and bytes queued or being written.
    pub(crate) fn queued(&self) -> (usize, usize) {
        let s = self.lock();
        (s.queue.len() + s.inflight_frames as usize, s.bytes + s.inflight_bytes)
    }

    /// Why the session is ending, once it is.
    pub(crate) fn closed(&self) -> Option<ByeReason> {
        self.lock().closed
    }

    /// The peer sent something (a sign of life).
    pub(crate) fn mark_seen(&self) {
        self.seen.store(true, Ordering::Relaxed);
    }

    /// The writer flushed frames to the connection.
    pub(crate) fn mark_sent(&self) {
        self.sent.store(true, Ordering::Relaxed);
    }

    /// Whether anything was received, and sent, since the last call (the heartbeat task's).
    pub(crate) fn take_activity(&self) -> (bool, bool) {
        (self.seen.swap(false, Ordering::Relaxed), self.sent.swap(false, Ordering::Relaxed))
    }

    /// The host kicked the session from rooms (listed by `notices::Users`, not here: an idle
    /// outbox stays small): the session task is woken, and leaves them when it next looks.
    pub(crate) fn mark_kicked(&self) {
        self.kicks.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether the host kicked the session from rooms since the last call.
    pub(crate) fn take_kicked(&self) -> bool {
        self.kicks.swap(false, Ordering::AcqRel)
    }

    /// Whether the session must end (closed or abandoned). The session task is woken when
    /// this becomes true, if it polled [`poll_batch`](Self::poll_batch) before.
    pub(crate) fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    /// Moves whatever is queued into `out` without waiting (benches).
    #[cfg(any(test, feature = "bench"))]
    #[cfg_attr(not(feature = "bench"), allow(dead_code))]
    pub(crate) fn drain_now(&self, out: &mut VecDeque<Bytes>) {
        let mut s = self.lock();
        std::mem::swap(&mut s.queue, out);
        s.bytes = 0;
        (s.inflight_frames, s.inflight_bytes) = (0, 0);
    }

    /// Moves every queued frame into `out` (which must be empty: the writer has written the
    /// previous batch, which stops counting against the bounds): `Ready(true)`. `Ready(false)`
    /// once the session is closed and everything, its `bye` included, has been handed out.
    /// Otherwise registers the task to be woken by the next push (or close) and releases both
    /// queues' memory: an idle connection holds no queue.
    pub(crate) fn poll_batch(&self, cx: &mut Context<'_>, out: &mut VecDeque<Bytes>) -> Poll<bool> {
        // Registered before looking: a push or close after the look wakes this waker.
        self.waker.register(cx.waker());
        let mut s = self.lock();
        (s.inflight_frames, s.inflight_bytes) = (0, 0);
        if !s.queue.is_empty() {
            std::mem::swap(&mut s.queue, out);
            (s.inflight_frames, s.inflight_bytes) =
                (u32::try_from(out.len()).unwrap_or(u32::MAX), std::mem::take(&mut s.bytes));
            return Poll::Ready(true);
        }
        if s.closed.is_some() || s.abandoned {
            return Poll::Ready(false);
        }
        s.writer_waiting = true;
        if s.queue.capacity() > 0 {
            s.queue = VecDeque::new();
        }
        drop(s);
        if out.capacity() > 0 {
            *out = VecDeque::new();
        }
        Poll::Pending
    }

    /// Waits for the next batch (see [`poll_batch`](Self::poll_batch)).
    #[cfg(test)]
    async fn next_batch(&self, out: &mut VecDeque<Bytes>) -> bool {
        std::future::poll_fn(|cx| self.poll_batch(cx, out)).await
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
        assert!(o.is_ending());
        let mut out = VecDeque::new();
        assert!(o.next_batch(&mut out).await);
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with(br#"{"type":"bye","reason":"slow_consumer""#));
        out.clear();
        assert!(!o.next_batch(&mut out).await);
    }

    #[test]
    fn an_idle_writer_holds_no_queue() {
        let o = Outbox::new(100, 1 << 20);
        for _ in 0..10 {
            assert!(o.push(Bytes::from_static(b"m"), Class::Must));
        }
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = VecDeque::new();
        assert_eq!(o.poll_batch(&mut cx, &mut out), Poll::Ready(true));
        assert_eq!(out.len(), 10);
        out.clear();
        assert_eq!(o.poll_batch(&mut cx, &mut out), Poll::Pending, "nothing queued: the writer waits");
        assert_eq!((out.capacity(), o.lock().queue.capacity()), (0, 0), "and holds no memory meanwhile");
        assert!(o.push(Bytes::from_static(b"m"), Class::Must));
        assert_eq!(o.poll_batch(&mut cx, &mut out), Poll::Ready(true));
    }

    #[test]
    fn replies_count_and_the_writers_batch_counts_until_written() {
        let o = Outbox::new(4, 100);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(o.push(Bytes::from(vec![b'r'; 60]), Class::Reply));
        assert!(!o.is_full());
        assert!(o.push(Bytes::from(vec![b'r'; 60]), Class::Reply), "a reply is queued past the bytes bound");
        assert!(o.is_full(), "and the session stops reading");
        assert_eq!(o.queued(), (2, 120));
        let mut out = VecDeque::new();
        assert_eq!(o.poll_batch(&mut cx, &mut out), Poll::Ready(true));
        assert_eq!(o.queued(), (2, 120), "the writer's batch still counts");
        assert!(o.is_full());
        assert!(!o.push(Bytes::from_static(b"m"), Class::Droppable), "ephemeral dropped");
        out.clear();
        assert_eq!(o.poll_batch(&mut cx, &mut out), Poll::Pending, "written: the writer comes back");
        assert_eq!(o.queued(), (0, 0));
        assert!(!o.is_full());
        for _ in 0..3 {
            assert!(o.push(Bytes::from_static(b"e"), Class::Must));
        }
        assert!(o.push(Bytes::from_static(b"r"), Class::Reply));
        assert!(o.is_full(), "4 frames: at the frames bound");
        assert!(!o.push(Bytes::from_static(b"e"), Class::Must), "an event over the bound");
        assert_eq!(o.closed(), Some(ByeReason::SlowConsumer));
    }

    #[test]
    fn an_outbox_stays_small() {
        // With the `Arc` counts, 120 bytes: one 128-byte allocation per session, as before
        // the writer's batch was counted (memory per idle connection).
        assert!(std::mem::size_of::<Outbox>() <= 104, "{}", std::mem::size_of::<Outbox>());
    }

    #[tokio::test]
    async fn bytes_bound_and_close_order() {
        let o = Outbox::new(100, 10);
        assert!(o.push(Bytes::from_static(b"12345"), Class::Must));
        assert!(o.push(Bytes::from_static(b"12345678901234"), Class::Reply));
        assert!(o.close(ByeReason::Shutdown, [Bytes::from_static(b"err")]));
        assert!(!o.close(ByeReason::Timeout, []));
        let mut out = VecDeque::new();
        assert!(o.next_batch(&mut out).await);
        assert_eq!(out.len(), 4);
        assert_eq!(&out[2][..], b"err");
    }
}
