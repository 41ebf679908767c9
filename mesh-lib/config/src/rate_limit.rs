//! `LocalRateLimit` (`mesh.bookinfo.io/v1alpha1`): a token bucket on a workload's inbound.
//!
//! Istio itself needs an `EnvoyFilter` for local rate limiting, so this is the mesh's own
//! kind. It names the same knobs as Envoy's local rate limit filter (`maxTokens`,
//! `tokensPerFill`, `fillInterval`) and is selected like a `PeerAuthentication`: the most
//! specific applicable resource wins, so a workload is limited by at most one bucket.
//!
//! A [`LocalRateLimit`] is checked when it is parsed from YAML and again when it is read from
//! JSON, so a shipped configuration cannot hold an empty bucket or a non-error status.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::meta::{Metadata, ROOT_NAMESPACE, Workload, duration, order, selects};

/// The header a throttled response carries when `responseHeaders` is left out.
pub const DEFAULT_RATE_LIMIT_HEADER: (&str, &str) = ("x-local-rate-limit", "true");

/// The status a throttled request gets when `statusCode` is left out.
pub const DEFAULT_RATE_LIMIT_STATUS: u16 = 429;

/// A `LocalRateLimit`: a token bucket on the inbound requests of the workloads it selects.
///
/// The bucket starts full with `max_tokens` tokens; every `fill_interval` it gains
/// `tokens_per_fill` (never more than `max_tokens`). A request takes one token, and when none
/// is left it is answered with `status_code` and `response_headers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "RawJson")]
pub struct LocalRateLimit {
    /// Name and namespace.
    pub metadata: Metadata,
    /// `selector.matchLabels`; empty means every workload of the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// `maxTokens`: the bucket size, at least 1.
    pub max_tokens: u32,
    /// `tokensPerFill`: tokens added per fill, at least 1 (defaults to `max_tokens`).
    pub tokens_per_fill: u32,
    /// `fillInterval`: how often tokens are added; more than zero. Serialized as Istio
    /// writes durations (`"60s"`, `"500ms"`).
    #[serde(with = "duration")]
    pub fill_interval: Duration,
    /// `responseHeaders`: added to every throttled response, names lowercased. Defaults to
    /// [`DEFAULT_RATE_LIMIT_HEADER`]; an explicit empty map adds none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub response_headers: BTreeMap<String, String>,
    /// `statusCode`: the status of a throttled response, in `400..=599` (default 429).
    pub status_code: u16,
}

impl LocalRateLimit {
    /// A limit of `max_tokens` per `fill_interval` with every default: refilled to full,
    /// answered with 429 and [`DEFAULT_RATE_LIMIT_HEADER`].
    pub fn new(metadata: Metadata, max_tokens: u32, fill_interval: Duration) -> Self {
        LocalRateLimit {
            metadata,
            selector: BTreeMap::new(),
            max_tokens,
            tokens_per_fill: max_tokens,
            fill_interval,
            response_headers: default_response_headers(),
            status_code: DEFAULT_RATE_LIMIT_STATUS,
        }
    }

    /// Checks the invariants the YAML loader enforces; the reason names the field.
    pub fn validate(&self) -> Result<(), String> {
        check_tokens("maxTokens", i64::from(self.max_tokens))?;
        check_tokens("tokensPerFill", i64::from(self.tokens_per_fill))?;
        check_fill_interval(self.fill_interval)?;
        check_status(i64::from(self.status_code))?;
        for (name, value) in &self.response_headers {
            let canonical = check_header_name(name)?;
            if canonical != *name {
                return Err(format!(
                    "responseHeaders: header name {name:?} must be lowercase"
                ));
            }
            check_header_value(value)?;
        }
        Ok(())
    }
}

pub fn default_response_headers() -> BTreeMap<String, String> {
    BTreeMap::from([(
        DEFAULT_RATE_LIMIT_HEADER.0.to_owned(),
        DEFAULT_RATE_LIMIT_HEADER.1.to_owned(),
    )])
}

/// `maxTokens` / `tokensPerFill`: 1 to `u32::MAX`.
pub fn check_tokens(field: &str, value: i64) -> Result<u32, String> {
    u32::try_from(value)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("{field} must be between 1 and {} (got {value})", u32::MAX))
}

pub fn check_fill_interval(interval: Duration) -> Result<(), String> {
    if interval.is_zero() {
        Err("fillInterval must be more than zero".to_owned())
    } else {
        Ok(())
    }
}

pub fn check_status(value: i64) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|s| (400..=599).contains(s))
        .ok_or_else(|| format!("statusCode must be in 400..=599 (got {value})"))
}

/// The header name in its canonical (lowercase) form.
pub fn check_header_name(name: &str) -> Result<String, String> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map(|n| n.as_str().to_owned())
        .map_err(|_| format!("responseHeaders: invalid header name {name:?}"))
}

pub fn check_header_value(value: &str) -> Result<(), String> {
    http::HeaderValue::from_str(value)
        .map(drop)
        .map_err(|_| format!("responseHeaders: invalid header value {value:?}"))
}

/// The JSON form, checked before it becomes a [`LocalRateLimit`].
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawJson {
    metadata: Metadata,
    #[serde(default)]
    selector: BTreeMap<String, String>,
    max_tokens: u32,
    tokens_per_fill: u32,
    #[serde(with = "duration")]
    fill_interval: Duration,
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
    status_code: u16,
}

impl TryFrom<RawJson> for LocalRateLimit {
    type Error = String;

    fn try_from(raw: RawJson) -> Result<Self, String> {
        let limit = LocalRateLimit {
            metadata: raw.metadata,
            selector: raw.selector,
            max_tokens: raw.max_tokens,
            tokens_per_fill: raw.tokens_per_fill,
            fill_interval: raw.fill_interval,
            response_headers: raw.response_headers,
            status_code: raw.status_code,
        };
        limit
            .validate()
            .map_err(|e| format!("LocalRateLimit {}: {e}", limit.metadata.key()))?;
        Ok(limit)
    }
}

/// The `LocalRateLimit` on `workload`'s inbound, with `PeerAuthentication`'s precedence:
/// one in its namespace whose selector matches, else one of its namespace without a
/// selector, else a mesh-wide one (in `istio-system`, without a selector). Within a level
/// the first in (namespace, name) order wins. Limits do not combine.
pub(crate) fn select<'a>(
    limits: &'a [LocalRateLimit],
    workload: &Workload<'_>,
) -> Option<&'a LocalRateLimit> {
    let mut limits: Vec<&LocalRateLimit> = limits.iter().collect();
    limits.sort_by(|a, b| order(&a.metadata, &b.metadata));

    let in_namespace = |l: &LocalRateLimit| l.metadata.namespace == workload.namespace;
    let workload_level = || {
        limits.iter().copied().find(|l| {
            in_namespace(l) && !l.selector.is_empty() && selects(&l.selector, workload.labels)
        })
    };
    let namespace_level = || {
        limits
            .iter()
            .copied()
            .find(|l| in_namespace(l) && l.selector.is_empty())
    };
    let mesh_level = || {
        limits
            .iter()
            .copied()
            .find(|l| l.metadata.namespace == ROOT_NAMESPACE && l.selector.is_empty())
    };
    workload_level()
        .or_else(namespace_level)
        .or_else(mesh_level)
}
