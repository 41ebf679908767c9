//! Traces through a real OpenTelemetry collector (rotel, from PyPI): pages sent through the
//! gateway with a known trace id come back as one trace gateway → productpage → reviews →
//! ratings, parent to child, including a retried attempt when a crashed instance forces one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::Request;

use test_support::{Killed, free_port};

fn rotel() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.exists()).then_some(path)
}

#[derive(Debug, Clone, Default)]
struct Span {
    service: String,
    trace: String,
    parent: String,
    id: String,
    name: String,
    kind: String,
    attributes: HashMap<String, String>,
}

/// Spans from rotel's detailed debug log.
fn parse(log: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut service = String::new();
    let mut current: Option<Span> = None;
    for line in log.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("-> service.name: Str(") {
            service = v.trim_end_matches(')').to_owned();
        } else if t.starts_with("Span #") {
            spans.extend(current.take());
            current = Some(Span {
                service: service.clone(),
                ..Span::default()
            });
        } else if t.starts_with("ResourceSpans #") {
            spans.extend(current.take());
        } else if let Some(span) = current.as_mut() {
            let field = |p: &str| {
                t.strip_prefix(p)
                    .map(|v| v.trim_start_matches([' ', ':']).trim().to_owned())
            };
            if let Some(v) = field("Trace ID") {
                span.trace = v;
            } else if let Some(v) = field("Parent ID") {
                span.parent = v;
            } else if let Some(v) = field("ID") {
                span.id = v;
            } else if let Some(v) = field("Name") {
                span.name = v;
            } else if let Some(v) = field("Kind") {
                span.kind = v;
            } else if let Some((k, v)) = t.strip_prefix("-> ").and_then(|kv| kv.split_once(": ")) {
                let v = v
                    .split_once('(')
                    .map_or(v, |(_, rest)| rest.trim_end_matches(')'));
                span.attributes.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    spans.extend(current);
    spans
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_crosses_gateway_productpage_reviews_and_ratings_with_a_retried_attempt() {
    let Some(rotel) = test_support::required(rotel(), "rotel collector", "pip install rotel")
    else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("bookinfo-traces-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("rotel.log");
    let grpc = free_port();
    let _collector = Killed(
        Command::new(&rotel)
            .args([
                "start",
                "--otlp-grpc-endpoint",
                &format!("127.0.0.1:{grpc}"),
                "--otlp-http-endpoint",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .args([
                "--exporter",
                "blackhole",
                "--debug-log",
                "traces",
                "--debug-log-verbosity",
                "detailed",
            ])
            .stdout(std::fs::File::create(&log_path).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The collector is ready when its port accepts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err() {
        assert!(Instant::now() < deadline, "rotel never listened");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut config = bookinfo::Config::ephemeral();
    config.mesh.as_mut().unwrap().otlp = Some((format!("http://127.0.0.1:{grpc}"), "grpc".into()));
    let app = bookinfo::start(config).await.unwrap();
    // reviews-v1 stays registered but refuses connections: the attempt that reaches it fails
    // and is retried on another instance (Istio's default retry on connect failure).
    assert!(app.crash("reviews-v1"));
    let client = mesh::Client::new();
    let mut traces = Vec::new();
    for i in 0..6u32 {
        let trace = format!(
            "{:032x}",
            0xb00c_1f00_0000_0000_0000_0000_0000_0000u128 + u128::from(i)
        );
        traces.push(trace.clone());
        let r = client
            .send(
                Request::get(app.addrs.page_url())
                    .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
                    .body(Body::empty())
                    .unwrap(),
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    app.shutdown().await;

    // Wait for the collector to have printed every workload's spans.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = parse(&std::fs::read_to_string(&log_path).unwrap_or_default());
        let ours: Vec<Span> = spans
            .into_iter()
            .filter(|s| traces.contains(&s.trace))
            .collect();
        let services: std::collections::BTreeSet<&str> =
            ours.iter().map(|s| s.service.as_str()).collect();
        if [
            "istio-ingressgateway",
            "productpage",
            "reviews",
            "ratings",
            "details",
        ]
        .iter()
        .all(|s| services.contains(s))
        {
            break ours;
        }
        assert!(Instant::now() < deadline, "spans so far from {services:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let parent_of = |s: &Span| by_id.get(s.parent.as_str()).copied();

    // Every page is one trace: the client's span → gateway server span → … → ratings.
    let mut chains = 0;
    for ratings in spans
        .iter()
        .filter(|s| s.service == "ratings" && s.kind.contains("SERVER"))
    {
        let mut chain = vec![format!("{}:{}", ratings.service, ratings.kind)];
        let mut at = ratings;
        while let Some(p) = parent_of(at) {
            chain.push(format!("{}:{}", p.service, p.kind));
            assert_eq!(p.trace, at.trace, "one trace id across the hops");
            at = p;
        }
        assert_eq!(
            at.parent, "00f067aa0ba902b7",
            "the root is the client's span: {chain:?}"
        );
        let expected = [
            "ratings:SPAN_KIND_SERVER",
            "reviews:SPAN_KIND_CLIENT",
            "reviews:SPAN_KIND_SERVER",
            "productpage:SPAN_KIND_CLIENT",
            "productpage:SPAN_KIND_SERVER",
            "istio-ingressgateway:SPAN_KIND_CLIENT",
            "istio-ingressgateway:SPAN_KIND_SERVER",
        ];
        assert_eq!(chain, expected);
        chains += 1;
    }
    assert!(chains >= 2, "only {chains} traces reached ratings");

    // A retried attempt: two client spans to reviews under one productpage server span, the
    // first a connection failure.
    let mut retried = false;
    for server in spans
        .iter()
        .filter(|s| s.service == "productpage" && s.kind.contains("SERVER"))
    {
        let attempts: Vec<&Span> = spans
            .iter()
            .filter(|s| {
                s.parent == server.id && s.kind.contains("CLIENT") && s.name.contains("reviews")
            })
            .collect();
        if attempts.len() >= 2 {
            assert!(
                attempts.iter().any(|a| a
                    .attributes
                    .get("mesh.response_flags")
                    .map(String::as_str)
                    == Some("UF")),
                "{attempts:?}"
            );
            assert!(attempts.iter().any(|a| {
                a.attributes
                    .get("http.response.status_code")
                    .map(String::as_str)
                    == Some("200")
            }));
            retried = true;
        }
    }
    assert!(retried, "no page retried reviews-v1");
}
