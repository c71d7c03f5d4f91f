//! The IO shell around `herald-core`: the TCP listener, HTTP (health, metrics, the Pusher REST
//! API), the WebSocket endpoint and the shutdown drain.
//!
//! Invariant: every long-lived task of a server runs on one of the two `TaskTracker`s in
//! [`Shared`] (`tracker`: the accept loop, HTTP connections and sockets; `background_tasks`:
//! the broker, webhooks, SIGHUP and signal handlers, metrics upkeep, the liveness sweep), each
//! stopped by a token that [`serve`] cancels, so [`serve`] returns once they ended (or their
//! deadline passed).

pub mod admin;
pub mod app_store;
pub mod config;
pub mod connection;
pub mod http_api;
pub mod metrics;
pub mod reload;
pub mod shutdown;
pub mod webhooks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herald_cluster::{BrokerStats, ClusterBroker, ClusterConfig, NodeGoneHook, Transport};
use herald_core::{App, AppsChanged, Broker, MemoryBroker, Node, NodeLimits};
use herald_redis::RedisBus;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webhooks::{Store, Webhooks};

pub use config::Config;

/// What every request handler and socket task shares.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub node: Arc<Node>,
    pub broker: Arc<dyn Broker>,
    /// Redis broker counters, exported at scrape time.
    pub broker_stats: Option<Arc<BrokerStats>>,
    /// Always running; idle while no app has a webhook target.
    pub webhooks: Webhooks,
    pub limits: Arc<NodeLimits>,
    /// The accept loop, HTTP connections and sockets: the drain waits for them (until
    /// `drain.deadline`).
    pub tracker: TaskTracker,
    /// Stops the broker's and the webhooks' tasks once the drain is over.
    pub background: CancellationToken,
    /// Tasks that outlive the drain, so events still flow while sockets close: the broker's,
    /// the webhooks', the signal handlers (stopped by `background`), and the node's upkeep
    /// and liveness sweep (stopped by [`serve`]).
    pub background_tasks: TaskTracker,
    /// Set when the drain starts: readiness fails from then on.
    pub draining: AtomicBool,
    /// Cancelled when the drain starts: long-lived responses (the admin event stream) end, so
    /// their connections can close.
    pub drain_started: CancellationToken,
    pub metrics: PrometheusHandle,
    /// Where apps come from (the file or a database), and the admin API's way to change them.
    pub apps: app_store::Apps,
    /// Per-app metric handles, one per app id, shared by that app's sockets. Kept for removed
    /// apps too, so an app id that comes back goes on counting where it stopped.
    app_metrics: parking_lot::RwLock<HashMap<String, Arc<metrics::AppMetrics>>>,
}

impl Shared {
    /// Builds the node and its broker: Redis when `redis_url` is set, memory otherwise.
    ///
    /// # Errors
    /// A malformed Redis URL.
    pub fn new(config: Config) -> anyhow::Result<Arc<Shared>> {
        // Installed first: metric handles taken before it would be no-ops.
        let prometheus = metrics::install();
        // A database's apps arrive with the sync loop's first load (started by `serve`).
        let apps = app_store::Apps::from_config(&config)?;
        let start_apps = if apps.file().is_some() {
            config.apps()
        } else {
            Vec::new()
        };
        let app_metrics = parking_lot::RwLock::new(
            start_apps
                .iter()
                .map(|a| (a.id.clone(), Arc::new(metrics::AppMetrics::new(&a.id))))
                .collect(),
        );
        let node_id = config
            .node_id
            .unwrap_or_else(|| rand::random::<u32>().into());
        let limits = Arc::new(config.node_limits());
        let node = Arc::new(Node::new(node_id, start_apps.clone(), (*limits).clone()));
        let tracker = TaskTracker::new();
        let background_tasks = TaskTracker::new();
        let background = CancellationToken::new();
        let webhooks = start_webhooks(&config, &start_apps, &background_tasks, &background)?;
        webhooks.set_node(node.clone());
        let (broker, broker_stats) =
            start_broker(&config, &node, &webhooks, &background_tasks, &background)?;
        Ok(Arc::new(Shared {
            node,
            broker,
            broker_stats,
            webhooks,
            limits,
            tracker,
            background,
            background_tasks,
            draining: AtomicBool::new(false),
            drain_started: CancellationToken::new(),
            metrics: prometheus,
            app_metrics,
            apps,
            config,
        }))
    }

    /// [`Shared::new`] with apps kept in `store` instead of the configured one (tests, embedding).
    /// The node starts with `config.apps`; [`app_store::Apps::sync`] loads the store's.
    ///
    /// # Errors
    /// As [`Shared::new`].
    pub fn with_app_store(
        config: Config,
        store: Arc<dyn herald_core::AppStore>,
    ) -> anyhow::Result<Arc<Shared>> {
        let mut shared = Shared::new(config)?;
        let only = Arc::get_mut(&mut shared).expect("nothing else holds a new Shared");
        only.apps = app_store::Apps::new(store);
        Ok(shared)
    }

