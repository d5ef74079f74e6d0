//! Map outputs lost after their map was done: a reduce that could not read
//! one (run again once the loss is confirmed, Hadoop's fetch-failure
//! rule), and maps whose output only a lost worker served.

use std::time::Instant;

use crate::rpc::{AttemptId, TaskId, WorkerId};

use super::table::GivenAttempt;
use super::{ReportVerdict, Scheduler, TaskState};

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

impl Scheduler {
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
}
