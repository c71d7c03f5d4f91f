//! The WebSocket endpoint: admission checks at upgrade, then one task per socket that moves
//! frames between the socket, the session state machine and the outbox.
//!
//! Invariant: the socket task is the only writer of its socket, and it writes everything queued
//! at once with a single flush (write coalescing).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Version};
use axum::response::Response;
use bytes::Bytes;
use herald_core::outbox::{Batch, Liveness};
use herald_core::rate_limit::TokenBucket;
use herald_core::session::Outcome;
use herald_core::{
    AppState, CloseRequest, ConnectionError, ConnectionRefused, DisconnectReason, Frame,
    MessageError, MonitorEvent, Outbox, Session,
};
use herald_protocol::server_message;
use herald_protocol::ClientMessage;
use herald_ws::{Deflate, Message, OpCode};
use tracing::Instrument;

use crate::metrics::{self, AppMetrics, Limit};
use crate::state::Shared;
use crate::websocket::{self, Incoming, ProtocolError, WebSocket};

/// A socket whose writes stall this long is dropped as a slow consumer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a drained socket's 4200 waits for its departures to be on the cluster's log.
const DEPARTURE_WAIT: Duration = Duration::from_secs(1);

/// Protocol versions whose wire format this server speaks (pusher-js sends 7).
const SUPPORTED_PROTOCOLS: std::ops::RangeInclusive<u32> = 4..=7;

#[derive(Debug, serde::Deserialize)]
pub struct ConnectParams {
    protocol: Option<String>,
}

/// A socket is the TCP stream and a decoder that holds no memory while idle (`websocket.rs`).
/// Boxed so the socket task's future holds a pointer, not the socket itself, at every level it
/// is passed through (an async fn keeps its arguments apart from its locals).
type Socket = Box<WebSocket>;

/// `GET /app/{key}`: validates the upgrade request, answers 101, and hands the socket to a task.
pub async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    Query(params): Query<ConnectParams>,
    req: Request<Body>,
) -> Response {
    let admission = admit(&shared, &key, params.protocol.as_deref(), req.headers());
    // The resume cookie (issue 12): the browser's identity for replay after a reconnect.
    let cookie = admission
        .as_ref()
        .ok()
        .and_then(|app| crate::resume_cookie::for_handshake(&app.app(), req.headers()));
    let (token, set_cookie) = cookie.map_or((None, None), |c| (Some(c.token), Some(c.set_cookie)));
    // permessage-deflate is offered unless the node or the app turns it off.
    let deflate = shared.config().deflate && admission.as_ref().is_ok_and(|app| app.app().deflate);
    let mut res = accept_upgrade(shared, req, deflate, move |shared, mut socket| async move {
        match admission {
            Ok(app) => serve(shared, app, socket, token).await,
            // Boxed: a refusal's future must not size every accepted socket's task.
            Err(err) => Box::pin(reject(&mut socket, err)).await,
        }
    });
    if let (Some(set_cookie), StatusCode::SWITCHING_PROTOCOLS) = (set_cookie, res.status()) {
        res.headers_mut().append(header::SET_COOKIE, set_cookie);
    }
    res
}

