//! What every resource kind shares, below all of them: its metadata, the workload a policy is
//! evaluated for, how selectors and precedence work, and Istio's duration strings. Each kind's
//! module depends on this one and on no other kind's (the config that holds them all sits
//! above, in `model`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The namespace whose policies apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// The part of a resource's `metadata` that the mesh keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (`"default"` when the YAML leaves it out).
    pub namespace: String,
    /// `metadata.labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Metadata {
    /// `"namespace/name"`, the form used in decisions and messages.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The workload a policy is evaluated for.
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its pod labels.
    pub labels: &'a BTreeMap<String, String>,
}

impl<'a> Workload<'a> {
    /// A workload in `namespace` with `labels`.
    pub fn new(namespace: &'a str, labels: &'a BTreeMap<String, String>) -> Self {
        Workload { namespace, labels }
    }
}

/// Policies and limits are visited in (namespace, name) order, so the outcome never depends
/// on the order files were loaded in.
pub(crate) fn order(a: &Metadata, b: &Metadata) -> std::cmp::Ordering {
    (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
}

/// Whether every label a selector names has the selector's value.
pub(crate) fn selects(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A `host[:port]` without its port (`[v6]:port` keeps its brackets).
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Parses an Istio (protobuf JSON) duration: `"7s"`, `"0.5s"`, `"100ms"`, `"1m30s"`, `"1h"`,
/// also `"us"`/`"µs"`/`"ns"` units. Returns a reason when it is not one.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (expected e.g. \"7s\", \"0.5s\", \"100ms\")");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        if number.is_empty() || number.starts_with('.') && number.len() == 1 {
            return Err(bad());
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per_unit: f64 = match unit {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return Err(bad()),
        };
        let nanos = (value * nanos_per_unit).round();
        if !nanos.is_finite() || nanos > 1e20 {
            return Err(bad());
        }
        total = total
            .checked_add(Duration::from_nanos(nanos as u64))
            .ok_or_else(bad)?;
        rest = tail;
    }
    Ok(total)
}

/// Formats a duration the way Istio writes one: `"7s"`, `"500ms"`, `"1.5s"`, `"250us"`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        "0s".to_owned()
    } else if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", d.as_secs())
    } else if nanos.is_multiple_of(1_000_000) && nanos < 1_000_000_000 {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) && nanos < 1_000_000 {
        format!("{}us", nanos / 1_000)
    } else {
        let fraction = format!("{:09}", d.subsec_nanos());
        format!("{}.{}s", d.as_secs(), fraction.trim_end_matches('0'))
    }
}

pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => super::parse_duration(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}
