//! The scheduler's tests: each drives the state machine with its own
//! `Instant`s and asserts the exact verdicts, with no sockets and no
//! sleeping.

use super::*;
use crate::rpc::{Assignment, AttemptProgress, InputFile, MapTask, ReduceTask};
use crate::runfile::RunRange;
use crate::skipping::BadRecord;

const TIMEOUT: Duration = Duration::from_secs(10);

/// `worker`'s one process.
fn owner(worker: &str) -> Owner {
    Owner::new(worker, [0; 16])
}

fn inputs(n: usize) -> Vec<InputSplit> {
    (0..n)
        .map(|i| InputSplit::whole(InputFile { name: format!("in-{i}"), path: PathBuf::from(format!("/data/in-{i}")), size: 10, modified: None }))
        .collect()
}

fn scheduler(maps: usize, reduces: u32) -> Scheduler {
    let config = SchedulerConfig { task_timeout: TIMEOUT, max_task_attempts: 3, backups: None, skip_bad_records: 0 };
    Scheduler::new(config, inputs(maps), reduces, PathBuf::from("/job"))
}

fn scheduler_with_backups(maps: usize, reduces: u32) -> Scheduler {
    let config = SchedulerConfig { task_timeout: TIMEOUT, max_task_attempts: 3, backups: Some(BackupPolicy::default()), skip_bad_records: 0 };
    Scheduler::new(config, inputs(maps), reduces, PathBuf::from("/job"))
}

fn location(m: u32, r: u32) -> MapOutputLocation {
    MapOutputLocation::SharedFile { path: PathBuf::from(format!("/job/map-{m}.runs")), range: RunRange { offset: u64::from(r) * 100, len: 100 } }
}

/// Assigns and expects a map task; returns (index, attempt).
fn take_map(s: &mut Scheduler, worker: &str, now: Instant) -> (u32, AttemptId) {
    match s.assign(&owner(worker), now) {
        Assignment::Map(t) => (t.index, t.attempt),
        other => panic!("expected a map task for {worker}, got {other:?}"),
    }
}

/// The running attempts of `task` and their workers.
fn running(s: &Scheduler, task: TaskId) -> Vec<(AttemptId, &str)> {
    s.running_attempts(task).iter().map(|a| (a.attempt, a.worker.as_str())).collect()
}

fn take_reduce(s: &mut Scheduler, worker: &str, now: Instant) -> ReduceTask {
    match s.assign(&owner(worker), now) {
        Assignment::Reduce(t) => t,
        other => panic!("expected a reduce task for {worker}, got {other:?}"),
    }
}

fn served(m: u32, r: u32, shared: bool) -> MapOutputLocation {
    let shared_path = shared.then(|| PathBuf::from(format!("/job/map-{m}.runs")));
    MapOutputLocation::Served {
        server: format!("host-{m}:1"),
        attempt: u64::from(m),
        range: RunRange { offset: u64::from(r) * 100, len: 100 },
        shared_path,
    }
}

#[test]
fn maps_whose_output_only_a_lost_worker_served_run_again_while_reduces_need_them() {
    let now = Instant::now();
    let mut s = scheduler(3, 1);
    let (_, a0) = take_map(&mut s, "gone", now);
    let (_, a1) = take_map(&mut s, "gone", now);
    let (_, a2) = take_map(&mut s, "stays", now);
    s.complete(TaskId::Map(0), a0, vec![(0, served(0, 0, false))], now);
    // In the shared job directory too: readable without its worker.
    s.complete(TaskId::Map(1), a1, vec![(0, served(1, 0, true))], now);
    s.complete(TaskId::Map(2), a2, vec![(0, served(2, 0, false))], now);
    assert_eq!(s.progress().maps_done, 3);
    assert_eq!(s.forget_outputs_of("gone"), vec![(0, a0)]);
    assert_eq!(s.progress().maps_done, 2);
    assert_eq!(s.forget_outputs_of("gone"), vec![], "forgotten once");
    // Map 0 runs again before any reduce, and does not count as a failure.
    let (m, again) = take_map(&mut s, "stays", now);
    assert_eq!(m, 0);
    s.complete(TaskId::Map(0), again, vec![(0, served(0, 0, false))], now);
    let r = take_reduce(&mut s, "stays", now);
    assert_eq!(s.entry(TaskId::Map(0)).unsuccessful, vec![]);
    s.complete(TaskId::Reduce(0), r.attempt, vec![], now);
    // Once every reduce is done, nothing needs the maps.
    assert_eq!(s.forget_outputs_of("stays"), vec![]);
}

#[test]
fn a_job_whose_reduces_are_done_succeeds_even_with_a_map_to_run_again() {
    let now = Instant::now();
    let mut s = scheduler(2, 2);
    let (_, a0) = take_map(&mut s, "gone", now);
    let (_, a1) = take_map(&mut s, "stays", now);
    s.complete(TaskId::Map(0), a0, vec![(0, served(0, 0, false)), (1, served(0, 1, false))], now);
    s.complete(TaskId::Map(1), a1, vec![(0, served(1, 0, false)), (1, served(1, 1, false))], now);
    let r0 = take_reduce(&mut s, "stays", now);
    let r1 = take_reduce(&mut s, "stays", now);
    s.complete(TaskId::Reduce(0), r0.attempt, vec![], now);
    // Reduce 1 has read map 0's output when map 0's worker is lost: the
    // map is queued again, and then reduce 1 finishes without it.
    assert_eq!(s.forget_outputs_of("gone"), vec![(0, a0)]);
    assert_eq!(s.job_end(), None);
    s.complete(TaskId::Reduce(1), r1.attempt, vec![], now);
    // The job ends with its last output (which is where it is published),
    // not later, when the map it no longer needs would have run again.
    assert_eq!(s.job_end(), Some(JobEnd::Succeeded));
    assert_eq!(s.assign(&owner("stays"), now), Assignment::Exit(JobEnd::Succeeded));
}

