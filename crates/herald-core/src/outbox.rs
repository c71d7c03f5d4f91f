//! The bounded per-connection send queue: the only way anything reaches a socket.
//!
//! Producers (broadcasts, presence, replies) push without blocking; the socket task takes every
//! queued frame at once and writes them with one flush. A queue over its byte cap marks the
//! connection as a slow consumer, to be closed with 4100, instead of growing without bound or
//! slowing the producer down.
//!
//! Invariant: no producer ever awaits; `push` is a short critical section with no IO.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use herald_protocol::CloseCode;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// One text frame, shared by every recipient of a broadcast.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Invariant: valid UTF-8 JSON text (built from a `String`).
    pub text: Bytes,
    /// When the publish was accepted, for the delivery latency histogram.
    pub published_at: Option<Instant>,
}

impl Frame {
    pub fn new(text: String) -> Frame {
        Frame {
            text: Bytes::from(text),
            published_at: None,
        }
    }

    pub fn published(text: String, at: Instant) -> Frame {
        Frame {
            text: Bytes::from(text),
            published_at: Some(at),
        }
    }
}

/// Why a connection ended, as counted in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    ClientClose,
    PingTimeout,
    SlowConsumer,
    Drain,
    Limit,
    Error,
    Terminated,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientClose => "client_close",
            DisconnectReason::PingTimeout => "ping_timeout",
            DisconnectReason::SlowConsumer => "slow_consumer",
            DisconnectReason::Drain => "drain",
            DisconnectReason::Limit => "limit",
            DisconnectReason::Error => "error",
            DisconnectReason::Terminated => "terminated",
        }
    }
}

/// A request, from outside the socket task, to close the connection.
#[derive(Debug, Clone)]
pub struct CloseRequest {
    pub code: CloseCode,
    pub message: &'static str,
    pub reason: DisconnectReason,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Frame>,
    bytes: usize,
    close: Option<CloseRequest>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    notify: Notify,
    max_bytes: usize,
}

/// A handle to one connection's queue; cloning shares it.
#[derive(Debug, Clone)]
pub struct Outbox(Arc<Inner>);

/// The frame was not queued because the connection is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// This push went over the cap: the connection is now closing as a slow consumer.
    Overflow,
    /// The connection was already closing.
    Closed,
}

impl Outbox {
    pub fn new(max_bytes: usize) -> Outbox {
        Outbox(Arc::new(Inner {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            max_bytes,
        }))
    }

    /// Queues a frame without blocking.
    ///
    /// # Errors
    /// `Overflow` when the queue is over its byte cap (the connection will be closed with 4100),
    /// `Closed` when a close was already requested.
    pub fn push(&self, frame: Frame) -> Result<(), PushError> {
        let mut state = self.0.state.lock();
        if state.close.is_some() {
            return Err(PushError::Closed);
        }
        if state.bytes + frame.text.len() > self.0.max_bytes {
            state.frames.clear();
            state.bytes = 0;
            state.close = Some(CloseRequest {
                code: CloseCode::OverCapacity,
                message: "Slow consumer: too many queued messages",
                reason: DisconnectReason::SlowConsumer,
            });
            drop(state);
            self.0.notify.notify_one();
            return Err(PushError::Overflow);
        }
        state.bytes += frame.text.len();
        state.frames.push_back(frame);
        drop(state);
        self.0.notify.notify_one();
        Ok(())
    }

    /// Asks the socket task to close the connection after what is already queued. The first
    /// request wins.
    pub fn close(&self, request: CloseRequest) {
        let mut state = self.0.state.lock();
        if state.close.is_none() {
            state.close = Some(request);
        }
        drop(state);
        self.0.notify.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        self.0.state.lock().close.is_some()
    }

    /// Takes every queued frame, and returns a pending close request, if any. A slow-consumer
    /// close discards the queue; other closes keep it so it is written first.
    ///
    /// The queue's buffer moves out with the frames, so an idle connection holds no queue
    /// memory at all (one small allocation per wake-up is the price).
    pub fn take(&self) -> (VecDeque<Frame>, Option<CloseRequest>) {
        let mut state = self.0.state.lock();
        state.bytes = 0;
        (std::mem::take(&mut state.frames), state.close.clone())
    }

    /// Waits until something was pushed or a close was requested since the last `take`.
    pub async fn changed(&self) {
        self.0.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_as_slow_consumer_and_drops_queue() {
        let outbox = Outbox::new(10);
        assert_eq!(outbox.push(Frame::new("12345".into())), Ok(()));
        assert_eq!(
            outbox.push(Frame::new("123456".into())),
            Err(PushError::Overflow)
        );
        assert_eq!(outbox.push(Frame::new("1".into())), Err(PushError::Closed));
        let (batch, close) = outbox.take();
        let close = close.expect("close requested");
        assert!(batch.is_empty());
        assert_eq!(close.reason, DisconnectReason::SlowConsumer);
        assert_eq!(close.code, CloseCode::OverCapacity);
    }

    #[test]
    fn take_drains_in_order_and_resets_budget() {
        let outbox = Outbox::new(10);
        outbox.push(Frame::new("aaaa".into())).unwrap();
        outbox.push(Frame::new("bbbb".into())).unwrap();
        let (batch, close) = outbox.take();
        assert!(close.is_none());
        assert_eq!(
            batch.iter().map(|f| &f.text[..]).collect::<Vec<_>>(),
            [b"aaaa", b"bbbb"]
        );
        outbox.push(Frame::new("cccccccc".into())).unwrap();
    }
}
