//! A worker slot's task process: the child that runs the slot's attempts,
//! so that an attempt the worker gives up really stops.
//!
//! App code cannot be stopped from outside its thread: a reduce stuck in a
//! loop never reaches the next cancellation check, and an abort, a
//! segfault or `exit` in a task takes its whole process down. So, as
//! Hadoop runs tasks in child JVMs, each slot of a worker runs its attempts
//! in a process of its own ([`crate::task_host`], the worker's executable
//! started again with `--task-process`), which lives across attempts and
//! keeps their warm state. [`TaskProcess::run_attempt`] sends it an attempt
//! and waits for the end, passing its progress on to the heartbeat:
//!
//! - when the coordinator gives the attempt up, the worker asks the
//!   process to stop it; a process that has not answered within
//!   [`KILL_GRACE`] is killed (SIGKILL), and the slot is free either way;
//! - a process that dies mid-attempt (abort, segfault, exit, the kernel's
//!   OOM killer) fails the attempt with what killed it, and the worker
//!   lives on;
//! - a process killed or dead is replaced by a fresh one at once, ready
//!   for the slot's next attempt.
//!
//! The process is started and watched from the slot's own thread, which
//! lives as long as the slot: `PR_SET_PDEATHSIG` kills the process when
//! the thread that started it ends (with the worker, however it ends), so
//! no task process outlives its worker.

use std::ffi::OsString;
use std::io;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::memory_budget::TaskProcessPeak;
use crate::rpc::TaskOutcome;
use crate::task::TaskProgress;
use crate::task_protocol::{
    read_message, write_message, ChildAttempt, ChildStart, FrameError, FromChild, ToChild, CHILD_FD, KILL_GRACE, PROTOCOL_VERSION,
};

/// How often the slot's thread looks at the attempt's cancellation while
/// it waits for the task process.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// How long a task process that closed its socket has to exit before it is
/// killed.
const EXIT_WAIT: Duration = Duration::from_secs(1);

/// How to start a task process: the program and its arguments (the
/// worker's own executable with `--task-process`).
#[derive(Debug, Clone)]
pub struct TaskCommand {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

impl TaskCommand {
    /// This executable again (`/proc/self/exe`, which stays the same file
    /// even if the path is rebuilt meanwhile), with `args`.
    pub fn this_executable(args: Vec<OsString>) -> TaskCommand {
        TaskCommand { program: PathBuf::from("/proc/self/exe"), args }
    }
}

/// How an attempt ended in its task process.
#[derive(Debug)]
pub struct AttemptEnd {
    /// What to report (a failure's record not yet read from the cursor).
    pub outcome: TaskOutcome,
    /// A map attempt's output file, to serve.
    pub served: Option<PathBuf>,
}

/// One slot's task process, started again whenever it dies or is killed.
/// Used from the slot's thread only (see the module docs).
pub struct TaskProcess {
    command: TaskCommand,
    start: ChildStart,
    child: Option<RunningChild>,
    /// The slot's task processes' peak memory, noted here, read by the
    /// worker's heartbeats.
    peak: Arc<TaskProcessPeak>,
}

/// A started task process.
struct RunningChild {
    process: Child,
    /// The worker's end of the socket, for writing.
    socket: UnixStream,
    /// What the reader thread read, in order; ends after a `Closed`.
    messages: mpsc::Receiver<Result<FromChild, FrameError>>,
    /// Whether `Ready` came.
    ready: bool,
}

/// Why an attempt's task process is gone or unusable: it is killed (if
/// still there) and the attempt fails with this.
#[derive(Debug)]
enum Broken {
    /// It could not be started.
    Spawn(io::Error),
    /// It said it cannot run attempts.
    StartFailed(String),
    /// It closed its socket or died: its exit status says how.
    Died,
    /// It sent what this protocol does not allow there.
    Protocol(String),
}

impl TaskProcess {
    /// A slot's task process, to be started with `command` and told
    /// `start`, its memory noted in `peak`; nothing runs until
    /// [`TaskProcess::start`] or the first attempt.
    pub fn new(command: TaskCommand, start: ChildStart, peak: Arc<TaskProcessPeak>) -> TaskProcess {
        TaskProcess { command, start, child: None, peak }
    }

