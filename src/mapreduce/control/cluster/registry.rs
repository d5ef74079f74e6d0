//! The standing cluster's state and what changes it: the jobs (queued in
//! the [`Queue`], running in an engine each, all of them in the
//! [`History`]), and the long-lived [`Workers`]. The listener and the API
//! handlers ([`super::server`]) call in here; nothing here reads a socket.
//!
//! A job's life: [`Cluster::submit`] admits it ([`super::admission`]),
//! records it in the history (which gives its id) and queues it; when the
//! queue lets it start, its engine is planned ([`Job::plan`]: its job
//! directory, its journal) and run with no listener of its own
//! ([`Job::run_without_listener`]), reached through its [`JobHandle`]; when
//! the engine ends, its outcome and summary go to the history and the next
//! queued job may start. A cancelled running job is stopped through its
//! engine's shutdown, and its job directory removed (nothing of it is
//! published). A cluster stopped by a signal stops its engines the same way
//! but keeps their job directories and their `running` state in the
//! history: a restart plans them again, and each resumes from its journal
//! ([`Cluster::open`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, Notify};
use tracing::Instrument;

use crate::cluster::admission::{self, Admitted};
use crate::cluster::api::{JobInfo, ListFilter, Submission, WorkerInfo};
use crate::cluster::history::{History, HistoryError, JobFilter, JobOutcome, JobRecord, JobState};
use crate::cluster::job_logs;
use crate::cluster::queue::{JobId, MaxRunning, Queue};
use crate::cluster::workers::{Label, Load, LoadLimits, Workers};
use crate::coordinator::{CoordinatorError, Job, JobHandle, JobReport, StatusHandle};
use crate::rpc::POLL_WAIT;
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
    config: ClusterConfig,
    state: Mutex<State>,
    /// Signalled when a job starts or ends or a worker joins: a held
    /// `next_job` looks again.
    changed: Notify,
}

struct State {
    history: History,
    queue: Queue,
    workers: Workers,
    /// Queued and running jobs: what they were submitted with.
    unfinished: HashMap<JobId, Unfinished>,
}

/// A job that has not ended.
struct Unfinished {
    admitted: Admitted,
    /// Its engine, once it runs.
    engine: Option<Engine>,
    /// The history has it running already (a restart resumes it).
    started_before: bool,
}

/// A running job's engine, as the cluster holds it.
struct Engine {
    handle: JobHandle,
    /// Fired to stop it: a cancel, or the cluster stopping.
    stop: Option<oneshot::Sender<()>>,
    /// Stopped by a cancel (not by the cluster stopping).
    cancelled: bool,
}

