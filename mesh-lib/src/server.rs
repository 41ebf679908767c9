//! The inbound entry of every service: bind, accept, serve HTTP/1.1 and HTTP/2 with keep-alive
//! within the listener's [`ServerLimits`], and drain in-flight requests on shutdown.
//!
//! This is the accept loop rather than `axum::serve` because the inbound mesh stack belongs
//! here: mTLS wraps the accepted socket before HTTP, and authorization and telemetry wrap the
//! router (see [`crate::inbound::stack`]); and because what a listener accepts (how many connections,
//! for how long) is decided per connection, before hyper sees it.

mod activity;
mod admission;
mod conn;
mod limits;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use activity::BodyReadTimeout;
pub use limits::{
    DEFAULT_BODY_READ_TIMEOUT, DEFAULT_CLOSE_TIMEOUT, DEFAULT_FIRST_BYTE_TIMEOUT,
    DEFAULT_H2_KEEP_ALIVE_INTERVAL, DEFAULT_H2_KEEP_ALIVE_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUEST_HEADERS_BYTES, LimitsError,
    MIN_REQUEST_HEADERS_BYTES, ServerLimits,
};

use crate::dataplane::Mesh;
use admission::{Admission, PROCESS_CONNECTIONS, REFUSAL_WARNING_INTERVAL, RefusalWarnings};

/// How long shutdown waits for in-flight requests before closing their connections.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub use crate::inbound::TLS_HANDSHAKE_TIMEOUT;

