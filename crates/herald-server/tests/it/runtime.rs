//! What a running server sets up beside herald-core: the metrics and webhooks of apps added at
//! runtime (an in-process reload of a configuration file), and the tasks `serve` waits for.

use std::path::PathBuf;
use std::time::Duration;

use herald_cluster::MemoryHub;
use herald_server::config::{Overrides, WebhookTarget};
use serde_json::json;

use crate::metrics::{scrape, server_with_own_app, unique_app_id};
use crate::support::*;
use crate::webhooks::Receiver;

/// A configuration file in its own directory, removed with it.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(toml: &str) -> ConfigFile {
        let dir = std::env::temp_dir().join(format!(
            "herald-runtime-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("herald.toml");
        std::fs::write(&file, toml).unwrap();
        ConfigFile(file)
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Applies `toml`'s apps to the running server, as SIGHUP does.
fn reload(server: &TestServer, toml: &str) -> herald_core::AppsChanged {
    let file = ConfigFile::new(toml);
    herald_server::reload::reload(&server.shared, &file.0, &Overrides::default())
        .expect("the file is valid")
}

fn app_toml(id: &str, key: &str) -> String {
    format!("[[apps]]\nid = \"{id}\"\nkey = \"{key}\"\nsecret = \"{SECRET}\"\n")
}

#[tokio::test]
async fn an_app_added_at_runtime_has_its_metrics_from_the_start_shared_by_its_sockets() {
    let (server, own) = server_with_own_app(|_| {}).await;
    let added = unique_app_id();
    let key = format!("key-{added}");
    let changed = reload(
        &server,
        &format!("{}{}", app_toml(&own, KEY), app_toml(&added, &key)),
    );
    assert_eq!(changed.added, vec![added.clone()]);

    // Present at zero before its first socket, like a configured app's.
    let app = [("app_id", added.as_str())];
    let fresh = scrape(&server).await;
    assert_eq!(fresh.value("herald_connections_total", &app), 0.0);
    assert_eq!(fresh.value("herald_connections_active", &app), 0.0);
    let body_limit = [("app_id", added.as_str()), ("limit", "request_body")];
    assert_eq!(
        fresh.value("herald_limit_rejections_total", &body_limit),
        0.0
    );

    // Every socket counts on the same series: none resets what another counted.
    let mut first = server.client_for(&key).await;
    let mut second = server.client_for(&key).await;
    for client in [&mut first, &mut second] {
        client
            .send(json!({"event": "pusher:ping", "data": {}}))
            .await;
        client.expect("pusher:pong").await;
    }
    let after = scrape(&server).await;
    assert_eq!(after.value("herald_connections_total", &app), 2.0);
    assert_eq!(after.value("herald_connections_active", &app), 2.0);
    assert_eq!(after.value("herald_ws_messages_received_total", &app), 2.0);
    assert!(std::sync::Arc::ptr_eq(
        &server.shared.app_metrics(&added),
        &server.shared.app_metrics(&added)
    ));
}

#[tokio::test]
async fn an_oversized_api_body_is_counted_for_its_app() {
    let (server, own) = server_with_own_app(|c| c.limits.max_request_body_bytes = 1000).await;
    let body = json!({"name": "e", "channel": "c", "data": "x".repeat(2000)});
    let path = format!("/apps/{own}/events");
    let (status, res) = server.api("POST", &path, &[], Some(&body)).await;
    assert_eq!(status, 413, "{res}");
    let limit = [("app_id", own.as_str()), ("limit", "request_body")];
    assert_eq!(
        scrape(&server)
            .await
            .value("herald_limit_rejections_total", &limit),
        1.0
    );
}

#[tokio::test]
async fn webhook_targets_added_at_runtime_work_without_a_restart() {
    let mut receiver = Receiver::start(vec![]).await;
    let (server, own) = server_with_own_app(|_| {}).await;
    let mut client = server.client().await;
    client.subscribe("before").await;
    let toml = format!(
        "{}[[apps.webhooks]]\nurl = \"{}\"\nevent_types = [\"channel_occupied\"]\n",
        app_toml(&own, KEY),
        receiver.url()
    );
    assert_eq!(reload(&server, &toml).changed, vec![own]);
    client.subscribe("after").await;
    assert_eq!(
        receiver.next_event().await,
        json!({"name": "channel_occupied", "channel": "after"})
    );
}

/// `serve` returns only once every task it started has ended: the accept loop, connections and
/// sockets (`connection_tasks`), the broker's, the webhooks' (a request included), the metrics
/// upkeep and the liveness sweep (`background_tasks`).
#[tokio::test]
async fn serve_returns_once_every_task_it_started_has_ended() {
    let mut receiver = Receiver::start(vec![]).await;
    let url = receiver.url();
    let server = TestServer::start(|c| {
        c.cluster.hub = Some(MemoryHub::new());
        c.webhooks.leave_delay = Duration::from_millis(100);
        c.apps[0].webhooks.push(WebhookTarget {
            url,
            event_types: Vec::new(),
            channel_prefix: None,
            channel_suffix: None,
            headers: Default::default(),
        });
    })
    .await;
    let mut client = server.client().await;
    client.subscribe("room").await;
    assert_eq!(receiver.next_event().await["name"], "channel_occupied");
    assert!(!server.shared.background_tasks().is_empty());

    let closed = tokio::spawn(async move { client.expect_close().await });
    let shared = server.stop().await;
    assert_eq!(closed.await.unwrap(), Closed::Code(4200));
    assert!(shared.connection_tasks().is_closed() && shared.background_tasks().is_closed());
    assert_eq!(
        shared.connection_tasks().len(),
        0,
        "socket or HTTP tasks outlived serve"
    );
    assert_eq!(
        shared.background_tasks().len(),
        0,
        "background tasks outlived serve"
    );
    // Nothing else holds the server's state: no task, tracked or not, is left running.
    assert_eq!(
        std::sync::Arc::strong_count(&shared),
        1,
        "a task outlived serve"
    );
}
