//! The data plane's side of the control plane: get a certificate and renew it at half its
//! life; register and follow snapshots. Both loops outlive meshd outages: the last
//! certificate and snapshot stay in use, and calls are retried with capped, jittered backoff.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint as GrpcEndpoint};

use super::{Snapshot, pb};
use crate::identity::{Certified, Credentials};

/// First retry delay after a failed call to meshd.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Who this workload is, and how to reach meshd.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// meshd's URL, e.g. `http://meshd:15012`.
    pub control_plane: String,
    /// The bootstrap secret proving namespace/service account.
    pub token: String,
    pub service: String,
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
    pub service_account: String,
    /// Where the workload's metrics are scraped (`http://host:port/stats/prometheus`), if any.
    pub metrics_url: Option<String>,
}

/// A call to meshd failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid control plane url {0:?}")]
    Url(String),
    #[error("meshd refused: {0}")]
    Refused(String),
    #[error("meshd unreachable: {0}")]
    Unreachable(String),
    #[error(transparent)]
    Credentials(#[from] crate::identity::credentials::CredentialError),
}

impl From<tonic::Status> for ControlError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument
            | tonic::Code::Unauthenticated => Self::Refused(status.message().to_owned()),
            _ => Self::Unreachable(status.message().to_owned()),
        }
    }
}

/// A channel to meshd that connects on first use and reconnects by itself.
pub fn channel(url: &str) -> Result<Channel, ControlError> {
    Ok(GrpcEndpoint::from_shared(url.to_owned())
        .map_err(|_| ControlError::Url(url.to_owned()))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// Asks meshd for a certificate and installs it.
pub async fn certify(
    channel: Channel,
    spec: &WorkloadSpec,
    credentials: &Credentials,
) -> Result<Arc<Certified>, ControlError> {
    let request = credentials.request()?;
    let mut client = pb::mesh_control_client::MeshControlClient::new(channel);
    let response = client
        .certify(pb::CertifyRequest {
            token: spec.token.clone(),
            namespace: spec.namespace.clone(),
            service_account: spec.service_account.clone(),
            csr_pem: request.csr_pem.clone(),
        })
        .await?
        .into_inner();
    Ok(credentials.install(request, &response.cert_chain_pem, &response.roots_pem)?)
}

/// Keeps `credentials` current: certify now, then renew at half of each certificate's life.
pub fn spawn_certificates(
    channel: Channel,
    spec: WorkloadSpec,
    credentials: Credentials,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            match certify(channel.clone(), &spec, &credentials).await {
                Ok(certified) => {
                    backoff.reset();
                    tracing::debug!(identity = %certified.identity, "certificate installed");
                    let wait = certified
                        .renew_at()
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    let delay = backoff.next();
                    tracing::warn!(identity = %credentials.identity(), "cannot get a certificate ({e}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    })
}

/// Registers the workload serving at `addr` and follows snapshots into `snapshots`,
/// re-registering after every disconnect.
pub fn spawn_watch(
    channel: Channel,
    spec: WorkloadSpec,
    addr: SocketAddr,
    snapshots: watch::Sender<Arc<Snapshot>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            let mut client = pb::mesh_control_client::MeshControlClient::new(channel.clone());
            let request = pb::WatchRequest {
                token: spec.token.clone(),
                workload: Some(pb::Workload {
                    service: spec.service.clone(),
                    labels: spec.labels.clone().into_iter().collect(),
                    namespace: spec.namespace.clone(),
                    service_account: spec.service_account.clone(),
                    address: addr.to_string(),
                    metrics_url: spec.metrics_url.clone().unwrap_or_default(),
                }),
            };
            let error = match client.watch(request).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(pb)) => match Snapshot::try_from(pb) {
                                Ok(snapshot) => {
                                    backoff.reset();
                                    snapshots.send_replace(Arc::new(snapshot));
                                }
                                Err(e) => tracing::warn!("{e}; keeping the last good snapshot"),
                            },
                            Ok(None) => break ControlError::Unreachable("stream ended".into()),
                            Err(status) => break ControlError::from(status),
                        }
                    }
                }
                Err(status) => ControlError::from(status),
            };
            let delay = backoff.next();
            tracing::warn!(service = %spec.service, "lost meshd ({error}); keeping the last snapshot, retrying in {delay:?}");
            tokio::time::sleep(delay).await;
        }
    })
}

/// Capped exponential backoff with jitter, so restarted meshds are not stampeded.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: MIN_BACKOFF }
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        base.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    fn reset(&mut self) {
        self.next = MIN_BACKOFF;
    }
}
