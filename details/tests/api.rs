//! The details contract, in process.

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn call(method: Method, uri: &str) -> (StatusCode, String, String) {
    let response = respond(method, uri).await;
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn details_of_product_zero_is_the_exact_upstream_json() {
    let (status, ct, body) = call(Method::GET, "/details/0").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, "application/json");
    assert_eq!(
        body,
        r#"{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"}"#
    );
}

#[tokio::test]
async fn any_integer_id_is_echoed() {
    for (uri, id) in [
        ("/details/1", "1"),
        ("/details/-5", "-5"),
        ("/details/010", "8"),
        ("/details/0x10?x=1", "16"),
        ("/details/99999999999999999999", "99999999999999999999"),
        ("/details/%207", "7"),
        ("/details/0%2F5", "5"),
        ("//details//3", "3"),
        ("/details/./4", "4"),
    ] {
        let (status, _, body) = call(Method::GET, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert!(
            body.starts_with(&format!("{{\"id\":{id},\"author\"")),
            "{uri}: {body}"
        );
    }
}

#[tokio::test]
async fn non_integer_ids_are_400_with_lowercase_id() {
    for uri in [
        "/details/abc",
        "/details/",
        "/details",
        "/details/0/x",
        "/details/08",
    ] {
        let (status, ct, body) = call(Method::GET, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(ct, "application/json");
        assert_eq!(
            body, r#"{"error":"please provide numeric product id"}"#,
            "{uri}"
        );
    }
}

#[tokio::test]
async fn health_body_is_upstreams() {
    let (status, ct, body) = call(Method::GET, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, "application/json");
    assert_eq!(body, r#"{"status":"Details is healthy"}"#);
}

#[tokio::test]
async fn other_paths_are_html_404() {
    let (status, ct, body) = call(Method::GET, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(ct.starts_with("text/html"));
    assert!(body.contains("Not Found"));
}

/// The response to `method uri`, headers included.
async fn respond(method: Method, uri: &str) -> http::Response<Body> {
    details::app(details::Config::default())
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn webrick_methods_are_served_and_others_are_405() {
    let (_, _, book) = call(Method::GET, "/details/0").await;
    // WEBrick 1.8's mount_proc runs the proc for PUT too.
    for method in [Method::POST, Method::PUT] {
        assert_eq!(
            call(method.clone(), "/details/0").await,
            (StatusCode::OK, "application/json".to_owned(), book.clone()),
            "{method}"
        );
    }
    assert_eq!(
        call(Method::DELETE, "/health").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn a_path_above_the_root_is_webricks_400() {
    let (status, ct, body) = call(Method::GET, "/details/../../0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(body.contains("Bad Request"), "{body}");
}

/// WEBrick's OPTIONS lists its servlet's methods, sorted, and runs nothing: an empty body.
#[tokio::test]
async fn options_lists_webricks_methods_with_an_empty_body() {
    for path in ["/details/0", "/health"] {
        let response = respond(Method::OPTIONS, path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            response.headers()["allow"],
            "GET,HEAD,OPTIONS,POST,PUT",
            "{path}"
        );
        assert_eq!(response.headers().get("content-type"), None, "{path}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty(), "{path}: {body:?}");
    }
    assert_eq!(
        call(Method::OPTIONS, "/nope").await.0,
        StatusCode::NOT_FOUND
    );
}

/// WEBrick reads at most 2083 bytes of request line (CRLF included); a longer one is 414,
/// whatever the path, and the connection closes.
#[tokio::test]
async fn a_request_line_over_webricks_limit_is_414() {
    // `GET ` + path + ` HTTP/1.1\r\n` is the path's length and 15.
    let path_of = |len: usize| format!("/details/1{}", "0".repeat(len - "/details/1".len()));
    let at_limit = path_of(details::MAX_REQUEST_LINE_BYTES - 15);
    let (status, _, body) = call(Method::GET, &at_limit).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for path in [
        path_of(details::MAX_REQUEST_LINE_BYTES - 14),
        path_of(3001),
        format!("/nope/{}", "x".repeat(3000)),
    ] {
        let response = respond(Method::GET, &path).await;
        assert_eq!(
            response.status(),
            StatusCode::URI_TOO_LONG,
            "{}",
            path.len()
        );
        assert_eq!(response.headers()["connection"], "close");
        assert_eq!(
            response.headers()["content-type"],
            "text/html; charset=ISO-8859-1"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.contains("<TITLE>Request-URI Too Large</TITLE>"),
            "{body}"
        );
    }
    // The query string is part of the request line too.
    let query = format!("/details/0?{}", "q".repeat(details::MAX_REQUEST_LINE_BYTES));
    assert_eq!(call(Method::GET, &query).await.0, StatusCode::URI_TOO_LONG);
}
