//! The coordinator process: the tarpc shell around [`Scheduler`].
//!
//! [`run`] takes an already-bound listener (tests bind `127.0.0.1:0` and
//! run jobs in parallel), serves the [`Coordinator`] RPCs until the job ends,
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

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::app::Params;
use crate::counters::Counters;
use crate::files::{self, Catalog};
use crate::handshake::{self, Identity, RefusalLog, Secret};
use crate::job_dir::{JobDir, JobDirError, Opened};
use crate::job_files::JobFiles;
use crate::journal::{Journal, Record};
use crate::map_output::run_is_present;
use crate::output::output_file_name;
use crate::report_check::{check_owner, check_report};
use crate::rpc::{
    Assignment, AttemptId, AttemptProgress, Coordinator, HeartbeatReply, InputFile, JobApp, JobEnd, JobSpec, TaskId, TaskOutcome, TaskReport,
    WorkerId, POLL_WAIT,
};
use crate::runfile::Compression;
use crate::scheduler::{LostOutput, Owner, ReportVerdict, Scheduler, SchedulerConfig};
use crate::secure::{Blocking, Stream};
use crate::split::plan_splits;
use crate::status::{JobStatus, StatusReport};
use crate::untrusted::{excerpt, WarningLimit, EXCERPT_CHARS};
use crate::upload;

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
    /// Start over even if the output directory holds this job, half done
    /// by an earlier coordinator (`--fresh`).
    pub fresh: bool,
    /// The app plugin to serve to workers started without one
    /// (`mr-master --app`), with its description.
    pub app: Option<(PathBuf, JobApp)>,
    /// The job's shared secret: every connection must prove it knows it
    /// (see [`crate::handshake`]). `None` admits any process that can
    /// connect, which `mr-master` allows only on a loopback address.
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

/// The coordinator's view of the job: the task table, its observable
/// history, and where finished work is kept, changed together under one
/// lock.
struct JobState {
    scheduler: Scheduler,
    status: JobStatus,
    ledger: Ledger,
}

/// Where finished work is kept: the job directory, and the journal that
/// lets a restarted coordinator resume the job.
struct Ledger {
    dir: JobDir,
    /// `None` once a write failed: the job goes on, but a restarted
    /// coordinator would redo what was not journaled.
    journal: Option<Journal>,
    /// The job's id, kept across restarts.
    id: String,
    /// The journal says `Publishing`: from here on the job directory must
    /// survive a failure, so that a new run finishes the move.
    publishing: bool,
    /// Every output is in the output directory.
    published: bool,
}

impl Ledger {
    /// Appends `record` to the journal, or gives up journaling with a
    /// warning if it cannot be written.
    fn record(&mut self, record: &Record) {
        let Some(journal) = &mut self.journal else { return };
        if let Err(e) = journal.append(record) {
            tracing::warn!("{e}; the job goes on, but a restarted coordinator would redo the tasks finished from now on");
            self.journal = None;
        }
    }

    /// Moves the outputs into the output directory once every reduce is
    /// done (see [`JobDir::publish`]): journals `Publishing`, synced, first,
    /// so that a coordinator killed halfway finishes the move when started
    /// again. A failure stops the job.
    fn publish_if_done(&mut self, scheduler: &mut Scheduler) {
        if self.published || scheduler.job_end() != Some(JobEnd::Succeeded) {
            return;
        }
        self.record(&Record::Publishing);
        if let Some(Err(e)) = self.journal.as_ref().map(Journal::sync) {
            tracing::warn!("{e}");
        }
        self.publishing = true;
        match self.dir.publish(scheduler.progress().reduces as u32, &self.id) {
            Ok(()) => self.published = true,
            Err(e) => scheduler.abort(format!("publishing the outputs: {e}")),
        }
    }
}

/// State shared by every RPC handler.
struct Shared {
    /// Answer to `job()`; fixed for the job.
    spec: JobSpec,
    job: Mutex<JobState>,
    /// Signalled whenever the scheduler changes in a way that may let a held
    /// `request_task` proceed (a task finished or failed, the job ended).
    changed: Notify,
    /// Signalled when an attempt is given out: its deadline may be the
    /// next one, and `wait_for_end` must look again (it might otherwise
    /// sleep past it, or forever, when no worker is left to ask for work).
    attempt_started: Notify,
    output_dir: PathBuf,
    /// Workers heard from that have not been told `Exit` yet; `run` waits
    /// (up to `EXIT_GRACE`) for this to empty once the job is over.
    not_yet_exited: Mutex<HashSet<WorkerId>>,
    /// RPC connections open: a worker told `Exit` closes its connection
    /// once it has the answer, so `run` also waits for this to reach 0.
    connections: AtomicUsize,
    /// How long a connection may send nothing before it is closed: twice
    /// the task timeout, so that a silent worker loses its attempts to the
    /// timeout first, as documented, and its connection after.
    idle_limit: Duration,
    /// What every connection's handshake must prove.
    secret: Option<Secret>,
    /// The SHA-256 of the one app every worker of the job must run: the
    /// `--app`'s, or else the first worker's (journaled as `AppPinned`).
    app_pin: Mutex<Option<String>>,
    /// What the file service on the RPC port serves: the inputs.
    files: Arc<dyn Catalog>,
    /// Which process holds each worker id: ids of open connections only,
    /// so the table is bounded by the connection cap.
    claims: Mutex<HashMap<WorkerId, Claim>>,
    refusals: Mutex<RefusalLog>,
    /// Reports, uploads and calls refused after the handshake (forged,
    /// stale or malformed): logged at most once per [`REFUSAL_LOG_WINDOW`].
    refused_calls: Mutex<WarningLimit>,
}

