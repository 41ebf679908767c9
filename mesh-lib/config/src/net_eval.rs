//! Evaluates the traffic-management resources of a [`MeshConfig`]: which virtual service
//! rule a request follows, which destination rule and subset a destination has, which
//! gateways a gateway workload serves.
//!
//! All of it is pure: the caller supplies the random roll for weighted destinations, so every
//! decision can be tested exactly.

use std::collections::BTreeMap;

use super::model::MeshConfig;
use super::net_model::{
    DestinationRule, Gateway, HttpMatch, HttpRoute, RouteDestination, StringMatch, VirtualService,
};
use crate::meta::{order, selects, strip_port};

/// The Kubernetes cluster domain short names expand into.
const CLUSTER_SUFFIX: &str = "svc.cluster.local";

/// The request a routing decision is made for.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// Host/authority as sent: `"reviews:9080"`, `"reviews.default.svc.cluster.local"`, or
    /// `"bookinfo.example.com"` at a gateway.
    pub host: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query string (without `?`).
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
    /// The caller's namespace: a host without dots (`reviews`) is expanded in it.
    pub source_namespace: &'a str,
    /// The caller's workload labels (for `sourceLabels`).
    pub source_labels: &'a BTreeMap<String, String>,
    /// `Some("namespace/name")` of the Gateway when the request arrives at an ingress
    /// gateway; `None` for sidecar (mesh) traffic.
    pub gateway: Option<&'a str>,
}

/// The rule a request follows.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a> {
    /// The virtual service that owns the rule.
    pub virtual_service: &'a VirtualService,
    /// The first matching rule.
    pub rule: &'a HttpRoute,
    /// Its index in `virtual_service.http`.
    pub rule_index: usize,
}

impl MeshConfig {
    /// The virtual service that governs `req`'s host where the request is (mesh or the
    /// gateway): the one with the most specific matching host (exact, then the longest
    /// wildcard suffix, then `*`), ties broken by (namespace, name).
    ///
    /// When this is `Some` but [`MeshConfig::route`] is `None`, Istio answers 404.
    pub fn virtual_service_for(&self, req: &RouteRequest<'_>) -> Option<&VirtualService> {
        let mut applicable = self
            .virtual_services
            .iter()
            .filter(|vs| applies_at(&vs.gateways, &vs.metadata.namespace, req.gateway))
            .peekable();
        // The host's names are made only when some resource could claim it.
        applicable.peek()?;
        let names = host_names(req.host, req.source_namespace);
        applicable
            .filter_map(|vs| {
                let score = vs
                    .hosts
                    .iter()
                    .filter_map(|h| host_score(h, &vs.metadata.namespace, &names))
                    .max()?;
                Some((score, vs))
            })
            .min_by(|(sa, a), (sb, b)| sb.cmp(sa).then_with(|| order(&a.metadata, &b.metadata)))
            .map(|(_, vs)| vs)
    }

    /// The first rule of the governing virtual service that `req` matches. `None` when no
    /// virtual service governs the host (route to the host as addressed) or none of its
    /// rules match (see [`MeshConfig::virtual_service_for`]).
    pub fn route(&self, req: &RouteRequest<'_>) -> Option<RouteMatch<'_>> {
        let vs = self.virtual_service_for(req)?;
        vs.http
            .iter()
            .enumerate()
            .find(|(_, rule)| rule_matches(rule, &vs.metadata.namespace, req))
            .map(|(rule_index, rule)| RouteMatch {
                virtual_service: vs,
                rule,
                rule_index,
            })
    }

    /// The destination rule of `host` (short names are expanded in `namespace`): the most
    /// specific host match, then one in `namespace`, then by (namespace, name).
    pub fn destination_rule(&self, host: &str, namespace: &str) -> Option<&DestinationRule> {
        if self.destination_rules.is_empty() {
            return None;
        }
        let names = host_names(host, namespace);
        self.destination_rules
            .iter()
            .filter_map(|dr| Some((host_score(&dr.host, &dr.metadata.namespace, &names)?, dr)))
            .min_by(|(sa, a), (sb, b)| {
                sb.cmp(sa)
                    .then_with(|| {
                        (a.metadata.namespace != namespace)
                            .cmp(&(b.metadata.namespace != namespace))
                    })
                    .then_with(|| order(&a.metadata, &b.metadata))
            })
            .map(|(_, dr)| dr)
    }

    /// The endpoint labels of `subset` of `host`, from its destination rule.
    pub fn subset_labels(
        &self,
        host: &str,
        namespace: &str,
        subset: &str,
    ) -> Option<&BTreeMap<String, String>> {
        self.destination_rule(host, namespace)?
            .subset(subset)
            .map(|s| &s.labels)
    }

    /// The gateways that configure a gateway workload with `labels` (selector ⊆ labels) and
    /// have a server on one of `ports` (the ports it serves: its own and the service ports
    /// aimed at it), in (namespace, name) order.
    pub fn gateway_for(&self, labels: &BTreeMap<String, String>, ports: &[u16]) -> Vec<&Gateway> {
        self.gateways_selecting(labels, |g| {
            g.servers.iter().any(|s| ports.contains(&s.port.number))
        })
    }

    /// The gateways that select a gateway workload with `labels` but have no server on any of
    /// `ports`: they configure it, yet none of their routes can apply, which is worth a warning.
    pub fn gateways_missing_port(
        &self,
        labels: &BTreeMap<String, String>,
        ports: &[u16],
    ) -> Vec<&Gateway> {
        self.gateways_selecting(labels, |g| {
            !g.servers.iter().any(|s| ports.contains(&s.port.number))
        })
    }

    fn gateways_selecting(
        &self,
        labels: &BTreeMap<String, String>,
        keep: impl Fn(&Gateway) -> bool,
    ) -> Vec<&Gateway> {
        let mut gateways: Vec<&Gateway> = self
            .gateways
            .iter()
            .filter(|g| selects(&g.selector, labels) && keep(g))
            .collect();
        gateways.sort_by(|a, b| order(&a.metadata, &b.metadata));
        gateways
    }
}

impl HttpRoute {
    /// The weight of each destination: as written (missing = 0) when any is written; 100
    /// for a single destination; otherwise 100 split equally (the first ones get the rest).
    pub fn weights(&self) -> Vec<u32> {
        let n = self.route.len();
        match n {
            0 => return Vec::new(),
            1 => return vec![100],
            _ => {}
        }
        if self.route.iter().any(|d| d.weight.is_some()) {
            return self.route.iter().map(|d| d.weight.unwrap_or(0)).collect();
        }
        let n32 = u32::try_from(n).unwrap_or(u32::MAX);
        if n32 > 100 {
            return vec![1; n];
        }
        let (share, rest) = (100 / n32, 100 % n32);
        (0..n32).map(|i| share + u32::from(i < rest)).collect()
    }

