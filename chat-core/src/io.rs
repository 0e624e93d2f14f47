//! Building blocks for transports: [`WriteBuffer`], the outbound buffer both of ours use, and
//! [`ChunkedSocket`], an in-memory socket for testing and fuzzing them.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An in-memory socket for testing a transport's reading and writing: it reads `data` in
/// chunks of the sizes in `chunks` (cycled; a 0 is one `Pending` before the next chunk; no
/// sizes: all at once), then its end, and keeps what is written to it. Every split of a frame
/// across reads is reachable this way, which is what the fuzz targets explore.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use chat_core::io::ChunkedSocket;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let mut socket = ChunkedSocket::new(b"hello", &[2, 0, 3]);
/// let mut first = [0u8; 8];
/// assert_eq!(socket.read(&mut first).await.unwrap(), 2);
/// socket.write_all(b"out").await.unwrap();
/// assert_eq!(socket.written(), b"out");
/// # }
/// ```
pub struct ChunkedSocket<'a> {
    data: &'a [u8],
    chunks: &'a [usize],
    next: usize,
    written: Arc<Mutex<Vec<u8>>>,
}

impl<'a> ChunkedSocket<'a> {
    /// A socket that reads `data` in `chunks`.
    pub fn new(data: &'a [u8], chunks: &'a [usize]) -> Self {
        ChunkedSocket { data, chunks, next: 0, written: Arc::default() }
    }

    /// What has been written to it so far (shared with clones of [`sink`](Self::sink)).
    pub fn written(&self) -> Vec<u8> {
        self.written.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A handle on the written bytes that outlives the socket (once a server took it).
    pub fn sink(&self) -> Arc<Mutex<Vec<u8>>> {
        self.written.clone()
    }
}

impl AsyncRead for ChunkedSocket<'_> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let size = if self.chunks.is_empty() { usize::MAX } else { self.chunks[self.next % self.chunks.len()] };
        self.next = self.next.wrapping_add(1);
        if size == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = size.min(buf.remaining()).min(self.data.len());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ChunkedSocket<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.written.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The first allocation of a batch's buffer; it doubles as the batch grows.
const INITIAL: usize = 1024;

/// An outbound byte buffer that turns a batch of frames into few large writes and holds no
/// memory while the connection is quiet.
///
/// A transport appends each frame's bytes ([`extend`](Self::extend)), writes once `chunk`
/// bytes wait ([`is_full`](Self::is_full), [`poll_drain`](Self::poll_drain)) and at the end of
/// the batch, then calls [`end_batch`](Self::end_batch): after a small batch (under a quarter
/// of `chunk`) the buffer is freed, after a large one it is kept for the next, likely large,
/// batch. One copy in user space is cheaper than letting the kernel gather many small slices
/// (measured for TCP fan-out: 3.6 M deliveries/s against 2.8 M with `writev` over
/// `[prefix, body]` pairs).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// use chat_core::io::WriteBuffer;
/// use std::pin::Pin;
/// let mut socket: Vec<u8> = Vec::new(); // any AsyncWrite
/// let mut buf = WriteBuffer::new(64 * 1024);
/// buf.extend(&[b"\x00\x00\x00\x02", b"{}"]);
/// std::future::poll_fn(|cx| buf.poll_drain(Pin::new(&mut socket), cx)).await?;
/// buf.end_batch();
/// assert_eq!(socket, b"\x00\x00\x00\x02{}");
/// assert_eq!(buf.capacity(), 0, "a small batch: the buffer is released");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct WriteBuffer {
    /// Bytes not yet written start at `buf[written]`.
    buf: Vec<u8>,
    written: usize,
    /// Bytes appended since the last `end_batch`.
    batch: usize,
    chunk: usize,
}

impl WriteBuffer {
    /// A buffer written out each time `chunk` bytes wait.
    pub fn new(chunk: usize) -> Self {
        WriteBuffer { buf: Vec::new(), written: 0, batch: 0, chunk: chunk.max(1) }
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Whether a chunk's worth waits: write before appending more.
    pub fn is_full(&self) -> bool {
        self.pending() >= self.chunk
    }

    /// Bytes per write while a batch is appended.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// The capacity held now.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Appends `parts`, one after the other.
    pub fn extend(&mut self, parts: &[&[u8]]) {
        if self.written > 0 {
            // A partial write left a tail (the peer reads slowly): move it to the front.
            self.buf.drain(..self.written);
            self.written = 0;
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.buf.capacity() == 0 {
            self.buf.reserve(len.max(INITIAL));
        }
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        self.batch += len;
    }

    /// Counts bytes written around the buffer (straight to the socket) into the batch.
    pub fn count_written_through(&mut self, n: usize) {
        self.batch += n;
    }

    /// Writes everything waiting to `io`.
    pub fn poll_drain<W: AsyncWrite + ?Sized>(
        &mut self,
        mut io: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(io.as_mut().poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// The batch is written: frees the buffer if it was a small one (see the type's docs).
    pub fn end_batch(&mut self) {
        if self.batch < self.chunk / 4 && self.pending() == 0 {
            self.buf = Vec::new();
        }
        self.batch = 0;
    }

    /// Frees the buffer (the connection is closing); anything not written is dropped.
    pub fn release(&mut self) {
        self.buf = Vec::new();
        self.written = 0;
        self.batch = 0;
    }
}
