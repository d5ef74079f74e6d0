//! Which job a free slot serves: the standing cluster's queue of jobs, a
//! plain state machine with no I/O.
//!
//! Each job is submitted with a [`Priority`], a weight and the labels its
//! workers must have, and is in one state:
//!
//! ```text
//!   submit            start_ready (fewer than max_running of its level run)
//!  ───────► Queued ──────────────────────────────────────────────► Running
//!             │ cancel                                                │ remove
//!             ▼                                                       ▼ (finished, failed or stopped)
//!           (gone)                                                  (gone)
//! ```
//!
//! Rules:
//! - At most [`MaxRunning`] jobs of each level run at once, and queued jobs
//!   of a level start in the order they were submitted. The limit is per
//!   level, so a high job never waits for low ones to finish.
//! - A free slot on a worker goes to a running job whose required labels
//!   the worker has and that has a task ready: the highest level that has
//!   one, and within it the job with the fewest running tasks per unit of
//!   weight (Hadoop's Fair Scheduler), ties to the earliest submitted. The
//!   comparison is exact (integers multiplied across), so equal shares tie.
//! - No preemption: nothing here stops a running task. A high job that
//!   arrives while low ones hold every slot gets slots as their tasks end;
//!   jobs whose tasks are long should be split into more, shorter tasks.
//!
//! The queue's count of each job's running tasks is the shell's to keep:
//! the cluster sets it from the job's own engine (its `Scheduler`) before
//! each pick ([`Queue::set_running_tasks`]), so that it cannot drift from
//! what really runs; [`Queue::task_started`] and [`Queue::task_ended`]
//! count step by step for a shell that has no such source. [`Queue::pick`]
//! counts nothing itself, since the engine may still find no task to give.

#![warn(clippy::indexing_slicing)]

use crate::cluster::workers::{meets_all, Label, WorkerView, Workers};
use crate::untrusted::{excerpt, EXCERPT_CHARS};

/// A job's id in the cluster, written `job-<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

impl std::str::FromStr for JobId {
    type Err = JobIdError;

    /// `job-<n>` or `<n>`, `n` in decimal digits only (no sign, no spaces).
    fn from_str(text: &str) -> Result<JobId, JobIdError> {
        let digits = text.strip_prefix("job-").unwrap_or(text);
        let refuse = || JobIdError { text: excerpt(text, EXCERPT_CHARS) };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse());
        }
        digits.parse().map(JobId).map_err(|_| refuse())
    }
}

/// A text that is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a job id (job-<n> or <n>, n a whole number below 2^64)")]
pub struct JobIdError {
    /// The text, cut and escaped for a log line.
    pub text: String,
}

/// How urgent a job is. Every running job of a higher level is served
/// before any of a lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Served first.
    High,
    /// The default.
    #[default]
    Normal,
    /// Served when no high or normal job has a task ready.
    Low,
}

impl Priority {
    /// Every level, the highest first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    fn name(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Priority {
    type Err = PriorityError;

    fn from_str(text: &str) -> Result<Priority, PriorityError> {
        Priority::ALL.into_iter().find(|level| level.name() == text).ok_or_else(|| PriorityError { text: excerpt(text, EXCERPT_CHARS) })
    }
}

/// A text that is not a priority.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a priority (high, normal or low)")]
pub struct PriorityError {
    /// The text, cut and escaped for a log line.
    pub text: String,
}

/// How many jobs of each level may run at once; each at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MaxRunning {
    /// High jobs at once.
    pub high: u32,
    /// Normal jobs at once.
    pub normal: u32,
    /// Low jobs at once.
    pub low: u32,
}

impl MaxRunning {
    /// `jobs` at once at every level.
    pub fn each(jobs: u32) -> MaxRunning {
        MaxRunning { high: jobs, normal: jobs, low: jobs }
    }

    /// The limit of `level`.
    pub fn of(&self, level: Priority) -> u32 {
        match level {
            Priority::High => self.high,
            Priority::Normal => self.normal,
            Priority::Low => self.low,
        }
    }
}

/// Where a job is in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueState {
    /// Submitted, waiting for fewer jobs of its level to run.
    Queued,
    /// Its tasks are given to free slots.
    Running,
}

/// Why the queue refused an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// A level's [`MaxRunning`] is 0: its jobs would never start.
    #[error("at most 0 {0} jobs may run at once, so none would ever start; the limit is at least 1")]
    ZeroMaxRunning(Priority),
    /// A job was submitted with weight 0: it would never get a slot.
    #[error("{0} has weight 0; a weight is at least 1")]
    ZeroWeight(JobId),
    /// A job was submitted under an id the queue holds already.
    #[error("{0} is already queued or running")]
    AlreadySubmitted(JobId),
    /// No such job is queued or running.
    #[error("no job {0} is queued or running")]
    UnknownJob(JobId),
    /// Only a queued job is cancelled here.
    #[error("{0} is running: its engine stops it, and then it is removed")]
    AlreadyRunning(JobId),
}

