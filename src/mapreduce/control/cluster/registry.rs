//! The standing cluster's state and the jobs' lives: the jobs (queued in
//! the [`Queue`], running in an engine each, all of them in the
//! [`History`]), and the long-lived [`Workers`]. The listener and the API
//! handlers ([`super::server`]) call in here; nothing here reads a socket.
//! Which job a free slot serves, and the workers' comings and goings, are
//! [`super::lending`]'s; what the API shows of jobs and workers is
//! [`super::views`]'.
//!
//! A job's life: [`Cluster::submit`] admits it ([`super::admission`]),
//! records it in the history (which gives its id) and queues it; when the
//! queue lets it start, its engine is planned ([`Job::plan`]: its job
//! directory, its journal) and run with no listener of its own
//! ([`Job::run_without_listener`]), reached through its [`JobHandle`]; when
//! the engine ends, its outcome and summary go to the history and the next
//! queued job may start. A cancelled running job is stopped as failed
//! ([`JobHandle::cancel`]): its workers are told, and its job directory
//! removed (nothing of it is published). A cluster stopped by a signal stops its engines the same way
//! but keeps their job directories and their `running` state in the
//! history: a restart plans them again, and each resumes from its journal
//! ([`Cluster::open`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, Notify};
use tracing::Instrument;

use crate::cluster::admission::{self, Admitted};
use crate::cluster::api::Submission;
use crate::cluster::history::{History, HistoryError, JobOutcome, JobState};
use crate::cluster::queue::{JobId, MaxRunning, Queue};
use crate::cluster::workers::{LoadLimits, Workers};
use crate::cluster::{job_logs, steps};
use crate::coordinator::{CoordinatorError, Job, JobHandle, JobReport, StatusHandle};
use crate::summary::JobSummary;

/// How the cluster is run (`mr-master --serve`'s flags).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Where the history (and its lock) live.
    pub state_dir: PathBuf,
    /// The most jobs of each level that run at once.
    pub max_running: MaxRunning,
    /// When a worker is too loaded for new tasks.
    pub load_limits: LoadLimits,
    /// How often long-lived workers send heartbeats; one silent for three
    /// of them is taken for gone.
    pub heartbeat_interval: Duration,
    /// Finished jobs kept in the history: the newest this many...
    pub keep_jobs: Option<usize>,
    /// ...and none that ended longer ago than this.
    pub keep_for: Option<Duration>,
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variants are named by their messages
pub enum ClusterError {
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("{0}")]
    Queue(#[from] crate::cluster::queue::QueueError),
    #[error("job {id} in the history cannot be read back: {why}")]
    BadSpec { id: u64, why: String },
}

/// The cluster: shared by the listener's connections.
pub struct Cluster {
    pub(super) config: ClusterConfig,
    state: Mutex<State>,
    /// Signalled when a job starts or ends or a worker joins: a held
    /// `next_job` looks again.
    pub(super) changed: Notify,
    /// Where engines run: [`Cluster::start_ready`] may be called from a
    /// blocking thread.
    runtime: tokio::runtime::Handle,
}

pub(super) struct State {
    pub(super) history: History,
    pub(super) queue: Queue,
    pub(super) workers: Workers,
    /// Queued and running jobs: what they were submitted with.
    pub(super) unfinished: HashMap<JobId, Unfinished>,
    /// Free slots sent to a job that have not had their task yet (see
    /// [`super::lending`]).
    pub(super) offers: HashMap<JobId, crate::cluster::lending::Offers>,
    /// The API connection each joined worker joined on, by a serial number:
    /// an old connection's close does not remove a worker that joined
    /// again on a new one.
    pub(super) joined_on: HashMap<String, u64>,
    /// Jobs whose end is recorded while their engines still tell their
    /// workers: their routes stay open until the engines return.
    pub(super) finishing: HashMap<JobId, JobHandle>,
}

/// A job that has not ended.
pub(super) struct Unfinished {
    pub(super) admitted: Admitted,
    /// Its engine, once it runs.
    pub(super) engine: Option<Engine>,
    /// The history has it running already (a restart resumes it).
    started_before: bool,
}

/// A running job's engine, as the cluster holds it.
pub(super) struct Engine {
    pub(super) handle: JobHandle,
    /// Fired to stop it: a cancel, or the cluster stopping.
    stop: Option<oneshot::Sender<()>>,
    /// Stopped by a cancel (not by the cluster stopping).
    cancelled: bool,
}

