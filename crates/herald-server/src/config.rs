//! Configuration: defaults, then an optional TOML file, then `HERALD_*` environment variables
//! (`HERALD_DRAIN__WINDOW=10s` for nested keys), then command-line flags, layered by figment.
//!
//! Invariant: the whole tree is validated once, at start-up, into typed values; a bad file fails
//! start-up with a message naming the key.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
pub use herald_core::app::WebhookTarget;
use herald_core::{App, NodeLimits};
use serde::{Deserialize, Serialize};

/// The prefix of every configuration environment variable.
const ENV_PREFIX: &str = "HERALD_";

/// `HERALD_*` variables that are not configuration: the log filter, and those of the test and
/// benchmark scripts (`HERALD_BIN`, `HERALD_TEST_REDIS_URL`, `HERALD_BENCH_*`). Any other
/// `HERALD_*` variable must name a configuration key, or start-up fails.
const ENV_NOT_CONFIG: &[&str] = &["LOG", "BIN"];
const ENV_NOT_CONFIG_PREFIXES: &[&str] = &["TEST_", "BENCH"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Mount point for `/app/{key}` and `/apps/{id}/…`, e.g. `/ws` behind a reverse proxy.
    /// Requests without the prefix are served as well.
    pub path_prefix: String,
    /// This node's id, the first half of every socket id; random when unset.
    pub node_id: Option<u64>,
    pub log_format: LogFormat,
    /// Log every protocol frame.
    pub debug: bool,
    /// Redis for running several nodes as one cluster (`redis://` or `rediss://`); without it
    /// the node runs alone with the in-memory broker.
    pub redis_url: Option<String>,
    /// Advertised to clients in `connection_established`; a client silent this long is pinged.
    #[serde(with = "humantime_serde")]
    pub activity_timeout: Duration,
    /// How long a pinged client has to answer before it is closed with 4201.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Open connections on this node before new ones are refused with 4100.
    pub max_connections: usize,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it; each app can turn it
    /// off for itself (`apps[].deflate`).
    pub deflate: bool,
    /// Conformance testing only, never in production: every WebSocket message on `/app/{key}`
    /// is echoed back instead of handled as Pusher protocol, and nothing else is sent (no
    /// `pusher:connection_established`, no `pusher:ping`). `tests/autobahn/run.sh` runs the
    /// Autobahn suite against herald this way.
    pub websocket_echo: bool,
    pub limits: LimitsConfig,
    pub drain: DrainConfig,
    pub cluster: ClusterConfig,
    pub webhooks: WebhooksConfig,
    /// A webhook target receiving every event type for the first app (`HERALD_WEBHOOK_URL`), so a
    /// single-app deployment needs no file.
    pub webhook_url: Option<String>,
    /// The admin API (`/admin/api`) and the console (`/console`); off without a token.
    pub admin: AdminConfig,
    /// Where apps are kept: the configuration file (`apps`, the default) or a database.
    pub app_store: AppStoreConfig,
    /// Every per-app setting and its default is declared once, on [`App`].
    pub apps: Vec<App>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The bearer token of the admin API and the console (`HERALD_ADMIN__TOKEN`); both are off
    /// while it is unset.
    pub token: Option<AdminToken>,
}

/// The admin token; `Debug` prints `<redacted>`, so neither `Config`'s Debug output nor a log
/// line shows it. Serialized as the plain string (the TOML key `token`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for AdminToken {
    fn from(token: &str) -> AdminToken {
        AdminToken(token.to_owned())
    }
}

impl From<String> for AdminToken {
    fn from(token: String) -> AdminToken {
        AdminToken(token)
    }
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppStoreConfig {
    /// `postgres://...` or `mysql://...` (`HERALD_APP_STORE__URL`): apps are kept in that
    /// database and `apps` is ignored. Unset: apps come from the configuration file.
    pub url: Option<String>,
}

impl std::fmt::Debug for AppStoreConfig {
    // The URL's password is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppStoreConfig")
            .field("url", &self.url.as_deref().map(redact_password))
            .finish()
    }
}

/// `scheme://user:password@host/...` with the password replaced.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') {
                ":<redacted>"
            } else {
                ""
            };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// `channel_vacated` and `member_removed` wait this long and are not sent at all if the
    /// channel or member comes back meanwhile.
    #[serde(with = "humantime_serde")]
    pub leave_delay: Duration,
    /// A webhook that keeps failing is retried with backoff for this long, then dropped.
    #[serde(with = "humantime_serde")]
    pub retry_window: Duration,
    /// The first retry's delay; each further retry doubles it (up to a minute), plus jitter.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Time for one request, connect to last byte.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Events waiting to be processed before new ones are dropped (and counted).
    pub queue_capacity: usize,
    /// Most events sent in one request to the same target (1 = no batching).
    pub max_batch: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            leave_delay: Duration::from_secs(3),
            retry_window: Duration::from_secs(300),
            retry_initial: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            queue_capacity: 10_000,
            max_batch: 1,
        }
    }
}

