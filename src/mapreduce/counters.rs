//! Counters: named totals of a job, the framework's own and the app's.
//!
//! Every task attempt counts for itself into a [`Counters`]: the worker
//! fills in the built-in ones as it runs the data path, and the app adds its
//! own with [`increment`] from `map`, `reduce` or `combine` (see
//! [`mapreduce_app::counters`], re-exported here). The worker sends an
//! attempt's counters with its completion report, and the coordinator
//! keeps only those of each task's *winning* attempt ([`crate::status`]):
//! failed, timed-out and duplicate attempts add nothing, and a map that is
//! re-run because its output was lost replaces its earlier counts, so the
//! job's totals are exact.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use mapreduce_app::counters::*;

/// The counters of one attempt, or the sum over a job's winning attempts.
///
/// The built-in counters are fields; the app's are in `user`, by name.
/// Records and bytes are those the framework handles at each step, so for
/// map output they are counted *after* [`Emitter::count`](crate::Emitter::count)
/// has summed repeated keys inside the map (it acts as an in-map combiner)
/// and before the shuffle's combiner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Lines of input given to map (a last line without a newline counts).
    pub map_input_records: u64,
    /// Bytes of input given to map.
    pub map_input_bytes: u64,
    /// Pairs the map handed to the shuffle.
    pub map_output_records: u64,
    /// Key and value bytes of those pairs.
    pub map_output_bytes: u64,
    /// Bytes of the final intermediate runs the maps wrote (after the
    /// combiner and compression).
    pub intermediate_bytes: u64,
    /// Bytes of intermediate runs the reduces read.
    pub reduce_input_bytes: u64,
    /// Distinct keys the reduces were called with.
    pub reduce_input_groups: u64,
    /// Values the reduces were given (after the combiner).
    pub reduce_input_records: u64,
    /// Lines written to the output files.
    pub output_records: u64,
    /// Bytes written to the output files.
    pub output_bytes: u64,
    /// Bad records skipped (lines by maps, key groups by reduces) when the
    /// job allows skipping them ([`crate::skipping`]).
    #[serde(default)]
    pub skipped_records: u64,
    /// The app's own counters ([`increment`]).
    pub user: BTreeMap<String, u64>,
}

impl Counters {
    /// Adds every counter of `other` to this one.
    pub fn add(&mut self, other: &Counters) {
        for ((_, mine), (_, theirs)) in self.builtin_mut().into_iter().zip(other.builtin()) {
            *mine = mine.saturating_add(theirs);
        }
        for (name, &value) in &other.user {
            let count = self.user.entry(name.clone()).or_default();
            *count = count.saturating_add(value);
        }
    }

    /// The built-in counters as (name, value), in a fixed order.
    pub fn builtin(&self) -> [(&'static str, u64); 11] {
        [
            ("map_input_records", self.map_input_records),
            ("map_input_bytes", self.map_input_bytes),
            ("map_output_records", self.map_output_records),
            ("map_output_bytes", self.map_output_bytes),
            ("intermediate_bytes", self.intermediate_bytes),
            ("reduce_input_bytes", self.reduce_input_bytes),
            ("reduce_input_groups", self.reduce_input_groups),
            ("reduce_input_records", self.reduce_input_records),
            ("output_records", self.output_records),
            ("output_bytes", self.output_bytes),
            ("skipped_records", self.skipped_records),
        ]
    }

    fn builtin_mut(&mut self) -> [(&'static str, &mut u64); 11] {
        [
            ("map_input_records", &mut self.map_input_records),
            ("map_input_bytes", &mut self.map_input_bytes),
            ("map_output_records", &mut self.map_output_records),
            ("map_output_bytes", &mut self.map_output_bytes),
            ("intermediate_bytes", &mut self.intermediate_bytes),
            ("reduce_input_bytes", &mut self.reduce_input_bytes),
            ("reduce_input_groups", &mut self.reduce_input_groups),
            ("reduce_input_records", &mut self.reduce_input_records),
            ("output_records", &mut self.output_records),
            ("output_bytes", &mut self.output_bytes),
            ("skipped_records", &mut self.skipped_records),
        ]
    }
}

/// Lines in `bytes`: newlines, plus one for a last line without its newline.
pub fn count_lines(bytes: &[u8]) -> u64 {
    let newlines = bytecount::count(bytes, b'\n') as u64;
    newlines + u64::from(bytes.last().is_some_and(|&b| b != b'\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_counters_sums_every_field_and_merges_user_counters_by_name() {
        let mut total = Counters { map_input_bytes: 5, user: BTreeMap::from([("a".into(), 1)]), ..Counters::default() };
        let other = Counters { map_input_bytes: 7, output_bytes: 3, user: BTreeMap::from([("a".into(), 2), ("b".into(), 9)]), ..Counters::default() };
        total.add(&other);
        assert_eq!(total.map_input_bytes, 12);
        assert_eq!(total.output_bytes, 3);
        assert_eq!(total.user, BTreeMap::from([("a".into(), 3), ("b".into(), 9)]));
        // Every built-in field takes part in `add`.
        let ones = Counters {
            map_input_records: 1,
            map_input_bytes: 1,
            map_output_records: 1,
            map_output_bytes: 1,
            intermediate_bytes: 1,
            reduce_input_bytes: 1,
            reduce_input_groups: 1,
            reduce_input_records: 1,
            output_records: 1,
            output_bytes: 1,
            skipped_records: 1,
            user: BTreeMap::new(),
        };
        let mut sum = Counters::default();
        sum.add(&ones);
        sum.add(&ones);
        assert!(sum.builtin().iter().all(|&(_, v)| v == 2), "{sum:?}");
    }

    #[test]
    fn lines_are_counted_like_wc_l_plus_an_unterminated_last_line() {
        assert_eq!(count_lines(b""), 0);
        assert_eq!(count_lines(b"a"), 1);
        assert_eq!(count_lines(b"a\n"), 1);
        assert_eq!(count_lines(b"a\n\nb"), 3);
    }
}
