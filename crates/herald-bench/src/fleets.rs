//! The parent's view of its fleets: one in-process fleet, or worker processes (the tool
//! re-executed as `herald-bench worker`, speaking JSON lines: the spec and commands on stdin,
//! [`FleetMsg`]s on stdout) when the connections don't fit in one process's file limit.

use std::io::{BufRead, Write};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::fleet::{run_fleet, FleetCmd, FleetMsg, FleetReport, FleetSpec, Snapshot};

pub struct Fleets {
    cmd_txs: Vec<mpsc::UnboundedSender<FleetCmd>>,
    rx: mpsc::UnboundedReceiver<(usize, FleetMsg)>,
    snaps: Vec<Snapshot>,
    ready: Vec<bool>,
    reports: Vec<Option<FleetReport>>,
    _children: Vec<Child>,
    pub processes: usize,
}

impl Fleets {
    /// Starts the fleets: in this process when `in_process`, otherwise one worker process each.
    pub async fn launch(specs: Vec<FleetSpec>, in_process: bool) -> anyhow::Result<Fleets> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut cmd_txs = Vec::new();
        let mut children = Vec::new();
        let n = specs.len();
        for (idx, spec) in specs.into_iter().enumerate() {
            let (ctx, crx) = mpsc::unbounded_channel();
            cmd_txs.push(ctx);
            if in_process {
                let (otx, mut orx) = mpsc::unbounded_channel();
                tokio::spawn(run_fleet(spec, crx, otx));
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(m) = orx.recv().await {
                        if tx.send((idx, m)).is_err() {
                            break;
                        }
                    }
                });
            } else {
                children.push(spawn_worker(idx, spec, crx, tx.clone()).await?);
            }
        }
        Ok(Fleets {
            cmd_txs,
            rx,
            snaps: vec![Snapshot::default(); n],
            ready: vec![false; n],
            reports: vec![None; n],
            _children: children,
            processes: if in_process { 0 } else { n },
        })
    }

    fn handle(&mut self, idx: usize, msg: FleetMsg) -> anyhow::Result<()> {
        if std::env::var_os("HERALD_BENCH_DEBUG").is_some() {
            eprintln!("fleet {idx}: {msg:?}");
        }
        match msg {
            FleetMsg::Progress { snap } => self.snaps[idx] = snap,
            FleetMsg::Ready { snap } => {
                self.snaps[idx] = snap;
                self.ready[idx] = true;
            }
            FleetMsg::Result { report } => {
                self.snaps[idx] = report.snap;
                self.reports[idx] = Some(*report);
            }
            FleetMsg::Error { message } => bail!("fleet {idx}: {message}"),
        }
        Ok(())
    }

    /// Sum of the latest snapshots.
    pub fn totals(&self) -> Snapshot {
        let mut t = Snapshot::default();
        for s in &self.snaps {
            t.add(s);
        }
        t
    }

    /// Processes messages until `until`, or until a fleet becomes ready or reports.
    pub async fn pump_until(&mut self, until: Instant) -> anyhow::Result<()> {
        loop {
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Err(_) => return Ok(()),
                Ok(None) if self.reports.iter().all(|r| r.is_some()) => return Ok(()),
                Ok(None) => bail!("all fleets ended without a report"),
                Ok(Some((i, m))) => {
                    // Return early on a state change, so callers see it at once.
                    let change = matches!(m, FleetMsg::Ready { .. } | FleetMsg::Result { .. });
                    self.handle(i, m)?;
                    if change {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Processes messages for (at most) `d`.
    pub async fn pump_for(&mut self, d: Duration) -> anyhow::Result<()> {
        self.pump_until(Instant::now() + d).await
    }

    pub fn all_ready(&self) -> bool {
        self.ready.iter().all(|r| *r)
    }

    /// Waits for every fleet to be ready, calling `tick` with the totals as they change.
    pub async fn wait_ready(
        &mut self,
        deadline: Instant,
        mut tick: impl FnMut(&Snapshot),
    ) -> anyhow::Result<()> {
        while !self.all_ready() {
            if Instant::now() >= deadline {
                bail!("fleets not ready before the deadline");
            }
            self.pump_for(Duration::from_millis(100)).await?;
            tick(&self.totals());
        }
        Ok(())
    }

    /// Sends `cmd` to every fleet and collects the reports.
    pub async fn finish(
        &mut self,
        cmd: FleetCmd,
        deadline: Instant,
        mut tick: impl FnMut(&Snapshot),
    ) -> anyhow::Result<Vec<FleetReport>> {
        for tx in &self.cmd_txs {
            let _ = tx.send(cmd.clone());
        }
        while self.reports.iter().any(|r| r.is_none()) {
            if Instant::now() >= deadline {
                bail!("fleets did not report before the deadline");
            }
            self.pump_for(Duration::from_millis(100)).await?;
            tick(&self.totals());
        }
        Ok(self
            .reports
            .iter_mut()
            .map(|r| r.take().expect("report"))
            .collect())
    }
}

async fn spawn_worker(
    idx: usize,
    spec: FleetSpec,
    mut cmds: mpsc::UnboundedReceiver<FleetCmd>,
    tx: mpsc::UnboundedSender<(usize, FleetMsg)>,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("locating own executable")?;
    let mut child = Command::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawning worker process")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = serde_json::to_string(&spec)?;
    line.push('\n');
    stdin.write_all(line.as_bytes()).await?;
    stdin.flush().await?;
    tokio::spawn(async move {
        while let Some(cmd) = cmds.recv().await {
            let Ok(mut line) = serde_json::to_string(&cmd) else {
                break;
            };
            line.push('\n');
            if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut got_result = false;
        while let Ok(Some(l)) = lines.next_line().await {
            match serde_json::from_str::<FleetMsg>(&l) {
                Ok(m) => {
                    got_result |= matches!(m, FleetMsg::Result { .. });
                    let _ = tx.send((idx, m));
                }
                Err(e) => {
                    let _ = tx.send((
                        idx,
                        FleetMsg::Error {
                            message: format!("bad line from worker: {e}"),
                        },
                    ));
                }
            }
        }
        if !got_result {
            let _ = tx.send((
                idx,
                FleetMsg::Error {
                    message: "worker process exited without a report".into(),
                },
            ));
        }
    });
    Ok(child)
}

/// Entry point of `herald-bench worker`: reads the spec from stdin, runs the fleet on its own
/// runtime, forwards commands from stdin and writes messages to stdout.
pub fn worker_main() -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut first = String::new();
    stdin.lock().read_line(&mut first)?;
    let spec: FleetSpec = serde_json::from_str(&first).context("worker spec")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(spec.threads.max(1))
        .enable_all()
        .build()?;
    let (ctx, crx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<FleetCmd>(&line) {
                Ok(cmd) => {
                    if ctx.send(cmd).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("herald-bench worker: bad command: {e}"),
            }
        }
    });
    rt.block_on(async move {
        let (otx, mut orx) = mpsc::unbounded_channel();
        let fleet = tokio::spawn(run_fleet(spec, crx, otx));
        let mut out = std::io::stdout().lock();
        while let Some(m) = orx.recv().await {
            let line = serde_json::to_string(&m)?;
            writeln!(out, "{line}")?;
            out.flush()?;
            if matches!(m, FleetMsg::Result { .. } | FleetMsg::Error { .. }) {
                break;
            }
        }
        fleet.abort();
        Ok::<_, anyhow::Error>(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Splits `total` connections into fleets of at most `per_process`.
/// Returns `(first_id, count)` ranges and whether they run in this process.
pub fn split(total: u64, per_process: u64, workers: Option<usize>) -> (Vec<(u64, u64)>, bool) {
    let per_process = per_process.max(1);
    let (n, in_process) = match workers {
        Some(w) if w >= 1 => (w as u64, false),
        _ if total <= per_process => (1, true),
        _ => (total.div_ceil(per_process), false),
    };
    let n = n.min(total.max(1));
    let base = total / n;
    let extra = total % n;
    let mut ranges = Vec::new();
    let mut first = 0;
    for i in 0..n {
        let count = base + u64::from(i < extra);
        ranges.push((first, count));
        first += count;
    }
    (ranges, in_process)
}

pub fn no_fleet_error() -> anyhow::Error {
    anyhow!("no connections requested")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_into_processes() {
        assert_eq!(split(300, 18000, None), (vec![(0, 300)], true));
        let (r, local) = split(19000, 18000, None);
        assert!(!local);
        assert_eq!(r, vec![(0, 9500), (9500, 9500)]);
        let (r, local) = split(10, 100, Some(3));
        assert!(!local);
        assert_eq!(r, vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 10);
    }

    /// Connections per target URL of each fleet: `counts[fleet][target]`.
    fn per_target(ranges: &[(u64, u64)], targets: usize) -> Vec<Vec<u64>> {
        ranges
            .iter()
            .map(|&(first, count)| {
                let mut c = vec![0; targets];
                for id in first..first + count {
                    c[crate::fleet::target_index(id, targets)] += 1;
                }
                c
            })
            .collect()
    }

    #[test]
    fn assigns_targets_round_robin_within_every_process() {
        use crate::fleet::target_index;
        assert_eq!(
            (0..7).map(|id| target_index(id, 3)).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2, 0]
        );
        assert_eq!(target_index(5, 1), 0);
        assert_eq!(target_index(5, 0), 0);

        // 3 nodes × 19,000 over 4 workers: each worker stays under the per-process cap and
        // holds a third of its connections on each node; each node gets 19,000.
        let (r, local) = split(57_000, 18_000, Some(4));
        assert!(!local);
        assert!(r.iter().all(|&(_, n)| n <= 18_000));
        let counts = per_target(&r, 3);
        for (f, c) in counts.iter().enumerate() {
            let (min, max) = (c.iter().min().unwrap(), c.iter().max().unwrap());
            assert!(max - min <= 1, "fleet {f}: {c:?}");
        }
        let totals: Vec<u64> = (0..3).map(|t| counts.iter().map(|c| c[t]).sum()).collect();
        assert_eq!(totals, [19_000, 19_000, 19_000]);

        // Without --workers, the cap alone decides the number of processes.
        let (r, _) = split(57_000, 18_000, None);
        assert_eq!(r.len(), 4);
        let totals: Vec<u64> = (0..3)
            .map(|t| per_target(&r, 3).iter().map(|c| c[t]).sum())
            .collect();
        assert_eq!(totals, [19_000, 19_000, 19_000]);

        // Uneven: 10 connections over 3 nodes in one process.
        let (r, local) = split(10, 18_000, None);
        assert!(local);
        assert_eq!(per_target(&r, 3), [vec![4, 3, 3]]);
    }
}
