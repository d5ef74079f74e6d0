//! The app API: what a MapReduce app author implements.
//!
//! An app is ordinary Rust in its own crate: a type implementing [`App`],
//! exported with [`export_app!`](crate::export_app), built as a `cdylib`.
//! `mr-worker` loads it at run time through the C ABI in [`crate::abi`]; the
//! app never sees that boundary. Keys, values and inputs are bytes, because
//! inputs need not be UTF-8; [`crate::text`] has helpers for text apps.
//!
//! ```
//! use mapreduce::{App, AppResult, Emitter, MapInput, Values};
//!
//! #[derive(Default)]
//! pub struct LineCount;
//!
//! impl App for LineCount {
//!     fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
//!         let lines = input.contents.split(|&b| b == b'\n').count();
//!         emit.emit(input.filename.as_bytes(), lines.to_string().as_bytes());
//!         Ok(())
//!     }
//!     fn reduce(&self, _key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
//!         let mut total = 0u64;
//!         while let Some(v) = values.next() {
//!             total += std::str::from_utf8(v)?.parse::<u64>()?;
//!         }
//!         out.extend_from_slice(total.to_string().as_bytes());
//!         Ok(())
//!     }
//! }
//! // In the app crate: mapreduce::export_app!(LineCount);
//! ```

/// The error an app returns from `map` or `reduce`; anything that implements
/// `std::error::Error` converts into it with `?`, and so does a `&str` or
/// `String` via `.into()`.
pub type AppError = Box<dyn std::error::Error + Send + Sync>;

/// What `map` and `reduce` return. An `Err` fails the task attempt; the
/// coordinator re-runs the task and stops the job after repeated failures.
pub type AppResult = Result<(), AppError>;

/// A MapReduce application. One instance serves every task of a worker
/// process (made once per job, with `Default` or the constructor given to
/// [`export_app!`](crate::export_app)), so it must be `Sync`; per-task state
/// belongs in locals.
///
/// Only `map` and `reduce` are required; the other methods have defaults
/// that an app overrides to opt in.
pub trait App: Send + Sync + 'static {
    /// Called once per map task with the task's input. Emit any number of
    /// key/value pairs; the framework partitions them by key.
    fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult;

    /// Called once per distinct key of a reduce partition, in key order, with
    /// every value emitted for that key. Write the output value to `out`
    /// (it arrives empty); with the default [`OutputFormat::KeyValue`] the
    /// framework writes the line `<key> <value>`.
    fn reduce(&self, key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult;

    /// True if the app has a combiner (see [`combine`](App::combine)).
    fn has_combiner(&self) -> bool {
        false
    }

    /// Folds some values of one key into one value, on the map side, before
    /// they are shuffled: the reduce (and further combines) then see the
    /// combined value in place of those values. Called on sorted map output
    /// before it is written and again when merging spills, zero or more times
    /// per key, so it must be associative and its output must be a valid
    /// input to itself and to `reduce` (word count's combiner is a sum). Only called if
    /// [`has_combiner`](App::has_combiner) is true.
    fn combine(&self, _key: &[u8], _values: &mut Values<'_>, _out: &mut Vec<u8>) -> AppResult {
        Err("this app declares no combiner".into())
    }

    /// True if the app chooses partitions itself (see [`partition`](App::partition)).
    fn has_partitioner(&self) -> bool {
        false
    }

    /// The reduce partition of `key`, in `0..partitions`. The default is a
    /// hash ([`crate::partition::partition_of`]); an app that needs ordered
    /// output across files (a sort) partitions by key ranges. Must give the
    /// same answer on every worker. Only called if
    /// [`has_partitioner`](App::has_partitioner) is true.
    fn partition(&self, key: &[u8], partitions: u32) -> u32 {
        crate::partition::partition_of(key, partitions)
    }

    /// How reduce output becomes output lines.
    fn output_format(&self) -> OutputFormat {
        OutputFormat::KeyValue
    }
}

/// How the framework writes each reduce call's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// One line per key: `<key> <value>\n` (the MIT lab's format).
    KeyValue,
    /// The reduce output verbatim: the app writes whole lines itself (zero
    /// or more per key), e.g. a sort writing each input line once per
    /// occurrence.
    Raw,
}

/// Parameters of a job, from `mr-master --param KEY=VALUE`, so that a job
/// is configured in one place and every worker's app sees the same values.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    pairs: std::collections::BTreeMap<String, String>,
}

