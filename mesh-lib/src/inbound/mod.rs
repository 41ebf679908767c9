//! The inbound side of a meshed workload, in the order a request meets it:
//!
//! 1. [`transport`]: mTLS or plaintext per PeerAuthentication, the peer's identity;
//! 2. [`telemetry`]: Istio metrics (`reporter="destination"`) and the access log, outermost so
//!    a refused request still counts;
//! 3. [`normalize`]: the one form of the path every later layer and the service see;
//! 4. [`ratelimit`]: the local token bucket, so a flood costs nothing further;
//! 5. [`authz`]: AuthorizationPolicy on the peer's principal;
//! 6. the service's router (embedded) or the forward to the app (sidecar).
//!
//! [`stack`] builds 2–6; the listener ([`crate::server`]) runs 1 per connection.

pub mod authz;
pub mod normalize;
pub mod ratelimit;
pub(crate) mod telemetry;
pub(crate) mod transport;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse as _, Response};
use tower::{Service, ServiceExt as _};
use tower_http::trace::TraceLayer;

use crate::dataplane::Mesh;

pub use transport::TLS_HANDSHAKE_TIMEOUT;

/// The inbound stack around a service's router, outermost first: request spans and access
/// logs at `debug`, then (in the mesh) [`Inbound`].
pub fn stack(app: Router, mesh: Option<Mesh>) -> Router {
    // A 5xx answered on purpose (a readiness probe before the certificate, Envoy's 503s) is
    // not an error of this process: the access log and metrics record it; at `error` it would
    // drown the lines that are.
    let trace = TraceLayer::new_for_http()
        .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG));
    match mesh {
        Some(mesh) => Router::new().fallback_service(
            tower::ServiceBuilder::new().layer(trace).service(Inbound {
                limiter: ratelimit::Limiter::new(mesh.clone()),
                mesh,
                app,
            }),
        ),
        None => app.layer(trace),
    }
}

/// Steps 2–6 as one service: one future per request rather than a boxed service and future
/// per step, which is what a router layer or `from_fn` middleware costs on every request.
#[derive(Clone)]
struct Inbound {
    mesh: Mesh,
    limiter: ratelimit::Limiter,
    app: Router,
}

impl Service<Request> for Inbound {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let inbound = self.clone();
        Box::pin(async move {
            // Outermost, so a refused request still counts.
            let response =
                telemetry::record(&inbound.mesh, request, |request| inbound.admit(request)).await;
            Ok(response)
        })
    }
}

impl Inbound {
    /// Normalise, rate-limit, authorize, then the service: its router matches the
    /// normalised path, as the policies did.
    async fn admit(&self, request: Request) -> Response {
        let request = match normalize::normalize(request) {
            Ok(request) => request,
            Err(refused) => return refused.into_response(),
        };
        if let Some(refused) = self.limiter.refuse(&request) {
            return refused;
        }
        if let Some(denied) = authz::deny(&self.mesh, &request) {
            return denied;
        }
        match self.app.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}
