//! Request path normalisation: the path every later inbound layer and the application see,
//! so that an AuthorizationPolicy on `/details/0` also covers `/details/./0`,
//! `//details/0`, `/details/%2E/0` and `/%64etails/0`. It sits before rate limiting,
//! authorization and routing (and inside telemetry, so a rejected path is still recorded),
//! and it rewrites the request rather than only the policy's view, as Envoy forwards the
//! normalised path: the policy and the application never disagree about which resource a
//! request names.
//!
//! What [`normalize_path`] applies is Istio's strictest scheme, meshConfig
//! `pathNormalization: DECODE_AND_MERGE_SLASHES` (Envoy's `normalize_path` + `merge_slashes`
//! + `path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD`), in Istio's order:
//!
//! 1. Percent-decoding, once (no double decoding: `%252F` stays `%252F`): an escaped
//!    unreserved character (`ALPHA DIGIT - . _ ~`, RFC 3986 §2.3) becomes the character;
//!    `%2F` and `%5C` (any case) become `/` (Istio's DECODE step); every other escape is kept,
//!    with its hex digits in upper case (RFC 3986 §6.2.2.1).
//! 2. Backslash to slash (Envoy's `normalize_path`, Istio's BASE).
//! 3. Dot segments removed as RFC 3986 §5.2.4 `remove_dot_segments` (Istio's BASE): `.`
//!    goes, `..` removes the segment before it, and `..` above the root stays at `/`.
//! 4. Runs of slashes merged into one (Istio's MERGE_SLASHES).
//!
//! Bytes that may not appear in a path (RFC 3986 `pchar`) are percent-encoded. The query is
//! never touched: policies match the path alone, and the application gets the query as sent.
//!
//! A path that cannot be made valid is answered 400 with an empty body, as Envoy's local reply
//! (`path_normalization_failed`): one that is not origin-form (does not start with `/`, such
//! as `*` or an authority), a malformed escape (`%` without two hex digits), or a control
//! character, raw or escaped (`%00`–`%1F`, `%7F`; Istio names `%00`, the rest would smuggle
//! line breaks or NULs to the application once it decodes the path).

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::uri::{PathAndQuery, Uri};

/// Why a path cannot be normalised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is not origin-form (it must start with /)")]
    NotOriginForm,
    #[error("malformed percent-encoding at byte {0}")]
    BadEscape(usize),
    #[error("control character at byte {0}")]
    ControlCharacter(usize),
}

/// `path` (without its query) normalised as the module doc describes.
pub fn normalize_path(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    // A leading backslash is a slash too (Istio's `\da` → `/da`).
    if !matches!(bytes.first(), Some(b'/' | b'\\')) {
        return Err(PathError::NotOriginForm);
    }
    let decoded = decode(bytes)?;
    let resolved = remove_dot_segments(&decoded);
    Ok(merge_slashes(&resolved))
}

/// Steps 1 and 2, and the encoding of bytes a path may not hold.
fn decode(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |at: usize| bytes.get(at).and_then(|h| (*h as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                return Err(PathError::BadEscape(i));
            };
            let value = (hi * 16 + lo) as u8;
            if value.is_ascii_control() {
                return Err(PathError::ControlCharacter(i));
            }
            if value == b'/' || value == b'\\' {
                out.push('/');
            } else if is_unreserved(value) {
                out.push(value as char);
            } else {
                push_escaped(&mut out, value);
            }
            i += 3;
            continue;
        }
        if b.is_ascii_control() {
            return Err(PathError::ControlCharacter(i));
        }
        if b == b'\\' {
            out.push('/');
        } else if b == b'/' || is_pchar(b) {
            out.push(b as char);
        } else {
            push_escaped(&mut out, b);
        }
        i += 1;
    }
    Ok(out)
}

