//! Per-request endpoint choice for logical backend names.
//!
//! In the mesh, endpoints come from meshd's registry: those of the destination the split layer
//! chose (service + subset labels), else of the service the host names; the DestinationRule's
//! policy picks among them (round robin, random, least request), skipping endpoints outlier
//! detection ejected, and every outcome is reported back to it. Otherwise names in the [`Endpoints`] table are chosen from it, and other names
//! with several DNS addresses are spread by [`DnsSpread`].
//!
//! A Kubernetes Service without routing rules spreads requests over its pods; refreshing the
//! Bookinfo page therefore cycles through reviews v1, v2 and v3. This layer does the same for
//! names it has a table for: each request to `reviews:9080` goes to the next address in
//! round-robin order, while the `Host` header keeps the logical name. It sits just above the
//! connection pool because the choice is per request, never per connection.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::uri::Authority;
use http::{HeaderValue, Request, Uri, header};
use tower::{Layer, Service};

use super::dns::DnsSpread;
use super::plan::{LbPolicy, OutlierPlan, TrafficPlan};
use super::split::Chosen;
use crate::classify::{LocalError, classify};
use crate::dataplane::Mesh;
use crate::fast_hash::{FastMap, FnvHasher};
use crate::shared::health::Health;
use crate::telemetry::outbound::Attempt;

/// The addresses behind each logical `host:port`.
#[derive(Debug, Default)]
pub struct Endpoints {
    by_authority: HashMap<String, Backend>,
}

#[derive(Debug)]
struct Backend {
    addrs: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Endpoints {
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes requests for `authority` (`host:port`) to `addrs`, round robin.
    pub fn insert(&mut self, authority: impl Into<String>, addrs: Vec<SocketAddr>) {
        self.by_authority.insert(
            authority.into(),
            Backend {
                addrs,
                next: AtomicUsize::new(0),
            },
        );
    }

    /// The address for the next request to `authority`, or `None` if the table has no entry.
    pub fn pick(&self, authority: &str) -> Option<SocketAddr> {
        let backend = self.by_authority.get(authority)?;
        if backend.addrs.is_empty() {
            return None;
        }
        let i = backend.next.fetch_add(1, Ordering::Relaxed) % backend.addrs.len();
        Some(backend.addrs[i])
    }
}

/// Applies [`Balance`] to a service.
#[derive(Debug, Clone)]
pub struct BalanceLayer {
    endpoints: Arc<Endpoints>,
    dns: DnsSpread,
    mesh: Option<Mesh>,
    turns: Turns,
    health: Arc<Health>,
}

/// Round-robin positions per mesh service and subset labels (by their hash).
type Turns = Arc<std::sync::Mutex<FastMap<u64, usize>>>;

impl BalanceLayer {
    pub fn new(endpoints: Arc<Endpoints>) -> Self {
        Self::with_dns(endpoints, DnsSpread::default())
    }

    pub fn with_dns(endpoints: Arc<Endpoints>, dns: DnsSpread) -> Self {
        Self {
            endpoints,
            dns,
            mesh: None,
            turns: Turns::default(),
            health: Arc::default(),
        }
    }

    /// Shares endpoint state (in flight, ejections) with the other layers of the stack.
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = health;
        self
    }

    /// Takes endpoints of mesh services from the data plane's registry snapshot.
    pub fn with_mesh(mut self, mesh: Option<Mesh>) -> Self {
        self.mesh = mesh;
        self
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Balance {
            inner,
            endpoints: self.endpoints.clone(),
            dns: self.dns.clone(),
            mesh: self.mesh.clone(),
            turns: self.turns.clone(),
            health: self.health.clone(),
        }
    }
}

/// Rewrites the request's authority to a chosen endpoint, keeping the logical name in `Host`.
#[derive(Debug, Clone)]
pub struct Balance<S> {
    inner: S,
    endpoints: Arc<Endpoints>,
    dns: DnsSpread,
    mesh: Option<Mesh>,
    turns: Turns,
    health: Arc<Health>,
}

