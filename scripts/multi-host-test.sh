#!/usr/bin/env bash
# A job across three hosts that share nothing but the network (issue 9),
# made with ../shared/tools/netns-cluster.sh: each host is a network
# namespace, and each process gets empty private directories (tmpfs) for
# /srv/mr and /tmp, so no host sees another's files.
#
#   host 0: mr-master, with the inputs (copied into its private /srv/mr/in)
#   host 1: a worker        host 2: a worker, cut off mid-reduce
#
# Checks, in one job:
#   - a worker with the wrong secret is refused, with a line on both sides;
#   - an unauthenticated process (no secret; then forged bytes without a
#     handshake) gets nothing and changes nothing;
#   - a worker with another app than the job's (--app) is refused; the
#     workers run without an app of their own, fetching the job's;
#   - host 2 is cut off from the network once it has finished maps and
#     started a reduce: the job still finishes, its output is identical to
#     mr-sequential's, and the summary lists host 2's maps as run again;
#   - then a sort job, whose app samples inputs the workers do not have,
#     gives the sorted input.
#
# usage: scripts/multi-host-test.sh     (as root; skips without the tool)
# Leaves nothing behind: the cluster is taken down and the temporary
# directory removed on any exit (MR_KEEP=1 keeps the directory).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/target/release"
TOOL="$ROOT/../shared/tools/netns-cluster.sh"

skip() { echo "multi-host test: skipped ($*)"; exit 0; }
[[ -x "$TOOL" ]] || skip "$TOOL not found"
[[ $EUID -eq 0 ]] || skip "network namespaces need root"
command -v ip >/dev/null && command -v unshare >/dev/null || skip "needs iproute2 and unshare"
for b in mr-master mr-worker mr-sequential libslowcount.so libwordcount.so; do
  [[ -e "$BIN/$b" ]] || { echo "multi-host test: $BIN/$b missing; run cargo build --release" >&2; exit 1; }
done

