fn main() -> std::process::ExitCode {
    mesh::run::Service {
        name: "reviews",
        version: env!("CARGO_PKG_VERSION"),
        about: "Bookinfo reviews: book reviews, with ratings when ENABLE_RATINGS=true \
                (v2: STAR_COLOR=black, v3: STAR_COLOR=red). Upstream-compatible.",
    }
    .main(reviews::Config::from_env, |config, client| {
        reviews::app(reviews::State { config, client })
    })
}
