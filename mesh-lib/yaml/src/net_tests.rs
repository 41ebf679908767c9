//! The spec of routing: Bookinfo's traffic-management samples, parsed and evaluated.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use super::*;

fn load(yaml: &str) -> Loaded {
    match parse_file("net.yaml", yaml) {
        Ok(loaded) => loaded,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn parse(yaml: &str) -> MeshConfig {
    let loaded = load(yaml);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    loaded.config
}

fn parse_err(yaml: &str) -> ConfigError {
    match parse_file("net.yaml", yaml) {
        Ok(loaded) => panic!("expected an error, got {loaded:?}"),
        Err(e) => e,
    }
}

fn join(parts: &[&str]) -> String {
    parts.join("\n---\n")
}

/// A request with everything but the routing inputs left empty.
struct Req {
    host: String,
    method: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    namespace: String,
    labels: BTreeMap<String, String>,
    gateway: Option<String>,
}

impl Req {
    fn mesh(host: &str, path: &str) -> Req {
        Req {
            host: host.to_owned(),
            method: "GET".to_owned(),
            path: path.to_owned(),
            query: None,
            headers: HeaderMap::new(),
            namespace: "default".to_owned(),
            labels: BTreeMap::new(),
            gateway: None,
        }
    }

    fn gateway(gateway: &str, host: &str, path: &str) -> Req {
        Req {
            gateway: Some(gateway.to_owned()),
            ..Req::mesh(host, path)
        }
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Req {
        self.headers.append(name, HeaderValue::from_static(value));
        self
    }

    fn query(mut self, query: &str) -> Req {
        self.query = Some(query.to_owned());
        self
    }

    fn from(mut self, namespace: &str, labels: &[(&str, &str)]) -> Req {
        self.namespace = namespace.to_owned();
        self.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self
    }

    fn as_request(&self) -> RouteRequest<'_> {
        RouteRequest {
            host: &self.host,
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            source_namespace: &self.namespace,
            source_labels: &self.labels,
            gateway: self.gateway.as_deref(),
        }
    }
}

/// `(virtual service name, rule index)` of the route taken.
fn route(config: &MeshConfig, req: &Req) -> Option<(String, usize)> {
    config
        .route(&req.as_request())
        .map(|m| (m.virtual_service.metadata.name.clone(), m.rule_index))
}

/// The `host/subset` of the first destination of the route taken.
fn dest(config: &MeshConfig, req: &Req) -> Option<String> {
    let m = config.route(&req.as_request())?;
    let d = &m.rule.route.first()?.destination;
    Some(match &d.subset {
        Some(subset) => format!("{}/{subset}", d.host),
        None => d.host.clone(),
    })
}

// ---------------------------------------------------------------- Bookinfo samples

const BOOKINFO_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  # The default ingress gateway deployment.
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 8080
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts:
  - "*"
  gateways:
  - bookinfo-gateway
  http:
  - match:
    - uri:
        exact: /productpage
    - uri:
        prefix: /static
    - uri:
        exact: /login
    - uri:
        exact: /logout
    - uri:
        prefix: /api/v1/products
    route:
    - destination:
        host: productpage
        port:
          number: 9080
"#;

const DESTINATION_RULE_ALL: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: productpage
spec:
  host: productpage
  subsets:
  - name: v1
    labels:
      version: v1
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ratings
spec:
  host: ratings
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v2-mysql
    labels:
      version: v2-mysql
  - name: v2-mysql-vm
    labels:
      version: v2-mysql-vm
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: details
spec:
  host: details
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"#;

fn all_v1() -> String {
    ["productpage", "reviews", "ratings", "details"]
        .iter()
        .map(|service| {
            format!(
                r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {service}
spec:
  hosts:
  - {service}
  http:
  - route:
    - destination:
        host: {service}
        subset: v1
"#
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

const REVIEWS_TEST_V2: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
"#;

const REVIEWS_50_V3: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 50
    - destination:
        host: reviews
        subset: v3
      weight: 50
"#;

const RATINGS_TEST_DELAY: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      delay:
        percentage:
          value: 100.0
        fixedDelay: 7s
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"#;

const RATINGS_TEST_ABORT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      abort:
        percentage:
          value: 100.0
        httpStatus: 500
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"#;

const DETAILS_FAULT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: details
spec:
  hosts:
  - details
  http:
  - fault:
      abort:
        httpStatus: 555
        percentage:
          value: 100
    route:
    - destination:
        host: details
        subset: v1
  - route:
    - destination:
        host: details
        subset: v1
"#;

const REVIEWS_TIMEOUT_RETRIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
    timeout: 0.5s
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: gateway-error, connect-failure,refused-stream
"#;

#[test]
fn bookinfo_gateway_parses() {
    let config = parse(BOOKINFO_GATEWAY);
    let gw = &config.gateways[0];
    assert_eq!(gw.metadata.key(), "default/bookinfo-gateway");
    assert_eq!(
        gw.selector.get("istio").map(String::as_str),
        Some("ingressgateway")
    );
    assert_eq!(gw.servers.len(), 1);
    assert_eq!(gw.servers[0].port.number, 8080);
    assert_eq!(gw.servers[0].port.protocol, "HTTP");
    assert_eq!(gw.servers[0].hosts, ["*"]);

    let vs = &config.virtual_services[0];
    assert_eq!(vs.hosts, ["*"]);
    assert_eq!(vs.gateways, ["bookinfo-gateway"]);
    let rule = &vs.http[0];
    assert_eq!(
        rule.matches
            .iter()
            .map(|m| m.uri.clone())
            .collect::<Vec<_>>(),
        [
            Some(StringMatch::Exact("/productpage".into())),
            Some(StringMatch::Prefix("/static".into())),
            Some(StringMatch::Exact("/login".into())),
            Some(StringMatch::Exact("/logout".into())),
            Some(StringMatch::Prefix("/api/v1/products".into())),
        ]
    );
    assert_eq!(
        rule.route[0].destination,
        Destination {
            host: "productpage".into(),
            subset: None,
            port: Some(9080)
        }
    );
}

#[test]
fn gateway_routing_of_bookinfo() {
    let config = parse(BOOKINFO_GATEWAY);
    let at = |host: &str, path: &str| Req::gateway("default/bookinfo-gateway", host, path);
    let hit = Some(("bookinfo".to_owned(), 0));
    assert_eq!(route(&config, &at("localhost:8080", "/productpage")), hit);
    assert_eq!(
        route(
            &config,
            &at("bookinfo.example.com", "/productpage").query("u=normal")
        ),
        hit
    );
    assert_eq!(route(&config, &at("x", "/static/css/site.css")), hit);
    assert_eq!(route(&config, &at("x", "/staticfoo")), hit);
    assert_eq!(route(&config, &at("x", "/login")), hit);
    assert_eq!(route(&config, &at("x", "/logout")), hit);
    assert_eq!(route(&config, &at("x", "/api/v1/products/0/reviews")), hit);
    assert_eq!(route(&config, &at("x", "/")), None);
    assert_eq!(route(&config, &at("x", "/health")), None);
    assert_eq!(route(&config, &at("x", "/productpage/")), None);
    assert_eq!(route(&config, &at("x", "/Productpage")), None);
    // The VS governs the gateway's hosts even when no rule matches (Istio: 404).
    assert!(
        config
            .virtual_service_for(&at("x", "/").as_request())
            .is_some()
    );
    // The gateway's short name resolves in the virtual service's namespace.
    assert_eq!(
        route(&config, &Req::gateway("bookinfo-gateway", "x", "/login")),
        hit
    );
    assert_eq!(
        route(
            &config,
            &Req::gateway("istio-system/bookinfo-gateway", "x", "/login")
        ),
        None
    );
    assert_eq!(
        dest(&config, &at("x", "/productpage")),
        Some("productpage".to_owned())
    );
}

#[test]
fn gateway_only_virtual_service_does_not_route_mesh_traffic() {
    let config = parse(BOOKINFO_GATEWAY);
    let mesh = Req::mesh("productpage:9080", "/productpage");
    assert_eq!(route(&config, &mesh), None);
    assert!(config.virtual_service_for(&mesh.as_request()).is_none());

    // Listing "mesh" as well makes it apply to both.
    let both =
        BOOKINFO_GATEWAY.replace("  - bookinfo-gateway\n", "  - bookinfo-gateway\n  - mesh\n");
    let config = parse(&both);
    assert_eq!(route(&config, &mesh), Some(("bookinfo".to_owned(), 0)));
}

#[test]
fn gateway_in_another_namespace() {
    let config = parse(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: http}
    hosts: ["bookinfo.example.com"]
  - port: {number: 8080, name: http-alt, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: other, namespace: default}
spec:
  selector: {app: other-gateway}
  servers:
  - port: {number: 80, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: default}
spec:
  hosts: ["bookinfo.example.com"]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: productpage}}]
"#,
    );
    let req = Req::gateway("istio-system/gw", "bookinfo.example.com:80", "/");
    assert_eq!(route(&config, &req), Some(("bookinfo".to_owned(), 0)));
    let req = Req::gateway("istio-system/gw", "other.example.com", "/");
    assert_eq!(route(&config, &req), None);
    let req = Req::gateway("default/gw", "bookinfo.example.com", "/");
    assert_eq!(route(&config, &req), None);

    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let ingress = labels(&[("istio", "ingressgateway"), ("app", "istio-ingressgateway")]);
    let names =
        |gws: Vec<&Gateway>| -> Vec<String> { gws.iter().map(|g| g.metadata.key()).collect() };
    assert_eq!(
        names(config.gateway_for(&ingress, &[80])),
        ["istio-system/gw"]
    );
    assert_eq!(
        names(config.gateway_for(&ingress, &[8080])),
        ["istio-system/gw"]
    );
    assert!(config.gateway_for(&ingress, &[443]).is_empty());
    assert_eq!(
        names(config.gateway_for(&ingress, &[443, 8080])),
        ["istio-system/gw"]
    );
    assert_eq!(
        names(config.gateways_missing_port(&ingress, &[443])),
        ["istio-system/gw"]
    );
    assert!(config.gateways_missing_port(&ingress, &[80]).is_empty());
    assert_eq!(
        names(config.gateway_for(&labels(&[("app", "other-gateway")]), &[80])),
        ["default/other"]
    );
    assert!(config.gateway_for(&BTreeMap::new(), &[80]).is_empty());
    assert_eq!(config.gateways[0].servers[0].port.protocol, "HTTP");
}

#[test]
fn destination_rule_all_and_subsets() {
    let config = parse(DESTINATION_RULE_ALL);
    assert_eq!(config.destination_rules.len(), 4);
    let reviews = match config.destination_rule("reviews", "default") {
        Some(r) => r,
        None => panic!("no reviews rule"),
    };
    assert_eq!(reviews.metadata.name, "reviews");
    assert_eq!(
        reviews
            .subsets
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["v1", "v2", "v3"]
    );
    for host in [
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local",
        "REVIEWS.default.svc.cluster.local.",
    ] {
        assert_eq!(
            config
                .destination_rule(host, "default")
                .map(|r| r.metadata.name.as_str()),
            Some("reviews"),
            "{host}"
        );
    }
    assert!(config.destination_rule("reviews", "other").is_none());
    assert!(
        config
            .destination_rule("reviews.other.svc.cluster.local", "default")
            .is_none()
    );
    assert!(config.destination_rule("nope", "default").is_none());

    let v3 = config.subset_labels("reviews", "default", "v3");
    assert_eq!(
        v3.and_then(|l| l.get("version")).map(String::as_str),
        Some("v3")
    );
    assert!(config.subset_labels("reviews", "default", "v4").is_none());
    assert!(
        config
            .subset_labels("ratings", "default", "v2-mysql")
            .is_some()
    );
}

#[test]
fn destination_rule_wildcards_and_precedence() {
    let config = parse(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: all, namespace: default}
spec:
  host: "*.default.svc.cluster.local"
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-here, namespace: foo}
spec:
  host: reviews.default.svc.cluster.local
  subsets: [{name: mine, labels: {version: v9}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
"#,
    );
    let name = |host: &str, ns: &str| {
        config
            .destination_rule(host, ns)
            .map(|r| r.metadata.name.clone())
    };
    assert_eq!(name("details", "default"), Some("all".to_owned()));
    assert_eq!(name("reviews", "default"), Some("reviews".to_owned()));
    // Exact beats wildcard; among exact rules, the caller's namespace first.
    assert_eq!(
        name("reviews.default.svc.cluster.local", "foo"),
        Some("reviews-here".to_owned())
    );
    assert_eq!(name("details", "foo"), None);
    assert_eq!(
        config.destination_rules[0]
            .traffic_policy
            .as_ref()
            .and_then(|p| p.tls.as_ref())
            .map(|t| t.mode),
        Some(TlsMode::IstioMutual)
    );
}

#[test]
fn virtual_service_all_v1() {
    let config = parse(&join(&[DESTINATION_RULE_ALL, &all_v1()]));
    assert_eq!(config.virtual_services.len(), 4);
    for service in ["productpage", "reviews", "ratings", "details"] {
        for host in [
            format!("{service}:9080"),
            format!("{service}.default.svc.cluster.local:9080"),
            service.to_owned(),
        ] {
            assert_eq!(
                dest(&config, &Req::mesh(&host, "/anything")),
                Some(format!("{service}/v1")),
                "{host}"
            );
        }
    }
    // From another namespace, the short name is another service.
    assert_eq!(
        route(&config, &Req::mesh("reviews:9080", "/").from("other", &[])),
        None
    );
    assert_eq!(
        dest(
            &config,
            &Req::mesh("reviews.default:9080", "/").from("other", &[])
        ),
        Some("reviews/v1".to_owned())
    );
    assert_eq!(route(&config, &Req::mesh("unknown:9080", "/")), None);
}

#[test]
fn reviews_test_v2_routes_jason() {
    let config = parse(&join(&[DESTINATION_RULE_ALL, REVIEWS_TEST_V2]));
    let jason = Req::mesh("reviews:9080", "/reviews/0").header("end-user", "jason");
    assert_eq!(dest(&config, &jason), Some("reviews/v2".to_owned()));
    assert_eq!(route(&config, &jason), Some(("reviews".to_owned(), 0)));

    let other = Req::mesh("reviews:9080", "/reviews/0").header("end-user", "Jason");
    assert_eq!(dest(&config, &other), Some("reviews/v1".to_owned()));
    let nobody = Req::mesh("reviews:9080", "/reviews/0");
    assert_eq!(route(&config, &nobody), Some(("reviews".to_owned(), 1)));
    let prefixed = Req::mesh("reviews:9080", "/").header("end-user", "jasonx");
    assert_eq!(dest(&config, &prefixed), Some("reviews/v1".to_owned()));
}

#[test]
fn reviews_50_v3_weights() {
    let config = parse(&join(&[DESTINATION_RULE_ALL, REVIEWS_50_V3]));
    let m = match config.route(&Req::mesh("reviews:9080", "/").as_request()) {
        Some(m) => m,
        None => panic!("no route"),
    };
    assert_eq!(total_weight(m.rule), 100);
    let subset = |roll| choose_destination(m.rule, roll).and_then(|d| d.destination.subset.clone());
    let mut counts = BTreeMap::new();
    for roll in 0..100 {
        *counts.entry(subset(roll)).or_insert(0) += 1;
    }
    assert_eq!(counts.get(&Some("v1".to_owned())), Some(&50));
    assert_eq!(counts.get(&Some("v3".to_owned())), Some(&50));
    assert_eq!(subset(0), Some("v1".to_owned()));
    assert_eq!(subset(49), Some("v1".to_owned()));
    assert_eq!(subset(50), Some("v3".to_owned()));
    assert_eq!(subset(99), Some("v3".to_owned()));
    assert_eq!(subset(100), Some("v1".to_owned()), "rolls wrap around");
}

fn rule_with(route: Vec<RouteDestination>) -> HttpRoute {
    HttpRoute {
        route,
        ..HttpRoute::default()
    }
}

fn to(subset: &str, weight: Option<u32>) -> RouteDestination {
    RouteDestination {
        destination: Destination {
            host: "reviews".into(),
            subset: Some(subset.into()),
            port: None,
        },
        weight,
        headers: None,
    }
}

fn picks(rule: &HttpRoute) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for roll in 0..rule.total_weight() {
        let subset = rule
            .choose_destination(roll)
            .and_then(|d| d.destination.subset.clone())
            .unwrap_or_default();
        *counts.entry(subset).or_insert(0) += 1;
    }
    counts
}

#[test]
fn weight_defaults() {
    let single = rule_with(vec![to("a", None)]);
    assert_eq!(single.total_weight(), 100);
    assert_eq!(picks(&single), BTreeMap::from([("a".to_owned(), 100)]));
    // A single destination takes everything whatever its weight says.
    assert_eq!(rule_with(vec![to("a", Some(0))]).total_weight(), 100);

    let three = rule_with(vec![to("a", None), to("b", None), to("c", None)]);
    assert_eq!(three.weights(), [34, 33, 33]);
    assert_eq!(three.total_weight(), 100);

    let mixed = rule_with(vec![to("a", Some(80)), to("b", None), to("c", Some(20))]);
    assert_eq!(
        picks(&mixed),
        BTreeMap::from([("a".to_owned(), 80), ("c".to_owned(), 20)])
    );
    let odd = rule_with(vec![to("a", Some(1)), to("b", Some(3))]);
    assert_eq!(odd.total_weight(), 4);
    assert_eq!(
        picks(&odd),
        BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 3)])
    );
    let zero_first = rule_with(vec![to("a", Some(0)), to("b", Some(100))]);
    assert_eq!(picks(&zero_first), BTreeMap::from([("b".to_owned(), 100)]));

    assert!(rule_with(vec![]).choose_destination(0).is_none());
    assert_eq!(rule_with(vec![]).total_weight(), 0);
}