impl Params {
    /// Parameters from (key, value) pairs; a later pair replaces an earlier one.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Params { pairs: pairs.into_iter().collect() }
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.get(key).map(String::as_str)
    }

    /// The value of `key`, or an error naming it.
    pub fn require(&self, key: &str) -> Result<&str, AppError> {
        self.get(key).ok_or_else(|| format!("missing job parameter '{key}' (give it with mr-master --param {key}=VALUE)").into())
    }

    /// Every parameter, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// What an app's constructor knows about its job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobContext {
    /// The job's parameters.
    pub params: Params,
    /// The job's input files: (name as given, absolute path), in order.
    pub inputs: Vec<(String, std::path::PathBuf)>,
    /// Number of reduce partitions.
    pub reduces: u32,
}

/// The input of one map task.
#[derive(Debug, Clone, Copy)]
pub struct MapInput<'a> {
    /// The input file's name as given to `mr-master` (for a file found in a
    /// directory argument: that argument joined with its relative path).
    pub filename: &'a str,
    /// The bytes to map (the whole file, or the lines of one split of it),
    /// not necessarily UTF-8.
    pub contents: &'a [u8],
    /// Where `contents` starts in the file: 0 unless the file was split.
    pub offset: u64,
}

/// Receives the pairs a map task emits.
pub struct Emitter<'a> {
    sink: &'a mut dyn FnMut(&[u8], &[u8]),
    /// Counts added with [`count`](Emitter::count), not yet emitted.
    counts: CountTable,
}

/// Keys whose counts an [`Emitter`] holds before it emits them: bounds its
/// memory (about 100 bytes a key) whatever the input.
pub const MAX_COUNTED_KEYS: usize = 1 << 20;

