//! Endpoints from the API server: EndpointSlices (which pod addresses back each Service, and
//! whether they are ready) joined with their Pods (labels such as `version` for subsets, and
//! the service account the pod runs as), beside meshd's registry. A Ready pod is routable as
//! soon as Kubernetes says so, before its workload has registered (a scale-up or a restart is
//! served at once), and an address Kubernetes marks not ready (a deleted pod is terminating at
//! once) stops being published at once rather than when its registration's stream ends.
//!
//! What the API server says is not a proof of identity: the control plane (`server`), which
//! this module hands each view to, publishes a discovered endpoint only under an identity
//! that a registration of the same service has proven with a certificate.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};

/// The label an EndpointSlice names its Service by.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Watches EndpointSlices and Pods in every namespace and hands every new view to `publish`
/// (the control plane's discovered endpoints), until `stopped`.
pub fn spawn(
    client: kube::Client,
    publish: impl Fn(Discovered) + Send + 'static,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            () = run(client, publish) => {}
            _ = stopped.wait_for(|s| *s) => {}
        }
    })
}

async fn run(client: kube::Client, publish: impl Fn(Discovered)) {
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let slice_events = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(slices_writer);
    let pod_events = watcher(Api::<Pod>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(pods_writer);
    futures_util::pin_mut!(slice_events, pod_events);
    loop {
        let event = tokio::select! {
            Some(e) = slice_events.next() => e.map(|_| ()),
            Some(e) = pod_events.next() => e.map(|_| ()),
            else => return,
        };
        if let Err(e) = event {
            // The stores keep what they had: the last good view stays published.
            tracing::debug!("endpoint watch: {e}");
            continue;
        }
        publish(discover(&slices, &pods));
    }
}

/// Endpoints the Kubernetes API server reports (EndpointSlices and their Pods), beside the
/// registry: a Ready pod is routable before its workload registers, and a pod that stopped
/// being ready (deleted, terminating, failing its probe) stops being routed at once, before
/// its registration's stream closes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    /// Ready endpoints: service, address, the pod's namespace, service account and labels.
    pub ready: Vec<DiscoveredEndpoint>,
    /// Pod IPs an EndpointSlice lists as not ready: registrations there are not published.
    pub not_ready: std::collections::BTreeSet<std::net::IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DiscoveredEndpoint {
    pub service: String,
    pub addr: SocketAddr,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
}

/// The endpoints `slices` and `pods` describe now.
pub fn discover(slices: &Store<EndpointSlice>, pods: &Store<Pod>) -> Discovered {
    let pods: BTreeMap<(String, String), std::sync::Arc<Pod>> = pods
        .state()
        .into_iter()
        .filter_map(|p| {
            let key = (p.metadata.namespace.clone()?, p.metadata.name.clone()?);
            Some((key, p))
        })
        .collect();
    let mut ready = BTreeSet::new();
    let mut not_ready = BTreeSet::new();
    for slice in slices.state() {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let Some(port) = service_port(&slice) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let ips: Vec<IpAddr> = endpoint
                .addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect();
            // Ready unless it says otherwise (the API's own default).
            let is_ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !is_ready {
                not_ready.extend(ips);
                continue;
            }
            let Some(pod) = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| pods.get(&(r.namespace.clone()?, r.name.clone()?)))
            else {
                continue;
            };
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let service_account = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_owned());
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            for ip in ips {
                ready.insert(DiscoveredEndpoint {
                    service: service.clone(),
                    addr: SocketAddr::new(ip, port),
                    namespace: namespace.clone(),
                    service_account: service_account.clone(),
                    labels: labels.clone(),
                });
            }
        }
    }
    Discovered {
        ready: ready.into_iter().collect(),
        not_ready,
    }
}

/// The slice's HTTP port: the one named `http`, else its only TCP port.
fn service_port(slice: &EndpointSlice) -> Option<u16> {
    let ports: Vec<_> = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .collect();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("http"))
        .or(if ports.len() == 1 {
            ports.first()
        } else {
            None
        })?;
    u16::try_from(port.port?).ok()
}
