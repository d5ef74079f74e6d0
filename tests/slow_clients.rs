//! The status page's clients against the job: however many connect, and
//! however slowly they talk, they must not take the descriptors the job
//! needs (issue 18: slow clients of the status page used the coordinator's
//! last descriptors, and the job failed while publishing with "Too many
//! open files").

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{assert_same_output, job_output, limit_open_files, master_bin, reference_output, start_worker_with, wait_for_file, Proc, TestDir};

/// Connections to the status page kept open at once, more than the
/// master's descriptors.
const SLOW_CLIENTS: usize = 100;
/// The master's descriptor limit: 16 connections (2 descriptors each, 32
/// kept for its files), of which 4 for the status page.
const MASTER_DESCRIPTORS: u64 = 64;

/// Clients of a status page that hold their connections open and send
/// nothing, or half a request's header, and reconnect as soon as the
/// server closes one: a sustained slowloris until [`SlowClients::stop`].
struct SlowClients {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<usize>>,
}

impl SlowClients {
    fn start(addr: &str, count: usize) -> SlowClients {
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, stopped) = (addr.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut clients: Vec<Option<TcpStream>> = (0..count).map(|_| None).collect();
            let mut connections = 0;
            while !stopped.load(Ordering::Relaxed) {
                for (i, client) in clients.iter_mut().enumerate() {
                    if client.as_mut().is_some_and(closed_by_server) {
                        *client = None;
                    }
                    if client.is_none() {
                        *client = slow_client(&addr, i % 3 == 0);
                        connections += usize::from(client.is_some());
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            connections
        });
        SlowClients { stop, thread: Some(thread) }
    }

    /// Closes every connection; returns how many were made in all.
    fn stop(&mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

impl Drop for SlowClients {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A connection to `addr` that says nothing, or half a header.
fn slow_client(addr: &str, half_a_header: bool) -> Option<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1)).ok()?;
    if half_a_header {
        stream.write_all(b"GET /api/status HTTP/1.1\r\nHost: slow\r\nX-Slow: ").ok()?;
    }
    stream.set_nonblocking(true).ok()?;
    Some(stream)
}

/// Whether the server has closed `stream` (what it sent before is read
/// and dropped).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// `GET path` over HTTP/1.0 (the answer ends when the server closes):
/// the status code and body, or why not.
fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| format!("no header end in {response:?}"))?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((code, body.to_owned()))
}

/// The address the master printed for its status page.
fn status_addr(master: &mut Proc) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(url) = master.stdout().lines().find_map(|l| l.strip_prefix("status page: ").map(str::to_owned)) {
            return url.trim_start_matches("http://").trim_end_matches('/').to_owned();
        }
        assert!(master.try_exit().is_none() && Instant::now() < deadline, "no status URL printed\n{}", master.describe());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn slow_status_clients_do_not_fail_the_job_and_the_page_answers_once_they_go() {
    let dir = TestDir::new("slow-status-clients");
    let inputs: Vec<String> =
        (0..8).map(|i| dir.write(&format!("in-{i}.txt"), format!("alpha beta {i}\ngamma alpha {}\n", i * 3)).display().to_string()).collect();
    let expected = reference_output(dir.path(), "slowcount", &inputs.iter().map(String::as_str).collect::<Vec<_>>());
    let mut master = Command::new(master_bin());
    master.args(["--listen", "127.0.0.1:0", "--addr-file", "master.addr", "--http", "127.0.0.1:0", "--linger", "60", "--reduces", "2"]);
    master.args(["--param", "delay_ms=300"]).args(&inputs);
    limit_open_files(&mut master, MASTER_DESCRIPTORS);
    let mut master = Proc::spawn("master", master, dir.path());
    let http = status_addr(&mut master);
    wait_for_file(&dir.join("master.addr"), "master");
    let addr = std::fs::read_to_string(dir.join("master.addr")).unwrap().trim().to_owned();

    // The slow clients come first and stay through the whole job,
    // publishing included.
    let mut slow = SlowClients::start(&http, SLOW_CLIENTS);
    std::thread::sleep(Duration::from_millis(1000));
    let mut workers: Vec<Proc> = (0..2).map(|i| start_worker_with(&format!("worker{i}"), dir.path(), &addr, "slowcount", &[])).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !dir.join("_SUCCESS").exists() {
        assert!(master.try_exit().is_none(), "the master stopped before the job ended\n{}", master.describe());
        assert!(Instant::now() < deadline, "the job did not end in 90 s\n{}\n{}", master.describe(), dir.listing());
        std::thread::sleep(Duration::from_millis(50));
    }
    for worker in &mut workers {
        worker.expect_success();
    }
    assert_same_output(&job_output(dir.path(), 2), &expected, &dir.listing());

    // Once they go, the page answers, with the job's end.
    let made = slow.stop();
    assert!(made >= SLOW_CLIENTS, "only {made} slow connections were made");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match get(&http, "/api/status") {
            Ok((200, body)) => break body,
            other => assert!(Instant::now() < deadline, "the status page does not answer: {other:?}\n{}", master.describe()),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let status: serde_json::Value = serde_json::from_str(&status).unwrap_or_else(|e| panic!("{e}: {status}"));
    assert_eq!(status["job"]["state"], "succeeded", "{status:#}");

    // SAFETY: kill only signals the master, a child of this test.
    assert_eq!(unsafe { libc::kill(master.pid() as i32, libc::SIGINT) }, 0);
    master.expect_success();
    let stderr = master.stderr();
    assert!(!stderr.contains("Too many open files"), "the master ran out of descriptors\n{}", master.describe());
}
