//! Redis Cluster for tests ([`RedisCluster`]): `redis-server` processes in cluster mode that a
//! test starts itself, joined into one cluster by `redis-cli --cluster create`, for the tests of
//! a broker whose slot owner dies, stalls, fails over, comes back, or moves a slot away.
//!
//! Each node runs in a directory of its own (its `nodes.conf` and its log), on a loopback port
//! whose cluster bus port (the port + 10000) was free too. The ports are taken below the
//! kernel's ephemeral range, so that no outgoing connection holds a killed node's port when it
//! is restarted. Nodes are spoken to in RESP over a plain `TcpStream` ([`Reply`],
//! [`Connection`]), so this crate needs no Redis client.

use crate::StartFailure;
use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::find_executable;

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// A node's cluster bus port is its client port plus this (Redis' default).
const BUS_OFFSET: u16 = 10000;

/// `cluster-node-timeout`, in milliseconds: how long a node may not answer before it is
/// suspected. Short, so a failover takes seconds; long enough that a busy machine does not make
/// a live node look dead.
const NODE_TIMEOUT_MS: u64 = 1000;

/// How long a node has to answer `PING` after it is started.
const START_LIMIT: Duration = Duration::from_secs(10);

/// How long a node has to answer one command (a `MIGRATE` of a batch included).
const COMMAND_LIMIT: Duration = Duration::from_secs(10);

/// How long `redis-cli --cluster create` may take: it waits a second before and between its
/// checks that every node has joined.
const CREATE_LIMIT: Duration = Duration::from_secs(60);

/// How long the cluster has to settle (every node agreeing on the slots and roles, every
/// replica synchronised) after it is created, after a node is restarted or resumed, or after a
/// slot has moved: a few rounds of gossip (a node pings every other at least every half node
/// timeout) and a full synchronisation of a test-sized data set, with room for a loaded machine.
const CLUSTER_LIMIT: Duration = Duration::from_secs(30);

/// How long a replica has to take over from a killed primary: the primary is suspected after
/// one node timeout and failed once a majority of primaries has gossiped about it; the replica
/// then waits 0.5 to 1 s (plus 1 s per better-ranked replica) before asking for votes; an
/// election that gets no majority is retried after four node timeouts (at least 4 s). So about
/// 3 s, 7 s with one lost election; this leaves room for three and a loaded machine.
const FAILOVER_LIMIT: Duration = Duration::from_millis(25 * NODE_TIMEOUT_MS);

/// First starts on fresh ports: a port found free may be taken by another process before the
/// node binds it, and then the next attempt takes other ports. A restart keeps its port.
const START_ATTEMPTS: usize = 3;

/// The ports held by the nodes of the clusters of this process, so that two clusters started at
/// once (tests run in parallel) never pick the same one, nor a port a killed node will take again.
static CLAIMED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A Redis Cluster of `redis-server` processes on loopback ports: `primaries` primaries sharing
/// the 16384 slots, each with `replicas_per_primary` replicas. Every node can be addressed by
/// its port ([`command`](Self::command), [`connect`](Self::connect)), killed, paused, resumed and
/// restarted; a killed or paused primary's replica takes over ([`wait_failover`](Self::wait_failover)),
/// and a slot can be moved to another primary, all at once ([`migrate_slot`](Self::migrate_slot))
/// or step by step ([`begin_migration`](Self::begin_migration)). Every process is killed, and
/// every directory removed, on drop.
///
/// Nodes keep nothing on disk but their cluster configuration (`nodes.conf`): a restarted node
/// comes back in the cluster with the role it last knew, and empty (a replica is then sent its
/// primary's data again).
pub struct RedisCluster {
    /// The `redis-server` executable.
    bin: PathBuf,
    /// The cluster's directory (removed on drop): a directory per node, named by its port, and
    /// `create.log` (what `redis-cli --cluster create` printed).
    dir: PathBuf,
    /// The nodes, in the order they were started: `redis-cli` makes the first `primaries` the
    /// primaries.
    nodes: Vec<Node>,
}

/// One `redis-server` process of a [`RedisCluster`].
struct Node {
    port: u16,
    /// Its cluster node id (kept in `nodes.conf`, so it survives a restart).
    id: String,
    /// Its directory: `nodes.conf` and `redis.log`.
    dir: PathBuf,
    child: Option<Child>,
    /// Whether it is stopped (SIGSTOP).
    paused: bool,
    /// What it served when it was killed or paused while a primary: what a replica takes over.
    served: Option<Served>,
}

/// The slots a primary served and the replicas it had, when it was killed or paused.
#[derive(Clone, Debug)]
struct Served {
    slots: Vec<RangeInclusive<u16>>,
    replicas: Vec<String>,
}

