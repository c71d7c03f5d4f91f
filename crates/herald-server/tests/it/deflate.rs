//! permessage-deflate over real sockets: what is negotiated with which offer, events reaching
//! compressed and plain subscribers alike (compressed once for all of them), compressed client
//! messages, and the hostile cases (a decompression bomb, a compressed control frame) closed
//! with their codes while a canary on the same node notices nothing.

use std::net::SocketAddr;

use herald_ws::deflate::{compress_always, inflate};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestServer, WAIT};

/// A raw client that offers `extensions` and can send compressed frames.
struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server's `Sec-WebSocket-Extensions` answer, if any.
    extensions: Option<String>,
}

/// One masked client frame; `rsv1` marks it compressed.
fn frame(opcode: u8, rsv1: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | if rsv1 { 0x40 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0xa1, 0xb2, 0xc3, 0xd4];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// A server frame: opcode, RSV1, payload.
type ServerFrame = (u8, bool, Vec<u8>);

impl Ws {
    async fn connect(addr: SocketAddr, path: &str, headers: &str) -> Ws {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut ws = Ws {
            stream,
            buf: Vec::new(),
            extensions: None,
        };
        let end = loop {
            if let Some(i) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(ws.fill().await > 0, "closed during the handshake");
        };
        let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        ws.extensions = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        ws.buf.drain(..end);
        ws
    }

    /// A Pusher client of the default app offering `offer` (none when empty).
    async fn pusher(addr: SocketAddr, offer: &str) -> Ws {
        let headers = if offer.is_empty() {
            String::new()
        } else {
            format!("Sec-WebSocket-Extensions: {offer}\r\n")
        };
        let mut ws = Ws::connect(addr, "/app/app-key?protocol=7", &headers).await;
        assert_eq!(
            ws.expect_text().await["event"],
            "pusher:connection_established"
        );
        ws
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("timed out waiting for the server")
            .expect("read failed");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    async fn next_frame(&mut self) -> Option<ServerFrame> {
        loop {
            if self.buf.len() >= 2 {
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                        4,
                    ),
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let head = self.buf[0];
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((head & 0x0f, head & 0x40 != 0, payload));
                }
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// The next text message, inflated if it came compressed, with whether it did.
    async fn next_text(&mut self) -> (Value, bool) {
        loop {
            match self.next_frame().await {
                Some((1, compressed, payload)) => {
                    let text = if compressed {
                        assert!(self.extensions.is_some(), "RSV1 without deflate");
                        inflate(&payload, 1 << 20).expect("valid deflate")
                    } else {
                        payload
                    };
                    return (serde_json::from_slice(&text).unwrap(), compressed);
                }
                Some((9 | 10, _, _)) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn expect_text(&mut self) -> Value {
        self.next_text().await.0
    }

    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    async fn send_json(&mut self, value: &Value, compressed: bool) {
        let text = value.to_string();
        let bytes = if compressed {
            frame(1, true, &compress_always(text.as_bytes(), 15))
        } else {
            frame(1, false, text.as_bytes())
        };
        self.send(&bytes).await;
    }

    /// Skips text frames until the close frame; returns its code.
    async fn expect_close(&mut self) -> u16 {
        loop {
            match self.next_frame().await {
                Some((8, _, payload)) => return u16::from_be_bytes([payload[0], payload[1]]),
                Some((1 | 9 | 10, _, _)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

const CHROMIUM: &str = "permessage-deflate; client_max_window_bits";
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A realistic broadcast: an order with its user and items, as a Laravel event carries it.
fn order_json() -> String {
    let items: Vec<Value> = (1..=6)
        .map(|i| {
            json!({"id": 1000 + i, "order_id": 42, "product_id": 300 + i, "name": format!("Product {i}"),
                   "quantity": i, "unit_price": "19.99", "created_at": "2026-01-05T10:00:00.000000Z",
                   "updated_at": "2026-01-05T10:00:00.000000Z"})
        })
        .collect();
    json!({"order": {"id": 42, "status": "shipped", "total": "119.94", "currency": "EUR",
        "user": {"id": 7, "name": "Ada Lovelace", "email": "ada@example.com",
                 "created_at": "2025-12-01T09:00:00.000000Z"},
        "items": items}})
    .to_string()
}

#[tokio::test]
async fn browser_and_node_offers_are_answered_without_context_takeover() {
    let server = TestServer::default().await;
    for offer in [
        CHROMIUM,
        "permessage-deflate",
        "permessage-deflate; client_max_window_bits=15; client_no_context_takeover",
    ] {
        let ws = Ws::pusher(server.addr, offer).await;
        assert_eq!(ws.extensions.as_deref(), Some(ANSWER), "{offer}");
    }
    for offer in ["", "x-webkit-deflate-frame", "permessage-deflate; foo=1"] {
        let ws = Ws::pusher(server.addr, offer).await;
        assert_eq!(ws.extensions, None, "{offer}");
    }
    // Safari 15.0-15.3 cannot honour client_no_context_takeover: no deflate for it.
    let safari = "User-Agent: Mozilla/5.0 (iPhone; CPU iPhone OS 15_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/15.2 Mobile/15E148 Safari/604.1\r\n";
    let ws = Ws::connect(
        server.addr,
        "/app/app-key?protocol=7",
        &format!("Sec-WebSocket-Extensions: {CHROMIUM}\r\n{safari}"),
    )
    .await;
    assert_eq!(ws.extensions, None);
}

#[tokio::test]
async fn deflate_is_off_per_app_and_per_node() {
    let server = TestServer::start(|c| {
        let mut app = herald_core::App::new("2", "plain-key", "plain-secret");
        app.deflate = false;
        c.apps = vec![herald_core::App::demo(), app];
    })
    .await;
    let on = Ws::pusher(server.addr, CHROMIUM).await;
    assert_eq!(on.extensions.as_deref(), Some(ANSWER));
    let headers = format!("Sec-WebSocket-Extensions: {CHROMIUM}\r\n");
    let mut off = Ws::connect(server.addr, "/app/plain-key?protocol=7", &headers).await;
    assert_eq!(off.extensions, None, "app 2 turned deflate off");
    assert_eq!(
        off.expect_text().await["event"],
        "pusher:connection_established"
    );

    let node_off = TestServer::start(|c| c.deflate = false).await;
    let ws = Ws::pusher(node_off.addr, CHROMIUM).await;
    assert_eq!(ws.extensions, None, "the node turned deflate off");
}

#[tokio::test]
async fn compressed_and_plain_subscribers_receive_the_same_events() {
    let server = TestServer::default().await;
    let mut deflated = Ws::pusher(server.addr, CHROMIUM).await;
    let mut plain = Ws::pusher(server.addr, "").await;
    let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": "orders"}});
    // The browser compresses what it sends.
    deflated.send_json(&subscribe, true).await;
    plain.send_json(&subscribe, false).await;
    for ws in [&mut deflated, &mut plain] {
        assert_eq!(
            ws.expect_text().await["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    let order = order_json();
    server.trigger("orders", "order.shipped", &order).await;
    server.trigger("orders", "tiny", "1").await;
    let (big_d, compressed) = deflated.next_text().await;
    assert!(compressed, "a 1 KB event goes compressed");
    let (big_p, compressed) = plain.next_text().await;
    assert!(!compressed);
    assert_eq!(big_d, big_p);
    assert_eq!(big_d["data"], order);
    let (tiny_d, compressed) = deflated.next_text().await;
    assert!(!compressed, "a tiny event is not worth compressing");
    assert_eq!(tiny_d, plain.next_text().await.0);
}

#[tokio::test]
async fn compressed_ping_and_fragments_are_inflated() {
    let server = TestServer::default().await;
    let mut ws = Ws::pusher(server.addr, CHROMIUM).await;
    ws.send_json(&json!({"event": "pusher:ping", "data": {}}), true)
        .await;
    assert_eq!(ws.expect_text().await["event"], "pusher:pong");
    // A compressed message in two fragments: RSV1 on the first only.
    let text = json!({"event": "pusher:subscribe", "data": {"channel": "frag"}}).to_string();
    let packed = compress_always(text.as_bytes(), 15);
    let (a, b) = packed.split_at(packed.len() / 2);
    let mut first = frame(1, true, a);
    first[0] &= 0x7f; // not final
    ws.send(&first).await;
    ws.send(&frame(0, false, b)).await;
    assert_eq!(
        ws.expect_text().await["event"],
        "pusher_internal:subscription_succeeded"
    );
}

/// A client subscribed to a public channel, checked after each hostile case.
async fn canary_check(server: &TestServer, canary: &mut Ws, n: u32) {
    server.trigger("canary", "alive", &n.to_string()).await;
    let (event, _) = canary.next_text().await;
    assert_eq!(event["event"], "alive");
    assert_eq!(event["data"], n.to_string());
}

#[tokio::test]
async fn hostile_compressed_frames_are_closed_with_their_codes() {
    let server = TestServer::default().await;
    let mut canary = Ws::pusher(server.addr, CHROMIUM).await;
    canary
        .send_json(
            &json!({"event": "pusher:subscribe", "data": {"channel": "canary"}}),
            true,
        )
        .await;
    canary.expect_text().await;

    // A decompression bomb: 40 KB on the wire at most, 64 MiB inflated; the limit is 64 KiB.
    let bomb = compress_always(&vec![b' '; 64 << 20], 15);
    assert!(bomb.len() < 100 * 1024, "{}", bomb.len());
    let mut ws = Ws::pusher(server.addr, CHROMIUM).await;
    ws.send(&frame(1, true, &bomb)).await;
    let error = ws.expect_text().await;
    assert_eq!(error["event"], "pusher:error", "{error}");
    assert_eq!(ws.expect_close().await, 1009, "decompression bomb");
    canary_check(&server, &mut canary, 1).await;

    // A compressed control frame.
    let mut ws = Ws::pusher(server.addr, CHROMIUM).await;
    ws.send(&frame(9, true, b"")).await;
    assert_eq!(ws.expect_close().await, 1002, "compressed ping");
    canary_check(&server, &mut canary, 2).await;

    // RSV1 on a continuation frame.
    let mut ws = Ws::pusher(server.addr, CHROMIUM).await;
    let mut first = frame(1, false, b"{");
    first[0] &= 0x7f;
    ws.send(&first).await;
    ws.send(&frame(0, true, b"}")).await;
    assert_eq!(ws.expect_close().await, 1002, "RSV1 on a continuation");
    canary_check(&server, &mut canary, 3).await;

    // RSV1 without deflate negotiated.
    let mut ws = Ws::pusher(server.addr, "").await;
    ws.send(&frame(1, true, &compress_always(b"{}", 15))).await;
    assert_eq!(ws.expect_close().await, 1002, "RSV1 without negotiation");
    canary_check(&server, &mut canary, 4).await;

    // Corrupt compressed data.
    let mut ws = Ws::pusher(server.addr, CHROMIUM).await;
    ws.send(&frame(1, true, &[0xff; 32])).await;
    assert_eq!(ws.expect_close().await, 1002, "corrupt deflate data");
    canary_check(&server, &mut canary, 5).await;

    // Invalid UTF-8 inside a compressed text message.
    let mut ws = Ws::pusher(server.addr, CHROMIUM).await;
    ws.send(&frame(1, true, &compress_always(b"\"\xff\xfe\"", 15)))
        .await;
    assert_eq!(ws.expect_close().await, 1007, "compressed invalid UTF-8");
    canary_check(&server, &mut canary, 6).await;
}

#[tokio::test]
async fn compressed_messages_over_the_budget_are_refused_without_inflating() {
    let server = TestServer::start(|c| c.limits.max_messages_per_second = 3).await;
    let mut ws = Ws::pusher(server.addr, CHROMIUM).await;
    let ping = json!({"event": "pusher:ping", "data": {}});
    let mut burst = Vec::new();
    for _ in 0..3 {
        let packed = compress_always(ping.to_string().as_bytes(), 15);
        burst.extend(frame(1, true, &packed));
    }
    // Inflated, this one would close the connection with 1009; over the budget it is never
    // inflated, only refused.
    burst.extend(frame(1, true, &compress_always(&vec![b' '; 1 << 20], 15)));
    ws.send(&burst).await;
    for _ in 0..3 {
        assert_eq!(ws.expect_text().await["event"], "pusher:pong");
    }
    let refused = ws.expect_text().await;
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    assert_eq!(refused["data"]["code"], 4301, "{refused}");
    // Still open: the next message within the budget is answered.
    ws.send_json(&ping, true).await;
    let (reply, _) = ws.next_text().await;
    assert!(
        reply["event"] == "pusher:pong" || reply["data"]["code"] == 4301,
        "{reply}"
    );
}
