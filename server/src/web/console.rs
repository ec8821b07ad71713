//! `GET /console/…`: the web console's static files, embedded in the binary.
//!
//! The files come from `console/dist/` (built by Vite, committed) through
//! `build.rs`; nothing is read from disk at run time, so a path can only ever
//! name one of the embedded files — `..` and friends are refused outright
//! anyway. Vite's `assets/` files carry a content hash in their names and
//! are cached for a year (`immutable`); everything else (`index.html`) is
//! revalidated on every load. Any other path without a file extension gets
//! `index.html` (the console routes by `#/page`, and a deep link to
//! `/console/usage` should still open it). The page needs no key; every API
//! call it makes does.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use crate::gateway::Gateway;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));
}

/// The embedded file at `path` (relative to `console/dist`), if any.
pub fn asset(path: &str) -> Option<&'static [u8]> {
    embedded::ASSETS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, bytes)| *bytes)
}

/// Paths of every embedded file.
pub fn asset_paths() -> impl Iterator<Item = &'static str> {
    embedded::ASSETS.iter().map(|(p, _)| *p)
}

/// The `Content-Type` for a file name, by extension.
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    match ext.to_ascii_lowercase().as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A request path is acceptable only as plain, relative, forward segments.
fn is_clean(path: &str) -> bool {
    !path.starts_with('/')
        && !path.contains('\\')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

// Same-origin only: scripts, styles, API calls and the WebSocket; camera
// frames and dropped files are blob:/mediastream: URLs.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self' blob: data:; media-src 'self' blob: mediastream:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The page's policy: [`CSP`], with the WebTransport origin (another port,
/// so not `'self'`) added to `connect-src` while WebTransport is on.
fn csp(gw: &Gateway, headers: &HeaderMap) -> HeaderValue {
    let Some(info) = &gw.webtransport else {
        return HeaderValue::from_static(CSP);
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let url = info.url(host);
    let origin = url
        .strip_suffix(crate::transport::webtransport::PATH)
        .unwrap_or(&url);
    HeaderValue::from_str(&CSP.replace(
        "connect-src 'self'",
        &format!("connect-src 'self' {origin}"),
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(CSP))
}

fn respond(path: &str, bytes: &'static [u8], policy: HeaderValue) -> Response {
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut resp = (
        [
            (header::CONTENT_TYPE, content_type(path)),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        bytes,
    )
        .into_response();
    if path.ends_with(".html") {
        resp.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    resp
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "not found\n",
    )
        .into_response()
}

fn index(policy: HeaderValue) -> Response {
    match asset("index.html") {
        Some(b) => respond("index.html", b, policy),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "the console was not built into this binary (console/dist was missing at build time)\n",
        )
            .into_response(),
    }
}

/// `GET /console` → `/console/`.
pub async fn redirect() -> Redirect {
    Redirect::permanent("/console/")
}

/// `GET /console/`.
pub async fn root(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    index(csp(&gw, &headers))
}

/// `GET /console/{*path}`.
pub async fn file(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Response {
    if !is_clean(&path) {
        return not_found();
    }
    if let Some(bytes) = asset(&path) {
        return respond(&path, bytes, csp(&gw, &headers));
    }
    // A missing file (a name with an extension) is a 404; a page path is the app.
    let last = path.rsplit('/').next().unwrap_or("");
    if last.contains('.') || path.starts_with("assets/") {
        not_found()
    } else {
        index(csp(&gw, &headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        for bad in [
            "../Cargo.toml",
            "assets/../../x",
            "/etc/passwd",
            "a//b",
            "a\\b",
            "./index.html",
            "",
        ] {
            assert!(!is_clean(bad), "{bad:?} accepted");
        }
        for good in ["index.html", "assets/index-abc.js", "usage"] {
            assert!(is_clean(good), "{good:?} refused");
        }
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("assets/a.JS"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("assets/a.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("x"), "application/octet-stream");
    }

    #[test]
    fn the_built_console_is_embedded() {
        assert!(
            asset("index.html").is_some(),
            "console/dist/index.html is not embedded"
        );
        assert!(asset_paths().any(|p| p.starts_with("assets/") && p.ends_with(".js")));
    }
}