# Every host has a private /tmp: a checkout there is out of their sight.
case "$ROOT/" in
  /tmp/*) echo "multi-host test: the checkout $ROOT is under /tmp, which each namespace host replaces with a private one: clone it elsewhere to run this test" >&2; exit 1 ;;
esac

NAME="mrhost$$"
# Outside /tmp, which every host has a private one of.
WORK="$(mktemp -d "$ROOT/target/mr-multi-host.XXXXXX")"
cleanup() {
  "$TOOL" down "$NAME" 2>/dev/null || true
  if [[ "${MR_KEEP:-0}" == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
fail() {
  echo "multi-host test: FAIL: $*" >&2
  for log in "$WORK"/*.log; do echo "--- $log" >&2; tail -n 30 "$log" >&2; done
  exit 1
}
# Waits up to $2 seconds for the command $1 (a string) to succeed.
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
MASTER="${IP[0]}:7878"

# Inputs: six files of a small vocabulary, so reduces (150 ms a key) last.
mkdir -p "$WORK/src" "$WORK/result"
python3 - "$WORK/src" <<'EOF'
import random, sys
rng = random.Random(9)
words = [f"w{i:02d}" for i in range(48)] + ["émigré", "Ωmega", "naïve"]
for f in range(6):
    with open(f"{sys.argv[1]}/part-{f}.txt", "w") as out:
        for _ in range(400):
            out.write(" ".join(rng.choice(words) for _ in range(8)) + "\n")
EOF
head -c 32 /dev/urandom | base64 >"$WORK/token"
head -c 32 /dev/urandom | base64 >"$WORK/wrong-token"
chmod 600 "$WORK/token" "$WORK/wrong-token"
"$BIN/mr-sequential" -q --output-dir "$WORK/reference" wordcount "$WORK"/src/*.txt >/dev/null

# The master copies the inputs into its private directory and its outputs
# back out when it is done: the harness's only way to see them.
"$TOOL" exec "$NAME-0" --private /srv/mr --private /tmp -- timeout 120 bash -c '
  set -u
  mkdir -p /srv/mr/in && cp "$1"/src/*.txt /srv/mr/in/
  "$2/mr-master" --listen "$3" --token-file "$1/token" --addr-file "$1/addr" --reduces 4 --task-timeout 2 \
    --output-dir /srv/mr/out --summary-json /srv/mr/summary.json --http off -q --app slowcount \
    --param delay_ms=300 --param reduce_delay_ms=150 /srv/mr/in/*.txt >"$1/master.out"
  status=$?
  cp /srv/mr/out/mr-out-* /srv/mr/summary.json "$1/result/" 2>/dev/null
  exit $status' _ "$WORK" "$BIN" "$MASTER" 2>"$WORK/master.log" &
MASTER_PID=$!
wait_for "[[ -s '$WORK/addr' ]]" 20 || fail "the master did not start"

# One slot each: host 2 is cut off while its one reduce runs and before
# the other reduces have fetched its maps' output.
worker() { # HOST-INDEX LOG TOKEN-FILE: runs the app the master names (--app)
  "$TOOL" exec "$NAME-$1" --private /srv/mr --private /tmp -- timeout 120 \
    env RUST_LOG=info,mapreduce=debug "$BIN/mr-worker" --master "$MASTER" --slots 1 --token-file "$3" 2>"$WORK/$2"
}

# A worker with another secret: refused, and says so; so does the master.
if worker 2 wrong.log "$WORK/wrong-token"; then fail "a worker with the wrong secret was let in"; fi
grep -q "wrong secret" "$WORK/wrong.log" || fail "the refused worker does not say why"
wait_for "grep -q 'refused a connection from ${IP[2]}:.*wrong secret' '$WORK/master.log'" 10 ||
  fail "the master does not log the refusal"
echo "multi-host test: a worker with the wrong secret is refused on both sides"

# A process without the secret, on host 2: refused at the handshake; bytes
# of a forged report without a handshake are not taken as a call.
"$TOOL" exec "$NAME-2" -- timeout 20 python3 - "${IP[0]}" >"$WORK/forger.log" 2>&1 <<'EOF' || fail "the forger's checks failed"
import socket, ssl, struct, sys
def connect():
    s = socket.create_connection((sys.argv[1], 7878), timeout=10)
    preamble = b""
    while len(preamble) < 5:
        preamble += s.recv(5 - len(preamble))
    assert preamble[:4] == b"MRh3" and preamble[4] & 1 and preamble[4] & 2, f"the master must ask for a secret and encrypt: {preamble!r}"
    return s
# TLS needs no secret (any certificate is taken); the handshake inside does.
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
tls.check_hostname = False
tls.verify_mode = ssl.CERT_NONE
s = tls.wrap_socket(connect())
nonce = b""
while len(nonce) < 32:
    nonce += s.recv(32 - len(nonce))
name = b"forger:1"
s.sendall(b"MRh3" + bytes([0]) + bytes(32) + bytes(16) + bytes([len(name)]) + name + bytes(32))
answer = s.recv(300)
assert answer[:1] == b"\x01", f"expected a refusal, got {answer!r}"
print("refused:", answer[2:].decode())
s = connect()
frame = b'{"report_task":{"task":{"Map":0},"attempt":1,"outcome":{"Failed":{"error":"forged"}}}}'
s.sendall(struct.pack(">I", len(frame)) + frame)
rest = b""
try:
    while chunk := s.recv(4096):
        rest += chunk
except ConnectionResetError:
    pass
# The server's preamble was read already: nothing but the close follows,
# after a TLS alert at most (the frame is no TLS handshake).
assert rest == b"" or (rest[:1] == b"\x15" and len(rest) <= 7), f"the master answered a forged frame: {rest!r}"
print("forged frame: connection closed")
EOF
grep -q "refused: it gave no secret" "$WORK/forger.log" || fail "the unauthenticated process was not refused"
echo "multi-host test: an unauthenticated process is refused"

# A worker with another app than the job's: refused, on both sides.
"$TOOL" exec "$NAME-1" -- timeout 20 "$BIN/mr-worker" --master "$MASTER" --token-file "$WORK/token" wordcount 2>"$WORK/other-app.log" &&
  fail "a worker with another app was let in"
grep -q "refused this worker: its app .* is not the job's libslowcount.so" "$WORK/other-app.log" || fail "the worker with another app does not say why"
wait_for "grep -q 'refused a worker from .*: its app' '$WORK/master.log'" 10 || fail "the master does not log the app it refused"
echo "multi-host test: a worker with another app is refused on both sides"

# The real workers, without an app of their own: they fetch the job's.
worker 1 worker1.log "$WORK/token" &
W1=$!
worker 2 worker2.log "$WORK/token" &
W2=$!
# Host 2 has finished a map and started a reduce: cut it off.
wait_for "grep -q 'task{task=reduce task [0-9]* .*started' '$WORK/worker2.log' 2>/dev/null" 60 ||
  fail "host 2 never started a reduce"
grep -q 'task{task=map task [0-9]* .*done' "$WORK/worker2.log" || fail "host 2 finished no map before its reduce"
"$TOOL" cut "$NAME-2"
echo "multi-host test: host 2 cut off mid-reduce"

wait "$MASTER_PID" || fail "the master failed"
wait "$W1" || fail "the worker on host 1 failed"
diff <(sort "$WORK/reference/mr-out-0") <(cat "$WORK"/result/mr-out-* | sort) >/dev/null ||
  fail "the output differs from mr-sequential's"
echo "multi-host test: output identical to mr-sequential's"
python3 - "$WORK/result/summary.json" "$(grep -o 'worker{id=[^}]*}' "$WORK/worker2.log" | head -1 | sed 's/worker{id=\(.*\)}/\1/')" <<'EOF' || fail "the summary does not list host 2's maps as run again"
import json, sys
summary = json.load(open(sys.argv[1]))
host2 = sys.argv[2]
lost = [a for a in summary["unsuccessful_attempts"] if a["worker"] == host2]
maps = sorted(a["task"] for a in lost if a["outcome"] == "output_lost")
assert maps, f"no map of {host2} was run again: {lost}"
print("multi-host test: re-run maps of the cut host:", ", ".join(maps))
EOF
kill "$W2" 2>/dev/null || true
"$TOOL" heal "$NAME-2"

# A second job, sort: its constructor samples the inputs, which the
# workers do not have (they read them through the master).
rm -f "$WORK/addr" "$WORK"/result/*
"$TOOL" exec "$NAME-0" --private /srv/mr --private /tmp -- timeout 120 bash -c '
  set -u
  mkdir -p /srv/mr/in && cp "$1"/src/*.txt /srv/mr/in/
  "$2/mr-master" --listen "$3" --token-file "$1/token" --addr-file "$1/addr" --reduces 3 \
    --output-dir /srv/mr/out --http off -q /srv/mr/in/*.txt >"$1/sort-master.out"
  status=$?
  cp /srv/mr/out/mr-out-* "$1/result/" 2>/dev/null
  exit $status' _ "$WORK" "$BIN" "$MASTER" 2>"$WORK/sort-master.log" &
MASTER_PID=$!
wait_for "[[ -s '$WORK/addr' ]]" 20 || fail "the sort job's master did not start"
for h in 1 2; do
  "$TOOL" exec "$NAME-$h" --private /srv/mr --private /tmp -- timeout 120 \
    "$BIN/mr-worker" --master "$MASTER" --token-file "$WORK/token" sort 2>"$WORK/sort-worker$h.log" &
done
wait "$MASTER_PID" || fail "the sort job failed"
cat "$WORK"/src/*.txt | LC_ALL=C sort | cmp -s - <(cat "$WORK"/result/mr-out-0 "$WORK"/result/mr-out-1 "$WORK"/result/mr-out-2) ||
  fail "the sort job's output is not the sorted input"
echo "multi-host test: sort (sampling inputs it does not have) gives the sorted input"
echo "multi-host test: PASS"
