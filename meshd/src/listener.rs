//! meshd's side of the control-plane transport: TLS 1.3 only, with a serving certificate from
//! meshd's own CA, and an optional client certificate that — when a workload presents its
//! mesh certificate — becomes the identity of everything it asks on that connection.
//!
//! This sits below tonic: the accept loop terminates TLS itself so it can bound connections
//! and handshakes, set TCP_NODELAY (a 40 ms Nagle stall on every certificate reply otherwise),
//! and hand tonic each connection with its peer address and verified identity
//! ([`ControlPeer`]). Plaintext, foreign-CA and expired certificates never reach a handler.
//!
//! Slots are kept apart by what a connection has proven. Until its handshake ends, and for as
//! long as it presents no certificate, a connection sits in the [`Lobby`]: a bounded set that
//! makes room for a newcomer by closing its oldest member, and that a connection without a
//! certificate leaves after [`UNCERTIFIED_GRACE`] (enough to certify with a bootstrap token,
//! which is all such a connection is for). Certificate holders — every watch and renewal —
//! have `max_connections` slots of their own, so no flood of anonymous connections, however
//! patient, can take the slots that keep the mesh's certificates fresh.

use std::collections::BTreeMap;
use std::future::Future;
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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::ca::{CaError, CertificateAuthority};
use mesh_proto::identity::SpiffeId;

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many connections with a valid client certificate meshd holds open at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// How long a connection that presented no client certificate may stay open: a first
/// certificate is one RPC (a TokenReview in Kubernetes takes at most 5 s of it).
pub const UNCERTIFIED_GRACE: Duration = Duration::from_secs(15);

/// How many connections meshd holds, and for how long one may go without a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections with a valid client certificate (watches, renewals) at once.
    pub max_connections: usize,
    /// How long a connection without a client certificate stays open.
    pub uncertified_grace: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            uncertified_grace: UNCERTIFIED_GRACE,
        }
    }
}

impl ListenerLimits {
    /// How many connections may be handshaking or without a certificate at once: a quarter
    /// as many as certified ones, at least 64.
    pub fn lobby_capacity(&self) -> usize {
        (self.max_connections / 4).max(64)
    }
}

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
    slot: Slot,
}

/// The place a connection holds.
#[derive(Debug)]
enum Slot {
    /// One of the certificate holders' slots.
    Certified { _permit: OwnedSemaphorePermit },
    /// A seat in the lobby, given up when the grace runs out or a newcomer needs it.
    Uncertified {
        seat: Seat,
        grace: Pin<Box<tokio::time::Sleep>>,
    },
}

impl ControlConn {
    /// An error once the connection has lost its place: the next read or write fails, so
    /// tonic's connection closes.
    fn poll_lost(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let Slot::Uncertified { seat, grace } = &mut self.slot else {
            return None;
        };
        let why = if grace.as_mut().poll(cx).is_ready() {
            "no client certificate within the grace period"
        } else if seat.poll_evicted(cx).is_ready() {
            "its lobby seat was needed by a newer connection"
        } else {
            return None;
        };
        tracing::debug!(addr = %self.peer.addr, "closing a control-plane connection: {why}");
        Some(io::Error::new(io::ErrorKind::TimedOut, why))
    }
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
        if let Some(lost) = self.poll_lost(cx) {
            return Poll::Ready(Err(lost));
        }
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for ControlConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(lost) = self.poll_lost(cx) {
            return Poll::Ready(Err(lost));
        }
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
        if let Some(lost) = self.poll_lost(cx) {
            return Poll::Ready(Err(lost));
        }
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

/// Connections that have not shown a valid certificate yet: at most `capacity`, the oldest
/// closed to make room for a newcomer. Handshakes take milliseconds, so a client that
/// connects to renew is through before a flood can push it out; a flood only churns itself.
#[derive(Debug)]
struct Lobby {
    capacity: usize,
    seats: std::sync::Mutex<Seats>,
}

#[derive(Debug, Default)]
struct Seats {
    next: u64,
    /// By arrival; dropping a sender tells its seat it was evicted.
    taken: BTreeMap<u64, oneshot::Sender<()>>,
    evicted: u64,
}

/// A connection's place in the [`Lobby`], given back when dropped.
#[derive(Debug)]
struct Seat {
    id: u64,
    lobby: Arc<Lobby>,
    evicted: oneshot::Receiver<()>,
}

impl Lobby {
    fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            seats: std::sync::Mutex::default(),
        })
    }

    /// A seat for a new connection, evicting the oldest seated one when the lobby is full.
    fn enter(self: &Arc<Self>) -> Seat {
        let mut seats = self.seats.lock().expect("lobby lock is never poisoned");
        if seats.taken.len() >= self.capacity {
            seats.taken.pop_first();
            seats.evicted += 1;
            if seats.evicted.is_power_of_two() {
                tracing::warn!(
                    "meshd's lobby is full ({} connections handshaking or without a certificate): \
                     closed the oldest, {} so far",
                    self.capacity,
                    seats.evicted
                );
            }
        }
        let id = seats.next;
        seats.next += 1;
        let (tx, evicted) = oneshot::channel();
        seats.taken.insert(id, tx);
        Seat {
            id,
            lobby: Arc::clone(self),
            evicted,
        }
    }

    #[cfg(test)]
    fn occupied(&self) -> usize {
        self.seats.lock().unwrap().taken.len()
    }
}

