//! The worker process's loop: ask for a task, run it, report, repeat.
//!
//! [`run`] connects to the coordinator (retrying until the connect timeout,
//! since workers are often started before or alongside the master), then
//! pulls tasks until told to exit, in as many slots (concurrent task loops
//! sharing one connection and one app instance) as configured. Each slot
//! runs its tasks ([`crate::task`]) on a thread of its own, off the RPC
//! runtime so that app code never stalls it, and always the same thread so
//! that what a task keeps for the next one on its thread (its input buffer,
//! the table behind `Emitter::count`, tens of MiB for a large vocabulary)
//! is found again.
//!
//! Shutdown: the worker stops when the coordinator answers `Exit`, or when
//! a call fails after it has once been connected: the coordinator exits as
//! soon as its job is done, so "gone" is the normal end for a worker that was
//! busy with a straggling attempt at that moment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tarpc::client;
use tarpc::context;
use tarpc::tokio_serde::formats::Bincode;

use crate::plugin::Plugin;
use tracing::Instrument;

use crate::rpc::{Assignment, AttemptId, CoordinatorClient, JobEnd, TaskId, TaskOutcome, TaskReport, WorkerId, CALL_DEADLINE};
use crate::task::{TaskError, TaskRunner};

/// Pause between connection attempts while the coordinator is not up yet.
const CONNECT_RETRY: Duration = Duration::from_millis(100);

/// What a worker needs to run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The coordinator's `HOST:PORT`.
    pub master: String,
    /// How long to keep trying to reach the coordinator at start-up.
    pub connect_timeout: Duration,
    /// Tasks this process runs at once (at least 1).
    pub slots: usize,
}

/// How a worker's run ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// The coordinator said the job is done.
    JobDone,
    /// The coordinator went away after the worker had connected.
    CoordinatorGone,
}

/// Why a worker stopped abnormally.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named by their messages
pub enum WorkerError {
    /// No coordinator answered within the connect timeout.
    #[error("could not reach the coordinator at {master} within {} s: {last_error}", .timeout.as_secs_f64())]
    Unreachable { master: String, timeout: Duration, last_error: String },
    /// The coordinator stopped the job because a task failed too often.
    #[error("the coordinator stopped the job: {0}")]
    JobFailed(String),
    /// The operating system would not start a slot's thread.
    #[error("cannot start a task thread: {0}")]
    Thread(std::io::Error),
}

/// This process's id in the coordinator's logs: `host:pid`.
pub fn worker_id() -> WorkerId {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}:{}", std::process::id())
}

/// Runs tasks from the coordinator with `plugin` until the job ends.
pub async fn run(plugin: Arc<Plugin>, config: WorkerConfig) -> Result<WorkerExit, WorkerError> {
    let client = connect(&config).await?;
    let id = worker_id();
    tracing::info!(worker = %id, master = %config.master, app = plugin.name(), "connected");
    let spec = match client.job(call_context()).await {
        Ok(spec) => spec,
        Err(e) => {
            tracing::info!("coordinator gone ({e}); exiting");
            return Ok(WorkerExit::CoordinatorGone);
        }
    };
    // Making the app may read the inputs (a sort samples them): off the runtime.
    let runner = tokio::task::spawn_blocking(move || Arc::new(TaskRunner::new(plugin, &spec)))
        .await
        .expect("the app's constructor panics are caught at the plugin boundary");
    // Each slot pulls and runs tasks on its own; they share the connection
    // and the app. The worker is done when every slot is.
    let slots = (0..config.slots.max(1)).map(|slot| {
        let (client, id, runner) = (client.clone(), id.clone(), runner.clone());
        // Spawned tasks do not inherit the caller's span (`worker{id=...}`): pass it on.
        tokio::spawn(async move { run_slot(slot, &client, &id, &runner).await }.instrument(tracing::Span::current()))
    });
    let mut exit = Ok(WorkerExit::CoordinatorGone);
    for slot in futures::future::join_all(slots).await {
        match slot.expect("slot loops do not panic: task panics are caught on the slot's thread") {
            // A failed job outranks everything; "done" outranks "gone" (a slot
            // busy with a straggler when the job ended finds the master gone).
            Err(e) => exit = Err(e),
            Ok(WorkerExit::JobDone) if exit.is_ok() => exit = Ok(WorkerExit::JobDone),
            Ok(_) => {}
        }
    }
    exit
}

