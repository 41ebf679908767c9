use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use meshd::daemon::CaSource;

/// Runs the whole Bookinfo app on this machine: productpage, details, reviews v1/v2/v3 and
/// ratings, each on its own port. Refreshing the page cycles through reviews v1 (no stars),
/// v2 (black stars) and v3 (red stars). Ctrl-C stops everything gracefully.
// No bare `about`: it would show the crate's Cargo description instead of this text.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Address every workload binds (use 0.0.0.0 to reach the page from other machines).
    #[arg(long, env = "BOOKINFO_BIND", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// productpage port (0 picks a free port).
    #[arg(long, env = "BOOKINFO_PRODUCTPAGE_PORT", default_value_t = bookinfo::DEFAULT_PRODUCTPAGE_PORT)]
    productpage_port: u16,
    /// details port.
    #[arg(long, default_value_t = bookinfo::DEFAULT_DETAILS_PORT)]
    details_port: u16,
    /// reviews v1 port.
    #[arg(long, default_value_t = bookinfo::DEFAULT_REVIEWS_V1_PORT)]
    reviews_v1_port: u16,
    /// reviews v2 port.
    #[arg(long, default_value_t = bookinfo::DEFAULT_REVIEWS_V2_PORT)]
    reviews_v2_port: u16,
    /// reviews v3 port.
    #[arg(long, default_value_t = bookinfo::DEFAULT_REVIEWS_V3_PORT)]
    reviews_v3_port: u16,
    /// ratings port.
    #[arg(long, default_value_t = bookinfo::DEFAULT_RATINGS_PORT)]
    ratings_port: u16,
    /// ratings variant: v1, v-faulty, v-delayed, v-unavailable or v-unhealthy. ratings' v2
    /// (MySQL) is not run here: start the ratings binary alone with SERVICE_VERSION=v2
    /// DB_TYPE=mysql MYSQL_DB_HOST=… (see README).
    #[arg(long, default_value = "v1", value_parser = parse_variant)]
    ratings_version: ratings::Variant,
    /// Run without the mesh: plain HTTP between the services, no meshd.
    #[arg(long)]
    no_mesh: bool,
    /// How the services meet the mesh: embedded (mesh-lib in each service) or sidecar (each
    /// service plain on loopback behind a sidecar, the code `mesh-proxy sidecar` runs).
    #[arg(
        long,
        value_enum,
        default_value = "embedded",
        conflicts_with = "no_mesh"
    )]
    mode: Mode,
    /// Directory of Istio-style YAML (VirtualService, DestinationRule, Gateway,
    /// PeerAuthentication, AuthorizationPolicy, LocalRateLimit), watched live.
    #[arg(long, env = "BOOKINFO_CONFIG_DIR", conflicts_with = "no_mesh")]
    config_dir: Option<PathBuf>,
    /// Keep the mesh's root CA in this directory (generated on first start); by default a
    /// fresh CA lives in memory.
    #[arg(long, conflicts_with = "no_mesh")]
    ca_dir: Option<PathBuf>,
    /// meshd's gRPC port.
    #[arg(long, default_value_t = mesh::control::DEFAULT_CONTROL_PORT)]
    meshd_port: u16,
    /// The ingress gateway's port (the page URL's).
    #[arg(long, env = "BOOKINFO_GATEWAY_PORT", default_value_t = mesh_proxy::gateway::DEFAULT_GATEWAY_PORT)]
    gateway_port: u16,
    /// Admin port: every workload's Istio metrics at /stats/prometheus.
    #[arg(long, default_value_t = bookinfo::DEFAULT_ADMIN_PORT)]
    admin_port: u16,
    /// Send every workload's spans to this OTLP endpoint (e.g. http://127.0.0.1:4317).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// OTLP protocol: grpc or http/protobuf.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "grpc")]
    otlp_protocol: String,
    /// meshd's dashboard port (live service graph).
    #[arg(long, default_value_t = bookinfo::DEFAULT_DASHBOARD_PORT)]
    dashboard_port: u16,
    /// Access log of every request the workloads serve, on stdout: on, off or a fraction.
    #[arg(long, default_value = "off")]
    access_log: String,
    /// Access log format: json or text.
    #[arg(long, default_value = "json")]
    access_log_format: String,
    /// Lifetime of workload certificates (renewed at half-life), e.g. 24h, 10m, 30s.
    #[arg(long, default_value = "24h", value_parser = mesh::cli::parse_duration)]
    cert_ttl: Duration,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Mode {
    Embedded,
    Sidecar,
}

