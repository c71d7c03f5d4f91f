//! A WebSocket echo server over the same stack and settings as herald's `/app/{key}` endpoint,
//! used by `tests/autobahn/run.sh` to run the Autobahn|Testsuite fuzzingclient cases.
//!
//! Usage: `cargo run --release -p herald-server --example echo -- --port 9001`
//! (listens on 127.0.0.1; `--port 0` picks a free port and prints it).
//!
//! The stack is the one herald uses: tokio + tokio-tungstenite, with the `WebSocketConfig` built
//! by `herald_server::ws::websocket_config`. Text and binary messages are echoed back unchanged;
//! pings, close replies and errors are handled as in herald's socket task.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

/// As in herald: a socket whose writes stall this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Frame and message size limit for the echo server.
///
/// herald itself runs with `limits.max_frame_bytes` (64 KiB by default), which is right for
/// Pusher traffic but would make tungstenite refuse Autobahn's large-message cases (9.x send
/// messages and frames of up to 16 MiB) with a "message too big" close, so those cases would only
/// test the refusal. 16 MiB lets them test that large fragmented and unfragmented messages are
/// reassembled and echoed correctly. Every other setting comes from herald unchanged.
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

fn parse_port() -> anyhow::Result<u16> {
    let mut args = std::env::args().skip(1);
    let mut port = 9001;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let value = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--port needs a value"))?;
                port = value.parse()?;
            }
            "-h" | "--help" => {
                println!("usage: echo [--port N]   (listens on 127.0.0.1)");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument: {other}"),
        }
    }
    Ok(port)
}

async fn serve(stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let config = herald_server::ws::websocket_config(MAX_FRAME_BYTES);
    let mut ws = match tokio_tungstenite::accept_async_with_config(stream, Some(config)).await {
        Ok(ws) => ws,
        Err(err) => {
            eprintln!("{peer}: handshake failed: {err}");
            return;
        }
    };
    // The read loop handles each outcome the way herald's socket task does (crates/herald-server
    // /src/ws.rs), except that data messages are echoed instead of parsed as Pusher JSON.
    while let Some(msg) = ws.next().await {
        let reply = match msg {
            Ok(msg @ (Message::Text(_) | Message::Binary(_))) => msg,
            // tungstenite queues the pong reply itself; it goes out with the next read or write.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Ok(Message::Close(_)) => {
                // tungstenite has queued the close reply; drain until the peer closes (bounded).
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return;
            }
            Err(tungstenite::Error::Capacity(_)) => {
                let frame = CloseFrame {
                    code: CloseCode::Size,
                    reason: "Message too large".into(),
                };
                let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.close(Some(frame))).await;
                return;
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return,
            Err(err) => {
                // Protocol violations and invalid UTF-8: herald drops the TCP connection.
                eprintln!("{peer}: {err}");
                return;
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, ws.send(reply)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port = parse_port()?;
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("echo listening on {}", listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(serve(stream, peer));
    }
}