/// One task slot: asks for a task, runs it, reports, until the job ends.
async fn run_slot(slot: usize, client: &CoordinatorClient, id: &WorkerId, runner: &Arc<TaskRunner>) -> Result<WorkerExit, WorkerError> {
    let thread = SlotThread::spawn(slot).map_err(WorkerError::Thread)?;
    loop {
        let assignment = match client.request_task(call_context(), id.clone()).await {
            Ok(assignment) => assignment,
            Err(e) => {
                tracing::info!(slot, "coordinator gone ({e}); exiting");
                return Ok(WorkerExit::CoordinatorGone);
            }
        };
        let report = match assignment {
            Assignment::Wait => continue,
            Assignment::Exit(JobEnd::Succeeded) => return Ok(WorkerExit::JobDone),
            Assignment::Exit(JobEnd::Failed(message)) => return Err(WorkerError::JobFailed(message)),
            Assignment::Map(task) => {
                let (task_id, attempt) = (TaskId::Map(task.index), task.attempt);
                let runner = runner.clone();
                let outcome = run_on(&thread, task_id, attempt, move || runner.run_map(&task))
                    .await
                    .map(|(outputs, counters)| TaskOutcome::MapDone { outputs, counters });
                TaskReport { task: task_id, attempt, outcome: outcome.unwrap_or_else(|e| e) }
            }
            Assignment::Reduce(task) => {
                let (task_id, attempt) = (TaskId::Reduce(task.partition), task.attempt);
                let runner = runner.clone();
                let outcome = run_on(&thread, task_id, attempt, move || runner.run_reduce(&task))
                    .await
                    .map(|counters| TaskOutcome::ReduceDone { counters });
                TaskReport { task: task_id, attempt, outcome: outcome.unwrap_or_else(|e| e) }
            }
        };
        if let Err(e) = client.report_task(call_context(), id.clone(), report).await {
            tracing::info!(slot, "coordinator gone ({e}); exiting");
            return Ok(WorkerExit::CoordinatorGone);
        }
    }
}

/// A slot's own thread, which runs the slot's tasks one after another.
struct SlotThread {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

/// What a job on a slot thread panicked with.
type Panic = Box<dyn std::any::Any + Send>;

impl SlotThread {
    fn spawn(slot: usize) -> std::io::Result<SlotThread> {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        // The thread ends when the sender is dropped with the slot.
        std::thread::Builder::new().name(format!("slot-{slot}")).spawn(move || queue.into_iter().for_each(|job| job()))?;
        Ok(SlotThread { jobs })
    }

    /// Runs `f` on the thread and waits for it; a panic is caught there
    /// (the thread lives on) and returned.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Panic> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job = move || {
            let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        };
        self.jobs.send(Box::new(job)).expect("a slot's thread runs until the slot ends");
        result.await.expect("a slot's thread answers every job")
    }
}

/// Runs a task on the slot's thread, inside a `task{task=... attempt=...}`
/// span so that every log line of the attempt names it; a failure becomes
/// the outcome to report.
async fn run_on<T: Send + 'static>(
    thread: &SlotThread,
    task: TaskId,
    attempt: AttemptId,
    f: impl FnOnce() -> Result<T, TaskError> + Send + 'static,
) -> Result<T, TaskOutcome> {
    let span = tracing::info_span!("task", task = %task, attempt);
    let started = Instant::now();
    let in_span = span.clone();
    let result = thread.run(move || in_span.in_scope(f)).await;
    // No await below: entering the span here cannot leak it to other tasks.
    let _entered = span.enter();
    let elapsed_ms = started.elapsed().as_millis();
    match result {
        Ok(Ok(value)) => {
            tracing::debug!(elapsed_ms, "done");
            Ok(value)
        }
        Ok(Err(TaskError::MapOutputLost { map_task, source })) => {
            tracing::warn!("cannot read map task {map_task}'s output: {source}");
            Err(TaskOutcome::MapOutputLost { map_task, error: source.to_string() })
        }
        Ok(Err(e)) => {
            tracing::warn!("failed: {e}");
            Err(TaskOutcome::Failed { error: e.to_string() })
        }
        // The app's own panics are caught at the plugin boundary; this is a
        // panic in the framework's task code, reported rather than lost.
        Err(payload) => {
            let error = format!("worker panicked: {}", crate::abi::panic_message(payload.as_ref()));
            tracing::error!("{error}");
            Err(TaskOutcome::Failed { error })
        }
    }
}

fn call_context() -> context::Context {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + CALL_DEADLINE;
    ctx
}

/// Connects to the coordinator, retrying until `connect_timeout`.
async fn connect(config: &WorkerConfig) -> Result<CoordinatorClient, WorkerError> {
    let give_up = Instant::now() + config.connect_timeout;
    loop {
        match tarpc::serde_transport::tcp::connect(&config.master, Bincode::default).await {
            Ok(transport) => return Ok(CoordinatorClient::new(client::Config::default(), transport).spawn()),
            Err(e) if Instant::now() + CONNECT_RETRY < give_up => {
                tracing::debug!("coordinator at {} not reachable yet: {e}", config.master);
                tokio::time::sleep(CONNECT_RETRY).await;
            }
            Err(e) => {
                return Err(WorkerError::Unreachable {
                    master: config.master.clone(),
                    timeout: config.connect_timeout,
                    last_error: e.to_string(),
                })
            }
        }
    }
}
