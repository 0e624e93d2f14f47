//! What a node records about itself, through the [`metrics`](https://docs.rs/metrics) facade
//! crate (0.24): the name of every metric, and the few functions the engine calls where it
//! records them. Nothing is exported anywhere until the host installs a recorder (a Prometheus
//! exporter, say: `metrics-exporter-prometheus`, as the example server does); until then each
//! recording is a check that finds no recorder. Built without the `metrics` feature, every
//! function here is empty and the facade is not a dependency.
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `chat_connections` | gauge | `transport` | connections being served (from [`Engine::serve`](crate::Engine::serve) to their end, before `hello` included), by the transport's name (`tcp`, `tcp+tls`, `ws`, ...) |
//! | `chat_connections_total` | counter | `transport` | connections handed to the engine |
//! | `chat_sessions` | gauge | – | sessions past `hello` (sampled, see below) |
//! | `chat_sessions_total` | counter | – | successful `hello`s |
//! | `chat_rooms` | gauge | – | rooms with members on this node (sampled) |
//! | `chat_joins_total` | counter | – | successful `join`s (a join of a room the session is in already not counted) |
//! | `chat_messages_stored_total` | counter | – | messages this node's sessions sent that the broker ordered and stored (a keyed resend answered as a duplicate not counted) |
//! | `chat_deliveries_total` | counter | – | frames fan-out handed to the outboxes of this node's live members: stored and ephemeral messages, membership events, resets (not replies, history pages or recovery replays; what an outbox then drops is also in `chat_dropped_total`) |
//! | `chat_dropped_total` | counter | `reason` | frames that did not reach a member: `ephemeral` (an ephemeral message dropped, its member's outbox being half full), `slow_consumer` (what a session closed as a slow consumer had queued, and the event that overflowed it), `member_event_rate` (a `member_joined` / `member_left` over its room's rate) |
//! | `chat_closes_total` | counter | `reason` | connections the server closed, by `bye` reason (`slow_consumer`, `timeout`, `expired`, `kicked`, `shutdown`, `protocol_error`, `unauthorized`), and connections whose peer went away first (`peer_gone`) |
//! | `chat_outbox_queued_frames` | gauge | – | outbound frames queued for all sessions, or being written (sampled) |
//! | `chat_outbox_queued_bytes` | gauge | – | their bytes (sampled) |
//! | `chat_broker_call_duration_seconds` | histogram | `op` | how long each call to the broker took, by operation: `publish`, `broadcast`, `notify` (invites, kicks), `subscribe`, `unsubscribe`, `history`, `presence_add`, `presence_remove`, `presence`, `erase`, `erase_user` (with the memory broker, `publish` includes this node's fan-out) |
//! | `chat_broker_errors_total` | counter | `op` | broker calls that failed, by operation |
//! | `chat_store_call_duration_seconds` | histogram | `op` | how long each call to the store took, by operation: `append` (one commit of a batch), `page`, `latest`, `retain`, `erase`, `erase_user` |
//! | `chat_store_errors_total` | counter | `op` | store calls that failed, by operation |
//! | `chat_store_append_records` | histogram | – | records per commit (group commit: messages queued while the previous commit was in flight) |
//!
//! **Where they are recorded.** Counters are added where things happen, once per event; fan-out
//! adds the members it reached once per fan-out, not once per member (it is the hot path). The
//! sampled gauges (`chat_sessions`, `chat_rooms`, `chat_outbox_*`) are computed by the engine's
//! heartbeat task on each of its ticks (every 1.25 s with the default heartbeat: see
//! [`Config::heartbeat`](crate::Config::heartbeat)), which visits every session anyway; no
//! request or delivery pays for them. Several engines in one process add up: each adds its own
//! changes to the gauges, and takes back what it added when it stops.
//!
//! **Cost.** With no recorder installed a recording is a thread-local and an atomic load; with
//! the Prometheus exporter installed, a lookup of the series and an atomic add. docs/perf.md
//! has the figures (`fanout/1000` and the send path in instructions, with and without a
//! recorder, side by side with the tree before metrics).
//!
//! ```
//! // What a host does once, before building its engine (here with no recorder: every
//! // recording is a no-op until one is installed).
//! chat_core::metrics::describe();
//! assert_eq!(chat_core::metrics::DELIVERIES, "chat_deliveries_total");
//! ```

