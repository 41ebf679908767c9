//! mesh-proxy: the mesh's proxies built from mesh-lib's layers: the ingress gateway and the
//! sidecar.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh::Server;
use mesh::env::{ProcessEnv, Vars};
use mesh::workload::{Readiness, WorkloadEnv};
use mesh_proxy::{gateway, sidecar};

/// mesh-proxy: proxies for the Bookinfo mesh, built from the same tower layers as the
/// embedded data plane. Worker threads: one per core by default, TOKIO_WORKER_THREADS=N sets
/// them; each serves the connections it accepts, and the requests on them, alone.
// No bare `about`: it would show the library's Cargo description instead of this text.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// The ingress gateway: applies Istio Gateway + VirtualService resources bound to it and
    /// forwards over mTLS. Joins the mesh from MESH_CONTROL_PLANE, MESH_CA_FILE and
    /// MESH_TOKEN_FILE (or MESH_TOKEN); its identity is
    /// istio-system/istio-ingressgateway-service-account.
    Gateway {
        /// Port to listen on. Gateway servers on this port apply.
        #[arg(long, default_value_t = gateway::DEFAULT_GATEWAY_PORT)]
        port: u16,
        /// A port of the Service in front of the gateway, PORT:TARGET (repeat, or separate
        /// with commas): Gateway servers on PORT apply too when TARGET is --port. The default
        /// is Istio's ingress Service, so a Gateway on 80 or 8080 works on the default port.
        #[arg(
            long = "service-port",
            value_name = "PORT:TARGET",
            value_delimiter = ',',
            default_values_t = gateway::DEFAULT_SERVICE_PORTS
        )]
        service_ports: Vec<gateway::ServicePort>,
        /// Obey the x-envoy-* request headers clients send (x-envoy-upstream-rq-timeout-ms
        /// overrides a route's timeout), for a gateway behind a trusted proxy; by default they
        /// are removed, as an Envoy edge listener does for external requests.
        #[arg(long, env = "MESH_TRUST_ENVOY_HEADERS")]
        trust_envoy_headers: bool,
        /// Address to bind.
        #[arg(long, default_value_t = mesh::cli::DEFAULT_BIND)]
        bind: IpAddr,
        /// Instead of serving, check that a gateway answers on --port (for health checks).
        #[arg(long)]
        health_check: bool,
    },
    /// The sidecar: the mesh for an application beside it that does not link mesh-lib. Mesh
    /// traffic arrives on --inbound-port (mTLS, policies, telemetry) and goes on in plaintext
    /// to the application on 127.0.0.1:--app-port; the application calls its backends through
    /// the HTTP proxy on 127.0.0.1:--outbound-port (HTTP_PROXY=http://127.0.0.1:15001), which
    /// routes, retries, balances and connects with mTLS. It joins meshd as the application's
    /// workload from the same environment an embedded service reads (MESH_CONTROL_PLANE,
    /// MESH_CA_FILE, MESH_TOKEN_FILE, SERVICE_VERSION, MESH_NAMESPACE, MESH_SERVICE_ACCOUNT,
    /// MESH_ADMIN_PORT, OTEL_*).
    Sidecar {
        /// The application's service name (details, reviews, …): its registration and, by
        /// default, its service account bookinfo-<service>.
        #[arg(long, env = "MESH_SERVICE")]
        service: String,
        /// The application's plaintext port on 127.0.0.1.
        #[arg(long, env = "MESH_APP_PORT", default_value_t = sidecar::DEFAULT_APP_PORT)]
        app_port: u16,
        /// What readiness asks of the application (200 expected).
        #[arg(long, default_value = sidecar::DEFAULT_APP_HEALTH_PATH)]
        app_health_path: String,
        /// Port for the mesh's traffic to the application (mTLS).
        #[arg(long, env = "MESH_INBOUND_PORT", default_value_t = sidecar::DEFAULT_INBOUND_PORT)]
        inbound_port: u16,
        /// Address the inbound port binds.
        #[arg(long, default_value_t = mesh::cli::DEFAULT_BIND)]
        bind: IpAddr,
        /// The application's HTTP proxy port, on 127.0.0.1 only.
        #[arg(long, env = "MESH_OUTBOUND_PORT", default_value_t = sidecar::DEFAULT_OUTBOUND_PORT)]
        outbound_port: u16,
        /// Instead of serving, check that the sidecar running beside this one is ready
        /// (certificate, config and the application's health), for health checks.
        #[arg(long)]
        health_check: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().mode {
        Mode::Gateway {
            port,
            service_ports,
            trust_envoy_headers,
            bind,
            health_check,
        } => {
            if health_check {
                return answers(SocketAddr::from(([127, 0, 0, 1], port)));
            }
            let env = match join_env(&GatewayDefaults(&ProcessEnv), gateway::GATEWAY_SERVICE) {
                Ok(env) => env,
                Err(code) => return code,
            };
            let options = gateway::Options {
                port,
                service_ports,
                trust_envoy_headers,
            };
            run(gateway_main(env, SocketAddr::new(bind, port), options))
        }
        Mode::Sidecar {
            service,
            app_port,
            app_health_path,
            inbound_port,
            bind,
            outbound_port,
            health_check,
        } => {
            let env = match join_env(&ProcessEnv, &service) {
                Ok(env) => env,
                Err(code) => return code,
            };
            if health_check {
                return ready(env.admin_port);
            }
            let app = sidecar::App {
                health_path: app_health_path,
                ..sidecar::App::on_loopback(app_port)
            };
            let inbound = SocketAddr::new(bind, inbound_port);
            let outbound = SocketAddr::from(([127, 0, 0, 1], outbound_port));
            run(sidecar_main(env, app, inbound, outbound))
        }
    }
}

