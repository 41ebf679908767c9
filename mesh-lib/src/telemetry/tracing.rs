//! OpenTelemetry tracing in the mesh, so services get traces without a line of their own: a
//! server span per inbound request and a client span per outbound attempt (retries show as
//! separate attempts). W3C `traceparent` comes first (`tracestate` passes through untouched);
//! B3 multi-headers are accepted, and emitted as [`Propagators`] says. The inbound side rewrites the request's
//! `traceparent` to its server span before the application sees it, so the headers the
//! application forwards (as upstream Bookinfo does) make the outbound spans its children.
//!
//! Spans are the SDK's `SpanData`, built here rather than through the SDK's tracer: a proxy
//! knows everything about its span when it starts and ends it, and skipping the tracer's
//! context, locking and processor fan-out is most of what tracing would otherwise cost per hop
//! (as linkerd2-proxy does). Unsampled spans only propagate: their names and attributes are
//! never built. Finished spans go to OTLP through a bounded queue, or without an endpoint
//! into the in-memory ring the dashboard reads ([`super::spans`]).

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};

use super::finished::FinishedSpan;
pub use super::finished::{SpanInfo, TracingError};
use super::metrics::MeshMetrics;
use super::spans::{ExportQueue, QueueConfig, SpanRing};
use crate::env::Vars;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");

/// One workload's tracer.
#[derive(Debug, Clone)]
pub struct Tracing {
    inner: Arc<Inner>,
    propagators: Propagators,
}

#[derive(Debug)]
struct Inner {
    sampler: Sampler,
    sink: Sink,
}

#[derive(Debug)]
enum Sink {
    Otlp(ExportQueue),
    Ring {
        ring: Arc<SpanRing>,
        service: Arc<str>,
    },
}

impl Tracing {
    /// The workload's tracer as the standard variables say: spans to
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` over
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, default, or `http/protobuf`) when one is set,
    /// else into `ring`; sampled by `OTEL_TRACES_SAMPLER`/`_ARG`; named `OTEL_SERVICE_NAME`,
    /// else `service`. `None` when `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
    /// Needs a Tokio runtime.
    pub fn from_env(
        vars: &impl Vars,
        service: &str,
        metrics: &MeshMetrics,
        ring: &Arc<SpanRing>,
    ) -> Result<Option<Self>, TracingError> {
        if vars.get("OTEL_SDK_DISABLED").as_deref() == Some("true")
            || vars.get("OTEL_TRACES_EXPORTER").as_deref() == Some("none")
        {
            return Ok(None);
        }
        let sampler = Sampler::from_env(vars)?;
        let propagators = Propagators::from_env(vars)?;
        let name = vars
            .get("OTEL_SERVICE_NAME")
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| service.to_owned());
        let endpoint = vars
            .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| vars.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .filter(|e| !e.is_empty());
        Ok(Some(
            match endpoint {
                Some(endpoint) => {
                    let protocol = vars.get_or("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
                    let queue = QueueConfig::from_env(vars)?;
                    Self::otlp(&endpoint, &protocol, &name, sampler, queue, metrics)?
                }
                None => Self::ring(ring.clone(), &name, sampler),
            }
            .with_propagators(propagators),
        ))
    }

