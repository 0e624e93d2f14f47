//! The `chat/1` TCP framing (PROTOCOL.md §1): a 4-byte big-endian length `N`, then `N` bytes.
//!
//! [`FrameCodec`] is the tokio-util codec; `FrameReader` and `FrameWriter` put it on the two
//! halves of any byte stream (plain TCP or TLS), so the framing exists once. Only framing lives
//! here: what a frame means is the core's business. Memory is the point of most choices: an
//! oversized length is reported without reading or allocating its body, and the server's read
//! and write halves hold no buffer at all between frames, so an idle connection costs only its
//! socket.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use chat_core::io::WriteBuffer;
use chat_core::Inbound;
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::io::poll_read_buf;

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Initial (and idle) capacity of a [`FrameCodec`] user's read buffer: a `hello` or a few small
/// requests fit; a larger frame gets a buffer of its exact size once its prefix is read, which
/// is given back when the burst is over. (The server's own reader keeps no buffer when idle.)
const READ_BUFFER: usize = 256;

/// The server's reader reads into this much stack, then keeps only what arrived...
const READ_CHUNK: usize = 4096;
/// ...unless a partial frame left at least this much room in its buffer.
const DIRECT_READ: usize = 1024;

/// Buffered outbound bytes above which `poll_ready` writes to the socket before taking more.
const WRITE_CHUNK: usize = 64 * 1024;

/// After the session, how long and how much the server keeps reading (and discarding) what the
/// peer still sends, so that closing with unread data does not reset the connection and drop
/// the `bye` still in flight.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// Splits a byte stream into length-prefixed frames and writes frames with their prefix.
///
/// Decoding yields [`Inbound::Frame`] for each frame (an empty one for `N = 0`, which the core
/// answers with `bad_frame`) and [`Inbound::TooLarge`] as soon as a prefix claims more than
/// `max_frame` bytes: nothing of that frame's body is read or allocated. The stream cannot be
/// resynchronised after that, so every later `decode` is an error.
///
/// ```
/// use bytes::BytesMut;
/// use chat_core::Inbound;
/// use chat_transport_tcp::FrameCodec;
/// use tokio_util::codec::Decoder;
///
/// let mut codec = FrameCodec::new(1024);
/// let mut buf = BytesMut::from(&b"\x00\x00\x00\x02{}\x00\x00\x00\x00\x80\x00\x00\x00"[..]);
/// assert_eq!(codec.decode(&mut buf).unwrap(), Some(Inbound::Frame("{}".into())));
/// assert_eq!(codec.decode(&mut buf).unwrap(), Some(Inbound::Frame("".into())));
/// // A claimed length of 2^31 is refused at once, without waiting for (or allocating) a body.
/// assert_eq!(codec.decode(&mut buf).unwrap(), Some(Inbound::TooLarge));
/// assert!(codec.decode(&mut buf).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame: usize,
    /// The read buffer grew past [`READ_BUFFER`]: replace it by a small one once it is empty.
    grown: bool,
    /// A frame was too large: the stream is out of sync for good.
    failed: bool,
}

impl FrameCodec {
    /// A codec accepting frames of at most `max_frame` bytes (the prefix not counted).
    pub fn new(max_frame: usize) -> Self {
        FrameCodec { max_frame, grown: false, failed: false }
    }

    /// The largest frame this codec decodes.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl Decoder for FrameCodec {
    type Item = Inbound;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Inbound>> {
        if src.is_empty() && self.grown && !self.failed {
            // The burst is over: give the big buffer back, keep a small one for idle times.
            *src = BytesMut::with_capacity(READ_BUFFER);
            self.grown = false;
        }
        self.decode_frame(src)
    }
}

impl FrameCodec {
    /// One frame from the front of `src`, if it is all there; otherwise reserves room for the
    /// rest of it (at most `max_frame` + 4 bytes, decided by the prefix).
    fn decode_frame(&mut self, src: &mut BytesMut) -> io::Result<Option<Inbound>> {
        if self.failed {
            src.clear();
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the stream is out of sync after an oversized frame",
            ));
        }
        if src.len() < PREFIX_LEN {
            return Ok(None);
        }
        let n = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if n > self.max_frame {
            // Decided on the prefix alone: the body is neither awaited nor allocated.
            self.failed = true;
            src.clear();
            return Ok(Some(Inbound::TooLarge));
        }
        let total = PREFIX_LEN + n;
        if src.len() > READ_BUFFER || total > READ_BUFFER {
            self.grown = true; // (only the `Decoder` impl shrinks the buffer back)
        }
        if src.len() < total {
            // `n <= max_frame`: this reserves at most max_frame + 4 bytes, once for the frame.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(PREFIX_LEN);
        Ok(Some(Inbound::Frame(src.split_to(n).freeze())))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        encode_frame(&frame, dst)
    }
}

