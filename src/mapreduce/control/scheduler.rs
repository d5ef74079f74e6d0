//! The coordinator's scheduling logic: a plain state machine with no I/O.
//!
//! [`Scheduler`] holds the task table and the workers' liveness, and decides
//! what each worker does. Every method is synchronous and takes the current
//! `Instant` where time matters, so tests drive it without sockets or
//! sleeping; the tarpc shell in [`crate::coordinator`] locks it, calls one
//! method, and answers.
//!
//! Each task is in one state:
//!
//! ```text
//!            assign                     complete (first report wins)
//!   Idle ───────────────► Running ─────────────────────────────► Done
//!    ▲                    │    ▲ │
//!    │                    │    └─┘ backup: a second attempt of a straggler
//!    └── fail / expire / ─┘  its last running attempt ends unsuccessfully;
//!        worker lost          the job fails once a task has max_task_attempts of them
//!   Done(map) ──── map output lost (reported by a reduce) ────► Idle
//! ```
//!
//! Rules that keep the output exact:
//! - Reduce tasks are assigned only while every map task is Done.
//! - Any attempt ever issued for a task may complete it, as long as the task
//!   is not Done yet: a slow worker whose attempt timed out still finishes
//!   useful work. Once Done, later reports are ignored, so a stale worker can
//!   never replace a finished output.
//!
//! Liveness, as in Hadoop: workers send heartbeats with the progress of their
//! running attempts. An attempt is given up when its worker has been silent
//! for the task timeout (a crashed, stopped or cut-off worker), when its
//! worker's connection closes, or when it has made no progress for the task
//! timeout (a stalled task on a live worker). A task that keeps making
//! progress is never taken away for being slow. An attempt that fails,
//! stalls, or whose task process crashes counts toward the task's bound, so
//! a record that crashes every attempt that reads it stops the job instead
//! of being retried forever; an attempt lost with its worker (the process
//! or the machine gone) does not, as Hadoop counts it KILLED rather than
//! FAILED, so that a cluster losing machines still finishes its jobs.
//!
//! Backups, as in Google's MapReduce: once no task of a phase waits for a
//! worker, a worker that asks for work may get a second attempt of the
//! phase's worst straggler (see [`crate::backup`] for when a task is one).
//! Both attempts run; the first to finish wins, and the other's report is
//! ignored like any late one.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::backup::BackupPolicy;
use crate::map_output::MapOutputLocation;
use crate::rpc::{Assignment, AttemptId, AttemptProgress, InputSplit, JobEnd, MapTask, ReduceTask, TaskId, WorkerId};
use crate::skipping::{read_cursor, BadRecord, SkipPlan};

/// A task whose attempts are lost with their workers this many times
/// `max_task_attempts` stops the job: such losses do not count toward the
/// bound (Hadoop's KILLED), but a task that takes its machine down every
/// time must not be retried forever.
pub const KILLED_ATTEMPTS_FACTOR: u32 = 3;

/// Attempt ids a coordinator may issue before they would meet those of the
/// next coordinator started on the same job (see [`Scheduler::start_epoch`]).
pub const ATTEMPTS_PER_EPOCH: AttemptId = 1_000_000_000;

/// The scheduler's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerConfig {
    /// How long a worker may be silent, or an attempt make no progress,
    /// before the attempt is given up and its task given to another worker
    /// (the lab's 10 s).
    pub task_timeout: Duration,
    /// Attempts of one task that may end without success (failed, timed
    /// out, lost with their worker) before the job stops. Hadoop's default
    /// is 4.
    pub max_task_attempts: u32,
    /// When stragglers get backup attempts; `None` for never.
    pub backups: Option<BackupPolicy>,
    /// Bad records each task may skip (0: none, the default): a record
    /// two attempts died on is skipped by the later ones (see
    /// [`crate::skipping`]).
    pub skip_bad_records: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { task_timeout: Duration::from_secs(10), max_task_attempts: 4, backups: Some(BackupPolicy::default()), skip_bad_records: 0 }
    }
}

/// The state of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting for a worker.
    Idle,
    /// Given to a worker: the attempts running now, the first one first
    /// (more than one when a straggler has a backup); never empty.
    Running(Vec<RunningAttempt>),
    /// Finished.
    Done {
        /// The attempt whose result was kept.
        attempt: AttemptId,
    },
}

/// Who an attempt was given to: a worker id and the incarnation (the
/// random number its process drew, see [`crate::handshake`]) of the
/// process that held the id. Only that process may report the attempt: a
/// later process that takes the same id (the worker restarted, or an
/// impostor while the worker is away) is another owner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    /// The worker id.
    pub worker: WorkerId,
    /// Its process's incarnation.
    pub incarnation: Incarnation,
}

/// A process's incarnation, as its handshake gives it.
pub type Incarnation = [u8; 16];

impl Owner {
    /// `worker`'s process `incarnation`.
    pub fn new(worker: &str, incarnation: Incarnation) -> Owner {
        Owner { worker: worker.to_owned(), incarnation }
    }
}

/// An attempt the scheduler gave out, with its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GivenAttempt {
    attempt: AttemptId,
    /// `None` for an attempt restored from a journal that did not name its
    /// owner: no report of it is ever taken.
    owner: Option<Owner>,
}

/// An attempt the scheduler counts as running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningAttempt {
    /// The attempt.
    pub attempt: AttemptId,
    /// Who runs it.
    pub worker: WorkerId,
    /// When it was assigned.
    pub started: Instant,
    /// The latest progress its worker reported (units only grow).
    pub progress: u64,
    /// When the attempt started or its progress last grew.
    pub last_progress: Instant,
    /// Whether it was started as the backup of a straggling attempt.
    pub backup: bool,
}

impl RunningAttempt {
    fn new(attempt: AttemptId, worker: &str, now: Instant, backup: bool) -> Self {
        RunningAttempt { attempt, worker: worker.to_owned(), started: now, progress: 0, last_progress: now, backup }
    }
}

/// Why an attempt was given up without a report from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptLoss {
    /// Its worker was alive but the attempt's progress did not grow for
    /// this long.
    NoProgress(Duration),
    /// Its worker sent nothing for this long (crashed, stopped, or cut
    /// off); at least half the task timeout.
    WorkerSilent(Duration),
    /// Its worker's connection to the coordinator closed.
    WorkerDisconnected,
}

impl AttemptLoss {
    /// Whether the attempt's worker is gone, rather than the attempt stuck.
    pub fn worker_lost(self) -> bool {
        !matches!(self, AttemptLoss::NoProgress(_))
    }
}

impl std::fmt::Display for AttemptLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptLoss::NoProgress(d) => write!(f, "made no progress for {:.1} s", d.as_secs_f64()),
            AttemptLoss::WorkerSilent(d) => write!(f, "its worker was silent for {:.1} s", d.as_secs_f64()),
            AttemptLoss::WorkerDisconnected => write!(f, "its worker's connection closed"),
        }
    }
}

/// An attempt the scheduler gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostAttempt {
    /// Its task, now Idle and queued to run again.
    pub task: TaskId,
    /// The attempt.
    pub attempt: AttemptId,
    /// The worker that ran it.
    pub worker: WorkerId,
    /// Why it was given up.
    pub loss: AttemptLoss,
}

/// One row of the task table.
#[derive(Debug, Clone)]
struct TaskEntry {
    state: TaskState,
    /// Every attempt issued for this task (by this coordinator, or by one
    /// before a restart, as its journal says), oldest first, with its owner.
    attempts: Vec<GivenAttempt>,
    /// Attempts that ended without success, each with how it ended, oldest
    /// first; an attempt is here at most once. Attempts that died on a
    /// record that is now skipped are taken off: they count no more.
    unsuccessful: Vec<(AttemptId, String)>,
    /// Every attempt that ended without success, including those taken off.
    ended_badly: Vec<AttemptId>,
    /// Records an attempt died on, not (yet) skipped, with the attempt.
    blamed: Vec<(BadRecord, AttemptId)>,
    /// Records later attempts skip.
    skipped: Vec<BadRecord>,
    /// For a done map: the workers whose reduces could not read the
    /// winning attempt's output, with the reduce attempt that said so.
    fetch_failures: Vec<(WorkerId, AttemptId)>,
    /// Attempts lost with their worker (not counted toward the bound),
    /// each with how it ended, for the message if they exhaust theirs.
    killed: Vec<(AttemptId, String)>,
}

impl TaskEntry {
    fn new() -> Self {
        TaskEntry {
            state: TaskState::Idle,
            attempts: Vec::new(),
            unsuccessful: Vec::new(),
            ended_badly: Vec::new(),
            blamed: Vec::new(),
            skipped: Vec::new(),
            fetch_failures: Vec::new(),
            killed: Vec::new(),
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.state, TaskState::Done { .. })
    }

    fn given(&self, attempt: AttemptId) -> Option<&GivenAttempt> {
        self.attempts.iter().find(|given| given.attempt == attempt)
    }

    fn worker_of(&self, attempt: AttemptId) -> &str {
        match self.given(attempt) {
            Some(GivenAttempt { owner: Some(owner), .. }) => &owner.worker,
            _ => "a worker of the coordinator before the restart",
        }
    }

    /// Notes `attempt`'s unsuccessful end unless it was noted already (an
    /// attempt given up for silence may report a failure later), counting
    /// it toward the bound when `counted`. Returns whether it was new.
    fn count_unsuccessful(&mut self, attempt: AttemptId, how: String, counted: bool) -> bool {
        if self.ended_badly.contains(&attempt) {
            return false;
        }
        let worker = self.worker_of(attempt).to_owned();
        let line = format!("attempt {attempt} on {worker} {how}");
        if counted {
            self.unsuccessful.push((attempt, line));
        } else {
            self.killed.push((attempt, line));
        }
        self.ended_badly.push(attempt);
        true
    }

    /// `attempt` died handling `record`. If another attempt died on it too
    /// and fewer than `limit` records are skipped, it is skipped from now
    /// on and both attempts count no more; returns whether it was.
    fn blame(&mut self, attempt: AttemptId, record: BadRecord, limit: u32) -> bool {
        let earlier = self.blamed.iter().position(|(r, a)| r.id == record.id && *a != attempt);
        match earlier {
            Some(i) if (self.skipped.len() as u32) < limit => {
                let (_, other) = self.blamed.remove(i);
                self.unsuccessful.retain(|(a, _)| *a != attempt && *a != other);
                self.blamed.retain(|(r, _)| r.id != record.id);
                self.skipped.push(record);
                true
            }
            _ => {
                self.blamed.push((record, attempt));
                false
            }
        }
    }
}

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportVerdict {
    /// The report changed the task's state.
    Accepted,
    /// The task was already done; the report was ignored.
    AlreadyDone,
    /// The attempt was never issued for this task; the report was ignored.
    UnknownAttempt,
}

