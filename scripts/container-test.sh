#!/usr/bin/env bash
# Container test: builds the images offline, then runs docker-compose.yml in two phases with
# the same images:
#   embedded  `docker-compose up`: every app joins the mesh itself (meshd, the gateway);
#   sidecar   `MESH_MODE=sidecar docker-compose --profile sidecar up`: every app on loopback
#             beside a `mesh-proxy sidecar` in its network namespace.
# Each phase waits until every container is healthy (polling, with a deadline), checks the app
# through the gateway's published port (the reviews versions alternate, login, the JSON API,
# meshd's dashboard), applies a routing sample through meshd's watched directory, and turns on
# STRICT mTLS: plaintext between containers is reset while the page still works. The embedded
# phase also stops ratings and checks the degraded page; the sidecar phase checks that the apps'
# 9080 is refused from outside their namespace and that the sidecars' admin port reports mutual
# TLS. Then it removes everything it created (containers, network, volumes, images). Every wait
# has a deadline and every request a timeout, so it ends by itself. After the checks, each
# phase reports every container's idle VmRSS.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
project=bookinfo-test-$$
export BOOKINFO_TAG=test-$$
export BOOKINFO_PORT=${BOOKINFO_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export MESHD_DASHBOARD_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# meshd watches this directory; the containers run as uid 65532, so it must be world-readable.
export MESH_CONFIG_DIR=$(mktemp -d)
chmod 755 "$MESH_CONFIG_DIR"
# The phase under test: embedded (the default) or sidecar, as the apps' MESH_MODE.
export MESH_MODE=embedded
base=http://127.0.0.1:$BOOKINFO_PORT
app_services=(details ratings reviews-v1 reviews-v2 reviews-v3 productpage)
# The phase's compose profiles: none (embedded), then `--profile sidecar`, as a user runs them.
profiles=()
compose() { docker-compose -p "$project" -f docker-compose.yml ${profiles[@]+"${profiles[@]}"} "$@"; }
fail() { echo "container test: FAIL [$MESH_MODE]: $*" >&2; compose logs --no-color --tail 30 >&2 || true; exit 1; }
checks=0
pass() { checks=$((checks + 1)); echo "  ok [$MESH_MODE]: $*"; }
has() { grep -q -- "$1" <<<"$2"; }
count() { { grep -o -- "$1" <<<"$2" || true; } | wc -l; }
# No request may hang the test.
curl() { command curl --max-time 10 "$@"; }
ip_of() { docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(compose ps -q "$1")"; }

# Compose v1 leaves the services of a profile it is not given out of ps and down: name it.
down() { docker-compose -p "$project" -f docker-compose.yml --profile sidecar down --volumes --remove-orphans --timeout 5; }
cleanup() {
  down >/dev/null 2>&1 || true
  rm -rf "$MESH_CONFIG_DIR"
  for s in details ratings reviews productpage meshd mesh-proxy; do
    docker rmi "bookinfo-rs/$s:$BOOKINFO_TAG" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

# Puts a sample into meshd's watched directory, or takes it out.
apply_config() { cp "$1" "$MESH_CONFIG_DIR/"; chmod 644 "$MESH_CONFIG_DIR/$(basename "$1")"; }
remove_config() { rm -f "$MESH_CONFIG_DIR/$(basename "$1")"; }

# Starts the phase's containers (no rebuild: the images are the ones built above).
# expected: meshd, the six apps and the gateway, and in sidecar mode the six sidecars.
up_phase() {
  expected=$1
  echo "starting docker-compose project $project ($MESH_MODE) on port $BOOKINFO_PORT"
  up_at=$(date +%s)
  compose up -d --no-build
}

# Readiness: every container's own HEALTHCHECK reports healthy.
wait_healthy() {
  local deadline=$(( $(date +%s) + 120 )) ids unhealthy
  while :; do
    ids=$(compose ps -q)
    [ "$(echo "$ids" | wc -w)" -eq "$expected" ] || fail "expected $expected containers, got: $(compose ps)"
    unhealthy=$(docker inspect --format '{{.Name}} {{.State.Health.Status}}' $ids | grep -v ' healthy$' || true)
    [ -z "$unhealthy" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || fail "containers not healthy after 120 s: $unhealthy"
    sleep 1
  done
  pass "all $expected containers healthy after $(( $(date +%s) - up_at )) s"
}

check_title() {
  local page
  page=$(curl -fsS "$base/productpage")
  has '<title>Simple Bookstore App</title>' "$page" || fail "no title on the page"
  pass "page title"
}

# The reviews versions alternate: v1 without stars, v2 black, v3 red.
check_stars() {
  local none=0 black=0 red=0 page stars
  for _ in $(seq 1 30); do
    page=$(curl -fsS "$base/productpage")
    stars=$(count 'glyphicon glyphicon-star' "$page")
    if has 'text-red-500"' "$page"; then red=$((red + 1))
    elif [ "$stars" -eq 9 ]; then black=$((black + 1))
    elif [ "$stars" -eq 0 ] && has 'reviews-v1-' "$page"; then none=$((none + 1))
    else fail "unexpected page with $stars stars"; fi
  done
  [ "$none" -gt 0 ] && [ "$black" -gt 0 ] && [ "$red" -gt 0 ] ||
    fail "30 loads gave $none pages without stars, $black black, $red red"
  pass "30 loads: $none without stars, $black black, $red red"
}

# meshd's dashboard scrapes every workload's metrics: the edges that carried traffic show.
check_dashboard_edges() {
  local deadline=$(( $(date +%s) + 30 )) graph edges
  while :; do
    curl -fsS "$base/productpage" >/dev/null
    graph=$(curl -fsS "http://127.0.0.1:$MESHD_DASHBOARD_PORT/api/graph" || true)
    edges=$(python3 -c 'import json,sys; g=json.loads(sys.argv[1] or "{}"); print(" ".join(sorted(e["source"]+">"+e["destination"] for e in g.get("edges",[]) if e.get("requests",0)>0 and e.get("mtls"))))' "$graph")
    case "$edges" in
      *"istio-ingressgateway>productpage-v1"*"productpage-v1>reviews-v2"*"reviews-v2>ratings-v1"*) break ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] || fail "dashboard edges: $edges"
    sleep 1
  done
  pass "dashboard: mTLS edges gateway → productpage → reviews → ratings"
}

# No OTLP endpoint here: each container keeps its recent spans, and the dashboard joins them
# into one trace across the containers.
check_dashboard_trace() {
  local deadline=$(( $(date +%s) + 30 )) traces chain
  while :; do
    curl -fsS "$base/productpage" >/dev/null
    traces=$(curl -fsS "http://127.0.0.1:$MESHD_DASHBOARD_PORT/api/traces" || true)
    chain=$(python3 -c '
import json, sys
t = json.loads(sys.argv[1] or "{}").get("traces", [])
want = ["0:istio-ingressgateway:server", "2:productpage:server", "4:reviews:server", "6:ratings:server"]
full = [x for x in t if all(w in ["%d:%s:%s" % (s["depth"], s["service"], s["kind"]) for s in x["spans"]] for w in want)]
print("ok" if full else "%d traces, none from the gateway to ratings" % len(t))' "$traces")
    [ "$chain" = ok ] && break
    [ "$(date +%s)" -lt "$deadline" ] || fail "dashboard traces: $chain"
    sleep 1
  done
  pass "dashboard: one trace gateway → productpage → reviews → ratings across containers"
}

check_login() {
  local jar page
  jar=$(mktemp)
  curl -fsS -o /dev/null -c "$jar" --data 'username=jason&passwd=password' "$base/login"
  page=$(curl -fsS -b "$jar" "$base/productpage")
  has 'jason' "$page" && has 'Sign out' "$page" || { rm -f "$jar"; fail "login as jason not shown"; }
  curl -fsS -o /dev/null -b "$jar" "$base/logout"
  rm -f "$jar"
  pass "login as jason"
}

check_api() {
  local details ratings status
  details=$(curl -fsS "$base/api/v1/products/0")
  [ "$details" = '{"id": 0, "author": "William Shakespeare", "year": 1595, "type": "paperback", "pages": 200, "publisher": "PublisherA", "language": "English", "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"}' ] ||
    fail "unexpected /api/v1/products/0: $details"
  ratings=$(curl -fsS "$base/api/v1/products/0/ratings")
  [ "$ratings" = '{"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}' ] || fail "unexpected ratings: $ratings"
  status=$(curl -s -o /dev/null -w '%{http_code}' "$base/api/v1/products/abc/reviews")
  [ "$status" = 404 ] || fail "/api/v1/products/abc/reviews gave $status"
  pass "JSON API"
}

# Plaintext from outside the container (this host, over the compose network) to details' mesh
# port (9080 embedded, the sidecar's 15006): accepted under the default PERMISSIVE mode, reset
# under STRICT (curl exit 56), while the mesh's own mTLS calls keep working.
check_strict() {
  local port=$1 ip code rc deadline page
  ip=$(ip_of details)
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://$ip:$port/details/0" || true)
  [ "$code" = 200 ] || fail "plaintext to details:$port under PERMISSIVE gave $code"
  apply_config mesh-config/security/strict-mtls.yaml
  deadline=$(( $(date +%s) + 30 ))
  while :; do
    rc=0; curl -s -o /dev/null "http://$ip:$port/details/0" || rc=$?
    [ "$rc" -eq 56 ] && break
    [ "$(date +%s)" -lt "$deadline" ] || fail "plaintext to details:$port not reset under STRICT (curl exit $rc)"
    sleep 0.2
  done
  page=$(curl -fsS "$base/productpage")
  has 'Book Details' "$page" && has 'Book Reviews' "$page" || fail "the page lost its backends under STRICT"
  pass "STRICT: plaintext to details:$port reset (curl exit 56), mTLS page intact"
  remove_config mesh-config/security/strict-mtls.yaml
}

# A routing sample applied through meshd's watched directory takes effect at the gateway.
check_routing() {
  local deadline=$(( $(date +%s) + 30 )) starred page status
  apply_config mesh-config/routing/virtual-service-all-v1.yaml
  while :; do
    starred=0
    for _ in $(seq 1 10); do
      page=$(curl -fsS "$base/productpage")
      [ "$(count 'glyphicon glyphicon-star' "$page")" -eq 0 ] || starred=$((starred + 1))
    done
    [ "$starred" -eq 0 ] && break
    [ "$(date +%s)" -lt "$deadline" ] || fail "virtual-service-all-v1 never took effect ($starred of 10 starred)"
  done
  status=$(curl -s -o /dev/null -w '%{http_code}' "$base/health")
  [ "$status" = 404 ] || fail "the gateway routed /health ($status)"
  pass "routing: all-v1 through the gateway gives 10 of 10 pages without stars; /health is 404"
  remove_config mesh-config/routing/virtual-service-all-v1.yaml
}

# Sidecar mode: every app's 9080 is on loopback only, so from outside its namespace (this host,
# over the compose network) the port is refused (curl exit 7).
check_loopback_only() {
  local s rc
  for s in "${app_services[@]}"; do
    rc=0; curl -s -o /dev/null "http://$(ip_of "$s"):9080/health" || rc=$?
    [ "$rc" -eq 7 ] || fail "$s:9080 was not refused from outside its namespace (curl exit $rc)"
  done
  pass "9080 of all ${#app_services[@]} apps refused from outside (loopback only)"
}

# Sidecar mode: each sidecar's admin port (in its app's namespace) reports the mTLS it served.
check_sidecar_metrics() {
  local s metrics
  for s in "${app_services[@]}"; do
    metrics=$(curl -fsS "http://$(ip_of "$s"):15021/stats/prometheus") || fail "no metrics on $s-sidecar's 15021"
    has 'connection_security_policy="mutual_tls"' "$metrics" ||
      fail "$s-sidecar's /stats/prometheus has no connection_security_policy=\"mutual_tls\" series"
  done
  pass "/stats/prometheus of all ${#app_services[@]} sidecars (:15021) has connection_security_policy=\"mutual_tls\""
}

# Memory of each container's process after the checks above (no request in flight), reported
# against issue 14's goal of 10 MiB for a meshed service (a figure, not a pass/fail check:
# memory targets are measured, not asserted, like the benchmarks' ones).
report_idle_rss() {
  local report="" over="" service id pid rss
  for service in $(compose ps --services); do
    id=$(compose ps -q "$service")
    [ -n "$id" ] || continue
    pid=$(docker inspect --format '{{.State.Pid}}' "$id")
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
    report="$report $service=$((rss / 1024)).$(( (rss % 1024) * 10 / 1024 ))MiB"
    if [ "$rss" -gt 10240 ]; then over="$over $service"; fi
  done
  echo "  idle VmRSS [$MESH_MODE]:$report (over 10 MiB:${over:- none})"
}

docker info >/dev/null 2>&1 || fail "no Docker engine reachable (docker info failed)"

echo "building images (offline, tag $BOOKINFO_TAG)"
scripts/build-images.sh --offline
for s in details ratings reviews productpage meshd mesh-proxy; do
  size=$(docker image inspect --format '{{.Size}}' "bookinfo-rs/$s:$BOOKINFO_TAG")
  [ "$size" -le 20000000 ] || fail "bookinfo-rs/$s is $size bytes, over the 20 MB budget"
  user=$(docker image inspect --format '{{.Config.User}}' "bookinfo-rs/$s:$BOOKINFO_TAG")
  [ "$user" = "65532:65532" ] || fail "bookinfo-rs/$s runs as '$user', not the non-root 65532"
done
pass "six images under 20 MB, non-root"

# --- embedded: the apps join the mesh themselves ---
phase_at=$(date +%s)
up_phase 8
wait_healthy
check_title
check_stars
check_dashboard_edges
check_dashboard_trace
check_login
check_api
check_strict 9080
check_routing
report_idle_rss

compose stop ratings >/dev/null 2>&1
degraded=0
for _ in $(seq 1 6); do
  page=$(curl -fsS "$base/productpage")
  if has 'Ratings service is currently unavailable' "$page"; then degraded=1; break; fi
done
[ "$degraded" -eq 1 ] || fail "no 'Ratings service is currently unavailable' with ratings stopped"
pass "ratings stopped: the page says 'Ratings service is currently unavailable'"
echo "embedded phase: $(( $(date +%s) - phase_at )) s"

# --- sidecar: the same images, each app beside a mesh-proxy sidecar ---
down >/dev/null 2>&1
left=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
[ -z "$left" ] || fail "embedded containers left before the sidecar phase: $left"
export MESH_MODE=sidecar
profiles=(--profile sidecar)
phase_at=$(date +%s)
up_phase 14
wait_healthy
check_title
check_stars
check_sidecar_metrics
check_loopback_only
check_dashboard_edges
check_dashboard_trace
check_login
check_api
check_strict 15006
check_routing
report_idle_rss
echo "sidecar phase: $(( $(date +%s) - phase_at )) s"

cleanup
trap - EXIT
left=$(docker ps -aq --filter "label=com.docker.compose.project=$project"; docker network ls -q --filter "label=com.docker.compose.project=$project")
[ -z "$left" ] || fail "left behind: $left"
pass "torn down: no containers, networks or images left"

echo "container test: $checks passed, 0 failed in $(( $(date +%s) - started )) s"
