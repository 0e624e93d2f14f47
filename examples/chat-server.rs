//! `chat-server`: a complete chat server in one file, the way a host application embeds the
//! engine. One [`Engine`] (the node), put behind both transports: framed TCP and WebSocket, the
//! latter also serving a browser page at `GET /` (the files of `examples/web/`, compiled in).
//! Conversations are kept in a store: by default the SQLite file `chat-data.db` in the working
//! directory (`--store` chooses another, PostgreSQL for many nodes, or none).
//!
//! ```text
//! cargo run --release --example chat-server -- --tcp 127.0.0.1:7070 --ws 127.0.0.1:7071
//! # then open http://127.0.0.1:7071/ in two browser tabs
//! ```
//!
//! With `--metrics ADDR` it also serves the engine's metrics (`chat_core::metrics` lists them)
//! to Prometheus at `http://ADDR/metrics`, through `metrics-exporter-prometheus`.
//!
//! Once the listeners accept it prints one line on stdout, `listening tcp=ADDR ws=ADDR` (and
//! ` metrics=ADDR` with `--metrics`), so that scripts and tests can start it on port 0 and read
//! the real ports. Logs go to stderr
//! (`RUST_LOG=debug` for more). Ctrl-C or SIGTERM shuts it down gracefully: every client gets
//! `bye shutdown` (and comes back, with `since`, to the next server on the same address).

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use axum::http::header;
use axum::routing::get;
use axum::Router;
use chat_engine::core::{AllowAnonymous, ConnectionLimits, Engine, JwtAuthenticator, MemoryBroker, Retention};
use chat_engine::nats::NatsBroker;
use chat_engine::postgres::PostgresStore;
use chat_engine::redis::RedisBroker;
use chat_engine::sqlite::SqliteStore;
use chat_engine::tcp::TcpServer;
use chat_engine::ws::{DeflateOptions, WsOptions, WsServer};
use clap::Parser;

