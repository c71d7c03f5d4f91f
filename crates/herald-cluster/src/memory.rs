//! The in-process transport: several nodes in one process sharing a [`MemoryHub`].
//!
//! The hub plays Redis's part for tests and embedded use: the bus's logs (one per shard, bounded
//! like `XADD … MAXLEN`), read in one order by every node, and the kept values. `stop` and
//! `start` simulate an outage that loses everything, as a Redis restart without persistence does;
//! a reader that resumes across it is told of the [`BusItem::Gap`].
//!
//! Invariant: a publish never waits for a reader; readers are woken through one `Notify`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::transport::{
    BusItem, Kept, Outgoing, Position, Subscription, Transport, TransportError,
};

/// Entries each shard's log keeps.
const MAX_LOG_LEN: usize = 100_000;

/// A bus and its logs shared by the nodes of one process. Cloning shares the hub.
#[derive(Debug, Clone, Default)]
pub struct MemoryHub(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    hub: Mutex<Hub>,
    /// Woken on every publish and every stop.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Hub {
    /// Set while the hub is "down": every operation fails.
    down: bool,
    /// Counts the outages: a reader that saw another generation lost what the hub held.
    generation: u64,
    /// The newest position ever handed out: like Redis's clock, positions keep growing across
    /// an outage, so a reader's old position is before everything appended after it.
    floor: Position,
    logs: HashMap<usize, Log>,
    kept: HashMap<String, Kept>,
}

#[derive(Debug, Default)]
struct Log {
    last: Position,
    /// The newest position trimmed away.
    trimmed: Position,
    entries: VecDeque<(Position, Bytes)>,
}

impl Log {
    fn append(&mut self, message: Bytes, floor: &mut Position) -> Position {
        let now = crate::wire::now_ms();
        self.last = self.last.max(*floor);
        let position = if now > self.last.ms {
            Position { ms: now, seq: 0 }
        } else {
            Position {
                ms: self.last.ms,
                seq: self.last.seq + 1,
            }
        };
        self.last = position;
        *floor = position;
        self.entries.push_back((position, message));
        while self.entries.len() > MAX_LOG_LEN {
            if let Some((trimmed, _)) = self.entries.pop_front() {
                self.trimmed = trimmed;
            }
        }
        position
    }