/// At most one log line per this long about refused reports and uploads.
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);

/// The process (by its handshake's incarnation) that holds a worker id,
/// and on how many open connections.
struct Claim {
    incarnation: [u8; 16],
    connections: usize,
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

/// A planned job: tasks made, job directory opened (and the journal
/// replayed, if this job was started before), not yet serving.
pub struct Job {
    shared: Arc<Shared>,
    /// The journal file, to force it to disk every [`JOURNAL_SYNC`].
    journal_sync: Option<std::fs::File>,
    started: Instant,
    reduces: u32,
}

impl Job {
    /// Plans a job: splits the inputs into map tasks and creates the job
    /// directory. The job's clock starts here.
    pub fn plan(config: CoordinatorConfig) -> Result<Job, CoordinatorError> {
        let started = Instant::now();
        // Workers may run in other directories: every path they are sent is absolute.
        let output_dir = std::path::absolute(&config.output_dir).map_err(|source| JobDirError::Io { path: config.output_dir.clone(), source })?;
        let opened = JobDir::open(&output_dir, fingerprint(&config), config.fresh)?;
        if let Some(why) = &opened.discarded {
            tracing::warn!("the job directory {} held another job, removed: {why}", opened.dir.path().display());
        }
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
        // A job whose every reduce was done before the restart only has
        // its outputs to move.
        ledger.publish_if_done(&mut scheduler);
        let spec = JobSpec {
            job_id: ledger.id.clone(),
            params: config.params.clone(),
            inputs: config.inputs.clone(),
            reduces: config.reduces,
            map_buffer_bytes: config.map_buffer_bytes,
            combine: config.combine,
            compression: config.compression,
            heartbeat_interval: heartbeat_interval(config.scheduler.task_timeout),
            job_dir: ledger.dir.path().to_owned(),
            app: config.app.as_ref().map(|(_, app)| app.clone()),
        };
        tracing::info!(inputs = config.inputs.len(), maps = map_count, reduces = config.reduces, job_dir = %ledger.dir.path().display(), "job planned");
        let shared = Arc::new(Shared {
            spec,
            job: Mutex::new(JobState { scheduler, status, ledger }),
            changed: Notify::new(),
            attempt_started: Notify::new(),
            output_dir,
            not_yet_exited: Mutex::new(HashSet::new()),
            connections: AtomicUsize::new(0),
            idle_limit: (config.scheduler.task_timeout * 2).max(MIN_IDLE_LIMIT),
            files: Arc::new(JobFiles::new(config.inputs.clone(), config.app.as_ref().map(|(path, _)| path.clone()))),
            secret: config.secret.clone(),
            claims: Mutex::new(HashMap::new()),
            refusals: Mutex::new(RefusalLog::default()),
            refused_calls: Mutex::new(WarningLimit::new(REFUSAL_LOG_WINDOW)),
            app_pin: Mutex::new(app_pin),
        });
        Ok(Job { shared, journal_sync, started, reduces: config.reduces })
    }

    /// A handle on the job's status.
    pub fn status(&self) -> StatusHandle {
        StatusHandle(self.shared.clone())
    }