/// Command-line options. Engine limits left unset keep the engine's defaults.
#[derive(Debug, Parser)]
#[command(about = "A chat server: chat/1 over TCP and WebSocket, with a browser page at the WebSocket address")]
struct Args {
    /// TCP listener (4-byte length-prefixed JSON frames). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7070")]
    tcp: String,
    /// WebSocket listener: chat/1 at /ws, the browser page at /. Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7071")]
    ws: String,
    /// Offer permessage-deflate on the WebSocket listener (browsers accept it): long messages
    /// go out compressed, each compressed once for all its recipients.
    #[arg(long)]
    ws_deflate: bool,
    /// `memory` (this process only), or a broker that many nodes share rooms through: Redis,
    /// one server, `redis://HOST:PORT`, a primary managed by Sentinel,
    /// `redis+sentinel://HOST:PORT,HOST:PORT,…/SERVICE` (the hosts are the sentinels), or a
    /// Redis Cluster, `redis+cluster://HOST:PORT,HOST:PORT,…` (some of its nodes); or NATS
    /// JetStream, `nats://HOST:PORT[,nats://HOST:PORT…]` (the servers of one cluster).
    #[arg(long, default_value = "memory")]
    broker: String,
    /// Where conversations are kept durably: `sqlite:PATH` (a database file), `postgres://…`
    /// (one database for every node of a cluster), or `none` (only the broker's recent window,
    /// lost with it). With a store, `sent` means committed, and a restarted server (or a
    /// flushed Redis) goes on where the conversation stood.
    #[arg(long, default_value = "sqlite:chat-data.db")]
    store: String,
    /// With a store: days of messages kept per room.
    #[arg(long, default_value_t = 30)]
    retention_days: u64,
    /// With a store: messages kept per room (the newest).
    #[arg(long, default_value_t = 1_000_000)]
    retention_count: u64,
    /// This node's id (`welcome.node`). Default: a random one.
    #[arg(long)]
    node_id: Option<String>,
    /// How many messages each room keeps.
    #[arg(long)]
    history: Option<usize>,
    /// Heartbeat interval: the server pings after this long without sending.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// The largest frame accepted, in bytes.
    #[arg(long)]
    max_frame: Option<usize>,
    /// Request tokens per second per session (a send costs 4, a join 1...); 0 = unlimited.
    #[arg(long)]
    rate_per_sec: Option<u32>,
    /// Request tokens a session may spend at once above the rate.
    #[arg(long)]
    rate_burst: Option<u32>,
    /// Bound on each session's queued outbound frames (beyond it: `bye slow_consumer`).
    #[arg(long)]
    outbox_frames: Option<usize>,
    /// Rooms with members on this node (a join beyond it: `unavailable`).
    #[arg(long)]
    max_rooms: Option<usize>,
    /// With the memory broker: bytes of history kept in memory across all rooms (beyond it
    /// the least recently active rooms lose their oldest messages).
    #[arg(long)]
    max_history_bytes: Option<usize>,
    /// With the Redis or NATS broker: how long the sessions of a dead node stay in presence.
    #[arg(long)]
    presence_ttl_ms: Option<u64>,
    /// With the Redis broker: the longest one Redis call may take before it fails with
    /// `unavailable` (default 2000).
    #[arg(long)]
    redis_op_timeout_ms: Option<u64>,
    /// With the Redis broker: how many replicas must have a message before `sent` (Redis's
    /// `WAIT`; default 0). 1 under Sentinel keeps a failover from losing acknowledged messages.
    #[arg(long, default_value_t = 0)]
    redis_replicas: u32,
    /// With the NATS broker: on how many JetStream servers each message is stored (1, 3 or 5;
    /// `sent` once a majority has it). Applies when the stream is created.
    #[arg(long, default_value_t = 1)]
    nats_replicas: usize,
    /// With the NATS broker: the longest one NATS call may take before it fails with
    /// `unavailable` (default 2000).
    #[arg(long)]
    nats_op_timeout_ms: Option<u64>,
    /// Require HS256 tokens signed with this secret (`hello.token`) instead of trusting
    /// `hello.user`.
    #[arg(long)]
    token_secret: Option<String>,
    /// With --token-secret: require tokens issued by this `iss`.
    #[arg(long, requires = "token_secret")]
    token_issuer: Option<String>,
    /// With --token-secret: require tokens meant for this `aud`.
    #[arg(long, requires = "token_secret")]
    token_audience: Option<String>,
    /// The most connections held at once, TCP and WebSocket together (beyond it: closed at
    /// accept, or `503`).
    #[arg(long, default_value_t = chat_engine::core::DEFAULT_MAX_CONNECTIONS, value_parser = at_least_one)]
    max_connections: usize,
    /// The most connections held at once from one IP address, both transports together.
    #[arg(long, default_value_t = chat_engine::core::DEFAULT_MAX_CONNECTIONS_PER_IP, value_parser = at_least_one)]
    max_connections_per_ip: usize,
    /// The handshake deadline: from accept to `welcome` (TLS, the WebSocket upgrade and
    /// `hello` included). Default 10,000.
    #[arg(long)]
    handshake_timeout_ms: Option<u64>,
    /// Serve metrics for Prometheus at http://ADDR/metrics (port 0 picks a free port; the
    /// `listening` line names it as `metrics=ADDR`). Counters: chat_connections_total{transport},
    /// chat_sessions_total, chat_joins_total, chat_messages_stored_total,
    /// chat_deliveries_total, chat_dropped_total{reason}, chat_closes_total{reason},
    /// chat_broker_errors_total{op}, chat_store_errors_total{op}. Gauges:
    /// chat_connections{transport}, chat_sessions, chat_rooms, chat_outbox_queued_frames,
    /// chat_outbox_queued_bytes. Histograms: chat_broker_call_duration_seconds{op},
    /// chat_store_call_duration_seconds{op}, chat_store_append_records. Off by default; bind it
    /// where only your Prometheus reaches it.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

/// A limit of at least 1 (0 would refuse every connection, not lift the limit).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Buckets of the latency histograms (`*_seconds`), from 100 µs to 10 s.
const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets of `chat_store_append_records`: records per commit, up to the default batch.
const RECORDS_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Installs the Prometheus recorder and serves `GET /metrics` on `addr`; returns the bound
/// address. Must run before the engine is built, so that nothing it records is missed.
async fn serve_metrics(addr: &str) -> anyhow::Result<std::net::SocketAddr> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(chat_engine::core::metrics::STORE_APPEND_RECORDS.into()),
            RECORDS_BUCKETS,
        )?
        .install_recorder()
        .context("installing the metrics recorder")?;
    chat_engine::core::metrics::describe();
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding --metrics {addr}"))?;
    let bound = listener.local_addr()?;
    // Histograms are kept in windows that upkeep rolls over: without it they grow.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let render = move || {
        let handle = handle.clone();
        async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()) }
    };
    let app = Router::new().route("/metrics", get(render));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(bound)
}