/// `chat_connections`: gauge, label `transport`.
pub const CONNECTIONS: &str = "chat_connections";
/// `chat_connections_total`: counter, label `transport`.
pub const CONNECTIONS_TOTAL: &str = "chat_connections_total";
/// `chat_sessions`: gauge (sampled).
pub const SESSIONS: &str = "chat_sessions";
/// `chat_sessions_total`: counter.
pub const SESSIONS_TOTAL: &str = "chat_sessions_total";
/// `chat_rooms`: gauge (sampled).
pub const ROOMS: &str = "chat_rooms";
/// `chat_joins_total`: counter.
pub const JOINS: &str = "chat_joins_total";
/// `chat_messages_stored_total`: counter.
pub const MESSAGES_STORED: &str = "chat_messages_stored_total";
/// `chat_deliveries_total`: counter.
pub const DELIVERIES: &str = "chat_deliveries_total";
/// `chat_dropped_total`: counter, label `reason`.
pub const DROPPED: &str = "chat_dropped_total";
/// `chat_closes_total`: counter, label `reason`.
pub const CLOSES: &str = "chat_closes_total";
/// `chat_outbox_queued_frames`: gauge (sampled).
pub const OUTBOX_FRAMES: &str = "chat_outbox_queued_frames";
/// `chat_outbox_queued_bytes`: gauge (sampled).
pub const OUTBOX_BYTES: &str = "chat_outbox_queued_bytes";
/// `chat_broker_call_duration_seconds`: histogram, label `op`.
pub const BROKER_CALL_SECONDS: &str = "chat_broker_call_duration_seconds";
/// `chat_broker_errors_total`: counter, label `op`.
pub const BROKER_ERRORS: &str = "chat_broker_errors_total";
/// `chat_store_call_duration_seconds`: histogram, label `op`.
pub const STORE_CALL_SECONDS: &str = "chat_store_call_duration_seconds";
/// `chat_store_errors_total`: counter, label `op`.
pub const STORE_ERRORS: &str = "chat_store_errors_total";
/// `chat_store_append_records`: histogram.
pub const STORE_APPEND_RECORDS: &str = "chat_store_append_records";

/// Every metric's name, type and help text, in the order of the table above.
pub const ALL: &[(&str, Kind, &str)] = &[
    (CONNECTIONS, Kind::Gauge, "Connections being served, by transport."),
    (CONNECTIONS_TOTAL, Kind::Counter, "Connections handed to the engine, by transport."),
    (SESSIONS, Kind::Gauge, "Sessions past hello (sampled by the heartbeat task)."),
    (SESSIONS_TOTAL, Kind::Counter, "Successful hellos."),
    (ROOMS, Kind::Gauge, "Rooms with members on this node (sampled by the heartbeat task)."),
    (JOINS, Kind::Counter, "Successful joins."),
    (MESSAGES_STORED, Kind::Counter, "Messages sent here that the broker ordered and stored."),
    (DELIVERIES, Kind::Counter, "Frames fan-out handed to live members' outboxes."),
    (DROPPED, Kind::Counter, "Frames that did not reach a member, by reason."),
    (CLOSES, Kind::Counter, "Connections closed, by bye reason (peer_gone: the peer left first)."),
    (OUTBOX_FRAMES, Kind::Gauge, "Outbound frames queued for all sessions (sampled)."),
    (OUTBOX_BYTES, Kind::Gauge, "Outbound bytes queued for all sessions (sampled)."),
    (BROKER_CALL_SECONDS, Kind::Histogram, "Broker call latency, by operation."),
    (BROKER_ERRORS, Kind::Counter, "Failed broker calls, by operation."),
    (STORE_CALL_SECONDS, Kind::Histogram, "Store call latency, by operation."),
    (STORE_ERRORS, Kind::Counter, "Failed store calls, by operation."),
    (STORE_APPEND_RECORDS, Kind::Histogram, "Records per store commit."),
];

/// A metric's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution of observations.
    Histogram,
}

/// Gives the installed recorder every metric's help text (and `seconds` as the unit of the
/// durations): Prometheus shows them as `# HELP` lines. Call it once the recorder is
/// installed; without the `metrics` feature it does nothing.
pub fn describe() {
    #[cfg(feature = "metrics")]
    for &(name, kind, help) in ALL {
        let unit = name.ends_with("_seconds").then_some(::metrics::Unit::Seconds);
        ::metrics::with_recorder(|r| match kind {
            Kind::Counter => r.describe_counter(name.into(), unit, help.into()),
            Kind::Gauge => r.describe_gauge(name.into(), unit, help.into()),
            Kind::Histogram => r.describe_histogram(name.into(), unit, help.into()),
        });
    }
}

#[cfg(feature = "metrics")]
pub(crate) use on::*;

