//! Where the outbound stack turns its failures into HTTP responses, as an Istio sidecar does:
//! the application sees Envoy's statuses and bodies ([`crate::respond`] words them), never a
//! transport error. Right under the recording layer ([`super::telemetry`]), to which the
//! answer's Envoy response flag goes up in the response's extensions ([`LocalReply`]).

use axum::body::Body;
use http::Response;
use tower::util::MapResultLayer;

use crate::BoxError;
use crate::respond::Synthetic;

/// On a response the mesh made up: its Envoy response flag (`UT`, `UO`, `UH`, `UF`, `UC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalReply(pub &'static str);

/// An outcome of the stack below.
type Outcome = Result<Response<Body>, BoxError>;

/// The layer: a map over the result, so the answer costs no future of its own per request.
pub fn layer() -> MapResultLayer<fn(Outcome) -> Outcome> {
    MapResultLayer::new(answer)
}

/// The response as it came, or the mesh's answer for the failure (never an error).
pub fn answer(result: Outcome) -> Outcome {
    match result {
        Ok(response) => Ok(response),
        Err(e) => {
            let synthetic = Synthetic::for_error(&e);
            tracing::debug!(status = %synthetic.status(), "mesh answered for the upstream: {e}");
            let mut response = synthetic.response();
            response
                .extensions_mut()
                .insert(LocalReply(synthetic.flag()));
            Ok(response)
        }
    }
}
