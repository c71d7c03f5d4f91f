//! The broker's long-running tasks, spawned by `ClusterBroker::start` on the tracker it is given
//! and ended by its token: the publisher (the queue to the transport, in batches), one reader
//! per shard (reconnecting with backoff, resuming where it stopped), the heartbeat (liveness,
//! reaping silent peers, resyncs) and the monitor's forwarding.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald_core::monitor::FORWARD_INTERVAL_MS;
use herald_core::Position;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::transport::{BusItem, Transport};
use crate::wire::{self, BusMessage};

use super::inbound::CatchUp;
use super::outbound::Queued;
use super::stats::bump;
use super::Inner;

/// Most messages handed to the transport in one batch (one Redis pipeline).
const MAX_BATCH: usize = 512;
/// How long a subscription attempt may take before it counts as failed.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Reconnect backoff bounds; each wait adds up to 30% jitter. The maximum keeps cross-node
/// delivery back within a second of the transport's return.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// How far back a starting node reads the bus, to fill its channels' histories for replay.
const BACKFILL: Duration = Duration::from_secs(120);

/// Hands queued messages to the transport in batches (one pipeline each), and tells whoever
/// waits whether their message is on the log.
pub(super) async fn publisher<T: Transport>(
    inner: Arc<Inner<T>>,
    mut rx: mpsc::Receiver<Queued>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut acks = Vec::with_capacity(MAX_BATCH);
    let mut last_warning: Option<Instant> = None;
    loop {
        let first = tokio::select! {
            msg = rx.recv() => match msg { Some(m) => m, None => return },
            () = stop.cancelled() => return,
        };
        let mut queued = Some(first);
        while let Some(Queued { out, ack }) = queued.take() {
            batch.extend(out);
            acks.extend(ack);
            if batch.len() < MAX_BATCH {
                queued = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            // Barriers only: everything before them was handled.
            for ack in acks.drain(..) {
                let _ = ack.send(true);
            }
            continue;
        }
        let n = batch.len() as u64;
        let res = inner.transport.publish(&batch).await;
        for ack in acks.drain(..) {
            let _ = ack.send(res.is_ok());
        }
        inner.publish_failing.store(res.is_err(), Ordering::Relaxed);
        match res {
            Ok(_) => bump(&inner.stats.publishes, n),
            Err(err) => {
                bump(&inner.stats.errors, 1);
                bump(&inner.stats.dropped_unsent, n);
                inner.state_dirty.store(true, Ordering::Relaxed);
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!(err = %error_chain(&err), dropped = n, "cluster publish failed: cross-node delivery is interrupted");
                    last_warning = Some(Instant::now());
                }
            }
        }
        batch.clear();
    }
}

