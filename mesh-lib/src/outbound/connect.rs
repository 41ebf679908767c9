//! Opening connections: TCP (TCP_NODELAY, connect timeout), then mTLS when the address is a
//! mesh endpoint, requiring the identity the registry gives that endpoint. Without a current
//! certificate a connection to a mesh endpoint fails: mTLS fails closed. Outside the mesh,
//! behind a sidecar, every connection goes to the HTTP proxy instead (`HTTP_PROXY`), which
//! then receives absolute-form requests.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower::Service;

use crate::BoxError;
use crate::dataplane::Mesh;
use crate::io::EitherIo;

/// A connection to a backend: plaintext or mTLS, or plaintext to the HTTP proxy.
#[derive(Debug)]
pub struct MeshStream {
    io: TokioIo<EitherIo<TcpStream, TlsStream<TcpStream>>>,
    via_proxy: bool,
}

impl MeshStream {
    /// Whether this is a connection to an HTTP proxy (which takes absolute-form requests).
    pub fn via_proxy(&self) -> bool {
        self.via_proxy
    }
}

/// The destination is a mesh endpoint but this workload has no certificate yet.
#[derive(Debug, thiserror::Error)]
#[error("no workload certificate yet; refusing to connect to a mesh endpoint without mTLS")]
pub struct NoCertificate;

/// Connects plaintext, or mTLS to mesh endpoints.
#[derive(Debug, Clone)]
pub struct MeshConnector {
    http: HttpConnector,
    mesh: Option<Mesh>,
    proxy: Option<Uri>,
}

impl MeshConnector {
    pub fn new(http: HttpConnector, mesh: Option<Mesh>) -> Self {
        Self {
            http,
            mesh,
            proxy: None,
        }
    }

    /// Connects every request to the HTTP proxy at `proxy` (no mesh: a sidecar's outbound
    /// listener does the mesh's work).
    pub fn via_proxy(http: HttpConnector, proxy: std::net::SocketAddr) -> Self {
        Self {
            http,
            mesh: None,
            proxy: Some(
                Uri::builder()
                    .scheme("http")
                    .authority(proxy.to_string())
                    .path_and_query("/")
                    .build()
                    .expect("a socket address is a valid authority"),
            ),
        }
    }
}

impl Service<Uri> for MeshConnector {
    type Response = MeshStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<MeshStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let via_proxy = self.proxy.is_some();
        let connecting = self.http.call(self.proxy.clone().unwrap_or(uri));
        let mesh = self.mesh.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            if via_proxy {
                return Ok(MeshStream {
                    io: TokioIo::new(EitherIo::Left(tcp)),
                    via_proxy,
                });
            }
            let expected = match &mesh {
                Some(mesh) => mesh.tls_target(tcp.peer_addr()?),
                None => None,
            };
            let Some(expected) = expected else {
                return Ok(MeshStream {
                    io: TokioIo::new(EitherIo::Left(tcp)),
                    via_proxy,
                });
            };
            let mesh = mesh.expect("a TLS target comes from the mesh");
            let certified = mesh.certified().ok_or(NoCertificate)?;
            let config = crate::tls::client_config(&certified, expected.clone())?;
            // The verifier checks the SPIFFE id; the name only fills SNI.
            let name = ServerName::try_from(expected.service_account.clone())
                .unwrap_or_else(|_| ServerName::try_from("mesh.local").expect("a valid name"));
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(MeshStream {
                io: TokioIo::new(EitherIo::Right(tls)),
                via_proxy,
            })
        })
    }
}

impl Connection for MeshStream {
    fn connected(&self) -> Connected {
        // A proxied connection makes hyper keep the absolute-form request line.
        Connected::new().proxy(self.via_proxy)
    }
}

impl hyper::rt::Read for MeshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MeshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
