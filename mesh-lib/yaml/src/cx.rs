//! What every kind's reader shares, below all of them: the context one file is read in (its
//! name for errors, the warnings it collects, where each VirtualService came from) and the
//! `selector` every policy kind has. The readers of each kind (`yaml` for security policies
//! and the document dispatch, `net_yaml`, `rate_limit_yaml`) depend on this and not on each
//! other.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Location;

use crate::ConfigError;

/// Where each virtual service was defined (`"file:line"`), by `"namespace/name"`.
pub(crate) type Origins = BTreeMap<String, String>;

pub(crate) struct Cx<'a> {
    pub(crate) file: &'a str,
    pub(crate) warnings: &'a mut Vec<String>,
    pub(crate) origins: &'a mut Origins,
}

impl Cx<'_> {
    pub(crate) fn err(&self, at: Location, reason: impl Into<String>) -> ConfigError {
        ConfigError::at(self.file, at, reason)
    }

    pub(crate) fn warn(&mut self, message: String) {
        tracing::debug!(%message, "config warning");
        self.warnings.push(message);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawSelector {
    match_labels: Option<BTreeMap<String, String>>,
}

pub(crate) fn selector(raw: Option<RawSelector>) -> BTreeMap<String, String> {
    raw.and_then(|s| s.match_labels).unwrap_or_default()
}
