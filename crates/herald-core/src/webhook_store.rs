//! The seam behind webhook bookkeeping: the store in which "first subscriber anywhere", "last
//! member anywhere" and the queue of due webhook jobs are decided.
//!
//! The webhook subsystem (in herald-server) uses only this trait; its memory implementation lives
//! there, the Redis one in herald-redis, so the server never talks to Redis itself.
//!
//! Invariant: every method is one atomic decision in the store (add-and-count, remove-and-count,
//! set-if-absent, take, claim-with-lease), so with many nodes sharing one store exactly one node
//! sees each transition.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One request to make: events for some targets of one app.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WebhookJob {
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

/// A store operation that could not be carried out (the backend is unreachable or answered
/// something unexpected). The decision it was for is lost; callers count it and go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookStoreError {
    /// The backing store failed; the text says how.
    Backend(String),
}

impl fmt::Display for WebhookStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebhookStoreError::Backend(reason) => write!(f, "webhook store: {reason}"),
        }
    }
}

impl std::error::Error for WebhookStoreError {}

pub type WebhookStoreResult<T> = Result<T, WebhookStoreError>;

/// What every store method returns: a boxed future, so the trait can be used as `dyn`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = WebhookStoreResult<T>> + Send + 'a>>;

/// Webhook bookkeeping. Set and flag names are opaque strings chosen by the caller; a store may
/// namespace them (the Redis store prefixes them).
pub trait WebhookStore: Send + Sync + fmt::Debug {
    /// Adds `member` to set `set`; the new size when it was not there yet.
    fn add<'a>(&'a self, set: &'a str, member: &'a str) -> StoreFuture<'a, Option<usize>>;

    /// Removes `member` from set `set`; the new size when it was there.
    fn remove<'a>(&'a self, set: &'a str, member: &'a str) -> StoreFuture<'a, Option<usize>>;

    /// Sets flag `name` for `ttl` unless it is set; true when this call set it.
    fn set_once<'a>(&'a self, name: &'a str, ttl: Duration) -> StoreFuture<'a, bool>;

    /// Clears flag `name`; true when it was set (and not expired).
    fn take<'a>(&'a self, name: &'a str) -> StoreFuture<'a, bool>;

    /// Queues `job`, due at `due_ms` (milliseconds since the Unix epoch).
    fn enqueue<'a>(&'a self, job: &'a WebhookJob, due_ms: u64) -> StoreFuture<'a, ()>;

    /// Takes up to `max` due jobs, leased for `lease`: if this node dies before completing them,
    /// they become due again for another node.
    fn claim(&self, max: usize, lease: Duration) -> StoreFuture<'_, Vec<WebhookJob>>;

    /// Removes a claimed job for good (`job` exactly as it was claimed).
    fn complete<'a>(&'a self, job: &'a WebhookJob) -> StoreFuture<'a, ()>;

    /// Jobs waiting, due or not (claimed ones included).
    fn depth(&self) -> StoreFuture<'_, usize>;
}

/// Milliseconds since the Unix epoch: the clock of due times and leases.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
