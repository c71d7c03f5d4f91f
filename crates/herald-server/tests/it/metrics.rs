//! Reading `/metrics` as numbers, and the checks on what a node exports.
//!
//! Tests share one process, and so one metrics registry: a test asserts a change of a series
//! that only its own server can move (labelled with an app id unique to the test, or kept by the
//! node itself, such as `herald_node_connections`), never the mere presence of a substring.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use herald_server::Config;
use serde_json::json;

use crate::support::*;

/// One scrape: every series' value, and the families that have `# HELP`.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub series: HashMap<(String, BTreeMap<String, String>), f64>,
    pub help: HashSet<String>,
    /// Family name → type, from `# TYPE`.
    pub types: HashMap<String, String>,
    pub text: String,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape {
            series: HashMap::new(),
            help: HashSet::new(),
            types: HashMap::new(),
            text: text.to_owned(),
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                scrape.help.insert(name.to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let (name, kind) = (parts.next().unwrap(), parts.next().unwrap_or_default());
                let earlier = scrape.types.insert(name.to_owned(), kind.to_owned());
                assert!(earlier.is_none(), "{name} is exported twice:\n{text}");
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, parse_labels(labels.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            scrape.series.insert((name.to_owned(), labels), value);
        }
        scrape
    }

    /// The value of the series `name{labels}` (exactly these labels), if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.series.get(&(name.to_owned(), labels)).copied()
    }

    /// Like [`get`](Self::get), failing the test when the series is missing.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("{name}{labels:?} missing from /metrics:\n{}", self.text))
    }

    /// The family a series belongs to (a histogram's `_bucket`, `_sum` and `_count` are its own).
    fn family<'a>(&self, series: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = series.strip_suffix(suffix) {
                if self
                    .types
                    .get(base)
                    .is_some_and(|t| t == "histogram" || t == "summary")
                {
                    return base;
                }
            }
        }
        series
    }

    /// Families with a series but no `# HELP`.
    pub fn undescribed(&self) -> Vec<String> {
        let mut missing: Vec<String> = self
            .series
            .keys()
            .map(|(name, _)| self.family(name).to_owned())
            .filter(|family| !self.help.contains(family))
            .collect();
        missing.sort();
        missing.dedup();
        missing
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = &after[end..];
    }
    labels
}

pub async fn scrape(server: &TestServer) -> Scrape {
    let (status, text) = server.get("/metrics").await;
    assert_eq!(status, 200);
    Scrape::parse(text.as_str().expect("/metrics is text"))
}

/// An app id no other test uses, so its series move only with this test's server.
pub fn unique_app_id() -> String {
    format!("m{}", rand::random::<u32>())
}

/// A server whose only app has a unique id (the key and secret stay the defaults).
pub async fn server_with_own_app(configure: impl FnOnce(&mut Config)) -> (TestServer, String) {
    let id = unique_app_id();
    let app_id = id.clone();
    let server = TestServer::start(move |c| {
        c.apps[0].id = app_id;
        configure(c);
    })
    .await;
    (server, id)
}

/// Publishes through the HTTP API of app `app_id` and asserts success.
pub async fn trigger_app(
    server: &TestServer,
    app_id: &str,
    channel: &str,
    event: &str,
    data: &str,
) {
    let (status, body) = server
        .api(
            "POST",
            &format!("/apps/{app_id}/events"),
            &[],
            Some(&json!({"name": event, "channel": channel, "data": data})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Scrapes until `check` holds (some counters move after the response that caused them).
pub async fn until_metrics(
    server: &TestServer,
    what: &str,
    check: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = scrape(server).await;
        if check(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never held:\n{}",
            now.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every metric a fresh node exports, each with `# HELP`, and the per-app and node series present
/// at zero before anything happened. A separate process, so no other test's server counts.
#[tokio::test]
async fn a_fresh_node_describes_every_metric_and_starts_at_zero() {
    let process = Process::start(
        r#"
[[apps]]
id = "fresh"
key = "app-key"
secret = "app-secret"
"#,
        &[],
    )
    .await;
    let fetch = || async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<hyper::body::Bytes>>();
        let uri: hyper::Uri = format!("http://{}/metrics", process.addr).parse().unwrap();
        let res = tokio::time::timeout(WAIT, client.get(uri))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), 200);
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        Scrape::parse(std::str::from_utf8(&body).unwrap())
    };
    let fresh = fetch().await;
    assert!(
        fresh.undescribed().is_empty(),
        "families without # HELP: {:?}\n{}",
        fresh.undescribed(),
        fresh.text
    );
    let app = [("app_id", "fresh")];
    for (name, labels) in [
        ("herald_node_connections", &[][..]),
        ("herald_draining", &[][..]),
        ("herald_broker_publishes_total", &[][..]),
        ("herald_webhook_queue_depth", &[][..]),
        ("herald_connections_active", &app[..]),
        ("herald_connections_total", &app[..]),
        ("herald_ws_messages_received_total", &app[..]),
        ("herald_ws_messages_sent_total", &app[..]),
        ("herald_deliveries_total", &app[..]),
        (
            "herald_broadcasts_total",
            &[("app_id", "fresh"), ("source", "api")][..],
        ),
        (
            "herald_disconnections_total",
            &[("app_id", "fresh"), ("reason", "client_close")][..],
        ),
        (
            "herald_limit_rejections_total",
            &[("app_id", "fresh"), ("limit", "presence_members")][..],
        ),
        ("herald_webhooks_sent_total", &app[..]),
        (
            "herald_webhooks_dropped_total",
            &[("app_id", "fresh"), ("reason", "retries_exhausted")][..],
        ),
        (
            "herald_http_requests_total",
            &[("endpoint", "events"), ("status", "200")][..],
        ),
    ] {
        assert_eq!(fresh.value(name, labels), 0.0, "{name}{labels:?}");
    }
    for histogram in [
        "herald_delivery_latency_seconds",
        "herald_webhook_latency_seconds",
    ] {
        assert_eq!(fresh.value(&format!("{histogram}_count"), &[]), 0.0);
    }
    // The autoscaler's metric follows the node's sockets.
    let client = process.client().await;
    let one = fetch().await;
    assert_eq!(one.value("herald_node_connections", &[]), 1.0);
    assert_eq!(one.value("herald_connections_active", &app), 1.0);
    assert_eq!(one.value("herald_connections_total", &app), 1.0);
    drop(client);
    let deadline = tokio::time::Instant::now() + WAIT;
    while fetch().await.value("herald_node_connections", &[]) != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the socket never left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two servers in one process: each reports its own node-wide gauges.
#[tokio::test]
async fn node_connections_are_per_server() {
    let a = TestServer::default().await;
    let b = TestServer::default().await;
    let _one = a.client().await;
    let _two = a.client().await;
    assert_eq!(scrape(&a).await.value("herald_node_connections", &[]), 2.0);
    assert_eq!(scrape(&b).await.value("herald_node_connections", &[]), 0.0);
    assert_eq!(scrape(&b).await.value("herald_draining", &[]), 0.0);
}
