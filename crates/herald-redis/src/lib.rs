//! The Redis broker: many herald nodes act as one through Redis pub/sub.
//!
//! Every node publishes to, and subscribes to, one bus channel (`{prefix}:bus`). The bus carries
//! events (delivered by every node to its local subscribers) and each node's announcements of its
//! own state (subscriptions, presence identities, sign-ins, connection counts), which every other
//! node replicates into `herald-core`'s remote view. Redis is single-threaded, so every node sees
//! the bus in the same order and reaches the same presence decisions on its own.
//!
//! Invariants:
//! - Nothing here blocks a socket task or an HTTP handler: `publish` and `announce` deliver
//!   locally and enqueue for Redis without waiting; a full queue drops and counts.
//! - Everything read from Redis is untrusted: decoded with validation, and what does not parse is
//!   dropped and counted, never a panic.
//! - A node's own view of itself never depends on Redis: local delivery goes on during an outage.

pub mod conn;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald_core::{Announcement, Broker, Delivery, Envelope, Node, SubscriptionEntry};
use herald_protocol::{SocketId, UserId};
use parking_lot::Mutex;
use rand::Rng;
use redis::aio::ConnectionManagerConfig;

use crate::conn::{RedisConn, Target};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::wire::BusMessage;

/// Largest bus message accepted from Redis.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Most messages sent in one pipeline.
const MAX_PIPELINE: usize = 512;
/// How long a cache channel's last event is kept in Redis for nodes that start later.
const CACHE_TTL_MS: u64 = 30 * 60 * 1000;

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS).
    pub url: String,
    /// Namespaces keys and the bus channel, so several clusters can share one Redis.
    pub prefix: String,
    pub heartbeat_interval: Duration,
    /// A node silent this long is considered dead and its members are removed.
    pub node_timeout: Duration,
    /// Messages waiting for Redis before new ones are dropped (and counted).
    pub queue_capacity: usize,
    /// `url` is a Redis Cluster (comma-separated seed nodes): use sharded pub/sub.
    pub sharded: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid Redis URL")]
    InvalidUrl(#[source] redis::RedisError),
}

/// Counters the server exports as metrics.
#[derive(Debug, Default)]
pub struct BrokerStats {
    pub publishes: AtomicU64,
    pub receives: AtomicU64,
    pub reconnects: AtomicU64,
    pub errors: AtomicU64,
    /// Not sent because Redis was unreachable or the queue was full.
    pub dropped_unsent: AtomicU64,
    /// Received but rejected: not valid JSON or failing validation.
    pub dropped_invalid: AtomicU64,
    /// Nodes declared dead and removed.
    pub nodes_reaped: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

#[derive(Debug)]
struct Outgoing {
    payload: String,
    /// `(key, value)` to store with the cache TTL.
    cache: Option<(String, String)>,
}

struct Inner {
    node: Arc<Node>,
    config: RedisConfig,
    /// The key prefix in use (`{prefix}` on a cluster).
    prefix: String,
    bus: String,
    tx: mpsc::Sender<Outgoing>,
    stats: Arc<BrokerStats>,
    /// Other nodes and when we last heard from them.
    peers: Mutex<HashMap<u64, Instant>>,
    /// Set while subscribed to the bus.
    connected_since: Mutex<Option<Instant>>,
    /// Told about the subscriptions of a node declared dead (for webhooks).
    on_node_gone: Option<NodeGoneHook>,
    /// Held while announcing and while snapshotting state, so a `State` never overtakes, or is
    /// overtaken by, a delta about the same socket on the bus.
    order: Mutex<()>,
    /// Some announcement was lost (queue full, Redis error): republish the full state.
    state_dirty: std::sync::atomic::AtomicBool,
}

/// Called with an app id and the subscriptions a dead node held in it.
pub type NodeGoneHook = Arc<dyn Fn(&str, Vec<SubscriptionEntry>) + Send + Sync>;

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("node", &self.node.id())
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}

/// The Redis implementation of [`Broker`].
#[derive(Debug, Clone)]
pub struct RedisBroker(Arc<Inner>);

