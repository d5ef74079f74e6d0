//! Jobs over object storage: a real S3 server (SeaweedFS, started by
//! scripts/s3-server.sh with credentials enforced) holds the inputs and
//! receives the outputs, and each job is compared with the same job over
//! local files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// An S3 server: the test process's own, started once and stopped by the
/// script's watcher when this process exits, or one of a test's own
/// (`dir` set), stopped when dropped.
struct S3Server {
    env: Vec<(String, String)>,
    dir: Option<PathBuf>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = self.script("stop", dir);
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("mr-s3-").tempdir().unwrap().keep();
        S3Server { env: S3Server::start(&dir), dir: None }
    })
}

impl S3Server {
    /// A server of the calling test's own, in a fresh directory.
    fn own() -> S3Server {
        let dir = tempfile::Builder::new().prefix("mr-s3-own-").tempdir().unwrap().keep();
        S3Server { env: S3Server::start(&dir), dir: Some(dir) }
    }

    /// Starts a server in `dir`; returns its environment.
    fn start(dir: &Path) -> Vec<(String, String)> {
        let started = Command::new(root().join("scripts/s3-server.sh"))
            .arg("start")
            .arg(dir)
            .env("S3_SERVER_WATCH_PID", std::process::id().to_string())
            .output()
            .unwrap();
        assert!(started.status.success(), "the S3 server did not start: {}", String::from_utf8_lossy(&started.stderr));
        let env_file = std::fs::read_to_string(dir.join("env")).unwrap();
        env_file
            .split_whitespace()
            .filter_map(|word| word.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.trim_matches(['"', '\'']).to_owned()))
            .collect()
    }

    /// Runs `scripts/s3-server.sh COMMAND DIR`; panics if it fails.
    fn script(&self, command: &str, dir: &Path) -> std::process::Output {
        let output = Command::new(root().join("scripts/s3-server.sh")).arg(command).arg(dir).output().unwrap();
        assert!(output.status.success(), "s3-server.sh {command}: {}", String::from_utf8_lossy(&output.stderr));
        output
    }

    /// Stops a test's own server at once (connections are refused).
    fn kill(&self) {
        self.script("kill", self.dir.as_ref().expect("a test's own server"));
    }

    /// Starts a killed server again, on the same endpoint, with its data.
    fn revive(&self) {
        self.script("revive", self.dir.as_ref().expect("a test's own server"));
    }

    /// Runs scripts/s3-check.py (its own S3 client) with `args`.
    fn check(&self, args: &[&str]) -> Vec<u8> {
        let output =
            Command::new("python3").arg(root().join("scripts/s3-check.py")).args(args).envs(self.env.iter().map(|(k, v)| (k, v))).output().unwrap();
        assert!(output.status.success(), "s3-check.py {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    }

    fn make_bucket(&self, bucket: &str) {
        self.check(&["mb", bucket]);
    }

    /// Uploads every file under `dir` to `bucket/prefix/<relative path>`.
    fn upload_tree(&self, dir: &Path, bucket_prefix: &str) {
        for entry in walkdir::WalkDir::new(dir).into_iter().map(Result::unwrap).filter(|e| e.file_type().is_file()) {
            let relative = entry.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            self.check(&["put", &format!("{bucket_prefix}/{relative}"), &entry.path().to_string_lossy()]);
        }
    }

    /// Every object under `bucket/prefix` as `(key, size)`.
    fn list(&self, bucket_prefix: &str) -> Vec<(String, u64)> {
        String::from_utf8(self.check(&["ls", bucket_prefix]))
            .unwrap()
            .lines()
            .map(|line| {
                let (key, size) = line.rsplit_once(' ').unwrap();
                (key.to_owned(), size.parse().unwrap())
            })
            .collect()
    }

    fn get(&self, bucket_key: &str) -> Vec<u8> {
        self.check(&["get", bucket_key])
    }

    /// The job's outputs under `bucket/prefix`, `reduces` of them, sorted.
    fn job_output(&self, bucket_prefix: &str, reduces: u32) -> Vec<u8> {
        let all: Vec<u8> = (0..reduces).flat_map(|r| self.get(&format!("{bucket_prefix}/mr-out-{r}"))).collect();
        sorted_lines(&all)
    }

    /// The environment with a wrong secret key.
    fn wrong_secret(&self) -> Vec<(String, String)> {
        self.env.iter().map(|(k, v)| (k.clone(), if k == "AWS_SECRET_ACCESS_KEY" { "not-the-secret".to_owned() } else { v.clone() })).collect()
    }
}

/// Runs a job against the S3 server: a master with `args`, `workers`
/// workers of `app`; returns the master.
fn run_job(dir: &TestDir, app: &str, workers: usize, args: &[&str], env: &[(String, String)]) -> Proc {
    let (master, addr) = start_master_with_env(dir.path(), "127.0.0.1:0", args, env);
    let mut running: Vec<Proc> = (0..workers)
        .map(|i| {
            let mut cmd = Command::new(worker_bin());
            cmd.arg("--master").arg(&addr).arg(app).envs(env.iter().map(|(k, v)| (k, v)));
            Proc::spawn(&format!("worker{i}"), cmd, dir.path())
        })
        .collect();
    let mut master = master;
    master.wait(std::time::Duration::from_secs(120));
    for worker in &mut running {
        worker.wait(std::time::Duration::from_secs(60));
    }
    master
}

/// Runs a master that must fail before it starts the job (`--listen` on
/// a free port); returns its standard error.
fn master_error(dir: &TestDir, args: &[&str], env: &[(String, String)]) -> String {
    let mut cmd = Command::new(master_bin());
    cmd.args(["--listen", "127.0.0.1:0"]).args(args).envs(env.iter().map(|(k, v)| (k, v)));
    Proc::spawn("master", cmd, dir.path()).expect_failure()
}

/// `mr-sequential`'s output for `app` over `inputs` (URLs too), sorted.
fn reference_over(dir: &TestDir, app: &str, inputs: &[&str], env: &[(String, String)]) -> Vec<u8> {
    let out = dir.join("reference");
    let mut cmd = Command::new(sequential_bin());
    cmd.arg("--output-dir").arg(&out).arg(app).args(inputs).envs(env.iter().map(|(k, v)| (k, v)));
    Proc::spawn("sequential", cmd, dir.path()).expect_success();
    let output = sorted_lines(&std::fs::read(out.join("mr-out-0")).unwrap());
    std::fs::remove_dir_all(&out).unwrap();
    output
}

/// Local inputs of several shapes: text, a compressed file, a hidden name.
fn write_inputs(dir: &TestDir) {
    dir.write("data/a.txt", "the quick brown fox\njumps over the lazy dog\nthe end\n");
    dir.write("data/sub/b.txt", "Straße 東京 tʰe ǅemal\nno newline at end");
    // A key the client must not encode again: non-ASCII, and `~`.
    dir.write("data/été~1.txt", "où est le café\n");
    let mut book = String::new();
    for i in 0..6000u32 {
        book.push_str(&format!("w{} x{} ", (i * 7919) % 613, i % 17));
        if i % 11 == 10 {
            book.push('\n');
        }
    }
    dir.write("data/sub/book.txt", &book);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, book.as_bytes()).unwrap();
    dir.write("data/c.txt.gz", gz.finish().unwrap());
}

