//! Bookinfo ratings: two reviewers' star ratings for any product id, held in memory (v1 and
//! the test variants) or read from MySQL (v2).
//!
//! Upstream is a Node.js `httpdispatcher` server. Kept: the route regex `^/ratings/[0-9]*`
//! with the id taken from the raw URL's last `/` segment by JavaScript `parseInt`, 400
//! `please provide numeric product ID` (capital "ID"), POST storing ratings per id, 404 with an
//! empty body for unmatched paths, the test variants selected by `SERVICE_VERSION`, v2's
//! MySQL query, error texts and 501 for POST, and JavaScript's numbers: the id is a double and
//! every number is written as `JSON.stringify` writes it ([`js`]).
//! Fixed: other methods get 405 instead of a request that never ends; the posted ratings
//! are bounded (at most [`MAX_STORED_PRODUCTS`] ids of at most [`MAX_BODY_BYTES`] each, and
//! [`MAX_STORED_BYTES`] in all) where upstream grows until the process runs out of memory; v2 answers **500** when it cannot
//! connect to the database, where upstream sends its error body with status 200; and v2's
//! lookups are bounded by [`db::DB_TIMEOUT`] where upstream waits for a hung database forever.
#![forbid(unsafe_code)]

pub mod db;
pub mod js;

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

use crate::db::{Db, DbError, MysqlConfig};

/// How long `v-delayed` holds a delayed answer.
pub const DELAYED_BY: Duration = Duration::from_secs(7);
/// How often `v-unavailable` toggles between answering and 503.
pub const UNAVAILABLE_PERIOD: Duration = Duration::from_secs(60);
/// How often `v-unhealthy` toggles its health and availability.
pub const UNHEALTHY_PERIOD: Duration = Duration::from_secs(15 * 60);
/// The largest POST body accepted, in bytes; larger is 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How many distinct product ids can hold posted ratings unless `RATINGS_MAX_PRODUCTS` says
/// otherwise; a POST for one more new id is 507. Upstream's store grows with every new id
/// anyone posts.
pub const MAX_STORED_PRODUCTS: usize = 10_000;
/// How many bytes the posted ratings may take in all unless `RATINGS_MAX_BYTES` says otherwise;
/// a POST that would take the store beyond it is 507. [`MAX_STORED_PRODUCTS`] ids of
/// [`MAX_BODY_BYTES`] each would be some 625 MiB, five times the 128 Mi memory limit of
/// `k8s/deploymentRating.yaml`; 32 MiB leaves the rest of that limit to the process itself.
pub const MAX_STORED_BYTES: usize = 32 * 1024 * 1024;
/// What a stored entry costs beyond the bytes of its id and ratings, counted against
/// [`MAX_STORED_BYTES`] so that many tiny entries cannot exceed it either: the map's slot
/// (`String` and `Box<str>`, with room for the table's growth) and the two allocations' headers.
pub const ENTRY_OVERHEAD_BYTES: usize = 128;

