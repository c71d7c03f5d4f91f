//! One app's state on this node: [`AppState`], the facade over parts that each own their lock.
//!
//! The parts: the channel table with presence rosters and each channel's log (`channels.rs`),
//! cache channels' last events (`cache.rs`), signed-in users (`users.rs`), watchlists
//! (`watchlist.rs`), open connections (`connections.rs`), where departed sockets stopped
//! ([`crate::history`]), the admin console's stream ([`crate::monitor`]) and the app's settings.
//! `AppState`'s public methods are the API the session, the HTTP API and the brokers use; they
//! compose the parts. The types of that API are re-exported here.
//!
//! Invariant: no lock is held across an await (there are none), nothing but bookkeeping and
//! non-blocking `Outbox::push` happens under a lock, and locks nest only in the order of
//! `lock_order.rs` (checked in debug builds).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use herald_protocol::{ChannelName, SocketId, UserId};
use serde_json::value::RawValue;

use crate::app::App;
use crate::cache::CacheStore;
use crate::channels::Channels;
use crate::connections::Connections;
use crate::error::PresenceFull;
use crate::history::{
    self, Departure, HistoryLimits, Identity, Resume, ResumeFailure, Resumed, Resumes,
    SILENCE_SLACK,
};
use crate::lock_order::{Level, OrderedRwLock};
use crate::monitor::{AppCounts, Monitor, MonitorEvent, Traffic};
use crate::outbox::{clock_ms, Frame, Outbox};
use crate::users::Users;
use crate::watchlist::{Transition, Watchlists};

pub use crate::cache::{CacheInfo, CACHE_TTL};
pub use crate::channels::{
    ChannelInfo, Delivery, Durability, Leaving, PresenceMember, Subscribed, SubscriptionEntry,
    Unsubscribed,
};
pub use crate::connections::ConnectionRefused;

/// Everything this node knows first-hand about an app: the truth other nodes replicate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalState {
    pub subscriptions: Vec<SubscriptionEntry>,
    pub signed_in: Vec<(SocketId, UserId)>,
}

/// One app's state on this node.
#[derive(Debug)]
pub struct AppState {
    /// Invariant: never changes; the registry replaces an app whose id changes.
    id: String,
    /// The app's settings, swapped whole when they change (see [`crate::registry`]).
    settings: OrderedRwLock<Arc<App>>,
    channels: Channels,
    cache: CacheStore,
    users: Users,
    watchlists: Watchlists,
    connections: Connections,
    /// Where departed sockets stopped, per identity and channel.
    resumes: Resumes,
    pub continuity: ContinuityStats,
    /// The live event stream the admin console watches.
    monitor: Monitor,
    /// Message counters and every node's samples of them, for the rates.
    traffic: Traffic,
    /// This node's id.
    node: u64,
    /// [`crate::outbox::clock_ms`] of the next history sweep.
    next_sweep_ms: AtomicU64,
}

/// Replay counters of one app, exported as metrics.
#[derive(Debug, Default)]
pub struct ContinuityStats {
    pub events_replayed: AtomicU64,
    /// Resubscriptions of a recognised client that got what they missed (maybe nothing).
    pub resumed: AtomicU64,
    pub failed_window_passed: AtomicU64,
    pub failed_history_trimmed: AtomicU64,
    pub failed_log_lost: AtomicU64,
    /// Departures not remembered because the app's bound on resume marks was reached.
    pub marks_dropped: AtomicU64,
}

/// How often each app's channel histories are swept of expired events.
const SWEEP_INTERVAL_MS: u64 = 1000;

impl AppState {
    pub(crate) fn new(app: App, node: u64) -> AppState {
        let traffic = Traffic::default();
        // The counters start at zero now: the first rate covers what came before the first
        // periodic sample.
        traffic.sample(node, (0, 0));
        AppState {
            id: app.id.clone(),
            settings: OrderedRwLock::new(Level::Settings, Arc::new(app)),
            channels: Channels::default(),
            cache: CacheStore::default(),
            users: Users::default(),
            watchlists: Watchlists::default(),
            connections: Connections::default(),
            resumes: Resumes::default(),
            continuity: ContinuityStats::default(),
            monitor: Monitor::new(node),
            traffic,
            node,
            next_sweep_ms: AtomicU64::new(0),
        }
    }

    /// The app's id; it never changes.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The app's settings as they are now. A changed setting (a rotated secret, a limit) applies
    /// from the next call, so callers read it per request or message rather than keep it.
    pub fn app(&self) -> Arc<App> {
        self.settings.read().clone()
    }

