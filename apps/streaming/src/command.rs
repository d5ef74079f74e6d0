//! A Streaming command as a running process: fed on its standard input,
//! read from its standard output by a thread of its own (so that feeding
//! never waits on a full output pipe), and its standard error passed on to
//! the worker's while its last lines are kept for the failure message.
//! Standard error lines of Hadoop Streaming's reporter protocol are taken
//! as reports instead ([`Report`]): `reporter:counter:GROUP,COUNTER,AMOUNT`
//! and `reporter:status:MESSAGE`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mapreduce::AppError;

/// Lines of a command's standard error kept for its failure message.
const STDERR_TAIL_LINES: usize = 10;
/// The most bytes of one kept standard error line.
const STDERR_LINE_BYTES: usize = 300;

/// A started command.
pub struct Running {
    command: String,
    child: Child,
    stdin: Option<std::io::BufWriter<ChildStdin>>,
    /// What the command printed that the caller has not taken yet.
    printed: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<std::io::Result<()>>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_reader: Option<JoinHandle<()>>,
    /// What it reported on its standard error that the caller has not taken.
    reports: Arc<Mutex<Vec<Report>>>,
    /// How closing its input went, once it was closed.
    closed: std::io::Result<()>,
}

impl Running {
    /// Starts `command` under `sh -c`, with `env` added to its
    /// environment, in the directory of the job's shipped files if it
    /// ships any (`--files`, as Hadoop Streaming's `-files`), else in the
    /// worker's directory.
    /// Lines of its standard error go to the worker's after `tag` (which
    /// task they are from).
    pub fn start(command: &str, env: &[(&str, String)], tag: &str) -> Result<Running, AppError> {
        let mut shell = Command::new("sh");
        // A group of its own, so that a pipeline (`a | b`) or anything the
        // command starts is killed with it; and killed if the task process
        // dies first (the worker kills a hung attempt's task process).
        shell.process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            shell.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        if let Some(dir) = mapreduce::JobContext::files_dir() {
            shell.current_dir(dir);
        }
        let mut child = shell
            .arg("-c")
            .arg(command)
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        let stdin = child.stdin.take().map(std::io::BufWriter::new);
        let printed = Arc::new(Mutex::new(Vec::new()));
        let reader = child.stdout.take().map(|stdout| spawn_reader(stdout, printed.clone()));
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let reports = Arc::new(Mutex::new(Vec::new()));
        let stderr_reader = child.stderr.take().map(|stderr| spawn_stderr_reader(stderr, tag.to_owned(), stderr_tail.clone(), reports.clone()));
        Ok(Running { command: command.to_owned(), child, stdin, printed, reader, stderr_tail, stderr_reader, reports, closed: Ok(()) })
    }

