//! The Redis sharded pub/sub transport: the bus is a sharded channel (`SPUBLISH`/`SSUBSCRIBE`,
//! received as RESP3 pushes), on a Redis Cluster (the bus lives on the shard owning the
//! `{prefix}` slot, so the cluster does not forward every message to every Redis node as it does
//! for `PUBLISH`) or on a standalone Redis 7.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use herald_cluster::{Outgoing, Position, Subscription, Transport, TransportError};
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use crate::commands::Commands;
use crate::conn::{standalone, Target};
use crate::BrokerError;

/// Sharded pub/sub on a Redis Cluster or a standalone Redis 7.
#[derive(Debug)]
pub struct RedisSharded {
    commands: Commands,
}

impl RedisSharded {
    /// `urls` is one URL or comma-separated Redis Cluster seed nodes; every key and the bus carry
    /// the `{prefix}` hash tag.
    ///
    /// # Errors
    /// A malformed URL.
    pub fn new(urls: &str, prefix: &str) -> Result<RedisSharded, BrokerError> {
        let target = Target::parse(urls, true).map_err(BrokerError::InvalidUrl)?;
        Ok(RedisSharded {
            commands: Commands::new(target, prefix),
        })
    }

    async fn subscribe_pushes(&self) -> redis::RedisResult<Subscription> {
        let Target::Cluster(nodes) = &self.commands.target else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "sharded pub/sub needs seed nodes",
            )));
        };
        let bus = self.commands.bus();
        let (tx, rx) = mpsc::unbounded_channel::<PushInfo>();
        // The connection must live as long as the subscription: it rides along in the stream.
        let keep_alive: Box<dyn std::any::Any + Send> = match standalone(nodes).await? {
            Some(client) => {
                let info = client.get_connection_info().clone();
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = redis::Client::open(info.set_redis_settings(settings))?;
                let config = AsyncConnectionConfig::new().set_push_sender(tx);
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                // The confirmation arrives as an `ssubscribe` push, which the connection treats
                // as this command's reply.
                redis::cmd("SSUBSCRIBE")
                    .arg(&bus)
                    .query_async::<Value>(&mut conn)
                    .await?;
                Box::new(conn)
            }
            None => {
                let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .build()?;
                let mut conn = client.get_async_connection().await?;
                conn.ssubscribe(&bus).await?;
                Box::new(conn)
            }
        };
        let messages =
            futures_util::stream::unfold((rx, keep_alive), |(mut rx, keep_alive)| async move {
                loop {
                    let push = rx.recv().await?;
                    match push.kind {
                        PushKind::SMessage => {
                            if let Some(Value::BulkString(payload)) = push.data.get(1) {
                                return Some((Bytes::copy_from_slice(payload), (rx, keep_alive)));
                            }
                        }
                        PushKind::Disconnection => return None,
                        _ => {}
                    }
                }
            });
        Ok(Box::pin(messages))
    }
}

impl Transport for RedisSharded {
    fn publish<'a>(&'a self, batch: &'a [Outgoing]) -> BoxFuture<'a, Result<(), TransportError>> {
        self.commands.publish("SPUBLISH", batch).boxed()
    }

    fn subscribe(&self) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        async move {
            self.subscribe_pushes()
                .await
                .map_err(TransportError::unavailable)
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
