//! Every metric name and label herald exports, in one place.
//!
//! Every family is described (`# HELP`) and every series a configured app or the node can have is
//! registered at zero from start-up (an app's when its [`AppMetrics`] is made). The node-wide
//! gauges and broker counters are read from the node itself at scrape time ([`render`]), so several
//! servers in one process (the tests) each report their own.
//!
//! Invariant: labels are bounded: `app_id` (from configuration) and small fixed enums. Never a
//! socket id, channel name or user id.

use std::sync::OnceLock;
use std::time::Duration;

use herald_cluster::BrokerStats;
use herald_core::Node;
use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app_store::Apps;

pub const NODE_CONNECTIONS: &str = "herald_node_connections";
pub const CONNECTIONS_ACTIVE: &str = "herald_connections_active";
pub const CONNECTIONS_TOTAL: &str = "herald_connections_total";
pub const DISCONNECTIONS_TOTAL: &str = "herald_disconnections_total";
pub const WS_MESSAGES_RECEIVED: &str = "herald_ws_messages_received_total";
pub const WS_MESSAGES_SENT: &str = "herald_ws_messages_sent_total";
pub const WS_BYTES_RECEIVED: &str = "herald_ws_bytes_received_total";
pub const WS_BYTES_SENT: &str = "herald_ws_bytes_sent_total";
pub const HTTP_REQUESTS: &str = "herald_http_requests_total";
pub const BROADCASTS: &str = "herald_broadcasts_total";
pub const DELIVERIES: &str = "herald_deliveries_total";
pub const DELIVERIES_DROPPED: &str = "herald_deliveries_dropped_total";
pub const DELIVERY_LATENCY: &str = "herald_delivery_latency_seconds";
pub const BROKER_PUBLISHES: &str = "herald_broker_publishes_total";
pub const BROKER_RECEIVES: &str = "herald_broker_receives_total";
pub const BROKER_RECONNECTS: &str = "herald_broker_reconnects_total";
pub const BROKER_ERRORS: &str = "herald_broker_errors_total";
pub const BROKER_DROPPED: &str = "herald_broker_dropped_total";
pub const BUS_ENTRIES_FILLED: &str = "herald_bus_entries_filled_total";
pub const BUS_GAPS: &str = "herald_bus_gaps_total";
pub const PUBLISHES_REFUSED: &str = "herald_publishes_refused_total";
pub const EVENTS_REPLAYED: &str = "herald_events_replayed_total";
pub const RESUMES: &str = "herald_resumes_total";
pub const LIMIT_REJECTIONS: &str = "herald_limit_rejections_total";
pub const DRAINING: &str = "herald_draining";

/// Why something was refused, as the `limit` label.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    NodeConnections,
    AppConnections,
    Origin,
    ChannelsPerConnection,
    PresenceMembers,
    FrameSize,
    ClientEventRate,
    ClientEventSize,
    MessageRate,
    RequestBody,
}

impl Limit {
    const ALL: [Limit; 10] = [
        Limit::NodeConnections,
        Limit::AppConnections,
        Limit::Origin,
        Limit::ChannelsPerConnection,
        Limit::PresenceMembers,
        Limit::FrameSize,
        Limit::ClientEventRate,
        Limit::ClientEventSize,
        Limit::MessageRate,
        Limit::RequestBody,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Limit::NodeConnections => "node_connections",
            Limit::AppConnections => "app_connections",
            Limit::Origin => "origin",
            Limit::ChannelsPerConnection => "channels_per_connection",
            Limit::PresenceMembers => "presence_members",
            Limit::FrameSize => "frame_size",
            Limit::ClientEventRate => "client_event_rate",
            Limit::ClientEventSize => "client_event_size",
            Limit::MessageRate => "message_rate",
            Limit::RequestBody => "request_body",
        }
    }
}

