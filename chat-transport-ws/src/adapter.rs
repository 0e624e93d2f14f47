//! The adapter between an upgraded WebSocket and the core's driver: messages in become
//! [`Inbound`] items, frames out become text messages. Nothing here parses JSON.
//!
//! Text → `Inbound::Frame` (zero-copy: the message's buffer is the frame), binary →
//! `Inbound::Binary`, ping/pong → `Inbound::Alive`, a message over `max_frame` (tungstenite's
//! capacity error, raised from the frame header before the payload is read) →
//! `Inbound::TooLarge`. Invalid UTF-8 in a text message ends the connection with close code
//! 1007; tungstenite reports it as an error but does not close, so the close code is handed to
//! the outbound half, which sends it when the core closes the sink.
//!
//! Outbound frames become text messages formatted straight into the socket's write buffer
//! (`BatchedIo::feed_text`: one copy per recipient, where tungstenite's own path would make two)
//! and are not validated again for every recipient: `Engine::serve` guarantees that every frame
//! it writes is UTF-8 (it checks bodies handed back by a broker once, when it encodes them).
//! Control frames (pongs, close) still go through tungstenite, which hands the socket whole
//! frames, so the two never interleave within a frame.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use chat_core::{ConnInfo, Engine, Inbound};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::batch::BatchedIo;

/// A server-side WebSocket over a connection `S`, with the transport's write batching.
pub(crate) type Socket<S> = WebSocketStream<BatchedIo<S>>;

/// Normal closure.
const CLOSE_NORMAL: u16 = 1000;
/// A text message that is not UTF-8 (RFC 6455 §7.4.1).
const CLOSE_INVALID_DATA: u16 = 1007;
/// A message over `max_frame`.
const CLOSE_TOO_BIG: u16 = 1009;
/// Not a close code: the peer closed first, tungstenite queued the reply; only flush it.
const PEER_CLOSED: u16 = 0;

/// How long the peer may take to answer our close frame before the socket is dropped. Reading
/// until its close arrives lets the peer read everything we sent (no reset on unread data).
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// One upgraded connection, shared by its inbound and outbound halves.
///
/// The halves are polled by one task, one at a time, so the lock is never contended; it
/// replaces `StreamExt::split`, whose `BiLock` would move the socket to a separate allocation.
pub(crate) struct Shared<S> {
    socket: Mutex<Socket<S>>,
    /// The close code the outbound half sends when the core closes it.
    close_code: AtomicU16,
}

impl<S> Shared<S> {
    pub(crate) fn new(socket: Socket<S>) -> Self {
        Shared { socket: Mutex::new(socket), close_code: AtomicU16::new(CLOSE_NORMAL) }
    }

