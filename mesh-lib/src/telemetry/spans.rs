//! Where finished spans go. With an OTLP endpoint: a bounded queue that one background task
//! exports in batches, so a request only ever pushes onto a vector; a full queue drops the span
//! and counts it (`mesh_trace_spans_total{outcome="queue_full"}`) instead of making the request
//! wait. Without one: a ring of the most recent spans, served on the admin port at
//! `/debug/spans`, which meshd's dashboard assembles into traces — the tutorial's Jaeger moment
//! with nothing else to install.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};

use super::finished::{FinishedSpan, TracingError};
use super::metrics::MeshMetrics;
use crate::env::Vars;

/// Spans waiting for export at most (`OTEL_BSP_MAX_QUEUE_SIZE`).
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 2048;
/// Spans per export call at most (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
pub const DEFAULT_MAX_EXPORT_BATCH_SIZE: usize = 512;
/// How long a span waits for a batch to fill before it is exported anyway
/// (`OTEL_BSP_SCHEDULE_DELAY`, in milliseconds).
pub const DEFAULT_SCHEDULE_DELAY: Duration = Duration::from_millis(5000);
/// Spans the in-memory ring keeps (per process: the launcher's workloads share one).
pub const RING_CAPACITY: usize = 1024;

/// The export queue's limits, from the OpenTelemetry batch span processor's variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    pub schedule_delay: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
            max_export_batch_size: DEFAULT_MAX_EXPORT_BATCH_SIZE,
            schedule_delay: DEFAULT_SCHEDULE_DELAY,
        }
    }
}

impl QueueConfig {
    /// `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY`
    /// (ms); zero or a non-number is an error.
    pub fn from_env(vars: &impl Vars) -> Result<Self, TracingError> {
        let number = |name: &str, default: usize| -> Result<usize, TracingError> {
            match vars.get(name).filter(|v| !v.is_empty()) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        TracingError::new(format!("{name}={v:?} is not a positive whole number"))
                    }),
            }
        };
        let config = Self {
            max_queue_size: number("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE_SIZE)?,
            max_export_batch_size: number(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                DEFAULT_MAX_EXPORT_BATCH_SIZE,
            )?,
            schedule_delay: Duration::from_millis(number(
                "OTEL_BSP_SCHEDULE_DELAY",
                DEFAULT_SCHEDULE_DELAY.as_millis() as usize,
            )? as u64),
        };
        // As the OpenTelemetry SDKs do: a batch is never larger than the queue.
        Ok(Self {
            max_export_batch_size: config.max_export_batch_size.min(config.max_queue_size),
            ..config
        })
    }
}

/// The export queue's side that requests touch.
#[derive(Debug)]
struct Shared {
    spans: Mutex<Vec<FinishedSpan>>,
    batch_ready: Notify,
    config: QueueConfig,
    exported: Counter,
    queue_full: Counter,
    export_failed: Counter,
}

/// Spans on their way to an OTLP exporter.
#[derive(Debug)]
pub(crate) struct ExportQueue {
    shared: Arc<Shared>,
    flushes: mpsc::Sender<oneshot::Sender<()>>,
}

impl ExportQueue {
    /// Starts the export task (needs a Tokio runtime); it ends, after a last export, when the
    /// queue is dropped.
    pub(crate) fn start<E: SpanExporter + 'static>(
        exporter: E,
        config: QueueConfig,
        metrics: &MeshMetrics,
        destination: String,
    ) -> Self {
        let outcome = |o: &str| {
            metrics
                .trace_spans
                .get_or_create(&super::metrics::SpanOutcomeLabels {
                    outcome: o.to_owned(),
                })
                .clone()
        };
        let shared = Arc::new(Shared {
            spans: Mutex::new(Vec::with_capacity(config.max_export_batch_size)),
            batch_ready: Notify::new(),
            config,
            exported: outcome("exported"),
            queue_full: outcome("queue_full"),
            export_failed: outcome("export_failed"),
        });
        let (flushes, requests) = mpsc::channel(4);
        tokio::spawn(export_forever(
            shared.clone(),
            exporter,
            requests,
            destination,
        ));
        Self { shared, flushes }
    }

    pub(crate) fn push(&self, span: FinishedSpan) {
        let mut spans = self
            .shared
            .spans
            .lock()
            .expect("span queue is never poisoned");
        if spans.len() >= self.shared.config.max_queue_size {
            drop(spans);
            self.shared.queue_full.inc();
            return;
        }
        spans.push(span);
        let batch_full = spans.len() == self.shared.config.max_export_batch_size;
        drop(spans);
        if batch_full {
            self.shared.batch_ready.notify_one();
        }
    }

    /// Exports everything queued so far; returns when the exporter has answered.
    pub(crate) async fn flush(&self) {
        let (done, answered) = oneshot::channel();
        if self.flushes.send(done).await.is_ok() {
            let _ = answered.await;
        }
    }
}