fn push_escaped(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(byte >> 4)] as char);
    out.push(HEX[usize::from(byte & 0xF)] as char);
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` without `pct-encoded` (escapes are handled apart).
fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// RFC 3986 §5.2.4 for an absolute path. Empty segments count as segments here, as in the
/// RFC and Envoy (`/a//../b` is `/a/b`); slashes are merged afterwards.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut ends_in_dir = false;
    for segment in path[1..].split('/') {
        ends_in_dir = false;
        match segment {
            "." => ends_in_dir = true,
            ".." => {
                kept.pop();
                ends_in_dir = true;
            }
            other => kept.push(other),
        }
    }
    let mut out = String::with_capacity(path.len());
    out.push('/');
    out.push_str(&kept.join("/"));
    if ends_in_dir && !kept.is_empty() {
        out.push('/');
    }
    out
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// The request with its path normalised (query kept), or `None` when it cannot be.
fn normalized_uri(uri: &Uri) -> Option<Uri> {
    let path = normalize_path(uri.path()).ok()?;
    if path == uri.path() {
        return Some(uri.clone());
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
    Uri::from_parts(parts).ok()
}

/// Whether `path` is already what [`normalize_path`] makes of it: origin-form, nothing but
/// slashes and `pchar`s (no escape, backslash or control character), and no empty, `.` or
/// `..` segment but an empty last one. Most requests' paths are, and keep their URI as is.
fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if !rest.bytes().all(|b| b == b'/' || is_pchar(b)) {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            return false;
        }
    }
    true
}

/// A path that cannot be normalised: Envoy's local reply, 400 with an empty body.
#[derive(Debug)]
pub struct PathRefused;

impl IntoResponse for PathRefused {
    fn into_response(self) -> Response {
        crate::respond::Synthetic::BadRequest.response()
    }
}

