//! Which reports the coordinator applies: only those about an attempt it
//! gave out (in this process, or before a restart as its journal says),
//! from the process it gave it to, with an outcome of that task's kind and
//! map outputs the attempt can have made. Everything else is refused
//! before it touches the scheduler, whatever its sender knows (the job's
//! secret included). Pure functions of the [`Scheduler`], so that the
//! property tests below drive them with genuine and forged messages.

use crate::map_output::MapOutputLocation;
use crate::rpc::{AttemptId, TaskId, TaskOutcome};
use crate::scheduler::{Owner, Scheduler};

/// Why a report from `owner` must not be applied, if it must not: the
/// attempt was not given to that process (by this coordinator, or by one
/// before a restart as the journal says), its outcome is not of its task's
/// kind, or it names map outputs the job cannot have (outside the job
/// directory, another attempt's file, a partition the job has not, twice
/// the same partition): a report cannot point reducers at files of the
/// coordinator's choosing.
pub fn check_report(scheduler: &Scheduler, owner: &Owner, task: TaskId, attempt: AttemptId, outcome: &TaskOutcome) -> Result<(), String> {
    check_owner(scheduler, owner, task, attempt)?;
    match (task, outcome) {
        (TaskId::Map(_), TaskOutcome::MapDone { outputs, .. }) => check_map_outputs(scheduler, attempt, outputs),
        (TaskId::Reduce(_), TaskOutcome::ReduceDone { .. }) | (_, TaskOutcome::Failed { .. }) => Ok(()),
        (TaskId::Reduce(_), TaskOutcome::MapOutputLost { map_task, .. }) if (*map_task as usize) < scheduler.progress().maps => Ok(()),
        (TaskId::Reduce(_), TaskOutcome::MapOutputLost { map_task, .. }) => Err(format!("the job has no map task {map_task}")),
        (task, outcome) => Err(format!("{task} cannot end with {}", outcome_kind(outcome))),
    }
}

/// Whether `attempt` of `task` was given to `owner` (the same worker id
/// and the same process).
pub fn check_owner(scheduler: &Scheduler, owner: &Owner, task: TaskId, attempt: AttemptId) -> Result<(), String> {
    match scheduler.owner_of(task, attempt) {
        Some(given) if given == owner => Ok(()),
        Some(given) if given.worker == owner.worker => Err("the attempt was given to another process with this worker id".to_owned()),
        Some(given) => Err(format!("the attempt was given to {}", given.worker)),
        None => Err("no such attempt was given out".to_owned()),
    }
}

/// Whether a map attempt's reported runs are ones it can have made.
fn check_map_outputs(scheduler: &Scheduler, attempt: AttemptId, outputs: &[(u32, MapOutputLocation)]) -> Result<(), String> {
    let reduces = scheduler.progress().reduces;
    let mut seen = vec![false; reduces];
    for (partition, location) in outputs {
        match seen.get_mut(*partition as usize) {
            None => return Err(format!("it names a run for partition {partition} of a job with {reduces}")),
            Some(true) => return Err(format!("it names two runs for partition {partition}")),
            Some(seen) => *seen = true,
        }
        if !location.lies_under(scheduler.job_dir()) {
            return Err("it names a map output outside the job directory".to_owned());
        }
        if let MapOutputLocation::Served { attempt: served, .. } = location {
            if *served != attempt {
                return Err(format!("it names the output of attempt {served} as its own"));
            }
        }
    }
    Ok(())
}

/// An outcome's kind, for messages.
fn outcome_kind(outcome: &TaskOutcome) -> &'static str {
    match outcome {
        TaskOutcome::MapDone { .. } => "a map's completion",
        TaskOutcome::ReduceDone { .. } => "a reduce's completion",
        TaskOutcome::Failed { .. } => "a failure",
        TaskOutcome::MapOutputLost { .. } => "a lost map output",
    }
}

#[cfg(test)]
mod tests {
    //! Property tests: random interleavings of genuine messages from two
    //! workers and forged ones from token holders (every message kind, any
    //! attempt id, any task, before and after a coordinator restart). Every
    //! forged message is refused, genuine ones are not, and the job ends
    //! with exactly the genuine workers' outputs.

    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::*;
    use crate::rpc::{Assignment, InputFile, InputSplit, JobEnd};
    use crate::runfile::RunRange;
    use crate::scheduler::{ReportVerdict, SchedulerConfig, ATTEMPTS_PER_EPOCH};

    const MAPS: u32 = 3;
    const REDUCES: u32 = 2;

    /// A step of the interleaving.
    #[derive(Debug, Clone)]
    enum Step {
        /// Genuine worker `.0` asks for a task.
        Request(usize),
        /// Genuine worker `.0` finishes the `.1`-th attempt it holds.
        Finish(usize, usize),
        /// A forger sends a report.
        Forge { forger: usize, task: TaskId, attempt: AttemptChoice, outcome: u8, map_task: u32 },
        /// The coordinator restarts from its journal.
        Restart,
    }