#[test]
fn ratings_delay_and_abort_for_jason() {
    let config = parse(&join(&[DESTINATION_RULE_ALL, RATINGS_TEST_DELAY]));
    let jason = Req::mesh("ratings:9080", "/ratings/0").header("end-user", "jason");
    let m = match config.route(&jason.as_request()) {
        Some(m) => m,
        None => panic!("no route"),
    };
    assert_eq!(m.rule_index, 0);
    let delay = m.rule.fault.as_ref().and_then(|f| f.delay.as_ref());
    assert_eq!(
        delay,
        Some(&FaultDelay {
            fixed_delay: Duration::from_secs(7),
            percentage: Percent::ALL,
        })
    );
    assert!(m.rule.fault.as_ref().is_some_and(|f| f.abort.is_none()));
    let anyone = Req::mesh("ratings:9080", "/ratings/0");
    assert_eq!(route(&config, &anyone), Some(("ratings".to_owned(), 1)));

    let config = parse(&join(&[DESTINATION_RULE_ALL, RATINGS_TEST_ABORT]));
    let m = match config.route(&jason.as_request()) {
        Some(m) => m,
        None => panic!("no route"),
    };
    let abort = m.rule.fault.as_ref().and_then(|f| f.abort.clone());
    assert_eq!(
        abort,
        Some(FaultAbort {
            http_status: 500,
            percentage: Percent::ALL
        })
    );
    assert!(Percent::ALL.hits(99.99));
    assert!(!Percent::new(0.0).is_some_and(|p| p.hits(0.0)));
}

