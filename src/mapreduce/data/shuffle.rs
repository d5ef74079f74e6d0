//! The shuffle's map side and the one place that knows where map output lives.
//!
//! A map task feeds every emitted pair, with its partition, to a
//! [`MapOutputWriter`]. The writer buffers pairs up to a memory budget; when
//! the budget is reached it sorts the buffer by (partition, key), folds each
//! key's values with the app's combiner if it has one, and *spills* one
//! sorted run ([`crate::runfile`]) per partition. At the end, a map that
//! never spilled writes its final runs straight from memory; otherwise each
//! partition's spills are merged ([`crate::merge`], combining again) into one
//! final run. Either way the map produces one key-sorted run per non-empty
//! partition, and its memory never exceeds the budget plus one block per
//! spill being merged (at most [`crate::fan_in::MERGE_FAN_IN`] at once, fewer under a tight memory budget). A spill, and the map's final output, is one file
//! holding the runs of all its partitions back to back
//! ([`crate::runfile`]).
//!
//! Each final run is named by a [`MapOutputLocation`]: the coordinator
//! passes these from map tasks to reduce tasks without looking inside, and
//! only [`open_run`] turns one back into bytes. Today every location is a
//! range of a file in the job directory on a filesystem all workers share. Serving map
//! output from the worker that produced it, across machines, adds a variant
//! here (and a fetch in `open_run`); nothing else in the scheduler or the
//! reduce path changes.

use std::path::PathBuf;

use crate::app::ValueSource;
use crate::cpu::prefetch;
use crate::fan_in::{open_with_bounded_fan_in, Scratch};
use crate::map_output::MapOutputLocation;
use crate::merge::{MergeError, RunMerger};
use crate::plugin::AppFailure;
use crate::rpc::AttemptId;
use crate::runfile::{decode_record, encode_record, key_prefix, Compression, RunError, RunRange, RunReader, RunWriter};

/// The file name of map task `map`, attempt `attempt`'s output: its runs,
/// one per non-empty partition. The attempt is part of the name, so two
/// attempts of one task never write the same file and a late attempt
/// cannot touch the winner's output.
pub fn map_output_file_name(map: u32, attempt: AttemptId) -> String {
    format!("map-{map}.attempt-{attempt}.runs")
}

fn spill_file_name(map: u32, attempt: AttemptId, spill: usize) -> String {
    format!("map-{map}.attempt-{attempt}.spill-{spill}.runs")
}

/// A file of runs and, by partition, where each run lies in it.
struct RunFile {
    path: PathBuf,
    runs: Vec<(u32, RunRange)>,
}

/// Folds the values of one key into one value: the app's combiner.
pub trait Combiner {
    /// Appends the combination of `values` to `out`.
    fn combine(&self, key: &[u8], values: &mut dyn ValueSource, out: &mut Vec<u8>) -> Result<(), AppFailure>;
}

/// Why writing map output failed.
#[derive(Debug, thiserror::Error)]
pub enum ShuffleError {
    /// A run (spill or final) could not be written or read back.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The app's combiner failed.
    #[error(transparent)]
    Combine(#[from] AppFailure),
}

impl From<MergeError> for ShuffleError {
    fn from(e: MergeError) -> Self {
        ShuffleError::Run(e.source)
    }
}

/// One buffered pair: where its record sits in the buffer's arena. Records
/// are pushed at increasing offsets, so entries in offset order are in
/// emission order.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The key's first 8 bytes, big-endian, zero-padded: comparing these
    /// orders most pairs without touching the arena. Equal prefixes (or
    /// keys that differ only by trailing zero bytes) fall back to the bytes.
    prefix: u64,
    /// Where the record, encoded as in a run ([`encode_record`]), starts.
    offset: usize,
}

/// Sorts one partition's entries by key, keeping the emission order of
/// equal keys. Prefixes first, by a stable radix sort (entries come in
/// emission order). Keys that share a prefix are equal only if they also
/// have one length of at most 8 bytes (zero padding hides a key's trailing
/// zero bytes); any other such group is then put in key order, stably.
fn sort_entries<'a>(entries: &mut [Entry], scratch: &mut Vec<Entry>, key: impl Fn(&Entry) -> &'a [u8]) {
    crate::radix_sort::sort_by_u64(entries, scratch, |e| e.prefix);
    // Each tied entry's key, found once rather than at every comparison.
    let mut keyed: Vec<(&[u8], Entry)> = Vec::new();
    for tie in entries.chunk_by_mut(|a, b| a.prefix == b.prefix).filter(|tie| tie.len() > 1) {
        keyed.clear();
        keyed.extend(tie.iter().map(|e| (key(e), *e)));
        let first_len = keyed[0].0.len();
        if keyed.iter().any(|(k, _)| k.len() > 8 || k.len() != first_len) {
            keyed.sort_by(|a, b| a.0.cmp(b.0));
            for (slot, (_, e)) in tie.iter_mut().zip(&keyed) {
                *slot = *e;
            }
        }
    }
}

