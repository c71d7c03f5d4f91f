//! The test DSL: `TestServer::start(|c| ...)`, `server.client().await`, `client.expect(..)`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use herald_protocol::signature;
use herald_server::config::DrainConfig;
use herald_server::{Config, Shared};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(5);
pub const KEY: &str = "app-key";
pub const SECRET: &str = "app-secret";

pub struct TestServer {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    pub shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
    http: HttpClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl TestServer {
    pub async fn start(configure: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_with(configure, |config| {
            Shared::new(config).expect("server state")
        })
        .await
    }

    /// [`TestServer::start`] with the server's state built by `build` (another app store).
    pub async fn start_with(
        configure: impl FnOnce(&mut Config),
        build: impl FnOnce(Config) -> Arc<Shared>,
    ) -> TestServer {
        let mut config = Config {
            host: "127.0.0.1".into(),
            drain: DrainConfig {
                delay: Duration::ZERO,
                window: Duration::ZERO,
                deadline: Duration::from_secs(2),
            },
            ..Config::default()
        };
        // `HERALD_TEST_REDIS_URL` runs every scenario through the Redis broker too, each server
        // under its own prefix so that concurrent tests do not see each other.
        configure(&mut config);
        let mut through_redis = false;
        if let (Ok(url), None) = (std::env::var("HERALD_TEST_REDIS_URL"), &config.redis_url) {
            config.redis_url = Some(url);
            config.cluster.prefix = format!("test-{}", rand::random::<u64>());
            through_redis = true;
        }
        config.validate().expect("test config is valid");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = build(config);
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(herald_server::serve(
            shared.clone(),
            listener,
            shutdown.clone(),
        ));
        if through_redis {
            // As a deployment does, start once the node has joined: it is `/ready` only after
            // reading the cluster's log back to its start.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !shared.broker().caught_up() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the node never read the cluster log"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let http = HttpClient::builder(TokioExecutor::new()).build_http();
        TestServer {
            addr,
            shared,
            shutdown,
            handle,
            http,
        }
    }

    /// Shuts the server down (its drain) and waits for `serve` to return.
    pub async fn stop(mut self) -> Arc<Shared> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), &mut self.handle)
            .await
            .expect("serve did not return")
            .expect("serve panicked")
            .expect("serve failed");
        self.shared.clone()
    }

    pub async fn default() -> TestServer {
        TestServer::start(|_| {}).await
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// A client on the default app, after `connection_established`.
    pub async fn client(&self) -> TestClient {
        self.client_for(KEY).await
    }

    pub async fn client_for(&self, key: &str) -> TestClient {
        let mut client = self
            .raw(&format!(
                "/app/{key}?protocol=7&client=js&version=8.4.0&flash=false"
            ))
            .await;
        let established = client.expect("pusher:connection_established").await;
        let data: Value =
            serde_json::from_str(established["data"].as_str().expect("data is a string")).unwrap();
        client.socket_id = data["socket_id"].as_str().unwrap().to_owned();
        client
    }

    /// A connected WebSocket that has not read anything yet.
    pub async fn raw(&self, path: &str) -> TestClient {
        let (ws, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(self.ws_url(path)))
                .await
                .expect("connect timed out")
                .expect("connect failed");
        TestClient {
            ws,
            socket_id: String::new(),
        }
    }

    /// A signed HTTP API request; returns status and JSON body.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.api_with(method, path, query, body, SECRET, now())
            .await
    }

    pub async fn api_with(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        secret: &str,
        timestamp: u64,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let uri = signed_uri(method, path, query, body.as_bytes(), secret, timestamp);
        self.send_http(method, &uri, body).await
    }

    pub async fn send_http(
        &self,
        method: &str,
        path_and_query: &str,
        body: String,
    ) -> (u16, Value) {
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path_and_query))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let res = tokio::time::timeout(WAIT, self.http.request(req))
            .await
            .expect("http timed out")
            .expect("http failed");
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    /// A signed publish; returns the status and the `Retry-After` header.
    pub async fn publish(&self, body: &Value) -> (u16, Option<String>) {
        let (uri, body) = signed_publish(body, SECRET);
        let req = hyper::Request::builder()
            .method("POST")
            .uri(format!("http://{}{}", self.addr, uri))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let res = tokio::time::timeout(WAIT, self.http.request(req))
            .await
            .expect("http timed out")
            .expect("http failed");
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (res.status().as_u16(), retry_after)
    }

    /// Publishes through the HTTP API and asserts success.
    pub async fn trigger(&self, channel: &str, event: &str, data: &str) {
        let (status, body) = self
            .api(
                "POST",
                "/apps/1/events",
                &[],
                Some(&json!({"name": event, "channel": channel, "data": data})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send_http("GET", path, String::new()).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Builds `path?query&auth_…` signed as the Pusher SDKs do.
pub fn signed_uri(
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: &[u8],
    secret: &str,
    timestamp: u64,
) -> String {
    let timestamp = timestamp.to_string();
    let md5 = signature::body_md5(body);
    let mut params: Vec<(&str, &str)> = query.to_vec();
    params.extend([
        ("auth_key", KEY),
        ("auth_timestamp", timestamp.as_str()),
        ("auth_version", "1.0"),
    ]);
    if !body.is_empty() {
        params.push(("body_md5", md5.as_str()));
    }
    let string = signature::api_string_to_sign(method, path, params.iter().copied());
    let sig = signature::sign(secret, string.as_bytes());
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            )
        })
        .collect();
    format!("{path}?{}&auth_signature={sig}", query.join("&"))
}

