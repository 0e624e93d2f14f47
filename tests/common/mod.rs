//! Helpers shared by the end-to-end tests: in-process servers (one engine behind both
//! transports), a real `redis-server` on a free loopback port, the `chat-server` and
//! `chat-client` examples as child processes, and waiting on events with timeouts (never
//! sleeping until a condition is assumed true).

#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chat_core::client::{Client, ClientError, Event, HistoryPage, Message, Presence};
use chat_core::Engine;
use chat_transport_tcp::TcpServer;
use chat_transport_ws::{WsOptions, WsServer};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long any single awaited event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// Awaits `fut`, failing the test after [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

#[allow(unused_imports)] // each test binary uses a different subset
pub use chat_testkit::eventually;

/// The next event of `client` matching `pred`, skipping others; fails after [`WAIT`] or if the
/// connection closes first.
pub async fn next_matching(client: &mut Client, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    within(what, async {
        loop {
            match client.next_event().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) => {}
                Err(e) => panic!("{e} while waiting for {what}"),
            }
        }
    })
    .await
}

/// The next message of `client` that `pred` accepts, skipping other events and messages.
pub async fn next_message(client: &mut Client, what: &str, pred: impl Fn(&Message) -> bool) -> Message {
    match next_matching(client, what, |e| matches!(e, Event::Message(m) if pred(m))).await {
        Event::Message(m) => m,
        other => unreachable!("a message: {other:?}"),
    }
}

/// The next `n` stored messages of `room` that `client` receives (other events skipped).
pub async fn messages(client: &mut Client, room: &str, n: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let what = format!("message {} of {n} in {room}", out.len() + 1);
        match next_matching(client, &what, |e| matches!(e, Event::Message(m) if m.room == room)).await {
            Event::Message(m) => out.push(m),
            other => unreachable!("a message: {other:?}"),
        }
    }
    out
}

/// Waits until the connection is closed (every event before the close is skipped).
pub async fn closed(client: &mut Client, what: &str) {
    within(what, async { while client.next_event().await != Err(ClientError::Closed) {} }).await
}

/// A message reduced to what every member must agree on: (seq, from, body).
pub fn key_of(m: &Message) -> (u64, String, Value) {
    (m.seq.expect("a stored message has a seq"), m.from.clone(), m.body.clone())
}

/// The messages of a `history` reply, reduced by [`key_of`].
pub fn history_keys(page: &HistoryPage) -> Vec<(u64, String, Value)> {
    page.messages.iter().map(key_of).collect()
}

/// Presence members sorted by user, as (user, sessions).
pub fn members(presence: &Presence) -> Vec<(String, u64)> {
    let mut m: Vec<(String, u64)> = presence.members.iter().map(|m| (m.user.clone(), m.sessions)).collect();
    m.sort();
    m
}

// ---------------------------------------------------------------------------------------------
// In-process servers.

/// One engine behind a TCP and a WebSocket listener on free loopback ports.
pub struct Servers {
    pub engine: Engine,
    pub tcp: SocketAddr,
    pub ws: String,
    pub tasks: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Puts `engine` behind both transports on port 0.
    pub async fn start(engine: Engine) -> Servers {
        Self::start_on(engine, "127.0.0.1:0").await
    }

    /// Puts `engine` behind TCP on `tcp` (port 0 for any) and WebSocket on a free port.
    pub async fn start_on(engine: Engine, tcp: &str) -> Servers {
        let tcp_server = TcpServer::bind(tcp, engine.clone()).await.expect("bind tcp");
        let tcp = tcp_server.local_addr().expect("tcp local_addr");
        let ws_server = WsServer::bind("127.0.0.1:0", engine.clone(), WsOptions::default()).await.expect("bind ws");
        let ws = format!("ws://{}/ws", ws_server.local_addr());
        let tasks = vec![
            tokio::spawn(tcp_server.run()),
            tokio::spawn(async move { ws_server.run().await.expect("ws server runs") }),
        ];
        Servers { engine, tcp, ws, tasks }
    }

