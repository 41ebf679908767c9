//! The mesh's metrics read by a real Prometheus (Debian's `prometheus`): it scrapes the
//! launcher's admin port while pages flow through the gateway, with a fault on details, and
//! Istio's standard query shows every edge that carried traffic, 5xx included.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::{HeaderMap, StatusCode};
use mesh::Client;
use serde_json::Value;

use test_support::{Killed, free_port};

const PATIENCE: Duration = Duration::from_secs(60);

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bookinfo-{name}-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn get(url: &str) -> Option<(StatusCode, String)> {
    let r = Client::new()
        .get(url, HeaderMap::new(), Duration::from_secs(5))
        .await
        .ok()?;
    Some((r.status(), String::from_utf8_lossy(r.body()).into_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_sees_istio_metrics_for_every_edge_including_5xx_under_a_fault() {
    let found = Command::new("prometheus").arg("--version").output().ok();
    if test_support::required(found, "prometheus", "apt-get install prometheus").is_none() {
        return;
    }
    let config_dir = tempdir("obs-config");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../mesh-config/routing/fault-injection-details-v1.yaml"),
        config_dir.join("fault-injection-details-v1.yaml"),
    )
    .unwrap();
    let mut config = bookinfo::Config::ephemeral();
    config.mesh.as_mut().unwrap().config_dir = Some(config_dir);
    let app = bookinfo::start(config).await.unwrap();
    let admin = app.addrs.admin.unwrap();

    let prom_dir = tempdir("prometheus");
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n- job_name: mesh\n  metrics_path: /stats/prometheus\n  static_configs:\n  - targets: ['{admin}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                prom_dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + PATIENCE;
    while get(&format!("{base}/-/ready")).await.map(|r| r.0) != Some(StatusCode::OK) {
        assert!(Instant::now() < deadline, "prometheus never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Wait for the fault to apply, then send pages through the gateway.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, body) = get(&app.addrs.page_url()).await.unwrap();
        if body.contains("Error fetching product details") {
            break;
        }
        assert!(Instant::now() < deadline, "the details fault never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..30 {
        let (status, _) = get(&app.addrs.page_url()).await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }

    let query = "sum(rate(istio_requests_total[1m])) by (source_workload, destination_workload, response_code)";
    let url = format!(
        "{base}/api/v1/query?query={}",
        query
            .replace(' ', "%20")
            .replace('(', "%28")
            .replace(')', "%29")
            .replace('[', "%5B")
            .replace(']', "%5D")
            .replace(',', "%2C")
    );
    let wanted = [
        ("istio-ingressgateway", "productpage-v1", "200"),
        ("productpage-v1", "reviews-v1", "200"),
        ("productpage-v1", "reviews-v2", "200"),
        ("productpage-v1", "reviews-v3", "200"),
        ("reviews-v2", "ratings-v1", "200"),
        ("reviews-v3", "ratings-v1", "200"),
        ("productpage-v1", "unknown", "555"),
    ];
    // Traffic keeps flowing while Prometheus scrapes, so rates have increases to see.
    let deadline = Instant::now() + PATIENCE;
    loop {
        for _ in 0..5 {
            get(&app.addrs.page_url()).await.unwrap();
        }
        let (_, body) = get(&url).await.unwrap();
        let json: Value = serde_json::from_str(&body).unwrap();
        let series: Vec<(String, String, String, f64)> = json["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|s| {
                        let m = &s["metric"];
                        let field = |k: &str| m[k].as_str().unwrap_or("").to_owned();
                        let v: f64 = s["value"][1].as_str().unwrap_or("0").parse().unwrap_or(0.0);
                        (
                            field("source_workload"),
                            field("destination_workload"),
                            field("response_code"),
                            v,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(s, d, c)| {
                !series
                    .iter()
                    .any(|(ss, dd, cc, v)| ss == s && dd == d && cc == c && *v > 0.0)
            })
            .collect();
        if missing.is_empty() {
            assert!(
                !series
                    .iter()
                    .any(|(s, d, _, _)| s == "productpage-v1" && d == "details-v1"),
                "the fault answers before details is reached"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing {missing:?} in {series:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    app.shutdown().await;
}
