//! What a service binary's `main` does: parse the command line, read the configuration,
//! start logging and the runtime, bind, and serve until a signal.

use std::fmt::Display;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use clap::{Args, Command, FromArgMatches};

use crate::cli::ServeArgs;
use crate::env::ProcessEnv;
use crate::{Client, Server};

/// Exit code for a configuration the process cannot start with (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// How long `--health-check` waits for `/health`.
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `--health-check`: 0 when the local service answers `GET /health` with 200.
fn health_check(name: &str, args: &ServeArgs) -> ExitCode {
    let url = format!("http://{}/health", args.probe_addr());
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
        if args.health_check {
            return health_check(self.name, &args);
        }
        let config = match config(&ProcessEnv) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}: invalid configuration: {e}", self.name);
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        crate::logging::init();
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("{}: cannot start the async runtime: {e}", self.name);
                return ExitCode::FAILURE;
            }
        };
        runtime.block_on(self.serve(&args, app(config, Client::new())))
    }

    async fn serve(self, args: &ServeArgs, app: Router) -> ExitCode {
        let server = match Server::bind(self.name, args.addr()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!("{} listening on http://{}", self.name, server.local_addr());
        server.serve(app, crate::shutdown::signal()).await;
        tracing::info!("{} stopped", self.name);
        ExitCode::SUCCESS
    }
}
