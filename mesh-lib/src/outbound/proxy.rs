//! `HTTP_PROXY` for a workload outside the mesh: behind a sidecar, an application sends every
//! call to the sidecar's outbound listener as an absolute-form request, and the sidecar does
//! the mesh's work. `NO_PROXY` names the hosts that are called directly, in the
//! form curl and Python's `requests` take: a comma-separated list of host names (a leading `.`
//! or `*.` matches sub-domains too; a bare name matches itself only, where curl also matches
//! its sub-domains), IP addresses, or `*` for every host. hyper-util's
//! `client::proxy::matcher` is not used for it: it agrees on the cases our tests cover, but
//! it reads `*.example.com` as a name that matches nothing, lets `*` cover host names only
//! (a call to an IP address still goes through the proxy), and lets a bare name such as
//! `localhost` match its sub-domains too, where ours matches that name alone.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::env::{VarError, Vars};

/// Where a sidecar's outbound listener is, as an application behind it reaches it.
pub const DEFAULT_SIDECAR_PROXY: &str = "http://127.0.0.1:15001";

/// An HTTP proxy every call goes through, but for `NO_PROXY`'s hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub addr: SocketAddr,
    no_proxy: Vec<String>,
}

impl Proxy {
    /// A proxy at `addr` for every host.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            no_proxy: Vec::new(),
        }
    }

    /// `HTTP_PROXY` (or `http_proxy`) and `NO_PROXY` (or `no_proxy`) from `vars`; `default`
    /// when neither proxy variable is set. `None`: no proxy.
    pub fn from_env(vars: &impl Vars, default: Option<&str>) -> Result<Option<Self>, VarError> {
        let (name, url) = match (vars.get("HTTP_PROXY"), vars.get("http_proxy")) {
            (Some(url), _) => ("HTTP_PROXY", url),
            (None, Some(url)) => ("http_proxy", url),
            (None, None) => match default {
                Some(url) => ("HTTP_PROXY", url.to_owned()),
                None => return Ok(None),
            },
        };
        if url.is_empty() {
            return Ok(None);
        }
        let addr = parse_proxy_url(&url).map_err(|reason| VarError::new(name, &url, reason))?;
        let no_proxy = vars
            .get("NO_PROXY")
            .or_else(|| vars.get("no_proxy"))
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        Ok(Some(Self { addr, no_proxy }))
    }

    /// Whether a call to `host` (no port) goes through the proxy.
    pub fn applies_to(&self, host: &str) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        !self.no_proxy.iter().any(|entry| {
            let entry = entry.trim_start_matches('*');
            entry == "*"
                || entry.is_empty()
                || host == entry.trim_start_matches('.')
                || (entry.starts_with('.') && host.ends_with(entry))
        })
    }
}

/// `http://host:port[/]` → the proxy's address (resolved once, at start).
fn parse_proxy_url(url: &str) -> Result<SocketAddr, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    if uri.scheme_str() != Some("http") {
        return Err("expected http://host:port (the sidecar's outbound listener)".to_owned());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("a proxy URL has no path".to_owned());
    }
    let authority = uri
        .authority()
        .ok_or_else(|| "expected http://host:port".to_owned())?;
    if authority.as_str().contains('@') {
        return Err("proxy credentials are not supported".to_owned());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars<'a>(pairs: &[(&'a str, &'a str)]) -> HashMap<&'a str, &'a str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn http_proxy_and_no_proxy() {
        let p = Proxy::from_env(
            &vars(&[
                ("HTTP_PROXY", "http://127.0.0.1:15001"),
                ("NO_PROXY", "localhost, .svc.cluster.local,10.0.0.7"),
            ]),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.addr, "127.0.0.1:15001".parse().unwrap());
        assert!(p.applies_to("details"));
        assert!(!p.applies_to("localhost"));
        assert!(!p.applies_to("ratings.default.svc.cluster.local"));
        assert!(p.applies_to("svc.cluster.local.evil"));
        assert!(!p.applies_to("10.0.0.7"));
        let all = Proxy::from_env(
            &vars(&[("http_proxy", "http://127.0.0.1:1/"), ("no_proxy", "*")]),
            None,
        )
        .unwrap()
        .unwrap();
        assert!(!all.applies_to("details"));
    }

    #[test]
    fn the_default_applies_only_when_unset() {
        let empty = vars(&[]);
        assert_eq!(Proxy::from_env(&empty, None).unwrap(), None);
        let p = Proxy::from_env(&empty, Some(DEFAULT_SIDECAR_PROXY))
            .unwrap()
            .unwrap();
        assert_eq!(p.addr.port(), 15001);
        assert_eq!(
            Proxy::from_env(&vars(&[("HTTP_PROXY", "")]), Some(DEFAULT_SIDECAR_PROXY)).unwrap(),
            None
        );
    }

    #[test]
    fn bad_proxy_urls_say_why() {
        for (url, why) in [
            ("https://127.0.0.1:15001", "expected http://"),
            ("http://127.0.0.1:15001/x", "no path"),
            ("http://u:p@127.0.0.1:15001", "credentials"),
            ("http://no-such-host.invalid:1", "cannot resolve"),
        ] {
            let err = Proxy::from_env(&vars(&[("HTTP_PROXY", url)]), None).unwrap_err();
            assert!(err.to_string().contains(why), "{url}: {err}");
            assert!(err.to_string().contains("HTTP_PROXY"), "{err}");
        }
    }
}
