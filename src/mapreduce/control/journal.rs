//! The coordinator's journal: what a restarted coordinator needs to resume
//! its job instead of starting over.
//!
//! An append-only file of JSON lines in the job directory. The first record
//! names the job and what it was planned from (its [fingerprint]: inputs
//! with their sizes and modification times, split size, reduces, params);
//! each start of a coordinator on it appends `Started`; each attempt given
//! out appends `Assigned`, naming the process it was given to (so that a
//! restarted coordinator takes its report from that process alone); the
//! first worker's app, for a job that names none, appends `AppPinned`; each
//! task that finishes appends `MapDone` (with where its runs are) or
//! `ReduceDone`; `Publishing` says every output is final and being moved
//! into place.
//!
//! Each record is one `write` of a whole line, so a coordinator that is
//! killed leaves every record it wrote in the file (the page cache keeps
//! them); [`Journal::sync_handle`] lets the coordinator force them to disk
//! every second, off its lock, and `Publishing` is synced before the first
//! output moves. A machine that loses power may lose the last second's
//! records: those tasks run again. A torn last line (a write cut short) is
//! ignored on replay; anything else unreadable makes the journal invalid,
//! and the job starts over.
//!
//! [fingerprint]: Journal::create

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::counters::Counters;
use crate::map_output::MapOutputLocation;
use crate::rpc::{AttemptId, TaskId};
use crate::scheduler::Owner;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// The first line: the job's id and what it was planned from.
    Job {
        /// The job's id, which workers check when they reconnect.
        id: String,
        /// What the job was planned from; a coordinator resumes the job
        /// only if its own plan gives the same.
        fingerprint: serde_json::Value,
    },
    /// A coordinator started on the job: its `epoch`-th start (0 first).
    Started {
        /// Starts before this one.
        epoch: u64,
    },
    /// `attempt` of `task` was given to `owner`.
    Assigned {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: AttemptId,
        /// Who it was given to.
        owner: Owner,
    },
    /// The job runs the app with this SHA-256: the first worker's, for a
    /// job started without `--app`.
    AppPinned {
        /// The plugin's SHA-256, in hex.
        sha256: String,
    },
    /// Map task `task` finished: `attempt` won, its runs are at `outputs`.
    MapDone {
        /// The map task.
        task: u32,
        /// The winning attempt.
        attempt: AttemptId,
        /// Its runs, by partition.
        outputs: Vec<(u32, MapOutputLocation)>,
        /// Its counters.
        counters: Counters,
    },
    /// Reduce task `task` finished; its output is committed in the job
    /// directory.
    ReduceDone {
        /// The reduce task (partition).
        task: u32,
        /// The winning attempt.
        attempt: AttemptId,
        /// Its counters.
        counters: Counters,
    },
    /// Every output is committed; they are being moved into the output
    /// directory. A coordinator that finds this finishes the move.
    Publishing,
}

/// Why a journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing the file failed.
    #[error("journal {}: {source}", .path.display())]
    Io {
        /// The journal file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// A line other than a torn last one does not parse, or the first
    /// record is not `Job`.
    #[error("journal {} line {line}: {detail}", .path.display())]
    Invalid {
        /// The journal file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        detail: String,
    },
}

