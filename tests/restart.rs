//! A coordinator that restarts without losing the job, and outputs that
//! appear all together: a master killed mid-job resumes from its journal
//! when started again; a failed job leaves the output directory as it was;
//! two masters never share an output directory.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Eight words over `files` files: few keys, so that a slow reduce call
/// makes each reduce take a while.
fn write_inputs(dir: &TestDir, files: usize) -> Vec<String> {
    (0..files)
        .map(|i| {
            let name = format!("in-{i}.txt");
            dir.write(&name, format!("ant bee cat dog\nelk fox gnu hen {i}\n"));
            name
        })
        .collect()
}

/// Outputs an earlier job left in `dir`, to check they survive or go.
fn write_earlier_outputs(dir: &TestDir) {
    dir.write("mr-out-0", "old 0\n");
    dir.write("mr-out-7", "old 7\n");
    dir.write("_SUCCESS", "job old\n");
}

fn read(dir: &TestDir, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

fn earlier_outputs_untouched(dir: &TestDir) {
    assert_eq!(read(dir, "mr-out-0").as_deref(), Some("old 0\n"), "{}", dir.listing());
    assert_eq!(read(dir, "mr-out-7").as_deref(), Some("old 7\n"), "{}", dir.listing());
    assert_eq!(read(dir, "_SUCCESS").as_deref(), Some("job old\n"), "{}", dir.listing());
    assert!(!dir.join("mr-out-1").exists(), "{}", dir.listing());
}

/// Waits until the journal holds `what` (a record's name) `count` times.
fn wait_for_journal(dir: &TestDir, what: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let journal = read(dir, ".mr-job/journal").unwrap_or_default();
        if journal.matches(&format!("{{\"{what}\"")).count() >= count {
            return;
        }
        assert!(Instant::now() < deadline, "the journal never held {count} {what}\n{journal}\n{}", dir.listing());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the job of `args` with one slowcount worker until a reduce is
/// journaled done, then kills both.
fn kill_after_a_reduce(dir: &TestDir, args: &[&str]) {
    let (mut master, addr) = start_master(dir.path(), args);
    let mut worker = start_worker("worker-before", dir.path(), &addr, "slowcount");
    wait_for_journal(dir, "reduce_done", 1);
    master.kill();
    worker.kill();
}

/// Runs the job of `args` again with a new worker, to success; returns the
/// master.
fn finish_after_restart(dir: &TestDir, args: &[&str]) -> Proc {
    let (mut master, addr) = start_master(dir.path(), args);
    let mut worker = start_worker("worker-after", dir.path(), &addr, "slowcount");
    master.expect_success();
    worker.expect_success();
    master
}

#[test]
fn a_master_killed_mid_job_resumes_from_its_journal_and_the_outputs_appear_together() {
    let dir = TestDir::new("restart");
    let inputs = write_inputs(&dir, 6);
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let expected = reference_output(dir.path(), "wordcount", &inputs);
    write_earlier_outputs(&dir);
    let mut args = vec!["--reduces", "4", "--param", "reduce_delay_ms=300", "--summary-json", "summary.json", "--overwrite"];
    args.extend(&inputs);

    kill_after_a_reduce(&dir, &args);
    // Killed mid-job: nothing of this job in the output directory yet.
    earlier_outputs_untouched(&dir);

    let master = finish_after_restart(&dir, &args);
    let log = master.stderr();
    assert!(log.contains("resuming job") && log.contains("(start 2): 6 of 6 map tasks and "), "{}", master.describe());
    assert_same_output(&job_output(dir.path(), 4), &expected, "after a restart");
    // Only what was not done before the restart ran again.
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    let attempts = summary["attempts"]["total"].as_u64().unwrap() - summary["attempts"]["before_restart"].as_u64().unwrap();
    assert!((1..=3).contains(&attempts), "{attempts} attempts after the restart\n{summary:#}");
    // The summary shows those of before it too: every map's, at least.
    assert!(summary["attempts"]["before_restart"].as_u64().unwrap() >= 6, "{summary:#}");
    assert!(!dir.join("mr-out-7").exists(), "an earlier job's extra output should go");
    assert!(read(&dir, "_SUCCESS").is_some_and(|m| m.starts_with("job ") && m != "job old\n"));
    assert!(!dir.join(".mr-job").exists(), "job directory left behind\n{}", dir.listing());
}

#[test]
fn a_finished_output_cut_short_before_a_restart_is_made_again() {
    let dir = TestDir::new("restart-short-output");
    let inputs = write_inputs(&dir, 4);
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let expected = reference_output(dir.path(), "wordcount", &inputs);
    let mut args = vec!["--reduces", "4", "--param", "reduce_delay_ms=300"];
    args.extend(&inputs);
    kill_after_a_reduce(&dir, &args);
    // As if the machine lost power before the output reached the disk: the
    // journal says done, the file is empty.
    let journal = read(&dir, ".mr-job/journal").unwrap();
    let done: serde_json::Value =
        journal.lines().filter_map(|l| serde_json::from_str(l).ok()).find(|r: &serde_json::Value| r.get("reduce_done").is_some()).unwrap();
    let r = done["reduce_done"]["task"].as_u64().unwrap();
    std::fs::write(dir.join(&format!(".mr-job/mr-out-{r}")), "").unwrap();

    let master = finish_after_restart(&dir, &args);
    let log = master.stderr();
    let done_before = journal.matches("{\"reduce_done\"").count();
    assert!(log.contains(&format!("4 of 4 map tasks and {} of 4 reduce tasks were done", done_before - 1)), "{}", master.describe());
    assert_same_output(&job_output(dir.path(), 4), &expected, "after a restart with a short output");
}

#[test]
fn a_failed_job_leaves_the_output_directory_as_it_was() {
    let dir = TestDir::new("failed-untouched");
    dir.write("in.txt", "fine\nPANIC-IN-MAP\n");
    write_earlier_outputs(&dir);
    let (mut master, addr) = start_master(dir.path(), &["--reduces", "2", "--max-task-attempts", "2", "--overwrite", "in.txt"]);
    let _worker = start_worker("worker", dir.path(), &addr, "faulty");
    master.expect_failure();
    earlier_outputs_untouched(&dir);
    assert!(!dir.join(".mr-job").exists(), "a failed job's directory is removed\n{}", dir.listing());
}

#[test]
fn a_second_master_on_the_same_output_directory_is_refused_and_another_job_cleans_up_the_first() {
    let dir = TestDir::new("two-masters");
    dir.write("in.txt", "a b c\n");
    dir.write("other.txt", "x y\n");
    let (mut first, _addr) = start_master(dir.path(), &["in.txt"]);
    let mut second = Command::new(master_bin());
    second.args(["--listen", "127.0.0.1:0", "in.txt"]);
    let mut second = Proc::spawn("second", second, dir.path());
    let stderr = second.expect_failure();
    let line = format!("mr-master: error: another mr-master is running a job in {}", dir.path().display());
    assert!(stderr.contains(&line), "{}", second.describe());
    first.kill();

    // The killed job's directory is resumed by the same job, and cleaned
    // up by another: a job over other inputs, or the same with --fresh.
    let (mut other, addr) = start_master(dir.path(), &["other.txt"]);
    let mut worker = start_worker("worker", dir.path(), &addr, "wordcount");
    other.expect_success();
    worker.expect_success();
    assert!(other.stderr().contains("held another job, removed: it was planned from other inputs or settings"), "{}", other.describe());
    assert_eq!(job_output(dir.path(), 10), b"x 1\ny 1\n");
    assert!(!dir.join(".mr-job").exists(), "{}", dir.listing());
}

#[test]
fn workers_wait_for_their_restarted_master_and_finish_the_job_with_it() {
    let dir = TestDir::new("reconnect");
    let inputs = write_inputs(&dir, 6);
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let expected = reference_output(dir.path(), "wordcount", &inputs);
    let mut args = vec!["--reduces", "4", "--param", "reduce_delay_ms=300"];
    args.extend(&inputs);

    let (mut master, addr) = start_master(dir.path(), &args);
    let mut workers: Vec<Proc> = (0..2).map(|i| start_worker(&format!("worker{i}"), dir.path(), &addr, "slowcount")).collect();
    wait_for_journal(&dir, "reduce_done", 1);
    master.kill();
    let (mut master, _) = start_master_at(dir.path(), &addr, &args);
    master.expect_success();
    for worker in &mut workers {
        worker.expect_success();
        assert!(worker.stderr().contains("reconnected to the coordinator at"), "{}", worker.describe());
    }
    assert_same_output(&job_output(dir.path(), 4), &expected, "workers that stayed through a restart");
    assert!(!dir.join(".mr-job").exists(), "{}", dir.listing());
}

#[test]
fn a_map_only_job_killed_mid_job_resumes_with_the_maps_it_had_done() {
    let dir = TestDir::new("restart-map-only");
    let inputs = write_inputs(&dir, 6);
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    write_earlier_outputs(&dir);
    let mut args = vec!["--reduces", "0", "--param", "delay_ms=300", "--overwrite"];
    args.extend(&inputs);
    let (mut master, addr) = start_master(dir.path(), &args);
    let mut worker = start_worker("worker-before", dir.path(), &addr, "slowcount");
    wait_for_journal(&dir, "map_done", 2);
    master.kill();
    worker.kill();
    earlier_outputs_untouched(&dir);

    let master = finish_after_restart(&dir, &args);
    let log = master.stderr();
    assert!(log.contains("resuming job") && log.contains(" of 6 map tasks and 0 of 0 reduce tasks"), "{}", master.describe());
    let kept: u32 = log.split("(start 2): ").nth(1).and_then(|rest| rest.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(kept >= 2, "the maps done before the restart were kept (their outputs committed)\n{}", master.describe());
    let expected = map_only_reference(dir.path(), "slowcount", &inputs);
    assert_map_only_output(dir.path(), &expected, &format!("after a restart\n{}", dir.listing()));
    assert!(!dir.join("mr-out-7").exists(), "an earlier job's extra output should go");
    assert!(!dir.join(".mr-job").exists(), "job directory left behind\n{}", dir.listing());
}
