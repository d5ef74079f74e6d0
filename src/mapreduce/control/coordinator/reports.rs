//! The engine's half of `report_task`: a worker's report checked
//! ([`check_report`]), applied to the scheduler, journaled and recorded in
//! the job's status; a winning reduce's output (or a map's, in a map-only
//! job) committed (renamed into place) under the job's lock before its
//! task is marked done.

use std::time::Instant;

use crate::counters::Counters;
use crate::job_dir::JobDir;
use crate::journal::Record;
use crate::map_output::run_is_present;
use crate::report_check::check_report;
use crate::rpc::{AttemptId, TaskId, TaskOutcome, TaskReport};
use crate::scheduler::{LostOutput, Owner, ReportVerdict, Scheduler};
use crate::status::JobStatus;
use crate::untrusted::excerpt;

use super::engine::{refused, JobState, Shared};

/// The most characters of a failure's text the coordinator keeps (in its
/// log, the status and the summary): a worker's errors are one line.
const MAX_ERROR_CHARS: usize = 1000;

/// Applies a report from `owner` to the scheduler, committing a winning
/// reduce's output first, and records it in the job's status. A report
/// that fails [`check_report`] changes nothing and is counted as refused.
/// Returns what the scheduler made of it.
pub(super) fn apply_report(shared: &Shared, owner: &Owner, report: TaskReport) -> ReportVerdict {
    let TaskReport { task, attempt, outcome } = report;
    let worker = owner.worker.as_str();
    let mut job = shared.job();
    let JobState { scheduler, status, ledger } = &mut *job;
    if let Err(why) = check_report(scheduler, owner, task, attempt, &outcome) {
        status.call_refused();
        refused(shared, owner, &format!("a report of {task} attempt {attempt}"), &why);
        return ReportVerdict::UnknownAttempt;
    }
    let now = Instant::now();
    let verdict = match outcome {
        TaskOutcome::MapDone { outputs, counters } if !scheduler.map_only() => {
            let verdict = scheduler.complete(task, attempt, outputs.clone(), now);
            if let (ReportVerdict::Accepted, TaskId::Map(m)) = (verdict, task) {
                ledger.record(&Record::MapDone { task: m, attempt, outputs, counters: counters.clone() });
            }
            record_completion(status, verdict, task, attempt, counters, now);
            verdict
        }
        // A map of a map-only job wrote one of the job's outputs: committed
        // as a reduce's is.
        TaskOutcome::MapDone { counters, .. } | TaskOutcome::ReduceDone { counters, .. } => {
            match commit_output(scheduler, &ledger.dir, task, attempt, now) {
                Ok(verdict) => {
                    if verdict == ReportVerdict::Accepted {
                        let counters = counters.clone();
                        ledger.record(&match task {
                            TaskId::Map(m) => Record::MapDone { task: m, attempt, outputs: Vec::new(), counters },
                            TaskId::Reduce(r) => Record::ReduceDone { task: r, attempt, counters },
                        });
                        // Still under the lock: no worker hears "done" before
                        // the outputs are in place.
                        ledger.publish_if_done(scheduler);
                    }
                    record_completion(status, verdict, task, attempt, counters, now);
                    verdict
                }
                Err((verdict, error)) => {
                    record_failure(status, verdict, task, attempt, &error, now);
                    verdict
                }
            }
        }
        TaskOutcome::Failed { error, record } => {
            let error = excerpt(&error, MAX_ERROR_CHARS);
            let record = record.map(|mut record| {
                record.preview.truncate(crate::skipping::PREVIEW_BYTES);
                record
            });
            tracing::warn!(%task, attempt, %worker, "attempt failed: {error}");
            let verdict = scheduler.fail_on_record(task, attempt, &error, record);
            record_failure(status, verdict, task, attempt, &error, now);
            verdict
        }
        TaskOutcome::MapOutputLost { map_task, error } => {
            let error = excerpt(&error, MAX_ERROR_CHARS);
            let confirms = coordinator_sees_output_lost(scheduler, task, map_task);
            let (verdict, lost) = scheduler.map_output_lost(task, attempt, map_task, &error, confirms, now);
            record_lost_output(status, verdict, lost, (task, attempt), map_task, &error, now);
            verdict
        }
    };
    match verdict {
        // A cluster keeps every attempt's story in the job's log (`mr logs`).
        ReportVerdict::Accepted if shared.log_every_attempt => tracing::info!(%task, attempt, %worker, "attempt succeeded"),
        ReportVerdict::Accepted => tracing::debug!(%task, attempt, %worker, "report accepted"),
        ReportVerdict::AlreadyDone => tracing::info!(%task, attempt, %worker, "late report for a finished task ignored"),
        ReportVerdict::UnknownAttempt => tracing::debug!(%task, attempt, %worker, "report for an unknown attempt ignored"),
    }
    verdict
}