/// The webhook event types Pusher defines.
pub const WEBHOOK_EVENTS: [&str; 7] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Prefix of every Redis key and channel, so several clusters can share one Redis.
    pub prefix: String,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A node silent this long is declared dead and its members removed on every other node.
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
    /// Messages waiting for Redis before new ones are dropped and counted.
    pub queue_capacity: usize,
    /// Cluster mode: `redis_url` is a Redis Cluster (one or more comma-separated seed nodes) or a
    /// Redis 7, every key is under the `{prefix}` hash tag and each shard of the bus under its own.
    pub sharded: bool,
    /// Streams the bus is spread over (each on its own hash slot in a Redis Cluster).
    pub shards: usize,
    /// What picks an event's shard: `app` (one order per app) or `channel` (one app's traffic
    /// spread over every shard; order per channel).
    pub shard_by: herald_cluster::ShardBy,
    /// Entries each shard of the bus keeps in Redis (`XADD … MAXLEN ~`): how far behind a node
    /// may fall (a Redis blip, a slow node) and still catch up from the log, and what the bus
    /// costs Redis in memory.
    pub log_max_len: usize,
    /// An in-process bus shared by several nodes of one process (tests, embedding); takes
    /// precedence over `redis_url`. Not settable from a file or the environment.
    #[serde(skip)]
    pub hub: Option<herald_cluster::MemoryHub>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            prefix: "herald".into(),
            heartbeat_interval: Duration::from_secs(1),
            node_timeout: Duration::from_secs(5),
            queue_capacity: 65_536,
            sharded: false,
            shards: 1,
            shard_by: herald_cluster::ShardBy::App,
            log_max_len: 100_000,
            hub: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_channels_per_connection: usize,
    pub max_channel_name_length: usize,
    pub max_event_name_length: usize,
    /// Largest WebSocket message (and frame) a client may send.
    pub max_frame_bytes: usize,
    /// Messages of any kind one connection may send per second (burst of the same size); excess
    /// messages are answered with `pusher:error` 4301 and dropped. Client events have their own,
    /// stricter per-app limit.
    pub max_messages_per_second: u32,
    /// Bytes queued for one socket before it is closed as a slow consumer (4100).
    pub outbox_max_bytes: usize,
    /// Time a client has to send its HTTP request headers (upgrade or API).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Largest HTTP request head.
    pub max_header_bytes: usize,
    /// Largest HTTP API request body.
    pub max_request_body_bytes: usize,
    /// Time to receive a whole HTTP API request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Accepted clock skew for `auth_timestamp` on signed HTTP API requests.
    #[serde(with = "humantime_serde")]
    pub api_timestamp_window: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// After the signal, readiness is false but the node keeps serving this long.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// Sockets are closed with 4200 in jittered batches spread over this window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// From the signal to exit, whatever is left.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "0.0.0.0".into(),
            port: 6001,
            path_prefix: String::new(),
            node_id: None,
            log_format: LogFormat::Text,
            debug: false,
            redis_url: None,
            activity_timeout: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(30),
            max_connections: 100_000,
            deflate: true,
            websocket_echo: false,
            limits: LimitsConfig::default(),
            drain: DrainConfig::default(),
            cluster: ClusterConfig::default(),
            webhooks: WebhooksConfig::default(),
            webhook_url: None,
            admin: AdminConfig::default(),
            app_store: AppStoreConfig::default(),
            apps: vec![App::demo()],
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let node = NodeLimits::default();
        LimitsConfig {
            max_channels_per_connection: node.max_channels_per_connection,
            max_channel_name_length: node.max_channel_name_length,
            max_event_name_length: node.max_event_name_length,
            max_frame_bytes: 64 * 1024,
            max_messages_per_second: 200,
            outbox_max_bytes: node.outbox_max_bytes,
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_request_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            api_timestamp_window: Duration::from_secs(600),
        }
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            delay: Duration::from_secs(5),
            window: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
        }
    }
}

/// Values given on the command line; only those present override the other layers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
}