impl From<herald_core::SessionLimit> for Limit {
    fn from(limit: herald_core::SessionLimit) -> Limit {
        use herald_core::SessionLimit;
        match limit {
            SessionLimit::ChannelsPerConnection => Limit::ChannelsPerConnection,
            SessionLimit::PresenceMembers => Limit::PresenceMembers,
            SessionLimit::ClientEventRate => Limit::ClientEventRate,
            SessionLimit::ClientEventSize => Limit::ClientEventSize,
        }
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls reuse it) and describes every
/// metric, so each family carries `# HELP`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.into()), &buckets)
                .expect("buckets are not empty")
                .set_buckets_for_metric(Matcher::Full(WEBHOOK_LATENCY.into()), &buckets)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests embedding several servers share one).
            let _ = metrics::set_global_recorder(recorder);
            describe();
            // Node-wide series without an app, present from start-up.
            gauge!(WEBHOOK_QUEUE_DEPTH).set(0.0);
            let _ = histogram!(DELIVERY_LATENCY);
            let _ = histogram!(WEBHOOK_LATENCY);
            for endpoint in ENDPOINTS {
                counter!(HTTP_REQUESTS, "endpoint" => endpoint, "status" => "200").absolute(0);
            }
            for limit in Limit::ALL {
                counter!(LIMIT_REJECTIONS, "app_id" => "", "limit" => limit.as_str()).absolute(0);
            }
            for reason in REFUSALS {
                counter!(DISCONNECTIONS_TOTAL, "app_id" => "", "reason" => reason).absolute(0);
            }
            handle
        })
        .clone()
}

/// The HTTP API's endpoints, as the `endpoint` label.
const ENDPOINTS: [&str; 6] = [
    "events",
    "batch_events",
    "channels",
    "channel",
    "channel_users",
    "terminate_connections",
];
/// `reason` of connections refused before they were established.
const REFUSALS: [&str; 2] = ["limit", "error"];
/// `reason` of `herald_disconnections_total` (herald-core's `DisconnectReason`).
const DISCONNECT_REASONS: [&str; 7] = [
    "client_close",
    "ping_timeout",
    "slow_consumer",
    "drain",
    "limit",
    "error",
    "terminated",
];
/// `source` of `herald_broadcasts_total`.
const BROADCAST_SOURCES: [&str; 2] = ["api", "client_event"];
/// `reason` of `herald_webhooks_dropped_total`.
const WEBHOOK_DROP_REASONS: [&str; 4] = [
    "queue_full",
    "retries_exhausted",
    "cancelled",
    "store_error",
];

/// Describes what the registry holds; the per-node series of [`render`] carry their own help.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(CONNECTIONS_ACTIVE, "Open WebSocket connections per app.");
    describe_counter!(CONNECTIONS_TOTAL, "WebSocket connections established.");
    describe_counter!(
        DISCONNECTIONS_TOTAL,
        "WebSocket connections ended, by reason (app_id is empty for connections refused before they were established)."
    );
    describe_counter!(
        WS_MESSAGES_RECEIVED,
        "WebSocket text messages received from clients."
    );
    describe_counter!(WS_MESSAGES_SENT, "WebSocket messages sent to clients.");
    describe_counter!(
        WS_BYTES_RECEIVED,
        Unit::Bytes,
        "WebSocket payload bytes received."
    );
    describe_counter!(WS_BYTES_SENT, Unit::Bytes, "WebSocket payload bytes sent.");
    describe_counter!(HTTP_REQUESTS, "HTTP API requests, by endpoint and status.");
    describe_counter!(
        BROADCASTS,
        "Events broadcast, by source (api, client_event)."
    );
    describe_counter!(DELIVERIES, "Event frames queued to local sockets.");
    describe_counter!(
        DELIVERIES_DROPPED,
        "Event frames not delivered, by reason (slow_consumer)."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "Publish accepted to frame written, sampled once per write batch."
    );
    describe_counter!(
        LIMIT_REJECTIONS,
        "Requests refused by a limit, by limit (app_id is empty when no app is known)."
    );
    describe_counter!(WEBHOOKS_SENT, "Webhook events delivered (2xx).");
    describe_counter!(
        WEBHOOKS_FAILED,
        "Failed webhook attempts (each may be retried)."
    );
    describe_counter!(
        WEBHOOKS_RETRIED,
        "Webhook requests scheduled again after a failure."
    );
    describe_counter!(
        WEBHOOKS_DROPPED,
        "Webhooks given up, by reason (queue_full, retries_exhausted, cancelled, store_error)."
    );
    describe_gauge!(
        WEBHOOK_QUEUE_DEPTH,
        "Webhook jobs waiting in the store (due or not)."
    );
    describe_histogram!(
        WEBHOOK_LATENCY,
        Unit::Seconds,
        "Duration of successful webhook requests."
    );
}

