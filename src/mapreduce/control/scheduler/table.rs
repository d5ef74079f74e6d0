//! The task table: one [`TaskEntry`] per task (its state, every attempt
//! given out with its owner, how the unsuccessful ones ended), looked up
//! by [`TaskId`], and the queues of Idle tasks waiting for a worker.

use crate::rpc::{AttemptId, TaskId, WorkerId};
use crate::skipping::BadRecord;

use super::{Owner, Scheduler, TaskState};

/// An attempt the scheduler gave out, with its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GivenAttempt {
    pub(super) attempt: AttemptId,
    /// `None` for an attempt restored from a journal that did not name its
    /// owner: no report of it is ever taken.
    pub(super) owner: Option<Owner>,
}

/// One row of the task table.
#[derive(Debug, Clone)]
pub(super) struct TaskEntry {
    pub(super) state: TaskState,
    /// Every attempt issued for this task (by this coordinator, or by one
    /// before a restart, as its journal says), oldest first, with its owner.
    pub(super) attempts: Vec<GivenAttempt>,
    /// Attempts that ended without success, each with how it ended, oldest
    /// first; an attempt is here at most once. Attempts that died on a
    /// record that is now skipped are taken off: they count no more.
    pub(super) unsuccessful: Vec<(AttemptId, String)>,
    /// Every attempt that ended without success, including those taken off.
    pub(super) ended_badly: Vec<AttemptId>,
    /// Records an attempt died on, not (yet) skipped, with the attempt.
    pub(super) blamed: Vec<(BadRecord, AttemptId)>,
    /// Records later attempts skip.
    pub(super) skipped: Vec<BadRecord>,
    /// For a done map: the workers whose reduces could not read the
    /// winning attempt's output, with the reduce attempt that said so.
    pub(super) fetch_failures: Vec<(WorkerId, AttemptId)>,
    /// Attempts lost with their worker (not counted toward the bound),
    /// each with how it ended, for the message if they exhaust theirs.
    pub(super) killed: Vec<(AttemptId, String)>,
}

impl TaskEntry {
    pub(super) fn new() -> Self {
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

    pub(super) fn is_done(&self) -> bool {
        matches!(self.state, TaskState::Done { .. })
    }

    pub(super) fn given(&self, attempt: AttemptId) -> Option<&GivenAttempt> {
        self.attempts.iter().find(|given| given.attempt == attempt)
    }

    pub(super) fn worker_of(&self, attempt: AttemptId) -> &str {
        match self.given(attempt) {
            Some(GivenAttempt { owner: Some(owner), .. }) => &owner.worker,
            _ => "a worker of the coordinator before the restart",
        }
    }

    /// Notes `attempt`'s unsuccessful end unless it was noted already (an
    /// attempt given up for silence may report a failure later), counting
    /// it toward the bound when `counted`. Returns whether it was new.
    pub(super) fn count_unsuccessful(&mut self, attempt: AttemptId, how: String, counted: bool) -> bool {
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
}

impl Scheduler {
    pub(super) fn get(&self, task: TaskId) -> Option<&TaskEntry> {
        self.entries(task).get(index(task))
    }

    pub(super) fn entries_mut(&mut self, task: TaskId) -> &mut [TaskEntry] {
        match task {
            TaskId::Map(_) => &mut self.maps,
            TaskId::Reduce(_) => &mut self.reduces,
        }
    }

    pub(super) fn entries(&self, task: TaskId) -> &[TaskEntry] {
        match task {
            TaskId::Map(_) => &self.maps,
            TaskId::Reduce(_) => &self.reduces,
        }
    }

    pub(super) fn entry(&self, task: TaskId) -> &TaskEntry {
        &self.entries(task)[index(task)]
    }

    pub(super) fn entry_mut(&mut self, task: TaskId) -> &mut TaskEntry {
        match task {
            TaskId::Map(m) => &mut self.maps[m as usize],
            TaskId::Reduce(r) => &mut self.reduces[r as usize],
        }
    }

    /// How many tasks [`Scheduler::next_idle`] would find one after
    /// another now, without taking them.
    pub(super) fn idle_count(&self) -> usize {
        let queue = if self.maps_done == self.maps.len() { &self.idle_reduces } else { &self.idle_maps };
        let mut seen = std::collections::HashSet::new();
        queue.iter().filter(|&&task| self.entry(task).state == TaskState::Idle && seen.insert(task)).count()
    }

    /// Pops the next assignable task: maps first; reduces only once every
    /// map is done.
    pub(super) fn next_idle(&mut self) -> Option<TaskId> {
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
    pub(super) fn enqueue(&mut self, task: TaskId, front: bool) {
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
}

pub(super) fn index(task: TaskId) -> usize {
    match task {
        TaskId::Map(i) | TaskId::Reduce(i) => i as usize,
    }
}