impl Config {
    /// Layers defaults, the file, the environment and the flags, then validates.
    ///
    /// # Errors
    /// A message naming the offending key and what is wrong with it.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        Config::load_from(file, std::env::vars(), overrides)
    }

    /// [`Config::load`] with the environment given, so tests need not change the process's.
    ///
    /// # Errors
    /// A message naming the offending key (or environment variable) and what is wrong with it.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                anyhow::bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment
            .merge(EnvLayer::parse(env)?)
            .merge(Serialized::defaults(overrides));
        let config: Config = figment.extract().map_err(|err| {
            // figment names keys under its profile ("default.limits.max_frame_bytes"); the
            // user wrote "limits.max_frame_bytes".
            let messages: Vec<String> = err
                .into_iter()
                .map(|e| e.to_string().replace("key \"default.", "key \""))
                .collect();
            anyhow::anyhow!("invalid configuration: {}", messages.join("; "))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The top-level keys, as the environment spells them: derived from the tree itself, so a
    /// new setting is settable through the environment without a list to maintain.
    fn keys() -> Vec<String> {
        match Value::serialize(Config::default()) {
            Ok(Value::Dict(_, dict)) => dict.into_keys().collect(),
            _ => unreachable!("Config serializes to a table"),
        }
    }

    /// # Errors
    /// The first rule a value breaks, naming its key.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.apps.is_empty() {
            bail!("apps: at least one app must be configured");
        }
        let (mut ids, mut keys) = (HashSet::new(), HashSet::new());
        for (i, app) in self.apps.iter().enumerate() {
            if let Err(err) = validate_app(app) {
                bail!("apps[{i}].{err}");
            }
            if !ids.insert(&app.id) {
                bail!("apps[{i}].id: duplicate app id {:?}", app.id);
            }
            if !keys.insert(&app.key) {
                bail!("apps[{i}].key: duplicate app key {:?}", app.key);
            }
        }
        if let Some(token) = &self.admin.token {
            if token.expose().trim().is_empty() {
                bail!("admin.token: must not be empty (leave it unset to turn the admin API off)");
            }
        }
        if !self.path_prefix.is_empty()
            && (!self.path_prefix.starts_with('/') || self.path_prefix.ends_with('/'))
        {
            bail!("path_prefix: must start with '/' and not end with '/', e.g. \"/ws\"");
        }
        if self.activity_timeout < Duration::from_secs(1) {
            bail!("activity_timeout: must be at least 1s (pusher-js refuses a zero timeout)");
        }
        if self.drain.deadline < self.drain.delay + self.drain.window {
            bail!("drain.deadline: must be at least drain.delay + drain.window");
        }
        if self.cluster.node_timeout <= self.cluster.heartbeat_interval * 2 {
            bail!("cluster.node_timeout: must be more than twice cluster.heartbeat_interval");
        }
        if self.cluster.prefix.is_empty() {
            bail!("cluster.prefix: must not be empty");
        }
        if let Some(url) = &self.webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("webhook_url: must be an http:// or https:// URL");
            }
        }
        if let Some(url) = &self.app_store.url {
            if herald_appstore::Dialect::of_url(url).is_none() {
                bail!("app_store.url: must start with postgres://, postgresql://, mysql:// or mariadb://");
            }
        }
        if self.webhooks.max_batch == 0 {
            bail!("webhooks.max_batch: must be at least 1");
        }
        if self.limits.max_messages_per_second == 0 {
            bail!("limits.max_messages_per_second: must be at least 1");
        }
        if self.limits.max_frame_bytes < 1024 {
            bail!("limits.max_frame_bytes: must be at least 1024");
        }
        Ok(())
    }

    /// Every app's webhook targets, `webhook_url` included, by app id.
    pub fn webhook_targets(&self) -> std::collections::HashMap<String, Vec<WebhookTarget>> {
        Config::webhook_targets_of(&self.apps, self.webhook_url.as_deref())
    }

    /// The webhook targets of `apps` by app id, `webhook_url` added to the first app's.
    pub fn webhook_targets_of(
        apps: &[App],
        webhook_url: Option<&str>,
    ) -> std::collections::HashMap<String, Vec<WebhookTarget>> {
        let mut targets: std::collections::HashMap<String, Vec<WebhookTarget>> = apps
            .iter()
            .map(|a| (a.id.clone(), a.webhooks.clone()))
            .collect();
        if let (Some(url), Some(first)) = (webhook_url, apps.first()) {
            targets
                .entry(first.id.clone())
                .or_default()
                .push(WebhookTarget {
                    url: url.to_owned(),
                    event_types: Vec::new(),
                    channel_prefix: None,
                    channel_suffix: None,
                    headers: Default::default(),
                });
        }
        targets.retain(|_, t| !t.is_empty());
        targets
    }

    pub fn apps(&self) -> Vec<App> {
        self.apps.clone()
    }

    pub fn node_limits(&self) -> NodeLimits {
        NodeLimits {
            max_channels_per_connection: self.limits.max_channels_per_connection,
            max_channel_name_length: self.limits.max_channel_name_length,
            max_event_name_length: self.limits.max_event_name_length,
            outbox_max_bytes: self.limits.outbox_max_bytes,
            ..NodeLimits::default()
        }
    }
}

