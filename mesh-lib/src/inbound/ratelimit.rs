//! Local rate limiting on a workload's inbound side: a token bucket per workload, configured by
//! a `LocalRateLimit` resource (our own kind; Istio needs an EnvoyFilter for the same). When
//! the bucket is empty the request is answered at once, 429 by default, with the configured
//! headers (`x-local-rate-limit: true`). It sits before authorization and the service, so a
//! flood costs neither.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::dataplane::Mesh;
use mesh_config::{LocalRateLimit, Workload};

/// A bucket that starts full and gains `per_fill` tokens (up to `max`) every `interval`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    max: u32,
    per_fill: u32,
    interval: Duration,
    tokens: u32,
    last_fill: Instant,
}

impl TokenBucket {
    pub fn new(max: u32, per_fill: u32, interval: Duration) -> Self {
        Self {
            max,
            per_fill,
            interval,
            tokens: max,
            last_fill: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self) -> bool {
        if !self.interval.is_zero() {
            let fills = (self.last_fill.elapsed().as_nanos() / self.interval.as_nanos()) as u32;
            if fills > 0 {
                self.tokens = self.max.min(
                    self.tokens
                        .saturating_add(fills.saturating_mul(self.per_fill)),
                );
                self.last_fill += self.interval * fills;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// The limiter of one workload: its bucket, rebuilt when the policy changes.
#[derive(Clone)]
pub(crate) struct Limiter {
    mesh: Mesh,
    bucket: Arc<Mutex<Option<(LocalRateLimit, TokenBucket)>>>,
}

impl Limiter {
    pub(crate) fn new(mesh: Mesh) -> Self {
        Self {
            mesh,
            bucket: Arc::default(),
        }
    }

    /// The answer for `request` when the bucket is empty; `None` lets it through.
    pub(crate) fn refuse(&self, request: &Request) -> Option<Response> {
        let snapshot = self.mesh.snapshot();
        let workload = Workload {
            namespace: &self.mesh.identity().namespace,
            labels: self.mesh.labels(),
        };
        let policy = snapshot.config.local_rate_limit(&workload)?;
        let allowed = {
            let mut slot = self
                .bucket
                .lock()
                .expect("rate limit lock is never poisoned");
            if slot.as_ref().is_none_or(|(p, _)| p != policy) {
                let bucket = TokenBucket::new(
                    policy.max_tokens,
                    policy.tokens_per_fill,
                    policy.fill_interval,
                );
                *slot = Some((policy.clone(), bucket));
            }
            slot.as_mut().expect("just set").1.try_take()
        };
        if allowed {
            return None;
        }
        tracing::debug!(workload = %self.mesh.service(), "local rate limit: {} refused", request.uri().path());
        let status =
            StatusCode::from_u16(policy.status_code).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
        let mut response = (status, "local_rate_limited").into_response();
        for (name, value) in &policy.response_headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::try_from(name.as_str()),
                HeaderValue::from_str(value),
            ) {
                response.headers_mut().insert(n, v);
            }
        }
        Some(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn four_per_minute_then_429_until_the_next_fill() {
        let mut bucket = TokenBucket::new(4, 4, Duration::from_secs(60));
        let mut results = Vec::new();
        for _ in 0..5 {
            results.push(bucket.try_take());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(results, [true, true, true, true, false]);
        tokio::time::advance(Duration::from_secs(55)).await;
        assert!(bucket.try_take(), "refilled after 60 s");
    }

    #[tokio::test(start_paused = true)]
    async fn partial_fills_never_exceed_the_bucket() {
        let mut bucket = TokenBucket::new(2, 1, Duration::from_secs(1));
        assert!(bucket.try_take() && bucket.try_take() && !bucket.try_take());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(
            bucket.try_take() && bucket.try_take() && !bucket.try_take(),
            "at most max tokens"
        );
    }
}
