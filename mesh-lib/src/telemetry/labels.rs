//! Istio's label set for one request, and the key of its series, made in one place for both
//! reporters: the sidecar that sends a request (`reporter="source"`, [`super::outbound`]) and
//! the one that serves it (`reporter="destination"`, the inbound stack). Kiali joins the two
//! reporters' series by these labels, so both must name a request's ends, its service and its
//! outcome alike.
//!
//! A [`Recorded`] request borrows what a reporter knows; [`Recorded::keyed_labels`] makes its
//! cheap series key, looked up on every request, and the label strings only when
//! [`super::metrics::MeshMetrics::record_keyed`] first sees that key.

use crate::control::Endpoint;
use crate::identity::SpiffeId;

use super::WorkloadName;
use super::metrics::{IstioLabels, series_key};

/// The workload whose sidecar reports the request. In one registry (the launcher's workloads
/// share one) a workload's name stands for the whole of it: namespace, principal, app, version
/// and the service it serves, so its name alone keys its end of a series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Local<'a> {
    pub(crate) name: &'a WorkloadName,
    pub(crate) identity: &'a SpiffeId,
}

/// Where a sent request went, as far as the sender learnt.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Destination<'a> {
    /// The endpoint the balancer chose last.
    Endpoint(&'a Endpoint),
    /// No endpoint was chosen (the mesh answered first): only the service the host names.
    Unknown { service: &'a str },
}

impl<'a> Destination<'a> {
    /// The service the request was for.
    pub(crate) fn service(&self) -> &'a str {
        match *self {
            Self::Endpoint(e) => &e.service,
            Self::Unknown { service } => service,
        }
    }
}

/// A caller known by its mTLS identity, and by the workload its peer header names (read only
/// over mTLS, where the identity vouches for it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller<'a> {
    pub(crate) identity: &'a SpiffeId,
    /// The peer header's value; `None` when it was absent or not visible ASCII.
    pub(crate) header: Option<&'a str>,
}

/// Who took part in a request, from the side of the sidecar that reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ends<'a> {
    /// `reporter="source"`: `source` sent a request to `destination`.
    Sent {
        source: Local<'a>,
        destination: Destination<'a>,
    },
    /// `reporter="destination"`: `destination`, serving `service`, answered `caller` (`None`
    /// without mTLS, where nothing vouches for who called).
    Served {
        destination: Local<'a>,
        service: &'a str,
        caller: Option<Caller<'a>>,
    },
}

/// One recorded request: who took part and how it ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recorded<'a> {
    pub(crate) ends: Ends<'a>,
    /// The response's status; 0 when there was none.
    pub(crate) status: u16,
    /// Envoy's response flags for what the mesh did; no flag is shown as `-`.
    pub(crate) flags: &'a [&'a str],
}

impl<'a> Recorded<'a> {
    /// The request's series key, and the labels that key stands for, built only when called.
    pub(crate) fn keyed_labels(self) -> (String, impl FnOnce() -> IstioLabels + 'a) {
        (self.series_key(), move || self.labels())
    }

    /// What the labels are a function of, joined: the reporting workload by its name, the other
    /// end by what names it (never by its address, which a later workload may reuse).
    fn series_key(&self) -> String {
        let status = http::StatusCode::from_u16(self.status).ok();
        let code = status.as_ref().map_or("0", |c| c.as_str());
        let flags = self.flags.iter().copied();
        match self.ends {
            Ends::Sent {
                source,
                destination,
            } => {
                let head: [&str; 4] = ["s", &source.name.workload, destination.service(), code];
                let endpoint = match destination {
                    Destination::Endpoint(e) => Some([
                        e.labels.get("app").map_or("", String::as_str),
                        e.labels.get("version").map_or("", String::as_str),
                        &e.namespace,
                        &e.identity.trust_domain,
                        &e.identity.namespace,
                        &e.identity.service_account,
                    ]),
                    Destination::Unknown { .. } => None,
                };
                series_key(
                    head.into_iter()
                        .chain(endpoint.into_iter().flatten())
                        .chain(flags),
                )
            }
            Ends::Served {
                destination,
                caller,
                ..
            } => {
                let [header, trust_domain, namespace, account] =
                    caller.map_or(["", "", "", ""], |c| {
                        [
                            c.header.unwrap_or(""),
                            &c.identity.trust_domain,
                            &c.identity.namespace,
                            &c.identity.service_account,
                        ]
                    });
                let parts: [&str; 7] = [
                    "d",
                    &destination.name.workload,
                    header,
                    trust_domain,
                    namespace,
                    account,
                    code,
                ];
                series_key(parts.into_iter().chain(flags))
            }
        }
    }

