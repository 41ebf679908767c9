//! Fault injection, on the caller's side of the hop as in Istio: a delay holds the request
//! before it leaves; an abort answers in place of the upstream with the configured status and
//! Envoy's body `fault filter abort`. It sits above timeout and retry, so an injected delay is
//! not cut short by the route's own timeout and an injected abort is not retried.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use tower::{Layer, Service};

use super::BoxFuture;
use super::plan::RoutePlan;
use crate::BoxError;

/// The body of an injected abort.
pub const ABORT_BODY: &str = "fault filter abort";

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
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fault = req
            .extensions()
            .get::<Arc<RoutePlan>>()
            .and_then(|p| p.fault.clone());
        let roll = self.roll.clone();
        Box::pin(async move {
            if let Some(fault) = fault {
                if let Some((delay, percent)) = fault.delay
                    && roll(percent)
                {
                    tokio::time::sleep(delay).await;
                }
                if let Some((status, percent)) = fault.abort
                    && roll(percent)
                {
                    let status =
                        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    return Ok(Response::builder()
                        .status(status)
                        .header(header::CONTENT_TYPE, "text/plain")
                        .body(Body::from(ABORT_BODY))
                        .expect("a valid synthetic response"));
                }
            }
            inner.call(req).await
        })
    }
}
