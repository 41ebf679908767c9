//! What the socket tests share: a meshd on a free port with tokens for a few test accounts,
//! workloads that answer with their caller's identity, and waiting on the registry.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use http::{HeaderMap, StatusCode};
use mesh::control::client::WorkloadSpec;
use mesh::control::daemon::{self, CaSource, MeshdConfig, RunningMeshd};
use mesh::control::server::Tokens;
use mesh::identity::{CertificateAuthority, SpiffeId};
use mesh::{Client, Mesh, PeerIdentity, Server};

pub const PATIENCE: Duration = Duration::from_secs(15);
pub const TD: &str = "cluster.local";

pub fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "default", sa)
}

pub fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-test-{name}-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn tokens() -> Tokens {
    let mut t = Tokens::default();
    for sa in ["alpha", "beta", "gamma"] {
        t.insert("default", sa, &format!("token-{sa}"));
    }
    t
}

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

pub fn spec(meshd: &RunningMeshd, service: &str, sa: &str) -> WorkloadSpec {
    WorkloadSpec {
        control_plane: meshd.url(),
        roots: meshd.trust_roots(),
        token: format!("token-{sa}"),
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
    let mesh = Mesh::start(spec(meshd, service, sa), TD, addr).unwrap();
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

/// Whether `openssl` is here: a skip outside CI, a failure in CI.
pub fn has_openssl() -> bool {
    let here = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok();
    if !here {
        assert!(std::env::var("CI").is_err(), "CI must have openssl");
        eprintln!("skipping: no openssl");
    }
    here
}
