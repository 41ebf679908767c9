#!/usr/bin/env python3
"""Validate the Kubernetes manifests in k8s/ (and k8s/monitoring/) without a cluster.

Checks, one output line per group:
  files       the file names the tutorial applies exist; each app file holds its one resource;
              no kustomization.yaml in monitoring/; namespace.yaml sorts first there
  parse       every YAML document loads and names apiVersion, kind, metadata.name; no duplicates
  schema      core Kubernetes kinds against the Kubernetes OpenAPI schemas bundled with the
              kubernetes-validate package, strict mode (unknown fields are errors)
  istio       Gateway/VirtualService in gateway.yaml (no bundled schema: explicit checks)
  kustomize   kustomization.yaml lists exactly the 14 app files, all present, no duplicates
  mesh        the k8s/mesh overlay (embedded mesh): its kustomization lists the base's files and
              its own, every base Deployment is patched once; meshd's ServiceAccount, Service
              (grpc 15012, http-dashboard 20001) and Deployment (--token-review, no --token-dir,
              --config-source dir,kubernetes; ClusterRole meshd = exactly get/list/watch on the six
              config kinds, create tokenreviews, create/patch events.k8s.io events, bound to
              ServiceAccount default/meshd; the CRDs of k8s/mesh/crds structural, valid, groups/
              versions/storage/plural/kind/short names as Istio's, not in the overlay and
              documented in k8s/README.md; no Secret mesh-tokens: compose's only; config dirs = ConfigMap mesh-base then ConfigMap mesh-config, CA dir
              /var/lib/meshd/ca = the user's Secret meshd-ca read-only, mode 0400/0440 with
              fsGroup 65532, no emptyDir/PVC, nothing mounted over or under it, no --ca-dir,
              --ca-cert, --ca-key, --publish-root or --namespace flag; env only POD_NAMESPACE, POD_NAME
              from fieldRef metadata.namespace/name; tcpSocket probes); mesh-base holds exactly
              mesh-config/base/*, byte for byte; each patched workload joins meshd at
              https://meshd:15012, trusts MESH_CA_FILE = key root-cert.pem of the user's ConfigMap
              mesh-ca-root-cert mounted read-only, MESH_TOKEN_FILE = a projected serviceAccountToken for meshd's
              --token-audience (default meshd), serviceAccountName = its account; probed on
              the admin port 15021; the ingress gateway (ServiceAccount, LoadBalancer Service
              80/8080 -> 8080, Deployment of mesh-proxy as
              istio-system/istio-ingressgateway-service-account with only its own token and the
              same MESH_CA_FILE, ports 8080 and admin 15021, tcpSocket probes on 8080) is what
              mesh-base's Gateway selects; its three objects say namespace istio-system, which
              the overlay declares (identical to k8s/monitoring's Namespace), everything else
              sets none, nor does the Kustomization. Every meshed container (workload, sidecar,
              gateway) claims its own pod's <namespace>/<serviceAccountName> (MESH_NAMESPACE/
              MESH_SERVICE_ACCOUNT or the binary's defaults: the TokenReview proves no other)
              and names meshd in MESH_CONTROL_PLANE by a name of meshd's serving certificate
              (meshd, meshd.<its ns>.svc[.cluster.local]) that resolves from the pod's namespace
              (the gateway: https://meshd.default.svc:15012). k8s/README.md creates ConfigMap
              mesh-ca-root-cert, before the apply, in every namespace a pod mounts it from (a
              non-default one created first), and in all of them in each code block that
              creates or replaces it (the rotation too). Secret meshd-ca and ConfigMap
              mesh-ca-root-cert are defined by no manifest (the user creates them; k8s/README.md
              must show how), no file under k8s/ holds a PEM private key, and only meshd mounts
              the Secret. With kubectl on PATH, `kubectl kustomize` (offline) must render the
              overlay as merged here
  sidecar     the k8s/sidecar overlay (the same mesh, each app beside a `mesh-proxy sidecar`):
              its kustomization lists the base's files and every own resource of k8s/mesh as
              ../mesh/<file> (which get all of the mesh group's checks again, as deployed here),
              and patches every base Deployment and Service once. Each app container gets
              MESH_MODE=sidecar and nothing else (no MESH_*/OTEL_*, no mount of the token or the
              CA root, the base's port 9080 only, probes exec `/<app> --health-check` or httpGet
              /healthz/ready on the sidecar's admin port, never 9080: it is loopback only); beside
              it exactly one container mesh-proxy: the gateway's image, args `sidecar --service
              <app>` with only known flags (app port 9080, health path /health, bind 0.0.0.0,
              four distinct ports), joining meshd at https://meshd:15012 with the ConfigMap root,
              the pod's service account (bookinfo-<service>, namespace default) and only that
              key of Secret mesh-tokens, SERVICE_VERSION = the pod's version label, containerPorts
              the inbound port (15006) and 15021 admin (not the loopback outbound port),
              probes httpGet /healthz/ready on 15021; each app Service keeps only 9080/http, its
              selector and labels, and targets the inbound port of the sidecars it selects. With
              kubectl on PATH, `kubectl kustomize` must render it as merged here (Deployments and
              Services)
  compose     docker-compose.yml (which runs the app in the mesh) agrees with the base
              Deployments plus the overlay's patches (image, env, port, health checks), its meshd
              with the overlay's meshd (flags but the compose-only --publish-root, both config
              dirs; no env, but POD_NAMESPACE in k8s), its istio-ingressgateway with
              the overlay's gateway (image, args, env, ports; the only published app port,
              productpage is not), docker/mesh-tokens/* with compose's secrets (k8s has no demo
              tokens: projected ServiceAccount tokens by design; --token-dir compose-only,
              --token-review/--config-source k8s-only); OTEL_* by name only (compose's point at its own Jaeger);
              SESSION_SECRET as compose's empty default against an optional secretKeyRef. Trust:
              every meshed service has MESH_CONTROL_PLANE=https://meshd:15012 on both sides (k8s's
              gateway, in istio-system: https://meshd.default.svc[.cluster.local]:15012) and the same
              MESH_CA_FILE on both sides, in compose a read-only mount of volume mesh-ca-root;
              compose's meshd writes exactly that file with --publish-root into mesh-ca-root
              mounted read-write (by it alone), keeps its CA in a volume of its own that no other
              service mounts; docker/Dockerfile* give meshd's ENTRYPOINT --ca-dir /var/lib/meshd/ca.
              Every app's MESH_MODE is ${MESH_MODE:-embedded} (k8s/mesh: unset or embedded).
              Profile sidecar, read with MESH_MODE=sidecar, against k8s/sidecar: exactly one
              <service>-sidecar per app service, only in that profile, network_mode
              service:<service> without networks/ports/hostname/..., depends_on the app and
              meshd, the k8s sidecar's image (= the gateway's), args, env (OTEL_* by name; trust
              as above), its own token secret only at /run/secrets/<ns>.<sa>, only mesh-ca-root
              read-only, healthcheck `/mesh-proxy <args> --health-check`; the app service's env
              (mesh settings aside) and healthcheck = the k8s/sidecar app container's env and exec
              probe. With docker-compose on PATH, `docker-compose config` and
              `MESH_MODE=sidecar docker-compose --profile sidecar config` accept the file and give
              every app the expected MESH_MODE and every sidecar network_mode, no networks
  contract    Services, Deployments and ServiceAccounts of the app follow the Bookinfo contract;
              every container of every Deployment has probes, requests and runAsNonRoot;
              references (selectors, service accounts, config maps, role bindings) resolve
  monitoring  Prometheus, Jaeger and Kiali in istio-system are wired together
  telemetry   k8s/monitoring serves each mesh overlay (k8s/mesh; k8s/sidecar, whose meshed
              container is the sidecar) as compose's observability profile serves
              compose, on the overlay as `kubectl kustomize` renders it (as merged here without
              kubectl): every meshed pod (the six workloads and the gateway) is annotated
              prometheus.io/scrape "true", port "15021", path "/stats/prometheus" and declares
              containerPort 15021 `admin`; following k8s/monitoring's Prometheus config (its
              role-pod relabelling, simulated) a pod is scraped at <pod>:15021/stats/prometheus
              and nowhere else, the same port and path for the same workloads as
              docker/prometheus.yml; OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT resolves, from the app's
              namespace, to a k8s/monitoring Service port that reaches Jaeger's OTLP receiver for
              OTEL_EXPORTER_OTLP_PROTOCOL (grpc 4317 by default, http/protobuf 4318); meshd's
              dashboard is on and Service meshd publishes it on the port compose publishes. In the
              base k8s/, productpage alone is scraped, at <pod>:9080/metrics, and no container
              sets OTEL_*
  mysql       k8s/mysql (optional): ratings v2 on MySQL as upstream's bookinfo-mysql.yaml and
              bookinfo-ratings-v2-mysql.yaml, the init SQL an exact copy of
              ratings/mysql/ratings-init.sql, in agreement with compose's ratings-v2 profile

Ends with `k8s: <n> passed, <m> failed` and exits 1 when anything failed.
Needs PyYAML and kubernetes-validate (`pip install kubernetes-validate`); no cluster; kubectl
and docker-compose optional. The overlays' resources and their patched Deployments and
Services get the schema checks too.

Usage: scripts/validate-k8s.py [--root DIR] [--k8s-version 1.32] [-v]
"""

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("validate-k8s: PyYAML is missing: pip install kubernetes-validate (pulls it in)")

K8S_VERSION = "1.32"

# The files the tutorial applies one by one, in this order, and what each must hold.
APP_FILES = {
    "serviceAccountBookDetail.yaml": ("ServiceAccount", "bookinfo-details"),
    "serviceAccountRating.yaml": ("ServiceAccount", "bookinfo-ratings"),
    "serviceAccountReviews.yaml": ("ServiceAccount", "bookinfo-reviews"),
    "serviceAccountProductPage.yaml": ("ServiceAccount", "bookinfo-productpage"),
    "serviceBookDetail.yaml": ("Service", "details"),
    "serviceRating.yaml": ("Service", "ratings"),
    "serviceReviews.yaml": ("Service", "reviews"),
    "serviceProduct.yaml": ("Service", "productpage"),
    "deploymentBookDetail.yaml": ("Deployment", "details-v1"),
    "deploymentRating.yaml": ("Deployment", "ratings-v1"),
    "deploymentReviews.yaml": ("Deployment", "reviews-v1"),
    "deploymentReviewsV2.yaml": ("Deployment", "reviews-v2"),
    "deploymentReviewsV3.yaml": ("Deployment", "reviews-v3"),
    "deploymentProductPage.yaml": ("Deployment", "productpage-v1"),
}
APPS = ["details", "ratings", "reviews", "productpage"]
APP_PORT = 9080
# docker-compose service -> Deployment.
COMPOSE_TO_DEPLOYMENT = {
    "details": "details-v1",
    "ratings": "ratings-v1",
    "reviews-v1": "reviews-v1",
    "reviews-v2": "reviews-v2",
    "reviews-v3": "reviews-v3",
    "productpage": "productpage-v1",
}
ISTIO_NS = "istio-system"
# The k8s/mesh overlay (embedded mesh) and docker-compose.yml's meshd.
MESH_DIR = "mesh"
# The k8s/sidecar overlay (the same mesh, each app beside a `mesh-proxy sidecar`) and compose's
# profile of the same name. The app's env MESH_MODE picks its data plane: embedded (the default;
# compose gives ${MESH_MODE:-embedded}) or sidecar.
SIDECAR_DIR = "sidecar"
SIDECAR_PROFILE = "sidecar"
SIDECAR_CONTAINER = "mesh-proxy"
MESH_MODE_VAR = "MESH_MODE"
MESH_MODE_EMBEDDED = "embedded"
MESH_MODE_SIDECAR = "sidecar"
# `mesh-proxy sidecar`'s flags: (env it also reads, default).
SIDECAR_FLAGS = {"--service": ("MESH_SERVICE", None), "--app-port": ("MESH_APP_PORT", "9080"),
                 "--inbound-port": ("MESH_INBOUND_PORT", "15006"),
                 "--outbound-port": ("MESH_OUTBOUND_PORT", "15001"), "--app-health-path": (None, "/health"),
                 "--bind": (None, "0.0.0.0")}
MESHD = "meshd"
MESHD_PORT = 15012
MESHD_FLAGS = ("--config-dir",)
# Flags only one side gives: compose checks its demo tokens (--token-dir, docker/mesh-tokens);
# k8s checks projected ServiceAccount tokens by TokenReview and also watches the API server.
COMPOSE_ONLY_TOKEN_FLAGS = ("--token-dir",)
K8S_ONLY_MESHD_FLAGS = ("--token-review", "--token-audience", "--config-source", "--kubernetes-endpoints")
# meshd's default --token-audience: what every projected serviceAccountToken must be for.
DEFAULT_TOKEN_AUDIENCE = "meshd"
# The config kinds meshd watches with --config-source kubernetes: (group, kind, plural, short
# name, served versions, storage version), as Istio serves them; ours is mesh.bookinfo.io.
MESH_CRDS = [
    ("networking.istio.io", "VirtualService", "virtualservices", "vs", ["v1", "v1beta1", "v1alpha3"], "v1"),
    ("networking.istio.io", "DestinationRule", "destinationrules", "dr", ["v1", "v1beta1", "v1alpha3"], "v1"),
    ("networking.istio.io", "Gateway", "gateways", "gw", ["v1", "v1beta1", "v1alpha3"], "v1"),
    ("security.istio.io", "PeerAuthentication", "peerauthentications", "pa", ["v1", "v1beta1"], "v1"),
    ("security.istio.io", "AuthorizationPolicy", "authorizationpolicies", "ap", ["v1", "v1beta1"], "v1"),
    ("mesh.bookinfo.io", "LocalRateLimit", "localratelimits", None, ["v1alpha1"], "v1alpha1"),
]
CRD_DIR = "mesh/crds"
CRD_FILES = {"istio-kinds.yaml": "istio.io", "mesh-kinds.yaml": "mesh.bookinfo.io"}
# Exactly what ClusterRole meshd grants: (apiGroup, resource) -> verbs.
MESHD_RBAC = dict([((g, p), {"get", "list", "watch"}) for g, _, p, _, _, _ in MESH_CRDS] +
                  [(("authentication.k8s.io", "tokenreviews"), {"create"}),
                   (("events.k8s.io", "events"), {"create", "patch"}),
                   (("discovery.k8s.io", "endpointslices"), {"get", "list", "watch"}),
                   (("", "pods"), {"get", "list", "watch"})])
# meshd's API is TLS only; its serving certificate names `meshd` (and meshd.<ns>.svc...).
MESHD_URL = "https://%s:%d" % (MESHD, MESHD_PORT)
# The CA: the image's entrypoint is `/meshd --ca-dir /var/lib/meshd/ca` (docker/Dockerfile*).
# In k8s it is the user's Secret meshd-ca mounted read-only there (meshd loads the two files and
# never writes); every workload trusts its public half, the user's ConfigMap mesh-ca-root-cert,
# mounted read-only (MESH_CA_FILE). Neither object is in the repository: the user creates both
# (k8s/README.md). Compose shares a volume instead: meshd writes the root with --publish-root
# into volume mesh-ca-root, which every workload mounts read-only.
MESHD_CA_DIR = "/var/lib/meshd/ca"
MESHD_DOCKERFILES = ("docker/Dockerfile", "docker/Dockerfile.prebuilt")
CA_CERT_FILE = "root-cert.pem"
CA_KEY_FILE = "root-key.pem"
MESHD_CA_SECRET = "meshd-ca"
MESH_CA_ROOT_CM = "mesh-ca-root-cert"
# Created by the user (k8s/README.md), never shipped: (kind, name) -> the keys it must hold.
SUPPLIED = {("Secret", MESHD_CA_SECRET): (CA_CERT_FILE, CA_KEY_FILE),
            ("ConfigMap", MESH_CA_ROOT_CM): (CA_CERT_FILE,)}
