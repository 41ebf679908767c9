//! productpage's calls to details, reviews and ratings, and the `request_result` metric that
//! counts their outcomes (once per result, not per attempt; no response counts as 500).

use std::time::Duration;

use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use mesh::propagation::{PRODUCTPAGE_FORWARDED, b3_reinject, forwarded};

use crate::{DETAILS_TIMEOUT, RATINGS_TIMEOUT, REVIEWS_ATTEMPTS, REVIEWS_TIMEOUT, Session, State};

pub(crate) const DETAILS_UNAVAILABLE: &str =
    "Sorry, product details are currently unavailable for this book.";
pub(crate) const REVIEWS_UNAVAILABLE: &str =
    "Sorry, product reviews are currently unavailable for this book.";
pub(crate) const RATINGS_UNAVAILABLE: &str =
    "Sorry, product ratings are currently unavailable for this book.";

/// The answer of one backend: its status and JSON body, or the status to report and the
/// error body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fetched {
    pub(crate) status: StatusCode,
    /// The backend's JSON on success, else `{"error": "<unavailable text>"}`.
    pub(crate) body: Value,
    pub(crate) ok: bool,
}

/// The headers productpage sends on every backend call: the allow-list, re-emitted B3
/// context, and `end-user` from the session (never from the incoming request).
pub(crate) fn outbound_headers(incoming: &HeaderMap, session: &Session) -> HeaderMap {
    let mut headers = forwarded(incoming, &PRODUCTPAGE_FORWARDED);
    b3_reinject(incoming, &mut headers);
    if let Some(user) = session.end_user() {
        headers.insert("end-user", user);
    }
    headers
}

/// The three services productpage calls, with upstream's timeout, attempts and error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Details,
    Reviews,
    Ratings,
}

impl Backend {
    fn app(self) -> &'static str {
        match self {
            Self::Details => "details",
            Self::Reviews => "reviews",
            Self::Ratings => "ratings",
        }
    }

    fn base_url(self, state: &State) -> &str {
        match self {
            Self::Details => &state.config.details_url,
            Self::Reviews => &state.config.reviews_url,
            Self::Ratings => &state.config.ratings_url,
        }
    }

    fn timeout(self) -> Duration {
        match self {
            Self::Details => DETAILS_TIMEOUT,
            Self::Reviews => REVIEWS_TIMEOUT,
            Self::Ratings => RATINGS_TIMEOUT,
        }
    }

    fn attempts(self) -> u32 {
        match self {
            Self::Reviews => REVIEWS_ATTEMPTS,
            Self::Details | Self::Ratings => 1,
        }
    }

    fn unavailable(self) -> &'static str {
        match self {
            Self::Details => DETAILS_UNAVAILABLE,
            Self::Reviews => REVIEWS_UNAVAILABLE,
            Self::Ratings => RATINGS_UNAVAILABLE,
        }
    }

    fn url(self, state: &State, id: &str) -> String {
        format!("{}/{}/{id}", self.base_url(state), self.app())
    }
}

/// `FLOOD_FACTOR` extra reviews calls, one after another, answers discarded. Each is a whole
/// [`fetch`] as upstream's (its two attempts, its `request_result` count).
pub(crate) async fn flood(state: &State, id: &str, headers: &HeaderMap) {
    for _ in 0..state.config.flood_factor {
        fetch(state, Backend::Reviews, id, headers).await;
    }
}

/// Up to the backend's number of attempts, each due within its timeout; any non-200 or error
/// is retried. The status of the last attempt is reported, 500 when it had no response.
pub(crate) async fn fetch(
    state: &State,
    backend: Backend,
    id: &str,
    headers: &HeaderMap,
) -> Fetched {
    let app = backend.app();
    let url = backend.url(state, id);
    let mut status = StatusCode::INTERNAL_SERVER_ERROR;
    for attempt in 1..=backend.attempts() {
        match state
            .client
            .get(&url, headers.clone(), backend.timeout())
            .await
        {
            Ok(response) if response.status() == StatusCode::OK => {
                match serde_json::from_slice::<Value>(response.body()) {
                    Ok(body) => {
                        state.metrics.record(app, StatusCode::OK);
                        return Fetched {
                            status: StatusCode::OK,
                            body,
                            ok: true,
                        };
                    }
                    Err(e) => {
                        // Upstream crashes with a 500 here; a bad body is a bad gateway.
                        tracing::warn!(attempt, "{app} answered 200 with invalid JSON: {e}");
                        status = StatusCode::BAD_GATEWAY;
                    }
                }
            }
            Ok(response) => {
                tracing::debug!(attempt, "{app} answered {}", response.status());
                status = response.status();
            }
            Err(e) => {
                tracing::warn!(attempt, "{app} call failed: {e}");
                status = StatusCode::INTERNAL_SERVER_ERROR;
            }
        }
    }
    state.metrics.record(app, status);
    Fetched {
        status,
        body: json!({"error": backend.unavailable()}),
        ok: false,
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    destination_app: String,
    response_code: String,
}

/// productpage's Prometheus metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    request_result: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let request_result = Family::<ResultLabels, Counter>::default();
        registry.register(
            "request_result",
            "Results of requests to backend services, by destination and status",
            request_result.clone(),
        );
        Self {
            registry,
            request_result,
        }
    }

    fn record(&self, app: &str, status: StatusCode) {
        self.request_result
            .get_or_create(&ResultLabels {
                destination_app: app.to_owned(),
                response_code: status.as_u16().to_string(),
            })
            .inc();
    }

    /// The exposition text (OpenMetrics).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// `GET /metrics`.
pub(crate) async fn metrics(AxumState(state): AxumState<State>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