    /// The app's metric handles, shared by its sockets. Made (and its series registered at
    /// zero) on first use for an app added since start-up that [`Shared::apps_changed`] has not
    /// seen yet.
    pub fn app_metrics(&self, app_id: &str) -> Arc<metrics::AppMetrics> {
        if let Some(handles) = self.app_metrics.read().get(app_id) {
            return handles.clone();
        }
        self.app_metrics
            .write()
            .entry(app_id.to_owned())
            .or_insert_with(|| Arc::new(metrics::AppMetrics::new(app_id)))
            .clone()
    }

    /// Applies a change of the app registry to what herald-core does not hold: every added
    /// app's metric series are registered (at zero, as at start-up).
    pub fn apps_changed(&self, changed: &AppsChanged) {
        for app_id in &changed.added {
            self.app_metrics(app_id);
        }
    }

    /// Makes `apps` the node's apps: the registry (sockets of disabled or removed apps closed
    /// with 4003), the added apps' metric series, and the webhook targets.
    pub fn apply_apps(&self, apps: Vec<App>) -> AppsChanged {
        let hooks = reload::webhook_apps(&apps, self.config.webhook_url.as_deref());
        let changed = self.node.registry().replace(apps);
        self.apps_changed(&changed);
        self.webhooks.set_apps(hooks);
        changed
    }

    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the node should get no new connections, if it should not.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Acquire) {
            Some("draining")
        } else if self.node.connection_count() >= self.config.max_connections {
            Some("over capacity")
        } else if !self.broker.caught_up() {
            // A client drained from another node and resuming here needs the log read first.
            Some("reading the cluster log")
        } else {
            None
        }
    }
}

/// The broker, and its counters when it is a cluster's.
type BrokerAndStats = (Arc<dyn Broker>, Option<Arc<BrokerStats>>);

/// The broker: the cluster protocol over the configured transport (an in-process hub, or Redis:
/// one server, or a Redis Cluster with `cluster.sharded`), or, for a node alone, `MemoryBroker`, which publishes by local
/// delivery and nothing else.
fn start_broker(
    config: &Config,
    node: &Arc<Node>,
    webhooks: &Webhooks,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<BrokerAndStats> {
    let prefix = &config.cluster.prefix;
    let transport: Box<dyn Transport> = match (&config.cluster.hub, &config.redis_url) {
        (Some(hub), _) => Box::new(hub.transport()),
        (None, Some(url)) => Box::new(
            RedisBus::new(url, prefix, config.cluster.sharded)?
                .with_log_max_len(config.cluster.log_max_len),
        ),
        (None, None) => return Ok((Arc::new(MemoryBroker::new(node.clone())), None)),
    };
    let on_node_gone = {
        let webhooks = webhooks.clone();
        Some(
            Arc::new(move |app: &str, entries| webhooks.record_node_gone(app, entries))
                as NodeGoneHook,
        )
    };
    let settings = ClusterConfig {
        heartbeat_interval: config.cluster.heartbeat_interval,
        node_timeout: config.cluster.node_timeout,
        queue_capacity: config.cluster.queue_capacity,
        shards: config.cluster.shards.max(1),
        shard_by: config.cluster.shard_by,
    };
    let broker = ClusterBroker::start(
        node.clone(),
        settings,
        transport,
        tracker,
        stop.clone(),
        on_node_gone,
    );
    broker.on_delivery(Arc::new(|app: &str, delivery: herald_core::Delivery| {
        metrics::deliveries(app, delivery.delivered, delivery.dropped_slow);
    }));
    {
        let webhooks = webhooks.clone();
        broker.on_log_lost(Arc::new(move |app: &str, entries| {
            webhooks.restore(app, entries);
        }));
    }
    let stats = broker.stats();
    Ok((Arc::new(broker), Some(stats)))
}

/// Starts the webhook subsystem (idle while no app has a target, so that targets can be added
/// at runtime); its state is in Redis for a cluster.
fn start_webhooks(
    config: &Config,
    apps: &[App],
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<Webhooks> {
    let apps = reload::webhook_apps(apps, config.webhook_url.as_deref());
    let store = match &config.redis_url {
        Some(url) => Store::in_redis(
            herald_redis::conn::Target::parse(url, config.cluster.sharded)?,
            &config.cluster.prefix,
        ),
        None => Store::memory(),
    };
    Ok(Webhooks::start(
        config.webhooks.clone(),
        apps,
        store,
        tracker,
        stop.clone(),
    ))
}

/// Builds every route: health, metrics, the WebSocket endpoint and the HTTP API, each also under
/// the configured path prefix.
pub fn router(shared: Arc<Shared>) -> Router {
    let mut pusher = Router::new()
        .route("/app/{key}", get(connection::upgrade))
        .merge(http_api::router(&shared));
    let prefix = shared.config.path_prefix.clone();
    if !prefix.is_empty() {
        pusher = pusher.clone().merge(Router::new().nest(&prefix, pusher));
    }
    Router::new()
        .route(
            "/up",
            get(|| async { Json(serde_json::json!({"ok": true})) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .merge(pusher)
        .merge(admin::router(&shared))
        .fallback(connection::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(json_errors))
        .with_state(shared)
}

/// The largest error body [`json_errors`] carries over into its message.
const MAX_ERROR_TEXT: usize = 1024;

/// Gives the errors that axum and the layers produce (an extractor's rejection, the body
/// limit's 413, the timeout's 408) the JSON body every other error has; the rest of the
/// response (status, `Connection: close`, `Allow`) is kept. Successes pass untouched.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("Error"),
        text => text,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = serde_json::json!({ "error": message }).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// An error the router itself answers (no route, wrong method, a refused upgrade): the status and
/// `{"error": "..."}`, the same shape as the HTTP API's errors.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({"error": message}))).into_response()
}

/// A known path with a method it does not serve; axum adds the `Allow` header.
async fn method_not_allowed() -> Response {
    json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    // The app store's health is reported, never a reason to be unready: an outage leaves the
    // known apps working.
    let app_store = shared.apps.status();
    if let Some(reason) = shared.not_ready_reason() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "reason": reason, "app_store": app_store})),
        )
            .into_response()
    } else {
        Json(serde_json::json!({"ready": true, "app_store": app_store})).into_response()
    }
}

