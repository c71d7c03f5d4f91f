//! The bus message format ([`BusMessage`], a node's full state as [`WireState`]) and the
//! validation of every field read from the bus; `apply.rs` applies a received message to the
//! node.
//!
//! Invariant: nothing read from the bus is trusted: app ids must be configured, channel names and
//! socket ids must parse, a node may only speak for its own sockets, and an event's frame must be
//! a JSON object before it is sent to any client.

use std::collections::HashMap;
use std::sync::Arc;

use herald_core::history::Identity;
use herald_core::{Announcement, Durability, Envelope, LocalState, SubscriptionEntry};
use herald_protocol::{ChannelName, SocketId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

mod apply;

pub use apply::{apply, apply_cache, Applied, Placement};

/// Channel names from the bus are validated without the per-app length limit, which the
/// publishing node already enforced.
const MAX_CHANNEL_NAME: usize = 1024;

/// Most records in one `Monitor` batch: a node sends at most a second's worth.
pub const MAX_MONITOR_BATCH: usize = herald_core::monitor::FORWARD_QUEUE;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("unknown app {0:?}")]
    UnknownApp(String),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum BusMessage {
    Event {
        node: u64,
        app: String,
        channel: String,
        /// The complete frame sent to clients, serialized once by the publishing node.
        frame: String,
        except: Option<String>,
        /// `(event, data)` for cache channels.
        cache: Option<(String, String)>,
        /// A client event: delivered in order, never logged (absent means logged).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ephemeral: bool,
    },
    Subscribed {
        node: u64,
        app: String,
        channel: String,
        socket: String,
        user: Option<String>,
        info: Option<String>,
        /// The socket's resume cookie token (absent from older nodes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cookie: Option<String>,
    },
    Unsubscribed {
        node: u64,
        app: String,
        channel: String,
        socket: String,
    },
    SignedIn {
        node: u64,
        app: String,
        socket: String,
        user: String,
    },
    SignedOut {
        node: u64,
        app: String,
        socket: String,
        user: String,
    },
    Terminate {
        node: u64,
        app: String,
        user: String,
    },
    Heartbeat {
        node: u64,
        /// Open connections per app on that node.
        connections: HashMap<String, usize>,
        /// Unix time in milliseconds the node started (0 from nodes that predate it).
        #[serde(default)]
        started_at_ms: u64,
        /// Per app, the node's message counters since it started: `(in, out)` (HTTP publishes
        /// and client events accepted; messages written to its sockets).
        #[serde(default)]
        messages: HashMap<String, (u64, u64)>,
    },
    /// `node` has a watcher of `app`'s live stream: the others send their records for it for
    /// the next `ttl_ms` (re-sent every heartbeat while watched).
    Watching { node: u64, app: String, ttl_ms: u64 },
    /// Monitor records `node` made for `app`, for the nodes watching it: a batch, best effort,
    /// never logged in a channel nor replayed.
    Monitor {
        node: u64,
        app: String,
        records: Vec<serde_json::Value>,
    },
    /// A node's complete state for one app; replaces what others knew of it.
    State {
        node: u64,
        app: String,
        state: WireState,
    },
    /// Asks `target` (or every node) to publish its `State`.
    SyncRequest { node: u64, target: Option<u64> },
    /// Appended by a starting `node` to `shard`: when it reads its own mark back, it has read
    /// everything the shard held before it started (its backfill), and may report ready.
    CaughtUp { node: u64, shard: usize },
    /// A socket of `node` that may resume left `channel` at log position `after`.
    Departed {
        node: u64,
        app: String,
        channel: String,
        /// `("c", cookie token)` or `("u", user id)`.
        identities: Vec<(String, String)>,
        after: String,
        socket: String,
        left_ms: u64,
    },
    /// A socket of `node` with these identities resumed on `channel`.
    Resumed {
        node: u64,
        app: String,
        channel: String,
        identities: Vec<(String, String)>,
    },
}

/// `("c", cookie token)` or `("u", user id)`, as identities travel on the bus.
fn identities_to_wire(identities: Vec<Identity>) -> Vec<(String, String)> {
    identities
        .into_iter()
        .map(|identity| match identity {
            Identity::Cookie(token) => ("c".to_owned(), token),
            Identity::User(user) => ("u".to_owned(), user.0),
        })
        .collect()
}

/// A resume cookie token from the bus: untrusted, so bounded like an identity's.
fn bounded_cookie(token: String) -> Result<String, WireError> {
    if token.is_empty() || token.len() > 128 {
        return Err(WireError::Invalid("resume cookie"));
    }
    Ok(token)
}

