//! The cluster's own API, served after the handshake on the service byte
//! [`SERVICE_CLUSTER`](crate::route::SERVICE_CLUSTER): what the `mr` client
//! asks (submit a job, look jobs up by id, cancel, list the workers) and
//! what a long-lived worker asks (join, report its load, which job a free
//! slot serves). A job's own traffic does not come here: it goes to the
//! job's engine by the job's route (see [`crate::route`]).
//!
//! Every call is answered from the caller's identity (its handshake): a
//! worker joins as itself, and its load and slots are its own.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cli::JobFlags;
use crate::cluster::history::JobState;
use crate::cluster::queue::{JobId, Priority};
use crate::cluster::workers::{Label, Load};
use crate::memory_budget::WorkerMemory;
use crate::scheduler::Progress;

/// A job as the client submits it: its flags (paths made absolute by the
/// client, since the coordinator may run elsewhere), and how it is queued.
/// As JSON, a field left out takes `mr submit`'s default; an unknown
/// one is an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Submission {
    /// Everything `mr-master` takes for its one job.
    pub job: JobFlags,
    /// Its level in the queue.
    pub priority: Priority,
    /// Its share of its level's slots, relative to other jobs' (at least 1).
    pub weight: u32,
    /// Labels a worker must have to run its tasks.
    pub requires: Vec<Label>,
    /// Replace the outputs a finished job left in the output directory.
    pub overwrite: bool,
    /// Jobs whose outputs are inputs of this one (`--input-job`), besides
    /// `job.inputs`: a finished job's are taken at once, an unfinished
    /// job's when it succeeds (see [`crate::cluster::steps`]).
    pub input_jobs: Vec<JobId>,
}

impl Default for Submission {
    fn default() -> Self {
        Submission { job: JobFlags::default(), priority: Priority::Normal, weight: 1, requires: Vec::new(), overwrite: false, input_jobs: Vec::new() }
    }
}

/// A job as `mr status` and `mr list` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobInfo {
    /// Its id.
    pub id: JobId,
    /// Where it is in its life.
    pub state: JobState,
    /// Its queue level.
    pub priority: Priority,
    /// Its weight within its level.
    pub weight: u32,
    /// The labels its workers must have.
    pub requires: Vec<Label>,
    /// The app it runs, as given.
    pub app: Option<String>,
    /// Where its outputs go.
    pub output_dir: PathBuf,
    /// When it was submitted, started and ended: Unix milliseconds.
    pub submitted_ms: u64,
    /// See `submitted_ms`.
    pub started_ms: Option<u64>,
    /// See `submitted_ms`.
    pub ended_ms: Option<u64>,
    /// While it runs: its tasks.
    pub progress: Option<Progress>,
    /// While it waits for slots: why (queued behind others, no worker with
    /// its labels, every such worker loaded).
    pub waiting: Vec<String>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Once it ended: its summary (counters, phase times, attempts,
    /// outputs), as `mr-master --summary-json` writes it.
    pub summary_json: Option<String>,
}

/// A worker as `mr workers` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Its id (`host:pid`).
    pub id: String,
    /// Its labels.
    pub labels: Vec<Label>,
    /// Tasks it runs at once.
    pub slots: u32,
    /// Its machine's cores.
    pub cores: u32,
    /// Its latest load, once it sent one.
    pub load: Option<Load>,
    /// Its peak memory and budget, as it last said.
    #[serde(default)]
    pub memory: WorkerMemory,
    /// Why it takes no new tasks, if it does not.
    pub over_limit: Option<String>,
    /// Seconds since it was last heard from.
    pub silent_secs: f64,
}

/// What a long-lived worker offers when it joins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinOffer {
    /// Its labels (`--label`).
    pub labels: Vec<Label>,
    /// Tasks it runs at once (`--slots`).
    pub slots: u32,
    /// Its machine's cores, for the load limit per core.
    pub cores: u32,
}