impl Seat {
    /// Ready once a newer connection took this seat.
    fn poll_evicted(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.evicted).poll(cx).map(|_| ())
    }

    async fn evicted(&mut self) {
        std::future::poll_fn(|cx| self.poll_evicted(cx)).await;
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Ok(mut seats) = self.lobby.seats.lock() {
            seats.taken.remove(&self.id);
        }
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
    let key = mesh_proto::tls::provider()
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
    let provider = mesh_proto::tls::provider();
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
/// tonic's `serve_with_incoming`. At most `limits.max_connections` with a valid client
/// certificate are open at once (more are closed after their handshake), and at most
/// [`ListenerLimits::lobby_capacity`] handshaking or without one, each of those for
/// `limits.uncertified_grace`.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    limits: ListenerLimits,
    mut stopped: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<ControlConn>> {
    let (tx, rx) = mpsc::channel(64);
    let max_connections = limits.max_connections;
    let certified = Arc::new(Semaphore::new(max_connections));
    let lobby = Lobby::new(limits.lobby_capacity());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::spawn(async move {
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
            let mut seat = lobby.enter();
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%addr, "cannot set TCP_NODELAY: {e}");
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let certified = Arc::clone(&certified);
            let refused = Arc::clone(&refused);
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                let tls = tokio::select! {
                    done = handshake => match done {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::info!(%addr, "refused a control-plane connection: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%addr, "control-plane TLS handshake timed out");
                            return;
                        }
                    },
                    () = seat.evicted() => {
                        tracing::debug!(%addr, "control-plane handshake pushed out of a full lobby");
                        return;
                    }
                };
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| peer_certificate(cert));
                let slot = match &identity {
                    Some(_) => {
                        drop(seat);
                        match certified.try_acquire_owned() {
                            Ok(permit) => Slot::Certified { _permit: permit },
                            Err(_) => {
                                let n =
                                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                                if n.is_power_of_two() {
                                    tracing::warn!(
                                        "meshd holds {max_connections} certified connections: \
                                         refused {n} so far"
                                    );
                                }
                                return;
                            }
                        }
                    }
                    None => Slot::Uncertified {
                        seat,
                        grace: Box::pin(tokio::time::sleep(limits.uncertified_grace)),
                    },
                };
                let conn = ControlConn {
                    tls,
                    peer: ControlPeer { addr, identity },
                    slot,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

fn peer_certificate(cert: &CertificateDer<'_>) -> Option<Arc<PeerCertificate>> {
    let id = mesh_proto::tls::spiffe_id_of(cert).ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let secs = parsed.validity().not_after.timestamp().max(0) as u64;
    Some(Arc::new(PeerCertificate {
        id,
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_lobby_evicts_its_oldest_seat_and_a_dropped_seat_frees_its_place() {
        let lobby = Lobby::new(2);
        let mut oldest = lobby.enter();
        let mut second = lobby.enter();
        assert_eq!(lobby.occupied(), 2);
        let mut third = lobby.enter();
        assert_eq!(lobby.occupied(), 2);
        tokio::time::timeout(Duration::from_secs(1), oldest.evicted())
            .await
            .expect("the oldest seat was evicted");
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(second.poll_evicted(&mut cx).is_pending());
        assert!(third.poll_evicted(&mut cx).is_pending());
        drop(second);
        assert_eq!(lobby.occupied(), 1);
        // Room again: nobody is evicted.
        let _fourth = lobby.enter();
        assert!(third.poll_evicted(&mut cx).is_pending());
        drop(oldest);
        assert_eq!(lobby.occupied(), 2);
    }
}
