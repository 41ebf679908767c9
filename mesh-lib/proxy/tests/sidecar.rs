//! `mesh-proxy sidecar`, the binary, beside a plain application over real sockets: the mesh
//! reaches the application through the sidecar's inbound listener (mTLS), the application
//! calls the mesh through the sidecar's outbound HTTP proxy, and readiness includes the
//! application's health.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use http::StatusCode;
use mesh::Client;
use mesh::outbound::proxy::Proxy;
use test_support::{Killed, PATIENCE, free_port, tempdir, whoami};
use tokio::sync::oneshot;

const SIDECAR: &str = env!("CARGO_BIN_EXE_mesh-proxy");

#[derive(Clone)]
struct App {
    healthy: Arc<AtomicBool>,
    client: Client,
}

/// The application beside the sidecar: plain, on loopback, calling out through the proxy.
/// It runs on a runtime of its own, so that killing it closes every one of its sockets at
/// once, as a process that dies does.
async fn start_app(proxy: SocketAddr) -> (u16, Arc<AtomicBool>, oneshot::Sender<()>) {
    let healthy = Arc::new(AtomicBool::new(true));
    let state = App {
        healthy: healthy.clone(),
        client: Client::builder().proxy(Some(Proxy::new(proxy))).build(),
    };
    let app = Router::new()
        .route(
            "/health",
            get(|State(app): State<App>| async move {
                if app.healthy.load(Ordering::SeqCst) {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }),
        )
        .route(
            "/hello",
            get(|headers: http::HeaderMap| async move {
                format!(
                    "hello from the app, host {}",
                    headers[http::header::HOST].to_str().unwrap()
                )
            }),
        )
        .route(
            "/call-beta",
            get(|State(app): State<App>| async move {
                whoami(&app.client, "http://beta:9080/whoami")
                    .await
                    .unwrap_or_else(|e| format!("failed: {e}"))
            }),
        )
        .with_state(state);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (kill, killed) = oneshot::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tokio::select! {
                _ = axum::serve(listener, app).into_future() => {}
                _ = killed => {}
            }
        });
        // Dropping the runtime drops every connection's task with it.
    });
    (port, healthy, kill)
}

struct Ports {
    app: u16,
    inbound: u16,
    outbound: u16,
    admin: u16,
}

/// The tests that start a sidecar take turns: each picks free ports for its sidecar, and
/// another test's workloads binding meanwhile could take one of them.
static ONE_SIDECAR_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// meshd in `dir`, with its root certificate written there for the sidecar.
async fn meshd_with_root(
    dir: &std::path::Path,
) -> (meshd::daemon::RunningMeshd, std::path::PathBuf) {
    // No re-registration window: its incomplete snapshots would keep a withdrawn endpoint.
    let mut config = test_support::meshd_config(
        dir,
        meshd::daemon::CaSource::Ephemeral,
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(3600),
    );
    config.plane.registration_grace = Duration::ZERO;
    let meshd = meshd::daemon::start(config).await.unwrap();
    let root = dir.join("root-cert.pem");
    std::fs::write(&root, meshd.root_pem()).unwrap();
    (meshd, root)
}

/// The app (calling out through the sidecar's outbound port) and free ports for the
/// sidecar's listeners; the app's health flag. Called after the test's own workloads have
/// bound theirs, so that none of them takes a port chosen here.
/// The app's health flag, and what kills it.
struct AppControl {
    healthy: Arc<AtomicBool>,
    kill: oneshot::Sender<()>,
}

async fn app_and_ports() -> (Ports, AppControl) {
    let outbound = free_port();
    let (app, healthy, kill) = start_app(SocketAddr::from(([127, 0, 0, 1], outbound))).await;
    let ports = Ports {
        app,
        inbound: free_port(),
        outbound,
        admin: free_port(),
    };
    (ports, AppControl { healthy, kill })
}

fn sidecar(meshd: &meshd::daemon::RunningMeshd, root: &std::path::Path, p: &Ports) -> Command {
    sidecar_on(meshd, root, p, 1)
}

