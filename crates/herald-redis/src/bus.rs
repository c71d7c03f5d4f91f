//! The Redis engine: the bus is Redis Streams (see `commands.rs`), on one Redis server or spread
//! over a Redis Cluster's hash slots, one stream per shard, each under its own hash tag.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use herald_cluster::{Outgoing, Position, Subscription, Transport, TransportError};

use crate::commands::Commands;
use crate::conn::Target;
use crate::BrokerError;

/// The bus on one Redis server, or on a Redis Cluster (or a standalone Redis 7) in cluster mode.
#[derive(Debug)]
pub struct RedisBus {
    commands: Commands,
}

impl RedisBus {
    /// `urls` is one `redis://` or `rediss://` URL, or with `cluster` one URL or comma-separated
    /// Redis Cluster seed nodes (`cluster.sharded`). Keys and the bus are under `prefix`; in
    /// cluster mode every key carries the `{prefix}` hash tag, except the bus's shards past the
    /// first, which have their own.
    ///
    /// # Errors
    /// A malformed URL.
    pub fn new(urls: &str, prefix: &str, cluster: bool) -> Result<RedisBus, BrokerError> {
        let target = Target::parse(urls, cluster).map_err(BrokerError::InvalidUrl)?;
        Ok(RedisBus {
            commands: Commands::new(target, prefix),
        })
    }

    /// Keeps about `n` entries per shard of the bus (`cluster.log_max_len`).
    #[must_use]
    pub fn with_log_max_len(mut self, n: usize) -> RedisBus {
        self.commands.log_max_len = n;
        self
    }
}

impl Transport for RedisBus {
    fn publish<'a>(
        &'a self,
        batch: &'a [Outgoing],
    ) -> BoxFuture<'a, Result<Vec<Position>, TransportError>> {
        self.commands.append_batch(batch).boxed()
    }

    fn subscribe(
        &self,
        shard: usize,
        after: Option<Position>,
    ) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        self.commands.read_bus(shard, after).boxed()
    }

    fn kept(&self) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, TransportError>> {
        self.commands.kept().boxed()
    }
}
