//! `GET /apps/{app_id}/channels/{channel}/users` and
//! `POST /apps/{app_id}/users/{user_id}/terminate_connections` (also without `/apps/{app_id}`,
//! as the Python SDK 3.x sends it: the app is then the one whose key signed the request).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use herald_protocol::{ChannelKind, UserId};
use serde_json::{json, Value};

use super::{parse_channel, respond, ApiError, SignedRequest};
use crate::state::Shared;

pub async fn list(
    State(shared): State<Arc<Shared>>,
    req: Result<SignedRequest, ApiError>,
) -> Response {
    respond(
        "channel_users",
        req.and_then(|req| list_inner(&shared, &req)),
    )
}

fn list_inner(shared: &Shared, req: &SignedRequest) -> Result<Value, ApiError> {
    let channel = parse_channel(shared, req.path("channel"))?;
    if channel.kind() != ChannelKind::Presence {
        return Err(ApiError::NotPresenceChannel);
    }
    let users: Vec<Value> = req
        .app
        .presence_users(&channel)
        .iter()
        .map(|u| json!({"id": u.as_str()}))
        .collect();
    Ok(json!({ "users": users }))
}

pub async fn terminate(
    State(shared): State<Arc<Shared>>,
    req: Result<SignedRequest, ApiError>,
) -> Response {
    respond(
        "terminate_connections",
        req.and_then(|req| terminate_inner(&shared, &req)),
    )
}

fn terminate_inner(shared: &Shared, req: &SignedRequest) -> Result<Value, ApiError> {
    let user_id = req.path("user_id");
    if user_id.is_empty() {
        return Err(ApiError::EmptyUserId);
    }
    let app_id = req.app.id();
    let closed = shared
        .broker()
        .terminate_user(app_id, &UserId(user_id.to_owned()));
    tracing::info!(app_id, user_id, closed, "terminated user connections");
    Ok(json!({}))
}
