//! The node: every app's channel table, presence rosters, signed-in users and cache, for the
//! sockets connected to *this* node.
//!
//! Invariant: no lock here is held across an await (there are no awaits), and the only thing done
//! under a lock besides bookkeeping is pushing frames into outboxes, which never blocks.
//! Lock order: `channels`, then `cache`, then any outbox. `users`, `watchers` and `remote_users`
//! are never held together with `channels`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_protocol::server_message;
use herald_protocol::{ChannelKind, ChannelName, CloseCode, SocketId, UserId};
use parking_lot::{Mutex, RwLock};
use serde_json::value::RawValue;

use crate::app::{App, NodeLimits};
use crate::outbox::{CloseRequest, DisconnectReason, Frame, Outbox, PushError};
use crate::presence::PresenceRoster;
use crate::registry::AppRegistry;

/// How long a cache channel remembers its last event (Pusher: "up to 30 minutes").
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// Channels with more subscribers than this get `subscription_count` at most every 5 s.
const SUBSCRIPTION_COUNT_THROTTLE_ABOVE: usize = 100;
const SUBSCRIPTION_COUNT_INTERVAL: Duration = Duration::from_secs(5);

/// All apps served by this node, and the node-wide connection count.
#[derive(Debug)]
pub struct Node {
    id: u64,
    next_seq: AtomicU64,
    apps: AppRegistry,
    pub limits: NodeLimits,
    connections: AtomicUsize,
}

impl Node {
    pub fn new(id: u64, apps: Vec<App>, limits: NodeLimits) -> Node {
        let registry = AppRegistry::default();
        registry.replace(apps);
        Node {
            id,
            next_seq: AtomicU64::new(1),
            apps: registry,
            limits,
            connections: AtomicUsize::new(0),
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
}

#[derive(Debug)]
struct Channel {
    /// Sockets on this node.
    subscribers: HashMap<SocketId, Subscriber>,
    /// Sockets on other nodes (known through the broker), with their presence identity.
    remote: HashMap<SocketId, Option<UserId>>,
    /// Members on every node: local and remote sockets alike.
    presence: Option<PresenceRoster>,
    last_count_sent: Option<Instant>,
}

impl Channel {
    fn new(kind: ChannelKind) -> Channel {
        Channel {
            subscribers: HashMap::new(),
            remote: HashMap::new(),
            presence: (kind == ChannelKind::Presence).then(PresenceRoster::default),
            last_count_sent: None,
        }
    }

    /// Invariant: a channel entry exists only while some node has a subscriber.
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.remote.is_empty()
    }

    /// Subscriptions on every node.
    fn count(&self) -> usize {
        self.subscribers.len() + self.remote.len()
    }

    fn info(&self) -> ChannelInfo {
        ChannelInfo {
            occupied: true,
            subscription_count: self.count(),
            user_count: self.presence.as_ref().map(PresenceRoster::user_count),
        }
    }
}

/// One subscription of a local socket, as announced to other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionEntry {
    pub channel: ChannelName,
    pub socket: SocketId,
    pub user: Option<UserId>,
    /// Raw JSON of the presence `user_info`.
    pub user_info: Option<String>,
}

/// Everything this node knows first-hand about an app: the truth other nodes replicate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalState {
    pub subscriptions: Vec<SubscriptionEntry>,
    pub signed_in: Vec<(SocketId, UserId)>,
}

#[derive(Debug)]
struct Subscriber {
    outbox: Outbox,
    /// The presence identity this socket subscribed with.
    user: Option<UserId>,
}

#[derive(Debug, Clone)]
struct CachedEvent {
    event: String,
    data: String,
    frame: Frame,
    stored_at: Instant,
}

/// What the fan-out of one event did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub delivered: usize,
    /// Recipients whose outbox overflowed: they are now closing as slow consumers.
    pub dropped_slow: usize,
}

/// A presence identity to subscribe with, from validated `channel_data`.
#[derive(Debug)]
pub struct PresenceMember {
    pub user_id: UserId,
    pub user_info: Option<Box<RawValue>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    PresenceFull { max: usize },
}