/// The cluster's answer to a worker that joins.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Welcome {
    /// How often to send [`ClusterApi::agent_heartbeat`].
    pub heartbeat_interval: Duration,
}

/// The cluster's answer to a worker's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentReply {
    /// Carry on.
    Continue,
    /// The cluster does not know this worker (it restarted, or took it for
    /// gone): join again.
    JoinAgain,
}

/// Which jobs [`ClusterApi::jobs`] lists.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ListFilter {
    /// Finished jobs too (the newest first after the unfinished ones).
    pub finished: bool,
    /// At most this many finished jobs.
    pub limit: Option<u32>,
}

/// The API of a standing cluster (`mr-master --serve`).
#[tarpc::service]
pub trait ClusterApi {
    /// Admits and queues a job (see the cluster's admission): its id, or
    /// why it was refused, in one line. Nothing is queued or written for a
    /// refused job.
    async fn submit(submission: Submission) -> Result<JobId, String>;
    /// Job `id`, unfinished or from the history.
    async fn job(id: JobId) -> Result<JobInfo, String>;
    /// The unfinished jobs in the order they were submitted, then the
    /// finished ones if asked.
    async fn jobs(filter: ListFilter) -> Result<Vec<JobInfo>, String>;
    /// Cancels job `id`: a queued one never runs, a running one stops (its
    /// attempts are told to stop, nothing of it is published). Its state
    /// after.
    async fn cancel(id: JobId) -> Result<JobInfo, String>;
    /// The workers connected now.
    async fn workers() -> Vec<WorkerInfo>;
    /// Job `id`'s log lines (the coordinator's, see
    /// [`crate::cluster::job_logs`]), the newest
    /// [`MAX_LINES`](crate::cluster::job_logs::MAX_LINES) at most; with
    /// `task` (`map-3`, `reduce-0`), only the lines about it.
    async fn logs(id: JobId, task: Option<String>) -> Result<Vec<String>, String>;
    /// A long-lived worker joins the pool (the caller, by its handshake).
    async fn join(offer: JoinOffer) -> Result<Welcome, String>;
    /// A joined worker is alive, under `load`, and has held `memory`.
    async fn agent_heartbeat(load: Option<Load>, memory: WorkerMemory) -> AgentReply;
    /// Which job a free slot of the calling worker serves now: one with a
    /// task ready for it, chosen by priority and fair share, and not one of
    /// `declined` (jobs this worker cannot serve now: their session would
    /// not open); `None` after [`crate::rpc::POLL_WAIT`] with none. The
    /// slot then asks that job's engine for the task (at the job's
    /// address), which answers at once.
    async fn next_job(declined: Vec<JobId>) -> Option<JobId>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submission_in_json_takes_the_flags_defaults_for_what_it_leaves_out() {
        let json = r#"{"job": {"app": "wordcount", "reduces": 2, "output_dir": "/out", "inputs": ["/in"]}, "priority": "high"}"#;
        let submission: Submission = serde_json::from_str(json).unwrap();
        assert_eq!((submission.job.reduces, submission.job.app.as_deref()), (2, Some("wordcount")));
        assert_eq!(submission.priority, Priority::High);
        assert_eq!(submission.weight, 1);
        let defaults = JobFlags::default();
        assert_eq!(submission.job.task_timeout, defaults.task_timeout);
        assert_eq!(defaults.task_timeout, Duration::from_secs(10));
        assert_eq!(defaults.split_size, 64 << 20);
        assert_eq!(defaults.max_task_attempts, 4);
        submission.job.check().unwrap();
        let misspelt = serde_json::from_str::<Submission>(r#"{"job": {"reduce": 2}}"#).unwrap_err().to_string();
        assert!(misspelt.contains("unknown field `reduce`"), "{misspelt}");
        let misspelt = serde_json::from_str::<Submission>(r#"{"priorty": "high"}"#).unwrap_err().to_string();
        assert!(misspelt.contains("unknown field `priorty`"), "{misspelt}");
    }
}