COMPOSE_CA_ROOT_VOLUME = "mesh-ca-root"
# meshd flags only compose gives: there is no volume pods share in k8s.
COMPOSE_ONLY_MESHD_FLAGS = ("--publish-root",)
# k8s meshd flags that would bypass the Secret at the CA dir, or duplicate POD_NAMESPACE.
K8S_FORBIDDEN_MESHD_FLAGS = ("--ca-dir", "--ca-cert", "--ca-key", "--publish-root", "--namespace")
# meshd's only env in k8s: its namespace from the downward API (its certificate's
# meshd.<namespace>.svc); everything else is a flag, as in compose.
MESHD_ENV_FIELDS = {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
# Both sides run containers as this user and group (fsGroup makes 0440 Secret files readable).
RUN_AS = 65532
MESH_TOKENS_SECRET = "mesh-tokens"
MESH_CONFIG_CM = "mesh-config"
# meshd's always-applied config: ConfigMap mesh-base == the files of mesh-config/base, mounted
# as the first --config-dir (compose mounts ./mesh-config/base there), mesh-config second.
MESH_BASE_CM = "mesh-base"
MESH_BASE_DIR = "mesh-config/base"
# The ingress gateway (`mesh-proxy gateway`): compose service, Deployment and Service of the same
# name in the overlay. Its identity is istio-system's istio-ingressgateway-service-account, as
# with Istio, and a TokenReview proves only the pod's own account: so its ServiceAccount, Service
# and Deployment are in namespace istio-system (explicitly; the rest of the overlay goes to the
# namespace it is applied to, default), which the overlay declares as k8s/monitoring does, and it
# reaches meshd (in default) by a name of meshd's certificate that resolves from there.
GATEWAY = "istio-ingressgateway"
GATEWAY_IMAGE = "bookinfo-rs/mesh-proxy:latest"
SIDECAR_IMAGE = GATEWAY_IMAGE
GATEWAY_ARGS = ["gateway", "--port", "8080"]
GATEWAY_PORT = 8080
GATEWAY_LABELS = {"app": GATEWAY, "istio": "ingressgateway"}
GATEWAY_NS = "istio-system"
GATEWAY_SA = "istio-ingressgateway-service-account"
GATEWAY_TOKEN = "%s.%s" % (GATEWAY_NS, GATEWAY_SA)
GATEWAY_OBJECTS = {("ServiceAccount", GATEWAY_SA), ("Service", GATEWAY), ("Deployment", GATEWAY)}
# What a meshed container claims when MESH_NAMESPACE / MESH_SERVICE_ACCOUNT are unset:
# mesh-proxy gateway's identity (mesh-lib/proxy/src/main.rs), else (an app, or
# `mesh-proxy sidecar --service <name>`) default / bookinfo-<name> (mesh-lib/src/workload.rs).
WORKLOAD_DEFAULT_NS = "default"
# Service port -> (name, targetPort), as Istio's ingress Service maps 80 to the gateway's 8080.
GATEWAY_SERVICE_PORTS = {80: ("http2", GATEWAY_PORT), GATEWAY_PORT: ("http", GATEWAY_PORT)}
ADMIN_PORT = 15021
READ_VERBS = {"get", "list", "watch"}
# Metrics: plain (k8s/), productpage serves its own on the app port; in the mesh (k8s/mesh, as in
# docker/prometheus.yml) every workload and the gateway serve Istio's on the admin port.
APP_METRICS_PATH = "/metrics"
MESH_METRICS_PATH = "/stats/prometheus"
COMPOSE_PROMETHEUS = "docker/prometheus.yml"
# meshd's dashboard: its default --dashboard 0.0.0.0:20001, published by compose.
MESHD_DASHBOARD_PORT = 20001
# Traces: mesh-lib/src/telemetry/tracing.rs reads these; the protocol defaults to grpc.
OTLP_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
OTLP_PROTOCOL_VAR = "OTEL_EXPORTER_OTLP_PROTOCOL"
OTLP_DEFAULT_PROTOCOL = "grpc"
# Jaeger all-in-one's OTLP receivers per protocol: (default port, env that moves it).
JAEGER_OTLP = {"grpc": (4317, "COLLECTOR_OTLP_GRPC_HOST_PORT"),
               "http/protobuf": (4318, "COLLECTOR_OTLP_HTTP_HOST_PORT")}


class Group:
    """One check group: counts passes, collects failure messages."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failures = []

    def check(self, ok, message):
        if ok:
            self.passed += 1
        else:
            self.failures.append(message)
        return bool(ok)

    def fail(self, message):
        return self.check(False, message)


class Doc:
    def __init__(self, path, rel, index, data):
        self.path = path
        self.rel = rel
        self.index = index
        self.data = data

    @property
    def kind(self):
        return self.data.get("kind", "?")

    @property
    def meta(self):
        m = self.data.get("metadata")
        return m if isinstance(m, dict) else {}

    @property
    def name(self):
        return self.meta.get("name", "?")

    @property
    def namespace(self):
        return self.meta.get("namespace")

    def where(self):
        return "%s: %s/%s" % (self.rel, self.kind, self.name)


def dig(data, *keys, default=None):
    for key in keys:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return default
    return data


def as_str(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


# ---------------------------------------------------------------------------------------------
# loading


def load_docs(root, g_files, g_parse):
    k8s = root / "k8s"
    mon = k8s / "monitoring"
    g_files.check(k8s.is_dir(), "%s: directory missing" % k8s)
    for name in list(APP_FILES) + ["gateway.yaml", "kustomization.yaml", "README.md"]:
        g_files.check((k8s / name).is_file(), "k8s/%s: file missing" % name)
    g_files.check(mon.is_dir(), "k8s/monitoring: directory missing")
    mon_files = sorted(p.name for p in mon.glob("*.y*ml")) if mon.is_dir() else []
    g_files.check(
        "kustomization.yaml" not in mon_files and "kustomization.yml" not in mon_files,
        "k8s/monitoring/kustomization.yaml: must not exist (`kubectl apply -f monitoring` "
        "would try to apply it as a resource)",
    )
    g_files.check(
        bool(mon_files) and mon_files[0] == "namespace.yaml",
        "k8s/monitoring: namespace.yaml must exist and sort first (kubectl applies the "
        "directory in name order), found %s" % mon_files,
    )

    paths = sorted(k8s.glob("*.yaml")) + sorted(mon.glob("*.yaml"))
    for p in sorted(k8s.glob("*.yml")) + sorted(mon.glob("*.yml")):
        g_files.fail("%s: use the .yaml extension" % p.relative_to(root))
    docs, kustomization = [], None
    for path in paths:
        rel = str(path.relative_to(root))
        try:
            loaded = list(yaml.safe_load_all(path.read_text()))
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
            g_parse.fail("%s: cannot parse YAML: %s" % (rel, str(e).replace("\n", " ")))
            continue
        loaded = [d for d in loaded if d is not None]
        g_parse.check(loaded, "%s: no YAML document" % rel)
        for i, data in enumerate(loaded):
            if not g_parse.check(isinstance(data, dict), "%s: document %d is not a mapping" % (rel, i)):
                continue
            if path.name == "kustomization.yaml" and path.parent == k8s:
                kustomization = Doc(path, rel, i, data)
                continue
            ok = g_parse.check(
                isinstance(data.get("apiVersion"), str) and isinstance(data.get("kind"), str),
                "%s: document %d lacks apiVersion or kind" % (rel, i),
            )
            ok = g_parse.check(
                isinstance(dig(data, "metadata", "name"), str),
                "%s: document %d (%s) lacks metadata.name" % (rel, i, data.get("kind")),
            ) and ok
            if ok:
                docs.append(Doc(path, rel, i, data))
    seen = {}
    for d in docs:
        key = (d.data["apiVersion"].split("/")[0] if "/" in d.data["apiVersion"] else "",
               d.kind, d.namespace, d.name)
        g_parse.check(key not in seen, "%s: duplicate of the resource in %s" % (
            d.where(), seen.get(key)))
        seen.setdefault(key, d.rel)
    return docs, kustomization


def is_istio(doc):
    return doc.data.get("apiVersion", "").split("/")[0].endswith("istio.io")


# ---------------------------------------------------------------------------------------------
# schema


def check_schema(docs, g, wanted_version):
    try:
        import kubernetes_validate as kv
        from kubernetes_validate.utils import VersionNotSupportedError
    except ImportError:
        g.fail("kubernetes_validate is not installed: pip install kubernetes-validate")
        return None
    version = wanted_version
    try:
        kv.validate({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}},
                    version, strict=True)
    except VersionNotSupportedError:
        version = kv.latest_version()
    used = None
    for d in docs:
        if is_istio(d):
            continue
        try:
            used = kv.validate(d.data, version, strict=True)
            g.check(True, "")
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top level)"
            g.fail("%s: schema (Kubernetes %s): %s: %s" % (d.where(), e.version, path, e.message))
        except kv.SchemaNotFoundError:
            g.fail("%s: no Kubernetes %s schema for %s %s (unknown kind or apiVersion)" % (
                d.where(), version, d.data.get("apiVersion"), d.kind))
        except Exception as e:  # a broken schema or document: report, keep going
            g.fail("%s: could not be validated: %s" % (d.where(), e))
    return "%s (kubernetes-validate %s)" % (used or version, getattr(kv, "__version__", "?"))


# ---------------------------------------------------------------------------------------------
# istio


def check_keys(g, where, obj, allowed, path):
    if not g.check(isinstance(obj, dict), "%s: %s must be a mapping" % (where, path)):
        return False
    extra = sorted(set(obj) - set(allowed))
    return g.check(not extra, "%s: %s has unknown field(s) %s" % (where, path, extra))


def check_istio(docs, g):
    istio = [d for d in docs if is_istio(d)]
    for d in istio:
        g.check(d.rel == "k8s/gateway.yaml", "%s: Istio resources belong in k8s/gateway.yaml" % d.where())
        g.check(d.data.get("apiVersion") == "networking.istio.io/v1",
                "%s: apiVersion must be networking.istio.io/v1, is %r" % (d.where(), d.data.get("apiVersion")))
        g.check(d.kind in ("Gateway", "VirtualService"), "%s: unexpected Istio kind" % d.where())
        check_keys(g, d.where(), d.data, ["apiVersion", "kind", "metadata", "spec"], "top level")
        g.check(d.namespace is None, "%s: must not set metadata.namespace" % d.where())
    gws = [d for d in istio if d.kind == "Gateway"]
    vss = [d for d in istio if d.kind == "VirtualService"]
    if g.check(len(gws) == 1 and gws[0].name == "bookinfo-gateway",
               "k8s/gateway.yaml: expected exactly one Gateway bookinfo-gateway, found %s" % [d.name for d in gws]):
        d = gws[0]
        w, spec = d.where(), d.data.get("spec")
        if check_keys(g, w, spec, ["selector", "servers"], "spec"):
            g.check(spec.get("selector") == {"istio": "ingressgateway"},
                    "%s: spec.selector must be {istio: ingressgateway}, is %r" % (w, spec.get("selector")))
            servers = spec.get("servers")
            if g.check(isinstance(servers, list) and len(servers) == 1,
                       "%s: spec.servers must hold exactly one server" % w):
                s = servers[0]
                if check_keys(g, w, s, ["port", "hosts"], "spec.servers[0]"):
                    port = s.get("port")
                    if check_keys(g, w, port, ["number", "name", "protocol"], "spec.servers[0].port"):
                        g.check(port.get("number") == 8080,
                                "%s: server port number must be 8080 (the ingress Service maps 80 -> 8080), is %r"
                                % (w, port.get("number")))
                        g.check(port.get("name") == "http", "%s: server port name must be http" % w)
                        g.check(port.get("protocol") == "HTTP", "%s: server port protocol must be HTTP" % w)
                    g.check(s.get("hosts") == ["*"], "%s: server hosts must be [\"*\"], is %r" % (w, s.get("hosts")))
    if g.check(len(vss) == 1 and vss[0].name == "bookinfo",
               "k8s/gateway.yaml: expected exactly one VirtualService bookinfo, found %s" % [d.name for d in vss]):
        d = vss[0]
        w, spec = d.where(), d.data.get("spec")
        if check_keys(g, w, spec, ["hosts", "gateways", "http"], "spec"):
            g.check(spec.get("hosts") == ["*"], "%s: spec.hosts must be [\"*\"], is %r" % (w, spec.get("hosts")))
            g.check(spec.get("gateways") == ["bookinfo-gateway"],
                    "%s: spec.gateways must be [bookinfo-gateway], is %r" % (w, spec.get("gateways")))
            http = spec.get("http")
            if g.check(isinstance(http, list) and len(http) == 1, "%s: spec.http must hold one rule" % w):
                rule = http[0]
                if check_keys(g, w, rule, ["match", "route"], "spec.http[0]"):
                    want = [{"uri": {"exact": "/productpage"}}, {"uri": {"prefix": "/static"}},
                            {"uri": {"exact": "/login"}}, {"uri": {"exact": "/logout"}},
                            {"uri": {"prefix": "/api/v1/products"}}]
                    g.check(rule.get("match") == want,
                            "%s: spec.http[0].match must be %r, is %r" % (w, want, rule.get("match")))
                    route = rule.get("route")
                    want_route = [{"destination": {"host": "productpage", "port": {"number": APP_PORT}}}]
                    g.check(route == want_route,
                            "%s: spec.http[0].route must be %r, is %r" % (w, want_route, route))


# ---------------------------------------------------------------------------------------------
# kustomization


def check_kustomization(root, kust, g):
    if not g.check(kust is not None, "k8s/kustomization.yaml: missing or unparsable"):
        return
    w, data = kust.rel, kust.data
    g.check(data.get("apiVersion") == "kustomize.config.k8s.io/v1beta1",
            "%s: apiVersion must be kustomize.config.k8s.io/v1beta1" % w)
    g.check(data.get("kind") == "Kustomization", "%s: kind must be Kustomization" % w)
    extra = sorted(set(data) - {"apiVersion", "kind", "resources"})
    g.check(not extra, "%s: unexpected field(s) %s" % (w, extra))
    res = data.get("resources")
    if not g.check(isinstance(res, list) and all(isinstance(r, str) for r in res),
                   "%s: resources must be a list of file names" % w):
        return
    dups = sorted({r for r in res if res.count(r) > 1})
    g.check(not dups, "%s: duplicate resources %s" % (w, dups))
    missing = sorted(set(APP_FILES) - set(res))
    g.check(not missing, "%s: resources lack %s" % (w, missing))
    extra = sorted(set(res) - set(APP_FILES))
    g.check(not extra, "%s: resources must list only the 14 app files, also lists %s "
                       "(gateway.yaml and monitoring/ need Istio CRDs / istio-system)" % (w, extra))
    for r in res:
        g.check((root / "k8s" / r).is_file(), "%s: resource %s does not exist" % (w, r))
    stray = sorted(p.name for p in (root / "k8s").glob("*.yaml")
                   if p.name not in APP_FILES and p.name not in ("gateway.yaml", "kustomization.yaml"))
    g.check(not stray, "k8s/: files %s are neither app files nor gateway.yaml" % stray)


# ---------------------------------------------------------------------------------------------
# k8s/mesh and k8s/sidecar: the overlays that run the app in the mesh (embedded, or sidecars)


# Strategic-merge keys of the list fields the patches touch (as kustomize merges them).
SMP_MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
                  "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name"}
# A Service's ports merge on their port number (ServicePort's patchMergeKey).
SMP_SERVICE_KEYS = dict(SMP_MERGE_KEYS, ports="port")
PROBE_HANDLERS = ("httpGet", "tcpSocket", "exec", "grpc")


def smp_keys(kind):
    return SMP_SERVICE_KEYS if kind == "Service" else SMP_MERGE_KEYS


def smp_merge(base, patch, field=None, keys=SMP_MERGE_KEYS):
    """A strategic merge patch, enough for Deployment and Service patches: maps merge, null
    deletes, lists with a merge key merge item by item (new items first, as kustomize puts them),
    other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = smp_merge(out[k], v, k, keys)
            else:
                out[k] = copy.deepcopy(v)
        return out
    key = keys.get(field)
    if key and isinstance(base, list) and isinstance(patch, list) \
            and all(isinstance(i, dict) for i in base + patch):
        out, added = [dict(i) for i in base], []
        for item in patch:
            idx = next((n for n, b in enumerate(out) if b.get(key) == item.get(key)), None)
            if idx is None:
                added.append(copy.deepcopy(item))
            else:
                out[idx] = smp_merge(out[idx], item, None, keys)
        return added + out
    return copy.deepcopy(patch)


class Mesh:
    """An overlay: its kustomization, resources (meshd, Secret, ConfigMap, ...; for k8s/sidecar
    k8s/mesh's own files), patches and the effective Deployments and Services (base + patch).
    mode: "embedded" (k8s/mesh: the apps join meshd) or "sidecar" (k8s/sidecar)."""

    def __init__(self, dirname=MESH_DIR, mode="embedded"):
        self.dir = dirname
        self.mode = mode
        self.kust = None
        self.docs = []
        # The overlay's own resource files (not ../): names relative to k8s/<dir>.
        self.local = []
        self.patches = []
        self.effective = {}
        self.effective_services = {}
        # What `kubectl kustomize` rendered (Docs), when kubectl is on PATH and it succeeded.
        self.rendered = None

    def find(self, kind, name):
        return next((d for d in self.docs if d.kind == kind and d.name == name), None)

    def deployed(self):
        """Everything the overlay deploys, as merged here: base app (patched) + its resources."""
        return list(self.effective.values()) + list(self.effective_services.values()) + \
            [d for d in self.docs if (d.kind, d.name) not in
             {("Deployment", n) for n in self.effective} | {("Service", n) for n in self.effective_services}]


def load_yaml_docs(root, path, g_parse):
    rel = str(path.relative_to(root))
    try:
        loaded = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        g_parse.fail("%s: cannot parse YAML: %s" % (rel, str(e).replace("\n", " ")))
        return []
    g_parse.check(loaded, "%s: no YAML document" % rel)
    out = []
    for i, data in enumerate(loaded):
        if not g_parse.check(isinstance(data, dict), "%s: document %d is not a mapping" % (rel, i)):
            continue
        ok = g_parse.check(isinstance(data.get("apiVersion"), str) and isinstance(data.get("kind"), str),
                           "%s: document %d lacks apiVersion or kind" % (rel, i))
        ok = g_parse.check(isinstance(dig(data, "metadata", "name"), str),
                           "%s: document %d (%s) lacks metadata.name" % (rel, i, data.get("kind"))) and ok
        if ok:
            out.append(Doc(path, rel, i, data))
    return out


def load_mesh(root, base_docs, g_files, g_parse, g_mesh, dirname=MESH_DIR, mode="embedded", shared=None):
    """Loads overlay k8s/<dirname>. shared: an overlay (k8s/mesh) whose own resource files this
    one must list, all of them, as ../<its dir>/<file> (k8s/sidecar deploys the same mesh)."""
    mesh = Mesh(dirname, mode)
    mdir = root / "k8s" / dirname
    if not g_files.check(mdir.is_dir(), "k8s/%s: directory missing" % dirname):
        return mesh
    for p in sorted(mdir.glob("*.yml")) + sorted(mdir.glob("*/*.yml")):
        g_files.fail("%s: use the .yaml extension" % p.relative_to(root))

    def load(path):
        return load_yaml_docs(root, path, g_parse)

    kpath = mdir / "kustomization.yaml"
    if not g_files.check(kpath.is_file(), "k8s/%s/kustomization.yaml: file missing" % dirname):
        return mesh
    krel = str(kpath.relative_to(root))
    try:
        kd = [d for d in yaml.safe_load_all(kpath.read_text()) if d is not None]
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        g_parse.fail("%s: cannot parse YAML: %s" % (krel, str(e).replace("\n", " ")))
        return mesh
    if not g_mesh.check(len(kd) == 1 and isinstance(kd[0], dict), "%s: must hold one mapping" % krel):
        return mesh
    mesh.kust = Doc(kpath, krel, 0, kd[0])
    w, data = mesh.kust.rel, mesh.kust.data
    g_mesh.check(data.get("apiVersion") == "kustomize.config.k8s.io/v1beta1",
                 "%s: apiVersion must be kustomize.config.k8s.io/v1beta1" % w)
    g_mesh.check(data.get("kind") == "Kustomization", "%s: kind must be Kustomization" % w)
    extra = sorted(set(data) - {"apiVersion", "kind", "metadata", "resources", "patches"})
    g_mesh.check(not extra, "%s: unexpected field(s) %s" % (w, extra))
    res = data.get("resources")
    if not g_mesh.check(isinstance(res, list) and all(isinstance(r, str) for r in res),
                        "%s: resources must be a list of file names" % w):
        res = []
    dups = sorted({r for r in res if res.count(r) > 1})
    g_mesh.check(not dups, "%s: duplicate resources %s" % (w, dups))
    for r in res:
        p = (mdir / r)
        if p.is_dir():
            g_mesh.fail("%s: resource %s is a directory; kustomize rejects an overlay inside its base "
                        "(cycle): list the base's files as ../<file>.yaml" % (w, r))
        else:
            g_mesh.check(p.is_file(), "%s: resource %s does not exist" % (w, r))
    # The whole base app, file by file.
    base_kust = root / "k8s" / "kustomization.yaml"
    try:
        base_res = yaml.safe_load(base_kust.read_text()).get("resources") or []
    except Exception:  # reported by the kustomize group
        base_res = list(APP_FILES)
    listed_base = sorted(r[3:] for r in res if r.startswith("../") and "/" not in r[3:])
    g_mesh.check(listed_base == sorted(base_res),
                 "%s: must list the base's resources %s as ../<file>, lists %s" % (w, sorted(base_res), listed_base))
    # Another overlay's files: all of k8s/<shared>'s own resources, as ../<shared>/<file>.
    others = [r for r in res if r.startswith("../") and "/" in r[3:]]
    if shared is not None:
        prefix = "../%s/" % shared.dir
        listed = sorted(r[len(prefix):] for r in others if r.startswith(prefix))
        g_mesh.check(listed == sorted(shared.local),
                     "%s: must list every resource of k8s/%s, %s, as %s<file> (the same mesh), lists %s"
                     % (w, shared.dir, sorted(shared.local), prefix, listed))
        others = [r for r in others if not r.startswith(prefix) or "/" in r[len(prefix):]]
        sdir = root / "k8s" / shared.dir
        for r in sorted(set(res) & {prefix + f for f in shared.local}):
            if (sdir / r[len(prefix):]).is_file():
                mesh.docs.extend(load(sdir / r[len(prefix):]))
    g_mesh.check(not others, "%s: resources %s are neither the base's files nor %s" % (
        w, others, "k8s/%s's" % shared.dir if shared else "the overlay's own"))
    local = [r for r in res if not r.startswith("../")]
    mesh.local = local
    for r in local:
        g_mesh.check("/" not in r and r.endswith(".yaml"), "%s: resource %s must be a .yaml file in k8s/%s"
                     % (w, r, dirname))
    stray = sorted(p.name for p in mdir.glob("*.yaml") if p.name != "kustomization.yaml" and p.name not in local)
    g_mesh.check(not stray, "k8s/%s: files %s are not listed in kustomization.yaml resources" % (dirname, stray))
    for r in local:
        if (mdir / r).is_file():
            mesh.docs.extend(load(mdir / r))

    patches = data.get("patches") or []
    if not g_mesh.check(isinstance(patches, list), "%s: patches must be a list" % w):
        patches = []
    ppaths = []
    for i, pt in enumerate(patches):
        if not g_mesh.check(isinstance(pt, dict) and isinstance(pt.get("path"), str),
                            "%s: patches[%d] must name a file (path)" % (w, i)):
            continue
        g_mesh.check(set(pt) == {"path"}, "%s: patches[%d]: only strategic merge patches by path are "
                     "supported here (no target/patch/options), has %s" % (w, i, sorted(pt)))
        ppaths.append(pt["path"])
        pp = mdir / pt["path"]
        if not g_mesh.check(pp.is_file() and mdir.resolve() in pp.resolve().parents,
                            "%s: patch %s does not exist in k8s/%s" % (w, pt["path"], dirname)):
            continue
        pd = load(pp)
        if g_mesh.check(len(pd) == 1, "%s: a patch file must hold one document" % pp.relative_to(root)):
            mesh.patches.append(pd[0])
    g_mesh.check(len(set(ppaths)) == len(ppaths), "%s: duplicate patches" % w)
    stray = sorted(str(p.relative_to(mdir)) for p in mdir.glob("*/*.yaml") if str(p.relative_to(mdir)) not in ppaths
                   and p.parent.name != "crds")
    g_mesh.check(not stray, "k8s/%s: files %s are not listed in kustomization.yaml patches" % (dirname, stray))

    # Effective Deployments (and, in sidecar mode, Services): base + patch.
    targets = {"Deployment": ("apps/v1", mesh.effective), "Service": ("v1", mesh.effective_services)}
    if mode != "sidecar":
        del targets["Service"]
    base_of = {kind: {d.name: d for d in base_docs if d.kind == kind and d.rel.count("/") == 1} for kind in targets}
    patched = {}
    for p in mesh.patches:
        pw = p.where()
        ok = g_mesh.check(p.kind in targets and p.data.get("apiVersion") == targets[p.kind][0],
                          "%s: patches must target %s" % (pw, " or ".join("%s %ss" % (v, k) for k, (v, _)
                                                                           in sorted(targets.items()))))
        if not ok:
            continue
        ok = g_mesh.check(p.name in base_of[p.kind], "%s: patches no %s of the base (%s)"
                          % (pw, p.kind, sorted(base_of[p.kind])))
        ok = g_mesh.check((p.kind, p.name) not in patched, "%s: %s %s is already patched by %s"
                          % (pw, p.kind, p.name, patched.get((p.kind, p.name)))) and ok
        g_mesh.check(p.namespace is None, "%s: must not set metadata.namespace" % pw)
        if ok:
            patched[(p.kind, p.name)] = p.rel
            base = base_of[p.kind][p.name]
            targets[p.kind][1][p.name] = Doc(p.path, "%s (on %s)" % (p.rel, base.rel), 0,
                                             smp_merge(base.data, p.data, keys=smp_keys(p.kind)))
    for kind in sorted(targets):
        missing = sorted(set(base_of[kind]) - {n for k, n in patched if k == kind})
        g_mesh.check(not missing, "k8s/%s: base %ss %s are not patched" % (dirname, kind, missing))
    return mesh


def named_port(container, port):
    if isinstance(port, str):
        return {cp.get("name"): cp.get("containerPort") for cp in container.get("ports") or []}.get(port)
    return port


def check_mesh(root, base_docs, mesh, g):
    if mesh.kust is None:
        return
    md = lambda kind, name: mesh.find(kind, name)  # noqa: E731
    check_overlay_namespaces(base_docs, mesh, g)
    for d in mesh.docs:
        clash = [b for b in base_docs if b.rel.count("/") == 1 and b.kind == d.kind and b.name == d.name]
        g.check(not clash, "%s: the base already defines it (%s); patch it instead" % (
            d.where(), clash[0].rel if clash else ""))
    seen = set()
    for d in mesh.docs:
        g.check((d.kind, d.name) not in seen, "%s: defined twice in k8s/%s" % (d.where(), mesh.dir))
        seen.add((d.kind, d.name))

    # The Secret and the ConfigMap.
    # No demo tokens in k8s: workloads present projected ServiceAccount tokens (TokenReview).
    g.check(md("Secret", MESH_TOKENS_SECRET) is None and not (root / "k8s" / MESH_DIR / "mesh-tokens.yaml").exists(),
            "k8s/%s: Secret %s (demo tokens) is compose's only now; k8s uses projected ServiceAccount tokens"
            % (mesh.dir, MESH_TOKENS_SECRET))
    check_meshd_rbac(mesh, g)
    check_crds(root, mesh, g)
    cm = md("ConfigMap", MESH_CONFIG_CM)
    if g.check(cm is not None, "k8s/%s: no ConfigMap %s" % (mesh.dir, MESH_CONFIG_CM)):
        w = cm.where()
        data = cm.data.get("data")
        g.check(isinstance(data, dict), "%s: data must be a mapping (data: {} for no policy)" % w)
        g.check("binaryData" not in cm.data, "%s: no binaryData (meshd reads YAML)" % w)
        for k, v in (data or {}).items():
            g.check(str(k).endswith(".yaml"), "%s: key %s: meshd only reads *.yaml" % (w, k))
            try:
                list(yaml.safe_load_all(v or ""))
                g.check(True, "")
            except yaml.YAMLError as e:
                g.fail("%s: key %s does not parse: %s" % (w, k, str(e).replace("\n", " ")))

    base_cm = md("ConfigMap", MESH_BASE_CM)
    if g.check(base_cm is not None, "k8s/%s: no ConfigMap %s (the files of %s)" % (mesh.dir, MESH_BASE_CM, MESH_BASE_DIR)):
        w = base_cm.where()
        data = base_cm.data.get("data")
        g.check("binaryData" not in base_cm.data, "%s: no binaryData (meshd reads YAML)" % w)
        if g.check(isinstance(data, dict), "%s: data must be a mapping" % w):
            bdir = root / MESH_BASE_DIR
            files = {p.name: p for p in sorted(bdir.glob("*")) if p.is_file() and not p.name.startswith(".")} \
                if bdir.is_dir() else {}
            g.check(files, "%s: no files" % MESH_BASE_DIR)
            g.check(sorted(data) == sorted(files), "%s: data keys %s must be the files of %s, %s"
                    % (w, sorted(data), MESH_BASE_DIR, sorted(files)))
            for k, f in sorted(files.items()):
                if k not in data:
                    continue
                try:
                    want = f.read_bytes()
                except OSError as e:
                    g.fail("%s/%s: cannot read: %s" % (MESH_BASE_DIR, k, e))
                    continue
                got = data[k]
                g.check(isinstance(got, str) and got.encode() == want,
                        "%s: key %s differs from %s/%s (must be equal byte for byte%s)"
                        % (w, k, MESH_BASE_DIR, k, first_difference(got, want)))

    # meshd: ServiceAccount, Service, Deployment.
    sa = md("ServiceAccount", MESHD)
    if g.check(sa is not None, "k8s/%s: no ServiceAccount %s" % (mesh.dir, MESHD)):
        g.check(sa.meta.get("labels") == {"account": MESHD}, "%s: labels must be {account: %s}" % (sa.where(), MESHD))
    svc = md("Service", MESHD)
    if g.check(svc is not None, "k8s/%s: no Service %s" % (mesh.dir, MESHD)):
        spec = svc.data.get("spec") or {}
        ports = spec.get("ports") or []
        g.check(spec.get("selector") == {"app": MESHD}, "%s: selector must be {app: %s}" % (svc.where(), MESHD))
        # The control plane, and the dashboard (published, as compose publishes it).
        want = {MESHD_PORT: ("grpc", (MESHD_PORT, "grpc")),
                MESHD_DASHBOARD_PORT: ("http-dashboard", (MESHD_DASHBOARD_PORT, "http-dashboard"))}
        got = {p.get("port"): p for p in ports}
        g.check(len(ports) == len(want) and set(got) == set(want)
                and all(got[n].get("name") == name and got[n].get("targetPort", n) in targets
                        and got[n].get("protocol", "TCP") == "TCP" for n, (name, targets) in want.items()),
                "%s: ports must be %d named grpc and %d named http-dashboard (meshd's dashboard), has %r"
                % (svc.where(), MESHD_PORT, MESHD_DASHBOARD_PORT, ports))
    dep = md("Deployment", MESHD)
    if g.check(dep is not None, "k8s/%s: no Deployment %s" % (mesh.dir, MESHD)):
        w = dep.where()
        spec = dep.data.get("spec") or {}
        pod = dig(spec, "template", "spec", default={}) or {}
        g.check(spec.get("replicas") == 1, "%s: replicas must be 1 (one CA)" % w)
        g.check(dig(spec, "template", "metadata", "labels", "app") == MESHD, "%s: pods must be labelled app: %s" % (w, MESHD))
        g.check(pod.get("serviceAccountName") == MESHD, "%s: serviceAccountName must be %s" % (w, MESHD))
        cs = pod.get("containers") or []
        if g.check(len(cs) == 1 and cs[0].get("name") == MESHD, "%s: must have one container %s" % (w, MESHD)):
            c, cw = cs[0], "%s: container %s" % (w, MESHD)
            g.check(c.get("image") == "bookinfo-rs/%s:latest" % MESHD, "%s: image must be bookinfo-rs/%s:latest" % (cw, MESHD))
            g.check(c.get("imagePullPolicy") == "IfNotPresent", "%s: imagePullPolicy must be IfNotPresent" % cw)
            g.check("command" not in c, "%s: keep the image's entrypoint (it sets --ca-dir); use args" % cw)
            flags = flag_values([as_str(a) for a in c.get("args") or []])
            config_dirs = flag_lists([as_str(a) for a in c.get("args") or []]).get("--config-dir", [])
            mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}
            vols = {v.get("name"): v for v in pod.get("volumes") or []}

            def vol_at(path):
                m = mounts.get(path)
                return (m, vols.get(m.get("name"))) if m else (None, None)

            sources = [x for v in flag_lists([as_str(a) for a in c.get("args") or []]).get("--config-source", [])
                       for x in v.split(",")] or ["dir"]
            g.check("--token-review" in flags and flags.get("--token-review") in (None, ""),
                    "%s: args need --token-review (projected ServiceAccount tokens, checked by TokenReview)" % cw)
            g.check("--token-dir" not in flags, "%s: no --token-dir: k8s has no demo tokens" % cw)
            g.check("--kubernetes-endpoints" in flags and flags.get("--kubernetes-endpoints") in (None, ""),
                    "%s: args need --kubernetes-endpoints (Ready pods from EndpointSlices)" % cw)
            g.check("kubernetes" in sources and "dir" in sources and len(set(sources)) == len(sources)
                    and set(sources) <= {"dir", "kubernetes"},
                    "%s: --config-source must include dir and kubernetes (the ConfigMaps and the API "
                    "server), is %r" % (cw, sources))
            g.check(pod.get("automountServiceAccountToken") is not False,
                    "%s: meshd needs its ServiceAccount token for the API server (automountServiceAccountToken)" % w)
            if g.check(len(config_dirs) == 2, "%s: args need two --config-dir: the mount of ConfigMap %s, "
                       "then the mount of ConfigMap %s, have %r" % (cw, MESH_BASE_CM, MESH_CONFIG_CM, config_dirs)):
                for cdir, cmname in zip(config_dirs, (MESH_BASE_CM, MESH_CONFIG_CM)):
                    m, v = vol_at(cdir)
                    g.check(v and dig(v, "configMap", "name") == cmname and "subPath" not in m,
                            "%s: --config-dir %r must be a mount of ConfigMap %s (no subPath: updates must "
                            "propagate)" % (cw, cdir, cmname))
            check_meshd_ca(g, w, cw, pod, c)
            check_meshd_env(g, cw, c)
            cports = c.get("ports") or []
            g.check(any(p.get("containerPort") == MESHD_PORT and p.get("name") == "grpc" for p in cports),
                    "%s: must expose containerPort %d named grpc" % (cw, MESHD_PORT))
            g.check(any(p.get("containerPort") == MESHD_DASHBOARD_PORT and p.get("name") == "http-dashboard"
                        for p in cports),
                    "%s: must expose containerPort %d named http-dashboard (the dashboard)" % (cw, MESHD_DASHBOARD_PORT))
            for probe in ("readinessProbe", "livenessProbe"):
                pr = c.get(probe) or {}
                g.check(named_port(c, dig(pr, "tcpSocket", "port")) == MESHD_PORT
                        and not any(h in pr for h in PROBE_HANDLERS if h != "tcpSocket"),
                        "%s: %s must be tcpSocket on port %d" % (cw, probe, MESHD_PORT))
            check_security_context(g, cw, c)

    check_gateway(mesh, g)
    check_meshed_identities(mesh, g)
    check_supplied(root, base_docs, mesh, g)
    if mesh.mode == "sidecar":
        check_sidecar_workloads(base_docs, mesh, g)
    else:
        check_embedded_workloads(base_docs, mesh, g)


