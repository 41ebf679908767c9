//! The workload side of identity: a private key that never leaves the process, a CSR for
//! meshd, and the current certificate, published through a watch channel so the TLS configs
//! that use it are rebuilt on rotation without touching any stack.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;

use super::SpiffeId;
use super::roots::Anchors;

/// A certificate meshd issued for this workload, with its key and the roots to trust.
#[derive(Debug)]
pub struct Certified {
    pub identity: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
    pub roots: Arc<RootCertStore>,
    pub root_ders: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When this workload received it.
    pub installed_at: SystemTime,
}

impl Certified {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Whether it can still authenticate a connection: not expired, nor about to be (a tenth
    /// of its life, at most [`EXPIRY_MARGIN`], before the end), so a peer does not refuse it
    /// mid-handshake.
    pub fn is_usable(&self) -> bool {
        // From arrival, not `not_before`, which the CA back-dates for clock skew.
        let life = self
            .not_after
            .duration_since(self.installed_at)
            .unwrap_or_default();
        self.not_after > SystemTime::now() + (life / 10).min(EXPIRY_MARGIN)
    }

    /// Whether it chains to `anchors` (after a root rotation, an old certificate does not).
    pub fn chains_to(&self, anchors: &Anchors) -> bool {
        self.chain.first().is_some_and(|leaf| {
            super::x509::verify_chain(
                leaf,
                &self.chain[1..],
                &anchors.ders,
                rustls_pki_types::UnixTime::now(),
            )
            .is_ok()
        })
    }

    /// When to ask for the next certificate: half-way through the time it had left when it
    /// arrived (Istio renews at half-life; the CA back-dates `not_before` for clock skew, so
    /// the arrival time is the better start).
    pub fn renew_at(&self) -> SystemTime {
        let left = self
            .not_after
            .duration_since(self.installed_at)
            .unwrap_or(Duration::ZERO);
        self.installed_at + left / 2
    }
}

/// How close to its expiry a certificate stops being presented, at most.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// A certificate meshd sent that this workload cannot use.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("invalid certificate from the CA: {0}")]
    Invalid(String),
    #[error("the CA issued a certificate for {got}, not for {expected}")]
    WrongIdentity { expected: SpiffeId, got: String },
    #[error("the CA's certificate does not match the key of the request")]
    WrongKey,
    #[error("the certificate does not chain to the mesh root this workload trusts: {0}")]
    Untrusted(String),
}

/// A key pair and certificate signing request for one renewal.
pub struct Request {
    key: KeyPair,
    pub csr_pem: String,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").finish_non_exhaustive()
    }
}

/// This workload's identity and its current certificate.
#[derive(Debug, Clone)]
pub struct Credentials {
    identity: SpiffeId,
    current: Arc<watch::Sender<Option<Arc<Certified>>>>,
}

impl Credentials {
    pub fn new(identity: SpiffeId) -> Self {
        Self {
            identity,
            current: Arc::new(watch::Sender::new(None)),
        }
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// A new key and a CSR asking for this workload's identity.
    pub fn request(&self) -> Result<Request, CredentialError> {
        let err = |e: rcgen::Error| CredentialError::Invalid(e.to_string());
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            self.identity.to_string().as_str().try_into().map_err(err)?,
        )];
        let csr_pem = params
            .serialize_request(&key)
            .map_err(err)?
            .pem()
            .map_err(err)?;
        Ok(Request { key, csr_pem })
    }

    /// Checks what the CA sent for `request` (our key, our identity, a chain to the roots we
    /// were given out of band) and makes it the current certificate.
    pub fn install(
        &self,
        request: Request,
        cert_pem: &str,
        anchors: &Anchors,
    ) -> Result<Arc<Certified>, CredentialError> {
        let invalid = |e: &dyn std::fmt::Display| CredentialError::Invalid(e.to_string());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(&e))?;
        let leaf = chain.first().ok_or_else(|| invalid(&"no certificate"))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| invalid(&e))?;
        if parsed.public_key().subject_public_key.data.as_ref() != request.key.public_key_raw() {
            return Err(CredentialError::WrongKey);
        }
        let got = super::x509::spiffe_id_of(leaf).map_err(|e| invalid(&e))?;
        if got != self.identity {
            return Err(CredentialError::WrongIdentity {
                expected: self.identity.clone(),
                got: got.to_string(),
            });
        }
        let to_system = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
        };
        let not_before = to_system(parsed.validity().not_before);
        let not_after = to_system(parsed.validity().not_after);
        drop(parsed);
        // Who signed it, judged inside its own validity: whether it is still valid is for
        // every peer to judge at every handshake (and an expired one is renewed at once).
        let midpoint = not_before + not_after.duration_since(not_before).unwrap_or_default() / 2;
        let at = rustls_pki_types::UnixTime::since_unix_epoch(
            midpoint
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        super::x509::verify_chain(leaf, &chain[1..], &anchors.ders, at)
            .map_err(|e| CredentialError::Untrusted(e.to_string()))?;
        let certified = Arc::new(Certified {
            identity: got,
            chain,
            key_der: request.key.serialize_der(),
            roots: anchors.store.clone(),
            root_ders: anchors.ders.clone(),
            not_before,
            not_after,
            installed_at: SystemTime::now(),
        });
        self.current.send_replace(Some(certified.clone()));
        Ok(certified)
    }

    pub fn current(&self) -> Option<Arc<Certified>> {
        self.current.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Certified>>> {
        self.current.subscribe()
    }
}
