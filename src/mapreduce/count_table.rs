//! The hash table behind [`Emitter::count`](crate::Emitter::count): sums
//! counts per key inside a map task, in the hot loop of counting apps.
//!
//! Two open-addressing tables with linear probing. A key of 1 to 7 bytes
//! (most words of most languages) is one integer, its bytes and its length,
//! in a 16-byte slot of the small table: four keys to a cache line, so a
//! book's whole vocabulary fits the second-level cache. Any other key of
//! up to 16 bytes lives in a 32-byte slot of the main table as two
//! zero-padded integers; a longer key lives in an arena (no allocation per
//! key). Either way a lookup compares integers and touches one cache line.
//!
//! Once a table outgrows the second-level cache, a lookup is a cache miss
//! whose latency the CPU cannot hide, since each word's probe waits for the
//! load. So from [`PIPELINE_FROM_BYTES`] on, `add` only hashes the key,
//! prefetches its slot and queues it; the probe happens [`PIPELINE`] keys
//! later, when the slot has arrived, so that many misses are in flight at
//! once. Order does not matter to a sum, and `drain` empties the queue first.

use std::cell::Cell;

use crate::cpu::prefetch;

/// Counts per key; see the module docs.
#[derive(Default)]
pub(crate) struct CountTable {
    /// Power-of-two length (or empty); at most half full, so that most keys
    /// sit in their home slot (the case `add_short` handles inline).
    slots: Vec<CountSlot>,
    /// Keys longer than [`INLINE_KEY`] bytes, back to back.
    arena: Vec<u8>,
    len: usize,
    /// Keys of this table hashed and prefetched but not yet probed.
    pending: Pipeline<Pending>,
    /// Keys of 1 to 7 bytes.
    small: SmallTable,
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

/// Keys in flight between their prefetch and their probe.
const PIPELINE: usize = 16;

/// Table size from which lookups are pipelined: twice the second-level
/// cache here. A smaller table (a book's vocabulary) mostly hits that
/// cache, and the queue would cost more than the misses it hides.
const PIPELINE_FROM_BYTES: usize = 2 << 20;

/// [`PIPELINE_FROM_BYTES`] in slots of type `T`.
const fn pipeline_from<T>() -> usize {
    PIPELINE_FROM_BYTES / std::mem::size_of::<T>()
}

/// For each key length up to 16: the masks that keep that many bytes of
/// two little-endian u64 loads.
const LENGTH_MASKS: [(u64, u64); INLINE_KEY + 1] = {
    let mut masks = [(0, 0); INLINE_KEY + 1];
    let mut len = 0;
    while len <= INLINE_KEY {
        let lo = if len >= 8 { u64::MAX } else { (1u64 << (8 * len)) - 1 };
        let hi = if len >= 16 { u64::MAX } else if len <= 8 { 0 } else { (1u64 << (8 * (len - 8))) - 1 };
        masks[len] = (lo, hi);
        len += 1;
    }
    masks
};

/// A short key waiting for its probe.
#[derive(Clone, Copy, Default)]
struct Pending {
    packed: [u64; 2],
    hash: u64,
    key_len: u32,
    n: u64,
}

/// Longest key kept inside its slot.
const INLINE_KEY: usize = 16;

#[derive(Clone, Copy)]
struct CountSlot {
    count: u64,
    /// The key's bytes, zero-padded, if it is short. Padding never needs to
    /// be told apart from key bytes: lengths are compared too.
    inline: [u64; 2],
    /// [`EMPTY`] for an unused slot.
    key_len: u32,
    /// Where a long key starts in the arena.
    offset: u32,
}

const EMPTY: u32 = u32::MAX;

impl CountSlot {
    const UNUSED: CountSlot = CountSlot { count: 0, inline: [0, 0], key_len: EMPTY, offset: 0 };
}

/// Up to 8 bytes as a zero-padded little-endian integer, with loads only
/// (copying into a stack buffer first stalls the CPU on every call).
#[inline]
fn load_partial(b: &[u8]) -> u64 {
    let n = b.len();
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as u64;
    match n {
        0 => 0,
        1..=3 => b[0] as u64 | (b[n / 2] as u64) << (8 * (n / 2)) | (b[n - 1] as u64) << (8 * (n - 1)),
        4..=7 => u32_at(0) | u32_at(n - 4) << (8 * (n - 4)),
        _ => u64::from_le_bytes(b[..8].try_into().unwrap()),
    }
}

/// A key's first 16 bytes as two zero-padded integers.
#[inline]
fn pack(key: &[u8]) -> [u64; 2] {
    if key.len() <= 8 {
        [load_partial(key), 0]
    } else {
        [load_partial(&key[..8]), load_partial(&key[8..key.len().min(INLINE_KEY)])]
    }
}

impl CountTable {
    #[inline]
    fn hash(key_len: usize, packed: [u64; 2], long_key: &[u8]) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let h = if key_len <= INLINE_KEY {
            (packed[0].wrapping_mul(K) ^ packed[1]).wrapping_mul(K) ^ key_len as u64
        } else {
            use std::hash::Hasher;
            let mut hasher = rustc_hash::FxHasher::default();
            hasher.write(long_key);
            hasher.finish()
        };
        // Slots are chosen from the high bits; fold the low ones in.
        (h ^ (h >> 29)).wrapping_mul(K)
    }

