//! The job directory, `<output-dir>/.mr-job/`: where a job's intermediate
//! files, finished outputs and [journal](crate::journal) live until the job
//! is over, and how its outputs leave it.
//!
//! - One coordinator at a time: the one running the job holds an exclusive
//!   lock on `lock` (released by the kernel when it dies, however it dies);
//!   another started on the same output directory is refused.
//! - A coordinator that finds a job directory resumes it when the journal's
//!   fingerprint equals its own plan's, and otherwise (other inputs or
//!   settings, an unreadable journal, or `--fresh`) empties it and starts
//!   over: a job directory is resumed or cleaned up, never left to mix in.
//! - A reduce's winning output is renamed to `mr-out-<r>` *inside* the job
//!   directory. Only when every reduce is done does [`JobDir::publish`]
//!   move them all into the output directory, after the journal says so,
//!   so that a coordinator killed halfway finishes the move when restarted.
//!   A job that fails never touches the output directory: outputs of an
//!   earlier job there stay as they were.
//! - `_SUCCESS` in the output directory (Hadoop's marker) names the job
//!   whose outputs are there. It is set aside before the first output moves
//!   and written after the last, so its presence means the `mr-out-*` files
//!   are one job's, whole.
//! - Publishing is all or nothing: what the output directory holds of an
//!   earlier job (`_SUCCESS`, the `mr-out-*` files this job replaces or
//!   would leave beside its own) is first set aside into `previous/` in the
//!   job directory, and only then do this job's outputs move in. If any
//!   step fails, the moves are undone in reverse, and the output directory
//!   is as it was before the job.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::counters::Counters;
use crate::journal::{Journal, JournalError, Record};
use crate::map_output::MapOutputLocation;
use crate::output::{is_output_name, marked_job, output_file_name, stale_outputs, success_line, write_atomically, OutputCompression, TEMP_PREFIX};
use crate::remote::ObjectUrl;
use crate::rpc::{AttemptId, TaskId};
use crate::scheduler::Owner;

/// The job directory's name inside the output directory.
pub const JOB_DIR_NAME: &str = ".mr-job";
/// The marker written beside a job's outputs once they are all in place.
pub use crate::output::SUCCESS_MARKER;
/// The journal's name in the job directory.
pub const JOURNAL: &str = "journal";
const LOCK: &str = "lock";
/// The name a job directory takes, with a unique suffix, while it is
/// removed: renamed out of the way first, so that a worker still writing
/// to `.mr-job/` (one stopped, and let go after the job ended) cannot put a
/// file back in it and leave it behind.
const REMOVED_PREFIX: &str = ".mr-job.removed-";

