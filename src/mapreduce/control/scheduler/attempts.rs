//! An attempt's life in the task table: assignment (a queued task, or a
//! backup of a straggler), completion (the first report wins), failure,
//! and the bound on unsuccessful attempts that stops the job.

use std::time::Instant;

use crate::map_output::MapOutputLocation;
use crate::rpc::{Assignment, AttemptId, MapTask, ReduceTask, TaskId, WorkerId};
use crate::skipping::BadRecord;

use super::table::GivenAttempt;
use super::{Owner, ReportVerdict, Scheduler, TaskState, KILLED_ATTEMPTS_FACTOR};

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
    pub(super) fn new(attempt: AttemptId, worker: &str, now: Instant, backup: bool) -> Self {
        RunningAttempt { attempt, worker: worker.to_owned(), started: now, progress: 0, last_progress: now, backup }
    }
}

impl Scheduler {
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

    /// How many tasks [`Scheduler::assign`] would give `worker` now, one
    /// after another (idle tasks, or one backup when none is idle): the
    /// standing cluster asks before it sends free slots to this job.
    /// Overdue attempts are not given up here: the job's own loop does
    /// that as their deadlines pass.
    pub fn ready_tasks_for(&self, worker: &str, now: Instant) -> usize {
        if self.job_end().is_some() {
            return 0;
        }
        match self.idle_count() {
            0 => usize::from(self.next_backup(worker, now).is_some()),
            idle => idle,
        }
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
    pub(super) fn stop_running(&mut self, task: TaskId, attempt: AttemptId, rerun_first: bool) {
        let entry = self.entry_mut(task);
        let TaskState::Running(attempts) = &mut entry.state else { return };
        attempts.retain(|a| a.attempt != attempt);
        if attempts.is_empty() {
            entry.state = TaskState::Idle;
            self.running.retain(|&t| t != task);
            self.enqueue(task, rerun_first);
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
                staged_output: self.map_only().then(|| self.staged_output(m, attempt)),
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

    pub(super) fn mark_done(&mut self, task: TaskId, attempt: AttemptId, outputs: Vec<(u32, MapOutputLocation)>) {
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
    pub(super) fn count_unsuccessful(&mut self, task: TaskId, attempt: AttemptId, how: String, reported: Option<BadRecord>) {
        self.end_unsuccessfully(task, attempt, how, reported, true);
    }

    /// Notes an unsuccessful end of `attempt` of `task`; counts it toward
    /// the bound (see [`Scheduler::count_unsuccessful`]) only when
    /// `counted`. An attempt lost with its worker is not counted, as
    /// Hadoop counts it KILLED rather than FAILED: tasks run in processes
    /// of their own (see [`crate::worker`]), so a task that crashes ends
    /// as a failure, and a worker lost is the machine's fault, not the
    /// task's. The record it was handling is blamed all the same.
    pub(super) fn end_unsuccessfully(&mut self, task: TaskId, attempt: AttemptId, how: String, reported: Option<BadRecord>, counted: bool) {
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
}
