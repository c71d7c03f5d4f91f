//! Several nodes as one cluster. Each scenario runs over every transport (`over_every_engine!`):
//! an in-process memory hub, and `RedisBus` on one server and in cluster mode (`sharded`) (a real
//! `redis-server` started per test on a free port); a few tests need a real process or a Redis
//! Cluster.

use std::process::Stdio;
use std::time::Duration;

use herald_cluster::{MemoryHub, Outgoing, Transport};
use serde_json::{json, Value};

use crate::support::*;

/// A `redis-server` child process on a free port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<tokio::process::Child>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = RedisServer { port, child: None };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, with no data.
    pub async fn restart(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
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

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Appends a raw payload to the bus stream `stream`, as a node does.
    pub async fn append(&self, stream: &str, payload: &str) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: String = redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("m")
            .arg(payload)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// The engine carrying the bus between the nodes of a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Memory,
    /// `RedisBus` on one server.
    Redis,
    /// `RedisBus` in cluster mode (`cluster.sharded`), on a standalone Redis 7.
    RedisSharded,
}

/// Runs each scenario once per engine, as `scenario::memory`, `scenario::redis` and
/// `scenario::redis_sharded`.
macro_rules! over_every_engine {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::Engine;

            #[tokio::test]
            async fn memory() {
                super::$scenario(Engine::Memory).await;
            }

            #[tokio::test]
            async fn redis() {
                super::$scenario(Engine::Redis).await;
            }

            #[tokio::test]
            async fn redis_sharded() {
                super::$scenario(Engine::RedisSharded).await;
            }
        }
    )*};
}

over_every_engine!(
    broadcasts_reach_every_node_once_with_socket_exclusion,
    presence_is_cluster_wide_with_first_and_last_connection_semantics,
    client_events_and_terminate_cross_nodes,
    garbage_on_the_bus_is_dropped_and_counted,
    bus_restart_with_data_gone_resumes_broadcasts_and_presence,
    stopped_node_members_are_removed_within_the_timeout_exactly_once,
    app_connection_quota_is_cluster_wide,
    cache_channels_reach_nodes_that_start_later,
);

/// The bus of one test's nodes.
pub struct Bus {
    engine: Engine,
    hub: MemoryHub,
    redis: Option<RedisServer>,
}

impl Bus {
    pub async fn start(engine: Engine) -> Bus {
        let redis = match engine {
            Engine::Memory => None,
            Engine::Redis | Engine::RedisSharded => Some(RedisServer::start().await),
        };
        Bus {
            engine,
            hub: MemoryHub::new(),
            redis,
        }
    }

    /// Puts a node on this bus, with short heartbeats.
    pub fn configure(&self) -> impl FnOnce(&mut herald_server::Config) + 'static {
        let hub = self.hub.clone();
        let engine = self.engine;
        let url = self.redis.as_ref().map(RedisServer::url);
        move |c| {
            match engine {
                Engine::Memory => c.cluster.hub = Some(hub),
                Engine::Redis => c.redis_url = url,
                Engine::RedisSharded => {
                    c.redis_url = url;
                    c.cluster.sharded = true;
                }
            }
            c.cluster.heartbeat_interval = Duration::from_millis(200);
            c.cluster.node_timeout = Duration::from_secs(2);
        }
    }

    pub async fn node(&self) -> TestServer {
        TestServer::start(self.configure()).await
    }

    /// An outage that loses everything the engine held.
    pub async fn stop(&mut self) {
        match &mut self.redis {
            Some(redis) => redis.stop().await,
            None => self.hub.stop(),
        }
    }

    pub async fn restart(&mut self) {
        match &mut self.redis {
            Some(redis) => redis.restart().await,
            None => self.hub.start(),
        }
    }

    /// Puts raw bytes on the bus, as a hostile or broken peer would.
    pub async fn inject(&self, payload: &str) {
        match (self.engine, &self.redis) {
            (Engine::Redis, Some(redis)) => redis.append("herald:bus", payload).await,
            (Engine::RedisSharded, Some(redis)) => {
                redis.append("{herald}:bus", payload).await;
            }
            _ => {
                let message = Outgoing {
                    shard: 0,
                    message: payload.to_owned().into(),
                    keep: None,
                };
                self.hub.transport().publish(&[message]).await.unwrap();
            }
        }
    }
}