#[test]
fn a_job_over_objects_equals_the_job_over_local_files_and_commits_its_outputs_whole() {
    let s3 = server();
    let dir = TestDir::new("s3-job");
    write_inputs(&dir);
    s3.make_bucket("job");
    s3.upload_tree(&dir.join("data"), "job/in");
    // Hidden names are left out, as in a directory.
    s3.check(&["put", "job/in/_SUCCESS", &dir.join("data/a.txt").to_string_lossy()]);
    s3.check(&["put", "job/in/.part.tmp", &dir.join("data/a.txt").to_string_lossy()]);
    let expected = reference_output(dir.path(), "wordcount", &["data"]);
    let mut master = run_job(&dir, "wordcount", 2, &["--output-dir", "s3://job/out", "--reduces", "3", "--split-size", "4K", "s3://job/in"], &s3.env);
    master.expect_success();
    assert_same_output(&s3.job_output("job/out", 3), &expected, &master.describe());
    // _SUCCESS comes last and lists every output with its size; nothing
    // temporary is left, nor the local staging directory.
    let objects = s3.list("job/out");
    let manifest = String::from_utf8(s3.get("job/out/_SUCCESS")).unwrap();
    let mut lines = manifest.lines();
    assert!(lines.next().unwrap().starts_with("job "), "{manifest}");
    let listed: Vec<(String, u64)> = lines.map(|line| line.split_once(' ').map(|(n, b)| (format!("out/{n}"), b.parse().unwrap())).unwrap()).collect();
    let outputs: Vec<(String, u64)> = objects.iter().filter(|(key, _)| key.contains("mr-out-")).cloned().collect();
    assert_eq!(listed, outputs, "{objects:?}");
    assert_eq!(objects.len(), 4, "{objects:?}");
    assert!(!dir.join(".mr-s3").exists(), "{}", dir.listing());
    // mr-sequential reads the same objects, named by their URLs.
    let by_url = reference_over(&dir, "indexer", &["s3://job/in"], &s3.env);
    assert!(String::from_utf8_lossy(&by_url).contains("s3://job/in/sub/book.txt"), "{}", String::from_utf8_lossy(&by_url));

    // Another job is refused the prefix, naming the job there; with
    // --overwrite it replaces the outputs, stale ones included (here with
    // compressed ones, which the plain ones may not stay beside).
    let error = master_error(&dir, &["--output-dir", "s3://job/out", "--reduces", "2", "s3://job/in/a.txt"], &s3.env);
    let first_job = manifest.lines().next().unwrap().strip_prefix("job ").unwrap();
    assert!(error.contains(&format!("output directory s3://job/out holds the outputs of job {first_job} (mr-out-0, ...)")), "{error}");
    let args = ["--output-dir", "s3://job/out", "--reduces", "2", "--overwrite", "--output-compression", "zst", "s3://job/in/a.txt"];
    let mut replacing = run_job(&dir, "wordcount", 1, &args, &s3.env);
    replacing.expect_success();
    let keys: Vec<String> = s3.list("job/out").into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys, ["out/_SUCCESS", "out/mr-out-0.zst", "out/mr-out-1.zst"]);
    let unpacked: Vec<u8> = (0..2).flat_map(|r| zstd::stream::decode_all(&s3.get(&format!("job/out/mr-out-{r}.zst"))[..]).unwrap()).collect();
    assert_same_output(&sorted_lines(&unpacked), &reference_output(dir.path(), "wordcount", &["data/a.txt"]), &replacing.describe());
    let manifest = String::from_utf8(s3.get("job/out/_SUCCESS")).unwrap();
    assert!(manifest.contains("\nmr-out-0.zst ") && manifest.contains("\nmr-out-1.zst "), "{manifest}");
}

