//! The validated resource model: what is left of the Istio YAML once it has been checked.
//!
//! These types hold only what the evaluator understands, so a [`MeshConfig`] can be shipped
//! as JSON (for example over gRPC) and evaluated on the other side without re-parsing YAML.
//! Unknown JSON fields are rejected for the same reason unknown YAML fields are: silently
//! dropping a field of a security policy could change what it allows.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::meta::{Metadata, Workload};
use crate::net_model::{DestinationRule, Gateway, VirtualService};
use crate::rate_limit::LocalRateLimit;

/// Every resource the mesh enforces: security policies, traffic routing and rate limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    /// `PeerAuthentication` resources: which mTLS mode a workload accepts.
    #[serde(default)]
    pub peer_authentications: Vec<PeerAuthentication>,
    /// `AuthorizationPolicy` resources: which requests a workload accepts.
    #[serde(default)]
    pub authorization_policies: Vec<AuthorizationPolicy>,
    /// `VirtualService` resources: how requests are routed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_services: Vec<VirtualService>,
    /// `DestinationRule` resources: subsets and traffic policies of hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_rules: Vec<DestinationRule>,
    /// `Gateway` resources: what ingress gateways serve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<Gateway>,
    /// `LocalRateLimit` resources (the mesh's own kind): token buckets on inbound requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_rate_limits: Vec<LocalRateLimit>,
}

impl MeshConfig {
    /// Adds `other`'s resources; a resource with the same namespace and name replaces ours.
    pub fn merge(&mut self, other: MeshConfig) {
        for peer in other.peer_authentications {
            self.insert_peer_authentication(peer);
        }
        for policy in other.authorization_policies {
            self.insert_authorization_policy(policy);
        }
        for vs in other.virtual_services {
            self.insert_virtual_service(vs);
        }
        for rule in other.destination_rules {
            self.insert_destination_rule(rule);
        }
        for gateway in other.gateways {
            self.insert_gateway(gateway);
        }
        for limit in other.local_rate_limits {
            self.insert_local_rate_limit(limit);
        }
    }

    /// Adds or replaces (same namespace and name) a peer authentication; true if it replaced.
    pub fn insert_peer_authentication(&mut self, peer: PeerAuthentication) -> bool {
        upsert(&mut self.peer_authentications, peer, |p| &p.metadata)
    }

    /// Adds or replaces (same namespace and name) an authorization policy; true if it replaced.
    pub fn insert_authorization_policy(&mut self, policy: AuthorizationPolicy) -> bool {
        upsert(&mut self.authorization_policies, policy, |p| &p.metadata)
    }

    /// Adds or replaces (same namespace and name) a virtual service; true if it replaced.
    pub fn insert_virtual_service(&mut self, vs: VirtualService) -> bool {
        upsert(&mut self.virtual_services, vs, |v| &v.metadata)
    }

    /// Adds or replaces (same namespace and name) a destination rule; true if it replaced.
    pub fn insert_destination_rule(&mut self, rule: DestinationRule) -> bool {
        upsert(&mut self.destination_rules, rule, |r| &r.metadata)
    }

    /// Adds or replaces (same namespace and name) a gateway; true if it replaced.
    pub fn insert_gateway(&mut self, gateway: Gateway) -> bool {
        upsert(&mut self.gateways, gateway, |g| &g.metadata)
    }

    /// Adds or replaces (same namespace and name) a local rate limit; true if it replaced.
    pub fn insert_local_rate_limit(&mut self, limit: LocalRateLimit) -> bool {
        upsert(&mut self.local_rate_limits, limit, |l| &l.metadata)
    }
}

fn upsert<T>(items: &mut Vec<T>, item: T, meta: impl Fn(&T) -> &Metadata) -> bool {
    let key = meta(&item).key();
    match items
        .iter_mut()
        .find(|existing| meta(existing).key() == key)
    {
        Some(existing) => {
            *existing = item;
            true
        }
        None => {
            items.push(item);
            false
        }
    }
}

