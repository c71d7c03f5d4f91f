//! What goes onto the bus: messages encoded for their shard and queued for the publisher task
//! (`tasks.rs`), which hands them to the transport. Nothing here waits: a full queue drops the
//! message and counts it, and an announcement lost that way marks the state for a resync.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::transport::{Kept, Outgoing, Transport};
use crate::wire::{self, BusMessage};

use super::stats::bump;
use super::Inner;

/// A message waiting for the transport, and who waits for it to be on the log.
pub(super) struct Queued {
    /// `None` for a barrier: only its `ack`, once everything queued before it was handled.
    pub(super) out: Option<Outgoing>,
    pub(super) ack: Option<oneshot::Sender<bool>>,
}

impl<T: Transport> Inner<T> {
    pub(super) fn encode(&self, message: &BusMessage, keep: Option<Kept>) -> Option<Outgoing> {
        match serde_json::to_vec(message) {
            Ok(bytes) => Some(Outgoing {
                shard: self.shard_for(message),
                message: Bytes::from(bytes),
                keep,
            }),
            Err(err) => {
                tracing::error!(%err, "could not encode a bus message");
                None
            }
        }
    }

    /// Sends a message whose loss needs no repair (monitor traffic): a full queue drops it
    /// (counted), without marking the state for a resync.
    pub(super) fn send_best_effort(&self, message: &BusMessage) {
        self.enqueue(message, None);
    }

    /// Sends a message; if the queue is full it is dropped (counted) and the state marked for a
    /// resync, which repairs what the loss left out.
    pub(super) fn send(&self, message: &BusMessage, keep: Option<Kept>) {
        if !self.enqueue(message, keep) {
            self.state_dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Queues `message` for the publisher; false when the queue was full (counted as unsent).
    fn enqueue(&self, message: &BusMessage, keep: Option<Kept>) -> bool {
        let Some(out) = self.encode(message, keep) else {
            return true;
        };
        let queued = Queued {
            out: Some(out),
            ack: None,
        };
        if self.tx.try_send(queued).is_err() {
            bump(&self.stats.dropped_unsent, 1);
            return false;
        }
        true
    }

    /// Publishes this node's full state for every app.
    pub(super) fn publish_state(&self) {
        let me = self.node.id();
        // Snapshot and enqueue under the order lock: no announcement can slip in between.
        let _order = self.order.lock();
        for app in self.node.apps() {
            let state = wire::WireState::from_local(&app.local_state());
            self.send(
                &BusMessage::State {
                    node: me,
                    app: app.id().to_owned(),
                    state,
                },
                None,
            );
        }
    }

    /// Publishes this node's full state and asks every other node for theirs.
    pub(super) fn resync(&self) {
        self.publish_state();
        self.send(
            &BusMessage::SyncRequest {
                node: self.node.id(),
                target: None,
            },
            None,
        );
    }
}