    /// Replaces the settings; a disabled app's sockets are closed with 4003. Returns how many
    /// sockets were closed.
    pub(crate) fn set_app(&self, app: App) -> usize {
        debug_assert_eq!(
            app.id, self.id,
            "the registry replaces an app whose id changes"
        );
        let enabled = app.enabled;
        *self.settings.write() = Arc::new(app);
        if enabled {
            0
        } else {
            self.connections.close_all()
        }
    }

    /// Registers an open connection, counted against the app's quota (cluster-wide).
    ///
    /// # Errors
    /// `OverQuota` when the app is full, `Disabled` when it is disabled or was removed.
    pub fn add_connection(
        &self,
        socket: SocketId,
        outbox: &Outbox,
    ) -> Result<(), ConnectionRefused> {
        self.connections.add(socket, outbox, || self.app())
    }

    pub fn remove_connection(&self, socket: SocketId) {
        self.connections.remove(socket);
    }

    pub fn connection_count(&self) -> usize {
        self.connections.count()
    }

    /// The app's live event stream (admin console).
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// The app's message counters (and every node's samples of them).
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// The app's live counts, cluster-wide: connections on every node (from heartbeats),
    /// occupied channels (from the replica), message rates over the last seconds (from every
    /// node's counters).
    pub fn counts(&self) -> AppCounts {
        let (messages_in_per_second, messages_out_per_second) = self.traffic.rates(self.node);
        AppCounts {
            connections: self.connections.total(),
            occupied_channels: self.channels.occupied(),
            messages_in_per_second,
            messages_out_per_second,
        }
    }

    /// The outboxes of this app's open connections on this node.
    pub(crate) fn outboxes(&self) -> Vec<Outbox> {
        self.connections.outboxes()
    }

    /// Closes every connection of this app on this node with 4003; returns how many.
    pub fn close_all(&self) -> usize {
        self.connections.close_all()
    }

    /// The app left the registry: closes its connections with 4003 and refuses new ones.
    pub(crate) fn retire(&self) -> usize {
        self.connections.retire()
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
    ) -> Result<Subscribed, PresenceFull> {
        self.subscribe_resuming(socket, outbox, channel, member, None, None)
    }