def base_deployment(base_docs, name):
    return next((b for b in base_docs if b.kind == "Deployment" and b.name == name and b.rel.count("/") == 1), None)


def check_embedded_workloads(base_docs, mesh, g):
    """k8s/mesh: each patched app container joins meshd itself."""
    for name, eff in sorted(mesh.effective.items()):
        w = eff.where()
        pod = dig(eff.data, "spec", "template", "spec", default={}) or {}
        app = dig(eff.data, "spec", "template", "metadata", "labels", "app")
        c = container_of(eff, app)
        if not g.check(isinstance(c, dict), "%s: no container %s" % (w, app)):
            continue
        cw = "%s: container %s" % (w, app)
        env = container_env(c)
        g.check(env.get("MESH_CONTROL_PLANE") == MESHD_URL,
                "%s: MESH_CONTROL_PLANE must be %s (Service %s; meshd's API is TLS only), is %r"
                % (cw, MESHD_URL, MESHD, env.get("MESH_CONTROL_PLANE")))
        g.check(env.get(MESH_MODE_VAR, MESH_MODE_EMBEDDED) == MESH_MODE_EMBEDDED,
                "%s: %s=%r; k8s/%s is the embedded mesh (unset or %s; sidecars are k8s/%s's)"
                % (cw, MESH_MODE_VAR, env.get(MESH_MODE_VAR), mesh.dir, MESH_MODE_EMBEDDED, SIDECAR_DIR))
        check_ca_root(g, w, cw, pod, c, env)
        # Its own token, and only that.
        own = "default.%s" % pod.get("serviceAccountName")
        g.check(own == "default.bookinfo-%s" % app, "%s: serviceAccountName must be bookinfo-%s" % (w, app))
        check_own_token(g, w, cw, pod, c, env, own, meshd_audience(mesh))
        # Admin port and probes.
        ports = {p.get("containerPort"): p.get("name") for p in c.get("ports") or []}
        g.check(ports.get(ADMIN_PORT) == "admin" and APP_PORT in ports,
                "%s: must expose %d and containerPort %d named admin, has %r" % (cw, APP_PORT, ADMIN_PORT, ports))
        for probe in ("readinessProbe", "livenessProbe"):
            pr = c.get(probe) or {}
            handlers = [h for h in PROBE_HANDLERS if h in pr]
            g.check(handlers == ["httpGet"] and dig(pr, "httpGet", "path") == "/healthz/ready"
                    and named_port(c, dig(pr, "httpGet", "port")) == ADMIN_PORT,
                    "%s: %s must be only httpGet /healthz/ready on port %d (9080 may be STRICT mTLS), is %r"
                    % (cw, probe, ADMIN_PORT, pr))
        # The patch adds, it does not drop: the base container's env stays.
        base = base_deployment(base_docs, name)
        benv = container_env(container_of(base, app) or {}) if base else {}
        g.check(all(env.get(k) == v for k, v in benv.items()), "%s: the patch changes base env %r" % (cw, benv))
        check_security_context(g, cw, c)


def as_port(value):
    """A port number given as an int or a decimal string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None


def sidecar_settings(c):
    """What `mesh-proxy sidecar` runs with in container c: each setting from its flag, else its
    env, else the binary's default; ports as ints (None when unparsable), plus the admin port
    (env MESH_ADMIN_PORT, default 15021) and the argument errors found."""
    args = [as_str(a) for a in c.get("args") or []]
    env = container_env(c)
    errors = []
    if args[:1] != ["sidecar"]:
        errors.append("args must start with the subcommand sidecar, are %r" % (args,))
    rest = args[1:]
    flags = flag_values(rest)
    positional = [a for i, a in enumerate(rest) if not a.startswith("--")
                  and not (i > 0 and rest[i - 1].startswith("--") and "=" not in rest[i - 1])]
    unknown = sorted(set(flags) - set(SIDECAR_FLAGS))
    if unknown or positional:
        errors.append("unknown flag(s) or stray argument(s) %s (mesh-proxy sidecar takes %s)"
                      % (unknown + positional, sorted(SIDECAR_FLAGS)))
    out = {}
    for flag, (var, default) in SIDECAR_FLAGS.items():
        key = flag[2:].replace("-", "_")
        value = flags.get(flag)
        if value is None and var:
            value = env.get(var)
        out[key] = value if value is not None else default
    for key in ("app_port", "inbound_port", "outbound_port"):
        out[key] = as_port(out[key])
    out["admin_port"] = as_port(env.get("MESH_ADMIN_PORT", str(ADMIN_PORT)))
    out["errors"] = errors
    return out


def check_sidecar_workloads(base_docs, mesh, g):
    """k8s/sidecar: each patched Deployment runs its app with MESH_MODE=sidecar (no mesh
    credential, loopback only, probed by its own --health-check or through the sidecar's admin
    port) beside container mesh-proxy (`mesh-proxy sidecar --service <app>`), which joins meshd
    as the pod's service account with only its token, trusts the ConfigMap root, declares its
    inbound and admin ports and is probed on /healthz/ready; each app Service keeps 9080/http and
    targets the sidecars' inbound port."""
    for name, eff in sorted(mesh.effective.items()):
        w = eff.where()
        pod = dig(eff.data, "spec", "template", "spec", default={}) or {}
        labels = dig(eff.data, "spec", "template", "metadata", "labels", default={}) or {}
        app = labels.get("app")
        names = [c.get("name") for c in pod.get("containers") or [] if isinstance(c, dict)]
        g.check(sorted(names) == sorted([app, SIDECAR_CONTAINER]), "%s: containers must be %s and %s, are %r"
                % (w, app, SIDECAR_CONTAINER, names))
        g.check(not pod.get("initContainers"), "%s: no initContainers (the sidecar is a container)" % w)
        c, s = container_of(eff, app), container_of(eff, SIDECAR_CONTAINER)
        if not g.check(isinstance(c, dict) and isinstance(s, dict), "%s: no container %s and %s"
                       % (w, app, SIDECAR_CONTAINER)):
            continue
        cw, sw = "%s: container %s" % (w, app), "%s: container %s" % (w, SIDECAR_CONTAINER)
        st = sidecar_settings(s)
        admin = st["admin_port"]

        # The app: sidecar mode, base env otherwise, no mesh credential, loopback only.
        env = container_env(c)
        g.check(env.get(MESH_MODE_VAR) == MESH_MODE_SIDECAR, "%s: env %s must be %s (else the app joins the mesh "
                "itself, beside its sidecar), is %r" % (cw, MESH_MODE_VAR, MESH_MODE_SIDECAR, env.get(MESH_MODE_VAR)))
        meshy = sorted(k for k in env if (str(k).startswith("MESH_") and k != MESH_MODE_VAR) or str(k).startswith("OTEL_"))
        g.check(not meshy, "%s: sets %s; the sidecar joins the mesh and traces, the app ignores them" % (cw, meshy))
        base = base_deployment(base_docs, name)
        bc = container_of(base, app) or {} if base else {}
        benv = container_env(bc)
        g.check(all(env.get(k) == v for k, v in benv.items()) and set(env) - set(benv) <= {MESH_MODE_VAR},
                "%s: the patch may only add %s to the base env %r, env is %r" % (cw, MESH_MODE_VAR, benv, env))
        vols = {v.get("name"): v for v in pod.get("volumes") or []}
        for m in c.get("volumeMounts") or []:
            v = vols.get(m.get("name")) or {}
            g.check(dig(v, "secret", "secretName") != MESH_TOKENS_SECRET and dig(v, "configMap", "name") != MESH_CA_ROOT_CM,
                    "%s: mounts volume %s (%s); the mesh credentials are the sidecar's alone"
                    % (cw, m.get("name"), dig(v, "secret", "secretName") or dig(v, "configMap", "name")))
        ports = [p.get("containerPort") for p in c.get("ports") or []]
        g.check(ports == [APP_PORT], "%s: containerPorts %s, expected the base's [%d] only (the sidecar serves "
                "the mesh and admin ports)" % (cw, ports, APP_PORT))
        for probe in ("readinessProbe", "livenessProbe"):
            pr = c.get(probe) or {}
            handlers = [h for h in PROBE_HANDLERS if h in pr]
            cmd = [as_str(a) for a in dig(pr, "exec", "command", default=[]) or []]
            own_check = handlers == ["exec"] and cmd == ["/%s" % app, "--health-check"]
            via_admin = handlers == ["httpGet"] and dig(pr, "httpGet", "path") == "/healthz/ready" \
                and named_port(s, dig(pr, "httpGet", "port")) == admin
            g.check(own_check or via_admin,
                    "%s: %s must be exec [/%s, --health-check] (in sidecar mode it asks 127.0.0.1:%d/health) or "
                    "httpGet /healthz/ready on the sidecar's admin port %s: %d is loopback only, the kubelet's "
                    "httpGet on the pod IP is refused; is %r" % (cw, probe, app, APP_PORT, admin, APP_PORT, pr))
            g.check(isinstance(pr.get("periodSeconds"), int) and 1 <= pr["periodSeconds"] <= 60,
                    "%s: %s needs periodSeconds between 1 and 60" % (cw, probe))
        check_security_context(g, cw, c)

        # The sidecar.
        g.check(s.get("image") == SIDECAR_IMAGE, "%s: image must be %s (the gateway's), is %r"
                % (sw, SIDECAR_IMAGE, s.get("image")))
        g.check(s.get("imagePullPolicy") == "IfNotPresent", "%s: imagePullPolicy must be IfNotPresent" % sw)
        g.check("command" not in s, "%s: keep the image's entrypoint (/mesh-proxy); use args" % sw)
        for e in st["errors"]:
            g.fail("%s: %s" % (sw, e))
        g.check(st["service"] == app, "%s: --service (or MESH_SERVICE) must be %s, the Service it serves, is %r"
                % (sw, app, st["service"]))
        g.check(st["app_port"] == APP_PORT and APP_PORT in ports,
                "%s: the app port (--app-port, MESH_APP_PORT) must be %d, where the app listens, is %r"
                % (sw, APP_PORT, st["app_port"]))
        g.check(st["app_health_path"] == "/health", "%s: --app-health-path must be /health (the app's), is %r"
                % (sw, st["app_health_path"]))
        g.check(st["bind"] in ("0.0.0.0", "::"), "%s: --bind %r: the inbound port must take the pod IP's traffic "
                "(0.0.0.0 or ::)" % (sw, st["bind"]))
        sports = {p.get("containerPort"): p.get("name") for p in s.get("ports") or []}
        g.check(st["inbound_port"] in sports and sports.get(admin) == "admin" and len(s.get("ports") or []) == 2,
                "%s: containerPorts must be the inbound port %r (mTLS from the mesh) and %r named admin, are %r"
                % (sw, st["inbound_port"], admin, sports))
        g.check(st["outbound_port"] not in sports and st["outbound_port"] not in ports,
                "%s: the outbound port %r is the app's proxy on 127.0.0.1; do not declare it" % (sw, st["outbound_port"]))
        used = [st["app_port"], st["inbound_port"], st["outbound_port"], admin]
        g.check(None not in used and len(set(used)) == len(used),
                "%s: app, inbound, outbound and admin ports must be four ports, are %r" % (sw, used))
        senv = container_env(s)
        g.check(senv.get("MESH_CONTROL_PLANE") == MESHD_URL,
                "%s: MESH_CONTROL_PLANE must be %s (Service %s; meshd's API is TLS only), is %r"
                % (sw, MESHD_URL, MESHD, senv.get("MESH_CONTROL_PLANE")))
        check_ca_root(g, w, sw, pod, s, senv)
        sa = pod.get("serviceAccountName")
        g.check(sa == "bookinfo-%s" % app, "%s: serviceAccountName must be bookinfo-%s" % (w, app))
        g.check(senv.get("MESH_SERVICE_ACCOUNT", "bookinfo-%s" % st["service"]) == sa,
                "%s: its mesh identity (MESH_SERVICE_ACCOUNT, default bookinfo-<service>) must be the pod's "
                "service account %s, is %r" % (sw, sa, senv.get("MESH_SERVICE_ACCOUNT", "bookinfo-%s" % st["service"])))
        g.check(senv.get("MESH_NAMESPACE", "default") == "default",
                "%s: MESH_NAMESPACE must stay default (the tokens are default.<sa>), is %r"
                % (sw, senv.get("MESH_NAMESPACE")))
        check_own_token(g, w, sw, pod, s, senv, "default.%s" % sa, meshd_audience(mesh))
        g.check(senv.get("SERVICE_VERSION") == labels.get("version"),
                "%s: SERVICE_VERSION must be the pod's version label %r (the subset it registers the app in), is %r"
                % (sw, labels.get("version"), senv.get("SERVICE_VERSION")))
        g.check(senv.get("SERVICE_VERSION") == env.get("SERVICE_VERSION"),
                "%s: SERVICE_VERSION %r differs from the app's %r"
                % (sw, senv.get("SERVICE_VERSION"), env.get("SERVICE_VERSION")))
        for probe in ("readinessProbe", "livenessProbe"):
            pr = s.get(probe) or {}
            handlers = [h for h in PROBE_HANDLERS if h in pr]
            g.check(handlers == ["httpGet"] and dig(pr, "httpGet", "path") == "/healthz/ready"
                    and named_port(s, dig(pr, "httpGet", "port")) == admin,
                    "%s: %s must be only httpGet /healthz/ready on the admin port %r (as compose's `mesh-proxy "
                    "sidecar --health-check`), is %r" % (sw, probe, admin, pr))
        check_security_context(g, sw, s)

    # The Services: still 9080 named http, now to the sidecars' inbound port.
    base_svcs = {d.name: d for d in base_docs if d.kind == "Service" and d.rel.count("/") == 1}
    for app in APPS:
        svc = mesh.effective_services.get(app)
        if not g.check(svc is not None, "k8s/%s: no patch for Service %s (its pods' 9080 is loopback only)"
                       % (mesh.dir, app)):
            continue
        w, spec = svc.where(), svc.data.get("spec") or {}
        base = base_svcs.get(app)
        ports = spec.get("ports") or []
        g.check(len(ports) == 1 and ports[0].get("port") == APP_PORT and ports[0].get("name") == "http"
                and ports[0].get("protocol", "TCP") == "TCP",
                "%s: must keep one port %d named http, has %r" % (w, APP_PORT, ports))
        if base is not None:
            strip = lambda d: {k: v for k, v in d.items() if k != "ports"}  # noqa: E731
            g.check(strip(spec) == strip(base.data.get("spec") or {})
                    and svc.data.get("metadata") == base.data.get("metadata"),
                    "%s: the patch may only change the port's targetPort" % w)
        tp = ports[0].get("targetPort", APP_PORT) if ports else None
        sel = spec.get("selector") or {}
        deps = [d for d in mesh.effective.values() if sel and all(
            dig(d.data, "spec", "template", "metadata", "labels", k) == v for k, v in sel.items())]
        g.check(deps, "%s: selector %r matches no patched Deployment" % (w, sel))
        for d in deps:
            s = container_of(d, SIDECAR_CONTAINER) or {}
            inbound = sidecar_settings(s)["inbound_port"] if s else None
            g.check(inbound is not None and named_port(s, tp) == inbound and inbound in
                    [p.get("containerPort") for p in s.get("ports") or []],
                    "%s: targetPort %r must be the inbound port %r of %s's container %s (the app's %d is loopback "
                    "only)" % (w, tp, inbound, d.name, SIDECAR_CONTAINER, APP_PORT))