/// Any other path: a WebSocket upgrade is answered with 4005, anything else with a JSON 404.
pub async fn fallback(State(shared): State<Arc<Shared>>, req: Request<Body>) -> Response {
    if is_upgrade(req.headers()) {
        return accept_upgrade(shared, req, false, |_, mut socket| async move {
            reject(&mut socket, ConnectionError::PathNotFound).await;
        });
    }
    crate::http_api::json_error(StatusCode::NOT_FOUND, "Not found")
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

fn accept_upgrade<F, Fut>(
    shared: Arc<Shared>,
    mut req: Request<Body>,
    deflate: bool,
    then: F,
) -> Response
where
    F: FnOnce(Arc<Shared>, Socket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let key = match check_handshake(&req) {
        Ok(key) => key,
        Err(refusal) => return refusal.into_response(),
    };
    let max_message = shared.config().limits.max_frame_bytes;
    let (res, socket) = websocket::switch_protocols(&mut req, &key, deflate, max_message);
    let tracker = shared.connection_tasks().clone();
    // The task outlives the handshake by hours: capture as little as possible, and hold
    // nothing but the socket across its long await (memory per connection).
    tracker.spawn(async move {
        // `let else`, not `if let`: the socket moves into `then` and is not kept a second time
        // across its await (memory per connection).
        let Some(socket) = socket.await else {
            return;
        };
        then(shared, Box::new(socket)).await;
    });
    res
}

/// The version of the WebSocket protocol herald speaks (RFC 6455 §4.1, `Sec-WebSocket-Version`).
const WEBSOCKET_VERSION: &str = "13";

/// Why an upgrade request gets no 101 (RFC 6455 §4.2.1). A refusal never switches protocols:
/// hyper can upgrade only an HTTP/1.1 GET, and a 101 it cannot honour leaves the client with a
/// dead socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NotGet,
    /// Typically a reverse proxy speaking HTTP/1.0 to its upstream (nginx's default).
    NotHttp11,
    NotUpgrade,
    /// A missing or other `Sec-WebSocket-Version`.
    WebSocketVersion,
    NoKey,
}

impl Refusal {
    /// The one mapping to the wire: status, the JSON body's message, and the header the RFC
    /// asks for, if any.
    fn answer(
        self,
    ) -> (
        StatusCode,
        &'static str,
        Option<(header::HeaderName, &'static str)>,
    ) {
        match self {
            Refusal::NotGet => (
                StatusCode::METHOD_NOT_ALLOWED,
                "A WebSocket upgrade must be a GET request",
                Some((header::ALLOW, "GET")),
            ),
            Refusal::NotHttp11 => (
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "A WebSocket upgrade needs HTTP/1.1 (a proxy in front of herald may be speaking HTTP/1.0 to it)",
                None,
            ),
            Refusal::NotUpgrade => (
                StatusCode::BAD_REQUEST,
                "Expected a WebSocket upgrade request (Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13, Sec-WebSocket-Key)",
                None,
            ),
            // RFC 6455 §4.4: name the versions this server speaks.
            Refusal::WebSocketVersion => (
                StatusCode::UPGRADE_REQUIRED,
                "Unsupported WebSocket version: send Sec-WebSocket-Version: 13",
                Some((header::SEC_WEBSOCKET_VERSION, WEBSOCKET_VERSION)),
            ),
            Refusal::NoKey => (
                StatusCode::BAD_REQUEST,
                "Missing or malformed Sec-WebSocket-Key header (one, the base64 of 16 bytes)",
                None,
            ),
        }
    }

    fn into_response(self) -> Response {
        let (status, message, header) = self.answer();
        let mut res = crate::http_api::json_error(status, message);
        if let Some((name, value)) = header {
            res.headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        res
    }
}

/// Checks an upgrade request and returns its `Sec-WebSocket-Key`.
fn check_handshake(req: &Request<Body>) -> Result<HeaderValue, Refusal> {
    if req.method() != Method::GET {
        return Err(Refusal::NotGet);
    }
    if req.version() != Version::HTTP_11 {
        return Err(Refusal::NotHttp11);
    }
    let headers = req.headers();
    if !is_upgrade(headers) {
        return Err(Refusal::NotUpgrade);
    }
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(version), None) if version == WEBSOCKET_VERSION => {}
        _ => return Err(Refusal::WebSocketVersion),
    }
    // RFC 6455 §4.2.1: one key, the base64 of 16 bytes.
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    match (keys.next(), keys.next()) {
        (Some(key), None) if is_websocket_key(key.as_bytes()) => Ok(key.clone()),
        _ => Err(Refusal::NoKey),
    }
}

/// Whether `key` is 16 bytes in base64: 22 base64 digits and `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Decides, before the upgrade completes, whether this socket may join the app.
fn admit(
    shared: &Shared,
    key: &str,
    protocol: Option<&str>,
    headers: &HeaderMap,
) -> Result<Arc<AppState>, ConnectionError> {
    let app = shared
        .node()
        .app_by_key(key)
        .ok_or(ConnectionError::AppNotFound)?;
    if !app.app().enabled {
        return Err(ConnectionError::AppDisabled);
    }
    let protocol = protocol.ok_or(ConnectionError::NoProtocol)?;
    match protocol.parse::<u32>() {
        Ok(v) if SUPPORTED_PROTOCOLS.contains(&v) => {}
        _ => return Err(ConnectionError::UnsupportedProtocol),
    }
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if !app.app().origin_allowed(origin) {
        metrics::limit_rejected_for(app.id(), Limit::Origin);
        limit_hit(&app, None, "allowed_origins");
        return Err(ConnectionError::OriginNotAllowed);
    }
    Ok(app.clone())
}

