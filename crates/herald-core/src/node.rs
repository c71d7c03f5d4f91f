//! The node: every app it serves (the registry), the node-wide connection count, the node's
//! socket ids and what it knows of the other nodes.
//!
//! One app's state is [`AppState`] ([`crate::app_state`]); `Node` finds it by id or key.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use herald_protocol::SocketId;

use crate::app::{App, NodeLimits};
use crate::monitor::{now_ms, NodeView, Peers};
use crate::outbox::Outbox;
use crate::registry::AppRegistry;

// AppState and the types of its API, at the path they had before `app_state.rs`.
pub use crate::app_state::{
    AppState, CacheInfo, ChannelInfo, ConnectionRefused, ContinuityStats, Delivery, Durability,
    Leaving, LocalState, PresenceMember, Subscribed, SubscriptionEntry, Unsubscribed, CACHE_TTL,
};

/// All apps served by this node, and the node-wide connection count.
#[derive(Debug)]
pub struct Node {
    id: u64,
    /// Unix time in milliseconds the node started.
    started_at_ms: u64,
    next_seq: AtomicU64,
    apps: AppRegistry,
    pub limits: NodeLimits,
    connections: AtomicUsize,
    /// The other nodes, from their heartbeats.
    peers: Peers,
}

impl Node {
    pub fn new(id: u64, apps: Vec<App>, limits: NodeLimits) -> Node {
        let registry = AppRegistry::for_node(id);
        registry.replace(apps);
        Node {
            id,
            started_at_ms: now_ms(),
            next_seq: AtomicU64::new(1),
            apps: registry,
            limits,
            connections: AtomicUsize::new(0),
            peers: Peers::default(),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The app with this key, as it is now: look it up per request, do not keep it.
    pub fn app_by_key(&self, key: &str) -> Option<Arc<AppState>> {
        self.apps.by_key(key)
    }

    /// The app with this id, as it is now: look it up per request, do not keep it.
    pub fn app_by_id(&self, id: &str) -> Option<Arc<AppState>> {
        self.apps.by_id(id)
    }

    /// Every app, as of now.
    pub fn apps(&self) -> Vec<Arc<AppState>> {
        self.apps.all()
    }

    /// The app registry, to add, change and remove apps while the node runs.
    pub fn registry(&self) -> &AppRegistry {
        &self.apps
    }

    /// Every open connection's outbox, on every app.
    pub fn outboxes(&self) -> Vec<Outbox> {
        self.apps
            .all()
            .iter()
            .flat_map(|app| app.outboxes())
            .collect()
    }

    /// Expires channel histories of every app (at most once a second each): the timer half of
    /// "an idle channel costs nothing after its window".
    pub fn sweep_history(&self) {
        for app in self.apps.all() {
            app.sweep_if_due();
        }
    }

    /// A new cluster-unique socket id.
    pub fn next_socket_id(&self) -> SocketId {
        SocketId {
            node: self.id,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Counts a connection against the node limit; false when the node is full.
    pub fn try_add_connection(&self, max: usize) -> bool {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn remove_connection(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Unix time in milliseconds the node started.
    pub fn started_at_ms(&self) -> u64 {
        self.started_at_ms
    }

    /// The cluster's nodes as this node knows them (the others from their heartbeats), this
    /// node first.
    pub fn nodes(&self) -> Vec<NodeView> {
        let apps = self
            .apps
            .all()
            .iter()
            .map(|app| (app.id().to_owned(), app.connection_count()))
            .collect();
        let mut nodes = vec![NodeView {
            id: self.id.to_string(),
            this_node: true,
            started_at_ms: self.started_at_ms,
            connections: self.connection_count(),
            apps,
            last_seen_ms: now_ms(),
        }];
        nodes.extend(self.peers.views());
        nodes
    }

    /// A heartbeat of `node`: when it started and its connections per app (unknown apps are
    /// left out).
    pub fn heard_from(&self, node: u64, started_at_ms: u64, connections: &[(&str, usize)]) {
        if node == self.id {
            return;
        }
        let apps: BTreeMap<String, usize> = connections
            .iter()
            .filter(|(app, _)| self.apps.by_id(app).is_some())
            .map(|(app, n)| ((*app).to_owned(), *n))
            .collect();
        self.peers.heard(node, started_at_ms, apps);
    }

    /// `node` left the cluster (it stopped heartbeating).
    pub fn forget_peer(&self, node: u64) {
        self.peers.forget(node);
        for app in self.apps.all() {
            app.traffic().forget(node);
        }
    }

    /// The monitors' periodic upkeep (about once a second): each app's monitor is refreshed
    /// (inactive once its last watcher left) and its message counters sampled for the rates.
    pub fn tick_monitors(&self) {
        for app in self.apps.all() {
            app.monitor().tick();
            app.traffic().sample(self.id, app.traffic().totals());
        }
    }
}
