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
pub fn fnv1a32(key: &[u8]) -> u32 {
    key.iter().fold(FNV_OFFSET_BASIS, |h, &b| (h ^ u32::from(b)).wrapping_mul(FNV_PRIME))
}

/// The partition of `key` among `reduces` partitions (`reduces` > 0).
pub fn partition_of(key: &[u8], reduces: u32) -> u32 {
    (fnv1a32(key) & 0x7fff_ffff) % reduces
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
