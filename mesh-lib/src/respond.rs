//! Every answer the mesh makes up itself, in one place: what an application (or a client of
//! the gateway) sees when the mesh answers in place of an upstream, worded as Envoy words it,
//! so that what users read in Istio's docs and issues is what they get here.
//!
//! The outbound stack ([`rescue`](crate::outbound::rescue)), the proxies' relaying, the
//! inbound refusals (authorization, rate limit, path normalization) and fault aborts all call
//! this module; none writes a status or a body of its own. The failures the mesh answers for
//! ([`LocalError`], [`ConnectError`]) are defined here, below the layers that raise them;
//! `classify` judges outcomes for retries and outlier
//! detection, and each failure maps here to one answer and its Envoy response flag, which
//! metrics and access logs record.

use axum::body::Body;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use crate::BoxError;

/// Errors raised inside the mesh's own layers (as opposed to the upstream's answer).
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("upstream request timeout")]
    RouteTimeout,
    #[error("upstream connect error or disconnect/reset before headers. reset reason: overflow")]
    Overflow,
    #[error("no healthy upstream")]
    NoHealthyUpstream,
}

/// A connection to the chosen endpoint could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure ({0})"
)]
pub struct ConnectError(#[source] pub BoxError);

/// Envoy's body for a connection that could not be opened.
const CONNECT_FAILURE: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
/// Envoy's body for a connection that broke before the response's headers.
const CONNECTION_TERMINATION: &str = "upstream connect error or disconnect/reset before headers. reset reason: connection termination";

/// An answer the mesh gives in place of an upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synthetic {
    /// 504 `upstream request timeout`: the route's timeout (or the proxy's deadline) passed.
    UpstreamTimeout,
    /// 503 with `x-envoy-overloaded: true`: a circuit breaker or the retry budget refused.
    Overflow,
    /// 503 `no healthy upstream`: no endpoint is registered or every one is ejected.
    NoHealthyUpstream,
    /// 503: no connection to the chosen endpoint could be opened.
    ConnectFailure,
    /// 503: the connection broke before the response's headers.
    ConnectionTermination,
    /// 403 `RBAC: access denied`: an AuthorizationPolicy denied the request.
    RbacDenied,
    /// 404 with no body: no route of the gateway matches the request.
    NoRoute,
    /// 400 with no body: the request's target cannot be served (a path that normalization
    /// refuses, or a URI that cannot be rebuilt).
    BadRequest,
    /// 408 `request timeout`: the client stopped sending its body.
    RequestTimeout,
    /// 413 `request body too large`: the body is beyond the proxy's buffer.
    BodyTooLarge,
    /// 400 `request body could not be read`.
    BodyUnreadable,
}

impl Synthetic {
    /// The answer for a failure inside the outbound stack.
    pub fn for_error(error: &BoxError) -> Self {
        match error.downcast_ref::<LocalError>() {
            Some(LocalError::RouteTimeout) => Self::UpstreamTimeout,
            Some(LocalError::Overflow) => Self::Overflow,
            Some(LocalError::NoHealthyUpstream) => Self::NoHealthyUpstream,
            None if error.is::<ConnectError>() => Self::ConnectFailure,
            None => Self::ConnectionTermination,
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Overflow
            | Self::NoHealthyUpstream
            | Self::ConnectFailure
            | Self::ConnectionTermination => StatusCode::SERVICE_UNAVAILABLE,
            Self::RbacDenied => StatusCode::FORBIDDEN,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::BadRequest | Self::BodyUnreadable => StatusCode::BAD_REQUEST,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// Envoy's body for this answer (empty where Envoy sends none).
    pub fn body(self) -> &'static str {
        match self {
            Self::UpstreamTimeout => "upstream request timeout",
            Self::Overflow => {
                "upstream connect error or disconnect/reset before headers. reset reason: overflow"
            }
            Self::NoHealthyUpstream => "no healthy upstream",
            Self::ConnectFailure => CONNECT_FAILURE,
            Self::ConnectionTermination => CONNECTION_TERMINATION,
            Self::RbacDenied => "RBAC: access denied",
            Self::NoRoute | Self::BadRequest => "",
            Self::RequestTimeout => "request timeout",
            Self::BodyTooLarge => "request body too large",
            Self::BodyUnreadable => "request body could not be read",
        }
    }

    /// Envoy's response flag, as access logs and `response_flags` print it (`-` for none).
    pub fn flag(self) -> &'static str {
        match self {
            Self::UpstreamTimeout => "UT",
            Self::Overflow => "UO",
            Self::NoHealthyUpstream => "UH",
            Self::ConnectFailure => "UF",
            Self::ConnectionTermination => "UC",
            Self::NoRoute => "NR",
            Self::RbacDenied | Self::BadRequest => "-",
            Self::RequestTimeout | Self::BodyTooLarge | Self::BodyUnreadable => "-",
        }
    }

