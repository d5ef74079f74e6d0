//! The standing cluster (`mr-master --serve`) with the `mr` client and
//! long-lived workers, as real processes: admission, jobs by id compared
//! with `mr-sequential`, cancelling, the history across a restart,
//! priorities and labels.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

fn mr_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mr"))
}

/// Starts a cluster in `dir` with its state in `dir/state`, listening on
/// `listen`; returns it and its address once it accepts connections. Load
/// limits are off: tests run side by side on a small machine.
fn start_cluster_at(dir: &Path, listen: &str, extra: &[&str]) -> (Proc, String) {
    let addr_file = dir.join("cluster.addr");
    let _ = std::fs::remove_file(&addr_file);
    let mut cmd = Command::new(master_bin());
    cmd.args(["--serve", "--listen", listen, "--state-dir", "state", "--max-load-per-core", "off", "--min-free-disk", "0", "--min-free-memory", "0"])
        .arg("--addr-file")
        .arg(&addr_file)
        .args(extra);
    let mut cluster = Proc::spawn(&next_label("cluster"), cmd, dir);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            return (cluster, addr.trim().to_owned());
        }
        if let Some(status) = cluster.try_exit() {
            panic!("the cluster exited ({status}) before listening\n{}", cluster.describe());
        }
        assert!(Instant::now() < deadline, "the cluster did not write its address\n{}", cluster.describe());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` from the HTTP server at `url` (`http://HOST:PORT/`): the body.
fn http_get(url: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "GET {path}: {response}");
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// A label not used before in this test process (a log file's name).
fn next_label(what: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{what}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Runs `mr --master addr ARGS...` in `dir` to its end: (exit code, stdout, stderr).
fn mr(dir: &Path, addr: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(mr_bin());
    cmd.arg("--master").arg(addr).args(args);
    let mut run = Proc::spawn(&next_label("mr"), cmd, dir);
    let status = run.wait(PROCESS_TIMEOUT);
    (status.code().unwrap_or(-1), run.stdout(), run.stderr())
}

/// `mr ARGS...` that must succeed: its stdout.
fn mr_ok(dir: &Path, addr: &str, args: &[&str]) -> String {
    let (code, out, err) = mr(dir, addr, args);
    assert_eq!(code, 0, "mr {args:?} failed\n--- stdout\n{out}\n--- stderr\n{err}");
    out
}

/// `mr ARGS...` that must fail: its stderr, which must be one line.
fn mr_refused(dir: &Path, addr: &str, args: &[&str]) -> String {
    let (code, out, err) = mr(dir, addr, args);
    assert_ne!(code, 0, "mr {args:?} should have failed\n--- stdout\n{out}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line of error, not:\n{err}");
    err
}

/// Submits a job; its id.
fn submit(dir: &Path, addr: &str, args: &[&str]) -> String {
    let mut all = vec!["submit"];
    all.extend_from_slice(args);
    let out = mr_ok(dir, addr, &all);
    let id = out.trim().to_owned();
    assert!(id.starts_with("job-"), "submit printed {out:?}");
    id
}

/// `mr status ID --json`, parsed.
fn status(dir: &Path, addr: &str, id: &str) -> serde_json::Value {
    serde_json::from_str(&mr_ok(dir, addr, &["status", id, "--json"])).unwrap()
}

/// `mr list --all --json`: (id, state) of every job.
fn all_jobs(dir: &Path, addr: &str) -> Vec<(String, String)> {
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&mr_ok(dir, addr, &["list", "--all", "--json"])).unwrap();
    let mut jobs: Vec<(String, String)> = jobs.iter().map(|job| (format!("job-{}", job["id"]), job["state"].as_str().unwrap().to_owned())).collect();
    jobs.sort();
    jobs
}

fn word_inputs(dir: &TestDir, files: usize) -> Vec<String> {
    write_word_inputs(dir, files).into_iter().map(|name| dir.join(&name).to_string_lossy().into_owned()).collect()
}

