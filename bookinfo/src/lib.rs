//! The whole Bookinfo app in one process: details, reviews v1/v2/v3, ratings and productpage,
//! each on its own loopback port and each calling the others through its own mesh-lib client,
//! exactly as separate processes would (real sockets, logical names like `reviews:9080`).
//!
//! productpage's calls to `reviews:9080` are spread over the three versions per request, as a
//! Kubernetes Service without routing rules does, so refreshing the page cycles through no
//! stars, black stars and red stars.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use mesh::control::client::WorkloadSpec;
use mesh::identity::DEFAULT_TRUST_DOMAIN;
use mesh::outbound::proxy::Proxy;
use mesh::workload::WorkloadBuilder;
use mesh::{BindError, Client, Endpoints, Mesh, Server};
use meshd::daemon::{self, CaSource, MeshdConfig, MeshdError, RunningMeshd};
use meshd::server::Tokens;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Default ports: productpage keeps upstream's 9080, the backends take the next ones.
pub const DEFAULT_PRODUCTPAGE_PORT: u16 = 9080;
pub const DEFAULT_DETAILS_PORT: u16 = 9081;
pub const DEFAULT_REVIEWS_V1_PORT: u16 = 9082;
pub const DEFAULT_REVIEWS_V2_PORT: u16 = 9083;
pub const DEFAULT_REVIEWS_V3_PORT: u16 = 9084;
pub const DEFAULT_RATINGS_PORT: u16 = 9085;

/// The Kubernetes namespace the workloads' identities name.
pub const NAMESPACE: &str = "default";
const GATEWAY_ACCOUNT: &str = mesh_proxy::gateway::GATEWAY_SERVICE_ACCOUNT;

/// How long start waits for every workload's certificate and first snapshot.
pub const MESH_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Where each workload listens (port 0 picks a free port), how ratings behaves, and the mesh.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    pub productpage_port: u16,
    pub details_port: u16,
    pub reviews_ports: [u16; 3],
    pub ratings_port: u16,
    pub ratings_variant: ratings::Variant,
    /// `None` runs plain HTTP between the services, with no control plane.
    pub mesh: Option<MeshOptions>,
    /// How the workloads meet the mesh (when it is on).
    pub mode: Mode,
    /// In sidecar mode: productpage is an application this process does not run (upstream's
    /// Python one, say), and only its sidecar runs here.
    pub productpage_beside: Option<AppBeside>,
}

/// How each workload meets the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The service's server and client are the mesh's (mesh-lib linked in).
    #[default]
    Embedded,
    /// Each service runs plain on its own loopback port, with a sidecar
    /// ([`mesh_proxy::sidecar`], what `mesh-proxy sidecar` runs) at the workload's address: the mesh
    /// reaches the service through the sidecar's inbound listener, the service calls out
    /// through the sidecar's outbound HTTP proxy.
    Sidecar,
}

/// An application beside a sidecar of this process: it listens on `127.0.0.1:app_port` and
/// calls out through the HTTP proxy the sidecar opens on `127.0.0.1:proxy_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppBeside {
    pub app_port: u16,
    pub proxy_port: u16,
}

/// The resources the tutorial applies before anything else, always in force under the config
/// directory: the ingress Gateway + VirtualService and the subsets of every service.
pub const BASE_CONFIG: [(&str, &str); 2] = [
    (
        "bookinfo-gateway.yaml",
        include_str!("../../mesh-config/base/bookinfo-gateway.yaml"),
    ),
    (
        "destination-rule-all.yaml",
        include_str!("../../mesh-config/base/destination-rule-all.yaml"),
    ),
];

/// The in-process control plane and the ingress gateway.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Istio-style YAML, watched live.
    pub config_dir: Option<PathBuf>,
    pub ca: CaSource,
    pub meshd_port: u16,
    /// Lifetime of workload certificates.
    pub cert_ttl: Duration,
    /// The ingress gateway's port.
    pub gateway_port: u16,
    /// The admin port: every workload's Istio metrics at `/stats/prometheus`.
    pub admin_port: u16,
    /// Access log of every workload's inbound requests (stdout).
    pub access_log: mesh::telemetry::AccessLog,
    /// meshd's dashboard port.
    pub dashboard_port: u16,
    /// Where every workload sends its spans (OTLP), and over which protocol (`grpc` or
    /// `http/protobuf`).
    pub otlp: Option<(String, String)>,
    /// How long a (re)started meshd marks its snapshots incomplete while workloads
    /// re-register.
    pub registration_grace: Duration,
}