/// What [`render`] reads from one server at scrape time (`Shared::render_metrics` fills it in).
pub struct Scrape<'a> {
    pub node: &'a Node,
    /// Whether the node drains.
    pub draining: bool,
    /// The cluster broker's counters; `None` (zeros) for a node alone.
    pub broker_stats: Option<&'a BrokerStats>,
    pub app_store: &'a Apps,
    /// The process-wide registry, rendered last.
    pub registry: &'a PrometheusHandle,
}

/// What `/metrics` answers: this node's own gauges and broker counters (kept by the node, so
/// several servers in one process each report their own), then the process-wide registry.
pub fn render(scrape: &Scrape) -> String {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, series: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in series {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
        out.push('\n');
    };
    family(
        NODE_CONNECTIONS,
        "gauge",
        "Open WebSocket connections on this node (all apps).",
        &[("", scrape.node.connection_count() as u64)],
    );
    family(
        DRAINING,
        "gauge",
        "1 while this node drains (after SIGTERM), else 0.",
        &[("", u64::from(scrape.draining))],
    );
    let default = BrokerStats::default();
    let stats = scrape.broker_stats.unwrap_or(&default);
    let counters = [
        (
            BROKER_PUBLISHES,
            "Messages this node sent to the cluster bus.",
            &stats.publishes,
        ),
        (
            BROKER_RECEIVES,
            "Messages this node received from the cluster bus.",
            &stats.receives,
        ),
        (
            BROKER_RECONNECTS,
            "Reconnections to the cluster bus.",
            &stats.reconnects,
        ),
        (BROKER_ERRORS, "Cluster bus errors.", &stats.errors),
        (
            CLUSTER_NODES_REAPED,
            "Nodes declared dead and removed by this node.",
            &stats.nodes_reaped,
        ),
        (
            BUS_ENTRIES_FILLED,
            "Bus entries read from the log after a reconnect (missed while away, delivered late).",
            &stats.gap_entries_filled,
        ),
        (
            BUS_GAPS,
            "Gaps the bus's log could not fill (trimmed or lost by Redis); subscribers were sent herald:resume_failed.",
            &stats.gaps_lost,
        ),
        (
            PUBLISHES_REFUSED,
            "HTTP publishes refused with 503 because the cluster's log was unavailable.",
            &stats.publishes_refused,
        ),
    ];
    for (name, help, value) in counters {
        family(name, "counter", help, &[("", value.load(Relaxed))]);
    }
    family(
        BROKER_DROPPED,
        "counter",
        "Bus messages dropped: unsent (Redis unreachable or queue full) or invalid (received and rejected).",
        &[
            ("{reason=\"unsent\"}", stats.dropped_unsent.load(Relaxed)),
            ("{reason=\"invalid\"}", stats.dropped_invalid.load(Relaxed)),
        ],
    );
    let apps = scrape.node.apps();
    let label = |app: &herald_core::AppState| app.id().replace('\\', "\\\\").replace('"', "\\\"");
    let replayed: Vec<(String, u64)> = apps
        .iter()
        .map(|app| {
            let n = app.continuity.events_replayed.load(Relaxed);
            (format!("{{app_id=\"{}\"}}", label(app)), n)
        })
        .collect();
    let mut resumes = Vec::new();
    for app in &apps {
        let stats = &app.continuity;
        for (result, counter) in [
            ("replayed", &stats.resumed),
            ("window_passed", &stats.failed_window_passed),
            ("history_trimmed", &stats.failed_history_trimmed),
            ("log_lost", &stats.failed_log_lost),
        ] {
            let labels = format!("{{app_id=\"{}\",result=\"{result}\"}}", label(app));
            resumes.push((labels, counter.load(Relaxed)));
        }
    }
    family(
        EVENTS_REPLAYED,
        "counter",
        "Missed events sent to returning clients right after their subscription.",
        &replayed
            .iter()
            .map(|(l, v)| (l.as_str(), *v))
            .collect::<Vec<_>>(),
    );
    family(
        RESUMES,
        "counter",
        "Resubscriptions of recognised returning clients, by result: replayed, or why not (the client got herald:resume_failed).",
        &resumes.iter().map(|(l, v)| (l.as_str(), *v)).collect::<Vec<_>>(),
    );
    render_app_store(scrape.app_store, &mut out);
    out.push_str(&scrape.registry.render());
    out
}