async fn render_metrics(State(shared): State<Arc<Shared>>) -> String {
    metrics::render(&shared)
}

/// Serves until `shutdown` is cancelled, then drains (see [`shutdown`]) and returns.
///
/// # Errors
/// Only start-up failures; a failing connection never ends the server.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve(Shared::new(config)?, listener, shutdown).await
}

/// Like [`run`], with state the caller built (tests inspect it).
///
/// # Errors
/// Only start-up failures.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(shared.clone());
    let stop_accepting = CancellationToken::new();
    tracing::info!(addr = %listener.local_addr()?, node_id = shared.node.id(), "herald listening");
    let demo = App::demo();
    if shared
        .node
        .apps()
        .iter()
        .any(|app| app.app().key == demo.key && app.app().secret.expose() == demo.secret.expose())
    {
        tracing::warn!(
            "the demo app (key app-key, secret app-secret) is served: anyone who can reach this \
             port can publish with its public secret; configure [[apps]] before exposing it"
        );
    }

    // The node's own housekeeping runs until the drain is over, like the broker.
    let housekeeping = CancellationToken::new();
    let background = &shared.background_tasks;
    background.spawn(until(housekeeping.clone(), upkeep(shared.clone())));
    background.spawn(until(
        housekeeping.clone(),
        connection::sweep_liveness(shared.clone()),
    ));
    // The app store's sync loop; a database's apps are loaded before the first accept (or a
    // few seconds passed: an outage must not keep the node from serving).
    app_store::spawn_sync(&shared);
    if !shared.apps.wait_loaded(app_store::FIRST_LOAD_WAIT).await {
        tracing::warn!("serving without the app store's apps: it did not answer yet (retrying)");
    }
    let accept = shared.tracker.spawn(accept_loop(
        listener,
        app,
        shared.clone(),
        stop_accepting.clone(),
    ));
    shutdown.cancelled().await;
    shutdown::drain(&shared, &stop_accepting).await;
    let _ = accept.await;
    housekeeping.cancel();
    shared.background.cancel();
    shared.background_tasks.close();
    if tokio::time::timeout(
        std::time::Duration::from_secs(1),
        shared.background_tasks.wait(),
    )
    .await
    .is_err()
    {
        tracing::warn!(
            tasks = shared.background_tasks.len(),
            "background tasks still running after 1 s; leaving them"
        );
    }
    Ok(())
}

/// Runs `task` until `stop` is cancelled.
async fn until(stop: CancellationToken, task: impl std::future::Future<Output = ()>) {
    tokio::select! {
        () = task => {}
        () = stop.cancelled() => {}
    }
}

/// Runs the metrics recorder's upkeep (histogram buckets) every 5 s.
async fn upkeep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        shared.metrics.run_upkeep();
    }
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let limits = &shared.config.limits;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            res = listener.accept() => match res {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone().into_service::<hyper::body::Incoming>());
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = stop.clone();
        shared.tracker.spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => log_http_error(res, peer),
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    log_http_error(conn.await, peer);
                }
            }
        });
    }
}

fn log_http_error(res: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(err) = res {
        tracing::debug!(%err, %peer, "http connection ended with an error");
    }
}