/// The mesh environment a proxy joins from; it cannot run without one.
fn join_env(vars: &impl Vars, service: &str) -> Result<WorkloadEnv, ExitCode> {
    match WorkloadEnv::from_env(vars, service) {
        Ok(Some(env)) => Ok(env),
        Ok(None) => {
            eprintln!(
                "mesh-proxy: MESH_CONTROL_PLANE must name meshd (e.g. https://meshd:15012); \
                 a proxy only runs in the mesh"
            );
            Err(ExitCode::from(mesh::run::EXIT_CONFIG))
        }
        Err(e) => {
            eprintln!("mesh-proxy: invalid configuration: {e}");
            Err(ExitCode::from(mesh::run::EXIT_CONFIG))
        }
    }
}

fn run(main: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    mesh::logging::init();
    mesh::nofile::raise_at_start();
    // This thread's runtime runs the control loops, the admin port and the first worker; the
    // listeners are served by `workload::serve_on_workers`, one single-threaded runtime per
    // worker thread, so a request and the connections it uses stay on one thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(main),
        Err(e) => {
            eprintln!("mesh-proxy: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bind(name: &str, addr: SocketAddr) -> Result<Server, ExitCode> {
    Server::bind(name, addr).await.map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// Joins the mesh as `env`'s workload, serving at `serving`.
fn start(env: WorkloadEnv, serving: SocketAddr) -> Result<mesh::Mesh, ExitCode> {
    env.builder(&ProcessEnv)
        .map_err(|e| e.to_string())
        .and_then(|b| b.start(serving).map_err(|e| e.to_string()))
        .map_err(|e| {
            eprintln!("mesh-proxy: invalid configuration: {e}");
            ExitCode::from(mesh::run::EXIT_CONFIG)
        })
}

async fn gateway_main(
    mut env: WorkloadEnv,
    addr: SocketAddr,
    options: gateway::Options,
) -> ExitCode {
    let name = gateway::GATEWAY_SERVICE;
    let admin_addr = SocketAddr::new(addr.ip(), env.admin_port);
    let (server, admin) = match (
        bind(name, addr).await,
        bind(&format!("{name} admin"), admin_addr).await,
    ) {
        (Ok(s), Ok(a)) => (s, a),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    env.spec.labels = gateway::labels();
    let mesh = match start(env, server.local_addr()) {
        Ok(m) => m,
        Err(code) => return code,
    };
    tracing::info!(
        "ingress gateway listening on {} as {}",
        server.local_addr(),
        mesh.identity()
    );
    // The way in from outside: plain HTTP, its mesh work is in the router (routes, then the
    // outbound stack).
    let routing = mesh.clone();
    tokio::spawn(gateway::warn_unmatched(mesh.clone(), options.clone()));
    mesh::workload::serve_on_workers(
        mesh,
        vec![server],
        move || vec![gateway::router(routing.clone(), &options)],
        Some((admin, Readiness::Mesh)),
        mesh::shutdown::signal(),
        mesh::workload::worker_count(),
    )
    .await;
    ExitCode::SUCCESS
}

async fn sidecar_main(
    env: WorkloadEnv,
    app: sidecar::App,
    inbound: SocketAddr,
    outbound: SocketAddr,
) -> ExitCode {
    let name = env.spec.service.clone();
    let admin_addr = SocketAddr::new(inbound.ip(), env.admin_port);
    let (inbound, outbound, admin) = match (
        bind(&format!("{name} sidecar inbound"), inbound).await,
        bind(&format!("{name} sidecar outbound"), outbound).await,
        bind(&format!("{name} sidecar admin"), admin_addr).await,
    ) {
        (Ok(i), Ok(o), Ok(a)) => (i, o, a),
        (Err(code), _, _) | (_, Err(code), _) | (_, _, Err(code)) => return code,
    };
    let mesh = match start(env, inbound.local_addr()) {
        Ok(m) => m,
        Err(code) => return code,
    };
    tracing::info!(
        "sidecar for {name} as {}: mesh → {} → app http://{}; app → proxy http://{} → mesh; \
         readiness on http://{}/healthz/ready",
        mesh.identity(),
        inbound.local_addr(),
        app.addr,
        outbound.local_addr(),
        admin.local_addr()
    );
    let _health = sidecar::follow_app_health(&mesh, &app);
    let (routing, readiness, own) = (mesh.clone(), app.readiness(), outbound.local_addr());
    mesh::workload::serve_on_workers(
        mesh.clone(),
        sidecar::servers(&mesh, inbound, outbound),
        move || sidecar::routers(&routing, &app, own),
        Some((admin, readiness)),
        mesh::shutdown::signal(),
        mesh::workload::worker_count(),
    )
    .await;
    ExitCode::SUCCESS
}

/// 0 when something accepts connections on `addr`.
fn answers(addr: SocketAddr) -> ExitCode {
    match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-proxy: nothing answers on {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// 0 when the admin port on loopback says ready.
fn ready(admin_port: u16) -> ExitCode {
    mesh::run::probe(
        "mesh-proxy",
        &format!("http://127.0.0.1:{admin_port}/healthz/ready"),
    )
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