pub fn connection_opened(app_id: &str) {
    gauge!(CONNECTIONS_ACTIVE, "app_id" => app_id.to_owned()).increment(1.0);
    counter!(CONNECTIONS_TOTAL, "app_id" => app_id.to_owned()).increment(1);
}

pub fn connection_closed(app_id: &str, reason: &'static str) {
    gauge!(CONNECTIONS_ACTIVE, "app_id" => app_id.to_owned()).decrement(1.0);
    counter!(DISCONNECTIONS_TOTAL, "app_id" => app_id.to_owned(), "reason" => reason).increment(1);
}

/// A connection refused before it was established (limits, unknown app).
pub fn connection_refused(reason: &'static str) {
    counter!(DISCONNECTIONS_TOTAL, "app_id" => "", "reason" => reason).increment(1);
}

/// Per-app handles for the per-message counters, looked up once instead of on every frame.
#[derive(Debug, Clone)]
pub struct AppMetrics {
    messages_in: Counter,
    bytes_in: Counter,
    messages_out: Counter,
    bytes_out: Counter,
    latency: Histogram,
}

impl AppMetrics {
    /// Takes the app's handles and registers every series of the app at zero, so each is present
    /// from start-up.
    pub fn new(app_id: &str) -> AppMetrics {
        let app = || app_id.to_owned();
        gauge!(CONNECTIONS_ACTIVE, "app_id" => app()).increment(0.0);
        counter!(CONNECTIONS_TOTAL, "app_id" => app()).increment(0);
        for reason in DISCONNECT_REASONS {
            counter!(DISCONNECTIONS_TOTAL, "app_id" => app(), "reason" => reason).increment(0);
        }
        for source in BROADCAST_SOURCES {
            counter!(BROADCASTS, "app_id" => app(), "source" => source).increment(0);
        }
        counter!(DELIVERIES, "app_id" => app()).increment(0);
        counter!(DELIVERIES_DROPPED, "app_id" => app(), "reason" => "slow_consumer").increment(0);
        for limit in Limit::ALL {
            counter!(LIMIT_REJECTIONS, "app_id" => app(), "limit" => limit.as_str()).increment(0);
        }
        counter!(WEBHOOKS_SENT, "app_id" => app()).increment(0);
        counter!(WEBHOOKS_FAILED, "app_id" => app()).increment(0);
        counter!(WEBHOOKS_RETRIED, "app_id" => app()).increment(0);
        for reason in WEBHOOK_DROP_REASONS {
            counter!(WEBHOOKS_DROPPED, "app_id" => app(), "reason" => reason).increment(0);
        }
        AppMetrics {
            messages_in: counter!(WS_MESSAGES_RECEIVED, "app_id" => app_id.to_owned()),
            bytes_in: counter!(WS_BYTES_RECEIVED, "app_id" => app_id.to_owned()),
            messages_out: counter!(WS_MESSAGES_SENT, "app_id" => app_id.to_owned()),
            bytes_out: counter!(WS_BYTES_SENT, "app_id" => app_id.to_owned()),
            latency: histogram!(DELIVERY_LATENCY),
        }
    }

    pub fn message_received(&self, bytes: usize) {
        self.messages_in.increment(1);
        self.bytes_in.increment(bytes as u64);
    }

    pub fn messages_sent(&self, count: usize, bytes: usize) {
        self.messages_out.increment(count as u64);
        self.bytes_out.increment(bytes as u64);
    }

    /// Publish accepted → frame written, sampled once per write batch (its oldest frame).
    pub fn delivery_latency(&self, elapsed: Duration) {
        self.latency.record(elapsed.as_secs_f64());
    }
}

pub fn http_request(endpoint: &'static str, status: u16) {
    counter!(HTTP_REQUESTS, "endpoint" => endpoint, "status" => status.to_string()).increment(1);
}

/// One event broadcast (an HTTP publish per channel, or a client event). What it delivered is
/// counted apart, by [`deliveries`], where the broker delivers it.
pub fn broadcast(app_id: &str, source: &'static str) {
    counter!(BROADCASTS, "app_id" => app_id.to_owned(), "source" => source).increment(1);
}

