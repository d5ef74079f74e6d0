//! The job as its observers see it: the model behind the terminal progress
//! display, the HTTP status API, the metrics and the end-of-job summary.
//!
//! [`JobStatus`] records what the scheduler alone does not keep: each
//! attempt's worker, start and end time, outcome and counters, and each
//! worker's whereabouts. The coordinator feeds it from the events it already
//! handles (an assignment, a report, a timeout); nothing polls the workers.
//! Task states come from the [`Scheduler`] itself when a [`StatusReport`] is
//! taken, so the two can never disagree about a task.
//!
//! Counters are kept per task, from its winning attempt only, and summed when
//! a report is taken: failed, timed-out and duplicate attempts add nothing,
//! and a map re-run after its output was lost replaces its earlier counts.
//!
//! Times in a report are seconds since the job started (monotonic), plus the
//! job's start as Unix time, so a client can place them on a wall clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::counters::Counters;
use crate::memory_budget::WorkerMemory;
use crate::rpc::{AttemptId, InputFile, JobEnd, TaskId, WorkerId};
use crate::scheduler::{AttemptLoss, Scheduler, TaskState};

/// How one attempt ended (or that it has not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "error")]
pub enum AttemptOutcome {
    /// Still running (as far as the coordinator knows).
    Running,
    /// Its result was kept.
    Succeeded,
    /// The app or the worker reported an error.
    Failed(String),
    /// Made no progress for the task timeout while its worker was alive;
    /// the task was given to another worker. A timed-out attempt that
    /// reports success before the task is done still wins and becomes
    /// `Succeeded`.
    TimedOut,
    /// Its worker went silent for the task timeout or its connection
    /// closed (the worker crashed, was stopped, or was cut off); the task
    /// was given to another worker. Like a timed-out attempt it may still
    /// report and win.
    WorkerLost(String),
    /// Finished after another attempt had already completed the task; its
    /// result and counters were dropped.
    Duplicate,
    /// A map whose output a reduce later could not read; the map was re-run.
    OutputLost(String),
    /// A reduce that found a map's output unreadable; retried after that map
    /// is re-run, without counting as a failure.
    InputLost(String),
    /// Still running when the job ended.
    Abandoned,
}

impl AttemptOutcome {
    /// Every outcome's [`name`](AttemptOutcome::name), in declaration order.
    pub const NAMES: [&'static str; 9] =
        ["running", "succeeded", "failed", "timed_out", "worker_lost", "duplicate", "output_lost", "input_lost", "abandoned"];

    /// The outcome's name, as `/api/status`, `/metrics` and the summary spell it.
    pub fn name(&self) -> &'static str {
        let index = match self {
            AttemptOutcome::Running => 0,
            AttemptOutcome::Succeeded => 1,
            AttemptOutcome::Failed(_) => 2,
            AttemptOutcome::TimedOut => 3,
            AttemptOutcome::WorkerLost(_) => 4,
            AttemptOutcome::Duplicate => 5,
            AttemptOutcome::OutputLost(_) => 6,
            AttemptOutcome::InputLost(_) => 7,
            AttemptOutcome::Abandoned => 8,
        };
        Self::NAMES[index]
    }

    /// The error that came with the outcome, if any.
    pub fn error(&self) -> Option<&str> {
        match self {
            AttemptOutcome::Failed(e) | AttemptOutcome::WorkerLost(e) | AttemptOutcome::OutputLost(e) | AttemptOutcome::InputLost(e) => Some(e),
            _ => None,
        }
    }
}

/// One attempt at one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptStatus {
    /// The attempt's id (unique within the job).
    pub attempt: AttemptId,
    /// The worker that ran it.
    pub worker: WorkerId,
    /// When it was assigned, in seconds since the job started.
    pub start_secs: f64,
    /// Whether it ran as the backup of a straggling attempt of its task.
    #[serde(default)]
    pub backup: bool,
    /// When it was reported or given up, in seconds since the job started.
    pub end_secs: Option<f64>,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: AttemptOutcome,
    /// Bytes it read (a map's input split; a reduce's intermediate runs),
    /// once it succeeded.
    pub bytes_in: Option<u64>,
    /// Bytes it wrote (a map's intermediate runs; a reduce's output), once
    /// it succeeded.
    pub bytes_out: Option<u64>,
    /// Given out by a coordinator before this one was started on the job
    /// (from its journal): its times are this coordinator's start, and
    /// unless it won or reports now, how it ended is not known.
    #[serde(default)]
    pub before_restart: bool,
}

#[derive(Debug, Clone)]
struct TaskRecord {
    attempts: Vec<AttemptStatus>,
    /// The winning attempt's counters, while the task is done.
    counters: Option<Counters>,
}

