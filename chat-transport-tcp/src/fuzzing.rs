//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`; not public API).
//!
//! The server reads frames with `FrameReader`, which is crate-private: [`read_frames`] runs it
//! over an in-memory stream that hands its bytes over in chunks of the fuzzer's choosing, so
//! that every split of a prefix or a body across reads is reachable.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use chat_core::Inbound;
use futures::Stream;
use tokio::io::{AsyncRead, ReadBuf};

use crate::codec::FrameReader;

/// A reader that returns `data` in chunks of the sizes in `chunks` (cycled; 0 is one
/// `Pending` before the next chunk), then its end.
struct Chunked<'a> {
    data: &'a [u8],
    chunks: &'a [usize],
    next: usize,
}

impl AsyncRead for Chunked<'_> {
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

/// Everything the server's frame reader yields for `data` read in `chunks`, with a limit of
/// `max_frame`: the items up to the stream's end, and the error that ended it, if any.
pub fn read_frames(data: &[u8], chunks: &[usize], max_frame: usize) -> (Vec<Inbound>, Option<io::ErrorKind>) {
    let mut reader = FrameReader::new(Chunked { data, chunks, next: 0 }, max_frame);
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut items = Vec::new();
    let mut pending = 0usize;
    loop {
        match Pin::new(&mut reader).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(item))) => items.push(item),
            Poll::Ready(Some(Err(e))) => {
                assert!(matches!(Pin::new(&mut reader).poll_next(&mut cx), Poll::Ready(None)), "ends after an error");
                return (items, Some(e.kind()));
            }
            Poll::Ready(None) => return (items, None),
            Poll::Pending => {
                pending += 1;
                assert!(pending <= data.len() + chunks.len() * 2 + 16, "the reader made no progress");
            }
        }
    }
}
