//! The HTTP router: health (`/up`, `/ready`), `/metrics`, the WebSocket endpoint, the Pusher HTTP
//! API and the admin API, each also under the configured path prefix; and the router's own
//! answers (no route, wrong method, the JSON bodies of axum's rejections).
//!
//! Invariant: every error the router answers has the body `{"error": "..."}`, as the HTTP API's.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::http_api::{self, json_error};
use crate::state::Shared;
use crate::{admin, connection};

/// Builds every route: health, metrics, the WebSocket endpoint and the HTTP API, each also under
/// the configured path prefix.
pub fn router(shared: Arc<Shared>) -> Router {
    let mut pusher = Router::new()
        .route("/app/{key}", get(connection::upgrade))
        .merge(http_api::router(&shared));
    let prefix = shared.config().path_prefix.clone();
    if !prefix.is_empty() {
        pusher = pusher.clone().merge(Router::new().nest(&prefix, pusher));
    }
    Router::new()
        .route(
            "/up",
            get(|| async { Json(serde_json::json!({"ok": true})) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .merge(pusher)
        .merge(admin::router(&shared))
        .fallback(connection::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(json_errors))
        .with_state(shared)
}

/// The largest error body [`json_errors`] carries over into its message.
const MAX_ERROR_TEXT: usize = 1024;

/// Gives the errors that axum and the layers produce (an extractor's rejection, the body
/// limit's 413, the timeout's 408) the JSON body every other error has; the rest of the
/// response (status, `Connection: close`, `Allow`) is kept. Successes pass untouched.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("Error"),
        text => text,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = serde_json::json!({ "error": message }).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// A known path with a method it does not serve; axum adds the `Allow` header.
async fn method_not_allowed() -> Response {
    json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    // The app store's health is reported, never a reason to be unready: an outage leaves the
    // known apps working.
    let app_store = shared.apps().status();
    if let Some(reason) = shared.not_ready_reason() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "reason": reason, "app_store": app_store})),
        )
            .into_response()
    } else {
        Json(serde_json::json!({"ready": true, "app_store": app_store})).into_response()
    }
}

async fn render_metrics(State(shared): State<Arc<Shared>>) -> String {
    shared.render_metrics()
}