impl RedisCluster {
    /// Starts `primaries * (1 + replicas_per_primary)` nodes, creates the cluster with
    /// `redis-cli --cluster create`, and waits (up to 30 s) until it is [ready](Self::wait_ready):
    /// every node says `cluster_state:ok` with all 16384 slots assigned, all agree on who serves
    /// which slots and who replicates whom, and every replica is synchronised with its primary.
    /// Panics when `primaries` is below 3 (Redis Cluster needs a majority of primaries to fail
    /// one over; `redis-cli` refuses fewer), saying what to install when `redis-server` or
    /// `redis-cli` is missing, and with the nodes' logs when the cluster does not form.
    pub fn start(primaries: usize, replicas_per_primary: usize) -> RedisCluster {
        assert!(primaries >= 3, "a Redis Cluster needs at least 3 primaries, not {primaries}");
        let bin = executable("redis-server");
        let cli = executable("redis-cli");
        let count = primaries * (1 + replicas_per_primary);
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let ports: Vec<u16> = (0..count).map(|_| claim_port()).collect();
            let dir = std::env::temp_dir().join(format!("chat-redis-cluster-{}-{}", std::process::id(), ports[0]));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("a directory for the Redis Cluster");
            let nodes = ports
                .into_iter()
                .map(|port| {
                    let node_dir = dir.join(port.to_string());
                    std::fs::create_dir_all(&node_dir).expect("a directory for a redis-server");
                    Node { port, id: String::new(), dir: node_dir, child: None, paused: false, served: None }
                })
                .collect();
            let mut cluster = RedisCluster { bin: bin.clone(), dir, nodes };
            let mut taken = None;
            for i in 0..cluster.nodes.len() {
                cluster.spawn(i);
            }
            for i in 0..cluster.nodes.len() {
                match cluster.nodes[i].wait_answering() {
                    Ok(()) => {}
                    Err(failure) if failure.port_taken => {
                        taken = Some(failure.message);
                        break;
                    }
                    Err(failure) => panic!("{}", failure.message),
                }
            }
            if let Some(message) = taken {
                last = message; // the cluster is dropped: its processes, directories and ports
                continue;
            }
            for i in 0..cluster.nodes.len() {
                let id = cluster.command(cluster.nodes[i].port, &["CLUSTER", "MYID"]);
                cluster.nodes[i].id = id.text().unwrap_or_else(|| panic!("CLUSTER MYID answered {id}"));
            }
            cluster.create(&cli, replicas_per_primary);
            cluster.settle(CLUSTER_LIMIT, "the Redis Cluster to form", |cluster, view| {
                let serving = view.iter().filter(|n| !n.slots.is_empty()).count();
                if serving != primaries {
                    return Err(format!("{serving} nodes serve slots, not {primaries}"));
                }
                for primary in view.iter().filter(|n| !n.slots.is_empty()) {
                    let replicas = view.iter().filter(|n| n.primary.as_deref() == Some(&primary.id)).count();
                    if replicas != replicas_per_primary {
                        return Err(format!(
                            "the primary on port {} has {replicas} replicas, not {replicas_per_primary}",
                            primary.port
                        ));
                    }
                }
                cluster.check_ready(view)
            });
            return cluster;
        }
        panic!("a redis-server of the cluster found its port taken {START_ATTEMPTS} times; the last time:\n{last}")
    }

    /// Runs `redis-cli --cluster create` on every node, the first ones becoming the primaries;
    /// panics with its output when it fails or does not finish within [`CREATE_LIMIT`].
    fn create(&self, cli: &Path, replicas_per_primary: usize) {
        let log_path = self.dir.join("create.log");
        let log = std::fs::File::create(&log_path).expect("create create.log");
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas".into(), replicas_per_primary.to_string(), "--cluster-yes".into()]);
        let mut child = Command::new(cli)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_or(Stdio::null(), Stdio::from))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start redis-cli");
        let deadline = Instant::now() + CREATE_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for redis-cli") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let output = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("redis-cli --cluster create did not finish within {CREATE_LIMIT:?}:\n{output}");
            }
            std::thread::sleep(Duration::from_millis(20)); // the retry interval of a loop with a deadline
        };
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            status.success() && output.contains("[OK] All 16384 slots covered"),
            "redis-cli {} failed ({status}):\n{output}\n{}",
            args.join(" "),
            self.logs()
        );
    }

    /// Starts node `i`'s process; its log goes to `redis.log` in its directory.
    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let dir = node.dir.display().to_string();
        let log = node.dir.join("redis.log").display().to_string();
        let timeout = NODE_TIMEOUT_MS.to_string();
        let port = node.port.to_string();
        #[rustfmt::skip]
        let args = [
            "--port", &port, "--bind", "127.0.0.1", "--dir", &dir, "--logfile", &log,
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", &timeout,
            // A replica may take over however long it has been cut off from its primary (by
            // default one that has not heard from it for 10 node timeouts will not).
            "--cluster-replica-validity-factor", "0",
            // A replica stays with its primary: an orphaned primary does not take one of
            // another's replicas, and a primary that gives its last slot away (not by a
            // failover) stays an empty primary, so the topology a test sets up is the one it gets.
            "--cluster-allow-replica-migration", "no",
            // Nothing on disk but nodes.conf: a restarted node comes back empty.
            "--save", "", "--appendonly", "no",
            // A replica is sent the data at once (Redis waits 5 s by default, in case others join).
            "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
        ];
        let child = Command::new(&self.bin)
            .args(args)
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        node.child = Some(child);
        node.paused = false;
    }

    /// The node on `port`; panics when the cluster has none there.
    fn node(&self, port: u16) -> &Node {
        self.nodes.iter().find(|n| n.port == port).unwrap_or_else(|| panic!("no node of the cluster on port {port}"))
    }

    /// The index of the node on `port`; panics when the cluster has none there.
    fn index(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node of the cluster on port {port}"))
    }

    /// The ports of all nodes, running or not, in the order they were started (the first
    /// `primaries` were created as the primaries).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,...`: every node, as a cluster client takes its seed nodes.
    pub fn seeds(&self) -> String {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// `redis+cluster://` followed by the [`seeds`](Self::seeds): the URL the Redis broker takes
    /// for a cluster.
    pub fn url(&self) -> String {
        format!("redis+cluster://{}", self.seeds())
    }

    /// The cluster node id of the node on `port` (it survives a restart).
    pub fn node_id(&self, port: u16) -> &str {
        &self.node(port).id
    }

    /// Whether the node on `port` is running and not paused: whether it can answer.
    pub fn is_live(&self, port: u16) -> bool {
        self.node(port).is_live()
    }

    /// A new connection to the node on `port`, for commands whose replies come later
    /// (`SSUBSCRIBE`) or that hold state (`ASKING`). Panics when the node does not accept it.
    pub fn connect(&self, port: u16) -> Connection {
        let node = self.node(port);
        assert!(node.child.is_some(), "the node on port {port} is killed");
        Connection::open(port).unwrap_or_else(|e| panic!("cannot connect to the node on port {port}: {e}"))
    }

    /// Runs one command on the node on `port` (over a new connection) and returns its reply,
    /// errors included (`-MOVED 3999 127.0.0.1:P` is [`Reply::Error`]). Panics when the node
    /// does not answer within 10 s (a paused node does not).
    ///
    /// Each call is a new connection: a command about the connection's own past (`WAIT`
    /// waits for the writes made on its connection, and returns at once on a fresh one) or
    /// future (`READONLY`, `ASKING`, `MULTI`) needs a [`connect`](Self::connect)ion.
    pub fn command<A: AsRef<[u8]>>(&self, port: u16, args: &[A]) -> Reply {
        self.connect(port).call(args)
    }

    /// The slot of `key`: CRC16 (XMODEM) of the key modulo 16384, or of its hash tag, the part
    /// between the first `{` and the first `}` after it when that part is not empty (so
    /// `chat:{room}:s` and `{room}` share a slot, and `{}x` hashes whole).
    pub fn key_slot(key: impl AsRef<[u8]>) -> u16 {
        let key = key.as_ref();
        let hashed = match key.iter().position(|&b| b == b'{') {
            Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
                Some(len) if len > 0 => &key[open + 1..open + 1 + len],
                _ => key,
            },
            None => key,
        };
        crc16_xmodem(hashed) % SLOTS
    }

    /// The port of the primary serving `slot`, as a live node sees the cluster (during a
    /// failover, possibly a killed node).
    pub fn primary_of_slot(&self, slot: u16) -> u16 {
        let view = self.view();
        owner(&view, slot).unwrap_or_else(|| panic!("no node serves slot {slot}: {view:?}")).port
    }

    /// The ports of the primaries serving slots, as a live node sees the cluster, in port order.
    pub fn primaries(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.view().iter().filter(|n| !n.slots.is_empty()).map(|n| n.port).collect();
        ports.sort_unstable();
        ports
    }

    /// The ports of the replicas of the node on `port`, as a live node sees the cluster (killed
    /// replicas included), in port order.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let id = &self.node(port).id;
        let mut ports: Vec<u16> =
            self.view().iter().filter(|n| n.primary.as_ref() == Some(id)).map(|n| n.port).collect();
        ports.sort_unstable();
        ports
    }

    /// Kills the node on `port` (SIGKILL): a crash; its data is lost, its `nodes.conf` kept.
    /// Does nothing when it is not running. A killed primary's replica takes over after about
    /// two seconds: [`wait_failover`](Self::wait_failover).
    pub fn kill(&mut self, port: u16) {
        let i = self.index(port);
        if self.nodes[i].child.is_none() {
            return;
        }
        self.note_served(i);
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// Freezes the node on `port` (SIGSTOP): connections stay open and nothing answers, as with
    /// a stalled host; the others stop hearing from it, and after about two seconds fail it over
    /// when it is a primary with a replica. Returns once the process is stopped.
    /// [`resume`](Self::resume) lets it go on.
    pub fn pause(&mut self, port: u16) {
        let i = self.index(port);
        assert!(self.nodes[i].child.is_some(), "the node on port {port} is killed");
        if self.nodes[i].paused {
            return;
        }
        self.note_served(i);
        let node = &mut self.nodes[i];
        node.signal("-STOP");
        let pid = node.child.as_ref().expect("redis-server is running").id();
        let deadline = Instant::now() + START_LIMIT;
        while !crate::stopped(pid) {
            assert!(Instant::now() < deadline, "redis-server on port {port} did not stop within {START_LIMIT:?}");
            std::thread::sleep(Duration::from_millis(2)); // the retry interval of a loop with a deadline
        }
        node.paused = true;
    }

    /// Lets a [`pause`](Self::pause)d node go on (SIGCONT). A primary that was failed over in the
    /// meantime turns itself into a replica of the one that took over;
    /// [`wait_ready`](Self::wait_ready) waits until it has.
    pub fn resume(&mut self, port: u16) {
        let i = self.index(port);
        let node = &mut self.nodes[i];
        assert!(node.child.is_some(), "the node on port {port} is killed");
        node.signal("-CONT");
        node.paused = false;
        node.served = None;
    }

    /// Kills the node on `port` (SIGKILL) when it runs, and starts it again on the same port in
    /// the same directory, with its `nodes.conf`: it comes back into the cluster with the role
    /// it last knew, and empty. A primary that was failed over learns that another serves its
    /// slots and becomes that one's replica. Returns once it answers `PING`;
    /// [`wait_ready`](Self::wait_ready) waits until the cluster has taken it back.
    pub fn restart(&mut self, port: u16) {
        self.kill(port);
        let i = self.index(port);
        self.spawn(i);
        if let Err(failure) = self.nodes[i].wait_answering() {
            panic!("{}", failure.message);
        }
        self.nodes[i].served = None;
    }

    /// Records what the node `i` serves, before it is killed or paused: the slots and replicas
    /// [`wait_failover`](Self::wait_failover) looks for.
    fn note_served(&mut self, i: usize) {
        if !self.nodes.iter().any(Node::is_live) {
            return;
        }
        let view = self.view();
        let id = &self.nodes[i].id;
        let Some(me) = view.iter().find(|n| n.id == *id) else { return };
        if me.primary.is_none() && !me.slots.is_empty() {
            let replicas = view.iter().filter(|n| n.primary.as_ref() == Some(id)).map(|n| n.id.clone()).collect();
            self.nodes[i].served = Some(Served { slots: me.slots.clone(), replicas });
        }
    }

    /// Waits (up to 25 s) until a replica of the primary on `old_primary`, killed or paused,
    /// has taken over: it serves all the slots the old primary served, every live node agrees,
    /// says `cluster_state:ok`, and every live replica is synchronised. Returns the new
    /// primary's port. Panics at once when the old primary is live or had no replica, and with
    /// the nodes' state and logs after the deadline.
    pub fn wait_failover(&self, old_primary: u16) -> u16 {
        let node = self.node(old_primary);
        assert!(!node.is_live(), "the primary on port {old_primary} is live: kill or pause it first");
        let served = node
            .served
            .clone()
            .unwrap_or_else(|| panic!("the node on port {old_primary} served no slots when it was killed or paused"));
        assert!(
            !served.replicas.is_empty(),
            "the primary on port {old_primary} had no replica: nothing takes over its slots"
        );
        self.settle(FAILOVER_LIMIT, &format!("a replica of port {old_primary} to take over"), |cluster, view| {
            let first = served.slots[0].start();
            let new = owner(view, *first).ok_or_else(|| format!("no node serves slot {first}"))?;
            if !served.replicas.contains(&new.id) {
                return Err(format!("slot {first} is still served by port {}", new.port));
            }
            if new.slots != served.slots {
                return Err(format!("port {} serves {:?}, not {:?}", new.port, new.slots, served.slots));
            }
            let port = new.port;
            cluster.check_ready(view)?;
            Ok(port)
        })
    }

    /// Waits (up to 30 s) until the cluster is whole again after a node was restarted or
    /// resumed, or a slot moved: every live node says `cluster_state:ok` with all 16384 slots
    /// assigned and knows every node; all live nodes agree on who serves which slots and who
    /// replicates whom; none of them takes another live node for failing; every live replica's
    /// primary is live and its link to it up (`master_link_status:up`). Killed and paused nodes
    /// are not asked. Panics with the nodes' state and logs after the deadline.
    pub fn wait_ready(&self) {
        self.settle(CLUSTER_LIMIT, "the Redis Cluster to be ready", |cluster, view| cluster.check_ready(view));
    }

    /// Polls `check` with a live node's view of the cluster until it succeeds; panics, saying
    /// what was awaited and why it was not there, with the nodes' logs, after `limit`.
    fn settle<T>(
        &self,
        limit: Duration,
        what: &str,
        mut check: impl FnMut(&Self, &[NodeEntry]) -> Result<T, String>,
    ) -> T {
        assert!(self.nodes.iter().any(Node::is_live), "every node is killed or paused");
        let deadline = Instant::now() + limit;
        loop {
            let result = self.try_view().and_then(|view| check(self, &view));
            match result {
                Ok(value) => return value,
                Err(why) if Instant::now() >= deadline => {
                    panic!("timed out after {limit:?} waiting for {what}: {why}\n{}", self.logs())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)), // the retry interval of a loop with a deadline
            }
        }
    }

    /// Whether the cluster is ready ([`wait_ready`](Self::wait_ready)), given one live node's
    /// `view`; what is not ready when it is not.
    fn check_ready(&self, view: &[NodeEntry]) -> Result<(), String> {
        let agreed = canonical(view);
        let mut covered = 0usize;
        for n in view.iter().filter(|n| n.primary.is_none()) {
            covered += n.slots.iter().map(|r| usize::from(r.end() - r.start()) + 1).sum::<usize>();
        }
        if covered != usize::from(SLOTS) {
            return Err(format!("{covered} slots are served, not {SLOTS}: {view:?}"));
        }
        for node in self.nodes.iter().filter(|n| n.is_live()) {
            let port = node.port;
            let mut connection = Connection::open(port).map_err(|e| format!("port {port}: {e}"))?;
            let info = connection.ask(&["CLUSTER", "INFO"])?.text().unwrap_or_default();
            for expected in ["cluster_state:ok", "cluster_slots_assigned:16384", "cluster_slots_ok:16384"] {
                if !info.lines().any(|l| l.trim() == expected) {
                    return Err(format!("port {port}: no {expected} in CLUSTER INFO:\n{info}"));
                }
            }
            let known = format!("cluster_known_nodes:{}", self.nodes.len());
            if !info.lines().any(|l| l.trim() == known) {
                return Err(format!("port {port}: no {known} in CLUSTER INFO:\n{info}"));
            }
            let its_view = connection.view()?;
            if canonical(&its_view) != agreed {
                return Err(format!("port {port} sees {its_view:?}, another {view:?}"));
            }
            for other in its_view.iter().filter(|n| n.failing()) {
                if self.nodes.iter().any(|l| l.id == other.id && l.is_live()) {
                    return Err(format!("port {port} takes the live port {} for failing: {other:?}", other.port));
                }
            }
            let me = view.iter().find(|n| n.id == node.id).ok_or_else(|| format!("no port {port} in {view:?}"))?;
            if let Some(primary) = &me.primary {
                let primary = self
                    .nodes
                    .iter()
                    .find(|n| n.id == *primary)
                    .ok_or_else(|| format!("port {port} replicates an unknown node {primary}"))?;
                if !primary.is_live() {
                    return Err(format!("port {port} replicates port {}, which is down", primary.port));
                }
                let replication = connection.ask(&["INFO", "replication"])?.text().unwrap_or_default();
                let wanted = [format!("master_port:{}", primary.port), "master_link_status:up".to_owned()];
                if !wanted.iter().all(|w| replication.lines().any(|l| l.trim() == w)) {
                    return Err(format!("port {port} is not in sync with port {}:\n{replication}", primary.port));
                }
            }
        }
        Ok(())
    }

    /// The cluster as the first live node sees it (`CLUSTER NODES`); panics when it does not
    /// answer.
    fn view(&self) -> Vec<NodeEntry> {
        self.try_view().unwrap_or_else(|why| panic!("{why}"))
    }

    /// The cluster as the first live node sees it, or why it could not be read.
    fn try_view(&self) -> Result<Vec<NodeEntry>, String> {
        let node = self.nodes.iter().find(|n| n.is_live()).ok_or("every node is killed or paused")?;
        self.try_view_of(node.port)
    }

    /// The cluster as the node on `port` sees it.
    fn try_view_of(&self, port: u16) -> Result<Vec<NodeEntry>, String> {
        Connection::open(port).map_err(|e| format!("port {port}: {e}"))?.view()
    }

    /// The end of every node's log, for a failure message.
    fn logs(&self) -> String {
        let mut text = std::fs::read_to_string(self.dir.join("create.log"))
            .map(|l| format!("--- redis-cli --cluster create:\n{l}\n"))
            .unwrap_or_default();
        for node in &self.nodes {
            let state = match (&node.child, node.paused) {
                (None, _) => "killed",
                (Some(_), true) => "paused",
                (Some(_), false) => "running",
            };
            text.push_str(&format!("--- port {} ({state}, id {}):\n{}\n", node.port, node.id, node.log()));
        }
        text
    }

    /// Moves `slot` to the primary on `to` with its keys, the way `redis-cli --cluster reshard`
    /// does: [`begin_migration`](Self::begin_migration), then [`Migration::finish`].
    pub fn migrate_slot(&self, slot: u16, to: u16) {
        self.begin_migration(slot, to).finish();
    }

    /// Starts moving `slot` from the primary serving it to the primary on `to`, and stops
    /// there: `CLUSTER SETSLOT slot IMPORTING <source id>` on the target, then `CLUSTER SETSLOT
    /// slot MIGRATING <target id>` on the source. No key has moved yet
    /// ([`Migration::move_keys`] moves some): until [`Migration::finish`], the source answers
    /// for the keys it still holds and sends clients to the target (`-ASK`) for the others.
    pub fn begin_migration(&self, slot: u16, to: u16) -> Migration<'_> {
        assert!(slot < SLOTS, "slot {slot} is not below {SLOTS}");
        let view = self.view();
        let source = owner(&view, slot).unwrap_or_else(|| panic!("no node serves slot {slot}")).port;
        assert_ne!(source, to, "slot {slot} is already served by port {to}");
        let target = view.iter().find(|n| n.port == to).unwrap_or_else(|| panic!("port {to} is not in {view:?}"));
        assert!(target.primary.is_none(), "port {to} is a replica: a slot can only move to a primary");
        let slot_arg = slot.to_string();
        let importing = self.command(to, &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", self.node_id(source)]);
        assert!(importing.is_ok(), "CLUSTER SETSLOT {slot} IMPORTING on port {to} answered {importing}");
        let migrating = self.command(source, &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", self.node_id(to)]);
        assert!(migrating.is_ok(), "CLUSTER SETSLOT {slot} MIGRATING on port {source} answered {migrating}");
        Migration { cluster: self, slot, source, target: to }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill(); // SIGKILL stops a paused process too
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        for node in &self.nodes {
            claimed.remove(&node.port);
        }
    }
}

