//! A peer that holds the job's secret and sends whatever it likes: every
//! RPC method and every service byte, with hostile arguments (attempts
//! nobody was given, ids of every epoch, wrong task kinds, long, empty,
//! multibyte and control-character strings, huge numbers). The
//! coordinator stays up, changes nothing, logs a bounded number of lines,
//! and the job's output is the genuine worker's.

mod common;

use common::*;
use mapreduce::handshake::Identity;
use mapreduce::memory_budget::WorkerMemory;
use mapreduce::rpc::{AttemptProgress, CoordinatorClient, TaskId, TaskOutcome, TaskReport};
use mapreduce::scheduler::ATTEMPTS_PER_EPOCH;
use mapreduce::skipping::BadRecord;

const SECRET: &str = "correct horse battery staple";

/// Attempt ids a forger might try: the first ones, those around an epoch's
/// start, and the largest.
fn attempt_ids() -> Vec<u64> {
    vec![0, 1, 2, 3, 4, 5, 6, 7, ATTEMPTS_PER_EPOCH - 1, ATTEMPTS_PER_EPOCH, ATTEMPTS_PER_EPOCH + 1, u64::MAX]
}

/// Text no log line should show as it is: long, multibyte across every
/// byte boundary, with newlines and a terminal escape.
fn hostile_text() -> String {
    format!("abcdefghijk\u{e9}\u{1F600}\nforged log line\u{1b}[31m{}", "\u{e9}".repeat(5_000))
}

/// Every kind of outcome, for tasks the job has and has not.
fn forged_reports() -> Vec<TaskReport> {
    let tasks =
        [TaskId::Map(0), TaskId::Map(1), TaskId::Map(2), TaskId::Map(u32::MAX), TaskId::Reduce(0), TaskId::Reduce(1), TaskId::Reduce(u32::MAX)];
    let outcomes = || {
        vec![
            TaskOutcome::MapDone { outputs: vec![], counters: Default::default() },
            TaskOutcome::ReduceDone { counters: Default::default() },
            TaskOutcome::Failed { error: hostile_text(), record: Some(BadRecord { id: u64::MAX, preview: vec![0xff; 10_000] }) },
            TaskOutcome::MapOutputLost { map_task: 0, error: hostile_text() },
            TaskOutcome::MapOutputLost { map_task: u32::MAX, error: String::new() },
        ]
    };
    let mut reports = Vec::new();
    for task in tasks {
        for attempt in attempt_ids() {
            for outcome in outcomes() {
                reports.push(TaskReport { task, attempt, outcome });
            }
        }
    }
    reports
}

/// Calls every method of the coordinator with hostile arguments, as a
/// token holder that was given nothing.
async fn attack(addr: &str, rogue: &Identity) {
    let stream = handshaken(addr, Some(SECRET.as_bytes()), rogue).await.expect("a token holder gets past the handshake");
    let transport = tarpc::serde_transport::Transport::from((stream, tarpc::tokio_serde::formats::Bincode::default()));
    let client = CoordinatorClient::new(tarpc::client::Config::default(), transport).spawn();
    let ctx = tarpc::context::current;
    // job(): the app hash crashed the coordinator when sliced by bytes.
    let across_byte_12 = format!("abcdefghijk\u{e9}{}", "0".repeat(51));
    for hash in [across_byte_12, String::new(), "\u{e9}".repeat(40), "f".repeat(100_000), "ab".repeat(32)] {
        let answer = client.job(ctx(), Some(hash.clone())).await.expect("the coordinator answers job()");
        assert!(answer.is_err(), "a worker with app hash {:?} was let in", hash.chars().take(20).collect::<String>());
    }
    let bogus = [
        AttemptProgress { task: TaskId::Map(u32::MAX), attempt: u64::MAX, units: u64::MAX },
        AttemptProgress { task: TaskId::Map(0), attempt: 1, units: u64::MAX },
        AttemptProgress { task: TaskId::Reduce(0), attempt: 0, units: 1 },
    ];
    // Memory figures are only shown: absurd ones are shown as they are.
    let absurd = WorkerMemory { peak_rss_bytes: Some(u64::MAX), budget_bytes: Some(0) };
    client.heartbeat(ctx(), bogus.to_vec(), absurd).await.expect("the coordinator answers a heartbeat");
    for report in forged_reports() {
        client.report_task(ctx(), report, absurd).await.expect("the coordinator answers a report");
    }
    for partition in [0, 1, u32::MAX] {
        for attempt in attempt_ids() {
            let answer = forged_upload(addr, Some(SECRET.as_bytes()), rogue, partition, attempt).await;
            assert!(answer.first() == Some(&1), "an upload of reduce {partition} attempt {attempt} was not refused: {answer:?}");
        }
    }
}

