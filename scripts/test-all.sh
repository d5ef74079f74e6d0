#!/usr/bin/env bash
# Every test of the project, as CI runs it: build, unit and integration
# tests (the app crate's typed API too), no import cycles between modules, the lab's seven end-to-end
# checks, docs/apps.md's custom app, short chaos runs with and without a
# shared filesystem (workers and the master killed mid-job; exact output),
# a job, then a standing cluster running two jobs, across three network
# namespaces that share nothing but the network (as root; skipped without
# ../shared/tools/netns-cluster.sh), and the Compose cluster across
# containers (images made here; skipped without a Docker engine).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
# Lints (the crate roots warn of unsafe code without a soundness argument
# and of string slicing that a peer's text could make panic): no warnings.
cargo clippy --workspace --all-targets --release --quiet -- -D warnings
cargo build --release
cargo test --release --workspace
# The app crate's optional typed API, which no workspace member turns on.
cargo test --release -p mapreduce-app --features typed
scripts/check-imports.py
MR_SKIP_BUILD=1 scripts/test-mr.sh
scripts/check-custom-app.sh
MR_SKIP_BUILD=1 scripts/chaos.sh --runs 2 --size 256 --kill-every 0.5 --baseline-runs 1
# The same with workers that share no filesystem: a dead worker takes its
# finished maps' outputs with it, across a master restart too. A kill a
# second over 128 MiB: every run still loses served outputs (about 5 to 10
# kills), while a kill every 0.5 s over 256 MiB made sort runs of 2 to 4
# minutes on a slow day (a worker lived less than the reruns took).
MR_SKIP_BUILD=1 scripts/chaos.sh --runs 2 --size 128 --kill-every 1 --baseline-runs 1 --no-shared-dir
scripts/multi-host-test.sh
scripts/multi-host-cluster-test.sh
MR_SKIP_BUILD=1 scripts/compose-test.sh
