//! The shuffle's reduce side: a streaming k-way merge of sorted runs.
//!
//! [`RunMerger`] merges the runs of one partition and presents them grouped
//! by key: [`next_key`](RunMerger::next_key) moves to the next distinct key,
//! and [`GroupValues`] streams that key's values. It holds one block per run
//! plus the current record of each, never a whole partition, so a reduce's
//! memory does not grow with its input, nor with the number of values of
//! one key.
//!
//! Equal keys from different runs come out in run order (the order of the
//! runs passed in, which the coordinator makes map-task order), so a reduce
//! sees values in a deterministic order.

use std::cmp::{Ordering, Reverse};
use std::collections::binary_heap::PeekMut;
use std::collections::BinaryHeap;

use crate::app::ValueSource;
use crate::runfile::{RunError, RunReader};

/// A run being merged, with its current record's value; the record's key
/// is in the heap.
struct Source {
    reader: RunReader,
    /// The caller's label for this run (the map task that wrote it).
    label: u32,
    value: Vec<u8>,
}

/// A read error, with the label of the run it came from.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct MergeError {
    /// The label of the failing run (its map task).
    pub label: u32,
    /// What went wrong.
    #[source]
    pub source: RunError,
}

/// A run's next record's key in the merge heap, ordered by key, then by
/// run (so values of equal keys come in run order).
#[derive(PartialEq, Eq)]
struct Head {
    /// [`key_prefix`](crate::shuffle::key_prefix) of `key`.
    prefix: u64,
    key: Vec<u8>,
    source: usize,
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        self.prefix
            .cmp(&other.prefix)
            .then_with(|| {
                if self.key.len() <= 8 && other.key.len() <= 8 {
                    // Equal prefixes of keys this short: one key is the
                    // other plus zero bytes, so the shorter is the smaller.
                    self.key.len().cmp(&other.key.len())
                } else {
                    self.key.cmp(&other.key)
                }
            })
            .then(self.source.cmp(&other.source))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Whether two keys with equal prefixes are equal: for keys of at most 8
/// bytes the lengths settle it, with no call to compare bytes.
#[inline]
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.len() <= 8 || a == b)
}

/// Merges sorted runs into key groups.
pub struct RunMerger {
    sources: Vec<Source>,
    /// The head of every run not yet exhausted; the smallest key (then the
    /// earliest run) on top. The prefix (first 8 bytes, big-endian,
    /// zero-padded) orders like the key, and settles most comparisons
    /// without comparing bytes.
    heap: BinaryHeap<Reverse<Head>>,
    /// The key of the group being read; `None` before the first `next_key`
    /// (an empty key is a real key, so emptiness cannot mean "none").
    current: Option<Vec<u8>>,
    /// `current`'s [`key_prefix`](crate::shuffle::key_prefix).
    current_prefix: u64,
    /// The value last handed out; lives until the next one is asked for.
    value: Vec<u8>,
    /// Records taken from the runs so far.
    records_read: u64,
}

impl RunMerger {
    /// Starts merging `runs`, each labelled (with its map task) for errors.
    pub fn new(runs: Vec<(u32, RunReader)>) -> Result<RunMerger, MergeError> {
        let mut merger = RunMerger {
            sources: Vec::with_capacity(runs.len()),
            heap: BinaryHeap::with_capacity(runs.len()),
            current: None,
            current_prefix: 0,
            value: Vec::new(),
            records_read: 0,
        };
        for (label, reader) in runs {
            merger.sources.push(Source { reader, label, value: Vec::new() });
            merger.advance(merger.sources.len() - 1, Vec::new())?;
        }
        Ok(merger)
    }

