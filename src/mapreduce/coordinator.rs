//! The coordinator process: the tarpc shell around [`Scheduler`].
//!
//! [`run`] takes an already-bound listener (tests bind `127.0.0.1:0` and
//! run jobs in parallel), serves the [`Coordinator`] RPCs until the job ends,
//! and returns how it went. Each handler locks the scheduler, makes one
//! decision, and answers; the only I/O under the lock is the rename that
//! commits a winning reduce's output, which must happen before the task is
//! marked done so that "job succeeded" implies "every output is final".
//!
//! Liveness: each connection remembers the workers that called on it; when
//! it closes, those workers are gone and the scheduler gives up their
//! attempts at once. Heartbeats keep the rest alive (see [`crate::scheduler`]).
//!
//! Shutdown: the job is over when the scheduler says so (or the caller's
//! `shutdown` future fires). Held `request_task` calls are woken and answered
//! `Exit`; a worker busy with an attempt is answered `Exit` at its next
//! heartbeat. `run` keeps serving until every connected worker has been
//! told (so each learns how the job ended) and every connection has closed
//! (a worker closes its own once it has read the answer), but at most one
//! heartbeat interval plus [`EXIT_GRACE`], since a crashed worker never asks
//! again; then it drops the server future, which closes every connection.
//! The job directory with the intermediate files is removed on every path
//! out of `run`.

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{future, FutureExt, StreamExt};
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::output::{output_file_name, remove_stale_outputs};
use crate::app::Params;
use crate::counters::Counters;
use crate::rpc::{
    AttemptId, AttemptProgress, Assignment, Coordinator, HeartbeatReply, InputFile, JobEnd, JobSpec, TaskId, TaskOutcome, TaskReport, WorkerId,
    POLL_WAIT,
};
use crate::runfile::Compression;
use crate::scheduler::{ReportVerdict, Scheduler, SchedulerConfig};
use crate::status::{JobStatus, StatusReport};
use crate::split::plan_splits;

/// How long `run` waits, after the job ends and beyond one heartbeat
/// interval, for the workers it knows to be told `Exit`, before it closes
/// the connections.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// Longest interval between a worker's heartbeats. Shorter task timeouts
/// get proportionally shorter intervals (see [`heartbeat_interval`]).
const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How often workers send heartbeats for a job with this task timeout: a
/// quarter of it, at most [`MAX_HEARTBEAT_INTERVAL`], so that a worker must
/// miss several in a row before it is taken for gone.
pub fn heartbeat_interval(task_timeout: Duration) -> Duration {
    (task_timeout / 4).min(MAX_HEARTBEAT_INTERVAL)
}

/// What the coordinator needs to run one job.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The input files.
    pub inputs: Vec<InputFile>,
    /// Target bytes per map task; larger files are split at line boundaries
    /// (0: one map task per file).
    pub split_bytes: u64,
    /// Number of reduce tasks (and output files).
    pub reduces: u32,
    /// Where `mr-out-*` go; the job's intermediate files live in a hidden
    /// subdirectory of it while the job runs.
    pub output_dir: PathBuf,
    /// Timeouts and failure limits.
    pub scheduler: SchedulerConfig,
    /// Parameters for the app.
    pub params: Params,
    /// Map output buffer budget per map task, in bytes.
    pub map_buffer_bytes: u64,
    /// Whether map tasks use the app's combiner, if it has one.
    pub combine: bool,
    /// How intermediate runs are compressed.
    pub compression: Compression,
}

/// Why a job did not succeed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named by their messages
pub enum CoordinatorError {
    /// The job's intermediate directory could not be created.
    #[error("cannot create a job directory in {}: {source}", .dir.display())]
    JobDir { dir: PathBuf, source: std::io::Error },
    /// The RPC listener failed.
    #[error("RPC listener: {0}")]
    Listener(std::io::Error),
    /// A task failed too often; the message names it.
    #[error("job failed: {0}")]
    JobFailed(String),
    /// The shutdown future fired before the job finished.
    #[error("interrupted before the job finished")]
    Interrupted,
}

/// A finished job.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// The output files, `mr-out-0` first.
    pub outputs: Vec<PathBuf>,
    /// Wall time from the start of `run` to the last commit.
    pub elapsed: Duration,
}

/// The coordinator's view of the job: the task table and its observable
/// history, changed together under one lock.
struct JobState {
    scheduler: Scheduler,
    status: JobStatus,
}