/// The sidecar with `workers` worker threads.
fn sidecar_on(
    meshd: &meshd::daemon::RunningMeshd,
    root: &std::path::Path,
    p: &Ports,
    workers: usize,
) -> Command {
    let mut command = Command::new(SIDECAR);
    command
        .args(["sidecar", "--service", "alpha", "--bind", "127.0.0.1"])
        .args(["--app-port", &p.app.to_string()])
        .args(["--inbound-port", &p.inbound.to_string()])
        .args(["--outbound-port", &p.outbound.to_string()])
        .env("MESH_CONTROL_PLANE", meshd.url())
        .env("MESH_CA_FILE", root)
        .env("MESH_TOKEN", "token-alpha")
        .env("MESH_SERVICE_ACCOUNT", "alpha")
        .env("MESH_ADMIN_PORT", p.admin.to_string())
        .env("TOKIO_WORKER_THREADS", workers.to_string())
        .env_remove("HTTP_PROXY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    command
}

async fn readiness(admin: u16) -> (u16, String) {
    match Client::new()
        .get(
            &format!("http://127.0.0.1:{admin}/healthz/ready"),
            Default::default(),
            PATIENCE,
        )
        .await
    {
        Ok(r) => (
            r.status().as_u16(),
            String::from_utf8_lossy(r.body()).into_owned(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

async fn until_ready_is(admin: u16, want: u16) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = readiness(admin).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never {want}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (within `PATIENCE`) until `mesh`'s snapshot lists `n` endpoints of `service`.
async fn until_endpoints(mesh: &mesh::Mesh, service: &str, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    while mesh.endpoints_of(service).len() != n {
        assert!(
            Instant::now() < deadline,
            "{service} has {} endpoints, not {n}",
            mesh.endpoints_of(service).len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sidecar_binary_carries_an_apps_traffic_both_ways_over_mtls() {
    let _turn = ONE_SIDECAR_AT_A_TIME.lock().await;
    let dir = tempdir("sidecar-binary");
    let (meshd, root) = meshd_with_root(&dir).await;
    let (_, _beta) = test_support::workload(&meshd, "beta", "beta").await;
    let (_, gamma) = test_support::workload(&meshd, "gamma", "gamma").await;

    let (ports, app) = app_and_ports().await;
    let healthy = app.healthy.clone();

    let _sidecar = Killed(sidecar(&meshd, &root, &ports).spawn().unwrap());
    until_ready_is(ports.admin, 200).await;
    test_support::sees(&gamma, "alpha").await;
    let registered: Vec<SocketAddr> = gamma.endpoints_of("alpha").iter().map(|e| e.addr).collect();
    assert_eq!(
        registered,
        [SocketAddr::from(([127, 0, 0, 1], ports.inbound))],
        "the app is registered at the sidecar's inbound address"
    );

    // Mesh → sidecar (mTLS) → app, with the Host the caller named.
    let client = gamma.client();
    assert_eq!(
        whoami(&client, "http://alpha:9080/hello").await.unwrap(),
        "hello from the app, host alpha:9080"
    );
    // App → sidecar's proxy → beta over mTLS, as alpha's identity.
    assert_eq!(
        whoami(&client, "http://alpha:9080/call-beta")
            .await
            .unwrap(),
        "cluster.local/ns/default/sa/alpha"
    );

    // A failing application makes the sidecar unready, with the reason, and meshd withdraws
    // its endpoint from every snapshot within 2 s (as Kubernetes withdraws a NotReady pod):
    // a caller then gets Envoy's 503 at once instead of the dead application's errors.
    healthy.store(false, Ordering::SeqCst);
    let failed = Instant::now();
    let body = until_ready_is(ports.admin, 503).await;
    assert!(body.contains("application"), "{body}");
    until_endpoints(&gamma, "alpha", 0).await;
    assert!(
        failed.elapsed() < Duration::from_secs(2),
        "withdrawn after {:?}",
        failed.elapsed()
    );
    let asked = Instant::now();
    let refused = client
        .get("http://alpha:9080/hello", Default::default(), PATIENCE)
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(&refused.body()[..], b"no healthy upstream");
    assert!(
        asked.elapsed() < Duration::from_millis(100),
        "{:?}",
        asked.elapsed()
    );
    let check = sidecar(&meshd, &root, &ports)
        .arg("--health-check")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!check.success(), "--health-check fails while the app does");
    healthy.store(true, Ordering::SeqCst);
    let recovered = Instant::now();
    until_ready_is(ports.admin, 200).await;
    until_endpoints(&gamma, "alpha", 1).await;
    assert!(
        recovered.elapsed() < Duration::from_secs(2),
        "restored after {:?}",
        recovered.elapsed()
    );
    assert_eq!(
        whoami(&client, "http://alpha:9080/hello").await.unwrap(),
        "hello from the app, host alpha:9080"
    );
    let check = sidecar(&meshd, &root, &ports)
        .arg("--health-check")
        .status()
        .unwrap();
    assert!(check.success(), "--health-check passes once the app does");

    // Requests the proxy cannot pass on are answered, not dropped.
    let proxy = format!("http://127.0.0.1:{}", ports.outbound);
    let looped = Client::builder()
        .proxy(Some(Proxy::new(SocketAddr::from((
            [127, 0, 0, 1],
            ports.outbound,
        )))))
        .build()
        .get(&format!("{proxy}/x"), Default::default(), PATIENCE)
        .await
        .unwrap();
    assert_eq!(looped.status(), StatusCode::LOOP_DETECTED);

    // The application dies (its listener closes): withdrawn within 2 s again.
    app.kill.send(()).unwrap();
    let killed = Instant::now();
    until_endpoints(&gamma, "alpha", 0).await;
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "withdrawn after {:?}",
        killed.elapsed()
    );
    meshd.shutdown().await;
}

/// The names of `pid`'s threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_threads_share_the_listeners_and_a_sigterm_still_drains_them() {
    let _turn = ONE_SIDECAR_AT_A_TIME.lock().await;
    let dir = tempdir("sidecar-workers");
    let (meshd, root) = meshd_with_root(&dir).await;
    let (_, gamma) = test_support::workload(&meshd, "gamma", "gamma").await;
    let (ports, _app) = app_and_ports().await;
    let mut sidecar = Killed(sidecar_on(&meshd, &root, &ports, 3).spawn().unwrap());
    until_ready_is(ports.admin, 200).await;
    let names = thread_names(sidecar.0.id());
    for worker in ["mesh-worker-1", "mesh-worker-2"] {
        assert!(names.iter().any(|n| n == worker), "{names:?}");
    }
    test_support::sees(&gamma, "alpha").await;

    // Many connections at once (each call of its own client opens its own): whichever worker
    // the kernel gives each to, every one is served over mTLS, and so is the proxy's way out.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..24 {
        let client = gamma.client();
        let path = if i % 2 == 0 { "/hello" } else { "/health" };
        calls.spawn(async move {
            let r = client
                .get(
                    &format!("http://alpha:9080{path}"),
                    Default::default(),
                    PATIENCE,
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(r.status())
        });
    }
    for status in calls.join_all().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let proxy = Client::builder()
        .proxy(Some(Proxy::new(SocketAddr::from((
            [127, 0, 0, 1],
            ports.outbound,
        )))))
        .build();
    let body = proxy
        .get("http://alpha:9080/hello", Default::default(), PATIENCE)
        .await
        .unwrap();
    assert_eq!(body.status(), StatusCode::OK);

    // SIGTERM: every worker drains and the process exits cleanly.
    let pid = rustix::process::Pid::from_raw(i32::try_from(sidecar.0.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = sidecar.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar did not exit on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    meshd.shutdown().await;
}

/// A workload's local rate limit is the workload's, not each worker thread's: with three
/// workers accepting, a limit of 10 per hour admits 10 of 60 requests on 60 connections (a
/// bucket per worker admitted up to 30).
#[tokio::test(flavor = "multi_thread")]
async fn a_local_rate_limit_holds_across_worker_threads() {
    let _turn = ONE_SIDECAR_AT_A_TIME.lock().await;
    let dir = tempdir("sidecar-rate-limit");
    std::fs::write(
        dir.join("rate-limit.yaml"),
        "apiVersion: mesh.bookinfo.io/v1alpha1\nkind: LocalRateLimit\nmetadata:\n  name: alpha\n  namespace: default\nspec:\n  selector:\n    matchLabels:\n      app: alpha\n  maxTokens: 10\n  tokensPerFill: 10\n  fillInterval: 3600s\n",
    )
    .unwrap();
    let (meshd, root) = meshd_with_root(&dir).await;
    let (_, gamma) = test_support::workload(&meshd, "gamma", "gamma").await;
    let (ports, _app) = app_and_ports().await;
    let sidecar = Killed(sidecar_on(&meshd, &root, &ports, 3).spawn().unwrap());
    until_ready_is(ports.admin, 200).await;
    let names = thread_names(sidecar.0.id());
    assert!(names.iter().any(|n| n == "mesh-worker-2"), "{names:?}");
    test_support::sees(&gamma, "alpha").await;

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..60 {
        // A client of its own: a connection of its own, given to whichever worker accepts.
        let client = gamma.client();
        calls.spawn(async move {
            let r = client
                .get("http://alpha:9080/hello", Default::default(), PATIENCE)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(r.status())
        });
    }
    let mut admitted = 0;
    let mut limited = 0;
    for status in calls.join_all().await {
        match status.unwrap() {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((admitted, limited), (10, 50));
    meshd.shutdown().await;
}

#[test]
fn without_a_control_plane_the_sidecar_says_what_it_needs_and_exits_64() {
    let out = Command::new(SIDECAR)
        .args(["sidecar", "--service", "details"])
        .env_remove("MESH_CONTROL_PLANE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("MESH_CONTROL_PLANE must name meshd"),
        "{stderr}"
    );
    let out = Command::new(SIDECAR)
        .arg("sidecar")
        .env_remove("MESH_SERVICE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--service"));
}
