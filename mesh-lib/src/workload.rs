//! Starting a meshed workload, the one way every kind of workload starts: a service binary, the
//! ingress gateway, a sidecar, the launcher's workloads, tests and benchmarks. From its spec
//! (who it is, where meshd is, which root to trust) to a running data plane ([`Mesh`]: the
//! certificate and snapshot loops), its telemetry (access log, metrics, OTEL_* tracing), its
//! plaintext admin listener with the readiness probe, and its shutdown (spans flushed).
//!
//! - [`WorkloadEnv`]: the `MESH_*` environment a binary joins the mesh from;
//! - [`WorkloadBuilder`]: spec + telemetry → [`Mesh`];
//! - [`admin_router`] / [`Readiness`]: `/healthz/ready` and the telemetry routes;
//! - [`serve`]: the workload's listeners and its admin listener until shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use tower::ServiceExt;

use crate::control::client::{ControlError, WorkloadSpec};
use crate::dataplane::Telemetry;
use crate::env::{VarError, Vars};
use crate::telemetry::tracing::{Tracing, TracingError};
use crate::{Client, Mesh, Server};

/// Where a meshed workload answers `/healthz/ready` in plaintext (Istio's sidecar uses 15021
/// the same way), so probes work under STRICT mTLS and authorization policies.
pub const DEFAULT_ADMIN_PORT: u16 = 15021;

/// How a binary joins the mesh, read from the environment. Without `MESH_CONTROL_PLANE` it
/// runs plain (on its own, or under Istio's sidecars).
#[derive(Debug, Clone)]
pub struct WorkloadEnv {
    pub spec: WorkloadSpec,
    pub trust_domain: String,
    pub admin_port: u16,
    /// `MESH_ACCESS_LOG` (on, off or a sampled fraction; default on) and
    /// `MESH_ACCESS_LOG_FORMAT` (json or text).
    pub access_log: crate::telemetry::AccessLog,
}

impl WorkloadEnv {
    /// `MESH_CONTROL_PLANE` (meshd's URL, `https://…`), `MESH_CA_FILE` (meshd's root
    /// certificate, PEM, read when needed), `MESH_TOKEN_FILE` or `MESH_TOKEN`,
    /// `MESH_NAMESPACE` (default `default`), `MESH_SERVICE_ACCOUNT` (`bookinfo-<name>`),
    /// `MESH_SERVICE` (`<name>`), `SERVICE_VERSION` (label `version`, default `v1`),
    /// `MESH_TRUST_DOMAIN` (`cluster.local`), `MESH_ADMIN_PORT` (15021).
    pub fn from_env(vars: &impl Vars, name: &str) -> Result<Option<Self>, VarError> {
        let Some(control_plane) = vars.get("MESH_CONTROL_PLANE").filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        if let Err(e) = crate::control::connector::check_url(&control_plane) {
            return Err(VarError::new(
                "MESH_CONTROL_PLANE",
                &control_plane,
                e.to_string(),
            ));
        }
        let Some(ca_file) = vars.get("MESH_CA_FILE").filter(|v| !v.is_empty()) else {
            return Err(VarError::new(
                "MESH_CA_FILE",
                "",
                "joining the mesh needs meshd's root certificate (a file given out of band, e.g. mounted from meshd's --publish-root)",
            ));
        };
        let token_file = vars.get("MESH_TOKEN_FILE").map(std::path::PathBuf::from);
        let token = match (vars.get("MESH_TOKEN_FILE"), vars.get("MESH_TOKEN")) {
            (Some(path), _) => std::fs::read_to_string(&path)
                .map_err(|e| VarError::new("MESH_TOKEN_FILE", &path, e.to_string()))?
                .trim()
                .to_owned(),
            (None, Some(token)) => token,
            (None, None) => {
                return Err(VarError::new(
                    "MESH_TOKEN_FILE",
                    "",
                    "joining the mesh needs a bootstrap token (MESH_TOKEN_FILE or MESH_TOKEN)",
                ));
            }
        };
        if token.is_empty() {
            return Err(VarError::new(
                "MESH_TOKEN_FILE",
                "",
                "the bootstrap token is empty",
            ));
        }
        let service = vars.get_or("MESH_SERVICE", name);
        let labels = BTreeMap::from([
            ("app".to_owned(), service.clone()),
            ("version".to_owned(), vars.get_or("SERVICE_VERSION", "v1")),
        ]);
        let admin_port = vars.parse_or("MESH_ADMIN_PORT", DEFAULT_ADMIN_PORT)?;
        Ok(Some(Self {
            spec: WorkloadSpec {
                control_plane,
                roots: crate::identity::TrustRoots::from_file(ca_file),
                token,
                token_file,
                service,
                labels,
                namespace: vars.get_or("MESH_NAMESPACE", "default"),
                service_account: vars.get_or("MESH_SERVICE_ACCOUNT", &format!("bookinfo-{name}")),
                admin_port: Some(admin_port),
            },
            trust_domain: vars.get_or("MESH_TRUST_DOMAIN", crate::identity::DEFAULT_TRUST_DOMAIN),
            admin_port,
            access_log: crate::telemetry::AccessLog::parse(
                &vars.get_or("MESH_ACCESS_LOG", "on"),
                &vars.get_or("MESH_ACCESS_LOG_FORMAT", "json"),
            )
            .map_err(|reason| {
                VarError::new(
                    "MESH_ACCESS_LOG",
                    &vars.get_or("MESH_ACCESS_LOG", ""),
                    reason,
                )
            })?,
        }))
    }

