//! The admin API (`/admin/api`): the token, the apps (read on the file store; written through a
//! writable store), channels and presence members, the live event stream and the test event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_core::{App, AppChange, AppStore, AppStoreError, AppStoreFuture, MonitorEvent};
use herald_server::{Config, Shared};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::support::{now, Closed, TestServer, SECRET, WAIT};

const TOKEN: &str = "test-admin-token-0123456789";

/// A writable app store in memory (tests only): what a database store does, without one.
#[derive(Debug, Default)]
struct MemoryStore {
    apps: Mutex<Vec<App>>,
    /// While set, every call fails as an unreachable database does.
    down: AtomicBool,
}

impl MemoryStore {
    fn with(apps: Vec<App>) -> Arc<MemoryStore> {
        Arc::new(MemoryStore {
            apps: Mutex::new(apps),
            down: AtomicBool::new(false),
        })
    }

    fn check(&self) -> Result<(), AppStoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(AppStoreError::Unavailable("connection refused".into()));
        }
        Ok(())
    }

    fn key_taken(apps: &[App], app: &App) -> Result<(), AppStoreError> {
        if apps.iter().any(|a| a.key == app.key && a.id != app.id) {
            return Err(AppStoreError::Conflict(format!(
                "app key {:?} is taken",
                app.key
            )));
        }
        Ok(())
    }
}

impl AppStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn read_only(&self) -> bool {
        false
    }

    fn load(&self) -> AppStoreFuture<'_, Vec<App>> {
        let res = self.check().map(|()| {
            let mut apps = self.apps.lock().clone();
            apps.sort_by(|a, b| a.id.cmp(&b.id));
            apps
        });
        Box::pin(async move { res })
    }

    fn create(&self, app: App) -> AppStoreFuture<'_, ()> {
        let res = self.check().and_then(|()| {
            let mut apps = self.apps.lock();
            if apps.iter().any(|a| a.id == app.id) {
                return Err(AppStoreError::Conflict(format!(
                    "app id {:?} is taken",
                    app.id
                )));
            }
            MemoryStore::key_taken(&apps, &app)?;
            apps.push(app);
            Ok(())
        });
        Box::pin(async move { res })
    }

    fn update<'a>(&'a self, id: &'a str, change: AppChange) -> AppStoreFuture<'a, App> {
        let res = self.check().and_then(|()| {
            let mut apps = self.apps.lock();
            let current = apps
                .iter()
                .find(|a| a.id == id)
                .cloned()
                .ok_or_else(|| AppStoreError::NotFound(id.to_owned()))?;
            let app = change(current)?;
            MemoryStore::key_taken(&apps, &app)?;
            let slot = apps.iter_mut().find(|a| a.id == id).expect("found above");
            *slot = app.clone();
            Ok(app)
        });
        Box::pin(async move { res })
    }

    fn delete<'a>(&'a self, id: &'a str) -> AppStoreFuture<'a, ()> {
        let res = self.check().and_then(|()| {
            let mut apps = self.apps.lock();
            let before = apps.len();
            apps.retain(|a| a.id != id);
            if apps.len() == before {
                return Err(AppStoreError::NotFound(id.to_owned()));
            }
            Ok(())
        });
        Box::pin(async move { res })
    }

    fn changed(&self) -> AppStoreFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
}

fn with_token(config: &mut Config) {
    config.admin.token = Some(TOKEN.into());
}

/// A server with the admin API on, its apps in a [`MemoryStore`] holding the configured apps.
async fn writable_server() -> (TestServer, Arc<MemoryStore>) {
    let store = MemoryStore::with(vec![App::demo()]);
    let server = TestServer::start_with(with_token, {
        let store = store.clone();
        move |config| Shared::with_app_store(config, store).expect("server state")
    })
    .await;
    (server, store)
}

/// An admin request: status, headers and the JSON body (a string when it is not JSON).
async fn admin(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, HeaderMap, Value) {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{}{}", server.addr, path))
        .header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let client = HttpClient::builder(TokioExecutor::new()).build_http();
    let res = tokio::time::timeout(WAIT, client.request(req))
        .await
        .expect("http timed out")
        .expect("http failed");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, value)
}

/// An admin request with the right token; status and body.
async fn call(server: &TestServer, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (status, _, value) = admin(server, method, path, Some(TOKEN), body).await;
    (status, value)
}

