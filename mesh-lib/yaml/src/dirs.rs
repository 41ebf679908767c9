//! Watched config directories, loaded file by file, so one bad file never freezes the rest:
//! meshd reloads its directories as they change, and a config a user is editing is sometimes
//! wrong; if that held back every other change, a broken route file would also hold back the
//! security policy written next to it.
//!
//! [`Watched`] remembers, per file, the last version that parsed and fitted (the version *in
//! force*) and the fingerprint (size, modification time) it last read. Each
//! [`reload`](Watched::reload) re-reads only files whose fingerprint changed:
//!
//! - a file that parses replaces its previous version;
//! - a file that does not (bad YAML, an unsupported field, over a [size limit](super::limits))
//!   is rejected alone, with `file:line:column: reason`; its previous version, if it had
//!   one, stays in force, and it is read again when it changes;
//! - a removed file's resources go;
//! - a change that would take the merged config over
//!   [`MAX_CONFIG_JSON_BYTES`](mesh_config::MAX_CONFIG_JSON_BYTES) is rejected, the file's
//!   previous version stays (changes in one reload are tried together first, then one by
//!   one in merge order, so the others still apply).
//!
//! Merge order is that of [`MeshConfig::merge`], a later definition of a resource (kind,
//! namespace, name) replacing an earlier one: the base, then each directory in order, its
//! files from the least to the most recently changed. So a resource defined in two files of
//! one directory is the one from the file changed last, as with `kubectl apply`, where the
//! last applied wins (name order would let an older file beat a newer one by its name), and
//! a warning names both. "Changed" is the version in force: by modification time, then (equal
//! times) by the reload that first read that version, then by name. After a restart every
//! file is read by the same reload, so the result depends only on the files' times and names.
//! In-memory [`Documents`] have no times: their order is that of the reloads that read them.
//! Checks that need every file (a route's subset may be defined in another file or
//! directory) run once over the merged config.
//!
//! A directory that cannot be listed at [`open`](Watched::open) is an error (it is almost
//! always a mistyped path); one that becomes unreadable later keeps its files in force, as a
//! remount is likelier than an intended emptying, and it is reported once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use mesh_config::{MAX_FILE_BYTES, check_config_size};

use super::limits;
use super::net_yaml;
use super::{ConfigError, yaml};
use crate::cx::Origins;
use mesh_config::MeshConfig;

/// Size and modification time: a change in either means the file is read again.
type Fingerprint = (u64, Option<SystemTime>);

/// When a version went in force, for merge order: its file's modification time, then the
/// number of the reload that read it (see the module's doc).
type Changed = (Option<SystemTime>, u64);

/// The config of a set of watched directories over a base.
#[derive(Debug)]
pub struct Watched {
    base: MeshConfig,
    dirs: Vec<Dir>,
    merged: MeshConfig,
    /// Warnings about the merged config as last reported, so each is logged once.
    merged_warnings: BTreeSet<String>,
    /// Reloads so far: what breaks ties between versions read at equal modification times.
    reloads: u64,
}

/// Documents kept in memory by another source (meshd's Kubernetes source: one per object),
/// watched like the files of a directory: each has a name (its place in merge order, and what
/// errors name) and a text, and a changed text is parsed again on the next reload, which
/// [`changes`](Documents::changes) tells the watcher to run.
#[derive(Debug, Clone, Default)]
pub struct Documents {
    state: Arc<Mutex<DocumentsState>>,
    /// How many changes so far: a watch channel holds only the latest, so a burst of changes
    /// is one wake-up and none is lost.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

#[derive(Debug, Default)]
struct DocumentsState {
    by_name: BTreeMap<String, (u64, String)>,
    revision: u64,
}

impl Documents {
    fn lock(&self) -> std::sync::MutexGuard<'_, DocumentsState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes whenever a document is added, replaced or removed (its value counts them).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        // `send_modify`, not `send`: it updates the value even while nobody subscribes.
        self.changes.send_modify(|n| *n += 1);
    }

    /// Adds or replaces `name`.
    pub fn put(&self, name: &str, text: String) {
        {
            let mut state = self.lock();
            if state.by_name.get(name).is_some_and(|(_, t)| *t == text) {
                return;
            }
            state.revision += 1;
            let revision = state.revision;
            state.by_name.insert(name.to_owned(), (revision, text));
        }
        self.changed();
    }

    pub fn remove(&self, name: &str) {
        if self.lock().by_name.remove(name).is_some() {
            self.changed();
        }
    }

    /// Replaces every document whose name starts with `prefix` by `documents` (a relist).
    pub fn replace_all(&self, prefix: &str, documents: Vec<(String, String)>) {
        let keep: BTreeSet<&str> = documents.iter().map(|(n, _)| n.as_str()).collect();
        let gone: Vec<String> = self
            .lock()
            .by_name
            .keys()
            .filter(|n| n.starts_with(prefix) && !keep.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.remove(&name);
        }
        for (name, text) in documents {
            self.put(&name, text);
        }
    }

