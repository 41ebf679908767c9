//! The mesh's proxies, built from the same tower layers as the embedded data plane (the
//! `mesh` crate): the ingress [`gateway`] and the [`sidecar`], and the relaying they share
//! (`forward`). Services that embed the mesh do not link this crate; the `mesh-proxy`
//! binary and the launcher (which runs the gateway in-process) do.

pub mod gateway;
pub mod sidecar;

mod forward;