impl Node {
    /// Whether it is running and not paused.
    fn is_live(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    /// Waits until it answers `PING`, or says why it did not.
    fn wait_answering(&mut self) -> Result<(), StartFailure> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let pong = Connection::open(self.port).map_err(|e| e.to_string()).and_then(|mut c| c.ask(&["PING"]));
            if matches!(&pong, Ok(Reply::Status(s)) if s == "PONG") {
                return Ok(());
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                let log = self.log();
                return Err(StartFailure {
                    port_taken: log.contains("Address already in use"),
                    message: format!("redis-server on port {} exited at once ({status}):\n{log}", self.port),
                });
            }
            if Instant::now() >= deadline {
                return Err(StartFailure {
                    port_taken: false,
                    message: format!(
                        "redis-server did not answer PING on port {} within {START_LIMIT:?} ({pong:?}):\n{}",
                        self.port,
                        self.log()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(10)); // the retry interval of a loop with a deadline
        }
    }

    /// The end of its log, for a failure message.
    fn log(&self) -> String {
        crate::log_tail(&self.dir.join("redis.log"), 30)
    }

    fn signal(&self, which: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id().to_string();
        let status = Command::new("kill").args([which, &pid]).status().expect("run kill");
        assert!(status.success(), "kill {which} {pid} failed");
    }
}

/// A slot being moved from one primary to another ([`RedisCluster::begin_migration`]). Dropping
/// it without [`finish`](Self::finish)ing leaves the slot half moved, as a resharding tool that
/// crashed would.
#[must_use = "the slot stays half moved until `finish`"]
pub struct Migration<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    source: u16,
    target: u16,
}

impl Migration<'_> {
    /// The slot being moved.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The port of the primary the slot moves from.
    pub fn source(&self) -> u16 {
        self.source
    }