    /// Starts the process if none runs, so that it makes the app while
    /// the slot waits for its first attempt. A failure shows at the next
    /// attempt.
    pub fn start(&mut self) {
        if self.child.is_none() {
            match self.spawn() {
                Ok(child) => self.child = Some(child),
                Err(e) => tracing::warn!("cannot start a task process: {e}"),
            }
        }
    }

    /// Ends the process for good (the worker is done): closes its socket,
    /// on which it exits, and reaps it.
    pub fn shut_down(&mut self) {
        if let Some(child) = &self.child {
            let _ = child.socket.shutdown(std::net::Shutdown::Both);
        }
        self.stop(true);
    }

    /// Runs `attempt` in the process and waits for its end, raising
    /// `progress` as the process reports it; when `progress` is cancelled,
    /// asks the process to stop and kills it after [`KILL_GRACE`].
    pub fn run_attempt(&mut self, attempt: ChildAttempt, progress: &TaskProgress) -> AttemptEnd {
        let failed = |error: String| AttemptEnd { outcome: TaskOutcome::Failed { error, record: None }, served: None };
        let result = self.send_and_wait(attempt, progress);
        match result {
            Ok(end) => end,
            Err(Broken::Spawn(e)) => failed(format!("cannot start a task process: {e}")),
            Err(Broken::StartFailed(why)) => {
                self.stop(true);
                failed(format!("the task process could not start: {why}"))
            }
            Err(Broken::Protocol(why)) => {
                self.stop(false);
                tracing::error!("the task process broke the protocol ({why}); killed it");
                self.start();
                failed(format!("the task process sent {why}, and was killed"))
            }
            Err(Broken::Died) => {
                let error = match self.stop(true) {
                    Some(status) => describe_exit(status),
                    None => "the task process ended without a word".to_string(),
                };
                tracing::warn!("{error}; starting another");
                self.start();
                failed(error)
            }
        }
    }

    fn send_and_wait(&mut self, attempt: ChildAttempt, progress: &TaskProgress) -> Result<AttemptEnd, Broken> {
        // A process that died between attempts is not this attempt's doing.
        if let Some(child) = &mut self.child {
            // Its mark is gone once it has exited: read it while it may still run.
            self.peak.note();
            if !matches!(child.process.try_wait(), Ok(None)) {
                tracing::warn!("the slot's task process ended while idle; starting another");
                self.stop(true);
            }
        }
        if self.child.is_none() {
            self.child = Some(self.spawn().map_err(Broken::Spawn)?);
        }
        let child = self.child.as_mut().expect("started above");
        let id = attempt.attempt();
        write_message(&mut child.socket, &ToChild::Run(attempt)).map_err(|_| Broken::Died)?;
        let mut cancelled_at: Option<Instant> = None;
        loop {
            match child.messages.recv_timeout(CANCEL_POLL) {
                Ok(Ok(FromChild::Ready { version })) if !child.ready && version == PROTOCOL_VERSION => child.ready = true,
                Ok(Ok(FromChild::Ready { version })) => return Err(Broken::Protocol(format!("a ready message of protocol version {version}"))),
                Ok(Ok(FromChild::StartFailed(why))) if !child.ready => return Err(Broken::StartFailed(why)),
                Ok(Ok(_)) if !child.ready => return Err(Broken::Protocol("a message before it was ready".into())),
                Ok(Ok(FromChild::Progress { attempt, units })) if attempt == id => progress.raise_to(units),
                // From the previous attempt, sent just before its end.
                Ok(Ok(FromChild::Progress { .. })) => {}
                Ok(Ok(FromChild::Done { attempt, outcome, served })) if attempt == id => {
                    self.peak.note();
                    return Ok(AttemptEnd { outcome, served });
                }
                Ok(Ok(other)) => return Err(Broken::Protocol(format!("{} during attempt {id}", message_kind(&other)))),
                Ok(Err(FrameError::Closed)) | Ok(Err(FrameError::Io(_))) | Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Broken::Died),
                Ok(Err(e)) => return Err(Broken::Protocol(e.to_string())),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if progress.is_cancelled() {
                match cancelled_at {
                    None => {
                        cancelled_at = Some(Instant::now());
                        // A process that cannot take this is dying: seen next round.
                        let _ = write_message(&mut child.socket, &ToChild::Cancel(id));
                    }
                    Some(at) if at.elapsed() >= KILL_GRACE => return Ok(self.kill_given_up()),
                    Some(_) => {}
                }
            }
        }
    }

