//! The data plane's side of the control-plane transport: every connection to meshd is TLS 1.3
//! and verifies meshd's serving certificate (its DNS name or IP) against the roots this
//! workload was given out of band before a byte of the request — bootstrap token included —
//! is written. When the workload holds a valid mesh certificate, it presents it, and meshd
//! takes the workload's identity from it.
//!
//! A tonic `Channel` keeps its connection, so callers build one channel per purpose
//! ([`channel`]): the first certificate over a channel without a client certificate, renewals
//! and the watch over channels that present the current one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint as GrpcEndpoint};

use crate::identity::{Credentials, TrustRoots};

/// How long connecting to meshd (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The control-plane URL is not usable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is not https://host:port (meshd serves TLS only)")]
    NotHttps(String),
}

/// Checks that `url` names meshd over TLS.
pub fn check_url(url: &str) -> Result<Uri, UrlError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| UrlError::NotHttps(url.to_owned()))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(UrlError::NotHttps(url.to_owned()));
    }
    Ok(uri)
}

/// A channel to meshd at `url` that connects on first use; it presents `identity`'s current
/// certificate when given one.
pub fn channel(
    url: &str,
    roots: TrustRoots,
    identity: Option<Credentials>,
) -> Result<Channel, UrlError> {
    let uri = check_url(url)?;
    let endpoint = GrpcEndpoint::from(uri)
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(endpoint.connect_with_connector_lazy(MeshdConnector { roots, identity }))
}

/// Opens TLS connections to meshd for tonic.
#[derive(Debug, Clone)]
struct MeshdConnector {
    roots: TrustRoots,
    identity: Option<Credentials>,
}

type Connecting = Pin<
    Box<
        dyn Future<
                Output = Result<
                    TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
                    crate::BoxError,
                >,
            > + Send,
    >,
>;

impl tower::Service<Uri> for MeshdConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = crate::BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or("the control plane URL has no host")?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(super::DEFAULT_CONTROL_PORT);
            let config = this.config()?;
            let name = ServerName::try_from(host.clone())?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS to meshd at {host}:{port} failed: {e}"))?;
            Ok(TokioIo::new(tls))
        })
    }
}

impl MeshdConnector {
    fn config(&self) -> Result<Arc<ClientConfig>, crate::BoxError> {
        let provider = crate::tls::provider();
        let anchors = self.roots.load()?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(anchors.store.clone());
        let mut config = match &self.identity {
            Some(credentials) => {
                builder.with_client_cert_resolver(Arc::new(CurrentCertificate(credentials.clone())))
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The workload's certificate as it is at handshake time, unless it is (about to be) expired.
#[derive(Debug)]
struct CurrentCertificate(Credentials);

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let certified = self.0.current().filter(|c| c.is_usable())?;
        let key = crate::tls::provider()
            .key_provider
            .load_private_key(certified.key())
            .ok()?;
        Some(Arc::new(CertifiedKey::new(certified.chain.clone(), key)))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
