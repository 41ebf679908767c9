//! Per-request spreading over every address a backend name resolves to.
//!
//! Docker gives the three reviews containers one network alias, `reviews`, whose DNS answer
//! lists all three addresses. A pooled client that resolves once per connection would keep
//! sending every request to whichever container its open connection reached; resolving here,
//! per request (with a short cache), and choosing among the answers in turn spreads requests
//! the way an L7 mesh does. Names with a single address are left to the connector, which then
//! keeps its usual fallback between address families.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How long a DNS answer is reused.
pub const DEFAULT_DNS_TTL: Duration = Duration::from_secs(5);

type ResolveFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;
type Resolver = Arc<dyn Fn(String) -> ResolveFuture + Send + Sync>;

/// Cached DNS answers per `host:port`, handed out round robin.
#[derive(Clone)]
pub struct DnsSpread {
    resolve: Resolver,
    ttl: Duration,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
}

struct Answer {
    at: Instant,
    addrs: Vec<SocketAddr>,
    next: Arc<AtomicUsize>,
}

impl std::fmt::Debug for DnsSpread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsSpread")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Default for DnsSpread {
    fn default() -> Self {
        Self::with_resolver(DEFAULT_DNS_TTL, |authority| {
            Box::pin(async move { Ok(tokio::net::lookup_host(authority).await?.collect()) })
        })
    }
}

impl DnsSpread {
    /// A cache over `resolve` (for tests: a resolver that needs no DNS server).
    pub fn with_resolver(
        ttl: Duration,
        resolve: impl Fn(String) -> ResolveFuture + Send + Sync + 'static,
    ) -> Self {
        Self {
            resolve: Arc::new(resolve),
            ttl,
            answers: Arc::default(),
        }
    }

    /// The address for the next request to `authority`, when its name has several.
    pub async fn pick(&self, authority: &str) -> Option<SocketAddr> {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            return None;
        }
        if let Some(addr) = self.cached(authority) {
            return addr;
        }
        let addrs = match (self.resolve)(authority.to_owned()).await {
            Ok(addrs) => spreadable(addrs),
            Err(e) => {
                tracing::debug!("cannot resolve {authority}: {e}");
                return None;
            }
        };
        let next = {
            let mut answers = self
                .answers
                .lock()
                .expect("dns cache lock is never poisoned");
            let previous = answers.remove(authority).map(|a| a.next);
            let next = previous.unwrap_or_default();
            answers.insert(
                authority.to_owned(),
                Answer {
                    at: Instant::now(),
                    addrs: addrs.clone(),
                    next: next.clone(),
                },
            );
            next
        };
        choose(&addrs, &next)
    }

    /// `Some(choice)` for a fresh cached answer, `None` when it must be resolved.
    fn cached(&self, authority: &str) -> Option<Option<SocketAddr>> {
        let answers = self
            .answers
            .lock()
            .expect("dns cache lock is never poisoned");
        let answer = answers.get(authority)?;
        (answer.at.elapsed() < self.ttl).then(|| choose(&answer.addrs, &answer.next))
    }
}

/// The addresses worth spreading over: IPv4 where there is any (a service bound to 0.0.0.0
/// does not answer on `::1`), distinct, and only when there are at least two.
fn spreadable(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let v4: Vec<_> = addrs.iter().copied().filter(SocketAddr::is_ipv4).collect();
    let mut chosen = if v4.is_empty() { addrs } else { v4 };
    chosen.sort();
    chosen.dedup();
    if chosen.len() < 2 { Vec::new() } else { chosen }
}

fn choose(addrs: &[SocketAddr], next: &AtomicUsize) -> Option<SocketAddr> {
    if addrs.is_empty() {
        return None;
    }
    Some(addrs[next.fetch_add(1, Ordering::Relaxed) % addrs.len()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn fake(answers: Vec<&'static str>, lookups: Arc<AtomicU32>) -> DnsSpread {
        DnsSpread::with_resolver(DEFAULT_DNS_TTL, move |_authority| {
            lookups.fetch_add(1, Ordering::SeqCst);
            let addrs = answers.iter().map(|a| a.parse().unwrap()).collect();
            Box::pin(async move { Ok(addrs) })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn spreads_over_all_addresses_and_re_resolves_after_the_ttl() {
        let lookups = Arc::new(AtomicU32::new(0));
        let dns = fake(
            vec!["172.18.0.4:9080", "172.18.0.2:9080", "172.18.0.3:9080"],
            lookups.clone(),
        );
        let mut picks = Vec::new();
        for _ in 0..6 {
            picks.push(dns.pick("reviews:9080").await.unwrap().to_string());
        }
        assert_eq!(
            picks,
            [
                "172.18.0.2:9080",
                "172.18.0.3:9080",
                "172.18.0.4:9080",
                "172.18.0.2:9080",
                "172.18.0.3:9080",
                "172.18.0.4:9080"
            ]
        );
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        tokio::time::advance(DEFAULT_DNS_TTL).await;
        dns.pick("reviews:9080").await.unwrap();
        assert_eq!(lookups.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn single_addresses_and_ip_literals_are_left_to_the_connector() {
        let lookups = Arc::new(AtomicU32::new(0));
        let dns = fake(vec!["127.0.0.1:9080", "[::1]:9080"], lookups.clone());
        assert_eq!(dns.pick("localhost:9080").await, None);
        assert_eq!(dns.pick("127.0.0.1:9080").await, None);
        assert_eq!(dns.pick("[::1]:9080").await, None);
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn resolution_failures_fall_through() {
        let dns = DnsSpread::with_resolver(DEFAULT_DNS_TTL, |_| {
            Box::pin(async { Err(io::Error::other("no such host")) })
        });
        assert_eq!(dns.pick("nowhere:9080").await, None);
    }
}
