//! Workload identity from Kubernetes ServiceAccount tokens: a workload sends its projected
//! token (audience `meshd`) with its first CSR, and meshd asks the API server whether it is
//! valid (a TokenReview, as Istio's CA does). An authenticated
//! `system:serviceaccount:<namespace>:<name>` with meshd's audience proves that account; any
//! other answer proves nothing.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

/// The audience meshd expects in projected tokens.
pub const DEFAULT_AUDIENCE: &str = "meshd";

/// How long a review may take: a workload asking for its first certificate is told to try
/// again rather than held while the API server is away.
pub const REVIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a token proved nothing.
#[derive(Debug, thiserror::Error)]
pub enum TokenReviewError {
    #[error("the API server cannot review the token: {0}")]
    Api(#[from] kube::Error),
    #[error("the API server did not answer the TokenReview within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the token is not valid: {0}")]
    NotAuthenticated(String),
    #[error("the token is not for audience {0}")]
    Audience(String),
    #[error("the token belongs to {0}, not a service account")]
    NotServiceAccount(String),
}

/// Reviews tokens with the API server.
#[derive(Clone)]
pub struct TokenReviewer {
    client: kube::Client,
    audience: String,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        Self {
            client,
            audience: audience.into(),
        }
    }

    /// The (namespace, service account) `token` proves.
    pub async fn review(&self, token: &str) -> Result<(String, String), TokenReviewError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let answered =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| TokenReviewError::Timeout(REVIEW_TIMEOUT))??;
        let status = answered.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(TokenReviewError::NotAuthenticated(
                status
                    .error
                    .unwrap_or_else(|| "not authenticated".to_owned()),
            ));
        }
        // An API server that ignores audiences answers without them: that token may be meant
        // for anyone, so it proves nothing here.
        if !status
            .audiences
            .unwrap_or_default()
            .contains(&self.audience)
        {
            return Err(TokenReviewError::Audience(self.audience.clone()));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account_of(&username)
            .map(|(ns, sa)| (ns.to_owned(), sa.to_owned()))
            .ok_or(TokenReviewError::NotServiceAccount(username))
    }
}

/// `system:serviceaccount:<namespace>:<name>` → (namespace, name).
pub fn service_account_of(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then_some((namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_account_usernames_name_an_account() {
        assert_eq!(
            service_account_of("system:serviceaccount:default:bookinfo-ratings"),
            Some(("default", "bookinfo-ratings"))
        );
        for other in [
            "system:node:minikube",
            "admin",
            "system:serviceaccount::x",
            "system:serviceaccount:default:",
            "system:serviceaccount:default:a:b",
        ] {
            assert_eq!(service_account_of(other), None, "{other}");
        }
    }
}
