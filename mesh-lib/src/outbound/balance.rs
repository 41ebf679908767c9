//! Per-request endpoint choice for logical backend names.
//!
//! In the mesh, a name's endpoints come from meshd's registry (`reviews` → every reviews
//! workload). Otherwise names in the [`Endpoints`] table are chosen from it, and other names
//! with several DNS addresses are spread by [`DnsSpread`].
//!
//! A Kubernetes Service without routing rules spreads requests over its pods; refreshing the
//! Bookinfo page therefore cycles through reviews v1, v2 and v3. This layer does the same for
//! names it has a table for: each request to `reviews:9080` goes to the next address in
//! round-robin order, while the `Host` header keeps the logical name. It sits just above the
//! connection pool because the choice is per request, never per connection.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::uri::Authority;
use http::{HeaderValue, Request, Uri, header};
use tower::{Layer, Service};

use super::dns::DnsSpread;
use crate::dataplane::Mesh;

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
}

/// Round-robin positions per mesh service.
type Turns = Arc<std::sync::Mutex<HashMap<String, usize>>>;

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
        }
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
}

impl<S, B> Service<Request<B>> for Balance<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone is not ready; the driven (ready) service goes into the future.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let endpoints = self.endpoints.clone();
        let dns = self.dns.clone();
        let from_mesh = req
            .uri()
            .host()
            .and_then(|host| pick_mesh(self.mesh.as_ref()?, &self.turns, host));
        Box::pin(async move {
            if let Some(logical) = req.uri().authority().map(Authority::to_string) {
                let chosen = match from_mesh.or_else(|| endpoints.pick(&logical)) {
                    Some(addr) => Some(addr),
                    None => dns.pick(&logical).await,
                };
                if let Some(addr) = chosen {
                    route_to(&mut req, &logical, addr);
                }
            }
            inner.call(req).await
        })
    }
}

/// The next registry endpoint of the service `host` names (`reviews`, or
/// `reviews.default.svc.cluster.local`).
fn pick_mesh(mesh: &Mesh, turns: &Turns, host: &str) -> Option<SocketAddr> {
    let service = host.split('.').next().unwrap_or(host);
    let endpoints = mesh.endpoints_of(service);
    if endpoints.is_empty() {
        return None;
    }
    let mut turns = turns.lock().expect("turns lock is never poisoned");
    let turn = turns.entry(service.to_owned()).or_default();
    let chosen = endpoints[*turn % endpoints.len()].addr;
    *turn = turn.wrapping_add(1);
    Some(chosen)
}

/// Sends `req` to `addr` while `Host` keeps the logical name.
fn route_to<B>(req: &mut Request<B>, logical: &str, addr: SocketAddr) {
    if let Ok(host) = HeaderValue::from_str(logical) {
        req.headers_mut().entry(header::HOST).or_insert(host);
    }
    let mut parts = req.uri().clone().into_parts();
    parts.authority = Some(
        addr.to_string()
            .parse()
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
        svc: &mut (impl Service<Request<()>, Response = (String, String), Error = Infallible> + Clone),
        uri: &str,
    ) -> (String, String) {
        svc.clone()
            .oneshot(Request::get(uri).body(()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn spreads_each_request_round_robin_and_keeps_the_host() {
        let mut svc = ServiceBuilder::new()
            .layer(BalanceLayer::new(table()))
            .service(service_fn(|req: Request<()>| async move {
                let host = req.headers()[header::HOST].to_str().unwrap().to_owned();
                Ok::<_, Infallible>((req.uri().to_string(), host))
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
                Ok::<_, Infallible>((req.uri().to_string(), host))
            }));
        let (uri, host) = send(&mut svc, "http://details:9080/details/0").await;
        assert_eq!(uri, "http://details:9080/details/0");
        assert_eq!(host, "");
    }
}
