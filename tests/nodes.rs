//! Many nodes, end to end: `chat-server` processes sharing rooms through a real broker started
//! here on free loopback ports, each scenario on Redis (one server, and a Redis Cluster of three
//! primaries) and on NATS JetStream (a single `nats-server -js`, and three nodes on a
//! three-server JetStream cluster): clients over both transports, a node killed with SIGKILL
//! and restarted; and the `chat-client` example as a process surviving a server restart.
//!
//! Needs `redis-server`, `redis-cli` and `nats-server` on the PATH (`apt-get install
//! redis-server redis-tools nats-server`). The examples are built by this test's cargo when they are missing or older
//! than their sources.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chat_core::client::{Client, Event, HistoryQuery, Message};
use chat_core::protocol::Since;
use chat_core::{Engine, MemoryBroker};
use common::*;
use futures::future::join_all;
use serde_json::json;

/// The presence expiry the nodes run with: a killed node's sessions leave presence within it
/// (plus one sweep interval, a quarter of it).
const PRESENCE_TTL: Duration = Duration::from_millis(2000);

/// A `chat-server` node on the broker at `broker` (a Redis or NATS url), listening on free
/// ports.
async fn node(broker: &str, id: &str) -> ChatServer {
    let ttl = PRESENCE_TTL.as_millis().to_string();
    let args =
        ["--broker", broker, "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--node-id", id, "--presence-ttl-ms", &ttl];
    ChatServer::start(&format!("node-{id}"), &args).await
}

async fn join(client: &Client, room: &str) -> chat_core::client::Joined {
    within("join", client.join(room, None)).await.expect("join")
}

async fn say(client: &Client, room: &str, text: &str) -> u64 {
    within("send", client.send(room, json!({"text": text}))).await.expect("sent").expect("a stored seq")
}

async fn say_with_key(client: &Client, room: &str, text: &str, key: &str) -> u64 {
    let sent = client.send_with(room, json!({"text": text}), Some(key), false);
    within("send", sent).await.expect("sent").expect("a stored seq")
}

