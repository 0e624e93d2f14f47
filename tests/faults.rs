//! The history checker (issue 10 item 5): a seeded random workload on real `chat-server`
//! processes while faults are injected, then a check of everything every client saw.
//!
//! K nodes share a real `redis-server` (with a data directory, so it can come back from a
//! snapshot); M clients, half over TCP and half over WebSocket, join and leave rooms, send with
//! idempotency keys, resend, drop their connection and come back with `since`. Meanwhile a
//! fault task kills nodes (SIGKILL, then a restart), freezes Redis for longer than the nodes'
//! command timeout (SIGSTOP / SIGCONT), kills Redis and restarts it from its last `SAVE`, and
//! cuts client connections. After a settle phase without faults, every client's log is checked:
//! acknowledged messages reached every member that stayed, seqs are gap-free within an epoch,
//! `since` replays are exact (or `recovered: false`), no message was invented or stored twice,
//! and an acknowledged message is lost only to a fault that can lose it. The same checker runs
//! on Redis under Sentinel (a primary, a replica, three sentinels: the primary is killed or
//! frozen and the replica takes over), on a Redis Cluster (three primaries with a replica each:
//! a primary is killed and its replica takes over), on NATS
//! JetStream (one server frozen, killed and restarted; a three-server cluster storing each
//! message on all three, one server killed at a time) and on one node with the in-memory
//! broker; two more tests replay bugs it found, deterministically (docs/faults.md).
//!
//! `CHAT_FAULTS_SEED` replays a run (the seed is printed first, with the fault schedule);
//! `CHAT_FAULTS_SECS` sets the length of the fault phase (default 60 s on Redis, half of it
//! under Sentinel, on a Redis Cluster and on the memory broker). A failure prints the seed, the faults with their
//! times and the offending client's log. Needs `redis-server` and `nats-server` on the PATH.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chat_core::client::{Client, Event, HistoryQuery, Message};
use chat_core::protocol::Since;
use chat_testkit::RedisCluster;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Barrier, Notify};

/// Clients per run: even ones speak TCP, odd ones WebSocket.
const CLIENTS: usize = 8;
/// The rooms they wander between.
const ROOMS: [&str; 3] = ["r0", "r1", "r2"];
/// The nodes' presence expiry (short, so dead nodes' sessions go quickly).
const PRESENCE_TTL_MS: &str = "2000";
/// A request not answered within this is abandoned with its connection (the nodes' Redis
/// commands time out after 2 s; a join makes a few of them, a session's end bounds its leaves).
const REQUEST_LIMIT: Duration = Duration::from_secs(12);
/// How long a client may take to come back and catch up once the faults are over: one
/// [`WAIT`] per thing awaited (a connection, a join, a resend, a marker), a few of each.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// Runs one test at a time: both share the two cores of a CI machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// A seeded random number generator (splitmix64): small, and the same sequence on every machine.

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..hi` milliseconds.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// A generator of its own for a part of the run (a client, the fault schedule).
    fn fork(&mut self) -> Rng {
        Rng(self.next())
    }
}

// ---------------------------------------------------------------------------------------------
// What each client writes down.

/// A room's position as a client knows it: (epoch, last seq seen).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pos {
    epoch: String,
    seq: u64,
}

/// One thing a client did or saw. Some fields are only read through `Debug`, in the log
/// excerpts of a failure report.
#[derive(Debug, Clone)]
#[allow(dead_code)]
enum Ev {
    Connected {
        node: String,
    },
    ConnectFailed {
        error: String,
    },
    JoinIssued {
        room: String,
        since: Option<Pos>,
    },
    Joined {
        room: String,
        epoch: String,
        seq: u64,
        recovered: bool,
        since: Option<Pos>,
        issued: Instant,
    },
    JoinFailed {
        room: String,
        error: String,
    },
    Left {
        room: String,
    },
    LeaveFailed {
        room: String,
        error: String,
    },
    SendIssued {
        room: String,
        id: String,
        resend: bool,
    },
    /// `issued_in` / `replied_in`: the client's epoch of the room when it sent / got the reply.
    Sent {
        room: String,
        id: String,
        seq: Option<u64>,
        issued_in: Option<String>,
        replied_in: Option<String>,
    },
    SendFailed {
        room: String,
        id: String,
        error: String,
    },
    Message {
        room: String,
        seq: Option<u64>,
        from: String,
        id: Option<String>,
    },
    Reset {
        room: String,
        epoch: String,
        seq: Option<u64>,
    },
    Latest {
        room: String,
        epoch: String,
        seq: u64,
    },
    Bye {
        reason: String,
    },
    ServerError {
        code: String,
    },
    Disconnected {
        why: String,
    },
    Note(String),
}

#[derive(Debug, Clone)]
struct Entry {
    at: Instant,
    ev: Ev,
}

/// How a request ended.
enum Outcome {
    Reply(Value),
    Error(String),
    /// The connection is gone (closed, cut, or abandoned after [`REQUEST_LIMIT`]).
    Lost,
}

// ---------------------------------------------------------------------------------------------
// The system under test: nodes and the broker behind them.

/// Where a node listens.
#[derive(Debug, Clone)]
struct NodeAddr {
    tcp: SocketAddr,
    ws: String,
}

/// The store the nodes keep the conversation in.
enum StoreSide {
    /// PostgreSQL: a server of the test's own (so it can be frozen and killed) and one database
    /// on it (dropped, the database removed, before the server stops).
    Postgres { db: chat_testkit::PgDatabase, server: chat_testkit::PgServer },
    /// A SQLite file in a directory of the test's own (one node only).
    Sqlite { dir: tempfile::TempDir },
}

impl StoreSide {
    fn postgres() -> StoreSide {
        let server = chat_testkit::PgServer::start();
        StoreSide::Postgres { db: chat_testkit::PgDatabase::create_on(&server.url()), server }
    }

    fn sqlite() -> StoreSide {
        StoreSide::Sqlite { dir: tempfile::tempdir().expect("a directory for the SQLite store") }
    }

    /// What `--store` says.
    fn url(&self) -> String {
        match self {
            StoreSide::Postgres { db, .. } => db.url(),
            StoreSide::Sqlite { dir } => format!("sqlite:{}", dir.path().join("chat.db").display()),
        }
    }

    fn postgres_server(&mut self) -> Option<&mut chat_testkit::PgServer> {
        match self {
            StoreSide::Postgres { server, .. } => Some(server),
            StoreSide::Sqlite { .. } => None,
        }
    }
}

/// The Redis the nodes share. Behind one struct so that a Sentinel-managed primary and
/// replicas can take its place (a failover is then one more fault).
struct RedisSide {
    server: Redis,
}

impl RedisSide {
    fn start() -> RedisSide {
        RedisSide { server: Redis::start_persistent() }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// `SAVE`: the snapshot a later [`crash_and_restart`](Self::crash_and_restart) comes back to.
    async fn save(&self) -> Result<(), String> {
        let port = self.server.port();
        let answer = tokio::time::timeout(WAIT, async move {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
            stream.write_all(b"SAVE\r\n").await.map_err(|e| e.to_string())?;
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(line)
        })
        .await
        .map_err(|_| "no answer to SAVE".to_owned())??;
        if answer.starts_with("+OK") {
            Ok(())
        } else {
            Err(format!("SAVE answered {answer:?}"))
        }
    }

    fn pause(&self) {
        self.server.pause();
    }

    fn resume(&self) {
        self.server.resume();
    }

    /// SIGKILL, then a start from the last snapshot (empty without one).
    fn crash_and_restart(&mut self) {
        tokio::task::block_in_place(|| self.server.restart());
    }
}

/// A Redis primary and its replica under three sentinels (quorum 2), which the nodes find
/// through a `redis+sentinel://` URL. Which server is the primary changes with each failover.
struct SentinelSide {
    servers: [Redis; 2],
    sentinels: Vec<Redis>,
}

/// The name the sentinels monitor the primary under.
const SERVICE: &str = "faults";
/// How long a failover may take: the sentinels take a primary for down after 500 ms, agree,
/// elect a leader (a conflict costs their 2 s failover timeout before the next try), promote.
const FAILOVER: Duration = Duration::from_secs(30);

impl SentinelSide {
    async fn start() -> SentinelSide {
        let primary = Redis::start();
        let replica = Redis::start_replica_of(&primary);
        let sentinels: Vec<Redis> = (0..3).map(|_| Redis::start_sentinel(&primary, SERVICE, 2)).collect();
        let side = SentinelSide { servers: [primary, replica], sentinels };
        side.wait_until_ready().await;
        side
    }

