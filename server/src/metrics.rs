//! The server's Prometheus metrics: what each one counts, and the handles the hot paths use.
//!
//! One [`Metrics`] per server, made by the builder and shared by the listeners, the handshake,
//! every socket's driver and the scaler wrapper ([`Metered`](crate::scaler::Metered)). The text
//! served on `/metrics` is encoded by `prometheus-client`.
//!
//! Cost on the hot path: a counter is one relaxed atomic add, a [`Latency`] observation two,
//! each on the calling thread's own shard ([`SHARDS`]). All the metrics and the disabled span of
//! one ask add 83 ns, also on two threads at once (under 1 % of the server's CPU per round trip;
//! docs/PERFORMANCE.md, "Metrics").
//! Label sets a frame can hit are resolved before traffic flows: per registered topic when the
//! server is built ([`AskSeries`], [`TellSeries`]), per refusal reason and scaler operation in
//! [`Metrics::new`]. Only rare events (a rejection, a refused subscription, a closed socket)
//! look a label set up in a family, which takes its lock.
//!
//! Cardinality is bounded: a topic label only for topics with a handler (anything else is
//! `unknown`), codes capped at [`MAX_CODES`] distinct values (then `other`), never a channel
//! name, a user or a socket id.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// The topic label of asks and tells on topics without a handler.
pub(crate) const UNKNOWN_TOPIC: &str = "unknown";
/// The code label once [`MAX_CODES`] distinct codes have been seen.
const OTHER_CODE: &str = "other";
/// Distinct rejection codes (asks and subscriptions together) that get a label value of their
/// own. Codes are chosen by the application (handlers, parsers, middleware) as well as by the
/// protocol, and one built from input must not grow the scrape without bound.
pub(crate) const MAX_CODES: usize = 64;

/// Upper bounds of the latency buckets, in microseconds: 100 µs to 10 s.
const BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// [`BOUNDS_US`] in nanoseconds, what an observation is compared with.
const BOUNDS_NS: [u64; BOUNDS_US.len()] = {
    let mut ns = [0; BOUNDS_US.len()];
    let mut i = 0;
    while i < ns.len() {
        ns[i] = BOUNDS_US[i] * 1_000;
        i += 1;
    }
    ns
};

/// Shards of each hot metric (per-topic ask and tell counts, ask latencies, bytes). Each
/// thread adds to its own shard (threads take shards round robin) and a scrape sums them. With
/// one atomic per counter, shared by every tokio worker, the cache lines bounce between cores:
/// counting asks on two threads at once took ~410 ns per ask against 83 ns on one thread; with
/// the shards, 83–87 ns on each (`cost` tests below). Memory: 1 KiB per counter series, 2 KiB
/// per histogram series.
const SHARDS: usize = 8;

thread_local! {
    /// This thread's shard.
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
}

fn shard() -> usize {
    SHARD.with(|s| *s)
}

/// One shard, alone on its cache lines (128 bytes: CPUs fetch adjacent lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A counter of the hot paths, sharded per thread (see [`SHARDS`]). Cheap to clone: clones
/// share the counts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Count(Arc<[Padded<AtomicU64>; SHARDS]>);

impl Count {
    pub(crate) fn inc(&self) {
        self.inc_by(1);
    }

