//! Apps and their limits, as validated from configuration.
//!
//! Invariant: a secret never appears in `Debug` output or logs.

use std::fmt;

/// An app secret; `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
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

/// One Pusher app: credentials plus per-app limits.
#[derive(Debug, Clone)]
pub struct App {
    pub id: String,
    pub key: String,
    pub secret: AppSecret,
    pub enabled: bool,
    pub client_events: bool,
    /// Maximum open connections for this app; `None` is unlimited.
    pub max_connections: Option<usize>,
    /// Allowed `Origin` values; empty allows any. Entries may be `*` or `*.example.com` patterns.
    pub allowed_origins: Vec<String>,
    /// Maximum size in bytes of an event's `data` (client events and HTTP publishes).
    pub max_message_size: usize,
    pub max_presence_members: usize,
    pub max_presence_user_info_bytes: usize,
    pub max_client_events_per_second: u32,
    /// Send `pusher_internal:subscription_count` to non-presence channels.
    pub subscription_count: bool,
    pub max_channels_per_publish: usize,
    pub max_batch_size: usize,
}

impl App {
    /// The demo app a node runs with when no apps are configured (Soketi's convention).
    pub fn demo() -> App {
        App {
            id: "1".into(),
            key: "app-key".into(),
            secret: AppSecret::new("app-secret"),
            enabled: true,
            client_events: true,
            max_connections: None,
            allowed_origins: Vec::new(),
            max_message_size: 10 * 1024,
            max_presence_members: 100,
            max_presence_user_info_bytes: 1024,
            max_client_events_per_second: 10,
            subscription_count: false,
            max_channels_per_publish: 100,
            max_batch_size: 10,
        }
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
