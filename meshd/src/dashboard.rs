//! meshd's dashboard: a live service graph (who calls whom, how often, how fast, with what
//! errors, over mTLS or not), the routing rules in force and the recent traces, with nothing
//! else to install. meshd scrapes the Istio metrics every registered workload exposes (the URL
//! it registered) and keeps a short window of samples; beside the metrics it reads the
//! workload's recent spans (`/debug/spans`, kept when no OTLP endpoint takes them) and joins
//! them into traces across workloads. The page (`dashboard.html`) polls `/api/graph` and
//! `/api/traces`. The metrics text is read here (`parse_into`) rather than by the
//! `prometheus-parse` crate, which splits labels at every `,` and `=` and does not unescape,
//! so a value holding `,` or `=` comes out cut or its label dropped and one holding `\"`
//! stays escaped, and which would bring chrono and a third itertools for one pass that keeps
//! two Istio series.

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

use crate::server::ControlPlane;
use mesh::Client;
use mesh::telemetry::spans::RecentSpan;

/// How often workloads are scraped.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(2);
/// The most meshd reads of one workload's metrics or spans: a workload's admin port is as
/// hostile as any peer, and one that answers without end must not fill meshd's memory (its
/// Kubernetes limit is 128 Mi). A workload's metrics are tens of kB.
pub const MAX_SCRAPE_BYTES: usize = 4 * 1024 * 1024;
/// How long one scrape may take, its whole body included.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The window rates and latencies are computed over.
pub const WINDOW: Duration = Duration::from_secs(30);
/// Spans the dashboard keeps, newest first, across all workloads.
pub const KEPT_SPANS: usize = 4096;
/// Traces `/api/traces` shows.
pub const SHOWN_TRACES: usize = 20;

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
    /// The spans read from the workloads, by span id.
    spans: Arc<Mutex<HashMap<String, RecentSpan>>>,
}

impl Dashboard {
    pub fn new(plane: ControlPlane) -> Self {
        Self {
            plane,
            samples: Arc::default(),
            spans: Arc::default(),
        }
    }