    pub(crate) fn inc_by(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for Count {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Count {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A latency histogram with fixed buckets, sharded per thread and updated with atomics only
/// (`prometheus-client`'s `Histogram` takes a mutex per observation). Cheap to clone: clones
/// share the counts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Latency(Arc<[Padded<LatencyCounts>; SHARDS]>);

#[derive(Debug, Default)]
struct LatencyCounts {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_ns: AtomicU64,
}

impl Latency {
    /// Counts one observation.
    pub(crate) fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        let counts = &self.0[shard()].0;
        counts.buckets[i].fetch_add(1, Ordering::Relaxed);
        counts.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(f64::INFINITY, 0); BOUNDS_US.len() + 1];
        let mut count = 0;
        let mut sum_ns = 0;
        for (i, slot) in buckets.iter_mut().enumerate() {
            let n: u64 = self
                .0
                .iter()
                .map(|s| s.0.buckets[i].load(Ordering::Relaxed))
                .sum();
            count += n;
            if let Some(&us) = BOUNDS_US.get(i) {
                slot.0 = us as f64 / 1e6;
            }
            slot.1 = n;
        }
        for s in self.0.iter() {
            sum_ns += s.0.sum_ns.load(Ordering::Relaxed);
        }
        encoder.encode_histogram::<NoLabelSet>(sum_ns as f64 / 1e9, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Why a connection or a handshake was refused before a socket opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not a valid WebSocket upgrade (plain HTTP, no key, another version).
    BadRequest,
    /// The server is shutting down.
    ShuttingDown,
    /// The `Origin` is not in `allowed_origins`.
    Origin,
    /// The session parser refused.
    SessionParser,
    /// `max_connections`.
    MaxConnections,
    /// `max_connections_per_ip`.
    MaxConnectionsPerIp,
    /// No complete request head within `header_read_timeout`.
    HeaderTimeout,
    /// The TLS handshake failed or timed out.
    TlsHandshake,
}

impl Refused {
    const ALL: [Refused; 8] = [
        Refused::BadRequest,
        Refused::ShuttingDown,
        Refused::Origin,
        Refused::SessionParser,
        Refused::MaxConnections,
        Refused::MaxConnectionsPerIp,
        Refused::HeaderTimeout,
        Refused::TlsHandshake,
    ];

    fn label(self) -> &'static str {
        match self {
            Refused::BadRequest => "bad_request",
            Refused::ShuttingDown => "shutting_down",
            Refused::Origin => "origin",
            Refused::SessionParser => "session_parser",
            Refused::MaxConnections => "max_connections",
            Refused::MaxConnectionsPerIp => "max_connections_per_ip",
            Refused::HeaderTimeout => "header_timeout",
            Refused::TlsHandshake => "tls_handshake",
        }
    }
}

/// A scaler operation, as the `op` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScalerOp {
    Publish,
    Subscribe,
    Unsubscribe,
    History,
    Position,
    Control,
    PresenceUpdate,
    Presence,
    Ready,
}

impl ScalerOp {
    const ALL: [ScalerOp; 9] = [
        ScalerOp::Publish,
        ScalerOp::Subscribe,
        ScalerOp::Unsubscribe,
        ScalerOp::History,
        ScalerOp::Position,
        ScalerOp::Control,
        ScalerOp::PresenceUpdate,
        ScalerOp::Presence,
        ScalerOp::Ready,
    ];

    fn label(self) -> &'static str {
        match self {
            ScalerOp::Publish => "publish",
            ScalerOp::Subscribe => "subscribe",
            ScalerOp::Unsubscribe => "unsubscribe",
            ScalerOp::History => "history",
            ScalerOp::Position => "position",
            ScalerOp::Control => "control",
            ScalerOp::PresenceUpdate => "presence_update",
            ScalerOp::Presence => "presence",
            ScalerOp::Ready => "ready",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Something worker mode did that no other metric shows.
#[cfg(feature = "redis")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WorkerEvent {
    /// Gateway: an answer came for an ask no longer waiting (timed out, or answered already).
    AnswerDropped,
    /// Gateway: a routed tell was dropped (backlog full, or Redis unreachable).
    TellDropped,
    /// Worker: a job left idle with another worker was claimed.
    JobClaimed,
    /// Worker: a job past its deadline was dropped unrun.
    JobExpired,
}

#[cfg(feature = "redis")]
impl WorkerEvent {
    const ALL: [WorkerEvent; 4] = [
        WorkerEvent::AnswerDropped,
        WorkerEvent::TellDropped,
        WorkerEvent::JobClaimed,
        WorkerEvent::JobExpired,
    ];

    fn label(self) -> &'static str {
        match self {
            WorkerEvent::AnswerDropped => "answer_dropped",
            WorkerEvent::TellDropped => "tell_dropped",
            WorkerEvent::JobClaimed => "job_claimed",
            WorkerEvent::JobExpired => "job_expired",
        }
    }
}

#[cfg(feature = "redis")]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AskLabels {
    topic: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// One scaler operation's series.
#[derive(Debug)]
pub(crate) struct OpSeries {
    calls: Counter,
    errors: Counter,
    latency: Latency,
}

impl OpSeries {
    /// One call that took `elapsed`.
    pub(crate) fn record(&self, elapsed: Duration, ok: bool) {
        self.calls.inc();
        if !ok {
            self.errors.inc();
        }
        self.latency.observe(elapsed);
    }
}

/// The series of one ask topic that has a handler, resolved when the server is built.
#[derive(Debug)]
pub(crate) struct AskSeries {
    topic: String,
    ok: Count,
    latency: Latency,
}

/// The series of one tell topic that has a handler.
#[derive(Debug)]
pub(crate) struct TellSeries {
    told: Count,
}

impl TellSeries {
    /// One tell read for this topic.
    pub(crate) fn inc(&self) {
        self.told.inc();
    }
}

/// Every metric of one server. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) connections: Gauge,
    pub(crate) accepted: Counter,
    refused: [Counter; Refused::ALL.len()],
    pub(crate) handshake: Latency,
    closed: Family<CodeLabel, Counter>,
    pub(crate) subscriptions: Gauge,
    pub(crate) presence_members: Gauge,
    subscriptions_refused: Family<CodeLabel, Counter>,
    asks: Family<AskLabels, Count>,
    ask_latency: Family<TopicLabel, Latency>,
    tells: Family<TopicLabel, Count>,
    unknown_tells: Count,
    pub(crate) publications: Counter,
    pub(crate) deliveries: Counter,
    pub(crate) received_bytes: Count,
    pub(crate) sent_bytes: Count,
    pub(crate) queue_overflows: Counter,
    resyncs: [Counter; 2],
    presence_requests: Family<OutcomeLabel, Counter>,
    scaler: [OpSeries; ScalerOp::ALL.len()],
    #[cfg(feature = "redis")]
    worker: [Counter; WorkerEvent::ALL.len()],
    /// Codes that have a label value of their own (at most [`MAX_CODES`]).
    codes: Mutex<HashSet<String>>,
}

impl Metrics {
    /// Registers every metric, with every fixed label set at zero so that dashboards see the
    /// series before the first event.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("sss");
        let r = &mut registry;
        let connections = Gauge::default();
        r.register(
            "connections",
            "WebSocket connections open on this instance",
            connections.clone(),
        );
        let accepted = Counter::default();
        r.register(
            "connections_accepted",
            "Sockets accepted: upgraded, and their hello accepted by the session parser",
            accepted.clone(),
        );
        let refused_family = Family::<ReasonLabel, Counter>::default();
        r.register(
            "connections_refused",
            "Connections and handshakes refused before a socket opened, by reason: bad_request \
             (not a WebSocket upgrade), shutting_down, origin (not in allowed_origins), \
             session_parser (refused the hello), max_connections, max_connections_per_ip, header_timeout (no \
             complete request head within header_read_timeout, idle keep-alive connections \
             included), tls_handshake (failed or timed out)",
            refused_family.clone(),
        );
        let refused = Refused::ALL.map(|reason| {
            refused_family.get_or_create_owned(&ReasonLabel {
                reason: reason.label(),
            })
        });
        let handshake = Latency::default();
        r.register(
            "handshake_duration_seconds",
            "Time from a WebSocket upgrade request to the server's answer (its checks; the \
             session parser runs after hello), accepted or refused",
            handshake.clone(),
        );
        let closed = Family::default();
        r.register(
            "sockets_closed",
            "Sockets closed, by the close code the server sent; code \"none\" when the \
             connection ended without one (the client closed it, or it was lost)",
            closed.clone(),
        );
        let subscriptions = Gauge::default();
        r.register(
            "subscriptions",
            "Subscriptions held on this instance (joining, syncing or live)",
            subscriptions.clone(),
        );
        let presence_members = Gauge::default();
        r.register(
            "presence_members",
            "Presence memberships of this instance's sockets (one per socket per channel with \
             presence; the cluster's are the sum over instances)",
            presence_members.clone(),
        );
        let subscriptions_refused = Family::default();
        r.register(
            "subscriptions_refused",
            "Subscriptions answered with subrej, by code",
            subscriptions_refused.clone(),
        );
        let asks = Family::default();
        r.register(
            "asks",
            "Asks answered, by topic (\"unknown\" for topics without a handler) and outcome \
             (\"ok\" or the rejection code)",
            asks.clone(),
        );
        let ask_latency = Family::default();
        r.register(
            "ask_duration_seconds",
            "Time from reading an ask to its handler's answer (middleware and handler), by topic",
            ask_latency.clone(),
        );
        let tells = Family::<TopicLabel, Count>::default();
        r.register(
            "tells",
            "Tells read, by topic (\"unknown\" for topics without a handler: dropped)",
            tells.clone(),
        );
        let unknown_tells = tells.get_or_create_owned(&TopicLabel {
            topic: UNKNOWN_TOPIC.to_owned(),
        });
        let publications = Counter::default();
        r.register(
            "publications",
            "Publications this instance published (Server::publish, from handlers too)",
            publications.clone(),
        );
        let deliveries = Counter::default();
        r.register(
            "deliveries",
            "Publication frames queued to this instance's sockets by fan-out (one per local \
             subscriber per publication the scaler delivered)",
            deliveries.clone(),
        );
        let received_bytes = Count::default();
        r.register(
            "received_bytes",
            "WebSocket message payload bytes received (text and binary messages; frame \
             headers, control frames, HTTP and TLS not counted)",
            received_bytes.clone(),
        );
        let sent_bytes = Count::default();
        r.register(
            "sent_bytes",
            "WebSocket message payload bytes sent (as for sss_received_bytes)",
            sent_bytes.clone(),
        );
        let queue_overflows = Counter::default();
        r.register(
            "outbound_queue_overflows",
            "Sockets closed as slow consumers because their outbound queue was full (close \
             4004)",
            queue_overflows.clone(),
        );
        let resyncs_family = Family::<OutcomeLabel, Counter>::default();
        r.register(
            "resyncs",
            "Resubscriptions with a last position, by outcome: recovered (missed publications \
             replayed) or unrecoverable (the history no longer reaches back)",
            resyncs_family.clone(),
        );
        let resyncs = ["recovered", "unrecoverable"].map(|outcome| {
            resyncs_family.get_or_create_owned(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
        });
        let presence_requests = Family::default();
        r.register(
            "presence_requests",
            "Presence reads (members or counts) answered, by outcome (\"ok\" or the rejection \
             code)",
            presence_requests.clone(),
        );
        let calls = Family::<OpLabel, Counter>::default();
        r.register(
            "scaler_operations",
            "Scaler operations called, by operation",
            calls.clone(),
        );
        let errors = Family::<OpLabel, Counter>::default();
        r.register(
            "scaler_errors",
            "Scaler operations that failed, by operation",
            errors.clone(),
        );
        let latencies = Family::<OpLabel, Latency>::default();
        r.register(
            "scaler_operation_duration_seconds",
            "Time scaler operations took, by operation",
            latencies.clone(),
        );
        let scaler = ScalerOp::ALL.map(|op| {
            let label = OpLabel { op: op.label() };
            OpSeries {
                calls: calls.get_or_create_owned(&label),
                errors: errors.get_or_create_owned(&label),
                latency: latencies.get_or_create_owned(&label),
            }
        });
        #[cfg(feature = "redis")]
        let worker_family = Family::<EventLabel, Counter>::default();
        #[cfg(feature = "redis")]
        r.register(
            "worker_events",
            "Worker mode, by event: answer_dropped (gateway: an answer for an ask no longer \
             waiting, late or second), tell_dropped (gateway: a routed tell dropped, backlog \
             full or Redis unreachable), job_claimed (worker: a job left idle with another \
             worker, claimed), job_expired (worker: a job past its deadline, dropped unrun)",
            worker_family.clone(),
        );
        #[cfg(feature = "redis")]
        let worker = WorkerEvent::ALL.map(|event| {
            worker_family.get_or_create_owned(&EventLabel {
                event: event.label(),
            })
        });
        Self {
            registry,
            connections,
            accepted,
            refused,
            handshake,
            closed,
            subscriptions,
            presence_members,
            subscriptions_refused,
            asks,
            ask_latency,
            tells,
            unknown_tells,
            publications,
            deliveries,
            received_bytes,
            sent_bytes,
            queue_overflows,
            resyncs,
            presence_requests,
            scaler,
            #[cfg(feature = "redis")]
            worker,
            codes: Mutex::default(),
        }
    }

