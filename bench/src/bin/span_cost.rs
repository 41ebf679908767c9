//! The CPU cost of tracing per request on the request's path, without sockets: a client span
//! and a server span (propagation, capture, end) into the ring or the OTLP queue, in a tight
//! loop. Naming and describing spans happens later, when they are read or exported.
//!
//! `cargo run --release -p bench --bin span-cost [-- ITERATIONS]`

use std::hint::black_box;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use mesh::telemetry::MeshMetrics;
use mesh::telemetry::spans::SpanRing;
use mesh::telemetry::tracing::{Sampler, SpanInfo, Tracing};
use opentelemetry::trace::SpanKind;

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("ratings:9080"));
    h.insert(
        "x-mesh-peer",
        HeaderValue::from_static("reviews-v2;reviews;v2"),
    );
    h.insert("user-agent", HeaderValue::from_static("bench"));
    h
}

/// The serving workload's name, which a mesh makes once and shares.
static WORKLOAD: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("ratings-v1"));

/// One request's spans: the caller's client span, then the callee's server span.
fn hop(tracing: &Tracing) {
    let mut headers = request_headers();
    let uri: http::Uri = "http://127.0.0.1:9080/ratings/0".parse().unwrap();
    let client = tracing.start(SpanKind::Client, &mut headers, || SpanInfo::Client {
        method: http::Method::GET,
        path: uri.path().into(),
        authority: "ratings:9080".to_owned(),
        addr: "127.0.0.1:9080".parse().unwrap(),
        endpoint: None,
    });
    let server = tracing.start(SpanKind::Server, &mut headers, || SpanInfo::Server {
        method: http::Method::GET,
        path: uri.path().into(),
        workload: WORKLOAD.clone(),
        peer: None,
    });
    server.finish(200, None);
    client.finish(200, None);
    black_box(headers);
}

fn per_iteration(n: u32, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed() / n
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    const USAGE: &str = "usage: span-cost [ITERATIONS] (default 200000)";
    let args: Vec<String> = std::env::args().skip(1).collect();
    if bench::help_requested(
        &args,
        USAGE,
        "Tracing's CPU per request without sockets: a client and a server span into the ring \
         or the OTLP queue, in a tight loop.",
    ) {
        return;
    }
    let Some(n) = args.first().map_or(Some(200_000u32), |a| a.parse().ok()) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let metrics = MeshMetrics::new();
    let ring = Tracing::ring(Arc::new(SpanRing::default()), "bench", Sampler::default());
    let unsampled = Tracing::ring(
        Arc::new(SpanRing::default()),
        "bench",
        Sampler::from_env(&[("OTEL_TRACES_SAMPLER", "always_off")]).unwrap(),
    );
    let otlp = Tracing::otlp(
        "http://127.0.0.1:9",
        "grpc",
        "bench",
        Sampler::default(),
        Default::default(),
        &metrics,
    )
    .unwrap();
    // Warm up (the ring fills, the allocator settles).
    for _ in 0..5_000 {
        hop(&ring);
        hop(&otlp);
    }
    println!("{n} iterations each; CPU time per request (one client + one server span)");
    for (name, tracing) in [
        ("spans to the ring", &ring),
        ("spans to OTLP (queue)", &otlp),
        ("unsampled (propagation only)", &unsampled),
    ] {
        println!("{name:<32} {:>10.2?}", per_iteration(n, || hop(tracing)));
    }
    let headers = request_headers();
    println!(
        "{:<32} {:>10.2?}",
        "headers alone (baseline)",
        per_iteration(n, || {
            black_box(headers.clone());
        })
    );
}
