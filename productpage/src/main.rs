use std::process::ExitCode;

use clap::Parser;
use mesh::cli::ServeArgs;

/// Bookinfo productpage: the bookstore page and its JSON API (upstream-compatible). Backends
/// come from DETAILS_/REVIEWS_/RATINGS_HOSTNAME, *_SERVICE_PORT and SERVICES_DOMAIN.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match productpage::Config::from_env(&mesh::env::ProcessEnv) {
        Ok(c) => c,
        Err(e) => return mesh::run::config_error("productpage", &e),
    };
    mesh::run::service("productpage", &cli.serve, |client| {
        productpage::app(productpage::State::new(config, client))
    })
}
