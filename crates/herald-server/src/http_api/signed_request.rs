//! `SignedRequest`: the one extractor every HTTP API handler takes. It reads the bounded body,
//! finds the app and checks the request signature exactly as Pusher does (protocol doc 1.17).
//!
//! Invariant: a handler only ever sees a request whose app exists and is enabled and whose
//! `auth_key`, `auth_timestamp`, `auth_version`, `body_md5` and `auth_signature` are valid over the
//! raw body and the exact query.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::{header, HeaderMap, Method, Uri};
use bytes::BytesMut;
use herald_core::AppState;
use herald_protocol::signature;
use http_body_util::BodyExt;

use super::ApiError;
use crate::metrics;
use crate::state::Shared;

/// The only `auth_version` the Pusher HTTP API has.
const AUTH_VERSION: &str = "1.0";

/// How much of an oversized body is read and dropped, as a multiple of the limit, so that the 413
/// goes out on a connection that stays usable.
const DRAIN_FACTOR: usize = 8;

/// A verified request: its app, its decoded query and path parameters, and its body.
pub struct SignedRequest {
    pub app: Arc<AppState>,
    pub query: Vec<(String, String)>,
    path: Vec<(String, String)>,
    pub body: Bytes,
}

impl SignedRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        find(&self.query, name)
    }

    /// A path parameter of the route (`channel`, `user_id`); routes always have theirs.
    pub fn path(&self, name: &str) -> &str {
        find(&self.path, name).unwrap_or_default()
    }
}

fn find<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl FromRequest<Arc<Shared>> for SignedRequest {
    type Rejection = ApiError;

    async fn from_request(req: Request, shared: &Arc<Shared>) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let path: Vec<(String, String)> = RawPathParams::from_request_parts(&mut parts, shared)
            .await
            .map_err(|rejection| ApiError::MalformedPath(rejection.body_text()))?
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let query = parse_query(parts.uri.query().unwrap_or_default())?;
        let app = match find(&path, "app_id") {
            Some(app_id) => shared
                .node()
                .app_by_id(app_id)
                .ok_or_else(|| ApiError::UnknownApp(app_id.to_owned()))?,
            // `POST /users/{id}/terminate_connections` (the Python SDK) names no app: the app
            // is the one whose key signed the request.
            None => {
                let key = find(&query, "auth_key").ok_or(ApiError::MissingAuthParam("auth_key"))?;
                shared
                    .node()
                    .app_by_key(key)
                    .ok_or(ApiError::UnknownAuthKey)?
            }
        }
        .clone();
        check_content_type(&parts.method, &parts.headers)?;
        let max = shared.config().limits.max_request_body_bytes;
        let body = read_body(&parts.headers, body, max)
            .await
            .inspect_err(|err| {
                if matches!(err, ApiError::BodyTooLarge { .. }) {
                    metrics::limit_rejected_for(app.id(), metrics::Limit::RequestBody);
                }
            })?;
        verify(shared, &app, &parts.method, &parts.uri, &query, &body)?;
        Ok(SignedRequest {
            app,
            query,
            path,
            body,
        })
    }
}

/// Reads a body of at most `max` bytes.
///
/// A larger one is read on and dropped, up to `DRAIN_FACTOR` times `max`: the 413 then goes out
/// on a connection that stays usable, as keep-alive clients (the Node SDK's agent) send their next
/// request on it, and no unread input turns the close into a reset that loses the answer. A body
/// declared or found larger still is not read: its 413 says `Connection: close`. A slow sender is
/// cut off by the router's request timeout.
async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Bytes, ApiError> {
    let drain_max = max.saturating_mul(DRAIN_FACTOR);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > drain_max as u64) {
        return Err(ApiError::BodyTooLarge {
            max,
            drained: false,
        });
    }
    let mut body = body;
    // Most bodies arrive in one frame: keep it without copying.
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| ApiError::BodyUnreadable(err.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // Trailers.
        };
        total = total.saturating_add(data.len());
        if total > drain_max {
            return Err(ApiError::BodyTooLarge {
                max,
                drained: false,
            });
        }
        if total > max {
            continue;
        }
        match &first {
            None => first = Some(data),
            Some(_) => rest.extend_from_slice(&data),
        }
    }
    if total > max {
        return Err(ApiError::BodyTooLarge { max, drained: true });
    }
    Ok(match first {
        None => Bytes::new(),
        Some(first) if rest.is_empty() => first,
        Some(first) => {
            let mut all = BytesMut::with_capacity(total);
            all.extend_from_slice(&first);
            all.extend_from_slice(&rest);
            all.freeze()
        }
    })
}

/// Decodes the query; a parameter given twice or bytes that are not UTF-8 make it ambiguous what
/// was signed, so they are refused rather than guessed at.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        // The decoder replaces invalid UTF-8 with U+FFFD.
        if k.contains('\u{FFFD}') || v.contains('\u{FFFD}') {
            return Err(ApiError::MalformedQuery("a parameter is not UTF-8"));
        }
        if pairs.iter().any(|(seen, _)| *seen == k) {
            return Err(ApiError::MalformedQuery("a parameter is given twice"));
        }
        pairs.push((k.into_owned(), v.into_owned()));
    }
    Ok(pairs)
}

