//! The worker process's loop: ask for a task, run it, report, repeat.
//!
//! [`run`] connects to the coordinator (retrying until the connect timeout,
//! since workers are often started before or alongside the master), then
//! pulls tasks until told to exit, in as many slots (concurrent task loops
//! sharing one connection) as configured. Each slot runs its attempts in a
//! task process of its own ([`crate::task_process`]), which loads the app
//! once and keeps what a task leaves for the next (its input buffer, the
//! table behind `Emitter::count`, tens of MiB for a large vocabulary); an
//! attempt given up, or one that hangs or crashes, costs that process, never
//! the slot or the worker. The slot's own thread starts and watches it, off
//! the RPC runtime. Beside the slots, a heartbeat loop tells the coordinator
//! every [`JobSpec::heartbeat_interval`](crate::rpc::JobSpec) that this
//! process is alive and how far each running attempt has got.
//!
//! A coordinator that goes away mid-job may be restarted (it resumes the
//! job from its journal), so a broken connection is not the end: the loops
//! share one [`MasterLink`], and the first loop whose call fails reconnects
//! for up to [`WorkerConfig::reconnect_timeout`], checking that the
//! coordinator it finds runs the same job (its id), while the others wait
//! for it. Attempts keep running meanwhile; their reports go to the new
//! coordinator, which takes a completion from before its restart.
//!
//! Shutdown: the worker stops at the first end any of its loops learns: a
//! slot told `Exit` by `request_task`, the heartbeat told `Exit` (the job
//! ended while every slot was busy with an attempt that no longer matters),
//! or the coordinator gone for good (not back within the reconnect
//! timeout, or back with another job). The coordinator tells every
//! connected worker how the job ended before it exits, so finding it gone
//! means it vanished mid-job: that is an error, not a normal end. Attempts
//! still running end with their task processes, which the kernel kills
//! when the worker exits; the work directory ([`crate::work_dir`]) goes
//! too, and one left by a worker that was killed is removed by the next
//! worker that starts with the same base.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tarpc::client::{self, RpcError};
use tarpc::context;
use tarpc::tokio_serde::formats::Bincode;
use tokio::sync::mpsc;

use crate::files::Fetcher;
use crate::handshake::{self, HandshakeError, Identity, Secret};
use crate::journal::Journal;
use crate::plugin::{file_sha256, Plugin};
use crate::storage::{ServedOutputs, StorageConfig, WorkerStorage};
use crate::work_dir::WorkDir;
use tracing::Instrument;

use crate::rpc::{
    Assignment, AttemptId, AttemptProgress, CoordinatorClient, HeartbeatReply, JobEnd, TaskId, TaskOutcome, TaskReport, WorkerId, CALL_DEADLINE,
};
use crate::skipping::read_cursor;
use crate::task::TaskProgress;
use crate::task_process::{AttemptEnd, TaskCommand, TaskProcess};
use crate::task_protocol::{ChildAttempt, ChildStart, ChildStorage, PROTOCOL_VERSION};

/// Pause between connection attempts while the coordinator is not up yet.
const CONNECT_RETRY: Duration = Duration::from_millis(100);

/// How long a worker that is done waits for its task processes to end:
/// a running attempt's, cancelled, within the kill grace.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// What a worker needs to run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The coordinator's `HOST:PORT`.
    pub master: String,
    /// How long to keep trying to reach the coordinator at start-up.
    pub connect_timeout: Duration,
    /// How long to keep trying to reach the coordinator again when the
    /// connection breaks mid-job (a restarted coordinator resumes the job);
    /// zero gives up at once.
    pub reconnect_timeout: Duration,
    /// Tasks this process runs at once (at least 1).
    pub slots: usize,
    /// The job's shared secret, to prove in each connection's handshake.
    pub secret: Option<Secret>,
    /// The file the secret was read from: task processes read it again
    /// (the secret is never passed on).
    pub token_file: Option<PathBuf>,
    /// How to start a slot's task process (this executable with
    /// `--task-process`).
    pub task_command: TaskCommand,
    /// Where to make this worker's work directory (a fresh directory in
    /// it, removed at exit; those of dead workers there are removed at
    /// start); `None` for the system's temporary directory.
    pub work_dir: Option<PathBuf>,
    /// Where this worker's file server listens (`HOST:PORT`); `None` for
    /// a free port on the address this worker reaches the coordinator from.
    pub serve_on: Option<String>,
    /// Whether to use the coordinator's job directory when it is visible
    /// here; `false` acts as if no filesystem were shared.
    pub use_shared_dir: bool,
    /// Bytes of runs one reduce attempt may fetch into memory from other
    /// workers; it fetches the rest into the work directory.
    pub fetch_memory: u64,
}

