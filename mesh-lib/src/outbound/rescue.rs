//! Where the outbound stack turns its failures into HTTP responses, as an Istio sidecar does:
//! the application sees Envoy's statuses and bodies ([`crate::respond`] words them), never a
//! transport error. Outermost in the mesh stack.

use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use crate::BoxError;
use crate::dataplane::Mesh;
use crate::respond::Synthetic;
use crate::telemetry::PEER_HEADER;
use crate::telemetry::outbound::Attempt;

/// Also where each request is recorded for Istio's source-side metrics, since this is where
/// its final outcome (answer or synthetic response) is known.
#[derive(Debug, Clone)]
pub struct RescueLayer {
    mesh: Mesh,
    peer: Option<http::HeaderValue>,
}

impl RescueLayer {
    pub fn new(mesh: Mesh) -> Self {
        let peer = http::HeaderValue::from_str(&mesh.workload_name().header_value()).ok();
        Self { mesh, peer }
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            mesh: self.mesh.clone(),
            peer: self.peer.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rescue<S> {
    inner: S,
    mesh: Mesh,
    peer: Option<http::HeaderValue>,
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
            let (response, local) = match call.await {
                Ok(r) => (r, None),
                Err(e) => {
                    let synthetic = Synthetic::for_error(&e);
                    tracing::debug!(status = %synthetic.status(), "mesh answered for the upstream: {e}");
                    (synthetic.response(), Some(synthetic.flag()))
                }
            };
            let millis = start.elapsed().as_secs_f64() * 1000.0;
            let response_bytes = axum::body::HttpBody::size_hint(response.body()).exact();
            let source = crate::telemetry::outbound::Source {
                telemetry: mesh.telemetry(),
                name: mesh.workload_name(),
                identity: mesh.identity(),
            };
            crate::telemetry::outbound::record(
                source,
                &service,
                &attempt,
                crate::telemetry::outbound::Outcome {
                    status: response.status().as_u16(),
                    local_flag: local,
                    millis,
                    request_bytes,
                    response_bytes,
                },
            );
            Ok(response)
        })
    }
}