    /// Reads source `i`'s next record into the heap, reusing `key` (the
    /// buffer of the record just popped) so steady-state merging does not
    /// allocate; an exhausted source just leaves the heap.
    fn advance(&mut self, i: usize, mut key: Vec<u8>) -> Result<(), MergeError> {
        let source = &mut self.sources[i];
        match source.reader.next_into(&mut key, &mut source.value) {
            Ok(true) => {
                self.heap.push(Reverse(Head { prefix: crate::shuffle::key_prefix(&key), key, source: i }));
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(source_err) => Err(MergeError { label: source.label, source: source_err }),
        }
    }

    /// Moves to the next distinct key, skipping any values of the current
    /// key not yet read. Returns `None` when every run is exhausted.
    pub fn next_key(&mut self) -> Result<Option<&[u8]>, MergeError> {
        while self.next_value_of_current()?.is_some() {}
        match self.heap.peek() {
            None => Ok(None),
            Some(Reverse(Head { prefix, key, .. })) => {
                self.current_prefix = *prefix;
                let current = self.current.get_or_insert_with(Vec::new);
                current.clear();
                crate::small_copy::extend(current, key);
                Ok(Some(current))
            }
        }
    }

    /// The next value of the current key, or `None` when the key's values
    /// are exhausted.
    pub fn next_value_of_current(&mut self) -> Result<Option<&[u8]>, MergeError> {
        // The prefixes settle most mismatches without comparing bytes.
        let at_current = matches!(
            (self.heap.peek(), &self.current),
            (Some(Reverse(head)), Some(current)) if head.prefix == self.current_prefix && same_key(&head.key, current)
        );
        if !at_current {
            return Ok(None);
        }
        self.records_read += 1;
        // The run on top gives its value away and reads its next record
        // into the top entry in place: one sift down instead of a pop and a
        // push (half the heap's work), and no buffer changes hands.
        let mut top = self.heap.peek_mut().expect("peeked");
        let Reverse(Head { prefix, key, source: i }) = &mut *top;
        let source = &mut self.sources[*i];
        std::mem::swap(&mut self.value, &mut source.value);
        match source.reader.next_into(key, &mut source.value) {
            Ok(true) => *prefix = crate::shuffle::key_prefix(key),
            Ok(false) => {
                PeekMut::pop(top);
            }
            Err(e) => {
                let label = source.label;
                PeekMut::pop(top);
                return Err(MergeError { label, source: e });
            }
        }
        Ok(Some(&self.value))
    }

    /// Records (values) taken from the runs so far, including those of
    /// keys whose values were skipped.
    pub fn records_read(&self) -> u64 {
        self.records_read
    }

    /// The values of the current key, as a [`ValueSource`] for the app.
    pub fn values(&mut self) -> GroupValues<'_> {
        GroupValues { merger: self, error: None }
    }
}

/// The values of the merger's current key. A read error ends the values
/// early and is kept in `error`, which the caller must check after the app
/// returns: the app's `Values` cannot carry errors.
pub struct GroupValues<'m> {
    merger: &'m mut RunMerger,
    /// The first read error, if any.
    pub error: Option<MergeError>,
}