#[derive(Debug, Clone)]
struct WorkerRecord {
    address: Option<String>,
    last_seen: Instant,
    tasks_done: u64,
    current: BTreeSet<(TaskId, AttemptId)>,
    exited: bool,
    /// Its connection closed (until it calls again).
    disconnected: bool,
    /// Its peak memory and budget, as it last said.
    memory: WorkerMemory,
}

/// Workers that left without finishing a task kept in the table, at most.
pub const MAX_IDLE_GONE_WORKERS: usize = 256;

/// The observable history of one job; see the module docs.
#[derive(Debug, Clone)]
pub struct JobStatus {
    started: Instant,
    started_unix_ms: u64,
    inputs: Vec<InputFile>,
    /// How long a silent worker counts as alive (the task timeout).
    alive_window: Duration,
    maps: Vec<TaskRecord>,
    reduces: Vec<TaskRecord>,
    workers: BTreeMap<WorkerId, WorkerRecord>,
    /// When the last map task completed (reset if a map must run again).
    maps_finished: Option<Instant>,
    ended: Option<(Instant, JobEnd)>,
    /// Reports, uploads and calls refused after the handshake.
    refused_calls: u64,
}

impl JobStatus {
    /// A job starting at `now` with `maps` map tasks and `reduces` reduce
    /// tasks. A worker not heard from for `alive_window` (while running
    /// nothing) counts as gone.
    pub fn new(inputs: Vec<InputFile>, maps: usize, reduces: usize, alive_window: Duration, now: Instant) -> JobStatus {
        let started_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let record = TaskRecord { attempts: Vec::new(), counters: None };
        JobStatus {
            started: now,
            started_unix_ms,
            inputs,
            alive_window,
            maps: vec![record.clone(); maps],
            reduces: vec![record; reduces],
            workers: BTreeMap::new(),
            maps_finished: (maps == 0).then_some(now),
            ended: None,
            refused_calls: 0,
        }
    }

    /// A report, upload or call from a connected peer was refused: not
    /// its attempt, or not a message its task can have.
    pub fn call_refused(&mut self) {
        self.refused_calls += 1;
    }

    /// A call from `worker` (connected from `address`) arrived.
    pub fn worker_seen(&mut self, worker: &str, address: Option<String>, now: Instant) {
        let record = self.workers.entry(worker.to_owned()).or_insert_with(|| WorkerRecord {
            address: None,
            last_seen: now,
            tasks_done: 0,
            current: BTreeSet::new(),
            exited: false,
            disconnected: false,
            memory: WorkerMemory::default(),
        });
        record.last_seen = now;
        record.disconnected = false;
        if address.is_some() {
            record.address = address;
        }
    }

    /// `worker` says this of its memory (its peak only grows: a late
    /// message does not lower it).
    pub fn worker_memory(&mut self, worker: &str, memory: WorkerMemory) {
        if let Some(record) = self.workers.get_mut(worker) {
            record.memory = record.memory.then(memory);
        }
    }

    /// `worker` was told the job is over.
    pub fn worker_exited(&mut self, worker: &str) {
        if let Some(record) = self.workers.get_mut(worker) {
            record.exited = true;
        }
    }

    /// `attempt` of `task` was given to `worker`, as a backup or not.
    pub fn attempt_started(&mut self, task: TaskId, attempt: AttemptId, worker: &str, backup: bool, now: Instant) {
        let start_secs = self.secs(now);
        self.task_mut(task).attempts.push(AttemptStatus {
            attempt,
            worker: worker.to_owned(),
            start_secs,
            backup,
            end_secs: None,
            outcome: AttemptOutcome::Running,
            bytes_in: None,
            bytes_out: None,
            before_restart: false,
        });
        if let Some(w) = self.workers.get_mut(worker) {
            w.current.insert((task, attempt));
        }
    }

    /// An earlier coordinator gave `attempt` of `task` to `worker`, as its
    /// journal says: shown with the job's attempts, as the winner when
    /// `won`, and otherwise as running (it may still report) until the job
    /// ends.
    pub fn attempt_restored(&mut self, task: TaskId, attempt: AttemptId, worker: &str, won: bool) {
        let outcome = if won { AttemptOutcome::Succeeded } else { AttemptOutcome::Running };
        let end_secs = won.then_some(0.0);
        self.task_mut(task).attempts.push(AttemptStatus {
            attempt,
            worker: worker.to_owned(),
            start_secs: 0.0,
            backup: false,
            end_secs,
            outcome,
            bytes_in: None,
            bytes_out: None,
            before_restart: true,
        });
    }

