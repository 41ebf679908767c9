//! Turns the mesh's Istio resources into a [`RoutePlan`]: the VirtualService rule that matches
//! the request (per request, on its host, path, method, query and headers such as `end-user`),
//! its weighted destinations resolved to DestinationRule subsets and traffic policies, and its
//! timeout, retries and fault. No VirtualService: Istio's defaults for the named service.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri, header};

use super::plan::{
    Destination, FaultPlan, LbPolicy, OutlierPlan, RetryOn, RetryPlan, RoutePlan, TrafficPlan,
};
use crate::control::Snapshot;
use crate::dataplane::Mesh;
use mesh_config::{
    HttpRoute, LoadBalancer, MeshConfig, RouteMatch, RouteRequest, StringMatch, TlsMode,
    TrafficPolicy, resolve_host,
};

/// Outlier detection's ejection time when a DestinationRule gives none (Envoy's default).
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Share of endpoints that may be ejected when none is given (Envoy's default).
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// A connection-pool limit that is not given, when another one is.
const UNSET_POOL_LIMIT: usize = 1024;

/// The plans made from one snapshot of the mesh, by what each was made for: the matched rule,
/// or (Istio's default route) the request's host. A plan depends on nothing else, and making
/// one resolves hosts, subsets and traffic policies, work a request would otherwise repeat.
#[derive(Debug, Default)]
pub struct Plans {
    made: Mutex<Option<Made>>,
}

#[derive(Debug)]
struct Made {
    /// Held, so the rules' addresses below stay theirs.
    snapshot: Arc<Snapshot>,
    /// By the VirtualService's address in the snapshot and the rule's index.
    rules: HashMap<(usize, usize), Arc<RoutePlan>>,
    /// Default plans by host.
    defaults: HashMap<Box<str>, Arc<RoutePlan>>,
}

/// Default plans kept at most: hosts are whatever the application asks for (any URL, behind
/// a sidecar), and beyond this the table starts again rather than grow.
const MAX_DEFAULT_PLANS: usize = 1024;

impl Plans {
    fn for_rule(
        &self,
        snapshot: &Arc<Snapshot>,
        key: (usize, usize),
        make: impl FnOnce() -> RoutePlan,
    ) -> Arc<RoutePlan> {
        let mut made = self.made.lock().expect("plans lock is never poisoned");
        let made = Made::of(&mut made, snapshot);
        Arc::clone(made.rules.entry(key).or_insert_with(|| Arc::new(make())))
    }

    fn for_host(
        &self,
        snapshot: &Arc<Snapshot>,
        host: &str,
        make: impl FnOnce() -> RoutePlan,
    ) -> Arc<RoutePlan> {
        let mut made = self.made.lock().expect("plans lock is never poisoned");
        let made = Made::of(&mut made, snapshot);
        if let Some(plan) = made.defaults.get(host) {
            return Arc::clone(plan);
        }
        if made.defaults.len() >= MAX_DEFAULT_PLANS {
            made.defaults.clear();
        }
        let plan = Arc::new(make());
        made.defaults.insert(host.into(), Arc::clone(&plan));
        plan
    }
}

impl Made {
    /// The plans of `snapshot`, forgetting those of an earlier one.
    fn of<'a>(made: &'a mut Option<Made>, snapshot: &Arc<Snapshot>) -> &'a mut Made {
        if made
            .as_ref()
            .is_none_or(|m| !Arc::ptr_eq(&m.snapshot, snapshot))
        {
            *made = Some(Made {
                snapshot: Arc::clone(snapshot),
                rules: HashMap::new(),
                defaults: HashMap::new(),
            });
        }
        made.as_mut().expect("just set")
    }
}

/// The plan for `req`, applying rewrites and header operations of the matched rule to it.
pub(crate) fn plan(mesh: &Mesh, plans: &Plans, req: &mut Request<Bytes>) -> Arc<RoutePlan> {
    let snapshot = mesh.snapshot();
    let namespace = mesh.identity().namespace.as_str();
    matched(plans, &snapshot, mesh, namespace, None, req)
        .unwrap_or_else(|| default_plan(plans, &snapshot, namespace, req))
}

