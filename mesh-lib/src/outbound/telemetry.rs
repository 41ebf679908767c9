//! Outbound recording (Istio's `reporter="source"`), the outermost layer of the mesh's outbound
//! stack: it sees every request as the application sent it and its final outcome, an
//! upstream's answer or the mesh's own ([`super::rescue`] marks those with their flag). The
//! layers below report what they learnt (the endpoint chosen, faults, retries) into the
//! request's [`Attempt`]; this layer names the calling workload to the peer (`x-mesh-peer`)
//! and records one sample per request.

use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use super::rescue::LocalReply;
use crate::BoxError;
use crate::dataplane::Mesh;
use crate::telemetry::PEER_HEADER;
use crate::telemetry::outbound::{Attempt, Outcome, Source, record};

#[derive(Debug, Clone)]
pub struct RecordLayer {
    mesh: Mesh,
    peer: Option<HeaderValue>,
}

impl RecordLayer {
    pub fn new(mesh: Mesh) -> Self {
        let peer = HeaderValue::from_str(&mesh.workload_name().header_value()).ok();
        Self { mesh, peer }
    }
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Record {
            inner,
            mesh: self.mesh.clone(),
            peer: self.peer.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Record<S> {
    inner: S,
    mesh: Mesh,
    peer: Option<HeaderValue>,
}

impl<S> Service<Request<Bytes>> for Record<S>
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

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        let attempt = Attempt::default();
        req.extensions_mut().insert(attempt.clone());
        if let Some(v) = &self.peer {
            req.headers_mut().insert(PEER_HEADER, v.clone());
        }
        let host = req.uri().host().unwrap_or_default();
        let service = host.split('.').next().unwrap_or(host).to_owned();
        let request_bytes = Some(req.body().len() as u64);
        let mesh = self.mesh.clone();
        let start = tokio::time::Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await?;
            let millis = start.elapsed().as_secs_f64() * 1000.0;
            let response_bytes = axum::body::HttpBody::size_hint(response.body()).exact();
            let source = Source {
                telemetry: mesh.telemetry(),
                name: mesh.workload_name(),
                identity: mesh.identity(),
            };
            let outcome = Outcome {
                status: response.status().as_u16(),
                local_flag: response.extensions().get::<LocalReply>().map(|r| r.0),
                millis,
                request_bytes,
                response_bytes,
            };
            record(source, &service, &attempt, outcome);
            Ok(response)
        })
    }
}
