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

/// The destination chosen for this attempt: one of its plan's, which it shares rather than
/// copies (a destination holds its labels and policy).
#[derive(Debug, Clone)]
pub struct Chosen {
    plan: Arc<RoutePlan>,
    index: usize,
}

impl Chosen {
    pub fn destination(&self) -> &Destination {
        &self.plan.destinations[self.index]
    }
}

/// The index of the destination a `roll` in `0..total` weight picks (cumulative weights).
pub fn pick(destinations: &[Destination], roll: u64) -> Option<usize> {
    let mut acc = 0u64;
    for (i, d) in destinations.iter().enumerate() {
        acc += u64::from(d.weight);
        if roll < acc {
            return Some(i);
        }
    }
    destinations.len().checked_sub(1)
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
            let index = if total == 0 {
                (!plan.destinations.is_empty()).then_some(0)
            } else {
                pick(&plan.destinations, fastrand::u64(..total))
            }?;
            Some(Chosen {
                plan: Arc::clone(plan),
                index,
            })
        });
        if let Some(chosen) = chosen {
            req.extensions_mut().insert(chosen);
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
        let subset = |roll| d[pick(&d, roll).unwrap()].subset.as_deref();
        assert_eq!(subset(0), Some("v1"));
        assert_eq!(subset(49), Some("v1"));
        assert_eq!(subset(50), Some("v3"));
        assert_eq!(subset(99), Some("v3"));
        let d = [dest("v1", 90), dest("v2", 10)];
        let v2 = (0..100)
            .filter(|r| d[pick(&d, *r).unwrap()].subset.as_deref() == Some("v2"))
            .count();
        assert_eq!(v2, 10);
    }
}
