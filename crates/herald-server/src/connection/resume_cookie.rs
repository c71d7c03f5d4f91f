//! The signed resume cookie: how herald recognises a browser that reconnects, with pusher-js
//! unchanged.
//!
//! The 101 of a browser's handshake (one with an `Origin` header) carries
//! `Set-Cookie: herald_resume_<key>=<token>.<signature>; Max-Age=600; Path=/; HttpOnly;
//! SameSite=Lax` (plus `Secure` behind https). The browser sends it back on its next handshake to
//! the same host, so the new socket has the same resume identity and gets what the old one missed
//! (`herald_core::history`). The token is random; the signature (HMAC-SHA256 with the app secret)
//! makes a cookie that herald did not issue worthless. All tabs of a browser profile share the
//! cookie: the replay logic is designed for several sockets per identity. Every handshake renews
//! the cookie's lifetime. Node clients send no `Origin` and get no cookie (and hold no token).
//!
//! Invariant: a cookie that does not verify is ignored (a fresh token is issued), never an error.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue};
use herald_core::App;
use herald_protocol::signature;

/// How long the browser keeps the cookie: as long as a departure is remembered.
pub const MAX_AGE: Duration = herald_core::history::RESUME_MARK_TTL;

/// Length of a token in hex characters (128 random bits).
const TOKEN_HEX: usize = 32;

/// The resume identity of a handshake and the `Set-Cookie` header that (re)issues it.
#[derive(Debug)]
pub struct ResumeCookie {
    pub token: Box<str>,
    pub set_cookie: HeaderValue,
}

/// The cookie for a browser's handshake to `app`, reusing a valid one it sent; `None` when the
/// app turned resume cookies off or the client is not a browser.
pub fn for_handshake(app: &App, headers: &HeaderMap) -> Option<ResumeCookie> {
    if !app.resume_cookie || !headers.contains_key(header::ORIGIN) {
        return None;
    }
    let name = cookie_name(&app.key);
    let token = sent(app, &name, headers).unwrap_or_else(|| {
        let random: u128 = rand::random();
        format!("{random:032x}")
    });
    let secure = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| o.starts_with("https://"));
    let value = format!(
        "{name}={token}.{}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax{}",
        sign(app, &token),
        MAX_AGE.as_secs(),
        if secure { "; Secure" } else { "" },
    );
    let set_cookie = HeaderValue::from_str(&value).ok()?;
    Some(ResumeCookie {
        token: token.into(),
        set_cookie,
    })
}

/// One cookie per app key, so apps served from one host do not overwrite each other's.
fn cookie_name(key: &str) -> String {
    let key: String = key
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(64)
        .collect();
    format!("herald_resume_{key}")
}

fn sign(app: &App, token: &str) -> String {
    let message = format!("herald-resume:{}:{token}", app.key);
    signature::sign(app.secret.expose(), message.as_bytes())
}

/// The token of a valid resume cookie among the request's cookies.
fn sent(app: &App, name: &str, headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(n, _)| *n == name)
        .find_map(|(_, value)| {
            let (token, sig) = value.split_once('.')?;
            let well_formed =
                token.len() == TOKEN_HEX && token.bytes().all(|b| b.is_ascii_hexdigit());
            let message = format!("herald-resume:{}:{token}", app.key);
            (well_formed && signature::verify(app.secret.expose(), message.as_bytes(), sig))
                .then(|| token.to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_browser_gets_a_cookie_and_keeps_its_token_when_it_sends_it_back() {
        let app = App::demo();
        let first = for_handshake(&app, &headers(&[(header::ORIGIN, "https://a.test")])).unwrap();
        let set = first.set_cookie.to_str().unwrap();
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Secure"));
        let pair = set.split(';').next().unwrap();
        let back = headers(&[
            (header::ORIGIN, "http://a.test"),
            (header::COOKIE, &format!("other=1; {pair}")),
        ]);
        let second = for_handshake(&app, &back).unwrap();
        assert_eq!(second.token, first.token);
        assert!(!second.set_cookie.to_str().unwrap().contains("Secure"));
    }

    #[test]
    fn forged_cookies_node_clients_and_apps_without_cookies_get_none_or_fresh_tokens() {
        let mut app = App::demo();
        let forged = format!(
            "herald_resume_app-key={}.{}",
            "a".repeat(32),
            "0".repeat(64)
        );
        let req = headers(&[(header::ORIGIN, "http://a.test"), (header::COOKIE, &forged)]);
        let issued = for_handshake(&app, &req).unwrap();
        assert_ne!(
            &*issued.token,
            "a".repeat(32),
            "a forged token is not taken"
        );
        assert!(
            for_handshake(&app, &HeaderMap::new()).is_none(),
            "no Origin: no cookie"
        );
        app.resume_cookie = false;
        assert!(for_handshake(&app, &req).is_none());
    }
}
