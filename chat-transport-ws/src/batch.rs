//! [`BatchedIo`]: the upgraded socket with a write buffer. Frames (text frames from the core,
//! pongs and close frames) are appended whole; a batch goes out in few large writes, and the
//! buffer (a `chat_core::io::WriteBuffer`, as for TCP) is freed after any flush that ended a
//! small batch, so a connection that goes quiet holds none: at the latest after its next small
//! batch, which the engine's heartbeat ping guarantees within `heartbeat_ms`.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use chat_core::io::WriteBuffer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::frame;

/// A socket with a write buffer that fills to `limit` before it is written out.
#[derive(Debug)]
pub(crate) struct BatchedIo<S> {
    inner: S,
    /// Outbound bytes not yet written to `inner`.
    out: WriteBuffer,
}

impl<S> BatchedIo<S> {
    /// Wraps `inner`, gathering up to `limit` outbound bytes before writing them.
    pub(crate) fn new(inner: S, limit: usize) -> Self {
        BatchedIo { inner, out: WriteBuffer::new(limit) }
    }

    /// Appends one whole unmasked WebSocket frame (RFC 6455 §5.2): FIN, `opcode`, the
    /// payload's length, the payload.
    pub(crate) fn feed_frame(&mut self, opcode: u8, payload: &[u8]) {
        let (header, n) = frame::header(opcode, payload.len());
        self.out.extend(&[&header[..n], payload]);
    }

    /// Whether a chunk's worth of outbound bytes waits to be written.
    pub(crate) fn is_full(&self) -> bool {
        self.out.is_full()
    }

    /// The capacity of the write buffer held now (tests).
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.out.capacity()
    }
}

impl<S: AsyncWrite + Unpin> BatchedIo<S> {
    /// Writes out everything buffered.
    pub(crate) fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.out.poll_drain(Pin::new(&mut self.inner), cx)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BatchedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.out.is_full() {
            ready!(this.out.poll_drain(Pin::new(&mut this.inner), cx))?;
        }
        if this.out.pending() == 0 && data.len() >= this.out.chunk() {
            // Larger than a whole batch: no point copying it.
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
            this.out.count_written_through(n);
            return Poll::Ready(Ok(n));
        }
        this.out.extend(&[data]);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.out.poll_drain(Pin::new(&mut this.inner), cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.out.end_batch();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.out.poll_drain(Pin::new(&mut this.inner), cx))?;
        this.out.release();
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BatchedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_batch_is_written_in_few_writes_and_small_batches_free_the_buffer() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut io = BatchedIo::new(client, 4096);
        // 100 frames of 100 bytes: gathered, written when 4 KiB wait, the rest on flush.
        for i in 0..100u8 {
            io.write_all(&[i; 100]).await.unwrap();
        }
        assert!(io.buffer_capacity() >= 4096, "large batch: the buffer is kept");
        io.flush().await.unwrap();
        assert!(io.buffer_capacity() > 0, "a large batch keeps its buffer for the next one");
        let mut got = vec![0; 100 * 100];
        server.read_exact(&mut got).await.unwrap();
        assert!(got.chunks(100).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        // A small batch: written on flush, and the buffer is released.
        io.write_all(b"ping").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.buffer_capacity(), 0);
        let mut got = [0; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn text_frames_carry_each_length_encoding() {
        // RFC 6455 §5.2: 7-bit lengths up to 125, then 126 + 16 bits, then 127 + 64 bits.
        for (len, header) in [
            (0usize, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_535, vec![0x81, 126, 0xff, 0xff]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let (client, mut server) = tokio::io::duplex(1 << 20);
            let mut io = BatchedIo::new(client, 1 << 20);
            let payload = vec![b'x'; len];
            io.feed_frame(frame::TEXT, &payload);
            io.flush().await.unwrap();
            drop(io);
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert_eq!(&got[..header.len()], &header[..], "length {len}");
            assert_eq!(&got[header.len()..], &payload[..], "length {len}");
        }
    }

    #[tokio::test]
    async fn a_stalled_peer_bounds_what_is_buffered() {
        let (client, _server) = tokio::io::duplex(1024);
        let mut io = BatchedIo::new(client, 4096);
        let written = tokio::time::timeout(std::time::Duration::from_millis(200), async {
            let mut total = 0;
            loop {
                total += io.write(&[0; 512]).await.unwrap();
                if total > 1 << 20 {
                    break;
                }
            }
        })
        .await;
        assert!(written.is_err(), "the writer blocks once the peer stops reading");
        assert!(io.buffer_capacity() <= 2 * 4096 + 1024, "{}", io.buffer_capacity());
    }
}