impl ValueSource for GroupValues<'_> {
    fn next_value(&mut self) -> Option<&[u8]> {
        if self.error.is_some() {
            return None;
        }
        match self.merger.next_value_of_current() {
            Ok(value) => value,
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runfile::{Compression, RunWriter};
    use std::path::Path;

    fn run(dir: &Path, name: &str, records: &[(&str, &str)]) -> RunReader {
        let path = dir.join(name);
        let mut w = RunWriter::create(&path, Compression::Lz4).unwrap();
        w.begin_run().unwrap();
        for (k, v) in records {
            w.append(k.as_bytes(), v.as_bytes()).unwrap();
        }
        w.end_run().unwrap();
        w.finish().unwrap();
        RunReader::open(&path).unwrap()
    }

    fn groups(merger: &mut RunMerger) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        while let Some(key) = merger.next_key().unwrap() {
            let key = String::from_utf8(key.to_vec()).unwrap();
            let mut values = Vec::new();
            let mut source = merger.values();
            while let Some(v) = source.next_value() {
                values.push(String::from_utf8(v.to_vec()).unwrap());
            }
            assert!(source.error.is_none());
            out.push((key, values));
        }
        out
    }

    #[test]
    fn merges_runs_into_ordered_groups_with_values_in_run_order() {
        let dir = tempfile::tempdir().unwrap();
        let runs = vec![
            (0, run(dir.path(), "a", &[("apple", "a1"), ("cherry", "a2"), ("cherry", "a3")])),
            (1, run(dir.path(), "b", &[])),
            (2, run(dir.path(), "c", &[("banana", "c1"), ("cherry", "c2"), ("date", "c3")])),
            (3, run(dir.path(), "d", &[("apple", "d1")])),
        ];
        let mut merger = RunMerger::new(runs).unwrap();
        assert_eq!(
            groups(&mut merger),
            vec![
                ("apple".to_string(), vec!["a1".to_string(), "d1".to_string()]),
                ("banana".to_string(), vec!["c1".to_string()]),
                ("cherry".to_string(), vec!["a2".to_string(), "a3".to_string(), "c2".to_string()]),
                ("date".to_string(), vec!["c3".to_string()]),
            ]
        );
    }

    #[test]
    fn keys_sharing_a_prefix_or_differing_by_zero_bytes_stay_apart_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        // Every run is sorted; the keys tie on their first 8 bytes in pairs.
        let all = ["ab", "ab\0", "ab\0\0", "abcdefgh", "abcdefgh\0", "abcdefghi", "abcdefghij"];
        let runs = (0..3u32)
            .map(|r| {
                let records: Vec<(&str, String)> = all.iter().skip(r as usize).map(|k| (*k, format!("r{r}"))).collect();
                let records: Vec<(&str, &str)> = records.iter().map(|(k, v)| (*k, v.as_str())).collect();
                (r, run(dir.path(), &format!("run{r}"), &records))
            })
            .collect();
        let mut merger = RunMerger::new(runs).unwrap();
        let expected: Vec<(String, Vec<String>)> = all
            .iter()
            .enumerate()
            .map(|(i, k)| (k.to_string(), (0..3).filter(|r| *r <= i).map(|r| format!("r{r}")).collect()))
            .collect();
        assert_eq!(groups(&mut merger), expected);
    }

    #[test]
    fn an_empty_key_is_a_key_like_any_other() {
        let dir = tempfile::tempdir().unwrap();
        let runs = vec![(0, run(dir.path(), "a", &[("", "1"), ("", "2"), ("x", "3")])), (1, run(dir.path(), "b", &[("", "4")]))];
        let mut merger = RunMerger::new(runs).unwrap();
        assert_eq!(
            groups(&mut merger),
            vec![("".to_string(), vec!["1".to_string(), "2".to_string(), "4".to_string()]), ("x".to_string(), vec!["3".to_string()])]
        );
    }

    #[test]
    fn unread_values_are_skipped_by_next_key() {
        let dir = tempfile::tempdir().unwrap();
        let runs = vec![(0, run(dir.path(), "a", &[("k", "1"), ("k", "2"), ("l", "3")]))];
        let mut merger = RunMerger::new(runs).unwrap();
        assert_eq!(merger.next_key().unwrap(), Some(&b"k"[..]));
        assert_eq!(merger.next_key().unwrap(), Some(&b"l"[..]));
        assert_eq!(merger.next_value_of_current().unwrap(), Some(&b"3"[..]));
        assert_eq!(merger.next_key().unwrap(), None);
    }

    #[test]
    fn a_key_with_many_values_streams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("many");
        let mut w = RunWriter::create(&path, Compression::Lz4).unwrap();
        w.begin_run().unwrap();
        for i in 0..200_000u32 {
            w.append(b"same", &i.to_le_bytes()).unwrap();
        }
        w.end_run().unwrap();
        w.finish().unwrap();
        let mut merger = RunMerger::new(vec![(0, RunReader::open(&path).unwrap())]).unwrap();
        merger.next_key().unwrap();
        let mut values = merger.values();
        let mut expected = 0u32;
        while let Some(v) = values.next_value() {
            assert_eq!(v, expected.to_le_bytes());
            expected += 1;
        }
        assert_eq!(expected, 200_000);
    }

    #[test]
    fn a_truncated_run_surfaces_as_an_error_naming_its_label() {
        let dir = tempfile::tempdir().unwrap();
        let good = run(dir.path(), "good", &[("a", "1")]);
        let path = dir.path().join("bad");
        let mut w = RunWriter::create(&path, Compression::Lz4).unwrap();
        w.begin_run().unwrap();
        for i in 0..10_000 {
            w.append(format!("k{i:06}").as_bytes(), b"v").unwrap();
        }
        w.end_run().unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let bad = RunReader::open(&path).unwrap();
        let mut merger = RunMerger::new(vec![(3, good), (7, bad)]).unwrap();
        let err = loop {
            match merger.next_key() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("truncated run merged without error"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.label, 7);
        assert!(matches!(err.source, RunError::Truncated { .. }));
    }
}