    /// `attempt` completed `task` (the scheduler accepted it): its counters
    /// become the task's.
    pub fn attempt_succeeded(&mut self, task: TaskId, attempt: AttemptId, counters: Counters, now: Instant) {
        let (bytes_in, bytes_out) = match task {
            TaskId::Map(_) => (counters.map_input_bytes, counters.intermediate_bytes),
            TaskId::Reduce(_) => (counters.reduce_input_bytes, counters.output_bytes),
        };
        if let Some(a) = self.end_attempt(task, attempt, AttemptOutcome::Succeeded, now) {
            (a.bytes_in, a.bytes_out) = (Some(bytes_in), Some(bytes_out));
        }
        self.task_mut(task).counters = Some(counters);
        if let Some(worker) = self.attempt(task, attempt).map(|a| a.worker.clone()) {
            if let Some(w) = self.workers.get_mut(&worker) {
                w.tasks_done += 1;
            }
        }
        if matches!(task, TaskId::Map(_)) && self.maps.iter().all(|m| m.counters.is_some()) {
            self.maps_finished = Some(now);
        }
    }

    /// `task` was done before the coordinator restarted; its winner's
    /// counters, from the journal, become the task's.
    pub fn task_restored(&mut self, task: TaskId, counters: Counters, now: Instant) {
        self.task_mut(task).counters = Some(counters);
        if matches!(task, TaskId::Map(_)) && self.maps.iter().all(|m| m.counters.is_some()) {
            self.maps_finished = Some(now);
        }
    }

    /// `attempt` finished after `task` was already done: dropped.
    pub fn attempt_duplicate(&mut self, task: TaskId, attempt: AttemptId, now: Instant) {
        self.end_attempt(task, attempt, AttemptOutcome::Duplicate, now);
    }

    /// `attempt` of `task` failed with `error`.
    pub fn attempt_failed(&mut self, task: TaskId, attempt: AttemptId, error: &str, now: Instant) {
        self.end_attempt(task, attempt, AttemptOutcome::Failed(error.to_owned()), now);
    }

    /// The scheduler gave up `attempt` of `task` for `loss`.
    pub fn attempt_lost(&mut self, task: TaskId, attempt: AttemptId, loss: AttemptLoss, now: Instant) {
        let outcome = if loss.worker_lost() { AttemptOutcome::WorkerLost(loss.to_string()) } else { AttemptOutcome::TimedOut };
        self.end_attempt(task, attempt, outcome, now);
    }

    /// `worker`'s connection closed: it is not alive until it calls again.
    pub fn worker_disconnected(&mut self, worker: &str) {
        if let Some(record) = self.workers.get_mut(worker) {
            record.disconnected = true;
        }
        self.forget_idle_gone_workers();
    }

    /// Keeps at most [`MAX_IDLE_GONE_WORKERS`] workers that left without
    /// finishing a task, forgetting the longest gone first: the table (and
    /// the status document) would otherwise grow with every process that
    /// ever connected. Workers that finished tasks, and those connected,
    /// are kept: there are no more of them than tasks and connections.
    fn forget_idle_gone_workers(&mut self) {
        let idle_gone = |w: &WorkerRecord| w.disconnected && w.tasks_done == 0 && w.current.is_empty();
        let count = self.workers.values().filter(|w| idle_gone(w)).count();
        if count <= MAX_IDLE_GONE_WORKERS {
            return;
        }
        let mut by_age: Vec<(Instant, WorkerId)> =
            self.workers.iter().filter(|(_, w)| idle_gone(w)).map(|(id, w)| (w.last_seen, id.clone())).collect();
        by_age.sort_unstable();
        for (_, id) in by_age.into_iter().take(count - MAX_IDLE_GONE_WORKERS) {
            self.workers.remove(&id);
        }
    }

    /// Reduce `attempt` could not read map task `map_task`'s output: the
    /// reduce attempt ends, and the map's winning attempt loses its result
    /// (and the map its counters) until the map is re-run.
    pub fn map_output_lost(&mut self, reduce: TaskId, attempt: AttemptId, map_task: u32, error: &str, now: Instant) {
        self.end_attempt(reduce, attempt, AttemptOutcome::InputLost(error.to_owned()), now);
        self.map_output_gone(map_task, error);
    }

    /// Map task `map_task`'s winning attempt lost its output (`why`): the
    /// map runs again, and loses its counters until it is done again.
    pub fn map_output_gone(&mut self, map_task: u32, error: &str) {
        let Some(map) = self.maps.get_mut(map_task as usize) else { return };
        if map.counters.take().is_some() {
            if let Some(winner) = map.attempts.iter_mut().rev().find(|a| a.outcome == AttemptOutcome::Succeeded) {
                winner.outcome = AttemptOutcome::OutputLost(error.to_owned());
            }
            self.maps_finished = None;
        }
    }