/// The table behind [`Emitter::count`]: open addressing with linear
/// probing, built for the hot loop of counting apps. A key of up to 16 bytes
/// (nearly every word) lives in its 32-byte slot as two zero-padded
/// integers, so a lookup compares integers and touches one cache line; a
/// longer key lives in an arena (no allocation per key).
#[derive(Default)]
struct CountTable {
    /// Power-of-two length (or empty); at most three quarters full, so that
    /// a typical vocabulary's table stays in the CPU's cache.
    slots: Vec<CountSlot>,
    /// Keys longer than [`INLINE_KEY`] bytes, back to back.
    arena: Vec<u8>,
    len: usize,
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

    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn add(&mut self, key: &[u8], n: u64) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let packed = pack(key);
        let short = key.len() <= INLINE_KEY;
        let mask = self.slots.len() - 1;
        let mut i = (Self::hash(key.len(), packed, key) >> 32) as usize & mask;
        loop {
            let slot = &mut self.slots[i];
            if slot.key_len == EMPTY {
                let offset = if short {
                    0
                } else {
                    let offset = self.arena.len();
                    self.arena.extend_from_slice(key);
                    u32::try_from(offset).expect("the arena is emptied before 4 GiB of long keys")
                };
                let inline = if short { packed } else { [0, 0] };
                *slot = CountSlot { count: n, inline, key_len: key.len() as u32, offset };
                self.len += 1;
                return;
            }
            if slot.key_len as usize == key.len()
                && if short { slot.inline == packed } else { &self.arena[slot.offset as usize..][..key.len()] == key }
            {
                slot.count += n;
                return;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let capacity = (self.slots.len() * 2).max(1024);
        let old = std::mem::replace(&mut self.slots, vec![CountSlot::UNUSED; capacity]);
        let mask = capacity - 1;
        for slot in old.into_iter().filter(|s| s.key_len != EMPTY) {
            let len = slot.key_len as usize;
            let long_key = if len > INLINE_KEY { &self.arena[slot.offset as usize..][..len] } else { &[][..] };
            let mut i = (Self::hash(len, slot.inline, long_key) >> 32) as usize & mask;
            while self.slots[i].key_len != EMPTY {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot;
        }
    }

    /// Hands every (key, count) to `f` and empties the table, keeping its memory.
    fn drain(&mut self, mut f: impl FnMut(&[u8], u64)) {
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

impl<'a> Emitter<'a> {
    /// Wraps a closure that receives each emitted pair. The framework builds
    /// emitters; apps only need this to unit-test their `map` in-process
    /// (counts reach the closure when the emitter is dropped).
    pub fn new(sink: &'a mut dyn FnMut(&[u8], &[u8])) -> Self {
        Emitter { sink, counts: CountTable::default() }
    }

    /// Emits one intermediate pair.
    pub fn emit(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        (self.sink)(key.as_ref(), value.as_ref())
    }

    /// Adds `n` to `key`'s count: the fast path for counting apps. Counts
    /// are summed in a hash table inside the map task and emitted as pairs
    /// `(key, decimal sum)` when the task's map returns (or when the table
    /// holds [`MAX_COUNTED_KEYS`] keys), instead of one pair per call, which
    /// spares the shuffle from sorting and combining them. Use it only if the
    /// app's combiner and reduce sum decimal values, so that one pair
    /// `(key, "3")` means the same as three pairs `(key, "1")`.
    pub fn count(&mut self, key: impl AsRef<[u8]>, n: u64) {
        if self.counts.len() >= MAX_COUNTED_KEYS {
            self.flush_counts();
        }
        self.counts.add(key.as_ref(), n);
    }

    /// Emits every count held so far.
    fn flush_counts(&mut self) {
        let mut digits = [0u8; 20];
        let sink = &mut self.sink;
        self.counts.drain(|key, total| sink(key, format_u64(&mut digits, total)));
    }
}

impl Drop for Emitter<'_> {
    fn drop(&mut self) {
        self.flush_counts();
    }
}

/// `n` in decimal, written into the end of `buffer`.
fn format_u64(buffer: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buffer.len();
    loop {
        i -= 1;
        buffer[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buffer[i..];
        }
    }
}

/// A source of values for one key; implemented by the framework's merge.
pub trait ValueSource {
    /// The next value, or `None` once every value of the key was returned.
    fn next_value(&mut self) -> Option<&[u8]>;
}

/// The values of one key, streamed: a key may have more values than fit in
/// memory, so they are not collected unless the app asks.
pub struct Values<'a> {
    source: &'a mut dyn ValueSource,
}

impl<'a> Values<'a> {
    /// Wraps a value source. The framework builds these; apps only need this
    /// to unit-test their `reduce` in-process (a `Vec<Vec<u8>>` iterator
    /// works as a source via [`VecValues`]).
    pub fn new(source: &'a mut dyn ValueSource) -> Self {
        Values { source }
    }

    /// The next value, borrowed until the following call.
    #[allow(clippy::should_implement_trait)] // a lending iterator cannot be `Iterator`
    pub fn next(&mut self) -> Option<&[u8]> {
        self.source.next_value()
    }

    /// Consumes the rest of the values and returns how many there were.
    pub fn count(&mut self) -> u64 {
        let mut n = 0;
        while self.next().is_some() {
            n += 1;
        }
        n
    }

    /// Collects the rest of the values (only for keys known to be small).
    pub fn to_vecs(&mut self) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(v) = self.next() {
            all.push(v.to_vec());
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_summed_and_emitted_as_decimals_on_drop() {
        let mut pairs = Vec::new();
        {
            let mut sink = |k: &[u8], v: &[u8]| pairs.push((k.to_vec(), v.to_vec()));
            let mut emit = Emitter::new(&mut sink);
            emit.count("a", 1);
            emit.count("b", 7);
            emit.count("a", 2);
            emit.emit("c", "x");
        }
        pairs.sort();
        assert_eq!(pairs, [(b"a".to_vec(), b"3".to_vec()), (b"b".to_vec(), b"7".to_vec()), (b"c".to_vec(), b"x".to_vec())]);
    }

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
    fn decimals_are_right_at_the_edges() {
        let mut buffer = [0u8; 20];
        for n in [0, 9, 10, 1234567890, u64::MAX] {
            assert_eq!(format_u64(&mut buffer, n), n.to_string().as_bytes());
        }
    }
}

/// A [`ValueSource`] over owned values, for tests and the sequential runner.
pub struct VecValues<I> {
    values: I,
    current: Vec<u8>,
}

impl<I: Iterator<Item = Vec<u8>>> VecValues<I> {
    /// Serves the values of `values` in order.
    pub fn new(values: impl IntoIterator<IntoIter = I>) -> Self {
        VecValues { values: values.into_iter(), current: Vec::new() }
    }
}

impl<I: Iterator<Item = Vec<u8>>> ValueSource for VecValues<I> {
    fn next_value(&mut self) -> Option<&[u8]> {
        self.current = self.values.next()?;
        Some(&self.current)
    }
}