/// State shared by every RPC handler.
struct Shared {
    /// Answer to `job()`; fixed for the job.
    spec: JobSpec,
    job: Mutex<JobState>,
    /// Signalled whenever the scheduler changes in a way that may let a held
    /// `request_task` proceed (a task finished or failed, the job ended).
    changed: Notify,
    output_dir: PathBuf,
    /// Workers heard from that have not been told `Exit` yet; `run` waits
    /// (up to `EXIT_GRACE`) for this to empty once the job is over.
    not_yet_exited: Mutex<HashSet<WorkerId>>,
    /// RPC connections open: a worker told `Exit` closes its connection
    /// once it has the answer, so `run` also waits for this to reach 0.
    connections: AtomicUsize,
}

impl Shared {
    fn job(&self) -> MutexGuard<'_, JobState> {
        lock(&self.job)
    }

    fn not_yet_exited(&self) -> MutexGuard<'_, HashSet<WorkerId>> {
        lock(&self.not_yet_exited)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock would be a bug in a handler; the state
    // is still the best record of the job, so keep using it.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A read-only handle on a job's status, for the progress display, the
/// HTTP server and the summary; valid before, during and after [`Job::run`].
#[derive(Clone)]
pub struct StatusHandle(Arc<Shared>);

impl StatusHandle {
    /// The job's status now.
    pub fn report(&self) -> StatusReport {
        let job = self.0.job();
        job.status.report(&job.scheduler, Instant::now())
    }
}

/// A planned job: tasks made, job directory created, not yet serving.
pub struct Job {
    shared: Arc<Shared>,
    /// Removed (with every intermediate file) when the job is dropped.
    job_dir: tempfile::TempDir,
    started: Instant,
    reduces: u32,
}

impl Job {
    /// Plans a job: splits the inputs into map tasks and creates the job
    /// directory. The job's clock starts here.
    pub fn plan(config: CoordinatorConfig) -> Result<Job, CoordinatorError> {
        let started = Instant::now();
        let job_dir_err = |source| CoordinatorError::JobDir { dir: config.output_dir.clone(), source };
        // Workers may run in other directories: every path they are sent is absolute.
        let output_dir = std::path::absolute(&config.output_dir).map_err(job_dir_err)?;
        let job_dir = tempfile::Builder::new().prefix(".mr-job-").tempdir_in(&output_dir).map_err(job_dir_err)?;
        let splits = plan_splits(&config.inputs, config.split_bytes);
        let map_count = splits.len();
        let scheduler = Scheduler::new(config.scheduler, splits, config.reduces, job_dir.path().to_owned());
        let status =
            JobStatus::new(config.inputs.clone(), map_count, config.reduces as usize, config.scheduler.task_timeout, started);
        let spec = JobSpec {
            params: config.params.clone(),
            inputs: config.inputs.clone(),
            reduces: config.reduces,
            map_buffer_bytes: config.map_buffer_bytes,
            combine: config.combine,
            compression: config.compression,
            heartbeat_interval: heartbeat_interval(config.scheduler.task_timeout),
        };
        tracing::info!(inputs = config.inputs.len(), maps = map_count, reduces = config.reduces, job_dir = %job_dir.path().display(), "job planned");
        let shared = Arc::new(Shared {
            spec,
            job: Mutex::new(JobState { scheduler, status }),
            changed: Notify::new(),
            output_dir,
            not_yet_exited: Mutex::new(HashSet::new()),
            connections: AtomicUsize::new(0),
        });
        Ok(Job { shared, job_dir, started, reduces: config.reduces })
    }

    /// A handle on the job's status.
    pub fn status(&self) -> StatusHandle {
        StatusHandle(self.shared.clone())
    }

    /// Serves the job on `listener` until every output is committed, the job
    /// fails, or `shutdown` completes.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<JobReport, CoordinatorError> {
        let Job { shared, job_dir, started, reduces } = self;
        let server = serve(listener, shared.clone());
        tokio::pin!(server);
        let stopped = |shared: &Shared, why: &str| {
            shared.job().status.job_ended(JobEnd::Failed(why.to_owned()), Instant::now());
        };
        let end = tokio::select! {
            end = wait_for_end(&shared) => end,
            result = &mut server => {
                stopped(&shared, "the RPC listener failed");
                return Err(CoordinatorError::Listener(result.err().unwrap_or_else(|| std::io::Error::other("listener closed"))));
            }
            () = shutdown => {
                stopped(&shared, "interrupted");
                return Err(CoordinatorError::Interrupted);
            }
        };
        let elapsed = started.elapsed();
        // Keep serving so that the workers learn how the job ended.
        let _ = tokio::time::timeout(shared.spec.heartbeat_interval + EXIT_GRACE, async {
            tokio::select! {
                _ = &mut server => {}
                () = async {
                    // Every worker told, and every one gone: its connection
                    // closes only once it has read its answer.
                    while !shared.not_yet_exited().is_empty() || shared.connections.load(Ordering::Acquire) > 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                } => {}
            }
        })
        .await;
        drop(server);
        // The job directory (runs, staged outputs of losing attempts) goes with `job_dir`.
        drop(job_dir);
        match end {
            JobEnd::Succeeded => Ok(JobReport {
                outputs: (0..reduces).map(|r| shared.output_dir.join(output_file_name(r))).collect(),
                elapsed,
            }),
            JobEnd::Failed(message) => Err(CoordinatorError::JobFailed(message)),
        }
    }
}

