//! `fanout-floor`: the least work a server can do per broadcast delivery. It is the baseline
//! that herald's fan-out numbers are compared against on the same box (BENCHMARKS.md), so that
//! "the machine cannot do better" is a measurement, not a guess.
//!
//! It speaks just enough of the Pusher protocol for `herald-bench broadcast`:
//! - WebSocket upgrade on `--ws-port`, `pusher:connection_established`, and `pusher:subscribe`
//!   to public channels;
//! - `POST /apps/{id}/events` on `--http-port`, unsigned (nothing is checked).
//!
//! Each event is serialized and framed once. Two writer threads (one per core) each loop a
//! non-blocking `send()` over their half of the channel's sockets. There is no outbox, no task
//! per socket, no reading after the subscription, no slow-consumer handling: a send that would
//! block is counted and that socket's frame is lost (the load generator reports it). It is a
//! measuring stick, not a server.
//!
//!   fanout-floor --ws-port 6401 --http-port 6402
//!   herald-bench broadcast --ws-url ws://127.0.0.1:6401 --http-url http://127.0.0.1:6402 ...

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream as StdTcpStream;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};

use anyhow::Context;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(
    about = "Reference fan-out server: pre-framed non-blocking sends from one thread per core"
)]
struct Args {
    #[arg(long, default_value_t = 6401)]
    ws_port: u16,
    #[arg(long, default_value_t = 6402)]
    http_port: u16,
    /// Writer threads; each takes an equal share of a channel's sockets.
    #[arg(long, default_value_t = 2)]
    writers: usize,
}

/// One writer thread's share of a broadcast.
struct Job {
    frame: Arc<[u8]>,
    sockets: Arc<[Arc<StdTcpStream>]>,
    range: std::ops::Range<usize>,
}

/// A channel's sockets, and a shared snapshot of them for the writers (rebuilt after a
/// subscribe, on the next publish).
#[derive(Default)]
struct Channel {
    sockets: Vec<Arc<StdTcpStream>>,
    snapshot: Option<Arc<[Arc<StdTcpStream>]>>,
}

struct Floor {
    channels: Mutex<HashMap<String, Channel>>,
    writers: Vec<Mutex<mpsc::Sender<Job>>>,
    next_socket: AtomicU64,
    blocked: Arc<AtomicU64>,
    /// The `blocked` count last logged.
    reported: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let blocked = Arc::new(AtomicU64::new(0));
    let writers = (0..args.writers.max(1))
        .map(|_| {
            let (tx, rx) = mpsc::channel::<Job>();
            let blocked = blocked.clone();
            std::thread::spawn(move || write_loop(&rx, &blocked));
            Mutex::new(tx)
        })
        .collect();
    let floor = Arc::new(Floor {
        channels: Mutex::new(HashMap::new()),
        writers,
        next_socket: AtomicU64::new(1),
        blocked,
        reported: AtomicU64::new(0),
    });
    // One runtime thread: handshakes and HTTP only; the writers do the fan-out.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let ws = TcpListener::bind(("127.0.0.1", args.ws_port))
            .await
            .context("ws port")?;
        let http = TcpListener::bind(("127.0.0.1", args.http_port))
            .await
            .context("http port")?;
        let app = Router::new()
            .route("/apps/{app_id}/events", post(publish))
            .with_state(floor.clone());
        tokio::spawn(async move { axum::serve(http, app).await });
        eprintln!(
            "fanout-floor: ws 127.0.0.1:{} http 127.0.0.1:{}",
            args.ws_port, args.http_port
        );
        loop {
            let (stream, _) = ws.accept().await?;
            let floor = floor.clone();
            tokio::spawn(async move {
                if let Err(err) = subscribe(&floor, stream).await {
                    eprintln!("fanout-floor: connection: {err:#}");
                }
            });
        }
    })
}

/// Handshake, `connection_established`, then one `pusher:subscribe`; after that the socket
/// belongs to the writers and is never read again.
async fn subscribe(floor: &Floor, stream: TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    let id = floor.next_socket.fetch_add(1, Relaxed);
    let established = serde_json::json!({
        "event": "pusher:connection_established",
        "data": serde_json::json!({"socket_id": format!("1.{id}"), "activity_timeout": 120}).to_string(),
    });
    ws.send(Message::text(established.to_string())).await?;
    let channel = loop {
        let Some(msg) = ws.next().await else {
            anyhow::bail!("closed before subscribing")
        };
        if let Message::Text(text) = msg? {
            let v: serde_json::Value = serde_json::from_str(text.as_str())?;
            if v["event"] == "pusher:subscribe" {
                break v["data"]["channel"]
                    .as_str()
                    .context("subscribe without channel")?
                    .to_owned();
            }
        }
    };
    let succeeded = serde_json::json!({
        "event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}",
    });
    ws.send(Message::text(succeeded.to_string())).await?;
    let socket = ws.into_inner().into_std()?;
    let mut channels = floor.channels.lock().expect("not poisoned");
    let entry = channels.entry(channel).or_default();
    entry.sockets.push(Arc::new(socket));
    entry.snapshot = None;
    Ok(())
}

#[derive(serde::Deserialize)]
struct Event {
    name: String,
    #[serde(default)]
    channels: Vec<String>,
    channel: Option<String>,
    data: String,
}

async fn publish(State(floor): State<Arc<Floor>>, body: axum::body::Bytes) -> &'static str {
    let Ok(event) = serde_json::from_slice::<Event>(&body) else {
        return "{}";
    };
    for channel in event.channels.iter().chain(event.channel.iter()) {
        let sockets = {
            let mut channels = floor.channels.lock().expect("not poisoned");
            let Some(entry) = channels.get_mut(channel) else {
                continue;
            };
            entry
                .snapshot
                .get_or_insert_with(|| entry.sockets.as_slice().into())
                .clone()
        };
        let text = serde_json::json!({"event": event.name, "channel": channel, "data": event.data})
            .to_string();
        let frame: Arc<[u8]> = frame(text.as_bytes()).into();
        let share = sockets.len().div_ceil(floor.writers.len());
        for (i, writer) in floor.writers.iter().enumerate() {
            let range = (i * share).min(sockets.len())..((i + 1) * share).min(sockets.len());
            let job = Job {
                frame: frame.clone(),
                sockets: sockets.clone(),
                range,
            };
            let _ = writer.lock().expect("not poisoned").send(job);
        }
    }
    let blocked = floor.blocked.load(Relaxed);
    if blocked > floor.reported.swap(blocked, Relaxed) {
        eprintln!("fanout-floor: {blocked} sends would have blocked (those frames are lost)");
    }
    "{}"
}

fn write_loop(jobs: &mpsc::Receiver<Job>, blocked: &AtomicU64) {
    while let Ok(job) = jobs.recv() {
        for socket in &job.sockets[job.range] {
            match (&**socket).write(&job.frame) {
                Ok(n) if n == job.frame.len() => {}
                _ => {
                    blocked.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

/// An unmasked, final text frame (server to client).
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::frame;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    #[test]
    fn frames_decode_as_final_unmasked_text() {
        for len in [0, 125, 126, 1024, 65_535, 65_536] {
            let payload = vec![b'x'; len];
            let wire = frame(&payload);
            let mut cursor = std::io::Cursor::new(&wire[..]);
            let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final, "len {len}");
            assert!(header.mask.is_none(), "len {len}");
            assert_eq!(length, len as u64);
            assert_eq!(&wire[cursor.position() as usize..], &payload[..]);
        }
    }
}
