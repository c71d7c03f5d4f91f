//! The server's half of the opening handshake (RFC 6455 §4.2.2) and the permessage-deflate
//! negotiation (RFC 7692 §5, §7.1).
//!
//! herald always answers `server_no_context_takeover` (every message it sends is compressed on
//! its own, so one compressed frame serves every subscriber) and asks for
//! `client_no_context_takeover` (every message a client sends inflates on its own, with a
//! decompressor per thread instead of a 32 KB window per socket). A server may include both
//! whatever the offer says (§7.1.1.1, §7.1.1.2). A client that cannot honour the second is
//! refused deflate instead of given a window.

use base64::Engine;
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// What a socket negotiated for permessage-deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The client's `server_max_window_bits` (8 to 15; 15 when it set none). herald compresses
    /// with a 32 KB window once for everyone, so a socket with a smaller window gets the
    /// compressed form only of messages no longer than its window: no back-reference in them
    /// can reach further.
    pub server_max_window_bits: u8,
}

impl Deflate {
    /// The longest message this socket may receive compressed.
    pub fn max_compressed_message(self) -> usize {
        if self.server_max_window_bits >= 15 {
            usize::MAX
        } else {
            1 << self.server_max_window_bits
        }
    }

    /// The `Sec-WebSocket-Extensions` response header value.
    pub fn response(self) -> String {
        let mut res = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if self.server_max_window_bits < 15 {
            res.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        res
    }
}

/// Picks the first acceptable permessage-deflate offer among the `Sec-WebSocket-Extensions`
/// header values, or `None` to use no extension.
///
/// An offer with an unknown, repeated or malformed parameter is declined (RFC 7692 §7.1).
/// Safari 15.0 to 15.3 do not honour `client_no_context_takeover` (they fail the connection), so
/// they get no deflate rather than a 32 KB inflate window per socket.
pub fn negotiate_deflate<'a>(
    offers: impl IntoIterator<Item = &'a str>,
    user_agent: Option<&str>,
) -> Option<Deflate> {
    if user_agent.is_some_and(ignores_client_no_context_takeover) {
        return None;
    }
    offers
        .into_iter()
        .flat_map(|value| value.split(','))
        .find_map(parse_offer)
}

fn parse_offer(offer: &str) -> Option<Deflate> {
    let mut params = offer.split(';').map(str::trim);
    if !params.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = [false; 4];
    let mut deflate = Deflate {
        server_max_window_bits: 15,
    };
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        let idx = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                deflate.server_max_window_bits = window_bits(value?)?;
                2
            }
            "client_max_window_bits" => {
                if let Some(value) = value {
                    window_bits(value)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[idx], true) {
            return None;
        }
    }
    Some(deflate)
}

/// RFC 7692 §7.1.2: a decimal 8 to 15, no leading zero.
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// WebKit 15.0–15.3: Safari (`Version/15.N ... Safari/`, not a Chromium), and every browser and
/// web view on iOS 15.0–15.3 (`iPhone OS 15_N` or `CPU OS 15_N`), which all run Safari's WebKit.
fn ignores_client_no_context_takeover(user_agent: &str) -> bool {
    let minor_at_most_3 = |after: &str| {
        let minor: String = after.chars().take_while(char::is_ascii_digit).collect();
        minor.parse::<u32>().is_ok_and(|m| m <= 3)
    };
    let ios = ["iPhone OS 15_", "CPU OS 15_"]
        .iter()
        .filter_map(|marker| user_agent.split_once(marker))
        .any(|(_, after)| minor_at_most_3(after));
    let safari = user_agent.contains("Safari/")
        && !user_agent.contains("Chrome/")
        && user_agent
            .split_once("Version/15.")
            .is_some_and(|(_, after)| minor_at_most_3(after));
    ios || safari
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn browser_and_node_offers_are_accepted() {
        let full = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        for offer in [
            "permessage-deflate; client_max_window_bits", // Chromium, Node's ws
            "permessage-deflate",                         // Firefox
            "permessage-deflate; client_max_window_bits=15",
            "x-webkit-deflate-frame, permessage-deflate",
        ] {
            let deflate = negotiate_deflate([offer], None).expect(offer);
            assert_eq!(deflate.response(), full, "{offer}");
            assert_eq!(deflate.max_compressed_message(), usize::MAX);
        }
        let small =
            negotiate_deflate(["permessage-deflate; server_max_window_bits=9"], None).unwrap();
        assert_eq!(small.max_compressed_message(), 512);
        assert!(small.response().ends_with("; server_max_window_bits=9"));
    }

    #[test]
    fn malformed_offers_are_declined_and_the_next_is_tried() {
        for offer in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=016",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover=1",
            "deflate-frame",
        ] {
            assert_eq!(negotiate_deflate([offer], None), None, "{offer}");
        }
        let second = negotiate_deflate(
            ["permessage-deflate; foo, permessage-deflate; server_max_window_bits=10"],
            None,
        );
        assert_eq!(second.unwrap().server_max_window_bits, 10);
    }

    #[test]
    fn old_safari_gets_no_deflate() {
        let safari_15_2 = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/15.2 Safari/605.1.15";
        let safari_15_4 = safari_15_2.replace("15.2", "15.4");
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        let offer = ["permessage-deflate; client_max_window_bits"];
        assert_eq!(negotiate_deflate(offer, Some(safari_15_2)), None);
        assert!(negotiate_deflate(offer, Some(&safari_15_4)).is_some());
        assert!(negotiate_deflate(offer, Some(chrome)).is_some());
        // Other iOS 15.0–15.3 browsers and web views run the same WebKit.
        let ios_chrome = "Mozilla/5.0 (iPhone; CPU iPhone OS 15_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/98.0.4758.85 Mobile/15E148 Safari/604.1";
        let ipad_webview = "Mozilla/5.0 (iPad; CPU OS 15_3_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
        let ios_15_4 = ios_chrome.replace("15_2", "15_4");
        assert_eq!(negotiate_deflate(offer, Some(ios_chrome)), None);
        assert_eq!(negotiate_deflate(offer, Some(ipad_webview)), None);
        assert!(negotiate_deflate(offer, Some(&ios_15_4)).is_some());
    }
}
