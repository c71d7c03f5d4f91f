//! The publisher side of `broadcast` and `publish`: K keep-alive HTTP connections posting
//! signed events, paced (open loop, absolute deadlines) or as fast as the server accepts.
//!
//! Every (channel, connection) pair is one ordered stream with its own sequence numbers:
//! a connection waits for each response before its next request, so the server has accepted
//! event n of a stream before event n+1 is sent, and subscribers can check order per stream.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use crate::clock::now_ns;
use crate::http::{event_body, HttpConn, HttpTarget};
use crate::pusher::{bench_data, BenchData, BENCH_EVENT};
use crate::stats::{self, new_hist, Failures};

#[derive(Clone, Debug)]
pub struct PubConfig {
    pub channels: u32,
    /// Public channel names are `{prefix}{index}`.
    pub prefix: String,
    /// Size of each event's `data` string in bytes.
    pub size: usize,
    /// Events per second; None = as fast as the server accepts.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub conns: usize,
}

#[derive(Default)]
pub struct PubProgress {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

pub struct PubResult {
    pub ok: u64,
    pub failed: u64,
    pub failures: Failures,
    /// HTTP request latency (µs).
    pub http_us: Histogram<u64>,
    /// Accepted events per `[channel][connection]` stream.
    pub accepted: Vec<Vec<u64>>,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Events the scheduler could not send before the deadline (paced mode backlog).
    pub backlog_dropped: u64,
}

struct ConnResult {
    k: usize,
    seq: Vec<u64>,
    failures: Failures,
    http: Histogram<u64>,
    dropped: u64,
}

/// One publisher connection's state.
struct Poster<'a> {
    conn: HttpConn,
    cfg: &'a PubConfig,
    k: usize,
    seq: Vec<u64>,
    res: ConnResult,
    progress: &'a PubProgress,
}

impl Poster<'_> {
    /// Posts the next event of stream (channel `c`, this connection), stamped `t`.
    async fn post(&mut self, c: u32, t: u64) {
        let (cfg, k, seq, res, progress) = (
            self.cfg,
            self.k,
            &mut self.seq,
            &mut self.res,
            self.progress,
        );
        let conn = &mut self.conn;
        let data = bench_data(
            BenchData {
                c,
                k: k as u32,
                s: seq[c as usize],
                t,
            },
            cfg.size,
        );
        let body = event_body(BENCH_EVENT, &format!("{}{c}", cfg.prefix), &data);
        let t0 = now_ns();
        match conn.post_event(body).await {
            Ok(()) => {
                stats::record(&mut res.http, (now_ns() - t0) / 1000);
                seq[c as usize] += 1;
                progress.ok.fetch_add(1, Relaxed);
            }
            Err(reason) => {
                // The sequence number is reused: a rejected event is not part of the stream.
                *res.failures.entry(reason).or_default() += 1;
                progress.failed.fetch_add(1, Relaxed);
            }
        }
    }
}

pub async fn run(target: Arc<HttpTarget>, cfg: PubConfig, progress: Arc<PubProgress>) -> PubResult {
    let conns = cfg.conns.max(1);
    let channels = cfg.channels.max(1);
    let start_ns = now_ns();
    let deadline = tokio::time::Instant::now() + cfg.duration;
    let cfg = Arc::new(cfg);
    let mut handles = Vec::new();
    let mut queues = Vec::new();
    for k in 0..conns {
        let target = target.clone();
        let cfg = cfg.clone();
        let progress = progress.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<(u32, u64)>();
        queues.push(tx);
        handles.push(tokio::spawn(async move {
            let mut p = Poster {
                conn: HttpConn::new(target),
                cfg: &cfg,
                k,
                seq: vec![0; channels as usize],
                res: ConnResult {
                    k,
                    seq: Vec::new(),
                    failures: Failures::new(),
                    http: new_hist(),
                    dropped: 0,
                },
                progress: &progress,
            };
            if cfg.rate.is_some() {
                // Paced: send what the scheduler queued, stamped with its intended send time
                // (so a slow server can't hide queueing delay: no coordinated omission).
                let drain_deadline = deadline + Duration::from_secs(10);
                while let Some((c, intended)) = rx.recv().await {
                    if tokio::time::Instant::now() > drain_deadline {
                        p.res.dropped += 1;
                        continue;
                    }
                    p.post(c, intended).await;
                }
            } else {
                let mut c = (k as u32) % channels;
                while tokio::time::Instant::now() < deadline {
                    p.post(c, now_ns()).await;
                    c = (c + 1) % channels;
                }
            }
            let mut res = p.res;
            res.seq = p.seq;
            res
        }));
    }
    if let Some(rate) = cfg.rate {
        let rate = rate.max(0.001);
        let start = tokio::time::Instant::now();
        let start_mono = now_ns();
        let mut i: u64 = 0;
        loop {
            let offset = Duration::from_secs_f64(i as f64 / rate);
            let at = start + offset;
            if at >= deadline {
                break;
            }
            tokio::time::sleep_until(at).await;
            let c = (i % u64::from(channels)) as u32;
            let k = ((i / u64::from(channels)) % conns as u64) as usize;
            let intended = start_mono + offset.as_nanos() as u64;
            let _ = queues[k].send((c, intended));
            i += 1;
        }
    }
    drop(queues);
    let mut out = PubResult {
        ok: 0,
        failed: 0,
        failures: Failures::new(),
        http_us: new_hist(),
        accepted: vec![vec![0; conns]; channels as usize],
        start_ns,
        end_ns: 0,
        backlog_dropped: 0,
    };
    for h in handles {
        let Ok(r) = h.await else { continue };
        for (c, n) in r.seq.iter().enumerate() {
            out.accepted[c][r.k] = *n;
            out.ok += n;
        }
        for (reason, n) in &r.failures {
            out.failed += n;
            *out.failures.entry(reason.clone()).or_default() += n;
        }
        let _ = out.http_us.add(&r.http);
        out.backlog_dropped += r.dropped;
    }
    out.end_ns = now_ns();
    out
}