#[test]
fn a_token_holder_given_nothing_changes_nothing_and_cannot_flood_the_log() {
    let dir = TestDir::new("hostile-peer");
    let inputs = write_word_inputs(&dir, 3);
    let expected = reference_output(dir.path(), "wordcount", &inputs.iter().map(String::as_str).collect::<Vec<_>>());
    dir.write("token", SECRET);
    let started = dir.join("map-started");
    let started_param = format!("started_file={}", started.display());
    let gate = dir.join("reduce-gate");
    let gate_param = format!("reduce_gate_file={}", gate.display());
    let mut args = vec!["--token-file", "token", "--reduces", "2", "--summary-json", "summary.json", "--max-task-attempts", "2"];
    args.extend(["--param", "delay_ms=1000", "--param", "tick_ms=50", "--param", &started_param, "--param", &gate_param]);
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);
    let mut worker = start_worker_with("worker", dir.path(), &addr, "slowcount", &["--token-file", "token"]);
    wait_for_file(&started, "the first map");
    let rogue = Identity::new("rogue:1".into());
    // While maps run, and again while the reduces run (held at the gate,
    // their outputs begun).
    block_on(attack(&addr, &rogue));
    wait_until(
        || {
            std::fs::read_dir(dir.join(".mr-job"))
                .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with(".mr-tmp-"))))
        },
        || format!("a reduce's output never appeared\n{}", master.describe()),
    );
    block_on(attack(&addr, &rogue));
    std::fs::write(&gate, "").unwrap();
    master.expect_success();
    worker.expect_success();
    assert_same_output(&job_output(dir.path(), 2), &expected, &dir.listing());
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["unsuccessful_attempts"].as_array().map(Vec::len), Some(0), "{summary}");
    // Thousands of refused messages; a line per 10 s about them at most.
    let log = master.stderr();
    let refusal_lines = log.lines().filter(|l| l.contains("refused")).count();
    assert!((1..=6).contains(&refusal_lines), "{refusal_lines} lines about refusals:\n{}", master.describe());
    assert!(!log.contains("forged log line\n") && !log.contains('\u{1b}'), "a peer's text reached the log unescaped");
    assert!(!log.contains("panicked"), "{}", master.describe());
}

#[test]
fn a_job_without_app_runs_only_its_first_workers_app() {
    let dir = TestDir::new("app-pin");
    let inputs = write_word_inputs(&dir, 2);
    let expected = reference_output(dir.path(), "wordcount", &inputs.iter().map(String::as_str).collect::<Vec<_>>());
    let started = dir.join("map-started");
    let started_param = format!("started_file={}", started.display());
    let gate = dir.join("reduce-gate");
    let gate_param = format!("reduce_gate_file={}", gate.display());
    let mut args = vec!["--reduces", "2", "--param", &started_param, "--param", &gate_param];
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);
    let mut first = start_worker("first", dir.path(), &addr, "slowcount");
    wait_for_file(&started, "the first map");
    let mut other = start_worker("other", dir.path(), &addr, "indexer");
    let refused = other.expect_exit_code(1);
    assert!(refused.contains("is not the app of the job's first worker") && refused.contains("start it with the same build"), "{refused}");
    std::fs::write(&gate, "").unwrap();
    master.expect_success();
    first.expect_success();
    assert_same_output(&job_output(dir.path(), 2), &expected, &dir.listing());
}
