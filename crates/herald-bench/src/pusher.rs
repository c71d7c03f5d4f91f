//! The client side of the public Pusher Channels protocol v7 over WebSocket.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::TcpSocket;

use crate::sign;
pub use crate::wsclient::{Incoming, Ws};

/// Where and as whom to connect.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WsTarget {
    /// Base URL, e.g. `ws://127.0.0.1:6001`.
    pub url: String,
    pub app_key: String,
    pub app_secret: String,
    /// Offer permessage-deflate.
    #[serde(default)]
    pub deflate: bool,
}

/// A resolved [`WsTarget`].
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `host:port` for the `Host` header.
    pub host: String,
    /// Path and query of the pusher-js style connection.
    pub path: String,
    pub key: String,
    pub secret: String,
    pub deflate: bool,
}

impl Endpoint {
    pub async fn resolve(t: &WsTarget) -> anyhow::Result<Endpoint> {
        let (scheme, host, port, prefix) = split_url(&t.url)?;
        if scheme != "ws" {
            bail!("only ws:// URLs are supported (got {})", t.url);
        }
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .ok_or_else(|| anyhow!("{host} did not resolve"))?;
        Ok(Endpoint {
            addr,
            host: format!("{host}:{port}"),
            path: format!(
                "{prefix}/app/{}?protocol=7&client=js&version=8.4.0&flash=false",
                t.app_key
            ),
            key: t.app_key.clone(),
            secret: t.app_secret.clone(),
            deflate: t.deflate,
        })
    }
}

/// Splits `scheme://host[:port][/prefix]` into its parts (default ports 80/443).
pub fn split_url(url: &str) -> anyhow::Result<(String, String, u16, String)> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("URL without scheme: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let default_port = match scheme {
        "ws" | "http" => 80,
        "wss" | "https" => 443,
        _ => bail!("unsupported scheme in {url}"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h.to_string(), p.parse().context("bad port")?)
        }
        _ => (authority.to_string(), default_port),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((scheme.to_string(), host, port, path.to_string()))
}

/// Why a connection attempt failed; used as the key of the failure table.
pub fn reason_of_io(stage: &str, e: &std::io::Error) -> String {
    let kind = match e.raw_os_error() {
        Some(code) => format!("{:?} (os error {code})", e.kind()),
        None => format!("{:?}", e.kind()),
    };
    format!("{stage}: {kind}")
}

/// Opens TCP (bound to `source` if given) and upgrades to WebSocket. Errors are failure reasons.
pub async fn open(ep: &Endpoint, source: Option<IpAddr>) -> Result<Ws, String> {
    let socket = if ep.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| reason_of_io("socket", &e))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| reason_of_io("bind", &e))?;
    }
    let stream = socket
        .connect(ep.addr)
        .await
        .map_err(|e| reason_of_io("tcp connect", &e))?;
    let ws = Ws::handshake(stream, &ep.host, &ep.path, ep.deflate).await?;
    // A deflate measurement must not silently measure plain connections.
    if ep.deflate && !ws.deflate() {
        return Err("ws handshake: permessage-deflate not negotiated".into());
    }
    Ok(ws)
}

/// The envelope of every Pusher frame.
#[derive(Deserialize)]
pub struct Frame<'a> {
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

impl Frame<'_> {
    /// `data` as a string: Pusher sends most `data` as a JSON-encoded string.
    pub fn data_string(&self) -> Option<String> {
        let raw = self.data?;
        match serde_json::from_str::<String>(raw.get()) {
            Ok(s) => Some(s),
            Err(_) => Some(raw.get().to_string()),
        }
    }
}

pub const PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;

/// Reads frames until `pusher:connection_established`; returns the socket id.
pub async fn await_established(ws: &mut Ws) -> Result<String, String> {
    loop {
        let text = match ws.next().await {
            Err(e) => return Err(format!("read before established: {e}")),
            Ok(Incoming::Close(code)) => {
                return Err(format!(
                    "closed before established: code {}",
                    code.unwrap_or(1005)
                ))
            }
            Ok(Incoming::Text(t)) => t,
        };
        let f: Frame = serde_json::from_str(text)
            .map_err(|_| "unparsable frame before established".to_string())?;
        match f.event.as_ref() {
            "pusher:connection_established" => {
                #[derive(Deserialize)]
                struct Est {
                    socket_id: String,
                }
                let data = f.data_string().unwrap_or_default();
                let est: Est = serde_json::from_str(&data)
                    .map_err(|_| "bad connection_established data".to_string())?;
                return Ok(est.socket_id);
            }
            "pusher:error" => {
                return Err(format!("pusher:error {}", error_code(&f)));
            }
            _ => {}
        }
    }
}

