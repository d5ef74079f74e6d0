//! The hash tables behind [`Emitter::count`](crate::Emitter::count): sums
//! counts per key inside a map task, in the hot loop of counting apps.
//!
//! A key of 1 to 16 bytes whose last byte is not zero (every word of every
//! language, and most keys of any kind) is packed into integers, zero
//! padded: the last byte being non-zero makes the padding unambiguous, so
//! the integers alone are the key and a lookup compares integers, with no
//! length and no bytes. Keys of up to 8 bytes (most words) live in 16-byte
//! slots, four to a cache line, so that a book's whole vocabulary fits the
//! second-level cache; keys of 9 to 16 bytes in 24-byte slots. Any other key
//! (empty, longer, or ending in a zero byte) lives in an arena, with its
//! hash and place in a slot of a third table. All three are open-addressing
//! tables with linear probing, at most half full, so that most lookups end
//! at the key's home slot or the next (3/4 full measured a
//! little slower on book text and no faster on a large vocabulary).
//!
//! Once a table outgrows the second-level cache, a lookup is a cache miss
//! whose latency the CPU cannot hide, since each word's probe waits for the
//! load. So from [`PIPELINE_FROM_BYTES`] on, a packed table only hashes the
//! key, prefetches its slot and queues it; the probe happens [`PIPELINE`]
//! keys later, when the slot has arrived, so that many misses are in flight
//! at once. Order does not matter to a sum, and `drain` empties the queue
//! first.

use std::cell::Cell;

use crate::cpu::prefetch;
use crate::small_copy::load_partial;

/// Counts per key; see the module docs.
#[derive(Default)]
pub(crate) struct CountTable {
    /// Keys of 1 to 8 bytes, the last not zero.
    short: PackedTable<u64>,
    /// Keys of 9 to 16 bytes, the last not zero.
    medium: PackedTable<[u64; 2]>,
    /// Every other key.
    other: ArenaTable,
}

/// The multiplier of the multiplicative hashes (2^64 / golden ratio).
const K1: u64 = 0x9e37_79b9_7f4a_7c15;
/// A second odd multiplier, to mix the high half of a 16-byte key.
const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// Whether a table of `capacity` slots must grow to take one more key.
#[inline(always)]
fn over_load(len: usize, capacity: usize) -> bool {
    (len + 1) * 2 > capacity
}

/// Smallest number of slots a table grows to.
const MIN_SLOTS: usize = 1024;

/// For each key length up to 16: the masks that keep that many bytes of two
/// little-endian u64 loads, and the smallest value the part holding the last
/// byte has when that byte is not zero.
const LENGTH_MASKS: [(u64, u64); 17] = {
    let mut masks = [(0, 0); 17];
    let mut len = 0;
    while len <= 16 {
        let lo = if len >= 8 { u64::MAX } else { (1u64 << (8 * len)) - 1 };
        let hi = if len >= 16 {
            u64::MAX
        } else if len <= 8 {
            0
        } else {
            (1u64 << (8 * (len - 8))) - 1
        };
        masks[len] = (lo, hi);
        len += 1;
    }
    masks
};

/// The smallest value of the (last) integer of a packed key of each length
/// 1 to 16 whose last byte is not zero: `1 << (8 * (last byte's place))`.
const LAST_BYTE_MIN: [u64; 17] = {
    // Length 0 has no last byte: no packing of it qualifies.
    let mut min = [u64::MAX; 17];
    let mut len = 1;
    while len <= 16 {
        min[len] = 1u64 << (8 * ((len - 1) % 8));
        len += 1;
    }
    min
};

