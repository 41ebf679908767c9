//! `mesh-proxy gateway`, the binary, over real sockets: which Gateway servers it serves (its
//! own port and the Service ports aimed at it) and what it lets outside clients control.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use http::{HeaderMap, StatusCode};
use mesh::workload::WorkloadBuilder;
use mesh::{Client, Server};
use mesh_proxy::gateway;
use test_support::{Killed, PATIENCE, free_port, tempdir};

const PROXY: &str = env!("CARGO_BIN_EXE_mesh-proxy");
const GATEWAY_TOKEN: &str = "token-gateway";
/// How long the backend takes to answer: long against a 1 ms timeout, short against the route's.
const BACKEND_DELAY: Duration = Duration::from_millis(300);

/// A Gateway selecting the ingress gateway on `port`, and a route through it to `alpha` with a
/// 5 s timeout.
fn gateway_config(port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: alpha}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - timeout: 5s\n    route:\n    - destination: {{host: alpha}}\n"
    )
}

/// meshd over `dir`, which also admits the ingress gateway's identity; its root written there.
async fn meshd(dir: &Path) -> (meshd::daemon::RunningMeshd, std::path::PathBuf) {
    let mut config = test_support::meshd_config(
        dir,
        meshd::daemon::CaSource::Ephemeral,
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(3600),
    );
    config.tokens.insert(
        gateway::GATEWAY_NAMESPACE,
        gateway::GATEWAY_SERVICE_ACCOUNT,
        GATEWAY_TOKEN,
    );
    let meshd = meshd::daemon::start(config).await.unwrap();
    let root = dir.join("root-cert.pem");
    std::fs::write(&root, meshd.root_pem()).unwrap();
    (meshd, root)
}

/// `alpha`: `/slow` answers after [`BACKEND_DELAY`] with the `x-envoy-upstream-rq-timeout-ms`
/// it received ("none" without one).
async fn backend(meshd: &meshd::daemon::RunningMeshd) -> mesh::Mesh {
    let server = Server::bind("alpha", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mesh = WorkloadBuilder::new(test_support::spec(meshd, "alpha", "alpha"))
        .start(server.local_addr())
        .unwrap();
    let app = Router::new().route(
        "/slow",
        get(|headers: HeaderMap| async move {
            tokio::time::sleep(BACKEND_DELAY).await;
            headers
                .get("x-envoy-upstream-rq-timeout-ms")
                .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned())
        }),
    );
    tokio::spawn(
        server
            .with_mesh(mesh.clone())
            .serve(app, std::future::pending()),
    );
    assert!(mesh.ready(PATIENCE).await, "alpha never got ready");
    mesh
}

/// The gateway binary on `port` with `args`, its stderr piped; its listener.
fn start_gateway(
    meshd: &meshd::daemon::RunningMeshd,
    root: &Path,
    port: u16,
    args: &[&str],
) -> (Killed, SocketAddr) {
    let child = Command::new(PROXY)
        .args([
            "gateway",
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(args)
        .env("MESH_CONTROL_PLANE", meshd.url())
        .env("MESH_CA_FILE", root)
        .env("MESH_TOKEN", GATEWAY_TOKEN)
        .env("MESH_ADMIN_PORT", free_port().to_string())
        .env("TOKIO_WORKER_THREADS", "1")
        .env_remove("HTTP_PROXY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("MESH_TRUST_ENVOY_HEADERS")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (Killed(child), SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Waits for a line of `gateway`'s stderr containing `wanted`, for at most [`PATIENCE`].
fn until_logged(gateway: &mut Killed, wanted: &str) -> String {
    let stderr = gateway.0.stderr.take().expect("stderr is piped");
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let mut read = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) if line.contains(wanted) => return line,
            Ok(line) => read.push(line),
            Err(_) => panic!("the gateway never logged {wanted:?}; it logged {read:#?}"),
        }
    }
}

async fn get_slow(gateway: SocketAddr, headers: HeaderMap) -> Result<(StatusCode, String), String> {
    let response = Client::new()
        .get(&format!("http://{gateway}/slow"), headers, PATIENCE)
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        response.status(),
        String::from_utf8_lossy(response.body()).into_owned(),
    ))
}

/// Polls `/slow` through the gateway until it answers 200 (it starts, gets its certificate,
/// config and alpha's endpoint), or fails after [`PATIENCE`] with the last answer.
async fn until_served(gateway: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = get_slow(gateway, HeaderMap::new()).await;
        if matches!(answer, Ok((StatusCode::OK, _))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never served the route: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_server_on_a_service_port_aimed_at_the_gateway_applies() {
    let dir = tempdir("gateway-port");
    // Upstream's bookinfo-gateway before 2023 (and cert-manager's still): port 80, which
    // Istio's Service maps to the gateway's 8080; here the gateway's port is a free one.
    std::fs::write(dir.join("gateway.yaml"), gateway_config(80)).unwrap();
    let (meshd, root) = meshd(&dir).await;
    let _alpha = backend(&meshd).await;

    let port = free_port();
    let mapping = format!("80:{port}");
    let (_mapped, addr) = start_gateway(&meshd, &root, port, &["--service-port", &mapping]);
    until_served(addr).await;

    // Behind the default Service (80 → 8080, not this port), the Gateway does not apply, and
    // the gateway says so, naming it, instead of only answering 404.
    let (mut unmapped, addr) = start_gateway(&meshd, &root, free_port(), &[]);
    let line = until_logged(&mut unmapped, "Gateway default/gw selects this gateway");
    assert!(line.contains("only on 80"), "{line}");
    let answer = get_slow(addr, HeaderMap::new()).await;
    assert!(
        matches!(answer, Ok((StatusCode::NOT_FOUND, _))),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn x_envoy_headers_from_outside_clients_are_removed_unless_trusted() {
    let dir = tempdir("gateway-envoy-headers");
    std::fs::write(dir.join("gateway.yaml"), gateway_config(80)).unwrap();
    let (meshd, root) = meshd(&dir).await;
    let _alpha = backend(&meshd).await;
    let (edge_port, trusting_port) = (free_port(), free_port());
    let (_edge, edge) = start_gateway(
        &meshd,
        &root,
        edge_port,
        &["--service-port", &format!("80:{edge_port}")],
    );
    let (_trusting, trusting) = start_gateway(
        &meshd,
        &root,
        trusting_port,
        &[
            "--service-port",
            &format!("80:{trusting_port}"),
            "--trust-envoy-headers",
        ],
    );
    until_served(edge).await;
    until_served(trusting).await;

    // A raw request: the mesh's own client would obey the header itself.
    let head = "x-envoy-upstream-rq-timeout-ms: 1\r\nx-envoy-max-retries: 0\r\n";
    // The route's 5 s timeout holds against the client's 1 ms, and alpha never sees it.
    let start = Instant::now();
    let (status, body) = raw_get(edge, "/slow", head).await;
    assert_eq!((status, body.as_str()), (200, "none"));
    assert!(start.elapsed() >= BACKEND_DELAY, "{:?}", start.elapsed());

    // Trusted, the client's timeout is obeyed: 504 long before alpha answers.
    let (status, body) = raw_get(trusting, "/slow", head).await;
    assert_eq!(status, 504, "{body}");
}

/// GET `path` with the extra header lines `head` over a fresh connection; status and body.
async fn raw_get(addr: SocketAddr, path: &str, head: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: gateway\r\n{head}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut response))
        .await
        .expect("the gateway answers")
        .unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    (status, body)
}
