//! The cluster protocol apart from its transport: replication of every node's state, heartbeats,
//! node loss, resync after an outage, and the bus wire format, over a small [`Transport`] trait.
//!
//! Invariant: this crate knows no engine. Redis lives in `herald-redis`, which implements
//! [`Transport`]; [`memory::MemoryHub`] is the in-process engine. Everything a transport hands back
//! is untrusted and validated in [`wire`].

pub mod broker;
pub mod memory;
pub mod transport;
pub mod wire;

pub use broker::{
    BrokerStats, ClusterBroker, ClusterSettings, DeliveryHook, Hooks, ShardBy, SubscriptionsHook,
};
pub use memory::{MemoryHub, MemoryTransport};
pub use transport::{BusItem, Kept, Outgoing, Position, Subscription, Transport, TransportError};
