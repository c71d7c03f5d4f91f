//! What the admin console watches: a live stream of what happens in an app, and the cluster's
//! nodes and counts.
//!
//! Each [`AppState`](crate::AppState) has a [`Monitor`]. While nobody watches, [`Monitor::active`]
//! is one relaxed atomic load and callers build nothing: the fan-out path pays only that. A
//! watcher ([`Monitor::watch`]) receives [`MonitorRecord`]s through a bounded broadcast queue; a
//! watcher that falls behind is told how many records it missed instead of slowing anyone.
//!
//! While watched, at most [`RECORDS_PER_SECOND`] records per second are published for an app on
//! one node; the others are only counted, and one `Sampled { dropped }` record per second says
//! how many were left out. A record left out is never built (the event is made by a closure
//! called only once the record is admitted).
//!
//! In a cluster, a node with a local watcher announces it on the bus every heartbeat; the other
//! nodes then keep the app's monitor active ([`Monitor::remote_watch`]) and send their records
//! to the bus in batches ([`Monitor::take_forward`]), which the watching node hands to its
//! watchers ([`Monitor::publish`], after [`MonitorRecord::from_remote`] validated them).
//!
//! [`Traffic`] holds an app's message counters (in: HTTP publishes and client events accepted on
//! this node; out: messages written to this node's sockets) and samples of every node's counters,
//! from which [`AppCounts`]' per-second rates are computed.
//!
//! Invariant: emitting never blocks and never allocates when inactive; a record never carries an
//! app secret or event data (only sizes).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use herald_protocol::SocketId;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::outbox::clock_ms;
use crate::outcome::{Outcome, SessionLimit};

/// Records buffered for each watcher before it is told it fell behind.
pub const WATCHER_QUEUE: usize = 1024;

/// Records published per second for one app on one node while watched; the rest are counted
/// and reported once a second as `Sampled { dropped }`.
pub const RECORDS_PER_SECOND: u32 = 500;

/// Records waiting to be sent to the nodes that watch (sent every
/// [`FORWARD_INTERVAL_MS`]); more are counted as dropped.
pub const FORWARD_QUEUE: usize = RECORDS_PER_SECOND as usize;

/// How often a node sends its records for remotely watched apps to the bus.
pub const FORWARD_INTERVAL_MS: u64 = 150;

/// Longest string accepted in a record from another node.
const MAX_REMOTE_TEXT: usize = 1024;
/// Most webhook event names accepted in a record from another node.
const MAX_REMOTE_NAMES: usize = 100;

/// The window over which message rates are computed.
const RATE_WINDOW_MS: u64 = 5_000;

/// One thing that happened in an app, on one node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MonitorRecord {
    /// Node id, as a decimal string.
    pub node: String,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    #[serde(flatten)]
    pub event: MonitorEvent,
}

impl MonitorEvent {
    /// What a session's handling of a message shows in the stream, if anything.
    pub fn from_outcome(socket: SocketId, outcome: &Outcome) -> Option<MonitorEvent> {
        if matches!(
            outcome,
            Outcome::Nothing
                | Outcome::SubscribeRejected
                | Outcome::ClientEventRejected
                | Outcome::SignedIn
                | Outcome::SigninRejected
        ) {
            return None;
        }
        let socket_id = socket.to_string();
        Some(match outcome {
            Outcome::Subscribed { channel, user, .. } => MonitorEvent::Subscribed {
                socket_id,
                channel: channel.to_string(),
                user_id: user.as_ref().map(|u| u.0.clone()),
            },
            Outcome::Unsubscribed(left) => MonitorEvent::Unsubscribed {
                socket_id,
                channel: left.channel.to_string(),
            },
            Outcome::ClientEvent {
                channel,
                event,
                data,
                ..
            } => MonitorEvent::ClientEvent {
                socket_id,
                channel: channel.to_string(),
                event: event.clone(),
                size: data.len(),
            },
            Outcome::LimitReached(limit) => MonitorEvent::LimitHit {
                socket_id: Some(socket_id),
                limit: limit_name(*limit).to_owned(),
                channel: None,
            },
            Outcome::Nothing
            | Outcome::SubscribeRejected
            | Outcome::ClientEventRejected
            | Outcome::SignedIn
            | Outcome::SigninRejected => return None,
        })
    }

