#!/usr/bin/env bash
# Word count over the same books read from a local S3 server (SeaweedFS,
# scripts/s3-server.sh) and from local files, taking turns, with a master
# and 2 workers on this machine; prints each run and the medians' ratio.
#
#   scripts/bench-s3.sh [--runs N] [--size MIB] [--files N]
#
# The corpus is ../shared/corpus/gutenberg repeated to SIZE MiB (default
# 256) in FILES files (default 16); outputs go to local directories and are
# checked equal. Needs a release build (cargo build --release).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release
RUNS=3 SIZE=256 FILES=16
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --files) FILES=$2; shift 2 ;;
    *) echo "usage: scripts/bench-s3.sh [--runs N] [--size MIB] [--files N]" >&2; exit 2 ;;
  esac
done
BOOKS=$ROOT/../shared/corpus/gutenberg
[ -d "$BOOKS" ] || { echo "bench-s3.sh: $BOOKS is missing" >&2; exit 1; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mr-bench-s3.XXXXXX")
cleanup() { "$ROOT/scripts/s3-server.sh" stop "$WORK/s3" > /dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

mkdir -p "$WORK/data" "$WORK/s3"
per_file=$((SIZE * 1024 * 1024 / FILES))
for i in $(seq 0 $((FILES - 1))); do
  while [ "$(stat -c %s "$WORK/data/part-$i.txt" 2> /dev/null || echo 0)" -lt "$per_file" ]; do
    cat "$BOOKS"/*.txt >> "$WORK/data/part-$i.txt"
  done
  truncate -s "$per_file" "$WORK/data/part-$i.txt"
done
"$ROOT/scripts/s3-server.sh" start "$WORK/s3" > /dev/null
# shellcheck disable=SC1091
. "$WORK/s3/env"
python3 "$ROOT/scripts/s3-check.py" mb bench
for f in "$WORK"/data/*.txt; do python3 "$ROOT/scripts/s3-check.py" put "bench/data/$(basename "$f")" "$f"; done

run() { # label input...
  local out=$WORK/out-$1 addr start end
  shift
  rm -rf "$out" "$WORK/addr"
  start=$(date +%s.%N)
  "$BIN/mr-master" --listen 127.0.0.1:0 --addr-file "$WORK/addr" --output-dir "$out" --http off -q "$@" > /dev/null &
  local master=$!
  while [ ! -s "$WORK/addr" ]; do sleep 0.01; done
  addr=$(cat "$WORK/addr")
  "$BIN/mr-worker" --master "$addr" wordcount > /dev/null 2>&1 &
  "$BIN/mr-worker" --master "$addr" wordcount > /dev/null 2>&1 &
  wait
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

local_times=() s3_times=()
for r in $(seq "$RUNS"); do
  l=$(run local "$WORK"/data/*.txt); local_times+=("$l")
  s=$(run s3 s3://bench/data); s3_times+=("$s")
  cmp <(cat "$WORK"/out-local/mr-out-* | LC_ALL=C sort) <(cat "$WORK"/out-s3/mr-out-* | LC_ALL=C sort) > /dev/null \
    || { echo "bench-s3.sh: the outputs differ" >&2; exit 1; }
  echo "run $r: local files $l s, S3 $s s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ml=$(median "${local_times[@]}") ms=$(median "${s3_times[@]}")
echo "word count, $SIZE MiB in $FILES files, 2 workers: local files median $ml s, S3 median $ms s, ratio $(echo "scale=2; $ms / $ml" | bc)x"
