//! meshd as a library: the control plane's gRPC server, its CA, and the watched config
//! directory. The `meshd` binary and the in-process `bookinfo` launcher both run this.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use super::server::{ControlPlane, Tokens};
use crate::config::{self, ConfigError, MeshConfig};
use crate::identity::{CaError, CertificateAuthority};

/// How often the config directory is checked for changes.
pub const CONFIG_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Where the CA's root comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// Load from this directory, or generate there on first start.
    Dir(PathBuf),
    /// A root the user supplies.
    Files { cert: PathBuf, key: PathBuf },
    /// A fresh root in memory (lost on exit).
    Ephemeral,
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
    pub trust_domain: String,
    /// Lifetime of workload certificates.
    pub cert_ttl: Duration,
    /// Where the dashboard listens (`None`: no dashboard).
    pub dashboard: Option<SocketAddr>,
}

/// meshd cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MeshdError {
    #[error("certificate authority: {0}")]
    Ca(#[from] CaError),
    #[error("mesh config: {0}")]
    Config(#[from] ConfigError),
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
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningMeshd {
    /// The URL data planes use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
        CaSource::Dir(dir) => {
            CertificateAuthority::load_or_create(dir, &config.trust_domain, config.cert_ttl)?
        }
        CaSource::Files { cert, key } => {
            CertificateAuthority::from_files(cert, key, config.cert_ttl)?
        }
        CaSource::Ephemeral => {
            CertificateAuthority::generate(&config.trust_domain, config.cert_ttl)?
        }
    };
    let plane = ControlPlane::new(ca, config.tokens.clone(), &config.trust_domain);
    let mut tasks = Vec::new();
    let (stop, stopped) = watch::channel(false);
    let watched = load(&config.base, &config.config_dirs)?;
    plane.set_config(watched.config().clone());
    if !config.config_dirs.is_empty() {
        tasks.push(spawn_config_watch(watched, plane.clone(), stopped.clone()));
    }
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
    let mut stopped_grpc = stopped;
    tasks.push(tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            // A data plane that vanished without closing its stream is noticed within ~15 s
            // and deregistered.
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
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
            let dashboard = super::dashboard::Dashboard::new(plane.clone());
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
    tracing::info!("meshd listening on {addr}");
    Ok(RunningMeshd {
        addr,
        dashboard,
        plane,
        stop,
        tasks,
    })
}

/// `base` with every directory merged over it, in order. A bad file is logged and left out
/// (meshd serves the rest); only a directory that cannot be listed stops the start, as that
/// is almost always a mistyped path.
fn load(base: &MeshConfig, dirs: &[PathBuf]) -> Result<config::Watched, ConfigError> {
    let (watched, first) = config::Watched::open(base.clone(), dirs.to_vec())?;
    log_reload(&first);
    Ok(watched)
}

/// Reloads what changed in the directories every [`CONFIG_POLL_INTERVAL`]; a bad file is
/// logged with file, line and reason and rejected alone (its last good version stays), and
/// every other change applies.
fn spawn_config_watch(
    mut watched: config::Watched,
    plane: ControlPlane,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(CONFIG_POLL_INTERVAL) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            // Listing and parsing touch the disk; off the runtime's worker threads.
            let (back, reload) = match tokio::task::spawn_blocking(move || {
                let reload = watched.reload();
                (watched, reload)
            })
            .await
            {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!("mesh config watch stopped: {e}");
                    return;
                }
            };
            watched = back;
            log_reload(&reload);
            if reload.changed {
                let config = watched.config();
                tracing::info!(
                    "mesh config reloaded: {} VirtualService, {} DestinationRule, {} Gateway, {} PeerAuthentication, {} AuthorizationPolicy",
                    config.virtual_services.len(),
                    config.destination_rules.len(),
                    config.gateways.len(),
                    config.peer_authentications.len(),
                    config.authorization_policies.len()
                );
                plane.set_config(config.clone());
            }
        }
    })
}

fn log_reload(reload: &config::Reload) {
    for e in &reload.errors {
        tracing::error!("rejected mesh config: {e}; the rest of the config applies");
    }
    for w in &reload.warnings {
        tracing::warn!("{w}");
    }
}