def file_mode(value):
    """A Kubernetes file mode (an int, decimal in YAML) as an int, or None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def volume_at(pod, c, path):
    """(mount, volume) of container c mounted exactly at `path`, or (None, None)."""
    m = next((m for m in c.get("volumeMounts") or [] if m.get("mountPath") == path), None)
    v = next((v for v in pod.get("volumes") or [] if m and v.get("name") == m.get("name")), None)
    return m, v


def is_under(path, parent):
    """Whether the absolute path `path` is `parent` or inside it."""
    path, parent = path.rstrip("/") or "/", parent.rstrip("/") or "/"
    return path == parent or path.startswith(parent if parent == "/" else parent + "/")


def check_ca_root(g, w, cw, pod, c, env):
    """MESH_CA_FILE is key root-cert.pem of the user's ConfigMap mesh-ca-root-cert, mounted
    read-only without subPath (so a replaced root reaches the file): the root a workload trusts
    comes out of band, never from meshd."""
    cf = env.get("MESH_CA_FILE")
    if not g.check(isinstance(cf, str) and cf.startswith("/") and not cf.endswith("/"),
                   "%s: MESH_CA_FILE must be the absolute path of meshd's root certificate (a workload "
                   "with MESH_CONTROL_PLANE refuses to start without it), is %r" % (cw, cf)):
        return
    d, _, f = cf.rpartition("/")
    m, v = volume_at(pod, c, d or "/")
    if not g.check(m is not None and v is not None and m.get("readOnly") is True and "subPath" not in m,
                   "%s: MESH_CA_FILE %s: its directory %s must be a read-only volume mount (no subPath: a "
                   "replaced root must reach the file)" % (cw, cf, d)):
        return
    cm = v.get("configMap") or {}
    items = cm.get("items")
    got = [(i.get("key"), i.get("path")) for i in items] if isinstance(items, list) else None
    g.check(cm.get("name") == MESH_CA_ROOT_CM and (got == [(CA_CERT_FILE, f)] or (got is None and f == CA_CERT_FILE))
            and cm.get("optional") is not True,
            "%s: volume %s (MESH_CA_FILE %s) must be ConfigMap %s with items [{key: %s, path: %s}] (not "
            "optional: without the root there is no mesh), is %r" % (w, v.get("name"), cf, MESH_CA_ROOT_CM,
                                                                  CA_CERT_FILE, f, v))


def check_meshd_ca(g, w, cw, pod, c):
    """meshd's CA dir (the image's --ca-dir) is the user's Secret meshd-ca, both files, mounted
    read-only and readable by the container's group only; nothing else (an emptyDir, a PVC, a
    mount above it) supplies or hides it, so the CA survives restarts."""
    args = [as_str(a) for a in c.get("args") or []]
    flags = flag_values(args)
    for flag in K8S_FORBIDDEN_MESHD_FLAGS:
        g.check(flag not in flags, "%s: args must not give %s (the CA is the Secret %s at the entrypoint's "
                "--ca-dir %s, the namespace comes from POD_NAMESPACE, the root reaches workloads as ConfigMap %s)"
                % (cw, flag, MESHD_CA_SECRET, MESHD_CA_DIR, MESH_CA_ROOT_CM))
    m, v = volume_at(pod, c, MESHD_CA_DIR)
    sec = (v or {}).get("secret")
    if g.check(m is not None and isinstance(sec, dict) and sec.get("secretName") == MESHD_CA_SECRET,
               "%s: %s (the CA dir) must be a mount of Secret %s (the user's CA: it survives restarts, and "
               "the workloads trust only its root), is %r" % (cw, MESHD_CA_DIR, MESHD_CA_SECRET, v)):
        g.check(m.get("readOnly") is True and "subPath" not in m and "subPathExpr" not in m,
                "%s: the mount of Secret %s at %s must be readOnly, without subPath" % (cw, MESHD_CA_SECRET, MESHD_CA_DIR))
        g.check(sec.get("optional") is not True, "%s: Secret %s must not be optional: without the user's CA "
                "meshd must not start (a CA of its own would be trusted by no workload)" % (w, MESHD_CA_SECRET))
        items = sec.get("items")
        if items is not None:
            got = sorted((i.get("key"), i.get("path")) for i in items) if isinstance(items, list) else items
            want = sorted((k, k) for k in (CA_CERT_FILE, CA_KEY_FILE))
            g.check(got == want, "%s: Secret %s items must map %s to files of the same name (meshd reads "
                    "%s/%s and %s), are %r" % (w, MESHD_CA_SECRET, [k for k, _ in want], MESHD_CA_DIR,
                                                CA_CERT_FILE, CA_KEY_FILE, items))
        modes = [("defaultMode", file_mode(sec.get("defaultMode", 0o644)))] + \
            [("items %s mode" % i.get("key"), file_mode(i.get("mode"))) for i in items or [] if "mode" in i]
        fs_group = dig(pod, "securityContext", "fsGroup")
        for what, mode in modes:
            g.check(mode in (0o400, 0o440), "%s: Secret %s %s must be 0400 or 0440 (decimal 256 or 288): the key "
                    "is for meshd alone, is %s" % (w, MESHD_CA_SECRET, what, oct(mode) if mode is not None else None))
        g.check(fs_group == RUN_AS, "%s: securityContext.fsGroup must be %d so meshd (user %d) can read the "
                "root-owned CA files, is %r" % (w, RUN_AS, RUN_AS, fs_group))
    vols = {v.get("name"): v for v in pod.get("volumes") or []}
    for mm in c.get("volumeMounts") or []:
        path = as_str(mm.get("mountPath"))
        if mm is m or not path.startswith("/"):
            continue
        g.check(not is_under(MESHD_CA_DIR, path) and not is_under(path, MESHD_CA_DIR),
                "%s: volume %s at %s hides or shadows the CA dir %s; only Secret %s goes there"
                % (cw, mm.get("name"), path, MESHD_CA_DIR, MESHD_CA_SECRET))
    for name, vv in sorted(vols.items(), key=lambda kv: str(kv[0])):
        for kind in ("emptyDir", "persistentVolumeClaim", "hostPath"):
            g.check(kind not in vv, "%s: volume %s is %s %s; meshd writes nothing (its CA is Secret %s, loaded, "
                    "never generated)" % (w, name, "an" if kind[0] in "aeiou" else "a", kind, MESHD_CA_SECRET))


def check_meshd_env(g, cw, c):
    """meshd's only env is POD_NAMESPACE from the downward API: its serving certificate then
    names meshd.<namespace>.svc of the namespace the overlay is applied to."""
    got = {}
    for e in c.get("env") or []:
        got[e.get("name")] = e
    g.check(not c.get("envFrom"), "%s: no envFrom (meshd takes flags)" % cw)
    g.check(sorted(got) == sorted(MESHD_ENV_FIELDS), "%s: env must be exactly %s (everything else is a flag), "
            "is %s" % (cw, sorted(MESHD_ENV_FIELDS), sorted(got)))
    for name, field in MESHD_ENV_FIELDS.items():
        if name not in got:
            continue  # reported above
        e = got[name] or {}
        ref = dig(e, "valueFrom", "fieldRef", default={}) or {}
        g.check("value" not in e and set(e.get("valueFrom") or {}) == {"fieldRef"} and ref.get("fieldPath") == field
                and ref.get("apiVersion", "v1") == "v1",
                "%s: env %s must be valueFrom.fieldRef.fieldPath %s (the downward API: the certificate names "
                "meshd.<namespace>.svc), is %r" % (cw, name, field, e or None))


def doc_ns(d):
    """The namespace an object lands in: its own, else the one the overlay is applied to
    (default, as k8s/README.md says; the Kustomizations set none)."""
    return d.namespace or POD_NS


def meshd_namespace(mesh):
    dep = mesh.find("Deployment", MESHD) if mesh else None
    return doc_ns(dep) if dep is not None else POD_NS


def meshd_cert_names(ns):
    """The DNS names of meshd's serving certificate when it runs in namespace `ns` (--namespace
    from POD_NAMESPACE)."""
    return [MESHD, "%s.%s.svc" % (MESHD, ns), "%s.%s.svc.cluster.local" % (MESHD, ns)]


def meshd_url_problem(url, pod_ns, meshd_ns):
    """Why MESH_CONTROL_PLANE `url`, used by a pod of namespace pod_ns, does not reach meshd
    (namespace meshd_ns) over TLS with a name its certificate holds; None when it does."""
    m = re.fullmatch(r"https://([^/:]+):(\d+)/?", url if isinstance(url, str) else "")
    if not m:
        return "must be https://<host>:%d (meshd's API is TLS only)" % MESHD_PORT
    host, port = m.group(1), int(m.group(2))
    if port != MESHD_PORT:
        return "port %d is not meshd's %d" % (port, MESHD_PORT)
    if host not in meshd_cert_names(meshd_ns):
        return "host %s is not a name of meshd's serving certificate %s (meshd runs in %s)" % (
            host, meshd_cert_names(meshd_ns), meshd_ns)
    if resolve_service_host(host, pod_ns) != (MESHD, meshd_ns):
        return "host %s does not resolve, from namespace %s, to Service %s of namespace %s (use %s)" % (
            host, pod_ns, MESHD, meshd_ns, " or ".join(meshd_cert_names(meshd_ns)[1:]))
    return None


def meshed_containers(d):
    """The containers of Deployment d that join meshd (MESH_CONTROL_PLANE set), with the identity
    each claims when MESH_NAMESPACE/MESH_SERVICE_ACCOUNT are unset: [(container, (ns, sa))]."""
    out = []
    for c in dig(d.data, "spec", "template", "spec", "containers", default=[]) or []:
        if not isinstance(c, dict) or "MESH_CONTROL_PLANE" not in container_env(c):
            continue
        args = [as_str(a) for a in c.get("args") or []]
        if args[:1] == ["gateway"]:
            default = (GATEWAY_NS, GATEWAY_SA)
        elif args[:1] == ["sidecar"]:
            default = (WORKLOAD_DEFAULT_NS, "bookinfo-%s" % sidecar_settings(c)["service"])
        else:
            default = (WORKLOAD_DEFAULT_NS, "bookinfo-%s" % c.get("name"))
        out.append((c, default))
    return out


def check_meshed_identities(mesh, g):
    """Every container that joins meshd (the workloads or their sidecars, and the gateway)
    claims the identity of its own pod, <pod's namespace>/<serviceAccountName>: meshd's
    TokenReview proves that account and no other, so any other claim is refused. And its
    MESH_CONTROL_PLANE names meshd by a name of meshd's certificate that resolves from the pod's
    namespace."""
    meshd_ns = meshd_namespace(mesh)
    count = 0
    for d in mesh.deployed():
        if d.kind != "Deployment":
            continue
        pod = dig(d.data, "spec", "template", "spec", default={}) or {}
        actual = (doc_ns(d), pod.get("serviceAccountName") or "default")
        for c, (dns, dsa) in meshed_containers(d):
            count += 1
            cw = "%s: container %s" % (d.where(), c.get("name"))
            env = container_env(c)
            claimed = (env.get("MESH_NAMESPACE") or dns, env.get("MESH_SERVICE_ACCOUNT") or dsa)
            g.check(claimed == actual, "%s: claims the mesh identity %s/%s (MESH_NAMESPACE/MESH_SERVICE_ACCOUNT, "
                    "else the binary's defaults) but its pod is ServiceAccount %s/%s (namespace %s): meshd's "
                    "TokenReview proves only the pod's own account and refuses the claim"
                    % (cw, claimed[0], claimed[1], actual[0], actual[1], actual[0]))
            problem = meshd_url_problem(env.get("MESH_CONTROL_PLANE"), actual[0], meshd_ns)
            g.check(problem is None, "%s: MESH_CONTROL_PLANE=%r: %s" % (cw, env.get("MESH_CONTROL_PLANE"), problem))
    g.check(count, "k8s/%s: no container joins meshd" % mesh.dir)


def check_overlay_namespaces(base_docs, mesh, g):
    """The overlay sets no namespace (kustomize would move the gateway too); everything is in
    the applied namespace but the gateway's ServiceAccount, Service and Deployment, which say
    istio-system; the overlay declares that Namespace, identical to k8s/monitoring's (applying
    both must not fight over it)."""
    w = mesh.kust.rel
    g.check("namespace" not in mesh.kust.data, "%s: must not set namespace: (it would move the gateway out of %s, "
            "and its identity with it)" % (w, GATEWAY_NS))
    for d in mesh.docs:
        if (d.kind, d.name) in GATEWAY_OBJECTS:
            g.check(d.namespace == GATEWAY_NS, "%s: must set metadata.namespace %s (the gateway's identity is "
                    "%s/%s; a TokenReview proves only the pod's own account), is %r"
                    % (d.where(), GATEWAY_NS, GATEWAY_NS, GATEWAY_SA, d.namespace))
        elif d.kind == "Namespace":
            g.check(d.namespace is None and d.name == GATEWAY_NS, "%s: the only Namespace here is %s (the gateway's), "
                    "cluster-scoped" % (d.where(), GATEWAY_NS))
        else:
            g.check(d.namespace is None, "%s: must not set metadata.namespace (it goes where the overlay is applied, "
                    "default)" % d.where())
    nss = [d for d in mesh.docs if d.kind == "Namespace"]
    used = sorted({d.namespace for d in mesh.docs if d.namespace})
    declared = sorted({d.name for d in nss})
    g.check(declared == used, "k8s/%s: declares Namespaces %s, its objects use %s (besides the applied one)"
            % (mesh.dir, declared, used))
    mon_ns = [b for b in base_docs if b.kind == "Namespace" and b.rel.startswith("k8s/monitoring/")]
    for d in nss:
        same = [b for b in mon_ns if b.name == d.name]
        if same:
            g.check(d.data == same[0].data, "%s: differs from %s; both are applied to one cluster (kubectl apply "
                    "keeps the last: labels or annotations of one would be dropped)" % (d.where(), same[0].where()))


def check_supplied(root, base_docs, mesh, g):
    """Secret meshd-ca and ConfigMap mesh-ca-root-cert are the user's: no manifest defines them
    (a CA key in git is everyone's), no file of k8s/ holds a private key, k8s/README.md says how
    to create them, and only meshd mounts the Secret."""
    everything = [d for d in base_docs] + mesh.docs
    for (kind, name), keys in sorted(SUPPLIED.items()):
        defined = [d.rel for d in everything if d.kind == kind and d.name == name]
        g.check(not defined, "%s defines %s %s: the user creates it (k8s/README.md), with keys %s; the "
                "repository must not ship a CA" % (", ".join(sorted(set(defined))), kind, name, list(keys)))
    for p in sorted((root / "k8s").rglob("*")):
        if not p.is_file():
            continue
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        g.check(not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text),
                "%s: holds a PEM private key; the CA key belongs in the user's Secret %s only"
                % (p.relative_to(root), MESHD_CA_SECRET))
    try:
        readme = (root / "k8s" / "README.md").read_text()
    except (OSError, UnicodeDecodeError):
        readme = ""  # reported by the files group
    # The steps, each on one line: create the CA, then the Secret with both files, then the
    # ConfigMap with the root.
    steps = [("meshd --init-ca --ca-dir DIR", [r"--init-ca\b", r"--ca-dir\b"]),
             ("kubectl create secret generic %s" % MESHD_CA_SECRET,
              [r"kubectl create secret generic %s\b" % MESHD_CA_SECRET, re.escape(CA_CERT_FILE), re.escape(CA_KEY_FILE)]),
             ("kubectl create configmap %s" % MESH_CA_ROOT_CM,
              [r"kubectl create configmap %s\b" % MESH_CA_ROOT_CM, r"\b%s=" % re.escape(CA_CERT_FILE)])]
    lines = readme.splitlines()
    apply_at = next((i for i, line in enumerate(lines)
                     if re.search(r"kubectl kustomize .*k8s/%s\s*\|\s*kubectl apply" % mesh.dir, line)), None)
    if g.check(apply_at is not None, "k8s/README.md: no `kubectl kustomize ... k8s/%s | kubectl apply -f -` "
               "(how the overlay is applied)" % mesh.dir):
        for what, patterns in steps:
            g.check(any(all(re.search(pt, line) for pt in patterns) for line in lines[:apply_at]),
                    "k8s/README.md: must show `%s` (one line matching %s) before the overlay's `kubectl "
                    "kustomize ... | kubectl apply` (line %d); without it the pods wait in ContainerCreating"
                    % (what, patterns, apply_at + 1))
    deps = [d for d in mesh.docs if d.kind == "Deployment"] + list(mesh.effective.values())
    if apply_at is not None:
        check_readme_ca_root_namespaces(readme, apply_at, mesh, deps, g)
    for d in deps:
        for v in dig(d.data, "spec", "template", "spec", "volumes", default=[]) or []:
            refs = [dig(v, "secret", "secretName")] + [dig(s, "secret", "name")
                                                        for s in dig(v, "projected", "sources", default=[]) or []]
            g.check(MESHD_CA_SECRET not in refs or d.name == MESHD,
                    "%s: volume %s mounts Secret %s (the CA key); only %s may" % (d.where(), v.get("name"),
                                                                                MESHD_CA_SECRET, MESHD))
        for c in dig(d.data, "spec", "template", "spec", "containers", default=[]) or []:
            g.check(not any(dig(e, "valueFrom", "secretKeyRef", "name") == MESHD_CA_SECRET for e in c.get("env") or [])
                    and not any(dig(s, "secretRef", "name") == MESHD_CA_SECRET for s in c.get("envFrom") or []),
                    "%s: container %s reads Secret %s (the CA key) into env" % (d.where(), c.get("name"), MESHD_CA_SECRET))


def readme_commands(text):
    """The shell commands of a Markdown text's fenced code blocks: [(first line index, block
    number, command)], backslash continuations joined, comments dropped."""
    out, block, start, buf = [], None, None, ""
    count = 0
    for i, line in enumerate(text.splitlines()):
        if line.lstrip().startswith("```"):
            if block is None:
                count += 1
                block = count
            else:
                block = None
            buf = ""
            continue
        if block is None:
            continue
        code = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if not buf:
            start = i
        if code.endswith("\\"):
            buf += code[:-1] + " "
            continue
        buf += code
        if buf.strip():
            out.append((start, block, buf.strip()))
        buf = ""
    return out


def command_namespace(cmd):
    """The -n/--namespace of a kubectl command line, else None (the current namespace)."""
    m = re.search(r"(?:^|\s)(?:-n\s*|--namespace[=\s]\s*)([a-z0-9][-a-z0-9]*)", cmd)
    return m.group(1) if m else None


def check_readme_ca_root_namespaces(readme, apply_at, mesh, deps, g):
    """ConfigMap mesh-ca-root-cert is per namespace: k8s/README.md must create it, before the
    overlay's apply, in every namespace where a pod of the overlay mounts it (without -n: the
    current one, default), a non-default namespace being created first; and every code block
    that creates or replaces it (the CA steps, the step-by-step, the rotation) must do so in all
    of them, or some pods keep an old root or none."""
    want = sorted({doc_ns(d) for d in deps for v in dig(d.data, "spec", "template", "spec", "volumes", default=[]) or []
                   if dig(v, "configMap", "name") == MESH_CA_ROOT_CM})
    cmds = readme_commands(readme)
    creates = [(i, b, command_namespace(c) or POD_NS) for i, b, c in cmds
               if re.search(r"kubectl\b.*\bcreate configmap %s\b" % MESH_CA_ROOT_CM, c)]
    before = {ns for i, _, ns in creates if i < apply_at}
    missing = [ns for ns in want if ns not in before]
    g.check(not missing, "k8s/README.md: must create ConfigMap %s in namespace(s) %s before the overlay's apply (line "
            "%d): pods there mount it (MESH_CA_FILE) and wait in ContainerCreating without it; creates it in %s"
            % (MESH_CA_ROOT_CM, missing, apply_at + 1, sorted(before)))
    for ns in want:
        if ns == POD_NS:
            continue
        first = min((i for i, _, n in creates if n == ns), default=None)
        if first is None:
            continue  # reported above
        made = [i for i, _, c in cmds if i < first and (
            re.search(r"kubectl\b.*\bcreate (?:namespace|ns) %s\b" % re.escape(ns), c)
            or re.search(r"kubectl\b.*\bapply -f \S*monitoring/namespace\.yaml\b", c))]
        g.check(made, "k8s/README.md: line %d creates ConfigMap %s in namespace %s, which nothing creates before "
                "(`kubectl create namespace %s`; the overlay's own Namespace comes later)"
                % (first + 1, MESH_CA_ROOT_CM, ns, ns))
    for b in sorted({b for _, b, _ in creates}):
        lines = [i for i, bb, _ in creates if bb == b]
        got = {ns for _, bb, ns in creates if bb == b}
        g.check(set(want) <= got, "k8s/README.md: the code block at line %d creates ConfigMap %s in %s only; every "
                "namespace that mounts it, %s, needs the same root" % (min(lines) + 1, MESH_CA_ROOT_CM,
                                                                       sorted(got), want))


def meshd_audience(mesh):
    """meshd's --token-audience (env MESHD_TOKEN_AUDIENCE), default meshd."""
    dep = mesh.find("Deployment", MESHD) if mesh else None
    c = (container_of(dep, MESHD) if dep else None) or {}
    return flag_values([as_str(a) for a in c.get("args") or []]).get("--token-audience") \
        or container_env(c).get("MESHD_TOKEN_AUDIENCE") or DEFAULT_TOKEN_AUDIENCE


def check_own_token(g, w, cw, pod, c, env, own, audience=DEFAULT_TOKEN_AUDIENCE):
    """MESH_TOKEN_FILE is the projected token of the pod's ServiceAccount, for meshd's audience,
    mounted read-only; the pod's serviceAccountName is the account `own` (<ns>.<sa>) names; no
    Secret mesh-tokens (demo tokens, compose's only) reaches the pod (volume, env or envFrom)."""
    sa = own.partition(".")[2]
    g.check(pod.get("serviceAccountName") == sa, "%s: serviceAccountName must be %s (the account its "
            "MESH_SERVICE_ACCOUNT names: the TokenReview proves that one), is %r" % (w, sa, pod.get("serviceAccountName")))
    tf = env.get("MESH_TOKEN_FILE")
    if g.check(isinstance(tf, str) and tf.startswith("/"), "%s: MESH_TOKEN_FILE must be an absolute path" % cw):
        d, _, f = tf.rpartition("/")
        m = next((m for m in c.get("volumeMounts") or [] if m.get("mountPath") == d), None)
        v = next((v for v in pod.get("volumes") or [] if m and v.get("name") == m.get("name")), None)
        ok = g.check(m is not None and v is not None and "subPath" not in m and m.get("readOnly") is True,
                     "%s: MESH_TOKEN_FILE %s: its directory %s must be a read-only volume mount (no subPath)"
                     % (cw, tf, d))
        if ok:
            srcs = dig(v, "projected", "sources", default=None)
            tok = (srcs[0] or {}).get("serviceAccountToken") if isinstance(srcs, list) and len(srcs) == 1 else None
            g.check(isinstance(tok, dict) and tok.get("audience") == audience and tok.get("path") == f
                    and isinstance(tok.get("expirationSeconds", 3600), int) and tok.get("expirationSeconds", 3600) >= 600,
                    "%s: volume %s must be projected, one serviceAccountToken {audience: %s (meshd's "
                    "--token-audience), path: %s, expirationSeconds >= 600}, is %r" % (w, v.get("name"), audience, f, v))
    for v in pod.get("volumes") or []:
        g.check(dig(v, "secret", "secretName") != MESH_TOKENS_SECRET and not any(
            dig(s, "secret", "name") == MESH_TOKENS_SECRET for s in dig(v, "projected", "sources", default=[]) or []),
            "%s: volume %s mounts Secret %s: demo tokens are compose's only" % (w, v.get("name"), MESH_TOKENS_SECRET))
    for e in c.get("env") or []:
        g.check(dig(e, "valueFrom", "secretKeyRef", "name") != MESH_TOKENS_SECRET,
                "%s: env %s reads Secret %s" % (cw, e.get("name"), MESH_TOKENS_SECRET))
    g.check(not any(dig(s, "secretRef", "name") == MESH_TOKENS_SECRET for s in c.get("envFrom") or []),
            "%s: envFrom exposes every token" % cw)


def check_meshd_rbac(mesh, g):
    """ClusterRole meshd grants exactly MESHD_RBAC, ClusterRoleBinding meshd binds it to meshd's
    ServiceAccount (namespace default, where the tutorial applies the overlay)."""
    role = mesh.find("ClusterRole", MESHD)
    if g.check(role is not None, "k8s/%s: no ClusterRole %s" % (mesh.dir, MESHD)):
        got = {}
        for r in role.data.get("rules") or []:
            g.check(not r.get("resourceNames") and not r.get("nonResourceURLs"),
                    "%s: no resourceNames/nonResourceURLs, has %r" % (role.where(), r))
            for grp in r.get("apiGroups") or []:
                for res in r.get("resources") or []:
                    got.setdefault((grp, res), set()).update(r.get("verbs") or [])
        want = MESHD_RBAC
        g.check(got == want, "%s: grants %s, expected exactly %s" % (
            role.where(), sorted((k, sorted(v)) for k, v in got.items()), sorted((k, sorted(v)) for k, v in want.items())))
    b = mesh.find("ClusterRoleBinding", MESHD)
    if g.check(b is not None, "k8s/%s: no ClusterRoleBinding %s" % (mesh.dir, MESHD)):
        ref = b.data.get("roleRef") or {}
        g.check(ref == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": MESHD},
                "%s: roleRef must be ClusterRole %s, is %r" % (b.where(), MESHD, ref))
        subj = b.data.get("subjects") or []
        g.check(subj == [{"kind": "ServiceAccount", "name": MESHD, "namespace": POD_NS}],
                "%s: subjects must be only ServiceAccount %s/%s (meshd's), are %r" % (b.where(), POD_NS, MESHD, subj))
    g.check(mesh.find("ServiceAccount", MESHD) is not None, "k8s/%s: no ServiceAccount %s" % (mesh.dir, MESHD))
    g.check(not any(d.kind in ("Role", "RoleBinding") or (d.kind in ("ClusterRole", "ClusterRoleBinding") and d.name != MESHD)
                    for d in mesh.docs), "k8s/%s: no RBAC but ClusterRole/ClusterRoleBinding %s" % (mesh.dir, MESHD))


def check_crds(root, mesh, g):
    """k8s/mesh/crds: one CRD per MESH_CRDS entry, apiextensions.k8s.io/v1, namespaced, structural
    (every level typed; spec an object preserving unknown fields), the groups, versions, storage
    version, plural, kind and short name above; Istio's kinds in istio-kinds.yaml (skippable where
    Istio is installed), ours in mesh-kinds.yaml; the kustomization lists both; the overlays do
    not include them and k8s/README.md documents applying them separately."""
    cdir = root / "k8s" / CRD_DIR
    crds = {}
    for fname, group_suffix in sorted(CRD_FILES.items()):
        p = cdir / fname
        if not g.check(p.is_file(), "k8s/%s/%s: missing" % (CRD_DIR, fname)):
            continue
        try:
            docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        except yaml.YAMLError as e:
            g.fail("k8s/%s/%s: does not parse: %s" % (CRD_DIR, fname, e))
            continue
        for d in docs:
            w = "k8s/%s/%s: %s" % (CRD_DIR, fname, dig(d, "metadata", "name"))
            grp = dig(d, "spec", "group") or ""
            g.check(d.get("apiVersion") == "apiextensions.k8s.io/v1" and d.get("kind") == "CustomResourceDefinition",
                    "%s: must be an apiextensions.k8s.io/v1 CustomResourceDefinition" % w)
            g.check(grp.endswith(group_suffix), "%s: group %s does not belong in %s" % (w, grp, fname))
            crds[(grp, dig(d, "spec", "names", "plural"))] = (w, d)
    want_keys = {(grp, plural) for grp, _, plural, _, _, _ in MESH_CRDS}
    g.check(set(crds) == want_keys, "k8s/%s: CRDs %s, expected exactly %s" % (CRD_DIR, sorted(crds), sorted(want_keys)))
    schema_ok = crd_schema_validator()
    for grp, kind, plural, short, versions, storage in MESH_CRDS:
        if (grp, plural) not in crds:
            continue
        w, d = crds[(grp, plural)]
        spec, names = d.get("spec") or {}, dig(d, "spec", "names", default={}) or {}
        g.check(dig(d, "metadata", "name") == "%s.%s" % (plural, grp), "%s: name must be %s.%s" % (w, plural, grp))
        g.check(spec.get("scope") == "Namespaced", "%s: scope must be Namespaced" % w)
        g.check(names.get("kind") == kind and names.get("singular", kind.lower()) == kind.lower()
                and names.get("listKind", kind + "List") == kind + "List",
                "%s: kind must be %s (singular %s)" % (w, kind, kind.lower()))
        g.check((names.get("shortNames") or []) == ([short] if short else []),
                "%s: shortNames must be %r (Istio's), are %r" % (w, [short] if short else [], names.get("shortNames")))
        vs = spec.get("versions") or []
        g.check([v.get("name") for v in vs] == versions and all(v.get("served") is True for v in vs),
                "%s: served versions must be %s, are %s" % (w, versions, [v.get("name") for v in vs if v.get("served")]))
        g.check([v.get("name") for v in vs if v.get("storage") is True] == [storage],
                "%s: the storage version must be %s alone" % (w, storage))
        for v in vs:
            s = dig(v, "schema", "openAPIV3Schema", default=None)
            problems = structural_problems(s, "openAPIV3Schema") if isinstance(s, dict) else ["no openAPIV3Schema"]
            sp = dig(s or {}, "properties", "spec", default={}) or {}
            if sp.get("type") != "object":
                problems.append("spec must be type: object")
            g.check(not problems, "%s: version %s: schema not structural: %s" % (w, v.get("name"), problems))
        if schema_ok is not None:
            errs = schema_ok(d)
            g.check(not errs, "%s: against the Kubernetes CustomResourceDefinition schema: %s" % (w, errs[:3]))
    kust = cdir / "kustomization.yaml"
    if g.check(kust.is_file(), "k8s/%s/kustomization.yaml: missing" % CRD_DIR):
        kd = yaml.safe_load(kust.read_text()) or {}
        g.check(sorted(kd.get("resources") or []) == sorted(CRD_FILES),
                "k8s/%s/kustomization.yaml: resources must be %s" % (CRD_DIR, sorted(CRD_FILES)))
    # Separate from the overlays (cluster-scoped, maybe Istio's), and documented as such.
    g.check(not any(d.kind == "CustomResourceDefinition" for d in mesh.docs),
            "k8s/%s: must not include the CRDs (applied separately: they may be Istio's)" % mesh.dir)
    readme = (root / "k8s" / "README.md").read_text() if (root / "k8s" / "README.md").is_file() else ""
    g.check("k8s/%s" % CRD_DIR in readme and "crds/istio-kinds.yaml" in readme,
            "k8s/README.md: must show applying k8s/%s and when to skip crds/istio-kinds.yaml" % CRD_DIR)


