//! The outbound client every service calls its backends through.
//!
//! The stack, in data-path order (built in [`ClientBuilder::build`]): the caller's deadline →
//! [`telemetry`] (the source-side record) → [`rescue`] (mesh failures become Envoy's
//! responses) → [`route`] (VirtualService match →
//! plan) → [`fault`] → [`timeout`] → [`retry`] (with a budget) → [`split`] (weighted subset,
//! per request) → [`balance`] (load balancer over the subset's endpoints, outlier ejection) →
//! [`breaker`] (connectionPool limits) → [`connect`] (TCP_NODELAY, mTLS with the expected
//! identity) and a pooled HTTP/1.1 connection. Without a mesh only balancing and the
//! connection remain; behind a sidecar ([`proxy`]) every call goes to the sidecar's outbound
//! listener instead. Service code only ever sees [`Client::get`] and [`Client::send`].

pub mod balance;
pub mod breaker;
pub mod connect;
pub mod dns;
pub mod fault;
pub mod plan;
pub mod pool;
pub mod proxy;
pub mod rescue;
pub mod retry;
pub mod route;
pub mod routing;
pub mod split;
pub mod telemetry;
pub mod timeout;

/// Takes the service `poll_ready` just drove ready, leaving a clone in its place: the tower
/// idiom for a layer whose future outlives `call`'s borrow.
pub(crate) fn take_ready<S: Clone>(service: &mut S) -> S {
    let clone = service.clone();
    std::mem::replace(service, clone)
}

/// The boxed future the mesh's layers return.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The largest request body the client buffers (bodies are buffered so attempts can be
/// retried); larger requests fail.
pub const MAX_REQUEST_BODY: usize = 8 * 1024 * 1024;

/// The largest response body a client reads by default ([`ClientBuilder::max_response_body`]):
/// responses are read whole, so this is what one call can cost in memory, whatever the peer
/// sends. Bookinfo's largest is the 6.8 kB page.
pub const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};

pub use balance::{Balance, BalanceLayer, Endpoints};

use crate::BoxError;

/// How long an idle pooled connection is kept.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TCP connect may take before the attempt fails.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The boxed outbound stack: a request whose body is in memory (so any attempt can resend
/// it) in, a response out.
pub type OutboundService = BoxCloneSyncService<Request<Bytes>, Response<Body>, BoxError>;

/// Why an outbound call produced no response.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("invalid backend url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("request to {authority} failed: {source}")]
    Request {
        authority: String,
        #[source]
        source: BoxError,
    },
}

impl OutboundError {
    /// The answer a proxy gives for a call that got no response, as the outbound stack
    /// answers its own failures.
    pub fn synthetic(&self) -> crate::respond::Synthetic {
        use crate::respond::Synthetic;
        match self {
            Self::Timeout(_) => Synthetic::UpstreamTimeout,
            Self::Request { source, .. } => Synthetic::for_error(source),
            Self::InvalidUrl { .. } => Synthetic::BadRequest,
        }
    }
}

/// [`Client::in_process`] has no router for this name.
#[derive(Debug, thiserror::Error)]
#[error("no in-process backend for {0}")]
pub struct NoInProcessBackend(pub String);

/// A cheap-to-clone handle to the outbound stack.
#[derive(Clone)]
pub struct Client {
    stack: OutboundService,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client that resolves backend names through DNS (as in Docker or Kubernetes).
    pub fn new() -> Self {
        Self::builder().build()
    }

    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client over any stack, e.g. in-process routers in tests.
    pub fn from_service<S>(service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Self {
            stack: BoxCloneSyncService::new(
                service
                    .map_request(|r: Request<Bytes>| r.map(Body::from))
                    .map_err(Into::into),
            ),
        }
    }