/// Plans and runs one job on `listener` (see [`Job::plan`] and [`Job::run`]).
pub async fn run(
    listener: TcpListener,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<JobReport, CoordinatorError> {
    Job::plan(config)?.run(listener, shutdown).await
}

/// Accepts connections and runs their requests until an I/O error on the
/// listener. Dropping the future closes every connection.
async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    let incoming = tarpc::serde_transport::tcp::listen_on(listener, Bincode::default).await?;
    incoming
        .filter_map(|conn| future::ready(conn.map_err(|e| tracing::warn!("accepting a connection: {e}")).ok()))
        .for_each_concurrent(None, |transport| {
            let peer = transport.peer_addr().ok().map(|a| a.to_string());
            let open = Arc::new(OpenConnection::new(&shared));
            let server = CoordinatorServer { shared: shared.clone(), peer, connection: open.clone() };
            // Requests run inside this future, not spawned, so that dropping
            // the server cancels them all.
            BaseChannel::with_defaults(transport).execute(server.serve()).for_each_concurrent(None, |request| request).map(move |()| drop(open))
        })
        .await;
    Ok(())
}

/// One RPC connection: counted in [`Shared::connections`] while it lives,
/// and the workers that called on it, who are gone when it closes.
struct OpenConnection {
    shared: Arc<Shared>,
    workers: Mutex<HashSet<WorkerId>>,
}

impl OpenConnection {
    fn new(shared: &Arc<Shared>) -> OpenConnection {
        shared.connections.fetch_add(1, Ordering::AcqRel);
        OpenConnection { shared: shared.clone(), workers: Mutex::new(HashSet::new()) }
    }

