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
    let body = json!({"name": "e", "channel": "pub", "data": "d", "info": "user_count"});
    let (status, res) = server.api("POST", "/apps/1/events", &[], Some(&body)).await;
    assert_eq!(status, 400, "{res}");
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