/// What a subscribe changed, for webhooks and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    pub channel_occupied: bool,
    pub member_added: bool,
    pub cache_miss: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribed {
    pub channel_vacated: bool,
    pub member_removed: bool,
}

/// Occupancy of one channel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub occupied: bool,
    pub subscription_count: usize,
    pub user_count: Option<usize>,
}

/// The last event of a cache channel, as the HTTP API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    pub event: String,
    pub data: String,
    pub ttl: Duration,
}

/// One app's state on this node.
#[derive(Debug)]
pub struct AppState {
    /// Invariant: never changes; the registry replaces an app whose id changes.
    id: String,
    /// The app's settings, swapped whole when they change (see [`AppRegistry`]).
    app: RwLock<Arc<App>>,
    channels: RwLock<HashMap<ChannelName, Channel>>,
    /// Signed-in sockets per user.
    users: Mutex<HashMap<UserId, Vec<(SocketId, Outbox)>>>,
    /// Watched user → sockets whose watchlist names them.
    watchers: Mutex<HashMap<UserId, Vec<(SocketId, Outbox)>>>,
    cache: Mutex<HashMap<ChannelName, CachedEvent>>,
    /// Signed-in sockets of this app on other nodes, per user.
    remote_users: Mutex<HashMap<UserId, Vec<SocketId>>>,
    /// Open connections of this app on other nodes, per node, from their heartbeats.
    remote_connections: Mutex<HashMap<u64, usize>>,
    /// This app's open connections on this node.
    sockets: Mutex<Sockets>,
}

#[derive(Debug, Default)]
struct Sockets {
    open: HashMap<SocketId, Outbox>,
    /// Set when the app leaves the registry: no connection may join it any more.
    retired: bool,
}

/// Why a connection may not join an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefused {
    /// The app is at its connection limit (4004).
    OverQuota,
    /// The app is disabled or was removed (4003).
    Disabled,
}

impl AppState {
    pub(crate) fn new(app: App) -> AppState {
        AppState {
            id: app.id.clone(),
            app: RwLock::new(Arc::new(app)),
            channels: RwLock::default(),
            users: Mutex::default(),
            watchers: Mutex::default(),
            cache: Mutex::default(),
            remote_users: Mutex::default(),
            remote_connections: Mutex::default(),
            sockets: Mutex::default(),
        }
    }

    /// The app's id; it never changes.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The app's settings as they are now. A changed setting (a rotated secret, a limit) applies
    /// from the next call, so callers read it per request or message rather than keep it.
    pub fn app(&self) -> Arc<App> {
        self.app.read().clone()
    }

    /// Replaces the settings; a disabled app's sockets are closed with 4003. Returns how many
    /// sockets were closed.
    pub(crate) fn set_app(&self, app: App) -> usize {
        debug_assert_eq!(
            app.id, self.id,
            "the registry replaces an app whose id changes"
        );
        let enabled = app.enabled;
        *self.app.write() = Arc::new(app);
        if enabled {
            0
        } else {
            self.close_all()
        }
    }

    /// Registers an open connection, counted against the app's quota (cluster-wide).
    ///
    /// # Errors
    /// `OverQuota` when the app is full, `Disabled` when it is disabled or was removed (checked
    /// under the same lock as [`AppState::close_all`], so no socket slips past a disable).
    pub fn add_connection(
        &self,
        socket: SocketId,
        outbox: &Outbox,
    ) -> Result<(), ConnectionRefused> {
        let remote = self
            .remote_connections
            .lock()
            .values()
            .fold(0usize, |a, n| a.saturating_add(*n));
        let mut sockets = self.sockets.lock();
        let app = self.app();
        if sockets.retired || !app.enabled {
            return Err(ConnectionRefused::Disabled);
        }
        let max = app
            .connection_limit()
            .unwrap_or(usize::MAX)
            .saturating_sub(remote);
        if sockets.open.len() >= max {
            return Err(ConnectionRefused::OverQuota);
        }
        sockets.open.insert(socket, outbox.clone());
        Ok(())
    }

