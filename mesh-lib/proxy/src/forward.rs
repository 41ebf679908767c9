//! Passing one request on through a [`Client`]: what every proxy listener shares (the ingress
//! gateway, the sidecar's inbound and outbound listeners). The body is buffered within the
//! outbound limit (so attempts can be retried), hop-by-hop headers stay on their hop, and a
//! failure with no response becomes Envoy's answer for it.

use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;

use mesh::outbound::{Client, OutboundError};
use mesh::respond::Synthetic;

/// How long a proxy waits for an upstream answer (Istio sets no route timeout by default;
/// this only bounds a request nobody answers).
pub const UPSTREAM_DEADLINE: Duration = Duration::from_secs(120);

/// Headers that describe one hop (RFC 9110 §7.6.1, plus the proxy-only ones) and are never
/// passed on.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "transfer-encoding",
    "upgrade",
    "te",
];

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Nearly every request carries none of them: one pass over the names finds that out
    // without hashing each of the eight for a removal.
    if !headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(&name.as_str()))
    {
        return;
    }
    // Names listed in Connection are hop-by-hop too.
    let listed: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in listed.iter().map(String::as_str).chain(HOP_BY_HOP) {
        headers.remove(name);
    }
}

/// The request's head with its hop-by-hop headers gone, and its whole body; 413 beyond the
/// outbound limit, 408 when the client stopped sending it (Envoy's answers).
pub(crate) async fn buffer(
    request: axum::extract::Request,
) -> Result<(http::request::Parts, Bytes), Response> {
    let (mut parts, body) = request.into_parts();
    let body = match mesh::outbound::read_limited(body).await {
        Ok(body) => body,
        Err(e) => {
            let refusal = if caused_by::<mesh::server::BodyReadTimeout>(&*e) {
                Synthetic::RequestTimeout
            } else if caused_by::<http_body_util::LengthLimitError>(&*e) {
                Synthetic::BodyTooLarge
            } else {
                Synthetic::BodyUnreadable
            };
            return Err(refusal.response());
        }
    };
    strip_hop_by_hop(&mut parts.headers);
    Ok((parts, body))
}

/// Whether `E` is `error` or anywhere in its sources.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| e.is::<E>())
}

/// Sends the request (an absolute `http://` URI) through `client` and answers with what came
/// back, or with Envoy's 504/503 when nothing did.
pub(crate) async fn send(
    client: &Client,
    parts: http::request::Parts,
    body: Bytes,
    deadline: Duration,
) -> Response {
    match client
        .send_buffered(http::Request::from_parts(parts, body), deadline)
        .await
    {
        Ok(response) => respond(response),
        Err(e) => failure(&e),
    }
}

/// A response as it goes back down this hop.
pub(crate) fn respond<B: Into<Body>>(response: http::Response<B>) -> Response {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.into())
}

/// Envoy's answer for a request that got no response (worded by [`mesh::respond`], as the
/// outbound stack's own answers are).
pub(crate) fn failure(error: &OutboundError) -> Response {
    let synthetic = error.synthetic();
    if synthetic != Synthetic::UpstreamTimeout {
        tracing::warn!("proxy: {error}");
    }
    synthetic.response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_stay_behind() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Hop"),
            ("x-hop", "1"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eDp5"),
            ("te", "trailers"),
            ("x-request-id", "abc"),
            ("end-user", "jason"),
        ] {
            headers.insert(k, v.parse().unwrap());
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["end-user", "x-request-id"]);
    }

    /// A body that fails with `error` on its first read.
    fn failing(error: mesh::BoxError) -> axum::body::Body {
        let frames = tokio_stream::iter([Err::<hyper::body::Frame<Bytes>, _>(error)]);
        axum::body::Body::new(http_body_util::StreamBody::new(frames))
    }

    #[tokio::test]
    async fn a_stalled_body_is_408_an_oversized_one_413_a_broken_one_400() {
        let stalled = mesh::server::BodyReadTimeout(std::time::Duration::from_secs(15));
        for (error, status) in [
            (mesh::BoxError::from(stalled), StatusCode::REQUEST_TIMEOUT),
            ("connection reset".into(), StatusCode::BAD_REQUEST),
        ] {
            let request = http::Request::post("/").body(failing(error)).unwrap();
            let refused = buffer(request).await.unwrap_err();
            assert_eq!(refused.status(), status);
        }
        let huge = vec![0u8; mesh::outbound::MAX_REQUEST_BODY + 1];
        let request = http::Request::post("/")
            .body(axum::body::Body::from(huge))
            .unwrap();
        assert_eq!(
            buffer(request).await.unwrap_err().status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
