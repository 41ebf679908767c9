//! The data plane's side of the control plane: get a certificate and renew it at half its
//! life; register and follow snapshots. Both loops outlive meshd outages: the last
//! certificate and snapshot stay in use, and calls are retried with capped, jittered backoff.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::connector::{self, UrlError};
use super::{Snapshot, pb};
use crate::compiled::Compiled;
use crate::identity::{Certified, Credentials, TrustRoots};
use mesh_config::Workload;

/// First retry delay after a failed call to meshd.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Who this workload is, and how to reach meshd.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// meshd's URL, e.g. `https://meshd:15012`.
    pub control_plane: String,
    /// The roots that verify meshd and every mesh certificate, given out of band.
    pub roots: TrustRoots,
    /// The bootstrap secret proving namespace/service account; sent (inside TLS) only while
    /// the workload has no valid certificate.
    pub token: String,
    /// Where the token was read from: read again each time it is sent, so a projected
    /// Kubernetes ServiceAccount token the kubelet rotates is current (`token` is the
    /// fallback when the file cannot be read then).
    pub token_file: Option<std::path::PathBuf>,
    pub service: String,
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
    pub service_account: String,
    /// The plaintext admin port meshd reads metrics and recent spans from, if any.
    pub admin_port: Option<u16>,
}

impl WorkloadSpec {
    /// The bootstrap token as it is now: `token_file`'s content when it reads, else `token`.
    pub fn current_token(&self) -> String {
        match self.token_file.as_deref().map(std::fs::read_to_string) {
            Some(Ok(text)) if !text.trim().is_empty() => text.trim().to_owned(),
            Some(Err(e)) => {
                tracing::warn!(
                    "cannot read the bootstrap token again ({e}); sending the one read at start"
                );
                self.token.clone()
            }
            _ => self.token.clone(),
        }
    }
}

/// A call to meshd failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Roots(#[from] crate::identity::RootsError),
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
            | tonic::Code::ResourceExhausted
            | tonic::Code::Unauthenticated => Self::Refused(status.message().to_owned()),
            _ => {
                // A failed connect (TLS refused, untrusted meshd) arrives as a transport
                // error; its cause says why.
                let mut message = status.message().to_owned();
                let mut cause = std::error::Error::source(&status);
                while let Some(e) = cause {
                    message = format!("{message}: {e}");
                    cause = e.source();
                }
                Self::Unreachable(message)
            }
        }
    }
}

/// Asks meshd for a certificate and installs it: a renewal over mTLS with the current
/// certificate while it is valid and still chains to the root this workload trusts, else a
/// first certificate with the bootstrap token. A renewal that fails on the way (meshd's
/// handshake refuses the certificate after its CA was replaced, which shows only as a closed
/// connection) is tried once more with the token: that still travels only inside TLS to a
/// meshd the root vouches for, so it never reaches anyone else.
pub async fn certify(
    spec: &WorkloadSpec,
    credentials: &Credentials,
) -> Result<Arc<Certified>, ControlError> {
    let anchors = spec.roots.load()?;
    let renewal = credentials
        .current()
        .is_some_and(|c| c.is_usable() && c.chains_to(&anchors));
    match ask(spec, credentials, renewal).await {
        Err(ControlError::Unreachable(why)) if renewal => {
            tracing::info!(identity = %credentials.identity(), "renewal over mTLS failed ({why}); asking again with the bootstrap token");
            ask(spec, credentials, false).await
        }
        result => result,
    }
}

async fn ask(
    spec: &WorkloadSpec,
    credentials: &Credentials,
    renewal: bool,
) -> Result<Arc<Certified>, ControlError> {
    let channel = connector::channel(
        &spec.control_plane,
        spec.roots.clone(),
        renewal.then(|| credentials.clone()),
    )?;
    let request = credentials.request()?;
    let mut client = pb::mesh_control_client::MeshControlClient::new(channel);
    let response = client
        .certify(pb::CertifyRequest {
            token: if renewal {
                String::new()
            } else {
                spec.current_token()
            },
            namespace: spec.namespace.clone(),
            service_account: spec.service_account.clone(),
            csr_pem: request.csr_pem.clone(),
        })
        .await?
        .into_inner();
    let anchors = spec.roots.load()?;
    Ok(credentials.install(request, &response.cert_chain_pem, &anchors)?)
}