/// At an ingress gateway: the plan of the first of `gateways` (`namespace/name`) whose
/// VirtualServices route `req` on its `Host`, with the rule's edits applied and the request
/// aimed at the rule's first destination; `None` is the gateway's 404. Matched once: the
/// gateway puts the plan on the request, and the route layer below takes it from there.
pub fn gateway_plan(
    mesh: &Mesh,
    plans: &Plans,
    gateways: &[String],
    req: &mut Request<Bytes>,
) -> Option<Arc<RoutePlan>> {
    let snapshot = mesh.snapshot();
    let namespace = mesh.identity().namespace.as_str();
    gateways
        .iter()
        .find_map(|gateway| matched(plans, &snapshot, mesh, namespace, Some(gateway), req))
}

fn route_request<'a>(
    mesh: &'a Mesh,
    namespace: &'a str,
    gateway: Option<&'a str>,
    req: &'a Request<Bytes>,
) -> RouteRequest<'a> {
    // At a gateway the client named the host in `Host`; inside the mesh the URL names it.
    let host = match gateway {
        Some(_) => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or(""),
        None => req.uri().authority().map_or("", |a| a.as_str()),
    };
    RouteRequest {
        host,
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
        source_namespace: namespace,
        source_labels: mesh.labels(),
        gateway,
    }
}

fn matched(
    plans: &Plans,
    snapshot: &Arc<Snapshot>,
    mesh: &Mesh,
    namespace: &str,
    gateway: Option<&str>,
    req: &mut Request<Bytes>,
) -> Option<Arc<RoutePlan>> {
    let config = &snapshot.config;
    let found = config.route(&route_request(mesh, namespace, gateway, req))?;
    let rule = found.rule;
    apply_request_edits(rule, req);
    // The gateway's request carries only a path: aim it at the first destination.
    if gateway.is_some()
        && let Some(first) = rule.route.first()
    {
        let port = first.destination.port.unwrap_or(crate::cli::DEFAULT_PORT);
        let authority = format!("{}:{port}", first.destination.host);
        let path = req
            .uri()
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        if let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
        {
            *req.uri_mut() = uri;
        }
    }
    let key = (
        std::ptr::from_ref(found.virtual_service).addr(),
        found.rule_index,
    );
    Some(plans.for_rule(snapshot, key, || rule_plan(config, &found)))
}

/// The plan a matched rule makes.
fn rule_plan(config: &MeshConfig, found: &RouteMatch<'_>) -> RoutePlan {
    let rule = found.rule;
    let vs_namespace = &found.virtual_service.metadata.namespace;
    let source = format!(
        "{}/{}#{}",
        vs_namespace, found.virtual_service.metadata.name, found.rule_index
    );
    let weights = rule.weights();
    let destinations: Vec<Destination> = rule
        .route
        .iter()
        .zip(weights)
        .map(|(d, weight)| {
            let fqdn = resolve_host(&d.destination.host, vs_namespace);
            let (service, dest_ns) = service_and_namespace(&fqdn, vs_namespace);
            destination(
                config,
                &d.destination.host,
                vs_namespace,
                service,
                dest_ns,
                d.destination.subset.clone(),
                weight,
            )
        })
        .collect();
    let fault = rule.fault.as_ref().map(|f| FaultPlan {
        delay: f
            .delay
            .as_ref()
            .map(|d| (d.fixed_delay, d.percentage.value())),
        abort: f
            .abort
            .as_ref()
            .map(|a| (a.http_status, a.percentage.value())),
    });
    // Istio: a route with a fault gets neither its timeout nor retries.
    let (timeout, retry) = if fault.is_some() {
        (
            None,
            RetryPlan {
                attempts: 0,
                ..RetryPlan::default()
            },
        )
    } else {
        (rule.timeout, retry_plan(rule))
    };
    RoutePlan {
        destinations,
        timeout,
        retry,
        fault,
        source,
    }
}

