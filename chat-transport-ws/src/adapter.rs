//! The adapter between an upgraded WebSocket and its [`ConnectionHandler`] (the core's driver,
//! for chat connections): messages in become [`Incoming`] items, [`Message`]s out become
//! frames. Nothing here parses JSON.
//!
//! Reading is this crate's own (`frame.rs`): text → `Incoming::Text` (the unmasked payload, no
//! copy unless the message came in fragments), binary → `Incoming::Binary`, ping/pong →
//! `Incoming::Alive` (a ping is answered with a pong at once), a message over the handler's
//! `max_message` (the engine's `max_frame`) → `Incoming::TooLarge`, decided from a frame's
//! header before its payload is read (close 1009).
//! A text message that is not UTF-8 closes with 1007 as soon as the invalid bytes arrive (a
//! fragment, or the part of a frame read so far), a frame no client may send with 1002.
//! The read buffer is freed between frames, so a connection that once received a large
//! message does not keep a large buffer.
//!
//! Outbound frames become text messages formatted straight into the socket's write buffer
//! (`BatchedIo::feed_frame`: one copy per recipient) and are not validated again for every
//! recipient: `Engine::serve` guarantees that every frame it writes is UTF-8 (it checks bodies
//! handed back by a broker once, when it encodes them).
//!
//! With permessage-deflate negotiated (deflate.rs), a message whose first frame has RSV1 is
//! inflated once whole (within the handler's `max_message`, or it is `TooLarge`) and its text
//! checked then; outbound messages go out compressed when that makes them smaller, each
//! compressed once for all the connections that agreed on the same parameters.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use chat_core::ConnInfo;
use futures::{Sink, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::batch::BatchedIo;
use crate::connection::{ConnectionHandler, Incoming, Message};
use crate::deflate::{self, Agreed, InflateError};
use crate::frame::{
    self, Parsed, Utf8Check, CLOSE_INVALID_DATA, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, RSV1,
};

/// Not a close code: the peer closed first and the reply is already queued; only flush it.
const PEER_CLOSED: u16 = 0;

/// How long the peer may take to answer our close frame before the socket is dropped. Reading
/// until its close arrives lets the peer read everything we sent (no reset on unread data).
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// Bytes read from the socket at once, on the stack; only what arrived is kept.
const READ_CHUNK: usize = 8192;

/// One upgraded connection, shared by its inbound and outbound halves.
///
/// The halves are polled by one task, one at a time, so the lock is never contended; it
/// replaces `StreamExt::split`, whose `BiLock` would move the socket to a separate allocation.
pub(crate) struct Shared<S> {
    io: Mutex<BatchedIo<S>>,
    /// The close code the outbound half sends when the core closes it.
    close_code: AtomicU16,
    /// Our close frame was queued: the peer's close is the answer, not to be answered again.
    close_sent: AtomicBool,
    /// permessage-deflate as the upgrade negotiated it ([`Agreed::OFF`] when it did not): not
    /// an `Option`, so that it fits beside the two atomics in one word (the connection's task
    /// is rounded up to 128 bytes: 8 bytes more cost 0.13 KiB per idle connection, measured).
    deflate: Agreed,
}

impl<S> Shared<S> {
    /// The connection's shared state; `deflate` is [`Agreed::OFF`] when compression was not
    /// negotiated.
    pub(crate) fn new(io: BatchedIo<S>, deflate: Agreed) -> Self {
        let (close_code, close_sent) = (AtomicU16::new(CLOSE_NORMAL), AtomicBool::new(false));
        Shared { io: Mutex::new(io), close_code, close_sent, deflate }
    }

    /// permessage-deflate, when the upgrade negotiated it.
    fn deflate(&self) -> Option<Agreed> {
        self.deflate.is_on().then_some(self.deflate)
    }

    fn io(&self) -> MutexGuard<'_, BatchedIo<S>> {
        self.io.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs one upgraded connection to its end: `handler`'s run (the core's session, for chat
/// connections), then the close handshake.
///
/// Not an `async fn`: an `async` block keeps each captured value once, where an `async fn`
/// would keep a second copy of `shared` for the connection's life.
pub(crate) fn serve_socket<H, S>(
    handler: H,
    shared: Shared<S>,
    peer: Option<SocketAddr>,
    accepted: Option<tokio::time::Instant>,
) -> impl Future<Output = ()> + Send
where
    H: ConnectionHandler,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let conn = ConnInfo { peer, transport: "ws", accepted };
    let max = handler.max_message();
    async move {
        let mut inbound = InboundFrames::new(&shared, max);
        let mut outbound = OutboundFrames { shared: &shared, full: false, close_queued: false };
        handler.run(&mut inbound, &mut outbound, conn).await;
        if !inbound.finished && !inbound.end_next {
            // We closed on purpose (bye) and the socket is still readable: wait, briefly, for
            // the peer's close frame (it may still be sending frames before it).
            let _ = tokio::time::timeout(CLOSE_DRAIN, inbound.by_ref().for_each(|_| async {})).await;
        }
        let _ = tokio::time::timeout(CLOSE_DRAIN, futures::future::poll_fn(|cx| shared.io().poll_drain(cx))).await;
    }
}

/// The inbound half: WebSocket frames → [`Incoming`] items.
pub(crate) struct InboundFrames<'a, S> {
    shared: &'a Shared<S>,
    /// Bytes read and not yet parsed; unallocated between frames.
    buf: BytesMut,
    /// What arrived of a fragmented message in progress (empty, unallocated, when none).
    partial: BytesMut,
    /// The opcode of the message in progress (text or binary), with [`RSV1`] added when it is
    /// compressed; `CONTINUATION` (0) when none. Not an `Option<(u8, BytesMut)>` nor a separate
    /// flag: apart and packed, it shares a word with the small fields below.
    /// Every byte here is in the connection's task, whose size tokio rounds up to 128 bytes:
    /// 8 bytes more (for `utf8` and `checked`) cost 160 bytes per idle connection (measured).
    partial_opcode: u8,
    /// The text message in progress, checked as UTF-8 so far (a character split between pieces).
    utf8: Utf8Check,
    /// Bytes of the text frame at the front of `buf`, not yet whole, already checked.
    checked: usize,
    max: usize,
    /// A pong or a close reply was queued and may not be written yet.
    unflushed: bool,
    /// The stream ended (peer closed, went away, or broke the protocol): nothing more to read.
    finished: bool,
    /// The last item was `TooLarge`: the socket's read side is unusable (the oversized payload
    /// was never read), so the stream ends here.
    end_next: bool,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> InboundFrames<'a, S> {
    fn new(shared: &'a Shared<S>, max: usize) -> Self {
        InboundFrames {
            shared,
            buf: BytesMut::new(),
            partial: BytesMut::new(),
            partial_opcode: frame::CONTINUATION,
            utf8: Utf8Check::default(),
            checked: 0,
            max,
            unflushed: false,
            finished: false,
            end_next: false,
        }
    }

    /// Ends the stream with `code` as the close code to send.
    fn fail(&mut self, code: u16, why: &'static str) -> Poll<Option<io::Result<Incoming>>> {
        self.shared.close_code.store(code, Ordering::Relaxed);
        self.finished = true;
        Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, why))))
    }

    /// A whole message: text (its UTF-8 checked as its frames arrived) or binary; a compressed
    /// one is inflated first (within `max`) and its text checked then.
    fn message(&mut self, opcode: u8, compressed: bool, payload: BytesMut) -> Poll<Option<io::Result<Incoming>>> {
        let payload = if compressed {
            match deflate::inflate(&payload, self.max) {
                Ok(inflated) if opcode == frame::TEXT && std::str::from_utf8(&inflated).is_err() => {
                    return self.fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message");
                }
                Ok(inflated) => bytes::Bytes::from(inflated),
                Err(InflateError::TooLarge) => return self.too_large(),
                Err(InflateError::Invalid) => {
                    return self.fail(CLOSE_INVALID_DATA, "a compressed message that does not inflate")
                }
            }
        } else {
            payload.freeze()
        };
        let message = match opcode {
            frame::TEXT => Incoming::Text(payload),
            _ => Incoming::Binary(payload),
        };
        Poll::Ready(Some(Ok(message)))
    }

    /// A message over `max`: the last item (close 1009).
    fn too_large(&mut self) -> Poll<Option<io::Result<Incoming>>> {
        self.shared.close_code.store(CLOSE_TOO_BIG, Ordering::Relaxed);
        self.end_next = true;
        self.buf = BytesMut::new();
        (self.partial, self.partial_opcode) = (BytesMut::new(), frame::CONTINUATION);
        self.checked = 0;
        Poll::Ready(Some(Ok(Incoming::TooLarge)))
    }

    /// Checks a whole frame of a text message: what [`check_arriving_text`](Self::check_arriving_text)
    /// did not check of `payload`, and at the message's end (`fin`) that its last character is
    /// whole.
    fn check_text(&mut self, payload: &[u8], checked: usize, fin: bool) -> bool {
        self.utf8.feed(&payload[checked..]) && (!fin || self.utf8.is_complete())
    }

    /// Checks what has arrived of a text frame that is not whole yet (fail fast: a peer that
    /// sends invalid text hears 1007 before it sends the rest): the bytes since the last check,
    /// unmasked on the stack a block at a time. `false` when they are not UTF-8.
    fn check_arriving_text(&mut self) -> bool {
        let Some(head) = frame::head(&self.buf) else { return true };
        if head.compressed {
            return true; // not text until it is inflated, whole
        }
        let text = match head.opcode {
            frame::TEXT => self.partial_opcode == frame::CONTINUATION,
            frame::CONTINUATION => self.partial_opcode == frame::TEXT,
            _ => false,
        };
        if !text {
            return true;
        }
        let arrived = &self.buf[head.len.min(self.buf.len())..];
        let arrived = &arrived[..arrived.len().min(usize::try_from(head.payload).unwrap_or(usize::MAX))];
        let mut block = [0u8; 512];
        while self.checked < arrived.len() {
            let n = (arrived.len() - self.checked).min(block.len());
            for (i, byte) in block[..n].iter_mut().enumerate() {
                let at = self.checked + i;
                *byte = arrived[at] ^ head.mask[at & 3];
            }
            if !self.utf8.feed(&block[..n]) {
                return false;
            }
            self.checked += n;
        }
        true
    }

    /// Reads what the socket has into `buf`; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut io = self.shared.io();
        if self.buf.capacity() - self.buf.len() >= READ_CHUNK {
            // A large frame reserved its size: read straight into it.
            return tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut self.buf);
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK]; // not zeroed on every poll
        let mut chunk = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut chunk))?;
        self.buf.extend_from_slice(chunk.filled());
        Poll::Ready(Ok(chunk.filled().len()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for InboundFrames<'_, S> {
    type Item = io::Result<Incoming>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.unflushed {
            // A pong (or our close reply) waits in the write buffer: push it out before reading
            // more, so that a peer sending pings without reading cannot grow the buffer.
            let done = ready!(this.shared.io().poll_drain(cx));
            this.unflushed = false;
            if done.is_err() {
                this.finished = true;
            }
        }
        if this.finished || this.end_next {
            this.finished = true;
            return Poll::Ready(None);
        }
        loop {
            let so_far = this.partial.len();
            match frame::parse(&mut this.buf, this.max, so_far, this.shared.deflate().is_some()) {
                Parsed::Frame { fin, opcode, compressed, payload } => match (opcode, std::mem::take(&mut this.checked))
                {
                    (frame::TEXT | frame::BINARY, _) if this.partial_opcode != frame::CONTINUATION => {
                        return this.fail(CLOSE_PROTOCOL_ERROR, "a new message before the last one ended")
                    }
                    (frame::TEXT, checked) if !compressed && !this.check_text(&payload, checked, fin) => {
                        return this.fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
                    }
                    (frame::TEXT | frame::BINARY, _) if fin => return this.message(opcode, compressed, payload),
                    (frame::TEXT | frame::BINARY, _) => {
                        let flag = if compressed { RSV1 } else { 0 };
                        (this.partial, this.partial_opcode) = (payload, opcode | flag);
                        continue; // the next fragment may be buffered already
                    }
                    (frame::CONTINUATION, checked) => {
                        let begun = std::mem::replace(&mut this.partial_opcode, frame::CONTINUATION);
                        if begun == frame::CONTINUATION {
                            return this.fail(CLOSE_PROTOCOL_ERROR, "a continuation with no message to continue");
                        }
                        let (opcode, compressed) = (begun & !RSV1, begun & RSV1 != 0);
                        let mut message = std::mem::take(&mut this.partial);
                        if opcode == frame::TEXT && !compressed && !this.check_text(&payload, checked, fin) {
                            return this.fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message");
                        }
                        message.extend_from_slice(&payload);
                        if fin {
                            return this.message(opcode, compressed, message);
                        }
                        (this.partial, this.partial_opcode) = (message, begun);
                        continue;
                    }
                    // Nothing follows our close frame (RFC 6455 §5.5.1), not even a pong.
                    (frame::PING, _) if this.shared.close_sent.load(Ordering::Relaxed) => {
                        return Poll::Ready(Some(Ok(Incoming::Alive)));
                    }
                    (frame::PING, _) => {
                        this.shared.io().feed_frame(frame::PONG, &payload);
                        this.unflushed = true;
                        cx.waker().wake_by_ref(); // to write the pong on the next poll
                        return Poll::Ready(Some(Ok(Incoming::Alive)));
                    }
                    (frame::PONG, _) => return Poll::Ready(Some(Ok(Incoming::Alive))),
                    _ => {
                        // Close: answer with the peer's code (RFC 6455 §5.5.1), then end.
                        let code = frame::close_reply(&payload);
                        if !this.shared.close_sent.load(Ordering::Relaxed) {
                            this.shared.io().feed_frame(frame::CLOSE, &code.to_be_bytes());
                            this.unflushed = true;
                        }
                        this.shared.close_code.store(PEER_CLOSED, Ordering::Relaxed);
                        this.finished = true;
                        return Poll::Ready(None);
                    }
                },
                Parsed::Incomplete => {
                    if !this.check_arriving_text() {
                        return this.fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message");
                    }
                }
                Parsed::TooLarge => return this.too_large(),
                Parsed::Invalid(code, why) => return this.fail(code, why),
            }
            if this.buf.is_empty() {
                // Between frames: hold nothing, not even a view that keeps the last frame's
                // allocation alive.
                this.buf = BytesMut::new();
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) | Err(_) => {
                    this.finished = true;
                    return Poll::Ready(None);
                }
                Ok(_) => {}
            }
        }
    }
}