    /// The job ended at `now`; attempts still running are abandoned.
    pub fn job_ended(&mut self, end: JobEnd, now: Instant) {
        if self.ended.is_some() {
            return;
        }
        let end_secs = self.secs(now);
        for attempt in self.maps.iter_mut().chain(&mut self.reduces).flat_map(|t| &mut t.attempts) {
            if attempt.outcome == AttemptOutcome::Running {
                attempt.outcome = AttemptOutcome::Abandoned;
                attempt.end_secs = Some(end_secs);
            }
        }
        for worker in self.workers.values_mut() {
            worker.current.clear();
        }
        self.ended = Some((now, end));
    }

    /// Ends an attempt with `outcome`, unless it already ended (a timed-out
    /// attempt may still end again, in success or failure).
    fn end_attempt(&mut self, task: TaskId, attempt: AttemptId, outcome: AttemptOutcome, now: Instant) -> Option<&mut AttemptStatus> {
        let end_secs = self.secs(now);
        let record = self.attempt_mut(task, attempt)?;
        let worker = record.worker.clone();
        if !matches!(record.outcome, AttemptOutcome::Running | AttemptOutcome::TimedOut | AttemptOutcome::WorkerLost(_)) {
            return None;
        }
        record.outcome = outcome;
        record.end_secs = Some(end_secs);
        if let Some(w) = self.workers.get_mut(&worker) {
            w.current.remove(&(task, attempt));
        }
        self.attempt_mut(task, attempt)
    }

    fn task_mut(&mut self, task: TaskId) -> &mut TaskRecord {
        match task {
            TaskId::Map(m) => &mut self.maps[m as usize],
            TaskId::Reduce(r) => &mut self.reduces[r as usize],
        }
    }

    fn task(&self, task: TaskId) -> &TaskRecord {
        match task {
            TaskId::Map(m) => &self.maps[m as usize],
            TaskId::Reduce(r) => &self.reduces[r as usize],
        }
    }

    fn attempt(&self, task: TaskId, attempt: AttemptId) -> Option<&AttemptStatus> {
        self.task(task).attempts.iter().find(|a| a.attempt == attempt)
    }

    fn attempt_mut(&mut self, task: TaskId, attempt: AttemptId) -> Option<&mut AttemptStatus> {
        self.task_mut(task).attempts.iter_mut().find(|a| a.attempt == attempt)
    }

    fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.started).as_secs_f64()
    }

    /// Everything an observer may want to know, as of `now`.
    pub fn report(&self, scheduler: &Scheduler, now: Instant) -> StatusReport {
        let now = self.ended.as_ref().map_or(now, |(at, _)| *at);
        let elapsed = now.saturating_duration_since(self.started);
        let tasks: Vec<TaskReport> = (0..self.maps.len() as u32)
            .map(TaskId::Map)
            .chain((0..self.reduces.len() as u32).map(TaskId::Reduce))
            .map(|task| self.task_report(scheduler, task))
            .collect();
        let mut counters = Counters::default();
        for record in self.maps.iter().chain(&self.reduces) {
            if let Some(c) = &record.counters {
                counters.add(c);
            }
        }
        let input_bytes: u64 = self.inputs.iter().map(|i| i.size).sum();
        let progress = Progress::of(&tasks, input_bytes, counters.map_input_bytes, elapsed);
        let (state, error) = match &self.ended {
            None => (JobState::Running, None),
            Some((_, JobEnd::Succeeded)) => (JobState::Succeeded, None),
            Some((_, JobEnd::Failed(message))) => (JobState::Failed, Some(message.clone())),
        };
        let phase = match state {
            JobState::Running if self.maps_finished.is_none() => Phase::Map,
            JobState::Running => Phase::Reduce,
            JobState::Succeeded | JobState::Failed => Phase::Done,
        };
        let map_phase_secs = self.maps_finished.map(|at| self.secs(at));
        let job = JobReport {
            state,
            phase,
            error,
            inputs: self.inputs.iter().map(|i| InputReport { name: i.name.clone(), bytes: i.size }).collect(),
            input_bytes,
            maps: self.maps.len(),
            reduces: self.reduces.len(),
            started_unix_ms: self.started_unix_ms,
            elapsed_secs: elapsed.as_secs_f64(),
            map_phase_secs,
            reduce_phase_secs: map_phase_secs.filter(|_| state == JobState::Succeeded).map(|m| elapsed.as_secs_f64() - m),
            refused_calls: self.refused_calls,
        };
        let workers = self
            .workers
            .iter()
            .map(|(id, w)| {
                let silent = now.saturating_duration_since(w.last_seen);
                WorkerReport {
                    id: id.clone(),
                    address: w.address.clone(),
                    last_seen_secs_ago: silent.as_secs_f64(),
                    // Workers send heartbeats, so silence means gone even mid-task.
                    alive: !w.exited && !w.disconnected && self.ended.is_none() && silent < self.alive_window,
                    tasks_done: w.tasks_done,
                    current: w.current.iter().map(|&(task, attempt)| CurrentAttempt { task: task_label_of(task), attempt }).collect(),
                    peak_rss_bytes: w.memory.peak_rss_bytes,
                    memory_budget_bytes: w.memory.budget_bytes,
                }
            })
            .collect();
        StatusReport { job, progress, tasks, workers, counters }
    }

    fn task_report(&self, scheduler: &Scheduler, task: TaskId) -> TaskReport {
        let (kind, id) = kind_and_id(task);
        let input = match task {
            TaskId::Map(m) => scheduler.split(m).to_string(),
            TaskId::Reduce(r) => format!("partition {r}"),
        };
        let input_bytes = match task {
            TaskId::Map(m) => {
                let split = scheduler.split(m);
                Some(split.end.unwrap_or(split.file.size).min(split.file.size).saturating_sub(split.start))
            }
            TaskId::Reduce(_) => None,
        };
        let state = match scheduler.state(task) {
            TaskState::Idle => TaskStateName::Idle,
            TaskState::Running(_) => TaskStateName::Running,
            TaskState::Done { .. } => TaskStateName::Done,
        };
        let record = self.task(task);
        let winner = record.attempts.iter().find(|a| a.outcome == AttemptOutcome::Succeeded);
        TaskReport {
            kind,
            id,
            input,
            input_bytes,
            state,
            attempts: record.attempts.clone(),
            bytes_in: winner.and_then(|a| a.bytes_in),
            bytes_out: winner.and_then(|a| a.bytes_out),
            skipped_records: scheduler.skipped_records(task),
        }
    }
}

