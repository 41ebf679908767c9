//! What a certificate proves: the SPIFFE id in its URI SAN, and whether it chains to the mesh's
//! roots. Below both the workload's credentials (which check their own certificate) and the
//! TLS configs (which check peers'), so that neither imports the other.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};

use super::SpiffeId;

/// The crypto provider every mesh TLS config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a peer certificate names no usable identity.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerIdError {
    #[error("unparsable certificate: {0}")]
    Unparsable(String),
    #[error("the certificate has no SPIFFE URI SAN")]
    NoSpiffeId,
    #[error(transparent)]
    Invalid(#[from] super::InvalidSpiffeId),
}

/// The SPIFFE id in a certificate's URI SAN.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, PeerIdError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| PeerIdError::Unparsable(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| PeerIdError::Unparsable(e.to_string()))?
        .ok_or(PeerIdError::NoSpiffeId)?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && uri.starts_with("spiffe://")
        {
            return Ok(uri.parse()?);
        }
    }
    Err(PeerIdError::NoSpiffeId)
}

/// The webpki trust anchors of `roots`.
pub(crate) fn trust_anchors(
    roots: &[CertificateDer<'_>],
) -> Result<Vec<TrustAnchor<'static>>, rustls::Error> {
    roots
        .iter()
        .map(|der| {
            webpki::anchor_from_trusted_cert(der)
                .map(|a| a.to_owned())
                .map_err(|e| rustls::Error::General(e.to_string()))
        })
        .collect()
}

/// Checks that `leaf` (with `intermediates`) chains to one of `roots` and may authenticate a
/// client, as of `at`.
pub fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    at: UnixTime,
) -> Result<(), rustls::Error> {
    let anchors = trust_anchors(roots)?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| rustls::Error::General(format!("invalid certificate: {e}")))?;
    cert.verify_for_usage(
        provider().signature_verification_algorithms.all,
        &anchors,
        intermediates,
        at,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| rustls::Error::General(e.to_string()))
}
