//! What the tests and benchmarks share, so each states only what it checks: a meshd on a
//! free loopback port with tokens for test accounts, workload specs and workloads that answer
//! with their caller's identity, PKI fixtures, waiting on the registry, and the skip-or-fail
//! rule for tools a test needs (a skip on a developer's machine, a failure in CI).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use http::{HeaderMap, StatusCode};
use mesh::control::client::WorkloadSpec;
use mesh::identity::SpiffeId;
use mesh::workload::WorkloadBuilder;
use mesh::{Client, Mesh, PeerIdentity, Server};
use meshd::CertificateAuthority;
use meshd::daemon::{self, CaSource, MeshdConfig, RunningMeshd};
use meshd::server::Tokens;

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(15);
pub const TD: &str = "cluster.local";

/// The identity of account `sa` in namespace `default`.
pub fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "default", sa)
}

/// A fresh directory under the system's temporary one.
pub fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-test-{name}-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Bootstrap tokens `token-<sa>` for the accounts `accounts` in namespace `default`.
pub fn tokens_for(accounts: &[&str]) -> Tokens {
    let mut t = Tokens::default();
    for sa in accounts {
        t.insert("default", sa, &format!("token-{sa}"));
    }
    t
}

/// [`tokens_for`] the test accounts `alpha`, `beta` and `gamma`.
pub fn tokens() -> Tokens {
    tokens_for(&["alpha", "beta", "gamma"])
}

/// meshd on `listen` with the test tokens, watching `config_dir`.
pub fn meshd_config(
    config_dir: &Path,
    ca: CaSource,
    listen: SocketAddr,
    ttl: Duration,
) -> MeshdConfig {
    MeshdConfig {
        listen,
        ca,
        tokens: tokens(),
        base: Default::default(),
        config_dirs: vec![config_dir.to_owned()],
        trust_domain: TD.to_owned(),
        cert_ttl: ttl,
        dashboard: None,
        ..Default::default()
    }
}

/// meshd on a free loopback port with an ephemeral CA, the test tokens and `config_dir`.
pub async fn meshd(config_dir: &Path, ttl: Duration) -> RunningMeshd {
    daemon::start(meshd_config(
        config_dir,
        CaSource::Ephemeral,
        "127.0.0.1:0".parse().unwrap(),
        ttl,
    ))
    .await
    .unwrap()
}

/// The spec of a workload of `meshd`: `service` (version v1) as account `sa`, with the token
/// [`tokens_for`] gives it and the root handed over in process.
pub fn spec(meshd: &RunningMeshd, service: &str, sa: &str) -> WorkloadSpec {
    WorkloadSpec {
        control_plane: meshd.url(),
        roots: meshd.trust_roots(),
        token: format!("token-{sa}"),
        token_file: None,
        service: service.to_owned(),
        labels: BTreeMap::from([
            ("app".to_owned(), service.to_owned()),
            ("version".to_owned(), "v1".to_owned()),
        ]),
        namespace: "default".to_owned(),
        service_account: sa.to_owned(),
        admin_port: None,
    }
}

/// `ca`'s root as trust anchors.
pub fn anchors(ca: &CertificateAuthority) -> std::sync::Arc<mesh::identity::Anchors> {
    mesh::identity::TrustRoots::from_pem(ca.root_pem())
        .unwrap()
        .load()
        .unwrap()
}

/// A workload whose one route answers with the caller's principal ("-" for plaintext).
pub async fn workload(meshd: &RunningMeshd, service: &str, sa: &str) -> (SocketAddr, Mesh) {
    let server = Server::bind(service, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    let mesh = WorkloadBuilder::new(spec(meshd, service, sa))
        .start(addr)
        .unwrap();
    let app = Router::new().route(
        "/whoami",
        get(|Extension(peer): Extension<PeerIdentity>| async move {
            peer.0.map_or("-".to_owned(), |id| id.principal())
        }),
    );
    tokio::spawn(
        server
            .with_mesh(mesh.clone())
            .serve(app, std::future::pending()),
    );
    assert!(mesh.ready(PATIENCE).await, "{service} never got ready");
    (addr, mesh)
}

/// Waits until `service` is in `mesh`'s snapshot.
pub async fn sees(mesh: &Mesh, service: &str) {
    let deadline = Instant::now() + PATIENCE;
    while mesh.endpoints_of(service).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{service} never appeared in the registry"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The body of a GET of `url` through `client`, when it is a 200.
pub async fn whoami(client: &Client, url: &str) -> Result<String, String> {
    let response = client
        .get(url, HeaderMap::new(), Duration::from_secs(5))
        .await
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    Ok(String::from_utf8_lossy(response.body()).into_owned())
}

/// The Prometheus text a workload's admin port at `admin` serves.
pub async fn metrics_text(admin: SocketAddr) -> String {
    let url = format!("http://{admin}{}", mesh::telemetry::METRICS_PATH);
    let response = Client::new()
        .get(&url, HeaderMap::new(), PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    String::from_utf8_lossy(response.body()).into_owned()
}

/// Whether `openssl` is here: a skip outside CI, a failure in CI.
pub fn has_openssl() -> bool {
    let here = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok();
    required(here.then_some(()), "openssl", "apt-get install openssl").is_some()
}

/// `found`, or `None` after saying why the test is skipped: a missing tool skips the test on a
/// developer's machine and fails it in CI, which installs it.
pub fn required<T>(found: Option<T>, what: &str, install: &str) -> Option<T> {
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have {what} ({install})"
        );
        eprintln!("skipping: no {what} on this machine ({install})");
    }
    found
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed and reaped when the test ends, however it ends.
#[derive(Debug)]
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs each named `async fn(bookinfo::Mode)` as two tests, `embedded::<name>` and
/// `sidecar::<name>`: the same traffic and security samples must pass whether the services
/// link the mesh or sit behind sidecars.
#[macro_export]
macro_rules! in_both_modes {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $test() {
                    super::$test(bookinfo::Mode::Embedded).await
                }
            )*
        }
        mod sidecar {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $test() {
                    super::$test(bookinfo::Mode::Sidecar).await
                }
            )*
        }
    };
}
