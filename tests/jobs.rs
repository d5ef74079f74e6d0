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
    // Never replaced silently: refused, naming what is there.
    let mut refused = std::process::Command::new(master_bin());
    refused.args(["--listen", "127.0.0.1:0", "--reduces", "5", "one.txt"]);
    let error = Proc::spawn("refused", refused, dir.path()).expect_failure();
    assert!(
        error.contains("output directory . holds an earlier job's outputs (mr-out-12, ...): give another --output-dir, or --overwrite"),
        "{error}"
    );
    assert_eq!(std::fs::read(dir.join("mr-out-7")).unwrap(), b"stale 1\n");
    let (mut master, addr) = start_master(dir.path(), &["--reduces", "5", "--overwrite", "one.txt"]);
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
    // without a sign of progress: within the 5 s task timeout, so slow, not
    // hung (a longer silence would be given up, and its task process
    // killed, as Hadoop kills a task past mapreduce.task.timeout).
    for name in ["tom.txt", "sherlock.txt", "plain-a.txt", "plain-b.txt"] {
        dir.write(&format!("in/{name}"), name);
    }
    let expected = reference_output(dir.path(), "early_exit", &["in"]);
    let (mut master, addr) = start_master(dir.path(), &["--task-timeout", "5", "--reduces", "3", "in"]);
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
        master_err.contains(
            "map task 1 (input bad.txt) did not succeed in 2 attempts: attempt 2 on WORKER failed: app panicked: deliberate panic in map of bad.txt; \
             attempt 3 on WORKER failed: app panicked: deliberate panic in map of bad.txt"
                .replace("WORKER", &worker_id(&worker))
                .as_str()
        ),
        "{}",
        master.describe()
    );
    let worker_err = worker.expect_exit_code(3);
    assert!(worker_err.contains("the coordinator stopped the job"), "{}", worker.describe());
    assert!(!dir.join("mr-out-0").exists() && !dir.join("_SUCCESS").exists(), "no output from a failed job");
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
    assert!(err.contains("map task 0 (input bad.txt) did not succeed in 1 attempt: attempt 1 on "), "{}", master.describe());
    assert!(err.contains(" failed: app error: deliberate error in map of bad.txt"), "{}", master.describe());
    worker.expect_failure();

    let dir = TestDir::new("reduce-panic");
    dir.write("in.txt", "a panicinreduce b");
    let (mut master, addr) = start_master(dir.path(), &["--max-task-failures", "2", "--reduces", "1", "in.txt"]);
    let mut worker = start_worker("worker", dir.path(), &addr, &plugin("faulty").to_string_lossy());
    let err = master.expect_failure();
    assert!(err.contains("reduce task 0 (partition 0) did not succeed in 2 attempts: attempt "), "{}", master.describe());
    let error_line = err.lines().find(|l| l.starts_with("mr-master: error:")).unwrap_or_default();
    assert_eq!(error_line.matches("failed: app panicked: deliberate panic in reduce").count(), 2, "{}", master.describe());
    worker.expect_failure();
}

/// Runs a whole job in `dir` with `workers` workers of `app`; returns its
/// sorted output after checking each file is sorted by key.
fn run_job(dir: &TestDir, app: &str, workers: usize, reduces: u32, flags: &[&str], inputs: &[&str]) -> Vec<u8> {
    run_job_to_completion(dir, app, workers, reduces, flags, inputs);
    job_output(dir.path(), reduces)
}

/// Runs a whole job in `dir` and waits for every process to succeed.
fn run_job_to_completion(dir: &TestDir, app: &str, workers: usize, reduces: u32, flags: &[&str], inputs: &[&str]) {
    for r in 0..reduces {
        let _ = std::fs::remove_file(dir.join(&format!("mr-out-{r}")));
    }
    let reduces_text = reduces.to_string();
    let mut args = vec!["--reduces", &reduces_text];
    args.extend(flags);
    args.extend(inputs);
    let (mut master, addr) = start_master(dir.path(), &args);
    let mut running: Vec<_> = (0..workers).map(|i| start_worker(&format!("worker{i}"), dir.path(), &addr, app)).collect();
    master.expect_success();
    for w in &mut running {
        // A worker that starts after a short job is over (on a loaded
        // machine) finds no coordinator: it took no part, and that is all.
        let status = w.wait(Duration::from_secs(60));
        let never_connected = !w.stderr().contains("connected") && w.stderr().contains("could not reach the coordinator");
        assert!(status.success() || (status.code() == Some(1) && never_connected), "{}", w.describe());
    }
}

/// Text with a skewed vocabulary, so some keys have many values.
fn skewed_text(words: usize, seed: u64) -> String {
    let mut state = seed;
    let mut text = String::new();
    for i in 0..words {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let rank = (state >> 33) % 1000;
        // Zipf-ish: small ranks are far more frequent.
        let word = rank * rank / 1000;
        text.push_str(&format!("w{word}x "));
        if i % 12 == 11 {
            text.push('\n');
        }
    }
    text
}

