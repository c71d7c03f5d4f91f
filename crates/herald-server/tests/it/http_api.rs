//! The signed HTTP API over real HTTP: every endpoint and every error status.

use serde_json::json;

use crate::metrics::{scrape, server_with_own_app, trigger_app};
use crate::support::*;

#[tokio::test]
async fn trigger_to_many_channels_with_socket_exclusion() {
    let server = TestServer::default().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.subscribe("one").await;
    b.subscribe("one").await;
    b.subscribe("two").await;
    let body =
        json!({"name": "e", "channels": ["one", "two"], "data": "d", "socket_id": a.socket_id});
    let (status, res) = server.api("POST", "/apps/1/events", &[], Some(&body)).await;
    assert_eq!((status, res), (200, json!({})));
    b.expect_next("e").await;
    b.expect_next("e").await;
    a.expect_nothing_more().await;
}

#[tokio::test]
async fn trigger_info_reports_counts() {
    let server = TestServer::default().await;
    let mut a = server.client().await;
    a.subscribe_presence("presence-p", "alice").await;
    a.subscribe("pub").await;
    let body = json!({"name": "e", "channels": ["presence-p"], "data": "d", "info": "user_count,subscription_count"});
    let (status, res) = server.api("POST", "/apps/1/events", &[], Some(&body)).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(
        res,
        json!({"channels": {"presence-p": {"user_count": 1, "subscription_count": 1}}})
    );
    // A mixed publish answers user_count for its presence channels only (Pusher's reply shape).
    let body = json!({"name": "e", "channels": ["presence-p", "pub"], "data": "d",
        "info": "subscription_count,user_count"});
    let (status, res) = server.api("POST", "/apps/1/events", &[], Some(&body)).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(
        res,
        json!({"channels": {
            "presence-p": {"user_count": 1, "subscription_count": 1},
            "pub": {"subscription_count": 1},
        }})
    );
}

#[tokio::test]
async fn batch_events_publish_and_answer_index_aligned_info() {
    let server = TestServer::default().await;
    let mut a = server.client().await;
    a.subscribe("x").await;
    let body = json!({"batch": [
        {"name": "e1", "channel": "x", "data": "1", "info": "subscription_count"},
        {"name": "e2", "channel": "y", "data": "2"},
    ]});
    let (status, res) = server
        .api("POST", "/apps/1/batch_events", &[], Some(&body))
        .await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res, json!({"batch": [{"subscription_count": 1}, {}]}));
    assert_eq!(a.expect_next("e1").await["data"], "1");
    let too_many: Vec<_> = (0..11)
        .map(|i| json!({"name": "e", "channel": "x", "data": i.to_string()}))
        .collect();
    let (status, _) = server
        .api(
            "POST",
            "/apps/1/batch_events",
            &[],
            Some(&json!({"batch": too_many})),
        )
        .await;
    assert_eq!(status, 400);
    a.expect_nothing_more().await;
}