/// Polls a channel's info on `server` until `check` holds (replication is asynchronous).
async fn until_channel(
    server: &TestServer,
    channel: &str,
    info: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let path = format!("/apps/1/channels/{channel}");
        let (_, body) = server.api("GET", &path, &[("info", info)], None).await;
        if check(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never held; last answer {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn broadcasts_reach_every_node_once_with_socket_exclusion(engine: Engine) {
    let bus = Bus::start(engine).await;
    let (a, b) = (bus.node().await, bus.node().await);
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let mut also_b = b.client().await;
    on_a.subscribe("news").await;
    on_b.subscribe("news").await;
    also_b.subscribe("news").await;
    until_channel(&a, "news", "subscription_count", |v| {
        v["subscription_count"] == 3
    })
    .await;
    until_channel(&b, "news", "subscription_count", |v| {
        v["subscription_count"] == 3
    })
    .await;

    let body =
        json!({"name": "e", "channel": "news", "data": "hello", "socket_id": also_b.socket_id});
    assert_eq!(
        a.api("POST", "/apps/1/events", &[], Some(&body)).await.0,
        200
    );
    assert_eq!(on_a.expect_next("e").await["data"], "hello");
    assert_eq!(on_b.expect_next("e").await["data"], "hello");
    on_a.expect_nothing_more().await;
    on_b.expect_nothing_more().await;
    also_b.expect_nothing_more().await;
}

async fn presence_is_cluster_wide_with_first_and_last_connection_semantics(engine: Engine) {
    let bus = Bus::start(engine).await;
    let (a, b) = (bus.node().await, bus.node().await);
    let mut watcher = b.client().await;
    watcher.subscribe_presence("presence-room", "watcher").await;
    until_channel(&a, "presence-room", "user_count", |v| v["user_count"] == 1).await;

    let mut alice_a = a.client().await;
    let snapshot = alice_a.subscribe_presence("presence-room", "alice").await;
    assert_eq!(
        data(&snapshot)["presence"]["count"],
        2,
        "the snapshot includes the other node's member"
    );
    assert_eq!(
        data(&watcher.expect_next("pusher_internal:member_added").await)["user_id"],
        "alice"
    );

    let mut alice_b = b.client().await;
    alice_b.subscribe_presence("presence-room", "alice").await;
    until_channel(&a, "presence-room", "subscription_count", |v| {
        v["subscription_count"] == 3
    })
    .await;
    watcher.expect_nothing_more().await;

    // Alice leaves node A but is still on node B: nobody hears member_removed.
    drop(alice_a);
    until_channel(&b, "presence-room", "subscription_count", |v| {
        v["subscription_count"] == 2
    })
    .await;
    watcher.expect_nothing_more().await;
    let (_, users) = a
        .api("GET", "/apps/1/channels/presence-room/users", &[], None)
        .await;
    assert_eq!(users["users"].as_array().unwrap().len(), 2, "{users}");

    drop(alice_b);
    assert_eq!(
        data(&watcher.expect_next("pusher_internal:member_removed").await)["user_id"],
        "alice"
    );
    until_channel(&a, "presence-room", "user_count", |v| v["user_count"] == 1).await;
}

async fn client_events_and_terminate_cross_nodes(engine: Engine) {
    let bus = Bus::start(engine).await;
    let (a, b) = (bus.node().await, bus.node().await);
    let mut alice = a.client().await;
    let mut bob = b.client().await;
    alice.subscribe_private("private-chat").await;
    bob.subscribe_private("private-chat").await;
    bob.sign_in(&json!({"id": "bob"})).await;
    until_channel(&a, "private-chat", "subscription_count", |v| {
        v["subscription_count"] == 2
    })
    .await;
    alice
        .send(json!({"event": "client-hi", "channel": "private-chat", "data": {"x": 1}}))
        .await;
    assert_eq!(bob.expect_next("client-hi").await["data"], json!({"x": 1}));
    alice.expect_nothing_more().await;

    let (status, _) = a
        .api(
            "POST",
            "/apps/1/users/bob/terminate_connections",
            &[],
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(bob.expect_close().await, Closed::Code(4009));
}

async fn garbage_on_the_bus_is_dropped_and_counted(engine: Engine) {
    let bus = Bus::start(engine).await;
    let (a, b) = (bus.node().await, bus.node().await);
    let mut on_b = b.client().await;
    on_b.subscribe("news").await;
    until_channel(&a, "news", "subscription_count", |v| {
        v["subscription_count"] == 1
    })
    .await;
    let invalid = [("reason", "invalid")];
    let before = crate::metrics::scrape(&b)
        .await
        .value("herald_broker_dropped_total", &invalid);
    for garbage in [
        "not json",
        r#"{"t":"event","node":1,"app":"1","channel":"news","frame":"<script>","except":null,"cache":null}"#,
        r#"{"t":"subscribed","node":1,"app":"1","channel":"news","socket":"2.5","user":null,"info":null}"#,
        r#"{"t":"event","node":1,"app":"nope","channel":"news","frame":"{}","except":null,"cache":null}"#,
    ] {
        bus.inject(garbage).await;
    }
    a.trigger("news", "after", "ok").await;
    assert_eq!(on_b.expect_next("after").await["data"], "ok");
    on_b.expect_nothing_more().await;
    // Each of the four is refused by this node, and counted by it.
    let after = crate::metrics::scrape(&b)
        .await
        .value("herald_broker_dropped_total", &invalid);
    assert_eq!(after - before, 4.0);
}

async fn bus_restart_with_data_gone_resumes_broadcasts_and_presence(engine: Engine) {
    let mut bus = Bus::start(engine).await;
    let (a, b) = (bus.node().await, bus.node().await);
    let mut alice = a.client().await;
    alice.subscribe_presence("presence-room", "alice").await;
    until_channel(&b, "presence-room", "user_count", |v| v["user_count"] == 1).await;
    let mut bob = b.client().await;
    let snapshot = bob.subscribe_presence("presence-room", "bob").await;
    assert_eq!(data(&snapshot)["presence"]["count"], 2);
    alice.expect_next("pusher_internal:member_added").await;

    bus.stop().await;
    // Without the log a publish is refused, never answered 200 and lost.
    let body = json!({"name": "local", "channel": "presence-room", "data": "1"});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer) = a.api("POST", "/apps/1/events", &[], Some(&body)).await;
        if status == 503 {
            assert!(answer["error"].is_string(), "{answer}");
            break;
        }
        // Published before the outage was noticed: it is on the log, and delivered.
        assert_eq!(status, 200, "{answer}");
        assert!(tokio::time::Instant::now() < deadline, "never refused");
    }

    bus.restart().await;
    // Cross-node broadcasts resume: retry until one published on A reaches B. The subscribers
    // are told the log lost data (`herald:resume_failed`), which `expect` skips.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = a
            .api(
                "POST",
                "/apps/1/events",
                &[],
                Some(&json!({"name": "probe", "channel": "presence-room", "data": "x"})),
            )
            .await;
        if status != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "publishes were never accepted again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        alice.expect("probe").await;
        let got = tokio::time::timeout(Duration::from_millis(300), bob.expect("probe")).await;
        if got.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broadcasts did not resume"
        );
    }
    // Presence is whole again on both nodes, and nobody saw members flap.
    until_channel(&b, "presence-room", "user_count", |v| v["user_count"] == 2).await;
    until_channel(&a, "presence-room", "user_count", |v| v["user_count"] == 2).await;
    drop(bob);
    assert_eq!(
        data(&alice.expect("pusher_internal:member_removed").await)["user_id"],
        "bob"
    );
}