    /// Waits until every sentinel knows the replica and the two other sentinels (until then a
    /// failover cannot happen), and the replica has what the primary has (until then a send
    /// that waits for it fails).
    async fn wait_until_ready(&self) {
        let primary = eventually("a primary the sentinels agree on", FAILOVER, || self.primary()).await;
        let port = self.servers[primary].port();
        eventually("the replica to be in sync", FAILOVER, || async {
            let acked = resp(port, &["WAIT", "1", "100"]).await?;
            (acked.first()? == "1").then_some(())
        })
        .await;
        for sentinel in &self.sentinels {
            eventually("the sentinels to know the replica and each other", FAILOVER, || async {
                let info = resp(sentinel.port(), &["SENTINEL", "MASTER", SERVICE]).await?;
                let field = |name: &str| info.iter().position(|f| f == name).and_then(|i| info.get(i + 1));
                let replicas = field("num-slaves")?.parse::<u32>().ok()?;
                (replicas >= 1 && field("num-other-sentinels")? == "2").then_some(())
            })
            .await;
        }
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port())).collect();
        format!("redis+sentinel://{}/{SERVICE}", hosts.join(","))
    }

    /// Which of the two servers the sentinels name the primary (as the first one answering says).
    async fn primary(&self) -> Option<usize> {
        for sentinel in &self.sentinels {
            if let Some(addr) = resp(sentinel.port(), &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE]).await {
                let port = addr.get(1)?.parse::<u16>().ok()?;
                return self.servers.iter().position(|s| s.port() == port);
            }
        }
        None
    }

    /// SIGKILL of the primary; once every sentinel names the other server, the killed one
    /// starts again, empty, as the new primary's replica (as an operator brings it back).
    async fn fail_over(&mut self) -> Result<String, String> {
        let old = self.primary().await.ok_or("no sentinel names a primary")?;
        tokio::task::block_in_place(|| self.servers[old].kill());
        let new = 1 - old;
        let replica = self.servers[new].port().to_string();
        eventually("every sentinel to name the replica the primary", FAILOVER, || async {
            for sentinel in &self.sentinels {
                let addr = resp(sentinel.port(), &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE]).await?;
                (addr.get(1) == Some(&replica)).then_some(())?;
            }
            Some(())
        })
        .await;
        let [a, b] = &mut self.servers;
        let (dead, primary) = if old == 0 { (a, &*b) } else { (b, &*a) };
        tokio::task::block_in_place(|| dead.restart_as_replica_of(primary));
        self.wait_until_ready().await;
        Ok(format!(
            "primary :{} killed (SIGKILL), :{} promoted; the old one back as a replica",
            self.servers[old].port(),
            self.servers[new].port()
        ))
    }

    /// SIGSTOP of the primary (a failover may follow: the sentinels take it for down after
    /// 500 ms), then SIGCONT after `hold`.
    async fn pause_primary(&self, hold: Duration) -> String {
        let Some(i) = self.primary().await else { return "no sentinel names a primary".to_owned() };
        self.servers[i].pause();
        tokio::time::sleep(hold).await; // holding the fault for its duration
        self.servers[i].resume();
        format!("primary :{} paused (SIGSTOP) for {hold:?}, then SIGCONT", self.servers[i].port())
    }
}

/// A Redis Cluster of three primaries with a replica each, which the nodes find through a
/// `redis+cluster://` URL naming every cluster node. The three [`ROOMS`] live on three different
/// primaries (their hash tags fall in the three primaries' slot ranges), so a primary's death
/// always hits one room. Which nodes are the primaries changes with each failover.
struct RedisClusterSide {
    servers: RedisCluster,
}

impl RedisClusterSide {
    fn start() -> RedisClusterSide {
        let servers = tokio::task::block_in_place(|| RedisCluster::start(3, 1));
        let owners: BTreeSet<u16> =
            ROOMS.iter().map(|room| servers.primary_of_slot(RedisCluster::key_slot(format!("{{{room}}}")))).collect();
        assert_eq!(owners.len(), ROOMS.len(), "the rooms {ROOMS:?} are meant to live on three primaries: {owners:?}");
        RedisClusterSide { servers }
    }

    fn url(&self) -> String {
        self.servers.url()
    }

    /// The port of the primary serving `room`'s keys.
    fn primary_of(&self, room: &str) -> u16 {
        self.servers.primary_of_slot(RedisCluster::key_slot(format!("{{{room}}}")))
    }

    /// SIGKILL of the primary serving `room`; once its replica has taken over (every node
    /// agrees), the killed one starts again, empty, and comes back as the new primary's replica.
    /// Blocking: run off the runtime's other thread.
    fn kill_primary(&mut self, room: &str) -> String {
        let old = self.primary_of(room);
        self.servers.kill(old);
        let new = self.servers.wait_failover(old);
        self.servers.restart(old);
        self.servers.wait_ready();
        format!("primary :{old} of {room} killed (SIGKILL), its replica :{new} took over; :{old} back as its replica")
    }
}

/// One command to a Redis or Sentinel on `port`, its reply flattened to strings (bulk strings
/// and integers of an array, or the one value); `None` when it does not answer in time.
async fn resp(port: u16, args: &[&str]) -> Option<Vec<String>> {
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        let _ = write!(request, "${}\r\n{a}\r\n", a.len());
    }
    tokio::time::timeout(Duration::from_secs(2), async move {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut reader = BufReader::new(stream);
        let mut out = Vec::new();
        let mut pending = 1usize; // values still to read
        while pending > 0 {
            let mut line = String::new();
            reader.read_line(&mut line).await.ok()?;
            let line = line.trim_end();
            pending -= 1;
            match line.as_bytes().first()? {
                b'*' => pending += line[1..].parse::<usize>().unwrap_or(0),
                b'$' if line == "$-1" => {}
                b'$' => {
                    let mut value = String::new();
                    reader.read_line(&mut value).await.ok()?;
                    out.push(value.trim_end().to_owned());
                }
                b':' | b'+' => out.push(line[1..].to_owned()),
                _ => return None, // an error
            }
        }
        Some(out)
    })
    .await
    .ok()?
}

enum Backend {
    Redis(RedisSide),
    Sentinel(SentinelSide),
    Memory,
    /// One `nats-server -js` with file storage.
    Nats(NatsServer),
    /// Three `nats-server -js` as one JetStream cluster; the nodes store each message on all
    /// three (`--nats-replicas 3`) and know every server.
    NatsCluster(NatsCluster),
    /// A Redis Cluster of three primaries with a replica each.
    RedisCluster(RedisClusterSide),
}

/// The nodes (some may be down) and their broker. Clients find the live nodes' addresses in
/// [`Shared::nodes`].
struct Cluster {
    backend: Backend,
    /// The store every node keeps the conversation in, if any.
    store: Option<StoreSide>,
    nodes: Vec<Option<ChatServer>>,
    /// Every node process's stderr, for a failure report.
    logs: Vec<String>,
    starts: usize,
}

impl Cluster {
    async fn start(backend: Backend, store: Option<StoreSide>, count: usize, shared: &Shared) -> Cluster {
        let nodes = (0..count).map(|_| None).collect();
        let mut cluster = Cluster { backend, store, nodes, logs: Vec::new(), starts: 0 };
        for i in 0..count {
            cluster.start_node(i, shared).await;
        }
        cluster
    }

    async fn start_node(&mut self, i: usize, shared: &Shared) {
        let broker = match &self.backend {
            Backend::Redis(redis) => redis.url(),
            Backend::Sentinel(sentinel) => sentinel.url(),
            Backend::Memory => "memory".to_owned(),
            Backend::Nats(nats) => nats.url(),
            Backend::NatsCluster(cluster) => cluster.url(),
            Backend::RedisCluster(cluster) => cluster.url(),
        };
        let id = format!("n{i}");
        let args =
            ["--broker", &broker, "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--node-id", &id, "--presence-ttl-ms"];
        let mut args = args.to_vec();
        args.push(PRESENCE_TTL_MS);
        if let Backend::Sentinel(_) | Backend::RedisCluster(_) = self.backend {
            // `sent` once the replica has it too: a failover then loses no acknowledged message.
            args.extend(["--redis-replicas", "1"]);
        }
        if let Backend::NatsCluster(_) = self.backend {
            // `sent` once two of the three servers have a message.
            args.extend(["--nats-replicas", "3"]);
        }
        let store = self.store.as_ref().map(StoreSide::url);
        if let Some(store) = &store {
            args.extend(["--store", store]);
        }
        self.starts += 1;
        let node = ChatServer::start(&format!("faults-{id}-{}", self.starts), &args).await;
        self.logs.push(node.log.display().to_string());
        write(&shared.nodes)[i] = Some(NodeAddr { tcp: node.tcp, ws: node.ws.clone() });
        self.nodes[i] = Some(node);
    }

