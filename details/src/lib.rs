//! Bookinfo details: the book's details as compact JSON, for any integer id.
//!
//! Upstream is a Ruby WEBrick server; its observable behaviour is kept: the path percent-decoded
//! and normalised as WEBrick does before routing (`/details/%207` is id 7, `//details/0` is
//! `/details/0`, a path climbing above the root is 400), prefix mounts on `/details` and
//! `/health`, Ruby `Integer()` id parsing (sign, `_`, `0x`/`0b`/`0o`, leading-zero octal,
//! surrounding whitespace) with integers of any size echoed digit for digit, 400
//! `please provide numeric product id` otherwise, an HTML 404 for other paths, the methods
//! WEBrick's `mount_proc` serves (GET, HEAD, POST and PUT alike; OPTIONS answered with
//! `Allow`), 405 for the others, and 414 for a request line over [`MAX_REQUEST_LINE_BYTES`].
#![forbid(unsafe_code)]

use axum::Router;
use axum::extract::Request;
use axum::http::{Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use mesh::env::{VarError, Vars};

/// details configuration, from upstream's environment variables.
#[derive(Debug, Clone, Default)]
pub struct Config {}

impl Config {
    /// Reads `ENABLE_EXTERNAL_BOOK_SERVICE`. Only the built-in book (upstream v1) is served:
    /// the Google Books lookup of upstream v2 needs internet access and is refused at start
    /// rather than silently ignored.
    pub fn from_env(vars: &impl Vars) -> Result<Self, VarError> {
        if vars.get("ENABLE_EXTERNAL_BOOK_SERVICE").as_deref() == Some("true") {
            return Err(VarError::new(
                "ENABLE_EXTERNAL_BOOK_SERVICE",
                "true",
                "the external book service (details v2) is not supported; unset it to serve details v1",
            ));
        }
        Ok(Self {})
    }
}

/// The most digits a non-decimal id may have: converting one to decimal costs time
/// quadratic in its length, and 1024 hex digits is already a 1234-digit number.
pub const MAX_RADIX_DIGITS: usize = 1024;

/// The longest request line WEBrick reads (`MAX_URI_LENGTH`), CRLF included; a longer one is
/// 414 before anything else is looked at.
pub const MAX_REQUEST_LINE_BYTES: usize = 2083;

/// The book, in upstream's exact key order.
#[derive(Debug, Serialize)]
struct Book {
    /// A JSON integer of any size (Ruby's Integer is unbounded).
    id: serde_json::Number,
    author: &'static str,
    year: u32,
    #[serde(rename = "type")]
    kind: &'static str,
    pages: u32,
    publisher: &'static str,
    language: &'static str,
    #[serde(rename = "ISBN-10")]
    isbn_10: &'static str,
    #[serde(rename = "ISBN-13")]
    isbn_13: &'static str,
}

impl Book {
    fn with_id(id: serde_json::Number) -> Self {
        Self {
            id,
            author: "William Shakespeare",
            year: 1595,
            kind: "paperback",
            pages: 200,
            publisher: "PublisherA",
            language: "English",
            isbn_10: "1234567890",
            isbn_13: "123-1234567890",
        }
    }
}

/// The details router. Every route is matched by hand in one place because WEBrick's prefix
/// mounts (`/details/0/x` reaches the details handler) do not map onto axum's path patterns.
pub fn app(_config: Config) -> Router {
    Router::new().fallback(handle)
}

async fn handle(request: Request) -> Response {
    if request_line_bytes(&request) > MAX_REQUEST_LINE_BYTES {
        return uri_too_large(request.version());
    }
    let Ok(path) = webrick_path(request.uri().path()) else {
        return bad_request();
    };
    let path = path.as_str();
    let route = if mounted(path, "/health") {
        Route::Health
    } else if mounted(path, "/details") {
        Route::Details
    } else {
        return not_found();
    };
    // WEBrick 1.8's mount_proc runs the proc for GET, HEAD, POST and PUT; OPTIONS lists
    // them (its servlet's do_* methods, sorted) and runs nothing.
    if request.method() == Method::OPTIONS {
        return (
            StatusCode::OK,
            [(header::ALLOW, "GET,HEAD,OPTIONS,POST,PUT")],
            // No body, so no Content-Type either, as WEBrick.
            axum::body::Body::empty(),
        )
            .into_response();
    }
    if ![Method::GET, Method::HEAD, Method::POST, Method::PUT].contains(request.method()) {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"method not allowed"}"#,
        )
            .into_response();
    }
    match route {
        Route::Health => json(
            StatusCode::OK,
            r#"{"status":"Details is healthy"}"#.to_owned(),
        ),
        Route::Details => match parse_ruby_integer(last_segment(path))
            .and_then(|decimal| decimal.parse::<serde_json::Number>().ok())
        {
            Some(id) => json(
                StatusCode::OK,
                serde_json::to_string(&Book::with_id(id)).expect("the book serialises"),
            ),
            None => json(
                StatusCode::BAD_REQUEST,
                r#"{"error":"please provide numeric product id"}"#.to_owned(),
            ),
        },
    }
}

