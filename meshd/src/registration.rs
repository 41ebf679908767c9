//! Which registrations meshd accepts: a workload may register only as a service its identity
//! is allowed, only at an address it can prove, and only so many times at once. A
//! registration puts an address into every data plane's routing table, so it is treated as
//! hostile input like any request.
//!
//! - **Services:** the Kubernetes conventions — service account `bookinfo-<service>` or
//!   `<service>` registers as `<service>` in its own namespace, the ingress gateway's account
//!   as `istio-ingressgateway` — plus an explicit mapping file for anything else.
//! - **Addresses:** the peer address of the registering connection (an unspecified host means
//!   exactly that), or an address in a configured allow-list for workloads behind NAT.
//! - **Limits:** concurrent registrations per identity, how often one identity may register
//!   (every registration pushes a snapshot to every data plane), and well-formed names and
//!   labels of a bounded size — so one identity's share of every snapshot is bounded too:
//!   at most `max_per_identity` endpoints of at most [`MAX_LABELS_BYTES`] of labels each.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

use mesh_proto::identity::SpiffeId;

/// Concurrent registrations one identity may hold by default (replicas of one service account
/// each hold one, and a restarting watch briefly holds two).
pub const DEFAULT_MAX_PER_IDENTITY: usize = 32;
/// Registrations meshd holds at most, whatever the identities.
pub const MAX_REGISTRATIONS: usize = 8192;
/// Labels a workload may register with.
pub const MAX_LABELS: usize = 32;
/// Longest label key (Kubernetes: a 253-byte prefix, `/`, a 63-byte name) and value.
pub const MAX_LABEL_KEY_BYTES: usize = 317;
pub const MAX_LABEL_VALUE_BYTES: usize = 63;
/// All of a registration's label keys and values together: Kubernetes' own labels on a pod
/// are a few hundred bytes; the per-label bounds alone would let one registration carry 12 KB
/// into every snapshot.
pub const MAX_LABELS_BYTES: usize = 2048;
/// Registrations one identity may open in a burst, and per second after it, by default: a
/// workload registers at start, after each renewal and when its readiness changes, and after
/// a meshd restart every replica of an identity registers at once (so the burst is
/// [`DEFAULT_MAX_PER_IDENTITY`]).
pub const DEFAULT_REGISTRATION_BURST: u32 = 32;
pub const DEFAULT_REGISTRATIONS_PER_SECOND: u32 = 4;

/// What meshd accepts as registrations.
#[derive(Debug, Clone)]
pub struct RegistrationPolicy {
    /// Services beyond the conventions, per (namespace, service account).
    pub extra: HashMap<(String, String), BTreeSet<String>>,
    /// Addresses a workload may register although its connection comes from elsewhere.
    pub allowed_nets: Vec<Cidr>,
    pub max_per_identity: usize,
    /// Registrations one identity may open at once after a quiet spell.
    pub registration_burst: u32,
    /// Registrations one identity may open per second beyond the burst.
    pub registrations_per_second: u32,
}

impl Default for RegistrationPolicy {
    fn default() -> Self {
        Self {
            extra: HashMap::new(),
            allowed_nets: Vec::new(),
            max_per_identity: DEFAULT_MAX_PER_IDENTITY,
            registration_burst: DEFAULT_REGISTRATION_BURST,
            registrations_per_second: DEFAULT_REGISTRATIONS_PER_SECOND,
        }
    }
}

/// Identities whose registration rate is tracked at most; beyond it, identities whose
/// bucket is full again are forgotten (they are as good as new).
const MAX_TRACKED_IDENTITIES: usize = 16_384;

/// How often each identity registers: a token bucket per identity.
#[derive(Debug, Default)]
pub struct Churn {
    buckets: HashMap<SpiffeId, (f64, tokio::time::Instant)>,
}

impl Churn {
    /// Whether `identity` may register now under `policy`; takes a token if so.
    pub fn allow(&mut self, identity: &SpiffeId, policy: &RegistrationPolicy) -> bool {
        let now = tokio::time::Instant::now();
        let burst = f64::from(policy.registration_burst.max(1));
        let rate = f64::from(policy.registrations_per_second);
        let refill = |(tokens, at): (f64, tokio::time::Instant)| {
            (tokens + now.duration_since(at).as_secs_f64() * rate).min(burst)
        };
        if self.buckets.len() >= MAX_TRACKED_IDENTITIES && !self.buckets.contains_key(identity) {
            self.buckets.retain(|_, bucket| refill(*bucket) < burst);
            if self.buckets.len() >= MAX_TRACKED_IDENTITIES {
                return false;
            }
        }
        let bucket = self.buckets.entry(identity.clone()).or_insert((burst, now));
        let tokens = refill(*bucket);
        if tokens < 1.0 {
            *bucket = (tokens, now);
            return false;
        }
        *bucket = (tokens - 1.0, now);
        true
    }
}