    pub fn remove_connection(&self, socket: SocketId) {
        self.sockets.lock().open.remove(&socket);
    }

    pub fn connection_count(&self) -> usize {
        self.sockets.lock().open.len()
    }

    /// The outboxes of this app's open connections on this node.
    pub fn outboxes(&self) -> Vec<Outbox> {
        self.sockets.lock().open.values().cloned().collect()
    }

    /// The app left the registry: closes its connections with 4003 and refuses new ones.
    pub(crate) fn retire(&self) -> usize {
        self.sockets.lock().retired = true;
        self.close_all()
    }

    /// Closes every connection of this app on this node with 4003 (the app was disabled or
    /// removed); returns how many.
    pub fn close_all(&self) -> usize {
        let sockets = self.sockets.lock();
        for outbox in sockets.open.values() {
            let _ = outbox.push(Frame::new(server_message::error(
                Some(CloseCode::AppDisabled.code()),
                "Application disabled",
            )));
            outbox.close(CloseRequest {
                code: CloseCode::AppDisabled,
                message: "Application disabled",
                reason: DisconnectReason::Terminated,
            });
        }
        sockets.open.len()
    }

    /// Adds a socket to a channel and queues its `subscription_succeeded` (and the cached event or
    /// `cache_miss`) before any broadcast can reach it. Subscribing again is idempotent.
    ///
    /// # Errors
    /// `PresenceFull` when a new member would exceed the app's presence limit.
    pub fn subscribe(
        &self,
        socket: SocketId,
        outbox: &Outbox,
        channel: &ChannelName,
        member: Option<PresenceMember>,
    ) -> Result<Subscribed, SubscribeError> {
        let mut res = Subscribed::default();
        {
            let mut channels = self.channels.write();
            // Looked up under the channel lock (lock order: channels, then cache), so an event
            // published meanwhile is either in the cache or delivered after we are subscribed.
            let cached = channel.is_cache().then(|| self.cached(channel));
            let is_presence = channel.kind() == ChannelKind::Presence;
            let app = self.app();
            if let (Some(member), Some(existing)) = (&member, channels.get(channel)) {
                let roster = existing.presence.as_ref();
                let is_new = roster.is_none_or(|r| !r.contains(&member.user_id));
                if is_new && roster.is_some_and(|r| r.user_count() >= app.max_presence_members) {
                    return Err(SubscribeError::PresenceFull {
                        max: app.max_presence_members,
                    });
                }
            }
            res.channel_occupied = !channels.contains_key(channel);
            let entry = channels
                .entry(channel.clone())
                .or_insert_with(|| Channel::new(channel.kind()));
            let previous_user = entry.subscribers.get(&socket).and_then(|s| s.user.clone());
            let user = member.as_ref().map(|m| m.user_id.clone());
            if let (Some(roster), Some(old)) = (entry.presence.as_mut(), &previous_user) {
                if Some(old) != user.as_ref() && roster.remove(socket, old) {
                    let frame = Frame::new(server_message::member_removed(channel.as_str(), old));
                    push_all(&entry.subscribers, &frame, Some(socket));
                }
            }
            entry.subscribers.insert(
                socket,
                Subscriber {
                    outbox: outbox.clone(),
                    user,
                },
            );
            match (entry.presence.as_mut(), member) {
                (Some(roster), Some(member)) => {
                    let first = roster.add(socket, &member.user_id, member.user_info);
                    let _ =
                        outbox.push(Frame::new(server_message::presence_subscription_succeeded(
                            channel.as_str(),
                            roster.members(),
                        )));
                    if first {
                        res.member_added = true;
                        let added = roster.member(&member.user_id).expect("just added");
                        let frame =
                            Frame::new(server_message::member_added(channel.as_str(), added));
                        push_all(&entry.subscribers, &frame, Some(socket));
                    }
                }
                _ => {
                    let _ = outbox.push(Frame::new(server_message::subscription_succeeded(
                        channel.as_str(),
                    )));
                }
            }
            match cached {
                Some(Some(cached)) => {
                    let _ = outbox.push(cached.frame);
                }
                Some(None) => {
                    res.cache_miss = true;
                    let _ = outbox.push(Frame::new(server_message::cache_miss(channel.as_str())));
                }
                None => {}
            }
            if app.subscription_count && !is_presence {
                send_subscription_count(channel, entry);
            }
        }
        Ok(res)
    }

