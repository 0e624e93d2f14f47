//! The NATS broker on a three-server JetStream cluster (replicas 3), under concurrent
//! publishers on every server: one order, each acknowledged seq carried by exactly the message
//! it acknowledged, on every node.

use std::collections::HashMap;
use std::sync::Arc;

use chat_broker_nats::NatsBroker;
use chat_core::broker::HistoryQuery;
use chat_core::{Broker, RoomName};
use chat_testkit::conformance::{opts, publication, Recorder};
use chat_testkit::NatsCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_every_server_get_one_order() {
    const TASKS: u64 = 9;
    const EACH: u64 = 30;
    let cluster = tokio::task::block_in_place(NatsCluster::start);
    let room = RoomName::new("race").expect("a room");
    let mut nodes = Vec::new();
    for (i, url) in cluster.urls().iter().enumerate() {
        // Each node on its own server.
        let broker = NatsBroker::builder(url.as_str()).replicas(3).build().expect("a broker");
        let seen = Arc::new(Recorder::default());
        let node = broker.attach(&format!("n{i}"), seen.clone(), None).await.expect("attach");
        node.subscribe(&room).await.expect("subscribe");
        nodes.push((node, seen));
    }
    let tasks = (0..TASKS).map(|t| {
        let node = nodes[t as usize % nodes.len()].0.clone();
        let room = room.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for k in 0..EACH {
                let key = format!("t{t}-{k}");
                let p = node.publish(&room, publication(&format!("t{t}"), k), &opts(Some(&key), 10_000)).await;
                acked.push((p.expect("publish").seq, t, k));
            }
            acked
        })
    });
    let mut acked = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        acked.extend(task.await.expect("a publisher"));
    }
    let total = (TASKS * EACH) as usize;
    acked.sort();
    let seqs: Vec<u64> = acked.iter().map(|a| a.0).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "each seq acknowledged once");
    let by_seq: HashMap<u64, (u64, u64)> = acked.iter().map(|&(seq, t, k)| (seq, (t, k))).collect();
    for (i, (_, seen)) in nodes.iter().enumerate() {
        let got = seen.stored(&room, total).await;
        for (_, m) in &got {
            let (t, k) = by_seq[&m.seq];
            assert_eq!(
                (&*m.from, m.ts),
                (format!("t{t}").as_str(), k),
                "node {i}: seq {} carries another message",
                m.seq
            );
        }
        assert_eq!(got.len(), total, "node {i}: nothing twice");
    }
    let page = nodes[0].0.history(&room, HistoryQuery { before: None, after: Some(0), limit: total }).await;
    let page = page.expect("history");
    for m in &page.messages {
        let (t, k) = by_seq[&m.seq];
        assert_eq!((&*m.from, m.ts), (format!("t{t}").as_str(), k), "history: seq {} carries another message", m.seq);
    }
    assert_eq!(page.messages.len(), total);
}