/// How many records ahead of the writer the shuffle prefetches their bytes.
const FETCH_AHEAD: usize = 16;

/// What a map task's output is for.
#[derive(Debug, Clone)]
pub struct MapOutputConfig {
    /// Number of reduce partitions.
    pub reduces: u32,
    /// Bytes of buffered pairs (their bytes plus bookkeeping) after which the
    /// buffer is sorted and spilled.
    pub buffer_bytes: usize,
    /// Directory for spills and final runs.
    pub dir: PathBuf,
    /// The map task.
    pub map: u32,
    /// The attempt, part of every file name.
    pub attempt: AttemptId,
    /// How runs (spills and final) are compressed.
    pub compression: Compression,
    /// The most spills one merge reads at once.
    pub fan_in: usize,
}

/// Collects a map task's output within a memory budget and writes it as one
/// sorted run per non-empty partition.
pub struct MapOutputWriter<'c> {
    config: MapOutputConfig,
    combiner: Option<&'c dyn Combiner>,
    /// Keys and values, back to back: one allocation for the buffer instead
    /// of two per pair.
    arena: Vec<u8>,
    /// Buffered pairs by partition: the sort needs no partition key, and
    /// each partition's sort is a tenth the size (for 10 reduces), closer
    /// to the cache.
    entries: Vec<Vec<Entry>>,
    /// Pairs in `entries`.
    buffered: usize,
    /// The spills so far.
    spills: Vec<RunFile>,
    /// Scratch for combined values.
    combined: Vec<u8>,
    /// Room for the radix sort.
    sort_scratch: Vec<Entry>,
}

/// A map buffer's allocations, kept on the thread for its next map task:
/// growing them anew for every task cost page faults and copies.
#[derive(Default)]
struct SpareBuffers {
    arena: Vec<u8>,
    entries: Vec<Vec<Entry>>,
    sort_scratch: Vec<Entry>,
}

thread_local! {
    static SPARE_BUFFERS: std::cell::Cell<SpareBuffers> = std::cell::Cell::new(SpareBuffers::default());
}

impl<'c> MapOutputWriter<'c> {
    /// A writer for one map attempt; `combiner` folds values of equal keys.
    pub fn new(config: MapOutputConfig, combiner: Option<&'c dyn Combiner>) -> Self {
        assert!(config.reduces > 0, "a job needs at least one reduce partition");
        let SpareBuffers { arena, mut entries, sort_scratch } = SPARE_BUFFERS.take();
        entries.resize_with(config.reduces as usize, Vec::new);
        MapOutputWriter { config, combiner, arena, entries, buffered: 0, spills: Vec::new(), combined: Vec::new(), sort_scratch }
    }

    /// Adds one pair bound for `partition` (< reduces); spills if the
    /// buffer is over budget.
    pub fn push(&mut self, partition: u32, key: &[u8], value: &[u8]) -> Result<(), ShuffleError> {
        debug_assert!(partition < self.config.reduces);
        let offset = self.arena.len();
        encode_record(&mut self.arena, key, value);
        self.entries[partition as usize].push(Entry { prefix: key_prefix(key), offset });
        self.buffered += 1;
        if self.buffered_bytes() >= self.config.buffer_bytes {
            self.spill()?;
        }
        Ok(())
    }

    /// Memory held by buffered pairs.
    fn buffered_bytes(&self) -> usize {
        self.arena.len() + self.buffered * std::mem::size_of::<Entry>()
    }

    /// Number of spills so far (for tests and logs).
    pub fn spill_count(&self) -> usize {
        self.spills.len()
    }

    fn spill(&mut self) -> Result<(), ShuffleError> {
        let path = self.config.dir.join(spill_file_name(self.config.map, self.config.attempt, self.spills.len()));
        let spill = self.write_buffer(path)?;
        self.spills.push(spill);
        Ok(())
    }

