//! Who may take part in a job: the shared secret checked in every
//! connection's handshake, the refusal to listen beyond loopback without
//! one, and reports taken only from the worker an attempt was given to.

mod common;

use common::*;
use mapreduce::handshake::{HandshakeError, Identity};
use mapreduce::map_output::MapOutputLocation;
use mapreduce::rpc::{CoordinatorClient, TaskId, TaskOutcome, TaskReport};
use mapreduce::runfile::RunRange;
use serde_json::Value;

const SECRET: &str = "correct horse battery staple";

fn summary(dir: &TestDir) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn a_worker_with_a_wrong_secret_is_refused_with_a_line_on_both_sides() {
    let dir = TestDir::new("wrong-secret");
    let inputs = write_word_inputs(&dir, 2);
    let expected = reference_output(dir.path(), "wordcount", &inputs.iter().map(String::as_str).collect::<Vec<_>>());
    dir.write("token", format!("{SECRET}\n"));
    dir.write("other-token", "a different secret, just as long\n");
    let mut args = vec!["--token-file", "token", "--reduces", "2"];
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);

    let mut wrong = start_worker_with("wrong", dir.path(), &addr, "wordcount", &["--token-file", "other-token"]);
    let wrong_err = wrong.expect_exit_code(1);
    assert!(wrong_err.contains("wrong secret"), "{wrong_err}");
    let mut none = start_worker("none", dir.path(), &addr, "wordcount");
    let none_err = none.expect_exit_code(1);
    assert!(none_err.contains("requires a shared secret") && none_err.contains("--token-file"), "{none_err}");
    // The master logged the refusal, and goes on.
    let refused = master.stderr();
    assert!(refused.contains("refused a connection from 127.0.0.1:") && refused.contains("wrong secret"), "{}", master.describe());

    let mut right = start_worker_with("right", dir.path(), &addr, "wordcount", &["--token-file", "token"]);
    master.expect_success();
    right.expect_success();
    assert_same_output(&job_output(dir.path(), 2), &expected, &dir.listing());
}

#[test]
fn a_master_without_a_secret_will_not_listen_beyond_loopback() {
    let dir = TestDir::new("no-secret-wide");
    let inputs = write_word_inputs(&dir, 1);
    let mut cmd = std::process::Command::new(master_bin());
    cmd.args(["--listen", "0.0.0.0:0", "--output-dir", "out"]).args(&inputs);
    let mut master = Proc::spawn("master", cmd, dir.path());
    let err = master.expect_failure();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("needs a shared secret") && lines[0].contains("--token-file"), "{err}");
    assert!(!dir.join("out").exists(), "the refused master created its output directory");
}

#[test]
fn strangers_and_impostors_change_nothing() {
    // Maps take 1.5 s each, so the impostors act while the real worker
    // holds attempts. The master has a secret: a process without it, or
    // with another, does not get past the handshake.
    let dir = TestDir::new("impostors");
    let inputs = write_word_inputs(&dir, 3);
    let expected = reference_output(dir.path(), "wordcount", &inputs.iter().map(String::as_str).collect::<Vec<_>>());
    dir.write("token", SECRET);
    let started = dir.join("map-started");
    let started_param = format!("started_file={}", started.display());
    let mut args = vec!["--token-file", "token", "--reduces", "2", "--summary-json", "summary.json"];
    args.extend(["--param", "delay_ms=1500", "--param", "tick_ms=50", "--param", &started_param]);
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);
    let mut worker = start_worker_with("worker", dir.path(), &addr, "slowcount", &["--token-file", "token"]);
    wait_for_file(&started, "the first map");

    block_on(async {
        let stranger = Identity::new("stranger:1".into());
        let no_secret = handshaken(&addr, None, &stranger).await;
        assert!(matches!(no_secret, Err(HandshakeError::SecretRequired)), "{no_secret:?}");
        let wrong = handshaken(&addr, Some(b"not the job's secret at all"), &stranger).await;
        assert!(matches!(&wrong, Err(HandshakeError::Refused(why)) if why.contains("wrong secret")), "{wrong:?}");
        // Frames of the RPC protocol without a handshake are not read as calls.
        let forged = forged_reports(&dir);
        let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let bytes = serde_json::to_vec(&forged).unwrap();
        let _ = tokio::io::AsyncWriteExt::write_all(&mut raw, &(bytes.len() as u32).to_be_bytes()).await;
        let _ = tokio::io::AsyncWriteExt::write_all(&mut raw, &bytes).await;
        // One who knows the secret may not take the real worker's id.
        let impostor = Identity::new(worker_id(&worker));
        let taken = handshaken(&addr, Some(SECRET.as_bytes()), &impostor).await;
        assert!(matches!(&taken, Err(HandshakeError::Refused(why)) if why.contains("belongs to another process")), "{taken:?}");
    });
    master.expect_success();
    worker.expect_success();
    assert_same_output(&job_output(dir.path(), 2), &expected, &dir.listing());
    assert_eq!(summary(&dir)["unsuccessful_attempts"].as_array().map(Vec::len), Some(0), "{}", summary(&dir));
}

