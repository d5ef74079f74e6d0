//! The coordinator's scheduling logic: a plain state machine with no I/O.
//!
//! [`Scheduler`] holds the task table and decides what each worker does.
//! Every method is synchronous and takes the current `Instant` where time
//! matters, so tests drive it without sockets or sleeping; the tarpc shell in
//! [`crate::coordinator`] locks it, calls one method, and answers.
//!
//! Each task is in one state:
//!
//! ```text
//!            assign                     complete (first report wins)
//!   Idle ───────────────► Running ─────────────────────────────► Done
//!    ▲                      │  │
//!    └──── expire ──────────┘  │ fail: failures += 1; job fails at the limit
//!    └──── fail ───────────────┘
//!   Done(map) ──── map output lost (reported by a reduce) ────► Idle
//! ```
//!
//! Rules that keep the output exact:
//! - Reduce tasks are assigned only while every map task is Done.
//! - Any attempt ever issued for a task may complete it, as long as the task
//!   is not Done yet: a slow worker whose attempt timed out still finishes
//!   useful work. Once Done, later reports are ignored, so a stale worker can
//!   never replace a finished output.
//! - A timeout is not a failure of the task: it is how a crashed or stalled
//!   worker shows, and says nothing about the task (as in Hadoop).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::rpc::{Assignment, AttemptId, InputSplit, JobEnd, MapTask, ReduceTask, TaskId, WorkerId};
use crate::shuffle::MapOutputLocation;

/// The scheduler's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// How long an attempt may run before its task is given to another
    /// worker (the lab's 10 s).
    pub task_timeout: Duration,
    /// Reported failures (errors, panics) of one task after which the job
    /// stops. Hadoop's default is 4 attempts.
    pub max_task_failures: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { task_timeout: Duration::from_secs(10), max_task_failures: 4 }
    }
}

/// The state of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting for a worker.
    Idle,
    /// Given to a worker.
    Running {
        /// The attempt running now.
        attempt: AttemptId,
        /// Who runs it.
        worker: WorkerId,
        /// When the task is given to another worker if not reported.
        deadline: Instant,
    },
    /// Finished.
    Done {
        /// The attempt whose result was kept.
        attempt: AttemptId,
    },
}

/// One row of the task table.
#[derive(Debug, Clone)]
struct TaskEntry {
    state: TaskState,
    /// Every attempt issued for this task, oldest first.
    attempts: Vec<AttemptId>,
    /// Reported failures so far (timeouts are not counted).
    failures: u32,
    last_error: Option<String>,
}

impl TaskEntry {
    fn new() -> Self {
        TaskEntry { state: TaskState::Idle, attempts: Vec::new(), failures: 0, last_error: None }
    }

    fn is_done(&self) -> bool {
        matches!(self.state, TaskState::Done { .. })
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
    /// Tasks in the Running state; few (at most one per busy worker).
    running: Vec<TaskId>,
    /// The winning attempt's runs, per map task.
    map_outputs: Vec<Vec<(u32, MapOutputLocation)>>,
    maps_done: usize,
    reduces_done: usize,
    next_attempt: AttemptId,
    failure: Option<String>,
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
            map_outputs: vec![Vec::new(); map_count],
            maps_done: 0,
            reduces_done: 0,
            next_attempt: 1,
            failure: None,
        }
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