#[test]
fn combiner_on_and_off_and_spilling_all_give_the_reference_output() {
    let dir = TestDir::new("combiner");
    for i in 0..4 {
        dir.write(&format!("in/part-{i}.txt"), skewed_text(40_000, i));
    }
    let expected = reference_output(dir.path(), "wordcount", &["in"]);
    // Default buffer (no spill), a tiny buffer (many spills), each with and
    // without the combiner.
    for flags in [&[][..], &["--no-combine"], &["--map-buffer", "16K"], &["--map-buffer", "16K", "--no-combine"]] {
        let output = run_job(&dir, "wordcount", 2, 3, flags, &["in"]);
        assert_same_output(&output, &expected, &format!("flags {flags:?}\n{}", dir.listing()));
    }
}

#[test]
fn one_key_with_millions_of_values_streams_through_reduce() {
    let dir = TestDir::new("hot-key");
    // Two million occurrences of one word, and a few others, in two files.
    let hot = "hot\n".repeat(1_000_000);
    dir.write("in/a.txt", format!("{hot}cold\n"));
    dir.write("in/b.txt", format!("warm {hot}"));
    // No combiner and a small buffer: the reduce gets every single value,
    // from many runs, far more than the map buffer holds.
    let output = run_job(&dir, "wordcount", 2, 1, &["--no-combine", "--map-buffer", "1M"], &["in"]);
    assert_eq!(String::from_utf8(output).unwrap(), "cold 1\nhot 2000000\nwarm 1\n");
}

#[test]
fn split_and_unsplit_runs_agree_with_the_reference() {
    let dir = TestDir::new("splits");
    // Long words and long lines, so that split boundaries fall inside words
    // and inside lines; one file smaller than a split stays whole.
    let long_words = "supercalifragilistic antidisestablishmentarianism ".repeat(3000);
    dir.write("in/long-lines.txt", format!("{long_words}\n{}\nend", skewed_text(20_000, 7)));
    dir.write("in/small.txt", "tiny file");
    dir.write("in/no-newlines.txt", long_words.trim_end());
    for (app, reduces) in [("wordcount", 3), ("indexer", 2)] {
        let expected = reference_output(dir.path(), app, &["in"]);
        for split in ["0", "4K", "1000"] {
            let output = run_job(&dir, app, 2, reduces, &["--split-size", split, "--overwrite"], &["in"]);
            assert_same_output(&output, &expected, &format!("{app} with --split-size {split}\n{}", dir.listing()));
        }
        if app == "indexer" {
            // Whole documents, each named once, although mapped in pieces.
            let text = String::from_utf8(expected).unwrap();
            let line = text.lines().find(|l| l.starts_with("antidisestablishmentarianism ")).unwrap();
            let in_dir = |name: &str| std::path::Path::new("in").join(name).to_string_lossy().into_owned();
            assert_eq!(line, format!("antidisestablishmentarianism 2 {},{}", in_dir("long-lines.txt"), in_dir("no-newlines.txt")));
        }
    }
}

#[test]
fn one_worker_with_several_slots_runs_the_whole_job() {
    let dir = TestDir::new("slots");
    for i in 0..6 {
        dir.write(&format!("in/{i}.txt"), skewed_text(5_000, 100 + i));
    }
    let expected = reference_output(dir.path(), "wordcount", &["in"]);
    let (mut master, addr) = start_master(dir.path(), &["--reduces", "4", "--split-size", "8K", "in"]);
    let mut cmd = std::process::Command::new(worker_bin());
    cmd.args(["--master", &addr, "--slots", "4", "wordcount"]);
    let mut worker = Proc::spawn("worker", cmd, dir.path());
    master.expect_success();
    worker.expect_success();
    assert_same_output(&job_output(dir.path(), 4), &expected, &dir.listing());
}

#[test]
fn compressed_and_plain_intermediates_give_the_same_output() {
    let dir = TestDir::new("compress");
    for i in 0..3 {
        dir.write(&format!("in/{i}.txt"), skewed_text(20_000, 40 + i));
    }
    let expected = reference_output(dir.path(), "wordcount", &["in"]);
    for codec in ["none", "lz4"] {
        let output = run_job(&dir, "wordcount", 2, 2, &["--compress", codec, "--no-combine", "--map-buffer", "64K"], &["in"]);
        assert_same_output(&output, &expected, &format!("--compress {codec}"));
    }
}

