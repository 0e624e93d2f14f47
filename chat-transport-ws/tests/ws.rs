//! The WebSocket transport's own behaviour over loopback sockets: RFC 6455 duties (1007 on bad
//! UTF-8, pongs, subprotocol), the Origin allow-list, robustness against abrupt disconnects,
//! graceful shutdown, ordering across clients, host routes and TLS.

mod common;

use chat_core::client::{Bye, ClientError, Event, HistoryQuery};
use chat_core::hooks::{DisconnectReason, Hooks, SessionInfo};
use chat_core::Engine;
use chat_transport_ws::{connect, WsOptions, WsServer};
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

#[tokio::test]
async fn invalid_utf8_text_message_closes_with_1007() {
    let engine = engine().await;
    let addr = serve(&engine).await;
    for hello_first in [false, true] {
        let mut tcp = if hello_first {
            raw_tcp_hello(addr, "alice").await
        } else {
            let (tcp, head) = handshake(addr, "").await;
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            tcp
        };
        // A text message whose payload is not UTF-8 (a lone continuation byte and 0xff).
        tcp.write_all(&masked_frame(0x1, b"{\"type\":\"ping\x80\xff\"}")).await.unwrap();
        let (opcode, payload) = read_frame(&mut tcp).await.expect("a close frame");
        assert_eq!(opcode, 0x8, "close");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1007);
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn subprotocol_is_selected_only_when_offered() {
    let engine = engine().await;
    let addr = serve(&engine).await;
    let cases = [
        ("Sec-WebSocket-Protocol: chat.v1\r\n", Some("chat.v1")),
        ("Sec-WebSocket-Protocol: other, chat.v1\r\n", Some("chat.v1")),
        ("Sec-WebSocket-Protocol: other\r\n", None),
        ("", None),
    ];
    for (offer, selected) in cases {
        let (_tcp, head) = handshake(addr, offer).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let got = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-protocol")))
            .map(|(_, v)| v.trim().to_owned());
        assert_eq!(got.as_deref(), selected, "offer {offer:?}: {head}");
    }
    // A client offering nothing is served all the same.
    let (mut ws, response) = within(tokio_tungstenite::connect_async(url(addr))).await.unwrap();
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    send_text(&mut ws, r#"{"type":"hello","id":1,"protocol":1,"user":"bob"}"#).await;
    assert_eq!(next_json(&mut ws).await.unwrap()["type"], "welcome");
    engine.shutdown().await;
}

#[tokio::test]
async fn websocket_ping_is_answered_with_pong() {
    let engine = engine().await;
    let addr = serve(&engine).await;
    // Before hello the core has nothing to send: the pong must go out anyway.
    let mut ws = raw(addr).await;
    within(ws.send(Message::Ping(b"early".to_vec().into()))).await.unwrap();
    let pong = within(ws.next()).await.expect("open").expect("ok");
    assert_eq!(pong, Message::Pong(b"early".to_vec().into()));
    // And after hello, between frames.
    let mut ws = raw_hello(addr, "alice").await;
    within(ws.send(Message::Ping(b"later".to_vec().into()))).await.unwrap();
    let pong = within(ws.next()).await.expect("open").expect("ok");
    assert_eq!(pong, Message::Pong(b"later".to_vec().into()));
    engine.shutdown().await;
}

#[tokio::test]
async fn origin_allow_list_refuses_foreign_origins() {
    let engine = engine().await;
    let options = WsOptions::default().allowed_origins(["https://chat.example"]);
    let addr = serve_with(&engine, options).await;
    let (_tcp, head) = handshake(addr, "Origin: https://evil.example\r\n").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let (_tcp, head) = handshake(addr, "Origin: https://chat.example\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_tcp, head) = handshake(addr, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "no Origin: not a browser, accepted: {head}");
    // The client surfaces a refused upgrade as its HTTP status (it sends no Origin: a wrong
    // path is what it can be refused for).
    let refused = within(connect(&format!("ws://{addr}/elsewhere"), Some("alice"), None)).await.unwrap_err();
    assert_eq!(refused, ClientError::Rejected(404), "{refused}");
    engine.shutdown().await;
}

/// Reports every disconnect.
struct Disconnects(mpsc::UnboundedSender<DisconnectReason>);

#[async_trait::async_trait]
impl Hooks for Disconnects {
    async fn on_disconnect(&self, _: &SessionInfo, reason: DisconnectReason) {
        let _ = self.0.send(reason);
    }
}

#[tokio::test]
async fn connections_dropped_mid_frame_do_not_disturb_others() {
    let (tx, mut disconnects) = mpsc::unbounded_channel();
    let engine = Engine::builder().hooks(Disconnects(tx)).build().await.unwrap();
    let addr = serve(&engine).await;
    let mut watcher = connect(&url(addr), Some("watcher"), None).await.unwrap();
    watcher.join("lobby", None).await.unwrap();

    const N: usize = 200;
    let mut dropped = Vec::with_capacity(N);
    for i in 0..N {
        let mut ws = raw_hello(addr, &format!("u{i}")).await;
        send_text(&mut ws, r#"{"type":"join","room":"lobby"}"#).await;
        dropped.push(ws);
    }
    let arrival = next_where(&mut watcher, |e| match e {
        Event::MemberJoined(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(arrival.user, "watcher");
    for ws in &mut dropped {
        let MaybeTlsStream::Plain(tcp) = ws.get_mut() else { unreachable!("plain") };
        // A masked text frame announcing 100 bytes, of which only 10 ever arrive.
        let frame = masked_frame(0x1, &[b' '; 100]);
        tcp.write_all(&frame[..16]).await.unwrap();
    }
    drop(dropped);
    for _ in 0..N {
        let reason = within(disconnects.recv()).await.expect("hook");
        assert_eq!(reason, DisconnectReason::PeerGone);
    }
    // Everyone else is still served.
    assert_eq!(watcher.send("lobby", json!("still here")).await.unwrap(), Some(1));
    let message = next_message(&mut watcher).await;
    assert_eq!(message.body, "still here");
    let late = connect(&url(addr), Some("late"), None).await.unwrap();
    late.join("lobby", None).await.unwrap();
    assert_eq!(engine.session_count(), 2);
    engine.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_sends_bye_and_closes() {
    let engine = engine().await;
    let server = WsServer::bind("127.0.0.1:0", engine.clone(), WsOptions::default()).await.unwrap();
    let addr = server.local_addr();
    let running = tokio::spawn(server.run());
    let mut alice = connect(&url(addr), Some("alice"), None).await.unwrap();
    let mut bob = connect(&url(addr), Some("bob"), None).await.unwrap();
    let mut raw = raw_hello(addr, "carol").await;

    within(engine.shutdown()).await;
    for client in [&mut alice, &mut bob] {
        let bye = next_bye(client).await;
        assert_eq!(bye, Bye { reason: "shutdown".into(), reconnect: true });
        assert_eq!(within(client.next_event()).await, Err(ClientError::Closed), "closed after bye");
    }
    let (texts, close) = until_close(&mut raw).await;
    assert_eq!(texts, [json!({"type":"bye","reason":"shutdown","reconnect":true})]);
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1000));
    within(running).await.unwrap().unwrap();
    assert!(connect(&url(addr), Some("dave"), None).await.is_err(), "no longer accepting");
}

/// `EACH` sends from `client`, all in flight at once.
async fn sends(
    client: &chat_core::client::Client,
    name: &str,
) -> Result<Vec<Option<u64>>, chat_core::client::ClientError> {
    futures::future::try_join_all((0..EACH).map(|i| client.send("room", json!(format!("{name}{i}"))))).await
}

const EACH: usize = 25;

#[tokio::test]
async fn two_clients_see_one_order() {
    let engine = engine().await;
    let addr = serve(&engine).await;
    let mut alice = connect(&url(addr), Some("alice"), None).await.unwrap();
    let mut bob = connect(&url(addr), Some("bob"), None).await.unwrap();
    alice.join("room", None).await.unwrap();
    bob.join("room", None).await.unwrap();
    let (a, b) = within(futures::future::try_join(sends(&alice, "a"), sends(&bob, "b"))).await.unwrap();
    let a: Vec<u64> = a.into_iter().map(Option::unwrap).collect();
    assert!(a.windows(2).all(|w| w[0] < w[1]), "one connection's sends are ordered: {a:?}");
    assert_eq!(a.len() + b.len(), 2 * EACH);
    let mut seen = Vec::new();
    for client in [&mut alice, &mut bob] {
        let mut messages = Vec::new();
        while messages.len() < 2 * EACH {
            let m = next_message(client).await;
            messages.push((m.seq.unwrap(), m.from, m.body));
        }
        seen.push(messages);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].iter().map(|m| m.0).collect::<Vec<_>>(), (1..=2 * EACH as u64).collect::<Vec<_>>());
    engine.shutdown().await;
}

#[tokio::test]
async fn host_routes_are_served_beside_the_endpoint() {
    let engine = engine().await;
    let page = axum::Router::new().route("/", axum::routing::get(|| async { "<h1>chat</h1>" }));
    let server = WsServer::bind("127.0.0.1:0", engine.clone(), WsOptions::default()).await.unwrap().with_routes(page);
    let addr = server.local_addr();
    tokio::spawn(server.run());
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    within(tcp.read_to_string(&mut response)).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("<h1>chat</h1>"), "{response}");
    let (_tcp, head) = handshake(addr, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    engine.shutdown().await;
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_round_trip() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.key_pair.serialize_pem());
    let engine = engine().await;
    let server = WsServer::bind("127.0.0.1:0", engine.clone(), WsOptions::default())
        .await
        .unwrap()
        .with_tls_pem(cert_pem.as_bytes(), key_pem.as_bytes())
        .unwrap();
    let port = server.local_addr().port();
    tokio::spawn(server.run());
    let roots = chat_transport_ws::tls::client_config(cert_pem.as_bytes()).unwrap();
    let url = format!("wss://localhost:{port}/ws");
    let mut alice = within(chat_transport_ws::connect_tls(&url, Some("alice"), None, roots.clone())).await.unwrap();
    let bob = within(chat_transport_ws::connect_tls(&url, Some("bob"), None, roots)).await.unwrap();
    alice.join("secure", None).await.unwrap();
    bob.join("secure", None).await.unwrap();
    assert_eq!(bob.send("secure", json!({"text": "over TLS"})).await.unwrap(), Some(1));
    let message = next_message(&mut alice).await;
    assert_eq!((message.from.as_str(), &message.body), ("bob", &json!({"text": "over TLS"})));
    // A plain client cannot talk to the TLS port.
    assert!(connect(&format!("ws://127.0.0.1:{port}/ws"), Some("eve"), None).await.is_err());
    engine.shutdown().await;
}

#[tokio::test]
async fn close_handshake_both_ways() {
    let engine = engine().await;
    let addr = serve(&engine).await;
    // The peer closes: the server answers with its close frame.
    let mut ws = raw_hello(addr, "alice").await;
    within(ws.close(None)).await.unwrap();
    let reply = within(ws.next()).await;
    assert!(matches!(reply, Some(Ok(Message::Close(_)))), "{reply:?}");
    // The server closes (kick): `bye kicked`, then a normal close frame.
    let mut ws = raw_hello(addr, "bob").await;
    assert_eq!(engine.kick("bob"), 1);
    let (texts, close) = until_close(&mut ws).await;
    assert_eq!(texts, [json!({"type":"bye","reason":"kicked","reconnect":false})]);
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1000));
    engine.shutdown().await;
}

/// Outbound text frames are formatted by this crate (not tungstenite): a client library must
/// read every length encoding, including a history page over 64 KiB (the 64-bit form).
#[tokio::test]
async fn large_and_small_frames_reach_a_standard_client() {
    let engine = engine().await;
    let addr = serve(&engine).await;
    let client = connect(&url(addr), Some("alice"), None).await.expect("connect");
    client.join("big", None).await.expect("join");
    let body = "y".repeat(15_000);
    for _ in 0..5 {
        client.send("big", json!(body)).await.expect("send");
    }
    let page = client.history("big", HistoryQuery::latest(100)).await.expect("history");
    assert_eq!(page.messages.len(), 5);
    assert!(page.messages.iter().all(|m| m.body == json!(body)));
    let size: usize = page.messages.iter().map(|m| m.body.to_string().len()).sum();
    assert!(size > 65_536, "the page needs the 64-bit length form");
    engine.shutdown().await;
}

/// A message in fragments, with a ping between them (RFC 6455 §5.4: control frames may be
/// interleaved), is one request; a continuation with nothing to continue, a frame with a
/// reserved bit and an unmasked frame each close the connection with 1002.
#[tokio::test]
async fn fragments_and_interleaved_pings_and_protocol_errors() {
    use tokio::io::AsyncWriteExt;
    let engine = engine().await;
    let addr = serve(&engine).await;
    let mut tcp = raw_tcp_hello(addr, "alice").await;
    let not_last = |opcode: u8, payload: &[u8]| {
        let mut frame = masked_frame(opcode, payload);
        frame[0] &= 0x7f; // FIN cleared
        frame
    };
    let mut bytes = not_last(0x1, br#"{"type":"pi"#);
    bytes.extend(masked_frame(0x9, b"hi")); // a ping between fragments
    bytes.extend(not_last(0x0, br#"ng","i"#));
    bytes.extend(masked_frame(0x0, br#"d":5}"#));
    tcp.write_all(&bytes).await.unwrap();
    assert_eq!(read_frame(&mut tcp).await, Some((0xA, b"hi".to_vec())), "the pong first");
    assert_eq!(read_frame(&mut tcp).await, Some((0x1, br#"{"type":"pong","id":5}"#.to_vec())));

    let unmasked = vec![0x81, 2, b'{', b'}'];
    let mut reserved = masked_frame(0x1, b"{}");
    reserved[0] |= 0x40;
    for bad in [masked_frame(0x0, b"{}"), reserved, unmasked] {
        let (mut tcp, _) = handshake(addr, "").await;
        tcp.write_all(&bad).await.unwrap();
        let (opcode, payload) = read_frame(&mut tcp).await.expect("a close frame");
        assert_eq!((opcode, u16::from_be_bytes([payload[0], payload[1]])), (0x8, 1002), "{bad:?}");
    }
    engine.shutdown().await;
}

/// The closing handshake started by the server: the client's close answers ours and gets no
/// answer of its own (RFC 6455 §5.5.1); then the server closes the TCP connection.
#[tokio::test]
async fn a_close_that_answers_ours_is_not_answered() {
    use tokio::io::AsyncWriteExt;
    let engine = engine().await;
    let addr = serve(&engine).await;
    let mut tcp = raw_tcp_hello(addr, "alice").await;
    let shutdown = tokio::spawn({
        let engine = engine.clone();
        async move { engine.shutdown().await }
    });
    assert!(read_frame(&mut tcp).await.expect("bye").1.starts_with(br#"{"type":"bye""#));
    let (opcode, payload) = read_frame(&mut tcp).await.expect("the server's close");
    assert_eq!((opcode, &payload[..2]), (0x8, &1000u16.to_be_bytes()[..]));
    tcp.write_all(&masked_frame(0x8, &1000u16.to_be_bytes())).await.unwrap();
    assert_eq!(read_frame(&mut tcp).await, None, "no second close: the connection ends");
    within(shutdown).await.unwrap();
}
