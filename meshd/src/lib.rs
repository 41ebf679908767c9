//! meshd, the mesh's control plane, as a library: the `meshd` binary and the in-process
//! `bookinfo` launcher both run it. Services never link it: the API, the snapshot and the
//! identities both sides check are `mesh-proto`'s; the data plane's side of the API is
//! `mesh::control`.
//!
//! - [`ca`]: the root that signs workload certificates and meshd's own serving certificate.
//! - [`listener`]: the API's TLS 1.3 transport and the caller's proven identity.
//! - [`registration`]: which registrations an identity may make.
//! - [`server`]: the gRPC service: certificates, the registry, the snapshot stream.
//! - [`daemon`]: all of it started together with the watched config directories.
//! - [`config_watch`]: when the config is read again (filesystem events, a slow poll).
//! - [`dashboard`]: the live service graph and recent traces.
#![forbid(unsafe_code)]

pub mod ca;
pub mod config_watch;
pub mod daemon;
pub mod dashboard;
pub mod kubernetes;
pub mod listener;
pub mod registration;
pub mod server;

pub use ca::{CaError, CertificateAuthority};
