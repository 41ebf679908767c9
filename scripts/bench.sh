#!/usr/bin/env bash
# Builds a benchmark and the binaries it measures as the images ship them (the `image`
# profile: fat LTO, one codegen unit, statically linked), then runs it:
#
#   scripts/bench.sh sidecar-pair [ROUNDS [REQUESTS_PER_BLOCK [FIXED_RATE_SECONDS]]]
#   scripts/bench.sh page-throughput [ROUNDS [SECONDS_PER_BLOCK [CONNECTIONS]]]
#   scripts/bench.sh mtls-hop [ROUNDS [REQUESTS_PER_ROUND [CONFIGURATION]]]
#
# It shares scripts/build-images.sh's target directory (target/static), so building the images
# and benchmarking them compile once. `cargo run --release -p bench --bin NAME` still works
# for a quicker, less representative build.
set -euo pipefail
cd "$(dirname "$0")/.."

bench=${1:-}
case "$bench" in
  sidecar-pair | page-throughput | mtls-hop | span-cost) shift ;;
  -h | --help)
    echo "usage: $0 sidecar-pair|page-throughput|mtls-hop|span-cost [ARGS...]  (NAME --help: a benchmark's own)"
    exit 0
    ;;
  *)
    echo "usage: $0 sidecar-pair|page-throughput|mtls-hop|span-cost [ARGS...]" >&2
    exit 2
    ;;
esac
target=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/static}
# sidecar-pair runs the mesh-proxy beside its own executable.
RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile image --locked --target "$target" \
  -p bench --bin "$bench" -p mesh-proxy --bin mesh-proxy
exec "$CARGO_TARGET_DIR/$target/image/$bench" "$@"
