//! Local rate limiting on a workload's inbound side: a token bucket per workload, configured by
//! a `LocalRateLimit` resource (our own kind; Istio needs an EnvoyFilter for the same). When
//! the bucket is empty the request is answered at once, 429 by default, with the configured
//! headers (`x-local-rate-limit: true`). It sits before authorization and the service, so a
//! flood costs neither. The bucket is the workload's ([`Mesh`]'s), shared by every listener
//! and worker thread that serves it, as Envoy's local rate limit is shared by its workers: a
//! limit of N per minute admits N, however many threads accept connections.

use axum::extract::Request;
use axum::response::Response;

use crate::dataplane::Mesh;

/// The answer for `request` when the workload's bucket is empty; `None` lets it through.
pub(crate) fn refuse(mesh: &Mesh, request: &Request) -> Option<Response> {
    let compiled = mesh.compiled();
    let policy = compiled.rate_limit()?;
    if mesh.rate_limit_bucket().try_take(policy) {
        return None;
    }
    tracing::debug!(workload = %mesh.service(), "local rate limit: {} refused", request.uri().path());
    let headers = policy
        .response_headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()));
    Some(crate::respond::rate_limited(policy.status_code, headers))
}
