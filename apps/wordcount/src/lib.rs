//! Word count: for every word of the inputs, `<word> <number of occurrences>`.
//!
//! A word is a maximal run of Unicode letters ([`mapreduce::text`]). Map
//! counts the words with [`Emitter::count_words`], which sums in the task
//! and emits `<word> <count>` once per distinct word; the combiner and the reduce both
//! sum counts, so partial sums add up correctly. The counter `words` counts
//! every word mapped.

use std::io::Write;

use mapreduce::{counters, App, AppResult, Emitter, MapInput, Values};

/// The word-count app.
#[derive(Default)]
pub struct WordCount;

impl App for WordCount {
    fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        // The counting fast path: every word summed in the task, emitted
        // once per distinct word.
        let words = emit.count_words(input.contents);
        // A user counter: the job's total shows on the status page and in the summary.
        counters::increment("words", words);
        Ok(())
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        sum(key, values, out)
    }

    fn has_combiner(&self) -> bool {
        true
    }

    fn combine(&self, key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        sum(key, values, out)
    }
}

/// Writes the sum of the decimal counts in `values`.
fn sum(key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
    let mut total: u64 = 0;
    while let Some(value) = values.next() {
        let not_a_count = || format!("count {:?} of word {:?} is not a number", String::from_utf8_lossy(value), String::from_utf8_lossy(key));
        total = parse_count(value).and_then(|count| total.checked_add(count)).ok_or_else(not_a_count)?;
    }
    write!(out, "{total}")?;
    Ok(())
}

/// A decimal count (ASCII digits only, as the map and combiner write
/// them); `None` if `digits` is not one or overflows a u64. Parsed by hand:
/// the reduce of a large vocabulary parses tens of millions of them.
fn parse_count(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let digit = d.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

mapreduce::export_app!(WordCount);

#[cfg(test)]
mod tests {
    use super::*;
    use mapreduce::VecValues;

    #[test]
    fn counts_parse_like_std_and_bad_ones_are_refused() {
        for text in ["0", "7", "42", "18446744073709551615", "007"] {
            assert_eq!(parse_count(text.as_bytes()), text.parse().ok(), "{text}");
        }
        for text in ["", "-1", "+1", "1 ", "x", "18446744073709551616", "1.5"] {
            assert_eq!(parse_count(text.as_bytes()), None, "{text:?}");
        }
        let mut values = VecValues::new(vec![b"18446744073709551615".to_vec(), b"1".to_vec()]);
        let mut out = Vec::new();
        assert!(WordCount.reduce(b"w", &mut Values::new(&mut values), &mut out).is_err(), "an overflowing sum is an error");
    }

    #[test]
    fn map_emits_one_per_word_and_reduce_sums() {
        let mut pairs = Vec::new();
        let mut sink = |k: &[u8], v: &[u8]| pairs.push((k.to_vec(), v.to_vec()));
        // \xff is not valid UTF-8: a non-letter that ends "Café".
        let input = MapInput { filename: "f", contents: b"the cat, the Caf\xc3\xa9\xffx", offset: 0 };
        WordCount.map(&input, &mut Emitter::new(&mut sink)).unwrap();
        pairs.sort();
        let counted: Vec<_> = pairs.iter().map(|(k, v)| (String::from_utf8(k.clone()).unwrap(), String::from_utf8(v.clone()).unwrap())).collect();
        let expected = [("Café", "1"), ("cat", "1"), ("the", "2"), ("x", "1")].map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(counted, expected);

        let mut out = Vec::new();
        let mut values = VecValues::new(vec![b"1".to_vec(), b"2".to_vec(), b"1".to_vec()]);
        WordCount.reduce(b"the", &mut Values::new(&mut values), &mut out).unwrap();
        assert_eq!(out, b"4");
    }

    #[test]
    fn a_non_numeric_count_is_an_error_naming_the_word() {
        let mut values = VecValues::new(vec![b"x".to_vec()]);
        let err = WordCount.reduce(b"cat", &mut Values::new(&mut values), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("\"cat\""), "{err}");
    }
}
