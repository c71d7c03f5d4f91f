//! How a message read from the bus is validated and applied to the node: [`apply`] dispatches
//! to one function per family of messages; [`apply_cache`] loads a cache channel's kept event.
//!
//! Invariant: nothing is applied before the whole message validated; a failure is an error for
//! the broker to drop and count, never a panic.

use std::collections::HashMap;
use std::sync::Arc;

use herald_core::history::Departure;
use herald_core::{
    AppState, Delivery, Durability, Frame, MonitorRecord, Node, Position, PresenceMember,
    SubscriptionEntry,
};
use herald_protocol::SocketId;
use serde::Deserialize;

use super::{
    bounded_cookie, channel_name, identities_from_wire, now_ms, socket_of, user_id, user_info,
    BusMessage, WireError, WireState, MAX_MONITOR_BATCH,
};

/// The longest a `Watching` from another node keeps an app's monitor active here.
const MAX_WATCH_TTL_MS: u64 = 60_000;

/// What applying a bus message did, for webhooks and metrics.
#[derive(Debug, Default)]
pub struct Applied {
    /// The subscriptions a `State` removed.
    pub removed: Vec<SubscriptionEntry>,
    /// What an event's delivery on this node did, with its app.
    pub delivered: Option<(String, Delivery)>,
    /// Monitor records that failed validation and were dropped.
    pub invalid: usize,
}

/// Where an event read from the bus sits in the cluster's log, and what to do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Read live: deliver it (unless it is a duplicate).
    Live(Position),
    /// Read back at start-up: keep it for replay only.
    Backfill(Position),
}

/// Validates a message from another node and applies it. Each family of messages has its own
/// function below: events, a node's sockets (subscriptions, sign-ins, terminations), replay
/// (departures and resumes), a node's full state, heartbeats, and the monitor's traffic.
///
/// # Errors
/// Whatever failed validation; nothing was applied then.
pub fn apply(node: &Node, message: BusMessage, placement: Placement) -> Result<Applied, WireError> {
    let app_state = |app: &str| -> Result<Arc<AppState>, WireError> {
        node.app_by_id(app)
            .ok_or_else(|| WireError::UnknownApp(app.to_owned()))
    };
    match message {
        BusMessage::Event {
            app,
            channel,
            frame,
            except,
            cache,
            ephemeral,
            ..
        } => {
            let durability = match (ephemeral, placement) {
                (true, _) => Durability::Ephemeral,
                (false, Placement::Live(position)) => Durability::At(position),
                (false, Placement::Backfill(position)) => Durability::Backfill(position),
            };
            deliver_event(app_state(&app)?, &channel, frame, except, cache, durability)
        }
        BusMessage::Subscribed {
            node: from,
            app,
            channel,
            socket,
            user,
            info,
            cookie,
        } => remote_subscribe(
            app_state(&app)?,
            from,
            &channel,
            &socket,
            user,
            info,
            cookie,
        ),
        BusMessage::Unsubscribed {
            node: from,
            app,
            channel,
            socket,
        } => remote_unsubscribe(app_state(&app)?, from, &channel, &socket),
        BusMessage::SignedIn {
            node: from,
            app,
            socket,
            user,
        } => remote_sign_in(app_state(&app)?, from, &socket, user),
        BusMessage::SignedOut {
            node: from,
            app,
            socket,
            user,
        } => remote_sign_out(app_state(&app)?, from, &socket, user),
        BusMessage::Terminate { app, user, .. } => terminate_user(app_state(&app)?, user),
        BusMessage::Departed {
            node: from,
            app,
            channel,
            identities,
            after,
            socket,
            left_ms,
        } => {
            let app = app_state(&app)?;
            record_departure(app, from, &channel, identities, &after, &socket, left_ms)
        }
        BusMessage::Resumed {
            app,
            channel,
            identities,
            ..
        } => record_resume(app_state(&app)?, &channel, identities),
        BusMessage::State {
            node: from,
            app,
            state,
        } => replace_node(app_state(&app)?, from, state),
        BusMessage::Heartbeat {
            node: from,
            connections,
            started_at_ms,
            messages,
        } => {
            heard_from(node, from, started_at_ms, &connections, messages);
            Ok(Applied::default())
        }
        BusMessage::Watching { app, ttl_ms, .. } => {
            remote_watch(app_state(&app)?, ttl_ms);
            Ok(Applied::default())
        }
        BusMessage::Monitor {
            node: from,
            app,
            records,
        } => forward_records(app_state(&app)?, from, records),
        // Answered by the broker, which owns the publisher; a mark concerns only its node.
        BusMessage::SyncRequest { .. } | BusMessage::CaughtUp { .. } => Ok(Applied::default()),
    }
}

