//! A small deterministic random number generator for unit tests
//! (xorshift64): the same inputs on every run and every machine.

/// Xorshift64; never seed it with 0.
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> XorShift {
        assert_ne!(seed, 0, "xorshift stays at 0 forever");
        XorShift(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (> 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Property tests' settings: `default` cases, or `PROPTEST_CASES`
/// (scripts/fuzz.sh sets it for longer runs); no failure files written.
pub(crate) fn proptest_config(default: u32) -> proptest::prelude::ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(default);
    proptest::prelude::ProptestConfig { cases, failure_persistence: None, ..proptest::prelude::ProptestConfig::default() }
}
