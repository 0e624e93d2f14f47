//! Faults under the NATS broker, on real `nats-server` processes each test starts itself: the
//! server killed and restarted (publishes fail fast with `unavailable`, then go on in the same
//! epoch, every node getting every acknowledged message once and in order); one node's
//! connection cut while another publishes (it catches up when it reconnects, with nothing more
//! published); the stream leader of a three-server cluster killed while nodes publish (no
//! acknowledged message is lost, renumbered or stored twice); the stream purged (nodes get
//! `reset` and the room starts over at seq 1); and a node that dies without detaching (its
//! sessions leave presence within the expiry, with `member_left`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_broker_nats::NatsBroker;
use chat_core::broker::{
    Delivery, HistoryPage, HistoryQuery, Message, PresenceEntry, PublishOpts, Published, Transient,
};
use chat_core::{Broker, BrokerError, BrokerNode, RoomName};
use chat_testkit::conformance::{opts, publication, Recorder};
use chat_testkit::{eventually, NatsCluster, NatsServer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{block_in_place, JoinHandle};

/// The op timeout of the brokers here: short, so that an outage is reported quickly.
const OP_TIMEOUT: Duration = Duration::from_millis(500);

/// The longest async-nats waits between two reconnection attempts (its default backoff).
const RECONNECT_BACKOFF: Duration = Duration::from_secs(4);

/// How long a publish may take to fail while NATS is down: the publish's two steps (read the
/// room's head, append) each bounded by the op timeout, doubled for a loaded machine.
const FAIL_FAST: Duration = Duration::from_millis(4 * OP_TIMEOUT.as_millis() as u64);

/// How long publishing may take to work again once the server is back: the client's longest
/// reconnection backoff, then a publish (two op timeouts), doubled for a loaded machine.
const BACK: Duration =
    Duration::from_millis(2 * (RECONNECT_BACKOFF.as_millis() as u64 + 2 * OP_TIMEOUT.as_millis() as u64));

/// The longest JetStream election timeout in nats-server 2.9 (a RAFT group that lost its
/// leader elects another within it).
const ELECTION: Duration = Duration::from_secs(9);

/// How long a publisher may retry one message while a cluster member is killed: the stream's
/// and the meta group's elections, one after the other, plus a reconnection, with slack for a
/// loaded machine.
const FAILOVER: Duration = Duration::from_secs(2 * (2 * ELECTION.as_secs() + RECONNECT_BACKOFF.as_secs()));

/// How long presence keeps a dead node's sessions here.
const PRESENCE_TTL: Duration = Duration::from_millis(600);

/// How late JetStream may remove an entry past its age: nats-server checks ages on a timer,
/// which 2.10 sets to 1 s when the next entry is due within 250 ms (2.9 fires on time).
const EXPIRY_TIMER: Duration = Duration::from_secs(1);

/// How long a dead node's sessions may stay: its entries expire within the presence expiry of
/// its last refresh (and the server's expiry timer), and a live node's sweep (every quarter of
/// the expiry) notices the next time it runs; doubled for a loaded machine.
const PRESENCE_GONE: Duration =
    Duration::from_millis(2 * (PRESENCE_TTL.as_millis() as u64 * 5 / 4) + EXPIRY_TIMER.as_millis() as u64);

fn room(name: &str) -> RoomName {
    RoomName::new(name).expect("a valid room name")
}

/// Publish options with the idempotency key `n`, keeping 1,000 messages.
fn keyed(n: u64) -> PublishOpts {
    opts(Some(&n.to_string()), 1000)
}

/// Attaches node `name` to `broker` with a fresh recorder.
async fn attach(broker: &NatsBroker, name: &str) -> (Arc<dyn BrokerNode>, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let node = broker.attach(name, recorder.clone(), None).await.expect("the node attaches");
    (node, recorder)
}

/// Publishes `from`'s message `n` with the key `n` until it is acknowledged, within `limit`;
/// each failure must be `Unavailable` (a resend with the key is then safe: JetStream stores
/// it once).
async fn publish_until_stored(
    node: &Arc<dyn BrokerNode>,
    r: &RoomName,
    from: &str,
    n: u64,
    limit: Duration,
) -> Published {
    let what = format!("{from}'s message {n} to be stored");
    eventually(&what, limit, || async {
        match node.publish(r, publication(from, n), &keyed(n)).await {
            Ok(published) => Some(published),
            Err(BrokerError::Unavailable(_)) => None,
            Err(e) => panic!("publishing {from}'s message {n}: {e:?}"),
        }
    })
    .await
}

/// The seqs of stored deliveries.
fn seqs(got: &[(Arc<str>, Message)]) -> Vec<u64> {
    got.iter().map(|(_, m)| m.seq).collect()
}

/// The epochs, seqs and bodies of stored deliveries.
fn contents(got: &[(Arc<str>, Message)]) -> Vec<(Arc<str>, u64, String)> {
    got.iter().map(|(e, m)| (e.clone(), m.seq, body(m))).collect()
}

fn body(m: &Message) -> String {
    String::from_utf8_lossy(m.body.as_deref().expect("not erased")).into_owned()
}

fn resets(seen: &Recorder, r: &RoomName) -> Vec<Delivery> {
    seen.of(r).into_iter().filter(|d| matches!(d, Delivery::Reset { .. })).collect()
}

/// The whole history of the room (up to 1,000 messages).
async fn history(node: &Arc<dyn BrokerNode>, r: &RoomName) -> Result<HistoryPage, BrokerError> {
    node.history(r, HistoryQuery { before: None, after: Some(0), limit: 1000 }).await
}

/// A JetStream context on its own connection, for what the test does to NATS behind the
/// broker's back.
async fn jetstream(urls: Vec<String>) -> async_nats::jetstream::Context {
    let client = async_nats::connect(urls).await.expect("connect to nats-server");
    async_nats::jetstream::new(client)
}

/// The only server killed (SIGKILL) under two subscribed nodes and restarted on its file store:
/// publishes meanwhile fail with `Unavailable` within the op timeout; once it is back the
/// resent messages take the next seqs of the same epoch, and both nodes get 1..=6 once, in
/// order, with no reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_publishes_fast_and_loses_nothing_once_back() {
    let mut server = NatsServer::start();
    let broker = NatsBroker::builder(server.url()).prefix("kill").op_timeout(OP_TIMEOUT).build().expect("a broker");
    let r = room("r");
    let (a, seen_a) = attach(&broker, "a").await;
    let (b, seen_b) = attach(&broker, "b").await;
    let start = a.subscribe(&r).await.expect("subscribe");
    assert_eq!(b.subscribe(&r).await.expect("subscribe"), start);
    for n in 1..=3 {
        let p = a.publish(&r, publication("alice", n), &keyed(n)).await.expect("publish");
        assert_eq!((p.seq, &p.epoch, p.duplicate), (n, &start.epoch, false));
    }
    for seen in [&seen_a, &seen_b] {
        assert_eq!(seqs(&seen.stored(&r, 3).await), vec![1, 2, 3]);
    }

    block_in_place(|| server.kill());
    for (node, n) in [(&a, 4), (&b, 5), (&a, 4)] {
        let began = Instant::now();
        let failed = node.publish(&r, publication("alice", n), &keyed(n)).await;
        let took = began.elapsed();
        assert!(matches!(failed, Err(BrokerError::Unavailable(_))), "a publish while NATS is down: {failed:?}");
        assert!(took <= FAIL_FAST, "a publish while NATS is down took {took:?} (op timeout {OP_TIMEOUT:?})");
    }

    block_in_place(|| server.restart());
    // The messages that failed are sent again with their keys, as a client does.
    let fourth = publish_until_stored(&a, &r, "alice", 4, BACK).await;
    assert_eq!((fourth.seq, &fourth.epoch), (4, &start.epoch), "the next seq, in the same epoch");
    let fifth = publish_until_stored(&b, &r, "alice", 5, BACK).await;
    assert_eq!((fifth.seq, &fifth.epoch), (5, &start.epoch));
    let sixth = b.publish(&r, publication("bob", 6), &keyed(6)).await.expect("publish");
    assert_eq!((sixth.seq, &sixth.epoch, sixth.duplicate), (6, &start.epoch, false));

    let expected: Vec<_> = (1..=6).map(|n| (start.epoch.clone(), n, n.to_string())).collect();
    for (name, seen) in [("a", &seen_a), ("b", &seen_b)] {
        let got = seen.stored(&r, 6).await;
        assert_eq!(contents(&got), expected, "node {name}: each acknowledged message once, in order");
        assert_eq!(resets(seen, &r), vec![], "node {name}: the history survived the restart");
    }
    let page = history(&a, &r).await.expect("history");
    assert_eq!(page.epoch, start.epoch);
    assert_eq!(
        page.messages.iter().map(|m| (m.seq, body(m))).collect::<Vec<_>>(),
        (1..=6).map(|n| (n, n.to_string())).collect::<Vec<_>>()
    );
}

