//! The Redis pub/sub transport: the bus is one classic pub/sub channel (`PUBLISH`/`SUBSCRIBE`)
//! on a single Redis server.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use herald_cluster::{Outgoing, Position, Subscription, Transport, TransportError};

use crate::commands::Commands;
use crate::conn::Target;
use crate::BrokerError;

/// Classic pub/sub on one Redis server.
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

impl Transport for RedisPubSub {
    fn publish<'a>(&'a self, batch: &'a [Outgoing]) -> BoxFuture<'a, Result<(), TransportError>> {
        self.commands.publish("PUBLISH", batch).boxed()
    }

    fn subscribe(&self) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        async move {
            let Target::Single(client) = &self.commands.target else {
                return Err(TransportError::Invalid("target: pub/sub needs one server"));
            };
            let mut pubsub = client
                .get_async_pubsub()
                .await
                .map_err(TransportError::unavailable)?;
            pubsub
                .subscribe(self.commands.bus())
                .await
                .map_err(TransportError::unavailable)?;
            // The stream ends when the connection is lost.
            let messages = pubsub
                .into_on_message()
                .map(|msg| Bytes::copy_from_slice(msg.get_payload_bytes()));
            let messages: Subscription = Box::pin(messages);
            Ok(messages)
        }
        .boxed()
    }

    fn append<'a>(
        &'a self,
        log: &'a str,
        entry: Bytes,
        max_len: usize,
    ) -> BoxFuture<'a, Result<Position, TransportError>> {
        self.commands.append(log, entry, max_len).boxed()
    }

    fn read<'a>(
        &'a self,
        log: &'a str,
        after: Position,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<(Position, Bytes)>, TransportError>> {
        self.commands.read(log, after, max).boxed()
    }

    fn kept(&self) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, TransportError>> {
        self.commands.kept().boxed()
    }
}