    /// The port of the primary the slot moves to.
    pub fn target(&self) -> u16 {
        self.target
    }

    /// Moves up to `count` of the keys still on the source to the target (`CLUSTER
    /// GETKEYSINSLOT`, then `MIGRATE ... KEYS`), and returns them (read as UTF-8, lossily).
    pub fn move_keys(&self, count: usize) -> Vec<String> {
        let keys = self
            .cluster
            .command(self.source, &["CLUSTER", "GETKEYSINSLOT", &self.slot.to_string(), &count.to_string()]);
        let Reply::Array(keys) = keys else { panic!("CLUSTER GETKEYSINSLOT answered {keys}") };
        let keys: Vec<Vec<u8>> = keys
            .into_iter()
            .map(|k| match k {
                Reply::Bulk(k) => k,
                other => panic!("CLUSTER GETKEYSINSLOT answered a key {other}"),
            })
            .collect();
        if keys.is_empty() {
            return Vec::new();
        }
        let timeout = COMMAND_LIMIT.as_millis().to_string();
        let port = self.target.to_string();
        let mut args: Vec<&[u8]> =
            vec![b"MIGRATE", b"127.0.0.1", port.as_bytes(), b"", b"0", timeout.as_bytes(), b"KEYS"];
        args.extend(keys.iter().map(Vec::as_slice));
        let moved = self.cluster.command(self.source, &args);
        assert!(
            moved.is_ok(),
            "MIGRATE of {} keys of slot {} from port {} to port {} answered {moved}",
            keys.len(),
            self.slot,
            self.source,
            self.target
        );
        keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect()
    }