/// How a worker's run ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// The coordinator said the job is done.
    JobDone,
}

/// Why a worker stopped abnormally.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named by their messages
pub enum WorkerError {
    /// No coordinator answered within the connect timeout.
    #[error("could not reach the coordinator at {master} within {} s: {last_error}", .timeout.as_secs_f64())]
    Unreachable { master: String, timeout: Duration, last_error: String },
    /// The coordinator stopped the job because a task could not succeed.
    #[error("the coordinator stopped the job: {0}")]
    JobFailed(String),
    /// The coordinator went away without saying the job was over, and did
    /// not come back (with the same job) within the reconnect timeout.
    #[error("lost the coordinator at {master} before the job ended: {error}")]
    CoordinatorLost { master: String, error: String },
    /// The coordinator's handshake refused this worker, or this worker
    /// would not trust the coordinator (see [`crate::handshake`]).
    #[error("the coordinator at {master} and this worker do not agree: {error}")]
    Refused { master: String, error: HandshakeError },
    /// The operating system would not start a slot's thread.
    #[error("cannot start a slot thread: {0}")]
    Thread(std::io::Error),
    /// The work directory or the file server could not be set up, or the
    /// job's app could not be fetched or loaded.
    #[error("{0}")]
    Setup(String),
    /// The coordinator refused this worker's app: the job's is another.
    #[error("the coordinator at {master} refused this worker: {why}")]
    AppRefused { master: String, why: String },
    /// Started without an app, for a job that names none.
    #[error("the job at {master} names no app: give this worker APP, or start mr-master with --app")]
    NoApp { master: String },
}