// Events.

/// Delivers an event to this node's subscribers (and keeps a cache channel's last event), once
/// its frame is known to be a JSON object.
fn deliver_event(
    app: Arc<AppState>,
    channel: &str,
    frame: String,
    except: Option<String>,
    cache: Option<(String, String)>,
    durability: Durability,
) -> Result<Applied, WireError> {
    let channel = channel_name(channel)?;
    let except = except
        .map(|s| SocketId::parse(&s).ok_or(WireError::Invalid("socket id")))
        .transpose()?;
    let is_object = serde_json::from_str::<serde::de::IgnoredAny>(&frame).is_ok()
        && frame.trim_start().starts_with('{');
    if !is_object {
        return Err(WireError::Invalid("event frame"));
    }
    let frame = Frame::published(frame, std::time::Instant::now());
    if let Some((event, data)) = &cache {
        app.store_cache(&channel, event, data, &frame);
    }
    let delivery = app.deliver(&channel, &frame, except, durability);
    Ok(Applied {
        delivered: Some((app.id().to_owned(), delivery)),
        ..Applied::default()
    })
}

// A node's sockets: what each of another node's sockets subscribed to and signed in as.

fn remote_subscribe(
    app: Arc<AppState>,
    from: u64,
    channel: &str,
    socket: &str,
    user: Option<String>,
    info: Option<String>,
    cookie: Option<String>,
) -> Result<Applied, WireError> {
    let channel = channel_name(channel)?;
    let socket = socket_of(from, socket)?;
    let cookie = cookie
        .map(bounded_cookie)
        .transpose()?
        .map(Arc::<str>::from);
    let member = match user {
        Some(user) => Some(PresenceMember {
            user_id: user_id(user)?,
            user_info: info.as_deref().map(user_info).transpose()?,
        }),
        None => None,
    };
    app.remote_subscribe(socket, &channel, member, cookie);
    Ok(Applied::default())
}

fn remote_unsubscribe(
    app: Arc<AppState>,
    from: u64,
    channel: &str,
    socket: &str,
) -> Result<Applied, WireError> {
    app.remote_unsubscribe(socket_of(from, socket)?, &channel_name(channel)?);
    Ok(Applied::default())
}

fn remote_sign_in(
    app: Arc<AppState>,
    from: u64,
    socket: &str,
    user: String,
) -> Result<Applied, WireError> {
    app.remote_sign_in(socket_of(from, socket)?, &user_id(user)?);
    Ok(Applied::default())
}

fn remote_sign_out(
    app: Arc<AppState>,
    from: u64,
    socket: &str,
    user: String,
) -> Result<Applied, WireError> {
    app.remote_sign_out(socket_of(from, socket)?, &user_id(user)?);
    Ok(Applied::default())
}

/// Disconnects a user's sockets on this node (`POST /users/{id}/terminate_connections` on
/// another node).
fn terminate_user(app: Arc<AppState>, user: String) -> Result<Applied, WireError> {
    app.terminate_user(&user_id(user)?);
    Ok(Applied::default())
}

// Replay: where sockets that may resume left a channel, and which resumed.

fn record_departure(
    app: Arc<AppState>,
    from: u64,
    channel: &str,
    identities: Vec<(String, String)>,
    after: &str,
    socket: &str,
    left_ms: u64,
) -> Result<Applied, WireError> {
    let identities = identities_from_wire(identities)?;
    let departure = Departure {
        after: after
            .parse()
            .map_err(|_| WireError::Invalid("log position"))?,
        socket: socket_of(from, socket)?,
        left_ms,
    };
    app.record_departure(&identities, &channel_name(channel)?, departure);
    Ok(Applied::default())
}

fn record_resume(
    app: Arc<AppState>,
    channel: &str,
    identities: Vec<(String, String)>,
) -> Result<Applied, WireError> {
    let identities = identities_from_wire(identities)?;
    let _ = app.take_resume(&identities, &channel_name(channel)?);
    Ok(Applied::default())
}

// A node's full state.

/// Replaces what this node knew of `from` in `app`; returns the subscriptions that went (for
/// webhooks).
fn replace_node(app: Arc<AppState>, from: u64, state: WireState) -> Result<Applied, WireError> {
    Ok(Applied {
        removed: app.replace_node(from, &state.into_local(from)?),
        ..Applied::default()
    })
}