/// What a report that a map's output could not be read came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostOutput {
    /// The loss is confirmed: the map runs again, counted as a failure of
    /// its winning attempt when `counted` (its worker is alive).
    Rerun {
        /// Whether the loss counts toward the map's bound.
        counted: bool,
    },
    /// Not confirmed yet: the reduce runs again and the map's output
    /// stays; when `reduce_counted`, the reporter had said so before and
    /// its reduce attempt counts as unsuccessful.
    NotConfirmed {
        /// Whether the reduce attempt counts toward its bound.
        reduce_counted: bool,
    },
    /// The map is running again already.
    AlreadyRerunning,
}

/// Distinct workers that must report a map's output unreadable before it
/// is taken as lost while the map's worker is alive, given how many other
/// workers are alive: two, as one peer alone must not re-run or fail
/// maps, or one when the reporter is the only other worker.
pub fn reporters_needed(live_others: usize) -> usize {
    if live_others >= 2 {
        2
    } else {
        1
    }
}

/// Counts for progress logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Map tasks done / total.
    pub maps_done: usize,
    /// Number of map tasks.
    pub maps: usize,
    /// Reduce tasks done / total.
    pub reduces_done: usize,
    /// Number of reduce tasks.
    pub reduces: usize,
    /// Attempts currently running.
    pub running: usize,
}

/// The task table of one job.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    /// One map task per split.
    splits: Vec<InputSplit>,
    job_dir: PathBuf,
    maps: Vec<TaskEntry>,
    reduces: Vec<TaskEntry>,
    /// Map tasks that may be assigned, in order. May hold stale entries
    /// (a task completed by a late attempt, or queued twice); `assign` skips
    /// any entry whose task is not Idle when it reaches the front.
    idle_maps: VecDeque<TaskId>,
    /// Reduce tasks that may be assigned once every map is done; same rules.
    idle_reduces: VecDeque<TaskId>,
    /// Tasks in the Running state; few (at most one per busy worker slot).
    running: Vec<TaskId>,
    /// How long each map task this coordinator saw finish took, for
    /// judging stragglers.
    map_durations: Vec<Duration>,
    /// The same for reduce tasks.
    reduce_durations: Vec<Duration>,
    /// When each worker connected to the job was last heard from. A worker
    /// leaves when its connection closes and comes back when it calls again.
    workers: HashMap<WorkerId, Instant>,
    /// The winning attempt's runs, per map task.
    map_outputs: Vec<Vec<(u32, MapOutputLocation)>>,
    maps_done: usize,
    reduces_done: usize,
    next_attempt: AttemptId,
    /// This coordinator's first attempt id: lower ones were issued by a
    /// coordinator that ran the job before a restart.
    epoch_start: AttemptId,
    failure: Option<String>,
    /// Reads the record an attempt's cursor file shows (see [`crate::skipping`]).
    record_reader: RecordReader,
}

/// How the scheduler learns the record an attempt died on: a function of
/// the attempt's cursor file. The one I/O the scheduler is given, as a
/// function so that tests can stand in for the files.
pub struct RecordReader(Box<ReadRecord>);

/// Reads the record a cursor file at the given path shows, if any.
type ReadRecord = dyn Fn(&std::path::Path) -> Option<BadRecord> + Send;

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordReader")
    }
}

impl Scheduler {
    /// A job with one map task per input split and `reduces` reduce tasks,
    /// whose intermediate files go to `job_dir`.
    pub fn new(config: SchedulerConfig, splits: Vec<InputSplit>, reduces: u32, job_dir: PathBuf) -> Scheduler {
        assert!(reduces > 0, "a job needs at least one reduce task");
        let map_count = splits.len();
        Scheduler {
            config,
            splits,
            job_dir,
            maps: vec![TaskEntry::new(); map_count],
            reduces: vec![TaskEntry::new(); reduces as usize],
            idle_maps: (0..map_count as u32).map(TaskId::Map).collect(),
            idle_reduces: (0..reduces).map(TaskId::Reduce).collect(),
            running: Vec::new(),
            map_durations: Vec::new(),
            reduce_durations: Vec::new(),
            workers: HashMap::new(),
            map_outputs: vec![Vec::new(); map_count],
            maps_done: 0,
            reduces_done: 0,
            next_attempt: 1,
            epoch_start: 1,
            failure: None,
            record_reader: RecordReader(Box::new(read_cursor)),
        }
    }

    /// Reads the records attempts died on with `reader` (given a cursor
    /// path) instead of from the cursor files.
    pub fn with_record_reader(mut self, reader: impl Fn(&std::path::Path) -> Option<BadRecord> + Send + 'static) -> Scheduler {
        self.record_reader = RecordReader(Box::new(reader));
        self
    }

    /// Numbers this coordinator's attempts from
    /// `epoch × ATTEMPTS_PER_EPOCH + 1`, so that they differ from those of
    /// the `epoch` coordinators that ran the job before it (whose workers
    /// may still be finishing them, writing files named by their attempt
    /// ids).
    /// Reports of those attempts, from workers that stayed up through the
    /// restart, are taken like this coordinator's own.
    pub fn start_epoch(&mut self, epoch: u64) {
        self.next_attempt = epoch.saturating_mul(ATTEMPTS_PER_EPOCH).saturating_add(1);
        self.epoch_start = self.next_attempt;
    }

    /// Marks `task` done by `attempt` of an earlier coordinator, given to
    /// `owner` (`None` if the journal did not say), as its journal says; a
    /// map's runs are at `outputs`. Call before any assignment. False (and
    /// nothing changes) for a task this job does not have or has done
    /// already.
    ///
    /// A map whose runs only its worker serves needs that worker back: it
    /// is expected from now, and if it stays silent for the task timeout
    /// its maps run again (see [`Scheduler::forget_outputs_of`]).
    pub fn restore(&mut self, task: TaskId, attempt: AttemptId, owner: Option<Owner>, outputs: Vec<(u32, MapOutputLocation)>, now: Instant) -> bool {
        if self.get(task).is_none_or(TaskEntry::is_done) {
            return false;
        }
        if let Some(owner) = &owner {
            if outputs.iter().any(|(_, location)| location.only_served()) {
                self.workers.entry(owner.worker.clone()).or_insert(now);
            }
        }
        self.note_given(task, attempt, owner);
        self.mark_done(task, attempt, outputs);
        true
    }

    /// Notes that an earlier coordinator gave `attempt` of `task` to
    /// `owner`, as its journal says, so that the attempt's report is taken
    /// from that process if it stayed up through the restart. False for a
    /// task this job does not have, or an attempt it knows already.
    pub fn restore_given(&mut self, task: TaskId, attempt: AttemptId, owner: Owner) -> bool {
        if self.get(task).is_none() || attempt >= self.epoch_start || self.entry(task).given(attempt).is_some() {
            return false;
        }
        self.note_given(task, attempt, Some(owner));
        true
    }

    fn note_given(&mut self, task: TaskId, attempt: AttemptId, owner: Option<Owner>) {
        let entry = self.entry_mut(task);
        if entry.given(attempt).is_none() {
            entry.attempts.push(GivenAttempt { attempt, owner });
        }
    }

    /// Stops the job with `message` (unless it already failed), as when
    /// its finished outputs cannot be published.
    pub fn abort(&mut self, message: String) {
        self.failure.get_or_insert(message);
    }

    /// How the job ended, once it has.
    pub fn job_end(&self) -> Option<JobEnd> {
        if let Some(message) = &self.failure {
            Some(JobEnd::Failed(message.clone()))
        } else if self.reduces_done == self.reduces.len() {
            Some(JobEnd::Succeeded)
        } else {
            None
        }
    }

    /// Progress counts.
    pub fn progress(&self) -> Progress {
        Progress {
            maps_done: self.maps_done,
            maps: self.maps.len(),
            reduces_done: self.reduces_done,
            reduces: self.reduces.len(),
            running: self.running.len(),
        }
    }

    /// The state of a task (for tests and status reporting).
    pub fn state(&self, task: TaskId) -> &TaskState {
        &self.entry(task).state
    }

    /// The input split of map task `m`.
    pub fn split(&self, m: u32) -> &InputSplit {
        &self.splits[m as usize]
    }

    /// Workers heard from within the task timeout whose connection is open.
    pub fn live_workers(&self, now: Instant) -> usize {
        self.workers.values().filter(|&&heard| now.saturating_duration_since(heard) < self.config.task_timeout).count()
    }

    /// A call from `worker` arrived: it is alive.
    pub fn heard_from(&mut self, worker: &str, now: Instant) {
        match self.workers.get_mut(worker) {
            Some(heard) => *heard = now,
            None => {
                self.workers.insert(worker.to_owned(), now);
            }
        }
    }

    /// A heartbeat from `owner`'s process with the progress of its running
    /// attempts. An attempt whose units grew has made progress now; only
    /// the attempt's own process can say so (another's word would keep a
    /// hung attempt alive). An attempt given out before a restart, reported
    /// by its process, is running again from now, under the same deadlines
    /// as any. Reports of attempts no longer running are ignored.
    pub fn heartbeat(&mut self, owner: &Owner, running: &[AttemptProgress], now: Instant) {
        self.heard_from(&owner.worker, now);
        for report in running {
            if self.owner_of(report.task, report.attempt) != Some(owner) {
                continue;
            }
            self.adopt_from_before_restart(report.task, report.attempt, &owner.worker, now);
            let Some(entry) = self.entries_mut(report.task).get_mut(index(report.task)) else { continue };
            let TaskState::Running(attempts) = &mut entry.state else { continue };
            if let Some(running) = attempts.iter_mut().find(|a| a.attempt == report.attempt) {
                if report.units > running.progress {
                    running.progress = report.units;
                    running.last_progress = now;
                }
            }
        }
    }

    /// Counts `attempt` of `task`, given out before a restart and still
    /// running on `worker`, as running, unless its task is done or it has
    /// ended (given up since).
    fn adopt_from_before_restart(&mut self, task: TaskId, attempt: AttemptId, worker: &str, now: Instant) {
        if attempt >= self.epoch_start {
            return;
        }
        let Some(entry) = self.entries_mut(task).get_mut(index(task)) else { return };
        if entry.ended_badly.contains(&attempt) {
            return;
        }
        match &mut entry.state {
            TaskState::Done { .. } => {}
            TaskState::Running(attempts) => {
                if !attempts.iter().any(|a| a.attempt == attempt) {
                    attempts.push(RunningAttempt::new(attempt, worker, now, false));
                }
            }
            state @ TaskState::Idle => {
                *state = TaskState::Running(vec![RunningAttempt::new(attempt, worker, now, false)]);
                self.running.push(task);
            }
        }
    }

    /// Which of the attempts `owner`'s process reports running no longer
    /// matter: not its own, their task is done (another attempt won), this
    /// coordinator gave them up, or nobody gave them out.
    pub fn abandoned(&self, owner: &Owner, running: &[AttemptProgress]) -> Vec<AttemptId> {
        running
            .iter()
            .filter(|report| match self.get(report.task) {
                None => true,
                Some(entry) if entry.is_done() || entry.given(report.attempt).is_none() => true,
                Some(_) if self.owner_of(report.task, report.attempt) != Some(owner) => true,
                Some(_) => !self.running_attempts(report.task).iter().any(|a| a.attempt == report.attempt),
            })
            .map(|report| report.attempt)
            .collect()
    }

