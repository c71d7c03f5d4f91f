//! Client events: private/presence only, subscribers only, never echoed, rate-limited.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn client_event_reaches_others_but_not_sender() {
    let server = TestServer::default().await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    alice.subscribe_private("private-chat").await;
    bob.subscribe_private("private-chat").await;
    alice
        .send(
            json!({"event": "client-typing", "channel": "private-chat", "data": {"who": "alice"}}),
        )
        .await;
    let frame = bob.expect_next("client-typing").await;
    assert_eq!(frame["data"], json!({"who": "alice"}));
    assert!(frame.get("user_id").is_none());
    alice.expect_nothing_more().await;
}

#[tokio::test]
async fn client_event_on_presence_carries_user_id() {
    let server = TestServer::default().await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    alice.subscribe_presence("presence-chat", "alice").await;
    bob.subscribe_presence("presence-chat", "bob").await;
    alice.expect_next("pusher_internal:member_added").await;
    alice
        .send(json!({"event": "client-hi", "channel": "presence-chat", "data": "hello"}))
        .await;
    let frame = bob.expect_next("client-hi").await;
    assert_eq!(frame["user_id"], "alice");
    assert_eq!(frame["data"], "hello");
}

async fn expect_rejected(client: &mut TestClient, channel: &str) -> serde_json::Value {
    client
        .send(json!({"event": "client-x", "channel": channel, "data": {}}))
        .await;
    client.expect_next("pusher:error").await
}

#[tokio::test]
async fn client_events_are_refused_on_public_and_unsubscribed_channels() {
    let server = TestServer::default().await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    alice.subscribe("public").await;
    bob.subscribe("public").await;
    bob.subscribe_private("private-other").await;
    assert_eq!(
        expect_rejected(&mut alice, "public").await["data"]["code"],
        4301
    );
    expect_rejected(&mut alice, "private-other").await;
    bob.expect_nothing_more().await;
    alice.expect_nothing_more().await;
}

#[tokio::test]
async fn client_events_can_be_disabled_per_app() {
    let server = TestServer::start(|c| c.apps[0].client_events = false).await;
    let mut alice = server.client().await;
    alice.subscribe_private("private-chat").await;
    assert_eq!(
        expect_rejected(&mut alice, "private-chat").await["data"]["code"],
        4301
    );
}

#[tokio::test]
async fn client_event_rate_limit_answers_4301_and_keeps_socket() {
    let server = TestServer::start(|c| c.apps[0].max_client_events_per_second = 3).await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    alice.subscribe_private("private-chat").await;
    bob.subscribe_private("private-chat").await;
    for i in 0..5 {
        alice
            .send(json!({"event": "client-n", "channel": "private-chat", "data": {"i": i}}))
            .await;
    }
    let mut errors = 0;
    for _ in 0..2 {
        let frame = alice.expect_next("pusher:error").await;
        assert_eq!(frame["data"]["code"], 4301);
        errors += 1;
    }
    assert_eq!(errors, 2);
    for i in 0..3 {
        assert_eq!(bob.expect_next("client-n").await["data"]["i"], i);
    }
    alice.expect_nothing_more().await;
    bob.expect_nothing_more().await;
}

#[tokio::test]
async fn oversized_client_event_is_refused() {
    let server = TestServer::start(|c| c.apps[0].max_message_size = 100).await;
    let mut alice = server.client().await;
    alice.subscribe_private("private-chat").await;
    alice
        .send(json!({"event": "client-big", "channel": "private-chat", "data": "x".repeat(200)}))
        .await;
    assert_eq!(
        alice.expect_next("pusher:error").await["data"]["code"],
        4301
    );
    alice.expect_nothing_more().await;
}

#[tokio::test]
async fn every_client_event_refusal_says_why_and_keeps_the_socket() {
    let server = TestServer::default().await;
    let mut alice = server.client().await;
    alice.subscribe("public").await;
    alice.subscribe_private("private-chat").await;
    let long_name = format!("client-{}", "x".repeat(200));
    let cases = [
        (
            json!({"event": long_name, "channel": "private-chat", "data": {}}),
            4301,
            "Event name is longer than 200",
        ),
        (
            json!({"event": "client-x", "channel": "private-other", "data": {}}),
            4009,
            "need a subscription",
        ),
        (
            json!({"event": "client-x", "channel": "public", "data": {}}),
            4301,
            "only allowed on private and presence",
        ),
    ];
    for (frame, code, words) in cases {
        alice.send(frame).await;
        let error = alice.expect_next("pusher:error").await;
        assert_eq!(error["data"]["code"], code, "{error}");
        let message = error["data"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{error} should say {words:?}");
    }
    server.trigger("public", "still-here", "{}").await;
    alice.expect_next("still-here").await;
}