/// The whole status of a job at one moment: the `/api/status` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The job as a whole.
    pub job: JobReport,
    /// How far along it is.
    pub progress: Progress,
    /// Every task, maps first.
    pub tasks: Vec<TaskReport>,
    /// Every worker that has called, by id.
    pub workers: Vec<WorkerReport>,
    /// Sums over the tasks' winning attempts.
    pub counters: Counters,
}

/// Whether the job is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Tasks remain.
    Running,
    /// Every output is final.
    Succeeded,
    /// A task failed too often, or the job was interrupted.
    Failed,
}

/// The phase of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Some map task is not done.
    Map,
    /// Every map is done; reduces are running.
    Reduce,
    /// The job has ended.
    Done,
}

/// The job as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    /// Running, succeeded or failed.
    pub state: JobState,
    /// Map, reduce or done.
    pub phase: Phase,
    /// Why the job failed, if it did.
    pub error: Option<String>,
    /// The input files.
    pub inputs: Vec<InputReport>,
    /// Their total size.
    pub input_bytes: u64,
    /// Number of map tasks.
    pub maps: usize,
    /// Number of reduce tasks.
    pub reduces: usize,
    /// When the job started, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Seconds since the start (until the end, once ended).
    pub elapsed_secs: f64,
    /// Seconds from the start until the last map finished, once it has.
    pub map_phase_secs: Option<f64>,
    /// Seconds from then until the job succeeded, once it has.
    pub reduce_phase_secs: Option<f64>,
    /// Reports, uploads and calls refused after the handshake (forged,
    /// stale or malformed); they changed nothing.
    pub refused_calls: u64,
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputReport {
    /// As given on the command line.
    pub name: String,
    /// Size when the job was planned.
    pub bytes: u64,
}

/// Counts of tasks in each state, for one kind of task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    /// Number of tasks.
    pub total: usize,
    /// Waiting for a worker.
    pub idle: usize,
    /// Given to a worker.
    pub running: usize,
    /// Finished.
    pub done: usize,
}

/// How far along the job is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Map tasks by state.
    pub maps: TaskCounts,
    /// Reduce tasks by state.
    pub reduces: TaskCounts,
    /// Input bytes of the map tasks done.
    pub input_bytes_done: u64,
    /// Input bytes mapped per second of the job so far.
    pub input_bytes_per_sec: f64,
    /// Fraction of the job done, 0 to 1: maps weighted by their input bytes,
    /// then reduces by count, each task counting equally in total.
    pub fraction_done: f64,
    /// A rough estimate of the seconds left, from the rate so far.
    pub eta_secs: Option<f64>,
}

impl Progress {
    /// The job's output files: one per reduce task, or per map task of a
    /// map-only job (no reduce task).
    pub fn output_count(&self) -> u32 {
        match self.reduces.total {
            0 => self.maps.total as u32,
            reduces => reduces as u32,
        }
    }
}

