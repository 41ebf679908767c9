//! The validated traffic-management model: `VirtualService`, `DestinationRule` and
//! `Gateway` as the router needs them.
//!
//! Like the security model, these types hold only what the mesh implements and round-trip
//! through JSON. Durations are serialized in Istio's form (`"500ms"`, `"7s"`), regular
//! expressions as their pattern: the compiled form is built on first use and never shipped.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::meta::{Metadata, duration, opt_duration};

/// A `VirtualService`: how requests to some hosts are routed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualService {
    /// Name and namespace.
    pub metadata: Metadata,
    /// `spec.hosts` as written: `"*"`, `"*.example.com"`, a short name (`"reviews"`,
    /// meaning `reviews.<namespace>.svc.cluster.local`) or a full name.
    pub hosts: Vec<String>,
    /// `spec.gateways` as written: `"mesh"` (sidecars), `"ns/name"` or `"name"` (a Gateway
    /// in this namespace). Empty means `["mesh"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// `spec.http`: the rules, in order; the first matching one applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
}

/// One `http` rule of a virtual service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// `name`, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `match`: the rule applies when any entry matches; empty matches every request.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatch>,
    /// `route`: the weighted destinations (never empty once loaded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
    /// `rewrite`: the path prefix and/or authority to send instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// `timeout`: for the whole request, retries included. `None`: no timeout.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// `retries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// `fault`: delays and aborts to inject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// `headers`: header changes for every destination of the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// One `match` entry: every condition set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatch {
    /// `name`, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The path (without the query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// The HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// The authority (`host` as sent, port included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// The scheme (`x-forwarded-proto`, else `http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    /// Headers that must match, by lowercase name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Query parameters that must match (percent-decoded; the first occurrence counts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Compare `uri` exact and prefix matches case-insensitively.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ignore_uri_case: bool,
    /// Headers none of which may match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Labels the calling workload must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// The namespace the caller must be in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// Where the entry applies (overrides the virtual service's `gateways`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// The port the request was sent to (taken from the authority).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Istio's `StringMatch`. Serialized as Istio writes it: `{"exact": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// The whole value, case-sensitively.
    Exact(String),
    /// A plain string prefix (`/static` matches `/staticfoo`).
    Prefix(String),
    /// An RE2-style regular expression that must match the whole value.
    Regex(RegexPattern),
    /// Only for headers (`{}` in YAML): the header is present, whatever its value.
    Present,
}

impl StringMatch {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(exact) => value == exact,
            StringMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StringMatch::Regex(regex) => regex.is_match(value),
            StringMatch::Present => true,
        }
    }
}

/// A regular expression that must match a whole value, as Envoy's `safe_regex`.
///
/// Only the pattern is kept in the serialized form; it is checked when built (from YAML or
/// JSON) and compiled once, on first use.
#[derive(Clone)]
pub struct RegexPattern {
    pattern: String,
    compiled: OnceLock<Option<regex::Regex>>,
}

impl RegexPattern {
    /// Checks that `pattern` compiles.
    pub fn new(pattern: impl Into<String>) -> Result<Self, regex::Error> {
        let pattern = pattern.into();
        let compiled = full_match(&pattern)?;
        Ok(RegexPattern {
            pattern,
            compiled: OnceLock::from(Some(compiled)),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        // Checked when built, so this compiles; a pattern that did not would match nothing.
        self.compiled
            .get_or_init(|| full_match(&self.pattern).ok())
            .as_ref()
            .is_some_and(|regex| regex.is_match(value))
    }
}

fn full_match(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

impl fmt::Debug for RegexPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RegexPattern").field(&self.pattern).finish()
    }
}

impl PartialEq for RegexPattern {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for RegexPattern {}

impl Serialize for RegexPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.pattern)
    }
}

impl<'de> Deserialize<'de> for RegexPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pattern = String::deserialize(d)?;
        RegexPattern::new(pattern).map_err(serde::de::Error::custom)
    }
}

/// One weighted destination of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Where to send the request.
    pub destination: Destination,
    /// `weight` as written; see [`HttpRoute::total_weight`] for the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Header changes for this destination only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// `destination`: a service, optionally one subset of it and one port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// The service, short (`reviews`, in the virtual service's namespace) or full.
    pub host: String,
    /// A subset defined by a `DestinationRule` of the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// `port.number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// `rewrite`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched `uri` prefix (or the whole path for other matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replaces the authority (`host` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// `retries`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Retries allowed (0: none).
    pub attempts: u32,
    /// Timeout of each attempt.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    /// Envoy retry conditions (`5xx`, `gateway-error`, `connect-failure`, a status code...),
    /// from the comma-separated `retryOn`; empty means Istio's default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<String>,
}

