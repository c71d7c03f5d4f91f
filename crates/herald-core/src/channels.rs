//! The channel table of one app: every channel with a subscriber on any node or a history to
//! keep, its local subscribers' outboxes, its remote subscribers, its presence roster and its log.
//! The fan-out ([`Channels::deliver`]) reads the table; subscriptions and replication write it.
//!
//! One order per channel: the fan-out of an event holds the channel's log mutex while it assigns
//! the event's position, keeps it in the history and pushes it to every subscriber, so concurrent
//! publishes to one channel reach every subscriber in the same order, while publishes to
//! different channels still run in parallel under the table's shared read lock. A subscription
//! holds the table's write lock, so its `subscription_succeeded` and replay come before any later
//! event.
//!
//! Invariants: a channel entry exists only while some node has a subscriber or its log keeps
//! history; under the table's lock and a log's mutex nothing happens but bookkeeping and
//! non-blocking `Outbox::push` (lock order: table, then one channel's log, then outboxes).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_protocol::server_message;
use herald_protocol::{ChannelKind, ChannelName, SocketId, UserId};
use serde_json::value::RawValue;

use crate::app::App;
use crate::cache::CacheStore;
use crate::error::PresenceFull;
use crate::history::{
    self, HistoryLimits, Log, Position, Resume, ResumeFailure, Resumed, RESUME_FAILED_EVENT,
};
use crate::lock_order::{Level, OrderedRwLock};
use crate::outbox::{Frame, Outbox, PushError};
use crate::presence::PresenceRoster;
use parking_lot::Mutex;

/// Channels with more subscribers than this get `subscription_count` at most every 5 s.
const SUBSCRIPTION_COUNT_THROTTLE_ABOVE: usize = 100;
const SUBSCRIPTION_COUNT_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Channel {
    /// Sockets on this node.
    subscribers: HashMap<SocketId, Subscriber>,
    /// Sockets on other nodes (known through the broker), with their identities.
    remote: HashMap<SocketId, Remote>,
    /// Members on every node: local and remote sockets alike.
    presence: Option<PresenceRoster>,
    last_count_sent: Option<Instant>,
    /// Positions and history. Held by the fan-out while it pushes, for one order per channel.
    log: Mutex<Log>,
}

impl Channel {
    fn new(kind: ChannelKind) -> Channel {
        Channel {
            subscribers: HashMap::new(),
            remote: HashMap::new(),
            presence: (kind == ChannelKind::Presence).then(PresenceRoster::default),
            last_count_sent: None,
            log: Mutex::default(),
        }
    }

    /// No node has a subscriber.
    fn is_vacant(&self) -> bool {
        self.subscribers.is_empty() && self.remote.is_empty()
    }

    /// Invariant: a channel entry exists only while some node has a subscriber or its log
    /// keeps history.
    fn can_drop(&mut self) -> bool {
        self.is_vacant() && self.log.get_mut().is_empty()
    }

    /// Pushes one event to every local subscriber but `except`, in the channel's one order.
    fn fan_out(
        &self,
        frame: &Frame,
        except: Option<SocketId>,
        durability: Durability,
        limits: Option<HistoryLimits>,
    ) -> Delivery {
        let mut log = self.log.lock();
        match durability {
            Durability::Logged => {
                let position = log.append(frame, except, limits);
                push_logged(&self.subscribers, frame, except, position)
            }
            Durability::At(position) => {
                if !log.append_at(position, frame, except, limits) {
                    return Delivery::default();
                }
                push_logged(&self.subscribers, frame, except, position)
            }
            Durability::Backfill(position) => {
                log.append_at(position, frame, except, limits);
                Delivery::default()
            }
            Durability::Ephemeral => push_all(&self.subscribers, frame, except),
        }
    }

    /// Subscriptions on every node.
    fn count(&self) -> usize {
        self.subscribers.len() + self.remote.len()
    }

