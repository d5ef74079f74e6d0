#!/usr/bin/env bash
# Benchmarks against the anchors in ../shared/anchors, side by side in one run;
# writes BENCHMARKS.md. Options go to scripts/bench.py (--runs N, --cases LIST;
# see its --help).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ANCHORS="$ROOT/../shared/anchors"
if [ ! -d "$ANCHORS/wc-limit" ]; then
  echo "bench: $ANCHORS/wc-limit not found: the benchmark needs the shared anchors beside the project" >&2
  exit 1
fi
cd "$ROOT"
cargo build --release --quiet
cargo build --release --quiet --example make_corpus
# The anchor is built in its own folder (for its .cargo/config.toml), into our target/.
(cd "$ANCHORS/wc-limit" && CARGO_TARGET_DIR="$ROOT/target/anchors" cargo build --release --quiet)
exec python3 "$ROOT/scripts/bench.py" "$@"
