//! Jobs whose workers do not share the coordinator's job directory
//! (`mr-worker --no-shared-dir`), on this one machine: map output is
//! served by the worker that wrote it and fetched by reducers, reduce
//! outputs are sent to the coordinator, and a worker lost after its
//! maps has them run again. Each worker serves on its own loopback address
//! (127.0.0.2, 127.0.0.3), so that reducers fetch over TCP as they would
//! from another machine. (scripts/multi-host-test.sh does the same across
//! network namespaces with nothing shared at all.)

mod common;

use common::*;
use serde_json::Value;

fn write_inputs(dir: &TestDir, files: usize) -> Vec<String> {
    (0..files)
        .map(|i| {
            let name = format!("in-{i}.txt");
            let line = format!("alpha beta gamma {i} émigré\ndelta alpha {} Ωmega\n", i * 7);
            dir.write(&name, line.repeat(200 + i * 50));
            name
        })
        .collect()
}

/// A worker that acts as if it shared no filesystem with the master,
/// serving its files on `serve_ip`, its work directory under `work`, with
/// `fetch_memory` for its reduces' fetched runs.
fn isolated_worker(label: &str, dir: &TestDir, addr: &str, app: &str, serve_ip: &str, work: &str, fetch_memory: &str) -> Proc {
    std::fs::create_dir_all(dir.join(work)).unwrap();
    let serve_on = format!("{serve_ip}:0");
    let mut cmd = std::process::Command::new(worker_bin());
    cmd.env("RUST_LOG", "info,mapreduce=debug");
    cmd.args(["--master", addr, "--no-shared-dir", "--serve-on", &serve_on, "--work-dir", work, "--fetch-memory", fetch_memory, app]);
    Proc::spawn(label, cmd, dir.path())
}

/// Creates `gate` (which the slowcount app's reduces wait for) once every
/// one of `workers` has joined the job: a job of small inputs would
/// otherwise be over before the last worker is up, and that worker fail to
/// reach the master.
fn open_gate_once_joined(gate: &std::path::Path, workers: &[&Proc]) {
    wait_until(
        || workers.iter().all(|worker| worker.stderr().contains("connected")),
        || {
            let described: Vec<_> = workers.iter().map(|worker| worker.describe()).collect();
            format!("the workers never joined:\n{}", described.join("\n"))
        },
    );
    std::fs::write(gate, "").unwrap();
}

#[test]
fn map_output_is_served_between_workers_and_outputs_reach_the_master() {
    let dir = TestDir::new("served-shuffle");
    let inputs = write_inputs(&dir, 5);
    let expected = reference_output(dir.path(), "slowcount", &inputs.iter().map(String::as_str).collect::<Vec<_>>());
    let gate = dir.join("gate");
    let gate_param = format!("reduce_gate_file={}", gate.display());
    let mut args = vec!["--reduces", "3", "--split-size", "2K", "--param", &gate_param];
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);
    // A reduce fetches 100 bytes' worth of runs into memory (a run or two:
    // they are 40-60 bytes), the others into its work directory; one of
    // the two fetches at least half the maps' runs.
    let mut a = isolated_worker("a", &dir, &addr, "slowcount", "127.0.0.2", "work-a", "100");
    let mut b = isolated_worker("b", &dir, &addr, "slowcount", "127.0.0.3", "work-b", "100");
    // Both take part: each holds a reduce at the gate, and the one that
    // did not run every map fetches runs from the other.
    open_gate_once_joined(&gate, &[&a, &b]);
    master.expect_success();
    a.expect_success();
    b.expect_success();
    assert_same_output(&job_output(dir.path(), 3), &expected, &dir.listing());
    for (worker, work) in [(&a, "work-a"), (&b, "work-b")] {
        assert!(worker.stderr().contains("not sharing the job directory"), "{}", worker.describe());
        let left: Vec<_> = std::fs::read_dir(dir.join(work)).unwrap().collect();
        assert!(left.is_empty(), "{work} was not cleaned up: {left:?}");
    }
    // Some reduce read runs from the other worker over the network, some
    // into memory and the rest into files.
    let both_ways =
        |w: &Proc| w.stderr().lines().any(|line| line.contains("fetched") && !line.contains(": 0 into memory") && !line.contains(", 0 into files"));
    assert!(both_ways(&a) || both_ways(&b), "no reduce fetched runs both ways\n{}\n{}", a.describe(), b.describe());
}

