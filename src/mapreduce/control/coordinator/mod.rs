//! The coordinator process: the tarpc shell around [`Scheduler`].
//!
//! [`run`] takes an already-bound listener (tests bind `127.0.0.1:0` and
//! run jobs in parallel), serves the [`Coordinator`](crate::rpc::Coordinator) RPCs until the job ends,
//! and returns how it went. Each handler locks the scheduler, makes one
//! decision, and answers; the only I/O under the lock is the rename that
//! commits a winning reduce's output, its journal line, and, after the last
//! reduce, moving the outputs into place, which must happen before the task
//! is marked done so that "job succeeded" implies "every output is final".
//!
//! Who calls: every connection opens with a [handshake](crate::handshake)
//! that proves the job's secret and names the worker; every call on the
//! connection is that worker's, and a worker id belongs to one process
//! (one incarnation) at a time. A report is applied only if it comes from
//! the worker its attempt was given to and names map outputs inside the
//! job directory.
//!
//! Liveness: when a worker's connection closes, the worker is gone and
//! the scheduler gives up its attempts at once. Heartbeats keep the rest
//! alive (see [`crate::scheduler`]).
//!
//! Shutdown: the job is over when the scheduler says so (or the caller's
//! `shutdown` future fires). Held `request_task` calls are woken and answered
//! `Exit`; a worker busy with an attempt is answered `Exit` at its next
//! heartbeat. `run` keeps serving until every connected worker has been
//! told (so each learns how the job ended) and every connection has closed
//! (a worker closes its own once it has read the answer), but at most one
//! heartbeat interval plus [`EXIT_GRACE`], since a crashed worker never asks
//! again; then it drops the server future, which closes every connection.
//!
//! Restarts: every finished task goes into the [journal](crate::journal)
//! under the same lock that marks it done; [`Job::plan`] replays the
//! journal of an earlier coordinator on the same job and marks done what
//! it finished ([`crate::job_dir`] decides resume or start over). The job
//! directory is removed when the job succeeds or fails, and kept when the
//! coordinator is interrupted, for the next run to resume.
//!
//! Layout: the job's *engine* (its state and everything that applies a
//! worker's call to it; what the standing cluster will hold one of per job,
//! see docs/ARCHITECTURE.md, "Cluster mode") and the *connection shell*
//! around it, which only translates calls into engine calls. The shell is
//! split where the cluster will split it: a *listener* accepts connections
//! within the process's connection budget and runs the handshake (one per
//! process in the cluster, serving many jobs); the *job's connections*
//! take an authenticated stream from there ([`JobHandle::serve_connection`]):
//! the service byte, the worker-id claims, the open connections the job's
//! end waits for, and closing them when it ends.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | the config, errors and report; [`Job::plan`], [`Job::run`], [`Job::run_without_listener`] |
//! | `engine.rs` | engine: the job's state under its lock, assignment, expiry, a worker gone, the app pin |
//! | `reports.rs` | engine: applying a worker's report, committing a reduce's output |
//! | `ledger.rs` | engine: the job directory and journal; restoring a restarted job |
//! | `uploads.rs` | engine: a reduce's output received from a worker |
//! | `listener.rs` | shell, listener: the one-job accept loop, budget, handshake, refusal log |
//! | `connections.rs` | shell, the job's: serving an authenticated connection, worker-id claims, open connections |
//! | `service.rs` | shell: the tarpc [`Coordinator`](crate::rpc::Coordinator) handlers, thin |
//!
//! Many jobs in one process: plan each ([`Job::plan`]), take its
//! [`JobHandle`] ([`Job::handle`]), and run each with
//! [`Job::run_without_listener`] (spawned, or joined) and a shutdown future
//! of its own, which cancels that job alone; the listener hands each
//! authenticated connection to the handle of the job it names.

mod connections;
mod engine;
mod ledger;
mod listener;
mod reports;
mod service;
mod uploads;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::app::Params;
use crate::handshake::Secret;
use crate::job_dir::{JobDir, JobDirError};
use crate::job_files::JobFiles;
use crate::output::OutputCompression;
use crate::rpc::{InputFile, JobApp, JobEnd, JobSpec, ShippedFile};
use crate::runfile::Compression;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::split::plan_splits;
use crate::status::{JobStatus, StatusReport};
use crate::untrusted::WarningLimit;

pub use connections::{contain_panics, ConnectionRefused};

