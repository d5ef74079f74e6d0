//! The job's engine: its state ([`JobState`], under one lock in
//! [`Shared`]) and the operations that apply a worker's call to it, for the
//! connection shell ([`super::service`], [`super::connections`]) to call:
//! assignment (held until a task is ready), expiry of overdue attempts,
//! a worker gone with its connection, waiting for the job's end, pinning
//! the app, and the log line for a refused call. Reports are applied in [`super::reports`], the job
//! directory and journal kept in [`super::ledger`].
//!
//! [`Shared`] also holds the job's half of the connection shell (see
//! [`super::connections`]): the claims on worker ids, the count of open
//! connections, the idle limit and the signal that closes them. What
//! belongs to a listener (the handshake's secret, its refusal log, the
//! connection budget) is not here: the cluster will have one listener for
//! many jobs.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::files::Catalog;
use crate::journal::Record;
use crate::rpc::{Assignment, AttemptId, JobEnd, JobSpec, TaskId, WorkerId};
use crate::scheduler::{Owner, Scheduler};
use crate::status::JobStatus;
use crate::untrusted::{excerpt, WarningLimit, EXCERPT_CHARS};

use super::connections::Claim;
use super::ledger::Ledger;

/// The coordinator's view of the job: the task table, its observable
/// history, and where finished work is kept, changed together under one
/// lock.
pub(super) struct JobState {
    pub(super) scheduler: Scheduler,
    pub(super) status: JobStatus,
    pub(super) ledger: Ledger,
}

/// State shared by every RPC handler.
pub(super) struct Shared {
    /// Answer to `job()`; fixed for the job.
    pub(super) spec: JobSpec,
    pub(super) job: Mutex<JobState>,
    /// Signalled whenever the scheduler changes in a way that may let a held
    /// `request_task` proceed (a task finished or failed, the job ended).
    pub(super) changed: Notify,
    /// Signalled when an attempt is given out: its deadline may be the
    /// next one, and `wait_for_end` must look again (it might otherwise
    /// sleep past it, or forever, when no worker is left to ask for work).
    pub(super) attempt_started: Notify,
    pub(super) output_dir: PathBuf,
    /// Where the outputs are committed instead, on object storage.
    pub(super) object_storage: Option<crate::remote::ObjectUrl>,
    /// Workers heard from that have not been told `Exit` yet; `run` waits
    /// (up to `EXIT_GRACE`) for this to empty once the job is over.
    pub(super) not_yet_exited: Mutex<HashSet<WorkerId>>,
    /// Connections open (see [`OpenConnection`](super::connections::OpenConnection)):
    /// a worker told `Exit` closes its connection once it has the answer,
    /// so `run` also waits for this to reach 0.
    pub(super) connections: AtomicUsize,
    /// How long a connection may send nothing before it is closed: twice
    /// the task timeout, so that a silent worker loses its attempts to the
    /// timeout first, as documented, and its connection after.
    pub(super) idle_limit: Duration,
    /// The SHA-256 of the one app every worker of the job must run: the
    /// `--app`'s, or else the first worker's (journaled as `AppPinned`).
    pub(super) app_pin: Mutex<Option<String>>,
    /// What the file service on the RPC port serves: the inputs.
    pub(super) files: Arc<dyn Catalog>,
    /// Which process holds each worker id: ids of open connections only,
    /// so the table is bounded by the connection cap.
    pub(super) claims: Mutex<HashMap<WorkerId, Claim>>,
    /// `true` once the job is over and its workers told (or the grace for
    /// that spent): every connection still open is closed, and a new one is
    /// refused, so that nothing of the job is served while its directory
    /// is removed.
    pub(super) closed: watch::Sender<bool>,
    /// `true` once the job's end is known (its outputs published, or it
    /// failed): before its workers are told and its connections closed.
    pub(super) ended: watch::Sender<bool>,
    /// How long a `request_task` is held when no task is ready:
    /// [`POLL_WAIT`](crate::rpc::POLL_WAIT), or nothing in a cluster, whose slots ask the cluster
    /// which job to serve and must not sit in one job's wait meanwhile.
    pub(super) request_hold: Duration,
    /// Whether every attempt's start and success is logged at INFO (in a
    /// cluster, where it goes to the job's own log), not only at DEBUG.
    pub(super) log_every_attempt: bool,
    /// Reports, uploads and calls refused after the handshake (forged,
    /// stale or malformed): logged at most once per [`REFUSAL_LOG_WINDOW`].
    pub(super) refused_calls: Mutex<WarningLimit>,
}

