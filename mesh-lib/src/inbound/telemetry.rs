//! Inbound recording (Istio's `reporter="destination"`): every request a meshed workload
//! serves, with the source from the mTLS peer (identity, and the workload it names in the
//! peer header), into the Istio metrics and the access log. Outermost in the inbound mesh
//! stack, so rate-limited and denied requests count too.

use std::future::Future;

use axum::body::HttpBody as _;
use axum::extract::Request;
use axum::response::Response;
use http::header;
use opentelemetry::trace::SpanKind;
use tokio::time::Instant;

use crate::dataplane::{Mesh, PeerIdentity};
use crate::telemetry::PEER_HEADER;
use crate::telemetry::access_log::Entry;
use crate::telemetry::labels::{Caller, Ends, Local, Recorded};
use crate::telemetry::tracing::SpanInfo;

/// The request's fields an access-log line shows.
struct Logged {
    request_id: String,
    user_agent: String,
    authority: String,
    traceparent: String,
    method: String,
    path: String,
    protocol: String,
}

/// Serves `request` with `next` and records what it answered.
pub(crate) async fn record<Next, Served>(mesh: &Mesh, mut request: Request, next: Next) -> Response
where
    Next: FnOnce(Request) -> Served,
    Served: Future<Output = Response>,
{
    let start = Instant::now();
    let peer = request
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.0.clone());
    let span = mesh.telemetry().tracing.as_ref().map(|t| {
        t.start_request(SpanKind::Server, &mut request, |r| SpanInfo::Server {
            method: r.method().clone(),
            path: r.uri().path().into(),
            workload: mesh.workload_shared(),
            peer: peer.clone(),
        })
    });
    // Who the peer says it is, trusted only over mTLS; parsed when its series is first made.
    let peer_header = peer
        .as_ref()
        .and_then(|_| request.headers().get(PEER_HEADER).cloned());
    let request_bytes = request.body().size_hint().exact();
    // What only the access log needs, taken before the request moves on.
    let logged = mesh.telemetry().access_log.enabled().then(|| {
        let headers = request.headers();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        Logged {
            request_id: header("x-request-id"),
            user_agent: header(header::USER_AGENT.as_str()),
            authority: header(header::HOST.as_str()),
            traceparent: header("traceparent"),
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            protocol: format!("{:?}", request.version()),
        }
    });
    let response = next(request).await;
    if let Some(span) = span {
        span.finish(response.status().as_u16(), None);
    }
    let millis = start.elapsed().as_secs_f64() * 1000.0;
    let response_bytes = response.body().size_hint().exact();
    let me = mesh.workload_name();
    let id = mesh.identity();
    let telemetry = mesh.telemetry();
    if telemetry.record_metrics {
        let request = Recorded {
            ends: Ends::Served {
                destination: Local {
                    name: me,
                    identity: id,
                },
                service: mesh.service(),
                caller: peer.as_deref().map(|identity| Caller {
                    identity,
                    header: peer_header.as_ref().and_then(|v| v.to_str().ok()),
                }),
            },
            status: response.status().as_u16(),
            flags: &[],
        };
        let (key, labels) = request.keyed_labels();
        telemetry
            .metrics
            .record_keyed(key, labels, millis, request_bytes, response_bytes);
    }
    if let Some(logged) = logged {
        telemetry.access_log.write(&Entry {
            workload: &me.workload,
            method: &logged.method,
            path: &logged.path,
            protocol: &logged.protocol,
            response_code: response.status().as_u16(),
            response_flags: "-",
            duration_ms: millis,
            bytes_received: request_bytes,
            bytes_sent: response_bytes,
            x_request_id: &logged.request_id,
            user_agent: &logged.user_agent,
            authority: &logged.authority,
            peer: "-",
            peer_principal: &peer.map(|p| p.principal()).unwrap_or_default(),
            traceparent: &logged.traceparent,
        });
    }
    response
}