/// A node whose cluster tasks stop (frozen, or cut off from the bus for good) is declared dead
/// by the others, which remove its members once.
async fn stopped_node_members_are_removed_within_the_timeout_exactly_once(engine: Engine) {
    let bus = Bus::start(engine).await;
    let survivor = bus.node().await;
    let mut watcher = survivor.client().await;
    watcher.subscribe_presence("presence-room", "watcher").await;

    let victim = bus.node().await;
    let mut alice = victim.client().await;
    alice.subscribe_presence("presence-room", "alice").await;
    assert_eq!(
        data(&watcher.expect_next("pusher_internal:member_added").await)["user_id"],
        "alice"
    );

    victim.shared.stop_background();
    let stopped = tokio::time::Instant::now();
    let removed = tokio::time::timeout(
        Duration::from_secs(10),
        watcher.expect_next("pusher_internal:member_removed"),
    )
    .await
    .expect("member_removed within 10 s");
    assert_eq!(data(&removed)["user_id"], "alice");
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "not before the timeout"
    );
    watcher.expect_nothing_more().await;
    let (_, users) = survivor
        .api("GET", "/apps/1/channels/presence-room/users", &[], None)
        .await;
    assert_eq!(users, json!({"users": [{"id": "watcher"}]}));
    let stats = survivor.shared.broker_stats().unwrap();
    assert_eq!(
        stats
            .nodes_reaped
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// An app's connection quota counts every node's connections (from the heartbeats).
async fn app_connection_quota_is_cluster_wide(engine: Engine) {
    let bus = Bus::start(engine).await;
    let quota = |configure: Box<dyn FnOnce(&mut herald_server::Config)>| {
        move |c: &mut herald_server::Config| {
            configure(c);
            c.apps[0].max_connections = 2;
        }
    };
    let a = TestServer::start(quota(Box::new(bus.configure()))).await;
    let b = TestServer::start(quota(Box::new(bus.configure()))).await;
    let _on_a = a.client().await;
    let on_b = b.client().await;
    // A learns of B's connection from B's heartbeat: retry until A is full.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = a.raw("/app/app-key?protocol=7").await;
        let frame = client.next().await;
        if frame["event"] == "pusher:error" {
            assert_eq!(frame["data"]["code"], 4004, "{frame}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the quota never counted the other node"
        );
        drop(client);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(on_b);
    // B's heartbeat frees the slot on A.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = a.raw("/app/app-key?protocol=7").await;
        if client.next().await["event"] == "pusher:connection_established" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cache channel's last event is kept on the bus's engine for nodes that start later.
async fn cache_channels_reach_nodes_that_start_later(engine: Engine) {
    let bus = Bus::start(engine).await;
    let a = bus.node().await;
    a.trigger("cache-x", "last", "42").await;
    let c = bus.node().await;
    let mut late = c.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        late.subscribe("cache-x").await;
        let next = late.next().await;
        if next["event"] == "last" {
            assert_eq!(next["data"], "42");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the late node never served the cached event"
        );
        late.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "cache-x"}}))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn node(redis: &RedisServer) -> TestServer {
    let url = redis.url();
    TestServer::start(move |c| {
        c.redis_url = Some(url);
        c.cluster.heartbeat_interval = Duration::from_millis(200);
        c.cluster.node_timeout = Duration::from_secs(2);
    })
    .await
}

