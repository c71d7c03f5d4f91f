//! The cluster protocol: many herald nodes act as one over any [`Transport`].
//!
//! Every node appends to, and reads, one bus: ordered logs (shards; an app's announcements all go
//! to one shard, its events to the app's or the channel's shard). The bus carries events
//! (delivered by every node to its local subscribers, in the log's order, the publishing node
//! included) and each node's announcements of its own state (subscriptions, presence
//! identities, sign-ins, connection counts, departures for replay), which every other node
//! replicates into `herald-core`'s remote view. Every node reads each shard in one order, so
//! every node reaches the same presence decisions on its own. A reader that was disconnected
//! resumes where it stopped and gets what it missed from the log; what the log no longer holds is
//! a gap, which the node's subscribers hear about (`herald:resume_failed`, reason `log_lost`).
//! Heartbeats find dead nodes; every (re)connection resyncs state both ways.
//!
//! Invariants:
//! - Nothing here blocks a socket task: `publish` and `announce` enqueue for the transport without
//!   waiting; a full queue drops and counts. `accept` (HTTP publishes) resolves when the event is
//!   on the log, or refuses at once when the bus is down.
//! - Everything read from the transport is untrusted: decoded with validation, and what does not
//!   parse is dropped and counted, never a panic.
//! - A node's own view of itself never depends on the transport: local delivery goes on during
//!   an outage.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::monitor::FORWARD_INTERVAL_MS;
use herald_core::{
    Acceptance, Announcement, Broker, Delivery, Durability, Envelope, Node, Position,
    SubscriptionEntry, Unavailable,
};
use herald_protocol::UserId;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::transport::{BusItem, Kept, Outgoing, Transport};
use crate::wire::{self, BusMessage, Placement};

/// Largest bus message accepted from the transport.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Most messages handed to the transport in one batch (one Redis pipeline).
const MAX_BATCH: usize = 512;
/// How long a cache channel's last event is kept for nodes that start later.
const CACHE_TTL_MS: u64 = 30 * 60 * 1000;
/// How long a subscription attempt may take before it counts as failed.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Reconnect backoff bounds; each wait adds up to 30% jitter. The maximum keeps cross-node
/// delivery back within a second of the transport's return.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// How far back a starting node reads the bus, to fill its channels' histories for replay.
const BACKFILL: Duration = Duration::from_secs(120);

/// Which shard of the bus carries an app's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardBy {
    /// Every event of an app in the app's shard (with its announcements): one order per app.
    App,
    /// Each channel's events in the channel's shard: one app's traffic spreads over every shard;
    /// order is kept per channel, which is all a subscriber can see.
    Channel,
}

/// The protocol's timing and queue settings (the transport has its own).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub heartbeat_interval: Duration,
    /// A node silent this long is considered dead and its members are removed.
    pub node_timeout: Duration,
    /// Messages waiting for the transport before new ones are dropped (and counted).
    pub queue_capacity: usize,
    /// Logs the bus is spread over (each on its own Redis hash slot); at least 1.
    pub shards: usize,
    pub shard_by: ShardBy,
}

