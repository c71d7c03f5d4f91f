//! Connecting: the handshake, refusals with their close codes, ping/pong and bad frames.

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn connection_established_has_socket_id_and_activity_timeout() {
    let server = TestServer::default().await;
    let mut client = server
        .raw("/app/app-key?protocol=7&client=js&version=8.4.0&flash=false")
        .await;
    let frame = client.expect_next("pusher:connection_established").await;
    let data = data(&frame);
    let socket_id = data["socket_id"].as_str().unwrap();
    let (a, b) = socket_id.split_once('.').unwrap();
    assert!(
        a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()),
        "{socket_id}"
    );
    assert_eq!(data["activity_timeout"], 30);
    let other = server.client().await;
    assert_ne!(other.socket_id, socket_id);
}

async fn refused_with(server: &TestServer, path: &str, code: u16) {
    let mut client = server.raw(path).await;
    let frame = client.expect_next("pusher:error").await;
    assert_eq!(frame["data"]["code"], code, "{frame}");
    assert_eq!(client.expect_close().await, Closed::Code(code));
}

#[tokio::test]
async fn unknown_app_key_is_refused_with_4001() {
    let server = TestServer::default().await;
    refused_with(&server, "/app/nope?protocol=7", 4001).await;
}

#[tokio::test]
async fn disabled_app_is_refused_with_4003() {
    let server = TestServer::start(|c| c.apps[0].enabled = false).await;
    refused_with(&server, "/app/app-key?protocol=7", 4003).await;
}

#[tokio::test]
async fn unknown_path_is_refused_with_4005() {
    let server = TestServer::default().await;
    refused_with(&server, "/socket/app-key?protocol=7", 4005).await;
}

#[tokio::test]
async fn unsupported_or_missing_protocol_is_refused() {
    let server = TestServer::default().await;
    refused_with(&server, "/app/app-key?protocol=1", 4007).await;
    refused_with(&server, "/app/app-key?protocol=x", 4007).await;
    refused_with(&server, "/app/app-key?client=js", 4008).await;
}

#[tokio::test]
async fn path_prefix_is_served() {
    let server = TestServer::start(|c| c.path_prefix = "/ws".into()).await;
    let mut client = server.raw("/ws/app/app-key?protocol=7").await;
    client.expect_next("pusher:connection_established").await;
}

#[tokio::test]
async fn handshake_without_upgrade_headers_gets_400_json() {
    let server = TestServer::default().await;
    let (status, body) = server.get("/app/app-key?protocol=7").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("WebSocket"),
        "{body}"
    );
    let (status, body) = server.get("/nothing-here").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn pusher_ping_gets_pong() {
    let server = TestServer::default().await;
    let mut client = server.client().await;
    client
        .send(json!({"event": "pusher:ping", "data": {}}))
        .await;
    client.expect_next("pusher:pong").await;
}