/// Checks one app's settings, as start-up does for the file's apps and the admin API does for
/// an app it creates or changes. Uniqueness of ids and keys is the caller's (or the store's).
///
/// # Errors
/// The first rule broken, as `key: what is wrong` (the key relative to the app).
pub fn validate_app(app: &App) -> Result<(), String> {
    for (key, value) in [
        ("id", app.id.as_str()),
        ("key", app.key.as_str()),
        ("secret", app.secret.expose()),
    ] {
        if value.is_empty() {
            return Err(format!("{key}: id, key and secret must not be empty"));
        }
    }
    for (j, hook) in app.webhooks.iter().enumerate() {
        if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
            return Err(format!(
                "webhooks[{j}].url: must be an http:// or https:// URL"
            ));
        }
        if let Some(bad) = hook
            .event_types
            .iter()
            .find(|t| !WEBHOOK_EVENTS.contains(&t.as_str()))
        {
            return Err(format!(
                "webhooks[{j}].event_types: unknown event type {bad:?}"
            ));
        }
    }
    for (key, value) in [
        (
            "max_client_events_per_second",
            app.max_client_events_per_second as usize,
        ),
        ("max_message_size", app.max_message_size),
        ("max_channels_per_publish", app.max_channels_per_publish),
        ("max_batch_size", app.max_batch_size),
    ] {
        if value == 0 {
            return Err(format!("{key}: must be at least 1"));
        }
    }
    Ok(())
}

/// The `HERALD_*` environment as a figment layer: `HERALD_DRAIN__WINDOW=10s` sets
/// `drain.window`, and values are parsed like TOML values (`HERALD_APPS=[{id = "1", ...}]`).
struct EnvLayer(Dict);

