//! meshd's Kubernetes side against a recorded-API double: an HTTP server that answers the
//! way the API server does (the Kubernetes API reference's list and watch wire format:
//! `<Kind>List` with a resourceVersion, newline-delimited watch events ADDED / MODIFIED /
//! DELETED / BOOKMARK, `ERROR` with a 410 `Expired` Status when a resourceVersion is too old,
//! 503 while it is down; TokenReview and Event creation), replaying objects captured in
//! `tests/fixtures/` (`kubectl get -o json` shape). No real API server runs here: this tests
//! the source's protocol handling and meshd's use of it, not a cluster.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mesh_config::MeshConfig;
use mesh_yaml::{Documents, Watched};
use meshd::kubernetes::ConfigSource;
use serde_json::{Value, json};
use tokio::sync::broadcast;

const PATIENCE: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// What the API server answers while it is down.
fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(status(
            503,
            "ServiceUnavailable",
            "the server is shutting down",
        )),
    )
        .into_response()
}

/// One watch event, with the resourceVersion it happened at and the collection it is in.
#[derive(Clone, Debug)]
struct Logged {
    rv: u64,
    plural: String,
    event: Value,
}

#[derive(Default)]
struct Cluster {
    rv: u64,
    /// plural → (namespace/name → object).
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    log: Vec<Logged>,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest: u64,
    down: bool,
    /// token → (username, audiences).
    tokens: HashMap<String, (String, Vec<String>)>,
    events: Vec<Value>,
    watches: usize,
    /// Requests answered 503 while down.
    refused: usize,
}

#[derive(Clone)]
struct FakeApi {
    cluster: Arc<Mutex<Cluster>>,
    events: broadcast::Sender<Logged>,
    /// Bumped to end every open watch stream (an expiry, an outage).
    cut: Arc<tokio::sync::watch::Sender<u64>>,
}

/// Every collection the double serves: (group, version, plural, kind).
fn collections() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    let mut all: Vec<_> = meshd::kubernetes::KINDS
        .iter()
        .map(|k| (k.group, k.version, k.plural, k.kind))
        .collect();
    all.push(("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"));
    all.push(("", "v1", "pods", "Pod"));
    all
}

fn plural_of(kind: &str) -> &'static str {
    collections()
        .into_iter()
        .find(|c| c.3 == kind)
        .map(|c| c.2)
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakeApi {
    async fn start() -> (FakeApi, String) {
        let api = FakeApi {
            cluster: Arc::default(),
            events: broadcast::channel(256).0,
            cut: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        let app = Router::new()
            .route("/apis/{group}/{version}/{plural}", get(list_or_watch))
            .route(
                "/api/{version}/{plural}",
                get(
                    |state: State<FakeApi>,
                     Path((version, plural)): Path<(String, String)>,
                     query: Query<ListParams>| async move {
                        list_or_watch(state, Path((String::new(), version, plural)), query).await
                    },
                ),
            )
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(token_review),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{ns}/events",
                post(record_event),
            )
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    axum::Json(status(404, "NotFound", "the server could not find it")),
                )
            })
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(axum::serve(listener, app).into_future());
        (api, url)
    }

    fn client(url: &str) -> kube::Client {
        kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
    }

    /// `kubectl apply`: ADDED or MODIFIED, at a new resourceVersion.
    fn apply(&self, mut object: Value) {
        let mut c = self.cluster.lock().unwrap();
        c.rv += 1;
        let rv = c.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind = object["kind"].as_str().unwrap().to_owned();
        let key = format!(
            "{}/{}",
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default"),
            object["metadata"]["name"].as_str().unwrap()
        );
        let plural = plural_of(&kind).to_owned();
        let existed = c
            .objects
            .entry(plural.clone())
            .or_default()
            .insert(key, object.clone())
            .is_some();
        let event = json!({"type": if existed { "MODIFIED" } else { "ADDED" }, "object": object});
        let logged = Logged { rv, plural, event };
        c.log.push(logged.clone());
        let _ = self.events.send(logged);
    }

    /// `kubectl delete`: DELETED, unless `silently` (missed while a watch was away).
    fn delete(&self, kind: &str, namespace: &str, name: &str, silently: bool) {
        let mut c = self.cluster.lock().unwrap();
        c.rv += 1;
        let rv = c.rv;
        let plural = plural_of(kind).to_owned();
        let mut object = c
            .objects
            .get_mut(&plural)
            .and_then(|o| o.remove(&format!("{namespace}/{name}")))
            .unwrap();
        if silently {
            return;
        }
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let logged = Logged {
            rv,
            plural,
            event: json!({"type": "DELETED", "object": object}),
        };
        c.log.push(logged.clone());
        let _ = self.events.send(logged);
    }

    fn bookmark(&self, kind: &str) {
        let mut c = self.cluster.lock().unwrap();
        c.rv += 1;
        let rv = c.rv;
        let kind = meshd::kubernetes::KINDS
            .iter()
            .find(|k| k.kind == kind)
            .unwrap();
        let logged = Logged {
            rv,
            plural: kind.plural.to_owned(),
            event: json!({"type": "BOOKMARK", "object": {"kind": kind.kind,
                "apiVersion": kind.api_version(), "metadata": {"resourceVersion": rv.to_string()}}}),
        };
        c.log.push(logged.clone());
        let _ = self.events.send(logged);
    }

    /// The history compacts: every open watch ends and resuming from any resourceVersion
    /// seen so far answers 410 Gone, so watchers must list again.
    fn expire(&self) {
        let mut c = self.cluster.lock().unwrap();
        c.oldest = c.rv + 1;
        drop(c);
        self.cut.send_modify(|g| *g += 1);
    }

    fn set_down(&self, down: bool) {
        self.cluster.lock().unwrap().down = down;
        if down {
            self.cut.send_modify(|g| *g += 1);
        }
    }

    fn watches(&self) -> usize {
        self.cluster.lock().unwrap().watches
    }
}