    fn redis(&mut self) -> Option<&mut RedisSide> {
        match &mut self.backend {
            Backend::Redis(redis) => Some(redis),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Faults.

#[derive(Debug, Clone)]
enum Fault {
    /// SIGKILL of a node; it starts again after `down`.
    KillNode { node: usize, down: Duration },
    /// SIGSTOP of Redis for `hold` (longer than the nodes' 2 s command timeout), then SIGCONT.
    PauseRedis { hold: Duration },
    /// `SAVE`: what a later restart comes back to.
    SaveRedis,
    /// SIGKILL of Redis and a start from its last snapshot.
    RestartRedis,
    /// SIGKILL of the primary under Sentinel: its replica takes over.
    FailoverRedis,
    /// These clients drop their sockets abruptly (whatever request is in flight).
    CutClients { clients: Vec<usize> },
    /// SIGSTOP of the store's PostgreSQL for `hold`, then SIGCONT.
    PauseStore { hold: Duration },
    /// SIGKILL of the store's PostgreSQL and a start on the same data (crash recovery).
    RestartStore,
    /// SIGSTOP of the NATS server for `hold` (longer than the nodes' 2 s call timeout).
    PauseNats { hold: Duration },
    /// SIGKILL of the NATS server and a start on the same storage.
    RestartNats,
    /// SIGKILL of one server of the JetStream cluster; it starts again after `down`.
    KillNatsServer { server: usize, down: Duration },
    /// SIGKILL of the Redis Cluster primary serving `ROOMS[room]`: its replica takes over, and
    /// the killed one comes back as the replica.
    KillClusterPrimary { room: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    KillNode,
    PauseRedis,
    SaveRedis,
    RestartRedis,
    FailoverRedis,
    CutClients,
    PauseStore,
    RestartStore,
    PauseNats,
    RestartNats,
    KillNatsServer,
    KillClusterPrimary,
}

impl Fault {
    fn random(kind: FaultKind, rng: &mut Rng, nodes: usize) -> Fault {
        match kind {
            FaultKind::KillNode => Fault::KillNode { node: rng.below(nodes as u64) as usize, down: rng.ms(200, 2000) },
            FaultKind::PauseRedis => Fault::PauseRedis { hold: rng.ms(2500, 3500) },
            FaultKind::SaveRedis => Fault::SaveRedis,
            FaultKind::RestartRedis => Fault::RestartRedis,
            FaultKind::FailoverRedis => Fault::FailoverRedis,
            FaultKind::PauseStore => Fault::PauseStore { hold: rng.ms(1000, 3000) },
            FaultKind::RestartStore => Fault::RestartStore,
            FaultKind::PauseNats => Fault::PauseNats { hold: rng.ms(2500, 3500) },
            FaultKind::RestartNats => Fault::RestartNats,
            FaultKind::KillNatsServer => {
                Fault::KillNatsServer { server: rng.below(3) as usize, down: rng.ms(500, 3000) }
            }
            FaultKind::KillClusterPrimary => Fault::KillClusterPrimary { room: rng.below(ROOMS.len() as u64) as usize },
            FaultKind::CutClients => {
                let n = 1 + rng.below(3);
                let clients: BTreeSet<usize> = (0..n).map(|_| rng.below(CLIENTS as u64) as usize).collect();
                Fault::CutClients { clients: clients.into_iter().collect() }
            }
        }
    }

    /// Whether the fault may lose stored messages (and so end an epoch).
    fn may_lose_messages(&self, cluster: &Cluster) -> bool {
        if cluster.store.is_some() {
            // With a store, acknowledged messages are committed there and a broker that lost
            // its state goes on from it. What still ends an epoch is a Redis that came back
            // older than a message some node delivered and the store lacks (ordered, never
            // committed: its sender got `unavailable` or no reply); the acknowledged messages
            // of the ended epoch stay in the store, but the new epoch's history does not show
            // them (docs/faults.md).
            return matches!(self, Fault::RestartRedis);
        }
        // Under Sentinel and in a Redis Cluster, replication is asynchronous: a failover (or a
        // pause long enough to cause one) may lose what the old primary had not passed on.
        match self {
            Fault::RestartRedis | Fault::FailoverRedis | Fault::KillClusterPrimary { .. } => true,
            Fault::PauseRedis { .. } => matches!(cluster.backend, Backend::Sentinel(_)),
            Fault::KillNode { .. } => matches!(cluster.backend, Backend::Memory),
            // JetStream acknowledges a message once its file store has it; a killed server
            // comes back with what it wrote (a killed process loses no written page), and a
            // cluster keeps a quorum's copy while one server is down.
            Fault::SaveRedis
            | Fault::CutClients { .. }
            | Fault::PauseStore { .. }
            | Fault::RestartStore
            | Fault::PauseNats { .. }
            | Fault::RestartNats
            | Fault::KillNatsServer { .. } => false,
        }
    }

    /// Injects the fault (waiting out its duration); says what was done.
    async fn inject(&self, cluster: &mut Cluster, shared: &Shared) -> String {
        match self {
            Fault::KillNode { node, down } => kill_node(cluster, shared, *node, *down).await,
            Fault::PauseRedis { hold } => pause_redis(cluster, *hold).await,
            Fault::SaveRedis => save_redis(cluster).await,
            Fault::RestartRedis => restart_redis(cluster),
            Fault::FailoverRedis => fail_over(cluster).await,
            Fault::CutClients { clients } => cut_clients(shared, clients),
            Fault::PauseStore { hold } => pause_store(cluster, *hold).await,
            Fault::RestartStore => restart_store(cluster),
            Fault::PauseNats { hold } => pause_nats(cluster, *hold).await,
            Fault::RestartNats => restart_nats(cluster),
            Fault::KillNatsServer { server, down } => kill_nats_server(cluster, *server, *down).await,
            Fault::KillClusterPrimary { room } => kill_cluster_primary(cluster, ROOMS[*room]),
        }
    }
}

async fn pause_nats(cluster: &mut Cluster, hold: Duration) -> String {
    let Backend::Nats(nats) = &cluster.backend else { return "no NATS server to pause".to_owned() };
    tokio::task::block_in_place(|| nats.pause());
    tokio::time::sleep(hold).await; // holding the fault for its duration
    nats.resume();
    format!("NATS paused (SIGSTOP) for {hold:?}, then SIGCONT")
}

fn restart_nats(cluster: &mut Cluster) -> String {
    let Backend::Nats(nats) = &mut cluster.backend else { return "no NATS server to restart".to_owned() };
    // Waits (a blocking wait, off the runtime's other threads) until it serves again.
    tokio::task::block_in_place(|| {
        nats.kill();
        nats.restart();
    });
    "NATS killed (SIGKILL) and restarted on its storage".to_owned()
}

async fn kill_nats_server(cluster: &mut Cluster, server: usize, down: Duration) -> String {
    let Backend::NatsCluster(nats) = &mut cluster.backend else { return "no NATS cluster".to_owned() };
    tokio::task::block_in_place(|| nats.server_mut(server).kill());
    tokio::time::sleep(down).await; // holding the fault for its duration
    tokio::task::block_in_place(|| {
        nats.server_mut(server).restart();
        nats.wait_ready();
    });
    format!("NATS server n{server} killed (SIGKILL), restarted after {down:?}")
}

fn kill_cluster_primary(cluster: &mut Cluster, room: &str) -> String {
    let Backend::RedisCluster(redis) = &mut cluster.backend else { return "no Redis Cluster".to_owned() };
    // Blocking waits (for the failover, the restart, the cluster to agree), off the runtime's
    // other thread, where the clients go on.
    tokio::task::block_in_place(|| redis.kill_primary(room))
}

async fn pause_store(cluster: &mut Cluster, hold: Duration) -> String {
    let Some(server) = cluster.store.as_mut().and_then(StoreSide::postgres_server) else {
        return "no database server to pause".to_owned();
    };
    server.pause();
    tokio::time::sleep(hold).await; // holding the fault for its duration
    server.resume();
    format!("PostgreSQL paused (SIGSTOP) for {hold:?}, then SIGCONT")
}

fn restart_store(cluster: &mut Cluster) -> String {
    let Some(server) = cluster.store.as_mut().and_then(StoreSide::postgres_server) else {
        return "no database server to restart".to_owned();
    };
    // Waits (a blocking wait, off the runtime's other threads) until it accepts connections.
    tokio::task::block_in_place(|| server.restart());
    "PostgreSQL killed (SIGKILL) and restarted on its data".to_owned()
}

async fn kill_node(cluster: &mut Cluster, shared: &Shared, i: usize, down: Duration) -> String {
    write(&shared.nodes)[i] = None;
    if let Some(node) = cluster.nodes[i].take() {
        node.kill().await;
    }
    tokio::time::sleep(down).await; // holding the fault for its duration
    cluster.start_node(i, shared).await;
    format!("node n{i} killed (SIGKILL), restarted after {down:?}")
}

async fn pause_redis(cluster: &mut Cluster, hold: Duration) -> String {
    if let Backend::Sentinel(sentinel) = &cluster.backend {
        return sentinel.pause_primary(hold).await;
    }
    let Some(redis) = cluster.redis() else { return "no Redis to pause".to_owned() };
    redis.pause();
    tokio::time::sleep(hold).await; // holding the fault for its duration
    redis.resume();
    format!("Redis paused (SIGSTOP) for {hold:?}, then SIGCONT")
}

async fn save_redis(cluster: &mut Cluster) -> String {
    let Some(redis) = cluster.redis() else { return "no Redis to save".to_owned() };
    match redis.save().await {
        Ok(()) => "Redis SAVE".to_owned(),
        Err(e) => format!("Redis SAVE failed: {e}"),
    }
}

async fn fail_over(cluster: &mut Cluster) -> String {
    let Backend::Sentinel(sentinel) = &mut cluster.backend else { return "no Sentinel to fail over".to_owned() };
    sentinel.fail_over().await.unwrap_or_else(|e| format!("failover failed: {e}"))
}

fn restart_redis(cluster: &mut Cluster) -> String {
    let Some(redis) = cluster.redis() else { return "no Redis to restart".to_owned() };
    redis.crash_and_restart();
    "Redis killed (SIGKILL) and restarted from its last snapshot".to_owned()
}

fn cut_clients(shared: &Shared, clients: &[usize]) -> String {
    let cut: Vec<String> = clients
        .iter()
        .filter(|&&c| shared.connected[c].load(Ordering::Relaxed))
        .map(|&c| {
            shared.cuts[c].notify_one();
            format!("u{c}")
        })
        .collect();
    format!("cut the connections of [{}]", cut.join(", "))
}

/// The faults of a run and when each starts: one of each kind first (in a random order, a
/// `SAVE` before the first Redis restart), then random ones, 1.5 to 4.5 s apart. Two restarts
/// may come back to the same snapshot, so that Redis returns to an epoch the nodes had left.
fn schedule(rng: &mut Rng, kinds: &[FaultKind], nodes: usize, secs: u64) -> Vec<(Duration, Fault)> {
    let mut first: Vec<FaultKind> = kinds.to_vec();
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let save = first.iter().position(|k| *k == FaultKind::SaveRedis);
    let restart = first.iter().position(|k| *k == FaultKind::RestartRedis);
    if let (Some(s), Some(r)) = (save, restart) {
        if r < s {
            first.swap(r, s);
        }
    }
    let mut out = Vec::new();
    let mut at = Duration::from_millis(1500);
    let end = Duration::from_secs(secs);
    let mut i = 0;
    while at < end {
        let kind = first.get(i).copied().unwrap_or_else(|| *rng.pick(kinds));
        out.push((at, Fault::random(kind, rng, nodes)));
        at += rng.ms(1500, 4500);
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// What the clients and the fault task share.

struct Shared {
    stop: AtomicBool,
    /// The live nodes' addresses (`None` while a node is down).
    nodes: RwLock<Vec<Option<NodeAddr>>>,
    /// Per client: the fault task's request to drop the connection.
    cuts: Vec<Notify>,
    connected: Vec<AtomicBool>,
    /// The settle phase's steps: everyone caught up, markers sent, waits done.
    barrier: Barrier,
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// A client: random operations, and a log of everything, in the order it happened.

struct Actor {
    idx: usize,
    user: String,
    rng: Rng,
    shared: Arc<Shared>,
    log: Vec<Entry>,
    conn: Option<Client>,
    /// Rooms joined on the current connection, with their positions.
    joined: BTreeMap<String, Pos>,
    /// Rooms the client means to be in (joined again after a reconnection).
    wanted: BTreeSet<String>,
    /// The last position seen in each room, for `since`.
    known: HashMap<String, Pos>,
    /// A send that failed or whose reply was lost, per room: resent with its key.
    pending: BTreeMap<String, String>,
    /// Acknowledged (room, id): resent now and then.
    acked: Vec<(String, String)>,
    next_msg: u64,
    next_request: u64,
}

enum Got {
    Frame(Option<bytes::Bytes>),
    Cut,
    Time,
}

impl Actor {
    fn new(idx: usize, rng: Rng, shared: Arc<Shared>) -> Actor {
        Actor {
            idx,
            user: format!("u{idx}"),
            rng,
            shared,
            log: Vec::new(),
            conn: None,
            joined: BTreeMap::new(),
            wanted: BTreeSet::new(),
            known: HashMap::new(),
            pending: BTreeMap::new(),
            acked: Vec::new(),
            next_msg: 0,
            // Far above the ids the client library gives its own requests (`hello` is 1).
            next_request: 1 << 40,
        }
    }

    fn note(&mut self, ev: Ev) {
        self.log.push(Entry { at: Instant::now(), ev });
    }

    async fn run(mut self) -> Actor {
        let first = 1 + self.rng.below(2);
        for _ in 0..first {
            let room = self.rng.pick(&ROOMS).to_string();
            self.wanted.insert(room);
        }
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.step().await;
            let pace = self.rng.ms(40, 250);
            self.pump(pace).await; // pacing the workload; events are read meanwhile
        }
        self.settle().await;
        self
    }

    /// One random operation (or the catching up a reconnection needs).
    async fn step(&mut self) {
        if self.conn.is_none() {
            self.connect().await;
            return;
        }
        if let Some(room) = self.wanted.iter().find(|r| !self.joined.contains_key(*r)).cloned() {
            let since = self.known.get(&room).cloned();
            self.join(&room, since).await;
            return;
        }
        if let Some((room, id)) = self.pending.iter().find(|(r, _)| self.joined.contains_key(*r)) {
            let (room, id) = (room.clone(), id.clone());
            self.send(&room, &id, true).await;
            return;
        }
        let joined: Vec<String> = self.joined.keys().cloned().collect();
        let others: Vec<&str> = ROOMS.into_iter().filter(|r| !self.joined.contains_key(*r)).collect();
        match self.rng.below(100) {
            0..=59 if !joined.is_empty() => {
                let room = self.rng.pick(&joined).clone();
                let id = self.fresh_id();
                self.send(&room, &id, false).await;
            }
            60..=64 if !self.acked.is_empty() => {
                let (room, id) = self.rng.pick(&self.acked).clone();
                if self.joined.contains_key(&room) {
                    self.send(&room, &id, true).await;
                }
            }
            65..=79 if !others.is_empty() => {
                let room = self.rng.pick(&others).to_string();
                let since = if self.rng.below(2) == 0 { self.known.get(&room).cloned() } else { None };
                self.wanted.insert(room.clone());
                self.join(&room, since).await;
            }
            80..=89 if !joined.is_empty() => {
                let room = self.rng.pick(&joined).clone();
                if !self.pending.contains_key(&room) {
                    self.leave(&room).await;
                }
            }
            90..=92 => self.disconnect("dropped by the client"),
            _ => {}
        }
    }

    fn fresh_id(&mut self) -> String {
        self.next_msg += 1;
        format!("{}/{}", self.user, self.next_msg)
    }

    async fn connect(&mut self) {
        let live: Vec<NodeAddr> = read(&self.shared.nodes).iter().flatten().cloned().collect();
        if live.is_empty() {
            self.note(Ev::ConnectFailed { error: "no node is up".to_owned() });
            return;
        }
        let node = self.rng.pick(&live).clone();
        let user = self.user.clone();
        let connecting = async {
            if self.idx.is_multiple_of(2) {
                chat_transport_tcp::connect(node.tcp, Some(&user), None).await.map_err(|e| e.to_string())
            } else {
                chat_transport_ws::connect(&node.ws, Some(&user), None).await.map_err(|e| e.to_string())
            }
        };
        match tokio::time::timeout(REQUEST_LIMIT, connecting).await {
            Ok(Ok(client)) => {
                self.note(Ev::Connected { node: client.welcome().node.clone() });
                self.conn = Some(client);
                self.joined.clear();
                self.shared.connected[self.idx].store(true, Ordering::Relaxed);
            }
            Ok(Err(error)) => self.note(Ev::ConnectFailed { error }),
            Err(_) => self.note(Ev::ConnectFailed { error: "timed out".to_owned() }),
        }
    }

    fn disconnect(&mut self, why: &str) {
        if self.conn.take().is_some() {
            self.note(Ev::Disconnected { why: why.to_owned() });
        }
        self.joined.clear();
        self.shared.connected[self.idx].store(false, Ordering::Relaxed);
    }

    /// Waits for the next frame, a cut, or `deadline`.
    async fn next(&mut self, deadline: tokio::time::Instant) -> Got {
        let shared = self.shared.clone();
        let Some(conn) = self.conn.as_mut() else {
            tokio::time::sleep_until(deadline).await;
            return Got::Time;
        };
        tokio::select! {
            biased;
            _ = shared.cuts[self.idx].notified() => Got::Cut,
            f = conn.next_frame() => Got::Frame(f),
            _ = tokio::time::sleep_until(deadline) => Got::Time,
        }
    }

    /// Reads events for `d`.
    async fn pump(&mut self, d: Duration) {
        self.pump_until(tokio::time::Instant::now() + d, |_| false).await;
    }

    /// Reads events until `done` holds (true) or `deadline` passes (false).
    async fn pump_until(&mut self, deadline: tokio::time::Instant, done: impl Fn(&Actor) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            match self.next(deadline).await {
                Got::Time => return false,
                Got::Cut => self.disconnect("cut by the fault task"),
                Got::Frame(None) => self.disconnect("closed by the server"),
                Got::Frame(Some(frame)) => self.on_frame(&frame),
            }
        }
    }

    /// An event (anything that is not the reply awaited).
    fn on_frame(&mut self, frame: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(frame) else {
            let text = String::from_utf8_lossy(frame).into_owned();
            self.note(Ev::Note(format!("unparsable frame {text:?}")));
            return;
        };
        let room = v["room"].as_str().unwrap_or("").to_owned();
        match v["type"].as_str().unwrap_or("") {
            "message" => {
                let seq = v["seq"].as_u64();
                let from = v["from"].as_str().unwrap_or("").to_owned();
                let id = v["body"]["id"].as_str().map(str::to_owned);
                if let (Some(pos), Some(seq)) = (self.joined.get_mut(&room), seq) {
                    pos.seq = seq;
                    self.known.insert(room.clone(), pos.clone());
                }
                self.note(Ev::Message { room, seq, from, id });
            }
            "reset" => {
                let epoch = v["epoch"].as_str().unwrap_or("").to_owned();
                if let Some(pos) = self.joined.get_mut(&room) {
                    *pos = Pos { epoch: epoch.clone(), seq: 0 };
                    self.known.insert(room.clone(), pos.clone());
                }
                self.note(Ev::Reset { room, epoch, seq: v["seq"].as_u64() });
            }
            "bye" => self.note(Ev::Bye { reason: v["reason"].as_str().unwrap_or("").to_owned() }),
            "error" => self.note(Ev::ServerError { code: v["code"].as_str().unwrap_or("").to_owned() }),
            _ => {} // pings are answered by the client library; membership events are not checked
        }
    }

    /// Sends a request and reads events until its reply.
    async fn request(&mut self, mut frame: Value) -> Outcome {
        let Some(conn) = &self.conn else { return Outcome::Lost };
        let id = self.next_request;
        self.next_request += 1;
        frame["id"] = json!(id);
        if conn.send_frame(frame.to_string()).is_err() {
            self.disconnect("closed (found when sending)");
            return Outcome::Lost;
        }
        let deadline = tokio::time::Instant::now() + REQUEST_LIMIT;
        loop {
            match self.next(deadline).await {
                Got::Time => {
                    let what = format!("no reply to {frame} within {REQUEST_LIMIT:?}: connection abandoned");
                    self.note(Ev::Note(what));
                    self.disconnect("request timed out");
                    return Outcome::Lost;
                }
                Got::Cut => {
                    self.disconnect("cut by the fault task (a request in flight)");
                    return Outcome::Lost;
                }
                Got::Frame(None) => {
                    self.disconnect("closed by the server (a request in flight)");
                    return Outcome::Lost;
                }
                Got::Frame(Some(bytes)) => {
                    let reply = serde_json::from_slice::<Value>(&bytes).ok().filter(|v| v["id"].as_u64() == Some(id));
                    match reply {
                        Some(v) if v["type"] == "error" => {
                            return Outcome::Error(v["code"].as_str().unwrap_or("?").to_owned())
                        }
                        Some(v) => return Outcome::Reply(v),
                        None => self.on_frame(&bytes),
                    }
                }
            }
        }
    }

    async fn join(&mut self, room: &str, since: Option<Pos>) -> bool {
        self.note(Ev::JoinIssued { room: room.to_owned(), since: since.clone() });
        let issued = Instant::now();
        let mut frame = json!({"type": "join", "room": room});
        if let Some(s) = &since {
            frame["since"] = json!({"epoch": s.epoch, "seq": s.seq});
        }
        match self.request(frame).await {
            Outcome::Reply(v) => {
                let epoch = v["epoch"].as_str().unwrap_or("").to_owned();
                let seq = v["seq"].as_u64().unwrap_or(0);
                let recovered = v["recovered"].as_bool().unwrap_or(false);
                let since_seq = since.as_ref().map(|s| s.seq).unwrap_or(0);
                // The position the replay (if any) starts from, then live messages.
                let pos = Pos { epoch: epoch.clone(), seq: if recovered { since_seq } else { seq } };
                self.joined.insert(room.to_owned(), pos.clone());
                self.known.insert(room.to_owned(), pos);
                self.note(Ev::Joined { room: room.to_owned(), epoch, seq, recovered, since, issued });
                true
            }
            Outcome::Error(error) => {
                self.note(Ev::JoinFailed { room: room.to_owned(), error });
                false
            }
            Outcome::Lost => {
                self.note(Ev::JoinFailed { room: room.to_owned(), error: "connection lost".to_owned() });
                false
            }
        }
    }

    async fn leave(&mut self, room: &str) {
        self.wanted.remove(room);
        match self.request(json!({"type": "leave", "room": room})).await {
            Outcome::Reply(_) => {
                self.joined.remove(room);
                self.note(Ev::Left { room: room.to_owned() });
            }
            Outcome::Error(error) => self.note(Ev::LeaveFailed { room: room.to_owned(), error }),
            Outcome::Lost => {}
        }
    }

    /// Sends (or resends) message `id` with `id` as its key; true when acknowledged.
    async fn send(&mut self, room: &str, id: &str, resend: bool) -> bool {
        let issued_in = self.joined.get(room).map(|p| p.epoch.clone());
        self.note(Ev::SendIssued { room: room.to_owned(), id: id.to_owned(), resend });
        let frame = json!({"type": "send", "room": room, "key": id, "body": {"id": id}});
        let error = match self.request(frame).await {
            Outcome::Reply(v) => {
                let replied_in = self.joined.get(room).map(|p| p.epoch.clone());
                let seq = v["seq"].as_u64();
                self.note(Ev::Sent { room: room.to_owned(), id: id.to_owned(), seq, issued_in, replied_in });
                if self.pending.get(room).is_some_and(|p| p == id) {
                    self.pending.remove(room);
                }
                if !resend {
                    self.acked.push((room.to_owned(), id.to_owned()));
                }
                return true;
            }
            Outcome::Error(error) => error,
            Outcome::Lost => "connection lost".to_owned(),
        };
        self.note(Ev::SendFailed { room: room.to_owned(), id: id.to_owned(), error });
        self.pending.insert(room.to_owned(), id.to_owned());
        false
    }

    /// Waits for every client at one step of the settle phase: as long as the slowest may take
    /// (each step is bounded by [`SETTLE_LIMIT`] from its start).
    async fn barrier(&self, what: &str) {
        if tokio::time::timeout(SETTLE_LIMIT + WAIT * 4, self.shared.barrier.wait()).await.is_err() {
            panic!("u{}: timed out after {:?} waiting for {what}", self.idx, SETTLE_LIMIT + WAIT * 4);
        }
    }

    /// No more faults: come back, finish pending resends, send a marker to every room joined,
    /// and read until each room is at its latest position (as `history` reports it).
    async fn settle(&mut self) {
        let limit = tokio::time::Instant::now() + SETTLE_LIMIT;
        loop {
            let behind = self.conn.is_none()
                || self.wanted.iter().any(|r| !self.joined.contains_key(r))
                || self.pending.keys().any(|r| self.joined.contains_key(r));
            if !behind {
                break;
            }
            if tokio::time::Instant::now() >= limit {
                self.note(Ev::Note(format!("settle: could not come back within {SETTLE_LIMIT:?}")));
                break;
            }
            self.step().await;
            if self.conn.is_none() || self.log.last().is_some_and(|e| matches!(e.ev, Ev::JoinFailed { .. })) {
                self.pump(Duration::from_millis(200)).await; // the retry interval of a loop with a deadline
            }
        }
        self.barrier("every client back (settle barrier 1)").await;

        let rooms: Vec<String> = self.joined.keys().cloned().collect();
        for room in &rooms {
            let id = format!("{}/marker", self.user);
            while self.joined.contains_key(room) && !self.send(room, &id, false).await {
                if tokio::time::Instant::now() >= limit {
                    self.note(Ev::Note(format!("settle: marker to {room} never acknowledged")));
                    break;
                }
                self.pump(Duration::from_millis(200)).await; // the retry interval of a loop with a deadline
            }
        }
        self.barrier("every marker sent (settle barrier 2)").await;

        for room in &rooms {
            let mut latest = None;
            while latest.is_none() && self.joined.contains_key(room) && tokio::time::Instant::now() < limit {
                let frame = json!({"type": "history", "room": room, "limit": 1});
                match self.request(frame).await {
                    Outcome::Reply(v) => {
                        let epoch = v["epoch"].as_str().unwrap_or("").to_owned();
                        let seq = v["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["seq"].as_u64());
                        latest = Some(Pos { epoch, seq: seq.unwrap_or(0) });
                    }
                    Outcome::Error(_) | Outcome::Lost => self.pump(Duration::from_millis(200)).await,
                }
            }
            let Some(latest) = latest else { continue };
            self.note(Ev::Latest { room: room.clone(), epoch: latest.epoch.clone(), seq: latest.seq });
            let deadline = tokio::time::Instant::now() + WAIT;
            let room_at = |a: &Actor| a.joined.get(room).is_none_or(|p| p.epoch == latest.epoch && p.seq >= latest.seq);
            if !self.pump_until(deadline, room_at).await {
                let at = self.joined.get(room).cloned();
                self.note(Ev::Note(format!(
                    "settle: {room} is at {latest:?} but this member is at {at:?} after {WAIT:?}"
                )));
            }
        }
        self.barrier("every member caught up (settle barrier 3)").await;
    }
}

// ---------------------------------------------------------------------------------------------
// The checks.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    Left,
    Disconnected,
    Reset,
}

/// One membership of one client in one room, within one epoch: from a `joined` (or a `reset`)
/// to a leave, a disconnection, a reset or the end of the run.
#[derive(Debug)]
struct Interval {
    client: usize,
    room: String,
    epoch: String,
    /// Messages after this seq are owed to the member (the join's position; `since` when a
    /// replay was promised; 0 after a reset).
    from: u64,
    /// The `joined.seq` (or 0 after a reset): a recovered replay must reach it.
    joined_seq: u64,
    /// Received (seq, id, log index).
    got: Vec<(u64, String, usize)>,
    end: End,
    /// The next epoch, when the interval ended with a reset.
    next_epoch: Option<String>,
    start_idx: usize,
}

struct Ack {
    client: usize,
    room: String,
    id: String,
    seq: u64,
    /// Epochs the reply may belong to (more than one when a reset came close to it).
    candidates: Vec<String>,
    idx: usize,
    at: Instant,
    /// When the send was issued.
    issued: Instant,
    interval: usize,
}

struct Violation {
    client: usize,
    idx: usize,
    what: String,
}

struct Report {
    violations: Vec<Violation>,
    /// Departures from the protocol that lose nothing (printed, not failed): see the check.
    warnings: Vec<Violation>,
    stats: BTreeMap<&'static str, usize>,
}

/// `losses`: when each fault that may lose stored messages started (a Redis restart; a node
/// restart with the memory broker).
fn check(logs: &[Vec<Entry>], losses: &[Instant]) -> Report {
    let mut violations = Vec::new();
    let mut stats: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut bad = |client: usize, idx: usize, what: String| violations.push(Violation { client, idx, what });

    // Every id a client issued (a send, a resend), by id: the sender's user.
    let mut issued: HashMap<String, String> = HashMap::new();
    for (c, log) in logs.iter().enumerate() {
        for e in log {
            if let Ev::SendIssued { id, .. } = &e.ev {
                issued.insert(id.clone(), format!("u{c}"));
            }
        }
    }

    // Walk each log: intervals, acknowledgements, observations.
    let mut intervals: Vec<Interval> = Vec::new();
    let mut acks: Vec<Ack> = Vec::new();
    // (room, epoch, seq) → (id, client, idx): what every client received.
    let mut seen: BTreeMap<(String, String, u64), (String, usize, usize)> = BTreeMap::new();
    // (client, room, epoch) → (time, seq) of every message received: for "seq never goes
    // backwards".
    let mut times: HashMap<(usize, String, String), Vec<(Instant, u64)>> = HashMap::new();
    let mut joins: Vec<(usize, usize, String, String, u64, Instant)> = Vec::new();
    // (room, epoch) → the first time a client was told the room had left it.
    let mut epoch_end: HashMap<(String, String), Instant> = HashMap::new();
    let mut ended = |room: &str, epoch: &str, at: Instant| {
        let t = epoch_end.entry((room.to_owned(), epoch.to_owned())).or_insert(at);
        *t = (*t).min(at);
    };
    for (c, log) in logs.iter().enumerate() {
        let mut open: HashMap<String, usize> = HashMap::new();
        let close = |intervals: &mut Vec<Interval>, i: usize, end: End| intervals[i].end = end;
        let mut issued_at: HashMap<(String, String), Instant> = HashMap::new();
        for (idx, e) in log.iter().enumerate() {
            match &e.ev {
                Ev::Joined { room, epoch, seq, recovered, since, issued: at } => {
                    *stats.entry("joins").or_default() += 1;
                    if let Some(i) = open.remove(room) {
                        bad(
                            c,
                            idx,
                            format!("joined {room} while a member already (interval at {})", intervals[i].start_idx),
                        );
                        close(&mut intervals, i, End::Left);
                    }
                    let mut from = *seq;
                    if let Some(since) = since.as_ref().filter(|s| s.epoch != *epoch) {
                        ended(room, &since.epoch, e.at);
                    }
                    if let Some(since) = since {
                        let kind = if *recovered { "since joins recovered" } else { "since joins not recovered" };
                        *stats.entry(kind).or_default() += 1;
                        if *recovered {
                            if since.epoch != *epoch || since.seq > *seq {
                                bad(c, idx, format!("recovered: true from {since:?} into epoch {epoch} at seq {seq}"));
                            }
                            from = since.seq;
                        }
                    } else if *recovered {
                        bad(c, idx, "recovered: true without since".to_owned());
                    }
                    joins.push((c, idx, room.clone(), epoch.clone(), *seq, *at));
                    open.insert(room.clone(), intervals.len());
                    intervals.push(Interval {
                        client: c,
                        room: room.clone(),
                        epoch: epoch.clone(),
                        from,
                        joined_seq: *seq,
                        got: Vec::new(),
                        end: End::Open,
                        next_epoch: None,
                        start_idx: idx,
                    });
                }
                Ev::Reset { room, epoch, seq } => {
                    *stats.entry("resets").or_default() += 1;
                    if *seq != Some(0) {
                        bad(c, idx, format!("reset with seq {seq:?} (always 0)"));
                    }
                    let Some(i) = open.remove(room) else {
                        bad(c, idx, format!("reset of {room}, not a member"));
                        continue;
                    };
                    if intervals[i].epoch == *epoch {
                        bad(c, idx, format!("reset of {room} to the epoch it was in ({epoch})"));
                    }
                    close(&mut intervals, i, End::Reset);
                    ended(room, &intervals[i].epoch, e.at);
                    intervals[i].next_epoch = Some(epoch.clone());
                    open.insert(room.clone(), intervals.len());
                    intervals.push(Interval {
                        client: c,
                        room: room.clone(),
                        epoch: epoch.clone(),
                        from: 0,
                        joined_seq: 0,
                        got: Vec::new(),
                        end: End::Open,
                        next_epoch: None,
                        start_idx: idx,
                    });
                }
                Ev::Message { room, seq, from, id } => {
                    *stats.entry("messages received").or_default() += 1;
                    let Some(&i) = open.get(room) else {
                        bad(c, idx, format!("a message of {room} outside any membership of it"));
                        continue;
                    };
                    let Some(seq) = *seq else {
                        bad(c, idx, "a stored message without seq".to_owned());
                        continue;
                    };
                    let Some(id) = id else {
                        bad(c, idx, format!("message {seq} of {room} carries no id: no client sent it"));
                        continue;
                    };
                    match issued.get(id) {
                        None => bad(c, idx, format!("message {seq} of {room} carries {id:?}, which no client sent")),
                        Some(sender) if sender != from => {
                            bad(c, idx, format!("message {seq} ({id}) is from {from:?}, but {sender} sent it"))
                        }
                        Some(_) => {}
                    }
                    let iv = &mut intervals[i];
                    let expected = iv.got.last().map_or(iv.from, |g| g.0) + 1;
                    if seq != expected {
                        let what = if seq < expected { "duplicate or backwards" } else { "gap" };
                        bad(c, idx, format!("{what} in {room} epoch {}: got seq {seq}, expected {expected}", iv.epoch));
                    }
                    iv.got.push((seq, id.clone(), idx));
                    let key = (room.clone(), iv.epoch.clone(), seq);
                    times.entry((c, room.clone(), iv.epoch.clone())).or_default().push((e.at, seq));
                    match seen.get(&key) {
                        Some((other, oc, oidx)) if other != id => bad(
                            c,
                            idx,
                            format!(
                                "{room} epoch {} seq {seq} carries {id} here but {other} for u{oc} (its log entry {oidx})",
                                iv.epoch
                            ),
                        ),
                        Some(_) => {}
                        None => {
                            seen.insert(key, (id.clone(), c, idx));
                        }
                    }
                }
                Ev::Sent { room, id, seq, issued_in, replied_in } => {
                    *stats.entry("sends acknowledged").or_default() += 1;
                    let Some(seq) = *seq else {
                        bad(c, idx, format!("sent reply to a stored send ({id}) without seq"));
                        continue;
                    };
                    let Some(&i) = open.get(room) else {
                        bad(c, idx, format!("sent reply in {room}, not a member"));
                        continue;
                    };
                    let mut candidates: Vec<String> = issued_in.iter().chain(replied_in).cloned().collect();
                    candidates.dedup();
                    acks.push(Ack {
                        client: c,
                        room: room.clone(),
                        id: id.clone(),
                        seq,
                        candidates,
                        idx,
                        at: e.at,
                        issued: issued_at.get(&(room.clone(), id.clone())).copied().unwrap_or(e.at),
                        interval: i,
                    });
                }
                Ev::Left { room } => {
                    if let Some(i) = open.remove(room) {
                        close(&mut intervals, i, End::Left);
                    }
                }
                Ev::Disconnected { .. } => {
                    *stats.entry("disconnections").or_default() += 1;
                    for (_, i) in open.drain() {
                        close(&mut intervals, i, End::Disconnected);
                    }
                }
                Ev::SendFailed { .. } => *stats.entry("sends failed").or_default() += 1,
                Ev::SendIssued { room, id, .. } => {
                    issued_at.insert((room.clone(), id.clone()), e.at);
                }
                Ev::Note(what) if what.starts_with("settle") || what.starts_with("unparsable") => {
                    bad(c, idx, what.clone())
                }
                Ev::Note(_) => *stats.entry("requests abandoned").or_default() += 1,
                _ => {}
            }
        }
    }

    // An acknowledgement belongs to the epoch it was sent in; when a reset came close to it,
    // the sender's own delivery (or the next epoch's) tells which.
    let mut certain: Vec<(usize, String)> = Vec::new(); // (ack index, epoch)
    for (a, ack) in acks.iter().enumerate() {
        let iv = &intervals[ack.interval];
        let mut candidates = ack.candidates.clone();
        if iv.end == End::Reset {
            candidates.extend(iv.next_epoch.clone());
        }
        candidates.dedup();
        let carries = |epoch: &String| seen.get(&(ack.room.clone(), epoch.clone(), ack.seq)).map(|s| &s.0);
        if let Some(epoch) = candidates.iter().find(|e| carries(e) == Some(&ack.id)) {
            certain.push((a, epoch.clone()));
        } else if candidates.iter().all(|e| carries(e).is_some()) {
            bad(
                ack.client,
                ack.idx,
                format!(
                    "{} acknowledged at seq {} of {}, a seq that carries another message in every epoch it may belong to ({candidates:?})",
                    ack.id, ack.seq, ack.room
                ),
            );
        } else if candidates.len() == 1 {
            certain.push((a, candidates[0].clone()));
        }
    }

    // 1. Every acknowledged message reached every member that was there for it and stayed.
    for (a, epoch) in &certain {
        let ack = &acks[*a];
        *stats.entry("acknowledgements checked").or_default() += 1;
        for iv in intervals
            .iter()
            .filter(|iv| iv.end == End::Open && iv.room == ack.room && iv.epoch == *epoch && iv.from < ack.seq)
        {
            match iv.got.iter().find(|g| g.0 == ack.seq) {
                Some(g) if g.1 == ack.id => {}
                Some(g) => bad(
                    iv.client,
                    g.2,
                    format!("seq {} of {} carries {} here, but u{} was told {} got it", ack.seq, ack.room, g.1, ack.client, ack.id),
                ),
                None => bad(
                    iv.client,
                    iv.start_idx,
                    format!(
                        "{} (seq {} of {} epoch {epoch}, acknowledged to u{} at its log entry {}) never reached this member, joined from seq {} and there to the end",
                        ack.id, ack.seq, ack.room, ack.client, ack.idx, iv.from
                    ),
                ),
            }
        }
    }

    // 2 and 3 (the rest). A member there to the end got everything up to the latest seq of its
    // epoch, its promised replay included.
    let mut latest: HashMap<(String, String), u64> = HashMap::new();
    for (room, epoch, seq) in seen.keys() {
        let l = latest.entry((room.clone(), epoch.clone())).or_default();
        *l = (*l).max(*seq);
    }
    for (a, epoch) in &certain {
        let l = latest.entry((acks[*a].room.clone(), epoch.clone())).or_default();
        *l = (*l).max(acks[*a].seq);
    }
    for iv in intervals.iter().filter(|iv| iv.end == End::Open) {
        let last = iv.got.last().map_or(iv.from, |g| g.0);
        let want = latest.get(&(iv.room.clone(), iv.epoch.clone())).copied().unwrap_or(0).max(iv.joined_seq);
        if last < want {
            bad(
                iv.client,
                iv.start_idx,
                format!("member of {} epoch {} to the end, but it stopped at seq {last} of {want}", iv.room, iv.epoch),
            );
        }
    }

    // Seq never goes backwards within an epoch for any client: a join answered in an epoch in
    // which the client had already received (or been acknowledged) seq s is at s or later.
    // (Across clients a node may lag another by the messages still in its subscription: a
    // member that joins there gets them live.)
    for (a, epoch) in &certain {
        let ack = &acks[*a];
        times.entry((ack.client, ack.room.clone(), epoch.clone())).or_default().push((ack.at, ack.seq));
    }
    for list in times.values_mut() {
        list.sort();
    }
    let mut warnings = Vec::new();
    for (c, idx, room, epoch, seq, issued) in &joins {
        let Some(list) = times.get(&(*c, room.clone(), epoch.clone())) else { continue };
        let before = list.partition_point(|(t, _)| t < issued);
        if let Some(max) = list[..before].iter().map(|x| x.1).max().filter(|max| max > seq) {
            let what = format!(
                "joined {room} epoch {epoch} at seq {seq}, but it had received (or been acknowledged) seq {max} before"
            );
            // A node that holds no state of the room cannot tell that Redis came back older
            // (the rollback check compares with what the node delivered): it answers the join
            // with Redis's old position. When a reset to a new epoch follows before any message
            // (another node found the rollback), nothing is lost and nothing is delivered
            // twice: reported, not failed. Messages after it would reuse seqs (failed by 4).
            let iv = intervals.iter().find(|iv| iv.client == *c && iv.start_idx == *idx);
            if iv.is_some_and(|iv| iv.end == End::Reset && iv.got.is_empty()) {
                warnings.push(Violation { client: *c, idx: *idx, what: format!("{what} (a reset followed at once)") });
            } else {
                bad(*c, *idx, what);
            }
        }
    }

    // 5. A `sent` reply means stored: an acknowledged message is lost (its epoch left, and the
    // message in no later epoch: a new epoch holds what the broker kept) only to a fault that
    // can lose stored messages, started after it was sent.
    let mut epochs_of: HashMap<(&str, &str), BTreeSet<&str>> = HashMap::new();
    for ((room, epoch, _), (id, _, _)) in &seen {
        epochs_of.entry((room.as_str(), id.as_str())).or_default().insert(epoch.as_str());
    }
    for (a, epoch) in &certain {
        let ack = &acks[*a];
        let Some(&end) = epoch_end.get(&(ack.room.clone(), epoch.clone())) else { continue };
        if end <= ack.issued || losses.iter().any(|&t| t >= ack.issued && t <= end) {
            continue;
        }
        let kept = epochs_of.get(&(ack.room.as_str(), ack.id.as_str())).is_some_and(|e| e.iter().any(|e| e != epoch));
        if kept {
            continue; // carried into a later epoch with the history the broker kept
        }
        let what = format!(
            "{} (seq {} of {} epoch {epoch}) acknowledged, then lost: the epoch ended {:?} after the send with no fault that loses messages in between",
            ack.id,
            ack.seq,
            ack.room,
            end.duration_since(ack.issued)
        );
        bad(ack.client, ack.idx, what);
    }

    // 4. An idempotent resend never made a second seq within one epoch. (A resend may get a new
    // seq in a new epoch: the old epoch's history, and the key with it, was lost.)
    let mut by_key: BTreeMap<(String, String, String), BTreeSet<u64>> = BTreeMap::new();
    let mut where_: HashMap<(String, String, String), (usize, usize)> = HashMap::new();
    for ((room, epoch, seq), (id, c, idx)) in &seen {
        let key = (room.clone(), epoch.clone(), id.clone());
        by_key.entry(key.clone()).or_default().insert(*seq);
        where_.insert(key, (*c, *idx));
    }
    for (a, epoch) in &certain {
        let ack = &acks[*a];
        let key = (ack.room.clone(), epoch.clone(), ack.id.clone());
        by_key.entry(key.clone()).or_default().insert(ack.seq);
        where_.entry(key).or_insert((ack.client, ack.idx));
    }
    for (key, seqs) in &by_key {
        if seqs.len() > 1 {
            let (c, idx) = where_[key];
            bad(c, idx, format!("{} stored under seqs {seqs:?} of {} in epoch {}", key.2, key.0, key.1));
        }
    }

    stats.insert("intervals", intervals.len());
    stats.insert("distinct stored messages seen", seen.len());
    Report { violations, warnings, stats }
}

// ---------------------------------------------------------------------------------------------
// The run.

fn settings(default_secs: u64) -> (u64, u64) {
    let seed = match std::env::var("CHAT_FAULTS_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|e| panic!("CHAT_FAULTS_SEED={s:?}: {e}")),
        Err(_) => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            Rng(nanos.as_nanos() as u64 ^ u64::from(std::process::id())).next()
        }
    };
    let secs = match std::env::var("CHAT_FAULTS_SECS") {
        Ok(s) => s.trim().parse().unwrap_or_else(|e| panic!("CHAT_FAULTS_SECS={s:?}: {e}")),
        Err(_) => default_secs,
    };
    (seed, secs)
}

fn format_entry(t0: Instant, e: &Entry) -> String {
    format!("{:>9.3}s {:?}", e.at.duration_since(t0).as_secs_f64(), e.ev)
}

async fn run(
    name: &str,
    backend: Backend,
    store: Option<StoreSide>,
    nodes: usize,
    kinds: &[FaultKind],
    secs: u64,
    seed: u64,
) {
    println!("{name}: seed {seed} (CHAT_FAULTS_SEED={seed} replays it), {secs} s of faults");
    let mut rng = Rng(seed);
    let plan = schedule(&mut rng.fork(), kinds, nodes, secs);
    for (at, fault) in &plan {
        println!("  planned at {:>7.3}s: {fault:?}", at.as_secs_f64());
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        nodes: RwLock::new(vec![None; nodes]),
        cuts: (0..CLIENTS).map(|_| Notify::new()).collect(),
        connected: (0..CLIENTS).map(|_| AtomicBool::new(false)).collect(),
        barrier: Barrier::new(CLIENTS),
    });
    let mut cluster = Cluster::start(backend, store, nodes, &shared).await;
    let t0 = Instant::now();
    let actors: Vec<_> = (0..CLIENTS).map(|i| tokio::spawn(Actor::new(i, rng.fork(), shared.clone()).run())).collect();

    let injected = Arc::new(Mutex::new(Vec::new()));
    let mut losses = Vec::new();
    for (at, fault) in &plan {
        tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + *at)).await; // the schedule
        let start = t0.elapsed();
        let may_lose = fault.may_lose_messages(&cluster);
        if may_lose {
            losses.push(Instant::now());
        }
        let what = fault.inject(&mut cluster, &shared).await;
        if may_lose {
            // A fault with a duration may lose messages until it ends (a frozen primary takes
            // writes when it wakes, until Sentinel demotes it).
            losses.push(Instant::now());
        }
        println!("  {:>7.3}s–{:>7.3}s: {what}", start.as_secs_f64(), t0.elapsed().as_secs_f64());
        injected.lock().unwrap_or_else(|e| e.into_inner()).push((start, what));
    }
    let rest = (t0 + Duration::from_secs(secs)).saturating_duration_since(Instant::now());
    tokio::time::sleep(rest).await; // the workload's last seconds without a fault
    shared.stop.store(true, Ordering::Relaxed);
    println!("  {:>7.3}s: faults over, settling", t0.elapsed().as_secs_f64());

    let mut logs = Vec::new();
    for actor in actors {
        let actor = tokio::time::timeout(SETTLE_LIMIT * 3, actor)
            .await
            .expect("a client never finished settling")
            .expect("a client task panicked");
        logs.push(actor.log);
    }
    println!("  {:>7.3}s: settled, checking", t0.elapsed().as_secs_f64());
    let report = check(&logs, &losses);
    let injected = injected.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut summary = format!("{name}: seed {seed}, {} faults injected; ", injected.len());
    for (k, v) in &report.stats {
        let _ = write!(summary, "{k}: {v}, ");
    }
    println!("{summary}");
    for w in &report.warnings {
        let mut out = format!("{name}: warning (seed {seed}): u{}, log entry {}: {}\n", w.client, w.idx, w.what);
        for (i, e) in logs[w.client].iter().enumerate().take(w.idx + 4).skip(w.idx.saturating_sub(6)) {
            let _ = writeln!(out, "  {}{i:>5} {}", if i == w.idx { ">>" } else { "  " }, format_entry(t0, e));
        }
        println!("{out}");
    }
    if report.violations.is_empty() {
        println!("{name}: every check passed ({} warnings)", report.warnings.len());
        return;
    }

    let mut out =
        format!("{name}: {} violations. Seed {seed} (CHAT_FAULTS_SEED={seed}); faults:\n", report.violations.len());
    for (at, what) in &injected {
        let _ = writeln!(out, "  {:>7.3}s {what}", at.as_secs_f64());
    }
    let _ = writeln!(out, "node logs: {}", cluster.logs.join(" "));
    let dump =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("faults-{seed}-{}.log", std::process::id()));
    let mut all = String::new();
    for (c, log) in logs.iter().enumerate() {
        let _ = writeln!(all, "== u{c}");
        for (i, e) in log.iter().enumerate() {
            let _ = writeln!(all, "{i:>5} {}", format_entry(t0, e));
        }
    }
    match std::fs::write(&dump, all) {
        Ok(()) => {
            let _ = writeln!(out, "every client's log: {}", dump.display());
        }
        Err(e) => {
            let _ = writeln!(out, "every client's log could not be written to {}: {e}", dump.display());
        }
    }
    for v in report.violations.iter().take(8) {
        let _ = writeln!(out, "\nu{}, log entry {}: {}", v.client, v.idx, v.what);
        let log = &logs[v.client];
        for (i, e) in log.iter().enumerate().take(v.idx + 6).skip(v.idx.saturating_sub(14)) {
            let mark = if i == v.idx { ">>" } else { "  " };
            let _ = writeln!(out, "  {mark}{i:>5} {}", format_entry(t0, e));
        }
    }
    for v in report.violations.iter().skip(8) {
        let _ = writeln!(out, "u{}, log entry {}: {}", v.client, v.idx, v.what);
    }
    panic!("{out}");
}