#[test]
fn details_fault_without_match_applies_to_all() {
    let config = parse(&join(&[DESTINATION_RULE_ALL, DETAILS_FAULT]));
    let m = match config.route(&Req::mesh("details:9080", "/details/0").as_request()) {
        Some(m) => m,
        None => panic!("no route"),
    };
    assert_eq!(m.rule_index, 0);
    assert_eq!(
        m.rule
            .fault
            .as_ref()
            .and_then(|f| f.abort.as_ref())
            .map(|a| a.http_status),
        Some(555)
    );
}

#[test]
fn timeout_and_retries() {
    let config = parse(&join(&[DESTINATION_RULE_ALL, REVIEWS_TIMEOUT_RETRIES]));
    let rule = &config.virtual_services[0].http[0];
    assert_eq!(rule.timeout, Some(Duration::from_millis(500)));
    assert_eq!(
        rule.retries,
        Some(Retries {
            attempts: 3,
            per_try_timeout: Some(Duration::from_secs(2)),
            retry_on: vec![
                "gateway-error".into(),
                "connect-failure".into(),
                "refused-stream".into()
            ],
        })
    );
}

// ---------------------------------------------------------------- match conditions

fn one_vs(http: &str) -> MeshConfig {
    parse(&format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs}}\nspec:\n  hosts: [svc]\n  http:\n{http}"
    ))
}

