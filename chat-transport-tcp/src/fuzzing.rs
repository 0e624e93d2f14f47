//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`; not public API).
//!
//! The server reads frames with `FrameReader`, which is crate-private: [`read_frames`] runs it
//! over an in-memory socket ([`ChunkedSocket`]) that hands its bytes over in chunks of the
//! fuzzer's choosing, so that every split of a prefix or a body across reads is reachable.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use chat_core::io::ChunkedSocket;
use chat_core::Inbound;
use futures::Stream;

use crate::codec::FrameReader;

/// Everything the server's frame reader yields for `data` read in `chunks`, with a limit of
/// `max_frame`: the items up to the stream's end, and the error that ended it, if any.
pub fn read_frames(data: &[u8], chunks: &[usize], max_frame: usize) -> (Vec<Inbound>, Option<io::ErrorKind>) {
    let mut reader = FrameReader::new(ChunkedSocket::new(data, chunks), max_frame);
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