    fn socket(&self) -> MutexGuard<'_, Socket<S>> {
        self.socket.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs one upgraded connection to its end: the core's session, then the close handshake.
///
/// Not an `async fn`: an `async` block keeps each captured value once, where an `async fn`
/// would keep a second copy of `shared` (the whole socket) for the connection's life.
pub(crate) fn serve_socket<S>(
    engine: Engine,
    shared: Shared<S>,
    peer: Option<SocketAddr>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut shared = shared;
    let conn = ConnInfo { peer, transport: "ws" };
    async move {
        let mut inbound = InboundFrames { shared: &shared, finished: false, end_next: false };
        let mut outbound = OutboundFrames { shared: &shared, full: false, close_queued: false };
        engine.serve(&mut inbound, &mut outbound, conn).await;
        let wait_for_close = !inbound.finished && !inbound.end_next;
        let socket = shared.socket.get_mut().unwrap_or_else(PoisonError::into_inner);
        // After answering the peer's close, tungstenite reports the connection closed without
        // flushing the socket: the reply may still be in `BatchedIo`.
        let _ = tokio::time::timeout(CLOSE_DRAIN, socket.get_mut().flush()).await;
        if wait_for_close {
            // We closed on purpose (bye) and the socket is still readable: wait, briefly, for
            // the peer's close frame.
            let drain = async { while let Some(Ok(_)) = socket.next().await {} };
            let _ = tokio::time::timeout(CLOSE_DRAIN, drain).await;
        }
    }
}

/// What a WebSocket read error means for the connection.
fn close_code_for(e: &tungstenite::Error) -> Option<u16> {
    match e {
        tungstenite::Error::Utf8(_) => Some(CLOSE_INVALID_DATA),
        tungstenite::Error::Capacity(_) => Some(CLOSE_TOO_BIG),
        _ => None,
    }
}

/// The inbound half: WebSocket messages → [`Inbound`] items.
pub(crate) struct InboundFrames<'a, S> {
    shared: &'a Shared<S>,
    /// The stream ended (peer closed, went away, or broke the protocol): nothing more to read.
    finished: bool,
    /// The last item was `TooLarge`: the socket's read side is unusable (the oversized payload
    /// was never read), so the stream ends here.
    end_next: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for InboundFrames<'_, S> {
    type Item = Result<Inbound, tungstenite::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished || this.end_next {
            this.finished = true;
            return Poll::Ready(None);
        }
        let item = match ready!(this.shared.socket().poll_next_unpin(cx)) {
            Some(Ok(Message::Text(text))) => Ok(Inbound::Frame(Bytes::from(text))),
            Some(Ok(Message::Binary(_))) => Ok(Inbound::Binary),
            // tungstenite queued the pong; it goes out on the next read or write of this socket.
            // (tungstenite never yields raw frames when reading.)
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(Inbound::Alive),
            // The peer closes: tungstenite queued the reply, which the sink's close flushes.
            Some(Ok(Message::Close(_))) => {
                this.shared.close_code.store(PEER_CLOSED, Ordering::Relaxed);
                this.finished = true;
                return Poll::Ready(None);
            }
            None => {
                this.finished = true;
                return Poll::Ready(None);
            }
            Some(Err(e)) => match close_code_for(&e) {
                Some(CLOSE_TOO_BIG) => {
                    this.shared.close_code.store(CLOSE_TOO_BIG, Ordering::Relaxed);
                    this.end_next = true;
                    Ok(Inbound::TooLarge)
                }
                code => {
                    if let Some(code) = code {
                        this.shared.close_code.store(code, Ordering::Relaxed);
                    }
                    this.finished = true;
                    Err(e)
                }
            },
        };
        Poll::Ready(Some(item))
    }
}

/// The outbound half: the core's frames → text messages; closing sends a close frame.
pub(crate) struct OutboundFrames<'a, S> {
    shared: &'a Shared<S>,
    /// The write buffer holds a chunk's worth: write it before taking another frame.
    full: bool,
    close_queued: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Bytes> for OutboundFrames<'_, S> {
    type Error = tungstenite::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.full {
            ready!(self.shared.socket().get_mut().poll_drain(cx))?;
            self.full = false;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Bytes) -> Result<(), Self::Error> {
        // The frame is formatted straight into the socket's write buffer, not through
        // tungstenite (which would copy it into its own buffer first): one copy per recipient.
        // `Engine::serve` guarantees UTF-8 frames, so a text message needs no check here.
        debug_assert!(std::str::from_utf8(&frame).is_ok(), "chat-core wrote a frame that is not UTF-8");
        let mut socket = self.shared.socket();
        let io = socket.get_mut();
        io.feed_text(&frame);
        let full = io.is_full();
        drop(socket);
        self.full = full; // `poll_ready` writes before the next frame: one lock per frame
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.shared.socket().poll_flush_unpin(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let code = self.shared.close_code.load(Ordering::Relaxed);
        let mut socket = self.shared.socket();
        if !self.close_queued && code != PEER_CLOSED {
            let reason = match code {
                CLOSE_INVALID_DATA => "invalid UTF-8 in a text message",
                CLOSE_TOO_BIG => "message over max_frame",
                _ => "",
            };
            let close = Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: Utf8Bytes::from_static(reason),
            }));
            // A socket that already failed cannot take it; closing below then ends quickly.
            if ready!(socket.poll_ready_unpin(cx)).is_ok() {
                let _ = socket.start_send_unpin(close);
            }
        }
        drop(socket);
        self.close_queued = true;
        // Flushes our close frame, or the reply tungstenite queued to the peer's.
        self.shared.socket().poll_close_unpin(cx)
    }
}
