//! Subscribing to every channel type, and what a failed subscription looks like.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn public_subscribe_succeeds_and_receives_events() {
    let server = TestServer::default().await;
    let mut client = server.client().await;
    let frame = client.subscribe("news").await;
    assert_eq!(frame["event"], "pusher_internal:subscription_succeeded");
    server
        .trigger("news", "headline", r#"{"title":"héllo \"quoted\""}"#)
        .await;
    let event = client.expect_next("headline").await;
    assert_eq!(event["channel"], "news");
    assert_eq!(
        event["data"], r#"{"title":"héllo \"quoted\""}"#,
        "data is passed through as the same string"
    );
}

#[tokio::test]
async fn resubscribing_is_idempotent() {
    let server = TestServer::default().await;
    let mut client = server.client().await;
    client.subscribe("news").await;
    let again = client.subscribe("news").await;
    assert_eq!(again["event"], "pusher_internal:subscription_succeeded");
    server.trigger("news", "once", "1").await;
    client.expect_next("once").await;
    client.expect_nothing_more().await;
    let (_, body) = server
        .api(
            "GET",
            "/apps/1/channels/news",
            &[("info", "subscription_count")],
            None,
        )
        .await;
    assert_eq!(body["subscription_count"], 1);
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_unknown_unsubscribe_is_silent() {
    let server = TestServer::default().await;
    let mut client = server.client().await;
    client.subscribe("news").await;
    client
        .send(json!({"event": "pusher:unsubscribe", "data": {"channel": "news"}}))
        .await;
    client
        .send(json!({"event": "pusher:unsubscribe", "data": {"channel": "never-subscribed"}}))
        .await;
    client.expect_nothing_more().await;
    server.trigger("news", "missed", "1").await;
    client.expect_nothing_more().await;
}

#[tokio::test]
async fn private_channel_needs_a_valid_signature() {
    let server = TestServer::default().await;
    let mut client = server.client().await;
    let ok = client.subscribe_private("private-a").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    let ok = client.subscribe_private("private-encrypted-a").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");

    let bad_signatures = [
        None,
        Some(format!("{KEY}:{}", "0".repeat(64))),
        Some(private_auth("1.1", "private-b")),
        Some(private_auth(&client.socket_id, "private-b").replace(KEY, "other-key")),
        Some("no-colon".to_owned()),
    ];
    for auth in bad_signatures {
        client.send(json!({"event": "pusher:subscribe", "data": {"channel": "private-b", "auth": auth}})).await;
        let frame = client.expect_next("pusher:subscription_error").await;
        assert_eq!(frame["channel"], "private-b");
        assert_eq!(frame["data"]["type"], "AuthError");
        assert_eq!(frame["data"]["status"], 401);
    }
    client.expect_nothing_more().await;
}

#[tokio::test]
async fn prefixes_match_exactly() {
    let server = TestServer::default().await;
    let mut client = server.client().await;
    // Not a private channel: no hyphen after the prefix.
    assert_eq!(
        client.subscribe("privatefoo").await["event"],
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(
        client.subscribe("presencefoo").await["event"],
        "pusher_internal:subscription_succeeded"
    );
}

#[tokio::test]
async fn invalid_channel_names_are_refused() {
    let server = TestServer::start(|c| c.limits.max_channel_name_length = 20).await;
    let mut client = server.client().await;
    for name in [
        "has space",
        "é",
        "#server-to-user-",
        "#other",
        &"a".repeat(21),
    ] {
        client
            .send(json!({"event": "pusher:subscribe", "data": {"channel": name}}))
            .await;
        let frame = client.expect_next("pusher:subscription_error").await;
        assert_eq!(frame["channel"], name);
    }
    assert_eq!(
        client.subscribe(&"a".repeat(20)).await["event"],
        "pusher_internal:subscription_succeeded"
    );
}

#[tokio::test]
async fn cache_channel_replays_last_event_or_sends_cache_miss() {
    let server = TestServer::default().await;
    let mut first = server.client().await;
    first.subscribe("cache-prices").await;
    first.expect_next("pusher:cache_miss").await;
    server.trigger("cache-prices", "price", "41").await;
    server.trigger("cache-prices", "price", "42").await;
    first.expect_next("price").await;
    first.expect_next("price").await;
    let mut second = server.client().await;
    second.subscribe("cache-prices").await;
    let replay = second.expect_next("price").await;
    assert_eq!(replay["data"], "42");
    let (status, body) = server
        .api(
            "GET",
            "/apps/1/channels/cache-prices",
            &[("info", "cache")],
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cache"]["data"], "42");
}

#[tokio::test]
async fn subscription_count_is_sent_when_enabled() {
    let server = TestServer::start(|c| c.apps[0].subscription_count = true).await;
    let mut a = server.client().await;
    a.subscribe("room").await;
    let count = a.expect_next("pusher_internal:subscription_count").await;
    assert_eq!(data(&count)["subscription_count"], 1);
    let mut b = server.client().await;
    b.subscribe("room").await;
    let count = a.expect_next("pusher_internal:subscription_count").await;
    assert_eq!(data(&count)["subscription_count"], 2);
}

#[tokio::test]
async fn subscription_count_is_off_by_default() {
    let server = TestServer::default().await;
    let mut a = server.client().await;
    a.subscribe("room").await;
    a.expect_nothing_more().await;
}
