//! `POST /apps/{app_id}/events` and `/batch_events`.
//!
//! A 200 means every event is on the cluster's log (on a single node: delivered), from where it
//! reaches every subscriber on every node in the log's order. When the log cannot be reached the
//! answer is 503 with `Retry-After` and a JSON message, so the SDKs throw and a queued broadcast
//! (Laravel) retries; events are never held back locally to be written later. A 503 for a
//! multi-channel event or a batch may come after some of its events were logged: a retry can
//! deliver those twice.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::{Acceptance, AppState, Durability, Envelope, Frame};
use herald_protocol::server_message;
use herald_protocol::{ChannelKind, ChannelName, SocketId};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::{parse_channel, respond, ApiError, Info, InfoAttribute, SignedRequest};
use crate::metrics;
use crate::state::Shared;

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
    info: Info,
}

/// Seconds a publisher is asked to wait before retrying a refused publish.
const RETRY_AFTER_SECONDS: u64 = 1;

pub async fn trigger(
    State(shared): State<Arc<Shared>>,
    req: Result<SignedRequest, ApiError>,
) -> Response {
    match req {
        Ok(req) => publish_body(&shared, &req.app, &req.body).await,
        Err(err) => respond("events", Err(err)),
    }
}

/// Publishes one event given as the body of `POST /apps/{id}/events`, for a caller already
/// authenticated (a signed request, or the admin API's token): the same validation, limits,
/// broker path and answers (`{}` or the `info` asked for; 503 while the cluster's log is down).
pub(crate) async fn publish_body(shared: &Shared, app: &AppState, body: &[u8]) -> Response {
    let (event, acceptances) = match trigger_inner(shared, app, body) {
        Ok(published) => published,
        Err(err) => return respond("events", Err(err)),
    };
    if !accepted(acceptances).await {
        return unavailable("events");
    }
    respond("events", Ok(event))
}

fn trigger_inner(
    shared: &Shared,
    app: &AppState,
    body: &[u8],
) -> Result<(Value, Vec<Acceptance>), ApiError> {
    let parsed: EventBody = parse_json(body)?;
    let event = validate(shared, app, parsed)?;
    let acceptances = publish(shared, app, &event);
    if event.info.is_empty() {
        return Ok((json!({}), acceptances));
    }
    let body = json!({ "channels": info_response(app, &event) });
    Ok((body, acceptances))
}

pub async fn batch(
    State(shared): State<Arc<Shared>>,
    req: Result<SignedRequest, ApiError>,
) -> Response {
    let (body, acceptances) = match req.and_then(|req| batch_inner(&shared, &req)) {
        Ok(published) => published,
        Err(err) => return respond("batch_events", Err(err)),
    };
    if !accepted(acceptances).await {
        return unavailable("batch_events");
    }
    respond("batch_events", Ok(body))
}

/// Whether every event is on the log (each was queued in order; they are awaited together).
async fn accepted(acceptances: Vec<Acceptance>) -> bool {
    let mut all = true;
    for acceptance in acceptances {
        all &= acceptance.await.is_ok();
    }
    all
}

/// 503 with `Retry-After`: the event is not on the log.
fn unavailable(endpoint: &'static str) -> Response {
    metrics::http_request(endpoint, 503);
    let body = json!({
        "error": "The cluster's event log (Redis) is unavailable: the event was not published. Retry later."
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, RETRY_AFTER_SECONDS.to_string())],
        Json(body),
    )
        .into_response()
}

fn batch_inner(shared: &Shared, req: &SignedRequest) -> Result<(Value, Vec<Acceptance>), ApiError> {
    let parsed: BatchBody = parse_json(&req.body)?;
    let items = parsed.batch.ok_or(ApiError::MissingField("batch"))?;
    let app = &req.app;
    if items.len() > app.app().max_batch_size {
        return Err(ApiError::BatchTooLarge {
            given: items.len(),
            max: app.app().max_batch_size,
        });
    }
    // Validate everything first: a batch is published whole or not at all.
    let events = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| validate(shared, app, item).map_err(|e| e.in_batch(Some(i))))
        .collect::<Result<Vec<_>, _>>()?;
    let acceptances = events
        .iter()
        .flat_map(|event| publish(shared, app, event))
        .collect();
    if events.iter().all(|e| e.info.is_empty()) {
        return Ok((json!({}), acceptances));
    }
    let batch: Vec<Value> = events
        .iter()
        .map(|event| {
            info_response(app, event)
                .into_iter()
                .next()
                .map_or(json!({}), |(_, attrs)| attrs)
        })
        .collect();
    Ok((json!({ "batch": batch }), acceptances))
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|err| ApiError::InvalidJson(err.to_string()))
}