/// The faults of the Redis tests: nodes killed, Redis frozen, saved and restarted, cuts.
const REDIS_FAULTS: [FaultKind; 5] =
    [FaultKind::KillNode, FaultKind::PauseRedis, FaultKind::SaveRedis, FaultKind::RestartRedis, FaultKind::CutClients];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_nodes_lose_nothing_under_faults() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (seed, secs) = settings(60);
    let redis = RedisSide::start();
    run("redis, 3 nodes", Backend::Redis(redis), None, 3, &REDIS_FAULTS, secs, seed).await;
}

/// The same checker with every node keeping the conversation in one PostgreSQL (issue 12),
/// which is frozen and killed too. Redis restarts now go on from the store in the same epoch,
/// and a resend after one still gets its original seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_postgres_nodes_lose_nothing_under_faults() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (seed, secs) = settings(60);
    let kinds = [&REDIS_FAULTS[..], &[FaultKind::PauseStore, FaultKind::RestartStore]].concat();
    let (redis, store) = (RedisSide::start(), StoreSide::postgres());
    run("redis and postgres, 3 nodes", Backend::Redis(redis), Some(store), 3, &kinds, secs.div_ceil(2), seed).await;
}

/// The same checker with Redis under Sentinel: the primary is killed (its replica takes over,
/// the killed one comes back as the new replica) while nodes are killed and connections cut.
/// The nodes answer `sent` once the replica has a message (`--redis-replicas 1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_redis_under_sentinel_lose_nothing_silently_under_failovers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (seed, secs) = settings(60);
    let kinds = [FaultKind::KillNode, FaultKind::FailoverRedis, FaultKind::CutClients];
    let sentinel = SentinelSide::start().await;
    run("redis under sentinel, 3 nodes", Backend::Sentinel(sentinel), None, 3, &kinds, secs.div_ceil(2), seed).await;
}

