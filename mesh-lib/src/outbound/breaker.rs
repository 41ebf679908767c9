//! The circuit breaker of a DestinationRule's `connectionPool`: more requests in flight to a
//! service than `tcp.maxConnections + http.http1MaxPendingRequests` fail at once with
//! [`LocalError::Overflow`] (503, `x-envoy-overloaded: true`) instead of queueing without
//! bound. It sits below endpoint choice, at the point where a request would take a connection.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use super::split::Chosen;
use crate::BoxError;
use crate::classify::LocalError;
use crate::shared::health::Health;

#[derive(Debug, Clone)]
pub struct BreakerLayer {
    health: Arc<Health>,
}

impl BreakerLayer {
    pub fn new(health: Arc<Health>) -> Self {
        Self { health }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Breaker {
            inner,
            health: self.health.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Breaker<S> {
    inner: S,
    health: Arc<Health>,
}

impl<S> Service<Request<Bytes>> for Breaker<S>
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
        let limit = req.extensions().get::<Chosen>().and_then(|c| {
            let d = c.destination();
            d.policy.max_in_flight.map(|max| (d.service.clone(), max))
        });
        let Some((service, max)) = limit else {
            return Box::pin(self.inner.call(req));
        };
        if !self.health.admit(&service, max) {
            tracing::debug!(%service, "circuit breaker: overflow");
            return Box::pin(async { Err(LocalError::Overflow.into()) });
        }
        let health = self.health.clone();
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            health.release(&service);
            result
        })
    }
}
