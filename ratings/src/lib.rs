//! Bookinfo ratings: two reviewers' star ratings for any product id, held in memory.
//!
//! Upstream is a Node.js `httpdispatcher` server. Kept: the route regex `^/ratings/[0-9]*`
//! with the id taken from the raw URL's last `/` segment by JavaScript `parseInt`, 400
//! `please provide numeric product ID` (capital "ID"), POST storing ratings per id, 404 with an
//! empty body for unmatched paths, and the test variants selected by `SERVICE_VERSION`.
//! Fixed: other methods get 405 instead of a request that never ends, and the posted ratings
//! are bounded (at most [`MAX_STORED_PRODUCTS`] ids of at most [`MAX_BODY_BYTES`] each) where
//! upstream grows until the process runs out of memory.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State as AxumState};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::time::Instant;

use mesh::env::{VarError, Vars};

/// How long `v-delayed` holds a delayed answer.
pub const DELAYED_BY: Duration = Duration::from_secs(7);
/// How often `v-unavailable` toggles between answering and 503.
pub const UNAVAILABLE_PERIOD: Duration = Duration::from_secs(60);
/// How often `v-unhealthy` toggles its health and availability.
pub const UNHEALTHY_PERIOD: Duration = Duration::from_secs(15 * 60);
/// The largest POST body accepted, in bytes; larger is 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How many distinct product ids can hold posted ratings unless `RATINGS_MAX_PRODUCTS` says
/// otherwise; a POST for one more new id is 507. With [`MAX_BODY_BYTES`] per id this bounds the
/// store at some 625 MiB, where upstream's grows with every new id anyone posts.
pub const MAX_STORED_PRODUCTS: usize = 10_000;

/// Which upstream ratings image this process behaves like (`SERVICE_VERSION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    /// In-memory ratings 5 and 4.
    #[default]
    V1,
    /// Each GET has a 50 % chance of 503.
    Faulty,
    /// Each GET has a 50 % chance of a 7 s delay.
    Delayed,
    /// Toggles every 60 s between answering and 503, starting available.
    Unavailable,
    /// Toggles `/health` (200/500) and availability (200/503) every 15 min.
    Unhealthy,
}

impl Variant {
    pub const NAMES: &'static str = "v1, v-faulty, v-delayed, v-unavailable, v-unhealthy";

    fn parse(value: &str) -> Result<Self, VarError> {
        match value {
            "" | "v1" => Ok(Self::V1),
            "v-faulty" => Ok(Self::Faulty),
            "v-delayed" => Ok(Self::Delayed),
            "v-unavailable" => Ok(Self::Unavailable),
            "v-unhealthy" => Ok(Self::Unhealthy),
            "v2" => Err(VarError::new(
                "SERVICE_VERSION",
                value,
                format!(
                    "database-backed ratings (v2) are not supported; use one of {}",
                    Self::NAMES
                ),
            )),
            _ => Err(VarError::new(
                "SERVICE_VERSION",
                value,
                format!("expected one of {}", Self::NAMES),
            )),
        }
    }
}

/// ratings configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `SERVICE_VERSION` (default `v1`).
    pub variant: Variant,
    /// `RATINGS_MAX_PRODUCTS`: distinct ids that can hold posted ratings (default
    /// [`MAX_STORED_PRODUCTS`]; 0 refuses every new id).
    pub max_products: usize,
}

impl Config {
    pub fn from_env(vars: &impl Vars) -> Result<Self, VarError> {
        Ok(Self {
            variant: Variant::parse(&vars.get_or("SERVICE_VERSION", "v1"))?,
            max_products: vars.parse_or("RATINGS_MAX_PRODUCTS", MAX_STORED_PRODUCTS)?,
        })
    }
}

impl Default for Config {
    /// `v1` holding up to [`MAX_STORED_PRODUCTS`] posted ids.
    fn default() -> Self {
        Self {
            variant: Variant::V1,
            max_products: MAX_STORED_PRODUCTS,
        }
    }
}

/// Shared state: the posted ratings and what the variants need.
#[derive(Clone)]
pub struct State {
    inner: Arc<Inner>,
}

