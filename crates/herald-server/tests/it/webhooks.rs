//! Webhooks against a real HTTP receiver: signatures, the leave delay and its cancellation,
//! retries, and a receiver that is down.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_server::config::WebhookTarget;
use herald_server::Config;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::metrics::{scrape, server_with_own_app, trigger_app, until_metrics};
use crate::support::*;

/// A webhook receiver: answers with scripted statuses (then 200) and records what it got.
pub struct Receiver {
    pub addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Value>,
}

impl Receiver {
    pub async fn start(statuses: Vec<u16>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let statuses = Arc::new(Mutex::new(VecDeque::from(statuses)));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let tx = tx.clone();
                let statuses = statuses.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        let tx = tx.clone();
                        let statuses = statuses.clone();
                        async move {
                            let key = req.headers()["x-pusher-key"].to_str().unwrap().to_owned();
                            let signature = req.headers()["x-pusher-signature"]
                                .to_str()
                                .unwrap()
                                .to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let valid =
                                herald_protocol::signature::verify(SECRET, &body, &signature);
                            let status = statuses.lock().unwrap().pop_front().unwrap_or(200);
                            let mut body: Value = serde_json::from_slice(&body).unwrap();
                            body["_valid"] = json!(valid && key == KEY);
                            body["_status"] = json!(status);
                            let _ = tx.send(body);
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Full::new(
                                        hyper::body::Bytes::from_static(b"{}"),
                                    ))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, rx }
    }

    pub fn url(&self) -> String {
        format!("http://{}/webhooks", self.addr)
    }

    /// The next successfully delivered event (requests answered with an error are skipped).
    pub async fn next_event(&mut self) -> Value {
        loop {
            let body = self.next_request().await;
            if body["_status"] == 200 {
                assert_eq!(body["_valid"], true, "bad signature or key: {body}");
                assert!(body["time_ms"].as_u64().unwrap() > 0);
                let events = body["events"].as_array().unwrap();
                assert_eq!(events.len(), 1, "{body}");
                return events[0].clone();
            }
        }
    }

    pub async fn next_request(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("timed out waiting for a webhook")
            .unwrap()
    }

    /// Proves nothing arrives within `window` (the only timing used: the leave delay is the
    /// behaviour under test).
    pub async fn expect_silence(&mut self, window: Duration) {
        if let Ok(Some(body)) = tokio::time::timeout(window, self.rx.recv()).await {
            panic!("unexpected webhook {body}");
        }
    }
}

fn hooked(config: &mut Config, url: String) {
    config.webhooks.leave_delay = Duration::from_millis(500);
    config.webhooks.retry_initial = Duration::from_millis(100);
    config.apps[0].webhooks.push(WebhookTarget {
        url,
        event_types: Vec::new(),
        channel_prefix: None,
        channel_suffix: None,
        headers: Default::default(),
    });
}

#[tokio::test]
async fn a_users_own_channel_makes_no_webhooks_and_no_counts() {
    let mut receiver = Receiver::start(vec![]).await;
    let url = receiver.url();
    let server = TestServer::start(|c| {
        hooked(c, url);
        c.apps[0].subscription_count = true;
    })
    .await;
    let mut alice = server.client().await;
    alice.sign_in(&json!({"id": "alice"})).await;
    alice.subscribe("#server-to-user-alice").await;
    let mut other = server.client().await;
    other.subscribe("room").await;
    // The first webhook is the public channel's: none came for the user's channel before it.
    assert_eq!(
        receiver.next_event().await,
        json!({"name": "channel_occupied", "channel": "room"})
    );
    // Nor a subscription_count frame to the user.
    server
        .trigger("#server-to-user-alice", "notice", "hi")
        .await;
    assert_eq!(alice.next().await["event"], "notice");
}

