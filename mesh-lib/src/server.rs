//! The inbound entry of every service: bind, accept, serve HTTP/1.1 and HTTP/2 with keep-alive,
//! and drain in-flight requests on shutdown.
//!
//! This is the accept loop rather than `axum::serve` because the inbound mesh stack belongs
//! here: mTLS wraps the accepted socket before HTTP, and authorization and telemetry wrap the
//! router (see [`inbound_stack`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

/// How long shutdown waits for in-flight requests before closing their connections.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A listening socket that has not started serving yet.
#[derive(Debug)]
pub struct Server {
    name: String,
    listener: TcpListener,
    grace: Duration,
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
    /// Binds `addr` for the workload `name` (used in logs and errors).
    pub async fn bind(name: impl Into<String>, addr: SocketAddr) -> Result<Self, BindError> {
        let name = name.into();
        match TcpListener::bind(addr).await {
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
        }
    }

    /// Sets how long shutdown waits for in-flight requests.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
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
        let Self {
            name,
            listener,
            grace,
        } = self;
        let app = inbound_stack(app);
        let builder = auto::Builder::new(TokioExecutor::new());
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning on the error.
                        tracing::warn!(workload = %name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            // Small request/response exchanges are latency-bound; Nagle only adds delay.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
            }
            let service = TowerToHyperService::new(app.clone());
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, "connection ended with error: {e}");
                }
            });
        }
        drop(listener);
        tracing::debug!(workload = %name, "draining connections");
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(grace) => {
                tracing::warn!(workload = %name, "shutdown grace of {grace:?} elapsed; closing open connections");
            }
        }
    }
}

/// The inbound stack around a service's router, outermost first. Today: request spans and
/// access logs at `debug`. mTLS, authorization and inbound telemetry are added here.
pub fn inbound_stack(app: Router) -> Router {
    app.layer(TraceLayer::new_for_http())
}

#[cfg(test)]
mod tests {
    use super::*;

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
