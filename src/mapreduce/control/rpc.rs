//! The RPC contract between `mr-master` and `mr-worker`, and the messages it carries.
//!
//! One tarpc service, [`Coordinator`], served by [`crate::coordinator`] and
//! called by [`crate::worker`]. Workers pull; the coordinator never calls a
//! worker, so a worker behind NAT or one that dies needs no bookkeeping
//! beyond the task timeout.
//!
//! Every connection opens with the [handshake](crate::handshake), which
//! proves the job's secret and names the worker: calls carry no worker id,
//! they are the connection's.
//!
//! ```text
//! worker                          coordinator
//!   | handshake (secret, worker id) -| once per connection
//!   | job(app's sha256) ---------->   | once, after connecting
//!   | <---------------- JobSpec ----  | (params, inputs, reduces, budgets,
//!   |                                 |  the app to fetch if it has none)
//!   | heartbeat(progress) -------->   | every JobSpec::heartbeat_interval,
//!   | <------ Continue / Exit(end) -  |  from the first job() to the exit
//!   | request_task() ------------->   | expire overdue attempts; assign
//!   | <---- Map(task) / Reduce(task)  | (or hold the call up to POLL_WAIT,
//!   |       / Wait / Exit(end)        |  then answer Wait)
//!   | ... run the task ...            |
//!   | report_task(report) -------->   | first completion wins; a reduce's
//!   | <--------------------------- () |  output is committed before the ack
//!   | request_task ...                |
//! ```
//!
//! Retries: every call is safe to repeat. A report for a task that is
//! already done, or for an attempt the coordinator has since given to
//! someone else, is accepted and ignored. A worker whose calls fail
//! because the coordinator is gone exits with an error: a worker that was
//! connected always learns how the job ended (from `request_task` or from a
//! heartbeat) before the coordinator exits.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::counters::Counters;
use crate::map_output::MapOutputLocation;
use crate::memory_budget::WorkerMemory;
use crate::skipping::SkipPlan;

/// Identifies a worker process in logs and the task table: `host:pid`.
pub type WorkerId = String;

/// Identifies one attempt at one task; unique within a job, never reused.
pub type AttemptId = u64;

/// Longest time the coordinator holds a `request_task` call when no task is
/// ready, before answering [`Assignment::Wait`]. Holding the call lets a
/// worker start the next task the moment it becomes available.
pub const POLL_WAIT: Duration = Duration::from_secs(1);

/// Deadline a worker gives each call: a held `request_task` plus slack for
/// a busy coordinator. tarpc's default of 10 s would be enough today; the
/// explicit value keeps long-polls and deadlines in one place.
pub const CALL_DEADLINE: Duration = Duration::from_secs(15);

/// A map or reduce task, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskId {
    /// The map task over input number `.0`.
    Map(u32),
    /// The reduce task for partition `.0`.
    Reduce(u32),
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskId::Map(i) => write!(f, "map task {i}"),
            TaskId::Reduce(r) => write!(f, "reduce task {r}"),
        }
    }
}

/// What every worker needs to know about the job before its first task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job's id, the same across coordinator restarts: a worker that
    /// reconnects after losing its coordinator goes on only if the one it
    /// finds runs the same job.
    pub job_id: String,
    /// Parameters for the app (`mr-master --param KEY=VALUE`).
    pub params: crate::Params,
    /// The input files, for the app's constructor (e.g. a sort samples them).
    pub inputs: Vec<InputFile>,
    /// Number of reduce partitions.
    pub reduces: u32,
    /// Map output buffer budget in bytes (`--map-buffer`).
    pub map_buffer_bytes: u64,
    /// Whether to use the app's combiner, if it has one (`--no-combine` clears it).
    pub combine: bool,
    /// How intermediate runs are compressed (`--compress`).
    pub compression: crate::runfile::Compression,
    /// How the job's outputs are compressed (`--output-compression`).
    #[serde(default)]
    pub output_compression: crate::output::OutputCompression,
    /// How often a worker sends a heartbeat: a fraction of the task
    /// timeout, so that a live worker is never taken for a silent one.
    pub heartbeat_interval: Duration,
    /// The job directory: a worker that finds the job's journal in it
    /// shares the coordinator's filesystem and writes its files there.
    pub job_dir: PathBuf,
    /// The app, when the coordinator names it (`mr-master --app`): a
    /// worker started without one fetches it from the coordinator.
    pub app: Option<JobApp>,
    /// Files shipped with the job (`--files`): every worker fetches them
    /// from the coordinator into a directory of the job's, where
    /// Streaming's commands run.
    #[serde(default)]
    pub files: Vec<ShippedFile>,
}

