//! Sidecar mode with an application nobody here wrote in Rust: a Python productpage (Flask and
//! `requests`, as upstream's; tests/fixtures/python-productpage) behind our sidecar, calling
//! our meshed backends through the sidecar's outbound proxy (`HTTP_PROXY`). Routing, mTLS and
//! authorization apply to it exactly as to an embedded productpage.
//!
//! Its requirements come from PyPI into a venv under the target directory: without pip or the
//! network the test is skipped on a developer's machine and fails in CI.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Request, header};
use mesh::Client;
use test_support::{Killed, PATIENCE, free_port, required};

const MARKER: &str = r#"<meta name="generator" content="python-productpage">"#;
const STAR: &str = r#"<span class="glyphicon glyphicon-star"></span>"#;
const DETAILS_ERROR: &str = "Sorry, product details are currently unavailable for this book.";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python-productpage")
}

/// A Python with the fixture's pinned requirements: a venv under the target directory, made
/// (and filled from PyPI) on first use.
fn python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-productpage-venv");
    let python = venv.join("bin/python");
    let imports = |python: &Path| {
        Command::new(python)
            .args(["-c", "import flask, requests, gunicorn"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !imports(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(fixture().join("requirements.txt"))
                .status()
                .is_ok_and(|s| s.success());
        if !made {
            eprintln!("could not make the venv {}", venv.display());
        }
    }
    required(
        imports(&python).then_some(python),
        "Python with Flask, requests and gunicorn",
        "python3 -m venv and pip install -r bookinfo/tests/fixtures/python-productpage/requirements.txt",
    )
}

async fn page(gateway: std::net::SocketAddr, user: Option<&str>) -> String {
    let mut req = Request::get(format!("http://{gateway}/productpage"));
    if let Some(user) = user {
        req = req.header(header::COOKIE, format!("user={user}"));
    }
    match Client::new()
        .send(req.body(Body::empty()).unwrap(), PATIENCE)
        .await
    {
        Ok(r) => format!(
            "{} {}",
            r.status().as_u16(),
            String::from_utf8_lossy(r.body())
        ),
        Err(e) => format!("error {e}"),
    }
}

/// Pages until `check` holds for one, or fails with the last one.
async fn eventually(
    gateway: std::net::SocketAddr,
    user: Option<&str>,
    what: &str,
    check: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let body = page(gateway, user).await;
        if check(&body) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}; last page: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stars(body: &str) -> Option<&'static str> {
    if !body.contains(STAR) {
        None
    } else if body.contains(r#"<font color="black">"#) {
        Some("black")
    } else if body.contains(r#"<font color="red">"#) {
        Some("red")
    } else {
        Some("other")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstreams_python_productpage_behind_our_sidecar_is_routed_mtls_and_authorized() {
    let Some(python) = python() else { return };
    let dir = test_support::tempdir("sidecar-python");
    let (app_port, proxy_port) = (free_port(), free_port());
    let mut config = bookinfo::Config::ephemeral();
    config.mesh.as_mut().unwrap().config_dir = Some(dir.clone());
    config.mode = bookinfo::Mode::Sidecar;
    config.productpage_beside = Some(bookinfo::AppBeside {
        app_port,
        proxy_port,
    });
    let running = bookinfo::start(config).await.unwrap();
    let gateway = running.addrs.gateway.unwrap();

    let _app = Killed(
        Command::new(&python)
            .args([
                "-m",
                "gunicorn",
                "--workers",
                "2",
                "--log-level",
                "warning",
                "--bind",
            ])
            .arg(format!("127.0.0.1:{app_port}"))
            .arg("productpage:app")
            .current_dir(fixture())
            .env("HTTP_PROXY", format!("http://127.0.0.1:{proxy_port}"))
            .env_remove("http_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .spawn()
            .expect("gunicorn starts"),
    );
    eventually(gateway, None, "served the Python page with details", |b| {
        b.starts_with("200 ") && b.contains(MARKER) && b.contains("paperback")
    })
    .await;

    // reviews behind the mesh's balancer: every version within a few loads.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let body = page(gateway, None).await;
        assert!(body.contains(MARKER), "{body}");
        seen.insert(stars(&body).unwrap_or("none"));
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["black", "none", "red"],
        "reviews v1, v2 and v3 all reached"
    );
    // Istio's request-routing task: jason (end-user, set by the Python app) to v2, everyone
    // else to v1.
    for file in [
        "virtual-service-all-v1.yaml",
        "virtual-service-reviews-test-v2.yaml",
    ] {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../mesh-config/routing")
                .join(file),
            dir.join(file),
        )
        .unwrap();
    }
    let deadline = Instant::now() + PATIENCE;
    while !running.meshes().iter().all(|m| {
        m.snapshot()
            .config
            .virtual_services
            .iter()
            .any(|v| v.metadata.name == "reviews")
    }) {
        assert!(
            Instant::now() < deadline,
            "the routing never reached every workload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        let body = page(gateway, Some("jason")).await;
        assert_eq!(stars(&body), Some("black"), "jason: {body}");
        let body = page(gateway, None).await;
        assert_eq!(stars(&body), None, "others: {body}");
    }

    // Its calls were mTLS: the backends' inbound metrics name it as the source.
    let admin = running.addrs.admin.unwrap();
    let metrics = test_support::metrics_text(admin).await;
    for destination in ["details", "reviews"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("istio_requests_total{")
                    && l.contains(r#"reporter="destination""#)
                    && l.contains(r#"source_workload="productpage-v1""#)
                    && l.contains(&format!(r#"destination_service_name="{destination}""#))
                    && l.contains(r#"connection_security_policy="mutual_tls""#)),
            "no mTLS series from the Python productpage to {destination}:\n{metrics}"
        );
    }

    // A DENY on details for productpage's identity: the Python page shows its details error.
    std::fs::write(
        dir.join("deny-productpage-to-details.yaml"),
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-productpage
  namespace: default
spec:
  selector:
    matchLabels:
      app: details
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]
"#,
    )
    .unwrap();
    eventually(gateway, None, "showed the details error under DENY", |b| {
        b.contains(MARKER) && b.contains(DETAILS_ERROR)
    })
    .await;
    running.shutdown().await;
}
