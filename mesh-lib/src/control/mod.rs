//! The control plane: meshd's gRPC service ([`server`]) and the data plane's side of it
//! ([`client`]), over the API in `proto/mesh.proto`.
//!
//! meshd signs certificates for proven identities, keeps the registry of running workloads,
//! and streams snapshots (endpoints + policies) to every data plane. A data plane keeps the
//! last good snapshot when meshd is away and reconnects with backoff.

pub mod client;
pub mod daemon;
pub mod dashboard;
pub mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::MeshConfig;
use crate::identity::SpiffeId;

/// Generated protobuf and gRPC code.
#[allow(unreachable_pub, missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("bookinfo.mesh.v1");
}

/// Where meshd listens for data planes by default (Istio's istiod uses 15012 for the same).
pub const DEFAULT_CONTROL_PORT: u16 = 15012;

/// One running workload, as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub service: String,
    pub addr: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
    pub identity: SpiffeId,
}

/// Everything a data plane needs from meshd, at one version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub version: u64,
    /// Shared, so a request's metrics and spans name their endpoint without copying it.
    pub endpoints: Vec<Arc<Endpoint>>,
    pub config: MeshConfig,
}

impl Snapshot {
    /// The endpoints of `service`.
    pub fn endpoints_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Arc<Endpoint>> {
        self.endpoints.iter().filter(move |e| e.service == service)
    }

    /// The endpoint serving at `addr`, if it is in the mesh.
    pub fn endpoint_at(&self, addr: SocketAddr) -> Option<&Arc<Endpoint>> {
        self.endpoints.iter().find(|e| e.addr == addr)
    }
}

/// A snapshot meshd sent that this data plane cannot use.
#[derive(Debug, thiserror::Error)]
#[error("unusable snapshot: {0}")]
pub struct SnapshotError(String);

impl TryFrom<pb::Snapshot> for Snapshot {
    type Error = SnapshotError;

    fn try_from(pb: pb::Snapshot) -> Result<Self, Self::Error> {
        let endpoints =
            pb.endpoints
                .into_iter()
                .map(|e| {
                    Ok(Arc::new(Endpoint {
                        addr: e.address.parse().map_err(|err| {
                            SnapshotError(format!("endpoint {:?}: {err}", e.address))
                        })?,
                        identity: e.identity.parse().map_err(|err| {
                            SnapshotError(format!("endpoint {}: {err}", e.address))
                        })?,
                        service: e.service,
                        labels: e.labels.into_iter().collect(),
                        namespace: e.namespace,
                    }))
                })
                .collect::<Result<_, SnapshotError>>()?;
        let config = if pb.config_json.is_empty() {
            MeshConfig::default()
        } else {
            serde_json::from_str(&pb.config_json).map_err(|e| SnapshotError(e.to_string()))?
        };
        Ok(Self {
            version: pb.version,
            endpoints,
            config,
        })
    }
}