struct Inner {
    variant: Variant,
    max_products: usize,
    /// Posted ratings by id, as compact JSON text of at most [`MAX_BODY_BYTES`]: a parsed
    /// `Value` can take many times the bytes of its body (`[0,0,…]` costs a whole `Value` per
    /// two bytes).
    posted: Mutex<HashMap<String, Box<str>>>,
    started: Instant,
    /// The variants' 50 % chance; replaceable so tests can decide it.
    coin: Box<dyn Fn() -> bool + Send + Sync>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("variant", &self.inner.variant)
            .field("max_products", &self.inner.max_products)
            .finish_non_exhaustive()
    }
}

impl State {
    pub fn new(config: Config) -> Self {
        Self::with_coin(config, fastrand::bool)
    }

    /// A state whose 50 % chances are decided by `coin` (`true` means fault or delay).
    pub fn with_coin(config: Config, coin: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(Inner {
                variant: config.variant,
                max_products: config.max_products,
                posted: Mutex::new(HashMap::new()),
                started: Instant::now(),
                coin: Box::new(coin),
            }),
        }
    }

    /// Whether the toggling variants are in their failing phase now.
    fn failing_phase(&self) -> bool {
        let period = match self.inner.variant {
            Variant::Unavailable => UNAVAILABLE_PERIOD,
            Variant::Unhealthy => UNHEALTHY_PERIOD,
            _ => return false,
        };
        let phase = self.inner.started.elapsed().as_nanos() / period.as_nanos();
        phase % 2 == 1
    }
}

/// The ratings router. Routes are matched by hand because upstream matches an unanchored
/// regex on the path but reads the id from the raw URL, query string included.
pub fn app(state: State) -> Router {
    Router::new().fallback(handle).with_state(state)
}

async fn handle(AxumState(state): AxumState<State>, request: Request) -> Response {
    let path = request.uri().path();
    let is_ratings = path.starts_with("/ratings/");
    let is_health = path == "/health";
    if !is_ratings && !is_health {
        return StatusCode::NOT_FOUND.into_response();
    }
    let raw = request
        .uri()
        .path_and_query()
        .map_or(path, |pq| pq.as_str())
        .to_owned();
    let method = request.method().clone();
    match (method, is_health) {
        (Method::GET | Method::HEAD, true) => health(&state),
        (Method::GET | Method::HEAD, false) => get_ratings(&state, &raw).await,
        (Method::POST, false) => {
            let body = match axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES).await {
                Ok(b) => b,
                Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "ratings body too large"),
            };
            post_ratings(&state, &raw, &body)
        }
        (Method::POST, true) => StatusCode::NOT_FOUND.into_response(),
        _ => {
            let allow = if is_health {
                "GET, HEAD"
            } else {
                "GET, HEAD, POST"
            };
            (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, allow)], "").into_response()
        }
    }
}

fn health(state: &State) -> Response {
    if state.inner.variant == Variant::Unhealthy && state.failing_phase() {
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"status": "Ratings is not healthy"}),
        );
    }
    json_response(StatusCode::OK, &json!({"status": "Ratings is healthy"}))
}

async fn get_ratings(state: &State, raw_url: &str) -> Response {
    let Some(id) = product_id(raw_url) else {
        return error(StatusCode::BAD_REQUEST, "please provide numeric product ID");
    };
    match state.inner.variant {
        Variant::V1 => {}
        Variant::Faulty => {
            if (state.inner.coin)() {
                return error(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable");
            }
        }
        Variant::Delayed => {
            if (state.inner.coin)() {
                tokio::time::sleep(DELAYED_BY).await;
            }
        }
        Variant::Unavailable | Variant::Unhealthy => {
            if state.failing_phase() {
                return error(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable");
            }
        }
    }
    let posted = state
        .inner
        .posted
        .lock()
        .expect("ratings lock is never poisoned")
        .get(&id.to_string())
        .cloned();
    match posted {
        Some(ratings) => ratings_response(&id, &ratings),
        None => json_response(
            StatusCode::OK,
            &json!({"id": id, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}),
        ),
    }
}

fn post_ratings(state: &State, raw_url: &str, body: &Bytes) -> Response {
    let Some(id) = product_id(raw_url) else {
        return error(StatusCode::BAD_REQUEST, "please provide numeric product ID");
    };
    let Ok(ratings) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, "please provide valid ratings JSON");
    };
    let ratings: Box<str> = ratings.to_string().into();
    // Re-serialising can grow a body (`1e15` becomes `1000000000000000.0`); refusing that keeps
    // every stored entry within the body limit.
    if ratings.len() > MAX_BODY_BYTES {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "ratings body too large");
    }
    let key = id.to_string();
    let max = state.inner.max_products;
    {
        let mut posted = state
            .inner
            .posted
            .lock()
            .expect("ratings lock is never poisoned");
        // Updating a stored id replaces its entry and cannot grow the store.
        if posted.len() >= max && !posted.contains_key(&key) {
            return error(
                StatusCode::INSUFFICIENT_STORAGE,
                &format!("ratings store is full: at most {max} products can hold posted ratings"),
            );
        }
        posted.insert(key, ratings.clone());
    }
    ratings_response(&id, &ratings)
}