    fn info(&self) -> ChannelInfo {
        ChannelInfo {
            occupied: !self.is_vacant(),
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
    /// The socket's resume cookie token, so that its client can resume on another node if
    /// this one dies (`AppState::resume_after_silence`).
    pub cookie: Option<Arc<str>>,
}

/// Another node's socket on a channel.
#[derive(Debug)]
struct Remote {
    /// Its presence identity.
    user: Option<UserId>,
    /// Its resume cookie token.
    cookie: Option<Arc<str>>,
}

#[derive(Debug)]
struct Subscriber {
    outbox: Outbox,
    /// The presence identity this socket subscribed with.
    user: Option<UserId>,
    /// The socket's resume cookie token (replicated with the subscription).
    cookie: Option<Arc<str>>,
    /// The log's last position when the socket subscribed (after its replay).
    joined: Position,
    /// The last logged event queued for this socket. Written by the fan-out under the table's
    /// read lock and the log's mutex, read under the table's write lock: the locks order the
    /// accesses, so relaxed atomics suffice.
    last_ms: AtomicU64,
    last_seq: AtomicU64,
}

impl Subscriber {
    fn new(
        outbox: &Outbox,
        user: Option<UserId>,
        cookie: Option<Arc<str>>,
        joined: Position,
    ) -> Subscriber {
        Subscriber {
            outbox: outbox.clone(),
            user,
            cookie,
            joined,
            last_ms: AtomicU64::new(joined.ms),
            last_seq: AtomicU64::new(joined.seq),
        }
    }

    fn last(&self) -> Position {
        Position {
            ms: self.last_ms.load(Relaxed),
            seq: self.last_seq.load(Relaxed),
        }
    }
}

/// Whether an event enters the channel's log (gets a position and is kept for replay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Events published through the HTTP API on a single node: the channel's log assigns the
    /// next position.
    Logged,
    /// An event read from the cluster's log at this position (the same on every node). A
    /// position the channel's log already passed is a duplicate and is dropped.
    At(Position),
    /// An event read back from the cluster's log when the node starts: kept for replay only,
    /// never pushed (it predates every subscription here).
    Backfill(Position),
    /// Client events: ephemeral (typing indicators and the like), delivered in the channel's
    /// order but never replayed.
    Ephemeral,
}

/// How a socket leaves a channel, which decides whether and where it may resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// It unsubscribed, or its client closed the connection: it does not expect a replay.
    OnPurpose,
    /// The server closed it after writing everything queued (a drain's 4200): it resumes exactly
    /// after the last event queued for it.
    Drained,
    /// The connection was lost. What the client received is known only up to the last
    /// `pusher:ping` it answered, sent at `confirmed_ms` ([`crate::outbox::clock_ms`]; 0 if
    /// none): it resumes after the last event queued before that ping.
    Lost { confirmed_ms: u64 },
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

/// What a subscribe changed, for webhooks and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    pub channel_occupied: bool,
    pub member_added: bool,
    pub cache_miss: bool,
    /// What was done about the events a returning client missed, when it was recognised.
    pub resumed: Option<Resumed>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribed {
    pub channel_vacated: bool,
    pub member_removed: bool,
    /// Where the socket may resume, for a socket that did not leave on purpose.
    pub resume_after: Option<Position>,
}

/// Occupancy of one channel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub occupied: bool,
    pub subscription_count: usize,
    pub user_count: Option<usize>,
}

/// The channel table of one app.
#[derive(Debug)]
pub(crate) struct Channels {
    table: OrderedRwLock<HashMap<ChannelName, Channel>>,
}

impl Default for Channels {
    fn default() -> Self {
        Channels {
            table: OrderedRwLock::new(Level::Channels, HashMap::new()),
        }
    }
}