fn hits(config: &MeshConfig, req: &Req) -> bool {
    route(config, req).is_some()
}

#[test]
fn uri_regex_method_authority_scheme() {
    let config = one_vs(
        "  - match:\n    - uri: {regex: '/api/v[0-9]+/.*'}\n      method: {exact: POST}\n    route: [{destination: {host: svc}}]\n",
    );
    let mut req = Req::mesh("svc", "/api/v1/x");
    assert!(!hits(&config, &req), "GET");
    req.method = "POST".into();
    assert!(hits(&config, &req));
    req.path = "/api/v1".into();
    assert!(!hits(&config, &req), "regex is a full match");
    req.path = "/x/api/v2/y".into();
    assert!(!hits(&config, &req), "regex is anchored");

    let config = one_vs(
        "  - match:\n    - authority: {prefix: 'svc:'}\n      scheme: {exact: https}\n    route: [{destination: {host: svc}}]\n",
    );
    assert!(!hits(&config, &Req::mesh("svc:80", "/")));
    assert!(hits(
        &config,
        &Req::mesh("svc:80", "/").header("x-forwarded-proto", "https")
    ));
    assert!(!hits(
        &config,
        &Req::mesh("svc", "/").header("x-forwarded-proto", "https")
    ));
}

#[test]
fn ignore_uri_case() {
    let config = one_vs(
        "  - match:\n    - uri: {prefix: /Static}\n      ignoreUriCase: true\n    - uri: {exact: /Login}\n      ignoreUriCase: true\n    route: [{destination: {host: svc}}]\n",
    );
    for path in ["/static/x", "/STATIC", "/login", "/LOGIN"] {
        assert!(hits(&config, &Req::mesh("svc", path)), "{path}");
    }
    for path in ["/stati", "/login/x", "/"] {
        assert!(!hits(&config, &Req::mesh("svc", path)), "{path}");
    }
    let config = one_vs(
        "  - match:\n    - uri: {prefix: /Static}\n    route: [{destination: {host: svc}}]\n",
    );
    assert!(!hits(&config, &Req::mesh("svc", "/static")));
}

#[test]
fn headers_presence_regex_and_without_headers() {
    let config = one_vs(
        "  - match:\n    - headers:\n        x-canary: {}\n        user-agent: {regex: '.*Firefox.*'}\n      withoutHeaders:\n        x-skip: {exact: 'yes'}\n    route: [{destination: {host: svc}}]\n",
    );
    let base = || Req::mesh("svc", "/").header("user-agent", "Mozilla Firefox 1");
    assert!(!hits(&config, &base()), "x-canary missing");
    assert!(hits(&config, &base().header("x-canary", "")));
    assert!(hits(
        &config,
        &base().header("x-canary", "1").header("x-skip", "no")
    ));
    assert!(!hits(
        &config,
        &base().header("x-canary", "1").header("x-skip", "yes")
    ));
    assert!(!hits(
        &config,
        &Req::mesh("svc", "/")
            .header("x-canary", "1")
            .header("user-agent", "curl")
    ));
    // Repeated headers are compared joined.
    let config = one_vs(
        "  - match:\n    - headers: {x-a: {exact: '1,2'}}\n    route: [{destination: {host: svc}}]\n",
    );
    assert!(hits(
        &config,
        &Req::mesh("svc", "/").header("x-a", "1").header("x-a", "2")
    ));
    assert!(!hits(&config, &Req::mesh("svc", "/").header("x-a", "1")));
}

