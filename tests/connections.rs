//! What connections can make a `chat-server` process hold, tried as a hostile client would,
//! against the example server as a child process (its memory read from `/proc`):
//!
//! * 10,000 TCP connections that never say `hello` are all closed by the handshake deadline
//!   (default 10 s, plus the heartbeat task's tick), none before it, within 20 s, and the
//!   server grows by less than 64 MiB meanwhile;
//! * 200 WebSocket upgrade requests trickling one header byte per second are all dropped by
//!   the same deadline (plus the second an HTTP exchange gets to finish), within 20 s;
//! * `--max-connections` and `--max-connections-per-ip` hold for both transports together
//!   (one over: closed at accept on TCP, `503` on WebSocket), and `--handshake-timeout-ms`
//!   sets the deadline.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, vm_rss_kib, within, ChatServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{interval, sleep, timeout, Instant};

/// The server's default handshake deadline, and the heartbeat task's tick with the default
/// heartbeat (25 s): min(25 s, 10 s) / 8.
const HANDSHAKE: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(1_250);
/// How long an HTTP exchange in progress may go on past the deadline (WsServer).
const HTTP_GRACE: Duration = Duration::from_secs(1);
/// Scheduling slack on a loaded machine.
const SLACK: Duration = Duration::from_secs(5);
/// The issue's bound: every slow or silent connection is closed within 20 s.
const BOUND: Duration = Duration::from_secs(20);
/// The bound on what a flood may grow the server by.
const MAX_GROWTH_KIB: u64 = 64 * 1024;

/// Samples the server's memory every 100 ms until dropped; keeps the peak.
struct PeakRss {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl PeakRss {
    fn start(pid: u32) -> PeakRss {
        let (peak, stop) = (Arc::new(AtomicU64::new(vm_rss_kib(pid))), Arc::new(AtomicBool::new(false)));
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(vm_rss_kib(pid), Ordering::Relaxed);
                sleep(Duration::from_millis(100)).await; // the sampling period, not a wait
            }
        });
        PeakRss { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Raises this process's descriptor limit (children inherit it) to `want`, or the hard limit.
fn raise_nofile(want: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own; setrlimit only reads it.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.max(want.min(limit.rlim_max));
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

fn ws_addr(server: &ChatServer) -> SocketAddr {
    let host = server.ws.trim_start_matches("ws://").trim_end_matches("/ws");
    host.parse().expect("the WebSocket listener's address")
}

fn upgrade_request(addr: SocketAddr) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_silent_tcp_connections_are_closed_by_the_handshake_deadline() {
    const N: usize = 10_000;
    raise_nofile(2 * N as u64 + 1_000);
    // Every connection comes from 127.0.0.1: the per-IP limit (1,000) is raised above them.
    let server = ChatServer::start(
        "silent",
        &["--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--max-connections-per-ip", "20000"],
    )
    .await;
    let (addr, pid) = (server.tcp, server.pid());
    let base = vm_rss_kib(pid);
    let rss = PeakRss::start(pid);
    let connecting = Arc::new(Semaphore::new(256)); // connects in flight, not connections
    let silent: Vec<_> = (0..N)
        .map(|_| {
            let connecting = connecting.clone();
            tokio::spawn(async move {
                let permit = connecting.acquire_owned().await.expect("semaphore");
                let start = Instant::now(); // before the connect: the server accepts later
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                drop(permit);
                let mut got = Vec::new();
                let read = timeout(BOUND + SLACK, stream.read_to_end(&mut got)).await;
                assert!(read.is_ok(), "a silent connection still open {:?} after connecting", start.elapsed());
                (start.elapsed(), got)
            })
        })
        .collect();
    let (mut first, mut last) = (Duration::MAX, Duration::ZERO);
    for connection in silent {
        let (after, got) = connection.await.expect("connection task");
        assert!(after >= HANDSHAKE, "closed {after:?} after connecting: before the handshake deadline");
        assert!(after <= (HANDSHAKE + TICK + SLACK).min(BOUND), "closed {after:?} after connecting");
        let text = String::from_utf8_lossy(&got);
        assert!(text.ends_with(r#"{"type":"bye","reason":"timeout","reconnect":true}"#), "{text:?}");
        (first, last) = (first.min(after), last.max(after));
    }
    let growth = rss.peak().saturating_sub(base);
    eprintln!("{N} silent connections closed {first:?}..{last:?} after connecting; server grew by {growth} KiB");
    assert!(growth < MAX_GROWTH_KIB, "the server grew by {growth} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_trickling_websocket_upgrades_are_closed_by_the_deadline() {
    const N: usize = 200;
    raise_nofile(4 * N as u64);
    let server = ChatServer::start("trickle", &["--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0"]).await;
    let (addr, pid) = (ws_addr(&server), server.pid());
    let base = vm_rss_kib(pid);
    let rss = PeakRss::start(pid);
    let request = upgrade_request(addr).into_bytes();
    let trickling: Vec<_> = (0..N)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let mut tcp = TcpStream::connect(addr).await.expect("connect");
                let (mut read, mut write) = tcp.split();
                let mut every_second = interval(Duration::from_secs(1)); // the slow client itself
                let (mut sent, mut answer) = (0, Vec::new());
                let mut buf = [0u8; 512];
                let until = start + BOUND + SLACK;
                loop {
                    tokio::select! {
                        n = read.read(&mut buf) => match n {
                            Ok(0) | Err(_) => break,
                            Ok(n) => answer.extend_from_slice(&buf[..n]),
                        },
                        _ = every_second.tick(), if sent < request.len() => {
                            if write.write_all(&request[sent..=sent]).await.is_err() {
                                break;
                            }
                            sent += 1;
                        }
                        _ = tokio::time::sleep_until(until) => panic!("a trickling upgrade still open after {:?}", start.elapsed()),
                    }
                }
                (start.elapsed(), sent, answer)
            })
        })
        .collect();
    let mut last = Duration::ZERO;
    for connection in trickling {
        let (after, sent, answer) = connection.await.expect("connection task");
        assert!(after >= HANDSHAKE, "closed {after:?} after connecting: before the handshake deadline");
        assert!(after <= (HANDSHAKE + HTTP_GRACE + SLACK).min(BOUND), "closed {after:?} after connecting");
        assert!(sent < request.len(), "the request head was never complete");
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
        last = last.max(after);
    }
    let growth = rss.peak().saturating_sub(base);
    eprintln!("{N} trickling upgrades closed by {last:?} after connecting; server grew by {growth} KiB");
    assert!(growth < MAX_GROWTH_KIB, "the server grew by {growth} KiB");
}

/// A connection from `source`, a loopback address of our choosing.
async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).expect("bind the source address");
    within("connect", socket.connect(addr)).await.expect("connect")
}

