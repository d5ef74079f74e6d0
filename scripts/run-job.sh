#!/usr/bin/env bash
# Run a whole MapReduce job on this machine: one mr-master and N local
# mr-workers, with the binaries from target/release.
#
# usage: scripts/run-job.sh [--workers N] [--output-dir DIR] [MASTER-FLAG...] APP INPUT...
#   --workers N       local workers to start (default 3)
#   --output-dir DIR  where mr-out-* go (default: out/)
#   other flags before APP go to mr-master (e.g. --reduces 4, --task-timeout 5)
#   APP               plugin name (wordcount, indexer, ...) or path to a .so
#
# The master listens on a free port; workers find it through an address
# file. The master shows progress while the job runs and prints its status
# page's URL and, at the end, the job summary. Exits with the master's
# status; prints where the output is.

set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/release"
WORKERS=3
OUTPUT_DIR=out
MASTER_FLAGS=()

while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS=$2; shift 2 ;;
    --workers=*) WORKERS=${1#*=}; shift ;;
    --output-dir) OUTPUT_DIR=$2; shift 2 ;;
    --output-dir=*) OUTPUT_DIR=${1#*=}; shift ;;
    --help|-h) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --*=*) MASTER_FLAGS+=("$1"); shift ;;
    # mr-master's flags that take no value
    --no-combine|--quiet|-q|--overwrite|--fresh|--no-tls) MASTER_FLAGS+=("$1"); shift ;;
    --*) MASTER_FLAGS+=("$1" "$2"); shift 2 ;;
    *) break ;;
  esac
done
if [ $# -lt 2 ]; then
  echo "usage: scripts/run-job.sh [--workers N] [--output-dir DIR] [MASTER-FLAG...] APP INPUT..." >&2
  exit 2
fi
case "$WORKERS" in ''|*[!0-9]*|0) echo "run-job.sh: --workers must be a positive number, not '$WORKERS'" >&2; exit 2 ;; esac
APP=$1
shift
for b in mr-master mr-worker; do
  [ -x "$BIN/$b" ] || { echo "run-job.sh: $BIN/$b is missing: run 'cargo build --release' first" >&2; exit 2; }
done

ADDR_FILE=$(mktemp -u "${TMPDIR:-/tmp}/mr-addr.XXXXXX")
PIDS=()
cleanup() {
  [ ${#PIDS[@]} -gt 0 ] && kill "${PIDS[@]}" 2>/dev/null
  rm -f "$ADDR_FILE"
}
trap cleanup EXIT

"$BIN/mr-master" --listen 127.0.0.1:0 --addr-file "$ADDR_FILE" --output-dir "$OUTPUT_DIR" \
  ${MASTER_FLAGS[@]+"${MASTER_FLAGS[@]}"} "$@" &
MASTER=$!
for _ in $(seq 200); do
  [ -s "$ADDR_FILE" ] && break
  kill -0 $MASTER 2>/dev/null || break
  sleep 0.01
done
if [ ! -s "$ADDR_FILE" ]; then
  wait $MASTER || exit $?
  exit 1
fi
for _ in $(seq "$WORKERS"); do
  "$BIN/mr-worker" --master "$(cat "$ADDR_FILE")" "$APP" &
  PIDS+=($!)
done
status=0
wait $MASTER || status=$?
# Workers exit on their own once told the job is over.
for pid in "${PIDS[@]}"; do wait "$pid" || true; done
PIDS=()
if [ $status -eq 0 ]; then
  echo "done: output in $OUTPUT_DIR/mr-out-*"
fi
exit $status