pub fn private_auth(socket_id: &str, channel: &str) -> String {
    let message = signature::channel_auth_message(socket_id, channel, None);
    format!("{KEY}:{}", signature::sign(SECRET, message.as_bytes()))
}

pub fn presence_auth(socket_id: &str, channel: &str, channel_data: &str) -> String {
    let message = signature::channel_auth_message(socket_id, channel, Some(channel_data));
    format!("{KEY}:{}", signature::sign(SECRET, message.as_bytes()))
}

pub fn signin_auth(socket_id: &str, user_data: &str) -> String {
    let message = signature::signin_message(socket_id, user_data);
    format!("{KEY}:{}", signature::sign(SECRET, message.as_bytes()))
}

pub struct TestClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub socket_id: String,
}

/// How a socket ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16),
    NoFrame,
}

impl TestClient {
    pub async fn send(&mut self, value: Value) {
        self.ws
            .send(Message::Text(value.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// The next JSON text frame.
    pub async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("socket ended")
                .expect("socket error");
            match msg {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("server sent JSON")
                }
                Message::Close(frame) => panic!("socket closed: {frame:?}"),
                _ => {}
            }
        }
    }

    /// Skips frames until one with this event name arrives.
    pub async fn expect(&mut self, event: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {event}"));
            if frame["event"] == event {
                return frame;
            }
        }
    }

    /// Asserts the very next frame is this event.
    /// The next frame, which must be `event`. A `pusher:ping` the server sends meanwhile (while
    /// frames flow it pings every 5 s to confirm delivery) is answered, as pusher-js does, and
    /// skipped, unless it is what the caller waits for.
    pub async fn expect_next(&mut self, event: &str) -> Value {
        let mut frame = self.next().await;
        while event != "pusher:ping" && frame["event"] == "pusher:ping" {
            self.send(json!({"event": "pusher:pong", "data": {}})).await;
            frame = self.next().await;
        }
        assert_eq!(frame["event"], event, "unexpected frame {frame}");
        frame
    }

    /// Proves nothing else is queued for us: a ping round trip comes back first.
    pub async fn expect_nothing_more(&mut self) {
        self.send(json!({"event": "pusher:ping", "data": {}})).await;
        let frame = self.next().await;
        assert_eq!(frame["event"], "pusher:pong", "unexpected frame {frame}");
    }

    /// Waits for the close frame and returns its code.
    pub async fn expect_close(&mut self) -> Closed {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Closed::Code(u16::from(frame.code))
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Closed::NoFrame,
                Some(Ok(_)) => {}
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.send(json!({"event": "pusher:subscribe", "data": {"channel": channel}}))
            .await;
        self.expect_next_for(channel).await
    }

    pub async fn subscribe_private(&mut self, channel: &str) -> Value {
        let auth = private_auth(&self.socket_id, channel);
        self.send(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}}))
            .await;
        self.expect_next_for(channel).await
    }

    pub async fn subscribe_presence(&mut self, channel: &str, user_id: &str) -> Value {
        let data = json!({"user_id": user_id, "user_info": {"name": user_id}}).to_string();
        let auth = presence_auth(&self.socket_id, channel, &data);
        self.send(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": data}}))
            .await;
        self.expect_next_for(channel).await
    }

    /// The next frame, which must be about `channel` (a success or an error).
    async fn expect_next_for(&mut self, channel: &str) -> Value {
        let frame = self.next().await;
        assert_eq!(frame["channel"], channel, "unexpected frame {frame}");
        frame
    }

    pub async fn sign_in(&mut self, user_data: &Value) -> Value {
        let user_data = user_data.to_string();
        let auth = signin_auth(&self.socket_id, &user_data);
        self.send(
            json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}),
        )
        .await;
        self.next().await
    }
}

