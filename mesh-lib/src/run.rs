//! What a service binary's `main` does: parse the command line, read the configuration,
//! start logging and the runtime, bind, and serve until a signal.

use std::fmt::Display;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use clap::{Args, Command, FromArgMatches};

use std::net::SocketAddr;

use crate::cli::ServeArgs;
use crate::env::{ProcessEnv, VarError, Vars};
use crate::outbound::proxy::{DEFAULT_SIDECAR_PROXY, Proxy};
use crate::workload::{self, Readiness, WorkloadEnv};
use crate::{Client, Server};

/// Exit code for a configuration the process cannot start with (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// How long `--health-check` waits for `/health`.
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `--health-check`: 0 when the local service answers `GET /health` with 200.
fn health_check(name: &str, args: &ServeArgs, mesh: Option<&WorkloadEnv>) -> ExitCode {
    let url = match mesh {
        Some(m) => format!("http://127.0.0.1:{}/healthz/ready", m.admin_port),
        None => format!("http://{}/health", args.probe_addr()),
    };
    probe(name, &url)
}

/// A container health check that needs no shell or curl: 0 when `GET url` answers 200 within
/// [`HEALTH_CHECK_TIMEOUT`], else 1 with the reason on stderr.
pub fn probe(name: &str, url: &str) -> ExitCode {
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
    let result = runtime.block_on(Client::new().get(url, Default::default(), HEALTH_CHECK_TIMEOUT));
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

/// How a service binary meets the mesh (`MESH_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshMode {
    /// `embedded` (the default): it joins meshd itself when `MESH_CONTROL_PLANE` is set.
    Embedded,
    /// `sidecar`: a `mesh-proxy sidecar` beside it is the mesh; it serves plaintext on
    /// loopback (unless `--bind` says otherwise) and calls its backends through the sidecar's
    /// outbound proxy (`HTTP_PROXY`, default `http://127.0.0.1:15001`).
    Sidecar,
}

impl MeshMode {
    pub fn from_env(vars: &impl Vars) -> Result<Self, VarError> {
        match vars.get("MESH_MODE").as_deref() {
            None | Some("" | "embedded") => Ok(Self::Embedded),
            Some("sidecar") => Ok(Self::Sidecar),
            Some(other) => Err(VarError::new(
                "MESH_MODE",
                other,
                "expected embedded or sidecar",
            )),
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
        let mut args = ServeArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let joined = MeshMode::from_env(&ProcessEnv).and_then(|mode| {
            let proxy_default = match mode {
                MeshMode::Embedded => None,
                MeshMode::Sidecar => {
                    // Only the sidecar beside it may reach it.
                    if matches.value_source("bind") != Some(clap::parser::ValueSource::CommandLine)
                    {
                        args.bind = args.bind_loopback();
                    }
                    Some(DEFAULT_SIDECAR_PROXY)
                }
            };
            let proxy = Proxy::from_env(&ProcessEnv, proxy_default)?;
            let mesh = match mode {
                MeshMode::Embedded => WorkloadEnv::from_env(&ProcessEnv, self.name)?,
                MeshMode::Sidecar => None,
            };
            Ok((mesh, proxy))
        });
        let (mesh, proxy) = match joined {
            Ok(joined) => joined,
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
        runtime.block_on(self.serve(&args, mesh, proxy, |client| app(config, client)))
    }

    async fn serve(
        self,
        args: &ServeArgs,
        mesh_env: Option<WorkloadEnv>,
        proxy: Option<Proxy>,
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
            match &proxy {
                Some(p) => tracing::info!(
                    "{} listening on http://{} (no mesh; calls go through the proxy http://{})",
                    self.name,
                    server.local_addr(),
                    p.addr
                ),
                None => tracing::info!(
                    "{} listening on http://{} (no mesh)",
                    self.name,
                    server.local_addr()
                ),
            }
            let client = Client::builder().proxy(proxy).build();
            server.serve(app(client), crate::shutdown::signal()).await;
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
        let mesh = match mesh_env
            .builder(&ProcessEnv)
            .map_err(|e| e.to_string())
            .and_then(|b| b.start(server.local_addr()).map_err(|e| e.to_string()))
        {
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
        let readiness = Readiness::App(app.clone());
        let server = server.with_mesh(mesh.clone());
        workload::serve(
            mesh,
            vec![(server, app)],
            Some((admin, readiness)),
            crate::shutdown::signal(),
        )
        .await;
        tracing::info!("{} stopped", self.name);
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_mode_is_embedded_unless_it_says_sidecar() {
        assert_eq!(MeshMode::from_env(&[("X", "")]), Ok(MeshMode::Embedded));
        assert_eq!(
            MeshMode::from_env(&[("MESH_MODE", "embedded")]),
            Ok(MeshMode::Embedded)
        );
        assert_eq!(
            MeshMode::from_env(&[("MESH_MODE", "sidecar")]),
            Ok(MeshMode::Sidecar)
        );
        let err = MeshMode::from_env(&[("MESH_MODE", "ambient")]).unwrap_err();
        assert!(
            err.to_string().contains("expected embedded or sidecar"),
            "{err}"
        );
    }
}
