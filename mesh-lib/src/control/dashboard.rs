//! meshd's dashboard: a live service graph (who calls whom, how often, how fast, with what
//! errors, over mTLS or not) and the routing rules in force, with nothing else to install.
//! meshd scrapes the Istio metrics every registered workload exposes (the URL it registered)
//! and keeps a short window of samples; the page (`dashboard.html`) polls `/api/graph`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use http::HeaderMap;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::server::ControlPlane;
use crate::Client;

/// How often workloads are scraped.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(2);
/// The window rates and latencies are computed over.
pub const WINDOW: Duration = Duration::from_secs(30);

const PAGE: &str = include_str!("dashboard.html");

/// One edge's cumulative counters at one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
struct EdgeTotals {
    service: String,
    mtls: bool,
    codes: BTreeMap<String, f64>,
    /// Cumulative histogram buckets: upper bound (ms) → count.
    buckets: BTreeMap<u64, f64>,
}

type EdgeKey = (String, String);

#[derive(Debug, Default)]
struct Samples {
    history: VecDeque<(Instant, HashMap<EdgeKey, EdgeTotals>)>,
}

/// The dashboard's state.
#[derive(Clone)]
pub struct Dashboard {
    plane: ControlPlane,
    samples: Arc<Mutex<Samples>>,
}

impl Dashboard {
    pub fn new(plane: ControlPlane) -> Self {
        Self {
            plane,
            samples: Arc::default(),
        }
    }

    /// The page and its API.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(|| async { Html(PAGE) }))
            .route("/api/graph", get(graph))
            .with_state(self)
    }

    /// Scrapes every registered workload every [`SCRAPE_INTERVAL`] until dropped.
    pub async fn scrape_forever(self) {
        let client = Client::new();
        loop {
            let mut totals: HashMap<EdgeKey, EdgeTotals> = HashMap::new();
            for url in self.plane.metrics_urls() {
                match client
                    .get(&url, HeaderMap::new(), Duration::from_secs(2))
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        parse_into(&String::from_utf8_lossy(r.body()), &mut totals);
                    }
                    Ok(r) => tracing::debug!("scraping {url}: {}", r.status()),
                    Err(e) => tracing::debug!("scraping {url}: {e}"),
                }
            }
            {
                let mut samples = self.samples.lock().expect("samples lock is never poisoned");
                let now = Instant::now();
                samples.history.push_back((now, totals));
                while samples.history.len() > 2
                    && now.duration_since(samples.history[1].0) >= WINDOW
                {
                    samples.history.pop_front();
                }
            }
            tokio::time::sleep(SCRAPE_INTERVAL).await;
        }
    }

    fn graph(&self) -> Value {
        let samples = self.samples.lock().expect("samples lock is never poisoned");
        let (first, last) = match (samples.history.front(), samples.history.back()) {
            (Some(f), Some(l)) => (f, l),
            _ => {
                return json!({"nodes": [], "edges": [], "routes": routes(&self.plane), "config_version": 0, "workloads": self.plane.registered(), "window_seconds": WINDOW.as_secs()});
            }
        };
        let seconds = last.0.duration_since(first.0).as_secs_f64().max(1.0);
        let mut nodes = BTreeSet::new();
        let mut edges = Vec::new();
        for ((source, destination), now) in &last.1 {
            let before = first.1.get(&(source.clone(), destination.clone()));
            let delta = |map_now: &BTreeMap<String, f64>,
                         map_before: Option<&BTreeMap<String, f64>>,
                         k: &str| {
                map_now.get(k).copied().unwrap_or(0.0)
                    - map_before.and_then(|m| m.get(k)).copied().unwrap_or(0.0)
            };
            let codes: BTreeMap<String, f64> = now
                .codes
                .keys()
                .map(|c| (c.clone(), delta(&now.codes, before.map(|b| &b.codes), c)))
                .filter(|(_, n)| *n > 0.0)
                .collect();
            // Within the window, or everything since the first scrape for a new edge.
            let (codes, buckets) = if codes.is_empty() && before.is_none() {
                (now.codes.clone(), now.buckets.clone())
            } else {
                let buckets = now
                    .buckets
                    .iter()
                    .map(|(le, n)| {
                        (
                            *le,
                            n - before
                                .and_then(|b| b.buckets.get(le))
                                .copied()
                                .unwrap_or(0.0),
                        )
                    })
                    .collect();
                (codes, buckets)
            };
            let requests: f64 = codes.values().sum();
            let errors: f64 = codes
                .iter()
                .filter(|(c, _)| c.starts_with('5') || c.as_str() == "0")
                .map(|(_, n)| n)
                .sum();
            nodes.insert(source.clone());
            nodes.insert(destination.clone());
            edges.push(json!({
                "source": source,
                "destination": destination,
                "service": now.service,
                "rps": (requests / seconds * 100.0).round() / 100.0,
                "error_ratio": if requests > 0.0 { errors / requests } else { 0.0 },
                "p50_ms": quantile(&buckets, 0.5),
                "p99_ms": quantile(&buckets, 0.99),
                "mtls": now.mtls,
                "requests": requests.round() as u64,
                "codes": codes.iter().map(|(c, n)| (c.clone(), n.round() as u64)).collect::<BTreeMap<_, _>>(),
            }));
        }
        let nodes: Vec<Value> = nodes
            .into_iter()
            .map(|id| {
                let (app, version) = match id.rsplit_once("-v") {
                    Some((app, v)) if v.chars().all(|c| c.is_ascii_digit()) => {
                        (app.to_owned(), format!("v{v}"))
                    }
                    _ => (id.clone(), String::new()),
                };
                let kind = if id == "istio-ingressgateway" {
                    "gateway"
                } else if id == "unknown" {
                    "unknown"
                } else {
                    "workload"
                };
                json!({"id": id, "app": app, "version": version, "kind": kind})
            })
            .collect();
        json!({
            "nodes": nodes,
            "edges": edges,
            "routes": routes(&self.plane),
            "config_version": self.plane.config_version(),
            "workloads": self.plane.registered(),
            "window_seconds": WINDOW.as_secs(),
        })
    }
}

