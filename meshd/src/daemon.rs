//! meshd as a library: the control plane's gRPC server, its CA, and the watched config
//! directories (`config_watch`). The `meshd` binary and the in-process `bookinfo` launcher
//! both run this.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ca::{CaError, CertificateAuthority};
pub use crate::config_watch::{CONFIG_POLL_INTERVAL, ConfigWatchOptions};
use crate::listener::{self, ServingNames};
use crate::server::{ControlPlane, PlaneOptions, Tokens};
use mesh_config::MeshConfig;
use mesh_yaml::{self as config, ConfigError};

/// Where the CA's root comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// Load from this directory, or generate there on first start.
    Dir(PathBuf),
    /// A root the user supplies.
    Files { cert: PathBuf, key: PathBuf },
    /// A fresh root in memory (lost on exit).
    Ephemeral,
    /// A CA already loaded (a meshd restarted in the same process keeps its root).
    Shared(Arc<CertificateAuthority>),
}

/// How meshd runs.
#[derive(Debug, Clone)]
pub struct MeshdConfig {
    pub listen: SocketAddr,
    pub ca: CaSource,
    pub tokens: Tokens,
    /// Resources always in force, under those of the directories (a directory's resource of
    /// the same kind, namespace and name replaces one here).
    pub base: MeshConfig,
    /// Directories of Istio-style YAML, merged in order and watched for changes.
    pub config_dirs: Vec<PathBuf>,
    /// How changes to them (and to the Kubernetes source's objects) are noticed.
    pub config_watch: ConfigWatchOptions,
    pub trust_domain: String,
    /// Lifetime of workload certificates.
    pub cert_ttl: Duration,
    /// Where the dashboard listens (`None`: no dashboard).
    pub dashboard: Option<SocketAddr>,
    /// The namespace meshd runs in: its serving certificate names `meshd.<namespace>.svc`.
    pub namespace: String,
    /// More names or IPs for the serving certificate (how workloads reach meshd).
    pub serving_names: Vec<String>,
    /// Registration rules and the re-registration window.
    pub plane: PlaneOptions,
    /// Connections meshd holds open at most, and how long one may go without a certificate.
    pub listener: listener::ListenerLimits,
    /// Where to write the root certificate (PEM, public) for workloads to mount as
    /// `MESH_CA_FILE`, e.g. a volume shared read-only with them.
    pub publish_root: Option<PathBuf>,
    /// The Kubernetes API server as a config source and token reviewer.
    pub kubernetes: Option<KubernetesOptions>,
}

/// What meshd takes from the Kubernetes API server.
#[derive(Clone)]
pub struct KubernetesOptions {
    pub client: kube::Client,
    /// Read the mesh's resources (merged after the config directories).
    pub config: bool,
    /// Publish Ready pods from EndpointSlices beside the registry, and stop publishing
    /// registrations at addresses Kubernetes marks not ready.
    pub endpoints: bool,
    /// Accept ServiceAccount tokens for this audience as bootstrap tokens (TokenReview).
    pub token_audience: Option<String>,
}

impl std::fmt::Debug for KubernetesOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesOptions")
            .field("config", &self.config)
            .field("endpoints", &self.endpoints)
            .field("token_audience", &self.token_audience)
            .finish_non_exhaustive()
    }
}

impl Default for MeshdConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], mesh_proto::DEFAULT_CONTROL_PORT)),
            ca: CaSource::Ephemeral,
            tokens: Tokens::default(),
            base: MeshConfig::default(),
            config_dirs: Vec::new(),
            config_watch: ConfigWatchOptions::default(),
            trust_domain: mesh_proto::identity::DEFAULT_TRUST_DOMAIN.to_owned(),
            cert_ttl: crate::ca::DEFAULT_CERT_TTL,
            dashboard: None,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            serving_names: Vec::new(),
            plane: PlaneOptions::default(),
            listener: listener::ListenerLimits::default(),
            publish_root: None,
            kubernetes: None,
        }
    }
}

