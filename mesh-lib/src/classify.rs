//! One response classifier for the whole outbound stack: retries, outlier detection and
//! (later) metrics all judge an outcome the same way.

use http::{Response, StatusCode};

use crate::BoxError;
pub(crate) use crate::respond::{ConnectError, LocalError};

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A response below 500.
    Success(StatusCode),
    /// A 5xx from the upstream other than 502/503/504.
    ServerError(StatusCode),
    /// 502, 503 or 504 from the upstream.
    GatewayError(StatusCode),
    /// No connection could be made (refused, unreachable, TLS refused): the request was
    /// never sent, so it is always safe to retry.
    ConnectFailure,
    /// The connection broke after the request may have been sent.
    Reset,
    /// The mesh itself refused the request (circuit breaker, no endpoint, route timeout).
    Local,
}

impl Class {
    /// Whether an outlier detector counts this against the endpoint (Envoy's "5xx": any 5xx,
    /// plus connection failures and resets).
    pub fn is_5xx(self) -> bool {
        matches!(
            self,
            Self::ServerError(_) | Self::GatewayError(_) | Self::ConnectFailure | Self::Reset
        )
    }
}

/// The classification of an attempt's outcome.
pub(crate) fn classify<B>(result: &Result<Response<B>, BoxError>) -> Class {
    match result {
        Ok(r) => {
            let status = r.status();
            match status.as_u16() {
                502..=504 => Class::GatewayError(status),
                500..=599 => Class::ServerError(status),
                _ => Class::Success(status),
            }
        }
        Err(e) if e.is::<LocalError>() => Class::Local,
        Err(e) if e.is::<ConnectError>() => Class::ConnectFailure,
        Err(_) => Class::Reset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_errors() {
        let resp = |s: u16| Ok::<_, BoxError>(Response::builder().status(s).body(()).unwrap());
        assert_eq!(classify(&resp(200)), Class::Success(StatusCode::OK));
        assert_eq!(classify(&resp(404)), Class::Success(StatusCode::NOT_FOUND));
        assert_eq!(
            classify(&resp(500)),
            Class::ServerError(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(
            classify(&resp(503)),
            Class::GatewayError(StatusCode::SERVICE_UNAVAILABLE)
        );
        let err = |e: BoxError| classify::<()>(&Err(e));
        assert_eq!(err(Box::new(LocalError::Overflow)), Class::Local);
        assert_eq!(
            err(Box::new(ConnectError("refused".into()))),
            Class::ConnectFailure
        );
        assert_eq!(err("broken pipe".into()), Class::Reset);
        assert!(Class::ConnectFailure.is_5xx() && !Class::Local.is_5xx());
    }
}
