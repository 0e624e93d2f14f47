//! The Redis Cluster test support itself: a cluster forms with the slots and replicas asked
//! for, sends clients to the right node, fails a killed primary over to its replica and takes
//! the old primary back as a replica, and moves a slot with its keys, redirecting with `-ASK`
//! while the slot moves.

use chat_testkit::redis_cluster::{Redirect, Reply};
use chat_testkit::RedisCluster;

/// `n` keys that all hash to `slot`'s hash tag `tag`.
fn keys_with_tag(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("chat:{{{tag}}}:k{i}")).collect()
}

#[test]
fn a_cluster_sends_clients_to_the_node_serving_the_slot() {
    let cluster = RedisCluster::start(3, 0);
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    assert_eq!(cluster.seeds(), ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(","));
    assert_eq!(cluster.url(), format!("redis+cluster://{}", cluster.seeds()));
    let mut primaries = cluster.primaries();
    primaries.sort_unstable();
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    assert_eq!(primaries, sorted);
    for &port in &ports {
        assert!(cluster.replicas_of(port).is_empty());
        let info = cluster.command(port, &["CLUSTER", "INFO"]).text().expect("CLUSTER INFO is a bulk string");
        assert!(info.contains("cluster_state:ok"), "port {port}: {info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "port {port}: {info}");
        assert!(info.contains("cluster_size:3"), "port {port}: {info}");
    }

    // The slot computed here is the server's, hash tags included.
    let keys = ["", "a", "chat:{room}:s", "{room}", "{}", "{}x", "a{b}c{d}", "{", "}", "x{y", "{{a}}", "{a}}", "é{ü}"];
    for key in keys {
        let server = cluster.command(ports[0], &["CLUSTER", "KEYSLOT", key]);
        assert_eq!(server, Reply::Integer(i64::from(RedisCluster::key_slot(key))), "the slot of {key:?}");
    }
    for i in 0..200 {
        let key = format!("key:{i}");
        let server = cluster.command(ports[i % 3], &["CLUSTER", "KEYSLOT", &key]);
        assert_eq!(server, Reply::Integer(i64::from(RedisCluster::key_slot(&key))), "the slot of {key:?}");
    }

    // A node that does not serve the key's slot sends the client to the one that does.
    let key = "chat:{room}:s";
    let slot = RedisCluster::key_slot(key);
    let owner = cluster.primary_of_slot(slot);
    let other = *ports.iter().find(|&&p| p != owner).expect("another node");
    let moved = cluster.command(other, &["SET", key, "v"]);
    assert_eq!(moved, Reply::Error(format!("MOVED {slot} 127.0.0.1:{owner}")));
    assert_eq!(moved.redirect(), Some(Redirect::Moved { slot, port: owner }));
    assert!(cluster.command(owner, &["SET", key, "v"]).is_ok());
    assert_eq!(cluster.command(owner, &["GET", key]), Reply::Bulk(b"v".to_vec()));
    assert_eq!(cluster.command(other, &["GET", key]).redirect(), Some(Redirect::Moved { slot, port: owner }));

    // Sharded pub/sub: the channel's slot owner delivers what is published on it.
    let channel = "chat:{room}:events";
    assert_eq!(RedisCluster::key_slot(channel), slot);
    let mut subscriber = cluster.connect(owner);
    let subscribed = subscriber.call(&["SSUBSCRIBE", channel]);
    let expected = [Reply::Bulk(b"ssubscribe".to_vec()), Reply::Bulk(channel.into()), Reply::Integer(1)];
    assert_eq!(subscribed, Reply::Array(expected.to_vec()));
    assert_eq!(
        cluster.command(other, &["SPUBLISH", channel, "hi"]).redirect(),
        Some(Redirect::Moved { slot, port: owner })
    );
    assert_eq!(
        cluster.connect(other).call(&["SSUBSCRIBE", channel]).redirect(),
        Some(Redirect::Moved { slot, port: owner })
    );
    assert_eq!(cluster.command(owner, &["SPUBLISH", channel, "hi"]), Reply::Integer(1));
    let message = [Reply::Bulk(b"smessage".to_vec()), Reply::Bulk(channel.into()), Reply::Bulk(b"hi".to_vec())];
    assert_eq!(subscriber.receive(), Reply::Array(message.to_vec()));
}

#[test]
fn a_killed_primary_is_failed_over_and_comes_back_as_a_replica() {
    let mut cluster = RedisCluster::start(3, 1);
    assert_eq!(cluster.ports().len(), 6);
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    for &primary in &primaries {
        assert_eq!(cluster.replicas_of(primary).len(), 1, "the replicas of port {primary}");
    }

    let key = "chat:{room}:s";
    let slot = RedisCluster::key_slot(key);
    let old = cluster.primary_of_slot(slot);
    let replica = cluster.replicas_of(old)[0];
    // WAIT waits for the writes of its own connection: both on one.
    let mut writer = cluster.connect(old);
    assert!(writer.call(&["SET", key, "before"]).is_ok());
    assert_eq!(writer.call(&["WAIT", "1", "5000"]), Reply::Integer(1), "the replica did not acknowledge");
    drop(writer);
    // A replica answers for its primary's slots after READONLY, on the same connection.
    let mut reader = cluster.connect(replica);
    assert_eq!(reader.call(&["GET", key]).redirect(), Some(Redirect::Moved { slot, port: old }));
    assert!(reader.call(&["READONLY"]).is_ok());
    assert_eq!(reader.call(&["GET", key]), Reply::Bulk(b"before".to_vec()));
    drop(reader);

    cluster.kill(old);
    assert!(!cluster.is_live(old));
    let new = cluster.wait_failover(old);
    assert_eq!(new, replica);
    assert_eq!(cluster.primary_of_slot(slot), new);
    assert_eq!(cluster.command(new, &["GET", key]), Reply::Bulk(b"before".to_vec()));
    for port in cluster.ports().into_iter().filter(|&p| p != old) {
        let info = cluster.command(port, &["CLUSTER", "INFO"]).text().unwrap_or_default();
        assert!(info.contains("cluster_state:ok"), "port {port}: {info}");
        let served = cluster.command(port, &["GET", key]);
        if port != new {
            assert_eq!(served.redirect(), Some(Redirect::Moved { slot, port: new }), "port {port}");
        }
    }

    cluster.restart(old);
    cluster.wait_ready();
    assert!(cluster.is_live(old));
    assert_eq!(cluster.replicas_of(new), vec![old]);
    assert_eq!(cluster.primary_of_slot(slot), new);
    let role = cluster.command(old, &["ROLE"]);
    let Reply::Array(role) = role else { panic!("ROLE answered {role}") };
    assert_eq!(role[0], Reply::Bulk(b"slave".to_vec()));
    assert_eq!(role[2], Reply::Integer(i64::from(new)));
    // It was sent the data again: it had come back empty.
    let mut reader = cluster.connect(old);
    assert!(reader.call(&["READONLY"]).is_ok());
    assert_eq!(reader.call(&["GET", key]), Reply::Bulk(b"before".to_vec()));
    assert_eq!(cluster.command(old, &["SET", key, "x"]).redirect(), Some(Redirect::Moved { slot, port: new }));
}

#[test]
fn a_migrating_slot_asks_then_moves() {
    let cluster = RedisCluster::start(3, 0);
    let keys = keys_with_tag("moving", 250);
    let slot = RedisCluster::key_slot(&keys[0]);
    let source = cluster.primary_of_slot(slot);
    let target = *cluster.primaries().iter().find(|&&p| p != source).expect("another primary");
    for key in &keys {
        assert!(cluster.command(source, &["SET", key, &format!("v-{key}")]).is_ok());
    }
    // An unrelated key of the same node stays where it is.
    let unrelated = (0..).map(|i| format!("other:{i}")).find(|k| {
        let s = RedisCluster::key_slot(k);
        s != slot && cluster.primary_of_slot(s) == source
    });
    let unrelated = unrelated.expect("a key of another slot of the source");
    assert!(cluster.command(source, &["SET", &unrelated, "stays"]).is_ok());

    let migration = cluster.begin_migration(slot, target);
    assert_eq!((migration.slot(), migration.source(), migration.target()), (slot, source, target));
    let moved = migration.move_keys(10);
    assert_eq!(moved.len(), 10);
    let gone = &moved[0];
    let kept = keys.iter().find(|k| !moved.contains(k)).expect("a key not moved yet");
    // The source answers for what it still holds, and asks the client to try the target for
    // what it no longer holds.
    assert_eq!(cluster.command(source, &["GET", kept]), Reply::Bulk(format!("v-{kept}").into_bytes()));
    let asked = cluster.command(source, &["GET", gone]);
    assert_eq!(asked, Reply::Error(format!("ASK {slot} 127.0.0.1:{target}")));
    assert_eq!(asked.redirect(), Some(Redirect::Ask { slot, port: target }));
    // The target serves the slot only to a client that says ASKING first, for one command.
    let mut client = cluster.connect(target);
    assert_eq!(client.call(&["GET", gone]).redirect(), Some(Redirect::Moved { slot, port: source }));
    assert!(client.call(&["ASKING"]).is_ok());
    assert_eq!(client.call(&["GET", gone]), Reply::Bulk(format!("v-{gone}").into_bytes()));
    assert_eq!(client.call(&["GET", gone]).redirect(), Some(Redirect::Moved { slot, port: source }));
    assert_eq!(cluster.primary_of_slot(slot), source);

    migration.finish();
    assert_eq!(cluster.primary_of_slot(slot), target);
    assert_eq!(cluster.command(source, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]), Reply::Integer(0));
    assert_eq!(cluster.command(target, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]), Reply::Integer(250));
    for key in &keys {
        assert_eq!(cluster.command(source, &["GET", key]).redirect(), Some(Redirect::Moved { slot, port: target }));
        assert_eq!(cluster.command(target, &["GET", key]), Reply::Bulk(format!("v-{key}").into_bytes()));
    }
    assert_eq!(cluster.command(source, &["GET", &unrelated]), Reply::Bulk(b"stays".to_vec()));
    let third = *cluster.ports().iter().find(|&&p| p != source && p != target).expect("a third node");
    assert_eq!(cluster.command(third, &["GET", &keys[0]]).redirect(), Some(Redirect::Moved { slot, port: target }));
    cluster.wait_ready();

    // And back, in one go.
    cluster.migrate_slot(slot, source);
    assert_eq!(cluster.primary_of_slot(slot), source);
    assert_eq!(cluster.command(source, &["GET", &keys[7]]), Reply::Bulk(format!("v-{}", keys[7]).into_bytes()));
    cluster.wait_ready();
}