#[test]
fn globs_on_object_storage_match_keys_and_one_matching_nothing_is_refused() {
    let s3 = server();
    let dir = TestDir::new("s3-glob");
    write_inputs(&dir);
    s3.make_bucket("glob");
    s3.upload_tree(&dir.join("data"), "glob/logs");
    let expected = reference_output(dir.path(), "wordcount", &["data/sub/b.txt", "data/sub/book.txt"]);
    let mut master = run_job(&dir, "wordcount", 1, &["--output-dir", "out", "--reduces", "2", "s3://glob/logs/s*/*.txt"], &s3.env);
    master.expect_success();
    assert_same_output(&job_output(&dir.join("out"), 2), &expected, &master.describe());
    let error = master_error(&dir, &["--output-dir", "out2", "s3://glob/logs/nothing-*.txt"], &s3.env);
    assert!(error.contains("input pattern s3://glob/logs/nothing-*.txt: matches no files"), "{error}");
    let error = master_error(&dir, &["--output-dir", "out2", "s3://glob/no-such-key"], &s3.env);
    assert!(error.contains("s3://glob/no-such-key: no such object"), "{error}");
}

#[test]
fn a_wrong_secret_is_refused_by_the_server_and_named_in_one_line() {
    let s3 = server();
    let dir = TestDir::new("s3-auth");
    write_inputs(&dir);
    s3.make_bucket("auth");
    s3.upload_tree(&dir.join("data"), "auth/in");
    let error = master_error(&dir, &["--output-dir", "out", "s3://auth/in"], &s3.wrong_secret());
    assert!(error.contains("s3://auth/in") && error.lines().count() == 1, "{error}");
    assert!(error.contains("403") || error.contains("Forbidden") || error.contains("SignatureDoesNotMatch"), "{error}");
}

