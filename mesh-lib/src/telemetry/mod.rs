//! What the mesh tells about the traffic it carries: Istio-standard metrics ([`metrics`]),
//! one access-log line per request ([`access_log`]), recorded by the inbound and outbound
//! stacks so services get them without a line of their own.

pub mod access_log;
pub(crate) mod inbound;
pub mod metrics;
pub mod outbound;
pub mod tracing;

pub use access_log::AccessLog;
pub use metrics::MeshMetrics;

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
