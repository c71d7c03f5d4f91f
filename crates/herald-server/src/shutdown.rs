//! Signals and the paced drain.
//!
//! On the first SIGTERM or SIGINT readiness fails at once; the node keeps serving for
//! `drain.delay` so load balancers stop sending new sockets; then it stops accepting and closes
//! its sockets with 4200 in jittered batches spread over `drain.window` (pusher-js reconnects the
//! same millisecond it sees 4200, so the spreading must happen here); whatever is left when
//! `drain.deadline` passes is dropped. Events published during the drain still reach every socket
//! that is open. A second signal exits at once.

use std::time::Duration;

use herald_core::{CloseRequest, DisconnectReason, Outbox};
use herald_protocol::CloseCode;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

/// How many close batches per second of drain window, at most.
const BATCHES_PER_SECOND: u64 = 20;

/// Cancels `token` on the first SIGTERM/SIGINT and exits the process on the second. The task
/// runs on the background tasks until the drain is over ([`Shared::spawn_background`]).
pub fn spawn_signal_handler(shared: &Shared, token: CancellationToken) {
    shared.spawn_background(async move {
        wait_for_signal().await;
        token.cancel();
        tracing::info!("shutdown signal received: draining");
        wait_for_signal().await;
        tracing::warn!("second shutdown signal: exiting now");
        std::process::exit(1);
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    // SIGTERM: Kubernetes and systemd stop. SIGINT: Ctrl-C in a terminal.
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Runs the drain sequence; returns when every task finished or the deadline passed.
pub async fn drain(shared: &Shared, stop_accepting: &CancellationToken) {
    let started = Instant::now();
    let drain = &shared.config().drain;
    shared.start_draining();
    tokio::time::sleep(drain.delay).await;

    stop_accepting.cancel();
    let mut sockets: Vec<Outbox> = shared.node().outboxes();
    tracing::info!(sockets = sockets.len(), window = ?drain.window, "closing sockets with 4200");
    sockets.shuffle(&mut rand::thread_rng());
    close_paced(sockets, drain.window).await;

    shared.connection_tasks().close();
    let deadline = started + drain.deadline;
    if tokio::time::timeout_at(deadline, shared.connection_tasks().wait())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline reached with tasks still running");
    }
    // Leave events of the sockets just closed fall due after the leave delay: send what can be.
    shared.webhooks().flush(deadline).await;
}

async fn close_paced(sockets: Vec<Outbox>, window: Duration) {
    if sockets.is_empty() {
        return;
    }
    let window_ms = window.as_millis() as u64;
    let batches = (window_ms * BATCHES_PER_SECOND / 1000).clamp(1, sockets.len() as u64) as usize;
    let per_batch = sockets.len().div_ceil(batches);
    let step = window / batches as u32;
    let start = Instant::now();
    for (i, batch) in sockets.chunks(per_batch).enumerate() {
        // Jitter within the step so batches do not land on exact ticks either.
        let jitter = step.mul_f64(rand::thread_rng().gen_range(0.0..1.0));
        tokio::time::sleep_until(start + step * i as u32 + jitter).await;
        for outbox in batch {
            outbox.close(CloseRequest {
                code: CloseCode::ReconnectImmediately,
                message: "Server is shutting down; reconnect",
                reason: DisconnectReason::Drain,
            });
        }
    }
}