enum Route {
    Health,
    Details,
}

/// WEBrick mount semantics: `prefix` itself or anything below it on a segment boundary.
fn mounted(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Ruby's `path.split('/').last`: trailing empty segments are dropped.
fn last_segment(path: &str) -> &str {
    path.split('/').rev().find(|s| !s.is_empty()).unwrap_or("")
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The bytes of the request line `request` came with (`GET /details/0 HTTP/1.1` and CRLF), as
/// WEBrick counts them; an HTTP/2 request is counted as its HTTP/1.1 line would be.
fn request_line_bytes(request: &Request) -> usize {
    let target = match request.uri().path_and_query() {
        // Origin form, as clients send it; an absolute-form target keeps scheme and host.
        Some(pq) if request.uri().scheme().is_none() => pq.as_str().len(),
        _ => request.uri().to_string().len(),
    };
    request.method().as_str().len() + " ".len() + target + " HTTP/1.1\r\n".len()
}

/// WEBrick's `RequestURITooLarge`, after which it closes the connection.
fn uri_too_large(version: Version) -> Response {
    let mut response = (
        StatusCode::URI_TOO_LONG,
        [(header::CONTENT_TYPE, "text/html; charset=ISO-8859-1")],
        "<HTML>\n  <HEAD><TITLE>Request-URI Too Large</TITLE></HEAD>\n  <BODY>\n    <H1>Request-URI Too Large</H1>\n    WEBrick::HTTPStatus::RequestURITooLarge\n  </BODY>\n</HTML>\n",
    )
        .into_response();
    // Connection-specific headers do not exist in HTTP/2.
    if version <= Version::HTTP_11 {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}

fn bad_request() -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/html; charset=ISO-8859-1")],
        "<HTML>\n  <HEAD><TITLE>Bad Request</TITLE></HEAD>\n  <BODY>\n    <H1>Bad Request</H1>\n    abnormal path\n  </BODY>\n</HTML>\n",
    )
        .into_response()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html; charset=ISO-8859-1")],
        "<HTML>\n  <HEAD><TITLE>Not Found</TITLE></HEAD>\n  <BODY>\n    <H1>Not Found</H1>\n    The requested URL was not found on this server.\n  </BODY>\n</HTML>\n",
    )
        .into_response()
}

/// Why WEBrick refuses a path (its 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbnormalPath;

/// The path WEBrick routes on: percent-decoded (`HTTPUtils.unescape`: every `%XX`, a stray
/// `%` kept), then `normalize_path`: runs of `/` merged, `.` segments dropped, `..` removing
/// the segment before it, and a `..` left above the root refused.
pub fn webrick_path(raw: &str) -> Result<String, AbnormalPath> {
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(AbnormalPath)?;
            }
            _ => segments.push(segment),
        }
    }
    // `/a/`, `/a/.` and `/a/b/..` keep a trailing slash.
    let last = decoded.rsplit('/').next().unwrap_or("");
    let ends_in_slash = matches!(last, "" | "." | "..");
    let mut path = format!("/{}", segments.join("/"));
    if ends_in_slash && !segments.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// Ruby's strict `Integer(string)` in decimal: optional surrounding whitespace and sign, a
