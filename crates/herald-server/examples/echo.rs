//! A WebSocket echo server on herald's own WebSocket code, used by `tests/autobahn/run.sh` to
//! run the Autobahn|Testsuite fuzzingclient cases against it.
//!
//! Usage: `cargo run --release -p herald-server --example echo -- --port 9001`
//! (listens on 127.0.0.1; `--port 0` picks a free port and prints it).
//!
//! Everything between the socket and the message is herald's: the upgrade and the
//! permessage-deflate negotiation (`herald_server::websocket::switch_protocols`), reads, the
//! decoder, pongs, closing and failing (`herald_server::websocket::WebSocket`), and frames built
//! (and compressed) once through `herald_ws::WireForms`, as `herald_core::Frame` does for every
//! Pusher message. Only what is done with a message differs: it is echoed, not parsed as Pusher
//! JSON.

use std::convert::Infallible;
use std::ops::ControlFlow;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use bytes::Bytes;
use herald_server::websocket::{self, Incoming, WebSocket};
use herald_ws::deflate::compress_always;
use herald_ws::{Message, OpCode, WireForms};
use hyper::body::Incoming as HyperBody;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// As in herald: a socket whose writes stall this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Message size limit for the echo server.
///
/// herald itself runs with `limits.max_frame_bytes` (64 KiB by default), which is right for
/// Pusher traffic but would make the server refuse Autobahn's large-message cases (9.x send
/// messages of up to 16 MiB, 12.x and 13.x up to 128 KiB) with 1009, so those cases would only
/// test the refusal. 16 MiB lets them test that large messages are reassembled, inflated and
/// echoed correctly.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

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

async fn upgrade(mut req: Request<HyperBody>) -> Result<Response<Body>, Infallible> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        let mut res = Response::new(Body::from("expected a WebSocket upgrade"));
        *res.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(res);
    };
    let (res, socket) = websocket::switch_protocols(&mut req, &key, true, MAX_MESSAGE_BYTES);
    tokio::spawn(async move {
        if let Some(socket) = socket.await {
            echo(socket).await;
        }
    });
    Ok(res)
}

/// The read loop of herald's socket task, with echo in place of the Pusher session.
async fn echo(mut ws: WebSocket) {
    let deflate = ws.deflate();
    let mut first = true;
    loop {
        let mut replies: Vec<Bytes> = Vec::new();
        let mut closed = None;
        let mut on = |message: Message<'_>| {
            let (opcode, payload) = match message {
                Message::Text(text) => (OpCode::Text, text.as_bytes()),
                Message::Binary(bytes) => (OpCode::Binary, bytes),
                // Answered in order with the echoes (Autobahn checks the order).
                Message::Ping(payload) => {
                    replies.push(herald_ws::encode(OpCode::Pong, false, payload));
                    return ControlFlow::Continue(());
                }
                Message::Pong(_) => return ControlFlow::Continue(()),
                Message::Close(close) => {
                    closed = Some(close.map(|(code, _)| code));
                    return ControlFlow::Break(());
                }
            };
            // Every message compressed when deflate was negotiated: kosoku's Python 3 port of
            // cases 12.x and 13.x cannot check an uncompressed text echo (it hashes a str), so
            // the size threshold that herald's frames apply is left out here.
            // With the window the client asked for (zlib has none of 8 bits: such a client
            // gets what is longer than its window uncompressed, as herald's frames do).
            replies.push(match deflate {
                Some(d)
                    if d.server_max_window_bits >= 9
                        || payload.len() <= d.max_compressed_message() =>
                {
                    let packed = compress_always(payload, d.server_max_window_bits);
                    herald_ws::encode(opcode, true, &packed)
                }
                Some(_) | None => WireForms::default().frame(opcode, payload, None).clone(),
            });
            ControlFlow::Continue(())
        };
        let incoming = if std::mem::take(&mut first) {
            ws.read_early(&mut on)
        } else {
            ws.read(&mut on)
        };
        let _ = ws.take_pong();
        if incoming == Incoming::Gone {
            return;
        }
        // What was complete before a broken frame is still answered.
        if !replies.is_empty() {
            match tokio::time::timeout(WRITE_TIMEOUT, ws.write_frames(&replies)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        if let Incoming::Failed(err) = incoming {
            return ws.fail(err, None, WRITE_TIMEOUT).await;
        }
        if let Some(code) = closed {
            return ws.answer_close(code, WRITE_TIMEOUT).await;
        }
        if ws.readable().await.is_err() {
            return;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port = parse_port()?;
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("echo listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(upgrade);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}