impl CountTable {
    /// Distinct keys counted (keys still queued in a pipeline are not
    /// included: at most [`PIPELINE`] per table).
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.short.len + self.medium.len + self.other.len
    }

    /// Adds `n` to `key`'s count. Returns true if that (or a key queued
    /// earlier) was new to the table, the only time [`len`](Self::len) grows.
    #[inline]
    pub(crate) fn add(&mut self, key: &[u8], n: u64) -> bool {
        match key.len() {
            1..=8 if key[key.len() - 1] != 0 => self.short.add(load_partial(key), n),
            9..=16 if key[key.len() - 1] != 0 => self.medium.add([load_partial(&key[..8]), load_partial(&key[8..])], n),
            _ => self.other.add(key, n),
        }
    }

    /// Adds `n` to the count of the key `text[start..start + len]`. When 16
    /// bytes can be read from `start`, the key is packed by masking those
    /// bytes to its length, with no branch on the length (which is as
    /// unpredictable as the words of a text are). Returns what
    /// [`add`](Self::add) returns.
    #[inline(always)]
    pub(crate) fn add_from(&mut self, text: &[u8], start: usize, len: usize, n: u64) -> bool {
        if let (Some(window), true) = (text.get(start..start + 16), len <= 16) {
            let lo = u64::from_le_bytes(window[..8].try_into().expect("8 bytes"));
            let hi = u64::from_le_bytes(window[8..].try_into().expect("8 bytes"));
            let (lo_mask, hi_mask) = LENGTH_MASKS[len];
            let (lo, hi) = (lo & lo_mask, hi & hi_mask);
            // The packing is the key only if its last byte is not zero;
            // for words (letters) it never is.
            if len <= 8 {
                if lo >= LAST_BYTE_MIN[len] {
                    return self.short.add(lo, n);
                }
            } else if hi >= LAST_BYTE_MIN[len] {
                return self.medium.add([lo, hi], n);
            }
        }
        self.add(&text[start..start + len], n)
    }

    /// Hands every (key, count) to `f` and empties the table, keeping its memory.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(&[u8], u64)) {
        self.short.drain(&mut f);
        self.medium.drain(&mut f);
        self.other.drain(&mut f);
    }
}

/// A key of up to 16 bytes packed into integers, zero-padded, whose last
/// byte is not zero; all-zero integers mark an unused slot.
trait PackedKey: Copy + Eq + Default {
    fn hash(self) -> u64;
    /// The key's bytes into `out`; returns its length.
    fn unpack(self, out: &mut [u8; 16]) -> usize;
}

impl PackedKey for u64 {
    #[inline(always)]
    fn hash(self) -> u64 {
        self.wrapping_mul(K1)
    }

    fn unpack(self, out: &mut [u8; 16]) -> usize {
        out[..8].copy_from_slice(&self.to_le_bytes());
        8 - self.leading_zeros() as usize / 8
    }
}

impl PackedKey for [u64; 2] {
    #[inline(always)]
    fn hash(self) -> u64 {
        (self[0] ^ self[1].wrapping_mul(K2).rotate_left(31)).wrapping_mul(K1)
    }

    fn unpack(self, out: &mut [u8; 16]) -> usize {
        out[..8].copy_from_slice(&self[0].to_le_bytes());
        out[8..].copy_from_slice(&self[1].to_le_bytes());
        16 - self[1].leading_zeros() as usize / 8
    }
}

/// A ring of keys hashed and prefetched but not yet probed.
#[derive(Default)]
struct Pipeline<T> {
    items: [T; PIPELINE],
    len: usize,
    /// Where the next item goes: when full, the oldest item.
    next: usize,
}

impl<T: Copy> Pipeline<T> {
    /// Queues `item`; once the ring is full, returns the oldest item, whose
    /// slot has had [`PIPELINE`] keys' time to arrive.
    #[inline(always)]
    fn push(&mut self, item: T) -> Option<T> {
        let next = self.next;
        let oldest = if self.len == PIPELINE {
            Some(self.items[next])
        } else {
            self.len += 1;
            None
        };
        self.items[next] = item;
        self.next = (next + 1) % PIPELINE;
        oldest
    }

    /// Empties the ring, returning what it held.
    fn take(&mut self) -> impl Iterator<Item = T> {
        let len = std::mem::take(&mut self.len);
        self.next = 0;
        self.items.into_iter().take(len)
    }
}

/// Keys in flight between their prefetch and their probe (32 measured 7%
/// faster than 16 on a large vocabulary: more misses overlap).
const PIPELINE: usize = 32;

/// Table size from which lookups are pipelined: twice the second-level
/// cache here. A smaller table (a book's vocabulary) mostly hits that
/// cache, and the queue would cost more than the misses it hides.
const PIPELINE_FROM_BYTES: usize = 2 << 20;

/// A table of packed keys; see the module docs.
struct PackedTable<K> {
    /// Power-of-two length (or empty): `(key, count)`, key all zeros if unused.
    slots: Vec<(K, u64)>,
    /// `64 - log2(slots.len())`: a key's home slot is its hash's top bits.
    shift: u32,
    len: usize,
    /// Keys (and amounts) prefetched but not yet probed.
    pending: Pipeline<(K, u64)>,
}

