//! meshd's gRPC service: certificate signing for proven identities, the workload registry,
//! and the snapshot stream.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::pb;
use crate::config::MeshConfig;
use crate::identity::{CertificateAuthority, SpiffeId};

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
    metrics_url: Option<String>,
    labels: BTreeMap<String, String>,
    identity: SpiffeId,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    workloads: BTreeMap<u64, Registered>,
}

/// The control plane's state, shared by every call.
#[derive(Clone)]
pub struct ControlPlane {
    ca: Arc<CertificateAuthority>,
    tokens: Arc<Tokens>,
    trust_domain: String,
    registry: Arc<Mutex<Registry>>,
    config: Arc<Mutex<Arc<MeshConfig>>>,
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
    pub fn new(ca: CertificateAuthority, tokens: Tokens, trust_domain: impl Into<String>) -> Self {
        Self {
            ca: Arc::new(ca),
            tokens: Arc::new(tokens),
            trust_domain: trust_domain.into(),
            registry: Arc::default(),
            config: Arc::default(),
            snapshots: Arc::new(watch::Sender::new(Arc::new(pb::Snapshot::default()))),
            closing: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Ends every watch stream (meshd is stopping).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Replaces the policies every data plane gets, and pushes a new snapshot.
    pub fn set_config(&self, config: MeshConfig) {
        *self.config.lock().expect("config lock is never poisoned") = Arc::new(config);
        self.publish();
    }

    /// The gRPC service to add to a tonic server.
    pub fn service(self) -> pb::mesh_control_server::MeshControlServer<Self> {
        pb::mesh_control_server::MeshControlServer::new(self)
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

    fn prove(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, Status> {
        if self.tokens.verify(namespace, service_account, token) {
            Ok(SpiffeId::new(
                &self.trust_domain,
                namespace,
                service_account,
            ))
        } else {
            tracing::warn!(%namespace, %service_account, "refused: the token does not prove this identity");
            Err(Status::permission_denied(format!(
                "the token does not prove {namespace}/{service_account}"
            )))
        }
    }

    /// Pushes a snapshot of the registry and config as they are now. The snapshot is built
    /// inside the watch's update, so concurrent publishes cannot overtake each other with a
    /// stale registry (the last one always reflects every registration before it).
    fn publish(&self) {
        self.snapshots.send_modify(|current| {
            let endpoints = {
                let registry = self
                    .registry
                    .lock()
                    .expect("registry lock is never poisoned");
                registry
                    .workloads
                    .values()
                    .map(|w| pb::Endpoint {
                        service: w.service.clone(),
                        address: w.addr.to_string(),
                        labels: w.labels.clone().into_iter().collect(),
                        namespace: w.identity.namespace.clone(),
                        identity: w.identity.to_string(),
                    })
                    .collect()
            };
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
            });
        });
    }

    fn register(&self, workload: Registered) -> Deregister {
        let id = {
            let mut registry = self
                .registry
                .lock()
                .expect("registry lock is never poisoned");
            registry.next_id += 1;
            let id = registry.next_id;
            tracing::info!(service = %workload.service, addr = %workload.addr, identity = %workload.identity, "workload registered");
            registry.workloads.insert(id, workload);
            id
        };
        self.publish();
        Deregister {
            plane: self.clone(),
            id,
        }
    }
}

/// Removes a workload from the registry when its watch stream ends.
struct Deregister {
    plane: ControlPlane,
    id: u64,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        let removed = self
            .plane
            .registry
            .lock()
            .expect("registry lock is never poisoned")
            .workloads
            .remove(&self.id);
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

#[tonic::async_trait]
impl pb::mesh_control_server::MeshControl for ControlPlane {
    async fn certify(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        let req = request.into_inner();
        let identity = self.prove(&req.token, &req.namespace, &req.service_account)?;
        let cert = self.ca.sign(&req.csr_pem, &identity).map_err(|e| {
            tracing::warn!(%identity, "refused to sign: {e}");
            Status::permission_denied(e.to_string())
        })?;
        tracing::debug!(%identity, "signed a workload certificate");
        Ok(Response::new(pb::CertifyResponse {
            cert_chain_pem: cert,
            roots_pem: self.ca.root_pem().to_owned(),
        }))
    }

    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = request.remote_addr();
        let req = request.into_inner();
        let workload = req
            .workload
            .ok_or_else(|| Status::invalid_argument("a watch names its workload"))?;
        let identity = self.prove(&req.token, &workload.namespace, &workload.service_account)?;
        let mut addr: SocketAddr = workload.address.parse().map_err(|e| {
            Status::invalid_argument(format!("address {:?}: {e}", workload.address))
        })?;
        if addr.ip().is_unspecified() {
            let caller = caller.ok_or_else(|| {
                Status::invalid_argument("an unspecified address needs a caller address")
            })?;
            addr.set_ip(caller.ip());
        }
        let metrics_url = (!workload.metrics_url.is_empty()).then(|| {
            match (caller, workload.metrics_url.contains("://0.0.0.0:")) {
                (Some(caller), true) => workload
                    .metrics_url
                    .replace("0.0.0.0", &caller.ip().to_string()),
                _ => workload.metrics_url.clone(),
            }
        });
        let guard = self.register(Registered {
            service: workload.service,
            addr,
            metrics_url,
            labels: workload.labels.into_iter().collect(),
            identity,
        });
        // A task per stream forwards snapshots until the caller goes away (the send fails)
        // or meshd closes; the registration lives exactly as long as that task.
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
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { return },
                    _ = closing.wait_for(|c| *c) => return,
                    () = tx.closed() => return,
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
        let ca =
            CertificateAuthority::generate("cluster.local", std::time::Duration::from_secs(60))
                .unwrap();
        let plane = ControlPlane::new(ca, Tokens::default(), "cluster.local");
        let guards: Vec<Deregister> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..64u16)
                .map(|i| {
                    let plane = plane.clone();
                    scope.spawn(move || {
                        plane.register(Registered {
                            service: "reviews".into(),
                            addr: SocketAddr::from(([127, 0, 0, 1], 10_000 + i)),
                            metrics_url: None,
                            labels: BTreeMap::new(),
                            identity: SpiffeId::new("cluster.local", "default", "bookinfo-reviews"),
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(plane.snapshots.borrow().endpoints.len(), 64);
        drop(guards);
        assert!(plane.snapshots.borrow().endpoints.is_empty());
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
