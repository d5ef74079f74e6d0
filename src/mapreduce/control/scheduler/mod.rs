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
//!
//! Layout: this file holds the job-wide state ([`Scheduler`], its config,
//! the task states, the job's end and progress) and restoring a restarted
//! job; one file per concept beside it, each with an `impl Scheduler`
//! block of its own:
//!
//! | file | what it holds |
//! |---|---|
//! | `table.rs` | the task table's rows (`TaskEntry`) and the idle queues |
//! | `attempts.rs` | assignment and backups, completion, failure, the bound on unsuccessful attempts |
//! | `liveness.rs` | workers heard from, heartbeats, attempts given up for silence or no progress |
//! | `lost_outputs.rs` | map outputs a reduce could not read, or only a lost worker served |
//! | `skipping.rs` | bad records: blame, skip plans, cursor files |
//! | `tests.rs` | the state machine's tests (no sockets, no sleeping) |

mod attempts;
mod liveness;
mod lost_outputs;
mod skipping;
mod table;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::backup::BackupPolicy;
use crate::map_output::MapOutputLocation;
use crate::rpc::{AttemptId, InputSplit, JobEnd, TaskId, WorkerId};
use crate::skipping::read_cursor;

pub use attempts::RunningAttempt;
pub use liveness::{AttemptLoss, LostAttempt};
pub use lost_outputs::{reporters_needed, LostOutput};
pub use skipping::RecordReader;
use table::{GivenAttempt, TaskEntry};

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

/// Counts for progress logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

impl Scheduler {
    /// A job with one map task per input split and `reduces` reduce tasks,
    /// whose intermediate files go to `job_dir`. With no reduce task the
    /// job is map-only: each map's output is an output of the job, staged
    /// and committed as a reduce's is (see [`Scheduler::map_only`]).
    pub fn new(config: SchedulerConfig, splits: Vec<InputSplit>, reduces: u32, job_dir: PathBuf) -> Scheduler {
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

    /// The id the next attempt given out will have: it grows by one per
    /// attempt, so the difference between two readings counts the
    /// attempts given out in between.
    pub fn next_attempt_id(&self) -> AttemptId {
        self.next_attempt
    }

    /// How the job ended, once it has.
    pub fn job_end(&self) -> Option<JobEnd> {
        if let Some(message) = &self.failure {
            Some(JobEnd::Failed(message.clone()))
        } else if self.outputs_done() {
            Some(JobEnd::Succeeded)
        } else {
            None
        }
    }

    /// Whether every task that writes one of the job's outputs is done:
    /// every reduce, or every map of a map-only job. A map whose output
    /// was lost after the reduces had read it may be running again; the
    /// job does not wait for it, and it must not end the job later
    /// without the outputs being published (only an output's commit
    /// publishes them).
    fn outputs_done(&self) -> bool {
        if self.map_only() {
            self.maps_done == self.maps.len()
        } else {
            self.reduces_done == self.reduces.len()
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

    /// Where attempt `attempt` of the task that writes output `r` (reduce
    /// task `r`; map task `r` of a map-only job) writes it before the
    /// coordinator commits it.
    pub fn staged_output(&self, r: u32, attempt: AttemptId) -> PathBuf {
        self.job_dir.join(format!("out-{r}.attempt-{attempt}"))
    }

    /// Whether the job is map-only (`--reduces 0`): its map tasks write
    /// its outputs, one each, and nothing is shuffled.
    pub fn map_only(&self) -> bool {
        self.reduces.is_empty()
    }

    /// The job's output files: one per reduce task, or per map task of a
    /// map-only job.
    pub fn output_count(&self) -> u32 {
        (if self.map_only() { self.maps.len() } else { self.reduces.len() }) as u32
    }

    /// The task that writes output `r`, if the job has one.
    pub fn output_task(&self, r: u32) -> Option<TaskId> {
        (r < self.output_count()).then_some(if self.map_only() { TaskId::Map(r) } else { TaskId::Reduce(r) })
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
}