    /// A client whose backends are in-process routers keyed by `host:port`: the whole call
    /// path without sockets, so tests can run it under tokio's paused clock. A name without a
    /// router fails like a refused connection.
    pub fn in_process(backends: impl IntoIterator<Item = (String, axum::Router)>) -> Self {
        let backends: Arc<std::collections::HashMap<String, axum::Router>> =
            Arc::new(backends.into_iter().collect());
        Self::from_service(tower::service_fn(move |req: Request<Body>| {
            let backends = backends.clone();
            async move {
                let authority = req
                    .uri()
                    .authority()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                let Some(router) = backends.get(&authority).cloned() else {
                    return Err(BoxError::from(NoInProcessBackend(authority)));
                };
                Ok(router
                    .oneshot(req)
                    .await
                    .expect("axum routers are infallible"))
            }
        }))
    }

    /// `GET url` with `headers`, the whole response (headers and body) due within `timeout`.
    pub async fn get(
        &self,
        url: &str,
        headers: HeaderMap,
        timeout: Duration,
    ) -> Result<Response<Bytes>, OutboundError> {
        let uri: Uri =
            url.parse()
                .map_err(|e: http::uri::InvalidUri| OutboundError::InvalidUrl {
                    url: url.to_owned(),
                    reason: e.to_string(),
                })?;
        let mut request = Request::get(uri)
            .body(Bytes::new())
            .expect("a parsed uri makes a valid request");
        *request.headers_mut() = headers;
        self.send_buffered(request, timeout).await
    }

    /// Sends `request` (an absolute `http://` URI), the whole response due within `timeout`.
    /// The body is read into memory first (at most [`MAX_REQUEST_BODY`]), so that any attempt
    /// can resend it.
    pub async fn send(
        &self,
        request: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<Bytes>, OutboundError> {
        let (parts, body) = request.into_parts();
        let body = match read_limited(body).await {
            Ok(body) => body,
            Err(source) => {
                let authority = parts.uri.authority().map(ToString::to_string);
                return Err(OutboundError::Request {
                    authority: authority.unwrap_or_default(),
                    source,
                });
            }
        };
        self.send_buffered(Request::from_parts(parts, body), timeout)
            .await
    }

    /// [`send`](Self::send) for a request whose body is already in memory.
    pub async fn send_buffered(
        &self,
        request: Request<Bytes>,
        timeout: Duration,
    ) -> Result<Response<Bytes>, OutboundError> {
        let uri = request.uri();
        let authority = match uri.authority() {
            Some(a) if uri.scheme_str() == Some("http") => a.clone(),
            _ => {
                return Err(OutboundError::InvalidUrl {
                    url: uri.to_string(),
                    reason: "expected http://host:port/path".to_owned(),
                });
            }
        };
        let call = async {
            let response = self.stack.clone().oneshot(request).await?;
            let (parts, body) = response.into_parts();
            Ok::<_, BoxError>(Response::from_parts(parts, collect(body).await?))
        };
        within(timeout, &authority, call).await
    }
}

/// `call`'s outcome as an outbound call's to `authority`: a timeout after `deadline`, its
/// error the request's.
pub async fn within<T>(
    deadline: Duration,
    authority: &http::uri::Authority,
    call: impl Future<Output = Result<T, BoxError>>,
) -> Result<T, OutboundError> {
    match tokio::time::timeout(deadline, call).await {
        Err(_) => Err(OutboundError::Timeout(deadline)),
        Ok(Err(source)) => Err(OutboundError::Request {
            authority: authority.to_string(),
            source,
        }),
        Ok(Ok(value)) => Ok(value),
    }
}

/// A request body in memory, so that any attempt can resend it: at most
/// [`MAX_REQUEST_BODY`], beyond which it is an error.
pub async fn read_limited(body: Body) -> Result<Bytes, BoxError> {
    collect(http_body_util::Limited::new(body, MAX_REQUEST_BODY)).await
}

/// A whole body in memory.
pub(crate) async fn collect<B>(mut body: B) -> Result<Bytes, BoxError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut gathered = Gathered::default();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(Into::into)?.into_data() {
            gathered.push(data);
        }
    }
    Ok(gathered.into_bytes())
}

