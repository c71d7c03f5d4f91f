//! The admin API under `/admin/api` (issue 13): the cluster's nodes, the apps (read, and
//! create/change/rotate/delete through the app store), an app's channels and presence members,
//! a live stream of what happens in an app (Server-Sent Events), and a test event.
//!
//! Invariant: nothing is mounted unless `admin.token` is set (every path answers the router's
//! 404 then); every route checks `Authorization: Bearer <token>` in constant time before its
//! handler runs; the token is never logged, and an app's secret appears in no answer but the
//! ones that create or rotate it.

mod apps;
mod channels;
pub mod console;
mod events;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_core::AppStoreError;
use herald_protocol::signature;
use serde_json::json;
use tower_http::timeout::TimeoutLayer;

use crate::state::Shared;

/// The admin API's routes and the console's (`console.rs`), or none when no token is configured.
pub fn router(shared: &Shared) -> Router<Arc<Shared>> {
    let Some(token) = &shared.config().admin.token else {
        return Router::new();
    };
    let auth = Arc::new(Auth::new(token.expose()));
    tracing::info!("admin API on /admin/api");
    let limits = &shared.config().limits;
    Router::new()
        .route("/admin/api/nodes", get(nodes))
        .route("/admin/api/apps", get(apps::list).post(apps::create))
        .route(
            "/admin/api/apps/{id}",
            get(apps::get).patch(apps::update).delete(apps::delete),
        )
        .route(
            "/admin/api/apps/{id}/rotate-secret",
            post(apps::rotate_secret),
        )
        .route("/admin/api/apps/{id}/channels", get(channels::list))
        .route("/admin/api/apps/{id}/channels/{name}", get(channels::info))
        .route(
            "/admin/api/apps/{id}/events",
            get(events::stream).post(events::send),
        )
        .route_layer(middleware::from_fn_with_state(auth, authorize))
        .layer(DefaultBodyLimit::max(limits.max_request_body_bytes))
        // Covers producing the response, not the event stream's body.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        // The console's page (no bearer token: the page asks for it and sends it to the API).
        .merge(console::routes())
}

/// Checks bearer tokens without revealing, through timing, how much of a guess was right: both
/// the configured token and the one given are put through HMAC under a key drawn at start-up, and
/// the digests compared in constant time (so the token's length does not show either).
struct Auth {
    key: String,
    expected: String,
}

impl Auth {
    fn new(token: &str) -> Auth {
        let key = format!("{:032x}", rand::random::<u128>());
        let expected = signature::sign(&key, token.as_bytes());
        Auth { key, expected }
    }

    fn accepts(&self, given: &str) -> bool {
        signature::verify(&self.key, given.as_bytes(), &self.expected)
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

async fn authorize(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let refusal = match bearer(req.headers()) {
        Some(token) if auth.accepts(token) => return next.run(req).await,
        Some(_) => "Invalid admin token",
        None => "Missing admin token: send Authorization: Bearer <admin.token>",
    };
    tracing::debug!(
        path = req.uri().path(),
        refusal,
        "admin API request refused"
    );
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        Json(json!({ "error": refusal })),
    )
        .into_response()
}

/// `GET /admin/api/nodes`: the cluster's nodes as this node knows them, this node first.
async fn nodes(State(shared): State<Arc<Shared>>) -> Response {
    Json(json!({ "nodes": shared.node().nodes() })).into_response()
}

/// Why an admin request was refused: a status and `{"error": "..."}`.
#[derive(Debug)]
enum AdminError {
    /// 404: no app with this id on this node.
    UnknownApp(String),
    /// 400: the body or a path parameter is not acceptable; the text says why.
    BadRequest(String),
    /// The app store refused or failed (409, 404, 503).
    Store(AppStoreError),
}

impl From<AppStoreError> for AdminError {
    fn from(err: AppStoreError) -> AdminError {
        AdminError::Store(err)
    }
}

/// Seconds a client is asked to wait when the app store is unreachable.
const RETRY_AFTER_SECONDS: &str = "1";

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            AdminError::UnknownApp(id) => (StatusCode::NOT_FOUND, format!("no app with id {id:?}")),
            AdminError::BadRequest(why) => (StatusCode::BAD_REQUEST, why.clone()),
            AdminError::Store(err) => {
                let status = match err {
                    AppStoreError::ReadOnly | AppStoreError::Conflict(_) => StatusCode::CONFLICT,
                    AppStoreError::NotFound(_) => StatusCode::NOT_FOUND,
                    AppStoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                    AppStoreError::Invalid(_) => StatusCode::BAD_REQUEST,
                };
                (status, err.to_string())
            }
        };
        let body = Json(json!({ "error": message }));
        if matches!(self, AdminError::Store(AppStoreError::Unavailable(_))) {
            tracing::warn!(error = %message, "admin API: app store unavailable");
            return (status, [(header::RETRY_AFTER, RETRY_AFTER_SECONDS)], body).into_response();
        }
        (status, body).into_response()
    }
}

/// The app with this id on this node, or 404.
fn app_state(shared: &Shared, id: &str) -> Result<Arc<herald_core::AppState>, AdminError> {
    shared
        .node()
        .app_by_id(id)
        .ok_or_else(|| AdminError::UnknownApp(id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_whole() {
        let auth = Auth::new("s3cret-token");
        assert!(auth.accepts("s3cret-token"));
        for wrong in ["", "s3cret-toke", "s3cret-token ", "s3cret-tokeN", "x"] {
            assert!(!auth.accepts(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let check = |value: &str, want: Option<&str>| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer(&headers), want, "{value}");
        };
        check("Bearer abc", Some("abc"));
        check("bearer  abc ", Some("abc"));
        check("Basic abc", None);
        check("Bearer", None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
