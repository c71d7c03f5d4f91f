//! Delivers due webhook jobs: any 2xx is success; anything else is retried with exponential
//! backoff and jitter until the retry window closes, then dropped and counted.
//!
//! Invariant: a bad target costs bounded time (one timeout per attempt) and bounded memory (the
//! response body is never read), and never touches sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::{now_ms, Job};
use super::Inner;
use crate::metrics;

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Jobs claimed per round.
const CLAIM: usize = 64;
const TICK: Duration = Duration::from_millis(100);
/// Requests in flight at once per node.
const MAX_IN_FLIGHT: usize = 32;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

fn client() -> HttpClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}

/// Claims and sends due jobs every [`TICK`] until `stop`; each request runs on `tracker`.
pub(super) async fn run(inner: Arc<Inner>, tracker: TaskTracker, stop: CancellationToken) {
    let client = client();
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        // Idle while no app has a target: the store (Redis in a cluster) is not read.
        if !inner.is_active() {
            continue;
        }
        // Requests run in their own tasks, at most `MAX_IN_FLIGHT` at once, so one slow target
        // does not hold up the others. They are tracked: shutdown waits for them.
        for group in claim_groups(&inner).await {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (inner, client) = (inner.clone(), client.clone());
            tracker.spawn(async move {
                send_group(&inner, &client, group).await;
                drop(permit);
            });
        }
        rounds += 1;
        if rounds.is_multiple_of(10) {
            if let Ok(depth) = inner.store.depth().await {
                metrics::webhook_queue_depth(depth);
            }
        }
    }
}

pub(super) async fn flush(inner: &Inner, deadline: tokio::time::Instant) {
    if !inner.is_active() {
        return;
    }
    let client = client();
    while tokio::time::Instant::now() < deadline {
        let sends = claim_groups(inner)
            .await
            .into_iter()
            .map(|group| send_group(inner, &client, group));
        futures_util::future::join_all(sends).await;
        if inner.store.depth().await.unwrap_or(0) == 0 {
            return;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Claims due jobs, drops the cancelled ones, and groups the rest into requests.
async fn claim_groups(inner: &Inner) -> Vec<Vec<(Job, Job)>> {
    // Long enough for every target of a job to time out once; past it, another node may send
    // the job again (a duplicate, never a loss).
    let most_targets = inner
        .apps
        .read()
        .values()
        .map(|a| a.targets.len())
        .max()
        .unwrap_or(1) as u32;
    let lease = inner.config.timeout * most_targets + Duration::from_secs(5);
    let jobs = match inner.store.claim(CLAIM, lease).await {
        Ok(jobs) => jobs,
        Err(err) => {
            tracing::warn!(%err, "cannot read the webhook queue");
            return Vec::new();
        }
    };
    let claimed = jobs.len();
    // Each entry keeps the job as claimed (to complete it exactly) and the job as it will be sent.
    let mut ready: Vec<(Job, Job)> = Vec::with_capacity(claimed);
    for job in jobs {
        let mut decided = job.clone();
        if let Some(key) = decided.pending_key.take() {
            // A delayed leave: sent only if nobody came back meanwhile.
            match inner.store.take(&key).await {
                Ok(true) => {}
                Ok(false) => {
                    metrics::webhook_dropped(&job.app, "cancelled");
                    let _ = inner.store.complete(&job).await;
                    continue;
                }
                Err(err) => {
                    // Left claimed: the lease expires and it is tried again.
                    tracing::warn!(%err, "cannot check a delayed webhook");
                    continue;
                }
            }
        }
        ready.push((job, decided));
    }
    // Batch events for the same app and targets into one request.
    let mut groups: Vec<Vec<(Job, Job)>> = Vec::new();
    for pair in ready {
        let fits = |g: &Vec<(Job, Job)>| {
            g.len() < inner.config.max_batch
                && g[0].1.app == pair.1.app
                && g[0].1.targets == pair.1.targets
        };
        match groups.iter_mut().position(|g| fits(g)) {
            Some(i) => groups[i].push(pair),
            None => groups.push(vec![pair]),
        }
    }
    groups
}

async fn send_group(inner: &Inner, client: &HttpClient, group: Vec<(Job, Job)>) {
    let first = &group[0].1;
    let Some(hooks) = inner.apps.read().get(&first.app).cloned() else {
        for (claimed, _) in &group {
            let _ = inner.store.complete(claimed).await;
        }
        return;
    };
    let events: Vec<&serde_json::Value> = group.iter().flat_map(|(_, j)| j.events.iter()).collect();
    let body = serde_json::json!({"time_ms": now_ms(), "events": events}).to_string();
    let signature = herald_protocol::signature::sign(hooks.secret.expose(), body.as_bytes());
    let mut failed = Vec::new();
    for &target_idx in &first.targets {
        let Some(target) = hooks.targets.get(target_idx) else {
            continue;
        };
        let started = Instant::now();
        match post(
            client,
            target,
            &hooks.key,
            &signature,
            &body,
            inner.config.timeout,
        )
        .await
        {
            Ok(()) => {
                metrics::webhook_sent(&first.app, group.len(), started.elapsed());
                monitor(inner, &first.app, &events, None);
            }
            Err(reason) => {
                metrics::webhook_failed(&first.app);
                tracing::debug!(url = %target.url, %reason, "webhook attempt failed");
                monitor(inner, &first.app, &events, Some(reason));
                failed.push(target_idx);
            }
        }
    }
    for (claimed, job) in group {
        let _ = inner.store.complete(&claimed).await;
        if failed.is_empty() {
            continue;
        }
        let attempts = job.attempts.saturating_add(1);
        let backoff = inner
            .config
            .retry_initial
            .saturating_mul(1 << (attempts - 1).min(6))
            .min(MAX_BACKOFF);
        let jitter = backoff.mul_f64(rand::thread_rng().gen_range(0.0..0.25));
        let due = now_ms() + (backoff + jitter).as_millis() as u64;
        if due
            > job
                .first_due_ms
                .saturating_add(inner.config.retry_window.as_millis() as u64)
        {
            metrics::webhook_dropped(&job.app, "retries_exhausted");
            tracing::warn!(app = %job.app, attempts, "webhook dropped after its retry window");
            continue;
        }
        metrics::webhook_retried(&job.app);
        let next = Job {
            targets: failed.clone(),
            attempts,
            ..job
        };
        let _ = inner.store.enqueue(&next, due).await;
    }
}

/// Tells the app's watchers about one webhook request (its events' names, never the body).
fn monitor(inner: &Inner, app: &str, events: &[&serde_json::Value], error: Option<String>) {
    let Some(app) = inner.node.get().and_then(|node| node.app_by_id(app)) else {
        return;
    };
    app.monitor()
        .emit_with(|| herald_core::MonitorEvent::Webhook {
            events: events
                .iter()
                .filter_map(|e| e.get("name").and_then(|n| n.as_str()).map(str::to_owned))
                .collect(),
            ok: error.is_none(),
            error,
        });
}

async fn post(
    client: &HttpClient,
    target: &crate::config::WebhookTarget,
    key: &str,
    signature: &str,
    body: &str,
    timeout: Duration,
) -> Result<(), String> {
    let mut req = hyper::Request::post(&target.url)
        .header("content-type", "application/json")
        .header("x-pusher-key", key)
        .header("x-pusher-signature", signature);
    for (name, value) in &target.headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| e.to_string())?;
    // The response body is never read: a huge answer costs nothing.
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(res)) if res.status().is_success() => Ok(()),
        Ok(Ok(res)) => Err(format!("status {}", res.status())),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("timed out".into()),
    }
}
