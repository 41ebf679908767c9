//! Bookinfo reviews: two reviews of the book, with star ratings from the ratings service in
//! v2 (black) and v3 (red).
//!
//! Upstream is a Java JAX-RS service; kept: its hand-built JSON (spaces, string `id`,
//! `clustername` `"null"` when unset), 404 for ids that are not a Java `int`, one GET to
//! ratings per request with a 10 s timeout for black stars and 2.5 s for any other colour, and
//! the per-review `{"error": "Ratings service is currently unavailable"}` when that call fails.
#![forbid(unsafe_code)]

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;

use mesh::env::{VarError, Vars};
use mesh::propagation::backend_forwarded;

/// reviews → ratings timeout when the stars are black (v2).
pub const BLACK_STARS_RATINGS_TIMEOUT: Duration = Duration::from_millis(10_000);
/// reviews → ratings timeout for any other star colour (v3).
pub const OTHER_STARS_RATINGS_TIMEOUT: Duration = Duration::from_millis(2_500);

const REVIEWS: [(&str, &str); 2] = [
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ),
];

/// reviews configuration, from upstream's environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `ENABLE_RATINGS` (only `true`, any case, enables the ratings call).
    pub ratings_enabled: bool,
    /// `STAR_COLOR`, default `black`; also picks the ratings timeout.
    pub star_color: String,
    /// `http://<RATINGS_HOSTNAME><.SERVICES_DOMAIN>:<RATINGS_SERVICE_PORT>`.
    pub ratings_url: String,
    /// Reported as `podname`: `HOSTNAME` when it looks like a reviews pod, else a pod-like name.
    pub podname: String,
    /// Reported as `clustername`: `CLUSTER_NAME`, or the string `null` when unset.
    pub clustername: String,
}

impl Config {
    /// A configuration for the given upstream version (`v1`, `v2` or `v3`), as the upstream
    /// images set it, with ratings at `ratings_url`.
    pub fn version(version: &str, ratings_url: impl Into<String>) -> Self {
        let (ratings_enabled, star_color) = match version {
            "v1" => (false, "black"),
            "v2" => (true, "black"),
            _ => (true, "red"),
        };
        Self {
            ratings_enabled,
            star_color: star_color.to_owned(),
            ratings_url: ratings_url.into(),
            podname: pod_name(None, version),
            clustername: "null".to_owned(),
        }
    }

    pub fn from_env(vars: &impl Vars) -> Result<Self, VarError> {
        let ratings_enabled = vars
            .get("ENABLE_RATINGS")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let star_color = vars.get_or("STAR_COLOR", "black");
        let version = match vars.get("SERVICE_VERSION") {
            Some(v) if is_version(&v) => v,
            _ if !ratings_enabled => "v1".to_owned(),
            _ if star_color == "black" => "v2".to_owned(),
            _ => "v3".to_owned(),
        };
        Ok(Self {
            ratings_enabled,
            star_color,
            ratings_url: mesh::env::backend_url(vars, "ratings")?,
            podname: pod_name(vars.get("HOSTNAME").as_deref(), &version),
            clustername: vars.get_or("CLUSTER_NAME", "null"),
        })
    }

    /// The ratings timeout: 10 s for black stars, 2.5 s for any other colour.
    pub fn ratings_timeout(&self) -> Duration {
        if self.star_color == "black" {
            BLACK_STARS_RATINGS_TIMEOUT
        } else {
            OTHER_STARS_RATINGS_TIMEOUT
        }
    }
}

fn is_version(v: &str) -> bool {
    v.strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Tools and tutorials grep the page for `reviews-v.-`, so `podname` always has that shape:
/// a Kubernetes pod name is kept; anything else (a container id, a laptop's name) becomes the
/// suffix of `reviews-<version>-…`.
fn pod_name(hostname: Option<&str>, version: &str) -> String {
    match hostname {
        Some(h) if h.starts_with("reviews-v") => h.to_owned(),
        Some(h) if !h.is_empty() => {
            let suffix: String = h
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect();
            format!("reviews-{version}-{suffix}")
        }
        _ => {
            let alnum = |n| -> String {
                (0..n)
                    .map(|_| {
                        let chars = b"bcdfghjklmnpqrstvwxz2456789";
                        chars[fastrand::usize(..chars.len())] as char
                    })
                    .collect()
            };
            format!("reviews-{version}-{}-{}", alnum(10), alnum(5))
        }
    }
}

/// What a request handler needs.
#[derive(Debug, Clone)]
pub struct State {
    pub config: Config,
    pub client: mesh::Client,
}

/// The reviews router.
pub fn app(state: State) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/reviews/{product_id}", get(reviews))
        .with_state(state)
}

