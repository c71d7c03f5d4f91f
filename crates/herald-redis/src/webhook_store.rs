//! Webhook bookkeeping in Redis, for a cluster: "first subscriber anywhere" and "last member
//! anywhere" are decided once for the whole cluster, and a webhook still due when its node dies is
//! picked up by another node.
//!
//! Keys: `{prefix}:wh:{name}` (with the `{prefix}` hash tag on a Redis Cluster, so every key is in
//! one slot). Sets are Redis sets, flags are `SET NX PX` keys, and the queue is one sorted set
//! `…:wh:queue` of JSON jobs scored by due time; a claim moves due jobs' scores to the end of
//! their lease in one Lua script.
//!
//! Invariant: every decision is one atomic operation in Redis (SADD/SREM with SCARD in one
//! transaction, SET NX, the claim script), so exactly one node sees each transition; what is read
//! back from Redis is untrusted (a queue member that does not parse is dropped).

use std::time::Duration;

use herald_core::webhook_store::{
    now_ms, StoreFuture, WebhookJob, WebhookStore, WebhookStoreError, WebhookStoreResult,
};
use redis::aio::ConnectionManagerConfig;
use redis::RedisError;

use crate::conn::{RedisConn, Target};

const CLAIM_SCRIPT: &str = r"
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, m in ipairs(items) do redis.call('ZADD', KEYS[1], ARGV[2], m) end
return items
";

/// The Redis implementation of [`WebhookStore`].
#[derive(Debug)]
pub struct RedisWebhookStore {
    target: Target,
    /// Connected on first use, so start-up does not wait for Redis.
    conn: tokio::sync::OnceCell<RedisConn>,
    /// With the `{…}` hash tag on a cluster: every key in one slot.
    prefix: String,
}

fn backend(err: RedisError) -> WebhookStoreError {
    WebhookStoreError::Backend(err.to_string())
}

impl RedisWebhookStore {
    /// A store under `prefix` (the cluster prefix); connects on first use.
    pub fn new(target: Target, prefix: &str) -> RedisWebhookStore {
        let prefix = target.key_prefix(prefix);
        RedisWebhookStore {
            target,
            conn: tokio::sync::OnceCell::new(),
            prefix,
        }
    }

    async fn conn(&self) -> WebhookStoreResult<RedisConn> {
        let config = ConnectionManagerConfig::new()
            .set_max_delay(Duration::from_secs(2))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        self.conn
            .get_or_try_init(|| self.target.connection(config))
            .await
            .cloned()
            .map_err(backend)
    }

    fn key(&self, name: &str) -> String {
        format!("{}:wh:{name}", self.prefix)
    }

    /// SADD or SREM, and SCARD, in one transaction: the new size when the member changed.
    async fn change_set(
        &self,
        add: bool,
        name: &str,
        member: &str,
    ) -> WebhookStoreResult<Option<usize>> {
        let mut conn = self.conn().await?;
        let key = self.key(name);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if add {
            pipe.sadd(&key, member);
        } else {
            pipe.srem(&key, member);
        }
        let (changed, size): (usize, usize) = pipe
            .scard(&key)
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok((changed == 1).then_some(size))
    }

    async fn zrem(&self, conn: &mut RedisConn, member: &str) -> WebhookStoreResult<()> {
        redis::cmd("ZREM")
            .arg(self.key("queue"))
            .arg(member)
            .query_async::<()>(conn)
            .await
            .map_err(backend)
    }
}

fn job_member(job: &WebhookJob) -> WebhookStoreResult<String> {
    serde_json::to_string(job).map_err(|e| WebhookStoreError::Backend(e.to_string()))
}

impl WebhookStore for RedisWebhookStore {
    fn add<'a>(&'a self, set: &'a str, member: &'a str) -> StoreFuture<'a, Option<usize>> {
        Box::pin(self.change_set(true, set, member))
    }

    fn remove<'a>(&'a self, set: &'a str, member: &'a str) -> StoreFuture<'a, Option<usize>> {
        Box::pin(self.change_set(false, set, member))
    }

    fn set_once<'a>(&'a self, name: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let set: Option<String> = redis::cmd("SET")
                .arg(self.key(name))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            Ok(set.is_some())
        })
    }

    fn take<'a>(&'a self, name: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let n: usize = redis::cmd("DEL")
                .arg(self.key(name))
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            Ok(n == 1)
        })
    }

    fn enqueue<'a>(&'a self, job: &'a WebhookJob, due_ms: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let member = job_member(job)?;
            let mut conn = self.conn().await?;
            redis::cmd("ZADD")
                .arg(self.key("queue"))
                .arg(due_ms)
                .arg(member)
                .query_async::<()>(&mut conn)
                .await
                .map_err(backend)
        })
    }

    fn claim(&self, max: usize, lease: Duration) -> StoreFuture<'_, Vec<WebhookJob>> {
        Box::pin(async move {
            let now = now_ms();
            let mut conn = self.conn().await?;
            let members: Vec<String> = redis::Script::new(CLAIM_SCRIPT)
                .key(self.key("queue"))
                .arg(now)
                .arg(now + lease.as_millis() as u64)
                .arg(max)
                .invoke_async(&mut conn)
                .await
                .map_err(backend)?;
            let mut jobs = Vec::with_capacity(members.len());
            for member in members {
                match serde_json::from_str::<WebhookJob>(&member) {
                    Ok(job) => jobs.push(job),
                    // Untrusted input: drop what does not parse.
                    Err(_) => {
                        let _ = self.zrem(&mut conn, &member).await;
                    }
                }
            }
            Ok(jobs)
        })
    }

    fn complete<'a>(&'a self, job: &'a WebhookJob) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let member = job_member(job)?;
            let mut conn = self.conn().await?;
            self.zrem(&mut conn, &member).await
        })
    }

    fn depth(&self) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            redis::cmd("ZCARD")
                .arg(self.key("queue"))
                .query_async(&mut conn)
                .await
                .map_err(backend)
        })
    }
}