/// Which upstream ratings image this process behaves like (`SERVICE_VERSION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    /// In-memory ratings 5 and 4.
    #[default]
    V1,
    /// Ratings from MySQL (`DB_TYPE=mysql`, [`Config::mysql`]): the `Rating` of the first two
    /// rows of table `ratings` in database `test`, whatever the id; POST is 501. Upstream's
    /// other v2 backend, MongoDB, is not supported.
    V2,
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
    pub const NAMES: &'static str =
        "v1, v2 (with DB_TYPE=mysql), v-faulty, v-delayed, v-unavailable, v-unhealthy";

    fn parse(value: &str) -> Result<Self, VarError> {
        match value {
            "" | "v1" => Ok(Self::V1),
            "v2" => Ok(Self::V2),
            "v-faulty" => Ok(Self::Faulty),
            "v-delayed" => Ok(Self::Delayed),
            "v-unavailable" => Ok(Self::Unavailable),
            "v-unhealthy" => Ok(Self::Unhealthy),
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
    /// `RATINGS_MAX_BYTES`: the bytes all posted ratings may take together, each entry counted
    /// as its id, its ratings and [`ENTRY_OVERHEAD_BYTES`] (default [`MAX_STORED_BYTES`]).
    pub max_bytes: usize,
    /// The database of [`Variant::V2`] (`MYSQL_DB_*`); `Some` exactly when the variant is v2.
    pub mysql: Option<MysqlConfig>,
}

impl Config {
    /// Reads `SERVICE_VERSION`, `RATINGS_MAX_PRODUCTS`, `RATINGS_MAX_BYTES` and, for v2, `DB_TYPE` (which must be
    /// `mysql`) and [`MysqlConfig`]'s variables.
    pub fn from_env(vars: &impl Vars) -> Result<Self, VarError> {
        let variant = Variant::parse(&vars.get_or("SERVICE_VERSION", "v1"))?;
        let mysql = match variant {
            Variant::V2 => {
                // Upstream reads MongoDB unless DB_TYPE is exactly `mysql`.
                let db_type = vars.get("DB_TYPE");
                if db_type.as_deref() != Some("mysql") {
                    return Err(VarError::new(
                        "DB_TYPE",
                        &db_type.unwrap_or_default(),
                        "SERVICE_VERSION=v2 without DB_TYPE=mysql means MongoDB, which is not \
                         supported; set DB_TYPE=mysql (and MYSQL_DB_HOST, MYSQL_DB_PORT, \
                         MYSQL_DB_USER, MYSQL_DB_PASSWORD)",
                    ));
                }
                Some(MysqlConfig::from_env(vars)?)
            }
            _ => None,
        };
        Ok(Self {
            variant,
            max_products: vars.parse_or("RATINGS_MAX_PRODUCTS", MAX_STORED_PRODUCTS)?,
            max_bytes: vars.parse_or("RATINGS_MAX_BYTES", MAX_STORED_BYTES)?,
            mysql,
        })
    }

    /// v2 reading `mysql`.
    pub fn v2(mysql: MysqlConfig) -> Self {
        Self {
            variant: Variant::V2,
            mysql: Some(mysql),
            ..Self::default()
        }
    }
}

impl Default for Config {
    /// `v1` holding up to [`MAX_STORED_PRODUCTS`] posted ids in [`MAX_STORED_BYTES`].
    fn default() -> Self {
        Self {
            variant: Variant::V1,
            max_products: MAX_STORED_PRODUCTS,
            max_bytes: MAX_STORED_BYTES,
            mysql: None,
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
    max_bytes: usize,
    posted: Mutex<Posted>,
    /// v2's database.
    db: Option<Db>,
    started: Instant,
    /// The variants' 50 % chance; replaceable so tests can decide it.
    coin: Box<dyn Fn() -> bool + Send + Sync>,
}

/// The posted ratings and what they cost, under one lock so the count cannot drift.
#[derive(Default)]
struct Posted {
    /// Ratings by id, as compact JSON text of at most [`MAX_BODY_BYTES`]: a parsed `Value` can
    /// take many times the bytes of its body (`[0,0,…]` costs a whole `Value` per two bytes).
    by_id: HashMap<String, Box<str>>,
    /// The sum of [`Posted::cost`] over `by_id`.
    bytes: usize,
}

impl Posted {
    /// What an entry counts against [`Config::max_bytes`].
    fn cost(id: &str, ratings: &str) -> usize {
        id.len() + ratings.len() + ENTRY_OVERHEAD_BYTES
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("variant", &self.inner.variant)
            .field("max_products", &self.inner.max_products)
            .field("max_bytes", &self.inner.max_bytes)
            .finish_non_exhaustive()
    }
}

impl State {
    /// The state for `config`. For v2 this creates the database pool, which connects on the
    /// first lookup, not here: the service starts whether or not the database is up.
    ///
    /// # Panics
    ///
    /// When `config` is [`Variant::V2`] without [`Config::mysql`] ([`Config::from_env`] and
    /// [`Config::v2`] never make one).
    pub fn new(config: Config) -> Self {
        Self::with_coin(config, fastrand::bool)
    }

    /// A state whose 50 % chances are decided by `coin` (`true` means fault or delay).
    ///
    /// # Panics
    ///
    /// As [`State::new`].
    pub fn with_coin(config: Config, coin: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        let db = match (config.variant, &config.mysql) {
            (Variant::V2, Some(mysql)) => Some(Db::new(mysql)),
            (Variant::V2, None) => panic!("ratings v2 needs Config::mysql"),
            _ => None,
        };
        Self {
            inner: Arc::new(Inner {
                variant: config.variant,
                max_products: config.max_products,
                max_bytes: config.max_bytes,
                posted: Mutex::new(Posted::default()),
                db,
                started: Instant::now(),
                coin: Box::new(coin),
            }),
        }
    }

    /// The bytes the posted ratings take now, as counted against [`Config::max_bytes`].
    pub fn posted_bytes(&self) -> usize {
        self.inner
            .posted
            .lock()
            .expect("ratings lock is never poisoned")
            .bytes
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
        Variant::V2 => return database_ratings(state, id).await,
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
        .by_id
        .get(&js::number_to_string(id))
        .cloned();
    match posted {
        Some(ratings) => ratings_response(id, &ratings),
        None => ratings_response(id, r#"{"Reviewer1":5,"Reviewer2":4}"#),
    }
}

/// v2: the first two rows' ratings, or upstream's error texts with 500.
async fn database_ratings(state: &State, id: f64) -> Response {
    let db = state.inner.db.as_ref().expect("v2 always has a database");
    match db.ratings().await {
        Ok([first, second]) => ratings_response(
            id,
            &format!(r#"{{"Reviewer1":{first},"Reviewer2":{second}}}"#),
        ),
        Err(e) => {
            tracing::warn!("ratings v2: {e}");
            let message = match e {
                DbError::Connect(_) => "could not connect to ratings database",
                DbError::Select(_) => "could not perform select",
            };
            error(StatusCode::INTERNAL_SERVER_ERROR, message)
        }
    }
}

fn post_ratings(state: &State, raw_url: &str, body: &Bytes) -> Response {
    let Some(id) = product_id(raw_url) else {
        return error(StatusCode::BAD_REQUEST, "please provide numeric product ID");
    };
    let Ok(ratings) = js::reserialize(body) else {
        return error(StatusCode::BAD_REQUEST, "please provide valid ratings JSON");
    };
    // Upstream parses the body before it refuses the POST.
    if state.inner.variant == Variant::V2 {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "Post not implemented for database backed ratings",
        );
    }
    let ratings: Box<str> = ratings.into();
    // Re-serialising can grow a body (`1e15` becomes `1000000000000000`); refusing that keeps
    // every stored entry within the body limit.
    if ratings.len() > MAX_BODY_BYTES {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "ratings body too large");
    }
    let key = js::number_to_string(id);
    let max = state.inner.max_products;
    let max_bytes = state.inner.max_bytes;
    {
        let mut posted = state
            .inner
            .posted
            .lock()
            .expect("ratings lock is never poisoned");
        let replaced = posted.by_id.get(&key).map(|old| Posted::cost(&key, old));
        // Updating a stored id replaces its entry and cannot add an id.
        if posted.by_id.len() >= max && replaced.is_none() {
            return error(
                StatusCode::INSUFFICIENT_STORAGE,
                &format!("ratings store is full: at most {max} products can hold posted ratings"),
            );
        }
        let bytes = posted.bytes - replaced.unwrap_or(0) + Posted::cost(&key, &ratings);
        if bytes > max_bytes {
            return error(
                StatusCode::INSUFFICIENT_STORAGE,
                &format!(
                    "ratings store is full: posted ratings can take at most {max_bytes} bytes"
                ),
            );
        }
        posted.bytes = bytes;
        posted.by_id.insert(key, ratings.clone());
    }
    ratings_response(id, &ratings)
}

/// `{"id":…,"ratings":…}` around ratings already serialised as compact JSON, byte for byte
/// what `JSON.stringify` of the object gives, without parsing the stored text again.
fn ratings_response(id: f64, ratings: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"id":{},"ratings":{ratings}}}"#, js::json_number(id)),
    )
        .into_response()
}

/// The id upstream reads: JavaScript `parseInt` of the raw URL's last `/` segment, a double
/// (possibly infinite, which `JSON.stringify` writes as `null`, as upstream does).
fn product_id(raw_url: &str) -> Option<f64> {
    js::parse_int(raw_url.rsplit('/').next().unwrap_or(""))
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
    fn service_version_selects_variants_and_rejects_others_clearly() {
        let v = |s| Config::from_env(&[("SERVICE_VERSION", s)]).map(|c| c.variant);
        assert_eq!(v("v1"), Ok(Variant::V1));
        assert_eq!(v("v-faulty"), Ok(Variant::Faulty));
        assert_eq!(v("v-unhealthy"), Ok(Variant::Unhealthy));
        let err = v("v9").unwrap_err();
        assert!(
            err.to_string()
                .contains("expected one of v1, v2 (with DB_TYPE=mysql), v-faulty"),
            "{err}"
        );
        let empty: [(&str, &str); 0] = [];
        assert_eq!(Config::from_env(&empty).unwrap().variant, Variant::V1);
    }

    #[test]
    fn v2_reads_mysql_and_refuses_mongodb_clearly() {
        let mysql = [
            ("SERVICE_VERSION", "v2"),
            ("DB_TYPE", "mysql"),
            ("MYSQL_DB_HOST", "mysqldb"),
            ("MYSQL_DB_PORT", "3306"),
            ("MYSQL_DB_USER", "root"),
            ("MYSQL_DB_PASSWORD", "password"),
        ];
        let config = Config::from_env(&mysql).unwrap();
        assert_eq!(config.variant, Variant::V2);
        let db = config.mysql.unwrap();
        assert_eq!((db.host.as_str(), db.port), ("mysqldb", 3306));
        for db_type in [None, Some("mongodb"), Some("MySQL")] {
            let mut vars = vec![("SERVICE_VERSION", "v2"), ("MYSQL_DB_HOST", "db")];
            vars.extend(db_type.map(|t| ("DB_TYPE", t)));
            let vars: HashMap<&str, &str> = vars.into_iter().collect();
            let err = Config::from_env(&vars).unwrap_err();
            assert_eq!(err.name, "DB_TYPE", "{db_type:?}");
            assert!(
                err.reason.contains("means MongoDB, which is not supported"),
                "{err}"
            );
            assert!(err.reason.contains("set DB_TYPE=mysql"), "{err}");
        }
        let no_host = [("SERVICE_VERSION", "v2"), ("DB_TYPE", "mysql")];
        assert_eq!(
            Config::from_env(&no_host).unwrap_err().name,
            "MYSQL_DB_HOST"
        );
        // DB_TYPE and MYSQL_DB_* mean nothing to the other variants, as upstream.
        let v1 = Config::from_env(&[("DB_TYPE", "mysql"), ("MYSQL_DB_PORT", "x")]).unwrap();
        assert_eq!((v1.variant, v1.mysql), (Variant::V1, None));
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

    #[test]
    fn ratings_max_bytes_defaults_to_32_mib_and_must_be_a_number() {
        let empty: [(&str, &str); 0] = [];
        assert_eq!(
            Config::from_env(&empty).unwrap().max_bytes,
            MAX_STORED_BYTES
        );
        assert_eq!(Config::default().max_bytes, 32 * 1024 * 1024);
        let limit = |s| Config::from_env(&[("RATINGS_MAX_BYTES", s)]).map(|c| c.max_bytes);
        assert_eq!(limit("1048576"), Ok(1 << 20));
        assert_eq!(limit("32MiB").unwrap_err().name, "RATINGS_MAX_BYTES");
    }
}