    /// Moves the remaining keys in batches of 100, then gives the slot to the target (`CLUSTER
    /// SETSLOT slot NODE <target id>` on the target, the source, and every other live primary),
    /// and waits (up to 30 s) until every live node says the target serves it.
    pub fn finish(self) {
        while !self.move_keys(100).is_empty() {}
        let cluster = self.cluster;
        let slot = self.slot.to_string();
        let target_id = cluster.node_id(self.target);
        let others = cluster.primaries().into_iter().filter(|&p| p != self.target && p != self.source);
        for port in [self.target, self.source].into_iter().chain(others) {
            if !cluster.is_live(port) {
                continue;
            }
            let reply = cluster.command(port, &["CLUSTER", "SETSLOT", &slot, "NODE", target_id]);
            assert!(reply.is_ok(), "CLUSTER SETSLOT {slot} NODE on port {port} answered {reply}");
        }
        let what = format!("every node to see slot {slot} served by port {}", self.target);
        cluster.settle(CLUSTER_LIMIT, &what, |cluster, _| {
            for node in cluster.nodes.iter().filter(|n| n.is_live()) {
                let view = cluster.try_view_of(node.port)?;
                let owner = owner(&view, self.slot).map(|n| n.port);
                if owner != Some(self.target) {
                    return Err(format!("port {} sees slot {slot} served by {owner:?}", node.port));
                }
            }
            Ok(())
        });
    }
}

