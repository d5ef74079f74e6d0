//! Whole jobs with real `mr-master` and `mr-worker` processes, compared
//! with `mr-sequential`.

mod common;

use std::time::Duration;

use common::*;

/// Inputs with the awkward cases: empty, invalid UTF-8, no trailing newline,
/// non-ASCII letters and letter-like non-letters.
fn awkward_inputs(dir: &TestDir) -> Vec<String> {
    let files: [(&str, &[u8]); 5] = [
        ("data/empty.txt", b""),
        ("data/invalid.txt", b"caf\xc3\xa9 \xff\xfe bad\xc3(bytes \xed\xa0\x80 end"),
        ("data/unicode.txt", "Straße 東京 Ⅻ किताब tʰe ǅemal\nno newline at end".as_bytes()),
        ("data/sub/plain.txt", b"the quick brown fox\njumps over the lazy dog\nthe end\n"),
        ("data/sub/more.txt", b"The the THE fox, fox; dog's"),
    ];
    for (name, contents) in files {
        dir.write(name, contents);
    }
    vec!["data".to_string()]
}

#[test]
fn wordcount_matches_the_reference_on_awkward_inputs() {
    let dir = TestDir::new("awkward");
    let inputs = awkward_inputs(&dir);
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let expected = reference_output(dir.path(), "wordcount", &inputs);
    assert!(String::from_utf8_lossy(&expected).contains("café 1\n"), "reference looks wrong");

    let mut args = vec!["--reduces", "3"];
    args.extend(&inputs);
    let (mut master, addr) = start_master(dir.path(), &args);
    let mut workers: Vec<_> = (0..2).map(|i| start_worker(&format!("worker{i}"), dir.path(), &addr, "wordcount")).collect();
    master.expect_success();
    for w in &mut workers {
        w.expect_success();
    }
    assert!(master.stdout().starts_with("listening on 127.0.0.1:"), "{}", master.describe());
    assert_same_output(&job_output(dir.path(), 3), &expected, &dir.listing());
    assert_eq!(stray_files(dir.path()), vec!["data".to_string()], "only outputs may be left behind");
}

#[test]
fn indexer_names_documents_as_given_even_from_a_worker_elsewhere() {
    let dir = TestDir::new("indexer");
    awkward_inputs(&dir);
    // A relative directory and a relative file, resolved against the master's
    // directory; the worker runs in a different directory.
    let inputs = ["data/sub", "data/unicode.txt"];
    let expected = reference_output(dir.path(), "indexer", &inputs);
    assert!(
        String::from_utf8_lossy(&expected).contains("fox 2 data/sub/more.txt,data/sub/plain.txt\n"),
        "reference looks wrong:\n{}",
        String::from_utf8_lossy(&expected)
    );
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let out = dir.join("out");
    let mut args = vec!["--output-dir", "out", "--reduces", "4"];
    args.extend(&inputs);
    let (mut master, addr) = start_master(dir.path(), &args);
    let mut worker = start_worker("worker", &elsewhere, &addr, "indexer");
    master.expect_success();
    worker.expect_success();
    assert_same_output(&job_output(&out, 4), &expected, &dir.listing());
    assert!(stray_files(&out).is_empty(), "left behind in the output dir: {:?}", stray_files(&out));
}

#[test]
fn more_reduces_than_keys_gives_empty_files_and_stale_outputs_go() {
    let dir = TestDir::new("empty-partitions");
    dir.write("one.txt", "solo");
    // Left by an earlier job with more reduces; a file merely named alike stays.
    dir.write("mr-out-7", "stale 1\n");
    dir.write("mr-out-12", "stale 2\n");
    dir.write("mr-out-notes", "mine");
    let (mut master, addr) = start_master(dir.path(), &["--reduces", "5", "one.txt"]);
    let mut worker = start_worker("worker", dir.path(), &addr, "wordcount");
    master.expect_success();
    worker.expect_success();
    assert_eq!(job_output(dir.path(), 5), b"solo 1\n");
    let empty = (0..5).filter(|r| std::fs::metadata(dir.join(&format!("mr-out-{r}"))).unwrap().len() == 0).count();
    assert_eq!(empty, 4);
    assert!(!dir.join("mr-out-7").exists() && !dir.join("mr-out-12").exists(), "{}", dir.listing());
    assert_eq!(std::fs::read(dir.join("mr-out-notes")).unwrap(), b"mine");
}