/// A body's data as it arrives, made one buffer at the end; a body that came in one piece
/// (as the stack's responses do, and most small ones) is not copied.
#[derive(Default)]
pub(crate) struct Gathered {
    first: Option<Bytes>,
    rest: Option<bytes::BytesMut>,
}

impl Gathered {
    pub(crate) fn push(&mut self, data: Bytes) {
        match (&self.first, &mut self.rest) {
            (None, _) => self.first = Some(data),
            (Some(head), None) => {
                let mut all = bytes::BytesMut::with_capacity(head.len() + data.len());
                all.extend_from_slice(head);
                all.extend_from_slice(&data);
                self.rest = Some(all);
            }
            (Some(_), Some(all)) => all.extend_from_slice(&data),
        }
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        match (self.first, self.rest) {
            (_, Some(all)) => all.freeze(),
            (Some(one), None) => one,
            (None, None) => Bytes::new(),
        }
    }
}

pub(crate) use crate::shared::Shared;

impl crate::dataplane::Mesh {
    /// An outbound client that routes through the mesh.
    pub fn client(&self) -> Client {
        Client::builder().mesh(self.clone()).build()
    }
}

/// Builds a [`Client`].
#[derive(Debug, Default)]
pub struct ClientBuilder {
    endpoints: Option<Arc<Endpoints>>,
    mesh: Option<crate::dataplane::Mesh>,
    proxy: Option<proxy::Proxy>,
    max_response_body: Option<usize>,
}

impl ClientBuilder {
    /// Spreads calls to the logical names in `endpoints` over their addresses, per request.
    /// Names not in the table go to DNS.
    pub fn endpoints(mut self, endpoints: Arc<Endpoints>) -> Self {
        self.endpoints = Some(endpoints);
        self
    }

    /// Routes through this workload's data plane: mesh endpoints from meshd's registry,
    /// reached over mTLS.
    pub fn mesh(mut self, mesh: crate::dataplane::Mesh) -> Self {
        self.mesh = Some(mesh);
        self
    }

    /// Sends calls through the HTTP proxy `proxy` (a sidecar's outbound listener) instead of
    /// connecting to backends; ignored in the mesh.
    pub fn proxy(mut self, proxy: Option<proxy::Proxy>) -> Self {
        self.proxy = proxy;
        self
    }

    /// Fails calls whose response body is longer than `bytes` (default
    /// [`MAX_RESPONSE_BODY`]), and closes their connection.
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.max_response_body = Some(bytes);
        self
    }

    pub fn build(self) -> Client {
        let http = tcp_connector();
        let max_body = self.max_response_body.unwrap_or(MAX_RESPONSE_BODY);
        let proxied = match (&self.proxy, &self.mesh) {
            (Some(p), None) => Some((
                p.clone(),
                transport(
                    connect::MeshConnector::via_proxy(http.clone(), p.addr),
                    max_body,
                ),
            )),
            _ => None,
        };
        // Not boxed: each layer copies the service below it once per call, and a boxed one
        // would be an allocation at every level.
        let transport = transport(
            connect::MeshConnector::new(http, self.mesh.clone()),
            max_body,
        );
        let shared = self
            .mesh
            .as_ref()
            .map_or_else(Shared::default, |m| m.outbound_shared().clone());
        let health = shared.health;
        let balance = BalanceLayer::new(self.endpoints.unwrap_or_default())
            .with_mesh(self.mesh.clone())
            .with_health(health.clone());
        let stack = ServiceBuilder::new()
            .option_layer(self.mesh.clone().map(telemetry::RecordLayer::new))
            .option_layer(self.mesh.as_ref().map(|_| rescue::layer()))
            .option_layer(self.mesh.clone().map(route::RouteLayer::new))
            .layer(fault::FaultLayer::new(fault::random_roll()))
            .layer(timeout::RouteTimeoutLayer)
            .layer(retry::RetryLayer::new(shared.budget))
            .layer(split::SplitLayer)
            .layer(balance)
            .layer(breaker::BreakerLayer::new(health))
            .service(transport);
        let direct = BoxCloneSyncService::new(stack);
        let Some((proxy, via_proxy)) = proxied else {
            return Client { stack: direct };
        };
        // Behind a sidecar: every call but NO_PROXY's goes to the proxy.
        let stacks = Arc::new((via_proxy, direct));
        Client {
            stack: BoxCloneSyncService::new(tower::service_fn(move |req: Request<Bytes>| {
                let (via_proxy, direct) = &*stacks;
                let call: BoxFuture<_> = if req.uri().host().is_some_and(|h| proxy.applies_to(h)) {
                    Box::pin(via_proxy.clone().oneshot(req))
                } else {
                    Box::pin(direct.clone().oneshot(req))
                };
                call
            })),
        }
    }
}

