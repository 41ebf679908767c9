//! The spec of watched directories: a bad file is rejected alone, the last good version of
//! each file stays, and checks that need every file run over the merged config.

use std::path::{Path, PathBuf};

use super::*;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "meshconfig-dirs-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }

    /// Writes `name` with its modification time `at` seconds into a fixed day, so that which
    /// file changed last does not depend on the clock's granularity.
    fn write_at(&self, name: &str, text: &str, at: u64) {
        self.write(name, text);
        self.set_modified(name, at);
    }

    fn set_modified(&self, name: &str, at: u64) {
        let time =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + at);
        std::fs::File::options()
            .write(true)
            .open(self.0.join(name))
            .unwrap()
            .set_modified(time)
            .unwrap();
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.0.join(name)).unwrap();
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn policy(name: &str, action: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  action: {action}\n  rules:\n  - to:\n    - operation:\n        paths: [\"/{name}\"]\n"
    )
}

/// Line 4 has a field AuthorizationPolicy does not have.
const BAD: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: broken}\nspec: {rulez: []}\n";

fn open(dirs: &[&TempDir]) -> (Watched, Reload) {
    open_over(MeshConfig::default(), dirs)
}

fn open_over(base: MeshConfig, dirs: &[&TempDir]) -> (Watched, Reload) {
    let dirs = dirs.iter().map(|d| d.path().to_owned()).collect();
    match Watched::open(base, dirs) {
        Ok(opened) => opened,
        Err(e) => panic!("{e}"),
    }
}

fn policies(watched: &Watched) -> Vec<(String, Action)> {
    watched
        .config()
        .authorization_policies
        .iter()
        .map(|p| (p.metadata.name.clone(), p.action))
        .collect()
}

fn named(names: &[(&str, Action)]) -> Vec<(String, Action)> {
    names.iter().map(|(n, a)| ((*n).to_owned(), *a)).collect()
}

#[test]
fn a_bad_file_is_rejected_alone_and_the_rest_applies() {
    let dir = TempDir::new("alone");
    dir.write("a.yaml", &policy("a", "DENY"));
    dir.write("b.yaml", BAD);
    dir.write("c.yaml", &policy("c", "ALLOW"));
    let (watched, first) = open(&[&dir]);
    assert_eq!(
        policies(&watched),
        named(&[("a", Action::Deny), ("c", Action::Allow)])
    );
    assert!(first.changed);
    assert_eq!(first.errors.len(), 1, "{:?}", first.errors);
    let e = &first.errors[0];
    assert!(e.file.ends_with("b.yaml"), "{e:?}");
    assert_eq!((e.line, e.column.is_some()), (Some(4), true), "{e:?}");
    assert!(e.reason.contains("rulez"), "{e}");
    assert!(e.reason.ends_with("; nothing from it is in force"), "{e}");
    assert!(e.to_string().contains("b.yaml:4:"), "{e}");
}

#[test]
fn a_bad_change_keeps_the_files_previous_version() {
    let dir = TempDir::new("previous");
    dir.write("a.yaml", &policy("a", "DENY"));
    dir.write("b.yaml", &policy("b", "DENY"));
    let (mut watched, first) = open(&[&dir]);
    assert!(first.errors.is_empty(), "{:?}", first.errors);

    dir.write("b.yaml", &format!("{BAD}# now broken\n"));
    let reload = watched.reload();
    assert!(!reload.changed);
    assert_eq!(reload.errors.len(), 1, "{:?}", reload.errors);
    assert!(
        reload.errors[0]
            .reason
            .ends_with("; its previous version stays in force"),
        "{}",
        reload.errors[0]
    );
    assert_eq!(
        policies(&watched),
        named(&[("a", Action::Deny), ("b", Action::Deny)])
    );

    // Unchanged, the bad file is neither re-read nor reported again.
    let quiet = watched.reload();
    assert!(!quiet.changed && quiet.errors.is_empty(), "{quiet:?}");

    // Fixed, it applies.
    dir.write("b.yaml", &policy("b", "ALLOW"));
    let fixed = watched.reload();
    assert!(fixed.changed && fixed.errors.is_empty(), "{fixed:?}");
    assert_eq!(
        policies(&watched),
        named(&[("a", Action::Deny), ("b", Action::Allow)])
    );

    // Removed, its resources go.
    dir.remove("b.yaml");
    assert!(watched.reload().changed);
    assert_eq!(policies(&watched), named(&[("a", Action::Deny)]));
}