#[test]
fn attempts_given_up_or_beaten_are_abandoned() {
    let now = Instant::now();
    let mut s = scheduler(3, 1);
    let (_, a0) = take_map(&mut s, "w", now);
    let (_, a1) = take_map(&mut s, "w", now);
    let (_, a2) = take_map(&mut s, "w", now);
    s.complete(TaskId::Map(1), a1, vec![], now);
    s.fail(TaskId::Map(2), a2, "boom");
    let report = |task, attempt| AttemptProgress { task: TaskId::Map(task), attempt, units: 1 };
    let abandoned = s.abandoned(&owner("w"), &[report(0, a0), report(1, a1), report(2, a2)]);
    assert_eq!(abandoned, vec![a1, a2], "map 0's attempt still counts");
}

#[test]
fn maps_first_then_reduces_then_exit() {
    let now = Instant::now();
    let mut s = scheduler(2, 2);
    let (m0, a0) = take_map(&mut s, "w1", now);
    let (m1, a1) = take_map(&mut s, "w2", now);
    assert_eq!((m0, m1), (0, 1));
    // Every map is running: nothing to hand out, and no reduce may start.
    assert_eq!(s.assign(&owner("w3"), now), Assignment::Wait);
    assert_eq!(s.complete(TaskId::Map(0), a0, vec![(0, location(0, 0)), (1, location(0, 1))], now), ReportVerdict::Accepted);
    assert_eq!(s.assign(&owner("w3"), now), Assignment::Wait, "a reduce must wait for every map");
    assert_eq!(s.complete(TaskId::Map(1), a1, vec![(1, location(1, 1))], now), ReportVerdict::Accepted);

    let r0 = take_reduce(&mut s, "w1", now);
    assert_eq!(r0.partition, 0);
    assert_eq!(r0.runs, vec![(0, location(0, 0))]);
    let r1 = take_reduce(&mut s, "w2", now);
    assert_eq!(r1.runs, vec![(0, location(0, 1)), (1, location(1, 1))], "runs in map order");
    assert_ne!(r0.staged_output, r1.staged_output);
    assert_eq!(s.job_end(), None);
    s.complete(TaskId::Reduce(0), r0.attempt, vec![], now);
    s.complete(TaskId::Reduce(1), r1.attempt, vec![], now);
    assert_eq!(s.job_end(), Some(JobEnd::Succeeded));
    assert_eq!(s.assign(&owner("w1"), now), Assignment::Exit(JobEnd::Succeeded));
}

#[test]
fn a_map_only_job_ends_with_its_maps_each_staging_an_output_of_its_own() {
    let now = Instant::now();
    let mut s = scheduler(2, 0);
    assert!(s.map_only());
    assert_eq!((s.output_count(), s.output_task(1), s.output_task(2)), (2, Some(TaskId::Map(1)), None));
    let first = map_task(&mut s, "w1", now);
    let second = map_task(&mut s, "w2", now);
    assert_eq!(first.staged_output, Some(s.staged_output(0, first.attempt)));
    assert_eq!(second.staged_output, Some(s.staged_output(1, second.attempt)));
    assert_eq!(s.job_end(), None, "no reduce task does not mean done");
    s.complete(TaskId::Map(0), first.attempt, vec![], now);
    assert_eq!(s.job_end(), None);
    s.complete(TaskId::Map(1), second.attempt, vec![], now);
    assert_eq!(s.job_end(), Some(JobEnd::Succeeded));
    assert_eq!(s.assign(&owner("w1"), now), Assignment::Exit(JobEnd::Succeeded));
    // A job with reduces stages no map output.
    let mut with_reduces = scheduler(1, 1);
    assert_eq!(map_task(&mut with_reduces, "w", now).staged_output, None);
}

#[test]
fn a_job_without_inputs_goes_straight_to_reduce() {
    let now = Instant::now();
    let mut s = scheduler(0, 1);
    let r = take_reduce(&mut s, "w", now);
    assert!(r.runs.is_empty());
    s.complete(TaskId::Reduce(0), r.attempt, vec![], now);
    assert_eq!(s.job_end(), Some(JobEnd::Succeeded));
}

#[test]
fn an_attempt_without_progress_goes_to_another_worker_and_counts() {
    let start = Instant::now();
    let mut s = scheduler(2, 1);
    let (_, stalled) = take_map(&mut s, "slow", start);
    assert_eq!(s.next_deadline(), Some(start + TIMEOUT));
    // The worker is alive (heartbeats) but the attempt does not move.
    let almost = start + TIMEOUT - Duration::from_millis(1);
    s.heartbeat(&owner("slow"), &[progress(0, stalled, 0)], almost);
    assert!(s.expire(almost).is_empty(), "not yet overdue");
    let later = start + TIMEOUT;
    let lost = s.expire(later);
    assert_eq!(lost, vec![LostAttempt { task: TaskId::Map(0), attempt: 1, worker: "slow".into(), loss: AttemptLoss::NoProgress(TIMEOUT) }]);
    // The expired task is re-run before untouched ones.
    let (m, retry) = take_map(&mut s, "fresh", later);
    assert_eq!(m, 0);
    assert_ne!(retry, stalled);
    assert_eq!(running(&s, TaskId::Map(0)), vec![(retry, "fresh")]);
    assert_eq!(s.entry(TaskId::Map(0)).unsuccessful.len(), 1, "a timeout counts toward the bound");
}

