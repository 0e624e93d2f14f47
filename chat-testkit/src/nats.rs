//! NATS for tests: a `nats-server` with JetStream that a test starts itself ([`NatsServer`]), and
//! a three-server JetStream cluster ([`NatsCluster`]), for the tests of a broker whose server
//! dies, stalls, comes back, or comes back without its data.
//!
//! Each server runs from a configuration file in a temporary directory of its own (with its log
//! and its JetStream file store), on free loopback ports: never the machine's own NATS on 4222.
//! Readiness is read from the server's monitoring endpoint (`/healthz`, `/jsz`) with a plain
//! HTTP/1.0 request over a `TcpStream`, so this crate needs no HTTP or NATS client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{find_executable, free_port, StartFailure};

/// The `cluster { name }` of a [`NatsCluster`].
const CLUSTER_NAME: &str = "chat-test";

/// How long a server has to start serving clients.
const START_LIMIT: Duration = Duration::from_secs(10);

/// How long a cluster has to elect a JetStream meta leader and have every member current.
const CLUSTER_LIMIT: Duration = Duration::from_secs(30);

/// First starts on fresh ports: a port found free may be taken by another process before the
/// server binds it, and then the next attempt takes other ports. A restart keeps its ports.
const START_ATTEMPTS: usize = 3;

/// A `nats-server` child process with JetStream (file storage) on a free loopback port; killed on
/// drop, its directory removed. A test can [`kill`](Self::kill) it,
/// [`restart`](Self::restart) it on the same port with the same store (its streams and messages
/// survive, as after a crash), [`wipe_and_restart`](Self::wipe_and_restart) it (it comes back
/// empty, as on a new disk), or [`pause`](Self::pause) it (SIGSTOP: connections stay open and
/// nothing answers).
///
/// The same type is a member of a [`NatsCluster`]; a member restarts with its cluster
/// configuration and rejoins the others.
pub struct NatsServer {
    bin: PathBuf,
    /// Its `server_name`: `n0`, `n1`, `n2` in a cluster.
    name: String,
    /// The client port.
    port: u16,
    /// The monitoring (`http`) port: `/healthz`, `/jsz`.
    monitor_port: u16,
    /// Its cluster's route ports, when it is a cluster member.
    routes: Option<Routes>,
    /// The server's own directory (removed on drop): `nats.conf`, `server.log` (every run's
    /// stderr, appended) and the JetStream store `store/`.
    dir: PathBuf,
    child: Option<Child>,
}

/// A cluster member's route ports: the one it listens on, and its peers'.
struct Routes {
    listen: u16,
    peers: Vec<u16>,
}

