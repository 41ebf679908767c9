//! Outbound recording (Istio's `reporter="source"`): one sample per request a workload sends
//! through the mesh, with the destination the balancer finally chose and Envoy's response
//! flags for what the mesh itself did (`UO` overflow, `UT` timeout, `UH` no healthy upstream,
//! `UF` connection failure, `FI`/`DI` injected abort/delay).

use std::sync::{Arc, Mutex};

use crate::control::Endpoint;
use crate::identity::SpiffeId;

use super::labels::{Destination, Ends, Local, Recorded};
use super::{Telemetry, WorkloadName};

/// What the layers below learn about a request, for the record at the top.
#[derive(Debug, Clone, Default)]
pub struct Attempt(pub Arc<Mutex<AttemptInfo>>);

#[derive(Debug, Default)]
pub struct AttemptInfo {
    pub endpoint: Option<Arc<Endpoint>>,
    pub flags: Vec<&'static str>,
    pub retries: u64,
    pub budget_exhausted: bool,
}

impl Attempt {
    pub fn set_endpoint(&self, endpoint: Arc<Endpoint>) {
        self.0
            .lock()
            .expect("attempt lock is never poisoned")
            .endpoint = Some(endpoint);
    }

    pub fn retried(&self) {
        self.0
            .lock()
            .expect("attempt lock is never poisoned")
            .retries += 1;
    }

    pub fn budget_exhausted(&self) {
        self.0
            .lock()
            .expect("attempt lock is never poisoned")
            .budget_exhausted = true;
    }

    pub fn flag(&self, flag: &'static str) {
        let mut info = self.0.lock().expect("attempt lock is never poisoned");
        if !info.flags.contains(&flag) {
            info.flags.push(flag);
        }
    }
}

/// How one outbound request ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) status: u16,
    /// The flag of a failure inside the mesh.
    pub(crate) local_flag: Option<&'static str>,
    pub(crate) millis: f64,
    pub(crate) request_bytes: Option<u64>,
    pub(crate) response_bytes: Option<u64>,
}

/// Who sends a request: the workload's telemetry, its name and its identity.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub(crate) telemetry: &'a Telemetry,
    pub(crate) name: &'a WorkloadName,
    pub(crate) identity: &'a SpiffeId,
}

/// Records one outbound request of `source` to the service `host_service` names.
pub(crate) fn record(source: Source<'_>, host_service: &str, attempt: &Attempt, outcome: Outcome) {
    if !source.telemetry.record_metrics {
        return;
    }
    let Outcome {
        status,
        local_flag,
        millis,
        request_bytes,
        response_bytes,
    } = outcome;
    let info = attempt.0.lock().expect("attempt lock is never poisoned");
    let destination = match &info.endpoint {
        Some(e) => Destination::Endpoint(e),
        None => Destination::Unknown {
            service: host_service,
        },
    };
    let service = destination.service();
    let me = source.name;
    let edge = || super::metrics::EdgeLabels {
        source_workload: me.workload.clone(),
        destination_service_name: service.to_owned(),
    };
    if info.retries > 0 {
        source
            .telemetry
            .metrics
            .retries
            .get_or_create(&edge())
            .inc_by(info.retries);
    }
    if info.budget_exhausted {
        source
            .telemetry
            .metrics
            .retry_budget_exhausted
            .get_or_create(&edge())
            .inc();
    }
    let mut flags: Vec<&str> = info.flags.clone();
    if let Some(f) = local_flag {
        flags.push(f);
    }
    let request = Recorded {
        ends: Ends::Sent {
            source: Local {
                name: me,
                identity: source.identity,
            },
            destination,
        },
        status,
        flags: &flags,
    };
    let (key, labels) = request.keyed_labels();
    source
        .telemetry
        .metrics
        .record_keyed(key, labels, millis, request_bytes, response_bytes);
}