    /// The names in merge order.
    pub fn names(&self) -> Vec<String> {
        self.lock().by_name.keys().cloned().collect()
    }

    fn revision(&self, name: &str) -> Option<u64> {
        self.lock().by_name.get(name).map(|(r, _)| *r)
    }

    fn text(&self, name: &str) -> Option<String> {
        self.lock().by_name.get(name).map(|(_, t)| t.clone())
    }
}

#[derive(Debug)]
struct Dir {
    path: PathBuf,
    /// `Some`: not a directory on disk but documents in memory (`path` only names them).
    documents: Option<Documents>,
    /// By file name: iteration order is merge order.
    files: BTreeMap<String, FileState>,
    /// Why the directory could not be listed at the last poll (reported once).
    unreadable: Option<String>,
}

#[derive(Debug)]
struct FileState {
    path: PathBuf,
    /// `None`: the file is gone (its version in force stays only if its removal was refused).
    seen: Option<Fingerprint>,
    in_force: Option<Parsed>,
}

#[derive(Debug, Clone)]
struct Parsed {
    config: MeshConfig,
    origins: Origins,
    changed: Changed,
}

/// What one load or reload did.
#[derive(Debug, Default)]
pub struct Reload {
    /// The merged config differs from before.
    pub changed: bool,
    /// What was rejected, each with its file (or directory), place and reason. The rest
    /// applied.
    pub errors: Vec<ConfigError>,
    /// Warnings raised by this reload (none repeated from earlier reloads).
    pub warnings: Vec<String>,
}

/// One file's new version (or removal), not yet in force.
struct Change {
    dir: usize,
    name: String,
    new: Option<Parsed>,
    warnings: Vec<String>,
}

impl Watched {
    /// Loads every directory over `base`. Bad files are in the returned [`Reload`]'s errors,
    /// not an error here; only a directory that cannot be listed is.
    pub fn open(base: MeshConfig, dirs: Vec<PathBuf>) -> Result<(Self, Reload), ConfigError> {
        Self::open_with(base, dirs, Vec::new())
    }

    /// [`open`](Self::open), with in-memory document sets merged after the directories, in
    /// order, each named by its label in errors (`<label>/<document>`).
    pub fn open_with(
        base: MeshConfig,
        dirs: Vec<PathBuf>,
        documents: Vec<(String, Documents)>,
    ) -> Result<(Self, Reload), ConfigError> {
        for dir in &dirs {
            yaml_files(dir)?;
        }
        let files = dirs.into_iter().map(|path| Dir {
            path,
            documents: None,
            files: BTreeMap::new(),
            unreadable: None,
        });
        let memory = documents.into_iter().map(|(label, documents)| Dir {
            path: PathBuf::from(label),
            documents: Some(documents),
            files: BTreeMap::new(),
            unreadable: None,
        });
        let mut watched = Watched {
            merged: base.clone(),
            base,
            dirs: files.chain(memory).collect(),
            merged_warnings: BTreeSet::new(),
            reloads: 0,
        };
        let reload = watched.reload();
        Ok((watched, reload))
    }

    /// The merged config in force.
    pub fn config(&self) -> &MeshConfig {
        &self.merged
    }

    /// Reads what changed since the last load and applies what is good.
    pub fn reload(&mut self) -> Reload {
        let mut reload = Reload::default();
        let changes = self.scan(&mut reload.errors);
        if changes.is_empty() {
            return reload;
        }
        let before = self.merged.clone();
        self.apply(changes, &mut reload);
        for dir in &mut self.dirs {
            dir.files
                .retain(|_, f| f.seen.is_some() || f.in_force.is_some());
        }
        let now = self.merged_warnings();
        reload
            .warnings
            .extend(now.difference(&self.merged_warnings).cloned());
        self.merged_warnings = now;
        reload.changed = self.merged != before;
        reload
    }