fn progress(m: u32, attempt: AttemptId, units: u64) -> AttemptProgress {
    AttemptProgress { task: TaskId::Map(m), attempt, units }
}

#[test]
fn an_attempt_that_keeps_making_progress_is_never_taken_away() {
    let start = Instant::now();
    let mut s = scheduler(1, 1);
    let (_, attempt) = take_map(&mut s, "busy", start);
    // Progress every 6 s for a minute: far past the timeout, never lost.
    for step in 1..=10u32 {
        let now = start + Duration::from_secs(6 * u64::from(step));
        s.heartbeat(&owner("busy"), &[progress(0, attempt, u64::from(step))], now);
        assert!(s.expire(now).is_empty(), "step {step}");
        assert_eq!(s.next_deadline(), Some(now + TIMEOUT));
    }
    // Then it stalls while its worker keeps sending heartbeats.
    let stalled_at = start + Duration::from_secs(60);
    for secs in 61..70 {
        s.heartbeat(&owner("busy"), &[progress(0, attempt, 10)], start + Duration::from_secs(secs));
    }
    let lost = s.expire(stalled_at + TIMEOUT);
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].loss, AttemptLoss::NoProgress(TIMEOUT));
}

#[test]
fn a_silent_worker_loses_its_attempt_even_if_it_was_making_progress() {
    let start = Instant::now();
    let mut s = scheduler(2, 1);
    let (_, a) = take_map(&mut s, "stopped", start);
    let (_, b) = take_map(&mut s, "alive", start);
    let beat = start + Duration::from_secs(5);
    s.heartbeat(&owner("stopped"), &[progress(0, a, 100)], beat);
    s.heartbeat(&owner("alive"), &[progress(1, b, 1)], beat);
    assert_eq!(s.live_workers(beat), 2);
    // "alive" keeps both beating and progressing; "stopped" goes quiet.
    let now = beat + TIMEOUT;
    s.heartbeat(&owner("alive"), &[progress(1, b, 2)], now);
    let lost = s.expire(now);
    assert_eq!(lost, vec![LostAttempt { task: TaskId::Map(0), attempt: a, worker: "stopped".into(), loss: AttemptLoss::WorkerSilent(TIMEOUT) }]);
    assert_eq!(s.live_workers(now), 1);
    assert!(matches!(s.state(TaskId::Map(1)), TaskState::Running(_)));
}

#[test]
fn a_closed_connection_gives_up_the_workers_attempts_at_once() {
    let start = Instant::now();
    let mut s = scheduler(2, 1);
    let (_, a) = take_map(&mut s, "crashed", start);
    let (_, b) = take_map(&mut s, "other", start);
    let lost = s.worker_disconnected("crashed");
    assert_eq!(lost, vec![LostAttempt { task: TaskId::Map(0), attempt: a, worker: "crashed".into(), loss: AttemptLoss::WorkerDisconnected }]);
    assert_eq!(s.state(TaskId::Map(0)), &TaskState::Idle);
    // Lost with its worker: ended, but not counted toward the bound.
    assert_eq!(s.entry(TaskId::Map(0)).unsuccessful.len(), 0);
    assert_eq!(s.entry(TaskId::Map(0)).ended_badly, vec![a]);
    assert_eq!(running(&s, TaskId::Map(1)), vec![(b, "other")]);
    // A worker that was only cut off may still report; its result counts.
    assert_eq!(s.complete(TaskId::Map(0), a, vec![], start), ReportVerdict::Accepted);
}

#[test]
fn attempts_lost_with_their_workers_do_not_count_toward_the_bound_and_stalls_do() {
    let now = Instant::now();
    let mut s = scheduler(1, 1);
    // Workers die one after another while they hold map 0 (KILLED, as
    // Hadoop says): the task runs again, however often.
    for round in 1..=5 {
        let worker = format!("w{round}");
        let (m, _) = take_map(&mut s, &worker, now);
        assert_eq!(m, 0);
        s.worker_disconnected(&worker);
    }
    assert_eq!(s.job_end(), None);
    assert!(s.entry(TaskId::Map(0)).unsuccessful.is_empty());
    // An attempt that makes no progress on a live worker counts.
    let mut at = now;
    for round in 1..=3 {
        let (_, a) = take_map(&mut s, "alive", at);
        at += TIMEOUT;
        s.heard_from("alive", at);
        let lost = s.expire(at);
        assert_eq!(lost.iter().map(|l| (l.attempt, l.loss)).collect::<Vec<_>>(), vec![(a, AttemptLoss::NoProgress(TIMEOUT))], "round {round}");
    }
    match s.job_end() {
        Some(JobEnd::Failed(message)) => assert!(message.contains("did not succeed in 3 attempts") && message.contains("timed out"), "{message}"),
        other => panic!("expected the job to fail, got {other:?}"),
    }
}

