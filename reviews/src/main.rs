use std::process::ExitCode;

use clap::Parser;
use mesh::cli::ServeArgs;

/// Bookinfo reviews: book reviews, with ratings when ENABLE_RATINGS=true (v2: STAR_COLOR=black,
/// v3: STAR_COLOR=red). Upstream-compatible.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match reviews::Config::from_env(&mesh::env::ProcessEnv) {
        Ok(c) => c,
        Err(e) => return mesh::run::config_error("reviews", &e),
    };
    mesh::run::service("reviews", &cli.serve, |client| {
        reviews::app(reviews::State { config, client })
    })
}
