//! Bookinfo details: the book's details as compact JSON, for any integer id.
//!
//! Upstream is a Ruby WEBrick server; its observable behaviour is kept: prefix mounts on
//! `/details` and `/health`, Ruby `Integer()` id parsing (sign, `_`, `0x`/`0b`/`0o`, leading-zero
//! octal, surrounding whitespace), 400 `please provide numeric product id` otherwise, an HTML
//! 404 for other paths, and 405 for methods WEBrick does not serve.
#![forbid(unsafe_code)]

use axum::Router;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
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

/// The book, in upstream's exact key order.
#[derive(Debug, Serialize)]
struct Book {
    id: i128,
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
    fn with_id(id: i128) -> Self {
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
    let path = request.uri().path();
    let route = if mounted(path, "/health") {
        Route::Health
    } else if mounted(path, "/details") {
        Route::Details
    } else {
        return not_found();
    };
    // WEBrick's mount_proc answers GET, HEAD, POST and OPTIONS alike.
    if ![Method::GET, Method::HEAD, Method::POST, Method::OPTIONS].contains(request.method()) {
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
        Route::Details => match parse_ruby_integer(last_segment(path)) {
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

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html; charset=ISO-8859-1")],
        "<HTML>\n  <HEAD><TITLE>Not Found</TITLE></HEAD>\n  <BODY>\n    <H1>Not Found</H1>\n    The requested URL was not found on this server.\n  </BODY>\n</HTML>\n",
    )
        .into_response()
}

/// Ruby's strict `Integer(string)`: optional surrounding whitespace and sign, a radix prefix
/// (`0x`, `0b`, `0o`, `0d`, or a bare leading `0` for octal), and digits with single `_`
/// separators. `None` where Ruby raises, or beyond 128 bits.
pub fn parse_ruby_integer(text: &str) -> Option<i128> {
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
    let mut value: i128 = 0;
    for c in digits.chars().filter(|&c| c != '_') {
        let d = c.to_digit(radix)?;
        value = value
            .checked_mul(i128::from(radix))?
            .checked_add(i128::from(d))?;
    }
    Some(if negative { -value } else { value })
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
        ] {
            assert_eq!(parse_ruby_integer(text), Some(want), "{text:?}");
        }
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