    /// A tracer exporting to `endpoint` (e.g. `http://127.0.0.1:4317`) over `protocol`.
    pub fn otlp(
        endpoint: &str,
        protocol: &str,
        service: &str,
        sampler: Sampler,
        queue: QueueConfig,
        metrics: &MeshMetrics,
    ) -> Result<Self, TracingError> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
        use opentelemetry_sdk::trace::SpanExporter as _;
        let url = match protocol {
            "grpc" => endpoint.to_owned(),
            "http/protobuf" if endpoint.ends_with("/v1/traces") => endpoint.to_owned(),
            "http/protobuf" => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
            other => {
                return Err(TracingError::new(format!(
                    "unsupported OTEL_EXPORTER_OTLP_PROTOCOL {other:?} (grpc or http/protobuf)"
                )));
            }
        };
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let mut exporter = if protocol == "grpc" {
            builder.with_tonic().with_endpoint(url.clone()).build()
        } else {
            builder
                .with_http()
                .with_endpoint(url.clone())
                .with_headers(Default::default())
                .build()
        }
        .map_err(|e| TracingError::new(format!("OTLP exporter for {url}: {e}")))?;
        exporter.set_resource(
            &opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        );
        Ok(Self::with_sink(
            Sink::Otlp(ExportQueue::start(exporter, queue, metrics, url)),
            sampler,
        ))
    }

    /// A tracer keeping its spans in `ring`, under `service`.
    pub fn ring(ring: Arc<SpanRing>, service: &str, sampler: Sampler) -> Self {
        Self::with_sink(
            Sink::Ring {
                ring,
                service: Arc::from(service),
            },
            sampler,
        )
    }

    fn with_sink(sink: Sink, sampler: Sampler) -> Self {
        Self {
            inner: Arc::new(Inner { sampler, sink }),
            propagators: Propagators::default(),
        }
    }

    /// This tracer, writing the context formats `propagators` names.
    pub fn with_propagators(self, propagators: Propagators) -> Self {
        Self {
            propagators,
            ..self
        }
    }

    /// Exports what is queued (at shutdown); nothing to do for the ring.
    pub async fn flush(&self) {
        if let Sink::Otlp(queue) = &self.inner.sink {
            queue.flush().await;
        }
    }

    /// [`Self::start`] for `request`, whose headers carry the context and which `info` reads.
    pub fn start_request<B>(
        &self,
        kind: SpanKind,
        request: &mut http::Request<B>,
        info: impl FnOnce(&http::Request<B>) -> SpanInfo,
    ) -> SpanGuard {
        // The headers out of the request for a moment, so that `info` can read the rest.
        let mut headers = std::mem::take(request.headers_mut());
        let span = self.start(kind, &mut headers, || info(request));
        *request.headers_mut() = headers;
        span
    }

    /// Starts a span of `kind` whose parent is the context in `headers`, and writes the new
    /// span's context back into them (W3C, and B3 for client spans as [`Propagators`] says).
    /// `info` says what the span is about; an unsampled span only propagates, and never asks.
    pub fn start(
        &self,
        kind: SpanKind,
        headers: &mut HeaderMap,
        info: impl FnOnce() -> SpanInfo,
    ) -> SpanGuard {
        let parent = extract(headers);
        let trace_id = parent.map_or_else(|| TraceId::from(fastrand::u128(1..)), |p| p.trace_id);
        let span_id = SpanId::from(fastrand::u64(1..));
        let sampled = self.inner.sampler.sample(parent.as_ref(), trace_id);
        let b3 = kind == SpanKind::Client
            && (self.propagators.b3_always || headers.contains_key(B3_TRACE_ID));
        inject(headers, trace_id, span_id, sampled, b3);
        SpanGuard {
            open: sampled.then(info).map(|info| OpenSpan {
                tracing: self.clone(),
                trace_id,
                span_id,
                parent_span_id: parent.map_or(SpanId::INVALID, |p| p.span_id),
                start: SystemTime::now(),
                info,
            }),
        }
    }
}

/// How long a process waits at exit for its last spans to be exported.
pub const EXIT_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Exports the last spans at exit, waiting at most [`EXIT_FLUSH_TIMEOUT`] for the collector.
pub async fn flush_at_exit(tracing: Option<&Tracing>) {
    if let Some(t) = tracing
        && tokio::time::timeout(EXIT_FLUSH_TIMEOUT, t.flush())
            .await
            .is_err()
    {
        ::tracing::warn!("the last spans were not exported within {EXIT_FLUSH_TIMEOUT:?}");
    }
}

/// A sampled span that has not ended yet.
#[derive(Debug)]
struct OpenSpan {
    tracing: Tracing,
    trace_id: TraceId,
    span_id: SpanId,
    parent_span_id: SpanId,
    start: SystemTime,
    info: SpanInfo,
}

/// A span in progress; ended by [`SpanGuard::finish`], or when dropped (the request was
/// abandoned: Envoy's `DC` flag).
#[derive(Debug)]
#[must_use = "a span ends when finished or dropped"]
pub struct SpanGuard {
    // Inline: the guard lives in the request's future, which is allocated anyway.
    open: Option<OpenSpan>,
}