/// A reply of a Redis node, in RESP2 (what a connection speaks until it says `HELLO 3`).
#[derive(Clone, PartialEq, Eq)]
pub enum Reply {
    /// A simple string (`+OK`), without its `+`.
    Status(String),
    /// An error (`-MOVED 3999 127.0.0.1:7002`), without its `-`.
    Error(String),
    /// An integer (`:1`).
    Integer(i64),
    /// A bulk string (`$3\r\nabc`).
    Bulk(Vec<u8>),
    /// A null bulk string (`$-1`) or a null array (`*-1`): no value.
    Nil,
    /// An array (`*2\r\n...`), its elements replies of their own.
    Array(Vec<Reply>),
}

/// Where a cluster node sends a client for a key it does not serve ([`Reply::redirect`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// `-MOVED slot 127.0.0.1:port`: the slot is served by that node now.
    Moved {
        /// The key's slot.
        slot: u16,
        /// The port of the node serving it.
        port: u16,
    },
    /// `-ASK slot 127.0.0.1:port`: the slot is moving to that node and the key is there
    /// already; ask it once, after `ASKING`.
    Ask {
        /// The key's slot.
        slot: u16,
        /// The port of the node the slot moves to.
        port: u16,
    },
}

impl Reply {
    /// Whether it is `+OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Status(s) if s == "OK")
    }

    /// The text of a simple or bulk string (a bulk string read as UTF-8, lossily).
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Status(s) => Some(s.clone()),
            Reply::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// The message of an error (`MOVED 3999 127.0.0.1:7002`).
    pub fn error(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => Some(e),
            _ => None,
        }
    }

    /// The redirection a `-MOVED` or `-ASK` error holds.
    pub fn redirect(&self) -> Option<Redirect> {
        let mut words = self.error()?.split(' ');
        let (kind, slot, address) = (words.next()?, words.next()?, words.next()?);
        let slot = slot.parse().ok()?;
        let port = address.rsplit_once(':')?.1.parse().ok()?;
        match kind {
            "MOVED" => Some(Redirect::Moved { slot, port }),
            "ASK" => Some(Redirect::Ask { slot, port }),
            _ => None,
        }
    }

    /// Reads one reply from `reader`.
    fn read(reader: &mut impl BufRead) -> std::io::Result<Reply> {
        let line = read_line(reader)?;
        let (&kind, rest) = line.split_first().ok_or_else(|| invalid("an empty line"))?;
        let text = || String::from_utf8_lossy(rest).into_owned();
        let number = || -> std::io::Result<i64> {
            std::str::from_utf8(rest).ok().and_then(|s| s.parse().ok()).ok_or_else(|| invalid(&format!("{:?}", text())))
        };
        Ok(match kind {
            b'+' => Reply::Status(text()),
            b'-' => Reply::Error(text()),
            b':' => Reply::Integer(number()?),
            b'$' => match usize::try_from(number()?) {
                Err(_) => Reply::Nil,
                Ok(len) => {
                    let mut bulk = vec![0; len + 2];
                    reader.read_exact(&mut bulk)?;
                    if !bulk.ends_with(b"\r\n") {
                        return Err(invalid("a bulk string not ended by CRLF"));
                    }
                    bulk.truncate(len);
                    Reply::Bulk(bulk)
                }
            },
            b'*' => match usize::try_from(number()?) {
                Err(_) => Reply::Nil,
                Ok(len) => Reply::Array((0..len).map(|_| Reply::read(reader)).collect::<Result<_, _>>()?),
            },
            other => return Err(invalid(&format!("a reply of type {:?}", char::from(other)))),
        })
    }
}