    /// The sum of [`HttpRoute::weights`].
    pub fn total_weight(&self) -> u32 {
        self.weights()
            .iter()
            .fold(0u32, |a, w| a.saturating_add(*w))
    }

    /// The destination for `roll` in `0..total_weight()` by cumulative weight (a larger roll
    /// wraps around). `None` only when there is no destination.
    pub fn choose_destination(&self, roll: u32) -> Option<&RouteDestination> {
        let weights = self.weights();
        let total = weights.iter().fold(0u32, |a, w| a.saturating_add(*w));
        if total == 0 {
            return self.route.first();
        }
        let mut roll = roll % total;
        for (dest, weight) in self.route.iter().zip(weights) {
            if roll < weight {
                return Some(dest);
            }
            roll -= weight;
        }
        self.route.last()
    }
}

/// [`HttpRoute::choose_destination`].
pub fn choose_destination(rule: &HttpRoute, roll: u32) -> Option<&RouteDestination> {
    rule.choose_destination(roll)
}

/// [`HttpRoute::total_weight`].
pub fn total_weight(rule: &HttpRoute) -> u32 {
    rule.total_weight()
}

/// The full name of `host` as written in a resource of `namespace`: a name without dots is
/// `<name>.<namespace>.svc.cluster.local`; others are kept (lowercased).
pub fn resolve_host(host: &str, namespace: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host.contains('.') || host.contains('*') {
        host
    } else {
        format!("{host}.{namespace}.{CLUSTER_SUFFIX}")
    }
}

/// The names a request host stands for: itself (port stripped, lowercased) and, for the
/// Kubernetes short forms (`reviews`, `reviews.default`, `reviews.default.svc`), the full
/// name, short names being in `namespace`.
fn host_names(host: &str, namespace: &str) -> Vec<String> {
    let host = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
    let mut names = Vec::with_capacity(2);
    match host.matches('.').count() {
        0 => names.push(format!("{host}.{namespace}.{CLUSTER_SUFFIX}")),
        1 => names.push(format!("{host}.{CLUSTER_SUFFIX}")),
        2 if host.ends_with(".svc") => names.push(format!("{host}.cluster.local")),
        _ => {}
    }
    names.push(host);
    names
}

/// How specifically `pattern` (a host of a resource in `namespace`) matches one of `names`:
/// `None` when it does not; exact beats a longer wildcard suffix beats `*`.
fn host_score(pattern: &str, namespace: &str, names: &[String]) -> Option<usize> {
    if pattern == "*" {
        return Some(0);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        // `*.example.com`: some label(s), then the suffix.
        return names
            .iter()
            .any(|n| n.len() > suffix.len() && n.ends_with(suffix))
            .then_some(suffix.len());
    }
    names
        .iter()
        .any(|n| is_resolved(n, pattern, namespace))
        .then_some(usize::MAX)
}

/// Whether `name` is `resolve_host(host, namespace)`, without building that string: this runs
/// for every resource on every request.
fn is_resolved(name: &str, host: &str, namespace: &str) -> bool {
    let lower_eq = |a: &str, b: &str| {
        a.len() == b.len()
            && a.bytes()
                .zip(b.bytes())
                .all(|(a, b)| a == b.to_ascii_lowercase())
    };
    if host.contains('.') || host.contains('*') {
        return lower_eq(name, host);
    }
    name.get(..host.len())
        .is_some_and(|head| lower_eq(head, host))
        && name[host.len()..]
            .strip_prefix('.')
            .and_then(|rest| rest.strip_prefix(namespace))
            .and_then(|rest| rest.strip_prefix('.'))
            == Some(CLUSTER_SUFFIX)
}

/// Whether `gateways` (of a resource in `namespace`) covers where the request is: `None`
/// is the mesh, covered by an empty list or `"mesh"`.
fn applies_at(gateways: &[String], namespace: &str, here: Option<&str>) -> bool {
    match here {
        None => gateways.is_empty() || gateways.iter().any(|g| g == "mesh"),
        Some(here) => gateways.iter().any(|g| names_gateway(g, namespace, here)),
    }
}

/// Whether `entry` (`"ns/name"`, or `"name"` in `namespace`) is the gateway `here`
/// (`"ns/name"`, or just `"name"`).
fn names_gateway(entry: &str, namespace: &str, here: &str) -> bool {
    if entry == "mesh" {
        return false;
    }
    let (ns, name) = entry.split_once('/').unwrap_or((namespace, entry));
    match here.split_once('/') {
        Some((here_ns, here_name)) => ns == here_ns && name == here_name,
        None => name == here,
    }
}

fn rule_matches(rule: &HttpRoute, namespace: &str, req: &RouteRequest<'_>) -> bool {
    rule.matches.is_empty()
        || rule
            .matches
            .iter()
            .any(|m| entry_matches(m, namespace, req))
}

fn entry_matches(m: &HttpMatch, namespace: &str, req: &RouteRequest<'_>) -> bool {
    let optional =
        |sm: &Option<StringMatch>, value: &str| sm.as_ref().is_none_or(|sm| sm.matches(value));
    (m.gateways.is_empty() || applies_at(&m.gateways, namespace, req.gateway))
        && m.uri
            .as_ref()
            .is_none_or(|uri| uri_matches(uri, m.ignore_uri_case, req.path))
        && optional(&m.method, req.method)
        && optional(&m.authority, req.host)
        && optional(&m.scheme, scheme(req.headers))
        && m.headers
            .iter()
            .all(|(name, sm)| header_matches(req.headers, name, sm))
        && !m
            .without_headers
            .iter()
            .any(|(name, sm)| header_matches(req.headers, name, sm))
        && m.query_params
            .iter()
            .all(|(name, sm)| query_param(req.query, name).is_some_and(|value| sm.matches(&value)))
        && selects(&m.source_labels, req.source_labels)
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| ns == req.source_namespace)
        && m.port.is_none_or(|port| host_port(req.host) == Some(port))
}

