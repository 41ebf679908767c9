//! meshd's gRPC service: certificate signing for proven identities, the workload registry,
//! and the snapshot stream.

use crate::kubernetes::endpoints::Discovered;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::ca::CertificateAuthority;
use crate::listener::ControlPeer;
use crate::registration::{self, MAX_REGISTRATIONS, Refused, RegistrationPolicy};
use mesh_config::MeshConfig;
use mesh_proto::identity::SpiffeId;
use mesh_proto::pb;

/// The bootstrap secrets that prove identities: one per namespace/service account.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    by_account: HashMap<(String, String), String>,
}

/// The token directory cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read tokens from {path}: {reason}")]
pub struct TokensError {
    pub path: PathBuf,
    pub reason: String,
}

impl Tokens {
    pub fn insert(&mut self, namespace: &str, service_account: &str, token: &str) {
        self.by_account.insert(
            (namespace.to_owned(), service_account.to_owned()),
            token.trim().to_owned(),
        );
    }

    /// Reads a token directory: `DIR/<namespace>.<service-account>` files (as Docker and
    /// Kubernetes mount secrets) or `DIR/<namespace>/<service-account>`, one token each.
    /// Hidden files (Kubernetes' `..data` links among them) are skipped.
    pub fn load_dir(dir: &Path) -> Result<Self, TokensError> {
        let mut tokens = Self::default();
        for entry in read_dir(dir)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                for inner in read_dir(&path)? {
                    let sa = inner.file_name().to_string_lossy().into_owned();
                    if !sa.starts_with('.') && inner.path().is_file() {
                        tokens.insert(&name, &sa, &read_token(&inner.path())?);
                    }
                }
            } else if let Some((namespace, account)) = name.split_once('.') {
                tokens.insert(namespace, account, &read_token(&path)?);
            } else {
                return Err(TokensError {
                    path,
                    reason: "expected a <namespace>.<service-account> file name".into(),
                });
            }
        }
        Ok(tokens)
    }

    /// Whether `token` proves namespace/service_account (compared in constant time).
    pub fn verify(&self, namespace: &str, service_account: &str, token: &str) -> bool {
        let Some(expected) = self
            .by_account
            .get(&(namespace.to_owned(), service_account.to_owned()))
        else {
            return false;
        };
        let (a, b) = (expected.as_bytes(), token.trim().as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    pub fn is_empty(&self) -> bool {
        self.by_account.is_empty()
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, TokensError> {
    let err = |e: std::io::Error| TokensError {
        path: dir.to_owned(),
        reason: e.to_string(),
    };
    let mut entries = fs::read_dir(dir)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    entries.sort_by_key(fs::DirEntry::file_name);
    Ok(entries)
}

fn read_token(path: &Path) -> Result<String, TokensError> {
    let token = fs::read_to_string(path).map_err(|e| TokensError {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if token.trim().is_empty() {
        return Err(TokensError {
            path: path.to_owned(),
            reason: "the token file is empty".into(),
        });
    }
    Ok(token)
}

#[derive(Debug, Clone)]
struct Registered {
    service: String,
    addr: SocketAddr,
    /// Where meshd reads the workload's metrics: derived from the proven address and the
    /// admin port, never taken as sent (a URL from the workload would let it make meshd fetch
    /// anything).
    metrics_url: Option<String>,
    labels: BTreeMap<String, String>,
    identity: SpiffeId,
    /// False while the workload says it cannot take requests: registered, not published.
    ready: bool,
}

/// Services remembered after their last registration ends, at most.
pub const MAX_KNOWN_SERVICES: usize = 4096;

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    workloads: BTreeMap<u64, Registered>,
    per_identity: HashMap<SpiffeId, usize>,
    /// Every service registered since meshd started (bounded by [`MAX_KNOWN_SERVICES`]): a
    /// service whose workloads are all gone stays a mesh service without endpoints.
    known: std::collections::BTreeSet<String>,
    /// How often each identity registers.
    churn: crate::registration::Churn,
}

impl Registry {
    /// Remembers `service`; when the memory is full, services with no registration now are
    /// forgotten first.
    fn remember(&mut self, service: &str) {
        if self.known.contains(service) {
            return;
        }
        if self.known.len() >= MAX_KNOWN_SERVICES {
            let live: std::collections::BTreeSet<&str> = self
                .workloads
                .values()
                .map(|w| w.service.as_str())
                .collect();
            self.known.retain(|s| live.contains(s.as_str()));
        }
        if self.known.len() < MAX_KNOWN_SERVICES {
            self.known.insert(service.to_owned());
        }
    }
}

/// How meshd treats registrations and restarts.
#[derive(Debug, Clone)]
pub struct PlaneOptions {
    pub registration: RegistrationPolicy,
    /// After start, how long snapshots are marked incomplete: workloads that were registered
    /// with the previous meshd re-register within their reconnect backoff, and until then data
    /// planes keep the endpoints they knew instead of losing them.
    pub registration_grace: Duration,
}

/// The re-registration window by default: twice the data plane's longest reconnect backoff.
pub const DEFAULT_REGISTRATION_GRACE: Duration = Duration::from_secs(10);

impl Default for PlaneOptions {
    fn default() -> Self {
        Self {
            registration: RegistrationPolicy::default(),
            registration_grace: DEFAULT_REGISTRATION_GRACE,
        }
    }
}

/// The control plane's state, shared by every call.
#[derive(Clone)]
pub struct ControlPlane {
    ca: Arc<CertificateAuthority>,
    tokens: Arc<Tokens>,
    /// Bootstrap tokens that are Kubernetes ServiceAccount tokens, reviewed by the API server.
    token_review: Option<crate::kubernetes::TokenReviewer>,
    trust_domain: String,
    options: Arc<PlaneOptions>,
    started: tokio::time::Instant,
    registry: Arc<Mutex<Registry>>,
    config: Arc<Mutex<Arc<MeshConfig>>>,
    discovered: Arc<Mutex<Discovered>>,
    snapshots: Arc<watch::Sender<Arc<pb::Snapshot>>>,
    /// Set when meshd stops: every open watch stream ends, so data planes notice at once.
    closing: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        tokens: Tokens,
        trust_domain: impl Into<String>,
        options: PlaneOptions,
    ) -> Self {
        Self {
            ca,
            tokens: Arc::new(tokens),
            token_review: None,
            trust_domain: trust_domain.into(),
            options: Arc::new(options),
            started: tokio::time::Instant::now(),
            registry: Arc::default(),
            config: Arc::default(),
            discovered: Arc::default(),
            snapshots: Arc::new(watch::Sender::new(Arc::new(pb::Snapshot::default()))),
            closing: Arc::new(watch::Sender::new(false)),
        }
    }

    /// The CA that signs workload certificates and meshd's own.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// Ends every watch stream (meshd is stopping).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Also accepts Kubernetes ServiceAccount tokens, reviewed with the API server.
    pub fn with_token_review(mut self, reviewer: crate::kubernetes::TokenReviewer) -> Self {
        self.token_review = Some(reviewer);
        self
    }

    /// What the Kubernetes API server reports now (replacing what it reported before).
    pub fn set_discovered(&self, discovered: Discovered) {
        {
            let mut current = self
                .discovered
                .lock()
                .expect("discovered lock is never poisoned");
            if *current == discovered {
                return;
            }
            *current = discovered;
        }
        self.publish();
    }

    /// Replaces the policies every data plane gets, and pushes a new snapshot.
    pub fn set_config(&self, config: MeshConfig) {
        *self.config.lock().expect("config lock is never poisoned") = Arc::new(config);
        self.publish();
    }

    /// The gRPC service to add to a tonic server.
    pub fn service(self) -> pb::mesh_control_server::MeshControlServer<Self> {
        pb::mesh_control_server::MeshControlServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(mesh_proto::MAX_SNAPSHOT_BYTES)
    }

    /// The distinct metrics URLs of the registered workloads.
    pub fn metrics_urls(&self) -> Vec<String> {
        let registry = self
            .registry
            .lock()
            .expect("registry lock is never poisoned");
        let mut urls: Vec<String> = registry
            .workloads
            .values()
            .filter_map(|w| w.metrics_url.clone())
            .collect();
        urls.sort();
        urls.dedup();
        urls
    }

    /// The version of the latest snapshot.
    pub fn config_version(&self) -> u64 {
        self.snapshots.borrow().version
    }

    /// Whether the latest snapshot lists every workload (the re-registration window is over).
    pub fn is_complete(&self) -> bool {
        self.snapshots.borrow().complete
    }

    /// When the re-registration window ends; a snapshot is published then.
    pub fn grace_ends(&self) -> tokio::time::Instant {
        self.started + self.options.registration_grace
    }

    /// The policies and routes in force.
    pub fn config(&self) -> Arc<MeshConfig> {
        self.config
            .lock()
            .expect("config lock is never poisoned")
            .clone()
    }

    /// How many workloads are registered now.
    pub fn registered(&self) -> usize {
        self.registry
            .lock()
            .expect("registry lock is never poisoned")
            .workloads
            .len()
    }

    /// The identity a call speaks for: the connection's valid mesh certificate, else the
    /// bootstrap token for namespace/service_account. A call naming an account other than
    /// its certificate's is refused.
    async fn prove(
        &self,
        peer: Option<&ControlPeer>,
        token: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, Status> {
        if let Some(id) = peer
            .and_then(|p| p.identity.as_ref())
            .and_then(|c| c.valid_id())
        {
            let names_other = (!namespace.is_empty() && namespace != id.namespace)
                || (!service_account.is_empty() && service_account != id.service_account);
            if names_other {
                tracing::warn!(%id, %namespace, %service_account, "refused: a certificate speaks only for its own identity");
                return Err(Status::permission_denied(format!(
                    "the connection's certificate is {id}, not {namespace}/{service_account}"
                )));
            }
            return Ok(id.clone());
        }
        if self.tokens.verify(namespace, service_account, token) {
            return Ok(SpiffeId::new(
                &self.trust_domain,
                namespace,
                service_account,
            ));
        }
        if let Some(reviewer) = &self.token_review {
            return match reviewer.review(token).await {
                Ok((ns, sa))
                    if (namespace.is_empty() || namespace == ns)
                        && (service_account.is_empty() || service_account == sa) =>
                {
                    Ok(SpiffeId::new(&self.trust_domain, &ns, &sa))
                }
                Ok((ns, sa)) => {
                    tracing::warn!(%namespace, %service_account, "refused: the ServiceAccount token is {ns}/{sa}'s");
                    Err(Status::permission_denied(format!(
                        "the token is {ns}/{sa}'s, not {namespace}/{service_account}"
                    )))
                }
                Err(
                    e @ (crate::kubernetes::TokenReviewError::Api(_)
                    | crate::kubernetes::TokenReviewError::Timeout(_)),
                ) => {
                    tracing::warn!("cannot review a token: {e}");
                    Err(Status::unavailable(
                        "the API server cannot review the token now; try again",
                    ))
                }
                Err(e) => {
                    tracing::warn!(%namespace, %service_account, "refused: {e}");
                    Err(Status::permission_denied(format!(
                        "the token does not prove {namespace}/{service_account}: {e}"
                    )))
                }
            };
        }
        {
            tracing::warn!(%namespace, %service_account, "refused: the token does not prove this identity");
            Err(Status::permission_denied(format!(
                "the token does not prove {namespace}/{service_account}"
            )))
        }
    }

    /// Pushes a snapshot of the registry and config as they are now. The snapshot is built
    /// inside the watch's update, so concurrent publishes cannot overtake each other with a
    /// stale registry (the last one always reflects every registration before it).
    pub fn publish(&self) {
        let complete = tokio::time::Instant::now() >= self.grace_ends();
        self.snapshots.send_modify(|current| {
            let endpoints = {
                let registry = self
                    .registry
                    .lock()
                    .expect("registry lock is never poisoned");
                let discovered = self
                    .discovered
                    .lock()
                    .expect("discovered lock is never poisoned");
                // A workload re-watching holds two registrations for a moment: one endpoint,
                // and the newer registration's word on readiness is the one that counts.
                let mut seen = std::collections::HashSet::new();
                let newest_first: Vec<&Registered> = registry
                    .workloads
                    .values()
                    .rev()
                    .filter(|w| seen.insert((w.service.clone(), w.addr)))
                    .collect();
                let mut endpoints: Vec<pb::Endpoint> = newest_first
                    .into_iter()
                    .rev()
                    .filter(|w| w.ready && !discovered.not_ready.contains(&w.addr.ip()))
                    .map(|w| pb::Endpoint {
                        service: w.service.clone(),
                        address: w.addr.to_string(),
                        labels: w.labels.clone().into_iter().collect(),
                        namespace: w.identity.namespace.clone(),
                        identity: w.identity.to_string(),
                    })
                    .collect();
                // A discovered endpoint is published only under an identity a registration
                // of that service has proven: a pod's service account alone is the API
                // server's word, not a certificate, and a pod that is not in the mesh would
                // be an endpoint no client can reach over mTLS.
                // A pod that registered is published as it registered (its port is the one
                // it serves mTLS on, which a sidecar's differs from the Service's).
                let registered_ips: std::collections::HashSet<(String, std::net::IpAddr)> =
                    registry
                        .workloads
                        .values()
                        .map(|w| (w.service.clone(), w.addr.ip()))
                        .collect();
                for d in &discovered.ready {
                    if registered_ips.contains(&(d.service.clone(), d.addr.ip())) {
                        continue;
                    }
                    let identity =
                        SpiffeId::new(&self.trust_domain, &d.namespace, &d.service_account);
                    let proven = registry
                        .workloads
                        .values()
                        .any(|w| w.service == d.service && w.identity == identity);
                    if proven && seen.insert((d.service.clone(), d.addr)) {
                        endpoints.push(pb::Endpoint {
                            service: d.service.clone(),
                            address: d.addr.to_string(),
                            labels: d.labels.clone().into_iter().collect(),
                            namespace: d.namespace.clone(),
                            identity: identity.to_string(),
                        });
                    }
                }
                let mut services = registry.known.clone();
                services.extend(discovered.ready.iter().map(|d| d.service.clone()));
                services.extend(endpoints.iter().map(|e| e.service.clone()));
                (endpoints, services.into_iter().collect())
            };
            let (endpoints, services) = endpoints;
            let config = self
                .config
                .lock()
                .expect("config lock is never poisoned")
                .clone();
            let config_json = serde_json::to_string(&*config).expect("mesh config serialises");
            *current = Arc::new(pb::Snapshot {
                version: current.version + 1,
                endpoints,
                config_json,
                complete,
                services,
            });
        });
    }

    fn register(&self, workload: Registered) -> Result<Deregister, Status> {
        let id = {
            let mut registry = self
                .registry
                .lock()
                .expect("registry lock is never poisoned");
            if registry.workloads.len() >= MAX_REGISTRATIONS {
                return Err(Status::resource_exhausted(format!(
                    "meshd holds {MAX_REGISTRATIONS} registrations"
                )));
            }
            let held = registry
                .per_identity
                .get(&workload.identity)
                .copied()
                .unwrap_or(0);
            let limit = self.options.registration.max_per_identity;
            let policy = &self.options.registration;
            if !registry.churn.allow(&workload.identity, policy) {
                tracing::warn!(identity = %workload.identity, "refused: registering more often than {} a second", policy.registrations_per_second);
                return Err(Status::resource_exhausted(format!(
                    "{} registers more often than {} a second (burst {})",
                    workload.identity, policy.registrations_per_second, policy.registration_burst
                )));
            }
            if held >= limit {
                tracing::warn!(identity = %workload.identity, "refused: {held} registrations already (limit {limit})");
                return Err(Status::resource_exhausted(format!(
                    "{} already holds {held} registrations (limit {limit})",
                    workload.identity
                )));
            }
            *registry
                .per_identity
                .entry(workload.identity.clone())
                .or_default() += 1;
            registry.next_id += 1;
            let id = registry.next_id;
            tracing::info!(service = %workload.service, addr = %workload.addr, identity = %workload.identity, ready = workload.ready, "workload registered");
            registry.remember(&workload.service);
            registry.workloads.insert(id, workload);
            id
        };
        self.publish();
        Ok(Deregister {
            plane: self.clone(),
            id,
        })
    }
}

/// The largest request meshd decodes (a CSR or a registration is a few KiB).
pub const MAX_REQUEST_BYTES: usize = 64 << 10;
/// Removes a workload from the registry when its watch stream ends.
struct Deregister {
    plane: ControlPlane,
    id: u64,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        let removed = {
            let mut registry = self
                .plane
                .registry
                .lock()
                .expect("registry lock is never poisoned");
            let removed = registry.workloads.remove(&self.id);
            if let Some(w) = &removed
                && let Some(held) = registry.per_identity.get_mut(&w.identity)
            {
                *held -= 1;
                if *held == 0 {
                    registry.per_identity.remove(&w.identity);
                }
            }
            removed
        };
        // While meshd stops, every stream ends at once: publishing the shrinking registry
        // would only hand the last data planes a snapshot without their peers.
        if let Some(w) = removed
            && !*self.plane.closing.borrow()
        {
            tracing::info!(service = %w.service, addr = %w.addr, "workload deregistered");
            self.plane.publish();
        }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::Snapshot, Status>> + Send>>;

fn refused(e: Refused) -> Status {
    tracing::warn!("refused a registration: {e}");
    match e {
        Refused::Invalid(_) => Status::invalid_argument(e.to_string()),
        _ => Status::permission_denied(e.to_string()),
    }
}

#[tonic::async_trait]
impl pb::mesh_control_server::MeshControl for ControlPlane {
    async fn certify(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        let peer = request.extensions().get::<ControlPeer>().cloned();
        let req = request.into_inner();
        let identity = self
            .prove(
                peer.as_ref(),
                &req.token,
                &req.namespace,
                &req.service_account,
            )
            .await?;
        let cert = self.ca.sign(&req.csr_pem, &identity).map_err(|e| {
            tracing::warn!(%identity, "refused to sign: {e}");
            Status::permission_denied(e.to_string())
        })?;
        tracing::debug!(%identity, "signed a workload certificate");
        Ok(Response::new(pb::CertifyResponse {
            cert_chain_pem: cert,
        }))
    }

    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = request
            .extensions()
            .get::<ControlPeer>()
            .cloned()
            .ok_or_else(|| Status::internal("no connection info"))?;
        let certificate = peer
            .identity
            .clone()
            .filter(|c| c.valid_id().is_some())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "a watch needs the workload's mesh certificate on the connection",
                )
            })?;
        let workload = request
            .into_inner()
            .workload
            .ok_or_else(|| Status::invalid_argument("a watch names its workload"))?;
        let identity = self
            .prove(
                Some(&peer),
                "",
                &workload.namespace,
                &workload.service_account,
            )
            .await?;
        let labels: BTreeMap<String, String> = workload.labels.into_iter().collect();
        registration::check_names(&workload.service, &labels).map_err(refused)?;
        let policy = &self.options.registration;
        if !policy.may_register(&identity, &workload.service) {
            return Err(refused(Refused::Service {
                identity: identity.to_string(),
                service: workload.service,
            }));
        }
        let addr = policy
            .address(&identity, &workload.address, peer.addr.ip())
            .map_err(refused)?;
        let metrics_url = u16::try_from(workload.admin_port)
            .ok()
            .filter(|p| *p != 0)
            .map(|port| {
                format!(
                    "http://{}{}",
                    SocketAddr::new(addr.ip(), port),
                    mesh::telemetry::METRICS_PATH
                )
            });
        let guard = self.register(Registered {
            service: workload.service,
            addr,
            metrics_url,
            labels,
            identity,
            ready: !workload.not_ready,
        })?;
        // A task per stream forwards snapshots until the caller goes away (the send fails),
        // meshd closes, or the certificate that authenticated the stream expires (the
        // workload re-watches with its renewed one); the registration lives exactly as long.
        let expires = tokio::time::Instant::now()
            + certificate
                .not_after
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
        let mut closing = self.closing.subscribe();
        let mut snapshots = self.snapshots.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _registered = guard;
            loop {
                let snapshot = pb::Snapshot::clone(&snapshots.borrow_and_update());
                if tx.send(Ok(snapshot)).await.is_err() {
                    return;
                }
                let expired = tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { return } else { false },
                    _ = closing.wait_for(|c| *c) => return,
                    () = tx.closed() => return,
                    () = tokio::time::sleep_until(expires) => true,
                };
                if expired {
                    let status = Status::unauthenticated("the certificate of this watch expired");
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_snapshot_lists_every_concurrent_registration() {
        let plane = plane(64);
        let guards: Vec<Deregister> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..64u16)
                .map(|i| {
                    let plane = plane.clone();
                    scope.spawn(move || plane.register(reviews(10_000 + i)).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(plane.snapshots.borrow().endpoints.len(), 64);
        drop(guards);
        assert!(plane.snapshots.borrow().endpoints.is_empty());
    }

    fn plane(max_per_identity: usize) -> ControlPlane {
        let ca =
            CertificateAuthority::generate("cluster.local", std::time::Duration::from_secs(60))
                .unwrap();
        let options = PlaneOptions {
            registration: RegistrationPolicy {
                max_per_identity,
                // These tests register faster than any workload would.
                registration_burst: 1024,
                ..Default::default()
            },
            registration_grace: Duration::ZERO,
        };
        ControlPlane::new(Arc::new(ca), Tokens::default(), "cluster.local", options)
    }

    fn reviews(port: u16) -> Registered {
        Registered {
            service: "reviews".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            metrics_url: None,
            labels: BTreeMap::new(),
            identity: SpiffeId::new("cluster.local", "default", "bookinfo-reviews"),
            ready: true,
        }
    }

    #[test]
    fn a_workload_not_ready_is_registered_but_not_published_and_its_service_stays_known() {
        let plane = plane(8);
        let ready = plane.register(reviews(9001)).unwrap();
        let waiting = plane.register(Registered {
            ready: false,
            ..reviews(9002)
        });
        let snapshot = plane.snapshots.borrow().clone();
        let addrs: Vec<&str> = snapshot
            .endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect();
        assert_eq!(addrs, ["127.0.0.1:9001"]);
        assert_eq!(snapshot.services, ["reviews"]);
        // The workload at 9001 re-watches saying it is not ready: its newer word counts
        // although the old registration is still open.
        let rewatched = plane.register(Registered {
            ready: false,
            ..reviews(9001)
        });
        assert!(plane.snapshots.borrow().endpoints.is_empty());
        drop(rewatched);
        assert_eq!(plane.snapshots.borrow().endpoints.len(), 1);
        drop((ready, waiting));
        let snapshot = plane.snapshots.borrow().clone();
        assert!(snapshot.endpoints.is_empty());
        assert_eq!(snapshot.services, ["reviews"], "known without endpoints");
    }

    #[tokio::test(start_paused = true)]
    async fn an_identity_that_churns_its_registration_is_refused_beyond_its_rate() {
        let mut plane = plane(64);
        Arc::get_mut(&mut plane.options)
            .unwrap()
            .registration
            .registration_burst = 4;
        let published = plane.snapshots.borrow().version;
        // Re-watching in a loop, as the audit's churn did: four get through, then none.
        let outcomes: Vec<bool> = (0..10)
            .map(|i| plane.register(reviews(9000 + i)).is_ok())
            .collect();
        assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 4);
        let Err(err) = plane.register(reviews(9100)) else {
            panic!("the fifth registration in a burst of four was accepted");
        };
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("more often than 4 a second"),
            "{err:?}"
        );
        // Only the accepted registrations (and their ends) pushed snapshots.
        assert!(plane.snapshots.borrow().version - published <= 8);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(plane.register(reviews(9200)).is_ok());
    }

    #[test]
    fn known_services_are_bounded_and_forget_those_without_registrations_first() {
        let mut registry = Registry::default();
        for i in 0..MAX_KNOWN_SERVICES {
            registry.remember(&format!("s{i}"));
        }
        registry.workloads.insert(
            1,
            Registered {
                service: "s1".into(),
                ..reviews(9000)
            },
        );
        registry.remember("newcomer");
        assert!(registry.known.len() <= MAX_KNOWN_SERVICES);
        assert!(registry.known.contains("newcomer") && registry.known.contains("s1"));
        assert!(!registry.known.contains("s2"));
    }

    #[test]
    fn an_identity_holds_at_most_its_limit_of_registrations() {
        let plane = plane(3);
        let mut held: Vec<Deregister> = (0..3)
            .map(|i| plane.register(reviews(9000 + i)).unwrap())
            .collect();
        let err = plane.register(reviews(9100)).err().unwrap();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
        assert!(err.message().contains("limit 3"), "{err}");
        let mut other = reviews(9200);
        other.identity = SpiffeId::new("cluster.local", "default", "bookinfo-ratings");
        assert!(plane.register(other).is_ok(), "the limit is per identity");
        held.pop();
        held.push(plane.register(reviews(9100)).unwrap());
        assert_eq!(plane.registered(), 3);
    }

    #[test]
    fn a_workload_watching_twice_is_one_endpoint() {
        let plane = plane(8);
        let _a = plane.register(reviews(9000)).unwrap();
        let _b = plane.register(reviews(9000)).unwrap();
        assert_eq!(plane.registered(), 2);
        assert_eq!(plane.snapshots.borrow().endpoints.len(), 1);
        assert!(plane.snapshots.borrow().complete, "no grace configured");
    }

    #[test]
    fn tokens_load_from_flat_and_nested_files() {
        let dir = std::env::temp_dir().join(format!("mesh-tokens-{}", fastrand::u64(..)));
        fs::create_dir_all(dir.join("bar")).unwrap();
        fs::write(dir.join("default.bookinfo-ratings"), "t1\n").unwrap();
        fs::write(dir.join("bar").join("svc"), "t2").unwrap();
        fs::write(dir.join(".hidden"), "x").unwrap();
        let tokens = Tokens::load_dir(&dir).unwrap();
        assert!(tokens.verify("default", "bookinfo-ratings", "t1"));
        assert!(tokens.verify("bar", "svc", "t2"));
        assert!(!tokens.verify("default", "bookinfo-ratings", "t2"));
        assert!(!tokens.verify("default", "nobody", "t1"));
        fs::write(dir.join("empty.sa"), "  ").unwrap();
        let err = Tokens::load_dir(&dir).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }
}
