fn main() -> std::process::ExitCode {
    mesh::run::Service {
        name: "productpage",
        version: env!("CARGO_PKG_VERSION"),
        about: "Bookinfo productpage: the bookstore page and its JSON API (upstream-compatible). \
                Backends come from DETAILS_/REVIEWS_/RATINGS_HOSTNAME, *_SERVICE_PORT and \
                SERVICES_DOMAIN.",
    }
    .main(productpage::Config::from_env, |config, client| {
        productpage::app(productpage::State::new(config, client))
    })
}
