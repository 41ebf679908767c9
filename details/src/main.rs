fn main() -> std::process::ExitCode {
    mesh::run::Service {
        name: "details",
        version: env!("CARGO_PKG_VERSION"),
        about: "Bookinfo details: book details as JSON (upstream-compatible).",
    }
    .main(details::Config::from_env, |config, _client| {
        details::app(config)
    })
}
