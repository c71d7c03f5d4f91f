//! `/admin/api/apps/{id}/channels`: the occupied channels with their counts, and one channel
//! with its presence members, from this node's replica (cluster-wide, answered locally).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use herald_core::node::ChannelInfo;
use herald_protocol::{ChannelKind, ChannelName};
use serde_json::{json, Map, Value};

use super::{app_state, AdminError};
use crate::state::Shared;

/// `GET /admin/api/apps/{id}/channels`: sorted by name.
pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let app = app_state(&shared, &id)?;
    let mut channels = app.channels("");
    channels.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let channels: Vec<Value> = channels
        .iter()
        .map(|(name, info)| Value::Object(counts(name, info)))
        .collect();
    Ok(Json(json!({ "channels": channels })))
}

/// `GET /admin/api/apps/{id}/channels/{name}`: with `members` for a presence channel.
pub(super) async fn info(
    State(shared): State<Arc<Shared>>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<Value>, AdminError> {
    let app = app_state(&shared, &id)?;
    let channel =
        ChannelName::parse(&name, shared.limits().max_channel_name_length).map_err(|reason| {
            AdminError::BadRequest(format!("invalid channel name {name:?}: {reason}"))
        })?;
    let info = app.channel_info(&channel);
    let mut body = counts(&channel, &info);
    body.insert("occupied".into(), json!(info.occupied));
    if channel.kind() == ChannelKind::Presence {
        let members: Vec<Value> = app
            .presence_members(&channel)
            .into_iter()
            .map(|(user_id, user_info)| {
                // Stored as the JSON the auth endpoint signed; it parses.
                let user_info = user_info
                    .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
                    .unwrap_or(Value::Null);
                json!({ "user_id": user_id.0, "user_info": user_info })
            })
            .collect();
        body.insert("members".into(), Value::Array(members));
    }
    Ok(Json(Value::Object(body)))
}

/// `name`, `subscription_count`, and `user_count` for presence channels.
fn counts(name: &ChannelName, info: &ChannelInfo) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("name".into(), json!(name.as_str()));
    fields.insert("subscription_count".into(), json!(info.subscription_count));
    if name.kind() == ChannelKind::Presence {
        fields.insert("user_count".into(), json!(info.user_count.unwrap_or(0)));
    }
    fields
}