/// At most one log line per this long about refused reports and uploads.
pub(super) const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);

impl Shared {
    pub(super) fn job(&self) -> MutexGuard<'_, JobState> {
        lock(&self.job)
    }

    /// Where the published output `name` is: in the output directory, or
    /// its URL on object storage.
    pub(super) fn output_path(&self, name: &str) -> PathBuf {
        match &self.object_storage {
            Some(prefix) => PathBuf::from(prefix.join(name).to_string()),
            None => self.output_dir.join(name),
        }
    }

    pub(super) fn not_yet_exited(&self) -> MutexGuard<'_, HashSet<WorkerId>> {
        lock(&self.not_yet_exited)
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock would be a bug in a handler; the state
    // is still the best record of the job, so keep using it.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until the scheduler reports the job over, and records the end.
/// Meanwhile gives up overdue attempts as their deadlines pass, so that a
/// lost attempt is seen (and counted toward its task's bound) even when no
/// worker is asking for work.
pub(super) async fn wait_for_end(shared: &Shared) -> JobEnd {
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let started = shared.attempt_started.notified();
        tokio::pin!(started);
        started.as_mut().enable();
        let next_deadline = {
            let mut job = shared.job();
            let now = Instant::now();
            if expire_overdue(&mut job, now) {
                shared.changed.notify_waiters();
            }
            if let Some(end) = job.scheduler.job_end() {
                job.status.job_ended(end.clone(), now);
                shared.ended.send_replace(true);
                return end;
            }
            job.scheduler.next_deadline()
        };
        let deadline = async {
            match next_deadline {
                Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut notified => {}
            () = &mut started => {}
            () = deadline => {}
        }
    }
}

/// The last connection of `worker`, which had called on it, closed: the
/// worker is gone. Unless the job is over, its running attempts are given
/// up at once (not counted toward their tasks' bounds) and the maps whose
/// output only it served run again; waiting calls are woken, and the job's
/// end no longer waits to tell it `Exit`.
pub(super) fn worker_disconnected(shared: &Shared, worker: &str) {
    let mut job = shared.job();
    let JobState { scheduler, status, .. } = &mut *job;
    let now = Instant::now();
    status.worker_disconnected(worker);
    if scheduler.job_end().is_none() {
        for lost in scheduler.worker_disconnected(worker) {
            tracing::warn!(task = %lost.task, attempt = lost.attempt, %worker, "attempt lost: {}; task will be re-run", lost.loss);
            status.attempt_lost(lost.task, lost.attempt, lost.loss, now);
        }
        forget_outputs_of(&mut job, worker, "disconnected");
    }
    drop(job);
    shared.not_yet_exited().remove(worker);
    shared.changed.notify_waiters();
}

/// Gives up the attempts that are overdue at `now` (see
/// [`Scheduler::expire`]) and the map outputs only silent workers held,
/// and records them; true if there were any.
fn expire_overdue(job: &mut JobState, now: Instant) -> bool {
    let lost = job.scheduler.expire(now);
    for lost in &lost {
        tracing::warn!(task = %lost.task, attempt = lost.attempt, worker = %lost.worker, "attempt given up: {}; task will be re-run", lost.loss);
        job.status.attempt_lost(lost.task, lost.attempt, lost.loss, now);
    }
    let mut forgot = false;
    for worker in job.scheduler.silent_workers(now) {
        forgot |= forget_outputs_of(job, &worker, "went silent");
    }
    !lost.is_empty() || forgot
}

