//! Heartbeats and handshake deadlines for every session of a node, from one task.
//!
//! A session marks its outbox when the peer sends something and when its writer flushes; it
//! keeps no timer of its own (an idle connection costs less). One task per engine ticks every
//! `min(heartbeat, handshake_timeout) / 8` and looks at every session: one that has not
//! completed `hello` by its handshake deadline (see [`Clock`]) is closed with `bye timeout`;
//! one whose identity expired (a token's `exp`, unless `refresh` replaced it) is closed with
//! `bye expired`; one that sent nothing for a heartbeat gets a `ping`; one that received
//! nothing for two heartbeats (before `hello`: since it connected) is closed with
//! `bye timeout`. Each happens never early and at most one tick late (plus whatever delays the
//! task on a busy machine): by default a tick is 1.25 s (heartbeat 25 s, handshake deadline
//! 10 s). Expiries are compared with the system clock's whole seconds: `exp` is a whole
//! second, so `now >= exp` holds from `exp` on.

use std::sync::Weak;
use std::time::Duration;

use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::engine::{Config, Inner, SessionEntry};
use crate::outbox::Class;
use crate::protocol::{encode_ping, ByeReason};

/// Ticks per `min(heartbeat, handshake_timeout)`: the precision of pings, timeouts and
/// handshake deadlines, as a fraction of the shorter of the two.
pub(crate) const TICKS: u32 = 8;

/// The most ticks per heartbeat: a handshake deadline far shorter than the heartbeat does not
/// make the task tick more often than this many times per heartbeat.
const MAX_PER_HEARTBEAT: u32 = 4096;

/// The heartbeat task's time grid: tick `k` is `epoch + k × tick`. Deadlines are kept as tick
/// numbers (`u32`, compared with wrap-around), so that a session stores 4 bytes for its
/// handshake deadline rather than an `Instant`.
#[derive(Debug)]
pub(crate) struct Clock {
    epoch: Instant,
    tick: Duration,
    /// Ticks per heartbeat, at least 1.
    per_heartbeat: u16,
}

impl Clock {
    pub(crate) fn new(config: &Config) -> Self {
        let heartbeat = config.heartbeat;
        let tick = (heartbeat.min(config.handshake_timeout) / TICKS)
            .max(heartbeat / MAX_PER_HEARTBEAT)
            .max(Duration::from_millis(1));
        let per_heartbeat = heartbeat.as_nanos().div_ceil(tick.as_nanos()).clamp(1, u128::from(MAX_PER_HEARTBEAT));
        Clock { epoch: Instant::now(), tick, per_heartbeat: per_heartbeat as u16 }
    }

    /// The last tick at or before `t`.
    fn index(&self, t: Instant) -> u32 {
        (t.saturating_duration_since(self.epoch).as_nanos() / self.tick.as_nanos()) as u32
    }

    /// The first tick at or after `t`: a deadline `t` is due from this tick on.
    pub(crate) fn tick_at(&self, t: Instant) -> u32 {
        t.saturating_duration_since(self.epoch).as_nanos().div_ceil(self.tick.as_nanos()) as u32
    }

    /// A tick as far after `now` as the wrap-around comparison allows.
    pub(crate) fn never(&self, now: Instant) -> u32 {
        self.index(now).wrapping_add(i32::MAX as u32)
    }
}

/// Whether tick `at` has come by tick `now` (wrap-around: tick numbers within 2^31 of each
/// other; a deadline is at most `2 × MAX_PER_HEARTBEAT` ticks ahead when set).
fn due(now: u32, at: u32) -> bool {
    now.wrapping_sub(at) as i32 >= 0
}

/// Starts the engine's heartbeat task. It ends with the engine (or its shutdown).
pub(crate) fn spawn(inner: Weak<Inner>) {
    let Some(strong) = inner.upgrade() else { return };
    let (start, tick) = (strong.clock.epoch + strong.clock.tick, strong.clock.tick);
    drop(strong);
    tokio::spawn(async move {
        let mut ticks = interval_at(start, tick);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The gauges this engine adds to (`crate::metrics`), taken back when the task ends.
        let mut sampled = crate::metrics::Sampled::default();
        loop {
            ticks.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            if inner.shutdown.is_cancelled() {
                return;
            }
            let now = inner.clock.index(Instant::now());
            let unix_now = crate::auth::unix_now();
            let per_heartbeat = inner.clock.per_heartbeat;
            let mut gauges = crate::metrics::Gauges::default();
            for session in inner.lock_sessions().values_mut() {
                tick_session(session, now, unix_now, per_heartbeat);
                gauges.add(session);
            }
            gauges.rooms(inner.rooms.len());
            sampled.update(gauges);
        }
    });
}

