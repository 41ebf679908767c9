//! meshd's Kubernetes side: the mesh's resources read from the API server as `kubectl apply`
//! wrote them ([`config_source`]), workload identities proven by ServiceAccount tokens
//! ([`token_review`]), and endpoints from EndpointSlices and Pods ([`endpoints`]).
//!
//! Everything here is hostile input like the rest of meshd's: objects go through the same
//! parser, validation and limits as files, and an API server that goes away leaves the last
//! good config in force.

pub mod config_source;
pub mod endpoints;
pub mod token_review;

pub use config_source::{ConfigSource, KINDS, MeshKind};
pub use token_review::{TokenReviewError, TokenReviewer};

/// A client from the environment: in a pod, its ServiceAccount and the API server it names;
/// elsewhere `KUBECONFIG` or `~/.kube/config`.
pub async fn client_from_env() -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    kube::Client::try_from(config)
}
