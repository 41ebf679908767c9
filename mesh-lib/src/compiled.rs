//! A snapshot compiled for the workload that holds it, once per update: what meshd's config
//! means for this workload (its mTLS mode, the AuthorizationPolicies that apply to it, its
//! local rate limit), the identity to require from each mesh endpoint, and the endpoints
//! indexed by service and by address (the balancer's and the connector's lookups, which
//! would otherwise scan every endpoint of the mesh). The control loop
//! compiles each snapshot before it publishes it, so a request reads the result through one
//! `Arc` and never filters, sorts or matches selectors of the whole config again, and no
//! request can see a snapshot whose policies are not compiled yet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_config::{LocalRateLimit, MtlsMode, Workload, WorkloadAuthorization};
use mesh_proto::{Endpoint, Snapshot};

use crate::identity::SpiffeId;

/// One snapshot, and what it means for one workload.
#[derive(Debug, Default)]
pub struct Compiled {
    snapshot: Arc<Snapshot>,
    mtls_mode: MtlsMode,
    authorization: WorkloadAuthorization,
    rate_limit: Option<LocalRateLimit>,
    /// Each mesh endpoint's identity, where its own PeerAuthentication takes mTLS.
    tls_targets: HashMap<SocketAddr, Option<SpiffeId>>,
    /// The endpoints of each service, in the snapshot's order.
    by_service: HashMap<String, Vec<Arc<Endpoint>>>,
    /// The endpoint at each address (the snapshot's first, where two share one).
    by_addr: HashMap<SocketAddr, Arc<Endpoint>>,
}

impl Compiled {
    /// `snapshot` as it applies to `workload`.
    pub fn new(snapshot: Arc<Snapshot>, workload: &Workload<'_>) -> Self {
        let config = &snapshot.config;
        let mut by_service: HashMap<String, Vec<Arc<Endpoint>>> = HashMap::new();
        let mut by_addr = HashMap::new();
        for endpoint in &snapshot.endpoints {
            by_service
                .entry(endpoint.service.clone())
                .or_default()
                .push(Arc::clone(endpoint));
            by_addr
                .entry(endpoint.addr)
                .or_insert_with(|| Arc::clone(endpoint));
        }
        // From the endpoint `endpoint_at` gives for each address, so the two always agree.
        let tls_targets = by_addr
            .iter()
            .map(|(addr, endpoint)| {
                let mode = config.mtls_mode(&Workload {
                    namespace: &endpoint.namespace,
                    labels: &endpoint.labels,
                });
                let identity = (mode != MtlsMode::Disable).then(|| endpoint.identity.clone());
                (*addr, identity)
            })
            .collect();
        Self {
            by_service,
            by_addr,
            mtls_mode: config.mtls_mode(workload),
            authorization: config.authorization_for(workload),
            rate_limit: config.local_rate_limit(workload).cloned(),
            tls_targets,
            snapshot,
        }
    }

    /// The snapshot as meshd sent it.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// The PeerAuthentication mode this workload accepts.
    pub fn mtls_mode(&self) -> MtlsMode {
        self.mtls_mode
    }

    /// The AuthorizationPolicies that apply to this workload.
    pub fn authorization(&self) -> &WorkloadAuthorization {
        &self.authorization
    }

    /// The LocalRateLimit on this workload's inbound, if any.
    pub fn rate_limit(&self) -> Option<&LocalRateLimit> {
        self.rate_limit.as_ref()
    }

    /// The mesh endpoints of `service` (empty when it has none).
    pub fn endpoints_of(&self, service: &str) -> &[Arc<Endpoint>] {
        self.by_service.get(service).map_or(&[], Vec::as_slice)
    }

    /// The mesh endpoint at `addr`, if any.
    pub fn endpoint_at(&self, addr: SocketAddr) -> Option<&Arc<Endpoint>> {
        self.by_addr.get(&addr)
    }

    /// For a mesh endpoint at `addr`: `Some` identity to require when it takes mTLS, `None`
    /// when its PeerAuthentication disables it. Not an endpoint: `None` outside.
    pub fn tls_target(&self, addr: SocketAddr) -> Option<&Option<SpiffeId>> {
        self.tls_targets.get(&addr)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use mesh_config::{
        Action, AuthorizationPolicy, Decision, MeshConfig, Metadata, PeerAuthentication,
        RequestAttrs,
    };

    fn meta(namespace: &str, name: &str) -> Metadata {
        Metadata {
            name: name.into(),
            namespace: namespace.into(),
            ..Metadata::default()
        }
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_owned(), app.to_owned())])
    }

    fn endpoint(app: &str, port: u16) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            service: app.into(),
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
            identity: SpiffeId::new("cluster.local", "default", app),
            namespace: "default".into(),
            labels: labels(app),
        })
    }

    #[test]
    fn what_the_config_means_for_one_workload_is_decided_once() {
        let mut config = MeshConfig::default();
        config.peer_authentications.push(PeerAuthentication {
            metadata: meta("default", "ratings-plain"),
            selector: labels("ratings"),
            mode: Some(MtlsMode::Disable),
        });
        config.peer_authentications.push(PeerAuthentication {
            metadata: meta("default", "strict"),
            selector: BTreeMap::new(),
            mode: Some(MtlsMode::Strict),
        });
        config.authorization_policies.push(AuthorizationPolicy {
            metadata: meta("default", "deny-ratings"),
            selector: labels("ratings"),
            action: Action::Deny,
            rules: vec![Default::default()],
        });
        let snapshot = Arc::new(Snapshot {
            config,
            endpoints: vec![endpoint("ratings", 1), endpoint("details", 2)],
            ..Snapshot::default()
        });

        let details = labels("details");
        let compiled = Compiled::new(snapshot.clone(), &Workload::new("default", &details));
        assert_eq!(compiled.mtls_mode(), MtlsMode::Strict);
        assert!(
            compiled.authorization().is_empty(),
            "deny-ratings selects ratings only"
        );
        let ratings_addr = SocketAddr::from(([10, 0, 0, 1], 1));
        let details_addr = SocketAddr::from(([10, 0, 0, 1], 2));
        assert_eq!(
            compiled.tls_target(ratings_addr),
            Some(&None),
            "ratings disables mTLS"
        );
        assert_eq!(
            compiled.tls_target(details_addr),
            Some(&Some(SpiffeId::new("cluster.local", "default", "details")))
        );
        assert_eq!(
            compiled.tls_target(SocketAddr::from(([10, 0, 0, 9], 9))),
            None
        );
        assert_eq!(compiled.endpoints_of("ratings").len(), 1);
        assert!(compiled.endpoints_of("reviews").is_empty());
        assert_eq!(
            compiled
                .endpoint_at(details_addr)
                .map(|e| e.service.as_str()),
            Some("details")
        );

        let ratings = labels("ratings");
        let compiled = Compiled::new(snapshot, &Workload::new("default", &ratings));
        assert_eq!(compiled.mtls_mode(), MtlsMode::Disable);
        let request = RequestAttrs {
            method: "GET",
            path: "/ratings/0",
            headers: &http::HeaderMap::new(),
            principal: None,
        };
        assert_eq!(
            compiled.authorization().decide(&request),
            Decision::Deny {
                policy: "default/deny-ratings".into()
            }
        );
    }
}
