//! The local rate limit's token bucket, and the slot that keeps one per workload: rebuilt
//! full when the workload's `LocalRateLimit` changes, otherwise shared by every listener and
//! worker thread of the workload (its [`Mesh`](crate::dataplane::Mesh) owns it), so the
//! limit does not multiply with the threads that serve it.

use std::sync::Mutex;
use std::time::Duration;

use mesh_config::LocalRateLimit;
use tokio::time::Instant;

/// A bucket that starts full and gains `per_fill` tokens (up to `max`) every `interval`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TokenBucket {
    max: u32,
    per_fill: u32,
    interval: Duration,
    tokens: u32,
    last_fill: Instant,
}

impl TokenBucket {
    pub(crate) fn new(max: u32, per_fill: u32, interval: Duration) -> Self {
        Self {
            max,
            per_fill,
            interval,
            tokens: max,
            last_fill: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn try_take(&mut self) -> bool {
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

/// One workload's bucket, for the policy it was built from.
#[derive(Debug, Default)]
pub(crate) struct WorkloadBucket(Mutex<Option<(LocalRateLimit, TokenBucket)>>);

impl WorkloadBucket {
    /// Takes a token under `policy`, starting a full bucket when the policy is new.
    pub(crate) fn try_take(&self, policy: &LocalRateLimit) -> bool {
        let mut slot = self.0.lock().expect("rate limit lock is never poisoned");
        if slot.as_ref().is_none_or(|(p, _)| p != policy) {
            let bucket = TokenBucket::new(
                policy.max_tokens,
                policy.tokens_per_fill,
                policy.fill_interval,
            );
            *slot = Some((policy.clone(), bucket));
        }
        slot.as_mut().expect("just set").1.try_take()
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
