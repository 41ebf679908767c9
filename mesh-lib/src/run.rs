//! What a service binary's `main` does: parse the command line, read the configuration,
//! start logging and the runtime, bind, and serve until a signal.

use std::fmt::Display;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use clap::{Args, Command, FromArgMatches};

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tower::ServiceExt;

use crate::cli::ServeArgs;
use crate::control::client::WorkloadSpec;
use crate::env::{ProcessEnv, VarError, Vars};
use crate::{Client, Mesh, Server};

/// Exit code for a configuration the process cannot start with (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// Where a meshed service answers `/healthz/ready` in plaintext (Istio's sidecar uses 15021
/// the same way), so probes work under STRICT mTLS and authorization policies.
pub const DEFAULT_ADMIN_PORT: u16 = 15021;

/// How a service binary joins the mesh, read from the environment. Without
/// `MESH_CONTROL_PLANE` the service runs plain (on its own, or under Istio's sidecars).
#[derive(Debug, Clone)]
pub struct MeshEnv {
    pub spec: WorkloadSpec,
    pub trust_domain: String,
    pub admin_port: u16,
    /// `MESH_ACCESS_LOG` (on, off or a sampled fraction; default on) and
    /// `MESH_ACCESS_LOG_FORMAT` (json or text).
    pub access_log: crate::telemetry::AccessLog,
}

impl MeshEnv {
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
        Ok(Some(Self {
            spec: WorkloadSpec {
                control_plane,
                roots: crate::identity::TrustRoots::from_file(ca_file),
                token,
                service,
                labels,
                namespace: vars.get_or("MESH_NAMESPACE", "default"),
                service_account: vars.get_or("MESH_SERVICE_ACCOUNT", &format!("bookinfo-{name}")),
                admin_port: Some(vars.parse_or("MESH_ADMIN_PORT", DEFAULT_ADMIN_PORT)?),
            },
            trust_domain: vars.get_or("MESH_TRUST_DOMAIN", crate::identity::DEFAULT_TRUST_DOMAIN),
            admin_port: vars.parse_or("MESH_ADMIN_PORT", DEFAULT_ADMIN_PORT)?,
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
}

/// How long `--health-check` waits for `/health`.
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `--health-check`: 0 when the local service answers `GET /health` with 200.
fn health_check(name: &str, args: &ServeArgs, mesh: Option<&MeshEnv>) -> ExitCode {
    let url = match mesh {
        Some(m) => format!("http://127.0.0.1:{}/healthz/ready", m.admin_port),
        None => format!("http://{}/health", args.probe_addr()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result =
        runtime.block_on(Client::new().get(&url, Default::default(), HEALTH_CHECK_TIMEOUT));
    match result {
        Ok(response) if response.status() == http::StatusCode::OK => ExitCode::SUCCESS,
        Ok(response) => {
            eprintln!("{name}: {url} answered {}", response.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{name}: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One service binary, described for `--help`.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// The workload name, used in logs and errors.
    pub name: &'static str,
    /// The binary's version, for `--version`.
    pub version: &'static str,
    /// What `--help` says the binary is.
    pub about: &'static str,
}

impl Service {
    /// Runs the service: `config` reads the environment, `app` builds the router from it and
    /// a fresh outbound [`Client`]. Returns when the process is asked to stop.
    pub fn main<C, E: Display>(
        self,
        config: impl FnOnce(&ProcessEnv) -> Result<C, E>,
        app: impl FnOnce(C, Client) -> Router,
    ) -> ExitCode {
        let command = ServeArgs::augment_args(Command::new(self.name))
            .version(self.version)
            .about(self.about);
        let matches = command.get_matches();
        let args = ServeArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let mesh = match MeshEnv::from_env(&ProcessEnv, self.name) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{}: invalid configuration: {e}", self.name);
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        if args.health_check {
            return health_check(self.name, &args, mesh.as_ref());
        }
        let config = match config(&ProcessEnv) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}: invalid configuration: {e}", self.name);
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        crate::logging::init();
        crate::nofile::raise_at_start();
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("{}: cannot start the async runtime: {e}", self.name);
                return ExitCode::FAILURE;
            }
        };
        runtime.block_on(self.serve(&args, mesh, |client| app(config, client)))
    }

    async fn serve(
        self,
        args: &ServeArgs,
        mesh_env: Option<MeshEnv>,
        app: impl FnOnce(Client) -> Router,
    ) -> ExitCode {
        let server = match Server::bind(self.name, args.addr()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let Some(mesh_env) = mesh_env else {
            tracing::info!(
                "{} listening on http://{} (no mesh)",
                self.name,
                server.local_addr()
            );
            server
                .serve(app(Client::new()), crate::shutdown::signal())
                .await;
            tracing::info!("{} stopped", self.name);
            return ExitCode::SUCCESS;
        };
        let admin_addr = SocketAddr::new(args.bind, mesh_env.admin_port);
        let admin = match Server::bind(format!("{} admin", self.name), admin_addr).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut telemetry = crate::dataplane::Telemetry {
            access_log: mesh_env.access_log,
            ..Default::default()
        };
        telemetry.tracing = match crate::telemetry::tracing::Tracing::from_env(
            &ProcessEnv,
            &mesh_env.spec.service,
            &telemetry.metrics,
            &telemetry.recent_spans,
        ) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: invalid configuration: {e}", self.name);
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let mesh = match Mesh::start_with(
            mesh_env.spec.clone(),
            &mesh_env.trust_domain,
            server.local_addr(),
            telemetry,
        ) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{}: invalid configuration: {e}", self.name);
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let app = app(mesh.client());
        tracing::info!(
            "{} listening on {} as {} (meshd {}); readiness on http://{}/healthz/ready",
            self.name,
            server.local_addr(),
            mesh.identity(),
            mesh_env.spec.control_plane,
            admin.local_addr()
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut admin_stopped = stopped.clone();
        let admin_task = tokio::spawn(admin.serve(
            admin_router(mesh.clone(), app.clone()),
            async move {
                let _ = admin_stopped.wait_for(|s| *s).await;
            },
        ));
        let mut app_stopped = stopped;
        let tracing = mesh.telemetry().tracing.clone();
        let serving = tokio::spawn(server.with_mesh(mesh).serve(app, async move {
            let _ = app_stopped.wait_for(|s| *s).await;
        }));
        crate::shutdown::signal().await;
        let _ = stop.send(true);
        let _ = serving.await;
        let _ = admin_task.await;
        crate::telemetry::tracing::flush_at_exit(tracing.as_ref()).await;
        tracing::info!("{} stopped", self.name);
        ExitCode::SUCCESS
    }
}

/// The plaintext admin listener: `/healthz/ready` is 200 once the workload has its certificate
/// and config and its own `/health` (asked in process, past the mesh) answers 200;
/// `/stats/prometheus` and `/debug/spans` are its telemetry.
fn admin_router(mesh: Mesh, app: Router) -> Router {
    crate::telemetry::admin_router(mesh.telemetry()).route(
        "/healthz/ready",
        axum::routing::get(move || {
            let mesh = mesh.clone();
            let app = app.clone();
            async move {
                if !mesh.is_ready() {
                    return (
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        "mesh not ready: no certificate or config yet",
                    );
                }
                let health = http::Request::get("/health")
                    .body(axum::body::Body::empty())
                    .expect("a static request is valid");
                match app.oneshot(health).await {
                    Ok(r) if r.status() == http::StatusCode::OK => (http::StatusCode::OK, "ready"),
                    _ => (
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        "the service's /health is failing",
                    ),
                }
            }
        }),
    )
}
