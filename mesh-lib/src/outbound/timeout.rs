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
use super::classify::LocalError;
use super::plan::RoutePlan;
use crate::BoxError;

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
    S: Service<Request<Bytes>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
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
        Box::pin(async move {
            match timeout {
                None => inner.call(req).await,
                Some(limit) => match tokio::time::timeout(limit, inner.call(req)).await {
                    Ok(result) => result,
                    Err(_) => Err(LocalError::RouteTimeout.into()),
                },
            }
        })
    }
}
