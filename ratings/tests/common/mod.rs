//! What the ratings test files share: a request to the router in process, and the binary's
//! answer to a configuration it refuses. Each file uses what it needs.
#![allow(dead_code)]

use std::process::Command;

use axum::Router;
use axum::body::Body;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// The status, `Content-Type` and body of `method uri` with `body`.
pub(crate) async fn request(
    app: &Router,
    method: Method,
    uri: &str,
    body: &str,
) -> (StatusCode, Option<String>, String) {
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::from(body.to_owned()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// The status and body of `method uri` with `body`.
pub(crate) async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    body: &str,
) -> (StatusCode, String) {
    let (status, _, body) = request(app, method, uri, body).await;
    (status, body)
}

/// The ratings binary's stderr under `env`, which it must refuse with exit 64.
pub(crate) fn refused(env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ratings"))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{env:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
