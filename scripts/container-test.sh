#!/usr/bin/env bash
# Container test: builds the images offline, starts docker-compose.yml (the app in the mesh, with
# meshd), waits until every container is healthy, checks the app through the published port,
# applies a routing sample through the ingress gateway, turns on STRICT mTLS and checks that plaintext between containers is refused while the page
# still works, stops ratings and checks the degraded page, then removes everything it created
# (containers, network, volume, images).
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
base=http://127.0.0.1:$BOOKINFO_PORT
compose() { docker-compose -p "$project" -f docker-compose.yml "$@"; }
fail() { echo "container test: FAIL: $*" >&2; compose logs --no-color --tail 30 >&2 || true; exit 1; }
checks=0
pass() { checks=$((checks + 1)); echo "  ok: $*"; }
has() { grep -q -- "$1" <<<"$2"; }
count() { { grep -o -- "$1" <<<"$2" || true; } | wc -l; }

cleanup() {
  compose down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
  rm -rf "$MESH_CONFIG_DIR"
  for s in details ratings reviews productpage meshd mesh-proxy; do
    docker rmi "bookinfo-rs/$s:$BOOKINFO_TAG" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

docker info >/dev/null 2>&1 || fail "no Docker engine reachable (docker info failed)"

echo "building images (offline, tag $BOOKINFO_TAG)"
scripts/build-images.sh --offline
for s in details ratings reviews productpage meshd mesh-proxy; do
  size=$(docker image inspect --format '{{.Size}}' "bookinfo-rs/$s:$BOOKINFO_TAG")
  [ "$size" -le 15000000 ] || fail "bookinfo-rs/$s is $size bytes, over the 15 MB budget"
  user=$(docker image inspect --format '{{.Config.User}}' "bookinfo-rs/$s:$BOOKINFO_TAG")
  [ "$user" = "65532:65532" ] || fail "bookinfo-rs/$s runs as '$user', not the non-root 65532"
done
pass "six images under 15 MB, non-root"

echo "starting docker-compose project $project on port $BOOKINFO_PORT"
up_at=$(date +%s)
compose up -d --no-build

# Readiness: every container's own HEALTHCHECK reports healthy.
deadline=$(( $(date +%s) + 120 ))
while :; do
  ids=$(compose ps -q)
  [ "$(echo "$ids" | wc -w)" -eq 8 ] || fail "expected 8 containers, got: $(compose ps)"
  unhealthy=$(docker inspect --format '{{.Name}} {{.State.Health.Status}}' $ids | grep -v ' healthy$' || true)
  [ -z "$unhealthy" ] && break
  [ "$(date +%s)" -lt "$deadline" ] || fail "containers not healthy after 120 s: $unhealthy"
  sleep 1
done
pass "all 8 containers healthy after $(( $(date +%s) - up_at )) s"

page=$(curl -fsS "$base/productpage")
has '<title>Simple Bookstore App</title>' "$page" || fail "no title on the page"
pass "page title"

none=0 black=0 red=0
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

# meshd's dashboard scrapes every workload's metrics: the edges that carried traffic show.
deadline=$(( $(date +%s) + 30 ))
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

# No OTLP endpoint here: each container keeps its recent spans, and the dashboard joins them
# into one trace across the containers.
deadline=$(( $(date +%s) + 30 ))
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

jar=$(mktemp)
curl -fsS -o /dev/null -c "$jar" --data 'username=jason&passwd=password' "$base/login"
page=$(curl -fsS -b "$jar" "$base/productpage")
has 'jason' "$page" && has 'Sign out' "$page" || fail "login as jason not shown"
curl -fsS -o /dev/null -b "$jar" "$base/logout"
rm -f "$jar"
pass "login as jason"

details=$(curl -fsS "$base/api/v1/products/0")
[ "$details" = '{"id": 0, "author": "William Shakespeare", "year": 1595, "type": "paperback", "pages": 200, "publisher": "PublisherA", "language": "English", "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"}' ] ||
  fail "unexpected /api/v1/products/0: $details"
ratings=$(curl -fsS "$base/api/v1/products/0/ratings")
[ "$ratings" = '{"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}' ] || fail "unexpected ratings: $ratings"
status=$(curl -s -o /dev/null -w '%{http_code}' "$base/api/v1/products/abc/reviews")
[ "$status" = 404 ] || fail "/api/v1/products/abc/reviews gave $status"
pass "JSON API"

# Plaintext between containers is accepted under the default PERMISSIVE mode...
details_ip=$(docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(compose ps -q details)")
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$details_ip:9080/details/0" || true)
[ "$code" = 200 ] || fail "plaintext to details under PERMISSIVE gave $code"
# ...and reset under STRICT (curl exit 56), while the mesh's own mTLS calls keep working.
cp mesh-config/security/strict-mtls.yaml "$MESH_CONFIG_DIR/"
chmod 644 "$MESH_CONFIG_DIR/strict-mtls.yaml"
deadline=$(( $(date +%s) + 30 ))
while :; do
  rc=0; curl -s -o /dev/null "http://$details_ip:9080/details/0" || rc=$?
  [ "$rc" -eq 56 ] && break
  [ "$(date +%s)" -lt "$deadline" ] || fail "plaintext to details not reset under STRICT (curl exit $rc)"
  sleep 0.2
done
page=$(curl -fsS "$base/productpage")
has 'Book Details' "$page" && has 'Book Reviews' "$page" || fail "the page lost its backends under STRICT"
pass "STRICT: plaintext between containers reset (curl exit 56), mTLS page intact"
rm -f "$MESH_CONFIG_DIR/strict-mtls.yaml"

# A routing sample applied through meshd's watched directory takes effect at the gateway.
cp mesh-config/routing/virtual-service-all-v1.yaml "$MESH_CONFIG_DIR/"
chmod 644 "$MESH_CONFIG_DIR/virtual-service-all-v1.yaml"
deadline=$(( $(date +%s) + 30 ))
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
rm -f "$MESH_CONFIG_DIR/virtual-service-all-v1.yaml"

compose stop ratings >/dev/null 2>&1
degraded=0
for _ in $(seq 1 6); do
  page=$(curl -fsS "$base/productpage")
  if has 'Ratings service is currently unavailable' "$page"; then degraded=1; break; fi
done
[ "$degraded" -eq 1 ] || fail "no 'Ratings service is currently unavailable' with ratings stopped"
pass "ratings stopped: the page says 'Ratings service is currently unavailable'"

cleanup
trap - EXIT
left=$(docker ps -aq --filter "label=com.docker.compose.project=$project"; docker network ls -q --filter "label=com.docker.compose.project=$project")
[ -z "$left" ] || fail "left behind: $left"
pass "torn down: no containers, networks or images left"

echo "container test: $checks passed, 0 failed in $(( $(date +%s) - started )) s"