fn error_code(f: &Frame) -> String {
    #[derive(Deserialize)]
    struct E {
        code: Option<i64>,
    }
    let data = f.data_string().unwrap_or_default();
    serde_json::from_str::<E>(&data)
        .ok()
        .and_then(|e| e.code)
        .map(|c| c.to_string())
        .unwrap_or_else(|| "?".into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Public,
    Private,
    Presence,
}

impl std::str::FromStr for ChannelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "public" => Ok(ChannelKind::Public),
            "private" => Ok(ChannelKind::Private),
            "presence" => Ok(ChannelKind::Presence),
            _ => Err(format!(
                "unknown channel kind {s} (public, private, presence)"
            )),
        }
    }
}

/// The `pusher:subscribe` frame for `channel`, signed locally when it's private or presence.
pub fn subscribe_frame(
    ep: &Endpoint,
    socket_id: &str,
    channel: &str,
    kind: ChannelKind,
    user_id: u64,
) -> String {
    let data = match kind {
        ChannelKind::Public => serde_json::json!({ "channel": channel }),
        ChannelKind::Private => serde_json::json!({
            "channel": channel,
            "auth": sign::channel_auth(&ep.key, &ep.secret, socket_id, channel, None),
        }),
        ChannelKind::Presence => {
            let channel_data = format!(r#"{{"user_id":"u{user_id}","user_info":{{}}}}"#);
            serde_json::json!({
                "channel": channel,
                "auth": sign::channel_auth(&ep.key, &ep.secret, socket_id, channel, Some(&channel_data)),
                "channel_data": channel_data,
            })
        }
    };
    serde_json::json!({ "event": "pusher:subscribe", "data": data }).to_string()
}

/// Subscribes to all `channels` and waits for every `subscription_succeeded`.
pub async fn subscribe_all(
    ws: &mut Ws,
    ep: &Endpoint,
    socket_id: &str,
    channels: &[(String, ChannelKind)],
    user_id: u64,
) -> Result<(), String> {
    for (name, kind) in channels {
        let frame = subscribe_frame(ep, socket_id, name, *kind, user_id);
        ws.send_text(&frame)
            .await
            .map_err(|e| format!("send subscribe: {e}"))?;
    }
    let mut pending = channels.len();
    while pending > 0 {
        let text = match ws.next().await {
            Err(e) => return Err(format!("read while subscribing: {e}")),
            Ok(Incoming::Close(code)) => {
                return Err(format!(
                    "closed while subscribing: code {}",
                    code.unwrap_or(1005)
                ))
            }
            Ok(Incoming::Text(t)) => t,
        };
        let Ok(f) = serde_json::from_str::<Frame>(text) else {
            continue;
        };
        match f.event.as_ref() {
            "pusher_internal:subscription_succeeded" => pending -= 1,
            "pusher:subscription_error" => return Err("subscription_error".into()),
            "pusher:error" => return Err(format!("pusher:error {}", error_code(&f))),
            "pusher:ping" => {
                let _ = ws.send_text(PONG).await;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs `fut` with a timeout, mapping expiry to `reason`.
pub async fn within<T>(
    d: Duration,
    reason: &str,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout(d, fut).await {
        Ok(r) => r,
        Err(_) => Err(reason.to_string()),
    }
}

/// The benchmark payload carried in an event's `data` string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchData {
    /// Channel index.
    pub c: u32,
    /// Publisher connection index (one ordered stream per channel and publisher connection).
    pub k: u32,
    /// Sequence number within the stream.
    pub s: u64,
    /// Send time, `CLOCK_MONOTONIC` nanoseconds.
    pub t: u64,
}

pub const BENCH_EVENT: &str = "bench";

/// The `data` string of a benchmark event, padded with `x` to `size` bytes.
pub fn bench_data(d: BenchData, size: usize) -> String {
    let mut s = format!(r#"{{"c":{},"k":{},"s":{},"t":{},"p":""#, d.c, d.k, d.s, d.t);
    let pad = size.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// Finds the benchmark payload in a server frame. Fast path: scan the escaped `data` string
/// for `{\"c\":N,\"k\":N,\"s\":N,\"t\":N`; falls back to full JSON parsing.
pub fn parse_bench(text: &str) -> Option<BenchData> {
    fast_parse(text).or_else(|| slow_parse(text))
}

fn fast_parse(text: &str) -> Option<BenchData> {
    let b = text.as_bytes();
    let start = find(b, br#"{\"c\":"#)?;
    let mut i = start + br#"{\"c\":"#.len();
    let c = number(b, &mut i)?;
    i = expect(b, i, br#",\"k\":"#)?;
    let k = number(b, &mut i)?;
    i = expect(b, i, br#",\"s\":"#)?;
    let s = number(b, &mut i)?;
    i = expect(b, i, br#",\"t\":"#)?;
    let t = number(b, &mut i)?;
    Some(BenchData {
        c: c as u32,
        k: k as u32,
        s,
        t,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn expect(b: &[u8], i: usize, lit: &[u8]) -> Option<usize> {
    (b.get(i..i + lit.len())? == lit).then_some(i + lit.len())
}

fn number(b: &[u8], i: &mut usize) -> Option<u64> {
    let start = *i;
    let mut v: u64 = 0;
    while let Some(d) = b.get(*i).filter(|d| d.is_ascii_digit()) {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        *i += 1;
    }
    (*i > start).then_some(v)
}

fn slow_parse(text: &str) -> Option<BenchData> {
    let f: Frame = serde_json::from_str(text).ok()?;
    if f.event != BENCH_EVENT {
        return None;
    }
    #[derive(Deserialize)]
    struct D {
        c: u32,
        k: u32,
        s: u64,
        t: u64,
    }
    let d: D = serde_json::from_str(&f.data_string()?).ok()?;
    Some(BenchData {
        c: d.c,
        k: d.k,
        s: d.s,
        t: d.t,
    })
}

/// Is this frame a `pusher:ping`?
pub fn is_ping(text: &str) -> bool {
    text.len() < 200 && text.contains("\"pusher:ping\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("ws://127.0.0.1:6001").unwrap(),
            ("ws".into(), "127.0.0.1".into(), 6001, "".into())
        );
        assert_eq!(
            split_url("http://localhost/prefix/").unwrap(),
            ("http".into(), "localhost".into(), 80, "/prefix".into())
        );
        assert_eq!(split_url("ws://[::1]:7000").unwrap().1, "::1");
    }

    #[test]
    fn bench_data_roundtrip_through_server_envelope() {
        let d = BenchData {
            c: 3,
            k: 1,
            s: 42,
            t: 123_456_789,
        };
        let data = bench_data(d, 1024);
        assert_eq!(data.len(), 1024);
        let frame = serde_json::json!({"event": BENCH_EVENT, "channel": "bench-3", "data": data})
            .to_string();
        assert_eq!(fast_parse(&frame), Some(d));
        assert_eq!(slow_parse(&frame), Some(d));
        // Field order chosen by another server must not matter.
        let other = format!(
            r#"{{"channel":"bench-3","data":{},"event":"bench"}}"#,
            serde_json::to_string(&data).unwrap()
        );
        assert_eq!(parse_bench(&other), Some(d));
        // Small sizes still carry the header.
        assert_eq!(
            parse_bench(&serde_json::json!({"event":"bench","data":bench_data(d, 1)}).to_string()),
            Some(d)
        );
    }

    #[test]
    fn non_bench_frames_are_ignored() {
        assert_eq!(parse_bench(r#"{"event":"pusher:ping","data":{}}"#), None);
        assert!(is_ping(r#"{"event":"pusher:ping","data":{}}"#));
        assert!(!is_ping(r#"{"event":"pusher:pong","data":{}}"#));
    }

    #[test]
    fn presence_subscribe_is_signed_with_channel_data() {
        let ep = Endpoint {
            addr: "127.0.0.1:1".parse().unwrap(),
            host: String::new(),
            path: String::new(),
            key: "app-key".into(),
            secret: "app-secret".into(),
            deflate: false,
        };
        let f = subscribe_frame(&ep, "1.2", "presence-a", ChannelKind::Presence, 7);
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        let cd = v["data"]["channel_data"].as_str().unwrap();
        assert_eq!(cd, r#"{"user_id":"u7","user_info":{}}"#);
        let expected = sign::channel_auth("app-key", "app-secret", "1.2", "presence-a", Some(cd));
        assert_eq!(v["data"]["auth"], expected.as_str());
        let p = subscribe_frame(&ep, "1.2", "public-a", ChannelKind::Public, 7);
        assert_eq!(
            p,
            r#"{"data":{"channel":"public-a"},"event":"pusher:subscribe"}"#
        );
    }
}