fn validate(shared: &Shared, app: &AppState, body: EventBody) -> Result<Event, ApiError> {
    let name = body.name.ok_or(ApiError::MissingField("name"))?;
    let max_name = shared.limits().max_event_name_length;
    if name.is_empty() || name.len() > max_name {
        return Err(ApiError::InvalidEventName { max: max_name });
    }
    if name.starts_with("pusher_internal:") {
        return Err(ApiError::ReservedEventName(name));
    }
    let raw = body.data.ok_or(ApiError::MissingField("data"))?;
    // `data` is a string by the protocol; anything else is relayed as its JSON text.
    let data = serde_json::from_str::<String>(raw.get()).unwrap_or_else(|_| raw.get().to_owned());
    if data.len() > app.app().max_message_size {
        return Err(ApiError::EventDataTooLarge {
            size: data.len(),
            max: app.app().max_message_size,
        });
    }
    let names = match (body.channels, body.channel) {
        (Some(list), _) => list,
        (None, Some(one)) => vec![one],
        (None, None) => return Err(ApiError::MissingField("channels' or 'channel")),
    };
    if names.is_empty() {
        return Err(ApiError::NoChannels);
    }
    if names.len() > app.app().max_channels_per_publish {
        return Err(ApiError::TooManyChannels {
            given: names.len(),
            max: app.app().max_channels_per_publish,
        });
    }
    let channels = names
        .iter()
        .map(|n| parse_channel(shared, n))
        .collect::<Result<Vec<_>, _>>()?;
    let except = match body.socket_id {
        Some(s) => Some(SocketId::parse(&s).ok_or(ApiError::InvalidSocketId(s))?),
        None => None,
    };
    // `user_count` is answered for the presence channels among them and left out for the others,
    // as Pusher's own reply to a mixed publish shows.
    let info = Info::parse(body.info.as_deref())?;
    info.refuse(
        InfoAttribute::Cache,
        "is not answered by a publish (use GET /channels/{name})",
    )?;
    Ok(Event {
        name,
        data,
        channels,
        except,
        info,
    })
}

/// Hands the event to the broker for each of its channels, in order.
fn publish(shared: &Shared, app: &AppState, event: &Event) -> Vec<Acceptance> {
    let now = Instant::now();
    app.traffic().count_in(event.channels.len() as u64);
    let mut acceptances = Vec::with_capacity(event.channels.len());
    for channel in &event.channels {
        let frame = Frame::published(
            server_message::channel_event(&event.name, channel.as_str(), &event.data),
            now,
        );
        let cache = channel
            .is_cache()
            .then(|| (event.name.clone(), event.data.clone()));
        let acceptance = shared.broker().accept(Envelope {
            app_id: app.id().to_owned(),
            channel: channel.clone(),
            frame,
            except: event.except,
            cache,
            durability: Durability::Logged,
        });
        let app_id = app.id().to_owned();
        acceptances.push(Box::pin(async move {
            let delivery = acceptance.await?;
            metrics::broadcast(&app_id, "api");
            Ok(delivery)
        }) as Acceptance);
    }
    acceptances
}

/// The attributes asked for, per channel, in the order the channels were given.
fn info_response(app: &AppState, event: &Event) -> Map<String, Value> {
    let mut channels = Map::new();
    for channel in &event.channels {
        let info = app.channel_info(channel);
        let mut attrs = Map::new();
        if event.info.contains(InfoAttribute::UserCount) && channel.kind() == ChannelKind::Presence
        {
            attrs.insert("user_count".into(), json!(info.user_count.unwrap_or(0)));
        }
        if event.info.contains(InfoAttribute::SubscriptionCount) {
            attrs.insert("subscription_count".into(), json!(info.subscription_count));
        }
        channels.insert(channel.to_string(), Value::Object(attrs));
    }
    channels
}
