//! What meshd and every data plane share: the control plane's API (`mesh.proto`, generated
//! as [`pb`]), the [`Snapshot`] it carries, SPIFFE [`identity`] (ids, trust roots, a
//! workload's credentials) and the [`tls`] configs and verifiers that check those identities
//! on both sides.
//!
//! meshd signs certificates for proven identities, keeps the registry of running workloads,
//! and streams snapshots (endpoints + policies) to every data plane. A data plane keeps the
//! last good snapshot when meshd is away and reconnects with backoff. The API runs over TLS
//! 1.3 only: workloads verify meshd against a root they were given out of band before a
//! token leaves them, and after their first certificate they authenticate with it.
//!
//! This crate sits below both sides, so that meshd does not link the data plane's proxies
//! and a data plane does not link meshd; neither depends on the other's internals.

pub mod identity;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::identity::SpiffeId;
use mesh_config::MeshConfig;

/// Generated protobuf and gRPC code.
#[allow(unreachable_pub, missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("bookinfo.mesh.v1");
}

/// The largest snapshot meshd sends and data planes accept: the config is bounded by
/// [`mesh_config::MAX_CONFIG_JSON_BYTES`], the endpoints by meshd's registration limits on
/// count, names and labels.
pub const MAX_SNAPSHOT_BYTES: usize = 8 << 20;

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
    /// False while a restarted meshd is still collecting re-registrations: the endpoints may
    /// be only part of the mesh.
    pub complete: bool,
    /// Every service the mesh knows, endpoints or not: a call to one that has none fails at
    /// once (Envoy's `no healthy upstream`) rather than falling back to DNS.
    pub services: std::collections::BTreeSet<String>,
}

impl Snapshot {
    /// The endpoints of `service`.
    pub fn endpoints_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Arc<Endpoint>> {
        self.endpoints.iter().filter(move |e| e.service == service)
    }

    /// This snapshot, or — when it is incomplete — it with every endpoint of `previous` at an
    /// address it does not list yet, so endpoints are not lost while workloads re-register
    /// with a restarted meshd (as Istio keeps the last good config).
    pub fn merged_over(mut self, previous: &Snapshot) -> Self {
        if !self.complete {
            let listed: std::collections::HashSet<(&str, SocketAddr)> = self
                .endpoints
                .iter()
                .map(|e| (e.service.as_str(), e.addr))
                .collect();
            let kept: Vec<Arc<Endpoint>> = previous
                .endpoints
                .iter()
                .filter(|e| !listed.contains(&(e.service.as_str(), e.addr)))
                .cloned()
                .collect();
            drop(listed);
            self.endpoints.extend(kept);
            self.services.extend(previous.services.iter().cloned());
        }
        self
    }

    /// Whether `service` is a mesh service, with endpoints now or not.
    pub fn knows(&self, service: &str) -> bool {
        self.services.contains(service) || self.endpoints.iter().any(|e| e.service == service)
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
            complete: pb.complete,
            services: pb.services.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(service: &str, port: u16) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            service: service.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            labels: BTreeMap::new(),
            namespace: "default".into(),
            identity: SpiffeId::new("cluster.local", "default", service),
        })
    }

    #[test]
    fn an_incomplete_snapshot_adds_to_what_was_known_and_a_complete_one_replaces_it() {
        let known = Snapshot {
            version: 7,
            endpoints: vec![
                endpoint("details", 1),
                endpoint("reviews", 2),
                endpoint("reviews", 3),
            ],
            complete: true,
            ..Default::default()
        };
        let partial = Snapshot {
            version: 1,
            endpoints: vec![endpoint("reviews", 3), endpoint("ratings", 4)],
            complete: false,
            ..Default::default()
        };
        let merged = partial.merged_over(&known);
        let mut seen: Vec<(String, u16)> = merged
            .endpoints
            .iter()
            .map(|e| (e.service.clone(), e.addr.port()))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("details", 1),
                ("ratings", 4),
                ("reviews", 2),
                ("reviews", 3)
            ]
            .map(|(s, p)| (s.to_owned(), p))
        );
        let full = Snapshot {
            version: 2,
            endpoints: vec![endpoint("ratings", 4)],
            complete: true,
            ..Default::default()
        };
        assert_eq!(full.merged_over(&merged).endpoints.len(), 1);
    }

    #[test]
    fn a_service_is_known_by_its_endpoints_or_by_name_and_incomplete_snapshots_keep_names() {
        let known = Snapshot {
            services: ["ratings".to_owned()].into(),
            complete: true,
            ..Default::default()
        };
        assert!(known.knows("ratings"));
        assert!(!known.knows("example.com"));
        let partial = Snapshot {
            endpoints: vec![endpoint("details", 1)],
            complete: false,
            ..Default::default()
        };
        let merged = partial.merged_over(&known);
        assert!(merged.knows("ratings") && merged.knows("details"));
    }
}