    /// Istio's labels for the request.
    fn labels(&self) -> IstioLabels {
        let Labelled {
            reporter,
            local,
            source,
            destination,
            service,
            service_namespace,
            security_policy,
        } = match self.ends {
            Ends::Sent {
                source,
                destination,
            } => {
                let (end, service_namespace, security_policy) = match destination {
                    Destination::Endpoint(e) => (
                        EndLabels::remote(
                            WorkloadName::from_labels(&e.service, &e.labels),
                            &e.namespace,
                            e.identity.to_string(),
                        ),
                        e.namespace.as_str(),
                        "mutual_tls",
                    ),
                    // An unqualified host resolves in the caller's own namespace.
                    Destination::Unknown { .. } => (
                        EndLabels::unknown(),
                        source.identity.namespace.as_str(),
                        "unknown",
                    ),
                };
                Labelled {
                    reporter: "source",
                    local: source,
                    source: EndLabels::local(source),
                    destination: end,
                    service: destination.service(),
                    service_namespace,
                    security_policy,
                }
            }
            Ends::Served {
                destination,
                service,
                caller,
            } => {
                let (end, security_policy) = match caller {
                    Some(c) => (
                        EndLabels::remote(
                            c.header
                                .and_then(WorkloadName::parse_header)
                                .unwrap_or_default(),
                            &c.identity.namespace,
                            c.identity.to_string(),
                        ),
                        "mutual_tls",
                    ),
                    // Served without mTLS: the connection was plaintext.
                    None => (EndLabels::unknown(), "none"),
                };
                Labelled {
                    reporter: "destination",
                    local: destination,
                    source: end,
                    destination: EndLabels::local(destination),
                    service,
                    service_namespace: &destination.identity.namespace,
                    security_policy,
                }
            }
        };
        IstioLabels {
            reporter: reporter.into(),
            source_workload: source.workload,
            source_workload_namespace: source.namespace,
            source_principal: source.principal,
            source_app: source.app,
            source_version: source.version,
            destination_workload: destination.workload,
            destination_workload_namespace: destination.namespace,
            destination_principal: destination.principal,
            destination_app: destination.app,
            destination_version: destination.version,
            // In the reporter's trust domain, the one its mesh resolves service names in.
            destination_service: format!(
                "{service}.{service_namespace}.svc.{}",
                local.identity.trust_domain
            ),
            destination_service_name: service.to_owned(),
            destination_service_namespace: service_namespace.to_owned(),
            request_protocol: "http".into(),
            response_code: self.status.to_string(),
            response_flags: if self.flags.is_empty() {
                "-".into()
            } else {
                self.flags.join(",")
            },
            connection_security_policy: security_policy.into(),
        }
    }
}

/// A reporter's view sorted into source and destination: what differs between the reporters,
/// so that one place fills in the label set from it.
struct Labelled<'a> {
    reporter: &'static str,
    /// The reporting workload, whose trust domain qualifies the service's name.
    local: Local<'a>,
    source: EndLabels,
    destination: EndLabels,
    service: &'a str,
    /// The service's namespace: the destination's, or the caller's when it is unknown.
    service_namespace: &'a str,
    /// `connection_security_policy`.
    security_policy: &'static str,
}

/// One end's five labels: `source_` or `destination_` `workload`, `workload_namespace`,
/// `principal`, `app` and `version`.
struct EndLabels {
    workload: String,
    namespace: String,
    principal: String,
    app: String,
    version: String,
}

impl EndLabels {
    /// The reporting workload as it names itself (an empty version stays empty).
    fn local(local: Local<'_>) -> Self {
        Self {
            workload: local.name.workload.clone(),
            namespace: local.identity.namespace.clone(),
            principal: local.identity.to_string(),
            app: local.name.app.clone(),
            version: local.name.version.clone(),
        }
    }

    /// The other end: what it did not tell is `unknown`, as Istio shows it.
    fn remote(name: WorkloadName, namespace: &str, principal: String) -> Self {
        let known = |s: String| if s.is_empty() { UNKNOWN.to_owned() } else { s };
        Self {
            workload: known(name.workload),
            namespace: namespace.to_owned(),
            principal,
            app: known(name.app),
            version: known(name.version),
        }
    }

    /// An end nothing is known of.
    fn unknown() -> Self {
        Self::remote(WorkloadName::default(), UNKNOWN, UNKNOWN.to_owned())
    }
}

/// Istio's value for a label the reporter does not know.
const UNKNOWN: &str = "unknown";

#[cfg(test)]
mod tests {
    use super::*;

    /// A workload of Bookinfo's, in `default` under its own service account.
    fn bookinfo(app: &str, version: &str) -> (WorkloadName, SpiffeId) {
        (
            WorkloadName {
                workload: format!("{app}-{version}"),
                app: app.into(),
                version: version.into(),
            },
            SpiffeId::new("cluster.local", "default", format!("bookinfo-{app}")),
        )
    }

