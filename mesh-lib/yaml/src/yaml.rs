//! The YAML side: Istio resources as written, with source locations, checked and turned
//! into the [`mesh_config`] types.
//!
//! Every struct denies unknown fields, and every Istio field that the evaluator does not
//! implement is still declared so that, when it is set, loading fails with an error naming
//! it: ignoring it would silently change what a policy allows.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use super::ConfigError;
use super::net_yaml::{RawDrSpec, RawGatewaySpec, RawVsSpec};
use super::rate_limit_yaml::RawRateLimitSpec;
use crate::cx::{Cx, Origins, RawSelector, selector};
use mesh_config::{
    Action, AuthorizationPolicy, Condition, ConditionKey, MeshConfig, Metadata, MtlsMode,
    Operation, PeerAuthentication, Rule, Source,
};

const SECURITY_VERSIONS: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];
const NETWORKING_VERSIONS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];
const VIRTUAL_SERVICE: &str = "VirtualService";
const DESTINATION_RULE: &str = "DestinationRule";
const GATEWAY: &str = "Gateway";
const PEER_AUTHENTICATION: &str = "PeerAuthentication";
const AUTHORIZATION_POLICY: &str = "AuthorizationPolicy";
/// The mesh's own kinds (what Istio would need an `EnvoyFilter` for).
const MESH_VERSIONS: &[&str] = &["mesh.bookinfo.io/v1alpha1"];
const LOCAL_RATE_LIMIT: &str = "LocalRateLimit";

/// The apiVersions `kind` is read from; none for a kind the mesh does not implement
/// (`ServiceEntry`, `EnvoyFilter`, ...), which is an error rather than ignored, as an
/// unsupported field is: ignoring it would make the mesh behave otherwise than the file says.
fn versions(kind: &str) -> &'static [&'static str] {
    match kind {
        PEER_AUTHENTICATION | AUTHORIZATION_POLICY => SECURITY_VERSIONS,
        VIRTUAL_SERVICE | DESTINATION_RULE | GATEWAY => NETWORKING_VERSIONS,
        LOCAL_RATE_LIMIT => MESH_VERSIONS,
        _ => &[],
    }
}

/// A field that the evaluator does not implement: any value type, rejected when non-empty.
type Unsupported = Option<Spanned<Vec<IgnoredAny>>>;
/// A list of strings, with where it starts.
type List = Option<Spanned<Vec<String>>>;

/// One YAML document: the Kubernetes envelope, its `spec` typed by its `kind`.
#[derive(Debug)]
struct RawDoc {
    api_version: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    metadata: Option<Spanned<RawMeta>>,
    spec: RawSpec,
}

#[derive(Debug, Default)]
enum RawSpec {
    #[default]
    Absent,
    Peer(Box<Spanned<RawPeerSpec>>),
    Authz(Box<Spanned<RawAuthzSpec>>),
    VirtualService(Box<Spanned<RawVsSpec>>),
    DestinationRule(Box<Spanned<RawDrSpec>>),
    Gateway(Box<Spanned<RawGatewaySpec>>),
    LocalRateLimit(Box<Spanned<RawRateLimitSpec>>),
    /// The spec of an apiVersion and kind the mesh does not read: skipped unparsed.
    Unsupported,
    /// The spec came before the apiVersion or kind; where it was.
    BeforeKind(Location),
}

const DOC_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];

