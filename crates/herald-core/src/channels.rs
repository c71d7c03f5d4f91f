//! The channel table of one app: every channel with a subscriber on any node, its local
//! subscribers' outboxes, its remote subscribers, and its presence roster. The fan-out
//! ([`Channels::deliver`]) reads it; subscriptions and replication write it.
//!
//! Invariant: a channel entry exists only while some node has a subscriber, and under the
//! table's lock nothing happens but bookkeeping and non-blocking `Outbox::push`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use herald_protocol::server_message;
use herald_protocol::{ChannelKind, ChannelName, SocketId, UserId};
use serde_json::value::RawValue;

use crate::app::App;
use crate::cache::CacheStore;
use crate::lock_order::{Level, OrderedRwLock};
use crate::outbox::{Frame, Outbox, PushError};
use crate::presence::PresenceRoster;

/// Channels with more subscribers than this get `subscription_count` at most every 5 s.
const SUBSCRIPTION_COUNT_THROTTLE_ABOVE: usize = 100;
const SUBSCRIPTION_COUNT_INTERVAL: Duration = Duration::from_secs(5);

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

#[derive(Debug)]
struct Subscriber {
    outbox: Outbox,
    /// The presence identity this socket subscribed with.
    user: Option<UserId>,
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
    pub(crate) fn subscribe(
        &self,
        app: &App,
        cache: &CacheStore,
        socket: SocketId,
        outbox: &Outbox,
        channel: &ChannelName,
        member: Option<PresenceMember>,
    ) -> Result<Subscribed, SubscribeError> {
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
    pub(crate) fn unsubscribe(
        &self,
        app: &App,
        socket: SocketId,
        channel: &ChannelName,
    ) -> Unsubscribed {
        let mut res = Unsubscribed::default();
        let mut channels = self.table.write();
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
        } else if app.subscription_count && entry.presence.is_none() {
            send_subscription_count(channel, entry);
        }
        res
    }

    /// Fans one event out to this node's subscribers of `channel`, except `except`.
    /// The frame's bytes are shared, never copied per subscriber.
    #[inline]
    pub(crate) fn deliver(
        &self,
        channel: &ChannelName,
        frame: &Frame,
        except: Option<SocketId>,
    ) -> Delivery {
        let channels = self.table.read();
        match channels.get(channel) {
            Some(entry) => push_all(&entry.subscribers, frame, except),
            None => Delivery::default(),
        }
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
            .filter(|(name, _)| name.as_str().starts_with(prefix))
            .map(|(name, entry)| (name.clone(), entry.info()))
            .collect()
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

    /// Another node's socket subscribed. Idempotent.
    pub(crate) fn remote_subscribe(
        &self,
        app: &App,
        socket: SocketId,
        channel: &ChannelName,
        member: Option<PresenceMember>,
    ) {
        let mut channels = self.table.write();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(node: u64, seq: u64) -> SocketId {
        SocketId { node, seq }
    }

    fn member(user: &str) -> Option<PresenceMember> {
        Some(PresenceMember {
            user_id: UserId(user.into()),
            user_info: None,
        })
    }

    fn events(outbox: &Outbox) -> Vec<String> {
        let (batch, _) = outbox.take();
        batch
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_slice(&f.text).unwrap();
                v["event"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn deliver_reaches_subscribers_but_the_excluded_one() {
        let (channels, app, cache) = (Channels::default(), App::demo(), CacheStore::default());
        let news = ChannelName::parse("news", 200).unwrap();
        let (a, b) = (Outbox::new(1 << 20), Outbox::new(1 << 20));
        let res = channels
            .subscribe(&app, &cache, sid(1, 1), &a, &news, None)
            .unwrap();
        assert!(res.channel_occupied);
        channels
            .subscribe(&app, &cache, sid(1, 2), &b, &news, None)
            .unwrap();
        events(&a);
        events(&b);
        let frame = Frame::from_static(r#"{"event":"e","channel":"news","data":"1"}"#);
        let delivery = channels.deliver(&news, &frame, Some(sid(1, 2)));
        assert_eq!(delivery.delivered, 1);
        assert_eq!((events(&a), events(&b).len()), (vec!["e".to_owned()], 0));
        assert!(!channels.unsubscribe(&app, sid(1, 1), &news).channel_vacated);
        assert!(channels.unsubscribe(&app, sid(1, 2), &news).channel_vacated);
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
            .subscribe(&app, &cache, sid(1, 1), &watcher, &room, member("w"))
            .unwrap();
        channels.remote_subscribe(&app, sid(2, 1), &room, member("alice"));
        assert_eq!(
            events(&watcher),
            [
                "pusher_internal:subscription_succeeded",
                "pusher_internal:member_added"
            ]
        );
        let late = Outbox::new(1 << 20);
        assert_eq!(
            channels.subscribe(&app, &cache, sid(1, 2), &late, &room, member("bob")),
            Err(SubscribeError::PresenceFull { max: 2 })
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

    #[test]
    fn a_cache_channel_serves_its_last_event_or_cache_miss() {
        let (channels, app, cache) = (Channels::default(), App::demo(), CacheStore::default());
        let prices = ChannelName::parse("cache-prices", 200).unwrap();
        let first = Outbox::new(1 << 20);
        let res = channels
            .subscribe(&app, &cache, sid(1, 1), &first, &prices, None)
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
            .subscribe(&app, &cache, sid(1, 2), &second, &prices, None)
            .unwrap();
        assert_eq!(
            events(&second),
            ["pusher_internal:subscription_succeeded", "tick"]
        );
    }
}
