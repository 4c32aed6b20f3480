//! `/console`: the web console. Its files (`crates/server/console/`) are plain HTML, CSS
//! and JavaScript modules, embedded in the binary at compile time, so `qtask serve` alone
//! serves it and no build step exists.
//!
//! The console is a client like any other: the page signs each API call in the browser
//! (WebCrypto) and talks to `/v2/index.php` and `/v2/events`. This module only serves
//! files; it reads no credentials and answers no API call.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// Where the console is served.
pub const CONSOLE_PATH: &str = "/console";

/// One embedded file of the console.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("../console/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("instances.js", JS),
    asset!("lb.js", JS),
    asset!("tasks.js", JS),
    asset!("health.js", JS),
    asset!("history.js", JS),
];

/// The version of the embedded files, as a strong ETag: a hash of every file, computed
/// at compile time, so it changes exactly when some file does.
const ETAG: &str = {
    const HASH: u64 = {
        let mut hash = FNV_OFFSET;
        let mut i = 0;
        while i < ASSETS.len() {
            hash = fnv1a(hash, ASSETS[i].name.as_bytes());
            hash = fnv1a(hash, ASSETS[i].body);
            i += 1;
        }
        hash
    };
    const TEXT: [u8; 18] = quoted_hex(HASH);
    match std::str::from_utf8(&TEXT) {
        Ok(text) => text,
        Err(_) => panic!("hex digits are UTF-8"),
    }
};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

const fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

const fn quoted_hex(value: u64) -> [u8; 18] {
    let digits = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = digits[((value >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

/// Only the console's own files may load: no inline script or style, no other origin,
/// no framing. API calls and the event stream go to the same origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes: `/console` (redirected to `/console/`, so the page's relative
/// links resolve), `/console/` (the page) and `/console/<file>`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            CONSOLE_PATH,
            get(|| async { Redirect::permanent(&format!("{CONSOLE_PATH}/")) }),
        )
        .route(
            &format!("{CONSOLE_PATH}/"),
            get(|headers: HeaderMap| async move { serve("index.html", &headers) }),
        )
        .route(
            &format!("{CONSOLE_PATH}/{{file}}"),
            get(|Path(file): Path<String>, headers: HeaderMap| async move {
                serve(&file, &headers)
            }),
        )
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("the console has no file {name:?}\n"),
        )
            .into_response();
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == ETAG || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = asset.body.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_static(ETAG));
    // Revalidated on every load (a 304 when unchanged), so an upgraded server never
    // runs an old page against a new API.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            let text = std::str::from_utf8(asset.body).expect("UTF-8 JavaScript");
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let file = line
                    .rsplit_once("'./")
                    .and_then(|(_, rest)| rest.split_once('\''))
                    .map(|(file, _)| file)
                    .unwrap_or_else(|| panic!("{}: unexpected import {line:?}", asset.name));
                assert!(
                    ASSETS.iter().any(|a| a.name == file),
                    "{} imports {file}, which is not embedded",
                    asset.name
                );
            }
        }
    }

    #[test]
    fn the_etag_is_a_quoted_hash() {
        assert_eq!(ETAG.len(), 18);
        assert!(ETAG.starts_with('"') && ETAG.ends_with('"'));
        assert!(ETAG[1..17].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