impl<'de> Deserialize<'de> for RawDoc {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = RawDoc;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a kubernetes resource (apiVersion, kind, metadata, spec)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDoc, A::Error> {
        let mut doc = RawDoc {
            api_version: None,
            kind: None,
            metadata: None,
            spec: RawSpec::Absent,
        };
        let mut seen_spec = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "apiVersion" => {
                    if doc.api_version.is_some() {
                        return Err(de::Error::duplicate_field("apiVersion"));
                    }
                    doc.api_version = Some(map.next_value()?);
                }
                "kind" => {
                    if doc.kind.is_some() {
                        return Err(de::Error::duplicate_field("kind"));
                    }
                    doc.kind = Some(map.next_value()?);
                }
                "metadata" => {
                    if doc.metadata.is_some() {
                        return Err(de::Error::duplicate_field("metadata"));
                    }
                    doc.metadata = Some(map.next_value()?);
                }
                "spec" => {
                    if seen_spec {
                        return Err(de::Error::duplicate_field("spec"));
                    }
                    seen_spec = true;
                    // The spec's shape depends on the apiVersion and kind (a Gateway API
                    // `Gateway` is not Istio's), so both must be known first. Otherwise it is
                    // skipped and reported, with its place, once parsed.
                    let (Some(api), Some(kind)) = (&doc.api_version, &doc.kind) else {
                        let spec: Spanned<IgnoredAny> = map.next_value()?;
                        doc.spec = RawSpec::BeforeKind(spec.referenced);
                        continue;
                    };
                    let kind = kind.value.as_str();
                    let supported = versions(kind).contains(&api.value.as_str());
                    doc.spec = match kind {
                        PEER_AUTHENTICATION if supported => {
                            RawSpec::Peer(Box::new(map.next_value()?))
                        }
                        AUTHORIZATION_POLICY if supported => {
                            RawSpec::Authz(Box::new(map.next_value()?))
                        }
                        VIRTUAL_SERVICE if supported => {
                            RawSpec::VirtualService(Box::new(map.next_value()?))
                        }
                        DESTINATION_RULE if supported => {
                            RawSpec::DestinationRule(Box::new(map.next_value()?))
                        }
                        GATEWAY if supported => RawSpec::Gateway(Box::new(map.next_value()?)),
                        LOCAL_RATE_LIMIT if supported => {
                            RawSpec::LocalRateLimit(Box::new(map.next_value()?))
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            RawSpec::Unsupported
                        }
                    };
                }
                other => return Err(de::Error::unknown_field(other, DOC_FIELDS)),
            }
        }
        Ok(doc)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPeerSpec {
    selector: Option<RawSelector>,
    mtls: Option<RawMtls>,
    port_level_mtls: Option<Spanned<BTreeMap<u32, RawMtls>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMtls {
    mode: Option<RawMode>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum RawMode {
    Unset,
    Strict,
    Permissive,
    Disable,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAuthzSpec {
    selector: Option<RawSelector>,
    action: Option<Spanned<RawAction>>,
    provider: Option<Spanned<IgnoredAny>>,
    rules: Option<Vec<Spanned<RawRule>>>,
    target_ref: Option<Spanned<IgnoredAny>>,
    target_refs: Option<Spanned<IgnoredAny>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum RawAction {
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    from: Option<Vec<Spanned<RawFrom>>>,
    to: Option<Vec<Spanned<RawTo>>>,
    when: Option<Vec<Spanned<RawCondition>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrom {
    source: Option<RawSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSource {
    principals: List,
    not_principals: List,
    namespaces: List,
    not_namespaces: List,
    request_principals: Unsupported,
    not_request_principals: Unsupported,
    ip_blocks: Unsupported,
    not_ip_blocks: Unsupported,
    remote_ip_blocks: Unsupported,
    not_remote_ip_blocks: Unsupported,
    service_accounts: Unsupported,
    not_service_accounts: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTo {
    operation: Option<RawOperation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawOperation {
    methods: List,
    not_methods: List,
    paths: List,
    not_paths: List,
    hosts: List,
    not_hosts: List,
    ports: Unsupported,
    not_ports: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCondition {
    key: Spanned<String>,
    values: Option<Vec<String>>,
    not_values: Option<Vec<String>>,
}

/// Parses every document of one file into `config`, adding warnings to `warnings`.
///
/// `origins` records where each virtual service was defined, for later warnings.
pub(super) fn parse_into(
    file: &str,
    text: &str,
    config: &mut MeshConfig,
    warnings: &mut Vec<String>,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    super::limits::check_text(file, text)?;
    let docs: Vec<Spanned<RawDoc>> =
        serde_saphyr::from_multiple(text).map_err(|e| ConfigError::from_yaml(file, &e))?;
    let mut cx = Cx {
        file,
        warnings,
        origins,
    };
    for doc in docs {
        cx.document(doc, config)?;
    }
    Ok(())
}

impl Cx<'_> {
    fn document(
        &mut self,
        doc: Spanned<RawDoc>,
        config: &mut MeshConfig,
    ) -> Result<(), ConfigError> {
        let at = doc.referenced;
        let doc = doc.value;
        let kind = doc
            .kind
            .ok_or_else(|| self.err(at, "missing field `kind`"))?;
        let api = doc
            .api_version
            .ok_or_else(|| self.err(at, "missing field `apiVersion`"))?;
        let (api_at, api) = (api.referenced, api.value);
        let (kind_at, kind) = (kind.referenced, kind.value);

        let supported = versions(&kind);
        if !supported.contains(&api.as_str()) {
            // "(yet)": kinds are added over time (the Gateway API's, next), and the message
            // should not read as a verdict on the file.
            return Err(if supported.is_empty() {
                self.err(kind_at, format!("{api} {kind} is not supported (yet)"))
            } else {
                self.err(
                    api_at,
                    format!(
                        "{api} {kind} is not supported (yet); the mesh reads {kind} from \
                         apiVersion {}",
                        supported.join(", ")
                    ),
                )
            });
        }
        if let RawSpec::BeforeKind(spec_at) = doc.spec {
            return Err(self.err(spec_at, "`apiVersion` and `kind` must come before `spec`"));
        }
        let metadata = self.metadata(doc.metadata, at)?;
        let key = metadata.key();
        let replaced = match doc.spec {
            RawSpec::Peer(spec) => {
                let peer = self.peer(metadata, Some(*spec))?;
                config.insert_peer_authentication(peer)
            }
            RawSpec::Authz(spec) => {
                let policy = self.authz(metadata, Some(*spec))?;
                config.insert_authorization_policy(policy)
            }
            RawSpec::VirtualService(spec) => {
                let vs = self.virtual_service(metadata, Some(*spec), at)?;
                self.origins
                    .insert(key.clone(), format!("{}:{}", self.file, kind_at.line()));
                config.insert_virtual_service(vs)
            }
            RawSpec::DestinationRule(spec) => {
                let rule = self.destination_rule(metadata, Some(*spec), at)?;
                config.insert_destination_rule(rule)
            }
            RawSpec::Gateway(spec) => {
                let gateway = self.gateway(metadata, Some(*spec), at)?;
                config.insert_gateway(gateway)
            }
            RawSpec::LocalRateLimit(spec) => {
                let limit = self.local_rate_limit(metadata, Some(*spec), at)?;
                config.insert_local_rate_limit(limit)
            }
            _ if kind == LOCAL_RATE_LIMIT => {
                config.insert_local_rate_limit(self.local_rate_limit(metadata, None, at)?)
            }
            _ if kind == VIRTUAL_SERVICE => {
                config.insert_virtual_service(self.virtual_service(metadata, None, at)?)
            }
            _ if kind == DESTINATION_RULE => {
                config.insert_destination_rule(self.destination_rule(metadata, None, at)?)
            }
            _ if kind == GATEWAY => config.insert_gateway(self.gateway(metadata, None, at)?),
            _ if kind == PEER_AUTHENTICATION => {
                config.insert_peer_authentication(self.peer(metadata, None)?)
            }
            _ => config.insert_authorization_policy(self.authz(metadata, None)?),
        };
        if replaced {
            let message = format!(
                "{}:{}: {kind} {key} is defined more than once; the later one wins",
                self.file,
                kind_at.line()
            );
            self.warn(message);
        }
        Ok(())
    }

    fn metadata(
        &self,
        raw: Option<Spanned<RawMeta>>,
        doc_at: Location,
    ) -> Result<Metadata, ConfigError> {
        let raw = raw.ok_or_else(|| self.err(doc_at, "missing field `metadata`"))?;
        let at = raw.referenced;
        let raw = raw.value;
        let name = raw
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| self.err(at, "missing field `metadata.name`"))?;
        Ok(Metadata {
            name,
            namespace: raw
                .namespace
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".to_owned()),
            labels: raw.labels.unwrap_or_default(),
            annotations: raw.annotations.unwrap_or_default(),
        })
    }

    fn peer(
        &mut self,
        metadata: Metadata,
        spec: Option<Spanned<RawPeerSpec>>,
    ) -> Result<PeerAuthentication, ConfigError> {
        let Some(spec) = spec.map(|s| s.value) else {
            return Ok(PeerAuthentication {
                metadata,
                ..PeerAuthentication::default()
            });
        };
        // Ignoring it could leave a port in PERMISSIVE that the policy makes STRICT.
        if let Some(ports) = spec.port_level_mtls.filter(|p| !p.value.is_empty()) {
            return Err(self.err(ports.referenced, "field portLevelMtls is not supported"));
        }
        let mode = match spec.mtls.and_then(|m| m.mode) {
            None | Some(RawMode::Unset) => None,
            Some(RawMode::Strict) => Some(MtlsMode::Strict),
            Some(RawMode::Permissive) => Some(MtlsMode::Permissive),
            Some(RawMode::Disable) => Some(MtlsMode::Disable),
        };
        Ok(PeerAuthentication {
            metadata,
            selector: selector(spec.selector),
            mode,
        })
    }

    fn authz(
        &self,
        metadata: Metadata,
        spec: Option<Spanned<RawAuthzSpec>>,
    ) -> Result<AuthorizationPolicy, ConfigError> {
        let Some(spec) = spec.map(|s| s.value) else {
            return Ok(AuthorizationPolicy {
                metadata,
                ..AuthorizationPolicy::default()
            });
        };
        for (name, field) in [
            ("provider", &spec.provider),
            ("targetRef", &spec.target_ref),
            ("targetRefs", &spec.target_refs),
        ] {
            if let Some(field) = field {
                return Err(self.err(field.referenced, format!("field {name} is not supported")));
            }
        }
        let action = match spec.action {
            None => Action::Allow,
            Some(action) => match action.value {
                RawAction::Allow => Action::Allow,
                RawAction::Deny => Action::Deny,
                RawAction::Audit => {
                    return Err(self.err(action.referenced, "action AUDIT is not supported"));
                }
                RawAction::Custom => {
                    return Err(self.err(action.referenced, "action CUSTOM is not supported"));
                }
            },
        };
        let rules = spec
            .rules
            .unwrap_or_default()
            .into_iter()
            .map(|rule| self.rule(rule))
            .collect::<Result<_, _>>()?;
        Ok(AuthorizationPolicy {
            metadata,
            selector: selector(spec.selector),
            action,
            rules,
        })
    }

    fn rule(&self, rule: Spanned<RawRule>) -> Result<Rule, ConfigError> {
        let rule = rule.value;
        let from = rule
            .from
            .unwrap_or_default()
            .into_iter()
            .map(|from| {
                let source = from
                    .value
                    .source
                    .ok_or_else(|| self.err(from.referenced, "`from.source` must be set"))?;
                self.source(source, from.referenced)
            })
            .collect::<Result<_, _>>()?;
        let to = rule
            .to
            .unwrap_or_default()
            .into_iter()
            .map(|to| {
                let operation = to
                    .value
                    .operation
                    .ok_or_else(|| self.err(to.referenced, "`to.operation` must be set"))?;
                self.operation(operation, to.referenced)
            })
            .collect::<Result<_, _>>()?;
        let when = rule
            .when
            .unwrap_or_default()
            .into_iter()
            .map(|c| self.condition(c))
            .collect::<Result<_, _>>()?;
        Ok(Rule { from, to, when })
    }

    fn unsupported(&self, fields: &[(&str, &Unsupported)]) -> Result<(), ConfigError> {
        for (name, field) in fields {
            if let Some(field) = field.as_ref().filter(|f| !f.value.is_empty()) {
                return Err(self.err(field.referenced, format!("field {name} is not supported")));
            }
        }
        Ok(())
    }

    fn source(&self, raw: RawSource, at: Location) -> Result<Source, ConfigError> {
        self.unsupported(&[
            ("requestPrincipals", &raw.request_principals),
            ("notRequestPrincipals", &raw.not_request_principals),
            ("ipBlocks", &raw.ip_blocks),
            ("notIpBlocks", &raw.not_ip_blocks),
            ("remoteIpBlocks", &raw.remote_ip_blocks),
            ("notRemoteIpBlocks", &raw.not_remote_ip_blocks),
            ("serviceAccounts", &raw.service_accounts),
            ("notServiceAccounts", &raw.not_service_accounts),
        ])?;
        let source = Source {
            principals: list(raw.principals),
            not_principals: list(raw.not_principals),
            namespaces: list(raw.namespaces),
            not_namespaces: list(raw.not_namespaces),
        };
        if source == Source::default() {
            return Err(self.err(at, "`from.source` must not be empty"));
        }
        Ok(source)
    }

    fn operation(&self, raw: RawOperation, at: Location) -> Result<Operation, ConfigError> {
        self.unsupported(&[("ports", &raw.ports), ("notPorts", &raw.not_ports)])?;
        for paths in [&raw.paths, &raw.not_paths].into_iter().flatten() {
            if let Some(path) = paths.value.iter().find(|p| p.contains('{')) {
                return Err(self.err(
                    paths.referenced,
                    format!("path template {path} is not supported"),
                ));
            }
        }
        let operation = Operation {
            methods: list(raw.methods),
            not_methods: list(raw.not_methods),
            paths: list(raw.paths),
            not_paths: list(raw.not_paths),
            hosts: list(raw.hosts),
            not_hosts: list(raw.not_hosts),
        };
        if operation == Operation::default() {
            return Err(self.err(at, "`to.operation` must not be empty"));
        }
        Ok(operation)
    }

    fn condition(&self, raw: Spanned<RawCondition>) -> Result<Condition, ConfigError> {
        let at = raw.referenced;
        let raw = raw.value;
        let key_at = raw.key.referenced;
        let key =
            ConditionKey::try_from(raw.key.value).map_err(|e| self.err(key_at, e.to_string()))?;
        let values = raw.values.unwrap_or_default();
        let not_values = raw.not_values.unwrap_or_default();
        if values.is_empty() && not_values.is_empty() {
            return Err(self.err(
                at,
                format!("condition {key} must set `values` or `notValues`"),
            ));
        }
        Ok(Condition {
            key,
            values,
            not_values,
        })
    }
}

fn list(raw: List) -> Vec<String> {
    raw.map(|l| l.value).unwrap_or_default()
}