#[tokio::test]
async fn occupied_and_vacated_after_the_leave_delay() {
    let mut receiver = Receiver::start(vec![]).await;
    let url = receiver.url();
    let server = TestServer::start(|c| hooked(c, url)).await;
    let mut client = server.client().await;
    client.subscribe("room").await;
    assert_eq!(
        receiver.next_event().await,
        json!({"name": "channel_occupied", "channel": "room"})
    );
    assert_eq!(receiver.next_event().await["name"], "subscription_count");
    let left = tokio::time::Instant::now();
    client
        .send(json!({"event": "pusher:unsubscribe", "data": {"channel": "room"}}))
        .await;
    let mut names = vec![];
    while names.len() < 2 {
        names.push(
            receiver.next_event().await["name"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    names.sort();
    assert_eq!(names, ["channel_vacated", "subscription_count"]);
    assert!(
        // The queue works in whole milliseconds of wall-clock time: allow for rounding.
        left.elapsed() >= Duration::from_millis(490),
        "vacated came before the delay: {:?} {names:?}",
        left.elapsed()
    );
}

#[tokio::test]
async fn quick_return_cancels_vacated_and_member_removed() {
    let mut receiver = Receiver::start(vec![]).await;
    let url = receiver.url();
    let server = TestServer::start(|c| {
        hooked(c, url);
        c.webhooks.leave_delay = Duration::from_secs(2);
    })
    .await;
    let mut tab = server.client().await;
    tab.subscribe_presence("presence-room", "alice").await;
    let mut first = [receiver.next_event().await, receiver.next_event().await];
    first.sort_by_key(|e| e["name"].as_str().unwrap().to_owned());
    assert_eq!(
        first[0],
        json!({"name": "channel_occupied", "channel": "presence-room"})
    );
    assert_eq!(
        first[1],
        json!({"name": "member_added", "channel": "presence-room", "user_id": "alice"})
    );
    // A page reload: the tab leaves and a new one joins within the delay.
    drop(tab);
    let mut reloaded = server.client().await;
    reloaded.subscribe_presence("presence-room", "alice").await;
    receiver.expect_silence(Duration::from_secs(3)).await;
    // A real leave is reported once the delay has passed.
    drop(reloaded);
    let mut last = [receiver.next_event().await, receiver.next_event().await];
    last.sort_by_key(|e| e["name"].as_str().unwrap().to_owned());
    assert_eq!(last[0]["name"], "channel_vacated");
    assert_eq!(
        last[1],
        json!({"name": "member_removed", "channel": "presence-room", "user_id": "alice"})
    );
}

#[tokio::test]
async fn multi_tab_member_events_fire_once() {
    let mut receiver = Receiver::start(vec![]).await;
    let url = receiver.url();
    let server = TestServer::start(|c| {
        hooked(c, url);
        c.apps[0].webhooks[0].event_types = vec!["member_added".into(), "member_removed".into()];
    })
    .await;
    let mut tab1 = server.client().await;
    let mut tab2 = server.client().await;
    tab1.subscribe_presence("presence-room", "alice").await;
    tab2.subscribe_presence("presence-room", "alice").await;
    assert_eq!(receiver.next_event().await["name"], "member_added");
    drop(tab1);
    receiver.expect_silence(Duration::from_secs(1)).await;
    drop(tab2);
    assert_eq!(receiver.next_event().await["name"], "member_removed");
    receiver.expect_silence(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn client_events_and_cache_misses_are_reported() {
    let mut receiver = Receiver::start(vec![]).await;
    let url = receiver.url();
    let server = TestServer::start(|c| {
        hooked(c, url);
        c.apps[0].webhooks[0].event_types = vec!["client_event".into(), "cache_miss".into()];
    })
    .await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    alice.subscribe_presence("presence-chat", "alice").await;
    bob.subscribe_presence("presence-chat", "bob").await;
    alice.expect_next("pusher_internal:member_added").await;
    alice
        .send(json!({"event": "client-typing", "channel": "presence-chat", "data": {"on": true}}))
        .await;
    let event = receiver.next_event().await;
    assert_eq!(event["name"], "client_event");
    assert_eq!(event["event"], "client-typing");
    assert_eq!(event["socket_id"], alice.socket_id.as_str());
    assert_eq!(event["user_id"], "alice");
    assert_eq!(
        serde_json::from_str::<Value>(event["data"].as_str().unwrap()).unwrap(),
        json!({"on": true})
    );

    bob.expect_next("client-typing").await;
    alice.subscribe("cache-x").await;
    bob.subscribe("cache-x").await;
    assert_eq!(
        receiver.next_event().await,
        json!({"name": "cache_miss", "channel": "cache-x"})
    );
    receiver.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn failing_receiver_is_retried_until_it_succeeds() {
    let mut receiver = Receiver::start(vec![500, 503]).await;
    let url = receiver.url();
    let (server, app) = server_with_own_app(|c| {
        hooked(c, url);
        c.apps[0].webhooks[0].event_types = vec!["channel_occupied".into()];
    })
    .await;
    let app = [("app_id", app.as_str())];
    let mut client = server.client().await;
    client.subscribe("room").await;
    assert_eq!(receiver.next_request().await["_status"], 500);
    assert_eq!(receiver.next_request().await["_status"], 503);
    let ok = receiver.next_request().await;
    assert_eq!(ok["_status"], 200);
    assert_eq!(ok["events"][0]["name"], "channel_occupied");
    // The success is counted after the receiver answered.
    let metrics = until_metrics(&server, "the delivery is counted", |m| {
        m.value("herald_webhooks_sent_total", &app) == 1.0
    })
    .await;
    assert_eq!(metrics.value("herald_webhooks_failed_total", &app), 2.0);
    assert_eq!(metrics.value("herald_webhooks_retried_total", &app), 2.0);
}

#[tokio::test]
async fn unreachable_receiver_costs_nothing_to_sockets_and_is_dropped_after_the_window() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (server, app) = server_with_own_app(|c| {
        hooked(c, format!("http://127.0.0.1:{port}/down"));
        c.webhooks.retry_window = Duration::from_millis(500);
    })
    .await;
    let exhausted = [("app_id", app.as_str()), ("reason", "retries_exhausted")];
    assert_eq!(
        scrape(&server)
            .await
            .value("herald_webhooks_dropped_total", &exhausted),
        0.0
    );
    let mut client = server.client().await;
    client.subscribe("room").await;
    trigger_app(&server, &app, "room", "still", "fine").await;
    client.expect_next("still").await;
    let metrics = until_metrics(&server, "the webhook is dropped", |m| {
        m.value("herald_webhooks_dropped_total", &exhausted) >= 1.0
    })
    .await;
    assert_eq!(
        metrics.value("herald_webhooks_sent_total", &[("app_id", app.as_str())]),
        0.0
    );
}

#[tokio::test]
async fn changing_presence_identity_reports_the_old_member_leaving() {
    let mut receiver = Receiver::start(vec![]).await;
    let url = receiver.url();
    let server = TestServer::start(|c| hooked(c, url)).await;
    let mut tab = server.client().await;
    tab.subscribe_presence("presence-room", "alice").await;
    let mut first = [receiver.next_event().await, receiver.next_event().await];
    first.sort_by_key(|e| e["name"].as_str().unwrap().to_owned());
    assert_eq!(first[0]["name"], "channel_occupied");
    assert_eq!(first[1]["user_id"], "alice");
    // The same socket subscribes again as another user.
    tab.subscribe_presence("presence-room", "bob").await;
    let mut next = [receiver.next_event().await, receiver.next_event().await];
    next.sort_by_key(|e| e["name"].as_str().unwrap().to_owned());
    assert_eq!(
        next[0],
        json!({"name": "member_added", "channel": "presence-room", "user_id": "bob"})
    );
    assert_eq!(
        next[1],
        json!({"name": "member_removed", "channel": "presence-room", "user_id": "alice"})
    );
    // The channel never emptied: no vacated, no second occupied.
    receiver.expect_silence(Duration::from_secs(1)).await;
}