impl fmt::Display for Reply {
    /// Much as `redis-cli` shows it: `OK`, `(error) MOVED ...`, `(integer) 1`, `"abc"`,
    /// `(nil)`, `["a", (integer) 1]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Status(s) => write!(f, "{s}"),
            Reply::Error(e) => write!(f, "(error) {e}"),
            Reply::Integer(i) => write!(f, "(integer) {i}"),
            Reply::Bulk(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Reply::Nil => write!(f, "(nil)"),
            Reply::Array(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{item}")?;
                }
                write!(f, "]")
            }
        }
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One line of RESP, without its CRLF.
fn read_line(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the connection was closed"));
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid("a line not ended by CRLF"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not RESP: {what}"))
}

/// `args` as a RESP array of bulk strings: a command.
fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    request
}

/// A connection to one node of a [`RedisCluster`] ([`RedisCluster::connect`]), speaking RESP2:
/// commands go out with [`send`](Self::send), replies and pushed messages come in with
/// [`receive`](Self::receive), in order.
pub struct Connection {
    port: u16,
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(port: u16) -> std::io::Result<Connection> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, COMMAND_LIMIT)?;
        stream.set_read_timeout(Some(COMMAND_LIMIT))?;
        stream.set_write_timeout(Some(COMMAND_LIMIT))?;
        stream.set_nodelay(true)?;
        Ok(Connection { port, reader: BufReader::new(stream) })
    }

    /// The port of the node it is connected to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends one command; its reply is [`receive`](Self::receive)d later.
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<()> {
        self.reader.get_mut().write_all(&encode(args))
    }

    /// The next reply or pushed message (an `smessage` of a `SSUBSCRIBE`d channel). Panics
    /// when none comes within 10 s or the node closes the connection.
    pub fn receive(&mut self) -> Reply {
        let port = self.port;
        self.try_receive().unwrap_or_else(|e| panic!("no reply from the node on port {port}: {e}"))
    }

    /// The next reply, or why none came within 10 s.
    fn try_receive(&mut self) -> std::io::Result<Reply> {
        Reply::read(&mut self.reader)
    }

    /// Sends one command and returns its reply, or says why there was none.
    fn ask<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Reply, String> {
        let port = self.port;
        self.send(args).map_err(|e| format!("port {port}: {e}"))?;
        self.try_receive().map_err(|e| format!("port {port}: {e}"))
    }

    /// The cluster as this node sees it (`CLUSTER NODES`), or why it could not be read.
    fn view(&mut self) -> Result<Vec<NodeEntry>, String> {
        let reply = self.ask(&["CLUSTER", "NODES"])?;
        let text = reply.text().ok_or_else(|| format!("port {}: CLUSTER NODES answered {reply}", self.port))?;
        text.lines().filter(|l| !l.trim().is_empty()).map(NodeEntry::parse).collect()
    }

    /// Sends one command and returns its reply. Panics when the node does not answer within 10 s.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        let port = self.port;
        self.send(args).unwrap_or_else(|e| panic!("cannot send to the node on port {port}: {e}"));
        self.receive()
    }
}

/// One line of `CLUSTER NODES`: a node as another sees it.
#[derive(Clone, PartialEq, Eq)]
struct NodeEntry {
    id: String,
    /// Its client port (0 when its address is not known yet).
    port: u16,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, `noaddr`...
    flags: Vec<String>,
    /// The id of its primary, when it is a replica.
    primary: Option<String>,
    /// The slots it serves (a node's own migrating and importing slots, `[...]`, left out).
    slots: Vec<RangeInclusive<u16>>,
}

impl NodeEntry {
    /// Parses `<id> <ip:port@cport[,hostname]> <flags> <primary> <ping-sent> <pong-recv>
    /// <config-epoch> <link-state> <slot>...`.
    fn parse(line: &str) -> Result<NodeEntry, String> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(format!("not a CLUSTER NODES line: {line:?}"));
        }
        let address = fields[1].split(['@', ',']).next().unwrap_or_default();
        let port = address.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0);
        let flags = fields[2].split(',').map(str::to_owned).collect();
        let primary = (fields[3] != "-").then(|| fields[3].to_owned());
        let mut slots = Vec::new();
        for range in fields[8..].iter().filter(|s| !s.starts_with('[')) {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            match (start.parse(), end.parse()) {
                (Ok(start), Ok(end)) => slots.push(start..=end),
                _ => return Err(format!("not a slot range: {range:?} in {line:?}")),
            }
        }
        Ok(NodeEntry { id: fields[0].to_owned(), port, flags, primary, slots })
    }

    /// Whether the node seeing it suspects it (`fail?`) or has agreed it failed (`fail`), or has
    /// not finished meeting it.
    fn failing(&self) -> bool {
        self.flags.iter().any(|f| matches!(f.as_str(), "fail" | "fail?" | "handshake" | "noaddr"))
    }
}

impl fmt::Debug for NodeEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match &self.primary {
            Some(p) => format!("replica of {}", &p[..p.len().min(8)]),
            None => format!("primary of {:?}", self.slots),
        };
        write!(f, "{} port {} [{}] {role}", &self.id[..self.id.len().min(8)], self.port, self.flags.join(","))
    }
}

/// What all nodes must agree on: every node's id, port, primary and slots (its flags left
/// out: they say who is `myself`, and what each has heard lately), in id order.
fn canonical(view: &[NodeEntry]) -> Vec<NodeEntry> {
    let mut nodes: Vec<NodeEntry> = view.iter().map(|n| NodeEntry { flags: Vec::new(), ..n.clone() }).collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes
}

/// The primary serving `slot` in `view`.
fn owner(view: &[NodeEntry], slot: u16) -> Option<&NodeEntry> {
    view.iter().find(|n| n.primary.is_none() && n.slots.iter().any(|r| r.contains(&slot)))
}