impl RedisBroker {
    /// Starts the publisher, subscriber and heartbeat tasks. Redis need not be up: the node
    /// serves its own sockets meanwhile and joins the cluster when Redis answers.
    ///
    /// # Errors
    /// Only a malformed URL.
    pub fn start(
        node: Arc<Node>,
        config: RedisConfig,
        tracker: &TaskTracker,
        stop: CancellationToken,
        on_node_gone: Option<NodeGoneHook>,
    ) -> Result<RedisBroker, BrokerError> {
        let target = Target::parse(&config.url, config.sharded).map_err(BrokerError::InvalidUrl)?;
        let prefix = target.key_prefix(&config.prefix);
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let inner = Arc::new(Inner {
            node,
            bus: format!("{prefix}:bus"),
            prefix,
            config,
            tx,
            stats: Arc::default(),
            peers: Mutex::default(),
            connected_since: Mutex::default(),
            on_node_gone,
            order: Mutex::new(()),
            state_dirty: std::sync::atomic::AtomicBool::new(false),
        });
        tracker.spawn(publisher(inner.clone(), target.clone(), rx, stop.clone()));
        tracker.spawn(subscriber(inner.clone(), target, stop.clone()));
        tracker.spawn(heartbeat(inner.clone(), stop));
        Ok(RedisBroker(inner))
    }

    pub fn stats(&self) -> Arc<BrokerStats> {
        self.0.stats.clone()
    }

    /// Whether the node is currently subscribed to the bus.
    pub fn is_connected(&self) -> bool {
        self.0.connected_since.lock().is_some()
    }
}

impl Inner {
    fn send(&self, message: &BusMessage, cache: Option<(String, String)>) {
        let payload = match serde_json::to_string(message) {
            Ok(payload) => payload,
            Err(err) => {
                tracing::error!(%err, "could not encode a bus message");
                return;
            }
        };
        if self.tx.try_send(Outgoing { payload, cache }).is_err() {
            bump(&self.stats.dropped_unsent, 1);
            self.state_dirty.store(true, Ordering::Relaxed);
        }
    }

    /// All cache channels' last events live in one hash, so one `HGETALL` loads them on any
    /// Redis, clustered or not; each value carries its own expiry.
    fn cache_hash(&self) -> String {
        format!("{}:cache", self.prefix)
    }

    /// Publishes this node's full state for every app.
    fn publish_state(&self) {
        let me = self.node.id();
        // Snapshot and enqueue under the order lock: no announcement can slip in between.
        let _order = self.order.lock();
        for app in self.node.apps() {
            let state = wire::WireState::from_local(&app.local_state());
            self.send(
                &BusMessage::State {
                    node: me,
                    app: app.id().to_owned(),
                    state,
                },
                None,
            );
        }
    }

    /// Publishes this node's full state and asks every other node for theirs.
    fn resync(&self) {
        self.publish_state();
        self.send(
            &BusMessage::SyncRequest {
                node: self.node.id(),
                target: None,
            },
            None,
        );
    }

    fn handle(&self, payload: &[u8]) {
        bump(&self.stats.receives, 1);
        if payload.len() > MAX_MESSAGE_BYTES {
            bump(&self.stats.dropped_invalid, 1);
            return;
        }
        let message: BusMessage = match serde_json::from_slice(payload) {
            Ok(message) => message,
            Err(err) => {
                bump(&self.stats.dropped_invalid, 1);
                tracing::warn!(%err, "dropping a bus message that does not parse");
                return;
            }
        };
        let me = self.node.id();
        let from = message.node();
        if from == me {
            return;
        }
        let known = self.peers.lock().insert(from, Instant::now()).is_some();
        if !known
            && !matches!(
                message,
                BusMessage::State { .. } | BusMessage::SyncRequest { .. }
            )
        {
            // A node we had not heard from (new, or one we declared dead that was only slow):
            // get its full state instead of trusting that we saw every delta.
            tracing::info!(node = from, "new peer on the bus");
            self.send(
                &BusMessage::SyncRequest {
                    node: me,
                    target: Some(from),
                },
                None,
            );
        }
        if let BusMessage::SyncRequest { target, .. } = &message {
            if target.is_none_or(|t| t == me) {
                self.publish_state();
            }
            return;
        }
        let state_of = match &message {
            BusMessage::State { app, .. } => Some(app.clone()),
            _ => None,
        };
        match wire::apply(&self.node, message) {
            Ok(removed) => {
                if let (Some(app), Some(hook), false) =
                    (state_of, &self.on_node_gone, removed.is_empty())
                {
                    hook(&app, removed);
                }
            }
            Err(err) => {
                bump(&self.stats.dropped_invalid, 1);
                tracing::warn!(node = from, %err, "dropping an invalid bus message");
            }
        }
    }

