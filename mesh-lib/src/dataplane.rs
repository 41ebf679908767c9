//! The embedded data plane of one workload: its identity and certificate, the latest
//! snapshot from meshd, and the TLS configs derived from them. [`Server`](crate::Server) and
//! [`Client`](crate::Client) consult it on every connection and request; nothing else in a
//! service knows the mesh exists.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::compiled::Compiled;
use crate::control::client::{self, ControlError, WorkloadSpec};
use crate::control::{Endpoint, Snapshot};
use crate::identity::{Certified, Credentials, SpiffeId};
pub use crate::telemetry::Telemetry;
use crate::telemetry::WorkloadName;
use crate::telemetry::metrics::WorkloadLabels;
use mesh_config::{MtlsMode, Workload};

/// The peer's identity on an inbound connection: `None` for plaintext. Inserted into every
/// request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub Option<Arc<SpiffeId>>);

/// A cheap-to-clone handle to this workload's data plane.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    spec: WorkloadSpec,
    credentials: Credentials,
    snapshot: watch::Receiver<Arc<Compiled>>,
    server_tls: watch::Receiver<Option<Arc<ServerConfig>>>,
    /// Every address ever seen as a mesh endpoint, with its identity: an address is never
    /// downgraded to plaintext because one snapshot lacks it.
    known: std::sync::Mutex<std::collections::HashMap<SocketAddr, SpiffeId>>,
    telemetry: Telemetry,
    name: WorkloadName,
    /// `name.workload`, shared by the spans of the requests this workload serves.
    workload: Arc<str>,
    /// What all of this workload's outbound clients share.
    outbound: crate::shared::Shared,
    /// The local rate limit's bucket: one per workload, whatever serves it.
    rate_limit: crate::token_bucket::WorkloadBucket,
    /// Whether the workload takes requests: meshd publishes its endpoint only while true.
    serving: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("identity", self.identity())
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Joins the mesh as the workload serving at `addr`: certificate and snapshot loops start
    /// in the background. Until a certificate arrives, mTLS fails closed. Every workload
    /// starts through [`crate::workload::WorkloadBuilder`].
    pub(crate) fn start(
        spec: WorkloadSpec,
        trust_domain: &str,
        addr: SocketAddr,
        telemetry: Telemetry,
    ) -> Result<Self, ControlError> {
        crate::control::connector::check_url(&spec.control_plane)?;
        let identity = SpiffeId::new(trust_domain, &spec.namespace, &spec.service_account);
        let credentials = Credentials::new(identity);
        let unset = Compiled::new(
            Arc::new(Snapshot::default()),
            &Workload::new(&spec.namespace, &spec.labels),
        );
        let (snapshot_tx, snapshot) = watch::channel(Arc::new(unset));
        let (tls_tx, server_tls) = watch::channel(None);
        let (serving, serving_rx) = watch::channel(true);
        let name = WorkloadName::from_labels(&spec.service, &spec.labels);
        let mut certs = credentials.subscribe();
        let expiry = telemetry
            .metrics
            .cert_expiry
            .get_or_create(&WorkloadLabels {
                workload: name.workload.clone(),
            })
            .clone();
        let tls_task = tokio::spawn(async move {
            loop {
                let current = certs.borrow_and_update().clone();
                if let Some(certified) = current {
                    let unix = certified
                        .not_after
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    expiry.set(i64::try_from(unix).unwrap_or(i64::MAX));
                    match crate::tls::server_config(&certified) {
                        Ok(config) => {
                            tls_tx.send_replace(Some(config));
                        }
                        Err(e) => tracing::error!("cannot build the server TLS config: {e}"),
                    }
                }
                if certs.changed().await.is_err() {
                    return;
                }
            }
        });
        let version = telemetry
            .metrics
            .config_version
            .get_or_create(&WorkloadLabels {
                workload: name.workload.clone(),
            })
            .clone();
        let mut versions = snapshot.clone();
        let version_task = tokio::spawn(async move {
            while versions.changed().await.is_ok() {
                let v = versions.borrow_and_update().snapshot().version;
                version.set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        });
        let tasks = vec![
            client::spawn_certificates(spec.clone(), credentials.clone()),
            client::spawn_watch(
                spec.clone(),
                credentials.clone(),
                addr,
                snapshot_tx,
                serving_rx,
            ),
            tls_task,
            version_task,
        ];
        Ok(Self {
            inner: Arc::new(Inner {
                spec,
                credentials,
                snapshot,
                server_tls,
                known: Default::default(),
                telemetry,
                workload: Arc::from(name.workload.as_str()),
                name,
                outbound: crate::shared::Shared::default(),
                rate_limit: Default::default(),
                serving,
                tasks,
            }),
        })
    }

    pub fn identity(&self) -> &SpiffeId {
        self.inner.credentials.identity()
    }

    pub fn service(&self) -> &str {
        &self.inner.spec.service
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.inner.spec.labels
    }

    /// This workload's name in metrics (`reviews-v2`).
    pub fn workload_name(&self) -> &WorkloadName {
        &self.inner.name
    }

    /// This workload's name (`reviews-v2`), shared rather than copied.
    pub fn workload_shared(&self) -> Arc<str> {
        self.inner.workload.clone()
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    /// The latest snapshot (empty until meshd has sent one).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.borrow().snapshot().clone()
    }

    /// The latest snapshot with what it means for this workload, compiled when it arrived.
    pub fn compiled(&self) -> Arc<Compiled> {
        self.inner.snapshot.borrow().clone()
    }

    /// The compiled snapshots as they come, for what must act on a change rather than per
    /// request.
    pub fn snapshots(&self) -> watch::Receiver<Arc<Compiled>> {
        self.inner.snapshot.clone()
    }

    /// The current certificate, if any.
    pub fn certified(&self) -> Option<Arc<Certified>> {
        self.inner.credentials.current()
    }

    /// The inbound TLS config for the current certificate.
    pub fn server_tls(&self) -> Option<Arc<ServerConfig>> {
        self.inner.server_tls.borrow().clone()
    }

    /// Whether this workload has a certificate, a snapshot and its inbound TLS config.
    pub fn is_ready(&self) -> bool {
        self.server_tls().is_some() && self.snapshot().version > 0
    }

    /// Says whether the workload can take requests now (a sidecar follows its application's
    /// health): while it cannot, meshd keeps it registered but leaves its endpoint out of
    /// every snapshot, as Kubernetes withdraws a pod that fails its readiness probe.
    pub fn set_serving(&self, serving: bool) {
        self.inner.serving.send_if_modified(|now| {
            let changed = *now != serving;
            *now = serving;
            changed
        });
    }

    /// Waits until [`Mesh::is_ready`], or `timeout`.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let mut tls = self.inner.server_tls.clone();
        let mut snapshot = self.inner.snapshot.clone();
        let wait = async {
            let _ = tls.wait_for(Option::is_some).await;
            let _ = snapshot.wait_for(|s| s.snapshot().version > 0).await;
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// The PeerAuthentication mode that applies to this workload now.
    pub fn mtls_mode(&self) -> MtlsMode {
        self.inner.snapshot.borrow().mtls_mode()
    }

    /// The mesh endpoints of `service` (empty when it is not in the mesh).
    pub fn endpoints_of(&self, service: &str) -> Vec<Arc<Endpoint>> {
        self.compiled().endpoints_of(service).to_vec()
    }

    /// The identity to require from `addr`, when it is a mesh endpoint that takes mTLS.
    pub fn tls_target(&self, addr: SocketAddr) -> Option<SpiffeId> {
        let compiled = self.compiled();
        let mut known = self
            .inner
            .known
            .lock()
            .expect("known lock is never poisoned");
        let Some(target) = compiled.tls_target(addr) else {
            return known.get(&addr).cloned();
        };
        if let Some(endpoint) = compiled.endpoint_at(addr) {
            known.insert(addr, endpoint.identity.clone());
        }
        target.clone()
    }

    /// What every outbound client of this workload shares.
    pub(crate) fn outbound_shared(&self) -> &crate::shared::Shared {
        &self.inner.outbound
    }

    /// The workload's local rate-limit bucket.
    pub(crate) fn rate_limit_bucket(&self) -> &crate::token_bucket::WorkloadBucket {
        &self.inner.rate_limit
    }
}
