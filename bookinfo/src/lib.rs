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

use axum::Router;
use mesh::{BindError, Client, Endpoints, Server};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Default ports: productpage keeps upstream's 9080, the backends take the next ones.
pub const DEFAULT_PRODUCTPAGE_PORT: u16 = 9080;
pub const DEFAULT_DETAILS_PORT: u16 = 9081;
pub const DEFAULT_REVIEWS_V1_PORT: u16 = 9082;
pub const DEFAULT_REVIEWS_V2_PORT: u16 = 9083;
pub const DEFAULT_REVIEWS_V3_PORT: u16 = 9084;
pub const DEFAULT_RATINGS_PORT: u16 = 9085;

/// Where each workload listens (port 0 picks a free port) and how ratings behaves.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    pub productpage_port: u16,
    pub details_port: u16,
    pub reviews_ports: [u16; 3],
    pub ratings_port: u16,
    pub ratings_variant: ratings::Variant,
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
            ..Self::default()
        }
    }
}

/// The addresses the running workloads listen on.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub productpage: SocketAddr,
    pub details: SocketAddr,
    pub reviews: [SocketAddr; 3],
    pub ratings: SocketAddr,
}

impl Addrs {
    /// The page users open.
    pub fn page_url(&self) -> String {
        format!("http://{}/productpage", self.productpage)
    }
}

/// The running app.
#[derive(Debug)]
pub struct Running {
    pub addrs: Addrs,
    stop: watch::Sender<bool>,
    servers: JoinSet<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and returns when every server has.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.servers.join_next().await.is_some() {}
    }

    /// Resolves when `signal` does, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }
}

/// Binds every port first, so a taken port fails the start before anything serves.
pub async fn start(config: Config) -> Result<Running, BindError> {
    let at = |port| SocketAddr::new(config.bind, port);
    let details = Server::bind("details", at(config.details_port)).await?;
    let ratings = Server::bind("ratings", at(config.ratings_port)).await?;
    let mut reviews = Vec::with_capacity(3);
    for (i, port) in config.reviews_ports.into_iter().enumerate() {
        reviews.push(Server::bind(format!("reviews-v{}", i + 1), at(port)).await?);
    }
    let productpage = Server::bind("productpage", at(config.productpage_port)).await?;

    let addrs = Addrs {
        productpage: productpage.local_addr(),
        details: details.local_addr(),
        reviews: [
            reviews[0].local_addr(),
            reviews[1].local_addr(),
            reviews[2].local_addr(),
        ],
        ratings: ratings.local_addr(),
    };
    let client = Client::builder()
        .endpoints(Arc::new(endpoints(&addrs)))
        .build();

    let mut apps: Vec<(Server, Router)> = Vec::new();
    apps.push((details, details::app(details::Config::default())));
    apps.push((
        ratings,
        ratings::app(ratings::State::new(ratings::Config {
            variant: config.ratings_variant,
        })),
    ));
    for (server, version) in reviews.into_iter().zip(["v1", "v2", "v3"]) {
        let config = reviews::Config::version(version, "http://ratings:9080");
        let state = reviews::State {
            config,
            client: client.clone(),
        };
        apps.push((server, reviews::app(state)));
    }
    let state = productpage::State::new(productpage::Config::default(), client);
    apps.push((productpage, productpage::app(state)));

    let (stop, stopped) = watch::channel(false);
    let mut servers = JoinSet::new();
    for (server, app) in apps {
        let mut stopped = stopped.clone();
        servers.spawn(async move {
            let name = server.name().to_owned();
            server
                .serve(app, async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await;
            tracing::debug!("{name} stopped");
        });
    }
    Ok(Running {
        addrs,
        stop,
        servers,
    })
}

/// The logical names the services call, and where they are in this process.
fn endpoints(addrs: &Addrs) -> Endpoints {
    let mut table = Endpoints::new();
    table.insert("details:9080", vec![addrs.details]);
    table.insert("reviews:9080", addrs.reviews.to_vec());
    table.insert("ratings:9080", vec![addrs.ratings]);
    table
}