#[tokio::test]
async fn killed_node_members_are_removed_within_the_timeout_exactly_once() {
    let redis = RedisServer::start().await;
    let survivor = node(&redis).await;
    let mut watcher = survivor.client().await;
    watcher.subscribe_presence("presence-room", "watcher").await;

    let mut victim = Process::start(
        "[cluster]\nheartbeat_interval = \"200ms\"\nnode_timeout = \"2s\"\n",
        &["--redis-url", &redis.url()],
    )
    .await;
    let mut alice = victim.client().await;
    alice.subscribe_presence("presence-room", "alice").await;
    assert_eq!(
        data(&watcher.expect_next("pusher_internal:member_added").await)["user_id"],
        "alice"
    );

    victim.kill().await;
    let killed = tokio::time::Instant::now();
    let removed = tokio::time::timeout(
        Duration::from_secs(10),
        watcher.expect_next("pusher_internal:member_removed"),
    )
    .await
    .expect("member_removed within 10 s");
    assert_eq!(data(&removed)["user_id"], "alice");
    assert!(killed.elapsed() < Duration::from_secs(10));
    watcher.expect_nothing_more().await;
    let (_, users) = survivor
        .api("GET", "/apps/1/channels/presence-room/users", &[], None)
        .await;
    assert_eq!(users, json!({"users": [{"id": "watcher"}]}));
}

