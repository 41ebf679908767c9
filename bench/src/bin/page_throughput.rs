//! Pages per second of `GET /productpage`, side by side in one run:
//!
//! - **plain**: our four services without the mesh (the bookinfo launcher with the mesh off),
//!   the client calling productpage directly;
//! - **mesh via gateway**: the whole embedded mesh as `bookinfo::start` sets it up (meshd,
//!   mTLS 1.3 on every hop, Istio metrics and tracing at their defaults: every request sampled,
//!   spans kept in the ring the dashboard reads), the client calling the ingress gateway →
//!   productpage → details, reviews → ratings;
//! - **mesh, no gateway**: the same mesh, the client calling productpage's own listener
//!   (plaintext, as Istio's PERMISSIVE default allows): what the gateway's hop costs;
//! - **upstream**, when available: Istio's own Python productpage (Flask under gunicorn with
//!   upstream's flags, `-w 8 --keep-alive 2 -k gevent`) calling our plain details, reviews and
//!   ratings.
//!
//! Each app runs in a process of its own (this executable with `--app plain|mesh`, gunicorn),
//! so each one's CPU is measured apart; the load generator is this process. The load is a
//! closed loop: N kept-alive HTTP/1.1 connections per row, each sending the next request as
//! soon as the page has arrived. The rows alternate in short blocks, in a new order each round.
//! A page counts when it is a 200 with the page's marker and no backend error on it.
//!
//! The upstream row needs `BENCH_UPSTREAM_VENV` (a venv with upstream's requirements.txt
//! installed: its `bin/gunicorn`) and `BENCH_UPSTREAM_PRODUCTPAGE` (upstream's
//! `samples/bookinfo/src/productpage`: productpage.py, templates/, static/);
//! `BENCH_UPSTREAM_WORKERS` changes gunicorn's worker count (upstream's 8).
//!
//! ```sh
//! cargo build --release -p bench --bin page-throughput
//! target/release/page-throughput [ROUNDS [SECONDS_PER_BLOCK [CONNECTIONS]]]
//! ```

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bench::{Errors, ProcStat, TempDir, proc_stat, ticks_per_second};
use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustix::process::{Pid, Signal};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// What every page of the product says (ours and upstream's template alike).
const MARKER: &str = "Book Details";
/// What a page says when a backend failed (details or reviews; ratings inside the reviews).
const BROKEN: [&str; 2] = ["Error fetching product", "currently unavailable"];
/// How long an app may take to be ready.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// One unmeasured block per row first (connections, pools, templates, caches).
const WARM_UP: Duration = Duration::from_secs(1);
/// Upstream's gunicorn flags (its Dockerfile's CMD), but for the bind address.
const UPSTREAM_WORKERS: usize = 8;
const UPSTREAM_FLAGS: [&str; 4] = ["--keep-alive", "2", "-k", "gevent"];
const USAGE: &str = "usage: page-throughput [ROUNDS [SECONDS_PER_BLOCK [CONNECTIONS]]]";
const ABOUT: &str =
    "Pages per second of GET /productpage, closed loop, rows alternating in blocks: our app
