//! Route selection, at the top of the outbound stack: the first matching rule of the
//! VirtualService for the request's host (header, uri, method, query matches; per request, so
//! `end-user: jason` can go elsewhere than everyone else), resolved against DestinationRules
//! into a [`RoutePlan`](super::plan::RoutePlan) every layer below reads. Without a VirtualService the plan is Istio's
//! default: the named service, its DestinationRule's policy, 2 retries on connect failure.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use tower::{Layer, Service};

use crate::BoxError;
use crate::dataplane::Mesh;

#[derive(Debug, Clone)]
pub struct RouteLayer {
    mesh: Mesh,
}

impl RouteLayer {
    pub fn new(mesh: Mesh) -> Self {
        Self { mesh }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Route {
            inner,
            mesh: self.mesh.clone(),
            plans: Arc::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route<S> {
    inner: S,
    mesh: Mesh,
    plans: Arc<super::routing::Plans>,
}

impl<S> Service<Request<Bytes>> for Route<S>
where
    S: Service<Request<Bytes>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        // A gateway has matched its request already (routing::gateway_plan).
        if req
            .extensions()
            .get::<Arc<super::plan::RoutePlan>>()
            .is_none()
        {
            let plan = super::routing::plan(&self.mesh, &self.plans, &mut req);
            req.extensions_mut().insert(plan);
        }
        self.inner.call(req)
    }
}
