//! Evaluates a [`MeshConfig`] for one workload with Istio's semantics.
//!
//! Kept apart from parsing so the rules (which policy applies, which one wins, how strings
//! match) can be read in one place. Policies are visited in (namespace, name) order so the
//! outcome never depends on the order files were loaded in.

use std::collections::BTreeMap;
use std::fmt;

use crate::meta::{Metadata, ROOT_NAMESPACE, Workload, order, selects, strip_port};
use crate::model::{
    Action, AuthorizationPolicy, Condition, ConditionKey, MeshConfig, MtlsMode, Operation,
    PeerAuthentication, Rule, Source,
};

/// What an authorization decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestAttrs<'a> {
    /// HTTP method, compared case-sensitively.
    pub method: &'a str,
    /// Request path without the query.
    pub path: &'a str,
    /// Request headers (`host` is used for `hosts`).
    pub headers: &'a http::HeaderMap,
    /// Peer identity such as `cluster.local/ns/default/sa/bookinfo-productpage`
    /// (a SPIFFE id without `spiffe://`); `None` for plaintext.
    pub principal: Option<&'a str>,
}

/// The outcome of [`MeshConfig::authorize`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The request may proceed.
    Allow,
    /// The request is refused.
    Deny {
        /// `"namespace/name"` of the DENY policy that matched, or `""` when ALLOW policies
        /// apply and none matched.
        policy: String,
    },
}

impl Decision {
    /// True for [`Decision::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow => f.write_str("allow"),
            Decision::Deny { policy } if policy.is_empty() => {
                f.write_str("deny (no allow policy matched)")
            }
            Decision::Deny { policy } => write!(f, "deny (policy {policy})"),
        }
    }
}

impl MeshConfig {
    /// The mTLS mode `workload` accepts: the most specific applicable `PeerAuthentication`
    /// (workload selector, then namespace-wide, then mesh-wide), `UNSET` inheriting from the
    /// next level, and `PERMISSIVE` when nothing sets a mode.
    pub fn mtls_mode(&self, workload: &Workload<'_>) -> MtlsMode {
        let mut peers: Vec<&PeerAuthentication> = self.peer_authentications.iter().collect();
        peers.sort_by(|a, b| order(&a.metadata, &b.metadata));

        let in_namespace = |p: &PeerAuthentication| p.metadata.namespace == workload.namespace;
        let workload_level = peers.iter().copied().find(|p| {
            in_namespace(p) && !p.selector.is_empty() && selects(&p.selector, workload.labels)
        });
        let namespace_level = peers
            .iter()
            .copied()
            .find(|p| in_namespace(p) && p.selector.is_empty());
        let mesh_level = peers
            .iter()
            .copied()
            .find(|p| p.metadata.namespace == ROOT_NAMESPACE && p.selector.is_empty());

        [workload_level, namespace_level, mesh_level]
            .into_iter()
            .flatten()
            .find_map(|p| p.mode)
            .unwrap_or_default()
    }

    /// Istio's authorization: a matching DENY policy denies; otherwise, if no ALLOW policy
    /// applies the request is allowed; otherwise it is allowed only if an ALLOW policy matches.
    pub fn authorize(&self, workload: &Workload<'_>, request: &RequestAttrs<'_>) -> Decision {
        self.authorization_for(workload).decide(request)
    }

    /// The AuthorizationPolicies that apply to `workload`, in the order they are decided in:
    /// made once per config (a data plane keeps it beside its snapshot) rather than filtered
    /// and sorted for each request.
    pub fn authorization_for(&self, workload: &Workload<'_>) -> WorkloadAuthorization {
        let mut policies: Vec<&AuthorizationPolicy> = self
            .authorization_policies
            .iter()
            .filter(|p| applies(&p.metadata, &p.selector, workload))
            .collect();
        policies.sort_by(|a, b| order(&a.metadata, &b.metadata));
        let of = |action: Action| -> Vec<AuthorizationPolicy> {
            policies
                .iter()
                .filter(|p| p.action == action)
                .map(|p| (*p).clone())
                .collect()
        };
        WorkloadAuthorization {
            deny: of(Action::Deny),
            allow: of(Action::Allow),
        }
    }
}

/// The AuthorizationPolicies that apply to one workload, by action, each list in (namespace,
/// name) order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadAuthorization {
    deny: Vec<AuthorizationPolicy>,
    allow: Vec<AuthorizationPolicy>,
}

