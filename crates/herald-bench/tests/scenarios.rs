//! Runs every herald-bench scenario briefly against a real herald server and checks the
//! reports. The server binary comes from `HERALD_BIN`, else the newer of
//! `<target>/release/herald` and `<target>/debug/herald`; without one the tests fail.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The scenarios measure timing: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn herald_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HERALD_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "HERALD_BIN={} is not a file", p.display());
        return p;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("herald"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    match found.pop() {
        Some((_, p)) => p,
        None => panic!(
            "herald server binary not found: set HERALD_BIN or build it with \
             `cargo build --release -p herald-server` (looked in {})",
            target.display()
        ),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start_on(port: u16) -> Server {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new(herald_bin())
                .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start herald");
            loop {
                if http_status(port, "/up") == Some(200) {
                    return Server { child, port };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited (e.g. the port is still held): try again
                }
                assert!(
                    Instant::now() < deadline,
                    "herald did not become ready on port {port}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                Instant::now() < deadline,
                "herald could not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn start() -> Server {
        Server::start_on(free_port())
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn urls(&self) -> Vec<String> {
        vec![
            "--ws-url".into(),
            format!("ws://127.0.0.1:{}", self.port),
            "--http-url".into(),
            format!("http://127.0.0.1:{}", self.port),
        ]
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn bench_cmd(server: &Server, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald-bench"));
    cmd.args(args)
        .args(server.urls())
        .args(["--json", "--server-pid", &server.pid()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Waits for a bench process (bounded) and parses its JSON report.
fn wait_report(mut child: Child, timeout: Duration) -> Value {
    let mut stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let err_thread = stderr.map(|mut e| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        })
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(s) => s,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald-bench did not finish within {timeout:?}");
        }
    };
    let status = child.wait().unwrap();
    let err = err_thread.map(|t| t.join().unwrap()).unwrap_or_default();
    assert!(
        status.success(),
        "herald-bench failed: {status}\n{err}\n{out}"
    );
    eprintln!("{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON report ({e}): {out}"))
}

fn run(server: &Server, args: &[&str]) -> Value {
    let mut cmd = bench_cmd(server, args);
    cmd.arg("--quiet");
    wait_report(
        cmd.spawn().expect("run herald-bench"),
        Duration::from_secs(120),
    )
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v:#}"))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v:#}"))
}

#[test]
fn connect_mixed_channels() {
    let _g = serial();
    let server = Server::start();
    let r = run(
        &server,
        &[
            "connect",
            "-n",
            "300",
            "--kinds",
            "public,private,presence",
            "--channels-per-conn",
            "2",
            "--hold",
            "1s",
        ],
    );
    assert_eq!(u(&r, "established"), 300, "{r:#}");
    assert_eq!(u(&r, "subscribed"), 300, "{r:#}");
    assert_eq!(u(&r, "failed"), 0, "{r:#}");
    assert_eq!(u(&r, "held"), 300, "{r:#}");
    assert_eq!(u(&r, "dropped"), 0, "{r:#}");
    assert!(f(&r, "handshakes_per_sec") > 10.0, "{r:#}");
    let est = &r["connection_established_ms"];
    assert_eq!(u(est, "count"), 300);
    assert!(f(est, "p99_ms") < 5000.0, "{r:#}");
    assert!(f(est, "p50_ms") <= f(est, "p99_ms"));
    assert!(u(&r, "server_rss_after_bytes") > 0);
    assert!(r["server_rss_per_conn_bytes"].is_number(), "{r:#}");
    assert!(f(&r["cpu_connect"], "tool_cpu_s") >= 0.0);
    assert!(r["cpu_connect"]["server_cpu_s"].is_number(), "{r:#}");
}

#[test]
fn connect_through_worker_processes() {
    let _g = serial();
    let server = Server::start();
    let r = run(
        &server,
        &[
            "connect",
            "-n",
            "300",
            "--workers",
            "3",
            "--rate",
            "2000",
            "--hold",
            "500ms",
        ],
    );
    assert_eq!(u(&r, "processes"), 3, "{r:#}");
    assert_eq!(u(&r, "subscribed"), 300, "{r:#}");
    assert_eq!(u(&r, "failed"), 0, "{r:#}");
    assert_eq!(u(&r, "held"), 300, "{r:#}");
    // Paced at 2000/s: 300 connections take about 150 ms, so the rate can't exceed ~2000/s by much.
    assert!(f(&r, "handshakes_per_sec") < 4000.0, "{r:#}");
}

/// Open WebSocket connections on the herald listening on `port`, from its own gauge. (Counting
/// sockets in /proc/net/tcp proved flaky.)
fn established_on(port: u16) -> usize {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix("herald_node_connections "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as usize)
}

#[test]
fn connect_round_robin_over_several_servers() {
    let _g = serial();
    let a = Server::start();
    let b = Server::start();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald-bench"));
    cmd.args(["connect", "-n", "300", "--workers", "2", "--hold", "3s"])
        .args(a.urls())
        .args(["--ws-url", &format!("ws://127.0.0.1:{}", b.port)])
        .args(["--json", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("run herald-bench");
    // While the connections are held, each server has half of them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = (0, 0);
    while Instant::now() < deadline {
        seen = (established_on(a.port), established_on(b.port));
        if seen == (150, 150) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = wait_report(child, Duration::from_secs(60));
    assert_eq!(seen, (150, 150), "{r:#}");
    assert_eq!(u(&r, "subscribed"), 300, "{r:#}");
    assert_eq!(u(&r, "failed"), 0, "{r:#}");
    assert_eq!(r["ws_urls"].as_array().unwrap().len(), 2, "{r:#}");
}

fn check_no_loss(r: &Value) {
    assert!(u(r, "published_ok") > 0, "{r:#}");
    assert_eq!(u(r, "published_failed"), 0, "{r:#}");
    assert_eq!(u(r, "lost"), 0, "{r:#}");
    assert_eq!(u(r, "duplicated"), 0, "{r:#}");
    assert_eq!(u(r, "out_of_order"), 0, "{r:#}");
    assert_eq!(u(r, "expected"), u(r, "received"), "{r:#}");
    assert_eq!(u(r, "deliveries"), u(r, "received"), "{r:#}");
    let lat = &r["latency_ms"];
    assert_eq!(u(lat, "count"), u(r, "deliveries"));
    assert!(f(lat, "p99_ms") < 2000.0, "{r:#}");
    assert!(f(lat, "min_ms") >= 0.0);
    assert!(f(r, "deliveries_per_sec") > 0.0);
}

#[test]
fn broadcast_paced_over_channels() {
    let _g = serial();
    let server = Server::start();
    let png = std::env::temp_dir().join(format!("herald-bench-test-{}.png", std::process::id()));
    let r = run(
        &server,
        &[
            "broadcast",
            "-n",
            "300",
            "-c",
            "3",
            "--rate",
            "50",
            "-d",
            "2s",
            "--plot",
            png.to_str().unwrap(),
        ],
    );
    check_no_loss(&r);
    assert_eq!(u(&r, "subscribed"), 300);
    // 50/s for 2 s, each event to the 100 subscribers of its channel.
    let published = u(&r, "published_ok");
    assert!((90..=101).contains(&published), "{r:#}");
    assert_eq!(u(&r, "expected"), published * 100, "{r:#}");
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
    let _ = std::fs::remove_file(&png);
}

#[test]
fn broadcast_max_rate_with_workers() {
    let _g = serial();
    let server = Server::start();
    let r = run(
        &server,
        &[
            "broadcast",
            "-n",
            "200",
            "--rate",
            "max",
            "--publishers",
            "2",
            "-d",
            "2s",
            "--workers",
            "2",
        ],
    );
    check_no_loss(&r);
    assert_eq!(u(&r, "expected"), u(&r, "published_ok") * 200, "{r:#}");
    assert!(u(&r, "published_ok") > 20, "{r:#}");
}

#[test]
fn publish_throughput() {
    let _g = serial();
    let server = Server::start();
    let r = run(&server, &["publish", "-k", "8", "-d", "2s"]);
    check_no_loss(&r);
    assert!(f(&r, "publishes_per_sec") > 100.0, "{r:#}");
    assert!(f(&r["http_latency_ms"], "p50_ms") > 0.0);
    assert!(r["cpu"]["server_cpu_s"].as_f64().unwrap() > 0.0, "{r:#}");
    // HTTP only, no subscribers.
    let r = run(&server, &["publish", "-k", "4", "-d", "1s", "-n", "0"]);
    assert!(u(&r, "published_ok") > 0, "{r:#}");
    assert_eq!(u(&r, "published_failed"), 0, "{r:#}");
}

#[test]
fn publish_rejects_a_wrong_secret() {
    let _g = serial();
    let server = Server::start();
    let r = run(
        &server,
        &[
            "publish",
            "-k",
            "1",
            "-d",
            "300ms",
            "-n",
            "0",
            "--app-secret",
            "wrong",
        ],
    );
    assert_eq!(u(&r, "published_ok"), 0, "{r:#}");
    assert!(u(&r, "published_failed") > 0, "{r:#}");
    assert!(
        r["publish_failures"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.contains("401")),
        "{r:#}"
    );
}

#[test]
fn churn_cycles_and_rss() {
    let _g = serial();
    let server = Server::start();
    let r = run(
        &server,
        &[
            "churn",
            "-n",
            "50",
            "--cycles",
            "4",
            "--rounds",
            "2",
            "--kinds",
            "public,presence",
            "--settle",
            "300ms",
            "--sample-interval",
            "100ms",
        ],
    );
    assert_eq!(u(&r, "cycles_completed"), 400, "{r:#}");
    assert_eq!(u(&r, "failed"), 0, "{r:#}");
    assert!(f(&r, "cycles_per_sec") > 1.0);
    let ratio = f(&r, "server_rss_final_over_before");
    assert!(ratio > 0.2 && ratio < 5.0, "{r:#}");
    assert!(f(&r, "server_rss_last_over_first_round") > 0.2, "{r:#}");
    assert_eq!(
        r["server_rss_after_each_round_bytes"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(!r["server_rss_series"].as_array().unwrap().is_empty());
    assert!(r["cpu"]["other_cores"].is_number(), "{r:#}");
}

#[test]
fn storm_reconnects_after_server_restart() {
    let _g = serial();
    let mut server = Server::start();
    let port = server.port;
    let mut child = bench_cmd(
        &server,
        &[
            "churn",
            "--storm",
            "-n",
            "200",
            "--storm-timeout",
            "60s",
            "--reconnect-jitter",
            "200ms",
        ],
    )
    .spawn()
    .expect("run herald-bench");
    // Wait (bounded) until the tool says it holds the connections.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("holding 200 connections") => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("herald-bench never reported holding its connections");
            }
        }
    }
    // Crash the server and start a new one on the same port.
    server.kill();
    let _server2 = Server::start_on(port);
    let r = wait_report(child, Duration::from_secs(90));
    assert_eq!(u(&r, "held"), 200, "{r:#}");
    assert_eq!(r["all_reconnected"], true, "{r:#}");
    assert_eq!(u(&r, "dropped_conns"), 200, "{r:#}");
    let t = f(&r, "seconds_first_drop_to_all_resubscribed");
    assert!(t > 0.0 && t < 60.0, "{r:#}");
    assert_eq!(u(&r["reconnect_ms"], "count"), 200, "{r:#}");
}