impl SpanGuard {
    /// Ends the span with the response's `status` (0: none) and the mesh's response flag.
    pub fn finish(mut self, status: u16, flag: Option<&'static str>) {
        self.end(status, flag);
    }

    fn end(&mut self, status: u16, flag: Option<&'static str>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let OpenSpan {
            tracing,
            trace_id,
            span_id,
            parent_span_id,
            start,
            info,
        } = open;
        let span = FinishedSpan {
            trace_id,
            span_id,
            parent_span_id,
            start,
            end: SystemTime::now(),
            status,
            flag,
            info,
        };
        match &tracing.inner.sink {
            Sink::Otlp(queue) => queue.push(span),
            Sink::Ring { ring, service } => ring.push(service, span),
        }
    }
}

impl Drop for SpanGuard {
    fn drop(&mut self) {
        if self.open.is_some() {
            self.end(0, Some("DC"));
        }
    }
}

/// Which trace-context headers client spans write (`OTEL_PROPAGATORS`). `traceparent` always:
/// the mesh's own hops rely on it, and it is OpenTelemetry's default (`tracecontext,baggage`;
/// `baggage` passes through untouched). B3 multi-headers (`x-b3-*`) on every client span with
/// `b3multi`; without it, only where the request already carries B3, so that a Zipkin-speaking
/// caller's context stays right down the chain (as upstream productpage re-emits B3 only when
/// it received B3). Incoming B3 is read either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Propagators {
    /// Write B3 on every client span (`b3multi`).
    pub b3_always: bool,
}

impl Propagators {
    /// `OTEL_PROPAGATORS`: a comma-separated list of `tracecontext`, `baggage` and `b3multi`.
    pub fn from_env(vars: &impl Vars) -> Result<Self, TracingError> {
        let Some(list) = vars
            .get("OTEL_PROPAGATORS")
            .filter(|l| !l.trim().is_empty())
        else {
            return Ok(Self::default());
        };
        let mut b3_always = false;
        for name in list.split(',').map(str::trim) {
            match name {
                "tracecontext" | "baggage" => {}
                "b3multi" => b3_always = true,
                other => {
                    return Err(TracingError::new(format!(
                        "unsupported OTEL_PROPAGATORS entry {other:?} (tracecontext, baggage, \
                         b3multi; traceparent is always written)"
                    )));
                }
            }
        }
        Ok(Self { b3_always })
    }
}

/// Which new traces are recorded (`OTEL_TRACES_SAMPLER`): a share of trace ids, and whether a
/// parent's decision wins.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    parent_based: bool,
    ratio: f64,
}

impl Default for Sampler {
    /// `parentbased_always_on`, the OpenTelemetry default.
    fn default() -> Self {
        Self {
            parent_based: true,
            ratio: 1.0,
        }
    }
}

impl Sampler {
    pub const ALWAYS_ON: Self = Self {
        parent_based: false,
        ratio: 1.0,
    };

    /// `OTEL_TRACES_SAMPLER` (`always_on`, `always_off`, `traceidratio`,
    /// `parentbased_always_on` (default), `parentbased_always_off`,
    /// `parentbased_traceidratio`) with `OTEL_TRACES_SAMPLER_ARG`, the ratio (default 1.0).
    pub fn from_env(vars: &impl Vars) -> Result<Self, TracingError> {
        let ratio = || match vars
            .get("OTEL_TRACES_SAMPLER_ARG")
            .filter(|a| !a.is_empty())
        {
            None => Ok(1.0),
            Some(a) => a
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    TracingError::new(format!(
                        "OTEL_TRACES_SAMPLER_ARG={a:?} is not a ratio between 0 and 1"
                    ))
                }),
        };
        let name = vars
            .get("OTEL_TRACES_SAMPLER")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "parentbased_always_on".to_owned());
        let (parent_based, ratio) = match name.as_str() {
            "always_on" => (false, 1.0),
            "always_off" => (false, 0.0),
            "traceidratio" => (false, ratio()?),
            "parentbased_always_on" => (true, 1.0),
            "parentbased_always_off" => (true, 0.0),
            "parentbased_traceidratio" => (true, ratio()?),
            other => {
                return Err(TracingError::new(format!(
                    "unsupported OTEL_TRACES_SAMPLER {other:?} (always_on, always_off, \
                     traceidratio, parentbased_always_on, parentbased_always_off, \
                     parentbased_traceidratio)"
                )));
            }
        };
        Ok(Self {
            parent_based,
            ratio,
        })
    }

    fn sample(&self, parent: Option<&Parent>, trace_id: TraceId) -> bool {
        if let (true, Some(p)) = (self.parent_based, parent) {
            return p.sampled;
        }
        // As the OpenTelemetry SDKs: the trace id's low 63 bits against the ratio, so every
        // hop decides the same for one trace.
        let low = (u128::from_be_bytes(trace_id.to_bytes()) as u64) >> 1;
        (low as f64) < self.ratio * (1u64 << 63) as f64
    }
}