/// Counters the server exports as metrics.
#[derive(Debug, Default)]
pub struct BrokerStats {
    pub publishes: AtomicU64,
    pub receives: AtomicU64,
    pub reconnects: AtomicU64,
    pub errors: AtomicU64,
    /// Not sent because the transport was unreachable or the queue was full.
    pub dropped_unsent: AtomicU64,
    /// Received but rejected: not valid JSON or failing validation.
    pub dropped_invalid: AtomicU64,
    /// Nodes declared dead and removed.
    pub nodes_reaped: AtomicU64,
    /// Publishes refused (503) because the bus was down or its queue full.
    pub publishes_refused: AtomicU64,
    /// Entries read from the log after a reconnect (what pub/sub would have lost).
    pub gap_entries_filled: AtomicU64,
    /// Gaps the log could not fill (trimmed, or the engine lost its data).
    pub gaps_lost: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Called with an app id and the subscriptions a dead node held in it.
pub type NodeGoneHook = Arc<dyn Fn(&str, Vec<SubscriptionEntry>) + Send + Sync>;

/// Called with an app id and what delivering one event read from the bus did on this node (for
/// metrics: in a cluster an HTTP publish is answered before any node delivers it).
pub type DeliveryHook = Arc<dyn Fn(&str, Delivery) + Send + Sync>;

struct Inner<T> {
    node: Arc<Node>,
    config: ClusterConfig,
    transport: T,
    tx: mpsc::Sender<Queued>,
    stats: Arc<BrokerStats>,
    /// Other nodes and when we last heard from them.
    peers: Mutex<HashMap<u64, Instant>>,
    /// Set while every shard of the bus is being read.
    connected_since: Mutex<Option<Instant>>,
    /// Shards currently being read.
    shards_up: std::sync::atomic::AtomicUsize,
    /// Shards whose backfill was read (this node's `CaughtUp` mark came back); each counts once.
    shards_caught_up: std::sync::atomic::AtomicUsize,
    /// Wall-clock ms when the node started: entries older than this are backfill.
    started_ms: u64,
    /// Told about the subscriptions of a node declared dead (for webhooks).
    on_node_gone: Option<NodeGoneHook>,
    /// Held while announcing and while snapshotting state, so a `State` never overtakes, or is
    /// overtaken by, a delta about the same socket on the bus.
    order: Mutex<()>,
    /// Some announcement was lost (queue full, transport error): republish the full state.
    state_dirty: AtomicBool,
    /// The last batch handed to the transport failed.
    publish_failing: AtomicBool,
    on_delivery: std::sync::OnceLock<DeliveryHook>,
    /// Told, per app, this node's own subscriptions after the log lost entries (webhooks put
    /// them back into their store, which may have lost them with the log).
    on_log_lost: std::sync::OnceLock<NodeGoneHook>,
}

impl<T: Transport> std::fmt::Debug for Inner<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBroker")
            .field("node", &self.node.id())
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// The cluster protocol over the transport `T`: the [`Broker`] of a node in a cluster.
#[derive(Debug)]
pub struct ClusterBroker<T: Transport>(Arc<Inner<T>>);

impl<T: Transport> Clone for ClusterBroker<T> {
    fn clone(&self) -> Self {
        ClusterBroker(self.0.clone())
    }
}

impl<T: Transport> ClusterBroker<T> {
    /// Starts the publisher, subscriber and heartbeat tasks on `tracker`, until `stop`. The
    /// transport need not be reachable: the node serves its own sockets meanwhile and joins the
    /// cluster when the transport answers.
    pub fn start(
        node: Arc<Node>,
        config: ClusterConfig,
        transport: T,
        tracker: &TaskTracker,
        stop: CancellationToken,
        on_node_gone: Option<NodeGoneHook>,
    ) -> ClusterBroker<T> {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let shards = config.shards.max(1);
        let inner = Arc::new(Inner {
            node,
            config,
            transport,
            tx,
            stats: Arc::default(),
            peers: Mutex::default(),
            connected_since: Mutex::default(),
            shards_up: std::sync::atomic::AtomicUsize::new(0),
            shards_caught_up: std::sync::atomic::AtomicUsize::new(0),
            started_ms: wire::now_ms(),
            on_node_gone,
            order: Mutex::new(()),
            state_dirty: AtomicBool::new(false),
            publish_failing: AtomicBool::new(false),
            on_delivery: std::sync::OnceLock::new(),
            on_log_lost: std::sync::OnceLock::new(),
        });
        tracker.spawn(publisher(inner.clone(), rx, stop.clone()));
        for shard in 0..shards {
            tracker.spawn(subscriber(inner.clone(), shard, stop.clone()));
        }
        tracker.spawn(forward_monitors(inner.clone(), stop.clone()));
        tracker.spawn(heartbeat(inner.clone(), stop));
        ClusterBroker(inner)
    }

    /// Sets what is told of every delivery of an event read from the bus (once).
    pub fn on_delivery(&self, hook: DeliveryHook) {
        let _ = self.0.on_delivery.set(hook);
    }

    /// Sets what is told this node's subscriptions (per app) after the log lost entries.
    pub fn on_log_lost(&self, hook: NodeGoneHook) {
        let _ = self.0.on_log_lost.set(hook);
    }

    pub fn stats(&self) -> Arc<BrokerStats> {
        self.0.stats.clone()
    }

    /// Whether the node is currently subscribed to the bus.
    pub fn is_connected(&self) -> bool {
        self.0.connected_since.lock().is_some()
    }

    /// Whether the node has read every shard's log up to when it started: the departures and
    /// events a client resuming here needs are known. Stays true once it was.
    pub fn is_caught_up(&self) -> bool {
        self.0.shards_caught_up.load(Ordering::Acquire) >= self.0.shards()
    }