    /// Sorts the buffer and writes it to a file at `path`, one run per
    /// non-empty partition, combining equal keys; empties the buffer.
    fn write_buffer(&mut self, path: PathBuf) -> Result<RunFile, ShuffleError> {
        let mut entries = std::mem::take(&mut self.entries);
        let arena = std::mem::take(&mut self.arena);
        let record = |e: &Entry| decode_record(&arena[e.offset..]).expect("the arena holds the records pushed");
        let key = |e: &Entry| record(e).0;
        let value = |e: &Entry| record(e).1;
        // Most unequal keys differ in their prefixes, without a call to
        // compare bytes.
        let same_key = |a: &Entry, b: &Entry| a.prefix == b.prefix && key(a) == key(b);
        let mut runs = Vec::new();
        let mut writer = RunWriter::create(&path, self.config.compression)?;
        for (partition, partition_entries) in (0u32..).zip(entries.iter_mut()) {
            if partition_entries.is_empty() {
                continue;
            }
            sort_entries(partition_entries, &mut self.sort_scratch, key);
            let sorted: &[Entry] = partition_entries;
            writer.begin_run()?;
            // Sorted entries point all over the arena: fetch each record's
            // bytes a few records before they are written.
            let mut written = 0;
            for group in sorted.chunk_by(same_key) {
                for e in sorted.iter().skip(written + FETCH_AHEAD).take(group.len()) {
                    // (A record is at least its two length bytes: its offset
                    // is inside the arena.)
                    prefetch(&arena[e.offset]);
                }
                written += group.len();
                match self.combiner {
                    Some(combiner) if group.len() > 1 => {
                        self.combined.clear();
                        let mut values = SliceValues { values: group.iter().map(value) };
                        combiner.combine(key(&group[0]), &mut values, &mut self.combined)?;
                        writer.append(key(&group[0]), &self.combined)?;
                    }
                    _ => {
                        for e in group {
                            let (_, _, len) = record(e);
                            writer.append_encoded(&arena[e.offset..e.offset + len])?;
                        }
                    }
                }
            }
            runs.push((partition, writer.end_run()?));
            partition_entries.clear();
        }
        writer.finish()?;
        // Keep the allocations for the next round of buffering.
        self.entries = entries;
        self.buffered = 0;
        self.arena = arena;
        self.arena.clear();
        Ok(RunFile { path, runs })
    }

    /// Writes the final runs and returns them, one per non-empty partition.
    pub fn finish(mut self) -> Result<Vec<(u32, MapOutputLocation)>, ShuffleError> {
        let path = self.config.dir.join(map_output_file_name(self.config.map, self.config.attempt));
        let output = if self.spills.is_empty() {
            if self.buffered == 0 {
                // No output, no file.
                return Ok(Vec::new());
            }
            self.write_buffer(path)?
        } else {
            if self.buffered > 0 {
                self.spill()?;
            }
            let output = self.merge_spills(path)?;
            for spill in &self.spills {
                // A leftover spill is only litter in the job directory, which
                // the coordinator removes; not worth failing the task over.
                let _ = std::fs::remove_file(&spill.path);
            }
            output
        };
        let RunFile { path, runs } = output;
        Ok(runs.into_iter().map(|(partition, range)| (partition, MapOutputLocation::SharedFile { path: path.clone(), range })).collect())
    }

    /// Merges the spills into the final output file, partition by
    /// partition, combining again.
    fn merge_spills(&mut self, path: PathBuf) -> Result<RunFile, ShuffleError> {
        let mut writer = RunWriter::create(&path, self.config.compression)?;
        let mut runs = Vec::new();
        for partition in 0..self.config.reduces {
            let spill_runs: Vec<(u32, (PathBuf, RunRange))> = (0u32..)
                .zip(&self.spills)
                .flat_map(|(i, spill)| spill.runs.iter().filter(|(p, _)| *p == partition).map(move |(_, range)| (i, (spill.path.clone(), *range))))
                .collect();
            if spill_runs.is_empty() {
                continue;
            }
            let scratch_prefix = self.config.dir.join(format!("map-{}.attempt-{}.partition-{partition}", self.config.map, self.config.attempt));
            let scratch = Scratch { prefix: &scratch_prefix, compression: self.config.compression, fan_in: self.config.fan_in };
            let open = |_, (path, range): &(PathBuf, RunRange)| Ok::<_, ShuffleError>(RunReader::open_range(path, *range)?);
            let readers = open_with_bounded_fan_in(spill_runs, &scratch, open, |readers, writer| self.merge_runs(readers, writer))?;
            writer.begin_run()?;
            self.merge_runs(readers, &mut writer)?;
            runs.push((partition, writer.end_run()?));
        }
        writer.finish()?;
        Ok(RunFile { path, runs })
    }

