//! Continuity over real sockets: one order per channel, and replay after a drain (4200) for a
//! client recognised by its presence identity, its sign-in, or its resume cookie.

use std::time::Duration;

use herald_core::{CloseRequest, DisconnectReason};
use herald_protocol::CloseCode;
use serde_json::{json, Value};

use crate::support::{data, Closed, TestClient, TestServer, WAIT};

/// Closes every socket of the server with 4200, as a drain does, and waits until each client saw
/// its close and the server let go of every connection.
async fn drain_sockets(server: &TestServer, clients: Vec<TestClient>) {
    for outbox in server.shared.node().outboxes() {
        outbox.close(CloseRequest {
            code: CloseCode::ReconnectImmediately,
            message: "Server is shutting down; reconnect",
            reason: DisconnectReason::Drain,
        });
    }
    for mut client in clients {
        assert_eq!(client.expect_close().await, Closed::Code(4200));
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.shared.node().connection_count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never let go of the drained sockets"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `data` of the next frames, which must be `event` on `channel` (presence member changes
/// in between are skipped).
async fn expect_events(
    client: &mut TestClient,
    channel: &str,
    event: &str,
    n: usize,
) -> Vec<String> {
    let mut res = Vec::new();
    while res.len() < n {
        let frame = client.next().await;
        if frame["event"]
            .as_str()
            .is_some_and(|e| e.starts_with("pusher_internal:member_"))
        {
            continue;
        }
        assert_eq!(
            (frame["event"].as_str(), frame["channel"].as_str()),
            (Some(event), Some(channel)),
            "unexpected frame {frame}"
        );
        res.push(frame["data"].as_str().unwrap_or_default().to_owned());
    }
    res
}

#[tokio::test]
async fn a_drained_presence_member_gets_what_it_missed_exactly_once_in_order() {
    let server = TestServer::default().await;
    let mut alice = server.client().await;
    alice.subscribe_presence("presence-room", "alice").await;
    server.trigger("presence-room", "msg", "1").await;
    assert_eq!(
        expect_events(&mut alice, "presence-room", "msg", 1).await,
        ["1"]
    );

    drain_sockets(&server, vec![alice]).await;
    server.trigger("presence-room", "msg", "2").await;
    server.trigger("presence-room", "msg", "3").await;

    let mut again = server.client().await;
    let ok = again.subscribe_presence("presence-room", "alice").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(
        expect_events(&mut again, "presence-room", "msg", 2).await,
        ["2", "3"],
        "the missed events right after subscription_succeeded"
    );
    server.trigger("presence-room", "msg", "4").await;
    assert_eq!(
        expect_events(&mut again, "presence-room", "msg", 1).await,
        ["4"]
    );
    again.expect_nothing_more().await;
    let metrics = crate::metrics::scrape(&server).await;
    let app = [("app_id", "1")];
    assert_eq!(metrics.value("herald_events_replayed_total", &app), 2.0);
    let replayed = [("app_id", "1"), ("result", "replayed")];
    assert_eq!(metrics.value("herald_resumes_total", &replayed), 1.0);

    // A second socket of the same user later gets no replay: the departure was taken once.
    let mut other = server.client().await;
    other.subscribe_presence("presence-room", "alice").await;
    other.expect_nothing_more().await;
}

#[tokio::test]
async fn a_signed_in_client_resumes_its_channels() {
    let server = TestServer::default().await;
    let user = json!({"id": "bob"});
    let mut bob = server.client().await;
    assert_eq!(bob.sign_in(&user).await["event"], "pusher:signin_success");
    bob.subscribe("news").await;
    drain_sockets(&server, vec![bob]).await;
    server.trigger("news", "headline", "a").await;

    let mut again = server.client().await;
    again.sign_in(&user).await;
    again.subscribe("news").await;
    assert_eq!(
        expect_events(&mut again, "news", "headline", 1).await,
        ["a"]
    );
    again.expect_nothing_more().await;

    // An anonymous client on the same channel is not recognised: no replay.
    let mut anonymous = server.client().await;
    anonymous.subscribe("news").await;
    anonymous.expect_nothing_more().await;
}

#[tokio::test]
async fn a_client_back_after_the_window_hears_resume_failed() {
    let server = TestServer::start(|c| c.apps[0].history_seconds = 1).await;
    let mut alice = server.client().await;
    alice.subscribe_presence("presence-room", "alice").await;
    drain_sockets(&server, vec![alice]).await;
    server.trigger("presence-room", "msg", "lost").await;
    // The behaviour under test is the passing of the window itself.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let mut again = server.client().await;
    again.subscribe_presence("presence-room", "alice").await;
    let failed = again.expect_next("herald:resume_failed").await;
    assert_eq!(failed["channel"], "presence-room");
    assert_eq!(data(&failed), json!({"reason": "window_passed"}));
    again.expect_nothing_more().await;
}

#[tokio::test]
async fn a_client_that_missed_more_than_the_history_hears_resume_failed_then_gets_the_rest() {
    let server = TestServer::start(|c| c.apps[0].history_events = 3).await;
    let mut alice = server.client().await;
    alice.subscribe_presence("presence-room", "alice").await;
    drain_sockets(&server, vec![alice]).await;
    for n in 0..5 {
        server.trigger("presence-room", "msg", &n.to_string()).await;
    }
    let mut again = server.client().await;
    again.subscribe_presence("presence-room", "alice").await;
    let failed = again.expect_next("herald:resume_failed").await;
    assert_eq!(data(&failed), json!({"reason": "history_trimmed"}));
    assert_eq!(
        expect_events(&mut again, "presence-room", "msg", 3).await,
        ["2", "3", "4"],
        "after the notice, every event still kept, in order"
    );
    again.expect_nothing_more().await;
    let metrics = crate::metrics::scrape(&server).await;
    let trimmed = [("app_id", "1"), ("result", "history_trimmed")];
    assert_eq!(metrics.value("herald_resumes_total", &trimmed), 1.0);
    let app = [("app_id", "1")];
    assert_eq!(metrics.value("herald_events_replayed_total", &app), 3.0);
}

#[tokio::test]
async fn concurrent_publishes_reach_every_subscriber_in_one_order() {
    let server = TestServer::default().await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut client = server.client().await;
        client.subscribe("chat").await;
        clients.push(client);
    }
    let (publishers, per_publisher) = (8, 25);
    let server = std::sync::Arc::new(server);
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let server = server.clone();
            tokio::spawn(async move {
                for n in 0..per_publisher {
                    server.trigger("chat", "line", &format!("{p}-{n}")).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut orders: Vec<Vec<String>> = Vec::new();
    for client in &mut clients {
        orders.push(expect_events(client, "chat", "line", publishers * per_publisher).await);
    }
    for order in &orders[1..] {
        assert_eq!(order, &orders[0], "every subscriber sees one order");
    }
    // Each publisher's own events stay in the order it published them.
    for p in 0..publishers {
        let mine: Vec<&String> = orders[0]
            .iter()
            .filter(|d| d.starts_with(&format!("{p}-")))
            .collect();
        let expected: Vec<String> = (0..per_publisher).map(|n| format!("{p}-{n}")).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn client_events_are_not_replayed() {
    let server = TestServer::default().await;
    let mut alice = server.client().await;
    alice.subscribe_presence("presence-room", "alice").await;
    let mut carol = server.client().await;
    carol.subscribe_presence("presence-room", "carol").await;
    alice.expect("pusher_internal:member_added").await;
    drain_sockets(&server, vec![alice, carol]).await;

    let mut carol = server.client().await;
    carol.subscribe_presence("presence-room", "carol").await;
    carol
        .send(json!({"event": "client-typing", "channel": "presence-room", "data": {}}))
        .await;
    server.trigger("presence-room", "msg", "kept").await;
    let mut alice = server.client().await;
    alice.subscribe_presence("presence-room", "alice").await;
    let frame: Value = alice.next().await;
    assert_eq!(frame["event"], "msg", "only the logged event: {frame}");
}

/// A `redis-server` that keeps its data across a kill (append-only file, fsync on every write),
/// as a production Redis with persistence does.
struct PersistentRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<tokio::process::Child>,
}

impl PersistentRedis {
    async fn start() -> PersistentRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("herald-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = PersistentRedis {
            port,
            dir,
            child: None,
        };
        redis.restart().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

impl Drop for PersistentRedis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls until every node counts `n` subscriptions on `channel` (replication is asynchronous).
async fn until_subscribed(nodes: &[TestServer], channel: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for node in nodes {
        loop {
            let path = format!("/apps/1/channels/{channel}");
            let (_, body) = node
                .api("GET", &path, &[("info", "subscription_count")], None)
                .await;
            if body["subscription_count"] == n {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never {n} subscriptions: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Redis is killed and restarted while events are published one after another through every
/// node: every event that got a 200 reaches every subscriber on every node exactly once and in
/// publish order; the others got a 503 with `Retry-After`.
#[tokio::test]
async fn redis_killed_while_publishing_through_every_node_loses_no_accepted_event() {
    let mut redis = PersistentRedis::start().await;
    let prefix = format!("kill-{}", rand::random::<u32>());
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let (url, prefix) = (redis.url(), prefix.clone());
        nodes.push(
            TestServer::start(move |c| {
                c.redis_url = Some(url);
                c.cluster.prefix = prefix;
                c.cluster.heartbeat_interval = Duration::from_millis(200);
                c.cluster.node_timeout = Duration::from_secs(5);
            })
            .await,
        );
    }
    let mut clients = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            let mut client = node.client().await;
            client.subscribe("feed").await;
            clients.push(client);
        }
    }
    until_subscribed(&nodes, "feed", 6).await;

    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut n = 0;
    while n < 100 {
        let (status, _) = publish(&nodes[n % 3], n).await;
        assert_eq!(status, 200);
        accepted.push(n);
        n += 1;
    }
    redis.kill().await;
    let outage = tokio::time::Instant::now();
    while outage.elapsed() < Duration::from_secs(2) {
        let (status, retry_after) = publish(&nodes[n % 3], n).await;
        match status {
            200 => accepted.push(n),
            503 => {
                assert_eq!(retry_after.as_deref(), Some("1"));
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis.restart().await;
    let back = tokio::time::Instant::now();
    let end = n + 100;
    while n < end {
        let (status, _) = publish(&nodes[n % 3], n).await;
        match status {
            200 => accepted.push(n),
            503 => {
                refused += 1;
                assert!(
                    back.elapsed() < Duration::from_secs(5),
                    "publishes refused for too long"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => panic!("unexpected status {other}"),
        }
        n += 1;
    }
    assert!(refused > 0, "the outage was noticed");
    let last = accepted.last().copied().unwrap().to_string();
    for client in &mut clients {
        let mut got = Vec::new();
        loop {
            let frame = client.next().await;
            if frame["event"] != "e" {
                continue;
            }
            let data = frame["data"].as_str().unwrap().to_owned();
            let done = data == last;
            got.push(data.parse::<usize>().unwrap());
            if done {
                break;
            }
        }
        assert_eq!(got, accepted, "every accepted event, once, in order");
    }
}

async fn publish(node: &TestServer, n: usize) -> (u16, Option<String>) {
    let body = json!({"name": "e", "channel": "feed", "data": n.to_string()});
    node.publish(&body).await
}

async fn browser(server: &TestServer, cookie: Option<&str>) -> (TestClient, Option<String>) {
    let url = server.ws_url("/app/app-key?protocol=7&client=js&version=8.4.0&flash=false");
    crate::support::browser(&url, cookie).await
}

#[tokio::test]
async fn a_drained_browser_resumes_a_public_channel_with_its_cookie() {
    let server = TestServer::default().await;
    let (mut tab, cookie) = browser(&server, None).await;
    let cookie = cookie.expect("a browser gets a resume cookie");
    tab.subscribe("news").await;
    server.trigger("news", "headline", "seen").await;
    assert_eq!(
        expect_events(&mut tab, "news", "headline", 1).await,
        ["seen"]
    );
    drain_sockets(&server, vec![tab]).await;
    server.trigger("news", "headline", "missed").await;

    let (mut again, renewed) = browser(&server, Some(&cookie)).await;
    assert_eq!(
        renewed.as_deref(),
        Some(cookie.as_str()),
        "same token, renewed"
    );
    again.subscribe("news").await;
    assert_eq!(
        expect_events(&mut again, "news", "headline", 1).await,
        ["missed"]
    );
    again.expect_nothing_more().await;

    // A forged cookie is not recognised; the app can turn cookies off.
    let (mut stranger, _) = browser(&server, Some("herald_resume_app-key=0.0")).await;
    stranger.subscribe("news").await;
    stranger.expect_nothing_more().await;
    let off = TestServer::start(|c| c.apps[0].resume_cookie = false).await;
    assert_eq!(browser(&off, None).await.1, None);
}

#[tokio::test]
async fn a_client_that_closes_on_purpose_gets_no_replay() {
    let server = TestServer::default().await;
    let mut alice = server.client().await;
    alice.subscribe_presence("presence-room", "alice").await;
    alice.ws.close(None).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.shared.node().connection_count() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "never closed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.trigger("presence-room", "msg", "after").await;
    let mut again = server.client().await;
    again.subscribe_presence("presence-room", "alice").await;
    again.expect_nothing_more().await;
}

/// A rolling restart's path: a presence member drained from one node resubscribes on another
/// node and gets what it missed there, from that node's copy of the channel's log; and a node
/// started after the events were published reads them back from the cluster's log.
#[tokio::test]
async fn a_member_drained_from_one_node_resumes_on_another() {
    let redis = PersistentRedis::start().await;
    let prefix = format!("roll-{}", rand::random::<u32>());
    let start = |redis: &PersistentRedis| {
        let (url, prefix) = (redis.url(), prefix.clone());
        TestServer::start(move |c| {
            c.redis_url = Some(url);
            c.cluster.prefix = prefix;
            c.cluster.heartbeat_interval = Duration::from_millis(200);
            c.cluster.node_timeout = Duration::from_secs(5);
        })
    };
    let (a, b) = (start(&redis).await, start(&redis).await);
    let mut alice = a.client().await;
    alice.subscribe_presence("presence-room", "alice").await;
    let mut bob = b.client().await;
    bob.subscribe_presence("presence-room", "bob").await;
    alice.expect("pusher_internal:member_added").await;
    b.trigger("presence-room", "msg", "1").await;
    assert_eq!(
        expect_events(&mut alice, "presence-room", "msg", 1).await,
        ["1"]
    );
    assert_eq!(
        expect_events(&mut bob, "presence-room", "msg", 1).await,
        ["1"]
    );

    drain_sockets(&a, vec![alice]).await;
    b.trigger("presence-room", "msg", "2").await;
    a.trigger("presence-room", "msg", "3").await;
    assert_eq!(
        expect_events(&mut bob, "presence-room", "msg", 2).await,
        ["2", "3"]
    );

    // Alice comes back through the balancer, on B: her departure travelled the bus.
    let mut again = b.client().await;
    again.subscribe_presence("presence-room", "alice").await;
    assert_eq!(
        expect_events(&mut again, "presence-room", "msg", 2).await,
        ["2", "3"]
    );
    again.expect_nothing_more().await;
    // The departure was taken once in the whole cluster: once A knows of the new socket (the
    // bus carries the resume before the subscription), another socket of alice's on A gets no
    // replay.
    until_subscribed(std::slice::from_ref(&a), "presence-room", 2).await;
    let mut other = a.client().await;
    other.subscribe_presence("presence-room", "alice").await;
    other.expect_nothing_more().await;
    other.ws.close(None).await.unwrap();

    // A node that starts now has the channel's recent events from the log: a member drained
    // from B that lands on it resumes too.
    drain_sockets(&b, vec![again, bob]).await;
    a.trigger("presence-room", "msg", "4").await;
    let c = start(&redis).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut late = loop {
        // The new node reads the log back before it knows the departure: retry until it does.
        let mut late = c.client().await;
        late.subscribe_presence("presence-room", "bob").await;
        late.send(json!({"event": "pusher:ping", "data": {}})).await;
        let frame = late.next().await;
        if frame["event"] == "msg" {
            assert_eq!(frame["data"], "4");
            late.expect_next("pusher:pong").await;
            break late;
        }
        assert_eq!(frame["event"], "pusher:pong", "{frame}");
        assert!(tokio::time::Instant::now() < deadline, "never resumed");
        late.ws.close(None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    late.expect_nothing_more().await;
}

/// pusher-js reconnects the moment it reads the 4200, before the close handshake is over, and
/// through a balancer it lands on another node: that node must already know where the drained
/// socket stopped. The client here never answers the close frame, so a departure recorded only
/// after the close handshake would come seconds too late.
#[tokio::test]
async fn a_drained_client_that_reconnects_at_once_elsewhere_resumes() {
    let hub = herald_cluster::MemoryHub::new();
    let start = |hub: &herald_cluster::MemoryHub| {
        let hub = hub.clone();
        TestServer::start(move |c| {
            c.cluster.hub = Some(hub);
            c.cluster.heartbeat_interval = Duration::from_millis(200);
        })
    };
    let (a, b) = (start(&hub).await, start(&hub).await);
    let mut alice = a.client().await;
    alice.subscribe_presence("presence-room", "alice").await;
    b.trigger("presence-room", "msg", "1").await;
    assert_eq!(
        expect_events(&mut alice, "presence-room", "msg", 1).await,
        ["1"]
    );
    for outbox in a.shared.node().outboxes() {
        outbox.close(CloseRequest {
            code: CloseCode::ReconnectImmediately,
            message: "Server is shutting down; reconnect",
            reason: DisconnectReason::Drain,
        });
    }
    // Read the 4200 and leave the close unanswered (the old socket stays half-closed).
    assert_eq!(alice.expect_close().await, Closed::Code(4200));
    b.trigger("presence-room", "msg", "2").await;
    let mut again = b.client().await;
    again.subscribe_presence("presence-room", "alice").await;
    assert_eq!(
        expect_events(&mut again, "presence-room", "msg", 1).await,
        ["2"]
    );
    again.expect_nothing_more().await;
    drop(alice);
}

/// The bus lost data (an outage that loses everything, as a Redis restart without persistence):
/// every subscriber hears `herald:resume_failed` with `log_lost`, then live events flow again.
#[tokio::test]
async fn subscribers_hear_when_the_cluster_log_lost_events() {
    let hub = herald_cluster::MemoryHub::new();
    let start = |hub: &herald_cluster::MemoryHub| {
        let hub = hub.clone();
        TestServer::start(move |c| {
            c.cluster.hub = Some(hub);
            c.cluster.heartbeat_interval = Duration::from_millis(200);
        })
    };
    let (a, b) = (start(&hub).await, start(&hub).await);
    let mut on_b = b.client().await;
    on_b.subscribe("news").await;
    a.trigger("news", "e", "before").await;
    assert_eq!(expect_events(&mut on_b, "news", "e", 1).await, ["before"]);
    hub.stop();
    hub.start();
    let failed = on_b.expect_next("herald:resume_failed").await;
    assert_eq!(data(&failed), json!({"reason": "log_lost"}));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = a
            .publish(&json!({"name": "e", "channel": "news", "data": "after"}))
            .await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never accepted again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(expect_events(&mut on_b, "news", "e", 1).await, ["after"]);
}

/// A connection lost without a close (the TCP connection just ends): the client never answered a
/// ping, so nothing it received is confirmed: it resumes from its subscription, at least once.
#[tokio::test]
async fn a_lost_connection_resumes_at_least_once() {
    let server = TestServer::default().await;
    let mut alice = server.client().await;
    alice.subscribe_presence("presence-room", "alice").await;
    server.trigger("presence-room", "msg", "1").await;
    assert_eq!(
        expect_events(&mut alice, "presence-room", "msg", 1).await,
        ["1"]
    );
    drop(alice);
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.shared.node().connection_count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the loss was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.trigger("presence-room", "msg", "2").await;
    let mut again = server.client().await;
    again.subscribe_presence("presence-room", "alice").await;
    assert_eq!(
        expect_events(&mut again, "presence-room", "msg", 2).await,
        ["1", "2"],
        "the unconfirmed event again, then the missed one"
    );
    again.expect_nothing_more().await;
}
