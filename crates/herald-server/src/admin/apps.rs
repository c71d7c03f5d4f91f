//! `/admin/api/apps`: the apps with their settings (never the secret) and live counts, and the
//! writes that go through the app store (`Shared::{create_app, update_app, delete_app}`: applied
//! on this node at once, on the others through the store's change notification).
//!
//! A write is checked the way start-up checks the file's apps (`config::validate_app`); a change
//! is the current app serialized, the body laid over it and the result deserialized again, so
//! every field keeps its own validation and default.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::{App, AppCounts, AppSecret, AppStoreError};
use rand::Rng;
use serde_json::{json, Map, Value};

use super::{app_state, AdminError};
use crate::config::validate_app;
use crate::state::Shared;

/// Fields a `PATCH` may not touch: the credentials (the secret changes through rotate-secret).
const FIXED: [&str; 3] = ["id", "key", "secret"];

/// An app as the admin API shows it: every setting but the secret, and its live counts.
pub(super) fn view(app: &App, counts: &AppCounts) -> Value {
    let mut fields = match serde_json::to_value(app) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(),
    };
    fields.remove("secret");
    fields.insert("counts".into(), json!(counts));
    Value::Object(fields)
}

/// The app's view with its counts on this node's registry (zero when it is not there yet).
fn view_of(shared: &Shared, app: &App) -> Value {
    let counts = shared
        .node()
        .app_by_id(&app.id)
        .map(|state| state.counts())
        .unwrap_or_default();
    view(app, &counts)
}

/// `GET /admin/api/apps`.
pub(super) async fn list(State(shared): State<Arc<Shared>>) -> Response {
    let mut apps = shared.node().apps();
    apps.sort_by(|a, b| a.id().cmp(b.id()));
    let apps: Vec<Value> = apps
        .iter()
        .map(|state| view(&state.app(), &state.counts()))
        .collect();
    Json(json!({
        "app_store": shared.apps().status(),
        "read_only": shared.apps().read_only(),
        "apps": apps,
    }))
    .into_response()
}

/// `GET /admin/api/apps/{id}`.
pub(super) async fn get(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let state = app_state(&shared, &id)?;
    Ok(Json(view(&state.app(), &state.counts())))
}

/// `POST /admin/api/apps`: id, key and secret are generated when not given; the answer is the
/// only place the secret is shown (with rotate-secret).
pub(super) async fn create(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, AdminError> {
    writable(&shared)?;
    // No body at all: an app with every setting at its default.
    let mut fields = if body.is_empty() {
        Map::new()
    } else {
        object(&body)?
    };
    for (name, generate) in [
        ("id", generate_id as fn() -> String),
        ("key", || random_hex(10)),
        ("secret", || random_hex(16)),
    ] {
        if fields.get(name).is_none_or(Value::is_null) {
            fields.insert(name.into(), Value::String(generate()));
        }
    }
    let app = app_from(fields)?;
    for (name, value) in [("id", &app.id), ("key", &app.key)] {
        if !is_credential(value) {
            return Err(AdminError::BadRequest(format!(
                "invalid app: {name}: 1 to {MAX_CREDENTIAL} characters of A-Z, a-z, 0-9, \
                 '-', '_' and '.' (it goes into URLs)"
            )));
        }
    }
    let secret = app.secret.expose().to_owned();
    shared.create_app(app.clone()).await?;
    tracing::info!(app_id = %app.id, key = %app.key, "admin API: app created");
    let body = json!({ "app": view_of(&shared, &app), "secret": secret });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `PATCH /admin/api/apps/{id}`: any setting but the credentials.
pub(super) async fn update(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    writable(&shared)?;
    let changes = object(&body)?;
    if let Some(name) = FIXED.iter().find(|name| changes.contains_key(**name)) {
        return Err(AdminError::BadRequest(format!(
            "`{name}` cannot be changed (the secret changes through POST \
             /admin/api/apps/{{id}}/rotate-secret; id and key are for good)"
        )));
    }
    // Merged over the app as the store holds it inside the store's transaction, so concurrent
    // PATCHes of different settings all stay.
    let change = Box::new(move |current: App| {
        let mut fields = match serde_json::to_value(&current) {
            Ok(Value::Object(fields)) => fields,
            _ => Map::new(),
        };
        fields.extend(changes);
        app_from(fields).map_err(|err| match err {
            AdminError::BadRequest(why) => AppStoreError::Invalid(why),
            AdminError::Store(err) => err,
            AdminError::UnknownApp(id) => AppStoreError::NotFound(id),
        })
    });
    let app = shared.update_app(&id, change).await?;
    tracing::info!(app_id = %app.id, enabled = app.enabled, "admin API: app changed");
    Ok(Json(view_of(&shared, &app)))
}

/// `POST /admin/api/apps/{id}/rotate-secret`: a new secret, shown once; the old one fails from
/// the next signature on.
pub(super) async fn rotate_secret(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    writable(&shared)?;
    let secret = random_hex(16);
    let new_secret = AppSecret::new(secret.clone());
    let change = Box::new(move |mut app: App| {
        app.secret = new_secret;
        Ok(app)
    });
    shared.update_app(&id, change).await?;
    tracing::info!(app_id = %id, "admin API: app secret rotated");
    Ok(Json(json!({ "secret": secret })))
}

/// `DELETE /admin/api/apps/{id}`: the app's sockets close with 4003.
pub(super) async fn delete(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    writable(&shared)?;
    shared.delete_app(&id).await?;
    tracing::info!(app_id = %id, "admin API: app deleted");
    Ok(Json(json!({ "deleted": id })))
}

/// 409 at once on a read-only store (the file), before the body is looked at.
fn writable(shared: &Shared) -> Result<(), AdminError> {
    if shared.apps().read_only() {
        return Err(AppStoreError::ReadOnly.into());
    }
    Ok(())
}

/// The body as a JSON object.
fn object(body: &[u8]) -> Result<Map<String, Value>, AdminError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(AdminError::BadRequest(
            "the body must be a JSON object of app settings".into(),
        )),
        Err(err) => Err(AdminError::BadRequest(format!("invalid JSON: {err}"))),
    }
}

/// An app from its fields (unknown ones refused), checked as the configuration's apps are.
fn app_from(fields: Map<String, Value>) -> Result<App, AdminError> {
    let app: App = serde_json::from_value(Value::Object(fields))
        .map_err(|err| AdminError::BadRequest(format!("invalid app: {err}")))?;
    validate_app(&app).map_err(|err| AdminError::BadRequest(format!("invalid app: {err}")))?;
    Ok(app)
}

/// Longest id or key the admin API creates.
const MAX_CREDENTIAL: usize = 64;

/// Whether an id or key the admin API creates is plain enough for a URL path segment.
fn is_credential(value: &str) -> bool {
    (1..=MAX_CREDENTIAL).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A new app id: nine decimal digits, as Pusher's app ids are numbers.
fn generate_id() -> String {
    rand::thread_rng()
        .gen_range(100_000_000u32..1_000_000_000)
        .to_string()
}

/// `bytes` random bytes as lowercase hex (keys: 10, secrets: 16).
fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}
