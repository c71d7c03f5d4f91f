//! The seam between a node and the rest of the cluster.
//!
//! Every event any node publishes (HTTP API, client events) goes through `Broker::publish`; the
//! broker delivers it to this node's subscribers and to every other node's. `MemoryBroker` is the
//! single-node implementation: there is no one else, so publishing is local delivery.
//!
//! An HTTP publish is [`Broker::accept`]ed: the answer says whether the event is on the
//! cluster's log (and so will reach every subscriber on every node, in the log's order) or was
//! refused, so that the HTTP API never answers 200 for an event that then vanishes.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use herald_protocol::{ChannelName, SocketId, UserId};

use crate::app_state::{Delivery, Durability, SubscriptionEntry};
use crate::history::{Departure, Identity};
use crate::node::Node;
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
    /// Whether the event enters the channel's log (HTTP publishes) or not (client events).
    pub durability: Durability,
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
    /// A socket that may resume left `channel`: where it stopped, for its identities, so that it
    /// can resume on any node.
    Departed {
        app_id: String,
        channel: ChannelName,
        identities: Vec<Identity>,
        departure: Departure,
    },
    /// A socket with these identities resumed on `channel`: every node consumes the same
    /// departure, so that it is taken once in the whole cluster.
    Resumed {
        app_id: String,
        channel: ChannelName,
        identities: Vec<Identity>,
    },
}

/// The event could not be put on the cluster's log (the transport is down or its queue is
/// full): the publisher should retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// The outcome of [`Broker::accept`]: resolves once the event is on the log (with what was
/// delivered on this node so far), or refused.
pub type Acceptance = Pin<Box<dyn Future<Output = Result<Delivery, Unavailable>> + Send>>;

/// How events and state changes reach every node.
pub trait Broker: Send + Sync + Debug {
    /// Delivers the event everywhere, best effort (client events); returns what was delivered
    /// on this node.
    fn publish(&self, envelope: Envelope) -> Delivery;

    /// Puts a logged event on the cluster's log, from where it reaches every subscriber on
    /// every node in the log's order; resolves when it is there, or refused.
    fn accept(&self, envelope: Envelope) -> Acceptance;

    /// Tells the other nodes about a change this node already applied locally.
    fn announce(&self, announcement: Announcement);

    /// Resolves once everything announced so far was handed to the cluster's log (appended, or
    /// failed): a drain waits for a socket's departures before its 4200 goes out. At once for a
    /// node alone.
    fn announced(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(std::future::ready(()))
    }

    /// Closes every connection signed in as `user`, on every node; returns how many were local.
    fn terminate_user(&self, app_id: &str, user: &UserId) -> usize;

    /// Whether the node knows everything a client resuming here needs (in a cluster: it has
    /// read the log back to its start). `/ready` waits for it. Always, for a node alone.
    fn caught_up(&self) -> bool {
        true
    }

    /// The other nodes silent for longer than their heartbeat interval (they may have died, and
    /// their sockets' clients may be coming back here), each with how long, in milliseconds.
    /// Usually none; always none for a node alone.
    fn silent_nodes(&self) -> Vec<(u64, u64)> {
        Vec::new()
    }
}

/// Told, with the app's id, what delivering one event did on this node. Every broker calls it
/// wherever it delivers (a node alone as it publishes; a cluster's node for what it publishes
/// best-effort and for every event it reads from the log), so deliveries are counted in one
/// place whatever the broker. Runs on the publishing path: it must not block.
pub type DeliveryHook = Arc<dyn Fn(&str, Delivery) + Send + Sync>;

/// The in-memory broker of a single node.
pub struct MemoryBroker {
    node: Arc<Node>,
    on_delivery: Option<DeliveryHook>,
}

impl MemoryBroker {
    /// A node alone's broker; `on_delivery` is told what each publish delivered.
    pub fn new(node: Arc<Node>, on_delivery: Option<DeliveryHook>) -> MemoryBroker {
        MemoryBroker { node, on_delivery }
    }
}

impl Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("node", &self.node.id())
            .field("on_delivery", &self.on_delivery.is_some())
            .finish()
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
        let delivery = app.deliver(
            &envelope.channel,
            &envelope.frame,
            envelope.except,
            envelope.durability,
        );
        if let Some(hook) = &self.on_delivery {
            hook(app.id(), delivery);
        }
        delivery
    }

    /// A single node's log is its memory: delivered is accepted.
    fn accept(&self, envelope: Envelope) -> Acceptance {
        Box::pin(std::future::ready(Ok(self.publish(envelope))))
    }

    /// A single node has no one to tell.
    fn announce(&self, _announcement: Announcement) {}

    fn terminate_user(&self, app_id: &str, user: &UserId) -> usize {
        self.node
            .app_by_id(app_id)
            .map_or(0, |app| app.terminate_user(user))
    }
}
