//! The messages between a worker and its task processes, and how they are
//! framed on the socket that joins them.
//!
//! Each of a worker's slots runs its attempts in a task process of its own
//! ([`crate::task_process`] starts and watches it; [`crate::task_host`] is
//! the process's side). The two talk over a Unix socket pair, the child's
//! end being its descriptor [`CHILD_FD`]:
//!
//! ```text
//! worker (slot thread)                      task process
//!   | Start { version, job, plugin, ... } -->   loads the plugin, makes the app
//!   |                      <-- Ready { version } (or StartFailed(why), then exit)
//!   | Run(attempt) ------------------------->   runs it on its main thread
//!   |                 <-- Progress { attempt, units }   at most every PROGRESS_INTERVAL
//!   | Cancel(attempt) ---------------------->   (the coordinator gave it up)
//!   |                 <-- Done { attempt, outcome, served }
//!   | Run(attempt) ... (the process lives across attempts: warm state)
//! ```
//!
//! The worker may send `Run` before `Ready` arrives (the socket buffers
//! it). A task process that has not sent `Done` within [`KILL_GRACE`] of a
//! `Cancel` is killed with SIGKILL, as is one that dies or breaks this
//! protocol; the worker starts a fresh one for the slot's next attempt.
//! A task process exits when its socket closes (the worker is gone).
//!
//! Framing: a frame is a little-endian `u32` length (at most [`MAX_FRAME`])
//! followed by that many bytes of one message in JSON. `Start` and `Ready`
//! carry [`PROTOCOL_VERSION`]: both ends are the same executable today
//! (the worker re-executes `/proc/self/exe`), but a mismatch is refused
//! rather than misread. What a task process sends runs next to app code
//! that may scribble on memory, so the worker treats it as untrusted: a
//! frame too long, a message that does not decode, or one out of place
//! ends the process, and the attempt fails; nothing panics.
//!
//! There is no message per record: progress is the attempt's unit count,
//! sent when it changed, at most every [`PROGRESS_INTERVAL`].

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::memory_budget::SlotMemory;
use crate::rpc::{AttemptId, JobSpec, MapTask, ReduceTask, TaskOutcome};

/// The version of these messages; `Start` and `Ready` must carry it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest frame either end accepts: a reduce's list of runs for tens
/// of thousands of maps fits; a corrupt length does not make the reader
/// allocate gigabytes.
pub const MAX_FRAME: usize = 64 << 20;

/// The task process's end of the socket, as a descriptor number.
pub const CHILD_FD: i32 = 3;

/// How long a task process may take to stop after `Cancel` before it is
/// killed: an app call stuck in a loop never reaches the next check.
pub const KILL_GRACE: Duration = Duration::from_secs(1);

/// How often a running attempt's progress is sent to the worker (when it
/// changed): well within a heartbeat interval, which is at least 250 ms
/// only for task timeouts under a second.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// What a worker tells its task process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToChild {
    /// The first message: everything the process needs to run attempts.
    Start(Box<ChildStart>),
    /// Run this attempt and answer [`FromChild::Done`].
    Run(ChildAttempt),
    /// The coordinator no longer needs this attempt: stop it.
    Cancel(AttemptId),
}

/// Everything a task process needs before its first attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildStart {
    /// Must be [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The worker's slot this process runs attempts for, for logs.
    pub slot: usize,
    /// The job, as the coordinator described it.
    pub job: JobSpec,
    /// The app plugin to load (the worker's, or the job's as fetched).
    pub plugin: PathBuf,
    /// The worker's name in handshakes (`host:pid`): fetches and uploads
    /// are the worker's own, since the coordinator takes an attempt's
    /// output only from the worker it gave the attempt to.
    pub identity_name: String,
    /// The worker's incarnation: a connection under the same name with
    /// another one would be taken for a restarted worker.
    pub identity_incarnation: [u8; 16],
    /// The job's token file, read again by the task process: the secret
    /// itself never leaves the file.
    pub token_file: Option<PathBuf>,
    /// Whether the worker insists on encrypted connections (it was not
    /// started with `--no-tls`).
    pub tls: bool,
    /// Where attempts' files go and how runs are fetched.
    pub storage: ChildStorage,
    /// What the slot's attempts may buffer: its share of the worker's
    /// memory budget.
    pub memory: SlotMemory,
}

