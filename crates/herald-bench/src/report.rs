//! The summary table and the `--json` document of a run.

use serde::Serialize;

use crate::clock::{self, now_ns, ServerSample};

pub struct Report {
    pub scenario: &'static str,
    pub rows: Vec<(String, String)>,
    pub json: serde_json::Value,
}

impl Report {
    pub fn new(scenario: &'static str) -> Report {
        Report {
            scenario,
            rows: Vec::new(),
            json: serde_json::json!({ "scenario": scenario }),
        }
    }

    pub fn row(&mut self, label: &str, value: impl Into<String>) {
        self.rows.push((label.to_string(), value.into()));
    }

    pub fn set(&mut self, key: &str, value: impl Serialize) {
        self.json[key] = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    }

    pub fn table(&self) -> String {
        let width = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        let mut s = format!("herald-bench {}\n", self.scenario);
        s.push_str(&"-".repeat(width + 40));
        s.push('\n');
        for (l, v) in &self.rows {
            s.push_str(&format!("{l:<width$}  {v}\n"));
        }
        s
    }

    /// Prints the table (stdout, or stderr when `json` puts the JSON document on stdout).
    pub fn print(&self, json: bool) {
        if json {
            eprint!("{}", self.table());
            println!(
                "{}",
                serde_json::to_string_pretty(&self.json).unwrap_or_default()
            );
        } else {
            print!("{}", self.table());
        }
    }
}

/// CPU used by the tool (this process plus its workers) and the server over a window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuUsage {
    pub wall_s: f64,
    pub tool_cpu_s: f64,
    /// Tool CPU as a share of one core (1.0 = one core busy).
    pub tool_cores: f64,
    pub server_cpu_s: Option<f64>,
    pub server_cores: Option<f64>,
    /// The whole machine's busy CPU over the window, in cores.
    pub machine_cores: Option<f64>,
    /// Busy CPU of everything else on the machine (not the tool, not the server), in cores.
    pub other_cores: Option<f64>,
}

impl CpuUsage {
    pub fn line(&self) -> String {
        let mut s = format!(
            "tool {:.2} CPU-s ({:.0}% of a core)",
            self.tool_cpu_s,
            self.tool_cores * 100.0
        );
        if let (Some(cs), Some(cc)) = (self.server_cpu_s, self.server_cores) {
            s.push_str(&format!(
                ", server {:.2} CPU-s ({:.0}% of a core)",
                cs,
                cc * 100.0
            ));
        }
        if let Some(o) = self.other_cores {
            s.push_str(&format!(", other processes {:.0}%", o * 100.0));
        }
        s.push_str(&format!(" over {:.2} s", self.wall_s));
        s
    }
}

pub struct CpuMeter {
    t0: u64,
    self0: u64,
    workers0: u64,
    server0: ServerSample,
    machine0: Option<u64>,
    pid: Option<u32>,
}

impl CpuMeter {
    pub fn start(workers_cpu_ns: u64, pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            t0: now_ns(),
            self0: clock::cpu_ns(None).unwrap_or(0),
            workers0: workers_cpu_ns,
            server0: clock::sample_server(pid),
            machine0: clock::machine_busy_ns(),
            pid,
        }
    }

    pub fn stop(&self, workers_cpu_ns: u64) -> CpuUsage {
        let wall_s = (now_ns() - self.t0) as f64 / 1e9;
        let tool = clock::cpu_ns(None).unwrap_or(0).saturating_sub(self.self0)
            + workers_cpu_ns.saturating_sub(self.workers0);
        let tool_cpu_s = tool as f64 / 1e9;
        let server1 = clock::sample_server(self.pid);
        let server_cpu_s = match (self.server0.cpu_ns, server1.cpu_ns) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e9),
            _ => None,
        };
        let per = |x: f64| if wall_s > 0.0 { x / wall_s } else { 0.0 };
        let machine_cores = match (self.machine0, clock::machine_busy_ns()) {
            (Some(a), Some(b)) => Some(per(b.saturating_sub(a) as f64 / 1e9)),
            _ => None,
        };
        let tool_cores = per(tool_cpu_s);
        let server_cores = server_cpu_s.map(per);
        CpuUsage {
            wall_s,
            tool_cpu_s,
            tool_cores,
            server_cpu_s,
            server_cores,
            machine_cores,
            other_cores: machine_cores
                .map(|m| (m - tool_cores - server_cores.unwrap_or(0.0)).max(0.0)),
        }
    }
}

pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_048_576.0)
}

pub fn failures_line(f: &crate::stats::Failures) -> String {
    if f.is_empty() {
        return "none".to_string();
    }
    let mut v: Vec<_> = f.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    v.iter()
        .map(|(k, n)| format!("{n} × {k}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_labels() {
        let mut r = Report::new("connect");
        r.row("a", "1");
        r.row("longer label", "2");
        r.set("x", 5);
        let t = r.table();
        assert!(t.contains("a             1\n"), "{t}");
        assert_eq!(r.json["x"], 5);
        assert_eq!(r.json["scenario"], "connect");
    }
}