/// The same checker on a Redis Cluster of three primaries with a replica each, one room on
/// each primary: the primary of a room is killed (its replica takes over, the killed one comes
/// back as the replica), while nodes are killed and connections cut. (A primary frozen past its
/// failover is not among the faults: let go, it runs the scripts queued to it before it learns
/// it was demoted, and publishes their messages to the nodes still subscribed there, which may
/// deliver them before the room's new epoch is announced; docs/faults.md.) The nodes answer `sent` once a replica has a
/// message (`--redis-replicas 1`); a failover may still lose what they acknowledged, but never
/// silently: the room starts a new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_a_redis_cluster_lose_nothing_silently_when_a_primary_dies() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (seed, secs) = settings(60);
    let kinds = [FaultKind::KillNode, FaultKind::KillClusterPrimary, FaultKind::CutClients];
    let redis = RedisClusterSide::start();
    run("redis cluster, 3 nodes", Backend::RedisCluster(redis), None, 3, &kinds, secs.div_ceil(2), seed).await;
}

/// The checker on NATS JetStream, one server with file storage: nodes killed, NATS frozen for
/// longer than the nodes' call timeout, NATS killed and restarted on its storage, cuts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_nodes_lose_nothing_under_faults() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (seed, secs) = settings(60);
    let kinds = [FaultKind::KillNode, FaultKind::PauseNats, FaultKind::RestartNats, FaultKind::CutClients];
    let nats = tokio::task::block_in_place(NatsServer::start);
    run("nats, 3 nodes", Backend::Nats(nats), None, 3, &kinds, secs.div_ceil(2), seed).await;
}