impl Engine {
    /// Whether it is still to be given work (not stopping).
    pub(super) fn serving(&self) -> bool {
        self.stop.is_some() && !self.cancelled
    }
}

impl Cluster {
    /// Opens the state directory (locked for this process), and takes up
    /// the jobs its history has unfinished: running ones resume from their
    /// journals, queued ones stay queued. One that cannot be taken up (its
    /// app or an input gone, its spec unreadable) is recorded failed. Runs
    /// no job yet: see [`Cluster::start_ready`]. Call it inside the Tokio
    /// runtime the engines are to run on.
    pub fn open(config: ClusterConfig) -> Result<Arc<Cluster>, ClusterError> {
        let history = History::open(&config.state_dir)?;
        let mut queue = Queue::new(config.max_running)?;
        let mut unfinished = HashMap::new();
        let mut failed = Vec::new();
        for record in history.unfinished()? {
            let id = JobId(record.id);
            let readmitted =
                serde_json::from_str::<Admitted>(&record.spec_json).map_err(|e| format!("its spec cannot be read: {e}")).and_then(admission::readmit);
            match readmitted {
                Ok(admitted) => {
                    let submission = &admitted.submission;
                    if admitted.waits_for.is_empty() {
                        queue.submit(id, submission.priority, submission.weight, submission.requires.clone())?;
                    }
                    tracing::info!(job = %id, "taken up again ({})", record.state);
                    unfinished.insert(id, Unfinished { admitted, engine: None, started_before: record.state == JobState::Running });
                }
                Err(why) => failed.push((id, why)),
            }
        }
        let cluster = Arc::new(Cluster {
            state: Mutex::new(State {
                history,
                queue,
                workers: Workers::new(config.load_limits),
                unfinished,
                offers: HashMap::new(),
                joined_on: HashMap::new(),
                finishing: HashMap::new(),
            }),
            config,
            changed: Notify::new(),
            runtime: tokio::runtime::Handle::current(),
        });
        for (id, why) in failed {
            tracing::warn!(job = %id, "cannot be taken up again: {why}");
            cluster.record_end(&mut cluster.state(), id, ended(JobState::Failed, Some(format!("after a restart: {why}")), None));
        }
        cluster.settle_ended_inputs();
        cluster.prune();
        Ok(cluster)
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The interval long-lived workers send heartbeats at.
    pub fn heartbeat_interval(&self) -> Duration {
        self.config.heartbeat_interval
    }

    /// Admits and queues a job; its id, or why it was refused. Blocks on
    /// the file system (admission, the history's commit, and planning the
    /// jobs that start).
    pub fn submit(self: &Arc<Self>, submission: Submission) -> Result<JobId, String> {
        let mut admitted = admission::admit(submission)?;
        let mut state = self.state();
        let holder = state.history.output_dir_holder(&admitted.output_dir).map_err(|e| e.to_string())?;
        admission::check_output_holder(&admitted.output_dir, holder.map(|(id, state)| (JobId(id), state)), admitted.submission.overwrite)?;
        admission::check_apart(&admitted.output_dir, state.unfinished.iter().map(|(id, job)| (*id, job.admitted.output_dir.as_path())))?;
        if let Some((id, _)) = state.finishing.iter().find(|(_, handle)| handle.output_dir() == admitted.output_dir) {
            return Err(format!("output directory {} is {id}'s, which is finishing: try again in a moment", admitted.output_dir.display()));
        }
        steps::check_not_over_inputs(&state, &admitted.output_dir)?;
        steps::check_not_reading_outputs(&state, &admitted.inputs)?;
        steps::take_input_jobs(&state.history, &mut admitted)?;
        let spec_json = serde_json::to_string(&admitted).map_err(|e| format!("encoding the job: {e}"))?;
        let submission = &admitted.submission;
        let id = JobId(
            state.history.submit(&spec_json, &admitted.output_dir, &submission.priority.to_string(), SystemTime::now()).map_err(|e| e.to_string())?,
        );
        let queued = match admitted.waits_for.is_empty() {
            true => state.queue.submit(id, submission.priority, submission.weight, submission.requires.clone()),
            false => Ok(()),
        };
        if let Err(e) = queued {
            // Cannot happen (a fresh id, a weight checked): keep the history true.
            self.record_end(&mut state, id, ended(JobState::Failed, Some(e.to_string()), None));
            return Err(e.to_string());
        }
        tracing::info!(job = %id, priority = %submission.priority, output_dir = %admitted.output_dir.display(), "submitted");
        if !admitted.waits_for.is_empty() {
            tracing::info!(job = %id, "waits for the outputs of {}", shown_ids(&admitted.waits_for));
        }
        state.unfinished.insert(id, Unfinished { admitted, engine: None, started_before: false });
        drop(state);
        self.start_ready();
        Ok(id)
    }

    /// Starts every queued job the queue lets run now, until none is left
    /// that may: plans its engine (outside the cluster's lock: planning
    /// reads the job's journal and may publish a job that was done) and
    /// spawns it on `runtime`. A job that cannot start is recorded failed,
    /// and its place goes to the next. Blocks on the file system: async
    /// callers run it on a blocking thread.
    pub fn start_ready(self: &Arc<Self>) {
        loop {
            let starting: Vec<(JobId, Admitted)> = {
                let mut state = self.state();
                let ids = state.queue.start_ready();
                ids.into_iter().filter_map(|id| state.unfinished.get(&id).map(|job| (id, job.admitted.clone()))).collect()
            };
            if starting.is_empty() {
                break;
            }
            for (id, admitted) in starting {
                let planned = plan(id, &admitted);
                let mut state = self.state();
                match planned.and_then(|engine| self.install(&mut state, id, engine)) {
                    Ok(()) => {}
                    Err(why) => {
                        tracing::warn!(job = %id, "cannot start: {why}");
                        self.record_end(&mut state, id, ended(JobState::Failed, Some(why), None));
                    }
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Spawns planned job `id`'s `engine`, unless the job was cancelled
    /// while it was planned.
    fn install(self: &Arc<Self>, state: &mut State, id: JobId, engine: Job) -> Result<(), String> {
        let Some(job) = state.unfinished.get_mut(&id) else {
            tracing::info!(job = %id, "cancelled while it was planned");
            return Ok(());
        };
        let handle = engine.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        job.engine = Some(Engine { handle: handle.clone(), stop: Some(stop), cancelled: false });
        if !std::mem::replace(&mut job.started_before, true) {
            state.history.started(id.0, SystemTime::now()).map_err(|e| e.to_string())?;
        }
        tracing::info!(job = %id, "started");
        let cluster = self.clone();
        let span = job_span(id);
        self.runtime.spawn(
            async move {
                let run = engine.run_without_listener(async move {
                    let _ = stopped.await;
                });
                tokio::pin!(run);
                // The end is recorded as soon as it is known (the next job
                // may start); the engine goes on telling its workers, its
                // routes open until it returns.
                let returned = tokio::select! {
                    result = &mut run => Some(result),
                    () = handle.wait_ended() => None,
                };
                let result = match returned {
                    Some(result) => result,
                    None => {
                        let (cluster, handle) = (cluster.clone(), handle.clone());
                        let _ = tokio::task::spawn_blocking(move || cluster.job_ended(id, &handle)).await;
                        run.await
                    }
                };
                let status = handle.status();
                let _ = tokio::task::spawn_blocking(move || cluster.engine_returned(id, &status, result)).await;
            }
            .instrument(span),
        );
        Ok(())
    }

    /// Job `id`'s end is known (its engine still tells its workers): records
    /// it from the engine's status, keeps its routes open until the engine
    /// returns, and lets the next job start.
    fn job_ended(self: &Arc<Self>, id: JobId, handle: &JobHandle) {
        let mut state = self.state();
        let Some(job) = state.unfinished.get(&id) else { return };
        let cancelled = job.engine.as_ref().is_some_and(|engine| engine.cancelled);
        let report = handle.status().report();
        let succeeded = report.job.state == crate::status::JobState::Succeeded;
        let outputs: Vec<PathBuf> = match succeeded {
            true => (0..report.progress.output_count())
                .map(|r| job.admitted.output_dir.join(job.admitted.submission.job.output_compression.output_file_name(r)))
                .collect(),
            false => Vec::new(),
        };
        let summary = Some(JobSummary::new(&report, &outputs));
        let outcome = match (succeeded, cancelled) {
            (true, _) => ended(JobState::Succeeded, None, summary),
            (false, true) => ended(JobState::Cancelled, Some(CANCELLED.into()), summary),
            (false, false) => ended(JobState::Failed, Some(report.job.error.clone().unwrap_or_default()), summary),
        };
        tracing::info!(job = %id, "{}", outcome.state);
        state.finishing.insert(id, handle.clone());
        self.record_end(&mut state, id, outcome);
        drop(state);
        self.prune();
        self.start_ready();
    }

    /// Job `id`'s engine returned `result`: its routes close. Its end is
    /// recorded if [`Cluster::job_ended`] did not (the engine stopped
    /// otherwise), unless the cluster itself stopped it (it resumes at the
    /// next start).
    fn engine_returned(self: &Arc<Self>, id: JobId, status: &StatusHandle, result: Result<JobReport, CoordinatorError>) {
        let mut state = self.state();
        if state.finishing.remove(&id).is_some() {
            return;
        }
        let cancelled = state.unfinished.get(&id).and_then(|job| job.engine.as_ref()).is_some_and(|engine| engine.cancelled);
        let outputs = result.as_ref().map(|report| report.outputs.clone()).unwrap_or_default();
        let summary = JobSummary::new(&status.report(), &outputs);
        let outcome = match result {
            Ok(_) => ended(JobState::Succeeded, None, Some(summary)),
            Err(CoordinatorError::JobFailed(_)) if cancelled => ended(JobState::Cancelled, Some(CANCELLED.into()), Some(summary)),
            Err(CoordinatorError::Interrupted) => {
                tracing::info!(job = %id, "stopped with the cluster; it resumes when the cluster starts again");
                if let Some(job) = state.unfinished.get_mut(&id) {
                    job.engine = None;
                }
                return;
            }
            Err(e) => ended(JobState::Failed, Some(e.to_string()), Some(summary)),
        };
        tracing::info!(job = %id, "{}", outcome.state);
        self.record_end(&mut state, id, outcome);
        drop(state);
        self.prune();
        self.start_ready();
    }

    /// Writes job `id`'s end to the history and forgets it; the jobs
    /// waiting for its outputs take them, or fail with it.
    fn record_end(&self, state: &mut State, id: JobId, outcome: JobOutcome) {
        // A chain of steps fails link by link: a worklist, not recursion,
        // however long the chain.
        let mut ending = vec![(id, outcome)];
        while let Some((id, outcome)) = ending.pop() {
            state.queue.remove(id);
            state.unfinished.remove(&id);
            let how = outcome.state;
            if let Err(e) = state.history.ended(id.0, outcome, SystemTime::now()) {
                tracing::error!(job = %id, "cannot record the job's end in the history: {e}");
            }
            for (waiting, why) in steps::settle_waiting(state, id, how) {
                ending.push((waiting, ended(JobState::Failed, Some(why), None)));
            }
        }
        self.changed.notify_waiters();
    }

    /// At a start: jobs that wait for input jobs that ended before the
    /// cluster stopped (between the end and the waiting job taking the
    /// outputs) take them now, or fail.
    fn settle_ended_inputs(&self) {
        let mut state = self.state();
        let waited: std::collections::BTreeSet<JobId> = state.unfinished.values().flat_map(|job| job.admitted.waits_for.clone()).collect();
        for id in waited {
            if state.unfinished.contains_key(&id) {
                continue;
            }
            let how = state.history.get(id.0).ok().flatten().map_or(JobState::Failed, |record| record.state);
            for (waiting, why) in steps::settle_waiting(&mut state, id, how) {
                self.record_end(&mut state, waiting, ended(JobState::Failed, Some(why), None));
            }
        }
    }

    /// Removes finished jobs from the history beyond what is kept, and
    /// their logs.
    fn prune(&self) {
        if self.config.keep_jobs.is_none() && self.config.keep_for.is_none() {
            return;
        }
        let mut state = self.state();
        match state.history.prune(self.config.keep_jobs, self.config.keep_for, SystemTime::now()) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!("pruned {n} finished job(s) from the history");
                job_logs::prune(&self.config.state_dir, |id| state.history.get(id.0).is_ok_and(|record| record.is_some()));
            }
            Err(e) => tracing::warn!("cannot prune the history: {e}"),
        }
    }

    /// Job `id`'s log lines (see [`job_logs::read`]).
    pub fn logs(&self, id: JobId, task: Option<&str>) -> Result<Vec<String>, String> {
        if self.state().history.get(id.0).map_err(|e| e.to_string())?.is_none() {
            return Err(format!("no job {id} (never submitted, or pruned)"));
        }
        job_logs::read(&self.config.state_dir, id, task).map_err(|e| format!("reading {id}'s log: {e}"))
    }

    /// Cancels job `id`: a queued one at once, a running one through its
    /// engine (its end is recorded when the engine returns). Refused for a
    /// job that has ended, or is ending by itself, or while the cluster
    /// stops (it resumes at the next start).
    pub fn cancel(&self, id: JobId) -> Result<(), String> {
        let mut state = self.state();
        let Some(job) = state.unfinished.get_mut(&id) else {
            let record = state.history.get(id.0).map_err(|e| e.to_string())?.ok_or_else(|| format!("no job {id}"))?;
            return Err(format!("{id} has ended already: it {}", record.state));
        };
        match &mut job.engine {
            Some(engine) if engine.stop.is_none() => Err(format!("the cluster is stopping; {id} resumes when it starts again")),
            Some(engine) if engine.cancelled => Ok(()),
            Some(engine) => {
                // Its workers are told and its job directory goes, as at
                // any failure; a job that has just succeeded stays so.
                if !engine.handle.cancel(CANCELLED) {
                    return Err(format!("{id} is ending by itself: see mr status {id}"));
                }
                engine.cancelled = true;
                tracing::info!(job = %id, "cancelling");
                Ok(())
            }
            None => {
                tracing::info!(job = %id, "cancelled while queued");
                self.record_end(&mut state, id, ended(JobState::Cancelled, Some("cancelled while queued".into()), None));
                Ok(())
            }
        }
    }

    /// Stops every running engine for a cluster shutdown: their job
    /// directories are kept, and the history still has them running.
    pub fn stop_all(&self) {
        let mut state = self.state();
        for job in state.unfinished.values_mut() {
            if let Some(stop) = job.engine.as_mut().and_then(|engine| engine.stop.take()) {
                let _ = stop.send(());
            }
        }
    }

    /// Whether every engine has returned (after [`Cluster::stop_all`]).
    pub fn engines_stopped(&self) -> bool {
        let state = self.state();
        state.finishing.is_empty() && state.unfinished.values().all(|job| job.engine.is_none())
    }

    /// The door of running (or finishing) job `id`, for a connection
    /// routed to it.
    pub fn job_handle(&self, id: JobId) -> Option<JobHandle> {
        let state = self.state();
        let running = state.unfinished.get(&id).and_then(|job| job.engine.as_ref()).map(|engine| engine.handle.clone());
        running.or_else(|| state.finishing.get(&id).cloned())
    }
}

/// `ids` for a log line: `job-1, job-2`.
fn shown_ids(ids: &[JobId]) -> String {
    ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Why a cancelled running job stopped, as its workers and history say.
const CANCELLED: &str = "cancelled while running";

/// The span job `id`'s lines are logged in (see [`job_logs`]).
pub(super) fn job_span(id: JobId) -> tracing::Span {
    tracing::info_span!(parent: None, job_logs::JOB_SPAN, id = %id)
}

/// Plans job `id`'s engine, in its span. A panic in planning (a bug, or a
/// setting no check foresaw) fails this job only.
fn plan(id: JobId, admitted: &Admitted) -> Result<Job, String> {
    let output_dir = &admitted.output_dir;
    std::fs::create_dir_all(output_dir).map_err(|e| format!("cannot create output directory {}: {e}", output_dir.display()))?;
    let planning = || Job::plan(admission::coordinator_config(admitted)).map(Job::for_cluster).map_err(|e| e.to_string());
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job_span(id).in_scope(planning))) {
        Ok(planned) => planned,
        Err(payload) => Err(format!("planning the job failed (a bug): {}", crate::abi::panic_message(payload.as_ref()))),
    }
}

/// A job's end for the history.
fn ended(state: JobState, error: Option<String>, summary: Option<JobSummary>) -> JobOutcome {
    JobOutcome {
        state,
        error,
        counters_json: summary.as_ref().and_then(|s| serde_json::to_string(s).ok()),
        map_phase_secs: summary.as_ref().and_then(|s| s.map_phase_secs),
        reduce_phase_secs: summary.as_ref().and_then(|s| s.reduce_phase_secs),
        attempts_json: summary.as_ref().and_then(|s| serde_json::to_string(&s.attempts).ok()),
    }
}