impl Progress {
    fn of(tasks: &[TaskReport], input_bytes: u64, input_bytes_done: u64, elapsed: Duration) -> Progress {
        let count = |kind: TaskKind| {
            let mut counts = TaskCounts::default();
            for task in tasks.iter().filter(|t| t.kind == kind) {
                counts.total += 1;
                match task.state {
                    TaskStateName::Idle => counts.idle += 1,
                    TaskStateName::Running => counts.running += 1,
                    TaskStateName::Done => counts.done += 1,
                }
            }
            counts
        };
        let (maps, reduces) = (count(TaskKind::Map), count(TaskKind::Reduce));
        let map_fraction = if input_bytes > 0 {
            input_bytes_done as f64 / input_bytes as f64
        } else if maps.total > 0 {
            maps.done as f64 / maps.total as f64
        } else {
            1.0
        };
        let all = (maps.total + reduces.total).max(1) as f64;
        let fraction_done = ((map_fraction * maps.total as f64 + reduces.done as f64) / all).clamp(0.0, 1.0);
        let secs = elapsed.as_secs_f64();
        let eta_secs = (fraction_done > 0.0).then(|| secs * (1.0 - fraction_done) / fraction_done);
        Progress {
            maps,
            reduces,
            input_bytes_done,
            input_bytes_per_sec: if secs > 0.0 { input_bytes_done as f64 / secs } else { 0.0 },
            fraction_done,
            eta_secs,
        }
    }
}

/// Map or reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// A map task.
    Map,
    /// A reduce task.
    Reduce,
}

impl TaskKind {
    /// `map` or `reduce`, as the JSON spells it.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Map => "map",
            TaskKind::Reduce => "reduce",
        }
    }
}

/// A task's state, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStateName {
    /// Waiting for a worker.
    Idle,
    /// Given to a worker.
    Running,
    /// Finished.
    Done,
}

/// One task and its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// Map or reduce.
    pub kind: TaskKind,
    /// Map task index or reduce partition.
    pub id: u32,
    /// What it reads: a map's input split, a reduce's partition.
    pub input: String,
    /// A map's planned input size in bytes.
    pub input_bytes: Option<u64>,
    /// Idle, running or done.
    pub state: TaskStateName,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptStatus>,
    /// Bytes the winning attempt read.
    pub bytes_in: Option<u64>,
    /// Bytes the winning attempt wrote.
    pub bytes_out: Option<u64>,
    /// Bad records its attempts skip (see `--skip-bad-records`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_records: Vec<String>,
}

/// One worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// `host:pid`.
    pub id: WorkerId,
    /// The address its connection came from.
    pub address: Option<String>,
    /// Seconds since its last call.
    pub last_seen_secs_ago: f64,
    /// Running an attempt, or heard from within the task timeout, and not
    /// told to exit.
    pub alive: bool,
    /// Attempts it completed that were kept.
    pub tasks_done: u64,
    /// Attempts it is running now.
    pub current: Vec<CurrentAttempt>,
    /// Its peak resident memory, itself and its task processes, as it
    /// last said (see [`crate::memory_budget`]).
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
    /// Its memory budget (`mr-worker --memory`), if it has one.
    #[serde(default)]
    pub memory_budget_bytes: Option<u64>,
}

/// An attempt a worker is running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentAttempt {
    /// The task, e.g. `map 3`.
    pub task: String,
    /// The attempt's id.
    pub attempt: AttemptId,
}

fn kind_and_id(task: TaskId) -> (TaskKind, u32) {
    match task {
        TaskId::Map(m) => (TaskKind::Map, m),
        TaskId::Reduce(r) => (TaskKind::Reduce, r),
    }
}

fn task_label_of(task: TaskId) -> String {
    let (kind, id) = kind_and_id(task);
    task_label(kind, id)
}

