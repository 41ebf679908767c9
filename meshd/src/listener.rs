//! meshd's side of the control-plane transport: TLS 1.3 only, with a serving certificate from
//! meshd's own CA, and an optional client certificate that — when a workload presents its
//! mesh certificate — becomes the identity of everything it asks on that connection.
//!
//! This sits below tonic: the accept loop terminates TLS itself so it can bound connections
//! and handshakes, set TCP_NODELAY (a 40 ms Nagle stall on every certificate reply otherwise),
//! and hand tonic each connection with its peer address and verified identity
//! ([`ControlPeer`]). Plaintext, foreign-CA and expired certificates never reach a handler.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::ca::{CaError, CertificateAuthority};
use mesh::identity::SpiffeId;

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many connections meshd holds open at once by default; more are closed at accept.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Who is on the other end of a control-plane connection, as tonic hands it to handlers
/// (request extensions).
#[derive(Debug, Clone)]
pub struct ControlPeer {
    pub addr: SocketAddr,
    /// The mesh identity the client's certificate proved, if it sent one.
    pub identity: Option<Arc<PeerCertificate>>,
}

/// A verified client certificate.
#[derive(Debug)]
pub struct PeerCertificate {
    pub id: SpiffeId,
    pub not_after: SystemTime,
}

impl PeerCertificate {
    /// The identity, while the certificate is still valid.
    pub fn valid_id(&self) -> Option<&SpiffeId> {
        (SystemTime::now() < self.not_after).then_some(&self.id)
    }
}

/// One accepted, TLS-terminated connection.
#[derive(Debug)]
pub struct ControlConn {
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: ControlPeer,
    _slot: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for ControlConn {
    type ConnectInfo = ControlPeer;

    fn connect_info(&self) -> ControlPeer {
        self.peer.clone()
    }
}

impl AsyncRead for ControlConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for ControlConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

/// The names meshd's serving certificate carries: how workloads may address it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServingNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl ServingNames {
    /// `meshd`, `meshd.<namespace>.svc[.cluster.local]`, `localhost`, loopback, the bind
    /// address when it is a specific one, and `extra` (names or IPs).
    pub fn for_meshd(namespace: &str, bind: IpAddr, extra: &[String]) -> Self {
        let mut names = Self {
            dns: vec![
                "meshd".to_owned(),
                format!("meshd.{namespace}.svc"),
                format!("meshd.{namespace}.svc.cluster.local"),
                "localhost".to_owned(),
            ],
            ips: vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            ],
        };
        if !bind.is_unspecified() {
            names.ips.push(bind);
        }
        for name in extra {
            match name.parse::<IpAddr>() {
                Ok(ip) => names.ips.push(ip),
                Err(_) => names.dns.push(name.clone()),
            }
        }
        names.dns.dedup();
        names.ips.sort();
        names.ips.dedup();
        names
    }
}

/// Hands out meshd's serving certificate, re-issuing it from the CA at half-life so a
/// long-running meshd never serves an expired one.
#[derive(Debug)]
struct ServingCertResolver {
    ca: Arc<CertificateAuthority>,
    names: ServingNames,
    current: Mutex<(Arc<CertifiedKey>, SystemTime)>,
}

impl ServingCertResolver {
    fn new(ca: Arc<CertificateAuthority>, names: ServingNames) -> Result<Self, CaError> {
        let current = issue(&ca, &names)?;
        Ok(Self {
            ca,
            names,
            current: Mutex::new(current),
        })
    }
}

fn issue(
    ca: &CertificateAuthority,
    names: &ServingNames,
) -> Result<(Arc<CertifiedKey>, SystemTime), CaError> {
    let serving = ca.sign_serving(&names.dns, &names.ips)?;
    let bad = |e: String| CaError::Sign(e);
    let chain = vec![
        CertificateDer::from_pem_slice(serving.cert_pem.as_bytes())
            .map_err(|e| bad(e.to_string()))?,
    ];
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes())
        .map_err(|e| bad(e.to_string()))?;
    let key = mesh::tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(e.to_string()))?;
    let renew_at = SystemTime::now()
        + serving
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            / 2;
    Ok((Arc::new(CertifiedKey::new(chain, key)), renew_at))
}

impl ResolvesServerCert for ServingCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self
            .current
            .lock()
            .expect("serving cert lock is never poisoned");
        if SystemTime::now() >= current.1 {
            match issue(&self.ca, &self.names) {
                Ok(fresh) => *current = fresh,
                Err(e) => tracing::error!("cannot renew meshd's serving certificate: {e}"),
            }
        }
        Some(current.0.clone())
    }
}

/// meshd's TLS config: TLS 1.3, h2, a client certificate verified against the CA when sent
/// (bootstrapping workloads have none yet and prove themselves with a token instead).
pub fn server_config(
    ca: Arc<CertificateAuthority>,
    names: ServingNames,
) -> Result<Arc<ServerConfig>, CaError> {
    let provider = mesh::tls::provider();
    let bad = |e: String| CaError::Sign(e);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            CertificateDer::from_pem_slice(ca.root_pem().as_bytes())
                .map_err(|e| bad(e.to_string()))?,
        )
        .map_err(|e| bad(e.to_string()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let resolver = ServingCertResolver::new(ca, names)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts on `listener` until `stopped`, terminates TLS, and yields the connections for
/// tonic's `serve_with_incoming`. At most `max_connections` are open at once: more are
/// closed at accept, so a flood costs meshd one file descriptor each only briefly.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    max_connections: usize,
    mut stopped: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<ControlConn>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(max_connections));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        let mut refused: u64 = 0;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopped.wait_for(|s| *s) => return,
            };
            let (stream, addr) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning on the error.
                    tracing::warn!("meshd accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        "meshd holds {max_connections} connections: refused {refused} so far"
                    );
                }
                drop(stream);
                continue;
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%addr, "cannot set TCP_NODELAY: {e}");
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let tls =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::info!(%addr, "refused a control-plane connection: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%addr, "control-plane TLS handshake timed out");
                            return;
                        }
                    };
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| peer_certificate(cert));
                let conn = ControlConn {
                    tls,
                    peer: ControlPeer { addr, identity },
                    _slot: slot,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

fn peer_certificate(cert: &CertificateDer<'_>) -> Option<Arc<PeerCertificate>> {
    let id = mesh::tls::spiffe_id_of(cert).ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let secs = parsed.validity().not_after.timestamp().max(0) as u64;
    Some(Arc::new(PeerCertificate {
        id,
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
    }))
}