#[test]
fn a_killed_worker_and_slow_attempts_still_give_the_exact_output() {
    let dir = TestDir::new("killed");
    // early_exit's reduce takes 3 s for keys containing "tom" or "sherlock",
    // longer than the 1 s task timeout: those attempts are given away again,
    // and the first to finish wins.
    for name in ["tom.txt", "sherlock.txt", "plain-a.txt", "plain-b.txt"] {
        dir.write(&format!("in/{name}"), name);
    }
    let expected = reference_output(dir.path(), "early_exit", &["in"]);
    let (mut master, addr) = start_master(dir.path(), &["--task-timeout", "1", "--reduces", "3", "in"]);
    let mut doomed = start_worker("doomed", dir.path(), &addr, "early_exit");
    std::thread::sleep(Duration::from_millis(1500));
    // Killed wherever it is (most likely inside a 3 s reduce).
    doomed.kill();
    let mut survivors: Vec<_> = (0..2).map(|i| start_worker(&format!("worker{i}"), dir.path(), &addr, "early_exit")).collect();
    master.expect_success();
    for w in &mut survivors {
        w.expect_success();
    }
    assert_same_output(&job_output(dir.path(), 3), &expected, &dir.listing());
    assert_eq!(stray_files(dir.path()), vec!["in".to_string()]);
}

#[test]
fn a_panicking_map_is_retried_then_stops_the_job_with_a_clear_error() {
    let dir = TestDir::new("panic");
    dir.write("good.txt", "fine words here");
    dir.write("bad.txt", "this one says PANIC-IN-MAP");
    let (mut master, addr) = start_master(dir.path(), &["--max-task-failures", "2", "good.txt", "bad.txt"]);
    // One worker survives both panics: they are caught at the plugin boundary.
    let mut worker = start_worker("worker", dir.path(), &addr, &plugin("faulty").to_string_lossy());
    let master_err = master.expect_failure();
    assert!(
        master_err.contains("map task 1 (input bad.txt) failed 2 times; last error: app panicked: deliberate panic in map of bad.txt"),
        "{}",
        master.describe()
    );
    let worker_err = worker.expect_failure();
    assert!(worker_err.contains("the coordinator stopped the job"), "{}", worker.describe());
    assert!(!dir.join("mr-out-0").exists(), "no output from a failed job");
    let mut left = stray_files(dir.path());
    left.sort();
    assert_eq!(left, ["bad.txt", "good.txt"], "intermediate files must be removed after a failed job");
}

#[test]
fn an_app_error_in_map_and_a_panic_in_reduce_are_reported() {
    let dir = TestDir::new("app-error");
    dir.write("bad.txt", "ERROR-IN-MAP");
    let (mut master, addr) = start_master(dir.path(), &["--max-task-failures", "1", "bad.txt"]);
    let mut worker = start_worker("worker", dir.path(), &addr, &plugin("faulty").to_string_lossy());
    let err = master.expect_failure();
    assert!(err.contains("map task 0 (input bad.txt) failed 1 times; last error: app error: deliberate error in map of bad.txt"), "{}", master.describe());
    worker.expect_failure();

    let dir = TestDir::new("reduce-panic");
    dir.write("in.txt", "a panicinreduce b");
    let (mut master, addr) = start_master(dir.path(), &["--max-task-failures", "2", "--reduces", "1", "in.txt"]);
    let mut worker = start_worker("worker", dir.path(), &addr, &plugin("faulty").to_string_lossy());
    let err = master.expect_failure();
    assert!(err.contains("reduce task 0 (partition 0) failed 2 times; last error: app panicked: deliberate panic in reduce"), "{}", master.describe());
    worker.expect_failure();
}