/// A TCP proxy in front of a server, for one node's connection: [`cut`](Proxy::cut) closes the
/// connections it carries and refuses new ones (each is closed at once) until
/// [`restore`](Proxy::restore), so only the nodes behind it lose NATS.
struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    accepting: JoinHandle<()>,
}

struct ProxyState {
    open: bool,
    /// The tasks forwarding the connections it carries.
    carried: Vec<JoinHandle<()>>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a listener for the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(Mutex::new(ProxyState { open: true, carried: Vec::new() }));
        let shared = state.clone();
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { continue };
                let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
                if !state.open {
                    drop(client); // refused: closed at once
                    continue;
                }
                state.carried.push(tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }));
            }
        });
        Proxy { addr, state, accepting }
    }

    fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Closes every connection through the proxy, and refuses new ones; returns once the
    /// sockets are closed, so nothing the server sends after it reaches the nodes behind it.
    async fn cut(&self) {
        let carried = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.open = false;
            std::mem::take(&mut state.carried)
        };
        assert!(!carried.is_empty(), "no connection goes through the proxy");
        for task in carried {
            task.abort();
            let _ = task.await; // the task's sockets are dropped by now
        }
    }

    /// Lets connections through again.
    fn restore(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).open = true;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        for task in &self.state.lock().unwrap_or_else(|e| e.into_inner()).carried {
            task.abort();
        }
    }
}