async fn graph(State(dashboard): State<Dashboard>) -> Response {
    axum::Json(dashboard.graph()).into_response()
}

/// A line per VirtualService rule: its match and where it sends traffic.
fn routes(plane: &ControlPlane) -> Vec<Value> {
    let config = plane.config();
    config
        .virtual_services
        .iter()
        .map(|vs| {
            let rules: Vec<String> = vs
                .http
                .iter()
                .map(|rule| {
                    let to: Vec<String> = rule
                        .route
                        .iter()
                        .zip(rule.weights())
                        .map(|(d, w)| {
                            let subset = d
                                .destination
                                .subset
                                .as_deref()
                                .map_or(String::new(), |s| format!(" {s}"));
                            if rule.route.len() > 1 {
                                format!("{}{subset} {w}%", d.destination.host)
                            } else {
                                format!("{}{subset}", d.destination.host)
                            }
                        })
                        .collect();
                    let when = if rule.matches.is_empty() {
                        "default".to_owned()
                    } else {
                        format!("{} match(es)", rule.matches.len())
                    };
                    let extra = [
                        rule.fault.as_ref().map(|_| "fault".to_owned()),
                        rule.timeout.map(|t| format!("timeout {t:?}")),
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>();
                    let extra = if extra.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", extra.join(", "))
                    };
                    format!("{when} → {}{extra}", to.join(", "))
                })
                .collect();
            json!({
                "kind": "VirtualService",
                "namespace": vs.metadata.namespace,
                "name": vs.metadata.name,
                "summary": rules.join("; "),
            })
        })
        .collect()
}

