//! Presence: distinct users, first/last-connection member events, limits.

use serde_json::json;

use crate::metrics::{scrape, server_with_own_app};
use crate::support::*;

#[tokio::test]
async fn presence_snapshot_lists_distinct_users() {
    let server = TestServer::default().await;
    let mut alice1 = server.client().await;
    let mut alice2 = server.client().await;
    alice1.subscribe_presence("presence-room", "alice").await;
    alice2.subscribe_presence("presence-room", "alice").await;
    let mut bob = server.client().await;
    let frame = bob.subscribe_presence("presence-room", "bob").await;
    let presence = &data(&frame)["presence"];
    assert_eq!(presence["count"], 2, "{presence}");
    let mut ids: Vec<&str> = presence["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["alice", "bob"]);
    assert_eq!(presence["hash"]["alice"], json!({"name": "alice"}));
}

#[tokio::test]
async fn member_added_only_for_first_connection_and_removed_only_after_last() {
    let server = TestServer::default().await;
    let mut watcher = server.client().await;
    watcher.subscribe_presence("presence-room", "watcher").await;

    let mut tab1 = server.client().await;
    tab1.subscribe_presence("presence-room", "alice").await;
    let added = watcher.expect_next("pusher_internal:member_added").await;
    assert_eq!(
        data(&added),
        json!({"user_id": "alice", "user_info": {"name": "alice"}})
    );

    let mut tab2 = server.client().await;
    tab2.subscribe_presence("presence-room", "alice").await;
    watcher.expect_nothing_more().await;

    drop(tab1);
    watcher.expect_nothing_more().await;
    tab2.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-room"}}))
        .await;
    let removed = watcher.expect_next("pusher_internal:member_removed").await;
    assert_eq!(data(&removed), json!({"user_id": "alice"}));
}

#[tokio::test]
async fn disconnect_removes_member() {
    let server = TestServer::default().await;
    let mut watcher = server.client().await;
    watcher.subscribe_presence("presence-room", "watcher").await;
    let mut alice = server.client().await;
    alice.subscribe_presence("presence-room", "alice").await;
    watcher.expect_next("pusher_internal:member_added").await;
    alice.ws.close(None).await.unwrap();
    watcher.expect_next("pusher_internal:member_removed").await;
}

#[tokio::test]
async fn numeric_user_ids_are_normalised() {
    let server = TestServer::default().await;
    let mut client = server.client().await;
    let data_str = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
    let auth = presence_auth(&client.socket_id, "presence-n", data_str);
    client
        .send(json!({"event": "pusher:subscribe", "data": {"channel": "presence-n", "auth": auth, "channel_data": data_str}}))
        .await;
    let frame = client
        .expect_next("pusher_internal:subscription_succeeded")
        .await;
    assert_eq!(data(&frame)["presence"]["ids"], json!(["10"]));
}

#[tokio::test]
async fn presence_needs_signed_channel_data() {
    let server = TestServer::default().await;
    let mut client = server.client().await;
    let data_str = r#"{"user_id":"a"}"#;
    let auth = presence_auth(&client.socket_id, "presence-x", data_str);
    let forged = r#"{"user_id":"admin"}"#;
    client
        .send(json!({"event": "pusher:subscribe", "data": {"channel": "presence-x", "auth": auth, "channel_data": forged}}))
        .await;
    assert_eq!(
        client.expect_next("pusher:subscription_error").await["data"]["status"],
        401
    );
    client
        .send(json!({"event": "pusher:subscribe", "data": {"channel": "presence-x", "auth": auth}}))
        .await;
    assert_eq!(
        client.expect_next("pusher:subscription_error").await["data"]["status"],
        401
    );
    let garbage = "not json";
    let auth = presence_auth(&client.socket_id, "presence-x", garbage);
    client
        .send(json!({"event": "pusher:subscribe", "data": {"channel": "presence-x", "auth": auth, "channel_data": garbage}}))
        .await;
    // Correctly signed but malformed: the type says so (not a limit, not auth).
    let frame = client.expect_next("pusher:subscription_error").await;
    assert_eq!(frame["data"]["type"], "InvalidChannelData", "{frame}");
    assert_eq!(frame["data"]["status"], 400, "{frame}");
}

#[tokio::test]
async fn presence_member_limit_is_enforced() {
    let (server, app) = server_with_own_app(|c| c.apps[0].max_presence_members = 2).await;
    let limit = [("app_id", app.as_str()), ("limit", "presence_members")];
    let mut a = server.client().await;
    let mut b = server.client().await;
    let mut c = server.client().await;
    a.subscribe_presence("presence-small", "a").await;
    b.subscribe_presence("presence-small", "b").await;
    let before = scrape(&server)
        .await
        .value("herald_limit_rejections_total", &limit);
    let refused = c.subscribe_presence("presence-small", "c").await;
    assert_eq!(refused["event"], "pusher:subscription_error");
    assert_eq!(refused["data"]["type"], "LimitReached");
    let after = scrape(&server)
        .await
        .value("herald_limit_rejections_total", &limit);
    assert_eq!(after - before, 1.0);
    // Another connection of an existing member still fits.
    let mut a2 = server.client().await;
    assert_eq!(
        a2.subscribe_presence("presence-small", "a").await["event"],
        "pusher_internal:subscription_succeeded"
    );
}

#[tokio::test]
async fn presence_user_info_size_is_limited() {
    let server = TestServer::start(|c| c.apps[0].max_presence_user_info_bytes = 50).await;
    let mut client = server.client().await;
    let data_str = json!({"user_id": "a", "user_info": {"bio": "x".repeat(60)}}).to_string();
    let auth = presence_auth(&client.socket_id, "presence-x", &data_str);
    client
        .send(json!({"event": "pusher:subscribe", "data": {"channel": "presence-x", "auth": auth, "channel_data": data_str}}))
        .await;
    let frame = client.expect_next("pusher:subscription_error").await;
    assert_eq!(frame["data"]["type"], "LimitReached");
}
