//! What a worker process is given and how it ends: its settings
//! ([`WorkerConfig`]), its normal ends ([`WorkerExit`]) and its errors
//! ([`WorkerError`], each with its exit status). Shared by the one-job
//! loop ([`crate::worker`]) and the long-lived worker of a cluster
//! ([`crate::agent`]), and by the pieces both are built from.

use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::workers::Label;
use crate::handshake::Secret;
use crate::link::LinkLost;
use crate::memory_budget::SlotMemory;
use crate::rpc::WorkerId;
use crate::task_process::TaskCommand;

/// What a worker needs to run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The coordinator's `HOST:PORT`.
    pub master: String,
    /// How long to keep trying to reach the coordinator at start-up.
    pub connect_timeout: Duration,
    /// How long to keep trying to reach the coordinator again when the
    /// connection breaks mid-job (a restarted coordinator resumes the job);
    /// zero gives up at once.
    pub reconnect_timeout: Duration,
    /// Tasks this process runs at once (at least 1).
    pub slots: usize,
    /// The worker's memory budget in bytes (`--memory`), `None` for none,
    /// and each slot's share of it ([`crate::memory_budget`]).
    pub memory: Option<u64>,
    /// What each slot's tasks may buffer, from `memory`.
    pub slot_memory: SlotMemory,
    /// What this worker offers a cluster's jobs (`--label`); unused with a
    /// one-job coordinator.
    pub labels: Vec<Label>,
    /// How long a long-lived worker told to stop (SIGTERM, Ctrl-C) lets its
    /// running attempts finish and report before it cancels them.
    pub drain_timeout: Duration,
    /// The job's shared secret, to prove in each connection's handshake.
    pub secret: Option<Secret>,
    /// The file the secret was read from: task processes read it again
    /// (the secret is never passed on).
    pub token_file: Option<PathBuf>,
    /// How to start a slot's task process (this executable with
    /// `--task-process`).
    pub task_command: TaskCommand,
    /// Where to make this worker's work directory (a fresh directory in
    /// it, removed at exit; those of dead workers there are removed at
    /// start); `None` for the system's temporary directory.
    pub work_dir: Option<PathBuf>,
    /// Where this worker's file server listens (`HOST:PORT`); `None` for
    /// a free port on the address this worker reaches the coordinator from.
    pub serve_on: Option<String>,
    /// Whether to use the coordinator's job directory when it is visible
    /// here; `false` acts as if no filesystem were shared.
    pub use_shared_dir: bool,
    /// Bytes of runs one reduce attempt may fetch into memory from other
    /// workers (at most its slot's share allows); it fetches the rest into
    /// the work directory.
    pub fetch_memory: u64,
}

/// How a worker's run ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// The coordinator said the job is done.
    JobDone,
    /// A long-lived worker was told to stop, and stopped after its running
    /// attempts ended (or the drain timeout cancelled them).
    Drained,
}

/// Why a worker stopped abnormally.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named by their messages
pub enum WorkerError {
    /// No coordinator answered within the connect timeout.
    #[error("could not reach the coordinator at {master} within {} s: {last_error}", .timeout.as_secs_f64())]
    Unreachable { master: String, timeout: Duration, last_error: String },
    /// The coordinator stopped the job because a task could not succeed.
    #[error("the coordinator stopped the job: {0}")]
    JobFailed(String),
    /// The coordinator went away without saying the job was over, and did
    /// not come back (with the same job) within the reconnect timeout.
    #[error("lost the coordinator at {master} before the job ended: {error}")]
    CoordinatorLost { master: String, error: String },
    /// The coordinator's handshake refused this worker, or this worker
    /// would not trust the coordinator (see [`crate::handshake`]); the
    /// [`HandshakeError`](crate::handshake::HandshakeError), escaped (a refusal's reason is the peer's).
    #[error("the coordinator at {master} and this worker do not agree: {error}")]
    Refused { master: String, error: String },
    /// The operating system would not start a slot's thread.
    #[error("cannot start a slot thread: {0}")]
    Thread(std::io::Error),
    /// The work directory or the file server could not be set up, or the
    /// job's app could not be fetched or loaded.
    #[error("{0}")]
    Setup(String),
    /// The coordinator refused this worker's app: the job's is another.
    #[error("the coordinator at {master} refused this worker: {why}")]
    AppRefused { master: String, why: String },
    /// Started without an app, for a job that names none.
    #[error("the job at {master} names no app: give this worker APP, or start mr-master with --app")]
    NoApp { master: String },
    /// Started with an app, for a cluster: its jobs name their apps.
    #[error("{master} is a cluster (mr-master --serve), whose jobs name their own apps: start mr-worker without APP")]
    ClusterNamesApps { master: String },
    /// The cluster refused this worker's offer to join.
    #[error("the cluster at {master} refused this worker: {why}")]
    JoinRefused { master: String, why: String },
    /// The cluster went away and did not come back within the reconnect
    /// timeout.
    #[error("lost the cluster at {master}: {error}")]
    ClusterLost { master: String, error: String },
}

impl From<LinkLost> for WorkerError {
    /// A job's coordinator gone for good.
    fn from(lost: LinkLost) -> WorkerError {
        WorkerError::CoordinatorLost { master: lost.address, error: lost.error }
    }
}

impl WorkerError {
    /// The process exit status for this error: 3 when the job failed, 4
    /// when the coordinator vanished mid-job (or a long-lived worker's
    /// cluster did), 1 when the worker could not
    /// start (2 is a usage error, from the flag parser).
    pub fn exit_code(&self) -> u8 {
        match self {
            WorkerError::JobFailed(_) => 3,
            WorkerError::CoordinatorLost { .. } | WorkerError::ClusterLost { .. } => 4,
            WorkerError::Unreachable { .. }
            | WorkerError::Refused { .. }
            | WorkerError::Thread(_)
            | WorkerError::Setup(_)
            | WorkerError::AppRefused { .. }
            | WorkerError::NoApp { .. }
            | WorkerError::ClusterNamesApps { .. }
            | WorkerError::JoinRefused { .. } => 1,
        }
    }
}

/// This process's id in the coordinator's logs: `host:pid`.
pub fn worker_id() -> WorkerId {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}:{}", std::process::id())
}
