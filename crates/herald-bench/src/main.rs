//! `herald-bench`: a load generator for any Pusher Channels protocol v7 compatible server
//! (herald, Soketi, ...). It speaks only the public protocol: WebSocket clients with
//! pusher-js style URLs, and the signed HTTP API.

mod clock;
mod fleet;
mod fleets;
mod http;
mod plot;
mod publisher;
mod pusher;
mod report;
mod scenarios;
mod sign;
mod stats;
mod ui;
mod wsclient;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::pusher::ChannelKind;

#[derive(Parser, Debug)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator for Pusher Channels protocol v7 compatible servers",
    long_about = "Load generator for Pusher Channels protocol v7 compatible servers (herald, \
                  Soketi, ...). It uses only the public protocol: WebSocket connections with \
                  pusher-js style URLs and the signed HTTP API."
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone, Debug)]
pub struct Common {
    /// WebSocket base URL of the server. Repeatable: connections are assigned round-robin to
    /// the URLs (e.g. the nodes of a cluster), in every worker process alike.
    #[arg(long = "ws-url", global = true, default_value = "ws://127.0.0.1:6001")]
    pub ws_urls: Vec<String>,
    /// HTTP API base URL of the server (the publisher uses this one node).
    #[arg(long, global = true, default_value = "http://127.0.0.1:6001")]
    pub http_url: String,
    #[arg(long, global = true, default_value = "1")]
    pub app_id: String,
    #[arg(long, global = true, default_value = "app-key")]
    pub app_key: String,
    #[arg(long, global = true, default_value = "app-secret")]
    pub app_secret: String,
    /// PID of the server process: report its RSS (/proc/PID/status) and CPU (/proc/PID/stat).
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Print the report as JSON on stdout (the table goes to stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// Draw latency over time and the latency distribution (churn: server RSS) to a PNG.
    #[arg(long, global = true, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Runtime threads of this process [default: number of CPUs].
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Above this many connections, run them in worker processes of at most this many each
    /// (the open-file limit is per process).
    #[arg(long, global = true, default_value_t = 18_000)]
    pub max_conns_per_process: u64,
    /// Force this many worker processes for the connections.
    #[arg(long, global = true)]
    pub workers: Option<usize>,
    /// Runtime threads of each worker process.
    #[arg(long, global = true, default_value_t = 1)]
    pub worker_threads: usize,
    /// Spread client sockets over 127.0.0.1..127.0.0.N (only when the target is loopback)
    /// [default: 8 for a loopback target].
    #[arg(long, global = true)]
    pub source_ips: Option<usize>,
    /// Explicit source address(es) for client sockets (repeatable); overrides --source-ips.
    #[arg(long = "source-addr", global = true)]
    pub source_addrs: Vec<IpAddr>,
    /// WebSocket handshakes in flight at once (per process).
    #[arg(long, global = true, default_value_t = 512)]
    pub max_inflight: usize,
    /// Timeout for TCP + WebSocket upgrade + connection_established.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Timeout for all subscription_succeeded of a connection.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub subscribe_timeout: Duration,
    /// Offer permessage-deflate (as browsers do: `permessage-deflate; client_max_window_bits`)
    /// and inflate what the server sends compressed.
    #[arg(long, global = true)]
    pub deflate: bool,
    /// Give up when the connections are not all up after this long.
    #[arg(long, global = true, default_value = "300s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Open N connections (at a rate), subscribe them, hold; report handshakes/s,
    /// time to connection_established, failures and server RSS per connection.
    Connect(ConnectArgs),
    /// N subscribers over C channels; publish events of S bytes at R/s (or max) through the
    /// HTTP API; report publish→receive latency, deliveries/s, lost/duplicated/out-of-order.
    Broadcast(BroadcastArgs),
    /// Signed HTTP API throughput and latency with K concurrent keep-alive clients.
    Publish(PublishArgs),
    /// Connect/subscribe/disconnect loops (server RSS over time), or --storm: hold N
    /// sockets and time their reconnection after the server drops them all.
    Churn(ChurnArgs),
    /// Internal: run a fleet of connections for a parent process (JSON lines on stdio).
    #[command(hide = true)]
    Worker,
}

#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Connections to open.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: u64,
    /// Connection starts per second [default: as fast as --max-inflight allows].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Channel kinds, cycled over the subscriptions: public, private, presence.
    #[arg(long, value_delimiter = ',', default_value = "public")]
    pub kinds: Vec<ChannelKind>,
    /// Subscriptions per connection.
    #[arg(long, default_value_t = 1)]
    pub channels_per_conn: u32,
    /// Distinct channels per kind.
    #[arg(long, default_value_t = 100)]
    pub channel_count: u64,
    /// How long to hold the connections once all are up.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub hold: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct BroadcastArgs {
    /// Subscribers.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub subscribers: u64,
    /// Channels the subscribers are spread over (public channels `bench-0` ...).
    #[arg(short = 'c', long, default_value_t = 1)]
    pub channels: u32,
    /// Size of each event's data in bytes.
    #[arg(short = 's', long, default_value_t = 1024)]
    pub size: usize,
    /// Events per second (paced, open loop), or `max`.
    #[arg(short = 'r', long, default_value = "10")]
    pub rate: Rate,
    /// Publishing time.
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Publisher HTTP connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// After publishing, wait at most this long for deliveries to complete.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Subscriber connection starts per second [default: unlimited].
    #[arg(long)]
    pub connect_rate: Option<f64>,
}

