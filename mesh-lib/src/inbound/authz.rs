//! Inbound authorization: Istio AuthorizationPolicy, evaluated for every request before it
//! reaches the service, with the peer's mTLS identity as the principal. A denial is Envoy's
//! RBAC filter response: 403 with the body `RBAC: access denied`.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::{Decision, RequestAttrs};
use crate::dataplane::{Mesh, PeerIdentity};

/// The body of a denied request.
pub const DENIED_BODY: &str = "RBAC: access denied";

pub(crate) async fn authorize(State(mesh): State<Mesh>, request: Request, next: Next) -> Response {
    let principal = request
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.0.as_ref())
        .map(|id| id.principal());
    let decision = mesh.authorize(&RequestAttrs {
        method: request.method().as_str(),
        path: request.uri().path(),
        headers: request.headers(),
        principal: principal.as_deref(),
    });
    match decision {
        Decision::Allow => next.run(request).await,
        Decision::Deny { policy } => {
            tracing::info!(
                workload = %mesh.service(),
                principal = principal.as_deref().unwrap_or("-"),
                method = %request.method(),
                path = %request.uri().path(),
                policy = %policy,
                "request denied"
            );
            (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "text/plain")],
                DENIED_BODY,
            )
                .into_response()
        }
    }
}