/// The request with its path in normal form.
pub fn normalize(mut request: Request) -> Result<Request, PathRefused> {
    if is_normal(request.uri().path()) {
        return Ok(request);
    }
    // An absolute-form target (`GET http://host/path`) is normalised like origin-form;
    // authority-form (CONNECT) has an empty path and `OPTIONS *` the path `*`: both refused.
    match normalized_uri(request.uri()) {
        Some(uri) => {
            *request.uri_mut() = uri;
            Ok(request)
        }
        None => {
            tracing::debug!(path = %request.uri(), "path cannot be normalised: 400");
            Err(PathRefused)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn normalises_like_decode_and_merge_slashes() {
        let cases = [
            ("/details/0", "/details/0"),
            ("/", "/"),
            ("/details/./0", "/details/0"),
            ("/details/x/../0", "/details/0"),
            ("//details//0", "/details/0"),
            ("/details/%2E/0", "/details/0"),
            ("/details/%2e%2e/x/../0", "/0"),
            ("/details/%2e%2E/0", "/0"),
            ("/%64etails/0", "/details/0"),
            ("/%44ETAILS/%30", "/DETAILS/0"),
            ("/details%2F0", "/details/0"),
            ("/details%2f0", "/details/0"),
            ("/details%5C0", "/details/0"),
            ("/details%5c0", "/details/0"),
            ("/details\\0", "/details/0"),
            ("\\details/0", "/details/0"),
            ("/../details/0", "/details/0"),
            ("/../../..", "/"),
            ("/a/..", "/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a/b/", "/a/b/"),
            ("/a//../b", "/a/b"),
            ("/a/%2e%2e%2fb", "/b"),
            ("/a/..%2f..%2f..%2fb", "/b"),
            ("/a.b/.c/..d", "/a.b/.c/..d"),
            ("/%7e%5f%2d", "/~_-"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb%3F", "/a%3Fb%3F"),
            ("/a%252Fb", "/a%252Fb"),
            ("/a%25", "/a%25"),
            ("/a b", "/a%20b"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/a;b=c:d@e!$&'()*+,", "/a;b=c:d@e!$&'()*+,"),
            ("/a\"b{c}", "/a%22b%7Bc%7D"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for input in [
            "/details/%2e%2e/x/../0",
            "/a%252Fb",
            "/%7e%5f%2d/./x//",
            "/a%3fb",
        ] {
            let once = normalize_path(input).unwrap();
            assert_eq!(normalize_path(&once).unwrap(), once, "{input}");
        }
    }

    #[test]
    fn paths_that_cannot_be_made_valid_are_errors() {
        assert_eq!(normalize_path("*"), Err(PathError::NotOriginForm));
        assert_eq!(normalize_path(""), Err(PathError::NotOriginForm));
        assert_eq!(normalize_path("details/0"), Err(PathError::NotOriginForm));
        assert_eq!(
            normalize_path("/a%00b"),
            Err(PathError::ControlCharacter(2))
        );
        assert_eq!(
            normalize_path("/a%0Ab"),
            Err(PathError::ControlCharacter(2))
        );
        assert_eq!(
            normalize_path("/a%0db"),
            Err(PathError::ControlCharacter(2))
        );
        assert_eq!(normalize_path("/a%7f"), Err(PathError::ControlCharacter(2)));
        assert_eq!(normalize_path("/a\tb"), Err(PathError::ControlCharacter(2)));
        assert_eq!(normalize_path("/a%"), Err(PathError::BadEscape(2)));
        assert_eq!(normalize_path("/a%2"), Err(PathError::BadEscape(2)));
        assert_eq!(normalize_path("/a%zz"), Err(PathError::BadEscape(2)));
        assert_eq!(
            PathError::BadEscape(2).to_string(),
            "malformed percent-encoding at byte 2"
        );
    }

    #[test]
    fn the_query_is_kept_as_sent() {
        let uri: Uri = "/details/./0?x=/../&y=%2F".parse().unwrap();
        let got = normalized_uri(&uri).unwrap();
        assert_eq!(got.path(), "/details/0");
        assert_eq!(got.query(), Some("x=/../&y=%2F"));
        let uri: Uri = "http://details:9080//details/0?a".parse().unwrap();
        let got = normalized_uri(&uri).unwrap();
        assert_eq!(got.to_string(), "http://details:9080/details/0?a");
    }

    fn through_normalize(target: &str) -> Result<String, StatusCode> {
        let request = Request::builder()
            .uri(target)
            .body(axum::body::Body::empty())
            .unwrap();
        normalize(request)
            .map(|r| r.uri().to_string())
            .map_err(|refused| refused.into_response().status())
    }

    #[test]
    fn a_path_taken_as_normal_is_one_normalisation_keeps() {
        let paths = [
            "/",
            "/details/0",
            "/a/b/",
            "/a//b",
            "//a",
            "/a/./b",
            "/a/.",
            "/a/..",
            "/.",
            "/..",
            "/a/../b",
            "/.a/..b/...",
            "/a%20b",
            "/a b",
            "/a\\b",
            "/caf\u{e9}",
            "*",
            "",
            "/a;b=c:d@e!$&'()*+,",
            "/a/b//",
            "/productpage",
            "/api/v1/products/0/reviews",
        ];
        let mut normal = 0;
        for path in paths {
            if is_normal(path) {
                normal += 1;
                assert_eq!(normalize_path(path).as_deref(), Ok(path), "{path}");
            } else if let Ok(normalized) = normalize_path(path) {
                assert!(
                    is_normal(&normalized) || normalized.contains('%'),
                    "{path} -> {normalized}"
                );
            }
        }
        assert_eq!(normal, 7, "the plain paths take the fast way");
    }

    #[test]
    fn the_request_is_rewritten_or_refused_with_400() {
        assert_eq!(
            through_normalize("/details/%2E/x/../0?q=/./"),
            Ok("/details/0?q=/./".to_owned())
        );
        assert_eq!(through_normalize("/details/0"), Ok("/details/0".to_owned()));
        assert_eq!(through_normalize("/a%00"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(through_normalize("*"), Err(StatusCode::BAD_REQUEST));
    }
}