    /// Counts one worker-mode event.
    #[cfg(feature = "redis")]
    pub(crate) fn worker_event(&self, event: WorkerEvent) {
        // `ALL` lists the variants in declaration order.
        self.worker[event as usize].inc();
    }

    /// Every metric in the Prometheus text format (version 0.0.4).
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail, and no metric of ours fails to encode.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// The series of an ask topic that has a handler.
    pub(crate) fn ask_series(&self, topic: &str) -> AskSeries {
        let ok = self.asks.get_or_create_owned(&AskLabels {
            topic: topic.to_owned(),
            outcome: "ok".to_owned(),
        });
        let latency = self.ask_latency.get_or_create_owned(&TopicLabel {
            topic: topic.to_owned(),
        });
        AskSeries {
            topic: topic.to_owned(),
            ok,
            latency,
        }
    }

    /// The series of a tell topic that has a handler.
    pub(crate) fn tell_series(&self, topic: &str) -> TellSeries {
        TellSeries {
            told: self.tells.get_or_create_owned(&TopicLabel {
                topic: topic.to_owned(),
            }),
        }
    }

    /// An ask answered by its handler (`Err(code)` for a rejection) after `elapsed`.
    pub(crate) fn ask_answered(&self, series: &AskSeries, result: Result<(), &str>, d: Duration) {
        series.latency.observe(d);
        match result {
            Ok(()) => {
                series.ok.inc();
            }
            Err(code) => self.ask_refused(Some(series), code),
        }
    }

