//! `POST /apps/{app_id}/events` and `/batch_events`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use herald_core::{AppState, Envelope, Frame};
use herald_protocol::server_message;
use herald_protocol::{ChannelKind, ChannelName, SocketId};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::{auth, info_attributes, parse_channel, respond, ApiError};
use crate::{metrics, Shared};

#[derive(Debug, Deserialize)]
struct EventBody {
    name: Option<String>,
    data: Option<Box<RawValue>>,
    channel: Option<String>,
    channels: Option<Vec<String>>,
    socket_id: Option<String>,
    info: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BatchBody {
    batch: Option<Vec<EventBody>>,
}

/// One event, validated and ready to publish.
struct Event {
    name: String,
    data: String,
    channels: Vec<ChannelName>,
    except: Option<SocketId>,
    info: Vec<String>,
}

pub async fn trigger(
    State(shared): State<Arc<Shared>>,
    Path(app_id): Path<String>,
    method: Method,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(
        "events",
        trigger_inner(&shared, &app_id, &method, &uri, body),
    )
}

fn trigger_inner(
    shared: &Shared,
    app_id: &str,
    method: &Method,
    uri: &Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, ApiError> {
    let body = read_body(body)?;
    let verified = auth::verify_request(shared, app_id, method, uri, &body)?;
    let parsed: EventBody = parse_json(&body)?;
    let event = validate(shared, &verified.app, parsed, None)?;
    publish(shared, &verified.app, &event);
    Ok(info_response(&verified.app, &event, true))
}

pub async fn batch(
    State(shared): State<Arc<Shared>>,
    Path(app_id): Path<String>,
    method: Method,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(
        "batch_events",
        batch_inner(&shared, &app_id, &method, &uri, body),
    )
}

fn batch_inner(
    shared: &Shared,
    app_id: &str,
    method: &Method,
    uri: &Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, ApiError> {
    let body = read_body(body)?;
    let verified = auth::verify_request(shared, app_id, method, uri, &body)?;
    let parsed: BatchBody = parse_json(&body)?;
    let items = parsed
        .batch
        .ok_or_else(|| ApiError::bad_request("Missing field 'batch'"))?;
    let app = &verified.app;
    if items.len() > app.app().max_batch_size {
        return Err(ApiError::bad_request(format!(
            "Batch has {} events; at most {} are allowed",
            items.len(),
            app.app().max_batch_size
        )));
    }
    // Validate everything first: a batch is published whole or not at all.
    let events = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| validate(shared, app, item, Some(i)))
        .collect::<Result<Vec<_>, _>>()?;
    for event in &events {
        publish(shared, app, event);
    }
    if events.iter().all(|e| e.info.is_empty()) {
        return Ok(json!({}));
    }
    let batch: Vec<Value> = events
        .iter()
        .map(|event| {
            let attrs = info_response(app, event, false);
            attrs
                .get("channels")
                .and_then(|c| c.as_object())
                .and_then(|c| c.values().next().cloned())
                .unwrap_or(json!({}))
        })
        .collect();
    Ok(json!({ "batch": batch }))
}

pub(super) fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            metrics::limit_rejected(metrics::Limit::RequestBody);
            ApiError::new(status, "Request body is too large")
        } else {
            ApiError::new(
                status,
                format!("Could not read the request body: {rejection}"),
            )
        }
    })
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("Invalid JSON body: {err}")))
}

