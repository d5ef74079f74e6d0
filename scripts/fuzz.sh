#!/usr/bin/env bash
# Fuzz-style run of the property tests of every decoder of bytes from the
# network or disk: the handshake (net/handshake.rs), file requests and
# answers (net/files.rs), upload frames and their header (net/upload.rs),
# run files (data/runfile.rs) and the coordinator's journal
# (control/journal.rs). `cargo test` runs a few thousand cases of each;
# this runs CASES (default 50,000) of each, with fresh random seeds,
# and prints each module's time and cases per second. A failure prints the
# minimal failing input proptest found, and the script exits non-zero.
#
#   scripts/fuzz.sh [CASES]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CASES=${1:-50000}
cd "$ROOT"
# Build once, quietly, then run each module's properties on their own.
cargo test --release --quiet -p mapreduce --lib --no-run
status=0
for module in net::handshake net::files net::upload data::runfile control::journal; do
  start=$(date +%s.%N)
  if ! PROPTEST_CASES=$CASES cargo test --release -p mapreduce --lib -- "$module::tests::properties" >"/tmp/fuzz-$$.log" 2>&1; then
    status=1
    cat "/tmp/fuzz-$$.log"
  fi
  tests=$(grep -oE '^test .* ok$' "/tmp/fuzz-$$.log" | wc -l || true)
  end=$(date +%s.%N)
  awk -v m="$module" -v t="$tests" -v c="$CASES" -v s="$start" -v e="$end" \
    'BEGIN { d = e - s; printf "%-16s %2d properties x %d cases: %7.1f s, %9.0f cases/s\n", m, t, c, d, t * c / d }'
done
rm -f "/tmp/fuzz-$$.log"
exit $status