#[tokio::test]
async fn websocket_ping_gets_pong() {
    let server = TestServer::default().await;
    let mut client = server.client().await;
    use futures_util::{SinkExt, StreamExt};
    client
        .ws
        .send(Message::Ping(b"hi".to_vec().into()))
        .await
        .unwrap();
    let msg = tokio::time::timeout(WAIT, client.ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(msg, Message::Pong(b"hi".to_vec().into()));
}

/// The next frame, whatever it is; panics after [`WAIT`].
async fn next_frame(client: &mut TestClient) -> Message {
    use futures_util::StreamExt;
    tokio::time::timeout(WAIT, client.ws.next())
        .await
        .expect("timed out")
        .expect("the stream ended")
        .expect("a frame")
}

#[tokio::test]
async fn pongs_keep_their_place_among_the_replies() {
    let server = TestServer::default().await;
    let mut client = server.client().await;
    use futures_util::SinkExt;
    // Sent together (one flush), so that the server reads them at once.
    let ping = json!({"event": "pusher:ping", "data": {}}).to_string();
    for message in [
        Message::text(ping.clone()),
        Message::Ping(b"between".to_vec().into()),
        Message::text(ping),
    ] {
        client.ws.feed(message).await.unwrap();
    }
    client.ws.flush().await.unwrap();
    let frames = [
        next_frame(&mut client).await,
        next_frame(&mut client).await,
        next_frame(&mut client).await,
    ];
    assert!(
        matches!(&frames[0], Message::Text(t) if t.contains("pusher:pong")),
        "{frames:?}"
    );
    assert_eq!(frames[1], Message::Pong(b"between".to_vec().into()));
    assert!(
        matches!(&frames[2], Message::Text(t) if t.contains("pusher:pong")),
        "{frames:?}"
    );
}

#[tokio::test]
async fn pings_spend_the_message_budget() {
    let server = TestServer::start(|c| c.limits.max_messages_per_second = 3).await;
    let mut client = server.client().await;
    use futures_util::SinkExt;
    for _ in 0..10 {
        client
            .ws
            .feed(Message::Ping(b"p".to_vec().into()))
            .await
            .unwrap();
    }
    let ping = json!({"event": "pusher:ping", "data": {}}).to_string();
    client.ws.feed(Message::text(ping)).await.unwrap();
    client.ws.flush().await.unwrap();
    // Three pongs (the budget's burst), no more; the message after the flood is over budget.
    for _ in 0..3 {
        assert_eq!(
            next_frame(&mut client).await,
            Message::Pong(b"p".to_vec().into())
        );
    }
    let error = next_frame(&mut client).await;
    assert!(
        matches!(&error, Message::Text(t) if t.contains("pusher:error") && t.contains("4301")),
        "{error:?}"
    );
}

#[tokio::test]
async fn replies_to_what_came_before_a_close_frame_are_sent_before_the_close() {
    let server = TestServer::default().await;
    let mut client = server.client().await;
    use futures_util::SinkExt;
    let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": "news"}});
    client
        .ws
        .feed(Message::text(subscribe.to_string()))
        .await
        .unwrap();
    client.ws.feed(Message::Close(None)).await.unwrap();
    client.ws.flush().await.unwrap();
    let reply = next_frame(&mut client).await;
    assert!(
        matches!(&reply, Message::Text(t) if t.contains("pusher_internal:subscription_succeeded")),
        "{reply:?}"
    );
    assert!(matches!(next_frame(&mut client).await, Message::Close(_)));
}

#[tokio::test]
async fn silent_client_is_pinged_then_closed_with_4201() {
    let server = TestServer::start(|c| {
        c.activity_timeout = Duration::from_secs(1);
        c.pong_timeout = Duration::from_secs(1);
    })
    .await;
    let mut client = server.client().await;
    client.expect_next("pusher:ping").await;
    client.expect("pusher:error").await;
    assert_eq!(client.expect_close().await, Closed::Code(4201));
}

#[tokio::test]
async fn client_answering_pings_stays_connected() {
    let server = TestServer::start(|c| {
        c.activity_timeout = Duration::from_secs(1);
        c.pong_timeout = Duration::from_secs(1);
    })
    .await;
    let mut client = server.client().await;
    for _ in 0..3 {
        client.expect_next("pusher:ping").await;
        client
            .send(json!({"event": "pusher:pong", "data": {}}))
            .await;
    }
    client.expect_nothing_more().await;
}

#[tokio::test]
async fn bad_frames_get_pusher_error_and_socket_stays_open() {
    let server = TestServer::default().await;
    let mut client = server.client().await;
    for bad in [
        "not json",
        "[1,2]",
        r#"{"data":{}}"#,
        r#"{"event":"pusher:subscribe"}"#,
        r#"{"event":"pusher:subscribe","data":{"channel":7}}"#,
    ] {
        client.send_text(bad).await;
        let frame = client.expect_next("pusher:error").await;
        assert!(
            frame["data"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Invalid message"),
            "{frame}"
        );
    }
    use futures_util::SinkExt;
    client
        .ws
        .send(Message::Binary(b"\x00\x01".to_vec().into()))
        .await
        .unwrap();
    client.expect_next("pusher:error").await;
    client.expect_nothing_more().await;
}

#[tokio::test]
async fn oversize_frame_closes_only_that_socket() {
    let server = TestServer::start(|c| c.limits.max_frame_bytes = 4096).await;
    let mut bystander = server.client().await;
    bystander.subscribe("news").await;
    let mut client = server.client().await;
    client
        .send_text(&format!(
            r#"{{"event":"client-x","channel":"a","data":"{}"}}"#,
            "x".repeat(5000)
        ))
        .await;
    client.expect("pusher:error").await;
    assert_eq!(client.expect_close().await, Closed::Code(1009));
    server.trigger("news", "still-here", "1").await;
    bystander.expect_next("still-here").await;
}
