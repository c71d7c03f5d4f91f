//! Where webhook bookkeeping lives: in memory for a single node, in Redis for a cluster, so that
//! "first subscriber anywhere" and "last member anywhere" are decided once for the whole cluster,
//! and a webhook still due when its node dies is picked up by another node.
//!
//! Invariant: every decision is an atomic operation in the store (SADD/SREM with SCARD in one
//! transaction, SET NX, a Lua claim), so exactly one node sees each transition.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_redis::conn::{RedisConn, Target};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// One request to make: events for one target of one app.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub id: u64,
    pub app: String,
    /// Indexes into the app's targets; a retry carries only the targets that failed.
    pub targets: Vec<usize>,
    pub events: Vec<serde_json::Value>,
    /// When the first attempt was due, for the retry window.
    pub first_due_ms: u64,
    pub attempts: u32,
    /// For delayed leave events: sent only if this key still exists when first due (a quick
    /// return deletes it); cleared once the decision is made.
    pub pending_key: Option<String>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, Default)]
pub struct Memory {
    sets: HashMap<String, HashSet<String>>,
    flags: HashMap<String, u64>,
    /// `(due_ms, id)` → job.
    queue: BTreeMap<(u64, u64), Job>,
    /// Jobs handed out and not yet completed or rescheduled.
    leased: HashMap<u64, Job>,
}

#[derive(Debug)]
pub enum Store {
    Memory(Mutex<Memory>),
    Redis {
        target: Target,
        /// Connected on first use, so start-up does not wait for Redis.
        conn: tokio::sync::OnceCell<RedisConn>,
        /// With the `{…}` hash tag on a cluster: every key in one slot.
        prefix: String,
    },
}

const CLAIM_SCRIPT: &str = r"
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, m in ipairs(items) do redis.call('ZADD', KEYS[1], ARGV[2], m) end
return items
";

impl Store {
    pub fn memory() -> Store {
        Store::Memory(Mutex::default())
    }

    pub fn in_redis(target: Target, prefix: &str) -> Store {
        let prefix = target.key_prefix(prefix);
        Store::Redis {
            target,
            conn: tokio::sync::OnceCell::new(),
            prefix,
        }
    }

    async fn redis_conn(&self) -> redis::RedisResult<RedisConn> {
        let Store::Redis { target, conn, .. } = self else {
            unreachable!("only called for the Redis store");
        };
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_max_delay(Duration::from_secs(2))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        conn.get_or_try_init(|| target.connection(config))
            .await
            .cloned()
    }

    fn key(&self, name: &str) -> String {
        match self {
            Store::Memory(_) => name.to_owned(),
            Store::Redis { prefix, .. } => format!("{prefix}:wh:{name}"),
        }
    }

    /// Adds `member` to set `name`; the new size when it was not there yet.
    pub async fn add(&self, name: &str, member: &str) -> redis::RedisResult<Option<usize>> {
        match self {
            Store::Memory(m) => {
                let mut m = m.lock();
                let set = m.sets.entry(name.to_owned()).or_default();
                Ok(set.insert(member.to_owned()).then_some(set.len()))
            }
            Store::Redis { .. } => {
                let mut conn = self.redis_conn().await?;
                let (added, size): (usize, usize) = redis::pipe()
                    .atomic()
                    .sadd(self.key(name), member)
                    .scard(self.key(name))
                    .query_async(&mut conn)
                    .await?;
                Ok((added == 1).then_some(size))
            }
        }
    }

    /// Removes `member` from set `name`; the new size when it was there.
    pub async fn remove(&self, name: &str, member: &str) -> redis::RedisResult<Option<usize>> {
        match self {
            Store::Memory(m) => {
                let mut m = m.lock();
                let Some(set) = m.sets.get_mut(name) else {
                    return Ok(None);
                };
                let removed = set.remove(member);
                let size = set.len();
                if size == 0 {
                    m.sets.remove(name);
                }
                Ok(removed.then_some(size))
            }
            Store::Redis { .. } => {
                let mut conn = self.redis_conn().await?;
                let (removed, size): (usize, usize) = redis::pipe()
                    .atomic()
                    .srem(self.key(name), member)
                    .scard(self.key(name))
                    .query_async(&mut conn)
                    .await?;
                Ok((removed == 1).then_some(size))
            }
        }
    }

