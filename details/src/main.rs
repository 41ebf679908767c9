use std::process::ExitCode;

use clap::Parser;
use mesh::cli::ServeArgs;

/// Bookinfo details: book details as JSON (upstream-compatible).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match details::Config::from_env(&mesh::env::ProcessEnv) {
        Ok(c) => c,
        Err(e) => return mesh::run::config_error("details", &e),
    };
    mesh::run::service("details", &cli.serve, |_client| details::app(config))
}
