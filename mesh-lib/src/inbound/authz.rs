//! Inbound authorization: Istio AuthorizationPolicy, evaluated for every request before it
//! reaches the service, with the peer's mTLS identity as the principal. A denial is Envoy's
//! RBAC filter response: 403 with the body `RBAC: access denied`.

use axum::extract::Request;
use axum::response::Response;

use crate::dataplane::{Mesh, PeerIdentity};
use crate::respond::Synthetic;
use mesh_config::{Decision, RequestAttrs};

/// Envoy's RBAC answer when `mesh`'s policies deny `request`; `None` lets it through.
pub(crate) fn deny(mesh: &Mesh, request: &Request) -> Option<Response> {
    // Without a policy there is nothing to decide, nor a principal to spell out.
    let compiled = mesh.compiled();
    if compiled.authorization().is_empty() {
        return None;
    }
    let principal = request
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.0.as_ref())
        .map(|id| id.principal());
    let decision = compiled.authorization().decide(&RequestAttrs {
        method: request.method().as_str(),
        path: request.uri().path(),
        headers: request.headers(),
        principal: principal.as_deref(),
    });
    match decision {
        Decision::Allow => None,
        Decision::Deny { policy } => {
            tracing::info!(
                workload = %mesh.service(),
                principal = principal.as_deref().unwrap_or("-"),
                method = %request.method(),
                path = %request.uri().path(),
                policy = %policy,
                "request denied"
            );
            Some(Synthetic::RbacDenied.response())
        }
    }
}
