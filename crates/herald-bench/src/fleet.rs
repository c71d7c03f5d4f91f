//! A fleet: a set of client connections run by one process (the tool itself, or a worker
//! process it spawned to get past the per-process file limit). A fleet reports progress
//! snapshots, says when it is ready (everything connected and subscribed), waits for the
//! parent's `Finish` command and then sends its final report.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::clock::{self, now_ns};
use crate::pusher::{self, ChannelKind, Endpoint, Ws, WsTarget};
use crate::stats::{
    self, new_hist, Failures, HistData, SeqOutcome, SeqTotals, SeqTracker, Timeline,
};

/// Which channels connection `id` subscribes to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubPlan {
    /// Channel kinds, cycled over the subscriptions.
    pub kinds: Vec<ChannelKind>,
    /// Subscriptions per connection.
    pub per_conn: u32,
    /// Distinct channel names per kind.
    pub channel_count: u64,
    /// Base of channel names: public `{prefix}{n}`, `private-{prefix}{n}`, `presence-{prefix}{n}`.
    pub prefix: String,
}

impl SubPlan {
    pub fn channels_for(&self, id: u64) -> Vec<(String, ChannelKind)> {
        (0..u64::from(self.per_conn))
            .map(|j| {
                let n = id * u64::from(self.per_conn) + j;
                let kind = self.kinds[(n % self.kinds.len() as u64) as usize];
                let idx = n % self.channel_count.max(1);
                (self.name(kind, idx), kind)
            })
            .collect()
    }

    pub fn name(&self, kind: ChannelKind, idx: u64) -> String {
        match kind {
            ChannelKind::Public => format!("{}{idx}", self.prefix),
            ChannelKind::Private => format!("private-{}{idx}", self.prefix),
            ChannelKind::Presence => format!("presence-{}{idx}", self.prefix),
        }
    }

    /// Index of the first channel of connection `id` (its only one in broadcast runs).
    pub fn channel_index(&self, id: u64) -> u32 {
        ((id * u64::from(self.per_conn)) % self.channel_count.max(1)) as u32
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum FleetMode {
    /// Connect, subscribe, hold until told to finish (counting events received).
    Hold,
    /// Each connection loops connect → subscribe → hold → close, `cycles` times.
    Churn { cycles: u64, hold_ms: u64 },
    /// Hold; when the server drops a connection, reconnect and resubscribe (after a random
    /// delay up to `jitter_ms`, then retrying with backoff).
    Storm { jitter_ms: u64 },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetSpec {
    /// Servers to connect to; connection `id` goes to `targets[target_index(id, len)]`.
    pub targets: Vec<WsTarget>,
    /// Global id of the first connection (ids pick channels and source addresses).
    pub first_id: u64,
    pub count: u64,
    /// Connection starts per second for this fleet (None: as fast as `max_inflight` allows).
    pub rate: Option<f64>,
    /// Handshakes in flight at once.
    pub max_inflight: usize,
    /// Source addresses to bind client sockets to, picked by connection id.
    pub sources: Vec<IpAddr>,
    pub plan: SubPlan,
    pub mode: FleetMode,
    pub connect_timeout_ms: u64,
    pub subscribe_timeout_ms: u64,
    /// Runtime threads of a worker process.
    pub threads: usize,
    /// Whether to report this process's CPU time (true in worker processes).
    pub report_cpu: bool,
}

/// Counters of a fleet at one moment.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub attempted: u64,
    pub established: u64,
    pub subscribed: u64,
    pub failed: u64,
    /// Open and subscribed right now.
    pub active: u64,
    /// Connections whose first attempt has finished (either way).
    pub initial_done: u64,
    /// Drops by the server (or network) while holding.
    pub dropped: u64,
    /// Connections dropped at least once.
    pub dropped_conns: u64,
    pub reconnects: u64,
    /// Churn cycles completed.
    pub cycles: u64,
    /// Benchmark events received (including duplicates).
    pub received: u64,
    /// Connections that have everything they were expected to receive (drain phase).
    pub complete: u64,
    /// CPU time of the worker process (0 for a fleet inside the tool's own process).
    pub cpu_ns: u64,
}

impl Snapshot {
    pub fn add(&mut self, o: &Snapshot) {
        self.attempted += o.attempted;
        self.established += o.established;
        self.subscribed += o.subscribed;
        self.failed += o.failed;
        self.active += o.active;
        self.initial_done += o.initial_done;
        self.dropped += o.dropped;
        self.dropped_conns += o.dropped_conns;
        self.reconnects += o.reconnects;
        self.cycles += o.cycles;
        self.received += o.received;
        self.complete += o.complete;
        self.cpu_ns += o.cpu_ns;
    }
}

/// Final report of a fleet.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FleetReport {
    pub snap: Snapshot,
    pub failures: Failures,
    /// Connect start → `pusher:connection_established`, µs.
    pub established_us: HistData,
    /// `connection_established` → all `subscription_succeeded`, µs.
    pub subscribed_us: HistData,
    /// Storm: drop → reconnected and resubscribed, µs.
    pub reconnect_us: HistData,
    /// Publish → receipt, µs.
    pub latency_us: HistData,
    pub timeline: Vec<(u64, HistData)>,
    pub seq: SeqTotals,
    pub first_attempt_ns: u64,
    pub last_established_ns: u64,
    pub last_subscribed_ns: u64,
    pub first_recv_ns: u64,
    pub last_recv_ns: u64,
    pub first_drop_ns: u64,
    pub last_drop_ns: u64,
    pub last_resubscribed_ns: u64,
}

/// Fleet → parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FleetMsg {
    Progress { snap: Snapshot },
    Ready { snap: Snapshot },
    Result { report: Box<FleetReport> },
    Error { message: String },
}