impl WorkerError {
    /// The process exit status for this error: 3 when the job failed, 4
    /// when the coordinator vanished mid-job, 1 when the worker could not
    /// start (2 is a usage error, from the flag parser).
    pub fn exit_code(&self) -> u8 {
        match self {
            WorkerError::JobFailed(_) => 3,
            WorkerError::CoordinatorLost { .. } => 4,
            WorkerError::Unreachable { .. }
            | WorkerError::Refused { .. }
            | WorkerError::Thread(_)
            | WorkerError::Setup(_)
            | WorkerError::AppRefused { .. }
            | WorkerError::NoApp { .. } => 1,
        }
    }
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

/// How one of a worker's loops (a slot, the heartbeat) saw the job end.
type LoopEnd = Result<WorkerExit, WorkerError>;

/// Where a worker's app comes from.
pub enum AppSource {
    /// The plugin given on the command line (`mr-worker APP`).
    Given(Arc<Plugin>),
    /// The job's, fetched from the coordinator (`mr-worker` without APP,
    /// for a job started with `mr-master --app`).
    FromJob,
}

/// Runs tasks from the coordinator with the app from `app` until the job ends.
pub async fn run(app: AppSource, config: WorkerConfig) -> Result<WorkerExit, WorkerError> {
    let identity = Identity::new(worker_id());
    let app_sha256 = match &app {
        AppSource::Given(plugin) => {
            Some(file_sha256(plugin.path()).map_err(|e| WorkerError::Setup(format!("reading the app {}: {e}", plugin.path().display())))?)
        }
        AppSource::FromJob => None,
    };
    let (client, local) = connect(&config, &identity).await?;
    let id = identity.name.clone();
    let lost = |e: RpcError| WorkerError::CoordinatorLost { master: config.master.clone(), error: e.to_string() };
    let spec = client
        .job(call_context(), app_sha256.clone())
        .await
        .map_err(lost)?
        .map_err(|why| WorkerError::AppRefused { master: config.master.clone(), why })?;
    let (storage, work_dir, child_storage) = set_up_storage(&config, &spec, &identity, local).await?;
    let plugin = match app {
        AppSource::Given(plugin) => plugin,
        AppSource::FromJob => {
            let job_app = spec.app.as_ref().ok_or_else(|| WorkerError::NoApp { master: config.master.clone() })?;
            Arc::new(storage.fetch_app(job_app).await.map_err(WorkerError::Setup)?)
        }
    };
    tracing::info!(worker = %id, master = %config.master, app = plugin.name(), "connected");
    let start = ChildStart {
        version: PROTOCOL_VERSION,
        slot: 0,
        job: spec.clone(),
        plugin: plugin.path().to_owned(),
        identity_name: identity.name.clone(),
        identity_incarnation: identity.incarnation,
        token_file: config.token_file.clone(),
        tls: config.secret.as_ref().is_none_or(Secret::encrypts),
        storage: child_storage,
    };
    let link = Arc::new(MasterLink::new(client, &config, identity, spec.job_id.clone(), app_sha256));
    let interval = spec.heartbeat_interval;
    let slots: Arc<[SlotActivity]> = (0..config.slots.max(1)).map(|_| SlotActivity::default()).collect();
    let (end_tx, mut end_rx) = mpsc::unbounded_channel::<LoopEnd>();
    // Spawned tasks do not inherit the caller's span (`worker{id=...}`): pass it on.
    {
        let (link, slots, end_tx) = (link.clone(), slots.clone(), end_tx.clone());
        tokio::spawn(
            async move {
                let _ = end_tx.send(send_heartbeats(&link, &slots, interval).await);
            }
            .instrument(tracing::Span::current()),
        );
    }
    let mut stoppers = Vec::new();
    for slot in 0..slots.len() {
        // Each task process makes the app itself, while its slot asks for work.
        let process = TaskProcess::new(config.task_command.clone(), ChildStart { slot, ..start.clone() });
        let thread = SlotThread::spawn(slot, process).map_err(WorkerError::Thread)?;
        stoppers.push(thread.stopper());
        let (link, storage, slots, end_tx) = (link.clone(), storage.clone(), slots.clone(), end_tx.clone());
        tokio::spawn(
            async move {
                let _ = end_tx.send(run_slot(&thread, &link, &storage, &slots[slot]).await);
            }
            .instrument(tracing::Span::current()),
        );
    }
    drop(end_tx);
    // The first end any loop learns is the worker's. A slot that finished
    // its part while others still run sends nothing.
    let end = end_rx.recv().await.expect("the heartbeat loop runs until it sees the end");
    stop_task_processes(&slots, stoppers).await;
    drop(work_dir);
    end
}

/// Ends the slots' task processes and reaps them (their CPU time counts as
/// the worker's): running attempts are cancelled, so that each slot thread
/// is free within the kill grace. One that is not by [`SHUTDOWN_WAIT`] is
/// left to the kernel, which kills it as the worker exits.
async fn stop_task_processes(slots: &[SlotActivity], stoppers: Vec<SlotStopper>) {
    for slot in slots {
        slot.cancel();
    }
    let stopped = futures::future::join_all(stoppers.into_iter().map(SlotStopper::stop));
    if tokio::time::timeout(SHUTDOWN_WAIT, stopped).await.is_err() {
        tracing::warn!("task processes still running after {} s; leaving them to exit with the worker", SHUTDOWN_WAIT.as_secs_f64());
    }
}

/// Makes the work directory, starts the file server, and decides whether
/// this worker shares the coordinator's job directory (it finds the job's
/// journal there). `local` is this end of the connection to the
/// coordinator: the address other workers reach this one at, presumably.
/// The work directory lives as long as the returned guard. Also returns
/// the storage's settings, for the task processes.
async fn set_up_storage(
    config: &WorkerConfig,
    spec: &crate::rpc::JobSpec,
    identity: &Identity,
    local: SocketAddr,
) -> Result<(Arc<WorkerStorage>, WorkDir, ChildStorage), WorkerError> {
    let setup = |what: &str, e: std::io::Error| WorkerError::Setup(format!("{what}: {e}"));
    let base = config.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let (work_dir, _) = WorkDir::create(&base).map_err(|e| setup(&format!("cannot make a work directory in {}", base.display()), e))?;
    let serve_on = config.serve_on.clone().unwrap_or_else(|| SocketAddr::new(local.ip(), 0).to_string());
    let listener = tokio::net::TcpListener::bind(&serve_on).await.map_err(|e| setup(&format!("cannot serve files on {serve_on}"), e))?;
    let bound = listener.local_addr().map_err(|e| setup("reading the file server's address", e))?;
    // Listening on every address: others reach it where they reach us.
    let server = if bound.ip().is_unspecified() { SocketAddr::new(local.ip(), bound.port()) } else { bound };
    let served = Arc::new(ServedOutputs::default());
    tokio::spawn(crate::files::run_server(listener, config.secret.clone(), served.clone()));
    let journal = spec.job_dir.join(crate::job_dir::JOURNAL);
    let shared = config.use_shared_dir && Journal::job_id_at(&journal).as_deref() == Some(spec.job_id.as_str());
    tracing::info!(
        work_dir = %work_dir.path().display(),
        files = %server,
        "{}",
        if shared { "sharing the job directory with the coordinator" } else { "not sharing the job directory: map output is served from here" }
    );
    let child = ChildStorage {
        work_dir: work_dir.path().to_owned(),
        shared_job_dir: shared.then(|| spec.job_dir.clone()),
        server: server.to_string(),
        // Two heartbeats: at most half the task timeout.
        run_stall_limit: spec.heartbeat_interval * 2,
        master: config.master.clone(),
        fetch_memory: config.fetch_memory,
    };
    let storage = WorkerStorage::new(StorageConfig {
        work_dir: child.work_dir.clone(),
        shared_job_dir: child.shared_job_dir.clone(),
        server: child.server.clone(),
        served,
        fetcher: Fetcher::new(config.secret.clone(), identity.clone()),
        run_stall_limit: child.run_stall_limit,
        master: config.master.clone(),
        inputs: spec.inputs.clone(),
        fetch_memory: config.fetch_memory,
        runtime: tokio::runtime::Handle::current(),
    });
    Ok((Arc::new(storage), work_dir, child))
}

/// What one slot is running, for the heartbeat.
#[derive(Debug, Default)]
struct SlotActivity {
    current: Mutex<Option<(TaskId, AttemptId, TaskProgress)>>,
}

impl SlotActivity {
    fn start(&self, task: TaskId, attempt: AttemptId) -> TaskProgress {
        let progress = TaskProgress::default();
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((task, attempt, progress.clone()));
        progress
    }

