//! `chat-load`: a load generator for `chat/1` servers (over TCP or WebSocket) and, for
//! comparison, for NATS servers under the same fan-out.
//!
//! Load mode: R rooms, each with S subscribers and P publishers (one connection each).
//! Publishers send bodies of a given size, at a rate or as fast as a bounded number of
//! unacknowledged sends allows; subscribers check `seq` for gaps and duplicates and measure the
//! latency from a timestamp in the body. A progress line per second on stderr, a summary at the
//! end (`--json`: one JSON line on stdout), with the server's CPU time and memory when given its
//! pid (several pids: several nodes, or Redis). Publishers and subscribers may connect to
//! different nodes (`--pub-tcp`/`--sub-tcp`), so that every delivery crosses the broker. Idle
//! mode (`--idle N`) holds N connections (hello + join) and reports the server's memory per
//! connection.
//!
//! ```text
//! cargo run --release --example chat-load -- --tcp 127.0.0.1:7001 --rooms 1 --subs 100 --pubs 1 \
//!     --body 128 --rate 0 --window 256 --duration 10 --warmup 2 --server-pid $PID
//! cargo run --release --example chat-load -- --ws ws://127.0.0.1:7002/ws --idle 10000 --server-pid $PID
//! cargo run --release --example chat-load -- --target nats --nats 127.0.0.1:14222 --subs 100 --server-pid $PID
//! # two nodes on one broker: publishers on node A, subscribers on node B, each node's CPU
//! cargo run --release --example chat-load -- --pub-tcp 127.0.0.1:7001 --sub-tcp 127.0.0.1:7011 --rooms 10 \
//!     --subs 10 --rate 100 --server-pid a=$PID_A --server-pid b=$PID_B --server-pid redis=$PID_REDIS
//! ```

#[path = "chat-load/nats.rs"]
mod nats;
#[path = "chat-load/procfs.rs"]
mod procfs;
#[path = "chat-load/scan.rs"]
mod scan;
#[path = "chat-load/wire.rs"]
mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use scan::{Clock, Kind, STAMP_DIGITS};
use wire::{Endpoint, Session};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// A `chat/1` server (`--tcp` or `--ws`).
    Chat,
    /// A NATS server (`--nats`), core subjects as rooms.
    Nats,
}