    /// The workload this environment describes, with its access log and the `OTEL_*`
    /// tracing `vars` ask for.
    pub fn builder(&self, vars: &impl Vars) -> Result<WorkloadBuilder, TracingError> {
        WorkloadBuilder::new(self.spec.clone())
            .trust_domain(&self.trust_domain)
            .telemetry(Telemetry {
                access_log: self.access_log,
                ..Default::default()
            })
            .tracing_from_env(vars)
    }
}

/// A workload about to join the mesh.
#[derive(Debug, Clone)]
pub struct WorkloadBuilder {
    spec: WorkloadSpec,
    trust_domain: String,
    telemetry: Telemetry,
}

impl WorkloadBuilder {
    /// `spec` in the default trust domain, with default telemetry (metrics, no access log, no
    /// tracing).
    pub fn new(spec: WorkloadSpec) -> Self {
        Self {
            spec,
            trust_domain: crate::identity::DEFAULT_TRUST_DOMAIN.to_owned(),
            telemetry: Telemetry::default(),
        }
    }

    pub fn trust_domain(mut self, trust_domain: &str) -> Self {
        self.trust_domain = trust_domain.to_owned();
        self
    }

    /// Where its metrics, access log and spans go.
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Tracing as `OTEL_*` in `vars` asks (off when they turn it off).
    pub fn tracing_from_env(mut self, vars: &impl Vars) -> Result<Self, TracingError> {
        self.telemetry.tracing = Tracing::from_env(
            vars,
            &self.spec.service,
            &self.telemetry.metrics,
            &self.telemetry.recent_spans,
        )?;
        Ok(self)
    }

    /// Tracing into this workload's ring of recent spans (the dashboard's traces), sampled by
    /// default; what the launcher uses without an OTLP endpoint.
    pub fn tracing_to_ring(mut self) -> Self {
        self.telemetry.tracing = Some(Tracing::ring(
            self.telemetry.recent_spans.clone(),
            &self.spec.service,
            Default::default(),
        ));
        self
    }

    /// Tracing to the OTLP `endpoint` over `protocol` (`grpc` or `http/protobuf`), sampled by
    /// default.
    pub fn tracing_otlp(mut self, endpoint: &str, protocol: &str) -> Result<Self, TracingError> {
        self.telemetry.tracing = Some(Tracing::otlp(
            endpoint,
            protocol,
            &self.spec.service,
            Default::default(),
            Default::default(),
            &self.telemetry.metrics,
        )?);
        Ok(self)
    }

    pub fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    /// Joins the mesh as the workload serving at `serving`: its certificate and snapshot
    /// loops start in the background; until the certificate arrives, mTLS fails closed.
    pub fn start(self, serving: SocketAddr) -> Result<Mesh, ControlError> {
        Mesh::start(self.spec, &self.trust_domain, serving, self.telemetry)
    }
}

/// What `/healthz/ready` checks once the workload has its certificate and config.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// Nothing more (the gateway: the mesh is all it is).
    Mesh,
    /// The service's own `/health`, asked in process, past the mesh.
    App(Router),
    /// An application beside the workload answers `GET url` with 200 (a sidecar's app).
    Http(String),
}

/// The plaintext admin listener: `/healthz/ready` (200 once the workload has its certificate
/// and config and `readiness` holds), `/stats/prometheus` and `/debug/spans`.
pub fn admin_router(mesh: &Mesh, readiness: Readiness) -> Router {
    let probe_mesh = mesh.clone();
    crate::telemetry::admin_router(mesh.telemetry()).route(
        "/healthz/ready",
        axum::routing::get(move || {
            let mesh = probe_mesh.clone();
            let readiness = readiness.clone();
            async move {
                if !mesh.is_ready() {
                    return (
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        "mesh not ready: no certificate or config yet",
                    );
                }
                if is_healthy(readiness).await {
                    (http::StatusCode::OK, "ready")
                } else {
                    (
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        "the application's /health is failing",
                    )
                }
            }
        }),
    )
}

