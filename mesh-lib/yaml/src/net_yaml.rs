//! The YAML side of `networking.istio.io`: `VirtualService`, `DestinationRule` and
//! `Gateway` as written, checked and turned into the [`mesh_config`] types.
//!
//! As for security resources, every struct denies unknown fields, and Istio fields that the
//! mesh does not implement are declared so that setting one is an error naming it, except a
//! few that only tune performance or visibility, which are accepted and ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::{Location, Spanned};

use super::ConfigError;
use super::limits;
use crate::cx::{Cx, Origins};
use mesh_config::{
    ClientTls, ConnectionPool, Destination, DestinationRule, Fault, FaultAbort, FaultDelay,
    Gateway, HeaderOperations, Headers, HttpMatch, HttpPool, HttpRoute, LoadBalancer,
    OutlierDetection, Percent, RegexPattern, Retries, Rewrite, RouteDestination, Server,
    ServerPort, StringMatch, Subset, TcpPool, TlsMode, TrafficPolicy, VirtualService,
    parse_duration,
};
use mesh_config::{MeshConfig, Metadata};

/// A field the mesh does not implement: an error when present.
type Rejected = Option<Spanned<IgnoredAny>>;
/// A field accepted and ignored.
type Ignored = Option<IgnoredAny>;
/// A duration as written.
type RawDuration = Option<Spanned<String>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawVsSpec {
    hosts: Option<Vec<String>>,
    gateways: Option<Vec<String>>,
    http: Option<Vec<Spanned<RawHttpRoute>>>,
    tcp: Option<Spanned<Vec<IgnoredAny>>>,
    tls: Option<Spanned<Vec<IgnoredAny>>>,
    #[allow(dead_code)] // accepted and ignored
    export_to: Ignored,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHttpRoute {
    name: Option<String>,
    #[serde(rename = "match")]
    matches: Option<Vec<Spanned<RawMatch>>>,
    route: Option<Vec<Spanned<RawRouteDestination>>>,
    redirect: Rejected,
    direct_response: Rejected,
    delegate: Rejected,
    rewrite: Option<Spanned<RawRewrite>>,
    timeout: RawDuration,
    retries: Option<Spanned<RawRetries>>,
    fault: Option<Spanned<RawFault>>,
    mirror: Rejected,
    mirrors: Rejected,
    mirror_percentage: Rejected,
    mirror_percent: Rejected,
    cors_policy: Rejected,
    headers: Option<RawHeaders>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMatch {
    name: Option<String>,
    uri: Option<Spanned<RawStringMatch>>,
    method: Option<Spanned<RawStringMatch>>,
    authority: Option<Spanned<RawStringMatch>>,
    scheme: Option<Spanned<RawStringMatch>>,
    headers: Option<BTreeMap<String, Spanned<RawStringMatch>>>,
    query_params: Option<BTreeMap<String, Spanned<RawStringMatch>>>,
    ignore_uri_case: Option<bool>,
    without_headers: Option<BTreeMap<String, Spanned<RawStringMatch>>>,
    source_labels: Option<BTreeMap<String, String>>,
    source_namespace: Option<String>,
    gateways: Option<Vec<String>>,
    port: Option<u16>,
    #[allow(dead_code)] // accepted and ignored
    stat_prefix: Ignored,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStringMatch {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteDestination {
    destination: Option<Spanned<RawDestination>>,
    // Wider than the u32 it becomes, so that a weight too large says so.
    weight: Option<Spanned<i128>>,
    headers: Option<RawHeaders>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    host: Option<String>,
    subset: Option<String>,
    port: Option<RawPortSelector>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortSelector {
    number: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRewrite {
    uri: Option<String>,
    authority: Option<String>,
    uri_regex_rewrite: Rejected,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRetries {
    attempts: Option<u32>,
    per_try_timeout: RawDuration,
    retry_on: Option<String>,
    #[allow(dead_code)] // accepted and ignored
    retry_remote_localities: Ignored,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    delay: Option<Spanned<RawDelay>>,
    abort: Option<Spanned<RawAbort>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDelay {
    fixed_delay: RawDuration,
    exponential_delay: Rejected,
    percentage: Option<Spanned<RawPercentage>>,
    percent: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAbort {
    http_status: Option<Spanned<i64>>,
    grpc_status: Rejected,
    http2_error: Rejected,
    percentage: Option<Spanned<RawPercentage>>,
    percent: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPercentage {
    value: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    request: Option<RawHeaderOps>,
    response: Option<RawHeaderOps>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderOps {
    set: Option<Spanned<BTreeMap<String, String>>>,
    add: Option<Spanned<BTreeMap<String, String>>>,
    remove: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawDrSpec {
    host: Option<String>,
    subsets: Option<Vec<Spanned<RawSubset>>>,
    traffic_policy: Option<Spanned<RawTrafficPolicy>>,
    #[allow(dead_code)] // accepted and ignored
    export_to: Ignored,
    workload_selector: Rejected,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSubset {
    name: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    traffic_policy: Option<Spanned<RawTrafficPolicy>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTrafficPolicy {
    load_balancer: Option<RawLoadBalancer>,
    connection_pool: Option<RawConnectionPool>,
    outlier_detection: Option<RawOutlier>,
    tls: Option<RawTls>,
    port_level_settings: Option<Spanned<Vec<IgnoredAny>>>,
    tunnel: Rejected,
    proxy_protocol: Rejected,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLoadBalancer {
    simple: Option<RawSimpleLb>,
    consistent_hash: Rejected,
    #[allow(dead_code)] // accepted and ignored
    locality_lb_setting: Ignored,
    #[allow(dead_code)] // accepted and ignored
    warmup_duration_secs: Ignored,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum RawSimpleLb {
    Unspecified,
    RoundRobin,
    Random,
    LeastRequest,
    LeastConn,
    Passthrough,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnectionPool {
    tcp: Option<RawTcpPool>,
    http: Option<RawHttpPool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTcpPool {
    max_connections: Option<u32>,
    connect_timeout: RawDuration,
    #[allow(dead_code)] // accepted and ignored
    tcp_keepalive: Ignored,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHttpPool {
    http1_max_pending_requests: Option<u32>,
    http2_max_requests: Option<u32>,
    max_requests_per_connection: Option<u32>,
    max_retries: Option<u32>,
    idle_timeout: RawDuration,
    #[allow(dead_code)] // accepted and ignored
    h2_upgrade_policy: Ignored,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawOutlier {
    #[serde(rename = "consecutive5xxErrors")]
    consecutive_5xx_errors: Option<u32>,
    consecutive_gateway_errors: Option<u32>,
    interval: RawDuration,
    base_ejection_time: RawDuration,
    max_ejection_percent: Option<u32>,
    min_health_percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTls {
    mode: Option<RawTlsMode>,
    sni: Option<String>,
    #[allow(dead_code)] // accepted and ignored
    client_certificate: Ignored,
    #[allow(dead_code)] // accepted and ignored
    private_key: Ignored,
    #[allow(dead_code)] // accepted and ignored
    ca_certificates: Ignored,
    #[allow(dead_code)] // accepted and ignored
    ca_crl: Ignored,
    #[allow(dead_code)] // accepted and ignored
    credential_name: Ignored,
    #[allow(dead_code)] // accepted and ignored
    subject_alt_names: Ignored,
    #[allow(dead_code)] // accepted and ignored
    insecure_skip_verify: Ignored,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum RawTlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawGatewaySpec {
    selector: Option<BTreeMap<String, String>>,
    servers: Option<Vec<Spanned<RawServer>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServer {
    port: Option<Spanned<RawServerPort>>,
    hosts: Option<Vec<String>>,
    name: Option<String>,
    tls: Rejected,
    bind: Rejected,
    default_endpoint: Rejected,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServerPort {
    number: Option<u16>,
    name: Option<String>,
    protocol: Option<Spanned<String>>,
    #[allow(dead_code)] // accepted and ignored
    target_port: Ignored,
}

/// Protocols a gateway server may use: plain HTTP only.
const GATEWAY_PROTOCOLS: [&str; 3] = ["HTTP", "HTTP2", "GRPC"];

impl Cx<'_> {
    fn rejected(&self, owner: &str, fields: &[(&str, &Rejected)]) -> Result<(), ConfigError> {
        for (name, field) in fields {
            if let Some(field) = field {
                return Err(self.err(
                    field.referenced,
                    format!("{owner}: field {name} is not supported"),
                ));
            }
        }
        Ok(())
    }

    fn duration(&self, raw: RawDuration) -> Result<Option<Duration>, ConfigError> {
        raw.map(|d| parse_duration(&d.value).map_err(|e| self.err(d.referenced, e)))
            .transpose()
    }

    pub(super) fn virtual_service(
        &self,
        metadata: Metadata,
        spec: Option<Spanned<RawVsSpec>>,
        doc_at: Location,
    ) -> Result<VirtualService, ConfigError> {
        let spec = spec.ok_or_else(|| self.err(doc_at, "VirtualService: missing `spec`"))?;
        let at = spec.referenced;
        let spec = spec.value;
        for (name, field) in [("tcp", &spec.tcp), ("tls", &spec.tls)] {
            if let Some(field) = field.as_ref().filter(|f| !f.value.is_empty()) {
                return Err(self.err(
                    field.referenced,
                    format!("VirtualService: {name} routes are not supported (only http)"),
                ));
            }
        }
        let hosts = spec.hosts.unwrap_or_default();
        if hosts.is_empty() {
            return Err(self.err(at, "VirtualService: `hosts` must not be empty"));
        }
        if let Some(reason) = hosts
            .iter()
            .find_map(|h| limits::host_too_long("VirtualService", h))
        {
            return Err(self.err(at, reason));
        }
        if let Some(bad) = hosts.iter().find(|h| !valid_host(h)) {
            return Err(self.err(at, format!("VirtualService: invalid host {bad:?}")));
        }
        let http = spec
            .http
            .unwrap_or_default()
            .into_iter()
            .map(|rule| self.http_route(rule))
            .collect::<Result<_, _>>()?;
        Ok(VirtualService {
            metadata,
            hosts: hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
            gateways: spec.gateways.unwrap_or_default(),
            http,
        })
    }

    fn http_route(&self, raw: Spanned<RawHttpRoute>) -> Result<HttpRoute, ConfigError> {
        let at = raw.referenced;
        let raw = raw.value;
        self.rejected(
            "http route",
            &[
                ("redirect", &raw.redirect),
                ("directResponse", &raw.direct_response),
                ("delegate", &raw.delegate),
                ("mirror", &raw.mirror),
                ("mirrors", &raw.mirrors),
                ("mirrorPercentage", &raw.mirror_percentage),
                ("mirrorPercent", &raw.mirror_percent),
                ("corsPolicy", &raw.cors_policy),
            ],
        )?;
        let matches = raw
            .matches
            .unwrap_or_default()
            .into_iter()
            .map(|m| self.http_match(m))
            .collect::<Result<_, _>>()?;
        let route: Vec<RouteDestination> = raw
            .route
            .unwrap_or_default()
            .into_iter()
            .map(|d| self.route_destination(d))
            .collect::<Result<_, _>>()?;
        if route.is_empty() {
            return Err(self.err(at, "http route: `route` must not be empty"));
        }
        if route.len() > 1
            && route.iter().any(|d| d.weight.is_some())
            && route.iter().map(|d| d.weight.unwrap_or(0)).sum::<u32>() == 0
        {
            return Err(self.err(at, "http route: the route weights add up to 0"));
        }
        let rewrite = match raw.rewrite {
            None => None,
            Some(rewrite) => {
                let value = rewrite.value;
                self.rejected("rewrite", &[("uriRegexRewrite", &value.uri_regex_rewrite)])?;
                Some(Rewrite {
                    uri: value.uri,
                    authority: value.authority,
                })
            }
        };
        let retries = match raw.retries {
            None => None,
            Some(retries) => {
                let value = retries.value;
                Some(Retries {
                    attempts: value.attempts.unwrap_or(0),
                    per_try_timeout: self.duration(value.per_try_timeout)?,
                    retry_on: value
                        .retry_on
                        .unwrap_or_default()
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                })
            }
        };
        let fault = raw.fault.map(|f| self.fault(f)).transpose()?;
        Ok(HttpRoute {
            name: raw.name,
            matches,
            route,
            rewrite,
            timeout: self.duration(raw.timeout)?,
            retries,
            fault,
            headers: raw.headers.map(|h| self.headers(h)).transpose()?,
        })
    }

    fn http_match(&self, raw: Spanned<RawMatch>) -> Result<HttpMatch, ConfigError> {
        let raw = raw.value;
        let one =
            |m: Option<Spanned<RawStringMatch>>| m.map(|m| self.string_match(m, false)).transpose();
        Ok(HttpMatch {
            name: raw.name,
            uri: one(raw.uri)?,
            method: one(raw.method)?,
            authority: one(raw.authority)?,
            scheme: one(raw.scheme)?,
            headers: self.header_matches(raw.headers)?,
            query_params: raw
                .query_params
                .unwrap_or_default()
                .into_iter()
                .map(|(name, m)| Ok((name, self.string_match(m, false)?)))
                .collect::<Result<_, ConfigError>>()?,
            ignore_uri_case: raw.ignore_uri_case.unwrap_or(false),
            without_headers: self.header_matches(raw.without_headers)?,
            source_labels: raw.source_labels.unwrap_or_default(),
            source_namespace: raw.source_namespace.filter(|n| !n.is_empty()),
            gateways: raw.gateways.unwrap_or_default(),
            port: raw.port,
        })
    }

    fn header_matches(
        &self,
        raw: Option<BTreeMap<String, Spanned<RawStringMatch>>>,
    ) -> Result<BTreeMap<String, StringMatch>, ConfigError> {
        raw.unwrap_or_default()
            .into_iter()
            .map(|(name, m)| {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(self.err(m.referenced, format!("invalid header name {name:?}")));
                }
                if name.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(self.err(
                        m.referenced,
                        format!("header name {name:?} must be lowercase"),
                    ));
                }
                Ok((name, self.string_match(m, true)?))
            })
            .collect()
    }

    fn string_match(
        &self,
        raw: Spanned<RawStringMatch>,
        header: bool,
    ) -> Result<StringMatch, ConfigError> {
        let at = raw.referenced;
        let RawStringMatch {
            exact,
            prefix,
            regex,
        } = raw.value;
        match (exact, prefix, regex) {
            (Some(exact), None, None) => Ok(StringMatch::Exact(exact)),
            (None, Some(prefix), None) => Ok(StringMatch::Prefix(prefix)),
            (None, None, Some(regex)) => RegexPattern::new(regex.as_str())
                .map(StringMatch::Regex)
                .map_err(|e| {
                    let e = e.to_string().replace('\n', " ");
                    self.err(at, format!("invalid regex {regex:?}: {e}"))
                }),
            (None, None, None) if header => Ok(StringMatch::Present),
            (None, None, None) => Err(self.err(at, "string match must set exact, prefix or regex")),
            _ => Err(self.err(
                at,
                "string match must set only one of exact, prefix and regex",
            )),
        }
    }

    fn route_destination(
        &self,
        raw: Spanned<RawRouteDestination>,
    ) -> Result<RouteDestination, ConfigError> {
        let at = raw.referenced;
        let raw = raw.value;
        let destination = raw
            .destination
            .ok_or_else(|| self.err(at, "route: missing field `destination`"))?;
        let dest_at = destination.referenced;
        let destination = destination.value;
        let host = destination
            .host
            .filter(|h| !h.is_empty())
            .ok_or_else(|| self.err(dest_at, "destination: missing field `host`"))?;
        if let Some(reason) = limits::host_too_long("destination", &host) {
            return Err(self.err(dest_at, reason));
        }
        if !valid_host(&host) || host.contains('*') {
            return Err(self.err(dest_at, format!("destination: invalid host {host:?}")));
        }
        let weight = match raw.weight {
            None => None,
            Some(w) => Some(u32::try_from(w.value).map_err(|_| {
                let reason = if w.value < 0 {
                    format!("route weight {} must not be negative", w.value)
                } else {
                    format!(
                        "route weight {} is above the largest weight {}",
                        w.value,
                        u32::MAX
                    )
                };
                self.err(w.referenced, reason)
            })?),
        };
        Ok(RouteDestination {
            destination: Destination {
                host: host.to_ascii_lowercase(),
                subset: destination.subset.filter(|s| !s.is_empty()),
                port: destination.port.map(|p| p.number),
            },
            weight,
            headers: raw.headers.map(|h| self.headers(h)).transpose()?,
        })
    }

    fn percentage(
        &self,
        percentage: Option<Spanned<RawPercentage>>,
        percent: Option<Spanned<i64>>,
        at: Location,
    ) -> Result<Percent, ConfigError> {
        let (value, at) = match (percentage, percent) {
            (Some(_), Some(p)) => {
                return Err(self.err(p.referenced, "set `percentage` or `percent`, not both"));
            }
            (Some(p), None) => (p.value.value.unwrap_or(0.0), p.referenced),
            // An i64 is an exact f64 in 0..=100, and other values are refused below.
            (None, Some(p)) => (p.value.clamp(-1, 101) as f64, p.referenced),
            (None, None) => (100.0, at),
        };
        Percent::new(value)
            .ok_or_else(|| self.err(at, format!("fault percentage {value} is not in 0..=100")))
    }

    fn fault(&self, raw: Spanned<RawFault>) -> Result<Fault, ConfigError> {
        let at = raw.referenced;
        let raw = raw.value;
        let delay = match raw.delay {
            None => None,
            Some(delay) => {
                let delay_at = delay.referenced;
                let delay = delay.value;
                self.rejected(
                    "fault delay",
                    &[("exponentialDelay", &delay.exponential_delay)],
                )?;
                let fixed_delay = self
                    .duration(delay.fixed_delay)?
                    .ok_or_else(|| self.err(delay_at, "fault delay: missing field `fixedDelay`"))?;
                Some(FaultDelay {
                    fixed_delay,
                    percentage: self.percentage(delay.percentage, delay.percent, delay_at)?,
                })
            }
        };
        let abort = match raw.abort {
            None => None,
            Some(abort) => {
                let abort_at = abort.referenced;
                let abort = abort.value;
                self.rejected(
                    "fault abort",
                    &[
                        ("grpcStatus", &abort.grpc_status),
                        ("http2Error", &abort.http2_error),
                    ],
                )?;
                let status = abort
                    .http_status
                    .ok_or_else(|| self.err(abort_at, "fault abort: missing field `httpStatus`"))?;
                let http_status = u16::try_from(status.value)
                    .ok()
                    .filter(|s| (200..=599).contains(s))
                    .ok_or_else(|| {
                        self.err(
                            status.referenced,
                            format!("fault abort: invalid httpStatus {}", status.value),
                        )
                    })?;
                Some(FaultAbort {
                    http_status,
                    percentage: self.percentage(abort.percentage, abort.percent, abort_at)?,
                })
            }
        };
        if delay.is_none() && abort.is_none() {
            return Err(self.err(at, "fault must set `delay` or `abort`"));
        }
        Ok(Fault { delay, abort })
    }

    fn headers(&self, raw: RawHeaders) -> Result<Headers, ConfigError> {
        Ok(Headers {
            request: self.header_ops(raw.request)?,
            response: self.header_ops(raw.response)?,
        })
    }

    fn header_ops(&self, raw: Option<RawHeaderOps>) -> Result<HeaderOperations, ConfigError> {
        let Some(raw) = raw else {
            return Ok(HeaderOperations::default());
        };
        let name = |name: String, at: Location| {
            http::HeaderName::from_bytes(name.as_bytes())
                .map(|n| n.as_str().to_owned())
                .map_err(|_| self.err(at, format!("invalid header name {name:?}")))
        };
        let map = |raw: Option<Spanned<BTreeMap<String, String>>>| {
            let Some(raw) = raw else {
                return Ok(BTreeMap::new());
            };
            raw.value
                .into_iter()
                .map(|(n, v)| {
                    if http::HeaderValue::from_str(&v).is_err() {
                        return Err(self.err(raw.referenced, format!("invalid header value {v:?}")));
                    }
                    Ok((name(n, raw.referenced)?, v))
                })
                .collect::<Result<BTreeMap<_, _>, ConfigError>>()
        };
        let remove = match raw.remove {
            None => Vec::new(),
            Some(r) => r
                .value
                .into_iter()
                .map(|n| name(n, r.referenced))
                .collect::<Result<_, _>>()?,
        };
        Ok(HeaderOperations {
            set: map(raw.set)?,
            add: map(raw.add)?,
            remove,
        })
    }

    pub(super) fn destination_rule(
        &mut self,
        metadata: Metadata,
        spec: Option<Spanned<RawDrSpec>>,
        doc_at: Location,
    ) -> Result<DestinationRule, ConfigError> {
        let spec = spec.ok_or_else(|| self.err(doc_at, "DestinationRule: missing `spec`"))?;
        let at = spec.referenced;
        let spec = spec.value;
        self.rejected(
            "DestinationRule",
            &[("workloadSelector", &spec.workload_selector)],
        )?;
        let host = spec
            .host
            .filter(|h| !h.is_empty())
            .ok_or_else(|| self.err(at, "DestinationRule: missing field `host`"))?;
        if let Some(reason) = limits::host_too_long("DestinationRule", &host) {
            return Err(self.err(at, reason));
        }
        if !valid_host(&host) {
            return Err(self.err(at, format!("DestinationRule: invalid host {host:?}")));
        }
        let mut subsets: Vec<Subset> = Vec::new();
        for subset in spec.subsets.unwrap_or_default() {
            let subset_at = subset.referenced;
            let subset = subset.value;
            let name = subset
                .name
                .filter(|n| !n.is_empty())
                .ok_or_else(|| self.err(subset_at, "subset: missing field `name`"))?;
            if subsets.iter().any(|s| s.name == name) {
                return Err(self.err(subset_at, format!("subset {name} is defined twice")));
            }
            let traffic_policy = subset
                .traffic_policy
                .map(|p| self.traffic_policy(p))
                .transpose()?;
            subsets.push(Subset {
                name,
                labels: subset.labels.unwrap_or_default(),
                traffic_policy,
            });
        }
        let traffic_policy = spec
            .traffic_policy
            .map(|p| self.traffic_policy(p))
            .transpose()?;
        Ok(DestinationRule {
            metadata,
            host: host.to_ascii_lowercase(),
            subsets,
            traffic_policy,
        })
    }

    fn traffic_policy(
        &mut self,
        raw: Spanned<RawTrafficPolicy>,
    ) -> Result<TrafficPolicy, ConfigError> {
        let raw = raw.value;
        self.rejected(
            "trafficPolicy",
            &[
                ("tunnel", &raw.tunnel),
                ("proxyProtocol", &raw.proxy_protocol),
            ],
        )?;
        // Per port it can set the balancer, pool limits and TLS mode: ignoring it would run
        // that port otherwise than the rule says.
        if let Some(ports) = raw.port_level_settings.filter(|p| !p.value.is_empty()) {
            return Err(self.err(
                ports.referenced,
                "trafficPolicy: field portLevelSettings is not supported",
            ));
        }
        let load_balancer = match raw.load_balancer {
            None => None,
            Some(lb) => {
                self.rejected("loadBalancer", &[("consistentHash", &lb.consistent_hash)])?;
                match lb.simple {
                    None | Some(RawSimpleLb::Unspecified) => None,
                    Some(RawSimpleLb::RoundRobin) => Some(LoadBalancer::RoundRobin),
                    Some(RawSimpleLb::Random) => Some(LoadBalancer::Random),
                    Some(RawSimpleLb::LeastRequest | RawSimpleLb::LeastConn) => {
                        Some(LoadBalancer::LeastRequest)
                    }
                    Some(RawSimpleLb::Passthrough) => Some(LoadBalancer::Passthrough),
                }
            }
        };
        let connection_pool = match raw.connection_pool {
            None => None,
            Some(pool) => Some(ConnectionPool {
                tcp: match pool.tcp {
                    None => None,
                    Some(tcp) => Some(TcpPool {
                        max_connections: tcp.max_connections,
                        connect_timeout: self.duration(tcp.connect_timeout)?,
                    }),
                },
                http: match pool.http {
                    None => None,
                    Some(http) => Some(HttpPool {
                        http1_max_pending_requests: http.http1_max_pending_requests,
                        http2_max_requests: http.http2_max_requests,
                        max_requests_per_connection: http.max_requests_per_connection,
                        max_retries: http.max_retries,
                        idle_timeout: self.duration(http.idle_timeout)?,
                    }),
                },
            }),
        };
        let outlier_detection = match raw.outlier_detection {
            None => None,
            Some(o) => Some(OutlierDetection {
                consecutive_5xx_errors: o.consecutive_5xx_errors,
                consecutive_gateway_errors: o.consecutive_gateway_errors,
                interval: self.duration(o.interval)?,
                base_ejection_time: self.duration(o.base_ejection_time)?,
                max_ejection_percent: o.max_ejection_percent,
                min_health_percent: o.min_health_percent,
            }),
        };
        let tls = raw.tls.map(|tls| ClientTls {
            mode: match tls.mode {
                None | Some(RawTlsMode::Disable) => TlsMode::Disable,
                Some(RawTlsMode::Simple) => TlsMode::Simple,
                Some(RawTlsMode::Mutual) => TlsMode::Mutual,
                Some(RawTlsMode::IstioMutual) => TlsMode::IstioMutual,
            },
            sni: tls.sni,
        });
        Ok(TrafficPolicy {
            load_balancer,
            connection_pool,
            outlier_detection,
            tls,
        })
    }

    pub(super) fn gateway(
        &self,
        metadata: Metadata,
        spec: Option<Spanned<RawGatewaySpec>>,
        doc_at: Location,
    ) -> Result<Gateway, ConfigError> {
        let spec = spec.ok_or_else(|| self.err(doc_at, "Gateway: missing `spec`"))?;
        let spec = spec.value;
        let mut servers = Vec::new();
        for server in spec.servers.unwrap_or_default() {
            let at = server.referenced;
            let server = server.value;
            if let Some(tls) = &server.tls {
                return Err(self.err(
                    tls.referenced,
                    "Gateway server: field tls is not supported (only plain HTTP gateways)",
                ));
            }
            self.rejected(
                "Gateway server",
                &[
                    ("bind", &server.bind),
                    ("defaultEndpoint", &server.default_endpoint),
                ],
            )?;
            let port = server
                .port
                .ok_or_else(|| self.err(at, "Gateway server: missing field `port`"))?;
            let port_at = port.referenced;
            let port = port.value;
            let number = port
                .number
                .filter(|n| *n > 0)
                .ok_or_else(|| self.err(port_at, "Gateway server: missing field `port.number`"))?;
            let protocol = port.protocol.ok_or_else(|| {
                self.err(port_at, "Gateway server: missing field `port.protocol`")
            })?;
            let upper = protocol.value.to_ascii_uppercase();
            if !GATEWAY_PROTOCOLS.contains(&upper.as_str()) {
                return Err(self.err(
                    protocol.referenced,
                    format!(
                        "Gateway server: protocol {} is not supported (only {})",
                        protocol.value,
                        GATEWAY_PROTOCOLS.join(", ")
                    ),
                ));
            }
            let hosts = server.hosts.unwrap_or_default();
            if hosts.is_empty() {
                return Err(self.err(at, "Gateway server: `hosts` must not be empty"));
            }
            // A server host is `namespace/host` or `host`; each part is a DNS name.
            if let Some(reason) = hosts.iter().find_map(|h| {
                let (namespace, name) = h.split_once('/').unwrap_or(("", h));
                limits::host_too_long("Gateway server", namespace)
                    .or_else(|| limits::host_too_long("Gateway server", name))
            }) {
                return Err(self.err(at, reason));
            }
            servers.push(Server {
                port: ServerPort {
                    number,
                    name: port.name.unwrap_or_default(),
                    protocol: upper,
                },
                hosts: hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
                name: server.name,
            });
        }
        if servers.is_empty() {
            return Err(self.err(doc_at, "Gateway: `servers` must not be empty"));
        }
        Ok(Gateway {
            metadata,
            selector: spec.selector.unwrap_or_default(),
            servers,
        })
    }
}

/// `*`, `*.suffix`, or a DNS name.
fn valid_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    host == "*"
        || (!name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }))
}

/// Warns about route destinations naming a subset that no `DestinationRule` defines.
pub(super) fn check_subsets(config: &MeshConfig, origins: &Origins, warnings: &mut Vec<String>) {
    for vs in &config.virtual_services {
        let key = vs.metadata.key();
        let origin = origins.get(&key).map_or("", String::as_str);
        for rule in &vs.http {
            for route in &rule.route {
                let dest = &route.destination;
                let Some(subset) = &dest.subset else {
                    continue;
                };
                if config
                    .subset_labels(&dest.host, &vs.metadata.namespace, subset)
                    .is_none()
                {
                    let message = format!(
                        "{origin}: VirtualService {key}: no DestinationRule defines subset \
                         {subset} of host {}; requests routed to it will fail (503)",
                        dest.host
                    );
                    tracing::debug!(%message, "config warning");
                    warnings.push(message);
                }
            }
        }
    }
}