/// Reads one shard of the bus, resuming after a disconnection where it stopped (the log fills
/// what was missed), with jittered backoff, and resyncs state after every (re)connect so state
/// lost in the transport or missed during an outage is rebuilt. A starting node first reads back
/// [`BACKFILL`] of the log, to fill its channels' histories for clients that resume here.
pub(super) async fn subscriber<T: Transport>(
    inner: Arc<Inner<T>>,
    shard: usize,
    stop: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    let mut first = true;
    let mut caught_up_here = false;
    let start_ms = inner.started_ms.saturating_sub(BACKFILL.as_millis() as u64);
    let mut after = Some(Position {
        ms: start_ms,
        seq: 0,
    });
    loop {
        let subscribe = inner.transport.subscribe(shard, after);
        let res = tokio::select! {
            res = tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe) => res,
            () = stop.cancelled() => return,
        };
        match res {
            Ok(Ok(mut items)) => {
                backoff = MIN_BACKOFF;
                let resumed = !first;
                let connected_ms = wire::now_ms();
                inner.connected(&mut first).await;
                let mut caught_up = CatchUp {
                    shard,
                    done: &mut caught_up_here,
                    count: &inner.shards_caught_up,
                };
                if !*caught_up.done {
                    // Everything before this mark on the shard is what a client may resume from.
                    inner.send(
                        &BusMessage::CaughtUp {
                            node: inner.node.id(),
                            shard,
                        },
                        None,
                    );
                }
                loop {
                    tokio::select! {
                        item = items.next() => match item {
                            Some(BusItem::Entry(position, payload)) => {
                                after = Some(position);
                                if resumed && position.ms < connected_ms {
                                    // Appended while we were away: pub/sub would have lost it.
                                    bump(&inner.stats.gap_entries_filled, 1);
                                }
                                inner.handle(position, &payload, &mut caught_up);
                            }
                            // A gap while backfilling only means less history.
                            Some(BusItem::Gap) if !resumed => {}
                            Some(BusItem::Gap) => inner.gap(shard),
                            None => break,
                        },
                        () = stop.cancelled() => return,
                    }
                }
                inner.disconnected();
                bump(&inner.stats.errors, 1);
                tracing::warn!(shard, "lost the cluster bus: serving local sockets only, and refusing HTTP publishes, until it is back");
            }
            Ok(Err(err)) => {
                bump(&inner.stats.errors, 1);
                tracing::warn!(err = %error_chain(&err), retry_in = ?backoff, "cannot subscribe to the cluster bus");
            }
            Err(_) => {
                bump(&inner.stats.errors, 1);
                tracing::warn!(retry_in = ?backoff, "timed out subscribing to the cluster bus");
            }
        }
        let jitter = backoff.mul_f64(rand::thread_rng().gen_range(0.0..0.3));
        tokio::select! {
            () = tokio::time::sleep(backoff + jitter) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Heartbeats, reaps silent peers, and resyncs after this node itself stalled.
pub(super) async fn heartbeat<T: Transport>(inner: Arc<Inner<T>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(inner.settings.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let gap = last.elapsed();
        last = Instant::now();
        if inner.connected_since.lock().is_none() {
            continue;
        }
        if inner.state_dirty.swap(false, Ordering::Relaxed) {
            // Announcements were lost: others get our whole state again (they apply the diff).
            inner.publish_state();
        }
        if !inner.is_caught_up() {
            // A mark lost on its way (a full queue, a failed append) is sent again; a shard
            // already caught up ignores a second one.
            for shard in 0..inner.shards() {
                inner.send_best_effort(&BusMessage::CaughtUp {
                    node: inner.node.id(),
                    shard,
                });
            }
        }
        if gap > inner.settings.node_timeout {
            // We were frozen long enough for others to declare us dead: rebuild both ways.
            tracing::warn!(?gap, "this node stalled: resyncing cluster state");
            inner.resync();
        }
        let apps = inner.node.apps();
        let connections = apps
            .iter()
            .map(|app| (app.id().to_owned(), app.connection_count()))
            .collect();
        let messages = apps
            .iter()
            .map(|app| (app.id().to_owned(), app.traffic().totals()))
            .collect();
        inner.send(
            &BusMessage::Heartbeat {
                node: inner.node.id(),
                connections,
                started_at_ms: inner.node.started_at_ms(),
                messages,
            },
            None,
        );
        inner.reap();
    }
}

/// The monitor's cluster side, every [`FORWARD_INTERVAL_MS`]: announces the apps watched here
/// (at once, then every heartbeat, for three heartbeats each), and sends this node's records of
/// the apps watched elsewhere, in one batch per app. Best effort: monitor traffic is never
/// repaired, and costs nothing while nobody watches (one relaxed load per app per round).
pub(super) async fn forward_monitors<T: Transport>(inner: Arc<Inner<T>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(FORWARD_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let every = inner.settings.heartbeat_interval;
    let ttl_ms = u64::try_from(every.saturating_mul(3).as_millis()).unwrap_or(u64::MAX);
    let me = inner.node.id();
    // When each app watched here was last announced.
    let mut announced: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        if inner.connected_since.lock().is_none() {
            continue;
        }
        for app in inner.node.apps() {
            let monitor = app.monitor();
            if !monitor.active() {
                continue;
            }
            if monitor.local_watchers() > 0 {
                let due = announced
                    .get(app.id())
                    .is_none_or(|at| at.elapsed() >= every);
                if due {
                    announced.insert(app.id().to_owned(), Instant::now());
                    inner.send_best_effort(&BusMessage::Watching {
                        node: me,
                        app: app.id().to_owned(),
                        ttl_ms,
                    });
                }
            }
            let records = monitor.take_forward();
            if records.is_empty() {
                continue;
            }
            let records = records
                .iter()
                .filter_map(|record| serde_json::to_value(&**record).ok())
                .collect();
            inner.send_best_effort(&BusMessage::Monitor {
                node: me,
                app: app.id().to_owned(),
                records,
            });
        }
        announced.retain(|app, _| {
            inner
                .node
                .app_by_id(app)
                .is_some_and(|a| a.monitor().local_watchers() > 0)
        });
    }
}

/// An error and its sources on one line, so a log says why (a transport error wraps the cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