fn text(m: &Message) -> &str {
    m.body["text"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_nodes_chat_in_one_order_over_both_transports_on_redis() {
    let redis = Redis::start();
    clients_on_many_nodes_chat_in_one_order(&[redis.url(), redis.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_nodes_chat_in_one_order_over_both_transports_on_nats() {
    let nats = NatsServer::start();
    clients_on_many_nodes_chat_in_one_order(&[nats.url(), nats.url()]).await;
}

/// Three nodes on a Redis Cluster of three primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_three_nodes_chat_in_one_order_on_a_redis_cluster() {
    let cluster = redis_cluster().await;
    clients_on_many_nodes_chat_in_one_order(&[cluster.url(), cluster.url(), cluster.url()]).await;
}

/// A Redis Cluster of three primaries (started off the runtime's threads: it waits for them).
async fn redis_cluster() -> RedisCluster {
    tokio::task::spawn_blocking(|| RedisCluster::start(3, 0)).await.expect("the Redis Cluster starts")
}

/// Three nodes, each on its own server of a three-server JetStream cluster storing every
/// message on all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_three_nodes_chat_in_one_order_on_a_nats_cluster() {
    let cluster = NatsCluster::start();
    let urls = cluster.urls();
    clients_on_many_nodes_chat_in_one_order(&[urls[0].clone(), urls[1].clone(), urls[2].clone()]).await;
}

/// One node per broker url; clients on every node over both transports send at once, and all
/// see one order, the senders' own order kept, under the acknowledged seqs.
async fn clients_on_many_nodes_chat_in_one_order(brokers: &[String]) {
    const PER_SENDER: usize = 30;
    let mut nodes = Vec::new();
    for (i, broker) in brokers.iter().enumerate() {
        nodes.push(node(broker, &((b'a' + i as u8) as char).to_string()).await);
    }
    let (a, b) = (&nodes[0], &nodes[nodes.len() - 1]);

    let mut clients =
        vec![tcp(a.tcp, "alice").await, ws(&b.ws, "bob").await, ws(&a.ws, "carol").await, tcp(b.tcp, "dave").await];
    let last = ((b'a' + (brokers.len() - 1) as u8) as char).to_string();
    assert_eq!(
        clients.iter().map(|c| c.welcome().node.as_str()).collect::<Vec<_>>(),
        ["a", &last, "a", &last],
        "each client is served by the node it connected to"
    );
    for c in &clients {
        join(c, "cross").await;
    }
    // Membership crosses nodes: alice (on a) hears of dave (on b), dave of alice.
    next_matching(
        &mut clients[0],
        "member_joined dave on a",
        |e| matches!(e, Event::MemberJoined(m) if m.user == "dave"),
    )
    .await;
    for c in [&clients[0], &clients[1]] {
        let p = within("presence", c.presence("cross")).await.expect("presence");
        let all = ["alice", "bob", "carol", "dave"].map(|u| (u.to_owned(), 1)).to_vec();
        assert_eq!(members(&p), all, "presence from node {}", c.welcome().node);
    }

    let sends = clients.iter().enumerate().map(|(c, client)| async move {
        let one = (0..PER_SENDER).map(|i| client.send("cross", json!({"text": format!("{c}:{i}")})));
        join_all(one).await.into_iter().map(|r| r.expect("sent").expect("a stored seq")).collect::<Vec<u64>>()
    });
    let acked = within("every send acknowledged", join_all(sends)).await;

    let total = PER_SENDER * clients.len();
    let mut seen = Vec::new();
    for client in &mut clients {
        seen.push(messages(client, "cross", total).await.iter().map(key_of).collect::<Vec<_>>());
    }
    assert_eq!(seen[0].iter().map(|m| m.0).collect::<Vec<_>>(), (1..=total as u64).collect::<Vec<_>>());
    for (i, other) in seen.iter().enumerate().skip(1) {
        assert!(other == &seen[0], "client {i} saw another order than client 0");
    }
    let by_text: HashMap<&str, u64> =
        seen[0].iter().map(|(seq, _, body)| (body["text"].as_str().unwrap_or(""), *seq)).collect();
    for (c, seqs) in acked.iter().enumerate() {
        let delivered: Vec<u64> = (0..PER_SENDER).map(|i| by_text[format!("{c}:{i}").as_str()]).collect();
        assert_eq!(&delivered, seqs, "sender {c}: delivered in the order sent, under the acknowledged seqs");
    }
    // One history, whichever node is asked.
    let from_a = within("history", clients[0].history("cross", HistoryQuery::default().after(60).limit(40)))
        .await
        .expect("history");
    let from_b = within("history", clients[3].history("cross", HistoryQuery::default().after(60).limit(40)))
        .await
        .expect("history");
    assert_eq!(history_keys(&from_a), history_keys(&from_b));
    assert_eq!(history_keys(&from_a), seen[0][60..100].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_acknowledged_message_on_redis() {
    let redis = Redis::start();
    a_killed_node_loses_no_acknowledged_message(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_acknowledged_message_on_a_redis_cluster() {
    let cluster = redis_cluster().await;
    a_killed_node_loses_no_acknowledged_message(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_acknowledged_message_on_nats() {
    let nats = NatsServer::start();
    a_killed_node_loses_no_acknowledged_message(&nats.url()).await;
}

async fn a_killed_node_loses_no_acknowledged_message(broker: &str) {
    let (a, b) = (node(broker, "a").await, node(broker, "b").await);
    let room = "failover";

    let mut alice = tcp(a.tcp, "alice").await; // stays on a
    let mut bob = ws(&b.ws, "bob").await; // on b, comes back through a
    let dave = tcp(b.tcp, "dave").await; // on b, does not come back
    let mut erin = tcp(a.tcp, "erin").await; // on a, watches presence
    let joined = join(&bob, room).await;
    join(&alice, room).await;
    join(&dave, room).await;
    join(&erin, room).await;

    // Bob's acknowledged messages, each with a key.
    let mut acked = Vec::new();
    for i in 1..=3 {
        acked.push((format!("k{i}"), say_with_key(&bob, room, &format!("bob {i}"), &format!("k{i}")).await));
    }
    let seen = messages(&mut bob, room, 3).await;
    let mut last_seen = seen.last().and_then(|m| m.seq).expect("seq");
    // One more that bob fires without waiting for its reply as b dies: stored or not, a resend
    // with its key must not store it twice.
    bob.send_frame(json!({"type": "send", "room": room, "key": "k4", "body": {"text": "bob 4"}}).to_string())
        .expect("written");

    let killed = Instant::now();
    b.kill().await;
    // erin comes back out of the task: dropping her there would end her session, and presence
    // would lose her (this test used to wait for her in presence after that, and fail whenever
    // her leave was processed before its first look).
    let dave_left = tokio::spawn(async move {
        let what = "member_left dave";
        let e = next_matching(&mut erin, what, |e| matches!(e, Event::MemberLeft(m) if m.user == "dave")).await;
        (e, killed.elapsed(), erin)
    });

    // b's clients see their connection close...
    closed(&mut bob, "bob's connection to close").await;
    let mut dave = dave;
    closed(&mut dave, "dave's connection to close").await;
    // ... while a keeps serving.
    let mut during = Vec::new();
    for i in 1..=3 {
        during.push(say(&alice, room, &format!("alice {i} while b is dead")).await);
    }

    // Bob reconnects to a at once, recovering from the last message he saw.
    let mut bob = ws(&a.ws, "bob").await;
    assert_eq!(bob.welcome().node, "a");
    let back = within("rejoin", bob.join(room, Some(Since::new(&joined.epoch, last_seen)))).await.expect("rejoin");
    assert!(back.recovered, "every message after {last_seen} is in history: {back:?}");
    assert_eq!(back.epoch, joined.epoch);
    // What a had delivered when bob joined is replayed; anything a was still receiving from
    // Redis then (alice's last message, say) follows live, with no gap between the two.
    let newest = *during.last().expect("alice's messages");
    assert!(back.seq <= newest, "joined at {} after {newest}", back.seq);
    let replay = messages(&mut bob, room, (newest - last_seen) as usize).await;
    for m in &replay {
        let seq = m.seq.expect("seq");
        assert_eq!(seq, last_seen + 1, "no gap, no duplicate in the replay: {replay:?}");
        last_seen = seq;
    }
    let replayed: Vec<&str> = replay.iter().map(text).filter(|t| t.starts_with("alice")).collect();
    assert_eq!(replayed, ["alice 1 while b is dead", "alice 2 while b is dead", "alice 3 while b is dead"]);

    // Resending with the same keys stores nothing twice: acknowledged ones keep their seq.
    for (key, seq) in &acked {
        let n = &key[1..];
        assert_eq!(say_with_key(&bob, room, &format!("bob {n}"), key).await, *seq, "resend of {key}");
    }
    let k4 = say_with_key(&bob, room, "bob 4", "k4").await;
    let history = within("history", alice.history(room, HistoryQuery::default())).await.expect("history");
    let texts: Vec<String> =
        history_keys(&history).iter().map(|k| k.2["text"].as_str().unwrap_or("").to_owned()).collect();
    for t in ["bob 1", "bob 2", "bob 3", "bob 4", "alice 1 while b is dead"] {
        assert_eq!(texts.iter().filter(|x| *x == t).count(), 1, "{t:?} stored exactly once: {texts:?}");
    }
    assert_eq!(history_keys(&history).iter().find(|k| k.2["text"] == "bob 4").map(|k| k.0), Some(k4));

    // dave (whose only session died with b) leaves presence within the expiry; bob, back on a,
    // stays.
    let (left, took, erin) = dave_left.await.expect("erin's watch");
    assert_eq!(left.room(), Some(room));
    // Typically about 1.25 × the expiry; the bound leaves room for a loaded CI machine.
    assert!(took < PRESENCE_TTL * 5, "dave left presence {took:?} after b died (expiry {PRESENCE_TTL:?})");
    // Presence converges: b's sessions are gone with dave's, everyone else's stay (a's own
    // presence heartbeat may lag on a loaded machine; a registers its sessions again then).
    let expected = ["alice", "bob", "erin"].map(|u| (u.to_owned(), 1)).to_vec();
    eventually("presence of alice, bob and erin", PRESENCE_TTL * 3, || async {
        let p = within("presence", alice.presence(room)).await.expect("presence");
        (members(&p) == expected).then_some(())
    })
    .await;

    // And a still works for everyone: a live message reaches both.
    let live = say(&alice, room, "after the failover").await;
    for c in [&mut alice, &mut bob] {
        let m = next_message(c, "the live message", |m| text(m) == "after the failover").await;
        assert_eq!(m.seq, Some(live));
    }
    drop((erin, a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_seq_and_epoch_on_redis() {
    let redis = Redis::start();
    a_restarted_node_keeps_seq_and_epoch(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_seq_and_epoch_on_a_redis_cluster() {
    let cluster = redis_cluster().await;
    a_restarted_node_keeps_seq_and_epoch(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_seq_and_epoch_on_nats() {
    let nats = NatsServer::start();
    a_restarted_node_keeps_seq_and_epoch(&nats.url()).await;
}

async fn a_restarted_node_keeps_seq_and_epoch(broker: &str) {
    let (a, b) = (node(broker, "a").await, node(broker, "b").await);
    let room = "restart";
    let mut alice = tcp(a.tcp, "alice").await;
    let bob = tcp(b.tcp, "bob").await;
    let joined = join(&alice, room).await;
    join(&bob, room).await;
    for i in 1..=5 {
        say(&bob, room, &format!("before {i}")).await;
    }
    messages(&mut alice, room, 5).await;

    b.kill().await;
    let b = node(broker, "b").await;
    let mut carol = ws(&b.ws, "carol").await;
    assert_eq!(carol.welcome().node, "b");
    let fresh = join(&carol, room).await;
    assert_eq!((fresh.epoch.as_str(), fresh.seq), (joined.epoch.as_str(), 5), "the room's epoch and seq survive b");
    // Recovery through the restarted node replays from Redis.
    let mut dave = tcp(b.tcp, "dave").await;
    let back = within("join", dave.join(room, Some(Since::new(&joined.epoch, 2)))).await.expect("join");
    assert!(back.recovered, "{back:?}");
    let replay: Vec<String> = messages(&mut dave, room, 3).await.iter().map(|m| text(m).to_owned()).collect();
    assert_eq!(replay, ["before 3", "before 4", "before 5"]);

    // New messages go on from seq 6, on both nodes.
    assert_eq!(say(&carol, room, "after restart").await, 6);
    for c in [&mut alice, &mut carol, &mut dave] {
        let m = next_message(c, "the message after the restart", |m| m.seq == Some(6)).await;
        assert_eq!(text(&m), "after restart");
    }
    // bob's dead session leaves presence although a node named b is alive again.
    eventually("bob's dead session to leave presence", PRESENCE_TTL * 3, || async {
        let p = alice.presence(room).await.expect("presence");
        (!members(&p).iter().any(|(u, _)| u == "bob")).then_some(())
    })
    .await;
    drop((a, bob));
}

/// The terminal client as a process: it joins and sends a typed line; when its server restarts
/// it reconnects by itself, shows what was sent meanwhile (once), and sends what was typed while
/// it was disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_client_reconnects_by_itself_and_misses_nothing() {
    // Two nodes in this process on one in-memory broker: the client's node restarts on the same
    // port while the other keeps the room's history alive.
    let broker = MemoryBroker::new();
    let engine = |id: &str| Engine::builder().node_id(id).broker(broker.clone()).build();
    let first = Servers::start(engine("front").await.expect("engine")).await;
    let other = Servers::start(engine("other").await.expect("engine")).await;
    let port = first.tcp.to_string();

    let mut bob = ws(&other.ws, "bob").await;
    join(&bob, "lobby").await;
    let mut term = ChatClient::start("chat-client", &["--tcp", &port, "--user", "carol", "lobby"]);
    term.expect("the connection", |l| l.starts_with("* connected to node front as carol")).await;
    term.expect("the join", |l| l == "* [lobby] joined").await;
    next_matching(&mut bob, "carol's arrival", |e| matches!(e, Event::MemberJoined(m) if m.user == "carol")).await;

    term.type_line("hello from the terminal").await;
    let m = next_message(&mut bob, "carol's line", |_| true).await;
    assert_eq!((m.from.as_str(), text(&m), m.seq), ("carol", "hello from the terminal", Some(1)));
    term.expect("its own line", |l| l == "[lobby #1] carol: hello from the terminal").await;
    say(&bob, "lobby", "hi carol").await;
    term.expect("bob's line", |l| l == "[lobby #2] bob: hi carol").await;
    term.type_line("/who").await;
    term.expect("the members", |l| l == "* [lobby] members: bob, carol").await;

    // The server goes away (`bye shutdown`): the client waits and retries.
    first.shutdown().await;
    term.expect("the disconnection", |l| l.starts_with("* disconnected (server said bye: shutdown)")).await;
    say(&bob, "lobby", "sent while you were away").await;
    term.type_line("typed while offline").await;
    term.expect("the offline notice", |l| l.starts_with("* not connected")).await;

    // It comes back on the same port.
    let again = Servers::start_on(engine("front").await.expect("engine"), &port).await;
    term.expect("the reconnection", |l| l.starts_with("* connected to node front as carol")).await;
    term.expect("the recovery", |l| l == "* [lobby] rejoined (recovered)").await;
    term.expect("the missed line", |l| l == "[lobby #3] bob: sent while you were away").await;
    let m = next_message(&mut bob, "the line typed offline", |m| m.from == "carol").await;
    assert_eq!((text(&m), m.seq), ("typed while offline", Some(4)));
    term.expect("the line typed offline", |l| l == "[lobby #4] carol: typed while offline").await;

    term.type_line("/quit").await;
    let transcript = term.transcript.clone();
    assert!(term.exit().await, "chat-client exits cleanly on /quit");
    let lines = transcript.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for n in 1..=4 {
        let shown = lines.iter().filter(|l| l.starts_with(&format!("[lobby #{n}]"))).count();
        assert_eq!(shown, 1, "message #{n} shown once:\n{}", lines.join("\n"));
    }
    again.shutdown().await;
    other.shutdown().await;
}

/// Two terminal clients on two nodes start and answer a direct conversation: `/dm bob` opens
/// it, bob's client shows the invite with the command that answers it, `/dm alice` does, and
/// the host's kick from a room shows as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_clients_start_and_answer_a_direct_conversation() {
    let broker = MemoryBroker::new();
    let engine = |id: &str| Engine::builder().node_id(id).broker(broker.clone()).build();
    let a = Servers::start(engine("a").await.expect("engine")).await;
    let b = Servers::start(engine("b").await.expect("engine")).await;
    let (port_a, port_b) = (a.tcp.to_string(), b.tcp.to_string());
    let mut alice = ChatClient::start("chat-client", &["--tcp", &port_a, "--user", "alice", "lobby"]);
    let mut bob = ChatClient::start("chat-client", &["--tcp", &port_b, "--user", "bob", "lobby"]);
    for term in [&mut alice, &mut bob] {
        term.expect("the join", |l| l == "* [lobby] joined").await;
    }
    alice.type_line("/dm bob").await;
    alice.expect("the conversation", |l| l == "* [dm:alice:bob] joined").await;
    alice.type_line("psst").await;
    alice.expect("its own line", |l| l == "[dm:alice:bob #1] alice: psst").await;
    bob.expect("the invite", |l| l == "* [dm:alice:bob] alice wrote to you (#1): /dm alice to read it").await;
    bob.type_line("/dm alice").await;
    bob.expect("the message", |l| l == "[dm:alice:bob #1] alice: psst").await;
    bob.type_line("what?").await;
    alice.expect("the answer", |l| l == "[dm:alice:bob #2] bob: what?").await;

    let lobby = chat_core::RoomName::new("lobby").expect("a room name");
    a.engine.kick_from_room(&lobby, "bob").await.expect("kick");
    bob.expect("the kick", |l| l == "* [lobby] you were removed from the room").await;
    for mut term in [alice, bob] {
        term.type_line("/quit").await;
        assert!(term.exit().await, "chat-client exits cleanly on /quit");
    }
}
