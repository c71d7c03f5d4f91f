//! User sign-in, server-to-user channels, the watchlist and terminating a user's connections.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn signin_then_server_to_user_delivery() {
    let server = TestServer::default().await;
    let mut alice = server.client().await;
    let frame = alice
        .sign_in(&json!({"id": "alice", "user_info": {"name": "A"}}))
        .await;
    assert_eq!(frame["event"], "pusher:signin_success");
    let user_data: serde_json::Value =
        serde_json::from_str(frame["data"]["user_data"].as_str().unwrap()).unwrap();
    assert_eq!(user_data["id"], "alice");
    alice.subscribe("#server-to-user-alice").await;
    server
        .trigger("#server-to-user-alice", "notice", "hi alice")
        .await;
    assert_eq!(alice.expect_next("notice").await["data"], "hi alice");
}

#[tokio::test]
async fn only_the_signed_in_user_may_subscribe_to_their_channel() {
    let server = TestServer::default().await;
    let mut mallory = server.client().await;
    let frame = mallory.subscribe("#server-to-user-alice").await;
    assert_eq!(frame["event"], "pusher:subscription_error");
    mallory.sign_in(&json!({"id": "mallory"})).await;
    let frame = mallory.subscribe("#server-to-user-alice").await;
    assert_eq!(frame["event"], "pusher:subscription_error");
}

#[tokio::test]
async fn bad_signin_is_refused_with_4009() {
    let server = TestServer::default().await;
    let mut client = server.client().await;
    client.send(json!({"event": "pusher:signin", "data": {"auth": format!("{KEY}:{}", "0".repeat(64)), "user_data": "{\"id\":\"x\"}"}})).await;
    assert_eq!(
        client.expect_next("pusher:error").await["data"]["code"],
        4009
    );
    assert_eq!(client.expect_close().await, Closed::Code(4009));
}

#[tokio::test]
async fn watchlist_reports_initial_state_and_transitions() {
    let server = TestServer::default().await;
    let mut bob = server.client().await;
    bob.sign_in(&json!({"id": "bob"})).await;

    let mut alice = server.client().await;
    alice
        .sign_in(&json!({"id": "alice", "watchlist": ["bob", "carol"]}))
        .await;
    let initial = alice.expect_next("pusher_internal:watchlist_events").await;
    assert_eq!(
        initial["data"]["events"],
        json!([{"name": "online", "user_ids": ["bob"]}, {"name": "offline", "user_ids": ["carol"]}])
    );

    let mut carol = server.client().await;
    carol.sign_in(&json!({"id": "carol"})).await;
    let online = alice.expect_next("pusher_internal:watchlist_events").await;
    assert_eq!(
        online["data"]["events"],
        json!([{"name": "online", "user_ids": ["carol"]}])
    );

    drop(carol);
    let offline = alice.expect_next("pusher_internal:watchlist_events").await;
    assert_eq!(
        offline["data"]["events"],
        json!([{"name": "offline", "user_ids": ["carol"]}])
    );
}

#[tokio::test]
async fn watchlist_over_100_ids_gets_4302_and_keeps_socket() {
    let server = TestServer::default().await;
    let mut alice = server.client().await;
    let ids: Vec<String> = (0..150).map(|i| format!("u{i}")).collect();
    let frame = alice
        .sign_in(&json!({"id": "alice", "watchlist": ids}))
        .await;
    assert_eq!(frame["event"], "pusher:signin_success");
    assert_eq!(
        alice.expect_next("pusher:error").await["data"]["code"],
        4302
    );
    let initial = alice.expect_next("pusher_internal:watchlist_events").await;
    assert_eq!(
        initial["data"]["events"][0]["user_ids"]
            .as_array()
            .unwrap()
            .len(),
        100
    );
    alice.expect_nothing_more().await;
}

#[tokio::test]
async fn terminate_closes_every_connection_of_the_user() {
    let server = TestServer::default().await;
    let mut tab1 = server.client().await;
    let mut tab2 = server.client().await;
    let mut other = server.client().await;
    tab1.sign_in(&json!({"id": "alice"})).await;
    tab2.sign_in(&json!({"id": "alice"})).await;
    other.sign_in(&json!({"id": "bob"})).await;
    let (status, body) = server
        .api(
            "POST",
            "/apps/1/users/alice/terminate_connections",
            &[],
            Some(&json!({})),
        )
        .await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(tab1.expect_close().await, Closed::Code(4009));
    assert_eq!(tab2.expect_close().await, Closed::Code(4009));
    other.expect_nothing_more().await;
}

#[tokio::test]
async fn every_signin_refusal_says_why_then_closes_with_4009() {
    let server = TestServer::default().await;
    let cases = [
        (None, "{\"id\":\"x\"}", "Invalid signature"),
        (Some(()), "not json", "user_data is not valid JSON"),
        (Some(()), "{\"name\":\"x\"}", "needs a non-empty string id"),
    ];
    for (signed, user_data, words) in cases {
        let mut client = server.client().await;
        let auth = match signed {
            Some(()) => signin_auth(&client.socket_id, user_data),
            None => format!("{KEY}:{}", "0".repeat(64)),
        };
        client
            .send(json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}))
            .await;
        let error = client.expect_next("pusher:error").await;
        assert_eq!(error["data"]["code"], 4009, "{error}");
        let message = error["data"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{error} should say {words:?}");
        assert_eq!(client.expect_close().await, Closed::Code(4009));
    }
}

/// The Python SDK's path names no app: the key that signed the request picks it.
#[tokio::test]
async fn terminate_without_app_id_finds_the_app_by_its_key() {
    let server = TestServer::default().await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    alice.sign_in(&json!({"id": "alice"})).await;
    bob.sign_in(&json!({"id": "bob"})).await;
    let path = "/users/alice/terminate_connections";
    let body = json!({});
    let (status, answer) = server.api("POST", path, &[], Some(&body)).await;
    assert_eq!((status, answer), (200, json!({})));
    assert_eq!(alice.expect_close().await, Closed::Code(4009));
    bob.expect_nothing_more().await;

    let uri = signed_uri("POST", path, &[], b"{}", SECRET, now());
    let (status, answer) = server
        .send_http("POST", &uri.replace(KEY, "nobodys-key"), "{}".into())
        .await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"], "Unknown auth_key for this app");
    let (status, answer) = server.send_http("POST", path, "{}".into()).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"], "Missing auth_key");
    bob.expect_nothing_more().await;
}
