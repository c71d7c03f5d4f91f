//! Liveness, whatever the transport: one sweep for the node pings the connections that went
//! silent and closes those that leave the ping unanswered (4201), instead of a timer in every
//! connection's task. It works on outboxes only (each carries its connection's liveness clock:
//! last heard from, ping outstanding), so every transport's connections are swept alike; a
//! transport touches the clock on each message it reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::outbox::Liveness;
use herald_core::Outbox;

use crate::state::Shared;

/// Most pings a node sends a second only to confirm what its connections received (issue 12):
/// each is a message out and one in, and at 5 s apart 57,000 connections receiving events
/// would cost 11,400 of each a second (BENCHMARKS.md). Below 2,500 connections receiving events
/// every one is confirmed every 5 s; above, each less often, in turn.
const CONFIRMATIONS_PER_SECOND: u32 = 500;

/// Pings every connection that has been silent for `activity_timeout` and closes those that
/// leave the ping unanswered for `pong_timeout` (4201). One sweep for the node instead of a timer
/// in every socket task; the server's `serve` stops it once the drain is over.
pub async fn sweep_liveness(shared: Arc<Shared>) {
    let activity = shared.config().activity_timeout;
    let pong = shared.config().pong_timeout;
    let period = (activity.min(pong) / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    // Each connection is checked once a period, but the pass is spread over SLICES ticks: the
    // pings it sends (a connection that was sent frames is pinged every 5 s to confirm them)
    // and the pongs that come back would otherwise arrive in one burst per period for every
    // connection that started together, delaying deliveries behind thousands of reads.
    const SLICES: usize = 10;
    let mut tick = tokio::time::interval(period / SLICES as u32);
    let confirmations_per_tick = (f64::from(CONFIRMATIONS_PER_SECOND)
        * (period / SLICES as u32).as_secs_f64())
    .ceil() as u32;
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outboxes: Vec<Outbox> = Vec::new();
    let mut slice = 0;
    let mut last_monitor_tick = Instant::now();
    loop {
        tick.tick().await;
        // Once a second: the monitors' upkeep (watchers that left, rate samples), and channel
        // histories past their window, so an idle channel costs nothing after it.
        if last_monitor_tick.elapsed() >= Duration::from_millis(900) {
            last_monitor_tick = Instant::now();
            shared.node().tick_monitors();
            shared.node().sweep_history();
        }
        if slice == 0 {
            // Copied out once a period, so that connects and disconnects never wait for a pass.
            outboxes.clear();
            outboxes.extend(shared.node().outboxes());
        }
        let now = herald_core::outbox::clock_ms();
        // The echo mode sends nothing of its own: no pings.
        if !shared.config().websocket_echo {
            let mut confirmations = confirmations_per_tick;
            for outbox in outboxes.iter().skip(slice).step_by(SLICES) {
                if outbox.check_liveness(now, activity, pong, confirmations > 0)
                    == Liveness::ConfirmSent
                {
                    confirmations -= 1;
                }
            }
        }
        slice = (slice + 1) % SLICES;
        if slice == 0 {
            outboxes.clear();
        }
    }
}