#[test]
fn query_params() {
    let config = one_vs(
        "  - match:\n    - queryParams:\n        u: {exact: normal}\n        id: {regex: '[0-9]+'}\n    - queryParams:\n        debug: {prefix: ''}\n    route: [{destination: {host: svc}}]\n",
    );
    let q = |query: &str| Req::mesh("svc", "/").query(query);
    assert!(hits(&config, &q("u=normal&id=42")));
    assert!(hits(&config, &q("id=42&u=%6Eormal")));
    assert!(!hits(&config, &q("u=Normal&id=42")));
    assert!(!hits(&config, &q("u=normal&id=4x")));
    assert!(!hits(&config, &q("u=normal")));
    assert!(hits(&config, &q("debug")));
    assert!(hits(&config, &q("x=1&debug=true")));
    assert!(!hits(&config, &Req::mesh("svc", "/")));
}

#[test]
fn source_labels_namespace_port_and_gateways() {
    let config = parse(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: default}
spec:
  hosts: [svc]
  gateways: [mesh, gw]
  http:
  - name: from-v2
    match:
    - name: m
      sourceLabels: {app: reviews, version: v2}
      sourceNamespace: default
    route: [{destination: {host: svc, subset: a}}]
  - match:
    - port: 9080
      gateways: [mesh]
    route: [{destination: {host: svc, subset: b}}]
  - match:
    - gateways: [default/gw]
    route: [{destination: {host: svc, subset: c}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc}
spec:
  host: svc
  subsets: [{name: a}, {name: b}, {name: c}]
"#,
    );
    let subset = |req: &Req| dest(&config, req);
    let v2 = [("app", "reviews"), ("version", "v2"), ("x", "y")];
    assert_eq!(
        subset(&Req::mesh("svc:9080", "/").from("default", &v2)),
        Some("svc/a".to_owned())
    );
    assert_eq!(
        subset(&Req::mesh("svc:9080", "/").from("default", &[("app", "reviews")])),
        Some("svc/b".to_owned())
    );
    assert_eq!(
        subset(&Req::mesh("svc.default:9080", "/").from("other", &v2)),
        Some("svc/b".to_owned())
    );
    assert_eq!(subset(&Req::mesh("svc:8080", "/")), None);
    assert_eq!(subset(&Req::mesh("svc", "/")), None);
    assert_eq!(
        subset(&Req::gateway("default/gw", "svc:9080", "/")),
        Some("svc/c".to_owned())
    );
}

#[test]
fn most_specific_host_wins_then_name_order() {
    let vs = |name: &str, ns: &str, host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [\"{host}\"]\n  http: [{{route: [{{destination: {{host: x}}}}]}}]\n"
        )
    };
    let config = parse(&join(&[
        &vs("any", "default", "*"),
        &vs("example", "default", "*.example.com"),
        &vs("deep", "default", "*.api.example.com"),
        &vs("exact", "default", "www.example.com"),
        &vs("b-reviews", "default", "reviews"),
        &vs("a-reviews", "default", "reviews.default.svc.cluster.local"),
        &vs("wild-ns", "default", "*.default.svc.cluster.local"),
    ]));
    let name = |host: &str| route(&config, &Req::mesh(host, "/")).map(|(n, _)| n);
    assert_eq!(name("www.example.com"), Some("exact".to_owned()));
    assert_eq!(name("WWW.example.com:80"), Some("exact".to_owned()));
    assert_eq!(name("foo.example.com"), Some("example".to_owned()));
    assert_eq!(name("v1.api.example.com"), Some("deep".to_owned()));
    assert_eq!(name("example.com"), Some("any".to_owned()));
    assert_eq!(name("reviews:9080"), Some("a-reviews".to_owned()));
    assert_eq!(name("ratings:9080"), Some("wild-ns".to_owned()));
    assert_eq!(name("ratings.other"), Some("any".to_owned()));
}

#[test]
fn headers_rewrite_and_policy_parse() {
    let config = parse(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: [svc]
  exportTo: ["."]
  http:
  - rewrite: {uri: /v2/, authority: svc-v2}
    headers:
      request:
        set: {X-Version: v2}
        add: {x-trace: "1"}
        remove: [X-Debug]
      response:
        remove: [server]
    fault:
      delay: {fixedDelay: 1m30s, percent: 10}
    route:
    - destination: {host: svc}
      weight: 90
      headers: {response: {set: {x-dest: a}}}
    - destination: {host: other.ns.svc.cluster.local, port: {number: 8080}}
      weight: 10
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc}
spec:
  host: svc
  exportTo: ["*"]
  trafficPolicy:
    loadBalancer: {simple: LEAST_CONN}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms, tcpKeepalive: {time: 7200s}}
      http: {http1MaxPendingRequests: 1, http2MaxRequests: 10, maxRequestsPerConnection: 1, maxRetries: 3, idleTimeout: 1h, h2UpgradePolicy: UPGRADE}
    outlierDetection: {consecutive5xxErrors: 7, consecutiveGatewayErrors: 2, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 100, minHealthPercent: 0}
    tls: {mode: SIMPLE, sni: svc.example.com, caCertificates: /etc/ca.pem}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