fn identities_from_wire(identities: Vec<(String, String)>) -> Result<Vec<Identity>, WireError> {
    if identities.len() > 3 {
        return Err(WireError::Invalid("identities"));
    }
    identities
        .into_iter()
        .map(|(kind, value)| match kind.as_str() {
            "c" => Ok(Identity::Cookie(bounded_cookie(value)?)),
            "u" => Ok(Identity::User(user_id(value)?)),
            _ => Err(WireError::Invalid("identity")),
        })
        .collect()
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WireState {
    /// `(channel, socket, user, user_info)`.
    subscriptions: Vec<(String, String, Option<String>, Option<String>)>,
    /// `(socket, user)`.
    signed_in: Vec<(String, String)>,
    /// `(socket, resume cookie token)` of the sockets in `subscriptions` that have one (absent
    /// from older nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cookies: Vec<(String, String)>,
}

impl WireState {
    pub fn from_local(state: &LocalState) -> WireState {
        WireState {
            subscriptions: state
                .subscriptions
                .iter()
                .map(|e| {
                    (
                        e.channel.to_string(),
                        e.socket.to_string(),
                        e.user.as_ref().map(|u| u.0.clone()),
                        e.user_info.clone(),
                    )
                })
                .collect(),
            signed_in: state
                .signed_in
                .iter()
                .map(|(s, u)| (s.to_string(), u.0.clone()))
                .collect(),
            cookies: state
                .subscriptions
                .iter()
                .filter_map(|e| Some((e.socket, e.cookie.as_ref()?)))
                .collect::<HashMap<_, _>>()
                .into_iter()
                .map(|(socket, cookie)| (socket.to_string(), cookie.to_string()))
                .collect(),
        }
    }

    fn into_local(self, node: u64) -> Result<LocalState, WireError> {
        let cookies = self
            .cookies
            .into_iter()
            .map(|(socket, cookie)| Ok((socket, Arc::<str>::from(bounded_cookie(cookie)?))))
            .collect::<Result<HashMap<String, Arc<str>>, WireError>>()?;
        let subscriptions = self
            .subscriptions
            .into_iter()
            .map(|(channel, socket, user, info)| {
                Ok(SubscriptionEntry {
                    channel: channel_name(&channel)?,
                    cookie: cookies.get(&socket).cloned(),
                    socket: socket_of(node, &socket)?,
                    user: user.map(user_id).transpose()?,
                    user_info: info
                        .map(|i| user_info(&i).map(|r| r.get().to_owned()))
                        .transpose()?,
                })
            })
            .collect::<Result<_, WireError>>()?;
        let signed_in = self
            .signed_in
            .into_iter()
            .map(|(socket, user)| Ok((socket_of(node, &socket)?, user_id(user)?)))
            .collect::<Result<_, WireError>>()?;
        Ok(LocalState {
            subscriptions,
            signed_in,
        })
    }
}

impl BusMessage {
    pub fn node(&self) -> u64 {
        match self {
            BusMessage::Event { node, .. }
            | BusMessage::Subscribed { node, .. }
            | BusMessage::Unsubscribed { node, .. }
            | BusMessage::SignedIn { node, .. }
            | BusMessage::SignedOut { node, .. }
            | BusMessage::Terminate { node, .. }
            | BusMessage::Heartbeat { node, .. }
            | BusMessage::State { node, .. }
            | BusMessage::SyncRequest { node, .. }
            | BusMessage::CaughtUp { node, .. }
            | BusMessage::Departed { node, .. }
            | BusMessage::Resumed { node, .. }
            | BusMessage::Watching { node, .. }
            | BusMessage::Monitor { node, .. } => *node,
        }
    }

    pub fn event(node: u64, envelope: &Envelope) -> BusMessage {
        BusMessage::Event {
            node,
            app: envelope.app_id.clone(),
            channel: envelope.channel.to_string(),
            frame: String::from_utf8_lossy(envelope.frame.text()).into_owned(),
            except: envelope.except.map(|s| s.to_string()),
            cache: envelope.cache.clone(),
            ephemeral: envelope.durability == Durability::Ephemeral,
        }
    }

    pub fn from_announcement(node: u64, announcement: Announcement) -> BusMessage {
        match announcement {
            Announcement::Subscribed { app_id, entry } => BusMessage::Subscribed {
                node,
                app: app_id,
                channel: entry.channel.to_string(),
                socket: entry.socket.to_string(),
                user: entry.user.map(|u| u.0),
                info: entry.user_info,
                cookie: entry.cookie.map(|c| c.to_string()),
            },
            Announcement::Unsubscribed {
                app_id,
                channel,
                socket,
            } => BusMessage::Unsubscribed {
                node,
                app: app_id,
                channel: channel.to_string(),
                socket: socket.to_string(),
            },
            Announcement::SignedIn {
                app_id,
                socket,
                user,
            } => BusMessage::SignedIn {
                node,
                app: app_id,
                socket: socket.to_string(),
                user: user.0,
            },
            Announcement::SignedOut {
                app_id,
                socket,
                user,
            } => BusMessage::SignedOut {
                node,
                app: app_id,
                socket: socket.to_string(),
                user: user.0,
            },
            Announcement::Departed {
                app_id,
                channel,
                identities,
                departure,
            } => BusMessage::Departed {
                node,
                app: app_id,
                channel: channel.to_string(),
                identities: identities_to_wire(identities),
                after: departure.after.to_string(),
                socket: departure.socket.to_string(),
                left_ms: departure.left_ms,
            },
            Announcement::Resumed {
                app_id,
                channel,
                identities,
            } => BusMessage::Resumed {
                node,
                app: app_id,
                channel: channel.to_string(),
                identities: identities_to_wire(identities),
            },
        }
    }
}

fn channel_name(name: &str) -> Result<ChannelName, WireError> {
    ChannelName::parse(name, MAX_CHANNEL_NAME).map_err(|_| WireError::Invalid("channel name"))
}

fn user_id(user: String) -> Result<UserId, WireError> {
    if user.is_empty() || user.len() > 1024 {
        return Err(WireError::Invalid("user id"));
    }
    Ok(UserId(user))
}

fn user_info(info: &str) -> Result<Box<RawValue>, WireError> {
    RawValue::from_string(info.to_owned()).map_err(|_| WireError::Invalid("user info"))
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Parses a socket id that must belong to `node`: a node may only speak for its own sockets.
fn socket_of(node: u64, socket: &str) -> Result<SocketId, WireError> {
    match SocketId::parse(socket) {
        Some(id) if id.node == node => Ok(id),
        _ => Err(WireError::Invalid("socket id")),
    }
}