/// CRC16 with the XMODEM parameters (polynomial 0x1021, initial value 0, no reflection), the
/// one Redis Cluster hashes keys with.
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The `name` executable (`redis-server`, `redis-cli`); panics, saying what to install, when it
/// is missing.
fn executable(name: &str) -> PathBuf {
    find_executable(&[name]).unwrap_or_else(|| {
        panic!("{name} not found on PATH: these tests need it; install it with `apt-get install redis-server`")
    })
}

/// A port for a node, claimed for this process until its cluster is dropped: free on
/// 127.0.0.1, with its cluster bus port (+10000) free too, both below the kernel's ephemeral
/// port range when it leaves room for them (so no outgoing connection takes them), picked at
/// random.
fn claim_port() -> u16 {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()))
        .unwrap_or(32768);
    let (low, high) = if ephemeral >= 12000 + u32::from(BUS_OFFSET) {
        (10000, ephemeral - u32::from(BUS_OFFSET)) // nodes in 10000.., their buses in 20000..
    } else {
        (1024, 65536 - u32::from(BUS_OFFSET))
    };
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..10_000 {
        let port = (low + (random() % u64::from(high - low)) as u32) as u16;
        let bus = port + BUS_OFFSET;
        let overlaps = [port, bus].iter().any(|p| {
            claimed.contains(p)
                || claimed.contains(&p.wrapping_add(BUS_OFFSET))
                || claimed.contains(&p.wrapping_sub(BUS_OFFSET))
        });
        if !overlaps && TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", bus)).is_ok()
        {
            claimed.insert(port);
            return port;
        }
    }
    panic!("no free port in {low}..{high} with its cluster bus port free")
}

/// A random number (std's randomly seeded hasher, fresh keys per call).
fn random() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> std::io::Result<Reply> {
        Reply::read(&mut std::io::Cursor::new(bytes))
    }

    #[test]
    fn crc16_is_the_xmodem_one() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3); // the check value of CRC-16/XMODEM
        assert_eq!(crc16_xmodem(b""), 0);
    }

    #[test]
    fn a_hash_tag_is_the_first_non_empty_braced_part() {
        let slot = RedisCluster::key_slot;
        assert_eq!(slot("chat:{room}:s"), slot("room"));
        assert_eq!(slot("a{b}c{d}"), slot("b"));
        assert_eq!(slot("{}x"), crc16_xmodem(b"{}x") % SLOTS);
        assert_eq!(slot("{}{a}"), crc16_xmodem(b"{}{a}") % SLOTS);
        assert_eq!(slot("x{"), crc16_xmodem(b"x{") % SLOTS);
        assert_eq!(slot("{a}}"), slot("a"));
        assert_eq!(slot("{{a}"), slot("{a"));
    }

    #[test]
    fn replies_of_every_resp2_type_are_read() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Reply::Status("OK".into()));
        assert_eq!(parse(b"-MOVED 1 127.0.0.1:7000\r\n").unwrap(), Reply::Error("MOVED 1 127.0.0.1:7000".into()));
        assert_eq!(parse(b":-42\r\n").unwrap(), Reply::Integer(-42));
        assert_eq!(parse(b"$5\r\na\r\nbc\r\n").unwrap(), Reply::Bulk(b"a\r\nbc".to_vec()));
        assert_eq!(parse(b"$0\r\n\r\n").unwrap(), Reply::Bulk(Vec::new()));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Reply::Nil);
        assert_eq!(parse(b"*-1\r\n").unwrap(), Reply::Nil);
        assert_eq!(parse(b"*0\r\n").unwrap(), Reply::Array(Vec::new()));
        let nested = parse(b"*3\r\n*2\r\n:1\r\n$-1\r\n+x\r\n*1\r\n$1\r\ny\r\n").unwrap();
        assert_eq!(
            nested,
            Reply::Array(vec![
                Reply::Array(vec![Reply::Integer(1), Reply::Nil]),
                Reply::Status("x".into()),
                Reply::Array(vec![Reply::Bulk(b"y".to_vec())]),
            ])
        );
        assert!(parse(b"$3\r\nab").is_err(), "a cut bulk string");
        assert!(parse(b"$2\r\nabc\r\n").is_err(), "a bulk string longer than said");
        assert!(parse(b"+OK\n").is_err(), "a line without CR");
        assert!(parse(b"").is_err(), "nothing");
        assert!(parse(b"*2\r\n:1\r\n").is_err(), "a cut array");
        assert!(parse(b"%1\r\n").is_err(), "RESP3");
    }

    #[test]
    fn redirects_are_read_from_errors() {
        let moved = Reply::Error("MOVED 3999 127.0.0.1:7002".into());
        assert_eq!(moved.redirect(), Some(Redirect::Moved { slot: 3999, port: 7002 }));
        let ask = Reply::Error("ASK 12 127.0.0.1:7003".into());
        assert_eq!(ask.redirect(), Some(Redirect::Ask { slot: 12, port: 7003 }));
        assert_eq!(Reply::Error("ERR unknown".into()).redirect(), None);
        assert_eq!(Reply::Status("OK".into()).redirect(), None);
    }

    #[test]
    fn cluster_nodes_lines_are_parsed() {
        let line = "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004 slave \
                    e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected";
        let replica = NodeEntry::parse(line).unwrap();
        assert_eq!(replica.port, 30004);
        assert_eq!(replica.primary.as_deref(), Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca"));
        let line = "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001,host myself,master - 0 0 1 \
                    connected 0-5460 5462 [5461-<-292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f]";
        let primary = NodeEntry::parse(line).unwrap();
        assert_eq!(primary.port, 30001);
        assert_eq!(primary.primary, None);
        assert_eq!(primary.slots, vec![0..=5460, 5462..=5462]);
        assert!(!primary.failing());
        let failed = NodeEntry::parse("abc :0@0 master,fail,noaddr - 1 1 2 disconnected").unwrap();
        assert_eq!(failed.port, 0);
        assert!(failed.failing());
    }
}