impl Channels {
    /// Adds a socket to a channel and queues its `subscription_succeeded` (and the cached event or
    /// `cache_miss`) before any broadcast can reach it. Subscribing again is idempotent.
    ///
    /// # Errors
    /// `PresenceFull` when a new member would exceed the app's presence limit.
    // Internal: every argument is a distinct part of the table's state or of the request; the
    // facade (`AppState::subscribe_resuming`) is what callers see.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn subscribe(
        &self,
        app: &App,
        cache: &CacheStore,
        socket: SocketId,
        outbox: &Outbox,
        channel: &ChannelName,
        member: Option<PresenceMember>,
        cookie: Option<Arc<str>>,
        resume: Option<Resume>,
    ) -> Result<Subscribed, PresenceFull> {
        let mut res = Subscribed::default();
        {
            let mut channels = self.table.write();
            // Looked up under the channel lock (lock order: channels, then cache), so an event
            // published meanwhile is either in the cache or delivered after we are subscribed.
            let cached = channel.is_cache().then(|| cache.get(channel));
            let is_presence = channel.kind() == ChannelKind::Presence;
            if let (Some(member), Some(existing)) = (&member, channels.get(channel)) {
                let roster = existing.presence.as_ref();
                let is_new = roster.is_none_or(|r| !r.contains(&member.user_id));
                if is_new && roster.is_some_and(|r| r.user_count() >= app.max_presence_members) {
                    return Err(PresenceFull {
                        max: app.max_presence_members,
                    });
                }
            }
            res.channel_occupied = channels.get(channel).is_none_or(Channel::is_vacant);
            let entry = channels
                .entry(channel.clone())
                .or_insert_with(|| Channel::new(channel.kind()));
            let joined = entry.log.get_mut().last();
            let previous_user = entry.subscribers.get(&socket).and_then(|s| s.user.clone());
            let user = member.as_ref().map(|m| m.user_id.clone());
            if let (Some(roster), Some(old)) = (entry.presence.as_mut(), &previous_user) {
                if Some(old) != user.as_ref() && roster.remove(socket, old) {
                    let frame = Frame::new(server_message::member_removed(channel.as_str(), old));
                    push_all(&entry.subscribers, &frame, Some(socket));
                }
            }
            entry
                .subscribers
                .insert(socket, Subscriber::new(outbox, user, cookie, joined));
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
            if let (Some(resume), Some(limits)) = (resume, HistoryLimits::of(app)) {
                let log = entry.log.get_mut();
                log.expire(limits, crate::outbox::clock_ms());
                res.resumed = Some(replay(channel, log, &resume, limits, outbox));
            }
            let replayed = res.resumed.is_some_and(|r| r.events() > 0);
            match cached {
                // The replay ended with the channel's last event.
                Some(Some(_)) if replayed => {}
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
    pub(crate) fn unsubscribe(
        &self,
        app: &App,
        socket: SocketId,
        channel: &ChannelName,
        leaving: Leaving,
    ) -> Unsubscribed {
        let mut res = Unsubscribed::default();
        let mut channels = self.table.write();
        let Some(entry) = channels.get_mut(channel) else {
            return res;
        };
        let Some(subscriber) = entry.subscribers.remove(&socket) else {
            return res;
        };
        res.resume_after = match leaving {
            Leaving::OnPurpose => None,
            Leaving::Drained => Some(subscriber.last()),
            Leaving::Lost { confirmed_ms } => {
                // An event appended in the ping's own millisecond may have been queued after it.
                let confirmed = entry
                    .log
                    .get_mut()
                    .confirmed_before(confirmed_ms.saturating_sub(1));
                Some(confirmed.max(subscriber.joined).min(subscriber.last()))
            }
        };
        if let (Some(roster), Some(user)) = (entry.presence.as_mut(), subscriber.user.as_ref()) {
            if roster.remove(socket, user) {
                res.member_removed = true;
                let frame = Frame::new(server_message::member_removed(channel.as_str(), user));
                push_all(&entry.subscribers, &frame, None);
            }
        }
        if entry.is_vacant() {
            res.channel_vacated = true;
            if entry.can_drop() {
                channels.remove(channel);
            }
        } else if app.subscription_count && entry.presence.is_none() {
            send_subscription_count(channel, entry);
        }
        res
    }

    /// Fans one event out to this node's subscribers of `channel`, except `except`, in the
    /// channel's one order; a logged event gets the next position and, with history on, is
    /// kept. The frame's bytes are shared, never copied per subscriber.
    #[inline]
    pub(crate) fn deliver(
        &self,
        app: &App,
        channel: &ChannelName,
        frame: &Frame,
        except: Option<SocketId>,
        durability: Durability,
    ) -> Delivery {
        let limits = HistoryLimits::of(app);
        {
            let channels = self.table.read();
            if let Some(entry) = channels.get(channel) {
                return entry.fan_out(frame, except, durability, limits);
            }
            if durability == Durability::Ephemeral || limits.is_none() {
                // Not kept here; a cluster position is still the log's: see `lose`.
                return Delivery::default();
            }
        }
        // Nobody here, but the event is kept for clients that come back.
        let mut channels = self.table.write();
        channels
            .entry(channel.clone())
            .or_insert_with(|| Channel::new(channel.kind()))
            .fan_out(frame, except, durability, limits)
    }

    /// Events of this app may have been lost on their way here (a gap in the cluster's log):
    /// no resume may span them, and every local subscriber is told with `herald:resume_failed`
    /// (reason `log_lost`) on each of its channels, so an app can reload what it shows.
    pub(crate) fn lose(&self) -> usize {
        let mut told = 0;
        let mut channels = self.table.write();
        for (name, entry) in channels.iter_mut() {
            entry.log.get_mut().lose();
            let frame = resume_failed(name, ResumeFailure::LogLost);
            told += push_all(&entry.subscribers, &frame, None).delivered;
        }
        told
    }

    /// Expires history older than the app's window and drops channel entries left with neither
    /// subscribers nor history: an idle channel costs nothing after its window.
    pub(crate) fn sweep(&self, app: &App) {
        let now = crate::outbox::clock_ms();
        let limits = HistoryLimits::of(app);
        let mut channels = self.table.write();
        channels.retain(|_, entry| {
            let log = entry.log.get_mut();
            match limits {
                Some(limits) => log.expire(limits, now),
                None => log.clear(),
            }
            !entry.can_drop()
        });
    }

    pub(crate) fn info(&self, channel: &ChannelName) -> ChannelInfo {
        let channels = self.table.read();
        match channels.get(channel) {
            Some(entry) => entry.info(),
            None => ChannelInfo {
                user_count: (channel.kind() == ChannelKind::Presence).then_some(0),
                ..ChannelInfo::default()
            },
        }
    }

    /// Occupied channels whose names start with `prefix`.
    pub(crate) fn list(&self, prefix: &str) -> Vec<(ChannelName, ChannelInfo)> {
        let channels = self.table.read();
        channels
            .iter()
            .filter(|(name, entry)| name.as_str().starts_with(prefix) && !entry.is_vacant())
            .map(|(name, entry)| (name.clone(), entry.info()))
            .collect()
    }

    /// How many channels are occupied (on any node).
    pub(crate) fn occupied(&self) -> usize {
        let channels = self.table.read();
        channels.values().filter(|entry| !entry.is_vacant()).count()
    }

    /// Distinct users of a presence channel.
    pub(crate) fn presence_users(&self, channel: &ChannelName) -> Vec<UserId> {
        let channels = self.table.read();
        channels
            .get(channel)
            .and_then(|c| c.presence.as_ref())
            .map(|r| r.user_ids().cloned().collect())
            .unwrap_or_default()
    }

    /// Members of a presence channel with their `user_info` (raw JSON), sorted by user id.
    pub(crate) fn presence_members(
        &self,
        channel: &ChannelName,
    ) -> Vec<(UserId, Option<Box<RawValue>>)> {
        let channels = self.table.read();
        let mut members: Vec<_> = channels
            .get(channel)
            .and_then(|c| c.presence.as_ref())
            .map(|r| {
                r.members()
                    .map(|m| (m.user_id.clone(), m.user_info.map(ToOwned::to_owned)))
                    .collect()
            })
            .unwrap_or_default();
        drop(channels);
        members.sort_by(|a, b| a.0.cmp(&b.0));
        members
    }

    /// Another node's socket subscribed. Idempotent.
    /// Another node's socket on `channel`, among `signed_in` and the presence sockets of
    /// `users`, that `stopped_ms` says stopped receiving at [`crate::outbox::clock_ms`] `ms`
    /// (its node went silent); with the position a client of it had certainly received (the
    /// last event this node appended before then). Looks only at those sockets, never at every
    /// subscriber of the channel.
    pub(crate) fn remote_stopped(
        &self,
        channel: &ChannelName,
        users: &[&UserId],
        signed_in: &[SocketId],
        cookie: Option<&str>,
        stopped_ms: impl Fn(SocketId) -> Option<u64>,
    ) -> Option<(SocketId, Position)> {
        let channels = self.table.read();
        let entry = channels.get(channel)?;
        let members = entry
            .presence
            .iter()
            .flat_map(|roster| users.iter().flat_map(|user| roster.sockets(user)));
        // A scan, but only while some node is silent (the caller checks), and only of the
        // sockets on silent nodes.
        let by_cookie = entry
            .remote
            .iter()
            .filter(|(socket, remote)| {
                cookie.is_some()
                    && remote.cookie.as_deref() == cookie
                    && stopped_ms(**socket).is_some()
            })
            .map(|(socket, _)| socket);
        let (socket, stopped) = signed_in
            .iter()
            .chain(members)
            .filter(|socket| entry.remote.contains_key(socket))
            .chain(by_cookie)
            .find_map(|socket| Some((*socket, stopped_ms(*socket)?)))?;
        let after = entry.log.lock().confirmed_before(stopped);
        Some((socket, after))
    }

    pub(crate) fn remote_subscribe(
        &self,
        app: &App,
        socket: SocketId,
        channel: &ChannelName,
        member: Option<PresenceMember>,
        cookie: Option<Arc<str>>,
    ) {
        let mut channels = self.table.write();
        let entry = channels
            .entry(channel.clone())
            .or_insert_with(|| Channel::new(channel.kind()));
        let user = member.as_ref().map(|m| m.user_id.clone());
        let previous = entry.remote.insert(
            socket,
            Remote {
                user: user.clone(),
                cookie,
            },
        );
        let previous = previous.map(|p| p.user);
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
        if previous.is_none() && app.subscription_count && entry.presence.is_none() {
            send_subscription_count(channel, entry);
        }
    }

    /// Another node's socket left a channel. Idempotent.
    pub(crate) fn remote_unsubscribe(&self, app: &App, socket: SocketId, channel: &ChannelName) {
        let mut channels = self.table.write();
        let _ = remove_remote(app, &mut channels, socket, channel);
    }

    /// Removes `node`'s subscriptions that are not in `keep`; returns them.
    pub(crate) fn remove_stale(
        &self,
        app: &App,
        node: u64,
        keep: &HashSet<(&ChannelName, SocketId)>,
    ) -> Vec<SubscriptionEntry> {
        let mut channels = self.table.write();
        let stale: Vec<(ChannelName, SocketId)> = channels
            .iter()
            .flat_map(|(name, c)| c.remote.keys().map(move |s| (name, *s)))
            .filter(|(name, s)| s.node == node && !keep.contains(&(*name, *s)))
            .map(|(name, s)| (name.clone(), s))
            .collect();
        stale
            .into_iter()
            .filter_map(|(channel, socket)| remove_remote(app, &mut channels, socket, &channel))
            .collect()
    }

    /// This node's own subscriptions, for other nodes to replicate.
    pub(crate) fn local(&self) -> Vec<SubscriptionEntry> {
        let channels = self.table.read();
        let mut res = Vec::new();
        for (name, channel) in channels.iter() {
            for (socket, subscriber) in &channel.subscribers {
                let info = match (&channel.presence, &subscriber.user) {
                    (Some(roster), Some(user)) => roster
                        .member(user)
                        .and_then(|m| m.user_info.map(|i| i.get().to_owned())),
                    _ => None,
                };
                res.push(SubscriptionEntry {
                    channel: name.clone(),
                    socket: *socket,
                    user: subscriber.user.clone(),
                    user_info: info,
                    cookie: subscriber.cookie.clone(),
                });
            }
        }
        res
    }
}

fn remove_remote(
    app: &App,
    channels: &mut HashMap<ChannelName, Channel>,
    socket: SocketId,
    channel: &ChannelName,
) -> Option<SubscriptionEntry> {
    let entry = channels.get_mut(channel)?;
    let Remote { user, cookie } = entry.remote.remove(&socket)?;
    let removed = SubscriptionEntry {
        channel: channel.clone(),
        socket,
        user: user.clone(),
        user_info: None,
        cookie,
    };
    if let (Some(roster), Some(user)) = (entry.presence.as_mut(), user.as_ref()) {
        if roster.remove(socket, user) {
            let frame = Frame::new(server_message::member_removed(channel.as_str(), user));
            push_all(&entry.subscribers, &frame, None);
        }
    }
    if entry.can_drop() {
        channels.remove(channel);
    } else if !entry.is_vacant() && app.subscription_count && entry.presence.is_none() {
        send_subscription_count(channel, entry);
    }
    Some(removed)
}

/// Channels with at most this many local subscribers are written to by the delivering thread
/// itself (sockets with nothing queued, `Outbox::push_with`): no task is woken. Larger ones queue,
/// and their sockets' tasks write in parallel on every core: one thread writing 10,000 sockets
/// in turn is slower than two (BENCHMARKS.md).
pub const DIRECT_WRITE_MAX_SUBSCRIBERS: usize = 64;

fn push_all(
    subscribers: &HashMap<SocketId, Subscriber>,
    frame: &Frame,
    except: Option<SocketId>,
) -> Delivery {
    let mut res = Delivery::default();
    let direct = subscribers.len() <= DIRECT_WRITE_MAX_SUBSCRIBERS;
    for (socket, subscriber) in subscribers {
        if Some(*socket) == except {
            continue;
        }
        match subscriber.outbox.push_with(frame.clone(), direct) {
            Ok(()) => res.delivered += 1,
            Err(PushError::Overflow) => res.dropped_slow += 1,
            Err(PushError::Closed) => {}
        }
    }
    res
}

/// [`push_all`] for a logged event at `position`, which every recipient's `last` records (the
/// publisher's own socket too: it has the event).
fn push_logged(
    subscribers: &HashMap<SocketId, Subscriber>,
    frame: &Frame,
    except: Option<SocketId>,
    position: Position,
) -> Delivery {
    let mut res = Delivery::default();
    let direct = subscribers.len() <= DIRECT_WRITE_MAX_SUBSCRIBERS;
    for (socket, subscriber) in subscribers {
        if Some(*socket) != except {
            match subscriber.outbox.push_with(frame.clone(), direct) {
                Ok(()) => res.delivered += 1,
                Err(PushError::Overflow) => {
                    res.dropped_slow += 1;
                    continue;
                }
                Err(PushError::Closed) => continue,
            }
        }
        subscriber.last_ms.store(position.ms, Relaxed);
        subscriber.last_seq.store(position.seq, Relaxed);
    }
    res
}

/// The share of a socket's outbox (`outbox_max_bytes`) a replay leaves free for the events that
/// follow it: a replay never makes its own socket a slow consumer, and the events published
/// while it is written still fit.
const REPLAY_RESERVE_DIVISOR: usize = 4;

/// Queues what a returning socket missed right after its `subscription_succeeded`: when some of
/// it is gone, `herald:resume_failed` first ("something before these may be missing"), then
/// every event still kept after its resume point, in order.
fn replay(
    channel: &ChannelName,
    log: &Log,
    resume: &Resume,
    limits: HistoryLimits,
    outbox: &Outbox,
) -> Resumed {
    let (room, cap) = outbox.room();
    let budget = room.saturating_sub(cap / REPLAY_RESERVE_DIVISOR);
    let replay = history::replay(log, resume, limits, budget);
    let events = replay.frames.len();
    if let Some(failure) = replay.failure {
        let _ = outbox.push(resume_failed(channel, failure));
    }
    for frame in replay.frames {
        let _ = outbox.push(frame.clone());
    }
    match replay.failure {
        None => Resumed::Replayed { events },
        Some(failure) => Resumed::Failed { failure, events },
    }
}

/// `herald:resume_failed` on `channel`, with `{"reason": ...}` as its data.
fn resume_failed(channel: &ChannelName, failure: ResumeFailure) -> Frame {
    let data = serde_json::json!({ "reason": failure.as_str() }).to_string();
    Frame::new(server_message::channel_event(
        RESUME_FAILED_EVENT,
        channel.as_str(),
        &data,
    ))
}

fn send_subscription_count(channel: &ChannelName, entry: &mut Channel) {
    // A user's own channel is not an app's channel (GET /channels does not list it either).
    if channel.kind() == ChannelKind::ServerToUser {
        return;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{events, sid};

    fn member(user: &str) -> Option<PresenceMember> {
        Some(PresenceMember {
            user_id: UserId(user.into()),
            user_info: None,
        })
    }

    #[test]
    fn deliver_reaches_subscribers_but_the_excluded_one() {
        let (channels, app, cache) = (Channels::default(), App::demo(), CacheStore::default());
        let news = ChannelName::parse("news", 200).unwrap();
        let (a, b) = (Outbox::new(1 << 20), Outbox::new(1 << 20));
        let res = channels
            .subscribe(&app, &cache, sid(1, 1), &a, &news, None, None, None)
            .unwrap();
        assert!(res.channel_occupied);
        channels
            .subscribe(&app, &cache, sid(1, 2), &b, &news, None, None, None)
            .unwrap();
        events(&a);
        events(&b);
        let frame = Frame::from_static(r#"{"event":"e","channel":"news","data":"1"}"#);
        let delivery = channels.deliver(&app, &news, &frame, Some(sid(1, 2)), Durability::Logged);
        assert_eq!(delivery.delivered, 1);
        assert_eq!((events(&a), events(&b).len()), (vec!["e".to_owned()], 0));
        assert!(
            !channels
                .unsubscribe(&app, sid(1, 1), &news, Leaving::OnPurpose)
                .channel_vacated
        );
        assert!(
            channels
                .unsubscribe(&app, sid(1, 2), &news, Leaving::OnPurpose)
                .channel_vacated
        );
        assert!(!channels.info(&news).occupied);
    }

    #[test]
    fn presence_members_count_local_and_remote_sockets_and_the_limit_holds() {
        let (channels, cache) = (Channels::default(), CacheStore::default());
        let mut app = App::demo();
        app.max_presence_members = 2;
        let room = ChannelName::parse("presence-room", 200).unwrap();
        let watcher = Outbox::new(1 << 20);
        channels
            .subscribe(
                &app,
                &cache,
                sid(1, 1),
                &watcher,
                &room,
                member("w"),
                None,
                None,
            )
            .unwrap();
        channels.remote_subscribe(&app, sid(2, 1), &room, member("alice"), None);
        assert_eq!(
            events(&watcher),
            [
                "pusher_internal:subscription_succeeded",
                "pusher_internal:member_added"
            ]
        );
        let late = Outbox::new(1 << 20);
        assert_eq!(
            channels.subscribe(
                &app,
                &cache,
                sid(1, 2),
                &late,
                &room,
                member("bob"),
                None,
                None
            ),
            Err(PresenceFull { max: 2 })
        );
        assert_eq!(channels.info(&room).user_count, Some(2));
        let removed = channels.remove_stale(&app, 2, &HashSet::new());
        assert_eq!(removed.len(), 1);
        assert_eq!(events(&watcher), ["pusher_internal:member_removed"]);
        assert_eq!(
            channels.local().len(),
            1,
            "only this node's own subscriptions"
        );
    }

    fn texts(outbox: &Outbox) -> Vec<String> {
        outbox
            .take()
            .0
            .iter()
            .map(|f| String::from_utf8_lossy(f.text()).into_owned())
            .collect()
    }

    #[test]
    fn concurrent_publishes_reach_every_subscriber_in_one_order() {
        let (channels, app, cache) = (
            std::sync::Arc::new(Channels::default()),
            std::sync::Arc::new(App::demo()),
            CacheStore::default(),
        );
        let news = ChannelName::parse("news", 200).unwrap();
        let outboxes: Vec<Outbox> = (0..50).map(|_| Outbox::new(1 << 24)).collect();
        for (i, outbox) in outboxes.iter().enumerate() {
            channels
                .subscribe(
                    &app,
                    &cache,
                    sid(1, i as u64),
                    outbox,
                    &news,
                    None,
                    None,
                    None,
                )
                .unwrap();
            outbox.take();
        }
        let publishers: Vec<_> = (0..8)
            .map(|t| {
                let (channels, app, news) = (channels.clone(), app.clone(), news.clone());
                std::thread::spawn(move || {
                    for n in 0..200 {
                        let frame = Frame::new(format!("{t}-{n}"));
                        channels.deliver(&app, &news, &frame, None, Durability::Logged);
                    }
                })
            })
            .collect();
        for publisher in publishers {
            publisher.join().unwrap();
        }
        let first = texts(&outboxes[0]);
        assert_eq!(first.len(), 1600);
        for outbox in &outboxes[1..] {
            assert_eq!(texts(outbox), first, "every subscriber sees one order");
        }
    }

    #[test]
    fn a_drained_socket_resumes_exactly_after_its_last_event() {
        let (channels, app, cache) = (Channels::default(), App::demo(), CacheStore::default());
        let news = ChannelName::parse("news", 200).unwrap();
        let publish = |n: usize| {
            let frame = Frame::new(format!("e{n}"));
            channels.deliver(&app, &news, &frame, None, Durability::Logged);
        };
        let old = Outbox::new(1 << 20);
        channels
            .subscribe(&app, &cache, sid(1, 1), &old, &news, None, None, None)
            .unwrap();
        publish(1);
        publish(2);
        let left = channels.unsubscribe(&app, sid(1, 1), &news, Leaving::Drained);
        let after = left.resume_after.expect("a drained socket may resume");
        publish(3);
        publish(4);
        // Nobody is subscribed, yet the history is kept (and the channel is not occupied).
        assert!(!channels.info(&news).occupied);
        let resume = Resume {
            after,
            old_socket: sid(1, 1),
            left_ms: crate::history::wall_ms(),
        };
        let new = Outbox::new(1 << 20);
        let res = channels
            .subscribe(
                &app,
                &cache,
                sid(1, 2),
                &new,
                &news,
                None,
                None,
                Some(resume),
            )
            .unwrap();
        assert_eq!(res.resumed, Some(Resumed::Replayed { events: 2 }));
        publish(5);
        let got = texts(&new);
        assert!(got[0].contains("subscription_succeeded"), "{got:?}");
        assert_eq!(got[1..], ["e3", "e4", "e5"], "a full replay: no notice");

        // A lost socket that never answered a ping resumes from where it joined.
        let left = channels.unsubscribe(&app, sid(1, 2), &news, Leaving::Lost { confirmed_ms: 0 });
        let resume = Resume {
            after: left.resume_after.unwrap(),
            old_socket: sid(1, 2),
            left_ms: crate::history::wall_ms(),
        };
        let again = Outbox::new(1 << 20);
        channels
            .subscribe(
                &app,
                &cache,
                sid(1, 3),
                &again,
                &news,
                None,
                None,
                Some(resume),
            )
            .unwrap();
        assert_eq!(texts(&again)[1..], ["e5"], "at least once: e5 again");
    }

    /// Subscribes `socket` to `channel` resuming after `after` as `old` did.
    fn resume(
        channels: &Channels,
        app: &App,
        socket: SocketId,
        outbox: &Outbox,
        channel: &ChannelName,
        after: Position,
        old: SocketId,
    ) -> Option<Resumed> {
        let resume = Resume {
            after,
            old_socket: old,
            left_ms: crate::history::wall_ms(),
        };
        let cache = CacheStore::default();
        channels
            .subscribe(
                app,
                &cache,
                socket,
                outbox,
                channel,
                None,
                None,
                Some(resume),
            )
            .unwrap()
            .resumed
    }

    #[test]
    fn a_resume_past_the_trimmed_history_gets_resume_failed_then_what_is_left() {
        let (channels, cache) = (Channels::default(), CacheStore::default());
        let mut app = App::demo();
        app.history_events = 2;
        let news = ChannelName::parse("news", 200).unwrap();
        let publish = |n: usize| {
            let frame = Frame::new(format!("e{n}"));
            channels.deliver(&app, &news, &frame, None, Durability::Logged);
        };
        let old = Outbox::new(1 << 20);
        channels
            .subscribe(&app, &cache, sid(1, 1), &old, &news, None, None, None)
            .unwrap();
        let after = channels
            .unsubscribe(&app, sid(1, 1), &news, Leaving::Drained)
            .resume_after
            .unwrap();
        for n in 0..3 {
            publish(n);
        }
        // e0 is gone; e1 and e2 are still kept.
        let new = Outbox::new(1 << 20);
        let resumed = resume(&channels, &app, sid(1, 2), &new, &news, after, sid(1, 1));
        assert_eq!(
            resumed,
            Some(Resumed::Failed {
                failure: ResumeFailure::HistoryTrimmed,
                events: 2
            })
        );
        publish(3);
        let got = texts(&new);
        assert!(got[0].contains("subscription_succeeded"), "{got:?}");
        assert!(
            got[1].contains(r#""event":"herald:resume_failed""#)
                && got[1].contains("history_trimmed"),
            "the notice first: something before what follows may be missing; {got:?}"
        );
        assert_eq!(
            got[2..],
            ["e1", "e2", "e3"],
            "what is left, in order, each once, before newer events"
        );

        // Its position is the channel's last after the replay: a later resume replays none of
        // it again.
        let after = channels
            .unsubscribe(&app, sid(1, 2), &news, Leaving::Drained)
            .resume_after
            .unwrap();
        publish(4);
        let again = Outbox::new(1 << 20);
        let resumed = resume(&channels, &app, sid(1, 3), &again, &news, after, sid(1, 2));
        assert_eq!(resumed, Some(Resumed::Replayed { events: 1 }));
        assert_eq!(texts(&again)[1..], ["e4"]);
    }

    #[test]
    fn a_replay_that_would_overflow_the_outbox_keeps_the_newest_that_fit() {
        let (channels, cache) = (Channels::default(), CacheStore::default());
        let app = App::demo();
        let news = ChannelName::parse("news", 200).unwrap();
        let old = Outbox::new(1 << 20);
        channels
            .subscribe(&app, &cache, sid(1, 1), &old, &news, None, None, None)
            .unwrap();
        let after = channels
            .unsubscribe(&app, sid(1, 1), &news, Leaving::Drained)
            .resume_after
            .unwrap();
        for n in 0..10 {
            // 100 bytes each.
            let frame = Frame::new(format!("{n:0>100}"));
            channels.deliver(&app, &news, &frame, None, Durability::Logged);
        }
        // A 1,000-byte outbox: the replay leaves a quarter free, so after
        // subscription_succeeded and the notice, six frames fit.
        let small = Outbox::new(1000);
        let resumed = resume(&channels, &app, sid(1, 2), &small, &news, after, sid(1, 1));
        let Some(Resumed::Failed {
            failure: ResumeFailure::HistoryTrimmed,
            events,
        }) = resumed
        else {
            panic!("{resumed:?}");
        };
        assert!(!small.is_closing(), "never a slow consumer by its replay");
        let got = texts(&small);
        assert_eq!(got.len(), 2 + events);
        assert!(got[1].contains("herald:resume_failed"), "{got:?}");
        let expected: Vec<String> = (10 - events..10).map(|n| format!("{n:0>100}")).collect();
        assert_eq!(got[2..], expected, "the newest, in order");
        assert!((4..10).contains(&events), "{events} events replayed");
    }

    #[test]
    fn a_lost_log_still_replays_nothing() {
        let (channels, cache) = (Channels::default(), CacheStore::default());
        let app = App::demo();
        let news = ChannelName::parse("news", 200).unwrap();
        let old = Outbox::new(1 << 20);
        channels
            .subscribe(&app, &cache, sid(1, 1), &old, &news, None, None, None)
            .unwrap();
        let after = channels
            .unsubscribe(&app, sid(1, 1), &news, Leaving::Drained)
            .resume_after
            .unwrap();
        let publish = |n: usize| {
            let frame = Frame::new(format!("e{n}"));
            channels.deliver(&app, &news, &frame, None, Durability::Logged);
        };
        publish(1);
        channels.lose();
        publish(2);
        let new = Outbox::new(1 << 20);
        let resumed = resume(&channels, &app, sid(1, 2), &new, &news, after, sid(1, 1));
        assert_eq!(
            resumed,
            Some(Resumed::Failed {
                failure: ResumeFailure::LogLost,
                events: 0
            })
        );
        assert_eq!(
            events(&new),
            [
                "pusher_internal:subscription_succeeded",
                "herald:resume_failed"
            ],
            "no replay spans a hole of unknown extent"
        );
    }

    #[test]
    fn history_bounds_hold_under_a_publish_flood() {
        let (channels, mut app) = (Channels::default(), App::demo());
        app.history_events = 100;
        app.history_max_bytes = 64 * 1024;
        let news = ChannelName::parse("news", 200).unwrap();
        for n in 0..20_000 {
            // Frames of 1 to 2 KiB: the byte bound binds before the count bound.
            let frame = Frame::new("x".repeat(1024 + n % 1024));
            channels.deliver(&app, &news, &frame, None, Durability::Logged);
            if n % 997 == 0 {
                let table = channels.table.read();
                let (events, bytes) = table[&news].log.lock().size();
                assert!(
                    events <= 100 && bytes <= 64 * 1024,
                    "{events} events, {bytes} bytes"
                );
            }
        }
        let table = channels.table.read();
        let (events, bytes) = table[&news].log.lock().size();
        assert!(events > 0 && events <= 100 && bytes <= 64 * 1024);
    }

    #[test]
    fn an_idle_channel_is_dropped_once_its_history_expired() {
        let (channels, cache) = (Channels::default(), CacheStore::default());
        let mut app = App::demo();
        let news = ChannelName::parse("news", 200).unwrap();
        channels.deliver(
            &app,
            &news,
            &Frame::new("e".into()),
            None,
            Durability::Logged,
        );
        channels.sweep(&app);
        assert_eq!(channels.table.read().len(), 1, "kept for its window");
        app.history_events = 0;
        channels.sweep(&app);
        assert_eq!(channels.table.read().len(), 0, "history off: nothing kept");
        let _ = cache;
    }

    #[test]
    fn a_cache_channel_serves_its_last_event_or_cache_miss() {
        let (channels, app, cache) = (Channels::default(), App::demo(), CacheStore::default());
        let prices = ChannelName::parse("cache-prices", 200).unwrap();
        let first = Outbox::new(1 << 20);
        let res = channels
            .subscribe(&app, &cache, sid(1, 1), &first, &prices, None, None, None)
            .unwrap();
        assert!(res.cache_miss);
        assert_eq!(
            events(&first),
            [
                "pusher_internal:subscription_succeeded",
                "pusher:cache_miss"
            ]
        );
        let frame = Frame::from_static(r#"{"event":"tick","channel":"cache-prices","data":"1"}"#);
        cache.store(&prices, "tick", "1", &frame);
        let second = Outbox::new(1 << 20);
        channels
            .subscribe(&app, &cache, sid(1, 2), &second, &prices, None, None, None)
            .unwrap();
        assert_eq!(
            events(&second),
            ["pusher_internal:subscription_succeeded", "tick"]
        );
    }
}
