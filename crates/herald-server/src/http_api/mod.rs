//! The Pusher HTTP API (protocol doc 1.16–1.17): signed requests under `/apps/{app_id}/…`.
//!
//! Invariant: every route verifies the request signature over the raw body and the exact query
//! before it looks at anything else, and publishing never waits on subscribers: it hands the
//! event to the broker and returns.

mod auth;
mod channels;
mod events;
mod users;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::timeout::TimeoutLayer;

use crate::Shared;

pub use auth::verify_request;

pub fn router(shared: &Shared) -> Router<Arc<Shared>> {
    let limits = &shared.config.limits;
    Router::new()
        .route("/apps/{app_id}/events", post(events::trigger))
        .route("/apps/{app_id}/batch_events", post(events::batch))
        .route("/apps/{app_id}/channels", get(channels::list))
        .route("/apps/{app_id}/channels/{channel}", get(channels::info))
        .route("/apps/{app_id}/channels/{channel}/users", get(users::list))
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            post(users::terminate),
        )
        .route(
            "/users/{user_id}/terminate_connections",
            post(users::terminate_by_key),
        )
        .layer(DefaultBodyLimit::max(limits.max_request_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
}

/// An HTTP API error: a status and a JSON message naming the problem.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({"error": self.message})),
        )
            .into_response()
    }
}

/// Wraps a handler's result with the request metric.
fn respond(endpoint: &'static str, res: Result<serde_json::Value, ApiError>) -> Response {
    match res {
        Ok(body) => {
            crate::metrics::http_request(endpoint, 200);
            Json(body).into_response()
        }
        Err(err) => {
            crate::metrics::http_request(endpoint, err.status.as_u16());
            tracing::debug!(endpoint, status = err.status.as_u16(), error = %err.message, "api request refused");
            err.into_response()
        }
    }
}

/// Validates a channel name from a request; the error names it.
fn parse_channel(shared: &Shared, name: &str) -> Result<herald_protocol::ChannelName, String> {
    herald_protocol::ChannelName::parse(name, shared.limits.max_channel_name_length)
        .map_err(|err| format!("Invalid channel name {name:?}: {err}"))
}

/// Splits `info=a,b` into its attribute names.
fn info_attributes(info: Option<&str>) -> Vec<&str> {
    info.map(|i| {
        i.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect()
    })
    .unwrap_or_default()
}
