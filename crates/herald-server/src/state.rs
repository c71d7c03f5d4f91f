//! [`Shared`]: what every request handler and socket task shares (the node, its broker, the
//! webhooks, the app store, the metric handles and the task handles), how it is built (the broker
//! and the webhooks started), and the narrow methods through which each module reads or changes
//! it.
//!
//! Invariant: every long-lived task of a server runs on one of the two `TaskTracker`s held here
//! (`connection_tasks`: the accept loop, HTTP connections and sockets; `background_tasks`: the
//! broker, webhooks, SIGHUP and signal handlers, the app store's sync loop, metrics upkeep, the
//! liveness sweep), each stopped by a token that `serve` cancels, so `serve` returns once they
//! ended (or their deadline passed).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use herald_cluster::{BrokerStats, ClusterBroker, ClusterSettings, Hooks, Transport};
use herald_core::{
    App, AppChange, AppStoreResult, AppsChanged, Broker, Delivery, DeliveryHook, MemoryBroker,
    Node, NodeLimits,
};
use herald_redis::RedisBus;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app_store::{self, Apps};
use crate::config::Config;
use crate::metrics;
use crate::webhooks::{self, Store, Webhooks};

/// What every request handler and socket task shares. Its fields are private: each module
/// reaches what it needs through the methods below.
#[derive(Debug)]
pub struct Shared {
    config: Config,
    node: Arc<Node>,
    broker: Arc<dyn Broker>,
    /// Redis broker counters, exported at scrape time.
    broker_stats: Option<Arc<BrokerStats>>,
    /// Always running; idle while no app has a webhook target.
    webhooks: Webhooks,
    limits: Arc<NodeLimits>,
    /// The accept loop, HTTP connections and sockets: the drain waits for them (until
    /// `drain.deadline`).
    connection_tasks: TaskTracker,
    /// Stops the tasks on `background_tasks` that [`Shared::spawn_background`] started, and the
    /// broker's and the webhooks' tasks, once the drain is over.
    stop_background: CancellationToken,
    /// Tasks that outlive the drain, so events still flow while sockets close: the broker's,
    /// the webhooks', the signal handlers and the app store's sync loop (stopped by
    /// `stop_background`), and the node's upkeep and liveness sweep (stopped by `serve`).
    background_tasks: TaskTracker,
    /// Set when the drain starts: readiness fails from then on.
    draining: AtomicBool,
    /// Cancelled when the drain starts: long-lived responses (the admin event stream) end, so
    /// their connections can close.
    drain_started: CancellationToken,
    prometheus: PrometheusHandle,
    /// Where apps come from (the file or a database), and the admin API's way to change them.
    /// Shared with the app store's sync loop.
    apps: Arc<Apps>,
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
        let apps = Apps::from_config(&config)?;
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
        let connection_tasks = TaskTracker::new();
        let background_tasks = TaskTracker::new();
        let stop_background = CancellationToken::new();
        let webhooks = start_webhooks(&config, &start_apps, &background_tasks, &stop_background)?;
        webhooks.set_node(node.clone());
        let (broker, broker_stats) = start_broker(
            &config,
            &node,
            &webhooks,
            &background_tasks,
            &stop_background,
        )?;
        Ok(Arc::new(Shared {
            node,
            broker,
            broker_stats,
            webhooks,
            limits,
            connection_tasks,
            stop_background,
            background_tasks,
            draining: AtomicBool::new(false),
            drain_started: CancellationToken::new(),
            prometheus,
            app_metrics,
            apps: Arc::new(apps),
            config,
        }))
    }

    /// [`Shared::new`] with apps kept in `store` instead of the configured one (tests, embedding).
    /// The node starts with `config.apps`; the app store's sync loop loads the store's.
    ///
    /// # Errors
    /// As [`Shared::new`].
    pub fn with_app_store(
        config: Config,
        store: Arc<dyn herald_core::AppStore>,
    ) -> anyhow::Result<Arc<Shared>> {
        let mut shared = Shared::new(config)?;
        let only = Arc::get_mut(&mut shared).expect("nothing else holds a new Shared");
        only.apps = Arc::new(Apps::new(store));
        Ok(shared)
    }

    /// The configuration the server started with (a SIGHUP reload changes only the apps, which
    /// are read from the node).
    #[inline]
    pub fn config(&self) -> &Config {
        &self.config
    }

    #[inline]
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    #[inline]
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// The cluster broker's counters; `None` for a node alone.
    pub fn broker_stats(&self) -> Option<&Arc<BrokerStats>> {
        self.broker_stats.as_ref()
    }

    #[inline]
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    #[inline]
    pub fn limits(&self) -> &Arc<NodeLimits> {
        &self.limits
    }

    /// The tracker of the accept loop, HTTP connections and sockets: the drain closes it and
    /// waits for them.
    #[inline]
    pub fn connection_tasks(&self) -> &TaskTracker {
        &self.connection_tasks
    }

    /// The tracker of the tasks that outlive the drain; `serve` waits for them last.
    pub fn background_tasks(&self) -> &TaskTracker {
        &self.background_tasks
    }

    /// Runs `task` on the background tasks until [`Shared::stop_background`].
    pub fn spawn_background(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.background_tasks
            .spawn(until(self.stop_background.clone(), task));
    }

    /// Stops the background tasks started with [`Shared::spawn_background`], the broker's and the
    /// webhooks' (`serve` does, once the drain is over).
    pub fn stop_background(&self) {
        self.stop_background.cancel();
    }

    /// The drain starts: readiness fails from now on, and long-lived responses end.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.drain_started.cancel();
    }

    /// Cancelled when the drain starts (the admin event stream ends on it).
    pub fn drain_started(&self) -> &CancellationToken {
        &self.drain_started
    }

    /// Where the apps come from, and how its last sync went.
    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    /// Starts the app store's sync loop ([`app_store::sync_loop`]) on the background tasks; it
    /// holds `self` weakly.
    pub fn spawn_app_sync(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let apply = move |apps| weak.upgrade().map(|shared| shared.apply_apps(apps));
        self.spawn_background(app_store::sync_loop(self.apps.clone(), apply));
    }

    /// Loads every app from the store and applies the list on this node.
    ///
    /// # Errors
    /// The store is unreachable; the running apps stay, and the status says so.
    pub async fn sync_apps(&self) -> AppStoreResult<AppsChanged> {
        self.apps.sync(|apps| self.apply_apps(apps)).await
    }

    /// Adds an app to the store and applies it on this node.
    ///
    /// # Errors
    /// `ReadOnly`, `Conflict`, `Unavailable`; nothing changed.
    pub async fn create_app(&self, app: App) -> AppStoreResult<AppsChanged> {
        self.apps.store().create(app).await?;
        self.sync_apps().await
    }

    /// Changes an app in the store atomically ([`herald_core::AppStore::update`]) and applies it
    /// on this node; returns the app as written.
    ///
    /// # Errors
    /// `ReadOnly`, `NotFound`, `Conflict`, `Invalid`, `Unavailable`; nothing changed.
    pub async fn update_app(&self, id: &str, change: AppChange) -> AppStoreResult<App> {
        let app = self.apps.store().update(id, change).await?;
        self.sync_apps().await?;
        Ok(app)
    }

    /// Removes an app from the store and from this node (its sockets close with 4003).
    ///
    /// # Errors
    /// `ReadOnly`, `NotFound`, `Unavailable`; nothing changed.
    pub async fn delete_app(&self, id: &str) -> AppStoreResult<AppsChanged> {
        self.apps.store().delete(id).await?;
        self.sync_apps().await
    }

    /// The app's metric handles, shared by its sockets. Made (and its series registered at
    /// zero) on first use for an app added since start-up that [`Shared::apply_apps`] has not
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
    fn apps_changed(&self, changed: &AppsChanged) {
        for app_id in &changed.added {
            self.app_metrics(app_id);
        }
    }

    /// Makes `apps` the node's apps: the registry (sockets of disabled or removed apps closed
    /// with 4003), the added apps' metric series, and the webhook targets.
    pub fn apply_apps(&self, apps: Vec<App>) -> AppsChanged {
        let hooks = webhooks::hooks_for(&apps, self.config.webhook_url.as_deref());
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

    /// What `/metrics` answers for this server ([`metrics::render`]).
    pub fn render_metrics(&self) -> String {
        metrics::render(&metrics::Scrape {
            node: &self.node,
            draining: self.draining.load(Ordering::Acquire),
            broker_stats: self.broker_stats.as_deref(),
            app_store: &self.apps,
            registry: &self.prometheus,
        })
    }

    /// The metrics recorder's upkeep (histogram buckets).
    pub fn run_metrics_upkeep(&self) {
        self.prometheus.run_upkeep();
    }
}

