//! What both Redis transports do alike: pipelined publishes with the kept values in one hash,
//! and ordered logs as Redis Streams (`XADD … MAXLEN ~`, `XRANGE`).
//!
//! Invariant: replies are untrusted; a reply of the wrong shape is a `TransportError::Invalid`,
//! never a panic.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use herald_cluster::{Outgoing, Position, TransportError};
use redis::aio::ConnectionManagerConfig;
use serde::Deserialize;

use crate::conn::{RedisConn, Target};

/// The stream field holding a log entry.
const ENTRY_FIELD: &str = "m";

/// A command connection, opened on first use and reconnecting on its own.
pub(crate) struct Commands {
    pub target: Target,
    /// The key prefix in use (`{prefix}` on a cluster).
    pub prefix: String,
    conn: tokio::sync::Mutex<Option<RedisConn>>,
}

/// Shows the prefix only: a Redis URL may carry a password.
impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Commands {
    pub fn new(target: Target, prefix: &str) -> Commands {
        Commands {
            prefix: target.key_prefix(prefix),
            target,
            conn: tokio::sync::Mutex::default(),
        }
    }

    /// The bus channel.
    pub fn bus(&self) -> String {
        format!("{}:bus", self.prefix)
    }

    /// All cache channels' last events live in one hash, so one `HGETALL` loads them on any
    /// Redis, clustered or not; each value carries its own expiry.
    fn cache_hash(&self) -> String {
        format!("{}:cache", self.prefix)
    }

    fn log_key(&self, log: &str) -> String {
        format!("{}:log:{log}", self.prefix)
    }

    async fn conn(&self) -> Result<RedisConn, TransportError> {
        let mut conn = self.conn.lock().await;
        if let Some(conn) = &*conn {
            return Ok(conn.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(1)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let fresh = self
            .target
            .connection(config)
            .await
            .map_err(TransportError::unavailable)?;
        *conn = Some(fresh.clone());
        Ok(fresh)
    }

    /// Sends `batch` with `publish` (`PUBLISH` or `SPUBLISH`) in one pipeline.
    pub async fn publish(&self, publish: &str, batch: &[Outgoing]) -> Result<(), TransportError> {
        let bus = self.bus();
        let mut pipe = redis::pipe();
        for out in batch {
            pipe.cmd(publish).arg(&bus).arg(&out.message[..]).ignore();
            if let Some(kept) = &out.keep {
                pipe.cmd("HSET")
                    .arg(self.cache_hash())
                    .arg(&kept.key)
                    .arg(&kept.value[..])
                    .ignore();
            }
        }
        pipe.query_async::<()>(&mut self.conn().await?)
            .await
            .map_err(TransportError::unavailable)
    }

    pub async fn append(
        &self,
        log: &str,
        entry: Bytes,
        max_len: usize,
    ) -> Result<Position, TransportError> {
        let id: String = redis::cmd("XADD")
            .arg(self.log_key(log))
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len)
            .arg("*")
            .arg(ENTRY_FIELD)
            .arg(&entry[..])
            .query_async(&mut self.conn().await?)
            .await
            .map_err(TransportError::unavailable)?;
        id.parse()
    }

    pub async fn read(
        &self,
        log: &str,
        after: Position,
        max: usize,
    ) -> Result<Vec<(Position, Bytes)>, TransportError> {
        // `(` makes the start exclusive (Redis 6.2+).
        let start = if after == Position::START {
            "-".to_owned()
        } else {
            format!("({after}")
        };
        let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(self.log_key(log))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut self.conn().await?)
            .await
            .map_err(TransportError::unavailable)?;
        entries
            .into_iter()
            .map(|(id, fields)| {
                let value = fields
                    .chunks_exact(2)
                    .find(|pair| pair[0] == ENTRY_FIELD.as_bytes())
                    .map(|pair| Bytes::from(pair[1].clone()))
                    .ok_or(TransportError::Invalid("log entry"))?;
                Ok((id.parse()?, value))
            })
            .collect()
    }

    /// Every kept value that has not expired; expired ones are deleted.
    pub async fn kept(&self) -> Result<Vec<(String, Bytes)>, TransportError> {
        /// The part of a kept value (a JSON object from the protocol) that says when it expires.
        #[derive(Deserialize)]
        struct Expiry {
            expires_ms: u64,
        }
        let mut conn = self.conn().await?;
        let entries: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(self.cache_hash())
            .query_async(&mut conn)
            .await
            .map_err(TransportError::unavailable)?;
        let now = herald_cluster::wire::now_ms();
        let mut expired = Vec::new();
        let mut live = Vec::new();
        for (key, value) in entries {
            // A value without a readable expiry is passed on: the protocol rejects and counts it.
            match serde_json::from_slice::<Expiry>(&value) {
                Ok(expiry) if expiry.expires_ms <= now => expired.push(key),
                _ => live.push((key, Bytes::from(value))),
            }
        }
        if !expired.is_empty() {
            redis::cmd("HDEL")
                .arg(self.cache_hash())
                .arg(expired)
                .query_async::<()>(&mut conn)
                .await
                .map_err(TransportError::unavailable)?;
        }
        Ok(live)
    }
}