    /// The engine underneath, for what goes beyond the bus (ordered logs).
    pub fn transport(&self) -> &T {
        &self.0.transport
    }
}

/// A message waiting for the transport, and who waits for it to be on the log.
struct Queued {
    /// `None` for a barrier: only its `ack`, once everything queued before it was handled.
    out: Option<Outgoing>,
    ack: Option<oneshot::Sender<bool>>,
}

/// A stable hash (FNV-1a), so that every node maps a key to the same shard.
fn shard_of(key: &str, shards: usize) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % shards.max(1) as u64) as usize
}

impl<T: Transport> Inner<T> {
    fn shards(&self) -> usize {
        self.config.shards.max(1)
    }

    /// The shard of a message about `app` (and, for events, `channel`).
    fn shard(&self, app: &str, channel: Option<&str>) -> usize {
        match (self.config.shard_by, channel) {
            (ShardBy::Channel, Some(channel)) => {
                shard_of(&format!("{app}\u{0}{channel}"), self.shards())
            }
            _ => shard_of(app, self.shards()),
        }
    }

    /// The shard a message goes to: its app's (or its event's channel's); node-wide messages
    /// (heartbeats, sync requests) go to shard 0.
    fn shard_for(&self, message: &BusMessage) -> usize {
        match message {
            BusMessage::Event { app, channel, .. } => self.shard(app, Some(channel)),
            BusMessage::Subscribed { app, .. }
            | BusMessage::Unsubscribed { app, .. }
            | BusMessage::SignedIn { app, .. }
            | BusMessage::SignedOut { app, .. }
            | BusMessage::Terminate { app, .. }
            | BusMessage::State { app, .. }
            | BusMessage::Departed { app, .. }
            | BusMessage::Resumed { app, .. }
            | BusMessage::Watching { app, .. }
            | BusMessage::Monitor { app, .. } => self.shard(app, None),
            BusMessage::Heartbeat { .. } | BusMessage::SyncRequest { .. } => 0,
            BusMessage::CaughtUp { shard, .. } => *shard % self.shards(),
        }
    }

    fn encode(&self, message: &BusMessage, keep: Option<Kept>) -> Option<Outgoing> {
        match serde_json::to_vec(message) {
            Ok(bytes) => Some(Outgoing {
                shard: self.shard_for(message),
                message: Bytes::from(bytes),
                keep,
            }),
            Err(err) => {
                tracing::error!(%err, "could not encode a bus message");
                None
            }
        }
    }

    /// Sends a message whose loss needs no repair (monitor traffic): a full queue drops it
    /// (counted), without marking the state for a resync.
    fn send_best_effort(&self, message: &BusMessage) {
        self.enqueue(message, None);
    }