/// Parent → fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FleetCmd {
    /// Stop. With `expected` (events accepted per `[channel][publisher]` stream), first wait
    /// up to `drain_timeout_ms` for every subscriber to have received them all.
    Finish {
        expected: Option<Vec<Vec<u64>>>,
        drain_timeout_ms: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Run,
    Drain,
    Stop,
}

#[derive(Default)]
struct Counters {
    attempted: AtomicU64,
    established: AtomicU64,
    subscribed: AtomicU64,
    failed: AtomicU64,
    active: AtomicU64,
    initial_done: AtomicU64,
    dropped: AtomicU64,
    dropped_conns: AtomicU64,
    reconnects: AtomicU64,
    cycles: AtomicU64,
    complete: AtomicU64,
}

struct LatShard {
    hist: Histogram<u64>,
    timeline: Timeline,
    received: u64,
    first_ns: u64,
    last_ns: u64,
}

const LAT_SHARDS: usize = 32;

struct Times {
    first_attempt: AtomicU64,
    last_established: AtomicU64,
    last_subscribed: AtomicU64,
    first_drop: AtomicU64,
    last_drop: AtomicU64,
    last_resubscribed: AtomicU64,
}

struct Ctx {
    spec: FleetSpec,
    /// One per target, in the order of `spec.targets`.
    eps: Vec<Endpoint>,
    c: Counters,
    t: Times,
    inflight: Semaphore,
    failures: Mutex<Failures>,
    est: Mutex<Histogram<u64>>,
    sub: Mutex<Histogram<u64>>,
    reconn: Mutex<Histogram<u64>>,
    lat: Vec<Mutex<LatShard>>,
    seq: Mutex<SeqTotals>,
    phase: watch::Sender<Phase>,
    expected: OnceLock<Vec<Vec<u64>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ctx {
    fn fail(&self, reason: String) {
        self.c.failed.fetch_add(1, Relaxed);
        *lock(&self.failures).entry(reason).or_default() += 1;
    }

    fn snapshot(&self) -> Snapshot {
        let c = &self.c;
        let received = self.lat.iter().map(|s| lock(s).received).sum();
        Snapshot {
            attempted: c.attempted.load(Relaxed),
            established: c.established.load(Relaxed),
            subscribed: c.subscribed.load(Relaxed),
            failed: c.failed.load(Relaxed),
            active: c.active.load(Relaxed),
            initial_done: c.initial_done.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            dropped_conns: c.dropped_conns.load(Relaxed),
            reconnects: c.reconnects.load(Relaxed),
            cycles: c.cycles.load(Relaxed),
            received,
            complete: c.complete.load(Relaxed),
            cpu_ns: if self.spec.report_cpu {
                clock::cpu_ns(None).unwrap_or(0)
            } else {
                0
            },
        }
    }

    fn ep(&self, id: u64) -> &Endpoint {
        &self.eps[target_index(id, self.eps.len())]
    }

    fn source(&self, id: u64) -> Option<IpAddr> {
        let s = &self.spec.sources;
        (!s.is_empty()).then(|| s[(id % s.len() as u64) as usize])
    }

    fn report(&self) -> FleetReport {
        let mut latency = new_hist();
        let mut timeline = Timeline::default();
        let (mut first_recv, mut last_recv) = (u64::MAX, 0);
        for s in &self.lat {
            let s = lock(s);
            let _ = latency.add(&s.hist);
            timeline.merge(&s.timeline);
            first_recv = first_recv.min(s.first_ns);
            last_recv = last_recv.max(s.last_ns);
        }
        let zero_if_max = |v: u64| if v == u64::MAX { 0 } else { v };
        FleetReport {
            snap: self.snapshot(),
            failures: lock(&self.failures).clone(),
            established_us: HistData::from_hist(&lock(&self.est)),
            subscribed_us: HistData::from_hist(&lock(&self.sub)),
            reconnect_us: HistData::from_hist(&lock(&self.reconn)),
            latency_us: HistData::from_hist(&latency),
            timeline: timeline.to_data(),
            seq: *lock(&self.seq),
            first_attempt_ns: zero_if_max(self.t.first_attempt.load(Relaxed)),
            last_established_ns: self.t.last_established.load(Relaxed),
            last_subscribed_ns: self.t.last_subscribed.load(Relaxed),
            first_recv_ns: zero_if_max(first_recv),
            last_recv_ns: last_recv,
            first_drop_ns: zero_if_max(self.t.first_drop.load(Relaxed)),
            last_drop_ns: self.t.last_drop.load(Relaxed),
            last_resubscribed_ns: self.t.last_resubscribed.load(Relaxed),
        }
    }
}

/// One connection attempt: TCP + WebSocket + `connection_established` + all subscriptions.
async fn connect_once(
    ctx: &Ctx,
    id: u64,
    channels: &[(String, ChannelKind)],
) -> Result<Ws, String> {
    let _permit = ctx.inflight.acquire().await.map_err(|_| "closed")?;
    ctx.c.attempted.fetch_add(1, Relaxed);
    let t0 = now_ns();
    ctx.t.first_attempt.fetch_min(t0, Relaxed);
    let connect_timeout = Duration::from_millis(ctx.spec.connect_timeout_ms);
    let (mut ws, socket_id) = pusher::within(connect_timeout, "timeout: connect", async {
        let mut ws = pusher::open(ctx.ep(id), ctx.source(id)).await?;
        let sid = pusher::await_established(&mut ws).await?;
        Ok((ws, sid))
    })
    .await?;
    let t1 = now_ns();
    stats::record(&mut lock(&ctx.est), (t1 - t0) / 1000);
    ctx.c.established.fetch_add(1, Relaxed);
    ctx.t.last_established.fetch_max(t1, Relaxed);
    if !channels.is_empty() {
        pusher::within(
            Duration::from_millis(ctx.spec.subscribe_timeout_ms),
            "timeout: subscribe",
            pusher::subscribe_all(&mut ws, ctx.ep(id), &socket_id, channels, id),
        )
        .await?;
    }
    let t2 = now_ns();
    stats::record(&mut lock(&ctx.sub), (t2 - t1) / 1000);
    ctx.c.subscribed.fetch_add(1, Relaxed);
    ctx.c.active.fetch_add(1, Relaxed);
    ctx.t.last_subscribed.fetch_max(t2, Relaxed);
    Ok(ws)
}

/// Which of `n` servers connection `id` uses: round-robin over the global connection ids, so
/// every fleet (worker process) spreads its contiguous id range evenly over the servers.
pub fn target_index(id: u64, n: usize) -> usize {
    (id % n.max(1) as u64) as usize
}

/// Per-connection receive state.
struct RecvState {
    id: u64,
    channel: u32,
    /// One tracker per publisher stream `k` of this connection's channel.
    trackers: Vec<SeqTracker>,
    distinct: u64,
    complete: bool,
}

impl RecvState {
    fn on_event(&mut self, ctx: &Ctx, d: pusher::BenchData) {
        let now = now_ns();
        {
            let mut shard = lock(&ctx.lat[(self.id % LAT_SHARDS as u64) as usize]);
            let us = now.saturating_sub(d.t) / 1000;
            stats::record(&mut shard.hist, us);
            shard.timeline.record(d.t / 1_000_000_000, us);
            shard.received += 1;
            shard.first_ns = shard.first_ns.min(now);
            shard.last_ns = shard.last_ns.max(now);
        }
        if d.c != self.channel {
            return;
        }
        let k = d.k as usize;
        if self.trackers.len() <= k {
            self.trackers.resize_with(k + 1, SeqTracker::default);
        }
        if self.trackers[k].record(d.s) != SeqOutcome::Duplicate {
            self.distinct += 1;
        }
    }

