//! Lending slots: which job a long-lived worker's free slot serves, and
//! the workers' comings and goings (join, heartbeat with load, leave, go
//! silent).
//!
//! A free slot asks [`Cluster::next_job`]; the queue picks among the
//! running jobs with a task ready for that worker (priority, then fair
//! share), the job's engine says how many tasks it would give the worker
//! now, and the slot then asks that job's engine for its task. Between the
//! answer and the task's start the slot is *offered* to the job: offers
//! count as running tasks in the fair share, and a job gets no more offers
//! than it has ready tasks, so that the slots freed at once do not all go
//! to one job and then find nothing there. An offer is taken up when the
//! job gives out an attempt (its attempt ids grow by one each), and all
//! are dropped when none was made for [`OFFER_LIFETIME`] (a slot that
//! found nothing there).

use std::time::{Duration, Instant};

use crate::cluster::queue::JobId;
use crate::cluster::registry::{Cluster, State};
use crate::cluster::workers::{Label, Load};
use crate::memory_budget::WorkerMemory;
use crate::rpc::POLL_WAIT;

/// How often a held `next_job` looks again at the engines.
const PICK_RETRY: Duration = Duration::from_millis(50);

/// How long a job's offers count after the last was made: a slot asks the
/// job for its task at once.
pub const OFFER_LIFETIME: Duration = Duration::from_millis(500);

/// The slots offered to one job whose tasks have not started yet.
#[derive(Debug, Clone, Copy)]
pub struct Offers {
    /// Offers not yet taken up.
    pending: usize,
    /// The job's next attempt id when last looked at.
    next_attempt: u64,
    /// When the last offer was made.
    last: Instant,
}

/// Heartbeat intervals a worker may miss before it is taken for gone.
const MISSED_HEARTBEATS: u32 = 3;

impl Cluster {
    /// Worker `id` joined (or joined again) on API connection `connection`.
    pub fn worker_joined(&self, id: &str, connection: u64, labels: Vec<Label>, slots: u32, cores: u32) {
        tracing::info!(worker = %id, slots, "worker joined");
        let mut state = self.state();
        state.workers.joined(id, labels, slots, cores, Instant::now());
        state.joined_on.insert(id.to_owned(), connection);
        drop(state);
        self.changed.notify_waiters();
    }

    /// A heartbeat from worker `id`, with its load if it could read it;
    /// false if it has not joined.
    pub fn worker_heartbeat(&self, id: &str, load: Option<Load>, memory: WorkerMemory) -> bool {
        let mut state = self.state();
        let now = Instant::now();
        let known = match load {
            Some(load) => state.workers.heartbeat(id, load, now),
            None => state.workers.touch(id, now),
        };
        if known {
            state.workers.memory_reported(id, memory);
        }
        known
    }

    /// Worker `id`'s API connection `connection` closed: it left, unless it
    /// joined again on another.
    pub fn worker_left(&self, id: &str, connection: u64) {
        let mut state = self.state();
        if state.joined_on.get(id) != Some(&connection) {
            return;
        }
        state.joined_on.remove(id);
        if state.workers.left(id) {
            tracing::info!(worker = %id, "worker left");
        }
    }

    /// Forgets workers silent for [`MISSED_HEARTBEATS`] intervals.
    pub fn expire_workers(&self) {
        let silence = self.config.heartbeat_interval * MISSED_HEARTBEATS;
        let mut state = self.state();
        for id in state.workers.expire(Instant::now(), silence) {
            state.joined_on.remove(&id);
            tracing::warn!(worker = %id, "worker silent for {} s: taken for gone", silence.as_secs_f64());
        }
    }

    /// The job a free slot of worker `id` serves, not one of `declined`: as
    /// soon as one has a task ready for it, or `None` after [`POLL_WAIT`].
    pub async fn next_job(&self, worker: &str, declined: &[JobId]) -> Option<JobId> {
        let give_up = tokio::time::Instant::now() + POLL_WAIT;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(id) = pick(&mut self.state(), worker, declined, Instant::now()) {
                return Some(id);
            }
            // Engines do not signal here when their tasks become ready (a
            // map done lets the reduces go): look again shortly.
            let wake = give_up.min(tokio::time::Instant::now() + PICK_RETRY);
            if tokio::time::Instant::now() >= give_up {
                return None;
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

/// One look for a job for a free slot of `worker`; records the offer.
fn pick(state: &mut State, worker: &str, declined: &[JobId], now: Instant) -> Option<JobId> {
    state.offers.retain(|id, _| state.unfinished.contains_key(id));
    let mut ready = Vec::new();
    for (&id, job) in &state.unfinished {
        let Some(engine) = job.engine.as_ref().filter(|engine| engine.serving()) else { continue };
        let next_attempt = engine.handle.next_attempt_id();
        let pending = match state.offers.get_mut(&id) {
            Some(offers) => {
                let started = usize::try_from(next_attempt.saturating_sub(offers.next_attempt)).unwrap_or(usize::MAX);
                offers.pending = if now.saturating_duration_since(offers.last) < OFFER_LIFETIME { offers.pending.saturating_sub(started) } else { 0 };
                offers.next_attempt = next_attempt;
                offers.pending
            }
            None => 0,
        };
        state.queue.set_running_tasks(id, (engine.handle.progress().running + pending) as u64);
        if !declined.contains(&id) && engine.handle.ready_tasks_for(worker) > pending {
            ready.push((id, next_attempt));
        }
    }
    let view = state.workers.view(worker)?;
    let id = state.queue.pick(&view, |id| ready.iter().any(|&(job, _)| job == id))?;
    let next_attempt = ready.iter().find(|&&(job, _)| job == id).map_or(0, |&(_, next)| next);
    let offers = state.offers.entry(id).or_insert(Offers { pending: 0, next_attempt, last: now });
    offers.pending += 1;
    offers.last = now;
    Some(id)
}
