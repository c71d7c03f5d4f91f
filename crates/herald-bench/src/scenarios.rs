//! The scenarios: connect, broadcast, publish, churn and churn --storm.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::clock::{self, now_ns};
use crate::fleet::{FleetCmd, FleetMode, FleetReport, FleetSpec, Snapshot, SubPlan};
use crate::fleets::{self, Fleets};
use crate::http::HttpTarget;
use crate::plot;
use crate::publisher::{self, PubConfig, PubProgress};
use crate::pusher::{split_url, ChannelKind, WsTarget};
use crate::report::{failures_line, mb, CpuMeter, CpuUsage, Report};
use crate::stats::{merge_failures, new_hist, Failures, Percentiles, SeqTotals, Timeline};
use crate::ui::Ui;
use crate::{BroadcastArgs, ChurnArgs, Common, ConnectArgs, PublishArgs};

/// Client source addresses: explicit ones, or 127.0.0.1..N for a loopback IPv4 target.
fn sources(c: &Common) -> anyhow::Result<Vec<IpAddr>> {
    if !c.source_addrs.is_empty() {
        return Ok(c.source_addrs.clone());
    }
    let mut loopback_v4 = true;
    for url in &c.ws_urls {
        let (_, host, _, _) = split_url(url)?;
        loopback_v4 &= host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback());
    }
    let n = c.source_ips.unwrap_or(if loopback_v4 { 8 } else { 1 });
    if n <= 1 {
        return Ok(Vec::new());
    }
    if !loopback_v4 {
        bail!("--source-ips needs an IPv4 loopback target; use --source-addr for others");
    }
    Ok((1..=n.min(254) as u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect())
}

async fn launch(
    c: &Common,
    total: u64,
    rate: Option<f64>,
    plan: SubPlan,
    mode: FleetMode,
) -> anyhow::Result<Fleets> {
    if total == 0 {
        return Err(fleets::no_fleet_error());
    }
    let (ranges, in_process) = fleets::split(total, c.max_conns_per_process, c.workers);
    let n = ranges.len() as f64;
    let sources = sources(c)?;
    let specs = ranges
        .into_iter()
        .map(|(first_id, count)| FleetSpec {
            targets: c
                .ws_urls
                .iter()
                .map(|url| WsTarget {
                    url: url.clone(),
                    app_key: c.app_key.clone(),
                    app_secret: c.app_secret.clone(),
                    deflate: c.deflate,
                })
                .collect(),
            first_id,
            count,
            rate: rate.map(|r| r / n),
            max_inflight: c.max_inflight,
            sources: sources.clone(),
            plan: plan.clone(),
            mode: mode.clone(),
            connect_timeout_ms: c.connect_timeout.as_millis() as u64,
            subscribe_timeout_ms: c.subscribe_timeout.as_millis() as u64,
            threads: c.worker_threads,
            report_cpu: !in_process,
        })
        .collect();
    Fleets::launch(specs, in_process).await
}

/// All fleet reports added up.
struct Merged {
    snap: Snapshot,
    failures: Failures,
    established: Histogram<u64>,
    subscribed: Histogram<u64>,
    reconnect: Histogram<u64>,
    latency: Histogram<u64>,
    timeline: Timeline,
    seq: SeqTotals,
    first_attempt_ns: u64,
    last_established_ns: u64,
    last_recv_ns: u64,
    first_drop_ns: u64,
    last_drop_ns: u64,
    last_resubscribed_ns: u64,
}

