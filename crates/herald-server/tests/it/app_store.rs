//! Apps kept in a database (`app_store.url`), against real Postgres and MariaDB servers started
//! per test (`databases.rs`): the tables are created on first start, changes reach every node
//! within 2 s (a WebSocket connects with a new key, a rotated secret refuses old signatures, a
//! disabled app's sockets close with 4003, a deleted app is gone), a database outage leaves the
//! known apps working while `/ready` stays 200 and says so, and a malformed row is skipped.

use std::time::{Duration, Instant};

use herald_core::{App, AppChange};
use herald_protocol::signature;
use serde_json::{json, Value};

use crate::databases::{Database, Kind};
use crate::support::*;

/// Every node must see a change within this long (the bound).
const PROPAGATION: Duration = Duration::from_secs(2);

async fn node(db: &Database) -> TestServer {
    let url = db.url();
    let server = TestServer::start(move |c| c.app_store.url = Some(url)).await;
    assert!(
        server.shared.apps().wait_loaded(WAIT).await,
        "the node loaded the database's apps"
    );
    server
}

fn app(id: &str) -> App {
    App::new(id, format!("key-{id}"), format!("secret-{id}"))
}

/// A change that writes `app` whatever the store holds.
fn replace(app: App) -> AppChange {
    Box::new(move |_| Ok(app))
}

/// The first frame of a socket for `key`: `Ok` with the client once established, `Err` with
/// the error frame when refused.
async fn try_connect(server: &TestServer, key: &str) -> Result<TestClient, Value> {
    let mut client = server
        .raw(&format!("/app/{key}?protocol=7&client=js&version=8.4.0"))
        .await;
    let frame = client.next().await;
    if frame["event"] == "pusher:connection_established" {
        client.socket_id = data(&frame)["socket_id"].as_str().unwrap().to_owned();
        Ok(client)
    } else {
        Err(frame)
    }
}

/// Polls `check` until it holds or `within` passed; returns how long it took.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A signed publish for `app` with `secret`; returns the status.
async fn publish(server: &TestServer, app: &App, secret: &str, channel: &str) -> u16 {
    let body = json!({"name": "ev", "channel": channel, "data": "hello"}).to_string();
    let path = format!("/apps/{}/events", app.id);
    let timestamp = now().to_string();
    let md5 = signature::body_md5(body.as_bytes());
    let params = [
        ("auth_key", app.key.as_str()),
        ("auth_timestamp", timestamp.as_str()),
        ("auth_version", "1.0"),
        ("body_md5", md5.as_str()),
    ];
    let string = signature::api_string_to_sign("POST", &path, params.iter().copied());
    let sig = signature::sign(secret, string.as_bytes());
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let uri = format!("{path}?{}&auth_signature={sig}", query.join("&"));
    server.send_http("POST", &uri, body).await.0
}

async fn ready(server: &TestServer) -> (u16, Value) {
    server.get("/ready").await
}

/// A series' value in `/metrics`.
async fn metric(server: &TestServer, series: &str) -> Option<f64> {
    let (_, body) = server.get("/metrics").await;
    let text = body.as_str().unwrap_or_default().to_owned();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Postgres => "postgres",
        Kind::MariaDb => "mysql",
    }
}

