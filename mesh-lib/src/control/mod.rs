//! The data plane's side of the control plane: [`client`] gets and renews the workload's
//! certificate and follows snapshots; [`connector`] opens the TLS 1.3 channel to meshd,
//! verifying meshd against the root given out of band before a token leaves the workload.
//!
//! The API itself (`mesh.proto`), the snapshot it carries and the identities both sides
//! check live in `mesh-proto`, which meshd shares without linking this crate's proxies.

pub mod client;
pub mod connector;

pub use mesh_proto::{DEFAULT_CONTROL_PORT, Endpoint, MAX_SNAPSHOT_BYTES, Snapshot, pb};
