#!/usr/bin/env bash
# run-local.sh starts a buildfleet scheduler and one local worker on this machine, with embedded
# storage under ./buildfleet-data, and prints the Bazel and Pants settings to use. Ctrl-C (or
# SIGTERM) drains the worker and stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-bin}"
DATA="${BUILDFLEET_DATA:-$PWD/buildfleet-data}"
LISTEN="${BUILDFLEET_LISTEN:-127.0.0.1:8980}"
METRICS="${BUILDFLEET_METRICS_LISTEN:-127.0.0.1:9090}"
mkdir -p "$DATA"

# Pants' __pants_wrapper__ writes its append-only caches under this path on the worker; it must
# match remote_execution_append_only_caches_base_path in pants.toml, which the scheduler's banner
# prints. It stays under $DATA like everything else of this script (a fleet's workers use
# /toolchain/caches, Pants' default).
CACHES="${BUILDFLEET_APPEND_ONLY_CACHES_BASE_PATH:-$DATA/caches}"
mkdir -p "$CACHES"

pids=()
cleanup() {
  trap - INT TERM EXIT
  # Workers first, so they drain while the scheduler is still there to take their results.
  for ((i=${#pids[@]}-1; i>=0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
}
trap cleanup INT TERM EXIT

# Each process gets its own session, so Ctrl-C reaches only this script, which stops the worker
# first (it drains while the scheduler can still take its results) and the scheduler last.
setsid "$BIN/scheduler" --listen="$LISTEN" --metrics-listen="$METRICS" --storage-dir="$DATA/scheduler" \
  --workers-append-only-caches-base-path="$CACHES" &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://$METRICS/healthz" >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "scheduler failed to start" >&2; exit 1; }
  sleep 0.1
done

setsid "$BIN/worker" --scheduler="grpc://$LISTEN" --cloud=none \
  --cache-directory="$DATA/worker-cache" --append-only-caches-base-path="$CACHES" \
  --worker-id="local-$(hostname)" &
pids+=($!)
echo "buildfleet: scheduler on $LISTEN, web console http://$METRICS/console/ (metrics http://$METRICS/metrics), one local worker; Ctrl-C stops both" >&2
wait -n "${pids[@]}"