    /// Graceful shutdown; resolves once both listeners are closed.
    pub async fn shutdown(self) {
        within("engine shutdown", self.engine.shutdown()).await;
        for task in self.tasks {
            within("listener closed", task).await.expect("listener task");
        }
    }
}

/// A client over TCP.
pub async fn tcp(addr: impl std::fmt::Display, user: &str) -> Client {
    let addr = addr.to_string();
    within("tcp connect", chat_transport_tcp::connect(addr.as_str(), Some(user), None))
        .await
        .unwrap_or_else(|e| panic!("tcp connect to {addr} as {user}: {e}"))
}

/// A client over WebSocket.
pub async fn ws(url: &str, user: &str) -> Client {
    within("ws connect", chat_transport_ws::connect(url, Some(user), None))
        .await
        .unwrap_or_else(|e| panic!("ws connect to {url} as {user}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// redis-server.

#[allow(unused_imports)] // not every test binary starts Redis
pub use chat_testkit::RedisServer as Redis;
#[allow(unused_imports)] // not every test binary starts NATS
pub use chat_testkit::{NatsCluster, NatsServer, RedisCluster};

// ---------------------------------------------------------------------------------------------
// The examples as processes.

/// The path of example `name`, built by this test's cargo (same target directory and profile)
/// when it is not there yet or older than its sources (`cargo test --test nodes` alone does not
/// build examples; a plain `cargo test` does, and then this finds them fresh).
pub fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let (target_dir, triple, profile_dir) = target_layout();
    let bin = profile_dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if built.iter().any(|n| n == name) || !needs_build(&bin, name) {
        return bin;
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo.args(["build", "--example", name, "--profile", &profile, "--manifest-path"]).arg(&manifest);
    cargo.arg("--target-dir").arg(&target_dir);
    if let Some(triple) = &triple {
        cargo.args(["--target", triple]);
    }
    let status = cargo.status().unwrap_or_else(|e| panic!("running cargo to build example {name}: {e}"));
    assert!(status.success(), "building example {name} failed ({status})");
    assert!(bin.is_file(), "cargo built example {name} but {} is missing", bin.display());
    built.push(name.to_owned());
    bin
}

/// Whether the example's binary is missing or older than any source it is built from (its own
/// files in `examples/`, the workspace's crates, the lock file).
fn needs_build(bin: &Path, name: &str) -> bool {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else { return true };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![root.join("examples").join(format!("{name}.rs")), root.join("Cargo.lock")];
    let mut dirs = vec![root.join("examples").join(name), root.join("src")];
    for krate in [
        "chat-core",
        "chat-transport-tcp",
        "chat-transport-ws",
        "chat-broker-redis",
        "chat-store-sqlite",
        "chat-store-postgres",
    ] {
        dirs.push(root.join(krate).join("src"));
    }
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                sources.push(path);
            }
        }
    }
    sources.iter().filter_map(|p| p.metadata().and_then(|m| m.modified()).ok()).any(|modified| modified > built)
}

/// (target directory, target triple if cross-compiling, profile directory), derived from this
/// test executable's path: `<target>/[<triple>/]<profile>/deps/<test>-<hash>`.
fn target_layout() -> (PathBuf, Option<String>, PathBuf) {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("<profile>/deps/<test>").to_path_buf();
    let above = profile_dir.parent().expect("a target directory").to_path_buf();
    let name = above.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let is_root = ["CACHEDIR.TAG", ".rustc_info.json"].iter().any(|f| above.join(f).is_file());
    if is_root || name.matches('-').count() < 2 || above.parent().is_none() {
        return (above, None, profile_dir);
    }
    let triple = Some(name.to_owned());
    let target_dir = above.parent().map(Path::to_path_buf).unwrap_or(above);
    (target_dir, triple, profile_dir)
}

/// Where child processes write their stderr: a file per process, named in failure messages.
fn log_file(name: &str) -> (PathBuf, std::fs::File) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-logs");
    std::fs::create_dir_all(&dir).expect("log directory");
    let path = dir.join(format!("{name}-{}-{n}.log", std::process::id()));
    let file = std::fs::File::create(&path).expect("log file");
    (path, file)
}

