//! A worker's slot: a thread of its own that owns the slot's task
//! process ([`crate::task_process`]) and runs its attempts one after
//! another, off the RPC runtime, and what the slot is running now, for the
//! heartbeats. [`run_task`] runs one task the coordinator gave, start to
//! report. Used by the one-job loop ([`crate::worker`]) and by the
//! long-lived worker ([`crate::agent`]), whose slots change jobs task by
//! task (replacing the task process, which runs one job's app).

use std::sync::Mutex;
use std::time::Duration;

use crate::rpc::{AttemptId, AttemptProgress, MapTask, ReduceTask, TaskId, TaskOutcome, TaskReport};
use crate::skipping::read_cursor;
use crate::storage::WorkerStorage;
use crate::task::TaskProgress;
use crate::task_process::{AttemptEnd, TaskProcess};
use crate::task_protocol::ChildAttempt;

/// How long a worker that is done waits for its task processes to end:
/// a running attempt's, cancelled, within the kill grace.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// A task to run, as the coordinator assigned it.
#[derive(Debug)]
pub enum Task {
    /// A map attempt.
    Map(MapTask),
    /// A reduce attempt.
    Reduce(ReduceTask),
}

/// Runs `task` on the slot's task process, its files placed by `storage`,
/// its progress shown in `activity`: the report to send, or `None` when the
/// attempt was cancelled and its end is not worth telling (the coordinator
/// has written it off).
pub async fn run_task(thread: &SlotThread, storage: &WorkerStorage, activity: &SlotActivity, task: Task) -> Option<TaskReport> {
    // Each attempt's files go where this worker's storage puts them;
    // its cursor, if it tracks records, is read here if it fails.
    let (task_id, cursor, attempt) = match task {
        Task::Map(mut task) => {
            storage.adapt_map(&mut task);
            (TaskId::Map(task.index), task.skip.as_ref().map(|plan| plan.cursor.clone()), ChildAttempt::Map(task))
        }
        Task::Reduce(mut task) => {
            storage.adapt_reduce(&mut task);
            let local_outputs = storage.local_outputs(&task.runs);
            (TaskId::Reduce(task.partition), task.skip.as_ref().map(|plan| plan.cursor.clone()), ChildAttempt::Reduce { task, local_outputs })
        }
    };
    let attempt_id = attempt.attempt();
    let progress = activity.start(task_id, attempt_id);
    let outcome = run_on(thread, storage, task_id, attempt, progress).await;
    let outcome = match outcome {
        TaskOutcome::Failed { error, record } => TaskOutcome::Failed { error, record: record.or_else(|| cursor.as_deref().and_then(read_cursor)) },
        other => other,
    };
    let report = TaskReport { task: task_id, attempt: attempt_id, outcome };
    // Reported from here on: a heartbeat must not keep showing progress
    // of an attempt the coordinator may already have given up.
    let cancelled = activity.finish();
    // The coordinator has written off a cancelled attempt; only a
    // completion (it may still take one), or the record a stuck attempt
    // was handling (the coordinator cannot read this worker's cursor
    // files), is worth telling.
    if cancelled && matches!(report.outcome, TaskOutcome::Failed { record: None, .. }) {
        return None;
    }
    Some(report)
}

/// Ends the slots' task processes and reaps them (their CPU time counts as
/// the worker's): running attempts are cancelled, so that each slot thread
/// is free within the kill grace. One that is not by [`SHUTDOWN_WAIT`] is
/// left to the kernel, which kills it as the worker exits.
pub async fn stop_task_processes(slots: &[SlotActivity], stoppers: Vec<SlotStopper>) {
    for slot in slots {
        slot.cancel();
    }
    let stopped = futures::future::join_all(stoppers.into_iter().map(SlotStopper::stop));
    if tokio::time::timeout(SHUTDOWN_WAIT, stopped).await.is_err() {
        tracing::warn!("task processes still running after {} s; leaving them to exit with the worker", SHUTDOWN_WAIT.as_secs_f64());
    }
}

/// What one slot is running, for the heartbeat.
#[derive(Debug, Default)]
pub struct SlotActivity {
    current: Mutex<Option<(TaskId, AttemptId, TaskProgress)>>,
}

impl SlotActivity {
    /// A new attempt runs on the slot: its progress, for the task process to raise.
    pub fn start(&self, task: TaskId, attempt: AttemptId) -> TaskProgress {
        let progress = TaskProgress::default();
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((task, attempt, progress.clone()));
        progress
    }

    /// The attempt ended; returns whether it had been cancelled.
    pub fn finish(&self) -> bool {
        let ended = self.current.lock().unwrap_or_else(|p| p.into_inner()).take();
        ended.is_some_and(|(_, _, progress)| progress.is_cancelled())
    }

