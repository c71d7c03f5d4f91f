//! One WebSocket connection over herald's own codec (`herald-ws`): the 101 answer with the
//! negotiated extension, reads parsed in place, shared frames written as they are, and both
//! closing handshakes. `task.rs` runs Pusher on it (or, in the echo mode that the Autobahn suite
//! runs against, echoes every message). A ping is handed over like any message: its pong is
//! queued in order with the replies.
//!
//! Invariant: an idle connection holds its TCP stream and a decoder with no heap memory. Reads
//! go through a stack buffer, (de)compressors are per thread, and frames come prebuilt.

use std::future::Future;
use std::io::{self, IoSlice};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use bytes::Bytes;
use herald_ws::{Decoder, Deflate, Message, OpCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub use herald_ws::Error as ProtocolError;

/// How much one read takes from the socket; on the stack, never held by an idle connection.
const READ_CHUNK: usize = 8 * 1024;

/// How long a closing handshake waits for the peer's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long, and how much, a failed connection's input is read and discarded after its close.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// A WebSocket connection, server side.
#[derive(Debug)]
pub struct WebSocket {
    /// Shared with the outbox's direct writer ([`WebSocket::writer`]): deliveries write to an
    /// idle socket themselves. Every write here goes through `&TcpStream`, never `&mut`.
    stream: Arc<TcpStream>,
    decoder: Decoder,
    deflate: Option<Deflate>,
}

/// What one read did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// Every complete message was handed over (or the handler stopped); more may come.
    Done,
    /// The peer hung up without a closing handshake (EOF or reset).
    Gone,
    /// The peer broke the protocol: fail the connection with the error's close code.
    Failed(ProtocolError),
}

/// Answers a checked upgrade request with 101, negotiating permessage-deflate when `deflate` is
/// allowed, and returns the future that yields the connection once hyper hands it over.
pub fn switch_protocols<B>(
    req: &mut Request<B>,
    key: &HeaderValue,
    deflate: bool,
    max_message: usize,
) -> (
    Response<Body>,
    impl Future<Output = Option<WebSocket>> + Send + 'static,
) {
    let accept = herald_ws::accept_key(key.as_bytes());
    let negotiated = if deflate {
        let headers = req.headers();
        let offers = headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let user_agent = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        herald_ws::negotiate_deflate(offers, user_agent)
    } else {
        None
    };
    let on_upgrade = hyper::upgrade::on(req);
    let mut res = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, HeaderValue::from_static("Upgrade"))
        .header(header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(deflate) = negotiated {
        res = res.header(header::SEC_WEBSOCKET_EXTENSIONS, deflate.response());
    }
    let res = res
        .body(Body::empty())
        .expect("static response parts are valid");
    let socket = async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(%err, "upgrade failed");
                return None;
            }
        };
        // herald serves plain TCP (TLS ends at a proxy), so the connection is a TcpStream:
        // owning it directly lets an idle socket wait for readiness without a buffer.
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => Some(WebSocket::new(
                parts.io.into_inner(),
                &parts.read_buf,
                negotiated,
                max_message,
            )),
            Err(_) => {
                tracing::warn!("upgraded connection is not a TCP stream");
                None
            }
        }
    };
    (res, socket)
}

impl WebSocket {
    /// A connection over `stream`; `early` is what the client sent after its handshake, read
    /// along with it.
    pub fn new(
        stream: TcpStream,
        early: &[u8],
        deflate: Option<Deflate>,
        max_message: usize,
    ) -> WebSocket {
        let mut decoder = Decoder::new(max_message, deflate.is_some());
        decoder.buffer(early);
        WebSocket {
            stream: Arc::new(stream),
            decoder,
            deflate,
        }
    }

    /// The socket, for the outbox's direct writer (shared: it is only written through `&`).
    pub fn stream(&self) -> &Arc<TcpStream> {
        &self.stream
    }

    /// What this connection negotiated, for [`herald_core::Frame::wire`].
    pub fn deflate(&self) -> Option<Deflate> {
        self.deflate
    }