    /// Kills the process of a given-up attempt that would not stop, and
    /// starts the next at once.
    fn kill_given_up(&mut self) -> AttemptEnd {
        tracing::info!("the attempt did not stop within {} s of being given up: killing its task process", KILL_GRACE.as_secs_f64());
        self.stop(false);
        self.start();
        let error = format!("stopped: the coordinator gave the attempt up, and its task process was killed after {} s", KILL_GRACE.as_secs_f64());
        AttemptEnd { outcome: TaskOutcome::Failed { error, record: None }, served: None }
    }

    /// Ends the process and reaps it; returns how it ended, if that could
    /// be told. One that closed its socket (`exiting`) is given a moment
    /// to exit, so that its own end (a signal, a status) is what gets
    /// reported; any other is killed at once.
    fn stop(&mut self, exiting: bool) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        self.peak.ending();
        let deadline = Instant::now() + EXIT_WAIT;
        while exiting && Instant::now() < deadline {
            match child.process.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        let _ = child.process.kill();
        child.process.wait().ok()
    }

    /// Starts a task process and sends it the start message.
    fn spawn(&self) -> io::Result<RunningChild> {
        let (ours, theirs) = UnixStream::pair()?;
        let mut command = Command::new(&self.command.program);
        command.args(&self.command.args).stdin(Stdio::null());
        if let Some(dir) = &self.start.storage.files_dir {
            command.env(crate::shipped::FILES_DIR_VAR, dir);
        }
        if let Some(keys) = self.start.memory.counted_keys() {
            command.env(crate::app::COUNTED_KEYS_VAR, keys.to_string());
        }
        command.arg0(format!("mr-worker (task process, slot {})", self.start.slot));
        let fd = std::os::fd::AsRawFd::as_raw_fd(&theirs);
        // SAFETY: between fork and exec only async-signal-safe calls (dup2,
        // fcntl, prctl, getppid), touching no memory of the parent.
        unsafe {
            command.pre_exec(move || place_socket_and_die_with_parent(fd));
        }
        let process = command.spawn()?;
        drop(theirs);
        let mut socket = ours;
        let reader = socket.try_clone()?;
        let (sender, messages) = mpsc::channel();
        std::thread::Builder::new().name("task-process-reader".into()).spawn(move || loop {
            let message = read_message::<FromChild>(&mut &reader);
            let end = message.is_err();
            if sender.send(message).is_err() || end {
                return;
            }
        })?;
        // One that is dead already shows as dead at its first attempt,
        // with its exit status, rather than as a broken pipe here.
        if let Err(e) = write_message(&mut socket, &ToChild::Start(Box::new(self.start.clone()))) {
            tracing::debug!("the task process did not take its start message: {e}");
        }
        tracing::debug!(pid = process.id(), "started a task process");
        self.peak.started(process.id());
        Ok(RunningChild { process, socket, messages, ready: false })
    }
}

impl Drop for TaskProcess {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// In the forked child before exec: puts the socket at [`CHILD_FD`] and
/// asks the kernel to kill this process when the thread that started it
/// ends.
fn place_socket_and_die_with_parent(fd: i32) -> io::Result<()> {
    // SAFETY: plain system calls on descriptors and this process.
    unsafe {
        if fd == CHILD_FD {
            // dup2 onto itself would keep close-on-exec set.
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
        } else if libc::dup2(fd, CHILD_FD) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return Err(io::Error::last_os_error());
        }
        // The parent may have died before the prctl took: then no signal comes.
        if libc::getppid() == 1 {
            return Err(io::Error::other("the worker is gone"));
        }
    }
    Ok(())
}

/// A message's kind, for errors (never its contents, which may be large).
fn message_kind(message: &FromChild) -> &'static str {
    match message {
        FromChild::Ready { .. } => "a ready message",
        FromChild::StartFailed(_) => "a start failure",
        FromChild::Progress { .. } => "progress",
        FromChild::Done { .. } => "the end of another attempt",
    }
}

