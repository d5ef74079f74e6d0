#!/usr/bin/env bash
# Follows docs/apps.md's "Writing your own app" steps literally: creates a new
# crate beside a copy of this repository, pastes in docs/apps.md's src/lib.rs
# and its unit test, builds it from scratch (its own target directory: the
# app crate and its three dependencies, as a new user's first build), runs
# it under mr-worker and checks the output against `wc -l`, and runs its
# test. Prints the build's wall time and the plugin's size. Keeps the
# docs/apps.md's instructions true.
#
# usage: scripts/check-custom-app.sh     (after `cargo build --release`)
# Prints "1 passed, 0 failed" or "0 passed, 1 failed".

set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/custom-app.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
fail() { echo "custom app: FAIL: $1"; echo "0 passed, 1 failed"; exit 1; }

# Step 1 puts the new crate beside the framework at ../mapreduce.
ln -s "$ROOT" "$WORK/mapreduce"
cd "$WORK"
cargo new --quiet --lib linecount
cd linecount
# Step 2: docs/apps.md's dependency line, verbatim.
dependency=$(sed -n 's/^   \(mapreduce = .*\)$/\1/p' "$ROOT/docs/apps.md" | head -1)
[ -n "$dependency" ] || fail "docs/apps.md has no step-2 dependency line"
printf '\n[lib]\ncrate-type = ["cdylib"]\n' >> Cargo.toml
sed -i "s|^\[dependencies\]\$|[dependencies]\n$dependency|" Cargo.toml
grep -q '^mapreduce = ' Cargo.toml || fail "could not add the dependency to Cargo.toml"
# The rust snippet of docs/apps.md step N (its heading starts with HEADING),
# unindented: readme_rust N HEADING
readme_rust() {
  python3 - "$ROOT/docs/apps.md" "$1" "$2" <<'PY'
import re, sys
readme, step, heading = open(sys.argv[1], encoding="utf-8").read(), sys.argv[2], sys.argv[3]
m = re.search(re.escape(f"{step}. {heading}") + r".*?```rust\n(.*?)```", readme, re.S)
if not m:
    sys.exit(f"docs/apps.md has no step-{step} rust snippet")
print("\n".join(l[3:] if l.startswith("   ") else l for l in m.group(1).splitlines()))
PY
}
# Step 3: docs/apps.md's code, verbatim; step 5's test after it.
readme_rust 3 'Write `src/lib.rs`' > src/lib.rs || fail "docs/apps.md has no step-3 code"
{ echo; readme_rust 5 'Test it'; } >> src/lib.rs || fail "docs/apps.md has no step-5 test"
# Step 4, from scratch (the registry is warm: the dependencies are
# downloaded, not built).
export CARGO_TARGET_DIR="$WORK/target"
started=$(date +%s.%N)
cargo build --release --quiet 2>&1 || fail "docs/apps.md's app does not build"
PLUGIN="$CARGO_TARGET_DIR/release/liblinecount.so"
echo "custom app: built from scratch in $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s; plugin $(( $(stat -c %s "$PLUGIN") / 1024 )) KiB"
# Step 5.
cargo test --release --quiet > "$WORK/test.log" 2>&1 || { cat "$WORK/test.log"; fail "docs/apps.md's unit test fails"; }
cd "$ROOT"
"$ROOT/scripts/run-job.sh" --workers 2 --output-dir "$WORK/out" "$PLUGIN" inputs/ > "$WORK/job.log" 2>&1 \
  || { cat "$WORK/job.log"; fail "the job with docs/apps.md's app failed"; }
expected=$(for f in inputs/*.txt; do echo "$f $(LC_ALL=C grep -c . "$f")"; done | LC_ALL=C sort)
actual=$(cat "$WORK"/out/mr-out-* | LC_ALL=C sort)
[ "$expected" = "$actual" ] || fail "line counts differ: expected
$expected
got
$actual"
echo "custom app: PASS"
echo "1 passed, 0 failed"