#[test]
fn admission_refuses_bad_jobs_with_one_line_and_queues_nothing() {
    let dir = TestDir::new("cluster-admission");
    let inputs = word_inputs(&dir, 2);
    let (mut cluster, addr) = start_cluster_at(dir.path(), "127.0.0.1:0", &["--http", "127.0.0.1:0"]);
    let url = cluster.stdout().lines().find_map(|line| line.strip_prefix("status page: ").map(str::to_owned)).expect("the status page's URL");
    let d = dir.path();
    let wordcount = plugin("wordcount");
    let app = wordcount.to_str().unwrap();

    let missing = mr_refused(d, &addr, &["submit", "--app", app, "--output-dir", "out", "no-such-input.txt"]);
    assert!(missing.contains("no-such-input.txt"), "{missing}");
    let no_app = mr_refused(d, &addr, &["submit", "--output-dir", "out", &inputs[0]]);
    assert!(no_app.contains("--app"), "{no_app}");
    let bad_app = mr_refused(d, &addr, &["submit", "--app", "no-such-app", "--output-dir", "out", &inputs[0]]);
    assert!(bad_app.contains("no-such-app"), "{bad_app}");
    let nothing = mr_refused(d, &addr, &["submit", "--app", app, "--output-dir", "out", "no-*-match.txt"]);
    assert!(nothing.contains("matches no files"), "{nothing}");
    dir.write("data/a.txt", "a b c\n");
    let inside = mr_refused(d, &addr, &["submit", "--app", app, "--output-dir", "data/out", "data"]);
    assert!(inside.contains("inside the input"), "{inside}");
    let holding = mr_refused(d, &addr, &["submit", "--app", app, "--output-dir", ".", "data"]);
    assert!(holding.contains("inside the output directory"), "{holding}");
    assert!(all_jobs(d, &addr).is_empty(), "nothing refused is queued");
    assert!(!dir.join("out").exists() && !dir.join("data/out").exists(), "nothing refused is written");

    // No worker: the job waits, running, and says why.
    let id = submit(d, &addr, &["--app", app, "--output-dir", "out", &inputs[0]]);
    let running = status(d, &addr, &id);
    assert_eq!(running["state"], "running", "{running}");
    assert!(running["waiting"].to_string().contains("no worker is connected"), "{running}");
    let taken = mr_refused(d, &addr, &["submit", "--app", app, "--output-dir", "out", &inputs[1]]);
    assert!(taken.contains(&id) && taken.contains("running"), "{taken}");
    assert!(mr_ok(d, &addr, &["logs", &id]).contains("job planned"), "the job's log has its engine's lines");
    let listed: serde_json::Value = serde_json::from_str(&http_get(&url, "/api/jobs")).unwrap();
    assert_eq!(listed[0]["state"], "running", "{listed}");
    assert!(http_get(&url, "/metrics").contains("mapreduce_cluster_jobs{state=\"running\"} 1"));
    assert!(http_get(&url, "/").contains(&id));

    // Cancelled while running: nothing published, its job directory gone.
    assert!(mr_ok(d, &addr, &["cancel", &id]).contains(&id));
    wait_until(|| status(d, &addr, &id)["state"] == "cancelled", || format!("{id} was not cancelled\n{}", cluster.describe()));
    assert!(!dir.join("out/.mr-job").exists(), "{}", dir.listing());
    assert!(!dir.join("out/_SUCCESS").exists() && !dir.join("out/mr-out-0").exists());
    let unknown = mr_refused(d, &addr, &["status", "job-99"]);
    assert!(unknown.contains("no job job-99"), "{unknown}");
    assert_eq!(all_jobs(d, &addr), [(id.clone(), "cancelled".to_owned())]);
    cluster.kill();
}

#[test]
fn a_client_without_the_token_is_refused_saying_so() {
    let dir = TestDir::new("cluster-token");
    dir.write("token", "a secret of more than sixteen bytes\n");
    let token = dir.join("token");
    let (mut cluster, addr) = start_cluster_at(dir.path(), "127.0.0.1:0", &["--token-file", token.to_str().unwrap()]);
    let refused = mr_refused(dir.path(), &addr, &["list"]);
    assert!(refused.contains("refused this client") && refused.contains("token file"), "{refused}");
    let (code, out, err) = mr(dir.path(), &addr, &["--token-file", token.to_str().unwrap(), "list"]);
    assert_eq!(code, 0, "{out}{err}");
    // A one-job coordinator is not a cluster.
    let one = dir.write("one.txt", "x\n");
    let (mut master, one_job) = start_master(dir.path(), &["--app", "wordcount", one.to_str().unwrap()]);
    let not_cluster = mr_refused(dir.path(), &one_job, &["list"]);
    assert!(not_cluster.contains("not a cluster"), "{not_cluster}");
    master.kill();
    cluster.kill();
}
