//! The single-server Redis transport: the bus is Redis Streams on one Redis server (see
//! `commands.rs`). The name is historical: the bus was classic pub/sub before it became a log.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use herald_cluster::{Outgoing, Position, Subscription, Transport, TransportError};

use crate::commands::Commands;
use crate::conn::Target;
use crate::BrokerError;

/// The bus on one Redis server.
#[derive(Debug)]
pub struct RedisPubSub {
    commands: Commands,
}

impl RedisPubSub {
    /// `url` is `redis://` or `rediss://`; keys and the bus are under `prefix`.
    ///
    /// # Errors
    /// A malformed URL.
    pub fn new(url: &str, prefix: &str) -> Result<RedisPubSub, BrokerError> {
        let target = Target::parse(url, false).map_err(BrokerError::InvalidUrl)?;
        Ok(RedisPubSub {
            commands: Commands::new(target, prefix),
        })
    }
}

impl RedisPubSub {
    /// Keeps about `n` entries per shard of the bus (`cluster.log_max_len`).
    #[must_use]
    pub fn with_log_max_len(mut self, n: usize) -> RedisPubSub {
        self.commands.log_max_len = n;
        self
    }
}

impl Transport for RedisPubSub {
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