/// Refuses an upgraded socket: `pusher:error` with the error's close code and message, then the
/// close with the same code and message.
async fn reject(socket: &mut WebSocket, err: ConnectionError) {
    metrics::connection_refused(refusal_reason(err));
    let (code, message) = (err.close_code(), err.message());
    let error = Frame::new(server_message::error(Some(code.code()), message));
    let frames = [error.wire(socket.deflate()).clone()];
    if let Ok(Ok(())) = tokio::time::timeout(WRITE_TIMEOUT, socket.write_frames(&frames)).await {
        if socket.close(code.code(), message, WRITE_TIMEOUT).await {
            socket.await_close().await;
        }
    }
}

/// The `reason` label of a refused connection: a capacity limit, or any other refusal.
fn refusal_reason(err: ConnectionError) -> &'static str {
    match err {
        ConnectionError::NodeOverCapacity | ConnectionError::AppOverQuota => "limit",
        ConnectionError::PathNotFound
        | ConnectionError::AppNotFound
        | ConnectionError::AppDisabled
        | ConnectionError::NoProtocol
        | ConnectionError::UnsupportedProtocol
        | ConnectionError::OriginNotAllowed => "error",
    }
}

/// Runs an admitted socket to its end and cleans up after it.
/// An async block, not an `async fn`, here and in [`connection_loop`]: an `async fn` keeps its
/// arguments twice across every await (as captures and as locals), and the setup's locals are
/// scoped so that none outlives it (memory per connection).
#[allow(clippy::manual_async_fn)] // On purpose: see above.
fn serve(
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

        let socket_id = session.socket_id();
        let left = session.close();
        let app_id = app.id();
        for left in &left {
            shared.webhooks().record_left(app_id, socket_id, left);
        }
        if app.monitor().active() {
            let code = close_code(&session, reason);
            monitor_closed(&app, socket_id, reason, code, &left);
        }
        app.remove_connection(socket_id);
        shared.node().remove_connection();
        metrics::connection_closed(app_id, reason.as_str());
        tracing::debug!(reason = reason.as_str(), "socket closed");
    }
}

