//! What a connection may hold before it is a session, over real sockets: the connection
//! limits (exactly the limit admitted, one over closed at accept with no session, in total and
//! per IP address, a flood never getting more) and the handshake deadline (a peer that never
//! says `hello` is closed when it passes, counted from accept and never before; a `hello` just
//! before it keeps the session; a TLS handshake counts against it).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use chat_core::{ConnectionLimits, Engine};
use chat_testkit::eventually;
use chat_transport_tcp::TcpServer;
use common::{engine, within, Raw, WAIT};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{sleep_until, Instant};

/// Scheduling slack on a loaded machine, added to a deadline the server must meet.
const SLACK: Duration = Duration::from_secs(2);

async fn serve_limited(engine: &Engine, limits: &ConnectionLimits) -> SocketAddr {
    let server = TcpServer::bind("127.0.0.1:0", engine.clone()).await.expect("bind").connection_limits(limits.clone());
    let addr = server.local_addr().expect("local_addr");
    tokio::spawn(server.run());
    addr
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A connection from `source`, a loopback address of our choosing.
async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source, 0)).expect("bind the source address");
    within("connect", socket.connect(addr)).await.expect("connect")
}

/// Says `hello` and reads the answer: `Some(welcome)`, or `None` when the server closed the
/// connection without a frame (refused at accept).
async fn try_hello(stream: TcpStream, user: &str) -> Option<Raw> {
    let mut raw = Raw { stream };
    let hello = json!({"type": "hello", "id": 1, "protocol": 1, "user": user}).to_string();
    let mut bytes = (hello.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(hello.as_bytes());
    if within("hello", raw.stream.write_all(&bytes)).await.is_err() {
        return None; // reset already
    }
    let mut prefix = [0u8; 4];
    match within("welcome or close", raw.stream.read_exact(&mut prefix)).await {
        Err(_) => None, // EOF or reset: no frame at all
        Ok(_) => {
            let mut frame = vec![0u8; u32::from_be_bytes(prefix) as usize];
            within("the welcome", raw.stream.read_exact(&mut frame)).await.expect("a whole frame");
            let frame: serde_json::Value = serde_json::from_slice(&frame).expect("JSON");
            assert_eq!(frame["type"], "welcome", "{frame}");
            Some(raw)
        }
    }
}

#[tokio::test]
async fn exactly_max_connections_are_admitted_and_one_over_is_closed_at_accept() {
    let engine = engine(|_| {}).await;
    let limits = ConnectionLimits::new(3, 100).expect("limits");
    let addr = serve_limited(&engine, &limits).await;
    let mut admitted = Vec::new();
    for user in ["a", "b", "c"] {
        let stream = connect_from(loopback(1), addr).await;
        admitted.push(try_hello(stream, user).await.expect("within the limit: welcome"));
    }
    let over = connect_from(loopback(2), addr).await;
    assert!(try_hello(over, "d").await.is_none(), "one over the limit is closed without a session");
    assert_eq!((limits.count(), engine.session_count()), (3, 3));

    // A closed connection gives its place back.
    drop(admitted.pop());
    eventually("the place given back", WAIT, || async { (limits.count() == 2).then_some(()) }).await;
    let again = connect_from(loopback(2), addr).await;
    let mut again = try_hello(again, "e").await.expect("admitted again");
    again.expect_usable(2).await;
    for raw in &mut admitted {
        raw.expect_usable(3).await;
    }
}

#[tokio::test]
async fn exactly_max_connections_per_ip_are_admitted_and_one_over_is_closed_at_accept() {
    let engine = engine(|_| {}).await;
    let limits = ConnectionLimits::new(100, 2).expect("limits");
    let addr = serve_limited(&engine, &limits).await;
    let mut first = try_hello(connect_from(loopback(1), addr).await, "a").await.expect("first of 127.0.0.1");
    let mut second = try_hello(connect_from(loopback(1), addr).await, "b").await.expect("second of 127.0.0.1");
    let third = connect_from(loopback(1), addr).await;
    assert!(try_hello(third, "c").await.is_none(), "one over the per-IP limit is closed without a session");
    let mut other = try_hello(connect_from(loopback(2), addr).await, "d").await.expect("another address");
    assert_eq!((limits.count_for(loopback(1)), limits.count_for(loopback(2))), (2, 1));
    assert_eq!(engine.session_count(), 3);
    for raw in [&mut first, &mut second, &mut other] {
        raw.expect_usable(2).await;
    }
}

/// An attacker opening connections as fast as it can gets exactly the limit, never more.
#[tokio::test]
async fn a_flood_of_connections_gets_exactly_the_limit() {
    let engine = engine(|_| {}).await;
    let limits = ConnectionLimits::new(1_000, 10).expect("limits");
    let addr = serve_limited(&engine, &limits).await;
    let attempts: Vec<_> = (0..60)
        .map(|i| {
            tokio::spawn(async move {
                let stream = connect_from(loopback(1), addr).await;
                try_hello(stream, &format!("u{i}")).await
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for attempt in attempts {
        if let Some(raw) = attempt.await.expect("attempt") {
            admitted.push(raw);
        }
    }
    assert_eq!(admitted.len(), 10);
    assert_eq!((limits.count(), engine.session_count()), (10, 10));
}

#[tokio::test]
async fn a_silent_peer_is_closed_at_the_handshake_deadline_not_before() {
    let timeout = Duration::from_millis(1_000);
    let engine = engine(|c| c.handshake_timeout = timeout).await;
    let tick = timeout / 8; // min(heartbeat 25 s, handshake_timeout) / 8
    let addr = common::serve(&engine).await;
    let start = Instant::now(); // before the connect: the server accepts later
    let mut raw = Raw::connect(addr).await;
    raw.expect_bye("timeout").await;
    let after = start.elapsed();
    assert!(after >= timeout, "closed {after:?} after connecting, before the deadline");
    assert!(after <= timeout + tick + SLACK, "closed {after:?} after connecting");
}

#[tokio::test]
async fn a_hello_just_before_the_deadline_keeps_the_session() {
    let timeout = Duration::from_millis(2_000);
    let engine = engine(|c| {
        c.handshake_timeout = timeout;
        c.heartbeat = Duration::from_millis(3_000);
    })
    .await;
    let addr = common::serve(&engine).await;
    let start = Instant::now();
    let mut raw = Raw::connect(addr).await;
    sleep_until(start + timeout * 6 / 10).await; // a slow client, not a wait for a condition
    raw.send_json(json!({"type": "hello", "id": 1, "protocol": 1, "user": "late"})).await;
    assert_eq!(raw.recv().await["type"], "welcome");
    // The next frame is the heartbeat's ping, a heartbeat after the welcome and well past the
    // deadline (plus a tick): the session outlived its handshake deadline.
    assert_eq!(raw.recv().await, json!({"type": "ping"}));
    assert!(start.elapsed() > timeout + timeout / 8);
    raw.expect_usable(2).await;
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn a_tls_handshake_counts_against_the_deadline() {
    use chat_transport_tcp::TlsConfig;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let tls = TlsConfig::from_pem(certified.cert.pem().as_bytes(), certified.key_pair.serialize_pem().as_bytes())
        .expect("TLS config");
    let timeout = Duration::from_millis(1_000);
    let engine = engine(|c| c.handshake_timeout = timeout).await;
    let server = TcpServer::bind("127.0.0.1:0", engine.clone()).await.expect("bind").with_tls(tls);
    let limits = server.limits().clone();
    let addr = server.local_addr().expect("addr");
    tokio::spawn(server.run());
    // A client that never starts its TLS handshake.
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let n = within("the close", stream.read(&mut buf)).await.unwrap_or(0);
    let after = start.elapsed();
    assert_eq!(n, 0, "nothing is sent to a client that did not finish its TLS handshake");
    assert!(after >= timeout && after <= timeout + SLACK, "closed {after:?} after connecting");
    eventually("the place given back", WAIT, || async { (limits.count() == 0).then_some(()) }).await;
}