async fn health() -> Response {
    json(r#"{"status": "Reviews is healthy"}"#.to_owned())
}

async fn reviews(
    AxumState(state): AxumState<State>,
    Path(product_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    // JAX-RS binds the path parameter as a Java int; a failed conversion is a 404.
    let Some(product_id) = parse_java_int(&product_id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let stars = if state.config.ratings_enabled {
        fetch_ratings(&state, product_id, &headers).await
    } else {
        [None, None]
    };
    json(render(&state.config, product_id, stars))
}

/// The stars of Reviewer1 and Reviewer2, `None` where ratings could not say.
async fn fetch_ratings(state: &State, product_id: i32, incoming: &HeaderMap) -> [Option<i64>; 2] {
    let url = format!("{}/ratings/{product_id}", state.config.ratings_url);
    let mut headers = backend_forwarded(incoming);
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    let response = match state
        .client
        .get(&url, headers, state.config.ratings_timeout())
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("unable to contact {url}: {e}");
            return [None, None];
        }
    };
    if response.status() != StatusCode::OK {
        tracing::warn!("unable to contact {url}: got status {}", response.status());
        return [None, None];
    }
    let body: Value = match serde_json::from_slice(response.body()) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("ratings from {url} are not JSON: {e}");
            return [None, None];
        }
    };
    let stars = |reviewer: &str| {
        let v = &body["ratings"][reviewer];
        v.as_i64().or_else(|| v.as_f64().map(|f| f.trunc() as i64))
    };
    [stars(REVIEWS[0].0), stars(REVIEWS[1].0)]
}

/// Upstream's hand-built JSON, byte for byte.
fn render(config: &Config, product_id: i32, stars: [Option<i64>; 2]) -> String {
    let quoted = |s: &str| Value::from(s).to_string();
    let mut out = format!(
        "{{\"id\": \"{product_id}\",\"podname\": {},\"clustername\": {},\"reviews\": [",
        quoted(&config.podname),
        quoted(&config.clustername)
    );
    for (i, ((reviewer, text), stars)) in REVIEWS.iter().zip(stars).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{  \"reviewer\": {},  \"text\": {}",
            quoted(reviewer),
            quoted(text)
        ));
        if config.ratings_enabled {
            match stars {
                Some(n) => out.push_str(&format!(
                    ", \"rating\": {{\"stars\": {n}, \"color\": {}}}",
                    quoted(&config.star_color)
                )),
                None => out.push_str(
                    ", \"rating\": {\"error\": \"Ratings service is currently unavailable\"}",
                ),
            }
        }
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// Java's `Integer.valueOf(String)`: an optional sign and decimal digits within `i32`.
pub fn parse_java_int(text: &str) -> Option<i32> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_int_parsing() {
        assert_eq!(parse_java_int("0"), Some(0));
        assert_eq!(parse_java_int("+5"), Some(5));
        assert_eq!(parse_java_int("-7"), Some(-7));
        assert_eq!(parse_java_int("007"), Some(7));
        assert_eq!(parse_java_int("2147483647"), Some(i32::MAX));
        for bad in ["", "abc", "2147483648", "1.0", " 1", "0x1", "+", "1a"] {
            assert_eq!(parse_java_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn versions_map_to_upstream_settings() {
        let env = [
            ("ENABLE_RATINGS", "TRUE"),
            ("STAR_COLOR", "red"),
            ("HOSTNAME", "abc123"),
        ];
        let c = Config::from_env(&env).unwrap();
        assert!(c.ratings_enabled);
        assert_eq!(c.ratings_timeout(), Duration::from_millis(2500));
        assert_eq!(c.podname, "reviews-v3-abc123");
        assert_eq!(c.clustername, "null");
        assert_eq!(c.ratings_url, "http://ratings:9080");

        let empty: [(&str, &str); 0] = [];
        let c = Config::from_env(&empty).unwrap();
        assert!(!c.ratings_enabled);
        assert_eq!(c.star_color, "black");
        assert_eq!(c.ratings_timeout(), Duration::from_secs(10));
        assert!(c.podname.starts_with("reviews-v1-"), "{}", c.podname);

        let env = [
            ("HOSTNAME", "reviews-v2-5b5d6494f4-abcde"),
            ("CLUSTER_NAME", "east"),
        ];
        let c = Config::from_env(&env).unwrap();
        assert_eq!(c.podname, "reviews-v2-5b5d6494f4-abcde");
        assert_eq!(c.clustername, "east");
    }
}
