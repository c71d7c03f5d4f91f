//! What the admin console watches: a live stream of what happens in an app, and the cluster's
//! nodes and counts.
//!
//! Each [`AppState`](crate::AppState) has a [`Monitor`]. While nobody watches, [`Monitor::active`]
//! is one relaxed atomic load and callers build nothing: the fan-out path pays only that. A
//! watcher ([`Monitor::watch`]) receives [`MonitorRecord`]s through a bounded broadcast queue; a
//! watcher that falls behind is told how many records it missed instead of slowing anyone.
//!
//! Invariant: emitting never blocks and never allocates when inactive; a record never carries an
//! app secret.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

/// Records buffered for each watcher before it is told it fell behind.
pub const WATCHER_QUEUE: usize = 1024;

/// One thing that happened in an app, on one node.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MonitorEvent {
    ConnectionOpened {
        socket_id: String,
    },
    ConnectionClosed {
        socket_id: String,
        /// The WebSocket close code (4200 drain, 4201 ping timeout, 1000/1001 client...).
        code: u16,
        reason: String,
    },
    Subscribed {
        socket_id: String,
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
    Unsubscribed {
        socket_id: String,
        channel: String,
    },
    /// An event published through the HTTP API, as delivered on the record's node.
    Published {
        channel: String,
        event: String,
        /// Bytes of `data`.
        size: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        excluded_socket_id: Option<String>,
        /// Sockets on the record's node it was written to.
        reached: usize,
    },
    ClientEvent {
        socket_id: String,
        channel: String,
        event: String,
        size: usize,
    },
    Webhook {
        /// The webhook events' names (`channel_occupied`, `member_added`...).
        events: Vec<String>,
        ok: bool,
        /// HTTP status or the error, when not ok.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    LimitHit {
        #[serde(skip_serializing_if = "Option::is_none")]
        socket_id: Option<String>,
        /// Which limit (`client_events_per_second`, `max_connections`, `outbox`...).
        limit: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
    },
    /// Records were left out on the record's node because the stream was busy (sampling).
    Sampled {
        dropped: u64,
    },
}

/// A [`MonitorEvent`] with where and when it happened.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MonitorRecord {
    /// Node id, as a decimal string.
    pub node: String,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    #[serde(flatten)]
    pub event: MonitorEvent,
}

/// What a watcher receives.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorItem {
    Record(Arc<MonitorRecord>),
    /// This watcher fell behind and missed this many records.
    Missed(u64),
}

/// One app's live event stream on this node.
#[derive(Debug)]
pub struct Monitor {
    /// True while anyone watches (here, or on another node, for cluster forwarding).
    active: AtomicBool,
    local_watchers: Arc<AtomicUsize>,
    tx: broadcast::Sender<Arc<MonitorRecord>>,
}

impl Default for Monitor {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(WATCHER_QUEUE);
        Monitor {
            active: AtomicBool::new(false),
            local_watchers: Arc::new(AtomicUsize::new(0)),
            tx,
        }
    }
}

impl Monitor {
    /// Whether anyone watches: check it before building a record.
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Hands a record to the watchers (and, in a cluster, to the forwarder). Call only when
    /// [`active`](Self::active).
    pub fn emit(&self, node: u64, event: MonitorEvent) {
        self.publish(Arc::new(MonitorRecord {
            node: node.to_string(),
            time_ms: now_ms(),
            event,
        }));
    }

    /// Hands a finished record (one from another node) to this node's watchers.
    pub fn publish(&self, record: Arc<MonitorRecord>) {
        let _ = self.tx.send(record);
    }

    /// Starts watching; the stream ends when the returned watch is dropped.
    pub fn watch(&self) -> MonitorWatch {
        let rx = self.tx.subscribe();
        self.local_watchers.fetch_add(1, Ordering::AcqRel);
        self.active.store(true, Ordering::Relaxed);
        MonitorWatch {
            rx,
            watchers: self.local_watchers.clone(),
        }
    }

    /// Watchers on this node.
    pub fn local_watchers(&self) -> usize {
        self.local_watchers.load(Ordering::Acquire)
    }

    /// Recomputes `active` (call periodically: a dropped watch does not clear it at once).
    pub fn refresh(&self) {
        self.active
            .store(self.local_watchers() > 0, Ordering::Relaxed);
    }
}

/// A watcher of one app's stream.
#[derive(Debug)]
pub struct MonitorWatch {
    rx: broadcast::Receiver<Arc<MonitorRecord>>,
    watchers: Arc<AtomicUsize>,
}

impl MonitorWatch {
    /// The next record, or how many were missed; `None` once the app is gone.
    pub async fn recv(&mut self) -> Option<MonitorItem> {
        match self.rx.recv().await {
            Ok(record) => Some(MonitorItem::Record(record)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(MonitorItem::Missed(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Drop for MonitorWatch {
    fn drop(&mut self) {
        self.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One node of the cluster, as this node knows it (`GET /admin/api/nodes`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeView {
    /// Node id, as a decimal string.
    pub id: String,
    /// True for the node that answered.
    pub this_node: bool,
    /// Unix time in milliseconds the node started.
    pub started_at_ms: u64,
    /// Open connections on the node, every app.
    pub connections: usize,
    /// Open connections per app id.
    pub apps: BTreeMap<String, usize>,
    /// Unix time in milliseconds this node last heard from it (now, for this node).
    pub last_seen_ms: u64,
}

/// An app's live counts, cluster-wide (`GET /admin/api/apps`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AppCounts {
    pub connections: usize,
    pub occupied_channels: usize,
    /// Events accepted (HTTP API publishes and client events) per second, over the last seconds.
    pub messages_in_per_second: f64,
    /// Messages written to sockets per second, over the last seconds.
    pub messages_out_per_second: f64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