    /// An ask rejected with `code`, on a topic with a handler (`Some`) or without.
    pub(crate) fn ask_refused(&self, series: Option<&AskSeries>, code: &str) {
        let topic = series.map_or(UNKNOWN_TOPIC, |s| s.topic.as_str());
        self.asks
            .get_or_create(&AskLabels {
                topic: topic.to_owned(),
                outcome: self.code_label(code),
            })
            .inc();
    }

    /// A tell on a topic without a handler (dropped).
    pub(crate) fn unknown_tell(&self) {
        self.unknown_tells.inc();
    }

    /// A connection or handshake refused.
    pub(crate) fn refused(&self, why: Refused) {
        // `ALL` lists the variants in declaration order.
        self.refused[why as usize].inc();
    }

    /// A socket closed with `code` (`None`: without a close frame from the server).
    pub(crate) fn socket_closed(&self, code: Option<u16>) {
        let code = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
        self.closed.get_or_create(&CodeLabel { code }).inc();
    }

    /// A subscription refused with `code`.
    pub(crate) fn subscription_refused(&self, code: &str) {
        let code = self.code_label(code);
        self.subscriptions_refused
            .get_or_create(&CodeLabel { code })
            .inc();
    }

    /// A resync answered (`recovered` as told to the client).
    pub(crate) fn resynced(&self, recovered: bool) {
        self.resyncs[usize::from(!recovered)].inc();
    }