#[test]
fn only_an_attempts_own_process_can_say_it_makes_progress() {
    let start = Instant::now();
    let mut s = scheduler(1, 1);
    let (_, a) = take_map(&mut s, "hung", start);
    for tick in 1..=10u64 {
        let at = start + TIMEOUT / 10 * tick as u32;
        s.heard_from("hung", at);
        // Another process, even one with the same worker id, claims progress.
        s.heartbeat(&owner("forger"), &[progress(0, a, tick)], at);
        s.heartbeat(&Owner::new("hung", [9; 16]), &[progress(0, a, tick)], at);
    }
    let lost = s.expire(start + TIMEOUT);
    assert_eq!(lost.iter().map(|l| (l.attempt, l.loss)).collect::<Vec<_>>(), vec![(a, AttemptLoss::NoProgress(TIMEOUT))]);
    assert_eq!(s.abandoned(&owner("forger"), &[progress(0, a, 1)]), vec![a], "not the forger's to run");
}

#[test]
fn an_attempt_given_out_before_a_restart_runs_again_under_its_deadline_when_its_process_reports_it() {
    let start = Instant::now();
    let mut s = scheduler(1, 1);
    s.start_epoch(1);
    assert!(s.restore_given(TaskId::Map(0), 5, owner("old")));
    s.heartbeat(&owner("old"), &[progress(0, 5, 1)], start);
    assert_eq!(running(&s, TaskId::Map(0)), vec![(5, "old")], "adopted, not run twice");
    assert_eq!(s.assign(&owner("other"), start), Assignment::Wait);
    // Hung: given up at its deadline like any attempt, and told so.
    s.heard_from("old", start + TIMEOUT);
    assert_eq!(s.expire(start + TIMEOUT).len(), 1);
    assert_eq!(s.abandoned(&owner("old"), &[progress(0, 5, 1)]), vec![5]);
    s.heartbeat(&owner("old"), &[progress(0, 5, 2)], start + TIMEOUT);
    assert_eq!(s.state(TaskId::Map(0)), &TaskState::Idle, "an attempt given up is not adopted again");
}

#[test]
fn a_task_that_loses_its_worker_every_time_stops_the_job_at_three_times_the_bound() {
    let now = Instant::now();
    let mut s = scheduler(1, 1);
    for round in 1..=9 {
        assert_eq!(s.job_end(), None, "round {round}");
        let worker = format!("w{round}");
        take_map(&mut s, &worker, now);
        s.worker_disconnected(&worker);
    }
    match s.job_end() {
        Some(JobEnd::Failed(message)) => {
            assert!(message.starts_with("map task 0 lost 9 attempts with their workers: attempt 1 on w1 was lost"), "{message}")
        }
        other => panic!("expected the job to stop, got {other:?}"),
    }
}

#[test]
fn a_late_failure_of_a_timed_out_attempt_is_counted_once() {
    let start = Instant::now();
    let mut s = scheduler(1, 1);
    let (_, a) = take_map(&mut s, "slow", start);
    // Its worker is alive (it sent heartbeats), its attempt stalled.
    s.heard_from("slow", start + TIMEOUT);
    s.expire(start + TIMEOUT);
    s.fail(TaskId::Map(0), a, "finally broke");
    assert_eq!(s.entry(TaskId::Map(0)).unsuccessful.len(), 1);
}

#[test]
fn first_completion_wins_and_later_reports_are_ignored() {
    let start = Instant::now();
    let mut s = scheduler(1, 1);
    let (_, first) = take_map(&mut s, "slow", start);
    s.expire(start + TIMEOUT);
    let (_, second) = take_map(&mut s, "fresh", start + TIMEOUT);
    // The timed-out attempt finishes first after all: it wins.
    assert_eq!(s.complete(TaskId::Map(0), first, vec![(0, location(0, 0))], start), ReportVerdict::Accepted);
    assert_eq!(s.complete(TaskId::Map(0), second, vec![(0, location(9, 9))], start), ReportVerdict::AlreadyDone);
    assert_eq!(s.complete(TaskId::Map(0), first, vec![], start), ReportVerdict::AlreadyDone, "duplicate");
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
    s.complete(TaskId::Map(0), a, vec![], start); // ...then finished by its first attempt
    let (m, _) = take_map(&mut s, "w", start + TIMEOUT);
    assert_eq!(m, 1, "map 0 is done and must be skipped");
    assert_eq!(s.assign(&owner("w2"), start + TIMEOUT), Assignment::Wait);
}

#[test]
fn after_a_restart_journaled_tasks_are_done_and_attempts_of_before_may_still_win() {
    let now = Instant::now();
    let mut s = scheduler(3, 1);
    s.start_epoch(2);
    assert!(s.restore(TaskId::Map(0), 7, Some(owner("before")), vec![(0, location(0, 0))], now));
    assert!(!s.restore(TaskId::Map(0), 8, None, vec![], now), "restored once");
    assert!(!s.restore(TaskId::Map(9), 8, None, vec![], now), "no such task");
    assert_eq!(s.progress().maps_done, 1);
    // Map 2's attempts 12 and 13 were given out before the restart.
    assert!(s.restore_given(TaskId::Map(2), 12, owner("stayed up")));
    assert!(s.restore_given(TaskId::Map(2), 13, owner("stayed up")));
    assert!(!s.restore_given(TaskId::Map(2), 2 * ATTEMPTS_PER_EPOCH + 5, owner("x")), "not of an earlier epoch");
    assert_eq!(s.owner_of(TaskId::Map(2), 12), Some(&owner("stayed up")));
    assert_eq!(s.owner_of(TaskId::Map(2), 14), None);
    // New attempts are numbered in the new epoch, and only idle tasks go out.
    let (m, a) = take_map(&mut s, "w1", now);
    assert_eq!((m, a), (1, 2 * ATTEMPTS_PER_EPOCH + 1));
    // Map 2's attempt from before the restart finishes: it wins.
    assert_eq!(s.complete(TaskId::Map(2), 14, vec![], now), ReportVerdict::UnknownAttempt, "never given out");
    assert_eq!(s.complete(TaskId::Map(2), 12, vec![(0, location(2, 0))], now), ReportVerdict::Accepted);
    assert_eq!(s.complete(TaskId::Map(2), 13, vec![], now), ReportVerdict::AlreadyDone);
    // An unknown attempt of this epoch is still unknown.
    assert_eq!(s.complete(TaskId::Map(1), a + 1, vec![], now), ReportVerdict::UnknownAttempt);
    assert_eq!(s.complete(TaskId::Map(1), a, vec![], now), ReportVerdict::Accepted);
    let reduce = take_reduce(&mut s, "w1", now);
    assert_eq!(reduce.runs, vec![(0, location(0, 0)), (2, location(2, 0))]);
}