/// Keeps `credentials` current: certify now, then renew at half of each certificate's life.
pub fn spawn_certificates(spec: WorkloadSpec, credentials: Credentials) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            match certify(&spec, &credentials).await {
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

type SnapshotStream = tonic::Streaming<pb::Snapshot>;

/// Registers over a connection that presents the current certificate, as ready to take
/// requests or not.
async fn open_watch(
    spec: &WorkloadSpec,
    credentials: &Credentials,
    addr: SocketAddr,
    ready: bool,
) -> Result<SnapshotStream, ControlError> {
    let channel = connector::channel(
        &spec.control_plane,
        spec.roots.clone(),
        Some(credentials.clone()),
    )?;
    let mut client = pb::mesh_control_client::MeshControlClient::new(channel)
        .max_decoding_message_size(super::MAX_SNAPSHOT_BYTES);
    let request = pb::WatchRequest {
        workload: Some(pb::Workload {
            service: spec.service.clone(),
            labels: spec.labels.clone().into_iter().collect(),
            namespace: spec.namespace.clone(),
            service_account: spec.service_account.clone(),
            address: addr.to_string(),
            admin_port: spec.admin_port.map_or(0, u32::from),
            not_ready: !ready,
        }),
    };
    Ok(client.watch(request).await?.into_inner())
}

/// Registers the workload serving at `addr` and follows snapshots into `snapshots`, each
/// compiled for this workload before it is published, re-registering after every disconnect. The watch is authenticated by the workload's
/// certificate, so it starts once there is one, and moves to a new connection after every
/// renewal (the new registration opens before the old one closes, so the endpoint never
/// leaves the registry). When `serving` changes, the workload registers again saying so:
/// meshd withdraws the endpoint of a workload that cannot take requests, and restores it.
pub fn spawn_watch(
    spec: WorkloadSpec,
    credentials: Credentials,
    addr: SocketAddr,
    snapshots: watch::Sender<Arc<Compiled>>,
    mut serving: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Backoff::default();
        let mut certs = credentials.subscribe();
        loop {
            if certs
                .wait_for(|c| c.as_ref().is_some_and(|c| c.is_usable()))
                .await
                .is_err()
            {
                return;
            }
            certs.borrow_and_update();
            let ready = *serving.borrow_and_update();
            let error = match open_watch(&spec, &credentials, addr, ready).await {
                Ok(mut stream) => loop {
                    tokio::select! {
                        message = stream.message() => match message {
                            Ok(Some(pb)) => match Snapshot::try_from(pb) {
                                Ok(snapshot) => {
                                    backoff.reset();
                                    let merged = snapshot.merged_over(snapshots.borrow().snapshot());
                                    let workload = Workload::new(&spec.namespace, &spec.labels);
                                    let compiled = Compiled::new(Arc::new(merged), &workload);
                                    snapshots.send_replace(Arc::new(compiled));
                                }
                                Err(e) => tracing::warn!("{e}; keeping the last good snapshot"),
                            },
                            Ok(None) => break ControlError::Unreachable("stream ended".into()),
                            Err(status) => break ControlError::from(status),
                        },
                        changed = certs.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            // Renewed: register over a connection with the new certificate,
                            // then let the old registration go.
                            let ready = *serving.borrow();
                            match open_watch(&spec, &credentials, addr, ready).await {
                                Ok(fresh) => stream = fresh,
                                Err(e) => tracing::debug!("re-watching after renewal failed ({e}); keeping the current watch"),
                            }
                        }
                        changed = serving.changed() => {
                            // The sender lives as long as the workload's Mesh.
                            if changed.is_err() {
                                return;
                            }
                            let ready = *serving.borrow_and_update();
                            tracing::info!(service = %spec.service, ready, "telling meshd whether this workload takes requests");
                            match open_watch(&spec, &credentials, addr, ready).await {
                                Ok(fresh) => stream = fresh,
                                Err(e) => {
                                    // Registered with the old word: try again on the next
                                    // connection, which reads `serving` afresh.
                                    break e;
                                }
                            }
                        }
                    }
                },
                Err(e) => e,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_token_file_is_read_again_and_the_start_token_is_the_fallback() {
        let dir = std::env::temp_dir().join(format!("mesh-token-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "first\n").unwrap();
        let spec = WorkloadSpec {
            control_plane: "https://meshd:15012".into(),
            roots: TrustRoots::from_file(dir.join("root.pem")),
            token: "first".into(),
            token_file: Some(file.clone()),
            service: "ratings".into(),
            labels: BTreeMap::new(),
            namespace: "default".into(),
            service_account: "bookinfo-ratings".into(),
            admin_port: None,
        };
        assert_eq!(spec.current_token(), "first");
        // The kubelet replaces a projected token before it expires.
        std::fs::write(&file, "rotated\n").unwrap();
        assert_eq!(spec.current_token(), "rotated");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(spec.current_token(), "first");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
