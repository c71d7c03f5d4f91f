//! The socket task: one per WebSocket, from admission to close. It awaits one `select!` (the
//! outbox or the socket), handles what the client sent without awaiting (`on_readable` returns a
//! `Step`: the decoded messages, the message budget spent before inflating, pongs, the echo
//! mode), and writes everything the outbox holds with one vectored write (write coalescing),
//! then the close frames; what a message does to the session is `driver`'s.
//!
//! Invariant: only the `select!` is awaited in place; every other await is a boxed future, and
//! nothing but the socket is held across the long await, so an idle socket's task stays small
//! (ARCHITECTURE.md, "The fan-out path").

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_core::outbox::Batch;
use herald_core::rate_limit::TokenBucket;
use herald_core::{
    AppState, CloseRequest, ConnectionError, DisconnectReason, Frame, MessageError, Session,
};
use herald_protocol::server_message;
use herald_ws::{Deflate, Message, OpCode};
use tracing::Instrument;

use super::socket::{Incoming, ProtocolError, WebSocket};
use super::writer::SocketWriter;
use super::Socket;
use crate::connection::{admission, driver};
use crate::metrics::{self, AppMetrics, Limit};
use crate::state::Shared;

/// A socket whose writes stall this long is dropped as a slow consumer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Refuses an upgraded socket: `pusher:error` with the error's close code and message, then the
/// close with the same code and message.
pub(super) async fn reject(socket: &mut WebSocket, err: ConnectionError) {
    metrics::connection_refused(admission::refusal_reason(err));
    let (code, message) = (err.close_code(), err.message());
    let error = Frame::new(server_message::error(Some(code.code()), message));
    let frames = [error.wire(socket.deflate()).clone()];
    if let Ok(Ok(())) = tokio::time::timeout(WRITE_TIMEOUT, socket.write_frames(&frames)).await {
        if socket.close(code.code(), message, WRITE_TIMEOUT).await {
            socket.await_close().await;
        }
    }
}

/// Runs an admitted socket to its end and cleans up after it.
/// An async block, not an `async fn`, here and in [`connection_loop`]: an `async fn` keeps its
/// arguments twice across every await (as captures and as locals), and the setup's locals are
/// scoped so that none outlives it (memory per connection).
#[allow(clippy::manual_async_fn)] // On purpose: see above.
pub(super) fn serve(
    shared: Arc<Shared>,
    app: Arc<AppState>,
    mut socket: Socket,
    resume_token: Option<Box<str>>,
) -> impl std::future::Future<Output = ()> {
    async move {
        let Some((mut session, span)) =
            Box::pin(admit_socket(&shared, &app, &mut socket, resume_token)).await
        else {
            return;
        };
        let reason = connection_loop(&shared, &mut session, &mut socket)
            .instrument(span)
            .await;
        // From here on only this task touches the socket (and it is dropped below).
        session.outbox().clear_direct();
        driver::close(&shared, &app, &mut session, reason);
    }
}

/// Counts the socket in, or refuses it (4100, 4004, 4003); returns its session and span.
async fn admit_socket(
    shared: &Arc<Shared>,
    app: &Arc<AppState>,
    socket: &mut WebSocket,
    resume_token: Option<Box<str>>,
) -> Option<(Session, tracing::Span)> {
    let err = match admission::open(shared, app, resume_token) {
        Ok(opened) => return Some(opened),
        Err(err) => err,
    };
    reject(socket, err).await;
    None
}