/// Whether the coordinator sees for itself that map task `map_task`'s run
/// for reduce `task` is gone: it lies in the job directory, and is missing
/// or short there. (A run only its worker serves it cannot check.)
fn coordinator_sees_output_lost(scheduler: &Scheduler, task: TaskId, map_task: u32) -> bool {
    let TaskId::Reduce(r) = task else { return false };
    scheduler.map_runs(map_task).iter().any(|(p, location)| *p == r && !location.only_served() && !run_is_present(location))
}

/// Records what a reduce's report that it could not read a map's output
/// came to, in the status and the log.
fn record_lost_output(
    status: &mut JobStatus,
    verdict: ReportVerdict,
    lost: Option<LostOutput>,
    (task, attempt): (TaskId, AttemptId),
    map_task: u32,
    error: &str,
    now: Instant,
) {
    let map = TaskId::Map(map_task);
    match lost {
        Some(LostOutput::Rerun { counted }) => {
            let counts = if counted { "counted against it" } else { "its worker is gone" };
            tracing::warn!(%task, attempt, "{map}'s output is unreadable, re-running it ({counts}): {error}");
            status.map_output_lost(task, attempt, map_task, error, now);
        }
        Some(LostOutput::NotConfirmed { reduce_counted }) => {
            let then = if reduce_counted { "the reduce attempt counts as failed" } else { "the reduce runs again" };
            tracing::warn!(%task, attempt, "could not read {map}'s output, which is not confirmed lost; {then}: {error}");
            status.attempt_failed(task, attempt, &format!("could not read {map}'s output: {error}"), now);
        }
        Some(LostOutput::AlreadyRerunning) => status.attempt_failed(task, attempt, &format!("{map} is running again: {error}"), now),
        None => record_failure(status, verdict, task, attempt, error, now),
    }
}

/// Records a completion report: the winner's counters are kept, a late
/// duplicate's dropped.
fn record_completion(status: &mut JobStatus, verdict: ReportVerdict, task: TaskId, attempt: AttemptId, counters: Counters, now: Instant) {
    match verdict {
        ReportVerdict::Accepted => status.attempt_succeeded(task, attempt, counters, now),
        ReportVerdict::AlreadyDone => status.attempt_duplicate(task, attempt, now),
        ReportVerdict::UnknownAttempt => {}
    }
}

/// Records a failure report (a failure after the task was done is a duplicate).
fn record_failure(status: &mut JobStatus, verdict: ReportVerdict, task: TaskId, attempt: AttemptId, error: &str, now: Instant) {
    match verdict {
        ReportVerdict::Accepted => status.attempt_failed(task, attempt, error, now),
        ReportVerdict::AlreadyDone => status.attempt_duplicate(task, attempt, now),
        ReportVerdict::UnknownAttempt => {}
    }
}

/// Renames the staged output of an attempt of the task that writes output
/// `r` (reduce task `r`, or map task `r` of a map-only job) to
/// `mr-out-<r>` in the job directory if the attempt wins, then marks the
/// task done. A failed rename fails the attempt: `Err` carries the
/// scheduler's verdict on that failure and the error. Only the winner is
/// ever renamed, and the rename happens under the scheduler lock, so a
/// finished output is never replaced.
fn commit_output(
    scheduler: &mut Scheduler,
    job_dir: &JobDir,
    task: TaskId,
    attempt: u64,
    now: Instant,
) -> Result<ReportVerdict, (ReportVerdict, String)> {
    let r = match task {
        TaskId::Map(r) | TaskId::Reduce(r) => r,
    };
    if scheduler.output_task(r) != Some(task) {
        return Ok(ReportVerdict::UnknownAttempt);
    }
    let verdict = scheduler.would_accept_completion(task, attempt);
    if verdict != ReportVerdict::Accepted {
        return Ok(verdict);
    }
    let staged = scheduler.staged_output(r, attempt);
    let dest = job_dir.finished_output(r);
    match std::fs::rename(&staged, &dest) {
        Ok(()) => Ok(scheduler.complete(task, attempt, Vec::new(), now)),
        Err(e) => {
            let error = format!("committing {} to {}: {e}", staged.display(), dest.display());
            tracing::warn!(%task, attempt, "{error}");
            Err((scheduler.fail(task, attempt, &error), error))
        }
    }
}