/// How a client comes back in [`a_client_of_a_killed_node_resumes_on_another_at_least_once`].
#[derive(Clone, Copy, Debug)]
enum Identified {
    /// A presence member (`user_id`).
    Presence,
    /// A browser on a public channel, known by its resume cookie (replicated with its
    /// subscriptions).
    Cookie,
}

/// A killed node leaves no departures. Its client, back on another node (pusher-js reconnects a
/// second after an abnormal close) with the same identity, resumes from shortly before the node
/// went silent: at least once, nothing missed, in order, before newer events.
async fn killed_node_client_resumes(how: Identified) {
    let redis = RedisServer::start().await;
    let survivor = node(&redis).await;
    let mut victim = Process::start(
        "[cluster]\nheartbeat_interval = \"200ms\"\nnode_timeout = \"2s\"\n",
        &["--redis-url", &redis.url()],
    )
    .await;
    let path = "/app/app-key?protocol=7&client=js&version=8.4.0&flash=false";
    let channel = match how {
        Identified::Presence => "presence-room",
        Identified::Cookie => "news",
    };
    let (mut old, cookie) = match how {
        Identified::Presence => {
            let mut client = victim.client().await;
            client.subscribe_presence(channel, "alice").await;
            (client, None)
        }
        Identified::Cookie => {
            let (mut tab, cookie) = browser(&format!("ws://{}{path}", victim.addr), None).await;
            tab.subscribe(channel).await;
            (tab, cookie)
        }
    };
    until_channel(&survivor, channel, "subscription_count", |b| {
        b["subscription_count"] == 1
    })
    .await;
    survivor.trigger(channel, "msg", "1").await;
    assert_eq!(data(&old.expect_next("msg").await), 1);
    let victim_node: u64 = old.socket_id.split('.').next().unwrap().parse().unwrap();

    victim.kill().await;
    survivor.trigger(channel, "msg", "2").await;
    survivor.trigger(channel, "msg", "3").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !survivor
        .shared
        .broker()
        .silent_nodes()
        .iter()
        .any(|(n, _)| *n == victim_node)
    {
        assert!(tokio::time::Instant::now() < deadline, "never silent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut again = match how {
        Identified::Presence => {
            let mut client = survivor.client().await;
            let ok = client.subscribe_presence(channel, "alice").await;
            assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
            client
        }
        Identified::Cookie => {
            let url = survivor.ws_url(path);
            let (mut tab, _) = browser(&url, cookie.as_deref()).await;
            tab.subscribe(channel).await;
            tab
        }
    };
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("3") {
        got.push(data(&again.expect_next("msg").await).to_string());
    }
    assert!(
        got == ["2", "3"] || got == ["1", "2", "3"],
        "{how:?}: the missed events, in order (the one before at most once more): {got:?}"
    );
    survivor.trigger(channel, "msg", "4").await;
    assert_eq!(data(&again.expect_next("msg").await), 4);
}

#[tokio::test]
async fn a_presence_member_of_a_killed_node_resumes_on_another_at_least_once() {
    killed_node_client_resumes(Identified::Presence).await;
}

#[tokio::test]
async fn a_browser_of_a_killed_node_resumes_on_another_with_its_cookie() {
    killed_node_client_resumes(Identified::Cookie).await;
}

/// A webhook test's node: on `redis_url`, quick heartbeats, webhooks to `hook` with a short
/// leave delay.
fn hooked(redis_url: String, hook: String) -> impl FnOnce(&mut herald_server::Config) {
    move |c| {
        c.redis_url = Some(redis_url);
        c.cluster.heartbeat_interval = Duration::from_millis(200);
        c.cluster.node_timeout = Duration::from_secs(2);
        c.webhook_url = Some(hook);
        c.webhooks.leave_delay = Duration::from_millis(300);
    }
}

/// The next `n` webhook events as "name user_id", sorted (they come from several nodes).
async fn next_events_sorted(receiver: &mut crate::webhooks::Receiver, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let event = receiver.next_event().await;
        seen.push(format!(
            "{} {}",
            event["name"].as_str().unwrap(),
            event["user_id"].as_str().unwrap_or("")
        ));
    }
    seen.sort();
    seen
}

