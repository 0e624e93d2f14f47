//! A whole session: arbitrary frames into `Engine::serve` (a `MemoryBroker` engine, built once
//! per process with small limits) over an in-memory connection. No panic; every frame the
//! server writes is one JSON object of a known type with its fields, a fatal error is followed
//! by `bye` and nothing follows `bye`; once the connection has ended the engine holds nothing
//! for it (`Engine::stats`: connections, sessions, rooms, queued frames and bytes all 0).
//!
//! Input: frames separated by the byte 0xFF (which no UTF-8 text holds). A piece that starts
//! with 0xF8 is a binary message, 0xF9 a frame over `max_frame`, 0xFA a transport ping, 0xFB a
//! pause (the connection has nothing to read for a moment, so the engine's deliveries and
//! writes run); anything else is one frame's bytes.

#![no_main]

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use chat_core::{ConnInfo, Inbound};
use futures::Stream;
use libfuzzer_sys::fuzz_target;

/// The peer's side: items in order, `None` a pause, then the end of the connection.
struct Peer {
    items: std::vec::IntoIter<Option<Inbound>>,
}

impl Stream for Peer {
    type Item = Result<Inbound, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.items.next() {
            Some(Some(item)) => Poll::Ready(Some(Ok(item))),
            Some(None) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            None => Poll::Ready(None),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let items: Vec<Option<Inbound>> = data
        .split(|&b| b == 0xFF)
        .map(|piece| match piece.first() {
            Some(0xF8) => Some(Inbound::Binary),
            Some(0xF9) => Some(Inbound::TooLarge),
            Some(0xFA) => Some(Inbound::Alive),
            Some(0xFB) => None,
            _ => Some(Inbound::Frame(Bytes::copy_from_slice(piece))),
        })
        .collect();
    let engine = chat_fuzz::engine();
    let mut out: Vec<Bytes> = Vec::new();
    chat_fuzz::runtime().block_on(async {
        let peer = Peer { items: items.into_iter() };
        engine.serve(peer, &mut out, ConnInfo::default()).await;
    });
    chat_fuzz::check_session(out.iter().map(|f| &f[..]));
    chat_fuzz::assert_idle(engine);
});
