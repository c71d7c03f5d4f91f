//! Apps reloaded from the configuration file on SIGHUP, in the real binary.

use std::path::PathBuf;

use futures_util::StreamExt;
use herald_protocol::signature;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::support::*;

const V1: &str = r#"
[[apps]]
id = "1"
key = "app-key"
secret = "app-secret"

[[apps]]
id = "2"
key = "key-two"
secret = "secret-two"
"#;

/// App 1's secret rotated, app 2 disabled, app 3 added.
const V2: &str = r#"
[[apps]]
id = "1"
key = "app-key"
secret = "rotated-secret"

[[apps]]
id = "2"
key = "key-two"
secret = "secret-two"
enabled = false

[[apps]]
id = "3"
key = "key-three"
secret = "secret-three"
"#;

/// The binary with its log lines readable by the test (the reload's outcome is logged).
struct Herald {
    child: tokio::process::Child,
    addr: String,
    config: PathBuf,
    logs: mpsc::UnboundedReceiver<Value>,
}

impl Herald {
    async fn start(config_toml: &str) -> Herald {
        let dir = std::env::temp_dir().join(format!(
            "herald-reload-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("herald.toml");
        std::fs::write(&config, config_toml).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--host", "127.0.0.1", "--port", "0", "--log-format", "json"])
            .arg("--config")
            .arg(&config)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, mut logs) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(serde_json::from_str(&line).unwrap_or(Value::String(line)));
            }
        });
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(log) = logs.recv().await {
                if let Some(addr) = log["fields"]["addr"].as_str() {
                    return addr.to_owned();
                }
            }
            panic!("herald exited before listening");
        })
        .await
        .expect("herald did not start");
        Herald {
            child,
            addr,
            config,
            logs,
        }
    }

    /// Rewrites the file, sends SIGHUP, and returns the log line that reports the outcome.
    async fn reload(&mut self, config_toml: &str) -> Value {
        std::fs::write(&self.config, config_toml).unwrap();
        send_signal(&self.child, "-HUP");
        tokio::time::timeout(WAIT, async {
            while let Some(log) = self.logs.recv().await {
                let message = log["fields"]["message"].as_str().unwrap_or_default();
                if message.starts_with("configuration reload") && log["level"] != "WARN" {
                    return log;
                }
            }
            panic!("herald exited");
        })
        .await
        .expect("no reload outcome was logged")
    }

    async fn client(&self, key: &str) -> TestClient {
        let url = format!(
            "ws://{}/app/{key}?protocol=7&client=js&version=8.4.0",
            self.addr
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .unwrap();
        let mut client = TestClient {
            ws,
            socket_id: String::new(),
        };
        let frame = client.next().await;
        assert_eq!(frame["event"], "pusher:connection_established", "{frame}");
        client.socket_id = data(&frame)["socket_id"].as_str().unwrap().to_owned();
        client
    }

    /// The first frame a fresh connection to `key` gets.
    async fn first_frame(&self, key: &str) -> Value {
        let url = format!(
            "ws://{}/app/{key}?protocol=7&client=js&version=8.4.0",
            self.addr
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame")
            .unwrap()
            .unwrap();
        serde_json::from_str(msg.to_text().unwrap()).unwrap()
    }

    /// A publish to app 1 signed with `secret`; returns the HTTP status.
    async fn publish(&self, secret: &str) -> u16 {
        let body = json!({"name": "e", "channel": "news", "data": "d"});
        publish_to(&self.addr, &body, secret).await
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        if let Some(dir) = self.config.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Subscribes to a private channel with an auth signed by `secret`; returns the reply's event.
async fn subscribe_private_signed(client: &mut TestClient, channel: &str, secret: &str) -> String {
    let message = signature::channel_auth_message(&client.socket_id, channel, None);
    let auth = format!("{KEY}:{}", signature::sign(secret, message.as_bytes()));
    client
        .send(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}}))
        .await;
    let reply = client.next().await;
    reply["event"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn sighup_reloads_apps_adds_rotates_and_disables() {
    let mut herald = Herald::start(V1).await;
    let mut one = herald.client(KEY).await;
    let mut two = herald.client("key-two").await;
    let refused = herald.first_frame("key-three").await;
    assert_eq!(data(&refused)["code"], 4001, "{refused}");
    assert_eq!(herald.publish(SECRET).await, 200);

    // A bad file is refused and changes nothing.
    let outcome = herald
        .reload("[[apps]]\nid = \"1\"\nkey = \"app-key\"\n")
        .await;
    assert_eq!(outcome["level"], "ERROR", "{outcome}");
    assert!(
        outcome["fields"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("secret"),
        "{outcome}"
    );
    assert_eq!(herald.publish(SECRET).await, 200);
    two.expect_nothing_more().await;
    herald.client("key-two").await;

    let outcome = herald.reload(V2).await;
    assert_eq!(outcome["level"], "INFO", "{outcome}");

    // The disabled app's sockets are closed with 4003, and new ones refused with it.
    assert_eq!(two.expect_close().await, Closed::Code(4003));
    let refused = herald.first_frame("key-two").await;
    assert_eq!(data(&refused)["code"], 4003, "{refused}");

    // The new app accepts connections.
    herald.client("key-three").await;

    // The rotated secret is required at once, by sockets already open and by the HTTP API.
    assert_eq!(
        subscribe_private_signed(&mut one, "private-a", SECRET).await,
        "pusher:subscription_error"
    );
    assert_eq!(
        subscribe_private_signed(&mut one, "private-b", "rotated-secret").await,
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(herald.publish(SECRET).await, 401);
    assert_eq!(herald.publish("rotated-secret").await, 200);
}

#[tokio::test]
async fn an_unknown_herald_environment_variable_stops_start_up_naming_it() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .env("HERALD_MAX_CONECTIONS", "10")
        .output();
    let output = tokio::time::timeout(WAIT, output)
        .await
        .expect("herald did not exit")
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("HERALD_MAX_CONECTIONS"), "{stderr}");
}
