//! Pusher's webhooks (protocol doc 1.18): `channel_occupied`, `channel_vacated`, `member_added`,
//! `member_removed`, `client_event`, `cache_miss` and `subscription_count`, signed with the app
//! secret, delayed and retried as Pusher does, decided once for the whole cluster.
//!
//! Socket tasks only `try_send` a [`Fact`] (what happened on this node); a processor task turns
//! facts into webhook jobs through the [`Store`] (any herald-core `WebhookStore`: memory here,
//! Redis from herald-redis), and a sender task delivers due jobs.
//!
//! The subsystem always runs, so that webhook targets added at runtime (a SIGHUP reload) work at
//! once; while no app has a target it is idle: facts are not built and the sender does not read
//! the store.
//!
//! Invariant: nothing here blocks the fan-out path or a socket task; the fact queue is bounded and
//! its overflow is counted (`herald_webhooks_dropped_total{reason="queue_full"}`).

mod sender;
mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_core::session::{Left, Outcome};
use herald_core::{App, AppSecret, SubscriptionEntry};
use herald_protocol::{ChannelKind, ChannelName, SocketId, UserId};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, WebhookTarget, WebhooksConfig};
use crate::metrics;
use store::WebhookStoreResult;
pub use store::{Job, MemoryStore, Store};

/// Channels with more subscribers than this get `subscription_count` webhooks at most every 5 s.
const SUBSCRIPTION_COUNT_THROTTLE_ABOVE: usize = 100;
const SUBSCRIPTION_COUNT_INTERVAL: Duration = Duration::from_secs(5);
/// Several clients subscribing to the same empty cache channel make one `cache_miss` webhook.
const CACHE_MISS_DEDUP: Duration = Duration::from_secs(60);

/// Something that happened on this node that may make a webhook.
#[derive(Debug)]
pub enum Fact {
    Joined {
        app: String,
        channel: ChannelName,
        socket: SocketId,
        user: Option<UserId>,
    },
    Left {
        app: String,
        channel: ChannelName,
        socket: SocketId,
        user: Option<UserId>,
    },
    ClientEvent {
        app: String,
        channel: ChannelName,
        event: String,
        data: String,
        socket: SocketId,
        user: Option<UserId>,
    },
    CacheMiss {
        app: String,
        channel: ChannelName,
    },
    /// A subscription of this node, put back into the store's bookkeeping after the store may
    /// have lost it (Redis restarted empty): no webhook, only the sets that decide later ones.
    Restored {
        app: String,
        channel: ChannelName,
        socket: SocketId,
        user: Option<UserId>,
    },
}

impl Fact {
    fn channel(&self) -> &ChannelName {
        match self {
            Fact::Joined { channel, .. }
            | Fact::Left { channel, .. }
            | Fact::ClientEvent { channel, .. }
            | Fact::CacheMiss { channel, .. }
            | Fact::Restored { channel, .. } => channel,
        }
    }

    fn app(&self) -> &str {
        match self {
            Fact::Joined { app, .. }
            | Fact::Left { app, .. }
            | Fact::ClientEvent { app, .. }
            | Fact::CacheMiss { app, .. }
            | Fact::Restored { app, .. } => app,
        }
    }
}

/// An app's webhook configuration.
#[derive(Debug, Clone)]
pub struct AppHooks {
    pub key: String,
    pub secret: AppSecret,
    pub targets: Vec<WebhookTarget>,
}

/// Every app with a webhook target, with what signing and sending its webhooks takes.
/// `webhook_url` (the node-wide target) goes to the first app, as at start-up.
pub fn hooks_for(apps: &[App], webhook_url: Option<&str>) -> HashMap<String, AppHooks> {
    let targets = Config::webhook_targets_of(apps, webhook_url);
    apps.iter()
        .filter_map(|app| {
            let targets = targets.get(&app.id)?.clone();
            Some((
                app.id.clone(),
                AppHooks {
                    key: app.key.clone(),
                    secret: app.secret.clone(),
                    targets,
                },
            ))
        })
        .collect()
}

#[derive(Debug)]
struct Inner {
    config: WebhooksConfig,
    /// Replaced whole when the apps change at runtime ([`Webhooks::set_apps`]).
    apps: parking_lot::RwLock<HashMap<String, AppHooks>>,
    /// Invariant: `!apps.is_empty()`, kept beside it so that sockets of a node without webhooks
    /// pay one atomic load per message, not a lock.
    active: AtomicBool,
    store: Store,
    next_id: AtomicU64,
    /// The node, whose apps' monitors are told of each webhook sent or failed.
    node: std::sync::OnceLock<Arc<herald_core::Node>>,
}

/// The webhook subsystem; cheap to clone.
#[derive(Debug, Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Fact>,
}