/// `fault`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// Delay some requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer some requests with an error status without forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// `fault.delay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// `fixedDelay`.
    #[serde(with = "duration")]
    pub fixed_delay: Duration,
    /// Share of requests delayed (`percentage.value`, or the legacy integer `percent`;
    /// 100 when neither is set).
    pub percentage: Percent,
}

/// `fault.abort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// The status to answer with.
    pub http_status: u16,
    /// Share of requests aborted (100 when not set).
    pub percentage: Percent,
}

/// A percentage in `0.0..=100.0`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Percent(f64);

impl Percent {
    /// 100%.
    pub const ALL: Percent = Percent(100.0);

    /// `value` if it is in `0.0..=100.0`.
    pub fn new(value: f64) -> Option<Percent> {
        (0.0..=100.0).contains(&value).then_some(Percent(value))
    }

    /// The value, in `0.0..=100.0`.
    pub fn value(self) -> f64 {
        self.0
    }

    /// Whether a request drawn with `roll` (uniform in `0.0..100.0`) is affected.
    pub fn hits(self, roll: f64) -> bool {
        roll < self.0
    }
}

// Never NaN, so equality is total.
impl Eq for Percent {}

impl TryFrom<f64> for Percent {
    type Error = String;

    fn try_from(value: f64) -> Result<Self, String> {
        Percent::new(value).ok_or_else(|| format!("percentage {value} is not in 0..=100"))
    }
}

impl From<Percent> for f64 {
    fn from(p: Percent) -> f64 {
        p.0
    }
}

/// `headers`: changes to the request sent and the response returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Changes to the request.
    #[serde(default, skip_serializing_if = "HeaderOperations::is_empty")]
    pub request: HeaderOperations,
    /// Changes to the response.
    #[serde(default, skip_serializing_if = "HeaderOperations::is_empty")]
    pub response: HeaderOperations,
}

/// `set`, `add` and `remove`, header names lowercased.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Replace (or add) these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOperations {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A `DestinationRule`: subsets and traffic policy of one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRule {
    /// Name and namespace.
    pub metadata: Metadata,
    /// `spec.host` as written (short names are in the rule's namespace; may be `*.suffix`).
    pub host: String,
    /// `spec.subsets`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// `spec.trafficPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

impl DestinationRule {
    /// The subset named `name`.
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }
}

/// A named group of a host's endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// `name`.
    pub name: String,
    /// Endpoint labels that select the subset.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Overrides the rule's policy for this subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// `trafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// `loadBalancer.simple`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// `connectionPool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// `outlierDetection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// `tls`: how the client side talks to the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
}

/// `loadBalancer.simple`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancer {
    /// Round robin.
    RoundRobin,
    /// Random.
    Random,
    /// Fewest outstanding requests (`LEAST_CONN` too).
    LeastRequest,
    /// To the address the caller asked for.
    Passthrough,
}

/// `connectionPool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    /// `tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpPool>,
    /// `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpPool>,
}

/// `connectionPool.tcp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpPool {
    /// `maxConnections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// `connectTimeout`.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
}

/// `connectionPool.http`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPool {
    /// `http1MaxPendingRequests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<u32>,
    /// `http2MaxRequests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<u32>,
    /// `maxRequestsPerConnection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// `maxRetries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// `idleTimeout`.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
}

/// `outlierDetection`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// `consecutive5xxErrors`.
    #[serde(
        default,
        rename = "consecutive5xxErrors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<u32>,
    /// `consecutiveGatewayErrors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// `interval`.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    /// `baseEjectionTime`.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub base_ejection_time: Option<Duration>,
    /// `maxEjectionPercent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    /// `minHealthPercent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<u32>,
}

/// `trafficPolicy.tls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTls {
    /// `mode`.
    pub mode: TlsMode,
    /// `sni`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

/// `trafficPolicy.tls.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Plaintext.
    #[default]
    Disable,
    /// TLS to the host.
    Simple,
    /// Mutual TLS with given certificates.
    Mutual,
    /// Mutual TLS with the mesh's certificates.
    IstioMutual,
}

/// A `Gateway`: which ports and hosts a gateway workload serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// Name and namespace.
    pub metadata: Metadata,
    /// Labels of the gateway workloads it configures (empty: all).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// `servers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
}

/// One plain-HTTP server of a gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// `port`.
    pub port: ServerPort,
    /// `hosts` as written (`"*"`, `"bookinfo.example.com"`, `"ns/host"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `servers[].port`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerPort {
    /// `number`.
    pub number: u16,
    /// `name`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `protocol`, uppercased (`HTTP`, `HTTP2`, `GRPC`).
    pub protocol: String,
}
