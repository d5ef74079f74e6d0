//! A stable sort by a 64-bit integer key, for the map side of the shuffle.
//!
//! A map buffer's entries are sorted by their key's first 8 bytes; with a
//! large vocabulary that is tens of thousands of entries per partition per
//! spill, and a comparison sort spends ~16 data-dependent (unpredictable)
//! branches per entry on it. A least-significant-digit radix sort instead
//! makes a few sequential passes of 11-bit digits, each a counted scatter
//! with no comparison at all, and skips the digits in which every entry is
//! alike (the low bytes of short keys). Being stable, it keeps equal keys in
//! the order they came in.

/// Bits per digit: 6 passes cover 64 bits, and 2^11 counters per digit
/// stay in the first-level cache during a scatter.
const DIGIT_BITS: u32 = 11;
const DIGITS: usize = 64_usize.div_ceil(DIGIT_BITS as usize);
const BUCKETS: usize = 1 << DIGIT_BITS;
const MASK: u64 = BUCKETS as u64 - 1;

/// Below this many items a comparison sort is faster than clearing and
/// summing the digit counters.
const RADIX_FROM: usize = 512;

/// Sorts `items` by `key`, stably, using `scratch` (any contents) as room
/// for one copy of them.
pub(crate) fn sort_by_u64<T: Copy>(items: &mut [T], scratch: &mut Vec<T>, key: impl Fn(&T) -> u64) {
    if items.len() < RADIX_FROM {
        items.sort_by_key(key);
        return;
    }
    let counts = digit_counts(items, &key);
    scratch.clear();
    scratch.extend_from_slice(items);
    // Where the items are now: `items` (true) or `scratch`.
    let mut in_items = true;
    for (digit, count) in counts.iter().enumerate() {
        if count.contains(&items.len()) {
            // Every item has the same digit here: the pass would change nothing.
            continue;
        }
        let shift = digit as u32 * DIGIT_BITS;
        if in_items {
            scatter(items, scratch, shift, count, &key);
        } else {
            scatter(scratch, items, shift, count, &key);
        }
        in_items = !in_items;
    }
    if !in_items {
        items.copy_from_slice(scratch);
    }
}

/// How many items have each value of each digit.
fn digit_counts<T>(items: &[T], key: &impl Fn(&T) -> u64) -> Box<[[usize; BUCKETS]; DIGITS]> {
    let mut counts = Box::new([[0usize; BUCKETS]; DIGITS]);
    for item in items {
        let k = key(item);
        for (digit, count) in counts.iter_mut().enumerate() {
            count[((k >> (digit as u32 * DIGIT_BITS)) & MASK) as usize] += 1;
        }
    }
    counts
}

/// Moves `from` into `to` ordered by the digit at `shift`, stably.
fn scatter<T: Copy>(from: &[T], to: &mut [T], shift: u32, count: &[usize; BUCKETS], key: &impl Fn(&T) -> u64) {
    let mut next = [0usize; BUCKETS];
    let mut start = 0;
    for (bucket, n) in next.iter_mut().zip(count) {
        *bucket = start;
        start += n;
    }
    for item in from {
        let bucket = &mut next[((key(item) >> shift) & MASK) as usize];
        to[*bucket] = *item;
        *bucket += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_like_a_stable_comparison_sort() {
        let mut rng = crate::test_rng::XorShift::new(0x9e37_79b9_7f4a_7c15);
        let mut random = move || rng.next();
        let mut scratch = Vec::new();
        // Sizes on both sides of RADIX_FROM; keys that differ in every
        // digit, only in the high digit (the others skipped), or hardly at
        // all (many ties, whose input order must survive).
        for len in [0, 1, 7, RADIX_FROM - 1, RADIX_FROM, 5000, 40_000] {
            for spread in [u64::MAX, 0xff00_0000_0000_0000, 0x3] {
                let items: Vec<(u64, usize)> = (0..len).map(|i| (random() & spread, i)).collect();
                let mut want = items.clone();
                want.sort_by_key(|item| item.0);
                let mut got = items;
                sort_by_u64(&mut got, &mut scratch, |item| item.0);
                assert_eq!(got, want, "{len} items, spread {spread:x}");
            }
        }
    }
}
