//! The master's HTTP status server, counters and summary, checked against a
//! real job's real figures: `/api/status` and `/metrics` while the job runs
//! and after it, and the dashboard rendered in headless Chromium.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{chromium, run_chromium, start_master, start_worker, worker_id, Proc, TestDir};
use serde_json::Value;

/// A GET request; returns (status code, body). HTTP/1.0, so the body is
/// never chunked and ends when the server closes the connection.
fn get(base: &str, path: &str) -> (u16, String) {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(host).unwrap_or_else(|e| panic!("connecting to {host}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {response:?}"));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (code, body.to_string())
}

fn status(base: &str) -> Value {
    let (code, body) = get(base, "/api/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/status is not JSON ({e}): {body}"))
}

/// The value of the sample `line_start` (name and labels) in Prometheus text.
fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {line_start} in\n{text}"))
        .parse()
        .unwrap()
}

/// Waits until the master has printed its status page's URL.
fn status_url(master: &Proc) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(url) = master.stdout().lines().find_map(|l| l.strip_prefix("status page: ").map(str::to_string)) {
            return url;
        }
        assert!(Instant::now() < deadline, "no status URL printed\n{}", master.describe());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `/api/status` until `ready` holds for it.
fn wait_for(base: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(base);
        if ready(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last status: {s:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `n` inputs of a few hundred words each; returns their names and total size.
fn write_inputs(dir: &TestDir, n: usize) -> (Vec<String>, u64) {
    let mut names = Vec::new();
    let mut total = 0;
    for i in 0..n {
        let text: String = (0..300).map(|w| format!("word{} common{}\n", (w * 7 + i) % 53, w % 5)).collect();
        total += text.len() as u64;
        names.push(dir.write(&format!("in/part-{i}.txt"), text).file_name().unwrap().to_string_lossy().into_owned());
    }
    (names.into_iter().map(|n| format!("in/{n}")).collect(), total)
}

/// Sums and counts the `<word> <count>` lines of the job's outputs.
fn output_totals(dir: &Path, reduces: u32) -> (u64, u64, u64) {
    let (mut words, mut lines, mut bytes) = (0, 0, 0);
    for r in 0..reduces {
        let text = std::fs::read_to_string(dir.join(format!("mr-out-{r}"))).unwrap();
        bytes += text.len() as u64;
        for line in text.lines() {
            lines += 1;
            words += line.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap();
        }
    }
    (words, lines, bytes)
}

/// A slow job (each map sleeps `delay_ms`) with the status server on a free
/// port, lingering after the end so that its final status can be read.
fn start_slow_job(dir: &TestDir, maps: usize, reduces: u32, delay_ms: u32, workers: usize, params: &[&str]) -> (Proc, Vec<Proc>, String, u64) {
    let (inputs, total) = write_inputs(dir, maps);
    let (reduces, delay) = (reduces.to_string(), format!("delay_ms={delay_ms}"));
    let mut args = vec!["--http", "127.0.0.1:0", "--linger", "60", "--reduces", &reduces, "--param", &delay];
    for param in params {
        args.extend(["--param", param]);
    }
    args.extend(["--summary-json", "summary.json"]);
    args.extend(inputs.iter().map(String::as_str));
    let (master, addr) = start_master(dir.path(), &args);
    let url = status_url(&master);
    let workers = (0..workers).map(|i| start_worker(&format!("worker{i}"), dir.path(), &addr, "slowcount")).collect();
    (master, workers, url, total)
}

fn worker_ids(workers: &[Proc]) -> Vec<String> {
    let mut ids: Vec<String> = workers.iter().map(worker_id).collect();
    ids.sort();
    ids
}

#[test]
fn status_api_and_metrics_show_the_real_figures_during_and_after_the_job() {
    let dir = TestDir::new("status-api");
    let (maps, reduces) = (6, 3);
    let (mut master, mut workers, url, input_bytes) = start_slow_job(&dir, maps, reduces, 400, 2, &[]);

    // While it runs.
    let during =
        wait_for(&url, "a map to finish while the job runs", |s| s["job"]["state"] == "running" && s["progress"]["maps"]["done"].as_u64() >= Some(1));
    let job = &during["job"];
    assert_eq!(job["maps"], maps);
    assert_eq!(job["reduces"], reduces);
    assert_eq!(job["input_bytes"], input_bytes, "{job:#}");
    assert_eq!(job["inputs"].as_array().unwrap().len(), maps);
    assert_eq!(during["tasks"].as_array().unwrap().len(), maps + reduces as usize);
    let done_maps: Vec<&Value> = during["tasks"].as_array().unwrap().iter().filter(|t| t["kind"] == "map" && t["state"] == "done").collect();
    let done_bytes: u64 = done_maps.iter().map(|t| t["bytes_in"].as_u64().unwrap()).sum();
    assert_eq!(during["progress"]["input_bytes_done"], done_bytes, "bytes done are the done maps' inputs");
    assert_eq!(during["counters"]["map_input_bytes"], done_bytes);
    let (code, metrics) = get(&url, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(metric(&metrics, "mapreduce_job_running"), 1.0);
    assert_eq!(metric(&metrics, "mapreduce_input_bytes"), input_bytes as f64);
    let map_tasks: f64 =
        ["idle", "running", "done"].iter().map(|state| metric(&metrics, &format!("mapreduce_tasks{{kind=\"map\",state=\"{state}\"}}"))).sum();
    assert_eq!(map_tasks, maps as f64);

    // After it ends (the server lingers).
    let after = wait_for(&url, "the job to succeed", |s| s["job"]["state"] == "succeeded");
    let (words, lines, out_bytes) = output_totals(dir.path(), reduces);
    let counters = &after["counters"];
    assert_eq!(counters["map_input_bytes"], input_bytes, "{counters:#}");
    assert_eq!(counters["map_input_records"], 300 * maps as u64, "one record per input line");
    assert_eq!(counters["user"]["words"], words, "the app's word counter equals the words in the output");
    assert_eq!(words, 2 * 300 * maps as u64);
    assert_eq!(counters["output_records"], lines);
    assert_eq!(counters["output_bytes"], out_bytes);
    assert_eq!(counters["reduce_input_groups"], lines);
    assert_eq!(counters["intermediate_bytes"], counters["reduce_input_bytes"]);
    assert_eq!(after["job"]["phase"], "done");
    assert_eq!(after["progress"]["maps"]["done"], maps);
    assert_eq!(after["progress"]["reduces"]["done"], reduces);
    assert!(after["job"]["map_phase_secs"].as_f64().unwrap() >= 0.4, "each map sleeps 0.4 s");
    let tasks = after["tasks"].as_array().unwrap();
    assert!(tasks.iter().all(|t| t["state"] == "done"));
    let attempts: Vec<&Value> = tasks.iter().flat_map(|t| t["attempts"].as_array().unwrap()).collect();
    assert_eq!(attempts.len(), maps + reduces as usize, "no retries in this job");
    assert!(attempts.iter().all(|a| a["outcome"] == "succeeded" && a["end_secs"].as_f64() >= a["start_secs"].as_f64()));
    let ids = worker_ids(&workers);
    let mut seen: Vec<String> = after["workers"].as_array().unwrap().iter().map(|w| w["id"].as_str().unwrap().to_string()).collect();
    seen.sort();
    assert_eq!(seen, ids, "workers are named host:pid");
    let tasks_done: u64 = after["workers"].as_array().unwrap().iter().map(|w| w["tasks_done"].as_u64().unwrap()).sum();
    assert_eq!(tasks_done, maps as u64 + u64::from(reduces));

    let (_, metrics) = get(&url, "/metrics");
    assert_eq!(metric(&metrics, "mapreduce_job_succeeded"), 1.0);
    assert_eq!(metric(&metrics, "mapreduce_app_counter_total{name=\"words\"}"), words as f64);
    assert_eq!(metric(&metrics, "mapreduce_map_input_bytes_total"), input_bytes as f64);
    assert_eq!(metric(&metrics, "mapreduce_tasks{kind=\"reduce\",state=\"done\"}"), f64::from(reduces));
    assert_eq!(metric(&metrics, "mapreduce_task_duration_seconds_count{kind=\"map\"}"), maps as f64);
    assert_eq!(metric(&metrics, "mapreduce_task_duration_seconds_bucket{kind=\"map\",le=\"0.1\"}"), 0.0, "maps sleep 0.4 s");
    assert_eq!(metric(&metrics, "mapreduce_attempts_total{kind=\"map\",outcome=\"succeeded\"}"), maps as f64);

    // The summary says the same, on stdout and as JSON (written once the
    // workers have been told the job is over, just after the state changes).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("summary.json").exists() {
        assert!(Instant::now() < deadline, "no summary.json\n{}", master.describe());
        std::thread::sleep(Duration::from_millis(20));
    }
    let summary: Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["counters"], *counters);
    assert_eq!(summary["state"], "succeeded");
    assert_eq!(summary["outputs"].as_array().unwrap().len(), reduces as usize);
    let stdout = master.stdout();
    assert!(stdout.contains("job succeeded in"), "{stdout}");
    assert!(stdout.lines().any(|l| l.split_whitespace().eq(["words", "(app)", &words.to_string()])), "{stdout}");
    for w in &mut workers {
        w.expect_success();
    }
    master.kill();
}

#[test]
fn failed_attempts_are_listed_and_not_counted() {
    let dir = TestDir::new("status-failures");
    dir.write("good.txt", "alpha beta\n");
    dir.write("bad.txt", "PANIC-IN-MAP\n");
    let args = ["--http", "127.0.0.1:0", "--linger", "60", "--max-task-failures", "2", "--reduces", "1", "good.txt", "bad.txt"];
    let (mut master, addr) = start_master(dir.path(), &args);
    let url = status_url(&master);
    let mut worker = start_worker("worker", dir.path(), &addr, "faulty");
    let after = wait_for(&url, "the job to fail", |s| s["job"]["state"] == "failed");
    assert!(after["job"]["error"].as_str().unwrap().contains("map task 1"), "{:#}", after["job"]);
    let bad = &after["tasks"][1];
    let outcomes: Vec<&str> = bad["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["failed", "failed"]);
    assert!(bad["attempts"][0]["error"].as_str().unwrap().contains("deliberate panic in map"), "{bad:#}");
    assert_eq!(after["counters"]["map_input_bytes"], "alpha beta\n".len(), "only the good map counts");
    let (_, metrics) = get(&url, "/metrics");
    assert_eq!(metric(&metrics, "mapreduce_attempts_total{kind=\"map\",outcome=\"failed\"}"), 2.0);
    let _ = worker.expect_failure();
    master.kill();
}

#[test]
fn a_taken_default_port_falls_back_to_a_free_one_and_off_means_off() {
    let dir = TestDir::new("status-port");
    dir.write("in.txt", "one two\n");
    // Hold the default port, as a second job on this machine would.
    let _holder = std::net::TcpListener::bind(mapreduce::http::DEFAULT_ADDR);
    let (mut master, addr) = start_master(dir.path(), &["--linger", "60", "in.txt"]);
    let url = status_url(&master);
    assert_ne!(url, format!("http://{}/", mapreduce::http::DEFAULT_ADDR));
    let mut worker = start_worker("worker", dir.path(), &addr, "wordcount");
    wait_for(&url, "the job to succeed", |s| s["job"]["state"] == "succeeded");
    worker.expect_success();
    master.kill();

    let (mut master, addr) = start_master(dir.path(), &["--http", "off", "--overwrite", "in.txt"]);
    let mut worker = start_worker("worker2", dir.path(), &addr, "wordcount");
    master.expect_success();
    worker.expect_success();
    assert!(!master.stdout().contains("status page"), "{}", master.describe());
    assert!(master.stdout().contains("job succeeded"), "{}", master.describe());
}

/// The text of the element with `id` in rendered HTML.
fn element_text<'a>(html: &'a str, id: &str) -> &'a str {
    let (_, rest) = html.split_once(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page"));
    let (_, inside) = rest.split_once('>').unwrap();
    inside.split_once('<').unwrap().0
}

#[test]
fn dashboard_in_headless_chromium_shows_the_running_job() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("MR_REQUIRE_BROWSER").is_none(),
            "MR_REQUIRE_BROWSER is set but no Chromium was found (install Debian's chromium, or set CHROMIUM)"
        );
        eprintln!("skipped: no Chromium (install Debian's chromium package to run this test)");
        return;
    };
    let dir = TestDir::new("dashboard");
    let (maps, reduces) = (8, 2);
    // Reduces wait for the gate, which opens once the page has been read:
    // however long the browser takes, the job is still running.
    let gate = dir.join("reduce-gate");
    let gate_param = format!("reduce_gate_file={}", gate.display());
    let (mut master, mut workers, url, _) = start_slow_job(&dir, maps, reduces, 500, 2, &[&gate_param]);
    let before = wait_for(&url, "a map done and both workers running tasks", |s| {
        s["progress"]["maps"]["done"].as_u64() >= Some(1)
            && s["workers"].as_array().is_some_and(|w| w.len() == 2 && w.iter().all(|w| w["current"].as_array().is_some_and(|c| !c.is_empty())))
    });

    let dump = run_chromium(&browser, &dir, "chromium-dom", &url, &["--dump-dom"]);
    let after = status(&url);
    let html = dump.stdout();
    assert_eq!(after["job"]["state"], "running", "the job must still run while the page is read");
    assert!(html.contains("data-loaded=\"true\""), "the page never rendered data:\n{html}");
    assert_eq!(element_text(&html, "job-state"), "running");
    assert_eq!(element_text(&html, "maps-total"), maps.to_string());
    assert_eq!(element_text(&html, "reduces-total"), reduces.to_string());
    assert_eq!(element_text(&html, "workers-alive"), "2");
    let shown: u64 = element_text(&html, "maps-done").parse().unwrap();
    let done = |s: &Value| s["progress"]["maps"]["done"].as_u64().unwrap();
    assert!((done(&before)..=done(&after)).contains(&shown), "page shows {shown} maps done; the job had {} then {}", done(&before), done(&after));
    for id in worker_ids(&workers) {
        assert!(html.contains(&format!("data-worker-id=\"{id}\"")), "worker {id} missing from the worker table:\n{html}");
    }
    assert!(html.contains("class=\"attempt\""), "the timeline shows no attempts:\n{html}");

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    run_chromium(&browser, &dir, "chromium-shot", &url, &[&format!("--screenshot={}", png.display()), "--window-size=1280,1100"]);
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "screenshot {} looks empty", png.display());
    eprintln!("dashboard screenshot: {}", png.display());

    std::fs::write(&gate, "").unwrap();
    wait_for(&url, "the job to succeed", |s| s["job"]["state"] == "succeeded");
    for w in &mut workers {
        w.expect_success();
    }
    master.kill();
}