impl<S, B, R> Service<Request<B>> for Balance<S>
where
    S: Service<Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<crate::BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = crate::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, crate::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let endpoints = self.endpoints.clone();
        let dns = self.dns.clone();
        let mesh_choice = match &self.mesh {
            Some(mesh) => self.pick_mesh(mesh, &req),
            None => Ok(None),
        };
        let health = self.health.clone();
        let mesh = self.mesh.clone();
        Box::pin(async move {
            let picked = mesh_choice?;
            let Some(logical) = req.uri().authority().map(Authority::to_string) else {
                return inner.call(req).await.map_err(Into::into);
            };
            let Some(MeshPick {
                addr,
                peers,
                outlier,
            }) = picked
            else {
                let chosen = match endpoints.pick(&logical) {
                    Some(addr) => Some(addr),
                    None => dns.pick(&logical).await,
                };
                if let Some(addr) = chosen {
                    route_to(&mut req, &logical, addr);
                }
                return inner.call(req).await.map_err(Into::into);
            };
            route_to(&mut req, &logical, addr);
            // One registry lookup, and only when metrics or traces want the endpoint.
            let observed = mesh
                .as_ref()
                .filter(|m| m.telemetry().record_metrics || m.telemetry().tracing.is_some());
            let endpoint = observed.and_then(|m| m.compiled().endpoint_at(addr).cloned());
            let span = observed
                .and_then(|m| m.telemetry().tracing.as_ref())
                .map(|t| {
                    t.start_request(opentelemetry::trace::SpanKind::Client, &mut req, |r| {
                        crate::telemetry::tracing::SpanInfo::Client {
                            method: r.method().clone(),
                            path: r.uri().path().into(),
                            authority: logical,
                            addr,
                            endpoint: endpoint.clone(),
                        }
                    })
                });
            if let (Some(attempt), Some(e)) = (req.extensions().get::<Attempt>(), endpoint) {
                attempt.set_endpoint(e);
            }
            health.start(addr);
            let result = inner.call(req).await.map_err(Into::into);
            if let Some(span) = span {
                let status = result.as_ref().map_or(0, |r| r.status().as_u16());
                let flag = result
                    .as_ref()
                    .err()
                    .map(|e| crate::respond::Synthetic::for_error(e).flag());
                span.finish(status, flag);
            }
            if health.finish(addr, classify(&result), outlier.as_ref(), &peers)
                && let Some(mesh) = &mesh
                && let Some(service) = mesh.compiled().endpoint_at(addr).map(|e| e.service.clone())
            {
                let edge = crate::telemetry::metrics::EdgeLabels {
                    source_workload: mesh.workload_name().workload.clone(),
                    destination_service_name: service,
                };
                mesh.telemetry()
                    .metrics
                    .ejections
                    .get_or_create(&edge)
                    .inc();
            }
            result
        })
    }
}

/// An endpoint chosen from the registry, with what outlier detection needs to judge it.
struct MeshPick {
    addr: SocketAddr,
    peers: Vec<SocketAddr>,
    outlier: Option<OutlierPlan>,
}

