//! The whole app with its in-process meshd: Istio's authorization task step by step, STRICT
//! mTLS, and the identities on the hops. Policies are written to the launcher's watched config
//! directory, as a user would.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::body::Body;
use bookinfo::Mode;
use http::{Request, StatusCode};
use mesh::Client;

const PATIENCE: Duration = Duration::from_secs(15);

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bookinfo-{name}-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn start(config_dir: &std::path::Path) -> bookinfo::Running {
    start_in(config_dir, Mode::Embedded).await
}

async fn start_in(config_dir: &std::path::Path, mode: Mode) -> bookinfo::Running {
    let mut config = bookinfo::Config::ephemeral();
    config.mesh.as_mut().unwrap().config_dir = Some(config_dir.to_owned());
    config.mode = mode;
    bookinfo::start(config).await.unwrap()
}

struct Page {
    status: StatusCode,
    body: String,
}

async fn send(request: Request<Body>) -> Page {
    let r = Client::new().send(request, PATIENCE).await.unwrap();
    Page {
        status: r.status(),
        body: String::from_utf8_lossy(r.body()).into_owned(),
    }
}

async fn page(url: &str) -> Page {
    send(Request::get(url).body(Body::empty()).unwrap()).await
}

/// Loads the page until `check` accepts three loads in a row (one per reviews version), or
/// fails after the patience runs out. Policies take effect asynchronously; this waits on the
/// outcome rather than on a guess of how long propagation takes.
async fn eventually(url: &str, what: &str, check: impl Fn(&[Page]) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut pages = Vec::new();
        for _ in 0..3 {
            pages.push(page(url).await);
        }
        if check(&pages) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last pages were {:?}",
            pages
                .iter()
                .map(|p| (p.status, p.body.len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn policy(name: &str, selector: Option<&str>, rule: &str) -> String {
    let selector = selector.map_or(String::new(), |app| {
        format!("  selector:\n    matchLabels:\n      app: {app}\n")
    });
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{selector}{rule}"
    )
}

const STAR: &str = "glyphicon glyphicon-star";
const RATINGS_ERROR: &str = "Ratings service is currently unavailable";

async fn istio_authorization_task_produces_the_documented_page_at_each_step(mode: Mode) {
    let dir = tempdir("authz");
    let app = start_in(&dir, mode).await;
    let url = app.addrs.page_url();
    eventually(&url, "baseline", |p| {
        p.iter()
            .all(|p| p.status == StatusCode::OK && p.body.contains("Book Details"))
    })
    .await;

    // 1. allow-nothing: productpage itself denies.
    std::fs::write(dir.join("allow-nothing.yaml"), "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-nothing\n  namespace: default\nspec:\n  {}\n").unwrap();
    eventually(&url, "step 1", |p| {
        p.iter()
            .all(|p| p.status == StatusCode::FORBIDDEN && p.body == "RBAC: access denied")
    })
    .await;

    // 2. productpage-viewer: the page, but details and reviews deny productpage.
    std::fs::write(
        dir.join("productpage-viewer.yaml"),
        policy(
            "productpage-viewer",
            Some("productpage"),
            "  action: ALLOW\n  rules:\n  - to:\n    - operation:\n        methods: [\"GET\"]\n",
        ),
    )
    .unwrap();
    eventually(&url, "step 2", |p| {
        p.iter().all(|p| {
            p.status == StatusCode::OK
                && p.body.contains("William Shakespeare")
                && p.body.contains("Error fetching product details")
                && p.body.contains("Error fetching product reviews")
        })
    })
    .await;
    let login = send(
        Request::post(format!("http://{}/login", app.addrs.productpage))
            .body(Body::from("username=jason"))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (login.status, login.body.as_str()),
        (StatusCode::FORBIDDEN, "RBAC: access denied"),
        "POST /login is not a GET"
    );

    // 3. details-viewer and reviews-viewer: details and reviews, but ratings denies reviews.
    for (name, app_label) in [("details-viewer", "details"), ("reviews-viewer", "reviews")] {
        std::fs::write(
            dir.join(format!("{name}.yaml")),
            policy(name, Some(app_label), "  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/default/sa/bookinfo-productpage\"]\n    to:\n    - operation:\n        methods: [\"GET\"]\n"),
        )
        .unwrap();
    }
    eventually(&url, "step 3", |p| {
        p.iter().all(|p| {
            p.body.contains("Book Details")
                && p.body.contains("Book Reviews")
                && !p.body.contains(STAR)
        }) && p
            .iter()
            .filter(|p| p.body.matches(RATINGS_ERROR).count() == 2)
            .count()
            == 2
    })
    .await;

    // 4. ratings-viewer: black and red stars are back.
    std::fs::write(
        dir.join("ratings-viewer.yaml"),
        policy("ratings-viewer", Some("ratings"), "  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/default/sa/bookinfo-reviews\"]\n    to:\n    - operation:\n        methods: [\"GET\"]\n"),
    )
    .unwrap();
    eventually(&url, "step 4", |p| {
        p.iter().all(|p| {
            p.body.contains("William Shakespeare")
                && p.body.contains("Book Details")
                && p.body.contains("Book Reviews")
                && !p.body.contains(RATINGS_ERROR)
        }) && p
            .iter()
            .filter(|p| p.body.matches(STAR).count() == 9)
            .count()
            == 2
    })
    .await;

    // 5. Cleanup: everything allowed again.
    for f in [
        "allow-nothing",
        "productpage-viewer",
        "details-viewer",
        "reviews-viewer",
        "ratings-viewer",
    ] {
        std::fs::remove_file(dir.join(format!("{f}.yaml"))).unwrap();
    }
    let deadline = Instant::now() + PATIENCE;
    while send(
        Request::post(format!("http://{}/login", app.addrs.productpage))
            .body(Body::from("username=jason"))
            .unwrap(),
    )
    .await
    .status
        != StatusCode::FOUND
    {
        assert!(Instant::now() < deadline, "step 5: login still denied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually(&url, "step 5", |p| {
        p.iter()
            .all(|p| p.status == StatusCode::OK && p.body.contains("Book Details"))
            && p.iter()
                .filter(|p| p.body.matches(STAR).count() == 9)
                .count()
                == 2
    })
    .await;
    app.shutdown().await;
}

async fn strict_on_details_resets_plaintext_but_the_page_still_gets_details_over_mtls(mode: Mode) {
    let dir = tempdir("strict");
    let app = start_in(&dir, mode).await;
    std::fs::write(
        dir.join("details-strict.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: details-strict\n  namespace: default\nspec:\n  selector:\n    matchLabels:\n      app: details\n  mtls:\n    mode: STRICT\n",
    )
    .unwrap();
    let details = format!("http://{}/details/0", app.addrs.details);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match Client::new()
            .get(&details, Default::default(), PATIENCE)
            .await
        {
            Err(e) => {
                let chain = format!("{e:?}");
                assert!(
                    chain.contains("reset") || chain.contains("Reset") || chain.contains("closed"),
                    "{chain}"
                );
                break;
            }
            Ok(_) => assert!(Instant::now() < deadline, "STRICT never applied to details"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = page(&app.addrs.page_url()).await;
    assert!(
        page.body.contains("Book Details"),
        "productpage reaches details over mTLS"
    );
    app.shutdown().await;
}

async fn every_workload_has_its_upstream_service_account_identity(mode: Mode) {
    let dir = tempdir("ids");
    let app = start_in(&dir, mode).await;
    let mut ids: Vec<String> = app
        .meshes()
        .iter()
        .map(|m| m.identity().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids,
        [
            "spiffe://cluster.local/ns/default/sa/bookinfo-details",
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
            "spiffe://cluster.local/ns/default/sa/bookinfo-ratings",
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
            "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
        ]
    );
    // Each workload is in the registry with the identity a client must find, and a TLS 1.3
    // handshake with productpage's certificate finds exactly that identity at its address.
    let productpage = app
        .meshes()
        .iter()
        .find(|m| m.service() == "productpage")
        .unwrap();
    let certified = productpage.certified().unwrap();
    let snapshot = productpage.snapshot();
    assert_eq!(
        snapshot.endpoints.len(),
        7,
        "six workloads and the ingress gateway"
    );
    // The gateway faces browsers in plaintext; every other endpoint takes mTLS only from the mesh.
    for e in snapshot
        .endpoints
        .iter()
        .filter(|e| e.service != "istio-ingressgateway")
    {
        assert_eq!(
            e.identity.service_account,
            format!("bookinfo-{}", e.service)
        );
        let config = mesh::tls::client_config(&certified, e.identity.clone()).unwrap();
        let tcp = tokio::net::TcpStream::connect(e.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(rustls_pki_types::ServerName::try_from("mesh").unwrap(), tcp)
            .await
            .unwrap_or_else(|err| panic!("{} at {}: {err}", e.service, e.addr));
        let (_, conn) = tls.get_ref();
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let peer = mesh::tls::spiffe_id_of(&conn.peer_certificates().unwrap()[0]).unwrap();
        assert_eq!(peer, e.identity);
    }
    app.shutdown().await;
}

#[test]
fn the_shipped_mesh_config_samples_load_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh-config/security");
    let loaded = mesh_yaml::load_dir(&dir).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.config.authorization_policies.len(), 5);
    assert_eq!(loaded.config.peer_authentications.len(), 2);
    let live = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh-config/live");
    let loaded = mesh_yaml::load_dir(&live).unwrap();
    assert_eq!(
        loaded.config,
        mesh_config::MeshConfig::default(),
        "nothing is applied by default"
    );
}

/// A GET sent as raw bytes, so no client tidies the path first: (status, body).
async fn raw_get(addr: std::net::SocketAddr, target: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: details:9080\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .unwrap_or_else(|_| panic!("no answer to {target}"))
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {target}: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

async fn a_deny_on_a_path_covers_every_spelling_of_that_path(mode: Mode) {
    let dir = tempdir("normalize");
    let app = start_in(&dir, mode).await;
    let details = app.addrs.details;
    // The application gets the normalised path: details serves `/%64etails/1` as `/details/1`.
    let (status, body) = raw_get(details, "/%64etails/x/../1").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"id\":1"), "{body}");

    std::fs::write(
        dir.join("deny-details-0.yaml"),
        policy(
            "deny-details-0",
            Some("details"),
            "  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [\"/details/0\"]\n",
        ),
    )
    .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while raw_get(details, "/details/0").await.0 != 403 {
        assert!(Instant::now() < deadline, "the DENY never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for spelling in [
        "/details/0",
        "/details/./0",
        "/details/x/../0",
        "//details/0",
        "/details//0",
        "/details/%2E/0",
        "/details/%2e%2e/details/0",
        "/%64etails/0",
        "/details%2F0",
        "/details%5c0",
        "/../details/0",
        "/details/0?x=/../",
    ] {
        assert_eq!(
            raw_get(details, spelling).await,
            (403, "RBAC: access denied".to_owned()),
            "{spelling}"
        );
    }
    let (status, body) = raw_get(details, "/details/1").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"id\":1"), "{body}");
    // What cannot be made a valid path is refused before any policy, as Envoy does.
    assert_eq!(raw_get(details, "/details/%00").await.0, 400);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn meshd_starts_with_a_bad_file_and_a_policy_added_later_is_enforced() {
    let dir = tempdir("badfile");
    std::fs::write(
        dir.join("broken.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: broken}\nspec: {rulez: [\n",
    )
    .unwrap();
    let app = start(&dir).await;
    let url = app.addrs.page_url();
    eventually(&url, "serving with the bad file present", |p| {
        p.iter()
            .all(|p| p.status == StatusCode::OK && p.body.contains("Book Details"))
    })
    .await;
    std::fs::write(
        dir.join("allow-nothing.yaml"),
        include_str!("../../mesh-config/security/allow-nothing.yaml"),
    )
    .unwrap();
    eventually(&url, "allow-nothing beside the bad file", |p| {
        p.iter()
            .all(|p| p.status == StatusCode::FORBIDDEN && p.body == "RBAC: access denied")
    })
    .await;
    app.shutdown().await;
}

/// What makes a loaded page a failure for a user: anything but 200, or a backend's error text.
fn page_failure(page: &Page) -> Option<String> {
    if page.status != StatusCode::OK {
        return Some(format!("status {}", page.status));
    }
    for error in [
        "Error fetching product details",
        "Error fetching product reviews",
        RATINGS_ERROR,
    ] {
        if page.body.contains(error) {
            return Some(error.to_owned());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn meshd_killed_and_restarted_under_steady_page_load_loses_no_page() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let mut config = bookinfo::Config::ephemeral();
    // Short, so the window's end (complete snapshots replacing what data planes kept) falls
    // inside the load too.
    config.mesh.as_mut().unwrap().registration_grace = Duration::from_secs(2);
    let mut app = bookinfo::start(config).await.unwrap();
    let url = app.addrs.page_url();
    let stop = Arc::new(AtomicBool::new(false));
    let loaded = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut loaders = Vec::new();
    // Four steady clients through the gateway, each loading pages back to back.
    for _ in 0..4 {
        let (url, stop, loaded, failures) =
            (url.clone(), stop.clone(), loaded.clone(), failures.clone());
        loaders.push(tokio::spawn(async move {
            let client = Client::new();
            while !stop.load(Ordering::Relaxed) {
                let request = Request::get(&url).body(Body::empty()).unwrap();
                let failure = match client.send(request, PATIENCE).await {
                    Ok(r) => page_failure(&Page {
                        status: r.status(),
                        body: String::from_utf8_lossy(r.body()).into_owned(),
                    }),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(f) = failure {
                    failures.lock().unwrap().push(f);
                }
                loaded.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let wait_for_pages = |at_least: usize| {
        let loaded = loaded.clone();
        async move {
            let deadline = Instant::now() + PATIENCE;
            while loaded.load(Ordering::Relaxed) < at_least {
                assert!(Instant::now() < deadline, "pages stopped loading");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for_pages(100).await;
    let before = loaded.load(Ordering::Relaxed);
    // Down long enough that the workloads' reconnect backoffs spread their re-registrations
    // over about a second, as after a real crash and restart.
    app.restart_meshd(Duration::from_millis(1500))
        .await
        .unwrap();
    let workloads = app.meshes().len();
    // Every workload re-registers with the new meshd, and its window ends.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let url = app.meshd_url().unwrap();
        let meshd = app.meshes()[0].snapshot();
        let registered = app
            .meshes()
            .iter()
            .all(|m| m.snapshot().endpoints.len() >= workloads && m.snapshot().complete);
        if registered && meshd.complete {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workloads never re-registered with the restarted meshd at {url}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Load on after the complete snapshots replaced what the data planes had kept.
    let after = loaded.load(Ordering::Relaxed);
    wait_for_pages(after + 100).await;
    stop.store(true, Ordering::Relaxed);
    for loader in loaders {
        loader.await.unwrap();
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    let total = loaded.load(Ordering::Relaxed);
    eprintln!(
        "{total} pages ({} during the restart and re-registration), {} failed",
        after - before,
        failures.len()
    );
    assert!(failures.is_empty(), "failed pages: {failures:?}");
    app.shutdown().await;
}

test_support::in_both_modes!(
    istio_authorization_task_produces_the_documented_page_at_each_step,
    strict_on_details_resets_plaintext_but_the_page_still_gets_details_over_mtls,
    every_workload_has_its_upstream_service_account_identity,
    a_deny_on_a_path_covers_every_spelling_of_that_path,
);

#[tokio::test(flavor = "multi_thread")]
async fn a_dependency_stopped_under_load_degrades_the_page_at_once() {
    use std::sync::Arc;
    let app = bookinfo::start(bookinfo::Config::ephemeral())
        .await
        .unwrap();
    let url = Arc::new(app.addrs.page_url());
    assert_eq!(page(&url).await.status, StatusCode::OK);

    assert!(app.stop_service("ratings"));
    let deadline = Instant::now() + PATIENCE;
    while app
        .meshes()
        .iter()
        .any(|m| !m.endpoints_of("ratings").is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "ratings never left the snapshots"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Eight clients load 25 pages each, back to back, with ratings gone.
    let mut loaders = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let url = url.clone();
        loaders.spawn(async move {
            let client = Client::new();
            let mut loads = Vec::new();
            for _ in 0..25 {
                let started = Instant::now();
                let request = Request::get(url.as_str()).body(Body::empty()).unwrap();
                let r = client.send(request, PATIENCE).await.unwrap();
                let body = String::from_utf8_lossy(r.body()).into_owned();
                loads.push((started.elapsed(), r.status(), body));
            }
            loads
        });
    }
    let mut loads: Vec<(Duration, StatusCode, String)> =
        loaders.join_all().await.into_iter().flatten().collect();
    let degraded = loads
        .iter()
        .filter(|(_, _, body)| body.contains(RATINGS_ERROR))
        .count();
    for (_, status, body) in &loads {
        assert_eq!(*status, StatusCode::OK);
        assert!(!body.contains("Error fetching product reviews"));
    }
    assert!(degraded > 0, "no page showed the ratings error");
    loads.sort_by_key(|(took, _, _)| *took);
    let median = loads[loads.len() / 2].0;
    let slowest = loads[loads.len() - 1].0;
    eprintln!(
        "{} pages with ratings stopped ({degraded} degraded): median {median:?}, slowest {slowest:?}",
        loads.len()
    );
    // Upstream's page shows the ratings error at once; the calls' timeouts are 2.5–10 s.
    assert!(median < Duration::from_millis(100), "median {median:?}");
    assert!(slowest < Duration::from_secs(1), "slowest {slowest:?}");

    // The mesh answered, not a resolver: reviews' calls got Envoy's 503 UH.
    let admin = app.addrs.admin.expect("the launcher serves metrics");
    let metrics = test_support::metrics_text(admin).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total")
                && l.contains("reporter=\"source\"")
                && l.contains("source_app=\"reviews\"")
                && l.contains("response_code=\"503\"")
                && l.contains("response_flags=\"UH\"")),
        "no 503 UH from reviews in:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("istio_requests_total") && l.contains("reviews"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    app.shutdown().await;
}
