//! The task process: what `mr-worker --task-process` runs, one per slot
//! of a worker, to run that slot's attempts out of the worker's own
//! process (see [`crate::task_process`] for why, and
//! [`crate::task_protocol`] for the messages).
//!
//! It reads [`ChildStart`] from its socket, loads the plugin and makes the
//! app once, says `Ready`, then runs each attempt it is sent on its main
//! thread, always the same one, so that what a task keeps for the next
//! (its input buffer, the table behind `Emitter::count`) is found again.
//! Beside it, a reader thread takes the worker's messages (a `Cancel`
//! reaches the running attempt through its [`TaskProgress`]) and a
//! progress thread sends the attempt's unit count when it grows. Fetches
//! of runs and inputs, and the upload of a reduce's output, run on a
//! small tokio runtime of its own, under the worker's identity.
//!
//! Shutdown: the process exits when its socket closes (the worker exited
//! or died; the kernel also kills it then, see `PR_SET_PDEATHSIG` in
//! [`crate::task_process`]), or is killed by the worker.

use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use crate::files::Fetcher;
use crate::handshake::Identity;
use crate::memory_budget::SlotMemory;
use crate::plugin::Plugin;
use crate::rpc::{AttemptId, TaskId, TaskOutcome};
use crate::storage::{ServedOutputs, StorageConfig, WorkerStorage};
use crate::task::{TaskError, TaskProgress, TaskRunner};
use crate::task_protocol::{
    read_message, write_message, ChildAttempt, ChildStart, FrameError, FromChild, ToChild, CHILD_FD, PROGRESS_INTERVAL, PROTOCOL_VERSION,
};

/// Why a task process could not serve its worker.
#[derive(Debug, thiserror::Error)]
pub enum TaskHostError {
    /// Descriptor [`CHILD_FD`] is not a socket: not started by a worker.
    #[error("descriptor {CHILD_FD} is not a socket: --task-process is for mr-worker's own use")]
    NoSocket,
    /// The socket failed before the first message arrived whole.
    #[error("reading the worker's first message: {0}")]
    Start(FrameError),
    /// The first message was not `Start`, or of another version.
    #[error("the worker's first message was not a start of protocol version {PROTOCOL_VERSION}")]
    BadStart,
    /// Setting up failed; the worker was told why.
    #[error("{0}")]
    Setup(String),
    /// Writing to the worker failed.
    #[error("writing to the worker: {0}")]
    Write(io::Error),
}

/// The socket's writing end, shared by the main and progress threads (a
/// frame is one write under the lock).
type Writer = Arc<Mutex<UnixStream>>;

/// The attempt the main thread runs, if any, for the reader thread (to
/// cancel it) and the progress thread (to report it).
type Current = Arc<Mutex<Option<(AttemptId, TaskProgress)>>>;

/// Serves the worker on descriptor [`CHILD_FD`] until the socket closes.
pub fn run() -> Result<(), TaskHostError> {
    let socket = inherited_socket()?;
    let start = match read_message::<ToChild>(&mut &socket) {
        Ok(ToChild::Start(start)) if start.version == PROTOCOL_VERSION => start,
        Ok(_) => return Err(TaskHostError::BadStart),
        Err(e) => return Err(TaskHostError::Start(e)),
    };
    let writer: Writer = Arc::new(Mutex::new(socket.try_clone().map_err(TaskHostError::Write)?));
    crate::fan_in::raise_descriptor_limit();
    // Lines read as the worker's own: `worker{id=...}:task{...}: ...`.
    let span = tracing::info_span!("worker", id = %start.identity_name);
    let _entered = span.enter();
    let (runner, _runtime) = match set_up(&start) {
        Ok(set_up) => set_up,
        Err(why) => {
            send(&writer, &FromChild::StartFailed(why.clone()))?;
            return Err(TaskHostError::Setup(why));
        }
    };
    send(&writer, &FromChild::Ready { version: PROTOCOL_VERSION })?;
    let current: Current = Arc::default();
    let (attempts, queue) = mpsc::channel();
    spawn_reader(socket, attempts, current.clone()).map_err(TaskHostError::Write)?;
    spawn_progress(writer.clone(), current.clone()).map_err(TaskHostError::Write)?;
    // Ends when the reader does: the socket closed.
    for attempt in queue {
        let id = attempt.attempt();
        let progress = TaskProgress::default();
        *current.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, progress.clone()));
        let (outcome, served) = run_attempt(&runner, attempt, &progress);
        *current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        send(&writer, &FromChild::Done { attempt: id, outcome, served })?;
    }
    Ok(())
}

/// The socket the worker left at [`CHILD_FD`].
fn inherited_socket() -> Result<UnixStream, TaskHostError> {
    // SAFETY: `stat` is plain old data, for which all zero bytes is a
    // valid value.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only writes the struct it is given, which lives for
    // the call; a descriptor that is not open makes it fail, not misbehave.
    if unsafe { libc::fstat(CHILD_FD, &mut stat) } != 0 || stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(TaskHostError::NoSocket);
    }
    // SAFETY: the descriptor is an open socket that nothing else in this
    // process owns (the worker placed it there for us).
    Ok(unsafe { UnixStream::from_raw_fd(CHILD_FD) })
}