/// The dashboard's port by default (Kiali's).
pub const DEFAULT_DASHBOARD_PORT: u16 = 20001;

/// The admin listener's port by default (Envoy's admin port).
pub const DEFAULT_ADMIN_PORT: u16 = 15000;

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            gateway_port: mesh_proxy::gateway::DEFAULT_GATEWAY_PORT,
            admin_port: DEFAULT_ADMIN_PORT,
            dashboard_port: DEFAULT_DASHBOARD_PORT,
            otlp: None,
            access_log: mesh::telemetry::AccessLog::OFF,
            config_dir: None,
            ca: CaSource::Ephemeral,
            meshd_port: mesh::control::DEFAULT_CONTROL_PORT,
            cert_ttl: meshd::ca::DEFAULT_CERT_TTL,
            registration_grace: meshd::server::DEFAULT_REGISTRATION_GRACE,
        }
    }
}

/// The app cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("meshd: {0}")]
    Meshd(#[from] MeshdError),
    #[error("mesh: {0}")]
    Mesh(String),
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            productpage_port: DEFAULT_PRODUCTPAGE_PORT,
            details_port: DEFAULT_DETAILS_PORT,
            reviews_ports: [
                DEFAULT_REVIEWS_V1_PORT,
                DEFAULT_REVIEWS_V2_PORT,
                DEFAULT_REVIEWS_V3_PORT,
            ],
            ratings_port: DEFAULT_RATINGS_PORT,
            ratings_variant: ratings::Variant::V1,
            mesh: Some(MeshOptions::default()),
            mode: Mode::Embedded,
            productpage_beside: None,
        }
    }
}

impl Config {
    /// Every workload on a free loopback port: for tests.
    pub fn ephemeral() -> Self {
        Self {
            productpage_port: 0,
            details_port: 0,
            reviews_ports: [0; 3],
            ratings_port: 0,
            mesh: Some(MeshOptions {
                meshd_port: 0,
                gateway_port: 0,
                admin_port: 0,
                dashboard_port: 0,
                ..MeshOptions::default()
            }),
            ..Self::default()
        }
    }
}

/// The addresses the running workloads listen on.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// The ingress gateway, when the mesh is on.
    pub gateway: Option<SocketAddr>,
    /// The admin listener (metrics), when the mesh is on.
    pub admin: Option<SocketAddr>,
    pub productpage: SocketAddr,
    pub details: SocketAddr,
    pub reviews: [SocketAddr; 3],
    pub ratings: SocketAddr,
}

impl Addrs {
    /// The page users open: through the ingress gateway when there is one.
    pub fn page_url(&self) -> String {
        format!(
            "http://{}/productpage",
            self.gateway.unwrap_or(self.productpage)
        )
    }
}

