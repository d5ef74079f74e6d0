#!/usr/bin/env bash
# Every test of the project, as CI runs it: build, unit and integration
# tests, the lab's seven end-to-end checks, and the README's custom app.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
cargo test --release --workspace
MR_SKIP_BUILD=1 scripts/test-mr.sh
scripts/check-custom-app.sh
