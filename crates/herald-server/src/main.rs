//! The `herald` binary: command line, configuration, logging, then `herald_server::run`.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use herald_server::config::{Config, LogFormat, Overrides};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Where the rest of the configuration is, and how to steer a running node.
const AFTER_HELP: &str = "\
Every setting can also come from a TOML file (--config) or a HERALD_* environment variable
(HERALD_PORT=6001, HERALD_LIMITS__MAX_FRAME_BYTES=65536); flags win over both, and an unknown key
or variable stops start-up. With no apps configured, a demo app serves (id 1, key app-key, secret
app-secret). SIGTERM drains the node (paced 4200 closes); a second SIGTERM exits at once. SIGHUP
reloads the configuration file's apps. docs/guide/configuration.md lists every setting and its
default.";

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "A Pusher Channels protocol v7 server",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    start: StartArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    #[command(after_help = AFTER_HELP)]
    Start(StartArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct StartArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0].
    #[arg(long)]
    host: Option<String>,
    /// Port for WebSockets, the HTTP API, health and metrics [default: 6001].
    #[arg(long, short = 'p')]
    port: Option<u16>,
    /// Path prefix for `/app` and `/apps` behind a reverse proxy, e.g. `/ws`.
    #[arg(long)]
    path_prefix: Option<String>,
    /// Log every protocol frame.
    #[arg(long)]
    debug: bool,
    /// Log format [default: text].
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Redis URL for running several nodes as one cluster.
    #[arg(long)]
    redis_url: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Start(args)) => args,
        None => cli.start,
    };
    let overrides = Overrides {
        host: args.host,
        port: args.port,
        path_prefix: args.path_prefix,
        log_format: args.log_format.map(|f| {
            if f == "json" {
                LogFormat::Json
            } else {
                LogFormat::Text
            }
        }),
        debug: args.debug.then_some(true),
        redis_url: args.redis_url,
    };
    let config = match Config::load(args.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("herald: {err:#}");
            std::process::exit(2);
        }
    };
    init_tracing(&config);
    raise_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = listen(&config).await?;
        let shutdown = CancellationToken::new();
        let shared = herald_server::Shared::new(config)?;
        herald_server::shutdown::spawn_signal_handler(&shared, shutdown.clone());
        herald_server::reload::spawn_on_hangup(shared.clone(), args.config, overrides);
        herald_server::serve(shared, listener, shutdown).await
    })?;
    tracing::info!("herald stopped");
    Ok(())
}

/// Connection bursts (a reconnect storm after a drain) overflow the default backlog of 1024 and
/// cost clients a one-second SYN retransmit; ask for more (the kernel caps it at somaxconn).
const LISTEN_BACKLOG: u32 = 8192;

async fn listen(config: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = tokio::net::lookup_host((config.host.as_str(), config.port))
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("host {:?} does not resolve", config.host))?;
    let socket = if addr.is_ipv6() {
        tokio::net::TcpSocket::new_v6()?
    } else {
        tokio::net::TcpSocket::new_v4()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .map_err(|err| anyhow::anyhow!("cannot listen on {addr}: {err}"))?;
    Ok(socket.listen(LISTEN_BACKLOG)?)
}

fn init_tracing(config: &Config) {
    let default = if config.debug {
        "info,herald::frame=debug,herald_server=debug"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Color codes only for a person at a terminal: in a file or a log collector they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        // A log write that fails (the collector behind the pipe died) is dropped. Reporting it
        // would `eprintln!` to the same dead pipe and panic the task that logged: a signal
        // handler that panics never starts the drain.
        .log_internal_errors(false);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Every socket is a file: raise the soft open-file limit to the hard limit.
fn raise_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-file limit"),
        Err(err) => tracing::warn!(%err, "could not raise the open-file limit"),
    }
}
