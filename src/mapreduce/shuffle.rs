//! The shuffle's map side and the one place that knows where map output lives.
//!
//! A map task feeds every emitted pair to a [`MapOutputBuffer`], which
//! partitions it by key ([`crate::partition`]), sorts each partition, and
//! writes one key-sorted run ([`crate::runfile`]) per non-empty partition.
//! Each run is named by a [`MapOutputLocation`]: the coordinator passes these
//! from map tasks to reduce tasks without looking inside, and only
//! [`open_run`] turns one back into bytes.
//!
//! Today every location is a file in the job directory on a filesystem all
//! workers share. Serving map output from the worker that produced it, across
//! machines, adds a variant here (and a fetch in `open_run`); nothing else in
//! the scheduler or the reduce path changes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::partition::partition_of;
use crate::rpc::AttemptId;
use crate::runfile::{RunError, RunReader, RunWriter};

/// Where one map task's sorted run for one partition can be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapOutputLocation {
    /// A run file on a filesystem shared by every worker.
    SharedFile(PathBuf),
}

/// Opens the run at `location` for reading.
pub fn open_run(location: &MapOutputLocation) -> Result<RunReader, RunError> {
    match location {
        MapOutputLocation::SharedFile(path) => RunReader::open(path),
    }
}

/// The file name of map task `map`, attempt `attempt`'s run for `partition`.
/// The attempt is part of the name, so two attempts of one task never write
/// the same file and a late attempt cannot touch the winner's output.
pub fn run_file_name(map: u32, attempt: AttemptId, partition: u32) -> String {
    format!("map-{map}.attempt-{attempt}.part-{partition}.run")
}

/// One buffered pair: where its key and value sit in the buffer's arena.
#[derive(Debug, Clone, Copy)]
struct Entry {
    partition: u32,
    key_len: usize,
    value_len: usize,
    offset: usize,
}

/// Collects a map task's output in memory, then writes it as sorted runs.
#[derive(Debug)]
pub struct MapOutputBuffer {
    reduces: u32,
    /// Keys and values, back to back: one allocation for the whole output
    /// instead of two per pair.
    arena: Vec<u8>,
    entries: Vec<Entry>,
}

impl MapOutputBuffer {
    /// An empty buffer for a job with `reduces` partitions.
    pub fn new(reduces: u32) -> Self {
        assert!(reduces > 0, "a job needs at least one reduce partition");
        MapOutputBuffer { reduces, arena: Vec::new(), entries: Vec::new() }
    }

    /// Adds one emitted pair.
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        let offset = self.arena.len();
        self.arena.extend_from_slice(key);
        self.arena.extend_from_slice(value);
        self.entries.push(Entry {
            partition: partition_of(key, self.reduces),
            key_len: key.len(),
            value_len: value.len(),
            offset,
        });
    }

    /// Number of pairs buffered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn key(&self, e: &Entry) -> &[u8] {
        &self.arena[e.offset..e.offset + e.key_len]
    }

    fn value(&self, e: &Entry) -> &[u8] {
        let start = e.offset + e.key_len;
        &self.arena[start..start + e.value_len]
    }

    /// Sorts by (partition, key) and writes one run per non-empty partition
    /// into `dir`, named by [`run_file_name`]. The sort is stable, so values
    /// of one key keep their emission order.
    pub fn write_runs(mut self, dir: &Path, map: u32, attempt: AttemptId) -> Result<Vec<(u32, MapOutputLocation)>, RunError> {
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_by(|a, b| a.partition.cmp(&b.partition).then_with(|| self.key(a).cmp(self.key(b))));
        let mut outputs = Vec::new();
        for group in entries.chunk_by(|a, b| a.partition == b.partition) {
            let partition = group[0].partition;
            let path = dir.join(run_file_name(map, attempt, partition));
            let mut writer = RunWriter::create(&path)?;
            for e in group {
                writer.append(self.key(e), self.value(e))?;
            }
            outputs.push((partition, MapOutputLocation::SharedFile(writer.finish()?)));
        }
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_partitioned_sorted_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer = MapOutputBuffer::new(3);
        let pairs: Vec<(String, String)> =
            (0..300).map(|i| (format!("k{}", (i * 7) % 50), format!("v{i}"))).collect();
        for (k, v) in &pairs {
            buffer.push(k.as_bytes(), v.as_bytes());
        }
        let outputs = buffer.write_runs(dir.path(), 4, 9).unwrap();
        let mut seen = 0;
        for (partition, location) in &outputs {
            let MapOutputLocation::SharedFile(path) = location;
            assert_eq!(path.file_name().unwrap().to_str().unwrap(), run_file_name(4, 9, *partition));
            let mut reader = open_run(location).unwrap();
            let (mut k, mut v) = (Vec::new(), Vec::new());
            let mut records = Vec::new();
            while reader.next_into(&mut k, &mut v).unwrap() {
                assert_eq!(partition_of(&k, 3), *partition);
                records.push((String::from_utf8(k.clone()).unwrap(), String::from_utf8(v.clone()).unwrap()));
            }
            // Expected: this partition's pairs, stably sorted by key.
            let mut expected: Vec<_> =
                pairs.iter().filter(|(k, _)| partition_of(k.as_bytes(), 3) == *partition).cloned().collect();
            expected.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(records, expected);
            seen += records.len();
        }
        assert_eq!(seen, pairs.len());
    }

    #[test]
    fn empty_output_writes_no_runs() {
        let dir = tempfile::tempdir().unwrap();
        let outputs = MapOutputBuffer::new(5).write_runs(dir.path(), 0, 1).unwrap();
        assert!(outputs.is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