/// A job as status pages show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobView<'a> {
    /// Its id.
    pub id: JobId,
    /// Its level.
    pub priority: Priority,
    /// Its weight within its level (at least 1).
    pub weight: u32,
    /// Queued or running.
    pub state: QueueState,
    /// Tasks of it running now.
    pub running_tasks: u64,
    /// The labels a worker must have to run its tasks.
    pub requires: &'a [Label],
}

/// Why a job gets no tasks now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitingReason {
    /// It is queued: `running` jobs of its level run, the limit being
    /// `max_running`, and `ahead` queued jobs of its level start before it.
    Queued {
        /// Its level.
        priority: Priority,
        /// Queued jobs of its level submitted before it.
        ahead: usize,
        /// Jobs of its level running.
        running: usize,
        /// The most jobs of its level that run at once.
        max_running: u32,
    },
    /// No connected worker has every label it requires (with none
    /// required: no worker is connected).
    NoWorkerHasLabels(Vec<Label>),
    /// Workers with its labels are connected, but every one of them is
    /// over a load limit.
    EligibleWorkersLoaded(Vec<Label>),
}

impl std::fmt::Display for WaitingReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitingReason::Queued { priority, ahead, running, max_running } if *running >= *max_running as usize => {
                write!(f, "queued behind {ahead} other {priority} job(s); {running} {priority} job(s) run, the most at once")
            }
            WaitingReason::Queued { ahead, .. } => write!(f, "queued behind {ahead} other job(s) of its level, about to start"),
            WaitingReason::NoWorkerHasLabels(requires) if requires.is_empty() => f.write_str("no worker is connected"),
            WaitingReason::NoWorkerHasLabels(requires) => write!(f, "no connected worker has the labels {}", list(requires)),
            WaitingReason::EligibleWorkersLoaded(requires) if requires.is_empty() => f.write_str("every connected worker is over its load limits"),
            WaitingReason::EligibleWorkersLoaded(requires) => {
                write!(f, "every connected worker with the labels {} is over its load limits", list(requires))
            }
        }
    }
}

fn list(labels: &[Label]) -> String {
    labels.iter().map(Label::to_string).collect::<Vec<_>>().join(", ")
}

/// One job the queue holds.
#[derive(Debug, Clone)]
struct QueuedJob {
    id: JobId,
    priority: Priority,
    /// At least 1.
    weight: u32,
    requires: Vec<Label>,
    state: QueueState,
    /// Counted only while running; saturates at both ends.
    running_tasks: u64,
}

impl QueuedJob {
    fn is_running(&self) -> bool {
        self.state == QueueState::Running
    }

    /// Whether this job has fewer running tasks per unit of weight than
    /// `other`, compared exactly: a/w < b/v as a·v < b·w, in u128 so that
    /// no product overflows.
    fn has_smaller_share_than(&self, other: &QueuedJob) -> bool {
        u128::from(self.running_tasks) * u128::from(other.weight) < u128::from(other.running_tasks) * u128::from(self.weight)
    }

    fn view(&self) -> JobView<'_> {
        JobView {
            id: self.id,
            priority: self.priority,
            weight: self.weight,
            state: self.state,
            running_tasks: self.running_tasks,
            requires: &self.requires,
        }
    }
}

/// The cluster's jobs, queued and running.
#[derive(Debug, Clone)]
pub struct Queue {
    max_running: MaxRunning,
    /// In the order they were submitted: a job's place here is what
    /// "earlier submitted" means, in starting and in breaking ties.
    jobs: Vec<QueuedJob>,
}

impl Queue {
    /// An empty queue running at most `max_running` jobs of each level.
    pub fn new(max_running: MaxRunning) -> Result<Queue, QueueError> {
        if let Some(level) = Priority::ALL.into_iter().find(|&level| max_running.of(level) == 0) {
            return Err(QueueError::ZeroMaxRunning(level));
        }
        Ok(Queue { max_running, jobs: Vec::new() })
    }

    /// Queues job `id` at `priority` with `weight` (at least 1: its share
    /// of its level's slots is weight over the level's total), to run on
    /// workers that have every label in `requires`. It starts at a later
    /// [`Queue::start_ready`].
    pub fn submit(&mut self, id: JobId, priority: Priority, weight: u32, requires: Vec<Label>) -> Result<(), QueueError> {
        if weight == 0 {
            return Err(QueueError::ZeroWeight(id));
        }
        if self.find(id).is_some() {
            return Err(QueueError::AlreadySubmitted(id));
        }
        self.jobs.push(QueuedJob { id, priority, weight, requires, state: QueueState::Queued, running_tasks: 0 });
        Ok(())
    }

