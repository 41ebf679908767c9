//! The routing decision for one request, made once at the top of the outbound stack (from the
//! VirtualService that matched, or Istio's defaults) and read by every layer below it from
//! the request's extensions.

use std::collections::BTreeMap;

pub use crate::shared::health::OutlierPlan;
use std::time::Duration;

/// Istio's retry policy when a route gives none: 2 retries on connection failures and
/// refused streams (503 is not retried since Istio 1.24).
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;

/// Where a request may go and how it must be treated on the way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutePlan {
    /// Weighted destinations; empty means "the service the host names".
    pub destinations: Vec<Destination>,
    /// The route's timeout (Istio: none unless configured).
    pub timeout: Option<Duration>,
    pub retry: RetryPlan,
    pub fault: Option<FaultPlan>,
    /// Why this plan: `<namespace>/<virtual-service>#<rule>` or `default`.
    pub source: String,
}

/// One weighted destination of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The service (short name).
    pub service: String,
    pub namespace: String,
    pub subset: Option<String>,
    /// Labels endpoints must carry (from the DestinationRule subset); empty: all endpoints.
    pub subset_labels: BTreeMap<String, String>,
    pub weight: u32,
    /// The DestinationRule's traffic policy for this destination (subset over host).
    pub policy: TrafficPlan,
}

/// How traffic to a destination's endpoints is spread and protected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficPlan {
    pub lb: LbPolicy,
    /// `connectionPool`: requests beyond `tcp.maxConnections + http.http1MaxPendingRequests`
    /// in flight to the service overflow with 503.
    pub max_in_flight: Option<usize>,
    pub outlier: Option<OutlierPlan>,
    /// `tls.mode: DISABLE` turns mTLS off toward this destination.
    pub tls_disabled: bool,
}

/// `loadBalancer.simple`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    Random,
    /// Power of two choices by requests in flight.
    LeastRequest,
}

/// When and how often to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPlan {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
}

impl Default for RetryPlan {
    fn default() -> Self {
        Self {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            per_try_timeout: None,
            on: RetryOn::default(),
        }
    }
}

/// Envoy's `retryOn` conditions that apply to HTTP/1.1 traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx answer, connection failures and resets.
    pub server_error: bool,
    /// `gateway-error`: 502, 503, 504.
    pub gateway_error: bool,
    /// `connect-failure` (also implied by `refused-stream`, `unavailable`, `cancelled` for
    /// HTTP/1.1 upstreams, where those gRPC/HTTP2 signals surface as failed connects).
    pub connect_failure: bool,
    /// `reset`: the connection broke after the request was sent.
    pub reset: bool,
    /// `retriable-4xx`: 409.
    pub conflict: bool,
}

impl Default for RetryOn {
    /// Istio's default: `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`.
    fn default() -> Self {
        Self {
            server_error: false,
            gateway_error: false,
            connect_failure: true,
            reset: false,
            conflict: false,
        }
    }
}

impl RetryOn {
    /// Parses Envoy's comma-separated list; unknown conditions are returned for a warning.
    pub fn parse(list: &str) -> (Self, Vec<String>) {
        let mut on = Self {
            connect_failure: false,
            ..Self::default()
        };
        let mut unknown = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "5xx" => on.server_error = true,
                "gateway-error" => on.gateway_error = true,
                "connect-failure"
                | "refused-stream"
                | "unavailable"
                | "cancelled"
                | "retriable-status-codes"
                | "resource-exhausted"
                | "deadline-exceeded" => {
                    on.connect_failure = true;
                }
                "reset" | "reset-before-request" => on.reset = true,
                "retriable-4xx" => on.conflict = true,
                other => unknown.push(other.to_owned()),
            }
        }
        (on, unknown)
    }
}

/// A fault to inject before the request leaves.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// Hold the request this long, for this percentage of requests.
    pub delay: Option<(Duration, f64)>,
    /// Answer with this status instead, for this percentage of requests.
    pub abort: Option<(u16, f64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_lists() {
        let (on, unknown) = RetryOn::parse("gateway-error,connect-failure,refused-stream,bogus");
        assert!(on.gateway_error && on.connect_failure && !on.server_error);
        assert_eq!(unknown, ["bogus"]);
        let (on, _) = RetryOn::parse("5xx");
        assert!(on.server_error && !on.connect_failure);
        assert!(RetryOn::default().connect_failure && !RetryOn::default().gateway_error);
    }
}