    /// Cancels the slot's attempt, if it runs one: the job is over.
    pub fn cancel(&self) {
        if let Some((_, _, progress)) = self.current.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            progress.cancel();
        }
    }

    /// Cancels the slot's attempt if it is one of `attempts`.
    pub fn cancel_if(&self, attempts: &[AttemptId]) {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((task, attempt, progress)) = current.as_ref() {
            if attempts.contains(attempt) && !progress.is_cancelled() {
                tracing::info!(%task, attempt, "stopping the attempt: the coordinator no longer needs it");
                progress.cancel();
            }
        }
    }

    /// The running attempt's progress, for a heartbeat.
    pub fn snapshot(&self) -> Option<AttemptProgress> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.as_ref().map(|(task, attempt, progress)| AttemptProgress { task: *task, attempt: *attempt, units: progress.units() })
    }
}

/// A slot's own thread, which owns the slot's task process and runs its
/// attempts one after another. It lives as long as the slot: the kernel
/// kills the task process when the thread that started it ends.
pub struct SlotThread {
    jobs: std::sync::mpsc::Sender<SlotJob>,
}

/// Something for a slot's thread to do with its task process.
type SlotJob = Box<dyn FnOnce(&mut TaskProcess) + Send>;

/// What a job on a slot thread panicked with.
pub type Panic = Box<dyn std::any::Any + Send>;

impl SlotThread {
    /// Starts slot `slot`'s thread, which starts `process` at once (it
    /// makes the app while the slot waits for its first task).
    pub fn spawn(slot: usize, mut process: TaskProcess) -> std::io::Result<SlotThread> {
        let (jobs, queue) = std::sync::mpsc::channel::<SlotJob>();
        let span = tracing::Span::current();
        // The thread ends when the sender is dropped with the slot.
        std::thread::Builder::new().name(format!("slot-{slot}")).spawn(move || {
            span.in_scope(|| process.start());
            queue.into_iter().for_each(|job| job(&mut process));
        })?;
        Ok(SlotThread { jobs })
    }

    /// What ends the slot's task process once the job is over.
    pub fn stopper(&self) -> SlotStopper {
        SlotStopper { jobs: self.jobs.clone() }
    }

    /// Runs `f` on the thread and waits for it; a panic is caught there
    /// (the thread lives on) and returned.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce(&mut TaskProcess) -> T + Send + 'static) -> Result<T, Panic> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job = move |process: &mut TaskProcess| {
            let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(process))));
        };
        self.jobs.send(Box::new(job)).expect("a slot's thread runs until the slot ends");
        result.await.expect("a slot's thread answers every job")
    }
}

/// Ends a slot's task process, after the attempt the slot runs, if any.
pub struct SlotStopper {
    jobs: std::sync::mpsc::Sender<SlotJob>,
}

impl SlotStopper {
    /// Shuts the task process down once its thread is free, and waits for that.
    pub async fn stop(self) {
        let (done, stopped) = tokio::sync::oneshot::channel();
        let job = move |process: &mut TaskProcess| {
            process.shut_down();
            let _ = done.send(());
        };
        if self.jobs.send(Box::new(job)).is_ok() {
            let _ = stopped.await;
        }
    }
}

/// Runs an attempt on the slot's task process, inside a
/// `task{task=... attempt=...}` span so that every log line of the attempt
/// names it; serves a map's output. Returns the outcome to report.
async fn run_on(thread: &SlotThread, storage: &WorkerStorage, task: TaskId, attempt: ChildAttempt, progress: TaskProgress) -> TaskOutcome {
    let id = attempt.attempt();
    let span = tracing::info_span!("task", task = %task, attempt = id);
    let in_span = span.clone();
    let result = thread.run(move |process| in_span.in_scope(|| process.run_attempt(attempt, &progress))).await;
    // No await below: entering the span here cannot leak it to other tasks.
    let _entered = span.enter();
    match result {
        Ok(AttemptEnd { outcome: outcome @ TaskOutcome::MapDone { .. }, served }) => match served {
            Some(path) if !storage.may_serve(&path) => {
                let error = format!("the task process named an output outside the work and job directories: {}", path.display());
                tracing::error!("{error}");
                TaskOutcome::Failed { error, record: None }
            }
            Some(path) => {
                storage.serve(id, path);
                outcome
            }
            None => outcome,
        },
        Ok(AttemptEnd { outcome, .. }) => outcome,
        // A panic in the worker's own code around the task process.
        Err(payload) => {
            let error = format!("worker panicked: {}", crate::abi::panic_message(payload.as_ref()));
            tracing::error!("{error}");
            TaskOutcome::Failed { error, record: None }
        }
    }
}
