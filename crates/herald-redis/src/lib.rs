//! Redis as a cluster transport: the only crate that talks to Redis.
//!
//! Two engines implement `herald_cluster::Transport`: [`RedisPubSub`] (classic pub/sub on one
//! server) and [`RedisSharded`] (sharded pub/sub on a Redis Cluster or a Redis 7). Both keep
//! ordered logs as Redis Streams and cache channels' last events in one hash (`commands.rs`).
//! The cluster protocol itself (replication, heartbeats, node loss, resync) is `herald-cluster`'s.
//!
//! Invariant: everything read from Redis is untrusted: the protocol validates every bus message,
//! and a reply of the wrong shape is an error, never a panic.

mod commands;
pub mod conn;
mod pubsub;
mod sharded;
pub mod webhook_store;

pub use herald_cluster::{BrokerStats, NodeGoneHook};
pub use pubsub::RedisPubSub;
pub use sharded::RedisSharded;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid Redis URL")]
    InvalidUrl(#[source] redis::RedisError),
}
