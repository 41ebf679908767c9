//! What a finished span holds until it is read or exported, and how it becomes OpenTelemetry's
//! `SpanData`: shared by the tracer that ends spans ([`super::tracing`]) and the sinks that keep
//! them ([`super::spans`]), neither of which needs the other's internals for it.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

/// Tracing cannot be set up as configured.
#[derive(Debug, thiserror::Error)]
#[error("cannot trace: {0}")]
pub struct TracingError(String);

impl TracingError {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

/// What a span is about, captured cheaply when it starts (clones of small or reference-counted
/// values); its name and attributes are made only when it is read or exported, off the
/// request's path.
///
/// The path is copied, not shared: a parsed request's `Uri` points into its connection's read
/// buffer, and a span kept in the ring or the export queue would pin that buffer (kilobytes)
/// and make the connection allocate a new one for its next request.
#[derive(Debug, Clone)]
pub enum SpanInfo {
    /// A request this workload serves.
    Server {
        method: http::Method,
        path: Box<str>,
        workload: Arc<str>,
        peer: Option<Arc<crate::identity::SpiffeId>>,
    },
    /// One attempt of a request this workload sends to `addr` for `authority`.
    Client {
        method: http::Method,
        path: Box<str>,
        authority: String,
        addr: std::net::SocketAddr,
        endpoint: Option<Arc<crate::control::Endpoint>>,
    },
}

impl SpanInfo {
    fn kind(&self) -> SpanKind {
        match self {
            Self::Server { .. } => SpanKind::Server,
            Self::Client { .. } => SpanKind::Client,
        }
    }

    /// The span's name and attributes (OpenTelemetry's HTTP conventions, plus the mesh's).
    fn describe(&self) -> (Cow<'static, str>, Vec<KeyValue>) {
        let (Self::Server { method, path, .. } | Self::Client { method, path, .. }) = self;
        let mut attributes = vec![
            KeyValue::new("http.request.method", method_value(method)),
            KeyValue::new("url.path", path.to_string()),
        ];
        let name = match self {
            Self::Server { workload, peer, .. } => {
                attributes.extend([
                    KeyValue::new("mesh.workload", workload.to_string()),
                    KeyValue::new(
                        "mesh.peer.principal",
                        peer.as_ref().map_or(String::new(), |p| p.principal()),
                    ),
                ]);
                format!("{method} {path}")
            }
            Self::Client {
                authority,
                addr,
                endpoint,
                ..
            } => {
                attributes.extend([
                    KeyValue::new("server.address", addr.ip().to_string()),
                    KeyValue::new("server.port", i64::from(addr.port())),
                    KeyValue::new(
                        "mesh.destination.workload",
                        endpoint.as_ref().map_or(String::new(), |e| {
                            super::WorkloadName::from_labels(&e.service, &e.labels).workload
                        }),
                    ),
                    KeyValue::new(
                        "mesh.destination.service",
                        endpoint
                            .as_ref()
                            .map_or(String::new(), |e| e.service.clone()),
                    ),
                ]);
                format!("{method} {authority}")
            }
        };
        (name.into(), attributes)
    }
}

/// A span that has ended, as the sinks keep it until it is read or exported.
#[derive(Debug, Clone)]
pub(crate) struct FinishedSpan {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    pub(crate) parent_span_id: SpanId,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    /// The response's status; 0 when there was none.
    pub(crate) status: u16,
    /// What the mesh did, as Envoy's response flags (`UF`, `UT`, `DC`, ...).
    pub(crate) flag: Option<&'static str>,
    pub(crate) info: SpanInfo,
}

impl FinishedSpan {
    /// The span as OpenTelemetry exports it.
    pub(crate) fn into_span_data(self) -> SpanData {
        let (name, mut attributes) = self.info.describe();
        if self.status != 0 {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(self.status),
            ));
        }
        if let Some(flag) = self.flag {
            attributes.push(KeyValue::new("mesh.response_flags", flag));
        }
        let status = if self.status >= 500 || self.status == 0 {
            Status::error(format!("status {}", self.status))
        } else {
            Status::Unset
        };
        SpanData {
            span_context: SpanContext::new(
                self.trace_id,
                self.span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: self.parent_span_id,
            parent_span_is_remote: self.parent_span_id != SpanId::INVALID,
            span_kind: self.info.kind(),
            name,
            start_time: self.start,
            end_time: self.end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope(),
        }
    }
}

/// The mesh's instrumentation scope.
fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("bookinfo-mesh")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// `http.request.method`'s value, without an allocation for the standard methods.
fn method_value(method: &http::Method) -> opentelemetry::Value {
    let known = match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => return opentelemetry::Value::from(method.as_str().to_owned()),
    };
    opentelemetry::Value::from(known)
}