#[test]
fn corrupt_and_truncated_map_output_is_detected_and_the_map_rerun() {
    use mapreduce::partition::partition_of;
    let dir = TestDir::new("corrupt");
    // early_exit emits each input's name as its key and sleeps 3 s in the
    // reduce of a name containing "tom". Pick names so that the slow key is
    // in partition 0 (reduced first) and two others are in partition 1,
    // whose runs are damaged while partition 0's reduce sleeps.
    let in_partition =
        |p: u32, prefix: &str| (0..1000).map(|i| format!("in/{prefix}{i}.txt")).find(|name| partition_of(name.as_bytes(), 2) == p).unwrap();
    let slow = in_partition(0, "tom");
    let (flipped, cut) = (in_partition(1, "a"), in_partition(1, "b"));
    for name in [&slow, &flipped, &cut] {
        dir.write(name, "x");
    }
    let expected = reference_output(dir.path(), "early_exit", &["in"]);
    // One worker with one slot: reduce 1 starts only after reduce 0's 3 s.
    let (mut master, addr) = start_master(dir.path(), &["--reduces", "2", "in"]);
    let mut worker = start_worker_with("worker", dir.path(), &addr, "early_exit", &["--slots", "1"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (mut flipped_done, mut cut_done) = (false, false);
    while !(flipped_done && cut_done) {
        assert!(std::time::Instant::now() < deadline, "map runs never appeared\n{}", dir.listing());
        for entry in walkdir::WalkDir::new(dir.path()).into_iter().filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Sorted inputs: map 0 is the a* file, map 1 the b* file.
            // Each map's output is one file; these maps emit to partition 1 only.
            if name.starts_with("map-0.") && name.ends_with(".runs") && !flipped_done {
                let mut bytes = std::fs::read(entry.path()).unwrap();
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0xff;
                std::fs::write(entry.path(), bytes).unwrap();
                flipped_done = true;
            }
            if name.starts_with("map-1.") && name.ends_with(".runs") && !cut_done {
                let bytes = std::fs::read(entry.path()).unwrap();
                std::fs::write(entry.path(), &bytes[..bytes.len() - 3]).unwrap();
                cut_done = true;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    master.expect_success();
    worker.expect_success();
    assert_same_output(&job_output(dir.path(), 2), &expected, &master.describe());
    let log = master.stderr();
    assert!(log.contains("map task 0's output is unreadable, re-running it") && log.contains("is corrupt"), "{log}");
    assert!(log.contains("map task 1's output is unreadable, re-running it") && log.contains("is truncated"), "{log}");
}

#[test]
fn an_input_that_shrinks_while_its_map_reads_it_fails_the_job_naming_it() {
    // Inputs are mapped into memory; truncating one under its mapping must
    // not kill the worker (SIGBUS), and the job must not succeed on a mix
    // of the file's two versions: every attempt fails, naming the change.
    let dir = TestDir::new("shrinks");
    let lines: Vec<String> = (0..40_000).map(|i| format!("line {i} of words w{} v{}\n", i % 97, i % 13)).collect();
    let input = dir.write("in/big.txt", lines.concat());
    let planned_size = std::fs::metadata(&input).unwrap().len();
    let kept: String = lines[..500].concat();
    let started = dir.join("map-started");
    let started_param = format!("started_file={}", started.display());
    let (mut master, addr) = start_master(dir.path(), &["--reduces", "2", "--param", "delay_ms=1500", "--param", &started_param, "in"]);
    let mut worker = start_worker("worker", dir.path(), &addr, &plugin("slowcount").to_string_lossy());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !started.exists() {
        assert!(std::time::Instant::now() < deadline, "the map never started\n{}", master.describe());
        std::thread::sleep(Duration::from_millis(10));
    }
    // The map is asleep with its input mapped: cut the file under it.
    std::fs::OpenOptions::new().write(true).open(&input).unwrap().set_len(kept.len() as u64).unwrap();
    let err = master.expect_failure();
    worker.expect_exit_code(3);
    let error_line = err.lines().find(|l| l.starts_with("mr-master: error:")).unwrap_or_default();
    assert!(error_line.contains("map task 0 (input in/big.txt) did not succeed in 4 attempts"), "{}", master.describe());
    assert!(error_line.contains("the file shrank while the map read it"), "{}", master.describe());
    let changed = format!("changed since the job was planned: {planned_size} bytes then, {} now", kept.len());
    assert!(error_line.contains(&changed), "{changed}\n{}", master.describe());
    assert!(!dir.join("mr-out-0").exists(), "no output from a failed job");
}

/// All `mr-out-*` files of `dir`, concatenated in partition order.
fn concatenated_outputs(dir: &std::path::Path, reduces: u32) -> Vec<u8> {
    (0..reduces).flat_map(|r| std::fs::read(dir.join(format!("mr-out-{r}"))).unwrap()).collect()
}

#[test]
fn grep_matches_gnu_grep_on_the_same_files() {
    let dir = TestDir::new("grep");
    dir.write("in/a.txt", skewed_text(30_000, 3));
    let mut b = format!("needle at start\n{}\nneeeedle", skewed_text(10_000, 4)).into_bytes();
    b.extend_from_slice(b"\xff\nlast needle");
    dir.write("in/b.txt", b);
    dir.write("in/c.txt", "nothing here\n");
    let pattern = "ne+dle|w1[0-3]x w2";
    let flags = ["--param", &format!("pattern={pattern}"), "--split-size", "16K"];
    run_job_to_completion(&dir, "grep", 2, 3, &flags, &["in"]);
    // grep writes `file:line`, not key-value lines: compare the line sets.
    let output = sorted_lines(&concatenated_outputs(dir.path(), 3));
    let gnu = std::process::Command::new("grep")
        .env("LC_ALL", "C")
        .args(["-a", "-H", "-E", pattern, "in/a.txt", "in/b.txt", "in/c.txt"])
        .current_dir(dir.path())
        .output()
        .expect("GNU grep runs");
    assert!(gnu.status.success(), "grep found nothing? {gnu:?}");
    let expected = sorted_lines(&gnu.stdout);
    assert!(expected.len() > 1000, "the pattern should match many lines");
    assert_same_output(&output, &expected, "grep job vs GNU grep -H");
    // The reference run agrees as well.
    let reference = {
        let out = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(sequential_bin());
        cmd.arg("--output-dir").arg(out.path()).args(["--param", &format!("pattern={pattern}"), "grep", "in"]);
        Proc::spawn("sequential", cmd, dir.path()).expect_success();
        sorted_lines(&std::fs::read(out.path().join("mr-out-0")).unwrap())
    };
    assert_same_output(&reference, &expected, "mr-sequential grep vs GNU grep -H");
}

#[test]
fn grep_without_a_pattern_stops_the_job_naming_the_parameter() {
    let dir = TestDir::new("grep-no-pattern");
    dir.write("in.txt", "x");
    let (mut master, addr) = start_master(dir.path(), &["--max-task-failures", "1", "in.txt"]);
    let mut worker = start_worker("worker", dir.path(), &addr, "grep");
    let err = master.expect_failure();
    assert!(err.contains("the app could not start for this job: app error: missing job parameter 'pattern'"), "{}", master.describe());
    worker.expect_failure();
}

#[test]
fn sort_output_files_in_order_are_the_sorted_input_lines() {
    let dir = TestDir::new("sort");
    dir.write("in/a.txt", skewed_text(30_000, 11));
    dir.write("in/b.txt", format!("zzz last\n\nAAA first\n{}\nno newline", skewed_text(10_000, 12)));
    // Ends in many blank lines: empty records last in the map's buffer.
    dir.write("in/c.txt", [&b"dup\ndup\ndup\n\xc3\xa9t\xc3\xa9\n\xff\xfe\n"[..], &[b'\n'; 40]].concat());
    let mut expected: Vec<Vec<u8>> = Vec::new();
    for name in ["a.txt", "b.txt", "c.txt"] {
        let bytes = std::fs::read(dir.join(&format!("in/{name}"))).unwrap();
        let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        expected.extend(text.split(|&b| b == b'\n').map(<[u8]>::to_vec));
    }
    expected.sort();
    let expected: Vec<u8> = expected
        .into_iter()
        .flat_map(|mut l| {
            l.push(b'\n');
            l
        })
        .collect();
    for (reduces, flags) in [(1, &["--split-size", "0"][..]), (4, &["--split-size", "32K", "--map-buffer", "64K"])] {
        run_job_to_completion(&dir, "sort", 2, reduces, flags, &["in"]);
        let output = concatenated_outputs(dir.path(), reduces);
        assert_same_output(&output, &expected, &format!("sort with {reduces} reduces, {flags:?}\n{}", dir.listing()));
        if reduces > 1 {
            let sizes: Vec<u64> = (0..reduces).map(|r| std::fs::metadata(dir.join(&format!("mr-out-{r}"))).unwrap().len()).collect();
            assert!(sizes.iter().filter(|&&s| s > 0).count() >= 3, "range partitions should share the work: {sizes:?}");
        }
    }
}

#[test]
fn mr_sequential_prints_the_same_counters_as_the_job() {
    let dir = TestDir::new("sequential-counters");
    let inputs = awkward_inputs(&dir);
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    // Without the combiner, reduces see the values map emitted, as in the
    // reference run.
    run_job_to_completion(&dir, "wordcount", 2, 3, &["--summary-json", "job.json", "--no-combine"], &inputs);
    let mut cmd = std::process::Command::new(sequential_bin());
    cmd.args(["--output-dir", "seq", "--summary-json", "seq.json", "wordcount"]).args(&inputs);
    let mut seq = Proc::spawn("sequential", cmd, dir.path());
    seq.expect_success();
    let read = |name: &str| -> serde_json::Value { serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap() };
    let (job, sequential) = (read("job.json"), read("seq.json"));
    // Every input is one split, so everything up to the shuffle counts the
    // same; the reference run has no intermediate files.
    let mut expected = job["counters"].clone();
    expected["intermediate_bytes"] = 0.into();
    expected["reduce_input_bytes"] = 0.into();
    assert_eq!(sequential["counters"], expected, "{}", seq.describe());
    assert_eq!((sequential["maps"].as_u64(), sequential["reduces"].as_u64()), (Some(5), Some(1)));
    assert!(seq.stdout().starts_with("job succeeded in "), "{}", seq.describe());
    assert!(seq.stdout().contains("words (app)"), "{}", seq.describe());
}

#[test]
fn an_app_may_separate_keys_from_values_with_a_tab() {
    let dir = TestDir::new("tab-output");
    dir.write("in.txt", "b a b\nc b\n");
    let expected = reference_output(dir.path(), "slowcount", &["--param", "output=tab", "in.txt"]);
    assert_eq!(expected, b"a\t1\nb\t3\nc\t1\n");
    let output = run_job(&dir, "slowcount", 1, 2, &["--param", "output=tab"], &["in.txt"]);
    assert_eq!(output, expected);
}

/// The streaming app's parameters for the Python word count in
/// apps/streaming/examples.
fn python_word_count_params() -> Vec<String> {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/streaming/examples");
    let map = format!("map=python3 {}", examples.join("wc_map.py").display());
    let reduce = format!("reduce=python3 {}", examples.join("wc_reduce.py").display());
    vec!["--param".into(), map, "--param".into(), reduce]
}

#[test]
fn streaming_word_count_in_python_equals_the_rust_word_count() {
    let dir = TestDir::new("streaming");
    let inputs = awkward_inputs(&dir);
    dir.write("data/book.txt", skewed_text(5_000, 7));
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let expected = reference_output(dir.path(), "wordcount", &inputs);
    let params = python_word_count_params();
    let mut flags: Vec<&str> = params.iter().map(String::as_str).collect();
    flags.extend(["--split-size", "4K"]);
    let output = run_job(&dir, "streaming", 2, 3, &flags, &inputs);
    assert_same_output(&output, &expected, &dir.listing());
}

#[test]
fn a_streaming_command_that_fails_fails_its_task_naming_it_with_its_last_error_lines() {
    let dir = TestDir::new("streaming-fails");
    dir.write("in.txt", "some words\n");
    let reduce = "reduce=cat > /dev/null; echo first >&2; echo cannot go on >&2; exit 3";
    let (mut master, addr) = start_master(dir.path(), &["--max-task-attempts", "1", "--param", "map=cat", "--param", reduce, "in.txt"]);
    let mut worker = start_worker("worker", dir.path(), &addr, "streaming");
    let err = master.expect_failure();
    assert!(err.contains("exited with exit status: 3; its last lines of standard error: first | cannot go on"), "{}", master.describe());
    worker.wait(Duration::from_secs(30));
    assert!(worker.stderr().contains("reduce task 0: cannot go on"), "{}", worker.describe());
}

fn streaming_example(script: &str) -> String {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/streaming/examples");
    format!("python3 {}", examples.join(script).display())
}

#[test]
fn a_streaming_inverted_index_named_by_mapreduce_map_input_file_equals_the_indexer() {
    let dir = TestDir::new("streaming-index");
    let mut inputs = awkward_inputs(&dir);
    dir.write("book.txt", skewed_text(5_000, 3));
    dir.write("book.txt.gz", compressed("book.txt.gz", skewed_text(3_000, 4).as_bytes()));
    inputs.extend(["book.txt".to_owned(), "book.txt.gz".to_owned()]);
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let expected = reference_output(dir.path(), "indexer", &inputs);
    let (map, reduce) = (format!("map={}", streaming_example("ix_map.py")), format!("reduce={}", streaming_example("ix_reduce.py")));
    let output = run_job(&dir, "streaming", 2, 3, &["--param", &map, "--param", &reduce, "--split-size", "4K"], &inputs);
    assert_same_output(&output, &expected, &dir.listing());
}

#[test]
fn a_streaming_map_learns_where_its_input_begins_and_how_long_it_is() {
    let dir = TestDir::new("streaming-env");
    let text = skewed_text(20_000, 5);
    dir.write("book.txt", &text);
    let packed = compressed("small.txt.gz", b"one line\n");
    dir.write("small.txt.gz", &packed);
    // One line per map task, printed at its end: the file, start, length
    // and task number.
    let map =
        "map=cat > /dev/null; echo \"$mapreduce_map_input_file $mapreduce_map_input_start $mapreduce_map_input_length $mapreduce_task_partition\"";
    run_job_to_completion(&dir, "streaming", 2, 1, &["--param", map, "--param", "reduce=cat", "--split-size", "16K"], &["book.txt", "small.txt.gz"]);
    let output = std::fs::read(dir.join("mr-out-0")).unwrap();
    let mut book: Vec<(u64, u64)> = Vec::new();
    let mut tasks = std::collections::BTreeSet::new();
    for line in String::from_utf8(output).unwrap().lines() {
        let fields: Vec<&str> = line.trim_end_matches('\t').split(' ').collect();
        let [file, start, length, task] = fields[..] else { panic!("a bad line: {line:?}") };
        assert!(tasks.insert(task.to_owned()), "task {task} twice");
        match file {
            "book.txt" => book.push((start.parse().unwrap(), length.parse().unwrap())),
            "small.txt.gz" => assert_eq!((start, length), ("0", packed.len().to_string().as_str())),
            other => panic!("an unknown input {other:?}"),
        }
    }
    // The book's tasks cover it, one after another, without a gap.
    book.sort();
    assert!(book.len() > 4, "{book:?}");
    let mut next = 0;
    for (start, length) in book {
        assert_eq!(start, next, "tasks do not follow each other");
        next = start + length;
    }
    assert_eq!(next, text.len() as u64);
}

#[test]
fn a_streaming_combiner_shrinks_what_is_shuffled_and_changes_no_output() {
    let dir = TestDir::new("streaming-combiner");
    let inputs = awkward_inputs(&dir);
    dir.write("data/book.txt", skewed_text(20_000, 7));
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let expected = reference_output(dir.path(), "wordcount", &inputs);
    let (map, reduce) = (format!("map={}", streaming_example("wc_map.py")), format!("reduce={}", streaming_example("wc_reduce.py")));
    let combiner = format!("combiner={}", streaming_example("wc_combine.py"));
    let mut shuffled = Vec::new();
    for extra in [None, Some(combiner.as_str())] {
        let mut flags = vec!["--param", &map, "--param", &reduce, "--summary-json", "job.json"];
        flags.extend(extra.iter().flat_map(|combiner| ["--param", combiner]));
        let output = run_job(&dir, "streaming", 2, 3, &flags, &inputs);
        assert_same_output(&output, &expected, &dir.listing());
        let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("job.json")).unwrap()).unwrap();
        shuffled.push(summary["counters"]["map_output_records"].as_u64().unwrap());
    }
    // Each map task's pairs were summed per word before the shuffle.
    assert!(shuffled[1] * 5 < shuffled[0], "{shuffled:?}");
}

#[test]
fn shipped_files_are_where_streaming_commands_run_combiner_included() {
    let dir = TestDir::new("streaming-files");
    let inputs = awkward_inputs(&dir);
    dir.write("data/book.txt", skewed_text(20_000, 11));
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let counts = reference_output(dir.path(), "wordcount", &inputs);
    // Every fifth word is a stop word, which the shipped filter drops.
    let lines: Vec<&[u8]> = counts.split(|&b| b == b'\n').filter(|line| !line.is_empty()).collect();
    let stop: Vec<&[u8]> = lines.iter().step_by(5).map(|line| line.split(|&b| b == b' ').next().unwrap()).collect();
    let expected: Vec<u8> =
        lines.iter().skip(1).enumerate().filter(|(i, _)| (i + 1) % 5 != 0).flat_map(|(_, line)| [*line, b"\n"].concat()).collect();
    dir.write("ship/stop.txt", stop.iter().flat_map(|word| [*word, b"\n"].concat()).collect::<Vec<u8>>());
    let filter = dir.write(
        "ship/drop_stop_words.py",
        "#!/usr/bin/env python3\nimport sys\nstop = set(open('stop.txt', 'rb').read().split(b'\\n'))\n\
         for line in sys.stdin.buffer:\n    if line.split(b'\\t')[0] not in stop:\n        sys.stdout.buffer.write(line)\n",
    );
    // Executable, it stays so where it is shipped (run as ./drop_stop_words.py).
    std::fs::set_permissions(&filter, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/streaming/examples");
    for script in ["wc_map.py", "wc_combine.py", "wc_reduce.py"] {
        std::fs::copy(examples.join(script), dir.join(&format!("ship/{script}"))).unwrap();
    }
    // The commands name the shipped files as they are in the task's
    // directory: none of them is in the worker's.
    let files = "ship/wc_map.py,ship/wc_combine.py,ship/wc_reduce.py,ship/drop_stop_words.py";
    let flags = [
        "--files",
        files,
        "--files",
        "ship/stop.txt",
        "--param",
        "map=python3 wc_map.py | ./drop_stop_words.py",
        "--param",
        "combiner=python3 wc_combine.py",
        "--param",
        "reduce=python3 wc_reduce.py",
        "--summary-json",
        "job.json",
    ];
    let output = run_job(&dir, "streaming", 2, 3, &flags, &inputs);
    assert_same_output(&output, &sorted_lines(&expected), &dir.listing());
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("job.json")).unwrap()).unwrap();
    let word_count: u64 =
        expected.split(|&b| b == b'\n').filter_map(|line| std::str::from_utf8(line).ok()?.rsplit(' ').next()?.parse::<u64>().ok()).sum();
    assert!(summary["counters"]["map_output_records"].as_u64().unwrap() * 5 < word_count, "the combiner ran: {summary}");
}

#[test]
fn a_streaming_map_that_prints_slowly_after_its_input_is_progressing_not_hung() {
    let dir = TestDir::new("streaming-slow-printer");
    dir.write("in.txt", "some words\n");
    // All its input read at once, then a line every 0.4 s for 4 s: longer
    // than the task timeout, but never silent for as long.
    let map = "map=cat > /dev/null; for i in 1 2 3 4 5 6 7 8 9 10; do echo \"w$i\"; sleep 0.4; done";
    for combiner in [None, Some("combiner=cat")] {
        let mut flags = vec!["--task-timeout", "2", "--max-task-attempts", "1", "--param", map, "--param", "reduce=cat"];
        flags.extend(combiner.iter().flat_map(|combiner| ["--param", combiner]));
        run_job_to_completion(&dir, "streaming", 1, 1, &flags, &["in.txt"]);
        let output = std::fs::read_to_string(dir.join("mr-out-0")).unwrap();
        let mut words: Vec<&str> = output.lines().map(|line| line.trim_end_matches('\t')).collect();
        words.sort();
        let mut expected: Vec<String> = (1..=10).map(|i| format!("w{i}")).collect();
        expected.sort();
        assert_eq!(words, expected, "{combiner:?}");
    }
}

#[test]
fn streaming_commands_report_counters_and_status_as_hadoop_streaming_does() {
    let dir = TestDir::new("streaming-reporter");
    dir.write("a.txt", "x\ny\n");
    dir.write("b.txt", "z\n");
    // Each map counts its lines in a counter of its own; the reduce
    // computes for 4 s after its last input, under a 2 s task timeout,
    // saying it is alive every 0.4 s.
    let map = "map=n=$(wc -l); echo \"reporter:counter:app,lines,$n\" >&2; echo k";
    let reduce = "reduce=cat > /dev/null; for i in 1 2 3 4 5 6 7 8 9 10; do echo reporter:status:busy >&2; sleep 0.4; done; echo done";
    let flags = ["--task-timeout", "2", "--max-task-attempts", "1", "--param", map, "--param", reduce, "--summary-json", "job.json"];
    run_job_to_completion(&dir, "streaming", 1, 1, &flags, &["a.txt", "b.txt"]);
    assert_eq!(std::fs::read_to_string(dir.join("mr-out-0")).unwrap(), "done\n");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("job.json")).unwrap()).unwrap();
    assert_eq!(summary["counters"]["user"]["app.lines"], 3, "{summary}");
    assert_eq!(summary["counters"]["user"]["reporter_status_lines"], 10, "{summary}");
}