/// Loads the plugin, rebuilds the worker's storage, and makes the app;
/// returns the runner and the runtime its fetches run on.
fn set_up(start: &ChildStart) -> Result<(TaskRunner, tokio::runtime::Runtime), String> {
    let secret = crate::cli::read_secret(start.token_file.as_deref(), !start.tls)?;
    let identity = Identity { name: start.identity_name.clone(), incarnation: start.identity_incarnation };
    // Fetches are driven by the runtime's threads while an attempt's
    // thread (this one, not the runtime's) waits in `Handle::block_on`.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("task-io")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the task process's runtime: {e}"))?;
    let config = &start.storage;
    let storage = WorkerStorage::new(StorageConfig {
        work_dir: config.work_dir.clone(),
        shared_job_dir: config.shared_job_dir.clone(),
        server: config.server.clone(),
        // The worker serves the outputs; this process tells it which.
        served: Arc::new(ServedOutputs::default()),
        fetcher: Fetcher::new(secret, identity),
        run_stall_limit: config.run_stall_limit,
        master: config.master.clone(),
        inputs: start.job.inputs.clone(),
        fetch_memory: config.fetch_memory,
        runtime: runtime.handle().clone(),
    });
    let plugin = Plugin::load(&start.plugin).map_err(|e| e.to_string())?;
    // The budget's fan-in, as far as this process's descriptors allow.
    let memory = SlotMemory { fan_in: start.memory.fan_in.min(crate::fan_in::descriptor_fan_in()), ..start.memory };
    Ok((TaskRunner::new(Arc::new(plugin), &start.job, Arc::new(storage), memory), runtime))
}

fn send(writer: &Writer, message: &FromChild) -> Result<(), TaskHostError> {
    write_message(&mut *writer.lock().unwrap_or_else(|p| p.into_inner()), message).map_err(TaskHostError::Write)
}

/// Takes the worker's messages: attempts go to the main thread, a cancel
/// to the running attempt. When the socket closes the worker is gone, and
/// so is the point of any attempt still running: the process exits.
fn spawn_reader(socket: UnixStream, attempts: mpsc::Sender<ChildAttempt>, current: Current) -> io::Result<()> {
    std::thread::Builder::new().name("task-reader".into()).spawn(move || loop {
        match read_message::<ToChild>(&mut &socket) {
            Ok(ToChild::Run(attempt)) => {
                if attempts.send(attempt).is_err() {
                    std::process::exit(0);
                }
            }
            Ok(ToChild::Cancel(attempt)) => {
                if let Some((running, progress)) = &*current.lock().unwrap_or_else(|p| p.into_inner()) {
                    if *running == attempt {
                        progress.cancel();
                    }
                }
            }
            Ok(ToChild::Start(_)) => tracing::warn!("a second start message ignored"),
            Err(FrameError::Closed) => std::process::exit(0),
            Err(e) => {
                tracing::error!("the worker's socket: {e}; exiting");
                std::process::exit(1);
            }
        }
    })?;
    Ok(())
}

/// Sends the running attempt's unit count every [`PROGRESS_INTERVAL`]
/// when it grew: the worker's heartbeat reports it.
fn spawn_progress(writer: Writer, current: Current) -> io::Result<()> {
    std::thread::Builder::new().name("task-progress".into()).spawn(move || {
        let mut last: Option<(AttemptId, u64)> = None;
        loop {
            std::thread::sleep(PROGRESS_INTERVAL);
            let now = current.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(attempt, progress)| (*attempt, progress.units()));
            if let Some((attempt, units)) = now.filter(|now| Some(*now) != last) {
                // A broken socket ends the process through the reader.
                let _ = send(&writer, &FromChild::Progress { attempt, units });
            }
            last = now;
        }
    })?;
    Ok(())
}

/// Runs one attempt in a `task{task=... attempt=...}` span; returns how it
/// ended and, for a map, the output file the worker is to serve.
fn run_attempt(runner: &TaskRunner, attempt: ChildAttempt, progress: &TaskProgress) -> (TaskOutcome, Option<std::path::PathBuf>) {
    let (task, id) = match &attempt {
        ChildAttempt::Map(task) => (TaskId::Map(task.index), task.attempt),
        ChildAttempt::Reduce { task, .. } => (TaskId::Reduce(task.partition), task.attempt),
    };
    let span = tracing::info_span!("task", task = %task, attempt = id);
    let _entered = span.enter();
    tracing::debug!("started");
    let started = Instant::now();
    let run = std::panic::AssertUnwindSafe(|| match attempt {
        ChildAttempt::Map(task) => {
            runner.run_map(&task, progress).map(|(outputs, counters)| (TaskOutcome::MapDone { outputs, counters }, runner.storage().served(id)))
        }
        ChildAttempt::Reduce { task, local_outputs } => {
            for (map_attempt, path) in local_outputs {
                runner.storage().serve(map_attempt, path);
            }
            runner.run_reduce(&task, progress).map(|counters| (TaskOutcome::ReduceDone { counters }, None))
        }
    });
    let result = std::panic::catch_unwind(run);
    let elapsed_ms = started.elapsed().as_millis();
    match result {
        Ok(Ok(done)) => {
            tracing::debug!(elapsed_ms, "done");
            done
        }
        Ok(Err(TaskError::MapOutputLost { map_task, source })) => {
            tracing::warn!("cannot read map task {map_task}'s output: {source}");
            (TaskOutcome::MapOutputLost { map_task, error: source.to_string() }, None)
        }
        Ok(Err(e)) => {
            tracing::warn!("failed: {e}");
            (TaskOutcome::Failed { error: e.to_string(), record: None }, None)
        }
        // The app's own panics are caught at the plugin boundary; this is a
        // panic in the framework's task code, reported rather than lost.
        Err(payload) => {
            let error = format!("worker panicked: {}", crate::abi::panic_message(payload.as_ref()));
            tracing::error!("{error}");
            (TaskOutcome::Failed { error, record: None }, None)
        }
    }
}
