//! Publishing by batches on a real Redis: publishes into one room that arrive together are
//! stored by a few script calls, not one each (counted by Redis's `INFO commandstats`), in the
//! order they arrived, and a batch that meets an error fails every publish in it without
//! stranding the ones queued behind it.

mod common;

use chat_broker_redis::RedisBroker;
use chat_core::{Broker, RoomName};
use chat_testkit::conformance::{opts, publication, Recorder};
use common::{broker, RedisServer};
use std::sync::Arc;

/// How many times Redis ran `EVALSHA` (and `EVAL`) since its statistics were reset.
async fn script_calls(redis: &RedisServer) -> u64 {
    let mut conn = common::conn(redis).await;
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.expect("INFO");
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split_once("calls=")?.1.split(',').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn publishes_arriving_together_share_script_calls() {
    const N: u64 = 300;
    let redis = RedisServer::start();
    let broker: RedisBroker = broker(&redis, "batch:");
    let recorder = Arc::new(Recorder::default());
    let node = broker.attach("a", recorder.clone(), None).await.expect("attach");
    let room = RoomName::new("busy").expect("a room name");
    node.subscribe(&room).await.expect("subscribe");
    let mut conn = common::conn(&redis).await;
    redis::cmd("CONFIG").arg("RESETSTAT").query_async::<()>(&mut conn).await.expect("RESETSTAT");

    // All in flight at once, in this order: the first goes alone, the rest queue behind it.
    let o = opts(None, 1000);
    let publishes = (1..=N).map(|n| node.publish(&room, publication("u", n), &o));
    let published = futures::future::join_all(publishes).await;
    let seqs: Vec<u64> = published.into_iter().map(|p| p.expect("publish").seq).collect();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>(), "stored in the order they arrived");

    let calls = script_calls(&redis).await;
    assert!(calls < N / 10, "{N} publishes took {calls} script calls");
    let delivered = recorder.stored(&room, N as usize).await;
    let ts: Vec<u64> = delivered.iter().map(|(_, m)| m.ts).collect();
    assert_eq!(ts, (1..=N).collect::<Vec<_>>(), "delivered once each, in order");
}

#[tokio::test]
async fn a_failed_batch_fails_its_publishes_and_the_room_goes_on() {
    let redis = RedisServer::start();
    let broker: RedisBroker = broker(&redis, "fail:");
    let node = broker.attach("a", Arc::new(Recorder::default()), None).await.expect("attach");
    let room = RoomName::new("r").expect("a room name");
    node.publish(&room, publication("u", 1), &opts(None, 10)).await.expect("publish");
    // The room's stream is not a stream: the script fails for every publish of the batch.
    let mut conn = common::conn(&redis).await;
    redis::cmd("SET").arg("fail:{r}:h").arg("not a stream").query_async::<()>(&mut conn).await.expect("SET");
    let o = opts(None, 10);
    let publishes = (2..=20).map(|n| node.publish(&room, publication("u", n), &o));
    for p in futures::future::join_all(publishes).await {
        assert!(p.is_err(), "stored into a broken room: {p:?}");
    }
    redis::cmd("DEL").arg("fail:{r}:h").query_async::<()>(&mut conn).await.expect("DEL");
    let p = node.publish(&room, publication("u", 21), &opts(None, 10)).await.expect("the room goes on");
    assert!(p.seq >= 1, "{p:?}");
}