fn validate(
    shared: &Shared,
    app: &AppState,
    body: EventBody,
    index: Option<usize>,
) -> Result<Event, ApiError> {
    let at = |msg: String| match index {
        Some(i) => format!("batch[{i}]: {msg}"),
        None => msg,
    };
    let name = body
        .name
        .ok_or_else(|| ApiError::bad_request(at("Missing field 'name'".into())))?;
    if name.is_empty() || name.len() > shared.limits.max_event_name_length {
        return Err(ApiError::bad_request(at(format!(
            "Event name must be 1 to {} characters",
            shared.limits.max_event_name_length
        ))));
    }
    let raw = body
        .data
        .ok_or_else(|| ApiError::bad_request(at("Missing field 'data'".into())))?;
    // `data` is a string by the protocol; anything else is relayed as its JSON text.
    let data = serde_json::from_str::<String>(raw.get()).unwrap_or_else(|_| raw.get().to_owned());
    if data.len() > app.app().max_message_size {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            at(format!(
                "Event data is {} bytes; at most {} are allowed",
                data.len(),
                app.app().max_message_size
            )),
        ));
    }
    let names = match (body.channels, body.channel) {
        (Some(list), _) => list,
        (None, Some(one)) => vec![one],
        (None, None) => {
            return Err(ApiError::bad_request(at(
                "Missing field 'channels' or 'channel'".into(),
            )))
        }
    };
    if names.is_empty() {
        return Err(ApiError::bad_request(at(
            "'channels' must not be empty".into()
        )));
    }
    if names.len() > app.app().max_channels_per_publish {
        return Err(ApiError::bad_request(at(format!(
            "Too many channels: {} given, at most {} allowed",
            names.len(),
            app.app().max_channels_per_publish
        ))));
    }
    let channels = names
        .iter()
        .map(|n| parse_channel(shared, n).map_err(|e| ApiError::bad_request(at(e))))
        .collect::<Result<Vec<_>, _>>()?;
    let except = match body.socket_id {
        Some(s) => Some(
            SocketId::parse(&s)
                .ok_or_else(|| ApiError::bad_request(at(format!("Invalid socket_id {s:?}"))))?,
        ),
        None => None,
    };
    let info: Vec<String> = info_attributes(body.info.as_deref())
        .into_iter()
        .map(str::to_owned)
        .collect();
    for attr in &info {
        check_info_attribute(attr, &channels).map_err(|e| ApiError::bad_request(at(e)))?;
    }
    Ok(Event {
        name,
        data,
        channels,
        except,
        info,
    })
}

/// `user_count` is for presence channels only; `subscription_count` for any channel.
fn check_info_attribute(attr: &str, channels: &[ChannelName]) -> Result<(), String> {
    match attr {
        "user_count" => match channels.iter().find(|c| c.kind() != ChannelKind::Presence) {
            Some(c) => Err(format!(
                "info=user_count is only valid for presence channels, not {c}"
            )),
            None => Ok(()),
        },
        "subscription_count" => Ok(()),
        other => Err(format!(
            "Unknown info attribute {other:?} (use user_count or subscription_count)"
        )),
    }
}

fn publish(shared: &Shared, app: &AppState, event: &Event) {
    let now = Instant::now();
    for channel in &event.channels {
        let frame = Frame::published(
            server_message::channel_event(&event.name, channel.as_str(), &event.data),
            now,
        );
        let cache = channel
            .is_cache()
            .then(|| (event.name.clone(), event.data.clone()));
        let delivery = shared.broker.publish(Envelope {
            app_id: app.id().to_owned(),
            channel: channel.clone(),
            frame,
            except: event.except,
            cache,
        });
        metrics::broadcast(app.id(), "api", delivery.delivered, delivery.dropped_slow);
    }
}

fn info_response(app: &AppState, event: &Event, empty_when_no_info: bool) -> Value {
    if event.info.is_empty() && empty_when_no_info {
        return json!({});
    }
    let mut channels = Map::new();
    for channel in &event.channels {
        let info = app.channel_info(channel);
        let mut attrs = Map::new();
        for attr in &event.info {
            match attr.as_str() {
                "user_count" => {
                    attrs.insert("user_count".into(), json!(info.user_count.unwrap_or(0)))
                }
                _ => attrs.insert("subscription_count".into(), json!(info.subscription_count)),
            };
        }
        channels.insert(channel.to_string(), Value::Object(attrs));
    }
    json!({ "channels": channels })
}
