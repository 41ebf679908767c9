//! meshd: the Bookinfo mesh's control plane (CA, workload registry, config distribution).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use meshd::daemon::{self, CaSource, MeshdConfig};
use meshd::registration::{self, Cidr, RegistrationPolicy};
use meshd::server::{PlaneOptions, Tokens};

/// meshd: the mesh control plane. Signs workload certificates (SPIFFE identities) for callers
/// that prove their service account with a bootstrap token (first certificate) or their
/// current certificate (renewals), keeps the registry of running workloads (each may register
/// only as its own service, at its own address), and streams endpoints and Istio-style
/// policies from watched directories to every data plane. Its API is TLS 1.3 only, with a
/// serving certificate from its own CA: give workloads the root (--publish-root) out of band.
// No bare `about`: it would show the crate's Cargo description instead of this text.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// gRPC address data planes connect to.
    #[arg(long, env = "MESHD_LISTEN", default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Directory holding the root CA (root-cert.pem, root-key.pem); generated there on first
    /// start.
    #[arg(long, env = "MESHD_CA_DIR", default_value = "meshd-ca", conflicts_with_all = ["ca_cert", "ca_key"])]
    ca_dir: PathBuf,
    /// A root CA certificate you supply (PEM); needs --ca-key.
    #[arg(long, env = "MESHD_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The key of --ca-cert (PEM).
    #[arg(long, env = "MESHD_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Bootstrap tokens: DIR/<namespace>.<service-account> files (or DIR/<namespace>/<sa>), one
    /// token each. Required, unless --token-review is given (or --init-ca, --health-check).
    #[arg(
        long,
        env = "MESHD_TOKEN_DIR",
        required_unless_present_any = ["health_check", "init_ca", "token_review"]
    )]
    token_dir: Option<PathBuf>,
    /// Where the mesh's resources come from: `dir` (the --config-dir directories) and/or
    /// `kubernetes` (the API server: VirtualService, DestinationRule, Gateway,
    /// PeerAuthentication, AuthorizationPolicy, LocalRateLimit objects, merged after the
    /// directories); repeat or separate with commas.
    #[arg(
        long = "config-source",
        env = "MESHD_CONFIG_SOURCE",
        value_delimiter = ',',
        default_value = "dir"
    )]
    config_sources: Vec<ConfigSourceKind>,
    /// Accept Kubernetes ServiceAccount tokens (projected, audience --token-audience) as
    /// bootstrap tokens, each checked with a TokenReview; the token directory becomes optional.
    #[arg(long, env = "MESHD_TOKEN_REVIEW")]
    token_review: bool,
    /// Also publish Ready pods from EndpointSlices (with their Pods' labels) beside the
    /// registry, and stop publishing addresses Kubernetes marks not ready.
    #[arg(long, env = "MESHD_KUBERNETES_ENDPOINTS")]
    kubernetes_endpoints: bool,
    /// The audience a ServiceAccount token must be for.
    #[arg(long, env = "MESHD_TOKEN_AUDIENCE", default_value = meshd::kubernetes::token_review::DEFAULT_AUDIENCE)]
    token_audience: String,
    /// Directory of Istio-style YAML (VirtualService, DestinationRule, Gateway,
    /// PeerAuthentication, AuthorizationPolicy, LocalRateLimit), watched; repeat to merge
    /// several in order.
    #[arg(long = "config-dir", env = "MESHD_CONFIG_DIR", value_delimiter = ',')]
    config_dirs: Vec<PathBuf>,
    /// SPIFFE trust domain.
    #[arg(long, env = "MESHD_TRUST_DOMAIN", default_value = mesh_proto::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Lifetime of workload certificates (e.g. 24h, 10m, 30s).
    #[arg(long, env = "MESHD_CERT_TTL", default_value = "24h", value_parser = mesh::cli::parse_duration)]
    cert_ttl: Duration,
    /// Where the dashboard (live service graph) listens; "off" for none.
    #[arg(long, env = "MESHD_DASHBOARD", default_value = "0.0.0.0:20001")]
    dashboard: String,
    /// The namespace meshd runs in; its serving certificate names meshd.<namespace>.svc.
    #[arg(long, env = "POD_NAMESPACE", default_value = daemon::DEFAULT_NAMESPACE)]
    namespace: String,
    /// More DNS names or IPs for meshd's serving certificate (besides meshd,
    /// meshd.<ns>.svc[.cluster.local], localhost, loopback and the --listen address).
    #[arg(long = "san", env = "MESHD_SAN", value_delimiter = ',')]
    sans: Vec<String>,
    /// Write the root certificate (PEM, public) here for workloads to mount as MESH_CA_FILE.
    #[arg(long, env = "MESHD_PUBLISH_ROOT")]
    publish_root: Option<PathBuf>,
    /// Extra service accounts → services a workload may register as (YAML list of
    /// {namespace, serviceAccount, services}); bookinfo-<service>, <service> and the ingress
    /// gateway's account need no entry.
    #[arg(long, env = "MESHD_REGISTRATION_MAP")]
    registration_map: Option<PathBuf>,
    /// Address blocks a workload may register although its connection comes from another
    /// address (NAT), e.g. 10.0.0.0/8; repeat or separate with commas.
    #[arg(
        long = "registration-allow",
        env = "MESHD_REGISTRATION_ALLOW",
        value_delimiter = ','
    )]
    registration_allow: Vec<Cidr>,
    /// Concurrent registrations one identity may hold.
    #[arg(long, env = "MESHD_MAX_REGISTRATIONS_PER_IDENTITY", default_value_t = registration::DEFAULT_MAX_PER_IDENTITY)]
    max_registrations_per_identity: usize,
    /// After start, how long snapshots are marked incomplete so data planes keep the
    /// endpoints they knew while workloads re-register (e.g. 10s; 0s to skip).
    #[arg(long, env = "MESHD_REGISTRATION_GRACE", default_value = "10s", value_parser = mesh::cli::parse_duration)]
    registration_grace: Duration,
    /// Connections with a client certificate (watches, renewals) meshd holds open at most;
    /// more are closed after their handshake. A quarter as many more (at least 64) may be
    /// handshaking or without a certificate, the oldest closed to make room for a newcomer.
    #[arg(long, env = "MESHD_MAX_CONNECTIONS", default_value_t = meshd::listener::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// How long a connection that presents no client certificate may stay open (enough to
    /// get a first certificate with a bootstrap token, e.g. 15s).
    #[arg(long, env = "MESHD_UNCERTIFIED_GRACE", default_value = "15s", value_parser = mesh::cli::parse_duration)]
    uncertified_grace: Duration,
    /// Generate the root CA in --ca-dir if it is not there, write --publish-root if given,
    /// print where they are, and exit (to create a Kubernetes Secret from them).
    #[arg(long, conflicts_with_all = ["ca_cert", "ca_key", "health_check"])]
    init_ca: bool,
    /// Instead of serving, check that a meshd already listens on --listen's port (for
    /// container health checks), and exit 0 if so.
    #[arg(long)]
    health_check: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ConfigSourceKind {
    Dir,
    Kubernetes,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.health_check {
        let addr = SocketAddr::from(([127, 0, 0, 1], cli.listen.port()));
        return match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("meshd: nothing answers on {addr}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    mesh::logging::init();
    mesh::nofile::raise_at_start();
    if cli.init_ca {
        return init_ca(&cli);
    }
    let tokens = match cli.token_dir.as_deref().map(Tokens::load_dir) {
        None => Tokens::default(),
        Some(Ok(t)) if t.is_empty() && !cli.token_review => {
            let token_dir = cli.token_dir.as_deref().unwrap_or(std::path::Path::new(""));
            eprintln!(
                "meshd: {} holds no tokens (expected <namespace>/<service-account> files)",
                token_dir.display()
            );
            return ExitCode::from(mesh::run::EXIT_CONFIG);
        }
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            eprintln!("meshd: {e}");
            return ExitCode::from(mesh::run::EXIT_CONFIG);
        }
    };
    let from_kubernetes = cli.config_sources.contains(&ConfigSourceKind::Kubernetes);
    if !cli.config_sources.contains(&ConfigSourceKind::Dir) && !cli.config_dirs.is_empty() {
        eprintln!("meshd: --config-dir is given but --config-source does not include dir");
        return ExitCode::from(mesh::run::EXIT_CONFIG);
    }
    let ca = match (cli.ca_cert, cli.ca_key) {
        (Some(cert), Some(key)) => CaSource::Files { cert, key },
        _ => CaSource::Dir(cli.ca_dir),
    };
    let extra = match &cli.registration_map {
        Some(path) => match registration::load_map(path) {
            Ok(map) => map,
            Err(e) => {
                eprintln!("meshd: {e}");
                return ExitCode::from(mesh::run::EXIT_CONFIG);
            }
        },
        None => Default::default(),
    };
    if cli.max_registrations_per_identity == 0 || cli.max_connections == 0 {
        eprintln!(
            "meshd: --max-registrations-per-identity and --max-connections must be at least 1"
        );
        return ExitCode::from(mesh::run::EXIT_CONFIG);
    }
    if cli.uncertified_grace < Duration::from_secs(1) {
        eprintln!(
            "meshd: --uncertified-grace must be at least 1s (a first certificate needs one RPC)"
        );
        return ExitCode::from(mesh::run::EXIT_CONFIG);
    }
    let wants_kubernetes = from_kubernetes || cli.token_review || cli.kubernetes_endpoints;
    let config = MeshdConfig {
        kubernetes: None,
        listen: cli.listen,
        ca,
        tokens,
        base: Default::default(),
        config_dirs: cli.config_dirs,
        config_watch: Default::default(),
        trust_domain: cli.trust_domain,
        cert_ttl: cli.cert_ttl,
        namespace: cli.namespace,
        serving_names: cli.sans,
        plane: PlaneOptions {
            registration: RegistrationPolicy {
                extra,
                allowed_nets: cli.registration_allow,
                max_per_identity: cli.max_registrations_per_identity,
                ..Default::default()
            },
            registration_grace: cli.registration_grace,
        },
        listener: meshd::listener::ListenerLimits {
            max_connections: cli.max_connections,
            uncertified_grace: cli.uncertified_grace,
        },
        publish_root: cli.publish_root,
        dashboard: match cli.dashboard.as_str() {
            "off" => None,
            addr => match addr.parse() {
                Ok(a) => Some(a),
                Err(e) => {
                    eprintln!("meshd: --dashboard {addr:?}: {e}");
                    return ExitCode::from(mesh::run::EXIT_CONFIG);
                }
            },
        },
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let mut config = config;
        if wants_kubernetes {
            let client = match meshd::kubernetes::client_from_env().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!(
                        "meshd: --config-source kubernetes / --token-review need the API server: {e}"
                    );
                    return ExitCode::from(mesh::run::EXIT_CONFIG);
                }
            };
            config.kubernetes = Some(daemon::KubernetesOptions {
                client,
                config: from_kubernetes,
                endpoints: cli.kubernetes_endpoints,
                token_audience: cli.token_review.then(|| cli.token_audience.clone()),
            });
        }
        let running = match daemon::start(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("meshd: {e}");
                return ExitCode::from(mesh::run::EXIT_CONFIG);
            }
        };
        mesh::shutdown::signal().await;
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// `--init-ca`: the root in --ca-dir (generated once, never overwritten), and its public copy.
fn init_ca(cli: &Cli) -> ExitCode {
    let ca = match meshd::ca::CertificateAuthority::load_or_create(
        &cli.ca_dir,
        &cli.trust_domain,
        cli.cert_ttl,
    ) {
        Ok(ca) => ca,
        Err(e) => {
            eprintln!("meshd: {e}");
            return ExitCode::from(mesh::run::EXIT_CONFIG);
        }
    };
    if let Some(path) = &cli.publish_root
        && let Err(e) = std::fs::write(path, ca.root_pem())
    {
        eprintln!("meshd: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    let dir = cli.ca_dir.display();
    println!(
        "root CA: {dir}/{} (public) and {dir}/{} (secret)",
        meshd::ca::ROOT_CERT_FILE,
        meshd::ca::ROOT_KEY_FILE
    );
    ExitCode::SUCCESS
}
