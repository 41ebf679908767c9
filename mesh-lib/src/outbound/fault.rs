//! Fault injection, on the caller's side of the hop as in Istio: a delay holds the request
//! before it leaves; an abort answers in place of the upstream with the configured status and
//! Envoy's body `fault filter abort`. It sits above timeout and retry, so an injected delay is
//! not cut short by the route's own timeout and an injected abort is not retried.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use super::plan::RoutePlan;
use crate::BoxError;
use crate::telemetry::outbound::Attempt;

/// Decides whether a percentage applies to this request.
pub type Roll = Arc<dyn Fn(f64) -> bool + Send + Sync>;

/// `true` for `percent` % of calls.
pub fn random_roll() -> Roll {
    Arc::new(|percent| fastrand::f64() * 100.0 < percent)
}

#[derive(Clone)]
pub struct FaultLayer {
    roll: Roll,
}

impl FaultLayer {
    pub fn new(roll: Roll) -> Self {
        Self { roll }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Fault {
            inner,
            roll: self.roll.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Fault<S> {
    inner: S,
    roll: Roll,
}

impl<S> Service<Request<Bytes>> for Fault<S>
where
    S: Service<Request<Bytes>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let fault = req
            .extensions()
            .get::<Arc<RoutePlan>>()
            .and_then(|p| p.fault.clone());
        // Without a fault the request goes straight on: no copy of the stack below.
        let Some(fault) = fault else {
            return Box::pin(self.inner.call(req));
        };
        let mut inner = super::take_ready(&mut self.inner);
        let roll = self.roll.clone();
        Box::pin(async move {
            let attempt = req.extensions().get::<Attempt>().cloned();
            if let Some((delay, percent)) = fault.delay
                && roll(percent)
            {
                if let Some(a) = &attempt {
                    a.flag("DI");
                }
                tokio::time::sleep(delay).await;
            }
            if let Some((status, percent)) = fault.abort
                && roll(percent)
            {
                return Ok(crate::respond::fault_abort(status));
            }
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tower::ServiceExt;

    use crate::outbound::plan::FaultPlan;

    fn request(fault: FaultPlan) -> Request<Bytes> {
        let mut req = Request::new(Bytes::new());
        req.extensions_mut().insert(Arc::new(RoutePlan {
            fault: Some(fault),
            ..RoutePlan::default()
        }));
        req
    }

    fn upstream()
    -> impl Service<Request<Bytes>, Response = Response<Body>, Error = BoxError, Future = impl Send>
    + Clone
    + Send
    + 'static {
        tower::service_fn(|_req: Request<Bytes>| async {
            Ok::<_, BoxError>(Response::new(Body::from("upstream")))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_holds_the_request_for_the_fixed_delay() {
        let svc = FaultLayer::new(Arc::new(|_| true)).layer(upstream());
        let start = tokio::time::Instant::now();
        let res = svc
            .oneshot(request(FaultPlan {
                delay: Some((Duration::from_secs(7), 100.0)),
                abort: None,
            }))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(start.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_answers_with_the_status_and_envoys_body() {
        let svc = FaultLayer::new(Arc::new(|_| true)).layer(upstream());
        let res = svc
            .oneshot(request(FaultPlan {
                delay: None,
                abort: Some((555, 100.0)),
            }))
            .await
            .unwrap();
        assert_eq!(res.status(), 555);
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body.as_ref(), crate::respond::FAULT_ABORT_BODY.as_bytes());
    }

    #[tokio::test]
    async fn the_percentage_decides_per_request() {
        let svc = FaultLayer::new(random_roll()).layer(upstream());
        let mut aborted = 0;
        for _ in 0..1000 {
            let res = svc
                .clone()
                .oneshot(request(FaultPlan {
                    delay: None,
                    abort: Some((500, 30.0)),
                }))
                .await
                .unwrap();
            if res.status() == 500 {
                aborted += 1;
            }
        }
        // Binomial(1000, 0.3): mean 300, sd 14.5.
        assert!((220..380).contains(&aborted), "{aborted}");
    }
}
