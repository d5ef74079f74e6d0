//! Bad input to the binaries: each gives a one-line error naming the thing
//! and the cause, a non-zero exit, and no half-written output.

mod common;

use std::process::Command;

use common::*;

/// Runs a binary to completion in `dir`; returns its stderr after checking
/// it failed with exactly one line of error.
fn one_line_failure(label: &str, cmd: Command, dir: &TestDir) -> String {
    let mut proc = Proc::spawn(label, cmd, dir.path());
    let stderr = proc.expect_failure();
    let errors: Vec<_> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "expected one error line\n{}", proc.describe());
    errors[0].to_string()
}

#[test]
fn master_refuses_a_missing_input_before_doing_anything() {
    let dir = TestDir::new("missing-input");
    dir.write("here.txt", "x");
    let mut cmd = Command::new(master_bin());
    cmd.args(["--listen", "127.0.0.1:0", "here.txt", "not-there.txt"]);
    let line = one_line_failure("master", cmd, &dir);
    assert!(line.contains("input not-there.txt: No such file or directory"), "{line}");
    let mut left = stray_files(dir.path());
    left.sort();
    assert_eq!(left, ["here.txt"], "nothing may be created");
}

#[test]
fn master_refuses_a_missing_or_doubled_shipped_file() {
    let dir = TestDir::new("missing-shipped");
    dir.write("here.txt", "x");
    dir.write("a/same.txt", "1");
    dir.write("b/same.txt", "2");
    let mut cmd = Command::new(master_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--files", "here.txt,not-there.txt", "here.txt"]);
    let line = one_line_failure("master", cmd, &dir);
    assert!(line.contains("--files not-there.txt: No such file or directory"), "{line}");
    let mut cmd = Command::new(master_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--files", "a/same.txt", "--files", "b/same.txt", "here.txt"]);
    let line = one_line_failure("master", cmd, &dir);
    assert!(line.contains("--files b/same.txt: has the same name as a/same.txt"), "{line}");
    let mut left = stray_files(dir.path());
    left.sort();
    assert_eq!(left, ["a", "b", "here.txt"], "nothing may be created");
}

#[test]
fn master_refuses_an_unreadable_input() {
    let dir = TestDir::new("unreadable-input");
    let path = dir.write("secret.txt", "x");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&path).is_ok() {
        eprintln!("skipped: running as a user who can read mode-000 files (root)");
        return;
    }
    let mut cmd = Command::new(master_bin());
    cmd.args(["--listen", "127.0.0.1:0", "secret.txt"]);
    let line = one_line_failure("master", cmd, &dir);
    assert!(line.contains("input secret.txt: Permission denied"), "{line}");
}

#[test]
fn master_reports_an_address_in_use() {
    let dir = TestDir::new("addr-in-use");
    dir.write("in.txt", "x");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut cmd = Command::new(master_bin());
    cmd.args(["--listen", &addr, "in.txt"]);
    let line = one_line_failure("master", cmd, &dir);
    assert!(line.contains(&format!("cannot listen on {addr}")) && line.contains("in use"), "{line}");
    assert!(!dir.join("mr-out-0").exists());
}

#[test]
fn master_rejects_bad_flag_values() {
    let dir = TestDir::new("bad-flags");
    dir.write("in.txt", "x");
    for args in [["--reduces", "100001"], ["--task-timeout", "-1"], ["--task-timeout", "soon"], ["--max-task-failures", "0"]] {
        let mut cmd = Command::new(master_bin());
        cmd.args(["--listen", "127.0.0.1:0"]).args(args).arg("in.txt");
        let mut proc = Proc::spawn("master", cmd, dir.path());
        let stderr = proc.expect_failure();
        assert!(stderr.contains(args[0]) || stderr.contains(args[1]), "{args:?}: {}", proc.describe());
    }
}

#[test]
fn worker_reports_an_unreachable_master() {
    let dir = TestDir::new("unreachable");
    // A port that was free a moment ago: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut cmd = Command::new(worker_bin());
    cmd.args(["--master", &addr, "--connect-timeout", "0.5", "wordcount"]);
    let line = one_line_failure("worker", cmd, &dir);
    assert!(line.contains(&format!("could not reach the coordinator at {addr} within 0.5 s")), "{line}");
    assert!(line.contains("refused"), "{line}");
}

#[test]
fn worker_takes_the_master_address_from_the_environment() {
    let dir = TestDir::new("env-master");
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut cmd = Command::new(worker_bin());
    cmd.env("MR_MASTER", &addr).args(["--connect-timeout", "0.2", "wordcount"]);
    let line = one_line_failure("worker", cmd, &dir);
    assert!(line.contains(&addr), "{line}");
}

#[test]
fn worker_and_sequential_report_plugin_problems() {
    let dir = TestDir::new("plugins");
    dir.write("in.txt", "x");
    let not_a_library = dir.write("notes.so", "just text");
    let cases = [
        ("nosuchapp".to_string(), "plugin 'nosuchapp' not found: no ".to_string()),
        ("./missing.so".to_string(), "plugin ./missing.so: no such file".to_string()),
        (not_a_library.to_string_lossy().into_owned(), "not a loadable shared library".to_string()),
        (
            plugin("wrong_abi").to_string_lossy().into_owned(),
            format!("built for plugin ABI version 999, but this mr-worker speaks version {}", mapreduce::abi::ABI_VERSION),
        ),
    ];
    for (app, expected) in cases {
        let mut worker = Command::new(worker_bin());
        worker.args(["--master", "127.0.0.1:9", &app]);
        let line = one_line_failure("worker", worker, &dir);
        assert!(line.contains(&expected), "worker {app}: {line}");
        let mut seq = Command::new(sequential_bin());
        seq.args([&app, "in.txt"]);
        let line = one_line_failure("sequential", seq, &dir);
        assert!(line.contains(&expected), "sequential {app}: {line}");
    }
    assert!(!dir.join("mr-out-0").exists());
}

#[test]
fn sequential_refuses_a_missing_input_and_writes_nothing() {
    let dir = TestDir::new("seq-missing");
    let mut cmd = Command::new(sequential_bin());
    cmd.args(["wordcount", "gone.txt"]);
    let line = one_line_failure("sequential", cmd, &dir);
    assert!(line.contains("input gone.txt: No such file or directory"), "{line}");
    assert!(stray_files(dir.path()).is_empty());
}

#[test]
fn a_terminated_master_says_so_and_keeps_its_job_for_the_next_run() {
    let dir = TestDir::new("sigterm");
    dir.write("in.txt", "words");
    let (mut master, _addr) = start_master(dir.path(), &["in.txt"]);
    assert!(dir.join(".mr-job/journal").is_file(), "the running job should have its journal\n{}", dir.listing());
    let status = Command::new("kill").args(["-TERM", &master.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let stderr = master.expect_failure();
    assert!(
        stderr.contains(
            "mr-master: error: interrupted before the job finished; run the same command again to resume it (or add --fresh to start over)"
        ),
        "{}",
        master.describe()
    );
    assert!(dir.join(".mr-job/journal").is_file(), "the job directory should be kept to resume\n{}", dir.listing());
    assert!(!dir.join("mr-out-0").exists() && !dir.join("_SUCCESS").exists());
}