    /// Merges sorted runs into the open run of `writer`, combining equal keys.
    fn merge_runs(&mut self, readers: Vec<(u32, RunReader)>, writer: &mut RunWriter) -> Result<(), ShuffleError> {
        let mut merger = RunMerger::new(readers)?;
        let mut key = Vec::new();
        while let Some(next) = merger.next_key()? {
            key.clear();
            key.extend_from_slice(next);
            match self.combiner {
                Some(combiner) => {
                    self.combined.clear();
                    let mut values = merger.values();
                    let result = combiner.combine(&key, &mut values, &mut self.combined);
                    if let Some(e) = values.error {
                        return Err(e.into());
                    }
                    result?;
                    writer.append(&key, &self.combined)?;
                }
                None => {
                    while let Some(value) = merger.next_value_of_current()? {
                        writer.append(&key, value)?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for MapOutputWriter<'_> {
    /// Keeps the buffer's allocations for the next task on this thread,
    /// unless they outgrew the budget (memory stays bounded by it).
    fn drop(&mut self) {
        if self.arena.capacity() <= self.config.buffer_bytes {
            let mut spare = SpareBuffers {
                arena: std::mem::take(&mut self.arena),
                entries: std::mem::take(&mut self.entries),
                sort_scratch: std::mem::take(&mut self.sort_scratch),
            };
            spare.arena.clear();
            spare.entries.iter_mut().for_each(Vec::clear);
            SPARE_BUFFERS.set(spare);
        }
    }
}

/// Frees the buffers the last map on this thread kept for the next: for a
/// task that needs none of them (a reduce), within a memory budget.
pub fn release_spare_buffers() {
    drop(SPARE_BUFFERS.take());
}

/// Values borrowed from the buffer's arena.
struct SliceValues<'a, I: Iterator<Item = &'a [u8]>> {
    values: I,
}

impl<'a, I: Iterator<Item = &'a [u8]>> ValueSource for SliceValues<'a, I> {
    fn next_value(&mut self) -> Option<&[u8]> {
        self.values.next()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::map_output::open_run;
    use crate::partition::partition_of;

    /// Sums decimal values, like word count's combiner.
    struct Sum;

    impl Combiner for Sum {
        fn combine(&self, _key: &[u8], values: &mut dyn ValueSource, out: &mut Vec<u8>) -> Result<(), AppFailure> {
            let mut total = 0u64;
            while let Some(v) = values.next_value() {
                total += std::str::from_utf8(v).unwrap().parse::<u64>().unwrap();
            }
            out.extend_from_slice(total.to_string().as_bytes());
            Ok(())
        }
    }

    fn config(dir: &Path, reduces: u32, buffer_bytes: usize) -> MapOutputConfig {
        MapOutputConfig {
            reduces,
            buffer_bytes,
            dir: dir.to_owned(),
            map: 4,
            attempt: 9,
            compression: Compression::Lz4,
            fan_in: crate::fan_in::MERGE_FAN_IN,
        }
    }

    fn read_all(location: &MapOutputLocation) -> Vec<(String, String)> {
        let mut reader = open_run(location).unwrap();
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut records = Vec::new();
        while reader.next_into(&mut k, &mut v).unwrap() {
            records.push((String::from_utf8(k.clone()).unwrap(), String::from_utf8(v.clone()).unwrap()));
        }
        records
    }

    fn pairs() -> Vec<(String, String)> {
        (0..3000).map(|i| (format!("k{}", (i * 7) % 50), format!("v{i}"))).collect()
    }

    /// The records a map wrote, as `(partition, its (key, value) pairs)`.
    type PartitionRecords = Vec<(u32, Vec<(String, String)>)>;

    /// Writes `pairs` and returns every partition's records and the number
    /// of spills.
    fn write(dir: &Path, buffer_bytes: usize, combiner: Option<&dyn Combiner>, pairs: &[(String, String)]) -> (PartitionRecords, usize) {
        let mut writer = MapOutputWriter::new(config(dir, 3, buffer_bytes), combiner);
        for (k, v) in pairs {
            writer.push(partition_of(k.as_bytes(), 3), k.as_bytes(), v.as_bytes()).unwrap();
        }
        let spills = writer.spill_count();
        let outputs = writer.finish().unwrap();
        let runs = outputs
            .iter()
            .map(|(p, location)| {
                let MapOutputLocation::SharedFile { path, .. } = location else { panic!("a map writes local files") };
                assert_eq!(path.file_name().unwrap().to_str().unwrap(), map_output_file_name(4, 9));
                (*p, read_all(location))
            })
            .collect();
        (runs, spills)
    }

    fn expected(pairs: &[(String, String)], partition: u32) -> Vec<(String, String)> {
        let mut expected: Vec<_> = pairs.iter().filter(|(k, _)| partition_of(k.as_bytes(), 3) == partition).cloned().collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        expected
    }

    #[test]
    fn a_key_prefix_is_its_first_8_bytes_big_endian_zero_padded() {
        let bytes: Vec<u8> = (0xf1..=0xfc).collect();
        for len in 0..=bytes.len() {
            let mut padded = [0u8; 8];
            padded[..len.min(8)].copy_from_slice(&bytes[..len.min(8)]);
            assert_eq!(key_prefix(&bytes[..len]), u64::from_be_bytes(padded), "length {len}");
        }
    }

    #[test]
    fn keys_sharing_a_prefix_are_ordered_by_their_bytes_and_values_keep_their_order() {
        // Equal 8-byte prefixes: zero bytes that padding would hide, keys
        // longer than the prefix, and one key repeated with many values.
        let keys = ["ab", "ab\0", "ab\0\0", "abcdefgh", "abcdefgh\0", "abcdefghij", "abcdefghi", "abcdefghiz", "", "\0"];
        let pairs: Vec<(String, String)> = (0..400).map(|i| (keys[(i * 7) % keys.len()].to_string(), format!("v{i}"))).collect();
        for budget in [usize::MAX, 512] {
            let dir = tempfile::tempdir().unwrap();
            let (runs, _) = write(dir.path(), budget, None, &pairs);
            for (partition, records) in runs {
                assert_eq!(records, expected(&pairs, partition), "partition {partition}, budget {budget}");
            }
        }
    }

    #[test]
    fn empty_keys_and_values_anywhere_in_the_buffer_are_kept() {
        // Empty records last in the buffer (their offset is the arena's
        // end), and enough records that the writer reads ahead past them.
        let mut pairs: Vec<(String, String)> = (0..100).map(|i| (format!("k{}", i % 7), format!("{i}"))).collect();
        pairs.extend((0..40).map(|_| (String::new(), String::new())));
        for budget in [usize::MAX, 256] {
            let dir = tempfile::tempdir().unwrap();
            let (runs, _) = write(dir.path(), budget, None, &pairs);
            let total: usize = runs.iter().map(|(_, records)| records.len()).sum();
            assert_eq!(total, pairs.len(), "budget {budget}");
            for (partition, records) in runs {
                assert_eq!(records, expected(&pairs, partition), "partition {partition}, budget {budget}");
            }
        }
    }

    #[test]
    fn runs_are_partitioned_sorted_and_stable_with_or_without_spills() {
        let pairs = pairs();
        for budget in [usize::MAX, 4096, 1] {
            let dir = tempfile::tempdir().unwrap();
            let (runs, spills) = write(dir.path(), budget, None, &pairs);
            assert_eq!(spills > 0, budget != usize::MAX, "budget {budget}");
            let mut seen = 0;
            for (partition, records) in &runs {
                assert_eq!(records, &expected(&pairs, *partition), "budget {budget}, partition {partition}");
                seen += records.len();
            }
            assert_eq!(seen, pairs.len());
            let files = std::fs::read_dir(dir.path()).unwrap().count();
            assert_eq!(files, 1, "budget {budget}: one output file; spills must be removed");
        }
    }

    #[test]
    fn the_combiner_folds_each_key_to_one_value_with_or_without_spills() {
        let pairs: Vec<_> = pairs().into_iter().map(|(k, _)| (k, "1".to_string())).collect();
        for budget in [usize::MAX, 2048] {
            let dir = tempfile::tempdir().unwrap();
            let (runs, spills) = write(dir.path(), budget, Some(&Sum), &pairs);
            assert_eq!(spills > 0, budget != usize::MAX);
            for (partition, records) in &runs {
                let mut want: Vec<(String, String)> = Vec::new();
                for (k, _) in expected(&pairs, *partition) {
                    match want.last_mut() {
                        Some((last, n)) if *last == k => *n = (n.parse::<u64>().unwrap() + 1).to_string(),
                        _ => want.push((k, "1".to_string())),
                    }
                }
                assert_eq!(records, &want, "budget {budget}");
            }
        }
    }

    #[test]
    fn empty_output_writes_no_runs() {
        let dir = tempfile::tempdir().unwrap();
        let outputs = MapOutputWriter::new(config(dir.path(), 5, 1024), None).finish().unwrap();
        assert!(outputs.is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
