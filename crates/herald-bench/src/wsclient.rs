//! The load generator's WebSocket client: just what a Pusher client needs (RFC 6455 client
//! handshake, text frames, ping/pong, close), with as little work per received frame as
//! possible, because on a small box the tool's CPU is taken from the server it measures.
//!
//! Received frames are parsed in place in one per-connection buffer and handed out as borrowed
//! `&str`; nothing is allocated per message. Outgoing frames are masked as RFC 6455 requires of
//! clients (with a fixed key: masking defends browsers against proxy cache poisoning, which a
//! load generator does not need).
//!
//! With `--deflate` the client offers permessage-deflate as Chromium does and inflates what
//! comes compressed (RSV1): per message with a per-thread decompressor when the server announced
//! `server_no_context_takeover`, else with a decompressor kept per connection. It sends
//! uncompressed, which the extension allows.

use std::ops::Range;

use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest HTTP response head accepted during the handshake.
const MAX_HEAD: usize = 16 * 1024;
/// Largest message accepted (a Pusher server's default limit is far below).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A frame or message received from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    Text(&'a str),
    /// A close frame, with its status code if it had one.
    Close(Option<u16>),
}

/// Why a connection failed, worded for the tool's failure table.
#[derive(Debug)]
pub enum WsError {
    Io(std::io::Error),
    /// The server closed the TCP connection without a close frame.
    Eof,
    Protocol(&'static str),
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsError::Io(e) => write!(f, "{:?}", e.kind()),
            WsError::Eof => f.write_str("connection closed"),
            WsError::Protocol(p) => write!(f, "protocol: {p}"),
        }
    }
}

impl From<std::io::Error> for WsError {
    fn from(e: std::io::Error) -> WsError {
        WsError::Io(e)
    }
}

pub struct Ws {
    stream: TcpStream,
    /// Received bytes; `buf[start..]` is not parsed yet.
    buf: Vec<u8>,
    start: usize,
    /// A fragmented message being assembled.
    fragments: Vec<u8>,
    /// The opcode of the message in `fragments` (1 text, 2 binary); `Some(0)` once a complete
    /// text message was returned from it.
    fragment_opcode: Option<u8>,
    /// Set when permessage-deflate was negotiated.
    deflate: Option<Box<Inflater>>,
    /// Whether the message in `fragments` is compressed.
    fragments_compressed: bool,
    /// The last inflated message.
    inflated: Vec<u8>,
}

/// How compressed messages are inflated.
enum Inflater {
    /// Every message on its own (`server_no_context_takeover`): a per-thread decompressor.
    PerMessage,
    /// The server keeps its context: so must this connection.
    Context(Decompress),
}

/// One parsed frame header.
struct Header {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    payload: Range<usize>,
}