    /// `attempt` of `task` is making progress now, as the coordinator sees
    /// for itself (it is fetching the attempt's output).
    pub fn note_progress(&mut self, task: TaskId, attempt: AttemptId, now: Instant) {
        let Some(entry) = self.entries_mut(task).get_mut(index(task)) else { return };
        if let TaskState::Running(attempts) = &mut entry.state {
            if let Some(running) = attempts.iter_mut().find(|a| a.attempt == attempt) {
                running.last_progress = now;
            }
        }
    }

    /// `worker`'s connection closed: it is gone, and the attempts it was
    /// running are given up at once (counted as unsuccessful) rather than
    /// after the timeout. A worker that calls again is welcome back, and an
    /// attempt it reports late may still complete its task.
    pub fn worker_disconnected(&mut self, worker: &str) -> Vec<LostAttempt> {
        self.workers.remove(worker);
        self.give_up_where(|w, _| (w == worker).then_some(AttemptLoss::WorkerDisconnected))
    }

    /// When `expire` next has something to do: the earliest moment a
    /// running attempt's worker or progress has been silent for the timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.running
            .iter()
            .flat_map(|&t| self.running_attempts(t))
            .map(|a| {
                let heard = self.workers.get(&a.worker).copied().unwrap_or(a.last_progress);
                heard.min(a.last_progress) + self.config.task_timeout
            })
            .min()
    }

    /// Gives up every attempt whose worker has been silent, or which has
    /// made no progress, for the task timeout: its task becomes Idle and goes
    /// to the front of the queue, so it is re-run before new work. Each
    /// given-up attempt counts toward its task's bound.
    pub fn expire(&mut self, now: Instant) -> Vec<LostAttempt> {
        let timeout = self.config.task_timeout;
        let workers = std::mem::take(&mut self.workers);
        let lost = self.give_up_where(|worker, last_progress| {
            // A worker unknown here has closed its connection and was given up already.
            let silence = workers.get(worker).map_or(timeout, |&heard| now.saturating_duration_since(heard));
            if silence >= timeout {
                Some(AttemptLoss::WorkerSilent(silence))
            } else if now.saturating_duration_since(last_progress) >= timeout {
                // A live worker sends a heartbeat every quarter of the
                // timeout; one silent for half of it is the likelier cause
                // of the stall than its attempt.
                Some(if silence >= timeout / 2 { AttemptLoss::WorkerSilent(silence) } else { AttemptLoss::NoProgress(timeout) })
            } else {
                None
            }
        });
        self.workers = workers;
        lost
    }

    /// Gives up each running attempt for which `loss(worker, last_progress)`
    /// says why.
    fn give_up_where(&mut self, loss: impl Fn(&str, Instant) -> Option<AttemptLoss>) -> Vec<LostAttempt> {
        let mut lost = Vec::new();
        for task in self.running.clone() {
            let given_up: Vec<(AttemptId, WorkerId, AttemptLoss)> = self
                .running_attempts(task)
                .iter()
                .filter_map(|a| loss(&a.worker, a.last_progress).map(|why| (a.attempt, a.worker.clone(), why)))
                .collect();
            for (attempt, worker, why) in given_up {
                // Re-run before new work once no attempt of it is left.
                self.stop_running(task, attempt, true);
                let how = if why.worker_lost() { format!("was lost: {why}") } else { format!("timed out: {why}") };
                self.end_unsuccessfully(task, attempt, how, None, !why.worker_lost());
                lost.push(LostAttempt { task, attempt, worker, loss: why });
            }
        }
        lost
    }

    /// Map tasks whose winning output only `worker` served, made Idle to
    /// run again, since it is gone and a reduce still needs them (Google
    /// MapReduce's section 3.3: completed maps of a failed worker are
    /// re-executed). Maps whose output is also in the shared job directory,
    /// or that had none, are kept. Not counted toward the tasks' bounds:
    /// the maps did not fail. Returns each map with its lost attempt.
    pub fn forget_outputs_of(&mut self, worker: &str) -> Vec<(u32, AttemptId)> {
        if self.reduces_done == self.reduces.len() {
            return Vec::new();
        }
        let mut forgotten = Vec::new();
        for m in 0..self.maps.len() {
            let TaskState::Done { attempt } = self.maps[m].state else { continue };
            let outputs = &self.map_outputs[m];
            let lost = !outputs.is_empty() && outputs.iter().all(|(_, location)| location.only_served());
            let owned = matches!(self.maps[m].given(attempt), Some(GivenAttempt { owner: Some(owner), .. }) if owner.worker == worker);
            if lost && owned {
                self.maps[m].state = TaskState::Idle;
                self.maps_done -= 1;
                self.map_outputs[m].clear();
                self.enqueue(TaskId::Map(m as u32), true);
                forgotten.push((m as u32, attempt));
            }
        }
        forgotten
    }

    /// Workers silent for the task timeout at `now`, heard from before.
    pub fn silent_workers(&self, now: Instant) -> Vec<WorkerId> {
        let timeout = self.config.task_timeout;
        self.workers.iter().filter(|(_, &heard)| now.saturating_duration_since(heard) >= timeout).map(|(w, _)| w.clone()).collect()
    }

    /// Decides what `owner`'s worker does next. Call `expire` first so
    /// that overdue tasks are reassignable.
    pub fn assign(&mut self, owner: &Owner, now: Instant) -> Assignment {
        let worker = owner.worker.as_str();
        if let Some(end) = self.job_end() {
            return Assignment::Exit(end);
        }
        self.heard_from(worker, now);
        let Some(task) = self.next_idle().or_else(|| self.next_backup(worker, now)) else { return Assignment::Wait };
        let attempt = self.next_attempt;
        self.next_attempt += 1;
        let entry = self.entry_mut(task);
        entry.attempts.push(GivenAttempt { attempt, owner: Some(owner.clone()) });
        match &mut entry.state {
            TaskState::Running(attempts) => attempts.push(RunningAttempt::new(attempt, worker, now, true)),
            state => {
                *state = TaskState::Running(vec![RunningAttempt::new(attempt, worker, now, false)]);
                self.running.push(task);
            }
        }
        self.task_spec(task, attempt)
    }

    /// The running attempts of `task` (none unless it is Running).
    pub fn running_attempts(&self, task: TaskId) -> &[RunningAttempt] {
        match self.get(task).map(|e| &e.state) {
            Some(TaskState::Running(attempts)) => attempts,
            _ => &[],
        }
    }

    /// Whether `attempt` of `task` runs as a backup of a straggler.
    pub fn is_backup(&self, task: TaskId, attempt: AttemptId) -> bool {
        self.running_attempts(task).iter().any(|a| a.attempt == attempt && a.backup)
    }

    /// The current phase's worst straggler that `worker` could back up: a
    /// task with one running attempt, on another worker, that has run past
    /// the backup policy's threshold; the longest-running first. Called only
    /// when no task of the phase is waiting.
    fn next_backup(&self, worker: &str, now: Instant) -> Option<TaskId> {
        let policy = self.config.backups?;
        let (in_map_phase, durations, done, tasks) = if self.maps_done < self.maps.len() {
            (true, &self.map_durations, self.maps_done, self.maps.len())
        } else {
            (false, &self.reduce_durations, self.reduces_done, self.reduces.len())
        };
        let threshold = policy.straggler_threshold(durations, done, tasks)?;
        self.running
            .iter()
            .filter(|task| matches!(task, TaskId::Map(_)) == in_map_phase)
            .filter_map(|&task| match self.running_attempts(task) {
                [only] if only.worker != worker => Some((now.saturating_duration_since(only.started), task)),
                _ => None,
            })
            .filter(|&(elapsed, _)| elapsed >= threshold)
            .max_by_key(|&(elapsed, _)| elapsed)
            .map(|(_, task)| task)
    }

    /// Takes `attempt` off `task`'s running attempts. When it was the last,
    /// the task becomes Idle and is queued again (at the front when
    /// `rerun_first`).
    fn stop_running(&mut self, task: TaskId, attempt: AttemptId, rerun_first: bool) {
        let entry = self.entry_mut(task);
        let TaskState::Running(attempts) = &mut entry.state else { return };
        attempts.retain(|a| a.attempt != attempt);
        if attempts.is_empty() {
            entry.state = TaskState::Idle;
            self.running.retain(|&t| t != task);
            self.enqueue(task, rerun_first);
        }
    }

    /// Pops the next assignable task: maps first; reduces only once every
    /// map is done.
    fn next_idle(&mut self) -> Option<TaskId> {
        let maps_finished = self.maps_done == self.maps.len();
        let queue = if maps_finished { &mut self.idle_reduces } else { &mut self.idle_maps };
        while let Some(task) = queue.pop_front() {
            let entry = match task {
                TaskId::Map(m) => &self.maps[m as usize],
                TaskId::Reduce(r) => &self.reduces[r as usize],
            };
            if entry.state == TaskState::Idle {
                return Some(task);
            }
        }
        None
    }

    /// Queues an Idle task: at the front to re-run it before new work, at the
    /// back to let other tasks go first.
    fn enqueue(&mut self, task: TaskId, front: bool) {
        let queue = match task {
            TaskId::Map(_) => &mut self.idle_maps,
            TaskId::Reduce(_) => &mut self.idle_reduces,
        };
        if front {
            queue.push_front(task)
        } else {
            queue.push_back(task)
        }
    }

    fn task_spec(&self, task: TaskId, attempt: AttemptId) -> Assignment {
        match task {
            TaskId::Map(m) => Assignment::Map(MapTask {
                index: m,
                attempt,
                input: self.splits[m as usize].clone(),
                reduces: self.reduces.len() as u32,
                job_dir: self.job_dir.clone(),
                skip: self.skip_plan(task, attempt),
            }),
            TaskId::Reduce(r) => Assignment::Reduce(ReduceTask {
                partition: r,
                attempt,
                runs: self
                    .map_outputs
                    .iter()
                    .enumerate()
                    .flat_map(|(m, outputs)| outputs.iter().filter(|(p, _)| *p == r).map(move |(_, loc)| (m as u32, loc.clone())))
                    .collect(),
                staged_output: self.staged_output(r, attempt),
                skip: self.skip_plan(task, attempt),
            }),
        }
    }

    /// Where reduce attempt `attempt` of partition `r` writes its output
    /// before the coordinator commits it.
    pub fn staged_output(&self, r: u32, attempt: AttemptId) -> PathBuf {
        self.job_dir.join(format!("out-{r}.attempt-{attempt}"))
    }

    /// Who `attempt` of `task` was given to (by this coordinator, or by
    /// one before a restart as its journal says); `None` for an attempt
    /// nobody was given, or whose owner is not known.
    pub fn owner_of(&self, task: TaskId, attempt: AttemptId) -> Option<&Owner> {
        self.get(task)?.given(attempt)?.owner.as_ref()
    }

    /// The winning attempt's runs of map task `m`, by partition (none
    /// unless it is done).
    pub fn map_runs(&self, m: u32) -> &[(u32, MapOutputLocation)] {
        self.map_outputs.get(m as usize).map_or(&[], Vec::as_slice)
    }

    /// The job directory, under which every map output must lie.
    pub fn job_dir(&self) -> &std::path::Path {
        &self.job_dir
    }

    /// Whether a completion report for this attempt would be accepted: an
    /// attempt issued for the task (by this coordinator, or by one before a
    /// restart, as its journal says) while the task is not done. The
    /// coordinator asks before committing a reduce's output, so that only
    /// the winning attempt is ever renamed into place. Who may report the
    /// attempt is the caller's check (see [`Scheduler::owner_of`]).
    pub fn would_accept_completion(&self, task: TaskId, attempt: AttemptId) -> ReportVerdict {
        let Some(entry) = self.get(task) else { return ReportVerdict::UnknownAttempt };
        if entry.given(attempt).is_none() {
            ReportVerdict::UnknownAttempt
        } else if entry.is_done() {
            ReportVerdict::AlreadyDone
        } else {
            ReportVerdict::Accepted
        }
    }

    /// Records that `attempt` finished `task`. For a map task, `outputs` are
    /// its runs; for a reduce task, the caller has already committed the
    /// output (and passes no outputs).
    /// Other attempts still running are left to finish; their reports will
    /// be ignored.
    pub fn complete(&mut self, task: TaskId, attempt: AttemptId, outputs: Vec<(u32, MapOutputLocation)>, now: Instant) -> ReportVerdict {
        let verdict = self.would_accept_completion(task, attempt);
        if verdict != ReportVerdict::Accepted {
            return verdict;
        }
        if let Some(winner) = self.running_attempts(task).iter().find(|a| a.attempt == attempt) {
            let took = now.saturating_duration_since(winner.started);
            match task {
                TaskId::Map(_) => self.map_durations.push(took),
                TaskId::Reduce(_) => self.reduce_durations.push(took),
            }
        }
        self.running.retain(|&t| t != task);
        self.mark_done(task, attempt, outputs);
        ReportVerdict::Accepted
    }

    fn mark_done(&mut self, task: TaskId, attempt: AttemptId, outputs: Vec<(u32, MapOutputLocation)>) {
        let entry = self.entry_mut(task);
        entry.state = TaskState::Done { attempt };
        entry.fetch_failures.clear();
        match task {
            TaskId::Map(m) => {
                self.map_outputs[m as usize] = outputs;
                self.maps_done += 1;
            }
            TaskId::Reduce(_) => self.reduces_done += 1,
        }
    }

    /// Records that `attempt` of `task` failed with `error`. The task is
    /// retried unless it has now ended unsuccessfully `max_task_attempts`
    /// times, which stops the job.
    pub fn fail(&mut self, task: TaskId, attempt: AttemptId, error: &str) -> ReportVerdict {
        self.fail_on_record(task, attempt, error, None)
    }

    /// As [`Scheduler::fail`], for an attempt whose worker says which
    /// record it was handling when it ended (`None`: the scheduler reads
    /// the attempt's cursor file, if it can see it).
    pub fn fail_on_record(&mut self, task: TaskId, attempt: AttemptId, error: &str, record: Option<BadRecord>) -> ReportVerdict {
        let verdict = self.would_accept_completion(task, attempt);
        if verdict != ReportVerdict::Accepted {
            return verdict;
        }
        // Only the failure of a running attempt can free the task; an older
        // attempt failing says nothing about those now running.
        self.stop_running(task, attempt, false);
        self.count_unsuccessful(task, attempt, format!("failed: {error}"), record);
        ReportVerdict::Accepted
    }

    /// Counts an unsuccessful end of `attempt` against `task`, stopping the
    /// job once the task has `max_task_attempts` of them. When the job
    /// skips bad records and the attempt died handling one, the record is
    /// blamed, and skipped once two attempts have died on it.
    fn count_unsuccessful(&mut self, task: TaskId, attempt: AttemptId, how: String, reported: Option<BadRecord>) {
        self.end_unsuccessfully(task, attempt, how, reported, true);
    }

    /// Notes an unsuccessful end of `attempt` of `task`; counts it toward
    /// the bound (see [`Scheduler::count_unsuccessful`]) only when
    /// `counted`. An attempt lost with its worker is not counted, as
    /// Hadoop counts it KILLED rather than FAILED: tasks run in processes
    /// of their own (see [`crate::worker`]), so a task that crashes ends
    /// as a failure, and a worker lost is the machine's fault, not the
    /// task's. The record it was handling is blamed all the same.
    fn end_unsuccessfully(&mut self, task: TaskId, attempt: AttemptId, how: String, reported: Option<BadRecord>, counted: bool) {
        let limit = self.config.skip_bad_records;
        let reported_by_worker = reported.is_some();
        // A record is blamed only for an attempt that failed or hung, not
        // for one whose machine went away while it held the record.
        let record = if limit > 0 && counted { reported.or_else(|| (self.record_reader.0)(&self.cursor_path(task, attempt))) } else { None };
        let max_killed = self.config.max_task_attempts.saturating_mul(KILLED_ATTEMPTS_FACTOR);
        let entry = self.entry_mut(task);
        if !entry.count_unsuccessful(attempt, how, counted) {
            // Ended already (given up for a stall): the record its worker
            // reports now, read from a cursor the coordinator could not
            // see, is still blamed, once.
            if let Some(record) = record.filter(|_| reported_by_worker && !entry.killed.iter().any(|(killed, _)| *killed == attempt)) {
                let known = entry.blamed.iter().any(|(_, a)| *a == attempt);
                if !known && !entry.skipped.iter().any(|r| r.id == record.id) {
                    entry.blame(attempt, record, limit);
                }
            }
            return;
        }
        if !counted {
            // Lost with its worker: no bound, unless it keeps happening to
            // this task alone (one that takes its machine down each time).
            if entry.killed.len() as u32 >= max_killed {
                let lines: Vec<&str> = entry.killed.iter().map(|(_, line)| line.as_str()).collect();
                let message = format!("{task} lost {} attempts with their workers: {}", entry.killed.len(), lines.join("; "));
                self.failure.get_or_insert(message);
            }
            return;
        }
        if let Some(record) = record {
            if entry.blame(attempt, record, limit) {
                return;
            }
        }
        if entry.unsuccessful.len() as u32 >= self.config.max_task_attempts && self.failure.is_none() {
            self.failure = Some(self.failure_message(task));
        }
    }

    /// Where `attempt` of `task` keeps its cursor, if it tracks records.
    fn cursor_path(&self, task: TaskId, attempt: AttemptId) -> PathBuf {
        match task {
            TaskId::Map(m) => self.job_dir.join(format!("map-{m}.attempt-{attempt}.cursor")),
            TaskId::Reduce(r) => self.job_dir.join(format!("out-{r}.attempt-{attempt}.cursor")),
        }
    }

    /// What a new attempt of `task` is told about bad records: nothing
    /// unless the job skips them; for a map, nothing until two attempts
    /// ended without success (then it reads line by line).
    fn skip_plan(&self, task: TaskId, attempt: AttemptId) -> Option<SkipPlan> {
        let entry = self.entry(task);
        let tracked = match task {
            TaskId::Map(_) => entry.ended_badly.len() >= 2,
            TaskId::Reduce(_) => true,
        };
        if self.config.skip_bad_records == 0 || !tracked {
            return None;
        }
        let mut skip: Vec<u64> = entry.skipped.iter().map(|r| r.id).collect();
        skip.sort_unstable();
        Some(SkipPlan { cursor: self.cursor_path(task, attempt), skip })
    }

    /// The records `task`'s attempts skip, as the summary shows them.
    pub fn skipped_records(&self, task: TaskId) -> Vec<String> {
        let file = match task {
            TaskId::Map(m) => Some(self.splits[m as usize].file.name.as_str()),
            TaskId::Reduce(_) => None,
        };
        self.entry(task).skipped.iter().map(|record| record.describe(file)).collect()
    }

    /// Records that reduce attempt `attempt` could not read map task
    /// `map_task`'s output. The reduce goes back to the queue without a
    /// failure counted against it. The map runs again only once its output
    /// is confirmed lost, as Hadoop's fetch-failure rule has it, so that
    /// one peer alone can neither re-run finished maps at will nor fail the
    /// job: the coordinator saw so itself (`coordinator_confirms`: a file in
    /// the job directory is missing or short), the map's worker is gone, the
    /// map's own worker cannot read it, or enough distinct workers reported
    /// it (see [`reporters_needed`]). A lost output counts as a failure of
    /// the map only while its worker is alive (it served a bad output); an
    /// output lost with its worker counts against nothing. A worker that
    /// reports the same unconfirmed loss twice has its reduce attempt
    /// counted as unsuccessful instead, so that a reducer that cannot reach
    /// a map's worker that others reach does not retry forever.
    pub fn map_output_lost(
        &mut self,
        task: TaskId,
        attempt: AttemptId,
        map_task: u32,
        error: &str,
        coordinator_confirms: bool,
        now: Instant,
    ) -> (ReportVerdict, Option<LostOutput>) {
        if !matches!(task, TaskId::Reduce(_)) || map_task as usize >= self.maps.len() {
            return (ReportVerdict::UnknownAttempt, None);
        }
        let verdict = self.would_accept_completion(task, attempt);
        if verdict != ReportVerdict::Accepted {
            return (verdict, None);
        }
        self.stop_running(task, attempt, false);
        let m = map_task as usize;
        let TaskState::Done { attempt: winner } = self.maps[m].state else { return (ReportVerdict::Accepted, Some(LostOutput::AlreadyRerunning)) };
        let reporter = self.entry(task).worker_of(attempt).to_owned();
        let server = self.maps[m].given(winner).and_then(|given| given.owner.as_ref()).map(|owner| owner.worker.clone());
        let server_alive = server.as_deref().is_some_and(|server| self.is_alive(server, now));
        let needed = reporters_needed(self.live_workers_besides(server.as_deref(), now));
        let map = &mut self.maps[m];
        if map.fetch_failures.contains(&(reporter.clone(), attempt)) {
            // The same report again (its answer was late): said already.
            return (ReportVerdict::Accepted, Some(LostOutput::NotConfirmed { reduce_counted: false }));
        }
        let repeated = map.fetch_failures.iter().any(|(w, _)| *w == reporter);
        map.fetch_failures.push((reporter.clone(), attempt));
        let reporters = {
            let mut workers: Vec<&WorkerId> = map.fetch_failures.iter().map(|(w, _)| w).collect();
            workers.sort();
            workers.dedup();
            workers.len()
        };
        let confirmed = coordinator_confirms || !server_alive || server.as_deref() == Some(reporter.as_str()) || reporters >= needed;
        if !confirmed {
            if repeated {
                let how = format!("could not read map task {map_task}'s output, which other workers have not reported lost: {error}");
                self.count_unsuccessful(task, attempt, how, None);
            }
            return (ReportVerdict::Accepted, Some(LostOutput::NotConfirmed { reduce_counted: repeated }));
        }
        map.state = TaskState::Idle;
        self.maps_done -= 1;
        self.map_outputs[m].clear();
        self.enqueue(TaskId::Map(map_task), true);
        if server_alive {
            self.count_unsuccessful(TaskId::Map(map_task), winner, format!("lost its output: {error}"), None);
        }
        (ReportVerdict::Accepted, Some(LostOutput::Rerun { counted: server_alive }))
    }

    /// Whether `worker` is connected and was heard from within half the
    /// task timeout (it sends heartbeats every quarter of it).
    fn is_alive(&self, worker: &str, now: Instant) -> bool {
        self.workers.get(worker).is_some_and(|&heard| now.saturating_duration_since(heard) < self.config.task_timeout / 2)
    }

    /// Workers alive at `now` other than `server`.
    fn live_workers_besides(&self, server: Option<&str>, now: Instant) -> usize {
        self.workers.keys().filter(|w| Some(w.as_str()) != server && self.is_alive(w, now)).count()
    }

    /// The job's error when `task` has run out of attempts: the task, its
    /// input, and how each attempt ended.
    fn failure_message(&self, task: TaskId) -> String {
        let input = match task {
            TaskId::Map(m) => format!("input {}", self.splits[m as usize]),
            TaskId::Reduce(r) => format!("partition {r}"),
        };
        let entry = self.entry(task);
        let ends: Vec<&str> = entry.unsuccessful.iter().map(|(_, how)| how.as_str()).collect();
        let attempts = if ends.len() == 1 { "attempt" } else { "attempts" };
        format!("{task} ({input}) did not succeed in {} {attempts}: {}", ends.len(), ends.join("; "))
    }

    fn get(&self, task: TaskId) -> Option<&TaskEntry> {
        self.entries(task).get(index(task))
    }

    fn entries_mut(&mut self, task: TaskId) -> &mut [TaskEntry] {
        match task {
            TaskId::Map(_) => &mut self.maps,
            TaskId::Reduce(_) => &mut self.reduces,
        }
    }

    fn entries(&self, task: TaskId) -> &[TaskEntry] {
        match task {
            TaskId::Map(_) => &self.maps,
            TaskId::Reduce(_) => &self.reduces,
        }
    }

    fn entry(&self, task: TaskId) -> &TaskEntry {
        &self.entries(task)[index(task)]
    }

    fn entry_mut(&mut self, task: TaskId) -> &mut TaskEntry {
        match task {
            TaskId::Map(m) => &mut self.maps[m as usize],
            TaskId::Reduce(r) => &mut self.reduces[r as usize],
        }
    }
}

