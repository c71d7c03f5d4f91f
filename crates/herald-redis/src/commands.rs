//! What both Redis transports do alike: the bus as Redis Streams (one per shard; `XADD … MAXLEN ~`
//! in pipelines, read with blocking `XREAD` from the last id read), and the kept values in one
//! hash.
//!
//! Invariant: replies are untrusted; a reply of the wrong shape is a `TransportError::Invalid`,
//! never a panic.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use herald_cluster::{BusItem, Outgoing, Position, Subscription, TransportError};
use redis::aio::ConnectionManagerConfig;
use serde::Deserialize;

use crate::conn::{RedisConn, Target};

/// The stream field holding a log entry.
const ENTRY_FIELD: &str = "m";
/// Entries each shard's stream keeps by default (`MAXLEN ~`; `cluster.log_max_len`): how long a
/// node may be away from the bus and still catch up, at the cluster's publish rate (100,000 is
/// 10 s at 10,000 events/s), and what the bus costs Redis (entries times their size).
pub const LOG_MAX_LEN: usize = 100_000;
/// How long one `XREAD` waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);
/// Most entries one `XREAD` returns.
const READ_COUNT: usize = 512;

/// The id of the first entry of `key`, `None` when it is empty or does not exist.
async fn first_id(conn: &mut RedisConn, key: &str) -> Result<Option<Position>, TransportError> {
    let first: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .map_err(TransportError::unavailable)?;
    first
        .first()
        .map(|(id, _)| id.parse())
        .transpose()
        .map_err(Into::into)
}

/// The id of the last entry of `key`, `0-0` when it is empty.
async fn last_id(conn: &mut RedisConn, key: &str) -> Result<Position, TransportError> {
    let last: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .map_err(TransportError::unavailable)?;
    match last.first() {
        Some((id, _)) => Ok(id.parse()?),
        None => Ok(Position::START),
    }
}