// Heartbeats.

/// Records that `from` is alive, with its connection and message counts (apps not configured
/// here are left out).
fn heard_from(
    node: &Node,
    from: u64,
    started_at_ms: u64,
    connections: &HashMap<String, usize>,
    messages: HashMap<String, (u64, u64)>,
) {
    let mut known = Vec::with_capacity(connections.len());
    for (app_id, count) in connections {
        if let Some(app) = node.app_by_id(app_id) {
            app.set_remote_connections(from, *count);
            known.push((app_id.as_str(), *count));
        }
    }
    node.heard_from(from, started_at_ms, &known);
    for (app, counters) in messages {
        if let Some(app) = node.app_by_id(&app) {
            app.traffic().sample_peer(from, started_at_ms, counters);
        }
    }
}

// The monitor's traffic.

/// Another node watches `app`: keep forwarding its records for `ttl_ms` (bounded).
fn remote_watch(app: Arc<AppState>, ttl_ms: u64) {
    app.monitor().remote_watch(ttl_ms.min(MAX_WATCH_TTL_MS));
}

/// Publishes another node's monitor records to this node's watchers; what fails validation is
/// dropped and counted in `Applied::invalid`.
fn forward_records(
    app: Arc<AppState>,
    from: u64,
    records: Vec<serde_json::Value>,
) -> Result<Applied, WireError> {
    if records.len() > MAX_MONITOR_BATCH {
        return Err(WireError::Invalid("monitor batch"));
    }
    let monitor = app.monitor();
    if monitor.local_watchers() == 0 {
        return Ok(Applied::default());
    }
    let mut invalid = 0;
    for record in records {
        match MonitorRecord::from_remote(from, record) {
            Some(record) => monitor.publish(std::sync::Arc::new(record)),
            None => invalid += 1,
        }
    }
    Ok(Applied {
        invalid,
        ..Applied::default()
    })
}

