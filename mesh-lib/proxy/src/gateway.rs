//! The ingress gateway (`mesh-proxy gateway`): the mesh's front door. It applies Istio
//! `Gateway` + `VirtualService` resources bound to it: a request whose host and path a bound
//! VirtualService routes goes through the full outbound stack (faults, timeouts, retries,
//! subsets, mTLS) to the destination; anything else gets Envoy's empty 404. Browsers speak
//! plain HTTP to it; it speaks mTLS to the mesh with its own identity.
//!
//! A Gateway server names a port as the Gateway's users see it, which is often the port of
//! the Service in front of the gateway rather than the gateway's own (Istio's default ingress
//! Service maps 80 → 8080 and 443 → 8443; upstream's bookinfo-gateway said 80 until 2023).
//! So a server applies when its port is the gateway's [`Options::port`] or a
//! [`ServicePort`] aimed at it, and a Gateway that selects this gateway on no such port is
//! logged, as it otherwise only shows as 404s.
//!
//! As an Envoy edge listener does, it removes the `x-envoy-*` request headers of outside
//! clients (unless [`Options::trust_envoy_headers`]): they steer the mesh
//! (`x-envoy-upstream-rq-timeout-ms` overrides the route's timeout), which is the
//! operator's to decide, not a browser's.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::forward;
use mesh::dataplane::Mesh;
pub use mesh::identity::{GATEWAY_NAMESPACE, GATEWAY_SERVICE, GATEWAY_SERVICE_ACCOUNT};
use mesh::outbound::Client;
use mesh::outbound::routing::{self, Plans};
use mesh::respond::Synthetic;
use mesh_config::MeshConfig;

/// The gateway's port, as Istio's ingress gateway (its Service maps 80 → 8080).
pub const DEFAULT_GATEWAY_PORT: u16 = 8080;
/// The ports of Istio's default ingress Service, so that a Gateway written for either side
/// of it (80, as upstream's older files and cert-manager's say, or 8080) works by default.
pub const DEFAULT_SERVICE_PORTS: [ServicePort; 2] = [
    ServicePort {
        port: 80,
        target: 8080,
    },
    ServicePort {
        port: 443,
        target: 8443,
    },
];

/// A port of the Service in front of the gateway and the gateway port it forwards to, as
/// `port:target` (`80:8080`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePort {
    pub port: u16,
    pub target: u16,
}

/// A service port that is not `port:target`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service port {0:?}: expected PORT:TARGET, e.g. 80:8080")]
pub struct InvalidServicePort(String);

impl FromStr for ServicePort {
    type Err = InvalidServicePort;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidServicePort(s.to_owned());
        let (port, target) = s.split_once(':').ok_or_else(invalid)?;
        let number = |n: &str| n.parse::<u16>().ok().filter(|n| *n > 0);
        Ok(ServicePort {
            port: number(port).ok_or_else(invalid)?,
            target: number(target).ok_or_else(invalid)?,
        })
    }
}

impl fmt::Display for ServicePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.port, self.target)
    }
}

/// What a gateway listener serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The gateway's own port: the Gateway servers on it apply.
    pub port: u16,
    /// The ports of the Service in front of it: a Gateway server on one whose target is
    /// [`Options::port`] applies too.
    pub service_ports: Vec<ServicePort>,
    /// Obey the `x-envoy-*` headers clients send (a gateway behind a trusted proxy), as
    /// Envoy does for internal requests; off, they are removed.
    pub trust_envoy_headers: bool,
}

impl Options {
    /// Serving as `port`, behind Istio's default ingress Service ([`DEFAULT_SERVICE_PORTS`]).
    pub fn new(port: u16) -> Self {
        Options {
            port,
            service_ports: DEFAULT_SERVICE_PORTS.to_vec(),
            trust_envoy_headers: false,
        }
    }