    /// Sets flag `name` for `ttl` unless it is set; true when this call set it.
    pub async fn set_once(&self, name: &str, ttl: Duration) -> redis::RedisResult<bool> {
        match self {
            Store::Memory(m) => {
                let mut m = m.lock();
                let now = now_ms();
                m.flags.retain(|_, until| *until > now);
                if m.flags.contains_key(name) {
                    return Ok(false);
                }
                m.flags
                    .insert(name.to_owned(), now + ttl.as_millis() as u64);
                Ok(true)
            }
            Store::Redis { .. } => {
                let mut conn = self.redis_conn().await?;
                let set: Option<String> = redis::cmd("SET")
                    .arg(self.key(name))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut conn)
                    .await?;
                Ok(set.is_some())
            }
        }
    }

    /// Clears flag `name`; true when it was set.
    pub async fn take(&self, name: &str) -> redis::RedisResult<bool> {
        match self {
            Store::Memory(m) => {
                let mut m = m.lock();
                let now = now_ms();
                Ok(m.flags.remove(name).is_some_and(|until| until > now))
            }
            Store::Redis { .. } => {
                let mut conn = self.redis_conn().await?;
                let n: usize = redis::cmd("DEL")
                    .arg(self.key(name))
                    .query_async(&mut conn)
                    .await?;
                Ok(n == 1)
            }
        }
    }

    pub async fn enqueue(&self, job: &Job, due_ms: u64) -> redis::RedisResult<()> {
        match self {
            Store::Memory(m) => {
                m.lock().queue.insert((due_ms, job.id), job.clone());
                Ok(())
            }
            Store::Redis { .. } => {
                let mut conn = self.redis_conn().await?;
                let member = serde_json::to_string(job).expect("jobs serialize");
                redis::cmd("ZADD")
                    .arg(self.key("queue"))
                    .arg(due_ms)
                    .arg(member)
                    .query_async::<()>(&mut conn)
                    .await
            }
        }
    }

    /// Takes up to `max` due jobs, leased for `lease`: if this node dies before completing them,
    /// they become due again for another node.
    pub async fn claim(&self, max: usize, lease: Duration) -> redis::RedisResult<Vec<Job>> {
        let now = now_ms();
        match self {
            Store::Memory(m) => {
                let mut m = m.lock();
                let due: Vec<(u64, u64)> = m
                    .queue
                    .range(..=(now, u64::MAX))
                    .take(max)
                    .map(|(k, _)| *k)
                    .collect();
                let jobs: Vec<Job> = due.iter().filter_map(|k| m.queue.remove(k)).collect();
                for job in &jobs {
                    m.leased.insert(job.id, job.clone());
                }
                Ok(jobs)
            }
            Store::Redis { .. } => {
                let mut conn = self.redis_conn().await?;
                let members: Vec<String> = redis::Script::new(CLAIM_SCRIPT)
                    .key(self.key("queue"))
                    .arg(now)
                    .arg(now + lease.as_millis() as u64)
                    .arg(max)
                    .invoke_async(&mut conn)
                    .await?;
                let mut jobs = Vec::with_capacity(members.len());
                for member in members {
                    match serde_json::from_str::<Job>(&member) {
                        Ok(job) => jobs.push(job),
                        Err(_) => {
                            // Untrusted input: drop what does not parse.
                            let _: redis::RedisResult<()> = redis::cmd("ZREM")
                                .arg(self.key("queue"))
                                .arg(&member)
                                .query_async(&mut conn)
                                .await;
                        }
                    }
                }
                Ok(jobs)
            }
        }
    }

    /// Removes a claimed job for good.
    pub async fn complete(&self, job: &Job) -> redis::RedisResult<()> {
        match self {
            Store::Memory(m) => {
                m.lock().leased.remove(&job.id);
                Ok(())
            }
            Store::Redis { .. } => {
                let mut conn = self.redis_conn().await?;
                let member = serde_json::to_string(job).expect("jobs serialize");
                redis::cmd("ZREM")
                    .arg(self.key("queue"))
                    .arg(member)
                    .query_async::<()>(&mut conn)
                    .await
            }
        }
    }

    /// Replaces a claimed job by its next attempt.
    pub async fn reschedule(&self, old: &Job, next: &Job, due_ms: u64) -> redis::RedisResult<()> {
        self.complete(old).await?;
        self.enqueue(next, due_ms).await
    }

    /// Jobs waiting (due or not).
    pub async fn depth(&self) -> redis::RedisResult<usize> {
        match self {
            Store::Memory(m) => {
                let m = m.lock();
                Ok(m.queue.len() + m.leased.len())
            }
            Store::Redis { .. } => {
                let mut conn = self.redis_conn().await?;
                redis::cmd("ZCARD")
                    .arg(self.key("queue"))
                    .query_async(&mut conn)
                    .await
            }
        }
    }
}
