//! Redis as a cluster transport: the only crate that talks to Redis.
//!
//! One engine implements `herald_cluster::Transport`: [`RedisBus`], on one Redis server or, in
//! cluster mode, on a Redis Cluster (or a Redis 7). It keeps ordered logs as Redis Streams and
//! caches channels' last events in one hash (`commands.rs`).
//! The cluster protocol itself (replication, heartbeats, node loss, resync) is `herald-cluster`'s.
//!
//! Invariant: everything read from Redis is untrusted: the protocol validates every bus message,
//! and a reply of the wrong shape is an error, never a panic.

mod bus;
mod commands;
pub mod conn;
pub mod webhook_store;

pub use bus::RedisBus;
pub use herald_cluster::{BrokerStats, SubscriptionsHook};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid Redis URL")]
    InvalidUrl(#[source] redis::RedisError),
}
