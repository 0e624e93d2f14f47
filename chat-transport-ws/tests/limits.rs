//! What a connection may hold before it is a session, over real sockets: the connection limits
//! (exactly the limit upgraded, one over answered 503 at accept, in total and per IP address,
//! the place following the connection into its session; the same behind the host's own axum
//! server), the 16 KiB cap on a request head, and the handshake deadline over the HTTP phase
//! (a request head trickling in is dropped; an upgrade that came late still has to say
//! `hello` by the deadline counted from accept; over TLS, the TLS handshake counts).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use chat_core::{ConnectionLimits, Engine};
use chat_testkit::eventually;
use chat_transport_ws::{WsOptions, MAX_HEADER_BYTES};
use common::{masked_frame, read_frame, serve_with, within, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{sleep, sleep_until, Instant};

/// Scheduling slack on a loaded machine, added to a deadline the server must meet.
const SLACK: Duration = Duration::from_secs(2);
/// How long the server lets an HTTP exchange in progress finish after the deadline.
const HTTP_GRACE: Duration = Duration::from_secs(1);

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source, 0)).expect("bind the source address");
    within(socket.connect(addr)).await.expect("connect")
}

fn upgrade_request(addr: SocketAddr, extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Reads a response head (up to its blank line), or whatever came before the connection ended.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    within(async {
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            match tcp.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
    })
    .await;
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads to the end of the connection (EOF or reset).
async fn read_rest(tcp: &mut TcpStream) -> String {
    let mut rest = Vec::new();
    within(async {
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            rest.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&rest).into_owned()
}

/// An upgrade from `source`, then `hello`: the socket once `welcome` came back.
async fn session_from(source: IpAddr, addr: SocketAddr, user: &str) -> TcpStream {
    let mut tcp = connect_from(source, addr).await;
    within(tcp.write_all(upgrade_request(addr, "").as_bytes())).await.expect("write");
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let hello = format!(r#"{{"type":"hello","id":1,"protocol":1,"user":"{user}"}}"#);
    within(tcp.write_all(&masked_frame(0x1, hello.as_bytes()))).await.expect("write");
    let (_, welcome) = read_frame(&mut tcp).await.expect("welcome");
    assert!(welcome.starts_with(br#"{"type":"welcome""#), "{}", String::from_utf8_lossy(&welcome));
    tcp
}

/// An upgrade from `source` beyond the limits: the whole answer, which must be a 503.
async fn refused_from(source: IpAddr, addr: SocketAddr) -> String {
    let mut tcp = connect_from(source, addr).await;
    let _ = within(tcp.write_all(upgrade_request(addr, "").as_bytes())).await; // may be reset
    let answer = read_rest(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{answer:?}");
    assert!(answer.ends_with("too many connections\n"), "{answer:?}");
    answer
}

async fn limited_server(limits: &ConnectionLimits) -> (Engine, SocketAddr) {
    let engine = common::engine().await;
    let addr = serve_with(&engine, WsOptions::default().connection_limits(limits.clone())).await;
    (engine, addr)
}

#[tokio::test]
async fn exactly_max_connections_upgrade_and_one_over_gets_503_at_accept() {
    let limits = ConnectionLimits::new(2, 100).expect("limits");
    let (engine, addr) = limited_server(&limits).await;
    let a = session_from(loopback(1), addr, "u1").await;
    let _b = session_from(loopback(1), addr, "u2").await;
    refused_from(loopback(2), addr).await;
    // The places followed the connections through the upgrade into their sessions.
    assert_eq!((limits.count(), engine.session_count()), (2, 2));
    drop(a);
    eventually("the place given back", WAIT, || async { (limits.count() == 1).then_some(()) }).await;
    let _c = session_from(loopback(2), addr, "u3").await;
    assert_eq!(limits.count(), 2);
}

#[tokio::test]
async fn exactly_max_connections_per_ip_upgrade_and_one_over_gets_503() {
    let limits = ConnectionLimits::new(100, 2).expect("limits");
    let (engine, addr) = limited_server(&limits).await;
    let _a = session_from(loopback(1), addr, "u4").await;
    let _b = session_from(loopback(1), addr, "u5").await;
    refused_from(loopback(1), addr).await;
    let _c = session_from(loopback(2), addr, "u6").await;
    assert_eq!((limits.count_for(loopback(1)), limits.count_for(loopback(2))), (2, 1));
    assert_eq!(engine.session_count(), 3);
}

/// Behind the host's own axum server the handler takes the places, and answers 503 beyond them.
#[tokio::test]
async fn behind_the_hosts_axum_server_the_handler_applies_the_limits() {
    let limits = ConnectionLimits::new(100, 1).expect("limits");
    let engine = common::engine().await;
    let app = chat_transport_ws::router(engine.clone(), WsOptions::default().connection_limits(limits.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.expect("serve")
    });
    let a = session_from(loopback(1), addr, "u7").await;
    let mut over = connect_from(loopback(1), addr).await;
    within(over.write_all(upgrade_request(addr, "").as_bytes())).await.expect("write");
    let head = read_head(&mut over).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let _b = session_from(loopback(2), addr, "u8").await;
    assert_eq!(limits.count(), 2);
    drop(a);
    eventually("the place given back", WAIT, || async { (limits.count() == 1).then_some(()) }).await;
    let _c = session_from(loopback(1), addr, "u9").await;
}

#[tokio::test]
async fn a_request_head_over_16_kib_is_refused_not_buffered() {
    let limits = ConnectionLimits::default();
    let (_engine, addr) = limited_server(&limits).await;
    // Within the cap: upgraded.
    let filler = format!("X-Filler: {}\r\n", "a".repeat(MAX_HEADER_BYTES - 1_500));
    let mut tcp = connect_from(loopback(1), addr).await;
    within(tcp.write_all(upgrade_request(addr, &filler).as_bytes())).await.expect("write");
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Over it, and the head never ends: answered at the cap (431), not waited for.
    let mut tcp = connect_from(loopback(1), addr).await;
    let request = upgrade_request(addr, &format!("X-Filler: {}", "a".repeat(MAX_HEADER_BYTES + 1_000)));
    let unfinished = request.trim_end_matches("\r\n");
    let _ = within(tcp.write_all(unfinished.as_bytes())).await; // the server may close first
    let answer = read_rest(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    eventually("the place given back", WAIT, || async { (limits.count() == 1).then_some(()) }).await;
}

/// A request head that trickles in is dropped once the handshake deadline has passed.
#[tokio::test]
async fn a_trickling_request_head_is_dropped_at_the_deadline() {
    let timeout = Duration::from_millis(1_000);
    let engine = Engine::builder().tune(|c| c.handshake_timeout = timeout).build().await.expect("engine");
    let limits = ConnectionLimits::default();
    let addr = serve_with(&engine, WsOptions::default().connection_limits(limits.clone())).await;
    let start = Instant::now();
    let mut tcp = connect_from(loopback(1), addr).await;
    let request = upgrade_request(addr, "");
    let (mut read, mut write) = tcp.split();
    let trickle = async {
        for byte in request.as_bytes() {
            if write.write_all(std::slice::from_ref(byte)).await.is_err() {
                break;
            }
            sleep(Duration::from_millis(50)).await; // the slow client itself
        }
        std::future::pending::<()>().await
    };
    let mut buf = [0u8; 64];
    let closed = tokio::select! {
        _ = trickle => unreachable!(),
        n = read.read(&mut buf) => n.unwrap_or(0),
        _ = sleep(timeout + HTTP_GRACE + SLACK + WAIT) => panic!("still open"),
    };
    let after = start.elapsed();
    assert_eq!(closed, 0, "closed without an answer: {:?}", String::from_utf8_lossy(&buf));
    assert!(after >= timeout && after <= timeout + HTTP_GRACE + SLACK, "closed {after:?} after connecting");
    eventually("the place given back", WAIT, || async { (limits.count() == 0).then_some(()) }).await;
}

/// The deadline counts from accept: time spent before the upgrade is not given again.
#[tokio::test]
async fn a_late_upgrade_must_still_say_hello_by_the_deadline_from_accept() {
    let timeout = Duration::from_millis(1_500);
    let engine = Engine::builder().tune(|c| c.handshake_timeout = timeout).build().await.expect("engine");
    let addr = serve_with(&engine, WsOptions::default()).await;
    let start = Instant::now();
    let mut tcp = connect_from(loopback(1), addr).await;
    sleep_until(start + timeout / 2).await; // a slow client, not a wait for a condition
    within(tcp.write_all(upgrade_request(addr, "").as_bytes())).await.expect("write");
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, bye) = read_frame(&mut tcp).await.expect("bye");
    let after = start.elapsed();
    assert_eq!(bye, br#"{"type":"bye","reason":"timeout","reconnect":true}"#);
    assert!(after >= timeout && after <= timeout + timeout / 8 + SLACK, "closed {after:?} after connecting");
}

/// Over TLS: a client that never finishes its TLS handshake is closed at the deadline from
/// accept, and one beyond the limits is closed at once, bare (a 503 would need a handshake).
#[cfg(feature = "tls")]
#[tokio::test]
async fn over_tls_the_handshake_counts_and_one_over_the_limit_is_closed_at_accept() {
    use chat_transport_ws::WsServer;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let (cert, key) = (certified.cert.pem(), certified.key_pair.serialize_pem());
    let timeout = Duration::from_millis(2_000);
    let engine = Engine::builder().tune(|c| c.handshake_timeout = timeout).build().await.expect("engine");
    let limits = ConnectionLimits::new(1, 10).expect("limits");
    let options = WsOptions::default().connection_limits(limits.clone());
    let server = WsServer::bind("127.0.0.1:0", engine, options)
        .await
        .expect("bind")
        .with_tls_pem(cert.as_bytes(), key.as_bytes())
        .expect("TLS");
    let addr = server.local_addr();
    tokio::spawn(server.run());
    let start = Instant::now();
    let mut silent = connect_from(loopback(1), addr).await;
    eventually("the first connection admitted", WAIT, || async { (limits.count() == 1).then_some(()) }).await;
    let mut over = connect_from(loopback(2), addr).await;
    assert_eq!(read_rest(&mut over).await, "", "closed without an answer");
    assert!(start.elapsed() < timeout, "the one over the limit is closed at accept");
    assert_eq!(read_rest(&mut silent).await, "", "closed without an answer");
    let after = start.elapsed();
    assert!(after >= timeout && after <= timeout + SLACK, "closed {after:?} after connecting");
    eventually("the place given back", WAIT, || async { (limits.count() == 0).then_some(()) }).await;
}
