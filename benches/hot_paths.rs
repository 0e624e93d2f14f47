//! Criterion benches of the hot paths: parsing a `send`, a `send` through the whole driver,
//! encoding a `message`, in-process fan-out to 10 / 1,000 / 10,000 members (time per delivery),
//! and `MemoryBroker` publish.
//!
//! Run: `cargo bench --bench hot_paths` (add `-- fanout` to run one group). With
//! `CHAT_BENCH_RECORDER=prometheus` in the environment, the Prometheus recorder of the example
//! server is installed first, so that the engine's metrics are recorded as in production
//! (without it, no recorder: each recording finds none).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_core::bench::{encode_message, MessageParts};
use chat_core::broker::{Broker, Delivery, DeliverySink, Publication, PublishOpts};
use chat_core::protocol::parse;
use chat_core::{ConnInfo, Engine, Inbound, MemoryBroker, RoomName};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::StreamExt;

const BODY: &str = r#"{"text":"a 128-byte body: the quick brown fox jumps over the lazy dog; the quick brown fox jumps over the lazy dog....."}"#;

fn send_frame() -> String {
    format!(r#"{{"type":"send","id":42,"room":"lobby","body":{BODY}}}"#)
}

fn parse_send(c: &mut Criterion) {
    let frame = send_frame();
    c.bench_function("parse_send", |b| b.iter(|| parse(black_box(frame.as_bytes()))));
}

fn encode(c: &mut Criterion) {
    let parts = MessageParts {
        room: "lobby",
        seq: Some(123_456),
        from: "alice",
        ts: 1_764_201_600_123,
        body: Some(BODY.as_bytes()),
    };
    c.bench_function("encode_message", |b| b.iter(|| encode_message(black_box(&parts))));
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for members in [10usize, 1_000, 10_000] {
        group.throughput(Throughput::Elements(members as u64));
        group.bench_function(BenchmarkId::from_parameter(members), |b| {
            let mut room = chat_core::bench::Fanout::new(members, 128);
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    room.deliver();
                    spent += start.elapsed();
                    room.drain();
                }
                spent
            });
        });
    }
    group.finish();
}

struct Discard;
impl DeliverySink for Discard {
    fn deliver(&self, _: &RoomName, d: Delivery) {
        black_box(d);
    }
}

fn broker_publish(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let broker = MemoryBroker::new();
    let node = runtime.block_on(broker.attach("bench", Arc::new(Discard), None)).unwrap();
    let room = RoomName::new("lobby").unwrap();
    runtime.block_on(node.subscribe(&room)).unwrap();
    let opts = PublishOpts {
        key: None,
        idempotency_window: Duration::from_secs(300),
        history_size: 1000,
        history_ttl: Duration::from_secs(86_400),
        max_history_bytes: 256 << 20,
    };
    let from: Arc<str> = Arc::from("alice");
    let body = Bytes::from_static(BODY.as_bytes());
    c.bench_function("memory_broker_publish", |b| {
        b.to_async(&runtime).iter(|| {
            let publication = Publication { from: from.clone(), ts: 1, body: body.clone() };
            let (node, room, opts) = (&node, &room, &opts);
            async move { node.publish(room, publication, opts).await.unwrap() }
        })
    });
}

fn send_through_driver(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (tx, mut rx) = runtime.block_on(async {
        let engine = Engine::builder()
            .tune(|c| c.rate_per_sec = u32::MAX)
            .tune(|c| c.rate_burst = u32::MAX)
            .build()
            .await
            .unwrap();
        let (tx, inbound) = futures::channel::mpsc::unbounded::<Result<Inbound, std::io::Error>>();
        let (outbound, mut rx) = futures::channel::mpsc::unbounded::<Bytes>();
        tokio::spawn(async move { engine.serve(inbound, outbound, ConnInfo::default()).await });
        for frame in
            [r#"{"type":"hello","id":1,"protocol":1,"user":"alice"}"#, r#"{"type":"join","id":2,"room":"lobby"}"#]
        {
            tx.unbounded_send(Ok(Inbound::Frame(Bytes::from_static(frame.as_bytes())))).unwrap();
        }
        for _ in 0..3 {
            rx.next().await.unwrap(); // welcome, joined, member_joined
        }
        (tx, rx)
    });
    let frame = Bytes::from(send_frame());
    c.bench_function("send_through_driver", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    tx.unbounded_send(Ok(Inbound::Frame(frame.clone()))).unwrap();
                    // the member's own message event, then the `sent` reply
                    rx.next().await.unwrap();
                    black_box(rx.next().await.unwrap());
                }
                start.elapsed()
            })
        })
    });
}

/// Installs the Prometheus recorder when `CHAT_BENCH_RECORDER=prometheus` (see the top).
fn recorder(_: &mut Criterion) {
    if std::env::var("CHAT_BENCH_RECORDER").is_ok_and(|v| v == "prometheus") {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder();
        let _handle = recorder.expect("a recorder, installed once");
        chat_core::metrics::describe();
    }
}

criterion_group!(benches, recorder, parse_send, encode, fanout, broker_publish, send_through_driver);
criterion_main!(benches);