#[test]
fn a_paused_primary_is_failed_over_and_steps_down_when_resumed() {
    let mut cluster = RedisCluster::start(3, 1);
    let key = "chat:{stalled}:s";
    let slot = RedisCluster::key_slot(key);
    let old = cluster.primary_of_slot(slot);
    let replica = cluster.replicas_of(old)[0];
    // WAIT waits for the writes of its own connection: both on one.
    let mut writer = cluster.connect(old);
    assert!(writer.call(&["SET", key, "before"]).is_ok());
    assert_eq!(writer.call(&["WAIT", "1", "5000"]), Reply::Integer(1), "the replica did not acknowledge");
    drop(writer);

    cluster.pause(old);
    assert!(!cluster.is_live(old));
    let new = cluster.wait_failover(old);
    assert_eq!(new, replica);
    assert_eq!(cluster.command(new, &["GET", key]), Reply::Bulk(b"before".to_vec()));
    let mut writer = cluster.connect(new);
    assert!(writer.call(&["SET", key, "after"]).is_ok());

    // Resumed, the old primary learns it was failed over, and follows the new one.
    cluster.resume(old);
    cluster.wait_ready();
    assert_eq!(cluster.replicas_of(new), vec![old]);
    assert_eq!(cluster.primary_of_slot(slot), new);
    assert_eq!(cluster.command(old, &["SET", key, "x"]).redirect(), Some(Redirect::Moved { slot, port: new }));
    assert_eq!(writer.call(&["WAIT", "1", "5000"]), Reply::Integer(1), "the old primary did not acknowledge");
    let mut reader = cluster.connect(old);
    assert!(reader.call(&["READONLY"]).is_ok());
    assert_eq!(reader.call(&["GET", key]), Reply::Bulk(b"after".to_vec()));
}