without the mesh, the whole embedded mesh through the ingress gateway and without it, and
upstream's Python productpage under gunicorn when BENCH_UPSTREAM_VENV and
BENCH_UPSTREAM_PRODUCTPAGE are set (BENCH_UPSTREAM_WORKERS: gunicorn's workers;
BENCH_APP_WORKERS: our apps' tokio workers). Defaults: 5 rounds, 2 s blocks, 16 connections.
Figures: bench/README.md.";
const GET_UPSTREAM: &str = "set BENCH_UPSTREAM_VENV to a venv with upstream productpage's \
    requirements.txt installed (its bin/gunicorn) and BENCH_UPSTREAM_PRODUCTPAGE to upstream's \
    samples/bookinfo/src/productpage (productpage.py, templates/, static/)";

// ---------------------------------------------------------------------------------------------
// The apps' processes.

/// `--app plain|mesh`: the whole app in this process, as `cargo run -p bookinfo` runs it (a
/// tokio runtime with a worker per core). Prints its addresses as one JSON line, then serves
/// until its stdin closes (the bench has gone, however it went) or it is killed.
fn serve_app(mode: &str) -> ExitCode {
    let mesh_on = match mode {
        "plain" => false,
        "mesh" => true,
        _ => {
            eprintln!("usage: page-throughput --app plain|mesh");
            return ExitCode::from(2);
        }
    };
    mesh::logging::init();
    mesh::nofile::raise_at_start();
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut config = bookinfo::Config::ephemeral();
        if !mesh_on {
            config.mesh = None;
        }
        let running = match bookinfo::start(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("bookinfo: {e}");
                return ExitCode::FAILURE;
            }
        };
        let a = running.addrs;
        // For upstream's productpage, which calls one reviews address: the three versions
        // behind a round-robin TCP relay, one version per connection. Upstream opens a new
        // connection per call (`requests.get` without a session), so that is one per page,
        // the same mix of versions our productpage's balancer makes.
        let reviews = if mesh_on {
            None
        } else {
            match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                Ok(listener) => {
                    let addr = listener.local_addr().ok();
                    tokio::spawn(round_robin(listener, a.reviews.to_vec()));
                    addr
                }
                Err(e) => {
                    eprintln!("reviews relay: {e}");
                    return ExitCode::FAILURE;
                }
            }
        };
        let addrs = json!({
            "page": a.page_url(),
            "productpage": a.productpage.to_string(),
            "details": a.details.to_string(),
            "reviews": reviews.map(|r| r.to_string()),
            "ratings": a.ratings.to_string(),
            "admin": a.admin.map(|r| r.to_string()),
        });
        println!("{addrs}");
        std::future::pending::<()>().await;
        drop(running);
        ExitCode::SUCCESS
    })
}

/// Relays each accepted connection to the next of `targets` in turn.
async fn round_robin(listener: tokio::net::TcpListener, targets: Vec<SocketAddr>) {
    let mut next = 0;
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let target = targets[next % targets.len()];
        next += 1;
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}

/// A child process killed (its whole process group, when it leads one) and reaped when
/// dropped: on the way out, on error, on panic and on Ctrl-C.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// It leads a process group of its own (gunicorn and its workers).
    group: bool,
}