impl EnvLayer {
    /// # Errors
    /// A `HERALD_*` variable that names no configuration key: a typo would otherwise be ignored.
    fn parse(env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<EnvLayer> {
        let keys = Config::keys();
        let mut dict = Dict::new();
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        for (name, value) in vars {
            let rest = &name[ENV_PREFIX.len()..];
            if ENV_NOT_CONFIG.contains(&rest)
                || ENV_NOT_CONFIG_PREFIXES.iter().any(|p| rest.starts_with(p))
            {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if !keys.contains(&path[0]) {
                anyhow::bail!(
                    "unknown environment variable {name}: {:?} is not a configuration key (known: {})",
                    path[0],
                    keys.iter()
                        .map(|k| format!("{ENV_PREFIX}{}", k.to_ascii_uppercase()))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let value: Value = value.parse().unwrap_or_else(|never| match never {});
            insert_path(&mut dict, &path, value);
        }
        Ok(EnvLayer(dict))
    }
}

fn insert_path(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [key] => {
            dict.insert(key.clone(), value);
        }
        [key, rest @ ..] => {
            let entry = dict
                .entry(key.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("`HERALD_` environment variable(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_serve_the_demo_app() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.port, 6001);
        assert_eq!(
            (config.apps[0].id.as_str(), config.apps[0].key.as_str()),
            ("1", "app-key")
        );
    }

    #[test]
    fn bad_file_names_the_key() {
        let dir = std::env::temp_dir().join(format!("herald-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "port = \"not a number\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
        std::fs::write(
            &path,
            "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\nbogus = 1\n",
        )
        .unwrap();
        let err = Config::load(Some(&path), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        std::fs::write(&path, "[[apps]]\nid = \"1\"\nkey = \"k\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("secret"), "{err}");
        std::fs::write(&path, "[drain]\nwindow = \"2s\"\ndelay = \"0s\"\ndeadline = \"5s\"\n[[apps]]\nid = \"7\"\nkey = \"k\"\nsecret = \"s\"\n").unwrap();
        let config = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(config.drain.window, Duration::from_secs(2));
        assert_eq!(config.apps.len(), 1);
        assert_eq!(config.apps[0].max_presence_members, 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every per-app setting, each away from its default.
    const EVERY_APP_SETTING: &str = r#"{id = "7", key = "k7", secret = "s7", enabled = false, client_events = false, max_connections = 5, allowed_origins = ["https://a.test", "*.b.test"], max_message_size = 2048, max_presence_members = 7, max_presence_user_info_bytes = 99, max_client_events_per_second = 3, subscription_count = true, max_channels_per_publish = 4, max_batch_size = 2, history_events = 5, history_seconds = 9, history_max_bytes = 4096, resume_cookie = false, deflate = false, webhooks = [{url = "http://127.0.0.1:9/hook", event_types = ["member_added"], channel_prefix = "presence-", headers = {Authorization = "Bearer t"}}]}"#;

    fn dict(app: &App) -> Dict {
        match Value::serialize(app).unwrap() {
            Value::Dict(_, dict) => dict,
            other => panic!("an app serializes to a table, not {other:?}"),
        }
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_app_setting_is_settable_through_the_file_and_the_environment_alike() {
        let dir = std::env::temp_dir().join(format!("herald-config-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("apps.toml");
        std::fs::write(&path, format!("apps = [{EVERY_APP_SETTING}]\n")).unwrap();
        let from_file = Config::load_from(Some(&path), env(&[]), &Overrides::default()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let from_env = Config::load_from(
            None,
            env(&[("HERALD_APPS", &format!("[{EVERY_APP_SETTING}]"))]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(from_file.apps, from_env.apps);
        let set = dict(&from_env.apps[0]);
        let default = dict(&App::new("7", "k7", "s7"));
        assert_eq!(
            set.keys().collect::<Vec<_>>(),
            default.keys().collect::<Vec<_>>(),
            "the test sets every per-app setting"
        );
        for (key, value) in &default {
            if !["id", "key", "secret"].contains(&key.as_str()) {
                assert_ne!(&set[key], value, "{key} was set away from its default");
            }
        }
    }

    #[test]
    fn unknown_environment_variable_stops_start_up_naming_it() {
        let err = Config::load_from(None, env(&[("HERALD_PROT", "7000")]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("HERALD_PROT"), "{err}");
        assert!(err.contains("HERALD_PORT"), "lists the known keys: {err}");
        let err = Config::load_from(
            None,
            env(&[("HERALD_LIMITS__MAX_FRAMES", "1")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("max_frames"), "{err}");
        let err = Config::load_from(
            None,
            env(&[(
                "HERALD_APPS",
                r#"[{id = "1", key = "k", secret = "s", bogus = 1}]"#,
            )]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn the_admin_token_is_read_but_never_printed() {
        let token = "admin-token-for-the-debug-test";
        let config = Config::load_from(
            None,
            env(&[("HERALD_ADMIN__TOKEN", token)]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            config.admin.token.as_ref().map(AdminToken::expose),
            Some(token)
        );
        let debug = format!("{config:?} {:#?}", config.admin);
        assert!(!debug.contains(token), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        let err = Config::load_from(
            None,
            env(&[("HERALD_ADMIN__TOKEN", "\"\"")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("admin.token"), "{err}");
    }

    #[test]
    fn environment_sets_nested_keys_and_ignores_the_scripts_variables() {
        let config = Config::load_from(
            None,
            env(&[
                ("HERALD_PORT", "7000"),
                ("HERALD_DRAIN__WINDOW", "2s"),
                ("HERALD_REDIS_URL", "redis://a:1,redis://b:2"),
                ("HERALD_LOG", "debug"),
                ("HERALD_BIN", "/bin/herald"),
                ("HERALD_TEST_REDIS_URL", "redis://x"),
                ("HERALD_BENCH", "1"),
                ("PATH", "/bin"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.port, 7000);
        assert_eq!(config.drain.window, Duration::from_secs(2));
        assert_eq!(config.redis_url.as_deref(), Some("redis://a:1,redis://b:2"));
        assert_eq!(config.apps, vec![App::demo()]);
    }

    #[test]
    fn the_app_store_url_is_checked_and_its_password_never_printed() {
        let config = Config::load_from(
            None,
            env(&[(
                "HERALD_APP_STORE__URL",
                "postgres://herald:hunter2@db:5432/herald",
            )]),
            &Overrides::default(),
        )
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            debug.contains("postgres://herald:<redacted>@db:5432/herald"),
            "{debug}"
        );
        assert_eq!(redact_password("mysql://h/db"), "mysql://h/db");
        assert_eq!(redact_password("mysql://u@h/db?x=@"), "mysql://u@h/db?x=@");
        let err = Config::load_from(
            None,
            env(&[("HERALD_APP_STORE__URL", "sqlite://apps.db")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("app_store.url"), "{err}");
    }
}
