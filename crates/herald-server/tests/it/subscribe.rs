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

/// Every way a subscribe is refused, over a real socket: the `type` names what was wrong, the
/// status is the documented one, and the socket goes on working.
#[tokio::test]
async fn every_subscription_refusal_names_what_was_wrong() {
    let server = TestServer::start(|c| {
        c.limits.max_channels_per_connection = 3;
        c.apps[0].max_presence_user_info_bytes = 50;
        c.apps[0].max_presence_members = 1;
    })
    .await;
    let mut member = server.client().await;
    member.subscribe_presence("presence-full", "m").await;
    let mut client = server.client().await;
    let sid = client.socket_id.clone();
    let presence = |data: &str| json!({"channel": "presence-x", "auth": presence_auth(&sid, "presence-x", data), "channel_data": data});
    let too_long = "x".repeat(201);
    let cases = [
        (
            json!({"channel": "bad name"}),
            "InvalidChannel",
            400,
            "Invalid channel name",
        ),
        (
            json!({"channel": too_long}),
            "LimitReached",
            4009,
            "longer than 200",
        ),
        (
            json!({"channel": "private-a"}),
            "AuthError",
            401,
            "Missing auth",
        ),
        (
            json!({"channel": "private-a", "auth": format!("{KEY}:{}", "0".repeat(64))}),
            "AuthError",
            401,
            "Invalid signature",
        ),
        (
            json!({"channel": "presence-x", "auth": presence_auth(&sid, "presence-x", "{}")}),
            "AuthError",
            401,
            "Missing channel_data",
        ),
        (
            presence("not json"),
            "InvalidChannelData",
            400,
            "not a JSON object",
        ),
        (
            presence(r#"{"user_info":{}}"#),
            "InvalidChannelData",
            400,
            "needs a user_id",
        ),
        (
            presence(&json!({"user_id": "u".repeat(129)}).to_string()),
            "LimitReached",
            4009,
            "user_id is longer than 128",
        ),
        (
            presence(&json!({"user_id": "u", "user_info": {"bio": "x".repeat(60)}}).to_string()),
            "LimitReached",
            4009,
            "user_info is larger than 50",
        ),
        (
            json!({"channel": "#server-to-user-u"}),
            "AuthError",
            403,
            "signed in as this user",
        ),
        (
            json!({"channel": "presence-full", "auth": presence_auth(&sid, "presence-full", r#"{"user_id":"n"}"#), "channel_data": r#"{"user_id":"n"}"#}),
            "LimitReached",
            4100,
            "maximum members",
        ),
    ];
    for (data, kind, status, words) in cases {
        let channel = data["channel"].clone();
        client
            .send(json!({"event": "pusher:subscribe", "data": data}))
            .await;
        let frame = client.expect_next("pusher:subscription_error").await;
        assert_eq!(frame["channel"], channel, "{frame}");
        assert_eq!(frame["data"]["type"], kind, "{frame}");
        assert_eq!(frame["data"]["status"], status, "{frame}");
        let error = frame["data"]["error"].as_str().unwrap();
        assert!(error.contains(words), "{frame} should say {words:?}");
    }
    // Three channels fill the connection; the fourth is over the limit.
    for name in ["a", "b", "c"] {
        client.subscribe(name).await;
    }
    let frame = client.subscribe("d").await;
    assert_eq!(frame["data"]["type"], "LimitReached", "{frame}");
    assert_eq!(frame["data"]["status"], 4100, "{frame}");
    // The socket still receives what is published to a channel it has.
    server.trigger("a", "still-here", "{}").await;
    assert_eq!(client.expect_next("still-here").await["channel"], "a");
}
