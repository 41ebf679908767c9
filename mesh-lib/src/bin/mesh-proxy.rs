//! mesh-proxy: the mesh's proxies built from mesh-lib's layers. Today: the ingress gateway.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh::env::{ProcessEnv, Vars};
use mesh::gateway;
use mesh::{Mesh, Server};

/// mesh-proxy: proxies for the Bookinfo mesh, built from the same tower layers as the
/// embedded data plane.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// The ingress gateway: applies Istio Gateway + VirtualService resources bound to it and
    /// forwards over mTLS. Joins the mesh from MESH_CONTROL_PLANE and MESH_TOKEN_FILE (or
    /// MESH_TOKEN); its identity is istio-system/istio-ingressgateway-service-account.
    Gateway {
        /// Port to listen on.
        #[arg(long, default_value_t = gateway::DEFAULT_GATEWAY_PORT)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
        bind: IpAddr,
        /// Instead of serving, check that a gateway answers on --port (for health checks).
        #[arg(long)]
        health_check: bool,
    },
}

fn main() -> ExitCode {
    let Mode::Gateway {
        port,
        bind,
        health_check,
    } = Cli::parse().mode;
    if health_check {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        return match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
        {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mesh-proxy: nothing answers on {addr}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let env = ProcessEnv;
    let mesh_env =
        match mesh::run::MeshEnv::from_env(&GatewayDefaults(&env), gateway::GATEWAY_SERVICE) {
            Ok(Some(m)) => m,
            Ok(None) => {
                eprintln!(
                    "mesh-proxy: MESH_CONTROL_PLANE must name meshd (e.g. https://meshd:15012)"
                );
                return ExitCode::from(mesh::run::EXIT_CONFIG);
            }
            Err(e) => {
                eprintln!("mesh-proxy: invalid configuration: {e}");
                return ExitCode::from(mesh::run::EXIT_CONFIG);
            }
        };
    mesh::logging::init();
    mesh::nofile::raise_at_start();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match Server::bind("istio-ingressgateway", SocketAddr::new(bind, port)).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let admin = match Server::bind(
            "istio-ingressgateway admin",
            SocketAddr::new(bind, mesh_env.admin_port),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut spec = mesh_env.spec;
        spec.labels = gateway::labels();
        let mut telemetry = mesh::dataplane::Telemetry {
            access_log: mesh_env.access_log,
            ..Default::default()
        };
        telemetry.tracing = match mesh::telemetry::tracing::Tracing::from_env(
            &ProcessEnv,
            gateway::GATEWAY_SERVICE,
            &telemetry.metrics,
            &telemetry.recent_spans,
        ) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("mesh-proxy: invalid configuration: {e}");
                return ExitCode::from(mesh::run::EXIT_CONFIG);
            }
        };
        let admin_router = mesh::telemetry::admin_router(&telemetry);
        let tracing = telemetry.tracing.clone();
        let mesh =
            match Mesh::start_with(spec, &mesh_env.trust_domain, server.local_addr(), telemetry) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("mesh-proxy: {e}");
                    return ExitCode::from(mesh::run::EXIT_CONFIG);
                }
            };
        tracing::info!(
            "ingress gateway listening on {} as {}",
            server.local_addr(),
            mesh.identity()
        );
        tokio::spawn(admin.serve(admin_router, mesh::shutdown::signal()));
        server
            .serve(gateway::router(mesh, port), mesh::shutdown::signal())
            .await;
        mesh::telemetry::tracing::flush_at_exit(tracing.as_ref()).await;
        ExitCode::SUCCESS
    })
}

/// The gateway's identity unless the environment says otherwise.
struct GatewayDefaults<'a>(&'a ProcessEnv);

impl Vars for GatewayDefaults<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).or_else(|| match name {
            "MESH_NAMESPACE" => Some(gateway::GATEWAY_NAMESPACE.to_owned()),
            "MESH_SERVICE_ACCOUNT" => Some(gateway::GATEWAY_SERVICE_ACCOUNT.to_owned()),
            _ => None,
        })
    }
}