def structural_problems(s, path):
    """The structural-schema rules that matter here: every node has a type (or preserves unknown
    fields / is int-or-string), and properties/items nest schemas of the same kind."""
    out = []
    if not isinstance(s, dict):
        return ["%s: not a schema" % path]
    if "type" not in s and not s.get("x-kubernetes-preserve-unknown-fields") and not s.get("x-kubernetes-int-or-string"):
        out.append("%s: no type" % path)
    if path == "openAPIV3Schema" and s.get("type") != "object":
        out.append("%s: must be type: object" % path)
    for k, sub in (s.get("properties") or {}).items():
        out += structural_problems(sub, "%s.%s" % (path, k))
    if "items" in s:
        out += structural_problems(s["items"], path + ".items")
    return out


def crd_schema_validator():
    """A function(doc) -> [errors] against kubernetes-validate's CRD schema, or None."""
    try:
        import kubernetes_validate
    except ImportError:
        return None

    def run(doc):
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            return []
        except Exception as e:  # noqa: BLE001 - any validation error is a finding
            return [str(e).splitlines()[0][:200]]
    return run


def first_difference(got, want):
    """`, first at byte N` for two texts that differ (got: str or anything, want: bytes)."""
    if not isinstance(got, str):
        return ", is %s" % type(got).__name__
    g = got.encode()
    n = next((i for i, (a, b) in enumerate(zip(g, want)) if a != b), min(len(g), len(want)))
    return ", first at byte %d of %d/%d" % (n, len(g), len(want))


def check_gateway(mesh, g):
    """The overlay's ingress gateway: ServiceAccount, LoadBalancer Service, Deployment of
    `mesh-proxy gateway` that joins meshd as istio-system/istio-ingressgateway-service-account
    with only that token; and the Gateways in ConfigMap mesh-base select its pods."""
    md = lambda kind, name: mesh.find(kind, name)  # noqa: E731
    sa = md("ServiceAccount", GATEWAY_SA)
    g.check(sa is not None, "k8s/%s: no ServiceAccount %s (the gateway's)" % (mesh.dir, GATEWAY_SA))
    svc = md("Service", GATEWAY)
    if g.check(svc is not None, "k8s/%s: no Service %s" % (mesh.dir, GATEWAY)):
        w, spec = svc.where(), svc.data.get("spec") or {}
        g.check(spec.get("type") == "LoadBalancer",
                "%s: type must be LoadBalancer (minikube tunnel; its node ports serve minikube service), is %r"
                % (w, spec.get("type")))
        g.check(spec.get("selector") == GATEWAY_LABELS, "%s: selector must be %r, is %r"
                % (w, GATEWAY_LABELS, spec.get("selector")))
        got = {p.get("port"): (p.get("name"), p.get("targetPort", p.get("port")), p.get("protocol", "TCP"))
               for p in spec.get("ports") or []}
        want = {port: (name, target, "TCP") for port, (name, target) in GATEWAY_SERVICE_PORTS.items()}
        g.check(got == want and len(spec.get("ports") or []) == len(want),
                "%s: ports must be %s, are %r" % (w, ", ".join("%d (%s) -> %d" % (p, n, t) for p, (n, t)
                                                               in GATEWAY_SERVICE_PORTS.items()), got))
    dep = md("Deployment", GATEWAY)
    if not g.check(dep is not None, "k8s/%s: no Deployment %s" % (mesh.dir, GATEWAY)):
        return
    w = dep.where()
    spec = dep.data.get("spec") or {}
    pod = dig(spec, "template", "spec", default={}) or {}
    labels = dig(spec, "template", "metadata", "labels", default={}) or {}
    g.check(all(labels.get(k) == v for k, v in GATEWAY_LABELS.items()),
            "%s: pod labels must include %r (Istio's; the Gateway selects istio: ingressgateway), are %r"
            % (w, GATEWAY_LABELS, labels))
    g.check(dig(spec, "selector", "matchLabels") == GATEWAY_LABELS, "%s: selector must be matchLabels %r"
            % (w, GATEWAY_LABELS))
    g.check(pod.get("serviceAccountName") == GATEWAY_SA, "%s: serviceAccountName must be %s, is %r"
            % (w, GATEWAY_SA, pod.get("serviceAccountName")))
    cs = pod.get("containers") or []
    if not g.check(len(cs) == 1 and isinstance(cs[0], dict), "%s: must have exactly one container" % w):
        return
    c = cs[0]
    cw = "%s: container %s" % (w, c.get("name"))
    g.check(c.get("image") == GATEWAY_IMAGE, "%s: image must be %s, is %r" % (cw, GATEWAY_IMAGE, c.get("image")))
    g.check(c.get("imagePullPolicy") == "IfNotPresent", "%s: imagePullPolicy must be IfNotPresent" % cw)
    g.check("command" not in c, "%s: keep the image's entrypoint (/mesh-proxy); use args" % cw)
    g.check([as_str(a) for a in c.get("args") or []] == GATEWAY_ARGS,
            "%s: args must be %r, are %r" % (cw, GATEWAY_ARGS, c.get("args")))
    env = container_env(c)
    # Its namespace (istio-system) is check_overlay_namespaces's; MESH_CONTROL_PLANE, a name of
    # meshd's certificate that resolves from there (meshd.default.svc), check_meshed_identities's.
    check_ca_root(g, w, cw, pod, c, env)
    g.check(env.get("MESH_NAMESPACE") == GATEWAY_NS, "%s: MESH_NAMESPACE must be set to %s, is %r"
            % (cw, GATEWAY_NS, env.get("MESH_NAMESPACE")))
    g.check(env.get("MESH_SERVICE_ACCOUNT") == GATEWAY_SA, "%s: MESH_SERVICE_ACCOUNT must be set to %s, is %r"
            % (cw, GATEWAY_SA, env.get("MESH_SERVICE_ACCOUNT")))
    check_own_token(g, w, cw, pod, c, env, GATEWAY_TOKEN, meshd_audience(mesh))
    ports = {p.get("containerPort"): p.get("name") for p in c.get("ports") or []}
    want_ports = {GATEWAY_PORT: "http", ADMIN_PORT: "admin"}
    g.check(ports == want_ports and len(c.get("ports") or []) == len(want_ports),
            "%s: containerPorts must be %r (the listener, and the admin port serving its metrics), has %r"
            % (cw, want_ports, ports))
    for probe in ("readinessProbe", "livenessProbe"):
        pr = c.get(probe) or {}
        g.check(named_port(c, dig(pr, "tcpSocket", "port")) == GATEWAY_PORT
                and not any(h in pr for h in PROBE_HANDLERS if h != "tcpSocket"),
                "%s: %s must be tcpSocket on port %d (as compose's `gateway --health-check`), is %r"
                % (cw, probe, GATEWAY_PORT, pr))
    check_security_context(g, cw, c)
    # mesh-base's Gateways must land on these pods, on a port they listen on.
    base_cm = md("ConfigMap", MESH_BASE_CM)
    for key, text in sorted((dig(base_cm.data, "data", default={}) or {}).items() if base_cm else []):
        try:
            gws = [d for d in yaml.safe_load_all(text or "") if isinstance(d, dict) and d.get("kind") == "Gateway"]
        except yaml.YAMLError:
            continue  # reported with the ConfigMap
        for gw in gws:
            gname = "%s key %s: Gateway %s" % (base_cm.where(), key, dig(gw, "metadata", "name"))
            sel = dig(gw, "spec", "selector", default={}) or {}
            g.check(sel and all(labels.get(k) == v for k, v in sel.items()),
                    "%s: selector %r does not match the %s pods %r" % (gname, sel, GATEWAY, labels))
            for srv in dig(gw, "spec", "servers", default=[]) or []:
                num = dig(srv, "port", "number")
                g.check(num in ports and num != ADMIN_PORT, "%s: server port %r is not a listener port of %s %s"
                        % (gname, num, GATEWAY, sorted(p for p in ports if p != ADMIN_PORT)))


def check_security_context(g, cw, c):
    sc = c.get("securityContext") or {}
    want_sc = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
               "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}
    for k, v in want_sc.items():
        g.check(sc.get(k) == v, "%s: securityContext.%s must be %r, is %r" % (cw, k, v, sc.get(k)))
    g.check(dig(sc, "capabilities", "drop") == ["ALL"], "%s: securityContext.capabilities.drop must be [ALL]" % cw)


def canonical(obj, field=None, keys=SMP_MERGE_KEYS):
    """Order-insensitive form of merge-keyed lists, to compare with kustomize's output."""
    if isinstance(obj, dict):
        return {k: canonical(v, k, keys) for k, v in obj.items()}
    if isinstance(obj, list):
        items = [canonical(i, None, keys) for i in obj]
        key = keys.get(field)
        if key and all(isinstance(i, dict) for i in items):
            items.sort(key=lambda i: str(i.get(key)))
        return items
    return obj


def check_mesh_render(root, base_docs, mesh, g):
    """When kubectl is on PATH: `kubectl kustomize` (offline) must render the overlay, with the
    same Deployments as this script's merge and every resource of base + overlay."""
    kubectl = shutil.which("kubectl")
    if kubectl is None or mesh.kust is None:
        return False
    try:
        run = subprocess.run([kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone",
                              str(root / "k8s" / mesh.dir)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        g.fail("kubectl kustomize k8s/%s: could not run: %s" % (mesh.dir, e))
        return True
    if not g.check(run.returncode == 0, "kubectl kustomize k8s/%s fails: %s" % (mesh.dir, run.stderr.strip()[-400:])):
        return True
    try:
        rendered = [d for d in yaml.safe_load_all(run.stdout) if isinstance(d, dict)]
    except yaml.YAMLError as e:
        g.fail("kubectl kustomize k8s/%s: output does not parse: %s" % (mesh.dir, e))
        return True
    mesh.rendered = [Doc(None, "kubectl kustomize k8s/%s" % mesh.dir, i, d) for i, d in enumerate(rendered)
                     if isinstance(d.get("kind"), str) and isinstance(dig(d, "metadata", "name"), str)]
    got = {(d.get("kind"), dig(d, "metadata", "name")): d for d in rendered}
    want = {(d.kind, d.name) for d in base_docs if d.rel.count("/") == 1 and not is_istio(d)} | \
        {(d.kind, d.name) for d in mesh.docs}
    g.check(set(got) == want, "kubectl kustomize k8s/%s renders %s, expected %s" % (
        mesh.dir, sorted(set(got) ^ want), "base + overlay resources"))
    for kind, effective in (("Deployment", mesh.effective), ("Service", mesh.effective_services)):
        for name, eff in sorted(effective.items()):
            r = got.get((kind, name))
            if r is not None:
                keys = smp_keys(kind)
                g.check(canonical(r, keys=keys) == canonical(eff.data, keys=keys),
                        "kubectl kustomize k8s/%s: %s %s differs from base + patch as merged here"
                        % (mesh.dir, kind, name))
    return True


# ---------------------------------------------------------------------------------------------
# docker-compose


COMPOSE_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env=None):
    """Resolve Compose `${VAR:-default}`-style interpolation with the defaults only (the
    caller's environment is ignored so the result is deterministic), or with the variables in
    `env` set as given (`MESH_MODE=sidecar docker-compose ...`); `$$` is a literal `$`."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3)
        if name in env and (env[name] or op not in (":-", ":?")):
            return env[name]
        return default if op in (":-", "-") else ""

    return COMPOSE_VAR.sub(sub, value)


def compose_env(service, otel=False):
    """The service's environment, without OTEL_* (where traces go depends on the deployment:
    Jaeger in compose's observability profile, k8s/monitoring's collector on a cluster); with
    otel=True, only the OTEL_* variables."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            key, _, value = str(item).partition("=")
            out[key] = value
    else:
        out = {str(k): as_str(v) for k, v in env.items()}
    return {k: v for k, v in out.items() if k.startswith("OTEL_") == otel}


def without_otel(env):
    return {k: v for k, v in env.items() if not str(k).startswith("OTEL_")}


def check_otel_names(g, w, got_env, svc, svc_name):
    """Compose and the overlay wire tracing alike: every OTEL_* variable compose sets (to its
    own Jaeger, or empty by default) is set on the k8s side too (to k8s/monitoring's collector;
    the values are checked by the telemetry group)."""
    want = sorted(compose_env(svc, otel=True))
    missing = [k for k in want if k not in got_env]
    g.check(not missing, "%s: env %s missing (compose %s sets them: tracing)" % (w, missing, svc_name))


def compose_published(service):
    out = set()
    for p in service.get("ports") or []:
        if isinstance(p, dict):
            out.add((as_str(p.get("published")), as_str(p.get("target"))))
        else:
            parts = str(p).split("/")[0].split(":")
            if len(parts) >= 2:
                out.add((parts[-2], parts[-1]))
    return out


def compose_mounts(service):
    """Bind mounts of a service as {target: source} (short `src:dst[:mode]` or long syntax)."""
    out = {}
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            if v.get("source") is not None and v.get("target"):
                out[str(v["target"])] = str(v["source"])
        else:
            parts = str(v).split(":")
            if len(parts) >= 2:
                out[parts[1]] = parts[0]
    return out


def compose_secret_names(service):
    return [s.get("source") if isinstance(s, dict) else str(s) for s in service.get("secrets") or []]


def container_of(doc, name=None):
    containers = dig(doc.data, "spec", "template", "spec", "containers", default=[]) or []
    if name is None:
        return containers[0] if containers else None
    return next((c for c in containers if isinstance(c, dict) and c.get("name") == name), None)


def compose_command(service):
    cmd = service.get("command") or []
    if isinstance(cmd, str):
        cmd = cmd.split()
    return [as_str(a) for a in cmd]


def flag_values(args):
    """`--flag value` / `--flag=value` pairs of an argument list, as {flag: value}."""
    out, i = {}, 0
    while i < len(args):
        a = str(args[i])
        if a.startswith("--") and "=" in a:
            k, _, v = a.partition("=")
            out[k] = v
        elif a.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is not None and not str(nxt).startswith("--"):
                out[a] = str(nxt)
                i += 1
            else:
                out[a] = None
        i += 1
    return out


def flag_lists(args):
    """Like flag_values, but every value of a repeated flag, in order: {flag: [values]}."""
    out, i = {}, 0
    while i < len(args):
        a = str(args[i])
        if a.startswith("--") and "=" in a:
            k, _, v = a.partition("=")
            out.setdefault(k, []).append(v)
        elif a.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is not None and not str(nxt).startswith("--"):
                out.setdefault(a, []).append(str(nxt))
                i += 1
            else:
                out.setdefault(a, []).append(None)
        i += 1
    return out


# Secrets each deployment brings itself, so neither side holds a value: compose passes the
# host's variable with an empty default (`${NAME:-}`), a cluster an optional Secret key. Both
# mean "unset" by default, which the comparison sees as "" on the k8s side.
OPTIONAL_SECRET_ENV = ("SESSION_SECRET",)


def container_env(c, g=None, w=""):
    env = {}
    for e in c.get("env") or []:
        name = e.get("name")
        ref = dig(e, "valueFrom", "secretKeyRef", default=None)
        if g is not None:
            if name in OPTIONAL_SECRET_ENV:
                g.check("value" not in e and isinstance(ref, dict) and ref.get("optional") is True
                        and ref.get("name") and ref.get("key"),
                        "%s: env %s must come from an optional secretKeyRef (name, key, optional: true)"
                        % (w, name))
            else:
                g.check("valueFrom" not in e, "%s: env %s uses valueFrom, compose sets a literal" % (w, name))
            g.check(name not in env, "%s: env %s set twice" % (w, name))
        env[name] = "" if name in OPTIONAL_SECRET_ENV and "valueFrom" in e else e.get("value")
    return env


# What a workload needs to reach meshd: its TLS URL and the root certificate to verify it with.
TRUST_ENV = ("MESH_CONTROL_PLANE", "MESH_CA_FILE")


def is_path(source):
    return str(source).startswith(("/", ".", "~"))


def compose_volume_list(service):
    """A service's mounts (short `src:dst[:mode]` or long syntax) as dicts: source, target,
    read_only, type ("volume" for a named volume, "bind" for a host path)."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            src = v.get("source")
            kind = v.get("type") or ("bind" if src is not None and is_path(src) else "volume")
            out.append({"source": as_str(src) if src is not None else None, "target": as_str(v.get("target")),
                        "read_only": v.get("read_only") is True, "type": kind})
        else:
            parts = str(v).split(":")
            if len(parts) == 1:  # an anonymous volume
                out.append({"source": None, "target": parts[0], "read_only": False, "type": "volume"})
                continue
            mode = parts[2].split(",") if len(parts) > 2 else []
            out.append({"source": parts[0], "target": parts[1], "read_only": "ro" in mode,
                        "type": "bind" if is_path(parts[0]) else "volume"})
    return out


def fmt_mount(m):
    """A mount from compose_volume_list as compose writes it: `source:target[:ro]` (bind or volume)."""
    if m is None:
        return "no mount"
    return "%s:%s%s (%s)" % (m["source"] or "(anonymous)", m["target"], ":ro" if m["read_only"] else "", m["type"])


def compose_mount_of(service, path):
    """The service's mount that holds `path` (the deepest one), or None."""
    hits = [m for m in compose_volume_list(service) if m["target"].startswith("/") and is_under(path, m["target"])]
    return max(hits, key=lambda m: len(m["target"].rstrip("/")), default=None)


def check_compose_trust(g, compose, svc_name, svc, want_env, got_env, w, k8s_ns=None, meshd_ns=None):
    """A meshed compose service and its k8s counterpart reach meshd over TLS (the same URL; from
    another namespace than meshd's, k8s_ns, the k8s side names meshd.<meshd_ns>.svc[.cluster.local]
    instead, on the same port) and trust the same file, MESH_CA_FILE, which compose mounts
    read-only from volume mesh-ca-root (k8s from ConfigMap mesh-ca-root-cert; the mesh group
    checks that side)."""
    ccp, kcp = want_env.get("MESH_CONTROL_PLANE"), got_env.get("MESH_CONTROL_PLANE")
    g.check(ccp == MESHD_URL, "docker-compose.yml: %s: MESH_CONTROL_PLANE must be %s (meshd's API is TLS only; "
            "http:// is refused at start), is %r" % (svc_name, MESHD_URL, ccp))
    k8s_ns, meshd_ns = k8s_ns or POD_NS, meshd_ns or POD_NS
    if k8s_ns == meshd_ns:
        g.check(kcp == ccp, "%s: env MESH_CONTROL_PLANE=%r, compose %s has %r" % (w, kcp, svc_name, ccp))
    else:
        want = ["https://%s:%d" % (h, MESHD_PORT) for h in meshd_cert_names(meshd_ns)[1:]]
        g.check(kcp in want and ccp == MESHD_URL,
                "%s: env MESH_CONTROL_PLANE=%r, expected compose %s's %r with meshd's name from namespace %s: %s"
                % (w, kcp, svc_name, ccp, k8s_ns, " or ".join(want)))
    ccf, kcf = want_env.get("MESH_CA_FILE"), got_env.get("MESH_CA_FILE")
    g.check(ccf and kcf == ccf, "%s: env MESH_CA_FILE=%r must be the path compose %s trusts, %r (one place for "
            "the root in both)" % (w, kcf, svc_name, ccf))
    if not g.check(isinstance(ccf, str) and ccf.startswith("/"),
                   "docker-compose.yml: %s: MESH_CA_FILE must be an absolute path, is %r" % (svc_name, ccf)):
        return
    d = ccf.rpartition("/")[0] or "/"
    m = next((m for m in compose_volume_list(svc) if m["target"].rstrip("/") == d), None)
    g.check(m is not None and m["type"] == "volume" and m["source"] == COMPOSE_CA_ROOT_VOLUME and m["read_only"],
            "docker-compose.yml: %s: MESH_CA_FILE %s: its directory %s must be a read-only mount of volume %s "
            "(what meshd's --publish-root writes), is %s" % (svc_name, ccf, d, COMPOSE_CA_ROOT_VOLUME, fmt_mount(m)))


def check_compose_meshd_ca(g, compose, services, svc, publish_root):
    """Compose's meshd generates its CA once into its own volume (only it mounts it) and writes
    the public root with --publish-root into volume mesh-ca-root, mounted read-write by meshd
    alone, at the very file every meshed service's MESH_CA_FILE names in its read-only mount."""
    vols = dig(compose, "volumes", default={}) or {}
    g.check(COMPOSE_CA_ROOT_VOLUME in vols, "docker-compose.yml: top-level volumes lack %s (the published root)"
            % COMPOSE_CA_ROOT_VOLUME)
    ca = compose_mount_of(svc, MESHD_CA_DIR)
    if g.check(ca is not None and ca["type"] == "volume" and ca["source"] and not ca["read_only"]
               and ca["source"] != COMPOSE_CA_ROOT_VOLUME,
               "docker-compose.yml: %s's CA dir %s must be in a named volume of its own, read-write (generated on "
               "first start, kept across restarts), is %s" % (MESHD, MESHD_CA_DIR, fmt_mount(ca))):
        for name, other in sorted(services.items()):
            if name != MESHD:
                g.check(not any(m["source"] == ca["source"] for m in compose_volume_list(other or {})),
                        "docker-compose.yml: %s mounts volume %s, %s's CA key; only %s may"
                        % (name, ca["source"], MESHD, MESHD))
    if not g.check(len(publish_root) == 1 and isinstance(publish_root[0], str) and publish_root[0].startswith("/"),
                   "docker-compose.yml: %s's command needs one --publish-root <absolute file> (the root the "
                   "workloads mount as MESH_CA_FILE), has %r" % (MESHD, publish_root)):
        return
    pr = publish_root[0]
    m = compose_mount_of(svc, pr)
    if not g.check(m is not None and m["type"] == "volume" and m["source"] == COMPOSE_CA_ROOT_VOLUME
                   and not m["read_only"] and m["target"].rstrip("/") != pr.rstrip("/"),
                   "docker-compose.yml: %s's --publish-root %s must be a file in volume %s mounted read-write by "
                   "%s, is in %s" % (MESHD, pr, COMPOSE_CA_ROOT_VOLUME, MESHD, fmt_mount(m))):
        return
    g.check(not is_under(pr, MESHD_CA_DIR), "docker-compose.yml: %s's --publish-root %s is inside its CA dir %s"
            % (MESHD, pr, MESHD_CA_DIR))
    rel = pr[len(m["target"].rstrip("/")):]
    for name, other in sorted(services.items()):
        if name == MESHD:
            continue
        other = other or {}
        cf = compose_env(other).get("MESH_CA_FILE")
        if cf is None:  # (a meshed service's mount is checked with its MESH_CA_FILE)
            for om in compose_volume_list(other):
                if om["source"] == COMPOSE_CA_ROOT_VOLUME:
                    g.check(om["read_only"], "docker-compose.yml: %s mounts volume %s read-write; only %s "
                            "writes it" % (name, COMPOSE_CA_ROOT_VOLUME, MESHD))
            continue
        om = compose_mount_of(other, cf)
        if om is None or om["source"] != COMPOSE_CA_ROOT_VOLUME:
            continue  # reported with its MESH_CA_FILE (check_compose_trust)
        g.check(cf[len(om["target"].rstrip("/")):] == rel,
                "docker-compose.yml: %s's MESH_CA_FILE %s is not the file %s's --publish-root %s writes (%s in "
                "volume %s)" % (name, cf, MESHD, pr, rel.lstrip("/"), COMPOSE_CA_ROOT_VOLUME))


def check_meshd_image(root, g):
    """The meshd images' entrypoint gives --ca-dir /var/lib/meshd/ca: where k8s mounts Secret
    meshd-ca and under compose's CA volume."""
    for rel in MESHD_DOCKERFILES:
        path = root / rel
        if not path.is_file():
            continue
        stage, entry = None, None
        for line in path.read_text().splitlines():
            mf = re.match(r"\s*FROM\s+\S+(?:\s+AS\s+(\S+))?\s*$", line, re.I)
            if mf:
                stage = (mf.group(1) or "").lower()
            me = re.match(r"\s*ENTRYPOINT\s+(.*)$", line, re.I)
            if me and stage == MESHD:
                try:
                    entry = json.loads(me.group(1))
                except ValueError:
                    entry = me.group(1).split()
        flags = flag_values([as_str(a) for a in entry or []])
        g.check(flags.get("--ca-dir") == MESHD_CA_DIR,
                "%s: stage %s's ENTRYPOINT must give --ca-dir %s (where k8s mounts Secret %s), is %r"
                % (rel, MESHD, MESHD_CA_DIR, MESHD_CA_SECRET, entry))