/// Why the job directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JobDirError {
    /// Another coordinator holds the lock.
    #[error("another mr-master is running a job in {} (it holds {})", .output_dir.display(), .lock.display())]
    Busy {
        /// The output directory.
        output_dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// A file operation failed.
    #[error("job directory {}: {source}", .path.display())]
    Io {
        /// What was being worked on.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The journal could not be written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Committing the outputs to object storage failed.
    #[error("publishing the outputs to object storage: {0}")]
    Remote(#[from] crate::remote::RemoteError),
}

/// A map task an earlier coordinator finished: the task, its winning
/// attempt, its runs by partition, and its counters.
pub type RecoveredMap = (u32, AttemptId, Vec<(u32, MapOutputLocation)>, Counters);

/// What an earlier coordinator finished, from the journal.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Map tasks done.
    pub maps: Vec<RecoveredMap>,
    /// Reduce tasks done: task, winning attempt, counters.
    pub reduces: Vec<(u32, AttemptId, Counters)>,
    /// Every output was final and moving into place.
    pub publishing: bool,
    /// Every attempt given out, with its owner.
    pub given: Vec<(TaskId, AttemptId, Owner)>,
    /// The app the job was pinned to, if it names none.
    pub app_sha256: Option<String>,
}

impl Recovered {
    /// Who `attempt` of `task` was given to, if the journal says.
    pub fn owner_of(&self, task: TaskId, attempt: AttemptId) -> Option<&Owner> {
        self.given.iter().find(|(t, a, _)| *t == task && *a == attempt).map(|(_, _, owner)| owner)
    }
}

/// The job directory, opened and locked for one coordinator's run.
#[derive(Debug)]
pub struct Opened {
    /// The directory.
    pub dir: JobDir,
    /// Its journal, open for appending (`Started` already written).
    pub journal: Journal,
    /// The job's id: kept across restarts.
    pub id: String,
    /// How many coordinators started on this job before this one.
    pub epoch: u64,
    /// What they finished (nothing for a new job).
    pub recovered: Recovered,
    /// Why an earlier job directory was emptied instead of resumed.
    pub discarded: Option<String>,
}

/// A locked job directory.
#[derive(Debug)]
pub struct JobDir {
    path: PathBuf,
    output_dir: PathBuf,
    /// Held for the lock; closing it releases the lock.
    _lock: File,
    /// The journal says an earlier coordinator began publishing: outputs
    /// missing here may be in the output directory already.
    publication_begun: bool,
    /// Where the outputs are committed instead of the output directory,
    /// which then only stages the job (see [`crate::remote_output`]).
    object_storage: Option<ObjectUrl>,
    /// How the outputs are compressed, which names them when published.
    output_compression: OutputCompression,
}

impl JobDir {
    /// Opens `<output_dir>/.mr-job/` for a job planned with `fingerprint`:
    /// resumes the job there if it is the same job and `fresh` is not set;
    /// otherwise empties the directory and starts a new job.
    pub fn open(output_dir: &Path, fingerprint: serde_json::Value, fresh: bool) -> Result<Opened, JobDirError> {
        let path = output_dir.join(JOB_DIR_NAME);
        std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        let lock_path = path.join(LOCK);
        let lock = File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
        match crate::work_dir::try_lock(&lock) {
            Ok(true) => {}
            Ok(false) => return Err(JobDirError::Busy { output_dir: output_dir.to_owned(), lock: lock_path }),
            Err(source) => return Err(JobDirError::Io { path: lock_path, source }),
        }
        let mut dir = JobDir {
            path,
            output_dir: output_dir.to_owned(),
            _lock: lock,
            publication_begun: false,
            object_storage: None,
            output_compression: OutputCompression::None,
        };
        remove_leftovers(output_dir);
        let journal_path = dir.path.join(JOURNAL);
        let earlier = journal_path.exists().then(|| Journal::replay(&journal_path));
        let (discarded, resumable) = match earlier {
            None => (None, None),
            Some(_) if fresh => (Some("--fresh was given".to_string()), None),
            Some(Err(e)) => (Some(format!("its journal is unreadable ({e})")), None),
            Some(Ok(records)) => match &records[0] {
                Record::Job { fingerprint: theirs, .. } if *theirs != fingerprint => {
                    (Some("it was planned from other inputs or settings".to_string()), None)
                }
                _ => (None, Some(records)),
            },
        };
        let Some(records) = resumable else {
            if discarded.is_some() || dir.has_leftovers()? {
                dir.empty()?;
            }
            let id = new_job_id();
            let mut journal = Journal::create(&journal_path, &id, fingerprint)?;
            journal.append(&Record::Started { epoch: 0 })?;
            return Ok(Opened { dir, journal, id, epoch: 0, recovered: Recovered::default(), discarded });
        };
        let (id, epoch, recovered) = recover(records);
        dir.publication_begun = recovered.publishing;
        let mut journal = Journal::open_for_append(&journal_path)?;
        journal.append(&Record::Started { epoch })?;
        Ok(Opened { dir, journal, id, epoch, recovered, discarded: None })
    }

    /// Makes [`JobDir::publish`] commit the outputs under `prefix` on
    /// object storage, first removing what earlier runs left there
    /// half-written; the output directory then only stages the job.
    pub fn publish_to(&mut self, prefix: ObjectUrl, id: &str) -> Result<(), JobDirError> {
        crate::remote_output::remove_temporary(&prefix, id)?;
        self.object_storage = Some(prefix);
        Ok(())
    }

    /// Names the published outputs for `compression` (`mr-out-<r>.gz`):
    /// the finished outputs are written compressed already.
    pub fn compress_outputs(&mut self, compression: OutputCompression) {
        self.output_compression = compression;
    }

    /// What reduce `r`'s output is called once published.
    pub fn published_name(&self, r: u32) -> String {
        self.output_compression.output_file_name(r)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where reduce `r`'s winning output waits for publication.
    pub fn finished_output(&self, r: u32) -> PathBuf {
        self.path.join(output_file_name(r))
    }

    /// Moves every finished output into the output directory, all or
    /// nothing: sets aside what an earlier job left there (`_SUCCESS`, the
    /// `mr-out-<r>` it replaces, and `mr-out-<n>` for `n >= reduces`),
    /// renames `mr-out-<r>` in for each of the `reduces` partitions (one
    /// already moved by an interrupted publication is found in place), and
    /// writes `_SUCCESS` naming job `id`. On failure every move is undone
    /// and the output directory is as before. The journal must say
    /// `Publishing` (synced) first.
    pub fn publish(&self, reduces: u32, id: &str) -> Result<(), JobDirError> {
        if let Some(prefix) = &self.object_storage {
            return Ok(crate::remote_output::publish(&self.path, reduces, id, prefix, self.output_compression)?);
        }
        let mut moves = Moves::default();
        let published = self.set_aside_earlier_outputs(reduces, &mut moves).and_then(|()| self.move_in(reduces, id, &mut moves));
        if published.is_err() {
            moves.undo();
        }
        published
    }

    /// Whether output `r` left the job directory in a publication that an
    /// earlier coordinator began.
    fn moved_out_before(&self, r: u32) -> bool {
        self.publication_begun && !self.finished_output(r).exists()
    }

    /// Moves what an earlier job left in the output directory into
    /// `previous/`. An output whose counterpart here has moved out already
    /// (by a publication cut short) is this job's, and stays.
    fn set_aside_earlier_outputs(&self, reduces: u32, moves: &mut Moves) -> Result<(), JobDirError> {
        let previous = self.path.join(PREVIOUS);
        std::fs::create_dir_all(&previous).map_err(io_err(&previous))?;
        let replaced = (0..reduces).filter(|&r| !self.moved_out_before(r)).map(|r| self.published_name(r));
        let stale = stale_outputs(&self.output_dir, reduces, self.output_compression).map_err(io_err(&self.output_dir))?;
        for name in std::iter::once(SUCCESS_MARKER.to_owned()).chain(replaced).chain(stale) {
            let earlier = self.output_dir.join(&name);
            if std::fs::symlink_metadata(&earlier).is_ok() {
                moves.make(earlier, previous.join(&name))?;
            }
        }
        Ok(())
    }

    /// Renames this job's outputs into the output directory and writes
    /// `_SUCCESS` once they are all there.
    fn move_in(&self, reduces: u32, id: &str, moves: &mut Moves) -> Result<(), JobDirError> {
        for r in 0..reduces {
            let (from, to) = (self.finished_output(r), self.output_dir.join(self.published_name(r)));
            if self.moved_out_before(r) && to.is_file() {
                // Moved before the coordinator was restarted; undone with the rest.
                moves.done.push((from, to));
                continue;
            }
            moves.make(from, to)?;
        }
        // The renames reach the disk before the marker says they happened.
        File::open(&self.output_dir).and_then(|d| d.sync_all()).map_err(io_err(&self.output_dir))?;
        let marker = self.output_dir.join(SUCCESS_MARKER);
        write_atomically(&marker, success_line(id).as_bytes()).map_err(io_err(&marker))
    }

    /// Removes the directory and everything in it (the lock stays held
    /// until the `JobDir` is dropped). Late writes of a worker's attempt
    /// then fail for want of the directory.
    pub fn remove(&self) {
        let doomed = self.output_dir.join(format!("{REMOVED_PREFIX}{}", new_job_id()));
        let target = match std::fs::rename(&self.path, &doomed) {
            Ok(()) => doomed,
            Err(e) => {
                tracing::warn!("could not rename the job directory {} before removing it: {e}", self.path.display());
                self.path.clone()
            }
        };
        if let Err(e) = std::fs::remove_dir_all(&target) {
            tracing::warn!("could not remove the job directory {}: {e}", target.display());
        }
    }

    /// Whether the directory holds anything but the lock.
    fn has_leftovers(&self) -> Result<bool, JobDirError> {
        let mut entries = std::fs::read_dir(&self.path).map_err(io_err(&self.path))?;
        Ok(entries.any(|e| e.is_ok_and(|e| e.file_name() != LOCK)))
    }

    /// Removes everything in the directory but the lock.
    fn empty(&self) -> Result<(), JobDirError> {
        for entry in std::fs::read_dir(&self.path).map_err(io_err(&self.path))? {
            let entry = entry.map_err(io_err(&self.path))?;
            if entry.file_name() == LOCK {
                continue;
            }
            let path = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.map_err(io_err(&path))?;
        }
        Ok(())
    }
}

/// Renames made while publishing, to undo them if it fails.
#[derive(Default)]
struct Moves {
    /// (from, to), in the order made.
    done: Vec<(PathBuf, PathBuf)>,
}

impl Moves {
    fn make(&mut self, from: PathBuf, to: PathBuf) -> Result<(), JobDirError> {
        std::fs::rename(&from, &to).map_err(|source| JobDirError::Io { path: from.clone(), source })?;
        self.done.push((from, to));
        Ok(())
    }

    /// Renames everything back, the last move first; a marker written
    /// meanwhile is removed first. Failures are logged: there is nothing
    /// better to do with them.
    fn undo(self) {
        for (from, to) in self.done.into_iter().rev() {
            if from.file_name() == Some(std::ffi::OsStr::new(SUCCESS_MARKER)) {
                // This job's marker may stand where the earlier one returns.
                let _ = std::fs::remove_file(&from);
            }
            if let Err(e) = std::fs::rename(&to, &from) {
                tracing::warn!("publishing failed, and putting {} back as {} failed too: {e}", to.display(), from.display());
            }
        }
    }
}

/// Where publishing sets aside what an earlier job left in the output
/// directory, inside the job directory (removed with it).
const PREVIOUS: &str = "previous";

/// What an earlier job left in `output_dir`, if anything: the name of
/// its first output file (`mr-out-*`), and the job `_SUCCESS` names, for a
/// refusal to write over it (as Hadoop refuses an existing output
/// directory). A `_SUCCESS` whose outputs were all removed holds nothing.
pub fn earlier_outputs(output_dir: &Path) -> Option<(String, Option<String>)> {
    let entries = std::fs::read_dir(output_dir).ok()?;
    let mut outputs: Vec<String> =
        entries.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).filter(|name| is_output_name(name)).collect();
    outputs.sort();
    let first = outputs.into_iter().next()?;
    let job = std::fs::read_to_string(output_dir.join(SUCCESS_MARKER)).ok().as_deref().and_then(marked_job);
    Some((first, job))
}

/// One line refusing to write over [`earlier_outputs`] in `output_dir`.
pub fn refuse_earlier_outputs(output_dir: &Path, (first, job): &(String, Option<String>)) -> String {
    let whose = job.as_ref().map_or_else(|| "an earlier job's outputs".to_owned(), |id| format!("the outputs of job {id}"));
    format!("output directory {} holds {whose} ({first}, ...): give another --output-dir, or --overwrite to replace them", output_dir.display())
}

/// Removes, as far as it can, what a master killed at the wrong moment
/// leaves in the output directory: job directories whose removal was cut
/// short, and the temporary file of a `_SUCCESS` it was writing. Called
/// with the lock held, so no other master is writing there.
fn remove_leftovers(output_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(output_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let removed = if name.starts_with(REMOVED_PREFIX) {
            std::fs::remove_dir_all(entry.path())
        } else if name.starts_with(TEMP_PREFIX) {
            std::fs::remove_file(entry.path())
        } else {
            continue;
        };
        if let Err(e) = removed {
            tracing::warn!("could not remove {}: {e}", entry.path().display());
        }
    }
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> JobDirError + '_ {
    move |source| JobDirError::Io { path: path.to_owned(), source }
}

/// A new job's id: the time and this process, unique enough to tell two
/// jobs on one output directory apart.
fn new_job_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}", std::process::id())
}