/// The checker on a three-server JetStream cluster storing each message on all three: one
/// server at a time is killed while clients publish (and restarted), nodes are killed,
/// connections cut. Nothing acknowledged may be lost, and no epoch may end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_cluster_nodes_lose_nothing_when_a_server_dies() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (seed, secs) = settings(60);
    let kinds = [FaultKind::KillNode, FaultKind::KillNatsServer, FaultKind::CutClients];
    let nats = tokio::task::block_in_place(NatsCluster::start);
    run("nats cluster, 3 nodes", Backend::NatsCluster(nats), None, 3, &kinds, secs.div_ceil(2), seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_node_loses_nothing_silently_under_faults() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (seed, secs) = settings(60);
    let kinds = [FaultKind::KillNode, FaultKind::CutClients];
    run("memory, 1 node", Backend::Memory, None, 1, &kinds, secs.div_ceil(2), seed).await;
}

/// The memory test with the node keeping the conversation in SQLite (issue 12, the example
/// server's default): a restarted node goes on in the same epoch, from the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_node_on_sqlite_loses_nothing_under_faults() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (seed, secs) = settings(60);
    let kinds = [FaultKind::KillNode, FaultKind::CutClients];
    run("memory and sqlite, 1 node", Backend::Memory, Some(StoreSide::sqlite()), 1, &kinds, secs.div_ceil(2), seed)
        .await;
}