#[allow(clippy::manual_async_fn)] // On purpose: see `serve`.
fn connection_loop<'a>(
    shared: &'a Shared,
    session: &'a mut Session,
    socket: &'a mut WebSocket,
) -> impl std::future::Future<Output = DisconnectReason> + 'a {
    async move {
        let app_metrics = shared.app_metrics(session.app().id());
        let mut message_budget = TokenBucket::new(shared.config().limits.max_messages_per_second);
        // Deliveries write to this socket themselves while nothing is queued for it, instead
        // of waking this task (issue 14); everything else queues, and this task writes it.
        session.outbox().set_direct(
            Arc::new(SocketWriter {
                stream: socket.stream().clone(),
                metrics: app_metrics.clone(),
            }),
            socket.deflate(),
        );

        // What the client sent along with its handshake, if anything, comes first.
        // While the task handles input it holds the writer, so that its answers (a pong, then
        // replies) keep the order of what they answer.
        session.outbox().claim();
        let mut step = on_readable(
            shared,
            session,
            &app_metrics,
            &mut message_budget,
            socket,
            Read::Early,
        );
        // Only the select! is awaited in place; every other await is a boxed future, and nothing
        // else is held across an await, so an idle socket's task stays small (memory per connection).
        loop {
            match step {
                Step::Continue => session.outbox().release(),
                Step::Flush => {
                    if let Some(reason) =
                        Box::pin(flush(shared, session, socket, &app_metrics)).await
                    {
                        return reason;
                    }
                }
                Step::PeerClosed(code) => {
                    // Left on purpose: no replay is kept for it (issue 12).
                    session.closed_by_client_with(code);
                    // What answers the messages before the close frame goes first; then the
                    // server closes the TCP connection first (RFC 6455 §7.1.1): answer, then go.
                    if Box::pin(write_queued(session, socket, &app_metrics))
                        .await
                        .is_ok()
                    {
                        Box::pin(socket.answer_close(code, WRITE_TIMEOUT)).await;
                    }
                    return DisconnectReason::ClientClose;
                }
                Step::Fail(failure) => {
                    let max_frame_bytes = shared.config().limits.max_frame_bytes;
                    // What was complete before the broken frame is still answered.
                    if Box::pin(write_queued(session, socket, &app_metrics))
                        .await
                        .is_ok()
                    {
                        Box::pin(fail(socket, failure, max_frame_bytes)).await;
                    }
                    return match failure {
                        Failure::TooLarge => DisconnectReason::Limit,
                        Failure::Protocol | Failure::InvalidUtf8 => DisconnectReason::Error,
                    };
                }
                Step::End(reason) => return reason,
            }
            // Unbiased: neither a busy outbox nor a chatty client can starve the other branch (a
            // starved read would miss the client's pong and let the liveness sweep close it).
            step = tokio::select! {
                () = session.outbox().changed() => Step::Flush,
                res = socket.readable() => match res {
                    Ok(()) => {
                        session.outbox().claim();
                        on_readable(shared, session, &app_metrics, &mut message_budget, socket, Read::Socket)
                    }
                    Err(_) => Step::End(DisconnectReason::Error),
                },
            };
        }
    }
}

/// What the socket loop does next.
enum Step {
    Continue,
    /// The outbox has frames or a close request.
    Flush,
    /// The client sent a close frame (with this code).
    PeerClosed(Option<u16>),
    /// The client broke the WebSocket protocol: fail the connection with a close frame.
    Fail(Failure),
    End(DisconnectReason),
}

/// How a client broke the WebSocket protocol, each with its RFC 6455 §7.4.1 close code. Kept a
/// fieldless enum so that [`Step`] stays small (it shares the socket task's state).
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// A message or frame over `limits.max_frame_bytes`, before or after inflating: 1009, after
    /// a `pusher:error` naming it.
    TooLarge,
    /// Framing the RFC forbids (unmasked, reserved bits or opcodes, RSV1 without deflate or on a
    /// control frame, a fragmented or oversized control frame, an orphan continuation, corrupt
    /// compressed data): 1002.
    Protocol,
    /// A text message or close reason that is not UTF-8: 1007.
    InvalidUtf8,
}

impl Failure {
    fn error(self) -> ProtocolError {
        match self {
            Failure::TooLarge => ProtocolError::TooLarge,
            Failure::Protocol => ProtocolError::Protocol("WebSocket protocol error"),
            Failure::InvalidUtf8 => ProtocolError::InvalidUtf8,
        }
    }
}

/// Where [`on_readable`] takes its bytes from.
#[derive(Clone, Copy)]
enum Read {
    /// What arrived with the handshake.
    Early,
    /// The socket, which is readable.
    Socket,
}

/// Reads what the socket has and handles each message, without awaiting: replies go through
/// the outbox.
fn on_readable(
    shared: &Shared,
    session: &mut Session,
    app_metrics: &AppMetrics,
    message_budget: &mut TokenBucket,
    socket: &mut WebSocket,
    from: Read,
) -> Step {
    let mut step = Step::Continue;
    let deflate = socket.deflate();
    let mut on = |message: Message<'_>| {
        step = on_message(
            shared,
            session,
            app_metrics,
            message_budget,
            deflate,
            message,
        );
        match step {
            Step::Continue => ControlFlow::Continue(()),
            _ => ControlFlow::Break(()),
        }
    };
    let incoming = match from {
        Read::Early => socket.read_early(&mut on),
        Read::Socket => socket.read(&mut on),
    };
    match incoming {
        Incoming::Done => {}
        // The peer hung up without a close frame: there is nobody to tell.
        Incoming::Gone => return Step::End(DisconnectReason::Error),
        Incoming::Failed(err) => return failed(err),
    }
    step
}

