//! Retries: up to the route's attempts (Istio's default: 2, on connection failures only), each
//! attempt re-routed from scratch below (so it may reach another subset and endpoint), with
//! jittered exponential backoff, and only while the retry budget allows.
//!
//! # Why a budget
//! A fixed "retry twice" triples the load on a backend that is already failing. The budget
//! caps retries at a fraction of recent requests (plus a small floor so low-traffic clients can
//! still retry), so retries can never multiply load by more than `1 + ratio`.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use super::plan::{RetryPlan, RoutePlan};
use crate::BoxError;
use crate::classify::{Class, classify};
pub use crate::shared::budget::RetryBudget;
use crate::telemetry::outbound::Attempt;

/// First backoff between attempts (Envoy's default base interval).
pub const BASE_BACKOFF: Duration = Duration::from_millis(25);
/// Longest backoff between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct RetryLayer {
    budget: Arc<RetryBudget>,
}

impl RetryLayer {
    pub fn new(budget: Arc<RetryBudget>) -> Self {
        Self { budget }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            budget: self.budget.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    budget: Arc<RetryBudget>,
}

fn should_retry(plan: &RetryPlan, class: Class) -> bool {
    let on = plan.on;
    match class {
        Class::Success(s) => on.conflict && s.as_u16() == 409,
        Class::ServerError(_) => on.server_error,
        Class::GatewayError(_) => on.server_error || on.gateway_error,
        Class::ConnectFailure => on.connect_failure || on.server_error || on.gateway_error,
        Class::Reset => on.reset || on.server_error,
        Class::Local => false,
    }
}

impl<S> Service<Request<Bytes>> for Retry<S>
where
    S: Service<Request<Bytes>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let budget = self.budget.clone();
        // Outside the mesh (no plan) the application's own policy is all there is.
        let Some(plan) = req
            .extensions()
            .get::<Arc<RoutePlan>>()
            .map(|p| p.retry.clone())
        else {
            return Box::pin(async move { tower::ServiceExt::oneshot(inner, req).await });
        };
        budget.deposit();
        Box::pin(async move {
            let mut backoff = BASE_BACKOFF;
            let mut attempt = 0;
            loop {
                // The same service for every attempt: a call's future owns what it needs.
                let call = tower::ServiceExt::ready(&mut inner)
                    .await?
                    .call(clone_request(&req));
                let result = match plan.per_try_timeout {
                    Some(limit) => match tokio::time::timeout(limit, call).await {
                        Ok(r) => r,
                        Err(_) => {
                            Err(Box::new(crate::classify::LocalError::RouteTimeout) as BoxError)
                        }
                    },
                    None => call.await,
                };
                let class = classify(&result);
                // A per-try timeout is retried like a gateway error, as Envoy does.
                let per_try_timed_out = plan.per_try_timeout.is_some() && class == Class::Local;
                let retryable = should_retry(&plan, class)
                    || (per_try_timed_out && (plan.on.gateway_error || plan.on.server_error));
                if attempt >= plan.attempts || !retryable {
                    return result;
                }
                if !budget.withdraw() {
                    if let Some(a) = req.extensions().get::<Attempt>() {
                        a.budget_exhausted();
                    }
                    return result;
                }
                if let Some(a) = req.extensions().get::<Attempt>() {
                    a.retried();
                }
                attempt += 1;
                tracing::debug!(attempt, ?class, "retrying");
                let jitter = backoff.mul_f64(fastrand::f64());
                tokio::time::sleep(jitter).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
    }
}

fn clone_request(req: &Request<Bytes>) -> Request<Bytes> {
    let mut out = Request::new(req.body().clone());
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.version_mut() = req.version();
    *out.headers_mut() = req.headers().clone();
    if let Some(plan) = req.extensions().get::<Arc<RoutePlan>>() {
        out.extensions_mut().insert(plan.clone());
    }
    if let Some(attempt) = req.extensions().get::<Attempt>() {
        out.extensions_mut().insert(attempt.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::time::Instant;
    use tower::ServiceExt;

    fn flaky(
        fail_first: u32,
        status_or_connect: Option<u16>,
    ) -> (
        impl Service<Request<Bytes>, Response = Response<Body>, Error = BoxError, Future = impl Send>
        + Clone
        + Send
        + 'static,
        Arc<AtomicU32>,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let svc = tower::service_fn(move |_req: Request<Bytes>| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < fail_first {
                    match status_or_connect {
                        Some(s) => Ok(Response::builder().status(s).body(Body::empty()).unwrap()),
                        None => {
                            Err(Box::new(crate::classify::ConnectError("refused".into()))
                                as BoxError)
                        }
                    }
                } else {
                    Ok(Response::new(Body::empty()))
                }
            }
        });
        (svc, calls)
    }

    fn request(plan: RetryPlan) -> Request<Bytes> {
        let mut req = Request::new(Bytes::new());
        req.extensions_mut().insert(Arc::new(RoutePlan {
            retry: plan,
            ..RoutePlan::default()
        }));
        req
    }

    #[tokio::test(start_paused = true)]
    async fn default_policy_retries_connect_failures_twice_but_not_503() {
        let (svc, calls) = flaky(2, None);
        let retry = RetryLayer::new(Arc::default()).layer(svc);
        let res = retry.oneshot(request(RetryPlan::default())).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let (svc, calls) = flaky(5, Some(503));
        let retry = RetryLayer::new(Arc::default()).layer(svc);
        let res = retry.oneshot(request(RetryPlan::default())).await.unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "503 is not a default retry condition"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn configured_attempts_and_conditions() {
        let (on, _) = super::super::plan::RetryOn::parse("gateway-error");
        let plan = RetryPlan {
            attempts: 3,
            per_try_timeout: None,
            on,
        };
        let (svc, calls) = flaky(10, Some(503));
        let res = RetryLayer::new(Arc::default())
            .layer(svc)
            .oneshot(request(plan))
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(calls.load(Ordering::SeqCst), 4, "1 try + 3 retries");
    }

    #[tokio::test(start_paused = true)]
    async fn per_try_timeout_cuts_each_attempt() {
        let (on, _) = super::super::plan::RetryOn::parse("gateway-error");
        let plan = RetryPlan {
            attempts: 1,
            per_try_timeout: Some(Duration::from_millis(100)),
            on,
        };
        let slow = tower::service_fn(|_req: Request<Bytes>| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, BoxError>(Response::new(Body::empty()))
        });
        let start = Instant::now();
        let err = RetryLayer::new(Arc::default())
            .layer(slow)
            .oneshot(request(plan))
            .await
            .unwrap_err();
        assert!(err.is::<crate::classify::LocalError>());
        assert!(
            start.elapsed() >= Duration::from_millis(200)
                && start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries_to_a_fraction_of_requests() {
        // No floor: retries may be at most 20 % of requests.
        let budget = Arc::new(RetryBudget::new(0.2, 0, Duration::from_secs(10)));
        let (on, _) = super::super::plan::RetryOn::parse("5xx");
        let plan = RetryPlan {
            attempts: 2,
            per_try_timeout: None,
            on,
        };
        let (svc, calls) = flaky(u32::MAX, Some(500));
        for _ in 0..100 {
            let _ = RetryLayer::new(budget.clone())
                .layer(svc.clone())
                .oneshot(request(plan.clone()))
                .await;
        }
        let total = calls.load(Ordering::SeqCst);
        assert!(
            total <= 120,
            "100 requests made {total} attempts; the budget allows 20 % extra"
        );
        assert!(total >= 115, "the budget was not used: {total}");
    }
}
