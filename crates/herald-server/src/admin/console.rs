//! The console: a web page embedded in the binary (`crates/herald-server/console/`), served at
//! `/console` while `admin.token` is set. The page logs in with the admin token and drives the
//! admin API (`/admin/api`) from the browser; it holds no data of its own.
//!
//! Invariant: every response carries the strict Content-Security-Policy below (no inline script
//! or style, nothing loaded or fetched from another origin), so data the page shows (channel and
//! event names, user info) can never run as code; the page itself builds its DOM with
//! `textContent` only.

use std::sync::Arc;

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::Shared;

const INDEX_HTML: &str = include_str!("../../console/index.html");
const CONSOLE_JS: &str = include_str!("../../console/console.js");
const CONSOLE_CSS: &str = include_str!("../../console/console.css");

/// The page's Content-Security-Policy: its own script, style and API, nothing else.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

/// The console's routes; mounted by the admin router only while `admin.token` is set.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/console",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files_and_has_no_inline_code() {
        assert!(INDEX_HTML.contains(r#"<script src="/console/console.js" defer></script>"#));
        assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="/console/console.css">"#));
        // One script tag (with src), no style element or attribute, no inline handler.
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        for banned in [
            "<style",
            " style=",
            " onclick=",
            " onload=",
            "http://",
            "https://",
        ] {
            assert!(!INDEX_HTML.contains(banned), "{banned}");
        }
        // The script never parses data as HTML.
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!CONSOLE_JS.contains(banned), "{banned}");
        }
        assert!(!CONSOLE_CSS.contains("@import") && !CONSOLE_CSS.contains("url("));
    }

    #[test]
    fn the_policy_is_the_contracts() {
        assert_eq!(
            CSP,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        );
    }
}