#[test]
fn unknown_attempts_and_tasks_are_ignored() {
    let now = Instant::now();
    let mut s = scheduler(1, 1);
    let (_, a) = take_map(&mut s, "w", now);
    assert_eq!(s.complete(TaskId::Map(0), a + 100, vec![], now), ReportVerdict::UnknownAttempt);
    assert_eq!(s.complete(TaskId::Map(7), a, vec![], now), ReportVerdict::UnknownAttempt);
    assert_eq!(s.complete(TaskId::Reduce(0), a, vec![], now), ReportVerdict::UnknownAttempt);
    assert_eq!(s.fail(TaskId::Reduce(3), a, "x"), ReportVerdict::UnknownAttempt);
    assert!(matches!(s.state(TaskId::Map(0)), TaskState::Running(_)));
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
    let expected = "map task 0 (input in-0) did not succeed in 3 attempts: \
                    attempt 1 on w failed: boom 1; attempt 3 on w failed: boom 2; attempt 4 on w failed: boom 3";
    assert_eq!(s.job_end(), Some(JobEnd::Failed(expected.to_string())));
    assert_eq!(s.assign(&owner("w"), now), Assignment::Exit(JobEnd::Failed(expected.to_string())));
}

#[test]
fn an_old_attempt_failing_does_not_free_the_running_one() {
    let start = Instant::now();
    let mut s = scheduler(1, 1);
    let (_, old) = take_map(&mut s, "slow", start);
    s.expire(start + TIMEOUT);
    let (_, current) = take_map(&mut s, "fresh", start + TIMEOUT);
    s.fail(TaskId::Map(0), old, "old attempt broke");
    assert_eq!(running(&s, TaskId::Map(0)), vec![(current, "fresh")]);
    assert_eq!(s.assign(&owner("third"), start + TIMEOUT), Assignment::Wait);
}

#[test]
fn lost_map_output_reruns_the_map_before_the_reduce() {
    let now = Instant::now();
    let mut s = scheduler(2, 2);
    for _ in 0..2 {
        let (m, a) = take_map(&mut s, "w", now);
        s.complete(TaskId::Map(m), a, vec![(0, location(m, 0)), (1, location(m, 1))], now);
    }
    let r0 = take_reduce(&mut s, "w1", now);
    let r1 = take_reduce(&mut s, "w2", now);
    // The coordinator sees the file is short: confirmed at once.
    let lost = s.map_output_lost(TaskId::Reduce(0), r0.attempt, 1, "truncated", true, now);
    assert_eq!(lost, (ReportVerdict::Accepted, Some(LostOutput::Rerun { counted: true })));
    assert_eq!(s.state(TaskId::Map(1)), &TaskState::Idle);
    assert!(s.entry(TaskId::Reduce(0)).unsuccessful.is_empty(), "not the reduce's fault");
    // Map 1 runs again before any reduce is handed out.
    let (m, a) = take_map(&mut s, "w3", now);
    assert_eq!(m, 1);
    assert_eq!(s.assign(&owner("w4"), now), Assignment::Wait);
    s.complete(TaskId::Map(1), a, vec![(0, location(5, 0))], now);
    let retry = take_reduce(&mut s, "w3", now);
    assert_eq!(retry.partition, 0);
    assert_eq!(retry.runs, vec![(0, location(0, 0)), (1, location(5, 0))]);
    // The other reduce, still running on old (valid) data, may finish.
    assert_eq!(s.complete(TaskId::Reduce(1), r1.attempt, vec![], now), ReportVerdict::Accepted);
}

#[test]
fn a_map_whose_output_keeps_getting_lost_stops_the_job() {
    let now = Instant::now();
    let mut s = scheduler(1, 1);
    for _ in 0..3 {
        let (_, a) = take_map(&mut s, "w", now);
        s.complete(TaskId::Map(0), a, vec![(0, location(0, 0))], now);
        let r = take_reduce(&mut s, "w", now);
        // Its own worker cannot read it: that confirms it.
        let lost = s.map_output_lost(TaskId::Reduce(0), r.attempt, 0, "disk ate it", false, now);
        assert_eq!(lost.1, Some(LostOutput::Rerun { counted: true }));
    }
    match s.job_end() {
        Some(JobEnd::Failed(message)) => assert!(message.contains("map task 0 (input in-0)") && message.contains("disk ate it"), "{message}"),
        other => panic!("expected failure, got {other:?}"),
    }
}