#[cfg(not(feature = "metrics"))]
pub(crate) use off::*;

/// The recordings, with the facade.
#[cfg(feature = "metrics")]
mod on {
    use std::future::Future;
    use std::sync::{Mutex, PoisonError};
    use std::time::Instant;

    use ::metrics::{with_recorder, Counter, Gauge, Histogram, Key, Label, Level, Metadata};

    use super::*;
    use crate::heartbeat::SessionEntry;
    use crate::protocol::ByeReason;

    static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

    fn counter(key: &'static Key) -> Counter {
        with_recorder(|r| r.register_counter(key, &META))
    }

    fn gauge(key: &'static Key) -> Gauge {
        with_recorder(|r| r.register_gauge(key, &META))
    }

    fn histogram(key: &'static Key) -> Histogram {
        with_recorder(|r| r.register_histogram(key, &META))
    }

    /// A key with one dynamic label (cold paths only: it allocates).
    fn labelled(name: &'static str, label: &'static str, value: &'static str) -> Key {
        Key::from_parts(name, vec![Label::from_static_parts(label, value)])
    }

    static SESSIONS_TOTAL_KEY: Key = Key::from_static_name(SESSIONS_TOTAL);
    static JOINS_KEY: Key = Key::from_static_name(JOINS);
    static MESSAGES_STORED_KEY: Key = Key::from_static_name(MESSAGES_STORED);
    static DELIVERIES_KEY: Key = Key::from_static_name(DELIVERIES);
    static SESSIONS_KEY: Key = Key::from_static_name(SESSIONS);
    static ROOMS_KEY: Key = Key::from_static_name(ROOMS);
    static OUTBOX_FRAMES_KEY: Key = Key::from_static_name(OUTBOX_FRAMES);
    static OUTBOX_BYTES_KEY: Key = Key::from_static_name(OUTBOX_BYTES);
    static STORE_APPEND_RECORDS_KEY: Key = Key::from_static_name(STORE_APPEND_RECORDS);
    static EPHEMERAL_LABEL: [Label; 1] = [Label::from_static_parts("reason", "ephemeral")];
    static DROPPED_EPHEMERAL_KEY: Key = Key::from_static_parts(DROPPED, &EPHEMERAL_LABEL);

    /// A session said `hello` successfully.
    pub(crate) fn session_started() {
        counter(&SESSIONS_TOTAL_KEY).increment(1);
    }

    /// A session joined a room.
    pub(crate) fn joined() {
        counter(&JOINS_KEY).increment(1);
    }

    /// The broker stored a message sent here.
    pub(crate) fn stored() {
        counter(&MESSAGES_STORED_KEY).increment(1);
    }

    /// One fan-out queued `n` frames (one per member it reached).
    #[inline]
    pub(crate) fn delivered(n: usize) {
        if n > 0 {
            counter(&DELIVERIES_KEY).increment(n as u64);
        }
    }

    /// An ephemeral message was dropped for a member whose outbox was half full.
    pub(crate) fn dropped_ephemeral() {
        counter(&DROPPED_EPHEMERAL_KEY).increment(1);
    }

    /// `n` frames were dropped for `reason` (`slow_consumer`, `member_event_rate`).
    pub(crate) fn dropped(reason: &'static str, n: usize) {
        if n > 0 {
            with_recorder(|r| r.register_counter(&labelled(DROPPED, "reason", reason), &META)).increment(n as u64);
        }
    }

    /// The server closed a connection (`Some(reason)`), or its peer went away (`None`).
    pub(crate) fn closed(reason: Option<ByeReason>) {
        let reason = reason.map_or("peer_gone", ByeReason::as_str);
        with_recorder(|r| r.register_counter(&labelled(CLOSES, "reason", reason), &META)).increment(1);
    }

    /// Transports' names seen so far: a connection keeps the index of its own in one byte.
    static TRANSPORTS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

    /// A connection being served: counted in `chat_connections` until dropped. One byte, so
    /// that the connection's future does not grow (memory per idle connection).
    pub(crate) struct Connection(u8);

    impl Connection {
        /// Counts a connection of `transport` (`""` counts as `other`).
        pub(crate) fn open(transport: &'static str) -> Connection {
            let transport = if transport.is_empty() { "other" } else { transport };
            let index = {
                let mut names = TRANSPORTS.lock().unwrap_or_else(PoisonError::into_inner);
                match names.iter().position(|n| *n == transport) {
                    Some(i) => i,
                    None if names.len() < usize::from(u8::MAX) => {
                        names.push(transport);
                        names.len() - 1
                    }
                    None => usize::from(u8::MAX), // a host with 255 transports: the rest are `other`
                }
            };
            let label = name_of(index as u8);
            with_recorder(|r| r.register_counter(&labelled(CONNECTIONS_TOTAL, "transport", label), &META)).increment(1);
            with_recorder(|r| r.register_gauge(&labelled(CONNECTIONS, "transport", label), &META)).increment(1.0);
            Connection(index as u8)
        }
    }

