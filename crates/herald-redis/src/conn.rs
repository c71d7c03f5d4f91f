//! One Redis connection type for a single server and for Redis Cluster.
//!
//! With `sharded`, herald expects a Redis Cluster but also accepts a standalone Redis 7 (asked
//! with `INFO cluster` at each connect): the bus is a sharded pub/sub channel
//! (`SPUBLISH`/`SSUBSCRIBE`) and every key and channel name carries the `{prefix}` hash tag, so
//! they all live in one slot: multi-key transactions and scripts work, and classic `PUBLISH`
//! (which a cluster forwards to every node) is never used.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// Where Redis is: one server, or the seed nodes of a Redis Cluster.
#[derive(Debug, Clone)]
pub enum Target {
    Single(Box<redis::Client>),
    Cluster(Vec<String>),
}

impl Target {
    /// `urls` is one URL, or (sharded) a comma-separated list of cluster seed nodes.
    ///
    /// # Errors
    /// A malformed URL.
    pub fn parse(urls: &str, sharded: bool) -> RedisResult<Target> {
        if sharded {
            let nodes: Vec<String> = urls
                .split(',')
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect();
            // Validate every URL now, so a typo fails start-up rather than every reconnect.
            for node in &nodes {
                redis::Client::open(node.as_str())?;
            }
            Ok(Target::Cluster(nodes))
        } else {
            Ok(Target::Single(Box::new(redis::Client::open(urls)?)))
        }
    }

    /// The key prefix to use: the hash tag `{prefix}` on a cluster, so every key shares a slot.
    pub fn key_prefix(&self, prefix: &str) -> String {
        match self {
            Target::Single(_) => prefix.to_owned(),
            Target::Cluster(_) => format!("{{{prefix}}}"),
        }
    }

    /// A command connection that reconnects on its own.
    ///
    /// # Errors
    /// Only for a cluster that cannot be reached at all yet.
    pub async fn connection(&self, config: ConnectionManagerConfig) -> RedisResult<RedisConn> {
        match self {
            Target::Single(client) => Ok(RedisConn::Single(
                client.get_connection_manager_lazy(config)?,
            )),
            Target::Cluster(nodes) => {
                if let Some(single) = standalone(nodes).await? {
                    return Ok(RedisConn::Single(
                        single.get_connection_manager_lazy(config)?,
                    ));
                }
                let client = ClusterClientBuilder::new(nodes.clone()).build()?;
                Ok(RedisConn::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

/// The client of the first seed when it is a standalone Redis (cluster mode off), so that sharded
/// pub/sub works on a single Redis 7 too; `None` for a Redis Cluster.
///
/// # Errors
/// No seed answered.
pub async fn standalone(nodes: &[String]) -> RedisResult<Option<redis::Client>> {
    let mut last_err = None;
    for node in nodes {
        let client = redis::Client::open(node.as_str())?;
        let info = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("INFO")
                .arg("cluster")
                .query_async::<String>(&mut conn)
                .await
        };
        match tokio::time::timeout(std::time::Duration::from_secs(2), info).await {
            Ok(Ok(info)) => {
                let enabled = info.lines().any(|l| l.trim() == "cluster_enabled:1");
                return Ok((!enabled).then_some(client));
            }
            Ok(Err(err)) => last_err = Some(err),
            Err(_) => {
                last_err = Some(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "timed out asking a seed node",
                )))
            }
        }
    }
    Err(last_err.unwrap_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no seed nodes"))
    }))
}

/// A command connection to a single Redis or to a Redis Cluster.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConn::Single(_) => "RedisConn::Single",
            RedisConn::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}