    /// Subscribes, then queues what the client missed since `resume` (or
    /// `herald:resume_failed`) right after `subscription_succeeded`, before any later event.
    pub(crate) fn subscribe_resuming(
        &self,
        socket: SocketId,
        outbox: &Outbox,
        channel: &ChannelName,
        member: Option<PresenceMember>,
        cookie: Option<Arc<str>>,
        resume: Option<Resume>,
    ) -> Result<Subscribed, PresenceFull> {
        let app = self.app();
        let res = self.channels.subscribe(
            &app,
            &self.cache,
            socket,
            outbox,
            channel,
            member,
            cookie,
            resume,
        )?;
        let stats = &self.continuity;
        match res.resumed {
            Some(Resumed::Replayed { events }) => {
                stats.resumed.fetch_add(1, Ordering::Relaxed);
                stats
                    .events_replayed
                    .fetch_add(events as u64, Ordering::Relaxed);
            }
            Some(Resumed::Failed { failure, events }) => {
                tracing::info!(
                    app_id = %self.id,
                    %channel,
                    %socket,
                    reason = failure.as_str(),
                    replayed = events,
                    "resume failed: the client is sent herald:resume_failed, then what is left"
                );
                stats
                    .events_replayed
                    .fetch_add(events as u64, Ordering::Relaxed);
                let counter = match failure {
                    ResumeFailure::WindowPassed => &stats.failed_window_passed,
                    ResumeFailure::HistoryTrimmed => &stats.failed_history_trimmed,
                    ResumeFailure::LogLost => &stats.failed_log_lost,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
        Ok(res)
    }

    /// Removes a socket from a channel; a no-op when it was not subscribed.
    pub fn unsubscribe(&self, socket: SocketId, channel: &ChannelName) -> Unsubscribed {
        self.leave(socket, channel, Leaving::OnPurpose)
    }

    /// Removes a socket from a channel; `leaving` decides where it may resume.
    pub(crate) fn leave(
        &self,
        socket: SocketId,
        channel: &ChannelName,
        leaving: Leaving,
    ) -> Unsubscribed {
        self.channels
            .unsubscribe(&self.app(), socket, channel, leaving)
    }

    /// Where a socket with these identities left `channel`, if it is to resume there. Taken
    /// once per departure (see [`crate::history`]).
    pub fn take_resume(&self, identities: &[Identity], channel: &ChannelName) -> Option<Resume> {
        HistoryLimits::of(&self.app())?;
        self.resumes.take(identities, channel)
    }

    /// Where a client resumes whose socket on another node stopped without a departure (the
    /// node was killed): a remote socket subscribed to `channel` under one of these identities
    /// (its presence `user_id`, its sign-in, or its resume cookie), on a node silent for longer
    /// than its heartbeat interval (`silent`, from [`crate::Broker::silent_nodes`]), is taken to
    /// be this client's old socket, and it resumes from [`SILENCE_SLACK`] before that node was
    /// last heard: at least once (a second device or tab of the same identity subscribing while
    /// a node is silent gets those events too).
    pub(crate) fn resume_after_silence(
        &self,
        identities: &[Identity],
        channel: &ChannelName,
        silent: &[(u64, u64)],
    ) -> Option<Resume> {
        if silent.is_empty() || identities.is_empty() {
            return None;
        }
        HistoryLimits::of(&self.app())?;
        let silent_for = |node: u64| silent.iter().find(|(n, _)| *n == node).map(|(_, ms)| *ms);
        let mut users = Vec::new();
        let mut cookie = None;
        for identity in identities {
            match identity {
                Identity::User(user) => users.push(user),
                Identity::Cookie(token) => cookie = Some(token.as_str()),
            }
        }
        let signed_in: Vec<SocketId> = users
            .iter()
            .flat_map(|user| self.users.remote_sockets(user))
            .collect();
        let now = clock_ms();
        let slack = u64::try_from(SILENCE_SLACK.as_millis()).unwrap_or(u64::MAX);
        let (socket, after) =
            self.channels
                .remote_stopped(channel, &users, &signed_in, cookie, |socket| {
                    silent_for(socket.node).map(|silent| now.saturating_sub(silent + slack))
                })?;
        let silent = silent_for(socket.node).unwrap_or(0);
        Some(Resume {
            after,
            old_socket: socket,
            left_ms: history::wall_ms().saturating_sub(silent),
        })
    }

    /// Remembers where a departing socket with these identities stopped on `channel`.
    pub fn record_departure(
        &self,
        identities: &[Identity],
        channel: &ChannelName,
        departure: Departure,
    ) {
        if identities.is_empty() || HistoryLimits::of(&self.app()).is_none() {
            return;
        }
        if !self.resumes.record(identities, channel, departure) {
            self.continuity
                .marks_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Fans one event out to this node's subscribers of `channel`, except `except`, in the
    /// channel's one order. The frame's bytes are shared, never copied per subscriber.
    #[inline]
    pub fn deliver(
        &self,
        channel: &ChannelName,
        frame: &Frame,
        except: Option<SocketId>,
        durability: Durability,
    ) -> Delivery {
        let app = self.settings.read().clone();
        let res = self
            .channels
            .deliver(&app, channel, frame, except, durability);
        if res.delivered != 0 {
            self.traffic.count_out(res.delivered as u64);
        }
        if self.monitor.active() {
            self.monitor_delivery(channel, frame, except, durability, res);
        }
        self.maybe_sweep(&app);
        res
    }

    /// A logged event's delivery on this node, for the watchers (only while watched). The
    /// event's name and data size are read back from the frame, so nothing is carried for
    /// them while nobody watches.
    #[cold]
    fn monitor_delivery(
        &self,
        channel: &ChannelName,
        frame: &Frame,
        except: Option<SocketId>,
        durability: Durability,
        res: Delivery,
    ) {
        if matches!(durability, Durability::Ephemeral | Durability::Backfill(_)) {
            // Client events are shown where they are sent; backfill reaches nobody.
            return;
        }
        self.monitor.emit_with(|| {
            let (event, size) = crate::monitor::frame_event(frame.text());
            MonitorEvent::Published {
                channel: channel.to_string(),
                event,
                size,
                excluded_socket_id: except.map(|s| s.to_string()),
                reached: res.delivered,
            }
        });
    }

    /// Expires history older than the window and drops channels left with nothing, at most once
    /// a second: lazily from the publish path, and from [`crate::Node::sweep_history`] on a timer
    /// for apps that went quiet.
    fn maybe_sweep(&self, app: &App) {
        let now = clock_ms();
        let next = self.next_sweep_ms.load(Ordering::Relaxed);
        if now < next
            || self
                .next_sweep_ms
                .compare_exchange(
                    next,
                    now + SWEEP_INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        self.channels.sweep(app);
    }

    /// Some of this app's events never reached this node (a gap in the cluster's log): no
    /// resume may span them, and every local subscriber hears `herald:resume_failed`. Returns how
    /// many subscriptions were told.
    pub fn lose_history(&self) -> usize {
        self.channels.lose()
    }

    /// Expires history unless a sweep ran within the last second.
    pub(crate) fn sweep_if_due(&self) {
        self.maybe_sweep(&self.app());
    }

    /// Remembers the last event published to a cache channel.
    pub fn store_cache(&self, channel: &ChannelName, event: &str, data: &str, frame: &Frame) {
        self.cache.store(channel, event, data, frame);
    }

    pub fn cache_info(&self, channel: &ChannelName) -> Option<CacheInfo> {
        self.cache.info(channel)
    }

    pub fn channel_info(&self, channel: &ChannelName) -> ChannelInfo {
        self.channels.info(channel)
    }

    /// Occupied channels whose names start with `prefix`.
    pub fn channels(&self, prefix: &str) -> Vec<(ChannelName, ChannelInfo)> {
        self.channels.list(prefix)
    }

    /// Distinct users of a presence channel.
    pub fn presence_users(&self, channel: &ChannelName) -> Vec<UserId> {
        self.channels.presence_users(channel)
    }

    /// Members of a presence channel with their `user_info`, sorted by user id (admin API).
    pub fn presence_members(&self, channel: &ChannelName) -> Vec<(UserId, Option<Box<RawValue>>)> {
        self.channels.presence_members(channel)
    }

    /// Registers a signed-in socket; true when the user just came online (cluster-wide).
    pub(crate) fn sign_in(&self, user: &UserId, socket: SocketId, outbox: &Outbox) -> bool {
        let came_online = self.users.sign_in(user, socket, outbox);
        if came_online {
            self.watchlists.notify(user, Transition::Online);
        }
        came_online
    }

    /// Forgets a signed-in socket; true when the user just went offline (cluster-wide).
    pub(crate) fn sign_out(&self, user: &UserId, socket: SocketId) -> bool {
        let went_offline = self.users.sign_out(user, socket);
        if went_offline {
            self.watchlists.notify(user, Transition::Offline);
        }
        went_offline
    }

    pub fn is_online(&self, user: &UserId) -> bool {
        self.users.is_online(user)
    }

    /// Registers `socket` as watching `users` and returns which of them are online now.
    pub fn watch(
        &self,
        socket: SocketId,
        outbox: &Outbox,
        users: &[UserId],
    ) -> (Vec<UserId>, Vec<UserId>) {
        self.watchlists.watch(socket, outbox, users);
        users.iter().cloned().partition(|u| self.is_online(u))
    }

    pub(crate) fn unwatch(&self, socket: SocketId, users: &[UserId]) {
        self.watchlists.unwatch(socket, users);
    }

    /// Closes this node's connections signed in as `user`; returns how many. The broker's
    /// `terminate_user` does every node.
    pub fn terminate_user(&self, user: &UserId) -> usize {
        self.users.terminate(user)
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
        cookie: Option<Arc<str>>,
    ) {
        self.channels
            .remote_subscribe(&self.app(), socket, channel, member, cookie);
    }

    /// Another node's socket left a channel. Idempotent.
    pub fn remote_unsubscribe(&self, socket: SocketId, channel: &ChannelName) {
        self.channels
            .remote_unsubscribe(&self.app(), socket, channel);
    }

    pub fn remote_sign_in(&self, socket: SocketId, user: &UserId) {
        if self.users.remote_sign_in(user, socket) {
            self.watchlists.notify(user, Transition::Online);
        }
    }

    pub fn remote_sign_out(&self, socket: SocketId, user: &UserId) {
        if self.users.remote_sign_out(user, socket) {
            self.watchlists.notify(user, Transition::Offline);
        }
    }

    /// Records how many connections this app has on another node.
    pub fn set_remote_connections(&self, node: u64, count: usize) {
        self.connections.set_remote(node, count);
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
        let app = self.app();
        let keep: HashSet<(&ChannelName, SocketId)> = state
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
            self.channels.remote_subscribe(
                &app,
                entry.socket,
                &entry.channel,
                member,
                entry.cookie.clone(),
            );
        }
        let removed = self.channels.remove_stale(&app, node, &keep);
        let signed_in: HashSet<(SocketId, &UserId)> =
            state.signed_in.iter().map(|(s, u)| (*s, u)).collect();
        for (socket, user) in &state.signed_in {
            self.remote_sign_in(*socket, user);
        }
        for (socket, user) in self.users.remote_of(node) {
            if !signed_in.contains(&(socket, &user)) {
                self.remote_sign_out(socket, &user);
            }
        }
        if state == &LocalState::default() {
            self.connections.forget_remote(node);
            self.traffic.forget(node);
        }
        removed
    }

    /// This node's own subscriptions and sign-ins, for other nodes to replicate.
    pub fn local_state(&self) -> LocalState {
        LocalState {
            subscriptions: self.channels.local(),
            signed_in: self.users.local(),
        }
    }
}