    /// Writes `bytes` to the command's standard input. A command that has
    /// stopped reading (it closed its input, or exited) is not fed more,
    /// and that is no error in itself: its exit status says how it went. A
    /// failed write is explained by that status if the command failed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), AppError> {
        let Some(stdin) = self.stdin.as_mut() else { return Ok(()) };
        match stdin.write_all(bytes) {
            Ok(()) => Ok(()),
            Err(error) => {
                self.stdin = None;
                self.write_failed(error)
            }
        }
    }

    /// What the command has reported so far (taken: each report once).
    pub fn take_reports(&self) -> Vec<Report> {
        std::mem::take(&mut *lock(&self.reports))
    }

    /// Moves what the command has printed so far to `out`.
    pub fn take_printed(&self, out: &mut Vec<u8>) {
        out.append(&mut lock(&self.printed));
    }

    /// Closes the command's input (it has had all of it), waits up to
    /// `wait` for it to exit, and moves what it printed meanwhile to
    /// `out`; true once it has exited ([`Running::finish`] then ends it).
    /// Called in a loop, it passes a command's output on as it comes.
    pub fn run_on(&mut self, wait: std::time::Duration, out: &mut Vec<u8>) -> bool {
        self.close_input();
        let exited = matches!(self.child.try_wait(), Ok(Some(_)) | Err(_));
        if !exited {
            std::thread::sleep(wait);
        }
        self.take_printed(out);
        exited
    }

    /// Flushes and closes the command's input, once.
    fn close_input(&mut self) {
        if let Some(stdin) = self.stdin.take() {
            self.closed = stdin.into_inner().map(drop).map_err(|e| e.into_error());
        }
    }

    /// Closes the command's input, waits for it to exit and for its output
    /// to be read, and moves the rest of its output to `out`; returns the
    /// reports not taken yet. A command that exits with a non-zero status
    /// fails, its last lines of standard error in the message.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<Vec<Report>, AppError> {
        // Its exit status explains a failure best, so it is checked first.
        self.close_input();
        let closed = std::mem::replace(&mut self.closed, Ok(()));
        let read = self.reader.take().map_or(Ok(Ok(())), JoinHandle::join);
        let status = self.child.wait().map_err(|e| format!("waiting for {:?}: {e}", self.command))?;
        if let Some(stderr_reader) = self.stderr_reader.take() {
            let _ = stderr_reader.join();
        }
        if !status.success() {
            return Err(self.exited(status));
        }
        // A command that exits at once without reading its input breaks
        // the pipe: not an error in itself, its exit status says how it went.
        if let Err(e) = closed {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(format!("writing to {:?}: {e}", self.command).into());
            }
        }
        read.map_err(|_| "the reader of a command's output panicked")?.map_err(|e| format!("reading from {:?}: {e}", self.command))?;
        self.take_printed(out);
        Ok(self.take_reports())
    }

    fn write_failed(&mut self, error: std::io::Error) -> Result<(), AppError> {
        // Give a command that is exiting the moment to do so.
        std::thread::sleep(std::time::Duration::from_millis(10));
        match self.child.try_wait() {
            Ok(Some(status)) if !status.success() => {
                if let Some(stderr_reader) = self.stderr_reader.take() {
                    let _ = stderr_reader.join();
                }
                Err(self.exited(status))
            }
            _ if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            _ => Err(format!("writing to {:?}: {error}", self.command).into()),
        }
    }

    /// The failure of a command that exited with `status`.
    fn exited(&self, status: ExitStatus) -> AppError {
        let tail = lock(&self.stderr_tail);
        if tail.is_empty() {
            format!("{:?} exited with {status}", self.command).into()
        } else {
            let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
            format!("{:?} exited with {status}; its last lines of standard error: {}", self.command, lines.join(" | ")).into()
        }
    }
}

impl Drop for Running {
    /// A command left running (its attempt failed or was given up) is
    /// killed, not left behind.
    fn drop(&mut self) {
        if self.reader.is_some() {
            // Its buffered input is dropped unwritten: a flush could wait
            // forever on a command that hangs, the likely reason it is
            // being dropped.
            if let Some(stdin) = self.stdin.take() {
                drop(stdin.into_parts());
            }
            if let Ok(group) = i32::try_from(self.child.id()) {
                // SAFETY: kill has no memory effects; the group is the
                // command's own (process_group(0) at its start).
                unsafe {
                    libc::kill(-group, libc::SIGKILL);
                }
            }
            let _ = self.child.wait();
        }
    }
}

/// Runs `command` with `input` as its whole standard input and returns
/// everything it printed (a combiner over one buffer of pairs).
pub fn run_over(command: &str, env: &[(&str, String)], tag: &str, input: &[u8]) -> Result<Vec<u8>, AppError> {
    let mut running = Running::start(command, env, tag)?;
    let mut out = Vec::new();
    for chunk in input.chunks(FEED_CHUNK) {
        running.feed(chunk)?;
    }
    crate::apply(&running.finish(&mut out)?);
    Ok(out)
}

/// Bytes written to a command at a time, between which its output is
/// taken, so that what it printed does not pile up while a large input is
/// fed.
pub const FEED_CHUNK: usize = 1 << 20;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn spawn_reader(mut stdout: impl Read + Send + 'static, sink: Arc<Mutex<Vec<u8>>>) -> JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match stdout.read(&mut buffer)? {
                0 => return Ok(()),
                n => lock(&sink).extend_from_slice(buffer.get(..n).unwrap_or_default()),
            }
        }
    })
}

/// A line of Hadoop Streaming's reporter protocol on a command's
/// standard error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// `reporter:counter:GROUP,COUNTER,AMOUNT`: add AMOUNT to the app's
    /// counter `GROUP.COUNTER`.
    Counter(String, u64),
    /// `reporter:status:MESSAGE`: the command is alive and working.
    Status,
}

/// The longest counter name (`GROUP.COUNTER`) a command may report.
const MAX_COUNTER_NAME: usize = 128;

