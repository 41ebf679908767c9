//! The one place the outbound stack turns its failures into HTTP responses, as an Istio
//! sidecar does: the application sees Envoy's statuses and bodies (504 `upstream request
//! timeout`, 503 with `x-envoy-overloaded: true`, 503 `no healthy upstream`, 503
//! `upstream connect error …`), never a transport error. Outermost in the mesh stack.

use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use tower::{Layer, Service};

use super::BoxFuture;
use super::classify::{ConnectError, LocalError};
use crate::BoxError;

/// The synthetic response for a failure inside the mesh.
pub fn respond(error: &BoxError) -> Response<Body> {
    let (status, body, overloaded) = match error.downcast_ref::<LocalError>() {
        Some(LocalError::RouteTimeout) => (StatusCode::GATEWAY_TIMEOUT, error.to_string(), false),
        Some(LocalError::Overflow) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string(), true),
        Some(LocalError::NoHealthyUpstream) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string(), false),
        None if error.is::<ConnectError>() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure".to_owned(),
            false,
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination".to_owned(),
            false,
        ),
    };
    tracing::debug!(%status, "mesh answered for the upstream: {error}");
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain");
    if overloaded {
        response = response.header("x-envoy-overloaded", "true");
    }
    response
        .body(Body::from(body))
        .expect("a valid synthetic response")
}

#[derive(Debug, Clone, Default)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Rescue<S> {
    inner: S,
}

impl<S> Service<Request<Bytes>> for Rescue<S>
where
    S: Service<Request<Bytes>, Response = Response<Body>, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let call = self.inner.call(req);
        Box::pin(async move { Ok(call.await.unwrap_or_else(|e| respond(&e))) })
    }
}
