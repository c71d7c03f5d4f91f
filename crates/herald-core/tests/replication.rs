//! Node state without sockets: presence across local and replicated remote sockets, and the
//! diff semantics of `replace_node`.

use herald_core::{App, LocalState, Node, NodeLimits, Outbox, PresenceMember, SubscriptionEntry};
use herald_protocol::{ChannelName, SocketId, UserId};

fn node() -> Node {
    Node::new(1, vec![App::demo()], NodeLimits::default())
}

fn events(outbox: &Outbox) -> Vec<String> {
    let (batch, _) = outbox.take();
    batch
        .iter()
        .map(|f| {
            let v: serde_json::Value = serde_json::from_slice(f.text()).unwrap();
            let data: serde_json::Value = v["data"]
                .as_str()
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or_default();
            format!(
                "{} {}",
                v["event"].as_str().unwrap(),
                data["user_id"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn member(user: &str) -> Option<PresenceMember> {
    Some(PresenceMember {
        user_id: UserId(user.into()),
        user_info: None,
    })
}

fn entry(channel: &ChannelName, node: u64, seq: u64, user: &str) -> SubscriptionEntry {
    SubscriptionEntry {
        channel: channel.clone(),
        socket: SocketId { node, seq },
        user: Some(UserId(user.into())),
        user_info: None,
        cookie: None,
    }
}

#[test]
fn remote_members_count_for_first_and_last_connection() {
    let node = node();
    let app = node.app_by_id("1").unwrap();
    let room = ChannelName::parse("presence-room", 200).unwrap();
    let watcher = Outbox::new(1 << 20);
    app.subscribe(
        SocketId { node: 1, seq: 1 },
        &watcher,
        &room,
        member("watcher"),
    )
    .unwrap();
    assert_eq!(
        events(&watcher),
        ["pusher_internal:subscription_succeeded "]
    );

    // Alice joins on node 2: one member_added.
    app.remote_subscribe(SocketId { node: 2, seq: 1 }, &room, member("alice"), None);
    assert_eq!(events(&watcher), ["pusher_internal:member_added alice"]);
    // Applying the same announcement again changes nothing.
    app.remote_subscribe(SocketId { node: 2, seq: 1 }, &room, member("alice"), None);
    // A second tab on this node: no event.
    let tab = Outbox::new(1 << 20);
    app.subscribe(SocketId { node: 1, seq: 2 }, &tab, &room, member("alice"))
        .unwrap();
    assert!(events(&watcher).is_empty());
    // Node 2 dies: alice is still here on node 1, so nobody hears member_removed.
    assert_eq!(app.forget_node(2).len(), 1);
    assert!(events(&watcher).is_empty());
    assert_eq!(app.channel_info(&room).user_count, Some(2));
    // Her last tab leaves.
    app.unsubscribe(SocketId { node: 1, seq: 2 }, &room);
    assert_eq!(events(&watcher), ["pusher_internal:member_removed alice"]);
}

#[test]
fn replace_node_applies_only_the_difference() {
    let node = node();
    let app = node.app_by_id("1").unwrap();
    let room = ChannelName::parse("presence-room", 200).unwrap();
    let watcher = Outbox::new(1 << 20);
    app.subscribe(
        SocketId { node: 1, seq: 1 },
        &watcher,
        &room,
        member("watcher"),
    )
    .unwrap();
    events(&watcher);
    let before = LocalState {
        subscriptions: vec![entry(&room, 2, 1, "alice"), entry(&room, 2, 2, "bob")],
        signed_in: vec![],
    };
    app.replace_node(2, &before);
    assert_eq!(
        events(&watcher),
        [
            "pusher_internal:member_added alice",
            "pusher_internal:member_added bob"
        ]
    );
    // A resync after an outage: bob left meanwhile, carol came; alice must not flap.
    let after = LocalState {
        subscriptions: vec![entry(&room, 2, 1, "alice"), entry(&room, 2, 3, "carol")],
        signed_in: vec![],
    };
    let removed = app.replace_node(2, &after);
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].user, Some(UserId("bob".into())));
    let mut got = events(&watcher);
    got.sort();
    assert_eq!(
        got,
        [
            "pusher_internal:member_added carol",
            "pusher_internal:member_removed bob"
        ]
    );
    // Entries claiming another node's sockets are that node's business only.
    app.replace_node(3, &LocalState::default());
    assert_eq!(app.channel_info(&room).subscription_count, 3);
}

#[test]
fn remote_sign_ins_drive_the_watchlist() {
    let node = node();
    let app = node.app_by_id("1").unwrap();
    let alice = UserId("alice".into());
    let watcher = Outbox::new(1 << 20);
    let (online, offline) = app.watch(
        SocketId { node: 1, seq: 1 },
        &watcher,
        std::slice::from_ref(&alice),
    );
    assert_eq!((online.len(), offline.len()), (0, 1));
    app.remote_sign_in(SocketId { node: 2, seq: 7 }, &alice);
    app.remote_sign_in(SocketId { node: 3, seq: 7 }, &alice);
    app.remote_sign_out(SocketId { node: 2, seq: 7 }, &alice);
    assert!(app.is_online(&alice));
    app.forget_node(3);
    assert!(!app.is_online(&alice));
    let (batch, _) = watcher.take();
    assert_eq!(batch.len(), 2, "one online, one offline");
}