    /// The attempt ended; returns whether it had been cancelled.
    fn finish(&self) -> bool {
        let ended = self.current.lock().unwrap_or_else(|p| p.into_inner()).take();
        ended.is_some_and(|(_, _, progress)| progress.is_cancelled())
    }

    /// Cancels the slot's attempt, if it runs one: the job is over.
    fn cancel(&self) {
        if let Some((_, _, progress)) = self.current.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            progress.cancel();
        }
    }

    /// Cancels the slot's attempt if it is one of `attempts`.
    fn cancel_if(&self, attempts: &[AttemptId]) {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((task, attempt, progress)) = current.as_ref() {
            if attempts.contains(attempt) && !progress.is_cancelled() {
                tracing::info!(%task, attempt, "stopping the attempt: the coordinator no longer needs it");
                progress.cancel();
            }
        }
    }

    fn snapshot(&self) -> Option<AttemptProgress> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.as_ref().map(|(task, attempt, progress)| AttemptProgress { task: *task, attempt: *attempt, units: progress.units() })
    }
}

/// Sends a heartbeat every `interval` until the coordinator says the job is
/// over or is gone for good.
async fn send_heartbeats(link: &MasterLink, slots: &[SlotActivity], interval: Duration) -> LoopEnd {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let running: Vec<AttemptProgress> = slots.iter().filter_map(SlotActivity::snapshot).collect();
        tracing::trace!(?running, "heartbeat");
        let heartbeat = |client: CoordinatorClient| {
            let running = running.clone();
            async move { client.heartbeat(call_context(), running).await }
        };
        match link.call(heartbeat).await? {
            HeartbeatReply::Continue => {}
            HeartbeatReply::Abandon(attempts) => {
                for slot in slots {
                    slot.cancel_if(&attempts);
                }
            }
            HeartbeatReply::Exit(end) => return job_end(end),
        }
    }
}