impl Webhooks {
    /// Starts the processor and sender tasks on `tracker`; they end when `stop` is cancelled
    /// (requests in flight then finish on `tracker` within their timeout). `apps` may be empty.
    pub fn start(
        config: WebhooksConfig,
        apps: HashMap<String, AppHooks>,
        store: Store,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Webhooks {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let inner = Arc::new(Inner {
            config,
            active: AtomicBool::new(!apps.is_empty()),
            apps: parking_lot::RwLock::new(apps),
            store,
            next_id: AtomicU64::new(rand::random::<u64>() >> 1),
            node: std::sync::OnceLock::new(),
        });
        tracker.spawn(process(inner.clone(), rx, stop.clone()));
        tracker.spawn(sender::run(inner.clone(), tracker.clone(), stop));
        Webhooks { inner, tx }
    }

    /// Sets the node whose apps' monitors are told of webhooks sent or failed (once).
    pub fn set_node(&self, node: Arc<herald_core::Node>) {
        let _ = self.inner.node.set(node);
    }

    /// Whether `app` has any webhook target (so callers can skip building facts).
    pub fn wants(&self, app: &str) -> bool {
        self.inner.is_active() && self.inner.apps.read().contains_key(app)
    }

    /// Replaces every app's webhook settings (the apps changed at runtime).
    pub fn set_apps(&self, apps: HashMap<String, AppHooks>) {
        let mut current = self.inner.apps.write();
        self.inner.active.store(!apps.is_empty(), Ordering::Relaxed);
        *current = apps;
    }

    pub fn record(&self, fact: Fact) {
        // A user's own channel (`#server-to-user-…`) is the protocol's, not the app's: no
        // occupied, vacated, count or client-event webhooks for it.
        if fact.channel().kind() == ChannelKind::ServerToUser {
            return;
        }
        if let Err(err) = self.tx.try_send(fact) {
            metrics::webhook_dropped(err.into_inner().app(), "queue_full");
        }
    }

    /// Turns what a session did into facts.
    pub fn record_outcome(&self, app: &str, socket: SocketId, outcome: &Outcome) {
        if !self.wants(app) {
            return;
        }
        match outcome {
            Outcome::Subscribed {
                channel,
                res,
                user,
                replaced,
            } => {
                if let Some(old) = replaced {
                    // The socket changed identity on this channel: the old one left.
                    self.record(Fact::Left {
                        app: app.to_owned(),
                        channel: channel.clone(),
                        socket,
                        user: Some(old.clone()),
                    });
                }
                self.record(Fact::Joined {
                    app: app.to_owned(),
                    channel: channel.clone(),
                    socket,
                    user: user.clone(),
                });
                if res.cache_miss {
                    self.record(Fact::CacheMiss {
                        app: app.to_owned(),
                        channel: channel.clone(),
                    });
                }
            }
            Outcome::Unsubscribed(left) => self.record_left(app, socket, left),
            Outcome::ClientEvent {
                channel,
                event,
                data,
                user,
                ..
            } => self.record(Fact::ClientEvent {
                app: app.to_owned(),
                channel: channel.clone(),
                event: event.clone(),
                data: data.clone(),
                socket,
                user: user.clone(),
            }),
            _ => {}
        }
    }

    pub fn record_left(&self, app: &str, socket: SocketId, left: &Left) {
        if self.wants(app) {
            self.record(Fact::Left {
                app: app.to_owned(),
                channel: left.channel.clone(),
                socket,
                user: left.user.clone(),
            });
        }
    }

    /// The cluster log lost entries (Redis restarted empty, or trimmed past this node), so the
    /// store may have lost its sets too: puts this node's own subscriptions back, in order with
    /// its other facts, so that later joins and leaves fire what they should (a `member_removed`
    /// for a member who joined before the loss; no second `channel_occupied`). Idempotent.
    pub fn restore(&self, app: &str, entries: Vec<SubscriptionEntry>) {
        if !self.wants(app) {
            return;
        }
        for entry in entries {
            self.record(Fact::Restored {
                app: app.to_owned(),
                channel: entry.channel,
                socket: entry.socket,
                user: entry.user,
            });
        }
    }

    /// A dead node's subscriptions, removed by the broker: each leaves as if it disconnected.
    /// Every node reports them; the store makes sure each transition fires once.
    pub fn record_node_gone(&self, app: &str, entries: Vec<SubscriptionEntry>) {
        for entry in entries {
            self.record_left(
                app,
                entry.socket,
                &Left {
                    channel: entry.channel,
                    res: Default::default(),
                    user: entry.user,
                },
            );
        }
    }

    /// Sends what is due until nothing is left or `deadline` passes (used by the drain).
    pub async fn flush(&self, deadline: tokio::time::Instant) {
        sender::flush(&self.inner, deadline).await;
    }
}

/// The store's set of the sockets subscribed to a channel (its size decides occupied/vacated).
fn occupancy_set(app: &str, channel: &ChannelName) -> String {
    format!("occ:{app}:{channel}")
}

/// The store's set of a presence member's sockets on a channel (decides added/removed).
fn members_set(app: &str, channel: &ChannelName, user: &UserId) -> String {
    format!("members:{app}:{channel}:{user}")
}

/// The store's flag of a channel whose `channel_vacated` is pending (a join within the leave
/// delay takes it, and the webhook is not sent).
fn vacating_flag(app: &str, channel: &ChannelName) -> String {
    format!("vacating:{app}:{channel}")
}

/// The store's flag of a presence member whose `member_removed` is pending (a join within the
/// leave delay takes it, and the webhook is not sent).
fn leaving_flag(app: &str, channel: &ChannelName, user: &UserId) -> String {
    format!("leaving:{app}:{channel}:{user}")
}

/// How many times a fact is tried against the store before its webhooks are given up.
const FACT_TRIES: u32 = 3;
const FACT_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Turns facts into jobs, one at a time, so this node's facts keep their order.
async fn process(inner: Arc<Inner>, mut rx: mpsc::Receiver<Fact>, stop: CancellationToken) {
    loop {
        let fact = tokio::select! {
            fact = rx.recv() => match fact { Some(f) => f, None => return },
            () = stop.cancelled() => return,
        };
        let app = fact.app().to_owned();
        // The first commands after Redis came back can fail while the connection is re-made: a
        // fact is tried again a few times (safe: a set changes once, and only a change fires).
        let mut tries = 0;
        while let Err(err) = inner.apply(&fact).await {
            tries += 1;
            if tries == FACT_TRIES {
                metrics::webhook_dropped(&app, "store_error");
                tracing::warn!(%err, "webhook bookkeeping failed; this event's webhooks are lost");
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(FACT_RETRY_DELAY) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

impl Inner {
    /// Whether some app has a webhook target.
    fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Applies one fact to the store, queueing the webhooks it makes.
    async fn apply(&self, fact: &Fact) -> WebhookStoreResult<()> {
        match fact {
            Fact::Joined {
                app,
                channel,
                socket,
                user,
            } => self.joined(app, channel, *socket, user.as_ref()).await,
            Fact::Left {
                app,
                channel,
                socket,
                user,
            } => self.left(app, channel, *socket, user.as_ref()).await,
            Fact::Restored {
                app,
                channel,
                socket,
                user,
            } => self.restored(app, channel, *socket, user.as_ref()).await,
            Fact::ClientEvent {
                app,
                channel,
                event,
                data,
                socket,
                user,
            } => {
                self.client_event(app, channel, event, data, *socket, user.as_ref())
                    .await
            }
            Fact::CacheMiss { app, channel } => self.cache_miss(app, channel).await,
        }
    }

    /// A socket subscribed: `channel_occupied` for the channel's first socket (unless it was
    /// vacated within the leave delay), `member_added` for a presence member's first socket
    /// (unless it left within the leave delay), and the subscription count.
    async fn joined(
        &self,
        app: &str,
        channel: &ChannelName,
        socket: SocketId,
        user: Option<&UserId>,
    ) -> WebhookStoreResult<()> {
        let occupancy = occupancy_set(app, channel);
        if let Some(size) = self.store.add(&occupancy, &socket.to_string()).await? {
            if size == 1 && !self.store.take(&vacating_flag(app, channel)).await? {
                self.emit(
                    app,
                    json!({"name": "channel_occupied", "channel": channel.as_str()}),
                    None,
                    0,
                )
                .await?;
            }
            self.subscription_count(app, channel, size).await?;
        }
        if let Some(user) = user {
            let members = members_set(app, channel, user);
            let first = self.store.add(&members, &socket.to_string()).await? == Some(1);
            if first && !self.store.take(&leaving_flag(app, channel, user)).await? {
                let event = json!({"name": "member_added", "channel": channel.as_str(), "user_id": user.as_str()});
                self.emit(app, event, None, 0).await?;
            }
        }
        Ok(())
    }

    /// A socket left: `member_removed` for a presence member's last socket and `channel_vacated`
    /// for the channel's last, both after the leave delay (a join within it cancels them), and
    /// the subscription count.
    async fn left(
        &self,
        app: &str,
        channel: &ChannelName,
        socket: SocketId,
        user: Option<&UserId>,
    ) -> WebhookStoreResult<()> {
        let delay = self.config.leave_delay;
        if let Some(user) = user {
            let members = members_set(app, channel, user);
            if self.store.remove(&members, &socket.to_string()).await? == Some(0) {
                let pending = leaving_flag(app, channel, user);
                self.store
                    .set_once(&pending, delay + Duration::from_secs(60))
                    .await?;
                let event = json!({"name": "member_removed", "channel": channel.as_str(), "user_id": user.as_str()});
                self.emit(app, event, Some(pending), delay.as_millis() as u64)
                    .await?;
            }
        }
        let occupancy = occupancy_set(app, channel);
        match self.store.remove(&occupancy, &socket.to_string()).await? {
            Some(0) => {
                let pending = vacating_flag(app, channel);
                self.store
                    .set_once(&pending, delay + Duration::from_secs(60))
                    .await?;
                let event = json!({"name": "channel_vacated", "channel": channel.as_str()});
                self.emit(app, event, Some(pending), delay.as_millis() as u64)
                    .await?;
                self.subscription_count(app, channel, 0).await?;
            }
            Some(size) => self.subscription_count(app, channel, size).await?,
            None => {}
        }
        Ok(())
    }

    /// A subscription put back after the store may have lost it: the sets only, no webhook.
    async fn restored(
        &self,
        app: &str,
        channel: &ChannelName,
        socket: SocketId,
        user: Option<&UserId>,
    ) -> WebhookStoreResult<()> {
        let socket = socket.to_string();
        self.store
            .add(&occupancy_set(app, channel), &socket)
            .await?;
        if let Some(user) = user {
            self.store
                .add(&members_set(app, channel, user), &socket)
                .await?;
        }
        Ok(())
    }

    /// A client event: `client_event`, with the client's data as a string (as Pusher sends it).
    async fn client_event(
        &self,
        app: &str,
        channel: &ChannelName,
        event: &str,
        data: &str,
        socket: SocketId,
        user: Option<&UserId>,
    ) -> WebhookStoreResult<()> {
        // Pusher sends the client's data as a string.
        let data = serde_json::from_str::<String>(data).unwrap_or_else(|_| data.to_owned());
        let mut payload = json!({
            "name": "client_event",
            "channel": channel.as_str(),
            "event": event,
            "data": data,
            "socket_id": socket.to_string(),
        });
        if let Some(user) = user {
            payload["user_id"] = json!(user.as_str());
        }
        self.emit(app, payload, None, 0).await
    }

    /// A subscription to an empty cache channel: one `cache_miss` per channel per
    /// [`CACHE_MISS_DEDUP`], however many clients subscribed.
    async fn cache_miss(&self, app: &str, channel: &ChannelName) -> WebhookStoreResult<()> {
        if self
            .store
            .set_once(&format!("cache_miss:{app}:{channel}"), CACHE_MISS_DEDUP)
            .await?
        {
            self.emit(
                app,
                json!({"name": "cache_miss", "channel": channel.as_str()}),
                None,
                0,
            )
            .await?;
        }
        Ok(())
    }

    async fn subscription_count(
        &self,
        app: &str,
        channel: &ChannelName,
        count: usize,
    ) -> WebhookStoreResult<()> {
        if channel.kind() == ChannelKind::Presence {
            return Ok(());
        }
        if count > SUBSCRIPTION_COUNT_THROTTLE_ABOVE
            && !self
                .store
                .set_once(
                    &format!("count:{app}:{channel}"),
                    SUBSCRIPTION_COUNT_INTERVAL,
                )
                .await?
        {
            return Ok(());
        }
        let event = json!({"name": "subscription_count", "channel": channel.as_str(), "subscription_count": count});
        self.emit(app, event, None, 0).await
    }

    /// Queues `event` for every target of `app` whose filters accept it.
    async fn emit(
        &self,
        app: &str,
        event: serde_json::Value,
        pending_key: Option<String>,
        delay_ms: u64,
    ) -> WebhookStoreResult<()> {
        let Some(hooks) = self.apps.read().get(app).cloned() else {
            return Ok(());
        };
        let name = event["name"].as_str().unwrap_or_default();
        let channel = event["channel"].as_str().unwrap_or_default();
        let due = store::now_ms() + delay_ms;
        let targets: Vec<usize> = hooks
            .targets
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                (t.event_types.is_empty() || t.event_types.iter().any(|e| e == name))
                    && t.channel_prefix
                        .as_deref()
                        .is_none_or(|p| channel.starts_with(p))
                    && t.channel_suffix
                        .as_deref()
                        .is_none_or(|s| channel.ends_with(s))
            })
            .map(|(i, _)| i)
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let job = Job {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            app: app.to_owned(),
            targets,
            events: vec![event],
            first_due_ms: due,
            attempts: 0,
            pending_key,
        };
        self.store.enqueue(&job, due).await?;
        Ok(())
    }
}