/// A registration meshd refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{identity} may not register as service {service:?}")]
    Service { identity: String, service: String },
    #[error("{identity} may not register address {claimed}: its connection comes from {peer}")]
    Address {
        identity: String,
        claimed: SocketAddr,
        peer: IpAddr,
    },
    #[error("invalid registration: {0}")]
    Invalid(String),
}

impl RegistrationPolicy {
    /// Whether `identity` may register as `service`.
    pub fn may_register(&self, identity: &SpiffeId, service: &str) -> bool {
        let account = identity.service_account.as_str();
        let by_convention = account == service
            || account.strip_prefix("bookinfo-") == Some(service)
            || (identity.namespace == mesh_proto::identity::GATEWAY_NAMESPACE
                && account == mesh_proto::identity::GATEWAY_SERVICE_ACCOUNT
                && service == mesh_proto::identity::GATEWAY_SERVICE);
        by_convention
            || self
                .extra
                .get(&(identity.namespace.clone(), account.to_owned()))
                .is_some_and(|services| services.contains(service))
    }

    /// The address to register for a workload that claims `claimed` over a connection from
    /// `peer`: an unspecified host becomes the peer's; any other must be the peer's or in the
    /// allow-list.
    pub fn address(
        &self,
        identity: &SpiffeId,
        claimed: &str,
        peer: IpAddr,
    ) -> Result<SocketAddr, Refused> {
        let mut addr: SocketAddr = claimed
            .parse()
            .map_err(|e| Refused::Invalid(format!("address {claimed:?}: {e}")))?;
        if addr.port() == 0 {
            return Err(Refused::Invalid(format!("address {claimed:?} has no port")));
        }
        if addr.ip().is_unspecified() {
            addr.set_ip(peer);
            return Ok(addr);
        }
        if canonical(addr.ip()) == canonical(peer)
            || self.allowed_nets.iter().any(|net| net.contains(addr.ip()))
        {
            Ok(addr)
        } else {
            Err(Refused::Address {
                identity: identity.to_string(),
                claimed: addr,
                peer,
            })
        }
    }
}

/// An IPv4-mapped IPv6 peer (a dual-stack listener) is the IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Checks a service name (a DNS label, as a Kubernetes Service's) and labels.
pub fn check_names(service: &str, labels: &BTreeMap<String, String>) -> Result<(), Refused> {
    let label_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    if !label_ok(service) {
        return Err(Refused::Invalid(format!(
            "service {:?} is not a DNS label (a-z, 0-9, '-', at most 63)",
            truncate(service)
        )));
    }
    if labels.len() > MAX_LABELS {
        return Err(Refused::Invalid(format!(
            "{} labels; at most {MAX_LABELS}",
            labels.len()
        )));
    }
    let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_LABELS_BYTES {
        return Err(Refused::Invalid(format!(
            "labels of {bytes} bytes; at most {MAX_LABELS_BYTES} in all"
        )));
    }
    for (key, value) in labels {
        let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        if key.is_empty()
            || key.len() > MAX_LABEL_KEY_BYTES
            || value.len() > MAX_LABEL_VALUE_BYTES
            || !printable(key)
            || !printable(value)
        {
            return Err(Refused::Invalid(format!(
                "label {:?}={:?} is not a Kubernetes label",
                truncate(key),
                truncate(value)
            )));
        }
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (s, None),
        };
        let net: IpAddr = ip
            .parse()
            .map_err(|e| format!("{s:?} is not an address block: {e}"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?,
        };
        Ok(Self { net, prefix })
    }
}