/// A worker of `app` at `addr` with the server's environment.
fn s3_worker(label: &str, dir: &TestDir, addr: &str, app: &str, env: &[(String, String)]) -> Proc {
    let mut cmd = Command::new(worker_bin());
    cmd.arg("--master").arg(addr).arg(app).envs(env.iter().map(|(k, v)| (k, v)));
    Proc::spawn(label, cmd, dir.path())
}

/// Waits until the staged job's journal holds `what` `count` times.
fn wait_for_journal(journal: &Path, what: &str, count: usize) {
    wait_until(
        || std::fs::read_to_string(journal).unwrap_or_default().matches(&format!("{{\"{what}\"")).count() >= count,
        || format!("the journal {} never held {count} {what}", journal.display()),
    );
}

#[test]
fn a_killed_worker_and_a_restarted_master_still_commit_the_exact_outputs() {
    let s3 = server();
    let dir = TestDir::new("s3-faults");
    write_inputs(&dir);
    s3.make_bucket("faults");
    s3.upload_tree(&dir.join("data"), "faults/in");
    let expected = reference_output(dir.path(), "wordcount", &["data"]);
    let args = [
        "--output-dir",
        "s3://faults/out",
        "--reduces",
        "3",
        "--split-size",
        "2K",
        "--task-timeout",
        "3",
        "--param",
        "delay_ms=150",
        "s3://faults/in",
    ];
    let journal = dir.join(".mr-s3/faults/out/.mr-job/journal");
    let (mut master, addr) = start_master_with_env(dir.path(), "127.0.0.1:0", &args, &s3.env);
    let mut doomed = s3_worker("doomed", &dir, &addr, "slowcount", &s3.env);
    let mut survivor = s3_worker("survivor", &dir, &addr, "slowcount", &s3.env);
    wait_for_journal(&journal, "map_done", 3);
    doomed.kill();
    wait_for_journal(&journal, "map_done", 6);
    master.kill();
    assert!(s3.list("faults/out").is_empty(), "nothing is committed before the job ends");
    // Started again on the same address with the same job: it resumes from
    // its staged journal, and the surviving worker finds it there.
    let (mut master, _) = start_master_with_env(dir.path(), &addr, &args, &s3.env);
    master.expect_success();
    survivor.wait(std::time::Duration::from_secs(60));
    assert!(master.stdout().contains("before restart") || master.stderr().contains("resum"), "{}", master.describe());
    assert_same_output(&s3.job_output("faults/out", 3), &expected, &master.describe());
    let keys: Vec<String> = s3.list("faults/out").into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys, ["out/_SUCCESS", "out/mr-out-0", "out/mr-out-1", "out/mr-out-2"]);
}

#[test]
fn an_input_object_written_again_after_planning_fails_the_attempt_that_reads_it() {
    let s3 = server();
    let dir = TestDir::new("s3-changed");
    dir.write("in.txt", "one two three\n");
    dir.write("longer.txt", "one two three four five\n");
    s3.make_bucket("changed");
    s3.check(&["put", "changed/in.txt", &dir.join("in.txt").to_string_lossy()]);
    let args = ["--output-dir", "out", "--max-task-attempts", "1", "s3://changed/in.txt"];
    let (mut master, addr) = start_master_with_env(dir.path(), "127.0.0.1:0", &args, &s3.env);
    // Planned; now the object is replaced before any map reads it.
    s3.check(&["put", "changed/in.txt", &dir.join("longer.txt").to_string_lossy()]);
    let mut worker = s3_worker("worker", &dir, &addr, "wordcount", &s3.env);
    let error = master.expect_failure();
    worker.wait(std::time::Duration::from_secs(30));
    assert!(error.contains("s3://changed/in.txt: changed since the job was planned (14 bytes then, 24 now"), "{}", master.describe());
}