impl NatsServer {
    /// `nats-server` with JetStream on a free loopback port, with its own JetStream store
    /// directory (file storage, at most 1 GiB, 256 MiB in memory); returns once it serves
    /// clients (`/healthz` on its monitoring port says `ok`, within 10 s). Panics, saying what to
    /// install, when `nats-server` is missing, and with the server's log when it does not start.
    pub fn start() -> NatsServer {
        let bin = executable();
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let [port, monitor_port] = free_ports();
            let mut server = NatsServer::create(bin.clone(), format!("standalone-{port}"), port, monitor_port, None);
            server.spawn();
            match server.wait_serving() {
                Ok(()) => return server,
                Err(failure) if failure.port_taken => last = failure.message,
                Err(failure) => panic!("{}", failure.message),
            }
        }
        panic!("nats-server found its ports taken {START_ATTEMPTS} times; the last time:\n{last}")
    }

    /// A server in a fresh directory of its own, with its configuration file written; not yet
    /// started.
    fn create(bin: PathBuf, name: String, port: u16, monitor_port: u16, routes: Option<Routes>) -> NatsServer {
        let dir = std::env::temp_dir().join(format!("chat-nats-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for nats-server");
        let store = dir.join("store");
        let mut conf = format!(
            "server_name: {name:?}\n\
             listen: \"127.0.0.1:{port}\"\n\
             http: \"127.0.0.1:{monitor_port}\"\n\
             jetstream {{\n  store_dir: {store:?}\n  max_memory_store: 256MB\n  max_file_store: 1GB\n}}\n",
            store = store.display().to_string(),
        );
        if let Some(Routes { listen, peers }) = &routes {
            let peers: Vec<String> = peers.iter().map(|p| format!("\"nats://127.0.0.1:{p}\"")).collect();
            conf.push_str(&format!(
                "cluster {{\n  name: {CLUSTER_NAME:?}\n  listen: \"127.0.0.1:{listen}\"\n  routes: [{}]\n}}\n",
                peers.join(", ")
            ));
        }
        std::fs::write(dir.join("nats.conf"), conf).expect("write nats.conf");
        NatsServer { bin, name, port, monitor_port, routes, dir, child: None }
    }

    /// Starts the process from its configuration file; its stderr goes to `server.log`.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log"));
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.map_or(Stdio::null(), Stdio::from))
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }

    /// Waits until the server serves clients with JetStream on: `/healthz` says `ok`. A cluster
    /// member is asked only that JetStream is on (`?js-enabled-only=true`): alone it has no meta
    /// leader, and [`NatsCluster::wait_ready`] waits for the rest.
    fn wait_serving(&mut self) -> Result<(), StartFailure> {
        let path = if self.routes.is_some() { "/healthz?js-enabled-only=true" } else { "/healthz" };
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let health = http_get(self.monitor_port, path);
            if health.as_ref().is_some_and(|(status, body)| *status == 200 && is_ok(body)) {
                return Ok(());
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                let log = self.log();
                return Err(StartFailure {
                    port_taken: log.contains("address already in use"),
                    message: format!("nats-server {} exited at once ({status}):\n{log}", self.name),
                });
            }
            if Instant::now() >= deadline {
                let last = health.map_or("no answer".to_owned(), |(status, body)| format!("{status} {}", body.trim()));
                return Err(StartFailure {
                    port_taken: false,
                    message: format!(
                        "nats-server {} did not start on port {} within {START_LIMIT:?} (GET {path}: {last}):\n{}",
                        self.name,
                        self.port,
                        self.log()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20)); // the retry interval of a loop with a deadline
        }
    }

    /// The end of the server's log, for a failure message.
    fn log(&self) -> String {
        crate::log_tail(&self.dir.join("server.log"), 30)
    }

    /// The client port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its monitoring port (`http://127.0.0.1:<monitor_port>/jsz`, `/healthz`, `/varz`...).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// Its `server_name`: `n0`, `n1` or `n2` in a [`NatsCluster`], the name JetStream reports
    /// leaders by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kills the server (SIGKILL) and waits for the process: a crash. What it had written to
    /// its store survives a [`restart`](Self::restart). Does nothing when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it (SIGKILL) and starts it again on the same ports with the same store, so its
    /// streams and messages come back; returns once it serves clients. A cluster member comes
    /// back with its cluster configuration and rejoins the others: [`NatsCluster::wait_ready`]
    /// waits until it has caught up.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        if let Err(failure) = self.wait_serving() {
            panic!("{}", failure.message);
        }
    }

    /// Kills it (SIGKILL), deletes its JetStream store, and starts it again on the same ports,
    /// empty: a server that lost its disk. A cluster member rejoins under the same name (the
    /// same JetStream peer) and is sent the replicated data again by the others.
    pub fn wipe_and_restart(&mut self) {
        self.kill();
        let store = self.dir.join("store");
        if let Err(e) = std::fs::remove_dir_all(&store) {
            assert!(e.kind() == std::io::ErrorKind::NotFound, "cannot delete {}: {e}", store.display());
        }
        self.spawn();
        if let Err(failure) = self.wait_serving() {
            panic!("{}", failure.message);
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, as with a
    /// stalled host; in a cluster, its peers stop hearing from it. Returns once every thread of
    /// the process is stopped: the kernel stops them only as they are next scheduled, and until
    /// then a busy machine lets the server go on answering. [`resume`](Self::resume) lets it go
    /// on.
    pub fn pause(&self) {
        self.signal("-STOP");
        let pid = self.child.as_ref().expect("nats-server is running").id();
        let deadline = Instant::now() + START_LIMIT;
        while !crate::stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "nats-server {} did not stop within {START_LIMIT:?} of a SIGSTOP",
                self.name
            );
            std::thread::sleep(Duration::from_millis(2)); // the retry interval of a loop with a deadline
        }
    }

    /// Lets a [`pause`](Self::pause)d server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.child.as_ref().expect("nats-server is running").id().to_string();
        let status = Command::new("kill").args([which, &pid]).status().expect("run kill");
        assert!(status.success(), "kill {which} {pid} failed");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three `nats-server` processes with JetStream forming one cluster (`chat-test`, servers `n0`,
/// `n1`, `n2`), each with its own client, monitoring and route ports and its own store; ready
/// for replicated (R3) streams. Each member is a [`NatsServer`] a test can kill, restart, wipe or
/// pause; its route ports stay fixed, so a restarted member finds the others again. Every member
/// is killed, and its directory removed, on drop.
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts the three servers, routed to each other, and waits (up to 30 s) until the cluster
    /// is [ready](Self::wait_ready): a JetStream meta leader all three agree on, every member
    /// current. Panics, saying what to install, when `nats-server` is missing, and with the
    /// servers' logs when the cluster does not form.
    pub fn start() -> NatsCluster {
        let bin = executable();
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let ports: [u16; 9] = free_ports();
            let (clients, rest) = ports.split_at(3);
            let (monitors, route_ports) = rest.split_at(3);
            let mut servers: Vec<NatsServer> = (0..3)
                .map(|i| {
                    let peers = route_ports.iter().copied().filter(|&p| p != route_ports[i]).collect();
                    let routes = Routes { listen: route_ports[i], peers };
                    NatsServer::create(bin.clone(), format!("n{i}"), clients[i], monitors[i], Some(routes))
                })
                .collect();
            servers.iter_mut().for_each(NatsServer::spawn);
            let mut taken = None;
            for server in &mut servers {
                match server.wait_serving() {
                    Ok(()) => {}
                    Err(failure) if failure.port_taken => {
                        taken = Some(failure.message);
                        break;
                    }
                    Err(failure) => panic!("{}", failure.message),
                }
            }
            match taken {
                Some(message) => last = message, // the servers are dropped, and their directories
                None => {
                    let cluster = NatsCluster { servers };
                    cluster.wait_ready();
                    return cluster;
                }
            }
        }
        panic!("a nats-server of the cluster found its ports taken {START_ATTEMPTS} times; the last time:\n{last}")
    }

    /// Waits (up to 30 s) until the cluster takes replicated streams again, after a member was
    /// restarted, wiped or resumed: every member's `/healthz` says `ok` (it has a meta leader and
    /// its streams are current), all three report the same meta leader in `/jsz` with a cluster
    /// of 3, and that leader sees both other members current. Returns the leader's index.
    /// Panics at once when a member is killed and not restarted, and with the members' state and
    /// logs after the deadline.
    pub fn wait_ready(&self) -> usize {
        if let Some(down) = self.servers.iter().find(|s| s.child.is_none()) {
            panic!("cluster member {} is killed: restart it before waiting for the cluster", down.name);
        }
        let deadline = Instant::now() + CLUSTER_LIMIT;
        loop {
            let state = self.readiness();
            match state {
                Ok(leader) => return leader,
                Err(why) if Instant::now() >= deadline => {
                    let logs: Vec<String> = self
                        .servers
                        .iter()
                        .map(|s| format!("--- {} (port {}):\n{}", s.name, s.port, s.log()))
                        .collect();
                    panic!("the NATS cluster was not ready within {CLUSTER_LIMIT:?}: {why}\n{}", logs.join("\n"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)), // the retry interval of a loop with a deadline
            }
        }
    }

    /// The meta leader's index when the cluster is ready, else what is not ready yet.
    fn readiness(&self) -> Result<usize, String> {
        let mut leaders = Vec::new();
        let mut metas = Vec::new();
        for s in &self.servers {
            let (status, body) =
                http_get(s.monitor_port, "/healthz").ok_or_else(|| format!("{}: /healthz does not answer", s.name))?;
            if status != 200 || !is_ok(&body) {
                return Err(format!("{}: /healthz: {status} {}", s.name, body.trim()));
            }
            let (_, jsz) =
                http_get(s.monitor_port, "/jsz").ok_or_else(|| format!("{}: /jsz does not answer", s.name))?;
            let jsz = compact(&jsz);
            let meta = jsz.split_once("\"meta_cluster\":").map(|(_, m)| m.to_owned()).unwrap_or_default();
            let leader = string_field(&meta, "leader").ok_or_else(|| format!("{}: no meta leader: {meta}", s.name))?;
            if !meta.contains("\"cluster_size\":3") {
                return Err(format!("{}: the meta group is not 3 servers: {meta}", s.name));
            }
            leaders.push(leader);
            metas.push(meta);
        }
        if leaders.iter().any(|l| *l != leaders[0]) {
            return Err(format!("the members disagree on the meta leader: {leaders:?}"));
        }
        let leader = self
            .servers
            .iter()
            .position(|s| s.name == leaders[0])
            .ok_or_else(|| format!("the meta leader {} is not a member", leaders[0]))?;
        let meta = &metas[leader];
        if meta.matches("\"current\":true").count() != 2 || meta.contains("\"offline\":true") {
            return Err(format!("the meta leader {} does not see both others current: {meta}", leaders[0]));
        }
        Ok(leader)
    }

    /// The three members, `n0`, `n1`, `n2` in order.
    pub fn servers(&self) -> &[NatsServer] {
        &self.servers
    }

    /// Member `i` (0, 1 or 2), to kill, restart, wipe or pause.
    pub fn server_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.servers[i]
    }

    /// The members' URLs, comma-separated (`nats://127.0.0.1:P0,nats://127.0.0.1:P1,...`), as
    /// NATS clients take a server list.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// The members' URLs (`nats://127.0.0.1:<port>`), in order.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }
}

