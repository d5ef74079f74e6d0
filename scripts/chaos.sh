#!/usr/bin/env bash
# Chaos test: jobs that must give the exact output while their processes die.
#
# usage: scripts/chaos.sh [--runs N] [--apps "wordcount sort"] [--size MIB]
#                         [--workers N] [--kill-every SECS] [--baseline-runs N]
#                         [--no-shared-dir]
#
# For each app and each run, one job over a generated corpus of SIZE MiB
# (default 512; book text, from ../shared/corpus/gutenberg when it is there)
# runs with WORKERS workers (default 4) while this script
#   - kills a random worker with SIGKILL every SECS seconds (default 2) and
#     starts a new one in its place,
#   - stops another with SIGSTOP for 4 s (longer than the task timeout of
#     3 s, so its tasks are given away) and lets it go on with SIGCONT,
#     again and again,
#   - kills the master with SIGKILL once, at a random point of the map or
#     the reduce phase chosen from its journal, and starts it again on the
#     same address (it resumes the job; the workers reconnect). A job may
#     end between two looks at the journal, before the kill: the summary
#     counts the restarts that happened.
# The output must equal mr-sequential's byte for byte (word count: the
# lines of every mr-out-* sorted; sort: mr-out-0, mr-out-1, ... in order),
# with _SUCCESS written and nothing else left in the output directory. Before the chaos runs
# the same job runs BASELINE (default 3) times without faults, taking turns
# with the first chaos runs, for the slowdown.
#
# With --no-shared-dir, every worker acts as if it shared no filesystem
# with the master (mr-worker --no-shared-dir): map output is served by its
# worker and dies with it, reduce outputs are sent to the master.
#
# A run's time is from the master's start until _SUCCESS is written (the
# outputs are all in place), not until the master exits.
# Prints one line per run and a summary table; exits non-zero if any run
# failed. MR_SKIP_BUILD=1 skips the release build. A failing run keeps its
# work directory.

set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/release"
RUNS=20
APPS="wordcount sort"
SIZE=512
WORKERS=4
KILL_EVERY=2
BASELINE=3
TASK_TIMEOUT=3
STOP_FOR=4
WORKER_FLAGS=()

while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --apps) APPS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --kill-every) KILL_EVERY=$2; shift 2 ;;
    --baseline-runs) BASELINE=$2; shift 2 ;;
    --no-shared-dir) WORKER_FLAGS=(--no-shared-dir); shift ;;
    --help|-h) sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "chaos.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
for n in "$RUNS" "$SIZE" "$WORKERS" "$BASELINE"; do
  case "$n" in ''|*[!0-9]*) echo "chaos.sh: '$n' is not a number" >&2; exit 2 ;; esac
done
[ "$WORKERS" -ge 2 ] || { echo "chaos.sh: --workers must be at least 2" >&2; exit 2; }

cd "$ROOT"
if [ "${MR_SKIP_BUILD:-}" != 1 ]; then
  cargo build --release --quiet
fi
cargo build --release --quiet --example make_corpus

CORPUS="$ROOT/target/chaos-corpus/books-${SIZE}m"
if [ ! -f "$CORPUS/.complete" ]; then
  BOOKS=()
  [ -d "$ROOT/../shared/corpus/gutenberg" ] && BOOKS=(--books "$ROOT/../shared/corpus/gutenberg")
  rm -rf "$CORPUS"
  "$BIN/examples/make_corpus" books "$CORPUS" "$SIZE" 8 ${BOOKS[@]+"${BOOKS[@]}"} > /dev/null
  touch "$CORPUS/.complete"
