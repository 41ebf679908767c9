//! What a workload's clients and worker threads share, below both the workload's `Mesh`
//! (which owns it) and the outbound stack (which reads and updates it): endpoint health
//! (requests in flight, outlier ejections) and the retry budget. Kept out of `outbound` so
//! that the `Mesh` can own it without the data plane depending on the stack that depends on
//! the data plane.

pub(crate) mod budget;
pub(crate) mod health;

use std::sync::Arc;

/// What every client of one workload shares, however many it has (one per worker thread of
/// a proxy): endpoint health (requests in flight per endpoint and service, outlier
/// ejections) and the retry budget, so that connection-pool limits, outlier detection and
/// the budget hold for the workload as a whole, as Envoy keeps them per cluster across its
/// workers. Connections and round-robin turns stay each client's own.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shared {
    pub(crate) health: Arc<health::Health>,
    pub(crate) budget: Arc<budget::RetryBudget>,
}