    /// Whether a record from another node is within bounds and speaks only for its own sockets.
    fn is_valid_from(&self, node: u64) -> bool {
        let text = |s: &str| s.len() <= MAX_REMOTE_TEXT;
        let socket = |s: &str| SocketId::parse(s).is_some_and(|id| id.node == node);
        match self {
            MonitorEvent::ConnectionOpened { socket_id } => socket(socket_id),
            MonitorEvent::ConnectionClosed {
                socket_id, reason, ..
            } => socket(socket_id) && text(reason),
            MonitorEvent::Subscribed {
                socket_id,
                channel,
                user_id,
            } => socket(socket_id) && text(channel) && user_id.as_deref().is_none_or(text),
            MonitorEvent::Unsubscribed { socket_id, channel } => socket(socket_id) && text(channel),
            MonitorEvent::Published {
                channel,
                event,
                excluded_socket_id,
                ..
            } => {
                text(channel)
                    && text(event)
                    && excluded_socket_id
                        .as_deref()
                        .is_none_or(|s| SocketId::parse(s).is_some())
            }
            MonitorEvent::ClientEvent {
                socket_id,
                channel,
                event,
                ..
            } => socket(socket_id) && text(channel) && text(event),
            MonitorEvent::Webhook { events, error, .. } => {
                events.len() <= MAX_REMOTE_NAMES
                    && events.iter().all(|e| text(e))
                    && error.as_deref().is_none_or(text)
            }
            MonitorEvent::LimitHit {
                socket_id,
                limit,
                channel,
            } => {
                socket_id.as_deref().is_none_or(socket)
                    && text(limit)
                    && channel.as_deref().is_none_or(text)
            }
            MonitorEvent::Sampled { .. } => true,
        }
    }
}

/// The `limit` a session limit is reported as.
fn limit_name(limit: SessionLimit) -> &'static str {
    match limit {
        SessionLimit::ChannelsPerConnection => "max_channels_per_connection",
        SessionLimit::PresenceMembers => "max_presence_members",
        SessionLimit::ClientEventRate => "client_events_per_second",
        SessionLimit::ClientEventSize => "max_message_size",
    }
}

impl MonitorRecord {
    /// A record another node (`node`) sent on the bus: decoded, checked (bounded strings, only
    /// that node's sockets) and stamped with that node's id. `None` when it fails.
    pub fn from_remote(node: u64, value: serde_json::Value) -> Option<MonitorRecord> {
        let mut record: MonitorRecord = serde_json::from_value(value).ok()?;
        if !record.event.is_valid_from(node) {
            return None;
        }
        record.node = node.to_string();
        Some(record)
    }
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
    /// The node whose records [`Monitor::emit_with`] makes.
    node: u64,
    local_watchers: Arc<AtomicUsize>,
    /// Made at the first watch: an app nobody ever watched holds no queue.
    tx: OnceLock<broadcast::Sender<Arc<MonitorRecord>>>,
    /// Sampling: the second ([`clock_ms`] / 1000) being counted, the records published in it,
    /// and those left out since the last `Sampled` record.
    window: AtomicU64,
    admitted: AtomicU32,
    dropped: AtomicU64,
    /// [`clock_ms`] until which another node watches this app (0: none ever did).
    remote_until_ms: AtomicU64,
    /// This node's records waiting to be sent to the watching nodes.
    forward: Mutex<Vec<Arc<MonitorRecord>>>,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor::new(0)
    }
}

