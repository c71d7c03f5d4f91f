//! `GET /apps/{app_id}/channels/{channel}/users` and
//! `POST /apps/{app_id}/users/{user_id}/terminate_connections`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{Method, Uri};
use axum::response::Response;
use herald_protocol::{ChannelKind, UserId};
use serde_json::{json, Value};

use super::events::read_body;
use super::{auth, parse_channel, respond, ApiError};
use crate::Shared;

pub async fn list(
    State(shared): State<Arc<Shared>>,
    Path((app_id, channel)): Path<(String, String)>,
    method: Method,
    uri: Uri,
) -> Response {
    respond(
        "channel_users",
        list_inner(&shared, &app_id, &channel, &method, &uri),
    )
}

fn list_inner(
    shared: &Shared,
    app_id: &str,
    name: &str,
    method: &Method,
    uri: &Uri,
) -> Result<Value, ApiError> {
    let verified = auth::verify_request(shared, app_id, method, uri, &[])?;
    let channel = parse_channel(shared, name).map_err(ApiError::bad_request)?;
    if channel.kind() != ChannelKind::Presence {
        return Err(ApiError::bad_request(
            "Users can only be listed for presence channels",
        ));
    }
    let users: Vec<Value> = verified
        .app
        .presence_users(&channel)
        .iter()
        .map(|u| json!({"id": u.as_str()}))
        .collect();
    Ok(json!({ "users": users }))
}

pub async fn terminate(
    State(shared): State<Arc<Shared>>,
    Path((app_id, user_id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(
        "terminate_connections",
        terminate_inner(&shared, &app_id, &user_id, &method, &uri, body),
    )
}

fn terminate_inner(
    shared: &Shared,
    app_id: &str,
    user_id: &str,
    method: &Method,
    uri: &Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, ApiError> {
    let body = read_body(body)?;
    let verified = auth::verify_request(shared, app_id, method, uri, &body)?;
    if user_id.is_empty() {
        return Err(ApiError::bad_request("user_id must not be empty"));
    }
    let closed = shared
        .broker
        .terminate_user(verified.app.id(), &UserId(user_id.to_owned()));
    tracing::info!(app_id, user_id, closed, "terminated user connections");
    Ok(json!({}))
}

/// `POST /users/{user_id}/terminate_connections`: the path the Python SDK (3.x) uses, without
/// `/apps/{app_id}`; the app is the one whose key signed the request.
pub async fn terminate_by_key(
    State(shared): State<Arc<Shared>>,
    Path(user_id): Path<String>,
    method: Method,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let key = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "auth_key")
        .map(|(_, v)| v.into_owned());
    let app_id = key.and_then(|k| shared.node.app_by_key(&k).map(|a| a.id().to_owned()));
    let res = match app_id {
        Some(app_id) => terminate_inner(&shared, &app_id, &user_id, &method, &uri, body),
        None => Err(ApiError::unauthorized("Unknown or missing auth_key")),
    };
    respond("terminate_connections", res)
}