/// What the checker found (seed 14955364433054832853): Redis killed and restarted twice from
/// the same snapshot. The first restart is detected and the room moves to
/// a new epoch; after the second, Redis holds the *old* epoch again (at the snapshot's seq), and
/// the node resets its members back to it and stores new messages under seqs of that epoch that
/// its members already received with other bodies. An epoch must never come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_back_to_one_snapshot_twice_starts_a_new_epoch_again() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut redis = RedisSide::start();
    let url = redis.url();
    let args = ["--broker", &url, "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--presence-ttl-ms", PRESENCE_TTL_MS];
    let node = ChatServer::start("faults-snapshot-twice", &args).await;
    let mut alice = tcp(node.tcp, "alice").await;
    let room = "twice";
    let first = within("join", alice.join(room, None)).await.expect("join");

    // (epoch, seq) → body text, over everything alice receives; the epochs in the order seen.
    let mut bodies: HashMap<(String, u64), String> = HashMap::new();
    let mut epochs = vec![first.epoch.clone()];
    let mut n = 0;
    let mut say = async |alice: &mut Client, epochs: &mut Vec<String>, bodies: &mut HashMap<(String, u64), String>| {
        n += 1;
        let text = format!("m{n}");
        // Retried with its key while the node finds Redis again after a restart.
        eventually(&format!("{text} acknowledged"), WAIT, || async {
            alice.send_with(room, json!({"text": text}), Some(&text), false).await.ok().flatten()
        })
        .await;
        let what = format!("{text} delivered");
        let got = next_matching(alice, &what, |e| match e {
            Event::Message(m) => m.body["text"] == text.as_str(),
            e => matches!(e, Event::Reset(_)),
        });
        let mut event = got.await;
        while let Event::Reset(reset) = &event {
            epochs.push(reset.epoch.clone());
            // Replayed or new messages of the new epoch may come first: recorded below.
            let message_or_reset = |e: &Event| matches!(e, Event::Message(_) | Event::Reset(_));
            event = next_matching(alice, &what, message_or_reset).await;
            while let Event::Message(m) = &event {
                if m.body["text"] == text.as_str() {
                    break;
                }
                record(epochs, bodies, m);
                event = next_matching(alice, &what, message_or_reset).await;
            }
        }
        let Event::Message(m) = &event else { unreachable!("a message") };
        record(epochs, bodies, m);
    };
    fn record(epochs: &[String], bodies: &mut HashMap<(String, u64), String>, m: &Message) {
        let epoch = epochs.last().expect("an epoch").clone();
        let seq = m.seq.expect("a stored message's seq");
        let text = m.body["text"].as_str().unwrap_or("").to_owned();
        if let Some(before) = bodies.insert((epoch.clone(), seq), text.clone()) {
            assert_eq!(
                before, text,
                "epoch {epoch} seq {seq} carried {before:?}, now {text:?}; epochs seen: {epochs:?}"
            );
        }
    }

    for _ in 0..3 {
        say(&mut alice, &mut epochs, &mut bodies).await;
    }
    redis.save().await.expect("SAVE");
    for _ in 0..3 {
        say(&mut alice, &mut epochs, &mut bodies).await;
    }
    redis.crash_and_restart();
    say(&mut alice, &mut epochs, &mut bodies).await;
    assert_eq!(epochs.len(), 2, "back from the snapshot (seq 3 of 6): a new epoch, {epochs:?}");
    redis.crash_and_restart();
    for _ in 0..3 {
        say(&mut alice, &mut epochs, &mut bodies).await;
    }
    assert_eq!(epochs.len(), 3, "back from the same snapshot again: another new epoch, {epochs:?}");
    assert!(!epochs[..2].contains(&epochs[2]), "an epoch came back: {epochs:?}");
    drop(node);
}