/// Runs again the maps whose output only `worker`, now gone (`how`), could
/// serve (see [`Scheduler::forget_outputs_of`]); true if there were any.
fn forget_outputs_of(job: &mut JobState, worker: &str, how: &str) -> bool {
    let forgotten = job.scheduler.forget_outputs_of(worker);
    for &(map_task, attempt) in &forgotten {
        tracing::warn!(task = %TaskId::Map(map_task), attempt, %worker, "its output was served only by its worker, which {how}; task will be re-run");
        job.status.map_output_gone(map_task, &format!("its worker {worker} {how}, and its output with it"));
    }
    !forgotten.is_empty()
}

/// The first 12 hex digits of a SHA-256, enough to tell builds apart in a
/// message (by characters: the text may be a peer's).
pub(super) fn short(sha256: &str) -> String {
    sha256.chars().take(12).collect()
}

/// Pins the job to the app with `sha256` if it has none yet (journaling
/// the pin, so that a restarted coordinator keeps it); `Err` with the
/// pinned app's hash if it has another.
pub(super) fn pin_app(shared: &Shared, sha256: &str) -> Result<(), String> {
    // The job lock first, as everywhere: the pin is journaled under it.
    let mut job = shared.job();
    let mut pin = lock(&shared.app_pin);
    match pin.as_deref() {
        Some(pinned) if pinned.eq_ignore_ascii_case(sha256) => Ok(()),
        Some(pinned) => Err(pinned.to_owned()),
        None => {
            job.ledger.record(&Record::AppPinned { sha256: sha256.to_owned() });
            tracing::info!("the job runs the app with sha256 {} (its first worker's)", short(sha256));
            *pin = Some(sha256.to_owned());
            Ok(())
        }
    }
}

/// Answers a `request_task`: a task as soon as one is ready, `Exit` once the
/// job is over, or `Wait` after `Shared::request_hold` ([`POLL_WAIT`](crate::rpc::POLL_WAIT)
/// outside a cluster).
pub(super) async fn hold_until_assigned(shared: &Shared, owner: &Owner) -> Assignment {
    let give_up = tokio::time::Instant::now() + shared.request_hold;
    loop {
        // Register for wake-ups before looking, so a change between the
        // look and the wait is not missed.
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next_deadline = {
            let mut job = shared.job();
            let now = Instant::now();
            expire_overdue(&mut job, now);
            let JobState { scheduler, status, ledger } = &mut *job;
            match scheduler.assign(owner, now) {
                Assignment::Wait => scheduler.next_deadline(),
                other => {
                    if let Some((task, attempt)) = assigned_attempt(&other) {
                        ledger.record(&Record::Assigned { task, attempt, owner: owner.clone() });
                        let backup = scheduler.is_backup(task, attempt);
                        status.attempt_started(task, attempt, &owner.worker, backup, now);
                        if shared.log_every_attempt {
                            tracing::info!(%task, attempt, worker = %owner.worker, backup, "attempt started");
                        }
                        shared.attempt_started.notify_waiters();
                    }
                    return other;
                }
            }
        };
        let wake = next_deadline.map_or(give_up, |d| give_up.min(tokio::time::Instant::from_std(d)));
        if tokio::time::Instant::now() >= give_up {
            return Assignment::Wait;
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// The task and attempt an assignment starts, if it starts one.
fn assigned_attempt(assignment: &Assignment) -> Option<(TaskId, AttemptId)> {
    match assignment {
        Assignment::Map(t) => Some((TaskId::Map(t.index), t.attempt)),
        Assignment::Reduce(t) => Some((TaskId::Reduce(t.partition), t.attempt)),
        Assignment::Wait | Assignment::Exit(_) => None,
    }
}

/// Logs that a call from `owner` (`what`) was refused for `why`: one line
/// per [`REFUSAL_LOG_WINDOW`] at most, with how many were held back.
pub(super) fn refused(shared: &Shared, owner: &Owner, what: &str, why: &str) {
    let held_back = lock(&shared.refused_calls).offer(Instant::now());
    if let Some(held_back) = held_back {
        let worker = excerpt(&owner.worker, EXCERPT_CHARS);
        let also = if held_back > 0 { format!(" ({held_back} more refused since the last such line)") } else { String::new() };
        tracing::warn!("refused {what} from {worker}: {why}{also}");
    }
}