    /// Keys counted, including those still queued (a queued key may turn
    /// out to be in a table already, so this may overstate by up to twice
    /// [`PIPELINE`]).
    pub(crate) fn len(&self) -> usize {
        self.len + self.pending.len + self.small.len + self.small.pending.len
    }

    /// Adds `n` to `key`'s count.
    #[inline]
    pub(crate) fn add(&mut self, key: &[u8], n: u64) {
        if key.len() > INLINE_KEY {
            let hash = Self::hash(key.len(), [0, 0], key);
            self.insert(key.len(), [0, 0], hash, key, n);
        } else {
            self.add_short(key.len(), pack(key), n);
        }
    }

    /// Adds `n` to the count of the key `text[start..start + len]`. When 16
    /// bytes can be read from `start`, the key is packed by masking those
    /// bytes to its length, with no branch on the length (which is as
    /// unpredictable as the words of a text are).
    #[inline(always)]
    pub(crate) fn add_from(&mut self, text: &[u8], start: usize, len: usize, n: u64) {
        match text.get(start..start + 16) {
            Some(window) if len <= INLINE_KEY => {
                let lo = u64::from_le_bytes(window[..8].try_into().expect("8 bytes"));
                let hi = u64::from_le_bytes(window[8..].try_into().expect("8 bytes"));
                let (lo_mask, hi_mask) = LENGTH_MASKS[len];
                self.add_short(len, [lo & lo_mask, hi & hi_mask], n);
            }
            _ => self.add(&text[start..start + len], n),
        }
    }

    /// Adds `n` to the count of a key of at most [`INLINE_KEY`] bytes,
    /// given packed. The common case, the key in its home slot, is inline;
    /// anything else (a probe, an insertion, growth, the pipeline) is not.
    #[inline(always)]
    fn add_short(&mut self, key_len: usize, packed: [u64; 2], n: u64) {
        if (1..8).contains(&key_len) {
            return self.small.add(packed[0] | (key_len as u64) << 56, n);
        }
        let hash = Self::hash(key_len, packed, &[]);
        if self.slots.len() >= pipeline_from::<CountSlot>() {
            return self.enqueue(key_len, packed, hash, n);
        }
        let home = self.slot_of(hash);
        if let Some(slot) = self.slots.get_mut(home) {
            if slot.key_len as usize == key_len && slot.inline == packed {
                slot.count += n;
                return;
            }
        }
        self.insert(key_len, packed, hash, &[], n);
    }

