//! Both Redis transports against a real `redis-server` (started per test on a free port): the
//! bus, ordered logs (Redis Streams) and kept values.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use herald_cluster::{Kept, Outgoing, Position, Transport};
use herald_redis::{RedisPubSub, RedisSharded};

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
        Box::new(RedisPubSub::new(&redis.url(), "t").unwrap()),
        Box::new(RedisSharded::new(&redis.url(), "t").unwrap()),
    ]
}

fn message(text: &str) -> Outgoing {
    Outgoing {
        message: Bytes::from(text.to_owned()),
        keep: None,
    }
}

#[tokio::test]
async fn the_bus_reaches_every_subscriber_in_order() {
    let redis = RedisServer::start().await;
    for transport in transports(&redis) {
        let mut first = transport.subscribe().await.unwrap();
        let mut second = transport.subscribe().await.unwrap();
        transport
            .publish(&[message("1"), message("2"), message("3")])
            .await
            .unwrap();
        for sub in [&mut first, &mut second] {
            for want in ["1", "2", "3"] {
                let got = tokio::time::timeout(WAIT, sub.next()).await.unwrap();
                assert_eq!(got.unwrap(), want, "{transport:?}");
            }
        }
    }
}

#[tokio::test]
async fn logs_append_in_order_read_after_a_position_and_stay_bounded() {
    let redis = RedisServer::start().await;
    for (i, transport) in transports(&redis).into_iter().enumerate() {
        let log = format!("log-{i}");
        let mut positions = Vec::new();
        for n in 0..300u32 {
            let entry = Bytes::from(n.to_string());
            positions.push(transport.append(&log, entry, 100).await.unwrap());
        }
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions grow");
        let all = transport.read(&log, Position::START, 1000).await.unwrap();
        assert!(
            (100..300).contains(&all.len()),
            "trimmed to about 100: {}",
            all.len()
        );
        assert_eq!(all.last().unwrap().1, "299");
        let after = transport.read(&log, positions[297], 10).await.unwrap();
        assert_eq!(
            after,
            vec![
                (positions[298], Bytes::from("298")),
                (positions[299], Bytes::from("299"))
            ]
        );
        let two = transport.read(&log, positions[250], 2).await.unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].0, positions[251]);
        assert!(transport
            .read("never-written", Position::START, 10)
            .await
            .unwrap()
            .is_empty());
    }
}

#[tokio::test]
async fn kept_values_replace_each_other_and_expired_ones_are_deleted() {
    let redis = RedisServer::start().await;
    let now = herald_cluster::wire::now_ms();
    for transport in transports(&redis) {
        let keep = |key: &str, value: &str, expires_ms: u64| Outgoing {
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
        pubsub.subscribe().await.unwrap(),
        sharded.subscribe().await.unwrap(),
    ];
    drop(redis);
    for sub in &mut subs {
        let end = tokio::time::timeout(WAIT, sub.next()).await;
        assert_eq!(end.expect("the stream ends"), None);
    }
}
