//! `ApiError`: every way an HTTP API request is refused, with one mapping to its status.
//!
//! Invariant: every refusal is a status and a JSON body `{"error": "..."}` naming the problem;
//! `status` is one exhaustive `match`, so a new variant forces a decision. Messages never echo a
//! secret or a signature. [`json_error`] is that body for the router's own refusals too.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_protocol::ChannelNameError;

use super::info::InfoAttribute;

/// Why an HTTP API request was refused.
///
/// | status | variants |
/// |---|---|
/// | 400 | malformed query, path, JSON, event, channel, socket id, `info`, batch; wrong `auth_version` |
/// | 401 | missing auth parameter, unknown key, bad timestamp, `body_md5`, signature |
/// | 403 | app disabled |
/// | 404 | unknown app id |
/// | 413 | body over `limits.max_request_body_bytes` (`Connection: close` unless it was read to its end), event data too large |
/// | 415 | a body whose `Content-Type` is not JSON |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("Malformed query string: {0}")]
    MalformedQuery(&'static str),
    #[error("Malformed path: {0}")]
    MalformedPath(String),
    #[error("Unknown app id {0:?}")]
    UnknownApp(String),
    #[error("Missing {0}")]
    MissingAuthParam(&'static str),
    #[error("Unsupported auth_version {0:?} (only 1.0 exists)")]
    UnsupportedAuthVersion(String),
    #[error("Unknown auth_key for this app")]
    UnknownAuthKey,
    #[error("Application disabled")]
    AppDisabled,
    #[error("auth_timestamp is not a number")]
    InvalidTimestamp,
    #[error(
        "auth_timestamp is more than {window} s away from server time ({now}); check the clock"
    )]
    StaleTimestamp { window: u64, now: u64 },
    #[error("body_md5 does not match the request body")]
    BodyMd5Mismatch,
    #[error("Invalid auth_signature")]
    InvalidSignature,
    /// `drained`: the body was read to its end, so the connection stays usable.
    #[error("Request body is larger than {max} bytes")]
    BodyTooLarge { max: usize, drained: bool },
    #[error("Could not read the request body: {0}")]
    BodyUnreadable(String),
    #[error("Content-Type must be application/json, not {0:?}")]
    UnsupportedContentType(String),
    #[error("Invalid JSON body: {0}")]
    InvalidJson(String),
    #[error("Missing field '{0}'")]
    MissingField(&'static str),
    #[error("Event name must be 1 to {max} characters")]
    InvalidEventName { max: usize },
    /// `pusher_internal:` names are the server's own protocol: pusher-js acts on them (a fake
    /// `member_added` would add a presence member), so the API does not relay them.
    #[error(
        "Event name {0:?} is reserved: names starting with pusher_internal: are the protocol's own"
    )]
    ReservedEventName(String),
    #[error("Event data is {size} bytes; at most {max} are allowed")]
    EventDataTooLarge { size: usize, max: usize },
    #[error("'channels' must not be empty")]
    NoChannels,
    #[error("Too many channels: {given} given, at most {max} allowed")]
    TooManyChannels { given: usize, max: usize },
    #[error("Invalid channel name {name:?}: {reason}")]
    InvalidChannelName {
        name: String,
        reason: ChannelNameError,
    },
    #[error("Invalid socket_id {0:?} (expected two numbers joined by a dot, like \"123.456\")")]
    InvalidSocketId(String),
    #[error("Unknown info attribute {0:?} (known: user_count, subscription_count, cache)")]
    UnknownInfo(String),
    #[error("info={attribute} {reason}")]
    InfoNotApplicable {
        attribute: InfoAttribute,
        reason: &'static str,
    },
    #[error("Batch has {given} events; at most {max} are allowed")]
    BatchTooLarge { given: usize, max: usize },
    #[error("Users can only be listed for presence channels")]
    NotPresenceChannel,
    #[error("user_id must not be empty")]
    EmptyUserId,
    #[error("batch[{index}]: {error}")]
    InBatch { index: usize, error: Box<ApiError> },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedQuery(_)
            | ApiError::MalformedPath(_)
            | ApiError::UnsupportedAuthVersion(_)
            | ApiError::InvalidJson(_)
            | ApiError::MissingField(_)
            | ApiError::InvalidEventName { .. }
            | ApiError::ReservedEventName(_)
            | ApiError::NoChannels
            | ApiError::TooManyChannels { .. }
            | ApiError::InvalidChannelName { .. }
            | ApiError::InvalidSocketId(_)
            | ApiError::UnknownInfo(_)
            | ApiError::InfoNotApplicable { .. }
            | ApiError::BatchTooLarge { .. }
            | ApiError::NotPresenceChannel
            | ApiError::EmptyUserId => StatusCode::BAD_REQUEST,
            ApiError::MissingAuthParam(_)
            | ApiError::UnknownAuthKey
            | ApiError::InvalidTimestamp
            | ApiError::StaleTimestamp { .. }
            | ApiError::BodyMd5Mismatch
            | ApiError::InvalidSignature => StatusCode::UNAUTHORIZED,
            ApiError::AppDisabled => StatusCode::FORBIDDEN,
            ApiError::UnknownApp(_) => StatusCode::NOT_FOUND,
            ApiError::BodyTooLarge { .. } | ApiError::EventDataTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::BodyUnreadable(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InBatch { error, .. } => error.status(),
        }
    }

    /// Whether the request body may be left unread on the connection: then the answer says
    /// `Connection: close`, so a keep-alive client (the Node SDK's agent) does not send its next
    /// request on a connection the server is about to drop.
    fn body_left_unread(&self) -> bool {
        matches!(
            self,
            ApiError::BodyTooLarge { drained: false, .. } | ApiError::BodyUnreadable(_)
        )
    }

    /// Names an error inside a batch by its index.
    pub fn in_batch(self, index: Option<usize>) -> ApiError {
        match index {
            Some(index) => ApiError::InBatch {
                index,
                error: Box::new(self),
            },
            None => self,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let close = self.body_left_unread();
        let mut res = json_error(self.status(), &self.to_string());
        if close {
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}

/// An error the router itself answers (no route, wrong method, a refused upgrade): the status and
/// `{"error": "..."}`, the same shape as the HTTP API's errors.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({"error": message}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cases: &[(ApiError, &str)]) {
        for (err, want) in cases {
            let got = format!("{} {err}", err.status().as_u16());
            assert_eq!(got, *want);
        }
    }

    #[test]
    fn every_error_has_a_status_and_a_message() {
        check(&[
            (
                ApiError::MalformedQuery("not UTF-8"),
                "400 Malformed query string: not UTF-8",
            ),
            (ApiError::MalformedPath("x".into()), "400 Malformed path: x"),
            (ApiError::UnknownApp("9".into()), "404 Unknown app id \"9\""),
            (
                ApiError::MissingAuthParam("auth_key"),
                "401 Missing auth_key",
            ),
            (
                ApiError::UnsupportedAuthVersion("2.0".into()),
                "400 Unsupported auth_version \"2.0\" (only 1.0 exists)",
            ),
            (ApiError::UnknownAuthKey, "401 Unknown auth_key for this app"),
            (ApiError::AppDisabled, "403 Application disabled"),
            (
                ApiError::InvalidTimestamp,
                "401 auth_timestamp is not a number",
            ),
            (
                ApiError::StaleTimestamp { window: 600, now: 7 },
                "401 auth_timestamp is more than 600 s away from server time (7); check the clock",
            ),
            (
                ApiError::BodyMd5Mismatch,
                "401 body_md5 does not match the request body",
            ),
            (ApiError::InvalidSignature, "401 Invalid auth_signature"),
            (
                ApiError::BodyTooLarge {
                    max: 10,
                    drained: true,
                },
                "413 Request body is larger than 10 bytes",
            ),
            (
                ApiError::BodyUnreadable("eof".into()),
                "400 Could not read the request body: eof",
            ),
            (
                ApiError::UnsupportedContentType("text/plain".into()),
                "415 Content-Type must be application/json, not \"text/plain\"",
            ),
            (ApiError::InvalidJson("eof".into()), "400 Invalid JSON body: eof"),
            (ApiError::MissingField("name"), "400 Missing field 'name'"),
            (
                ApiError::InvalidEventName { max: 200 },
                "400 Event name must be 1 to 200 characters",
            ),
            (
                ApiError::ReservedEventName("pusher_internal:member_added".into()),
                "400 Event name \"pusher_internal:member_added\" is reserved: names starting with pusher_internal: are the protocol's own",
            ),
            (
                ApiError::EventDataTooLarge { size: 11, max: 10 },
                "413 Event data is 11 bytes; at most 10 are allowed",
            ),
            (ApiError::NoChannels, "400 'channels' must not be empty"),
            (
                ApiError::TooManyChannels { given: 101, max: 100 },
                "400 Too many channels: 101 given, at most 100 allowed",
            ),
            (
                ApiError::InvalidChannelName {
                    name: "a b".into(),
                    reason: ChannelNameError::InvalidCharacter,
                },
                "400 Invalid channel name \"a b\": channel name contains a character outside [A-Za-z0-9_-=@,.;]",
            ),
            (
                ApiError::InvalidSocketId("x".into()),
                "400 Invalid socket_id \"x\" (expected two numbers joined by a dot, like \"123.456\")",
            ),
            (
                ApiError::UnknownInfo("foo".into()),
                "400 Unknown info attribute \"foo\" (known: user_count, subscription_count, cache)",
            ),
            (
                ApiError::InfoNotApplicable {
                    attribute: InfoAttribute::UserCount,
                    reason: "is only valid for presence channels",
                },
                "400 info=user_count is only valid for presence channels",
            ),
            (
                ApiError::BatchTooLarge { given: 11, max: 10 },
                "400 Batch has 11 events; at most 10 are allowed",
            ),
            (
                ApiError::NotPresenceChannel,
                "400 Users can only be listed for presence channels",
            ),
            (ApiError::EmptyUserId, "400 user_id must not be empty"),
            (
                ApiError::EventDataTooLarge { size: 11, max: 10 }.in_batch(Some(3)),
                "413 batch[3]: Event data is 11 bytes; at most 10 are allowed",
            ),
        ]);
    }

    #[test]
    fn only_a_body_left_unread_closes_the_connection() {
        let res = ApiError::BodyTooLarge {
            max: 1,
            drained: false,
        }
        .into_response();
        assert_eq!(res.headers()[header::CONNECTION], "close");
        let res = ApiError::BodyTooLarge {
            max: 1,
            drained: true,
        }
        .into_response();
        assert!(res.headers().get(header::CONNECTION).is_none());
        let res = ApiError::InvalidSignature.into_response();
        assert!(res.headers().get(header::CONNECTION).is_none());
    }
}
