//! The ingress gateway (`mesh-proxy gateway`): the mesh's front door. It applies Istio
//! `Gateway` + `VirtualService` resources bound to it: a request whose host and path a bound
//! VirtualService routes goes through the full outbound stack (faults, timeouts, retries,
//! subsets, mTLS) to the destination; anything else gets Envoy's empty 404. Browsers speak
//! plain HTTP to it; it speaks mTLS to the mesh with its own identity.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::dataplane::Mesh;
use crate::forward;
use crate::outbound::Client;
use crate::outbound::routing::{self, GatewayContext};

/// The gateway's port, as Istio's ingress gateway (its Service maps 80 → 8080).
pub const DEFAULT_GATEWAY_PORT: u16 = 8080;
/// The namespace, service account and labels of Istio's ingress gateway, which Gateway
/// selectors (`istio: ingressgateway`) and policies name.
pub const GATEWAY_NAMESPACE: &str = "istio-system";
pub const GATEWAY_SERVICE_ACCOUNT: &str = "istio-ingressgateway-service-account";
pub const GATEWAY_SERVICE: &str = "istio-ingressgateway";
pub use crate::forward::UPSTREAM_DEADLINE;

/// The labels Gateway resources select the ingress gateway by.
pub fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("istio".to_owned(), "ingressgateway".to_owned()),
        ("app".to_owned(), GATEWAY_SERVICE.to_owned()),
    ])
}

#[derive(Clone)]
struct Gateway {
    mesh: Mesh,
    client: Client,
    port: u16,
}

/// The gateway's router for a listener on `port`. Paths are normalised first, so gateway
/// routes, the policies behind them and the services all match the same path.
pub fn router(mesh: Mesh, port: u16) -> Router {
    let client = mesh.client();
    Router::new()
        .fallback(handle)
        .with_state(Gateway { mesh, client, port })
}

async fn handle(State(gw): State<Gateway>, request: Request) -> Response {
    let request = match crate::inbound::normalize::normalize(request) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let snapshot = gw.mesh.snapshot();
    let gateways: Vec<String> = snapshot
        .config
        .gateway_for(gw.mesh.labels(), gw.port)
        .iter()
        .map(|g| format!("{}/{}", g.metadata.namespace, g.metadata.name))
        .collect();
    let (mut parts, body) = match forward::buffer(request).await {
        Ok(buffered) => buffered,
        Err(refused) => return refused.into_response(),
    };
    if !parts.headers.contains_key("x-request-id") {
        let id = format!("{:032x}", fastrand::u128(..));
        parts.headers.insert(
            "x-request-id",
            HeaderValue::from_str(&id).expect("hex is a valid header"),
        );
    }
    parts
        .headers
        .insert("x-forwarded-proto", HeaderValue::from_static("http"));
    // The route layer re-aims the request at its destination; until then it names the host
    // the client asked for.
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("gateway")
        .to_owned();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    match Uri::builder()
        .scheme("http")
        .authority(host.as_str())
        .path_and_query(path)
        .build()
    {
        Ok(uri) => parts.uri = uri,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    }
    let probe = http::Request::from_parts(parts, body);
    if gateways.is_empty() || !routing::gateway_routes(&gw.mesh, &gateways, &probe) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let (mut parts, body) = probe.into_parts();
    parts.extensions.insert(GatewayContext(gateways));
    // The gateway's server span: the root of the trace when the client sent no context, and
    // the parent of the gateway's attempts either way.
    let span = gw.mesh.telemetry().tracing.as_ref().map(|t| {
        let (method, uri, headers) = (&parts.method, &parts.uri, &mut parts.headers);
        t.start(opentelemetry::trace::SpanKind::Server, headers, || {
            crate::telemetry::tracing::SpanInfo::Server {
                method: method.clone(),
                path: uri.path().into(),
                workload: gw.mesh.workload_shared(),
                peer: None,
            }
        })
    });
    let response = forward::send(&gw.client, parts, body, UPSTREAM_DEADLINE).await;
    if let Some(span) = span {
        span.finish(response.status().as_u16(), None);
    }
    response
}