fn tick_session(s: &mut SessionEntry, now: u32, unix_now: u64, per_heartbeat: u16) {
    let over = match s.user {
        None if due(now, s.until) => Some(ByeReason::Timeout),
        Some(_) if s.until != 0 && u64::from(s.until) <= unix_now => Some(ByeReason::Expired),
        _ => None,
    };
    if let Some(reason) = over {
        s.outbox.close(reason, []);
        return;
    }
    let (seen, sent) = s.outbox.take_activity();
    s.quiet_in = if seen { 0 } else { s.quiet_in.saturating_add(1) };
    if s.quiet_in >= 2 * per_heartbeat {
        s.outbox.close(ByeReason::Timeout, []);
        return;
    }
    s.quiet_out = if sent { 0 } else { s.quiet_out.saturating_add(1) };
    if s.quiet_out >= per_heartbeat {
        s.outbox.push(encode_ping(), Class::Must);
        s.quiet_out = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(heartbeat_ms: u64, handshake_ms: u64) -> Clock {
        let config = Config {
            heartbeat: Duration::from_millis(heartbeat_ms),
            handshake_timeout: Duration::from_millis(handshake_ms),
            ..Config::default()
        };
        Clock::new(&config)
    }

    #[test]
    fn the_tick_is_an_eighth_of_the_shorter_period() {
        let c = clock(25_000, 10_000);
        assert_eq!((c.tick, c.per_heartbeat), (Duration::from_millis(1_250), 20));
        let c = clock(4_000, 10_000);
        assert_eq!((c.tick, c.per_heartbeat), (Duration::from_millis(500), 8));
        // A tiny handshake deadline does not make the task spin.
        let c = clock(60_000, 1);
        assert_eq!(c.per_heartbeat as u32, MAX_PER_HEARTBEAT);
    }

    #[test]
    fn a_deadline_is_due_from_the_first_tick_at_or_after_it() {
        let c = clock(8_000, 8_000); // 1 s ticks
        let at = |ms| c.epoch + Duration::from_millis(ms);
        assert_eq!(c.tick_at(at(3_000)), 3);
        assert_eq!(c.tick_at(at(3_001)), 4);
        assert!(!due(c.index(at(3_999)), c.tick_at(at(3_001))), "never early");
        assert!(due(c.index(at(4_000)), c.tick_at(at(3_001))), "at most one tick late");
        assert!(!due(c.index(at(10_000)), c.never(at(10_000))));
        // Wrap-around.
        assert!(due(5, u32::MAX - 2));
        assert!(!due(u32::MAX - 2, 5));
    }

    mod deadline {
        use bytes::Bytes;
        use futures::channel::mpsc;
        use futures::{SinkExt, StreamExt};
        use tokio::time::{sleep_until, Duration, Instant};

        use crate::{ConnInfo, Engine, Inbound};

        type Peer = (mpsc::UnboundedSender<Result<Inbound, std::io::Error>>, mpsc::UnboundedReceiver<Bytes>);

        async fn engine() -> Engine {
            Engine::builder().tune(|c| c.handshake_timeout = Duration::from_secs(2)).build().await.unwrap()
        }

        /// A connection accepted at `accepted`, served by `engine`.
        fn connect(engine: &Engine, accepted: Instant) -> Peer {
            let (to_server, inbound) = mpsc::unbounded();
            let (outbound, from_server) = mpsc::unbounded();
            let engine = engine.clone();
            tokio::spawn(async move {
                let conn = ConnInfo { accepted: Some(accepted), ..ConnInfo::default() };
                engine.serve(inbound, outbound, conn).await
            });
            (to_server, from_server)
        }

        const BYE_TIMEOUT: &[u8] = br#"{"type":"bye","reason":"timeout","reconnect":true}"#;

        /// Closed at the first tick at or after accepted + 2 s (tick: 2 s / 8), pings included.
        #[tokio::test(start_paused = true)]
        async fn no_hello_is_closed_at_the_deadline_not_before() {
            let engine = engine().await;
            let tick = Duration::from_millis(250);
            let accepted = Instant::now() - Duration::from_millis(700); // a TLS handshake, say
            let (_to_server, mut from_server) = connect(&engine, accepted);
            let bye = from_server.next().await.expect("bye");
            let at = Instant::now() - accepted;
            assert_eq!(&bye[..], BYE_TIMEOUT);
            assert!(at >= Duration::from_secs(2) && at <= Duration::from_secs(2) + tick, "closed {at:?} after accept");
            assert!(from_server.next().await.is_none());
            // Accepted before its deadline already passed: closed at once.
            let (_to_server, mut from_server) = connect(&engine, Instant::now() - Duration::from_secs(3));
            let start = Instant::now();
            assert_eq!(&from_server.next().await.expect("bye")[..], BYE_TIMEOUT);
            assert_eq!(start.elapsed(), Duration::ZERO);
        }

        #[tokio::test(start_paused = true)]
        async fn hello_just_before_the_deadline_stays() {
            let engine = engine().await;
            let accepted = Instant::now();
            let (mut to_server, mut from_server) = connect(&engine, accepted);
            sleep_until(accepted + Duration::from_millis(1_999)).await;
            let hello = r#"{"type":"hello","id":1,"protocol":1,"user":"alice"}"#;
            to_server.send(Ok(Inbound::Frame(Bytes::from(hello)))).await.unwrap();
            let welcome = from_server.next().await.expect("welcome");
            assert!(welcome.starts_with(br#"{"type":"welcome""#));
            // The next frame is the heartbeat's ping, 25 s later, not a bye.
            let ping = from_server.next().await.expect("ping");
            assert_eq!(&ping[..], br#"{"type":"ping"}"#);
            assert!(accepted.elapsed() >= Duration::from_secs(25));
            assert_eq!(engine.session_count(), 1);
        }
    }
}
