//! Outbound recording (Istio's `reporter="source"`): one sample per request a workload sends
//! through the mesh, with the destination the balancer finally chose and Envoy's response
//! flags for what the mesh itself did (`UO` overflow, `UT` timeout, `UH` no healthy upstream,
//! `UF` connection failure, `FI`/`DI` injected abort/delay).

use std::sync::{Arc, Mutex};

use crate::control::Endpoint;
use crate::identity::SpiffeId;

use super::metrics::IstioLabels;
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
    let service = info
        .endpoint
        .as_ref()
        .map_or(host_service, |e| e.service.as_str());
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
    let id = source.identity;
    let mut flags: Vec<&str> = info.flags.clone();
    if let Some(f) = local_flag {
        flags.push(f);
    }
    // The label set is a function of these (the launcher's workloads share one registry): the
    // destination by what names it, not by its address, which a later workload may reuse.
    let code = http::StatusCode::from_u16(status).ok();
    let mut parts: Vec<&str> = vec![
        "s",
        &me.workload,
        service,
        code.as_ref().map_or("0", |c| c.as_str()),
    ];
    if let Some(e) = &info.endpoint {
        parts.extend([
            e.labels.get("app").map_or("", String::as_str),
            e.labels.get("version").map_or("", String::as_str),
            &e.namespace,
            &e.identity.trust_domain,
            &e.identity.namespace,
            &e.identity.service_account,
        ]);
    }
    parts.extend(flags.iter().copied());
    let key = super::metrics::series_key(&parts);
    let labels = || {
        let (dest, dest_ns, dest_principal) = match &info.endpoint {
            Some(e) => (
                WorkloadName::from_labels(&e.service, &e.labels),
                e.namespace.clone(),
                e.identity.to_string(),
            ),
            None => (
                WorkloadName::default(),
                "unknown".to_owned(),
                "unknown".to_owned(),
            ),
        };
        let unknown = |s: &str| {
            if s.is_empty() {
                "unknown".to_owned()
            } else {
                s.to_owned()
            }
        };
        IstioLabels {
            reporter: "source".into(),
            source_workload: me.workload.clone(),
            source_workload_namespace: id.namespace.clone(),
            source_principal: id.to_string(),
            source_app: me.app.clone(),
            source_version: me.version.clone(),
            destination_workload: unknown(&dest.workload),
            destination_workload_namespace: dest_ns.clone(),
            destination_principal: dest_principal,
            destination_app: unknown(&dest.app),
            destination_version: unknown(&dest.version),
            destination_service: format!(
                "{service}.{}.svc.{}",
                if info.endpoint.is_some() {
                    &dest_ns
                } else {
                    &id.namespace
                },
                id.trust_domain
            ),
            destination_service_name: service.to_owned(),
            destination_service_namespace: if info.endpoint.is_some() {
                dest_ns
            } else {
                id.namespace.clone()
            },
            request_protocol: "http".into(),
            response_code: if status == 0 {
                "0".into()
            } else {
                status.to_string()
            },
            response_flags: if flags.is_empty() {
                "-".into()
            } else {
                flags.join(",")
            },
            connection_security_policy: if info.endpoint.is_some() {
                "mutual_tls".into()
            } else {
                "unknown".into()
            },
        }
    };
    source
        .telemetry
        .metrics
        .record_keyed(key, labels, millis, request_bytes, response_bytes);
}