impl<S> Balance<S> {
    /// The next endpoint of the chosen destination (or of the service the host names), by the
    /// destination's load-balancing policy, skipping ejected endpoints while any are left.
    /// `Ok(None)`: not a mesh destination, use the table or DNS.
    fn pick_mesh<B>(
        &self,
        mesh: &Mesh,
        req: &Request<B>,
    ) -> Result<Option<MeshPick>, crate::BoxError> {
        let chosen = req.extensions().get::<Chosen>().map(Chosen::destination);
        let host = req.uri().host().unwrap_or_default();
        let no_labels = BTreeMap::new();
        let default_policy = TrafficPlan::default();
        let (service, labels, policy) = match chosen {
            Some(d) => (d.service.as_str(), &d.subset_labels, &d.policy),
            None => (
                host.split('.').next().unwrap_or(host),
                &no_labels,
                &default_policy,
            ),
        };
        let compiled = mesh.compiled();
        let of_service = compiled.endpoints_of(service);
        let any = !of_service.is_empty();
        let candidates: Vec<SocketAddr> = of_service
            .iter()
            .filter(|e| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            .map(|e| e.addr)
            .collect();
        if candidates.is_empty() {
            // A mesh service with no endpoint (routed to, or known to meshd though its
            // workloads are gone or not ready) is Envoy's 503 at once; only a name the mesh
            // does not know is left to the table or DNS. A lookup of a service that just
            // stopped would otherwise wait on the resolver, under load for seconds.
            let routed = chosen.is_some_and(|d| d.subset.is_some());
            return if routed || any || compiled.snapshot().knows(service) {
                Err(LocalError::NoHealthyUpstream.into())
            } else {
                Ok(None)
            };
        }
        // All ejected: use them all rather than fail (Envoy's panic threshold).
        let healthy = self.health.not_ejected(&candidates);
        let pool = if healthy.is_empty() {
            &candidates
        } else {
            &healthy
        };
        let addr = match policy.lb {
            LbPolicy::RoundRobin => {
                let mut key = FnvHasher::default();
                (service, labels).hash(&mut key);
                let mut turns = self.turns.lock().expect("turns lock is never poisoned");
                let turn = turns.entry(key.finish()).or_default();
                let addr = pool[*turn % pool.len()];
                *turn = turn.wrapping_add(1);
                addr
            }
            LbPolicy::Random => pool[fastrand::usize(..pool.len())],
            LbPolicy::LeastRequest => {
                let a = pool[fastrand::usize(..pool.len())];
                let b = pool[fastrand::usize(..pool.len())];
                if self.health.in_flight(b) < self.health.in_flight(a) {
                    b
                } else {
                    a
                }
            }
        };
        Ok(Some(MeshPick {
            addr,
            peers: candidates,
            outlier: policy.outlier.clone(),
        }))
    }
}

/// Sends `req` to `addr` while `Host` keeps the logical name.
fn route_to<B>(req: &mut Request<B>, logical: &str, addr: SocketAddr) {
    if let Ok(host) = HeaderValue::from_str(logical) {
        req.headers_mut().entry(header::HOST).or_insert(host);
    }
    let mut parts = req.uri().clone().into_parts();
    parts.authority = Some(
        Authority::from_maybe_shared(bytes::Bytes::from(addr.to_string()))
            .expect("a socket address is a valid authority"),
    );
    *req.uri_mut() = Uri::from_parts(parts).expect("only the authority changed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    fn table() -> Arc<Endpoints> {
        let mut e = Endpoints::new();
        e.insert(
            "reviews:9080",
            vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
                "127.0.0.1:3".parse().unwrap(),
            ],
        );
        Arc::new(e)
    }

    async fn send(
        svc: &mut (
                 impl Service<
            Request<()>,
            Response = http::Response<(String, String)>,
            Error = crate::BoxError,
        > + Clone
             ),
        uri: &str,
    ) -> (String, String) {
        svc.clone()
            .oneshot(Request::get(uri).body(()).unwrap())
            .await
            .unwrap()
            .into_body()
    }

    #[tokio::test]
    async fn spreads_each_request_round_robin_and_keeps_the_host() {
        let mut svc = ServiceBuilder::new()
            .layer(BalanceLayer::new(table()))
            .service(service_fn(|req: Request<()>| async move {
                let host = req.headers()[header::HOST].to_str().unwrap().to_owned();
                Ok::<_, Infallible>(http::Response::new((req.uri().to_string(), host)))
            }));
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(send(&mut svc, "http://reviews:9080/reviews/0").await);
        }
        let uris: Vec<_> = seen.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(
            uris,
            [
                "http://127.0.0.1:1/reviews/0",
                "http://127.0.0.1:2/reviews/0",
                "http://127.0.0.1:3/reviews/0",
                "http://127.0.0.1:1/reviews/0",
                "http://127.0.0.1:2/reviews/0",
                "http://127.0.0.1:3/reviews/0",
            ]
        );
        assert!(seen.iter().all(|(_, host)| host == "reviews:9080"));
    }

    #[tokio::test]
    async fn unknown_names_pass_through_untouched() {
        let mut svc = ServiceBuilder::new()
            .layer(BalanceLayer::new(table()))
            .service(service_fn(|req: Request<()>| async move {
                let host = req
                    .headers()
                    .get(header::HOST)
                    .map(|h| h.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                Ok::<_, Infallible>(http::Response::new((req.uri().to_string(), host)))
            }));
        let (uri, host) = send(&mut svc, "http://details:9080/details/0").await;
        assert_eq!(uri, "http://details:9080/details/0");
        assert_eq!(host, "");
    }
}
