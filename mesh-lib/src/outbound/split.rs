//! Weighted destination choice, per request: each request independently picks one of the
//! route's destinations by weight (Istio's traffic shifting; 100 page loads land within a few
//! percent of the weights). Sits below retry, so a retried attempt chooses again.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use tower::{Layer, Service};

use super::plan::{Destination, RoutePlan};
use crate::BoxError;

/// The destination chosen for this attempt.
#[derive(Debug, Clone)]
pub struct Chosen(pub Arc<Destination>);

/// Picks by cumulative weight; `roll` is in `0..total`.
pub fn pick(destinations: &[Destination], roll: u64) -> Option<&Destination> {
    let mut acc = 0u64;
    for d in destinations {
        acc += u64::from(d.weight);
        if roll < acc {
            return Some(d);
        }
    }
    destinations.last()
}

#[derive(Debug, Clone, Default)]
pub struct SplitLayer;

impl<S> Layer<S> for SplitLayer {
    type Service = Split<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Split { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Split<S> {
    inner: S,
}

impl<S> Service<Request<Bytes>> for Split<S>
where
    S: Service<Request<Bytes>, Response = Response<Body>, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        let chosen = req.extensions().get::<Arc<RoutePlan>>().and_then(|plan| {
            let total: u64 = plan.destinations.iter().map(|d| u64::from(d.weight)).sum();
            if total == 0 {
                return plan.destinations.first().cloned();
            }
            pick(&plan.destinations, fastrand::u64(..total)).cloned()
        });
        if let Some(destination) = chosen {
            req.extensions_mut().insert(Chosen(Arc::new(destination)));
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(subset: &str, weight: u32) -> Destination {
        Destination {
            service: "reviews".into(),
            namespace: "default".into(),
            subset: Some(subset.into()),
            subset_labels: Default::default(),
            weight,
            policy: Default::default(),
        }
    }

    #[test]
    fn picks_by_cumulative_weight() {
        let d = [dest("v1", 50), dest("v3", 50)];
        assert_eq!(pick(&d, 0).unwrap().subset.as_deref(), Some("v1"));
        assert_eq!(pick(&d, 49).unwrap().subset.as_deref(), Some("v1"));
        assert_eq!(pick(&d, 50).unwrap().subset.as_deref(), Some("v3"));
        assert_eq!(pick(&d, 99).unwrap().subset.as_deref(), Some("v3"));
        let d = [dest("v1", 90), dest("v2", 10)];
        let v2 = (0..100)
            .filter(|r| pick(&d, *r).unwrap().subset.as_deref() == Some("v2"))
            .count();
        assert_eq!(v2, 10);
    }
}
