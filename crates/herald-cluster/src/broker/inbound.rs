//! What reading the bus does to this node: each entry a shard reader hands over (`handle`:
//! decoded with validation, then applied, answered or dropped and counted), a gap the log could
//! not fill, the readers' connection state, and peers that fell silent (`reap`).
//!
//! Invariant: an entry is untrusted. What does not decode or validate is dropped and counted in
//! `dropped_invalid`, never a panic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use herald_core::Position;

use crate::transport::Transport;
use crate::wire::{self, BusMessage, Placement};

use super::stats::bump;
use super::{Inner, ShardBy};

/// Largest bus message accepted from the transport.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// One shard reader's progress through its backfill.
pub(super) struct CatchUp<'a> {
    pub(super) shard: usize,
    /// This shard's mark came back.
    pub(super) done: &'a mut bool,
    /// Shards of the node whose mark came back.
    pub(super) count: &'a AtomicUsize,
}

impl CatchUp<'_> {
    fn mark(&mut self) {
        if !*self.done {
            *self.done = true;
            self.count.fetch_add(1, Ordering::AcqRel);
            tracing::debug!(
                shard = self.shard,
                "read the shard's log up to this node's start"
            );
        }
    }
}

impl<T: Transport> Inner<T> {
    pub(super) fn handle(&self, position: Position, payload: &[u8], caught_up: &mut CatchUp<'_>) {
        bump(&self.stats.receives, 1);
        let backfill = position.ms < self.started_ms;
        if payload.len() > MAX_MESSAGE_BYTES {
            bump(&self.stats.dropped_invalid, 1);
            return;
        }
        let message: BusMessage = match serde_json::from_slice(payload) {
            Ok(message) => message,
            Err(err) => {
                bump(&self.stats.dropped_invalid, 1);
                tracing::warn!(%err, "dropping a bus message that does not parse");
                return;
            }
        };
        let me = self.node.id();
        let from = message.node();
        if let BusMessage::CaughtUp { node, .. } = message {
            if node == me {
                caught_up.mark();
            }
            return;
        }
        if backfill {
            // Before this node started: only what replay needs (events, departures); the state
            // of other nodes comes from the resync.
            if matches!(
                message,
                BusMessage::Event { .. } | BusMessage::Departed { .. } | BusMessage::Resumed { .. }
            ) {
                if let Err(err) = wire::apply(&self.node, message, Placement::Backfill(position)) {
                    bump(&self.stats.dropped_invalid, 1);
                    tracing::debug!(%err, "dropping an invalid bus message");
                }
            }
            return;
        }
        if from == me {
            // Our own logged events are delivered here, in the log's order like everyone's;
            // everything else of ours was applied when it happened.
            let ours = matches!(
                &message,
                BusMessage::Event {
                    ephemeral: false,
                    ..
                }
            );
            if ours {
                match wire::apply(&self.node, message, Placement::Live(position)) {
                    Ok(applied) => self.delivered(applied),
                    Err(err) => {
                        bump(&self.stats.dropped_invalid, 1);
                        tracing::warn!(%err, "dropping an invalid bus message");
                    }
                }
            }
            return;
        }
        let known = self.peers.lock().insert(from, Instant::now()).is_some();
        if !known
            && !matches!(
                message,
                BusMessage::State { .. } | BusMessage::SyncRequest { .. }
            )
        {
            // A node we had not heard from (new, or one we declared dead that was only slow):
            // get its full state instead of trusting that we saw every delta.
            tracing::info!(node = from, "new peer on the bus");
            self.send(
                &BusMessage::SyncRequest {
                    node: me,
                    target: Some(from),
                },
                None,
            );
        }
        if let BusMessage::SyncRequest { target, .. } = &message {
            if target.is_none_or(|t| t == me) {
                self.publish_state();
            }
            return;
        }
        let state_of = match &message {
            BusMessage::State { app, .. } => Some(app.clone()),
            _ => None,
        };
        match wire::apply(&self.node, message, Placement::Live(position)) {
            Ok(applied) => {
                if applied.invalid > 0 {
                    bump(&self.stats.dropped_invalid, applied.invalid as u64);
                }
                match state_of {
                    Some(app) if !applied.removed.is_empty() => {
                        self.hooks.node_gone(&app, applied.removed);
                    }
                    _ => self.delivered(applied),
                }
            }
            Err(err) => {
                bump(&self.stats.dropped_invalid, 1);
                tracing::warn!(node = from, %err, "dropping an invalid bus message");
            }
        }
    }