    /// Removes a socket from a channel; a no-op when it was not subscribed.
    pub fn unsubscribe(&self, socket: SocketId, channel: &ChannelName) -> Unsubscribed {
        let mut res = Unsubscribed::default();
        let mut channels = self.channels.write();
        let Some(entry) = channels.get_mut(channel) else {
            return res;
        };
        let Some(subscriber) = entry.subscribers.remove(&socket) else {
            return res;
        };
        if let (Some(roster), Some(user)) = (entry.presence.as_mut(), subscriber.user.as_ref()) {
            if roster.remove(socket, user) {
                res.member_removed = true;
                let frame = Frame::new(server_message::member_removed(channel.as_str(), user));
                push_all(&entry.subscribers, &frame, None);
            }
        }
        if entry.is_empty() {
            channels.remove(channel);
            res.channel_vacated = true;
        } else if self.app().subscription_count && entry.presence.is_none() {
            send_subscription_count(channel, entry);
        }
        res
    }

    /// Fans one event out to this node's subscribers of `channel`, except `except`.
    /// The frame's bytes are shared, never copied per subscriber.
    pub fn deliver(
        &self,
        channel: &ChannelName,
        frame: &Frame,
        except: Option<SocketId>,
    ) -> Delivery {
        let channels = self.channels.read();
        match channels.get(channel) {
            Some(entry) => push_all(&entry.subscribers, frame, except),
            None => Delivery::default(),
        }
    }

    /// Remembers the last event published to a cache channel.
    pub fn store_cache(&self, channel: &ChannelName, event: &str, data: &str, frame: &Frame) {
        let cached = CachedEvent {
            event: event.to_owned(),
            data: data.to_owned(),
            frame: Frame {
                text: frame.text.clone(),
                published_at: None,
            },
            stored_at: Instant::now(),
        };
        self.cache.lock().insert(channel.clone(), cached);
    }

    fn cached(&self, channel: &ChannelName) -> Option<CachedEvent> {
        let mut cache = self.cache.lock();
        match cache.get(channel) {
            Some(c) if c.stored_at.elapsed() < CACHE_TTL => Some(c.clone()),
            Some(_) => {
                cache.remove(channel);
                None
            }
            None => None,
        }
    }

    pub fn cache_info(&self, channel: &ChannelName) -> Option<CacheInfo> {
        self.cached(channel).map(|c| CacheInfo {
            event: c.event,
            data: c.data,
            ttl: CACHE_TTL.saturating_sub(c.stored_at.elapsed()),
        })
    }

    pub fn channel_info(&self, channel: &ChannelName) -> ChannelInfo {
        let channels = self.channels.read();
        match channels.get(channel) {
            Some(entry) => entry.info(),
            None => ChannelInfo {
                user_count: (channel.kind() == ChannelKind::Presence).then_some(0),
                ..ChannelInfo::default()
            },
        }
    }

    /// Occupied channels whose names start with `prefix`.
    pub fn channels(&self, prefix: &str) -> Vec<(ChannelName, ChannelInfo)> {
        let channels = self.channels.read();
        channels
            .iter()
            .filter(|(name, _)| name.as_str().starts_with(prefix))
            .map(|(name, entry)| (name.clone(), entry.info()))
            .collect()
    }