/// How a task process ended, for the attempt's error: "the task process
/// was killed by signal 6 (SIGABRT)".
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.signal(), status.code()) {
        (Some(signal), _) => {
            let hint = if signal == libc::SIGKILL { ", perhaps by the kernel for lack of memory" } else { "" };
            format!("the task process was killed by signal {signal} ({}{hint})", signal_name(signal))
        }
        (None, Some(code)) => format!("the task process exited with status {code} in the middle of the attempt"),
        (None, None) => format!("the task process ended: {status}"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGXCPU => "SIGXCPU",
        _ => "another signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{JobSpec, MapTask};
    use crate::task_protocol::ChildStorage;

    /// A task process that is a shell running `script` (it never speaks
    /// the protocol), for the slot's side of deaths and kills.
    fn shell_process(script: &str) -> TaskProcess {
        let job = JobSpec {
            job_id: "test".into(),
            params: Default::default(),
            inputs: Vec::new(),
            reduces: 1,
            map_buffer_bytes: 1 << 20,
            combine: false,
            compression: Default::default(),
            output_compression: Default::default(),
            heartbeat_interval: Duration::from_millis(250),
            job_dir: "/nonexistent".into(),
            app: None,
            files: Vec::new(),
        };
        let storage = ChildStorage {
            work_dir: "/nonexistent".into(),
            shared_job_dir: None,
            server: "127.0.0.1:1".into(),
            run_stall_limit: Duration::from_secs(1),
            master: "127.0.0.1:1".into(),
            fetch_memory: 0,
            files_dir: None,
        };
        let start = ChildStart {
            version: PROTOCOL_VERSION,
            slot: 0,
            job,
            plugin: "/nonexistent.so".into(),
            identity_name: "test:1".into(),
            identity_incarnation: [0; 16],
            token_file: None,
            tls: true,
            storage,
            memory: crate::memory_budget::SlotMemory::unbounded(),
        };
        TaskProcess::new(TaskCommand { program: "/bin/sh".into(), args: vec!["-c".into(), script.into()] }, start, Arc::default())
    }

    fn map_attempt(attempt: u64) -> ChildAttempt {
        let file = crate::rpc::InputFile { name: "in".into(), path: "/nonexistent/in".into(), size: 0, modified: None };
        ChildAttempt::Map(MapTask {
            index: 0,
            attempt,
            input: crate::rpc::InputSplit::whole(file),
            reduces: 1,
            job_dir: "/nonexistent".into(),
            skip: None,
            staged_output: None,
        })
    }

    fn error_of(end: AttemptEnd) -> String {
        match end.outcome {
            TaskOutcome::Failed { error, .. } => error,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_process_that_dies_fails_the_attempt_with_its_signal_and_a_fresh_one_follows() {
        let mut process = shell_process("kill -SEGV $$");
        let error = error_of(process.run_attempt(map_attempt(1), &TaskProgress::default()));
        assert_eq!(error, "the task process was killed by signal 11 (SIGSEGV)");
        assert!(process.child.is_some(), "a fresh process is started at once");
        let error = error_of(process.run_attempt(map_attempt(2), &TaskProgress::default()));
        assert_eq!(error, "the task process was killed by signal 11 (SIGSEGV)");
    }

    #[test]
    fn a_process_that_ignores_a_cancel_is_killed_after_the_grace() {
        // Reads nothing, answers nothing: as an app stuck in a loop.
        let mut process = shell_process("exec sleep 60");
        let progress = TaskProgress::default();
        progress.cancel();
        let started = Instant::now();
        let error = error_of(process.run_attempt(map_attempt(1), &progress));
        assert!(error.starts_with("stopped: the coordinator gave the attempt up, and its task process was killed"), "{error}");
        let took = started.elapsed();
        assert!(took >= KILL_GRACE && took < KILL_GRACE + Duration::from_secs(2), "killed after {took:?}");
        let old = process.child.as_ref().map(|c| c.process.id());
        process.shut_down();
        assert!(process.child.is_none() && old.is_some());
    }

    #[test]
    fn exits_are_described_by_signal_or_status() {
        assert_eq!(describe_exit(ExitStatus::from_raw(libc::SIGABRT)), "the task process was killed by signal 6 (SIGABRT)");
        assert!(describe_exit(ExitStatus::from_raw(libc::SIGKILL)).contains("signal 9 (SIGKILL, perhaps by the kernel for lack of memory)"));
        assert_eq!(describe_exit(ExitStatus::from_raw(1 << 8)), "the task process exited with status 1 in the middle of the attempt");
    }
}