/// The mapping file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("registration map {path}: {reason}")]
pub struct MapError {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MapEntry {
    namespace: String,
    service_account: String,
    services: Vec<String>,
}

/// Reads a mapping file: a YAML list of `{namespace, serviceAccount, services: [...]}`.
/// Unknown fields and malformed service names are errors.
pub fn load_map(path: &Path) -> Result<HashMap<(String, String), BTreeSet<String>>, MapError> {
    let err = |reason: String| MapError {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    parse_map(&text).map_err(err)
}

fn parse_map(text: &str) -> Result<HashMap<(String, String), BTreeSet<String>>, String> {
    let entries: Vec<MapEntry> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let mut map: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
    for entry in entries {
        for service in &entry.services {
            check_names(service, &BTreeMap::new()).map_err(|e| e.to_string())?;
        }
        map.entry((entry.namespace, entry.service_account))
            .or_default()
            .extend(entry.services);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_in_all_not_only_one_by_one() {
        let big: BTreeMap<String, String> = (0..MAX_LABELS)
            .map(|i| {
                (
                    format!("example.com/key-{i:02}-{}", "k".repeat(40)),
                    "v".repeat(63),
                )
            })
            .collect();
        let err = check_names("ratings", &big).unwrap_err();
        assert!(err.to_string().contains("at most 2048 in all"), "{err}");
        let usual = BTreeMap::from([
            ("app".to_owned(), "ratings".to_owned()),
            ("version".to_owned(), "v1".to_owned()),
            ("pod-template-hash".to_owned(), "5d8b7c9f4".to_owned()),
        ]);
        assert_eq!(check_names("ratings", &usual), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_identity_registers_in_a_burst_then_at_its_rate_and_others_are_not_held_up() {
        let policy = RegistrationPolicy {
            registration_burst: 3,
            registrations_per_second: 2,
            ..Default::default()
        };
        let mut churn = Churn::default();
        let (ratings, details) = (id("default", "ratings"), id("default", "details"));
        assert!((0..3).all(|_| churn.allow(&ratings, &policy)));
        assert!(!churn.allow(&ratings, &policy), "the burst is spent");
        assert!(
            churn.allow(&details, &policy),
            "another identity has its own"
        );
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        assert!(churn.allow(&ratings, &policy));
        assert!(!churn.allow(&ratings, &policy));
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        assert!(
            (0..3).all(|_| churn.allow(&ratings, &policy)),
            "refilled to the burst"
        );
        assert!(!churn.allow(&ratings, &policy));
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", ns, sa)
    }

    #[test]
    fn identities_register_only_as_their_own_services() {
        let policy = RegistrationPolicy {
            extra: parse_map(
                "- namespace: default\n  serviceAccount: legacy\n  services: [details, ratings]\n",
            )
            .unwrap(),
            ..Default::default()
        };
        let ratings = id("default", "bookinfo-ratings");
        assert!(policy.may_register(&ratings, "ratings"));
        assert!(!policy.may_register(&ratings, "details"));
        assert!(!policy.may_register(&ratings, "reviews"));
        assert!(!policy.may_register(&ratings, "bookinfo"));
        assert!(policy.may_register(&id("default", "alpha"), "alpha"));
        let gateway = id("istio-system", "istio-ingressgateway-service-account");
        assert!(policy.may_register(&gateway, "istio-ingressgateway"));
        assert!(!policy.may_register(
            &id("default", "istio-ingressgateway-service-account"),
            "istio-ingressgateway"
        ));
        assert!(policy.may_register(&id("default", "legacy"), "details"));
        assert!(!policy.may_register(&id("other", "legacy"), "details"));
        assert!(!policy.may_register(&id("default", "legacy"), "reviews"));
    }

    #[test]
    fn addresses_are_the_peers_or_allow_listed() {
        let mut policy = RegistrationPolicy::default();
        let who = id("default", "bookinfo-ratings");
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            policy.address(&who, "0.0.0.0:9080", peer).unwrap(),
            "10.1.2.3:9080".parse().unwrap()
        );
        assert_eq!(
            policy.address(&who, "10.1.2.3:9080", peer).unwrap(),
            "10.1.2.3:9080".parse().unwrap()
        );
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert!(policy.address(&who, "10.1.2.3:9080", mapped).is_ok());
        let err = policy.address(&who, "10.9.9.9:9080", peer).unwrap_err();
        assert!(matches!(err, Refused::Address { .. }), "{err}");
        assert!(err.to_string().contains("comes from 10.1.2.3"), "{err}");
        assert!(matches!(
            policy.address(&who, "10.1.2.3:0", peer),
            Err(Refused::Invalid(_))
        ));
        assert!(matches!(
            policy.address(&who, "nonsense", peer),
            Err(Refused::Invalid(_))
        ));
        policy.allowed_nets = vec!["10.9.0.0/16".parse().unwrap()];
        assert!(policy.address(&who, "10.9.9.9:9080", peer).is_ok());
        assert!(policy.address(&who, "10.8.9.9:9080", peer).is_err());
    }

    #[test]
    fn address_blocks_parse_and_match() {
        let net: Cidr = "192.168.0.0/16".parse().unwrap();
        assert!(net.contains("192.168.4.5".parse().unwrap()));
        assert!(!net.contains("192.169.0.1".parse().unwrap()));
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        let one: Cidr = "fd00::1".parse().unwrap();
        assert!(one.contains("fd00::1".parse().unwrap()));
        assert!(!one.contains("fd00::2".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x/8", "::/129", "10.0.0.0/"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_labels_are_bounded() {
        let labels = BTreeMap::from([("app".to_owned(), "reviews".to_owned())]);
        assert!(check_names("reviews", &labels).is_ok());
        for bad in ["", "Reviews", "-x", "a.b", &"x".repeat(64)] {
            assert!(check_names(bad, &labels).is_err(), "{bad}");
        }
        let many: BTreeMap<String, String> = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect();
        assert!(check_names("reviews", &many).is_err());
        let long = BTreeMap::from([("version".to_owned(), "v".repeat(64))]);
        assert!(check_names("reviews", &long).is_err());
    }

    #[test]
    fn the_map_file_is_strict() {
        let err = parse_map("- namespace: a\n  serviceAccount: b\n  services: [c]\n  extra: 1\n")
            .unwrap_err();
        assert!(err.contains("extra"), "{err}");
        assert!(
            parse_map("- namespace: a\n  serviceAccount: b\n  services: [\"Not Valid\"]\n")
                .is_err()
        );
    }
}
