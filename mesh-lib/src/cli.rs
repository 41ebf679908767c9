//! The command line every service binary shares: where to listen.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The port every Bookinfo service listens on, as upstream.
pub const DEFAULT_PORT: u16 = 9080;

/// Where a service listens. Upstream details and ratings take the port as their first
/// argument; that form still works (`details 9080`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TCP port to listen on.
    #[arg(value_name = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Address to bind (all IPv4 interfaces by default; `::` for dual stack).
    #[arg(long, value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind: IpAddr,

    /// Instead of serving, check that the service already running on PORT answers
    /// `GET /health` with 200, and exit 0 if so, 1 if not (a container health check that
    /// needs no shell or curl in the image).
    #[arg(long)]
    pub health_check: bool,
}

impl ServeArgs {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }

    /// Where `--health-check` finds the service: loopback when it binds every interface.
    pub fn probe_addr(&self) -> SocketAddr {
        let ip = match self.bind {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.port)
    }
}
