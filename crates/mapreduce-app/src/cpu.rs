//! Hints to the CPU for the hot loops (the count table, the shuffle).

/// Asks the CPU to start loading the cache line holding `value`, so that a
/// later read of it does not wait on memory. A hint: it never faults.
#[inline(always)]
pub fn prefetch<T: ?Sized>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, part of the x86_64 baseline. It is
    // a hint that reads and writes nothing and never faults, so any address
    // is allowed (and this one is a live reference anyway).
    unsafe {
        std::arch::x86_64::_mm_prefetch(value as *const T as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