/// The job's id, the next epoch, and what was finished, from a journal's
/// records (which start with `Job`). A task journaled twice keeps its last
/// record.
fn recover(records: Vec<Record>) -> (String, u64, Recovered) {
    let mut id = String::new();
    let mut epoch = 0;
    let mut recovered = Recovered::default();
    for record in records {
        match record {
            Record::Job { id: job, .. } => id = job,
            Record::Started { epoch: e } => epoch = epoch.max(e.saturating_add(1)),
            Record::MapDone { task, attempt, outputs, counters } => {
                recovered.maps.retain(|(m, ..)| *m != task);
                recovered.maps.push((task, attempt, outputs, counters));
            }
            Record::ReduceDone { task, attempt, counters } => {
                recovered.reduces.retain(|(r, ..)| *r != task);
                recovered.reduces.push((task, attempt, counters));
            }
            Record::Publishing => recovered.publishing = true,
            Record::Assigned { task, attempt, owner } => recovered.given.push((task, attempt, owner)),
            Record::AppPinned { sha256 } => recovered.app_sha256 = Some(sha256),
        }
    }
    (id, epoch, recovered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(reduces: u32) -> serde_json::Value {
        serde_json::json!({ "reduces": reduces })
    }

    #[test]
    fn a_second_coordinator_on_the_same_output_directory_is_refused() {
        let out = tempfile::tempdir().unwrap();
        let _first = JobDir::open(out.path(), fingerprint(2), false).unwrap();
        let second = JobDir::open(out.path(), fingerprint(2), false).unwrap_err();
        assert!(matches!(second, JobDirError::Busy { .. }), "{second}");
        assert!(second.to_string().starts_with("another mr-master is running a job in "), "{second}");
    }

    #[test]
    fn the_same_job_resumes_with_its_id_and_a_new_epoch_and_another_starts_over() {
        let out = tempfile::tempdir().unwrap();
        let first = JobDir::open(out.path(), fingerprint(2), false).unwrap();
        let id = first.id.clone();
        let mut journal = first.journal;
        journal.append(&Record::ReduceDone { task: 1, attempt: 5, counters: Counters::default() }).unwrap();
        std::fs::write(first.dir.finished_output(1), "a 1\n").unwrap();
        drop((first.dir, journal));

        let again = JobDir::open(out.path(), fingerprint(2), false).unwrap();
        assert_eq!((again.id.as_str(), again.epoch, again.discarded.as_deref()), (id.as_str(), 1, None));
        assert_eq!(again.recovered.reduces.iter().map(|(r, a, _)| (*r, *a)).collect::<Vec<_>>(), [(1, 5)]);
        assert!(again.dir.finished_output(1).exists());
        drop(again);

        let other = JobDir::open(out.path(), fingerprint(3), false).unwrap();
        assert_ne!(other.id, id);
        assert_eq!((other.epoch, other.recovered.reduces.len()), (0, 0));
        assert_eq!(other.discarded.as_deref(), Some("it was planned from other inputs or settings"));
        assert!(!other.dir.finished_output(1).exists(), "the other job's files are gone");
        drop(other);

        let fresh = JobDir::open(out.path(), fingerprint(3), true).unwrap();
        assert_eq!((fresh.epoch, fresh.discarded.as_deref()), (0, Some("--fresh was given")));
    }

    /// Every file under `dir` (but the job directory) with its contents.
    fn listing(dir: &Path) -> Vec<(String, String)> {
        let mut files: Vec<_> = walkdir::WalkDir::new(dir)
            .into_iter()
            .filter_entry(|e| e.file_name() != JOB_DIR_NAME)
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| (e.path().strip_prefix(dir).unwrap().display().to_string(), std::fs::read_to_string(e.path()).unwrap()))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn a_publication_that_fails_halfway_leaves_the_output_directory_as_it_was() {
        let out = tempfile::tempdir().unwrap();
        for (name, text) in [("mr-out-0", "old 0\n"), ("mr-out-1", "old 1\n"), ("mr-out-5", "old 5\n"), (SUCCESS_MARKER, "job old\n")] {
            std::fs::write(out.path().join(name), text).unwrap();
        }
        let before = listing(out.path());
        let opened = JobDir::open(out.path(), fingerprint(3), false).unwrap();
        // Output 2 is missing: the move fails after outputs 0 and 1 moved.
        for r in 0..2 {
            std::fs::write(opened.dir.finished_output(r), format!("new {r}\n")).unwrap();
        }
        let failed = opened.dir.publish(3, &opened.id).unwrap_err();
        assert!(failed.to_string().contains("mr-out-2"), "{failed}");
        assert_eq!(listing(out.path()), before, "the output directory is as it was");
        for r in 0..2 {
            let back = std::fs::read_to_string(opened.dir.finished_output(r)).unwrap();
            assert_eq!(back, format!("new {r}\n"), "this job's output {r} is back in the job directory");
        }
        // Once the cause is gone, the same outputs publish.
        std::fs::write(opened.dir.finished_output(2), "new 2\n").unwrap();
        opened.dir.publish(3, &opened.id).unwrap();
        let expected: Vec<(String, String)> = (0..3)
            .map(|r| (format!("mr-out-{r}"), format!("new {r}\n")))
            .chain([(SUCCESS_MARKER.to_owned(), format!("job {}\n", opened.id))])
            .collect();
        let mut expected = expected;
        expected.sort();
        assert_eq!(listing(out.path()), expected);
    }

    #[test]
    fn publishing_moves_every_output_marks_success_and_finishes_an_interrupted_move() {
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("mr-out-0"), "old\n").unwrap();
        std::fs::write(out.path().join("mr-out-5"), "old\n").unwrap();
        std::fs::write(out.path().join(SUCCESS_MARKER), "job old\n").unwrap();
        let mut first = JobDir::open(out.path(), fingerprint(2), false).unwrap();
        for r in 0..2 {
            std::fs::write(first.dir.finished_output(r), format!("new {r}\n")).unwrap();
        }
        // As if a coordinator had begun publishing, set the earlier job's
        // files aside, moved output 0 and died.
        first.journal.append(&Record::Publishing).unwrap();
        let previous = first.dir.path().join(PREVIOUS);
        std::fs::create_dir(&previous).unwrap();
        for name in ["mr-out-0", "mr-out-5", SUCCESS_MARKER] {
            std::fs::rename(out.path().join(name), previous.join(name)).unwrap();
        }
        std::fs::rename(first.dir.finished_output(0), out.path().join("mr-out-0")).unwrap();
        drop(first);
        let opened = JobDir::open(out.path(), fingerprint(2), false).unwrap();
        assert!(opened.recovered.publishing);
        opened.dir.publish(2, &opened.id).unwrap();
        let read = |name: &str| std::fs::read_to_string(out.path().join(name)).ok();
        assert_eq!(read("mr-out-0").as_deref(), Some("new 0\n"));
        assert_eq!(read("mr-out-1").as_deref(), Some("new 1\n"));
        assert_eq!(read("mr-out-5"), None, "an earlier job's extra output is removed");
        assert_eq!(read(SUCCESS_MARKER), Some(format!("job {}\n", opened.id)));
        opened.dir.remove();
        assert!(!out.path().join(JOB_DIR_NAME).exists());
        let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 3, "only the outputs and the marker: {left:?}");
    }

    #[test]
    fn a_removed_job_directory_takes_no_late_writes_and_a_killed_masters_leftovers_are_removed() {
        let out = tempfile::tempdir().unwrap();
        let opened = JobDir::open(out.path(), fingerprint(1), false).unwrap();
        let late = opened.dir.path().join("map-0.attempt-9.runs");
        opened.dir.remove();
        assert!(std::fs::write(&late, "late").is_err(), "a late attempt cannot recreate the directory");
        assert!(!out.path().join(JOB_DIR_NAME).exists());
        drop(opened);

        let interrupted = out.path().join(format!("{REMOVED_PREFIX}1-2"));
        std::fs::create_dir(&interrupted).unwrap();
        std::fs::write(interrupted.join("map-0.runs"), "x").unwrap();
        // A master killed while writing _SUCCESS leaves its temporary file.
        let orphan = out.path().join(format!("{TEMP_PREFIX}AbCdEf"));
        std::fs::write(&orphan, "").unwrap();
        let _next = JobDir::open(out.path(), fingerprint(1), false).unwrap();
        assert!(!interrupted.exists() && !orphan.exists());
    }
}
