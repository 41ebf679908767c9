//! The mesh config from the API server: a watcher (list, then watch from the list's
//! resourceVersion; a relist after `410 Gone`; bookmarks; backoff while the API server is
//! away) per supported kind, each object turned into the document a file would hold and put in
//! a [`Documents`] set that meshd's [`Watched`](mesh_yaml::Watched) reloads like a
//! directory. So an object gets exactly a file's treatment: the same parser, validation and
//! limits, rejected alone when bad (its last good version stays), merged with the rest.
//!
//! A rejected object is also reported where `kubectl` users look: a Warning Event on the
//! object (reason `Rejected`) and a log line naming kind, namespace/name and the reason.
//! While the API server is unreachable the documents stay as last listed.

use std::time::Duration;

use futures_util::StreamExt as _;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use mesh_yaml::Documents;
use serde_json::{Map, Value, json};

/// A kind meshd reads: group, version served, kind, plural.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl MeshKind {
    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }

    /// `networking.istio.io/v1`.
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }
}

/// Every kind meshd reads, in the version it watches (the API server converts objects
/// written in the other served versions).
pub const KINDS: [MeshKind; 6] = [
    MeshKind {
        group: "networking.istio.io",
        version: "v1",
        kind: "VirtualService",
        plural: "virtualservices",
    },
    MeshKind {
        group: "networking.istio.io",
        version: "v1",
        kind: "DestinationRule",
        plural: "destinationrules",
    },
    MeshKind {
        group: "networking.istio.io",
        version: "v1",
        kind: "Gateway",
        plural: "gateways",
    },
    MeshKind {
        group: "security.istio.io",
        version: "v1",
        kind: "PeerAuthentication",
        plural: "peerauthentications",
    },
    MeshKind {
        group: "security.istio.io",
        version: "v1",
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
    },
    MeshKind {
        group: "mesh.bookinfo.io",
        version: "v1alpha1",
        kind: "LocalRateLimit",
        plural: "localratelimits",
    },
];

/// How long the watcher waits between tries while the API server is away, at most.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The label of the documents in errors and logs: `kubernetes/<Kind>/<namespace>/<name>`.
pub const LABEL: &str = "kubernetes";

/// The Kubernetes config source: one watcher per kind, all feeding one document set.
#[derive(Clone)]
pub struct ConfigSource {
    client: kube::Client,
    documents: Documents,
    reporter: Reporter,
}

impl ConfigSource {
    pub fn new(client: kube::Client, documents: Documents) -> Self {
        Self {
            client,
            documents,
            reporter: Reporter {
                controller: "meshd".to_owned(),
                instance: std::env::var("POD_NAME").ok(),
            },
        }
    }

    pub fn documents(&self) -> &Documents {
        &self.documents
    }