impl Ws {
    /// The client handshake on a connected stream. `host` and `path_and_query` come from the
    /// URL. Errors read like `ws handshake: HTTP 404`.
    pub async fn handshake(
        mut stream: TcpStream,
        host: &str,
        path_and_query: &str,
        deflate: bool,
    ) -> Result<Ws, String> {
        let key = generate_key();
        let offer = if deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        let io = |e: std::io::Error| crate::pusher::reason_of_io("ws handshake", &e);
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut buf = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() >= MAX_HEAD {
                return Err("ws handshake: response head too large".into());
            }
            buf.reserve(1024);
            if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                return Err("ws handshake: connection closed".into());
            }
        };
        let head = std::str::from_utf8(&buf[..head_end])
            .map_err(|_| "ws handshake: response head is not UTF-8".to_string())?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| "ws handshake: bad status line".to_string())?;
        if status != 101 {
            return Err(format!("ws handshake: HTTP {status}"));
        }
        let accept = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-accept")
                .then(|| value.trim())
        });
        if accept != Some(derive_accept_key(key.as_bytes()).as_str()) {
            return Err("ws handshake: protocol: wrong Sec-WebSocket-Accept".into());
        }
        let extensions = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_ascii_lowercase())
        });
        let deflate = match extensions {
            Some(ext) if deflate && ext.starts_with("permessage-deflate") => {
                Some(Box::new(if ext.contains("server_no_context_takeover") {
                    Inflater::PerMessage
                } else {
                    Inflater::Context(Decompress::new(false))
                }))
            }
            Some(_) => return Err("ws handshake: protocol: unexpected extension".into()),
            None => None,
        };
        let _ = stream.set_nodelay(true);
        Ok(Ws {
            stream,
            buf,
            start: head_end,
            fragments: Vec::new(),
            fragment_opcode: None,
            deflate,
            fragments_compressed: false,
            inflated: Vec::new(),
        })
    }

    /// Whether permessage-deflate was negotiated.
    pub fn deflate(&self) -> bool {
        self.deflate.is_some()
    }

    /// The next text message or close frame. Pings are answered on the way; binary messages
    /// (which no Pusher server sends) are skipped.
    pub async fn next(&mut self) -> Result<Incoming<'_>, WsError> {
        if self.fragment_opcode == Some(0) {
            // The previous call returned an assembled message from `fragments`.
            self.fragments.clear();
            self.fragment_opcode = None;
        }
        loop {
            let Some(h) = self.parse_header()? else {
                self.fill().await?;
                continue;
            };
            self.start = h.payload.end;
            if h.rsv1 && (self.deflate.is_none() || h.opcode & 0x8 != 0 || h.opcode == 0) {
                return Err(WsError::Protocol("RSV1 without a compressed message"));
            }
            match h.opcode {
                0x1 if h.fin && self.fragment_opcode.is_none() && h.rsv1 => {
                    let compressed = self.buf[h.payload].to_vec();
                    self.inflate(&compressed)?;
                    return std::str::from_utf8(&self.inflated)
                        .map(Incoming::Text)
                        .map_err(|_| WsError::Protocol("text frame is not UTF-8"));
                }
                0x1 if h.fin && self.fragment_opcode.is_none() => {
                    return std::str::from_utf8(&self.buf[h.payload])
                        .map(Incoming::Text)
                        .map_err(|_| WsError::Protocol("text frame is not UTF-8"));
                }
                0x2 if h.fin && self.fragment_opcode.is_none() => {}
                0x1 | 0x2 if self.fragment_opcode.is_none() => {
                    self.fragment_opcode = Some(h.opcode);
                    self.fragments_compressed = h.rsv1;
                    self.fragments.extend_from_slice(&self.buf[h.payload]);
                }
                0x0 if self.fragment_opcode.is_some() => {
                    if self.fragments.len() + h.payload.len() > MAX_MESSAGE {
                        return Err(WsError::Protocol("message too large"));
                    }
                    self.fragments.extend_from_slice(&self.buf[h.payload]);
                    if h.fin {
                        if self.fragment_opcode == Some(0x1) && self.fragments_compressed {
                            self.fragment_opcode = None;
                            let compressed = std::mem::take(&mut self.fragments);
                            self.inflate(&compressed)?;
                            return std::str::from_utf8(&self.inflated)
                                .map(Incoming::Text)
                                .map_err(|_| WsError::Protocol("text message is not UTF-8"));
                        }
                        if self.fragment_opcode == Some(0x1) {
                            self.fragment_opcode = Some(0);
                            return std::str::from_utf8(&self.fragments)
                                .map(Incoming::Text)
                                .map_err(|_| WsError::Protocol("text message is not UTF-8"));
                        }
                        self.fragments.clear();
                        self.fragment_opcode = None;
                    }
                }
                0x8 => {
                    let code = self.buf[h.payload.clone()]
                        .get(..2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]));
                    return Ok(Incoming::Close(code));
                }
                0x9 => {
                    let payload = self.buf[h.payload].to_vec();
                    self.send(0xA, &payload).await?;
                }
                0xA => {}
                _ => return Err(WsError::Protocol("unexpected opcode")),
            }
        }
    }

    /// Inflates one compressed message into `inflated`.
    fn inflate(&mut self, compressed: &[u8]) -> Result<(), WsError> {
        const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
        let invalid = WsError::Protocol("invalid compressed message");
        match self.deflate.as_deref_mut() {
            Some(Inflater::PerMessage) => {
                self.inflated =
                    herald_ws::deflate::inflate(compressed, MAX_MESSAGE).map_err(|_| invalid)?;
            }
            Some(Inflater::Context(d)) => {
                self.inflated.clear();
                for input in [compressed, &TAIL[..]] {
                    let mut consumed = 0;
                    loop {
                        self.inflated.reserve(input.len().max(1024) * 4);
                        let before = d.total_in();
                        let status = d
                            .decompress_vec(
                                &input[consumed..],
                                &mut self.inflated,
                                FlushDecompress::Sync,
                            )
                            .map_err(|_| WsError::Protocol("invalid compressed message"))?;
                        consumed += (d.total_in() - before) as usize;
                        if self.inflated.len() > MAX_MESSAGE {
                            return Err(WsError::Protocol("message too large"));
                        }
                        let full = self.inflated.len() == self.inflated.capacity();
                        if (consumed == input.len() && !full) || status == Status::StreamEnd {
                            break;
                        }
                    }
                }
            }
            None => return Err(invalid),
        }
        Ok(())
    }

    pub async fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        self.send(0x1, text.as_bytes()).await
    }

    /// Sends a close frame (1000); does not wait for the server's.
    pub async fn close(&mut self) -> Result<(), WsError> {
        self.send(0x8, &1000u16.to_be_bytes()).await
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), WsError> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Parses the frame at `buf[start..]` if it is complete.
    fn parse_header(&self) -> Result<Option<Header>, WsError> {
        let b = &self.buf[self.start..];
        if b.len() < 2 {
            return Ok(None);
        }
        if b[1] & 0x80 != 0 {
            return Err(WsError::Protocol("server frames must not be masked"));
        }
        let (len, header) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")),
                10,
            ),
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_MESSAGE)
            .ok_or(WsError::Protocol("frame too large"))?;
        if b.len() < header + len {
            return Ok(None);
        }
        let begin = self.start + header;
        if b[0] & 0x30 != 0 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        Ok(Some(Header {
            fin: b[0] & 0x80 != 0,
            rsv1: b[0] & 0x40 != 0,
            opcode: b[0] & 0x0f,
            payload: begin..begin + len,
        }))
    }

    /// Reads more bytes, first moving what is left to the front of the buffer.
    async fn fill(&mut self) -> Result<(), WsError> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < 2048 {
            self.buf.reserve(8192);
        }
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(WsError::Eof),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;

    /// A real tungstenite server on the other end: every kind of frame this client must read,
    /// and every frame it sends must pass tungstenite's checks (masking, UTF-8).
    #[tokio::test]
    async fn talks_to_a_tungstenite_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            ws.send(Message::text("small")).await.unwrap();
            ws.send(Message::text("x".repeat(70_000))).await.unwrap();
            ws.send(Message::Ping(b"are you there".to_vec().into()))
                .await
                .unwrap();
            let echo = ws.next().await.unwrap().unwrap();
            ws.send(echo).await.unwrap();
            // The client answers the ping when it reads on after sending the text.
            let reply = ws.next().await.unwrap().unwrap();
            assert_eq!(reply, Message::Pong(b"are you there".to_vec().into()));
            ws.close(Some(CloseFrame {
                code: CloseCode::from(4200),
                reason: "bye".into(),
            }))
            .await
            .unwrap();
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut ws = Ws::handshake(tcp, &addr.to_string(), "/app/key?protocol=7", false)
            .await
            .unwrap();
        assert_eq!(ws.next().await.unwrap(), Incoming::Text("small"));
        match ws.next().await.unwrap() {
            Incoming::Text(t) => assert_eq!(t.len(), 70_000),
            other => panic!("{other:?}"),
        }
        let long = "é".repeat(200);
        ws.send_text(&long).await.unwrap();
        // The ping is answered inside `next`, on the way to the echo.
        assert_eq!(ws.next().await.unwrap(), Incoming::Text(long.as_str()));
        assert_eq!(ws.next().await.unwrap(), Incoming::Close(Some(4200)));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn refused_upgrade_is_reported_with_its_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = tcp.read(&mut head).await.unwrap();
            tcp.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let err = Ws::handshake(tcp, &addr.to_string(), "/nope", false)
            .await
            .err()
            .unwrap();
        assert_eq!(err, "ws handshake: HTTP 404");
    }

    /// A server that negotiates deflate and sends compressed frames, whole and in fragments,
    /// mixed with plain ones: the client inflates each.
    #[tokio::test]
    async fn inflates_compressed_messages() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let text = format!("{{\"event\":\"e\",\"data\":\"{}\"}}", "abc".repeat(300));
        let packed = herald_ws::deflate::compress(text.as_bytes()).unwrap();
        let sent = text.clone();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = vec![0u8; 4096];
            let n = tcp.read(&mut head).await.unwrap();
            let head = String::from_utf8_lossy(&head[..n]).into_owned();
            assert!(head.contains("Sec-WebSocket-Extensions: permessage-deflate"));
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            let res = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n",
                herald_ws::accept_key(key.as_bytes())
            );
            tcp.write_all(res.as_bytes()).await.unwrap();
            let whole = herald_ws::encode(herald_ws::OpCode::Text, true, &packed);
            tcp.write_all(&whole).await.unwrap();
            tcp.write_all(&herald_ws::encode(herald_ws::OpCode::Text, false, b"plain"))
                .await
                .unwrap();
            // Two fragments: RSV1 on the first only.
            let (a, b) = packed.split_at(packed.len() / 2);
            let mut first = herald_ws::encode(herald_ws::OpCode::Text, true, a).to_vec();
            first[0] &= 0x7f;
            let mut second = herald_ws::encode(herald_ws::OpCode::Text, false, b).to_vec();
            second[0] &= 0xf0;
            second[0] |= 0x80;
            tcp.write_all(&first).await.unwrap();
            tcp.write_all(&second).await.unwrap();
            tcp.write_all(&herald_ws::close_frame(1000, ""))
                .await
                .unwrap();
            let _ = tcp.read(&mut [0u8; 64]).await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut ws = Ws::handshake(tcp, &addr.to_string(), "/app/key?protocol=7", true)
            .await
            .unwrap();
        assert!(ws.deflate());
        assert_eq!(ws.next().await.unwrap(), Incoming::Text(sent.as_str()));
        assert_eq!(ws.next().await.unwrap(), Incoming::Text("plain"));
        assert_eq!(ws.next().await.unwrap(), Incoming::Text(sent.as_str()));
        assert_eq!(ws.next().await.unwrap(), Incoming::Close(Some(1000)));
    }
}