#[tokio::test]
async fn admin_api_is_off_without_a_token() {
    let server = TestServer::default().await;
    for path in ["/admin/api/nodes", "/admin/api/apps", "/admin/api/apps/1"] {
        let (status, _, body) = admin(&server, "GET", path, Some(TOKEN), None).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_with_401() {
    let server = TestServer::start(with_token).await;
    let cases: [(&str, &str, Option<&str>); 5] = [
        ("GET", "/admin/api/nodes", None),
        ("GET", "/admin/api/apps", Some("wrong")),
        ("GET", "/admin/api/apps/1", Some("")),
        (
            "POST",
            "/admin/api/apps",
            Some("test-admin-token-012345678"),
        ),
        (
            "GET",
            "/admin/api/apps/1/events",
            Some("test-admin-token-01234567890"),
        ),
    ];
    for (method, path, token) in cases {
        let (status, headers, body) = admin(&server, method, path, token, None).await;
        assert_eq!(status, 401, "{method} {path} {token:?}: {body}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert!(body["error"].is_string(), "{body}");
    }
    // Another scheme with the right token is still refused.
    let req = hyper::Request::builder()
        .uri(format!("http://{}/admin/api/nodes", server.addr))
        .header("authorization", format!("Basic {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let client = HttpClient::builder(TokioExecutor::new()).build_http();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn nodes_lists_this_node_first_with_its_connections() {
    let server = TestServer::start(with_token).await;
    let _client = server.client().await;
    let (status, body) = call(&server, "GET", "/admin/api/nodes", None).await;
    assert_eq!(status, 200, "{body}");
    let node = &body["nodes"][0];
    assert_eq!(node["id"], server.shared.node().id().to_string());
    assert_eq!(node["this_node"], true);
    assert_eq!(node["connections"], 1);
    assert_eq!(node["apps"]["1"], 1);
    assert!(node["started_at_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn apps_are_listed_with_counts_and_never_their_secret() {
    let server = TestServer::start(with_token).await;
    let _client = server.client().await;
    let (status, body) = call(&server, "GET", "/admin/api/apps", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["read_only"], true);
    assert_eq!(body["app_store"]["kind"], "file");
    assert_eq!(body["app_store"]["ok"], true);
    let app = &body["apps"][0];
    assert_eq!(app["id"], "1");
    assert_eq!(app["key"], "app-key");
    assert_eq!(app["enabled"], true);
    assert_eq!(app["max_presence_members"], 100);
    assert_eq!(app["counts"]["connections"], 1);
    assert!(app.get("secret").is_none(), "{app}");
    assert!(!body.to_string().contains(SECRET), "{body}");

    let (status, one) = call(&server, "GET", "/admin/api/apps/1", None).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(&one, app);
    let (status, body) = call(&server, "GET", "/admin/api/apps/nope", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn writes_on_the_file_store_answer_409() {
    let server = TestServer::start(with_token).await;
    let writes: [(&str, &str, Option<Value>); 4] = [
        ("POST", "/admin/api/apps", Some(json!({"id": "2"}))),
        (
            "PATCH",
            "/admin/api/apps/1",
            Some(json!({"enabled": false})),
        ),
        ("POST", "/admin/api/apps/1/rotate-secret", None),
        ("DELETE", "/admin/api/apps/1", None),
    ];
    for (method, path, body) in writes {
        let (status, answer) = call(&server, method, path, body.as_ref()).await;
        assert_eq!(status, 409, "{method} {path}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("configuration file"),
            "{answer}"
        );
    }
    // Nothing changed.
    let mut client = server.client().await;
    client.expect_nothing_more().await;
}

#[tokio::test]
async fn a_created_app_accepts_connections_with_its_new_key() {
    let (server, store) = writable_server().await;
    let (status, body) = call(
        &server,
        "POST",
        "/admin/api/apps",
        Some(&json!({"max_presence_members": 7, "client_events": false})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let secret = body["secret"].as_str().unwrap().to_owned();
    let app = &body["app"];
    let (id, key) = (app["id"].as_str().unwrap(), app["key"].as_str().unwrap());
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
        "{id}"
    );
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(is_hex(key, 20), "{key}");
    assert!(is_hex(&secret, 32), "{secret}");
    assert_eq!(app["max_presence_members"], 7);
    assert_eq!(app["client_events"], false);
    assert!(app.get("secret").is_none(), "{app}");
    assert_eq!(store.apps.lock().len(), 2);

    let mut client = server.client_for(key).await;
    client.subscribe("chat").await;

    // The secret shows nowhere else.
    let (_, list) = call(&server, "GET", "/admin/api/apps", None).await;
    assert_eq!(list["read_only"], false);
    assert_eq!(list["app_store"]["kind"], "memory");
    assert_eq!(list["apps"].as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains(&secret), "{list}");
    let (_, one) = call(&server, "GET", &format!("/admin/api/apps/{id}"), None).await;
    assert!(!one.to_string().contains(&secret), "{one}");
    assert_eq!(one["counts"]["connections"], 1);

    // Without a body, everything is generated.
    let (status, body) = call(&server, "POST", "/admin/api/apps", None).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["app"]["enabled"], true);
    // Given credentials are kept; a taken id or key is a conflict.
    let given = json!({"id": "42", "key": "given-key", "secret": "given-secret"});
    let (status, body) = call(&server, "POST", "/admin/api/apps", Some(&given)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["secret"], "given-secret");
    assert_eq!(body["app"]["key"], "given-key");
    for taken in [json!({"id": "42"}), json!({"key": "given-key"})] {
        let (status, body) = call(&server, "POST", "/admin/api/apps", Some(&taken)).await;
        assert_eq!(status, 409, "{taken}: {body}");
    }
    // Refused before the store: unknown fields, bad values, ids that do not fit a URL.
    for bad in [
        json!({"bogus": 1}),
        json!({"max_connections": "many"}),
        json!({"max_client_events_per_second": 0}),
        json!({"webhooks": [{"url": "ftp://x"}]}),
        json!({"id": "a/b"}),
        json!({"key": ""}),
        json!([1]),
    ] {
        let (status, body) = call(&server, "POST", "/admin/api/apps", Some(&bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    assert_eq!(store.apps.lock().len(), 4);
}

#[tokio::test]
async fn patch_changes_settings_and_disabling_closes_sockets_with_4003() {
    let (server, store) = writable_server().await;
    let mut client = server.client().await;
    let (status, body) = call(
        &server,
        "PATCH",
        "/admin/api/apps/1",
        Some(&json!({"max_connections": 5, "allowed_origins": ["https://a.test"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["max_connections"], 5);
    assert_eq!(body["allowed_origins"], json!(["https://a.test"]));
    assert_eq!(body["max_presence_members"], 100, "untouched settings stay");
    assert!(body.get("secret").is_none());
    let stored = store.apps.lock()[0].clone();
    assert_eq!(stored.max_connections, 5);
    assert_eq!(stored.secret.expose(), SECRET);
    assert_eq!(
        server
            .shared
            .node()
            .app_by_id("1")
            .unwrap()
            .app()
            .max_connections,
        5
    );

    for bad in [
        json!({"id": "2"}),
        json!({"key": "k"}),
        json!({"secret": "s"}),
        json!({"bogus": true}),
        json!({"enabled": "no"}),
        json!({"max_client_events_per_second": 0}),
        json!({"max_batch_size": 0}),
        json!({"max_message_size": 0}),
    ] {
        let (status, body) = call(&server, "PATCH", "/admin/api/apps/1", Some(&bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = call(&server, "PATCH", "/admin/api/apps/9", Some(&json!({}))).await;
    assert_eq!(status, 404);

    let (status, body) = call(
        &server,
        "PATCH",
        "/admin/api/apps/1",
        Some(&json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["enabled"], false);
    assert_eq!(client.expect_close().await, Closed::Code(4003));
}

#[tokio::test]
async fn a_rotated_secret_fails_old_signatures() {
    let (server, _store) = writable_server().await;
    let (status, body) = call(&server, "POST", "/admin/api/apps/1/rotate-secret", None).await;
    assert_eq!(status, 200, "{body}");
    let secret = body["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 32);
    assert_ne!(secret, SECRET);
    let publish = json!({"name": "e", "channel": "c", "data": "{}"});
    let (status, body) = server
        .api_with("POST", "/apps/1/events", &[], Some(&publish), SECRET, now())
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = server
        .api_with(
            "POST",
            "/apps/1/events",
            &[],
            Some(&publish),
            &secret,
            now(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(&server, "POST", "/admin/api/apps/7/rotate-secret", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn delete_removes_the_app_and_an_unreachable_store_answers_503() {
    let (server, store) = writable_server().await;
    let (status, body) = call(
        &server,
        "POST",
        "/admin/api/apps",
        Some(&json!({"id": "5", "key": "five"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let mut client = server.client_for("five").await;
    let mut stream = EventStream::open(&server, "5").await;
    assert_eq!(stream.next().await["type"], "hello");
    let (status, body) = call(&server, "DELETE", "/admin/api/apps/5", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"deleted": "5"}));
    assert_eq!(client.expect_close().await, Closed::Code(4003));
    // The stream tells what the removal did (the socket's close), then ends.
    while let Some(record) = stream.next_raw().await {
        assert!(
            record.contains("connection_closed") || record.contains("unsubscribed"),
            "{record}"
        );
    }
    let (status, _) = call(&server, "GET", "/admin/api/apps/5", None).await;
    assert_eq!(status, 404);
    let (status, _) = call(&server, "DELETE", "/admin/api/apps/5", None).await;
    assert_eq!(status, 404);

    store.down.store(true, Ordering::SeqCst);
    let (status, headers, body) = admin(
        &server,
        "POST",
        "/admin/api/apps",
        Some(TOKEN),
        Some(&json!({"id": "6"})),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert!(
        body["error"].as_str().unwrap().contains("unavailable"),
        "{body}"
    );
    // The known apps keep working.
    let mut client = server.client().await;
    client.subscribe("chat").await;
}

#[tokio::test]
async fn channels_and_presence_members() {
    let server = TestServer::start(with_token).await;
    let mut alice = server.client().await;
    alice.subscribe("chat").await;
    alice.subscribe_presence("presence-room", "alice").await;
    let mut bob = server.client().await;
    bob.subscribe("chat").await;
    bob.subscribe_presence("presence-room", "bob").await;
    alice.expect("pusher_internal:member_added").await;

    let (status, body) = call(&server, "GET", "/admin/api/apps/1/channels", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"channels": [
            {"name": "chat", "subscription_count": 2},
            {"name": "presence-room", "subscription_count": 2, "user_count": 2},
        ]})
    );
    let (status, body) = call(
        &server,
        "GET",
        "/admin/api/apps/1/channels/presence-room",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "name": "presence-room", "occupied": true, "subscription_count": 2, "user_count": 2,
            "members": [
                {"user_id": "alice", "user_info": {"name": "alice"}},
                {"user_id": "bob", "user_info": {"name": "bob"}},
            ],
        })
    );
    let (status, body) = call(&server, "GET", "/admin/api/apps/1/channels/chat", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"name": "chat", "occupied": true, "subscription_count": 2})
    );
    let (status, body) = call(&server, "GET", "/admin/api/apps/1/channels/empty", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["occupied"], false);
    // A server-to-user channel's name travels percent-encoded.
    let (status, body) = call(
        &server,
        "GET",
        "/admin/api/apps/1/channels/%23server-to-user-alice",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "#server-to-user-alice");
    let (status, body) = call(
        &server,
        "GET",
        "/admin/api/apps/1/channels/bad%20name",
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = call(&server, "GET", "/admin/api/apps/2/channels", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_test_event_reaches_a_subscribed_socket() {
    let server = TestServer::start(with_token).await;
    let mut client = server.client().await;
    client.subscribe("chat").await;
    let (status, body) = call(
        &server,
        "POST",
        "/admin/api/apps/1/events",
        Some(&json!({"name": "test-event", "channel": "chat", "data": "{\"hi\":1}"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({}));
    let frame = client.expect("test-event").await;
    assert_eq!(frame["channel"], "chat");
    assert_eq!(frame["data"], "{\"hi\":1}");
    // The HTTP API's validation applies.
    for bad in [
        json!({"channel": "chat", "data": "x"}),
        json!({"name": "e", "channel": "bad name", "data": "x"}),
        json!({"name": "e", "data": "x"}),
    ] {
        let (status, body) = call(&server, "POST", "/admin/api/apps/1/events", Some(&bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = call(
        &server,
        "POST",
        "/admin/api/apps/3/events",
        Some(&json!({"name": "e", "channel": "chat", "data": "x"})),
    )
    .await;
    assert_eq!(status, 404);
    client.expect_nothing_more().await;
}

/// A client of the admin event stream.
struct EventStream {
    body: Incoming,
    buf: String,
}

impl EventStream {
    async fn open(server: &TestServer, app_id: &str) -> EventStream {
        let req = hyper::Request::builder()
            .uri(format!(
                "http://{}/admin/api/apps/{app_id}/events",
                server.addr
            ))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let client = HttpClient::builder(TokioExecutor::new()).build_http();
        let res = tokio::time::timeout(WAIT, client.request(req))
            .await
            .expect("http timed out")
            .expect("http failed");
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        EventStream {
            body: res.into_body(),
            buf: String::new(),
        }
    }

    /// The next event's text (`data: ...` or a comment), or `None` when the stream ended.
    async fn next_raw(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event = self.buf[..end].to_owned();
                self.buf.drain(..end + 2);
                return Some(event);
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("timed out waiting for the event stream")?
                .expect("event stream failed");
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next `data:` record.
    async fn next(&mut self) -> Value {
        loop {
            let event = self.next_raw().await.expect("the event stream ended");
            if let Some(json) = event.strip_prefix("data: ") {
                return serde_json::from_str(json).expect("a record is JSON");
            }
        }
    }
}

fn client_event(n: usize) -> MonitorEvent {
    MonitorEvent::ClientEvent {
        socket_id: "1.1".into(),
        channel: "private-chat".into(),
        event: format!("client-{n}"),
        size: 2,
    }
}

#[tokio::test]
async fn the_event_stream_starts_with_hello_then_carries_records() {
    let server = TestServer::start(with_token).await;
    let node = server.shared.node().id();
    let mut stream = EventStream::open(&server, "1").await;
    let hello = stream.next().await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["node"], node.to_string());
    let app = server.shared.node().app_by_id("1").unwrap();
    assert_eq!(app.monitor().local_watchers(), 1);
    assert!(app.monitor().active());
    app.monitor().emit(node, client_event(1));
    let record = stream.next().await;
    assert_eq!(record["type"], "client_event");
    assert_eq!(record["event"], "client-1");
    assert_eq!(record["node"], node.to_string());
    assert!(record["time_ms"].as_u64().unwrap() > 0);
    let (status, _) = call(&server, "GET", "/admin/api/apps/2/events", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_event_stream_stays_bounded_under_a_flood() {
    let server = TestServer::start(with_token).await;
    let node = server.shared.node().id();
    let mut stream = EventStream::open(&server, "1").await;
    assert_eq!(stream.next().await["type"], "hello");
    let app = server.shared.node().app_by_id("1").unwrap();
    // Far more than a watcher's queue and the sampling bound, faster than anyone reads.
    const FLOOD: usize = 20 * herald_core::monitor::WATCHER_QUEUE;
    for n in 0..FLOOD {
        app.monitor().emit(node, client_event(n));
    }
    // What was left out is reported within about a second (the node's monitor tick).
    let (mut received, mut dropped, mut sampled) = (0u64, 0u64, 0);
    while received + dropped < FLOOD as u64 {
        let record = stream.next().await;
        match record["type"].as_str() {
            Some("sampled") => {
                sampled += 1;
                dropped += record["dropped"].as_u64().unwrap();
                assert!(record["node"].is_string(), "{record}");
            }
            Some("client_event") => received += 1,
            other => panic!("unexpected record {other:?}: {record}"),
        }
    }
    assert!(sampled >= 1, "the stream says it was sampled");
    let bound = u64::from(herald_core::monitor::RECORDS_PER_SECOND);
    assert!(
        received <= 2 * bound,
        "at most the sampling bound per second was kept: {received}"
    );
    assert_eq!(
        received + dropped,
        FLOOD as u64,
        "every record accounted for"
    );
}

#[tokio::test]
async fn the_event_stream_ends_when_the_client_goes_away() {
    let server = TestServer::start(with_token).await;
    let node = server.shared.node().id();
    let mut stream = EventStream::open(&server, "1").await;
    assert_eq!(stream.next().await["type"], "hello");
    let app = server.shared.node().app_by_id("1").unwrap();
    assert_eq!(app.monitor().local_watchers(), 1);
    drop(stream);
    // A write to the closed connection ends the stream (the keep-alive would, within 15 s).
    tokio::time::timeout(WAIT, async {
        let mut n = 0;
        while app.monitor().local_watchers() > 0 {
            app.monitor().emit(node, client_event(n));
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the watcher was dropped");
}

#[tokio::test]
async fn the_event_stream_ends_when_the_drain_starts() {
    let server = TestServer::start(with_token).await;
    let mut stream = EventStream::open(&server, "1").await;
    assert_eq!(stream.next().await["type"], "hello");
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(server.stop());
    assert_eq!(stream.next_raw().await, None, "the stream ended");
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    // The drain's deadline is 2 s: it did not wait for the stream.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}