/// radix prefix (`0x`, `0b`, `0o`, `0d`, or a bare leading `0` for octal), and digits with
/// single `_` separators, of any size (non-decimal ones up to [`MAX_RADIX_DIGITS`]). `None`
/// where Ruby raises.
pub fn parse_ruby_integer(text: &str) -> Option<String> {
    let s = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    let (negative, s) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = s.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0d") {
        (10, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    // Underscores only between digits, never doubled, leading or trailing.
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let digits: Vec<u32> = digits
        .chars()
        .filter(|&c| c != '_')
        .map(|c| c.to_digit(radix))
        .collect::<Option<_>>()?;
    let decimal = if radix == 10 {
        digits
            .iter()
            .skip_while(|&&d| d == 0)
            .map(|&d| char::from_digit(d, 10).expect("a decimal digit"))
            .collect::<String>()
    } else if digits.len() > MAX_RADIX_DIGITS {
        return None;
    } else {
        to_decimal(&digits, radix)
    };
    Some(match decimal.as_str() {
        "" => "0".to_owned(),
        _ if negative => format!("-{decimal}"),
        _ => decimal,
    })
}

/// `digits` (most significant first) in base `radix`, as decimal digits without leading zeros.
fn to_decimal(digits: &[u32], radix: u32) -> String {
    const LIMB: u64 = 1_000_000_000;
    // Little-endian limbs of nine decimal digits each.
    let mut limbs: Vec<u64> = Vec::new();
    for &d in digits {
        let mut carry = u64::from(d);
        for limb in &mut limbs {
            let v = *limb * u64::from(radix) + carry;
            *limb = v % LIMB;
            carry = v / LIMB;
        }
        if carry > 0 {
            limbs.push(carry);
        }
    }
    let mut out = limbs.last().map_or(String::new(), |top| top.to_string());
    for limb in limbs.iter().rev().skip(1) {
        out.push_str(&format!("{limb:09}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruby_integer_accepts_what_ruby_accepts() {
        for (text, want) in [
            ("0", 0),
            ("42", 42),
            ("-3", -3),
            ("+7", 7),
            (" 12 ", 12),
            ("\t5\n", 5),
            ("1_000", 1000),
            ("010", 8),
            ("0x1f", 31),
            ("0X1F", 31),
            ("0b101", 5),
            ("0o17", 15),
            ("0d19", 19),
            ("-0x10", -16),
            ("00", 0),
            ("-0", 0),
        ] {
            assert_eq!(parse_ruby_integer(text), Some(want.to_string()), "{text:?}");
        }
    }

    /// What Ruby's `Integer()` gives for numbers past 64 and 128 bits.
    #[test]
    fn ruby_integers_have_no_size_limit() {
        for (text, want) in [
            ("99999999999999999999", "99999999999999999999"),
            (
                "-123456789012345678901234567890",
                "-123456789012345678901234567890",
            ),
            (
                "0d000123456789012345678901234567890",
                "123456789012345678901234567890",
            ),
            ("0x10000000000000000", "18446744073709551616"),
            (
                "0xffffffffffffffffffffffffffffffffff",
                "87112285931760246646623899502532662132735",
            ),
            ("0b1_0000_0000", "256"),
            ("0777777777777777777777777", "4722366482869645213695"),
        ] {
            assert_eq!(parse_ruby_integer(text).as_deref(), Some(want), "{text:?}");
        }
        let huge_hex = format!("0x{}", "f".repeat(MAX_RADIX_DIGITS + 1));
        assert_eq!(parse_ruby_integer(&huge_hex), None);
        let long_decimal = "9".repeat(5000);
        assert_eq!(parse_ruby_integer(&long_decimal), Some(long_decimal));
    }

    #[test]
    fn paths_are_decoded_and_normalised_as_webrick_does() {
        for (raw, want) in [
            ("/details/0", "/details/0"),
            ("/details/%207", "/details/ 7"),
            ("/details/0%2F5", "/details/0/5"),
            ("//details//0", "/details/0"),
            ("/details/./0", "/details/0"),
            ("/x/../details/0", "/details/0"),
            ("/details/0/", "/details/0/"),
            ("/details/0/.", "/details/0/"),
            ("/details/%zz", "/details/%zz"),
            ("/%64etails/1", "/details/1"),
            ("/", "/"),
        ] {
            assert_eq!(webrick_path(raw).as_deref(), Ok(want), "{raw:?}");
        }
        assert_eq!(webrick_path("/../details/0"), Err(AbnormalPath));
        assert_eq!(webrick_path("/details/../../x"), Err(AbnormalPath));
    }

    #[test]
    fn ruby_integer_rejects_what_ruby_rejects() {
        for text in [
            "", " ", "abc", "08", "1.5", "1e3", "_1", "1_", "1__0", "0x", "--1", "1 2", "0b2",
            "details", "+", "12abc",
        ] {
            assert_eq!(parse_ruby_integer(text), None, "{text:?}");
        }
    }

    #[test]
    fn mounts_match_on_segment_boundaries() {
        assert!(mounted("/details", "/details"));
        assert!(mounted("/details/0/x", "/details"));
        assert!(!mounted("/detailsx", "/details"));
        assert_eq!(last_segment("/details/1/"), "1");
        assert_eq!(last_segment("/details/"), "details");
        assert_eq!(last_segment("/details/0/x"), "x");
    }

    #[test]
    fn external_book_service_is_refused_clearly() {
        let err = Config::from_env(&[("ENABLE_EXTERNAL_BOOK_SERVICE", "true")]).unwrap_err();
        assert_eq!(err.name, "ENABLE_EXTERNAL_BOOK_SERVICE");
        assert!(Config::from_env(&[("ENABLE_EXTERNAL_BOOK_SERVICE", "false")]).is_ok());
    }
}