/// The step for a protocol violation: the connection is failed with its close code.
fn failed(err: ProtocolError) -> Step {
    tracing::debug!(?err, "websocket protocol error");
    Step::Fail(match err {
        ProtocolError::TooLarge => {
            metrics::limit_rejected(Limit::FrameSize);
            Failure::TooLarge
        }
        ProtocolError::Protocol(_) => Failure::Protocol,
        ProtocolError::InvalidUtf8 => Failure::InvalidUtf8,
    })
}

/// The size of a text or binary message (0 for anything else).
fn data_len(message: &Message<'_>) -> usize {
    match message {
        Message::Text(text) => text.len(),
        Message::Binary(bytes) => bytes.len(),
        _ => 0,
    }
}

/// Handles one message from the client.
fn on_message(
    shared: &Shared,
    session: &mut Session,
    app_metrics: &AppMetrics,
    message_budget: &mut TokenBucket,
    deflate: Option<Deflate>,
    message: Message<'_>,
) -> Step {
    // Pings and pongs count: pusher-js answers our pusher:ping, browsers answer WebSocket
    // pings, and both prove the client alive (see `sweep_liveness`).
    session.outbox().touch();
    match message {
        message @ (Message::Text(_) | Message::Binary(_)) => {
            if !driver::spend_budget(session, message_budget) {
                app_metrics.message_received(data_len(&message));
                return Step::Continue;
            }
            on_data(shared, session, app_metrics, deflate, message)
        }
        // The budget is spent before inflating: a refused message costs no inflation.
        Message::Compressed(compressed) => {
            if !driver::spend_budget(session, message_budget) {
                app_metrics.message_received(compressed.wire_len());
                return Step::Continue;
            }
            let inflated = match compressed.inflate() {
                Ok(inflated) => inflated,
                Err(err) => return failed(err),
            };
            match inflated.message() {
                Ok(message) => on_data(shared, session, app_metrics, deflate, message),
                Err(err) => failed(err),
            }
        }
        // Queued, so the pong keeps its place among the answers to what came before and after
        // the ping. Pings spend the message budget: over it, a ping gets no pong, so a flood
        // of them costs a read and nothing more.
        Message::Ping(payload) => {
            if message_budget.try_take(Instant::now()) {
                let pong = herald_ws::encode(OpCode::Pong, false, payload);
                let _ = session
                    .outbox()
                    .push(Frame::prebuilt(Bytes::copy_from_slice(payload), pong));
            } else {
                metrics::limit_rejected(Limit::MessageRate);
            }
            Step::Continue
        }
        Message::Pong(_) => Step::Continue,
        Message::Close(close) => Step::PeerClosed(close.map(|(code, _)| code)),
    }
}

/// Handles a text or binary message that the budget admitted, inflated if it came compressed.
fn on_data(
    shared: &Shared,
    session: &mut Session,
    app_metrics: &AppMetrics,
    deflate: Option<Deflate>,
    message: Message<'_>,
) -> Step {
    app_metrics.message_received(data_len(&message));
    match message {
        Message::Text(text) => {
            tracing::debug!(target: "herald::frame", direction = "in", frame = %text);
            if shared.config().websocket_echo {
                let _ = session
                    .outbox()
                    .push(echo(OpCode::Text, text.as_bytes(), deflate));
                return Step::Continue;
            }
            driver::on_text(shared, session, text);
            Step::Continue
        }
        Message::Binary(bytes) if shared.config().websocket_echo => {
            let _ = session.outbox().push(echo(OpCode::Binary, bytes, deflate));
            Step::Continue
        }
        Message::Binary(_) => {
            session.refuse_message(&MessageError::Binary);
            Step::Continue
        }
        // Only data reaches here (see `on_message`).
        Message::Compressed(_) | Message::Ping(_) | Message::Pong(_) | Message::Close(_) => {
            Step::Continue
        }
    }
}