use connections::MIN_IDLE_LIMIT;
use engine::{wait_for_end, JobState, Shared, REFUSAL_LOG_WINDOW};
use ledger::{fingerprint, remove_job_dir_unless_publishing, restore, Ledger};

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
    /// Where the outputs are committed instead, on object storage; then
    /// `output_dir` is the local staging directory that holds the job.
    pub object_storage: Option<crate::remote::ObjectUrl>,
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
    /// How the outputs are compressed, and so named.
    pub output_compression: OutputCompression,
    /// Files shipped with the job (`--files`), as [`crate::shipped::plan`]
    /// found them: where they are here, and what workers are told.
    pub files: Vec<(PathBuf, ShippedFile)>,
    /// Start over even if the output directory holds this job, half done
    /// by an earlier coordinator (`--fresh`).
    pub fresh: bool,
    /// The app plugin to serve to workers started without one
    /// (`mr-master --app`), with its description.
    pub app: Option<(PathBuf, JobApp)>,
    /// The job's shared secret: every connection to [`Job::run`]'s
    /// listener must prove it knows it (see [`crate::handshake`]). `None`
    /// admits any process that can connect, which `mr-master` allows only
    /// on a loopback address. Unused by [`Job::run_without_listener`]: there
    /// the listener that hands the job its connections checks its own.
    pub secret: Option<Secret>,
}

