use std::process::ExitCode;

use clap::Parser;
use mesh::cli::ServeArgs;

/// Bookinfo ratings: star ratings per product (upstream-compatible). SERVICE_VERSION selects
/// the variant: v1 (default), v-faulty, v-delayed, v-unavailable or v-unhealthy.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match ratings::Config::from_env(&mesh::env::ProcessEnv) {
        Ok(c) => c,
        Err(e) => return mesh::run::config_error("ratings", &e),
    };
    mesh::run::service("ratings", &cli.serve, |_client| {
        ratings::app(ratings::State::new(config))
    })
}
