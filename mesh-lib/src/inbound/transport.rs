//! The transport decision for one accepted connection, before any HTTP: PeerAuthentication
//! says whether it must be mTLS. TLS is terminated with the workload's current certificate
//! and yields the peer's SPIFFE id; plaintext passes, or under STRICT is reset as Istio's
//! sidecar does. It sits right after the listener's admission and first-byte wait, so a
//! refused connection never reaches hyper.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::dataplane::Mesh;
use crate::identity::SpiffeId;
use crate::io::EitherIo;
use mesh_config::MtlsMode;

/// How long a client may take to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection after the mesh's transport decision: plaintext or terminated TLS.
pub(crate) type Accepted = EitherIo<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>;

/// Applies PeerAuthentication to a new connection. TLS (first byte 0x16, a handshake record)
/// is terminated with the current certificate; plaintext passes unless the mode is STRICT,
/// where the connection is reset as Istio's sidecar does (curl sees exit 56). `None`: closed.
/// The connection driver has already waited, within its first-byte timeout, for a byte to
/// peek at, so the peek here does not wait.
pub(crate) async fn secure(
    stream: TcpStream,
    peer: SocketAddr,
    mesh: Option<&Mesh>,
) -> Option<(Accepted, Option<SpiffeId>)> {
    let Some(mesh) = mesh else {
        return Some((EitherIo::Left(stream), None));
    };
    let mut first = [0u8; 1];
    let is_tls = matches!(stream.peek(&mut first).await, Ok(1)) && first[0] == 0x16;
    match (is_tls, mesh.mtls_mode()) {
        (true, MtlsMode::Strict | MtlsMode::Permissive) => {
            let Some(config) = mesh.server_tls() else {
                tracing::warn!(%peer, "TLS before this workload has a certificate: closing");
                reset(stream);
                return None;
            };
            let accepting = tokio_rustls::TlsAcceptor::from(config).accept(stream);
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accepting).await {
                Ok(Ok(tls)) => {
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|cert| crate::tls::spiffe_id_of(cert).ok());
                    Some((EitherIo::Right(tls), identity))
                }
                Ok(Err(e)) => {
                    tracing::info!(%peer, "TLS handshake refused: {e}");
                    None
                }
                Err(_) => {
                    tracing::info!(%peer, "TLS handshake timed out");
                    None
                }
            }
        }
        (false, MtlsMode::Strict) => {
            tracing::info!(%peer, "plaintext connection under STRICT mTLS: reset");
            reset(stream);
            None
        }
        _ => Some((EitherIo::Left(stream), None)),
    }
}

/// Closes with a TCP reset instead of a FIN.
fn reset(stream: TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!("cannot set SO_LINGER: {e}");
    }
    drop(stream);
}
