//! A reduce's output (or a map's, in a map-only job) received from a
//! worker that does not share the job directory (the `U` service, see
//! [`crate::upload`]): who may send it, where it is staged, and taking it
//! as it arrives. The worker's report then commits it as any other (see
//! [`super::reports`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::files;
use crate::report_check::check_owner;
use crate::rpc::{AttemptId, TaskId};
use crate::scheduler::{Owner, ReportVerdict};
use crate::secure::Blocking;
use crate::upload;

use super::engine::{refused, JobState, Shared};

/// Takes a reduce attempt's output as its worker sends it
/// ([`crate::upload`]) into the attempt's staged path in the job directory,
/// if the attempt is that worker's and its report would still be taken
/// (see [`upload_destination`]); the worker's report then commits it as any
/// other. Waits for it as long as that holds.
/// Blocking: runs on a thread of its own, writing the frames to the file as
/// they are read.
pub(super) fn take_upload(shared: &Shared, owner: &Owner, mut stream: Blocking) -> std::io::Result<()> {
    stream.set_read_timeout(Some(UPLOAD_CHECK));
    stream.set_write_timeout(Some(files::STALL_LIMIT));
    // Waits end with the job too: the runtime waits for this thread to exit.
    let header_deadline = Instant::now() + files::STALL_LIMIT;
    let mut header_awaited = || Instant::now() < header_deadline && shared.job().scheduler.job_end().is_none();
    let (r, attempt) = upload::read_header(&mut stream, &mut header_awaited)?;
    // Output `r` is reduce task `r`'s, or map task `r`'s in a map-only job.
    let task = shared.job().scheduler.output_task(r).unwrap_or(TaskId::Reduce(r));
    let outcome = upload_destination(shared, owner, task, attempt).and_then(|staged| {
        let mut still_wanted = || shared.job().scheduler.would_accept_completion(task, attempt) == ReportVerdict::Accepted;
        receive_into(&mut stream, &staged, &mut still_wanted).map_err(|e| match e.kind() {
            std::io::ErrorKind::Interrupted => format!("{task} was done by another attempt meanwhile"),
            _ => e.to_string(),
        })
    });
    if let Err(why) = &outcome {
        tracing::debug!(%task, attempt, "the output from {} was not taken: {why}", owner.worker);
    }
    upload::answer(&mut stream, outcome)
}

/// Where reduce `task`'s `attempt` stages its output, if `owner` may send
/// it: the same attempts whose completion report would be taken (given to
/// that process, by this coordinator or by one before a restart), while
/// the task is not done. A refusal of another's attempt is counted and
/// logged as a refused call.
fn upload_destination(shared: &Shared, owner: &Owner, task: TaskId, attempt: AttemptId) -> Result<PathBuf, String> {
    let mut job = shared.job();
    let JobState { scheduler, status, .. } = &mut *job;
    let checked = match task {
        TaskId::Map(r) | TaskId::Reduce(r) if scheduler.output_task(r) == Some(task) => check_owner(scheduler, owner, task, attempt).map(|()| r),
        _ => Err(format!("there is no {task}")),
    };
    let r = match checked {
        Ok(r) => r,
        Err(why) => {
            status.call_refused();
            refused(shared, owner, &format!("an upload of {task} attempt {attempt}"), &why);
            return Err(format!("attempt {attempt} of {task} was not given to this worker"));
        }
    };
    match scheduler.would_accept_completion(task, attempt) {
        ReportVerdict::Accepted => Ok(scheduler.staged_output(r, attempt)),
        ReportVerdict::AlreadyDone => Err(format!("{task} is done already")),
        ReportVerdict::UnknownAttempt => Err(format!("attempt {attempt} of {task} was not given to this worker")),
    }
}

/// Receives an upload into a temporary file beside `staged`, renamed to it
/// once whole; given up (and the file removed) if `still_wanted` says so
/// meanwhile (the attempt timed out, or lost to another).
fn receive_into(stream: &mut Blocking, staged: &Path, still_wanted: &mut dyn FnMut() -> bool) -> std::io::Result<()> {
    let dir = staged.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new().prefix(".uploading-").tempfile_in(dir)?;
    upload::receive(stream, temp.as_file_mut(), still_wanted)?;
    temp.persist(staged).map(drop).map_err(|e| e.error)
}

/// How often an upload in progress checks that it is still wanted.
const UPLOAD_CHECK: Duration = Duration::from_secs(1);