    /// Prefetches the key's slot and queues the key; probes for the oldest
    /// queued key once the queue is full.
    #[inline(always)]
    fn enqueue(&mut self, key_len: usize, packed: [u64; 2], hash: u64, n: u64) {
        prefetch(&self.slots[self.slot_of(hash)]);
        if let Some(oldest) = self.pending.push(Pending { packed, hash, key_len: key_len as u32, n }) {
            let home = self.slot_of(oldest.hash);
            let slot = &mut self.slots[home];
            if slot.key_len == oldest.key_len && slot.inline == oldest.packed {
                slot.count += oldest.n;
            } else {
                self.insert(oldest.key_len as usize, oldest.packed, oldest.hash, &[], oldest.n);
            }
        }
    }

    /// Probes for every queued key.
    fn flush_pending(&mut self) {
        for p in self.pending.take() {
            self.insert(p.key_len as usize, p.packed, p.hash, &[], p.n);
        }
        self.small.flush_pending();
    }

    /// The home slot of a key with this hash (out of range while the
    /// table has no slots yet).
    #[inline(always)]
    fn slot_of(&self, hash: u64) -> usize {
        (hash >> 32) as usize & self.slots.len().wrapping_sub(1)
    }

    /// Adds `n` to the key's count, or inserts it. `packed` holds a short
    /// key; `long_key` a key longer than [`INLINE_KEY`] bytes.
    #[inline(never)]
    fn insert(&mut self, key_len: usize, packed: [u64; 2], hash: u64, long_key: &[u8], n: u64) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let short = key_len <= INLINE_KEY;
        let mask = self.slots.len() - 1;
        let mut i = self.slot_of(hash);
        loop {
            let slot = &mut self.slots[i];
            if slot.key_len == EMPTY {
                let offset = if short {
                    0
                } else {
                    let offset = self.arena.len();
                    self.arena.extend_from_slice(long_key);
                    u32::try_from(offset).expect("the arena is emptied before 4 GiB of long keys")
                };
                *slot = CountSlot { count: n, inline: packed, key_len: key_len as u32, offset };
                self.len += 1;
                return;
            }
            if slot.key_len as usize == key_len
                && if short { slot.inline == packed } else { &self.arena[slot.offset as usize..][..key_len] == long_key }
            {
                slot.count += n;
                return;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let capacity = (self.slots.len() * 2).max(1024);
        let old = std::mem::replace(&mut self.slots, empty_slots(capacity, CountSlot::UNUSED));
        let mask = capacity - 1;
        for slot in old.into_iter().filter(|s| s.key_len != EMPTY) {
            let len = slot.key_len as usize;
            let long_key = if len > INLINE_KEY { &self.arena[slot.offset as usize..][..len] } else { &[][..] };
            let mut i = (Self::hash(len, slot.inline, long_key) >> 32) as usize & mask;
            debug_assert_eq!(i, self.slot_of(Self::hash(len, slot.inline, long_key)));
            while self.slots[i].key_len != EMPTY {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot;
        }
    }

    /// Hands every (key, count) to `f` and empties the table, keeping its memory.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(&[u8], u64)) {
        self.flush_pending();
        self.small.drain(&mut f);
        let mut short = [0u8; INLINE_KEY];
        for slot in self.slots.iter_mut().filter(|s| s.key_len != EMPTY) {
            let len = slot.key_len as usize;
            if len <= INLINE_KEY {
                short[..8].copy_from_slice(&slot.inline[0].to_le_bytes());
                short[8..].copy_from_slice(&slot.inline[1].to_le_bytes());
                f(&short[..len], slot.count);
            } else {
                f(&self.arena[slot.offset as usize..][..len], slot.count);
            }
            *slot = CountSlot::UNUSED;
        }
        self.arena.clear();
        self.len = 0;
    }
}

/// The table of keys of 1 to 7 bytes. Each key is one integer: its bytes,
/// little-endian, with its length in the top byte, which makes it unique
/// (whatever bytes the key holds) and never 0, the mark of an unused slot.
#[derive(Default)]
struct SmallTable {
    /// Power-of-two length (or empty); at most half full.
    slots: Vec<SmallSlot>,
    len: usize,
    /// Keys (and amounts) prefetched but not yet probed.
    pending: Pipeline<SmallSlot>,
}

#[derive(Clone, Copy, Default)]
struct SmallSlot {
    key: u64,
    count: u64,
}

impl SmallTable {
    /// The key's home slot (out of range while there are no slots). The
    /// shift folds the high bytes (the last letters, the length) into the
    /// bits the multiplication spreads into the index.
    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        ((key ^ (key >> 28)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & self.slots.len().wrapping_sub(1)
    }

    #[inline(always)]
    fn add(&mut self, key: u64, n: u64) {
        if self.slots.len() >= pipeline_from::<SmallSlot>() {
            prefetch(&self.slots[self.home(key)]);
            if let Some(oldest) = self.pending.push(SmallSlot { key, count: n }) {
                self.add_now(oldest.key, oldest.count);
            }
        } else {
            self.add_now(key, n);
        }
    }

    /// Adds at once: inline when the key is in its home slot.
    #[inline(always)]
    fn add_now(&mut self, key: u64, n: u64) {
        let home = self.home(key);
        if let Some(slot) = self.slots.get_mut(home) {
            if slot.key == key {
                slot.count += n;
                return;
            }
        }
        self.insert(key, n);
    }

    #[inline(never)]
    fn insert(&mut self, key: u64, n: u64) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let slot = &mut self.slots[i];
            if slot.key == key {
                slot.count += n;
                return;
            }
            if slot.key == 0 {
                *slot = SmallSlot { key, count: n };
                self.len += 1;
                return;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let capacity = (self.slots.len() * 2).max(1024);
        let old = std::mem::replace(&mut self.slots, empty_slots(capacity, SmallSlot::default()));
        let mask = capacity - 1;
        for slot in old.into_iter().filter(|s| s.key != 0) {
            let mut i = self.home(slot.key);
            while self.slots[i].key != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot;
        }
    }

    fn flush_pending(&mut self) {
        for p in self.pending.take() {
            self.insert(p.key, p.count);
        }
    }

    /// Hands every (key, count) to `f` and empties the table, keeping its memory.
    fn drain(&mut self, f: &mut impl FnMut(&[u8], u64)) {
        self.flush_pending();
        for slot in self.slots.iter_mut().filter(|s| s.key != 0) {
            let len = (slot.key >> 56) as usize;
            f(&slot.key.to_le_bytes()[..len], slot.count);
            *slot = SmallSlot::default();
        }
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
    fn packing_is_zero_padding_for_every_length() {
        let bytes: Vec<u8> = (1..=20).collect();
        for len in 0..=16 {
            let mut padded = [0u8; 16];
            padded[..len].copy_from_slice(&bytes[..len]);
            let want = [u64::from_le_bytes(padded[..8].try_into().unwrap()), u64::from_le_bytes(padded[8..].try_into().unwrap())];
            assert_eq!(pack(&bytes[..len]), want, "length {len}");
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
        // Enough distinct keys to pass PIPELINE_FROM_BYTES and grow several times
        // while keys are queued; every key counted (i % 7) + 1 times.
        let mut table = CountTable::default();
        let mut expected = std::collections::BTreeMap::new();
        for round in 0..7u64 {
            for i in 0..(2 * pipeline_from::<CountSlot>() as u64) {
                if round <= i % 7 {
                    // Short keys (the small table) and 8-to-16-byte ones (the main one).
                    let key = if i % 2 == 0 { format!("k{i}") } else { format!("longer-key-{i}") };
                    table.add(key.as_bytes(), 1);
                    *expected.entry(key.into_bytes()).or_insert(0u64) += 1;
                }
            }
        }
        assert!(table.slots.len() >= pipeline_from::<CountSlot>() && table.small.slots.len() >= pipeline_from::<SmallSlot>());
        let mut seen = std::collections::BTreeMap::new();
        table.drain(|k, n| assert!(seen.insert(k.to_vec(), n).is_none(), "key emitted twice"));
        assert_eq!(seen, expected);
        assert_eq!(table.len(), 0);
    }
}