#[test]
fn a_server_down_for_seconds_is_waited_for_and_one_down_for_good_fails_the_commit_leaving_no_final_key() {
    let s3 = S3Server::own();
    let dir = TestDir::new("s3-outage");
    write_inputs(&dir);
    s3.make_bucket("outage");
    s3.upload_tree(&dir.join("data"), "outage/in");
    let expected = reference_output(dir.path(), "wordcount", &["data"]);
    let journal = dir.join(".mr-s3/outage/out/.mr-job/journal");
    // Down for a few seconds while maps read their splits: their requests
    // are tried again until it is back.
    let args = ["--output-dir", "s3://outage/out", "--reduces", "2", "--split-size", "2K", "--param", "delay_ms=100", "s3://outage/in"];
    let (mut master, addr) = start_master_with_env(dir.path(), "127.0.0.1:0", &args, &s3.env);
    let mut worker = s3_worker("worker", &dir, &addr, "slowcount", &s3.env);
    wait_for_journal(&journal, "map_done", 2);
    s3.kill();
    std::thread::sleep(std::time::Duration::from_secs(2));
    s3.revive();
    master.expect_success();
    worker.wait(std::time::Duration::from_secs(60));
    assert_same_output(&s3.job_output("outage/out", 2), &expected, &master.describe());

    // Down for good when the outputs are to be committed: the job fails
    // naming the URL, and no final key appears.
    let gate = dir.join("gate");
    let gate_param = format!("reduce_gate_file={}", gate.display());
    let args = ["--output-dir", "s3://outage/out2", "--reduces", "2", "--param", &gate_param, "s3://outage/in/a.txt"];
    let mut env = s3.env.clone();
    env.push(("MR_S3_RETRY_SECS".into(), "2".into()));
    let (mut master, addr) = start_master_with_env(dir.path(), "127.0.0.1:0", &args, &env);
    let mut worker = s3_worker("worker2", &dir, &addr, "slowcount", &env);
    wait_for_journal(&dir.join(".mr-s3/outage/out2/.mr-job/journal"), "map_done", 1);
    s3.kill();
    std::fs::write(&gate, "").unwrap();
    let error = master.expect_failure();
    worker.wait(std::time::Duration::from_secs(60));
    assert!(error.contains("publishing the outputs to object storage: s3://outage/out2/_temporary/"), "{}", master.describe());
    s3.revive();
    assert_eq!(s3.list("outage/out2"), Vec::<(String, u64)>::new());
}

#[test]
fn a_clusters_job_reads_its_inputs_from_object_storage() {
    let s3 = server();
    let dir = TestDir::new("s3-cluster");
    write_inputs(&dir);
    s3.make_bucket("cluster");
    s3.upload_tree(&dir.join("data"), "cluster/in");
    let (mut cluster, addr) = start_cluster_with("cluster", dir.path(), "127.0.0.1:0", &["--http", "off"], &s3.env);
    let mut cmd = Command::new(worker_bin());
    cmd.arg("--master").arg(&addr).args(["--slots", "2"]).envs(s3.env.iter().map(|(k, v)| (k, v)));
    let mut worker = Proc::spawn("cluster-worker", cmd, dir.path());
    let mr = |label: &str, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mr"));
        cmd.arg("--master").arg(&addr).args(args);
        Proc::spawn(label, cmd, dir.path())
    };
    let args = ["submit", "--wait", "--app", "wordcount", "--reduces", "2", "--split-size", "4K", "--output-dir", "out", "s3://cluster/in"];
    mr("submit", &args).expect_success();
    assert_same_output(&job_output(&dir.join("out"), 2), &reference_output(dir.path(), "wordcount", &["data"]), &cluster.describe());
    // Outputs go to a directory: an s3:// one is refused in one line.
    let refused = mr("refused", &["submit", "--app", "wordcount", "--output-dir", "s3://cluster/out", "s3://cluster/in"]).expect_failure();
    assert!(refused.contains("--output-dir s3://cluster/out: a cluster's jobs read inputs on object storage"), "{refused}");
    worker.kill();
    cluster.kill();
}