    /// Which attempt id a forger names.
    #[derive(Debug, Clone)]
    enum AttemptChoice {
        /// One given out to someone (the `.0`-th, modulo their number).
        Given(usize),
        /// Any number.
        Any(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        let task = prop_oneof![(0..MAPS + 1).prop_map(TaskId::Map), (0..REDUCES + 1).prop_map(TaskId::Reduce)];
        let attempt = prop_oneof![
            any::<usize>().prop_map(AttemptChoice::Given),
            prop_oneof![Just(0u64), Just(1), Just(ATTEMPTS_PER_EPOCH), Just(ATTEMPTS_PER_EPOCH + 1), any::<u64>()].prop_map(AttemptChoice::Any),
        ];
        prop_oneof![
            4 => (0..2usize).prop_map(Step::Request),
            4 => (0..2usize, any::<usize>()).prop_map(|(w, i)| Step::Finish(w, i)),
            6 => (0..3usize, task, attempt, 0..5u8, 0..MAPS + 1).prop_map(|(forger, task, attempt, outcome, map_task)| Step::Forge {
                forger,
                task,
                attempt,
                outcome,
                map_task
            }),
            1 => Just(Step::Restart),
        ]
    }

    /// The genuine workers' processes, and the forgers': two strangers
    /// with the secret, and one that took genuine worker 0's id after it.
    fn genuine(w: usize) -> Owner {
        Owner::new(&format!("genuine-{w}"), [w as u8 + 1; 16])
    }

    fn forger(f: usize) -> Owner {
        match f {
            0 | 1 => Owner::new(&format!("forger-{f}"), [0xf0 + f as u8; 16]),
            _ => Owner::new("genuine-0", [0xee; 16]),
        }
    }

    fn job_dir() -> PathBuf {
        PathBuf::from("/job/.mr-job")
    }

    /// A genuine map attempt's runs: one per partition, in a file named by
    /// the attempt, so that a winner's runs tell which attempt it was.
    fn runs_of(attempt: AttemptId) -> Vec<(u32, MapOutputLocation)> {
        (0..REDUCES)
            .map(|r| {
                (r, MapOutputLocation::SharedFile { path: job_dir().join(format!("map.attempt-{attempt}")), range: RunRange { offset: 0, len: 1 } })
            })
            .collect()
    }

    fn new_scheduler() -> Scheduler {
        let config = SchedulerConfig { task_timeout: Duration::from_secs(10), max_task_attempts: 4, backups: None, skip_bad_records: 0 };
        let splits = (0..MAPS)
            .map(|i| InputSplit::whole(InputFile { name: format!("in-{i}"), path: PathBuf::from(format!("/in-{i}")), size: 1, modified: None }))
            .collect();
        Scheduler::new(config, splits, REDUCES, job_dir())
    }

    /// The coordinator's memory that survives it: its journal.
    #[derive(Default)]
    struct Journal {
        given: Vec<(TaskId, AttemptId, Owner)>,
        done: BTreeMap<TaskId, (AttemptId, Vec<(u32, MapOutputLocation)>)>,
        epoch: u64,
    }

    struct Model {
        scheduler: Scheduler,
        journal: Journal,
        /// Attempts each genuine worker holds.
        held: [Vec<(TaskId, AttemptId)>; 2],
        now: Instant,
    }

    impl Model {
        fn new() -> Model {
            Model { scheduler: new_scheduler(), journal: Journal::default(), held: [Vec::new(), Vec::new()], now: Instant::now() }
        }

        /// Applies a report as the coordinator does: checked, then given
        /// to the scheduler (a reduce's commit always succeeds here).
        fn report(&mut self, owner: &Owner, task: TaskId, attempt: AttemptId, outcome: TaskOutcome) -> Result<ReportVerdict, String> {
            check_report(&self.scheduler, owner, task, attempt, &outcome)?;
            let verdict = match outcome {
                TaskOutcome::MapDone { outputs, .. } => self.scheduler.complete(task, attempt, outputs, self.now),
                TaskOutcome::ReduceDone { .. } => self.scheduler.complete(task, attempt, Vec::new(), self.now),
                TaskOutcome::Failed { error, record } => self.scheduler.fail_on_record(task, attempt, &error, record),
                TaskOutcome::MapOutputLost { map_task, error } => self.scheduler.map_output_lost(task, attempt, map_task, &error, false, self.now).0,
            };
            if verdict == ReportVerdict::Accepted {
                if let TaskId::Map(m) = task {
                    if matches!(self.scheduler.state(task), crate::scheduler::TaskState::Done { .. }) {
                        self.journal.done.insert(task, (attempt, self.scheduler.map_runs(m).to_vec()));
                    }
                } else if matches!(self.scheduler.state(task), crate::scheduler::TaskState::Done { .. }) {
                    self.journal.done.insert(task, (attempt, Vec::new()));
                }
            }
            Ok(verdict)
        }