impl Monitor {
    /// The monitor of an app on node `node`.
    pub fn new(node: u64) -> Monitor {
        Monitor {
            active: AtomicBool::new(false),
            node,
            local_watchers: Arc::new(AtomicUsize::new(0)),
            tx: OnceLock::new(),
            window: AtomicU64::new(0),
            admitted: AtomicU32::new(0),
            dropped: AtomicU64::new(0),
            remote_until_ms: AtomicU64::new(0),
            forward: Mutex::new(Vec::new()),
        }
    }

    /// Whether anyone watches: check it before building a record.
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Records what `event` builds, if anyone watches and the second's budget
    /// ([`RECORDS_PER_SECOND`]) allows; `event` is not called otherwise. The hot-path form: one
    /// relaxed load while nobody watches.
    #[inline]
    pub fn emit_with(&self, event: impl FnOnce() -> MonitorEvent) {
        if self.active() && self.admit(clock_ms() / 1000) {
            self.record(self.node, event());
        }
    }

    /// Hands a record to the watchers (and, in a cluster, to the forwarder). Call only when
    /// [`active`](Self::active); it is sampled like [`emit_with`](Self::emit_with).
    pub fn emit(&self, node: u64, event: MonitorEvent) {
        if self.admit(clock_ms() / 1000) {
            self.record(node, event);
        }
    }