    /// Serves the job on `listener` until every output is committed, the job
    /// fails, or `shutdown` completes.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<JobReport, CoordinatorError> {
        let Job { shared, journal_sync, started, reduces } = self;
        // Boxed, so that dropping it below really drops the server (and
        // closes every connection) before the job directory goes.
        let mut server = Box::pin(serve(listener, shared.clone()));
        let syncing = journal_sync.map(|file| tokio::spawn(sync_journal_every_second(file)));
        let _stop_syncing = AbortOnDrop(syncing);
        // The job directory is kept for a later run to resume the job.
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
        remove_job_dir_unless_publishing(&shared);
        match end {
            JobEnd::Succeeded => Ok(JobReport { outputs: (0..reduces).map(|r| shared.output_dir.join(output_file_name(r))).collect(), elapsed }),
            JobEnd::Failed(message) => Err(CoordinatorError::JobFailed(message)),
        }
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

/// Removes the job directory of an ended job, with its intermediate files
/// and the outputs of losing attempts; a failed job's outputs go with it,
/// leaving the output directory as it was. Kept only when publication
/// began and failed, so that a new run finishes it.
fn remove_job_dir_unless_publishing(shared: &Shared) {
    let job = shared.job();
    let ledger = &job.ledger;
    if ledger.publishing && !ledger.published {
        tracing::warn!("the job directory {} is kept: run the same command again to finish moving the outputs", ledger.dir.path().display());
    } else {
        ledger.dir.remove();
    }
}

/// What a job is planned from: a coordinator resumes an earlier one's job
/// only if this is the same. The app given with `--app` is part of it, so
/// that a job resumed with another build starts over instead of mixing
/// two apps' outputs (a job without `--app` keeps its journaled pin).
fn fingerprint(config: &CoordinatorConfig) -> serde_json::Value {
    serde_json::json!({
        "inputs": config.inputs,
        "split_bytes": config.split_bytes,
        "reduces": config.reduces,
        "params": config.params,
        "app": config.app.as_ref().map(|(_, app)| &app.sha256),
    })
}

/// Marks done what an earlier coordinator finished, as its journal says,
/// where the files it names are still there.
fn restore(scheduler: &mut Scheduler, status: &mut JobStatus, opened: &Opened, output_dir: &Path, now: Instant) {
    let recovered = &opened.recovered;
    let (mut maps, mut reduces) = (0, 0);
    for (m, attempt, outputs, counters) in &recovered.maps {
        let task = TaskId::Map(*m);
        let owner = recovered.owner_of(task, *attempt).cloned();
        if outputs.iter().all(|(_, location)| run_is_present(location)) && scheduler.restore(task, *attempt, owner, outputs.clone(), now) {
            status.task_restored(task, counters.clone(), now);
            maps += 1;
        }
    }
    for (r, attempt, counters) in &recovered.reduces {
        let task = TaskId::Reduce(*r);
        // During publication an output may have moved already. Its size
        // must be what the attempt wrote: a file cut short (a machine that
        // lost power before writing it back) is made again.
        let whole = |path: PathBuf| std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == counters.output_bytes);
        let present = whole(opened.dir.finished_output(*r)) || (recovered.publishing && whole(output_dir.join(output_file_name(*r))));
        let owner = recovered.owner_of(task, *attempt).cloned();
        if present && scheduler.restore(task, *attempt, owner, Vec::new(), now) {
            status.task_restored(task, counters.clone(), now);
            reduces += 1;
        }
    }
    // Attempts given out before the restart may still report, from the
    // process they were given to; the summary shows them all.
    let mut shown = HashSet::new();
    for (task, attempt, owner) in &recovered.given {
        scheduler.restore_given(*task, *attempt, owner.clone());
        // A record of a task this job has not, or of an attempt already
        // shown, is not the scheduler's: nothing to show.
        if scheduler.owner_of(*task, *attempt) != Some(owner) || !shown.insert((*task, *attempt)) {
            continue;
        }
        let won = matches!(scheduler.state(*task), crate::scheduler::TaskState::Done { attempt: winner } if winner == attempt);
        status.attempt_restored(*task, *attempt, &owner.worker, won);
    }
    if opened.epoch > 0 {
        let progress = scheduler.progress();
        tracing::info!(
            "resuming job {} (start {}): {maps} of {} map tasks and {reduces} of {} reduce tasks were done",
            opened.id,
            opened.epoch + 1,
            progress.maps,
            progress.reduces
        );
    }
}

/// Plans and runs one job on `listener` (see [`Job::plan`] and [`Job::run`]).
pub async fn run(listener: TcpListener, config: CoordinatorConfig, shutdown: impl Future<Output = ()>) -> Result<JobReport, CoordinatorError> {
    Job::plan(config)?.run(listener, shutdown).await
}

/// The shortest time a connection may send nothing before it is closed.
const MIN_IDLE_LIMIT: Duration = Duration::from_secs(2);

/// Accepts connections and runs their requests until an I/O error on the
/// listener. Dropping the future closes every connection.
async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    crate::accept::incoming(listener, crate::accept::connection_cap())
        .for_each_concurrent(None, |(stream, permit)| {
            let shared = shared.clone();
            contain_panics("a connection", async move {
                let peer = stream.peer_addr().map_or_else(|_| "an unknown address".to_owned(), |a| a.to_string());
                let Some((stream, open)) = admit(&shared, stream, &peer).await else { return };
                let mut stream = crate::accept::IdleLimited::new(stream, shared.idle_limit);
                // After the handshake, one byte names the service.
                match tokio::io::AsyncReadExt::read_u8(&mut stream).await {
                    Ok(files::SERVICE_RPC) => {}
                    Ok(upload::SERVICE_UPLOAD) => {
                        let owner = open.owner.clone();
                        drop(open);
                        // Not idle-limited: an upload waits for its reduce
                        // as long as the attempt runs.
                        let (shared, runtime) = (shared.clone(), tokio::runtime::Handle::current());
                        let stream = Blocking::new(stream.into_inner(), runtime);
                        let taken = tokio::task::spawn_blocking(move || take_upload(&shared, &owner, stream)).await;
                        if let Ok(Err(e)) = taken {
                            tracing::debug!("taking an output from {peer}: {e}");
                        }
                        drop(permit);
                        return;
                    }
                    Ok(files::SERVICE_FILES) => {
                        // Fetching files says nothing of the worker's
                        // liveness: the claim on its id is the RPC
                        // connection's alone.
                        drop(open);
                        if let Err(e) = files::serve_requests(stream, shared.files.clone()).await {
                            tracing::debug!("serving files to {peer}: {e}");
                        }
                        drop(permit);
                        return;
                    }
                    _ => return,
                }
                let transport = tarpc::serde_transport::Transport::from((stream, Bincode::default()));
                let server = CoordinatorServer {
                    shared: shared.clone(),
                    peer: Some(peer),
                    worker: open.worker.clone(),
                    owner: open.owner.clone(),
                    connection: open.clone(),
                };
                // Requests run inside this future, not spawned, so that dropping
                // the server cancels them all. The permit goes with the connection.
                BaseChannel::with_defaults(transport)
                    .execute(server.serve())
                    .for_each_concurrent(None, |request| contain_panics("an RPC handler", request))
                    .await;
                drop((open, permit));
            })
        })
        .await;
    Ok(())
}

