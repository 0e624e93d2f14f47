//! The Redis broker on a real Redis Cluster (`redis+cluster://`): `redis-server` processes in
//! cluster mode that each test starts itself (chat-testkit's `RedisCluster`). The broker
//! conformance suite on three primaries; engines whose rooms live on every shard agreeing on
//! one order; a room's slot moved to another primary while clients send; a primary killed, and
//! one frozen past its failover, while clients keep sending. Every acknowledged message reaches
//! every member once and in seq order, or the room announces a new epoch (`reset`): never a
//! silent loss; and live delivery goes on at the slot's new owner.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_core::client::{Client, Event};
use chat_core::{Engine, ErrorCode};
use chat_testkit::redis_cluster::Reply;
use chat_testkit::RedisCluster;
use common::{connect, engine_at};
use futures::future::join_all;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long any one awaited delivery or acknowledgement may take when nothing is failing.
const WAIT: Duration = Duration::from_secs(10);

/// How long a send may keep failing with `unavailable` while its slot changes hands: a
/// failover (the harness gives the cluster 25 s to agree on it) and the nodes finding the new
/// owner, or a slot migration.
const OUTAGE: Duration = Duration::from_secs(30);

/// The pace of each sending client: about 40 sends a second, well under a session's rate
/// limit, and few enough that a room's history (1,000 messages) holds a whole test.
const PACE: Duration = Duration::from_millis(25);

/// Runs a blocking call of the cluster harness on this worker thread, letting the runtime's
/// other worker run the engines and clients meanwhile (the tests run on two).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// One room per primary, named `{stem}N`, each served by a different primary (the hash tag
/// `{room}` of its keys and channel falls in one of that primary's slots): (room, primary's
/// port), in port order.
fn rooms_on_every_shard(cluster: &RedisCluster, stem: &str) -> Vec<(String, u16)> {
    let primaries = cluster.primaries();
    let mut found: BTreeMap<u16, String> = BTreeMap::new();
    for i in 0..1000 {
        if found.len() == primaries.len() {
            break;
        }
        let room = format!("{stem}{i}");
        let owner = cluster.primary_of_slot(RedisCluster::key_slot(format!("{{{room}}}")));
        found.entry(owner).or_insert(room);
    }
    assert_eq!(found.len(), primaries.len(), "no room name for every primary of {primaries:?}: {found:?}");
    found.into_iter().map(|(port, room)| (room, port)).collect()
}

/// The slot of a room's keys and channel.
fn slot_of(room: &str) -> u16 {
    RedisCluster::key_slot(format!("{{{room}}}"))
}

// ---------------------------------------------------------------------------------------------
// The conformance suite.

/// The broker conformance suite (chat-testkit's `conformance`), each case on a cluster of three
/// primaries of its own (about 2 s to start, run two at a time). Losing history is `FLUSHALL`
/// on every primary; interrupting deliveries is `CLIENT KILL TYPE pubsub` on every node (the
/// three primaries), which drops every node's shard subscriptions.
mod conformance {
    use super::blocking;
    use async_trait::async_trait;
    use chat_broker_redis::RedisBroker;
    use chat_core::Broker;
    use chat_testkit::conformance::Subject;
    use chat_testkit::redis_cluster::Reply;
    use chat_testkit::RedisCluster;

    struct Cluster {
        servers: RedisCluster,
        broker: RedisBroker,
    }

    #[async_trait]
    impl Subject for Cluster {
        fn broker(&self) -> &dyn Broker {
            &self.broker
        }

        async fn lose_history(&self) {
            blocking(|| {
                for port in self.servers.primaries() {
                    let reply = self.servers.command(port, &["FLUSHALL"]);
                    assert!(reply.is_ok(), "FLUSHALL on port {port} answered {reply}");
                }
            });
        }

        async fn interrupt_deliveries(&self) {
            let killed: i64 = blocking(|| {
                let ports = self.servers.ports();
                ports
                    .into_iter()
                    .map(|port| match self.servers.command(port, &["CLIENT", "KILL", "TYPE", "pubsub"]) {
                        Reply::Integer(n) => n,
                        other => panic!("CLIENT KILL TYPE pubsub on port {port} answered {other}"),
                    })
                    .sum()
            });
            assert!(killed > 0, "no subscription connection to drop on any node of the cluster");
        }
    }

