#!/usr/bin/env bash
# The Compose cluster (compose.yaml) tested across containers, as a user runs
# it: builds the images (scripts/docker-build.sh), brings up the coordinator,
# 3 workers and SeaweedFS on a private network under a project name of its
# own, and submits jobs from this host with `mr`:
#
#   1. word count and the indexer over inputs in the coordinator's /data,
#      and word count over the same inputs on s3://: each equals mr-sequential;
#   2. a slow job (the test app slowcount, shipped to the cluster as a path:
#      workers fetch it) during which one worker is killed (docker kill),
#      another cut off (docker network disconnect) and the coordinator
#      restarted (compose restart): it resumes and equals mr-sequential;
#   3. `compose stop` drains a worker (SIGTERM): it exits 0;
#   4. `down -v` leaves no container, network or volume of the project.
#
# Skips with one line when no Docker engine answers. Every step is bounded in
# time; whatever happens, the project is taken down on exit.
# Environment: MR_SKIP_BUILD=1 (binaries already built), MR_KEEP_COMPOSE_TEST=1
# (keep the work directory).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
say() { echo "compose-test: $*"; }
fail() { say "FAILED: $*"; exit 1; }

command -v python3 > /dev/null || fail "python3 is needed (ports, inputs, the S3 client)"
if ! command -v docker > /dev/null || ! timeout 20 docker info > /dev/null 2>&1; then
  say "skipped: no Docker engine answers (docker info)"
  exit 0
fi
if docker compose version > /dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose > /dev/null; then
  COMPOSE=(docker-compose)
else
  say "skipped: neither 'docker compose' nor docker-compose is installed"
  exit 0
fi

if [ "$(id -u)" != 0 ] && ! docker image inspect mapreduce-base:bookworm > /dev/null 2>&1; then
  say "skipped: the base image is made with debootstrap, which needs root"
  exit 0
fi
scripts/docker-build.sh
BIN=$ROOT/target/release
work=$(mktemp -d /var/tmp/mr-compose-test.XXXXXX)
project=mrtest$$
# Three distinct free ports, held open together while they are picked.
ports=$(python3 -c '
import socket
held = [socket.socket() for _ in range(3)]
for s in held: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))') || fail "cannot find free ports"
read -r MR_PORT MR_HTTP_PORT MR_S3_PORT <<< "$ports"
export MR_COMPOSE_SECRETS=$work/secrets MR_PORT MR_HTTP_PORT MR_S3_PORT
# A loaded 2-core test machine must not keep tasks from the workers.
export MR_MAX_LOAD_PER_CORE=off MR_MIN_FREE_MEMORY=0 MR_MIN_FREE_DISK=0
compose() { timeout "${TIMEOUT:-120}" "${COMPOSE[@]}" -p "$project" -f "$ROOT/compose.yaml" "$@"; }
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    compose logs --no-color --tail=40 > "$work/compose.log" 2>&1 || true
    tail -60 "$work/compose.log" | sed 's/^/  | /'
  fi
  compose down -v --timeout 5 > /dev/null 2>&1 || true
  if [ "${MR_KEEP_COMPOSE_TEST:-0}" = 1 ] || [ $rc -ne 0 ]; then say "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

scripts/compose-secrets.sh "$MR_COMPOSE_SECRETS" > /dev/null
compose up -d --scale worker=3 > "$work/up.log" 2>&1 || { cat "$work/up.log"; fail "compose up"; }
mr() { timeout "${TIMEOUT:-120}" "$BIN/mr" --master "127.0.0.1:$MR_PORT" --token-file "$MR_COMPOSE_SECRETS/token" "$@"; }
for _ in $(seq 120); do
  "$BIN/mr" health --http "127.0.0.1:$MR_HTTP_PORT" > /dev/null 2>&1 && break
  sleep 0.5