    fn name_of(index: u8) -> &'static str {
        TRANSPORTS.lock().unwrap_or_else(PoisonError::into_inner).get(usize::from(index)).copied().unwrap_or("other")
    }

    impl Drop for Connection {
        fn drop(&mut self) {
            let label = name_of(self.0);
            with_recorder(|r| r.register_gauge(&labelled(CONNECTIONS, "transport", label), &META)).decrement(1.0);
        }
    }

    /// What the heartbeat task counts on one tick.
    #[derive(Debug, Default, Clone, Copy, PartialEq)]
    pub(crate) struct Gauges {
        sessions: usize,
        rooms: usize,
        frames: usize,
        bytes: usize,
    }

    impl Gauges {
        /// Counts one registered session (and what its outbox holds).
        pub(crate) fn add(&mut self, s: &SessionEntry) {
            let (frames, bytes) = s.outbox.queued();
            self.sessions += usize::from(s.user.is_some());
            self.frames += frames;
            self.bytes += bytes;
        }

        /// The node's rooms.
        pub(crate) fn rooms(&mut self, n: usize) {
            self.rooms = n;
        }
    }

    /// What one engine has added to the sampled gauges: each tick adds the change, and the
    /// engine's heartbeat task takes it all back when it ends (this is dropped), so that the
    /// engines of one process add up. The first tick touches every gauge, so that each is
    /// exported from then on, zeros included.
    #[derive(Debug, Default)]
    pub(crate) struct Sampled(Option<Gauges>);

    impl Sampled {
        /// Moves the gauges from what this engine added last to `now`.
        pub(crate) fn update(&mut self, now: Gauges) {
            let first = self.0.is_none();
            let before = self.0.replace(now).unwrap_or_default();
            for (key, was, is) in [
                (&SESSIONS_KEY, before.sessions, now.sessions),
                (&ROOMS_KEY, before.rooms, now.rooms),
                (&OUTBOX_FRAMES_KEY, before.frames, now.frames),
                (&OUTBOX_BYTES_KEY, before.bytes, now.bytes),
            ] {
                if was != is || first {
                    gauge(key).increment(is as f64 - was as f64);
                }
            }
        }
    }

    impl Drop for Sampled {
        fn drop(&mut self) {
            self.update(Gauges::default());
        }
    }

    /// Declares the operations of a decorated boundary: each has a label and the static keys of
    /// its histogram and error counter (no allocation per call).
    macro_rules! ops {
        ($(#[$doc:meta])* $Op:ident ($duration:expr, $errors:expr) { $($(#[$vdoc:meta])* $Variant:ident = $label:literal,)* }) => {
            $(#[$doc])*
            #[derive(Debug, Clone, Copy, PartialEq, Eq)]
            pub(crate) enum $Op {
                $($(#[$vdoc])* $Variant,)*
            }

            impl $Op {
                fn keys(self) -> (&'static Key, &'static Key) {
                    match self {
                        $($Op::$Variant => {
                            static LABELS: [Label; 1] = [Label::from_static_parts("op", $label)];
                            static DURATION: Key = Key::from_static_parts($duration, &LABELS);
                            static ERRORS: Key = Key::from_static_parts($errors, &LABELS);
                            (&DURATION, &ERRORS)
                        })*
                    }
                }

                /// Runs `call`, recording how long it took and whether it failed.
                pub(crate) async fn timed<T, E>(self, call: impl Future<Output = Result<T, E>>) -> Result<T, E> {
                    let start = Instant::now();
                    let result = call.await;
                    let (duration, errors) = self.keys();
                    histogram(duration).record(start.elapsed().as_secs_f64());
                    if result.is_err() {
                        counter(errors).increment(1);
                    }
                    result
                }
            }
        };
    }

    ops! {
        /// A broker call (`chat_broker_call_duration_seconds`, `chat_broker_errors_total`).
        BrokerOp(BROKER_CALL_SECONDS, BROKER_ERRORS) {
            Publish = "publish",
            Broadcast = "broadcast",
            Notify = "notify",
            Subscribe = "subscribe",
            Unsubscribe = "unsubscribe",
            History = "history",
            PresenceAdd = "presence_add",
            PresenceRemove = "presence_remove",
            Presence = "presence",
            Erase = "erase",
            EraseUser = "erase_user",
        }
    }

    ops! {
        /// A store call (`chat_store_call_duration_seconds`, `chat_store_errors_total`).
        StoreOp(STORE_CALL_SECONDS, STORE_ERRORS) {
            Append = "append",
            Page = "page",
            Latest = "latest",
            Retain = "retain",
            Erase = "erase",
            EraseUser = "erase_user",
        }
    }

    /// A commit of `n` records.
    pub(crate) fn append_records(n: usize) {
        histogram(&STORE_APPEND_RECORDS_KEY).record(n as f64);
    }
}

/// The same functions, doing nothing: built without the `metrics` feature.
#[cfg(not(feature = "metrics"))]
mod off {
    use crate::heartbeat::SessionEntry;
    use crate::protocol::ByeReason;

    pub(crate) fn session_started() {}
    pub(crate) fn joined() {}
    #[inline(always)]
    pub(crate) fn delivered(_: usize) {}
    pub(crate) fn dropped_ephemeral() {}
    pub(crate) fn dropped(_: &'static str, _: usize) {}
    pub(crate) fn closed(_: Option<ByeReason>) {}

    /// Nothing to count.
    pub(crate) struct Connection;

    impl Connection {
        pub(crate) fn open(_: &'static str) -> Connection {
            Connection
        }
    }

    impl Drop for Connection {
        fn drop(&mut self) {}
    }

    /// Nothing to sample.
    #[derive(Default)]
    pub(crate) struct Gauges(());

    impl Gauges {
        pub(crate) fn add(&mut self, _: &SessionEntry) {}
        pub(crate) fn rooms(&mut self, _: usize) {}
    }

    #[derive(Default)]
    pub(crate) struct Sampled(());

    impl Sampled {
        pub(crate) fn update(&mut self, _: Gauges) {}
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use ::metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
    use bytes::Bytes;

    use crate::outbox::{Class, Outbox};

    /// A recorder of counters, by series (`name{label="value"}`); gauges and histograms ignored.
    #[derive(Default)]
    struct Counts(Mutex<HashMap<String, Arc<AtomicU64>>>);

    impl Counts {
        fn get(&self, series: &str) -> u64 {
            self.0.lock().unwrap().get(series).map_or(0, |c| c.load(Ordering::Relaxed))
        }
    }

    impl Recorder for Counts {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let labels: Vec<String> = key.labels().map(|l| format!("{}=\"{}\"", l.key(), l.value())).collect();
            let series = if labels.is_empty() {
                key.name().to_owned()
            } else {
                format!("{}{{{}}}", key.name(), labels.join(","))
            };
            Counter::from_arc(self.0.lock().unwrap().entry(series).or_default().clone())
        }

        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }

        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn fan_out_adds_the_members_it_reached() {
        let counts = Counts::default();
        ::metrics::with_local_recorder(&counts, || {
            let mut room = crate::rooms::bench::Fanout::new(3, 16);
            room.deliver();
            room.deliver();
        });
        assert_eq!(counts.get(super::DELIVERIES), 6);
    }

    #[test]
    fn drops_and_closes_are_counted_by_reason() {
        let counts = Counts::default();
        ::metrics::with_local_recorder(&counts, || {
            let o = Outbox::new(2, 1 << 20);
            assert!(o.push(Bytes::from_static(b"m"), Class::Must));
            assert!(o.push(Bytes::from_static(b"m"), Class::Must));
            assert!(!o.push(Bytes::from_static(b"e"), Class::Droppable), "ephemeral dropped past half");
            assert!(!o.push(Bytes::from_static(b"m"), Class::Must), "overflow");
            assert!(!o.close(crate::ByeReason::Kicked, []), "closed once");
            let gone = Outbox::new(2, 1 << 20);
            gone.abandon();
            gone.abandon();
        });
        assert_eq!(counts.get("chat_dropped_total{reason=\"ephemeral\"}"), 1);
        assert_eq!(counts.get("chat_dropped_total{reason=\"slow_consumer\"}"), 3, "the 2 queued and the overflow");
        assert_eq!(counts.get("chat_closes_total{reason=\"slow_consumer\"}"), 1);
        assert_eq!(counts.get("chat_closes_total{reason=\"kicked\"}"), 0);
        assert_eq!(counts.get("chat_closes_total{reason=\"peer_gone\"}"), 1);
    }
}