/// A TCP `hello` from `source`: the stream once answered `welcome`, `None` if the connection
/// was closed without a frame.
async fn tcp_hello(source: Ipv4Addr, addr: SocketAddr) -> Option<TcpStream> {
    let mut stream = connect_from(source, addr).await;
    let hello = br#"{"type":"hello","id":1,"protocol":1,"user":"u"}"#;
    let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(hello);
    within("hello", stream.write_all(&frame)).await.ok()?;
    let mut prefix = [0u8; 4];
    within("welcome or close", stream.read_exact(&mut prefix)).await.ok()?;
    let mut welcome = vec![0u8; u32::from_be_bytes(prefix) as usize];
    within("welcome", stream.read_exact(&mut welcome)).await.expect("a whole frame");
    assert!(welcome.starts_with(br#"{"type":"welcome""#), "{}", String::from_utf8_lossy(&welcome));
    Some(stream)
}

/// A WebSocket upgrade from `source`: the status line of the answer; an upgraded stream is kept.
async fn ws_upgrade(source: Ipv4Addr, addr: SocketAddr, keep: &mut Vec<TcpStream>) -> String {
    let mut stream = connect_from(source, addr).await;
    let _ = within("upgrade", stream.write_all(upgrade_request(addr).as_bytes())).await;
    let mut head = Vec::new();
    within("the answer", async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n") && matches!(stream.read(&mut byte).await, Ok(1)) {
            head.push(byte[0]);
        }
    })
    .await;
    let status = String::from_utf8_lossy(&head).trim_end().to_owned();
    if status.starts_with("HTTP/1.1 101") {
        keep.push(stream);
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limits_and_the_deadline_hold_for_both_transports_together() {
    let timeout = Duration::from_millis(1_500);
    let server = ChatServer::start(
        "limits",
        &[
            "--tcp",
            "127.0.0.1:0",
            "--ws",
            "127.0.0.1:0",
            "--max-connections",
            "3",
            "--max-connections-per-ip",
            "2",
            "--handshake-timeout-ms",
            "1500",
        ],
    )
    .await;
    let (tcp, ws) = (server.tcp, ws_addr(&server));
    let (one, two, three) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let mut held = Vec::new();
    // 127.0.0.1: one session per transport, then one over its limit on either.
    let _tcp_one = tcp_hello(one, tcp).await.expect("admitted");
    let _ws_one = within("ws hello", chat_transport_ws::connect(&server.ws, Some("b"), None)).await.expect("admitted");
    assert!(tcp_hello(one, tcp).await.is_none(), "a third from one address is closed at accept");
    assert_eq!(ws_upgrade(one, ws, &mut held).await, "HTTP/1.1 503 Service Unavailable");
    // 127.0.0.2 takes the node's last place; 127.0.0.3 finds none on either transport.
    let start = Instant::now();
    assert_eq!(ws_upgrade(two, ws, &mut held).await, "HTTP/1.1 101 Switching Protocols");
    assert!(tcp_hello(three, tcp).await.is_none(), "one over the node's limit is closed at accept");
    assert_eq!(ws_upgrade(three, ws, &mut held).await, "HTTP/1.1 503 Service Unavailable");

    // The upgraded connection of 127.0.0.2 never says hello: `bye timeout` at the deadline
    // counted from its accept, and its place is free again.
    let mut upgraded = held.pop().expect("the upgrade of 127.0.0.2");
    let mut frame = Vec::new();
    within("bye", upgraded.read_to_end(&mut frame)).await.ok();
    let after = start.elapsed();
    assert!(String::from_utf8_lossy(&frame).contains(r#"{"type":"bye","reason":"timeout","reconnect":true}"#));
    assert!(after >= timeout && after <= timeout + timeout / 8 + SLACK, "closed {after:?} after connecting");
    let _tcp_three = eventually("a place for 127.0.0.3", WAIT, || tcp_hello(three, tcp)).await;
}