/// A journal open for appending.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Creates (or truncates) the journal at `path` and writes its first
    /// record, naming the job `id` planned from `fingerprint`.
    pub fn create(path: &Path, id: &str, fingerprint: serde_json::Value) -> Result<Journal, JournalError> {
        let file = File::create(path).map_err(|source| JournalError::Io { path: path.to_owned(), source })?;
        let mut journal = Journal { file, path: path.to_owned() };
        journal.append(&Record::Job { id: id.to_owned(), fingerprint })?;
        Ok(journal)
    }

    /// The id of the job whose journal is at `path`, if it can be read
    /// there: a worker that finds its job's id shares the coordinator's
    /// filesystem.
    pub fn job_id_at(path: &Path) -> Option<String> {
        let mut first = String::new();
        BufReader::new(File::open(path).ok()?).read_line(&mut first).ok()?;
        match serde_json::from_str(&first).ok()? {
            Record::Job { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Opens an existing journal to append to it.
    pub fn open_for_append(path: &Path) -> Result<Journal, JournalError> {
        let file = File::options().append(true).open(path).map_err(|source| JournalError::Io { path: path.to_owned(), source })?;
        Ok(Journal { file, path: path.to_owned() })
    }

    /// Appends one record with a single write.
    pub fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(record).map_err(|e| JournalError::Io { path: self.path.clone(), source: e.into() })?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(|source| JournalError::Io { path: self.path.clone(), source })
    }

    /// Forces every record appended so far to disk.
    pub fn sync(&self) -> Result<(), JournalError> {
        self.file.sync_data().map_err(|source| JournalError::Io { path: self.path.clone(), source })
    }

    /// A second handle on the file, to sync it without holding the journal.
    pub fn sync_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Reads every record of the journal at `path`, ignoring a torn last
    /// line. The first record is always [`Record::Job`].
    pub fn replay(path: &Path) -> Result<Vec<Record>, JournalError> {
        let file = File::open(path).map_err(|source| JournalError::Io { path: path.to_owned(), source })?;
        Self::replay_from(BufReader::new(file), path)
    }

    /// [`Journal::replay`] of the bytes `reader` gives, as the journal at
    /// `path` (for messages).
    fn replay_from(mut reader: impl BufRead, path: &Path) -> Result<Vec<Record>, JournalError> {
        let io_err = |source| JournalError::Io { path: path.to_owned(), source };
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line).map_err(io_err)? == 0 {
                break;
            }
            lines.push(line);
        }
        let mut records = Vec::with_capacity(lines.len());
        for (number, line) in (1..).zip(&lines) {
            // Only the last line can lack its newline: a write cut short.
            if !line.ends_with(b"\n") {
                break;
            }
            let record = serde_json::from_slice::<Record>(line).map_err(|e| JournalError::Invalid {
                path: path.to_owned(),
                line: number,
                detail: e.to_string(),
            })?;
            records.push(record);
        }
        if !matches!(records.first(), Some(Record::Job { .. })) {
            return Err(JournalError::Invalid { path: path.to_owned(), line: 1, detail: "the first record does not name the job".to_string() });
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runfile::RunRange;

    fn records() -> Vec<Record> {
        let location = MapOutputLocation::SharedFile { path: "/jobs/.mr-job/map-0.attempt-1.runs".into(), range: RunRange { offset: 0, len: 42 } };
        vec![
            Record::Started { epoch: 0 },
            Record::Assigned { task: TaskId::Map(0), attempt: 1, owner: Owner::new("host:7", [9; 16]) },
            Record::AppPinned { sha256: "ab".repeat(32) },
            Record::MapDone { task: 0, attempt: 1, outputs: vec![(3, location)], counters: Counters { map_input_records: 7, ..Counters::default() } },
            Record::ReduceDone { task: 3, attempt: 2, counters: Counters::default() },
            Record::Publishing,
        ]
    }

    #[test]
    fn records_appended_are_replayed_in_order_after_the_job_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let fingerprint = serde_json::json!({"reduces": 4});
        let mut journal = Journal::create(&path, "job-1", fingerprint.clone()).unwrap();
        let all = records();
        let (first, rest) = all.split_at(4);
        for record in first {
            journal.append(record).unwrap();
        }
        journal.sync().unwrap();
        drop(journal);
        // A later coordinator appends to the same file.
        let mut journal = Journal::open_for_append(&path).unwrap();
        for record in rest {
            journal.append(record).unwrap();
        }
        let mut expected = vec![Record::Job { id: "job-1".to_string(), fingerprint }];
        expected.extend(records());
        assert_eq!(Journal::replay(&path).unwrap(), expected);
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_a_bad_line_elsewhere_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut journal = Journal::create(&path, "job-1", serde_json::Value::Null).unwrap();
        for record in records() {
            journal.append(&record).unwrap();
        }
        drop(journal);
        let whole = std::fs::read(&path).unwrap();
        // Every cut inside the last line leaves the records before it.
        let last_start = whole[..whole.len() - 1].iter().rposition(|&b| b == b'\n').unwrap() + 1;
        for cut in last_start..whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let replayed = Journal::replay(&path).unwrap();
            assert_eq!(replayed.len(), 6, "cut at {cut}");
        }
        // A damaged line in the middle makes the journal invalid.
        let mut damaged = whole.clone();
        let second_line = whole.iter().position(|&b| b == b'\n').unwrap() + 1;
        damaged[second_line] = b'#';
        std::fs::write(&path, &damaged).unwrap();
        assert!(matches!(Journal::replay(&path), Err(JournalError::Invalid { line: 2, .. })));
        // A file that does not start with the job is no journal.
        std::fs::write(&path, b"{\"started\":{\"epoch\":0}}\n").unwrap();
        assert!(matches!(Journal::replay(&path), Err(JournalError::Invalid { line: 1, .. })));
    }

    /// The journal's bytes after its records were written.
    fn written() -> Vec<u8> {
        let mut bytes = Vec::new();
        for record in std::iter::once(Record::Job { id: "job-1".into(), fingerprint: serde_json::json!({"reduces": 2}) }).chain(records()) {
            bytes.extend(serde_json::to_vec(&record).unwrap());
            bytes.push(b'\n');
        }
        bytes
    }

    mod properties {
        use super::*;

        proptest::proptest! {
            #![proptest_config(crate::test_rng::proptest_config(3000))]

            /// Whatever a damaged disk gives, replaying it is an answer, not a
            /// panic, and a journal's answer always starts with its job.
            #[test]
            fn replaying_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
                if let Ok(records) = Journal::replay_from(&bytes[..], Path::new("journal")) {
                    let starts_with_job = matches!(records.first(), Some(Record::Job { .. }));
                    proptest::prop_assert!(starts_with_job);
                }
            }

            /// A journal cut anywhere replays as the records written before
            /// the cut, whole lines only.
            #[test]
            fn a_cut_journal_replays_as_a_prefix(cut in 0usize..10_000) {
                let whole = written();
                let expected = Journal::replay_from(&whole[..], Path::new("journal")).unwrap();
                let cut = cut % (whole.len() + 1);
                match Journal::replay_from(&whole[..cut], Path::new("journal")) {
                    Ok(records) => proptest::prop_assert_eq!(&records[..], &expected[..records.len()]),
                    // Only a cut inside the first line leaves no job.
                    Err(JournalError::Invalid { line: 1, .. }) => proptest::prop_assert!(!whole[..cut].contains(&b'\n')),
                    Err(e) => proptest::prop_assert!(false, "{}", e),
                }
            }

            /// A flipped byte makes the journal invalid or leaves a journal
            /// that starts with its job: never a panic.
            #[test]
            fn a_flipped_byte_is_an_answer(at in 0usize..10_000, bits in 1u8..=255) {
                let mut bytes = written();
                let at = at % bytes.len();
                bytes[at] ^= bits;
                if let Ok(records) = Journal::replay_from(&bytes[..], Path::new("journal")) {
                    let starts_with_job = matches!(records.first(), Some(Record::Job { .. }));
                    proptest::prop_assert!(starts_with_job);
                }
            }
        }
    }
}
