#!/usr/bin/env bash
# Builds the images bookinfo-rs/{details,ratings,reviews,productpage,meshd,mesh-proxy}:$BOOKINFO_TAG.
#
#   scripts/build-images.sh            from source with docker/Dockerfile (pulls rust:1-bookworm)
#   scripts/build-images.sh --offline  static binaries built on this host, packaged by
#                                      docker/Dockerfile.prebuilt: nothing is pulled
#
# Both give FROM-scratch images with the same final stages.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${BOOKINFO_TAG:-latest}
services=(details ratings reviews productpage meshd mesh-proxy)

case "${1:-}" in
  --offline)
    target=$(rustc -vV | sed -n 's/^host: //p')
    # A target dir of its own: crt-static binaries share nothing with the host build, and
    # this keeps it from waiting on another cargo's lock.
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/static}
    RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile image --locked --target "$target" \
      -p details -p ratings -p reviews -p productpage -p mesh-proxy -p meshd $(printf -- '--bin %s ' "${services[@]}")
    context=$(mktemp -d)
    trap 'rm -rf "$context"' EXIT
    for s in "${services[@]}"; do
      cp "$CARGO_TARGET_DIR/$target/image/$s" "$context/"
    done
    mkdir "$context/meshd-state"
    for s in "${services[@]}"; do
      docker build --quiet -f docker/Dockerfile.prebuilt --target "$s" -t "bookinfo-rs/$s:$tag" "$context" >/dev/null
    done
    ;;
  "")
    for s in "${services[@]}"; do
      docker build -f docker/Dockerfile --target "$s" -t "bookinfo-rs/$s:$tag" .
    done
    ;;
  *)
    echo "usage: $0 [--offline]" >&2
    exit 2
    ;;
esac

for s in "${services[@]}"; do
  docker image inspect --format "bookinfo-rs/$s:$tag {{.Size}}" "bookinfo-rs/$s:$tag" |
    awk '{ printf "%-36s %5.1f MB\n", $1, $2 / 1e6 }'
done