/// Only node c's connection cut (through a proxy) while node p publishes 3..=7: c gets none of
/// them until it may reconnect, then all of them once, in order, with nothing more published;
/// live delivery then goes on both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_catches_up_when_it_reconnects() {
    let server = NatsServer::start();
    let proxy = Proxy::start(server.port()).await;
    let direct = NatsBroker::builder(server.url()).prefix("cut").op_timeout(OP_TIMEOUT).build().expect("a broker");
    let behind_proxy = NatsBroker::builder(proxy.url()).prefix("cut").op_timeout(OP_TIMEOUT).build().expect("a broker");
    let r = room("r");
    let (p, seen_p) = attach(&direct, "p").await;
    let (c, seen_c) = attach(&behind_proxy, "c").await;
    let start = p.subscribe(&r).await.expect("subscribe");
    assert_eq!(c.subscribe(&r).await.expect("subscribe"), start);
    for n in 1..=2 {
        p.publish(&r, publication("alice", n), &opts(None, 100)).await.expect("publish");
    }
    for seen in [&seen_p, &seen_c] {
        assert_eq!(seqs(&seen.stored(&r, 2).await), vec![1, 2]);
    }

    proxy.cut().await;
    for n in 3..=7 {
        let published = p.publish(&r, publication("alice", n), &opts(None, 100)).await.expect("publish");
        assert_eq!((published.seq, &published.epoch), (n, &start.epoch));
    }
    assert_eq!(seqs(&seen_p.stored(&r, 7).await), (1..=7).collect::<Vec<_>>());
    assert_eq!(seqs(&seen_c.stored(&r, 2).await), vec![1, 2], "node c is cut off");

    // Nothing is published after this: node c must catch up on reconnecting alone.
    proxy.restore();
    let expected: Vec<_> = (1..=7).map(|n| (start.epoch.clone(), n, n.to_string())).collect();
    assert_eq!(contents(&seen_c.stored(&r, 7).await), expected, "what c missed, once, in order");

    // Live delivery goes on, and nothing came twice.
    p.publish(&r, publication("alice", 8), &opts(None, 100)).await.expect("publish");
    let expected: Vec<_> = (1..=8).map(|n| (start.epoch.clone(), n, n.to_string())).collect();
    for (name, seen) in [("p", &seen_p), ("c", &seen_c)] {
        assert_eq!(contents(&seen.stored(&r, 8).await), expected, "node {name}");
        assert_eq!(resets(seen, &r), vec![], "node {name}");
    }
    c.publish(&r, publication("carol", 9), &opts(None, 100)).await.expect("node c publishes again");
    assert_eq!(seqs(&seen_p.stored(&r, 9).await), (1..=9).collect::<Vec<_>>());
}