#[test]
fn streaming_keys_of_several_fields_are_sorted_whole_and_partitioned_by_their_first() {
    let dir = TestDir::new("streaming-fields");
    let mut text = String::new();
    for i in 0..600u32 {
        text.push_str(&format!("g{}.k{:03}.v{i}\n", i % 7, (i * 37) % 600));
    }
    dir.write("in.txt", &text);
    let flags = ["--param", "map=cat", "--param", "reduce=cat", "--param", "separator=.", "--param", "key_fields=2", "--param", "partition_fields=1"];
    run_job_to_completion(&dir, "streaming", 2, 3, &flags, &["in.txt"]);
    for r in 0..3u32 {
        let output = std::fs::read_to_string(dir.join(&format!("mr-out-{r}"))).unwrap();
        let mut expected: Vec<&str> =
            text.lines().filter(|line| mapreduce_app::partition::partition_of(line.split('.').next().unwrap().as_bytes(), 3) == r).collect();
        // Sorted by the key's two fields (each key once).
        expected.sort_by_key(|line| line.rsplit_once('.').unwrap().0);
        assert_eq!(output.lines().collect::<Vec<_>>(), expected, "mr-out-{r}");
    }
}

/// `text` compressed as a file named `name` would be: by its extension.
fn compressed(name: &str, text: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let (half, rest) = text.split_at(text.len() / 2);
    match name.rsplit('.').next() {
        // Two members, as `cat a.gz b.gz` or pigz make.
        Some("gz") => [half, rest]
            .iter()
            .flat_map(|part| {
                let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(part).unwrap();
                encoder.finish().unwrap()
            })
            .collect(),
        Some("zst") => zstd::stream::encode_all(text, 3).unwrap(),
        Some("bz2") => {
            let mut encoder = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            encoder.write_all(text).unwrap();
            encoder.finish().unwrap()
        }
        _ => text.to_vec(),
    }
}