/// Deliveries of one event on this node: the one place they are counted, as the broker's
/// delivery hook (`Shared`'s `start_broker`), whichever broker delivered it.
pub fn deliveries(app_id: &str, delivered: usize, dropped_slow: usize) {
    counter!(DELIVERIES, "app_id" => app_id.to_owned()).increment(delivered as u64);
    if dropped_slow > 0 {
        counter!(DELIVERIES_DROPPED, "app_id" => app_id.to_owned(), "reason" => "slow_consumer")
            .increment(dropped_slow as u64);
    }
}

/// A limit refused something before any app was known.
pub fn limit_rejected(limit: Limit) {
    limit_rejected_for("", limit);
}

/// A limit refused something of `app_id`.
pub fn limit_rejected_for(app_id: &str, limit: Limit) {
    counter!(LIMIT_REJECTIONS, "app_id" => app_id.to_owned(), "limit" => limit.as_str())
        .increment(1);
}

pub const WEBHOOKS_SENT: &str = "herald_webhooks_sent_total";
pub const WEBHOOKS_FAILED: &str = "herald_webhooks_failed_total";
pub const WEBHOOKS_RETRIED: &str = "herald_webhooks_retried_total";
pub const WEBHOOKS_DROPPED: &str = "herald_webhooks_dropped_total";
pub const WEBHOOK_QUEUE_DEPTH: &str = "herald_webhook_queue_depth";
pub const WEBHOOK_LATENCY: &str = "herald_webhook_latency_seconds";

/// A webhook request of `app_id` succeeded, carrying `events` events.
pub fn webhook_sent(app_id: &str, events: usize, elapsed: Duration) {
    counter!(WEBHOOKS_SENT, "app_id" => app_id.to_owned()).increment(events as u64);
    histogram!(WEBHOOK_LATENCY).record(elapsed.as_secs_f64());
}

/// One failed attempt (it may be retried).
pub fn webhook_failed(app_id: &str) {
    counter!(WEBHOOKS_FAILED, "app_id" => app_id.to_owned()).increment(1);
}

pub fn webhook_retried(app_id: &str) {
    counter!(WEBHOOKS_RETRIED, "app_id" => app_id.to_owned()).increment(1);
}

/// `reason`: queue_full, retries_exhausted, cancelled (a quick return made it moot), store_error.
pub fn webhook_dropped(app_id: &str, reason: &'static str) {
    counter!(WEBHOOKS_DROPPED, "app_id" => app_id.to_owned(), "reason" => reason).increment(1);
}

pub fn webhook_queue_depth(depth: usize) {
    gauge!(WEBHOOK_QUEUE_DEPTH).set(depth as f64);
}

pub const CLUSTER_NODES_REAPED: &str = "herald_cluster_nodes_reaped_total";

pub const APP_STORE_UP: &str = "herald_app_store_up";
pub const APP_STORE_SYNCS: &str = "herald_app_store_syncs_total";
pub const APP_STORE_INVALID_ROWS: &str = "herald_app_store_invalid_rows";

/// The app store's families, kept by the server's [`Apps`] (so each server in a process reports
/// its own), at zero from start-up.
fn render_app_store(apps: &Apps, out: &mut String) {
    use std::fmt::Write;
    let status = apps.status();
    let (ok, failed) = apps.syncs();
    let kind = status.kind;
    let _ = write!(
        out,
        "# HELP {APP_STORE_UP} 1 while the app store answers (its last load or change check succeeded), else 0; the known apps keep working either way.\n\
         # TYPE {APP_STORE_UP} gauge\n\
         {APP_STORE_UP}{{kind=\"{kind}\"}} {}\n\n\
         # HELP {APP_STORE_SYNCS} Loads of the apps from the app store, by result (ok, error; an unreachable store counts one error per attempt).\n\
         # TYPE {APP_STORE_SYNCS} counter\n\
         {APP_STORE_SYNCS}{{result=\"ok\"}} {ok}\n\
         {APP_STORE_SYNCS}{{result=\"error\"}} {failed}\n\n\
         # HELP {APP_STORE_INVALID_ROWS} Rows of the app store's last load that are not valid apps (skipped; the log says why).\n\
         # TYPE {APP_STORE_INVALID_ROWS} gauge\n\
         {APP_STORE_INVALID_ROWS} {}\n\n",
        u8::from(status.ok),
        status.invalid_rows,
    );
}