/// A task's short name in reports: `map 3`, `reduce 0`.
pub fn task_label(kind: TaskKind, id: u32) -> String {
    format!("{} {id}", kind.name())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::map_output::MapOutputLocation;
    use crate::rpc::{Assignment, InputSplit};
    use crate::scheduler::SchedulerConfig;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// A scheduler and a status for `maps` inputs of 100 bytes each.
    fn job(maps: usize, reduces: u32, now: Instant) -> (Scheduler, JobStatus) {
        let inputs: Vec<InputFile> =
            (0..maps).map(|i| InputFile { name: format!("in-{i}"), path: PathBuf::from(format!("/in-{i}")), size: 100, modified: None }).collect();
        let splits = inputs.iter().cloned().map(InputSplit::whole).collect();
        let config = SchedulerConfig { task_timeout: TIMEOUT, max_task_attempts: 3, backups: None, skip_bad_records: 0 };
        let scheduler = Scheduler::new(config, splits, reduces, PathBuf::from("/job"));
        (scheduler, JobStatus::new(inputs, maps, reduces as usize, TIMEOUT, now))
    }

    /// Assigns the next task to `worker`, as the coordinator does.
    fn assign(s: &mut Scheduler, st: &mut JobStatus, worker: &str, now: Instant) -> (TaskId, AttemptId) {
        st.worker_seen(worker, Some("127.0.0.1:1".into()), now);
        let (task, attempt) = match s.assign(&crate::scheduler::Owner::new(worker, [0; 16]), now) {
            Assignment::Map(t) => (TaskId::Map(t.index), t.attempt),
            Assignment::Reduce(t) => (TaskId::Reduce(t.partition), t.attempt),
            other => panic!("expected a task, got {other:?}"),
        };
        st.attempt_started(task, attempt, worker, s.is_backup(task, attempt), now);
        (task, attempt)
    }

    fn map_counters(words: u64) -> Counters {
        Counters { map_input_bytes: 100, intermediate_bytes: 10, user: BTreeMap::from([("words".into(), words)]), ..Counters::default() }
    }

    fn location() -> Vec<(u32, MapOutputLocation)> {
        vec![(0, MapOutputLocation::SharedFile { path: PathBuf::from("/job/map-0.runs"), range: crate::runfile::RunRange { offset: 0, len: 100 } })]
    }

    #[test]
    fn only_winning_attempts_are_counted() {
        let t0 = Instant::now();
        let (mut s, mut st) = job(1, 1, t0);
        // Map 0: the first attempt fails, the second wins, a third (after a
        // timeout of the second) reports late and is a duplicate.
        let (m0, a1) = assign(&mut s, &mut st, "w1", t0);
        assert_eq!(s.fail(m0, a1, "boom"), crate::scheduler::ReportVerdict::Accepted);
        st.attempt_failed(m0, a1, "boom", t0);
        let (m0b, a2) = assign(&mut s, &mut st, "w1", t0);
        assert_eq!(m0b, m0);
        let later = t0 + TIMEOUT;
        for lost in s.expire(later) {
            st.attempt_lost(lost.task, lost.attempt, lost.loss, later);
        }
        let (m0c, a3) = assign(&mut s, &mut st, "w2", later);
        assert_eq!(m0c, m0);
        // The timed-out attempt finishes first and wins; the other is a duplicate.
        assert_eq!(s.complete(m0, a2, location(), later), crate::scheduler::ReportVerdict::Accepted);
        st.attempt_succeeded(m0, a2, map_counters(5), later);
        assert_eq!(s.complete(m0, a3, location(), later), crate::scheduler::ReportVerdict::AlreadyDone);
        st.attempt_duplicate(m0, a3, later);

        let report = st.report(&s, later);
        assert_eq!(report.counters.user["words"], 5, "one winner counted");
        assert_eq!(report.counters.map_input_bytes, 100);
        let outcomes: Vec<_> = report.tasks[0].attempts.iter().map(|a| a.outcome.clone()).collect();
        assert_eq!(outcomes, [AttemptOutcome::Failed("boom".into()), AttemptOutcome::Succeeded, AttemptOutcome::Duplicate]);
        assert_eq!((report.tasks[0].bytes_in, report.tasks[0].bytes_out), (Some(100), Some(10)));
        assert_eq!(report.progress.maps, TaskCounts { total: 1, idle: 0, running: 0, done: 1 });
        assert_eq!(report.progress.input_bytes_done, 100);
        assert_eq!(report.job.phase, Phase::Reduce);
        let w1 = &report.workers[0];
        assert_eq!((w1.id.as_str(), w1.tasks_done, w1.current.len()), ("w1", 1, 0));
    }

    #[test]
    fn a_map_rerun_after_its_output_was_lost_replaces_its_counts() {
        let t0 = Instant::now();
        let (mut s, mut st) = job(1, 1, t0);
        let (m, a) = assign(&mut s, &mut st, "w", t0);
        s.complete(m, a, location(), t0);
        st.attempt_succeeded(m, a, map_counters(7), t0);
        assert_eq!(st.report(&s, t0).job.phase, Phase::Reduce);
        let (r, ra) = assign(&mut s, &mut st, "w", t0);
        s.map_output_lost(r, ra, 0, "truncated", true, t0);
        st.map_output_lost(r, ra, 0, "truncated", t0);
        let report = st.report(&s, t0);
        assert_eq!(report.job.phase, Phase::Map);
        assert!(report.counters.user.is_empty(), "the lost output's counts are gone");
        assert_eq!(report.tasks[0].attempts[0].outcome, AttemptOutcome::OutputLost("truncated".into()));
        assert_eq!(report.tasks[1].attempts[0].outcome, AttemptOutcome::InputLost("truncated".into()));

        let (m2, a2) = assign(&mut s, &mut st, "w", t0);
        assert_eq!(m2, m);
        s.complete(m, a2, location(), t0);
        st.attempt_succeeded(m, a2, map_counters(7), t0);
        let (r2, ra2) = assign(&mut s, &mut st, "w", t0);
        s.complete(r2, ra2, vec![], t0);
        st.attempt_succeeded(r2, ra2, Counters { output_records: 3, ..Counters::default() }, t0);
        st.job_ended(s.job_end().unwrap(), t0 + Duration::from_secs(2));
        let report = st.report(&s, t0 + Duration::from_secs(60));
        assert_eq!(report.counters.user["words"], 7, "counted once, not twice");
        assert_eq!(report.counters.output_records, 3);
        assert_eq!((report.job.state, report.job.phase), (JobState::Succeeded, Phase::Done));
        assert_eq!(report.job.elapsed_secs, 2.0, "the clock stops when the job ends");
        assert_eq!(report.progress.fraction_done, 1.0);
    }

    #[test]
    fn outcome_and_kind_names_are_the_json_spellings() {
        let e = || "e".to_string();
        let all = [
            AttemptOutcome::Running,
            AttemptOutcome::Succeeded,
            AttemptOutcome::Failed(e()),
            AttemptOutcome::TimedOut,
            AttemptOutcome::WorkerLost(e()),
            AttemptOutcome::Duplicate,
            AttemptOutcome::OutputLost(e()),
            AttemptOutcome::InputLost(e()),
            AttemptOutcome::Abandoned,
        ];
        for (outcome, name) in all.iter().zip(AttemptOutcome::NAMES) {
            let json = serde_json::to_value(outcome).unwrap();
            assert_eq!(json["outcome"], name);
            assert_eq!(outcome.name(), name);
            assert_eq!(outcome.error(), json.get("error").and_then(|v| v.as_str()));
        }
        for kind in [TaskKind::Map, TaskKind::Reduce] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
    }

    #[test]
    fn workers_that_come_and_go_idle_do_not_grow_the_table_without_bound() {
        let t0 = Instant::now();
        let (mut s, mut st) = job(2, 1, t0);
        let (task, attempt) = assign(&mut s, &mut st, "worker", t0);
        s.complete(task, attempt, vec![], t0);
        st.attempt_succeeded(task, attempt, Counters::default(), t0);
        st.worker_disconnected("worker");
        st.worker_seen("connected", None, t0);
        for i in 0..20_000u64 {
            let id = format!("visitor-{i:05}");
            st.worker_seen(&id, None, t0 + Duration::from_millis(i));
            st.worker_disconnected(&id);
        }
        let ids: Vec<String> = st.report(&s, t0).workers.into_iter().map(|w| w.id).collect();
        assert_eq!(ids.len(), MAX_IDLE_GONE_WORKERS + 2);
        // The worker that did a task and the connected one stay; of the
        // visitors, the latest are kept.
        assert!(ids.contains(&"worker".to_string()) && ids.contains(&"connected".to_string()));
        assert!(ids.contains(&"visitor-19999".to_string()) && !ids.contains(&"visitor-00000".to_string()));
    }

    #[test]
    fn workers_are_alive_while_heard_from_and_connected() {
        let t0 = Instant::now();
        let (mut s, mut st) = job(2, 1, t0);
        let (task, attempt) = assign(&mut s, &mut st, "busy", t0);
        st.worker_seen("idle", None, t0);
        st.worker_seen("crashed", None, t0);
        let alive =
            |st: &JobStatus, s: &Scheduler, at| -> Vec<(String, bool)> { st.report(s, at).workers.into_iter().map(|w| (w.id, w.alive)).collect() };
        let yes = |name: &str, alive: bool| (name.to_string(), alive);
        assert_eq!(alive(&st, &s, t0), [yes("busy", true), yes("crashed", true), yes("idle", true)]);
        st.worker_disconnected("crashed");
        assert_eq!(alive(&st, &s, t0), [yes("busy", true), yes("crashed", false), yes("idle", true)]);
        // A silent worker is gone even while it holds a task.
        let much_later = t0 + 3 * TIMEOUT;
        assert_eq!(alive(&st, &s, much_later), [yes("busy", false), yes("crashed", false), yes("idle", false)]);
        let lost = s.expire(much_later);
        assert_eq!((lost[0].task, lost[0].attempt), (task, attempt));
        st.attempt_lost(task, attempt, lost[0].loss, much_later);
        let report = st.report(&s, much_later);
        assert_eq!(report.tasks[0].attempts[0].outcome, AttemptOutcome::WorkerLost("its worker was silent for 30.0 s".into()));
        assert!(report.workers[0].current.is_empty());
        st.worker_seen("idle", None, much_later);
        assert!(st.report(&s, much_later).workers[2].alive, "heard from again");
        st.worker_exited("idle");
        assert!(!st.report(&s, much_later).workers[2].alive, "told to exit");
    }
}