/// A file shipped with the job (`--files`), which the coordinator serves
/// as [`crate::files::FileRequest::Shipped`] by its index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippedFile {
    /// Its name in the task's directory: the file's own name.
    pub name: String,
    /// Its size in bytes when the job was planned.
    pub size: u64,
    /// Its SHA-256 when the job was planned, in hex: a fetched copy must
    /// have the same.
    pub sha256: String,
    /// Whether it was executable (a script run as `./map.py`).
    #[serde(default)]
    pub executable: bool,
}

/// The app plugin the coordinator serves for the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobApp {
    /// The plugin's file name (e.g. `libwordcount.so`), for messages.
    pub file_name: String,
    /// The SHA-256 of the plugin file, in hex: a worker's own plugin must
    /// have the same, and a fetched one is checked against it.
    pub sha256: String,
    /// The plugin file's size in bytes.
    pub size: u64,
}

impl JobSpec {
    /// The app's view of the job.
    pub fn app_context(&self) -> crate::JobContext {
        app_context(self.params.clone(), &self.inputs, self.reduces)
    }
}

/// What an app's constructor is told about a job with these inputs.
pub fn app_context(params: crate::Params, inputs: &[InputFile], reduces: u32) -> crate::JobContext {
    crate::JobContext {
        params,
        inputs: inputs.iter().map(|i| (i.name.clone(), i.path.clone())).collect(),
        reduces,
        input_sizes: inputs.iter().map(|i| i.size).collect(),
    }
}

/// One input file of the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// The name as given on the command line: what the app sees as `filename`.
    pub name: String,
    /// Absolute path, so a worker started in another directory reads the
    /// same file.
    pub path: PathBuf,
    /// Size in bytes when the job was planned.
    pub size: u64,
    /// Last modification time when the job was planned, where the
    /// filesystem tells it. A map checks size and time before and after it
    /// reads, so a file changed mid-job fails the attempt rather than
    /// silently giving output from a mix of two versions.
    #[serde(default)]
    pub modified: Option<std::time::SystemTime>,
}

/// The part of an input file one map task reads: the lines that *start*
/// in `start..end` (the last of them may run past `end`), so no line is
/// cut and every line belongs to exactly one split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSplit {
    /// The file.
    pub file: InputFile,
    /// First byte offset owned by this split.
    pub start: u64,
    /// End of the owned range; `None` means the end of the file, whatever
    /// its size when read (a whole-file task, as in the lab).
    pub end: Option<u64>,
}

impl InputSplit {
    /// A split covering a whole file.
    pub fn whole(file: InputFile) -> Self {
        InputSplit { file, start: 0, end: None }
    }
}

impl std::fmt::Display for InputSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.end {
            None if self.start == 0 => write!(f, "{}", self.file.name),
            None => write!(f, "{} bytes {}..", self.file.name, self.start),
            Some(end) => write!(f, "{} bytes {}..{end}", self.file.name, self.start),
        }
    }
}

/// Everything a worker needs to run one map attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapTask {
    /// Index of the map task (and of its input).
    pub index: u32,
    /// This attempt's id; output names include it so attempts never collide.
    pub attempt: AttemptId,
    /// The input to map.
    pub input: InputSplit,
    /// Number of reduce partitions to split the output into (0 for a
    /// map-only job).
    pub reduces: u32,
    /// Directory for this job's intermediate files (shared by all workers).
    pub job_dir: PathBuf,
    /// Set when the job skips bad records and this task has failed twice:
    /// map is called once per line, tracking each, skipping those listed
    /// (by byte offset in the input file).
    #[serde(default)]
    pub skip: Option<SkipPlan>,
    /// Set for a map-only job (`--reduces 0`): the attempt writes its pairs
    /// as the job's output, in the app's output format and the order they
    /// were emitted, here (as a reduce writes to its `staged_output`),
    /// instead of sorted runs for reduces.
    #[serde(default)]
    pub staged_output: Option<PathBuf>,
}

/// Everything a worker needs to run one reduce attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReduceTask {
    /// The partition to reduce.
    pub partition: u32,
    /// This attempt's id.
    pub attempt: AttemptId,
    /// The partition's sorted runs, one per map task that produced any, in
    /// map-task order (so values of equal keys arrive in a stable order).
    pub runs: Vec<(u32, MapOutputLocation)>,
    /// Where to write the finished output; the coordinator renames it to
    /// `mr-out-<partition>` if this attempt wins.
    pub staged_output: PathBuf,
    /// Set when the job skips bad records: the attempt tracks each key
    /// group and skips those listed (by position among the keys).
    #[serde(default)]
    pub skip: Option<SkipPlan>,
}