    /// Distinct users of a presence channel.
    pub fn presence_users(&self, channel: &ChannelName) -> Vec<UserId> {
        let channels = self.channels.read();
        channels
            .get(channel)
            .and_then(|c| c.presence.as_ref())
            .map(|r| r.user_ids().cloned().collect())
            .unwrap_or_default()
    }

    /// Registers a signed-in socket; true when the user just came online (cluster-wide).
    pub fn sign_in(&self, user: &UserId, socket: SocketId, outbox: &Outbox) -> bool {
        let came_online = {
            let mut users = self.users.lock();
            let was_online =
                users.contains_key(user) || self.remote_users.lock().contains_key(user);
            let sockets = users.entry(user.clone()).or_default();
            if !sockets.iter().any(|(s, _)| *s == socket) {
                sockets.push((socket, outbox.clone()));
            }
            !was_online
        };
        if came_online {
            self.notify_watchers(user, "online");
        }
        came_online
    }

    /// Forgets a signed-in socket; true when the user just went offline (cluster-wide).
    pub fn sign_out(&self, user: &UserId, socket: SocketId) -> bool {
        let went_offline = {
            let mut users = self.users.lock();
            let Some(sockets) = users.get_mut(user) else {
                return false;
            };
            sockets.retain(|(s, _)| *s != socket);
            if sockets.is_empty() {
                users.remove(user);
                !self.remote_users.lock().contains_key(user)
            } else {
                false
            }
        };
        if went_offline {
            self.notify_watchers(user, "offline");
        }
        went_offline
    }

    pub fn is_online(&self, user: &UserId) -> bool {
        self.users.lock().contains_key(user) || self.remote_users.lock().contains_key(user)
    }

    /// Registers `socket` as watching `users` and returns which of them are online now.
    pub fn watch(
        &self,
        socket: SocketId,
        outbox: &Outbox,
        users: &[UserId],
    ) -> (Vec<UserId>, Vec<UserId>) {
        {
            let mut watchers = self.watchers.lock();
            for user in users {
                watchers
                    .entry(user.clone())
                    .or_default()
                    .push((socket, outbox.clone()));
            }
        }
        users.iter().cloned().partition(|u| self.is_online(u))
    }

    pub fn unwatch(&self, socket: SocketId, users: &[UserId]) {
        let mut watchers = self.watchers.lock();
        for user in users {
            if let Some(list) = watchers.get_mut(user) {
                list.retain(|(s, _)| *s != socket);
                if list.is_empty() {
                    watchers.remove(user);
                }
            }
        }
    }

    fn notify_watchers(&self, user: &UserId, transition: &str) {
        let watchers = self.watchers.lock();
        if let Some(list) = watchers.get(user) {
            let frame = Frame::new(server_message::watchlist_events(&[(
                transition,
                vec![user],
            )]));
            for (_, outbox) in list {
                let _ = outbox.push(frame.clone());
            }
        }
    }

    /// Closes this node's connections signed in as `user`; returns how many. The broker's
    /// `terminate_user` does every node.
    pub fn terminate_user(&self, user: &UserId) -> usize {
        let users = self.users.lock();
        let Some(sockets) = users.get(user) else {
            return 0;
        };
        for (_, outbox) in sockets {
            let _ = outbox.push(Frame::new(server_message::error(
                Some(CloseCode::Unauthorized.code()),
                "Connection terminated by the app",
            )));
            outbox.close(CloseRequest {
                code: CloseCode::Unauthorized,
                message: "Connection terminated by the app",
                reason: DisconnectReason::Terminated,
            });
        }
        sockets.len()
    }
}

