//! When a straggling task gets a backup attempt (Google MR section 3.6;
//! Hadoop's and Spark's speculative execution).
//!
//! Near the end of a phase a job waits for its slowest task; a task slowed
//! by its machine (a bad disk, a busy CPU, a stopped process) finishes
//! sooner if a second attempt runs beside it on an idle worker, the first
//! to finish winning. A backup costs a slot and the work of one task, so it
//! is started only for a clear straggler, judged against the tasks of the
//! same phase that already finished:
//!
//! - the phase is nearly over: no task of it is waiting for a worker, and at
//!   least half of its tasks are done;
//! - the attempt has run [`BackupPolicy::slowness`] times as long as the
//!   median finished task, and at least [`MIN_LAG`] longer than it, so that
//!   tasks of a few milliseconds are not backed up for noise.
//!
//! With the default slowness of 3 a phase whose task times vary by less than
//! a factor of 3 (the MIT lab's job-count test: 2 to 5 s) never gets a
//! backup. This module only judges; [`crate::scheduler`] decides which
//! running task and which worker.

use std::time::Duration;

/// How much longer than the median finished task an attempt must have run,
/// at least, to be backed up.
pub const MIN_LAG: Duration = Duration::from_secs(1);

/// When to back up a straggler.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BackupPolicy {
    /// How many times the phase's median finished task an attempt must have
    /// run to be a straggler (at least 1).
    pub slowness: f64,
}

impl Default for BackupPolicy {
    fn default() -> Self {
        BackupPolicy { slowness: 3.0 }
    }
}

impl BackupPolicy {
    /// The running time past which an attempt of a phase is a straggler,
    /// given how long the phase's finished tasks took (those this
    /// coordinator saw run) and how many of its `tasks` are `done`. `None`
    /// while the phase is not far enough along to judge.
    pub fn straggler_threshold(&self, finished: &[Duration], done: usize, tasks: usize) -> Option<Duration> {
        if finished.is_empty() || done * 2 < tasks {
            return None;
        }
        let typical = median(finished);
        Some(typical.mul_f64(self.slowness.max(1.0)).max(typical + MIN_LAG))
    }
}

/// The median of `durations` (the lower of the two middle ones for an even
/// count); `durations` is not empty.
fn median(durations: &[Duration]) -> Duration {
    let mut sorted = durations.to_vec();
    let middle = (sorted.len() - 1) / 2;
    *sorted.select_nth_unstable(middle).1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &[f64]) -> Vec<Duration> {
        s.iter().map(|&s| Duration::from_secs_f64(s)).collect()
    }

    #[test]
    fn no_threshold_before_half_the_phase_is_done() {
        let policy = BackupPolicy::default();
        assert_eq!(policy.straggler_threshold(&[], 0, 4), None);
        assert_eq!(policy.straggler_threshold(&secs(&[1.0]), 1, 4), None);
        assert_eq!(policy.straggler_threshold(&secs(&[1.0, 1.0]), 2, 4), Some(Duration::from_secs(3)));
        // Tasks done by a coordinator before a restart count toward the
        // half, though their times are unknown.
        assert_eq!(policy.straggler_threshold(&secs(&[2.0]), 3, 4), Some(Duration::from_secs(6)));
    }

    #[test]
    fn the_threshold_is_a_multiple_of_the_median_and_at_least_a_second_more() {
        let policy = BackupPolicy::default();
        assert_eq!(policy.straggler_threshold(&secs(&[9.0, 1.0, 2.0, 100.0]), 4, 4), Some(Duration::from_secs(6)));
        assert_eq!(policy.straggler_threshold(&secs(&[0.01, 0.02, 0.01]), 3, 3), Some(Duration::from_secs_f64(1.01)));
        let eager = BackupPolicy { slowness: 0.5 };
        assert_eq!(eager.straggler_threshold(&secs(&[4.0]), 1, 1), Some(Duration::from_secs(5)), "never below the median");
    }

    #[test]
    fn the_lab_job_count_spread_never_reaches_the_threshold() {
        // Maps that sleep 2 to 5 s: the fastest half finishing first gives
        // the lowest possible median, 2 s, and a threshold of 6 s.
        let threshold = BackupPolicy::default().straggler_threshold(&secs(&[2.0, 2.0, 2.0, 2.0]), 4, 8);
        assert!(threshold.unwrap() > Duration::from_secs(5));
    }
}