    /// Lists every directory and parses the files that changed.
    fn scan(&mut self, errors: &mut Vec<ConfigError>) -> Vec<Change> {
        self.reloads += 1;
        let reload = self.reloads;
        let mut changes = Vec::new();
        for (index, dir) in self.dirs.iter_mut().enumerate() {
            let listed = match dir.list() {
                Ok(listed) => {
                    dir.unreadable = None;
                    listed
                }
                Err(mut e) => {
                    if dir.unreadable.as_ref() != Some(&e.reason) {
                        dir.unreadable = Some(e.reason.clone());
                        e.reason.push_str("; its files stay in force as last read");
                        errors.push(e);
                    }
                    continue;
                }
            };
            let present: BTreeSet<&str> = listed.iter().map(|(name, _)| name.as_str()).collect();
            for (name, state) in &mut dir.files {
                if !present.contains(name.as_str()) && state.seen.take().is_some() {
                    changes.push(Change {
                        dir: index,
                        name: name.clone(),
                        new: None,
                        warnings: Vec::new(),
                    });
                }
            }
            for (name, path) in &listed {
                let seen = dir.documents.as_ref().map_or_else(
                    || fingerprint(path),
                    |d| (d.revision(name).unwrap_or(0), None),
                );
                let state = dir.files.entry(name.clone()).or_insert_with(|| FileState {
                    path: path.clone(),
                    seen: None,
                    in_force: None,
                });
                if state.seen == Some(seen) {
                    continue;
                }
                state.seen = Some(seen);
                tracing::debug!(file = %path.display(), "loading mesh config");
                let text = match &dir.documents {
                    None => read_file(path),
                    Some(d) => d
                        .text(name)
                        .ok_or_else(|| {
                            ConfigError::new(path.display().to_string(), "removed while read")
                        })
                        .and_then(|text| {
                            limits::check_file_len(&path.display().to_string(), text.len() as u64)
                                .map(|()| text)
                        }),
                };
                let changed = (seen.1, reload);
                match text.and_then(|text| parse(&path.display().to_string(), &text, changed)) {
                    Ok((parsed, warnings)) => changes.push(Change {
                        dir: index,
                        name: name.clone(),
                        new: Some(parsed),
                        warnings,
                    }),
                    Err(mut e) => {
                        e.reason.push_str(if state.in_force.is_some() {
                            "; its previous version stays in force"
                        } else {
                            "; nothing from it is in force"
                        });
                        errors.push(e);
                    }
                }
            }
        }
        changes.sort_by(|a, b| {
            let key = |c: &Change| (c.dir, c.new.as_ref().map(|p| p.changed), c.name.clone());
            key(a).cmp(&key(b))
        });
        changes
    }

    /// Puts the changes in force, all together if the result fits in a snapshot, else each
    /// that still fits, in merge order.
    fn apply(&mut self, changes: Vec<Change>, reload: &mut Reload) {
        let previous: Vec<Option<Parsed>> = changes
            .iter()
            .map(|c| self.set(c.dir, &c.name, c.new.clone()))
            .collect();
        let merged = self.merge();
        if check_config_size(&merged).is_ok() {
            self.merged = merged;
            reload
                .warnings
                .extend(changes.into_iter().flat_map(|c| c.warnings));
            return;
        }
        for (change, old) in changes.iter().zip(previous) {
            self.set(change.dir, &change.name, old);
        }
        for change in changes {
            let old = self.set(change.dir, &change.name, change.new);
            let merged = self.merge();
            match check_config_size(&merged) {
                Ok(_) => {
                    self.merged = merged;
                    reload.warnings.extend(change.warnings);
                }
                Err(e) => {
                    let state = &self.dirs[change.dir].files[&change.name];
                    let what = if state.seen.is_some() {
                        "this version of the file is not applied"
                    } else {
                        "its removal is not applied"
                    };
                    let stays = if old.is_some() {
                        "its previous version stays in force"
                    } else {
                        "nothing from it is in force"
                    };
                    reload.errors.push(ConfigError::new(
                        state.path.display().to_string(),
                        format!("{e}; {what}, {stays}"),
                    ));
                    self.set(change.dir, &change.name, old);
                }
            }
        }
    }

    /// Puts `new` in force for one file; returns what was.
    fn set(&mut self, dir: usize, name: &str, new: Option<Parsed>) -> Option<Parsed> {
        let state = self.dirs[dir]
            .files
            .get_mut(name)
            .expect("a changed file has a state");
        std::mem::replace(&mut state.in_force, new)
    }

    /// The base, then every file in force, in merge order.
    fn merge(&self) -> MeshConfig {
        let mut merged = self.base.clone();
        for parsed in self.in_force() {
            merged.merge(parsed.config.clone());
        }
        merged
    }

    fn in_force(&self) -> impl Iterator<Item = &Parsed> {
        self.dirs
            .iter()
            .flat_map(Dir::in_merge_order)
            .map(|(_, parsed)| parsed)
    }

