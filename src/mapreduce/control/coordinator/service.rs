//! The tarpc [`Coordinator`] service of one RPC connection: each handler
//! notes that its worker is alive, makes one engine call (see
//! [`super::engine`], [`super::reports`]) and translates the result into
//! the answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tarpc::context::Context;

use crate::memory_budget::WorkerMemory;
use crate::rpc::{Assignment, AttemptProgress, Coordinator, HeartbeatReply, JobSpec, TaskId, TaskReport, WorkerId};
use crate::scheduler::{Owner, ReportVerdict};
use crate::untrusted::excerpt;

use super::connections::OpenConnection;
use super::engine::{hold_until_assigned, pin_app, refused, short, Shared};
use super::reports::apply_report;

/// The tarpc service for one connection: a handle on the shared state.
#[derive(Clone)]
pub(super) struct CoordinatorServer {
    pub(super) shared: Arc<Shared>,
    /// The connection's remote address, for the status page.
    pub(super) peer: Option<String>,
    /// The worker the connection's handshake named: every call on it is
    /// this worker's.
    pub(super) worker: WorkerId,
    /// The same, with its process's incarnation.
    pub(super) owner: Owner,
    pub(super) connection: Arc<OpenConnection>,
}

impl CoordinatorServer {
    /// Notes a call from `worker`, which is alive.
    fn heard_from(&self, worker: &str) {
        self.connection.called.store(true, Ordering::Release);
        self.shared.not_yet_exited().insert(worker.to_owned());
        let mut job = self.shared.job();
        let now = Instant::now();
        job.scheduler.heard_from(worker, now);
        job.status.worker_seen(worker, self.peer.clone(), now);
    }

    /// `worker` says this of its memory.
    fn memory_reported(&self, worker: &str, memory: WorkerMemory) {
        self.shared.job().status.worker_memory(worker, memory);
    }

    /// `worker` was told the job is over.
    fn told_exit(&self, worker: &str) {
        self.shared.not_yet_exited().remove(worker);
        self.shared.job().status.worker_exited(worker);
    }
}

impl Coordinator for CoordinatorServer {
    async fn job(self, _: Context, app_sha256: Option<String>) -> Result<JobSpec, String> {
        let spec = &self.shared.spec;
        let Some(theirs) = app_sha256 else { return Ok(spec.clone()) };
        if !is_sha256_hex(&theirs) {
            let why = format!("its app's SHA-256 is not 64 hex digits: \"{}\"", excerpt(&theirs, 16));
            refused(&self.shared, &self.owner, "a worker", &why);
            return Err(why);
        }
        match pin_app(&self.shared, &theirs) {
            Ok(()) => Ok(spec.clone()),
            Err(pinned) => {
                let job_app = match &spec.app {
                    Some(app) => format!("the job's {}", app.file_name),
                    None => "the app of the job's first worker".to_owned(),
                };
                let how =
                    if spec.app.is_some() { "start it without APP to run the job's, or with the same build" } else { "start it with the same build" };
                let why = format!("its app (sha256 {}) is not {job_app} (sha256 {}): {how}", short(&theirs), short(&pinned));
                refused(&self.shared, &self.owner, "a worker", &why);
                Err(why)
            }
        }
    }

    async fn request_task(self, _: Context) -> Assignment {
        let worker = self.worker.clone();
        self.heard_from(&worker);
        let shared = &self.shared;
        let assignment = hold_until_assigned(shared, &self.owner).await;
        match &assignment {
            Assignment::Map(t) => tracing::debug!(%worker, task = %TaskId::Map(t.index), attempt = t.attempt, "assigned"),
            Assignment::Reduce(t) => tracing::debug!(%worker, task = %TaskId::Reduce(t.partition), attempt = t.attempt, "assigned"),
            Assignment::Wait => {}
            Assignment::Exit(_) => self.told_exit(&worker),
        }
        assignment
    }

    async fn heartbeat(self, _: Context, running: Vec<AttemptProgress>, memory: WorkerMemory) -> HeartbeatReply {
        let worker = self.worker.clone();
        self.heard_from(&worker);
        self.memory_reported(&worker, memory);
        let (end, abandoned) = {
            let mut job = self.shared.job();
            job.scheduler.heartbeat(&self.owner, &running, Instant::now());
            (job.scheduler.job_end(), job.scheduler.abandoned(&self.owner, &running))
        };
        match end {
            None if abandoned.is_empty() => HeartbeatReply::Continue,
            None => HeartbeatReply::Abandon(abandoned),
            Some(end) => {
                self.told_exit(&worker);
                HeartbeatReply::Exit(end)
            }
        }
    }

    async fn report_task(self, _: Context, report: TaskReport, memory: WorkerMemory) {
        let worker = self.worker.clone();
        self.heard_from(&worker);
        self.memory_reported(&worker, memory);
        let shared = &self.shared;
        let verdict = apply_report(shared, &self.owner, report);
        if verdict == ReportVerdict::Accepted {
            shared.changed.notify_waiters();
        }
    }
}

/// Whether `text` is a SHA-256 in hex, as [`crate::plugin::file_sha256`] writes it.
fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}