async fn export_forever<E: SpanExporter>(
    shared: Arc<Shared>,
    exporter: E,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    destination: String,
) {
    let mut failing = false;
    loop {
        let flush = tokio::select! {
            _ = tokio::time::sleep(shared.config.schedule_delay) => None,
            _ = shared.batch_ready.notified() => None,
            request = flushes.recv() => match request {
                Some(done) => Some(done),
                None => {
                    export_queued(&shared, &exporter, &destination, &mut failing).await;
                    return;
                }
            },
        };
        export_queued(&shared, &exporter, &destination, &mut failing).await;
        if let Some(done) = flush {
            let _ = done.send(());
        }
    }
}

/// Exports the queue in batches; the first failure of a streak is a warning, the rest debug.
async fn export_queued<E: SpanExporter>(
    shared: &Shared,
    exporter: &E,
    destination: &str,
    failing: &mut bool,
) {
    loop {
        let finished: Vec<FinishedSpan> = {
            let mut spans = shared.spans.lock().expect("span queue is never poisoned");
            let n = spans.len().min(shared.config.max_export_batch_size);
            spans.drain(..n).collect()
        };
        // Named and described here, off the requests' path.
        let batch: Vec<SpanData> = finished
            .into_iter()
            .map(FinishedSpan::into_span_data)
            .collect();
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        match exporter.export(batch).await {
            Ok(()) => {
                shared.exported.inc_by(n);
                if std::mem::take(failing) {
                    tracing::info!("exporting spans to {destination} works again");
                }
            }
            Err(e) => {
                shared.export_failed.inc_by(n);
                if std::mem::replace(failing, true) {
                    tracing::debug!("cannot export {n} spans to {destination}: {e}");
                } else {
                    tracing::warn!(
                        "cannot export {n} spans to {destination}: {e} (dropped; counted in mesh_trace_spans_total)"
                    );
                }
            }
        }
    }
}

/// The most recent finished spans of a process, oldest first.
#[derive(Debug)]
pub struct SpanRing {
    spans: Mutex<VecDeque<(Arc<str>, FinishedSpan)>>,
    capacity: usize,
}

impl Default for SpanRing {
    fn default() -> Self {
        Self::with_capacity(RING_CAPACITY)
    }
}

impl SpanRing {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            spans: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    pub(crate) fn push(&self, service: &Arc<str>, span: FinishedSpan) {
        let mut spans = self.spans.lock().expect("span ring is never poisoned");
        let evicted = (spans.len() == self.capacity)
            .then(|| spans.pop_front())
            .flatten();
        spans.push_back((service.clone(), span));
        // Freed after the lock, so readers and other requests do not wait for it.
        drop(spans);
        drop(evicted);
    }

    /// The spans in the ring, oldest first.
    pub fn recent(&self) -> Vec<RecentSpan> {
        let spans: Vec<(Arc<str>, FinishedSpan)> = self
            .spans
            .lock()
            .expect("span ring is never poisoned")
            .iter()
            .cloned()
            .collect();
        spans
            .into_iter()
            .map(|(service, span)| RecentSpan::new(&service, &span.into_span_data()))
            .collect()
    }
}

/// One finished span as `/debug/spans` serves it and the dashboard reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub service: String,
    pub name: String,
    /// `server` or `client`.
    pub kind: String,
    /// Microseconds since the Unix epoch.
    pub start_us: u64,
    pub duration_us: u64,
    pub error: bool,
    pub attributes: BTreeMap<String, String>,
}

