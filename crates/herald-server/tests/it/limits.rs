//! Connection limits, Origin checks and slow consumers.

use std::time::Duration;

use serde_json::json;

use crate::metrics::{scrape, server_with_own_app, trigger_app};
use crate::support::*;

#[tokio::test]
async fn node_connection_limit_answers_4100() {
    let server = TestServer::start(|c| c.max_connections = 2).await;
    let _a = server.client().await;
    let _b = server.client().await;
    let mut refused = server.raw("/app/app-key?protocol=7").await;
    assert_eq!(
        refused.expect_next("pusher:error").await["data"]["code"],
        4100
    );
    assert_eq!(refused.expect_close().await, Closed::Code(4100));
    assert_eq!(
        server.get("/ready").await.0,
        503,
        "a full node is not ready"
    );
}

#[tokio::test]
async fn app_connection_quota_answers_4004_and_frees_on_disconnect() {
    let server = TestServer::start(|c| c.apps[0].max_connections = 1).await;
    let a = server.client().await;
    let mut refused = server.raw("/app/app-key?protocol=7").await;
    assert_eq!(
        refused.expect_next("pusher:error").await["data"]["code"],
        4004
    );
    assert_eq!(refused.expect_close().await, Closed::Code(4004));
    drop(a);
    // The slot frees once the server has seen the disconnect; retry until it has.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut client = server.raw("/app/app-key?protocol=7").await;
        if client.next().await["event"] == "pusher:connection_established" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
    }
}

#[tokio::test]
async fn origin_allow_list_answers_4009() {
    let server =
        TestServer::start(|c| c.apps[0].allowed_origins = vec!["https://app.example.com".into()])
            .await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    for (origin, allowed) in [
        ("https://app.example.com", true),
        ("https://evil.test", false),
    ] {
        let mut req = server
            .ws_url("/app/app-key?protocol=7")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut client = TestClient {
            ws,
            socket_id: String::new(),
        };
        if allowed {
            client.expect_next("pusher:connection_established").await;
        } else {
            assert_eq!(
                client.expect_next("pusher:error").await["data"]["code"],
                4009
            );
            assert_eq!(client.expect_close().await, Closed::Code(4009));
        }
    }
}

#[tokio::test]
async fn too_many_channels_on_one_connection() {
    let (server, app) = server_with_own_app(|c| c.limits.max_channels_per_connection = 2).await;
    let limit = [
        ("app_id", app.as_str()),
        ("limit", "channels_per_connection"),
    ];
    let mut client = server.client().await;
    client.subscribe("a").await;
    client.subscribe("b").await;
    let before = scrape(&server)
        .await
        .value("herald_limit_rejections_total", &limit);
    let frame = client.subscribe("c").await;
    assert_eq!(frame["event"], "pusher:subscription_error");
    assert_eq!(frame["data"]["type"], "LimitReached");
    let after = scrape(&server)
        .await
        .value("herald_limit_rejections_total", &limit);
    assert_eq!(after - before, 1.0);
    // Re-subscribing to one it has is still fine.
    assert_eq!(
        client.subscribe("a").await["event"],
        "pusher_internal:subscription_succeeded"
    );
}

#[tokio::test]
async fn slow_consumer_is_closed_without_hurting_others() {
    let (server, app) = server_with_own_app(|c| c.limits.outbox_max_bytes = 64 * 1024).await;
    let dropped = [("app_id", app.as_str()), ("reason", "slow_consumer")];
    let closed = [("app_id", app.as_str()), ("reason", "slow_consumer")];
    let before = scrape(&server).await;
    assert_eq!(
        before.value("herald_deliveries_dropped_total", &dropped),
        0.0
    );
    let mut reader = server.client().await;
    reader.subscribe("firehose").await;
    let mut stalled = server.client().await;
    stalled.subscribe("firehose").await;
    // `stalled` never reads from here on. Publish until its socket buffers and outbox overflow.
    let payload = "x".repeat(8 * 1024);
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut received = 0;
    while server.shared.node().connection_count() == 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled client was never closed"
        );
        trigger_app(&server, &app, "firehose", "bulk", &payload).await;
        n += 1;
        // The healthy reader keeps up.
        reader.expect("bulk").await; // skips confirmation pings (issue 12)
        received += 1;
    }
    assert_eq!(received, n);
    // Its buffers were full, so the 4100 close frame may not have fit; the socket must end either way.
    let code = stalled.expect_close_eventually().await;
    assert!(matches!(code, Some(4100) | None), "{code:?}");
    crate::metrics::until_metrics(&server, "the slow consumer is counted", |m| {
        m.value("herald_disconnections_total", &closed) == 1.0
            && m.value("herald_deliveries_dropped_total", &dropped) >= 1.0
    })
    .await;
    trigger_app(&server, &app, "firehose", "after", "1").await;
    reader.expect_next("after").await;
    let _ = json!({});
}

impl TestClient {
    /// Reads whatever was buffered and returns the close code, if a close frame made it.
    async fn expect_close_eventually(&mut self) -> Option<u16> {
        match self.expect_close().await {
            Closed::Code(code) => Some(code),
            Closed::NoFrame => None,
        }
    }
}

#[tokio::test]
async fn slow_handshake_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(|c| c.limits.handshake_timeout = Duration::from_secs(1)).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Never finish the request head: the server must hang up on its own.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection was not closed");
    // Others are served meanwhile.
    server.client().await;
}

#[tokio::test]
async fn oversized_request_head_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(|c| c.limits.max_header_bytes = 8192).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let huge = format!(
        "GET /up HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = stream.write_all(huge.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .expect("not closed");
    let head = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || head.starts_with("HTTP/1.1 431"), "{head}");
    assert_eq!(server.get("/up").await.0, 200);
}

#[tokio::test]
async fn message_flood_is_answered_with_4301_and_dropped() {
    let server = TestServer::start(|c| c.limits.max_messages_per_second = 5).await;
    let mut client = server.client().await;
    for _ in 0..10 {
        client
            .send(json!({"event": "pusher:ping", "data": {}}))
            .await;
    }
    let (mut pongs, mut errors) = (0, 0);
    for _ in 0..10 {
        let frame = client.next().await;
        match frame["event"].as_str().unwrap() {
            "pusher:pong" => pongs += 1,
            "pusher:error" => {
                assert_eq!(frame["data"]["code"], 4301);
                errors += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(pongs >= 5 && errors >= 1, "{pongs} pongs, {errors} errors");
    assert_eq!(pongs + errors, 10);
}
