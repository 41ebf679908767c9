//! Local rate limiting on a workload's inbound side: a token bucket per workload, configured by
//! a `LocalRateLimit` resource (our own kind; Istio needs an EnvoyFilter for the same). When
//! the bucket is empty the request is answered at once, 429 by default, with the configured
//! headers (`x-local-rate-limit: true`). It sits before authorization and the service, so a
//! flood costs neither. The bucket is the workload's ([`Mesh`]'s), shared by every listener
//! and worker thread that serves it, as Envoy's local rate limit is shared by its workers: a
//! limit of N per minute admits N, however many threads accept connections.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::dataplane::Mesh;
use mesh_config::Workload;

/// The answer for `request` when the workload's bucket is empty; `None` lets it through.
pub(crate) fn refuse(mesh: &Mesh, request: &Request) -> Option<Response> {
    let snapshot = mesh.snapshot();
    let workload = Workload {
        namespace: &mesh.identity().namespace,
        labels: mesh.labels(),
    };
    let policy = snapshot.config.local_rate_limit(&workload)?;
    if mesh.rate_limit_bucket().try_take(policy) {
        return None;
    }
    tracing::debug!(workload = %mesh.service(), "local rate limit: {} refused", request.uri().path());
    let status = StatusCode::from_u16(policy.status_code).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
    let mut response = (status, "local_rate_limited").into_response();
    for (name, value) in &policy.response_headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(n, v);
        }
    }
    Some(response)
}