#[test]
fn a_bad_file_does_not_hold_back_a_policy_added_later() {
    let dir = TempDir::new("later");
    dir.write("routes.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [reviews], http: [{route: []}]}\n");
    let (mut watched, first) = open(&[&dir]);
    assert_eq!(first.errors.len(), 1, "{:?}", first.errors);
    assert!(policies(&watched).is_empty());

    dir.write("allow-nothing.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-nothing\n  namespace: default\nspec:\n  {}\n");
    let reload = watched.reload();
    assert!(reload.changed, "{reload:?}");
    assert!(reload.errors.is_empty(), "{:?}", reload.errors);
    assert_eq!(
        policies(&watched),
        named(&[("allow-nothing", Action::Allow)])
    );
    let config = watched.config();
    let workload = Workload {
        namespace: "default",
        labels: &std::collections::BTreeMap::from([("app".to_owned(), "productpage".to_owned())]),
    };
    let decision = config.authorize(
        &workload,
        &RequestAttrs {
            method: "GET",
            path: "/productpage",
            headers: &http::HeaderMap::new(),
            principal: None,
        },
    );
    assert!(matches!(decision, Decision::Deny { .. }), "{decision:?}");
}

#[test]
fn merge_order_is_base_then_dirs_then_the_most_recently_changed_file() {
    let (first, second) = (TempDir::new("order1"), TempDir::new("order2"));
    first.write_at("b.yaml", &policy("p", "DENY"), 20);
    first.write_at("a.yaml", &policy("p", "ALLOW"), 10);
    second.write_at("z.yaml", &policy("q", "ALLOW"), 0);
    let base = parse_file(
        "base.yaml",
        &format!("{}\n---\n{}", policy("q", "DENY"), policy("base", "DENY")),
    )
    .unwrap()
    .config;
    let (watched, first_load) = open_over(base, &[&first, &second]);
    // b.yaml changed after a.yaml; the second directory's q over the base's, however old.
    assert_eq!(
        policies(&watched),
        named(&[
            ("q", Action::Allow),
            ("base", Action::Deny),
            ("p", Action::Deny)
        ])
    );
    // Two files of one directory defining one resource is worth a word naming both; a later
    // directory replacing the base is what it is for.
    assert_eq!(first_load.warnings.len(), 1, "{:?}", first_load.warnings);
    let (a, b) = (first.path().join("a.yaml"), first.path().join("b.yaml"));
    assert_eq!(
        first_load.warnings[0],
        format!(
            "{}: AuthorizationPolicy default/p is also defined in {}; this file's wins, as the \
             more recently changed (as with kubectl apply)",
            b.display(),
            a.display()
        )
    );
    // The directory as a whole is read in the same order.
    let loaded = load_dir(first.path()).unwrap();
    assert_eq!(loaded.config.authorization_policies[0].action, Action::Deny);
}

const ALL_V1: &str = include_str!("../../../mesh-config/routing/virtual-service-all-v1.yaml");
const DETAILS_ABORT: &str =
    include_str!("../../../mesh-config/routing/fault-injection-details-v1.yaml");

/// Whether the `details` VirtualService in force is the fault-injection one.
fn details_aborts(watched: &Watched) -> bool {
    let details = watched
        .config()
        .virtual_services
        .iter()
        .find(|vs| vs.metadata.name == "details")
        .expect("a details VirtualService");
    details.http.iter().any(|r| r.fault.is_some())
}

