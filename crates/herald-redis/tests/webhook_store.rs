//! `RedisWebhookStore` against a real `redis-server` (started here on a free port): the same
//! decisions as the memory store, shared by two stores as two nodes share them, leases that
//! expire, and queue members that do not parse.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald_core::webhook_store::{now_ms, WebhookJob, WebhookStore};
use herald_redis::conn::Target;
use herald_redis::webhook_store::RedisWebhookStore;

struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    async fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Redis {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        }
    }

    fn store(&self, prefix: &str) -> RedisWebhookStore {
        RedisWebhookStore::new(Target::parse(&self.url, false).unwrap(), prefix)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn job(id: u64) -> WebhookJob {
    WebhookJob {
        id,
        app: "1".into(),
        targets: vec![0],
        events: vec![serde_json::json!({"name": "channel_occupied", "channel": "c"})],
        first_due_ms: 0,
        attempts: 0,
        pending_key: None,
    }
}

#[tokio::test]
async fn two_nodes_see_each_transition_once() {
    let redis = Redis::start().await;
    let (a, b) = (redis.store("t"), redis.store("t"));
    assert_eq!(a.add("occ", "1.1").await, Ok(Some(1)));
    assert_eq!(b.add("occ", "1.1").await, Ok(None));
    assert_eq!(b.add("occ", "2.1").await, Ok(Some(2)));
    assert_eq!(a.remove("occ", "2.1").await, Ok(Some(1)));
    assert_eq!(b.remove("occ", "2.1").await, Ok(None));
    assert_eq!(b.remove("occ", "1.1").await, Ok(Some(0)));

    assert_eq!(a.set_once("flag", Duration::from_secs(60)).await, Ok(true));
    assert_eq!(b.set_once("flag", Duration::from_secs(60)).await, Ok(false));
    assert_eq!(b.take("flag").await, Ok(true));
    assert_eq!(a.take("flag").await, Ok(false));

    // Another prefix is another cluster.
    let other = redis.store("other");
    assert_eq!(other.add("occ", "1.1").await, Ok(Some(1)));
}

#[tokio::test]
async fn due_jobs_are_claimed_once_and_come_back_when_the_lease_expires() {
    let redis = Redis::start().await;
    let (a, b) = (redis.store("q"), redis.store("q"));
    let now = now_ms();
    a.enqueue(&job(1), now).await.unwrap();
    a.enqueue(&job(2), now + 60_000).await.unwrap();
    assert_eq!(b.depth().await, Ok(2));
    let lease = Duration::from_millis(300);
    assert_eq!(a.claim(10, lease).await.unwrap(), vec![job(1)]);
    assert!(b.claim(10, lease).await.unwrap().is_empty(), "leased to a");
    // a "dies": after the lease, b gets the job.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let again = b.claim(10, lease).await.unwrap();
    assert_eq!(again, vec![job(1)]);
    b.complete(&again[0]).await.unwrap();
    assert_eq!(a.depth().await, Ok(1));
}

#[tokio::test]
async fn queue_members_that_do_not_parse_are_dropped() {
    let redis = Redis::start().await;
    let store = redis.store("bad");
    store.enqueue(&job(7), now_ms()).await.unwrap();
    let client = redis_client(&redis.url);
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("ZADD")
        .arg("bad:wh:queue")
        .arg(0)
        .arg("{not a job")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(store.depth().await, Ok(2));
    assert_eq!(
        store.claim(10, Duration::from_secs(5)).await.unwrap(),
        vec![job(7)]
    );
    assert_eq!(store.depth().await, Ok(1), "the garbage is gone");
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = RedisWebhookStore::new(
        Target::parse(&format!("redis://127.0.0.1:{port}"), false).unwrap(),
        "down",
    );
    let result = tokio::time::timeout(Duration::from_secs(10), store.add("s", "m"))
        .await
        .expect("bounded by the connection timeouts");
    assert!(result.is_err(), "{result:?}");
}

fn redis_client(url: &str) -> redis::Client {
    redis::Client::open(url).unwrap()
}
