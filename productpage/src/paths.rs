//! The path productpage routes on, as gunicorn and Werkzeug make it before Flask sees it:
//! percent-decoded once in full (`%2F` is a `/`, so `/api/v1/products/0%2Freviews` is the
//! reviews route, and `/productpage%3Fu=x` names no route), leading slashes merged
//! (`//productpage` is the page), and a path with a run of slashes inside it that only
//! matches a route once merged answered 308 to the merged path, as Werkzeug's
//! `merge_slashes` does. It wraps the router, because routing must see the rewritten path.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// Bytes a decoded path must have escaped again to be a valid URI path: everything but
/// RFC 3986 `pchar` and `/`.
const PATH_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// What `requests` leaves unescaped in a URL (`requote_uri`'s safe set); everything else
/// outside ASCII's unreserved characters is escaped.
const REQUESTS_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// The route patterns (axum syntax) a merged path is checked against.
#[derive(Debug, Clone)]
pub(crate) struct Routes(pub(crate) std::sync::Arc<[&'static str]>);

impl Routes {
    fn matches(&self, path: &str) -> bool {
        self.0.iter().any(|pattern| pattern_matches(pattern, path))
    }
}

/// Whether `path` matches `pattern`, where `{name}` is one non-empty segment and `{*name}` the
/// non-empty rest.
fn pattern_matches(pattern: &str, path: &str) -> bool {
    let mut want = pattern.split('/');
    let mut have = path.split('/');
    loop {
        match (want.next(), have.next()) {
            (None, None) => return true,
            (Some(w), Some(h)) if w.starts_with("{*") => {
                return !h.is_empty() || have.next().is_some();
            }
            (Some(w), Some(h)) if w.starts_with('{') => {
                if h.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(h)) if w == h => {}
            _ => return false,
        }
    }
}

/// The middleware: decodes the path, merges leading slashes, and redirects inner runs.
pub(crate) async fn upstream_path(
    State(routes): State<Routes>,
    mut request: Request,
    next: Next,
) -> Response {
    let decoded = percent_decode_str(request.uri().path()).decode_utf8_lossy();
    let path = format!("/{}", decoded.trim_start_matches('/'));
    if path.contains("//") {
        let merged = merge_slashes(&path);
        if routes.matches(&merged) {
            return redirect(&request, &merged);
        }
    }
    let escaped = utf8_percent_encode(&path, PATH_ESCAPES).to_string();
    if escaped != request.uri().path() {
        let path_and_query = match request.uri().query() {
            Some(query) => format!("{escaped}?{query}"),
            None => escaped,
        };
        let mut parts = request.uri().clone().into_parts();
        match path_and_query.parse() {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
        match Uri::from_parts(parts) {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
    }
    next.run(request).await
}

fn merge_slashes(path: &str) -> String {
    let mut merged = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && merged.ends_with('/')) {
            merged.push(c);
        }
    }
    merged
}

/// Werkzeug's `RequestRedirect`: 308 to the absolute URL of `path`, query kept.
fn redirect(request: &Request, path: &str) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let mut location = format!("http://{host}{}", utf8_percent_encode(path, PATH_ESCAPES));
    if let Some(query) = request.uri().query() {
        location.push('?');
        location.push_str(query);
    }
    let Ok(value) = HeaderValue::from_str(&location) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    crate::werkzeug::redirect(StatusCode::PERMANENT_REDIRECT, value)
}

/// A path segment of a routed path as Flask hands it to the view: decoded once.
pub(crate) fn decoded_segment(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

/// `value` as `requests` writes it into a URL (`requote_uri`): escapes of unreserved
/// characters decoded, then what is not URL-safe escaped; `%`, `/`, `?` and `#` stay.
pub(crate) fn requests_quote(value: &str) -> String {
    let unreserved = unquote_unreserved(value);
    utf8_percent_encode(&unreserved, REQUESTS_ESCAPES).to_string()
}

fn unquote_unreserved(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = value.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
            && (byte.is_ascii_alphanumeric() || b"-._~".contains(&byte))
        {
            out.push(char::from(byte));
            i += 3;
            continue;
        }
        let c = value[i..].chars().next().expect("i is on a char boundary");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_axum_routes_do() {
        assert!(pattern_matches("/productpage", "/productpage"));
        assert!(!pattern_matches("/productpage", "/productpage/"));
        assert!(pattern_matches(
            "/api/v1/products/{id}",
            "/api/v1/products/7"
        ));
        assert!(!pattern_matches(
            "/api/v1/products/{id}",
            "/api/v1/products/"
        ));
        assert!(pattern_matches("/static/{*path}", "/static/img/izzy.png"));
        assert!(!pattern_matches("/static/{*path}", "/static/"));
        assert!(!pattern_matches("/", "/x"));
    }

    #[test]
    fn ids_are_quoted_as_requests_quotes_them() {
        for (id, quoted) in [
            ("0", "0"),
            ("a b", "a%20b"),
            ("?", "?"),
            ("%41", "A"),
            ("%25", "%25"),
            ("é", "%C3%A9"),
            ("<x>", "%3Cx%3E"),
        ] {
            assert_eq!(requests_quote(id), quoted, "{id:?}");
        }
    }

    #[test]
    fn slashes_merge_into_one() {
        assert_eq!(merge_slashes("/api//v1///products"), "/api/v1/products");
    }
}