/// `ignoreUriCase` applies to exact and prefix matches (as Envoy's `case_sensitive`).
fn uri_matches(uri: &StringMatch, ignore_case: bool, path: &str) -> bool {
    match uri {
        StringMatch::Exact(exact) if ignore_case => exact.eq_ignore_ascii_case(path),
        StringMatch::Prefix(prefix) if ignore_case => path
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
        _ => uri.matches(path),
    }
}

fn scheme(headers: &http::HeaderMap) -> &str {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("http")
}

/// A header condition: `Present` needs the header; other matches need it present and its
/// value (repeated headers joined with `,`, like Envoy) to match.
fn header_matches(headers: &http::HeaderMap, name: &str, sm: &StringMatch) -> bool {
    let values: Option<Vec<&str>> = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().ok())
        .collect();
    match values.filter(|v| !v.is_empty()) {
        None => false,
        Some(values) => sm.matches(&values.join(",")),
    }
}

/// The first value of query parameter `name`, percent-decoded (`""` when it has no `=`).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn host_port(host: &str) -> Option<u16> {
    let bare = strip_port(host);
    host.get(bare.len()..)?.strip_prefix(':')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_resolved_agrees_with_resolve_host() {
        let hosts = [
            "reviews",
            "Reviews",
            "reviews.default",
            "reviews.default.svc.cluster.local",
            "*.example.com",
            "*",
            "ré",
            "r",
            "",
        ];
        let names = [
            "reviews.default.svc.cluster.local",
            "reviews.prod.svc.cluster.local",
            "reviews.default",
            "reviews.default.svc.cluster.localx",
            "reviews.defaultx.svc.cluster.local",
            "reviewsx.default.svc.cluster.local",
            "*.example.com",
            "*",
            "ré.default.svc.cluster.local",
            "r.default.svc.cluster.local",
            ".default.svc.cluster.local",
            "",
        ];
        for host in hosts {
            for namespace in ["default", "prod", ""] {
                for name in names {
                    assert_eq!(
                        is_resolved(name, host, namespace),
                        name == resolve_host(host, namespace),
                        "{name} vs {host} in {namespace}"
                    );
                }
            }
        }
    }
}