impl<K: PackedKey> Default for PackedTable<K> {
    fn default() -> Self {
        // With no slots, every home is out of range (index 0 or 1 of an
        // empty vector), which sends the first key to `insert`.
        PackedTable { slots: Vec::new(), shift: 63, len: 0, pending: Pipeline::default() }
    }
}

impl<K: PackedKey> PackedTable<K> {
    #[inline(always)]
    fn home(&self, key: K) -> usize {
        (key.hash() >> self.shift) as usize
    }

    /// Adds `n` to `key`'s count; returns true if a key was inserted.
    #[inline(always)]
    fn add(&mut self, key: K, n: u64) -> bool {
        if self.slots.len() * std::mem::size_of::<(K, u64)>() >= PIPELINE_FROM_BYTES {
            prefetch(&self.slots[self.home(key)]);
            match self.pending.push((key, n)) {
                Some((oldest, count)) => self.add_now(oldest, count),
                None => false,
            }
        } else {
            self.add_now(key, n)
        }
    }

    /// Adds at once. The probe for a key already in the table is inline
    /// (measured 8% faster on book text than probing past the home slot
    /// out of line); inserting a new key, and growing, are not.
    #[inline(always)]
    fn add_now(&mut self, key: K, n: u64) -> bool {
        let mask = self.slots.len().wrapping_sub(1);
        let mut i = self.home(key);
        while let Some(slot) = self.slots.get_mut(i) {
            if slot.0 == key {
                slot.1 += n;
                return false;
            }
            if slot.0 == K::default() {
                break;
            }
            i = (i + 1) & mask;
        }
        self.insert(key, n)
    }

