//! What a service binary's `main` does: logging, runtime, bind, serve until a signal.

use std::process::ExitCode;

use axum::Router;

use crate::cli::ServeArgs;
use crate::{Client, Server};

/// Exit code for a configuration the process cannot start with (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// Runs one service: builds its router with a fresh outbound [`Client`], serves it on
/// `args.addr()` and returns when the process is asked to stop.
pub fn service(name: &str, args: &ServeArgs, make_app: impl FnOnce(Client) -> Router) -> ExitCode {
    crate::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let server = match Server::bind(name, args.addr()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let app = make_app(Client::new());
        tracing::info!("{name} listening on http://{}", server.local_addr());
        server.serve(app, crate::shutdown::signal()).await;
        tracing::info!("{name} stopped");
        ExitCode::SUCCESS
    })
}

/// Prints a configuration error the way every binary does and returns [`EXIT_CONFIG`].
pub fn config_error(name: &str, error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{name}: invalid configuration: {error}");
    ExitCode::from(EXIT_CONFIG)
}