/// `{"id":…,"ratings":…}` around ratings already serialised as compact JSON, byte for byte
/// what serialising the object would give, without parsing the stored text again.
fn ratings_response(id: &serde_json::Number, ratings: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"id":{id},"ratings":{ratings}}}"#),
    )
        .into_response()
}

/// The id upstream reads: JavaScript `parseInt` of the raw URL's last `/` segment.
fn product_id(raw_url: &str) -> Option<serde_json::Number> {
    parse_js_int(raw_url.rsplit('/').next().unwrap_or(""))
}

/// JavaScript's `parseInt(text)`: leading whitespace, an optional sign, `0x` for hex, then as
/// many digits as there are. `None` where JavaScript gives `NaN`.
pub fn parse_js_int(text: &str) -> Option<serde_json::Number> {
    let s = text.trim_start();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, s) = match s.get(..2) {
        Some("0x" | "0X") => (16, &s[2..]),
        _ => (10, s),
    };
    let digits: Vec<u32> = s.chars().map_while(|c| c.to_digit(radix)).collect();
    if digits.is_empty() {
        return None;
    }
    // JavaScript numbers are doubles: exact as integers up to 2^53, approximate beyond.
    let mut exact: Option<i64> = Some(0);
    let mut approx = 0f64;
    for d in digits {
        exact = exact
            .and_then(|v| v.checked_mul(i64::from(radix)))
            .and_then(|v| v.checked_add(i64::from(d)));
        approx = approx * f64::from(radix) + f64::from(d);
    }
    match exact {
        Some(v) => Some(serde_json::Number::from(if negative { -v } else { v })),
        None => serde_json::Number::from_f64(if negative { -approx } else { approx }),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({"error": message}))
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_int_is_as_lenient_as_javascript() {
        for (text, want) in [
            ("0", "0"),
            ("1abc", "1"),
            ("-3", "-3"),
            ("0?x=1", "0"),
            ("  42", "42"),
            ("0x1A", "26"),
            ("007", "7"),
        ] {
            assert_eq!(parse_js_int(text).unwrap().to_string(), want, "{text:?}");
        }
        for text in ["", "abc", "-", "?x=1", "0x", " x1"] {
            assert!(parse_js_int(text).is_none(), "{text:?}");
        }
    }

    #[test]
    fn service_version_selects_variants_and_rejects_others_clearly() {
        let v = |s| Config::from_env(&[("SERVICE_VERSION", s)]).map(|c| c.variant);
        assert_eq!(v("v1"), Ok(Variant::V1));
        assert_eq!(v("v-faulty"), Ok(Variant::Faulty));
        assert_eq!(v("v-unhealthy"), Ok(Variant::Unhealthy));
        let err = v("v2").unwrap_err();
        assert!(err.reason.contains("not supported"), "{err}");
        let err = v("v9").unwrap_err();
        assert!(
            err.to_string().contains("expected one of v1, v-faulty"),
            "{err}"
        );
        let empty: [(&str, &str); 0] = [];
        assert_eq!(Config::from_env(&empty).unwrap().variant, Variant::V1);
    }

    #[test]
    fn ratings_max_products_defaults_to_the_documented_limit_and_must_be_a_number() {
        let empty: [(&str, &str); 0] = [];
        assert_eq!(
            Config::from_env(&empty).unwrap().max_products,
            MAX_STORED_PRODUCTS
        );
        assert_eq!(Config::default().max_products, MAX_STORED_PRODUCTS);
        let limit = |s| Config::from_env(&[("RATINGS_MAX_PRODUCTS", s)]).map(|c| c.max_products);
        assert_eq!(limit("25"), Ok(25));
        let err = limit("many").unwrap_err();
        assert_eq!(err.name, "RATINGS_MAX_PRODUCTS");
        assert!(limit("-1").is_err());
    }
}