/// Decodes a double-encoded `data` field.
pub fn data(frame: &Value) -> Value {
    match &frame["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

/// Sends `signal` (`"-TERM"`, `"-HUP"`, ...) to a running child process.
pub fn send_signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("the process runs").to_string();
    let sent = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
}

/// The path and query of a publish to app 1 of `body` signed with `secret`, and the body.
fn signed_publish(body: &Value, secret: &str) -> (String, String) {
    let body = body.to_string();
    let uri = signed_uri(
        "POST",
        "/apps/1/events",
        &[],
        body.as_bytes(),
        secret,
        now(),
    );
    (uri, body)
}

/// A publish to app 1 signed with `secret`, to the server at `addr` (`host:port`, usually another
/// process); returns the HTTP status.
pub async fn publish_to(addr: &str, body: &Value, secret: &str) -> u16 {
    let (uri, body) = signed_publish(body, secret);
    let req = hyper::Request::post(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    status_of(addr, req).await
}

/// `GET path` on the server at `addr` (`host:port`); returns the HTTP status.
pub async fn get_status(addr: &str, path: &str) -> u16 {
    let req = hyper::Request::get(path)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    status_of(addr, req).await
}

/// Sends `req` on a fresh HTTP/1 connection to `addr`; returns the status.
async fn status_of<B>(addr: &str, mut req: hyper::Request<B>) -> u16
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    req.headers_mut()
        .insert("host", addr.parse().expect("host:port"));
    let request = async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap().status().as_u16()
    };
    tokio::time::timeout(WAIT, request)
        .await
        .unwrap_or_else(|_| panic!("no answer from {addr} within {WAIT:?}"))
}

/// The real `herald` binary in a child process, for signals and `kill -9`; killed on drop.
pub struct Process {
    pub child: tokio::process::Child,
    /// `host:port` it listens on, read from its start-up log line.
    pub addr: String,
    dir: std::path::PathBuf,
    /// Reads the log after start-up; aborting it closes the log pipe.
    log_reader: tokio::task::JoinHandle<()>,
}

impl Process {
    pub async fn start(config_toml: &str, extra_args: &[&str]) -> Process {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let dir = std::env::temp_dir().join(format!(
            "herald-proc-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("herald.toml");
        std::fs::write(&config, config_toml).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--log-format",
                "json",
                "--config",
            ])
            .arg(&config)
            .args(extra_args)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let log: Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(addr) = log["fields"]["addr"].as_str() {
                    return addr.to_owned();
                }
            }
            panic!("herald exited before listening");
        })
        .await
        .expect("herald did not start");
        let log_reader =
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Process {
            child,
            addr,
            dir,
            log_reader,
        }
    }

    /// Stops reading the log and closes the pipe's read end, as a log collector that died
    /// would: the process's next log write fails.
    pub async fn close_log(&mut self) {
        self.log_reader.abort();
        let _ = (&mut self.log_reader).await;
    }

    /// A client after `connection_established`.
    pub async fn client(&self) -> TestClient {
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

    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A browser-like client: it sends an `Origin` (and `cookie`, if any) on the handshake; returns
/// the client, after `connection_established`, and the cookie the 101 set (`name=value`).
pub async fn browser(url: &str, cookie: Option<&str>) -> (TestClient, Option<String>) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "http://app.test".parse().unwrap());
    if let Some(cookie) = cookie {
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
    }
    let (ws, res) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    let set_cookie = res
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    if let Some(set_cookie) = &set_cookie {
        for attribute in ["HttpOnly", "SameSite=Lax", "Max-Age=600", "Path=/"] {
            assert!(set_cookie.contains(attribute), "{set_cookie}");
        }
    }
    let mut client = TestClient {
        ws,
        socket_id: String::new(),
    };
    let established = client.expect("pusher:connection_established").await;
    client.socket_id = data(&established)["socket_id"].as_str().unwrap().to_owned();
    let pair = set_cookie.map(|c| c.split(';').next().unwrap().to_owned());
    (client, pair)
}
