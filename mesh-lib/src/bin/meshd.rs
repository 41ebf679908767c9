//! meshd: the Bookinfo mesh's control plane (CA, workload registry, config distribution).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mesh::control::daemon::{self, CaSource, MeshdConfig};
use mesh::control::server::Tokens;

/// meshd: the mesh control plane. Signs workload certificates (SPIFFE identities) for callers
/// that prove their service account with a bootstrap token, keeps the registry of running
/// workloads, and streams endpoints and Istio-style policies from a watched directory to every
/// data plane.
#[derive(Parser)]
#[command(version, about)]
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
    /// Bootstrap tokens: DIR/<namespace>.<service-account> files (or DIR/<namespace>/<sa>), one token each.
    #[arg(
        long,
        env = "MESHD_TOKEN_DIR",
        required_unless_present = "health_check"
    )]
    token_dir: Option<PathBuf>,
    /// Directory of Istio-style YAML (VirtualService, DestinationRule, Gateway,
    /// PeerAuthentication, AuthorizationPolicy), watched; repeat to merge several in order.
    #[arg(long = "config-dir", env = "MESHD_CONFIG_DIR", value_delimiter = ',')]
    config_dirs: Vec<PathBuf>,
    /// SPIFFE trust domain.
    #[arg(long, env = "MESHD_TRUST_DOMAIN", default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Lifetime of workload certificates (e.g. 24h, 10m, 30s).
    #[arg(long, env = "MESHD_CERT_TTL", default_value = "24h", value_parser = mesh::cli::parse_duration)]
    cert_ttl: Duration,
    /// Where the dashboard (live service graph) listens; "off" for none.
    #[arg(long, env = "MESHD_DASHBOARD", default_value = "0.0.0.0:20001")]
    dashboard: String,
    /// Instead of serving, check that a meshd already listens on --listen's port (for
    /// container health checks), and exit 0 if so.
    #[arg(long)]
    health_check: bool,
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
    let token_dir = cli
        .token_dir
        .expect("clap requires --token-dir when serving");
    let tokens = match Tokens::load_dir(&token_dir) {
        Ok(t) if t.is_empty() => {
            eprintln!(
                "meshd: {} holds no tokens (expected <namespace>/<service-account> files)",
                token_dir.display()
            );
            return ExitCode::from(mesh::run::EXIT_CONFIG);
        }
        Ok(t) => t,
        Err(e) => {
            eprintln!("meshd: {e}");
            return ExitCode::from(mesh::run::EXIT_CONFIG);
        }
    };
    let ca = match (cli.ca_cert, cli.ca_key) {
        (Some(cert), Some(key)) => CaSource::Files { cert, key },
        _ => CaSource::Dir(cli.ca_dir),
    };
    let config = MeshdConfig {
        listen: cli.listen,
        ca,
        tokens,
        base: Default::default(),
        config_dirs: cli.config_dirs,
        trust_domain: cli.trust_domain,
        cert_ttl: cli.cert_ttl,
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
