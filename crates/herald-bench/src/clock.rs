//! Clocks and /proc sampling (CPU time, RSS) for the tool itself and the server under test.

use rustix::time::{clock_gettime, ClockId};

/// Nanoseconds on `CLOCK_MONOTONIC`. The clock is system wide on Linux, so values taken in
/// different processes on the same host (the publisher, the worker processes) are comparable.
pub fn now_ns() -> u64 {
    let ts = clock_gettime(ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Seconds since the Unix epoch (for the signed HTTP API's `auth_timestamp`).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

fn stat_path(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    }
}

/// user + system CPU time of a process (all its threads) in nanoseconds.
pub fn cpu_ns(pid: Option<u32>) -> Option<u64> {
    let text = std::fs::read_to_string(stat_path(pid)).ok()?;
    parse_stat_cpu_ticks(&text).map(|t| t * 1_000_000_000 / ticks_per_second())
}

/// Parses utime + stime (fields 14 and 15) out of a `/proc/PID/stat` line.
pub fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // rest starts with field 3 (state); utime is field 14 => index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of a process in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&text)
}

pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time the whole machine spent busy (all CPUs, everything but idle and iowait), in ns.
pub fn machine_busy_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat_busy(&text).map(|t| t * 1_000_000_000 / ticks_per_second())
}

pub fn parse_proc_stat_busy(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8) // user nice system idle iowait irq softirq steal (guest is inside user)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = v.iter().sum();
    Some(total - v.get(3)? - v.get(4)?)
}

/// A snapshot of the server process, when `--server-pid` was given.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ServerSample {
    pub at_ns: u64,
    pub cpu_ns: Option<u64>,
    pub rss_bytes: Option<u64>,
}

pub fn sample_server(pid: Option<u32>) -> ServerSample {
    ServerSample {
        at_ns: now_ns(),
        cpu_ns: pid.and_then(|p| cpu_ns(Some(p))),
        rss_bytes: pid.and_then(rss_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let line = "1234 (my (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(line), Some(300));
    }

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\therald\nVmPeak:\t  100 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
    }

    #[test]
    fn parses_proc_stat() {
        let text = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_proc_stat_busy(text), Some(100 + 5 + 50 + 3 + 2 + 1));
        assert!(machine_busy_ns().is_some());
    }

    #[test]
    fn own_process_is_measurable() {
        assert!(cpu_ns(None).is_some());
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        let a = now_ns();
        assert!(now_ns() >= a);
    }
}