#[test]
fn compressed_inputs_are_read_as_their_text() {
    let dir = TestDir::new("compressed-inputs");
    let names = ["a.txt", "b.txt.gz", "c.txt.zst", "d.txt.bz2"];
    let mut plain = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let text = skewed_text(30_000, 70 + i as u64);
        dir.write(&format!("in/{name}"), compressed(name, text.as_bytes()));
        plain.extend_from_slice(text.as_bytes());
    }
    dir.write("plain.txt", &plain);
    let expected = reference_output(dir.path(), "wordcount", &["plain.txt"]);
    assert_same_output(&reference_output(dir.path(), "wordcount", &["in"]), &expected, "mr-sequential over the compressed files");
    // Small splits: the plain file is cut, each compressed one stays whole.
    let output = run_job(&dir, "wordcount", 2, 3, &["--split-size", "8K"], &["in"]);
    assert_same_output(&output, &expected, "a job over the compressed files");
}

#[test]
fn a_damaged_compressed_input_fails_the_job_naming_it() {
    let dir = TestDir::new("damaged-input");
    let mut data = compressed("x.gz", skewed_text(20_000, 9).as_bytes());
    let middle = data.len() / 2;
    data.truncate(middle);
    dir.write("in/broken.txt.gz", &data);
    let (mut master, addr) = start_master(dir.path(), &["--reduces", "1", "--max-task-attempts", "2", "in"]);
    let mut worker = start_worker("worker", dir.path(), &addr, "wordcount");
    let err = master.expect_failure();
    let broken = dir.join("in/broken.txt.gz");
    assert!(err.contains(&format!("input {}: damaged gzip data", broken.display())), "{}", master.describe());
    worker.expect_failure();
    assert!(!dir.join("mr-out-0").exists());
}