#[tokio::test]
async fn webhooks_are_cluster_wide_and_a_killed_node_is_reported_once() {
    use crate::webhooks::Receiver;
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start(vec![]).await;
    // Two survivors: both notice the death, only one webhook may result.
    let a = TestServer::start(hooked(redis.url(), receiver.url())).await;
    let b = TestServer::start(hooked(redis.url(), receiver.url())).await;

    let config = format!(
        "webhook_url = \"{}\"\n[webhooks]\nleave_delay = \"300ms\"\n[cluster]\nheartbeat_interval = \"200ms\"\nnode_timeout = \"2s\"\n",
        receiver.url()
    );
    let mut victim = Process::start(&config, &["--redis-url", &redis.url()]).await;

    let mut bob = a.client().await;
    bob.subscribe_presence("presence-room", "bob").await;
    let mut alice = victim.client().await;
    alice.subscribe_presence("presence-room", "alice").await;
    until_channel(&b, "presence-room", "user_count", |v| v["user_count"] == 2).await;

    assert_eq!(
        next_events_sorted(&mut receiver, 3).await,
        [
            "channel_occupied ",
            "member_added alice",
            "member_added bob"
        ]
    );

    victim.kill().await;
    let removed = receiver.next_event().await;
    assert_eq!(
        removed,
        json!({"name": "member_removed", "channel": "presence-room", "user_id": "alice"})
    );
    receiver.expect_silence(Duration::from_secs(2)).await;

    drop(bob);
    let mut last = [receiver.next_event().await, receiver.next_event().await];
    last.sort_by_key(|e| e["name"].as_str().unwrap().to_owned());
    assert_eq!(
        last[0],
        json!({"name": "channel_vacated", "channel": "presence-room"})
    );
    assert_eq!(
        last[1],
        json!({"name": "member_removed", "channel": "presence-room", "user_id": "bob"})
    );
    receiver.expect_silence(Duration::from_secs(1)).await;
}