#[tokio::test]
async fn channel_queries() {
    let server = TestServer::default().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.subscribe_presence("presence-room", "alice").await;
    b.subscribe_presence("presence-room", "alice").await;
    a.subscribe("news").await;

    let (status, res) = server.api("GET", "/apps/1/channels", &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(res, json!({"channels": {"presence-room": {}, "news": {}}}));
    let (_, res) = server
        .api(
            "GET",
            "/apps/1/channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
            None,
        )
        .await;
    assert_eq!(
        res,
        json!({"channels": {"presence-room": {"user_count": 1}}})
    );
    let (status, _) = server
        .api("GET", "/apps/1/channels", &[("info", "user_count")], None)
        .await;
    assert_eq!(status, 400);

    let (_, res) = server
        .api(
            "GET",
            "/apps/1/channels/presence-room",
            &[("info", "user_count,subscription_count")],
            None,
        )
        .await;
    assert_eq!(
        res,
        json!({"occupied": true, "user_count": 1, "subscription_count": 2})
    );
    let (_, res) = server.api("GET", "/apps/1/channels/empty", &[], None).await;
    assert_eq!(res, json!({"occupied": false}));
    let (status, _) = server
        .api(
            "GET",
            "/apps/1/channels/news",
            &[("info", "user_count")],
            None,
        )
        .await;
    assert_eq!(status, 400);

    let (_, res) = server
        .api("GET", "/apps/1/channels/presence-room/users", &[], None)
        .await;
    assert_eq!(res, json!({"users": [{"id": "alice"}]}));
    let (status, _) = server
        .api("GET", "/apps/1/channels/news/users", &[], None)
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn every_error_status() {
    let server = TestServer::start(|c| {
        let mut disabled = c.apps[0].clone();
        disabled.id = "2".into();
        disabled.key = "disabled-key".into();
        disabled.enabled = false;
        c.apps.push(disabled);
    })
    .await;
    let ok = json!({"name": "e", "channel": "c", "data": "d"});
    let cases = [
        (json!({"channel": "c", "data": "d"}), 400, "name"),
        (json!({"name": "e", "channel": "c"}), 400, "data"),
        (json!({"name": "e", "data": "d"}), 400, "channel"),
        (
            json!({"name": "e", "channel": "bad name", "data": "d"}),
            400,
            "channel",
        ),
        (
            json!({"name": "e", "channels": (0..101).map(|i| format!("c{i}")).collect::<Vec<_>>(), "data": "d"}),
            400,
            "channels",
        ),
        (
            json!({"name": "x".repeat(201), "channel": "c", "data": "d"}),
            400,
            "name",
        ),
        (
            json!({"name": "e", "channel": "c", "data": "d", "socket_id": "nope"}),
            400,
            "socket_id",
        ),
        (
            json!({"name": "e", "channel": "c", "data": "x".repeat(10 * 1024 + 1)}),
            413,
            "data",
        ),
    ];
    for (body, status, word) in cases {
        let (got, res) = server.api("POST", "/apps/1/events", &[], Some(&body)).await;
        assert_eq!(got, status, "{body} -> {res}");
        assert!(
            res["error"].as_str().unwrap().to_lowercase().contains(word),
            "{res} should mention {word}"
        );
    }
    // Bad JSON is 400, signed correctly.
    let uri = signed_uri("POST", "/apps/1/events", &[], b"{nope", SECRET, now());
    assert_eq!(server.send_http("POST", &uri, "{nope".into()).await.0, 400);
    // Wrong secret, stale and future timestamps, tampered body: 401.
    assert_eq!(
        server
            .api_with("POST", "/apps/1/events", &[], Some(&ok), "wrong", now())
            .await
            .0,
        401
    );
    assert_eq!(
        server
            .api_with(
                "POST",
                "/apps/1/events",
                &[],
                Some(&ok),
                SECRET,
                now() - 601
            )
            .await
            .0,
        401
    );
    assert_eq!(
        server
            .api_with(
                "POST",
                "/apps/1/events",
                &[],
                Some(&ok),
                SECRET,
                now() + 601
            )
            .await
            .0,
        401
    );
    assert_eq!(
        server
            .api_with(
                "POST",
                "/apps/1/events",
                &[],
                Some(&ok),
                SECRET,
                now() - 590
            )
            .await
            .0,
        200
    );
    let uri = signed_uri(
        "POST",
        "/apps/1/events",
        &[],
        ok.to_string().as_bytes(),
        SECRET,
        now(),
    );
    let tampered = json!({"name": "e", "channel": "c", "data": "evil"}).to_string();
    assert_eq!(server.send_http("POST", &uri, tampered).await.0, 401);
    assert_eq!(
        server
            .send_http("POST", "/apps/1/events", ok.to_string())
            .await
            .0,
        401
    );
    // Unknown app: 404. Disabled app: 403. Another app's key: 401.
    assert_eq!(
        server.api("POST", "/apps/9/events", &[], Some(&ok)).await.0,
        404
    );
    let uri = signed_uri(
        "POST",
        "/apps/2/events",
        &[],
        ok.to_string().as_bytes(),
        SECRET,
        now(),
    )
    .replace(KEY, "disabled-key");
    assert_eq!(server.send_http("POST", &uri, ok.to_string()).await.0, 403);
    let uri = signed_uri(
        "POST",
        "/apps/1/events",
        &[],
        ok.to_string().as_bytes(),
        SECRET,
        now(),
    )
    .replace(KEY, "disabled-key");
    assert_eq!(server.send_http("POST", &uri, ok.to_string()).await.0, 401);
}

#[tokio::test]
async fn get_with_body_md5_of_empty_body_is_accepted() {
    let server = TestServer::default().await;
    let empty_md5 = herald_protocol::signature::body_md5(b"");
    let (status, res) = server
        .api("GET", "/apps/1/channels", &[("body_md5", &empty_md5)], None)
        .await;
    assert_eq!(status, 200, "{res}");
    let (status, _) = server
        .api("GET", "/apps/1/channels", &[("body_md5", "0123")], None)
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn signatures_work_with_and_without_proxy_prefix() {
    let server = TestServer::start(|c| c.path_prefix = "/herald".into()).await;
    let body = json!({"name": "e", "channel": "c", "data": "d"});
    let raw = body.to_string();
    // The SDK signed /herald/apps/1/events; a proxy stripped the prefix.
    let uri = signed_uri(
        "POST",
        "/herald/apps/1/events",
        &[],
        raw.as_bytes(),
        SECRET,
        now(),
    );
    let stripped = uri.replacen("/herald", "", 1);
    assert_eq!(
        server.send_http("POST", &stripped, raw.clone()).await.0,
        200
    );
    // The request arrives with the prefix.
    assert_eq!(server.send_http("POST", &uri, raw.clone()).await.0, 200);
    // The SDK signed without the prefix; the proxy added it.
    let uri = signed_uri("POST", "/apps/1/events", &[], raw.as_bytes(), SECRET, now());
    assert_eq!(
        server
            .send_http("POST", &format!("/herald{uri}"), raw)
            .await
            .0,
        200
    );
}

/// Sends raw bytes on a new connection and reads the answer until the server closes it.
async fn raw_http(server: &TestServer, request: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    read_to_close(&mut tcp).await
}

async fn read_to_close(tcp: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.expect("the server should close the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A signed publish as an SDK sends it, keep-alive.
fn publish_request(body: &str) -> String {
    let uri = signed_uri(
        "POST",
        "/apps/1/events",
        &[],
        body.as_bytes(),
        SECRET,
        now(),
    );
    format!(
        "POST {uri} HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The Node SDK keeps connections alive and sends its next publish on the connection that got
/// the 413, so an oversized body is read to its end and the connection stays usable.
#[tokio::test]
async fn oversized_body_leaves_the_keep_alive_connection_usable() {
    let server = TestServer::start(|c| c.limits.max_request_body_bytes = 1000).await;
    let mut canary = server.client().await;
    canary.subscribe("c").await;
    let big = json!({"name": "e", "channel": "c", "data": "x".repeat(2000)}).to_string();
    let small = json!({"name": "ok", "channel": "c", "data": "{}"}).to_string();
    // Both on one connection; the second asks the server to close after answering.
    let request = format!(
        "{}{}",
        publish_request(&big),
        publish_request(&small).replacen("Host: herald", "Host: herald\r\nConnection: close", 1)
    );
    let answer = raw_http(&server, request.as_bytes()).await;
    let (first, second) = answer
        .split_once("HTTP/1.1 200")
        .unwrap_or_else(|| panic!("the second request should be answered: {answer}"));
    assert!(first.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        !first.to_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        first.contains(r#"{"error":"Request body is larger than 1000 bytes"}"#),
        "{answer}"
    );
    assert!(second.ends_with("{}"), "{answer}");
    assert_eq!(canary.expect_next("ok").await["channel"], "c");
}

/// A body too large to be worth reading is refused from its `Content-Length` with
/// `Connection: close`, so the client does not reuse the connection; a new one publishes.
#[tokio::test]
async fn huge_body_is_refused_with_connection_close() {
    let server = TestServer::start(|c| c.limits.max_request_body_bytes = 1000).await;
    let mut canary = server.client().await;
    canary.subscribe("c").await;
    let uri = signed_uri("POST", "/apps/1/events", &[], b"{}", SECRET, now());
    // Only the head: the answer must not wait for a body it will not read.
    let head = format!(
        "POST {uri} HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    );
    let answer = raw_http(&server, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        answer.contains("Request body is larger than 1000 bytes"),
        "{answer}"
    );
    let small = json!({"name": "ok", "channel": "c", "data": "{}"}).to_string();
    let answer = raw_http(
        &server,
        publish_request(&small)
            .replacen("Host: herald", "Host: herald\r\nConnection: close", 1)
            .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(canary.expect_next("ok").await["channel"], "c");
}

/// A body that is not JSON by its `Content-Type` is refused before it is read.
#[tokio::test]
async fn non_json_content_type_is_415() {
    let server = TestServer::default().await;
    let body = json!({"name": "e", "channel": "c", "data": "d"}).to_string();
    let request = publish_request(&body)
        .replace("application/json", "text/plain")
        .replacen("Host: herald", "Host: herald\r\nConnection: close", 1);
    let answer = raw_http(&server, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    assert!(
        answer.contains("Content-Type must be application/json"),
        "{answer}"
    );
    // With a charset, or without a Content-Type at all, the same body is published.
    let request = publish_request(&body)
        .replace("application/json", "application/json; charset=utf-8")
        .replacen("Host: herald", "Host: herald\r\nConnection: close", 1);
    assert!(raw_http(&server, request.as_bytes())
        .await
        .starts_with("HTTP/1.1 200"));
    let request = publish_request(&body).replace(
        "Content-Type: application/json\r\n",
        "Connection: close\r\n",
    );
    assert!(raw_http(&server, request.as_bytes())
        .await
        .starts_with("HTTP/1.1 200"));
}

/// Query strings, signatures, `info`, paths and methods: each refusal is its documented status
/// with a JSON body naming the problem.
#[tokio::test]
async fn every_api_refusal_is_json_naming_the_problem() {
    let server = TestServer::default().await;
    let check = |got: (u16, serde_json::Value), status: u16, words: &str| {
        assert_eq!(got.0, status, "{}", got.1);
        let error = got.1["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{}", got.1));
        assert!(error.contains(words), "{error:?} should say {words:?}");
    };
    let uri = signed_uri("GET", "/apps/1/channels", &[], b"", SECRET, now());
    check(
        server
            .get(&uri.replace("auth_version=1.0", "auth_version=2.0"))
            .await,
        400,
        "auth_version",
    );
    check(
        server.get(&format!("{uri}&auth_key={KEY}")).await,
        400,
        "given twice",
    );
    check(server.get(&format!("{uri}&x=%ff")).await, 400, "UTF-8");
    check(
        server
            .get(&uri.replace("auth_timestamp=", "auth_timestamp=x"))
            .await,
        401,
        "auth_timestamp",
    );
    for param in [
        "auth_key",
        "auth_timestamp",
        "auth_version",
        "auth_signature",
    ] {
        let stripped: Vec<&str> = uri
            .split(['?', '&'])
            .skip(1)
            .filter(|p| !p.starts_with(param))
            .collect();
        check(
            server
                .get(&format!("/apps/1/channels?{}", stripped.join("&")))
                .await,
            401,
            &format!("Missing {param}"),
        );
    }
    check(
        server
            .api("GET", "/apps/1/channels", &[("info", "members")], None)
            .await,
        400,
        "Unknown info attribute \"members\"",
    );
    check(
        server
            .api("GET", "/apps/1/channels", &[("info", "cache")], None)
            .await,
        400,
        "info=cache",
    );
    check(
        server
            .api(
                "GET",
                "/apps/1/channels/news",
                &[("info", "user_count")],
                None,
            )
            .await,
        400,
        "info=user_count is only valid for presence channels",
    );
    check(
        server
            .api("GET", "/apps/1/channels/bad%20name", &[], None)
            .await,
        400,
        "Invalid channel name \"bad name\"",
    );
    check(
        server
            .api(
                "POST",
                "/apps/1/events",
                &[],
                Some(&json!({"name": "e", "channel": "c", "data": "d", "info": "cache"})),
            )
            .await,
        400,
        "info=cache",
    );
    check(
        server
            .api(
                "POST",
                "/apps/1/events",
                &[],
                Some(
                    &json!({"name": "pusher_internal:member_added", "channel": "presence-c",
                    "data": "{\"user_id\":\"fake\",\"user_info\":{}}"}),
                ),
            )
            .await,
        400,
        "is reserved",
    );
    let batch: Vec<serde_json::Value> = (0..11)
        .map(|_| json!({"name": "e", "channel": "c", "data": "d"}))
        .collect();
    check(
        server
            .api(
                "POST",
                "/apps/1/batch_events",
                &[],
                Some(&json!({ "batch": batch })),
            )
            .await,
        400,
        "at most 10",
    );
    check(
        server
            .api(
                "POST",
                "/apps/1/batch_events",
                &[],
                Some(&json!({"batch": [{"name": "e", "channel": "c", "data": "d"}, {"name": "e", "channel": "bad name", "data": "d"}]})),
            )
            .await,
        400,
        "batch[1]: Invalid channel name",
    );
    check(
        server
            .api("POST", "/apps/1/events", &[], Some(&json!([1, 2])))
            .await,
        400,
        "Invalid JSON body",
    );
}

#[tokio::test]
async fn oversized_request_body_is_413() {
    let server = TestServer::start(|c| c.limits.max_request_body_bytes = 1000).await;
    let body = json!({"name": "e", "channel": "c", "data": "x".repeat(2000)});
    let (status, res) = server.api("POST", "/apps/1/events", &[], Some(&body)).await;
    assert_eq!(status, 413, "{res}");
}

#[tokio::test]
async fn health_and_metrics() {
    let (server, app) = server_with_own_app(|_| {}).await;
    assert_eq!(server.get("/up").await.0, 200);
    assert_eq!(server.get("/ready").await.0, 200);
    let app = [("app_id", app.as_str())];
    let before = scrape(&server).await;
    assert_eq!(before.value("herald_node_connections", &[]), 0.0);
    assert_eq!(before.value("herald_connections_total", &app), 0.0);
    assert_eq!(before.value("herald_deliveries_total", &app), 0.0);
    let mut client = server.client().await;
    client.subscribe("m").await;
    trigger_app(&server, app[0].1, "m", "e", "d").await;
    client.expect_next("e").await;
    let after = scrape(&server).await;
    assert_eq!(after.value("herald_node_connections", &[]), 1.0);
    assert_eq!(after.value("herald_connections_active", &app), 1.0);
    assert_eq!(after.value("herald_connections_total", &app), 1.0);
    assert_eq!(after.value("herald_deliveries_total", &app), 1.0);
    let api = [("app_id", app[0].1), ("source", "api")];
    assert_eq!(after.value("herald_broadcasts_total", &api), 1.0);
    // Other servers in this process publish too: the process-wide request counter only grows.
    let events = [("endpoint", "events"), ("status", "200")];
    assert!(
        after.value("herald_http_requests_total", &events)
            >= before.value("herald_http_requests_total", &events) + 1.0
    );
}