/// The `nats-server` on `PATH`; panics, saying what to install, when it is missing.
fn executable() -> PathBuf {
    find_executable(&["nats-server"]).unwrap_or_else(|| {
        panic!("nats-server not found on PATH: these tests need it; install it with `apt-get install nats-server`")
    })
}

/// `N` distinct ports that were free a moment ago.
fn free_ports<const N: usize>() -> [u16; N] {
    let mut ports = [0; N];
    for i in 0..N {
        ports[i] = std::iter::repeat_with(free_port).find(|p| !ports[..i].contains(p)).expect("a free port");
    }
    ports
}

/// `GET path` from the HTTP server on 127.0.0.1:`port`: its status and body, or `None` when it
/// does not answer within a few seconds (not started yet, or paused).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?; // HTTP/1.0: the server closes after its answer
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Whether a `/healthz` body says `{"status":"ok"}`.
fn is_ok(body: &str) -> bool {
    compact(body).contains("\"status\":\"ok\"")
}

/// `json` without its whitespace (the monitoring endpoints indent theirs), for substring checks
/// on values that hold none.
fn compact(json: &str) -> String {
    json.split_whitespace().collect()
}

/// The string value of the first `"key":"..."` in compacted JSON, when it is not empty.
fn string_field(json: &str, key: &str) -> Option<String> {
    let (_, rest) = json.split_once(&format!("\"{key}\":\""))?;
    let value = &rest[..rest.find('"')?];
    (!value.is_empty()).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `INFO {...}` line a NATS server greets a client with, or `None` when none comes
    /// within `limit`.
    fn info_line(port: u16, limit: Duration) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(limit)).ok()?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            stream.read_exact(&mut byte).ok()?;
            line.push(byte[0]);
        }
        Some(String::from_utf8_lossy(&line).trim_end().to_owned())
    }

    /// Asserts the server on `port` greets a client as a NATS server with JetStream.
    fn assert_answers(port: u16) {
        let info = info_line(port, Duration::from_secs(5)).unwrap_or_else(|| panic!("no INFO on port {port}"));
        assert!(info.starts_with("INFO {"), "not a NATS greeting: {info}");
        assert!(compact(&info).contains("\"jetstream\":true"), "JetStream is off: {info}");
    }

    /// Creates the stream `name` (subject `name`, file storage, `replicas` copies) over the NATS
    /// protocol itself, and returns the JetStream API's answer.
    fn create_stream(port: u16, name: &str, replicas: u32) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nats-server");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("a read timeout");
        let request =
            format!(r#"{{"name":"{name}","subjects":["{name}"],"storage":"file","num_replicas":{replicas}}}"#);
        let commands = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB _INBOX.create 1\r\n\
             PUB $JS.API.STREAM.CREATE.{name} _INBOX.create {}\r\n{request}\r\n",
            request.len()
        );
        stream.write_all(commands.as_bytes()).expect("send the request");
        let mut reader = std::io::BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            std::io::BufRead::read_line(&mut reader, &mut line).expect("nats-server answers");
            assert!(!line.is_empty(), "nats-server closed the connection");
            if line.starts_with("PING") {
                reader.get_mut().write_all(b"PONG\r\n").expect("send PONG");
            } else if line.starts_with("MSG _INBOX.create") {
                line.clear();
                std::io::BufRead::read_line(&mut reader, &mut line).expect("the answer's payload");
                return line.trim_end().to_owned();
            } else {
                assert!(!line.starts_with("-ERR"), "nats-server refused: {line}");
            }
        }
    }

    /// How many streams the server on `monitor_port` holds, from `/jsz`.
    fn streams(monitor_port: u16) -> String {
        let (_, jsz) = http_get(monitor_port, "/jsz").expect("/jsz answers");
        let jsz = compact(&jsz);
        let count = jsz.split_once("\"streams\":").map(|(_, rest)| rest.split(',').next().unwrap_or_default());
        count.unwrap_or_default().to_owned()
    }

    #[test]
    fn a_server_comes_back_on_its_port_with_its_data() {
        let mut server = NatsServer::start();
        let port = server.port();
        assert_ne!(port, 4222);
        assert_eq!(server.url(), format!("nats://127.0.0.1:{port}"));
        assert_answers(port);
        let created = create_stream(port, "KEPT", 1);
        assert!(created.contains("\"type\":\"io.nats.jetstream.api.v1.stream_create_response\""), "{created}");
        assert!(!created.contains("\"error\""), "{created}");
        assert_eq!(streams(server.monitor_port()), "1");

        server.kill();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "a killed server still listens");
        server.restart();
        assert_eq!(server.port(), port);
        assert_answers(port);
        assert_eq!(streams(server.monitor_port()), "1", "the stream did not survive a restart");

        server.wipe_and_restart();
        assert_eq!(server.port(), port);
        assert_answers(port);
        assert_eq!(streams(server.monitor_port()), "0", "the stream survived a wipe");
    }

    #[test]
    fn a_paused_server_answers_once_resumed() {
        let server = NatsServer::start();
        server.pause();
        assert_eq!(info_line(server.port(), Duration::from_millis(300)), None, "a paused server answered");
        server.resume();
        assert_answers(server.port());
    }

    #[test]
    fn a_server_removes_its_directory_when_dropped() {
        let server = NatsServer::start();
        let dir = server.dir.clone();
        assert!(dir.join("store").join("jetstream").is_dir(), "no JetStream store in {}", dir.display());
        drop(server);
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }

    #[test]
    fn a_cluster_heals_after_its_meta_leader_is_killed_and_restarted() {
        let mut cluster = NatsCluster::start();
        let urls = cluster.urls();
        assert_eq!(urls.len(), 3);
        assert_eq!(cluster.url(), urls.join(","));
        let mut leaders = Vec::new();
        for (s, url) in cluster.servers().iter().zip(&urls) {
            assert_eq!(*url, s.url());
            assert_answers(s.port());
            let (_, jsz) = http_get(s.monitor_port(), "/jsz").expect("/jsz answers");
            let jsz = compact(&jsz);
            assert!(jsz.contains("\"cluster_size\":3"), "{}: {jsz}", s.name());
            leaders.push(string_field(&jsz, "leader").unwrap_or_else(|| panic!("{}: no meta leader: {jsz}", s.name())));
        }
        assert!(leaders.iter().all(|l| *l == leaders[0]), "the members disagree on the meta leader: {leaders:?}");

        let created = create_stream(cluster.servers()[0].port(), "REPLICATED", 3);
        assert!(!created.contains("\"error\""), "{created}");

        let leader = cluster.wait_ready();
        assert_eq!(cluster.servers()[leader].name(), leaders[0]);
        let port = cluster.servers()[leader].port();
        cluster.server_mut(leader).kill();
        cluster.server_mut(leader).restart();
        assert_eq!(cluster.servers()[leader].port(), port);
        cluster.wait_ready();
        for s in cluster.servers() {
            assert_answers(s.port());
            assert_eq!(streams(s.monitor_port()), "1", "{} lost the replicated stream", s.name());
        }
    }

    #[test]
    fn a_taken_port_makes_a_first_start_try_other_ports() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
        let port = held.local_addr().expect("its address").port();
        let [monitor_port] = free_ports();
        let mut server = NatsServer::create(executable(), "taken".into(), port, monitor_port, None);
        server.spawn();
        let failure = server.wait_serving().expect_err("a server on a taken port does not start");
        assert!(failure.port_taken, "not taken for a taken port: {}", failure.message);
    }

    #[test]
    fn json_fields_are_read_from_indented_monitoring_output() {
        let jsz = compact("{\n  \"meta_cluster\": {\n    \"name\": \"chat-test\",\n    \"leader\": \"n2\",\n    \"cluster_size\": 3\n  }\n}");
        assert_eq!(string_field(&jsz, "leader").as_deref(), Some("n2"));
        assert_eq!(string_field(&compact(r#"{"leader": ""}"#), "leader"), None);
        assert!(is_ok("{\"status\": \"ok\"}"));
        assert!(!is_ok(
            r#"{"status":"unavailable","error":"JetStream has not established contact with a meta leader"}"#
        ));
    }
}
