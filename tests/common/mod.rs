//! Shared harness for the integration tests: run the real binaries in a
//! fresh directory, bounded in time, killed on drop, with everything needed
//! to debug printed when a check fails.
//!
//! The plugins are built by `cargo build --release` (the workspace's default
//! members), not by `cargo test`; run that first, as the README says.

#![allow(dead_code)] // each test file uses a different part

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for any one process in these tests.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(120);

pub fn master_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mr-master"))
}

pub fn worker_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mr-worker"))
}

pub fn sequential_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mr-sequential"))
}

/// The plugin `lib<name>.so` beside the binaries.
pub fn plugin(name: &str) -> PathBuf {
    let path = worker_bin().parent().unwrap().join(format!("lib{name}.so"));
    assert!(path.is_file(), "{} is missing: run `cargo build --release` before the tests", path.display());
    path
}

/// A fresh directory for one test; kept (and named) if the test fails.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let dir = tempfile::Builder::new().prefix(&format!("mr-test-{name}-")).tempdir().unwrap();
        TestDir { dir: Some(dir) }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    /// Writes a file (creating parent directories) and returns its path.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// A recursive listing, for failure messages.
    pub fn listing(&self) -> String {
        walkdir::WalkDir::new(self.path())
            .sort_by_file_name()
            .into_iter()
            .filter_map(Result::ok)
            .map(|e| {
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                format!("  {} ({size} bytes)", e.path().strip_prefix(self.path()).unwrap().display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = self.dir.take().unwrap().keep();
            eprintln!("test directory kept: {}", dir.display());
        }
    }
}

/// A running process whose stdout and stderr go to files; killed on drop.
pub struct Proc {
    child: Child,
    pub label: String,
    command: String,
    cwd: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    /// Starts `cmd` in `cwd`, logging to `<cwd>/<label>.out` and `.err`.
    pub fn spawn(label: &str, mut cmd: Command, cwd: &Path) -> Proc {
        let stdout = cwd.join(format!("{label}.out"));
        let stderr = cwd.join(format!("{label}.err"));
        cmd.current_dir(cwd).stdin(Stdio::null()).stdout(File::create(&stdout).unwrap()).stderr(File::create(&stderr).unwrap());
        let command = format!("{cmd:?}");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
        Proc { child, label: label.to_string(), command, cwd: cwd.to_owned(), stdout, stderr }
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("{} did not exit within {timeout:?}\n{}", self.label, self.describe());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits and asserts a zero exit.
    pub fn expect_success(&mut self) {
        let status = self.wait(PROCESS_TIMEOUT);
        assert!(status.success(), "{} failed with {status}\n{}", self.label, self.describe());
    }

    /// Waits, asserts a non-zero exit, and returns stderr.
    pub fn expect_failure(&mut self) -> String {
        let status = self.wait(PROCESS_TIMEOUT);
        assert!(!status.success(), "{} should have failed\n{}", self.label, self.describe());
        self.stderr()
    }

    /// Waits for the process and checks it exited with `code`; returns its stderr.
    pub fn expect_exit_code(&mut self, code: i32) -> String {
        let status = self.wait(PROCESS_TIMEOUT);
        assert_eq!(status.code(), Some(code), "{} should have exited with {code}\n{}", self.label, self.describe());
        self.stderr()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The command, its directory and its output, for failure messages.
    pub fn describe(&self) -> String {
        format!("command: {}\ncwd: {}\n--- stdout\n{}\n--- stderr\n{}", self.command, self.cwd.display(), self.stdout(), self.stderr())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a master on a free port in `cwd` with `args` (flags, then inputs);
/// returns it and its address once it accepts connections.
pub fn start_master(cwd: &Path, args: &[&str]) -> (Proc, String) {
    start_master_at(cwd, "127.0.0.1:0", args)
}

/// Starts a master listening on `listen` (a restarted master takes its
/// predecessor's address, where the workers look for it).
pub fn start_master_at(cwd: &Path, listen: &str, args: &[&str]) -> (Proc, String) {
    start_master_with_env(cwd, listen, args, &[])
}

/// [`start_master_at`] with `env` added to the master's environment.
pub fn start_master_with_env(cwd: &Path, listen: &str, args: &[&str], env: &[(String, String)]) -> (Proc, String) {
    let addr_file = cwd.join("master.addr");
    // A previous job's address would send the workers to a dead port.
    let _ = std::fs::remove_file(&addr_file);
    let mut cmd = Command::new(master_bin());
    cmd.arg("--listen").arg(listen).arg("--addr-file").arg(&addr_file).args(args).envs(env.iter().map(|(k, v)| (k, v)));
    let mut master = Proc::spawn("master", cmd, cwd);
    let addr = wait_for_address(&mut master, &addr_file, "master");
    (master, addr)
}

/// The address `server` writes to `addr_file` once it listens (within
/// 20 s); panics, naming it `what`, if it exits or takes longer.
fn wait_for_address(server: &mut Proc, addr_file: &Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(addr) = std::fs::read_to_string(addr_file) {
            return addr.trim().to_owned();
        }
        if let Some(status) = server.try_exit() {
            panic!("{what} exited ({status}) before listening\n{}", server.describe());
        }
        assert!(Instant::now() < deadline, "{what} did not write its address\n{}", server.describe());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a cluster (`mr-master --serve`) in `dir`, its log files named
/// `label`, its state in `dir/state`, listening on `listen`, with `extra`
/// flags and `env` added to its environment; returns it and its address
/// once it accepts connections. Load limits are off unless `extra` sets
/// them: tests run side by side on a small machine.
pub fn start_cluster_with(label: &str, dir: &Path, listen: &str, extra: &[&str], env: &[(String, String)]) -> (Proc, String) {
    let addr_file = dir.join("cluster.addr");
    let _ = std::fs::remove_file(&addr_file);
    let mut cmd = Command::new(master_bin());
    cmd.args(["--serve", "--listen", listen, "--state-dir", "state"]).arg("--addr-file").arg(&addr_file).args(extra);
    for (flag, off) in [("--max-load-per-core", "off"), ("--min-free-disk", "0"), ("--min-free-memory", "0")] {
        if !extra.contains(&flag) {
            cmd.args([flag, off]);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut cluster = Proc::spawn(label, cmd, dir);
    let addr = wait_for_address(&mut cluster, &addr_file, "the cluster");
    (cluster, addr)
}

/// The id `mr-worker` gives itself: `host:pid`.
pub fn worker_id(worker: &Proc) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    format!("{host}:{}", worker.pid())
}

/// Makes `cmd`'s process start with at most `limit` open file descriptors
/// (`ulimit -n`).
pub fn limit_open_files(cmd: &mut Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    let rlimit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) });
    }
}

/// Starts a worker for `app` against `addr`, in `cwd`.
pub fn start_worker(label: &str, cwd: &Path, addr: &str, app: &str) -> Proc {
    start_worker_with(label, cwd, addr, app, &[])
}

/// Starts a worker with extra flags.
pub fn start_worker_with(label: &str, cwd: &Path, addr: &str, app: &str, flags: &[&str]) -> Proc {
    let mut cmd = Command::new(worker_bin());
    cmd.arg("--master").arg(addr).args(flags).arg(app);
    Proc::spawn(label, cmd, cwd)
}

/// Runs `mr-sequential` for `app` over `inputs` (from `cwd`) and returns its
/// output, sorted: the reference a job must reproduce.
pub fn reference_output(cwd: &Path, app: &str, inputs: &[&str]) -> Vec<u8> {
    let out_dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(sequential_bin());
    cmd.arg("--output-dir").arg(out_dir.path()).arg(app).args(inputs);
    let mut seq = Proc::spawn("sequential", cmd, cwd);
    seq.expect_success();
    sorted_lines(&std::fs::read(out_dir.path().join("mr-out-0")).unwrap())
}

/// `mr-sequential --reduces 0` over `inputs`, run in `cwd`: a map-only
/// job's reference outputs, one per input file, in order.
pub fn map_only_reference(cwd: &Path, app: &str, inputs: &[&str]) -> Vec<Vec<u8>> {
    let out_dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(sequential_bin());
    cmd.args(["--reduces", "0", "--output-dir"]).arg(out_dir.path()).arg(app).args(inputs);
    Proc::spawn("sequential-map-only", cmd, cwd).expect_success();
    let count = std::fs::read_dir(out_dir.path()).unwrap().count();
    (0..count).map(|m| std::fs::read(out_dir.path().join(format!("mr-out-{m}"))).unwrap()).collect()
}

/// Checks that `dir` holds a map-only job's outputs equal to `expected`,
/// byte for byte (their lines in the order the maps emitted them), and no
/// other `mr-out-*`.
pub fn assert_map_only_output(dir: &Path, expected: &[Vec<u8>], context: &str) {
    for (m, expected) in expected.iter().enumerate() {
        let path = dir.join(format!("mr-out-{m}"));
        let actual = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}\n{context}", path.display()));
        assert_same_output(&actual, expected, &format!("mr-out-{m}\n{context}"));
    }
    let extra = dir.join(format!("mr-out-{}", expected.len()));
    assert!(!extra.exists(), "{} is beside the job's outputs\n{context}", extra.display());
}

/// The lines of all `mr-out-*` files in `dir`, sorted by bytes, after
/// checking each file is sorted by key and `expected_files` exist.
pub fn job_output(dir: &Path, expected_files: u32) -> Vec<u8> {
    let mut all = Vec::new();
    for r in 0..expected_files {
        let path = dir.join(format!("mr-out-{r}"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let keys: Vec<&[u8]> = bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| l.split(|&b| b == b' ').next().unwrap()).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{} is not sorted by key", path.display());
        all.extend_from_slice(&bytes);
    }
    assert!(!dir.join(format!("mr-out-{expected_files}")).exists(), "more output files than reduces");
    sorted_lines(&all)
}

pub fn sorted_lines(bytes: &[u8]) -> Vec<u8> {
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    lines.sort();
    let mut out = Vec::new();
    for line in lines {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// Asserts two outputs are equal, showing the first differing line.
pub fn assert_same_output(actual: &[u8], expected: &[u8], context: &str) {
    if actual == expected {
        return;
    }
    let a: Vec<_> = actual.split(|&b| b == b'\n').collect();
    let e: Vec<_> = expected.split(|&b| b == b'\n').collect();
    let i = a.iter().zip(&e).position(|(x, y)| x != y).unwrap_or(a.len().min(e.len()));
    panic!(
        "output differs from the reference at line {i}: got {:?}, expected {:?} ({} vs {} lines)\n{context}",
        a.get(i).map(|l| String::from_utf8_lossy(l)),
        e.get(i).map(|l| String::from_utf8_lossy(l)),
        a.len(),
        e.len()
    );
}

/// Entries of `dir` other than a job's outputs (`mr-out-*` and the
/// `_SUCCESS` marker) and the harness's own files.
pub fn stray_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("mr-out-") && n != "_SUCCESS" && !n.ends_with(".out") && !n.ends_with(".err") && n != "master.addr")
        .collect()
}

/// Opens a connection to the master at `addr` and runs the handshake as
/// `identity` with `secret`, as a worker (or an impostor) would, and asks
/// for the RPC service; returns the connection ready for RPC, or how the
/// handshake ended.
pub async fn handshaken(
    addr: &str,
    secret: Option<&[u8]>,
    identity: &mapreduce::handshake::Identity,
) -> Result<mapreduce::secure::Stream, mapreduce::handshake::HandshakeError> {
    handshaken_for(addr, secret, identity, mapreduce::files::SERVICE_RPC).await
}

/// [`handshaken`], asking for `service` (a byte of [`mapreduce::files`] or
/// [`mapreduce::upload`]).
pub async fn handshaken_for(
    addr: &str,
    secret: Option<&[u8]>,
    identity: &mapreduce::handshake::Identity,
    service: u8,
) -> Result<mapreduce::secure::Stream, mapreduce::handshake::HandshakeError> {
    let secret = secret.map(|s| mapreduce::handshake::Secret::from_bytes(s).expect("a test secret of 16 bytes or more"));
    mapreduce::handshake::dial(addr, secret.as_ref(), identity, service, None).await
}

/// Runs `future` to its end on a runtime of its own (tests are synchronous).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

/// Waits until `path` exists (a fixture app creates it when a map starts).
pub fn wait_for_file(path: &Path, what: &str) {
    wait_until(|| path.exists(), || format!("{what}: {} never appeared", path.display()));
}

/// Waits until `ready` holds, checking every 20 ms; after 30 s, panics
/// with `failure`'s message.
pub fn wait_until(mut ready: impl FnMut() -> bool, failure: impl FnOnce() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "{}", failure());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `fake output` as attempt `attempt` of reduce `partition` to the
/// master at `addr`, as `rogue` (with `secret`, if any); returns the
/// master's answer (empty if the handshake failed).
pub async fn forged_upload(addr: &str, secret: Option<&[u8]>, rogue: &mapreduce::handshake::Identity, partition: u32, attempt: u64) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = handshaken_for(addr, secret, rogue, mapreduce::upload::SERVICE_UPLOAD).await else { return Vec::new() };
    let mut wire = partition.to_le_bytes().to_vec();
    wire.extend_from_slice(&attempt.to_le_bytes());
    wire.extend_from_slice(&11u32.to_le_bytes());
    wire.extend_from_slice(b"fake output");
    wire.extend_from_slice(&0u32.to_le_bytes());
    wire.extend_from_slice(&crc32fast::hash(b"fake output").to_le_bytes());
    // The master may refuse before it has read it all.
    let _ = stream.write_all(&wire).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    answer
}

/// Writes `files` small word-count inputs, `in-<i>.txt`; returns their names.
pub fn write_word_inputs(dir: &TestDir, files: usize) -> Vec<String> {
    (0..files)
        .map(|i| {
            let name = format!("in-{i}.txt");
            dir.write(&name, format!("alpha beta {i}\ngamma alpha delta {}\n", i * 7).repeat(40));
            name
        })
        .collect()
}

/// Debian's Chromium, or `$CHROMIUM`.
pub fn chromium() -> Option<PathBuf> {
    let candidates = [std::env::var("CHROMIUM").ok(), Some("/usr/bin/chromium".into()), Some("/usr/bin/chromium-browser".into())];
    candidates.into_iter().flatten().map(PathBuf::from).find(|p| p.is_file())
}

/// Runs headless Chromium on `url` with `args` (e.g. `--dump-dom`), bounded in time.
pub fn run_chromium(binary: &Path, dir: &TestDir, label: &str, url: &str, args: &[&str]) -> Proc {
    let profile = dir.join(&format!("{label}-profile"));
    let mut cmd = Command::new(binary);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=4000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url);
    let mut browser = Proc::spawn(label, cmd, dir.path());
    let status = browser.wait(Duration::from_secs(60));
    assert!(status.success(), "chromium failed ({status})\n{}", browser.describe());
    browser
}
