//! Attempts that never end (the `hang` app: a reduce stuck on one key, a
//! map stuck on one line), with a 3 s task timeout and one worker of two
//! slots: each given-up attempt's task process is killed, so its slot runs
//! a later attempt. With skipping the stuck record is skipped and the
//! job succeeds; without, the job stops at the attempt bound, in bounded
//! time.
//!
//! Two slots, not one: the coordinator gives an attempt up only while some
//! worker is asking it for work (a `request_task` runs the expiry; the
//! coordinator's own loop does not learn the deadline of an attempt
//! assigned after it went to sleep), so with one busy slot nothing would
//! ever time out. Each of the two attempts that hang still needs the other
//! slot back: if a killed attempt did not free its slot, the job would
//! stall.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The longest a job of these tests may take: four hung attempts of a
/// few seconds each, with room for a slow machine.
const JOB_LIMIT: Duration = Duration::from_secs(60);

fn summary(dir: &TestDir) -> Value {
    let path = dir.join("summary.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// A record that hangs the app, and the inputs with and without it.
struct Stuck {
    /// `hang_key=...` or `hang_line=...`.
    param: &'static str,
    /// The inputs as the job reads them.
    inputs: [(&'static str, &'static str); 3],
    /// The same without the stuck record: the reference's inputs.
    clean: [(&'static str, &'static str); 3],
    /// How the failure message names the stuck task.
    task: &'static str,
    /// How the summary shows the skipped record.
    record: &'static str,
}

const GOOD: &str = "alpha beta gamma\ndelta alpha\n";

fn stuck_reduce() -> Stuck {
    Stuck {
        param: "hang_key=stuck",
        inputs: [("a.txt", "alpha stuck beta\ngamma\n"), ("b.txt", GOOD), ("c.txt", "stuck stuck delta\n")],
        clean: [("a.txt", "alpha beta\ngamma\n"), ("b.txt", GOOD), ("c.txt", "delta\n")],
        task: "reduce task 0 (partition 0) did not succeed in 2 attempts: ",
        record: " \"stuck\"",
    }
}

fn stuck_map() -> Stuck {
    Stuck {
        param: "hang_line=this line never ends",
        inputs: [("a.txt", GOOD), ("b.txt", "alpha one\nthis line never ends\nbeta two\n"), ("c.txt", GOOD)],
        clean: [("a.txt", GOOD), ("b.txt", "alpha one\nbeta two\n"), ("c.txt", GOOD)],
        task: "map task 1 (input b.txt) did not succeed in 2 attempts: ",
        record: "line at byte 10 of b.txt: \"this line never ends\"",
    }
}

/// Runs the job of `stuck` with `flags` on one worker of two slots; returns
/// the master, the worker and how long the master took.
fn run_stuck_job(dir: &TestDir, stuck: &Stuck, flags: &[&str]) -> (Proc, Proc, Duration) {
    for (name, contents) in stuck.inputs {
        dir.write(name, contents);
    }
    let mut args = vec!["--task-timeout", "3", "--reduces", "1", "--summary-json", "summary.json", "--param", stuck.param];
    args.extend(flags);
    args.extend(stuck.inputs.iter().map(|(name, _)| *name));
    let started = Instant::now();
    let (mut master, addr) = start_master(dir.path(), &args);
    let worker = start_worker_with("worker", dir.path(), &addr, "hang", &["--slots", "2"]);
    master.wait(JOB_LIMIT);
    let took = started.elapsed();
    (master, worker, took)
}

#[test]
fn a_hung_reduce_or_map_is_killed_and_its_record_skipped() {
    for (label, stuck) in [("reduce", stuck_reduce()), ("map", stuck_map())] {
        let dir = TestDir::new(&format!("hung-{label}-skipped"));
        for (name, contents) in stuck.clean {
            dir.write(&format!("clean/{name}"), contents);
        }
        let clean: Vec<String> = stuck.clean.iter().map(|(name, _)| format!("clean/{name}")).collect();
        let expected = reference_output(dir.path(), "hang", &clean.iter().map(String::as_str).collect::<Vec<_>>());
        let (mut master, mut worker, _) = run_stuck_job(&dir, &stuck, &["--skip-bad-records", "1"]);
        master.expect_success();
        worker.expect_success();
        assert_same_output(&job_output(dir.path(), 1), &expected, &format!("{label}\n{}", dir.listing()));
        let summary = summary(&dir);
        let skipped = summary["skipped_records"].as_array().unwrap();
        assert_eq!(skipped.len(), 1, "{summary}");
        assert!(skipped[0]["record"].as_str().unwrap().ends_with(stuck.record), "{label}: {summary}");
        // The given-up attempts' processes were killed and replaced: the
        // worker itself ran every attempt and lived to the end.
        let log = worker.stderr();
        assert!(log.contains("killing its task process"), "{label}\n{}", worker.describe());
    }
}

#[test]
fn without_skipping_a_hung_reduce_or_map_stops_the_job_at_the_bound() {
    for (label, stuck) in [("reduce", stuck_reduce()), ("map", stuck_map())] {
        let dir = TestDir::new(&format!("hung-{label}-bound"));
        let (mut master, mut worker, took) = run_stuck_job(&dir, &stuck, &["--max-task-attempts", "2"]);
        let err = master.expect_failure();
        let error_line = err.lines().find(|l| l.starts_with("mr-master: error:")).unwrap_or_default();
        assert!(error_line.contains(stuck.task), "{label}\n{}", master.describe());
        assert_eq!(error_line.matches("timed out").count(), 2, "{label}\n{}", master.describe());
        // Two attempts of 3 s each, and the kills between.
        assert!(took < Duration::from_secs(30), "{label}: the job took {took:?}");
        // The worker heard the end: it was never stuck itself.
        let worker_err = worker.expect_exit_code(3);
        assert!(worker_err.contains("the coordinator stopped the job"), "{label}\n{}", worker.describe());
        assert!(!dir.join("mr-out-0").exists(), "no output from a failed job");
    }
}
