//! Which workers are alive (heard from within the task timeout, connection
//! open), what their heartbeats say of their attempts, and the attempts
//! given up when a worker goes silent or disconnects, or an attempt makes
//! no progress.

use std::time::{Duration, Instant};

use crate::rpc::{AttemptId, AttemptProgress, TaskId, WorkerId};

use super::table::index;
use super::{Owner, RunningAttempt, Scheduler, TaskState};

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

impl Scheduler {
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

    /// Workers silent for the task timeout at `now`, heard from before.
    pub fn silent_workers(&self, now: Instant) -> Vec<WorkerId> {
        let timeout = self.config.task_timeout;
        self.workers.iter().filter(|(_, &heard)| now.saturating_duration_since(heard) >= timeout).map(|(w, _)| w.clone()).collect()
    }

    /// Whether `worker` is connected and was heard from within half the
    /// task timeout (it sends heartbeats every quarter of it).
    pub(super) fn is_alive(&self, worker: &str, now: Instant) -> bool {
        self.workers.get(worker).is_some_and(|&heard| now.saturating_duration_since(heard) < self.config.task_timeout / 2)
    }

    /// Workers alive at `now` other than `server`.
    pub(super) fn live_workers_besides(&self, server: Option<&str>, now: Instant) -> usize {
        self.workers.keys().filter(|w| Some(w.as_str()) != server && self.is_alive(w, now)).count()
    }
}