impl Report {
    /// The report a standard error line makes, if it is one (a malformed
    /// `reporter:` line is an ordinary line).
    fn parse(line: &[u8]) -> Option<Report> {
        let text = std::str::from_utf8(line).ok()?.trim_end_matches(['\n', '\r']);
        if text.starts_with("reporter:status:") {
            return Some(Report::Status);
        }
        let mut fields = text.strip_prefix("reporter:counter:")?.splitn(3, ',');
        let (group, counter, amount) = (fields.next()?, fields.next()?, fields.next()?.trim().parse().ok()?);
        let name = format!("{group}.{counter}");
        (!group.is_empty() && !counter.is_empty() && name.len() <= MAX_COUNTER_NAME).then_some(Report::Counter(name, amount))
    }
}

/// Passes the command's standard error on to the worker's, line by line,
/// and keeps the last [`STDERR_TAIL_LINES`] (each cut to
/// [`STDERR_LINE_BYTES`]); reporter lines go to `reports` instead.
fn spawn_stderr_reader(
    stderr: impl Read + Send + 'static,
    tag: String,
    tail: Arc<Mutex<VecDeque<String>>>,
    reports: Arc<Mutex<Vec<Report>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr);
        let mut line = Vec::new();
        while lines.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            if let Some(report) = Report::parse(&line) {
                lock(&reports).push(report);
                line.clear();
                continue;
            }
            {
                let mut worker_stderr = std::io::stderr().lock();
                let _ = worker_stderr.write_all(tag.as_bytes());
                let _ = worker_stderr.write_all(&line);
                if !line.ends_with(b"\n") {
                    let _ = worker_stderr.write_all(b"\n");
                }
            }
            let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line));
            let kept: String = text
                .chars()
                .scan(0, |bytes, c| {
                    *bytes += c.len_utf8();
                    (*bytes <= STDERR_LINE_BYTES).then_some(c)
                })
                .collect();
            let mut tail = lock(&tail);
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(kept);
            line.clear();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reporter_lines_are_reports_and_malformed_ones_are_not() {
        assert_eq!(Report::parse(b"reporter:counter:app,rows,12\n"), Some(Report::Counter("app.rows".into(), 12)));
        assert_eq!(Report::parse(b"reporter:status:half way\n"), Some(Report::Status));
        for line in [&b"reporter:counter:app,rows\n"[..], b"reporter:counter:,rows,1", b"reporter:counter:a,b,-1", b"counter:a,b,1", b"\xff"] {
            assert_eq!(Report::parse(line), None, "{:?}", String::from_utf8_lossy(line));
        }
        let mut running = Running::start("echo 'reporter:counter:g,c,5' >&2; echo 'reporter:status:x' >&2; echo plain >&2", &[], "").unwrap();
        let mut out = Vec::new();
        while !running.run_on(std::time::Duration::from_millis(10), &mut out) {}
        let reports = [running.take_reports(), running.finish(&mut out).unwrap()].concat();
        assert!(reports.contains(&Report::Counter("g.c".into(), 5)) && reports.contains(&Report::Status), "{reports:?}");
    }

    #[test]
    fn a_command_reads_its_input_and_its_environment() {
        let out = run_over("tr a-z A-Z; echo \"$GREETING\"", &[("GREETING", "hi".to_owned())], "", b"some words\n").unwrap();
        assert_eq!(out, b"SOME WORDS\nhi\n");
    }

    #[test]
    fn a_failed_command_names_itself_its_status_and_its_last_error_lines() {
        let command = "for i in $(seq 1 15); do echo line $i >&2; done; exit 3";
        let error = run_over(command, &[], "", b"").unwrap_err().to_string();
        assert!(error.contains("exited with exit status: 3"), "{error}");
        assert!(error.ends_with("line 6 | line 7 | line 8 | line 9 | line 10 | line 11 | line 12 | line 13 | line 14 | line 15"), "{error}");
    }

    #[test]
    fn a_command_that_ignores_a_large_input_is_judged_by_its_status() {
        let input = vec![b'x'; 8 * FEED_CHUNK];
        assert_eq!(run_over("echo done", &[], "", &input).unwrap(), b"done\n");
        assert!(run_over("exit 4", &[], "", &input).unwrap_err().to_string().contains("exit status: 4"));
    }
}
