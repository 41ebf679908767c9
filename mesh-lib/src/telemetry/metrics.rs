//! Istio's standard metrics — `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes` with Istio's label names — so Kiali and
//! Istio's Grafana dashboards work unchanged, plus the mesh's own internals. Labels are
//! workloads, services, principals, status codes and flags only (never paths or ids), so their
//! number stays bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Istio's standard label set.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet, Default)]
pub struct IstioLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: String,
    pub response_code: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    pub workload: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EdgeLabels {
    pub source_workload: String,
    pub destination_service_name: String,
}

/// What became of a finished span on its way to OTLP: `exported`, `queue_full` (dropped
/// rather than make a request wait) or `export_failed`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanOutcomeLabels {
    pub outcome: String,
}

type HistogramFamily = Family<IstioLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // Istio's default buckets, in milliseconds.
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ])
}

fn bytes_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 8,
    ))
}

/// The metrics of one or more workloads (the in-process launcher shares one).
#[derive(Debug)]
pub struct MeshMetrics {
    registry: Registry,
    pub requests: Family<IstioLabels, Counter>,
    pub duration: HistogramFamily,
    pub request_bytes: HistogramFamily,
    pub response_bytes: HistogramFamily,
    pub retries: Family<EdgeLabels, Counter>,
    pub retry_budget_exhausted: Family<EdgeLabels, Counter>,
    pub ejections: Family<EdgeLabels, Counter>,
    pub cert_expiry: Family<WorkloadLabels, Gauge>,
    pub config_version: Family<WorkloadLabels, Gauge>,
    pub trace_spans: Family<SpanOutcomeLabels, Counter>,
    /// The four series of each label set, found once by a cheap key: building and hashing
    /// 18 label strings per request is most of what metrics would otherwise cost.
    series: std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<Series>>>,
}

/// A cheap key for a label set: the parts it is a function of, joined by a byte no header value
/// or name holds, so distinct parts never make one key.
pub(crate) fn series_key<'a>(parts: impl Iterator<Item = &'a str> + Clone) -> String {
    let mut key = String::with_capacity(parts.clone().map(|p| p.len() + 1).sum());
    for part in parts {
        key.push_str(part);
        key.push('\n');
    }
    key
}

/// The Istio series of one label set.
#[derive(Debug)]
struct Series {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl Default for MeshMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl MeshMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<IstioLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let request_bytes: HistogramFamily = Family::new_with_constructor(bytes_histogram);
        let response_bytes: HistogramFamily = Family::new_with_constructor(bytes_histogram);
        let retries = Family::<EdgeLabels, Counter>::default();
        let retry_budget_exhausted = Family::<EdgeLabels, Counter>::default();
        let ejections = Family::<EdgeLabels, Counter>::default();
        let cert_expiry = Family::<WorkloadLabels, Gauge>::default();
        let config_version = Family::<WorkloadLabels, Gauge>::default();
        let trace_spans = Family::<SpanOutcomeLabels, Counter>::default();
        registry.register(
            "istio_requests",
            "Requests, as Istio counts them",
            requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds",
            duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes in bytes",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes in bytes",
            response_bytes.clone(),
        );
        registry.register("mesh_retries", "Retried attempts", retries.clone());
        registry.register(
            "mesh_retry_budget_exhausted",
            "Retries the retry budget refused",
            retry_budget_exhausted.clone(),
        );
        registry.register(
            "mesh_outlier_ejections",
            "Endpoints ejected by outlier detection",
            ejections.clone(),
        );
        registry.register(
            "mesh_certificate_expiry_seconds",
            "Unix time at which the workload certificate expires",
            cert_expiry.clone(),
        );
        registry.register(
            "mesh_config_version",
            "Version of the last snapshot from meshd",
            config_version.clone(),
        );
        registry.register(
            "mesh_trace_spans",
            "Finished spans by what became of them on the way to OTLP",
            trace_spans.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            retries,
            retry_budget_exhausted,
            ejections,
            cert_expiry,
            config_version,
            trace_spans,
            series: Default::default(),
        }
    }

    /// Records one request under the label set `key` stands for; `labels` builds it the first
    /// time `key` is seen. `key` must determine the labels.
    pub fn record_keyed(
        &self,
        key: String,
        labels: impl FnOnce() -> IstioLabels,
        millis: f64,
        request_bytes: Option<u64>,
        response_bytes: Option<u64>,
    ) {
        let cached = self
            .series
            .read()
            .expect("series lock is never poisoned")
            .get(&key)
            .cloned();
        let series = match cached {
            Some(s) => s,
            None => {
                let labels = labels();
                let series = std::sync::Arc::new(Series {
                    requests: self.requests.get_or_create(&labels).clone(),
                    duration: self.duration.get_or_create(&labels).clone(),
                    request_bytes: self.request_bytes.get_or_create(&labels).clone(),
                    response_bytes: self.response_bytes.get_or_create(&labels).clone(),
                });
                self.series
                    .write()
                    .expect("series lock is never poisoned")
                    .insert(key, series.clone());
                series
            }
        };
        series.requests.inc();
        series.duration.observe(millis);
        if let Some(b) = request_bytes {
            series.request_bytes.observe(b as f64);
        }
        if let Some(b) = response_bytes {
            series.response_bytes.observe(b as f64);
        }
    }

    /// Records one request.
    pub fn record(
        &self,
        labels: &IstioLabels,
        millis: f64,
        request_bytes: Option<u64>,
        response_bytes: Option<u64>,
    ) {
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(millis);
        if let Some(b) = request_bytes {
            self.request_bytes.get_or_create(labels).observe(b as f64);
        }
        if let Some(b) = response_bytes {
            self.response_bytes.get_or_create(labels).observe(b as f64);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_names_and_labels() {
        let m = MeshMetrics::new();
        let labels = IstioLabels {
            reporter: "source".into(),
            source_workload: "productpage-v1".into(),
            destination_workload: "reviews-v2".into(),
            destination_service_name: "reviews".into(),
            response_code: "200".into(),
            response_flags: "-".into(),
            ..IstioLabels::default()
        };
        m.record(&labels, 12.0, Some(0), Some(300));
        let text = m.render();
        assert!(
            text.contains(
                "istio_requests_total{reporter=\"source\",source_workload=\"productpage-v1\""
            ),
            "{text}"
        );
        assert!(
            text.contains("istio_request_duration_milliseconds_bucket{"),
            "{text}"
        );
        assert!(
            text.contains("le=\"25.0\"") || text.contains("le=\"25\""),
            "{text}"
        );
        assert!(text.contains("istio_response_bytes_sum{"), "{text}");
    }
}
