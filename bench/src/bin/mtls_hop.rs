//! One hop, side by side: p50/p99 latency of a small GET over a kept-alive connection with
//! plain hyper; through the mesh's full outbound stack (route, fault, timeout, retry, split,
//! balance, breaker) with mTLS turned off by a PeerAuthentication DISABLE, which isolates the
//! stack's cost; and through the mesh with mTLS and the inbound stack (authorization), with
//! telemetry off, metrics only, and metrics with tracing (propagation only; spans to OTLP; to
//! the ring; to the ring with B3 on every client span), each against telemetry off, and
//! tracing's own cost against metrics only. Blocks of requests alternate so machine noise
//! hits all alike.
//!
//! `cargo run --release -p bench --bin mtls-hop [-- ROUNDS REQUESTS_PER_ROUND [ONLY]]`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderMap, Request};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use mesh::Server;
use mesh::dataplane::Telemetry;
use mesh::telemetry::tracing::{Propagators, Sampler, Tracing};
use mesh::workload::WorkloadBuilder;
use mesh_config::MeshConfig;
use meshd::daemon::{self, CaSource, MeshdConfig};

fn app() -> Router {
    Router::new().route(
        "/ratings/0",
        get(|| async { r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"# }),
    )
}

/// meshd with `base` config, a server workload and a client workload; the client's stack.
async fn mesh_pair(base: MeshConfig, telemetry: Telemetry) -> (mesh::Client, daemon::RunningMeshd) {
    let tokens = test_support::tokens_for(&["bookinfo-ratings", "bookinfo-reviews"]);
    let meshd = daemon::start(MeshdConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ca: CaSource::Ephemeral,
        tokens,
        base,
        config_dirs: Vec::new(),
        trust_domain: "cluster.local".into(),
        cert_ttl: Duration::from_secs(3600),
        dashboard: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let server = Server::bind("ratings", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let server_mesh =
        WorkloadBuilder::new(test_support::spec(&meshd, "ratings", "bookinfo-ratings"))
            .telemetry(telemetry.clone())
            .start(server.local_addr())
            .unwrap();
    tokio::spawn(
        server
            .with_mesh(server_mesh.clone())
            .serve(app(), std::future::pending()),
    );
    let client_mesh =
        WorkloadBuilder::new(test_support::spec(&meshd, "reviews", "bookinfo-reviews"))
            .telemetry(telemetry)
            .start("127.0.0.1:1".parse::<SocketAddr>().unwrap())
            .unwrap();
    assert!(
        server_mesh.ready(Duration::from_secs(10)).await
            && client_mesh.ready(Duration::from_secs(10)).await
    );
    while client_mesh.endpoints_of("ratings").is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The meshes live as long as the process; the client keeps its own handle.
    std::mem::forget(server_mesh);
    (client_mesh.client(), meshd)
}

/// Requests in a row to one configuration before the next one's turn.
const BLOCK: usize = 100;

/// Linux's `USER_HZ`, the unit of `/proc/self/stat`'s CPU times.
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU time of every thread of this process so far, in ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux's /proc/self/stat");
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

const ABOUT: &str =
    "One hop, side by side: plain hyper, the mesh's outbound stack without TLS, and the mesh
with mTLS and its inbound stack with telemetry off, metrics only and metrics with spans (to
OTLP, to the ring, with B3). Prints p50/p99 ratios to plain hyper, telemetry's cost against
telemetry off and the spans' cost against metrics only. Figures: bench/README.md.";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    const USAGE: &str = "usage: mtls-hop [ROUNDS [REQUESTS_PER_ROUND [CONFIGURATION]]] \
        (defaults 10 and 2000; CONFIGURATION: the end of one row's name, to run it alone)";
    if bench::help_requested(&args, USAGE, ABOUT) {
        return;
    }
    let number = |i: usize, default: usize| args.get(i).map_or(Some(default), |a| a.parse().ok());
    let (Some(rounds), Some(per_round)) = (number(0, 10), number(1, 2000)) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    // Only the configuration whose name ends with this (e.g. "metrics only", to profile it).
    let only = args.get(2).cloned();

    // Plain: an axum server and a pooled hyper client.
    let plain = Server::bind("plain", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let plain_url = format!("http://{}/ratings/0", plain.local_addr());
    tokio::spawn(plain.serve(app(), std::future::pending()));
    let hyper = HyperClient::builder(TokioExecutor::new()).build_http::<Body>();

    // Telemetry on means metrics recorded on both sides and a client and a server span per
    // request: every one sampled and queued for an OTLP endpoint (nobody listens there: the
    // export task's attempts fail in the background, as with a collector that is down), or
    // kept in the in-memory ring the dashboard reads; or none sampled (propagation only, as
    // for the traces a low sampling ratio leaves out).
    let traced = |sampler: Sampler, otlp: bool, propagators: Propagators| {
        let telemetry = Telemetry::default();
        let tracing = if otlp {
            Tracing::otlp(
                &format!("http://127.0.0.1:{}", test_support::free_port()),
                "grpc",
                "bench",
                sampler,
                Default::default(),
                &telemetry.metrics,
            )
            .unwrap()
        } else {
            Tracing::ring(telemetry.recent_spans.clone(), "bench", sampler)
        };
        Telemetry {
            tracing: Some(tracing.with_propagators(propagators)),
            ..telemetry
        }
    };
    let unsampled = Sampler::from_env(&[("OTEL_TRACES_SAMPLER", "always_off")]).unwrap();
    let b3 = Propagators { b3_always: true };
    let w3c = Propagators::default();
    let disable = mesh_yaml::parse_file(
        "disable.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: istio-system\nspec:\n  mtls:\n    mode: DISABLE\n",
    )
    .unwrap()
    .config;
    let mut configs = vec![("mesh outbound stack, no TLS", disable, Telemetry::off())];
    for (name, telemetry) in [
        ("mesh + mTLS, telemetry off", Telemetry::off()),
        ("mesh + mTLS, metrics only", Telemetry::default()),
        (
            "mesh + mTLS, metrics+unsampled",
            traced(unsampled, false, w3c),
        ),
        (
            "mesh + mTLS, metrics+OTLP",
            traced(Sampler::default(), true, w3c),
        ),
        (
            "mesh + mTLS, metrics+ring",
            traced(Sampler::default(), false, w3c),
        ),
        (
            "mesh + mTLS, metrics+ring+B3",
            traced(Sampler::default(), false, b3),
        ),
    ] {
        configs.push((name, MeshConfig::default(), telemetry));
    }
    let mut clients = Vec::new();
    let mut meshds = Vec::new();
    for (name, config, telemetry) in configs {
        let (client, meshd) = mesh_pair(config, telemetry).await;
        clients.push((name, client));
        meshds.push(meshd);
    }
    let plain_once = || async {
        let response = hyper
            .request(
                Request::get(plain_url.as_str())
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert!(response.status().is_success());
        response.into_body().collect().await.unwrap();
    };
    let mesh_once = |client: &mesh::Client| {
        let client = client.clone();
        async move {
            let response = client
                .get(
                    "http://ratings:9080/ratings/0",
                    HeaderMap::new(),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            assert!(response.status().is_success());
        }
    };

    // Warm up everything (connections, TLS sessions, caches).
    for _ in 0..500 {
        plain_once().await;
        for (_, client) in &clients {
            mesh_once(client).await;
        }
    }
    let mut plain_samples = Vec::new();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); clients.len()];
    // The process's CPU time (every thread: client, server, meshd) while each ran.
    let mut plain_cpu = 0;
    let mut cpu = vec![0; clients.len()];
    // Small blocks, alternating, so the shifts of a shared machine's speed (they come and go
    // within seconds) fall on every configuration alike; in a new order each round, so that
    // work one configuration leaves running in the background (a span export) does not always
    // land on the same neighbour.
    let mut order: Vec<usize> = (0..clients.len()).collect();
    for _ in 0..rounds * per_round / BLOCK {
        fastrand::shuffle(&mut order);
        let before = cpu_ticks();
        for _ in 0..BLOCK {
            let t = Instant::now();
            plain_once().await;
            plain_samples.push(t.elapsed());
        }
        plain_cpu += cpu_ticks() - before;
        for &i in &order {
            let (name, client) = &clients[i];
            if only.as_ref().is_some_and(|o| !name.ends_with(o.as_str())) {
                continue;
            }
            let before = cpu_ticks();
            for _ in 0..BLOCK {
                let t = Instant::now();
                mesh_once(client).await;
                samples[i].push(t.elapsed());
            }
            cpu[i] += cpu_ticks() - before;
        }
    }
    plain_samples.sort();
    for s in &mut samples {
        s.sort();
    }
    let (p50, p99) = (
        percentile(&plain_samples, 0.5),
        percentile(&plain_samples, 0.99),
    );
    println!(
        "one hop, {} requests each, alternating in blocks of {BLOCK}, kept-alive connections",
        plain_samples.len()
    );
    let cpu_per_request = |ticks: u64| {
        Duration::from_secs_f64(ticks as f64 / TICKS_PER_SECOND / plain_samples.len() as f64)
    };
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "", "p50", "p99", "p50 ratio", "p99 ratio", "CPU/req"
    );
    println!(
        "{:<30} {:>10.1?} {:>10.1?} {:>10} {:>10} {:>10.1?}",
        "plain hyper",
        p50,
        p99,
        "",
        "",
        cpu_per_request(plain_cpu)
    );
    for (((name, _), s), ticks) in clients.iter().zip(&samples).zip(&cpu) {
        if s.is_empty() {
            continue;
        }
        let (m50, m99) = (percentile(s, 0.5), percentile(s, 0.99));
        println!(
            "{:<30} {:>10.1?} {:>10.1?} {:>9.2}x {:>9.2}x {:>10.1?}",
            name,
            m50,
            m99,
            m50.as_secs_f64() / p50.as_secs_f64(),
            m99.as_secs_f64() / p99.as_secs_f64(),
            cpu_per_request(*ticks)
        );
    }
    // What one configuration costs against another, for every configuration from `first` on
    // (p50, p99 and CPU ratios).
    let cost = |what: &str, first: usize, base: usize, base_name: &str| {
        for (((name, _), on), on_cpu) in clients.iter().zip(&samples).zip(&cpu).skip(first) {
            let reference = &samples[base];
            if on.is_empty() || reference.is_empty() {
                continue;
            }
            let label = format!("{what}, {}", name.trim_start_matches("mesh + mTLS, "));
            // A short run may not last one clock tick of CPU.
            let cpu_ratio = match cpu[base] {
                0 => "n/a (too short a run)".to_owned(),
                ticks => format!("{:.2}x", *on_cpu as f64 / ticks as f64),
            };
            println!(
                "{label:<34} on / {base_name}: p50 {:.3}x, p99 {:.3}x, CPU {cpu_ratio}   (goal <= 1.05x p50)",
                percentile(on, 0.5).as_secs_f64() / percentile(reference, 0.5).as_secs_f64(),
                percentile(on, 0.99).as_secs_f64() / percentile(reference, 0.99).as_secs_f64(),
            );
        }
    };
    // Telemetry's cost: each telemetry configuration against the same mesh with it off.
    cost("telemetry cost", 2, 1, "off");
    // The spans' own cost: each tracing configuration against metrics only, so that what is
    // compared differs by tracing alone (issue 14's goal is on spans).
    cost("span cost", 3, 2, "metrics only");
    println!("goal: ratios <= 1.30x");
    for meshd in meshds {
        meshd.shutdown().await;
    }
}