/// The caller's span, from the request's headers.
#[derive(Debug, Clone, Copy)]
struct Parent {
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
}

/// The parent context in `headers`: W3C `traceparent` first, then B3 multi-headers.
fn extract(headers: &HeaderMap) -> Option<Parent> {
    // The bytes, not `to_str`: parsing checks every character anyway.
    if let Some(parent) = headers
        .get(&TRACEPARENT)
        .and_then(|v| parse_traceparent(v.as_bytes()))
    {
        return Some(parent);
    }
    let get = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let (trace, span) = (get(&B3_TRACE_ID)?, get(&B3_SPAN_ID)?);
    // 64-bit B3 trace ids are the low half of a 128-bit one.
    if !(trace.len() == 16 || trace.len() == 32) || span.len() != 16 {
        return None;
    }
    let trace_id = TraceId::from(hex_value(trace.as_bytes())?);
    let span_id = SpanId::from(hex_value(span.as_bytes())? as u64);
    let sampled = matches!(get(&B3_SAMPLED), Some("1" | "true"))
        || headers.get("x-b3-flags").is_some_and(|f| f == "1");
    (trace_id != TraceId::INVALID && span_id != SpanId::INVALID).then_some(Parent {
        trace_id,
        span_id,
        sampled,
    })
}

/// `version-traceid-spanid-flags` (W3C Trace Context, 55 characters); later versions may
/// append `-` and more fields.
fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    let v = value.trim_ascii();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_value(&v[..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = TraceId::from(hex_value(&v[3..35])?);
    let span_id = SpanId::from(hex_value(&v[36..52])? as u64);
    let flags = hex_value(&v[53..55])?;
    (trace_id != TraceId::INVALID && span_id != SpanId::INVALID).then_some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// Writes the span's context: `traceparent` always, B3 too when `b3` (client spans, for
/// upstreams that only speak Zipkin's headers).
fn inject(headers: &mut HeaderMap, trace_id: TraceId, span_id: SpanId, sampled: bool, b3: bool) {
    // Hex by hand: `format!` of a u128 is most of what propagation would otherwise cost.
    let mut traceparent = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex(&mut traceparent[3..35], &trace_id.to_bytes());
    hex(&mut traceparent[36..52], &span_id.to_bytes());
    traceparent[54] = if sampled { b'1' } else { b'0' };
    // One buffer: the B3 ids are slices of it, not copies.
    let traceparent = bytes::Bytes::copy_from_slice(&traceparent);
    let value = |bytes: bytes::Bytes| {
        HeaderValue::from_maybe_shared(bytes).expect("hex digits are a valid header")
    };
    headers.insert(TRACEPARENT, value(traceparent.clone()));
    if b3 {
        headers.insert(B3_TRACE_ID, value(traceparent.slice(3..35)));
        headers.insert(B3_SPAN_ID, value(traceparent.slice(36..52)));
        headers.insert(
            B3_SAMPLED,
            HeaderValue::from_static(if sampled { "1" } else { "0" }),
        );
        headers.remove(B3_PARENT_SPAN_ID);
    }
}

/// The number `digits` (at most 32 hex digits, either case) spell; `None` if one is not a
/// hex digit. One pass: validating and converting separately is most of what reading a
/// context would otherwise cost.
fn hex_value(digits: &[u8]) -> Option<u128> {
    debug_assert!(digits.len() <= 32);
    digits.iter().try_fold(0u128, |value, &d| {
        let nibble = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return None,
        };
        Some(value << 4 | u128::from(nibble))
    })
}

/// Writes `bytes` into `out` as lowercase hex, two digits a byte.
fn hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn w3c_first_then_b3() {
        let mut h = headers(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ]);
        let p = extract(&h).unwrap();
        assert_eq!(p.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(p.span_id.to_string(), "b7ad6b7169203331");
        assert!(p.sampled);
        h.remove("traceparent");
        h.insert("x-b3-sampled", HeaderValue::from_static("1"));
        let p = extract(&h).unwrap();
        assert_eq!(p.trace_id.to_string(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert!(p.sampled);
        // A 64-bit B3 trace id.
        let p = extract(&headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
        ]))
        .unwrap();
        assert_eq!(p.trace_id.to_string(), "0000000000000000a3ce929d0e0e4736");
        assert!(!p.sampled);
        assert!(extract(&HeaderMap::new()).is_none());
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319z-b7ad6b7169203331-01",
            "garbage",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent(b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-x")
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_span_continues_the_trace_and_rewrites_the_headers() {
        let ring = Arc::new(SpanRing::default());
        let tracing = Tracing::ring(ring.clone(), "reviews", Sampler::default());
        let mut h = headers(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "vendor=opaque"),
            // B3 the application forwarded from its caller: refreshed to this span.
            ("x-b3-traceid", "0af7651916cd43dd8448eb211c80319c"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-parentspanid", "1111111111111111"),
        ]);
        let span = tracing.start(SpanKind::Client, &mut h, || SpanInfo::Client {
            method: http::Method::GET,
            path: "/ratings/0".into(),
            authority: "ratings:9080".into(),
            addr: "10.0.0.7:9080".parse().unwrap(),
            endpoint: None,
        });
        let tp = h["traceparent"].to_str().unwrap().to_owned();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert!(tp.ends_with("-01"), "{tp}");
        let span_id = &tp[36..52];
        assert_ne!(span_id, "b7ad6b7169203331");
        assert_eq!(h["x-b3-spanid"], span_id);
        assert_eq!(h["x-b3-traceid"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(h.get("x-b3-parentspanid").is_none());
        assert_eq!(
            h["tracestate"], "vendor=opaque",
            "tracestate passes through"
        );
        span.finish(503, Some("UF"));
        let recent = ring.recent();
        assert_eq!(recent.len(), 1);
        let s = &recent[0];
        assert_eq!(s.span_id, span_id);
        assert_eq!(s.parent_span_id, "b7ad6b7169203331");
        assert_eq!((s.service.as_str(), s.kind.as_str()), ("reviews", "client"));
        assert_eq!(s.name, "GET ratings:9080");
        assert!(s.error);
        assert_eq!(s.attributes["http.response.status_code"], "503");
        assert_eq!(s.attributes["url.path"], "/ratings/0");
        assert_eq!(s.attributes["server.address"], "10.0.0.7");
        assert_eq!(s.attributes["mesh.response_flags"], "UF");
    }

    #[tokio::test]
    async fn b3_is_written_where_the_request_carries_it_or_when_asked() {
        let client_span = |tracing: &Tracing, h: &mut HeaderMap| {
            tracing
                .start(SpanKind::Client, h, || SpanInfo::Client {
                    method: http::Method::GET,
                    path: "/ratings/0".into(),
                    authority: "ratings:9080".into(),
                    addr: "10.0.0.7:9080".parse().unwrap(),
                    endpoint: None,
                })
                .finish(200, None)
        };
        let traceparent = || {
            headers(&[(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )])
        };
        let ring = Arc::new(SpanRing::default());
        let default = Tracing::ring(ring.clone(), "reviews", Sampler::default());
        let mut h = traceparent();
        client_span(&default, &mut h);
        assert_eq!(h.len(), 1, "W3C only by default: {h:?}");

        let b3multi = Propagators::from_env(&[("OTEL_PROPAGATORS", "tracecontext, b3multi")]);
        let always = default.clone().with_propagators(b3multi.unwrap());
        let mut h = traceparent();
        client_span(&always, &mut h);
        let span_id = h["traceparent"].to_str().unwrap()[36..52].to_owned();
        assert_eq!(h["x-b3-traceid"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(h["x-b3-spanid"], span_id.as_str());
        assert_eq!(h["x-b3-sampled"], "1");

        // A server span leaves B3 alone: the next client span refreshes it.
        let mut h = headers(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ]);
        always
            .start(SpanKind::Server, &mut h, || SpanInfo::Server {
                method: http::Method::GET,
                path: "/reviews/0".into(),
                workload: "reviews-v2".into(),
                peer: None,
            })
            .finish(200, None);
        assert_eq!(h["x-b3-spanid"], "e457b5a2e4d86bd1");
        assert!(
            h["traceparent"]
                .to_str()
                .unwrap()
                .starts_with("00-80f198ee56343ba864fe8b2a57d3eff7-"),
            "B3 is read: {h:?}"
        );

        assert_eq!(
            Propagators::from_env(&[("OTEL_PROPAGATORS", "")]).unwrap(),
            Propagators::default()
        );
        let e = Propagators::from_env(&[("OTEL_PROPAGATORS", "tracecontext,b3")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unsupported OTEL_PROPAGATORS entry \"b3\""),
            "{e}"
        );
    }

    #[tokio::test]
    async fn unsampled_spans_propagate_without_being_built_and_drops_are_flagged() {
        let ring = Arc::new(SpanRing::default());
        let tracing = Tracing::ring(ring.clone(), "productpage", Sampler::default());
        let mut h = headers(&[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        )]);
        let span = tracing.start(SpanKind::Server, &mut h, || {
            unreachable!("an unsampled span is never described")
        });
        span.finish(200, None);
        assert!(h["traceparent"].to_str().unwrap().ends_with("-00"));
        assert!(ring.recent().is_empty());
        // A root span, abandoned before the response.
        let mut h = HeaderMap::new();
        drop(
            tracing.start(SpanKind::Server, &mut h, || SpanInfo::Server {
                method: http::Method::GET,
                path: "/productpage".into(),
                workload: "productpage-v1".into(),
                peer: None,
            }),
        );
        let recent = ring.recent();
        assert_eq!(recent[0].parent_span_id, "");
        assert_eq!(recent[0].attributes["mesh.response_flags"], "DC");
        assert!(recent[0].error);
    }

    #[test]
    fn samplers_follow_the_standard_variables() {
        let parse = |s: &str, arg: &str| {
            Sampler::from_env(&[("OTEL_TRACES_SAMPLER", s), ("OTEL_TRACES_SAMPLER_ARG", arg)])
        };
        assert_eq!(Sampler::from_env(&[("X", "")]).unwrap(), Sampler::default());
        let parent = Parent {
            trace_id: TraceId::from(1u128),
            span_id: SpanId::from(1u64),
            sampled: true,
        };
        let off = parse("parentbased_always_off", "").unwrap();
        assert!(
            off.sample(Some(&parent), parent.trace_id),
            "the parent decides"
        );
        assert!(!off.sample(None, parent.trace_id));
        assert!(
            !parse("always_off", "")
                .unwrap()
                .sample(Some(&parent), parent.trace_id)
        );
        // A quarter of random trace ids, give or take.
        let quarter = parse("traceidratio", "0.25").unwrap();
        let kept = (0..4000)
            .filter(|_| quarter.sample(None, TraceId::from(fastrand::u128(1..))))
            .count();
        assert!((800..1200).contains(&kept), "{kept}");
        let e = parse("traceidratio", "2").unwrap_err().to_string();
        assert!(e.contains("OTEL_TRACES_SAMPLER_ARG=\"2\""), "{e}");
        let e = parse("jaeger_remote", "").unwrap_err().to_string();
        assert!(
            e.contains("unsupported OTEL_TRACES_SAMPLER \"jaeger_remote\""),
            "{e}"
        );
    }
}