"#,
    );
    let rule = &config.virtual_services[0].http[0];
    assert_eq!(
        rule.rewrite,
        Some(Rewrite {
            uri: Some("/v2/".into()),
            authority: Some("svc-v2".into())
        })
    );
    let headers = rule.headers.clone().unwrap_or_default();
    assert_eq!(
        headers.request.set.get("x-version").map(String::as_str),
        Some("v2")
    );
    assert_eq!(
        headers.request.add.get("x-trace").map(String::as_str),
        Some("1")
    );
    assert_eq!(headers.request.remove, ["x-debug"]);
    assert_eq!(headers.response.remove, ["server"]);
    let delay = rule.fault.as_ref().and_then(|f| f.delay.clone());
    assert_eq!(
        delay.as_ref().map(|d| d.fixed_delay),
        Some(Duration::from_secs(90))
    );
    assert_eq!(delay.map(|d| d.percentage.value()), Some(10.0));
    assert_eq!(rule.route[1].destination.port, Some(8080));
    assert_eq!(rule.weights(), [90, 10]);

    let dr = &config.destination_rules[0];
    let policy = dr.traffic_policy.clone().unwrap_or_default();
    assert_eq!(policy.load_balancer, Some(LoadBalancer::LeastRequest));
    let pool = policy.connection_pool.unwrap_or_default();
    assert_eq!(
        pool.tcp,
        Some(TcpPool {
            max_connections: Some(100),
            connect_timeout: Some(Duration::from_millis(30))
        })
    );
    assert_eq!(
        pool.http.and_then(|h| h.idle_timeout),
        Some(Duration::from_secs(3600))
    );
    let outlier = policy.outlier_detection.unwrap_or_default();
    assert_eq!(outlier.consecutive_5xx_errors, Some(7));
    assert_eq!(outlier.base_ejection_time, Some(Duration::from_secs(900)));
    assert_eq!(
        policy.tls,
        Some(ClientTls {
            mode: TlsMode::Simple,
            sni: Some("svc.example.com".into())
        })
    );
    assert_eq!(
        dr.subsets[0]
            .traffic_policy
            .as_ref()
            .and_then(|p| p.load_balancer),
        Some(LoadBalancer::RoundRobin)
    );
}

// ---------------------------------------------------------------- durations

#[test]
fn durations() {
    for (text, expected) in [
        ("0.5s", Duration::from_millis(500)),
        ("7s", Duration::from_secs(7)),
        ("100ms", Duration::from_millis(100)),
        ("1m", Duration::from_secs(60)),
        ("3m", Duration::from_secs(180)),
        ("1h", Duration::from_secs(3600)),
        ("1.5s", Duration::from_millis(1500)),
        ("1m30s", Duration::from_secs(90)),
        ("1h2m3s", Duration::from_secs(3723)),
        ("250us", Duration::from_micros(250)),
        ("0s", Duration::ZERO),
        (".25s", Duration::from_millis(250)),
    ] {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
        assert_eq!(
            parse_duration(&format_duration(expected)),
            Ok(expected),
            "{text}"
        );
    }
    for bad in ["", "7", "s", "-1s", "1.2.3s", "1x", "1 s", "ms", "1sm", "."] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
    assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
    assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    assert_eq!(format_duration(Duration::from_secs(7)), "7s");
}

// ---------------------------------------------------------------- errors and warnings

const VS_HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec:\n  hosts: [svc]\n  http:\n";

fn vs_err(http: &str) -> ConfigError {
    parse_err(&format!("{VS_HEAD}{http}"))
}

#[test]
fn unknown_fields_are_errors_with_their_line() {
    let e = vs_err(
        "  - match:\n    - uri: {exact: /}\n      headerz: {}\n    route: [{destination: {host: svc}}]\n",
    );
    assert_eq!(e.line, Some(9), "{e:?}");
    assert!(e.reason.contains("headerz"), "{e:?}");
    assert!(e.to_string().starts_with("net.yaml:9:"), "{e}");

    let e = vs_err("  - route:\n    - destination: {host: svc, subst: v1}\n");
    assert_eq!(e.line, Some(8), "{e:?}");
    assert!(e.reason.contains("subst"), "{e:?}");

    let e =
        vs_err("  - match:\n    - uri: {suffix: /x}\n    route: [{destination: {host: svc}}]\n");
    assert_eq!(e.line, Some(8), "{e:?}");
    assert!(e.reason.contains("suffix"), "{e:?}");

    let e = parse_err(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: svc\n  trafficPolicy:\n    loadBalancer:\n      simpel: RANDOM\n",
    );
    assert_eq!(e.line, Some(8), "{e:?}");
    assert!(e.reason.contains("simpel"), "{e:?}");

    let e = parse_err(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  selectr: {istio: ingressgateway}\n",
    );
    assert_eq!(e.line, Some(5), "{e:?}");
    assert!(e.reason.contains("selectr"), "{e:?}");

    let e = parse_err(&format!(
        "{VS_HEAD}  - route: [{{destination: {{host: svc}}}}]\n  tpc: []\n"
    ));
    assert_eq!(e.line, Some(8), "{e:?}");
    assert!(e.reason.contains("tpc"), "{e:?}");
}

#[test]
fn unsupported_fields_are_errors_naming_them() {
    for (field, value) in [
        ("redirect", "{uri: /x}"),
        ("directResponse", "{status: 503}"),
        ("delegate", "{name: d}"),
        ("mirror", "{host: m}"),
        ("mirrorPercentage", "{value: 5}"),
        ("corsPolicy", "{allowOrigins: [{exact: x}]}"),
    ] {
        let e = vs_err(&format!(
            "  - route: [{{destination: {{host: svc}}}}]\n    {field}: {value}\n"
        ));
        assert_eq!(e.line, Some(8), "{field}: {e:?}");
        assert!(
            e.reason.contains(field) && e.reason.contains("not supported"),
            "{field}: {e:?}"
        );
    }
    let e = vs_err(
        "  - route: [{destination: {host: svc}}]\n    fault: {abort: {grpcStatus: UNAVAILABLE}}\n",
    );
    assert!(e.reason.contains("grpcStatus"), "{e:?}");
    let e = vs_err(
        "  - route: [{destination: {host: svc}}]\n    rewrite: {uriRegexRewrite: {match: a, rewrite: b}}\n",
    );
    assert!(e.reason.contains("uriRegexRewrite"), "{e:?}");

    let e = parse_err(&format!(
        "{VS_HEAD}  - route: [{{destination: {{host: svc}}}}]\n  tcp:\n  - route: [{{destination: {{host: svc}}}}]\n"
    ));
    assert_eq!(e.line, Some(9), "{e:?}");
    assert!(
        e.reason.contains("tcp") && e.reason.contains("not supported"),
        "{e:?}"
    );
    let e = parse_err(&format!(
        "{VS_HEAD}  - route: [{{destination: {{host: svc}}}}]\n  tls: [{{}}]\n"
    ));
    assert!(e.reason.contains("tls"), "{e:?}");

    let e = parse_err(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: svc\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n",
    );
    assert_eq!(e.line, Some(8), "{e:?}");
    assert!(e.reason.contains("consistentHash"), "{e:?}");
    let e = parse_err(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: svc\n  workloadSelector: {matchLabels: {app: x}}\n",
    );
    assert!(e.reason.contains("workloadSelector"), "{e:?}");

    let e = parse_err(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['*']\n    tls: {mode: SIMPLE, credentialName: c}\n",
    );
    assert_eq!(e.line, Some(8), "{e:?}");
    assert!(e.reason.contains("tls"), "{e:?}");
    let e = parse_err(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers:\n  - port: {number: 31400, name: tcp, protocol: TCP}\n    hosts: ['*']\n",
    );
    assert_eq!(e.line, Some(6), "{e:?}");
    assert!(e.reason.contains("TCP"), "{e:?}");
}