def check_compose(root, docs, mesh, g):
    """docker-compose.yml runs the app in the mesh, so each service is compared with the base
    Deployment plus the k8s/mesh overlay's patch (the effective mesh-mode Deployment), and
    `meshd` with the overlay's meshd. Compose-only plumbing (`secrets`, `volumes`,
    `depends_on`) is not compared; the token values are, with the overlay's Secret."""
    path = root / "docker-compose.yml"
    try:
        raw = yaml.safe_load(path.read_text())
        compose = interpolate(raw)
    except (OSError, yaml.YAMLError) as e:
        g.fail("docker-compose.yml: cannot load: %s" % e)
        return
    raw_services = dig(raw, "services", default={}) or {}
    services = dig(compose, "services", default={}) or {}
    # Services of optional profiles (observability: Jaeger, Prometheus) have no manifests of
    # their own here; k8s/monitoring plays their part.
    services = {n: s for n, s in services.items() if not (s or {}).get("profiles")}
    check_meshd_image(root, g)
    deployments = {d.name: d for d in docs if d.kind == "Deployment" and d.rel.count("/") == 1}
    effective = mesh.effective if mesh else {}
    want_services = sorted(list(COMPOSE_TO_DEPLOYMENT) + [MESHD, GATEWAY])
    g.check(sorted(services) == want_services,
            "docker-compose.yml: services %s, expected %s" % (sorted(services), want_services))
    for svc_name in sorted(services):
        if svc_name in (MESHD, GATEWAY):
            continue
        svc = services[svc_name] or {}
        dep_name = COMPOSE_TO_DEPLOYMENT.get(svc_name)
        dep = deployments.get(dep_name)
        if not g.check(dep is not None, "docker-compose.yml: service %s has no Deployment %s in k8s/"
                       % (svc_name, dep_name)):
            continue
        w = dep.where()
        app = dig(dep.data, "spec", "template", "metadata", "labels", "app")
        c = container_of(dep, app)
        if not g.check(isinstance(c, dict), "%s: no container named %r" % (w, app)):
            continue
        g.check(c.get("image") == svc.get("image"), "%s: image %r differs from compose %s image %r"
                % (w, c.get("image"), svc_name, svc.get("image")))
        base_env = container_env(c, g, w)
        mesh_vars = sorted(k for k in base_env if str(k).startswith("MESH_"))
        g.check(not mesh_vars, "%s: base Deployment sets %s; k8s/ stays plain (for Istio), mesh "
                               "settings belong in the k8s/mesh overlay" % (w, mesh_vars))
        # The effective mesh-mode env: base plus the overlay's patch.
        eff = effective.get(dep_name)
        if not g.check(eff is not None, "k8s/mesh: no patch for Deployment %s, so compose %s (mesh mode) "
                       "has no k8s counterpart" % (dep_name, svc_name)):
            continue
        ew = eff.where()
        got_env = container_env(container_of(eff, app) or {}, g, ew)
        check_otel_names(g, ew, got_env, svc, svc_name)
        got_env = without_otel(got_env)
        want_env = compose_env(svc)
        check_compose_trust(g, compose, svc_name, svc, want_env, got_env, ew)
        # MESH_MODE: compose's ${MESH_MODE:-embedded} (embedded by default, sidecar with
        # MESH_MODE=sidecar and the sidecar profile); k8s/mesh leaves it unset (embedded) or says so.
        check_compose_mesh_mode(g, raw_services.get(svc_name) or {}, svc_name)
        g.check(got_env.get(MESH_MODE_VAR, MESH_MODE_EMBEDDED) == want_env.get(MESH_MODE_VAR) == MESH_MODE_EMBEDDED,
                "%s: env %s=%r, compose %s's default is %r; both must mean %s" % (
                    ew, MESH_MODE_VAR, got_env.get(MESH_MODE_VAR), svc_name, want_env.get(MESH_MODE_VAR), MESH_MODE_EMBEDDED))
        got_env.pop(MESH_MODE_VAR, None)
        want_env.pop(MESH_MODE_VAR, None)
        for k in sorted((set(want_env) | set(got_env)) - set(TRUST_ENV)):
            g.check(k in got_env, "%s: env %s=%r from compose %s missing" % (ew, k, want_env.get(k), svc_name))
            g.check(k in want_env, "%s: env %s not set by compose %s" % (ew, k, svc_name))
            if k in got_env and k in want_env:
                if k == "MESH_TOKEN_FILE":
                    # Different paths by design (Compose secret vs. Secret volume): both set.
                    g.check(isinstance(got_env[k], str) and got_env[k] and want_env[k],
                            "%s: env %s must be set in both, k8s %r, compose %s %r"
                            % (ew, k, got_env[k], svc_name, want_env[k]))
                else:
                    g.check(isinstance(got_env[k], str) and got_env[k] == want_env[k],
                            "%s: env %s=%r, compose %s has %r" % (ew, k, got_env[k], svc_name, want_env[k]))
        g.check(dig(dep.data, "spec", "template", "metadata", "labels", "version") == want_env.get("SERVICE_VERSION"),
                "%s: version label differs from compose SERVICE_VERSION %r" % (w, want_env.get("SERVICE_VERSION")))
        ports = [p.get("containerPort") for p in c.get("ports") or []]
        g.check(ports == [APP_PORT], "%s: containerPorts %s, expected [%d]" % (w, ports, APP_PORT))
        if c.get("readinessProbe") or c.get("livenessProbe"):
            hc = svc.get("healthcheck") or {}
            g.check(hc.get("test") and not hc.get("disable"),
                    "%s: has probes but compose %s has no healthcheck" % (w, svc_name))
        # The way in is the ingress gateway; no app service (productpage included) is published.
        g.check(not svc.get("ports") and not compose_published(svc),
                "docker-compose.yml: %s must not publish ports (the page is served through %s), has %r"
                % (svc_name, GATEWAY, svc.get("ports")))

    # meshd <-> the overlay's meshd Deployment.
    svc = services.get(MESHD)
    md = mesh.find("Deployment", MESHD) if mesh else None
    if svc is not None and g.check(md is not None, "k8s/mesh: no Deployment %s for compose service %s"
                                   % (MESHD, MESHD)):
        c = container_of(md, MESHD) or {}
        w = md.where()
        g.check(c.get("image") == svc.get("image"), "%s: image %r differs from compose %s image %r"
                % (w, c.get("image"), MESHD, svc.get("image")))
        kflags = flag_lists([as_str(a) for a in c.get("args") or []])
        cflags_all = flag_lists(compose_command(svc))
        # --publish-root is compose's way to the workloads (a shared volume; see below), which
        # k8s's meshd must not give (the mesh group says so).
        cflags = {f: v for f, v in cflags_all.items() if f not in COMPOSE_ONLY_MESHD_FLAGS + COMPOSE_ONLY_TOKEN_FLAGS}
        kflags = {f: v for f, v in kflags.items() if f not in COMPOSE_ONLY_MESHD_FLAGS + K8S_ONLY_MESHD_FLAGS}
        g.check(cflags_all.get("--token-dir") and all(cflags_all["--token-dir"]),
                "docker-compose.yml: %s command lacks --token-dir <dir> (compose's demo tokens)" % MESHD)
        for flag in MESHD_FLAGS:
            g.check(kflags.get(flag) and all(kflags[flag]), "%s: args lack %s <dir>" % (w, flag))
            g.check(cflags.get(flag) and all(cflags[flag]), "docker-compose.yml: %s command lacks %s <dir>"
                    % (MESHD, flag))
        kcount = {f: len(v) for f, v in kflags.items()}
        ccount = {f: len(v) for f, v in cflags.items()}
        g.check(kcount == ccount, "%s: args flags %s differ from compose %s command flags %s (flag: times given)"
                % (w, kcount, MESHD, ccount))
        # Both config dirs, in the same order and at the same paths: mesh-config/base, then the
        # watched directory.
        kdirs, cdirs = kflags.get("--config-dir", []), cflags.get("--config-dir", [])
        g.check(len(cdirs) == 2, "docker-compose.yml: %s command needs two --config-dir (%s, then the "
                "watched dir), has %r" % (MESHD, MESH_BASE_DIR, cdirs))
        g.check(kdirs == cdirs, "%s: --config-dir %r differ from compose %s's %r" % (w, kdirs, MESHD, cdirs))
        cmounts = compose_mounts(svc)
        if len(cdirs) == 2:
            src = cmounts.get(cdirs[0])
            g.check(src is not None and (root / src).resolve() == (root / MESH_BASE_DIR).resolve(),
                    "docker-compose.yml: %s's first --config-dir %s must be a mount of ./%s, is %r"
                    % (MESHD, cdirs[0], MESH_BASE_DIR, src))
            src = cmounts.get(cdirs[1])
            g.check(src is not None and (root / src).resolve() != (root / MESH_BASE_DIR).resolve(),
                    "docker-compose.yml: %s's second --config-dir %s must be a mount of the watched "
                    "directory, is %r" % (MESHD, cdirs[1], src))
        # meshd certifies every identity, so it holds every token.
        msecrets = sorted(compose_secret_names(svc))
        want_secrets = sorted(dig(compose, "secrets", default={}) or {})
        g.check(msecrets == want_secrets, "docker-compose.yml: %s's secrets %s must be all secrets %s"
                % (MESHD, msecrets, want_secrets))
        kenv = sorted(set(container_env(c)) - set(MESHD_ENV_FIELDS))
        g.check(not kenv and not compose_env(svc),
                "%s: meshd takes its settings as flags; neither side should set env, except %s in k8s (the "
                "downward API), has k8s %s, compose %s" % (w, sorted(MESHD_ENV_FIELDS), kenv, sorted(compose_env(svc))))
        check_compose_meshd_ca(g, compose, services, svc, cflags_all.get("--publish-root") or [])
        hc = svc.get("healthcheck") or {}
        g.check(hc.get("test") and not hc.get("disable") and c.get("readinessProbe"),
                "%s: compose %s healthcheck and the readinessProbe must both exist" % (w, MESHD))

    # istio-ingressgateway <-> the overlay's gateway Deployment.
    svc = services.get(GATEWAY)
    gd = mesh.find("Deployment", GATEWAY) if mesh else None
    if svc is not None and g.check(gd is not None, "k8s/mesh: no Deployment %s for compose service %s"
                                   % (GATEWAY, GATEWAY)):
        c = container_of(gd) or {}
        w = "%s: container %s" % (gd.where(), c.get("name"))
        g.check(c.get("image") == svc.get("image"), "%s: image %r differs from compose %s image %r"
                % (w, c.get("image"), GATEWAY, svc.get("image")))
        g.check([as_str(a) for a in c.get("args") or []] == compose_command(svc),
                "%s: args %r differ from compose %s command %r" % (w, c.get("args"), GATEWAY, compose_command(svc)))
        got_env = container_env(c, g, w)
        check_otel_names(g, w, got_env, svc, GATEWAY)
        got_env = without_otel(got_env)
        want_env = compose_env(svc)
        check_compose_trust(g, compose, GATEWAY, svc, want_env, got_env, w, doc_ns(gd), meshd_namespace(mesh))
        for k in sorted(set(want_env) - set(TRUST_ENV)):
            g.check(k in got_env, "%s: env %s=%r from compose %s missing" % (w, k, want_env[k], GATEWAY))
        # Different token paths by design; compose's file is the token named <ns>.<sa> of the
        # identity the k8s side sets explicitly (the binary's defaults, which compose relies on).
        ctf = want_env.get("MESH_TOKEN_FILE") or ""
        g.check(got_env.get("MESH_TOKEN_FILE") and ctf, "%s: MESH_TOKEN_FILE must be set in both, k8s %r, "
                "compose %s %r" % (w, got_env.get("MESH_TOKEN_FILE"), GATEWAY, ctf))
        g.check(ctf.rpartition("/")[2] == GATEWAY_TOKEN and GATEWAY_TOKEN in compose_secret_names(svc),
                "docker-compose.yml: %s's MESH_TOKEN_FILE %r must be its secret %s" % (GATEWAY, ctf, GATEWAY_TOKEN))
        for k in ("MESH_NAMESPACE", "MESH_SERVICE_ACCOUNT"):
            g.check(want_env.get(k, got_env.get(k)) == got_env.get(k),
                    "%s: env %s=%r, compose %s has %r" % (w, k, got_env.get(k), GATEWAY, want_env.get(k)))
        g.check("%s.%s" % (got_env.get("MESH_NAMESPACE"), got_env.get("MESH_SERVICE_ACCOUNT")) == GATEWAY_TOKEN,
                "%s: MESH_NAMESPACE.MESH_SERVICE_ACCOUNT must name its token %s" % (w, GATEWAY_TOKEN))
        extra = sorted(set(got_env) - set(want_env) - {"MESH_NAMESPACE", "MESH_SERVICE_ACCOUNT"})
        g.check(not extra, "%s: env %s not set by compose %s" % (w, extra, GATEWAY))
        ports = [p.get("containerPort") for p in c.get("ports") or []]
        g.check(sorted(ports) == [GATEWAY_PORT, ADMIN_PORT], "%s: containerPorts %s, expected [%d, %d] (listener, "
                "admin)" % (w, ports, GATEWAY_PORT, ADMIN_PORT))
        pub = compose_published(svc)
        g.check(len(pub) == 1 and next(iter(pub))[1] == str(GATEWAY_PORT),
                "docker-compose.yml: %s must publish (only) its port %d, publishes %r" % (GATEWAY, GATEWAY_PORT, sorted(pub)))
        g.check((str(GATEWAY_PORT), str(GATEWAY_PORT)) in pub,
                "docker-compose.yml: %s must publish %d:%d by default (${BOOKINFO_PORT:-%d})"
                % (GATEWAY, GATEWAY_PORT, GATEWAY_PORT, GATEWAY_PORT))
        hc = svc.get("healthcheck") or {}
        g.check(hc.get("test") and not hc.get("disable") and c.get("readinessProbe") and c.get("livenessProbe"),
                "%s: compose %s healthcheck and the readiness/liveness probes must all exist" % (w, GATEWAY))

    # Token values: docker/mesh-tokens/* == compose's secrets, one per identity (k8s has none:
    # projected ServiceAccount tokens there, by design).
    sdata = {"default.bookinfo-%s" % app: None for app in APPS}
    sdata[GATEWAY_TOKEN] = None

    class sec:  # noqa: N801 - the expected key set, named for the messages below
        @staticmethod
        def where():
            return "the identities"
    tok_dir = root / "docker" / "mesh-tokens"
    files = {p.name: p for p in sorted(tok_dir.glob("*.*")) if not p.name.startswith(".")
             and p.suffix != ".md"} if tok_dir.is_dir() else {}
    g.check(files, "docker/mesh-tokens: no token files")
    g.check(sorted(files) == sorted(sdata), "%s: stringData keys %s differ from docker/mesh-tokens files %s"
            % (sec.where(), sorted(sdata), sorted(files)))
    for name, p in files.items():
        g.check(p.read_text().strip() and len(p.read_text().split()) == 1,
                "docker/mesh-tokens/%s: must hold one non-empty token" % name)
    csecrets = dig(compose, "secrets", default={}) or {}
    g.check(sorted(csecrets) == sorted(sdata), "docker-compose.yml: secrets %s differ from %s keys %s"
            % (sorted(csecrets), sec.where(), sorted(sdata)))
    for name, spec in csecrets.items():
        f = dig(spec, "file")
        g.check(isinstance(f, str) and (root / f).resolve() == (tok_dir / name).resolve(),
                "docker-compose.yml: secret %s must be file ./docker/mesh-tokens/%s, is %r" % (name, name, f))


def check_compose_mesh_mode(g, raw_svc, svc_name):
    """An app service's MESH_MODE is ${MESH_MODE:-embedded}: embedded by default, sidecar under
    `MESH_MODE=sidecar docker-compose --profile sidecar up`."""
    raw = compose_env(raw_svc).get(MESH_MODE_VAR)
    g.check(raw is not None and interpolate(raw) == MESH_MODE_EMBEDDED
            and interpolate(raw, {MESH_MODE_VAR: MESH_MODE_SIDECAR}) == MESH_MODE_SIDECAR,
            "docker-compose.yml: %s: env %s must be ${%s:-%s} (embedded unless the caller says sidecar), is %r"
            % (svc_name, MESH_MODE_VAR, MESH_MODE_VAR, MESH_MODE_EMBEDDED, raw))


# Service keys that docker-compose refuses, or that mean nothing, with network_mode service:.
NETNS_KEYS = ("networks", "ports", "expose", "hostname", "domainname", "dns", "dns_search", "links",
              "extra_hosts", "mac_address")


def compose_depends_on(service):
    deps = service.get("depends_on") or []
    return [str(d) for d in (deps if isinstance(deps, list) else list(deps))]