/// A worker's storage settings, as a task process rebuilds them
/// ([`crate::storage::StorageConfig`] less what only the worker has).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildStorage {
    /// The worker's work directory.
    pub work_dir: PathBuf,
    /// The job directory, if the worker shares it.
    pub shared_job_dir: Option<PathBuf>,
    /// The worker's file server, as other processes reach it.
    pub server: String,
    /// How long a run's fetch waits for a silent worker.
    pub run_stall_limit: Duration,
    /// The coordinator's address.
    pub master: String,
    /// Bytes of runs one reduce attempt may fetch into memory.
    pub fetch_memory: u64,
    /// Where the job's shipped files are (`--files`), an absolute path;
    /// `None` for a job that ships none.
    #[serde(default)]
    pub files_dir: Option<PathBuf>,
}

/// One attempt for a task process to run, its files already placed by
/// the worker's storage ([`crate::storage::WorkerStorage::adapt_map`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ChildAttempt {
    /// A map attempt.
    Map(MapTask),
    /// A reduce attempt, with the files of the worker's own map outputs
    /// among its runs (another slot's process may have written them): read
    /// in place rather than fetched from the worker's own server.
    Reduce {
        /// The attempt.
        task: ReduceTask,
        /// Map attempts served by this worker, with their output files.
        local_outputs: Vec<(AttemptId, PathBuf)>,
    },
}

impl ChildAttempt {
    /// The attempt's id.
    pub fn attempt(&self) -> AttemptId {
        match self {
            ChildAttempt::Map(task) => task.attempt,
            ChildAttempt::Reduce { task, .. } => task.attempt,
        }
    }
}

/// What a task process tells its worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromChild {
    /// The app is made: attempts may run. Carries [`PROTOCOL_VERSION`].
    Ready {
        /// The task process's protocol version.
        version: u32,
    },
    /// The process cannot run attempts (the plugin would not load, the
    /// token file is unreadable, ...); it exits after saying why.
    StartFailed(String),
    /// The running attempt's units of work so far (see
    /// [`crate::task::TaskProgress`]).
    Progress {
        /// The attempt.
        attempt: AttemptId,
        /// Units done.
        units: u64,
    },
    /// The attempt ended.
    Done {
        /// The attempt.
        attempt: AttemptId,
        /// How it ended, as the coordinator is to be told (the worker adds
        /// the record from the cursor to a failure).
        outcome: TaskOutcome,
        /// A map attempt's output file, for the worker's file server.
        served: Option<PathBuf>,
    },
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed or closed mid-frame.
    #[error("reading from the socket: {0}")]
    Io(#[from] io::Error),
    /// The other end closed the socket between frames.
    #[error("the other end closed the socket")]
    Closed,
    /// A length past [`MAX_FRAME`].
    #[error("a frame of {0} bytes, more than the {MAX_FRAME} allowed")]
    TooLong(u64),
    /// A frame that is not a message of this protocol.
    #[error("a frame that is not a message: {0}")]
    Malformed(serde_json::Error),
}

/// Writes `message` as one frame.
pub fn write_message<T: Serialize>(out: &mut impl Write, message: &T) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::other(format!("a message of {} bytes, more than the {MAX_FRAME} a frame holds", body.len())));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    // One write per frame: two writers behind a lock never interleave.
    out.write_all(&frame)?;
    out.flush()
}

/// Reads one frame and decodes its message.
pub fn read_message<T: for<'de> Deserialize<'de>>(input: &mut impl Read) -> Result<T, FrameError> {
    let mut header = [0u8; 4];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(len as u64));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(FrameError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_a_round_trip_and_frames_are_read_one_at_a_time() {
        let mut wire = Vec::new();
        write_message(&mut wire, &FromChild::Progress { attempt: 7, units: 42 }).unwrap();
        write_message(&mut wire, &FromChild::Ready { version: PROTOCOL_VERSION }).unwrap();
        let mut input = &wire[..];
        assert!(matches!(read_message(&mut input).unwrap(), FromChild::Progress { attempt: 7, units: 42 }));
        assert!(matches!(read_message(&mut input).unwrap(), FromChild::Ready { version: PROTOCOL_VERSION }));
        assert!(matches!(read_message::<FromChild>(&mut input), Err(FrameError::Closed)));
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let too_long = [0xff, 0xff, 0xff, 0xff];
        assert!(matches!(read_message::<FromChild>(&mut &too_long[..]), Err(FrameError::TooLong(_))));
        let mut garbage = 5u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(b"{oops");
        assert!(matches!(read_message::<FromChild>(&mut &garbage[..]), Err(FrameError::Malformed(_))));
        let cut = [10, 0, 0, 0, b'{'];
        assert!(matches!(read_message::<FromChild>(&mut &cut[..]), Err(FrameError::Io(_))));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_reader(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut input = &bytes[..];
            while read_message::<FromChild>(&mut input).is_ok() {}
        }
    }
}
