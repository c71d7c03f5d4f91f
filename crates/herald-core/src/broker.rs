//! The seam between a node and the rest of the cluster.
//!
//! Every event any node publishes (HTTP API, client events) goes through `Broker::publish`; the
//! broker delivers it to this node's subscribers and to every other node's. `MemoryBroker` is the
//! single-node implementation: there is no one else, so publishing is local delivery.

use std::fmt::Debug;
use std::sync::Arc;

use herald_protocol::{ChannelName, SocketId, UserId};

use crate::node::{Delivery, Node, SubscriptionEntry};
use crate::outbox::Frame;

/// One published event, serialized once, on its way to every subscriber of `channel`.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub app_id: String,
    pub channel: ChannelName,
    pub frame: Frame,
    /// The publisher's own connection, which must not receive the event.
    pub except: Option<SocketId>,
    /// For cache channels published through the HTTP API: the `(event, data)` to remember.
    pub cache: Option<(String, String)>,
}

/// A change to this node's own state that every other node replicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    Subscribed {
        app_id: String,
        entry: SubscriptionEntry,
    },
    Unsubscribed {
        app_id: String,
        channel: ChannelName,
        socket: SocketId,
    },
    SignedIn {
        app_id: String,
        socket: SocketId,
        user: UserId,
    },
    SignedOut {
        app_id: String,
        socket: SocketId,
        user: UserId,
    },
}

/// How events and state changes reach every node.
pub trait Broker: Send + Sync + Debug {
    /// Delivers the event everywhere; returns what was delivered on this node.
    fn publish(&self, envelope: Envelope) -> Delivery;

    /// Tells the other nodes about a change this node already applied locally.
    fn announce(&self, announcement: Announcement);

    /// Closes every connection signed in as `user`, on every node; returns how many were local.
    fn terminate_user(&self, app_id: &str, user: &UserId) -> usize;
}

/// The in-memory broker of a single node.
#[derive(Debug)]
pub struct MemoryBroker {
    node: Arc<Node>,
}

impl MemoryBroker {
    pub fn new(node: Arc<Node>) -> MemoryBroker {
        MemoryBroker { node }
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, envelope: Envelope) -> Delivery {
        let Some(app) = self.node.app_by_id(&envelope.app_id) else {
            return Delivery::default();
        };
        if let Some((event, data)) = &envelope.cache {
            app.store_cache(&envelope.channel, event, data, &envelope.frame);
        }
        app.deliver(&envelope.channel, &envelope.frame, envelope.except)
    }

    /// A single node has no one to tell.
    fn announce(&self, _announcement: Announcement) {}

    fn terminate_user(&self, app_id: &str, user: &UserId) -> usize {
        self.node
            .app_by_id(app_id)
            .map_or(0, |app| app.terminate_user(user))
    }
}
