fn main() -> std::process::ExitCode {
    mesh::run::Service {
        name: "ratings",
        version: env!("CARGO_PKG_VERSION"),
        about: "Bookinfo ratings: star ratings per product (upstream-compatible). \
                SERVICE_VERSION selects v1 (default), v-faulty, v-delayed, v-unavailable, \
                v-unhealthy or v2, which reads MySQL: DB_TYPE=mysql with MYSQL_DB_HOST, \
                MYSQL_DB_PORT (3306), MYSQL_DB_USER and MYSQL_DB_PASSWORD, database test \
                (upstream's MongoDB backend is not supported).",
    }
    .main(ratings::Config::from_env, |config, _client| {
        ratings::app(ratings::State::new(config))
    })
}
