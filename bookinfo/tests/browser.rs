//! The bookstore page in a real browser: headless Chromium loads it from the running app,
//! renders it (styles and images from `/static`, nothing from the internet) and takes
//! screenshots. Needs Debian's `chromium`; `.ci/run` installs it. Outside CI a machine
//! without Chromium skips this test with a message.

use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

fn headless(browser: &Path, args: &[&str]) -> std::process::Output {
    // A profile per run: Chromium locks its profile, and tests run in parallel.
    let profile = tempdir(&format!("chromium-profile-{}", fastrand::u64(..)));
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    out
}

/// The body of a GET through the mesh client.
async fn get(client: &mesh::Client, url: &str) -> bytes::Bytes {
    client
        .get(url, Default::default(), std::time::Duration::from_secs(10))
        .await
        .unwrap()
        .into_body()
}

fn tempdir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_renders_in_chromium_with_each_reviews_version() {
    let Some(browser) = test_support::required(chromium(), "chromium", "apt-get install chromium")
    else {
        return;
    };
    let app = bookinfo::start(bookinfo::Config::ephemeral())
        .await
        .unwrap();
    let url = app.addrs.page_url();

    // Each page load goes to the next reviews version: v1, v2, v3.
    let dir = tempdir("screenshots");
    let mut seen = Vec::new();
    for n in 1..=3 {
        let dom = {
            let browser = browser.clone();
            let url = url.clone();
            tokio::task::spawn_blocking(move || headless(&browser, &["--dump-dom", &url]))
                .await
                .unwrap()
        };
        assert!(
            dom.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&dom.stderr)
        );
        let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
        assert!(dom.contains("<title>Simple Bookstore App</title>"), "{dom}");
        assert!(dom.contains("Book Details") && dom.contains("Book Reviews"));
        let stars = dom.matches("glyphicon glyphicon-star").count();
        seen.push(if dom.contains("text-red-500\"") {
            "red"
        } else if stars == 9 {
            "black"
        } else {
            "none"
        });

        let shot = dir.join(format!("productpage-{n}.png"));
        let _ = std::fs::remove_file(&shot);
        let args = [
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,1400".to_owned(),
            url.clone(),
        ];
        let browser = browser.clone();
        let out = tokio::task::spawn_blocking(move || {
            headless(
                &browser,
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // A blank or unstyled page compresses to a few KB; the styled page with text, table,
        // stars and avatars is far larger.
        assert!(
            png.len() > 30_000,
            "{} is only {} bytes",
            shot.display(),
            png.len()
        );
        eprintln!("screenshot: {}", shot.display());
    }
    seen.sort();
    assert_eq!(seen, ["black", "none", "red"]);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_edges_that_carried_traffic() {
    let Some(browser) = test_support::required(chromium(), "chromium", "apt-get install chromium")
    else {
        return;
    };
    let app = bookinfo::start(bookinfo::Config::ephemeral())
        .await
        .unwrap();
    let dashboard = app.dashboard_url().unwrap();
    let client = mesh::Client::new();
    // Traffic through the gateway, until meshd's scrapes show every edge.
    let wanted = [
        "istio-ingressgateway->productpage-v1",
        "productpage-v1->details-v1",
        "productpage-v1->reviews-v1",
        "productpage-v1->reviews-v2",
        "productpage-v1->reviews-v3",
        "reviews-v2->ratings-v1",
        "reviews-v3->ratings-v1",
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        for _ in 0..6 {
            get(&client, &app.addrs.page_url()).await;
        }
        let graph: serde_json::Value =
            serde_json::from_slice(&get(&client, &format!("{dashboard}api/graph")).await).unwrap();
        let edges: Vec<String> = graph["edges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["requests"].as_u64().unwrap_or(0) > 0)
            .map(|e| {
                format!(
                    "{}->{}",
                    e["source"].as_str().unwrap(),
                    e["destination"].as_str().unwrap()
                )
            })
            .collect();
        if wanted.iter().all(|w| edges.iter().any(|e| e == w)) {
            assert!(
                graph["edges"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|e| e["mtls"] == true),
                "{graph}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "edges so far: {edges:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // The recent traces (no OTLP endpoint here): one page's spans joined across workloads,
    // from the gateway's server span down to ratings'.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let traces: serde_json::Value =
            serde_json::from_slice(&get(&client, &format!("{dashboard}api/traces")).await).unwrap();
        let chains: Vec<Vec<String>> = traces["traces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                t["spans"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        format!(
                            "{}:{}:{}",
                            s["depth"],
                            s["service"].as_str().unwrap(),
                            s["kind"].as_str().unwrap()
                        )
                    })
                    .collect()
            })
            .collect();
        let full = chains.iter().any(|spans| {
            [
                "0:istio-ingressgateway:server",
                "1:istio-ingressgateway:client",
                "2:productpage:server",
                "3:productpage:client",
                "4:details:server",
                "4:reviews:server",
                "5:reviews:client",
                "6:ratings:server",
            ]
            .iter()
            .all(|want| spans.iter().any(|s| s == want))
        });
        if full {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no trace from the gateway to ratings: {chains:?}"
        );
        get(&client, &app.addrs.page_url()).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // The page fetches the graph after loading; on a busy machine the first dump can come
    // before the answer, so load it again until every edge is drawn (bounded).
    let drawn = |dom: &str, edge: &str| {
        let encoded = edge.replace('>', "&gt;");
        dom.contains(&format!("data-edge=\"{edge}\""))
            || dom.contains(&format!("data-edge=\"{encoded}\""))
    };
    let mut missing = Vec::new();
    for _ in 0..5 {
        let dom = {
            let browser = browser.clone();
            let url = dashboard.clone();
            tokio::task::spawn_blocking(move || {
                headless(
                    &browser,
                    &["--virtual-time-budget=10000", "--dump-dom", &url],
                )
            })
            .await
            .unwrap()
        };
        let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
        missing = wanted
            .iter()
            .filter(|e| !drawn(&dom, e))
            .map(|e| e.to_string())
            .collect();
        // The newest trace's waterfall: at least the gateway's and productpage's spans.
        for service in ["istio-ingressgateway", "productpage"] {
            if !dom.contains(&format!("data-service=\"{service}\"")) {
                missing.push(format!("waterfall row for {service}"));
            }
        }
        if !dom.contains("data-trace=") {
            missing.push("the trace list".to_owned());
        }
        if missing.is_empty() {
            break;
        }
    }
    assert!(missing.is_empty(), "not drawn: {missing:?}");
    // At 1280 px every column of both tables is in view (CODES and DURATION were cut off).
    for _ in 0..6 {
        get(&client, &app.addrs.page_url()).await;
    }
    let overflow = tables_overflow_at_1280px(&browser, &dashboard).await;
    assert_eq!(overflow.as_deref(), Some("[0,0]"), "px hidden per table");
    let shot = tempdir("screenshots").join("dashboard.png");
    let args = [
        format!("--screenshot={}", shot.display()),
        "--window-size=1400,1500".to_owned(),
        "--virtual-time-budget=8000".to_owned(),
        dashboard,
    ];
    let out = tokio::task::spawn_blocking(move || {
        headless(
            &browser,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    })
    .await
    .unwrap();
    assert!(out.status.success());
    eprintln!("screenshot: {}", shot.display());
    app.shutdown().await;
}

/// How many pixels of each of the dashboard's tables are scrolled out of view when the page
/// is 1280 px wide (a JSON list, one number per table), once both have rows; `None` if they
/// never got rows. The dashboard is measured in an iframe of a page that the browser loads
/// with the same-origin policy off, so the page's script can read the frame's layout.
async fn tables_overflow_at_1280px(browser: &Path, dashboard: &str) -> Option<String> {
    let harness = format!(
        r#"<!doctype html><html><body style="margin:0">
<iframe id="f" src="{dashboard}" width="1280" height="1400" style="border:0"></iframe>
<script>
const f = document.getElementById('f');
function measure() {{
  const d = f.contentDocument;
  if (!d || !d.querySelector('#edges td:not(.empty)') || !d.querySelector('#trace-list td:not(.empty)')) {{
    setTimeout(measure, 200);
    return;
  }}
  const hidden = [...d.querySelectorAll('.tbl-wrap')].map((w) => w.scrollWidth - w.clientWidth);
  document.body.dataset.overflow = JSON.stringify(hidden);
}}
f.addEventListener('load', measure);
</script></body></html>"#
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let page = axum::Router::new().route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(harness) }),
        );
        axum::serve(listener, page).await
    });
    let mut overflow = None;
    // As above: on a busy machine the first load can end before the tables fill.
    for _ in 0..5 {
        let (browser, url) = (browser.to_owned(), url.clone());
        let out = tokio::task::spawn_blocking(move || {
            headless(
                &browser,
                &[
                    "--disable-web-security",
                    "--disable-site-isolation-trials",
                    "--window-size=1300,1400",
                    "--virtual-time-budget=10000",
                    "--dump-dom",
                    &url,
                ],
            )
        })
        .await
        .unwrap();
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        overflow = dom
            .split_once("data-overflow=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(value, _)| value.to_owned());
        if overflow.is_some() {
            break;
        }
    }
    server.abort();
    overflow
}
