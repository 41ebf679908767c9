//! Reads the mesh's config as an Istio user writes it: security (`PeerAuthentication`,
//! `AuthorizationPolicy`) and traffic-management (`VirtualService`, `DestinationRule`,
//! `Gateway`) resources, plus the mesh's own `LocalRateLimit`, from YAML files and
//! directories into the [`mesh_config`] types. meshd, the launcher and tests link it; data
//! planes do not (they receive the config meshd read).
//!
//! The mesh reads the same YAML an Istio user would `kubectl apply`, so the Bookinfo
//! security tutorials work unchanged. Loading is strict on purpose: an unknown field, or an
//! Istio field the mesh does not implement (for example `ipBlocks`), is an error with its
//! file, line and column, because silently ignoring part of a security policy would change
//! what it allows. A file that fails to load contributes nothing, so a caller can keep its
//! last good version. The same holds for a kind the mesh does not implement (`ServiceEntry`,
//! `EnvoyFilter`, a Gateway API `Gateway`, ...): an error naming its apiVersion and kind,
//! checked before its spec is read. Only fields that tune performance or visibility and
//! cannot change where a request goes or who may send it are accepted and ignored (README
//! lists them). Sizes are bounded ([`mesh_config::MAX_FILE_BYTES`],
//! [`mesh_config::MAX_STRING_BYTES`], [`mesh_config::MAX_HOST_BYTES`],
//! [`mesh_config::MAX_CONFIG_JSON_BYTES`]) so that config can always be shipped in one
//! snapshot.
//!
//! - [`load_dir`] / [`parse_file`]: YAML (multi-document) to a [`MeshConfig`] plus warnings.
//! - [`Watched`]: meshd's watched directories, loaded and reloaded file by file.

mod cx;
mod dirs;
#[cfg(test)]
mod dirs_tests;
mod limits;
#[cfg(test)]
mod limits_tests;
#[cfg(test)]
mod net_tests;
mod net_yaml;
#[cfg(test)]
mod rate_limit_tests;
mod rate_limit_yaml;
#[cfg(test)]
mod tests;
mod yaml;

use std::fmt;
use std::path::Path;

pub use dirs::{Documents, Reload, Watched};
use mesh_config::MeshConfig;
// The tests (`super::*`) read the model's whole face.
#[cfg(test)]
use mesh_config::*;

/// A configuration that loaded, with what was accepted but ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The resources.
    pub config: MeshConfig,
    /// Human-readable notes on what was ignored, each starting with its file name.
    pub warnings: Vec<String>,
}

/// Why a configuration did not load: `file:line:column: reason` when the place is known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Located(self))]
pub struct ConfigError {
    /// The file name as given to [`parse_file`] (or the path for [`load_dir`]).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

struct Located<'a>(&'a ConfigError);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        match (e.line, e.column) {
            (Some(line), Some(column)) => write!(f, "{}:{line}:{column}: {}", e.file, e.reason),
            (Some(line), None) => write!(f, "{}:{line}: {}", e.file, e.reason),
            _ => write!(f, "{}: {}", e.file, e.reason),
        }
    }
}

impl ConfigError {
    /// An error with no known place in the file.
    pub fn new(file: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.into(),
            line: None,
            column: None,
            reason: reason.into(),
        }
    }

    fn at(file: &str, at: serde_saphyr::Location, reason: impl Into<String>) -> Self {
        let known = |n: u64| usize::try_from(n).ok().filter(|n| *n > 0);
        let line = known(at.line());
        ConfigError {
            file: file.to_owned(),
            line,
            column: line.and_then(|_| known(at.column())),
            reason: reason.into(),
        }
    }

    fn from_yaml(file: &str, error: &serde_saphyr::Error) -> Self {
        use serde_saphyr::MessageFormatter as _;
        let error = error.without_snippet();
        let reason = serde_saphyr::DefaultMessageFormatter
            .format_message(error)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>();
        match error.location() {
            Some(at) => ConfigError::at(file, at, reason),
            None => ConfigError::new(file, reason),
        }
    }
}

/// Parses one YAML file (any number of documents; empty ones are skipped).
///
/// `file` is only used to name the file in errors and warnings.
pub fn parse_file(file: &str, text: &str) -> Result<Loaded, ConfigError> {
    let mut loaded = Loaded::default();
    let mut origins = cx::Origins::new();
    yaml::parse_into(
        file,
        text,
        &mut loaded.config,
        &mut loaded.warnings,
        &mut origins,
    )?;
    net_yaml::check_subsets(&loaded.config, &origins, &mut loaded.warnings);
    Ok(loaded)
}

/// Loads every `*.yaml` / `*.yml` file directly in `dir` (not recursively, hidden files
/// skipped), all or nothing: any bad file fails the whole load. This is the check for a
/// directory as a whole (tests, CI); meshd watches its directories with [`Watched`], which
/// rejects a bad file alone.
///
/// Files are read as [`Watched`] merges them, from the least to the most recently modified
/// (then by name), so a resource defined twice (same kind, namespace and name) keeps the
/// definition from the file changed last, and adds a warning. A route to a subset that no
/// `DestinationRule` defines adds a warning.
pub fn load_dir(dir: &Path) -> Result<Loaded, ConfigError> {
    let mut loaded = Loaded::default();
    let mut origins = cx::Origins::new();
    let mut files = dirs::yaml_files(dir)?;
    files.sort_by_cached_key(|(name, path)| (dirs::modified(path), name.clone()));
    for (_, path) in files {
        let file = path.display().to_string();
        let text = dirs::read_file(&path)?;
        tracing::debug!(file = %file, "loading mesh config");
        yaml::parse_into(
            &file,
            &text,
            &mut loaded.config,
            &mut loaded.warnings,
            &mut origins,
        )?;
    }
    // Subsets may be defined in any file, so references are checked once all are read.
    net_yaml::check_subsets(&loaded.config, &origins, &mut loaded.warnings);
    Ok(loaded)
}
