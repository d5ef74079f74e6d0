#!/usr/bin/env bash
# The cost of watching a job: the same word count job with the status
# server off and on (and the progress log either way), alternating, N runs
# each; prints every run, then the medians and the median paired difference.
#
# usage: scripts/bench-status.sh [--runs N] INPUT...
#   (the benchmark corpora are in target/bench-corpus/ once scripts/bench.sh
#   has run, e.g. target/bench-corpus/books-1024m-64)

set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=5
if [ "${1:-}" = "--runs" ]; then RUNS=$2; shift 2; fi
[ $# -gt 0 ] || { echo "usage: scripts/bench-status.sh [--runs N] INPUT..." >&2; exit 2; }
OUT=$(mktemp -d "${TMPDIR:-/tmp}/mr-bench-status.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

run() {
  local start end
  rm -rf "$OUT/job"
  start=$(date +%s%N)
  "$ROOT/scripts/run-job.sh" --workers 2 --output-dir "$OUT/job" --quiet --http "$1" wordcount "${@:2}" > /dev/null 2>&1
  end=$(date +%s%N)
  echo $(( (end - start) / 1000000 ))
}

: > "$OUT/times"
for i in $(seq "$RUNS"); do
  off=$(run off "$@")
  on=$(run 127.0.0.1:0 "$@")
  echo "run $i: --http off ${off} ms, --http on ${on} ms"
  echo "$off $on" >> "$OUT/times"
done
python3 - "$OUT/times" <<'PY'
import statistics, sys
pairs = [tuple(map(int, line.split())) for line in open(sys.argv[1])]
off, on = [p[0] for p in pairs], [p[1] for p in pairs]
diff = statistics.median(b - a for a, b in pairs)
print(f"median: off {statistics.median(off):.0f} ms, on {statistics.median(on):.0f} ms; "
      f"median paired difference {diff:+.0f} ms ({100 * diff / statistics.median(off):+.1f}%)")
PY