async fn tables_are_created_on_first_start_and_reused(kind: Kind) {
    let db = Database::start(kind).await;
    let first = node(&db).await;
    assert_eq!(
        db.scalar("SELECT version FROM herald_schema WHERE id = 1")
            .await,
        1
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM herald_apps").await, 0);
    let (status, body) = ready(&first).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["app_store"]["kind"], kind_label(kind), "{body}");
    assert_eq!(body["app_store"]["ok"], true, "{body}");
    // The configuration's demo app is not served: apps come from the database only.
    let refused = try_connect(&first, KEY).await.err().expect("no demo app");
    assert_eq!(data(&refused)["code"], 4001, "{refused}");
    first.shared.create_app(app("10")).await.unwrap();

    // SIGHUP reloads nothing while a database holds the apps.
    let file = std::env::temp_dir().join(format!("herald-store-{}.toml", rand::random::<u32>()));
    std::fs::write(
        &file,
        "[[apps]]\nid = \"9\"\nkey = \"from-file\"\nsecret = \"s\"\n",
    )
    .unwrap();
    let changed = herald_server::reload::reload(&first.shared, &file, &Default::default()).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert!(changed.is_empty(), "{changed:?}");
    assert!(first.shared.node().app_by_key("from-file").is_none());
    assert!(first.shared.node().app_by_key("key-10").is_some());
    first.stop().await;

    // A second start finds the tables (and their version) and serves what they hold.
    let second = node(&db).await;
    assert_eq!(
        db.scalar("SELECT version FROM herald_schema WHERE id = 1")
            .await,
        1
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM herald_schema").await, 1);
    try_connect(&second, "key-10")
        .await
        .expect("the stored app");
    assert_eq!(
        metric(
            &second,
            &format!("herald_app_store_up{{kind=\"{}\"}}", kind_label(kind))
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(&second, "herald_app_store_syncs_total{result=\"error\"}").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn postgres_tables_are_created_on_first_start_and_reused() {
    tables_are_created_on_first_start_and_reused(Kind::Postgres).await;
}

#[tokio::test]
async fn mariadb_tables_are_created_on_first_start_and_reused() {
    tables_are_created_on_first_start_and_reused(Kind::MariaDb).await;
}

async fn changes_reach_every_node_within_two_seconds(kind: Kind) {
    let db = Database::start(kind).await;
    let (one, two) = tokio::join!(node(&db), node(&db));
    let mut created = app("20");
    one.shared.create_app(created.clone()).await.unwrap();
    // Node 1 applied it at once; node 2 through the database.
    try_connect(&one, "key-20")
        .await
        .expect("node 1 has it at once");
    let took = eventually(PROPAGATION, "node 2 serves the new app", || async {
        try_connect(&two, "key-20").await.is_ok()
    })
    .await;
    eprintln!("{kind:?}: created app reached node 2 in {took:?}");
    let mut socket = try_connect(&two, "key-20").await.unwrap();
    socket.subscribe("news").await;
    assert_eq!(publish(&two, &created, "secret-20", "news").await, 200);
    socket.expect("ev").await;

    // A taken id or key is a conflict, and changes nothing.
    let mut same_key = app("21");
    same_key.key = "key-20".into();
    let err = one.shared.create_app(same_key).await.unwrap_err();
    assert!(
        matches!(err, herald_core::AppStoreError::Conflict(_)),
        "{err:?}"
    );
    let err = one.shared.create_app(app("20")).await.unwrap_err();
    assert!(
        matches!(&err, herald_core::AppStoreError::Conflict(m) if m.contains("id")),
        "{err:?}"
    );

    // Rotating the secret: the old signature is refused on node 2, the new one works.
    created.secret = "rotated-20".into();
    one.shared
        .update_app("20", replace(created.clone()))
        .await
        .unwrap();
    let took = eventually(PROPAGATION, "node 2 refuses the old secret", || async {
        publish(&two, &created, "secret-20", "news").await == 401
    })
    .await;
    eprintln!("{kind:?}: rotation reached node 2 in {took:?}");
    assert_eq!(publish(&two, &created, "rotated-20", "news").await, 200);

    // Disabling: node 2 closes the open socket with 4003.
    created.enabled = false;
    let start = Instant::now();
    one.shared
        .update_app("20", replace(created.clone()))
        .await
        .unwrap();
    let closed = tokio::time::timeout(PROPAGATION, socket.expect_close())
        .await
        .expect("node 2 closed the disabled app's socket within 2 s");
    assert_eq!(closed, Closed::Code(4003));
    eprintln!("{kind:?}: disable reached node 2 in {:?}", start.elapsed());

    // Deleting: node 2 no longer knows the key.
    one.shared.delete_app("20").await.unwrap();
    eventually(PROPAGATION, "node 2 forgets the deleted app", || async {
        matches!(try_connect(&two, "key-20").await, Err(frame) if data(&frame)["code"] == 4001)
    })
    .await;
    let err = one.shared.delete_app("20").await.unwrap_err();
    assert_eq!(err, herald_core::AppStoreError::NotFound("20".into()));
    let err = one
        .shared
        .update_app("20", replace(app("20")))
        .await
        .unwrap_err();
    assert_eq!(err, herald_core::AppStoreError::NotFound("20".into()));
    assert_eq!(db.scalar("SELECT COUNT(*) FROM herald_apps").await, 0);
}

/// Changes of different settings of one app, at once through two nodes: every one stays (each
/// is applied to the app as stored, under the row's lock, not to a copy read before).
async fn concurrent_changes_all_stay(kind: Kind) {
    let db = Database::start(kind).await;
    let (one, two) = tokio::join!(node(&db), node(&db));
    one.shared.create_app(app("30")).await.unwrap();
    type Set = fn(&mut App, usize);
    let sets: [Set; 6] = [
        |a, n| a.max_connections = 1000 + n,
        |a, n| a.max_presence_members = 10 + n,
        |a, n| a.max_batch_size = 2 + n,
        |a, n| a.max_channels_per_publish = 20 + n,
        |a, n| a.history_events = 50 + n,
        |a, _| a.client_events = !a.client_events,
    ];
    for round in 0..3 {
        let changes = sets.iter().enumerate().map(|(i, set)| {
            let server = if i % 2 == 0 { &one } else { &two };
            let set = *set;
            async move {
                let change: AppChange = Box::new(move |mut app: App| {
                    set(&mut app, round);
                    Ok(app)
                });
                server.shared.update_app("30", change).await
            }
        });
        for res in futures_util::future::join_all(changes).await {
            res.unwrap();
        }
        let stored = one.shared.apps().store().load().await.unwrap();
        let stored = stored.iter().find(|a| a.id == "30").unwrap();
        let mut expected = app("30");
        for _ in 0..=round {
            expected.client_events = !expected.client_events;
        }
        for set in &sets[..5] {
            set(&mut expected, round);
        }
        assert_eq!(
            serde_json::to_value(stored).unwrap(),
            serde_json::to_value(&expected).unwrap(),
            "{kind:?}, round {round}: a concurrent change was lost"
        );
    }
}

#[tokio::test]
async fn postgres_concurrent_changes_all_stay() {
    concurrent_changes_all_stay(Kind::Postgres).await;
}

#[tokio::test]
async fn mariadb_concurrent_changes_all_stay() {
    concurrent_changes_all_stay(Kind::MariaDb).await;
}

#[tokio::test]
async fn postgres_changes_reach_every_node_within_two_seconds() {
    changes_reach_every_node_within_two_seconds(Kind::Postgres).await;
}

#[tokio::test]
async fn mariadb_changes_reach_every_node_within_two_seconds() {
    changes_reach_every_node_within_two_seconds(Kind::MariaDb).await;
}

async fn an_outage_leaves_the_known_apps_working(kind: Kind) {
    let mut db = Database::start(kind).await;
    let (one, two) = tokio::join!(node(&db), node(&db));
    let known = app("30");
    one.shared.create_app(known.clone()).await.unwrap();
    eventually(PROPAGATION, "node 2 serves the app", || async {
        try_connect(&two, "key-30").await.is_ok()
    })
    .await;
    let mut open = try_connect(&two, "key-30").await.unwrap();
    open.subscribe("news").await;

    db.stop().await;
    let up = format!("herald_app_store_up{{kind=\"{}\"}}", kind_label(kind));
    eventually(
        Duration::from_secs(10),
        "node 2 notices the outage",
        || async { ready(&two).await.1["app_store"]["ok"] == false },
    )
    .await;
    let (status, body) = ready(&two).await;
    assert_eq!(status, 200, "an outage never makes a node unready: {body}");
    assert_eq!(body["ready"], true, "{body}");
    assert!(body["app_store"]["error"].is_string(), "{body}");
    assert_eq!(metric(&two, &up).await, Some(0.0));
    assert!(metric(&two, "herald_app_store_syncs_total{result=\"error\"}").await > Some(0.0));
    // The known app keeps working: new sockets, publishes, the open socket.
    let mut fresh = try_connect(&two, "key-30")
        .await
        .expect("connects during the outage");
    fresh.subscribe("news").await;
    assert_eq!(publish(&two, &known, "secret-30", "news").await, 200);
    open.expect("ev").await;
    fresh.expect("ev").await;
    // A write fails as unavailable and changes nothing.
    let err = one.shared.create_app(app("31")).await.unwrap_err();
    assert!(
        matches!(err, herald_core::AppStoreError::Unavailable(_)),
        "{err:?}"
    );
    try_connect(&one, "key-30")
        .await
        .expect("node 1 keeps the app");

    // The database is back: both nodes recover, and changes flow again.
    db.resume().await;
    eventually(Duration::from_secs(10), "node 2 recovers", || async {
        ready(&two).await.1["app_store"]["ok"] == true
    })
    .await;
    eventually(Duration::from_secs(10), "node 1 recovers", || async {
        ready(&one).await.1["app_store"]["ok"] == true
    })
    .await;
    assert_eq!(metric(&two, &up).await, Some(1.0));
    one.shared.create_app(app("32")).await.unwrap();
    let took = eventually(
        PROPAGATION,
        "node 2 serves an app created after the outage",
        || async { try_connect(&two, "key-32").await.is_ok() },
    )
    .await;
    eprintln!("{kind:?}: after the outage a new app reached node 2 in {took:?}");
}

#[tokio::test]
async fn postgres_outage_leaves_the_known_apps_working() {
    an_outage_leaves_the_known_apps_working(Kind::Postgres).await;
}

#[tokio::test]
async fn mariadb_outage_leaves_the_known_apps_working() {
    an_outage_leaves_the_known_apps_working(Kind::MariaDb).await;
}

async fn a_malformed_row_is_skipped(kind: Kind) {
    let db = Database::start(kind).await;
    let server = node(&db).await;
    // An operator writes rows by hand: one good, three bad; then bumps the version, as
    // docs/guide/app-store.md says a direct write must.
    db.execute(
        "INSERT INTO herald_apps (id, app_key, secret, settings) VALUES \
         ('40', 'key-40', 'secret-40', '{\"max_connections\": 5, \"from_a_newer_herald\": true}'), \
         ('41', 'key-41', 'secret-41', 'not json'), \
         ('42', 'key-42', 'secret-42', '{\"enabled\": \"maybe\"}'), \
         ('43', 'key-43', '', '{}')",
    )
    .await;
    db.execute("UPDATE herald_apps_version SET version = version + 1 WHERE id = 1")
        .await;
    eventually(PROPAGATION, "the good row is served", || async {
        try_connect(&server, "key-40").await.is_ok()
    })
    .await;
    for key in ["key-41", "key-42", "key-43"] {
        let refused = try_connect(&server, key).await.err().expect("skipped");
        assert_eq!(data(&refused)["code"], 4001, "{refused}");
    }
    let app = server.shared.node().app_by_key("key-40").unwrap();
    assert_eq!(app.app().max_connections, 5);
    let (_, body) = ready(&server).await;
    assert_eq!(body["app_store"]["ok"], true, "{body}");
    assert_eq!(body["app_store"]["invalid_rows"], 3, "{body}");
    assert_eq!(
        metric(&server, "herald_app_store_invalid_rows").await,
        Some(3.0)
    );
}

#[tokio::test]
async fn postgres_malformed_row_is_skipped() {
    a_malformed_row_is_skipped(Kind::Postgres).await;
}

#[tokio::test]
async fn mariadb_malformed_row_is_skipped() {
    a_malformed_row_is_skipped(Kind::MariaDb).await;
}

/// A node started while its database is down serves (after a bounded wait), ready and without
/// apps, says so in `/ready`, and loads the apps once the database answers.
#[tokio::test]
async fn a_node_started_during_an_outage_serves_and_loads_the_apps_later() {
    use herald_core::AppStore;
    let mut db = Database::start(Kind::Postgres).await;
    let store = herald_appstore::SqlAppStore::connect(&db.url()).unwrap();
    store.create(app("50")).await.unwrap();
    db.stop().await;

    let url = db.url();
    let server = TestServer::start(move |c| c.app_store.url = Some(url)).await;
    // `serve` waits a few seconds for the database, then serves anyway.
    let (status, body) = ready(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["app_store"]["ok"], false, "{body}");
    assert_eq!(body["app_store"]["last_sync_ms"], 0, "{body}");
    let refused = try_connect(&server, "key-50")
        .await
        .err()
        .expect("no apps yet");
    assert_eq!(data(&refused)["code"], 4001, "{refused}");
    assert_eq!(
        metric(&server, "herald_app_store_up{kind=\"postgres\"}").await,
        Some(0.0)
    );

    db.resume().await;
    eventually(
        Duration::from_secs(5),
        "the apps load once the database answers",
        || async { try_connect(&server, "key-50").await.is_ok() },
    )
    .await;
    let (_, body) = ready(&server).await;
    assert_eq!(body["app_store"]["ok"], true, "{body}");
}
