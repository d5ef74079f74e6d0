#!/usr/bin/env bash
# The standing cluster across three hosts that share nothing but the
# network (issue 19), made with ../shared/tools/netns-cluster.sh as in
# scripts/multi-host-test.sh: each host a network namespace, each process
# with empty private /srv/mr and /tmp.
#
#   host 0: mr-master --serve, with the inputs (in its private /srv/mr/in)
#   hosts 1 and 2: long-lived workers (no app; they fetch each job's)
#   host 1 also runs the `mr` client, which names paths on host 0
#
# Two jobs (wordcount and indexer) are submitted at once and run side by
# side; each output must equal mr-sequential's. Then the workers drain on
# SIGTERM (exit 0) and the cluster stops.
#
# usage: scripts/multi-host-cluster-test.sh     (as root; skips without the tool)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/target/release"
TOOL="$ROOT/../shared/tools/netns-cluster.sh"

skip() { echo "multi-host cluster test: skipped ($*)"; exit 0; }
[[ -x "$TOOL" ]] || skip "$TOOL not found"
[[ $EUID -eq 0 ]] || skip "network namespaces need root"
command -v ip >/dev/null && command -v unshare >/dev/null || skip "needs iproute2 and unshare"
for b in mr-master mr-worker mr mr-sequential libwordcount.so libindexer.so; do
  [[ -e "$BIN/$b" ]] || { echo "multi-host cluster test: $BIN/$b missing; run cargo build --release" >&2; exit 1; }
done
case "$ROOT/" in
  /tmp/*) echo "multi-host cluster test: the checkout $ROOT is under /tmp, which each namespace host replaces: clone it elsewhere" >&2; exit 1 ;;
esac

NAME="mrcl$$"
WORK="$(mktemp -d "$ROOT/target/mr-multi-host-cluster.XXXXXX")"
cleanup() {
  touch "$WORK/done" 2>/dev/null || true
  "$TOOL" down "$NAME" 2>/dev/null || true
  if [[ "${MR_KEEP:-0}" == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
fail() {
  echo "multi-host cluster test: FAIL: $*" >&2
  for log in "$WORK"/*.log; do echo "--- $log" >&2; tail -n 30 "$log" >&2; done
  exit 1
}
wait_for() {
  local deadline=$((SECONDS + $2))
  until eval "$1"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

mapfile -t HOSTS < <("$TOOL" up "$NAME" 3)
IP=()
for line in "${HOSTS[@]}"; do IP+=("${line#* }"); done
CLUSTER="${IP[0]}:7878"

mkdir -p "$WORK/src" "$WORK/result"
python3 - "$WORK/src" <<'EOF'
import random, sys
rng = random.Random(19)
# Letters only: word count's words are runs of letters.
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(300)]
words += ["émigré", "Ωmega", "naïve"]
for f in range(8):
    with open(f"{sys.argv[1]}/part-{f}.txt", "w") as out:
        for _ in range(3000):
            out.write(" ".join(rng.choice(words) for _ in range(8)) + "\n")
EOF
head -c 32 /dev/urandom | base64 >"$WORK/token"
chmod 600 "$WORK/token"

# The references, with the inputs named as the cluster names them.
"$TOOL" exec "$NAME-1" --private /srv/mr --private /tmp -- timeout 120 bash -c '
  set -eu
  mkdir -p /srv/mr/in && cp "$1"/src/*.txt /srv/mr/in/
  for app in wordcount indexer; do "$2/mr-sequential" -q --output-dir "$1/ref-$app" "$app" /srv/mr/in/*.txt >/dev/null; done
' _ "$WORK" "$BIN" 2>"$WORK/reference.log" || fail "the reference runs failed"

# The cluster: its inputs and state in host 0's private /srv/mr; once told
# (the file done), it stops and its outputs are copied out.
"$TOOL" exec "$NAME-0" --private /srv/mr --private /tmp -- timeout 180 bash -c '
  set -u
  mkdir -p /srv/mr/in && cp "$1"/src/*.txt /srv/mr/in/
  "$2/mr-master" --serve --listen "$3" --token-file "$1/token" --state-dir /srv/mr/state --addr-file "$1/addr" --http off \
    --max-load-per-core off --min-free-disk 0 --min-free-memory 0 >"$1/cluster.out" &
  cluster=$!
  until [[ -e "$1/done" ]]; do sleep 0.1; done
  kill -TERM "$cluster"
  wait "$cluster"
  status=$?
  cp -r /srv/mr/out-wordcount /srv/mr/out-indexer "$1/result/" 2>/dev/null
  exit $status' _ "$WORK" "$BIN" "$CLUSTER" 2>"$WORK/cluster.log" &
CLUSTER_PID=$!
wait_for "[[ -s '$WORK/addr' ]]" 20 || fail "the cluster did not start"

WORKERS=()
for h in 1 2; do
  "$TOOL" exec "$NAME-$h" --private /srv/mr --private /tmp -- timeout 150 \
    "$BIN/mr-worker" --master "$CLUSTER" --token-file "$WORK/token" --slots 2 2>"$WORK/worker$h.log" &
  WORKERS+=($!)
done

mr() { "$TOOL" exec "$NAME-1" -- timeout 120 "$BIN/mr" --master "$CLUSTER" --token-file "$WORK/token" "$@"; }
IDS=()
for app in wordcount indexer; do
  IDS+=("$(mr submit --app "$app" --output-dir "/srv/mr/out-$app" --reduces 3 '/srv/mr/in/*.txt' 2>>"$WORK/mr.log")") ||
    fail "submitting $app failed"
done
echo "multi-host cluster test: submitted ${IDS[*]} from host 1"
for id in "${IDS[@]}"; do
  mr wait "$id" >>"$WORK/mr.log" 2>&1 || fail "$id did not succeed"
done
mr workers >"$WORK/workers.txt" 2>>"$WORK/mr.log" || fail "mr workers failed"
[[ $(grep -c "takes tasks" "$WORK/workers.txt") -ge 2 ]] || fail "mr workers does not list both workers: $(cat "$WORK/workers.txt")"
[[ $(grep -o "attempt started .*worker=[^ ]*" "$WORK/cluster.log" | grep -o "worker=[^ ]*" | sort -u | wc -l) -ge 2 ]] ||
  fail "the tasks did not run on both hosts' workers"
echo "multi-host cluster test: both jobs succeeded, their tasks on the workers of hosts 1 and 2"

# `timeout` passes the signal on to the worker.
for pid in "${WORKERS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
for pid in "${WORKERS[@]}"; do wait "$pid" || fail "a worker did not drain and exit 0"; done
touch "$WORK/done"
wait "$CLUSTER_PID" || fail "the cluster did not stop cleanly"
for app in wordcount indexer; do
  diff <(sort "$WORK/ref-$app/mr-out-0") <(cat "$WORK/result/out-$app"/mr-out-* | sort) >/dev/null ||
    fail "$app's output differs from mr-sequential's"
done
echo "multi-host cluster test: outputs identical to mr-sequential's; workers drained"
echo "multi-host cluster test: PASS"