fn merge(reports: &[FleetReport]) -> Merged {
    let mut m = Merged {
        snap: Snapshot::default(),
        failures: Failures::new(),
        established: new_hist(),
        subscribed: new_hist(),
        reconnect: new_hist(),
        latency: new_hist(),
        timeline: Timeline::default(),
        seq: SeqTotals::default(),
        first_attempt_ns: 0,
        last_established_ns: 0,
        last_recv_ns: 0,
        first_drop_ns: 0,
        last_drop_ns: 0,
        last_resubscribed_ns: 0,
    };
    let min_nz = |a: u64, b: u64| match (a, b) {
        (0, x) | (x, 0) => x,
        (x, y) => x.min(y),
    };
    for r in reports {
        m.snap.add(&r.snap);
        merge_failures(&mut m.failures, &r.failures);
        r.established_us.add_to(&mut m.established);
        r.subscribed_us.add_to(&mut m.subscribed);
        r.reconnect_us.add_to(&mut m.reconnect);
        r.latency_us.add_to(&mut m.latency);
        m.timeline.add_data(&r.timeline);
        m.seq.add(&r.seq);
        m.first_attempt_ns = min_nz(m.first_attempt_ns, r.first_attempt_ns);
        m.last_established_ns = m.last_established_ns.max(r.last_established_ns);
        m.last_recv_ns = m.last_recv_ns.max(r.last_recv_ns);
        m.first_drop_ns = min_nz(m.first_drop_ns, r.first_drop_ns);
        m.last_drop_ns = m.last_drop_ns.max(r.last_drop_ns);
        m.last_resubscribed_ns = m.last_resubscribed_ns.max(r.last_resubscribed_ns);
    }
    m
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn per_sec(n: u64, ns: u64) -> f64 {
    if ns == 0 {
        0.0
    } else {
        n as f64 / secs(ns)
    }
}

fn processes_line(f: &Fleets, sources: usize) -> String {
    processes_line_n(f.processes, sources)
}

fn processes_line_n(processes: usize, sources: usize) -> String {
    let p = if processes == 0 {
        "1 (in-process)".to_string()
    } else {
        format!("{processes} worker processes")
    };
    if sources > 0 {
        format!("{p}, client sockets over {sources} source addresses")
    } else {
        p
    }
}

fn connect_progress(s: &Snapshot) -> String {
    format!(
        "established {} subscribed {} failed {}",
        s.established, s.subscribed, s.failed
    )
}

fn common_json(r: &mut Report, c: &Common) {
    r.set("ws_url", c.ws_urls.join(" "));
    r.set("ws_urls", &c.ws_urls);
    r.set("http_url", &c.http_url);
    r.set("app_id", &c.app_id);
    r.set("date_unix", clock::unix_secs());
}

/// The WebSocket URL(s), for the report.
fn ws_urls(c: &Common) -> String {
    c.ws_urls.join(", ")
}

fn cpu_rows(r: &mut Report, label: &str, u: &CpuUsage) {
    r.row(label, u.line());
}

/// `connect`: open N connections at a rate, subscribe, hold.
pub async fn connect(c: &Common, a: &ConnectArgs, ui: &Ui) -> anyhow::Result<Report> {
    let plan = SubPlan {
        kinds: a.kinds.clone(),
        per_conn: a.channels_per_conn,
        channel_count: a.channel_count,
        prefix: "bench-".into(),
    };
    let pid = c.server_pid;
    let rss_before = pid.and_then(clock::rss_bytes);
    let mut fleets = launch(c, a.connections, a.rate, plan, FleetMode::Hold).await?;
    let meter = CpuMeter::start(0, pid);
    ui.phase("connect", Some(a.connections));
    fleets
        .wait_ready(Instant::now() + c.ready_timeout, |s| {
            ui.update(s.subscribed + s.failed, connect_progress(s))
        })
        .await?;
    let connect_cpu = meter.stop(fleets.totals().cpu_ns);
    ui.phase("hold", None);
    let hold_end = Instant::now() + a.hold;
    while Instant::now() < hold_end {
        fleets
            .pump_until((Instant::now() + Duration::from_millis(200)).min(hold_end))
            .await?;
        let s = fleets.totals();
        ui.update(0, format!("active {} dropped {}", s.active, s.dropped));
    }
    let rss_after = pid.and_then(clock::rss_bytes);
    let held = fleets.totals().active;
    let reports = fleets
        .finish(
            FleetCmd::Finish {
                expected: None,
                drain_timeout_ms: 0,
            },
            Instant::now() + Duration::from_secs(60),
            |_| {},
        )
        .await?;
    let m = merge(&reports);

    let mut r = Report::new("connect");
    common_json(&mut r, c);
    let window = m.last_established_ns.saturating_sub(m.first_attempt_ns);
    let hs_rate = per_sec(m.snap.established, window);
    r.row("target", ws_urls(c));
    r.row("processes", processes_line(&fleets, sources(c)?.len()));
    r.row(
        "connections",
        format!(
            "{} requested, {} established, {} subscribed, {} failed",
            a.connections, m.snap.established, m.snap.subscribed, m.snap.failed
        ),
    );
    r.row(
        "subscriptions",
        format!(
            "{} per connection ({}), {} channels per kind",
            a.channels_per_conn,
            a.kinds
                .iter()
                .map(|k| format!("{k:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join("/"),
            a.channel_count
        ),
    );
    r.row(
        "handshakes/s",
        format!(
            "{hs_rate:.0}/s ({} in {:.2} s{})",
            m.snap.established,
            secs(window),
            a.rate
                .map(|r| format!(", target {r}/s"))
                .unwrap_or_default()
        ),
    );
    let est = Percentiles::of(&m.established);
    let sub = Percentiles::of(&m.subscribed);
    r.row("to connection_established", est.line());
    r.row("to subscription_succeeded", sub.line());
    r.row("failures", failures_line(&m.failures));
    r.row(
        "held",
        format!(
            "{held} open for {:.1} s, {} dropped by the server",
            a.hold.as_secs_f64(),
            m.snap.dropped
        ),
    );
    cpu_rows(&mut r, "CPU while connecting", &connect_cpu);
    let mut per_conn = None;
    if let (Some(b), Some(af)) = (rss_before, rss_after) {
        let pc = (af.saturating_sub(b)) as f64 / held.max(1) as f64;
        per_conn = Some(pc);
        r.row(
            "server RSS",
            format!(
                "{} before, {} with {held} connections: {:.2} KB per connection",
                mb(b),
                mb(af),
                pc / 1024.0
            ),
        );
    }
    r.set("connections_requested", a.connections);
    r.set("established", m.snap.established);
    r.set("subscribed", m.snap.subscribed);
    r.set("failed", m.snap.failed);
    r.set("failures", &m.failures);
    r.set("held", held);
    r.set("dropped", m.snap.dropped);
    r.set("handshakes_per_sec", hs_rate);
    r.set("connection_established_ms", &est);
    r.set("subscription_succeeded_ms", &sub);
    r.set("cpu_connect", &connect_cpu);
    r.set("server_rss_before_bytes", rss_before);
    r.set("server_rss_after_bytes", rss_after);
    r.set("server_rss_per_conn_bytes", per_conn);
    r.set("processes", fleets.processes);
    if let Some(p) = &c.plot {
        plot::plot_latency(
            p,
            "connect (time to connection_established)",
            &[],
            &m.established,
        )?;
    }
    Ok(r)
}

struct PubSub {
    subscribers: u64,
    channels: u32,
    size: usize,
    rate: Option<f64>,
    duration: Duration,
    publishers: usize,
    drain_timeout: Duration,
    connect_rate: Option<f64>,
}

async fn pubsub(c: &Common, p: PubSub, ui: &Ui, scenario: &'static str) -> anyhow::Result<Report> {
    let pid = c.server_pid;
    let plan = SubPlan {
        kinds: vec![ChannelKind::Public],
        per_conn: 1,
        channel_count: u64::from(p.channels.max(1)),
        prefix: "bench-".into(),
    };
    let target = Arc::new(
        HttpTarget::resolve(&c.http_url, &c.app_id, &c.app_key, &c.app_secret)
            .await
            .context("HTTP API URL")?,
    );
    let rss_before = pid.and_then(clock::rss_bytes);
    let mut fleets = if p.subscribers > 0 {
        let mut f = launch(c, p.subscribers, p.connect_rate, plan, FleetMode::Hold).await?;
        ui.phase("subscribe", Some(p.subscribers));
        f.wait_ready(Instant::now() + c.ready_timeout, |s| {
            ui.update(s.subscribed + s.failed, connect_progress(s))
        })
        .await?;
        Some(f)
    } else {
        None
    };
    let subscribed = fleets.as_ref().map_or(0, |f| f.totals().subscribed);
    let rss_subscribed = pid.and_then(clock::rss_bytes);

    let workers_cpu = |f: &Option<Fleets>| f.as_ref().map_or(0, |f| f.totals().cpu_ns);
    let meter = CpuMeter::start(workers_cpu(&fleets), pid);
    let progress = Arc::new(PubProgress::default());
    let cfg = PubConfig {
        channels: p.channels.max(1),
        prefix: "bench-".into(),
        size: p.size,
        rate: p.rate,
        duration: p.duration,
        conns: p.publishers.max(1),
    };
    ui.phase("publish", None);
    let mut handle = tokio::spawn(publisher::run(target, cfg, progress.clone()));
    let started = Instant::now();
    let pubr = loop {
        let tick = async {
            match fleets.as_mut() {
                Some(f) => f.pump_for(Duration::from_millis(200)).await,
                None => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok(())
                }
            }
        };
        tokio::select! {
            r = &mut handle => break r.context("publisher task")?,
            r = tick => r?,
        }
        let recv = fleets.as_ref().map_or(0, |f| f.totals().received);
        let ok = progress.ok.load(Relaxed);
        let el = started.elapsed().as_secs_f64().max(0.001);
        ui.update(
            0,
            format!(
                "published {ok} ({:.0}/s), failed {}, deliveries {recv} ({:.0}/s)",
                ok as f64 / el,
                progress.failed.load(Relaxed),
                recv as f64 / el
            ),
        );
    };
    let reports = match fleets.as_mut() {
        Some(f) => {
            ui.phase("drain", None);
            f.finish(
                FleetCmd::Finish {
                    expected: Some(pubr.accepted.clone()),
                    drain_timeout_ms: p.drain_timeout.as_millis() as u64,
                },
                Instant::now() + p.drain_timeout + Duration::from_secs(60),
                |s| ui.update(0, format!("deliveries {}", s.received)),
            )
            .await?
        }
        None => Vec::new(),
    };
    let usage = meter.stop(
        reports
            .iter()
            .map(|r| r.snap.cpu_ns)
            .sum::<u64>()
            .max(workers_cpu(&fleets)),
    );
    let rss_after = pid.and_then(clock::rss_bytes);
    let m = merge(&reports);

    let pub_ns = pubr.end_ns.saturating_sub(pubr.start_ns);
    let pub_rate = per_sec(pubr.ok, pub_ns);
    let http = Percentiles::of(&pubr.http_us);
    let lat = Percentiles::of(&m.latency);
    let delivery_ns = m.last_recv_ns.saturating_sub(pubr.start_ns);
    let deliveries_per_sec = per_sec(m.snap.received, delivery_ns);

    let mut r = Report::new(scenario);
    common_json(&mut r, c);
    r.row("target", format!("{} + {}", ws_urls(c), c.http_url));
    if let Some(f) = &fleets {
        r.row("processes", processes_line(f, sources(c)?.len()));
    }
    r.row(
        "subscribers",
        format!(
            "{subscribed} subscribed of {} ({} failed) over {} channel(s)",
            p.subscribers, m.snap.failed, p.channels
        ),
    );
    r.row(
        "published",
        format!(
            "{} events of {} B accepted ({} failed) in {:.2} s: {pub_rate:.0}/s ({}, {} HTTP connection(s))",
            pubr.ok,
            p.size,
            pubr.failed,
            secs(pub_ns),
            p.rate.map_or("rate max".to_string(), |r| format!("target {r}/s")),
            p.publishers.max(1)
        ),
    );
    r.row("HTTP publish latency", http.line());
    if !pubr.failures.is_empty() {
        r.row("publish failures", failures_line(&pubr.failures));
    }
    if p.subscribers > 0 {
        r.row(
            "deliveries",
            format!(
                "{} received of {} expected: lost {}, duplicated {}, out-of-order {}",
                m.seq.received, m.seq.expected, m.seq.lost, m.seq.duplicated, m.seq.out_of_order
            ),
        );
        r.row(
            "deliveries/s",
            format!(
                "{deliveries_per_sec:.0}/s ({} in {:.2} s, first publish to last receipt)",
                m.snap.received,
                secs(delivery_ns)
            ),
        );
        r.row("publish→receive latency", lat.line());
        r.row("subscriber failures", failures_line(&m.failures));
        if m.snap.dropped > 0 {
            r.row("subscribers dropped", m.snap.dropped.to_string());
        }
    }
    cpu_rows(&mut r, "CPU while publishing", &usage);
    if let (Some(b), Some(s), Some(af)) = (rss_before, rss_subscribed, rss_after) {
        r.row(
            "server RSS",
            format!(
                "{} before, {} subscribed, {} after publishing",
                mb(b),
                mb(s),
                mb(af)
            ),
        );
    }
    r.set("subscribers_requested", p.subscribers);
    r.set("subscribed", subscribed);
    r.set("channels", p.channels);
    r.set("size", p.size);
    r.set("target_rate", p.rate);
    r.set("publishers", p.publishers);
    r.set("published_ok", pubr.ok);
    r.set("published_failed", pubr.failed);
    r.set("publish_failures", &pubr.failures);
    r.set("publish_seconds", secs(pub_ns));
    r.set("publishes_per_sec", pub_rate);
    r.set("http_latency_ms", &http);
    r.set("deliveries", m.snap.received);
    r.set("deliveries_per_sec", deliveries_per_sec);
    r.set("expected", m.seq.expected);
    r.set("received", m.seq.received);
    r.set("lost", m.seq.lost);
    r.set("duplicated", m.seq.duplicated);
    r.set("out_of_order", m.seq.out_of_order);
    r.set("latency_ms", &lat);
    r.set("subscriber_failures", &m.failures);
    r.set("subscribers_dropped", m.snap.dropped);
    r.set("cpu", &usage);
    r.set("server_rss_before_bytes", rss_before);
    r.set("server_rss_subscribed_bytes", rss_subscribed);
    r.set("server_rss_after_bytes", rss_after);
    if let Some(path) = &c.plot {
        let start_sec = pubr.start_ns / 1_000_000_000;
        let points: Vec<plot::TimePoint> = m
            .timeline
            .0
            .iter()
            .filter(|(s, _)| **s >= start_sec)
            .map(|(s, h)| {
                let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                (
                    (s - start_sec) as f64 + 0.5,
                    ms(0.5),
                    ms(0.99),
                    h.max() as f64 / 1000.0,
                )
            })
            .collect();
        if p.subscribers > 0 {
            plot::plot_latency(path, scenario, &points, &m.latency)?;
        } else {
            plot::plot_latency(
                path,
                &format!("{scenario} (HTTP latency)"),
                &[],
                &pubr.http_us,
            )?;
        }
    }
    Ok(r)
}

pub async fn broadcast(c: &Common, a: &BroadcastArgs, ui: &Ui) -> anyhow::Result<Report> {
    pubsub(
        c,
        PubSub {
            subscribers: a.subscribers,
            channels: a.channels,
            size: a.size,
            rate: a.rate.per_sec(),
            duration: a.duration,
            publishers: a.publishers,
            drain_timeout: a.drain_timeout,
            connect_rate: a.connect_rate,
        },
        ui,
        "broadcast",
    )
    .await
}

pub async fn publish(c: &Common, a: &PublishArgs, ui: &Ui) -> anyhow::Result<Report> {
    pubsub(
        c,
        PubSub {
            subscribers: a.subscribers,
            channels: a.channels,
            size: a.size,
            rate: a.rate.per_sec(),
            duration: a.duration,
            publishers: a.concurrency,
            drain_timeout: a.drain_timeout,
            connect_rate: None,
        },
        ui,
        "publish",
    )
    .await
}

fn churn_plan(a: &ChurnArgs) -> SubPlan {
    SubPlan {
        kinds: a.kinds.clone(),
        per_conn: a.channels_per_conn,
        channel_count: a.channel_count,
        prefix: "bench-".into(),
    }
}

/// Samples the server's RSS over time.
struct RssSampler {
    pid: Option<u32>,
    t0: u64,
    interval: Duration,
    next: Instant,
    points: Vec<(f64, u64)>,
}

impl RssSampler {
    fn new(pid: Option<u32>, interval: Duration) -> RssSampler {
        let mut s = RssSampler {
            pid,
            t0: now_ns(),
            interval,
            next: Instant::now(),
            points: Vec::new(),
        };
        s.poll();
        s
    }

    fn poll(&mut self) {
        if Instant::now() < self.next {
            return;
        }
        self.next = Instant::now() + self.interval;
        if let Some(rss) = self.pid.and_then(clock::rss_bytes) {
            self.points.push((secs(now_ns() - self.t0), rss));
        }
    }
}

/// `churn`: connect/subscribe/disconnect loops, the server's RSS over time.
pub async fn churn(c: &Common, a: &ChurnArgs, ui: &Ui) -> anyhow::Result<Report> {
    let pid = c.server_pid;
    let mut sampler = RssSampler::new(pid, a.sample_interval);
    let baseline = sampler.points.first().map(|p| p.1);
    let mode = FleetMode::Churn {
        cycles: a.cycles,
        hold_ms: a.hold.as_millis() as u64,
    };
    let rounds = a.rounds.max(1);
    let total = a.connections * a.cycles * rounds;
    let meter = CpuMeter::start(0, pid);
    let mut reports = Vec::new();
    let mut round_final = Vec::new();
    let mut processes = 0;
    let mut churn_time = Duration::ZERO;
    ui.phase("churn", Some(total));
    for _round in 0..rounds {
        let mut fleets = launch(c, a.connections, a.rate, churn_plan(a), mode.clone()).await?;
        processes = fleets.processes;
        let done_before: u64 = reports
            .iter()
            .map(|r: &FleetReport| r.snap.cycles + r.snap.failed)
            .sum();
        let round_start = Instant::now();
        let deadline = round_start + c.ready_timeout;
        while !fleets.all_ready() {
            if Instant::now() >= deadline {
                bail!("churn did not finish before --ready-timeout");
            }
            fleets.pump_for(Duration::from_millis(100)).await?;
            sampler.poll();
            let s = fleets.totals();
            ui.update(
                done_before + s.cycles + s.failed,
                format!("cycles {} failed {} open {}", s.cycles, s.failed, s.active),
            );
        }
        churn_time += round_start.elapsed();
        reports.extend(
            fleets
                .finish(
                    FleetCmd::Finish {
                        expected: None,
                        drain_timeout_ms: 0,
                    },
                    Instant::now() + Duration::from_secs(60),
                    |_| {},
                )
                .await?,
        );
        let settle_end = Instant::now() + a.settle;
        while Instant::now() < settle_end {
            tokio::time::sleep(a.sample_interval.min(settle_end - Instant::now())).await;
            sampler.next = Instant::now();
            sampler.poll();
        }
        round_final.push(sampler.points.last().map(|p| p.1));
    }
    let usage = meter.stop(reports.iter().map(|r| r.snap.cpu_ns).sum());
    let m = merge(&reports);
    let peak = sampler.points.iter().map(|p| p.1).max();
    let final_rss = sampler.points.last().map(|p| p.1);
    let first_round = round_final.first().copied().flatten();
    let mut r = Report::new("churn");
    common_json(&mut r, c);
    let cycles_per_sec = m.snap.cycles as f64 / churn_time.as_secs_f64().max(1e-9);
    r.row("target", ws_urls(c));
    r.row("processes", processes_line_n(processes, sources(c)?.len()));
    r.row(
        "cycles",
        format!(
            "{} of {total} completed ({rounds} round(s) × {} loops × {}), {} failed: {cycles_per_sec:.0} cycles/s",
            m.snap.cycles, a.connections, a.cycles, m.snap.failed
        ),
    );
    let est = Percentiles::of(&m.established);
    let sub = Percentiles::of(&m.subscribed);
    r.row("to connection_established", est.line());
    r.row("to subscription_succeeded", sub.line());
    r.row("failures", failures_line(&m.failures));
    cpu_rows(&mut r, "CPU (churn and settle)", &usage);
    let mut ratio = None;
    if let (Some(b), Some(p), Some(f)) = (baseline, peak, final_rss) {
        let q = f as f64 / b as f64;
        ratio = Some(q);
        r.row(
            "server RSS",
            format!(
                "{} before, {} peak, {} after {:.1} s settle: {:+.1}% vs before",
                mb(b),
                mb(p),
                mb(f),
                a.settle.as_secs_f64(),
                (q - 1.0) * 100.0
            ),
        );
    }
    let mut steady = None;
    if let (Some(f1), Some(f)) = (first_round, final_rss) {
        if rounds > 1 {
            let q = f as f64 / f1 as f64;
            steady = Some(q);
            r.row(
                "server RSS per round",
                format!(
                    "{}: last round {:+.1}% vs first round",
                    round_final
                        .iter()
                        .map(|x| x.map_or("-".into(), mb))
                        .collect::<Vec<_>>()
                        .join(", "),
                    (q - 1.0) * 100.0
                ),
            );
        }
    }
    r.set("loops", a.connections);
    r.set("cycles_per_loop", a.cycles);
    r.set("cycles_completed", m.snap.cycles);
    r.set("failed", m.snap.failed);
    r.set("failures", &m.failures);
    r.set("cycles_per_sec", cycles_per_sec);
    r.set("connection_established_ms", &est);
    r.set("subscription_succeeded_ms", &sub);
    r.set("cpu", &usage);
    r.set("server_rss_before_bytes", baseline);
    r.set("server_rss_peak_bytes", peak);
    r.set("server_rss_final_bytes", final_rss);
    r.set("server_rss_final_over_before", ratio);
    r.set("rounds", rounds);
    r.set("server_rss_after_each_round_bytes", &round_final);
    r.set("server_rss_last_over_first_round", steady);
    r.set("server_rss_series", &sampler.points);
    if let Some(path) = &c.plot {
        let pts: Vec<(f64, f64)> = sampler
            .points
            .iter()
            .map(|(t, b)| (*t, *b as f64 / 1_048_576.0))
            .collect();
        plot::plot_series(path, "churn: server RSS over time", "RSS, MB", &pts)?;
    }
    Ok(r)
}

/// `churn --storm`: hold N sockets; when the server drops them, time the reconnection.
pub async fn storm(c: &Common, a: &ChurnArgs, ui: &Ui) -> anyhow::Result<Report> {
    let mode = FleetMode::Storm {
        jitter_ms: a.reconnect_jitter.as_millis() as u64,
    };
    let mut fleets = launch(c, a.connections, a.rate, churn_plan(a), mode).await?;
    ui.phase("connect", Some(a.connections));
    fleets
        .wait_ready(Instant::now() + c.ready_timeout, |s| {
            ui.update(s.subscribed + s.failed, connect_progress(s))
        })
        .await?;
    let held = fleets.totals().active;
    if held == 0 {
        bail!("no connection could be established");
    }
    ui.phase("storm", Some(held));
    ui.println(&format!(
        "herald-bench: holding {held} connections; waiting for the server to drop them (drain or restart it)"
    ));
    let deadline = Instant::now() + a.storm_timeout;
    let mut all_back = false;
    while Instant::now() < deadline {
        fleets.pump_for(Duration::from_millis(50)).await?;
        let s = fleets.totals();
        ui.update(
            s.dropped_conns,
            format!(
                "dropped {} active {} reconnects {}",
                s.dropped_conns, s.active, s.reconnects
            ),
        );
        if s.dropped_conns >= held && s.active >= held {
            all_back = true;
            break;
        }
    }
    let reports = fleets
        .finish(
            FleetCmd::Finish {
                expected: None,
                drain_timeout_ms: 0,
            },
            Instant::now() + Duration::from_secs(60),
            |_| {},
        )
        .await?;
    let m = merge(&reports);
    let recover_from_first = m.last_resubscribed_ns.saturating_sub(m.first_drop_ns);
    let recover_from_last = m.last_resubscribed_ns.saturating_sub(m.last_drop_ns);
    let rec = Percentiles::of(&m.reconnect);

    let mut r = Report::new("churn --storm");
    common_json(&mut r, c);
    r.row("target", ws_urls(c));
    r.row("processes", processes_line(&fleets, sources(c)?.len()));
    r.row(
        "held",
        format!(
            "{held} subscribed connections ({} failed to connect initially)",
            a.connections - held
        ),
    );
    r.row(
        "dropped by the server",
        format!(
            "{} connections ({} drops) over {:.2} s",
            m.snap.dropped_conns,
            m.snap.dropped,
            secs(m.last_drop_ns.saturating_sub(m.first_drop_ns))
        ),
    );
    r.row(
        "all reconnected",
        if all_back {
            format!(
                "yes: {:.2} s after the first drop, {:.2} s after the last",
                secs(recover_from_first),
                secs(recover_from_last)
            )
        } else {
            format!(
                "NO: {} of {held} active when --storm-timeout ({:.0} s) expired",
                m.snap.active,
                a.storm_timeout.as_secs_f64()
            )
        },
    );
    r.row("drop → resubscribed", rec.line());
    r.row("reconnect attempts", m.snap.reconnects.to_string());
    r.row("failures", failures_line(&m.failures));
    r.set("held", held);
    r.set("dropped_conns", m.snap.dropped_conns);
    r.set("drops", m.snap.dropped);
    r.set("all_reconnected", all_back);
    r.set(
        "seconds_first_drop_to_all_resubscribed",
        all_back.then(|| secs(recover_from_first)),
    );
    r.set(
        "seconds_last_drop_to_all_resubscribed",
        all_back.then(|| secs(recover_from_last)),
    );
    r.set("reconnect_ms", &rec);
    r.set("reconnect_attempts", m.snap.reconnects);
    r.set("failures", &m.failures);
    if let Some(path) = &c.plot {
        plot::plot_latency(path, "storm (drop → resubscribed)", &[], &m.reconnect)?;
    }
    Ok(r)
}
