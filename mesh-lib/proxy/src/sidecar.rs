//! The sidecar (`mesh-proxy sidecar`): the mesh for an application that does not link
//! mesh-lib, in any language. It runs beside the application (same network namespace: a pod,
//! or compose's `network_mode: service:<app>`) and joins meshd as the application's workload,
//! so the registry, routing, policies and the dashboard cannot tell it from an embedded one.
//!
//! - **inbound** (default `:15006`): the mesh's inbound listener ([`mesh::Server`] with the
//!   mesh: mTLS per PeerAuthentication, telemetry, path normalisation, rate limit,
//!   AuthorizationPolicy, server span), whose "service" passes each request on in plaintext to
//!   the application on `127.0.0.1:<app port>`;
//! - **outbound** (default `127.0.0.1:15001`): an HTTP proxy the application reaches through
//!   `HTTP_PROXY` (absolute-form requests, or origin-form with a `Host` header), whose requests
//!   go through the whole outbound stack ([`mesh::Client`] of the mesh: route, fault, timeout,
//!   retry, split, balance, breaker, mTLS connect, client span, `reporter="source"` metrics).
//!
//! The two are built from the same layers as the embedded data plane; only the ends differ.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::Response;

use http::uri::{Authority, PathAndQuery, Scheme};

use crate::forward::{self, UPSTREAM_DEADLINE};
use mesh::dataplane::Mesh;
use mesh::outbound::connect::MeshConnector;
use mesh::outbound::pool::Pool;
use mesh::outbound::{Client, DEFAULT_POOL_IDLE_TIMEOUT, MAX_RESPONSE_BODY, within};
use mesh::respond::Synthetic;

/// Where the mesh reaches the application through the sidecar (Istio's inbound capture port).
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// Where the application reaches the mesh (Istio's outbound capture port); loopback only.
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// The application's port on loopback.
pub const DEFAULT_APP_PORT: u16 = mesh::cli::DEFAULT_PORT;
/// What readiness asks of the application (every Bookinfo service answers it).
pub const DEFAULT_APP_HEALTH_PATH: &str = "/health";
/// How often the sidecar asks the application's health, and how long one answer may take.
pub const APP_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(400);
pub const APP_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(400);
/// Failed probes in a row after which the application's endpoint is withdrawn: one slow
/// answer is not a dead application. With the interval and timeout above, a dead or hung
/// application leaves every snapshot within 2 s.
pub const APP_PROBE_FAILURES: u32 = 2;

/// The application a sidecar stands beside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// Where it listens (plaintext; loopback, so only the sidecar reaches it).
    pub addr: SocketAddr,
    /// The path readiness asks for 200 (`/health`).
    pub health_path: String,
}

impl App {
    /// The application on `127.0.0.1:port`.
    pub fn on_loopback(port: u16) -> Self {
        Self {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            health_path: DEFAULT_APP_HEALTH_PATH.to_owned(),
        }
    }

    /// What the sidecar's `/healthz/ready` asks besides the certificate.
    pub fn readiness(&self) -> mesh::workload::Readiness {
        mesh::workload::Readiness::Http(self.health_url())
    }

    fn health_url(&self) -> String {
        format!("http://{}{}", self.addr, self.health_path)
    }
}

/// Follows `app`'s health for as long as the returned task runs, as the kubelet's readiness
/// probe does for a pod: after [`APP_PROBE_FAILURES`] failed probes in a row the workload
/// stops serving ([`Mesh::set_serving`]: meshd withdraws its endpoint from every snapshot),
/// and the first good answer restores it. Without this an application that died behind a
/// running sidecar would stay an endpoint, and every call to it would fail.
pub fn follow_app_health(mesh: &Mesh, app: &App) -> tokio::task::JoinHandle<()> {
    let (mesh, url) = (mesh.clone(), app.health_url());
    tokio::spawn(async move {
        let client = Client::new();
        let mut failures = 0u32;
        let mut ticks = tokio::time::interval(APP_PROBE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let healthy = matches!(
                client.get(&url, Default::default(), APP_PROBE_TIMEOUT).await,
                Ok(r) if r.status() == StatusCode::OK
            );
            failures = if healthy {
                0
            } else {
                failures.saturating_add(1)
            };
            if healthy {
                mesh.set_serving(true);
            } else if failures == APP_PROBE_FAILURES {
                tracing::warn!(%url, "the application failed {failures} health checks: withdrawing it from the mesh's endpoints");
                mesh.set_serving(false);
            }
        }
    })
}