    fn after(&self, after: Position, max: usize) -> Vec<(Position, Bytes)> {
        let start = self.entries.partition_point(|(p, _)| *p <= after);
        self.entries.range(start..).take(max).cloned().collect()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the memory hub is stopped")]
struct Stopped;

impl MemoryHub {
    pub fn new() -> MemoryHub {
        MemoryHub::default()
    }

    /// A transport for one node on this hub.
    pub fn transport(&self) -> MemoryTransport {
        MemoryTransport {
            hub: self.clone(),
            seen: Arc::default(),
        }
    }

    /// Simulates an outage: every read ends, every operation fails, and everything the hub held
    /// is lost.
    pub fn stop(&self) {
        {
            let mut hub = self.0.hub.lock();
            *hub = Hub {
                down: true,
                generation: hub.generation + 1,
                floor: hub.floor,
                ..Hub::default()
            };
        }
        self.0.changed.notify_waiters();
    }

    /// Ends an outage: the hub works again, empty.
    pub fn start(&self) {
        self.0.hub.lock().down = false;
    }

    fn with<T>(&self, f: impl FnOnce(&mut Hub) -> T) -> Result<T, TransportError> {
        let mut hub = self.0.hub.lock();
        if hub.down {
            return Err(TransportError::unavailable(Stopped));
        }
        Ok(f(&mut hub))
    }
}

/// One node's handle on a [`MemoryHub`].
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    hub: MemoryHub,
    /// The hub generation this node last read, per shard.
    seen: Arc<Mutex<HashMap<usize, u64>>>,
}

impl Transport for MemoryTransport {
    fn publish<'a>(
        &'a self,
        batch: &'a [Outgoing],
    ) -> BoxFuture<'a, Result<Vec<Position>, TransportError>> {
        let res = self.hub.with(|hub| {
            let mut positions = Vec::with_capacity(batch.len());
            let Hub {
                logs,
                floor,
                kept: kept_values,
                ..
            } = hub;
            for out in batch {
                positions.push(
                    logs.entry(out.shard)
                        .or_default()
                        .append(out.message.clone(), floor),
                );
                if let Some(kept) = &out.keep {
                    kept_values.insert(kept.key.clone(), kept.clone());
                }
            }
            positions
        });
        self.hub.0.changed.notify_waiters();
        async move { res }.boxed()
    }

    fn subscribe(
        &self,
        shard: usize,
        after: Option<Position>,
    ) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        let res = self.hub.with(|hub| {
            let generation = hub.generation;
            let log = hub.logs.entry(shard).or_default();
            let previous = self.seen.lock().insert(shard, generation);
            let lost = after.is_some() && previous.is_some_and(|g| g != generation);
            let trimmed = after.is_some_and(|a| log.trimmed > a);
            let start = after.unwrap_or(log.last);
            (generation, start, lost || trimmed)
        });
        let hub = self.hub.clone();
        async move {
            let (generation, start, gap) = res?;
            let state = (hub, generation, start, gap, VecDeque::new());
            let stream: Subscription = Box::pin(futures_util::stream::unfold(
                state,
                move |(hub, generation, mut cursor, mut gap, mut queue)| async move {
                    loop {
                        if std::mem::take(&mut gap) {
                            return Some((BusItem::Gap, (hub, generation, cursor, gap, queue)));
                        }
                        if let Some((position, message)) = queue.pop_front() {
                            cursor = position;
                            let item = BusItem::Entry(position, message);
                            return Some((item, (hub, generation, cursor, gap, queue)));
                        }
                        let changed = hub.0.changed.notified();
                        {
                            let state = hub.0.hub.lock();
                            if state.down || state.generation != generation {
                                return None;
                            }
                            if let Some(log) = state.logs.get(&shard) {
                                queue.extend(log.after(cursor, 512));
                            }
                        }
                        if queue.is_empty() {
                            changed.await;
                        }
                    }
                },
            ));
            Ok(stream)
        }
        .boxed()
    }

    fn kept(&self) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, TransportError>> {
        let now = crate::wire::now_ms();
        let res = self.hub.with(|hub| {
            hub.kept.retain(|_, kept| kept.expires_ms > now);
            hub.kept
                .values()
                .map(|kept| (kept.key.clone(), kept.value.clone()))
                .collect()
        });
        async move { res }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn message(text: &'static str) -> Outgoing {
        Outgoing {
            shard: 0,
            message: Bytes::from_static(text.as_bytes()),
            keep: None,
        }
    }

    async fn next_entry(sub: &mut Subscription) -> (Position, Bytes) {
        match sub.next().await {
            Some(BusItem::Entry(position, message)) => (position, message),
            other => panic!("expected an entry, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn every_reader_hears_the_bus_in_one_order() {
        let hub = MemoryHub::new();
        let (a, b) = (hub.transport(), hub.transport());
        let mut on_a = a.subscribe(0, None).await.unwrap();
        let mut on_b = b.subscribe(0, None).await.unwrap();
        a.publish(&[message("1"), message("2")]).await.unwrap();
        b.publish(&[message("3")]).await.unwrap();
        for sub in [&mut on_a, &mut on_b] {
            for want in ["1", "2", "3"] {
                assert_eq!(next_entry(sub).await.1, want);
            }
        }
    }

    #[tokio::test]
    async fn a_reader_that_resumes_gets_what_it_missed() {
        let hub = MemoryHub::new();
        let t = hub.transport();
        let positions = t
            .publish(&[message("1"), message("2"), message("3")])
            .await
            .unwrap();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
        let mut sub = t.subscribe(0, Some(positions[0])).await.unwrap();
        assert_eq!(next_entry(&mut sub).await, (positions[1], Bytes::from("2")));
        assert_eq!(next_entry(&mut sub).await.1, "3");
    }

    #[tokio::test]
    async fn a_stop_ends_reads_and_a_resumed_read_reports_the_gap() {
        let hub = MemoryHub::new();
        let t = hub.transport();
        let mut sub = t.subscribe(0, None).await.unwrap();
        let at = t.publish(&[message("x")]).await.unwrap()[0];
        assert_eq!(next_entry(&mut sub).await.1, "x");
        hub.stop();
        assert!(sub.next().await.is_none(), "the read ended");
        assert!(t.publish(&[message("lost")]).await.is_err());
        assert!(t.subscribe(0, Some(at)).await.is_err());
        hub.start();
        let mut sub = t.subscribe(0, Some(at)).await.unwrap();
        assert_eq!(sub.next().await, Some(BusItem::Gap));
        t.publish(&[message("back")]).await.unwrap();
        assert_eq!(next_entry(&mut sub).await.1, "back");
    }

    #[tokio::test]
    async fn kept_values_replace_each_other_and_expire() {
        let t = MemoryHub::new().transport();
        let keep = |key: &str, value: &'static str, expires_ms| Outgoing {
            shard: 0,
            message: Bytes::new(),
            keep: Some(Kept {
                key: key.to_owned(),
                value: Bytes::from_static(value.as_bytes()),
                expires_ms,
            }),
        };
        let later = crate::wire::now_ms() + 60_000;
        t.publish(&[
            keep("a", "1", later),
            keep("a", "2", later),
            keep("b", "x", 1),
        ])
        .await
        .unwrap();
        assert_eq!(
            t.kept().await.unwrap(),
            vec![("a".to_owned(), Bytes::from_static(b"2"))]
        );
    }
}