/// The running app.
#[derive(Debug)]
pub struct Running {
    pub addrs: Addrs,
    stop: watch::Sender<bool>,
    servers: JoinSet<()>,
    /// Per workload: stops its listener at once, without leaving the registry.
    crash: HashMap<String, watch::Sender<bool>>,
    meshd: Option<RunningMeshd>,
    meshes: Vec<Mesh>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and returns when every server has.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.servers.join_next().await.is_some() {}
        for mesh in &self.meshes {
            mesh::telemetry::tracing::flush_at_exit(mesh.telemetry().tracing.as_ref()).await;
        }
        drop(self.meshes);
        if let Some(meshd) = self.meshd {
            meshd.shutdown().await;
        }
    }

    /// meshd's dashboard, when the mesh is on.
    pub fn dashboard_url(&self) -> Option<String> {
        self.meshd
            .as_ref()
            .and_then(|m| m.dashboard)
            .map(|a| format!("http://{a}/"))
    }

    /// The in-process meshd's URL, when the mesh is on.
    pub fn meshd_url(&self) -> Option<String> {
        self.meshd.as_ref().map(RunningMeshd::url)
    }

    /// The workloads' data planes (empty without the mesh).
    pub fn meshes(&self) -> &[Mesh] {
        &self.meshes
    }

    /// Stops one workload's server at once (`reviews-v1`, `details`, …) while its registration
    /// stays, as when a process dies before the control plane notices: for outlier-detection
    /// demos and tests.
    pub fn crash(&self, workload: &str) -> bool {
        self.crash
            .get(workload)
            .is_some_and(|c| c.send(true).is_ok())
    }

    /// Stops every workload of `service` (`ratings`, `reviews`, …) as Kubernetes stops a pod:
    /// withdrawn from the mesh's endpoints first (it tells meshd it no longer takes
    /// requests), then its server stops at once. Callers then get Envoy's `503 no healthy
    /// upstream` straight away, and the page its degraded form. `false` if no such service.
    pub fn stop_service(&self, service: &str) -> bool {
        let mut found = false;
        for mesh in self.meshes.iter().filter(|m| m.service() == service) {
            mesh.set_serving(false);
            found = true;
        }
        for (name, crash) in &self.crash {
            let of_service = name == service
                || name
                    .strip_prefix(service)
                    .is_some_and(|rest| rest.starts_with('-'));
            if of_service {
                found |= crash.send(true).is_ok();
            }
        }
        found
    }

    /// Takes meshd out of the app, e.g. to stop it while the workloads go on.
    pub fn take_meshd(&mut self) -> Option<RunningMeshd> {
        self.meshd.take()
    }

    /// Kills meshd at once and, after `downtime`, starts a new one on the same port with the
    /// same CA and config (its registry starts empty, as after a crash): the workloads
    /// reconnect and re-register by themselves, each after its own backoff.
    pub async fn restart_meshd(&mut self, downtime: Duration) -> Result<(), StartError> {
        let Some(old) = self.meshd.take() else {
            return Ok(());
        };
        let config = old.restart_config();
        old.kill();
        tokio::time::sleep(downtime).await;
        // The killed server frees its port as its accept loop ends; retry the bind briefly.
        let deadline = tokio::time::Instant::now() + MESH_READY_TIMEOUT;
        loop {
            match daemon::start(config.clone()).await {
                Ok(meshd) => {
                    self.meshd = Some(meshd);
                    return Ok(());
                }
                Err(MeshdError::Bind { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Resolves when `signal` does, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }
}

/// Binds every port first, so a taken port fails the start before anything serves.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let at = |port| SocketAddr::new(config.bind, port);
    let details = Server::bind("details", at(config.details_port)).await?;
    let ratings = Server::bind("ratings", at(config.ratings_port)).await?;
    let mut reviews = Vec::with_capacity(3);
    for (i, port) in config.reviews_ports.into_iter().enumerate() {
        reviews.push(Server::bind(format!("reviews-v{}", i + 1), at(port)).await?);
    }
    let productpage = Server::bind("productpage", at(config.productpage_port)).await?;
    let gateway = match &config.mesh {
        Some(options) => {
            Some(Server::bind("istio-ingressgateway", at(options.gateway_port)).await?)
        }
        None => None,
    };
    let admin = match &config.mesh {
        Some(options) => Some(Server::bind("admin", at(options.admin_port)).await?),
        None => None,
    };
    let admin_port = admin.as_ref().map(|a| a.local_addr().port());
    let otlp = config.mesh.as_ref().and_then(|o| o.otlp.clone());
    let telemetry = mesh::dataplane::Telemetry {
        access_log: config
            .mesh
            .as_ref()
            .map_or(mesh::telemetry::AccessLog::OFF, |o| o.access_log),
        ..Default::default()
    };

    let addrs = Addrs {
        gateway: gateway.as_ref().map(Server::local_addr),
        admin: admin.as_ref().map(Server::local_addr),
        productpage: productpage.local_addr(),
        details: details.local_addr(),
        reviews: [
            reviews[0].local_addr(),
            reviews[1].local_addr(),
            reviews[2].local_addr(),
        ],
        ratings: ratings.local_addr(),
    };

    // Without the mesh, a static table stands in for the registry.
    let plain_client = Client::builder()
        .endpoints(Arc::new(endpoints(&addrs)))
        .build();
    let (meshd, tokens) = match &config.mesh {
        Some(options) => {
            let (meshd, tokens) = start_meshd(config.bind, options).await?;
            (Some(meshd), tokens)
        }
        None => (None, HashMap::new()),
    };
    // One workload of the mesh: its spec and token, the shared metrics and access log, and
    // spans to OTLP when an endpoint is given, else into the ring the dashboard reads.
    let workload = |meshd: &RunningMeshd,
                    service: &str,
                    labels: BTreeMap<String, String>,
                    namespace: &str,
                    account: &str|
     -> Result<WorkloadBuilder, StartError> {
        let spec = WorkloadSpec {
            control_plane: meshd.url(),
            roots: meshd.trust_roots(),
            token: tokens.get(account).cloned().unwrap_or_default(),
            token_file: None,
            service: service.to_owned(),
            labels,
            namespace: namespace.to_owned(),
            service_account: account.to_owned(),
            admin_port,
        };
        let builder = WorkloadBuilder::new(spec)
            .trust_domain(DEFAULT_TRUST_DOMAIN)
            .telemetry(telemetry.clone());
        match &otlp {
            Some((endpoint, protocol)) => builder
                .tracing_otlp(endpoint, protocol)
                .map_err(|e| StartError::Mesh(e.to_string())),
            None => Ok(builder.tracing_to_ring()),
        }
    };
    let mut meshes = Vec::new();
    let mut apps: Vec<(Server, Router)> = Vec::new();
    let mode = config.mode;
    // Joins the mesh as `service`/`version` at `server`'s address; returns the mesh.
    let mut join_as = |server: &Server, service: &str, version: &str| -> Result<Mesh, StartError> {
        let meshd = meshd.as_ref().expect("only called with the mesh on");
        let labels = BTreeMap::from([
            ("app".to_owned(), service.to_owned()),
            ("version".to_owned(), version.to_owned()),
        ]);
        let account = format!("bookinfo-{service}");
        let mesh = workload(meshd, service, labels, NAMESPACE, &account)?
            .start(server.local_addr())
            .map_err(|e| StartError::Mesh(e.to_string()))?;
        meshes.push(mesh.clone());
        Ok(mesh)
    };
    // Joins the mesh as `service`/`version`, or stays plain; returns the server the service
    // serves on and the client it calls out with. In sidecar mode the service gets a plain
    // loopback port of its own and its sidecar's listeners join `apps`.
    let mut join = |server: Server,
                    service: &str,
                    version: &str,
                    apps: &mut Vec<(Server, Router)>|
     -> Result<(Server, Client), StartError> {
        if meshd.is_none() {
            return Ok((server, plain_client.clone()));
        }
        let mesh = join_as(&server, service, version)?;
        match mode {
            Mode::Embedded => Ok((server.with_mesh(mesh.clone()), mesh.client())),
            Mode::Sidecar => {
                let app = loopback(&format!("{} app", server.name()), 0)?;
                let outbound = loopback(&format!("{} sidecar outbound", server.name()), 0)?;
                let client = Client::builder()
                    .proxy(Some(Proxy::new(outbound.local_addr())))
                    .build();
                let beside = mesh_proxy::sidecar::App::on_loopback(app.local_addr().port());
                apps.extend(mesh_proxy::sidecar::listeners(
                    &mesh, &beside, server, outbound,
                ));
                Ok((app, client))
            }
        }
    };

    let (server, _) = join(details, "details", "v1", &mut apps)?;
    apps.push((server, details::app(details::Config::default())));
    let (server, _) = join(ratings, "ratings", "v1", &mut apps)?;
    let state = ratings::State::new(ratings::Config {
        variant: config.ratings_variant,
        ..Default::default()
    });
    apps.push((server, ratings::app(state)));
    for (server, version) in reviews.into_iter().zip(["v1", "v2", "v3"]) {
        let (server, client) = join(server, "reviews", version, &mut apps)?;
        let config = reviews::Config::version(version, "http://ratings:9080");
        apps.push((server, reviews::app(reviews::State { config, client })));
    }
    match config.productpage_beside.filter(|_| meshd.is_some()) {
        Some(beside) => {
            let mesh = join_as(&productpage, "productpage", "v1")?;
            let outbound = loopback("productpage sidecar outbound", beside.proxy_port)?;
            let app = mesh_proxy::sidecar::App::on_loopback(beside.app_port);
            apps.extend(mesh_proxy::sidecar::listeners(
                &mesh,
                &app,
                productpage,
                outbound,
            ));
        }
        None => {
            let (server, client) = join(productpage, "productpage", "v1", &mut apps)?;
            let state = productpage::State::new(productpage::Config::default(), client);
            apps.push((server, productpage::app(state)));
        }
    }
    if let (Some(server), Some(meshd)) = (gateway, &meshd) {
        let gateway_mesh = workload(
            meshd,
            mesh_proxy::gateway::GATEWAY_SERVICE,
            mesh_proxy::gateway::labels(),
            mesh_proxy::gateway::GATEWAY_NAMESPACE,
            GATEWAY_ACCOUNT,
        )?
        .start(server.local_addr())
        .map_err(|e| StartError::Mesh(e.to_string()))?;
        meshes.push(gateway_mesh.clone());
        // Whichever port this listener got (tests use free ports), it serves as Istio's
        // ingress gateway on 8080 behind its default Service (80 → 8080), so a Gateway on
        // either port applies, as `mesh-proxy gateway` does by default.
        let options = mesh_proxy::gateway::Options::new(mesh_proxy::gateway::DEFAULT_GATEWAY_PORT);
        tokio::spawn(mesh_proxy::gateway::warn_unmatched(
            gateway_mesh.clone(),
            options.clone(),
        ));
        apps.push((server, mesh_proxy::gateway::router(gateway_mesh, &options)));
    }

    for mesh in &meshes {
        if !mesh.ready(MESH_READY_TIMEOUT).await {
            return Err(StartError::Mesh(format!(
                "{} got no certificate or config from meshd within {MESH_READY_TIMEOUT:?}",
                mesh.identity()
            )));
        }
    }
    if let Some(server) = admin {
        apps.push((server, mesh::telemetry::admin_router(&telemetry)));
    }
    // Ready means every workload also sees every other one, so the first page has them all.
    let deadline = tokio::time::Instant::now() + MESH_READY_TIMEOUT;
    while meshes
        .iter()
        .any(|m| m.snapshot().endpoints.len() < meshes.len())
    {
        if tokio::time::Instant::now() > deadline {
            let seen: Vec<String> = meshes
                .iter()
                .map(|m| {
                    let snapshot = m.snapshot();
                    format!(
                        "{} sees {} (v{})",
                        m.workload_name().workload,
                        snapshot.endpoints.len(),
                        snapshot.version
                    )
                })
                .collect();
            return Err(StartError::Mesh(format!(
                "the registry never listed every workload: {}",
                seen.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (stop, stopped) = watch::channel(false);
    let mut servers = JoinSet::new();
    let mut crash = HashMap::new();
    for (server, app) in apps {
        let mut stopped = stopped.clone();
        let (crash_tx, mut crashed) = watch::channel(false);
        let name = server.name().to_owned();
        crash.insert(name.clone(), crash_tx);
        servers.spawn(async move {
            let stopping = async move {
                tokio::select! {
                    _ = stopped.wait_for(|stop| *stop) => mesh::server::DEFAULT_SHUTDOWN_GRACE,
                    _ = crashed.wait_for(|c| *c) => Duration::ZERO,
                }
            };
            server.serve_with_grace(app, stopping).await;
            tracing::debug!("{name} stopped");
        });
    }
    Ok(Running {
        addrs,
        stop,
        servers,
        crash,
        meshd,
        meshes,
    })
}

/// A plain listener on `127.0.0.1:port` (a sidecar's application or outbound proxy).
fn loopback(name: &str, port: u16) -> Result<Server, StartError> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let bound = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std);
    match bound {
        Ok(listener) => Ok(Server::from_listener(name, listener)),
        Err(e) => Err(StartError::Mesh(format!(
            "{name} cannot listen on {addr}: {e}"
        ))),
    }
}

/// meshd in this process, with a fresh bootstrap token per service account.
async fn start_meshd(
    bind: IpAddr,
    options: &MeshOptions,
) -> Result<(RunningMeshd, HashMap<String, String>), StartError> {
    let mut tokens = Tokens::default();
    let mut by_account = HashMap::new();
    for service in ["productpage", "details", "reviews", "ratings"] {
        let account = format!("bookinfo-{service}");
        let token = format!("{:032x}", fastrand::u128(..));
        tokens.insert(NAMESPACE, &account, &token);
        by_account.insert(account, token);
    }
    let token = format!("{:032x}", fastrand::u128(..));
    tokens.insert(
        mesh_proxy::gateway::GATEWAY_NAMESPACE,
        GATEWAY_ACCOUNT,
        &token,
    );
    by_account.insert(GATEWAY_ACCOUNT.to_owned(), token);
    let mut base = mesh_config::MeshConfig::default();
    for (file, text) in BASE_CONFIG {
        let loaded =
            mesh_yaml::parse_file(file, text).map_err(|e| StartError::Mesh(e.to_string()))?;
        base.merge(loaded.config);
    }
    let meshd = daemon::start(MeshdConfig {
        listen: SocketAddr::new(bind, options.meshd_port),
        ca: options.ca.clone(),
        tokens,
        base,
        config_dirs: options.config_dir.iter().cloned().collect(),
        trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
        cert_ttl: options.cert_ttl,
        dashboard: Some(SocketAddr::new(bind, options.dashboard_port)),
        plane: meshd::server::PlaneOptions {
            registration_grace: options.registration_grace,
            ..Default::default()
        },
        ..MeshdConfig::default()
    })
    .await?;
    Ok((meshd, by_account))
}

/// The logical names the services call, and where they are in this process.
fn endpoints(addrs: &Addrs) -> Endpoints {
    let mut table = Endpoints::new();
    table.insert("details:9080", vec![addrs.details]);
    table.insert("reviews:9080", addrs.reviews.to_vec());
    table.insert("ratings:9080", vec![addrs.ratings]);
    table
}