    fn reap(&self) {
        let connected_for = self.connected_since.lock().map(|t| t.elapsed());
        // Only judge others while we can hear them, and not before they had time to speak.
        if connected_for.is_none_or(|d| d < self.config.node_timeout) {
            return;
        }
        let dead: Vec<u64> = {
            let mut peers = self.peers.lock();
            let dead: Vec<u64> = peers
                .iter()
                .filter(|(_, seen)| seen.elapsed() > self.config.node_timeout)
                .map(|(id, _)| *id)
                .collect();
            for id in &dead {
                peers.remove(id);
            }
            dead
        };
        for id in dead {
            tracing::warn!(
                node = id,
                "node stopped heartbeating: removing its connections"
            );
            bump(&self.stats.nodes_reaped, 1);
            for app in self.node.apps() {
                let removed = app.forget_node(id);
                if let (Some(hook), false) = (&self.on_node_gone, removed.is_empty()) {
                    hook(app.id(), removed);
                }
            }
        }
    }
}

impl Broker for RedisBroker {
    fn publish(&self, envelope: Envelope) -> Delivery {
        let inner = &self.0;
        let Some(app) = inner.node.app_by_id(&envelope.app_id) else {
            return Delivery::default();
        };
        if let Some((event, data)) = &envelope.cache {
            app.store_cache(&envelope.channel, event, data, &envelope.frame);
        }
        let delivery = app.deliver(&envelope.channel, &envelope.frame, envelope.except);
        let cache = envelope.cache.as_ref().map(|(event, data)| {
            let expires_ms = wire::now_ms() + CACHE_TTL_MS;
            let value = serde_json::json!({"event": event, "data": data, "expires_ms": expires_ms});
            (
                format!("{}:{}", envelope.app_id, envelope.channel),
                value.to_string(),
            )
        });
        inner.send(&BusMessage::event(inner.node.id(), &envelope), cache);
        delivery
    }

    fn announce(&self, announcement: Announcement) {
        let message = BusMessage::from_announcement(self.0.node.id(), announcement);
        let _order = self.0.order.lock();
        self.0.send(&message, None);
    }

    fn terminate_user(&self, app_id: &str, user: &UserId) -> usize {
        let inner = &self.0;
        let local = inner
            .node
            .app_by_id(app_id)
            .map_or(0, |app| app.terminate_user(user));
        inner.send(
            &BusMessage::Terminate {
                node: inner.node.id(),
                app: app_id.to_owned(),
                user: user.0.clone(),
            },
            None,
        );
        local
    }
}

/// Sends queued messages in pipelines; the connection reconnects on its own.
async fn publisher(
    inner: Arc<Inner>,
    target: Target,
    mut rx: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let config = ConnectionManagerConfig::new()
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(1)
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let publish = if inner.config.sharded {
        "SPUBLISH"
    } else {
        "PUBLISH"
    };
    let mut conn: Option<RedisConn> = None;
    let mut batch = Vec::with_capacity(MAX_PIPELINE);
    let mut last_warning: Option<Instant> = None;
    loop {
        let first = tokio::select! {
            msg = rx.recv() => match msg { Some(m) => m, None => return },
            () = stop.cancelled() => return,
        };
        batch.push(first);
        while batch.len() < MAX_PIPELINE {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        for out in &batch {
            pipe.cmd(publish).arg(&inner.bus).arg(&out.payload).ignore();
            if let Some((field, value)) = &out.cache {
                pipe.cmd("HSET")
                    .arg(inner.cache_hash())
                    .arg(field)
                    .arg(value)
                    .ignore();
            }
        }
        let n = batch.len() as u64;
        let res = match &mut conn {
            Some(conn) => pipe.query_async::<()>(conn).await,
            None => match target.connection(config.clone()).await {
                Ok(mut fresh) => {
                    let res = pipe.query_async::<()>(&mut fresh).await;
                    conn = Some(fresh);
                    res
                }
                Err(err) => Err(err),
            },
        };
        match res {
            Ok(()) => bump(&inner.stats.publishes, n),
            Err(err) => {
                bump(&inner.stats.errors, 1);
                bump(&inner.stats.dropped_unsent, n);
                inner.state_dirty.store(true, Ordering::Relaxed);
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!(%err, dropped = n, "Redis publish failed: cross-node delivery is interrupted");
                    last_warning = Some(Instant::now());
                }
            }
        }
        batch.clear();
    }
}