    /// The page and its API.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(|| async { Html(PAGE) }))
            .route("/api/graph", get(graph))
            .route("/api/traces", get(traces))
            .with_state(self)
    }

    /// Scrapes every registered workload every [`SCRAPE_INTERVAL`] until dropped.
    pub async fn scrape_forever(self) {
        let client = Client::builder()
            .max_response_body(MAX_SCRAPE_BYTES)
            .build();
        loop {
            let mut totals: HashMap<EdgeKey, EdgeTotals> = HashMap::new();
            let mut spans = Vec::new();
            for url in self.plane.metrics_urls() {
                if let Some(body) = fetch(&client, &url).await {
                    parse_into(&String::from_utf8_lossy(&body), &mut totals);
                }
                // The recent spans sit beside the metrics on the workload's admin port.
                let Some(admin) = url.strip_suffix(mesh::telemetry::METRICS_PATH) else {
                    continue;
                };
                let url = format!("{admin}{}", mesh::telemetry::SPANS_PATH);
                if let Some(body) = fetch(&client, &url).await {
                    match serde_json::from_slice::<Vec<RecentSpan>>(&body) {
                        Ok(s) => spans.extend(s),
                        Err(e) => tracing::debug!("reading {url}: {e}"),
                    }
                }
            }
            self.keep_spans(spans);
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

    fn keep_spans(&self, new: Vec<RecentSpan>) {
        let mut spans = self.spans.lock().expect("spans lock is never poisoned");
        for span in new {
            spans.insert(span.span_id.clone(), span);
        }
        if spans.len() > KEPT_SPANS {
            let mut ends: Vec<u64> = spans.values().map(|s| s.start_us + s.duration_us).collect();
            ends.sort_unstable_by(|a, b| b.cmp(a));
            let oldest_kept = ends[KEPT_SPANS - 1];
            spans.retain(|_, s| s.start_us + s.duration_us >= oldest_kept);
        }
    }

    /// The newest [`SHOWN_TRACES`] traces, each a tree of spans in start order.
    fn traces(&self) -> Value {
        let spans = self.spans.lock().expect("spans lock is never poisoned");
        json!({ "traces": assemble(spans.values(), SHOWN_TRACES) })
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

/// The body of a 200 from `url`; anything else is logged (a workload may be restarting).
async fn fetch(client: &Client, url: &str) -> Option<bytes::Bytes> {
    match client.get(url, HeaderMap::new(), SCRAPE_TIMEOUT).await {
        Ok(r) if r.status().is_success() => Some(r.into_body()),
        Ok(r) => {
            tracing::debug!("reading {url}: {}", r.status());
            None
        }
        Err(e) => {
            tracing::debug!("reading {url}: {e}");
            None
        }
    }
}

async fn graph(State(dashboard): State<Dashboard>) -> Response {
    axum::Json(dashboard.graph()).into_response()
}

async fn traces(State(dashboard): State<Dashboard>) -> Response {
    axum::Json(dashboard.traces()).into_response()
}

/// Groups `spans` into traces, newest first, at most `limit`: each with its root (the span
/// whose parent is not among them), its services and its spans depth-first in start order,
/// times relative to the trace's start.
fn assemble<'a>(spans: impl Iterator<Item = &'a RecentSpan>, limit: usize) -> Vec<Value> {
    let mut by_trace: HashMap<&str, Vec<&RecentSpan>> = HashMap::new();
    for span in spans {
        by_trace.entry(&span.trace_id).or_default().push(span);
    }
    let end = |s: &RecentSpan| s.start_us + s.duration_us;
    let mut traces: Vec<(u64, Vec<&RecentSpan>)> = by_trace
        .into_values()
        .map(|spans| (spans.iter().map(|s| end(s)).max().unwrap_or(0), spans))
        .collect();
    traces.sort_by_key(|t| std::cmp::Reverse(t.0));
    traces
        .into_iter()
        .take(limit)
        .map(|(last_end, mut spans)| {
            spans.sort_by_key(|s| s.start_us);
            let start = spans.first().map_or(0, |s| s.start_us);
            let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
            let is_root = |s: &RecentSpan| !ids.contains(s.parent_span_id.as_str());
            let mut ordered = Vec::with_capacity(spans.len());
            let mut stack: Vec<(&RecentSpan, usize)> = spans
                .iter()
                .filter(|s| is_root(s))
                .rev()
                .map(|s| (*s, 0))
                .collect();
            while let Some((span, depth)) = stack.pop() {
                ordered.push((span, depth));
                stack.extend(
                    spans
                        .iter()
                        .filter(|c| c.parent_span_id == span.span_id)
                        .rev()
                        .map(|c| (*c, depth + 1)),
                );
            }
            let root = spans.iter().find(|s| is_root(s)).copied();
            let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
            json!({
                "trace_id": spans[0].trace_id,
                "root": root.map(|r| format!("{}: {}", r.service, r.name)),
                "start_us": start,
                "duration_us": last_end - start,
                "services": services,
                "error": spans.iter().any(|s| s.error),
                "spans": ordered.iter().map(|(s, depth)| json!({
                    "span_id": s.span_id,
                    "service": s.service,
                    "name": s.name,
                    "kind": s.kind,
                    "depth": depth,
                    "offset_us": s.start_us - start,
                    "duration_us": s.duration_us,
                    "error": s.error,
                    "status": s.attributes.get("http.response.status_code"),
                    "flags": s.attributes.get("mesh.response_flags"),
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
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

    fn span(
        trace: &str,
        id: &str,
        parent: &str,
        service: &str,
        start: u64,
        dur: u64,
    ) -> RecentSpan {
        RecentSpan {
            trace_id: trace.into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            service: service.into(),
            name: format!("GET {service}"),
            kind: "server".into(),
            start_us: start,
            duration_us: dur,
            error: service == "ratings",
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn spans_from_several_workloads_join_into_trees_newest_trace_first() {
        let spans = [
            span("t1", "c", "b", "reviews", 1_030, 40),
            span("t1", "a", "client", "istio-ingressgateway", 1_000, 100),
            span("t1", "d", "c", "ratings", 1_040, 10),
            span("t1", "b", "a", "productpage", 1_010, 80),
            span("t1", "e", "b", "details", 1_015, 5),
            span("t2", "x", "", "productpage", 5_000, 10),
            span("t0", "y", "", "productpage", 10, 10),
        ];
        let traces = assemble(spans.iter(), 2);
        assert_eq!(traces.len(), 2, "the limit");
        assert_eq!(traces[0]["trace_id"], "t2");
        let t1 = &traces[1];
        assert_eq!(t1["root"], "istio-ingressgateway: GET istio-ingressgateway");
        assert_eq!(t1["duration_us"], 100);
        assert_eq!(t1["error"], true);
        let order: Vec<(String, u64, u64)> = t1["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["service"].as_str().unwrap().to_owned(),
                    s["depth"].as_u64().unwrap(),
                    s["offset_us"].as_u64().unwrap(),
                )
            })
            .collect();
        let expected = [
            ("istio-ingressgateway", 0, 0),
            ("productpage", 1, 10),
            ("details", 2, 15),
            ("reviews", 2, 30),
            ("ratings", 3, 40),
        ];
        assert_eq!(
            order,
            expected.map(|(s, d, o)| (s.to_owned(), d, o)).to_vec(),
            "depth-first, children in start order"
        );
    }
}