    fn check_complete(&mut self, ctx: &Ctx) {
        if self.complete {
            return;
        }
        let Some(exp) = ctx.expected.get() else {
            return;
        };
        let want: u64 = exp
            .get(self.channel as usize)
            .map(|v| v.iter().sum())
            .unwrap_or(0);
        if self.distinct >= want {
            self.complete = true;
            ctx.c.complete.fetch_add(1, Relaxed);
        }
    }

    /// Adds this subscriber's loss/duplicate/order accounting to the fleet totals.
    fn finalize(&self, ctx: &Ctx) {
        let mut t = SeqTotals::default();
        let empty = Vec::new();
        let exp = ctx
            .expected
            .get()
            .and_then(|e| e.get(self.channel as usize))
            .unwrap_or(&empty);
        for (k, &want) in exp.iter().enumerate() {
            t.expected += want;
            match self.trackers.get(k) {
                Some(tr) => t.lost += tr.lost(want),
                None => t.lost += want,
            }
        }
        for tr in &self.trackers {
            t.received += tr.distinct();
            t.duplicated += tr.duplicates;
            t.out_of_order += tr.out_of_order;
        }
        lock(&ctx.seq).add(&t);
    }
}

enum HoldEnd {
    Stop,
    Dropped,
}

async fn hold(
    ctx: &Ctx,
    ws: &mut Ws,
    st: &mut RecvState,
    phase: &mut watch::Receiver<Phase>,
) -> HoldEnd {
    loop {
        let draining = match *phase.borrow_and_update() {
            Phase::Stop => return HoldEnd::Stop,
            Phase::Drain => {
                st.check_complete(ctx);
                true
            }
            Phase::Run => false,
        };
        // One phase-change future per phase, not one per message (the tool's CPU per
        // received frame is taken from the server it measures).
        let changed = phase.changed();
        tokio::pin!(changed);
        loop {
            tokio::select! {
                m = ws.next() => {
                    let pong = match m {
                        Ok(pusher::Incoming::Text(t)) => match pusher::parse_bench(t) {
                            Some(d) => {
                                st.on_event(ctx, d);
                                if draining {
                                    st.check_complete(ctx);
                                }
                                false
                            }
                            None => pusher::is_ping(t),
                        },
                        Ok(pusher::Incoming::Close(_)) | Err(_) => return HoldEnd::Dropped,
                    };
                    if pong && ws.send_text(pusher::PONG).await.is_err() {
                        return HoldEnd::Dropped;
                    }
                }
                r = &mut changed => {
                    if r.is_err() {
                        return HoldEnd::Stop;
                    }
                    break;
                }
            }
        }
    }
}

async fn wait_stop(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p == Phase::Stop).await;
}

