//! The example server's Prometheus endpoint (`--metrics ADDR`, issue 13): `chat-server` as a
//! child process with `--metrics 127.0.0.1:0` and an SQLite store in a temporary directory,
//! two clients (TCP and WebSocket) that join a room and send; `GET /metrics` over plain HTTP
//! then shows the sessions, connections by transport, joins, stored messages, deliveries, and
//! broker and store latency, each with its `# HELP`; once a client leaves, the gauges follow.
//! Every condition is waited for with a deadline (the sampled gauges move on the heartbeat
//! task's tick, 1.25 s by default).

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The body of `GET /metrics` on `addr` (HTTP/1.1, `Connection: close`).
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = within("connect to /metrics", TcpStream::connect(addr)).await.expect("connect to /metrics");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write the request");
    let mut response = Vec::new();
    within("the /metrics response", stream.read_to_end(&mut response)).await.expect("read the response");
    let response = String::from_utf8(response).expect("a UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "GET /metrics answered {head:?}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain"), "{head:?}");
    body.to_owned()
}

/// The value of `series` (a name with its labels, as the exposition writes it) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A series and what its value must satisfy.
type Check<'a> = (&'a str, fn(f64) -> bool);

/// Scrapes until every check holds (the gauges are sampled, so there is no event to wait
/// for); fails after [`WAIT`]. Each scrape is bounded too (`within`).
async fn until(addr: SocketAddr, what: &str, checks: &[Check<'_>]) -> String {
    chat_testkit::eventually(what, WAIT, || async {
        let text = scrape(addr).await;
        checks.iter().all(|(series, ok)| value(&text, series).is_some_and(ok)).then_some(text)
    })
    .await
}

#[tokio::test]
async fn the_metrics_endpoint_counts_sessions_messages_and_deliveries() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = format!("sqlite:{}", dir.path().join("chat.db").display());
    let server = ChatServer::start(
        "metrics",
        &["--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--store", &store],
    )
    .await;
    let addr = server.metrics.expect("the listening line names the metrics address (metrics=ADDR)");
    assert_ne!(addr.port(), 0, "port 0 is replaced by the bound port");

    let alice = tcp(server.tcp, "alice").await;
    let mut bob = ws(&server.ws, "bob").await;
    within("alice joins", alice.join("lobby", None)).await.expect("alice joins");
    within("bob joins", bob.join("lobby", None)).await.expect("bob joins");
    let seq = within("send", alice.send("lobby", json!({"text": "hello"}))).await.expect("sent");
    assert_eq!(seq, Some(1));
    messages(&mut bob, "lobby", 1).await;

    let text = until(
        addr,
        "two sessions, one stored message, its deliveries",
        &[
            ("chat_sessions", |v| v == 2.0),
            ("chat_sessions_total", |v| v == 2.0),
            ("chat_rooms", |v| v == 1.0),
            ("chat_joins_total", |v| v == 2.0),
            ("chat_connections{transport=\"tcp\"}", |v| v == 1.0),
            ("chat_connections{transport=\"ws\"}", |v| v == 1.0),
            ("chat_connections_total{transport=\"tcp\"}", |v| v == 1.0),
            ("chat_messages_stored_total", |v| v == 1.0),
            // The message to both members, and bob's `member_joined` to alice at least.
            ("chat_deliveries_total", |v| v >= 3.0),
            ("chat_broker_call_duration_seconds_count{op=\"publish\"}", |v| v == 1.0),
            ("chat_broker_call_duration_seconds_count{op=\"subscribe\"}", |v| v == 1.0),
            ("chat_store_call_duration_seconds_count{op=\"append\"}", |v| v >= 1.0),
            ("chat_store_append_records_count", |v| v >= 1.0),
            ("chat_outbox_queued_frames", |v| v >= 0.0),
        ],
    )
    .await;
    for help in [
        "# HELP chat_deliveries_total ",
        "# HELP chat_sessions ",
        "# TYPE chat_deliveries_total counter",
        "# TYPE chat_sessions gauge",
        "# TYPE chat_broker_call_duration_seconds histogram",
    ] {
        assert!(text.contains(help), "no {help:?} in\n{text}");
    }
    assert!(
        text.contains("chat_broker_call_duration_seconds_bucket{op=\"publish\",le=\"10\"} 1"),
        "the latency histogram has buckets:\n{text}"
    );
    assert_eq!(value(&text, "chat_broker_errors_total{op=\"publish\"}"), None, "no error was counted");

    // Bob goes: the gauges follow, and his end is counted as the peer's.
    drop(bob);
    until(
        addr,
        "bob's connection to end",
        &[
            ("chat_sessions", |v| v == 1.0),
            ("chat_connections{transport=\"ws\"}", |v| v == 0.0),
            ("chat_closes_total{reason=\"peer_gone\"}", |v| v == 1.0),
        ],
    )
    .await;
    drop(alice);
    server.kill().await;
}
