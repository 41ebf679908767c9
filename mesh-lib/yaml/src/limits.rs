//! Size limits on mesh config, checked where YAML comes in, so that nothing a user writes can
//! grow the snapshot past what data planes accept: meshd ships the merged config as JSON in
//! one gRPC message, and tonic refuses messages above 4 MiB by default, which would break every
//! data plane's watch at once, not only the workload a resource names.
//!
//! - a file: at most [`MAX_FILE_BYTES`], checked before it is read;
//! - a string (any scalar or key in the YAML): at most [`MAX_STRING_BYTES`]; a host (in a
//!   VirtualService, DestinationRule, route destination or Gateway server) at most
//!   [`MAX_HOST_BYTES`], a DNS name's limit;
//! - YAML aliases: the strings of a file, once aliases are expanded, at most
//!   [`MAX_FILE_BYTES`] in all (without aliases they cannot exceed the file);
//! - the merged config (base and every directory) as JSON: at most [`MAX_CONFIG_JSON_BYTES`].
//!
//! serde-saphyr's own `Budget` (its defaults are in force) bounds events, nodes, nesting,
//! anchors and alias replays, but its byte limits are for reader input and for all scalars
//! together, not per file read from disk or per string, so those two are checked here.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use mesh_config::{MAX_FILE_BYTES, MAX_HOST_BYTES, MAX_STRING_BYTES};

use super::ConfigError;

/// The error for a file of `len` bytes, if above [`MAX_FILE_BYTES`].
pub(super) fn check_file_len(file: &str, len: u64) -> Result<(), ConfigError> {
    if len > MAX_FILE_BYTES {
        return Err(ConfigError::new(
            file,
            format!("file is {len} bytes, above the limit of {MAX_FILE_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Checks a file's size and its strings before it is parsed for real.
pub(super) fn check_text(file: &str, text: &str) -> Result<(), ConfigError> {
    check_file_len(file, text.len() as u64)?;
    // A scan accepts every node, so it fails only where the YAML itself does (syntax, the
    // parser's budget), with the error the typed parse would give.
    let docs = serde_saphyr::from_multiple::<Spanned<Scan>>(text)
        .map_err(|e| ConfigError::from_yaml(file, &e))?;
    let mut total = 0usize;
    for doc in docs {
        let strings = doc.value.0;
        total = total.saturating_add(strings.total);
        if let Some((len, at)) = strings.longest
            && len > MAX_STRING_BYTES
        {
            let at = at.unwrap_or(doc.referenced);
            return Err(ConfigError::at(
                file,
                at,
                format!("a string of {len} bytes is above the limit of {MAX_STRING_BYTES} bytes"),
            ));
        }
    }
    if total as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::new(
            file,
            format!(
                "the file's strings are {total} bytes once YAML aliases are expanded, above the \
                 limit of {MAX_FILE_BYTES} bytes"
            ),
        ));
    }
    Ok(())
}

/// A host's length checked against [`MAX_HOST_BYTES`]; `None` when it is fine.
pub(super) fn host_too_long(owner: &str, host: &str) -> Option<String> {
    (host.len() > MAX_HOST_BYTES).then(|| {
        format!(
            "{owner}: a host of {} bytes is longer than a DNS name may be ({MAX_HOST_BYTES} bytes)",
            host.len()
        )
    })
}

/// The strings of a YAML node: the longest (with its place once known) and their sum.
#[derive(Debug, Default)]
struct Strings {
    longest: Option<(usize, Option<Location>)>,
    total: usize,
}

impl Strings {
    fn one(len: usize) -> Self {
        Strings {
            longest: Some((len, None)),
            total: len,
        }
    }

    fn add(&mut self, child: Spanned<Scan>) {
        let Strings { longest, total } = child.value.0;
        self.total = self.total.saturating_add(total);
        if let Some((len, at)) = longest
            && self.longest.is_none_or(|(max, _)| len > max)
        {
            self.longest = Some((len, at.or(Some(child.referenced))));
        }
    }
}

/// Any YAML node, reduced to what the limits need; it never fails on content, so every
/// document scans and only the limits decide.
#[derive(Debug)]
struct Scan(Strings);

impl<'de> Deserialize<'de> for Scan {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScanVisitor)
    }
}

struct ScanVisitor;

impl<'de> Visitor<'de> for ScanVisitor {
    type Value = Scan;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any yaml node")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Scan, E> {
        Ok(Scan(Strings::default()))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Scan, E> {
        Ok(Scan(Strings::default()))
    }

    fn visit_i128<E>(self, _: i128) -> Result<Scan, E> {
        Ok(Scan(Strings::default()))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Scan, E> {
        Ok(Scan(Strings::default()))
    }

    fn visit_u128<E>(self, _: u128) -> Result<Scan, E> {
        Ok(Scan(Strings::default()))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Scan, E> {
        Ok(Scan(Strings::default()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Scan, E> {
        Ok(Scan(Strings::one(v.len())))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Scan, E> {
        Ok(Scan(Strings::one(v.len())))
    }

    fn visit_none<E>(self) -> Result<Scan, E> {
        Ok(Scan(Strings::default()))
    }

    fn visit_unit<E>(self) -> Result<Scan, E> {
        Ok(Scan(Strings::default()))
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Scan, D::Error> {
        Scan::deserialize(deserializer)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Scan, D::Error> {
        Scan::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scan, A::Error> {
        let mut strings = Strings::default();
        while let Some(item) = seq.next_element::<Spanned<Scan>>()? {
            strings.add(item);
        }
        Ok(Scan(strings))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scan, A::Error> {
        let mut strings = Strings::default();
        while let Some(key) = map.next_key::<Spanned<Scan>>()? {
            strings.add(key);
            strings.add(map.next_value::<Spanned<Scan>>()?);
        }
        Ok(Scan(strings))
    }
}