#[test]
fn bad_values_are_errors_with_their_place() {
    let e = vs_err("  - route: [{destination: {host: svc}}]\n    timeout: 10\n");
    assert_eq!(e.line, Some(8), "{e:?}");
    let e = vs_err("  - route: [{destination: {host: svc}}]\n    timeout: 10 seconds\n");
    assert_eq!((e.line, e.column), (Some(8), Some(14)), "{e:?}");
    assert!(e.reason.contains("invalid duration"), "{e:?}");
    let e = vs_err(
        "  - route: [{destination: {host: svc}}]\n    retries: {attempts: 2, perTryTimeout: 2x}\n",
    );
    assert_eq!(e.line, Some(8), "{e:?}");
    assert!(e.reason.contains("2x"), "{e:?}");

    let e = vs_err(
        "  - match:\n    - uri: {regex: '/api/(v1'}\n    route: [{destination: {host: svc}}]\n",
    );
    assert_eq!(e.line, Some(8), "{e:?}");
    assert!(e.reason.contains("invalid regex"), "{e:?}");
    let e = vs_err(
        "  - match:\n    - headers: {x-a: {regex: '['}}\n    route: [{destination: {host: svc}}]\n",
    );
    assert_eq!(e.line, Some(8), "{e:?}");
    let e = vs_err(
        "  - match:\n    - uri: {exact: /, prefix: /}\n    route: [{destination: {host: svc}}]\n",
    );
    assert!(e.reason.contains("only one"), "{e:?}");
    let e = vs_err("  - match:\n    - uri: {}\n    route: [{destination: {host: svc}}]\n");
    assert!(e.reason.contains("exact, prefix or regex"), "{e:?}");
    let e = vs_err(
        "  - match:\n    - headers: {End-User: {exact: jason}}\n    route: [{destination: {host: svc}}]\n",
    );
    assert!(e.reason.contains("lowercase"), "{e:?}");

    let e = vs_err(
        "  - route:\n    - destination: {host: svc}\n      weight: -10\n    - destination: {host: svc}\n      weight: 110\n",
    );
    assert_eq!(e.line, Some(9), "{e:?}");
    assert!(e.reason.contains("negative"), "{e:?}");
    // Beyond u32, and beyond i64 too.
    for weight in ["5000000000", "99999999999999999999"] {
        let e = vs_err(&format!(
            "  - route:\n    - destination: {{host: svc}}\n      weight: {weight}\n    - destination: {{host: svc}}\n      weight: 1\n"
        ));
        assert_eq!(e.line, Some(9), "{e:?}");
        assert_eq!(
            e.reason,
            format!("route weight {weight} is above the largest weight 4294967295")
        );
    }
    let e = vs_err(
        "  - route:\n    - destination: {host: svc}\n      weight: 0\n    - destination: {host: svc}\n",
    );
    assert!(e.reason.contains("add up to 0"), "{e:?}");
    let e = vs_err("  - match: [{uri: {exact: /}}]\n");
    assert!(e.reason.contains("`route`"), "{e:?}");

    let e = vs_err(
        "  - route: [{destination: {host: svc}}]\n    fault: {delay: {fixedDelay: 1s, percentage: {value: 100.5}}}\n",
    );
    assert_eq!(e.line, Some(8), "{e:?}");
    assert!(e.reason.contains("100.5"), "{e:?}");
    let e = vs_err(
        "  - route: [{destination: {host: svc}}]\n    fault: {abort: {httpStatus: 500, percent: -1}}\n",
    );
    assert!(e.reason.contains("0..=100"), "{e:?}");
    let e =
        vs_err("  - route: [{destination: {host: svc}}]\n    fault: {abort: {httpStatus: 42}}\n");
    assert!(e.reason.contains("httpStatus"), "{e:?}");
    let e = vs_err("  - route: [{destination: {host: svc}}]\n    fault: {delay: {percent: 5}}\n");
    assert!(e.reason.contains("fixedDelay"), "{e:?}");

    let e = parse_err(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec:\n  http: []\n",
    );
    assert!(e.reason.contains("hosts"), "{e:?}");
    let e = parse_err(
        "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: vs}\nspec: {hosts: [a]}\n",
    );
    assert_eq!(e.line, Some(1), "{e:?}");
    assert!(e.reason.contains("apiVersion"), "{e:?}");
    let e = parse_err(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  subsets: [{name: v1}]\n",
    );
    assert!(e.reason.contains("host"), "{e:?}");
    let e = parse_err(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: x\n  subsets: [{name: v1}, {name: v1}]\n",
    );
    assert!(e.reason.contains("twice"), "{e:?}");
    let e = parse_err(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: x\n  trafficPolicy: {loadBalancer: {simple: FASTEST}}\n",
    );
    assert!(e.reason.contains("FASTEST"), "{e:?}");
}

