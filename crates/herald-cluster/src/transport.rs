//! The transport trait: the few operations the cluster protocol needs from an engine.
//!
//! A transport moves opaque bytes; it knows nothing of apps, channels or nodes. Everything it hands
//! back is untrusted: the protocol validates it (`wire.rs`). Adding an engine is one file that
//! implements [`Transport`], plus its configuration entry in herald-server.
//!
//! Invariant: a transport never blocks a caller on anything but its own IO, and never panics on
//! what it reads.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

/// A position in an ordered log: `ms-seq`, the shape of a Redis Stream id. Positions of one log
/// only grow; `Position::START` is before every entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub ms: u64,
    pub seq: u64,
}

impl Position {
    /// Before the first entry of every log.
    pub const START: Position = Position { ms: 0, seq: 0 };
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for Position {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Position, TransportError> {
        let invalid = || TransportError::Invalid("log position");
        let (ms, seq) = s.split_once('-').ok_or_else(invalid)?;
        Ok(Position {
            ms: ms.parse().map_err(|_| invalid())?,
            seq: seq.parse().map_err(|_| invalid())?,
        })
    }
}

/// One message for the bus, and optionally a value to keep for nodes that start later.
#[derive(Debug, Clone)]
pub struct Outgoing {
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

/// A live subscription to the bus: every message published after `subscribe` returned, in the
/// bus's order, until the stream ends. The end of the stream is the disconnection: messages may
/// have been missed from then until the next successful `subscribe`.
pub type Subscription = BoxStream<'static, Bytes>;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The engine cannot be reached or refused the operation; retrying later may work.
    #[error("transport unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The engine answered something that does not have the expected shape.
    #[error("invalid {0} from the transport")]
    Invalid(&'static str),
}

impl TransportError {
    pub fn unavailable(err: impl std::error::Error + Send + Sync + 'static) -> TransportError {
        TransportError::Unavailable(Box::new(err))
    }
}

/// How nodes reach each other: a bus everyone hears in one order, and ordered logs.
///
/// Connection state is explicit: a successful [`Transport::subscribe`] is "connected", the end of
/// its stream is "disconnected". The protocol resyncs on every connect; an ordered-log consumer
/// can read what it missed from the log between the two.
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Sends `batch` to every subscriber of the bus (this node's own included), in order, and
    /// stores each `keep`. Fire-and-forget: the bus does not remember messages.
    ///
    /// # Errors
    /// The engine is unreachable; nothing, or only a prefix of the batch, was sent.
    fn publish<'a>(&'a self, batch: &'a [Outgoing]) -> BoxFuture<'a, Result<(), TransportError>>;

    /// Subscribes to the bus. Resolves once subscribed: nothing published after that is missed
    /// until the stream ends.
    ///
    /// # Errors
    /// The engine is unreachable or refused the subscription.
    fn subscribe(&self) -> BoxFuture<'_, Result<Subscription, TransportError>>;

    /// Appends `entry` to the ordered log `log`, keeping at most about `max_len` entries, and
    /// returns its position. Every reader sees the entries of a log in one order.
    ///
    /// # Errors
    /// The engine is unreachable; the entry was not appended (or it is unknown whether it was).
    fn append<'a>(
        &'a self,
        log: &'a str,
        entry: Bytes,
        max_len: usize,
    ) -> BoxFuture<'a, Result<Position, TransportError>>;

    /// Reads up to `max` entries of `log` after `after`, oldest first. Entries trimmed away are
    /// not returned: a reader notices a gap by comparing positions.
    ///
    /// # Errors
    /// The engine is unreachable or answered something malformed.
    fn read<'a>(
        &'a self,
        log: &'a str,
        after: Position,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<(Position, Bytes)>, TransportError>>;

    /// Every kept value that has not expired, as `(key, value)`.
    ///
    /// # Errors
    /// The engine is unreachable.
    fn kept(&self) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, TransportError>>;
}

/// The transport chosen from configuration at run time.
impl Transport for Box<dyn Transport> {
    fn publish<'a>(&'a self, batch: &'a [Outgoing]) -> BoxFuture<'a, Result<(), TransportError>> {
        (**self).publish(batch)
    }

    fn subscribe(&self) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        (**self).subscribe()
    }

    fn append<'a>(
        &'a self,
        log: &'a str,
        entry: Bytes,
        max_len: usize,
    ) -> BoxFuture<'a, Result<Position, TransportError>> {
        (**self).append(log, entry, max_len)
    }

    fn read<'a>(
        &'a self,
        log: &'a str,
        after: Position,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<(Position, Bytes)>, TransportError>> {
        (**self).read(log, after, max)
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