/// Replication of other nodes' state, driven by the broker.
///
/// Every node applies the same stream of announcements, so each one decides on its own, and
/// identically, when a user's first connection joins or last one leaves a presence channel; it
/// then tells only its own sockets. That is how `member_added`/`member_removed` reach every
/// subscriber exactly once without any cross-node locking.
impl AppState {
    /// Another node's socket subscribed. Idempotent.
    pub fn remote_subscribe(
        &self,
        socket: SocketId,
        channel: &ChannelName,
        member: Option<PresenceMember>,
    ) {
        let mut channels = self.channels.write();
        let entry = channels
            .entry(channel.clone())
            .or_insert_with(|| Channel::new(channel.kind()));
        let user = member.as_ref().map(|m| m.user_id.clone());
        let previous = entry.remote.insert(socket, user.clone());
        if let (Some(roster), Some(Some(old))) = (entry.presence.as_mut(), &previous) {
            if Some(old) != user.as_ref() && roster.remove(socket, old) {
                let frame = Frame::new(server_message::member_removed(channel.as_str(), old));
                push_all(&entry.subscribers, &frame, None);
            }
        }
        if let (Some(roster), Some(member)) = (entry.presence.as_mut(), member) {
            if roster.add(socket, &member.user_id, member.user_info) {
                let added = roster.member(&member.user_id).expect("just added");
                let frame = Frame::new(server_message::member_added(channel.as_str(), added));
                push_all(&entry.subscribers, &frame, None);
            }
        }
        if previous.is_none() && self.app().subscription_count && entry.presence.is_none() {
            send_subscription_count(channel, entry);
        }
    }

    /// Another node's socket left a channel. Idempotent.
    pub fn remote_unsubscribe(&self, socket: SocketId, channel: &ChannelName) {
        let mut channels = self.channels.write();
        let _ = Self::remove_remote(&self.app(), &mut channels, socket, channel);
    }

    fn remove_remote(
        app: &App,
        channels: &mut HashMap<ChannelName, Channel>,
        socket: SocketId,
        channel: &ChannelName,
    ) -> Option<SubscriptionEntry> {
        let entry = channels.get_mut(channel)?;
        let user = entry.remote.remove(&socket)?;
        let removed = SubscriptionEntry {
            channel: channel.clone(),
            socket,
            user: user.clone(),
            user_info: None,
        };
        if let (Some(roster), Some(user)) = (entry.presence.as_mut(), user.as_ref()) {
            if roster.remove(socket, user) {
                let frame = Frame::new(server_message::member_removed(channel.as_str(), user));
                push_all(&entry.subscribers, &frame, None);
            }
        }
        if entry.is_empty() {
            channels.remove(channel);
        } else if app.subscription_count && entry.presence.is_none() {
            send_subscription_count(channel, entry);
        }
        Some(removed)
    }

    pub fn remote_sign_in(&self, socket: SocketId, user: &UserId) {
        let came_online = {
            let users = self.users.lock();
            let mut remote = self.remote_users.lock();
            let was_online = users.contains_key(user) || remote.contains_key(user);
            let sockets = remote.entry(user.clone()).or_default();
            if !sockets.contains(&socket) {
                sockets.push(socket);
            }
            !was_online
        };
        if came_online {
            self.notify_watchers(user, "online");
        }
    }

    pub fn remote_sign_out(&self, socket: SocketId, user: &UserId) {
        let went_offline = {
            let users = self.users.lock();
            let mut remote = self.remote_users.lock();
            let Some(sockets) = remote.get_mut(user) else {
                return;
            };
            sockets.retain(|s| *s != socket);
            if sockets.is_empty() {
                remote.remove(user);
                !users.contains_key(user)
            } else {
                false
            }
        };
        if went_offline {
            self.notify_watchers(user, "offline");
        }
    }

    /// Records how many connections this app has on another node.
    pub fn set_remote_connections(&self, node: u64, count: usize) {
        self.remote_connections.lock().insert(node, count);
    }

    /// Drops everything known about `node` (it died), telling local sockets about members that
    /// are gone for good.
    /// Returns the subscriptions that were removed.
    pub fn forget_node(&self, node: u64) -> Vec<SubscriptionEntry> {
        self.replace_node(node, &LocalState::default())
    }