/// A job whose two maps "server" did, with reduces on "r1", "r2", "r3".
fn maps_done_by_server(now: Instant) -> (Scheduler, Vec<ReduceTask>) {
    let mut s = scheduler(2, 3);
    for _ in 0..2 {
        let (m, a) = take_map(&mut s, "server", now);
        s.complete(TaskId::Map(m), a, (0..3).map(|r| (r, served(m, r, false))).collect(), now);
    }
    let reduces = ["r1", "r2", "r3"].iter().map(|w| take_reduce(&mut s, w, now)).collect();
    (s, reduces)
}

#[test]
fn one_reducer_alone_cannot_rerun_a_live_workers_map_and_two_can() {
    let now = Instant::now();
    let (mut s, reduces) = maps_done_by_server(now);
    let lost = s.map_output_lost(TaskId::Reduce(0), reduces[0].attempt, 1, "forged", false, now);
    assert_eq!(lost, (ReportVerdict::Accepted, Some(LostOutput::NotConfirmed { reduce_counted: false })));
    assert!(matches!(s.state(TaskId::Map(1)), TaskState::Done { .. }), "the map's output stays");
    assert_eq!(s.state(TaskId::Reduce(0)), &TaskState::Idle, "the reduce runs again");
    // The same worker again, on a new attempt: its reduce counts now.
    let again = take_reduce(&mut s, "r1", now);
    let lost = s.map_output_lost(TaskId::Reduce(0), again.attempt, 1, "forged", false, now);
    assert_eq!(lost.1, Some(LostOutput::NotConfirmed { reduce_counted: true }));
    assert_eq!(s.entry(TaskId::Reduce(0)).unsuccessful.len(), 1);
    assert!(s.entry(TaskId::Map(1)).unsuccessful.is_empty());
    // A second worker confirms it: the map runs again, counted.
    let lost = s.map_output_lost(TaskId::Reduce(1), reduces[1].attempt, 1, "unreadable", false, now);
    assert_eq!(lost.1, Some(LostOutput::Rerun { counted: true }));
    assert_eq!(s.state(TaskId::Map(1)), &TaskState::Idle);
    assert_eq!(s.entry(TaskId::Map(1)).unsuccessful.len(), 1);
}

#[test]
fn an_output_lost_with_its_worker_reruns_the_map_at_once_and_counts_against_nothing() {
    let now = Instant::now();
    let (mut s, reduces) = maps_done_by_server(now);
    s.worker_disconnected("server");
    let lost = s.map_output_lost(TaskId::Reduce(2), reduces[2].attempt, 0, "connection refused", false, now);
    assert_eq!(lost.1, Some(LostOutput::Rerun { counted: false }));
    assert!(s.entry(TaskId::Map(0)).unsuccessful.is_empty() && s.entry(TaskId::Reduce(2)).unsuccessful.is_empty());
    // A report of a map that runs again already changes nothing more.
    let lost = s.map_output_lost(TaskId::Reduce(0), reduces[0].attempt, 0, "late", false, now);
    assert_eq!(lost.1, Some(LostOutput::AlreadyRerunning));
    // And a map task the job has not is refused.
    assert_eq!(s.map_output_lost(TaskId::Reduce(1), reduces[1].attempt, 9, "x", false, now).0, ReportVerdict::UnknownAttempt);
    assert_eq!(s.map_output_lost(TaskId::Map(1), 2, 0, "x", false, now).0, ReportVerdict::UnknownAttempt, "maps read no map output");
}

