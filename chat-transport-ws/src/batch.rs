//! [`BatchedIo`]: the socket under tungstenite. It gathers outbound bytes so that a batch of
//! frames goes out in few large writes, and it holds no write buffer while the connection is
//! quiet. On the read side it reads the socket in large chunks and hands tungstenite small
//! steps from them, so that tungstenite's own read buffer (kept for the connection's life) can
//! be small without costing a system call per step; what tungstenite has not taken yet is
//! kept only until it does.
//!
//! Why not tungstenite's own write buffer: it is a `Vec` that keeps its largest capacity for the
//! connection's life (tungstenite 0.29 never shrinks it), so a 64 KiB buffer, good for fan-out,
//! would stay 64 KiB on every connection that was once busy. Instead tungstenite gets a write
//! buffer size of 0 (each frame is handed down here as soon as it is formatted, so its buffer
//! holds one frame at most) and the gathering happens here, in a `chat_core::io::WriteBuffer`
//! (the TCP transport's too), freed after any flush that ended a small batch. A connection that
//! goes quiet has its buffer freed by its next small batch at the latest, which the engine's
//! heartbeat ping guarantees within `heartbeat_ms`.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use chat_core::io::WriteBuffer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at once (on the stack) when tungstenite asks for fewer.
const READ_CHUNK: usize = 8192;

/// A socket with a write buffer that fills to `limit` before it is written out.
#[derive(Debug)]
pub(crate) struct BatchedIo<S> {
    inner: S,
    /// Outbound bytes not yet written to `inner`.
    out: WriteBuffer,
    /// Bytes read from the socket that the reader has not taken yet start at
    /// `read_buf[read_pos]`; unallocated when there are none.
    read_buf: Vec<u8>,
    read_pos: usize,
}

impl<S> BatchedIo<S> {
    /// Wraps `inner`, gathering up to `limit` outbound bytes before writing them.
    pub(crate) fn new(inner: S, limit: usize) -> Self {
        BatchedIo { inner, out: WriteBuffer::new(limit), read_buf: Vec::new(), read_pos: 0 }
    }

    /// Appends one text message as a single unmasked WebSocket frame (RFC 6455 §5.2: FIN,
    /// opcode 1, the payload length, the payload). Only for whole frames between
    /// tungstenite's own writes, which always hand this type whole frames too.
    pub(crate) fn feed_text(&mut self, payload: &[u8]) {
        let len = payload.len();
        let mut header = [0u8; 10];
        header[0] = 0x81;
        let n = if len < 126 {
            header[1] = len as u8;
            2
        } else if let Ok(len) = u16::try_from(len) {
            header[1] = 126;
            header[2..4].copy_from_slice(&len.to_be_bytes());
            4
        } else {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
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
        let this = &mut *self;
        if this.read_pos < this.read_buf.len() {
            let n = buf.remaining().min(this.read_buf.len() - this.read_pos);
            buf.put_slice(&this.read_buf[this.read_pos..this.read_pos + n]);
            this.read_pos += n;
            if this.read_pos == this.read_buf.len() {
                this.read_buf = Vec::new();
                this.read_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_CHUNK {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK]; // not zeroed on every poll
        let mut chunk = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
        let got = chunk.filled();
        let n = buf.remaining().min(got.len());
        buf.put_slice(&got[..n]);
        if n < got.len() {
            this.read_buf = got[n..].to_vec();
        }
        Poll::Ready(Ok(()))
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
    async fn small_reads_are_served_from_one_large_read_and_nothing_is_kept_after() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut io = BatchedIo::new(server, 4096);
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        client.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        let mut step = [0u8; 100];
        while got.len() < data.len() {
            let n = io.read(&mut step).await.unwrap();
            got.extend_from_slice(&step[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(io.read_buf.capacity(), 0, "everything taken: no read buffer is held");
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
            io.feed_text(&payload);
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