/// Counts the socket in, or refuses it (4100, 4004, 4003); returns its session and span.
async fn admit_socket(
    shared: &Arc<Shared>,
    app: &Arc<AppState>,
    socket: &mut WebSocket,
    resume_token: Option<Box<str>>,
) -> Option<(Session, tracing::Span)> {
    if !shared
        .node()
        .try_add_connection(shared.config().max_connections)
    {
        metrics::limit_rejected_for(app.id(), Limit::NodeConnections);
        limit_hit(app, None, "node_max_connections");
        reject(socket, ConnectionError::NodeOverCapacity).await;
        return None;
    }
    let socket_id = shared.node().next_socket_id();
    let outbox = Outbox::new(shared.limits().outbox_max_bytes);
    if let Err(refused) = app.add_connection(socket_id, &outbox) {
        shared.node().remove_connection();
        let err = match refused {
            ConnectionRefused::OverQuota => {
                metrics::limit_rejected_for(app.id(), Limit::AppConnections);
                limit_hit(app, None, "max_connections");
                ConnectionError::AppOverQuota
            }
            ConnectionRefused::Disabled => ConnectionError::AppDisabled,
        };
        reject(socket, err).await;
        return None;
    }
    metrics::connection_opened(app.id());
    app.monitor().emit_with(|| MonitorEvent::ConnectionOpened {
        socket_id: socket_id.to_string(),
    });
    // The echo mode sends nothing but echoes.
    if !shared.config().websocket_echo {
        let _ = outbox.push(Frame::new(server_message::connection_established(
            socket_id,
            shared.config().activity_timeout.as_secs(),
        )));
    }
    let mut session = Session::new(
        app.clone(),
        shared.broker().clone(),
        shared.limits().clone(),
        socket_id,
        outbox,
    );
    if let Some(token) = resume_token {
        session.set_resume_token(&token);
    }
    let span = tracing::debug_span!("socket", app_id = %app.id(), socket_id = %socket_id);
    Some((session, span))
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

/// Spends one message from the connection's budget (`limits.max_messages_per_second`); over
/// it, the message is refused with a 4301 and goes no further.
fn spend_budget(session: &mut Session, message_budget: &mut TokenBucket) -> bool {
    if message_budget.try_take(Instant::now()) {
        return true;
    }
    metrics::limit_rejected(Limit::MessageRate);
    limit_hit(
        session.app(),
        Some(session.socket_id()),
        "max_messages_per_second",
    );
    session.refuse_message(&MessageError::TooManyMessages);
    false
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
            if !spend_budget(session, message_budget) {
                app_metrics.message_received(data_len(&message));
                return Step::Continue;
            }
            on_data(shared, session, app_metrics, deflate, message)
        }
        // The budget is spent before inflating: a refused message costs no inflation.
        Message::Compressed(compressed) => {
            if !spend_budget(session, message_budget) {
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
            match ClientMessage::parse(text) {
                Ok(message) => {
                    let outcome = session.handle(message);
                    let app_id = session.app().id();
                    match &outcome {
                        Outcome::LimitReached(limit) => {
                            metrics::limit_rejected_for(app_id, (*limit).into());
                        }
                        Outcome::ClientEvent { delivery, .. } => {
                            metrics::broadcast(
                                app_id,
                                "client_event",
                                delivery.delivered,
                                delivery.dropped_slow,
                            );
                        }
                        _ => {}
                    }
                    shared
                        .webhooks()
                        .record_outcome(app_id, session.socket_id(), &outcome);
                    let monitor = session.app().monitor();
                    if monitor.active() {
                        if let Some(event) =
                            MonitorEvent::from_outcome(session.socket_id(), &outcome)
                        {
                            monitor.emit(shared.node().id(), event);
                        }
                    }
                }
                Err(err) => session.refuse_message(&MessageError::Invalid(err)),
            }
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
        Box::pin(depart(shared, session)).await;
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

/// A drain: leaves every channel and announces where the socket stopped, and waits until that
/// is on the cluster's log, before the 4200 goes out (not after the close handshake), so that
/// the node the client reconnects to at once already knows the departure and replays. Nothing
/// is queued after a close request; what was queued is written before the close frame.
async fn depart(shared: &Shared, session: &mut Session) {
    let socket_id = session.socket_id();
    for left in &session.close() {
        shared
            .webhooks()
            .record_left(session.app().id(), socket_id, left);
    }
    let _ = tokio::time::timeout(DEPARTURE_WAIT, shared.broker().announced()).await;
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

/// Most pings a node sends a second only to confirm what its connections received (issue 12):
/// each is a message out and one in, and at 5 s apart 57,000 connections receiving events
/// would cost 11,400 of each a second (BENCHMARKS.md). Below 2,500 connections receiving events
/// every one is confirmed every 5 s; above, each less often, in turn.
const CONFIRMATIONS_PER_SECOND: u32 = 500;

/// Pings every connection that has been silent for `activity_timeout` and closes those that
/// leave the ping unanswered for `pong_timeout` (4201). One sweep for the node instead of a timer
/// in every socket task; `serve` stops it once the drain is over.
pub async fn sweep_liveness(shared: Arc<Shared>) {
    let activity = shared.config().activity_timeout;
    let pong = shared.config().pong_timeout;
    let period = (activity.min(pong) / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    // Each connection is checked once a period, but the pass is spread over SLICES ticks: the
    // pings it sends (a connection that was sent frames is pinged every 5 s to confirm them)
    // and the pongs that come back would otherwise arrive in one burst per period for every
    // connection that started together, delaying deliveries behind thousands of reads.
    const SLICES: usize = 10;
    let mut tick = tokio::time::interval(period / SLICES as u32);
    let confirmations_per_tick = (f64::from(CONFIRMATIONS_PER_SECOND)
        * (period / SLICES as u32).as_secs_f64())
    .ceil() as u32;
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outboxes: Vec<Outbox> = Vec::new();
    let mut slice = 0;
    let mut last_monitor_tick = Instant::now();
    loop {
        tick.tick().await;
        // The monitors' upkeep, once a second: watchers that left, rate samples.
        if last_monitor_tick.elapsed() >= Duration::from_millis(900) {
            last_monitor_tick = Instant::now();
            shared.node().tick_monitors();
        }
        if slice == 0 {
            // Copied out once a period, so that connects and disconnects never wait for a pass.
            outboxes.clear();
            outboxes.extend(shared.node().outboxes());
        }
        let now = herald_core::outbox::clock_ms();
        // The echo mode sends nothing of its own: no pings.
        if !shared.config().websocket_echo {
            let mut confirmations = confirmations_per_tick;
            for outbox in outboxes.iter().skip(slice).step_by(SLICES) {
                if outbox.check_liveness(now, activity, pong, confirmations > 0)
                    == Liveness::ConfirmSent
                {
                    confirmations -= 1;
                }
            }
        }
        slice = (slice + 1) % SLICES;
        if slice == 0 {
            outboxes.clear();
        }
    }
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

/// Tells the app's watchers that a limit refused something (only while watched).
fn limit_hit(app: &AppState, socket: Option<herald_protocol::SocketId>, limit: &'static str) {
    app.monitor().emit_with(|| MonitorEvent::LimitHit {
        socket_id: socket.map(|s| s.to_string()),
        limit: limit.to_owned(),
        channel: None,
    });
}

/// The close code a connection ended with: the client's close frame's, the one the server
/// sent, or what the reason implies (1006 when the connection was lost without a close frame).
fn close_code(session: &Session, reason: DisconnectReason) -> u16 {
    if let Some(code) = session.client_close_code() {
        return code;
    }
    if let Some(request) = session.outbox().close_request() {
        return request.code.code();
    }
    match reason {
        DisconnectReason::ClientClose => 1005,
        DisconnectReason::Limit => 1009,
        DisconnectReason::SlowConsumer => 4100,
        DisconnectReason::PingTimeout => 4201,
        DisconnectReason::Drain => 4200,
        DisconnectReason::Terminated => 4009,
        DisconnectReason::Error => 1006,
    }
}

/// A closed connection, for the app's watchers: the channels it left, the slow consumer limit
/// if that was why, then the close.
#[cold]
fn monitor_closed(
    app: &AppState,
    socket: herald_protocol::SocketId,
    reason: DisconnectReason,
    code: u16,
    left: &[herald_core::session::Left],
) {
    let monitor = app.monitor();
    for left in left {
        monitor.emit_with(|| MonitorEvent::Unsubscribed {
            socket_id: socket.to_string(),
            channel: left.channel.to_string(),
        });
    }
    if reason == DisconnectReason::SlowConsumer {
        limit_hit(app, Some(socket), "outbox_max_bytes");
    }
    monitor.emit_with(|| MonitorEvent::ConnectionClosed {
        socket_id: socket.to_string(),
        code,
        reason: reason.as_str().to_owned(),
    });
}

/// An outbox's direct writer: a delivery writes to an idle socket from its own thread.
#[derive(Debug)]
struct SocketWriter {
    stream: Arc<tokio::net::TcpStream>,
    metrics: Arc<AppMetrics>,
}

impl herald_core::outbox::DirectWrite for SocketWriter {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        // Straight to the socket, not through the reactor's readiness: a send that would block
        // hands the frame to the task, whose own write finds out and waits for the socket. (A
        // broken pipe is an error, not a signal: Rust programs start with SIGPIPE ignored.)
        socket2::SockRef::from(&*self.stream).send(buf)
    }

    fn written(&self, frame: &Frame) {
        tracing::debug!(target: "herald::frame", direction = "out", frame = %String::from_utf8_lossy(frame.text()));
        self.metrics.messages_sent(1, frame.text().len());
        if let Some(at) = frame.published_at() {
            self.metrics.delivery_latency(at.elapsed());
        }
    }
}