    /// Watches every kind until `stopped` turns true.
    pub fn spawn(
        self,
        stopped: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        KINDS
            .iter()
            .map(|kind| {
                let mut stopped = stopped.clone();
                let watching = self.clone().watch(*kind);
                tokio::spawn(async move {
                    tokio::select! {
                        () = watching => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                })
            })
            .collect()
    }

    /// One kind, until the stream ends (never, but for a dropped client): list + watch with
    /// resync and backoff.
    pub async fn watch(self, kind: MeshKind) {
        let resource = kind.api_resource();
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let stream = watcher(api, watcher::Config::default().any_semantic()).default_backoff();
        futures_util::pin_mut!(stream);
        let prefix = format!("{}/", kind.kind);
        let mut listing: Option<Vec<(String, String)>> = None;
        let mut unreachable = false;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => {
                    if unreachable {
                        tracing::info!(kind = kind.kind, "the API server answers again");
                        unreachable = false;
                    }
                    event
                }
                Err(e) => {
                    if !unreachable {
                        tracing::warn!(
                            kind = kind.kind,
                            "cannot watch {} ({e}); the last good config stays in force",
                            kind.plural
                        );
                        unreachable = true;
                    }
                    continue;
                }
            };
            match event {
                watcher::Event::Init => listing = Some(Vec::new()),
                watcher::Event::InitApply(object) => {
                    if let Some((name, text)) = self.document(kind, &object, &recorder).await {
                        listing.get_or_insert_with(Vec::new).push((name, text));
                    }
                }
                watcher::Event::InitDone => {
                    let listed = listing.take().unwrap_or_default();
                    tracing::debug!(kind = kind.kind, "listed {} object(s)", listed.len());
                    self.documents.replace_all(&prefix, listed);
                }
                watcher::Event::Apply(object) => {
                    if let Some((name, text)) = self.document(kind, &object, &recorder).await {
                        self.documents.put(&name, text);
                    }
                }
                watcher::Event::Delete(object) => {
                    self.documents.remove(&document_name(kind, &object));
                }
            }
        }
    }

    /// The object as a document, and a Warning Event on it when it does not load (the
    /// document is kept all the same: the config's watch rejects it and keeps the object's
    /// last good version, as for a file).
    async fn document(
        &self,
        kind: MeshKind,
        object: &DynamicObject,
        recorder: &Recorder,
    ) -> Option<(String, String)> {
        let name = document_name(kind, object);
        let text = document_text(kind, object);
        let label = format!("{LABEL}/{name}");
        if let Err(e) = mesh_yaml::parse_file(&label, &text) {
            tracing::error!(
                "rejected {} {}: {}",
                kind.kind,
                namespaced(object),
                e.reason
            );
            let event = Event {
                type_: EventType::Warning,
                reason: "Rejected".to_owned(),
                note: Some(truncate(&e.reason, 1000)),
                action: "Load".to_owned(),
                secondary: None,
            };
            let reference = object_reference(kind, object);
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!("cannot record the rejection as an Event: {e}");
            }
        }
        Some((name, text))
    }
}

/// `<Kind>/<namespace>/<name>`: merge order and what errors name.
pub fn document_name(kind: MeshKind, object: &DynamicObject) -> String {
    format!("{}/{}", kind.kind, namespaced(object))
}

fn namespaced(object: &DynamicObject) -> String {
    format!(
        "{}/{}",
        object.metadata.namespace.as_deref().unwrap_or("default"),
        object.metadata.name.as_deref().unwrap_or("")
    )
}

/// What a file would hold for this object: apiVersion, kind, name, namespace, labels and
/// spec. The API server's bookkeeping (uid, resourceVersion, managedFields, status, …) is
/// not config and is left out; the spec is passed as written, so unknown fields are errors
/// here as in files.
pub fn document_text(kind: MeshKind, object: &DynamicObject) -> String {
    let mut metadata = Map::new();
    if let Some(name) = &object.metadata.name {
        metadata.insert("name".to_owned(), json!(name));
    }
    if let Some(namespace) = &object.metadata.namespace {
        metadata.insert("namespace".to_owned(), json!(namespace));
    }
    if let Some(labels) = object.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
        metadata.insert("labels".to_owned(), json!(labels));
    }
    let mut document = Map::new();
    document.insert("apiVersion".to_owned(), json!(kind.api_version()));
    document.insert("kind".to_owned(), json!(kind.kind));
    document.insert("metadata".to_owned(), Value::Object(metadata));
    if let Some(spec) = object.data.get("spec") {
        document.insert("spec".to_owned(), spec.clone());
    }
    // JSON is YAML: the file parser reads it as written.
    Value::Object(document).to_string()
}

fn object_reference(
    kind: MeshKind,
    object: &DynamicObject,
) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(kind.api_version()),
        kind: Some(kind.kind.to_owned()),
        name: object.metadata.name.clone(),
        namespace: object.metadata.namespace.clone(),
        uid: object.metadata.uid.clone(),
        resource_version: object.metadata.resource_version.clone(),
        field_path: None,
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