    /// What only the merged config shows: routes to subsets no DestinationRule anywhere
    /// defines, and a resource defined in two files of one directory, naming both (across
    /// directories, replacing is what a later directory is for).
    fn merged_warnings(&self) -> BTreeSet<String> {
        let mut warnings = Vec::new();
        let mut origins: Origins = self
            .base
            .virtual_services
            .iter()
            .map(|vs| (vs.metadata.key(), "base config".to_owned()))
            .collect();
        for parsed in self.in_force() {
            origins.extend(parsed.origins.clone());
        }
        net_yaml::check_subsets(&self.merged, &origins, &mut warnings);
        for dir in &self.dirs {
            let mut defined: BTreeMap<(&str, String), &Path> = BTreeMap::new();
            for (state, parsed) in dir.in_merge_order() {
                for (kind, key) in resources(&parsed.config) {
                    if let Some(earlier) = defined.insert((kind, key.clone()), &state.path) {
                        warnings.push(format!(
                            "{}: {kind} {key} is also defined in {}; this file's wins, as the \
                             more recently changed (as with kubectl apply)",
                            state.path.display(),
                            earlier.display()
                        ));
                    }
                }
            }
        }
        warnings.into_iter().collect()
    }
}

impl Dir {
    /// The files with a version in force, from the least to the most recently changed.
    fn in_merge_order(&self) -> Vec<(&FileState, &Parsed)> {
        let mut files: Vec<(&String, &FileState, &Parsed)> = self
            .files
            .iter()
            .filter_map(|(name, f)| f.in_force.as_ref().map(|p| (name, f, p)))
            .collect();
        files.sort_by(|a, b| (a.2.changed, a.0).cmp(&(b.2.changed, b.0)));
        files.into_iter().map(|(_, f, p)| (f, p)).collect()
    }

    /// The documents to read, by name, with the path that names each.
    fn list(&self) -> Result<Vec<(String, PathBuf)>, ConfigError> {
        match &self.documents {
            None => yaml_files(&self.path),
            Some(d) => Ok(d
                .names()
                .into_iter()
                .map(|name| {
                    let path = self.path.join(&name);
                    (name, path)
                })
                .collect()),
        }
    }
}

/// Every resource of `config` by kind and `namespace/name`.
fn resources(config: &MeshConfig) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut add = |kind: &'static str, metas: &mut dyn Iterator<Item = &mesh_config::Metadata>| {
        out.extend(metas.map(|m| (kind, m.key())));
    };
    add(
        "PeerAuthentication",
        &mut config.peer_authentications.iter().map(|r| &r.metadata),
    );
    add(
        "AuthorizationPolicy",
        &mut config.authorization_policies.iter().map(|r| &r.metadata),
    );
    add(
        "VirtualService",
        &mut config.virtual_services.iter().map(|r| &r.metadata),
    );
    add(
        "DestinationRule",
        &mut config.destination_rules.iter().map(|r| &r.metadata),
    );
    add("Gateway", &mut config.gateways.iter().map(|r| &r.metadata));
    add(
        "LocalRateLimit",
        &mut config.local_rate_limits.iter().map(|r| &r.metadata),
    );
    out
}

/// One file's resources, origins and warnings.
fn parse(file: &str, text: &str, changed: Changed) -> Result<(Parsed, Vec<String>), ConfigError> {
    let mut parsed = Parsed {
        config: MeshConfig::default(),
        origins: Origins::new(),
        changed,
    };
    let mut warnings = Vec::new();
    yaml::parse_into(
        file,
        text,
        &mut parsed.config,
        &mut warnings,
        &mut parsed.origins,
    )?;
    Ok((parsed, warnings))
}

/// The `*.yaml` / `*.yml` files directly in `dir` (hidden ones skipped, symlinks followed, as
/// in a mounted ConfigMap), in name order.
pub(super) fn yaml_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, ConfigError> {
    let dir_name = dir.display().to_string();
    let unreadable =
        |e: std::io::Error| ConfigError::new(&dir_name, format!("cannot read directory: {e}"));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let path = entry.path();
        if path.is_file() {
            files.push((name.to_owned(), path));
        }
    }
    files.sort();
    Ok(files)
}

/// A config file's text, refused unread when it is over [`MAX_FILE_BYTES`].
pub(super) fn read_file(path: &Path) -> Result<String, ConfigError> {
    let file = path.display().to_string();
    let cannot = |e: std::io::Error| ConfigError::new(&file, format!("cannot read file: {e}"));
    let opened = std::fs::File::open(path).map_err(cannot)?;
    limits::check_file_len(&file, opened.metadata().map_err(cannot)?.len())?;
    let mut bytes = Vec::new();
    // It may grow between the check and the read.
    opened
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    limits::check_file_len(&file, bytes.len() as u64)?;
    String::from_utf8(bytes).map_err(|_| ConfigError::new(&file, "file is not valid utf-8"))
}

/// A file's modification time, if it can be read.
pub(super) fn modified(path: &Path) -> Option<SystemTime> {
    fingerprint(path).1
}

fn fingerprint(path: &Path) -> Fingerprint {
    match std::fs::metadata(path) {
        Ok(meta) => (meta.len(), meta.modified().ok()),
        Err(_) => (0, None),
    }
}
