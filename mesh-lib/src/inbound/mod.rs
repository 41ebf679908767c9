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

use axum::Router;
use tower_http::trace::TraceLayer;

use crate::dataplane::Mesh;

pub use transport::TLS_HANDSHAKE_TIMEOUT;

/// The inbound stack around a service's router, outermost first: request spans and access
/// logs at `debug`, then (in the mesh) Istio metrics and the access log, path normalisation
/// (so policies and the service see one form of each path, and a refused path is still
/// recorded), local rate limiting and authorization, so neither a flood nor a denied request
/// reaches the service.
pub fn stack(app: Router, mesh: Option<Mesh>) -> Router {
    let app = match mesh {
        Some(mesh) => {
            let app = app
                .layer(axum::middleware::from_fn_with_state(
                    mesh.clone(),
                    authz::authorize,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    ratelimit::Limiter::new(mesh.clone()),
                    ratelimit::limit,
                ));
            // A router's own layers run after it has matched the route, so the rewrite wraps
            // the service's router from outside: it routes on the normalised path too.
            Router::new()
                .fallback_service(app)
                .layer(axum::middleware::from_fn(normalize::normalize))
                .layer(axum::middleware::from_fn_with_state(
                    mesh,
                    telemetry::record,
                ))
        }
        None => app,
    };
    // A 5xx answered on purpose (a readiness probe before the certificate, Envoy's 503s) is
    // not an error of this process: the access log and metrics record it; at `error` it would
    // drown the lines that are.
    app.layer(
        TraceLayer::new_for_http()
            .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
    )
}