    /// Starts the queued jobs that may run now (fewer than the limit of
    /// their level running, earliest submitted first) and returns them,
    /// the highest level first: the shell creates their engines.
    pub fn start_ready(&mut self) -> Vec<JobId> {
        let mut started = Vec::new();
        for level in Priority::ALL {
            let free = (self.max_running.of(level) as usize).saturating_sub(self.running_jobs(level));
            for job in self.jobs.iter_mut().filter(|job| job.priority == level && job.state == QueueState::Queued).take(free) {
                job.state = QueueState::Running;
                started.push(job.id);
            }
        }
        started
    }

    /// The job whose task a free slot on `worker` should run, if any: among
    /// running jobs whose required labels the worker has and for which
    /// `has_ready_task` says a task is ready, the highest level first, then
    /// the fewest running tasks per unit of weight, then the earliest
    /// submitted. `None` when the worker is over its load limits.
    ///
    /// `has_ready_task` is asked only about jobs that would win, so an
    /// expensive check (the job's engine) runs as little as it can.
    pub fn pick(&self, worker: &WorkerView<'_>, mut has_ready_task: impl FnMut(JobId) -> bool) -> Option<JobId> {
        if !worker.accepts_tasks {
            return None;
        }
        for level in Priority::ALL {
            let mut best: Option<&QueuedJob> = None;
            for job in self.jobs.iter().filter(|job| job.priority == level && job.is_running() && meets_all(worker.labels, &job.requires)) {
                // On a tie the earlier job stays: it came first in `jobs`.
                let would_win = best.is_none_or(|best| job.has_smaller_share_than(best));
                if would_win && has_ready_task(job.id) {
                    best = Some(job);
                }
            }
            if let Some(best) = best {
                return Some(best.id);
            }
        }
        None
    }

    /// Running job `id` runs `tasks` tasks now. False, setting nothing, if
    /// the job is not running.
    pub fn set_running_tasks(&mut self, id: JobId, tasks: u64) -> bool {
        match self.find_mut(id) {
            Some(job) if job.is_running() => {
                job.running_tasks = tasks;
                true
            }
            _ => false,
        }
    }

    /// A task of running job `id` was given to a worker. False, counting
    /// nothing, if the job is not running (removed already, or queued).
    pub fn task_started(&mut self, id: JobId) -> bool {
        match self.find_mut(id) {
            Some(job) if job.is_running() => {
                job.running_tasks = job.running_tasks.saturating_add(1);
                true
            }
            _ => false,
        }
    }

    /// A task of job `id` ended (finished, failed or lost). False if the
    /// job is not running or has no running task counted: a late report
    /// after the job was removed, or an end reported twice.
    pub fn task_ended(&mut self, id: JobId) -> bool {
        match self.find_mut(id) {
            Some(job) if job.is_running() && job.running_tasks > 0 => {
                job.running_tasks -= 1;
                true
            }
            _ => false,
        }
    }

    /// Forgets job `id`, queued or running (it finished, failed, or was
    /// stopped): its level's place goes to the next queued job at the next
    /// [`Queue::start_ready`]. False if it was not here.
    pub fn remove(&mut self, id: JobId) -> bool {
        let before = self.jobs.len();
        self.jobs.retain(|job| job.id != id);
        self.jobs.len() != before
    }

    /// Cancels queued job `id`. A running job is refused: its engine must
    /// stop its tasks first, and then it is [removed](Queue::remove).
    pub fn cancel(&mut self, id: JobId) -> Result<(), QueueError> {
        match self.find(id) {
            None => Err(QueueError::UnknownJob(id)),
            Some(job) if job.is_running() => Err(QueueError::AlreadyRunning(id)),
            Some(_) => {
                self.remove(id);
                Ok(())
            }
        }
    }

    /// How many queued jobs of its level start before queued job `id` (0:
    /// it is next). `None` if it is not queued.
    pub fn position(&self, id: JobId) -> Option<usize> {
        let job = self.find(id).filter(|job| job.state == QueueState::Queued)?;
        Some(
            self.jobs
                .iter()
                .take_while(|other| other.id != id)
                .filter(|other| other.priority == job.priority && other.state == QueueState::Queued)
                .count(),
        )
    }

    /// Every reason job `id` gets no tasks now, given the connected
    /// `workers`: queued behind others of its level, no worker with its
    /// labels, or every such worker loaded. Empty when nothing here holds
    /// it back (it runs tasks, or waits only for slots to free up or for
    /// its own tasks to become ready).
    pub fn waiting_reasons(&self, id: JobId, workers: &Workers) -> Result<Vec<WaitingReason>, QueueError> {
        let job = self.find(id).ok_or(QueueError::UnknownJob(id))?;
        let mut reasons = Vec::new();
        if let Some(ahead) = self.position(id) {
            let running = self.running_jobs(job.priority);
            reasons.push(WaitingReason::Queued { priority: job.priority, ahead, running, max_running: self.max_running.of(job.priority) });
        }
        if !workers.meets(&job.requires) {
            reasons.push(WaitingReason::NoWorkerHasLabels(job.requires.clone()));
        } else if !workers.accepts_any(&job.requires) {
            reasons.push(WaitingReason::EligibleWorkersLoaded(job.requires.clone()));
        }
        Ok(reasons)
    }