/// Why a job did not succeed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named by their messages
pub enum CoordinatorError {
    /// The job directory could not be used (another coordinator holds it,
    /// or a file operation failed).
    #[error(transparent)]
    JobDir(#[from] JobDirError),
    /// The RPC listener failed.
    #[error("RPC listener: {0}")]
    Listener(std::io::Error),
    /// A task failed too often; the message names it.
    #[error("job failed: {0}")]
    JobFailed(String),
    /// The shutdown future fired before the job finished; the job
    /// directory is kept, so running the job again resumes it.
    #[error("interrupted before the job finished; run the same command again to resume it (or add --fresh to start over)")]
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

/// A job's door for connections that a listener has accepted and
/// authenticated: [`JobHandle::serve_connection`]. Clones are the same
/// door; valid before, during and after the job runs (once the job is over,
/// connections are refused).
#[derive(Clone)]
pub struct JobHandle(Arc<Shared>);

impl JobHandle {
    /// How many tasks the job would give `worker` now (see
    /// [`Scheduler::ready_tasks_for`]): the standing cluster asks before it
    /// sends free slots here.
    pub fn ready_tasks_for(&self, worker: &str) -> usize {
        self.0.job().scheduler.ready_tasks_for(worker, Instant::now())
    }

    /// The directory the job's outputs go to (absolute).
    pub fn output_dir(&self) -> &std::path::Path {
        &self.0.output_dir
    }

    /// Completes once the job's end is known: its outputs published, or it
    /// failed (cancelled too). Its engine then still tells its workers and
    /// closes its connections before [`Job::run_without_listener`]
    /// returns; the standing cluster records the end at once.
    pub async fn wait_ended(&self) {
        let _ = self.0.ended.subscribe().wait_for(|ended| *ended).await;
    }

    /// The id of the next attempt the job gives out (see
    /// [`Scheduler::next_attempt_id`]).
    pub fn next_attempt_id(&self) -> crate::rpc::AttemptId {
        self.0.job().scheduler.next_attempt_id()
    }

    /// How far along the job is (tasks done, tasks running).
    pub fn progress(&self) -> crate::scheduler::Progress {
        self.0.job().scheduler.progress()
    }

    /// A handle on the job's status.
    pub fn status(&self) -> StatusHandle {
        StatusHandle(self.0.clone())
    }

    /// Stops the job as failed with `reason` unless it has ended (so, under
    /// the job's lock, never once its outputs are published): its workers
    /// are told, as at any end, its running attempts stop, and its job
    /// directory goes. False if it had ended already.
    pub fn cancel(&self, reason: &str) -> bool {
        let mut job = self.0.job();
        if job.scheduler.job_end().is_some() {
            return false;
        }
        job.scheduler.abort(reason.to_owned());
        drop(job);
        self.0.changed.notify_waiters();
        true
    }
}

/// The plugin `app` names (a path, or a bare name for `libNAME.so` beside
/// this executable), checked to be a plugin of this build's ABI, with what
/// workers are told of it (for [`CoordinatorConfig::app`]); `Err` says
/// what is wrong in one line.
pub fn job_app(app: &str) -> Result<(PathBuf, JobApp), String> {
    let plugin = crate::plugin::Plugin::open(app).map_err(|e| e.to_string())?;
    let path = std::path::absolute(plugin.path()).map_err(|e| format!("--app {app}: {e}"))?;
    let reading = |e: std::io::Error| format!("reading the app {}: {e}", path.display());
    let sha256 = crate::plugin::file_sha256(&path).map_err(reading)?;
    let size = std::fs::metadata(&path).map_err(reading)?.len();
    let file_name = path.file_name().map_or_else(|| app.to_owned(), |n| n.to_string_lossy().into_owned());
    Ok((path, JobApp { file_name, sha256, size }))
}

/// A planned job: tasks made, job directory opened (and the journal
/// replayed, if this job was started before), not yet serving.
pub struct Job {
    shared: Arc<Shared>,
    /// The journal file, to force it to disk every [`JOURNAL_SYNC`].
    journal_sync: Option<std::fs::File>,
    started: Instant,
    /// Its output files (see [`Scheduler::output_count`]).
    outputs: u32,
    /// What [`Job::run`]'s listener admits connections with.
    secret: Option<Secret>,
}

/// Where in the job directory the shipped files' copies are served from.
const SHIPPED_DIR: &str = "shipped";

impl Job {
    /// Plans a job: splits the inputs into map tasks and creates the job
    /// directory. The job's clock starts here.
    pub fn plan(config: CoordinatorConfig) -> Result<Job, CoordinatorError> {
        let started = Instant::now();
        // Workers may run in other directories: every path they are sent is absolute.
        let output_dir = std::path::absolute(&config.output_dir).map_err(|source| JobDirError::Io { path: config.output_dir.clone(), source })?;
        let mut opened = JobDir::open(&output_dir, fingerprint(&config), config.fresh)?;
        opened.dir.compress_outputs(config.output_compression);
        if let Some(prefix) = &config.object_storage {
            opened.dir.publish_to(prefix.clone(), &opened.id)?;
        }
        if let Some(why) = &opened.discarded {
            tracing::warn!("the job directory {} held another job, removed: {why}", opened.dir.path().display());
        }
        // Served from copies: a file changed later reaches no worker.
        let shipped = crate::shipped::stage(&config.files, &opened.dir.path().join(SHIPPED_DIR)).map_err(CoordinatorError::JobFailed)?;
        let splits = plan_splits(&config.inputs, config.split_bytes);
        let map_count = splits.len();
        let mut scheduler = Scheduler::new(config.scheduler, splits, config.reduces, opened.dir.path().to_owned());
        let mut status = JobStatus::new(config.inputs.clone(), map_count, config.reduces as usize, config.scheduler.task_timeout, started);
        scheduler.start_epoch(opened.epoch);
        restore(&mut scheduler, &mut status, &opened, &output_dir, started);
        // A job without --app runs the first worker's app; the pin
        // survives a restart.
        let app_pin = config.app.as_ref().map(|(_, app)| app.sha256.clone()).or_else(|| opened.recovered.app_sha256.clone());
        let journal_sync = opened.journal.sync_handle().ok();
        let mut ledger = Ledger { dir: opened.dir, journal: Some(opened.journal), id: opened.id, publishing: false, published: false };
        // A job whose every output was done before the restart only has
        // them to move.
        ledger.publish_if_done(&mut scheduler);
        let spec = JobSpec {
            job_id: ledger.id.clone(),
            params: config.params.clone(),
            inputs: config.inputs.clone(),
            reduces: config.reduces,
            map_buffer_bytes: config.map_buffer_bytes,
            combine: config.combine,
            compression: config.compression,
            output_compression: config.output_compression,
            heartbeat_interval: heartbeat_interval(config.scheduler.task_timeout),
            job_dir: ledger.dir.path().to_owned(),
            app: config.app.as_ref().map(|(_, app)| app.clone()),
            files: config.files.iter().map(|(_, file)| file.clone()).collect(),
        };
        tracing::info!(inputs = config.inputs.len(), maps = map_count, reduces = config.reduces, job_dir = %ledger.dir.path().display(), "job planned");
        let shared = Arc::new(Shared {
            spec,
            job: Mutex::new(JobState { scheduler, status, ledger }),
            changed: Notify::new(),
            attempt_started: Notify::new(),
            output_dir,
            object_storage: config.object_storage.clone(),
            not_yet_exited: Mutex::new(HashSet::new()),
            connections: AtomicUsize::new(0),
            idle_limit: (config.scheduler.task_timeout * 2).max(MIN_IDLE_LIMIT),
            files: Arc::new(JobFiles::new(config.inputs.clone(), config.app.as_ref().map(|(path, _)| path.clone()), shipped)),
            claims: Mutex::new(HashMap::new()),
            closed: watch::channel(false).0,
            ended: watch::channel(false).0,
            refused_calls: Mutex::new(WarningLimit::new(REFUSAL_LOG_WINDOW)),
            request_hold: crate::rpc::POLL_WAIT,
            log_every_attempt: false,
            app_pin: Mutex::new(app_pin),
        });
        let outputs = shared.job().scheduler.output_count();
        Ok(Job { shared, journal_sync, started, outputs, secret: config.secret })
    }

    /// A handle on the job's status.
    pub fn status(&self) -> StatusHandle {
        StatusHandle(self.shared.clone())
    }

    /// The job as a standing cluster runs it: a `request_task` with no task
    /// ready is answered at once instead of held up to
    /// [`POLL_WAIT`](crate::rpc::POLL_WAIT) (the cluster's slots ask the
    /// cluster which job to serve, not one job), and every attempt's start
    /// and success is logged at INFO (the job's own log). Call before
    /// taking handles.
    pub fn for_cluster(mut self) -> Job {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.request_hold = Duration::ZERO;
            shared.log_every_attempt = true;
        }
        self
    }

    /// The job's door for connections accepted and authenticated
    /// elsewhere (see [`Job::run_without_listener`]).
    pub fn handle(&self) -> JobHandle {
        JobHandle(self.shared.clone())
    }

    /// Serves the job on `listener` until every output is committed, the job
    /// fails, or `shutdown` completes: accepts connections within the
    /// process's connection budget, runs the handshake with the job's
    /// secret, and hands each admitted connection to the job's
    /// [`JobHandle`].
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<JobReport, CoordinatorError> {
        let serving = listener::serve(listener, self.handle(), self.secret.clone());
        self.drive(shutdown, serving).await
    }

    /// Runs the job with no listener of its own, until every output is
    /// committed, the job fails, or `shutdown` completes (which cancels
    /// this job alone, its directory kept to resume): connections reach it
    /// through its [`JobHandle`] ([`Job::handle`]). Once the job is over,
    /// its workers are told so as in [`Job::run`], then every connection
    /// still open through the handle is closed and new ones are refused.
    /// Dropping the future closes them too.
    pub async fn run_without_listener(self, shutdown: impl Future<Output = ()>) -> Result<JobReport, CoordinatorError> {
        self.drive(shutdown, std::future::pending()).await
    }

    /// Runs the job until its end or `shutdown`, with `serving` (the
    /// listener that feeds its connections, if it has one) polled beside
    /// it until the job's connections are closed: a failure of `serving`
    /// stops the job.
    async fn drive(
        self,
        shutdown: impl Future<Output = ()>,
        serving: impl Future<Output = std::io::Result<()>>,
    ) -> Result<JobReport, CoordinatorError> {
        let Job { shared, journal_sync, started, outputs, secret: _ } = self;
        // However this ends, the job's connections are closed.
        let _close = CloseConnectionsOnDrop(&shared);
        // Boxed, so that dropping it below really drops the listener (and
        // closes every connection it accepted) before the job directory goes.
        let mut serving = Box::pin(serving);
        let syncing = journal_sync.map(|file| tokio::spawn(sync_journal_every_second(file)));
        let _stop_syncing = AbortOnDrop(syncing);
        // The job directory is kept for a later run to resume the job.
        let stopped = |shared: &Shared, why: &str| {
            shared.job().status.job_ended(JobEnd::Failed(why.to_owned()), Instant::now());
        };
        let end = tokio::select! {
            end = wait_for_end(&shared) => end,
            result = &mut serving => {
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
                _ = &mut serving => {}
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
        shared.closed.send_replace(true);
        drop(serving);
        remove_job_dir_unless_publishing(&shared);
        match end {
            JobEnd::Succeeded => Ok(JobReport {
                outputs: (0..outputs).map(|r| shared.output_path(&shared.spec.output_compression.output_file_name(r))).collect(),
                elapsed,
            }),
            JobEnd::Failed(message) => Err(CoordinatorError::JobFailed(message)),
        }
    }
}

/// Closes the job's connections when dropped (see `Shared::closed`).
struct CloseConnectionsOnDrop<'a>(&'a Shared);

impl Drop for CloseConnectionsOnDrop<'_> {
    fn drop(&mut self) {
        self.0.closed.send_replace(true);
    }
}

/// How often the journal is forced to disk while the job runs.
const JOURNAL_SYNC: Duration = Duration::from_secs(1);

async fn sync_journal_every_second(file: std::fs::File) {
    let file = Arc::new(file);
    let mut ticker = tokio::time::interval(JOURNAL_SYNC);
    loop {
        ticker.tick().await;
        let file = file.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || file.sync_data()).await {
            tracing::warn!("cannot sync the journal: {e}");
        }
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Plans and runs one job on `listener` (see [`Job::plan`] and [`Job::run`]).
pub async fn run(listener: TcpListener, config: CoordinatorConfig, shutdown: impl Future<Output = ()>) -> Result<JobReport, CoordinatorError> {
    Job::plan(config)?.run(listener, shutdown).await
}