fi
INPUTS=("$CORPUS"/*.txt)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mr-chaos.XXXXXX")
LIVE_PIDS=()
cleanup() {
  [ ${#LIVE_PIDS[@]} -gt 0 ] && kill -CONT "${LIVE_PIDS[@]}" 2>/dev/null && kill -KILL "${LIVE_PIDS[@]}" 2>/dev/null
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

# Split size and reduces per app: tasks small enough that a killed one
# costs little, many enough that kills land on running ones.
SPLIT=$(( SIZE * 1024 / 64 ))K
master_flags() { # app
  case "$1" in
    wordcount) echo "--reduces 8 --split-size $SPLIT" ;;
    sort) echo "--reduces 16 --split-size $SPLIT" ;;
    *) echo "chaos.sh: no settings for app '$1'" >&2; exit 2 ;;
  esac
}
MAPS=56  # at least this many map tasks: 8 files of 8 splits (a file's last may be 10% over)

# The reference output of an app, in the form compare() makes of a job's.
reference() { # app file
  local dir="$WORK/ref-$1"
  mkdir -p "$dir"
  (cd "$dir" && "$BIN/mr-sequential" -q "$1" "${INPUTS[@]}" 2> seq.log)
  case "$1" in
    wordcount) LC_ALL=C sort "$dir/mr-out-0" > "$2" ;;
    *) mv "$dir/mr-out-0" "$2" ;;
  esac
  rm -rf "$dir"
}

# A job's output in comparable form on stdout.
job_output() { # app outdir reduces
  local files=() r
  for r in $(seq 0 $(($3 - 1))); do files+=("$2/mr-out-$r"); done
  case "$1" in
    wordcount) cat "${files[@]}" | LC_ALL=C sort ;;
    *) cat "${files[@]}" ;;
  esac
}

now() { date +%s.%N; }
plus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a + b }'; }
not_before() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; } # t deadline
journal_count() { # journal record
  if [ -f "$1" ]; then grep -c "^{\"$2\"" "$1" || true; else echo 0; fi
}
# Running (a process that exited but was not waited for yet is a zombie).
alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2> /dev/null) && [ -n "$state" ] && [ "$state" != Z ]
}

# Runs one job; with chaos=1, with faults. Prints "SECONDS KILLS STOPS RESTARTS"
# on success; returns 1 (after saying why on stderr) on failure.
run_job() { # app chaos dir
  local app=$1 chaos=$2 dir=$3
  # Runs in a subshell of its own: leave no process behind, however it ends.
  trap '[ ${#LIVE_PIDS[@]} -gt 0 ] && kill -CONT "${LIVE_PIDS[@]}" 2> /dev/null && kill -KILL "${LIVE_PIDS[@]}" 2> /dev/null' EXIT
  mkdir -p "$dir"
  local flags reduces
  flags=$(master_flags "$app")
  reduces=$(echo "$flags" | awk '{print $2}')
  # --overwrite: a master killed after publishing, before it exited, is
  # started again over its own outputs, and runs the job again.
  local master_args=(--addr-file "$dir/addr" --output-dir "$dir/out" --overwrite --task-timeout "$TASK_TIMEOUT"
    --max-task-attempts 10 --http off -q $flags "${INPUTS[@]}")
  # Far more attempts die here than in real life (every kill takes the
  # running ones with it), so the bound is raised from its default of 4.
  local started master addr
  started=$(now)
  "$BIN/mr-master" --listen 127.0.0.1:0 "${master_args[@]}" > "$dir/master-1.log" 2>&1 &
  master=$!
  LIVE_PIDS=("$master")
  for _ in $(seq 500); do [ -s "$dir/addr" ] && break; sleep 0.01; done
  addr=$(cat "$dir/addr" 2> /dev/null) || { echo "master did not start" >&2; return 1; }
  local workers=() n=0
  start_worker() {
    n=$((n + 1))
    "$BIN/mr-worker" --master "$addr" ${WORKER_FLAGS[@]+"${WORKER_FLAGS[@]}"} "$app" > "$dir/worker-$n.log" 2>&1 &
    workers+=($!)
  }
  for _ in $(seq "$WORKERS"); do start_worker; done
  local kills=0 stops=0 restarts=0
  if [ "$chaos" = 1 ]; then
    local journal="$dir/out/.mr-job/journal" trigger_kind trigger_at
    # The master dies once the journal holds a random number of map_done
    # lines, or (one run in three) of reduce_done lines.
    if [ $((RANDOM % 3)) = 0 ]; then trigger_kind=reduce_done; trigger_at=$((1 + RANDOM % (reduces / 2)));
    else trigger_kind=map_done; trigger_at=$((1 + RANDOM % MAPS)); fi
    local next_kill next_stop stopped="" stopped_until=0 t
    # The first kill and stop come at random within their interval, so
    # that even a job shorter than it sees some.
    next_kill=$(plus "$started" "$(awk -v k="$KILL_EVERY" -v r=$RANDOM 'BEGIN { print k * r / 32768 }')")
    next_stop=$(plus "$started" "$(awk -v r=$RANDOM 'BEGIN { print r / 32768 }')")
    while alive "$master"; do
      sleep 0.05
      t=$(now)
      if [ "$restarts" = 0 ] && [ "$(journal_count "$journal" "$trigger_kind")" -ge "$trigger_at" ]; then
        kill -KILL "$master"; wait "$master" 2> /dev/null || true
        "$BIN/mr-master" --listen "$addr" "${master_args[@]}" > "$dir/master-2.log" 2>&1 &
        master=$!
        restarts=1
      fi
      if [ -n "$stopped" ] && not_before "$t" "$stopped_until"; then
        kill -CONT "$stopped" 2> /dev/null || true
        stopped=""
        next_stop=$(plus "$t" 1)
      elif [ -z "$stopped" ] && not_before "$t" "$next_stop"; then
        stopped=${workers[$((RANDOM % ${#workers[@]}))]}
        if alive "$stopped"; then kill -STOP "$stopped"; stops=$((stops + 1)); stopped_until=$(plus "$t" "$STOP_FOR"); else stopped=""; fi
      fi
      if not_before "$t" "$next_kill"; then
        local i victim
        i=$((RANDOM % ${#workers[@]}))
        victim=${workers[$i]}
        if [ "$victim" != "$stopped" ] && alive "$victim"; then
          kill -KILL "$victim"; wait "$victim" 2> /dev/null || true
          unset "workers[$i]"; workers=("${workers[@]}")
          kills=$((kills + 1))
          start_worker
        fi
        next_kill=$(plus "$t" "$KILL_EVERY")
      fi
      LIVE_PIDS=("$master" "${workers[@]}")
    done
    [ -n "$stopped" ] && kill -CONT "$stopped" 2> /dev/null || true
  fi
  local rc=0
  wait "$master" || rc=$?
  # Workers told the job is over exit at once; one that was stopped at the
  # end finds the master gone and would wait for it.
  sleep 0.5
  kill -KILL "${workers[@]}" 2> /dev/null || true
  wait 2> /dev/null || true
  LIVE_PIDS=()
  local log="$dir/master-$((restarts + 1)).log"
  [ "$rc" = 0 ] || { echo "master exited $rc: $(tail -3 "$log")" >&2; return 1; }
  [ "$restarts" = 0 ] || grep -q "resuming job" "$dir/master-2.log" || { echo "the restarted master did not resume" >&2; return 1; }
  [ -f "$dir/out/_SUCCESS" ] || { echo "_SUCCESS missing" >&2; return 1; }
  # The job's time is until its outputs are published (_SUCCESS written);
  # the master then spends up to a heartbeat and 0.5 s more telling the
  # workers, more when one of them is stopped.
  local elapsed
  elapsed=$(plus "$(date -r "$dir/out/_SUCCESS" +%s.%N)" "-$started")
  local stray
  stray=$(ls -A "$dir/out" | grep -v -e '^mr-out-[0-9]*$' -e '^_SUCCESS$' | tr '\n' ' ' || true)
  [ -z "$stray" ] || { echo "left behind in the output directory: $stray" >&2; return 1; }
  job_output "$app" "$dir/out" "$reduces" | cmp -s - "$WORK/ref-$app.out" || { echo "output differs from mr-sequential's" >&2; return 1; }
  printf '%.2f %d %d %d\n' "$elapsed" "$kills" "$stops" "$restarts"
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2}'; }

FAILED=0
SUMMARY=()
for app in $APPS; do
  reference "$app" "$WORK/ref-$app.out"
  base_times=() chaos_times=() ok=0 total_kills=0 total_stops=0 total_restarts=0
  for i in $(seq 1 "$RUNS"); do
    if [ "$i" -le "$BASELINE" ]; then
      if result=$(run_job "$app" 0 "$WORK/$app-base-$i" 2> "$WORK/$app-base-$i.why"); then
        base_times+=("${result%% *}")
        echo "$app baseline $i: ok in ${result%% *} s"
        rm -rf "$WORK/$app-base-$i"
      else
        echo "$app baseline $i: FAILED: $(cat "$WORK/$app-base-$i.why")"; FAILED=1; KEEP_WORK=1
      fi
    fi
    if result=$(run_job "$app" 1 "$WORK/$app-chaos-$i" 2> "$WORK/$app-chaos-$i.why"); then
      read -r secs kills stops restarts <<< "$result"
      chaos_times+=("$secs"); ok=$((ok + 1))
      total_kills=$((total_kills + kills)); total_stops=$((total_stops + stops)); total_restarts=$((total_restarts + restarts))
      echo "$app chaos $i: ok in $secs s ($kills workers killed, $stops stopped, master restarted $restarts time(s))"
      rm -rf "$WORK/$app-chaos-$i"
    else
      echo "$app chaos $i: FAILED: $(cat "$WORK/$app-chaos-$i.why") (work directory $WORK/$app-chaos-$i)"; FAILED=1; KEEP_WORK=1
    fi
  done
  base=$(printf '%s\n' ${base_times[@]+"${base_times[@]}"} | median)
  with=$(printf '%s\n' ${chaos_times[@]+"${chaos_times[@]}"} | median)
  slowdown=$(awk -v a="$with" -v b="$base" 'BEGIN { if (b > 0 && a == a + 0) printf "%.2f", a / b; else print "n/a" }')
  SUMMARY+=("| $app | $SIZE MiB | $ok of $RUNS | $base | $with | ${slowdown}× | $total_kills | $total_stops | $total_restarts |")
done

echo
echo "Kill every $KILL_EVERY s, $WORKERS workers, task timeout $TASK_TIMEOUT s, stops of $STOP_FOR s."
echo
echo "| app | input | runs identical to mr-sequential | median s to _SUCCESS, no faults | median s to _SUCCESS, chaos | slowdown | workers killed | workers stopped | master restarts |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${SUMMARY[@]}"
[ "$FAILED" = 0 ] || echo "work directory kept: $WORK"
exit "$FAILED"