impl RecentSpan {
    fn new(service: &str, span: &SpanData) -> Self {
        let micros = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64)
        };
        Self {
            trace_id: span.span_context.trace_id().to_string(),
            span_id: span.span_context.span_id().to_string(),
            parent_span_id: if span.parent_span_id == SpanId::INVALID {
                String::new()
            } else {
                span.parent_span_id.to_string()
            },
            service: service.to_owned(),
            name: span.name.to_string(),
            kind: match span.span_kind {
                SpanKind::Server => "server",
                SpanKind::Client => "client",
                SpanKind::Producer => "producer",
                SpanKind::Consumer => "consumer",
                SpanKind::Internal => "internal",
            }
            .to_owned(),
            start_us: micros(span.start_time),
            duration_us: span
                .end_time
                .duration_since(span.start_time)
                .map_or(0, |d| d.as_micros() as u64),
            error: matches!(span.status, Status::Error { .. }),
            attributes: span
                .attributes
                .iter()
                .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceId;
    use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};

    use super::*;
    use crate::telemetry::tracing::SpanInfo;

    fn span(n: u64) -> FinishedSpan {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        FinishedSpan {
            trace_id: TraceId::from(7u128),
            span_id: SpanId::from(n),
            parent_span_id: SpanId::INVALID,
            start,
            end: start + Duration::from_micros(1500),
            status: 503,
            flag: None,
            info: SpanInfo::Server {
                method: http::Method::GET,
                path: "/ratings/0".into(),
                workload: "ratings-v1".into(),
                peer: None,
            },
        }
    }

    /// Records what it is given; fails while `fail` is set.
    #[derive(Debug, Clone, Default)]
    struct Recorder {
        batches: Arc<Mutex<Vec<usize>>>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl SpanExporter for Recorder {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(OTelSdkError::InternalFailure("collector away".into()));
            }
            self.batches.lock().unwrap().push(batch.len());
            Ok(())
        }
    }

    fn counts(metrics: &MeshMetrics) -> String {
        metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("mesh_trace_spans_total"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_the_rest_after_the_delay_and_overflow_is_counted() {
        let metrics = MeshMetrics::new();
        let recorder = Recorder::default();
        let config = QueueConfig {
            max_queue_size: 6,
            max_export_batch_size: 4,
            schedule_delay: Duration::from_secs(5),
        };
        let queue = ExportQueue::start(recorder.clone(), config, &metrics, "test".into());
        for n in 1..=4 {
            queue.push(span(n));
        }
        // The full batch wakes the exporter long before the delay.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(*recorder.batches.lock().unwrap(), vec![4]);
        // Nobody exports for a while: six fit, the seventh and eighth are dropped and counted.
        for n in 5..=12 {
            queue.push(span(n));
        }
        assert_eq!(*recorder.batches.lock().unwrap(), vec![4]);
        // The batch-full wake came at the 4th; the task drains 4 + 2.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let text = counts(&metrics);
        assert!(text.contains(r#"outcome="queue_full"} 2"#), "{text}");
        assert_eq!(*recorder.batches.lock().unwrap(), vec![4, 4, 2]);
        queue.push(span(13));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            recorder.batches.lock().unwrap().len(),
            3,
            "waits for the delay"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(*recorder.batches.lock().unwrap(), vec![4, 4, 2, 1]);
        assert!(
            counts(&metrics).contains(r#"outcome="exported"} 11"#),
            "{}",
            counts(&metrics)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_exports_are_counted_and_flush_waits_for_the_exporter() {
        let metrics = MeshMetrics::new();
        let recorder = Recorder::default();
        recorder
            .fail
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let queue = ExportQueue::start(
            recorder.clone(),
            QueueConfig::default(),
            &metrics,
            "test".into(),
        );
        queue.push(span(1));
        queue.push(span(2));
        queue.flush().await;
        assert!(counts(&metrics).contains(r#"outcome="export_failed"} 2"#));
        recorder
            .fail
            .store(false, std::sync::atomic::Ordering::SeqCst);
        queue.push(span(3));
        queue.flush().await;
        assert_eq!(*recorder.batches.lock().unwrap(), vec![1]);
        assert!(counts(&metrics).contains(r#"outcome="exported"} 1"#));
    }

    #[test]
    fn the_ring_keeps_the_newest_spans() {
        let ring = SpanRing::with_capacity(3);
        let service: Arc<str> = Arc::from("ratings");
        for n in 1..=5 {
            ring.push(&service, span(n));
        }
        let recent = ring.recent();
        let ids: Vec<&str> = recent.iter().map(|s| s.span_id.as_str()).collect();
        assert_eq!(
            ids,
            ["0000000000000003", "0000000000000004", "0000000000000005"]
        );
        let s = &recent[0];
        assert_eq!(
            (s.service.as_str(), s.kind.as_str(), s.duration_us, s.error),
            ("ratings", "server", 1500, true)
        );
        assert_eq!(s.parent_span_id, "");
        assert_eq!(s.name, "GET /ratings/0");
        assert_eq!(s.attributes["http.response.status_code"], "503");
        assert_eq!(s.attributes["mesh.workload"], "ratings-v1");
    }

    #[test]
    fn queue_limits_come_from_the_standard_variables() {
        let vars = [
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
        ];
        let c = QueueConfig::from_env(&vars).unwrap();
        assert_eq!(
            (c.max_queue_size, c.max_export_batch_size, c.schedule_delay),
            (100, 100, Duration::from_millis(250)),
            "the batch is never larger than the queue"
        );
        let bad = [("OTEL_BSP_MAX_QUEUE_SIZE", "lots")];
        let e = QueueConfig::from_env(&bad).unwrap_err().to_string();
        assert!(e.contains("OTEL_BSP_MAX_QUEUE_SIZE=\"lots\""), "{e}");
    }
}