#[derive(Args, Debug, Clone)]
pub struct PublishArgs {
    /// Concurrent keep-alive HTTP clients.
    #[arg(short = 'k', long, default_value_t = 32)]
    pub concurrency: usize,
    /// Publishing time.
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Size of each event's data in bytes.
    #[arg(short = 's', long, default_value_t = 100)]
    pub size: usize,
    /// WebSocket subscribers of the channel(s) (0: HTTP only).
    #[arg(short = 'n', long, default_value_t = 1)]
    pub subscribers: u64,
    /// Channels published to.
    #[arg(short = 'c', long, default_value_t = 1)]
    pub channels: u32,
    /// Requests per second (paced), or `max`.
    #[arg(short = 'r', long, default_value = "max")]
    pub rate: Rate,
    /// After publishing, wait at most this long for deliveries to complete.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    /// Concurrent connection loops (with --storm: sockets held).
    #[arg(short = 'n', long, default_value_t = 100)]
    pub connections: u64,
    /// Connect/subscribe/disconnect cycles per loop.
    #[arg(long, default_value_t = 10)]
    pub cycles: u64,
    /// Repeat the whole churn this many times, reading the server RSS after each round
    /// (growth from the first to the last round points at a leak, not allocator warm-up).
    #[arg(long, default_value_t = 1)]
    pub rounds: u64,
    /// Time each connection stays subscribed per cycle.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub hold: Duration,
    /// Loop starts per second [default: unlimited].
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long, value_delimiter = ',', default_value = "public")]
    pub kinds: Vec<ChannelKind>,
    #[arg(long, default_value_t = 1)]
    pub channels_per_conn: u32,
    #[arg(long, default_value_t = 100)]
    pub channel_count: u64,
    /// Sample the server RSS this often (needs --server-pid).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub sample_interval: Duration,
    /// After the loops, keep sampling the server RSS this long before the final reading.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Storm mode: hold N sockets, wait until the server drops them (drain, restart) and
    /// measure the time until all are reconnected and resubscribed.
    #[arg(long)]
    pub storm: bool,
    /// Storm: give up waiting for drops and reconnections after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub storm_timeout: Duration,
    /// Storm: reconnect after a random delay up to this long (0: at once).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub reconnect_jitter: Duration,
}

/// `--rate`: events per second or `max`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    Max,
    PerSec(f64),
}

impl Rate {
    pub fn per_sec(self) -> Option<f64> {
        match self {
            Rate::Max => None,
            Rate::PerSec(r) => Some(r),
        }
    }
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        match s.parse::<f64>() {
            Ok(r) if r > 0.0 && r.is_finite() => Ok(Rate::PerSec(r)),
            _ => Err(format!("expected a positive number or `max`, got {s}")),
        }
    }
}

/// Parses `500ms`, `10s`, `2m`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// Raises the soft open-file limit to the hard limit.
fn raise_nofile() -> u64 {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    raise_nofile();
    if matches!(cli.cmd, Cmd::Worker) {
        return match fleets::worker_main() {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("herald-bench worker: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let threads = cli
        .common
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-bench: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let ui = ui::Ui::new(cli.common.quiet);
    let c = &cli.common;
    let result = rt.block_on(async {
        match &cli.cmd {
            Cmd::Connect(a) => scenarios::connect(c, a, &ui).await,
            Cmd::Broadcast(a) => scenarios::broadcast(c, a, &ui).await,
            Cmd::Publish(a) => scenarios::publish(c, a, &ui).await,
            Cmd::Churn(a) if a.storm => scenarios::storm(c, a, &ui).await,
            Cmd::Churn(a) => scenarios::churn(c, a, &ui).await,
            Cmd::Worker => unreachable!("handled above"),
        }
    });
    ui.done();
    let code = match result {
        Ok(report) => {
            report.print(c.json);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_rates() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3x").is_err());
        assert_eq!("max".parse::<Rate>().unwrap(), Rate::Max);
        assert_eq!("10".parse::<Rate>().unwrap(), Rate::PerSec(10.0));
        assert!("0".parse::<Rate>().is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "herald-bench",
            "broadcast",
            "-n",
            "10",
            "--rate",
            "max",
            "--ws-url",
            "ws://127.0.0.1:7000",
        ])
        .unwrap();
        assert_eq!(cli.common.ws_urls, ["ws://127.0.0.1:7000"]);
        match cli.cmd {
            Cmd::Broadcast(b) => {
                assert_eq!(b.subscribers, 10);
                assert_eq!(b.rate, Rate::Max);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["herald-bench", "connect"]).unwrap();
        assert_eq!(cli.common.ws_urls, ["ws://127.0.0.1:6001"]);
        let cli = Cli::try_parse_from([
            "herald-bench",
            "broadcast",
            "--ws-url",
            "ws://127.0.0.1:6701",
            "--ws-url",
            "ws://127.0.0.1:6702",
        ])
        .unwrap();
        assert_eq!(
            cli.common.ws_urls,
            ["ws://127.0.0.1:6701", "ws://127.0.0.1:6702"]
        );
    }
}