    /// Counts one record in second `second`: true when it is to be published. A new second
    /// first reports what the last ones left out.
    fn admit(&self, second: u64) -> bool {
        self.roll(second);
        if self.admitted.fetch_add(1, Ordering::Relaxed) < RECORDS_PER_SECOND {
            return true;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Starts counting `second` if it is a new one, and publishes `Sampled` for what was
    /// left out before.
    fn roll(&self, second: u64) {
        let window = self.window.load(Ordering::Relaxed);
        if window >= second
            || self
                .window
                .compare_exchange(window, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.admitted.store(0, Ordering::Relaxed);
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            self.record(self.node, MonitorEvent::Sampled { dropped });
        }
    }

    /// Publishes a record made here to the local watchers and queues it for watching nodes.
    fn record(&self, node: u64, event: MonitorEvent) {
        let record = Arc::new(MonitorRecord {
            node: node.to_string(),
            time_ms: now_ms(),
            event,
        });
        if self.forwarding() {
            let mut forward = self.forward.lock();
            if forward.len() < FORWARD_QUEUE {
                forward.push(record.clone());
            } else {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.publish(record);
    }

    /// Hands a finished record (one from another node) to this node's watchers.
    pub fn publish(&self, record: Arc<MonitorRecord>) {
        if let Some(tx) = self.tx.get() {
            let _ = tx.send(record);
        }
    }

    /// Starts watching; the stream ends when the returned watch is dropped.
    pub fn watch(&self) -> MonitorWatch {
        let tx = self.tx.get_or_init(|| broadcast::channel(WATCHER_QUEUE).0);
        let rx = tx.subscribe();
        self.local_watchers.fetch_add(1, Ordering::SeqCst);
        self.active.store(true, Ordering::SeqCst);
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
        let watched = || {
            self.local_watchers.load(Ordering::SeqCst) > 0
                || self.remote_until_ms.load(Ordering::SeqCst) > clock_ms()
        };
        if watched() {
            self.active.store(true, Ordering::SeqCst);
            return;
        }
        self.active.store(false, Ordering::SeqCst);
        // A watch that began meanwhile (`watch` counts itself, then sets `active`) keeps it set.
        if watched() {
            self.active.store(true, Ordering::SeqCst);
            return;
        }
        let until = self.remote_until_ms.load(Ordering::SeqCst);
        if until != 0
            && self
                .remote_until_ms
                .compare_exchange(until, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            // The remote watch ended: what was not sent is for nobody.
            *self.forward.lock() = Vec::new();
        }
    }

    /// The periodic upkeep (about once a second): [`refresh`](Self::refresh), and the `Sampled`
    /// record of a busy second that nothing followed.
    pub fn tick(&self) {
        self.tick_at(clock_ms() / 1000);
    }

    fn tick_at(&self, second: u64) {
        self.refresh();
        if self.active() {
            self.roll(second);
        }
    }

    /// Another node watches this app for the next `ttl_ms`: records made here are queued for
    /// it ([`take_forward`](Self::take_forward)).
    pub fn remote_watch(&self, ttl_ms: u64) {
        self.remote_until_ms
            .fetch_max(clock_ms().saturating_add(ttl_ms), Ordering::SeqCst);
        self.active.store(true, Ordering::SeqCst);
    }

    /// Whether another node watches this app.
    pub fn forwarding(&self) -> bool {
        self.remote_until_ms.load(Ordering::Relaxed) > clock_ms()
    }

    /// The records made here since the last call, for the watching nodes (at most
    /// [`FORWARD_QUEUE`]).
    pub fn take_forward(&self) -> Vec<Arc<MonitorRecord>> {
        let mut forward = self.forward.lock();
        if forward.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut *forward)
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

/// One app's message counters on this node, and samples of every node's counters, from which
/// the cluster-wide rates are computed.
#[derive(Debug, Default)]
pub struct Traffic {
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    /// Per node (this one included): counter samples of the last [`RATE_WINDOW_MS`], oldest
    /// first, and one older.
    samples: Mutex<HashMap<u64, VecDeque<Sample>>>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// [`clock_ms`] when taken.
    at_ms: u64,
    messages_in: u64,
    messages_out: u64,
}

/// Most samples kept per node (one a second, or one a heartbeat, is the usual pace).
const MAX_SAMPLES: usize = 32;

impl Traffic {
    /// Events accepted here: HTTP publishes (per channel, as handed to the broker) and client
    /// events.
    #[inline]
    pub fn count_in(&self, n: u64) {
        self.messages_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Messages written to this node's sockets.
    #[inline]
    pub fn count_out(&self, n: u64) {
        self.messages_out.fetch_add(n, Ordering::Relaxed);
    }

    /// This node's counters since it started: `(in, out)`.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.messages_in.load(Ordering::Relaxed),
            self.messages_out.load(Ordering::Relaxed),
        )
    }

    /// Records `node`'s counters as of now (from its heartbeat, or this node's own upkeep).
    pub fn sample(&self, node: u64, (messages_in, messages_out): (u64, u64)) {
        self.sample_at(node, messages_in, messages_out, clock_ms());
    }

    /// Records another node's counters from its heartbeat. The first time a node is heard, its
    /// counters' zero point (its start, `started_at_ms` on the wall clock) is recorded too, so
    /// what it did before its first heartbeat reached this node counts in the rates.
    pub fn sample_peer(&self, node: u64, started_at_ms: u64, counters: (u64, u64)) {
        let now = clock_ms();
        self.seed_at(
            node,
            now.saturating_sub(now_ms().saturating_sub(started_at_ms)),
        );
        self.sample_at(node, counters.0, counters.1, now);
    }

    /// Records a zero sample at `at_ms` for a node not sampled yet.
    fn seed_at(&self, node: u64, at_ms: u64) {
        self.samples.lock().entry(node).or_insert_with(|| {
            VecDeque::from([Sample {
                at_ms,
                messages_in: 0,
                messages_out: 0,
            }])
        });
    }

    fn sample_at(&self, node: u64, messages_in: u64, messages_out: u64, at_ms: u64) {
        let mut samples = self.samples.lock();
        let node = samples.entry(node).or_default();
        node.push_back(Sample {
            at_ms,
            messages_in,
            messages_out,
        });
        // Keep one sample at least RATE_WINDOW_MS old, so the window is always covered.
        while node.len() > MAX_SAMPLES
            || (node.len() > 2 && node[1].at_ms + RATE_WINDOW_MS <= at_ms)
        {
            node.pop_front();
        }
    }

    /// Forgets a node that left the cluster.
    pub fn forget(&self, node: u64) {
        self.samples.lock().remove(&node);
    }

    /// Messages in and out per second, summed over every node, over about the last
    /// [`RATE_WINDOW_MS`]. `local` is this node's id: its live counters are the newest point.
    pub fn rates(&self, local: u64) -> (f64, f64) {
        self.rates_at(local, clock_ms())
    }

    fn rates_at(&self, local: u64, now_ms: u64) -> (f64, f64) {
        let (live_in, live_out) = self.totals();
        let samples = self.samples.lock();
        let mut rates = (0.0, 0.0);
        for (node, samples) in samples.iter() {
            let (Some(oldest), Some(newest)) = (samples.front(), samples.back()) else {
                continue;
            };
            let newest = if *node == local {
                Sample {
                    at_ms: now_ms,
                    messages_in: live_in,
                    messages_out: live_out,
                }
            } else {
                *newest
            };
            // A node silent for two windows counts for nothing (it is being reaped).
            if newest.at_ms + 2 * RATE_WINDOW_MS < now_ms || newest.at_ms <= oldest.at_ms {
                continue;
            }
            let seconds = (newest.at_ms - oldest.at_ms) as f64 / 1000.0;
            rates.0 += newest.messages_in.saturating_sub(oldest.messages_in) as f64 / seconds;
            rates.1 += newest.messages_out.saturating_sub(oldest.messages_out) as f64 / seconds;
        }
        rates
    }
}

/// What this node knows of the other nodes, from their heartbeats.
#[derive(Debug, Default)]
pub(crate) struct Peers(Mutex<BTreeMap<u64, Peer>>);

#[derive(Debug, Clone)]
struct Peer {
    started_at_ms: u64,
    apps: BTreeMap<String, usize>,
    last_seen_ms: u64,
}

impl Peers {
    pub(crate) fn heard(&self, node: u64, started_at_ms: u64, apps: BTreeMap<String, usize>) {
        self.0.lock().insert(
            node,
            Peer {
                started_at_ms,
                apps,
                last_seen_ms: now_ms(),
            },
        );
    }

    pub(crate) fn forget(&self, node: u64) {
        self.0.lock().remove(&node);
    }

    pub(crate) fn views(&self) -> Vec<NodeView> {
        self.0
            .lock()
            .iter()
            .map(|(id, peer)| NodeView {
                id: id.to_string(),
                this_node: false,
                started_at_ms: peer.started_at_ms,
                connections: peer.apps.values().fold(0, |a, n| a.saturating_add(*n)),
                apps: peer.apps.clone(),
                last_seen_ms: peer.last_seen_ms,
            })
            .collect()
    }
}

/// The event name and the size of `data` of a channel event's frame
/// (`{"event":..,"channel":..,"data":..}`): the data's length as framed (a JSON string's
/// escaped content, without its quotes). Only called while watched.
pub(crate) fn frame_event(frame: &[u8]) -> (String, usize) {
    #[derive(Deserialize)]
    struct Shape<'a> {
        #[serde(default)]
        event: String,
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    match serde_json::from_slice::<Shape<'_>>(frame) {
        Ok(shape) => {
            let data = shape.data.map_or("", |d| d.get());
            let size = match data.strip_prefix('"').and_then(|d| d.strip_suffix('"')) {
                Some(inner) => inner.len(),
                None => data.len(),
            };
            (shape.event, size)
        }
        Err(_) => (String::new(), 0),
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(seq: u64) -> MonitorEvent {
        MonitorEvent::ConnectionOpened {
            socket_id: format!("1.{seq}"),
        }
    }

    /// `emit_with` at an explicit second.
    fn emit_at(monitor: &Monitor, second: u64, event: MonitorEvent) {
        if monitor.active() && monitor.admit(second) {
            monitor.record(monitor.node, event);
        }
    }

    fn drain(watch: &mut MonitorWatch) -> Vec<MonitorItem> {
        let mut items = Vec::new();
        loop {
            match watch.rx.try_recv() {
                Ok(record) => items.push(MonitorItem::Record(record)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    items.push(MonitorItem::Missed(n))
                }
                Err(_) => return items,
            }
        }
    }

    #[test]
    fn an_unwatched_monitor_builds_nothing_and_holds_no_queue() {
        let monitor = Monitor::new(1);
        assert!(!monitor.active());
        for _ in 0..10_000 {
            monitor.emit_with(|| unreachable!("an event built while nobody watches"));
        }
        assert!(
            monitor.tx.get().is_none(),
            "no queue before the first watch"
        );
        assert!(monitor.forward.lock().capacity() == 0);
        assert_eq!(monitor.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_busy_second_is_sampled_and_says_how_many_records_it_left_out() {
        let monitor = Monitor::new(1);
        let mut watch = monitor.watch();
        let extra = 250;
        let mut built = 0;
        for seq in 0..u64::from(RECORDS_PER_SECOND) + extra {
            if monitor.active() && monitor.admit(10) {
                built += 1;
                monitor.record(1, opened(seq));
            }
        }
        assert_eq!(
            built, RECORDS_PER_SECOND,
            "records over the bound are never built"
        );
        // The next second starts with the count of what the last one left out.
        emit_at(&monitor, 11, opened(9999));
        let items = drain(&mut watch);
        assert_eq!(items.len(), RECORDS_PER_SECOND as usize + 2);
        let events: Vec<&MonitorEvent> = items
            .iter()
            .map(|i| match i {
                MonitorItem::Record(r) => &r.event,
                MonitorItem::Missed(_) => panic!("the watcher kept up"),
            })
            .collect();
        assert_eq!(
            events[RECORDS_PER_SECOND as usize],
            &MonitorEvent::Sampled { dropped: extra }
        );
        assert_eq!(events.last().unwrap(), &&opened(9999));
        // A quiet second after a busy one reports nothing more.
        emit_at(&monitor, 12, opened(1));
        assert_eq!(drain(&mut watch).len(), 1);
        // The records' JSON is the stream's shape.
        let json = serde_json::to_value(&*match &items[RECORDS_PER_SECOND as usize] {
            MonitorItem::Record(r) => r.clone(),
            MonitorItem::Missed(_) => unreachable!(),
        })
        .unwrap();
        assert_eq!(json["type"], "sampled");
        assert_eq!(json["dropped"], extra);
        assert_eq!(json["node"], "1");
    }

    #[test]
    fn tick_reports_a_busy_second_that_nothing_followed() {
        let monitor = Monitor::new(1);
        let mut watch = monitor.watch();
        for seq in 0..u64::from(RECORDS_PER_SECOND) + 3 {
            emit_at(&monitor, 5, opened(seq));
        }
        assert_eq!(drain(&mut watch).len(), RECORDS_PER_SECOND as usize);
        monitor.tick_at(6);
        let items = drain(&mut watch);
        assert!(matches!(
            &items[..],
            [MonitorItem::Record(r)] if r.event == MonitorEvent::Sampled { dropped: 3 }
        ));
    }

    #[test]
    fn active_follows_local_and_remote_watchers() {
        let monitor = Monitor::new(1);
        let watch = monitor.watch();
        let second = monitor.watch();
        assert!(monitor.active());
        assert_eq!(monitor.local_watchers(), 2);
        drop(watch);
        monitor.refresh();
        assert!(monitor.active(), "one watcher is left");
        drop(second);
        assert!(
            monitor.active(),
            "cleared by the periodic refresh, not at once"
        );
        monitor.tick();
        assert!(!monitor.active());
        assert_eq!(monitor.local_watchers(), 0);

        // Another node watches: records are queued for it, bounded, and taken in batches.
        monitor.remote_watch(60_000);
        assert!(monitor.active() && monitor.forwarding());
        monitor.refresh();
        assert!(monitor.active(), "still watched remotely");
        for seq in 0..3 {
            monitor.emit_with(|| opened(seq));
        }
        let batch = monitor.take_forward();
        assert_eq!(batch.len(), 3);
        assert_eq!(batch[0].node, "1");
        assert!(monitor.take_forward().is_empty());
        for seq in 0..FORWARD_QUEUE as u64 * 2 {
            monitor.record(1, opened(seq));
        }
        assert_eq!(monitor.take_forward().len(), FORWARD_QUEUE);

        // A remote watch that expired leaves the monitor inactive at the next refresh, and its
        // unsent records are let go.
        let other = Monitor::new(2);
        other.remote_watch(0);
        assert!(!other.forwarding());
        other.forward.lock().push(Arc::new(MonitorRecord {
            node: "2".into(),
            time_ms: 0,
            event: opened(1),
        }));
        other.refresh();
        assert!(!other.active());
        assert!(other.forward.lock().capacity() == 0);
    }

    #[test]
    fn records_from_other_nodes_are_validated_and_stamped() {
        let ok = serde_json::json!({"node": "7", "time_ms": 5, "type": "subscribed",
            "socket_id": "3.1", "channel": "news"});
        let record = MonitorRecord::from_remote(3, ok).unwrap();
        assert_eq!(record.node, "3");
        assert_eq!(
            record.event,
            MonitorEvent::Subscribed {
                socket_id: "3.1".into(),
                channel: "news".into(),
                user_id: None
            }
        );
        let long = "x".repeat(MAX_REMOTE_TEXT + 1);
        for bad in [
            serde_json::json!({"node": "3", "time_ms": 5, "type": "subscribed", "socket_id": "4.1", "channel": "news"}),
            serde_json::json!({"node": "3", "time_ms": 5, "type": "subscribed", "socket_id": "3.1", "channel": long}),
            serde_json::json!({"node": "3", "time_ms": 5, "type": "nonsense"}),
            serde_json::json!({"node": "3", "type": "sampled", "dropped": 1}),
            serde_json::json!({"node": "3", "time_ms": 5, "type": "webhook", "ok": true,
                "events": vec!["e"; MAX_REMOTE_NAMES + 1]}),
            serde_json::json!([1, 2]),
        ] {
            assert!(
                MonitorRecord::from_remote(3, bad.clone()).is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn rates_sum_every_nodes_counter_deltas() {
        let traffic = Traffic::default();
        traffic.sample_at(2, 0, 0, 1_000);
        traffic.sample_at(2, 200, 1_000, 3_000);
        traffic.sample_at(1, 0, 0, 1_000);
        traffic.count_in(100);
        traffic.count_out(100);
        let (messages_in, messages_out) = traffic.rates_at(1, 2_000);
        assert!((messages_in - 200.0).abs() < 1e-9, "{messages_in}");
        assert!((messages_out - 600.0).abs() < 1e-9, "{messages_out}");
        // Old samples leave the window; a silent node stops counting.
        for t in 4..20 {
            traffic.sample_at(2, 200, 1_000, t * 1_000);
        }
        assert!(traffic.samples.lock()[&2].len() <= 7);
        assert_eq!(traffic.rates_at(3, 19_500), (0.0, 0.0));
        assert_eq!(traffic.rates_at(3, 60_000), (0.0, 0.0));
        traffic.forget(2);
        assert!(!traffic.samples.lock().contains_key(&2));
    }

    #[test]
    fn a_peer_heard_after_it_delivered_still_counts_what_it_delivered() {
        let traffic = Traffic::default();
        // Node 2 started at 1 s, delivered 4 messages, and is first heard at 3 s.
        traffic.seed_at(2, 1_000);
        traffic.sample_at(2, 0, 4, 3_000);
        let (_, messages_out) = traffic.rates_at(1, 3_000);
        assert!((messages_out - 2.0).abs() < 1e-9, "{messages_out}");
        // Seeding again changes nothing once it was sampled.
        traffic.seed_at(2, 2_999);
        assert_eq!(traffic.samples.lock()[&2].len(), 2);
    }

    #[test]
    fn a_frame_gives_its_event_name_and_data_size() {
        let frame = herald_protocol::server_message::channel_event("my-event", "news", "hello");
        assert_eq!(frame_event(frame.as_bytes()), ("my-event".into(), 5));
        assert_eq!(frame_event(b"not json"), (String::new(), 0));
    }
}
