//! mesh-lib: the single seam through which every Bookinfo service serves and calls out.
//!
//! Services never touch sockets or HTTP clients directly. They hand their axum `Router` to
//! [`server::Server`] and make every outbound call through [`outbound::Client`]. Mesh features
//! (mTLS, routing, retries, tracing, metrics) arrive as tower layers inside those two stacks,
//! so service code does not change when they do.
//!
//! - [`server`]: the inbound entry: bind with a clear error, accept loop, TCP_NODELAY,
//!   keep-alive, connection and header limits ([`ServerLimits`]), graceful shutdown.
//! - [`nofile`]: the process's open-file limit, raised at start, that bounds every listener.
//! - [`outbound`]: the outbound client: per-request endpoint choice, pooled connections,
//!   per-call timeouts.
//! - [`propagation`]: which request headers a service forwards on its outbound calls.
//! - [`env`], [`cli`], [`logging`], [`shutdown`], [`run`]: what every service binary shares.
#![forbid(unsafe_code)]

#[cfg(feature = "mimalloc")]
mod alloc;
pub(crate) mod classify;
pub mod cli;
pub mod compiled;
pub mod control;
pub mod dataplane;
pub mod env;
mod fast_hash;
pub mod inbound;
pub mod io;
pub mod logging;
pub mod nofile;
pub mod outbound;
pub mod propagation;
pub mod respond;
pub mod run;
pub mod server;
pub(crate) mod shared;
pub mod shutdown;
pub mod telemetry;
mod token_bucket;
pub mod workload;

/// SPIFFE identities and the TLS that checks them, shared with meshd (`mesh-proto`).
pub use mesh_proto::{identity, tls};

pub use dataplane::{Mesh, PeerIdentity};
pub use nofile::raise_nofile_limit;
pub use outbound::{Client, Endpoints, OutboundError};
pub use server::{BindError, Server, ServerLimits};

/// The global allocator this build uses (see the `mimalloc` feature), for benchmarks to report.
pub const GLOBAL_ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "the system's malloc"
};

/// The error type every layer of the mesh stacks returns: boxed, inspected by downcasting.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
