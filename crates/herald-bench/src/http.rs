//! A minimal keep-alive HTTP/1.1 client (hyper) for the signed Pusher HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::clock::unix_secs;
use crate::pusher::split_url;
use crate::sign;

#[derive(Debug)]
pub struct HttpTarget {
    pub addr: SocketAddr,
    pub authority: String,
    /// `{prefix}/apps/{app_id}/events`
    pub events_path: String,
    pub key: String,
    pub secret: String,
}

impl HttpTarget {
    pub async fn resolve(
        url: &str,
        app_id: &str,
        key: &str,
        secret: &str,
    ) -> anyhow::Result<HttpTarget> {
        let (scheme, host, port, prefix) = split_url(url)?;
        if scheme != "http" {
            bail!("only http:// URLs are supported (got {url})");
        }
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .ok_or_else(|| anyhow!("{host} did not resolve"))?;
        Ok(HttpTarget {
            addr,
            authority: format!("{host}:{port}"),
            events_path: format!("{prefix}/apps/{app_id}/events"),
            key: key.to_string(),
            secret: secret.to_string(),
        })
    }
}

/// One keep-alive connection; reconnects after errors.
pub struct HttpConn {
    target: Arc<HttpTarget>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpConn {
    pub fn new(target: Arc<HttpTarget>) -> Self {
        HttpConn {
            target,
            sender: None,
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .map_err(|e| crate::pusher::reason_of_io("http connect", &e))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("http handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// POSTs a signed `events` request. `Err` is a failure reason.
    pub async fn post_event(&mut self, body: Bytes) -> Result<(), String> {
        let t = &self.target;
        let query = sign::signed_query(
            &t.key,
            &t.secret,
            "POST",
            &t.events_path,
            &body,
            unix_secs(),
        );
        let req = Request::post(format!("{}?{query}", t.events_path))
            .header(HOST, t.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        if self.sender.is_none() {
            self.sender = Some(self.connect().await?);
        }
        let sender = self.sender.as_mut().expect("connected");
        if sender.ready().await.is_err() {
            self.sender = None;
            return Err("http: connection closed".into());
        }
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(format!(
                    "http: {}",
                    if e.is_canceled() {
                        "canceled".to_string()
                    } else {
                        e.to_string()
                    }
                ));
            }
        };
        let status = resp.status();
        let body = resp.into_body().collect().await;
        if body.is_err() {
            self.sender = None;
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("http status {}", status.as_u16()))
        }
    }
}

/// The body of a Pusher `events` request whose `data` is `data` (no characters to escape but `"`).
pub fn event_body(event: &str, channel: &str, data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + 64 + channel.len());
    s.push_str(r#"{"name":""#);
    s.push_str(event);
    s.push_str(r#"","channels":[""#);
    s.push_str(channel);
    s.push_str(r#""],"data":""#);
    for ch in data.chars() {
        match ch {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c => s.push(c),
        }
    }
    s.push_str("\"}");
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_body_is_valid_pusher_json() {
        let data = crate::pusher::bench_data(
            crate::pusher::BenchData {
                c: 1,
                k: 2,
                s: 3,
                t: 4,
            },
            100,
        );
        let body = event_body("bench", "bench-1", &data);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["name"], "bench");
        assert_eq!(v["channels"][0], "bench-1");
        assert_eq!(v["data"].as_str().unwrap(), data);
    }
}
