//! What the broker tells its owner: [`Hooks`], given to `ClusterBroker::start`, the one way to
//! attach the server's webhooks and metrics to what reading the bus does on this node.

use std::sync::Arc;

use herald_core::{Delivery, DeliveryHook, SubscriptionEntry};

/// Called with an app id and subscriptions in it (see the fields of [`Hooks`] for which).
pub type SubscriptionsHook = Arc<dyn Fn(&str, Vec<SubscriptionEntry>) + Send + Sync>;

/// What the broker tells its owner. Every hook is optional: `Hooks::default()` attaches none.
/// Hooks run on the broker's shard readers and heartbeat, so they must not block.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Told the subscriptions another node no longer holds, per app: all of a node declared
    /// dead, or those its new full state left out (webhooks: members removed, channels vacated).
    pub node_gone: Option<SubscriptionsHook>,
    /// Told what delivering each event did on this node: those read from the bus, and the
    /// client events this node publishes best-effort (delivered here before they go on the bus).
    pub delivery: Option<DeliveryHook>,
    /// Told, per app, this node's own subscriptions after the log lost entries (webhooks put
    /// them back into their store, which may have lost them with the log).
    pub log_lost: Option<SubscriptionsHook>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("node_gone", &self.node_gone.is_some())
            .field("delivery", &self.delivery.is_some())
            .field("log_lost", &self.log_lost.is_some())
            .finish()
    }
}

impl Hooks {
    pub(super) fn node_gone(&self, app: &str, removed: Vec<SubscriptionEntry>) {
        if let Some(hook) = &self.node_gone {
            hook(app, removed);
        }
    }

    pub(super) fn delivered(&self, app: &str, delivery: Delivery) {
        if let Some(hook) = &self.delivery {
            hook(app, delivery);
        }
    }

    /// Tells `log_lost`, if attached, the subscriptions `subscriptions` returns (only called
    /// then: collecting them walks the app's state).
    pub(super) fn log_lost(
        &self,
        app: &str,
        subscriptions: impl FnOnce() -> Vec<SubscriptionEntry>,
    ) {
        if let Some(hook) = &self.log_lost {
            hook(app, subscriptions());
        }
    }
}