    /// The earliest deadline of a running attempt: when `expire` next has
    /// something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.running
            .iter()
            .filter_map(|&t| match self.entry(t).state {
                TaskState::Running { deadline, .. } => Some(deadline),
                _ => None,
            })
            .min()
    }

    /// Gives every attempt whose deadline has passed up for lost: its task
    /// becomes Idle and goes to the front of the queue, so it is re-run
    /// before new work. Returns the attempts given up: (task, attempt, worker).
    pub fn expire(&mut self, now: Instant) -> Vec<(TaskId, AttemptId, WorkerId)> {
        let mut expired = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            let task = self.running[i];
            let entry = self.entry_mut(task);
            match &entry.state {
                TaskState::Running { deadline, worker, attempt } if *deadline <= now => {
                    expired.push((task, *attempt, worker.clone()));
                    entry.state = TaskState::Idle;
                    self.running.swap_remove(i);
                    self.enqueue(task, true);
                }
                _ => i += 1,
            }
        }
        expired
    }

    /// Decides what `worker` does next. Call `expire` first so that
    /// overdue tasks are reassignable.
    pub fn assign(&mut self, worker: &str, now: Instant) -> Assignment {
        if let Some(end) = self.job_end() {
            return Assignment::Exit(end);
        }
        let Some(task) = self.next_idle() else { return Assignment::Wait };
        let attempt = self.next_attempt;
        self.next_attempt += 1;
        let deadline = now + self.config.task_timeout;
        let entry = self.entry_mut(task);
        entry.attempts.push(attempt);
        entry.state = TaskState::Running { attempt, worker: worker.to_owned(), deadline };
        self.running.push(task);
        self.task_spec(task, attempt)
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
            }),
            TaskId::Reduce(r) => Assignment::Reduce(ReduceTask {
                partition: r,
                attempt,
                runs: self
                    .map_outputs
                    .iter()
                    .enumerate()
                    .flat_map(|(m, outputs)| {
                        outputs.iter().filter(|(p, _)| *p == r).map(move |(_, loc)| (m as u32, loc.clone()))
                    })
                    .collect(),
                staged_output: self.staged_output(r, attempt),
            }),
        }
    }

    /// Where reduce attempt `attempt` of partition `r` writes its output
    /// before the coordinator commits it.
    pub fn staged_output(&self, r: u32, attempt: AttemptId) -> PathBuf {
        self.job_dir.join(format!("out-{r}.attempt-{attempt}"))
    }

    /// Whether a completion report for this attempt would be accepted. The
    /// coordinator asks before committing a reduce's output, so that only the
    /// winning attempt is ever renamed into place.
    pub fn would_accept_completion(&self, task: TaskId, attempt: AttemptId) -> ReportVerdict {
        let Some(entry) = self.get(task) else { return ReportVerdict::UnknownAttempt };
        if !entry.attempts.contains(&attempt) {
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
    pub fn complete(&mut self, task: TaskId, attempt: AttemptId, outputs: Vec<(u32, MapOutputLocation)>) -> ReportVerdict {
        let verdict = self.would_accept_completion(task, attempt);
        if verdict != ReportVerdict::Accepted {
            return verdict;
        }
        self.running.retain(|&t| t != task);
        self.entry_mut(task).state = TaskState::Done { attempt };
        match task {
            TaskId::Map(m) => {
                self.map_outputs[m as usize] = outputs;
                self.maps_done += 1;
            }
            TaskId::Reduce(_) => self.reduces_done += 1,
        }
        ReportVerdict::Accepted
    }

    /// Records that `attempt` of `task` failed with `error`. The task is
    /// retried unless it has now failed `max_task_failures` times, which
    /// stops the job.
    pub fn fail(&mut self, task: TaskId, attempt: AttemptId, error: &str) -> ReportVerdict {
        let verdict = self.would_accept_completion(task, attempt);
        if verdict != ReportVerdict::Accepted {
            return verdict;
        }
        let entry = self.entry_mut(task);
        entry.failures += 1;
        entry.last_error = Some(error.to_owned());
        let failures = entry.failures;
        // Only the current attempt's failure frees the task; an older
        // attempt failing says nothing about the one now running.
        if matches!(entry.state, TaskState::Running { attempt: a, .. } if a == attempt) {
            entry.state = TaskState::Idle;
            self.running.retain(|&t| t != task);
            self.enqueue(task, false);
        }
        if failures >= self.config.max_task_failures && self.failure.is_none() {
            self.failure = Some(self.failure_message(task, failures, error));
        }
        ReportVerdict::Accepted
    }

    /// Records that a reduce attempt could not read map task `map_task`'s
    /// output: the map task is re-run from its input, and the reduce goes back
    /// to the queue without a failure counted against it. The lost output
    /// counts as a failure of the map task, so a map whose output keeps
    /// getting lost still stops the job eventually.
    pub fn map_output_lost(&mut self, task: TaskId, attempt: AttemptId, map_task: u32, error: &str) -> ReportVerdict {
        let verdict = self.would_accept_completion(task, attempt);
        if verdict != ReportVerdict::Accepted || !matches!(task, TaskId::Reduce(_)) {
            return verdict;
        }
        let reduce = self.entry_mut(task);
        if matches!(reduce.state, TaskState::Running { attempt: a, .. } if a == attempt) {
            reduce.state = TaskState::Idle;
            self.running.retain(|&t| t != task);
            self.enqueue(task, false);
        }
        let Some(map) = self.maps.get_mut(map_task as usize) else { return ReportVerdict::UnknownAttempt };
        if map.is_done() {
            let lost = format!("its output was lost: {error}");
            map.state = TaskState::Idle;
            map.failures += 1;
            map.last_error = Some(lost.clone());
            let failures = map.failures;
            self.maps_done -= 1;
            self.map_outputs[map_task as usize].clear();
            self.enqueue(TaskId::Map(map_task), true);
            if failures >= self.config.max_task_failures && self.failure.is_none() {
                self.failure = Some(self.failure_message(TaskId::Map(map_task), failures, &lost));
            }
        }
        ReportVerdict::Accepted
    }

    fn failure_message(&self, task: TaskId, failures: u32, error: &str) -> String {
        let input = match task {
            TaskId::Map(m) => format!("input {}", self.splits[m as usize]),
            TaskId::Reduce(r) => format!("partition {r}"),
        };
        format!("{task} ({input}) failed {failures} times; last error: {error}")
    }

    fn get(&self, task: TaskId) -> Option<&TaskEntry> {
        self.entries(task).get(index(task))
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

    fn inputs(n: usize) -> Vec<InputSplit> {
        (0..n)
            .map(|i| InputSplit::whole(InputFile { name: format!("in-{i}"), path: PathBuf::from(format!("/data/in-{i}")), size: 10 }))
            .collect()
    }

    fn scheduler(maps: usize, reduces: u32) -> Scheduler {
        let config = SchedulerConfig { task_timeout: TIMEOUT, max_task_failures: 3 };
        Scheduler::new(config, inputs(maps), reduces, PathBuf::from("/job"))
    }

    fn location(m: u32, r: u32) -> MapOutputLocation {
        MapOutputLocation::SharedFile { path: PathBuf::from(format!("/job/map-{m}.runs")), range: RunRange { offset: u64::from(r) * 100, len: 100 } }
    }

    /// Assigns and expects a map task; returns (index, attempt).
    fn take_map(s: &mut Scheduler, worker: &str, now: Instant) -> (u32, AttemptId) {
        match s.assign(worker, now) {
            Assignment::Map(t) => (t.index, t.attempt),
            other => panic!("expected a map task for {worker}, got {other:?}"),
        }
    }

    fn take_reduce(s: &mut Scheduler, worker: &str, now: Instant) -> ReduceTask {
        match s.assign(worker, now) {
            Assignment::Reduce(t) => t,
            other => panic!("expected a reduce task for {worker}, got {other:?}"),
        }
    }

    #[test]
    fn maps_first_then_reduces_then_exit() {
        let now = Instant::now();
        let mut s = scheduler(2, 2);
        let (m0, a0) = take_map(&mut s, "w1", now);
        let (m1, a1) = take_map(&mut s, "w2", now);
        assert_eq!((m0, m1), (0, 1));
        // Every map is running: nothing to hand out, and no reduce may start.
        assert_eq!(s.assign("w3", now), Assignment::Wait);
        assert_eq!(s.complete(TaskId::Map(0), a0, vec![(0, location(0, 0)), (1, location(0, 1))]), ReportVerdict::Accepted);
        assert_eq!(s.assign("w3", now), Assignment::Wait, "a reduce must wait for every map");
        assert_eq!(s.complete(TaskId::Map(1), a1, vec![(1, location(1, 1))]), ReportVerdict::Accepted);

        let r0 = take_reduce(&mut s, "w1", now);
        assert_eq!(r0.partition, 0);
        assert_eq!(r0.runs, vec![(0, location(0, 0))]);
        let r1 = take_reduce(&mut s, "w2", now);
        assert_eq!(r1.runs, vec![(0, location(0, 1)), (1, location(1, 1))], "runs in map order");
        assert_ne!(r0.staged_output, r1.staged_output);
        assert_eq!(s.job_end(), None);
        s.complete(TaskId::Reduce(0), r0.attempt, vec![]);
        s.complete(TaskId::Reduce(1), r1.attempt, vec![]);
        assert_eq!(s.job_end(), Some(JobEnd::Succeeded));
        assert_eq!(s.assign("w1", now), Assignment::Exit(JobEnd::Succeeded));
    }

    #[test]
    fn a_job_without_inputs_goes_straight_to_reduce() {
        let now = Instant::now();
        let mut s = scheduler(0, 1);
        let r = take_reduce(&mut s, "w", now);
        assert!(r.runs.is_empty());
        s.complete(TaskId::Reduce(0), r.attempt, vec![]);
        assert_eq!(s.job_end(), Some(JobEnd::Succeeded));
    }

    #[test]
    fn an_overdue_task_goes_to_another_worker_and_is_not_a_failure() {
        let start = Instant::now();
        let mut s = scheduler(2, 1);
        let (_, stalled) = take_map(&mut s, "slow", start);
        assert_eq!(s.next_deadline(), Some(start + TIMEOUT));
        assert!(s.expire(start + TIMEOUT - Duration::from_millis(1)).is_empty(), "not yet overdue");
        let later = start + TIMEOUT;
        assert_eq!(s.expire(later), vec![(TaskId::Map(0), 1, "slow".to_string())]);
        // The expired task is re-run before untouched ones.
        let (m, retry) = take_map(&mut s, "fresh", later);
        assert_eq!(m, 0);
        assert_ne!(retry, stalled);
        assert!(matches!(s.state(TaskId::Map(0)), TaskState::Running { worker, .. } if worker == "fresh"));
        assert_eq!(s.entry(TaskId::Map(0)).failures, 0, "a timeout is not a failure");
    }

    #[test]
    fn first_completion_wins_and_later_reports_are_ignored() {
        let start = Instant::now();
        let mut s = scheduler(1, 1);
        let (_, first) = take_map(&mut s, "slow", start);
        s.expire(start + TIMEOUT);
        let (_, second) = take_map(&mut s, "fresh", start + TIMEOUT);
        // The timed-out attempt finishes first after all: it wins.
        assert_eq!(s.complete(TaskId::Map(0), first, vec![(0, location(0, 0))]), ReportVerdict::Accepted);
        assert_eq!(s.complete(TaskId::Map(0), second, vec![(0, location(9, 9))]), ReportVerdict::AlreadyDone);
        assert_eq!(s.complete(TaskId::Map(0), first, vec![]), ReportVerdict::AlreadyDone, "duplicate");
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
        s.complete(TaskId::Map(0), a, vec![]); // ...then finished by its first attempt
        let (m, _) = take_map(&mut s, "w", start + TIMEOUT);
        assert_eq!(m, 1, "map 0 is done and must be skipped");
        assert_eq!(s.assign("w2", start + TIMEOUT), Assignment::Wait);
    }

    #[test]
    fn unknown_attempts_and_tasks_are_ignored() {
        let now = Instant::now();
        let mut s = scheduler(1, 1);
        let (_, a) = take_map(&mut s, "w", now);
        assert_eq!(s.complete(TaskId::Map(0), a + 100, vec![]), ReportVerdict::UnknownAttempt);
        assert_eq!(s.complete(TaskId::Map(7), a, vec![]), ReportVerdict::UnknownAttempt);
        assert_eq!(s.complete(TaskId::Reduce(0), a, vec![]), ReportVerdict::UnknownAttempt);
        assert_eq!(s.fail(TaskId::Reduce(3), a, "x"), ReportVerdict::UnknownAttempt);
        assert!(matches!(s.state(TaskId::Map(0)), TaskState::Running { .. }));
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
        let expected = "map task 0 (input in-0) failed 3 times; last error: boom 3";
        assert_eq!(s.job_end(), Some(JobEnd::Failed(expected.to_string())));
        assert_eq!(s.assign("w", now), Assignment::Exit(JobEnd::Failed(expected.to_string())));
    }

    #[test]
    fn an_old_attempt_failing_does_not_free_the_running_one() {
        let start = Instant::now();
        let mut s = scheduler(1, 1);
        let (_, old) = take_map(&mut s, "slow", start);
        s.expire(start + TIMEOUT);
        let (_, current) = take_map(&mut s, "fresh", start + TIMEOUT);
        s.fail(TaskId::Map(0), old, "old attempt broke");
        assert!(matches!(s.state(TaskId::Map(0)), TaskState::Running { attempt, .. } if *attempt == current));
        assert_eq!(s.assign("third", start + TIMEOUT), Assignment::Wait);
    }

    #[test]
    fn lost_map_output_reruns_the_map_before_the_reduce() {
        let now = Instant::now();
        let mut s = scheduler(2, 2);
        for _ in 0..2 {
            let (m, a) = take_map(&mut s, "w", now);
            s.complete(TaskId::Map(m), a, vec![(0, location(m, 0)), (1, location(m, 1))]);
        }
        let r0 = take_reduce(&mut s, "w1", now);
        let r1 = take_reduce(&mut s, "w2", now);
        assert_eq!(s.map_output_lost(TaskId::Reduce(0), r0.attempt, 1, "truncated"), ReportVerdict::Accepted);
        assert_eq!(s.state(TaskId::Map(1)), &TaskState::Idle);
        assert_eq!(s.entry(TaskId::Reduce(0)).failures, 0, "not the reduce's fault");
        // Map 1 runs again before any reduce is handed out.
        let (m, a) = take_map(&mut s, "w3", now);
        assert_eq!(m, 1);
        assert_eq!(s.assign("w4", now), Assignment::Wait);
        s.complete(TaskId::Map(1), a, vec![(0, location(5, 0))]);
        let retry = take_reduce(&mut s, "w3", now);
        assert_eq!(retry.partition, 0);
        assert_eq!(retry.runs, vec![(0, location(0, 0)), (1, location(5, 0))]);
        // The other reduce, still running on old (valid) data, may finish.
        assert_eq!(s.complete(TaskId::Reduce(1), r1.attempt, vec![]), ReportVerdict::Accepted);
    }

    #[test]
    fn a_map_whose_output_keeps_getting_lost_stops_the_job() {
        let now = Instant::now();
        let mut s = scheduler(1, 1);
        for _ in 0..3 {
            let (_, a) = take_map(&mut s, "w", now);
            s.complete(TaskId::Map(0), a, vec![(0, location(0, 0))]);
            let r = take_reduce(&mut s, "w", now);
            s.map_output_lost(TaskId::Reduce(0), r.attempt, 0, "disk ate it");
        }
        match s.job_end() {
            Some(JobEnd::Failed(message)) => assert!(message.contains("map task 0 (input in-0)") && message.contains("disk ate it"), "{message}"),
            other => panic!("expected failure, got {other:?}"),
        }
    }
}