    fn delivered(&self, applied: wire::Applied) {
        if let Some((app, delivery)) = applied.delivered {
            self.hooks.delivered(&app, delivery);
        }
    }

    pub(super) fn reap(&self) {
        let connected_for = self.connected_since.lock().map(|t| t.elapsed());
        // Only judge others while we can hear them, and not before they had time to speak.
        if connected_for.is_none_or(|d| d < self.settings.node_timeout) {
            return;
        }
        let dead: Vec<u64> = {
            let mut peers = self.peers.lock();
            let dead: Vec<u64> = peers
                .iter()
                .filter(|(_, seen)| seen.elapsed() > self.settings.node_timeout)
                .map(|(id, _)| *id)
                .collect();
            for id in &dead {
                peers.remove(id);
            }
            dead
        };
        for id in dead {
            tracing::warn!(
                node = id,
                "node stopped heartbeating: removing its connections"
            );
            bump(&self.stats.nodes_reaped, 1);
            self.node.forget_peer(id);
            for app in self.node.apps() {
                let removed = app.forget_node(id);
                if !removed.is_empty() {
                    self.hooks.node_gone(app.id(), removed);
                }
            }
        }
    }

    /// A shard is being read again: once every shard is, resync state both ways and load the
    /// cache channels.
    pub(super) async fn connected(&self, first: &mut bool) {
        if !*first {
            bump(&self.stats.reconnects, 1);
        }
        *first = false;
        let up = self.shards_up.fetch_add(1, Ordering::AcqRel) + 1;
        if up < self.shards() {
            return;
        }
        tracing::info!(transport = ?self.transport, "reading the cluster bus");
        *self.connected_since.lock() = Some(Instant::now());
        self.resync();
        self.load_caches().await;
    }

    pub(super) fn disconnected(&self) {
        self.shards_up.fetch_sub(1, Ordering::AcqRel);
        *self.connected_since.lock() = None;
    }

    /// Whether every shard's reader read back its backfill (`ClusterBroker::is_caught_up`).
    pub(super) fn is_caught_up(&self) -> bool {
        self.shards_caught_up.load(Ordering::Acquire) >= self.shards()
    }

    /// The log could not give us everything after where we stopped: tell every app's
    /// subscribers on this node, and let no replay span the hole.
    pub(super) fn gap(&self, shard: usize) {
        bump(&self.stats.gaps_lost, 1);
        let mut told = 0;
        for app in self.node.apps() {
            if self.shard(app.id(), None) == shard || self.settings.shard_by == ShardBy::Channel {
                told += app.lose_history();
                self.hooks
                    .log_lost(app.id(), || app.local_state().subscriptions);
            }
        }
        tracing::warn!(
            shard,
            told,
            "events on the cluster bus were lost (trimmed or Redis lost its data): subscribers were sent herald:resume_failed"
        );
    }

    /// Loads the cache channels' last events, for a node that starts after they were published.
    async fn load_caches(&self) {
        match self.transport.kept().await {
            Ok(entries) => {
                for (key, value) in entries {
                    let applied = std::str::from_utf8(&value)
                        .map_err(|_| wire::WireError::Invalid("cache value"))
                        .and_then(|value| wire::apply_cache(&self.node, &key, value));
                    if applied.is_err() {
                        bump(&self.stats.dropped_invalid, 1);
                    }
                }
            }
            Err(err) => tracing::warn!(%err, "could not load cache channels"),
        }
    }
}