    fn note_worker(&self, worker: &str) {
        let mut workers = lock(&self.workers);
        if !workers.contains(worker) {
            workers.insert(worker.to_owned());
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let shared = &self.shared;
        let workers = std::mem::take(&mut *lock(&self.workers));
        if !workers.is_empty() {
            let mut job = shared.job();
            let JobState { scheduler, status } = &mut *job;
            let now = Instant::now();
            for worker in &workers {
                status.worker_disconnected(worker);
                if scheduler.job_end().is_some() {
                    continue;
                }
                for lost in scheduler.worker_disconnected(worker) {
                    tracing::warn!(task = %lost.task, attempt = lost.attempt, %worker, "attempt lost: {}; task will be re-run", lost.loss);
                    status.attempt_lost(lost.task, lost.attempt, lost.loss, now);
                }
            }
            drop(job);
            let mut waiting = shared.not_yet_exited();
            for worker in &workers {
                waiting.remove(worker);
            }
            drop(waiting);
            shared.changed.notify_waiters();
        }
        shared.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits until the scheduler reports the job over, and records the end.
/// Meanwhile gives up overdue attempts as their deadlines pass, so that a
/// lost attempt is seen (and counted toward its task's bound) even when no
/// worker is asking for work.
async fn wait_for_end(shared: &Shared) -> JobEnd {
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next_deadline = {
            let mut job = shared.job();
            let now = Instant::now();
            if expire_overdue(&mut job, now) {
                shared.changed.notify_waiters();
            }
            if let Some(end) = job.scheduler.job_end() {
                job.status.job_ended(end.clone(), now);
                return end;
            }
            job.scheduler.next_deadline()
        };
        match next_deadline {
            Some(deadline) => {
                tokio::select! {
                    () = &mut notified => {}
                    () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
                }
            }
            None => notified.await,
        }
    }
}

/// Gives up the attempts that are overdue at `now` (see
/// [`Scheduler::expire`]) and records them; true if there were any.
fn expire_overdue(job: &mut JobState, now: Instant) -> bool {
    let lost = job.scheduler.expire(now);
    for lost in &lost {
        tracing::warn!(task = %lost.task, attempt = lost.attempt, worker = %lost.worker, "attempt given up: {}; task will be re-run", lost.loss);
        job.status.attempt_lost(lost.task, lost.attempt, lost.loss, now);
    }
    !lost.is_empty()
}

/// The tarpc service for one connection: a handle on the shared state.
#[derive(Clone)]
struct CoordinatorServer {
    shared: Arc<Shared>,
    /// The connection's remote address, for the status page.
    peer: Option<String>,
    connection: Arc<OpenConnection>,
}

impl CoordinatorServer {
    /// Notes a call from `worker`, which is alive.
    fn heard_from(&self, worker: &str) {
        self.connection.note_worker(worker);
        self.shared.not_yet_exited().insert(worker.to_owned());
        let mut job = self.shared.job();
        let now = Instant::now();
        job.scheduler.heard_from(worker, now);
        job.status.worker_seen(worker, self.peer.clone(), now);
    }

    /// `worker` was told the job is over.
    fn told_exit(&self, worker: &str) {
        self.shared.not_yet_exited().remove(worker);
        self.shared.job().status.worker_exited(worker);
    }
}

impl Coordinator for CoordinatorServer {
    async fn job(self, _: Context) -> JobSpec {
        self.shared.spec.clone()
    }

    async fn request_task(self, _: Context, worker: WorkerId) -> Assignment {
        self.heard_from(&worker);
        let shared = &self.shared;
        let assignment = hold_until_assigned(shared, &worker).await;
        match &assignment {
            Assignment::Map(t) => tracing::debug!(%worker, task = %TaskId::Map(t.index), attempt = t.attempt, "assigned"),
            Assignment::Reduce(t) => tracing::debug!(%worker, task = %TaskId::Reduce(t.partition), attempt = t.attempt, "assigned"),
            Assignment::Wait => {}
            Assignment::Exit(_) => self.told_exit(&worker),
        }
        assignment
    }

    async fn heartbeat(self, _: Context, worker: WorkerId, running: Vec<AttemptProgress>) -> HeartbeatReply {
        self.heard_from(&worker);
        let end = {
            let mut job = self.shared.job();
            job.scheduler.heartbeat(&worker, &running, Instant::now());
            job.scheduler.job_end()
        };
        match end {
            None => HeartbeatReply::Continue,
            Some(end) => {
                self.told_exit(&worker);
                HeartbeatReply::Exit(end)
            }
        }
    }

    async fn report_task(self, _: Context, worker: WorkerId, report: TaskReport) {
        self.heard_from(&worker);
        let shared = &self.shared;
        let verdict = apply_report(shared, &worker, report);
        if verdict == ReportVerdict::Accepted {
            shared.changed.notify_waiters();
        }
    }
}

/// Answers a `request_task`: a task as soon as one is ready, `Exit` once the
/// job is over, or `Wait` after [`POLL_WAIT`].
async fn hold_until_assigned(shared: &Shared, worker: &str) -> Assignment {
    let give_up = tokio::time::Instant::now() + POLL_WAIT;
    loop {
        // Register for wake-ups before looking, so a change between the
        // look and the wait is not missed.
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next_deadline = {
            let mut job = shared.job();
            let now = Instant::now();
            expire_overdue(&mut job, now);
            let JobState { scheduler, status } = &mut *job;
            match scheduler.assign(worker, now) {
                Assignment::Wait => scheduler.next_deadline(),
                other => {
                    if let Some((task, attempt)) = assigned_attempt(&other) {
                        status.attempt_started(task, attempt, worker, now);
                    }
                    return other;
                }
            }
        };
        let wake = next_deadline.map_or(give_up, |d| give_up.min(tokio::time::Instant::from_std(d)));
        if tokio::time::Instant::now() >= give_up {
            return Assignment::Wait;
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// The task and attempt an assignment starts, if it starts one.
fn assigned_attempt(assignment: &Assignment) -> Option<(TaskId, AttemptId)> {
    match assignment {
        Assignment::Map(t) => Some((TaskId::Map(t.index), t.attempt)),
        Assignment::Reduce(t) => Some((TaskId::Reduce(t.partition), t.attempt)),
        Assignment::Wait | Assignment::Exit(_) => None,
    }
}

/// Applies a report to the scheduler, committing a winning reduce's output
/// first, and records it in the job's status. Returns what the scheduler
/// made of it.
fn apply_report(shared: &Shared, worker: &str, report: TaskReport) -> ReportVerdict {
    let TaskReport { task, attempt, outcome } = report;
    let mut job = shared.job();
    let JobState { scheduler, status } = &mut *job;
    let now = Instant::now();
    let verdict = match outcome {
        TaskOutcome::MapDone { outputs, counters } => {
            let verdict = scheduler.complete(task, attempt, outputs);
            record_completion(status, verdict, task, attempt, counters, now);
            verdict
        }
        TaskOutcome::ReduceDone { counters } => match commit_reduce(scheduler, &shared.output_dir, task, attempt) {
            Ok(verdict) => {
                record_completion(status, verdict, task, attempt, counters, now);
                verdict
            }
            Err((verdict, error)) => {
                record_failure(status, verdict, task, attempt, &error, now);
                verdict
            }
        },
        TaskOutcome::Failed { error } => {
            tracing::warn!(%task, attempt, %worker, "attempt failed: {error}");
            let verdict = scheduler.fail(task, attempt, &error);
            record_failure(status, verdict, task, attempt, &error, now);
            verdict
        }
        TaskOutcome::MapOutputLost { map_task, error } => {
            tracing::warn!(%task, attempt, %worker, "map task {map_task}'s output is unreadable, re-running it: {error}");
            let verdict = scheduler.map_output_lost(task, attempt, map_task, &error);
            if verdict == ReportVerdict::Accepted {
                status.map_output_lost(task, attempt, map_task, &error, now);
            } else {
                record_failure(status, verdict, task, attempt, &error, now);
            }
            verdict
        }
    };
    match verdict {
        ReportVerdict::Accepted => tracing::debug!(%task, attempt, %worker, "report accepted"),
        ReportVerdict::AlreadyDone => tracing::info!(%task, attempt, %worker, "late report for a finished task ignored"),
        ReportVerdict::UnknownAttempt => tracing::warn!(%task, attempt, %worker, "report for an unknown attempt ignored"),
    }
    verdict
}

/// Records a completion report: the winner's counters are kept, a late
/// duplicate's dropped.
fn record_completion(status: &mut JobStatus, verdict: ReportVerdict, task: TaskId, attempt: AttemptId, counters: Counters, now: Instant) {
    match verdict {
        ReportVerdict::Accepted => status.attempt_succeeded(task, attempt, counters, now),
        ReportVerdict::AlreadyDone => status.attempt_duplicate(task, attempt, now),
        ReportVerdict::UnknownAttempt => {}
    }
}

/// Records a failure report (a failure after the task was done is a duplicate).
fn record_failure(status: &mut JobStatus, verdict: ReportVerdict, task: TaskId, attempt: AttemptId, error: &str, now: Instant) {
    match verdict {
        ReportVerdict::Accepted => status.attempt_failed(task, attempt, error, now),
        ReportVerdict::AlreadyDone => status.attempt_duplicate(task, attempt, now),
        ReportVerdict::UnknownAttempt => {}
    }
}

fn remove_outputs_of_earlier_job(output_dir: &Path, reduces: u32) {
    match remove_stale_outputs(output_dir, reduces) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!("removed {} output files left by an earlier job with more reduces", removed.len())
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("could not check {} for outputs of an earlier job: {e}", output_dir.display()),
    }
}

/// Renames a reduce attempt's staged output to `mr-out-<r>` if the attempt
/// wins, then marks the task done. A failed rename fails the attempt:
/// `Err` carries the scheduler's verdict on that failure and the error. Only the winner is ever renamed, and the
/// rename happens under the scheduler lock, so a finished output is never
/// replaced and the job cannot end before its last output is in place.
fn commit_reduce(scheduler: &mut Scheduler, output_dir: &Path, task: TaskId, attempt: u64) -> Result<ReportVerdict, (ReportVerdict, String)> {
    let TaskId::Reduce(r) = task else { return Ok(ReportVerdict::UnknownAttempt) };
    let verdict = scheduler.would_accept_completion(task, attempt);
    if verdict != ReportVerdict::Accepted {
        return Ok(verdict);
    }
    let staged = scheduler.staged_output(r, attempt);
    let dest = output_dir.join(output_file_name(r));
    match std::fs::rename(&staged, &dest) {
        Ok(()) => {
            let verdict = scheduler.complete(task, attempt, Vec::new());
            if scheduler.job_end() == Some(JobEnd::Succeeded) {
                // Still under the lock: no worker hears "done" before this.
                remove_outputs_of_earlier_job(output_dir, scheduler.progress().reduces as u32);
            }
            Ok(verdict)
        }
        Err(e) => {
            let error = format!("committing {} to {}: {e}", staged.display(), dest.display());
            tracing::warn!(%task, attempt, "{error}");
            Err((scheduler.fail(task, attempt, &error), error))
        }
    }
}
