//! Every metric name and label herald exports, in one place.
//!
//! Invariant: labels are bounded: `app_id` (from configuration) and small fixed enums. Never a
//! socket id, channel name or user id.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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

/// Installs the process-wide Prometheus recorder (once; later calls reuse it).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.into()), &buckets)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests embedding several servers share one).
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub fn connection_opened(app_id: &str) {
    gauge!(NODE_CONNECTIONS).increment(1.0);
    gauge!(CONNECTIONS_ACTIVE, "app_id" => app_id.to_owned()).increment(1.0);
    counter!(CONNECTIONS_TOTAL, "app_id" => app_id.to_owned()).increment(1);
}

pub fn connection_closed(app_id: &str, reason: &'static str) {
    gauge!(NODE_CONNECTIONS).decrement(1.0);
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
    pub fn new(app_id: &str) -> AppMetrics {
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

pub fn broadcast(app_id: &str, source: &'static str, delivered: usize, dropped_slow: usize) {
    counter!(BROADCASTS, "app_id" => app_id.to_owned(), "source" => source).increment(1);
    counter!(DELIVERIES, "app_id" => app_id.to_owned()).increment(delivered as u64);
    if dropped_slow > 0 {
        counter!(DELIVERIES_DROPPED, "app_id" => app_id.to_owned(), "reason" => "slow_consumer")
            .increment(dropped_slow as u64);
    }
}

pub fn limit_rejected(limit: Limit) {
    counter!(LIMIT_REJECTIONS, "limit" => limit.as_str()).increment(1);
}

pub fn draining(on: bool) {
    gauge!(DRAINING).set(if on { 1.0 } else { 0.0 });
}

pub const WEBHOOKS_SENT: &str = "herald_webhooks_sent_total";
pub const WEBHOOKS_FAILED: &str = "herald_webhooks_failed_total";
pub const WEBHOOKS_RETRIED: &str = "herald_webhooks_retried_total";
pub const WEBHOOKS_DROPPED: &str = "herald_webhooks_dropped_total";
pub const WEBHOOK_QUEUE_DEPTH: &str = "herald_webhook_queue_depth";
pub const WEBHOOK_LATENCY: &str = "herald_webhook_latency_seconds";

/// A webhook request succeeded, carrying `events` events.
pub fn webhook_sent(events: usize, elapsed: Duration) {
    counter!(WEBHOOKS_SENT).increment(events as u64);
    histogram!(WEBHOOK_LATENCY).record(elapsed.as_secs_f64());
}

/// One failed attempt (it may be retried).
pub fn webhook_failed() {
    counter!(WEBHOOKS_FAILED).increment(1);
}

pub fn webhook_retried() {
    counter!(WEBHOOKS_RETRIED).increment(1);
}

/// `reason`: queue_full, retries_exhausted, cancelled (a quick return made it moot), store_error.
pub fn webhook_dropped(reason: &'static str) {
    counter!(WEBHOOKS_DROPPED, "reason" => reason).increment(1);
}

pub fn webhook_queue_depth(depth: usize) {
    gauge!(WEBHOOK_QUEUE_DEPTH).set(depth as f64);
}

pub const CLUSTER_NODES_REAPED: &str = "herald_cluster_nodes_reaped_total";

/// Copies the Redis broker's counters into the registry (called at scrape time).
pub fn export_broker(stats: &herald_redis::BrokerStats) {
    use std::sync::atomic::Ordering::Relaxed;
    counter!(BROKER_PUBLISHES).absolute(stats.publishes.load(Relaxed));
    counter!(BROKER_RECEIVES).absolute(stats.receives.load(Relaxed));
    counter!(BROKER_RECONNECTS).absolute(stats.reconnects.load(Relaxed));
    counter!(BROKER_ERRORS).absolute(stats.errors.load(Relaxed));
    counter!(BROKER_DROPPED, "reason" => "unsent").absolute(stats.dropped_unsent.load(Relaxed));
    counter!(BROKER_DROPPED, "reason" => "invalid").absolute(stats.dropped_invalid.load(Relaxed));
    counter!(CLUSTER_NODES_REAPED).absolute(stats.nodes_reaped.load(Relaxed));
}