    /// Job `id`, if it is here.
    pub fn job(&self, id: JobId) -> Option<JobView<'_>> {
        self.find(id).map(QueuedJob::view)
    }

    /// Every job, queued or running, in the order they were submitted.
    pub fn jobs(&self) -> impl Iterator<Item = JobView<'_>> + '_ {
        self.jobs.iter().map(QueuedJob::view)
    }

    /// How many jobs of `level` run.
    fn running_jobs(&self, level: Priority) -> usize {
        self.jobs.iter().filter(|job| job.priority == level && job.is_running()).count()
    }

    fn find(&self, id: JobId) -> Option<&QueuedJob> {
        self.jobs.iter().find(|job| job.id == id)
    }

    fn find_mut(&mut self, id: JobId) -> Option<&mut QueuedJob> {
        self.jobs.iter_mut().find(|job| job.id == id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};
    use std::time::Instant;

    use proptest::prelude::*;

    use super::*;
    use crate::cluster::workers::{Load, LoadLimits};

    fn labels(texts: &[&str]) -> Vec<Label> {
        texts.iter().map(|text| text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"))).collect()
    }

    fn any_worker() -> WorkerView<'static> {
        WorkerView { labels: &[], accepts_tasks: true }
    }

    /// A queue with `jobs` (id, level, weight) submitted in that order and
    /// started.
    fn running(max_running: u32, jobs: &[(u64, Priority, u32)]) -> Queue {
        let mut queue = Queue::new(MaxRunning::each(max_running)).unwrap();
        for &(id, priority, weight) in jobs {
            queue.submit(JobId(id), priority, weight, Vec::new()).unwrap();
        }
        queue.start_ready();
        queue
    }

    /// Runs `slots` slots for `picks` picks with every job always ready
    /// and every task as long as the others (the oldest ends first), and
    /// counts each job's picks.
    fn share_of_picks(queue: &mut Queue, worker: &WorkerView<'_>, slots: usize, picks: usize) -> BTreeMap<JobId, usize> {
        let mut running = VecDeque::new();
        let mut counts = BTreeMap::new();
        for _ in 0..picks {
            if running.len() == slots {
                let oldest = running.pop_front().unwrap();
                assert!(queue.task_ended(oldest));
            }
            let job = queue.pick(worker, |_| true).expect("a job is always ready");
            assert!(queue.task_started(job));
            running.push_back(job);
            *counts.entry(job).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn job_ids_and_priorities_read_and_print() {
        assert_eq!(JobId(7).to_string(), "job-7");
        assert_eq!("job-7".parse::<JobId>(), Ok(JobId(7)));
        assert_eq!("7".parse::<JobId>(), Ok(JobId(7)));
        assert_eq!("18446744073709551615".parse::<JobId>(), Ok(JobId(u64::MAX)));
        for bad in ["", "job-", "job-+1", "+1", "-1", "job-x", "job 1", "18446744073709551616", "ジョブ-1"] {
            let error = bad.parse::<JobId>().unwrap_err();
            assert!(error.to_string().contains("is not a job id"), "{bad:?}: {error}");
        }
        assert_eq!(serde_json::to_string(&JobId(3)).unwrap(), "3");
        for level in Priority::ALL {
            assert_eq!(level.to_string().parse::<Priority>(), Ok(level));
        }
        assert_eq!(serde_json::to_string(&Priority::High).unwrap(), "\"high\"");
        let error = "urgent".parse::<Priority>().unwrap_err().to_string();
        assert_eq!(error, "'urgent' is not a priority (high, normal or low)");
        assert!("High".parse::<Priority>().is_err(), "names are lowercase");
    }

    #[test]
    fn zero_limits_and_weights_and_duplicate_ids_are_refused() {
        let zero_low = MaxRunning { low: 0, ..MaxRunning::each(2) };
        assert_eq!(Queue::new(zero_low).unwrap_err(), QueueError::ZeroMaxRunning(Priority::Low));
        let mut queue = Queue::new(MaxRunning::each(1)).unwrap();
        assert_eq!(queue.submit(JobId(1), Priority::Normal, 0, Vec::new()), Err(QueueError::ZeroWeight(JobId(1))));
        queue.submit(JobId(1), Priority::Normal, 1, Vec::new()).unwrap();
        assert_eq!(queue.submit(JobId(1), Priority::High, 1, Vec::new()), Err(QueueError::AlreadySubmitted(JobId(1))));
    }

    #[test]
    fn a_higher_level_is_always_served_first() {
        let mut queue = running(5, &[(1, Priority::Low, 100), (2, Priority::Normal, 1), (3, Priority::High, 1)]);
        // However many tasks the high job runs, it is served while it has
        // one ready.
        for _ in 0..10 {
            assert_eq!(queue.pick(&any_worker(), |_| true), Some(JobId(3)));
            queue.task_started(JobId(3));
        }
        assert_eq!(queue.pick(&any_worker(), |id| id != JobId(3)), Some(JobId(2)));
        assert_eq!(queue.pick(&any_worker(), |id| id == JobId(1)), Some(JobId(1)));
        assert_eq!(queue.pick(&any_worker(), |_| false), None);
    }

    #[test]
    fn weights_two_to_one_get_slots_two_to_one() {
        let mut queue = running(5, &[(1, Priority::Normal, 2), (2, Priority::Normal, 1)]);
        let counts = share_of_picks(&mut queue, &any_worker(), 3, 3000);
        assert_eq!((counts[&JobId(1)], counts[&JobId(2)]), (2000, 1000));
    }

    #[test]
    fn the_fewest_running_tasks_per_weight_win_and_ties_go_to_the_earliest() {
        let mut queue = running(5, &[(9, Priority::Normal, 3), (4, Priority::Normal, 2), (6, Priority::Normal, 1)]);
        assert_eq!(queue.pick(&any_worker(), |_| true), Some(JobId(9)), "all at 0: the earliest submitted, not the smallest id");
        // 9: 3 tasks / 3 = 1; 4: 2 / 2 = 1; 6: 1 / 1 = 1: a tie, exactly.
        for (id, tasks) in [(9, 3), (4, 2), (6, 1)] {
            (0..tasks).for_each(|_| assert!(queue.task_started(JobId(id))));
        }
        assert_eq!(queue.pick(&any_worker(), |_| true), Some(JobId(9)));
        assert!(queue.task_ended(JobId(4)));
        assert_eq!(queue.pick(&any_worker(), |_| true), Some(JobId(4)), "1/2 < 1");
        assert_eq!(queue.pick(&any_worker(), |id| id != JobId(4)), Some(JobId(9)));
    }

    #[test]
    fn has_ready_task_is_asked_only_about_jobs_that_would_win() {
        let mut queue = running(5, &[(1, Priority::High, 1), (2, Priority::Normal, 1), (3, Priority::Normal, 1)]);
        queue.task_started(JobId(3));
        let mut asked = Vec::new();
        queue.pick(&any_worker(), |id| {
            asked.push(id);
            id != JobId(1)
        });
        assert_eq!(asked, [JobId(1), JobId(2)], "job 3 has a larger share than job 2, which is ready");
    }

    #[test]
    fn each_level_has_its_own_limit_on_running_jobs() {
        let mut queue = Queue::new(MaxRunning { high: 1, normal: 2, low: 1 }).unwrap();
        for (id, priority) in [(1, Priority::Low), (2, Priority::Low), (3, Priority::Normal), (4, Priority::Normal), (5, Priority::Normal)] {
            queue.submit(JobId(id), priority, 1, Vec::new()).unwrap();
        }
        assert_eq!(queue.start_ready(), [JobId(3), JobId(4), JobId(1)], "the highest level first, in submission order");
        assert_eq!(queue.start_ready(), []);
        // A high job starts at once though every low and normal place is taken.
        queue.submit(JobId(6), Priority::High, 1, Vec::new()).unwrap();
        queue.submit(JobId(7), Priority::High, 1, Vec::new()).unwrap();
        assert_eq!(queue.start_ready(), [JobId(6)]);
        assert_eq!((queue.position(JobId(7)), queue.position(JobId(5)), queue.position(JobId(2))), (Some(0), Some(0), Some(0)));
        assert_eq!(queue.position(JobId(6)), None, "running");
        // A running low job's end makes room for the next low one only.
        assert!(queue.remove(JobId(1)));
        assert_eq!(queue.start_ready(), [JobId(2)]);
        assert!(queue.remove(JobId(3)));
        assert_eq!(queue.start_ready(), [JobId(5)]);
        assert!(!queue.remove(JobId(3)));
    }

    #[test]
    fn queued_jobs_get_no_tasks_and_are_cancelled() {
        let mut queue = running(1, &[(1, Priority::Normal, 1)]);
        for id in 2..=4 {
            queue.submit(JobId(id), Priority::Normal, 1, Vec::new()).unwrap();
        }
        assert_eq!(queue.position(JobId(4)), Some(2));
        assert_eq!(queue.pick(&any_worker(), |id| id != JobId(1)), None, "queued jobs are not picked");
        assert!(!queue.task_started(JobId(2)), "a queued job's task is not counted");
        assert_eq!(queue.cancel(JobId(3)), Ok(()));
        assert_eq!(queue.position(JobId(4)), Some(1));
        assert_eq!(queue.cancel(JobId(1)), Err(QueueError::AlreadyRunning(JobId(1))));
        assert_eq!(queue.cancel(JobId(3)), Err(QueueError::UnknownJob(JobId(3))));
        let states: Vec<_> = queue.jobs().map(|job| (job.id, job.state)).collect();
        assert_eq!(states, [(JobId(1), QueueState::Running), (JobId(2), QueueState::Queued), (JobId(4), QueueState::Queued)]);
    }

    #[test]
    fn a_job_runs_only_on_workers_with_its_labels() {
        let mut queue = Queue::new(MaxRunning::each(5)).unwrap();
        queue.submit(JobId(1), Priority::High, 1, labels(&["gpu", "zone=a"])).unwrap();
        queue.submit(JobId(2), Priority::Low, 1, labels(&["zone"])).unwrap();
        queue.start_ready();
        let gpu_in_a = labels(&["zone=a", "gpu"]);
        let gpu_in_b = labels(&["zone=b", "gpu"]);
        let bare_zone = labels(&["zone", "gpu"]);
        let pick = |worker: &[Label]| queue.pick(&WorkerView { labels: worker, accepts_tasks: true }, |_| true);
        assert_eq!(pick(&gpu_in_a), Some(JobId(1)));
        assert_eq!(pick(&gpu_in_b), Some(JobId(2)), "the high job needs zone a");
        assert_eq!(pick(&bare_zone), Some(JobId(2)), "a worker in an unknown zone is in no zone in particular");
        assert_eq!(pick(&[]), None);
        assert_eq!(queue.pick(&WorkerView { labels: &gpu_in_a, accepts_tasks: false }, |_| true), None, "a loaded worker gets nothing");
    }

    #[test]
    fn task_counts_never_go_below_zero_or_count_unknown_jobs() {
        let mut queue = running(1, &[(1, Priority::Normal, 1)]);
        assert!(!queue.task_ended(JobId(1)));
        assert!(queue.task_started(JobId(1)));
        assert!(queue.task_ended(JobId(1)));
        assert!(!queue.task_ended(JobId(1)));
        assert!(!queue.task_started(JobId(99)));
        assert!(!queue.task_ended(JobId(99)));
        assert_eq!(queue.job(JobId(1)).unwrap().running_tasks, 0);
        assert!(queue.set_running_tasks(JobId(1), 7));
        assert_eq!(queue.job(JobId(1)).unwrap().running_tasks, 7);
        assert!(!queue.set_running_tasks(JobId(99), 1));
    }

    #[test]
    fn waiting_reasons_say_what_holds_a_job_back() {
        let start = Instant::now();
        let mut workers = Workers::new(LoadLimits::default());
        let mut queue = running(1, &[(1, Priority::Normal, 1)]);
        queue.submit(JobId(2), Priority::Normal, 1, Vec::new()).unwrap();
        queue.submit(JobId(3), Priority::Normal, 1, labels(&["gpu"])).unwrap();
        let reasons = |queue: &Queue, workers: &Workers, id| {
            queue.waiting_reasons(JobId(id), workers).unwrap().iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        assert_eq!(reasons(&queue, &workers, 1), ["no worker is connected"]);
        assert_eq!(
            reasons(&queue, &workers, 3),
            ["queued behind 1 other normal job(s); 1 normal job(s) run, the most at once", "no connected worker has the labels gpu"]
        );
        workers.joined("w1", labels(&["gpu"]), 2, 4, start);
        assert!(reasons(&queue, &workers, 1).is_empty());
        workers.heartbeat("w1", Load { load_average: 100.0, free_memory_bytes: u64::MAX, free_disk_bytes: u64::MAX }, start);
        assert_eq!(reasons(&queue, &workers, 1), ["every connected worker is over its load limits"]);
        assert_eq!(queue.waiting_reasons(JobId(3), &workers).unwrap().get(1), Some(&WaitingReason::EligibleWorkersLoaded(labels(&["gpu"]))));
        queue.remove(JobId(1));
        assert_eq!(
            reasons(&queue, &workers, 2),
            ["queued behind 0 other job(s) of its level, about to start", "every connected worker is over its load limits"]
        );
        assert_eq!(queue.waiting_reasons(JobId(1), &workers), Err(QueueError::UnknownJob(JobId(1))));
    }

    // Property tests: random operations against a model of what the queue
    // must hold, with every pick checked against the rules.

    const IDS: u64 = 6;

    /// The workers of the property tests: their labels.
    const WORKER_LABELS: [&[&str]; 3] = [&["zone=a", "gpu"], &["zone"], &[]];

    /// The requirements jobs draw theirs from.
    const REQUIREMENTS: [&str; 3] = ["zone=a", "zone", "gpu"];

    #[derive(Debug, Clone)]
    enum Step {
        Submit {
            id: u64,
            priority: Priority,
            weight: u32,
            requires: u8,
        },
        StartReady,
        /// Worker `worker` (over its limits unless `accepts`) asks; the
        /// jobs in bit mask `ready` have a task ready; a picked job's task
        /// starts if `start`.
        Pick {
            worker: usize,
            accepts: bool,
            ready: u8,
            start: bool,
        },
        TaskStarted(u64),
        TaskEnded(u64),
        Remove(u64),
        Cancel(u64),
    }

    fn priority() -> impl Strategy<Value = Priority> {
        prop_oneof![Just(Priority::High), Just(Priority::Normal), Just(Priority::Low)]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0..IDS, priority(), 0..4u32, 0..8u8).prop_map(|(id, priority, weight, requires)| Step::Submit { id, priority, weight, requires }),
            2 => Just(Step::StartReady),
            6 => (0..WORKER_LABELS.len(), any::<bool>(), any::<u8>(), any::<bool>())
                .prop_map(|(worker, accepts, ready, start)| Step::Pick { worker, accepts, ready, start }),
            3 => (0..IDS + 1).prop_map(Step::TaskStarted),
            3 => (0..IDS + 1).prop_map(Step::TaskEnded),
            1 => (0..IDS + 1).prop_map(Step::Remove),
            1 => (0..IDS + 1).prop_map(Step::Cancel),
        ]
    }

    fn requirements(mask: u8) -> Vec<Label> {
        let chosen: Vec<&str> = REQUIREMENTS.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, label)| *label).collect();
        labels(&chosen)
    }

    /// What the queue must hold of a job.
    #[derive(Debug, Clone, PartialEq)]
    struct ModelJob {
        priority: Priority,
        weight: u32,
        requires: Vec<Label>,
        state: QueueState,
        running_tasks: u64,
    }

    /// The job the rules give a slot to, found by sorting every candidate.
    fn expected_pick(model: &[(JobId, ModelJob)], worker: &WorkerView<'_>, ready: impl Fn(JobId) -> bool) -> Option<JobId> {
        if !worker.accepts_tasks {
            return None;
        }
        let rank = |level| Priority::ALL.iter().position(|&l| l == level).unwrap();
        let mut candidates: Vec<(usize, &(JobId, ModelJob))> = model
            .iter()
            .enumerate()
            .filter(|(_, (id, job))| job.state == QueueState::Running && meets_all(worker.labels, &job.requires) && ready(*id))
            .collect();
        candidates.sort_by(|(order_a, (_, a)), (order_b, (_, b))| {
            let share = |job: &ModelJob, other: &ModelJob| u128::from(job.running_tasks) * u128::from(other.weight);
            rank(a.priority).cmp(&rank(b.priority)).then(share(a, b).cmp(&share(b, a))).then(order_a.cmp(order_b))
        });
        candidates.first().map(|(_, (id, _))| *id)
    }

    fn check_matches_model(queue: &Queue, model: &[(JobId, ModelJob)], max_running: &MaxRunning) -> Result<(), TestCaseError> {
        let held: Vec<(JobId, ModelJob)> = queue
            .jobs()
            .map(|job| {
                let requires = job.requires.to_vec();
                (job.id, ModelJob { priority: job.priority, weight: job.weight, requires, state: job.state, running_tasks: job.running_tasks })
            })
            .collect();
        prop_assert_eq!(held.as_slice(), model);
        for level in Priority::ALL {
            let running = model.iter().filter(|(_, job)| job.priority == level && job.state == QueueState::Running).count();
            prop_assert!(running <= max_running.of(level) as usize, "{} {} jobs run", running, level);
        }
        for (id, job) in model {
            prop_assert!(job.state == QueueState::Running || job.running_tasks == 0, "{} is queued with running tasks", id);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn random_operations_follow_the_rules(steps in proptest::collection::vec(step(), 0..80), limits in (1..3u32, 1..3u32, 1..3u32)) {
            let max_running = MaxRunning { high: limits.0, normal: limits.1, low: limits.2 };
            let mut queue = Queue::new(max_running).unwrap();
            let mut model: Vec<(JobId, ModelJob)> = Vec::new();
            let worker_labels: Vec<Vec<Label>> = WORKER_LABELS.iter().map(|texts| labels(texts)).collect();
            for step in &steps {
                match step {
                    Step::Submit { id, priority, weight, requires } => {
                        let (id, requires) = (JobId(*id), requirements(*requires));
                        let submitted = queue.submit(id, *priority, *weight, requires.clone());
                        let known = model.iter().any(|(known, _)| *known == id);
                        prop_assert_eq!(submitted.is_ok(), *weight > 0 && !known);
                        if submitted.is_ok() {
                            model.push((id, ModelJob { priority: *priority, weight: *weight, requires, state: QueueState::Queued, running_tasks: 0 }));
                        }
                    }
                    Step::StartReady => {
                        let started = queue.start_ready();
                        for id in &started {
                            let job = model.iter_mut().find(|(known, _)| known == id).map(|(_, job)| job);
                            prop_assert!(job.as_ref().is_some_and(|job| job.state == QueueState::Queued), "{} started twice", id);
                            if let Some(job) = job {
                                job.state = QueueState::Running;
                            }
                        }
                        // Every level is now at its limit or has no queued job.
                        for level in Priority::ALL {
                            let of_level = |state| model.iter().filter(|(_, job)| job.priority == level && job.state == state).count();
                            prop_assert!(of_level(QueueState::Queued) == 0 || of_level(QueueState::Running) == max_running.of(level) as usize);
                        }
                    }
                    Step::Pick { worker, accepts, ready, start } => {
                        let view = WorkerView { labels: &worker_labels[*worker], accepts_tasks: *accepts };
                        let is_ready = |id: JobId| ready & (1 << id.0) != 0;
                        let picked = queue.pick(&view, is_ready);
                        prop_assert_eq!(picked, expected_pick(&model, &view, is_ready));
                        if let Some(id) = picked {
                            let (_, job) = model.iter().find(|(known, _)| *known == id).unwrap();
                            prop_assert!(job.state == QueueState::Running && is_ready(id) && meets_all(view.labels, &job.requires));
                            if *start {
                                prop_assert!(queue.task_started(id));
                                model.iter_mut().filter(|(known, _)| *known == id).for_each(|(_, job)| job.running_tasks += 1);
                            }
                        }
                    }
                    Step::TaskStarted(id) => {
                        let counted = queue.task_started(JobId(*id));
                        let job = model.iter_mut().find(|(known, job)| known.0 == *id && job.state == QueueState::Running);
                        prop_assert_eq!(counted, job.is_some());
                        if let Some((_, job)) = job {
                            job.running_tasks += 1;
                        }
                    }
                    Step::TaskEnded(id) => {
                        let counted = queue.task_ended(JobId(*id));
                        let job = model.iter_mut().find(|(known, job)| known.0 == *id && job.state == QueueState::Running && job.running_tasks > 0);
                        prop_assert_eq!(counted, job.is_some());
                        if let Some((_, job)) = job {
                            job.running_tasks -= 1;
                        }
                    }
                    Step::Remove(id) => {
                        let known = model.iter().any(|(known, _)| known.0 == *id);
                        prop_assert_eq!(queue.remove(JobId(*id)), known);
                        model.retain(|(known, _)| known.0 != *id);
                    }
                    Step::Cancel(id) => {
                        let state = model.iter().find(|(known, _)| known.0 == *id).map(|(_, job)| job.state);
                        let cancelled = queue.cancel(JobId(*id));
                        match state {
                            None => prop_assert_eq!(cancelled, Err(QueueError::UnknownJob(JobId(*id)))),
                            Some(QueueState::Running) => prop_assert_eq!(cancelled, Err(QueueError::AlreadyRunning(JobId(*id)))),
                            Some(QueueState::Queued) => {
                                prop_assert_eq!(cancelled, Ok(()));
                                model.retain(|(known, _)| known.0 != *id);
                            }
                        }
                    }
                }
                check_matches_model(&queue, &model, &max_running)?;
            }
        }

        #[test]
        fn within_a_level_each_job_gets_its_weights_share_of_picks(weights in proptest::collection::vec(1..=5u32, 2..=4), late_high in any::<bool>()) {
            // Whole tasks cannot split, so each job's running tasks sit a
            // task or two off its exact share of the slots: with 200
            // slots that is within 1.5 % of the picks.
            const SLOTS: usize = 200;
            const PICKS: usize = 20_000;
            let jobs: Vec<(u64, Priority, u32)> = weights.iter().enumerate().map(|(i, &w)| (i as u64, Priority::Normal, w)).collect();
            let mut queue = running(10, &jobs);
            if late_high {
                // A high job with nothing ready changes nothing below it.
                queue.submit(JobId(99), Priority::High, 1, Vec::new()).unwrap();
                queue.start_ready();
            }
            let worker = any_worker();
            let mut running_tasks = VecDeque::new();
            let mut counts = BTreeMap::new();
            for _ in 0..PICKS {
                if running_tasks.len() == SLOTS {
                    queue.task_ended(running_tasks.pop_front().unwrap());
                }
                let job = queue.pick(&worker, |id| id != JobId(99)).unwrap();
                queue.task_started(job);
                running_tasks.push_back(job);
                *counts.entry(job.0).or_insert(0usize) += 1;
            }
            let total: u32 = weights.iter().sum();
            for (i, &weight) in weights.iter().enumerate() {
                let share = *counts.get(&(i as u64)).unwrap_or(&0) as f64 / PICKS as f64;
                let fair = f64::from(weight) / f64::from(total);
                prop_assert!((share - fair).abs() < 0.015, "job {} of weight {} got {:.3} of the picks, its fair share is {:.3}", i, weight, share, fair);
            }
        }
    }
}