/// Six publishers on three nodes of a three-server cluster (replicas 3) send keyed messages,
/// resent after `Unavailable` until acknowledged, while the rooms' stream leader is killed:
/// the acknowledged seqs are exactly 1..=N, history holds each acknowledged message under its
/// seq, once, and every node got 1..=N in order, the same as history. The killed server then
/// rejoins and the room goes on at N + 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_while_publishing_loses_and_duplicates_nothing() {
    const PUBLISHERS_PER_NODE: u64 = 2;
    const EACH: u64 = 12;
    let mut cluster = block_in_place(NatsCluster::start);
    let broker = NatsBroker::builder(cluster.url())
        .prefix("failover")
        .replicas(3)
        .op_timeout(Duration::from_secs(1))
        .build()
        .expect("a broker");
    let r = room("r");
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let (node, seen) = attach(&broker, name).await;
        node.subscribe(&r).await.expect("subscribe");
        nodes.push((node, seen));
    }
    let total = nodes.len() as u64 * PUBLISHERS_PER_NODE * EACH;

    // Publishers: sender `p<k>` sends its messages 1..=EACH with keys, each resent until
    // acknowledged; the acknowledgements counted as they come. None goes past two thirds of
    // its messages before the leader was killed, so the last third is sent after the kill.
    let (acks, mut acked) = tokio::sync::watch::channel(0u64);
    let acks = Arc::new(acks);
    let (killed, killed_rx) = tokio::sync::watch::channel(false);
    let mut publishers = Vec::new();
    for (i, (node, _)) in nodes.iter().enumerate() {
        for j in 0..PUBLISHERS_PER_NODE {
            let (node, r, acks, mut killed) = (node.clone(), r.clone(), acks.clone(), killed_rx.clone());
            let from = format!("p{}", i as u64 * PUBLISHERS_PER_NODE + j);
            publishers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for n in 1..=EACH {
                    if n == EACH * 2 / 3 + 1 {
                        killed.wait_for(|k| *k).await.expect("the test goes on");
                    }
                    let published = publish_until_stored(&node, &r, &from, n, FAILOVER).await;
                    acks.send_modify(|count| *count += 1);
                    got.push((format!("{from}/{n}"), published));
                }
                got
            }));
        }
    }

    // A third of the way, the stream's leader dies.
    let js = jetstream(cluster.urls()).await;
    let mut stream = js.get_stream("failover-rooms").await.expect("the rooms' stream");
    let info = stream.info().await.expect("the stream's info");
    let leader = info.cluster.as_ref().and_then(|c| c.leader.clone()).expect("the stream has a leader");
    let leader = cluster.servers().iter().position(|s| s.name() == leader).expect("the leader is a member");
    drop(js);
    let third = tokio::time::timeout(FAILOVER, acked.wait_for(|n| *n >= total / 3)).await;
    third.expect("a third of the messages acknowledged in time").expect("the publishers count");
    block_in_place(|| cluster.server_mut(leader).kill());
    killed.send_replace(true);

    let mut published = Vec::new();
    for publisher in publishers {
        published.extend(publisher.await.expect("a publisher"));
    }
    let epoch = published[0].1.epoch.clone();
    assert!(published.iter().all(|(_, p)| p.epoch == epoch), "one epoch: {published:?}");
    let mut acked_seqs: Vec<u64> = published.iter().map(|(_, p)| p.seq).collect();
    acked_seqs.sort_unstable();
    assert_eq!(acked_seqs, (1..=total).collect::<Vec<_>>(), "every acknowledgement a seq of its own, no gap");

    // History holds every acknowledged message under the seq it was acknowledged with, each
    // once. (Read once a node can: the meta group may still be electing its leader.)
    let page = eventually("history to be readable", FAILOVER, || async { history(&nodes[0].0, &r).await.ok() }).await;
    assert_eq!(page.epoch, epoch);
    let stored: Vec<(u64, String)> = page.messages.iter().map(|m| (m.seq, format!("{}/{}", m.from, body(m)))).collect();
    let mut expected: Vec<(u64, String)> = published.iter().map(|(sent, p)| (p.seq, sent.clone())).collect();
    expected.sort();
    assert_eq!(stored, expected, "history is what was acknowledged");

    // Every node got 1..=N once, in order, the same message under each seq.
    let in_history: Vec<_> = page.messages.iter().map(|m| (epoch.clone(), m.clone())).collect();
    for (i, (_, seen)) in nodes.iter().enumerate() {
        let got = seen.stored(&r, total as usize).await;
        assert_eq!(got, in_history, "node {i}'s deliveries");
        assert_eq!(resets(seen, &r), vec![], "node {i}");
    }

    // The killed server comes back and the cluster takes publishes again.
    block_in_place(|| {
        cluster.server_mut(leader).restart();
        cluster.wait_ready();
    });
    let last = publish_until_stored(&nodes[0].0, &r, "last", 1, FAILOVER).await;
    assert_eq!((last.seq, &last.epoch), (total + 1, &epoch));
    for (_, seen) in &nodes {
        assert_eq!(seqs(&seen.stored(&r, total as usize + 1).await), (1..=total + 1).collect::<Vec<_>>());
    }
}

