//! One engine behind both transports at once (TCP and WebSocket on loopback ports): clients of
//! either see one room identically — one seq order, one history, one presence, one shutdown —
//! and whatever a client started on one transport it can finish on the other (idempotent
//! resends, recovery).

mod common;

use std::collections::HashMap;

use chat_core::client::{Client, Event, HistoryQuery};
use chat_core::protocol::Since;
use chat_core::Engine;
use common::*;
use futures::future::join_all;
use serde_json::json;

async fn servers() -> Servers {
    Servers::start(Engine::builder().node_id("solo").build().await.expect("engine")).await
}

/// Joins `room` with every client (events are filtered by type later, so the `member_joined`
/// events this causes need no reading here).
async fn join_all_to(clients: &[&Client], room: &str) {
    for c in clients {
        within("join", c.join(room, None)).await.expect("join");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_ws_clients_see_one_order_with_concurrent_senders_on_both() {
    const PER_SENDER: usize = 50;
    let s = servers().await;
    let mut clients =
        vec![tcp(s.tcp, "alice").await, ws(&s.ws, "bob").await, tcp(s.tcp, "carol").await, ws(&s.ws, "dave").await];
    join_all_to(&clients.iter().collect::<Vec<_>>(), "order").await;

    // Every client pipelines its sends (each request written before the previous reply came
    // back) while the others do the same, on both transports.
    let sends = clients.iter().enumerate().map(|(c, client)| async move {
        let one = (0..PER_SENDER).map(|i| client.send("order", json!({"text": format!("{c}:{i}")})));
        join_all(one).await.into_iter().map(|r| r.expect("sent").expect("a stored seq")).collect::<Vec<u64>>()
    });
    let acked: Vec<Vec<u64>> = within("every send acknowledged", join_all(sends)).await;
    for seqs in &acked {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one connection's sends are ordered as sent: {seqs:?}");
    }

    let total = PER_SENDER * clients.len();
    let mut seen = Vec::new();
    for client in &mut clients {
        seen.push(messages(client, "order", total).await.iter().map(key_of).collect::<Vec<_>>());
    }
    let reference = &seen[0];
    assert_eq!(reference.iter().map(|m| m.0).collect::<Vec<_>>(), (1..=total as u64).collect::<Vec<_>>());
    for (i, other) in seen.iter().enumerate().skip(1) {
        assert!(other == reference, "client {i} saw another order than client 0");
    }
    // Each sender's messages are in the order sent, under the seqs its `sent` replies gave.
    let by_text: HashMap<String, u64> =
        reference.iter().map(|(seq, _, body)| (body["text"].as_str().unwrap_or("").to_owned(), *seq)).collect();
    for (c, seqs) in acked.iter().enumerate() {
        let delivered: Vec<u64> = (0..PER_SENDER).map(|i| by_text[&format!("{c}:{i}")]).collect();
        assert_eq!(&delivered, seqs, "sender {c}: delivered seqs are the acknowledged ones");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_says_bye_to_clients_of_both_transports() {
    let s = servers().await;
    let mut clients =
        vec![tcp(s.tcp, "alice").await, ws(&s.ws, "bob").await, tcp(s.tcp, "carol").await, ws(&s.ws, "dave").await];
    join_all_to(&clients.iter().collect::<Vec<_>>(), "lobby").await;
    // One idle client that joined nothing, on each transport.
    clients.push(tcp(s.tcp, "erin").await);
    clients.push(ws(&s.ws, "frank").await);

    let (tcp_addr, ws_url) = (s.tcp, s.ws.clone());
    s.shutdown().await;
    for (i, client) in clients.iter_mut().enumerate() {
        let Event::Bye(bye) = next_matching(client, "bye", |e| matches!(e, Event::Bye(_))).await else {
            unreachable!("a bye")
        };
        assert_eq!((bye.reason.as_str(), bye.reconnect), ("shutdown", true), "client {i}: {bye:?}");
        closed(client, "the close after bye").await;
    }
    assert!(tokio::net::TcpStream::connect(tcp_addr).await.is_err(), "the TCP listener is closed");
    assert!(chat_transport_ws::connect(&ws_url, Some("late"), None).await.is_err(), "the WS listener is closed");
}

async fn send(c: &Client, text: &str, key: &str) -> Option<u64> {
    within("sent", c.send_with("keys", json!({"text": text}), Some(key), false)).await.expect("sent")
}

#[tokio::test]
async fn idempotent_resend_through_the_other_transport_gives_the_same_seq() {
    let s = servers().await;
    let alice_tcp = tcp(s.tcp, "alice").await;
    let alice_ws = ws(&s.ws, "alice").await;
    let mut bob = ws(&s.ws, "bob").await;
    join_all_to(&[&alice_tcp, &alice_ws, &bob], "keys").await;

    let first = send(&alice_tcp, "one", "k1").await.expect("seq");
    assert_eq!(send(&alice_ws, "one", "k1").await, Some(first), "the resend over WS returns the original seq");
    let second = send(&alice_ws, "two", "k2").await.expect("seq");
    assert_eq!(second, first + 1);
    assert_eq!(send(&alice_tcp, "two", "k2").await, Some(second), "the resend over TCP returns the original seq");
    // A key is per user: bob's "k1" is another message.
    let bobs = send(&bob, "bob's own", "k1").await.expect("seq");
    assert_eq!(bobs, second + 1);

    // Bob received each message once.
    let got: Vec<_> = messages(&mut bob, "keys", 3).await.iter().map(key_of).collect();
    assert_eq!(
        got,
        vec![
            (first, "alice".to_owned(), json!({"text": "one"})),
            (second, "alice".to_owned(), json!({"text": "two"})),
            (bobs, "bob".to_owned(), json!({"text": "bob's own"})),
        ]
    );
    within("sync", bob.sync()).await.expect("sync");
    while let Some(frame) = bob.try_next_frame() {
        let e = Event::parse(&frame).expect("an event");
        assert!(!matches!(e, Event::Message(_)), "no duplicate delivered: {e:?}");
    }
    let history = within("history", alice_tcp.history("keys", HistoryQuery::default())).await.expect("history");
    assert_eq!(history_keys(&history), got, "history holds each message once");
    s.shutdown().await;
}

#[tokio::test]
async fn history_and_presence_are_identical_from_both_transports() {
    let s = servers().await;
    let alice_tcp = tcp(s.tcp, "alice").await;
    let alice_ws = ws(&s.ws, "alice").await;
    let bob = ws(&s.ws, "bob").await;
    let carol = tcp(s.tcp, "carol").await;
    join_all_to(&[&alice_tcp, &alice_ws, &bob, &carol], "hist").await;
    let senders = [&alice_tcp, &alice_ws, &bob, &carol];
    for i in 0..30 {
        let body = if i % 7 == 3 {
            json!({"kind": "not text", "n": i, "nested": [null, {"a": 1.5}]})
        } else {
            json!({"text": format!("m{i}")})
        };
        within("send", senders[i % senders.len()].send("hist", body)).await.expect("sent");
    }

    let queries = [
        (None, None, None),
        (None, None, Some(5)),
        (Some(10), None, None),
        (None, Some(20), None),
        (Some(12), Some(5), Some(3)),
        (Some(1), None, None),
        (None, Some(30), None),
    ];
    for (before, after, limit) in queries {
        let mut pages = Vec::new();
        for client in [&alice_tcp, &bob, &carol, &alice_ws] {
            let mut query = HistoryQuery::default();
            if let Some(seq) = before {
                query = query.before(seq);
            }
            if let Some(seq) = after {
                query = query.after(seq);
            }
            if let Some(n) = limit {
                query = query.limit(n);
            }
            pages.push(within("history", client.history("hist", query)).await.expect("history"));
        }
        assert!(pages.iter().all(|p| p == &pages[0]), "history {before:?} {after:?} {limit:?} differs: {pages:?}");
        let seqs: Vec<u64> = history_keys(&pages[0]).iter().map(|k| k.0).collect();
        let expected: Vec<u64> = match (before, after, limit) {
            (None, None, None) => (1..=30).collect(),
            (None, None, Some(5)) => (26..=30).collect(),
            (Some(10), None, None) => (1..=9).collect(),
            (None, Some(20), None) => (21..=30).collect(),
            (Some(12), Some(5), Some(3)) => (6..=8).collect(),
            _ => vec![],
        };
        assert_eq!(seqs, expected, "history {before:?} {after:?} {limit:?}");
    }
    let full = within("history", bob.history("hist", HistoryQuery::default())).await.expect("history");
    assert_eq!(history_keys(&full)[3].2, json!({"kind": "not text", "n": 3, "nested": [null, {"a": 1.5}]}));

    let presence = |expected: Vec<(&str, u64)>| {
        let expected: Vec<(String, u64)> = expected.into_iter().map(|(u, n)| (u.to_owned(), n)).collect();
        let clients = [&alice_tcp, &bob, &carol];
        async move {
            for client in clients {
                let p = within("presence", client.presence("hist")).await.expect("presence");
                assert_eq!(members(&p), expected, "presence seen by {}", client.welcome().user);
            }
        }
    };
    presence(vec![("alice", 2), ("bob", 1), ("carol", 1)]).await;
    within("leave", alice_ws.leave("hist")).await.expect("left");
    presence(vec![("alice", 1), ("bob", 1), ("carol", 1)]).await;
    drop(carol);
    eventually("carol's disconnection to leave presence", WAIT, || async {
        let p = alice_tcp.presence("hist").await.expect("presence");
        (members(&p).len() == 2).then_some(())
    })
    .await;
    presence_from_ws_matches(&bob, &alice_tcp).await;
    s.shutdown().await;
}

async fn presence_from_ws_matches(ws_client: &Client, tcp_client: &Client) {
    let a = within("presence", ws_client.presence("hist")).await.expect("presence");
    let b = within("presence", tcp_client.presence("hist")).await.expect("presence");
    assert_eq!(members(&a), members(&b));
    assert_eq!(members(&a), vec![("alice".to_owned(), 1), ("bob".to_owned(), 1)]);
}

#[tokio::test]
async fn a_tcp_client_recovers_through_websocket() {
    let s = servers().await;
    let mut watcher = tcp(s.tcp, "watcher").await;
    let mut alice = tcp(s.tcp, "alice").await;
    let joined = within("join", alice.join("rec", None)).await.expect("join");
    within("join", watcher.join("rec", None)).await.expect("join");
    for i in 1..=3 {
        within("send", watcher.send("rec", json!({"text": format!("before {i}")}))).await.expect("sent");
    }
    let seen = messages(&mut alice, "rec", 3).await;
    let last = seen.last().and_then(|m| m.seq).expect("seq");
    drop(alice);
    for i in 1..=4 {
        within("send", watcher.send("rec", json!({"text": format!("missed {i}")}))).await.expect("sent");
    }
    let mut alice = ws(&s.ws, "alice").await;
    let back = within("join", alice.join("rec", Some(Since::new(&joined.epoch, last)))).await.expect("join");
    assert!(back.recovered, "{back:?}");
    assert_eq!(back.epoch, joined.epoch);
    within("send", watcher.send("rec", json!({"text": "live"}))).await.expect("sent");
    let replay: Vec<_> = messages(&mut alice, "rec", 5).await.iter().map(key_of).collect();
    let texts: Vec<_> = replay.iter().map(|k| k.2["text"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(texts, ["missed 1", "missed 2", "missed 3", "missed 4", "live"]);
    assert_eq!(replay.iter().map(|k| k.0).collect::<Vec<_>>(), (last + 1..=last + 5).collect::<Vec<_>>());
    next_message(&mut watcher, "watcher's own live message", |m| m.body["text"] == "live").await;
    s.shutdown().await;
}
