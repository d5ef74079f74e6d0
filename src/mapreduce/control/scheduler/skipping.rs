//! Bad-record skipping, the scheduler's half (the worker's is
//! [`crate::skipping`]): the record an attempt died on, read from its
//! cursor file through [`RecordReader`], blamed; a record two attempts
//! died on skipped by later attempts, told so in their [`SkipPlan`].

use std::path::PathBuf;

use crate::rpc::{AttemptId, TaskId};
use crate::skipping::{BadRecord, SkipPlan};

use super::table::TaskEntry;
use super::Scheduler;

/// How the scheduler learns the record an attempt died on: a function of
/// the attempt's cursor file. The one I/O the scheduler is given, as a
/// function so that tests can stand in for the files.
pub struct RecordReader(pub(super) Box<ReadRecord>);

/// Reads the record a cursor file at the given path shows, if any.
type ReadRecord = dyn Fn(&std::path::Path) -> Option<BadRecord> + Send;

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordReader")
    }
}

impl TaskEntry {
    /// `attempt` died handling `record`. If another attempt died on it too
    /// and fewer than `limit` records are skipped, it is skipped from now
    /// on and both attempts count no more; returns whether it was.
    pub(super) fn blame(&mut self, attempt: AttemptId, record: BadRecord, limit: u32) -> bool {
        let earlier = self.blamed.iter().position(|(r, a)| r.id == record.id && *a != attempt);
        match earlier {
            Some(i) if (self.skipped.len() as u32) < limit => {
                let (_, other) = self.blamed.remove(i);
                self.unsuccessful.retain(|(a, _)| *a != attempt && *a != other);
                self.blamed.retain(|(r, _)| r.id != record.id);
                self.skipped.push(record);
                true
            }
            _ => {
                self.blamed.push((record, attempt));
                false
            }
        }
    }
}

impl Scheduler {
    /// Reads the records attempts died on with `reader` (given a cursor
    /// path) instead of from the cursor files.
    pub fn with_record_reader(mut self, reader: impl Fn(&std::path::Path) -> Option<BadRecord> + Send + 'static) -> Scheduler {
        self.record_reader = RecordReader(Box::new(reader));
        self
    }

    /// Where `attempt` of `task` keeps its cursor, if it tracks records.
    pub(super) fn cursor_path(&self, task: TaskId, attempt: AttemptId) -> PathBuf {
        match task {
            TaskId::Map(m) => self.job_dir.join(format!("map-{m}.attempt-{attempt}.cursor")),
            TaskId::Reduce(r) => self.job_dir.join(format!("out-{r}.attempt-{attempt}.cursor")),
        }
    }

    /// What a new attempt of `task` is told about bad records: nothing
    /// unless the job skips them; for a map, nothing until two attempts
    /// ended without success (then it reads line by line).
    pub(super) fn skip_plan(&self, task: TaskId, attempt: AttemptId) -> Option<SkipPlan> {
        let entry = self.entry(task);
        let tracked = match task {
            TaskId::Map(_) => entry.ended_badly.len() >= 2,
            TaskId::Reduce(_) => true,
        };
        if self.config.skip_bad_records == 0 || !tracked {
            return None;
        }
        let mut skip: Vec<u64> = entry.skipped.iter().map(|r| r.id).collect();
        skip.sort_unstable();
        Some(SkipPlan { cursor: self.cursor_path(task, attempt), skip })
    }

    /// The records `task`'s attempts skip, as the summary shows them.
    pub fn skipped_records(&self, task: TaskId) -> Vec<String> {
        let file = match task {
            TaskId::Map(m) => Some(self.splits[m as usize].file.name.as_str()),
            TaskId::Reduce(_) => None,
        };
        self.entry(task).skipped.iter().map(|record| record.describe(file)).collect()
    }
}