/// A `PeerAuthentication`: the mTLS mode for the workloads it selects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// Name and namespace.
    pub metadata: Metadata,
    /// `selector.matchLabels`; empty means every workload of the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// `mtls.mode`; `None` is `UNSET` (inherit from the less specific level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
}

/// Which connections a workload accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Only mutual TLS.
    Strict,
    /// Mutual TLS or plaintext (Istio's default).
    #[default]
    Permissive,
    /// Only plaintext.
    Disable,
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MtlsMode::Strict => "STRICT",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Disable => "DISABLE",
        })
    }
}

/// An `AuthorizationPolicy` with a supported action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Name and namespace.
    pub metadata: Metadata,
    /// `selector.matchLabels`; empty means every workload of the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// What a matching request gets.
    #[serde(default)]
    pub action: Action,
    /// A request matches the policy when it matches any rule; no rules match nothing.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// The action of an authorization policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Matching requests are allowed; once any ALLOW policy applies, others are denied.
    #[default]
    Allow,
    /// Matching requests are denied, whatever ALLOW policies say.
    Deny,
}

/// One rule: every section present must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Any of these sources (none: any source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Source>,
    /// Any of these operations (none: any operation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Operation>,
    /// All of these conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// `from[].source`: who sends the request. Each non-empty list must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities such as `cluster.local/ns/default/sa/bookinfo-productpage`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Peer identities that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// Namespaces of the peer identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces of the peer identity that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
}

/// `to[].operation`: what the request does. Each non-empty list must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// HTTP methods (case-sensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// HTTP methods that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Request paths, without the query.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Request paths that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// `host` header values (case-insensitive; the port may be left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// `host` header values that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
}

/// `when[]`: a condition on one request attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The attribute.
    pub key: ConditionKey,
    /// The attribute must match one of these (when non-empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// The attribute must match none of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// The supported `when` keys; serialized as Istio spells them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ConditionKey {
    /// `request.headers[<name>]`, the name lowercased.
    RequestHeader(String),
    /// `source.principal`.
    SourcePrincipal,
    /// `source.namespace`.
    SourceNamespace,
}

/// A `when` key that the mesh does not evaluate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("condition key {0} is not supported")]
pub struct UnsupportedKey(pub String);

impl TryFrom<String> for ConditionKey {
    type Error = UnsupportedKey;

    fn try_from(key: String) -> Result<Self, Self::Error> {
        match key.as_str() {
            "source.principal" => return Ok(ConditionKey::SourcePrincipal),
            "source.namespace" => return Ok(ConditionKey::SourceNamespace),
            _ => {}
        }
        let name = key
            .strip_prefix("request.headers[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|name| http::HeaderName::from_bytes(name.as_bytes()).ok());
        match name {
            Some(name) => Ok(ConditionKey::RequestHeader(name.as_str().to_owned())),
            None => Err(UnsupportedKey(key)),
        }
    }
}

impl From<ConditionKey> for String {
    fn from(key: ConditionKey) -> String {
        key.to_string()
    }
}

impl fmt::Display for ConditionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConditionKey::RequestHeader(name) => write!(f, "request.headers[{name}]"),
            ConditionKey::SourcePrincipal => f.write_str("source.principal"),
            ConditionKey::SourceNamespace => f.write_str("source.namespace"),
        }
    }
}

impl MeshConfig {
    /// The `LocalRateLimit` on `workload`'s inbound, with `PeerAuthentication`'s precedence:
    /// one in its namespace whose selector matches, else one of its namespace without a
    /// selector, else a mesh-wide one (in `istio-system`, without a selector). Within a level
    /// the first in (namespace, name) order wins. Limits do not combine.
    pub fn local_rate_limit(&self, workload: &Workload<'_>) -> Option<&LocalRateLimit> {
        crate::rate_limit::select(&self.local_rate_limits, workload)
    }
}
