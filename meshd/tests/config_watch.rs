//! meshd notices config changes by filesystem events (inotify), over real files in temporary
//! directories: with the polls set to an hour, a change can only apply within the test's few
//! seconds because an event woke the reload. Without events (as when the watcher cannot be
//! created) meshd polls as it always did.

use std::path::Path;
use std::time::Duration;

use meshd::daemon::{CaSource, ConfigWatchOptions, RunningMeshd};
use test_support::{meshd_config, tempdir};
use tokio::time::Instant;

/// Far longer than any test: a change that applies did not wait for a poll.
const NEVER: Duration = Duration::from_secs(3600);

/// How long a change may take to apply: well within a second, given time on a busy machine.
const PROMPTLY: Duration = Duration::from_secs(5);

async fn meshd(dir: &Path, config_watch: ConfigWatchOptions) -> RunningMeshd {
    meshd::daemon::start(meshd::daemon::MeshdConfig {
        config_watch,
        ..meshd_config(
            dir,
            CaSource::Ephemeral,
            "127.0.0.1:0".parse().unwrap(),
            Duration::from_secs(3600),
        )
    })
    .await
    .unwrap()
}

fn events_only() -> ConfigWatchOptions {
    ConfigWatchOptions {
        safety_poll: NEVER,
        fallback_poll: NEVER,
        ..Default::default()
    }
}

fn policy(name: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: default\nspec: {{}}\n"
    )
}

fn policies(meshd: &RunningMeshd) -> Vec<String> {
    let mut names: Vec<String> = meshd
        .plane
        .config()
        .authorization_policies
        .iter()
        .map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    names
}

/// Waits until meshd's policies are `want`, at most [`PROMPTLY`].
async fn until_policies(meshd: &RunningMeshd, want: &[&str]) {
    let deadline = Instant::now() + PROMPTLY;
    while policies(meshd) != want {
        assert!(
            Instant::now() < deadline,
            "never {want:?} within {PROMPTLY:?}: {:?}",
            policies(meshd)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_copied_in_applies_by_its_event_and_a_removed_files_resources_go() {
    let dir = tempdir("watch-copy");
    let meshd = meshd(&dir, events_only()).await;
    assert!(policies(&meshd).is_empty());

    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../mesh-config/security/allow-nothing.yaml"
        ),
        dir.join("allow-nothing.yaml"),
    )
    .unwrap();
    until_policies(&meshd, &["allow-nothing"]).await;

    // Many files at once, as a `cp *.yaml`: all apply.
    for i in 0..50 {
        std::fs::write(
            dir.join(format!("p{i:02}.yaml")),
            policy(&format!("p{i:02}")),
        )
        .unwrap();
    }
    let mut want = vec!["allow-nothing".to_owned()];
    want.extend((0..50).map(|i| format!("p{i:02}")));
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    until_policies(&meshd, &want).await;

    for i in 0..50 {
        std::fs::remove_file(dir.join(format!("p{i:02}.yaml"))).unwrap();
    }
    std::fs::remove_file(dir.join("allow-nothing.yaml")).unwrap();
    until_policies(&meshd, &[]).await;
    meshd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configmap_volume_updated_by_swapping_its_data_symlink_applies() {
    use std::os::unix::fs::symlink;
    // The kubelet's layout: files are links into `..data`, itself a link to a timestamped
    // directory; an update writes a new directory and renames a new link over `..data`.
    let dir = tempdir("watch-configmap");
    std::fs::create_dir(dir.join("..2026_01_01_00_00_00.1")).unwrap();
    std::fs::write(
        dir.join("..2026_01_01_00_00_00.1/policy.yaml"),
        policy("first"),
    )
    .unwrap();
    symlink("..2026_01_01_00_00_00.1", dir.join("..data")).unwrap();
    symlink("..data/policy.yaml", dir.join("policy.yaml")).unwrap();
    let meshd = meshd(&dir, events_only()).await;
    assert_eq!(policies(&meshd), ["first"]);

    std::fs::create_dir(dir.join("..2026_01_01_00_01_00.2")).unwrap();
    std::fs::write(
        dir.join("..2026_01_01_00_01_00.2/policy.yaml"),
        policy("second-version"),
    )
    .unwrap();
    symlink("..2026_01_01_00_01_00.2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_01_01_00_00_00.1")).unwrap();
    until_policies(&meshd, &["second-version"]).await;
    meshd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_removed_and_created_again_is_watched_again() {
    let dir = tempdir("watch-recreated");
    std::fs::write(dir.join("a.yaml"), policy("a")).unwrap();
    let meshd = meshd(&dir, events_only()).await;
    assert_eq!(policies(&meshd), ["a"]);

    // Gone: its files stay in force (a remount is likelier than an intended emptying).
    std::fs::remove_dir_all(&dir).unwrap();
    // Created again (a new inode the old watch does not see), with a new file.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("b.yaml"), policy("b")).unwrap();
    until_policies(&meshd, &["b"]).await;

    std::fs::write(dir.join("c.yaml"), policy("c")).unwrap();
    until_policies(&meshd, &["b", "c"]).await;
    meshd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_file_events_the_directories_are_polled_as_before() {
    let dir = tempdir("watch-fallback");
    let meshd = meshd(
        &dir,
        ConfigWatchOptions {
            file_events: false,
            safety_poll: NEVER,
            fallback_poll: meshd::daemon::CONFIG_POLL_INTERVAL,
            ..Default::default()
        },
    )
    .await;
    std::fs::write(dir.join("a.yaml"), policy("a")).unwrap();
    until_policies(&meshd, &["a"]).await;
    std::fs::remove_file(dir.join("a.yaml")).unwrap();
    until_policies(&meshd, &[]).await;
    meshd.shutdown().await;
}