/// `histogram_quantile` over cumulative buckets, interpolating linearly inside a bucket.
fn quantile(buckets: &BTreeMap<u64, f64>, q: f64) -> f64 {
    let total = buckets.values().copied().fold(0.0, f64::max);
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for (le, count) in buckets {
        let upper = *le as f64 / 1000.0;
        if *count >= rank {
            let width = upper - lower_bound;
            let inside = (rank - lower_count) / (count - lower_count).max(f64::MIN_POSITIVE);
            return ((lower_bound + width * inside) * 10.0).round() / 10.0;
        }
        lower_bound = upper;
        lower_count = *count;
    }
    lower_bound
}

/// Adds the `reporter="source"` Istio series of one scrape to `totals`.
fn parse_into(text: &str, totals: &mut HashMap<EdgeKey, EdgeTotals>) {
    for line in text.lines() {
        let (name, rest) = match line.split_once('{') {
            Some(x) => x,
            None => continue,
        };
        if name != "istio_requests_total" && name != "istio_request_duration_milliseconds_bucket" {
            continue;
        }
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.split_whitespace().next().unwrap_or("").parse::<f64>() else {
            continue;
        };
        let labels = parse_labels(labels);
        if labels.get("reporter").map(String::as_str) != Some("source") {
            continue;
        }
        let key = (
            labels.get("source_workload").cloned().unwrap_or_default(),
            labels
                .get("destination_workload")
                .cloned()
                .unwrap_or_default(),
        );
        let edge = totals.entry(key).or_default();
        edge.service = labels
            .get("destination_service_name")
            .cloned()
            .unwrap_or_default();
        if labels.get("connection_security_policy").map(String::as_str) == Some("mutual_tls") {
            edge.mtls = true;
        }
        if name == "istio_requests_total" {
            let code = labels.get("response_code").cloned().unwrap_or_default();
            *edge.codes.entry(code).or_default() += value;
        } else if let Some(le) = labels.get("le") {
            // Bounds in thousandths of a millisecond, so they sort as integers.
            let bound = if le == "+Inf" {
                u64::MAX
            } else {
                (le.parse::<f64>().unwrap_or(0.0) * 1000.0) as u64
            };
            *edge.buckets.entry(bound).or_default() += value;
        }
    }
}

fn parse_labels(text: &str) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_series_and_computes_quantiles() {
        let text = r#"# TYPE istio_requests total
istio_requests_total{reporter="source",source_workload="productpage-v1",destination_workload="reviews-v2",destination_service_name="reviews",response_code="200",connection_security_policy="mutual_tls"} 90
istio_requests_total{reporter="source",source_workload="productpage-v1",destination_workload="reviews-v2",destination_service_name="reviews",response_code="503",connection_security_policy="mutual_tls"} 10
istio_requests_total{reporter="destination",source_workload="productpage-v1",destination_workload="reviews-v2",response_code="200"} 90
istio_request_duration_milliseconds_bucket{reporter="source",source_workload="productpage-v1",destination_workload="reviews-v2",le="5.0"} 50
istio_request_duration_milliseconds_bucket{reporter="source",source_workload="productpage-v1",destination_workload="reviews-v2",le="10.0"} 100
istio_request_duration_milliseconds_bucket{reporter="source",source_workload="productpage-v1",destination_workload="reviews-v2",le="+Inf"} 100
"#;
        let mut totals = HashMap::new();
        parse_into(text, &mut totals);
        let edge = &totals[&("productpage-v1".to_owned(), "reviews-v2".to_owned())];
        assert_eq!(edge.codes["200"], 90.0);
        assert_eq!(edge.codes["503"], 10.0);
        assert!(edge.mtls);
        assert_eq!(quantile(&edge.buckets, 0.5), 5.0);
        assert_eq!(quantile(&edge.buckets, 0.99), 9.9);
        assert_eq!(
            totals.len(),
            1,
            "destination-reported series are not edges twice"
        );
    }
}
