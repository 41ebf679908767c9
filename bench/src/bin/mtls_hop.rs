//! One hop, side by side: p50/p99 latency of a small GET over a kept-alive connection with
//! plain hyper, and through the mesh (outbound stack → mTLS → inbound stack with
//! authorization). Rounds alternate between the two so machine noise hits both alike.
//!
//! `cargo run --release -p bench --bin mtls-hop [-- ROUNDS REQUESTS_PER_ROUND]`

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderMap, Request};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use mesh::control::client::WorkloadSpec;
use mesh::control::daemon::{self, CaSource, MeshdConfig};
use mesh::control::server::Tokens;
use mesh::{Mesh, Server};

fn app() -> Router {
    Router::new().route(
        "/ratings/0",
        get(|| async { r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"# }),
    )
}

fn spec(url: &str, service: &str) -> WorkloadSpec {
    WorkloadSpec {
        control_plane: url.to_owned(),
        token: format!("token-{service}"),
        service: service.to_owned(),
        labels: BTreeMap::from([
            ("app".to_owned(), service.to_owned()),
            ("version".to_owned(), "v1".to_owned()),
        ]),
        namespace: "default".to_owned(),
        service_account: format!("bookinfo-{service}"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let rounds = args.first().copied().unwrap_or(10);
    let per_round = args.get(1).copied().unwrap_or(2000);

    // Plain: an axum server and a pooled hyper client.
    let plain = Server::bind("plain", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let plain_url = format!("http://{}/ratings/0", plain.local_addr());
    tokio::spawn(plain.serve(app(), std::future::pending()));
    let hyper = HyperClient::builder(TokioExecutor::new()).build_http::<Body>();

    // Mesh: meshd, a server workload and a client workload, mTLS between them.
    let mut tokens = Tokens::default();
    for s in ["ratings", "reviews"] {
        tokens.insert("default", &format!("bookinfo-{s}"), &format!("token-{s}"));
    }
    let meshd = daemon::start(MeshdConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ca: CaSource::Ephemeral,
        tokens,
        base: Default::default(),
        config_dirs: Vec::new(),
        trust_domain: "cluster.local".into(),
        cert_ttl: Duration::from_secs(3600),
    })
    .await
    .unwrap();
    let server = Server::bind("ratings", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let server_mesh = Mesh::start(
        spec(&meshd.url(), "ratings"),
        "cluster.local",
        server.local_addr(),
    )
    .unwrap();
    tokio::spawn(
        server
            .with_mesh(server_mesh.clone())
            .serve(app(), std::future::pending()),
    );
    let client_mesh = Mesh::start(
        spec(&meshd.url(), "reviews"),
        "cluster.local",
        "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
    )
    .unwrap();
    assert!(
        server_mesh.ready(Duration::from_secs(10)).await
            && client_mesh.ready(Duration::from_secs(10)).await
    );
    while client_mesh.endpoints_of("ratings").is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mesh_client = client_mesh.client();

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
    let mesh_once = || async {
        let response = mesh_client
            .get(
                "http://ratings:9080/ratings/0",
                HeaderMap::new(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(response.status().is_success());
    };

    // Warm up both (connections, TLS session, caches).
    for _ in 0..500 {
        plain_once().await;
        mesh_once().await;
    }
    let (mut plain_samples, mut mesh_samples) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for _ in 0..per_round {
            let t = Instant::now();
            plain_once().await;
            plain_samples.push(t.elapsed());
        }
        for _ in 0..per_round {
            let t = Instant::now();
            mesh_once().await;
            mesh_samples.push(t.elapsed());
        }
    }
    plain_samples.sort();
    mesh_samples.sort();
    let (p50, p99) = (
        percentile(&plain_samples, 0.5),
        percentile(&plain_samples, 0.99),
    );
    let (m50, m99) = (
        percentile(&mesh_samples, 0.5),
        percentile(&mesh_samples, 0.99),
    );
    println!(
        "one hop, {} requests each, {rounds} alternating rounds, kept-alive connections",
        plain_samples.len()
    );
    println!("{:<28} {:>10} {:>10}", "", "p50", "p99");
    println!("{:<28} {:>10.1?} {:>10.1?}", "plain hyper", p50, p99);
    println!(
        "{:<28} {:>10.1?} {:>10.1?}",
        "mesh (mTLS + authz)", m50, m99
    );
    println!(
        "{:<28} {:>9.2}x {:>9.2}x   (goal <= 1.30x)",
        "ratio mesh / plain",
        m50.as_secs_f64() / p50.as_secs_f64(),
        m99.as_secs_f64() / p99.as_secs_f64()
    );
    meshd.shutdown().await;
}