def check_compose_sidecars(root, sidecar, g):
    """docker-compose.yml's sidecar profile (run with MESH_MODE=sidecar) against k8s/sidecar: one
    <service>-sidecar per app service, only in that profile, in the app's network namespace
    (network_mode service:<app>, no networks or ports of its own), after the app and meshd, with
    the k8s sidecar's image, args, env (trust and token path aside), its own token only, the CA
    root read-only and a healthcheck of `mesh-proxy sidecar ... --health-check`; each app service,
    interpolated with MESH_MODE=sidecar, has the k8s/sidecar app container's env (the mesh
    settings it then ignores aside) and the health check its exec probe runs."""
    if sidecar.kust is None:
        return
    try:
        raw = yaml.safe_load((root / "docker-compose.yml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return  # reported by check_compose
    compose = interpolate(raw, {MESH_MODE_VAR: MESH_MODE_SIDECAR})
    services = dig(compose, "services", default={}) or {}
    sidecars = {n: s or {} for n, s in services.items() if SIDECAR_PROFILE in ((s or {}).get("profiles") or [])}
    want = {"%s-sidecar" % n: n for n in COMPOSE_TO_DEPLOYMENT}
    g.check(sorted(sidecars) == sorted(want), "docker-compose.yml: profile %s holds %s, expected a sidecar per app "
            "service %s" % (SIDECAR_PROFILE, sorted(sidecars), sorted(want)))
    gw = services.get(GATEWAY) or {}
    for sc_name, svc_name in sorted(want.items()):
        sc = sidecars.get(sc_name)
        if sc is None:
            continue
        cw = "docker-compose.yml: %s" % sc_name
        app_svc = services.get(svc_name) or {}
        g.check(sc.get("profiles") == [SIDECAR_PROFILE], "%s: profiles must be [%s] (it clashes with an embedded "
                "app), are %r" % (cw, SIDECAR_PROFILE, sc.get("profiles")))
        g.check(sc.get("network_mode") == "service:%s" % svc_name,
                "%s: network_mode must be service:%s (the app's network namespace: its 127.0.0.1:%d, its name and "
                "address), is %r" % (cw, svc_name, APP_PORT, sc.get("network_mode")))
        for key in NETNS_KEYS:
            g.check(key not in sc, "%s: %s is not allowed beside network_mode service: (an anchor such as *service "
                    "brings networks)" % (cw, key))
        deps = compose_depends_on(sc)
        g.check(svc_name in deps and MESHD in deps, "%s: depends_on must include %s (whose namespace it joins) and "
                "%s, is %r" % (cw, svc_name, MESHD, deps))
        g.check(sc.get("restart") == app_svc.get("restart"), "%s: restart %r differs from %s's %r"
                % (cw, sc.get("restart"), svc_name, app_svc.get("restart")))
        dep_name = COMPOSE_TO_DEPLOYMENT[svc_name]
        eff = sidecar.effective.get(dep_name)
        if not g.check(eff is not None, "k8s/%s: no patch for Deployment %s, so compose %s has no k8s counterpart"
                       % (sidecar.dir, dep_name, sc_name)):
            continue
        app = dig(eff.data, "spec", "template", "metadata", "labels", "app")
        k, ka = container_of(eff, SIDECAR_CONTAINER), container_of(eff, app)
        if not g.check(isinstance(k, dict) and isinstance(ka, dict), "%s: no containers %s and %s"
                       % (eff.where(), app, SIDECAR_CONTAINER)):
            continue
        w = "%s: container %s" % (eff.where(), SIDECAR_CONTAINER)
        g.check(sc.get("image") == k.get("image") == gw.get("image"), "%s: image %r differs from compose %s's %r or "
                "%s's %r" % (w, k.get("image"), sc_name, sc.get("image"), GATEWAY, gw.get("image")))
        args = [as_str(a) for a in k.get("args") or []]
        g.check(compose_command(sc) == args, "%s: args %r differ from compose %s command %r"
                % (w, args, sc_name, compose_command(sc)))
        hc = sc.get("healthcheck") or {}
        test = [as_str(t) for t in hc.get("test") or []] if isinstance(hc.get("test"), list) else hc.get("test")
        want_test = ["CMD", "/mesh-proxy"] + compose_command(sc) + ["--health-check"]
        g.check(test == want_test and not hc.get("disable"), "%s: healthcheck test must be %r (the admin port's "
                "/healthz/ready, as the k8s probes), is %r" % (cw, want_test, test))
        # The env: the k8s sidecar's.
        got_env = container_env(k, g, w)
        check_otel_names(g, w, got_env, sc, sc_name)
        got_env = without_otel(got_env)
        want_env = compose_env(sc)
        check_compose_trust(g, compose, sc_name, sc, want_env, got_env, w)
        for key in sorted((set(want_env) | set(got_env)) - set(TRUST_ENV)):
            g.check(key in got_env, "%s: env %s=%r from compose %s missing" % (w, key, want_env.get(key), sc_name))
            g.check(key in want_env, "%s: env %s not set by compose %s" % (w, key, sc_name))
            if key in got_env and key in want_env and key != "MESH_TOKEN_FILE":
                g.check(isinstance(got_env[key], str) and got_env[key] == want_env[key],
                        "%s: env %s=%r, compose %s has %r" % (w, key, got_env[key], sc_name, want_env[key]))
        # Its own token only (the default identity bookinfo-<service>), and the root read-only.
        own = "default.bookinfo-%s" % app
        g.check(compose_secret_names(sc) == [own], "%s: secrets must be [%s] only, are %r"
                % (cw, own, compose_secret_names(sc)))
        g.check(want_env.get("MESH_TOKEN_FILE") == "/run/secrets/%s" % own and got_env.get("MESH_TOKEN_FILE"),
                "%s: MESH_TOKEN_FILE must be /run/secrets/%s (k8s: %r), is %r"
                % (cw, own, got_env.get("MESH_TOKEN_FILE"), want_env.get("MESH_TOKEN_FILE")))
        mounts = compose_volume_list(sc)
        g.check(len(mounts) == 1 and mounts[0]["source"] == COMPOSE_CA_ROOT_VOLUME and mounts[0]["read_only"],
                "%s: volumes must be only %s read-only (the root), are %s" % (cw, COMPOSE_CA_ROOT_VOLUME,
                                                                          [fmt_mount(m) for m in mounts]))
        # The app itself under MESH_MODE=sidecar: the k8s/sidecar app container's env, once the mesh
        # settings it then ignores are set aside, and the health check its exec probes run.
        aw = "%s: container %s" % (eff.where(), app)
        aenv, kenv = compose_env(app_svc), container_env(ka)
        g.check(aenv.get(MESH_MODE_VAR) == MESH_MODE_SIDECAR == kenv.get(MESH_MODE_VAR),
                "%s: env %s=%r, compose %s with %s=sidecar has %r" % (aw, MESH_MODE_VAR, kenv.get(MESH_MODE_VAR),
                                                                     svc_name, MESH_MODE_VAR, aenv.get(MESH_MODE_VAR)))
        rest = {key: v for key, v in aenv.items() if key not in TRUST_ENV and key != "MESH_TOKEN_FILE"}
        g.check(rest == kenv, "%s: env %r differs from compose %s's in sidecar mode (mesh settings aside) %r"
                % (aw, kenv, svc_name, rest))
        ahc = (app_svc.get("healthcheck") or {}).get("test")
        ahc = [as_str(t) for t in ahc] if isinstance(ahc, list) else ahc
        for probe in ("readinessProbe", "livenessProbe"):
            cmd = dig(ka, probe, "exec", "command")
            if cmd is not None:
                g.check(["CMD"] + [as_str(a) for a in cmd] == ahc, "%s: %s exec %r differs from compose %s's "
                        "healthcheck %r" % (aw, probe, cmd, svc_name, ahc))
    # No app service, meshd or gateway in the profile: only the sidecars are optional.
    others = sorted(n for n in sidecars if n not in want)
    g.check(not others, "docker-compose.yml: profile %s also holds %s" % (SIDECAR_PROFILE, others))


def check_compose_config(root, g):
    """With docker-compose on PATH: `docker-compose config` accepts the file as it is run,
    embedded (no profile) and `MESH_MODE=sidecar ... --profile sidecar`, and interpolates the
    apps' MESH_MODE to embedded and sidecar; the sidecars come out with network_mode and without
    networks or ports."""
    exe = shutil.which("docker-compose")
    if exe is None:
        return False
    for extra_env, args in (({}, []), ({MESH_MODE_VAR: MESH_MODE_SIDECAR}, ["--profile", SIDECAR_PROFILE])):
        what = "%sdocker-compose %sconfig" % ("".join("%s=%s " % kv for kv in extra_env.items()),
                                               "".join(a + " " for a in args))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
        env.update(extra_env)
        try:
            run = subprocess.run([exe, "-f", str(root / "docker-compose.yml")] + args + ["config"], cwd=str(root),
                                 env=env, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            g.fail("%s: could not run: %s" % (what, e))
            continue
        if not g.check(run.returncode == 0, "%s fails: %s" % (what, run.stderr.strip()[-400:])):
            continue
        try:
            out = yaml.safe_load(run.stdout) or {}
        except yaml.YAMLError as e:
            g.fail("%s: output does not parse: %s" % (what, e))
            continue
        services = out.get("services") or {}
        mode = extra_env.get(MESH_MODE_VAR, MESH_MODE_EMBEDDED)
        for svc_name in sorted(COMPOSE_TO_DEPLOYMENT):
            got = compose_env(services.get(svc_name) or {}).get(MESH_MODE_VAR)
            g.check(got == mode, "%s: %s's %s is %r, expected %s" % (what, svc_name, MESH_MODE_VAR, got, mode))
            sc = services.get("%s-sidecar" % svc_name) or {}
            g.check(sc.get("network_mode") == "service:%s" % svc_name and not any(k in sc for k in NETNS_KEYS),
                    "%s: %s-sidecar must come out with network_mode service:%s and none of %s, is %r"
                    % (what, svc_name, svc_name, list(NETNS_KEYS),
                       {k: sc.get(k) for k in ("network_mode",) + NETNS_KEYS if k in sc}))
    return True


# ---------------------------------------------------------------------------------------------
# mysql

MYSQL_DIR = "mysql"
MYSQL_FILES = ["bookinfo-mysql.yaml", "deploymentRatingV2Mysql.yaml"]
MYSQL_INIT_SQL = "ratings/mysql/ratings-init.sql"
MYSQL_PROFILE = "ratings-v2"
# ratings v2's variables with values (the password comes from the Secret in k8s).
RATINGS_V2_ENV = {"SERVICE_VERSION": "v2", "DB_TYPE": "mysql", "MYSQL_DB_HOST": "mysqldb",
                  "MYSQL_DB_PORT": "3306", "MYSQL_DB_USER": "root"}
SECRET_REF = {"secretKeyRef": {"name": "mysql-credentials", "key": "rootpasswd"}}


def check_mysql(root, docs, g_files, g_parse, g):
    """k8s/mysql (optional, not in `kubectl apply -k k8s/`): upstream's bookinfo-mysql.yaml
    (Secret mysql-credentials/rootpasswd, Service mysqldb 3306 `tcp`, Deployment mysqldb-v1 with
    MYSQL_ROOT_PASSWORD from the Secret and the init SQL from ConfigMap mysqldb-init, an exact
    copy of ratings/mysql/ratings-init.sql) and bookinfo-ratings-v2-mysql.yaml (Deployment
    ratings-v2-mysql, app ratings, version v2-mysql, ratings-v1's image and account, v2's env,
    the password from the Secret); compose's ratings-v2 profile agrees (same env, password, init
    file, database image). Returns the documents, for the schema check."""
    base = root / "k8s" / MYSQL_DIR
    out = []
    for name in MYSQL_FILES:
        path = base / name
        if g_files.check(path.is_file(), "k8s/%s/%s: file missing" % (MYSQL_DIR, name)):
            out += load_yaml_docs(root, path, g_parse)
    kust_path = base / "kustomization.yaml"
    if g_files.check(kust_path.is_file(), "k8s/%s/kustomization.yaml: file missing" % MYSQL_DIR):
        kust = yaml.safe_load(kust_path.read_text()) or {}
        g.check(kust.get("resources") == MYSQL_FILES, "k8s/%s/kustomization.yaml: resources %r, expected %r"
                % (MYSQL_DIR, kust.get("resources"), MYSQL_FILES))
    top = yaml.safe_load((root / "k8s" / "kustomization.yaml").read_text()) or {}
    g.check(not any(MYSQL_DIR in str(r) for r in top.get("resources") or []),
            "k8s/kustomization.yaml: k8s/%s is optional, not in the default apply" % MYSQL_DIR)
    by = {(d.kind, d.name): d for d in out}

    def need(kind, name):
        d = by.get((kind, name))
        g.check(d is not None, "k8s/%s: no %s %s" % (MYSQL_DIR, kind, name))
        return d

    secret, cm = need("Secret", "mysql-credentials"), need("ConfigMap", "mysqldb-init")
    svc, db = need("Service", "mysqldb"), need("Deployment", "mysqldb-v1")
    ratings = need("Deployment", "ratings-v2-mysql")
    password = None
    if secret:
        import base64
        raw = dig(secret.data, "data", "rootpasswd")
        try:
            password = base64.b64decode(str(raw), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            password = None
        g.check(password == "password", "%s: data.rootpasswd must be base64 of upstream's \"password\", is %r"
                % (secret.where(), raw))
    if cm:
        sql = (root / MYSQL_INIT_SQL).read_text()
        g.check(dig(cm.data, "data", "ratings-init.sql") == sql,
                "%s: data[ratings-init.sql] must be an exact copy of %s" % (cm.where(), MYSQL_INIT_SQL))
    if svc:
        g.check(dig(svc.data, "spec", "ports") == [{"port": 3306, "name": "tcp"}],
                "%s: ports must be [3306 tcp], are %r" % (svc.where(), dig(svc.data, "spec", "ports")))
        g.check(dig(svc.data, "spec", "selector") == {"app": "mysqldb"}, "%s: selector must be app=mysqldb" % svc.where())
    compose = interpolate(yaml.safe_load((root / "docker-compose.yml").read_text()) or {})
    services = compose.get("services") or {}
    c_db, c_ratings = services.get("mysqldb") or {}, services.get("ratings-v2") or {}
    for name, c in (("mysqldb", c_db), ("ratings-v2", c_ratings)):
        g.check(c.get("profiles") == [MYSQL_PROFILE], "docker-compose.yml: %s must be in profile %s only, is %r"
                % (name, MYSQL_PROFILE, c.get("profiles")))
    if db:
        c = container_of(db, "mysqldb") or {}
        env = {e.get("name"): e for e in c.get("env") or []}
        g.check(env.get("MYSQL_ROOT_PASSWORD", {}).get("valueFrom") == SECRET_REF,
                "%s: MYSQL_ROOT_PASSWORD must come from Secret mysql-credentials key rootpasswd" % db.where())
        mounts = {m.get("mountPath"): m.get("name") for m in c.get("volumeMounts") or []}
        vols = {v.get("name"): v for v in dig(db.data, "spec", "template", "spec", "volumes", default=[]) or []}
        init = vols.get(mounts.get("/docker-entrypoint-initdb.d")) or {}
        g.check(dig(init, "configMap", "name") == "mysqldb-init",
                "%s: /docker-entrypoint-initdb.d must mount ConfigMap mysqldb-init" % db.where())
        g.check(c.get("image") == c_db.get("image"), "%s: image %r, compose's mysqldb %r"
                % (db.where(), c.get("image"), c_db.get("image")))
        g.check(compose_env(c_db).get("MYSQL_ROOT_PASSWORD") == password,
                "docker-compose.yml: mysqldb's MYSQL_ROOT_PASSWORD must be the Secret's password")
        g.check("./%s:/docker-entrypoint-initdb.d/ratings-init.sql:ro" % MYSQL_INIT_SQL in (c_db.get("volumes") or []),
                "docker-compose.yml: mysqldb must mount %s into /docker-entrypoint-initdb.d read-only" % MYSQL_INIT_SQL)
    if ratings:
        w = ratings.where()
        labels = dig(ratings.data, "spec", "template", "metadata", "labels")
        g.check(labels == {"app": "ratings", "version": "v2-mysql"}, "%s: pod labels %r, expected app=ratings "
                "version=v2-mysql (upstream's)" % (w, labels))
        c = container_of(ratings, "ratings") or {}
        env = {e.get("name"): e for e in c.get("env") or []}
        got = {k: as_str(env.get(k, {}).get("value")) for k in RATINGS_V2_ENV}
        g.check(got == RATINGS_V2_ENV, "%s: env %r, expected %r" % (w, got, RATINGS_V2_ENV))
        g.check(env.get("MYSQL_DB_PASSWORD", {}).get("valueFrom") == SECRET_REF,
                "%s: MYSQL_DB_PASSWORD must come from Secret mysql-credentials key rootpasswd" % w)
        c_env = compose_env(c_ratings)
        g.check({k: c_env.get(k) for k in RATINGS_V2_ENV} == RATINGS_V2_ENV,
                "docker-compose.yml: ratings-v2's env %r, expected %r" % (c_env, RATINGS_V2_ENV))
        g.check(c_env.get("MYSQL_DB_PASSWORD") == password,
                "docker-compose.yml: ratings-v2's MYSQL_DB_PASSWORD must be the Secret's password")
        v1 = next((d for d in docs if d.kind == "Deployment" and d.name == "ratings-v1"), None)
        if v1:
            g.check(c.get("image") == (container_of(v1, "ratings") or {}).get("image"),
                    "%s: image must be ratings-v1's" % w)
            g.check(dig(ratings.data, "spec", "template", "spec", "serviceAccountName")
                    == dig(v1.data, "spec", "template", "spec", "serviceAccountName"),
                    "%s: service account must be ratings-v1's" % w)
        for probe in ("readinessProbe", "livenessProbe"):
            g.check(dig(c, probe, "httpGet", "path") == "/health", "%s: %s must GET /health" % (w, probe))
    return out


# ---------------------------------------------------------------------------------------------
# contract


def probe_targets_port(probe, container, port):
    p = dig(probe, "httpGet", "port")
    if isinstance(p, str):
        named = {cp.get("name"): cp.get("containerPort") for cp in container.get("ports") or []}
        p = named.get(p)
    return p == port


def check_all_deployments(docs, g, supplied=()):
    """Rules for every Deployment, app and monitoring alike. `supplied`: (kind, name) of the
    objects the user creates before applying (never in the manifests)."""
    by_ns = lambda d: d.namespace or "default"  # noqa: E731
    sas = {(by_ns(d), d.name) for d in docs if d.kind == "ServiceAccount"}
    cms = {(by_ns(d), d.name) for d in docs if d.kind == "ConfigMap"}
    supplied_cms = {name for kind, name in supplied if kind == "ConfigMap"}
    deps = [d for d in docs if d.kind == "Deployment"]
    for d in deps:
        w = d.where()
        spec = d.data.get("spec") or {}
        pod = dig(spec, "template", "spec", default={}) or {}
        tlabels = dig(spec, "template", "metadata", "labels", default={}) or {}
        sel = dig(spec, "selector", "matchLabels", default={}) or {}
        g.check(sel and all(tlabels.get(k) == v for k, v in sel.items()),
                "%s: selector %r does not match the pod template labels %r" % (w, sel, tlabels))
        san = pod.get("serviceAccountName")
        if san:
            g.check((by_ns(d), san) in sas, "%s: serviceAccountName %s is not defined in the manifests" % (w, san))
        for v in pod.get("volumes") or []:
            if "configMap" in v:
                cm = v["configMap"].get("name")
                g.check((by_ns(d), cm) in cms or cm in supplied_cms,
                        "%s: volume %s uses undefined ConfigMap %s" % (w, v.get("name"), cm))
        pod_nonroot = dig(pod, "securityContext", "runAsNonRoot") is True
        containers = pod.get("containers") or []
        g.check(containers, "%s: no containers" % w)
        for c in containers:
            cw = "%s: container %s" % (w, c.get("name"))
            for probe in ("readinessProbe", "livenessProbe"):
                g.check(isinstance(c.get(probe), dict), "%s: no %s" % (cw, probe))
            req = dig(c, "resources", "requests", default={}) or {}
            g.check("cpu" in req and "memory" in req, "%s: resources.requests needs cpu and memory" % cw)
            g.check(dig(c, "resources", "limits", "memory") is not None, "%s: no memory limit" % cw)
            nonroot = dig(c, "securityContext", "runAsNonRoot")
            g.check(nonroot is True or (nonroot is None and pod_nonroot), "%s: runAsNonRoot is not true" % cw)
            g.check(dig(c, "securityContext", "allowPrivilegeEscalation") is False,
                    "%s: allowPrivilegeEscalation must be false" % cw)
    # Every Service selects the pods of some Deployment in its namespace, on a port they expose.
    for s in (d for d in docs if d.kind == "Service"):
        sel = dig(s.data, "spec", "selector", default={}) or {}
        targets = [d for d in deps if by_ns(d) == by_ns(s) and sel and all(
            dig(d.data, "spec", "template", "metadata", "labels", k) == v for k, v in sel.items())]
        if not g.check(targets, "%s: selector %r matches no Deployment's pods" % (s.where(), sel)):
            continue
        for p in dig(s.data, "spec", "ports", default=[]) or []:
            tp = p.get("targetPort", p.get("port"))
            for d in targets:
                cports = [cp for c in dig(d.data, "spec", "template", "spec", "containers", default=[])
                          for cp in c.get("ports") or []]
                g.check(any(tp in (cp.get("containerPort"), cp.get("name")) for cp in cports),
                        "%s: targetPort %r is not a container port of %s" % (s.where(), tp, d.name))
    for b in (d for d in docs if d.kind in ("ClusterRoleBinding", "RoleBinding")):
        ref = b.data.get("roleRef") or {}
        g.check(any(d.kind == ref.get("kind") and d.name == ref.get("name") for d in docs),
                "%s: roleRef %s/%s is not defined" % (b.where(), ref.get("kind"), ref.get("name")))
        for sub in b.data.get("subjects") or []:
            if sub.get("kind") == "ServiceAccount":
                g.check((sub.get("namespace") or "default", sub.get("name")) in sas,
                        "%s: subject ServiceAccount %s/%s is not defined" % (
                            b.where(), sub.get("namespace"), sub.get("name")))


def check_contract(docs, g):
    app_docs = [d for d in docs if d.rel.count("/") == 1 and not is_istio(d)]
    for fname, (kind, name) in APP_FILES.items():
        in_file = [d for d in app_docs if d.path.name == fname]
        g.check(len(in_file) == 1 and in_file[0].kind == kind and in_file[0].name == name,
                "k8s/%s: must hold exactly one %s %s, holds %s" % (
                    fname, kind, name, ["%s/%s" % (d.kind, d.name) for d in in_file]))
    for d in app_docs:
        g.check(d.namespace is None, "%s: must not set metadata.namespace (apply into any namespace)" % d.where())
    for app in APPS:
        sa = [d for d in app_docs if d.kind == "ServiceAccount" and d.name == "bookinfo-" + app]
        if g.check(sa, "k8s/: no ServiceAccount bookinfo-%s" % app):
            g.check(sa[0].meta.get("labels") == {"account": app},
                    "%s: labels must be {account: %s}, are %r" % (sa[0].where(), app, sa[0].meta.get("labels")))
        svc = [d for d in app_docs if d.kind == "Service" and d.name == app]
        if g.check(svc, "k8s/: no Service %s" % app):
            s, w = svc[0], svc[0].where()
            spec = s.data.get("spec") or {}
            g.check(s.meta.get("labels") == {"app": app, "service": app},
                    "%s: labels must be {app: %s, service: %s}, are %r" % (w, app, app, s.meta.get("labels")))
            g.check(spec.get("selector") == {"app": app},
                    "%s: selector must be only {app: %s}, is %r" % (w, app, spec.get("selector")))
            g.check(spec.get("type", "ClusterIP") == "ClusterIP", "%s: type must be ClusterIP" % w)
            ports = spec.get("ports") or []
            ok = len(ports) == 1 and ports[0].get("port") == APP_PORT and ports[0].get("name") == "http" \
                and ports[0].get("targetPort", APP_PORT) in (APP_PORT, "http") \
                and ports[0].get("protocol", "TCP") == "TCP"
            g.check(ok, "%s: must have one port %d named http (targetPort %d), has %r" % (w, APP_PORT, APP_PORT, ports))
    for fname, (kind, name) in APP_FILES.items():
        if kind != "Deployment":
            continue
        dd = [d for d in app_docs if d.kind == "Deployment" and d.name == name]
        if not g.check(dd, "k8s/%s: no Deployment %s" % (fname, name)):
            continue
        d, w = dd[0], dd[0].where()
        app, version = name.rsplit("-", 1)
        labels = {"app": app, "version": version}
        spec = d.data.get("spec") or {}
        pod = dig(spec, "template", "spec", default={}) or {}
        g.check(spec.get("replicas") == 1, "%s: replicas must be 1" % w)
        g.check(d.meta.get("labels") == labels, "%s: metadata.labels must be %r, are %r" % (w, labels, d.meta.get("labels")))
        g.check(dig(spec, "selector", "matchLabels") == labels and set(spec.get("selector") or {}) == {"matchLabels"},
                "%s: selector must be matchLabels %r" % (w, labels))
        g.check(dig(spec, "template", "metadata", "labels") == labels,
                "%s: pod template labels must be %r" % (w, labels))
        g.check(pod.get("serviceAccountName") == "bookinfo-" + app,
                "%s: serviceAccountName must be bookinfo-%s, is %r" % (w, app, pod.get("serviceAccountName")))
        ann = dig(spec, "template", "metadata", "annotations", default={}) or {}
        if app == "productpage":
            want = {"prometheus.io/scrape": "true", "prometheus.io/port": str(APP_PORT), "prometheus.io/path": "/metrics"}
            g.check(all(ann.get(k) == v for k, v in want.items()),
                    "%s: pod template annotations must include %r, are %r" % (w, want, ann))
        containers = pod.get("containers") or []
        if not g.check(len(containers) == 1 and containers[0].get("name") == app,
                       "%s: must have exactly one container named %s" % (w, app)):
            continue
        c, cw = containers[0], "%s: container %s" % (w, app)
        g.check(c.get("image") == "bookinfo-rs/%s:latest" % app, "%s: image must be bookinfo-rs/%s:latest" % (cw, app))
        g.check(c.get("imagePullPolicy") == "IfNotPresent",
                "%s: imagePullPolicy must be IfNotPresent (images are loaded into minikube, not pulled)" % cw)
        g.check([p.get("containerPort") for p in c.get("ports") or []] == [APP_PORT],
                "%s: must expose containerPort %d" % (cw, APP_PORT))
        for probe in ("readinessProbe", "livenessProbe"):
            pr = c.get(probe) or {}
            g.check(dig(pr, "httpGet", "path") == "/health" and probe_targets_port(pr, c, APP_PORT),
                    "%s: %s must be httpGet /health on port %d" % (cw, probe, APP_PORT))
            g.check(isinstance(pr.get("periodSeconds"), int) and 1 <= pr["periodSeconds"] <= 60,
                    "%s: %s needs periodSeconds between 1 and 60" % (cw, probe))
        sc = c.get("securityContext") or {}
        want_sc = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                   "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}
        for k, v in want_sc.items():
            g.check(sc.get(k) == v, "%s: securityContext.%s must be %r, is %r" % (cw, k, v, sc.get(k)))
        g.check(dig(sc, "capabilities", "drop") == ["ALL"], "%s: securityContext.capabilities.drop must be [ALL]" % cw)


# ---------------------------------------------------------------------------------------------
# monitoring


def check_monitoring(docs, g):
    mon = [d for d in docs if d.rel.startswith("k8s/monitoring/")]
    find = lambda kind, name: next((d for d in mon if d.kind == kind and d.name == name), None)  # noqa: E731
    g.check(find("Namespace", ISTIO_NS) is not None and find("Namespace", ISTIO_NS).rel == "k8s/monitoring/namespace.yaml",
            "k8s/monitoring/namespace.yaml: must define Namespace %s" % ISTIO_NS)
    for d in mon:
        if d.kind in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            g.check(d.namespace is None, "%s: cluster-scoped, must not set a namespace" % d.where())
        else:
            g.check(d.namespace == ISTIO_NS, "%s: must be in namespace %s, is %r" % (d.where(), ISTIO_NS, d.namespace))

    def svc_ports(name):
        s = find("Service", name)
        if not g.check(s is not None, "k8s/monitoring: no Service %s" % name):
            return {}
        return {p.get("port"): p for p in dig(s.data, "spec", "ports", default=[]) or []}

    # Prometheus
    prom = find("Deployment", "prometheus")
    g.check(prom is not None, "k8s/monitoring: no Deployment prometheus")
    g.check(9090 in svc_ports("prometheus"), "k8s/monitoring: Service prometheus must expose port 9090")
    cm = find("ConfigMap", "prometheus")
    if g.check(cm is not None, "k8s/monitoring: no ConfigMap prometheus"):
        try:
            pcfg = yaml.safe_load(dig(cm.data, "data", "prometheus.yml", default="")) or {}
        except yaml.YAMLError as e:
            pcfg = {}
            g.fail("%s: prometheus.yml does not parse: %s" % (cm.where(), e))
        pod_jobs = [j for j in pcfg.get("scrape_configs") or []
                    if any(sd.get("role") == "pod" for sd in j.get("kubernetes_sd_configs") or [])]
        if g.check(pod_jobs, "%s: prometheus.yml needs a scrape job with kubernetes_sd_configs role pod" % cm.where()):
            text = yaml.safe_dump(pod_jobs)
            for ann in ("scrape", "port", "path"):
                g.check("__meta_kubernetes_pod_annotation_prometheus_io_%s" % ann in text,
                        "%s: pod scrape job ignores the prometheus.io/%s annotation" % (cm.where(), ann))
            keep = [r for j in pod_jobs for r in j.get("relabel_configs") or []
                    if r.get("action") == "keep"
                    and "__meta_kubernetes_pod_annotation_prometheus_io_scrape" in (r.get("source_labels") or [])]
            g.check(keep, "%s: pod scrape job must keep only pods annotated prometheus.io/scrape" % cm.where())
        if prom is not None:
            args = " ".join(str(a) for a in (container_of(prom) or {}).get("args") or [])
            mounts = {m.get("name"): m.get("mountPath") for m in (container_of(prom) or {}).get("volumeMounts") or []}
            vols = {v.get("name"): dig(v, "configMap", "name") for v in dig(prom.data, "spec", "template", "spec", "volumes", default=[]) or []}
            cfg_mount = next((mounts.get(n) for n, cmn in vols.items() if cmn == "prometheus"), None)
            g.check(cfg_mount and "--config.file=%s/prometheus.yml" % cfg_mount.rstrip("/") in args,
                    "%s: must mount ConfigMap prometheus and point --config.file at its prometheus.yml" % prom.where())
    prom_role = find("ClusterRole", next((b.data["roleRef"]["name"] for b in mon if b.kind == "ClusterRoleBinding"
                                          and any(s.get("name") == "prometheus" for s in b.data.get("subjects") or [])), None))
    if g.check(prom_role is not None, "k8s/monitoring: no ClusterRole bound to ServiceAccount prometheus"):
        granted = {r for rule in prom_role.data.get("rules") or [] if "list" in (rule.get("verbs") or [])
                   and "" in (rule.get("apiGroups") or []) for r in rule.get("resources") or []}
        for r in ("pods", "endpoints", "services", "nodes"):
            g.check(r in granted, "%s: must allow list on %s" % (prom_role.where(), r))

    # Jaeger
    jg = find("Deployment", "jaeger")
    if g.check(jg is not None, "k8s/monitoring: no Deployment jaeger"):
        c = container_of(jg) or {}
        g.check(str(c.get("image", "")).startswith("jaegertracing/all-in-one:"),
                "%s: image must be jaegertracing/all-in-one" % jg.where())
        env = {e.get("name"): e.get("value") for e in c.get("env") or []}
        g.check(env.get("COLLECTOR_OTLP_ENABLED") == "true", "%s: COLLECTOR_OTLP_ENABLED must be \"true\"" % jg.where())
    tr = svc_ports("tracing")
    g.check(80 in tr and tr[80].get("targetPort") == 16686 and tr[80].get("name") == "http-query",
            "k8s/monitoring: Service tracing must map port 80 (http-query) to 16686")
    col = svc_ports("jaeger-collector")
    for port, name in ((4317, "grpc-otlp"), (4318, "http-otlp"), (9411, "zipkin")):
        g.check(port in col and col[port].get("name") == name,
                "k8s/monitoring: Service jaeger-collector must expose %d named %s" % (port, name))

    # Kiali
    kd = find("Deployment", "kiali")
    g.check(kd is not None and kd.namespace == ISTIO_NS,
            "k8s/monitoring: no Deployment kiali in %s (the tutorial waits on its rollout)" % ISTIO_NS)
    g.check(20001 in svc_ports("kiali"), "k8s/monitoring: Service kiali must expose port 20001")
    g.check(find("ServiceAccount", "kiali") is not None, "k8s/monitoring: no ServiceAccount kiali")
    kcm = find("ConfigMap", "kiali")
    if g.check(kcm is not None, "k8s/monitoring: no ConfigMap kiali"):
        try:
            kcfg = yaml.safe_load(dig(kcm.data, "data", "config.yaml", default="")) or {}
        except yaml.YAMLError as e:
            kcfg = {}
            g.fail("%s: config.yaml does not parse: %s" % (kcm.where(), e))
        g.check(dig(kcfg, "external_services", "prometheus", "url") == "http://prometheus.istio-system:9090",
                "%s: external_services.prometheus.url must be http://prometheus.istio-system:9090" % kcm.where())
        turl = str(dig(kcfg, "external_services", "tracing", "internal_url", default=""))
        g.check(dig(kcfg, "external_services", "tracing", "enabled") is True and
                re.match(r"^https?://(tracing|jaeger-query)\.istio-system(\.svc[.a-z]*)?(:\d+)?(/.*)?$", turl),
                "%s: external_services.tracing must be enabled with internal_url at the tracing Service, is %r"
                % (kcm.where(), turl))
        g.check(dig(kcfg, "server", "port", default=20001) == 20001, "%s: server.port must be 20001" % kcm.where())
    kbind = [b for b in mon if b.kind == "ClusterRoleBinding"
             and any(s.get("kind") == "ServiceAccount" and s.get("name") == "kiali" for s in b.data.get("subjects") or [])]
    if g.check(kbind, "k8s/monitoring: no ClusterRoleBinding for ServiceAccount kiali"):
        role = find("ClusterRole", kbind[0].data["roleRef"]["name"])
        if g.check(role is not None, "%s: roleRef not defined" % kbind[0].where()):
            allowed_writes = {"pods/portforward", "selfsubjectaccessreviews"}
            for i, rule in enumerate(role.data.get("rules") or []):
                writes = set(rule.get("verbs") or []) - READ_VERBS
                g.check(not writes or set(rule.get("resources") or []) <= allowed_writes,
                        "%s: rule %d grants %s, Kiali's role must be read-only" % (role.where(), i, sorted(writes)))


# ---------------------------------------------------------------------------------------------
# telemetry: the mesh overlay and k8s/monitoring, wired as compose's observability profile


# Any pod address: Prometheus's discovery is simulated on the rendered pod templates.
POD_IP = "10.244.0.7"
POD_NS = "default"
SD_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def prom_expand(m, template):
    """Go's Regexp.Expand, as Prometheus uses it: $1, ${1}, $name, ${name}; $$ is a `$`."""
    def sub(x):
        if x.group(1) == "$":
            return "$"
        name = x.group(2) or x.group(3)
        try:
            return (m.group(int(name)) if name.isdigit() else m.group(name)) or ""
        except (IndexError, ValueError):
            return ""
    return re.sub(r"\$(\$|\{(\w+)\}|(\w+))", sub, template)


def prom_relabel(labels, configs):
    """Prometheus's relabelling, the actions a kubernetes_sd job uses (regexes fully anchored, as
    in RE2): the target's labels, or None when it is dropped. ValueError for anything else."""
    labels = dict(labels)
    for cfg in configs or []:
        if not isinstance(cfg, dict):
            raise ValueError("relabel_configs entry %r is not a mapping" % (cfg,))
        action = as_str(cfg.get("action", "replace")).lower()
        rx = re.compile("(?:%s)" % as_str(cfg.get("regex", "(.*)")))
        val = as_str(cfg.get("separator", ";")).join(labels.get(s, "") for s in cfg.get("source_labels") or [])
        replacement = as_str(cfg.get("replacement", "$1"))
        if action == "keep":
            if not rx.fullmatch(val):
                return None
        elif action == "drop":
            if rx.fullmatch(val):
                return None
        elif action == "replace":
            m = rx.fullmatch(val)
            if m:
                target = prom_expand(m, as_str(cfg.get("target_label")))
                res = prom_expand(m, replacement)
                if res:
                    labels[target] = res
                else:
                    labels.pop(target, None)
        elif action == "labelmap":
            for k, v in list(labels.items()):
                m = rx.fullmatch(k)
                if m:
                    labels[prom_expand(m, replacement)] = v
        elif action == "labeldrop":
            labels = {k: v for k, v in labels.items() if not rx.fullmatch(k)}
        elif action == "labelkeep":
            labels = {k: v for k, v in labels.items() if rx.fullmatch(k)}
        else:
            raise ValueError("relabel action %r is not simulated here" % action)
    return labels


def pod_sd_targets(doc, namespace=POD_NS):
    """What Prometheus's kubernetes_sd_configs (role pod) finds for a running pod of the
    Deployment: a target per declared container port (per container without ports), with the
    __meta_kubernetes_pod_* labels relabelling sees."""
    tmpl = dig(doc.data, "spec", "template", default={}) or {}
    meta = tmpl.get("metadata") or {}
    common = {"__meta_kubernetes_namespace": namespace, "__meta_kubernetes_pod_name": "%s-0" % doc.name,
              "__meta_kubernetes_pod_ip": POD_IP, "__meta_kubernetes_pod_phase": "Running",
              "__meta_kubernetes_pod_ready": "true"}
    for kind, values in (("annotation", meta.get("annotations")), ("label", meta.get("labels"))):
        for k, v in (values or {}).items():
            s = SD_LABEL.sub("_", str(k))
            common["__meta_kubernetes_pod_%s_%s" % (kind, s)] = as_str(v)
            common["__meta_kubernetes_pod_%spresent_%s" % (kind, s)] = "true"
    out = []
    for c in dig(tmpl, "spec", "containers", default=[]) or []:
        for p in c.get("ports") or [None]:
            t = dict(common, __meta_kubernetes_pod_container_name=as_str(c.get("name")))
            if p is None:
                t["__address__"] = POD_IP
            else:
                t["__address__"] = "%s:%s" % (POD_IP, p.get("containerPort"))
                t["__meta_kubernetes_pod_container_port_number"] = as_str(p.get("containerPort"))
                t["__meta_kubernetes_pod_container_port_name"] = as_str(p.get("name"))
                t["__meta_kubernetes_pod_container_port_protocol"] = as_str(p.get("protocol", "TCP"))
            out.append(t)
    return out


def prom_scrapes(pcfg, doc, namespace=POD_NS):
    """The URLs, as {(scheme, address, path)}, that a Prometheus with config pcfg scrapes on a
    pod of the Deployment (its role-pod jobs; an empty set when none keeps the pod)."""
    out = set()
    for job in (pcfg or {}).get("scrape_configs") or []:
        sds = [sd for sd in job.get("kubernetes_sd_configs") or [] if sd.get("role") == "pod"]
        if not sds or not any(dig(sd, "namespaces", "names") is None
                              or namespace in (dig(sd, "namespaces", "names") or []) for sd in sds):
            continue
        for t in pod_sd_targets(doc, namespace):
            t = dict(t, job=as_str(job.get("job_name")), __scheme__=as_str(job.get("scheme", "http")),
                     __metrics_path__=as_str(job.get("metrics_path", APP_METRICS_PATH)))
            res = prom_relabel(t, job.get("relabel_configs"))
            if res is not None and res.get("__address__"):
                out.add((res.get("__scheme__"), res["__address__"], res.get("__metrics_path__")))
    return out


def resolve_service_host(host, namespace=POD_NS):
    """(name, namespace) of the Service a pod in `namespace` reaches at `host`, or None when the
    name is not a cluster Service name (`svc`, `svc.ns`, `svc.ns.svc[.cluster.local]`)."""
    parts = (host or "").split(".")
    if len(parts) == 1 and parts[0]:
        return parts[0], namespace
    if len(parts) >= 2 and parts[2:] in ([], ["svc"], ["svc", "cluster", "local"]):
        return parts[0], parts[1]
    return None


def service_targets(svc, deps, port):
    """The container ports (numbers) Service `svc`'s port `port` reaches on the Deployments it
    selects, as [(Deployment, container, number)]."""
    sp = next((p for p in dig(svc.data, "spec", "ports", default=[]) or [] if p.get("port") == port), None)
    if sp is None:
        return None, []
    sel = dig(svc.data, "spec", "selector", default={}) or {}
    tp = sp.get("targetPort", port)
    out = []
    for d in deps:
        if (d.namespace or POD_NS) != (svc.namespace or POD_NS) or not sel or not all(
                dig(d.data, "spec", "template", "metadata", "labels", k) == v for k, v in sel.items()):
            continue
        for c in dig(d.data, "spec", "template", "spec", "containers", default=[]) or []:
            for cp in c.get("ports") or []:
                if tp in (cp.get("containerPort"), cp.get("name")):
                    out.append((d, c, cp.get("containerPort")))
    return sp, out


def check_telemetry(root, docs, overlays, g):
    """k8s/monitoring does for the k8s/mesh and k8s/sidecar overlays what compose's observability
    profile does: its Prometheus scrapes every meshed pod's admin port (docker/prometheus.yml's
    targets; with sidecars, the sidecar's), the meshed containers (the workloads, or their
    sidecars, and the gateway) send spans to its Jaeger's OTLP receiver, and meshd's dashboard is
    published. The plain base (k8s/) keeps productpage's own /metrics on 9080 and no mesh
    telemetry."""
    mon = [d for d in docs if d.rel.startswith("k8s/monitoring/")]
    mon_deps = [d for d in mon if d.kind == "Deployment"]
    cm = next((d for d in mon if d.kind == "ConfigMap" and d.name == "prometheus"), None)
    try:
        pcfg = yaml.safe_load(dig(cm.data, "data", "prometheus.yml", default="")) if cm else None
    except yaml.YAMLError:
        pcfg = None  # reported by the monitoring group
    if not g.check(isinstance(pcfg, dict) and pcfg.get("scrape_configs"),
                   "k8s/monitoring: no usable prometheus.yml in ConfigMap prometheus, nothing is scraped"):
        pcfg = {}

    def scrapes(d):
        try:
            return prom_scrapes(pcfg, d, doc_ns(d))
        except (ValueError, re.error, AttributeError, TypeError) as e:
            g.fail("%s: cannot follow k8s/monitoring's Prometheus config on its pods: %s" % (d.where(), e))
            return None

    def url(s):
        return "%s://%s%s" % s

    # The plain base: Prometheus finds productpage's own metrics at :9080/metrics, and only
    # there; no Deployment carries mesh telemetry.
    base_deps = [d for d in docs if d.kind == "Deployment" and d.rel.count("/") == 1]
    for d in base_deps:
        ann = dig(d.data, "spec", "template", "metadata", "annotations", default={}) or {}
        app = dig(d.data, "spec", "template", "metadata", "labels", "app")
        want = {("http", "%s:%d" % (POD_IP, APP_PORT), APP_METRICS_PATH)} if app == "productpage" else set()
        if app == "productpage" or ann.get("prometheus.io/scrape") is not None:
            got = scrapes(d)
            g.check(got is None or got == want or (app != "productpage" and not got),
                    "%s: k8s/monitoring's Prometheus scrapes its pods at %s, expected %s (only productpage "
                    "serves metrics of its own; k8s/ stays plain)" % (d.where(), sorted(map(url, got or [])) or "nothing",
                                                    sorted(map(url, want)) or "nothing"))
        for c in dig(d.data, "spec", "template", "spec", "containers", default=[]) or []:
            otel = sorted(e.get("name") for e in c.get("env") or [] if str(e.get("name")).startswith("OTEL_"))
            g.check(not otel, "%s: container %s sets %s; k8s/ stays plain (tracing is mesh mode's, in "
                    "k8s/%s)" % (d.where(), c.get("name"), otel, MESH_DIR))

    for mesh in overlays:
        if mesh.kust is not None:
            check_overlay_telemetry(root, mesh, mon, mon_deps, pcfg, scrapes, url, g)


def check_overlay_telemetry(root, mesh, mon, mon_deps, pcfg, scrapes, url, g):
    # The overlay as kubectl renders it (as merged here without kubectl).
    odocs = mesh.rendered if mesh.rendered is not None else mesh.deployed()
    odeps = [d for d in odocs if d.kind == "Deployment"]
    meshed = {}
    for d in odeps:
        for c in dig(d.data, "spec", "template", "spec", "containers", default=[]) or []:
            if "MESH_CONTROL_PLANE" in container_env(c):
                meshed[d.name] = (d, c)
    want_meshed = sorted(set(COMPOSE_TO_DEPLOYMENT.values()) | {GATEWAY})
    g.check(sorted(meshed) == want_meshed, "k8s/%s: meshed Deployments %s, expected %s"
            % (mesh.dir, sorted(meshed), want_meshed))

    # Metrics: the prometheus.io annotations name the admin port, and k8s/monitoring's
    # Prometheus, following them, scrapes exactly <pod>:15021/stats/prometheus.
    want_ann = {"prometheus.io/scrape": "true", "prometheus.io/port": str(ADMIN_PORT),
                "prometheus.io/path": MESH_METRICS_PATH}
    k8s_scraped = {}
    for name, (d, c) in sorted(meshed.items()):
        w = d.where()
        ann = dig(d.data, "spec", "template", "metadata", "annotations", default={}) or {}
        got_ann = {k: as_str(ann.get(k)) if k in ann else None for k in want_ann}
        g.check(got_ann == want_ann, "%s: pod template annotations must be %r (Istio metrics on the admin "
                "port), are %r" % (w, want_ann, got_ann))
        cports = {p.get("containerPort"): p.get("name") for p in c.get("ports") or []}
        g.check(cports.get(ADMIN_PORT) == "admin", "%s: container %s must declare containerPort %d named admin "
                "(the scraped port), has %r" % (w, c.get("name"), ADMIN_PORT, cports))
        got = scrapes(d)
        want = {("http", "%s:%d" % (POD_IP, ADMIN_PORT), MESH_METRICS_PATH)}
        if got is not None:
            g.check(got == want, "%s: k8s/monitoring's Prometheus scrapes its pods at %s, expected %s"
                    % (w, sorted(map(url, got)) or "nothing", sorted(map(url, want))))
            if len(got) == 1:
                scheme, addr, path = next(iter(got))
                k8s_scraped[name] = (addr.rpartition(":")[2] if ":" in addr else "(none)", path)

    # ... as compose's Prometheus does (docker/prometheus.yml: <service>:15021/stats/prometheus).
    try:
        ccfg = yaml.safe_load((root / COMPOSE_PROMETHEUS).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        ccfg = {}
        g.fail("%s: cannot load: %s" % (COMPOSE_PROMETHEUS, e))
    compose_scraped = {}
    to_dep = dict(COMPOSE_TO_DEPLOYMENT, **{GATEWAY: GATEWAY})
    for job in ccfg.get("scrape_configs") or []:
        for sc in job.get("static_configs") or []:
            for target in sc.get("targets") or []:
                host, _, port = str(target).rpartition(":")
                if host in to_dep:
                    compose_scraped[to_dep[host]] = (port, as_str(job.get("metrics_path", APP_METRICS_PATH)))
    g.check(sorted(compose_scraped) == want_meshed, "%s: scrapes %s, expected every meshed workload %s"
            % (COMPOSE_PROMETHEUS, sorted(compose_scraped), want_meshed))
    for name in sorted(set(compose_scraped) & set(meshed)):
        g.check(k8s_scraped.get(name) == compose_scraped[name],
                "%s: scraped on port, path %r in k8s, %r in %s" % (meshed[name][0].where(), k8s_scraped.get(name),
                                                                  compose_scraped[name], COMPOSE_PROMETHEUS))

    # Traces: the endpoint tracing.rs reads resolves, from the app's namespace, to a Service of
    # k8s/monitoring whose port reaches Jaeger's OTLP receiver for the protocol in use.
    for name, (d, c) in sorted(meshed.items()):
        cw = "%s: container %s" % (d.where(), c.get("name"))
        env = container_env(c)
        var = next((v for v in OTLP_ENDPOINT_VARS if env.get(v)), OTLP_ENDPOINT_VARS[-1])
        endpoint = env.get(var) or ""
        proto = env.get(OTLP_PROTOCOL_VAR) or OTLP_DEFAULT_PROTOCOL
        if not g.check(proto in JAEGER_OTLP, "%s: %s=%r, tracing.rs supports %s" % (
                cw, OTLP_PROTOCOL_VAR, proto, sorted(JAEGER_OTLP))):
            continue
        if not g.check(endpoint, "%s: %s must be set: spans go to k8s/monitoring's Jaeger, as compose's to "
                       "its jaeger" % (cw, OTLP_ENDPOINT_VARS[-1])):
            continue
        u = re.fullmatch(r"(\w+)://([^/:]+)(?::(\d+))?(/.*)?", endpoint)
        if not g.check(u and u.group(1) == "http" and u.group(3),
                       "%s: %s=%r must be http://<service>.<namespace>:<port> (the collector has no TLS)"
                       % (cw, var, endpoint)):
            continue
        host, port, path = u.group(2), int(u.group(3)), u.group(4) or ""
        g.check(path in ("", "/") or (proto == "http/protobuf" and path == "/v1/traces"),
                "%s: %s=%r: unexpected path %r for %s" % (cw, var, endpoint, path, proto))
        ref = resolve_service_host(host, doc_ns(d))
        svc = next((s for s in mon if s.kind == "Service" and ref and (s.name, s.namespace or POD_NS) == ref), None)
        if not g.check(svc is not None, "%s: %s=%r: %s is no Service of k8s/monitoring (from the pod's namespace "
                       "%s; name it <service>.%s)" % (cw, var, endpoint, host, doc_ns(d), ISTIO_NS)):
            continue
        sp, reached = service_targets(svc, mon_deps, port)
        if not g.check(sp is not None, "%s: %s=%r: Service %s.%s has no port %d" % (
                cw, var, endpoint, svc.name, svc.namespace, port)):
            continue
        prefix = "grpc" if proto == "grpc" else "http"
        g.check(str(sp.get("name", "")).split("-")[0] == prefix,
                "%s: %s=%r: port %d of Service %s is named %r, expected %s-* for %s=%s"
                % (cw, var, endpoint, port, svc.name, sp.get("name"), prefix, OTLP_PROTOCOL_VAR, proto))
        default_port, port_env = JAEGER_OTLP[proto]
        ok = []
        for jd, jc, number in reached:
            jenv = container_env(jc)
            moved = re.search(r":(\d+)$", jenv.get(port_env) or "")
            receiver = int(moved.group(1)) if moved else default_port
            ok.append(str(jc.get("image", "")).startswith("jaegertracing/") and number == receiver
                      and jenv.get("COLLECTOR_OTLP_ENABLED", "true") == "true")
        g.check(reached and all(ok), "%s: %s=%r: Service %s port %d reaches %s, expected Jaeger's OTLP %s "
                "receiver (container port %d)" % (cw, var, endpoint, svc.name, port,
                                                  ["%s:%s" % (jd.name, n) for jd, _, n in reached] or "no pod",
                                                  proto, default_port))
        sname = env.get("OTEL_SERVICE_NAME")
        app = GATEWAY if name == GATEWAY else dig(d.data, "spec", "template", "metadata", "labels", "app")
        g.check(sname is None or sname == app, "%s: OTEL_SERVICE_NAME=%r; leave it unset (compose does) or %r"
                % (cw, sname, app))

    # meshd's dashboard: listening (not --dashboard off), and published by Service meshd on the
    # port compose publishes it on (so http://localhost:20001/ after a port-forward).
    md = next((d for d in odeps if d.name == MESHD), None)
    svc = next((d for d in odocs if d.kind == "Service" and d.name == MESHD), None)
    if not g.check(md is not None and svc is not None, "k8s/%s: no Deployment and Service %s" % (mesh.dir, MESHD)):
        return
    mc = container_of(md, MESHD) or {}
    listen = flag_values([as_str(a) for a in mc.get("args") or []]).get("--dashboard") \
        or container_env(mc).get("MESHD_DASHBOARD") or "0.0.0.0:%d" % MESHD_DASHBOARD_PORT
    dport = re.search(r":(\d+)$", listen)
    if not g.check(dport, "%s: the dashboard is off or unparsable (--dashboard %r)" % (md.where(), listen)):
        return
    dport = int(dport.group(1))
    published = [p.get("port") for p in dig(svc.data, "spec", "ports", default=[]) or []
                 if any(n == dport for _, _, n in service_targets(svc, [md], p.get("port"))[1])]
    g.check(published, "%s: no port reaches meshd's dashboard (container port %d)" % (svc.where(), dport))
    try:
        compose = interpolate(yaml.safe_load((root / "docker-compose.yml").read_text())) or {}
    except (OSError, yaml.YAMLError):
        return  # reported by the compose group
    cpub = compose_published(dig(compose, "services", MESHD, default={}) or {})
    g.check(any(int(t) == dport for _, t in cpub if t.isdigit()) and
            any(int(h) in published for h, t in cpub if h.isdigit() and t.isdigit() and int(t) == dport),
            "%s: publishes the dashboard on %s, compose %s publishes %s (host:container)"
            % (svc.where(), published, MESHD, sorted(":".join(p) for p in cpub)))


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="repository root holding k8s/, docker-compose.yml and docker/mesh-tokens (default: this script's repo)")
    ap.add_argument("--k8s-version", default=K8S_VERSION, help="Kubernetes schema version (default %(default)s)")
    ap.add_argument("-v", "--verbose", action="store_true", help="also list the files read")
    args = ap.parse_args()
    root = args.root.resolve()

    groups = {n: Group(n) for n in ("files", "parse", "schema", "istio", "kustomize", "mesh", "sidecar",
                                    "compose", "contract", "monitoring", "telemetry", "mysql")}
    docs, kust = load_docs(root, groups["files"], groups["parse"])
    mesh = load_mesh(root, docs, groups["files"], groups["parse"], groups["mesh"])
    # k8s/sidecar deploys k8s/mesh's own files (../mesh/<file>) and patches the base otherwise.
    sidecar = load_mesh(root, docs, groups["files"], groups["parse"], groups["sidecar"], SIDECAR_DIR, "sidecar",
                        shared=mesh)
    overlays = [(mesh, groups["mesh"]), (sidecar, groups["sidecar"])]
    if args.verbose:
        for rel in sorted({d.rel for o, _ in overlays for d in docs + o.docs + o.patches}):
            print("read %s" % rel)
    # The overlays' own resources and their effective (patched) Deployments and Services get the
    # schema check (a file both overlays deploy, once).
    mysql_docs = check_mysql(root, docs, groups["files"], groups["parse"], groups["mysql"])
    seen, to_check = set(), []
    for d in docs + mysql_docs + [d for o, _ in overlays for d in o.docs] + \
            [d for o, _ in overlays for d in list(o.effective.values()) + list(o.effective_services.values())]:
        if (d.rel, d.index) not in seen:
            seen.add((d.rel, d.index))
            to_check.append(d)
    schema_version = check_schema(to_check, groups["schema"], args.k8s_version)
    check_istio(docs, groups["istio"])
    check_kustomization(root, kust, groups["kustomize"])
    for o, g in overlays:
        check_mesh(root, docs, o, g)
        rendered = check_mesh_render(root, docs, o, g)
        if args.verbose:
            print("kubectl kustomize k8s/%s: %s" % (o.dir, "compared" if rendered else "skipped (no kubectl)"))
    check_compose(root, docs, mesh, groups["compose"])
    check_compose_sidecars(root, sidecar, groups["compose"])
    ran = check_compose_config(root, groups["compose"])
    if args.verbose:
        print("docker-compose config: %s" % ("checked" if ran else "skipped (no docker-compose)"))
    check_contract(docs, groups["contract"])
    check_all_deployments(docs, groups["contract"])
    # The same rules for what each overlay deploys: base app (patched) + meshd & co.
    for o, _ in overlays:
        if o.kust is None:
            continue
        patched = {("Deployment", n): d for n, d in o.effective.items()}
        patched.update({("Service", n): d for n, d in o.effective_services.items()})
        base_app = [d for d in docs if d.rel.count("/") == 1 and not is_istio(d)]
        check_all_deployments([patched.get((d.kind, d.name), d) for d in base_app] + o.docs, groups["contract"],
                              supplied=SUPPLIED)
    check_monitoring(docs, groups["monitoring"])
    check_telemetry(root, docs, [o for o, _ in overlays], groups["telemetry"])

    passed = failed = 0
    for g in groups.values():
        extra = " [Kubernetes %s]" % schema_version if g.name == "schema" and schema_version else ""
        status = "ok  " if not g.failures else "FAIL"
        print("%s %-10s %d passed, %d failed%s" % (status, g.name, g.passed, len(g.failures), extra))
        for msg in g.failures:
            print("     - %s" % msg)
        passed += g.passed
        failed += len(g.failures)
    print("k8s: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
