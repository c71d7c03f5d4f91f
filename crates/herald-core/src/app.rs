//! Apps, their settings and limits: the one declaration of every per-app setting and its default.
//!
//! `App` is what the configuration file's `[[apps]]` tables, the `HERALD_APPS` environment
//! variable and the app registry hold: each setting is one field here, with its default in the
//! field's serde attribute, so a new setting is added in one place and is settable everywhere.
//!
//! Invariant: a secret never appears in `Debug` output or logs.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// An app secret; `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AppSecret(String);

impl AppSecret {
    pub fn new(secret: impl Into<String>) -> AppSecret {
        AppSecret(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AppSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for AppSecret {
    fn from(secret: &str) -> AppSecret {
        AppSecret::new(secret)
    }
}

/// One Pusher app: credentials, per-app limits and webhook targets.
///
/// Every field without a default is required; every other default is written once, here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub id: String,
    pub key: String,
    pub secret: AppSecret,
    /// A disabled app refuses new connections (4003) and API requests; its sockets are closed.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    #[serde(default = "defaults::yes")]
    pub client_events: bool,
    /// Maximum open connections for this app across the cluster; 0 is unlimited.
    #[serde(default)]
    pub max_connections: usize,
    /// Allowed `Origin` values; empty allows any. Entries may be `*` or `*.example.com` patterns.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Maximum size in bytes of an event's `data` (client events and HTTP publishes).
    #[serde(default = "defaults::max_message_size")]
    pub max_message_size: usize,
    #[serde(default = "defaults::max_presence_members")]
    pub max_presence_members: usize,
    #[serde(default = "defaults::max_presence_user_info_bytes")]
    pub max_presence_user_info_bytes: usize,
    #[serde(default = "defaults::max_client_events_per_second")]
    pub max_client_events_per_second: u32,
    /// Send `pusher_internal:subscription_count` to non-presence channels.
    #[serde(default)]
    pub subscription_count: bool,
    #[serde(default = "defaults::max_channels_per_publish")]
    pub max_channels_per_publish: usize,
    #[serde(default = "defaults::max_batch_size")]
    pub max_batch_size: usize,
    /// Negotiate permessage-deflate with this app's clients when they offer it (and the node
    /// allows it, `deflate` in the node's configuration).
    #[serde(default = "defaults::yes")]
    pub deflate: bool,
    #[serde(default)]
    pub webhooks: Vec<WebhookTarget>,
    /// Events kept per channel for replay to returning clients; 0 turns history (and replay)
    /// off.
    #[serde(default = "defaults::history_events")]
    pub history_events: usize,
    /// How long an event is kept for replay, in seconds; 0 turns history off.
    #[serde(default = "defaults::history_seconds")]
    pub history_seconds: u64,
    /// Bytes of frames kept per channel for replay (each frame is at most `max_message_size`
    /// plus its envelope); 0 turns history off.
    #[serde(default = "defaults::history_max_bytes")]
    pub history_max_bytes: usize,
    /// Set the signed resume cookie on the WebSocket handshake, so a browser that reconnects is
    /// recognised without signing in.
    #[serde(default = "defaults::yes")]
    pub resume_cookie: bool,
}

mod defaults {
    pub fn yes() -> bool {
        true
    }
    pub fn max_message_size() -> usize {
        10 * 1024
    }
    pub fn max_presence_members() -> usize {
        100
    }
    pub fn max_presence_user_info_bytes() -> usize {
        1024
    }
    pub fn max_client_events_per_second() -> u32 {
        10
    }
    pub fn max_channels_per_publish() -> usize {
        100
    }
    pub fn max_batch_size() -> usize {
        10
    }
    // Sized together: at 20 events/s a channel's history holds `history_seconds` of events, so
    // a client back within the window is never told `history_trimmed` (count: 20 a second; bytes:
    // 1,200 frames of up to 873 bytes; a Laravel broadcast frame is typically 300 B to 1 KB).
    // docs/guide/continuity.md gives the memory this costs, measured by
    // `tests/history_memory.rs`.
    pub fn history_events() -> usize {
        20 * 60
    }
    pub fn history_seconds() -> u64 {
        60
    }
    pub fn history_max_bytes() -> usize {
        1024 * 1024
    }
}

/// One webhook target of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    pub url: String,
    /// Event types to send (`channel_occupied`, `member_added`, ...); empty sends all.
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub channel_prefix: Option<String>,
    #[serde(default)]
    pub channel_suffix: Option<String>,
    /// Extra request headers, e.g. an authorization token for the receiver.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl App {
    /// An app with these credentials and every other setting at its default.
    pub fn new(id: impl Into<String>, key: impl Into<String>, secret: impl Into<String>) -> App {
        // Built through serde so that the defaults are exactly the ones declared on the fields.
        let credentials = serde_json::json!({
            "id": id.into(),
            "key": key.into(),
            "secret": secret.into(),
        });
        serde_json::from_value(credentials)
            .expect("id, key and secret are the only required fields")
    }

    /// The demo app a node runs with when no apps are configured (Soketi's convention).
    pub fn demo() -> App {
        App::new("1", "app-key", "app-secret")
    }

    /// The connection limit, `None` when unlimited.
    pub fn connection_limit(&self) -> Option<usize> {
        (self.max_connections > 0).then_some(self.max_connections)
    }

    /// Whether a browser `Origin` header may open a connection to this app.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        let Some(origin) = origin else {
            // Non-browser clients send no Origin; the allow-list is a browser protection.
            return true;
        };
        let host = origin.split_once("://").map_or(origin, |(_, h)| h);
        self.allowed_origins.iter().any(|allowed| {
            allowed == "*"
                || allowed == origin
                || allowed == host
                || allowed.strip_prefix("*.").is_some_and(|suffix| {
                    host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
                })
        })
    }
}

/// Limits that apply to every connection on a node.
#[derive(Debug, Clone)]
pub struct NodeLimits {
    pub max_channels_per_connection: usize,
    pub max_channel_name_length: usize,
    pub max_event_name_length: usize,
    /// Bytes queued for one socket before it counts as a slow consumer and is closed with 4100.
    pub outbox_max_bytes: usize,
    pub max_watchlist: usize,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            max_channels_per_connection: 128,
            max_channel_name_length: 200,
            max_event_name_length: 200,
            outbox_max_bytes: 1024 * 1024,
            max_watchlist: 100,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_app_secret() {
        let app = App::demo();
        let debug = format!("{app:?}");
        assert!(!debug.contains("app-secret"), "{debug}");
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn origin_patterns() {
        let mut app = App::demo();
        assert!(app.origin_allowed(Some("https://evil.test")));
        app.allowed_origins = vec!["https://app.example.com".into(), "*.example.org".into()];
        assert!(app.origin_allowed(Some("https://app.example.com")));
        assert!(app.origin_allowed(Some("https://a.example.org")));
        assert!(!app.origin_allowed(Some("https://example.org.evil.test")));
        assert!(!app.origin_allowed(Some("https://badexample.org")));
        assert!(!app.origin_allowed(Some("https://evil.test")));
        assert!(app.origin_allowed(None));
    }
}