/// The sidecar's two listeners, bound and ready to serve as `mesh`'s workload for `app`:
/// `inbound` through the mesh's inbound stack to the application, `outbound` (plaintext, for
/// the application only) through the mesh's outbound stack. [`mesh::workload::serve`] runs
/// them with the admin listener ([`App::readiness`]); the application's health decides
/// whether meshd publishes the endpoint ([`follow_app_health`], started here).
pub fn listeners(
    mesh: &Mesh,
    app: &App,
    inbound: mesh::Server,
    outbound: mesh::Server,
) -> Vec<(mesh::Server, Router)> {
    let routers = routers(mesh, app, outbound.local_addr());
    follow_app_health(mesh, app);
    servers(mesh, inbound, outbound)
        .into_iter()
        .zip(routers)
        .collect()
}

/// The sidecar's two listeners in the order [`routers`] makes theirs: inbound (with the mesh's
/// inbound stack), then outbound.
pub fn servers(mesh: &Mesh, inbound: mesh::Server, outbound: mesh::Server) -> Vec<mesh::Server> {
    vec![inbound.with_mesh(mesh.clone()), outbound]
}

/// The routers of [`listeners`], inbound's then outbound's (listening at `outbound`): each
/// call makes a fresh pair with connections of their own, for one worker thread
/// ([`mesh::workload::serve_on_workers`]).
pub fn routers(mesh: &Mesh, app: &App, outbound: SocketAddr) -> Vec<Router> {
    vec![inbound_router(app), outbound_router(mesh, outbound)]
}

#[derive(Clone)]
struct Inbound {
    /// Plaintext connections to the application, which is beside us, not in the mesh.
    pool: Pool,
    app: Authority,
}

/// The inbound listener's service (inside the mesh's inbound stack): every request to the
/// application, plaintext, with its `Host` kept.
///
/// The mesh's policies have been applied by then and the application is one address on
/// loopback, so a request goes straight to a pooled connection to it: Istio's inbound cluster
/// has no routing, retries or balancing either.
pub fn inbound_router(app: &App) -> Router {
    let connector = MeshConnector::new(mesh::outbound::tcp_connector(), None);
    Router::new().fallback(pass_in).with_state(Inbound {
        pool: Pool::new(connector, DEFAULT_POOL_IDLE_TIMEOUT, MAX_RESPONSE_BODY),
        app: Authority::try_from(app.addr.to_string())
            .expect("a socket address is a valid authority"),
    })
}

async fn pass_in(State(inbound): State<Inbound>, request: Request) -> Response {
    let (mut parts, body) = match forward::buffer(request).await {
        Ok(buffered) => buffered,
        Err(refused) => return refused,
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(inbound.app.clone());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    match Uri::from_parts(uri) {
        Ok(uri) => parts.uri = uri,
        Err(_) => return Synthetic::BadRequest.response(),
    }
    let sent = inbound.pool.send(http::Request::from_parts(parts, body));
    match within(UPSTREAM_DEADLINE, &inbound.app, sent).await {
        Ok(response) => forward::respond(response),
        Err(e) => forward::failure(&e),
    }
}

#[derive(Clone)]
struct Outbound {
    client: Client,
    own: SocketAddr,
}

/// Why the outbound listener cannot pass a request on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyRequestError {
    #[error("CONNECT is not supported: the mesh proxies HTTP (send http:// requests)")]
    Connect,
    #[error("only http:// requests can be proxied; the mesh adds TLS itself")]
    NotHttp,
    #[error("the request names no host (absolute-form URI or Host header)")]
    NoHost,
    #[error("invalid host {0:?}")]
    BadHost(String),
    #[error("the request is addressed to this proxy itself")]
    Loop,
}

/// The outbound listener's router: each request on through the mesh, as the application
/// addressed it. `own` is the listener's address (a request to it would loop).
pub fn outbound_router(mesh: &Mesh, own: SocketAddr) -> Router {
    Router::new().fallback(pass_out).with_state(Outbound {
        client: mesh.client(),
        own,
    })
}