/// Entries of `key` after `after`, waiting up to [`BLOCK`] for some. Malformed entries are
/// passed on empty (the protocol drops and counts them), so the cursor still moves past them.
async fn xread(
    conn: &mut RedisConn,
    key: &str,
    after: Position,
) -> Result<Vec<(Position, Bytes)>, TransportError> {
    type Reply = Option<Vec<(String, Vec<(String, Vec<Vec<u8>>)>)>>;
    let reply: Reply = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(READ_COUNT)
        .arg("BLOCK")
        .arg(BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(key)
        .arg(after.to_string())
        .query_async(conn)
        .await
        .map_err(TransportError::unavailable)?;
    let mut res = Vec::new();
    for (_, entries) in reply.unwrap_or_default() {
        for (id, fields) in entries {
            let value = fields
                .chunks_exact(2)
                .find(|pair| pair[0] == ENTRY_FIELD.as_bytes())
                .map(|pair| Bytes::from(pair[1].clone()))
                .unwrap_or_default();
            res.push((id.parse()?, value));
        }
    }
    Ok(res)
}

/// A command connection, opened on first use and reconnecting on its own.
pub(crate) struct Commands {
    pub target: Target,
    /// The key prefix in use (`{prefix}` on a cluster).
    pub prefix: String,
    /// The configured prefix, without a hash tag.
    raw_prefix: String,
    conn: tokio::sync::Mutex<Option<RedisConn>>,
    /// Each shard's epoch as this node last read it.
    epochs: parking_lot::Mutex<HashMap<usize, String>>,
    /// Entries each shard's stream keeps (about).
    pub log_max_len: usize,
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
            raw_prefix: prefix.to_owned(),
            target,
            conn: tokio::sync::Mutex::default(),
            epochs: parking_lot::Mutex::default(),
            log_max_len: LOG_MAX_LEN,
        }
    }

    /// All cache channels' last events live in one hash, so one `HGETALL` loads them on any
    /// Redis, clustered or not; each value carries its own expiry.
    fn cache_hash(&self) -> String {
        format!("{}:cache", self.prefix)
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

    /// The stream holding shard `shard` of the bus. Shard 0 shares the `{prefix}` slot with every
    /// other key; on a Redis Cluster each other shard has its own hash tag, so the shards spread
    /// over the cluster's nodes.
    pub fn bus_log(&self, shard: usize) -> String {
        match (&self.target, shard) {
            (_, 0) => format!("{}:bus", self.prefix),
            (Target::Single(_), n) => format!("{}:bus:{n}", self.prefix),
            (Target::Cluster(_), n) => format!("{{{}.{n}}}:bus", self.raw_prefix),
        }
    }

    /// Appends every message to its shard's stream (`XADD … MAXLEN ~`) and stores the kept
    /// values: one pipeline per shard (a Redis Cluster cannot pipeline across slots), the kept
    /// values with shard 0, which shares their `{prefix}` slot. Returns the stream ids.
    pub async fn append_batch(&self, batch: &[Outgoing]) -> Result<Vec<Position>, TransportError> {
        let mut conn = self.conn().await?;
        let mut res = vec![Position::START; batch.len()];
        let mut shards: Vec<usize> = batch.iter().map(|out| out.shard).collect();
        shards.sort_unstable();
        shards.dedup();
        if !shards.contains(&0) && batch.iter().any(|out| out.keep.is_some()) {
            shards.insert(0, 0);
        }
        for shard in shards {
            let mut pipe = redis::pipe();
            let mut slots = Vec::new();
            for (i, out) in batch.iter().enumerate() {
                if out.shard == shard {
                    pipe.cmd("XADD")
                        .arg(self.bus_log(shard))
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(self.log_max_len.max(1))
                        .arg("*")
                        .arg(ENTRY_FIELD)
                        .arg(&out.message[..]);
                    slots.push(i);
                }
                if let (0, Some(kept)) = (shard, &out.keep) {
                    pipe.cmd("HSET")
                        .arg(self.cache_hash())
                        .arg(&kept.key)
                        .arg(&kept.value[..])
                        .ignore();
                }
            }
            let ids: Vec<String> = pipe
                .query_async(&mut conn)
                .await
                .map_err(TransportError::unavailable)?;
            if ids.len() != slots.len() {
                return Err(TransportError::Invalid("XADD replies"));
            }
            for (i, id) in slots.into_iter().zip(ids) {
                res[i] = id.parse()?;
            }
        }
        Ok(res)
    }

    /// Starts reading shard `shard` after `after` (`None`: from its end) on a connection of its
    /// own (a blocking `XREAD` holds its connection). Reports a gap first when entries after
    /// `after` may be gone: trimmed (the stream's first entry is past `after`), or lost with
    /// Redis's data (the shard's epoch key changed since this node last read it).
    pub async fn read_bus(
        &self,
        shard: usize,
        after: Option<Position>,
    ) -> Result<Subscription, TransportError> {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(BLOCK + Duration::from_secs(2)));
        let mut conn = self
            .target
            .connection(config)
            .await
            .map_err(TransportError::unavailable)?;
        let key = self.bus_log(shard);
        let epoch_key = format!("{key}:epoch");
        let fresh = format!("{:016x}", rand::random::<u64>());
        // `NX GET`: the epoch, created by the first reader after Redis (re)started empty.
        let existing: Option<String> = redis::cmd("SET")
            .arg(&epoch_key)
            .arg(&fresh)
            .arg("NX")
            .arg("GET")
            .query_async(&mut conn)
            .await
            .map_err(TransportError::unavailable)?;
        let epoch = existing.unwrap_or(fresh);
        let previous = self.epochs.lock().insert(shard, epoch.clone());
        let lost = after.is_some() && previous.is_some_and(|p| p != epoch);
        // The entry we read last is gone: what followed it may have been trimmed too. (Redis
        // keeps no record of trimmed ids, so this is conservative near the `MAXLEN` boundary.)
        let trimmed = match after {
            Some(after) => first_id(&mut conn, &key)
                .await?
                .is_some_and(|first| first > after),
            None => false,
        };
        let start = match after {
            Some(after) => after,
            None => last_id(&mut conn, &key).await?,
        };
        let state = (conn, key, start, lost || trimmed, VecDeque::new());
        let items = futures_util::stream::unfold(
            state,
            |(mut conn, key, mut cursor, mut gap, mut queue)| async move {
                loop {
                    if std::mem::take(&mut gap) {
                        return Some((BusItem::Gap, (conn, key, cursor, gap, queue)));
                    }
                    if let Some((position, message)) = queue.pop_front() {
                        cursor = position;
                        let item = BusItem::Entry(position, message);
                        return Some((item, (conn, key, cursor, gap, queue)));
                    }
                    // An error (the connection is gone) ends the read: the protocol reads again
                    // from `cursor`.
                    let entries = xread(&mut conn, &key, cursor).await.ok()?;
                    queue.extend(entries);
                }
            },
        );
        let items: Subscription = Box::pin(items);
        Ok(items)
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