/// A body must be JSON; a request without `Content-Type` is taken as JSON (curl, old clients).
fn check_content_type(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if *method != Method::POST {
        return Ok(());
    }
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let media = text.split(';').next().unwrap_or_default().trim();
    if media.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedContentType(text.into_owned()))
    }
}

/// Checks key, enabled, version, timestamp window, `body_md5` and `auth_signature`.
fn verify(
    shared: &Shared,
    app: &AppState,
    method: &Method,
    uri: &Uri,
    query: &[(String, String)],
    body: &[u8],
) -> Result<(), ApiError> {
    let param = |name: &'static str| find(query, name).ok_or(ApiError::MissingAuthParam(name));
    let key = param("auth_key")?;
    let timestamp = param("auth_timestamp")?;
    let signature_hex = param("auth_signature")?;
    let version = param("auth_version")?;
    // The settings as they are now: a rotated secret applies from the next request.
    let settings = app.app();
    if key != settings.key {
        return Err(ApiError::UnknownAuthKey);
    }
    if !settings.enabled {
        return Err(ApiError::AppDisabled);
    }
    if version != AUTH_VERSION {
        return Err(ApiError::UnsupportedAuthVersion(version.to_owned()));
    }
    let timestamp: u64 = timestamp.parse().map_err(|_| ApiError::InvalidTimestamp)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let window = shared.config().limits.api_timestamp_window.as_secs();
    if now.abs_diff(timestamp) > window {
        return Err(ApiError::StaleTimestamp { window, now });
    }
    let md5 = find(query, "body_md5");
    if !body.is_empty() || md5.is_some() {
        let actual = signature::body_md5(body);
        if md5 != Some(actual.as_str()) {
            return Err(ApiError::BodyMd5Mismatch);
        }
    }
    let params = || query.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let secret = settings.secret.expose();
    let valid = signed_paths(uri.path(), &shared.config().path_prefix)
        .iter()
        .any(|path| {
            let string = signature::api_string_to_sign(method.as_str(), path, params());
            signature::verify(secret, string.as_bytes(), signature_hex)
        });
    if !valid {
        return Err(ApiError::InvalidSignature);
    }
    Ok(())
}

/// The paths a client may have signed: as received, and with the configured prefix added or
/// removed, since a reverse proxy may strip or add it between the SDK and herald. A path with
/// percent-escapes is also tried decoded: the Node SDK signs
/// `/apps/1/users/auth0|123/terminate_connections` and its HTTP client sends `auth0%7C123`.
fn signed_paths<'a>(path: &'a str, prefix: &str) -> Vec<Cow<'a, str>> {
    let mut paths = vec![Cow::Borrowed(path)];
    if let Ok(Cow::Owned(decoded)) = percent_encoding::percent_decode_str(path).decode_utf8() {
        paths.push(Cow::Owned(decoded));
    }
    if !prefix.is_empty() {
        for i in 0..paths.len() {
            let with_or_without = match paths[i].strip_prefix(prefix) {
                Some(stripped) if stripped.starts_with('/') => stripped.to_owned(),
                _ => format!("{prefix}{}", paths[i]),
            };
            paths.push(Cow::Owned(with_or_without));
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
        assert_eq!(
            signed_paths("/apps/1/users/a%7C1/terminate_connections", "/ws"),
            vec![
                "/apps/1/users/a%7C1/terminate_connections",
                "/apps/1/users/a|1/terminate_connections",
                "/ws/apps/1/users/a%7C1/terminate_connections",
                "/ws/apps/1/users/a|1/terminate_connections",
            ]
        );
    }

    #[test]
    fn ambiguous_queries_are_refused() {
        let check = |query: &str, want: &str| {
            let got = match parse_query(query) {
                Ok(pairs) => format!("{pairs:?}"),
                Err(err) => err.to_string(),
            };
            assert_eq!(got, want, "{query}");
        };
        check("a=1&b=%20x", r#"[("a", "1"), ("b", " x")]"#);
        check("", "[]");
        check(
            "a=1&a=2",
            "Malformed query string: a parameter is given twice",
        );
        check("a=%ff", "Malformed query string: a parameter is not UTF-8");
    }

    #[test]
    fn only_json_bodies_are_accepted() {
        let check = |method: Method, content_type: Option<&str>, ok: bool| {
            let mut headers = HeaderMap::new();
            if let Some(ct) = content_type {
                headers.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            }
            assert_eq!(
                check_content_type(&method, &headers).is_ok(),
                ok,
                "{method} {content_type:?}"
            );
        };
        check(Method::POST, Some("application/json"), true);
        check(Method::POST, Some("Application/JSON; charset=utf-8"), true);
        check(Method::POST, None, true);
        check(Method::POST, Some("text/plain"), false);
        check(
            Method::POST,
            Some("application/x-www-form-urlencoded"),
            false,
        );
        check(Method::GET, Some("text/plain"), true);
    }
}