#[test]
fn the_same_object_in_two_files_is_the_most_recently_changed_files() {
    let dir = TempDir::new("recent");
    dir.write_at("virtual-service-all-v1.yaml", ALL_V1, 0);
    let (mut watched, _) = open(&[&dir]);
    assert!(!details_aborts(&watched));

    // Applied after all-v1, the fault wins although "f" sorts before "v".
    dir.write_at("fault-injection-details-v1.yaml", DETAILS_ABORT, 10);
    let reload = watched.reload();
    assert!(reload.changed, "{reload:?}");
    assert!(details_aborts(&watched), "the abort never applied");
    let (fault, all_v1) = (
        dir.path().join("fault-injection-details-v1.yaml"),
        dir.path().join("virtual-service-all-v1.yaml"),
    );
    let warning = format!(
        "{}: VirtualService default/details is also defined in {}; this file's wins",
        fault.display(),
        all_v1.display()
    );
    assert!(
        reload.warnings.iter().any(|w| w.starts_with(&warning)),
        "{:?}",
        reload.warnings
    );

    // A restarted meshd sees the same.
    let (again, _) = open(&[&dir]);
    assert!(details_aborts(&again));

    // Applying all-v1 again (its time moves on) puts its details route back, as kubectl apply
    // would; the warning now names all-v1 as the winner.
    dir.set_modified("virtual-service-all-v1.yaml", 20);
    let reload = watched.reload();
    assert!(reload.changed && !details_aborts(&watched), "{reload:?}");
    assert!(
        reload.warnings.iter().any(|w| w.starts_with(&format!(
            "{}: VirtualService default/details",
            all_v1.display()
        ))),
        "{:?}",
        reload.warnings
    );
    let (again, _) = open(&[&dir]);
    assert!(!details_aborts(&again));

    // A broken edit changes nothing: the version in force keeps its place.
    dir.write_at(
        "fault-injection-details-v1.yaml",
        &format!("{BAD}# broken\n"),
        30,
    );
    let reload = watched.reload();
    assert!(!reload.changed && reload.errors.len() == 1, "{reload:?}");
    assert!(!details_aborts(&watched));
}

#[test]
fn equal_times_go_by_the_reload_that_read_them_then_by_name() {
    let dir = TempDir::new("ties");
    dir.write_at("virtual-service-all-v1.yaml", ALL_V1, 0);
    let (mut watched, _) = open(&[&dir]);
    // Same time (a coarse clock, a copy keeping times), but read by a later reload: it wins.
    dir.write_at("fault-injection-details-v1.yaml", DETAILS_ABORT, 0);
    assert!(watched.reload().changed);
    assert!(details_aborts(&watched));
    // Read together, as after a restart, equal times go by name, the same at every start.
    for _ in 0..2 {
        let (restarted, _) = open(&[&dir]);
        assert!(!details_aborts(&restarted));
    }
}

const DESTINATION_RULE: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v3, labels: {version: v3}}\n";
const ROUTE_V3: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v3}\n";
const ROUTE_V2: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v2}\n";

#[test]
fn a_subset_defined_in_another_dir_or_the_base_is_no_warning() {
    let (rules, live) = (TempDir::new("rules"), TempDir::new("live"));
    rules.write("destination-rule-all.yaml", DESTINATION_RULE);
    live.write("route.yaml", ROUTE_V3);
    let (_, load) = open(&[&rules, &live]);
    assert!(load.warnings.is_empty(), "{:?}", load.warnings);
    assert!(load.errors.is_empty(), "{:?}", load.errors);

    let base = parse_file("base.yaml", DESTINATION_RULE).unwrap().config;
    let (mut watched, load) = open_over(base, &[&live]);
    assert!(load.warnings.is_empty(), "{:?}", load.warnings);

    // A subset nobody defines still warns, once, naming the file.
    live.write("route.yaml", ROUTE_V2);
    let reload = watched.reload();
    assert_eq!(reload.warnings.len(), 1, "{:?}", reload.warnings);
    assert!(
        reload.warnings[0].contains(
            "route.yaml:2: VirtualService default/reviews: no DestinationRule defines subset v2"
        ),
        "{:?}",
        reload.warnings
    );
    live.write("other.yaml", &policy("x", "DENY"));
    let unrelated = watched.reload();
    assert!(unrelated.changed);
    assert!(unrelated.warnings.is_empty(), "{:?}", unrelated.warnings);
}

#[test]
fn a_missing_dir_fails_the_open_and_one_gone_later_keeps_its_files() {
    let dir = TempDir::new("gone");
    let missing = dir.path().join("nope");
    let e = Watched::open(MeshConfig::default(), vec![missing]).unwrap_err();
    assert!(e.reason.starts_with("cannot read directory"), "{e}");

    let inner = TempDir::new("inner");
    inner.write("a.yaml", &policy("a", "DENY"));
    let (mut watched, _) = open(&[&inner]);
    std::fs::remove_dir_all(inner.path()).unwrap();
    let reload = watched.reload();
    assert!(!reload.changed);
    assert_eq!(reload.errors.len(), 1, "{:?}", reload.errors);
    assert!(
        reload.errors[0]
            .reason
            .ends_with("its files stay in force as last read")
    );
    assert_eq!(policies(&watched), named(&[("a", Action::Deny)]));
    assert!(watched.reload().errors.is_empty(), "reported once");
}

