//! OpenTelemetry tracing in the mesh, so services get traces without a line of their own: a
//! server span per inbound request and a client span per outbound attempt (retries show as
//! separate attempts). W3C `traceparent`/`tracestate` come first; B3 multi-headers are accepted
//! and also emitted. The inbound side rewrites the request's `traceparent` to its server span
//! before the application sees it, so the headers the application forwards (as upstream
//! Bookinfo does) make the outbound spans its children. Spans leave through OTLP with a
//! bounded batch queue: exporting never blocks a request; a full queue drops spans.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::env::Vars;

/// One workload's tracer.
#[derive(Debug, Clone)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// The OTLP exporter cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces: {0}")]
pub struct TracingError(String);

impl Tracing {
    /// A tracer exporting to `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` over `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, default, or
    /// `http/protobuf`), sampled by `OTEL_TRACES_SAMPLER`; `None` when no endpoint is set.
    /// The service name is `OTEL_SERVICE_NAME`, else `service`. Needs a Tokio runtime.
    pub fn from_env(vars: &impl Vars, service: &str) -> Result<Option<Self>, TracingError> {
        let endpoint = vars
            .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| vars.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .filter(|e| !e.is_empty());
        let Some(endpoint) = endpoint else {
            return Ok(None);
        };
        let protocol = vars.get_or("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
        let name = vars.get_or("OTEL_SERVICE_NAME", service);
        Self::otlp(&endpoint, &protocol, &name).map(Some)
    }

    /// A tracer exporting to `endpoint` (e.g. `http://127.0.0.1:4317`) over `protocol`.
    pub fn otlp(endpoint: &str, protocol: &str, service: &str) -> Result<Self, TracingError> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
        let exporter = match protocol {
            "grpc" => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build(),
            "http/protobuf" => {
                let url = if endpoint.ends_with("/v1/traces") {
                    endpoint.to_owned()
                } else {
                    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                };
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(url)
                    .with_headers(Default::default())
                    .build()
            }
            other => {
                return Err(TracingError(format!(
                    "unsupported OTEL_EXPORTER_OTLP_PROTOCOL {other:?}"
                )));
            }
        }
        .map_err(|e| TracingError(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_owned())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("bookinfo-mesh");
        Ok(Self { provider, tracer })
    }

    /// Sends what is queued (at shutdown).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }

    /// Starts a span of `kind` whose parent is the context in `headers`, and writes the new
    /// span's context back into them (W3C, and B3 for client spans).
    pub fn start(
        &self,
        kind: SpanKind,
        name: String,
        headers: &mut HeaderMap,
        attributes: Vec<KeyValue>,
    ) -> SpanGuard {
        let parent = extract(headers);
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind.clone())
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let cx = parent.with_span(span);
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
        if kind == SpanKind::Client {
            let sc = cx.span().span_context().clone();
            let set = |h: &mut HeaderMap, k: &'static str, v: String| {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(k, v);
                }
            };
            set(headers, "x-b3-traceid", sc.trace_id().to_string());
            set(headers, "x-b3-spanid", sc.span_id().to_string());
            set(
                headers,
                "x-b3-sampled",
                if sc.is_sampled() {
                    "1".into()
                } else {
                    "0".into()
                },
            );
            headers.remove("x-b3-parentspanid");
        }
        SpanGuard { cx }
    }
}

/// An open span; ended by [`SpanGuard::finish`] (or when dropped).
#[derive(Debug)]
pub struct SpanGuard {
    cx: Context,
}

impl SpanGuard {
    pub fn finish(self, status: u16, attributes: Vec<KeyValue>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        span.set_attributes(attributes);
        if status >= 500 || status == 0 {
            span.set_status(Status::error(format!("status {status}")));
        }
        span.end();
    }
}

/// The parent context in `headers`: W3C first, then B3 multi-headers.
fn extract(headers: &HeaderMap) -> Context {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        return cx;
    }
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    if let (Some(t), Some(s)) = (get("x-b3-traceid"), get("x-b3-spanid")) {
        let trace = format!("{t:0>32}");
        if let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(&trace), SpanId::from_hex(s)) {
            let sampled =
                matches!(get("x-b3-sampled"), Some("1" | "true")) || get("x-b3-flags") == Some("1");
            let flags = if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            let sc = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
            if sc.is_valid() {
                return Context::new().with_remote_span_context(sc);
            }
        }
    }
    Context::new()
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(key), HeaderValue::from_str(&value)) {
            self.0.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w3c_first_then_b3() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        h.insert(
            "x-b3-traceid",
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7"),
        );
        h.insert("x-b3-spanid", HeaderValue::from_static("e457b5a2e4d86bd1"));
        let cx = extract(&h);
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        h.remove("traceparent");
        h.insert("x-b3-sampled", HeaderValue::from_static("1"));
        let cx = extract(&h);
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert!(cx.span().span_context().is_sampled());
        assert!(!extract(&HeaderMap::new()).span().span_context().is_valid());
    }
}
