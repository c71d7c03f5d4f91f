//! The WebSocket endpoint's HTTP side: `GET /app/{key}` and the fallback for every other path,
//! the RFC 6455 checks of an upgrade request (`Refusal`), the 101, and the hand-over of the
//! upgraded socket to its task.
//!
//! Invariant: a request that fails the checks gets an HTTP error, never a 101 (hyper can upgrade
//! only an HTTP/1.1 GET); one that passes them but is not admitted gets its 101 and then the
//! refusal over the socket (`task::reject`), as pusher-js expects.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Version};
use axum::response::Response;
use herald_core::ConnectionError;

use super::socket::switch_protocols;
use super::task::{reject, serve};
use super::Socket;
use crate::connection::admission::admit;
use crate::connection::resume_cookie;
use crate::state::Shared;

#[derive(Debug, serde::Deserialize)]
pub struct ConnectParams {
    protocol: Option<String>,
}

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
        .and_then(|app| resume_cookie::for_handshake(&app.app(), req.headers()));
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
    let (res, socket) = switch_protocols(&mut req, &key, deflate, max_message);
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