/// Redis restarted empty takes the webhook bookkeeping with the log: each node puts its own
/// subscriptions back when it reads the gap, so a member who joined before still gets its
/// `member_removed`, and a join after does not fire a second `channel_occupied`.
#[tokio::test]
async fn webhook_bookkeeping_is_restored_after_redis_restarts_empty() {
    use crate::webhooks::Receiver;
    let mut redis = RedisServer::start().await;
    let mut receiver = Receiver::start(vec![]).await;
    let a = TestServer::start(hooked(redis.url(), receiver.url())).await;
    let b = TestServer::start(hooked(redis.url(), receiver.url())).await;
    let mut alice = a.client().await;
    alice.subscribe_presence("presence-room", "alice").await;
    let mut bob = b.client().await;
    bob.subscribe_presence("presence-room", "bob").await;
    assert_eq!(
        next_events_sorted(&mut receiver, 3).await,
        [
            "channel_occupied ",
            "member_added alice",
            "member_added bob"
        ]
    );

    redis.stop().await;
    redis.restart().await;
    // Both nodes read the gap and put their member back.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*wh:occ:1:presence-room")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut size = 0;
        for key in keys {
            let n: usize = redis::cmd("SCARD")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            size += n;
        }
        if size == 2 {
            break;
        }
        let gaps = |s: &TestServer| {
            s.shared
                .broker_stats()
                .unwrap()
                .gaps_lost
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "occupancy never restored (size {size}, gaps {} {})",
            gaps(&a),
            gaps(&b)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let mut carol = b.client().await;
    carol.subscribe_presence("presence-room", "carol").await;
    assert_eq!(
        receiver.next_event().await,
        json!({"name": "member_added", "channel": "presence-room", "user_id": "carol"})
    );
    drop(alice);
    assert_eq!(
        receiver.next_event().await,
        json!({"name": "member_removed", "channel": "presence-room", "user_id": "alice"})
    );
    receiver.expect_silence(Duration::from_millis(500)).await;
    drop((bob, carol));
}

/// A free port whose cluster bus port (port + 10000) is free and in range too.
fn free_cluster_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port <= 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A three-master Redis Cluster on free ports, killed on drop.
struct RedisCluster {
    ports: Vec<u16>,
    _children: Vec<tokio::process::Child>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    async fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "herald-rc-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_cluster_port()).collect();
        let mut children = Vec::new();
        for port in &ports {
            let child = tokio::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                ])
                .current_dir(&dir)
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            children.push(child);
        }
        let cluster = RedisCluster {
            ports,
            _children: children,
            dir,
        };
        for port in &cluster.ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
            let deadline = tokio::time::Instant::now() + WAIT;
            while client.get_multiplexed_async_connection().await.is_err() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "redis-server did not start"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let status = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(status.success(), "redis-cli --cluster create failed");
        // Wait until every node agrees the cluster is up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        for port in &cluster.ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "cluster never became ok: {info}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        cluster
    }

    fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn redis_cluster_with_the_bus_sharded_over_hash_slots() {
    let cluster = RedisCluster::start().await;
    let sharded = |urls: String| {
        move |c: &mut herald_server::Config| {
            c.redis_url = Some(urls);
            c.cluster.sharded = true;
            c.cluster.shards = 3;
            c.cluster.shard_by = herald_cluster::ShardBy::Channel;
            c.cluster.heartbeat_interval = Duration::from_millis(200);
            c.cluster.node_timeout = Duration::from_secs(2);
        }
    };
    let a = TestServer::start(sharded(cluster.urls())).await;
    let b = TestServer::start(sharded(cluster.urls())).await;
    let mut watcher = b.client().await;
    watcher.subscribe_presence("presence-room", "watcher").await;
    until_channel(&a, "presence-room", "user_count", |v| v["user_count"] == 1).await;
    let mut alice = a.client().await;
    let snapshot = alice.subscribe_presence("presence-room", "alice").await;
    assert_eq!(data(&snapshot)["presence"]["count"], 2);
    assert_eq!(
        data(&watcher.expect_next("pusher_internal:member_added").await)["user_id"],
        "alice"
    );

    let body = json!({"name": "e", "channel": "presence-room", "data": "over the cluster", "socket_id": alice.socket_id});
    assert_eq!(
        a.api("POST", "/apps/1/events", &[], Some(&body)).await.0,
        200
    );
    assert_eq!(watcher.expect_next("e").await["data"], "over the cluster");
    alice.expect_nothing_more().await;

    // Cache channels are shared through the cluster too.
    a.trigger("cache-x", "last", "42").await;
    let c = TestServer::start(sharded(cluster.urls())).await;
    let mut late = c.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        late.subscribe("cache-x").await;
        let next = late.next().await;
        if next["event"] == "last" {
            assert_eq!(next["data"], "42");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the late node never served the cached event"
        );
        late.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "cache-x"}}))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The bus is three streams, each under its own hash tag (so on its own slot), all in use.
    for i in 0..12 {
        a.trigger(&format!("spread-{i}"), "x", "1").await;
    }
    for key in ["{herald}:bus", "{herald.1}:bus", "{herald.2}:bus"] {
        let mut entries = 0;
        for port in &cluster.ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            // Only the node owning the key's slot answers; the others redirect.
            if let Ok(n) = redis::cmd("XLEN")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
            {
                entries += n;
            }
        }
        assert!(entries > 0, "{key} carries part of the bus");
    }

    drop(alice);
    assert_eq!(
        data(&watcher.expect_next("pusher_internal:member_removed").await)["user_id"],
        "alice"
    );
}