/// Stores one cache channel's last event read from Redis: field `{app}:{channel}`, value
/// `{"event", "data", "expires_ms"}`. `Ok(false)` when it has expired.
///
/// # Errors
/// A field or value that does not have the expected shape.
pub fn apply_cache(node: &Node, field: &str, value: &str) -> Result<bool, WireError> {
    #[derive(Deserialize)]
    struct Cached {
        event: String,
        data: String,
        expires_ms: u64,
    }
    let (app, channel) = field
        .split_once(':')
        .ok_or(WireError::Invalid("cache field"))?;
    let app = node
        .app_by_id(app)
        .ok_or_else(|| WireError::UnknownApp(app.to_owned()))?;
    let channel = channel_name(channel)?;
    let cached: Cached =
        serde_json::from_str(value).map_err(|_| WireError::Invalid("cache value"))?;
    if cached.expires_ms <= now_ms() {
        return Ok(false);
    }
    let frame = Frame::new(herald_protocol::server_message::channel_event(
        &cached.event,
        channel.as_str(),
        &cached.data,
    ));
    app.store_cache(&channel, &cached.event, &cached.data, &frame);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use herald_core::{App, NodeLimits};
    use herald_protocol::ChannelName;

    use super::*;

    fn node() -> Node {
        Node::new(9, vec![App::demo()], NodeLimits::default())
    }

    fn decode_and_apply(node: &Node, text: &str) -> Result<(), String> {
        let message: BusMessage = serde_json::from_str(text).map_err(|e| e.to_string())?;
        apply(node, message, Placement::Live(Position { ms: 1, seq: 0 }))
            .map(drop)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn hostile_bus_messages_are_rejected_without_effect() {
        let node = node();
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        for (text, why) in [
            ("not json", "not JSON"),
            (&deep, "nesting too deep"),
            (r#"{"t":"heartbeat"}"#, "missing fields"),
            (
                r#"{"t":"event","node":1,"app":"1","channel":"news","frame":"<script>","except":null,"cache":null}"#,
                "a frame that is not a JSON object",
            ),
            (
                r#"{"t":"event","node":1,"app":"nope","channel":"news","frame":"{}","except":null,"cache":null}"#,
                "an unknown app",
            ),
            (
                r#"{"t":"event","node":1,"app":"1","channel":"bad name!","frame":"{}","except":null,"cache":null}"#,
                "an invalid channel name",
            ),
            (
                r#"{"t":"subscribed","node":1,"app":"1","channel":"news","socket":"2.5","user":null,"info":null}"#,
                "a node speaking for another node's socket",
            ),
            (
                r#"{"t":"subscribed","node":1,"app":"1","channel":"presence-x","socket":"1.5","user":"","info":null}"#,
                "an empty user id",
            ),
            (
                r#"{"t":"subscribed","node":1,"app":"1","channel":"presence-x","socket":"1.5","user":"u","info":"{"}"#,
                "user info that is not JSON",
            ),
            (
                r#"{"t":"departed","node":1,"app":"1","channel":"news","identities":[["x","y"]],"after":"1-0","socket":"1.5","left_ms":1}"#,
                "an unknown kind of identity",
            ),
            (
                r#"{"t":"departed","node":1,"app":"1","channel":"news","identities":[["u","a"]],"after":"later","socket":"1.5","left_ms":1}"#,
                "a log position that does not parse",
            ),
            (
                r#"{"t":"departed","node":1,"app":"1","channel":"news","identities":[["u","a"]],"after":"1-0","socket":"2.5","left_ms":1}"#,
                "a departure of another node's socket",
            ),
            (
                r#"{"t":"resumed","node":1,"app":"1","channel":"news","identities":[["c",""]]}"#,
                "an empty cookie token",
            ),
        ] {
            assert!(decode_and_apply(&node, text).is_err(), "accepted {why}");
        }
        let app = node.app_by_id("1").unwrap();
        for channel in ["news", "presence-x"] {
            let channel = ChannelName::parse(channel, 200).unwrap();
            assert_eq!(app.channel_info(&channel).subscription_count, 0);
        }
    }

    #[test]
    fn a_valid_announcement_is_applied() {
        let node = node();
        decode_and_apply(
            &node,
            r#"{"t":"subscribed","node":1,"app":"1","channel":"presence-x","socket":"1.5","user":"u","info":"{\"name\":\"U\"}"}"#,
        )
        .unwrap();
        let channel = ChannelName::parse("presence-x", 200).unwrap();
        let info = node.app_by_id("1").unwrap().channel_info(&channel);
        assert_eq!((info.subscription_count, info.user_count), (1, Some(1)));
    }

    #[test]
    fn heartbeats_of_older_and_newer_nodes_decode() {
        let node = node();
        // An older node: no start time, no counters.
        decode_and_apply(&node, r#"{"t":"heartbeat","node":1,"connections":{"1":3}}"#).unwrap();
        let app = node.app_by_id("1").unwrap();
        assert_eq!(app.counts().connections, 3);
        decode_and_apply(
            &node,
            r#"{"t":"heartbeat","node":2,"connections":{"1":1,"nope":5},"started_at_ms":7,"messages":{"1":[10,20],"nope":[1,1]}}"#,
        )
        .unwrap();
        let nodes = node.nodes();
        assert_eq!(nodes.len(), 3);
        let two = nodes.iter().find(|n| n.id == "2").unwrap();
        assert_eq!(
            (two.started_at_ms, two.connections),
            (7, 1),
            "unknown apps left out"
        );
        assert_eq!(app.counts().connections, 4);
    }

    #[test]
    fn monitor_records_from_the_bus_are_validated() {
        let node = node();
        let app = node.app_by_id("1").unwrap();
        let mut watch = app.monitor().watch();
        let record = |socket: &str| serde_json::json!({"node": "1", "time_ms": 1, "type": "connection_opened", "socket_id": socket});
        let message = BusMessage::Monitor {
            node: 4,
            app: "1".into(),
            records: vec![record("4.1"), record("5.1"), serde_json::json!("junk")],
        };
        let applied = apply(&node, message, Placement::Live(Position { ms: 1, seq: 0 })).unwrap();
        assert_eq!(applied.invalid, 2, "another node's socket, and junk");
        let got = futures_util::FutureExt::now_or_never(watch.recv()).flatten();
        let Some(herald_core::MonitorItem::Record(got)) = got else {
            panic!("the valid record is published: {got:?}");
        };
        assert_eq!(got.node, "4");
        let too_many = BusMessage::Monitor {
            node: 4,
            app: "1".into(),
            records: vec![record("4.1"); MAX_MONITOR_BATCH + 1],
        };
        assert!(apply(&node, too_many, Placement::Live(Position { ms: 1, seq: 0 })).is_err());
        // A watch from another node is bounded.
        drop(watch);
        app.monitor().refresh();
        decode_and_apply(
            &node,
            r#"{"t":"watching","node":4,"app":"1","ttl_ms":18446744073709551615}"#,
        )
        .unwrap();
        assert!(app.monitor().active() && app.monitor().forwarding());
    }
}