/// The echo mode's reply to a message (`websocket_echo`, for the Autobahn suite): the same
/// opcode and payload, compressed when the socket negotiated permessage-deflate, with the window
/// its client asked for. Every message is compressed, whatever its size: the Autobahn cases
/// (12.x, 13.x) as kosoku runs them cannot check an uncompressed text echo. A window of 8 bits
/// (zlib has none for raw DEFLATE) gets longer messages uncompressed, as herald's frames do.
fn echo(opcode: OpCode, payload: &[u8], deflate: Option<Deflate>) -> Frame {
    let wire = match deflate {
        Some(d) if d.server_max_window_bits >= 9 || payload.len() <= d.max_compressed_message() => {
            let packed = herald_ws::deflate::compress_always(payload, d.server_max_window_bits);
            herald_ws::encode(opcode, true, &packed)
        }
        Some(_) | None => herald_ws::encode(opcode, false, payload),
    };
    Frame::prebuilt(Bytes::copy_from_slice(payload), wire)
}

/// Writes what the outbox holds, ignoring a close request: the connection is ending anyway.
async fn write_queued(
    session: &Session,
    socket: &mut WebSocket,
    app_metrics: &AppMetrics,
) -> Result<(), DisconnectReason> {
    let (remainder, batch, _) = session.outbox().take_all();
    if remainder.is_none() && batch.is_empty() {
        return Ok(());
    }
    write_batch(socket, remainder, batch, app_metrics).await
}

/// Writes what the outbox holds, then carries out its close request, if any. Returns why the
/// connection ended, or `None` to keep going.
async fn flush(
    shared: &Shared,
    session: &mut Session,
    socket: &mut WebSocket,
    app_metrics: &AppMetrics,
) -> Option<DisconnectReason> {
    let outbox = session.outbox().clone();
    let (remainder, batch, close) = outbox.take_all();
    if close
        .as_ref()
        .is_some_and(|close| close.reason == DisconnectReason::Drain)
    {
        Box::pin(driver::depart(shared, session)).await;
    }
    if remainder.is_some() || !batch.is_empty() {
        if let Err(reason) = write_batch(socket, remainder, batch, app_metrics).await {
            return Some(reason);
        }
    }
    if close.is_none() {
        outbox.release();
    }
    let CloseRequest {
        code,
        message,
        reason,
    } = close?;
    // A slow consumer's buffers are full: do not wait long for the close frame.
    let wait = if reason == DisconnectReason::SlowConsumer {
        Duration::from_secs(1)
    } else {
        WRITE_TIMEOUT
    };
    if socket.close(code.code(), message, wait).await && reason != DisconnectReason::SlowConsumer {
        socket.await_close().await;
    }
    Some(reason)
}

/// Fails the connection (RFC 6455 §7.1.7) with the close code for `failure`, after a
/// `pusher:error` naming the limit when the message was too large; `WebSocket::fail` lingers so
/// the close frame is read rather than lost to a reset.
async fn fail(socket: &mut WebSocket, failure: Failure, max_frame_bytes: usize) {
    let first = match failure {
        Failure::TooLarge => {
            let text = server_message::error(
                None,
                &format!("Message too large: the limit is {max_frame_bytes} bytes"),
            );
            Some(Frame::new(text).wire(socket.deflate()).clone())
        }
        Failure::Protocol | Failure::InvalidUtf8 => None,
    };
    socket.fail(failure.error(), first, WRITE_TIMEOUT).await;
}

/// Writes every queued frame and flushes once.
async fn write_batch(
    socket: &mut WebSocket,
    remainder: Option<Bytes>,
    batch: Batch,
    app_metrics: &AppMetrics,
) -> Result<(), DisconnectReason> {
    let count = batch.len();
    let bytes: usize = batch.iter().map(|f| f.text().len()).sum();
    let oldest = batch.iter().filter_map(|f| f.published_at()).min();
    // Each frame was built (and compressed) once for every socket it goes to.
    let deflate = socket.deflate();
    let frames: Vec<Bytes> = remainder
        .into_iter()
        .chain(batch.iter().map(|frame| {
            tracing::debug!(target: "herald::frame", direction = "out", frame = %String::from_utf8_lossy(frame.text()));
            frame.wire(deflate).clone()
        }))
        .collect();
    match tokio::time::timeout(WRITE_TIMEOUT, socket.write_frames(&frames)).await {
        Ok(res) => res.map_err(|_| DisconnectReason::Error)?,
        Err(_) => return Err(DisconnectReason::SlowConsumer),
    }
    app_metrics.messages_sent(count, bytes);
    if let Some(at) = oldest {
        app_metrics.delivery_latency(at.elapsed());
    }
    Ok(())
}
