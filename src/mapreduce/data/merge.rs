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

use std::cmp::Ordering;

use crate::app::ValueSource;
use crate::runfile::key_prefix;
use crate::runfile::{RunError, RunReader};

/// A run being merged. Its current record (the reader's) is its head.
struct Source {
    reader: RunReader,
    /// The caller's label for this run (the map task that wrote it).
    label: u32,
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

/// A run's head as one integer that orders heads by key, then by run:
/// the key's [`key_prefix`] in the high 64 bits, then its length class
/// (the length up to 8, [`LONG`] for longer keys, [`EXHAUSTED`] for a run
/// with no head), then the run's index in the low 32 bits.
///
/// Comparing these settles the order of two heads unless both keys are
/// longer than 8 bytes and share their first 8: keys of up to 8 bytes with
/// equal prefixes differ only by trailing zero bytes, so the shorter is
/// the smaller, and a longer key comes after any of its prefixes.
type Rank = u128;

const LONG: u128 = 9;
const EXHAUSTED: u128 = 0xff;

fn rank(key: Option<&[u8]>, source: usize) -> Rank {
    let (prefix, class) = match key {
        Some(key) => (key_prefix(key), (key.len() as u128).min(LONG)),
        None => (u64::MAX, EXHAUSTED),
    };
    (prefix as u128) << 64 | class << 32 | source as u128
}

/// The run index of a rank.
#[inline(always)]
fn source_of(rank: Rank) -> usize {
    rank as u32 as usize
}

/// The rank without its run index: equal for equal keys (and for keys
/// longer than 8 bytes that share their first 8).
#[inline(always)]
fn key_part(rank: Rank) -> u128 {
    rank >> 32
}

/// Whether the key part of a rank is that of a key longer than 8 bytes.
#[inline(always)]
fn is_long(rank: Rank) -> bool {
    key_part(rank) & 0xff == LONG
}

/// Merges sorted runs into key groups.
///
/// The runs' heads are ordered in a *loser tree* (a tournament: each inner
/// node keeps the loser of the match played there; the overall winner is
/// kept apart). Replacing the winner's head replays only the matches on its
/// path to the root, one comparison per level, where a binary heap needs
/// two. Heads take part as [`Rank`]s, integers that settle nearly every
/// match, and are otherwise compared where they lie, in each reader's
/// block: no key or value is copied to take part in the merge.
pub struct RunMerger {
    sources: Vec<Source>,
    /// The losers of the matches at inner nodes `1..leaves` (node `n`'s
    /// children are `2n` and `2n + 1`; leaf `i`, source `i`, is node
    /// `leaves + i`). Leaves past the last source are exhausted runs.
    losers: Vec<Rank>,
    /// The head that won every match: the next record of the merge.
    winner: Rank,
    /// Number of leaves: the number of sources rounded up to a power of two.
    leaves: usize,
    /// The key of the group being read; `None` before the first `next_key`
    /// (an empty key is a real key, so emptiness cannot mean "none").
    current: Option<Vec<u8>>,
    /// `current`'s rank, without its run index.
    current_key_part: u128,
    /// The winner's value was handed out: its run moves on before the
    /// next look at the winner.
    handed_out: bool,
    /// Records taken from the runs so far.
    records_read: u64,
}

impl RunMerger {
    /// Starts merging `runs`, each labelled (with its map task) for errors.
    pub fn new(runs: Vec<(u32, RunReader)>) -> Result<RunMerger, MergeError> {
        let mut sources = Vec::with_capacity(runs.len());
        let mut heads = Vec::with_capacity(runs.len());
        for (i, (label, mut reader)) in runs.into_iter().enumerate() {
            let live = reader.advance().map_err(|source| MergeError { label, source })?;
            heads.push(rank(live.then(|| reader.key()), i));
            sources.push(Source { reader, label });
        }
        let leaves = sources.len().next_power_of_two();
        heads.extend((heads.len()..leaves).map(|i| rank(None, i)));
        let mut merger =
            RunMerger { sources, losers: vec![0; leaves], winner: 0, leaves, current: None, current_key_part: 0, handed_out: false, records_read: 0 };
        merger.play_all(heads);
        Ok(merger)
    }

    /// Plays every match, bottom up, from the runs' heads.
    fn play_all(&mut self, heads: Vec<Rank>) {
        let n = self.leaves;
        let mut winners = vec![0; n];
        winners.extend(heads);
        for node in (1..n).rev() {
            let (a, b) = (winners[2 * node], winners[2 * node + 1]);
            let (winner, loser) = if self.before(a, b) { (a, b) } else { (b, a) };
            winners[node] = winner;
            self.losers[node] = loser;
        }
        self.winner = winners[1.min(winners.len() - 1)];
    }

    /// Whether head `a` comes before head `b`: by key, then by run order
    /// (so values of equal keys come in run order).
    #[inline(always)]
    fn before(&self, a: Rank, b: Rank) -> bool {
        if is_long(a) && key_part(a) == key_part(b) {
            return self.long_key_before(a, b);
        }
        a < b
    }