#[test]
fn log_files_name_the_process_and_the_task() {
    let dir = TestDir::new("log-files");
    dir.write("in.txt", "one two two\n");
    let (mut master, addr) = start_master(dir.path(), &["--http", "off", "--log-file", "master.log", "--reduces", "1", "in.txt"]);
    let mut cmd = Command::new(common::worker_bin());
    cmd.env("RUST_LOG", "debug").args(["--master", &addr, "--log-file", "worker.log", "wordcount"]);
    let mut worker = Proc::spawn("worker", cmd, dir.path());
    master.expect_success();
    worker.expect_success();
    let master_log = std::fs::read_to_string(dir.join("master.log")).unwrap();
    assert!(master_log.lines().any(|l| l.contains(" master: job planned")), "{master_log}");
    assert!(!master_log.contains('\x1b'), "no colours in a log file");
    let worker_log = std::fs::read_to_string(dir.join("worker.log")).unwrap();
    let id = &worker_ids(std::slice::from_ref(&worker))[0];
    for task in ["map task 0", "reduce task 0"] {
        let prefix = format!("worker{{id={id}}}:task{{task={task} attempt=");
        assert!(worker_log.lines().any(|l| l.contains(&prefix) && l.contains("done")), "no line starting {prefix} in\n{worker_log}");
    }
}