    chat_testkit::broker_conformance!(async {
        let servers = blocking(|| RedisCluster::start(3, 0));
        let broker = super::common::broker_at(&servers.url(), "conf:");
        Cluster { servers, broker }
    });
}

// ---------------------------------------------------------------------------------------------
// One order across engines, rooms on every shard.

/// The next `n` stored messages of each of `rooms` (other events skipped): (seq, body) per room.
/// Reads every event of the client, whatever its room, so that no room's messages are skipped
/// while another's are awaited.
async fn stored_messages(client: &mut Client, rooms: &[String], n: usize) -> HashMap<String, Vec<(u64, Value)>> {
    let mut got: HashMap<String, Vec<(u64, Value)>> = rooms.iter().map(|r| (r.clone(), Vec::new())).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.values().any(|m| m.len() < n) {
        let Ok(event) = tokio::time::timeout_at(deadline, client.next_event()).await else {
            let counts: BTreeMap<_, _> = got.iter().map(|(r, m)| (r.clone(), m.len())).collect();
            panic!("fewer than {n} messages in some room within {WAIT:?}: {counts:?}");
        };
        if let Event::Message(m) = event.expect("the connection is open") {
            if let (Some(seq), Some(list)) = (m.seq, got.get_mut(&m.room)) {
                list.push((seq, m.body));
            }
        }
    }
    got
}

