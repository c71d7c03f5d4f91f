//! The in-process transport: several nodes in one process sharing a [`MemoryHub`].
//!
//! The hub plays Redis's part for tests and embedded use: one bus heard in one order by every
//! subscriber, a `Vec` per ordered log, and the kept values. `stop` and `start` simulate an outage
//! that loses everything, as a Redis restart without persistence does.
//!
//! Invariant: a publish never waits for a subscriber; each subscriber's queue is unbounded, which
//! is acceptable only because every subscriber is an in-process task draining it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::transport::{Kept, Outgoing, Position, Subscription, Transport, TransportError};

/// A bus and its logs shared by the nodes of one process. Cloning shares the hub.
#[derive(Debug, Clone, Default)]
pub struct MemoryHub(Arc<Mutex<Hub>>);

#[derive(Debug, Default)]
struct Hub {
    /// Set while the hub is "down": every operation fails.
    down: bool,
    subscribers: Vec<mpsc::UnboundedSender<Bytes>>,
    logs: HashMap<String, Log>,
    kept: HashMap<String, Kept>,
}

#[derive(Debug, Default)]
struct Log {
    /// The last position handed out; positions are `0-n`, `n` from 1.
    last: u64,
    entries: std::collections::VecDeque<(Position, Bytes)>,
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
        MemoryTransport { hub: self.clone() }
    }

    /// Simulates an outage: every subscription ends, every operation fails, and everything the
    /// hub held is lost.
    pub fn stop(&self) {
        let mut hub = self.0.lock();
        *hub = Hub {
            down: true,
            ..Hub::default()
        };
    }

    /// Ends an outage: subscribing works again, on an empty hub.
    pub fn start(&self) {
        self.0.lock().down = false;
    }

    fn with<T>(&self, f: impl FnOnce(&mut Hub) -> T) -> Result<T, TransportError> {
        let mut hub = self.0.lock();
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
}

impl Transport for MemoryTransport {
    fn publish<'a>(&'a self, batch: &'a [Outgoing]) -> BoxFuture<'a, Result<(), TransportError>> {
        let res = self.hub.with(|hub| {
            for out in batch {
                hub.subscribers
                    .retain(|tx| tx.send(out.message.clone()).is_ok());
                if let Some(kept) = &out.keep {
                    hub.kept.insert(kept.key.clone(), kept.clone());
                }
            }
        });
        async move { res }.boxed()
    }

    fn subscribe(&self) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        let res = self.hub.with(|hub| {
            let (tx, rx) = mpsc::unbounded_channel();
            hub.subscribers.push(tx);
            let stream: Subscription =
                Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|m| (m, rx))
                }));
            stream
        });
        async move { res }.boxed()
    }

    fn append<'a>(
        &'a self,
        log: &'a str,
        entry: Bytes,
        max_len: usize,
    ) -> BoxFuture<'a, Result<Position, TransportError>> {
        let res = self.hub.with(|hub| {
            let log = hub.logs.entry(log.to_owned()).or_default();
            log.last += 1;
            let position = Position {
                ms: 0,
                seq: log.last,
            };
            log.entries.push_back((position, entry));
            while log.entries.len() > max_len {
                log.entries.pop_front();
            }
            position
        });
        async move { res }.boxed()
    }

    fn read<'a>(
        &'a self,
        log: &'a str,
        after: Position,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<(Position, Bytes)>, TransportError>> {
        let res = self.hub.with(|hub| {
            hub.logs.get(log).map_or_else(Vec::new, |log| {
                log.entries
                    .iter()
                    .filter(|(position, _)| *position > after)
                    .take(max)
                    .cloned()
                    .collect()
            })
        });
        async move { res }.boxed()
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
            message: Bytes::from_static(text.as_bytes()),
            keep: None,
        }
    }

    #[tokio::test]
    async fn every_subscriber_hears_the_bus_in_one_order() {
        let hub = MemoryHub::new();
        let (a, b) = (hub.transport(), hub.transport());
        let mut on_a = a.subscribe().await.unwrap();
        let mut on_b = b.subscribe().await.unwrap();
        a.publish(&[message("1"), message("2")]).await.unwrap();
        b.publish(&[message("3")]).await.unwrap();
        for sub in [&mut on_a, &mut on_b] {
            for want in ["1", "2", "3"] {
                assert_eq!(sub.next().await.unwrap(), want);
            }
        }
    }

    #[tokio::test]
    async fn a_stop_ends_subscriptions_and_loses_everything() {
        let hub = MemoryHub::new();
        let t = hub.transport();
        let mut sub = t.subscribe().await.unwrap();
        t.append("log", Bytes::from_static(b"x"), 10).await.unwrap();
        hub.stop();
        assert!(sub.next().await.is_none(), "the subscription ended");
        assert!(t.publish(&[message("lost")]).await.is_err());
        assert!(t.subscribe().await.is_err());
        hub.start();
        assert!(t.read("log", Position::START, 10).await.unwrap().is_empty());
        let mut sub = t.subscribe().await.unwrap();
        t.publish(&[message("back")]).await.unwrap();
        assert_eq!(sub.next().await.unwrap(), "back");
    }

    #[tokio::test]
    async fn logs_append_in_order_read_after_a_position_and_trim() {
        let t = MemoryHub::new().transport();
        let mut positions = Vec::new();
        for i in 0..5u8 {
            positions.push(t.append("a", Bytes::from(vec![i]), 3).await.unwrap());
        }
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
        let all = t.read("a", Position::START, 10).await.unwrap();
        let bytes: Vec<u8> = all.iter().map(|(_, b)| b[0]).collect();
        assert_eq!(bytes, [2, 3, 4], "trimmed to the last 3");
        let after = t.read("a", positions[2], 1).await.unwrap();
        assert_eq!(after, vec![(positions[3], Bytes::from(vec![3]))]);
        assert!(t.read("b", Position::START, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn kept_values_replace_each_other_and_expire() {
        let t = MemoryHub::new().transport();
        let keep = |key: &str, value: &'static str, expires_ms| Outgoing {
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
