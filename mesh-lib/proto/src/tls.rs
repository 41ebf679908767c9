//! rustls configurations from the workload's current certificate: TLS 1.3 only, client
//! certificates required, and on the client side a verifier that checks the server's SPIFFE
//! id instead of a DNS name (mesh certificates carry only a URI SAN).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use crate::identity::x509::trust_anchors;
pub use crate::identity::x509::{PeerIdError, provider, spiffe_id_of, verify_chain};
use crate::identity::{Certified, SpiffeId};

/// The inbound config: our certificate, and any client certificate our roots signed.
pub fn server_config(certified: &Certified) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(certified.roots.clone(), provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certified.chain.clone(), certified.key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The outbound config for a connection to a server that must be `expected`.
pub fn client_config(
    certified: &Certified,
    expected: SpiffeId,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = provider();
    let anchors = trust_anchors(&certified.root_ders)?;
    let verifier = SpiffeServerVerifier {
        provider: provider.clone(),
        anchors,
        expected,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certified.chain.clone(), certified.key())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Checks the server's chain against the mesh roots and its SPIFFE id against the one the
/// registry says the destination has.
#[derive(Debug)]
struct SpiffeServerVerifier {
    provider: Arc<CryptoProvider>,
    anchors: Vec<TrustAnchor<'static>>,
    expected: SpiffeId,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("invalid peer certificate: {e}")))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| rustls::Error::General(format!("untrusted peer certificate: {e}")))?;
        let got = spiffe_id_of(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if got != self.expected {
            return Err(rustls::Error::General(format!(
                "peer is {got}, expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
