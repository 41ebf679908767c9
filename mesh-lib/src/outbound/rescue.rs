//! Where the outbound stack turns its failures into HTTP responses, as an Istio sidecar does:
//! the application sees Envoy's statuses and bodies ([`crate::respond`] words them), never a
//! transport error. Right under the recording layer ([`super::telemetry`]), to which the
//! answer's Envoy response flag goes up in the response's extensions ([`LocalReply`]).

use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use crate::BoxError;
use crate::respond::Synthetic;

/// On a response the mesh made up: its Envoy response flag (`UT`, `UO`, `UH`, `UF`, `UC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalReply(pub &'static str);

#[derive(Debug, Clone, Copy, Default)]
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
        Box::pin(async move {
            match call.await {
                Ok(response) => Ok(response),
                Err(e) => {
                    let synthetic = Synthetic::for_error(&e);
                    tracing::debug!(status = %synthetic.status(), "mesh answered for the upstream: {e}");
                    let mut response = synthetic.response();
                    response
                        .extensions_mut()
                        .insert(LocalReply(synthetic.flag()));
                    Ok(response)
                }
            }
        })
    }
}