/// How long readiness waits for an application beside the workload.
pub const APP_HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn is_healthy(readiness: Readiness) -> bool {
    match readiness {
        Readiness::Mesh => true,
        Readiness::App(app) => {
            let health = http::Request::get("/health")
                .body(axum::body::Body::empty())
                .expect("a static request is valid");
            matches!(app.oneshot(health).await, Ok(r) if r.status() == http::StatusCode::OK)
        }
        Readiness::Http(url) => matches!(
            Client::new().get(&url, Default::default(), APP_HEALTH_TIMEOUT).await,
            Ok(r) if r.status() == http::StatusCode::OK
        ),
    }
}

/// Serves `listeners` (each as the caller set it up: through `mesh` with
/// [`Server::with_mesh`], or plain, as the gateway's way in) and, when given, the admin
/// listener until `shutdown`; then lets in-flight requests finish (each listener's grace) and
/// flushes the spans.
pub async fn serve(
    mesh: Mesh,
    listeners: Vec<(Server, Router)>,
    admin: Option<(Server, Readiness)>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    serve_here(&mesh, listeners, admin, shutdown, stop).await;
    drop(stopped);
    crate::telemetry::tracing::flush_at_exit(mesh.telemetry().tracing.as_ref()).await;
}

/// Serves `listeners` and `admin` on this thread's runtime until `shutdown`, then says so on
/// `stop` and waits for them to drain.
async fn serve_here(
    mesh: &Mesh,
    listeners: Vec<(Server, Router)>,
    admin: Option<(Server, Readiness)>,
    shutdown: impl Future<Output = ()>,
    stop: tokio::sync::watch::Sender<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    if let Some((server, readiness)) = admin {
        tasks.spawn(server.serve(admin_router(mesh, readiness), until(stop.subscribe())));
    }
    for (server, app) in listeners {
        tasks.spawn(server.serve(app, until(stop.subscribe())));
    }
    shutdown.await;
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
}

/// How many worker threads serve a proxy's listeners: `TOKIO_WORKER_THREADS` when set (as
/// tokio reads it), else one per core.
pub fn worker_count() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// [`serve`] on `workers` threads, each with a single-threaded runtime of its own, as Envoy
/// runs its workers: every listener's socket is shared by all of them (the kernel gives each
/// new connection to one), and each worker builds its own routers with `routers` (one per
/// server, in the same order), so its outbound connections are its own as well. A request
/// then never leaves the thread that accepted it: no wake-up crosses threads, which on a
/// small VM costs more than the request's own work. What the workload's clients must agree
/// on (endpoint health, the retry budget) is shared through `mesh`.
///
/// This thread's runtime runs the control loops, the admin listener and the first worker; it
/// should be single-threaded too.
pub async fn serve_on_workers<R>(
    mesh: Mesh,
    servers: Vec<Server>,
    routers: R,
    admin: Option<(Server, Readiness)>,
    shutdown: impl Future<Output = ()>,
    workers: usize,
) where
    R: Fn() -> Vec<Router> + Send + Sync + 'static,
{
    let workers = workers.max(1);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut here = Vec::new();
    let mut elsewhere: Vec<Vec<crate::server::SharedServer>> =
        (1..workers).map(|_| Vec::new()).collect();
    for server in servers {
        match server.for_workers(workers) {
            Ok((server, copies)) => {
                here.push(server);
                for (worker, copy) in elsewhere.iter_mut().zip(copies) {
                    worker.push(copy);
                }
            }
            Err(e) => {
                tracing::error!("cannot share a listener between worker threads: {e}");
                return;
            }
        }
    }
    let routers = std::sync::Arc::new(routers);
    let mut threads = Vec::new();
    for (n, servers) in elsewhere.into_iter().enumerate() {
        let (routers, stopped) = (routers.clone(), stopped.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("mesh-worker-{}", n + 1))
            .spawn(move || worker(servers, &*routers, stopped));
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(e) => tracing::warn!("cannot start worker thread {}: {e}", n + 1),
        }
    }
    let listeners = here.into_iter().zip(routers()).collect();
    serve_here(&mesh, listeners, admin, shutdown, stop).await;
    let joined = tokio::task::spawn_blocking(move || {
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    });
    let _ = joined.await;
    crate::telemetry::tracing::flush_at_exit(mesh.telemetry().tracing.as_ref()).await;
}

/// Resolves once `stopped` says so (or its sender is gone).
async fn until(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// One worker thread: its own runtime, its copies of the listeners, its own routers.
fn worker(
    servers: Vec<crate::server::SharedServer>,
    routers: &(dyn Fn() -> Vec<Router> + Send + Sync),
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("a worker thread cannot start its runtime: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for (shared, app) in servers.into_iter().zip(routers()) {
            match shared.into_server() {
                Ok(server) => {
                    tasks.spawn(server.serve(app, until(stopped.clone())));
                }
                Err(e) => tracing::error!("a worker thread cannot take a listener: {e}"),
            }
        }
        while tasks.join_next().await.is_some() {}
    });
}