/// TCP connections as every outbound connection opens them: TCP_NODELAY (small request and
/// response exchanges are latency-bound), bounded by [`DEFAULT_CONNECT_TIMEOUT`].
pub fn tcp_connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(DEFAULT_CONNECT_TIMEOUT));
    http
}

/// The bottom of the stack: pooled HTTP/1.1 connections from `connector` ([`pool`]).
fn transport(connector: connect::MeshConnector, max_response_body: usize) -> pool::Pool {
    pool::Pool::new(connector, DEFAULT_POOL_IDLE_TIMEOUT, max_response_body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[tokio::test(start_paused = true)]
    async fn a_slow_backend_times_out_at_the_deadline() {
        let slow = tower::service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(7)).await;
            Ok::<_, Infallible>(Response::new(Body::from("late")))
        });
        let client = Client::from_service(slow);
        let start = tokio::time::Instant::now();
        let err = client
            .get(
                "http://reviews:9080/reviews/0",
                HeaderMap::new(),
                Duration::from_secs(3),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, OutboundError::Timeout(d) if d == Duration::from_secs(3)));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn refused_connection_is_a_request_error_naming_the_backend() {
        // Bind then drop, so the port is very likely closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = Client::new()
            .get(
                &format!("http://127.0.0.1:{port}/x"),
                HeaderMap::new(),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("request to 127.0.0.1:{port} failed")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn behind_a_proxy_every_call_is_absolute_form_to_the_proxy_but_no_proxy_hosts() {
        let seen = |tag: &'static str| {
            axum::Router::new().fallback(move |req: Request<Body>| async move {
                let host = req.headers()[http::header::HOST]
                    .to_str()
                    .unwrap()
                    .to_owned();
                format!("{tag} {} host={host}", req.uri())
            })
        };
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let direct = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (proxy_addr, direct_addr) = (proxy.local_addr().unwrap(), direct.local_addr().unwrap());
        tokio::spawn(axum::serve(proxy, seen("proxy")).into_future());
        tokio::spawn(axum::serve(direct, seen("direct")).into_future());
        let vars = std::collections::HashMap::from([
            ("HTTP_PROXY", format!("http://{proxy_addr}")),
            ("NO_PROXY", "localhost,127.0.0.1".to_owned()),
        ]);
        let vars: std::collections::HashMap<&str, &str> =
            vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let client = Client::builder()
            .proxy(proxy::Proxy::from_env(&vars, None).unwrap())
            .build();
        let body = |r: Response<Bytes>| String::from_utf8(r.into_body().to_vec()).unwrap();
        let via = client
            .get(
                "http://details:9080/details/0?x=1",
                HeaderMap::new(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(
            body(via),
            "proxy http://details:9080/details/0?x=1 host=details:9080"
        );
        let bypass = client
            .get(
                &format!("http://{direct_addr}/health"),
                HeaderMap::new(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(body(bypass), format!("direct /health host={direct_addr}"));
    }

    #[tokio::test]
    async fn non_http_urls_are_rejected() {
        let err = Client::new()
            .get("ftp://x/y", HeaderMap::new(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, OutboundError::InvalidUrl { .. }));
    }
}