#[test]
fn a_worker_lost_after_its_maps_has_them_run_again() {
    // Worker a runs every map, then holds a reduce at the gate; it is
    // killed there. Its map output went with it: worker b must run the
    // maps again before the reduces, and the summary says so.
    let dir = TestDir::new("served-lost");
    let inputs = write_inputs(&dir, 3);
    let expected = reference_output(dir.path(), "wordcount", &inputs.iter().map(String::as_str).collect::<Vec<_>>());
    let gate = dir.join("reduce-gate");
    let gate_param = format!("reduce_gate_file={}", gate.display());
    let mut args = vec!["--reduces", "2", "--summary-json", "summary.json", "--param", &gate_param];
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);
    let mut a = isolated_worker("a", &dir, &addr, "slowcount", "127.0.0.2", "work-a", "128M");
    wait_until(|| a.stderr().contains("task{task=reduce task"), || format!("worker a never started a reduce\n{}", a.describe()));
    let a_id = worker_id(&a);
    a.kill();
    // The master learns of the loss from the closed connection; b starts
    // after that (started sooner on a loaded machine, b's reduce could ask
    // a first, and the maps would run again by the fetch-failure rule).
    wait_until(
        || master.stderr().contains("its output was served only by its worker"),
        || format!("the master never noticed worker a was gone\n{}", master.describe()),
    );
    let mut b = isolated_worker("b", &dir, &addr, "slowcount", "127.0.0.3", "work-b", "128M");
    std::fs::write(&gate, "").unwrap();
    master.expect_success();
    b.expect_success();
    assert_same_output(&job_output(dir.path(), 2), &expected, &dir.listing());
    let summary: Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    let lost_maps: Vec<&str> = summary["unsuccessful_attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["worker"] == a_id.as_str() && a["outcome"] == "output_lost")
        .map(|a| a["task"].as_str().unwrap())
        .collect();
    assert_eq!(lost_maps.len(), 3, "{summary}");
}

#[test]
fn workers_without_an_app_run_the_one_the_master_names_and_another_build_is_refused() {
    let dir = TestDir::new("shipped-app");
    let inputs = write_inputs(&dir, 3);
    let expected = reference_output(dir.path(), "slowcount", &inputs.iter().map(String::as_str).collect::<Vec<_>>());
    // The reduces wait for the gate, so that the job cannot end before
    // both workers below have joined it.
    let gate = dir.join("gate");
    let gate_param = format!("reduce_gate_file={}", gate.display());
    let mut args = vec!["--reduces", "2", "--app", "slowcount", "--param", &gate_param];
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);
    // Another app: refused by the master, with a line on both sides.
    let mut other = start_worker("other", dir.path(), &addr, "indexer");
    let err = other.expect_exit_code(1);
    assert!(err.contains("refused this worker: its app") && err.contains("libslowcount.so"), "{err}");
    // No app of its own: fetches the job's (and checks its SHA-256).
    std::fs::create_dir_all(dir.join("work")).unwrap();
    let mut cmd = std::process::Command::new(worker_bin());
    cmd.args(["--master", &addr, "--no-shared-dir", "--work-dir", "work"]);
    let mut fetched = Proc::spawn("fetched", cmd, dir.path());
    // The same build given explicitly is welcome too.
    let mut same = start_worker("same", dir.path(), &addr, "slowcount");
    open_gate_once_joined(&gate, &[&fetched, &same]);
    master.expect_success();
    fetched.expect_success();
    same.expect_success();
    assert_same_output(&job_output(dir.path(), 2), &expected, &dir.listing());
    let log = master.stderr();
    assert!(log.contains("refused a worker from ") && log.contains(": its app (sha256"), "{}", master.describe());
    assert!(fetched.stderr().contains("app=\"SlowCount\""), "{}", fetched.describe());
}

