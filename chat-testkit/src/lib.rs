//! Test support shared by the workspace's test suites: real services that a test starts
//! itself, on free loopback ports, and stops when it is done. Nothing here is mocked.
//!
//! A tool that is missing makes the test fail with a message saying how to install it: no
//! test skips.

pub mod conformance;
pub mod nats;
pub mod postgres;
pub mod redis_cluster;
pub mod store_conformance;

pub use nats::{NatsCluster, NatsServer};
pub use postgres::{PgDatabase, PgServer};
pub use redis_cluster::RedisCluster;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a server a test starts did not come up (the NATS and Redis Cluster harnesses).
pub(crate) struct StartFailure {
    /// It exited because a port was in use: worth another attempt on other ports.
    pub(crate) port_taken: bool,
    pub(crate) message: String,
}

/// The last `n` lines of a server's log file, for a failure message (empty if unreadable).
pub(crate) fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc/<pid>/task/*/stat`):
/// a server paused with SIGSTOP has taken the signal everywhere.
pub(crate) fn stopped(pid: u32) -> bool {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    let mut any = false;
    for thread in threads.flatten() {
        // A thread that has exited meanwhile has no stat to read.
        let Ok(stat) = std::fs::read_to_string(thread.path().join("stat")) else { continue };
        // "tid (comm) state ...": comm may hold anything, so read after its last ')'.
        if stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("T") {
            return false;
        }
        any = true;
    }
    any
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// The first of `names` found on `PATH` (or in the usual system directories).
pub fn find_executable(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> =
        std::env::split_paths(&path).chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from)).collect();
    names.iter().flat_map(|name| dirs.iter().map(move |dir| dir.join(name))).find(|p| is_executable(p))
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A `redis-server` child process on a free loopback port; killed on drop. Without
/// persistence ([`start`](Self::start)) it comes back empty when started again on the same
/// port; with persistence ([`start_persistent`](Self::start_persistent)) it comes back from its last snapshot (`SAVE`), as a crashed Redis with RDB persistence does.
/// The same process can be a replica ([`start_replica_of`](Self::start_replica_of)) or a
/// Sentinel ([`start_sentinel`](Self::start_sentinel)), for high-availability tests.
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    /// The server's own directory (removed on drop): its snapshot, a replica's copy of its
    /// primary's data, a sentinel's configuration file (Sentinel rewrites it). Never the test's
    /// working directory, where a file left behind would be loaded by the next server.
    dir: PathBuf,
    /// Whether it starts again from its last snapshot ([`start_persistent`](Self::start_persistent)).
    persistent: bool,
    role: Role,
}

/// What a [`RedisServer`] process is.
#[derive(Clone)]
enum Role {
    Primary,
    /// A replica of the server on this port.
    Replica(u16),
    /// A sentinel monitoring the primary on this port under this name, with this quorum.
    Sentinel {
        primary: u16,
        name: String,
        quorum: u32,
    },
}

impl RedisServer {
    /// Starts a server and waits until it answers `PING`. Panics, saying what to install, when
    /// `redis-server` is missing.
    pub fn start() -> RedisServer {
        Self::start_as(Self::executable(), Role::Primary, false)
    }

    /// The `redis-server` on `PATH`; panics, saying what to install, when it is missing.
    fn executable() -> PathBuf {
        find_executable(&["redis-server"]).unwrap_or_else(|| {
            panic!(
                "redis-server not found on PATH: these tests need it; install it with `apt-get install redis-server`"
            )
        })
    }

    /// A replica of `primary` (`--replicaof`), without persistence. Its data is whatever it
    /// received: after [`pause`](Self::pause) it misses writes, as a lagging replica does.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        Self::start_as(Self::executable(), Role::Replica(primary.port), false)
    }

    /// A Redis Sentinel (`redis-server CONFIG --sentinel`) monitoring `primary` under `name`,
    /// agreeing on failure with `quorum` sentinels. It takes a primary for down after 500 ms
    /// without an answer, so a failover takes a second or two. Its [`port`](Self::port) is the
    /// one clients ask (`SENTINEL get-master-addr-by-name`).
    pub fn start_sentinel(primary: &RedisServer, name: &str, quorum: u32) -> RedisServer {
        Self::start_as(
            Self::executable(),
            Role::Sentinel { primary: primary.port, name: name.to_owned(), quorum },
            false,
        )
    }

    /// Starts a server of `role` on a free port, in a fresh directory of its own.
    fn start_as(bin: PathBuf, role: Role, persistent: bool) -> RedisServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("chat-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a data directory for redis-server");
        let mut server = RedisServer { bin, port, child: None, dir, persistent, role };
        server.spawn();
        server
    }

    /// Like [`start`](Self::start), with persistence: `SAVE` writes a snapshot to its directory, and [`restart`](Self::restart) (after a SIGKILL) loads it, so the server comes
    /// back as it was at the last `SAVE`. No automatic snapshots, no append-only file.
    pub fn start_persistent() -> RedisServer {
        Self::start_as(Self::executable(), Role::Primary, true)
    }

    fn spawn(&mut self) {
        let mut args = Vec::new();
        let dir = &self.dir;
        if !self.persistent {
            let _ = std::fs::remove_file(dir.join("dump.rdb")); // it comes back empty
        }
        if let Role::Sentinel { primary, name, quorum } = &self.role {
            // Sentinel insists on a configuration file it can rewrite. Written afresh only the
            // first time: a restarted sentinel comes back with what it had learned.
            let conf = dir.join("sentinel.conf");
            if !conf.exists() {
                let text = format!(
                    "sentinel monitor {name} 127.0.0.1 {primary} {quorum}\n\
                     sentinel down-after-milliseconds {name} 500\n\
                     sentinel failover-timeout {name} 2000\n\
                     sentinel parallel-syncs {name} 1\n"
                );
                std::fs::write(&conf, text).expect("write sentinel.conf");
            }
            args.extend([conf.display().to_string(), "--sentinel".into()]);
        }
        args.extend(["--bind".to_owned(), "127.0.0.1".into(), "--port".into(), self.port.to_string()]);
        if !matches!(self.role, Role::Sentinel { .. }) {
            // A replica is served at once (Redis waits 5 s by default, in case others join).
            args.extend(["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"].map(String::from));
        }
        args.extend(["--dir".to_owned(), dir.display().to_string()]);
        if let Role::Replica(primary) = self.role {
            args.extend(["--replicaof".to_owned(), "127.0.0.1".into(), primary.to_string()]);
        }
        let child = Command::new(&self.bin)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "redis-server exited at once ({exited:?}); is port {} taken?", self.port);
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(10)); // the retry interval of a loop with a deadline
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Runs one command whose reply is a simple status (`FLUSHALL`, `SAVE`...) and returns
    /// that line (`+OK`, or `-ERR ...`). Blocking, for the moments a test stages.
    pub fn command(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis-server");
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("a read timeout");
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(request.as_bytes()).expect("send the command");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            s.read_exact(&mut byte).expect("redis-server answers");
            line.push(byte[0]);
        }
        String::from_utf8_lossy(&line[..line.len() - 2]).into_owned()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server; its data is lost (nothing is saved).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, as with a
    /// stalled host. [`resume`](Self::resume) lets it go on.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`pause`](Self::pause)d server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id().to_string();
        let status = Command::new("kill").args([which, &pid]).status().expect("run kill");
        assert!(status.success(), "kill {which} {pid} failed");
    }

    /// Kills it (SIGKILL) and starts it again on the same port as a replica of `primary`
    /// (empty until it has synchronised): what a failed primary is once it comes back after a
    /// failover.
    pub fn restart_as_replica_of(&mut self, primary: &RedisServer) {
        self.role = Role::Replica(primary.port);
        self.restart();
    }

    /// Kills it (SIGKILL) and starts it again on the same port: empty, or from its last
    /// snapshot when it was started with [`start_persistent`](Self::start_persistent).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `check` until it gives `Some`, and panics saying what was awaited after `limit`.
///
/// For conditions no event announces (a presence entry expiring, a page's DOM, a stream
/// trimmed by age): the check is retried every 20 ms, never longer than the deadline.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await; // the poll interval of a loop with a deadline
    }
}