    /// Waits until the socket has something to read (or an error to report). Polled through
    /// the stream's own reader slot: unlike `TcpStream::readable`, the future holds no waiter,
    /// so an idle socket's task is that much smaller.
    pub fn readable(&self) -> impl Future<Output = io::Result<()>> + '_ {
        std::future::poll_fn(|cx| self.stream.poll_read_ready(cx))
    }

    /// Decodes what arrived with the handshake, if anything; call once, before reading.
    pub fn read_early(&mut self, on: &mut dyn FnMut(Message<'_>) -> ControlFlow<()>) -> Incoming {
        self.decode(&mut [], on)
    }

    /// Reads what the socket has (one chunk, so a flooding client cannot starve the rest of the
    /// task) and hands each complete message to `on`, in order.
    pub fn read(&mut self, on: &mut dyn FnMut(Message<'_>) -> ControlFlow<()>) -> Incoming {
        let mut buf = [0u8; READ_CHUNK];
        match self.stream.try_read(&mut buf) {
            Ok(0) => Incoming::Gone,
            Ok(n) => self.decode(&mut buf[..n], on),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Incoming::Done,
            Err(_) => Incoming::Gone,
        }
    }

    fn decode(
        &mut self,
        bytes: &mut [u8],
        on: &mut dyn FnMut(Message<'_>) -> ControlFlow<()>,
    ) -> Incoming {
        match self.decoder.decode(bytes, on) {
            Ok(_) => Incoming::Done,
            Err(err) => Incoming::Failed(err),
        }
    }

    /// Writes the frames in order, with as few syscalls as the kernel allows.
    ///
    /// # Errors
    /// The socket's write error.
    pub async fn write_frames(&mut self, frames: &[Bytes]) -> io::Result<()> {
        if let [frame] = frames {
            return write_all(&self.stream, frame).await;
        }
        let (mut idx, mut offset) = (0, 0);
        while idx < frames.len() {
            let slices: Vec<IoSlice<'_>> = std::iter::once(&frames[idx][offset..])
                .chain(frames[idx + 1..].iter().map(|f| &f[..]))
                .take(64)
                .map(IoSlice::new)
                .collect();
            let mut n = loop {
                self.stream.writable().await?;
                match self.stream.try_write_vectored(&slices) {
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                    res => break res?,
                }
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while idx < frames.len() && n >= frames[idx].len() - offset {
                n -= frames[idx].len() - offset;
                idx += 1;
                offset = 0;
            }
            offset += n;
        }
        Ok(())
    }

    /// Sends a close frame; whether it was written within `wait`. The caller then awaits the
    /// peer's answer ([`WebSocket::await_close`]) so the frame is not lost to a reset.
    pub async fn close(&mut self, code: u16, reason: &str, wait: Duration) -> bool {
        let frame = herald_ws::close_frame(code, reason);
        matches!(
            tokio::time::timeout(wait, write_all(&self.stream, &frame)).await,
            Ok(Ok(()))
        )
    }

    /// Answers the peer's close frame with the same code (RFC 6455 §5.5.1); the caller then
    /// drops the connection, as the server closes TCP first.
    pub async fn answer_close(&mut self, code: Option<u16>, wait: Duration) {
        let frame = match code {
            Some(code) => herald_ws::close_frame(code, ""),
            None => herald_ws::encode(OpCode::Close, false, &[]),
        };
        let _ = tokio::time::timeout(wait, write_all(&self.stream, &frame)).await;
    }

    /// Reads until the peer's close frame, EOF or an error, for at most [`CLOSE_WAIT`].
    pub async fn await_close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            let mut closed = false;
            while !closed {
                if self.readable().await.is_err() {
                    return;
                }
                let mut on = |message: Message<'_>| {
                    if let Message::Close(_) = message {
                        closed = true;
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                };
                match self.read(&mut on) {
                    Incoming::Done => {}
                    Incoming::Gone | Incoming::Failed(_) => return,
                }
            }
        })
        .await;
    }

    /// Fails the connection (RFC 6455 §7.1.7): `first` (a `pusher:error` naming the problem,
    /// say), then a close frame with the error's code; then lingers: our write side is shut and
    /// the peer's input discarded for a bounded time, because closing a TCP socket with unread
    /// input sends a reset, and a reset can make the peer drop our close frame unread (the 1006
    /// it would then see tells it nothing).
    pub async fn fail(&mut self, error: ProtocolError, first: Option<Bytes>, wait: Duration) {
        let close = herald_ws::close_frame(error.close_code(), error.reason());
        let frames: Vec<Bytes> = first.into_iter().chain([close]).collect();
        if let Ok(Ok(())) = tokio::time::timeout(wait, self.write_frames(&frames)).await {
            self.linger().await;
        }
    }

    /// Shuts the write side (the peer reads our close frame, then EOF) and discards what the
    /// peer still sends until it hangs up, for at most [`LINGER_TIME`] and [`LINGER_BYTES`].
    async fn linger(&mut self) {
        if socket2::SockRef::from(&*self.stream)
            .shutdown(std::net::Shutdown::Write)
            .is_err()
        {
            return;
        }
        let _ = tokio::time::timeout(LINGER_TIME, async {
            let mut buf = [0u8; 1024];
            let mut discarded = 0;
            while discarded < LINGER_BYTES {
                if self.readable().await.is_err() {
                    break;
                }
                match self.stream.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => discarded += n,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
        })
        .await;
    }
}

/// Writes all of `buf` through a shared socket.
async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}