/// The browser page and its scripts, compiled into the binary.
const INDEX_HTML: &str = include_str!("web/index.html");
const CHAT_JS: &str = include_str!("web/chat.js");
const APP_JS: &str = include_str!("web/app.js");

/// The routes serving the browser page, next to the WebSocket endpoint `/ws`.
fn page() -> Router {
    let js = |body: &'static str| get(move || async move { ([(header::CONTENT_TYPE, "text/javascript")], body) });
    Router::new()
        .route("/", get(|| async { axum::response::Html(INDEX_HTML) }))
        .route("/chat.js", js(CHAT_JS))
        .route("/app.js", js(APP_JS))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();

    // 0. Metrics, if asked for: the recorder first, so that the engine's first records count.
    let metrics_addr = match &args.metrics {
        Some(addr) => Some(serve_metrics(addr).await?),
        None => None,
    };

    // 1. The engine: identity, limits, authentication and broker.
    let mut builder = Engine::builder().tune(|c| {
        if let Some(n) = args.history {
            c.history_size = n;
        }
        if let Some(ms) = args.heartbeat_ms {
            c.heartbeat = Duration::from_millis(ms);
        }
        if let Some(n) = args.max_frame {
            c.max_frame = n;
        }
        if let Some(n) = args.rate_per_sec {
            c.rate_per_sec = n;
        }
        if let Some(n) = args.rate_burst {
            c.rate_burst = n;
        }
        if let Some(n) = args.outbox_frames {
            c.outbox_frames = n;
        }
        if let Some(n) = args.max_rooms {
            c.max_rooms = n;
        }
        if let Some(n) = args.max_history_bytes {
            c.max_history_bytes = n;
        }
        if let Some(ms) = args.handshake_timeout_ms {
            c.handshake_timeout = Duration::from_millis(ms);
        }
        c.retention = Retention {
            max_age: Duration::from_secs(args.retention_days.saturating_mul(24 * 3600)),
            max_count: args.retention_count,
        };
    });
    if let Some(id) = &args.node_id {
        builder = builder.node_id(id);
    }
    builder = match &args.token_secret {
        Some(secret) => {
            let mut jwt = JwtAuthenticator::new(secret.as_bytes());
            if let Some(iss) = &args.token_issuer {
                jwt = jwt.require_issuer(iss);
            }
            if let Some(aud) = &args.token_audience {
                jwt = jwt.require_audience(aud);
            }
            builder.authenticator(jwt)
        }
        None => builder.authenticator(AllowAnonymous),
    };
    builder = if args.broker == "memory" {
        builder.broker(MemoryBroker::new())
    } else if args.broker.starts_with("nats://") {
        let mut nats = NatsBroker::builder(&args.broker).replicas(args.nats_replicas);
        if let Some(ms) = args.presence_ttl_ms {
            nats = nats.presence_ttl(Duration::from_millis(ms));
        }
        if let Some(ms) = args.nats_op_timeout_ms {
            nats = nats.op_timeout(Duration::from_millis(ms));
        }
        builder.broker(nats.build().context("--broker nats://HOST:PORT[,nats://HOST:PORT…]")?)
    } else {
        let mut redis = RedisBroker::builder(&args.broker);
        if let Some(ms) = args.presence_ttl_ms {
            redis = redis.presence_ttl(Duration::from_millis(ms));
        }
        if let Some(ms) = args.redis_op_timeout_ms {
            redis = redis.op_timeout(Duration::from_millis(ms));
        }
        redis = redis.replicas_to_acknowledge(args.redis_replicas);
        let redis = redis.build().with_context(|| {
            format!(
                "--broker must be `memory`, `redis://HOST:PORT`, `redis+sentinel://HOST:PORT,…/SERVICE`, `redis+cluster://HOST:PORT,…` or `nats://HOST:PORT`, not {:?}",
                args.broker
            )
        })?;
        builder.broker(redis)
    };
    builder = match args.store.as_str() {
        "none" => {
            tracing::info!("no store: history lives in the broker only");
            builder
        }
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = PostgresStore::connect(url).await.context("connecting to the PostgreSQL store")?;
            tracing::info!("store: PostgreSQL");
            builder.store(store)
        }
        spec => {
            let path = spec
                .strip_prefix("sqlite:")
                .with_context(|| format!("--store must be `sqlite:PATH`, `postgres://…` or `none`, not {spec:?}"))?;
            let store = SqliteStore::open(path).await.context("opening the SQLite store")?;
            let file = std::path::absolute(store.path()).unwrap_or_else(|_| store.path().to_owned());
            tracing::info!(file = %file.display(), "store: SQLite");
            builder.store(store)
        }
    };
    let engine = builder.build().await.context("starting the engine")?;

    // 2. The transports, sharing one connection limiter (the limits are the node's). Binding
    // both before announcing them means a client may connect as soon as it reads the
    // `listening` line.
    let limits = ConnectionLimits::new(args.max_connections, args.max_connections_per_ip)?;
    let tcp = TcpServer::bind(&args.tcp, engine.clone())
        .await
        .with_context(|| format!("binding {}", args.tcp))?
        .connection_limits(limits.clone());
    let mut ws_options = WsOptions::default().connection_limits(limits);
    if args.ws_deflate {
        ws_options = ws_options.deflate(DeflateOptions::default());
    }
    let ws = WsServer::bind(&args.ws, engine.clone(), ws_options)
        .await
        .with_context(|| format!("binding {}", args.ws))?
        .with_routes(page());
    let (tcp_addr, ws_addr) = (tcp.local_addr()?, ws.local_addr());
    let tcp_task = tokio::spawn(tcp.run());
    let ws_task = tokio::spawn(ws.run());
    match metrics_addr {
        Some(metrics) => println!("listening tcp={tcp_addr} ws={ws_addr} metrics={metrics}"),
        None => println!("listening tcp={tcp_addr} ws={ws_addr}"),
    }
    std::io::stdout().flush()?; // scripts and tests wait for this line
    tracing::info!(node = engine.node_id(), broker = %args.broker, "open http://{ws_addr}/ in a browser");

    // 3. Run until Ctrl-C or SIGTERM, then shut down: the listeners stop accepting and every
    // session gets `bye shutdown` before the engine leaves the broker.
    shutdown_signal().await?;
    tracing::info!(sessions = engine.session_count(), "shutting down");
    engine.shutdown().await;
    tcp_task.await?;
    ws_task.await??;
    tracing::info!("bye");
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            ctrl_c = tokio::signal::ctrl_c() => ctrl_c?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