fn retry_plan(rule: &HttpRoute) -> RetryPlan {
    let Some(retries) = &rule.retries else {
        return RetryPlan::default();
    };
    let on = if retries.retry_on.is_empty() {
        RetryOn::default()
    } else {
        RetryOn::parse(&retries.retry_on.join(",")).0
    };
    RetryPlan {
        attempts: retries.attempts,
        per_try_timeout: retries.per_try_timeout,
        on,
    }
}

/// Istio's default route: the service the host names, with its DestinationRule's policy.
fn default_plan(
    plans: &Plans,
    snapshot: &Arc<Snapshot>,
    namespace: &str,
    req: &Request<Bytes>,
) -> Arc<RoutePlan> {
    let host = req.uri().host().unwrap_or_default();
    plans.for_host(snapshot, host, || {
        let config = &snapshot.config;
        let fqdn = resolve_host(host, namespace);
        let (service, dest_ns) = service_and_namespace(&fqdn, namespace);
        let known = snapshot.endpoints_of(&service).next().is_some()
            || config.destination_rule(host, namespace).is_some();
        let destinations = if known {
            vec![destination(
                config, host, namespace, service, dest_ns, None, 100,
            )]
        } else {
            Vec::new()
        };
        RoutePlan {
            destinations,
            source: "default".into(),
            ..RoutePlan::default()
        }
    })
}

fn destination(
    config: &MeshConfig,
    host: &str,
    namespace: &str,
    service: String,
    dest_namespace: String,
    subset: Option<String>,
    weight: u32,
) -> Destination {
    let rule = config.destination_rule(host, namespace);
    let subset_def = subset
        .as_ref()
        .and_then(|s| rule.and_then(|r| r.subsets.iter().find(|x| &x.name == s)));
    let subset_labels = match (&subset, subset_def) {
        (Some(_), Some(def)) => def.labels.clone(),
        // Istio answers 503 for a subset no DestinationRule defines: match no endpoint.
        (Some(name), None) => {
            BTreeMap::from([("mesh.bookinfo/undefined-subset".to_owned(), name.clone())])
        }
        (None, _) => BTreeMap::new(),
    };
    let policy = subset_def
        .and_then(|s| s.traffic_policy.as_ref())
        .or_else(|| rule.and_then(|r| r.traffic_policy.as_ref()))
        .map(traffic_plan)
        .unwrap_or_default();
    Destination {
        service,
        namespace: dest_namespace,
        subset,
        subset_labels,
        weight,
        policy,
    }
}

/// `reviews.default.svc.cluster.local` → (`reviews`, `default`).
fn service_and_namespace(fqdn: &str, fallback_ns: &str) -> (String, String) {
    let mut parts = fqdn.split('.');
    let service = parts.next().unwrap_or(fqdn).to_owned();
    let namespace = parts.next().unwrap_or(fallback_ns).to_owned();
    (service, namespace)
}

fn traffic_plan(policy: &TrafficPolicy) -> TrafficPlan {
    let lb = match policy.load_balancer {
        Some(LoadBalancer::Random) => LbPolicy::Random,
        Some(LoadBalancer::LeastRequest) => LbPolicy::LeastRequest,
        _ => LbPolicy::RoundRobin,
    };
    let max_in_flight = policy.connection_pool.as_ref().and_then(|pool| {
        let connections = pool.tcp.as_ref().and_then(|t| t.max_connections);
        let pending = pool
            .http
            .as_ref()
            .and_then(|h| h.http1_max_pending_requests);
        if connections.is_none() && pending.is_none() {
            return None;
        }
        let as_usize = |v: Option<u32>| v.map_or(UNSET_POOL_LIMIT, |n| n as usize);
        Some(as_usize(connections) + as_usize(pending))
    });
    let outlier = policy.outlier_detection.as_ref().map(|o| OutlierPlan {
        consecutive_5xx: o.consecutive_5xx_errors,
        consecutive_gateway: o.consecutive_gateway_errors,
        base_ejection: o.base_ejection_time.unwrap_or(DEFAULT_BASE_EJECTION),
        max_ejection_percent: o
            .max_ejection_percent
            .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT),
    });
    TrafficPlan {
        lb,
        max_in_flight,
        outlier,
        tls_disabled: policy
            .tls
            .as_ref()
            .is_some_and(|t| t.mode == TlsMode::Disable),
    }
}