/// The rooms' stream purged under two subscribed nodes: the next publish starts a new epoch at
/// seq 1, and each node gets the old epoch, `Reset` to the new one, then its messages; history
/// holds only the new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_stream_resets_subscribed_nodes_and_restarts_at_seq_1() {
    let server = NatsServer::start();
    let broker = NatsBroker::builder(server.url()).prefix("purge").op_timeout(OP_TIMEOUT).build().expect("a broker");
    let r = room("r");
    let (a, seen_a) = attach(&broker, "a").await;
    let (b, seen_b) = attach(&broker, "b").await;
    let start = a.subscribe(&r).await.expect("subscribe");
    b.subscribe(&r).await.expect("subscribe");
    for n in 1..=3 {
        a.publish(&r, publication("alice", n), &opts(None, 100)).await.expect("publish");
    }
    for seen in [&seen_a, &seen_b] {
        assert_eq!(seqs(&seen.stored(&r, 3).await), vec![1, 2, 3]);
    }

    let js = jetstream(vec![server.url()]).await;
    let stream = js.get_stream("purge-rooms").await.expect("the rooms' stream");
    stream.purge().await.expect("purge the stream");

    let first = b.publish(&r, publication("bob", 4), &opts(None, 100)).await.expect("publish after the purge");
    assert_eq!((first.seq, first.duplicate), (1, false), "seq restarts at 1");
    assert_ne!(first.epoch, start.epoch, "a new epoch");
    let second = a.publish(&r, publication("alice", 5), &opts(None, 100)).await.expect("publish");
    assert_eq!((second.seq, &second.epoch), (2, &first.epoch));

    let stored = |epoch: &Arc<str>, seq, n: u64| Delivery::Stored {
        epoch: epoch.clone(),
        message: Arc::new(Message {
            seq,
            from: Arc::from(if n == 4 { "bob" } else { "alice" }),
            ts: n,
            body: Some(n.to_string().into()),
        }),
    };
    let expected: Vec<Delivery> = (1..=3)
        .map(|n| stored(&start.epoch, n, n))
        .chain([Delivery::Reset { epoch: first.epoch.clone() }, stored(&first.epoch, 1, 4), stored(&first.epoch, 2, 5)])
        .collect();
    for (name, seen) in [("a", &seen_a), ("b", &seen_b)] {
        seen.stored(&r, 5).await;
        assert_eq!(seen.of(&r), expected, "node {name}: the old epoch, reset, the new one");
    }
    let page = history(&a, &r).await.expect("history");
    assert_eq!((&page.epoch, page.latest), (&first.epoch, 2));
    assert_eq!(
        page.messages.iter().map(|m| (m.seq, body(m))).collect::<Vec<_>>(),
        vec![(1, "4".into()), (2, "5".into())]
    );
}

