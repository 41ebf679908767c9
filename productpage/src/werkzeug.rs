//! The responses Flask's Werkzeug writes itself, byte for byte: its `404 Not Found` error
//! page and its redirect page (302 from login and logout, 308 from merged slashes). Clients
//! and tests written against upstream see the same HTML, not an empty body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const HTML: &str = "text/html; charset=utf-8";

/// `werkzeug.exceptions.NotFound` as Flask sends it for a path no route matches.
pub(crate) fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, HTML)],
        "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n\
         <p>The requested URL was not found on the server. If you entered the URL manually \
         please check your spelling and try again.</p>\n",
    )
        .into_response()
}

/// `werkzeug.utils.redirect(location, status)`: `Location` as given, and the page naming it.
pub(crate) fn redirect(status: StatusCode, location: HeaderValue) -> Response {
    let shown = escape(&String::from_utf8_lossy(location.as_bytes()));
    let body = format!(
        "<!doctype html>\n<html lang=en>\n<title>Redirecting...</title>\n<h1>Redirecting...</h1>\n\
         <p>You should be redirected automatically to the target URL: <a href=\"{shown}\">{shown}</a>. \
         If not, click the link.\n"
    );
    (
        status,
        [
            (header::LOCATION, location),
            (header::CONTENT_TYPE, HeaderValue::from_static(HTML)),
        ],
        body,
    )
        .into_response()
}

/// MarkupSafe's `escape`, which Werkzeug uses: `&`, `<`, `>`, `'` and `"`.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
        .replace('"', "&#34;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_markupsafe_does() {
        assert_eq!(
            escape(r#"http://h/a?x=1&y="<'>"#),
            "http://h/a?x=1&amp;y=&#34;&lt;&#39;&gt;"
        );
    }
}