/// The rule's `rewrite` and request `headers` operations.
fn apply_request_edits(rule: &HttpRoute, req: &mut Request<Bytes>) {
    if let Some(rewrite) = &rule.rewrite {
        if let Some(new_prefix) = &rewrite.uri {
            let path = req.uri().path().to_owned();
            let matched_prefix = rule.matches.iter().find_map(|m| match &m.uri {
                Some(StringMatch::Prefix(p)) if path.starts_with(p.as_str()) => Some(p.clone()),
                _ => None,
            });
            let new_path = match matched_prefix {
                Some(p) => format!("{new_prefix}{}", &path[p.len()..]),
                None => new_prefix.clone(),
            };
            let pq = match req.uri().query() {
                Some(q) => format!("{new_path}?{q}"),
                None => new_path,
            };
            let mut parts = req.uri().clone().into_parts();
            if let Ok(pq) = pq.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
        if let Some(authority) = &rewrite.authority
            && let Ok(v) = HeaderValue::from_str(authority)
        {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    if let Some(ops) = rule.headers.as_ref().map(|h| &h.request) {
        for name in &ops.remove {
            if let Ok(n) = HeaderName::try_from(name.as_str()) {
                req.headers_mut().remove(n);
            }
        }
        for (name, value) in &ops.set {
            if let (Ok(n), Ok(v)) = (
                HeaderName::try_from(name.as_str()),
                HeaderValue::from_str(value),
            ) {
                req.headers_mut().insert(n, v);
            }
        }
        for (name, value) in &ops.add {
            if let (Ok(n), Ok(v)) = (
                HeaderName::try_from(name.as_str()),
                HeaderValue::from_str(value),
            ) {
                req.headers_mut().append(n, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_made_once_per_snapshot_and_host_and_the_table_is_bounded() {
        let plans = Plans::default();
        let made = std::cell::Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            RoutePlan::default()
        };
        let first = Arc::new(Snapshot::default());
        let a = plans.for_host(&first, "reviews", make);
        let b = plans.for_host(&first, "reviews", make);
        assert!(
            Arc::ptr_eq(&a, &b),
            "the same host on the same snapshot shares its plan"
        );
        plans.for_host(&first, "ratings", make);
        assert_eq!(made.get(), 2);

        let rule = plans.for_rule(&first, (1, 0), make);
        assert!(Arc::ptr_eq(&rule, &plans.for_rule(&first, (1, 0), make)));
        assert_eq!(made.get(), 3);

        // A new snapshot (a config or endpoint push) forgets every plan of the old one.
        let second = Arc::new(Snapshot::default());
        let c = plans.for_host(&second, "reviews", make);
        assert!(!Arc::ptr_eq(&a, &c));
        plans.for_rule(&second, (1, 0), make);
        assert_eq!(made.get(), 5);

        for i in 0..MAX_DEFAULT_PLANS {
            plans.for_host(&second, &format!("host-{i}"), make);
        }
        let made_before = made.get();
        plans.for_host(&second, "reviews", make);
        assert_eq!(
            made.get(),
            made_before + 1,
            "past the bound the table started again"
        );
    }

    #[test]
    fn circuit_breaker_sample_becomes_a_limit() {
        let text = include_str!(
            "../../../mesh-config/routing/destination-rule-reviews-circuit-breaker.yaml"
        );
        let config = mesh_yaml::parse_file("cb.yaml", text).unwrap().config;
        let d = destination(
            &config,
            "reviews",
            "default",
            "reviews".into(),
            "default".into(),
            Some("v2".into()),
            50,
        );
        assert_eq!(d.policy.max_in_flight, Some(2), "{d:?}");
        assert_eq!(
            d.subset_labels.get("version").map(String::as_str),
            Some("v2")
        );
        assert!(d.policy.outlier.is_some());
    }
}