/// The length prefix of `frame`. Outbound frames are not bounded by `max_frame` (a `history`
/// reply may be larger), only by the prefix's range.
fn prefix(frame: &[u8]) -> io::Result<[u8; PREFIX_LEN]> {
    u32::try_from(frame.len())
        .map(u32::to_be_bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a frame is limited to 4 GiB by its prefix"))
}

/// Appends `frame` with its length prefix.
fn encode_frame(frame: &[u8], dst: &mut BytesMut) -> io::Result<()> {
    let prefix = prefix(frame)?;
    dst.reserve(PREFIX_LEN + frame.len());
    dst.extend_from_slice(&prefix);
    dst.extend_from_slice(frame);
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    /// An oversized frame was reported; the stream ended there, the peer may still be sending.
    Stopped,
    /// The peer closed, or the connection failed.
    Ended,
}

/// The read half of a connection as a stream of [`Inbound`] items, ending right after
/// [`Inbound::TooLarge`].
///
/// It holds no buffer while nothing is arriving: each read goes to the stack first and only
/// the bytes that came are kept (a partial frame gets a buffer of its exact size). Ten
/// thousand idle connections hold no read buffer at all.
pub(crate) struct FrameReader<R> {
    io: R,
    codec: FrameCodec,
    /// Bytes read and not yet decoded; empty and unallocated between frames.
    buf: BytesMut,
    state: ReadState,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, max_frame: usize) -> Self {
        FrameReader { io, codec: FrameCodec::new(max_frame), buf: BytesMut::new(), state: ReadState::Open }
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Inbound>>> {
        loop {
            match self.codec.decode_frame(&mut self.buf) {
                Ok(Some(item)) => return Poll::Ready(Some(Ok(item))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            if self.buf.is_empty() {
                // Between frames: hold nothing, not even a view that keeps the last frame's
                // allocation alive.
                self.buf = BytesMut::new();
            }
            let n = if self.buf.capacity() - self.buf.len() >= DIRECT_READ {
                // A partial frame reserved its size: read straight into it.
                ready!(poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf))?
            } else {
                let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK]; // not zeroed on every poll
                let mut rb = ReadBuf::uninit(&mut chunk);
                ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
                self.buf.extend_from_slice(rb.filled());
                rb.filled().len()
            };
            if n == 0 {
                return Poll::Ready(if self.buf.is_empty() {
                    None
                } else {
                    Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed in the middle of a frame")))
                });
            }
        }
    }

    /// Called once the session is over and its last frames were written: unless the peer has
    /// already closed, reads and discards what it still sends (bounded in time and bytes).
    /// Closing a TCP socket with unread data sends a reset, which can destroy the `bye` (and
    /// the error before it) before the peer reads them.
    pub(crate) async fn linger(&mut self) {
        if self.state == ReadState::Ended {
            return;
        }
        let io = &mut self.io;
        let mut scratch = [0u8; 1024];
        let mut left = LINGER_BYTES;
        let _ = tokio::time::timeout(LINGER_TIME, async {
            while left > 0 {
                match io.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    }
}

impl<R: AsyncRead + Unpin> Stream for FrameReader<R> {
    type Item = io::Result<Inbound>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.state != ReadState::Open {
            return Poll::Ready(None);
        }
        let item = ready!(self.poll_item(cx));
        self.state = match &item {
            Some(Ok(Inbound::TooLarge)) => ReadState::Stopped,
            Some(Ok(_)) => ReadState::Open,
            Some(Err(_)) | None => ReadState::Ended,
        };
        Poll::Ready(item)
    }
}

/// The write half of a connection as a `Sink` of whole frames.
///
/// `feed` copies the frame, after its 4-byte prefix, into a [`WriteBuffer`]; `flush` hands the
/// batch to the kernel in as few writes as possible (one each `WRITE_CHUNK` bytes while a large
/// batch is fed). One copy in user space is cheaper than letting the kernel gather two small
/// slices per frame: with `writev` over `[prefix, body]` pairs, the kernel's per-slice copy was
/// a third of the server's time in fan-out. A quiet connection holds no buffer.
pub(crate) struct FrameWriter<W> {
    io: W,
    buf: WriteBuffer,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(io: W) -> Self {
        FrameWriter { io, buf: WriteBuffer::new(WRITE_CHUNK) }
    }
}

impl<W: AsyncWrite + Unpin> Sink<Bytes> for FrameWriter<W> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_full() {
            ready!(this.buf.poll_drain(Pin::new(&mut this.io), cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> io::Result<()> {
        let prefix = prefix(&frame)?;
        self.get_mut().buf.extend(&[&prefix, &frame]);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.buf.poll_drain(Pin::new(&mut this.io), cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        this.buf.end_batch();
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use std::io::IoSlice;

    fn framed(parts: &[&[u8]]) -> BytesMut {
        let mut buf = BytesMut::new();
        for p in parts {
            encode_frame(p, &mut buf).unwrap();
        }
        buf
    }

    #[test]
    fn frames_come_out_whole_and_in_order() {
        let mut codec = FrameCodec::new(300);
        let mut buf = framed(&[b"a", b"", &[b'x'; 300]]);
        let body = buf.split_off(10); // the first frame, the empty one, 1 byte of the third's prefix
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Inbound::Frame(Bytes::from_static(b"a"))));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Inbound::Frame(Bytes::new())));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.unsplit(body);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Inbound::Frame(Bytes::from(vec![b'x'; 300]))));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn one_byte_over_the_limit_is_too_large_without_its_body() {
        let mut codec = FrameCodec::new(300);
        let mut buf = BytesMut::from(&301u32.to_be_bytes()[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Inbound::TooLarge));
        assert!(buf.is_empty());
        let mut more = framed(&[b"{}"]);
        assert!(codec.decode(&mut more).is_err());
    }

    #[test]
    fn a_huge_claim_reserves_nothing() {
        let mut codec = FrameCodec::new(65_536);
        let mut buf = BytesMut::with_capacity(16);
        buf.put_u32(u32::MAX);
        let before = buf.capacity();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Inbound::TooLarge));
        assert!(buf.capacity() <= before);
    }

    #[test]
    fn a_partial_frame_reserves_only_its_own_size() {
        let mut codec = FrameCodec::new(65_536);
        let mut buf = BytesMut::new();
        buf.put_u32(10_000);
        buf.put_slice(b"{\"a\":");
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() >= 10_004 && buf.capacity() < 2 * 10_004);
    }

    #[test]
    fn the_read_buffer_shrinks_after_a_burst() {
        let mut codec = FrameCodec::new(65_536);
        let mut buf = framed(&[&[b'x'; 20_000]]);
        assert!(matches!(codec.decode(&mut buf).unwrap(), Some(Inbound::Frame(f)) if f.len() == 20_000));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(buf.capacity(), READ_BUFFER);
    }

    #[tokio::test]
    async fn the_reader_holds_no_buffer_between_frames() {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(server, 65_536);
        client.write_all(&framed(&[b"{\"a\":1}", &[b'x'; 3000], b"{}"])).await.unwrap();
        client.write_all(&5u32.to_be_bytes()).await.unwrap(); // and the start of a fourth
        assert!(matches!(reader.next().await, Some(Ok(Inbound::Frame(f))) if &f[..] == b"{\"a\":1}"));
        assert!(matches!(reader.next().await, Some(Ok(Inbound::Frame(f))) if f.len() == 3000));
        assert!(matches!(reader.next().await, Some(Ok(Inbound::Frame(f))) if &f[..] == b"{}"));
        let waker = futures::task::noop_waker();
        assert!(reader.poll_item(&mut Context::from_waker(&waker)).is_pending(), "the fourth is incomplete");
        assert!(reader.buf.capacity() > 0, "a partial frame is kept");
        client.write_all(b"{\"b\"}").await.unwrap();
        assert!(matches!(reader.next().await, Some(Ok(Inbound::Frame(f))) if &f[..] == b"{\"b\"}"));
        assert!(reader.poll_item(&mut Context::from_waker(&waker)).is_pending());
        assert_eq!(reader.buf.capacity(), 0, "between frames, no read buffer at all");
    }

    #[tokio::test]
    async fn the_writer_coalesces_a_batch_and_frees_its_buffer() {
        use futures::SinkExt;
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let mut writer = FrameWriter::new(client);
        writer.feed(Bytes::from_static(b"{\"a\":1}")).await.unwrap();
        writer.feed(Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!(writer.buf.pending(), 2 * PREFIX_LEN + 9, "fed, not written yet");
        writer.flush().await.unwrap();
        assert_eq!((writer.buf.pending(), writer.buf.capacity()), (0, 0));
        let mut got = vec![0u8; 2 * PREFIX_LEN + 9];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..], b"\x00\x00\x00\x07{\"a\":1}\x00\x00\x00\x02{}");
    }

    /// A writer that takes at most `step` bytes per call, to exercise partial writes.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.step - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.step {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_resume_where_they_stopped() {
        use futures::SinkExt;
        let frames: Vec<Bytes> = (0..600).map(|i| Bytes::from(format!("{{\"n\":{i}}}"))).collect();
        let mut expected = Vec::new();
        for f in &frames {
            expected.extend_from_slice(&(f.len() as u32).to_be_bytes());
            expected.extend_from_slice(f);
        }
        for step in [1, 3, 5, 7, 4096] {
            let mut writer = FrameWriter::new(Trickle { out: Vec::new(), step });
            for f in &frames {
                writer.feed(f.clone()).await.unwrap();
            }
            writer.flush().await.unwrap();
            assert_eq!(writer.io.out, expected, "step {step}");
        }
    }
}
