//! The command line every service binary shares: where to listen.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The port every Bookinfo service listens on, as upstream.
pub const DEFAULT_PORT: u16 = 9080;

/// Every interface, IPv6 and IPv4 alike (see [`crate::Server::bind`]).
pub const DEFAULT_BIND: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// Where a service listens. Upstream details and ratings take the port as their first
/// argument; that form still works (`details 9080`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TCP port to listen on.
    #[arg(value_name = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Address to bind. The default `::` is dual-stack (every IPv6 and IPv4 interface, as
    /// upstream's `[::]:9080`), falling back to 0.0.0.0 where IPv6 is off.
    #[arg(long, value_name = "IP", default_value_t = DEFAULT_BIND)]
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

    /// The loopback address to bind instead of every interface: IPv4's (where a sidecar
    /// reaches its application, and which exists where IPv6 is off), `::1` for an IPv6 address.
    pub fn bind_loopback(&self) -> IpAddr {
        match self.bind {
            IpAddr::V6(ip) if !ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// Where `--health-check` finds the service: IPv4 loopback when it binds every interface
    /// (a dual-stack listener takes it, and so does the IPv4 fallback).
    pub fn probe_addr(&self) -> SocketAddr {
        let ip = if self.bind.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.bind
        };
        SocketAddr::new(ip, self.port)
    }
}

/// A duration as written on command lines and in env vars: `500ms`, `30s`, `5m`, `24h`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{text:?} has no unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("{text:?} has unit {unit:?}; use ms, s, m or h")),
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(
            parse_duration("10d")
                .unwrap_err()
                .contains("use ms, s, m or h")
        );
    }
}
