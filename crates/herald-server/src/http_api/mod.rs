//! The Pusher HTTP API (protocol doc 1.16–1.17): signed requests under `/apps/{app_id}/…`.
//!
//! Invariant: every handler takes a [`SignedRequest`], so the request signature is verified over
//! the raw body and the exact query before a handler looks at anything else; every refusal is an
//! [`ApiError`] (a status and `{"error": "..."}`); and publishing never waits on subscribers: it
//! hands the event to the broker and returns.

mod channels;
mod error;
pub(crate) mod events;
mod info;
mod signed_request;
mod users;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::timeout::TimeoutLayer;

use crate::state::Shared;

pub(crate) use error::json_error;
pub use error::ApiError;
pub use info::{Info, InfoAttribute};
pub use signed_request::SignedRequest;

pub fn router(shared: &Shared) -> Router<Arc<Shared>> {
    let limits = &shared.config().limits;
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
            post(users::terminate),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
}

/// Wraps a handler's result with the request metric.
fn respond(endpoint: &'static str, res: Result<serde_json::Value, ApiError>) -> Response {
    match res {
        Ok(body) => {
            crate::metrics::http_request(endpoint, 200);
            Json(body).into_response()
        }
        Err(err) => {
            let status = err.status().as_u16();
            crate::metrics::http_request(endpoint, status);
            tracing::debug!(endpoint, status, error = %err, "api request refused");
            err.into_response()
        }
    }
}

/// Validates a channel name from a request; the error names it.
fn parse_channel(shared: &Shared, name: &str) -> Result<herald_protocol::ChannelName, ApiError> {
    herald_protocol::ChannelName::parse(name, shared.limits().max_channel_name_length).map_err(
        |reason| ApiError::InvalidChannelName {
            name: name.to_owned(),
            reason,
        },
    )
}