/// The outbound half: messages → frames (the core's frames are text messages); closing sends a
/// close frame.
pub(crate) struct OutboundFrames<'a, S> {
    shared: &'a Shared<S>,
    /// The write buffer holds a chunk's worth: write it before taking another frame.
    full: bool,
    close_queued: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for OutboundFrames<'_, S> {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.full {
            ready!(self.shared.io().poll_drain(cx))?;
            self.full = false;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> io::Result<()> {
        // Formatted straight into the socket's write buffer: one copy per recipient.
        // `Engine::serve` guarantees UTF-8 frames, so a text message needs no check here.
        let (opcode, payload) = match &message {
            Message::Text(text) => (frame::TEXT, text),
            Message::Binary(data) => (frame::BINARY, data),
        };
        debug_assert!(
            opcode != frame::TEXT || std::str::from_utf8(payload).is_ok(),
            "a text message that is not UTF-8"
        );
        let compressed = self.shared.deflate().and_then(|agreed| deflate::compressed(payload, agreed));
        let mut io = self.shared.io();
        match &compressed {
            Some(compressed) => io.feed_frame(opcode | RSV1, compressed),
            None => io.feed_frame(opcode, payload),
        }
        let full = io.is_full();
        drop(io);
        self.full = full; // `poll_ready` writes before the next frame: one lock per frame
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.shared.io()).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let code = self.shared.close_code.load(Ordering::Relaxed);
        if !self.close_queued && code != PEER_CLOSED {
            let reason: &[u8] = match code {
                CLOSE_INVALID_DATA => b"invalid UTF-8 in a text message",
                CLOSE_TOO_BIG => b"message over max_frame",
                CLOSE_PROTOCOL_ERROR => b"protocol error",
                _ => b"",
            };
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason);
            self.shared.io().feed_frame(frame::CLOSE, &payload);
            self.shared.close_sent.store(true, Ordering::Relaxed);
        }
        self.close_queued = true;
        // Writes our close frame, or the reply to the peer's. The TCP connection is closed
        // after the peer's close frame arrives (or a short wait), by `serve_socket`.
        Pin::new(&mut *self.shared.io()).poll_flush(cx)
    }
}