done
"$BIN/mr" health --http "127.0.0.1:$MR_HTTP_PORT" > /dev/null || fail "the coordinator's status page never answered"
for _ in $(seq 120); do
  [ "$(mr workers --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 3 ] && break
  sleep 0.5
done
[ "$(mr workers --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 3 ] || fail "3 workers never joined"
say "up: coordinator, 3 workers, SeaweedFS (project $project)"

# Inputs: 24 files of invented prose, in the coordinator's /data and on s3://.
python3 - "$work/in" << 'PY'
import os, random, sys
out = sys.argv[1]; os.makedirs(out)
rng = random.Random(21)
words = ["river", "stone", "Øre", "light", "über", "quiet", "north", "garden", "летопись", "a", "the", "of"]
for i in range(24):
    with open(os.path.join(out, f"part-{i:02}.txt"), "w") as f:
        for _ in range(400):
            f.write(" ".join(rng.choice(words) + rng.choice(["", "s", "ing"]) for _ in range(12)) + "\n")
PY
coordinator=$(compose ps -q coordinator)
docker cp "$work/in" "$coordinator:/data/in"
docker cp "$BIN/libslowcount.so" "$coordinator:/data/libslowcount.so"
(
  set -a
  . "$MR_COMPOSE_SECRETS/s3.env"
  set +a
  export AWS_ENDPOINT_URL=http://127.0.0.1:$MR_S3_PORT AWS_REGION=us-east-1
  for _ in $(seq 60); do python3 scripts/s3-check.py mb inputs > /dev/null 2>&1 && break; sleep 1; done
  python3 scripts/s3-check.py mb inputs > /dev/null
  for f in "$work"/in/*; do python3 scripts/s3-check.py put "inputs/books/$(basename "$f")" "$f" > /dev/null; done
)

# reference APP OUT [FLAGS...]: mr-sequential over the local copy, sorted,
# its inputs named as the cluster names them (the indexer writes the names).
reference() {
  local app=$1 out=$2
  shift 2
  "$BIN/mr-sequential" -q --output-dir "$work/ref-$out" "$@" "$app" "$work/in" > /dev/null
  sed "s#$work/in/#/data/in/#g" "$work/ref-$out/mr-out-0" | LC_ALL=C sort > "$work/ref-$out.sorted"
}
# check_output OUT REFERENCE: the job's outputs in the coordinator's /data/OUT, sorted, equal the reference's.
check_output() {
  local out=$1 ref=$2
  rm -rf "$work/got-$out"
  docker cp "$(compose ps -q coordinator):/data/$out" "$work/got-$out"
  [ -f "$work/got-$out/_SUCCESS" ] || fail "$out: no _SUCCESS"
  cat "$work/got-$out"/mr-out-* | LC_ALL=C sort > "$work/got-$out.sorted"
  cmp -s "$work/got-$out.sorted" "$work/ref-$ref.sorted" || fail "$out differs from mr-sequential's output (see $work)"
}

# 1. Three jobs, one over s3://.
wc=$(mr submit --app wordcount --reduces 3 --output-dir /data/out-wc /data/in)
ix=$(mr submit --app indexer --reduces 2 --output-dir /data/out-ix /data/in)
s3=$(mr submit --app wordcount --reduces 2 --split-size 16K --output-dir /data/out-s3 s3://inputs/books/)
for id in "$wc" "$ix" "$s3"; do
  mr wait "$id" > "$work/wait-$id.log" 2>&1 || { cat "$work/wait-$id.log"; fail "$id did not succeed"; }
done
reference wordcount wc
reference indexer ix
check_output out-wc wc
check_output out-ix ix
check_output out-s3 wc
say "3 jobs (one over s3://) equal mr-sequential's outputs"

# 2. A slow job through a killed worker, a cut-off worker and a coordinator restart.
slow=$(mr submit --app /data/libslowcount.so --param delay_ms=400 --split-size 0 --reduces 2 --output-dir /data/out-slow /data/in)
maps_done() { mr status "$slow" --json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("progress", {}).get("maps_done", 0))'; }
for _ in $(seq 120); do [ "$(maps_done)" -ge 2 ] && break; sleep 0.25; done
[ "$(maps_done)" -ge 2 ] || fail "the slow job made no progress"
workers=($(compose ps -q worker))
docker kill "${workers[0]}" > /dev/null
docker network disconnect "${project}_default" "${workers[1]}"
say "killed worker ${workers[0]:0:12}, cut off worker ${workers[1]:0:12}"
for _ in $(seq 120); do [ "$(maps_done)" -ge 8 ] && break; sleep 0.25; done
state=$(mr status "$slow" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])') || fail "mr status $slow failed"
[ "$state" = running ] || fail "the slow job was $state, not running, when the coordinator was to be restarted"
compose restart coordinator > /dev/null 2>&1
say "restarted the coordinator mid-job"
mr wait "$slow" > "$work/wait-slow.log" 2>&1 || { cat "$work/wait-slow.log"; fail "the slow job did not succeed"; }
reference "$BIN/libslowcount.so" slow
check_output out-slow slow
say "the slow job survived a killed worker, a cut-off worker and a coordinator restart"

# 3. A worker drains on SIGTERM (compose stop) and exits 0.
TIMEOUT=150 compose stop worker > /dev/null 2>&1
code=$(docker inspect -f '{{.State.ExitCode}}' "${workers[2]}")
[ "$code" = 0 ] || fail "a worker stopped by compose stop exited with $code"
say "compose stop drained the workers (exit 0)"

# 4. Nothing left behind.
compose down -v --timeout 10 > /dev/null 2>&1
left=$(docker ps -a -q --filter "label=com.docker.compose.project=$project"; docker network ls -q --filter "label=com.docker.compose.project=$project"; docker volume ls -q --filter "label=com.docker.compose.project=$project")
[ -z "$left" ] || fail "down -v left: $left"
say "passed"