/// Sleeps for `d` unless the fleet stops first; returns false if it stopped.
async fn sleep_unless_stopped(d: Duration, phase: &mut watch::Receiver<Phase>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = wait_stop(phase) => false,
    }
}

/// A deterministic pseudo-random number for jitter (splitmix64).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

async fn hold_task(ctx: Arc<Ctx>, id: u64) {
    let channels = ctx.spec.plan.channels_for(id);
    let mut phase = ctx.phase.subscribe();
    let first = tokio::select! {
        r = connect_once(&ctx, id, &channels) => Some(r),
        _ = wait_stop(&mut phase) => None,
    };
    ctx.c.initial_done.fetch_add(1, Relaxed);
    let mut ws = match first {
        Some(Ok(ws)) => ws,
        Some(Err(reason)) => return ctx.fail(reason),
        None => return,
    };
    let mut st = RecvState {
        id,
        channel: ctx.spec.plan.channel_index(id),
        trackers: Vec::new(),
        distinct: 0,
        complete: false,
    };
    let storm_jitter = match ctx.spec.mode {
        FleetMode::Storm { jitter_ms } => Some(jitter_ms),
        _ => None,
    };
    let mut dropped_before = false;
    let mut attempt: u64 = 0;
    'outer: loop {
        match hold(&ctx, &mut ws, &mut st, &mut phase).await {
            HoldEnd::Stop => {
                ctx.c.active.fetch_sub(1, Relaxed);
                break;
            }
            HoldEnd::Dropped => {}
        }
        let drop_at = now_ns();
        ctx.c.active.fetch_sub(1, Relaxed);
        ctx.c.dropped.fetch_add(1, Relaxed);
        if !dropped_before {
            dropped_before = true;
            ctx.c.dropped_conns.fetch_add(1, Relaxed);
        }
        ctx.t.first_drop.fetch_min(drop_at, Relaxed);
        ctx.t.last_drop.fetch_max(drop_at, Relaxed);
        let Some(jitter_ms) = storm_jitter else {
            wait_stop(&mut phase).await;
            break;
        };
        // Storm: reconnect after a random delay, then retry with backoff.
        attempt += 1;
        let delay = if jitter_ms == 0 {
            0
        } else {
            mix(id ^ (attempt << 40)) % jitter_ms
        };
        if !sleep_unless_stopped(Duration::from_millis(delay), &mut phase).await {
            break;
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            ctx.c.reconnects.fetch_add(1, Relaxed);
            let r = tokio::select! {
                r = connect_once(&ctx, id, &channels) => r,
                _ = wait_stop(&mut phase) => break 'outer,
            };
            match r {
                Ok(new_ws) => {
                    ws = new_ws;
                    let now = now_ns();
                    stats::record(&mut lock(&ctx.reconn), (now - drop_at) / 1000);
                    ctx.t.last_resubscribed.fetch_max(now, Relaxed);
                    break;
                }
                Err(reason) => {
                    ctx.fail(format!("reconnect: {reason}"));
                    if !sleep_unless_stopped(backoff, &mut phase).await {
                        break 'outer;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
    st.finalize(&ctx);
}

async fn churn_task(ctx: Arc<Ctx>, id: u64, cycles: u64, hold_ms: u64) {
    let channels = ctx.spec.plan.channels_for(id);
    let mut phase = ctx.phase.subscribe();
    for cycle in 0..cycles {
        let r = tokio::select! {
            r = connect_once(&ctx, id, &channels) => r,
            _ = wait_stop(&mut phase) => break,
        };
        if cycle == 0 {
            ctx.c.initial_done.fetch_add(1, Relaxed);
        }
        match r {
            Ok(mut ws) => {
                if hold_ms > 0
                    && !sleep_unless_stopped(Duration::from_millis(hold_ms), &mut phase).await
                {
                    ctx.c.active.fetch_sub(1, Relaxed);
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close()).await;
                ctx.c.active.fetch_sub(1, Relaxed);
                ctx.c.cycles.fetch_add(1, Relaxed);
            }
            Err(reason) => ctx.fail(reason),
        }
    }
}

/// Runs a fleet to completion: connect, report ready, wait for `Finish`, report.
pub async fn run_fleet(
    spec: FleetSpec,
    mut cmds: mpsc::UnboundedReceiver<FleetCmd>,
    out: mpsc::UnboundedSender<FleetMsg>,
) {
    if let Err(e) = run_fleet_inner(spec, &mut cmds, &out).await {
        let _ = out.send(FleetMsg::Error {
            message: format!("{e:#}"),
        });
    }
}

async fn run_fleet_inner(
    spec: FleetSpec,
    cmds: &mut mpsc::UnboundedReceiver<FleetCmd>,
    out: &mpsc::UnboundedSender<FleetMsg>,
) -> anyhow::Result<()> {
    if spec.targets.is_empty() {
        anyhow::bail!("no WebSocket URL");
    }
    let mut eps = Vec::with_capacity(spec.targets.len());
    for t in &spec.targets {
        eps.push(Endpoint::resolve(t).await?);
    }
    let (phase, _) = watch::channel(Phase::Run);
    let ctx = Arc::new(Ctx {
        inflight: Semaphore::new(spec.max_inflight.max(1)),
        eps,
        c: Counters::default(),
        t: Times {
            first_attempt: AtomicU64::new(u64::MAX),
            last_established: AtomicU64::new(0),
            last_subscribed: AtomicU64::new(0),
            first_drop: AtomicU64::new(u64::MAX),
            last_drop: AtomicU64::new(0),
            last_resubscribed: AtomicU64::new(0),
        },
        failures: Mutex::new(Failures::new()),
        est: Mutex::new(new_hist()),
        sub: Mutex::new(new_hist()),
        reconn: Mutex::new(new_hist()),
        lat: (0..LAT_SHARDS)
            .map(|_| {
                Mutex::new(LatShard {
                    hist: new_hist(),
                    timeline: Timeline::default(),
                    received: 0,
                    first_ns: u64::MAX,
                    last_ns: 0,
                })
            })
            .collect(),
        seq: Mutex::new(SeqTotals::default()),
        phase,
        expected: OnceLock::new(),
        spec,
    });

    let ticker = {
        let ctx = ctx.clone();
        let out = out.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(200));
            loop {
                iv.tick().await;
                if out
                    .send(FleetMsg::Progress {
                        snap: ctx.snapshot(),
                    })
                    .is_err()
                {
                    break;
                }
            }
        })
    };

    let mut tasks = JoinSet::new();
    let start = tokio::time::Instant::now();
    let count = ctx.spec.count;
    for i in 0..count {
        if let Some(rate) = ctx.spec.rate.filter(|r| *r > 0.0) {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        let id = ctx.spec.first_id + i;
        let c = ctx.clone();
        match ctx.spec.mode {
            FleetMode::Hold | FleetMode::Storm { .. } => tasks.spawn(hold_task(c, id)),
            FleetMode::Churn { cycles, hold_ms } => tasks.spawn(churn_task(c, id, cycles, hold_ms)),
        };
    }

    if matches!(ctx.spec.mode, FleetMode::Churn { .. }) {
        while tasks.join_next().await.is_some() {}
    } else {
        while ctx.c.initial_done.load(Relaxed) < count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let _ = out.send(FleetMsg::Ready {
        snap: ctx.snapshot(),
    });

    let cmd = cmds.recv().await.unwrap_or(FleetCmd::Finish {
        expected: None,
        drain_timeout_ms: 0,
    });
    let FleetCmd::Finish {
        expected,
        drain_timeout_ms,
    } = cmd;
    if let Some(exp) = expected {
        let _ = ctx.expected.set(exp);
        ctx.phase.send_replace(Phase::Drain);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(drain_timeout_ms);
        while ctx.c.complete.load(Relaxed) < ctx.c.active.load(Relaxed)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    ctx.phase.send_replace(Phase::Stop);
    let joined = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        tasks.abort_all();
    }
    ticker.abort();
    let _ = out.send(FleetMsg::Result {
        report: Box::new(ctx.report()),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_cycles_kinds_and_channels() {
        let plan = SubPlan {
            kinds: vec![
                ChannelKind::Public,
                ChannelKind::Private,
                ChannelKind::Presence,
            ],
            per_conn: 2,
            channel_count: 10,
            prefix: "bench-".into(),
        };
        let c0 = plan.channels_for(0);
        assert_eq!(c0[0], ("bench-0".to_string(), ChannelKind::Public));
        assert_eq!(c0[1], ("private-bench-1".to_string(), ChannelKind::Private));
        let c1 = plan.channels_for(1);
        assert_eq!(
            c1[0],
            ("presence-bench-2".to_string(), ChannelKind::Presence)
        );
        assert_eq!(plan.channel_index(7), 4);
    }

    #[test]
    fn messages_roundtrip_as_json_lines() {
        let m = FleetMsg::Progress {
            snap: Snapshot {
                subscribed: 3,
                ..Default::default()
            },
        };
        let line = serde_json::to_string(&m).unwrap();
        assert!(!line.contains('\n'));
        match serde_json::from_str::<FleetMsg>(&line).unwrap() {
            FleetMsg::Progress { snap } => assert_eq!(snap.subscribed, 3),
            other => panic!("{other:?}"),
        }
        let c = FleetCmd::Finish {
            expected: Some(vec![vec![1, 2]]),
            drain_timeout_ms: 5,
        };
        let back: FleetCmd = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        let FleetCmd::Finish { expected, .. } = back;
        assert_eq!(expected, Some(vec![vec![1, 2]]));
    }
}
