//! What the outbound stack remembers about endpoints and services between requests: requests
//! in flight (for least-request balancing and the circuit breaker) and outlier-detection state
//! (consecutive failures, ejections). One per client, shared by the layers that use it.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::classify::Class;
use crate::fast_hash::FastMap;

#[derive(Debug, Default)]
struct EndpointState {
    in_flight: usize,
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
}

/// Whether an endpoint in `state` is ejected at `now`.
fn ejected(state: Option<&EndpointState>, now: Instant) -> bool {
    state
        .and_then(|e| e.ejected_until)
        .is_some_and(|until| now < until)
}

/// Per-endpoint and per-service traffic state.
#[derive(Debug, Default)]
pub struct Health {
    endpoints: Mutex<FastMap<SocketAddr, EndpointState>>,
    services: Mutex<FastMap<String, usize>>,
}

impl Health {
    /// Whether `addr` is ejected now.
    pub fn is_ejected(&self, addr: SocketAddr) -> bool {
        let endpoints = self
            .endpoints
            .lock()
            .expect("health lock is never poisoned");
        ejected(endpoints.get(&addr), Instant::now())
    }

    /// Those of `addrs` not ejected now, in order.
    pub fn not_ejected(&self, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
        let now = Instant::now();
        let endpoints = self
            .endpoints
            .lock()
            .expect("health lock is never poisoned");
        addrs
            .iter()
            .copied()
            .filter(|a| !ejected(endpoints.get(a), now))
            .collect()
    }

    /// Requests in flight to `addr`.
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        let endpoints = self
            .endpoints
            .lock()
            .expect("health lock is never poisoned");
        endpoints.get(&addr).map_or(0, |e| e.in_flight)
    }

    /// Counts a request to `addr` as started.
    pub fn start(&self, addr: SocketAddr) {
        let mut endpoints = self
            .endpoints
            .lock()
            .expect("health lock is never poisoned");
        endpoints.entry(addr).or_default().in_flight += 1;
    }

    /// Records how a request to `addr` (one of `peers`, its service's endpoints) ended, and
    /// ejects the endpoint when `plan` says so; true when it did.
    pub fn finish(
        &self,
        addr: SocketAddr,
        class: Class,
        plan: Option<&OutlierPlan>,
        peers: &[SocketAddr],
    ) -> bool {
        let now = Instant::now();
        let mut endpoints = self
            .endpoints
            .lock()
            .expect("health lock is never poisoned");
        let ejected_peers = peers
            .iter()
            .filter(|p| **p != addr)
            .filter(|p| {
                endpoints
                    .get(p)
                    .and_then(|e| e.ejected_until)
                    .is_some_and(|u| now < u)
            })
            .count();
        let state = endpoints.entry(addr).or_default();
        state.in_flight = state.in_flight.saturating_sub(1);
        if class.is_5xx() {
            state.consecutive_5xx += 1;
        } else {
            state.consecutive_5xx = 0;
        }
        if matches!(class, Class::GatewayError(_) | Class::ConnectFailure) {
            state.consecutive_gateway += 1;
        } else {
            state.consecutive_gateway = 0;
        }
        let Some(plan) = plan else {
            return false;
        };
        let tripped = plan
            .consecutive_5xx
            .is_some_and(|n| n > 0 && state.consecutive_5xx >= n)
            || plan
                .consecutive_gateway
                .is_some_and(|n| n > 0 && state.consecutive_gateway >= n);
        let already = state.ejected_until.is_some_and(|u| now < u);
        // maxEjectionPercent of the service's endpoints, counting this one.
        let total = peers.len().max(1);
        let allowed = (ejected_peers + 1) * 100 <= total * plan.max_ejection_percent as usize;
        if tripped && !already && allowed {
            state.ejections += 1;
            state.ejected_until = Some(now + plan.base_ejection * state.ejections);
            state.consecutive_5xx = 0;
            state.consecutive_gateway = 0;
            tracing::info!(endpoint = %addr, ejections = state.ejections, "outlier detection: endpoint ejected for {:?}", plan.base_ejection * state.ejections);
            return true;
        }
        false
    }

    /// Takes a slot for `service` unless `limit` are in flight; `false` means overflow.
    pub fn admit(&self, service: &str, limit: usize) -> bool {
        let mut services = self.services.lock().expect("health lock is never poisoned");
        if !services.contains_key(service) {
            services.insert(service.to_owned(), 0);
        }
        let in_flight = services.get_mut(service).expect("inserted above");
        if *in_flight >= limit {
            return false;
        }
        *in_flight += 1;
        true
    }

    /// Returns the slot [`admit`](Self::admit) took.
    pub fn release(&self, service: &str) {
        let mut services = self.services.lock().expect("health lock is never poisoned");
        if let Some(n) = services.get_mut(service) {
            *n = n.saturating_sub(1);
        }
    }
}

/// `outlierDetection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierPlan {
    /// Eject after this many 5xx (incl. connect failures) in a row; `None`: not on 5xx.
    pub consecutive_5xx: Option<u32>,
    /// Eject after this many 502/503/504 or connect failures in a row.
    pub consecutive_gateway: Option<u32>,
    /// Ejection lasts this long times the number of times the endpoint was ejected.
    pub base_ejection: std::time::Duration,
    /// At most this share of a service's endpoints is ejected at once.
    pub max_ejection_percent: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn plan() -> OutlierPlan {
        OutlierPlan {
            consecutive_5xx: Some(2),
            consecutive_gateway: None,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_for_a_growing_time_within_the_percentage() {
        let health = Health::default();
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let peers = [a, b];
        let fail = |addr| {
            health.start(addr);
            health.finish(addr, Class::ConnectFailure, Some(&plan()), &peers);
        };
        fail(a);
        assert!(!health.is_ejected(a), "one failure is not enough");
        fail(a);
        assert!(health.is_ejected(a));
        // 50 %: b cannot be ejected while a is.
        fail(b);
        fail(b);
        assert!(!health.is_ejected(b));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(!health.is_ejected(a), "back after the base ejection time");
        fail(a);
        fail(a);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(
            health.is_ejected(a),
            "the second ejection lasts twice as long"
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let health = Health::default();
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        for class in [
            Class::ServerError(http::StatusCode::INTERNAL_SERVER_ERROR),
            Class::Success(http::StatusCode::OK),
            Class::ServerError(http::StatusCode::INTERNAL_SERVER_ERROR),
        ] {
            health.start(a);
            health.finish(a, class, Some(&plan()), &[a]);
        }
        assert!(!health.is_ejected(a));
    }

    #[test]
    fn admission_counts_in_flight_per_service() {
        let health = Health::default();
        assert!(health.admit("reviews", 2));
        assert!(health.admit("reviews", 2));
        assert!(!health.admit("reviews", 2));
        assert!(health.admit("ratings", 2));
        health.release("reviews");
        assert!(health.admit("reviews", 2));
    }
}