fn index(task: TaskId) -> usize {
    match task {
        TaskId::Map(i) | TaskId::Reduce(i) => i as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::InputFile;
    use crate::runfile::RunRange;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// `worker`'s one process.
    fn owner(worker: &str) -> Owner {
        Owner::new(worker, [0; 16])
    }

    fn inputs(n: usize) -> Vec<InputSplit> {
        (0..n)
            .map(|i| InputSplit::whole(InputFile { name: format!("in-{i}"), path: PathBuf::from(format!("/data/in-{i}")), size: 10, modified: None }))
            .collect()
    }

    fn scheduler(maps: usize, reduces: u32) -> Scheduler {
        let config = SchedulerConfig { task_timeout: TIMEOUT, max_task_attempts: 3, backups: None, skip_bad_records: 0 };
        Scheduler::new(config, inputs(maps), reduces, PathBuf::from("/job"))
    }

    fn scheduler_with_backups(maps: usize, reduces: u32) -> Scheduler {
        let config = SchedulerConfig { task_timeout: TIMEOUT, max_task_attempts: 3, backups: Some(BackupPolicy::default()), skip_bad_records: 0 };
        Scheduler::new(config, inputs(maps), reduces, PathBuf::from("/job"))
    }

    fn location(m: u32, r: u32) -> MapOutputLocation {
        MapOutputLocation::SharedFile { path: PathBuf::from(format!("/job/map-{m}.runs")), range: RunRange { offset: u64::from(r) * 100, len: 100 } }
    }

    /// Assigns and expects a map task; returns (index, attempt).
    fn take_map(s: &mut Scheduler, worker: &str, now: Instant) -> (u32, AttemptId) {
        match s.assign(&owner(worker), now) {
            Assignment::Map(t) => (t.index, t.attempt),
            other => panic!("expected a map task for {worker}, got {other:?}"),
        }
    }

    /// The running attempts of `task` and their workers.
    fn running(s: &Scheduler, task: TaskId) -> Vec<(AttemptId, &str)> {
        s.running_attempts(task).iter().map(|a| (a.attempt, a.worker.as_str())).collect()
    }

    fn take_reduce(s: &mut Scheduler, worker: &str, now: Instant) -> ReduceTask {
        match s.assign(&owner(worker), now) {
            Assignment::Reduce(t) => t,
            other => panic!("expected a reduce task for {worker}, got {other:?}"),
        }
    }

    fn served(m: u32, r: u32, shared: bool) -> MapOutputLocation {
        let shared_path = shared.then(|| PathBuf::from(format!("/job/map-{m}.runs")));
        MapOutputLocation::Served {
            server: format!("host-{m}:1"),
            attempt: u64::from(m),
            range: RunRange { offset: u64::from(r) * 100, len: 100 },
            shared_path,
        }
    }

    #[test]
    fn maps_whose_output_only_a_lost_worker_served_run_again_while_reduces_need_them() {
        let now = Instant::now();
        let mut s = scheduler(3, 1);
        let (_, a0) = take_map(&mut s, "gone", now);
        let (_, a1) = take_map(&mut s, "gone", now);
        let (_, a2) = take_map(&mut s, "stays", now);
        s.complete(TaskId::Map(0), a0, vec![(0, served(0, 0, false))], now);
        // In the shared job directory too: readable without its worker.
        s.complete(TaskId::Map(1), a1, vec![(0, served(1, 0, true))], now);
        s.complete(TaskId::Map(2), a2, vec![(0, served(2, 0, false))], now);
        assert_eq!(s.progress().maps_done, 3);
        assert_eq!(s.forget_outputs_of("gone"), vec![(0, a0)]);
        assert_eq!(s.progress().maps_done, 2);
        assert_eq!(s.forget_outputs_of("gone"), vec![], "forgotten once");
        // Map 0 runs again before any reduce, and does not count as a failure.
        let (m, again) = take_map(&mut s, "stays", now);
        assert_eq!(m, 0);
        s.complete(TaskId::Map(0), again, vec![(0, served(0, 0, false))], now);
        let r = take_reduce(&mut s, "stays", now);
        assert_eq!(s.entry(TaskId::Map(0)).unsuccessful, vec![]);
        s.complete(TaskId::Reduce(0), r.attempt, vec![], now);
        // Once every reduce is done, nothing needs the maps.
        assert_eq!(s.forget_outputs_of("stays"), vec![]);
    }

    #[test]
    fn attempts_given_up_or_beaten_are_abandoned() {
        let now = Instant::now();
        let mut s = scheduler(3, 1);
        let (_, a0) = take_map(&mut s, "w", now);
        let (_, a1) = take_map(&mut s, "w", now);
        let (_, a2) = take_map(&mut s, "w", now);
        s.complete(TaskId::Map(1), a1, vec![], now);
        s.fail(TaskId::Map(2), a2, "boom");
        let report = |task, attempt| AttemptProgress { task: TaskId::Map(task), attempt, units: 1 };
        let abandoned = s.abandoned(&owner("w"), &[report(0, a0), report(1, a1), report(2, a2)]);
        assert_eq!(abandoned, vec![a1, a2], "map 0's attempt still counts");
    }

    #[test]
    fn maps_first_then_reduces_then_exit() {
        let now = Instant::now();
        let mut s = scheduler(2, 2);
        let (m0, a0) = take_map(&mut s, "w1", now);
        let (m1, a1) = take_map(&mut s, "w2", now);
        assert_eq!((m0, m1), (0, 1));
        // Every map is running: nothing to hand out, and no reduce may start.
        assert_eq!(s.assign(&owner("w3"), now), Assignment::Wait);
        assert_eq!(s.complete(TaskId::Map(0), a0, vec![(0, location(0, 0)), (1, location(0, 1))], now), ReportVerdict::Accepted);
        assert_eq!(s.assign(&owner("w3"), now), Assignment::Wait, "a reduce must wait for every map");
        assert_eq!(s.complete(TaskId::Map(1), a1, vec![(1, location(1, 1))], now), ReportVerdict::Accepted);

        let r0 = take_reduce(&mut s, "w1", now);
        assert_eq!(r0.partition, 0);
        assert_eq!(r0.runs, vec![(0, location(0, 0))]);
        let r1 = take_reduce(&mut s, "w2", now);
        assert_eq!(r1.runs, vec![(0, location(0, 1)), (1, location(1, 1))], "runs in map order");
        assert_ne!(r0.staged_output, r1.staged_output);
        assert_eq!(s.job_end(), None);
        s.complete(TaskId::Reduce(0), r0.attempt, vec![], now);
        s.complete(TaskId::Reduce(1), r1.attempt, vec![], now);
        assert_eq!(s.job_end(), Some(JobEnd::Succeeded));
        assert_eq!(s.assign(&owner("w1"), now), Assignment::Exit(JobEnd::Succeeded));
    }

    #[test]
    fn a_job_without_inputs_goes_straight_to_reduce() {
        let now = Instant::now();
        let mut s = scheduler(0, 1);
        let r = take_reduce(&mut s, "w", now);
        assert!(r.runs.is_empty());
        s.complete(TaskId::Reduce(0), r.attempt, vec![], now);
        assert_eq!(s.job_end(), Some(JobEnd::Succeeded));
    }

    #[test]
    fn an_attempt_without_progress_goes_to_another_worker_and_counts() {
        let start = Instant::now();
        let mut s = scheduler(2, 1);
        let (_, stalled) = take_map(&mut s, "slow", start);
        assert_eq!(s.next_deadline(), Some(start + TIMEOUT));
        // The worker is alive (heartbeats) but the attempt does not move.
        let almost = start + TIMEOUT - Duration::from_millis(1);
        s.heartbeat(&owner("slow"), &[progress(0, stalled, 0)], almost);
        assert!(s.expire(almost).is_empty(), "not yet overdue");
        let later = start + TIMEOUT;
        let lost = s.expire(later);
        assert_eq!(lost, vec![LostAttempt { task: TaskId::Map(0), attempt: 1, worker: "slow".into(), loss: AttemptLoss::NoProgress(TIMEOUT) }]);
        // The expired task is re-run before untouched ones.
        let (m, retry) = take_map(&mut s, "fresh", later);
        assert_eq!(m, 0);
        assert_ne!(retry, stalled);
        assert_eq!(running(&s, TaskId::Map(0)), vec![(retry, "fresh")]);
        assert_eq!(s.entry(TaskId::Map(0)).unsuccessful.len(), 1, "a timeout counts toward the bound");
    }

    fn progress(m: u32, attempt: AttemptId, units: u64) -> AttemptProgress {
        AttemptProgress { task: TaskId::Map(m), attempt, units }
    }

    #[test]
    fn an_attempt_that_keeps_making_progress_is_never_taken_away() {
        let start = Instant::now();
        let mut s = scheduler(1, 1);
        let (_, attempt) = take_map(&mut s, "busy", start);
        // Progress every 6 s for a minute: far past the timeout, never lost.
        for step in 1..=10u32 {
            let now = start + Duration::from_secs(6 * u64::from(step));
            s.heartbeat(&owner("busy"), &[progress(0, attempt, u64::from(step))], now);
            assert!(s.expire(now).is_empty(), "step {step}");
            assert_eq!(s.next_deadline(), Some(now + TIMEOUT));
        }
        // Then it stalls while its worker keeps sending heartbeats.
        let stalled_at = start + Duration::from_secs(60);
        for secs in 61..70 {
            s.heartbeat(&owner("busy"), &[progress(0, attempt, 10)], start + Duration::from_secs(secs));
        }
        let lost = s.expire(stalled_at + TIMEOUT);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].loss, AttemptLoss::NoProgress(TIMEOUT));
    }

    #[test]
    fn a_silent_worker_loses_its_attempt_even_if_it_was_making_progress() {
        let start = Instant::now();
        let mut s = scheduler(2, 1);
        let (_, a) = take_map(&mut s, "stopped", start);
        let (_, b) = take_map(&mut s, "alive", start);
        let beat = start + Duration::from_secs(5);
        s.heartbeat(&owner("stopped"), &[progress(0, a, 100)], beat);
        s.heartbeat(&owner("alive"), &[progress(1, b, 1)], beat);
        assert_eq!(s.live_workers(beat), 2);
        // "alive" keeps both beating and progressing; "stopped" goes quiet.
        let now = beat + TIMEOUT;
        s.heartbeat(&owner("alive"), &[progress(1, b, 2)], now);
        let lost = s.expire(now);
        assert_eq!(lost, vec![LostAttempt { task: TaskId::Map(0), attempt: a, worker: "stopped".into(), loss: AttemptLoss::WorkerSilent(TIMEOUT) }]);
        assert_eq!(s.live_workers(now), 1);
        assert!(matches!(s.state(TaskId::Map(1)), TaskState::Running(_)));
    }

    #[test]
    fn a_closed_connection_gives_up_the_workers_attempts_at_once() {
        let start = Instant::now();
        let mut s = scheduler(2, 1);
        let (_, a) = take_map(&mut s, "crashed", start);
        let (_, b) = take_map(&mut s, "other", start);
        let lost = s.worker_disconnected("crashed");
        assert_eq!(lost, vec![LostAttempt { task: TaskId::Map(0), attempt: a, worker: "crashed".into(), loss: AttemptLoss::WorkerDisconnected }]);
        assert_eq!(s.state(TaskId::Map(0)), &TaskState::Idle);
        // Lost with its worker: ended, but not counted toward the bound.
        assert_eq!(s.entry(TaskId::Map(0)).unsuccessful.len(), 0);
        assert_eq!(s.entry(TaskId::Map(0)).ended_badly, vec![a]);
        assert_eq!(running(&s, TaskId::Map(1)), vec![(b, "other")]);
        // A worker that was only cut off may still report; its result counts.
        assert_eq!(s.complete(TaskId::Map(0), a, vec![], start), ReportVerdict::Accepted);
    }

    #[test]
    fn attempts_lost_with_their_workers_do_not_count_toward_the_bound_and_stalls_do() {
        let now = Instant::now();
        let mut s = scheduler(1, 1);
        // Workers die one after another while they hold map 0 (KILLED, as
        // Hadoop says): the task runs again, however often.
        for round in 1..=5 {
            let worker = format!("w{round}");
            let (m, _) = take_map(&mut s, &worker, now);
            assert_eq!(m, 0);
            s.worker_disconnected(&worker);
        }
        assert_eq!(s.job_end(), None);
        assert!(s.entry(TaskId::Map(0)).unsuccessful.is_empty());
        // An attempt that makes no progress on a live worker counts.
        let mut at = now;
        for round in 1..=3 {
            let (_, a) = take_map(&mut s, "alive", at);
            at += TIMEOUT;
            s.heard_from("alive", at);
            let lost = s.expire(at);
            assert_eq!(lost.iter().map(|l| (l.attempt, l.loss)).collect::<Vec<_>>(), vec![(a, AttemptLoss::NoProgress(TIMEOUT))], "round {round}");
        }
        match s.job_end() {
            Some(JobEnd::Failed(message)) => assert!(message.contains("did not succeed in 3 attempts") && message.contains("timed out"), "{message}"),
            other => panic!("expected the job to fail, got {other:?}"),
        }
    }

    #[test]
    fn only_an_attempts_own_process_can_say_it_makes_progress() {
        let start = Instant::now();
        let mut s = scheduler(1, 1);
        let (_, a) = take_map(&mut s, "hung", start);
        for tick in 1..=10u64 {
            let at = start + TIMEOUT / 10 * tick as u32;
            s.heard_from("hung", at);
            // Another process, even one with the same worker id, claims progress.
            s.heartbeat(&owner("forger"), &[progress(0, a, tick)], at);
            s.heartbeat(&Owner::new("hung", [9; 16]), &[progress(0, a, tick)], at);
        }
        let lost = s.expire(start + TIMEOUT);
        assert_eq!(lost.iter().map(|l| (l.attempt, l.loss)).collect::<Vec<_>>(), vec![(a, AttemptLoss::NoProgress(TIMEOUT))]);
        assert_eq!(s.abandoned(&owner("forger"), &[progress(0, a, 1)]), vec![a], "not the forger's to run");
    }

    #[test]
    fn an_attempt_given_out_before_a_restart_runs_again_under_its_deadline_when_its_process_reports_it() {
        let start = Instant::now();
        let mut s = scheduler(1, 1);
        s.start_epoch(1);
        assert!(s.restore_given(TaskId::Map(0), 5, owner("old")));
        s.heartbeat(&owner("old"), &[progress(0, 5, 1)], start);
        assert_eq!(running(&s, TaskId::Map(0)), vec![(5, "old")], "adopted, not run twice");
        assert_eq!(s.assign(&owner("other"), start), Assignment::Wait);
        // Hung: given up at its deadline like any attempt, and told so.
        s.heard_from("old", start + TIMEOUT);
        assert_eq!(s.expire(start + TIMEOUT).len(), 1);
        assert_eq!(s.abandoned(&owner("old"), &[progress(0, 5, 1)]), vec![5]);
        s.heartbeat(&owner("old"), &[progress(0, 5, 2)], start + TIMEOUT);
        assert_eq!(s.state(TaskId::Map(0)), &TaskState::Idle, "an attempt given up is not adopted again");
    }

    #[test]
    fn a_task_that_loses_its_worker_every_time_stops_the_job_at_three_times_the_bound() {
        let now = Instant::now();
        let mut s = scheduler(1, 1);
        for round in 1..=9 {
            assert_eq!(s.job_end(), None, "round {round}");
            let worker = format!("w{round}");
            take_map(&mut s, &worker, now);
            s.worker_disconnected(&worker);
        }
        match s.job_end() {
            Some(JobEnd::Failed(message)) => {
                assert!(message.starts_with("map task 0 lost 9 attempts with their workers: attempt 1 on w1 was lost"), "{message}")
            }
            other => panic!("expected the job to stop, got {other:?}"),
        }
    }

    #[test]
    fn a_late_failure_of_a_timed_out_attempt_is_counted_once() {
        let start = Instant::now();
        let mut s = scheduler(1, 1);
        let (_, a) = take_map(&mut s, "slow", start);
        // Its worker is alive (it sent heartbeats), its attempt stalled.
        s.heard_from("slow", start + TIMEOUT);
        s.expire(start + TIMEOUT);
        s.fail(TaskId::Map(0), a, "finally broke");
        assert_eq!(s.entry(TaskId::Map(0)).unsuccessful.len(), 1);
    }

    #[test]
    fn first_completion_wins_and_later_reports_are_ignored() {
        let start = Instant::now();
        let mut s = scheduler(1, 1);
        let (_, first) = take_map(&mut s, "slow", start);
        s.expire(start + TIMEOUT);
        let (_, second) = take_map(&mut s, "fresh", start + TIMEOUT);
        // The timed-out attempt finishes first after all: it wins.
        assert_eq!(s.complete(TaskId::Map(0), first, vec![(0, location(0, 0))], start), ReportVerdict::Accepted);
        assert_eq!(s.complete(TaskId::Map(0), second, vec![(0, location(9, 9))], start), ReportVerdict::AlreadyDone);
        assert_eq!(s.complete(TaskId::Map(0), first, vec![], start), ReportVerdict::AlreadyDone, "duplicate");
        assert_eq!(s.fail(TaskId::Map(0), second, "late failure"), ReportVerdict::AlreadyDone);
        assert_eq!(s.state(TaskId::Map(0)), &TaskState::Done { attempt: first });
        // The winner's outputs are the ones reduces read.
        let r = take_reduce(&mut s, "w", start + TIMEOUT);
        assert_eq!(r.runs, vec![(0, location(0, 0))]);
        assert_eq!(s.progress().running, 1);
    }

    #[test]
    fn a_completed_task_left_in_the_queue_is_not_handed_out_again() {
        let start = Instant::now();
        let mut s = scheduler(2, 1);
        let (_, a) = take_map(&mut s, "slow", start);
        s.expire(start + TIMEOUT); // map 0 back in the queue...
        s.complete(TaskId::Map(0), a, vec![], start); // ...then finished by its first attempt
        let (m, _) = take_map(&mut s, "w", start + TIMEOUT);
        assert_eq!(m, 1, "map 0 is done and must be skipped");
        assert_eq!(s.assign(&owner("w2"), start + TIMEOUT), Assignment::Wait);
    }

    #[test]
    fn after_a_restart_journaled_tasks_are_done_and_attempts_of_before_may_still_win() {
        let now = Instant::now();
        let mut s = scheduler(3, 1);
        s.start_epoch(2);
        assert!(s.restore(TaskId::Map(0), 7, Some(owner("before")), vec![(0, location(0, 0))], now));
        assert!(!s.restore(TaskId::Map(0), 8, None, vec![], now), "restored once");
        assert!(!s.restore(TaskId::Map(9), 8, None, vec![], now), "no such task");
        assert_eq!(s.progress().maps_done, 1);
        // Map 2's attempts 12 and 13 were given out before the restart.
        assert!(s.restore_given(TaskId::Map(2), 12, owner("stayed up")));
        assert!(s.restore_given(TaskId::Map(2), 13, owner("stayed up")));
        assert!(!s.restore_given(TaskId::Map(2), 2 * ATTEMPTS_PER_EPOCH + 5, owner("x")), "not of an earlier epoch");
        assert_eq!(s.owner_of(TaskId::Map(2), 12), Some(&owner("stayed up")));
        assert_eq!(s.owner_of(TaskId::Map(2), 14), None);
        // New attempts are numbered in the new epoch, and only idle tasks go out.
        let (m, a) = take_map(&mut s, "w1", now);
        assert_eq!((m, a), (1, 2 * ATTEMPTS_PER_EPOCH + 1));
        // Map 2's attempt from before the restart finishes: it wins.
        assert_eq!(s.complete(TaskId::Map(2), 14, vec![], now), ReportVerdict::UnknownAttempt, "never given out");
        assert_eq!(s.complete(TaskId::Map(2), 12, vec![(0, location(2, 0))], now), ReportVerdict::Accepted);
        assert_eq!(s.complete(TaskId::Map(2), 13, vec![], now), ReportVerdict::AlreadyDone);
        // An unknown attempt of this epoch is still unknown.
        assert_eq!(s.complete(TaskId::Map(1), a + 1, vec![], now), ReportVerdict::UnknownAttempt);
        assert_eq!(s.complete(TaskId::Map(1), a, vec![], now), ReportVerdict::Accepted);
        let reduce = take_reduce(&mut s, "w1", now);
        assert_eq!(reduce.runs, vec![(0, location(0, 0)), (2, location(2, 0))]);
    }

    #[test]
    fn unknown_attempts_and_tasks_are_ignored() {
        let now = Instant::now();
        let mut s = scheduler(1, 1);
        let (_, a) = take_map(&mut s, "w", now);
        assert_eq!(s.complete(TaskId::Map(0), a + 100, vec![], now), ReportVerdict::UnknownAttempt);
        assert_eq!(s.complete(TaskId::Map(7), a, vec![], now), ReportVerdict::UnknownAttempt);
        assert_eq!(s.complete(TaskId::Reduce(0), a, vec![], now), ReportVerdict::UnknownAttempt);
        assert_eq!(s.fail(TaskId::Reduce(3), a, "x"), ReportVerdict::UnknownAttempt);
        assert!(matches!(s.state(TaskId::Map(0)), TaskState::Running(_)));
    }

    #[test]
    fn failures_retry_until_the_limit_then_stop_the_job() {
        let now = Instant::now();
        let mut s = scheduler(2, 1);
        for round in 1..=3 {
            let (m, a) = take_map(&mut s, "w", now);
            assert_eq!(m, 0, "round {round}: the failed task is retried");
            assert_eq!(s.fail(TaskId::Map(0), a, &format!("boom {round}")), ReportVerdict::Accepted);
            if round < 3 {
                assert_eq!(s.job_end(), None);
                // Let map 1 go first after a failure; it stays Running.
                if round == 1 {
                    assert_eq!(take_map(&mut s, "other", now).0, 1);
                }
            }
        }
        let expected = "map task 0 (input in-0) did not succeed in 3 attempts: \
                        attempt 1 on w failed: boom 1; attempt 3 on w failed: boom 2; attempt 4 on w failed: boom 3";
        assert_eq!(s.job_end(), Some(JobEnd::Failed(expected.to_string())));
        assert_eq!(s.assign(&owner("w"), now), Assignment::Exit(JobEnd::Failed(expected.to_string())));
    }

    #[test]
    fn an_old_attempt_failing_does_not_free_the_running_one() {
        let start = Instant::now();
        let mut s = scheduler(1, 1);
        let (_, old) = take_map(&mut s, "slow", start);
        s.expire(start + TIMEOUT);
        let (_, current) = take_map(&mut s, "fresh", start + TIMEOUT);
        s.fail(TaskId::Map(0), old, "old attempt broke");
        assert_eq!(running(&s, TaskId::Map(0)), vec![(current, "fresh")]);
        assert_eq!(s.assign(&owner("third"), start + TIMEOUT), Assignment::Wait);
    }

    #[test]
    fn lost_map_output_reruns_the_map_before_the_reduce() {
        let now = Instant::now();
        let mut s = scheduler(2, 2);
        for _ in 0..2 {
            let (m, a) = take_map(&mut s, "w", now);
            s.complete(TaskId::Map(m), a, vec![(0, location(m, 0)), (1, location(m, 1))], now);
        }
        let r0 = take_reduce(&mut s, "w1", now);
        let r1 = take_reduce(&mut s, "w2", now);
        // The coordinator sees the file is short: confirmed at once.
        let lost = s.map_output_lost(TaskId::Reduce(0), r0.attempt, 1, "truncated", true, now);
        assert_eq!(lost, (ReportVerdict::Accepted, Some(LostOutput::Rerun { counted: true })));
        assert_eq!(s.state(TaskId::Map(1)), &TaskState::Idle);
        assert!(s.entry(TaskId::Reduce(0)).unsuccessful.is_empty(), "not the reduce's fault");
        // Map 1 runs again before any reduce is handed out.
        let (m, a) = take_map(&mut s, "w3", now);
        assert_eq!(m, 1);
        assert_eq!(s.assign(&owner("w4"), now), Assignment::Wait);
        s.complete(TaskId::Map(1), a, vec![(0, location(5, 0))], now);
        let retry = take_reduce(&mut s, "w3", now);
        assert_eq!(retry.partition, 0);
        assert_eq!(retry.runs, vec![(0, location(0, 0)), (1, location(5, 0))]);
        // The other reduce, still running on old (valid) data, may finish.
        assert_eq!(s.complete(TaskId::Reduce(1), r1.attempt, vec![], now), ReportVerdict::Accepted);
    }

    #[test]
    fn a_map_whose_output_keeps_getting_lost_stops_the_job() {
        let now = Instant::now();
        let mut s = scheduler(1, 1);
        for _ in 0..3 {
            let (_, a) = take_map(&mut s, "w", now);
            s.complete(TaskId::Map(0), a, vec![(0, location(0, 0))], now);
            let r = take_reduce(&mut s, "w", now);
            // Its own worker cannot read it: that confirms it.
            let lost = s.map_output_lost(TaskId::Reduce(0), r.attempt, 0, "disk ate it", false, now);
            assert_eq!(lost.1, Some(LostOutput::Rerun { counted: true }));
        }
        match s.job_end() {
            Some(JobEnd::Failed(message)) => assert!(message.contains("map task 0 (input in-0)") && message.contains("disk ate it"), "{message}"),
            other => panic!("expected failure, got {other:?}"),
        }
    }

    /// A job whose two maps "server" did, with reduces on "r1", "r2", "r3".
    fn maps_done_by_server(now: Instant) -> (Scheduler, Vec<ReduceTask>) {
        let mut s = scheduler(2, 3);
        for _ in 0..2 {
            let (m, a) = take_map(&mut s, "server", now);
            s.complete(TaskId::Map(m), a, (0..3).map(|r| (r, served(m, r, false))).collect(), now);
        }
        let reduces = ["r1", "r2", "r3"].iter().map(|w| take_reduce(&mut s, w, now)).collect();
        (s, reduces)
    }

    #[test]
    fn one_reducer_alone_cannot_rerun_a_live_workers_map_and_two_can() {
        let now = Instant::now();
        let (mut s, reduces) = maps_done_by_server(now);
        let lost = s.map_output_lost(TaskId::Reduce(0), reduces[0].attempt, 1, "forged", false, now);
        assert_eq!(lost, (ReportVerdict::Accepted, Some(LostOutput::NotConfirmed { reduce_counted: false })));
        assert!(matches!(s.state(TaskId::Map(1)), TaskState::Done { .. }), "the map's output stays");
        assert_eq!(s.state(TaskId::Reduce(0)), &TaskState::Idle, "the reduce runs again");
        // The same worker again, on a new attempt: its reduce counts now.
        let again = take_reduce(&mut s, "r1", now);
        let lost = s.map_output_lost(TaskId::Reduce(0), again.attempt, 1, "forged", false, now);
        assert_eq!(lost.1, Some(LostOutput::NotConfirmed { reduce_counted: true }));
        assert_eq!(s.entry(TaskId::Reduce(0)).unsuccessful.len(), 1);
        assert!(s.entry(TaskId::Map(1)).unsuccessful.is_empty());
        // A second worker confirms it: the map runs again, counted.
        let lost = s.map_output_lost(TaskId::Reduce(1), reduces[1].attempt, 1, "unreadable", false, now);
        assert_eq!(lost.1, Some(LostOutput::Rerun { counted: true }));
        assert_eq!(s.state(TaskId::Map(1)), &TaskState::Idle);
        assert_eq!(s.entry(TaskId::Map(1)).unsuccessful.len(), 1);
    }

    #[test]
    fn an_output_lost_with_its_worker_reruns_the_map_at_once_and_counts_against_nothing() {
        let now = Instant::now();
        let (mut s, reduces) = maps_done_by_server(now);
        s.worker_disconnected("server");
        let lost = s.map_output_lost(TaskId::Reduce(2), reduces[2].attempt, 0, "connection refused", false, now);
        assert_eq!(lost.1, Some(LostOutput::Rerun { counted: false }));
        assert!(s.entry(TaskId::Map(0)).unsuccessful.is_empty() && s.entry(TaskId::Reduce(2)).unsuccessful.is_empty());
        // A report of a map that runs again already changes nothing more.
        let lost = s.map_output_lost(TaskId::Reduce(0), reduces[0].attempt, 0, "late", false, now);
        assert_eq!(lost.1, Some(LostOutput::AlreadyRerunning));
        // And a map task the job has not is refused.
        assert_eq!(s.map_output_lost(TaskId::Reduce(1), reduces[1].attempt, 9, "x", false, now).0, ReportVerdict::UnknownAttempt);
        assert_eq!(s.map_output_lost(TaskId::Map(1), 2, 0, "x", false, now).0, ReportVerdict::UnknownAttempt, "maps read no map output");
    }

    #[test]
    fn a_silent_worker_whose_outputs_were_restored_has_its_maps_run_again() {
        let start = Instant::now();
        let mut s = scheduler(2, 1);
        s.start_epoch(1);
        assert!(s.restore(TaskId::Map(0), 3, Some(owner("dead")), vec![(0, served(0, 0, false))], start));
        assert!(s.restore(TaskId::Map(1), 4, Some(owner("alive")), vec![(0, served(1, 0, false))], start));
        s.heard_from("alive", start + TIMEOUT);
        assert_eq!(s.silent_workers(start + TIMEOUT), vec!["dead".to_owned()]);
        assert_eq!(s.forget_outputs_of("dead"), vec![(0, 3)]);
        assert_eq!(take_map(&mut s, "alive", start + TIMEOUT).0, 0);
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_straggler_gets_one_backup_on_another_worker_and_the_first_to_finish_wins() {
        let t0 = Instant::now();
        let mut s = scheduler_with_backups(4, 1);
        let (_, a0) = take_map(&mut s, "w0", t0);
        let (_, a1) = take_map(&mut s, "w1", t0);
        let (_, slow) = take_map(&mut s, "w2", t0);
        let (_, slower) = take_map(&mut s, "w3", t0 - secs(0.5));
        s.complete(TaskId::Map(0), a0, vec![], t0 + secs(1.0));
        s.complete(TaskId::Map(1), a1, vec![], t0 + secs(1.0));
        // Half done in 1 s each: a straggler is a task running 3 s or more.
        assert_eq!(s.assign(&owner("w0"), t0 + secs(2.4)), Assignment::Wait, "nothing is slow yet");
        let (m, backup) = take_map(&mut s, "w0", t0 + secs(2.5));
        assert_eq!(m, 3, "map 3 has run 3 s, map 2 only 2.5 s");
        assert!(s.is_backup(TaskId::Map(3), backup) && !s.is_backup(TaskId::Map(3), slower));
        assert_eq!(running(&s, TaskId::Map(3)), vec![(slower, "w3"), (backup, "w0")]);
        let now = t0 + secs(3.0);
        assert_eq!(s.assign(&owner("w2"), now), Assignment::Wait, "no worker backs up its own attempt");
        let (m, backup2) = take_map(&mut s, "w1", now);
        assert_eq!(m, 2);
        assert_eq!(s.assign(&owner("w4"), now), Assignment::Wait, "one backup per task");
        // Map 2's backup finishes first and wins; its first attempt's late
        // report is ignored.
        assert_eq!(s.complete(TaskId::Map(2), backup2, vec![(0, location(2, 0))], now + secs(1.0)), ReportVerdict::Accepted);
        assert_eq!(s.complete(TaskId::Map(2), slow, vec![(0, location(9, 9))], now + secs(1.5)), ReportVerdict::AlreadyDone);
        // Map 3's first attempt fails: its backup still runs the task.
        assert_eq!(s.fail(TaskId::Map(3), slower, "disk error"), ReportVerdict::Accepted);
        assert_eq!(running(&s, TaskId::Map(3)), vec![(backup, "w0")]);
        assert_eq!(s.assign(&owner("w3"), now), Assignment::Wait, "the task is not idle");
        assert_eq!(s.complete(TaskId::Map(3), backup, vec![], now + secs(2.0)), ReportVerdict::Accepted);
        assert_eq!(take_reduce(&mut s, "w3", now).runs, vec![(2, location(2, 0))]);
    }

    #[test]
    fn a_lost_backup_leaves_its_task_running() {
        let t0 = Instant::now();
        let mut s = scheduler_with_backups(2, 1);
        let (_, fast) = take_map(&mut s, "w0", t0);
        let (_, slow) = take_map(&mut s, "w1", t0);
        s.complete(TaskId::Map(0), fast, vec![], t0 + secs(0.1));
        let (_, backup) = take_map(&mut s, "w0", t0 + secs(1.1));
        let lost = s.worker_disconnected("w0");
        assert_eq!(lost.iter().map(|l| l.attempt).collect::<Vec<_>>(), vec![backup]);
        assert_eq!(running(&s, TaskId::Map(1)), vec![(slow, "w1")]);
        assert_eq!(s.entry(TaskId::Map(1)).ended_badly, vec![backup]);
        // Both attempts silent: both are given up and the task waits again.
        let (_, backup) = take_map(&mut s, "w2", t0 + secs(1.2));
        s.heartbeat(&owner("w1"), &[progress(1, slow, 1)], t0 + secs(1.2));
        let lost = s.expire(t0 + secs(1.2) + TIMEOUT);
        assert_eq!(lost.iter().map(|l| l.attempt).collect::<Vec<_>>(), vec![slow, backup]);
        assert_eq!(s.state(TaskId::Map(1)), &TaskState::Idle);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn no_backups_while_tasks_wait_before_half_are_done_or_when_off() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(1000);
        let mut s = scheduler_with_backups(4, 1);
        let (_, a) = take_map(&mut s, "w0", t0);
        take_map(&mut s, "w1", t0);
        s.complete(TaskId::Map(0), a, vec![], t0 + secs(0.1));
        // Maps 2 and 3 still wait: they go first, whatever is slow.
        assert_eq!(take_map(&mut s, "w2", late).0, 2);
        assert_eq!(take_map(&mut s, "w3", late).0, 3);
        // One of four done: too early to judge.
        assert_eq!(s.assign(&owner("w4"), late), Assignment::Wait);

        let mut off = scheduler(2, 1);
        let (_, a) = take_map(&mut off, "w0", t0);
        take_map(&mut off, "w1", t0);
        off.complete(TaskId::Map(0), a, vec![], t0 + secs(0.1));
        assert_eq!(off.assign(&owner("w0"), late), Assignment::Wait, "backups off");
    }

    #[test]
    fn reduces_are_judged_against_reduces() {
        let t0 = Instant::now();
        let mut s = scheduler_with_backups(1, 2);
        // A slow map phase says nothing about how long a reduce takes.
        let (_, m) = take_map(&mut s, "w0", t0);
        s.complete(TaskId::Map(0), m, vec![], t0 + secs(100.0));
        let start = t0 + secs(100.0);
        let r0 = take_reduce(&mut s, "w0", start);
        take_reduce(&mut s, "w1", start);
        s.complete(TaskId::Reduce(0), r0.attempt, vec![], start + secs(0.5));
        assert_eq!(s.assign(&owner("w0"), start + secs(1.4)), Assignment::Wait);
        let backup = take_reduce(&mut s, "w0", start + secs(1.5));
        assert_eq!(backup.partition, 1);
        assert_ne!(backup.staged_output, s.staged_output(1, backup.attempt - 1), "each attempt stages its own output");
    }

    /// A scheduler that skips up to `limit` bad records per task, whose
    /// attempts' cursors are whatever the test puts in the returned map.
    #[allow(clippy::type_complexity)]
    fn skipping_scheduler(maps: usize, limit: u32) -> (Scheduler, std::sync::Arc<std::sync::Mutex<HashMap<PathBuf, BadRecord>>>) {
        let cursors = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
        let config = SchedulerConfig { task_timeout: TIMEOUT, max_task_attempts: 4, backups: None, skip_bad_records: limit };
        let reader = cursors.clone();
        let s =
            Scheduler::new(config, inputs(maps), 1, PathBuf::from("/job")).with_record_reader(move |path| reader.lock().unwrap().get(path).cloned());
        (s, cursors)
    }

    fn map_task(s: &mut Scheduler, worker: &str, now: Instant) -> MapTask {
        match s.assign(&owner(worker), now) {
            Assignment::Map(t) => t,
            other => panic!("expected a map task for {worker}, got {other:?}"),
        }
    }

    fn record(id: u64) -> BadRecord {
        BadRecord { id, preview: format!("line {id}\n").into_bytes() }
    }

    #[test]
    fn a_key_hung_reduces_were_stuck_on_is_skipped_when_their_workers_report_it_late() {
        // Workers that share no directory: the scheduler cannot read their
        // cursors, and learns the record only from the late failure report.
        let (mut s, _cursors) = skipping_scheduler(0, 1);
        let mut at = Instant::now();
        for worker in ["w1", "w2"] {
            let r = take_reduce(&mut s, worker, at);
            at += TIMEOUT;
            s.heard_from(worker, at);
            assert_eq!(s.expire(at).len(), 1, "{worker}'s stuck attempt is given up");
            assert_eq!(s.fail_on_record(TaskId::Reduce(0), r.attempt, "stopped", Some(record(7))), ReportVerdict::Accepted);
            assert_eq!(s.fail_on_record(TaskId::Reduce(0), r.attempt, "stopped", Some(record(7))), ReportVerdict::Accepted, "twice is once");
        }
        assert!(s.entry(TaskId::Reduce(0)).unsuccessful.is_empty(), "the two attempts stuck on key 7 count no more");
        assert_eq!(take_reduce(&mut s, "w3", at).skip.unwrap().skip, vec![7]);
    }

    #[test]
    fn a_line_two_attempts_died_on_is_skipped_and_those_attempts_count_no_more() {
        let now = Instant::now();
        let (mut s, cursors) = skipping_scheduler(1, 1);
        // Two attempts die on the whole split (their task processes are
        // killed): no line known, no tracking.
        for worker in ["w1", "w2"] {
            let task = map_task(&mut s, worker, now);
            assert_eq!(task.skip, None);
            s.fail(TaskId::Map(0), task.attempt, "killed by signal 6");
        }
        // The next ones read line by line under a cursor; two die on line 40.
        for worker in ["w3", "w4"] {
            let task = map_task(&mut s, worker, now);
            let plan = task.skip.expect("tracking after two failures");
            assert_eq!(plan.skip, Vec::<u64>::new());
            assert_eq!(plan.cursor.parent(), Some(std::path::Path::new("/job")));
            cursors.lock().unwrap().insert(plan.cursor, record(40));
            s.fail(TaskId::Map(0), task.attempt, "killed by signal 6");
            assert_eq!(s.job_end(), None, "{worker}: within the bound");
        }
        assert_eq!(s.entry(TaskId::Map(0)).unsuccessful.len(), 2, "the two deaths on line 40 count no more");
        let plan = map_task(&mut s, "w5", now).skip.unwrap();
        assert_eq!(plan.skip, vec![40]);
        assert_eq!(s.skipped_records(TaskId::Map(0)), vec!["line at byte 40 of in-0: \"line 40\"".to_string()]);
        assert_eq!(s.complete(TaskId::Map(0), map_attempt(&s), vec![], now), ReportVerdict::Accepted);
    }

    fn map_attempt(s: &Scheduler) -> AttemptId {
        s.running_attempts(TaskId::Map(0))[0].attempt
    }

    #[test]
    fn past_the_skip_limit_or_without_a_record_the_bound_applies() {
        let now = Instant::now();
        let (mut s, cursors) = skipping_scheduler(1, 1);
        for worker in ["w1", "w2"] {
            map_task(&mut s, worker, now);
            s.fail(TaskId::Map(0), s.entry(TaskId::Map(0)).attempts.last().unwrap().attempt, "boom");
        }
        // Two deaths on line 1 skip it (the limit); two on line 2 count.
        for (worker, line) in [("w3", 1), ("w4", 1), ("w5", 2)] {
            let task = map_task(&mut s, worker, now);
            cursors.lock().unwrap().insert(task.skip.unwrap().cursor, record(line));
            s.fail(TaskId::Map(0), task.attempt, "killed by signal 11");
        }
        assert_eq!(s.job_end(), None);
        let task = map_task(&mut s, "w6", now);
        let plan = task.skip.unwrap();
        assert_eq!(plan.skip, vec![1]);
        cursors.lock().unwrap().insert(plan.cursor, record(2));
        s.fail(TaskId::Map(0), task.attempt, "killed by signal 11");
        match s.job_end() {
            Some(JobEnd::Failed(message)) => assert!(message.contains("did not succeed in 4 attempts"), "{message}"),
            other => panic!("expected the bound, got {other:?}"),
        }
    }

    #[test]
    fn reduces_track_every_attempt_and_nothing_tracks_without_skipping() {
        let now = Instant::now();
        let (mut s, cursors) = skipping_scheduler(0, 1);
        for worker in ["w1", "w2"] {
            let task = take_reduce(&mut s, worker, now);
            let plan = task.skip.expect("reduces always track");
            cursors.lock().unwrap().insert(plan.cursor, record(7));
            s.fail(TaskId::Reduce(0), task.attempt, "the task process was killed by signal 6");
        }
        assert_eq!(take_reduce(&mut s, "w3", now).skip.unwrap().skip, vec![7]);
        assert_eq!(s.skipped_records(TaskId::Reduce(0)), vec!["key 7 \"line 7\"".to_string()]);

        let mut plain = scheduler(1, 1);
        let (_, a) = take_map(&mut plain, "w", now);
        plain.complete(TaskId::Map(0), a, vec![], now);
        assert_eq!(take_reduce(&mut plain, "w", now).skip, None);
    }
}