    /// Adds `n` to `key`'s count, probing from its home; returns true if
    /// the key was new.
    #[inline(never)]
    fn insert(&mut self, key: K, n: u64) -> bool {
        if over_load(self.len, self.slots.len()) {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let slot = &mut self.slots[i];
            if slot.0 == key {
                slot.1 += n;
                return false;
            }
            if slot.0 == K::default() {
                *slot = (key, n);
                self.len += 1;
                return true;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let capacity = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, empty_slots(capacity, (K::default(), 0)));
        self.shift = 64 - capacity.trailing_zeros();
        let mask = capacity - 1;
        for slot in old.into_iter().filter(|s| s.0 != K::default()) {
            let mut i = self.home(slot.0);
            while self.slots[i].0 != K::default() {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot;
        }
    }

    /// Hands every (key, count) to `f` and empties the table, keeping its memory.
    fn drain(&mut self, f: &mut impl FnMut(&[u8], u64)) {
        for (key, n) in self.pending.take() {
            self.insert(key, n);
        }
        let mut bytes = [0u8; 16];
        for slot in self.slots.iter_mut().filter(|s| s.0 != K::default()) {
            let len = slot.0.unpack(&mut bytes);
            f(&bytes[..len], slot.1);
            *slot = (K::default(), 0);
        }
        self.len = 0;
    }
}

/// The table of keys that cannot be packed: their bytes back to back in an
/// arena (no allocation per key), each slot holding a key's hash, place and
/// count.
#[derive(Default)]
struct ArenaTable {
    /// Power-of-two length (or empty).
    slots: Vec<ArenaSlot>,
    arena: Vec<u8>,
    len: usize,
}

#[derive(Clone, Copy)]
struct ArenaSlot {
    hash: u64,
    count: u64,
    offset: usize,
    /// [`UNUSED`] for an unused slot.
    key_len: usize,
}

const UNUSED: usize = usize::MAX;

impl ArenaSlot {
    const UNUSED: ArenaSlot = ArenaSlot { hash: 0, count: 0, offset: 0, key_len: UNUSED };
}

impl ArenaTable {
    fn hash(key: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut hasher = rustc_hash::FxHasher::default();
        hasher.write(key);
        hasher.write_usize(key.len());
        hasher.finish().wrapping_mul(K1)
    }

    fn add(&mut self, key: &[u8], n: u64) -> bool {
        if over_load(self.len, self.slots.len()) {
            self.grow();
        }
        let hash = Self::hash(key);
        let mask = self.slots.len() - 1;
        let mut i = (hash >> 32) as usize & mask;
        loop {
            let slot = &mut self.slots[i];
            if slot.key_len == UNUSED {
                let offset = self.arena.len();
                self.arena.extend_from_slice(key);
                *slot = ArenaSlot { hash, count: n, offset, key_len: key.len() };
                self.len += 1;
                return true;
            }
            if slot.hash == hash && slot.key_len == key.len() && &self.arena[slot.offset..][..key.len()] == key {
                slot.count += n;
                return false;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let capacity = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, empty_slots(capacity, ArenaSlot::UNUSED));
        let mask = capacity - 1;
        for slot in old.into_iter().filter(|s| s.key_len != UNUSED) {
            let mut i = (slot.hash >> 32) as usize & mask;
            while self.slots[i].key_len != UNUSED {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot;
        }
    }

    fn drain(&mut self, f: &mut impl FnMut(&[u8], u64)) {
        for slot in self.slots.iter_mut().filter(|s| s.key_len != UNUSED) {
            f(&self.arena[slot.offset..][..slot.key_len], slot.count);
            *slot = ArenaSlot::UNUSED;
        }
        self.arena.clear();
        self.len = 0;
    }
}

/// `capacity` unused slots. A table of millions of keys is tens of MiB that
/// the probes hit at random: in 4 KiB pages that is a TLB miss and, the
/// first time, a page fault per probe of a new page. So before the slots
/// are first written, the kernel is asked to back them with 2 MiB pages.
fn empty_slots<T: Clone>(capacity: usize, unused: T) -> Vec<T> {
    let mut slots = Vec::with_capacity(capacity);
    advise_huge_pages(slots.as_ptr() as usize, capacity * std::mem::size_of::<T>());
    slots.resize(capacity, unused);
    slots
}

/// Asks for transparent huge pages on the 2 MiB-aligned part of
/// `start..start + len`, if it has any (a hint: refused or unsupported is fine).
fn advise_huge_pages(start: usize, len: usize) {
    const HUGE_PAGE: usize = 2 << 20;
    let begin = start.next_multiple_of(HUGE_PAGE);
    let end = (start + len) / HUGE_PAGE * HUGE_PAGE;
    #[cfg(target_os = "linux")]
    if end > begin {
        // SAFETY: the range lies inside the allocation just made, and
        // MADV_HUGEPAGE changes no contents.
        unsafe { libc::madvise(begin as *mut libc::c_void, end - begin, libc::MADV_HUGEPAGE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (begin, end);
}

thread_local! {
    /// A drained table kept for the next map call on this thread, so that a
    /// task does not regrow, and page-fault in again, what the previous task
    /// grew (tens of MiB for a large vocabulary).
    static SPARE: Cell<Option<CountTable>> = const { Cell::new(None) };
}

impl CountTable {
    /// This thread's spare table, or a new one.
    pub(crate) fn take_spare() -> CountTable {
        SPARE.with(Cell::take).unwrap_or_default()
    }

    /// Keeps this (drained) table for the next [`take_spare`](CountTable::take_spare) on this thread.
    pub(crate) fn keep_as_spare(self) {
        debug_assert_eq!(self.len(), 0, "only a drained table is kept");
        SPARE.with(|spare| spare.set(Some(self)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_table_survives_growth_and_reuse() {
        let mut table = CountTable::default();
        for round in 0..2 {
            for i in 0..5000u64 {
                table.add(format!("key{}", i % 3000).as_bytes(), i);
            }
            table.add(b"", 7);
            // Long keys (arena), keys with zero bytes, and a 16/17-byte pair.
            let long = "a-key-much-longer-than-sixteen-bytes".as_bytes();
            table.add(long, 1);
            table.add(long, 1);
            table.add(b"x\0", 1);
            table.add(b"x", 1);
            table.add(b"0123456789abcdef", 1);
            table.add(b"0123456789abcdef0", 1);
            let mut seen = std::collections::BTreeMap::new();
            table.drain(|k, n| assert!(seen.insert(k.to_vec(), n).is_none(), "key emitted twice"));
            assert_eq!(seen.len(), 3006, "round {round}");
            assert_eq!(seen[&b"a-key-much-longer-than-sixteen-bytes".to_vec()], 2);
            assert_eq!((seen[&b"x\0".to_vec()], seen[&b"x".to_vec()]), (1, 1), "padding is not a key byte");
            assert_eq!(seen[&b"0123456789abcdef".to_vec()], 1);
            assert_eq!(seen[&b"0123456789abcdef0".to_vec()], 1);
            assert_eq!(seen[&b"key0".to_vec()], 3000, "0 + 3000");
            assert_eq!(seen[&b"key2999".to_vec()], 2999);
            assert_eq!(seen[&b"".to_vec()], 7);
            assert_eq!(table.len(), 0);
        }
    }

    #[test]
    fn packed_keys_are_zero_padded_and_unpack_to_themselves() {
        let bytes: Vec<u8> = (1..=20).collect();
        for len in 0..=16 {
            let mut padded = [0u8; 16];
            padded[..len].copy_from_slice(&bytes[..len]);
            let lo = u64::from_le_bytes(padded[..8].try_into().unwrap());
            let hi = u64::from_le_bytes(padded[8..].try_into().unwrap());
            assert_eq!(load_partial(&bytes[..len.min(8)]), lo, "length {len}");
            let mut out = [0u8; 16];
            if (1..=8).contains(&len) {
                assert_eq!(lo.unpack(&mut out), len);
            } else if len > 8 {
                assert_eq!(load_partial(&bytes[8..len]), hi, "length {len}");
                assert_eq!([lo, hi].unpack(&mut out), len);
            }
        }
    }

    #[test]
    fn keys_packed_from_a_text_window_equal_keys_packed_alone() {
        let text = b"0123456789abcdefghij\xff\x00";
        for start in 0..text.len() {
            for len in 0..=(text.len() - start) {
                let mut from_text = CountTable::default();
                from_text.add_from(text, start, len, 1);
                let mut alone = CountTable::default();
                alone.add(&text[start..start + len], 1);
                let (mut a, mut b) = (Vec::new(), Vec::new());
                from_text.drain(|k, n| a.push((k.to_vec(), n)));
                alone.drain(|k, n| b.push((k.to_vec(), n)));
                assert_eq!(a, b, "start {start}, length {len}");
                assert_eq!(a, [(text[start..start + len].to_vec(), 1)]);
            }
        }
    }

    #[test]
    fn small_keys_of_any_bytes_are_told_apart() {
        // Every length the small table takes, with bytes that look like
        // padding (0) or like a length byte (1..7), and their neighbours.
        let mut table = CountTable::default();
        let mut expected = std::collections::BTreeMap::new();
        for len in 0..=8usize {
            for fill in [0u8, 1, 7, 0x61, 0xff] {
                for last in [0u8, 1, 0x62, 0xff] {
                    let mut key = vec![fill; len];
                    if let Some(end) = key.last_mut() {
                        *end = last;
                    }
                    table.add(&key, 2);
                    *expected.entry(key).or_insert(0u64) += 2;
                }
            }
        }
        let mut seen = std::collections::BTreeMap::new();
        table.drain(|k, n| assert!(seen.insert(k.to_vec(), n).is_none(), "key {k:?} emitted twice"));
        assert_eq!(seen, expected);
    }

    #[test]
    fn pipelined_counts_equal_direct_counts_across_growth() {
        // Enough distinct keys to pass PIPELINE_FROM_BYTES in both packed
        // tables and grow several times while keys are queued; every key
        // counted (i % 7) + 1 times.
        let mut table = CountTable::default();
        let mut expected = std::collections::BTreeMap::new();
        for round in 0..7u64 {
            for i in 0..300_000u64 {
                if round <= i % 7 {
                    // 2 to 7 bytes (the short table) and 14 (the medium one).
                    let key = if i % 2 == 0 { format!("k{i}") } else { format!("medium-{i:07}") };
                    table.add(key.as_bytes(), 1);
                    *expected.entry(key.into_bytes()).or_insert(0u64) += 1;
                }
            }
        }
        assert!(table.short.slots.len() * 16 >= PIPELINE_FROM_BYTES && table.medium.slots.len() * 24 >= PIPELINE_FROM_BYTES);
        let mut seen = std::collections::BTreeMap::new();
        table.drain(|k, n| assert!(seen.insert(k.to_vec(), n).is_none(), "key emitted twice"));
        assert_eq!(seen, expected);
        assert_eq!(table.len(), 0);
    }
}