/// The text of the compressed file at `path`, unpacked by its extension.
fn unpacked(path: &std::path::Path) -> Vec<u8> {
    let stored = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let codec = mapreduce::codec::Codec::of(path).unwrap_or_else(|| panic!("{} is not named as compressed", path.display()));
    mapreduce::codec::decompress_all(codec, &stored[..]).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn compressed_outputs_unpack_to_the_plain_outputs_and_replace_them() {
    let dir = TestDir::new("compressed-outputs");
    for i in 0..3 {
        dir.write(&format!("in/{i}.txt"), skewed_text(20_000, 90 + i));
    }
    let expected = reference_output(dir.path(), "wordcount", &["in"]);
    run_job_to_completion(&dir, "wordcount", 2, 3, &["--output-dir", "out"], &["in"]);
    let plain = job_output(&dir.join("out"), 3);
    assert_same_output(&plain, &expected, "the plain job");
    for (codec, extension) in [("gz", "gz"), ("zst", "zst")] {
        // Over the plain job's outputs: they are set aside, not mixed in.
        run_job_to_completion(&dir, "wordcount", 2, 3, &["--output-dir", "out", "--overwrite", "--output-compression", codec], &["in"]);
        let mut all = Vec::new();
        for r in 0..3 {
            all.extend(unpacked(&dir.join(&format!("out/mr-out-{r}.{extension}"))));
            assert!(!dir.join(&format!("out/mr-out-{r}")).exists(), "the plain output {r} stayed beside the {codec} ones\n{}", dir.listing());
        }
        assert_same_output(&sorted_lines(&all), &expected, &format!("--output-compression {codec}\n{}", dir.listing()));
        let summary = std::fs::read_to_string(dir.join("out/_SUCCESS")).unwrap();
        assert!(summary.starts_with("job "), "{summary}");
        // The reference writes the same, and a later job reads it back.
        let reference_dir = format!("ref-{codec}");
        let mut cmd = std::process::Command::new(sequential_bin());
        cmd.args(["--output-compression", codec, "--output-dir", &reference_dir, "wordcount", "in"]);
        Proc::spawn("sequential", cmd, dir.path()).expect_success();
        assert_same_output(&sorted_lines(&unpacked(&dir.join(&format!("{reference_dir}/mr-out-0.{extension}")))), &expected, "mr-sequential");
        let compressed_output = format!("{reference_dir}/mr-out-0.{extension}");
        dir.write(&format!("{reference_dir}.txt"), unpacked(&dir.join(&compressed_output)));
        let read_back = reference_output(dir.path(), "wordcount", &[&compressed_output]);
        assert_same_output(&read_back, &reference_output(dir.path(), "wordcount", &[&format!("{reference_dir}.txt")]), "read back by its extension");
    }
    let mut cmd = std::process::Command::new(sequential_bin());
    cmd.args(["--output-compression", "lzma", "wordcount", "in"]);
    let err = Proc::spawn("sequential", cmd, dir.path()).expect_failure();
    assert!(err.contains("unknown output compression \"lzma\": expected none, gz or zst"), "{err}");
}

#[test]
fn a_map_only_job_writes_each_maps_pairs_as_emitted_one_output_per_map() {
    let dir = TestDir::new("map-only");
    let inputs = awkward_inputs(&dir);
    let input_refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let expected = map_only_reference(dir.path(), "wordcount", &input_refs);
    assert_eq!(expected.len(), 5, "one output per input file");
    // Outputs of an earlier job with more files do not stay beside these.
    dir.write(&format!("mr-out-{}", expected.len()), "stale 1\n");
    run_job_to_completion(&dir, "wordcount", 2, 0, &["--overwrite"], &input_refs);
    assert_map_only_output(dir.path(), &expected, &dir.listing());
    // Unsorted: the words in the order the map met them.
    let unsorted = |output: &Vec<u8>| {
        let text = String::from_utf8_lossy(output);
        let keys: Vec<&str> = text.lines().map(|line| line.split(' ').next().unwrap()).collect();
        keys.windows(2).any(|w| w[0] > w[1])
    };
    assert!(expected.iter().any(unsorted), "the reference itself is sorted, so the test proves nothing");
    assert!(std::fs::read_to_string(dir.join("_SUCCESS")).unwrap().starts_with("job "), "the marker names the job");
}