#[test]
fn missing_subsets_warn() {
    let loaded = load(&join(&[
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets: [{name: v1, labels: {version: v1}}]\n",
        REVIEWS_50_V3,
    ]));
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let w = &loaded.warnings[0];
    assert!(w.starts_with("net.yaml:"), "{w}");
    assert!(w.contains("VirtualService default/reviews"), "{w}");
    assert!(w.contains("subset v3"), "{w}");
    assert!(w.contains("503"), "{w}");

    // No destination rule at all: every subset warns; a destination without subset does not.
    let loaded = load(&all_v1());
    assert_eq!(loaded.warnings.len(), 4, "{:?}", loaded.warnings);
    let loaded = load(BOOKINFO_GATEWAY);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn port_level_settings_are_an_error() {
    let e = parse_file(
        "net.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: svc\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 80}\n      loadBalancer: {simple: RANDOM}\n",
    )
    .unwrap_err();
    assert_eq!(
        e.reason,
        "trafficPolicy: field portLevelSettings is not supported"
    );
    assert_eq!(e.line, Some(8), "{e:?}");
}

#[test]
fn duplicates_later_wins_and_merge() {
    let loaded = load(&join(&[
        REVIEWS_TEST_V2,
        REVIEWS_50_V3,
        DESTINATION_RULE_ALL,
    ]));
    assert_eq!(loaded.config.virtual_services.len(), 1);
    assert_eq!(loaded.config.virtual_services[0].http.len(), 1);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("defined more than once"));

    let mut config = parse(&join(&[DESTINATION_RULE_ALL, REVIEWS_TEST_V2]));
    config.merge(load(&join(&[BOOKINFO_GATEWAY, REVIEWS_50_V3])).config);
    assert_eq!(config.virtual_services.len(), 2);
    assert_eq!(config.gateways.len(), 1);
    assert_eq!(config.destination_rules.len(), 4);
    assert_eq!(
        dest(
            &config,
            &Req::mesh("reviews", "/").header("end-user", "jason")
        ),
        Some("reviews/v1".to_owned())
    );
}

#[test]
fn load_dir_checks_subsets_across_files() {
    let dir = std::env::temp_dir().join(format!("meshrouting-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("{e}");
    }
    let write = |name: &str, text: &str| {
        if let Err(e) = std::fs::write(dir.join(name), text) {
            panic!("{e}");
        }
    };
    write("a-routes.yaml", REVIEWS_50_V3);
    write("b-rules.yaml", DESTINATION_RULE_ALL);
    let loaded = load_dir(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => panic!("{e}"),
    };
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.config.virtual_services.len(), 1);
}

#[test]
fn json_round_trip_keeps_patterns_not_regexes() {
    let config = parse(&join(&[
        BOOKINFO_GATEWAY,
        DESTINATION_RULE_ALL,
        RATINGS_TEST_DELAY,
        REVIEWS_TIMEOUT_RETRIES,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: rx}\nspec:\n  hosts: [details]\n  http:\n  - match: [{uri: {regex: '/d/[0-9]+'}, headers: {x-a: {}}, ignoreUriCase: true}]\n    fault: {abort: {httpStatus: 503, percent: 25}}\n    route: [{destination: {host: details, subset: v1}, weight: 100}]\n",
    ]));
    let json = match serde_json::to_string(&config) {
        Ok(j) => j,
        Err(e) => panic!("{e}"),
    };
    assert!(json.contains(r#""regex":"/d/[0-9]+""#), "{json}");
    assert!(json.contains(r#""timeout":"500ms""#), "{json}");
    assert!(json.contains(r#""fixedDelay":"7s""#), "{json}");
    assert!(json.contains(r#""x-a":"present""#), "{json}");
    let back: MeshConfig = match serde_json::from_str(&json) {
        Ok(c) => c,
        Err(e) => panic!("{e}: {json}"),
    };
    assert_eq!(back, config);
    let req = Req::mesh("details", "/d/12").header("x-a", "1");
    assert_eq!(route(&back, &req), Some(("rx".to_owned(), 0)));
    // ignoreUriCase does not apply to regexes (as Envoy's case_sensitive).
    let req = Req::mesh("details", "/D/12").header("x-a", "1");
    assert_eq!(route(&back, &req), None);

    // A security-only config serializes as before.
    let empty = match serde_json::to_string(&MeshConfig::default()) {
        Ok(j) => j,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        empty,
        r#"{"peerAuthentications":[],"authorizationPolicies":[]}"#
    );

    let bad_regex = r#"{"virtualServices":[{"metadata":{"name":"x","namespace":"d"},"hosts":["a"],"http":[{"match":[{"uri":{"regex":"("}}],"route":[{"destination":{"host":"a"}}]}]}]}"#;
    assert!(serde_json::from_str::<MeshConfig>(bad_regex).is_err());
    let bad_percent = r#"{"virtualServices":[{"metadata":{"name":"x","namespace":"d"},"hosts":["a"],"http":[{"fault":{"abort":{"httpStatus":500,"percentage":101.0}},"route":[{"destination":{"host":"a"}}]}]}]}"#;
    assert!(serde_json::from_str::<MeshConfig>(bad_percent).is_err());
    let bad_duration = r#"{"virtualServices":[{"metadata":{"name":"x","namespace":"d"},"hosts":["a"],"http":[{"timeout":"soon","route":[{"destination":{"host":"a"}}]}]}]}"#;
    assert!(serde_json::from_str::<MeshConfig>(bad_duration).is_err());
}

#[test]
fn regex_pattern_compiles_lazily_after_clone() {
    let pattern = match RegexPattern::new("a+b") {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let copy = pattern.clone();
    assert!(copy.is_match("aaab"));
    assert!(!copy.is_match("aaabc"));
    assert!(!copy.is_match("xab"));
    assert_eq!(copy.as_str(), "a+b");
    assert_eq!(copy, pattern);
    assert!(RegexPattern::new("a|").is_ok());
    assert!(RegexPattern::new("(?P<x").is_err());
    assert!(StringMatch::Regex(copy).matches("ab"));
}
