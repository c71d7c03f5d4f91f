//! The Redis transport, on one server and in cluster mode, against a real `redis-server` (started per test on a free port): the
//! bus as Redis Streams (order, resuming after a position, shards, gaps) and kept values.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use herald_cluster::{BusItem, Kept, Outgoing, Position, Subscription, Transport};
use herald_redis::RedisBus;

const WAIT: Duration = Duration::from_secs(5);

/// A `redis-server` child process on a free port, killed on drop.
struct RedisServer {
    port: u16,
    _child: tokio::process::Child,
}

impl RedisServer {
    async fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        let server = RedisServer {
            port,
            _child: child,
        };
        let client = redis::Client::open(server.url()).unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while client.get_multiplexed_async_connection().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

fn transports(redis: &RedisServer) -> [Box<dyn Transport>; 2] {
    [
        Box::new(RedisBus::new(&redis.url(), "t", false).unwrap()),
        Box::new(RedisBus::new(&redis.url(), "t", true).unwrap()),
    ]
}

fn message(text: &str) -> Outgoing {
    Outgoing {
        shard: 0,
        message: Bytes::from(text.to_owned()),
        keep: None,
    }
}

async fn next(sub: &mut Subscription) -> BusItem {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("timed out reading the bus")
        .expect("the read ended")
}

fn entry(position: Position, text: &str) -> BusItem {
    BusItem::Entry(position, Bytes::from(text.to_owned()))
}

#[tokio::test]
async fn the_bus_reaches_every_reader_in_order_and_a_reader_resumes_where_it_stopped() {
    let redis = RedisServer::start().await;
    for transport in transports(&redis) {
        let mut first = transport.subscribe(0, None).await.unwrap();
        let mut second = transport.subscribe(0, None).await.unwrap();
        let positions = transport
            .publish(&[message("1"), message("2"), message("3")])
            .await
            .unwrap();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions grow");
        for sub in [&mut first, &mut second] {
            for (position, want) in positions.iter().zip(["1", "2", "3"]) {
                assert_eq!(next(sub).await, entry(*position, want), "{transport:?}");
            }
        }
        // A reader that stopped after "1" gets "2" and "3" from the log.
        let mut resumed = transport.subscribe(0, Some(positions[0])).await.unwrap();
        assert_eq!(next(&mut resumed).await, entry(positions[1], "2"));
        assert_eq!(next(&mut resumed).await, entry(positions[2], "3"));
    }
}

#[tokio::test]
async fn shards_are_separate_logs() {
    let redis = RedisServer::start().await;
    for transport in transports(&redis) {
        let mut zero = transport.subscribe(0, None).await.unwrap();
        let mut one = transport.subscribe(1, None).await.unwrap();
        let mut on_one = message("b");
        on_one.shard = 1;
        transport.publish(&[message("a"), on_one]).await.unwrap();
        assert!(matches!(next(&mut zero).await, BusItem::Entry(_, m) if m == "a"));
        assert!(matches!(next(&mut one).await, BusItem::Entry(_, m) if m == "b"));
    }
}

#[tokio::test]
async fn a_reader_behind_the_trimmed_log_hears_of_the_gap() {
    let redis = RedisServer::start().await;
    let transport = RedisBus::new(&redis.url(), "gap", false).unwrap();
    let first = transport.publish(&[message("first")]).await.unwrap()[0];
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let second = transport.publish(&[message("second")]).await.unwrap()[0];
    let _: i64 = redis::cmd("XTRIM")
        .arg("gap:bus")
        .arg("MAXLEN")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    transport.publish(&[message("third")]).await.unwrap();
    // A reader that had read "second" misses nothing.
    let mut sub = transport.subscribe(0, Some(second)).await.unwrap();
    assert!(matches!(next(&mut sub).await, BusItem::Entry(_, m) if m == "third"));
    // One that stopped at "first", trimmed away, may have missed something.
    let mut sub = transport.subscribe(0, Some(first)).await.unwrap();
    assert_eq!(next(&mut sub).await, BusItem::Gap, "`first` is gone");
    assert!(matches!(next(&mut sub).await, BusItem::Entry(_, m) if m == "second"));
}

#[tokio::test]
async fn kept_values_replace_each_other_and_expired_ones_are_deleted() {
    let redis = RedisServer::start().await;
    let now = herald_cluster::wire::now_ms();
    for transport in transports(&redis) {
        let keep = |key: &str, value: &str, expires_ms: u64| Outgoing {
            shard: 0,
            message: Bytes::from_static(b"x"),
            keep: Some(Kept {
                key: key.to_owned(),
                value: Bytes::from(format!(r#"{{"v":"{value}","expires_ms":{expires_ms}}}"#)),
                expires_ms,
            }),
        };
        transport
            .publish(&[
                keep("a", "1", now + 60_000),
                keep("a", "2", now + 60_000),
                keep("old", "x", now - 1),
            ])
            .await
            .unwrap();
        let kept = transport.kept().await.unwrap();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(kept[0].0, "a");
        assert!(kept[0].1.starts_with(br#"{"v":"2""#));
    }
    // The expired field is gone from Redis, not only filtered.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for hash in ["t:cache", "{t}:cache"] {
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(hash)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(fields, ["a"], "{hash}");
    }
}

#[tokio::test]
async fn a_subscription_ends_when_redis_goes_away() {
    let redis = RedisServer::start().await;
    let [pubsub, sharded] = transports(&redis);
    let mut subs = [
        pubsub.subscribe(0, None).await.unwrap(),
        sharded.subscribe(0, None).await.unwrap(),
    ];
    drop(redis);
    for sub in &mut subs {
        let end = tokio::time::timeout(WAIT, sub.next()).await;
        assert_eq!(end.expect("the stream ends"), None);
    }
}