fn parse_variant(s: &str) -> Result<ratings::Variant, String> {
    match ratings::Config::from_env(&[("SERVICE_VERSION", s)]) {
        Ok(c) => Ok(c.variant),
        // ratings' own reason (set DB_TYPE=mysql) would not help: the launcher has no database.
        Err(e) if e.name == "DB_TYPE" => Err(format!(
            "v2 reads MySQL, which the launcher does not run; start ratings alone with \
             SERVICE_VERSION=v2 DB_TYPE=mysql MYSQL_DB_HOST=… (see README), or pick one of {}",
            LAUNCHER_VARIANTS
        )),
        Err(e) => Err(e.reason),
    }
}

/// The ratings variants the launcher runs (all but v2, which needs a database).
const LAUNCHER_VARIANTS: &str = "v1, v-faulty, v-delayed, v-unavailable, v-unhealthy";

fn main() -> ExitCode {
    let cli = Cli::parse();
    mesh::logging::init();
    mesh::nofile::raise_at_start();
    let access_log =
        match mesh::telemetry::AccessLog::parse(&cli.access_log, &cli.access_log_format) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: --access-log: {e}");
                return ExitCode::from(mesh::run::EXIT_CONFIG);
            }
        };
    let config = bookinfo::Config {
        bind: cli.bind,
        productpage_port: cli.productpage_port,
        details_port: cli.details_port,
        reviews_ports: [
            cli.reviews_v1_port,
            cli.reviews_v2_port,
            cli.reviews_v3_port,
        ],
        ratings_port: cli.ratings_port,
        ratings_variant: cli.ratings_version,
        mesh: (!cli.no_mesh).then(|| bookinfo::MeshOptions {
            config_dir: cli.config_dir.clone(),
            ca: cli.ca_dir.map_or(CaSource::Ephemeral, CaSource::Dir),
            meshd_port: cli.meshd_port,
            cert_ttl: cli.cert_ttl,
            gateway_port: cli.gateway_port,
            admin_port: cli.admin_port,
            dashboard_port: cli.dashboard_port,
            otlp: cli
                .otlp_endpoint
                .clone()
                .map(|e| (e, cli.otlp_protocol.clone())),
            access_log,
            ..Default::default()
        }),
        mode: match cli.mode {
            Mode::Embedded => bookinfo::Mode::Embedded,
            Mode::Sidecar => bookinfo::Mode::Sidecar,
        },
        productpage_beside: None,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let running = match bookinfo::start(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let a = running.addrs;
        println!("Bookinfo is running:");
        if let Some(gateway) = a.gateway {
            println!("  gateway      http://{gateway}  (Istio ingress gateway: /productpage, /static, /login, /logout, /api/v1/products)");
        }
        println!("  productpage  http://{}", a.productpage);
        println!("  details      http://{}", a.details);
        println!("  reviews v1   http://{}", a.reviews[0]);
        println!("  reviews v2   http://{}", a.reviews[1]);
        println!("  reviews v3   http://{}", a.reviews[2]);
        println!("  ratings      http://{}", a.ratings);
        match running.meshd_url() {
            Some(url) => {
                println!("  meshd        {url}  (mTLS between the services; PERMISSIVE unless a PeerAuthentication says otherwise)");
                if matches!(cli.mode, Mode::Sidecar) {
                    println!("  mode         sidecar (each service plain on loopback; the addresses above are its sidecar's)");
                }
                if let Some(dir) = &cli.config_dir {
                    println!("  mesh config  {} (watched)", dir.display());
                }
            }
            None => println!("  mesh         off (plain HTTP between the services)"),
        }
        if let Some(url) = running.dashboard_url() {
            println!("  dashboard    {url}  (live service graph)");
        }
        if let Some(admin) = a.admin {
            println!("  metrics      http://{admin}/stats/prometheus");
        }
        println!("Open {}  (Ctrl-C to stop)", a.page_url());
        running.run_until(mesh::shutdown::signal()).await;
        println!("Bookinfo stopped.");
        ExitCode::SUCCESS
    })
}