    /// The Gateway server ports that apply here: the gateway's own, then each service port
    /// aimed at it.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports = vec![self.port];
        ports.extend(
            self.service_ports
                .iter()
                .filter(|s| s.target == self.port && s.port != self.port)
                .map(|s| s.port),
        );
        ports
    }

    /// A warning for each Gateway that selects a gateway with `labels` but has no server on a
    /// port that applies here, naming it and its ports.
    pub fn unmatched(&self, config: &MeshConfig, labels: &BTreeMap<String, String>) -> Vec<String> {
        let ports = self.ports();
        let list = |ports: &mut dyn Iterator<Item = u16>| {
            ports.map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
        };
        let served = list(&mut ports.iter().copied());
        config
            .gateways_missing_port(labels, &ports)
            .into_iter()
            .map(|g| {
                let theirs = list(&mut g.servers.iter().map(|s| s.port.number));
                format!(
                    "Gateway {} selects this gateway but has no server on a port it serves \
                     ({served}), only on {theirs}: its routes do not apply (start the gateway \
                     with --port, or --service-port <port>:{})",
                    g.metadata.key(),
                    self.port
                )
            })
            .collect()
    }
}

pub use crate::forward::UPSTREAM_DEADLINE;

/// Logs [`Options::unmatched`] for each new config `mesh` receives (each warning once while
/// it holds), until the mesh stops.
pub async fn warn_unmatched(mesh: Mesh, options: Options) {
    let mut snapshots = mesh.snapshots();
    let mut warned: Vec<String> = Vec::new();
    loop {
        let now = options.unmatched(
            &snapshots.borrow_and_update().snapshot().config,
            mesh.labels(),
        );
        for warning in now.iter().filter(|w| !warned.contains(w)) {
            tracing::warn!("{warning}");
        }
        warned = now;
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

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
    /// The plans of the routes this gateway matched, made once per snapshot and rule.
    plans: Arc<Plans>,
    /// [`Options::ports`].
    ports: Arc<[u16]>,
    trust_envoy_headers: bool,
}

/// The gateway's router for a listener serving as `options` says. Paths are normalised
/// first, so gateway routes, the policies behind them and the services all match the same
/// path.
pub fn router(mesh: Mesh, options: &Options) -> Router {
    let client = mesh.client();
    let ports = options.ports().into();
    Router::new().fallback(handle).with_state(Gateway {
        mesh,
        client,
        plans: Arc::default(),
        ports,
        trust_envoy_headers: options.trust_envoy_headers,
    })
}

async fn handle(State(gw): State<Gateway>, request: Request) -> Response {
    let request = match mesh::inbound::normalize::normalize(request) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let snapshot = gw.mesh.snapshot();
    let gateways: Vec<String> = snapshot
        .config
        .gateway_for(gw.mesh.labels(), &gw.ports)
        .iter()
        .map(|g| format!("{}/{}", g.metadata.namespace, g.metadata.name))
        .collect();
    let (mut parts, body) = match forward::buffer(request).await {
        Ok(buffered) => buffered,
        Err(refused) => return refused.into_response(),
    };
    if !gw.trust_envoy_headers {
        strip_envoy_headers(&mut parts.headers);
    }
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
        Err(_) => return Synthetic::BadRequest.response(),
    }
    // The path the client asked for, as the gateway's span names it (before any rewrite).
    let asked: Box<str> = parts.uri.path().into();
    let mut routed = http::Request::from_parts(parts, body);
    let Some(plan) = routing::gateway_plan(&gw.mesh, &gw.plans, &gateways, &mut routed) else {
        return Synthetic::NoRoute.response();
    };
    let (mut parts, body) = routed.into_parts();
    parts.extensions.insert(plan);
    // The gateway's server span: the root of the trace when the client sent no context, and
    // the parent of the gateway's attempts either way.
    let span = gw.mesh.telemetry().tracing.as_ref().map(|t| {
        let (method, headers) = (&parts.method, &mut parts.headers);
        t.start(opentelemetry::trace::SpanKind::Server, headers, || {
            mesh::telemetry::tracing::SpanInfo::Server {
                method: method.clone(),
                path: asked,
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

/// Removes every `x-envoy-*` header (names are lowercase in a `HeaderMap`).
fn strip_envoy_headers(headers: &mut http::HeaderMap) {
    let envoy: Vec<header::HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-envoy-"))
        .cloned()
        .collect();
    for name in envoy {
        headers.remove(name);
    }
}
