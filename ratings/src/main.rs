fn main() -> std::process::ExitCode {
    mesh::run::Service {
        name: "ratings",
        version: env!("CARGO_PKG_VERSION"),
        about: "Bookinfo ratings: star ratings per product (upstream-compatible). \
                SERVICE_VERSION selects v1 (default), v-faulty, v-delayed, v-unavailable \
                or v-unhealthy.",
    }
    .main(ratings::Config::from_env, |config, _client| {
        ratings::app(ratings::State::new(config))
    })
}
