//! `GET /apps/{app_id}/channels` and `GET /apps/{app_id}/channels/{channel}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{Method, Uri};
use axum::response::Response;
use herald_protocol::ChannelKind;
use serde_json::{json, Map, Value};

use super::{auth, info_attributes, parse_channel, respond, ApiError};
use crate::Shared;

pub async fn list(
    State(shared): State<Arc<Shared>>,
    Path(app_id): Path<String>,
    method: Method,
    uri: Uri,
) -> Response {
    respond("channels", list_inner(&shared, &app_id, &method, &uri))
}

fn list_inner(
    shared: &Shared,
    app_id: &str,
    method: &Method,
    uri: &Uri,
) -> Result<Value, ApiError> {
    let verified = auth::verify_request(shared, app_id, method, uri, &[])?;
    let prefix = verified.param("filter_by_prefix").unwrap_or_default();
    let attrs = info_attributes(verified.param("info"));
    for attr in &attrs {
        match *attr {
            "user_count" if !prefix.starts_with("presence-") => {
                return Err(ApiError::bad_request(
                    "info=user_count needs filter_by_prefix=presence- (it only exists for presence channels)",
                ))
            }
            "user_count" | "subscription_count" => {}
            other => return Err(ApiError::bad_request(format!("Unknown info attribute {other:?}"))),
        }
    }
    let mut channels = Map::new();
    for (name, info) in verified.app.channels(prefix) {
        // Per-user channels are internal; list them only when asked for by prefix.
        if name.kind() == ChannelKind::ServerToUser && !prefix.starts_with('#') {
            continue;
        }
        let mut entry = Map::new();
        for attr in &attrs {
            match *attr {
                "user_count" => {
                    entry.insert("user_count".into(), json!(info.user_count.unwrap_or(0)))
                }
                _ => entry.insert("subscription_count".into(), json!(info.subscription_count)),
            };
        }
        channels.insert(name.to_string(), Value::Object(entry));
    }
    Ok(json!({ "channels": channels }))
}

pub async fn info(
    State(shared): State<Arc<Shared>>,
    Path((app_id, channel)): Path<(String, String)>,
    method: Method,
    uri: Uri,
) -> Response {
    respond(
        "channel",
        info_inner(&shared, &app_id, &channel, &method, &uri),
    )
}

fn info_inner(
    shared: &Shared,
    app_id: &str,
    name: &str,
    method: &Method,
    uri: &Uri,
) -> Result<Value, ApiError> {
    let verified = auth::verify_request(shared, app_id, method, uri, &[])?;
    let channel = parse_channel(shared, name).map_err(ApiError::bad_request)?;
    let attrs = info_attributes(verified.param("info"));
    let info = verified.app.channel_info(&channel);
    let mut body = Map::new();
    body.insert("occupied".into(), json!(info.occupied));
    for attr in attrs {
        match attr {
            "user_count" if channel.kind() == ChannelKind::Presence => {
                body.insert("user_count".into(), json!(info.user_count.unwrap_or(0)));
            }
            "user_count" => {
                return Err(ApiError::bad_request(
                    "info=user_count is only valid for presence channels",
                ))
            }
            "subscription_count" => {
                body.insert("subscription_count".into(), json!(info.subscription_count));
            }
            "cache" if channel.is_cache() => {
                let cache = verified
                    .app
                    .cache_info(&channel)
                    .map(|c| json!({"event": c.event, "data": c.data, "ttl": c.ttl.as_secs()}));
                body.insert("cache".into(), cache.unwrap_or(Value::Null));
            }
            "cache" => {
                return Err(ApiError::bad_request(
                    "info=cache is only valid for cache channels",
                ))
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "Unknown info attribute {other:?}"
                )))
            }
        }
    }
    Ok(Value::Object(body))
}
