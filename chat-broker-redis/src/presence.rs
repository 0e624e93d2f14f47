//! Presence liveness: each node keeps a deadline in a sorted set of nodes and refreshes it
//! every quarter of the presence expiry; every node also sweeps the nodes whose deadline passed
//! (claimed with a lease, so one sweeper handles each dead node at a time: `Shared::sweep`),
//! which removes their sessions and announces `member_left` for users whose last session went.
//!
//! A node's deadline is set three quarters of the expiry ahead and sweeps run every quarter, so
//! a dead node's sessions are gone within the expiry. A node that finds itself missing from the
//! set (Redis lost its data, or others took it for dead after a long stall) registers every
//! session it holds again; after a sweep it also announces `member_joined` again. Removals that
//! Redis did not confirm (it was unreachable) are retried on every beat, so a member who left
//! meanwhile does not stay in presence as a ghost.

use std::sync::Arc;

use chat_core::{BrokerError, RoomName};
use tokio_util::sync::CancellationToken;

use crate::node::{lock, millis, Held, Shared};
use crate::scripts::{Call, SCRIPTS};
use chat_core::broker::{wire, Transient};

/// Refreshes this node's deadline; registers its sessions again if Redis had forgotten it.
pub(crate) async fn beat(shared: &Shared) -> Result<(), BrokerError> {
    let s = &shared.settings;
    let lifetime = s.presence_ttl.saturating_sub(s.heartbeat_interval());
    let mut inv = Call::new(&SCRIPTS.heartbeat);
    inv.key(shared.keys.nodes()).key(shared.keys.swept());
    inv.arg(&shared.instance).arg(millis(lifetime));
    let state: i64 = shared.eval("heartbeat", &inv).await?;
    if state == 0 {
        return Ok(());
    }
    let held: Vec<Held> = lock(&shared.held).values().cloned().collect();
    if held.is_empty() {
        return Ok(());
    }
    tracing::warn!(node = %shared.instance, sessions = held.len(), swept = state == 2, "registering presence again");
    // Concurrent calls are pipelined on the multiplexed connection.
    let results = futures::future::join_all(held.iter().map(|h| shared.presence_add(h))).await;
    if state == 2 {
        let mut announced: Vec<(&RoomName, &str)> = Vec::new();
        for (h, first) in held.iter().zip(results) {
            if first? && !announced.contains(&(&h.room, h.user.as_str())) {
                announced.push((&h.room, &h.user));
                shared
                    .publish_raw(&h.room, wire::encode_transient(&Transient::MemberJoined(h.user.as_str().into())))
                    .await?;
            }
        }
    } else {
        results.into_iter().collect::<Result<Vec<_>, _>>()?;
    }
    Ok(())
}

/// The heartbeat task: beat and sweep every interval until the node stops.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.settings.heartbeat_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = beat(&shared).await {
            tracing::debug!(node = %shared.instance, error = %e, "presence heartbeat failed");
            continue;
        }
        if !lock(&shared.unremoved).is_empty() {
            let pending = shared.retry_removals().await;
            if pending > 0 {
                tracing::debug!(node = %shared.instance, pending, "presence removals still pending");
            }
        }
        match shared.sweep(None).await {
            Ok(0) => {}
            Ok(left) => tracing::info!(node = %shared.instance, left, "swept dead nodes from presence"),
            Err(e) => tracing::debug!(node = %shared.instance, error = %e, "presence sweep failed"),
        }
    }
}
