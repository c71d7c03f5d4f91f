//! The broker's counters, which the server exports as metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters the server exports as metrics.
#[derive(Debug, Default)]
pub struct BrokerStats {
    pub publishes: AtomicU64,
    pub receives: AtomicU64,
    pub reconnects: AtomicU64,
    pub errors: AtomicU64,
    /// Not sent because the transport was unreachable or the queue was full.
    pub dropped_unsent: AtomicU64,
    /// Received but rejected: not valid JSON or failing validation.
    pub dropped_invalid: AtomicU64,
    /// Nodes declared dead and removed.
    pub nodes_reaped: AtomicU64,
    /// Publishes refused (503) because the bus was down or its queue full.
    pub publishes_refused: AtomicU64,
    /// Entries read from the log after a reconnect (what pub/sub would have lost).
    pub gap_entries_filled: AtomicU64,
    /// Gaps the log could not fill (trimmed, or the engine lost its data).
    pub gaps_lost: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
