//! Fault tolerance with real processes: liveness from heartbeats (a slow
//! attempt that makes progress is left alone, a stalled or stopped one is
//! given away), the bound on attempts of every kind, and what a worker's
//! exit status says.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Reads the `--summary-json` a master wrote.
fn summary(dir: &TestDir) -> Value {
    let path = dir.join("summary.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Outcomes of the job's unsuccessful attempts, as the summary lists them.
fn unsuccessful_outcomes(summary: &Value) -> Vec<String> {
    summary["unsuccessful_attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap().to_string()).collect()
}

fn signal(process: &Proc, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(process.pid().to_string()).status().unwrap();
    assert!(status.success(), "kill -{name} {}", process.pid());
}

fn write_inputs(dir: &TestDir, files: usize) -> Vec<String> {
    (0..files)
        .map(|i| {
            let name = format!("in-{i}.txt");
            dir.write(&name, format!("alpha beta gamma {i}\ndelta alpha {}\n", i * 7));
            name
        })
        .collect()
}

#[test]
fn a_slow_map_that_shows_progress_is_left_alone_and_one_that_does_not_is_given_away() {
    // Each map sleeps longer than the 2 s task timeout. With ticks (a
    // counter update every 100 ms) it is visibly alive and runs once;
    // without, it makes no progress: each attempt is given up, its task
    // process killed, and the map given to another worker, until the bound
    // stops the job. The silent maps sleep 8 s: an attempt is given up at
    // 2 s and its process killed within about 2 s more (a heartbeat, then
    // 1 s of grace), and a completion that beat the kill would rightly win.
    for (ticking, params) in
        [(true, ["--param", "delay_ms=4000", "--param", "tick_ms=100"]), (false, ["--param", "delay_ms=8000", "--param", "tick_ms=0"])]
    {
        let dir = TestDir::new(if ticking { "progress-ticking" } else { "progress-stalled" });
        let inputs = write_inputs(&dir, 2);
        let expected = reference_output(dir.path(), "wordcount", &inputs.iter().map(String::as_str).collect::<Vec<_>>());
        let mut args = vec!["--task-timeout", "2", "--max-task-attempts", "3", "--reduces", "2", "--summary-json", "summary.json"];
        args.extend(params);
        args.extend(inputs.iter().map(String::as_str));
        let (mut master, addr) = start_master(dir.path(), &args);
        let mut workers: Vec<_> = (0..3).map(|i| start_worker(&format!("worker{i}"), dir.path(), &addr, "slowcount")).collect();
        if ticking {
            master.expect_success();
            for w in &mut workers {
                w.expect_success();
            }
            assert_same_output(&job_output(dir.path(), 2), &expected, &dir.listing());
            let summary = summary(&dir);
            let outcomes = unsuccessful_outcomes(&summary);
            assert!(outcomes.is_empty(), "progressing maps must not be given away: {outcomes:?}\n{}", master.describe());
            assert_eq!(summary["attempts"]["total"], 4, "{summary}");
        } else {
            let err = master.expect_failure();
            let error_line = err.lines().find(|l| l.starts_with("mr-master: error:")).unwrap_or_default();
            assert!(error_line.contains(" did not succeed in 3 attempts: "), "{}", master.describe());
            assert_eq!(error_line.matches("timed out: made no progress for 2.0 s").count(), 3, "{}", master.describe());
            // Given away: the stalled task's attempts ran on more than one worker.
            let on: std::collections::HashSet<String> = workers.iter().map(worker_id).filter(|id| error_line.contains(id.as_str())).collect();
            assert!(on.len() >= 2, "stalled maps must be given away: {error_line}");
        }
    }
}

#[test]
fn a_stopped_worker_loses_its_task_and_another_finishes_the_job() {
    let dir = TestDir::new("stopped-worker");
    let inputs = write_inputs(&dir, 3);
    let expected = reference_output(dir.path(), "wordcount", &inputs.iter().map(String::as_str).collect::<Vec<_>>());
    let started = dir.join("map-started");
    let started_param = format!("started_file={}", started.display());
    let mut args = vec!["--task-timeout", "1", "--reduces", "2", "--summary-json", "summary.json"];
    // Maps tick while they sleep, so only the worker's silence can lose one.
    args.extend(["--param", "delay_ms=1500", "--param", "tick_ms=50", "--param", &started_param]);
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);
    // One slot: the one map it runs is the one attempt lost with it.
    let mut stopped = start_worker_with("stopped", dir.path(), &addr, "slowcount", &["--slots", "1"]);
    wait_for_file(&started, "the first map");
    // Stopped mid-map: no heartbeats, no report, connection still open.
    signal(&stopped, "STOP");
    let mut survivor = start_worker("survivor", dir.path(), &addr, "slowcount");
    master.expect_success();
    survivor.expect_success();
    stopped.kill();
    assert_same_output(&job_output(dir.path(), 2), &expected, &dir.listing());
    let summary = summary(&dir);
    let lost: Vec<&Value> = summary["unsuccessful_attempts"].as_array().unwrap().iter().filter(|a| a["outcome"] == "worker_lost").collect();
    assert_eq!(lost.len(), 1, "{summary}");
    assert_eq!(lost[0]["worker"], worker_id(&stopped), "{summary}");
    assert!(lost[0]["error"].as_str().unwrap().starts_with("its worker was silent for "), "{summary}");
}

#[test]
fn a_straggler_gets_a_backup_that_wins_so_the_job_does_not_wait_for_it() {
    let dir = TestDir::new("straggler-backup");
    let inputs = write_inputs(&dir, 4);
    let expected = reference_output(dir.path(), "wordcount", &inputs.iter().map(String::as_str).collect::<Vec<_>>());
    let started = dir.join("map-started");
    let started_param = format!("started_file={}", started.display());
    // A task timeout far longer than the test: the straggler's attempt is
    // never given up, so only a backup can finish its task.
    let mut args = vec!["--task-timeout", "600", "--reduces", "2", "--summary-json", "summary.json"];
    args.extend(["--param", "delay_ms=300", "--param", &started_param]);
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);
    let mut straggler = start_worker_with("straggler", dir.path(), &addr, "slowcount", &["--slots", "1"]);
    wait_for_file(&started, "the first map");
    signal(&straggler, "STOP");
    let mut healthy = start_worker_with("healthy", dir.path(), &addr, "slowcount", &["--slots", "2"]);
    master.expect_success();
    healthy.expect_success();
    straggler.kill();
    assert_same_output(&job_output(dir.path(), 2), &expected, &dir.listing());
    let summary = summary(&dir);
    assert_eq!((summary["attempts"]["backups"].as_u64(), summary["attempts"]["backups_won"].as_u64()), (Some(1), Some(1)), "{summary}");
    let unsuccessful = summary["unsuccessful_attempts"].as_array().unwrap();
    assert_eq!(unsuccessful.len(), 1, "{summary}");
    assert_eq!(
        (unsuccessful[0]["worker"].as_str(), unsuccessful[0]["outcome"].as_str()),
        (Some(worker_id(&straggler).as_str()), Some("abandoned")),
        "{summary}"
    );
    assert!(master.stdout().contains("1 backup of stragglers, 1 won"), "{}", master.describe());
}

#[test]
fn a_record_that_kills_every_task_process_stops_the_job_at_the_bound() {
    let dir = TestDir::new("killer-record");
    dir.write("good.txt", "fine words here");
    dir.write("bad.txt", "this one says ABORT-IN-MAP");
    let (mut master, addr) = start_master(dir.path(), &["--max-task-attempts", "3", "--reduces", "1", "good.txt", "bad.txt"]);
    let app = plugin("faulty").to_string_lossy().into_owned();
    // Each attempt at bad.txt takes its task process down (SIGABRT, nothing
    // caught); the worker reports it and runs the next in a fresh one.
    let mut worker = start_worker("worker", dir.path(), &addr, &app);
    let err = master.expect_failure();
    let error_line = err.lines().find(|l| l.starts_with("mr-master: error:")).unwrap_or_default().to_string();
    assert!(error_line.contains("map task 1 (input bad.txt) did not succeed in 3 attempts: "), "{}", master.describe());
    let death = format!("on {} failed: the task process was killed by signal 6 (SIGABRT)", worker_id(&worker));
    assert_eq!(error_line.matches(&death).count(), 3, "{death}\n{}", master.describe());
    // The worker lived to hear how the job ended.
    let worker_err = worker.expect_exit_code(3);
    assert!(worker_err.contains("the coordinator stopped the job"), "{}", worker.describe());
    assert!(!dir.join("mr-out-0").exists(), "no output from a failed job");
}

#[test]
fn with_skipping_records_that_kill_task_processes_are_skipped_counted_and_listed() {
    // Once with workers that share the job directory (the coordinator can
    // read the attempts' cursors), once with workers that do not (each
    // reports the record its attempt's cursor shows).
    for shared in [true, false] {
        let dir = TestDir::new(if shared { "skip-bad-records" } else { "skip-bad-records-unshared" });
        let good = "alpha beta gamma\ndelta alpha\n";
        let bad_line = "a line that says ABORT-IN-MAP and dies\n";
        dir.write("a.txt", format!("{good}{good}"));
        dir.write("b.txt", format!("{good}{bad_line}{good}"));
        dir.write("c.txt", format!("{good}abortinreduce is a word\n"));
        // The output must be that of the inputs without the bad line and
        // without the key group that kills the reduce.
        dir.write("clean/a.txt", format!("{good}{good}"));
        dir.write("clean/b.txt", format!("{good}{good}"));
        dir.write("clean/c.txt", format!("{good}is a word\n"));
        // A directory a killed worker left in the work directories' base:
        // the first worker to start removes it.
        dir.write("work/mr-worker-Dead01/map-0.attempt-1", "runs of a dead worker");
        dir.write(&format!("work/mr-worker-Dead01/{}", mapreduce::work_dir::OWNER), "1\n");
        let app = plugin("faulty").to_string_lossy().into_owned();
        let expected = reference_output(dir.path(), &app, &["clean/a.txt", "clean/b.txt", "clean/c.txt"]);
        let args = ["--skip-bad-records", "1", "--reduces", "2", "--summary-json", "summary.json", "a.txt", "b.txt", "c.txt"];
        let (mut master, addr) = start_master(dir.path(), &args);
        let mut flags = vec!["--work-dir", "work"];
        if !shared {
            flags.push("--no-shared-dir");
        }
        // Every attempt that reaches a bad record takes its task process
        // down (SIGABRT); no worker dies.
        let mut workers: Vec<Proc> = (0..2).map(|i| start_worker_with(&format!("worker{i}"), dir.path(), &addr, &app, &flags)).collect();
        master.expect_success();
        for worker in &mut workers {
            worker.expect_success();
            assert_eq!(shared, !worker.stderr().contains("not sharing the job directory"), "{}", worker.describe());
        }
        assert_same_output(&job_output(dir.path(), 2), &expected, &dir.listing());
        let summary = summary(&dir);
        let skipped = summary["skipped_records"].as_array().unwrap();
        assert_eq!(skipped.len(), 2, "{summary}");
        let offset = good.len();
        assert_eq!(skipped[0]["task"], "map 1", "{summary}");
        assert_eq!(skipped[0]["record"], format!("line at byte {offset} of b.txt: \"a line that says ABORT-IN-MAP and dies\""), "{summary}");
        assert!(skipped[1]["task"].as_str().unwrap().starts_with("reduce "), "{summary}");
        assert!(skipped[1]["record"].as_str().unwrap().ends_with(" \"abortinreduce\""), "{summary}");
        assert_eq!(summary["counters"]["skipped_records"], 2, "{summary}");
        // Map 1: two deaths on the whole split, then two on the line; the
        // reduce: two deaths on the key. Six task processes died.
        let deaths = summary["unsuccessful_attempts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["error"].as_str().unwrap_or_default().contains("killed by signal 6 (SIGABRT)"))
            .count();
        assert_eq!(deaths, 6, "{summary}");
        assert!(master.stdout().contains("skipped 2 bad records:"), "{}", master.describe());
        let left: Vec<_> = std::fs::read_dir(dir.join("work")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "the dead worker's directory, or a live one's, was left: {left:?}");
    }
}

#[test]
fn skipping_needs_room_for_four_attempts() {
    let dir = TestDir::new("skip-needs-attempts");
    dir.write("in.txt", "words");
    let mut cmd = Command::new(master_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--skip-bad-records", "1", "--max-task-attempts", "3", "in.txt"]);
    let mut master = Proc::spawn("master", cmd, dir.path());
    let err = master.expect_failure();
    assert!(err.contains("--skip-bad-records needs --max-task-attempts of at least 4"), "{err}");
}

/// A job whose one map takes 3 s, with a worker (given `worker_flags`)
/// that has started it: returns the master, its address and the worker.
fn job_with_a_map_under_way(dir: &TestDir, worker_flags: &[&str]) -> (Proc, String, Proc) {
    dir.write("in.txt", "some words");
    let started = dir.join("map-started");
    let started_param = format!("started_file={}", started.display());
    let (master, addr) = start_master(dir.path(), &["--param", "delay_ms=3000", "--param", &started_param, "in.txt"]);
    let worker = start_worker_with("worker", dir.path(), &addr, "slowcount", worker_flags);
    wait_for_file(&started, "the map");
    (master, addr, worker)
}

#[test]
fn a_worker_whose_coordinator_vanishes_mid_job_exits_4() {
    let dir = TestDir::new("vanished-master");
    let (mut master, addr, mut worker) = job_with_a_map_under_way(&dir, &["--reconnect-timeout", "1"]);
    master.kill();
    let err = worker.expect_exit_code(4);
    let line = format!("mr-worker: error: lost the coordinator at {addr} before the job ended: ");
    assert!(err.contains(&line) && err.contains("it did not come back within 1 s"), "{}", worker.describe());
}

#[test]
fn a_worker_does_not_join_another_job_at_its_coordinators_address() {
    let dir = TestDir::new("other-job");
    let (mut master, addr, mut worker) = job_with_a_map_under_way(&dir, &["--reconnect-timeout", "20"]);
    master.kill();
    // Another job, in another output directory, at the same address.
    let (_other, _) = start_master_at(dir.path(), &addr, &["--output-dir", "other", "in.txt"]);
    let err = worker.expect_exit_code(4);
    assert!(err.contains("the coordinator there now runs another job"), "{}", worker.describe());
}

#[test]
fn workers_exit_0_when_the_job_succeeds_even_if_busy_at_the_end() {
    // Two slow maps on three workers: the idle worker is told at once, the
    // busy ones by the answer to their report; every one exits 0.
    let dir = TestDir::new("exit-codes");
    let inputs = write_inputs(&dir, 2);
    let mut args = vec!["--reduces", "1", "--param", "delay_ms=500"];
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);
    let mut workers: Vec<_> = (0..3).map(|i| start_worker(&format!("worker{i}"), dir.path(), &addr, "slowcount")).collect();
    master.expect_success();
    for w in &mut workers {
        w.expect_exit_code(0);
    }
}

#[test]
fn thousands_of_inputs_run_with_256_descriptors_per_process() {
    // 3,000 inputs and one reduce: the reduce merges 3,000 runs, and the
    // maps' tiny buffer makes each spill too, yet no process may open more
    // than 256 files. Merges in passes keep each within the fan-in.
    let dir = TestDir::new("descriptors");
    for i in 0..3000 {
        dir.write(&format!("in/{i:04}.txt"), format!("w{} w{} shared\n", i % 97, i % 13));
    }
    dir.write("big.txt", skewed_words(60_000));
    let expected = reference_output(dir.path(), "wordcount", &["in", "big.txt"]);
    let mut master = Command::new(master_bin());
    master.args(["--listen", "127.0.0.1:0", "--addr-file", "master.addr", "--reduces", "1", "--map-buffer", "4K", "in", "big.txt"]);
    limit_open_files(&mut master, 256);
    let mut master = Proc::spawn("master", master, dir.path());
    wait_for_file(&dir.join("master.addr"), "master");
    let addr = std::fs::read_to_string(dir.join("master.addr")).unwrap();
    let mut worker = Command::new(worker_bin());
    worker.args(["--master", addr.trim(), "wordcount"]);
    limit_open_files(&mut worker, 256);
    let mut worker = Proc::spawn("worker", worker, dir.path());
    master.expect_success();
    worker.expect_success();
    assert_same_output(&job_output(dir.path(), 1), &expected, "3,000 inputs under a 256-descriptor limit");
    let strays: Vec<String> = stray_files(dir.path()).into_iter().filter(|f| f != "in" && f != "big.txt").collect();
    assert!(strays.is_empty(), "left behind: {strays:?}");
}

/// Words with a skewed distribution, so a small map buffer spills many times.
fn skewed_words(words: usize) -> String {
    (0..words).map(|i| format!("v{}{}", (i * i) % 1009, if i % 10 == 9 { "\n" } else { " " })).collect()
}

#[test]
fn a_master_with_few_descriptors_holds_off_extra_connections_and_serves_once_they_leave() {
    // 64 descriptors: at most 32 connections at once. 100 idle clients
    // fill them; the rest, and the worker, wait in the kernel's backlog
    // until the idle ones leave. The master must neither fail nor flood its
    // log, and must then run the job.
    let dir = TestDir::new("connection-cap");
    let inputs = write_inputs(&dir, 2);
    let expected = reference_output(dir.path(), "wordcount", &inputs.iter().map(String::as_str).collect::<Vec<_>>());
    let mut master = Command::new(master_bin());
    master.args(["--listen", "127.0.0.1:0", "--addr-file", "master.addr", "--http", "off", "--reduces", "2"]).args(&inputs);
    limit_open_files(&mut master, 64);
    let mut master = Proc::spawn("master", master, dir.path());
    wait_for_file(&dir.join("master.addr"), "master");
    let addr = std::fs::read_to_string(dir.join("master.addr")).unwrap();
    let idle: Vec<std::net::TcpStream> = (0..100).map(|_| std::net::TcpStream::connect(addr.trim()).unwrap()).collect();
    let mut worker = start_worker("worker", dir.path(), addr.trim(), "wordcount");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(master.try_exit().is_none(), "the master gave up\n{}", master.describe());
    drop(idle);
    master.expect_success();
    worker.expect_success();
    assert_same_output(&job_output(dir.path(), 2), &expected, &dir.listing());
    let accept_lines = master.stderr().lines().filter(|l| l.contains("accepting")).count();
    assert!(accept_lines <= 1, "{accept_lines} lines about accepting\n{}", master.describe());
}

#[test]
fn a_connection_that_stops_halfway_through_a_frame_is_closed() {
    // Task timeout 1 s: a connection silent for twice that is closed (a
    // worker sends a heartbeat every 250 ms). One stops halfway through
    // the handshake; one completes it, sends two bytes of a frame's length
    // and stops.
    let dir = TestDir::new("half-frame");
    let inputs = write_inputs(&dir, 1);
    let mut args = vec!["--task-timeout", "1", "--reduces", "1"];
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);
    let started = Instant::now();
    let (mid_handshake, mid_frame) = block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut mid_handshake = tokio::net::TcpStream::connect(&addr).await.unwrap();
        mid_handshake.write_all(b"MR").await.unwrap();
        let mut mid_frame = handshaken(&addr, None, &mapreduce::handshake::Identity::new("stalled".into())).await.unwrap();
        mid_frame.write_all(&[0, 0]).await.unwrap();
        // Each must be closed: its reads end (after the server's hello, for
        // the first), within the test's patience.
        let drain = |mut stream: Box<dyn tokio::io::AsyncRead + Unpin>| async move {
            let mut sink = Vec::new();
            tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut sink)).await.map(|_| started.elapsed())
        };
        tokio::join!(drain(Box::new(mid_handshake)), drain(Box::new(mid_frame)))
    });
    for (what, closed_after) in [("mid-handshake", mid_handshake), ("mid-frame", mid_frame)] {
        let closed_after = closed_after.unwrap_or_else(|_| panic!("the {what} connection was never closed"));
        assert!(closed_after < Duration::from_secs(15), "the {what} connection was closed after {closed_after:?}");
    }
    // The master still serves workers, whose heartbeats keep them open.
    let mut worker = start_worker("worker", dir.path(), &addr, "slowcount");
    master.expect_success();
    worker.expect_success();
}