    /// Makes this node's view of `node` exactly `state`: adds what is new, removes what is gone,
    /// and leaves the rest alone, so a resync after an outage does not flap members.
    /// Returns the subscriptions that were removed.
    pub fn replace_node(&self, node: u64, state: &LocalState) -> Vec<SubscriptionEntry> {
        let mut removed = Vec::new();
        let keep: std::collections::HashSet<(&ChannelName, SocketId)> = state
            .subscriptions
            .iter()
            .map(|e| (&e.channel, e.socket))
            .collect();
        for entry in &state.subscriptions {
            let member = entry.user.clone().map(|user_id| PresenceMember {
                user_id,
                user_info: entry
                    .user_info
                    .as_deref()
                    .and_then(|i| RawValue::from_string(i.to_owned()).ok()),
            });
            self.remote_subscribe(entry.socket, &entry.channel, member);
        }
        {
            let app = self.app();
            let mut channels = self.channels.write();
            let stale: Vec<(ChannelName, SocketId)> = channels
                .iter()
                .flat_map(|(name, c)| c.remote.keys().map(move |s| (name, *s)))
                .filter(|(name, s)| s.node == node && !keep.contains(&(*name, *s)))
                .map(|(name, s)| (name.clone(), s))
                .collect();
            for (channel, socket) in stale {
                removed.extend(Self::remove_remote(&app, &mut channels, socket, &channel));
            }
        }
        let signed_in: std::collections::HashSet<(SocketId, &UserId)> =
            state.signed_in.iter().map(|(s, u)| (*s, u)).collect();
        for (socket, user) in &state.signed_in {
            self.remote_sign_in(*socket, user);
        }
        let stale: Vec<(SocketId, UserId)> = self
            .remote_users
            .lock()
            .iter()
            .flat_map(|(u, sockets)| sockets.iter().map(move |s| (*s, u.clone())))
            .filter(|(s, u)| s.node == node && !signed_in.contains(&(*s, u)))
            .collect();
        for (socket, user) in stale {
            self.remote_sign_out(socket, &user);
        }
        if state == &LocalState::default() {
            self.remote_connections.lock().remove(&node);
        }
        removed
    }

    /// This node's own subscriptions and sign-ins, for other nodes to replicate.
    pub fn local_state(&self) -> LocalState {
        let mut res = LocalState::default();
        let channels = self.channels.read();
        for (name, channel) in channels.iter() {
            for (socket, subscriber) in &channel.subscribers {
                let info = match (&channel.presence, &subscriber.user) {
                    (Some(roster), Some(user)) => roster
                        .member(user)
                        .and_then(|m| m.user_info.map(|i| i.get().to_owned())),
                    _ => None,
                };
                res.subscriptions.push(SubscriptionEntry {
                    channel: name.clone(),
                    socket: *socket,
                    user: subscriber.user.clone(),
                    user_info: info,
                });
            }
        }
        drop(channels);
        for (user, sockets) in self.users.lock().iter() {
            res.signed_in
                .extend(sockets.iter().map(|(s, _)| (*s, user.clone())));
        }
        res
    }
}

fn push_all(
    subscribers: &HashMap<SocketId, Subscriber>,
    frame: &Frame,
    except: Option<SocketId>,
) -> Delivery {
    let mut res = Delivery::default();
    for (socket, subscriber) in subscribers {
        if Some(*socket) == except {
            continue;
        }
        match subscriber.outbox.push(frame.clone()) {
            Ok(()) => res.delivered += 1,
            Err(PushError::Overflow) => res.dropped_slow += 1,
            Err(PushError::Closed) => {}
        }
    }
    res
}

fn send_subscription_count(channel: &ChannelName, entry: &mut Channel) {
    let count = entry.count();
    let now = Instant::now();
    if count > SUBSCRIPTION_COUNT_THROTTLE_ABOVE
        && entry
            .last_count_sent
            .is_some_and(|t| now.duration_since(t) < SUBSCRIPTION_COUNT_INTERVAL)
    {
        return;
    }
    entry.last_count_sent = Some(now);
    let frame = Frame::new(server_message::subscription_count(channel.as_str(), count));
    push_all(&entry.subscribers, &frame, None);
}
