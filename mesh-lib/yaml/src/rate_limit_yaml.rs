//! The YAML side of `LocalRateLimit`: the spec as written, checked field by field so that an
//! error names the field and points at its value.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use super::ConfigError;
use crate::cx::{Cx, RawSelector, selector};
use mesh_config::Metadata;
use mesh_config::parse_duration;
use mesh_config::{
    DEFAULT_RATE_LIMIT_STATUS, LocalRateLimit, check_fill_interval, check_header_name,
    check_header_value, check_status, check_tokens, default_response_headers,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRateLimitSpec {
    selector: Option<RawSelector>,
    max_tokens: Option<Spanned<i64>>,
    tokens_per_fill: Option<Spanned<i64>>,
    fill_interval: Option<Spanned<String>>,
    response_headers: Option<RawHeaders>,
    status_code: Option<Spanned<i64>>,
}

/// `responseHeaders` in document order, each name and value with its place.
#[derive(Debug)]
struct RawHeaders(Vec<(Spanned<String>, Spanned<String>)>);

impl<'de> Deserialize<'de> for RawHeaders {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeadersVisitor;

        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = RawHeaders;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of header names to values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeaders, A::Error> {
                let mut headers = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    headers.push(entry);
                }
                Ok(RawHeaders(headers))
            }
        }

        deserializer.deserialize_map(HeadersVisitor)
    }
}

impl Cx<'_> {
    pub(super) fn local_rate_limit(
        &self,
        metadata: Metadata,
        spec: Option<Spanned<RawRateLimitSpec>>,
        doc_at: Location,
    ) -> Result<LocalRateLimit, ConfigError> {
        let spec = spec.ok_or_else(|| self.err(doc_at, "LocalRateLimit: missing `spec`"))?;
        let (spec_at, spec) = (spec.referenced, spec.value);
        let fail = |at: Location, reason: String| self.err(at, format!("LocalRateLimit: {reason}"));

        let max = spec
            .max_tokens
            .ok_or_else(|| fail(spec_at, "missing field `maxTokens`".to_owned()))?;
        let max_tokens =
            check_tokens("maxTokens", max.value).map_err(|e| fail(max.referenced, e))?;
        let tokens_per_fill = match spec.tokens_per_fill {
            None => max_tokens,
            Some(fill) => {
                check_tokens("tokensPerFill", fill.value).map_err(|e| fail(fill.referenced, e))?
            }
        };

        let interval = spec
            .fill_interval
            .ok_or_else(|| fail(spec_at, "missing field `fillInterval`".to_owned()))?;
        let fill_interval = parse_duration(&interval.value)
            .map_err(|e| format!("fillInterval: {e}"))
            .and_then(|d| check_fill_interval(d).map(|()| d))
            .map_err(|e| fail(interval.referenced, e))?;

        let response_headers = match spec.response_headers {
            None => default_response_headers(),
            Some(headers) => headers
                .0
                .into_iter()
                .map(|(name, value)| {
                    let canonical =
                        check_header_name(&name.value).map_err(|e| fail(name.referenced, e))?;
                    check_header_value(&value.value).map_err(|e| fail(value.referenced, e))?;
                    Ok((canonical, value.value))
                })
                .collect::<Result<_, ConfigError>>()?,
        };

        let status_code = match spec.status_code {
            None => DEFAULT_RATE_LIMIT_STATUS,
            Some(status) => check_status(status.value).map_err(|e| fail(status.referenced, e))?,
        };

        Ok(LocalRateLimit {
            metadata,
            selector: selector(spec.selector),
            max_tokens,
            tokens_per_fill,
            fill_interval,
            response_headers,
            status_code,
        })
    }
}