/// The coordinator's answer to `request_task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Assignment {
    /// Run this map attempt.
    Map(MapTask),
    /// Run this reduce attempt.
    Reduce(ReduceTask),
    /// Nothing to do now (e.g. the last maps are still running); ask again.
    Wait,
    /// The job is over; exit.
    Exit(JobEnd),
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobEnd {
    /// Every output is final.
    Succeeded,
    /// The job stopped; the message names the task, its input and the error.
    Failed(String),
}

/// What a worker reports about one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The task the attempt was for.
    pub task: TaskId,
    /// The attempt being reported.
    pub attempt: AttemptId,
    /// How it ended.
    pub outcome: TaskOutcome,
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOutcome {
    /// A map attempt finished.
    MapDone {
        /// Its run for each non-empty partition, as (partition, location).
        outputs: Vec<(u32, MapOutputLocation)>,
        /// What the attempt counted.
        counters: Counters,
    },
    /// A reduce attempt finished and its output is at `staged_output`:
    /// written there, or sent to the coordinator ([`crate::upload`]).
    ReduceDone {
        /// What the attempt counted.
        counters: Counters,
    },
    /// The attempt failed: the app returned an error or panicked, or its
    /// input could not be read. Counts toward the task's failure limit.
    Failed {
        /// What went wrong, on one line.
        error: String,
        /// The record the attempt was handling when it ended, when the job
        /// skips bad records and the worker read it from the attempt's
        /// cursor (see [`crate::skipping`]); `None` lets the coordinator
        /// read the cursor itself where it shares the job directory.
        record: Option<crate::skipping::BadRecord>,
    },
    /// A reduce attempt could not read map task `map_task`'s output (missing,
    /// truncated or corrupt). That map task is re-run from its input; the
    /// reduce is retried afterwards without counting a failure against it.
    MapOutputLost {
        /// The map task whose output is unreadable.
        map_task: u32,
        /// Why it could not be read.
        error: String,
    },
}

/// How far one running attempt has got, in a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptProgress {
    /// The attempt's task.
    pub task: TaskId,
    /// The attempt.
    pub attempt: AttemptId,
    /// Units of work done so far (records emitted or read, keys reduced,
    /// counter updates, phases finished): only ever grows while the attempt
    /// runs. Only growth matters, not the number.
    pub units: u64,
}

/// The coordinator's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeartbeatReply {
    /// The job goes on.
    Continue,
    /// The job goes on, and these of the worker's running attempts no
    /// longer matter (given up, or their task finished by another
    /// attempt): stop them.
    Abandon(Vec<AttemptId>),
    /// The job is over: exit, even with attempts still running.
    Exit(JobEnd),
}

/// The coordinator's RPC interface.
#[tarpc::service]
pub trait Coordinator {
    /// Describes the job. A worker asks once, right after connecting,
    /// with the SHA-256 of its own plugin if it was started with one: when
    /// the job names an app and the worker's differs, the answer is why it
    /// may not take part.
    async fn job(app_sha256: Option<String>) -> Result<JobSpec, String>;

    /// Asks for work. Answers at once when a task is ready or the job is
    /// over; otherwise holds the call up to [`POLL_WAIT`] and answers
    /// [`Assignment::Wait`]. Repeating the call is always safe.
    async fn request_task() -> Assignment;

    /// Says the worker is alive and how far its running attempts have got.
    /// Sent every [`JobSpec::heartbeat_interval`] by a separate loop, so it
    /// keeps coming while the worker's slots are busy. A worker silent for
    /// the task timeout loses its attempts; so does an attempt whose units
    /// stop growing for that long. Once the job is over the answer is
    /// `Exit`, which is how a worker busy with a straggling attempt learns
    /// the end. `memory` is the worker's peak memory and budget, for the
    /// summary and `/metrics`.
    async fn heartbeat(running: Vec<AttemptProgress>, memory: WorkerMemory) -> HeartbeatReply;

    /// Reports how an attempt ended. When it returns, a winning reduce's
    /// output has been committed. Late and duplicate reports are ignored, so
    /// a worker may repeat a report whose answer it did not receive. A
    /// report about an attempt given to another worker is ignored.
    /// `memory` is as in a heartbeat (the peak the attempt's end left).
    async fn report_task(report: TaskReport, memory: WorkerMemory);
}
