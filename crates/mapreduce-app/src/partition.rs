//! Which reduce partition a key belongs to.
//!
//! The hash is the MIT lab's `ihash`: 32-bit FNV-1a of the key's bytes,
//! masked to 31 bits, modulo the number of reduce tasks. It must be stable
//! across processes, machines and releases (every map worker must agree), so
//! it is spelled out here rather than taken from `std`'s `Hasher`, whose
//! output may change between Rust versions.

const FNV_OFFSET_BASIS: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// 32-bit FNV-1a of `key`.
#[inline]
pub fn fnv1a32(key: &[u8]) -> u32 {
    key.iter().fold(FNV_OFFSET_BASIS, |h, &b| (h ^ u32::from(b)).wrapping_mul(FNV_PRIME))
}

/// The partition of `key` among `reduces` partitions (`reduces` > 0).
#[inline]
pub fn partition_of(key: &[u8], reduces: u32) -> u32 {
    (fnv1a32(key) & 0x7fff_ffff) % reduces
}

/// [`partition_of`] for one number of partitions, without a division per
/// key: a map task partitions every pair it emits, and a hardware divide
/// was a third of that work. The remainder comes from a multiplication by a
/// precomputed inverse (Lemire, Kaser and Kurz, "Faster remainder by direct
/// computation", 2019), exact for every 32-bit dividend and divisor.
#[derive(Debug, Clone, Copy)]
pub struct Partitions {
    count: u32,
    /// ⌈2^64 / count⌉, wrapped to 0 when `count` is 1.
    inverse: u64,
}

impl Partitions {
    /// `count` partitions (> 0).
    pub fn new(count: u32) -> Partitions {
        assert!(count > 0, "there is at least one partition");
        Partitions { count, inverse: (u64::MAX / u64::from(count)).wrapping_add(1) }
    }

    /// How many partitions there are.
    #[inline]
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The partition of `key`: equal to `partition_of(key, self.count())`.
    #[inline]
    pub fn of(&self, key: &[u8]) -> u32 {
        self.remainder(fnv1a32(key) & 0x7fff_ffff)
    }

    /// `n % count`.
    #[inline]
    fn remainder(&self, n: u32) -> u32 {
        let fraction = self.inverse.wrapping_mul(u64::from(n));
        ((u128::from(fraction) * u128::from(self.count)) >> 64) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a32(b""), 0x811c9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9cf968);
    }

    #[test]
    fn the_division_free_remainder_equals_the_remainder() {
        // Xorshift64: the same numbers on every run.
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u32
        };
        let divisors = [1, 2, 3, 7, 10, 13, 64, 1000, 65_537, u32::MAX / 3, u32::MAX - 1, u32::MAX];
        let dividends = [0, 1, 2, 9, 10, 11, 0x7fff_ffff, u32::MAX - 1, u32::MAX];
        let random_divisors: Vec<u32> = (0..200).map(|_| random().max(1)).collect();
        let random_dividends: Vec<u32> = (0..200).map(|_| random()).collect();
        for d in divisors.into_iter().chain(random_divisors) {
            let partitions = Partitions::new(d);
            for n in dividends.iter().chain(&random_dividends).copied() {
                assert_eq!(partitions.remainder(n), n % d, "{n} % {d}");
            }
        }
        for key in ["", "a", "word", "another key"] {
            assert_eq!(Partitions::new(10).of(key.as_bytes()), partition_of(key.as_bytes(), 10));
        }
    }

    #[test]
    fn partitions_are_in_range_and_spread() {
        let mut counts = [0u32; 10];
        for i in 0..10_000 {
            let p = partition_of(format!("word{i}").as_bytes(), 10);
            counts[p as usize] += 1;
        }
        // Uniform would be 1000 each; a broken hash piles keys into few buckets.
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
        assert_eq!(partition_of(b"anything", 1), 0);
    }
}
