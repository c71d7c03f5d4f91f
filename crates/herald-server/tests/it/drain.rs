//! Graceful drain of the real binary on SIGTERM.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn sigterm_drains_in_paced_batches_and_exits_zero() {
    let mut process = Process::start(
        "[drain]\ndelay = \"1s\"\nwindow = \"2s\"\ndeadline = \"6s\"\n",
        &[],
    )
    .await;
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
    while get_status(&process.addr, "/ready").await != 503 {
        assert!(Instant::now() < deadline, "/ready never turned 503");
    }
    let not_ready_at = signalled.elapsed();
    assert_eq!(get_status(&process.addr, "/up").await, 200);

    // Publishes during the drain reach every socket still open.
    let publish = json!({"name": "during-drain", "channel": "news", "data": "1"});
    assert_eq!(publish_to(&process.addr, &publish, SECRET).await, 200);

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
