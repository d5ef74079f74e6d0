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

/// Starts a cluster in `dir` (see [`start_cluster_with`]).
fn start_cluster_at(dir: &Path, listen: &str, extra: &[&str]) -> (Proc, String) {
    start_cluster_with(&next_label("cluster"), dir, listen, extra, &[])
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

/// `POST path` with the JSON `body` to the HTTP server at `url`, with
/// `bearer` as its `Authorization: Bearer` credential if given: the
/// status code and the body.
fn http_post(url: &str, path: &str, bearer: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = bearer.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response.get(9..12).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("POST {path}: {response}"));
    (code, response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
}

/// The URL the cluster printed for its status page.
fn status_page_url(cluster: &Proc) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(url) = cluster.stdout().lines().find_map(|line| line.strip_prefix("status page: ").map(str::to_owned)) {
            return url;
        }
        assert!(Instant::now() < deadline, "no status page URL\n{}", cluster.describe());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A submission as `mr submit ARGS...` sends it (paths absolute), as JSON.
fn submission_json(args: &[&str]) -> String {
    use clap::Parser;
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        job: mapreduce::cli::JobFlags,
    }
    let flags = Flags::try_parse_from(std::iter::once("submit").chain(args.iter().copied())).unwrap();
    let submission = mapreduce::cluster::api::Submission {
        job: flags.job,
        priority: mapreduce::cluster::queue::Priority::Normal,
        weight: 1,
        requires: Vec::new(),
        overwrite: false,
        input_jobs: Vec::new(),
    };
    serde_json::to_string(&submission).unwrap()
}

fn start_cluster(dir: &Path) -> (Proc, String) {
    start_cluster_at(dir, "127.0.0.1:0", &["--http", "off"])
}