/// Runs `future`, catching a panic in it: a bug that a peer's message
/// reaches must cost that message (or its connection), never the
/// coordinator. The state it leaves is still the best record of the job
/// (see [`lock`]).
async fn contain_panics(what: &str, future: impl Future<Output = ()>) {
    use futures::FutureExt;
    if let Err(payload) = std::panic::AssertUnwindSafe(future).catch_unwind().await {
        tracing::error!("{what} panicked (a bug; the coordinator goes on): {}", crate::abi::panic_message(payload.as_ref()));
    }
}

/// Runs the handshake on a new connection (encrypting it if the job has a
/// secret): the peer must know the job's secret (if it has one), and the
/// worker id it gives must not be held by another process. Refusals are
/// logged, at most one line per 10 s.
async fn admit(shared: &Arc<Shared>, stream: tokio::net::TcpStream, peer: &str) -> Option<(Stream, Arc<OpenConnection>)> {
    // A claim made for a handshake that then fails (the client left before
    // reading its admission) is given back.
    let claimed = std::cell::Cell::new(None);
    let claim = |identity: &Identity| {
        claim_worker_id(shared, identity)?;
        claimed.set(Some(identity.name.clone()));
        Ok(())
    };
    match handshake::accept(stream, shared.secret.as_ref(), claim).await {
        Ok((stream, identity)) => Some((stream, Arc::new(OpenConnection::new(shared, Owner::new(&identity.name, identity.incarnation))))),
        Err(e) => {
            if let Some(worker) = claimed.take() {
                release_worker_id(shared, &worker);
            }
            lock(&shared.refusals).refused(peer, &e);
            None
        }
    }
}

/// Gives `identity` its worker id for one more connection, unless another
/// process (another incarnation) holds it on an open connection.
fn claim_worker_id(shared: &Shared, identity: &Identity) -> Result<(), String> {
    let mut claims = lock(&shared.claims);
    match claims.get_mut(&identity.name) {
        Some(claim) if claim.incarnation != identity.incarnation => {
            Err(format!("the worker id {} belongs to another process connected now", identity.name))
        }
        Some(claim) => {
            claim.connections += 1;
            Ok(())
        }
        None => {
            claims.insert(identity.name.clone(), Claim { incarnation: identity.incarnation, connections: 1 });
            Ok(())
        }
    }
}

/// Gives back one connection's claim on `worker`'s id; true if it was the
/// last (the id is free again).
fn release_worker_id(shared: &Shared, worker: &str) -> bool {
    let mut claims = lock(&shared.claims);
    let Some(claim) = claims.get_mut(worker) else { return true };
    claim.connections -= 1;
    if claim.connections > 0 {
        return false;
    }
    claims.remove(worker);
    true
}

/// One RPC connection, from the worker its handshake named: counted in
/// [`Shared::connections`] while it lives. When it closes after the worker
/// called, the worker is gone (unless it has another connection open).
struct OpenConnection {
    shared: Arc<Shared>,
    worker: WorkerId,
    /// The worker id with its process's incarnation: who may report the
    /// attempts given on this connection.
    owner: Owner,
    /// Whether the worker made a call on this connection (a connection
    /// that only did the handshake says nothing of the worker).
    called: std::sync::atomic::AtomicBool,
}

