//! Property test of the cluster bus decoder, black-box: arbitrary bytes and hostile
//! bus-message-shaped JSON published straight onto a node's bus channel in a real Redis. The node
//! never stops reading the bus: after each batch, an event published on another node reaches a
//! canary client of the fuzzed node, and a canary client of its own still gets local publishes.
//!
//! Black-box on purpose: the decoder (`wire.rs`) is private to the cluster code, whatever crate
//! holds it, so this tests what a hostile Redis peer can reach. Cases: `PROPTEST_CASES`.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

use crate::cluster::RedisServer;
use crate::support::*;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value for a bus field: plausible (so validation, not only JSON decoding, is exercised) or
/// anything at all.
fn field(plausible: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![4 => plausible, 1 => json_value()].boxed()
}

fn bus_message() -> impl Strategy<Value = Value> {
    let node = field(
        prop::sample::select(vec![1u64, 2, 3, u64::MAX])
            .prop_map(Value::from)
            .boxed(),
    );
    let app = field(
        prop::sample::select(vec!["1", "2", ""])
            .prop_map(Value::from)
            .boxed(),
    );
    let channel = field(
        "(presence-|private-|cache-|#server-to-user-)?[a-z]{0,8}[^a-z]?"
            .prop_map(Value::String)
            .boxed(),
    );
    let socket = field(
        "[0-9]{1,3}\\.[0-9]{1,3}|.{0,6}"
            .prop_map(Value::String)
            .boxed(),
    );
    let user = field(".{0,8}".prop_map(Value::String).boxed());
    let frame = field(
        prop_oneof![json_value().prop_map(|v| v.to_string()), ".{0,32}",]
            .prop_map(Value::String)
            .boxed(),
    );
    let tag = prop_oneof![
        prop::sample::select(vec![
            "event",
            "subscribed",
            "unsubscribed",
            "signed_in",
            "signed_out",
            "terminate",
            "heartbeat",
            "state",
            "sync_request",
        ])
        .prop_map(Value::from),
        json_value(),
    ];
    let state = field(
        (
            prop::collection::vec(
                (socket.clone(), socket.clone(), json_value(), json_value()),
                0..6,
            ),
            prop::collection::vec((socket.clone(), user.clone()), 0..4),
        )
            .prop_map(|(subscriptions, signed_in)| {
                json!({"subscriptions": subscriptions.into_iter().map(|(c, s, u, i)| json!([c, s, u, i])).collect::<Vec<_>>(),
                       "signed_in": signed_in.into_iter().map(|(s, u)| json!([s, u])).collect::<Vec<_>>()})
            })
            .boxed(),
    );
    (
        tag,
        prop::collection::vec(
            prop_oneof![
                node.prop_map(|v| ("node", v)),
                app.prop_map(|v| ("app", v)),
                channel.prop_map(|v| ("channel", v)),
                socket.prop_map(|v| ("socket", v)),
                user.prop_map(|v| ("user", v)),
                frame.prop_map(|v| ("frame", v)),
                state.prop_map(|v| ("state", v)),
                json_value().prop_map(|v| ("except", v)),
                json_value().prop_map(|v| ("cache", v)),
                json_value().prop_map(|v| ("info", v)),
                json_value().prop_map(|v| ("target", v)),
                json_value().prop_map(|v| ("connections", v)),
            ],
            0..9,
        ),
    )
        .prop_map(|(tag, fields)| {
            let mut message = serde_json::Map::new();
            message.insert("t".into(), tag);
            for (name, value) in fields {
                message.insert(name.into(), value);
            }
            Value::Object(message)
        })
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        ".{0,128}".prop_map(String::into_bytes),
        bus_message().prop_map(|m| m.to_string().into_bytes()),
        bus_message().prop_map(|m| m.to_string().into_bytes()),
        bus_message().prop_map(|m| m.to_string().into_bytes()),
        (1usize..20_000).prop_map(|n| format!(
            r#"{{"t":"state","node":1,"state":{}"#,
            "[".repeat(n)
        )
        .into_bytes()),
    ]
}

#[test]
fn hostile_bus_messages_never_stop_a_node() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let prefix = format!("fuzz-{}", rand::random::<u32>());
    let (_redis, conn, a, b, remote_canary, local_canary) = rt.block_on(async {
        let redis = RedisServer::start().await;
        let node = |prefix: String| {
            let url = redis.url();
            TestServer::start(move |c| {
                c.redis_url = Some(url);
                c.cluster.prefix = prefix;
                c.cluster.heartbeat_interval = Duration::from_millis(200);
                c.cluster.node_timeout = Duration::from_secs(2);
            })
        };
        let a = node(prefix.clone()).await;
        let b = node(prefix.clone()).await;
        let mut remote_canary = b.client().await;
        remote_canary.subscribe("canary").await;
        let mut local_canary = b.client().await;
        local_canary.subscribe("local-canary").await;
        // A subscription on b reaches a through the bus: both are connected.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, info) = a
                .api(
                    "GET",
                    "/apps/1/channels/canary",
                    &[("info", "subscription_count")],
                    None,
                )
                .await;
            if info["subscription_count"] == 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the nodes never met"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = redis::Client::open(redis.url()).unwrap();
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        (redis, conn, a, b, remote_canary, local_canary)
    });
    let bus = format!("{prefix}:bus");
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        // Each case is a batch: an eighth of the usual count keeps the run short.
        cases: (Config::default().cases / 8).max(8),
        ..Config::default()
    });
    // The runner takes `Fn`; what each case changes sits behind a lock.
    let state = tokio::sync::Mutex::new((0u64, conn, remote_canary, local_canary));
    let result = runner.run(&prop::collection::vec(payload(), 1..16), |batch| {
        rt.block_on(async {
            let mut state = state.lock().await;
            let (round, conn, remote_canary, local_canary) = &mut *state;
            *round += 1;
            let data = format!("round-{round}");
            for message in &batch {
                let _: String = redis::cmd("XADD")
                    .arg(&bus)
                    .arg("*")
                    .arg("m")
                    .arg(message.as_slice())
                    .query_async(conn)
                    .await
                    .unwrap();
            }
            // Published after the batch on the same bus: b reads it after the batch.
            a.trigger("canary", "after-batch", &data).await;
            let frame = remote_canary.expect("after-batch").await;
            prop_assert_eq!(&frame["data"], &json!(data));
            b.trigger("local-canary", "local", &data).await;
            let frame = local_canary.expect("local").await;
            prop_assert_eq!(&frame["data"], &json!(data));
            Ok(())
        })
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}
