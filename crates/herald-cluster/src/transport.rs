//! The transport trait: the few operations the cluster protocol needs from an engine.
//!
//! A transport moves opaque bytes; it knows nothing of apps, channels or nodes. Everything it hands
//! back is untrusted: the protocol validates it (`wire.rs`). Adding an engine is one file that
//! implements [`Transport`], plus its configuration entry in herald-server.
//!
//! Invariant: a transport never blocks a caller on anything but its own IO, and never panics on
//! what it reads.

use std::fmt;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

pub use herald_core::Position;

/// One message for the bus, and optionally a value to keep for nodes that start later.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Which of the bus's logs carries it (`0..shards`).
    pub shard: usize,
    pub message: Bytes,
    pub keep: Option<Kept>,
}

/// A value kept under `key` (the last event of a cache channel), replaced by the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub key: String,
    pub value: Bytes,
    /// Milliseconds since the Unix epoch after which the value is dropped.
    pub expires_ms: u64,
}

/// What reading one of the bus's logs yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusItem {
    /// The next entry of the log, in the log's order.
    Entry(Position, Bytes),
    /// Entries after the position the read started from are gone (trimmed, or the engine lost
    /// its data): they cannot be delivered. Reading goes on with what is there.
    Gap,
}

/// A live read of one of the bus's logs, from where `subscribe` was asked to start, in order,
/// until the stream ends. The end of the stream is the disconnection: subscribing again from the
/// last position read misses nothing the log still holds.
pub type Subscription = BoxStream<'static, BusItem>;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The engine cannot be reached or refused the operation; retrying later may work.
    #[error("transport unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The engine answered something that does not have the expected shape.
    #[error("invalid {0} from the transport")]
    Invalid(&'static str),
}

impl From<herald_core::history::InvalidPosition> for TransportError {
    fn from(_: herald_core::history::InvalidPosition) -> TransportError {
        TransportError::Invalid("log position")
    }
}

impl TransportError {
    pub fn unavailable(err: impl std::error::Error + Send + Sync + 'static) -> TransportError {
        TransportError::Unavailable(Box::new(err))
    }
}

/// How nodes reach each other: a bus made of ordered logs (shards), which every node reads in
/// full and in order, and the kept values.
///
/// The bus is a log, not fire-and-forget messaging: a node that was disconnected, or slow,
/// resumes reading where it stopped and gets everything the log still holds; what it cannot get
/// is reported as a [`BusItem::Gap`]. A successful `publish` means the messages are on the log.
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Appends each message of `batch` to its shard's log, in order, and stores each `keep`;
    /// returns each message's position.
    ///
    /// # Errors
    /// The engine is unreachable; nothing, or only a prefix of the batch, was appended (which
    /// prefix is unknown).
    fn publish<'a>(
        &'a self,
        batch: &'a [Outgoing],
    ) -> BoxFuture<'a, Result<Vec<Position>, TransportError>>;

    /// Reads shard `shard`'s log after `after` (`None`: from its current end) and then as it
    /// grows. Resolves once reading has started.
    ///
    /// # Errors
    /// The engine is unreachable or refused the read.
    fn subscribe(
        &self,
        shard: usize,
        after: Option<Position>,
    ) -> BoxFuture<'_, Result<Subscription, TransportError>>;

    /// Every kept value that has not expired, as `(key, value)`.
    ///
    /// # Errors
    /// The engine is unreachable.
    fn kept(&self) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, TransportError>>;
}

/// The transport chosen from configuration at run time.
impl Transport for Box<dyn Transport> {
    fn publish<'a>(
        &'a self,
        batch: &'a [Outgoing],
    ) -> BoxFuture<'a, Result<Vec<Position>, TransportError>> {
        (**self).publish(batch)
    }

    fn subscribe(
        &self,
        shard: usize,
        after: Option<Position>,
    ) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        (**self).subscribe(shard, after)
    }

    fn kept(&self) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, TransportError>> {
        (**self).kept()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_and_round_trip() {
        let a: Position = "5-1".parse().unwrap();
        let b: Position = "5-2".parse().unwrap();
        let c: Position = "6-0".parse().unwrap();
        assert!(Position::START < a && a < b && b < c);
        assert_eq!(c.to_string(), "6-0");
        for bad in [
            "",
            "5",
            "-",
            "a-1",
            "1-b",
            "1-2-3",
            "99999999999999999999-0",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
    }
}