impl OpenConnection {
    fn new(shared: &Arc<Shared>, owner: Owner) -> OpenConnection {
        shared.connections.fetch_add(1, Ordering::AcqRel);
        OpenConnection { shared: shared.clone(), worker: owner.worker.clone(), owner, called: false.into() }
    }

    /// Releases this connection's claim on the worker id; true if it was
    /// the worker's last open connection.
    fn release_claim(&self) -> bool {
        release_worker_id(&self.shared, &self.worker)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let shared = &self.shared;
        let worker = &self.worker;
        if self.release_claim() && self.called.load(Ordering::Acquire) {
            let mut job = shared.job();
            let JobState { scheduler, status, .. } = &mut *job;
            let now = Instant::now();
            status.worker_disconnected(worker);
            if scheduler.job_end().is_none() {
                for lost in scheduler.worker_disconnected(worker) {
                    tracing::warn!(task = %lost.task, attempt = lost.attempt, %worker, "attempt lost: {}; task will be re-run", lost.loss);
                    status.attempt_lost(lost.task, lost.attempt, lost.loss, now);
                }
                forget_outputs_of(&mut job, worker, "disconnected");
            }
            drop(job);
            shared.not_yet_exited().remove(worker);
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
        let started = shared.attempt_started.notified();
        tokio::pin!(started);
        started.as_mut().enable();
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
        let deadline = async {
            match next_deadline {
                Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut notified => {}
            () = &mut started => {}
            () = deadline => {}
        }
    }
}

/// Gives up the attempts that are overdue at `now` (see
/// [`Scheduler::expire`]) and the map outputs only silent workers held,
/// and records them; true if there were any.
fn expire_overdue(job: &mut JobState, now: Instant) -> bool {
    let lost = job.scheduler.expire(now);
    for lost in &lost {
        tracing::warn!(task = %lost.task, attempt = lost.attempt, worker = %lost.worker, "attempt given up: {}; task will be re-run", lost.loss);
        job.status.attempt_lost(lost.task, lost.attempt, lost.loss, now);
    }
    let mut forgot = false;
    for worker in job.scheduler.silent_workers(now) {
        forgot |= forget_outputs_of(job, &worker, "went silent");
    }
    !lost.is_empty() || forgot
}

/// Runs again the maps whose output only `worker`, now gone (`how`), could
/// serve (see [`Scheduler::forget_outputs_of`]); true if there were any.
fn forget_outputs_of(job: &mut JobState, worker: &str, how: &str) -> bool {
    let forgotten = job.scheduler.forget_outputs_of(worker);
    for &(map_task, attempt) in &forgotten {
        tracing::warn!(task = %TaskId::Map(map_task), attempt, %worker, "its output was served only by its worker, which {how}; task will be re-run");
        job.status.map_output_gone(map_task, &format!("its worker {worker} {how}, and its output with it"));
    }
    !forgotten.is_empty()
}

/// The tarpc service for one connection: a handle on the shared state.
#[derive(Clone)]
struct CoordinatorServer {
    shared: Arc<Shared>,
    /// The connection's remote address, for the status page.
    peer: Option<String>,
    /// The worker the connection's handshake named: every call on it is
    /// this worker's.
    worker: WorkerId,
    /// The same, with its process's incarnation.
    owner: Owner,
    connection: Arc<OpenConnection>,
}

impl CoordinatorServer {
    /// Notes a call from `worker`, which is alive.
    fn heard_from(&self, worker: &str) {
        self.connection.called.store(true, Ordering::Release);
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
    async fn job(self, _: Context, app_sha256: Option<String>) -> Result<JobSpec, String> {
        let spec = &self.shared.spec;
        let Some(theirs) = app_sha256 else { return Ok(spec.clone()) };
        if !is_sha256_hex(&theirs) {
            let why = format!("its app's SHA-256 is not 64 hex digits: \"{}\"", excerpt(&theirs, 16));
            refused(&self.shared, &self.owner, "a worker", &why);
            return Err(why);
        }
        match pin_app(&self.shared, &theirs) {
            Ok(()) => Ok(spec.clone()),
            Err(pinned) => {
                let job_app = match &spec.app {
                    Some(app) => format!("the job's {}", app.file_name),
                    None => "the app of the job's first worker".to_owned(),
                };
                let how =
                    if spec.app.is_some() { "start it without APP to run the job's, or with the same build" } else { "start it with the same build" };
                let why = format!("its app (sha256 {}) is not {job_app} (sha256 {}): {how}", short(&theirs), short(&pinned));
                refused(&self.shared, &self.owner, "a worker", &why);
                Err(why)
            }
        }
    }

    async fn request_task(self, _: Context) -> Assignment {
        let worker = self.worker.clone();
        self.heard_from(&worker);
        let shared = &self.shared;
        let assignment = hold_until_assigned(shared, &self.owner).await;
        match &assignment {
            Assignment::Map(t) => tracing::debug!(%worker, task = %TaskId::Map(t.index), attempt = t.attempt, "assigned"),
            Assignment::Reduce(t) => tracing::debug!(%worker, task = %TaskId::Reduce(t.partition), attempt = t.attempt, "assigned"),
            Assignment::Wait => {}
            Assignment::Exit(_) => self.told_exit(&worker),
        }
        assignment
    }

    async fn heartbeat(self, _: Context, running: Vec<AttemptProgress>) -> HeartbeatReply {
        let worker = self.worker.clone();
        self.heard_from(&worker);
        let (end, abandoned) = {
            let mut job = self.shared.job();
            job.scheduler.heartbeat(&self.owner, &running, Instant::now());
            (job.scheduler.job_end(), job.scheduler.abandoned(&self.owner, &running))
        };
        match end {
            None if abandoned.is_empty() => HeartbeatReply::Continue,
            None => HeartbeatReply::Abandon(abandoned),
            Some(end) => {
                self.told_exit(&worker);
                HeartbeatReply::Exit(end)
            }
        }
    }

    async fn report_task(self, _: Context, report: TaskReport) {
        let worker = self.worker.clone();
        self.heard_from(&worker);
        let shared = &self.shared;
        let verdict = apply_report(shared, &self.owner, report);
        if verdict == ReportVerdict::Accepted {
            shared.changed.notify_waiters();
        }
    }
}

/// Takes a reduce attempt's output as its worker sends it
/// ([`crate::upload`]) into the attempt's staged path in the job directory,
/// if the attempt is that worker's and its report would still be taken
/// (see [`upload_destination`]); the worker's report then commits it as any
/// other. Waits for it as long as that holds.
/// Blocking: runs on a thread of its own, writing the frames to the file as
/// they are read.
fn take_upload(shared: &Shared, owner: &Owner, mut stream: Blocking) -> std::io::Result<()> {
    stream.set_read_timeout(Some(UPLOAD_CHECK));
    stream.set_write_timeout(Some(files::STALL_LIMIT));
    // Waits end with the job too: the runtime waits for this thread to exit.
    let header_deadline = Instant::now() + files::STALL_LIMIT;
    let mut header_awaited = || Instant::now() < header_deadline && shared.job().scheduler.job_end().is_none();
    let (r, attempt) = upload::read_header(&mut stream, &mut header_awaited)?;
    let task = TaskId::Reduce(r);
    let outcome = upload_destination(shared, owner, task, attempt).and_then(|staged| {
        let mut still_wanted = || shared.job().scheduler.would_accept_completion(task, attempt) == ReportVerdict::Accepted;
        receive_into(&mut stream, &staged, &mut still_wanted).map_err(|e| match e.kind() {
            std::io::ErrorKind::Interrupted => format!("{task} was done by another attempt meanwhile"),
            _ => e.to_string(),
        })
    });
    if let Err(why) = &outcome {
        tracing::debug!(%task, attempt, "the output from {} was not taken: {why}", owner.worker);
    }
    upload::answer(&mut stream, outcome)
}

/// Where reduce `task`'s `attempt` stages its output, if `owner` may send
/// it: the same attempts whose completion report would be taken (given to
/// that process, by this coordinator or by one before a restart), while
/// the task is not done. A refusal of another's attempt is counted and
/// logged as a refused call.
fn upload_destination(shared: &Shared, owner: &Owner, task: TaskId, attempt: AttemptId) -> Result<PathBuf, String> {
    let mut job = shared.job();
    let JobState { scheduler, status, .. } = &mut *job;
    let checked = match task {
        TaskId::Reduce(r) if r < scheduler.progress().reduces as u32 => check_owner(scheduler, owner, task, attempt).map(|()| r),
        _ => Err(format!("there is no {task}")),
    };
    let r = match checked {
        Ok(r) => r,
        Err(why) => {
            status.call_refused();
            refused(shared, owner, &format!("an upload of {task} attempt {attempt}"), &why);
            return Err(format!("attempt {attempt} of {task} was not given to this worker"));
        }
    };
    match scheduler.would_accept_completion(task, attempt) {
        ReportVerdict::Accepted => Ok(scheduler.staged_output(r, attempt)),
        ReportVerdict::AlreadyDone => Err(format!("{task} is done already")),
        ReportVerdict::UnknownAttempt => Err(format!("attempt {attempt} of {task} was not given to this worker")),
    }
}

/// Logs that a call from `owner` (`what`) was refused for `why`: one line
/// per [`REFUSAL_LOG_WINDOW`] at most, with how many were held back.
fn refused(shared: &Shared, owner: &Owner, what: &str, why: &str) {
    let held_back = lock(&shared.refused_calls).offer(Instant::now());
    if let Some(held_back) = held_back {
        let worker = excerpt(&owner.worker, EXCERPT_CHARS);
        let also = if held_back > 0 { format!(" ({held_back} more refused since the last such line)") } else { String::new() };
        tracing::warn!("refused {what} from {worker}: {why}{also}");
    }
}

/// Receives an upload into a temporary file beside `staged`, renamed to it
/// once whole; given up (and the file removed) if `still_wanted` says so
/// meanwhile (the attempt timed out, or lost to another).
fn receive_into(stream: &mut Blocking, staged: &Path, still_wanted: &mut dyn FnMut() -> bool) -> std::io::Result<()> {
    let dir = staged.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new().prefix(".uploading-").tempfile_in(dir)?;
    upload::receive(stream, temp.as_file_mut(), still_wanted)?;
    temp.persist(staged).map(drop).map_err(|e| e.error)
}

/// How often an upload in progress checks that it is still wanted.
const UPLOAD_CHECK: Duration = Duration::from_secs(1);

/// The first 12 hex digits of a SHA-256, enough to tell builds apart in a
/// message (by characters: the text may be a peer's).
fn short(sha256: &str) -> String {
    sha256.chars().take(12).collect()
}

/// Whether `text` is a SHA-256 in hex, as [`crate::plugin::file_sha256`] writes it.
fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Pins the job to the app with `sha256` if it has none yet (journaling
/// the pin, so that a restarted coordinator keeps it); `Err` with the
/// pinned app's hash if it has another.
fn pin_app(shared: &Shared, sha256: &str) -> Result<(), String> {
    // The job lock first, as everywhere: the pin is journaled under it.
    let mut job = shared.job();
    let mut pin = lock(&shared.app_pin);
    match pin.as_deref() {
        Some(pinned) if pinned.eq_ignore_ascii_case(sha256) => Ok(()),
        Some(pinned) => Err(pinned.to_owned()),
        None => {
            job.ledger.record(&Record::AppPinned { sha256: sha256.to_owned() });
            tracing::info!("the job runs the app with sha256 {} (its first worker's)", short(sha256));
            *pin = Some(sha256.to_owned());
            Ok(())
        }
    }
}

/// Answers a `request_task`: a task as soon as one is ready, `Exit` once the
/// job is over, or `Wait` after [`POLL_WAIT`].
async fn hold_until_assigned(shared: &Shared, owner: &Owner) -> Assignment {
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
            let JobState { scheduler, status, ledger } = &mut *job;
            match scheduler.assign(owner, now) {
                Assignment::Wait => scheduler.next_deadline(),
                other => {
                    if let Some((task, attempt)) = assigned_attempt(&other) {
                        ledger.record(&Record::Assigned { task, attempt, owner: owner.clone() });
                        status.attempt_started(task, attempt, &owner.worker, scheduler.is_backup(task, attempt), now);
                        shared.attempt_started.notify_waiters();
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

/// The most characters of a failure's text the coordinator keeps (in its
/// log, the status and the summary): a worker's errors are one line.
const MAX_ERROR_CHARS: usize = 1000;

/// Applies a report from `owner` to the scheduler, committing a winning
/// reduce's output first, and records it in the job's status. A report
/// that fails [`check_report`] changes nothing and is counted as refused.
/// Returns what the scheduler made of it.
fn apply_report(shared: &Shared, owner: &Owner, report: TaskReport) -> ReportVerdict {
    let TaskReport { task, attempt, outcome } = report;
    let worker = owner.worker.as_str();
    let mut job = shared.job();
    let JobState { scheduler, status, ledger } = &mut *job;
    if let Err(why) = check_report(scheduler, owner, task, attempt, &outcome) {
        status.call_refused();
        refused(shared, owner, &format!("a report of {task} attempt {attempt}"), &why);
        return ReportVerdict::UnknownAttempt;
    }
    let now = Instant::now();
    let verdict = match outcome {
        TaskOutcome::MapDone { outputs, counters } => {
            let verdict = scheduler.complete(task, attempt, outputs.clone(), now);
            if let (ReportVerdict::Accepted, TaskId::Map(m)) = (verdict, task) {
                ledger.record(&Record::MapDone { task: m, attempt, outputs, counters: counters.clone() });
            }
            record_completion(status, verdict, task, attempt, counters, now);
            verdict
        }
        TaskOutcome::ReduceDone { counters, .. } => match commit_reduce(scheduler, &ledger.dir, task, attempt, now) {
            Ok(verdict) => {
                if let (ReportVerdict::Accepted, TaskId::Reduce(r)) = (verdict, task) {
                    ledger.record(&Record::ReduceDone { task: r, attempt, counters: counters.clone() });
                    // Still under the lock: no worker hears "done" before
                    // the outputs are in place.
                    ledger.publish_if_done(scheduler);
                }
                record_completion(status, verdict, task, attempt, counters, now);
                verdict
            }
            Err((verdict, error)) => {
                record_failure(status, verdict, task, attempt, &error, now);
                verdict
            }
        },
        TaskOutcome::Failed { error, record } => {
            let error = excerpt(&error, MAX_ERROR_CHARS);
            let record = record.map(|mut record| {
                record.preview.truncate(crate::skipping::PREVIEW_BYTES);
                record
            });
            tracing::warn!(%task, attempt, %worker, "attempt failed: {error}");
            let verdict = scheduler.fail_on_record(task, attempt, &error, record);
            record_failure(status, verdict, task, attempt, &error, now);
            verdict
        }
        TaskOutcome::MapOutputLost { map_task, error } => {
            let error = excerpt(&error, MAX_ERROR_CHARS);
            let confirms = coordinator_sees_output_lost(scheduler, task, map_task);
            let (verdict, lost) = scheduler.map_output_lost(task, attempt, map_task, &error, confirms, now);
            record_lost_output(status, verdict, lost, (task, attempt), map_task, &error, now);
            verdict
        }
    };
    match verdict {
        ReportVerdict::Accepted => tracing::debug!(%task, attempt, %worker, "report accepted"),
        ReportVerdict::AlreadyDone => tracing::info!(%task, attempt, %worker, "late report for a finished task ignored"),
        ReportVerdict::UnknownAttempt => tracing::debug!(%task, attempt, %worker, "report for an unknown attempt ignored"),
    }
    verdict
}

/// Whether the coordinator sees for itself that map task `map_task`'s run
/// for reduce `task` is gone: it lies in the job directory, and is missing
/// or short there. (A run only its worker serves it cannot check.)
fn coordinator_sees_output_lost(scheduler: &Scheduler, task: TaskId, map_task: u32) -> bool {
    let TaskId::Reduce(r) = task else { return false };
    scheduler.map_runs(map_task).iter().any(|(p, location)| *p == r && !location.only_served() && !run_is_present(location))
}

/// Records what a reduce's report that it could not read a map's output
/// came to, in the status and the log.
fn record_lost_output(
    status: &mut JobStatus,
    verdict: ReportVerdict,
    lost: Option<LostOutput>,
    (task, attempt): (TaskId, AttemptId),
    map_task: u32,
    error: &str,
    now: Instant,
) {
    let map = TaskId::Map(map_task);
    match lost {
        Some(LostOutput::Rerun { counted }) => {
            let counts = if counted { "counted against it" } else { "its worker is gone" };
            tracing::warn!(%task, attempt, "{map}'s output is unreadable, re-running it ({counts}): {error}");
            status.map_output_lost(task, attempt, map_task, error, now);
        }
        Some(LostOutput::NotConfirmed { reduce_counted }) => {
            let then = if reduce_counted { "the reduce attempt counts as failed" } else { "the reduce runs again" };
            tracing::warn!(%task, attempt, "could not read {map}'s output, which is not confirmed lost; {then}: {error}");
            status.attempt_failed(task, attempt, &format!("could not read {map}'s output: {error}"), now);
        }
        Some(LostOutput::AlreadyRerunning) => status.attempt_failed(task, attempt, &format!("{map} is running again: {error}"), now),
        None => record_failure(status, verdict, task, attempt, error, now),
    }
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

/// Renames a reduce attempt's staged output to `mr-out-<r>` in the job
/// directory if the attempt wins, then marks the task done. A failed rename
/// fails the attempt: `Err` carries the scheduler's verdict on that failure
/// and the error. Only the winner is ever renamed, and the rename happens
/// under the scheduler lock, so a finished output is never replaced.
fn commit_reduce(
    scheduler: &mut Scheduler,
    job_dir: &JobDir,
    task: TaskId,
    attempt: u64,
    now: Instant,
) -> Result<ReportVerdict, (ReportVerdict, String)> {
    let TaskId::Reduce(r) = task else { return Ok(ReportVerdict::UnknownAttempt) };
    let verdict = scheduler.would_accept_completion(task, attempt);
    if verdict != ReportVerdict::Accepted {
        return Ok(verdict);
    }
    let staged = scheduler.staged_output(r, attempt);
    let dest = job_dir.finished_output(r);
    match std::fs::rename(&staged, &dest) {
        Ok(()) => Ok(scheduler.complete(task, attempt, Vec::new(), now)),
        Err(e) => {
            let error = format!("committing {} to {}: {e}", staged.display(), dest.display());
            tracing::warn!(%task, attempt, "{error}");
            Err((scheduler.fail(task, attempt, &error), error))
        }
    }
}