/// Keeps a subscription to the bus, reconnecting with jittered backoff, and resyncs state after
/// every (re)connect so state lost in Redis or missed during an outage is rebuilt.
async fn subscriber(inner: Arc<Inner>, target: Target, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let res = tokio::select! {
            res = listen(&inner, &target, &mut first, &stop) => res,
            () = stop.cancelled() => return,
        };
        match res {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                *inner.connected_since.lock() = None;
                bump(&inner.stats.errors, 1);
                tracing::warn!("lost the Redis bus: serving local sockets only until it is back");
            }
            Err(err) => {
                bump(&inner.stats.errors, 1);
                tracing::warn!(%err, retry_in = ?backoff, "cannot subscribe to the Redis bus");
            }
        }
        let jitter = backoff.mul_f64(rand::thread_rng().gen_range(0.0..0.3));
        tokio::select! {
            () = tokio::time::sleep(backoff + jitter) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Subscribes, then handles bus messages until the connection is lost (`Ok`), or fails to
/// subscribe at all (`Err`).
async fn listen(
    inner: &Arc<Inner>,
    target: &Target,
    first: &mut bool,
    stop: &CancellationToken,
) -> redis::RedisResult<()> {
    let timeout = |what: &'static str| redis::RedisError::from((redis::ErrorKind::Io, what));
    match target {
        Target::Single(client) => {
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&inner.bus).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = tokio::time::timeout(Duration::from_secs(3), subscribed)
                .await
                .map_err(|_| timeout("timed out subscribing"))??;
            connected(inner, target, first).await;
            let mut stream = pubsub.into_on_message();
            while let Some(msg) = stream.next().await {
                inner.handle(msg.get_payload_bytes());
            }
        }
        Target::Cluster(nodes) => {
            // Sharded pub/sub arrives as RESP3 pushes on the cluster connection.
            let (tx, mut rx) = mpsc::unbounded_channel();
            let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx)
                .build()?;
            let subscribed = async {
                let mut conn = client.get_async_connection().await?;
                conn.ssubscribe(&inner.bus).await?;
                Ok::<_, redis::RedisError>(conn)
            };
            let _conn = tokio::time::timeout(Duration::from_secs(3), subscribed)
                .await
                .map_err(|_| timeout("timed out subscribing"))??;
            connected(inner, target, first).await;
            while let Some(push) = rx.recv().await {
                match push.kind {
                    redis::PushKind::SMessage => {
                        if let Some(redis::Value::BulkString(payload)) = push.data.get(1) {
                            inner.handle(payload);
                        }
                    }
                    redis::PushKind::Disconnection => break,
                    _ => {}
                }
                if stop.is_cancelled() {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Just (re)subscribed: resync state both ways and load the cache channels.
async fn connected(inner: &Arc<Inner>, target: &Target, first: &mut bool) {
    if !*first {
        bump(&inner.stats.reconnects, 1);
    }
    *first = false;
    tracing::info!(bus = %inner.bus, "subscribed to the Redis bus");
    *inner.connected_since.lock() = Some(Instant::now());
    inner.resync();
    load_caches(inner, target).await;
}

/// Loads the cache channels' last events, for a node that starts after they were published.
async fn load_caches(inner: &Inner, target: &Target) {
    let res = async {
        let mut conn = target.connection(ConnectionManagerConfig::new()).await?;
        let entries: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(inner.cache_hash())
            .query_async(&mut conn)
            .await?;
        let mut expired = Vec::new();
        for (field, value) in entries {
            match wire::apply_cache(&inner.node, &field, &value) {
                Ok(true) => {}
                Ok(false) => expired.push(field),
                Err(_) => bump(&inner.stats.dropped_invalid, 1),
            }
        }
        if !expired.is_empty() {
            redis::cmd("HDEL")
                .arg(inner.cache_hash())
                .arg(expired)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok::<(), redis::RedisError>(())
    }
    .await;
    if let Err(err) = res {
        tracing::warn!(%err, "could not load cache channels from Redis");
    }
}

/// Heartbeats, reaps silent peers, and resyncs after this node itself stalled.
async fn heartbeat(inner: Arc<Inner>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(inner.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let gap = last.elapsed();
        last = Instant::now();
        if inner.connected_since.lock().is_none() {
            continue;
        }
        if inner.state_dirty.swap(false, Ordering::Relaxed) {
            // Announcements were lost: others get our whole state again (they apply the diff).
            inner.publish_state();
        }
        if gap > inner.config.node_timeout {
            // We were frozen long enough for others to declare us dead: rebuild both ways.
            tracing::warn!(?gap, "this node stalled: resyncing cluster state");
            inner.resync();
        }
        let connections = inner
            .node
            .apps()
            .iter()
            .map(|app| (app.id().to_owned(), app.connection_count()))
            .collect();
        inner.send(
            &BusMessage::Heartbeat {
                node: inner.node.id(),
                connections,
            },
            None,
        );
        inner.reap();
    }
}

/// Parses a socket id that must belong to `node`.
fn socket_of(node: u64, socket: &str) -> Result<SocketId, wire::WireError> {
    match SocketId::parse(socket) {
        Some(id) if id.node == node => Ok(id),
        _ => Err(wire::WireError::Invalid("socket id")),
    }
}
