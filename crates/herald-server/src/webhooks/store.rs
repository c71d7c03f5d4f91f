//! Where webhook bookkeeping lives, behind herald-core's [`WebhookStore`] trait: in memory for a
//! single node ([`MemoryStore`], here), in Redis for a cluster (herald-redis's
//! `RedisWebhookStore`), so that "first subscriber anywhere" and "last member anywhere" are decided
//! once for the whole cluster, and a webhook still due when its node dies is picked up by another.
//!
//! Invariant: every decision is one atomic operation of the store, so exactly one node sees each
//! transition; this crate never talks to Redis itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Deref;
use std::time::Duration;

pub use herald_core::webhook_store::{
    now_ms, StoreFuture, WebhookJob as Job, WebhookStore, WebhookStoreResult,
};
use herald_redis::conn::Target;
use herald_redis::webhook_store::RedisWebhookStore;
use parking_lot::Mutex;

/// The store the webhook subsystem uses: any [`WebhookStore`].
#[derive(Debug)]
pub struct Store(Box<dyn WebhookStore>);

impl Store {
    /// A single node's store.
    pub fn memory() -> Store {
        Store(Box::new(MemoryStore::default()))
    }

    /// A cluster's store, in the Redis at `target` under `prefix`.
    pub fn in_redis(target: Target, prefix: &str) -> Store {
        Store(Box::new(RedisWebhookStore::new(target, prefix)))
    }

    /// Any other implementation.
    pub fn new(store: Box<dyn WebhookStore>) -> Store {
        Store(store)
    }
}

impl Deref for Store {
    type Target = dyn WebhookStore;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// Bookkeeping for one node, in memory: decisions are atomic under one lock.
#[derive(Debug, Default)]
pub struct MemoryStore(Mutex<Memory>);

#[derive(Debug, Default)]
struct Memory {
    sets: HashMap<String, HashSet<String>>,
    /// Flag → when it expires (ms).
    flags: HashMap<String, u64>,
    /// `(due_ms, id)` → job.
    queue: BTreeMap<(u64, u64), Job>,
    /// Jobs handed out and not yet completed.
    leased: HashMap<u64, Job>,
}

fn ready<'a, T: Send + 'a>(value: T) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(Ok(value)))
}

impl WebhookStore for MemoryStore {
    fn add<'a>(&'a self, set: &'a str, member: &'a str) -> StoreFuture<'a, Option<usize>> {
        let mut m = self.0.lock();
        let set = m.sets.entry(set.to_owned()).or_default();
        let added = set.insert(member.to_owned()).then_some(set.len());
        ready(added)
    }

    fn remove<'a>(&'a self, set: &'a str, member: &'a str) -> StoreFuture<'a, Option<usize>> {
        let mut m = self.0.lock();
        let Some(members) = m.sets.get_mut(set) else {
            return ready(None);
        };
        let removed = members.remove(member);
        let size = members.len();
        if size == 0 {
            m.sets.remove(set);
        }
        ready(removed.then_some(size))
    }

    fn set_once<'a>(&'a self, name: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        let mut m = self.0.lock();
        let now = now_ms();
        m.flags.retain(|_, until| *until > now);
        if m.flags.contains_key(name) {
            return ready(false);
        }
        m.flags
            .insert(name.to_owned(), now.saturating_add(ttl.as_millis() as u64));
        ready(true)
    }

    fn take<'a>(&'a self, name: &'a str) -> StoreFuture<'a, bool> {
        let now = now_ms();
        let taken = self
            .0
            .lock()
            .flags
            .remove(name)
            .is_some_and(|until| until > now);
        ready(taken)
    }

    fn enqueue<'a>(&'a self, job: &'a Job, due_ms: u64) -> StoreFuture<'a, ()> {
        self.0.lock().queue.insert((due_ms, job.id), job.clone());
        ready(())
    }

    /// In memory the lease never expires: if this node dies, its memory goes with it.
    fn claim(&self, max: usize, _lease: Duration) -> StoreFuture<'_, Vec<Job>> {
        let now = now_ms();
        let mut m = self.0.lock();
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
        ready(jobs)
    }

    fn complete<'a>(&'a self, job: &'a Job) -> StoreFuture<'a, ()> {
        self.0.lock().leased.remove(&job.id);
        ready(())
    }

    fn depth(&self) -> StoreFuture<'_, usize> {
        let m = self.0.lock();
        ready(m.queue.len() + m.leased.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64) -> Job {
        Job {
            id,
            app: "1".into(),
            targets: vec![0],
            events: vec![serde_json::json!({"name": "channel_occupied"})],
            first_due_ms: 0,
            attempts: 0,
            pending_key: None,
        }
    }

    #[tokio::test]
    async fn sets_count_and_report_each_transition_once() {
        let store = Store::memory();
        assert_eq!(store.add("s", "a").await, Ok(Some(1)));
        assert_eq!(store.add("s", "a").await, Ok(None));
        assert_eq!(store.add("s", "b").await, Ok(Some(2)));
        assert_eq!(store.remove("s", "a").await, Ok(Some(1)));
        assert_eq!(store.remove("s", "a").await, Ok(None));
        assert_eq!(store.remove("s", "b").await, Ok(Some(0)));
        assert_eq!(store.remove("s", "b").await, Ok(None));
    }

    #[tokio::test]
    async fn flags_are_set_once_and_taken_once() {
        let store = Store::memory();
        assert_eq!(store.set_once("f", Duration::from_secs(60)).await, Ok(true));
        assert_eq!(
            store.set_once("f", Duration::from_secs(60)).await,
            Ok(false)
        );
        assert_eq!(store.take("f").await, Ok(true));
        assert_eq!(store.take("f").await, Ok(false));
        assert_eq!(store.set_once("gone", Duration::ZERO).await, Ok(true));
        assert_eq!(store.take("gone").await, Ok(false), "expired");
    }

    #[tokio::test]
    async fn only_due_jobs_are_claimed_and_completed_ones_leave_the_queue() {
        let store = Store::memory();
        let now = now_ms();
        store.enqueue(&job(1), now).await.unwrap();
        store.enqueue(&job(2), now + 60_000).await.unwrap();
        assert_eq!(store.depth().await, Ok(2));
        let claimed = store.claim(10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(claimed, vec![job(1)]);
        assert_eq!(store.depth().await, Ok(2), "a claimed job is still counted");
        store.complete(&claimed[0]).await.unwrap();
        assert_eq!(store.depth().await, Ok(1));
        assert!(store
            .claim(10, Duration::from_secs(5))
            .await
            .unwrap()
            .is_empty());
    }
}
