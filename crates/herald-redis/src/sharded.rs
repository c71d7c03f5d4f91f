//! The Redis Cluster transport: the bus is Redis Streams spread over the cluster's hash slots, one
//! stream per shard, each under its own hash tag (see `commands.rs`); a standalone Redis 7 works
//! too. The name is historical: the bus was sharded pub/sub before it became a log.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use herald_cluster::{Outgoing, Position, Subscription, Transport, TransportError};

use crate::commands::Commands;
use crate::conn::Target;
use crate::BrokerError;

/// The bus on a Redis Cluster or a standalone Redis 7.
#[derive(Debug)]
pub struct RedisSharded {
    commands: Commands,
}

impl RedisSharded {
    /// `urls` is one URL or comma-separated Redis Cluster seed nodes; every key carries the
    /// `{prefix}` hash tag, except the bus's shards past the first, which have their own.
    ///
    /// # Errors
    /// A malformed URL.
    pub fn new(urls: &str, prefix: &str) -> Result<RedisSharded, BrokerError> {
        let target = Target::parse(urls, true).map_err(BrokerError::InvalidUrl)?;
        Ok(RedisSharded {
            commands: Commands::new(target, prefix),
        })
    }
}

impl RedisSharded {
    /// Keeps about `n` entries per shard of the bus (`cluster.log_max_len`).
    #[must_use]
    pub fn with_log_max_len(mut self, n: usize) -> RedisSharded {
        self.commands.log_max_len = n;
        self
    }
}

impl Transport for RedisSharded {
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
