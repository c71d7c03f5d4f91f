//! Graceful drain of the real binary on SIGTERM.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::*;

#[tokio::test]
async fn sigterm_drains_in_paced_batches_and_exits_zero() {
    let dir = std::env::temp_dir().join(format!("herald-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("herald.toml");
    std::fs::write(
        &config,
        "[drain]\ndelay = \"1s\"\nwindow = \"2s\"\ndeadline = \"6s\"\n",
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["start", "--host", "127.0.0.1", "--port", "0", "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .env("HERALD_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The bound address is in the start-up log line.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let log: Value = serde_json::from_str(&line).unwrap_or_default();
            if let Some(addr) = log["fields"]["addr"].as_str() {
                return addr.to_owned();
            }
        }
        panic!("server exited before listening");
    })
    .await
    .expect("server did not start");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let server = RemoteServer::new(&addr);
    let mut clients = Vec::new();
    for _ in 0..40 {
        let mut client = server.client().await;
        client.subscribe("news").await;
        clients.push(client);
    }
    let signalled = Instant::now();
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());

    // Readiness fails at once, while liveness and the API keep working.
    let deadline = Instant::now() + WAIT;
    while server.get("/ready").await != 503 {
        assert!(Instant::now() < deadline, "/ready never turned 503");
    }
    let not_ready_at = signalled.elapsed();
    assert_eq!(server.get("/up").await, 200);

    // Publishes during the drain reach every socket still open.
    server.trigger("news", "during-drain", "1").await;

    // Every client waits on its own task, so each close is timed when it arrives.
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                client.expect_next("during-drain").await;
                assert_eq!(client.expect_close().await, Closed::Code(4200));
                signalled.elapsed()
            })
        })
        .collect();
    let mut closed_at = Vec::new();
    for wait in waits {
        closed_at.push(wait.await.unwrap());
    }
    closed_at.sort();
    let first = closed_at[0];
    let last = *closed_at.last().unwrap();
    assert!(
        first >= Duration::from_millis(900),
        "closing started before the delay: {first:?}"
    );
    assert!(
        not_ready_at < first,
        "readiness must fail before sockets are closed"
    );
    assert!(
        last - first >= Duration::from_millis(1000),
        "closes were not spread over the window: {first:?}..{last:?}"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("no exit before deadline")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(6) + Duration::from_millis(500));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Just enough of `TestServer` to talk to a server in another process.
struct RemoteServer {
    addr: String,
}

impl RemoteServer {
    fn new(addr: &str) -> RemoteServer {
        RemoteServer {
            addr: addr.to_owned(),
        }
    }

    async fn client(&self) -> TestClient {
        let url = format!(
            "ws://{}/app/{KEY}?protocol=7&client=js&version=8.4.0",
            self.addr
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut client = TestClient {
            ws,
            socket_id: String::new(),
        };
        let frame = client.expect_next("pusher:connection_established").await;
        client.socket_id = data(&frame)["socket_id"].as_str().unwrap().to_owned();
        client
    }

    async fn get(&self, path: &str) -> u16 {
        let stream = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", &self.addr)
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .unwrap();
        sender.send_request(req).await.unwrap().status().as_u16()
    }

    async fn trigger(&self, channel: &str, event: &str, data: &str) {
        let body = serde_json::json!({"name": event, "channel": channel, "data": data}).to_string();
        let uri = signed_uri(
            "POST",
            "/apps/1/events",
            &[],
            body.as_bytes(),
            SECRET,
            now(),
        );
        let stream = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::post(uri)
            .header("host", &self.addr)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
            .unwrap();
        assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    }
}