    /// A presence read answered (`Err(code)` for a rejection).
    pub(crate) fn presence_answered(&self, result: Result<(), &str>) {
        let outcome = match result {
            Ok(()) => "ok".to_owned(),
            Err(code) => self.code_label(code),
        };
        self.presence_requests
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// The series of a scaler operation.
    pub(crate) fn scaler(&self, op: ScalerOp) -> &OpSeries {
        // `ALL` lists the variants in declaration order.
        &self.scaler[op as usize]
    }

    /// The label value of a rejection code: itself while fewer than [`MAX_CODES`] distinct
    /// codes have been seen, else `other`.
    fn code_label(&self, code: &str) -> String {
        let mut seen = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(code) {
            return code.to_owned();
        }
        if seen.len() < MAX_CODES {
            seen.insert(code.to_owned());
            return code.to_owned();
        }
        OTHER_CODE.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn fixed_label_sets_are_listed_in_variant_order() {
        for (i, r) in Refused::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, op) in ScalerOp::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i);
        }
    }

    #[test]
    fn asks_on_topics_without_a_handler_are_labelled_unknown() {
        let m = Metrics::new();
        let add = m.ask_series("add");
        m.ask_answered(&add, Ok(()), Duration::from_micros(50));
        m.ask_answered(&add, Err("refused"), Duration::from_millis(2));
        m.ask_refused(None, "unknown_topic");
        m.ask_refused(None, "unknown_topic");
        m.unknown_tell();
        let text = m.render();
        assert_eq!(
            sample(&text, r#"sss_asks_total{topic="add",outcome="ok"}"#),
            Some("1")
        );
        assert_eq!(
            sample(&text, r#"sss_asks_total{topic="add",outcome="refused"}"#),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                r#"sss_asks_total{topic="unknown",outcome="unknown_topic"}"#
            ),
            Some("2")
        );
        assert_eq!(
            sample(&text, r#"sss_tells_total{topic="unknown"}"#),
            Some("1")
        );
        assert_eq!(
            sample(&text, r#"sss_ask_duration_seconds_count{topic="add"}"#),
            Some("2")
        );
        assert_eq!(
            sample(
                &text,
                r#"sss_ask_duration_seconds_bucket{topic="add",le="0.0001"}"#
            ),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                r#"sss_ask_duration_seconds_bucket{topic="add",le="0.0025"}"#
            ),
            Some("2")
        );
    }

    #[test]
    fn codes_beyond_the_cap_are_labelled_other() {
        let m = Metrics::new();
        for i in 0..MAX_CODES + 10 {
            m.subscription_refused(&format!("code{i}"));
        }
        m.subscription_refused("code0");
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("sss_subscriptions_refused_total{"))
            .count();
        assert_eq!(series, MAX_CODES + 1, "{MAX_CODES} codes and other");
        assert_eq!(
            sample(&text, r#"sss_subscriptions_refused_total{code="other"}"#),
            Some("10")
        );
        assert_eq!(
            sample(&text, r#"sss_subscriptions_refused_total{code="code0"}"#),
            Some("2"),
            "a code seen before the cap keeps its label"
        );
    }

    /// [`Latency`] and [`Count`] replace `prometheus-client`'s `Histogram` and `Counter` on the
    /// hot paths: fed the same observations, they must scrape the same (the sum may differ in
    /// its last bits: ours adds nanoseconds, the crate adds seconds as floats).
    #[test]
    fn latency_and_count_scrape_like_the_crate_s_own() {
        use prometheus_client::metrics::histogram::Histogram;
        let bounds = BOUNDS_US.iter().map(|&us| us as f64 / 1e6);
        let (ours, theirs) = (Latency::default(), Histogram::new(bounds));
        let (our_count, their_count) = (Count::default(), Counter::<u64>::default());
        // Below, on and just above every bound, and beyond the last.
        let mut seen = Vec::new();
        for &us in &BOUNDS_US {
            seen.extend([us * 1000 - 1, us * 1000, us * 1000 + 1]);
        }
        seen.extend([0, 12_345_678_901, u64::from(u32::MAX)]);
        for ns in seen {
            let d = Duration::from_nanos(ns);
            ours.observe(d);
            theirs.observe(d.as_secs_f64());
            our_count.inc_by(ns % 7);
            their_count.inc_by(ns % 7);
        }
        let mut a = Registry::default();
        a.register("x", "h", ours);
        a.register("n", "c", our_count);
        let mut b = Registry::default();
        b.register("x", "h", theirs);
        b.register("n", "c", their_count);
        let text = |r: &Registry| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, r).expect("encodes");
            text
        };
        let (a, b) = (text(&a), text(&b));
        let (a_lines, b_lines): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
        assert_eq!(a_lines.len(), b_lines.len(), "{a}\n---\n{b}");
        for (x, y) in a_lines.iter().zip(&b_lines) {
            match (x.strip_prefix("x_sum "), y.strip_prefix("x_sum ")) {
                (Some(x), Some(y)) => {
                    let (x, y): (f64, f64) = (x.parse().expect("sum"), y.parse().expect("sum"));
                    assert!((x - y).abs() <= 1e-9 * y.abs().max(1.0), "{x} vs {y}");
                }
                _ => assert_eq!(x, y),
            }
        }
    }

    #[test]
    fn latency_buckets_are_cumulative_with_sum_and_count() {
        let m = Metrics::new();
        m.handshake.observe(Duration::from_micros(100));
        m.handshake.observe(Duration::from_micros(101));
        m.handshake.observe(Duration::from_secs(60));
        let text = m.render();
        let at = |le: &str| {
            sample(
                &text,
                &format!("sss_handshake_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(at("0.0001"), Some("1"), "the bound itself is in its bucket");
        assert_eq!(at("0.00025"), Some("2"));
        assert_eq!(at("10"), Some("2"));
        assert_eq!(at("+Inf"), Some("3"));
        assert_eq!(
            sample(&text, "sss_handshake_duration_seconds_count"),
            Some("3")
        );
        assert_eq!(
            sample(&text, "sss_handshake_duration_seconds_sum"),
            Some("60.000201")
        );
    }
}
/// What the metrics and spans add to one ask, by hand (timing: not for CI):
/// `cargo test --release -p sss-server --lib hot_path_cost -- --ignored --nocapture`.
/// See docs/PERFORMANCE.md ("Metrics").
#[cfg(test)]
mod cost {
    use std::hint::black_box;
    use std::time::Instant;

    use futures::FutureExt;
    use tracing::Instrument;

    use super::*;

    /// The fastest of 50 batches, in ns per call: a loaded machine only makes batches slower.
    fn min_ns(mut f: impl FnMut(u64)) -> f64 {
        let n = 100_000;
        (0..50)
            .map(|_| {
                let t = Instant::now();
                for i in 0..n {
                    f(i);
                }
                t.elapsed().as_nanos() as f64 / n as f64
            })
            .fold(f64::MAX, f64::min)
    }

    /// What the driver adds per ask (as in `socket.rs`): the span and its future wrapper, the
    /// clock read at the answer, the ask's counter and histogram, the bytes in and out.
    fn per_ask(m: &Metrics, s: &AskSeries) -> f64 {
        let read_at = Instant::now();
        min_ns(|i| {
            let span = tracing::debug_span!(
                "ask",
                socket = "abc-1",
                id = i,
                topic = "add",
                outcome = tracing::field::Empty
            );
            let traced = (!span.is_disabled()).then(|| span.clone());
            let handler = black_box(std::future::ready(i)).instrument(span);
            black_box(handler.now_or_never());
            m.ask_answered(s, Ok(()), read_at.elapsed());
            m.received_bytes.inc_by(black_box(40));
            m.sent_bytes.inc_by(black_box(40));
            black_box(traced);
        })
    }

    #[test]
    #[ignore = "a timing, run by hand"]
    fn hot_path_cost() {
        let m = Metrics::new();
        let s = m.ask_series("add");
        let bare = per_ask(&m, &s);
        let sub = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::io::sink)
            .finish();
        let filtered = tracing::subscriber::with_default(sub, || per_ask(&m, &s));
        // Two workers answering asks of one topic at once, as a tokio runtime does.
        let (a, b) = std::thread::scope(|scope| {
            let a = scope.spawn(|| per_ask(&m, &s));
            let b = per_ask(&m, &s);
            (a.join().unwrap_or(f64::MAX), b)
        });
        println!(
            "per ask: {bare:.1} ns without a subscriber, {filtered:.1} ns with fmt at info, \
             {a:.1} and {b:.1} ns on two threads at once"
        );
        // A lock, an allocation or a contended line on this path would cost several times this.
        assert!([bare, filtered, a, b].iter().all(|&ns| ns < 500.0));
    }
}