#[test]
fn reports_count_only_from_the_worker_an_attempt_was_given_to() {
    // No secret (loopback): any local process may connect, as a worker of
    // its own. It may not report on attempts given to another: forged
    // failures would otherwise stop the job, and a forged completion would
    // point reducers at a file of its choosing.
    let dir = TestDir::new("foreign-reports");
    let inputs = write_word_inputs(&dir, 3);
    let expected = reference_output(dir.path(), "wordcount", &inputs.iter().map(String::as_str).collect::<Vec<_>>());
    let started = dir.join("map-started");
    let started_param = format!("started_file={}", started.display());
    let gate = dir.join("reduce-gate");
    let gate_param = format!("reduce_gate_file={}", gate.display());
    let mut args = vec!["--reduces", "2", "--summary-json", "summary.json", "--max-task-attempts", "2"];
    args.extend(["--param", "delay_ms=1500", "--param", "tick_ms=50", "--param", &started_param, "--param", &gate_param]);
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);
    let mut worker = start_worker("worker", dir.path(), &addr, "slowcount");
    wait_for_file(&started, "the first map");

    block_on(async {
        let rogue = Identity::new("rogue:1".into());
        let stream = handshaken(&addr, None, &rogue).await.unwrap();
        let transport = tarpc::serde_transport::Transport::from((stream, tarpc::tokio_serde::formats::Bincode::default()));
        let client = CoordinatorClient::new(tarpc::client::Config::default(), transport).spawn();
        for report in forged_reports(&dir) {
            client.report_task(tarpc::context::current(), report, Default::default()).await.unwrap();
        }
        // Nor send an output for a reduce attempt of another's: tried while
        // the worker's reduce runs (held at the gate, its output begun).
        wait_until(
            || {
                std::fs::read_dir(dir.join(".mr-job"))
                    .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with(".mr-tmp-"))))
            },
            || "a reduce's output never appeared".to_owned(),
        );
        for (partition, attempt) in (0..2u32).flat_map(|r| (1..=12u64).map(move |a| (r, a))) {
            let answer = forged_upload(&addr, None, &rogue, partition, attempt).await;
            assert!(answer.starts_with(&[1]) && String::from_utf8_lossy(&answer).contains("was not given to this worker"), "{answer:?}");
        }
        std::fs::write(&gate, "").unwrap();
    });
    master.expect_success();
    worker.expect_success();
    assert_same_output(&job_output(dir.path(), 2), &expected, &dir.listing());
    assert_eq!(summary(&dir)["unsuccessful_attempts"].as_array().map(Vec::len), Some(0), "{}", summary(&dir));
    let log = master.stderr();
    assert!(log.contains("refused a report of map task 0 attempt 1 from rogue:1: the attempt was given to"), "{}", master.describe());
}

/// Failures for the job's first attempts, twice over (enough to stop a job
/// of `--max-task-attempts 2`), and a completion naming a file outside the
/// job directory.
fn forged_reports(dir: &TestDir) -> Vec<TaskReport> {
    let failures = (1..=4).flat_map(|attempt| {
        (0..3).map(move |m| TaskReport { task: TaskId::Map(m), attempt, outcome: TaskOutcome::Failed { error: "forged".into(), record: None } })
    });
    let elsewhere = MapOutputLocation::SharedFile { path: dir.join("in-0.txt"), range: RunRange { offset: 0, len: 10 } };
    let completion = TaskReport {
        task: TaskId::Map(0),
        attempt: 1,
        outcome: TaskOutcome::MapDone { outputs: vec![(0, elsewhere)], counters: Default::default() },
    };
    failures.chain(failures_twice()).chain(std::iter::once(completion)).collect()
}

fn failures_twice() -> impl Iterator<Item = TaskReport> {
    (1..=4).map(|attempt| TaskReport { task: TaskId::Map(0), attempt, outcome: TaskOutcome::Failed { error: "forged again".into(), record: None } })
}