/// The namespace meshd assumes it runs in unless told (Kubernetes' `default`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// meshd cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MeshdError {
    #[error("certificate authority: {0}")]
    Ca(#[from] CaError),
    #[error("mesh config: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot write the root certificate to {path}: {source}")]
    PublishRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running meshd.
#[derive(Debug)]
pub struct RunningMeshd {
    pub addr: SocketAddr,
    /// The dashboard's address, when it runs.
    pub dashboard: Option<SocketAddr>,
    pub plane: ControlPlane,
    /// The configuration it runs with, to start it again (tests restart meshd on its port).
    pub config: MeshdConfig,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningMeshd {
    /// The URL data planes use (loopback when meshd listens on every interface).
    pub fn url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("https://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// The configuration to start this meshd again with: same port, same CA (as a restarted
    /// meshd with a persistent CA directory), empty registry.
    pub fn restart_config(&self) -> MeshdConfig {
        MeshdConfig {
            listen: self.addr,
            ca: CaSource::Shared(self.plane.ca().clone()),
            dashboard: self.dashboard,
            ..self.config.clone()
        }
    }

    /// The root workloads must trust, PEM (public).
    pub fn root_pem(&self) -> &str {
        self.plane.ca().root_pem()
    }

    /// [`root_pem`](Self::root_pem) as trust roots for a workload in this process.
    pub fn trust_roots(&self) -> mesh_proto::identity::TrustRoots {
        mesh_proto::identity::TrustRoots::from_pem(self.root_pem())
            .expect("the CA's own root parses")
    }

    /// Stops serving and watching; registered workloads keep their last snapshot.
    pub async fn shutdown(self) {
        self.plane.close();
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Goes away without waiting: streams end, connections close, the port is freed (for
    /// tests of data planes outliving meshd).
    pub fn kill(self) {
        self.plane.close();
        let _ = self.stop.send(true);
    }
}

/// Loads the CA and the config, binds, and serves.
pub async fn start(config: MeshdConfig) -> Result<RunningMeshd, MeshdError> {
    let ca = match &config.ca {
        CaSource::Dir(dir) => Arc::new(CertificateAuthority::load_or_create(
            dir,
            &config.trust_domain,
            config.cert_ttl,
        )?),
        CaSource::Files { cert, key } => Arc::new(CertificateAuthority::from_files(
            cert,
            key,
            config.cert_ttl,
        )?),
        CaSource::Ephemeral => Arc::new(CertificateAuthority::generate(
            &config.trust_domain,
            config.cert_ttl,
        )?),
        CaSource::Shared(ca) => ca.clone(),
    };
    if let Some(path) = &config.publish_root {
        publish_root(path, ca.root_pem()).map_err(|source| MeshdError::PublishRoot {
            path: path.clone(),
            source,
        })?;
    }
    let names =
        ServingNames::for_meshd(&config.namespace, config.listen.ip(), &config.serving_names);
    let tls = listener::server_config(ca.clone(), names)?;
    let mut plane = ControlPlane::new(
        ca,
        config.tokens.clone(),
        &config.trust_domain,
        config.plane.clone(),
    );
    let mut tasks = Vec::new();
    let (stop, stopped) = watch::channel(false);
    let mut documents = Vec::new();
    if let Some(kube) = &config.kubernetes {
        if let Some(audience) = &kube.token_audience {
            plane = plane.with_token_review(crate::kubernetes::TokenReviewer::new(
                kube.client.clone(),
                audience.clone(),
            ));
        }
        if kube.config {
            let source = crate::kubernetes::ConfigSource::new(
                kube.client.clone(),
                mesh_yaml::Documents::default(),
            );
            documents.push((
                crate::kubernetes::config_source::LABEL.to_owned(),
                source.documents().clone(),
            ));
            tasks.extend(source.spawn(stopped.clone()));
        }
    }
    if let Some(kube) = config.kubernetes.as_ref().filter(|k| k.endpoints) {
        let plane = plane.clone();
        tasks.push(crate::kubernetes::endpoints::spawn(
            kube.client.clone(),
            move |discovered| plane.set_discovered(discovered),
            stopped.clone(),
        ));
    }
    let sources: Vec<config::Documents> = documents.iter().map(|(_, d)| d.clone()).collect();
    let watched = load(&config.base, &config.config_dirs, documents)?;
    plane.set_config(watched.config().clone());
    if !config.config_dirs.is_empty() || !sources.is_empty() {
        tasks.push(crate::config_watch::spawn(
            watched,
            &config.config_dirs,
            sources,
            config.config_watch.clone(),
            plane.clone(),
            stopped.clone(),
        ));
    }
    // The snapshot that ends the re-registration window: from then on data planes replace
    // what they know instead of adding to it.
    let grace_plane = plane.clone();
    let mut grace_stopped = stopped.clone();
    tasks.push(tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep_until(grace_plane.grace_ends()) => grace_plane.publish(),
            _ = grace_stopped.wait_for(|s| *s) => {}
        }
    }));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| MeshdError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| MeshdError::Bind {
        addr: config.listen,
        source,
    })?;
    let service = plane.clone().service();
    let incoming = listener::incoming(listener, tls, config.listener, stopped.clone());
    let mut stopped_grpc = stopped;
    tasks.push(tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            // A data plane that vanished without closing its stream is noticed within ~15 s
            // and deregistered.
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .concurrency_limit_per_connection(64)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped_grpc.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!("meshd gRPC server failed: {e}");
        }
    }));
    let dashboard = match config.dashboard {
        Some(at) => {
            let listener = TcpListener::bind(at)
                .await
                .map_err(|source| MeshdError::Bind { addr: at, source })?;
            let dashboard_addr = listener
                .local_addr()
                .map_err(|source| MeshdError::Bind { addr: at, source })?;
            let dashboard = crate::dashboard::Dashboard::new(plane.clone());
            let scraper = tokio::spawn(dashboard.clone().scrape_forever());
            let mut stopped_http = stop.subscribe();
            tasks.push(tokio::spawn(async move {
                let result = axum::serve(listener, dashboard.router())
                    .with_graceful_shutdown(async move {
                        let _ = stopped_http.wait_for(|s| *s).await;
                    })
                    .await;
                scraper.abort();
                if let Err(e) = result {
                    tracing::error!("meshd dashboard failed: {e}");
                }
            }));
            tracing::info!("meshd dashboard on http://{dashboard_addr}");
            Some(dashboard_addr)
        }
        None => None,
    };
    tracing::info!("meshd listening on {addr} (TLS 1.3)");
    Ok(RunningMeshd {
        addr,
        dashboard,
        plane,
        config,
        stop,
        tasks,
    })
}

/// Writes the root certificate through a temporary file and a rename, so a workload reading
/// it never sees half a file.
fn publish_root(path: &Path, pem: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|current| current == pem) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, pem)?;
    std::fs::rename(&tmp, path)
}

/// `base` with every directory merged over it, in order. A bad file is logged and left out
/// (meshd serves the rest); only a directory that cannot be listed stops the start, as that
/// is almost always a mistyped path.
fn load(
    base: &MeshConfig,
    dirs: &[PathBuf],
    documents: Vec<(String, config::Documents)>,
) -> Result<config::Watched, ConfigError> {
    let (watched, first) = config::Watched::open_with(base.clone(), dirs.to_vec(), documents)?;
    crate::config_watch::log_reload(&first);
    Ok(watched)
}
