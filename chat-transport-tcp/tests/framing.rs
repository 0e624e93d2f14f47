//! The TCP framing against hostile and broken peers: oversized length prefixes, frames one
//! byte over the limit, empty frames, frames split across writes, and many peers vanishing
//! in the middle of a frame.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chat_core::client::Event;
use chat_core::hooks::{DisconnectReason, SessionInfo};
use chat_core::Engine;
use chat_transport_tcp::connect;
use common::{serve, server, within, Raw};
use serde_json::json;
use tokio::sync::mpsc;

#[tokio::test]
async fn a_claimed_length_of_2_pow_31_is_refused_at_once() {
    let (_engine, addr) = server().await;
    // Before hello: frame_too_large comes first of all errors.
    let mut raw = Raw::connect(addr).await;
    raw.write(&(1u32 << 31).to_be_bytes()).await;
    let answered = tokio::time::timeout(Duration::from_secs(1), raw.expect_fatal("frame_too_large", "protocol_error"));
    answered.await.expect("answered promptly, without waiting for the body");

    // After hello, the same; and u32::MAX too.
    for claim in [1u32 << 31, u32::MAX] {
        let mut raw = Raw::hello(addr, "alice").await;
        raw.write(&claim.to_be_bytes()).await;
        raw.expect_fatal("frame_too_large", "protocol_error").await;
    }
}

#[tokio::test]
async fn one_byte_over_max_frame_is_too_large() {
    let (engine, addr) = server().await;
    let max = engine.config().max_frame;
    let mut raw = Raw::hello(addr, "alice").await;
    // A frame of exactly max_frame bytes is fine (valid JSON padded with spaces).
    let ping = br#"{"type":"ping","id":7}"#;
    let mut exact = ping.to_vec();
    exact.resize(max, b' ');
    raw.send(&exact).await;
    assert_eq!(raw.recv().await, json!({"type": "pong", "id": 7}));
    // One more byte is fatal, body sent or not.
    exact.push(b' ');
    raw.send(&exact).await;
    raw.expect_fatal("frame_too_large", "protocol_error").await;
}

#[tokio::test]
async fn frames_may_arrive_in_pieces_and_several_per_write() {
    let (_engine, addr) = server().await;
    let mut raw = Raw::connect(addr).await;
    let hello = br#"{"type":"hello","id":1,"protocol":1,"user":"alice"}"#;
    let mut bytes = (hello.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(hello);
    // One byte per write, prefix included.
    for b in &bytes {
        raw.write(&[*b]).await;
    }
    assert_eq!(raw.recv().await["type"], "welcome");
    // Three frames (one empty) in a single write.
    let mut batch = Vec::new();
    for frame in [&br#"{"type":"ping","id":2}"#[..], b"", br#"{"type":"ping","id":3}"#] {
        batch.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        batch.extend_from_slice(frame);
    }
    raw.write(&batch).await;
    assert_eq!(raw.recv().await, json!({"type": "pong", "id": 2}));
    raw.expect_error("bad_frame").await;
    assert_eq!(raw.recv().await, json!({"type": "pong", "id": 3}));
}

/// A hook reporting every disconnect on a channel, so the test can await them.
struct CountDisconnects(mpsc::UnboundedSender<DisconnectReason>);

#[async_trait::async_trait]
impl chat_core::Hooks for CountDisconnects {
    async fn on_disconnect(&self, _session: &SessionInfo, reason: DisconnectReason) {
        let _ = self.0.send(reason);
    }
}

#[tokio::test]
async fn peers_dropping_mid_frame_do_not_disturb_others() {
    let (tx, mut disconnects) = mpsc::unbounded_channel();
    let engine = Engine::builder().hooks(CountDisconnects(tx)).build().await.expect("engine");
    let addr = serve(&engine).await;
    let engine = Arc::new(engine);

    // 200 peers: half vanish in the middle of their hello, half in the middle of a frame
    // after it.
    let drops = (0..200).map(|i| async move {
        let mut raw = if i % 2 == 0 { Raw::hello(addr, &format!("u{i}")).await } else { Raw::connect(addr).await };
        let mut partial = 100u32.to_be_bytes().to_vec();
        partial.extend_from_slice(br#"{"type":"join","id":2,"ro"#);
        raw.write(&partial).await;
        drop(raw);
    });
    within("200 abrupt drops", futures::future::join_all(drops)).await;
    for _ in 0..100 {
        let reason = within("a disconnect", disconnects.recv()).await.expect("hook alive");
        assert_eq!(reason, DisconnectReason::PeerGone);
    }
    assert_eq!(engine.session_count(), 0);

    // The server still serves.
    let alice = within("welcome", connect(addr, Some("alice"), None)).await.expect("alice");
    let mut bob = within("welcome", connect(addr, Some("bob"), None)).await.expect("bob");
    within("join", alice.join("lobby", None)).await.expect("joined");
    within("join", bob.join("lobby", None)).await.expect("joined");
    assert_eq!(within("send", alice.send("lobby", json!("still here"))).await.expect("sent"), Some(1));
    let message = loop {
        if let Event::Message(m) = within("the message", bob.next_event()).await.expect("event") {
            break m;
        }
    };
    assert_eq!((message.from.as_str(), &message.body), ("alice", &json!("still here")));
}
