//! Request signing exactly as Pusher does it (protocol doc 1.17).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{Method, StatusCode, Uri};
use herald_core::AppState;
use herald_protocol::signature;

use super::ApiError;
use crate::Shared;

/// A verified request: its app and its decoded query parameters.
pub struct Verified {
    pub app: Arc<AppState>,
    pub query: Vec<(String, String)>,
}

impl Verified {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Checks app, key, timestamp window, `body_md5` and `auth_signature`.
///
/// # Errors
/// 404 unknown app, 401 bad/stale signature or wrong key, 403 disabled app.
pub fn verify_request(
    shared: &Shared,
    app_id: &str,
    method: &Method,
    uri: &Uri,
    body: &[u8],
) -> Result<Verified, ApiError> {
    let app = shared
        .node
        .app_by_id(app_id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("Unknown app id {app_id:?}")))?
        .clone();
    let query: Vec<(String, String)> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let key = param("auth_key").ok_or_else(|| ApiError::unauthorized("Missing auth_key"))?;
    let timestamp =
        param("auth_timestamp").ok_or_else(|| ApiError::unauthorized("Missing auth_timestamp"))?;
    let signature_hex =
        param("auth_signature").ok_or_else(|| ApiError::unauthorized("Missing auth_signature"))?;
    param("auth_version").ok_or_else(|| ApiError::unauthorized("Missing auth_version"))?;
    if key != app.app().key {
        return Err(ApiError::unauthorized("Unknown auth_key for this app"));
    }
    if !app.app().enabled {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "Application disabled"));
    }
    let timestamp: i64 = timestamp
        .parse()
        .map_err(|_| ApiError::unauthorized("auth_timestamp is not a number"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let window = shared.config.limits.api_timestamp_window.as_secs() as i64;
    if now.abs_diff(timestamp) > window.unsigned_abs() {
        return Err(ApiError::unauthorized(format!(
            "auth_timestamp is more than {window} s away from server time ({now}); check the clock"
        )));
    }
    let md5 = param("body_md5");
    if !body.is_empty() || md5.is_some() {
        let actual = signature::body_md5(body);
        if md5 != Some(actual.as_str()) {
            return Err(ApiError::unauthorized(
                "body_md5 does not match the request body",
            ));
        }
    }
    let params = || query.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let settings = app.app();
    let secret = settings.secret.expose();
    let valid = signed_paths(uri.path(), &shared.config.path_prefix)
        .iter()
        .any(|path| {
            let string = signature::api_string_to_sign(method.as_str(), path, params());
            signature::verify(secret, string.as_bytes(), signature_hex)
        });
    if !valid {
        return Err(ApiError::unauthorized("Invalid auth_signature"));
    }
    Ok(Verified { app, query })
}

/// The paths a client may have signed: as received, and with the configured prefix added or
/// removed, since a reverse proxy may strip or add it between the SDK and herald.
fn signed_paths<'a>(path: &'a str, prefix: &str) -> Vec<Cow<'a, str>> {
    let mut paths = vec![Cow::Borrowed(path)];
    if !prefix.is_empty() {
        match path.strip_prefix(prefix) {
            Some(stripped) if stripped.starts_with('/') => paths.push(Cow::Borrowed(stripped)),
            _ => paths.push(Cow::Owned(format!("{prefix}{path}"))),
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_tried_both_ways() {
        assert_eq!(signed_paths("/apps/1/events", ""), vec!["/apps/1/events"]);
        assert_eq!(
            signed_paths("/ws/apps/1/events", "/ws"),
            vec!["/ws/apps/1/events", "/apps/1/events"]
        );
        assert_eq!(
            signed_paths("/apps/1/events", "/ws"),
            vec!["/apps/1/events", "/ws/apps/1/events"]
        );
    }
}