/// Runs `task` until `stop` is cancelled.
pub(crate) async fn until(stop: CancellationToken, task: impl Future<Output = ()>) {
    tokio::select! {
        () = task => {}
        () = stop.cancelled() => {}
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
    // Deliveries are counted here, for whichever broker delivers.
    let delivery: DeliveryHook = Arc::new(|app: &str, delivery: Delivery| {
        metrics::deliveries(app, delivery.delivered, delivery.dropped_slow);
    });
    let prefix = &config.cluster.prefix;
    let transport: Box<dyn Transport> = match (&config.cluster.hub, &config.redis_url) {
        (Some(hub), _) => Box::new(hub.transport()),
        (None, Some(url)) => Box::new(
            RedisBus::new(url, prefix, config.cluster.sharded)?
                .with_log_max_len(config.cluster.log_max_len),
        ),
        (None, None) => {
            return Ok((
                Arc::new(MemoryBroker::new(node.clone(), Some(delivery))),
                None,
            ))
        }
    };
    let hooks = {
        let (gone, lost) = (webhooks.clone(), webhooks.clone());
        Hooks {
            node_gone: Some(Arc::new(move |app: &str, entries| {
                gone.record_node_gone(app, entries);
            })),
            delivery: Some(delivery),
            log_lost: Some(Arc::new(move |app: &str, entries| {
                lost.restore(app, entries);
            })),
        }
    };
    let settings = ClusterSettings {
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
        hooks,
    );
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
    let apps = webhooks::hooks_for(apps, config.webhook_url.as_deref());
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
