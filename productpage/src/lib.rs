//! Bookinfo productpage: the bookstore page, login, and the JSON API in front of details,
//! reviews and ratings.
//!
//! Upstream is a Flask app. Kept: every route, the page markers tutorials grep for, the
//! signed `session` cookie with `end-user` on every backend call, the header allow-list with
//! B3 re-emission, simplejson-style API JSON, the `request_result` metric, and the backend
//! timeouts the fault-injection task depends on (details 3 s × 1, reviews 3 s × 2 attempts,
//! ratings 3 s × 1), and Werkzeug's own 404 and redirect pages. Fixed: login and logout
//! without a `Referer` redirect to `/productpage`, and the cookie's signing key is configured
//! or generated at start, never built in.
#![forbid(unsafe_code)]

mod api;
mod assets;
mod backends;
mod pages;
mod paths;
pub mod pyjson;
mod session;
mod werkzeug;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get, post};

use mesh::env::{VarError, Vars};

pub use backends::Metrics;
pub use session::{
    GENERATED_SESSION_SECRET_BYTES, MIN_SESSION_SECRET_BYTES, SESSION_SECRET_FILE_VAR,
    SESSION_SECRET_VAR, SecretError, Session, SessionSecret,
};

/// productpage → details: one attempt.
pub const DETAILS_TIMEOUT: Duration = Duration::from_secs(3);
/// productpage → reviews: per attempt.
pub const REVIEWS_TIMEOUT: Duration = Duration::from_secs(3);
/// productpage → reviews attempts. Upstream retries once on any failure "intentionally": the
/// fault-injection task's 6 s outcome depends on it.
pub const REVIEWS_ATTEMPTS: u32 = 2;
/// productpage → ratings (API route only): one attempt.
pub const RATINGS_TIMEOUT: Duration = Duration::from_secs(3);

/// productpage configuration, from upstream's environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Base URL of details (`DETAILS_HOSTNAME`, `SERVICES_DOMAIN`, `DETAILS_SERVICE_PORT`).
    pub details_url: String,
    /// Base URL of reviews (`REVIEWS_HOSTNAME`, `SERVICES_DOMAIN`, `REVIEWS_SERVICE_PORT`).
    pub reviews_url: String,
    /// Base URL of ratings (`RATINGS_HOSTNAME`, `SERVICES_DOMAIN`, `RATINGS_SERVICE_PORT`).
    pub ratings_url: String,
    /// `FLOOD_FACTOR`: extra reviews fetches per page view, each like the page's own (two
    /// attempts, counted in `request_result`), answers discarded (default 0).
    pub flood_factor: u32,
    /// Key of the session cookie's signature: `SESSION_SECRET`, the file named by
    /// `SESSION_SECRET_FILE`, or (neither set) [`GENERATED_SESSION_SECRET_BYTES`] random bytes
    /// generated at start.
    pub session_secret: SessionSecret,
}

impl Config {
    pub fn from_env(vars: &impl Vars) -> Result<Self, VarError> {
        Ok(Self {
            details_url: mesh::env::backend_url(vars, "details")?,
            reviews_url: mesh::env::backend_url(vars, "reviews")?,
            ratings_url: mesh::env::backend_url(vars, "ratings")?,
            flood_factor: vars.parse_or("FLOOD_FACTOR", 0)?,
            session_secret: SessionSecret::from_env(vars)?,
        })
    }
}

impl Default for Config {
    /// Upstream's defaults: `details:9080`, `reviews:9080`, `ratings:9080`, no flooding, and a
    /// freshly generated session secret.
    ///
    /// # Panics
    ///
    /// When the operating system cannot provide random bytes for the secret.
    fn default() -> Self {
        let unset: [(&str, &str); 0] = [];
        Self::from_env(&unset).expect("the defaults are valid and randomness is available")
    }
}

/// What every handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct State {
    pub config: Arc<Config>,
    pub client: mesh::Client,
    pub metrics: Arc<Metrics>,
}

impl State {
    pub fn new(config: Config, client: mesh::Client) -> Self {
        if config.session_secret.is_generated() {
            tracing::info!(
                "productpage signs sessions with a secret generated at start: sessions do not \
                 survive a restart and are not shared between replicas; set SESSION_SECRET or \
                 SESSION_SECRET_FILE to share one"
            );
        }
        Self {
            config: Arc::new(config),
            client,
            metrics: Arc::new(Metrics::new()),
        }
    }
}

/// Every route and its handlers.
type Route = (&'static str, fn() -> MethodRouter<State>);

const ROUTES: [Route; 12] = [
    ("/", || get(pages::index)),
    ("/index.html", || get(pages::index)),
    ("/productpage", || get(pages::product_page)),
    ("/login", || post(session::login)),
    ("/logout", || get(session::logout)),
    ("/api/v1/products", || get(api::products)),
    ("/api/v1/products/{id}", || get(api::product_details)),
    ("/api/v1/products/{id}/reviews", || {
        get(api::product_reviews)
    }),
    ("/api/v1/products/{id}/ratings", || {
        get(api::product_ratings)
    }),
    ("/health", || get(pages::health)),
    ("/metrics", || get(backends::metrics)),
    ("/static/{*path}", || get(assets::serve)),
];

/// The productpage router. Each route also answers OPTIONS as Flask does (200, empty, `Allow`),
/// and the path is decoded before routing ([`paths`]).
pub fn app(state: State) -> Router {
    let mut routes = Router::new();
    for (path, handlers) in ROUTES {
        let allow = if path == "/login" {
            "OPTIONS, POST"
        } else {
            "OPTIONS, GET, HEAD"
        };
        routes = routes.route(path, handlers().options(move || options(allow)));
    }
    let routes = routes.fallback(|| async { werkzeug::not_found() });
    Router::new()
        .fallback_service(routes.with_state(state))
        .layer(axum::middleware::from_fn_with_state(
            paths::Routes(ROUTES.iter().map(|(path, _)| *path).collect()),
            paths::upstream_path,
        ))
}

async fn options(allow: &'static str) -> axum::response::Response {
    (
        [
            (header::ALLOW, HeaderValue::from_static(allow)),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
        ],
        "",
    )
        .into_response()
}
