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
//!
//! Where things are: this file holds [`ClusterBroker`], its shared state and the [`Broker`]
//! operations; `settings.rs` its settings and `stats.rs` its counters; `hooks.rs` what it tells
//! its owner (deliveries, a dead node's subscriptions, a lost log); `routing.rs` which shard
//! carries a message; `outbound.rs` what goes onto the bus; `inbound.rs` what reading the bus
//! does to this node; `tasks.rs` the long-running tasks that move both.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use herald_core::{
    Acceptance, Announcement, Broker, Delivery, Durability, Envelope, Node, Unavailable,
};
use herald_protocol::UserId;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::transport::{Kept, Transport};
use crate::wire::{self, BusMessage};

mod hooks;
mod inbound;
mod outbound;
mod routing;
mod settings;
mod stats;
mod tasks;
#[cfg(test)]
mod tests;

pub use herald_core::DeliveryHook;
pub use hooks::{Hooks, SubscriptionsHook};
pub use settings::{ClusterSettings, ShardBy};
pub use stats::BrokerStats;

use outbound::Queued;
use stats::bump;

/// How long a cache channel's last event is kept for nodes that start later.
const CACHE_TTL_MS: u64 = 30 * 60 * 1000;

/// The broker's state, shared by its handles ([`ClusterBroker`]) and its tasks.
struct Inner<T> {
    node: Arc<Node>,
    settings: ClusterSettings,
    transport: T,
    tx: mpsc::Sender<Queued>,
    stats: Arc<BrokerStats>,
    /// Other nodes and when we last heard from them.
    peers: Mutex<HashMap<u64, Instant>>,
    /// Set while every shard of the bus is being read.
    connected_since: Mutex<Option<Instant>>,
    /// Shards currently being read.
    shards_up: AtomicUsize,
    /// Shards whose backfill was read (this node's `CaughtUp` mark came back); each counts once.
    shards_caught_up: AtomicUsize,
    /// Wall-clock ms when the node started: entries older than this are backfill.
    started_ms: u64,
    /// Held while announcing and while snapshotting state, so a `State` never overtakes, or is
    /// overtaken by, a delta about the same socket on the bus.
    order: Mutex<()>,
    /// Some announcement was lost (queue full, transport error): republish the full state.
    state_dirty: AtomicBool,
    /// The last batch handed to the transport failed.
    publish_failing: AtomicBool,
    /// What the owner is told: deliveries, other nodes' lost subscriptions, a lost log.
    hooks: Hooks,
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
    /// cluster when the transport answers. `hooks` is all the broker tells its owner.
    pub fn start(
        node: Arc<Node>,
        settings: ClusterSettings,
        transport: T,
        tracker: &TaskTracker,
        stop: CancellationToken,
        hooks: Hooks,
    ) -> ClusterBroker<T> {
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let shards = settings.shards.max(1);
        let inner = Arc::new(Inner {
            node,
            settings,
            transport,
            tx,
            stats: Arc::default(),
            peers: Mutex::default(),
            connected_since: Mutex::default(),
            shards_up: AtomicUsize::new(0),
            shards_caught_up: AtomicUsize::new(0),
            started_ms: wire::now_ms(),
            order: Mutex::new(()),
            state_dirty: AtomicBool::new(false),
            publish_failing: AtomicBool::new(false),
            hooks,
        });
        tracker.spawn(tasks::publisher(inner.clone(), rx, stop.clone()));
        for shard in 0..shards {
            tracker.spawn(tasks::subscriber(inner.clone(), shard, stop.clone()));
        }
        tracker.spawn(tasks::forward_monitors(inner.clone(), stop.clone()));
        tracker.spawn(tasks::heartbeat(inner.clone(), stop));
        ClusterBroker(inner)
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
        self.0.is_caught_up()
    }

    /// The engine underneath, for what goes beyond the bus (ordered logs).
    pub fn transport(&self) -> &T {
        &self.0.transport
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
        inner.hooks.delivered(app.id(), delivery);
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
            .filter(|(_, silent)| *silent > inner.settings.heartbeat_interval)
            .map(|(node, silent)| (node, u64::try_from(silent.as_millis()).unwrap_or(u64::MAX)))
            .collect()
    }
}
