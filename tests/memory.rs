//! A worker's memory budget (`mr-worker --memory`): a worker with a small
//! budget finishes a job whose map output is far larger than the budget
//! (a large vocabulary, long lines, a compressed input larger than a
//! slot's share) within it, with the reference output; the same worker
//! without a budget goes well past it, so the budget is what holds it.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use mapreduce::memory_budget::minimum_budget;

/// The budget under test: the least two slots may have, and 16 MiB more
/// (72 MiB in a release build, whose processes are smaller than a debug
/// build's).
const BUDGET: u64 = minimum_budget(2) + (16 << 20);

/// `words` words of a vocabulary of about a million, 12 to a line:
/// nearly every word is seen once or twice, so a combiner saves little.
fn large_vocabulary(words: usize, seed: u64) -> String {
    let mut state = seed;
    let mut text = String::with_capacity(words * 9);
    for i in 0..words {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut n = (state >> 33) % 1_000_000;
        // Letters only: the word count splits at anything else.
        loop {
            text.push(char::from(b'a' + (n % 26) as u8));
            n /= 26;
            if n == 0 {
                break;
            }
        }
        text.push(if i % 12 == 11 { '\n' } else { ' ' });
    }
    text
}

/// The summary's one worker: its peak resident memory and its budget.
fn worker_memory(summary_path: &std::path::Path) -> (u64, Option<u64>) {
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(summary_path).unwrap()).unwrap();
    let workers = summary["workers"].as_array().expect("the summary lists the workers");
    assert_eq!(workers.len(), 1, "{summary}");
    let peak = workers[0]["peak_rss_bytes"].as_u64().expect("the worker said its peak");
    (peak, workers[0]["budget_bytes"].as_u64())
}

#[test]
fn a_worker_within_a_small_budget_finishes_a_large_vocabulary_job_within_it() {
    let dir = TestDir::new("memory-budget");
    dir.write("in/vocabulary-0.txt", large_vocabulary(3_000_000, 1));
    dir.write("in/vocabulary-1.txt", large_vocabulary(3_000_000, 2));
    // Lines of ~1 MB, longer than a piece of a split read in pieces.
    let long_lines: String = (0..6).map(|i| large_vocabulary(110_000, 10 + i).replace('\n', " ") + "\n").collect();
    dir.write("in/long-lines.txt", long_lines);
    // Compressed, larger than a slot's share holds whole.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(large_vocabulary(1_500_000, 3).as_bytes()).unwrap();
    dir.write("in/packed.txt.gz", gz.finish().unwrap());
    let expected = reference_output(dir.path(), "wordcount", &["in"]);

    for (budget, overwrite) in [(BUDGET.to_string(), false), ("0".to_string(), true)] {
        let summary = dir.join(&format!("summary-{budget}.json"));
        let mut args = vec!["--reduces", "3", "--split-size", "16M", "--summary-json", summary.to_str().unwrap()];
        if overwrite {
            args.push("--overwrite");
        }
        args.push("in");
        let (mut master, addr) = start_master(dir.path(), &args);
        let mut worker = start_worker_with("worker", dir.path(), &addr, "wordcount", &["--slots", "2", "--memory", &budget]);
        master.wait(Duration::from_secs(120));
        worker.expect_success();
        master.expect_success();
        assert_same_output(&job_output(dir.path(), 3), &expected, &format!("--memory {budget}\n{}", dir.listing()));
        let (peak, said_budget) = worker_memory(&summary);
        eprintln!("--memory {budget}: peak {:.1} MiB", peak as f64 / 1048576.0);
        if budget == "0" {
            // The defence is the budget: without it the same job's buffers
            // (64 MiB a map by default) and mapped inputs go far past it.
            assert_eq!(said_budget, None);
            assert!(peak > BUDGET + (32 << 20), "without a budget the worker peaked at only {} MiB", peak >> 20);
        } else {
            assert_eq!(said_budget, Some(BUDGET));
            assert!(peak <= BUDGET, "the worker peaked at {:.1} MiB, over its {} MiB budget", peak as f64 / 1048576.0, BUDGET >> 20);
            // A real measure: the processes' own code and runtime, at least.
            assert!(peak > 8 << 20, "a peak of {peak} bytes is not a measure");
        }
    }
}

#[test]
fn a_budget_too_small_for_the_slots_is_refused_naming_the_least_that_works() {
    let dir = TestDir::new("memory-too-small");
    let mut cmd = std::process::Command::new(worker_bin());
    cmd.args(["--master", "127.0.0.1:1", "--slots", "4", "--memory", "40M", "wordcount"]);
    let mut worker = Proc::spawn("worker", cmd, dir.path());
    let stderr = worker.expect_exit_code(2);
    assert!(stderr.contains("mr-worker: error: --memory 40 MiB is too small for 4 slots") && stderr.contains("or fewer --slots"), "{stderr}");
}
