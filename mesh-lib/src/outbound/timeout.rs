//! The route timeout: the whole exchange, retries included, must finish within the route's
//! `timeout` (or the caller's `x-envoy-upstream-rq-timeout-ms`), else it fails with
//! [`LocalError::RouteTimeout`], answered as 504 `upstream request timeout`. Istio sets no
//! timeout by default. It sits above retry so it bounds all attempts together.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use super::plan::RoutePlan;
use crate::BoxError;
use crate::classify::LocalError;

/// Envoy's per-request override, in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";

#[derive(Debug, Clone, Default)]
pub struct RouteTimeoutLayer;

impl<S> Layer<S> for RouteTimeoutLayer {
    type Service = RouteTimeout<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RouteTimeout { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RouteTimeout<S> {
    inner: S,
}

impl<S> Service<Request<Bytes>> for RouteTimeout<S>
where
    S: Service<Request<Bytes>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let from_header = req
            .headers()
            .get(TIMEOUT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        let timeout = from_header.or_else(|| {
            req.extensions()
                .get::<Arc<RoutePlan>>()
                .and_then(|p| p.timeout)
        });
        let call = self.inner.call(req);
        Box::pin(async move {
            match timeout {
                None => call.await,
                Some(limit) => match tokio::time::timeout(limit, call).await {
                    Ok(result) => result,
                    Err(_) => Err(LocalError::RouteTimeout.into()),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn slow(
        delay: Duration,
    ) -> impl Service<
        Request<Bytes>,
        Response = Response<Body>,
        Error = BoxError,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(move |_req: Request<Bytes>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, BoxError>(Response::new(Body::empty()))
        })
    }

    fn request(timeout: Option<Duration>) -> Request<Bytes> {
        let mut req = Request::new(Bytes::new());
        req.extensions_mut().insert(Arc::new(RoutePlan {
            timeout,
            ..RoutePlan::default()
        }));
        req
    }

    #[tokio::test(start_paused = true)]
    async fn the_route_timeout_cuts_at_its_deadline() {
        let start = tokio::time::Instant::now();
        let err = RouteTimeoutLayer
            .layer(slow(Duration::from_secs(2)))
            .oneshot(request(Some(Duration::from_millis(500))))
            .await
            .unwrap_err();
        assert!(matches!(
            err.downcast_ref::<LocalError>(),
            Some(LocalError::RouteTimeout)
        ));
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        let response = crate::respond::Synthetic::for_error(&err).response();
        assert_eq!(response.status(), 504);
    }

    #[tokio::test(start_paused = true)]
    async fn no_timeout_by_default_and_the_header_overrides() {
        let res = RouteTimeoutLayer
            .layer(slow(Duration::from_secs(30)))
            .oneshot(request(None))
            .await;
        assert!(res.is_ok(), "Istio sets no route timeout unless asked");
        let mut req = request(Some(Duration::from_secs(10)));
        req.headers_mut()
            .insert(TIMEOUT_HEADER, http::HeaderValue::from_static("100"));
        let start = tokio::time::Instant::now();
        assert!(
            RouteTimeoutLayer
                .layer(slow(Duration::from_secs(1)))
                .oneshot(req)
                .await
                .is_err()
        );
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }
}