    /// [`before`](Self::before) for two keys longer than 8 bytes that share
    /// their first 8.
    #[cold]
    fn long_key_before(&self, a: Rank, b: Rank) -> bool {
        let (ka, kb) = (self.sources[source_of(a)].reader.key(), self.sources[source_of(b)].reader.key());
        ka[8..].cmp(&kb[8..]).then(a.cmp(&b)) == Ordering::Less
    }

    /// Moves the winning run to its next record and replays its matches.
    fn advance_winner(&mut self) -> Result<(), MergeError> {
        let w = source_of(self.winner);
        let source = &mut self.sources[w];
        let read = source.reader.advance();
        let mut winner = rank(matches!(read, Ok(true)).then(|| source.reader.key()), w);
        let label = source.label;
        let mut node = (w + self.leaves) / 2;
        while node > 0 {
            let other = self.losers[node];
            // Which head wins is as unpredictable as the data: selecting
            // both ways (no branch) beats a mispredicted branch per level.
            let other_wins = self.before(other, winner);
            let (up, stays) = if other_wins { (other, winner) } else { (winner, other) };
            self.losers[node] = stays;
            winner = up;
            node /= 2;
        }
        self.winner = winner;
        read.map(drop).map_err(|source| MergeError { label, source })
    }

    /// The winning head's key, unless every run is exhausted.
    #[inline]
    fn winner_key(&self) -> Option<&[u8]> {
        (key_part(self.winner) & 0xff != EXHAUSTED).then(|| self.sources[source_of(self.winner)].reader.key())
    }

    /// Moves to the next distinct key, skipping any values of the current
    /// key not yet read. Returns `None` when every run is exhausted.
    pub fn next_key(&mut self) -> Result<Option<&[u8]>, MergeError> {
        while self.next_value_of_current()?.is_some() {}
        if self.winner_key().is_none() {
            return Ok(None);
        }
        let current = self.current.get_or_insert_with(Vec::new);
        current.clear();
        crate::small_copy::extend(current, self.sources[source_of(self.winner)].reader.key());
        self.current_key_part = key_part(self.winner);
        Ok(Some(current))
    }

    /// The next value of the current key, or `None` when the key's values
    /// are exhausted.
    pub fn next_value_of_current(&mut self) -> Result<Option<&[u8]>, MergeError> {
        if std::mem::take(&mut self.handed_out) {
            self.advance_winner()?;
        }
        let Some(current) = &self.current else {
            return Ok(None);
        };
        // The ranks settle most mismatches without comparing bytes.
        if key_part(self.winner) != self.current_key_part || (is_long(self.winner) && self.winner_key() != Some(&current[..])) {
            return Ok(None);
        }
        self.handed_out = true;
        self.records_read += 1;
        Ok(Some(self.sources[source_of(self.winner)].reader.value()))
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
        let expected: Vec<(String, Vec<String>)> =
            all.iter().enumerate().map(|(i, k)| (k.to_string(), (0..3).filter(|r| *r <= i).map(|r| format!("r{r}")).collect())).collect();
        assert_eq!(groups(&mut merger), expected);
    }

    #[test]
    fn many_runs_merge_like_a_stable_sort_of_all_their_records() {
        // 37 runs (not a power of two, some empty) of keys over a tiny
        // alphabet with zero bytes, 0 to 11 bytes long: many equal keys,
        // shared prefixes and keys that differ only by trailing zeros.
        let dir = tempfile::tempdir().unwrap();
        let mut rng = crate::test_rng::XorShift::new(0x2545_f491_4f6c_dd1d);
        let mut random = move |n: u64| rng.below(n);
        let mut all = Vec::new();
        let mut runs = Vec::new();
        for r in 0..37u32 {
            let mut records: Vec<Vec<u8>> =
                (0..random(60)).map(|_| (0..random(12)).map(|_| [0u8, b'a', b'b'][random(3) as usize]).collect()).collect();
            records.sort();
            let path = dir.path().join(format!("run{r}"));
            let mut w = RunWriter::create(&path, Compression::None).unwrap();
            w.begin_run().unwrap();
            for (i, key) in records.iter().enumerate() {
                let value = format!("{r}.{i}");
                w.append(key, value.as_bytes()).unwrap();
                all.push((key.clone(), r, value));
            }
            w.end_run().unwrap();
            w.finish().unwrap();
            runs.push((r, RunReader::open(&path).unwrap()));
        }
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mut merger = RunMerger::new(runs).unwrap();
        let mut merged = Vec::new();
        while let Some(key) = merger.next_key().unwrap() {
            let key = key.to_vec();
            while let Some(value) = merger.next_value_of_current().unwrap() {
                merged.push((key.clone(), String::from_utf8(value.to_vec()).unwrap()));
            }
        }
        let expected: Vec<(Vec<u8>, String)> = all.into_iter().map(|(k, _, v)| (k, v)).collect();
        assert_eq!(merged, expected);
        assert_eq!(merger.records_read(), expected.len() as u64);
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
