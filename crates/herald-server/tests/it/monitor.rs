//! The live event stream (`Monitor`) over real sockets: what a watcher of an app sees on one
//! node and across a cluster, the cluster view (`Node::nodes`, `AppState::counts`), and the
//! stream's bound under a publish flood.

use std::collections::HashMap;
use std::time::Duration;

use herald_core::monitor::RECORDS_PER_SECOND;
use herald_core::{AppState, MonitorEvent, MonitorItem, MonitorRecord, MonitorWatch};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::cluster::{Bus, Engine};
use crate::support::*;

fn app(server: &TestServer) -> std::sync::Arc<AppState> {
    server.shared.node().app_by_id("1").expect("app 1")
}

/// The next record that `matches`, skipping others; panics after [`WAIT`].
async fn until_record(
    watch: &mut MonitorWatch,
    what: &str,
    mut matches: impl FnMut(&MonitorRecord) -> bool,
) -> MonitorRecord {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let item = tokio::time::timeout_at(deadline, watch.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("the stream ended");
        if let MonitorItem::Record(record) = item {
            if matches(&record) {
                return (*record).clone();
            }
        }
    }
}

/// Waits until `check` holds, polling every 20 ms; panics after [`WAIT`].
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_watcher_sees_connections_subscriptions_events_and_limits() {
    let server = TestServer::start(|c| c.apps[0].max_client_events_per_second = 1).await;
    let app = app(&server);
    assert!(!app.monitor().active(), "nobody watches yet");
    let mut watch = app.monitor().watch();
    assert!(app.monitor().active());

    let mut alice = server.client().await;
    let mut bob = server.client().await;
    let alice_id = alice.socket_id.clone();
    let bob_id = bob.socket_id.clone();
    until_record(&mut watch, "alice's connection", |r| {
        r.event
            == MonitorEvent::ConnectionOpened {
                socket_id: alice_id.clone(),
            }
    })
    .await;
    alice.subscribe_private("private-room").await;
    bob.subscribe_private("private-room").await;
    until_record(&mut watch, "bob's subscription", |r| {
        r.event
            == MonitorEvent::Subscribed {
                socket_id: bob_id.clone(),
                channel: "private-room".into(),
                user_id: None,
            }
    })
    .await;

    server.trigger("private-room", "greet", "hello").await;
    alice.expect("greet").await;
    bob.expect("greet").await;
    let published = until_record(&mut watch, "the publish", |r| {
        matches!(r.event, MonitorEvent::Published { .. })
    })
    .await;
    assert_eq!(
        published.event,
        MonitorEvent::Published {
            channel: "private-room".into(),
            event: "greet".into(),
            size: 5,
            excluded_socket_id: None,
            reached: 2,
        }
    );
    assert_eq!(published.node, server.shared.node().id().to_string());
    // The record is what the SSE stream sends: no event data, only its size.
    let json = serde_json::to_value(&published).unwrap();
    assert_eq!(json["type"], "published");
    assert!(!json.to_string().contains("hello"));

    alice
        .send(json!({"event": "client-typing", "channel": "private-room", "data": {"x": 1}}))
        .await;
    bob.expect("client-typing").await;
    let client_event = until_record(&mut watch, "the client event", |r| {
        matches!(r.event, MonitorEvent::ClientEvent { .. })
    })
    .await;
    assert_eq!(
        client_event.event,
        MonitorEvent::ClientEvent {
            socket_id: alice_id.clone(),
            channel: "private-room".into(),
            event: "client-typing".into(),
            size: r#"{"x":1}"#.len(),
        }
    );

    // Over the client-event rate (1 a second): refused with 4301, and seen as a limit hit.
    alice
        .send(json!({"event": "client-typing", "channel": "private-room", "data": {}}))
        .await;
    assert_eq!(alice.expect("pusher:error").await["data"]["code"], 4301);
    let limit = until_record(&mut watch, "the rate limit", |r| {
        matches!(r.event, MonitorEvent::LimitHit { .. })
    })
    .await;
    assert_eq!(
        limit.event,
        MonitorEvent::LimitHit {
            socket_id: Some(alice_id.clone()),
            limit: "client_events_per_second".into(),
            channel: None,
        }
    );

    alice
        .send(json!({"event": "pusher:unsubscribe", "data": {"channel": "private-room"}}))
        .await;
    until_record(&mut watch, "alice's unsubscription", |r| {
        r.event
            == MonitorEvent::Unsubscribed {
                socket_id: alice_id.clone(),
                channel: "private-room".into(),
            }
    })
    .await;

    alice
        .ws
        .close(Some(CloseFrame {
            code: CloseCode::Library(4321),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    let closed = until_record(&mut watch, "alice's close", |r| {
        matches!(&r.event, MonitorEvent::ConnectionClosed { socket_id, .. } if *socket_id == alice_id)
    })
    .await;
    assert_eq!(
        closed.event,
        MonitorEvent::ConnectionClosed {
            socket_id: alice_id.clone(),
            code: 4321,
            reason: "client_close".into(),
        }
    );

    // Bob is closed by the server: his channel is left, then the close with the server's code.
    server.shared.node().app_by_id("1").unwrap().close_all();
    until_record(&mut watch, "bob leaving his channel", |r| {
        r.event
            == MonitorEvent::Unsubscribed {
                socket_id: bob_id.clone(),
                channel: "private-room".into(),
            }
    })
    .await;
    let closed = until_record(&mut watch, "bob's close", |r| {
        matches!(&r.event, MonitorEvent::ConnectionClosed { socket_id, .. } if *socket_id == bob_id)
    })
    .await;
    assert!(
        matches!(
            closed.event,
            MonitorEvent::ConnectionClosed { code: 4003, .. }
        ),
        "{closed:?}"
    );

    // The last watcher leaves: the monitor is inactive again after the next upkeep.
    drop(watch);
    until("the monitor goes inactive", || !app.monitor().active()).await;
}

#[tokio::test]
async fn the_app_connection_quota_is_a_limit_hit() {
    let server = TestServer::start(|c| c.apps[0].max_connections = 1).await;
    let mut watch = app(&server).monitor().watch();
    let _first = server.client().await;
    let mut second = server
        .raw("/app/app-key?protocol=7&client=js&version=8.4.0")
        .await;
    assert_eq!(second.expect_close().await, Closed::Code(4004));
    let limit = until_record(&mut watch, "the quota", |r| {
        matches!(r.event, MonitorEvent::LimitHit { .. })
    })
    .await;
    assert_eq!(
        limit.event,
        MonitorEvent::LimitHit {
            socket_id: None,
            limit: "max_connections".into(),
            channel: None,
        }
    );
}

#[tokio::test]
async fn a_publish_flood_is_sampled_and_the_stream_stays_bounded() {
    let server = TestServer::default().await;
    let app = app(&server);
    let mut watch = app.monitor().watch();
    // 50 publishes to 100 channels each: 5,000 deliveries within a few seconds.
    let channels: Vec<String> = (0..100).map(|i| format!("flood-{i}")).collect();
    let publishes = 50;
    let total = publishes * channels.len() as u64;
    let reader = tokio::spawn(async move {
        // Published records per node and second, and what the Sampled records say was left out.
        let mut per_second: HashMap<u64, u64> = HashMap::new();
        let (mut published, mut dropped, mut missed) = (0u64, 0u64, 0u64);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while published + dropped + missed < total {
            let item = tokio::time::timeout_at(deadline, watch.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("stream incomplete: {published} published, {dropped} dropped, {missed} missed of {total}")
                })
                .expect("the stream ended");
            match item {
                MonitorItem::Record(record) => match record.event {
                    MonitorEvent::Published { .. } => {
                        published += 1;
                        *per_second.entry(record.time_ms / 1000).or_default() += 1;
                    }
                    MonitorEvent::Sampled { dropped: n } => dropped += n,
                    _ => {}
                },
                MonitorItem::Missed(n) => missed += n,
            }
        }
        (per_second, published, dropped, missed)
    });
    for _ in 0..publishes {
        let (status, body) = server
            .api(
                "POST",
                "/apps/1/events",
                &[],
                Some(&json!({"name": "tick", "channels": channels, "data": "x"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (per_second, published, dropped, missed) = reader.await.unwrap();
    assert!(
        dropped > 0,
        "a flood over the bound is sampled ({published} published)"
    );
    // Every delivery is shown or counted: sampled out on the node or, had this reader been
    // starved of CPU, missed by it (its bounded queue says so instead of growing).
    assert_eq!(published + dropped + missed, total);
    // Wall-clock seconds and the sampler's seconds are not aligned: allow two windows' worth.
    for (second, n) in per_second {
        assert!(
            n <= 2 * u64::from(RECORDS_PER_SECOND),
            "{n} records in second {second}"
        );
    }
}

async fn a_watcher_on_one_node_sees_the_whole_cluster(engine: Engine) {
    let bus = Bus::start(engine).await;
    let (one, two, three) = (bus.node().await, bus.node().await, bus.node().await);
    let ids: Vec<u64> = [&one, &two, &three]
        .iter()
        .map(|n| n.shared.node().id())
        .collect();
    let mut watch = app(&one).monitor().watch();
    until("nodes 2 and 3 hear that node 1 watches", || {
        app(&two).monitor().forwarding() && app(&three).monitor().forwarding()
    })
    .await;

    let mut on_two = two.client().await;
    let mut on_three = three.client().await;
    on_two.subscribe("news").await;
    on_three.subscribe("news").await;
    let mut subscribed: HashMap<String, String> = HashMap::new();
    while subscribed.len() < 2 {
        let record = until_record(&mut watch, "the remote subscriptions", |r| {
            matches!(r.event, MonitorEvent::Subscribed { .. })
        })
        .await;
        if let MonitorEvent::Subscribed { socket_id, .. } = record.event {
            subscribed.insert(socket_id, record.node);
        }
    }
    assert_eq!(
        subscribed,
        HashMap::from([
            (on_two.socket_id.clone(), ids[1].to_string()),
            (on_three.socket_id.clone(), ids[2].to_string())
        ])
    );
    until("node 1 replicates both subscriptions", || {
        app(&one).counts().occupied_channels == 1
            && app(&one)
                .channel_info(&herald_protocol::ChannelName::parse("news", 200).unwrap())
                .subscription_count
                == 2
    })
    .await;

    one.trigger("news", "headline", "hi").await;
    on_two.expect("headline").await;
    on_three.expect("headline").await;
    // Each node says how many of its own sockets the event reached.
    let mut reached: HashMap<String, usize> = HashMap::new();
    while reached.len() < 3 {
        let record = until_record(&mut watch, "a delivery on every node", |r| {
            matches!(r.event, MonitorEvent::Published { .. })
        })
        .await;
        if let MonitorEvent::Published { reached: n, .. } = record.event {
            reached.insert(record.node, n);
        }
    }
    assert_eq!(
        reached,
        HashMap::from([
            (ids[0].to_string(), 0),
            (ids[1].to_string(), 1),
            (ids[2].to_string(), 1)
        ])
    );

    // The cluster view: every node, its connections, and cluster-wide counts.
    until("node 1 knows every node's connections", || {
        let nodes = one.shared.node().nodes();
        nodes.len() == 3 && nodes.iter().filter(|n| n.connections == 1).count() == 2
    })
    .await;
    let nodes = one.shared.node().nodes();
    assert!(nodes[0].this_node && nodes[0].id == ids[0].to_string());
    for node in &nodes[1..] {
        assert!(!node.this_node);
        assert!(ids.iter().any(|id| id.to_string() == node.id));
        assert!(node.started_at_ms > 0 && node.last_seen_ms >= node.started_at_ms);
        assert_eq!(node.apps.get("1"), Some(&1));
    }
    until("counts are cluster-wide", || {
        let counts = app(&one).counts();
        counts.connections == 2
            && counts.messages_in_per_second > 0.0
            && counts.messages_out_per_second > 0.0
    })
    .await;

    // A forged record on the bus (another node's socket) is dropped and counted.
    let before = one
        .shared
        .broker_stats()
        .unwrap()
        .dropped_invalid
        .load(std::sync::atomic::Ordering::Relaxed);
    bus.inject(
        &json!({"t": "monitor", "node": 77, "app": "1", "records": [
            {"node": "77", "time_ms": 1, "type": "connection_opened", "socket_id": "78.1"}
        ]})
        .to_string(),
    )
    .await;
    until("the forged record is counted", || {
        one.shared
            .broker_stats()
            .unwrap()
            .dropped_invalid
            .load(std::sync::atomic::Ordering::Relaxed)
            > before
    })
    .await;

    // The watcher leaves: the other nodes stop forwarding within a few heartbeats.
    drop(watch);
    until("the other nodes stop forwarding", || {
        !app(&two).monitor().active() && !app(&three).monitor().active()
    })
    .await;
    drop(on_two);
    drop(on_three);
}

mod cluster {
    use super::Engine;

    #[tokio::test]
    async fn memory() {
        super::a_watcher_on_one_node_sees_the_whole_cluster(Engine::Memory).await;
    }

    #[tokio::test]
    async fn redis() {
        super::a_watcher_on_one_node_sees_the_whole_cluster(Engine::Redis).await;
    }
}

#[tokio::test]
async fn webhooks_sent_and_failed_are_seen_without_their_bodies() {
    let mut receiver = crate::webhooks::Receiver::start(vec![500]).await;
    let url = receiver.url();
    let server = TestServer::start(|c| {
        c.webhooks.retry_initial = Duration::from_millis(100);
        c.apps[0]
            .webhooks
            .push(herald_server::config::WebhookTarget {
                url,
                event_types: Vec::new(),
                channel_prefix: None,
                channel_suffix: None,
                headers: Default::default(),
            });
    })
    .await;
    let mut watch = app(&server).monitor().watch();
    let mut client = server.client().await;
    client.subscribe("room").await;
    assert_eq!(receiver.next_request().await["_status"], 500);
    let failed = until_record(&mut watch, "the failed webhook", |r| {
        matches!(r.event, MonitorEvent::Webhook { ok: false, .. })
    })
    .await;
    let MonitorEvent::Webhook { events, error, .. } = failed.event else {
        unreachable!()
    };
    assert!(
        events.contains(&"channel_occupied".to_owned()),
        "{events:?}"
    );
    assert_eq!(error.as_deref(), Some("status 500 Internal Server Error"));
    receiver.next_event().await;
    until_record(&mut watch, "the webhook sent on retry", |r| {
        matches!(&r.event, MonitorEvent::Webhook { ok: true, events, .. } if events.contains(&"channel_occupied".to_owned()))
    })
    .await;
}

#[tokio::test]
async fn a_slow_consumer_is_a_limit_hit_then_a_4100_close() {
    let server = TestServer::start(|c| {
        c.limits.outbox_max_bytes = 256 * 1024;
        c.limits.max_request_body_bytes = 1024 * 1024;
        c.apps[0].max_message_size = 512 * 1024;
        // Large events: few records fill the socket's buffers, far under the sampling bound.
        c.apps[0].history_events = 0;
    })
    .await;
    let mut watch = app(&server).monitor().watch();
    let mut stalled = server.client().await;
    let stalled_id = stalled.socket_id.clone();
    stalled.subscribe("firehose").await;
    // `stalled` never reads from here on.
    let payload = "x".repeat(256 * 1024);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.shared.node().connection_count() == 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled client was never closed"
        );
        server.trigger("firehose", "bulk", &payload).await;
    }
    let limit = until_record(&mut watch, "the slow consumer", |r| {
        matches!(r.event, MonitorEvent::LimitHit { .. })
    })
    .await;
    assert_eq!(
        limit.event,
        MonitorEvent::LimitHit {
            socket_id: Some(stalled_id.clone()),
            limit: "outbox_max_bytes".into(),
            channel: None,
        }
    );
    let closed = until_record(&mut watch, "the close", |r| {
        matches!(r.event, MonitorEvent::ConnectionClosed { .. })
    })
    .await;
    assert_eq!(
        closed.event,
        MonitorEvent::ConnectionClosed {
            socket_id: stalled_id,
            code: 4100,
            reason: "slow_consumer".into(),
        }
    );
}