/// Node b, holding bob's session in a room node a subscribes to, dropped without `detach`:
/// within the presence expiry a's presence lists only alice, and a gets `member_left` for bob,
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_sessions_leave_presence_with_member_left() {
    let server = NatsServer::start();
    let broker = NatsBroker::builder(server.url())
        .prefix("dead")
        .presence_ttl(PRESENCE_TTL)
        .op_timeout(OP_TIMEOUT)
        .build()
        .expect("a broker");
    let r = room("r");
    let (a, seen_a) = attach(&broker, "a").await;
    a.subscribe(&r).await.expect("subscribe");
    assert!(a.presence_add(&r, "s1", "alice").await.expect("add"));
    let (b, _) = attach(&broker, "b").await;
    assert!(b.presence_add(&r, "s2", "bob").await.expect("add"), "bob's first session");
    // As the engine does: a user's first session is announced.
    b.broadcast(&r, Transient::MemberJoined(Arc::from("bob"))).await.expect("broadcast");
    seen_a.wait(&r, 1, |d| *d == Delivery::Transient(Transient::MemberJoined(Arc::from("bob")))).await;
    let entry = |user: &str| PresenceEntry { user: user.into(), sessions: 1 };
    assert_eq!(a.presence(&r).await.expect("presence"), vec![entry("alice"), entry("bob")]);

    // Node b dies: dropped without detaching.
    drop(b);
    eventually("bob to leave presence", PRESENCE_GONE, || async {
        (a.presence(&r).await.expect("presence") == vec![entry("alice")]).then_some(())
    })
    .await;
    let left = |d: &Delivery| *d == Delivery::Transient(Transient::MemberLeft(Arc::from("bob")));
    eventually("member_left for bob", PRESENCE_GONE, || async { seen_a.of(&r).iter().any(left).then_some(()) }).await;
    let leaves: Vec<_> =
        seen_a.of(&r).into_iter().filter(|d| matches!(d, Delivery::Transient(Transient::MemberLeft(_)))).collect();
    assert_eq!(
        leaves,
        vec![Delivery::Transient(Transient::MemberLeft(Arc::from("bob")))],
        "bob left once, alice stays"
    );
    assert_eq!(a.presence(&r).await.expect("presence"), vec![entry("alice")]);
}
