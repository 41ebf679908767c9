//! The inbound side of a meshed workload, in the order a request meets it:
//!
//! 1. `transport`: mTLS or plaintext per PeerAuthentication, the peer's identity;
//! 2. `telemetry`: Istio metrics (`reporter="destination"`) and the access log, outermost so
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
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse as _, Response};
use tower::{Layer as _, Service, ServiceExt as _};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{
    DefaultMakeSpan, DefaultOnBodyChunk, DefaultOnEos, DefaultOnFailure, DefaultOnRequest,
    DefaultOnResponse, Trace, TraceLayer,
};

use crate::dataplane::Mesh;

pub use transport::TLS_HANDSHAKE_TIMEOUT;

/// `S` with a request span and access log at `debug` (tower-http's trace layer).
type Traced<S> = Trace<
    S,
    SharedClassifier<ServerErrorsAsFailures>,
    DefaultMakeSpan,
    DefaultOnRequest,
    DefaultOnResponse,
    DefaultOnBodyChunk,
    DefaultOnEos,
    DefaultOnFailure,
>;

fn traced<S>(service: S) -> Traced<S> {
    // A 5xx answered on purpose (a readiness probe before the certificate, Envoy's 503s) is
    // not an error of this process: the access log and metrics record it; at `error` it would
    // drown the lines that are.
    TraceLayer::new_for_http()
        .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG))
        .layer(service)
}

/// What a listener runs for each request: the inbound stack around a service's router.
/// Called directly by the connection, with no router of its own around it (a router's
/// dispatch and boxed route cost more than the steps here).
#[derive(Clone)]
pub struct Stack(Layers);

#[derive(Clone)]
enum Layers {
    /// In the mesh: request spans, then [`Inbound`].
    Mesh(Traced<Inbound>),
    /// Out of it: request spans, then the router.
    Plain(Traced<Router>),
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Layers::Mesh(_) => "Stack(mesh)",
            Layers::Plain(_) => "Stack(plain)",
        })
    }
}

/// The inbound stack around a service's router, outermost first: request spans and access
/// logs at `debug`, then (in the mesh) `Inbound`.
pub fn stack(app: Router, mesh: Option<Mesh>) -> Stack {
    match mesh {
        Some(mesh) => Stack(Layers::Mesh(traced(Inbound { mesh, app }))),
        None => Stack(Layers::Plain(traced(app))),
    }
}

/// What [`Stack`] answers with.
type StackFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<B> Service<http::Request<B>> for Stack
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = StackFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready (Inbound, and an axum router).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let request = request.map(Body::new);
        match &mut self.0 {
            Layers::Mesh(inbound) => answer(inbound.call(request)),
            Layers::Plain(router) => answer(router.call(request)),
        }
    }
}

/// The response of either stack, its body as axum's.
fn answer<F, B>(call: F) -> StackFuture
where
    F: Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::BoxError>,
{
    Box::pin(async move { Ok(call.await?.map(Body::new)) })
}

/// Steps 2–6 as one service: one future per request rather than a boxed service and future
/// per step, which is what a router layer or `from_fn` middleware costs on every request.
#[derive(Clone)]
struct Inbound {
    mesh: Mesh,
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
        if let Some(refused) = ratelimit::refuse(&self.mesh, &request) {
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