/// Load generator for chat/1 servers (TCP or WebSocket) and NATS.
#[derive(Debug, Parser)]
#[command(name = "chat-load", version)]
struct Args {
    /// What to load.
    #[arg(long, value_enum, default_value = "chat")]
    target: Target,
    /// A chat/1 server's TCP address (host:port).
    #[arg(long, conflicts_with = "ws")]
    tcp: Option<String>,
    /// A chat/1 server's WebSocket URL (ws://host:port/ws).
    #[arg(long)]
    ws: Option<String>,
    /// Over WebSocket, offer permessage-deflate and inflate what comes compressed (the server
    /// must accept it: `chat-server --ws-deflate`).
    #[arg(long)]
    ws_deflate: bool,
    /// Publishers connect here (TCP host:port) instead of `--tcp`/`--ws`: with `--sub-tcp` or
    /// `--sub-ws` on another node, every delivery crosses the broker.
    #[arg(long, conflicts_with = "pub_ws")]
    pub_tcp: Option<String>,
    /// Publishers connect to this WebSocket URL instead of `--tcp`/`--ws`.
    #[arg(long)]
    pub_ws: Option<String>,
    /// Subscribers connect here (TCP host:port) instead of `--tcp`/`--ws`.
    #[arg(long, conflicts_with = "sub_ws")]
    sub_tcp: Option<String>,
    /// Subscribers connect to this WebSocket URL instead of `--tcp`/`--ws`.
    #[arg(long)]
    sub_ws: Option<String>,
    /// A NATS server's address (host:port), with `--target nats`.
    #[arg(long)]
    nats: Option<String>,
    /// With `--target nats`: subscribers speak the NATS protocol themselves (one TCP connection
    /// each, `MSG` parsed in place) instead of through async-nats, which is ~3x costlier per
    /// delivery and makes the generator the bottleneck. Publishers still use async-nats.
    #[arg(long)]
    nats_raw_subs: bool,
    /// Rooms (NATS: subjects). Default 1; in idle mode, one room per 10 connections.
    #[arg(long)]
    rooms: Option<usize>,
    /// Subscribers per room.
    #[arg(long, default_value_t = 10)]
    subs: usize,
    /// Publishers per room.
    #[arg(long, default_value_t = 1)]
    pubs: usize,
    /// Body size in bytes (JSON, padded; at least 29).
    #[arg(long, default_value_t = 128)]
    body: usize,
    /// Messages per second per publisher; 0 = as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Unacknowledged sends allowed per publisher (chat/1: sends without their `sent` reply).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// End-to-end bound: a publisher waits while its room's slowest subscriber is more than this
    /// many messages behind what the room's publishers sent; 0 = no bound. Core NATS has no
    /// acknowledgements, so this is its only flow control.
    #[arg(long, default_value_t = 2000)]
    max_lag: u64,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// After the run, seconds allowed for the last messages to arrive before counting them missing.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// A server's pid, `PID` or `NAME=PID`: its CPU time (total, per delivery and per stored
    /// message) and RSS over the measured window are reported. Repeatable (several nodes, Redis);
    /// the first is the one of the progress line, the `server` object and idle mode.
    #[arg(long, value_parser = parse_pid)]
    server_pid: Vec<(String, u32)>,
    /// Print the summary as one JSON line on stdout.
    #[arg(long)]
    json: bool,
    /// Idle mode: open this many connections (hello + join), hold them, report memory.
    #[arg(long)]
    idle: Option<usize>,
    /// Idle mode: seconds to hold the connections once all are open.
    #[arg(long, default_value_t = 3.0)]
    hold: f64,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Runtime threads of the generator; 1 = a single-threaded runtime (for `taskset -c N`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Prefix of room names (NATS: of subjects).
    #[arg(long, default_value = "load")]
    room_prefix: String,
    /// A token for `hello` (the server's authenticator decides); users are named sub-R-I / pub-R-I.
    #[arg(long)]
    token: Option<String>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

/// `PID` or `NAME=PID`.
fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').unwrap_or(("", s));
    let pid: u32 = pid.parse().map_err(|e| format!("{pid:?}: {e}"))?;
    Ok((if name.is_empty() { pid.to_string() } else { name.to_owned() }, pid))
}

/// Where a chat/1 load's publishers and subscribers connect (the same server, or two nodes).
#[derive(Debug, Clone)]
struct Endpoints {
    publish: Endpoint,
    subscribe: Endpoint,
}

fn endpoint(tcp: &Option<String>, ws: &Option<String>, deflate: bool) -> Option<Endpoint> {
    match (tcp, ws) {
        (Some(addr), _) => Some(Endpoint::Tcp(addr.clone())),
        (None, Some(url)) if deflate => Some(Endpoint::WsDeflate(url.clone())),
        (None, Some(url)) => Some(Endpoint::Ws(url.clone())),
        (None, None) => None,
    }
}

fn describe_endpoint(e: &Endpoint) -> String {
    match e {
        Endpoint::Tcp(addr) => format!("tcp {addr}"),
        Endpoint::Ws(url) => format!("ws {url}"),
        Endpoint::WsDeflate(url) => format!("ws+deflate {url}"),
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const DONE: u8 = 2;
/// Most frames a publisher writes in one go.
const BATCH: u64 = 64;
/// Read size of a loaded connection.
const CHUNK: usize = 64 * 1024;

/// What every task shares.
pub struct Ctx {
    phase: AtomicU8,
    clock: Clock,
    sent: AtomicU64,
    acked: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    /// Highest latency seen since the last progress line (ns).
    max_lat: AtomicU64,
}

/// One room's counters.
pub struct RoomState {
    name: String,
    /// Messages sent to the room by its publishers.
    sent: AtomicU64,
    /// Messages the server stored for the room (`sent` replies with a seq).
    stored: AtomicU64,
    /// Messages received by each subscriber.
    received: Vec<AtomicU64>,
    /// Publishers waiting for subscribers to catch up (`--max-lag`).
    waiting: AtomicBool,
    notify: Notify,
}

impl RoomState {
    fn new(name: String, subs: usize) -> Self {
        RoomState {
            name,
            sent: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            received: (0..subs).map(|_| AtomicU64::new(0)).collect(),
            waiting: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// A subscriber received something: wake a publisher waiting on `--max-lag`.
    fn progressed(&self) {
        if self.waiting.load(Relaxed) {
            self.notify.notify_waiters();
        }
    }

    fn slowest(&self) -> u64 {
        self.received.iter().map(|c| c.load(Relaxed)).min().unwrap_or(u64::MAX)
    }
}

/// What a subscriber reports at the end.
pub struct SubOut {
    hist: Histogram<u64>,
    /// Deliveries within the measured window.
    deliveries: u64,
    gaps: u64,
    dups: u64,
    errors: BTreeMap<String, u64>,
    byes: BTreeMap<String, u64>,
    closed: bool,
}

impl Default for SubOut {
    fn default() -> Self {
        SubOut {
            hist: new_histogram(),
            deliveries: 0,
            gaps: 0,
            dups: 0,
            errors: BTreeMap::new(),
            byes: BTreeMap::new(),
            closed: false,
        }
    }
}

/// What a publisher reports at the end.
#[derive(Default)]
pub struct PubOut {
    /// Sends within the measured window.
    sent: u64,
    acked: u64,
    /// From writing a send to reading its reply (`sent` or an error), for replies read in the
    /// measured window (ns).
    ack_hist: Option<Histogram<u64>>,
    echoes: u64,
    errors: BTreeMap<String, u64>,
    byes: BTreeMap<String, u64>,
    closed: bool,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("valid histogram bounds")
}

/// Paces a publisher: batches of up to `BATCH` at full speed, or what `rate` makes due.
pub struct Pacer {
    rate: f64,
    start: Instant,
    done: u64,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        Pacer { rate, start: Instant::now(), done: 0 }
    }

    /// Starts the schedule `frac` of a period late (publishers spread over the period).
    fn staggered(rate: f64, frac: f64) -> Self {
        let delay = if rate > 0.0 { Duration::from_secs_f64(frac / rate) } else { Duration::ZERO };
        Pacer { rate, start: Instant::now() + delay, done: 0 }
    }

    /// How many to send now (waiting until some are due); `None` once the run is over.
    async fn next(&mut self, batch: u64, ctx: &Ctx) -> Option<u64> {
        loop {
            if ctx.phase.load(Relaxed) >= DONE {
                return None;
            }
            if self.rate <= 0.0 {
                return Some(batch);
            }
            let now = Instant::now();
            let due = if now < self.start {
                0
            } else {
                (now.duration_since(self.start).as_secs_f64() * self.rate) as u64 + 1
            };
            if due > self.done {
                return Some((due - self.done).min(batch));
            }
            let at = self.start + Duration::from_secs_f64(self.done as f64 / self.rate);
            tokio::time::sleep_until(at.into()).await;
        }
    }

    fn sent(&mut self, n: u64) {
        self.done += n;
    }
}

/// Waits while the room's slowest subscriber is more than `max_lag` behind; false once the run
/// is over.
pub async fn wait_for_lag(ctx: &Ctx, room: &RoomState, max_lag: u64) -> bool {
    if max_lag == 0 || room.received.is_empty() {
        return true;
    }
    loop {
        if ctx.phase.load(Relaxed) >= DONE {
            return false;
        }
        let notified = room.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        room.waiting.store(true, Relaxed);
        if room.sent.load(Relaxed) <= room.slowest().saturating_add(max_lag) {
            room.waiting.store(false, Relaxed);
            return true;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.body < scan::MIN_BODY {
        bail!("--body must be at least {} bytes", scan::MIN_BODY);
    }
    let endpoints = match (args.target, &args.nats) {
        (Target::Chat, _) => {
            let main = endpoint(&args.tcp, &args.ws, args.ws_deflate);
            let publish = endpoint(&args.pub_tcp, &args.pub_ws, args.ws_deflate).or_else(|| main.clone());
            let subscribe = endpoint(&args.sub_tcp, &args.sub_ws, args.ws_deflate).or_else(|| main.clone());
            match (publish, subscribe) {
                (Some(publish), Some(subscribe)) => Some(Endpoints { publish, subscribe }),
                _ => bail!(
                    "--target chat needs --tcp ADDR or --ws URL (or both --pub-tcp/--pub-ws and --sub-tcp/--sub-ws)"
                ),
            }
        }
        (Target::Nats, Some(_)) => None,
        (Target::Nats, None) => bail!("--target nats needs --nats ADDR"),
    };
    let conns = args.idle.unwrap_or(args.rooms.unwrap_or(1) * (args.subs + args.pubs));
    let limit = procfs::raise_nofile(conns as u64 + 1024);
    if (limit as usize) < conns + 64 {
        eprintln!("warning: only {limit} open files allowed; {conns} connections wanted");
    }
    match args.idle {
        Some(n) => idle(&args, endpoints.map(|e| e.subscribe), n).await,
        None => load(&args, endpoints).await,
    }
}

/// The target: `tcp ADDR`, `ws URL`, `nats ADDR`, or `pub tcp A, sub tcp B` across two nodes.
fn describe(args: &Args) -> String {
    if let (Target::Nats, Some(addr)) = (args.target, &args.nats) {
        return format!("nats {addr}");
    }
    let main = endpoint(&args.tcp, &args.ws, args.ws_deflate);
    let publish = endpoint(&args.pub_tcp, &args.pub_ws, args.ws_deflate).or_else(|| main.clone());
    let subscribe = endpoint(&args.sub_tcp, &args.sub_ws, args.ws_deflate).or_else(|| main.clone());
    match (publish.map(|e| describe_endpoint(&e)), subscribe.map(|e| describe_endpoint(&e))) {
        (Some(p), Some(s)) if p == s => p,
        (Some(p), Some(s)) => format!("pub {p}, sub {s}"),
        _ => "?".into(),
    }
}

/// Runs `f` over `0..n` with at most `concurrency` at once, in order of completion.
async fn each<T, F, Fut>(n: usize, concurrency: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    futures::stream::iter((0..n).map(f)).buffer_unordered(concurrency.max(1)).collect().await
}

async fn load(args: &Args, endpoints: Option<Endpoints>) -> anyhow::Result<()> {
    let nrooms = args.rooms.unwrap_or(1);
    let ctx = Arc::new(Ctx {
        phase: AtomicU8::new(WARMUP),
        clock: Clock::new(),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        received: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        max_lat: AtomicU64::new(0),
    });
    let rooms: Vec<Arc<RoomState>> = (0..nrooms)
        .map(|r| {
            let name = match args.target {
                Target::Chat => format!("{}-{r}", args.room_prefix),
                Target::Nats => format!("{}.{r}", args.room_prefix),
            };
            Arc::new(RoomState::new(name, args.subs))
        })
        .collect();
    let (stop_tx, stop) = watch::channel(false);
    let token = args.token.as_deref();
    let setup = Instant::now();

    // Subscribers first, so that every message is seen by all of them.
    let mut subs: Vec<(usize, JoinHandle<SubOut>)> = Vec::new();
    match &endpoints {
        Some(Endpoints { subscribe: endpoint, .. }) => {
            let opened = each(nrooms * args.subs, args.connect_concurrency, |k| {
                let (r, i) = (k / args.subs, k % args.subs);
                let room = rooms[r].name.clone();
                async move {
                    let s = wire::handshake(endpoint, CHUNK, &format!("sub-{r}-{i}"), token, &[room]).await;
                    (r, i, s)
                }
            })
            .await;
            for (r, i, session) in opened {
                let session = session.context("subscriber")?;
                let task = chat_subscriber(session, ctx.clone(), rooms[r].clone(), i, stop.clone());
                subs.push((r, tokio::spawn(task)));
            }
        }
        None => {
            let addr = args.nats.clone().unwrap_or_default();
            if args.nats_raw_subs {
                let opened = each(nrooms * args.subs, args.connect_concurrency, |k| {
                    let (addr, subject) = (addr.clone(), rooms[k / args.subs].name.clone());
                    async move { anyhow::Ok((k, nats::raw_subscribe(&addr, &subject).await?)) }
                })
                .await;
                for opened in opened {
                    let (k, stream) = opened.context("NATS subscriber")?;
                    let (r, i) = (k / args.subs, k % args.subs);
                    let task = nats::raw_subscriber(stream, ctx.clone(), rooms[r].clone(), i, stop.clone());
                    subs.push((r, tokio::spawn(task)));
                }
            }
            let opened = each(if args.nats_raw_subs { 0 } else { nrooms * args.subs }, args.connect_concurrency, |k| {
                let (addr, subject) = (addr.clone(), rooms[k / args.subs].name.clone());
                async move {
                    let client = nats::connect(&addr).await?;
                    let sub = nats::subscribe(&client, subject).await?;
                    anyhow::Ok((k, client, sub))
                }
            })
            .await;
            for opened in opened {
                let (k, client, sub) = opened.context("NATS subscriber")?;
                let (r, i) = (k / args.subs, k % args.subs);
                let task = nats::subscriber(client, sub, ctx.clone(), rooms[r].clone(), i, stop.clone());
                subs.push((r, tokio::spawn(task)));
            }
        }
    }

    // Then publishers.
    let total_pubs = nrooms * args.pubs;
    let mut pubs: Vec<JoinHandle<anyhow::Result<PubOut>>> = Vec::new();
    match &endpoints {
        Some(Endpoints { publish: endpoint, .. }) => {
            let opened = each(total_pubs, args.connect_concurrency, |k| {
                let (r, i) = (k / args.pubs, k % args.pubs);
                let room = rooms[r].name.clone();
                async move {
                    let s = wire::handshake(endpoint, CHUNK, &format!("pub-{r}-{i}"), token, &[room]).await;
                    (k, s)
                }
            })
            .await;
            for (k, session) in opened {
                let session = session.context("publisher")?;
                let pacer = Pacer::staggered(args.rate, k as f64 / total_pubs as f64);
                let room = rooms[k / args.pubs].clone();
                let task = chat_publisher(session, ctx.clone(), room, args.body, pacer, args.window, args.max_lag);
                pubs.push(tokio::spawn(task));
            }
        }
        None => {
            let addr = args.nats.clone().unwrap_or_default();
            for k in 0..total_pubs {
                let client = nats::connect(&addr).await.context("NATS publisher")?;
                let room = rooms[k / args.pubs].clone();
                let subject = room.name.clone();
                let (ctx, body, rate, lag) = (ctx.clone(), args.body, args.rate, args.max_lag);
                pubs.push(tokio::spawn(
                    async move { nats::publisher(client, subject, ctx, room, body, rate, lag).await },
                ));
            }
        }
    }
    let setup_secs = setup.elapsed().as_secs_f64();
    if !args.quiet {
        eprintln!(
            "{}: {} connections open in {setup_secs:.1} s; warm-up {} s, then {} s measured",
            describe(args),
            nrooms * (args.subs + args.pubs),
            args.warmup,
            args.duration
        );
    }

    // The timeline: warm-up, measured window, done; a progress line per second.
    let start = Instant::now();
    let measure_at = start + Duration::from_secs_f64(args.warmup);
    let end_at = measure_at + Duration::from_secs_f64(args.duration);
    let pids: Vec<u32> = args.server_pid.iter().map(|(_, pid)| *pid).collect();
    let cpus = || pids.iter().map(|&pid| procfs::cpu(pid)).collect::<Vec<_>>();
    let mut window_start = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last = (Instant::now(), 0u64, 0u64, cpus());
    loop {
        let phase = ctx.phase.load(Relaxed);
        let boundary = if phase == WARMUP { measure_at } else { end_at };
        tokio::select! {
            _ = ticker.tick() => {
                let now = Instant::now();
                let (sent, recv) = (ctx.sent.load(Relaxed), ctx.received.load(Relaxed));
                let dt = now.duration_since(last.0).as_secs_f64();
                let cpu = cpus();
                let mut cpu_text = String::new();
                for (((name, _), a), b) in args.server_pid.iter().zip(&last.3).zip(&cpu) {
                    if let (Some(a), Some(b)) = (a, b) {
                        let share = procfs::cpu_between(*a, *b).1 * 100.0;
                        if args.server_pid.len() == 1 {
                            cpu_text += &format!("  server cpu {share:3.0}%");
                        } else {
                            cpu_text += &format!("  {name} cpu {share:3.0}%");
                        }
                    }
                }
                if !args.quiet {
                    eprintln!(
                        "[{:5.1}s {}] sent {:>9.0}/s  deliveries {:>10.0}/s  acked {}  errors {}  max latency {:.2} ms{cpu_text}",
                        start.elapsed().as_secs_f64(),
                        if phase == WARMUP { "warm-up" } else { "measure" },
                        (sent - last.1) as f64 / dt,
                        (recv - last.2) as f64 / dt,
                        ctx.acked.load(Relaxed),
                        ctx.errors.load(Relaxed),
                        ctx.max_lat.swap(0, Relaxed) as f64 / 1e6,
                    );
                }
                last = (now, sent, recv, cpu);
            }
            _ = tokio::time::sleep_until(boundary.into()) => {
                let sample = Sample::take(&pids);
                if phase == WARMUP {
                    ctx.phase.store(MEASURE, Relaxed);
                    window_start = Some((Instant::now(), sample));
                } else {
                    ctx.phase.store(DONE, Relaxed);
                    let (t0, s0) = window_start.expect("the window started");
                    let window = t0.elapsed().as_secs_f64();
                    return finish(args, &rooms, subs, pubs, stop_tx, window, s0, sample, setup_secs).await;
                }
            }
        }
    }
}

/// What `/proc` says at one edge of the measured window.
struct Sample {
    /// Each `--server-pid`'s CPU time and RSS.
    servers: Vec<(Option<procfs::CpuSample>, Option<u64>)>,
    /// The generator's own CPU time.
    me: Option<procfs::CpuSample>,
    /// The whole machine's busy CPU seconds.
    busy: Option<f64>,
}

impl Sample {
    fn take(pids: &[u32]) -> Self {
        Sample {
            servers: pids.iter().map(|&pid| (procfs::cpu(pid), procfs::rss_kib(pid))).collect(),
            me: procfs::cpu(std::process::id()),
            busy: procfs::machine_busy_secs(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    args: &Args,
    rooms: &[Arc<RoomState>],
    subs: Vec<(usize, JoinHandle<SubOut>)>,
    pubs: Vec<JoinHandle<anyhow::Result<PubOut>>>,
    stop: watch::Sender<bool>,
    window: f64,
    s0: Sample,
    s1: Sample,
    setup_secs: f64,
) -> anyhow::Result<()> {
    // Publishers stop; let the last messages arrive.
    let mut pub_outs = Vec::new();
    for p in pubs {
        match p.await {
            Ok(Ok(out)) => pub_outs.push(out),
            Ok(Err(e)) => {
                eprintln!("publisher failed: {e:#}");
                pub_outs.push(PubOut { closed: true, ..PubOut::default() });
            }
            Err(e) => bail!("publisher panicked: {e}"),
        }
    }
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    let expected = |room: &RoomState| match args.target {
        Target::Chat => room.stored.load(Relaxed),
        Target::Nats => room.sent.load(Relaxed),
    };
    while Instant::now() < drain_until {
        if rooms.iter().all(|room| room.slowest() >= expected(room)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    let missing: u64 = rooms
        .iter()
        .flat_map(|room| room.received.iter().map(|c| expected(room).saturating_sub(c.load(Relaxed))))
        .sum();

    let mut hist = new_histogram();
    let (mut deliveries, mut gaps, mut dups, mut closed) = (0u64, 0u64, 0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut byes: BTreeMap<String, u64> = BTreeMap::new();
    let mut room_seq: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    for (r, s) in subs {
        let out = s.await?;
        hist.add(&out.hist)?;
        deliveries += out.deliveries;
        gaps += out.gaps;
        dups += out.dups;
        closed += u64::from(out.closed);
        if out.gaps + out.dups > 0 {
            let e = room_seq.entry(r).or_default();
            e.0 += out.gaps;
            e.1 += out.dups;
        }
        merge(&mut errors, out.errors);
        merge(&mut byes, out.byes);
    }
    let (mut sent, mut acked, mut echoes) = (0u64, 0u64, 0u64);
    let mut ack_hist = new_histogram();
    for out in pub_outs {
        sent += out.sent;
        acked += out.acked;
        if let Some(h) = &out.ack_hist {
            ack_hist.add(h)?;
        }
        echoes += out.echoes;
        closed += u64::from(out.closed);
        merge(&mut errors, out.errors);
        merge(&mut byes, out.byes);
    }

    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1e3;
    let latency = json!({
        "samples": hist.len(),
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
        "max": hist.max() as f64 / 1e3, "mean": hist.mean() / 1e3,
    });
    let aq = |p: f64| ack_hist.value_at_quantile(p) as f64 / 1e3;
    let ack_latency = json!({
        "samples": ack_hist.len(),
        "p50": aq(0.5), "p90": aq(0.9), "p99": aq(0.99), "p999": aq(0.999),
        "max": ack_hist.max() as f64 / 1e3, "mean": ack_hist.mean() / 1e3,
    });
    // Each server's CPU over the window, per delivery (subscribers' receptions) and per stored
    // message (acknowledged sends: the figure for a node that only publishes, or for Redis).
    let per = |cpu_secs: f64, n: u64| if n > 0 { cpu_secs * 1e9 / n as f64 } else { 0.0 };
    let servers: Vec<Value> = args
        .server_pid
        .iter()
        .zip(s0.servers.iter().zip(&s1.servers))
        .map(|((name, pid), (a, b))| match (a.0, b.0) {
            (Some(ca), Some(cb)) => {
                let (cpu_secs, share) = procfs::cpu_between(ca, cb);
                json!({
                    "name": name,
                    "pid": pid,
                    "cpu_secs": cpu_secs,
                    "cpu_share": share,
                    "cpu_ns_per_delivery": per(cpu_secs, deliveries),
                    "cpu_ns_per_message": per(cpu_secs, acked),
                    "rss_kib_start": a.1,
                    "rss_kib_end": b.1,
                })
            }
            _ => Value::Null,
        })
        .collect();
    let server = servers.first().cloned().unwrap_or(Value::Null);
    let generator_cpu = match (s0.me, s1.me) {
        (Some(a), Some(b)) => procfs::cpu_between(a, b).1,
        _ => 0.0,
    };
    // Busy CPU of the machine's other processes over the window, in cores: a noisy neighbour
    // (a compiler, say) makes a run's figures meaningless.
    let server_share: f64 = servers.iter().map(|s| s["cpu_share"].as_f64().unwrap_or(0.0)).sum();
    let others = match (s0.busy, s1.busy) {
        (Some(a), Some(b)) => ((b - a) / window - generator_cpu - server_share).max(0.0),
        _ => 0.0,
    };
    let nrooms = rooms.len();
    let summary = json!({
        "mode": "load",
        "target": describe(args),
        "nats_raw_subs": args.nats_raw_subs,
        "rooms": nrooms,
        "subs_per_room": args.subs,
        "pubs_per_room": args.pubs,
        "body": args.body,
        "rate": args.rate,
        "window": args.window,
        "max_lag": args.max_lag,
        "setup_secs": setup_secs,
        "warmup_secs": args.warmup,
        "duration_secs": window,
        "sent": sent,
        "sent_per_sec": sent as f64 / window,
        "acked": acked,
        "acked_per_sec": acked as f64 / window,
        "echoes": echoes,
        "deliveries": deliveries,
        "deliveries_per_sec": deliveries as f64 / window,
        "latency_us": latency,
        "sent_latency_us": ack_latency,
        "gaps": if args.target == Target::Chat { json!(gaps) } else { Value::Null },
        "duplicates": if args.target == Target::Chat { json!(dups) } else { Value::Null },
        "rooms_with_gaps_or_dups": room_seq.iter()
            .map(|(r, (g, d))| json!({"room": rooms[*r].name, "gaps": g, "duplicates": d}))
            .collect::<Vec<_>>(),
        "missing_at_end": missing,
        "errors": errors,
        "byes": byes,
        "closed_connections": closed,
        "server": server,
        "servers": servers,
        "generator_cpu_share": generator_cpu,
        "other_processes_cpu_share": others,
    });
    if args.json {
        println!("{summary}");
        return Ok(());
    }
    let n = |v: u64| group(v);
    println!(
        "chat-load {}: {nrooms} room(s) x ({} pub + {} subs), body {} B, {}, {:.1} s measured after {} s warm-up",
        describe(args),
        args.pubs,
        args.subs,
        args.body,
        if args.rate > 0.0 {
            format!("{} msg/s per publisher", args.rate)
        } else {
            format!("max rate (window {}, max-lag {})", args.window, args.max_lag)
        },
        window,
        args.warmup
    );
    println!(
        "  sent        {} messages ({}/s), {} acknowledged ({}/s)",
        n(sent),
        n((sent as f64 / window) as u64),
        n(acked),
        n((acked as f64 / window) as u64)
    );
    println!("  deliveries  {} ({}/s)", n(deliveries), n((deliveries as f64 / window) as u64));
    let quantiles = |label: &str, h: &Histogram<u64>, what: &str| {
        let ms = |p: f64| h.value_at_quantile(p) as f64 / 1e6;
        println!(
            "  {label:<11} p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  ({} {what})",
            ms(0.5),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1e6,
            n(h.len())
        );
    };
    quantiles("latency", &hist, "samples");
    if !ack_hist.is_empty() {
        quantiles("sent after", &ack_hist, "replies");
    }
    if args.target == Target::Chat {
        println!("  seq         gaps {gaps}, duplicates {dups} ({} room(s) affected)", room_seq.len());
    }
    println!("  missing     {missing} (expected by a subscriber, not received {} s after the end)", args.drain);
    println!("  errors      {errors:?}; bye {byes:?}; {closed} connection(s) closed early");
    for s in &servers {
        if let Value::Object(s) = s {
            println!(
                "  server      {} (pid {}): {:.2} s CPU ({:.0}% of a core), {:.0} ns CPU per delivery, {:.0} ns per \
                 stored message; RSS {} -> {} KiB",
                s["name"].as_str().unwrap_or("?"),
                s["pid"],
                s["cpu_secs"].as_f64().unwrap_or(0.0),
                s["cpu_share"].as_f64().unwrap_or(0.0) * 100.0,
                s["cpu_ns_per_delivery"].as_f64().unwrap_or(0.0),
                s["cpu_ns_per_message"].as_f64().unwrap_or(0.0),
                s["rss_kib_start"],
                s["rss_kib_end"]
            );
        }
    }
    println!(
        "  generator   {:.0}% of a core; other processes {:.0}% of a core{}",
        generator_cpu * 100.0,
        others * 100.0,
        if others > 0.15 { " (noisy: the figures are not reliable)" } else { "" }
    );
    Ok(())
}

fn merge(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

/// 1234567 → "1,234,567".
fn group(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A chat/1 subscriber: checks `seq`, records latency, answers pings.
async fn chat_subscriber(
    session: Session,
    ctx: Arc<Ctx>,
    room: Arc<RoomState>,
    idx: usize,
    mut stop: watch::Receiver<bool>,
) -> SubOut {
    let Session { mut reader, mut writer, joined_seqs } = session;
    let mut last = joined_seqs.first().copied().unwrap_or(0);
    let mut out = SubOut::default();
    let counter = &room.received[idx];
    loop {
        let (mut n, mut batch_max, mut pong, mut bye) = (0u64, 0u64, false, false);
        let (mut now, mut measuring) = (0u64, false);
        let read = tokio::select! {
            read = reader.read_batch(|f| match scan::kind(f) {
                Kind::Message => {
                    n += 1;
                    if now == 0 {
                        now = ctx.clock.now();
                        measuring = ctx.phase.load(Relaxed) == MEASURE;
                    }
                    let end = match scan::seq(f) {
                        Some((s, end)) => {
                            if s > last + 1 {
                                out.gaps += s - last - 1;
                            } else if s <= last {
                                out.dups += 1;
                            }
                            last = last.max(s);
                            end
                        }
                        None => 0,
                    };
                    if measuring {
                        out.deliveries += 1;
                        if let Some(t) = scan::stamp(f, end) {
                            let lat = now.saturating_sub(t).max(1);
                            let _ = out.hist.record(lat);
                            batch_max = batch_max.max(lat);
                        }
                    }
                }
                Kind::Ping => pong = true,
                Kind::Error => {
                    ctx.errors.fetch_add(1, Relaxed);
                    *out.errors.entry(scan::error_code(f)).or_default() += 1;
                }
                Kind::Bye => {
                    bye = true;
                    *out.byes.entry(scan::bye_reason(f)).or_default() += 1;
                }
                Kind::Sent | Kind::Other => {}
            }) => read,
            _ = stop.changed() => break,
        };
        counter.fetch_add(n, Relaxed);
        ctx.received.fetch_add(n, Relaxed);
        ctx.max_lat.fetch_max(batch_max, Relaxed);
        room.progressed();
        if !matches!(read, Ok(true)) || bye {
            out.closed = true;
            break;
        }
        if pong {
            writer.push(br#"{"type":"pong"}"#);
            if writer.flush().await.is_err() {
                out.closed = true;
                break;
            }
        }
    }
    writer.close().await;
    out
}

/// The `send` frame a publisher repeats: `id` and the body's stamp are fixed-width digits,
/// rewritten in place for each message.
struct SendTemplate {
    frame: Vec<u8>,
    id_at: usize,
    stamp_at: usize,
}

const FIRST_ID: u64 = 1_000_000_000_000;
const ID_DIGITS: usize = 13;

impl SendTemplate {
    fn new(room: &str, body_size: usize) -> Self {
        let (body, body_stamp) = scan::body(body_size);
        let mut frame = br#"{"type":"send","id":"#.to_vec();
        let id_at = frame.len();
        frame.extend_from_slice(FIRST_ID.to_string().as_bytes());
        frame.extend_from_slice(br#","room":"#);
        frame.extend_from_slice(serde_json::to_string(room).expect("a string").as_bytes());
        frame.extend_from_slice(br#","body":"#);
        let stamp_at = frame.len() + body_stamp;
        frame.extend_from_slice(&body);
        frame.push(b'}');
        SendTemplate { frame, id_at, stamp_at }
    }

    fn fill(&mut self, id: u64, stamp: u64) -> &[u8] {
        scan::put_digits(&mut self.frame[self.id_at..self.id_at + ID_DIGITS], id);
        scan::put_digits(&mut self.frame[self.stamp_at..self.stamp_at + STAMP_DIGITS], stamp);
        &self.frame
    }
}

/// A chat/1 publisher: one task writes pipelined sends within the window, another reads the
/// `sent` replies (and the publisher's own copies of its messages) and reopens the window.
async fn chat_publisher(
    session: Session,
    ctx: Arc<Ctx>,
    room: Arc<RoomState>,
    body_size: usize,
    mut pacer: Pacer,
    window: usize,
    max_lag: u64,
) -> anyhow::Result<PubOut> {
    let Session { mut reader, mut writer, .. } = session;
    let permits = Arc::new(Semaphore::new(window.max(1)));
    // When each unanswered send was written: a session answers its requests in order.
    let written = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::<u64>::with_capacity(window)));
    let (done_tx, mut done) = watch::channel(false);
    let acks = {
        let (ctx, room, permits, written) = (ctx.clone(), room.clone(), permits.clone(), written.clone());
        tokio::spawn(async move {
            let mut out = PubOut::default();
            let mut ack_hist = new_histogram();
            loop {
                let (mut acks, mut stored, mut bye) = (0u64, 0u64, false);
                let measuring = ctx.phase.load(Relaxed) == MEASURE;
                let mut answered = |ctx: &Ctx| {
                    let at = written.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop_front();
                    if let (true, Some(at)) = (measuring, at) {
                        let _ = ack_hist.record(ctx.clock.now().saturating_sub(at).max(1));
                    }
                };
                let read = tokio::select! {
                    read = reader.read_batch(|f| match scan::kind(f) {
                        Kind::Sent => {
                            acks += 1;
                            stored += u64::from(scan::seq(f).is_some());
                            answered(&ctx);
                        }
                        Kind::Error => {
                            acks += 1;
                            answered(&ctx);
                            ctx.errors.fetch_add(1, Relaxed);
                            *out.errors.entry(scan::error_code(f)).or_default() += 1;
                        }
                        Kind::Message => out.echoes += 1,
                        Kind::Bye => {
                            bye = true;
                            *out.byes.entry(scan::bye_reason(f)).or_default() += 1;
                        }
                        Kind::Ping | Kind::Other => {}
                    }) => read,
                    _ = done.changed() => break,
                };
                permits.add_permits(acks as usize);
                ctx.acked.fetch_add(acks, Relaxed);
                room.stored.fetch_add(stored, Relaxed);
                if ctx.phase.load(Relaxed) == MEASURE {
                    out.acked += acks;
                }
                if !matches!(read, Ok(true)) || bye {
                    out.closed = true;
                    permits.close();
                    break;
                }
            }
            out.ack_hist = Some(ack_hist);
            out
        })
    };

    let mut template = SendTemplate::new(&room.name, body_size);
    let mut id = FIRST_ID;
    let mut sent_in_window = 0u64;
    let mut failed = false;
    'run: while let Some(want) = pacer.next(BATCH, &ctx).await {
        // At least one free slot of the window, then as many more as are free.
        let first = loop {
            match tokio::time::timeout(Duration::from_millis(100), permits.acquire()).await {
                Ok(Ok(p)) => break p,
                Ok(Err(_)) => {
                    failed = true;
                    break 'run;
                }
                Err(_) if ctx.phase.load(Relaxed) >= DONE => break 'run,
                Err(_) => continue,
            }
        };
        first.forget();
        let mut n = 1;
        while n < want {
            match permits.try_acquire() {
                Ok(p) => {
                    p.forget();
                    n += 1;
                }
                Err(_) => break,
            }
        }
        if !wait_for_lag(&ctx, &room, max_lag).await {
            break;
        }
        let now = ctx.clock.now();
        written.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(std::iter::repeat_n(now, n as usize));
        for _ in 0..n {
            writer.push(template.fill(id, now));
            id += 1;
        }
        if writer.flush().await.is_err() {
            failed = true;
            break;
        }
        pacer.sent(n);
        room.sent.fetch_add(n, Relaxed);
        ctx.sent.fetch_add(n, Relaxed);
        if ctx.phase.load(Relaxed) == MEASURE {
            sent_in_window += n;
        }
    }
    // Wait for the replies still in flight (bounded), then stop reading.
    let until = Instant::now() + Duration::from_secs(5);
    while permits.available_permits() < window.max(1) && !permits.is_closed() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Keep the connection open (the reader keeps counting) until the whole run stops.
    let _ = done_tx.send(true);
    let mut out = acks.await?;
    out.sent = sent_in_window;
    out.closed |= failed;
    writer.close().await;
    Ok(out)
}

/// Idle mode: N connections that say hello, join a room, and stay.
async fn idle(args: &Args, endpoint: Option<Endpoint>, n: usize) -> anyhow::Result<()> {
    let nrooms = args.rooms.unwrap_or(n.div_ceil(10)).max(1);
    let pid = args.server_pid.first().map(|(_, pid)| *pid);
    let rss_before = pid.and_then(procfs::rss_kib);
    let (stop_tx, stop) = watch::channel(false);
    let started = Instant::now();
    let token = args.token.as_deref();
    let mut holders: Vec<JoinHandle<()>> = Vec::new();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let closed = Arc::new(AtomicU64::new(0));
    match &endpoint {
        Some(endpoint) => {
            let opened = each(n, args.connect_concurrency, |i| {
                let room = format!("{}-idle-{}", args.room_prefix, i % nrooms);
                async move { wire::handshake(endpoint, 1024, &format!("idle-{i}"), token, &[room]).await }
            })
            .await;
            for session in opened {
                match session {
                    Ok(session) => {
                        let (stop, closed) = (stop.clone(), closed.clone());
                        holders.push(tokio::spawn(async move {
                            if wire::hold(session, stop).await.is_err() {
                                closed.fetch_add(1, Relaxed);
                            }
                        }));
                    }
                    Err(e) => *failures.entry(e.to_string()).or_default() += 1,
                }
            }
        }
        None => {
            let addr = args.nats.clone().unwrap_or_default();
            let opened = each(n, args.connect_concurrency, |i| {
                let (addr, subject) = (addr.clone(), format!("{}.idle.{}", args.room_prefix, i % nrooms));
                async move {
                    let client = async_nats::ConnectOptions::new().connect(addr.as_str()).await?;
                    let sub = nats::subscribe(&client, subject).await?;
                    anyhow::Ok((client, sub))
                }
            })
            .await;
            for opened in opened {
                match opened {
                    Ok((client, sub)) => {
                        let mut stop = stop.clone();
                        holders.push(tokio::spawn(async move {
                            let _ = stop.changed().await;
                            drop((sub, client));
                        }));
                    }
                    Err(e) => *failures.entry(e.to_string()).or_default() += 1,
                }
            }
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    let opened = holders.len();
    if !args.quiet {
        eprintln!("{}: {opened} of {n} connections open in {open_secs:.1} s; holding {} s", describe(args), args.hold);
    }
    // Let the server settle (allocations of the handshake released), then measure.
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let rss_after = pid.and_then(procfs::rss_kib);
    let still_open = opened as u64 - closed.load(Relaxed);
    let _ = stop_tx.send(true);
    for h in holders {
        let _ = h.await;
    }
    let per_conn = match (rss_before, rss_after) {
        (Some(a), Some(b)) if opened > 0 => Some((b as f64 - a as f64) * 1024.0 / opened as f64),
        _ => None,
    };
    let summary = json!({
        "mode": "idle",
        "target": describe(args),
        "connections": opened,
        "wanted": n,
        "rooms": nrooms,
        "open_secs": open_secs,
        "still_open_at_measure": still_open,
        "failures": failures,
        "server": {"pid": pid, "rss_kib_before": rss_before, "rss_kib_after": rss_after, "rss_bytes_per_connection": per_conn},
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "chat-load idle {}: {opened} of {n} connections (hello + join, {nrooms} rooms) open in {open_secs:.1} s, {still_open} still open after {} s",
            describe(args),
            args.hold
        );
        if !failures.is_empty() {
            println!("  failures    {failures:?}");
        }
        if let (Some(a), Some(b), Some(per)) = (rss_before, rss_after, per_conn) {
            println!("  server RSS  {a} KiB -> {b} KiB: {:.0} bytes ({:.2} KiB) per connection", per, per / 1024.0);
        }
    }
    Ok(())
}