#[derive(serde::Deserialize)]
struct ListParams {
    watch: Option<String>,
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
}

async fn list_or_watch(
    State(api): State<FakeApi>,
    Path((group, version, plural)): Path<(String, String, String)>,
    Query(params): Query<ListParams>,
) -> Response {
    let mut c = api.cluster.lock().unwrap();
    if c.down {
        c.refused += 1;
        return unavailable();
    }
    let Some((_, _, _, kind)) = collections()
        .into_iter()
        .find(|c| c.2 == plural && c.0 == group && c.1 == version)
    else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(status(404, "NotFound", "no such resource")),
        )
            .into_response();
    };
    let watching = params
        .watch
        .as_deref()
        .is_some_and(|w| w == "true" || w == "1");
    if !watching {
        let items: Vec<Value> = c
            .objects
            .get(&plural)
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default();
        let api_version = if group.is_empty() {
            version.clone()
        } else {
            format!("{group}/{version}")
        };
        return axum::Json(json!({
            "apiVersion": api_version,
            "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": c.rv.to_string()},
            "items": items,
        }))
        .into_response();
    }
    let from: u64 = params
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut lines: Vec<Value> = Vec::new();
    let expired = from < c.oldest;
    if expired {
        lines.push(json!({"type": "ERROR", "object": status(410, "Expired",
            &format!("too old resource version: {from} ({})", c.oldest))}));
    } else {
        lines.extend(
            c.log
                .iter()
                .filter(|l| l.plural == plural && l.rv > from)
                .map(|l| l.event.clone()),
        );
    }
    drop(c);
    api.cluster.lock().unwrap().watches += 1;
    let mut live = api.events.subscribe();
    let mut cut = api.cut.subscribe();
    let stream = async_stream(move |tx| async move {
        for line in lines {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        loop {
            tokio::select! {
                got = live.recv() => match got {
                    Ok(l) if l.plural == plural => {
                        if tx.send(l.event).await.is_err() { return; }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                _ = cut.changed() => return,
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(stream)
        .unwrap()
}

/// A chunked body of JSON lines produced by `produce`.
fn async_stream<F, Fut>(produce: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Value>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Value>(64);
    tokio::spawn(produce(tx));
    let lines = tokio_stream::wrappers::ReceiverStream::new(rx).map(|v| {
        let mut line = v.to_string();
        line.push('\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    Body::from_stream(lines)
}

use tokio_stream::StreamExt as _;

async fn token_review(
    State(api): State<FakeApi>,
    axum::Json(review): axum::Json<Value>,
) -> Response {
    let c = api.cluster.lock().unwrap();
    if c.down {
        return unavailable();
    }
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let status = match c.tokens.get(token) {
        // The API server answers with the audiences the token is valid for, among those asked.
        Some((user, audiences)) if wanted.iter().any(|w| audiences.contains(w)) => json!({
            "authenticated": true,
            "user": {"username": user, "uid": "d0c5f0e2", "groups": ["system:serviceaccounts"]},
            "audiences": wanted.iter().filter(|w| audiences.contains(w)).collect::<Vec<_>>(),
        }),
        Some(_) => json!({"authenticated": false, "error": "token audiences are invalid"}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    (
        StatusCode::CREATED,
        axum::Json(
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "metadata": {"creationTimestamp": null}, "spec": review["spec"], "status": status}),
        ),
    )
        .into_response()
}

async fn record_event(
    State(api): State<FakeApi>,
    Path(_ns): Path<String>,
    axum::Json(event): axum::Json<Value>,
) -> Response {
    api.cluster.lock().unwrap().events.push(event.clone());
    (StatusCode::CREATED, axum::Json(event)).into_response()
}

/// meshd's config watch over the source's documents, as meshd runs it.
struct Source {
    watched: Watched,
    stop: tokio::sync::watch::Sender<bool>,
    errors: Vec<String>,
}

impl Source {
    async fn start(url: &str) -> Source {
        let documents = Documents::default();
        let source = ConfigSource::new(FakeApi::client(url), documents.clone());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        source.spawn(stopped);
        let (watched, _) = Watched::open_with(
            MeshConfig::default(),
            Vec::new(),
            vec![("kubernetes".to_owned(), documents)],
        )
        .unwrap();
        Source {
            watched,
            stop,
            errors: Vec::new(),
        }
    }

    /// Reloads until `check` holds for the config in force.
    async fn until(&mut self, what: &str, check: impl Fn(&MeshConfig) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let reload = self.watched.reload();
            self.errors
                .extend(reload.errors.iter().map(ToString::to_string));
            if check(self.watched.config()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never {what}: {:?}",
                self.watched.config()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn reviews_subset(config: &MeshConfig) -> Option<String> {
    let vs = config
        .virtual_services
        .iter()
        .find(|v| v.metadata.name == "reviews")?;
    let json = serde_json::to_value(vs).ok()?;
    json.pointer("/spec/http/0/route/0/destination/subset")
        .or_else(|| json.pointer("/http/0/route/0/destination/subset"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_added_modified_and_deleted_reach_the_config_in_force() {
    let (api, url) = FakeApi::start().await;
    api.apply(fixture("virtualservice-reviews.json"));
    let mut source = Source::start(&url).await;
    source
        .until("the listed VirtualService", |c| {
            reviews_subset(c).as_deref() == Some("v1")
        })
        .await;
    let mut modified = fixture("virtualservice-reviews.json");
    modified["spec"]["http"][0]["route"][0]["destination"]["subset"] = json!("v3");
    api.apply(modified);
    source
        .until("the modified VirtualService", |c| {
            reviews_subset(c).as_deref() == Some("v3")
        })
        .await;
    api.bookmark("VirtualService");
    api.delete("VirtualService", "default", "reviews", false);
    source
        .until("the VirtualService gone", |c| c.virtual_services.is_empty())
        .await;
    assert!(source.errors.is_empty(), "{:?}", source.errors);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_object_is_rejected_alone_with_an_event_and_its_last_good_version_stays() {
    let (api, url) = FakeApi::start().await;
    api.apply(fixture("virtualservice-reviews.json"));
    api.apply(fixture("authorizationpolicy-bad.json"));
    let mut source = Source::start(&url).await;
    source
        .until("the good VirtualService beside the bad policy", |c| {
            reviews_subset(c).is_some()
        })
        .await;
    // The error names the object and the field, as for a file.
    let deadline = Instant::now() + PATIENCE;
    while !source.errors.iter().any(|e| {
        e.contains("kubernetes/AuthorizationPolicy/default/details-viewer") && e.contains("rulez")
    }) {
        assert!(Instant::now() < deadline, "{:?}", source.errors);
        source.until("a reload", |_| true).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(source.watched.config().authorization_policies.is_empty());
    // A Warning Event on the object, where `kubectl describe` shows it.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let events = api.cluster.lock().unwrap().events.clone();
        if let Some(e) = events.iter().find(|e| e["reason"] == "Rejected") {
            assert_eq!(e["type"], "Warning");
            assert_eq!(e["regarding"]["name"], "details-viewer");
            assert_eq!(e["regarding"]["kind"], "AuthorizationPolicy");
            assert!(e["note"].as_str().unwrap().contains("rulez"), "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "no Rejected event: {events:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Fixed: it applies. Broken again: the fixed version stays.
    let mut fixed = fixture("authorizationpolicy-bad.json");
    let rules = fixed["spec"]["rulez"].take();
    fixed["spec"].as_object_mut().unwrap().remove("rulez");
    fixed["spec"]["rules"] = rules;
    api.apply(fixed);
    source
        .until("the fixed policy", |c| c.authorization_policies.len() == 1)
        .await;
    api.apply(fixture("authorizationpolicy-bad.json"));
    let before = api.cluster.lock().unwrap().events.len();
    let deadline = Instant::now() + PATIENCE;
    while api.cluster.lock().unwrap().events.len() == before {
        assert!(
            Instant::now() < deadline,
            "the second rejection was not reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    source.until("a reload", |_| true).await;
    assert_eq!(source.watched.config().authorization_policies.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_410_gone_the_source_lists_again_and_drops_what_was_deleted_meanwhile() {
    let (api, url) = FakeApi::start().await;
    api.apply(fixture("virtualservice-reviews.json"));
    let mut source = Source::start(&url).await;
    source
        .until("the VirtualService", |c| reviews_subset(c).is_some())
        .await;
    let watches = api.watches();
    // Deleted while no watch saw it, then the history is compacted.
    api.delete("VirtualService", "default", "reviews", true);
    api.expire();
    source
        .until("the relisted (empty) VirtualServices", |c| {
            c.virtual_services.is_empty()
        })
        .await;
    assert!(api.watches() > watches, "the watch was reopened");
    // And the new watch carries on.
    api.apply(fixture("virtualservice-reviews.json"));
    source
        .until("the VirtualService again", |c| reviews_subset(c).is_some())
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn while_the_api_server_is_down_the_last_good_config_stays_then_changes_apply() {
    let (api, url) = FakeApi::start().await;
    api.apply(fixture("virtualservice-reviews.json"));
    let mut source = Source::start(&url).await;
    source
        .until("the VirtualService", |c| reviews_subset(c).is_some())
        .await;
    api.set_down(true);
    // Every watcher comes back to a 503 (and backs off); the config in force is untouched
    // however many times it is reloaded meanwhile.
    let deadline = Instant::now() + PATIENCE;
    while api.cluster.lock().unwrap().refused < meshd::kubernetes::KINDS.len() {
        source.until("a reload", |_| true).await;
        assert_eq!(
            reviews_subset(source.watched.config()).as_deref(),
            Some("v1")
        );
        assert!(Instant::now() < deadline, "the watchers never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    source.until("a reload", |_| true).await;
    assert_eq!(
        reviews_subset(source.watched.config()).as_deref(),
        Some("v1")
    );
    let mut modified = fixture("virtualservice-reviews.json");
    modified["spec"]["http"][0]["route"][0]["destination"]["subset"] = json!("v2");
    api.apply(modified);
    api.set_down(false);
    source
        .until("the change made during the outage", |c| {
            reviews_subset(c).as_deref() == Some("v2")
        })
        .await;
}

async fn meshd_over(url: &str) -> meshd::daemon::RunningMeshd {
    meshd::daemon::start(meshd::daemon::MeshdConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        dashboard: None,
        kubernetes: Some(meshd::daemon::KubernetesOptions {
            client: FakeApi::client(url),
            config: true,
            endpoints: true,
            token_audience: Some("meshd".to_owned()),
        }),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn spec(
    meshd: &meshd::daemon::RunningMeshd,
    token: &str,
    service: &str,
) -> mesh::control::client::WorkloadSpec {
    mesh::control::client::WorkloadSpec {
        token: token.to_owned(),
        ..test_support::spec(meshd, service, &format!("bookinfo-{service}"))
    }
}

async fn certify(
    spec: &mesh::control::client::WorkloadSpec,
) -> Result<String, mesh::control::client::ControlError> {
    let credentials = mesh_proto::identity::Credentials::new(mesh_proto::identity::SpiffeId::new(
        "cluster.local",
        &spec.namespace,
        &spec.service_account,
    ));
    mesh::control::client::certify(spec, &credentials)
        .await
        .map(|c| c.identity.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_account_token_reviewed_by_the_api_server_proves_that_account_only() {
    let (api, url) = FakeApi::start().await;
    {
        let mut c = api.cluster.lock().unwrap();
        let ratings = "system:serviceaccount:default:bookinfo-ratings".to_owned();
        c.tokens.insert(
            "projected-ratings".into(),
            (ratings.clone(), vec!["meshd".into()]),
        );
        c.tokens.insert(
            "ratings-for-the-api-server".into(),
            (
                ratings,
                vec!["https://kubernetes.default.svc.cluster.local".into()],
            ),
        );
        c.tokens
            .insert("a-user".into(), ("jane".into(), vec!["meshd".into()]));
    }
    let meshd = meshd_over(&url).await;
    assert_eq!(
        certify(&spec(&meshd, "projected-ratings", "ratings"))
            .await
            .unwrap(),
        "spiffe://cluster.local/ns/default/sa/bookinfo-ratings"
    );
    for (token, service, why) in [
        (
            "projected-ratings",
            "details",
            "bookinfo-ratings's, not default/bookinfo-details",
        ),
        ("ratings-for-the-api-server", "ratings", "not valid"),
        ("a-user", "ratings", "not a service account"),
        ("made-up", "ratings", "invalid bearer token"),
    ] {
        let err = certify(&spec(&meshd, token, service)).await.unwrap_err();
        assert!(
            matches!(err, mesh::control::client::ControlError::Refused(_)),
            "{token}: {err}"
        );
        assert!(err.to_string().contains(why), "{token}: {err}");
    }
    api.set_down(true);
    let asked = Instant::now();
    let err = certify(&spec(&meshd, "projected-ratings", "ratings"))
        .await
        .unwrap_err();
    assert!(
        asked.elapsed() < meshd::kubernetes::token_review::REVIEW_TIMEOUT + PATIENCE / 4,
        "the workload was held {:?}",
        asked.elapsed()
    );
    assert!(
        err.to_string().contains("cannot review the token now"),
        "{err}"
    );
    meshd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_joining_with_its_token_gets_what_kubectl_applied() {
    let (api, url) = FakeApi::start().await;
    api.cluster.lock().unwrap().tokens.insert(
        "projected-reviews".into(),
        (
            "system:serviceaccount:default:bookinfo-reviews".into(),
            vec!["meshd".into()],
        ),
    );
    api.apply(fixture("virtualservice-reviews.json"));
    let meshd = meshd_over(&url).await;
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mesh = mesh::workload::WorkloadBuilder::new(spec(&meshd, "projected-reviews", "reviews"))
        .start(server.local_addr().unwrap())
        .unwrap();
    assert!(mesh.ready(PATIENCE).await, "the workload never got ready");
    assert_eq!(
        mesh.identity().to_string(),
        "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    );
    let deadline = Instant::now() + PATIENCE;
    while reviews_subset(&mesh.snapshot().config).as_deref() != Some("v1") {
        assert!(
            Instant::now() < deadline,
            "the VirtualService never reached the workload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    meshd.shutdown().await;
}

fn pod(name: &str, ip: &str, account: &str, version: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "labels": {"app": "reviews", "version": version,
                "pod-template-hash": "6b8d5c9f7d"}},
        "spec": {"serviceAccountName": account,
            "containers": [{"name": "reviews", "image": "bookinfo-rs/reviews:latest"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// The EndpointSlice the endpoints controller keeps for Service reviews: (pod, ip, ready).
fn reviews_slice(endpoints: &[(&str, &str, bool)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(pod, ip, ready)| {
            json!({"addresses": [ip],
            "conditions": {"ready": ready, "serving": ready, "terminating": !ready},
            "nodeName": "minikube",
            "targetRef": {"kind": "Pod", "name": pod, "namespace": "default",
                "uid": format!("uid-{pod}")}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "reviews-x7k2p", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "reviews",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "reviews",
                "uid": "svc-uid", "controller": true, "blockOwnerDeletion": true}]},
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}]})
}

fn reviews_endpoints(mesh: &mesh::Mesh) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = mesh
        .endpoints_of("reviews")
        .iter()
        .map(|e| {
            (
                e.addr.to_string(),
                e.labels.get("version").cloned().unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    seen
}

/// Waits until `mesh` sees exactly `want` (address, version) for reviews.
async fn until_endpoints(mesh: &mesh::Mesh, want: &[(String, String)]) {
    let deadline = Instant::now() + PATIENCE;
    while reviews_endpoints(mesh) != want {
        assert!(
            Instant::now() < deadline,
            "never {want:?}: {:?}",
            reviews_endpoints(mesh)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_pods_are_routable_before_they_register_and_not_ready_ones_go_at_once() {
    let (api, url) = FakeApi::start().await;
    api.cluster.lock().unwrap().tokens.insert(
        "projected-reviews".into(),
        (
            "system:serviceaccount:default:bookinfo-reviews".into(),
            vec!["meshd".into()],
        ),
    );
    // reviews-v1 runs here (it will register); reviews-v2 is Ready but has not registered;
    // a pod under another account backs the Service too.
    api.apply(pod("reviews-v1-abc", "127.0.0.1", "bookinfo-reviews", "v1"));
    api.apply(pod("reviews-v2-def", "127.0.0.2", "bookinfo-reviews", "v2"));
    api.apply(pod("intruder-ghi", "127.0.0.3", "default", "v3"));
    api.apply(reviews_slice(&[
        ("reviews-v1-abc", "127.0.0.1", true),
        ("reviews-v2-def", "127.0.0.2", true),
        ("intruder-ghi", "127.0.0.3", true),
    ]));
    let meshd = meshd_over(&url).await;
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let registered = server.local_addr().unwrap().to_string();
    let mesh = mesh::workload::WorkloadBuilder::new(spec(&meshd, "projected-reviews", "reviews"))
        .start(server.local_addr().unwrap())
        .unwrap();
    assert!(mesh.ready(PATIENCE).await);
    let mut want = vec![
        ("127.0.0.2:9080".to_owned(), "v2".to_owned()),
        (registered.clone(), "v1".to_owned()),
    ];
    want.sort();
    until_endpoints(&mesh, &want).await;
    let v2 = mesh
        .endpoints_of("reviews")
        .into_iter()
        .find(|e| e.addr.to_string() == "127.0.0.2:9080")
        .unwrap();
    assert_eq!(
        v2.identity.to_string(),
        "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
        "an account a registration proved; the intruder's was not"
    );
    // reviews-v1's pod is deleted: the slice marks it terminating, and its registration
    // (its stream still open) is no longer published.
    api.apply(reviews_slice(&[
        ("reviews-v1-abc", "127.0.0.1", false),
        ("reviews-v2-def", "127.0.0.2", true),
    ]));
    let want = vec![("127.0.0.2:9080".to_owned(), "v2".to_owned())];
    until_endpoints(&mesh, &want).await;
    // reviews-v2's pod is gone from the slice and the API: so is its endpoint.
    api.apply(reviews_slice(&[("reviews-v1-abc", "127.0.0.1", false)]));
    api.delete("Pod", "default", "reviews-v2-def", false);
    until_endpoints(&mesh, &[]).await;
    meshd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_changed_in_the_api_server_applies_at_once_with_no_poll_to_catch_it() {
    let (api, url) = FakeApi::start().await;
    // Polls that never come within the test: only the source's own wake-up applies a change.
    let meshd = meshd::daemon::start(meshd::daemon::MeshdConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        dashboard: None,
        kubernetes: Some(meshd::daemon::KubernetesOptions {
            client: FakeApi::client(&url),
            config: true,
            endpoints: false,
            token_audience: None,
        }),
        config_watch: meshd::daemon::ConfigWatchOptions {
            safety_poll: Duration::from_secs(3600),
            fallback_poll: Duration::from_secs(3600),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let until = |what: &str, subset: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        let plane = meshd.plane.clone();
        let (what, subset) = (what.to_owned(), subset.to_owned());
        async move {
            while reviews_subset(&plane.config()).as_deref() != Some(subset.as_str()) {
                assert!(Instant::now() < deadline, "never {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    api.apply(fixture("virtualservice-reviews.json"));
    until("the added VirtualService", "v1").await;
    // Applied after meshd's first reload, so only a wake-up from the source can apply it.
    let mut modified = fixture("virtualservice-reviews.json");
    modified["spec"]["http"][0]["route"][0]["destination"]["subset"] = json!("v3");
    api.apply(modified);
    until("the modified VirtualService", "v3").await;
    meshd.shutdown().await;
}
