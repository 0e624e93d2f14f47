//! Heartbeats for every session of a node, from one task.
//!
//! A session marks its outbox when the peer sends something and when its writer flushes; it
//! keeps no timer of its own (an idle connection costs less). One task per engine ticks
//! [`TICKS`] times per heartbeat and looks at every session: one that sent nothing for a
//! heartbeat gets a `ping`, one that received nothing for two heartbeats (before `hello`:
//! since it connected) is closed with `bye timeout`, one whose identity expired (a token's
//! `exp`, unless `refresh` replaced it) is closed with `bye expired`. Each happens up to one
//! [`TICKS`]-th of a heartbeat late, never early (expiries are compared with the system
//! clock's whole seconds: `exp` is a whole second, so `now >= exp` holds from `exp` on).

use std::sync::Weak;
use std::time::Duration;

use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::engine::{Inner, SessionEntry};
use crate::outbox::Class;
use crate::protocol::{encode_ping, ByeReason};

/// Ticks per heartbeat: the precision of pings and timeouts, as a fraction of a heartbeat.
pub(crate) const TICKS: u8 = 8;

/// Starts the engine's heartbeat task. It ends with the engine (or its shutdown).
pub(crate) fn spawn(inner: Weak<Inner>, heartbeat: Duration) {
    let tick = (heartbeat / u32::from(TICKS)).max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut ticks = interval_at(Instant::now() + tick, tick);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            if inner.shutdown.is_cancelled() {
                return;
            }
            let now = crate::auth::unix_now();
            for session in inner.lock_sessions().values_mut() {
                tick_session(session, now);
            }
        }
    });
}

fn tick_session(s: &mut SessionEntry, now_unix_secs: u64) {
    if s.expires != 0 && u64::from(s.expires) <= now_unix_secs {
        s.outbox.close(ByeReason::Expired, []);
        return;
    }
    let (seen, sent) = s.outbox.take_activity();
    s.quiet_in = if seen { 0 } else { s.quiet_in.saturating_add(1) };
    if s.quiet_in >= 2 * TICKS {
        s.outbox.close(ByeReason::Timeout, []);
        return;
    }
    s.quiet_out = if sent { 0 } else { s.quiet_out.saturating_add(1) };
    if s.quiet_out >= TICKS {
        s.outbox.push(encode_ping(), Class::Must);
        s.quiet_out = 0;
    }
}