/// A long-lived worker of the cluster at `addr` (no app).
fn start_cluster_worker(dir: &Path, addr: &str, flags: &[&str]) -> Proc {
    let mut cmd = Command::new(worker_bin());
    cmd.arg("--master").arg(addr).args(["--reconnect-timeout", "30"]).args(flags);
    Proc::spawn(&next_label("worker"), cmd, dir)
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

#[test]
fn the_http_api_submits_and_cancels_with_the_bearer_token_only() {
    let dir = TestDir::new("cluster-http-api");
    let inputs = word_inputs(&dir, 4);
    let input_refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let d = dir.path();
    let secret = "a secret of more than sixteen bytes";
    dir.write("token", format!("{secret}\n"));
    let token = dir.join("token");
    let token = token.to_str().unwrap();
    let (mut cluster, addr) = start_cluster_at(d, "127.0.0.1:0", &["--http", "127.0.0.1:0", "--token-file", token]);
    let url = status_page_url(&cluster);
    let out = dir.join("out-http");
    let mut args = vec!["--app", "wordcount", "--output-dir", out.to_str().unwrap(), "--reduces", "2"];
    args.extend(&input_refs);
    let body = submission_json(&args);

    for bearer in [None, Some("not the secret at all, but long")] {
        let (code, answer) = http_post(&url, "/api/jobs", bearer, &body);
        assert_eq!(code, 401, "{answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert!(answer["error"].as_str().unwrap().contains("token"), "{answer}");
    }
    assert_eq!(http_get(&url, "/api/jobs").trim(), "[]", "nothing was queued");
    let (code, answer) = http_post(&url, "/api/jobs", Some(secret), "{not json");
    assert_eq!(code, 400, "{answer}");
    assert!(serde_json::from_str::<serde_json::Value>(&answer).unwrap()["error"].is_string(), "{answer}");

    let (code, answer) = http_post(&url, "/api/jobs", Some(secret), &body);
    assert_eq!(code, 201, "{answer}");
    let id = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["id"].as_u64().unwrap();
    let listed: Vec<serde_json::Value> = serde_json::from_str(&http_get(&url, "/api/jobs")).unwrap();
    assert!(listed.iter().any(|job| job["id"] == id), "{listed:?}");
    // The same output directory again is refused, in one line.
    let (code, answer) = http_post(&url, "/api/jobs", Some(secret), &body);
    assert_eq!(code, 400, "{answer}");
    assert!(!answer.trim_end().contains('\n'), "{answer}");

    let mut worker = start_cluster_worker(d, &addr, &["--slots", "1", "--token-file", token]);
    let job = format!("job-{id}");
    let (code, stdout, stderr) = mr(d, &addr, &["--token-file", token, "wait", &job]);
    assert_eq!(code, 0, "{job} did not succeed\n{stdout}\n{stderr}\n{}", cluster.describe());
    assert_same_output(&job_output(&out, 2), &reference_output(d, "wordcount", &input_refs), &dir.listing());

    let mut slow = vec!["--app", "slowcount", "--param", "delay_ms=300", "--output-dir", "out-slow", "--reduces", "1", "--split-size", "0"];
    let out_slow = dir.join("out-slow");
    slow[5] = out_slow.to_str().unwrap();
    slow.extend(&input_refs);
    let (code, answer) = http_post(&url, "/api/jobs", Some(secret), &submission_json(&slow));
    assert_eq!(code, 201, "{answer}");
    let slow_id = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["id"].as_u64().unwrap();
    let cancel = format!("/api/jobs/{slow_id}/cancel");
    assert_eq!(http_post(&url, &cancel, None, "").0, 401);
    let (code, answer) = http_post(&url, &cancel, Some(secret), "");
    assert_eq!(code, 200, "{answer}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&answer).unwrap()["id"], slow_id, "{answer}");
    assert_eq!(mr(d, &addr, &["--token-file", token, "wait", &format!("job-{slow_id}")]).0, 3, "wait exits 3 for a cancelled job");
    let (code, answer) = http_post(&url, &cancel, Some(secret), "");
    assert_eq!(code, 409, "{answer}");
    assert!(answer.contains("ended already"), "{answer}");
    assert_eq!(http_post(&url, "/api/jobs/job-999/cancel", Some(secret), "").0, 404);
    worker.kill();
    cluster.kill();

    // Without a token file, the changing endpoints are refused outright.
    let open = TestDir::new("cluster-http-open");
    let (mut cluster, _) = start_cluster_at(open.path(), "127.0.0.1:0", &["--http", "127.0.0.1:0"]);
    let url = status_page_url(&cluster);
    let (code, answer) = http_post(&url, "/api/jobs", Some(secret), &body);
    assert_eq!(code, 403, "{answer}");
    assert!(answer.contains("no token"), "{answer}");
    assert_eq!(http_post(&url, "/api/jobs/1/cancel", None, "").0, 403);
    assert_eq!(http_get(&url, "/api/jobs").trim(), "[]");
    cluster.kill();
}

/// The submission docs/cluster.md shows for `curl` is one the cluster takes.
#[test]
fn the_documented_http_submission_parses() {
    let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cluster.md")).unwrap();
    let example = docs.split_once("cat > job.json <<'JSON'\n").and_then(|(_, rest)| rest.split_once("\nJSON\n")).expect("the example").0;
    let submission: mapreduce::cluster::api::Submission = serde_json::from_str(example).unwrap();
    assert_eq!(submission.job.inputs, [PathBuf::from("/data/books")]);
    submission.job.check().unwrap();
}

#[test]
fn jobs_by_id_on_long_lived_workers_match_the_reference_and_outlive_a_restart() {
    let dir = TestDir::new("cluster-jobs");
    let inputs = word_inputs(&dir, 6);
    let input_refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let d = dir.path();
    let (mut cluster, addr) = start_cluster(d);
    let mut workers: Vec<Proc> = (0..2).map(|_| start_cluster_worker(d, &addr, &["--slots", "2"])).collect();

    let mut jobs = Vec::new();
    for (app, out, reduces) in [("wordcount", "out-wc", "3"), ("indexer", "out-ix", "2"), ("wordcount", "out-wc1", "1")] {
        let mut args = vec!["--app", app, "--output-dir", out, "--reduces", reduces];
        args.extend(&input_refs);
        jobs.push((submit(d, &addr, &args), app, out, reduces.parse::<u32>().unwrap()));
    }
    for (id, app, out, reduces) in &jobs {
        let (code, stdout, stderr) = mr(d, &addr, &["wait", id]);
        assert_eq!(code, 0, "{id} did not succeed\n{stdout}\n{stderr}\n{}", cluster.describe());
        let expected = reference_output(d, app, &input_refs);
        assert_same_output(&job_output(&dir.join(out), *reduces), &expected, &dir.listing());
        assert!(dir.join(out).join("_SUCCESS").exists());
    }
    let succeeded: Vec<(String, String)> = jobs.iter().map(|(id, ..)| (id.clone(), "succeeded".to_owned())).collect();
    assert_eq!(all_jobs(d, &addr), succeeded);
    let workers_listed = mr_ok(d, &addr, &["workers"]);
    assert_eq!(workers_listed.lines().count(), 3, "a header and two workers:\n{workers_listed}");
    // Each worker tells the cluster its peak memory (with its task
    // processes) and its budget (the default: half the machine's).
    wait_until(
        || {
            let listed: Vec<serde_json::Value> = serde_json::from_str(&mr_ok(d, &addr, &["workers", "--json"])).unwrap();
            listed
                .iter()
                .all(|w| w["memory"]["peak_rss_bytes"].as_u64().is_some_and(|peak| peak > 4 << 20) && w["memory"]["budget_bytes"].as_u64().is_some())
        },
        || format!("no worker said its memory: {}", mr_ok(d, &addr, &["workers", "--json"])),
    );

    // The workers drain and exit 0 on SIGTERM; the cluster stops on it too,
    // and a new one on the same state directory knows every job.
    for worker in &mut workers {
        terminate(worker);
        worker.expect_success();
    }
    terminate(&mut cluster);
    cluster.expect_success();
    let (mut cluster, addr) = start_cluster(d);
    assert_eq!(all_jobs(d, &addr), succeeded);
    let first = status(d, &addr, &jobs[0].0);
    let summary: serde_json::Value = serde_json::from_str(first["summary_json"].as_str().unwrap()).unwrap();
    assert_eq!(summary["outputs"].as_array().unwrap().len(), 3, "{summary}");
    let again = mr_refused(d, &addr, &["submit", "--app", "wordcount", "--output-dir", "out-wc", &inputs[0]]);
    assert!(again.contains(&jobs[0].0) && again.contains("--overwrite"), "{again}");
    cluster.kill();
}

#[test]
fn a_killed_cluster_resumes_its_running_job_and_keeps_the_queued_one() {
    let dir = TestDir::new("cluster-restart");
    let inputs = word_inputs(&dir, 8);
    let input_refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let d = dir.path();
    let (mut cluster, addr) = start_cluster_at(d, "127.0.0.1:0", &["--max-running", "1"]);
    let mut worker = start_cluster_worker(d, &addr, &["--slots", "2"]);
    let mut slow = vec!["--app", "slowcount", "--param", "delay_ms=300", "--output-dir", "out-slow", "--reduces", "2", "--split-size", "0"];
    slow.extend(&input_refs);
    let running = submit(d, &addr, &slow);
    let mut queued_args = vec!["--app", "wordcount", "--output-dir", "out-queued", "--reduces", "2"];
    queued_args.extend(&input_refs);
    let queued = submit(d, &addr, &queued_args);
    wait_until(
        || status(d, &addr, &running)["progress"]["maps_done"].as_u64().unwrap_or(0) >= 2,
        || format!("{running} made no progress\n{}\n{}", cluster.describe(), worker.describe()),
    );
    assert_eq!(status(d, &addr, &queued)["state"], "queued");
    cluster.kill();
    let (mut cluster, addr) = start_cluster_at(d, &addr, &["--max-running", "1"]);
    for (id, app, out) in [(&running, "slowcount", "out-slow"), (&queued, "wordcount", "out-queued")] {
        let (code, stdout, stderr) = mr(d, &addr, &["wait", id]);
        assert_eq!(code, 0, "{id} did not succeed\n{stdout}\n{stderr}\n{}\n{}", cluster.describe(), worker.describe());
        assert_same_output(&job_output(&dir.join(out), 2), &reference_output(d, app, &input_refs), &dir.listing());
    }
    let resumed = status(d, &addr, &running);
    let summary: serde_json::Value = serde_json::from_str(resumed["summary_json"].as_str().unwrap()).unwrap();
    assert!(summary["attempts"]["before_restart"].as_u64().unwrap() >= 2, "the resumed job kept its finished maps: {summary}");
    worker.kill();
    cluster.kill();
}

/// When each of job `id`'s attempts started, by its log: (time, task, worker).
fn attempt_starts(dir: &Path, addr: &str, id: &str) -> Vec<(String, String, String)> {
    let field = |line: &str, name: &str| line.split(' ').find_map(|word| word.strip_prefix(name)).map(str::to_owned).unwrap_or_default();
    mr_ok(dir, addr, &["logs", id])
        .lines()
        .filter(|line| line.contains(" attempt started "))
        .map(|line| (line.split(' ').next().unwrap().to_owned(), field(line, "task="), field(line, "worker=")))
        .collect()
}

#[test]
fn a_high_priority_job_goes_first_and_labels_choose_the_workers() {
    let dir = TestDir::new("cluster-priority");
    let inputs = word_inputs(&dir, 24);
    let input_refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let d = dir.path();
    let (mut cluster, addr) = start_cluster(d);
    let mut worker = start_cluster_worker(d, &addr, &["--slots", "2"]);
    let slow = |priority: &'static str, out: &'static str, inputs: &[&'static str]| -> Vec<&'static str> {
        let mut args =
            vec!["--priority", priority, "--app", "slowcount", "--param", "delay_ms=100", "--output-dir", out, "--reduces", "1", "--split-size", "0"];
        args.extend(inputs);
        args
    };
    let leaked: Vec<&'static str> = input_refs.iter().map(|s| &*Box::leak(s.to_string().into_boxed_str())).collect();
    let low = submit(d, &addr, &slow("low", "out-low", &leaked));
    wait_until(|| status(d, &addr, &low)["progress"]["maps_done"].as_u64().unwrap_or(0) >= 2, || format!("{low} made no progress"));
    let high = submit(d, &addr, &slow("high", "out-high", &leaked[..12]));
    // A job only a `zone=a` worker may run waits for one, saying so.
    let mut zoned = vec!["--require", "zone=a", "--app", "wordcount", "--output-dir", "out-zoned", "--reduces", "2"];
    zoned.extend(&input_refs[..3]);
    let zoned = submit(d, &addr, &zoned);
    assert_eq!(mr(d, &addr, &["wait", &high]).0, 0);
    assert_eq!(status(d, &addr, &low)["state"], "running", "the high job finished first");

    // While the high job had maps waiting, every free slot went to it: no
    // low attempt started between its first and its last map's start (one
    // may have been on its way as the high job came).
    let high_maps: Vec<String> =
        attempt_starts(d, &addr, &high).into_iter().filter(|(_, task, _)| task.starts_with("map")).map(|(at, ..)| at).collect();
    assert_eq!(high_maps.len(), 12, "{high_maps:?}");
    let (first, last) = (high_maps.iter().min().unwrap().clone(), high_maps.iter().max().unwrap().clone());
    let low_between = attempt_starts(d, &addr, &low).into_iter().filter(|(at, ..)| *at > first && *at < last).count();
    assert!(low_between <= 1, "{low_between} low attempts started while the high job had maps waiting ({first} to {last})");

    let waiting = status(d, &addr, &zoned);
    assert!(waiting["waiting"].to_string().contains("zone=a"), "{waiting}");
    let mut zone_a = start_cluster_worker(d, &addr, &["--slots", "1", "--label", "zone=a"]);
    assert_eq!(mr(d, &addr, &["wait", &zoned]).0, 0);
    let zoned_starts = attempt_starts(d, &addr, &zoned);
    assert_eq!(zoned_starts.len(), 5, "3 maps and 2 reduces: {zoned_starts:?}");
    assert!(zoned_starts.iter().all(|(_, _, on)| *on == worker_id(&zone_a)), "every task on the zone=a worker: {zoned_starts:?}");
    assert_eq!(mr(d, &addr, &["wait", &low]).0, 0);
    assert_same_output(&job_output(&dir.join("out-low"), 1), &reference_output(d, "slowcount", &input_refs), &dir.listing());
    assert_same_output(&job_output(&dir.join("out-high"), 1), &reference_output(d, "slowcount", &input_refs[..12]), &dir.listing());
    assert_same_output(&job_output(&dir.join("out-zoned"), 2), &reference_output(d, "wordcount", &input_refs[..3]), &dir.listing());
    zone_a.kill();
    worker.kill();
    cluster.kill();
}

#[test]
fn a_cancelled_job_stops_on_its_workers_and_leaves_the_others_alone() {
    let dir = TestDir::new("cluster-cancel");
    let inputs = word_inputs(&dir, 10);
    let input_refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let d = dir.path();
    let (mut cluster, addr) = start_cluster(d);
    let mut worker = start_cluster_worker(d, &addr, &["--slots", "2"]);
    let mut doomed = vec!["--app", "slowcount", "--param", "delay_ms=300", "--output-dir", "out-doomed", "--reduces", "1", "--split-size", "0"];
    doomed.extend(&input_refs);
    let doomed = submit(d, &addr, &doomed);
    let mut survivor = vec!["--app", "slowcount", "--param", "delay_ms=100", "--output-dir", "out-survivor", "--reduces", "2", "--split-size", "0"];
    survivor.extend(&input_refs);
    let survivor = submit(d, &addr, &survivor);
    wait_until(|| status(d, &addr, &doomed)["progress"]["maps_done"].as_u64().unwrap_or(0) >= 1, || format!("{doomed} made no progress"));
    mr_ok(d, &addr, &["cancel", &doomed]);
    assert_eq!(mr(d, &addr, &["wait", &doomed]).0, 3, "wait exits 3 for a cancelled job");
    // Its attempts stopped: nothing of it runs on the worker any more.
    let before = attempt_starts(d, &addr, &doomed).len();
    assert_eq!(mr(d, &addr, &["wait", &survivor]).0, 0);
    assert_eq!(attempt_starts(d, &addr, &doomed).len(), before, "no attempt of the cancelled job started after it ended");
    assert_eq!(std::fs::read_dir(dir.join("out-doomed")).unwrap().count(), 0, "{}", dir.listing());
    assert_same_output(&job_output(&dir.join("out-survivor"), 2), &reference_output(d, "slowcount", &input_refs), &dir.listing());
    let cancelled = status(d, &addr, &doomed);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let again = mr_refused(d, &addr, &["cancel", &doomed]);
    assert!(again.contains("ended already"), "{again}");
    worker.kill();
    cluster.kill();
}

#[test]
fn a_worker_over_a_load_limit_gets_no_tasks_and_the_job_says_why() {
    let dir = TestDir::new("cluster-load");
    let inputs = word_inputs(&dir, 1);
    let d = dir.path();
    // No machine here has a petabyte of memory available.
    let (mut cluster, addr) = start_cluster_at(d, "127.0.0.1:0", &["--http", "off", "--min-free-memory", "1024T"]);
    let mut worker = start_cluster_worker(d, &addr, &["--slots", "1"]);
    let loaded = || -> bool {
        let workers: Vec<serde_json::Value> = serde_json::from_str(&mr_ok(d, &addr, &["workers", "--json"])).unwrap();
        workers.first().is_some_and(|worker| !worker["over_limit"].is_null() && !worker["load"].is_null())
    };
    wait_until(loaded, || format!("the worker never reported a load over the limit\n{}", worker.describe()));
    assert!(mr_ok(d, &addr, &["workers"]).contains("memory"), "mr workers says which limit");
    let id = submit(d, &addr, &["--app", "wordcount", "--output-dir", "out", &inputs[0]]);
    std::thread::sleep(Duration::from_millis(1500));
    let held = status(d, &addr, &id);
    assert!(held["waiting"].to_string().contains("over its load limits"), "{held}");
    assert_eq!(held["progress"]["running"], 0, "{held}");
    assert_eq!(held["progress"]["maps_done"], 0, "{held}");
    worker.kill();
    cluster.kill();
}

/// The streaming app's flags for the Python word count in
/// apps/streaming/examples, its scripts shipped with the job.
fn python_word_count_params() -> Vec<String> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/streaming/examples");
    vec![
        "--files".into(),
        format!("{},{}", examples.join("wc_map.py").display(), examples.join("wc_reduce.py").display()),
        "--param".into(),
        "map=python3 wc_map.py".into(),
        "--param".into(),
        "reduce=python3 wc_reduce.py".into(),
    ]
}

/// The output files `mr-out-0..reduces` of `dir`, concatenated in order.
fn concatenated(dir: &Path, reduces: u32) -> Vec<u8> {
    (0..reduces).flat_map(|r| std::fs::read(dir.join(format!("mr-out-{r}"))).unwrap()).collect()
}

#[test]
fn six_jobs_of_four_apps_on_three_workers_one_killed_match_the_reference() {
    let dir = TestDir::new("cluster-six");
    let inputs = word_inputs(&dir, 12);
    let input_refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let d = dir.path();
    let (mut cluster, addr) = start_cluster(d);
    let mut workers: Vec<Proc> = (0..3).map(|_| start_cluster_worker(d, &addr, &["--slots", "2"])).collect();
    let python = python_word_count_params();
    let python: Vec<&str> = python.iter().map(String::as_str).collect();
    // (priority, app, output, reduces, extra flags)
    let jobs: [(&str, &str, &str, u32, Vec<&str>); 5] = [
        ("low", "slowcount", "out-slow", 2, vec!["--param", "delay_ms=150", "--split-size", "0"]),
        ("low", "streaming", "out-python", 2, [python.as_slice(), &["--split-size", "0"]].concat()),
        ("normal", "indexer", "out-index", 3, vec![]),
        ("normal", "sort", "out-sort", 3, vec!["--split-size", "0"]),
        ("low", "wordcount", "out-words", 2, vec!["--split-size", "0"]),
    ];
    let mut ids = Vec::new();
    for (priority, app, out, reduces, extra) in &jobs {
        let reduces_text = reduces.to_string();
        let mut args = vec!["--priority", priority, "--app", app, "--output-dir", out, "--reduces", &reduces_text];
        args.extend(extra);
        args.extend(&input_refs);
        ids.push(submit(d, &addr, &args));
    }
    // A high job comes while the others still have tasks waiting.
    wait_until(|| status(d, &addr, &ids[0])["progress"]["maps_done"].as_u64().unwrap_or(0) >= 1, || format!("{} made no progress", ids[0]));
    let mut high_args = vec!["--priority", "high", "--app", "wordcount", "--output-dir", "out-high", "--reduces", "1"];
    high_args.extend(&input_refs);
    let high = submit(d, &addr, &high_args);
    // A worker dies while it runs tasks of two jobs.
    let victim = worker_id(&workers[0]);
    let jobs_on_victim = || ids.iter().filter(|id| attempt_starts(d, &addr, id).iter().any(|(_, _, on)| *on == victim)).count();
    wait_until(|| jobs_on_victim() >= 2, || format!("{victim} never ran tasks of two jobs"));
    workers[0].kill();

    assert_eq!(mr(d, &addr, &["wait", &high]).0, 0);
    for (id, (_, app, out, reduces, _)) in ids.iter().zip(&jobs) {
        let (code, stdout, stderr) = mr(d, &addr, &["wait", id]);
        assert_eq!(code, 0, "{id} ({app}) did not succeed\n{stdout}\n{stderr}\n{}", cluster.describe());
        let reference_app = if *app == "streaming" { "wordcount" } else { app };
        let expected = reference_output(d, reference_app, &input_refs);
        match *app {
            // Sort's outputs in order are the sorted input.
            "sort" => assert_same_output(&sorted_lines(&concatenated(&dir.join(out), *reduces)), &expected, &dir.listing()),
            _ => assert_same_output(&job_output(&dir.join(out), *reduces), &expected, &dir.listing()),
        }
        if *app == "sort" {
            assert_eq!(concatenated(&dir.join(out), *reduces), expected, "sort's outputs, in order, are sorted");
        }
    }
    assert_same_output(&job_output(&dir.join("out-high"), 1), &reference_output(d, "wordcount", &input_refs), &dir.listing());
    let ended = |id: &str| status(d, &addr, id)["ended_ms"].as_u64().unwrap();
    for (id, (priority, ..)) in ids.iter().zip(&jobs) {
        if *priority == "low" {
            assert!(ended(&high) < ended(id), "the high job ended after the low {id}");
        }
    }
    for worker in &mut workers[1..] {
        worker.kill();
    }
    cluster.kill();
}

#[test]
fn the_jobs_page_in_headless_chromium_lists_queued_running_and_finished_jobs() {
    let Some(browser) = chromium() else {
        assert!(std::env::var_os("MR_REQUIRE_BROWSER").is_none(), "MR_REQUIRE_BROWSER is set but no Chromium was found");
        eprintln!("skipped: no Chromium (install Debian's chromium package to run this test)");
        return;
    };
    let dir = TestDir::new("cluster-page");
    let inputs = word_inputs(&dir, 2);
    let d = dir.path();
    let (mut cluster, addr) = start_cluster_at(d, "127.0.0.1:0", &["--http", "127.0.0.1:0", "--max-running", "1"]);
    let url = cluster.stdout().lines().find_map(|line| line.strip_prefix("status page: ").map(str::to_owned)).expect("the status page's URL");
    let mut worker = start_cluster_worker(d, &addr, &["--slots", "1"]);
    let finished = submit(d, &addr, &["--app", "wordcount", "--output-dir", "out-done", &inputs[0]]);
    assert_eq!(mr(d, &addr, &["wait", &finished]).0, 0);
    // Held in its reduces until the page has been read.
    let gate = dir.join("gate");
    let gate_param = format!("reduce_gate_file={}", gate.display());
    let running = submit(d, &addr, &["--app", "slowcount", "--param", &gate_param, "--output-dir", "out-held", "--reduces", "1", &inputs[0]]);
    let queued = submit(d, &addr, &["--app", "wordcount", "--output-dir", "out-queued", &inputs[1]]);
    wait_until(|| status(d, &addr, &running)["progress"]["maps_done"] == 1, || format!("{running} never reached its reduce"));
    let page = run_chromium(&browser, &dir, "chromium-jobs", &url, &["--dump-dom"]).stdout();
    for (id, state) in [(&finished, "succeeded"), (&running, "running"), (&queued, "queued")] {
        assert!(page.contains(&format!("<tr id=\"{id}\" class=\"{state}\">")), "{id} is not listed as {state}:\n{page}");
    }
    assert!(page.contains(&format!("href=\"/jobs/{}/\"", running.trim_start_matches("job-"))), "the running job links to its dashboard");
    // The running job's own dashboard, as a one-job master shows it.
    let job_page =
        run_chromium(&browser, &dir, "chromium-job", &format!("{url}jobs/{}/", running.trim_start_matches("job-")), &["--dump-dom"]).stdout();
    assert!(job_page.contains("id=\"job-state\">running<"), "the job's dashboard shows it running:\n{job_page}");
    std::fs::write(&gate, "").unwrap();
    assert_eq!(mr(d, &addr, &["wait", &running]).0, 0);
    assert_eq!(mr(d, &addr, &["wait", &queued]).0, 0);
    worker.kill();
    cluster.kill();
}

/// Sends SIGTERM to `process`.
fn terminate(process: &mut Proc) {
    // SAFETY: kill(2) with a pid this test started and has not reaped.
    let sent = unsafe { libc::kill(process.pid() as i32, libc::SIGTERM) };
    assert_eq!(sent, 0);
}

#[test]
fn a_job_takes_another_jobs_outputs_waiting_for_them_and_failing_with_them() {
    let dir = TestDir::new("cluster-steps");
    let inputs = word_inputs(&dir, 2);
    let d = dir.path();
    let (mut cluster, addr) = start_cluster_at(d, "127.0.0.1:0", &["--http", "off", "--max-running", "1"]);
    let mut worker = start_cluster_worker(d, &addr, &["--slots", "2"]);
    // The first step is held in its reduce until the gate opens.
    let gate = dir.join("gate");
    let gate_param = format!("reduce_gate_file={}", gate.display());
    std::fs::create_dir(dir.join("out-a")).unwrap();
    std::fs::write(dir.join("out-a/notes.txt"), "not an output\n").unwrap();
    let first = submit(d, &addr, &["--app", "slowcount", "--param", &gate_param, "--output-dir", "out-a", "--reduces", "1", &inputs[0]]);
    // What a running job writes is not read before it is whole.
    let refused = mr_refused(d, &addr, &["submit", "--app", "wordcount", "--output-dir", "out-z", "out-a/notes.txt"]);
    assert!(refused.contains(&format!("is in the output directory of {first}, which has not ended")), "{refused}");
    let second = submit(d, &addr, &["--app", "wordcount", "--input-job", &first, "--output-dir", "out-b", "--reduces", "2"]);
    let waits = |id: &str| status(d, &addr, id)["waiting"].to_string();
    assert!(waits(&second).contains(&format!("waits for the output of {first}")), "{}", waits(&second));
    // A step whose input job is cancelled fails with it.
    let doomed = submit(d, &addr, &["--app", "wordcount", "--output-dir", "out-e", &inputs[1]]);
    let orphan = submit(d, &addr, &["--app", "wordcount", "--input-job", &doomed, "--output-dir", "out-f"]);
    mr_ok(d, &addr, &["cancel", &doomed]);
    let orphaned = status(d, &addr, &orphan);
    assert_eq!(orphaned["state"], "failed", "{orphaned}");
    assert!(orphaned["error"].as_str().unwrap().contains(&format!("its input job {doomed} cancelled")), "{orphaned}");
    let refused = mr_refused(d, &addr, &["submit", "--app", "wordcount", "--input-job", &doomed, "--output-dir", "out-g"]);
    assert!(refused.contains("cancelled, so it has no outputs"), "{refused}");
    let refused = mr_refused(d, &addr, &["submit", "--app", "wordcount", "--input-job", "job-999", "--output-dir", "out-g"]);
    assert!(refused.contains("no such job"), "{refused}");
    let refused = mr_refused(d, &addr, &["submit", "--app", "wordcount", "--output-dir", "out-g"]);
    assert!(refused.contains("no input files given"), "{refused}");
    // Killed and started again, the cluster still holds the step back.
    wait_until(|| status(d, &addr, &first)["progress"]["maps_done"] == 1, || format!("{first} never reached its reduce"));
    cluster.kill();
    let (mut cluster, addr) = start_cluster_at(d, &addr, &["--http", "off", "--max-running", "1"]);
    assert_eq!(status(d, &addr, &second)["state"], "queued");
    assert!(waits(&second).contains(&format!("waits for the output of {first}")), "{}", waits(&second));
    std::fs::write(&gate, "").unwrap();
    for id in [&first, &second] {
        let (code, out, err) = mr(d, &addr, &["wait", id]);
        assert_eq!(code, 0, "{id} did not succeed\n{out}\n{err}\n{}\n{}", cluster.describe(), worker.describe());
    }
    let first_output = "out-a/mr-out-0";
    assert_same_output(&job_output(&dir.join("out-b"), 2), &reference_output(d, "wordcount", &[first_output]), &dir.listing());
    // A finished job's outputs are taken at once, beside files, and once
    // however often the job is named.
    let third = submit(
        d,
        &addr,
        &["--app", "wordcount", "--input-job", &first, "--input-job", &first, "--output-dir", "out-c", "--reduces", "1", &inputs[1]],
    );
    assert_eq!(mr(d, &addr, &["wait", &third]).0, 0);
    assert_same_output(&job_output(&dir.join("out-c"), 1), &reference_output(d, "wordcount", &[first_output, &inputs[1]]), &dir.listing());
    // A map-only step: one output per map, as emitted.
    let fourth = submit(d, &addr, &["--app", "wordcount", "--input-job", &third, "--output-dir", "out-d", "--reduces", "0"]);
    assert_eq!(mr(d, &addr, &["wait", &fourth]).0, 0);
    assert_map_only_output(&dir.join("out-d"), &map_only_reference(d, "wordcount", &["out-c/mr-out-0"]), &dir.listing());
    let summary: serde_json::Value = serde_json::from_str(status(d, &addr, &fourth)["summary_json"].as_str().unwrap()).unwrap();
    assert_eq!(summary["outputs"].as_array().map(Vec::len), Some(1), "{summary}");
    let refused = mr_refused(d, &addr, &["submit", "--app", "wordcount", "--input-job", &first, "--output-dir", "out-a/sub"]);
    assert!(refused.contains(&format!("would write over the outputs of {first}")), "{refused}");
    // Once another job has replaced them, they are no longer the first's.
    let replacing = submit(d, &addr, &["--app", "wordcount", "--output-dir", "out-a", "--overwrite", "--reduces", "1", &inputs[1]]);
    assert_eq!(mr(d, &addr, &["wait", &replacing]).0, 0);
    let refused = mr_refused(d, &addr, &["submit", "--app", "wordcount", "--input-job", &first, "--output-dir", "out-h"]);
    assert!(refused.contains(&format!("were replaced by {replacing}'s")), "{refused}");
    worker.kill();
    cluster.kill();
}