    pub fn response(self) -> Response<Body> {
        let body = self.body();
        let mut response = if body.is_empty() {
            answer(self.status(), Body::empty())
        } else {
            text(self.status(), body)
        };
        if self == Self::Overflow {
            response.headers_mut().insert(
                HeaderName::from_static("x-envoy-overloaded"),
                HeaderValue::from_static("true"),
            );
        }
        response
    }
}

/// 429 (or the policy's status) `local_rate_limited`, with the policy's response headers:
/// Envoy's local rate limit filter's answer.
pub fn rate_limited<'a>(
    status: u16,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
    let mut response = text(status, "local_rate_limited");
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::from_str(value)) {
            response.headers_mut().insert(n, v);
        }
    }
    response
}

/// An injected abort: the fault's status with Envoy's body `fault filter abort`.
pub fn fault_abort(status: u16) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    text(status, FAULT_ABORT_BODY)
}

/// The body of an injected abort.
pub const FAULT_ABORT_BODY: &str = "fault filter abort";

/// A refusal of the proxy's own protocol (a request an HTTP proxy cannot take), with the
/// reason as its body.
pub fn proxy_refusal(status: StatusCode, reason: impl Into<String>) -> Response<Body> {
    text(status, reason.into())
}

fn text(status: StatusCode, body: impl Into<Body>) -> Response<Body> {
    let mut response = answer(status, body.into());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn answer(status: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::OutboundError;

    async fn read(response: Response<Body>) -> (StatusCode, http::HeaderMap, String) {
        let (parts, body) = response.into_parts();
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn each_failure_gets_envoys_status_body_and_flag() {
        let cases: [(BoxError, u16, &str, &str); 5] = [
            (
                Box::new(LocalError::RouteTimeout),
                504,
                "upstream request timeout",
                "UT",
            ),
            (
                Box::new(LocalError::NoHealthyUpstream),
                503,
                "no healthy upstream",
                "UH",
            ),
            (
                Box::new(LocalError::Overflow),
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                "UO",
            ),
            (
                Box::new(ConnectError("refused".into())),
                503,
                CONNECT_FAILURE,
                "UF",
            ),
            ("connection reset".into(), 503, CONNECTION_TERMINATION, "UC"),
        ];
        for (error, status, body, flag) in cases {
            let synthetic = Synthetic::for_error(&error);
            assert_eq!(synthetic.flag(), flag);
            let (got_status, headers, got_body) = read(synthetic.response()).await;
            assert_eq!((got_status.as_u16(), got_body.as_str()), (status, body));
            assert_eq!(
                headers.contains_key("x-envoy-overloaded"),
                flag == "UO",
                "{flag}"
            );
        }
    }

    #[tokio::test]
    async fn no_route_is_an_empty_404() {
        let timeout = OutboundError::Timeout(std::time::Duration::from_secs(1));
        assert_eq!(timeout.synthetic(), Synthetic::UpstreamTimeout);
        let refused = OutboundError::Request {
            authority: "app:9080".into(),
            source: Box::new(ConnectError("refused".into())),
        };
        assert_eq!(refused.synthetic(), Synthetic::ConnectFailure);
        let (status, _, body) = read(Synthetic::NoRoute.response()).await;
        assert_eq!((status, body.as_str()), (StatusCode::NOT_FOUND, ""));
    }

    #[tokio::test]
    async fn a_rate_limited_answer_carries_the_policys_status_and_headers() {
        let (status, headers, body) = read(rate_limited(
            429,
            [("x-local-rate-limit", "true"), ("bad name", "x")],
        ))
        .await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (429, "local_rate_limited")
        );
        assert_eq!(headers["x-local-rate-limit"], "true");
        let (status, _, body) = read(fault_abort(418)).await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (418, "fault filter abort")
        );
    }
}
