//! `GET /apps/{app_id}/channels` and `GET /apps/{app_id}/channels/{channel}`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use herald_protocol::ChannelKind;
use serde_json::{json, Map, Value};

use super::{parse_channel, respond, ApiError, Info, InfoAttribute, SignedRequest};
use crate::state::Shared;

pub async fn list(req: Result<SignedRequest, ApiError>) -> Response {
    respond("channels", req.and_then(|req| list_inner(&req)))
}

fn list_inner(req: &SignedRequest) -> Result<Value, ApiError> {
    let prefix = req.param("filter_by_prefix").unwrap_or_default();
    let info = Info::parse(req.param("info"))?;
    if !prefix.starts_with("presence-") {
        info.refuse(
            InfoAttribute::UserCount,
            "needs filter_by_prefix=presence- (it only exists for presence channels)",
        )?;
    }
    info.refuse(
        InfoAttribute::Cache,
        "is only answered for one channel (GET /channels/{name})",
    )?;
    let mut channels = Map::new();
    for (name, channel_info) in req.app.channels(prefix) {
        // Per-user channels are internal; list them only when asked for by prefix.
        if name.kind() == ChannelKind::ServerToUser && !prefix.starts_with('#') {
            continue;
        }
        let mut entry = Map::new();
        if info.contains(InfoAttribute::UserCount) {
            entry.insert(
                "user_count".into(),
                json!(channel_info.user_count.unwrap_or(0)),
            );
        }
        if info.contains(InfoAttribute::SubscriptionCount) {
            entry.insert(
                "subscription_count".into(),
                json!(channel_info.subscription_count),
            );
        }
        channels.insert(name.to_string(), Value::Object(entry));
    }
    Ok(json!({ "channels": channels }))
}

pub async fn info(
    State(shared): State<Arc<Shared>>,
    req: Result<SignedRequest, ApiError>,
) -> Response {
    respond("channel", req.and_then(|req| info_inner(&shared, &req)))
}

fn info_inner(shared: &Shared, req: &SignedRequest) -> Result<Value, ApiError> {
    let channel = parse_channel(shared, req.path("channel"))?;
    let info = Info::parse(req.param("info"))?;
    if channel.kind() != ChannelKind::Presence {
        info.refuse(
            InfoAttribute::UserCount,
            "is only valid for presence channels",
        )?;
    }
    if !channel.is_cache() {
        info.refuse(InfoAttribute::Cache, "is only valid for cache channels")?;
    }
    let channel_info = req.app.channel_info(&channel);
    let mut body = Map::new();
    body.insert("occupied".into(), json!(channel_info.occupied));
    if info.contains(InfoAttribute::UserCount) {
        body.insert(
            "user_count".into(),
            json!(channel_info.user_count.unwrap_or(0)),
        );
    }
    if info.contains(InfoAttribute::SubscriptionCount) {
        body.insert(
            "subscription_count".into(),
            json!(channel_info.subscription_count),
        );
    }
    if info.contains(InfoAttribute::Cache) {
        let cache = req
            .app
            .cache_info(&channel)
            .map(|c| json!({"event": c.event, "data": c.data, "ttl": c.ttl.as_secs()}));
        body.insert("cache".into(), cache.unwrap_or(Value::Null));
    }
    Ok(Value::Object(body))
}