#[test]
fn a_worker_without_an_app_for_a_job_that_names_none_says_so() {
    let dir = TestDir::new("no-app");
    let inputs = write_inputs(&dir, 1);
    let mut args = vec!["--reduces", "1"];
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);
    let mut cmd = std::process::Command::new(worker_bin());
    cmd.args(["--master", &addr]);
    let mut appless = Proc::spawn("appless", cmd, dir.path());
    let err = appless.expect_exit_code(1);
    assert!(err.contains("names no app: give this worker APP, or start mr-master with --app"), "{err}");
    let mut worker = start_worker("worker", dir.path(), &addr, "wordcount");
    master.expect_success();
    worker.expect_success();
}

#[test]
fn a_map_only_jobs_outputs_are_sent_to_the_master_by_their_maps() {
    let dir = TestDir::new("map-only-uploads");
    let inputs = write_inputs(&dir, 4);
    let mut args = vec!["--reduces", "0", "--app", "wordcount"];
    args.extend(inputs.iter().map(String::as_str));
    let (mut master, addr) = start_master(dir.path(), &args);
    std::fs::create_dir_all(dir.join("work")).unwrap();
    let mut cmd = std::process::Command::new(worker_bin());
    cmd.args(["--master", &addr, "--no-shared-dir", "--work-dir", "work"]);
    let mut worker = Proc::spawn("isolated", cmd, dir.path());
    master.expect_success();
    worker.expect_success();
    assert!(worker.stderr().contains("not sharing the job directory"), "{}", worker.describe());
    let expected = map_only_reference(dir.path(), "wordcount", &inputs.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(expected.len(), inputs.len());
    assert_map_only_output(dir.path(), &expected, &dir.listing());
}

#[test]
fn compressed_outputs_are_sent_to_the_master_compressed_by_reduces_and_by_map_only_maps() {
    let dir = TestDir::new("compressed-uploads");
    let inputs = write_inputs(&dir, 4);
    let input_refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    std::fs::create_dir_all(dir.join("work")).unwrap();
    let unpack = |path: std::path::PathBuf| {
        let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), dir.listing()));
        let codec = mapreduce::codec::Codec::of(&path).unwrap();
        mapreduce::codec::decompress_all(codec, &stored[..]).unwrap()
    };
    for (reduces, codec) in [("2", "gz"), ("0", "zst")] {
        let out = format!("out-{codec}");
        let mut args = vec!["--reduces", reduces, "--app", "wordcount", "--output-compression", codec, "--output-dir", &out];
        args.extend(&input_refs);
        let (mut master, addr) = start_master(dir.path(), &args);
        let mut cmd = std::process::Command::new(worker_bin());
        cmd.args(["--master", &addr, "--no-shared-dir", "--work-dir", "work"]);
        let mut worker = Proc::spawn("isolated", cmd, dir.path());
        master.expect_success();
        worker.expect_success();
        assert!(worker.stderr().contains("not sharing the job directory"), "{}", worker.describe());
        if reduces == "0" {
            let expected = map_only_reference(dir.path(), "wordcount", &input_refs);
            for (m, expected) in expected.iter().enumerate() {
                assert_eq!(&unpack(dir.join(&format!("{out}/mr-out-{m}.{codec}"))), expected, "map {m}");
            }
        } else {
            let all: Vec<u8> = (0..2).flat_map(|r| unpack(dir.join(&format!("{out}/mr-out-{r}.{codec}")))).collect();
            assert_same_output(&sorted_lines(&all), &reference_output(dir.path(), "wordcount", &input_refs), &dir.listing());
        }
    }
}
