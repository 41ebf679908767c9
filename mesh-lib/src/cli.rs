//! The command line every service binary shares: where to listen.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

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
}

impl ServeArgs {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }
}
