//! `/admin/api/apps/{id}/events`: the app's live event stream (Server-Sent Events) and a test
//! event.
//!
//! The stream is `data: <MonitorRecord JSON>\n\n` per record, after a `hello`; records a
//! watcher could not keep up with become one `{"type":"sampled","dropped":n}`; a
//! `: keep-alive` comment goes out every 15 s (which also finds a client that went away). It is
//! bounded: the monitor's queue per watcher is fixed, the body is produced only as fast as the
//! connection takes it, and nothing else is buffered. It ends when the client goes away, the
//! app is removed, or the node starts draining (so the drain never waits on it).
//!
//! Browsers read it with `fetch()` and a streaming body (EventSource cannot send the
//! `Authorization` header): the token never goes into a URL.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use futures_util::FutureExt;
use herald_core::{MonitorEvent, MonitorItem, MonitorRecord, MonitorWatch};
use serde_json::json;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{app_state, AdminError};
use crate::state::Shared;

/// How often a comment line keeps the stream (and proxies' idle timers) alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Records written together when they are already waiting (one body chunk).
const MAX_BATCH: usize = 256;

/// `GET /admin/api/apps/{id}/events`.
pub(super) async fn stream(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let app = app_state(&shared, &id)?;
    let node = shared.node().id().to_string();
    let hello = json!({
        "type": "hello",
        "node": node,
        "app_id": app.id(),
        "time_ms": herald_core::monitor::now_ms(),
    });
    // Holds only the receiving end: a removed app's stream ends.
    let watcher = Watcher::new(
        app.monitor().watch(),
        node,
        &hello.to_string(),
        KEEP_ALIVE,
        shared.drain_started().clone(),
    );
    drop(app);
    let body = Body::from_stream(futures_util::stream::unfold(watcher, Watcher::next));
    let mut res = Response::new(body);
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tells nginx not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// One open event stream.
struct Watcher {
    watch: MonitorWatch,
    node: String,
    hello: Option<Bytes>,
    keep_alive: Interval,
    /// The drain started.
    stop: CancellationToken,
}

impl Watcher {
    fn new(
        watch: MonitorWatch,
        node: String,
        hello: &str,
        keep_alive: Duration,
        stop: CancellationToken,
    ) -> Watcher {
        let mut keep_alive = tokio::time::interval_at(Instant::now() + keep_alive, keep_alive);
        keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Watcher {
            watch,
            node,
            hello: Some(data_line(hello)),
            keep_alive,
            stop,
        }
    }

    /// The next chunk of the body; `None` ends it.
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Watcher)> {
        if let Some(hello) = self.hello.take() {
            return Some((Ok(hello), self));
        }
        let chunk = tokio::select! {
            biased;
            () = self.stop.cancelled() => return None,
            item = self.watch.recv() => {
                let mut chunk = Vec::new();
                self.write(&mut chunk, item?);
                // Whatever is already waiting goes in the same chunk.
                for _ in 1..MAX_BATCH {
                    match self.watch.recv().now_or_never() {
                        Some(Some(item)) => self.write(&mut chunk, item),
                        _ => break,
                    }
                }
                Bytes::from(chunk)
            }
            _ = self.keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
        };
        Some((Ok(chunk), self))
    }

    fn write(&self, out: &mut Vec<u8>, item: MonitorItem) {
        let json = match item {
            MonitorItem::Record(record) => serde_json::to_string(&*record),
            MonitorItem::Missed(dropped) => serde_json::to_string(&MonitorRecord {
                node: self.node.clone(),
                time_ms: herald_core::monitor::now_ms(),
                event: MonitorEvent::Sampled { dropped },
            }),
        };
        // A record is plain data; serializing it cannot fail.
        if let Ok(json) = json {
            out.extend_from_slice(&data_line(&json));
        }
    }
}

/// One SSE event: serde_json never writes a raw newline, so one `data:` line is enough.
fn data_line(json: &str) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

/// `POST /admin/api/apps/{id}/events`: published exactly as a signed HTTP API publish is.
pub(super) async fn send(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let app = app_state(&shared, &id)?;
    tracing::debug!(app_id = %id, "admin API: test event");
    Ok(crate::http_api::events::publish_body(&shared, &app, &body).await)
}

#[cfg(test)]
mod tests {
    use herald_core::Monitor;

    use super::*;

    async fn chunk(watcher: Watcher) -> (String, Watcher) {
        let (chunk, watcher) = tokio::time::timeout(Duration::from_secs(5), watcher.next())
            .await
            .expect("a chunk in time")
            .expect("the stream goes on");
        let Ok(chunk) = chunk;
        (String::from_utf8(chunk.to_vec()).unwrap(), watcher)
    }

    #[tokio::test]
    async fn hello_records_sampling_keep_alive_and_the_end() {
        let monitor = Monitor::default();
        let stop = CancellationToken::new();
        let watcher = Watcher::new(
            monitor.watch(),
            "7".into(),
            r#"{"type":"hello","node":"7"}"#,
            Duration::from_millis(20),
            stop.clone(),
        );
        let (text, watcher) = chunk(watcher).await;
        assert_eq!(text, "data: {\"type\":\"hello\",\"node\":\"7\"}\n\n");

        let (text, watcher) = chunk(watcher).await;
        assert_eq!(text, ": keep-alive\n\n", "nothing happened: a keep-alive");

        monitor.emit(
            7,
            MonitorEvent::Unsubscribed {
                socket_id: "7.1".into(),
                channel: "chat".into(),
            },
        );
        monitor.emit(
            7,
            MonitorEvent::Unsubscribed {
                socket_id: "7.2".into(),
                channel: "chat".into(),
            },
        );
        let (text, watcher) = chunk(watcher).await;
        let lines: Vec<&str> = text.split_terminator("\n\n").collect();
        assert_eq!(lines.len(), 2, "waiting records share a chunk: {text}");
        for (line, socket) in lines.iter().zip(["7.1", "7.2"]) {
            let record: serde_json::Value =
                serde_json::from_str(line.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(record["type"], "unsubscribed");
            assert_eq!(record["socket_id"], socket);
            assert_eq!(record["node"], "7");
        }

        let extra = 10;
        // Published as they come (emit would sample them at 500 a second first).
        for _ in 0..herald_core::monitor::WATCHER_QUEUE + extra {
            monitor.publish(std::sync::Arc::new(herald_core::MonitorRecord {
                node: "7".into(),
                time_ms: 0,
                event: MonitorEvent::Sampled { dropped: 0 },
            }));
        }
        let (text, watcher) = chunk(watcher).await;
        let first = text.split_terminator("\n\n").next().unwrap();
        let record: serde_json::Value =
            serde_json::from_str(first.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(record["type"], "sampled");
        assert_eq!(record["dropped"], extra);
        assert_eq!(record["node"], "7");

        stop.cancel();
        assert!(watcher.next().await.is_none(), "the drain ends the stream");
    }
}