    /// Sends a message; if the queue is full it is dropped (counted) and the state marked for a
    /// resync, which repairs what the loss left out.
    fn send(&self, message: &BusMessage, keep: Option<Kept>) {
        if !self.enqueue(message, keep) {
            self.state_dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Queues `message` for the publisher; false when the queue was full (counted as unsent).
    fn enqueue(&self, message: &BusMessage, keep: Option<Kept>) -> bool {
        let Some(out) = self.encode(message, keep) else {
            return true;
        };
        let queued = Queued {
            out: Some(out),
            ack: None,
        };
        if self.tx.try_send(queued).is_err() {
            bump(&self.stats.dropped_unsent, 1);
            return false;
        }
        true
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

    fn handle(&self, position: Position, payload: &[u8], caught_up: &mut CatchUp<'_>) {
        bump(&self.stats.receives, 1);
        let backfill = position.ms < self.started_ms;
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
        if let BusMessage::CaughtUp { node, .. } = message {
            if node == me {
                caught_up.mark();
            }
            return;
        }
        if backfill {
            // Before this node started: only what replay needs (events, departures); the state
            // of other nodes comes from the resync.
            if matches!(
                message,
                BusMessage::Event { .. } | BusMessage::Departed { .. } | BusMessage::Resumed { .. }
            ) {
                if let Err(err) = wire::apply(&self.node, message, Placement::Backfill(position)) {
                    bump(&self.stats.dropped_invalid, 1);
                    tracing::debug!(%err, "dropping an invalid bus message");
                }
            }
            return;
        }
        if from == me {
            // Our own logged events are delivered here, in the log's order like everyone's;
            // everything else of ours was applied when it happened.
            let ours = matches!(
                &message,
                BusMessage::Event {
                    ephemeral: false,
                    ..
                }
            );
            if ours {
                match wire::apply(&self.node, message, Placement::Live(position)) {
                    Ok(applied) => self.delivered(applied),
                    Err(err) => {
                        bump(&self.stats.dropped_invalid, 1);
                        tracing::warn!(%err, "dropping an invalid bus message");
                    }
                }
            }
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
        match wire::apply(&self.node, message, Placement::Live(position)) {
            Ok(applied) => {
                if applied.invalid > 0 {
                    bump(&self.stats.dropped_invalid, applied.invalid as u64);
                }
                if let (Some(app), Some(hook), false) =
                    (state_of, &self.on_node_gone, applied.removed.is_empty())
                {
                    hook(&app, applied.removed);
                } else {
                    self.delivered(applied);
                }
            }
            Err(err) => {
                bump(&self.stats.dropped_invalid, 1);
                tracing::warn!(node = from, %err, "dropping an invalid bus message");
            }
        }
    }

    fn delivered(&self, applied: wire::Applied) {
        if let (Some((app, delivery)), Some(hook)) = (applied.delivered, self.on_delivery.get()) {
            hook(&app, delivery);
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
            self.node.forget_peer(id);
            for app in self.node.apps() {
                let removed = app.forget_node(id);
                if let (Some(hook), false) = (&self.on_node_gone, removed.is_empty()) {
                    hook(app.id(), removed);
                }
            }
        }
    }

    /// A shard is being read again: once every shard is, resync state both ways and load the
    /// cache channels.
    async fn connected(&self, first: &mut bool) {
        if !*first {
            bump(&self.stats.reconnects, 1);
        }
        *first = false;
        let up = self.shards_up.fetch_add(1, Ordering::AcqRel) + 1;
        if up < self.shards() {
            return;
        }
        tracing::info!(transport = ?self.transport, "reading the cluster bus");
        *self.connected_since.lock() = Some(Instant::now());
        self.resync();
        self.load_caches().await;
    }

    fn disconnected(&self) {
        self.shards_up.fetch_sub(1, Ordering::AcqRel);
        *self.connected_since.lock() = None;
    }

    /// The log could not give us everything after where we stopped: tell every app's
    /// subscribers on this node, and let no replay span the hole.
    fn gap(&self, shard: usize) {
        bump(&self.stats.gaps_lost, 1);
        let mut told = 0;
        for app in self.node.apps() {
            if self.shard(app.id(), None) == shard || self.config.shard_by == ShardBy::Channel {
                told += app.lose_history();
                if let Some(hook) = self.on_log_lost.get() {
                    hook(app.id(), app.local_state().subscriptions);
                }
            }
        }
        tracing::warn!(
            shard,
            told,
            "events on the cluster bus were lost (trimmed or Redis lost its data): subscribers were sent herald:resume_failed"
        );
    }

    /// Loads the cache channels' last events, for a node that starts after they were published.
    async fn load_caches(&self) {
        match self.transport.kept().await {
            Ok(entries) => {
                for (key, value) in entries {
                    let applied = std::str::from_utf8(&value)
                        .map_err(|_| wire::WireError::Invalid("cache value"))
                        .and_then(|value| wire::apply_cache(&self.node, &key, value));
                    if applied.is_err() {
                        bump(&self.stats.dropped_invalid, 1);
                    }
                }
            }
            Err(err) => tracing::warn!(%err, "could not load cache channels"),
        }
    }
}

impl<T: Transport> ClusterBroker<T> {
    fn keep(envelope: &Envelope) -> Option<Kept> {
        envelope.cache.as_ref().map(|(event, data)| {
            let expires_ms = wire::now_ms() + CACHE_TTL_MS;
            let value = serde_json::json!({"event": event, "data": data, "expires_ms": expires_ms});
            Kept {
                key: format!("{}:{}", envelope.app_id, envelope.channel),
                value: Bytes::from(value.to_string()),
                expires_ms,
            }
        })
    }
}

impl<T: Transport> Broker for ClusterBroker<T> {
    /// Client events: delivered here at once and sent on the bus, best effort (never logged).
    fn publish(&self, envelope: Envelope) -> Delivery {
        if envelope.durability != Durability::Ephemeral {
            // A logged event always takes the log's path, so that every node has one order.
            let acceptance = self.accept(envelope);
            drop(acceptance);
            return Delivery::default();
        }
        let inner = &self.0;
        let Some(app) = inner.node.app_by_id(&envelope.app_id) else {
            return Delivery::default();
        };
        let delivery = app.deliver(
            &envelope.channel,
            &envelope.frame,
            envelope.except,
            envelope.durability,
        );
        inner.send(&BusMessage::event(inner.node.id(), &envelope), None);
        delivery
    }

    /// HTTP publishes: on the log first, then delivered by every node (this one too) as it
    /// reads the log, so every subscriber everywhere sees the log's order.
    fn accept(&self, envelope: Envelope) -> Acceptance {
        let inner = &self.0;
        let refuse = || -> Acceptance {
            bump(&inner.stats.publishes_refused, 1);
            Box::pin(std::future::ready(Err(Unavailable)))
        };
        // While the transport is known to be failing and the bus is not being read, refuse at
        // once rather than queue behind failing batches. Otherwise the transport decides: a
        // node whose own reader is reconnecting may still append (it reads the event later).
        if inner.publish_failing.load(Ordering::Relaxed) && !self.is_connected() {
            return refuse();
        }
        let keep = Self::keep(&envelope);
        let Some(out) = inner.encode(&BusMessage::event(inner.node.id(), &envelope), keep) else {
            return refuse();
        };
        let (ack, acked) = oneshot::channel();
        if inner
            .tx
            .try_send(Queued {
                out: Some(out),
                ack: Some(ack),
            })
            .is_err()
        {
            return refuse();
        }
        let stats = inner.stats.clone();
        Box::pin(async move {
            if acked.await == Ok(true) {
                Ok(Delivery::default())
            } else {
                bump(&stats.publishes_refused, 1);
                Err(Unavailable)
            }
        })
    }

    fn announce(&self, announcement: Announcement) {
        let message = BusMessage::from_announcement(self.0.node.id(), announcement);
        let _order = self.0.order.lock();
        self.0.send(&message, None);
    }

    fn announced(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let (ack, acked) = oneshot::channel();
        let barrier = Queued {
            out: None,
            ack: Some(ack),
        };
        if self.0.tx.try_send(barrier).is_err() {
            // The queue is full: what is in it is not waited for.
            return Box::pin(std::future::ready(()));
        }
        Box::pin(async move {
            let _ = acked.await;
        })
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

    fn caught_up(&self) -> bool {
        self.is_caught_up()
    }

    fn silent_nodes(&self) -> Vec<(u64, u64)> {
        let inner = &self.0;
        inner
            .peers
            .lock()
            .iter()
            .map(|(node, seen)| (*node, seen.elapsed()))
            .filter(|(_, silent)| *silent > inner.config.heartbeat_interval)
            .map(|(node, silent)| (node, u64::try_from(silent.as_millis()).unwrap_or(u64::MAX)))
            .collect()
    }
}

/// Hands queued messages to the transport in batches (one pipeline each), and tells whoever
/// waits whether their message is on the log.
async fn publisher<T: Transport>(
    inner: Arc<Inner<T>>,
    mut rx: mpsc::Receiver<Queued>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut acks = Vec::with_capacity(MAX_BATCH);
    let mut last_warning: Option<Instant> = None;
    loop {
        let first = tokio::select! {
            msg = rx.recv() => match msg { Some(m) => m, None => return },
            () = stop.cancelled() => return,
        };
        let mut queued = Some(first);
        while let Some(Queued { out, ack }) = queued.take() {
            batch.extend(out);
            acks.extend(ack);
            if batch.len() < MAX_BATCH {
                queued = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            // Barriers only: everything before them was handled.
            for ack in acks.drain(..) {
                let _ = ack.send(true);
            }
            continue;
        }
        let n = batch.len() as u64;
        let res = inner.transport.publish(&batch).await;
        for ack in acks.drain(..) {
            let _ = ack.send(res.is_ok());
        }
        inner.publish_failing.store(res.is_err(), Ordering::Relaxed);
        match res {
            Ok(_) => bump(&inner.stats.publishes, n),
            Err(err) => {
                bump(&inner.stats.errors, 1);
                bump(&inner.stats.dropped_unsent, n);
                inner.state_dirty.store(true, Ordering::Relaxed);
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!(err = %error_chain(&err), dropped = n, "cluster publish failed: cross-node delivery is interrupted");
                    last_warning = Some(Instant::now());
                }
            }
        }
        batch.clear();
    }
}

/// One shard reader's progress through its backfill.
struct CatchUp<'a> {
    shard: usize,
    /// This shard's mark came back.
    done: &'a mut bool,
    /// Shards of the node whose mark came back.
    count: &'a std::sync::atomic::AtomicUsize,
}

impl CatchUp<'_> {
    fn mark(&mut self) {
        if !*self.done {
            *self.done = true;
            self.count.fetch_add(1, Ordering::AcqRel);
            tracing::debug!(
                shard = self.shard,
                "read the shard's log up to this node's start"
            );
        }
    }
}

/// Reads one shard of the bus, resuming after a disconnection where it stopped (the log fills
/// what was missed), with jittered backoff, and resyncs state after every (re)connect so state
/// lost in the transport or missed during an outage is rebuilt. A starting node first reads back
/// [`BACKFILL`] of the log, to fill its channels' histories for clients that resume here.
async fn subscriber<T: Transport>(inner: Arc<Inner<T>>, shard: usize, stop: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    let mut first = true;
    let mut caught_up_here = false;
    let start_ms = inner.started_ms.saturating_sub(BACKFILL.as_millis() as u64);
    let mut after = Some(Position {
        ms: start_ms,
        seq: 0,
    });
    loop {
        let subscribe = inner.transport.subscribe(shard, after);
        let res = tokio::select! {
            res = tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe) => res,
            () = stop.cancelled() => return,
        };
        match res {
            Ok(Ok(mut items)) => {
                backoff = MIN_BACKOFF;
                let resumed = !first;
                let connected_ms = wire::now_ms();
                inner.connected(&mut first).await;
                let mut caught_up = CatchUp {
                    shard,
                    done: &mut caught_up_here,
                    count: &inner.shards_caught_up,
                };
                if !*caught_up.done {
                    // Everything before this mark on the shard is what a client may resume from.
                    inner.send(
                        &BusMessage::CaughtUp {
                            node: inner.node.id(),
                            shard,
                        },
                        None,
                    );
                }
                loop {
                    tokio::select! {
                        item = items.next() => match item {
                            Some(BusItem::Entry(position, payload)) => {
                                after = Some(position);
                                if resumed && position.ms < connected_ms {
                                    // Appended while we were away: pub/sub would have lost it.
                                    bump(&inner.stats.gap_entries_filled, 1);
                                }
                                inner.handle(position, &payload, &mut caught_up);
                            }
                            // A gap while backfilling only means less history.
                            Some(BusItem::Gap) if !resumed => {}
                            Some(BusItem::Gap) => inner.gap(shard),
                            None => break,
                        },
                        () = stop.cancelled() => return,
                    }
                }
                inner.disconnected();
                bump(&inner.stats.errors, 1);
                tracing::warn!(shard, "lost the cluster bus: serving local sockets only, and refusing HTTP publishes, until it is back");
            }
            Ok(Err(err)) => {
                bump(&inner.stats.errors, 1);
                tracing::warn!(err = %error_chain(&err), retry_in = ?backoff, "cannot subscribe to the cluster bus");
            }
            Err(_) => {
                bump(&inner.stats.errors, 1);
                tracing::warn!(retry_in = ?backoff, "timed out subscribing to the cluster bus");
            }
        }
        let jitter = backoff.mul_f64(rand::thread_rng().gen_range(0.0..0.3));
        tokio::select! {
            () = tokio::time::sleep(backoff + jitter) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Heartbeats, reaps silent peers, and resyncs after this node itself stalled.
async fn heartbeat<T: Transport>(inner: Arc<Inner<T>>, stop: CancellationToken) {
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
        if !ClusterBroker(inner.clone()).is_caught_up() {
            // A mark lost on its way (a full queue, a failed append) is sent again; a shard
            // already caught up ignores a second one.
            for shard in 0..inner.shards() {
                inner.send_best_effort(&BusMessage::CaughtUp {
                    node: inner.node.id(),
                    shard,
                });
            }
        }
        if gap > inner.config.node_timeout {
            // We were frozen long enough for others to declare us dead: rebuild both ways.
            tracing::warn!(?gap, "this node stalled: resyncing cluster state");
            inner.resync();
        }
        let apps = inner.node.apps();
        let connections = apps
            .iter()
            .map(|app| (app.id().to_owned(), app.connection_count()))
            .collect();
        let messages = apps
            .iter()
            .map(|app| (app.id().to_owned(), app.traffic().totals()))
            .collect();
        inner.send(
            &BusMessage::Heartbeat {
                node: inner.node.id(),
                connections,
                started_at_ms: inner.node.started_at_ms(),
                messages,
            },
            None,
        );
        inner.reap();
    }
}

/// The monitor's cluster side, every [`FORWARD_INTERVAL_MS`]: announces the apps watched here
/// (at once, then every heartbeat, for three heartbeats each), and sends this node's records of
/// the apps watched elsewhere, in one batch per app. Best effort: monitor traffic is never
/// repaired, and costs nothing while nobody watches (one relaxed load per app per round).
async fn forward_monitors<T: Transport>(inner: Arc<Inner<T>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(FORWARD_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let every = inner.config.heartbeat_interval;
    let ttl_ms = u64::try_from(every.saturating_mul(3).as_millis()).unwrap_or(u64::MAX);
    let me = inner.node.id();
    // When each app watched here was last announced.
    let mut announced: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        if inner.connected_since.lock().is_none() {
            continue;
        }
        for app in inner.node.apps() {
            let monitor = app.monitor();
            if !monitor.active() {
                continue;
            }
            if monitor.local_watchers() > 0 {
                let due = announced
                    .get(app.id())
                    .is_none_or(|at| at.elapsed() >= every);
                if due {
                    announced.insert(app.id().to_owned(), Instant::now());
                    inner.send_best_effort(&BusMessage::Watching {
                        node: me,
                        app: app.id().to_owned(),
                        ttl_ms,
                    });
                }
            }
            let records = monitor.take_forward();
            if records.is_empty() {
                continue;
            }
            let records = records
                .iter()
                .filter_map(|record| serde_json::to_value(&**record).ok())
                .collect();
            inner.send_best_effort(&BusMessage::Monitor {
                node: me,
                app: app.id().to_owned(),
                records,
            });
        }
        announced.retain(|app, _| {
            inner
                .node
                .app_by_id(app)
                .is_some_and(|a| a.monitor().local_watchers() > 0)
        });
    }
}

/// An error and its sources on one line, so a log says why (a transport error wraps the cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use herald_core::{App, NodeLimits, Outbox, PresenceMember};
    use herald_protocol::{ChannelName, SocketId};

    use super::*;
    use crate::memory::MemoryHub;

    const WAIT: Duration = Duration::from_secs(5);

    struct TestNode {
        node: Arc<Node>,
        broker: ClusterBroker<crate::MemoryTransport>,
    }

    fn start(
        hub: &MemoryHub,
        id: u64,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> TestNode {
        let node = Arc::new(Node::new(id, vec![App::demo()], NodeLimits::default()));
        let config = ClusterConfig {
            heartbeat_interval: Duration::from_millis(50),
            node_timeout: Duration::from_millis(500),
            queue_capacity: 1024,
            shards: 2,
            shard_by: ShardBy::Channel,
        };
        let broker = ClusterBroker::start(
            node.clone(),
            config,
            hub.transport(),
            tracker,
            stop.clone(),
            None,
        );
        TestNode { node, broker }
    }

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn frames(outbox: &Outbox) -> Vec<String> {
        outbox
            .take()
            .0
            .iter()
            .map(|f| String::from_utf8_lossy(f.text()).into_owned())
            .collect()
    }

    /// `announced` resolves only once what was announced before it is on the log (a drain
    /// sends its 4200 after that).
    #[tokio::test]
    async fn announced_waits_until_earlier_announcements_are_on_the_log() {
        use futures_util::FutureExt;
        use herald_core::history::{Departure, Identity, Position};

        let (hub, tracker, stop) = (
            MemoryHub::new(),
            TaskTracker::new(),
            CancellationToken::new(),
        );
        let a = start(&hub, 1, &tracker, &stop);
        until("subscribed", || a.broker.is_connected()).await;
        let transport = hub.transport();
        let mut readers = Vec::new();
        for shard in 0..2 {
            readers.push(
                transport
                    .subscribe(shard, Some(Position::START))
                    .await
                    .unwrap(),
            );
        }
        let on_log = |readers: &mut Vec<crate::Subscription>| {
            let mut entries = Vec::new();
            for reader in readers.iter_mut() {
                while let Some(Some(BusItem::Entry(_, message))) = reader.next().now_or_never() {
                    entries.push(String::from_utf8_lossy(&message).into_owned());
                }
            }
            entries
        };
        // A barrier alone resolves too.
        tokio::time::timeout(WAIT, a.broker.announced())
            .await
            .unwrap();
        a.broker.announce(Announcement::Departed {
            app_id: "1".into(),
            channel: ChannelName::parse("news", 200).unwrap(),
            identities: vec![Identity::User(UserId("departing-user".into()))],
            departure: Departure {
                after: Position { ms: 1, seq: 0 },
                socket: SocketId { node: 1, seq: 7 },
                left_ms: 1,
            },
        });
        a.broker.announced().await;
        let entries = on_log(&mut readers);
        assert!(
            entries.iter().any(|e| e.contains("departing-user")),
            "the departure is on the log when announced() resolves: {entries:?}"
        );
        stop.cancel();
        tracker.close();
        tokio::time::timeout(WAIT, tracker.wait()).await.unwrap();
    }

    /// A starting node reports caught up only once it has read the log back to its start: a
    /// departure announced before it started is known to it by then, so a client drained from
    /// another node and sent here by a balancer that follows `/ready` resumes.
    #[tokio::test]
    async fn a_starting_node_is_caught_up_once_it_read_what_the_log_held_before_it() {
        use herald_core::history::{Departure, Identity, Position};

        let (hub, tracker, stop) = (
            MemoryHub::new(),
            TaskTracker::new(),
            CancellationToken::new(),
        );
        let a = start(&hub, 1, &tracker, &stop);
        until("A caught up", || a.broker.is_caught_up()).await;
        let channel = ChannelName::parse("news", 200).unwrap();
        let identities = vec![Identity::User(UserId("drained-user".into()))];
        a.broker.announce(Announcement::Departed {
            app_id: "1".into(),
            channel: channel.clone(),
            identities: identities.clone(),
            departure: Departure {
                after: Position { ms: 1, seq: 0 },
                socket: SocketId { node: 1, seq: 7 },
                left_ms: 1,
            },
        });
        tokio::time::timeout(WAIT, a.broker.announced())
            .await
            .unwrap();

        let b = start(&hub, 2, &tracker, &stop);
        // Nothing has run yet on this (single-threaded) runtime: B has read nothing.
        assert!(!b.broker.is_caught_up());
        assert!(!b.broker.caught_up());
        until("B caught up", || b.broker.is_caught_up()).await;
        let app_b = b.node.app_by_id("1").unwrap();
        let resume = app_b.take_resume(&identities, &channel);
        assert_eq!(
            resume.map(|r| r.old_socket),
            Some(SocketId { node: 1, seq: 7 })
        );

        stop.cancel();
        tracker.close();
        tokio::time::timeout(WAIT, tracker.wait()).await.unwrap();
    }

    #[tokio::test]
    async fn state_events_garbage_and_node_loss_over_a_hub() {
        let (hub, tracker) = (MemoryHub::new(), TaskTracker::new());
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        let a = start(&hub, 1, &tracker, &stop_a);
        let b = start(&hub, 2, &tracker, &stop_b);
        until("both subscribed", || {
            a.broker.is_connected() && b.broker.is_connected()
        })
        .await;
        let channel = ChannelName::parse("presence-room", 200).unwrap();
        let (app_a, app_b) = (
            a.node.app_by_id("1").unwrap().clone(),
            b.node.app_by_id("1").unwrap().clone(),
        );

        // B's member is replicated to A.
        let outbox = Outbox::new(1 << 20);
        let socket = SocketId { node: 2, seq: 1 };
        let alice = UserId("alice".into());
        let member = PresenceMember {
            user_id: alice.clone(),
            user_info: None,
        };
        app_b
            .subscribe(socket, &outbox, &channel, Some(member))
            .unwrap();
        b.broker.announce(Announcement::Subscribed {
            app_id: "1".into(),
            entry: SubscriptionEntry {
                channel: channel.clone(),
                socket,
                user: Some(alice),
                user_info: None,
                cookie: None,
            },
        });
        until("A replicates B's member", || {
            app_a.channel_info(&channel).user_count == Some(1)
        })
        .await;
        frames(&outbox);

        // Garbage is dropped and counted; A's event still reaches B's socket, once.
        let garbage = Outgoing {
            shard: 0,
            message: Bytes::from_static(b"{\"t\":\"nonsense\"}"),
            keep: None,
        };
        hub.transport().publish(&[garbage]).await.unwrap();
        let frame = herald_protocol::server_message::channel_event("e", "presence-room", "hi");
        let delivery = a.broker.publish(Envelope {
            app_id: "1".into(),
            channel: channel.clone(),
            frame: herald_core::Frame::new(frame.clone()),
            except: None,
            cache: None,
            durability: herald_core::Durability::Logged,
        });
        assert_eq!(delivery.delivered, 0, "nobody is on A");
        let mut got = Vec::new();
        until("B delivers A's event", || {
            got.extend(frames(&outbox));
            !got.is_empty()
        })
        .await;
        assert_eq!(got, [frame]);
        assert_eq!(b.broker.stats().dropped_invalid.load(Ordering::Relaxed), 1);

        // B goes silent: A declares it dead once and forgets its member.
        stop_b.cancel();
        until("A reaps B", || {
            app_a.channel_info(&channel).user_count == Some(0)
        })
        .await;
        assert_eq!(a.broker.stats().nodes_reaped.load(Ordering::Relaxed), 1);
        stop_a.cancel();
        tracker.close();
        tokio::time::timeout(WAIT, tracker.wait()).await.unwrap();
    }
}