impl Cluster {
    /// Opens the state directory (locked for this process), and takes up
    /// the jobs its history has unfinished: running ones resume from their
    /// journals, queued ones stay queued. Runs no job yet: see
    /// [`Cluster::start_ready`].
    pub fn open(config: ClusterConfig) -> Result<Arc<Cluster>, ClusterError> {
        let history = History::open(&config.state_dir)?;
        let mut queue = Queue::new(config.max_running)?;
        let mut unfinished = HashMap::new();
        let mut failed = Vec::new();
        for record in history.unfinished()? {
            let id = JobId(record.id);
            let submission: Submission =
                serde_json::from_str(&record.spec_json).map_err(|e| ClusterError::BadSpec { id: record.id, why: e.to_string() })?;
            let (priority, weight, requires) = (submission.priority, submission.weight, submission.requires.clone());
            // Inputs and app are checked again: either may be gone.
            match admission::admit(submission) {
                Ok(admitted) => {
                    queue.submit(id, priority, weight, requires)?;
                    tracing::info!(job = %id, "taken up again ({})", record.state);
                    unfinished.insert(id, Unfinished { admitted, engine: None, started_before: record.state == JobState::Running });
                }
                Err(why) => failed.push((id, why)),
            }
        }
        let cluster = Arc::new(Cluster {
            state: Mutex::new(State { history, queue, workers: Workers::new(config.load_limits), unfinished }),
            config,
            changed: Notify::new(),
        });
        for (id, why) in failed {
            tracing::warn!(job = %id, "cannot be taken up again: {why}");
            cluster.record_end(&mut cluster.state(), id, ended(JobState::Failed, Some(format!("after a restart: {why}")), None));
        }
        cluster.prune();
        Ok(cluster)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The interval long-lived workers send heartbeats at.
    pub fn heartbeat_interval(&self) -> Duration {
        self.config.heartbeat_interval
    }

    /// Admits and queues a job; its id, or why it was refused. Blocks on
    /// the file system (admission, the history's commit).
    pub fn submit(self: &Arc<Self>, submission: Submission) -> Result<JobId, String> {
        let admitted = admission::admit(submission)?;
        let spec_json = serde_json::to_string(&admitted.submission).map_err(|e| format!("encoding the job: {e}"))?;
        let mut state = self.state();
        let holder = state.history.output_dir_holder(&admitted.output_dir).map_err(|e| e.to_string())?;
        admission::check_output_holder(&admitted.output_dir, holder.map(|(id, state)| (JobId(id), state)), admitted.submission.overwrite)?;
        let priority = admitted.submission.priority;
        let id = JobId(state.history.submit(&spec_json, &admitted.output_dir, &priority.to_string(), SystemTime::now()).map_err(|e| e.to_string())?);
        let queued = state.queue.submit(id, priority, admitted.submission.weight, admitted.submission.requires.clone());
        if let Err(e) = queued {
            // Cannot happen (a fresh id, a weight checked): keep the history true.
            self.record_end(&mut state, id, ended(JobState::Failed, Some(e.to_string()), None));
            return Err(e.to_string());
        }
        tracing::info!(job = %id, %priority, output_dir = %admitted.output_dir.display(), "submitted");
        state.unfinished.insert(id, Unfinished { admitted, engine: None, started_before: false });
        drop(state);
        self.start_ready();
        Ok(id)
    }

    /// Starts every queued job the queue lets run now: plans its engine
    /// and spawns it (on the current Tokio runtime).
    pub fn start_ready(self: &Arc<Self>) {
        let mut state = self.state();
        for id in state.queue.start_ready() {
            if let Err(why) = self.start(&mut state, id) {
                tracing::warn!(job = %id, "cannot start: {why}");
                self.record_end(&mut state, id, ended(JobState::Failed, Some(why), None));
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Plans job `id`'s engine and spawns it.
    fn start(self: &Arc<Self>, state: &mut State, id: JobId) -> Result<(), String> {
        let job = state.unfinished.get_mut(&id).ok_or("not in the cluster's table (a bug)")?;
        let output_dir = &job.admitted.output_dir;
        std::fs::create_dir_all(output_dir).map_err(|e| format!("cannot create output directory {}: {e}", output_dir.display()))?;
        let span = tracing::info_span!(parent: None, job_logs::JOB_SPAN, id = %id);
        let engine = span.in_scope(|| Job::plan(admission::coordinator_config(&job.admitted))).map_err(|e| e.to_string())?;
        let handle = engine.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        job.engine = Some(Engine { handle: handle.clone(), stop: Some(stop), cancelled: false });
        if !std::mem::replace(&mut job.started_before, true) {
            state.history.started(id.0, SystemTime::now()).map_err(|e| e.to_string())?;
        }
        tracing::info!(job = %id, "started");
        let cluster = self.clone();
        tokio::spawn(
            async move {
                let result = engine
                    .run_without_listener(async move {
                        let _ = stopped.await;
                    })
                    .await;
                cluster.engine_ended(id, &handle.status(), result);
            }
            .instrument(span),
        );
        Ok(())
    }

    /// Job `id`'s engine returned `result`: records how it ended, unless the
    /// cluster itself stopped it (it resumes at the next start).
    fn engine_ended(self: &Arc<Self>, id: JobId, status: &StatusHandle, result: Result<JobReport, CoordinatorError>) {
        let mut state = self.state();
        let cancelled = state.unfinished.get(&id).and_then(|job| job.engine.as_ref()).is_some_and(|engine| engine.cancelled);
        let outputs = result.as_ref().map(|report| report.outputs.clone()).unwrap_or_default();
        let summary = serde_json::to_string(&JobSummary::new(&status.report(), &outputs)).ok();
        let outcome = match result {
            Ok(_) => ended(JobState::Succeeded, None, summary),
            Err(CoordinatorError::JobFailed(_)) if cancelled => ended(JobState::Cancelled, Some(CANCELLED.into()), summary),
            Err(CoordinatorError::Interrupted) => {
                tracing::info!(job = %id, "stopped with the cluster; it resumes when the cluster starts again");
                if let Some(job) = state.unfinished.get_mut(&id) {
                    job.engine = None;
                }
                return;
            }
            Err(e) => ended(JobState::Failed, Some(e.to_string()), summary),
        };
        tracing::info!(job = %id, "{}", outcome.state);
        self.record_end(&mut state, id, outcome);
        drop(state);
        self.prune();
        self.start_ready();
    }

    /// Writes job `id`'s end to the history and forgets it.
    fn record_end(&self, state: &mut State, id: JobId, outcome: JobOutcome) {
        state.queue.remove(id);
        state.unfinished.remove(&id);
        if let Err(e) = state.history.ended(id.0, outcome, SystemTime::now()) {
            tracing::error!(job = %id, "cannot record the job's end in the history: {e}");
        }
        self.changed.notify_waiters();
    }

    /// Removes finished jobs from the history beyond what is kept.
    fn prune(&self) {
        if self.config.keep_jobs.is_none() && self.config.keep_for.is_none() {
            return;
        }
        let pruned = self.state().history.prune(self.config.keep_jobs, self.config.keep_for, SystemTime::now());
        match pruned {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!("pruned {n} finished job(s) from the history");
                let state = self.state();
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
    /// engine (its end is recorded when the engine returns).
    pub fn cancel(&self, id: JobId) -> Result<(), String> {
        let mut state = self.state();
        let Some(job) = state.unfinished.get_mut(&id) else {
            let record = state.history.get(id.0).map_err(|e| e.to_string())?.ok_or_else(|| format!("no job {id}"))?;
            return Err(format!("{id} has ended already: it {}", record.state));
        };
        match &mut job.engine {
            Some(engine) => {
                // Its workers are told and its job directory goes, as at
                // any failure; a job that has just succeeded stays so.
                if engine.handle.cancel(CANCELLED) {
                    engine.cancelled = true;
                    tracing::info!(job = %id, "cancelling");
                }
            }
            None => {
                tracing::info!(job = %id, "cancelled while queued");
                self.record_end(&mut state, id, ended(JobState::Cancelled, Some("cancelled while queued".into()), None));
            }
        }
        Ok(())
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
        self.state().unfinished.values().all(|job| job.engine.is_none())
    }

    /// The door of running job `id`, for a connection routed to it.
    pub fn job_handle(&self, id: JobId) -> Option<JobHandle> {
        self.state().unfinished.get(&id).and_then(|job| job.engine.as_ref()).map(|engine| engine.handle.clone())
    }

    /// Job `id` as the API shows it.
    pub fn job(&self, id: JobId) -> Result<JobInfo, String> {
        let state = self.state();
        let record = state.history.get(id.0).map_err(|e| e.to_string())?.ok_or_else(|| format!("no job {id} (never submitted, or pruned)"))?;
        info(&state, record)
    }

    /// The unfinished jobs in the order they were submitted, then the
    /// finished ones (newest first) if asked.
    pub fn jobs(&self, filter: ListFilter) -> Result<Vec<JobInfo>, String> {
        let state = self.state();
        let history = &state.history;
        let mut records = history.unfinished().map_err(|e| e.to_string())?;
        if filter.finished {
            let finished =
                JobFilter { states: Some(vec![JobState::Succeeded, JobState::Failed, JobState::Cancelled]), limit: filter.limit.map(|n| n as usize) };
            records.extend(history.list(&finished).map_err(|e| e.to_string())?);
        }
        records.into_iter().map(|record| info(&state, record)).collect()
    }

    /// The connected long-lived workers.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let now = Instant::now();
        self.state()
            .workers
            .live()
            .map(|worker| WorkerInfo {
                id: worker.id.to_owned(),
                labels: worker.labels.to_vec(),
                slots: worker.slots,
                cores: worker.cores,
                load: worker.load,
                over_limit: worker.over_limit.map(|over| over.to_string()),
                silent_secs: now.saturating_duration_since(worker.last_heard).as_secs_f64(),
            })
            .collect()
    }

    /// Worker `id` joined (or joined again).
    pub fn worker_joined(&self, id: &str, labels: Vec<Label>, slots: u32, cores: u32) {
        tracing::info!(worker = %id, slots, "worker joined");
        self.state().workers.joined(id, labels, slots, cores, Instant::now());
        self.changed.notify_waiters();
    }

    /// A heartbeat from worker `id`; false if it has not joined.
    pub fn worker_heartbeat(&self, id: &str, load: Option<Load>) -> bool {
        let mut state = self.state();
        let now = Instant::now();
        match load {
            Some(load) => state.workers.heartbeat(id, load, now),
            None => state.workers.view(id).is_some(),
        }
    }

    /// Worker `id`'s connection to the cluster closed.
    pub fn worker_left(&self, id: &str) {
        if self.state().workers.left(id) {
            tracing::info!(worker = %id, "worker left");
        }
    }

    /// Forgets workers silent for three heartbeat intervals.
    pub fn expire_workers(&self) {
        let silence = self.config.heartbeat_interval * 3;
        for id in self.state().workers.expire(Instant::now(), silence) {
            tracing::warn!(worker = %id, "worker silent for {} s: taken for gone", silence.as_secs_f64());
        }
    }

    /// The job a free slot of worker `id` serves: as soon as one has a task
    /// ready for it, or `None` after [`POLL_WAIT`].
    pub async fn next_job(&self, worker: &str, declined: &[JobId]) -> Option<JobId> {
        let give_up = tokio::time::Instant::now() + POLL_WAIT;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(id) = self.pick(worker, declined) {
                return Some(id);
            }
            // Engines do not signal here when their tasks become ready (a
            // map done lets the reduces go): look again shortly.
            let wake = give_up.min(tokio::time::Instant::now() + PICK_RETRY);
            if tokio::time::Instant::now() >= give_up {
                return None;
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// One look for a job for a free slot of `worker`.
    fn pick(&self, worker: &str, declined: &[JobId]) -> Option<JobId> {
        let mut guard = self.state();
        let state = &mut *guard;
        for (id, job) in &state.unfinished {
            if let Some(engine) = &job.engine {
                state.queue.set_running_tasks(*id, engine.handle.progress().running as u64);
            }
        }
        let view = state.workers.view(worker)?;
        let unfinished = &state.unfinished;
        state.queue.pick(&view, |id| {
            !declined.contains(&id)
                && unfinished.get(&id).and_then(|job| job.engine.as_ref()).is_some_and(|engine| engine.stop.is_some() && engine.handle.has_task_for(worker))
        })
    }
}

/// Why a cancelled running job stopped, as its workers and history say.
const CANCELLED: &str = "cancelled while running";

/// How often a held `next_job` looks again at the engines.
const PICK_RETRY: Duration = Duration::from_millis(50);

/// A job's end for the history.
fn ended(state: JobState, error: Option<String>, summary_json: Option<String>) -> JobOutcome {
    let summary: Option<JobSummary> = summary_json.as_deref().and_then(|json| serde_json::from_str(json).ok());
    JobOutcome {
        state,
        error,
        counters_json: summary_json,
        map_phase_secs: summary.as_ref().and_then(|s| s.map_phase_secs),
        reduce_phase_secs: summary.as_ref().and_then(|s| s.reduce_phase_secs),
        attempts_json: summary.as_ref().and_then(|s| serde_json::to_string(&s.attempts).ok()),
    }
}

/// A history record with what only the running cluster knows.
fn info(state: &State, record: JobRecord) -> Result<JobInfo, String> {
    let id = JobId(record.id);
    let submission: Submission = serde_json::from_str(&record.spec_json).map_err(|e| format!("{id}'s spec in the history: {e}"))?;
    let engine = state.unfinished.get(&id).and_then(|job| job.engine.as_ref());
    let progress = engine.map(|engine| engine.handle.progress());
    let waiting = match state.queue.waiting_reasons(id, &state.workers) {
        Ok(reasons) => reasons.iter().map(ToString::to_string).collect(),
        Err(_) => Vec::new(),
    };
    let outcome = record.outcome.as_ref();
    Ok(JobInfo {
        id,
        state: record.state,
        priority: submission.priority,
        weight: submission.weight,
        requires: submission.requires,
        app: submission.job.app,
        output_dir: record.output_dir,
        submitted_ms: unix_ms(record.submitted),
        started_ms: record.started.map(unix_ms),
        ended_ms: record.ended.map(unix_ms),
        progress,
        waiting,
        error: outcome.and_then(|o| o.error.clone()),
        summary_json: outcome.and_then(|o| o.counters_json.clone()),
    })
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