/// A `chat-server` process: `listening tcp=ADDR ws=ADDR` read from its stdout; killed on drop.
pub struct ChatServer {
    pub tcp: SocketAddr,
    /// The WebSocket endpoint's URL.
    pub ws: String,
    /// The metrics endpoint's address (`metrics=ADDR`), when started with `--metrics`.
    pub metrics: Option<SocketAddr>,
    pub log: PathBuf,
    child: Child,
}

impl ChatServer {
    /// Starts `chat-server` with `args` (listeners on port 0 unless `args` say otherwise) and
    /// waits for its `listening` line. Without a `--store` in `args` it runs with `--store
    /// none` (the server's default file, in the working directory, is no place for tests).
    pub async fn start(name: &str, args: &[&str]) -> ChatServer {
        let bin = example("chat-server");
        let (log, stderr) = log_file(name);
        let store: &[&str] = if args.contains(&"--store") { &[] } else { &["--store", "none"] };
        let mut child = Command::new(&bin)
            .args(args)
            .args(store)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await;
        let line = match line {
            Ok(Ok(Some(line))) => line,
            other => panic!(
                "chat-server {name} printed no `listening` line ({other:?}); its stderr:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        };
        let (tcp, ws) =
            parse_listening(&line).unwrap_or_else(|| panic!("unexpected first line of chat-server: {line:?}"));
        let metrics = line.split_whitespace().find_map(|p| p.strip_prefix("metrics=")?.parse().ok());
        ChatServer { tcp, ws, metrics, log, child }
    }

    /// The process id (for its `/proc` entry: memory).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("chat-server is running")
    }

    /// The process's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        vm_rss_kib(self.pid())
    }

    /// The node's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no `bye`, no cleanup; its sessions stay in Redis until they expire.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL chat-server");
        within("chat-server to die", self.child.wait()).await.expect("chat-server status");
    }
}

/// The resident memory (`VmRSS` of `/proc/PID/status`) of process `pid`, in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS in kB")
}

/// `listening tcp=127.0.0.1:1234 ws=127.0.0.1:1235` → (tcp address, ws URL).
fn parse_listening(line: &str) -> Option<(SocketAddr, String)> {
    let rest = line.trim().strip_prefix("listening ")?;
    let (mut tcp, mut ws) = (None, None);
    for part in rest.split_whitespace() {
        if let Some(a) = part.strip_prefix("tcp=") {
            tcp = a.parse().ok();
        } else if let Some(a) = part.strip_prefix("ws=") {
            ws = Some(if a.starts_with("ws://") { a.to_owned() } else { format!("ws://{a}/ws") });
        }
    }
    Some((tcp?, ws?))
}

/// A `chat-client` process with piped stdin and stdout; killed on drop.
pub struct ChatClient {
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line it printed so far.
    pub transcript: Arc<Mutex<Vec<String>>>,
    pub log: PathBuf,
    child: Child,
}

impl ChatClient {
    pub fn start(name: &str, args: &[&str]) -> ChatClient {
        let bin = example("chat-client");
        let (log, stderr) = log_file(name);
        let mut child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let (tx, lines) = mpsc::unbounded_channel();
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let all = transcript.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                all.lock().unwrap_or_else(|e| e.into_inner()).push(line.clone());
                let _ = tx.send(line);
            }
        });
        ChatClient { stdin: child.stdin.take(), lines, transcript, log, child }
    }

    /// Types a line.
    pub async fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write to chat-client");
        stdin.flush().await.expect("flush chat-client's stdin");
    }

    /// The next printed line matching `pred` (others skipped); fails after [`WAIT`].
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                if pred(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!(
                "chat-client never printed {what}; it printed:\n{}\nits stderr:\n{}",
                self.transcript().join("\n"),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            ),
        }
    }

    pub fn transcript(&self) -> Vec<String> {
        self.transcript.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits for the process to exit; returns whether it succeeded.
    pub async fn exit(mut self) -> bool {
        within("chat-client to exit", self.child.wait()).await.expect("chat-client status").success()
    }
}
