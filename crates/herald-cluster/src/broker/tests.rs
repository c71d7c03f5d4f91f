//! The broker over an in-process hub: acknowledged announcements, catching up at start, and
//! replication, garbage and node loss between two nodes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::{
    Announcement, App, Broker, Envelope, Node, NodeLimits, Outbox, PresenceMember,
    SubscriptionEntry,
};
use herald_protocol::{ChannelName, SocketId, UserId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ClusterBroker, ClusterSettings, Hooks, ShardBy};
use crate::memory::MemoryHub;
use crate::transport::{BusItem, Outgoing, Transport};

const WAIT: Duration = Duration::from_secs(5);

struct TestNode {
    node: Arc<Node>,
    broker: ClusterBroker<crate::MemoryTransport>,
}

fn start(hub: &MemoryHub, id: u64, tracker: &TaskTracker, stop: &CancellationToken) -> TestNode {
    let node = Arc::new(Node::new(id, vec![App::demo()], NodeLimits::default()));
    let settings = ClusterSettings {
        heartbeat_interval: Duration::from_millis(50),
        node_timeout: Duration::from_millis(500),
        queue_capacity: 1024,
        shards: 2,
        shard_by: ShardBy::Channel,
    };
    let broker = ClusterBroker::start(
        node.clone(),
        settings,
        hub.transport(),
        tracker,
        stop.clone(),
        Hooks::default(),
    );
    TestNode { node, broker }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn frames(outbox: &Outbox) -> Vec<String> {
    outbox
        .take()
        .0
        .iter()
        .map(|f| String::from_utf8_lossy(f.text()).into_owned())
        .collect()
}

/// `announced` resolves only once what was announced before it is on the log (a drain
/// sends its 4200 after that).
#[tokio::test]
async fn announced_waits_until_earlier_announcements_are_on_the_log() {
    use futures_util::FutureExt;
    use herald_core::history::{Departure, Identity, Position};

    let (hub, tracker, stop) = (
        MemoryHub::new(),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    let a = start(&hub, 1, &tracker, &stop);
    until("subscribed", || a.broker.is_connected()).await;
    let transport = hub.transport();
    let mut readers = Vec::new();
    for shard in 0..2 {
        readers.push(
            transport
                .subscribe(shard, Some(Position::START))
                .await
                .unwrap(),
        );
    }
    let on_log = |readers: &mut Vec<crate::Subscription>| {
        let mut entries = Vec::new();
        for reader in readers.iter_mut() {
            while let Some(Some(BusItem::Entry(_, message))) = reader.next().now_or_never() {
                entries.push(String::from_utf8_lossy(&message).into_owned());
            }
        }
        entries
    };
    // A barrier alone resolves too.
    tokio::time::timeout(WAIT, a.broker.announced())
        .await
        .unwrap();
    a.broker.announce(Announcement::Departed {
        app_id: "1".into(),
        channel: ChannelName::parse("news", 200).unwrap(),
        identities: vec![Identity::User(UserId("departing-user".into()))],
        departure: Departure {
            after: Position { ms: 1, seq: 0 },
            socket: SocketId { node: 1, seq: 7 },
            left_ms: 1,
        },
    });
    a.broker.announced().await;
    let entries = on_log(&mut readers);
    assert!(
        entries.iter().any(|e| e.contains("departing-user")),
        "the departure is on the log when announced() resolves: {entries:?}"
    );
    stop.cancel();
    tracker.close();
    tokio::time::timeout(WAIT, tracker.wait()).await.unwrap();
}

/// A starting node reports caught up only once it has read the log back to its start: a
/// departure announced before it started is known to it by then, so a client drained from
/// another node and sent here by a balancer that follows `/ready` resumes.
#[tokio::test]
async fn a_starting_node_is_caught_up_once_it_read_what_the_log_held_before_it() {
    use herald_core::history::{Departure, Identity, Position};

    let (hub, tracker, stop) = (
        MemoryHub::new(),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    let a = start(&hub, 1, &tracker, &stop);
    until("A caught up", || a.broker.is_caught_up()).await;
    let channel = ChannelName::parse("news", 200).unwrap();
    let identities = vec![Identity::User(UserId("drained-user".into()))];
    a.broker.announce(Announcement::Departed {
        app_id: "1".into(),
        channel: channel.clone(),
        identities: identities.clone(),
        departure: Departure {
            after: Position { ms: 1, seq: 0 },
            socket: SocketId { node: 1, seq: 7 },
            left_ms: 1,
        },
    });
    tokio::time::timeout(WAIT, a.broker.announced())
        .await
        .unwrap();

    let b = start(&hub, 2, &tracker, &stop);
    // Nothing has run yet on this (single-threaded) runtime: B has read nothing.
    assert!(!b.broker.is_caught_up());
    assert!(!b.broker.caught_up());
    until("B caught up", || b.broker.is_caught_up()).await;
    let app_b = b.node.app_by_id("1").unwrap();
    let resume = app_b.take_resume(&identities, &channel);
    assert_eq!(
        resume.map(|r| r.old_socket),
        Some(SocketId { node: 1, seq: 7 })
    );

    stop.cancel();
    tracker.close();
    tokio::time::timeout(WAIT, tracker.wait()).await.unwrap();
}

#[tokio::test]
async fn state_events_garbage_and_node_loss_over_a_hub() {
    let (hub, tracker) = (MemoryHub::new(), TaskTracker::new());
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let a = start(&hub, 1, &tracker, &stop_a);
    let b = start(&hub, 2, &tracker, &stop_b);
    until("both subscribed", || {
        a.broker.is_connected() && b.broker.is_connected()
    })
    .await;
    let channel = ChannelName::parse("presence-room", 200).unwrap();
    let (app_a, app_b) = (
        a.node.app_by_id("1").unwrap().clone(),
        b.node.app_by_id("1").unwrap().clone(),
    );

    // B's member is replicated to A.
    let outbox = Outbox::new(1 << 20);
    let socket = SocketId { node: 2, seq: 1 };
    let alice = UserId("alice".into());
    let member = PresenceMember {
        user_id: alice.clone(),
        user_info: None,
    };
    app_b
        .subscribe(socket, &outbox, &channel, Some(member))
        .unwrap();
    b.broker.announce(Announcement::Subscribed {
        app_id: "1".into(),
        entry: SubscriptionEntry {
            channel: channel.clone(),
            socket,
            user: Some(alice),
            user_info: None,
            cookie: None,
        },
    });
    until("A replicates B's member", || {
        app_a.channel_info(&channel).user_count == Some(1)
    })
    .await;
    frames(&outbox);

    // Garbage is dropped and counted; A's event still reaches B's socket, once.
    let garbage = Outgoing {
        shard: 0,
        message: Bytes::from_static(b"{\"t\":\"nonsense\"}"),
        keep: None,
    };
    hub.transport().publish(&[garbage]).await.unwrap();
    let frame = herald_protocol::server_message::channel_event("e", "presence-room", "hi");
    let delivery = a.broker.publish(Envelope {
        app_id: "1".into(),
        channel: channel.clone(),
        frame: herald_core::Frame::new(frame.clone()),
        except: None,
        cache: None,
        durability: herald_core::Durability::Logged,
    });
    assert_eq!(delivery.delivered, 0, "nobody is on A");
    let mut got = Vec::new();
    until("B delivers A's event", || {
        got.extend(frames(&outbox));
        !got.is_empty()
    })
    .await;
    assert_eq!(got, [frame]);
    assert_eq!(b.broker.stats().dropped_invalid.load(Ordering::Relaxed), 1);

    // B goes silent: A declares it dead once and forgets its member.
    stop_b.cancel();
    until("A reaps B", || {
        app_a.channel_info(&channel).user_count == Some(0)
    })
    .await;
    assert_eq!(a.broker.stats().nodes_reaped.load(Ordering::Relaxed), 1);
    stop_a.cancel();
    tracker.close();
    tokio::time::timeout(WAIT, tracker.wait()).await.unwrap();
}