/// How long the accept loop pauses after a failed accept (usually EMFILE), so it does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// An IPv6 listener on `addr` that takes IPv4 too (`IPV6_V6ONLY` off whatever the system's
/// `bindv6only` default).
fn listen_dual_stack(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// The accept backlog of a listener bound by hand (tokio's own default).
const LISTEN_BACKLOG: i32 = 1024;

/// Whether binding `[::]` failed because this machine has no IPv6 (a kernel booted with
/// `ipv6.disable=1`, a container without it), rather than for a reason IPv4 would share.
fn ipv6_is_off(error: &io::Error) -> bool {
    // EAFNOSUPPORT: no IPv6 sockets at all; EADDRNOTAVAIL: no IPv6 address to bind.
    const EAFNOSUPPORT: i32 = 97;
    error.kind() == io::ErrorKind::AddrNotAvailable || error.raw_os_error() == Some(EAFNOSUPPORT)
}

/// A listening socket that has not started serving yet.
#[derive(Debug)]
pub struct Server {
    name: String,
    listener: TcpListener,
    grace: Duration,
    mesh: Option<Mesh>,
    limits: ServerLimits,
}

/// A listener's socket on its way to another thread's runtime (see [`Server::for_workers`]).
#[derive(Debug)]
pub struct SharedServer {
    name: String,
    listener: std::net::TcpListener,
    grace: Duration,
    mesh: Option<Mesh>,
    limits: ServerLimits,
}

impl SharedServer {
    /// The listener, registered with the runtime this is called in.
    pub fn into_server(self) -> io::Result<Server> {
        self.listener.set_nonblocking(true)?;
        Ok(Server {
            name: self.name,
            listener: TcpListener::from_std(self.listener)?,
            grace: self.grace,
            mesh: self.mesh,
            limits: self.limits,
        })
    }
}

/// The listening socket could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{name} cannot listen on {addr}: {source}{hint}")]
pub struct BindError {
    pub name: String,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
    hint: &'static str,
}

impl Server {
    /// Binds `addr` for the workload `name` (used in logs and errors). `[::]` is dual-stack
    /// (IPv6 and IPv4-mapped IPv4, as upstream's `[::]:9080`), and falls back to `0.0.0.0`
    /// where the machine has IPv6 turned off.
    pub async fn bind(name: impl Into<String>, addr: SocketAddr) -> Result<Self, BindError> {
        let name = name.into();
        let bound = if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
            match listen_dual_stack(addr) {
                Err(e) if ipv6_is_off(&e) => {
                    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
                    tracing::info!("{name}: IPv6 is off here ({e}); listening on {v4} instead");
                    TcpListener::bind(v4).await
                }
                other => other,
            }
        } else {
            TcpListener::bind(addr).await
        };
        match bound {
            Ok(listener) => Ok(Self::from_listener(name, listener)),
            Err(source) => {
                let hint = match source.kind() {
                    io::ErrorKind::AddrInUse => {
                        " (another process uses this port; stop it or choose another port)"
                    }
                    io::ErrorKind::PermissionDenied => {
                        " (ports below 1024 need privileges; choose a higher port)"
                    }
                    io::ErrorKind::AddrNotAvailable => " (this machine has no such address)",
                    _ => "",
                };
                Err(BindError {
                    name,
                    addr,
                    source,
                    hint,
                })
            }
        }
    }

    pub fn from_listener(name: impl Into<String>, listener: TcpListener) -> Self {
        Self {
            name: name.into(),
            listener,
            grace: DEFAULT_SHUTDOWN_GRACE,
            mesh: None,
            limits: ServerLimits::default(),
        }
    }

    /// This listener for `workers` threads: itself, and `workers - 1` copies of its socket
    /// for other threads' runtimes ([`SharedServer::into_server`] there). The kernel hands
    /// each new connection to one of them. The connection limit is split between them, so
    /// the listener as a whole still holds at most its `max_connections`.
    pub fn for_workers(mut self, workers: usize) -> io::Result<(Self, Vec<SharedServer>)> {
        let workers = workers.max(1);
        self.limits.max_connections = (self.limits.max_connections / workers).max(1);
        let copies = (1..workers)
            .map(|_| {
                let socket = socket2::SockRef::from(&self.listener).try_clone()?;
                Ok(SharedServer {
                    name: self.name.clone(),
                    listener: socket.into(),
                    grace: self.grace,
                    mesh: self.mesh.clone(),
                    limits: self.limits.clone(),
                })
            })
            .collect::<io::Result<_>>()?;
        Ok((self, copies))
    }

    /// Serves through this workload's data plane: mTLS per PeerAuthentication, the peer's
    /// identity on every request, and AuthorizationPolicy enforcement.
    pub fn with_mesh(mut self, mesh: Mesh) -> Self {
        self.mesh = Some(mesh);
        self
    }

    /// Sets how long shutdown waits for in-flight requests.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Replaces the default [`ServerLimits`].
    pub fn with_limits(mut self, limits: ServerLimits) -> Result<Self, LimitsError> {
        limits.validate()?;
        self.limits = limits;
        Ok(self)
    }

    pub fn limits(&self) -> &ServerLimits {
        &self.limits
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Serves `app` until `shutdown` resolves, then stops accepting and waits up to the grace
    /// period for in-flight requests.
    pub async fn serve(self, app: Router, shutdown: impl Future<Output = ()>) {
        let grace = self.grace;
        self.serve_with_grace(app, async move {
            shutdown.await;
            grace
        })
        .await;
    }

    /// [`serve`](Self::serve), where `shutdown` also says how long to wait for in-flight
    /// requests (zero: drop them at once, as a crash would).
    pub async fn serve_with_grace(self, app: Router, shutdown: impl Future<Output = Duration>) {
        let Self {
            name,
            listener,
            grace: _,
            mesh,
            limits,
        } = self;
        let budget = crate::nofile::inbound_connection_budget();
        let max = limits.max_connections.min(budget);
        if max < limits.max_connections {
            tracing::info!(
                workload = %name,
                "at most {max} connections: the open-file limit allows no more"
            );
        }
        let admission = Admission::new(max, budget, &PROCESS_CONNECTIONS);
        let listener_state = Arc::new(conn::Listener {
            app: crate::inbound::stack(app, mesh.clone()),
            http: http_builder(&limits),
            mesh,
            limits,
        });
        let mut refusals = RefusalWarnings::new(REFUSAL_WARNING_INTERVAL);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        let grace;
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning on the error.
                        tracing::warn!(workload = %name, "accept failed: {e}");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
                Some(ended) = conns.join_next() => {
                    if let Err(e) = ended
                        && e.is_panic()
                    {
                        tracing::error!(workload = %name, "a connection task panicked: {e}");
                    }
                    continue;
                }
                g = &mut shutdown => {
                    grace = g;
                    break;
                }
            };
            let ticket = match admission.admit() {
                Ok(ticket) => ticket,
                Err(admission::Refused) => {
                    if let Some(refused) = refusals.refused(tokio::time::Instant::now()) {
                        tracing::warn!(
                            workload = %name,
                            "refused {refused} connection(s): full (at most {max} here, \
                             {budget} in the process) and every connection has a request in flight"
                        );
                    }
                    // Closed at once: holding it until a slot frees would hold the descriptor
                    // the limit is there to save.
                    drop(stream);
                    continue;
                }
            };
            // Small request/response exchanges are latency-bound; Nagle only adds delay.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
            }
            conns.spawn(conn::serve(
                stream,
                peer,
                Arc::clone(&listener_state),
                ticket,
            ));
        }
        drop(listener);
        tracing::debug!(workload = %name, "draining connections");
        // Every connection hears it before the grace can run out, even a zero grace.
        admission.close_all();
        let drained = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!(workload = %name, "shutdown grace of {grace:?} elapsed; closing open connections");
            conns.shutdown().await;
        }
    }
}

/// hyper's HTTP settings for one listener's limits.
fn http_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The connection driver times the head from its first byte; hyper's timer would also
        // run while a kept-alive connection waits, closing pooled connections early.
        .header_read_timeout(None)
        // A partial head that fills the buffer is answered 431.
        .max_buf_size(limits.max_request_headers_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(
            u32::try_from(limits.max_request_headers_bytes)
                .expect("validated ServerLimits fit in u32"),
        )
        .keep_alive_interval(limits.h2_keep_alive_interval)
        .keep_alive_timeout(limits.h2_keep_alive_timeout);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_ipv6_falls_back_to_ipv4() {
        assert!(ipv6_is_off(&io::Error::from_raw_os_error(97)));
        assert!(ipv6_is_off(&io::Error::from(
            io::ErrorKind::AddrNotAvailable
        )));
        assert!(!ipv6_is_off(&io::Error::from(io::ErrorKind::AddrInUse)));
        assert!(!ipv6_is_off(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));
    }

    #[tokio::test]
    async fn taken_port_is_a_clear_error() {
        let first = Server::bind("details", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let err = Server::bind("ratings", first.local_addr())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("ratings cannot listen on 127.0.0.1:"),
            "{msg}"
        );
        assert!(msg.contains("another process uses this port"), "{msg}");
    }
}