impl Proc {
    fn spawn(
        name: &'static str,
        mut command: Command,
        dir: &Path,
        group: bool,
    ) -> Result<Self, String> {
        use std::os::unix::process::CommandExt;
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        if group {
            command.process_group(0);
            command.stdin(Stdio::null()).stdout(
                out.try_clone()
                    .map_err(|e| format!("{}: {e}", log.display()))?,
            );
        } else {
            // Our own `--app`: it exits when this pipe closes; its first line is its addresses.
            command.stdin(Stdio::piped()).stdout(Stdio::piped());
        }
        let child = command
            .stderr(out)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", command.get_program()))?;
        Ok(Self {
            name,
            child,
            log,
            group,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines it logged, for an error message.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The JSON line our `--app` prints once it serves.
    async fn addresses(&mut self) -> Result<Value, String> {
        let stdout = self.child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep draining, so that nothing it writes later fails.
            for _ in lines {}
        });
        let line = match tokio::time::timeout(READY_DEADLINE, rx).await {
            Ok(Ok(Some(Ok(line)))) => line,
            Ok(_) => {
                return Err(format!(
                    "{} exited before it served; its log:\n{}",
                    self.name,
                    self.tail()
                ));
            }
            Err(_) => {
                return Err(format!(
                    "{} did not start within {READY_DEADLINE:?}; its log:\n{}",
                    self.name,
                    self.tail()
                ));
            }
        };
        serde_json::from_str(&line).map_err(|e| format!("{}: {e}: {line}", self.name))
    }

    /// Polls `GET uri` at `addr` until a good answer (`check`), the process exits or the
    /// deadline passes.
    async fn until_ready(
        &mut self,
        addr: SocketAddr,
        path: &str,
        check: impl Fn(&[u8]) -> bool,
    ) -> Result<Bytes, String> {
        let uri: Uri = path.parse().map_err(|e| format!("{path}: {e}"))?;
        let host = host_of(addr);
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before it was ready; its log:\n{}",
                    self.name,
                    self.tail()
                ));
            }
            let last = match connect(addr).await {
                Ok(mut send) => match get(&mut send, &uri, &host).await {
                    Ok(body) if check(&body) => return Ok(body),
                    Ok(body) => format!("an unexpected answer: {}", excerpt(&body)),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "{} not ready at http://{addr}{path} after {READY_DEADLINE:?} ({last}); \
                     its log:\n{}",
                    self.name,
                    self.tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// CPU ticks so far (user + system) of the process, or of its whole group.
    fn cpu_ticks(&self) -> u64 {
        if self.group {
            group_cpu_ticks(self.pid())
        } else {
            proc_stat(self.pid()).map_or(0, |s| s.utime + s.stime)
        }
    }

    /// How many processes its group has (gunicorn's master and workers).
    fn group_size(&self) -> usize {
        group_members(self.pid()).len()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.group
            && let Some(pid) = Pid::from_raw(self.pid() as i32)
        {
            // gunicorn's quick shutdown: its master stops and reaps the workers. Then
            // whatever is left of the group, at once.
            if rustix::process::kill_process(pid, Signal::QUIT).is_ok() {
                let deadline = Instant::now() + Duration::from_secs(3);
                while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// CPU from /proc.

/// The processes of process group `pgid`.
fn group_members(pgid: u32) -> Vec<(u32, ProcStat)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
        .filter(|(_, s)| s.pgrp == pgid)
        .collect()
}

/// CPU ticks of a process group: every live member's, and the leader's reaped children's.
fn group_cpu_ticks(pgid: u32) -> u64 {
    group_members(pgid)
        .iter()
        .map(|(pid, s)| {
            let reaped = if *pid == pgid { s.cutime + s.cstime } else { 0 };
            s.utime + s.stime + reaped
        })
        .sum()
}

/// Busy CPU ticks of the whole machine so far (every CPU, everything but idle and iowait).
fn machine_busy_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let t: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    [0, 1, 2, 5, 6, 7].iter().filter_map(|i| t.get(*i)).sum()
}

/// CPU ticks of every process of this bench: the apps, gunicorn's group and this one.
fn our_ticks(procs: &[Proc]) -> u64 {
    procs.iter().map(Proc::cpu_ticks).sum::<u64>() + own_cpu_ticks()
}

fn own_cpu_ticks() -> u64 {
    proc_stat(std::process::id()).map_or(0, |s| s.utime + s.stime)
}

// ---------------------------------------------------------------------------------------------
// The load.

fn host_of(addr: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&addr.to_string()).expect("a socket address is a valid header")
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

/// `GET uri`: the body of a 200, all of it.
async fn get(
    send: &mut SendRequest<Empty<Bytes>>,
    uri: &Uri,
    host: &HeaderValue,
) -> Result<Bytes, String> {
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
    if status == http::StatusCode::OK {
        Ok(body)
    } else {
        Err(format!("{status}: {}", excerpt(&body)))
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars()
        .take(200)
        .collect::<String>()
        .replace('\n', " ")
}

/// A whole product page, with details and reviews on it.
fn good_page(body: &[u8]) -> bool {
    std::str::from_utf8(body)
        .is_ok_and(|page| page.contains(MARKER) && !BROKEN.iter().any(|b| page.contains(b)))
}

/// One block of one row.
#[derive(Default)]
struct Block {
    pages: u64,
    /// Of the pages counted.
    bytes: u64,
    latencies: Vec<Duration>,
    errors: Errors,
    wall: Duration,
}

/// `connections` closed loops of `GET uri` for `length`; connections are opened before the
/// clock starts and closed after it.
async fn block(row: &Row, connections: usize, length: Duration) -> Block {
    let mut out = Block::default();
    let mut sends = Vec::with_capacity(connections);
    for _ in 0..connections {
        match connect(row.addr).await {
            Ok(send) => sends.push(Some(send)),
            Err(e) => {
                out.errors.add(e);
                sends.push(None);
            }
        }
    }
    let start = Instant::now();
    let deadline = start + length;
    let mut loops = JoinSet::new();
    for send in sends {
        let (addr, uri, host) = (row.addr, row.uri.clone(), row.host.clone());
        loops.spawn(closed_loop(addr, uri, host, send, deadline));
    }
    while let Some(done) = loops.join_next().await {
        match done {
            Ok(one) => {
                out.pages += one.pages;
                out.bytes += one.bytes;
                out.latencies.extend(one.latencies);
                out.errors.merge(one.errors);
            }
            Err(e) => out.errors.add(format!("a client task failed: {e}")),
        }
    }
    out.wall = start.elapsed();
    out
}

async fn closed_loop(
    addr: SocketAddr,
    uri: Uri,
    host: HeaderValue,
    mut send: Option<SendRequest<Empty<Bytes>>>,
    deadline: Instant,
) -> Block {
    let mut out = Block {
        latencies: Vec::with_capacity(1 << 14),
        ..Block::default()
    };
    while Instant::now() < deadline {
        let Some(conn) = send.as_mut() else {
            match connect(addr).await {
                Ok(s) => send = Some(s),
                Err(e) => {
                    out.errors.add(e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            continue;
        };
        let sent = Instant::now();
        match get(conn, &uri, &host).await {
            Ok(body) if good_page(&body) => {
                out.latencies.push(sent.elapsed());
                out.pages += 1;
                out.bytes += body.len() as u64;
            }
            Ok(body) => out.errors.add(format!(
                "a 200 that is not a whole page: {}",
                excerpt(&body)
            )),
            Err(e) => {
                out.errors.add(e);
                send = None;
            }
        }
    }
    out
}

/// What a row calls, and the processes that serve it.
struct Row {
    name: &'static str,
    addr: SocketAddr,
    uri: Uri,
    host: HeaderValue,
    /// (label, index into the bench's processes).
    procs: Vec<(&'static str, usize)>,
}

/// A row's measured blocks, summed.
#[derive(Default)]
struct Totals {
    pages: u64,
    bytes: u64,
    /// Busy CPU ticks of the whole machine, and of every process of this bench.
    machine_ticks: u64,
    our_ticks: u64,
    wall: Duration,
    latencies: Vec<Duration>,
    errors: Errors,
    /// CPU ticks of each of the row's processes, and of the load generator (this process).
    ticks: Vec<u64>,
    client_ticks: u64,
    /// pages/s of each round's block.
    per_round: Vec<f64>,
}

impl Totals {
    fn rate(&self) -> f64 {
        self.pages as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

// ---------------------------------------------------------------------------------------------
// The bench.

/// Where upstream's productpage is, when the environment says.
struct Upstream {
    gunicorn: PathBuf,
    source: PathBuf,
    workers: usize,
}

fn upstream_from_env() -> Result<Option<Upstream>, String> {
    let venv = std::env::var_os("BENCH_UPSTREAM_VENV").filter(|v| !v.is_empty());
    let source = std::env::var_os("BENCH_UPSTREAM_PRODUCTPAGE").filter(|v| !v.is_empty());
    let (venv, source) = match (venv, source) {
        (None, None) => return Ok(None),
        (Some(v), Some(s)) => (PathBuf::from(v), PathBuf::from(s)),
        _ => {
            return Err(format!(
                "BENCH_UPSTREAM_VENV and BENCH_UPSTREAM_PRODUCTPAGE go together: {GET_UPSTREAM}"
            ));
        }
    };
    let gunicorn = venv.join("bin/gunicorn");
    if !gunicorn.is_file() {
        return Err(format!(
            "BENCH_UPSTREAM_VENV: no {} ({GET_UPSTREAM})",
            gunicorn.display()
        ));
    }
    for needed in ["productpage.py", "templates", "static"] {
        if !source.join(needed).exists() {
            return Err(format!(
                "BENCH_UPSTREAM_PRODUCTPAGE: no {} ({GET_UPSTREAM})",
                source.join(needed).display()
            ));
        }
    }
    let workers = match std::env::var("BENCH_UPSTREAM_WORKERS") {
        Ok(w) => w
            .parse()
            .ok()
            .filter(|w| *w > 0)
            .ok_or_else(|| format!("BENCH_UPSTREAM_WORKERS={w:?} is not a positive number"))?,
        Err(_) => UPSTREAM_WORKERS,
    };
    Ok(Some(Upstream {
        gunicorn,
        source,
        workers,
    }))
}

fn addr_field(addrs: &Value, key: &str) -> Result<SocketAddr, String> {
    addrs[key]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("no {key} address in {addrs}"))
}

/// Our own executable as an app: `--app mode`, quiet, telemetry at its defaults.
fn app_command(mode: &str) -> Result<Command, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut command = Command::new(exe);
    command.args(["--app", mode]).env("RUST_LOG", "warn");
    for var in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_TRACES_EXPORTER",
        "OTEL_SDK_DISABLED",
        "OTEL_PROPAGATORS",
        "MESH_ACCESS_LOG",
        "TOKIO_WORKER_THREADS",
    ] {
        command.env_remove(var);
    }
    // The apps' tokio worker threads, when the bench is asked for another number.
    if let Ok(n) = std::env::var("BENCH_APP_WORKERS") {
        command.env("TOKIO_WORKER_THREADS", n);
    }
    Ok(command)
}

/// The mesh's inbound requests (reporter="destination") by destination workload and
/// connection security policy, from the admin listener's Istio metrics.
async fn inbound_by_policy(admin: SocketAddr) -> Option<Vec<String>> {
    let uri: Uri = "/stats/prometheus".parse().ok()?;
    let mut send = connect(admin).await.ok()?;
    let body = get(&mut send, &uri, &host_of(admin)).await.ok()?;
    let text = String::from_utf8_lossy(&body);
    let label = |line: &str, name: &str| -> Option<String> {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let len = line[start..].find('"')?;
        Some(line[start..start + len].to_owned())
    };
    let mut sums: std::collections::BTreeMap<(String, String), f64> = Default::default();
    for line in text.lines() {
        if !line.starts_with("istio_requests_total{") || !line.contains("reporter=\"destination\"")
        {
            continue;
        }
        let (Some(workload), Some(policy), Some(value)) = (
            label(line, "destination_workload"),
            label(line, "connection_security_policy"),
            line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
        ) else {
            continue;
        };
        *sums.entry((workload, policy)).or_default() += value;
    }
    Some(
        sums.into_iter()
            .map(|((w, p), n)| format!("{w} {p} {n:.0}"))
            .collect(),
    )
}

async fn run(rounds: usize, length: Duration, connections: usize) -> Result<(), String> {
    let upstream = upstream_from_env()?;
    let hz = ticks_per_second();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = TempDir(std::env::temp_dir().join(format!("page-throughput-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(|e| format!("{}: {e}", dir.0.display()))?;

    // The apps, each in a process of its own.
    let mut procs: Vec<Proc> = Vec::new();
    procs.push(Proc::spawn("plain", app_command("plain")?, &dir.0, false)?);
    procs.push(Proc::spawn("mesh", app_command("mesh")?, &dir.0, false)?);
    let plain_addrs = procs[0].addresses().await?;
    let mesh_addrs = procs[1].addresses().await?;
    let page_uri: Uri = "/productpage".parse().expect("a path");
    let plain_page = addr_field(&plain_addrs, "productpage")?;
    let gateway: SocketAddr = mesh_addrs["page"]
        .as_str()
        .and_then(|u| u.parse::<Uri>().ok())
        .and_then(|u| u.authority()?.as_str().parse().ok())
        .ok_or_else(|| format!("no page URL in {mesh_addrs}"))?;
    procs[0]
        .until_ready(plain_page, "/productpage", good_page)
        .await?;
    procs[1]
        .until_ready(gateway, "/productpage", good_page)
        .await?;
    let mesh_page = addr_field(&mesh_addrs, "productpage")?;
    procs[1]
        .until_ready(mesh_page, "/productpage", good_page)
        .await?;
    let mut rows = vec![
        Row {
            name: "plain",
            addr: plain_page,
            uri: page_uri.clone(),
            host: host_of(plain_page),
            procs: vec![("app", 0)],
        },
        Row {
            name: "mesh via gateway",
            addr: gateway,
            uri: page_uri.clone(),
            host: host_of(gateway),
            procs: vec![("app", 1)],
        },
        Row {
            name: "mesh, no gateway",
            addr: mesh_page,
            uri: page_uri.clone(),
            host: host_of(mesh_page),
            procs: vec![("app", 1)],
        },
    ];
    let mut upstream_line = None;
    if let Some(up) = &upstream {
        let port = test_support::free_port();
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let backend = |key: &str| -> Result<SocketAddr, String> { addr_field(&plain_addrs, key) };
        let (details, reviews, ratings) = (
            backend("details")?,
            backend("reviews")?,
            backend("ratings")?,
        );
        let mut command = Command::new(&up.gunicorn);
        command
            .args(["-b", &listen.to_string(), "productpage:app"])
            .args(["-w", &up.workers.to_string()])
            .args(UPSTREAM_FLAGS)
            .current_dir(&up.source)
            .env("DETAILS_HOSTNAME", details.ip().to_string())
            .env("DETAILS_SERVICE_PORT", details.port().to_string())
            .env("REVIEWS_HOSTNAME", reviews.ip().to_string())
            .env("REVIEWS_SERVICE_PORT", reviews.port().to_string())
            .env("RATINGS_HOSTNAME", ratings.ip().to_string())
            .env("RATINGS_SERVICE_PORT", ratings.port().to_string());
        for var in [
            "SERVICES_DOMAIN",
            "FLOOD_FACTOR",
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_TRACES_EXPORTER",
        ] {
            command.env_remove(var);
        }
        let mut gunicorn = Proc::spawn("gunicorn", command, &dir.0, true)?;
        gunicorn
            .until_ready(listen, "/health", |b| !b.is_empty())
            .await?;
        gunicorn
            .until_ready(listen, "/productpage", good_page)
            .await?;
        let version = Command::new(&up.gunicorn)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        upstream_line = Some(format!(
            "upstream: {version} -w {} {} ({} workers on {cores} cores; {} processes in its \
             group), {}, calling our plain details, reviews (v1/v2/v3 in turn, one per \
             connection, through a TCP relay in the plain app's process) and ratings",
            up.workers,
            UPSTREAM_FLAGS.join(" "),
            up.workers,
            gunicorn.group_size(),
            up.source.join("productpage.py").display(),
        ));
        procs.push(gunicorn);
        rows.push(Row {
            name: "upstream (gunicorn)",
            addr: listen,
            uri: page_uri.clone(),
            host: host_of(listen),
            procs: vec![("gunicorn", 2), ("backends", 0)],
        });
    }

    // Warm-up, then the rounds.
    for row in &rows {
        let warm = block(row, connections, WARM_UP).await;
        if warm.pages == 0 {
            return Err(format!(
                "{}: no page during warm-up ({} errors, the first: {})",
                row.name,
                warm.errors.count,
                warm.errors.first.unwrap_or_default()
            ));
        }
    }
    let mut totals: Vec<Totals> = rows
        .iter()
        .map(|r| Totals {
            ticks: vec![0; r.procs.len()],
            ..Totals::default()
        })
        .collect();
    let mut order: Vec<usize> = (0..rows.len()).collect();
    for _ in 0..rounds {
        fastrand::shuffle(&mut order);
        for &i in &order {
            let row = &rows[i];
            let before: Vec<u64> = row
                .procs
                .iter()
                .map(|(_, p)| procs[*p].cpu_ticks())
                .collect();
            let client_before = own_cpu_ticks();
            let ours_before = our_ticks(&procs);
            let machine_before = machine_busy_ticks();
            let done = block(row, connections, length).await;
            let t = &mut totals[i];
            t.machine_ticks += machine_busy_ticks().saturating_sub(machine_before);
            t.our_ticks += our_ticks(&procs).saturating_sub(ours_before);
            for (k, (_, p)) in row.procs.iter().enumerate() {
                t.ticks[k] += procs[*p].cpu_ticks().saturating_sub(before[k]);
            }
            t.client_ticks += own_cpu_ticks().saturating_sub(client_before);
            t.bytes += done.bytes;
            t.per_round
                .push(done.pages as f64 / done.wall.as_secs_f64().max(1e-9));
            t.pages += done.pages;
            t.wall += done.wall;
            t.latencies.extend(done.latencies);
            t.errors.merge(done.errors);
        }
    }
    for proc in &mut procs {
        if let Ok(Some(status)) = proc.child.try_wait() {
            return Err(format!(
                "{} exited ({status}) during the run; its log:\n{}",
                proc.name,
                proc.tail()
            ));
        }
    }

    // The report.
    println!(
        "GET /productpage, closed loop: {connections} kept-alive HTTP/1.1 connections per row, \
         {rounds} rounds of {:.1} s blocks per row (new order each round), after {:.1} s of \
         warm-up each; {cores} cores shared by every app and this load generator; our apps \
         allocate with {}",
        length.as_secs_f64(),
        WARM_UP.as_secs_f64(),
        mesh::GLOBAL_ALLOCATOR
    );
    println!(
        "plain: our four services, no mesh, client -> productpage; mesh via gateway: meshd, \
         ingress gateway, mTLS on every hop, metrics + tracing at defaults (every request \
         sampled, spans to the ring), client -> gateway -> productpage -> details, reviews -> \
         ratings (all in one process, as `bookinfo` runs them); mesh, no gateway: the same \
         app, client -> productpage's own listener (plaintext, PERMISSIVE), then mTLS"
    );
    match &upstream_line {
        Some(line) => println!("{line}"),
        None => println!("upstream row skipped: to run it, {GET_UPSTREAM}"),
    }
    println!(
        "bytes: mean page size; others: cores busy with processes not of this bench (other \
         work on the machine) during the row's blocks"
    );
    println!(
        "{:<20} {:>9} {:>8} {:>8} {:>7} {:>7} {:>7}  CPU per page (and cores busy) of each process",
        "row", "pages/s", "p50 ms", "p99 ms", "errors", "bytes", "others"
    );
    for (row, t) in rows.iter().zip(&mut totals) {
        t.latencies.sort_unstable();
        let wall = t.wall.as_secs_f64().max(1e-9);
        let cpu = |ticks: u64| {
            let seconds = ticks as f64 / hz;
            format!(
                "{:.0} µs ({:.2})",
                seconds / t.pages.max(1) as f64 * 1e6,
                seconds / wall
            )
        };
        let mut split: Vec<String> = row
            .procs
            .iter()
            .zip(&t.ticks)
            .map(|((label, _), ticks)| format!("{label} {}", cpu(*ticks)))
            .collect();
        split.push(format!("client {}", cpu(t.client_ticks)));
        println!(
            "{:<20} {:>9.0} {:>8} {:>8} {:>7} {:>7} {:>7.2}  {}",
            row.name,
            t.rate(),
            ms(percentile(&t.latencies, 0.5)),
            ms(percentile(&t.latencies, 0.99)),
            t.errors.count,
            t.bytes / t.pages.max(1),
            t.machine_ticks.saturating_sub(t.our_ticks) as f64 / hz / wall,
            split.join(", ")
        );
    }
    for (row, t) in rows.iter().zip(&totals) {
        if let Some(first) = &t.errors.first {
            println!(
                "{}: {} errors, the first: {first}",
                row.name, t.errors.count
            );
        }
    }
    let ratio = |a: usize, b: usize| {
        let all = totals[a].rate() / totals[b].rate();
        let rounds: Vec<f64> = totals[a]
            .per_round
            .iter()
            .zip(&totals[b].per_round)
            .map(|(x, y)| x / y)
            .collect();
        let lo = rounds.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rounds.iter().copied().fold(0.0, f64::max);
        format!("{all:.2}x (rounds {lo:.2}x-{hi:.2}x)")
    };
    const PLAIN: usize = 0;
    const MESH: usize = 1;
    const MESH_DIRECT: usize = 2;
    const UPSTREAM: usize = 3;
    if rows.len() > UPSTREAM {
        let goal = totals[MESH].rate() / totals[UPSTREAM].rate();
        println!(
            "mesh page / upstream page: {} (goal >= 20): {}",
            ratio(MESH, UPSTREAM),
            if goal >= 20.0 { "met" } else { "NOT met" }
        );
        println!("plain / upstream: {}", ratio(PLAIN, UPSTREAM));
    } else {
        println!("mesh page / upstream page: not measured (no upstream row)");
    }
    println!(
        "mesh / plain: {} (the mesh's cost: {:.0} % of the plain page's throughput)",
        ratio(MESH, PLAIN),
        (1.0 - totals[MESH].rate() / totals[PLAIN].rate()) * 100.0
    );
    println!(
        "mesh without the gateway / plain: {}; mesh via gateway / mesh without it: {}",
        ratio(MESH_DIRECT, PLAIN),
        ratio(MESH, MESH_DIRECT)
    );
    if let Ok(admin) = addr_field(&mesh_addrs, "admin") {
        match inbound_by_policy(admin).await {
            Some(lines) => println!(
                "mesh inbound requests (reporter=destination) by workload and security policy: {}",
                lines.join(", ")
            ),
            None => println!("mesh metrics: could not read http://{admin}/stats/prometheus"),
        }
    }
    drop(procs);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--app") {
        return serve_app(args.get(1).map_or("", String::as_str));
    }
    if bench::help_requested(&args, USAGE, ABOUT) {
        return ExitCode::SUCCESS;
    }
    let number = |i: usize, default: f64| -> Result<f64, String> {
        args.get(i).map_or(Ok(default), |a| {
            a.parse::<f64>()
                .ok()
                .filter(|n| *n > 0.0)
                .ok_or_else(|| format!("{USAGE}; {a:?} is not a positive number"))
        })
    };
    let (rounds, secs, connections) = match (number(0, 5.0), number(1, 2.0), number(2, 16.0)) {
        (Ok(r), Ok(s), Ok(c)) => (r as usize, s, c as usize),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if rounds == 0 || connections == 0 {
        eprintln!("{USAGE}; ROUNDS and CONNECTIONS must be whole numbers above 0");
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        // Every child process is owned by `run`'s future: dropping it (done, failed, or
        // Ctrl-C) kills them.
        let outcome = tokio::select! {
            outcome = run(rounds, Duration::from_secs_f64(secs), connections) => outcome,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
        };
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("page-throughput: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