    fn productpage() -> (WorkloadName, SpiffeId) {
        bookinfo("productpage", "v1")
    }

    fn reviews() -> (WorkloadName, SpiffeId) {
        bookinfo("reviews", "v2")
    }

    fn app_version(app: &str, version: &str) -> std::collections::BTreeMap<String, String> {
        [("app", app), ("version", version)]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into()
    }

    fn reviews_endpoint() -> Endpoint {
        Endpoint {
            service: "reviews".into(),
            addr: "10.0.0.7:9080".parse().expect("an address"),
            labels: app_version("reviews", "v2"),
            namespace: "default".into(),
            identity: reviews().1,
        }
    }

    /// A request productpage-v1 sent, as its own sidecar reports it.
    fn sent<'a>(
        productpage: &'a (WorkloadName, SpiffeId),
        destination: Destination<'a>,
        status: u16,
        flags: &'a [&'a str],
    ) -> Recorded<'a> {
        Recorded {
            ends: Ends::Sent {
                source: Local {
                    name: &productpage.0,
                    identity: &productpage.1,
                },
                destination,
            },
            status,
            flags,
        }
    }

    /// A request reviews-v2 answered, as its own sidecar reports it.
    fn served<'a>(
        reviews: &'a (WorkloadName, SpiffeId),
        caller: Option<Caller<'a>>,
        status: u16,
    ) -> Recorded<'a> {
        Recorded {
            ends: Ends::Served {
                destination: Local {
                    name: &reviews.0,
                    identity: &reviews.1,
                },
                service: "reviews",
                caller,
            },
            status,
            flags: &[],
        }
    }

    fn labels(request: Recorded<'_>) -> IstioLabels {
        request.keyed_labels().1()
    }

    /// What a reporter labels productpage-v1's call of reviews-v2 over mTLS with, answered 200.
    /// Kiali joins the two reporters' series of one call, so only `reporter` differs.
    fn productpage_calls_reviews(reporter: &str) -> IstioLabels {
        IstioLabels {
            reporter: reporter.into(),
            source_workload: "productpage-v1".into(),
            source_workload_namespace: "default".into(),
            source_principal: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage".into(),
            source_app: "productpage".into(),
            source_version: "v1".into(),
            destination_workload: "reviews-v2".into(),
            destination_workload_namespace: "default".into(),
            destination_principal: "spiffe://cluster.local/ns/default/sa/bookinfo-reviews".into(),
            destination_app: "reviews".into(),
            destination_version: "v2".into(),
            destination_service: "reviews.default.svc.cluster.local".into(),
            destination_service_name: "reviews".into(),
            destination_service_namespace: "default".into(),
            request_protocol: "http".into(),
            response_code: "200".into(),
            response_flags: "-".into(),
            connection_security_policy: "mutual_tls".into(),
        }
    }

    #[test]
    fn sent_to_an_endpoint() {
        let productpage = productpage();
        let endpoint = reviews_endpoint();
        let request = sent(&productpage, Destination::Endpoint(&endpoint), 200, &[]);
        assert_eq!(labels(request), productpage_calls_reviews("source"));
    }

    #[test]
    fn sent_where_no_endpoint_was_chosen() {
        let productpage = productpage();
        let request = sent(
            &productpage,
            Destination::Unknown { service: "ratings" },
            503,
            &["UO", "UH"],
        );
        assert_eq!(
            labels(request),
            IstioLabels {
                reporter: "source".into(),
                source_workload: "productpage-v1".into(),
                source_workload_namespace: "default".into(),
                source_principal: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
                    .into(),
                source_app: "productpage".into(),
                source_version: "v1".into(),
                destination_workload: "unknown".into(),
                destination_workload_namespace: "unknown".into(),
                destination_principal: "unknown".into(),
                destination_app: "unknown".into(),
                destination_version: "unknown".into(),
                destination_service: "ratings.default.svc.cluster.local".into(),
                destination_service_name: "ratings".into(),
                destination_service_namespace: "default".into(),
                request_protocol: "http".into(),
                response_code: "503".into(),
                response_flags: "UO,UH".into(),
                connection_security_policy: "unknown".into(),
            }
        );
    }

    #[test]
    fn sent_without_a_response_is_code_zero() {
        let productpage = productpage();
        let request = sent(
            &productpage,
            Destination::Unknown { service: "ratings" },
            0,
            &["DC"],
        );
        let labels = labels(request);
        assert_eq!(labels.response_code, "0");
        assert_eq!(labels.response_flags, "DC");
    }

    #[test]
    fn an_unlabelled_endpoint_is_named_by_its_service() {
        let productpage = productpage();
        let endpoint = Endpoint {
            labels: Default::default(),
            namespace: "shop".into(),
            ..reviews_endpoint()
        };
        let request = sent(&productpage, Destination::Endpoint(&endpoint), 200, &[]);
        let labels = labels(request);
        assert_eq!(labels.destination_workload, "reviews");
        assert_eq!(labels.destination_app, "reviews");
        assert_eq!(labels.destination_version, "unknown");
        assert_eq!(labels.destination_workload_namespace, "shop");
        // The endpoint's namespace, in the reporter's trust domain.
        assert_eq!(labels.destination_service, "reviews.shop.svc.cluster.local");
        assert_eq!(labels.destination_service_namespace, "shop");
    }

    #[test]
    fn served_over_mtls() {
        let reviews = reviews();
        let (name, caller) = productpage();
        let header = name.header_value();
        let request = served(
            &reviews,
            Some(Caller {
                identity: &caller,
                header: Some(&header),
            }),
            200,
        );
        assert_eq!(labels(request), productpage_calls_reviews("destination"));
    }

    #[test]
    fn served_without_mtls_knows_no_source() {
        let reviews = reviews();
        assert_eq!(
            labels(served(&reviews, None, 403)),
            IstioLabels {
                source_workload: "unknown".into(),
                source_workload_namespace: "unknown".into(),
                source_principal: "unknown".into(),
                source_app: "unknown".into(),
                source_version: "unknown".into(),
                response_code: "403".into(),
                connection_security_policy: "none".into(),
                // The destination's end and its service, as over mTLS.
                ..productpage_calls_reviews("destination")
            }
        );
    }

    #[test]
    fn a_caller_without_a_valid_header_is_known_by_its_identity_only() {
        let reviews = reviews();
        let caller = SpiffeId::new("cluster.local", "shop", "cart");
        for header in [None, Some("not a;peer;header"), Some("")] {
            let labels = labels(served(
                &reviews,
                Some(Caller {
                    identity: &caller,
                    header,
                }),
                200,
            ));
            assert_eq!(labels.source_workload, "unknown", "{header:?}");
            assert_eq!(labels.source_app, "unknown", "{header:?}");
            assert_eq!(labels.source_version, "unknown", "{header:?}");
            assert_eq!(labels.source_workload_namespace, "shop", "{header:?}");
            assert_eq!(
                labels.source_principal, "spiffe://cluster.local/ns/shop/sa/cart",
                "{header:?}"
            );
            assert_eq!(labels.connection_security_policy, "mutual_tls");
        }
    }

    /// Requests share a series exactly when they share a label set: a key standing for two
    /// label sets would count one under the other's labels.
    #[test]
    fn the_key_stands_for_one_label_set() {
        let productpage = productpage();
        let other_namespace = SpiffeId::new("cluster.local", "shop", "bookinfo-productpage");
        let reviews = reviews();
        let endpoint = reviews_endpoint();
        let v3 = Endpoint {
            labels: app_version("reviews", "v3"),
            ..reviews_endpoint()
        };
        let moved = Endpoint {
            addr: "10.0.0.8:9080".parse().expect("an address"),
            ..reviews_endpoint()
        };
        let sent = |destination, status, flags| sent(&productpage, destination, status, flags);
        let caller = |identity, header| Some(Caller { identity, header });
        let requests = [
            sent(Destination::Endpoint(&endpoint), 200, &[]),
            sent(Destination::Endpoint(&endpoint), 503, &[]),
            sent(Destination::Endpoint(&endpoint), 503, &["UF"]),
            sent(Destination::Endpoint(&v3), 200, &[]),
            sent(Destination::Unknown { service: "reviews" }, 200, &[]),
            sent(Destination::Unknown { service: "reviews" }, 503, &["UH"]),
            sent(Destination::Unknown { service: "ratings" }, 503, &["UH"]),
            served(&reviews, None, 200),
            served(&reviews, None, 404),
            served(&reviews, caller(&productpage.1, None), 200),
            served(
                &reviews,
                caller(&productpage.1, Some("productpage-v1;productpage;v1")),
                200,
            ),
            served(&reviews, caller(&other_namespace, None), 200),
        ];
        let keyed: Vec<(String, IstioLabels)> = requests
            .iter()
            .map(|r| {
                let (key, labels) = r.keyed_labels();
                (key, labels())
            })
            .collect();
        for (i, (key_a, labels_a)) in keyed.iter().enumerate() {
            for (key_b, labels_b) in &keyed[i + 1..] {
                assert_ne!(key_a, key_b, "{labels_a:?} / {labels_b:?}");
                assert_ne!(labels_a, labels_b);
            }
        }
        // What does not change the labels does not change the key: the endpoint's address.
        let (key, _) = sent(Destination::Endpoint(&moved), 200, &[]).keyed_labels();
        assert_eq!(key, keyed[0].0);
    }
}