fn job_end(end: JobEnd) -> LoopEnd {
    match end {
        JobEnd::Succeeded => Ok(WorkerExit::JobDone),
        JobEnd::Failed(message) => Err(WorkerError::JobFailed(message)),
    }
}

/// One task slot: asks for a task, runs it on the slot's task process,
/// reports, until the job ends.
async fn run_slot(thread: &SlotThread, link: &Arc<MasterLink>, storage: &WorkerStorage, activity: &SlotActivity) -> LoopEnd {
    loop {
        let request = |client: CoordinatorClient| async move { client.request_task(call_context()).await };
        let assignment = link.call(request).await?;
        // Each attempt's files go where this worker's storage puts them;
        // its cursor, if it tracks records, is read here if it fails.
        let (task_id, cursor, attempt) = match assignment {
            Assignment::Wait => continue,
            Assignment::Exit(end) => return job_end(end),
            Assignment::Map(mut task) => {
                storage.adapt_map(&mut task);
                (TaskId::Map(task.index), task.skip.as_ref().map(|plan| plan.cursor.clone()), ChildAttempt::Map(task))
            }
            Assignment::Reduce(mut task) => {
                storage.adapt_reduce(&mut task);
                let local_outputs = storage.local_outputs(&task.runs);
                (TaskId::Reduce(task.partition), task.skip.as_ref().map(|plan| plan.cursor.clone()), ChildAttempt::Reduce { task, local_outputs })
            }
        };
        let attempt_id = attempt.attempt();
        let progress = activity.start(task_id, attempt_id);
        let outcome = run_on(thread, storage, task_id, attempt, progress).await;
        let outcome = match outcome {
            TaskOutcome::Failed { error, record } => {
                TaskOutcome::Failed { error, record: record.or_else(|| cursor.as_deref().and_then(read_cursor)) }
            }
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
            continue;
        }
        // Reports are idempotent: one whose answer was late is sent again.
        let send_report = move |client: CoordinatorClient| {
            let report = report.clone();
            async move { client.report_task(context_with(CALL_DEADLINE), report).await }
        };
        link.call(send_report).await?;
    }
}

/// The connection to the coordinator, shared by a worker's loops and made
/// again when it breaks (see the module docs).
struct MasterLink {
    master: String,
    secret: Option<Secret>,
    /// This process, as every connection's handshake names it.
    identity: Identity,
    /// The job this worker works for: a coordinator found on reconnecting
    /// must run the same one.
    job_id: String,
    /// The SHA-256 of this worker's own plugin, if it was given one.
    app_sha256: Option<String>,
    reconnect_timeout: Duration,
    /// Held while reconnecting, so that one loop reconnects and the others
    /// wait for it.
    current: tokio::sync::Mutex<LinkState>,
}

struct LinkState {
    client: CoordinatorClient,
    /// Counts reconnections: a loop whose call failed on an older client
    /// than the current one just tries again.
    generation: u64,
    /// Set once the coordinator is gone for good: every call fails at once.
    gone: Option<String>,
}

