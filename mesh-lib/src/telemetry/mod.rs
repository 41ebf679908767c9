//! What the mesh tells about the traffic it carries: Istio-standard metrics ([`metrics`],
//! labelled alike by both reporters through `labels`), one access-log line per request
//! ([`access_log`]) and OpenTelemetry spans ([`tracing`], [`spans`]), recorded by the inbound
//! and outbound stacks so services get them without a line of their own; [`admin_router`]
//! serves them on a workload's admin port.

pub mod access_log;
mod finished;
pub(crate) mod labels;
pub mod metrics;
pub mod outbound;
pub mod spans;
pub mod tracing;

use std::sync::Arc;

pub use access_log::AccessLog;
pub use metrics::MeshMetrics;

/// Where a workload's metrics, access logs and spans go.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// Whether requests are recorded into `metrics` at all (off only to measure the cost).
    pub record_metrics: bool,
    /// Shared by every workload of a process (the launcher), or one per workload.
    pub metrics: Arc<MeshMetrics>,
    pub access_log: AccessLog,
    /// Spans to OTLP or into `recent_spans`; `None` when tracing is off.
    pub tracing: Option<tracing::Tracing>,
    /// The recent spans of tracers without an OTLP endpoint, for the dashboard.
    pub recent_spans: Arc<spans::SpanRing>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            record_metrics: true,
            metrics: Arc::default(),
            access_log: AccessLog::OFF,
            tracing: None,
            recent_spans: Arc::default(),
        }
    }
}

impl Telemetry {
    /// No metrics, logs or spans.
    pub fn off() -> Self {
        Self {
            record_metrics: false,
            ..Self::default()
        }
    }
}

/// The admin port's telemetry: `/stats/prometheus` (the Istio metrics, as Envoy serves them)
/// and `/debug/spans` (the recent spans, JSON, when no OTLP endpoint takes them).
pub fn admin_router(telemetry: &Telemetry) -> axum::Router {
    let metrics = telemetry.metrics.clone();
    let ring = telemetry.recent_spans.clone();
    axum::Router::new()
        .route(
            METRICS_PATH,
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { prometheus_response(&metrics) }
            }),
        )
        .route(
            SPANS_PATH,
            axum::routing::get(move || {
                let ring = ring.clone();
                async move { axum::Json(ring.recent()) }
            }),
        )
}

/// Where the admin port serves the Istio metrics (Envoy's path).
pub const METRICS_PATH: &str = "/stats/prometheus";

/// Where the admin port serves the recent spans.
pub const SPANS_PATH: &str = "/debug/spans";

/// The Prometheus exposition of `metrics`.
pub fn prometheus_response(metrics: &MeshMetrics) -> axum::response::Response {
    axum::response::IntoResponse::into_response((
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    ))
}

/// The header a meshed client adds so the server can name its source workload in metrics (as
/// Istio's peer metadata exchange does); trusted only on mTLS connections.
pub const PEER_HEADER: &str = "x-mesh-peer";

/// A workload as metrics name it: `reviews-v2`, app `reviews`, version `v2`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadName {
    pub workload: String,
    pub app: String,
    pub version: String,
}

impl WorkloadName {
    pub fn from_labels(service: &str, labels: &std::collections::BTreeMap<String, String>) -> Self {
        let app = labels
            .get("app")
            .cloned()
            .unwrap_or_else(|| service.to_owned());
        let version = labels.get("version").cloned().unwrap_or_default();
        let workload = if version.is_empty() {
            app.clone()
        } else {
            format!("{app}-{version}")
        };
        Self {
            workload,
            app,
            version,
        }
    }

    /// `workload;app;version`, the [`PEER_HEADER`] value.
    pub fn header_value(&self) -> String {
        format!("{};{};{}", self.workload, self.app, self.version)
    }

    pub fn parse_header(value: &str) -> Option<Self> {
        let mut parts = value.split(';');
        let (workload, app, version) = (parts.next()?, parts.next()?, parts.next()?);
        let clean = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && s.len() <= 63
        };
        (clean(workload) && clean(app) && clean(version) && !workload.is_empty()).then(|| Self {
            workload: workload.to_owned(),
            app: app.to_owned(),
            version: version.to_owned(),
        })
    }
}