async fn pass_out(State(outbound): State<Outbound>, request: Request) -> Response {
    let target = match target(
        request.method(),
        request.uri(),
        request.headers().get(header::HOST),
        outbound.own,
    ) {
        Ok(uri) => uri,
        Err(e) => {
            let status = match e {
                ProxyRequestError::Connect => StatusCode::METHOD_NOT_ALLOWED,
                ProxyRequestError::Loop => StatusCode::LOOP_DETECTED,
                _ => StatusCode::BAD_REQUEST,
            };
            return mesh::respond::proxy_refusal(status, e.to_string());
        }
    };
    let (mut parts, body) = match forward::buffer(request).await {
        Ok(buffered) => buffered,
        Err(refused) => return refused,
    };
    // The Host the backend sees is the one the application named.
    if let Some(authority) = target.authority()
        && let Ok(host) = authority.as_str().parse()
    {
        parts.headers.insert(header::HOST, host);
    }
    parts.uri = target;
    forward::send(&outbound.client, parts, body, UPSTREAM_DEADLINE).await
}

/// The absolute `http://` URI a proxied request is for: its absolute-form URI, else its
/// `Host` with its path.
pub fn target(
    method: &Method,
    uri: &Uri,
    host: Option<&http::HeaderValue>,
    own: SocketAddr,
) -> Result<Uri, ProxyRequestError> {
    if method == Method::CONNECT {
        return Err(ProxyRequestError::Connect);
    }
    let authority = match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(authority)) => authority.clone(),
        (Some(_), _) => return Err(ProxyRequestError::NotHttp),
        (None, _) => {
            let host = host
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty())
                .ok_or(ProxyRequestError::NoHost)?;
            host.parse()
                .map_err(|_| ProxyRequestError::BadHost(host.to_owned()))?
        }
    };
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let is_own_host = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip == own.ip() || ip.is_loopback() || ip.is_unspecified());
    if port == own.port() && is_own_host {
        return Err(ProxyRequestError::Loop);
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| ProxyRequestError::BadHost(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> SocketAddr {
        "127.0.0.1:15001".parse().unwrap()
    }

    #[test]
    fn absolute_form_and_host_header_name_the_same_target() {
        let absolute: Uri = "http://details:9080/details/0?x=1".parse().unwrap();
        assert_eq!(
            target(&Method::GET, &absolute, None, own()).unwrap(),
            absolute
        );
        let origin: Uri = "/details/0?x=1".parse().unwrap();
        let host = http::HeaderValue::from_static("details:9080");
        assert_eq!(
            target(&Method::GET, &origin, Some(&host), own()).unwrap(),
            absolute
        );
        let no_port: Uri = "/ratings/0".parse().unwrap();
        let host = http::HeaderValue::from_static("ratings");
        assert_eq!(
            target(&Method::GET, &no_port, Some(&host), own())
                .unwrap()
                .to_string(),
            "http://ratings/ratings/0"
        );
    }

    #[test]
    fn requests_it_cannot_pass_on_say_why() {
        let origin: Uri = "/x".parse().unwrap();
        let cases = [
            (
                Method::CONNECT,
                "details:9080",
                None,
                ProxyRequestError::Connect,
            ),
            (
                Method::GET,
                "https://details:9080/x",
                None,
                ProxyRequestError::NotHttp,
            ),
            (Method::GET, "/x", None, ProxyRequestError::NoHost),
            (
                Method::GET,
                "http://127.0.0.1:15001/x",
                None,
                ProxyRequestError::Loop,
            ),
            (
                Method::GET,
                "http://localhost:15001/",
                None,
                ProxyRequestError::Loop,
            ),
            (
                Method::GET,
                "/x",
                Some("bad host"),
                ProxyRequestError::BadHost("bad host".to_owned()),
            ),
        ];
        for (method, uri, host, want) in cases {
            let uri: Uri = uri.parse().unwrap_or_else(|_| origin.clone());
            let host = host.map(|h| http::HeaderValue::from_str(h).unwrap());
            assert_eq!(target(&method, &uri, host.as_ref(), own()), Err(want));
        }
        // Another port on loopback is a real destination (a plain app beside us).
        let other: Uri = "http://127.0.0.1:9080/health".parse().unwrap();
        assert!(target(&Method::GET, &other, None, own()).is_ok());
    }
}