impl MasterLink {
    fn new(client: CoordinatorClient, config: &WorkerConfig, identity: Identity, job_id: String, app_sha256: Option<String>) -> MasterLink {
        MasterLink {
            app_sha256,
            master: config.master.clone(),
            secret: config.secret.clone(),
            identity,
            job_id,
            reconnect_timeout: config.reconnect_timeout,
            current: tokio::sync::Mutex::new(LinkState { client, generation: 0, gone: None }),
        }
    }

    /// Makes a call with `call` on the current connection. A call whose
    /// answer is late is made again; one that fails because the connection
    /// broke is made again once reconnected. Fails only when the
    /// coordinator is gone for good.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, WorkerError>
    where
        F: Fn(CoordinatorClient) -> Fut,
        Fut: Future<Output = Result<T, RpcError>>,
    {
        loop {
            let (client, generation) = {
                let state = self.current.lock().await;
                if let Some(error) = &state.gone {
                    return Err(self.lost(error.clone()));
                }
                (state.client.clone(), state.generation)
            };
            match call(client).await {
                Ok(answer) => return Ok(answer),
                // A coordinator too busy to answer in time is still there.
                Err(RpcError::DeadlineExceeded) => tracing::debug!("a call went unanswered; making it again"),
                Err(e) => self.reconnect(generation, e.to_string()).await?,
            }
        }
    }

    /// Replaces the connection of `generation`, which broke with `error`,
    /// unless another loop did already.
    async fn reconnect(&self, generation: u64, error: String) -> Result<(), WorkerError> {
        let mut state = self.current.lock().await;
        if state.generation != generation || state.gone.is_some() {
            return Ok(());
        }
        let gone = |state: &mut LinkState, why: String| {
            state.gone = Some(why.clone());
            Err(self.lost(why))
        };
        if self.reconnect_timeout.is_zero() {
            return gone(&mut state, error);
        }
        tracing::warn!("lost the coordinator at {}: {error}; trying to reconnect for {} s", self.master, self.reconnect_timeout.as_secs_f64());
        let give_up = Instant::now() + self.reconnect_timeout;
        let mut last_error;
        loop {
            match self.connect_to_same_job().await {
                Ok(client) => {
                    tracing::info!("reconnected to the coordinator at {}", self.master);
                    state.client = client;
                    state.generation += 1;
                    return Ok(());
                }
                Err(Reconnect::OtherJob(other)) => {
                    return gone(&mut state, format!("{error}; the coordinator there now runs another job ({other}, not {})", self.job_id));
                }
                Err(Reconnect::Refused(refusal)) => {
                    return gone(&mut state, format!("{error}; the coordinator there now refuses this worker: {refusal}"))
                }
                Err(Reconnect::AppRefused(why)) => return gone(&mut state, format!("{error}; the coordinator there now refuses this worker: {why}")),
                Err(Reconnect::Failed(e)) => last_error = e,
            }
            if Instant::now() + CONNECT_RETRY >= give_up {
                let waited = self.reconnect_timeout.as_secs_f64();
                return gone(&mut state, format!("{error}; it did not come back within {waited} s (last try: {last_error})"));
            }
            tokio::time::sleep(CONNECT_RETRY).await;
        }
    }

    /// One try at a new connection to a coordinator running this job.
    async fn connect_to_same_job(&self) -> Result<CoordinatorClient, Reconnect> {
        let (client, _) = open_connection(&self.master, self.secret.as_ref(), &self.identity).await.map_err(|e| match e {
            ConnectError::Network(e) => Reconnect::Failed(e),
            ConnectError::Refused(e) => Reconnect::Refused(e),
        })?;
        let spec = client
            .job(call_context(), self.app_sha256.clone())
            .await
            .map_err(|e| Reconnect::Failed(e.to_string()))?
            .map_err(Reconnect::AppRefused)?;
        if spec.job_id != self.job_id {
            return Err(Reconnect::OtherJob(spec.job_id));
        }
        Ok(client)
    }

    fn lost(&self, error: String) -> WorkerError {
        WorkerError::CoordinatorLost { master: self.master.clone(), error }
    }
}