/// `nodes` engines on one cluster, two members on each, in three rooms served by the three
/// primaries; everyone sends to every room at once. In each room every member sees every
/// message once, seqs 1..=total in order, and the same message under each seq.
async fn one_order(nodes: usize) {
    let cluster = blocking(|| RedisCluster::start(3, 0));
    let url = cluster.url();
    let shards = blocking(|| rooms_on_every_shard(&cluster, "order"));
    let rooms: Vec<String> = shards.iter().map(|(room, _)| room.clone()).collect();
    let prefix = format!("order{nodes}:");
    let mut engines = Vec::new();
    for i in 0..nodes {
        engines.push(engine_at(&url, &prefix, &format!("n{i}")).await);
    }
    let mut clients = Vec::new();
    for (i, e) in engines.iter().enumerate() {
        for j in 0..2 {
            let (client, _task) = connect(e, &format!("u{i}{j}")).await;
            for room in &rooms {
                assert_eq!(client.join(room, None).await.expect("join").seq, 0, "{room} is new");
            }
            clients.push(client);
        }
    }
    const EACH: usize = 10;
    let total = EACH * clients.len();
    let sends = clients.iter().enumerate().map(|(c, client)| {
        let rooms = &rooms;
        async move {
            for k in 0..EACH {
                for room in rooms {
                    let seq = client.send(room, json!({"c": c, "k": k})).await.expect("send");
                    assert!(seq.is_some(), "a stored message has a seq");
                }
            }
        }
    });
    join_all(sends).await;
    let mut seen = Vec::new();
    for client in &mut clients {
        let got = stored_messages(client, &rooms, total).await;
        for (room, messages) in &got {
            let seqs: Vec<u64> = messages.iter().map(|(seq, _)| *seq).collect();
            assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "{room}");
        }
        seen.push(got);
    }
    for room in &rooms {
        for other in &seen[1..] {
            assert_eq!(other[room], seen[0][room], "{room}: every member sees the same message under each seq");
        }
        for c in 0..clients.len() {
            let ks: Vec<_> = seen[0][room].iter().filter(|(_, b)| b["c"] == c).map(|(_, b)| b["k"].clone()).collect();
            assert_eq!(ks, (0..EACH).map(|k| json!(k)).collect::<Vec<_>>(), "{room}: one sender's order is kept");
        }
    }
    for client in &clients {
        client.sync().await.expect("ping");
    }
    for client in &mut clients {
        while let Some(frame) = client.try_next_frame() {
            assert!(!frame.starts_with(br#"{"type":"message""#), "duplicate delivery: {frame:?}");
        }
    }
    for e in &engines {
        e.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_one_order_on_every_shard() {
    one_order(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_order_on_every_shard() {
    one_order(3).await;
}

// ---------------------------------------------------------------------------------------------
// Clients sending through faults, and the check of what every member saw.

/// How far the sending clients have got: sends tried and failed (`unavailable`), per room, and
/// acknowledged, per room (in the order of [`World::rooms`]).
#[derive(Clone, Debug, Default)]
struct Progress {
    attempts: usize,
    failures: Vec<usize>,
    acks: Vec<usize>,
}

/// An acknowledged send.
#[derive(Clone, Debug)]
struct Ack {
    sender: String,
    room: String,
    id: String,
    seq: u64,
    /// When it was first tried.
    issued: Instant,
}

/// What a sending client did; its client, to read what it received as a member.
struct SenderLog {
    name: String,
    client: Client,
    acks: Vec<Ack>,
    /// Every message id it tried to send.
    attempted: HashSet<String>,
    /// The ids of messages sent without a key that got `unavailable` at least once: the node
    /// may have stored one before it gave up, so their retry may store them twice (ids sent
    /// with a key never are).
    unkeyed_retried: HashSet<String>,
}

/// Sends `id` (its body `{"id": id}`, its idempotency key `id` when `keyed`) to `room` until it
/// is acknowledged, trying again while the node answers `unavailable`; panics on any other
/// error, or when it is still unavailable after [`OUTAGE`]. Returns its seq.
async fn send_until_acknowledged(client: &Client, room: &str, id: &str, keyed: bool, mut failed: impl FnMut()) -> u64 {
    let deadline = Instant::now() + OUTAGE;
    loop {
        match client.send_with(room, json!({ "id": id }), keyed.then_some(id), false).await {
            Ok(Some(seq)) => return seq,
            Ok(None) => panic!("{id} to {room}: a stored send acknowledged without a seq"),
            Err(e) if e.code() == Some(ErrorCode::Unavailable) => {
                failed();
                assert!(Instant::now() < deadline, "{id} to {room}: still unavailable after {OUTAGE:?}");
                tokio::time::sleep(Duration::from_millis(20)).await; // the retry interval of a loop with a deadline
            }
            Err(e) => panic!("{id} to {room}: {e}"),
        }
    }
}

/// The sending client `name`: message after message to `rooms` in turn, every other one with an
/// idempotency key, at [`PACE`], each retried until acknowledged, until `stop`.
async fn keep_sending(
    client: Client,
    name: String,
    rooms: Vec<String>,
    stop: Arc<AtomicBool>,
    progress: Arc<watch::Sender<Progress>>,
) -> SenderLog {
    let mut log = SenderLog {
        name: name.clone(),
        client,
        acks: Vec::new(),
        attempted: HashSet::new(),
        unkeyed_retried: HashSet::new(),
    };
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await; // pacing the workload
        let r = k % rooms.len();
        let room = &rooms[r];
        let id = format!("{name}-{k}");
        let keyed = k % 2 == 0;
        log.attempted.insert(id.clone());
        let issued = Instant::now();
        let mut retried = false;
        let seq = send_until_acknowledged(&log.client, room, &id, keyed, || {
            retried = true;
            progress.send_modify(|p| {
                p.attempts += 1;
                p.failures[r] += 1;
            });
        })
        .await;
        if retried && !keyed {
            log.unkeyed_retried.insert(id.clone());
        }
        progress.send_modify(|p| {
            p.attempts += 1;
            p.acks[r] += 1;
        });
        log.acks.push(Ack { sender: name.clone(), room: room.clone(), id, seq, issued });
        k += 1;
    }
    log
}

/// What one member received in one room between two resets: the epoch, the seq it was owed
/// messages after, and (seq, message id) of each stored message, in order.
#[derive(Debug)]
struct Segment {
    epoch: String,
    from: u64,
    got: Vec<(u64, String)>,
}

impl Segment {
    fn describe(&self) -> String {
        let first = self.got.first().map(|g| g.0);
        let last = self.got.last().map(|g| g.0);
        format!("epoch {} from {}: {} messages, seqs {first:?}..{last:?}", self.epoch, self.from, self.got.len())
    }
}

/// A member and what it received in each room, reset by reset.
struct MemberLog {
    name: String,
    rooms: BTreeMap<String, Vec<Segment>>,
}

impl MemberLog {
    /// Takes one event down.
    fn record(&mut self, event: Event) {
        match event {
            Event::Message(m) => {
                let (Some(seq), Some(segments)) = (m.seq, self.rooms.get_mut(&m.room)) else { return };
                let id = m.body["id"].as_str().unwrap_or("<no id>").to_owned();
                segments.last_mut().expect("a segment").got.push((seq, id));
            }
            Event::Reset(r) => {
                if let Some(segments) = self.rooms.get_mut(&r.room) {
                    segments.push(Segment { epoch: r.epoch, from: r.seq, got: Vec::new() });
                }
            }
            Event::Bye(bye) => panic!("{}: the server closed the session: {bye:?}", self.name),
            _ => {}
        }
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        for (room, segments) in &self.rooms {
            let parts: Vec<String> = segments.iter().map(Segment::describe).collect();
            let _ = write!(out, "\n  {room}: {}", parts.join("; then reset to "));
        }
        out
    }
}

/// Reads `client`'s events into a log until every room's current epoch holds every one of
/// `markers`, then everything the server sent before a ping round trip (so that a duplicate
/// following the markers is seen too). Panics after `within`.
async fn collect(
    name: &str,
    client: &mut Client,
    joined: &BTreeMap<String, (String, u64)>,
    markers: &[String],
    within: Duration,
) -> MemberLog {
    let rooms = joined
        .iter()
        .map(|(room, (epoch, seq))| (room.clone(), vec![Segment { epoch: epoch.clone(), from: *seq, got: Vec::new() }]))
        .collect();
    let mut log = MemberLog { name: name.to_owned(), rooms };
    let done = |log: &MemberLog| {
        log.rooms.values().all(|segments| {
            let current = segments.last().expect("a segment");
            markers.iter().all(|marker| current.got.iter().any(|(_, id)| id == marker))
        })
    };
    let deadline = tokio::time::Instant::now() + within;
    while !done(&log) {
        match tokio::time::timeout_at(deadline, client.next_event()).await {
            Ok(event) => log.record(event.unwrap_or_else(|e| panic!("{name}: {e}"))),
            Err(_) => panic!("{name}: not every marker in every room within {within:?}:{}", log.describe()),
        }
    }
    client.sync().await.unwrap_or_else(|e| panic!("{name}: ping: {e}"));
    while let Some(frame) = client.try_next_frame() {
        log.record(Event::parse(&frame).unwrap_or_else(|e| panic!("{name}: {e}")));
    }
    log
}

/// Two engines on one cluster. On each, a client that keeps sending to every room
/// ([`keep_sending`]) and one that only listens; all four are members of every room from
/// before the first send.
struct World {
    engines: Vec<Engine>,
    rooms: Vec<String>,
    listeners: Vec<(String, Client)>,
    /// Each member's (epoch, seq) at its join, per room.
    joined: HashMap<String, BTreeMap<String, (String, u64)>>,
    stop: Arc<AtomicBool>,
    progress: watch::Receiver<Progress>,
    senders: Vec<JoinHandle<SenderLog>>,
}

impl World {
    async fn start(url: &str, prefix: &str, rooms: &[String]) -> World {
        let rooms = rooms.to_vec();
        let zero = Progress { attempts: 0, failures: vec![0; rooms.len()], acks: vec![0; rooms.len()] };
        let (progress_tx, progress) = watch::channel(zero);
        let progress_tx = Arc::new(progress_tx);
        let stop = Arc::new(AtomicBool::new(false));
        let mut world = World {
            engines: Vec::new(),
            rooms: rooms.clone(),
            listeners: Vec::new(),
            joined: HashMap::new(),
            stop: stop.clone(),
            progress,
            senders: Vec::new(),
        };
        let mut sending = Vec::new();
        for node in ["a", "b"] {
            let engine = engine_at(url, prefix, node).await;
            for role in ["sender", "listener"] {
                let name = format!("{role}-{node}");
                let (client, _task) = connect(&engine, &name).await;
                let mut positions = BTreeMap::new();
                for room in &rooms {
                    let joined = client.join(room, None).await.unwrap_or_else(|e| panic!("{name} joins {room}: {e}"));
                    assert_eq!(joined.seq, 0, "{room} is new");
                    positions.insert(room.clone(), (joined.epoch, joined.seq));
                }
                world.joined.insert(name.clone(), positions);
                if role == "sender" {
                    sending.push((client, name));
                } else {
                    world.listeners.push((name, client));
                }
            }
            world.engines.push(engine);
        }
        for (client, name) in sending {
            let task = keep_sending(client, name, rooms.clone(), stop.clone(), progress_tx.clone());
            world.senders.push(tokio::spawn(task));
        }
        world
    }

    /// The index of `room` in [`Progress`]'s lists.
    fn index(&self, room: &str) -> usize {
        self.rooms.iter().position(|r| r == room).expect("a room of the world")
    }

    /// The progress so far.
    fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Waits until `done` holds of the senders' progress; panics after `within`.
    async fn wait(&mut self, what: &str, within: Duration, done: impl FnMut(&Progress) -> bool) {
        let waited = tokio::time::timeout(within, self.progress.wait_for(done)).await.map(|r| r.map(drop));
        match waited {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("the senders stopped while waiting for {what}: {:?}", self.progress()),
            Err(_) => panic!("timed out after {within:?} waiting for {what}: {:?}", self.progress()),
        }
    }

    /// Stops the senders; each then sends a marker (`<sender>-done`, with its key) to every
    /// room, and every member reads until it has every marker in the current epoch of every
    /// room: live delivery works everywhere. Returns what everyone did and saw.
    async fn finish(mut self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut senders = Vec::new();
        for task in std::mem::take(&mut self.senders) {
            match task.await {
                Ok(log) => senders.push(log),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("a sender was cancelled: {e}"),
            }
        }
        let markers: Vec<String> = senders.iter().map(|s| format!("{}-done", s.name)).collect();
        for (sender, marker) in senders.iter_mut().zip(&markers) {
            sender.attempted.insert(marker.clone());
            for room in &self.rooms {
                let issued = Instant::now();
                let seq = send_until_acknowledged(&sender.client, room, marker, true, || {}).await;
                let ack = Ack { sender: sender.name.clone(), room: room.clone(), id: marker.clone(), seq, issued };
                sender.acks.push(ack);
            }
        }
        let mut members = Vec::new();
        for sender in &mut senders {
            let joined = &self.joined[&sender.name];
            members.push(collect(&sender.name, &mut sender.client, joined, &markers, WAIT).await);
        }
        for (name, client) in &mut self.listeners {
            members.push(collect(name, client, &self.joined[name.as_str()], &markers, WAIT).await);
        }
        for engine in &self.engines {
            engine.shutdown().await;
        }
        Outcome { senders, members, progress: self.progress() }
    }
}

/// What the clients of a [`World`] did and saw.
struct Outcome {
    senders: Vec<SenderLog>,
    members: Vec<MemberLog>,
    progress: Progress,
}

impl Outcome {
    /// Checks what every member saw, and panics with every violation found:
    ///
    /// * in each room, between resets, seqs follow each other from where the member joined (or
    ///   from 0 after a reset), without a gap or a duplicate; a message appears once (one sent
    ///   without a key and retried may have been stored twice: its two copies are allowed);
    /// * every message received was sent by a client;
    /// * all members agree on the message under each seq of each epoch;
    /// * a member that got no `reset` in a room got every message acknowledged there, under
    ///   the seq acknowledged; with `resets` false, no room may announce one;
    /// * after a reset, a member's current epoch holds every message acknowledged in the room
    ///   that was sent after `settled` (the fault was over): only messages sent before it may
    ///   have been lost with the history the new epoch does not hold, and the reset announced it.
    ///
    /// Returns how many acknowledged messages were announced lost (summed over members).
    fn check(&self, settled: Instant, resets: bool) -> usize {
        let mut violations: Vec<String> = Vec::new();
        let attempted: HashSet<&str> =
            self.senders.iter().flat_map(|s| s.attempted.iter().map(String::as_str)).collect();
        let unkeyed_retried: HashSet<&str> =
            self.senders.iter().flat_map(|s| s.unkeyed_retried.iter().map(String::as_str)).collect();
        let acks: Vec<&Ack> = self.senders.iter().flat_map(|s| &s.acks).collect();
        // (room, epoch, seq) -> (message id, member), over every member.
        let mut carried: HashMap<(&str, &str, u64), (&str, &str)> = HashMap::new();
        let mut resets_seen = 0;
        let mut announced_lost = 0;
        for member in &self.members {
            let who = &member.name;
            for (room, segments) in &member.rooms {
                resets_seen += segments.len() - 1;
                if !resets && segments.len() > 1 {
                    violations.push(format!("{who}: {room} was reset:{}", member.describe()));
                }
                for segment in segments {
                    let mut expected = segment.from + 1;
                    let mut ids: HashSet<&str> = HashSet::new();
                    for (seq, id) in &segment.got {
                        if *seq != expected {
                            let what = if *seq < expected { "a duplicate or backwards" } else { "a gap" };
                            violations.push(format!(
                                "{who}: {what} in {room} epoch {}: seq {seq} ({id}) where {expected} was due",
                                segment.epoch
                            ));
                        }
                        expected = seq + 1;
                        if !attempted.contains(id.as_str()) {
                            violations.push(format!("{who}: {room} seq {seq} carries {id}, which nobody sent"));
                        }
                        if !ids.insert(id) && !unkeyed_retried.contains(id.as_str()) {
                            violations.push(format!("{who}: {id} twice in {room} epoch {}", segment.epoch));
                        }
                        let key = (room.as_str(), segment.epoch.as_str(), *seq);
                        match carried.get(&key) {
                            Some((other, by)) if other != id => violations.push(format!(
                                "{room} epoch {} seq {seq}: {id} for {who}, {other} for {by}",
                                segment.epoch
                            )),
                            Some(_) => {}
                            None => {
                                carried.insert(key, (id, who));
                            }
                        }
                    }
                }
                let current = segments.last().expect("a segment");
                for ack in acks.iter().filter(|a| a.room == *room) {
                    if segments.len() == 1 {
                        let under = current.got.iter().find(|(seq, _)| *seq == ack.seq).map(|(_, id)| id.as_str());
                        if under != Some(ack.id.as_str()) {
                            violations.push(format!(
                                "{who}: {} was acknowledged to {} as seq {} of {room}, and no reset came, but this member got {under:?} under that seq",
                                ack.id, ack.sender, ack.seq
                            ));
                        }
                    } else if current.got.iter().any(|(_, id)| *id == ack.id) {
                        // Kept in the new epoch.
                    } else if ack.issued >= settled {
                        violations.push(format!(
                            "{who}: {} (acknowledged to {} as seq {} of {room}, sent after the fault was over) is not in the current epoch {}",
                            ack.id, ack.sender, ack.seq, current.epoch
                        ));
                    } else {
                        announced_lost += 1;
                    }
                }
            }
        }
        let acked = acks.len();
        println!(
            "{acked} acknowledged sends ({:?}), {} unavailable answers ({:?} per room), {resets_seen} resets seen by members, {announced_lost} acknowledged messages lost with an announced reset (summed over members)",
            self.progress.acks,
            self.progress.failures.iter().sum::<usize>(),
            self.progress.failures,
        );
        if !violations.is_empty() {
            let mut report = format!("{} violations:\n", violations.len());
            for v in violations.iter().take(30) {
                let _ = writeln!(report, "  {v}");
            }
            for member in &self.members {
                let _ = writeln!(report, "{}:{}", member.name, member.describe());
            }
            panic!("{report}");
        }
        announced_lost
    }
}

// ---------------------------------------------------------------------------------------------
// A slot migration under traffic.

/// A room's slot moves to another primary while clients send to it (and to rooms on the other
/// primaries): first step by step (a few keys at a time, sends going on between the steps,
/// while the source answers for what it still has and sends clients to the target for the
/// rest), then all at once back to where it was. Nothing is lost in a migration, so no room is
/// reset: every acknowledged message reaches every member once, in seq order, under the seq
/// acknowledged; and sends to the room are acknowledged and delivered live after each move
/// (the nodes subscribe again at the slot's new owner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_moved_to_another_primary_while_clients_send_loses_nothing() {
    let cluster = blocking(|| RedisCluster::start(3, 0));
    let shards = blocking(|| rooms_on_every_shard(&cluster, "moving"));
    let rooms: Vec<String> = shards.iter().map(|(room, _)| room.clone()).collect();
    let (room, source) = shards[0].clone();
    let target = shards[1].1;
    let slot = slot_of(&room);
    let mut world = World::start(&cluster.url(), "move:", &rooms).await;
    let r = world.index(&room);
    world.wait(&format!("10 acknowledgements in {room}"), WAIT, |p| p.acks[r] >= 10).await;

    let migration = blocking(|| cluster.begin_migration(slot, target));
    let mut moved = 0;
    loop {
        let attempts = world.progress().attempts;
        world.wait("two more sends while the slot is half moved", OUTAGE, |p| p.attempts >= attempts + 2).await;
        let keys = blocking(|| migration.move_keys(2));
        if keys.is_empty() {
            break;
        }
        moved += keys.len();
    }
    assert!(moved >= 3, "the room's keys moved: only {moved}");
    blocking(|| migration.finish());
    let acks = world.progress().acks[r];
    let what = format!("10 acknowledgements in {room} from port {target}");
    world.wait(&what, OUTAGE, |p| p.acks[r] >= acks + 10).await;

    blocking(|| cluster.migrate_slot(slot, source));
    let acks = world.progress().acks[r];
    let what = format!("10 acknowledgements in {room} back on port {source}");
    world.wait(&what, OUTAGE, |p| p.acks[r] >= acks + 10).await;
    let settled = Instant::now();
    let outcome = world.finish().await;
    outcome.check(settled, false);
}

// ---------------------------------------------------------------------------------------------
// Failovers under traffic.

/// A cluster of three primaries with a replica each, and a [`World`] sending to a room on every
/// shard; returns them with the room on the first primary and that primary's port.
async fn failover_world(prefix: &str) -> (RedisCluster, World, String, u16) {
    let cluster = blocking(|| RedisCluster::start(3, 1));
    let shards = blocking(|| rooms_on_every_shard(&cluster, "fo"));
    let rooms: Vec<String> = shards.iter().map(|(room, _)| room.clone()).collect();
    let (room, primary) = shards[0].clone();
    let mut world = World::start(&cluster.url(), prefix, &rooms).await;
    let r = world.index(&room);
    world.wait(&format!("10 acknowledgements in {room}"), WAIT, |p| p.acks[r] >= 10).await;
    (cluster, world, room, primary)
}

/// The primary serving a room is killed while clients send to it (its replica has not
/// necessarily got the last writes). Sends to the room fail with `unavailable` until the
/// replica has taken over, then succeed again (retried with their keys). Every acknowledged
/// message reaches every member, or the room announces a new epoch (`reset`); live delivery
/// goes on at the new primary; and the killed node, restarted, comes back as a replica without
/// disturbing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_loses_no_acknowledged_message_silently() {
    let (mut cluster, mut world, room, primary) = failover_world("kill:").await;
    let r = world.index(&room);
    blocking(|| cluster.kill(primary));
    let failures = world.progress().failures[r];
    let what = format!("a send to {room} to fail while its primary is dead");
    world.wait(&what, OUTAGE, |p| p.failures[r] > failures).await;
    let new = blocking(|| cluster.wait_failover(primary));
    assert_ne!(new, primary);
    let settled = Instant::now();
    let acks = world.progress().acks[r];
    let what = format!("10 acknowledgements in {room} from the new primary on port {new}");
    world.wait(&what, OUTAGE, |p| p.acks[r] >= acks + 10).await;

    blocking(|| {
        cluster.restart(primary);
        cluster.wait_ready();
    });
    assert_eq!(blocking(|| cluster.replicas_of(new)), vec![primary], "the old primary is back as a replica");
    let acks = world.progress().acks[r];
    world.wait(&format!("10 more acknowledgements in {room}"), OUTAGE, |p| p.acks[r] >= acks + 10).await;
    let outcome = world.finish().await;
    outcome.check(settled, true);
}

/// The primary serving a room is frozen (SIGSTOP) for longer than it takes its replica to take
/// over, while clients send, then let go: it finds itself demoted and becomes the new
/// primary's replica (what it took meanwhile, if anything, is gone). Every acknowledged
/// message reaches every member, or the room announces a new epoch; live delivery goes on at
/// the new primary (the nodes' subscriptions at the frozen one went silent without closing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_frozen_past_its_failover_loses_no_acknowledged_message_silently() {
    let (mut cluster, mut world, room, primary) = failover_world("pause:").await;
    let r = world.index(&room);
    blocking(|| cluster.pause(primary));
    let failures = world.progress().failures[r];
    let what = format!("a send to {room} to fail while its primary is frozen");
    world.wait(&what, OUTAGE, |p| p.failures[r] > failures).await;
    let new = blocking(|| cluster.wait_failover(primary));
    let acks = world.progress().acks[r];
    let what = format!("10 acknowledgements in {room} from the new primary on port {new}");
    world.wait(&what, OUTAGE, |p| p.acks[r] >= acks + 10).await;

    blocking(|| {
        cluster.resume(primary);
        cluster.wait_ready();
    });
    assert_eq!(blocking(|| cluster.replicas_of(new)), vec![primary], "the old primary stepped down");
    let settled = Instant::now();
    let acks = world.progress().acks[r];
    world.wait(&format!("10 more acknowledgements in {room}"), OUTAGE, |p| p.acks[r] >= acks + 10).await;
    let outcome = world.finish().await;
    outcome.check(settled, true);
}

/// The replication offset a Redis node has reached (`master_repl_offset` of `INFO
/// replication`: what a primary has written, what a replica has applied).
fn replication_offset(cluster: &RedisCluster, port: u16) -> u64 {
    let info = cluster.command(port, &["INFO", "replication"]);
    let text = info.text().unwrap_or_else(|| panic!("INFO replication on port {port} answered {info}"));
    let line = text.lines().find_map(|l| l.trim().strip_prefix("master_repl_offset:"));
    line.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no master_repl_offset on port {port}:\n{text}"))
}

/// The replica froze and its primary dropped it, then took three more messages, which the
/// replica never got; the primary dies and that replica takes over. Its history is older than
/// what the nodes delivered, so the room starts a new epoch holding what the replica has
/// (1..5): members on both nodes get `reset`, then that history and the next sends, and a
/// client coming back with the old epoch is told it did not recover. (The cluster's version of
/// tests/sentinel.rs's `a_failover_to_a_replica_that_missed_writes_starts_a_new_epoch`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_replica_that_missed_writes_starts_a_new_epoch() {
    let mut cluster = blocking(|| RedisCluster::start(3, 1));
    let room = "r";
    let primary = blocking(|| cluster.primary_of_slot(slot_of(room)));
    let replica = blocking(|| cluster.replicas_of(primary))[0];
    let url = cluster.url();
    let a = engine_at(&url, "missed:", "a").await;
    let b = engine_at(&url, "missed:", "b").await;
    let (mut alice, _ta) = connect(&a, "alice").await;
    let (mut bob, _tb) = connect(&b, "bob").await;
    let old = alice.join(room, None).await.expect("join").epoch;
    bob.join(room, None).await.expect("join");
    for n in 1..=5 {
        assert_eq!(alice.send(room, json!(n)).await.expect("send"), Some(n));
    }
    for c in [&mut alice, &mut bob] {
        assert_eq!(common::seqs(&common::messages(c, room, 5, WAIT).await), vec![1, 2, 3, 4, 5]);
    }
    let written = blocking(|| replication_offset(&cluster, primary));
    common::eventually("the replica to have every write", WAIT, || async {
        (blocking(|| replication_offset(&cluster, replica)) >= written).then_some(())
    })
    .await;
    // The replica freezes and the primary drops it (a frozen replica would still receive what
    // the primary sends, in its socket buffer): what comes next exists only on the primary.
    blocking(|| {
        cluster.pause(replica);
        let dropped = cluster.command(primary, &["CLIENT", "KILL", "TYPE", "replica"]);
        assert_eq!(dropped, Reply::Integer(1), "CLIENT KILL TYPE replica on port {primary}");
    });
    for n in 6..=8 {
        assert_eq!(alice.send(room, json!(n)).await.expect("send"), Some(n));
    }
    for c in [&mut alice, &mut bob] {
        assert_eq!(common::seqs(&common::messages(c, room, 3, WAIT).await), vec![6, 7, 8]);
    }
    // The primary dies; the replica wakes up without 6..8 and takes over.
    let new = blocking(|| {
        cluster.kill(primary);
        cluster.resume(replica);
        cluster.wait_failover(primary)
    });
    assert_eq!(new, replica);
    let seq = blocking(|| cluster.command(new, &["GET", &format!("missed:{{{room}}}:s")]));
    assert_eq!(seq, Reply::Bulk(b"5".to_vec()), "the new primary missed 6..8");

    let seq =
        common::eventually("a send after the failover", OUTAGE, || async { bob.send(room, json!("new")).await.ok() })
            .await;
    assert_eq!(seq, Some(6), "after the replica's 1..5, in a new epoch");
    for c in [&mut alice, &mut bob] {
        let reset = common::next_matching(c, WAIT, |e| common::reset(e).filter(|r| r.room == room)).await;
        assert_ne!(reset.epoch, old, "not seq 6 again in the old epoch");
        let expected: Vec<_> = (1..=5).map(|n| (n, json!(n))).chain([(6, json!("new"))]).collect();
        assert_eq!(common::messages(c, room, 6, WAIT).await, expected);
    }
    assert_eq!(alice.send(room, json!("more")).await.expect("send"), Some(7));
    for c in [&mut alice, &mut bob] {
        assert_eq!(common::messages(c, room, 1, WAIT).await, vec![(7, json!("more"))]);
    }
    let (carol, _tc) = connect(&a, "carol").await;
    let back = carol.join(room, Some(chat_core::protocol::Since::new(&old, 8))).await.expect("join");
    assert!(!back.recovered, "{back:?}");
    a.shutdown().await;
    b.shutdown().await;
}
