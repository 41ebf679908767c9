//! Workload identities: SPIFFE ids, the certificate authority that vouches for them, and the
//! workload side that keeps a current certificate.
//!
//! An identity is `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, as Istio's.
//! Authorization policies name it without the scheme (`cluster.local/ns/default/sa/x`): the
//! [`SpiffeId::principal`] form.

pub mod credentials;
pub mod roots;
pub mod x509;

use std::fmt;
use std::str::FromStr;

pub use credentials::{Certified, Credentials};
pub use roots::{Anchors, RootsError, TrustRoots};

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A workload identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// The form authorization policies use: `cluster.local/ns/default/sa/name`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

/// Text that is not `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> id")]
pub struct InvalidSpiffeId(pub String);

impl FromStr for SpiffeId {
    type Err = InvalidSpiffeId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidSpiffeId(s.to_owned());
        let rest = s.strip_prefix("spiffe://").ok_or_else(invalid)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let valid = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if valid(td) && valid(ns) && valid(sa) => {
                Ok(Self::new(*td, *ns, *sa))
            }
            _ => Err(invalid()),
        }
    }
}

/// The namespace, service account and service of Istio's ingress gateway, which policies name
/// and meshd lets the gateway (alone) register as.
pub const GATEWAY_NAMESPACE: &str = "istio-system";
pub const GATEWAY_SERVICE_ACCOUNT: &str = "istio-ingressgateway-service-account";
pub const GATEWAY_SERVICE: &str = "istio-ingressgateway";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_parse_and_print() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
            .parse()
            .unwrap();
        assert_eq!(id.service_account, "bookinfo-reviews");
        assert_eq!(
            id.principal(),
            "cluster.local/ns/default/sa/bookinfo-reviews"
        );
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
        for bad in [
            "cluster.local/ns/default/sa/x",
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns//sa/x",
            "spiffe://cluster.local/ns/default/sa/x/y",
            "spiffe://cluster.local/xx/default/sa/x",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }
}