/// Why a try at reconnecting did not give a connection.
enum Reconnect {
    /// No answer (yet): try again until the timeout.
    Failed(String),
    /// A coordinator answered, running the job with this id.
    OtherJob(String),
    /// A coordinator answered and refused this worker.
    Refused(HandshakeError),
    /// A coordinator answered and refused this worker's app.
    AppRefused(String),
}

/// A slot's own thread, which owns the slot's task process and runs its
/// attempts one after another. It lives as long as the slot: the kernel
/// kills the task process when the thread that started it ends.
struct SlotThread {
    jobs: std::sync::mpsc::Sender<SlotJob>,
}

/// Something for a slot's thread to do with its task process.
type SlotJob = Box<dyn FnOnce(&mut TaskProcess) + Send>;

/// What a job on a slot thread panicked with.
type Panic = Box<dyn std::any::Any + Send>;

impl SlotThread {
    /// Starts slot `slot`'s thread, which starts `process` at once (it
    /// makes the app while the slot waits for its first task).
    fn spawn(slot: usize, mut process: TaskProcess) -> std::io::Result<SlotThread> {
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
    fn stopper(&self) -> SlotStopper {
        SlotStopper { jobs: self.jobs.clone() }
    }

    /// Runs `f` on the thread and waits for it; a panic is caught there
    /// (the thread lives on) and returned.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce(&mut TaskProcess) -> T + Send + 'static) -> Result<T, Panic> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job = move |process: &mut TaskProcess| {
            let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(process))));
        };
        self.jobs.send(Box::new(job)).expect("a slot's thread runs until the slot ends");
        result.await.expect("a slot's thread answers every job")
    }
}

/// Ends a slot's task process, after the attempt the slot runs, if any.
struct SlotStopper {
    jobs: std::sync::mpsc::Sender<SlotJob>,
}

impl SlotStopper {
    async fn stop(self) {
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

fn call_context() -> context::Context {
    context_with(CALL_DEADLINE)
}

fn context_with(deadline: Duration) -> context::Context {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + deadline;
    ctx
}

/// Connects to the coordinator, retrying until `connect_timeout`; a
/// coordinator that refuses this worker is not asked again.
async fn connect(config: &WorkerConfig, identity: &Identity) -> Result<(CoordinatorClient, SocketAddr), WorkerError> {
    let give_up = Instant::now() + config.connect_timeout;
    loop {
        match open_connection(&config.master, config.secret.as_ref(), identity).await {
            Ok(client) => return Ok(client),
            Err(ConnectError::Refused(error)) => return Err(WorkerError::Refused { master: config.master.clone(), error }),
            Err(ConnectError::Network(e)) if Instant::now() + CONNECT_RETRY < give_up => {
                tracing::debug!("coordinator at {} not reachable yet: {e}", config.master);
                tokio::time::sleep(CONNECT_RETRY).await;
            }
            Err(ConnectError::Network(last_error)) => {
                return Err(WorkerError::Unreachable { master: config.master.clone(), timeout: config.connect_timeout, last_error })
            }
        }
    }
}

/// Why one try at connecting gave no client.
enum ConnectError {
    /// The network failed: worth trying again.
    Network(String),
    /// The handshake ended in a refusal, on either side: it would again.
    Refused(HandshakeError),
}

/// One try at a connection to the coordinator at `master`: TCP, then the
/// handshake and the service byte, then the RPC client on it. Returns the
/// client and this end's address.
async fn open_connection(master: &str, secret: Option<&Secret>, identity: &Identity) -> Result<(CoordinatorClient, SocketAddr), ConnectError> {
    let stream = handshake::dial(master, secret, identity, crate::files::SERVICE_RPC, None).await.map_err(|e| match e.is_transient() {
        true => ConnectError::Network(e.to_string()),
        false => ConnectError::Refused(e),
    })?;
    let local = stream.local_addr().map_err(|e| ConnectError::Network(e.to_string()))?;
    let transport = tarpc::serde_transport::Transport::from((stream, Bincode::default()));
    Ok((CoordinatorClient::new(client::Config::default(), transport).spawn(), local))
}