#[test]
fn a_silent_worker_whose_outputs_were_restored_has_its_maps_run_again() {
    let start = Instant::now();
    let mut s = scheduler(2, 1);
    s.start_epoch(1);
    assert!(s.restore(TaskId::Map(0), 3, Some(owner("dead")), vec![(0, served(0, 0, false))], start));
    assert!(s.restore(TaskId::Map(1), 4, Some(owner("alive")), vec![(0, served(1, 0, false))], start));
    s.heard_from("alive", start + TIMEOUT);
    assert_eq!(s.silent_workers(start + TIMEOUT), vec!["dead".to_owned()]);
    assert_eq!(s.forget_outputs_of("dead"), vec![(0, 3)]);
    assert_eq!(take_map(&mut s, "alive", start + TIMEOUT).0, 0);
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn a_straggler_gets_one_backup_on_another_worker_and_the_first_to_finish_wins() {
    let t0 = Instant::now();
    let mut s = scheduler_with_backups(4, 1);
    let (_, a0) = take_map(&mut s, "w0", t0);
    let (_, a1) = take_map(&mut s, "w1", t0);
    let (_, slow) = take_map(&mut s, "w2", t0);
    let (_, slower) = take_map(&mut s, "w3", t0 - secs(0.5));
    s.complete(TaskId::Map(0), a0, vec![], t0 + secs(1.0));
    s.complete(TaskId::Map(1), a1, vec![], t0 + secs(1.0));
    // Half done in 1 s each: a straggler is a task running 3 s or more.
    assert_eq!(s.assign(&owner("w0"), t0 + secs(2.4)), Assignment::Wait, "nothing is slow yet");
    let (m, backup) = take_map(&mut s, "w0", t0 + secs(2.5));
    assert_eq!(m, 3, "map 3 has run 3 s, map 2 only 2.5 s");
    assert!(s.is_backup(TaskId::Map(3), backup) && !s.is_backup(TaskId::Map(3), slower));
    assert_eq!(running(&s, TaskId::Map(3)), vec![(slower, "w3"), (backup, "w0")]);
    let now = t0 + secs(3.0);
    assert_eq!(s.assign(&owner("w2"), now), Assignment::Wait, "no worker backs up its own attempt");
    let (m, backup2) = take_map(&mut s, "w1", now);
    assert_eq!(m, 2);
    assert_eq!(s.assign(&owner("w4"), now), Assignment::Wait, "one backup per task");
    // Map 2's backup finishes first and wins; its first attempt's late
    // report is ignored.
    assert_eq!(s.complete(TaskId::Map(2), backup2, vec![(0, location(2, 0))], now + secs(1.0)), ReportVerdict::Accepted);
    assert_eq!(s.complete(TaskId::Map(2), slow, vec![(0, location(9, 9))], now + secs(1.5)), ReportVerdict::AlreadyDone);
    // Map 3's first attempt fails: its backup still runs the task.
    assert_eq!(s.fail(TaskId::Map(3), slower, "disk error"), ReportVerdict::Accepted);
    assert_eq!(running(&s, TaskId::Map(3)), vec![(backup, "w0")]);
    assert_eq!(s.assign(&owner("w3"), now), Assignment::Wait, "the task is not idle");
    assert_eq!(s.complete(TaskId::Map(3), backup, vec![], now + secs(2.0)), ReportVerdict::Accepted);
    assert_eq!(take_reduce(&mut s, "w3", now).runs, vec![(2, location(2, 0))]);
}

#[test]
fn a_lost_backup_leaves_its_task_running() {
    let t0 = Instant::now();
    let mut s = scheduler_with_backups(2, 1);
    let (_, fast) = take_map(&mut s, "w0", t0);
    let (_, slow) = take_map(&mut s, "w1", t0);
    s.complete(TaskId::Map(0), fast, vec![], t0 + secs(0.1));
    let (_, backup) = take_map(&mut s, "w0", t0 + secs(1.1));
    let lost = s.worker_disconnected("w0");
    assert_eq!(lost.iter().map(|l| l.attempt).collect::<Vec<_>>(), vec![backup]);
    assert_eq!(running(&s, TaskId::Map(1)), vec![(slow, "w1")]);
    assert_eq!(s.entry(TaskId::Map(1)).ended_badly, vec![backup]);
    // Both attempts silent: both are given up and the task waits again.
    let (_, backup) = take_map(&mut s, "w2", t0 + secs(1.2));
    s.heartbeat(&owner("w1"), &[progress(1, slow, 1)], t0 + secs(1.2));
    let lost = s.expire(t0 + secs(1.2) + TIMEOUT);
    assert_eq!(lost.iter().map(|l| l.attempt).collect::<Vec<_>>(), vec![slow, backup]);
    assert_eq!(s.state(TaskId::Map(1)), &TaskState::Idle);
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn no_backups_while_tasks_wait_before_half_are_done_or_when_off() {
    let t0 = Instant::now();
    let late = t0 + Duration::from_secs(1000);
    let mut s = scheduler_with_backups(4, 1);
    let (_, a) = take_map(&mut s, "w0", t0);
    take_map(&mut s, "w1", t0);
    s.complete(TaskId::Map(0), a, vec![], t0 + secs(0.1));
    // Maps 2 and 3 still wait: they go first, whatever is slow.
    assert_eq!(take_map(&mut s, "w2", late).0, 2);
    assert_eq!(take_map(&mut s, "w3", late).0, 3);
    // One of four done: too early to judge.
    assert_eq!(s.assign(&owner("w4"), late), Assignment::Wait);

    let mut off = scheduler(2, 1);
    let (_, a) = take_map(&mut off, "w0", t0);
    take_map(&mut off, "w1", t0);
    off.complete(TaskId::Map(0), a, vec![], t0 + secs(0.1));
    assert_eq!(off.assign(&owner("w0"), late), Assignment::Wait, "backups off");
}

#[test]
fn reduces_are_judged_against_reduces() {
    let t0 = Instant::now();
    let mut s = scheduler_with_backups(1, 2);
    // A slow map phase says nothing about how long a reduce takes.
    let (_, m) = take_map(&mut s, "w0", t0);
    s.complete(TaskId::Map(0), m, vec![], t0 + secs(100.0));
    let start = t0 + secs(100.0);
    let r0 = take_reduce(&mut s, "w0", start);
    take_reduce(&mut s, "w1", start);
    s.complete(TaskId::Reduce(0), r0.attempt, vec![], start + secs(0.5));
    assert_eq!(s.assign(&owner("w0"), start + secs(1.4)), Assignment::Wait);
    let backup = take_reduce(&mut s, "w0", start + secs(1.5));
    assert_eq!(backup.partition, 1);
    assert_ne!(backup.staged_output, s.staged_output(1, backup.attempt - 1), "each attempt stages its own output");
}

/// A scheduler that skips up to `limit` bad records per task, whose
/// attempts' cursors are whatever the test puts in the returned map.
#[allow(clippy::type_complexity)]
fn skipping_scheduler(maps: usize, limit: u32) -> (Scheduler, std::sync::Arc<std::sync::Mutex<HashMap<PathBuf, BadRecord>>>) {
    let cursors = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let config = SchedulerConfig { task_timeout: TIMEOUT, max_task_attempts: 4, backups: None, skip_bad_records: limit };
    let reader = cursors.clone();
    let s = Scheduler::new(config, inputs(maps), 1, PathBuf::from("/job")).with_record_reader(move |path| reader.lock().unwrap().get(path).cloned());
    (s, cursors)
}

fn map_task(s: &mut Scheduler, worker: &str, now: Instant) -> MapTask {
    match s.assign(&owner(worker), now) {
        Assignment::Map(t) => t,
        other => panic!("expected a map task for {worker}, got {other:?}"),
    }
}

fn record(id: u64) -> BadRecord {
    BadRecord { id, preview: format!("line {id}\n").into_bytes() }
}

#[test]
fn a_key_hung_reduces_were_stuck_on_is_skipped_when_their_workers_report_it_late() {
    // Workers that share no directory: the scheduler cannot read their
    // cursors, and learns the record only from the late failure report.
    let (mut s, _cursors) = skipping_scheduler(0, 1);
    let mut at = Instant::now();
    for worker in ["w1", "w2"] {
        let r = take_reduce(&mut s, worker, at);
        at += TIMEOUT;
        s.heard_from(worker, at);
        assert_eq!(s.expire(at).len(), 1, "{worker}'s stuck attempt is given up");
        assert_eq!(s.fail_on_record(TaskId::Reduce(0), r.attempt, "stopped", Some(record(7))), ReportVerdict::Accepted);
        assert_eq!(s.fail_on_record(TaskId::Reduce(0), r.attempt, "stopped", Some(record(7))), ReportVerdict::Accepted, "twice is once");
    }
    assert!(s.entry(TaskId::Reduce(0)).unsuccessful.is_empty(), "the two attempts stuck on key 7 count no more");
    assert_eq!(take_reduce(&mut s, "w3", at).skip.unwrap().skip, vec![7]);
}

#[test]
fn a_line_two_attempts_died_on_is_skipped_and_those_attempts_count_no_more() {
    let now = Instant::now();
    let (mut s, cursors) = skipping_scheduler(1, 1);
    // Two attempts die on the whole split (their task processes are
    // killed): no line known, no tracking.
    for worker in ["w1", "w2"] {
        let task = map_task(&mut s, worker, now);
        assert_eq!(task.skip, None);
        s.fail(TaskId::Map(0), task.attempt, "killed by signal 6");
    }
    // The next ones read line by line under a cursor; two die on line 40.
    for worker in ["w3", "w4"] {
        let task = map_task(&mut s, worker, now);
        let plan = task.skip.expect("tracking after two failures");
        assert_eq!(plan.skip, Vec::<u64>::new());
        assert_eq!(plan.cursor.parent(), Some(std::path::Path::new("/job")));
        cursors.lock().unwrap().insert(plan.cursor, record(40));
        s.fail(TaskId::Map(0), task.attempt, "killed by signal 6");
        assert_eq!(s.job_end(), None, "{worker}: within the bound");
    }
    assert_eq!(s.entry(TaskId::Map(0)).unsuccessful.len(), 2, "the two deaths on line 40 count no more");
    let plan = map_task(&mut s, "w5", now).skip.unwrap();
    assert_eq!(plan.skip, vec![40]);
    assert_eq!(s.skipped_records(TaskId::Map(0)), vec!["line at byte 40 of in-0: \"line 40\"".to_string()]);
    assert_eq!(s.complete(TaskId::Map(0), map_attempt(&s), vec![], now), ReportVerdict::Accepted);
}

fn map_attempt(s: &Scheduler) -> AttemptId {
    s.running_attempts(TaskId::Map(0))[0].attempt
}

#[test]
fn past_the_skip_limit_or_without_a_record_the_bound_applies() {
    let now = Instant::now();
    let (mut s, cursors) = skipping_scheduler(1, 1);
    for worker in ["w1", "w2"] {
        map_task(&mut s, worker, now);
        s.fail(TaskId::Map(0), s.entry(TaskId::Map(0)).attempts.last().unwrap().attempt, "boom");
    }
    // Two deaths on line 1 skip it (the limit); two on line 2 count.
    for (worker, line) in [("w3", 1), ("w4", 1), ("w5", 2)] {
        let task = map_task(&mut s, worker, now);
        cursors.lock().unwrap().insert(task.skip.unwrap().cursor, record(line));
        s.fail(TaskId::Map(0), task.attempt, "killed by signal 11");
    }
    assert_eq!(s.job_end(), None);
    let task = map_task(&mut s, "w6", now);
    let plan = task.skip.unwrap();
    assert_eq!(plan.skip, vec![1]);
    cursors.lock().unwrap().insert(plan.cursor, record(2));
    s.fail(TaskId::Map(0), task.attempt, "killed by signal 11");
    match s.job_end() {
        Some(JobEnd::Failed(message)) => assert!(message.contains("did not succeed in 4 attempts"), "{message}"),
        other => panic!("expected the bound, got {other:?}"),
    }
}

#[test]
fn reduces_track_every_attempt_and_nothing_tracks_without_skipping() {
    let now = Instant::now();
    let (mut s, cursors) = skipping_scheduler(0, 1);
    for worker in ["w1", "w2"] {
        let task = take_reduce(&mut s, worker, now);
        let plan = task.skip.expect("reduces always track");
        cursors.lock().unwrap().insert(plan.cursor, record(7));
        s.fail(TaskId::Reduce(0), task.attempt, "the task process was killed by signal 6");
    }
    assert_eq!(take_reduce(&mut s, "w3", now).skip.unwrap().skip, vec![7]);
    assert_eq!(s.skipped_records(TaskId::Reduce(0)), vec!["key 7 \"line 7\"".to_string()]);

    let mut plain = scheduler(1, 1);
    let (_, a) = take_map(&mut plain, "w", now);
    plain.complete(TaskId::Map(0), a, vec![], now);
    assert_eq!(take_reduce(&mut plain, "w", now).skip, None);
}
