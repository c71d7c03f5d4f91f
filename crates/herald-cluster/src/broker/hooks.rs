//! What the broker tells its owner: the hooks the server attaches for webhooks and metrics.

use std::sync::Arc;

use herald_core::{Delivery, SubscriptionEntry};

/// Called with an app id and the subscriptions a dead node held in it.
pub type NodeGoneHook = Arc<dyn Fn(&str, Vec<SubscriptionEntry>) + Send + Sync>;

/// Called with an app id and what delivering one event read from the bus did on this node (for
/// metrics: in a cluster an HTTP publish is answered before any node delivers it).
pub type DeliveryHook = Arc<dyn Fn(&str, Delivery) + Send + Sync>;