/// What check 5 found: after Redis came back from an older snapshot, a node that holds no state
/// of a room (no member there before) answers a join from Redis's older position, in the old
/// epoch, and stores a new message under a seq the room already had. Its member gets `sent`; a
/// member on the node that delivered the newer messages gets `reset` when that node finds the
/// rollback, and the acknowledged message was in no history (nothing lost Redis's state after
/// it was stored). Now the new epoch keeps what Redis holds, that message included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_room_acknowledges_into_a_rolled_back_epoch() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut redis = RedisSide::start();
    let url = redis.url();
    let args = |id| ["--broker", &url, "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--node-id", id];
    let a = ChatServer::start("faults-stateless-a", &args("a")).await;
    let b = ChatServer::start("faults-stateless-b", &args("b")).await;
    let room = "stateless";
    let mut alice = tcp(a.tcp, "alice").await; // on a, which delivers everything
    let joined = within("join", alice.join(room, None)).await.expect("join");
    let say = async |client: &Client, text: &str| {
        eventually(&format!("{text} acknowledged"), WAIT, || async {
            client.send_with(room, json!({"text": text}), Some(text), false).await.ok().flatten()
        })
        .await
    };
    for i in 1..=3 {
        say(&alice, &format!("m{i}")).await;
    }
    redis.save().await.expect("SAVE");
    for i in 4..=6 {
        say(&alice, &format!("m{i}")).await;
    }
    messages(&mut alice, room, 6).await;
    redis.crash_and_restart(); // back at seq 3 of the same epoch

    // bob, on b (which never had the room), comes back with what he saw: seq 6.
    let bob = tcp(b.tcp, "bob").await;
    let back = eventually("bob's join through b", WAIT, || async {
        bob.join(room, Some(Since::new(&joined.epoch, 6))).await.ok()
    })
    .await;
    let x = say(&bob, "x").await;
    // x reaches alice, or she is reset and x is in the new epoch's history.
    let what = "x or a reset at alice";
    let event = next_matching(&mut alice, what, |e| match e {
        Event::Message(m) => m.body["text"] == "x",
        e => matches!(e, Event::Reset(_)),
    })
    .await;
    let page = within("history", alice.history(room, HistoryQuery::default())).await.expect("history");
    let texts: Vec<String> =
        history_keys(&page).iter().map(|k| k.2["text"].as_str().unwrap_or("").to_owned()).collect();
    assert!(
        matches!(event, Event::Message(_)) || texts.iter().any(|t| t == "x"),
        "bob joined through b with since seq 6 of {} and got {back:?}; x was acknowledged as seq {x}, alice got {event:?} and the history of epoch {} is {texts:?}",
        joined.epoch,
        page.epoch
    );
    drop((a, b));
}
