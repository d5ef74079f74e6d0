#!/usr/bin/env bash
# The MIT 6.5840 MapReduce lab's test-mr.sh, for this framework: seven checks
# of mr-master + mr-worker against the mr-sequential reference.
#
# usage: scripts/test-mr.sh [INPUT...]
#   INPUT defaults to the project's inputs/*.txt. Set MR_SKIP_BUILD=1 to use
#   the binaries already in target/release without running cargo, and
#   MR_CHECKS="wc crash" (say) to run only some checks. On failure the work
#   directory is kept and its path printed.
#
# Every process runs under `timeout` and is killed when the script exits;
# each master listens on a free port (127.0.0.1:0) and its workers read the
# address from its --addr-file, so several runs can go on at once.
# Prints each check's verdict and a closing "N passed, N failed" line; exits
# non-zero if any check failed.

set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/release"
if [ "${MR_SKIP_BUILD:-0}" != 1 ]; then
  (cd "$ROOT" && cargo build --release --quiet) || { echo "build failed"; exit 1; }
fi

if [ $# -gt 0 ]; then
  INPUTS=("$@")
else
  INPUTS=("$ROOT"/inputs/*.txt)
fi
NINPUTS=${#INPUTS[@]}

PASSED=0
FAILED=0
WORK=$(mktemp -d "${TMPDIR:-/tmp}/test-mr.XXXXXX")
# Everything this script starts is its child; kill them all on the way out.
cleanup() {
  local pids
  pids=$(jobs -p)
  [ -n "$pids" ] && kill $pids 2>/dev/null
  wait 2>/dev/null
  if [ "$FAILED" -eq 0 ]; then rm -rf "$WORK"; else echo "work dir kept for inspection: $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A job that takes longer than this is a failure, not a slow machine.
JOB_TIMEOUT=${MR_JOB_TIMEOUT:-240}
T="timeout -k 5 $JOB_TIMEOUT"

pass() { echo "--- $1: PASS"; PASSED=$((PASSED + 1)); }
fail() {
  echo "--- $1: FAIL: $2"
  FAILED=$((FAILED + 1))
  if [ -n "${3:-}" ] && [ -d "$3" ]; then
    echo "    logs in $3:"
    for f in "$3"/*.log; do [ -f "$f" ] && { echo "    == $f"; tail -n 5 "$f" | sed 's/^/       /'; }; done
  fi
}

# Starts a master in the current directory with the given app's inputs;
# sets MASTER_PID and MASTER_ADDR. Extra master flags come first.
start_master() {
  rm -f addr
  $T "$BIN/mr-master" --listen 127.0.0.1:0 --addr-file addr "$@" "${INPUTS[@]}" > master.out 2> master.log &
  MASTER_PID=$!
  for _ in $(seq 100); do
    [ -s addr ] && break
    sleep 0.1
  done
  MASTER_ADDR=$(cat addr 2>/dev/null)
  [ -n "$MASTER_ADDR" ]
}

# Starts a worker; appends its pid to WORKER_PIDS. One slot, as the lab's
# worker runs one task at a time (the parallelism checks count processes).
start_worker() { # app log
  MR_MASTER=$MASTER_ADDR $T "$BIN/mr-worker" --slots 1 "$1" 2>> "$2" &
  WORKER_PIDS+=($!)
}

# Runs a whole job: a master and N workers of APP; returns the master's
# status after every worker has exited too.
run_job() { # app workers
  start_master || { echo "master did not start"; return 1; }
  local i
  for i in $(seq "$2"); do start_worker "$1" "worker$i.log"; done
  local status=0
  wait $MASTER_PID || status=$?
  wait
  [ $status -eq 0 ] || echo "master exited $status"
  return $status
}

# The reference output of an app, sorted, in $1.
reference() { # app out
  (mkdir -p ref && cd ref && $T "$BIN/mr-sequential" -q "$1" "${INPUTS[@]}" 2> seq.log && LC_ALL=C sort mr-out-0 > "../$2" && rm mr-out-0)
}

# Checks that every output file is key-sorted, that the job marked them
# with _SUCCESS, and that nothing but the outputs (and the test's own
# files) was left behind.
outputs_are_clean() { # reduces
  local r
  [ -f _SUCCESS ] || { echo "_SUCCESS missing"; return 1; }
  for r in $(seq 0 $(($1 - 1))); do
    [ -f "mr-out-$r" ] || { echo "mr-out-$r missing"; return 1; }
    cut -d' ' -f1 "mr-out-$r" | LC_ALL=C sort -c -u 2> /dev/null || { echo "mr-out-$r not sorted by key"; return 1; }
  done
  local stray
  stray=$(ls -A | grep -v -E '^(mr-out-[0-9]+|_SUCCESS|addr|master\.(out|log)|worker.*\.log|ref|mr-correct.*|mr-.*-all.*|mr-worker-jobcount-.*|mr-done)$')
  [ -z "$stray" ] || { echo "left behind: $stray"; return 1; }
}

fresh_dir() {
  WORKER_PIDS=()
  cd "$WORK" && rm -rf "$1" && mkdir "$1" && cd "$1"
}

# --- 1. word count ----------------------------------------------------------
check_wc() {
  local name="wc" dir="$WORK/wc"
  fresh_dir wc
  reference wordcount mr-correct-wc.txt || { fail $name "mr-sequential failed" "$dir"; return; }
  local why
  why=$(run_job wordcount 3) || { fail $name "$why" "$dir"; return; }
  LC_ALL=C sort mr-out-* | grep . > mr-wc-all
  cmp -s mr-wc-all mr-correct-wc.txt || { fail $name "output differs from mr-sequential" "$dir"; return; }
  why=$(outputs_are_clean 10) || { fail $name "$why" "$dir"; return; }
  pass $name
}

# --- 2. indexer --------------------------------------------------------------
check_indexer() {
  local name="indexer" dir="$WORK/indexer"
  fresh_dir indexer
  reference indexer mr-correct-indexer.txt || { fail $name "mr-sequential failed" "$dir"; return; }
  local why
  why=$(run_job indexer 2) || { fail $name "$why" "$dir"; return; }
  LC_ALL=C sort mr-out-* | grep . > mr-indexer-all
  cmp -s mr-indexer-all mr-correct-indexer.txt || { fail $name "output differs from mr-sequential" "$dir"; return; }
  pass $name
}

# --- 3. map parallelism ------------------------------------------------------
check_map_parallelism() {
  local name="map parallelism" dir="$WORK/mtiming"
  fresh_dir mtiming
  local why
  why=$(run_job mtiming 2) || { fail "$name" "$why" "$dir"; return; }
  local nt
  nt=$(cat mr-out* | grep -c '^times-')
  [ "$nt" -eq 2 ] || { fail "$name" "saw $nt workers rather than 2" "$dir"; return; }
  nt=$(cat mr-out* | grep -c '^parallel.* 2')
  [ "$nt" -ge 1 ] || { fail "$name" "map workers did not run in parallel" "$dir"; return; }
  pass "$name"
}

# --- 4. reduce parallelism ---------------------------------------------------
check_reduce_parallelism() {
  local name="reduce parallelism" dir="$WORK/rtiming"
  fresh_dir rtiming
  local why
  why=$(run_job rtiming 2) || { fail "$name" "$why" "$dir"; return; }
  local nt
  nt=$(cat mr-out* | grep -c '^[a-z] 2')
  [ "$nt" -ge 2 ] || { fail "$name" "too few parallel reduces ($nt)" "$dir"; return; }
  pass "$name"
}

# --- 5. job count ------------------------------------------------------------
check_job_count() {
  local name="job count" dir="$WORK/jobcount"
  fresh_dir jobcount
  local why
  why=$(run_job jobcount 4) || { fail "$name" "$why" "$dir"; return; }
  local nt
  nt=$(cat mr-out* | awk '{print $2}')
  [ "$nt" = "$NINPUTS" ] || { fail "$name" "map jobs ran $nt times rather than $NINPUTS" "$dir"; return; }
  pass "$name"
}

# --- 6. early exit -----------------------------------------------------------
# No process may exit before the outputs are final: the outputs seen when the
# first process exits must equal those seen when all have.
check_early_exit() {
  local name="early exit" dir="$WORK/early_exit"
  fresh_dir early_exit
  reference early_exit mr-correct-early-exit.txt || { fail "$name" "mr-sequential failed" "$dir"; return; }
  start_master || { fail "$name" "master did not start" "$dir"; return; }
  for i in 1 2 3; do start_worker early_exit "worker$i.log"; done
  # Name the pids: a bare `wait -n` may report a process of an earlier check.
  wait -n $MASTER_PID "${WORKER_PIDS[@]}"
  LC_ALL=C sort mr-out* 2>/dev/null | grep . > mr-wc-all-initial
  wait
  LC_ALL=C sort mr-out* | grep . > mr-wc-all-final
  cmp -s mr-wc-all-initial mr-wc-all-final || { fail "$name" "output changed after the first process exited" "$dir"; return; }
  cmp -s mr-wc-all-final mr-correct-early-exit.txt || { fail "$name" "output differs from mr-sequential" "$dir"; return; }
  pass "$name"
}

# --- 7. crash ----------------------------------------------------------------
# Workers exit or stall at random; restarted workers keep joining until the
# master is done. The output must still be exactly nocrash's.
check_crash() {
  local name="crash" dir="$WORK/crash"
  fresh_dir crash
  reference nocrash mr-correct-crash.txt || { fail $name "mr-sequential failed" "$dir"; return; }
  rm -f mr-done
  # crash ends a third of all attempts by killing its worker, by design, so
  # a task ends unsuccessfully four times in a row in about one job of five:
  # the default bound of 4 attempts would stop the job. The lab's
  # coordinator retries without bound; allow far more attempts than this
  # app's bad luck needs ((1/3)^30 per task).
  start_master --max-task-attempts 30 || { fail $name "master did not start" "$dir"; return; }
  start_worker crash worker0.log
  for i in 1 2 3; do
    ( while [ ! -f mr-done ]; do
        MR_MASTER=$MASTER_ADDR $T "$BIN/mr-worker" --slots 1 --connect-timeout 1 crash 2>> "worker$i.log"
        sleep 1
      done ) &
  done
  wait $MASTER_PID
  local status=$?
  touch mr-done
  wait
  [ $status -eq 0 ] || { fail $name "master exited $status" "$dir"; return; }
  LC_ALL=C sort mr-out* | grep . > mr-crash-all
  cmp -s mr-crash-all mr-correct-crash.txt || { fail $name "output differs from mr-sequential (nocrash)" "$dir"; return; }
  local why
  why=$(outputs_are_clean 10) || { fail $name "$why" "$dir"; return; }
  pass $name
}

echo "*** test-mr: $NINPUTS inputs, work dir $WORK"
CHECKS=${MR_CHECKS:-"wc indexer map_parallelism reduce_parallelism job_count early_exit crash"}
for check in $CHECKS; do
  "check_$check"
done
echo "$PASSED passed, $FAILED failed"
[ $FAILED -eq 0 ]
