//! Graceful drain of the real binary on SIGTERM.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test]
async fn sigterm_drains_in_paced_batches_and_exits_zero() {
    let mut process = Process::start(
        "[drain]\ndelay = \"1s\"\nwindow = \"2s\"\ndeadline = \"6s\"\n",
        &[],
    )
    .await;
    let server = RemoteServer::new(&process.addr);
    let mut clients = Vec::new();
    for _ in 0..40 {
        let mut client = process.client().await;
        client.subscribe("news").await;
        clients.push(client);
    }
    let signalled = Instant::now();
    send_signal(&process.child, "-TERM");

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
    let status = tokio::time::timeout(Duration::from_secs(10), process.child.wait())
        .await
        .expect("no exit before deadline")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(6) + Duration::from_millis(500));
}

#[tokio::test]
async fn sigterm_drains_when_the_log_reader_is_gone() {
    let mut process = Process::start(
        "[drain]\ndelay = \"0s\"\nwindow = \"0s\"\ndeadline = \"2s\"\n",
        &[],
    )
    .await;
    let mut client = process.client().await;
    client.subscribe("news").await;
    process.close_log().await;
    send_signal(&process.child, "-TERM");
    assert_eq!(client.expect_close().await, Closed::Code(4200));
    let status = tokio::time::timeout(Duration::from_secs(10), process.child.wait())
        .await
        .expect("no exit after SIGTERM with the log pipe closed")
        .unwrap();
    assert!(status.success(), "{status:?}");
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