        fn request(&mut self, w: usize) {
            self.scheduler.heard_from(&genuine(w).worker, self.now);
            let assignment = self.scheduler.assign(&genuine(w), self.now);
            let given = match assignment {
                Assignment::Map(t) => (TaskId::Map(t.index), t.attempt),
                Assignment::Reduce(t) => (TaskId::Reduce(t.partition), t.attempt),
                Assignment::Wait | Assignment::Exit(_) => return,
            };
            self.journal.given.push((given.0, given.1, genuine(w)));
            self.held[w].push(given);
        }

        fn finish(&mut self, w: usize, pick: usize) {
            if self.held[w].is_empty() {
                return;
            }
            let (task, attempt) = self.held[w].remove(pick % self.held[w].len());
            let outcome = match task {
                TaskId::Map(_) => TaskOutcome::MapDone { outputs: runs_of(attempt), counters: Default::default() },
                TaskId::Reduce(_) => TaskOutcome::ReduceDone { counters: Default::default() },
            };
            let checked = self.report(&genuine(w), task, attempt, outcome);
            assert!(checked.is_ok(), "a genuine report of {task} attempt {attempt} was refused: {checked:?}");
        }

        fn forge(&mut self, f: usize, task: TaskId, attempt: &AttemptChoice, outcome: u8, map_task: u32) {
            let (task, attempt) = match attempt {
                AttemptChoice::Given(i) if !self.journal.given.is_empty() => {
                    let (task, attempt, _) = &self.journal.given[i % self.journal.given.len()];
                    (*task, *attempt)
                }
                AttemptChoice::Given(i) => (task, *i as u64),
                AttemptChoice::Any(a) => (task, *a),
            };
            let outcome = match outcome {
                0 => TaskOutcome::MapDone { outputs: Vec::new(), counters: Default::default() },
                1 => TaskOutcome::MapDone { outputs: runs_of(u64::MAX), counters: Default::default() },
                2 => TaskOutcome::ReduceDone { counters: Default::default() },
                3 => TaskOutcome::Failed { error: "forged".into(), record: None },
                _ => TaskOutcome::MapOutputLost { map_task, error: "forged".into() },
            };
            let refused = self.report(&forger(f), task, attempt, outcome.clone());
            assert!(refused.is_err(), "a forged {outcome:?} for {task} attempt {attempt} was applied: {refused:?}");
        }

        /// A new coordinator resumes the job from the journal; the genuine
        /// workers stay up, holding their attempts.
        fn restart(&mut self) {
            self.journal.epoch += 1;
            let mut scheduler = new_scheduler();
            scheduler.start_epoch(self.journal.epoch);
            let owner = |task, attempt| self.journal.given.iter().find(|(t, a, _)| *t == task && *a == attempt).map(|(_, _, o)| o.clone());
            for (&task, (attempt, runs)) in &self.journal.done {
                assert!(scheduler.restore(task, *attempt, owner(task, *attempt), runs.clone(), self.now));
            }
            for (task, attempt, owner) in &self.journal.given {
                scheduler.restore_given(*task, *attempt, owner.clone());
            }
            self.scheduler = scheduler;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn forged_reports_never_change_the_outcome_of_a_job_genuine_workers_finish(steps in proptest::collection::vec(step(), 0..60)) {
            let mut model = Model::new();
            for step in &steps {
                match step {
                    Step::Request(w) => model.request(*w),
                    Step::Finish(w, i) => model.finish(*w, *i),
                    Step::Forge { forger, task, attempt, outcome, map_task } => model.forge(*forger, *task, attempt, *outcome, *map_task),
                    Step::Restart => model.restart(),
                }
            }
            // The genuine workers finish the job on their own.
            for round in 0.. {
                prop_assert!(round < 200, "the job did not end");
                if model.scheduler.job_end().is_some() {
                    break;
                }
                model.request(round % 2);
                model.finish(round % 2, 0);
            }
            prop_assert_eq!(model.scheduler.job_end(), Some(JobEnd::Succeeded));
            // Every map's runs are those its genuine winner wrote.
            for m in 0..MAPS {
                let (winner, _) = &model.journal.done[&TaskId::Map(m)];
                let genuine_runs = runs_of(*winner);
                prop_assert_eq!(model.scheduler.map_runs(m), genuine_runs.as_slice());
                prop_assert!(model.journal.given.iter().any(|(t, a, o)| *t == TaskId::Map(m) && a == winner && o.worker.starts_with("genuine")));
            }
        }
    }
}