#[test]
fn a_file_over_the_size_limit_is_rejected_unread() {
    let dir = TempDir::new("big");
    let limit = usize::try_from(MAX_FILE_BYTES).unwrap();
    dir.write(
        "big.yaml",
        &format!("{}#{}\n", policy("big", "DENY"), "x".repeat(limit)),
    );
    dir.write("ok.yaml", &policy("ok", "DENY"));
    let (watched, load) = open(&[&dir]);
    assert_eq!(load.errors.len(), 1, "{:?}", load.errors);
    let e = &load.errors[0];
    assert!(e.file.ends_with("big.yaml"), "{e}");
    assert!(
        e.reason.starts_with(&format!(
            "file is {} bytes, above the limit of 1048576 bytes",
            policy("big", "DENY").len() + limit + 2
        )),
        "{e}"
    );
    assert_eq!(policies(&watched), named(&[("ok", Action::Deny)]));
}

/// A policy file of about `kib` KiB: annotations of 60 KiB each (under the string limit).
fn fat_policy(name: &str, kib: usize) -> String {
    let mut yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: default\n  annotations:\n"
    );
    for i in 0..kib / 60 {
        yaml.push_str(&format!("    note-{i}: {}\n", "y".repeat(60 << 10)));
    }
    yaml.push_str("spec: {action: DENY, rules: [{to: [{operation: {paths: [/x]}}]}]}\n");
    yaml
}

#[test]
fn a_change_that_would_overflow_the_snapshot_is_rejected_and_the_last_good_stays() {
    let dir = TempDir::new("snapshot");
    dir.write("a.yaml", &fat_policy("a", 900));
    dir.write("b.yaml", &fat_policy("b", 900));
    dir.write("c.yaml", &policy("c", "DENY"));
    let (mut watched, load) = open(&[&dir]);
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    let size = check_config_size(watched.config()).unwrap();
    assert!(size > 1_800_000, "{size}");

    // c.yaml grows past what fits, while d.yaml, added at the same time, fits.
    dir.write("c.yaml", &fat_policy("c", 600));
    dir.write("d.yaml", &policy("d", "DENY"));
    let reload = watched.reload();
    assert!(reload.changed);
    assert_eq!(reload.errors.len(), 1, "{:?}", reload.errors);
    let e = &reload.errors[0];
    assert!(e.file.ends_with("c.yaml"), "{e}");
    assert!(
        e.reason.contains(&format!(
            "as JSON, above the limit of {MAX_CONFIG_JSON_BYTES} bytes; this version of the file is not applied, its previous version stays in force"
        )),
        "{e}"
    );
    let c = &watched.config().authorization_policies[2];
    assert_eq!(c.metadata.name, "c");
    assert!(c.metadata.annotations.is_empty(), "the small c stays");
    assert_eq!(
        policies(&watched).last(),
        Some(&("d".to_owned(), Action::Deny))
    );
    assert!(check_config_size(watched.config()).unwrap() <= MAX_CONFIG_JSON_BYTES);

    let err = check_config_size(&{
        let mut all = watched.config().clone();
        all.merge(parse_file("c.yaml", &fat_policy("c", 600)).unwrap().config);
        all
    })
    .unwrap_err();
    assert_eq!(err.limit, MAX_CONFIG_JSON_BYTES);
    assert!(
        err.to_string().starts_with("the mesh config would be "),
        "{err}"
    );
}

#[test]
fn documents_tell_their_watcher_of_every_change_but_not_of_a_put_of_the_same_text() {
    let documents = Documents::default();
    let mut changes = documents.changes();
    assert!(!changes.has_changed().unwrap());
    documents.put("a", policy("a", "DENY"));
    documents.put("b", policy("b", "DENY"));
    assert!(changes.has_changed().unwrap(), "a put is a change");
    assert_eq!(*changes.borrow_and_update(), 2, "two puts, one wake-up");

    documents.put("a", policy("a", "DENY"));
    documents.remove("c");
    assert!(!changes.has_changed().unwrap(), "nothing changed");

    documents.remove("a");
    assert!(changes.has_changed().unwrap(), "a removal is a change");
    changes.borrow_and_update();
    documents.replace_all("", vec![("d".to_owned(), policy("d", "DENY"))]);
    assert!(changes.has_changed().unwrap(), "a relist is a change");
}