impl WorkloadAuthorization {
    /// Whether no policy applies (every request is allowed, with nothing to evaluate).
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty()
    }

    /// The decision for `request`: a matching DENY policy denies; with no ALLOW policy the
    /// request is allowed; otherwise only a matching ALLOW policy allows it.
    pub fn decide(&self, request: &RequestAttrs<'_>) -> Decision {
        if let Some(deny) = self.deny.iter().find(|p| policy_matches(p, request)) {
            return Decision::Deny {
                policy: deny.metadata.key(),
            };
        }
        if self.allow.is_empty() || self.allow.iter().any(|p| policy_matches(p, request)) {
            Decision::Allow
        } else {
            Decision::Deny {
                policy: String::new(),
            }
        }
    }
}

fn applies(meta: &Metadata, selector: &BTreeMap<String, String>, workload: &Workload<'_>) -> bool {
    (meta.namespace == workload.namespace || meta.namespace == ROOT_NAMESPACE)
        && selects(selector, workload.labels)
}

fn policy_matches(policy: &AuthorizationPolicy, request: &RequestAttrs<'_>) -> bool {
    policy.rules.iter().any(|rule| rule_matches(rule, request))
}

fn rule_matches(rule: &Rule, request: &RequestAttrs<'_>) -> bool {
    (rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, request)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, request)))
        && rule.when.iter().all(|c| condition_matches(c, request))
}

/// A positive list must match (if present) and a negative list must not.
///
/// `value` is `None` when the attribute is absent: it then matches no pattern, so a positive
/// list fails and a negative list passes (Istio negates the positive matcher).
fn field(patterns: &[String], not_patterns: &[String], value: Option<&str>, fold: bool) -> bool {
    let hit = |list: &[String]| value.is_some_and(|v| list.iter().any(|p| wildcard(p, v, fold)));
    (patterns.is_empty() || hit(patterns)) && !hit(not_patterns)
}

/// Istio string matching: exact, `prefix*`, `*suffix`, or `*` (any value, even empty).
fn wildcard(pattern: &str, value: &str, fold: bool) -> bool {
    let (pattern, value) = if fold {
        (
            std::borrow::Cow::Owned(pattern.to_ascii_lowercase()),
            std::borrow::Cow::Owned(value.to_ascii_lowercase()),
        )
    } else {
        (
            std::borrow::Cow::Borrowed(pattern),
            std::borrow::Cow::Borrowed(value),
        )
    };
    if pattern == "*" {
        true
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else {
        pattern == value
    }
}

fn principal<'a>(request: &RequestAttrs<'a>) -> Option<&'a str> {
    request
        .principal
        .map(|p| p.strip_prefix("spiffe://").unwrap_or(p))
}

/// The namespace in a `<trust-domain>/ns/<namespace>/sa/<account>` identity.
fn principal_namespace(principal: &str) -> Option<&str> {
    let mut parts = principal.split('/');
    parts.next()?;
    match (parts.next(), parts.next()) {
        (Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

fn source_matches(source: &Source, request: &RequestAttrs<'_>) -> bool {
    let principal = principal(request);
    let namespace = principal.and_then(principal_namespace);
    field(&source.principals, &source.not_principals, principal, false)
        && field(&source.namespaces, &source.not_namespaces, namespace, false)
}

fn operation_matches(op: &Operation, request: &RequestAttrs<'_>) -> bool {
    field(&op.methods, &op.not_methods, Some(request.method), false)
        && field(&op.paths, &op.not_paths, Some(request.path), false)
        && hosts_match(op, request)
}

fn hosts_match(op: &Operation, request: &RequestAttrs<'_>) -> bool {
    if op.hosts.is_empty() && op.not_hosts.is_empty() {
        return true;
    }
    let host = request
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    let bare = host.map(strip_port);
    // A pattern may name the host with or without its port.
    let hit = |list: &[String]| {
        list.iter().any(|p| {
            host.is_some_and(|h| wildcard(p, h, true)) || bare.is_some_and(|h| wildcard(p, h, true))
        })
    };
    (op.hosts.is_empty() || hit(&op.hosts)) && !hit(&op.not_hosts)
}

fn condition_matches(condition: &Condition, request: &RequestAttrs<'_>) -> bool {
    let joined;
    let value = match &condition.key {
        ConditionKey::SourcePrincipal => principal(request),
        ConditionKey::SourceNamespace => principal(request).and_then(principal_namespace),
        ConditionKey::RequestHeader(name) => {
            // Like Envoy, repeated headers are compared as one comma-joined value.
            let values: Option<Vec<&str>> = request
                .headers
                .get_all(name.as_str())
                .iter()
                .map(|v| v.to_str().ok())
                .collect();
            joined = values.filter(|v| !v.is_empty()).map(|v| v.join(","));
            joined.as_deref()
        }
    };
    field(&condition.values, &condition.not_values, value, false)
}
