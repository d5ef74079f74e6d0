//! The app API: what a MapReduce app author implements.
//!
//! An app is ordinary Rust in its own crate: a type implementing [`App`],
//! exported with [`export_app!`](crate::export_app), built as a `cdylib`.
//! `mr-worker` loads it at run time through the C ABI in [`crate::abi`]; the
//! app never sees that boundary. Keys, values and inputs are bytes, because
//! inputs need not be UTF-8; [`crate::text`] has helpers for text apps.
//!
//! ```
//! # use mapreduce_app as mapreduce; // apps name this crate `mapreduce`
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
    /// Called once per map task with the task's input (for a compressed
    /// input, once per piece of its unpacked text: whole lines, 64 MiB or a
    /// little more). Emit any number of key/value pairs; the framework
    /// partitions them by key.
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

    /// Called on a worker thread before a task attempt's first `map` or
    /// `reduce` call; every call of the attempt then runs on this thread,
    /// one at a time, until `finish_map` or `finish_reduce`. An attempt that
    /// fails ends without its finish call, so per-task state kept in a
    /// thread-local is reset here.
    fn start_task(&self, _task: TaskInfo) -> AppResult {
        Ok(())
    }

    /// Called after a map task attempt's last `map` call, on the same
    /// thread: emit what the app held back (an in-map combiner's table, a
    /// helper process's last output).
    fn finish_map(&self, _emit: &mut Emitter<'_>) -> AppResult {
        Ok(())
    }

    /// Called after a reduce task attempt's last `reduce` call, on the same
    /// thread: what the app writes to `out` ends the task's output file,
    /// verbatim whatever the [`OutputFormat`] (so whole lines).
    fn finish_reduce(&self, _out: &mut Vec<u8>) -> AppResult {
        Ok(())
    }
}

/// Which task attempt [`App::start_task`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskInfo {
    /// Map or reduce.
    pub kind: TaskKind,
    /// The map task's index (its input split), or the reduce partition.
    pub index: u32,
}

/// A map task or a reduce task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Reads a split of the input.
    Map,
    /// Reduces one partition.
    Reduce,
}

/// How the framework writes each reduce call's output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// One line per key: `<key> <value>\n` (the MIT lab's format).
    #[default]
    KeyValue,
    /// One line per key: `<key>\t<value>\n` (Hadoop's text output), for
    /// keys that may contain spaces.
    KeyTabValue,
    /// The reduce output verbatim: the app writes whole lines itself (zero
    /// or more per key), e.g. a sort writing each input line once per
    /// occurrence.
    Raw,
}

/// Parameters of a job, from `mr-master --param KEY=VALUE`, so that a job
/// is configured in one place and every worker's app sees the same values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
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

/// The environment variable that names, in the process that runs an
/// app's tasks, the directory holding the files shipped with the job
/// (`--files`, as Hadoop's distributed cache): an absolute path, set only
/// for a job that ships files. See [`JobContext::files_dir`].
pub const JOB_FILES_VAR: &str = "MR_JOB_FILES";

/// What an app's constructor knows about its job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobContext {
    /// The job's parameters.
    pub params: Params,
    /// The job's input files: (name as given, absolute path), in order.
    pub inputs: Vec<(String, std::path::PathBuf)>,
    /// Number of reduce partitions; 0 for a map-only job (`--reduces 0`),
    /// whose map output is the job's output: the partitioner and the
    /// combiner are not called.
    pub reduces: u32,
    /// The size in bytes of each input when the job was planned, in the
    /// order of `inputs` (empty where nobody planned a job: a unit test).
    pub input_sizes: Vec<u64>,
}

impl JobContext {
    /// The directory holding the files shipped with the job (`--files`),
    /// by their own names, in the process that runs the app's tasks; `None`
    /// where the job ships none (or outside a task process).
    pub fn files_dir() -> Option<std::path::PathBuf> {
        std::env::var_os(JOB_FILES_VAR).map(std::path::PathBuf::from)
    }

    /// The size of input number `input` when the job was planned (or, in
    /// a unit test that gave no sizes, its size now).
    pub fn input_size(&self, input: usize) -> std::io::Result<u64> {
        match self.input_sizes.get(input) {
            Some(&size) => Ok(size),
            None => {
                let (_, path) = self.inputs.get(input).ok_or_else(|| std::io::Error::other(format!("the job has no input number {input}")))?;
                Ok(std::fs::metadata(path)?.len())
            }
        }
    }
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

impl<'a> MapInput<'a> {
    /// The records of the input, for apps that map line by line: each line
    /// without its newline (and without a `\r` before it), with the byte
    /// offset in the file where it starts, Hadoop's `TextInputFormat` key.
    /// A last line without a newline is a record too.
    ///
    /// ```
    /// # use mapreduce_app::MapInput;
    /// let input = MapInput { filename: "f", contents: b"one\r\ntwo\n\nthree", offset: 100 };
    /// let records: Vec<(u64, &[u8])> = input.lines().collect();
    /// assert_eq!(records, [(100, &b"one"[..]), (105, b"two"), (109, b""), (110, b"three")]);
    /// ```
    pub fn lines(&self) -> impl Iterator<Item = (u64, &'a [u8])> + 'a {
        let (contents, base) = (self.contents, self.offset);
        let mut start = 0;
        std::iter::from_fn(move || {
            if start >= contents.len() {
                return None;
            }
            let rest = &contents[start..];
            let (line, next) = match rest.iter().position(|&b| b == b'\n') {
                Some(end) => (&rest[..end], start + end + 1),
                None => (rest, contents.len()),
            };
            let record = (base + start as u64, line.strip_suffix(b"\r").unwrap_or(line));
            start = next;
            Some(record)
        })
    }
}

/// Receives the pairs a map task emits.
pub struct Emitter<'a> {
    sink: &'a mut dyn FnMut(&[u8], &[u8]),
    /// Counts added with [`count`](Emitter::count), not yet emitted.
    counts: CountTable,
}

use crate::count_table::CountTable;
use crate::text::WordSink;

/// Keys whose counts an [`Emitter`] holds before it emits them: bounds its
/// memory (about 100 bytes a key) whatever the input.
pub const MAX_COUNTED_KEYS: usize = 1 << 20;

/// The environment variable by which a worker with a memory budget lowers
/// [`MAX_COUNTED_KEYS`] for its task processes (a number of keys, at least
/// 1,024).
pub const COUNTED_KEYS_VAR: &str = "MR_COUNTED_KEYS";

/// The keys an [`Emitter`] holds before it emits them in this process:
/// [`MAX_COUNTED_KEYS`], or fewer where the worker says so.
fn counted_keys_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        let said = std::env::var(COUNTED_KEYS_VAR).ok().and_then(|n| n.parse::<usize>().ok());
        said.map_or(MAX_COUNTED_KEYS, |n| n.clamp(1024, MAX_COUNTED_KEYS))
    })
}

impl<'a> Emitter<'a> {
    /// Wraps a closure that receives each emitted pair. The framework builds
    /// emitters; apps only need this to unit-test their `map` in-process
    /// (counts reach the closure when the emitter is dropped).
    pub fn new(sink: &'a mut dyn FnMut(&[u8], &[u8])) -> Self {
        Emitter { sink, counts: CountTable::take_spare() }
    }

    /// Emits one intermediate pair.
    pub fn emit(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        (self.sink)(key.as_ref(), value.as_ref())
    }

    /// Adds `n` to `key`'s count: the fast path for counting apps. Counts
    /// are summed in a hash table inside the map task and emitted as pairs
    /// `(key, decimal sum)` when the task's map returns (or when the table
    /// holds [`MAX_COUNTED_KEYS`] keys, or fewer within a worker's memory
    /// budget), instead of one pair per call, which
    /// spares the shuffle from sorting and combining them. Use it only if the
    /// app's combiner and reduce sum decimal values, so that one pair
    /// `(key, "3")` means the same as three pairs `(key, "1")`.
    pub fn count(&mut self, key: impl AsRef<[u8]>, n: u64) {
        if self.counts.add(key.as_ref(), n) && self.counts.len() >= counted_keys_limit() {
            self.flush_counts();
        }
    }

    /// Counts every word of `text` ([`crate::text::for_each_word`]'s
    /// words) as `count(word, 1)` would, and returns how many there were.
    /// Faster than calling `count` per word: the table reads each word's
    /// bytes straight from `text`.
    pub fn count_words(&mut self, text: &[u8]) -> u64 {
        /// Counts each word into the table, flushing it at its limit.
        struct Counter<'e, 'a> {
            emitter: &'e mut Emitter<'a>,
            text: &'e [u8],
            words: u64,
        }
        impl WordSink for Counter<'_, '_> {
            #[inline(always)]
            fn word(&mut self, start: usize, end: usize) {
                self.words += 1;
                let Emitter { sink, counts } = &mut *self.emitter;
                // Only a new key can fill the table.
                if counts.add_from(self.text, start, end - start, 1) && counts.len() >= counted_keys_limit() {
                    flush(counts, sink);
                }
            }
        }
        let mut counter = Counter { emitter: self, text, words: 0 };
        crate::text::scan_words(text, &mut counter);
        counter.words
    }

    /// Emits every count held so far.
    fn flush_counts(&mut self) {
        flush(&mut self.counts, &mut self.sink);
    }
}

impl Drop for Emitter<'_> {
    fn drop(&mut self) {
        self.flush_counts();
        // The next map call on this thread reuses the table as grown.
        std::mem::take(&mut self.counts).keep_as_spare();
    }
}

/// Emits every count in `counts` to `sink` as `(key, decimal count)`.
fn flush(counts: &mut CountTable, sink: &mut &mut dyn FnMut(&[u8], &[u8])) {
    let mut digits = [0u8; 20];
    counts.drain(|key, total| sink(key, format_u64(&mut digits, total)));
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

    /// The distinct words "a".."zzzz" and on, in a text, `n` of them.
    fn distinct_words(n: usize) -> Vec<u8> {
        let mut text = Vec::new();
        for mut i in 0..n {
            loop {
                text.push(b'a' + (i % 26) as u8);
                i /= 26;
                if i == 0 {
                    break;
                }
            }
            text.push(b' ');
        }
        text
    }

    #[test]
    fn a_full_table_is_emitted_early_and_no_count_is_lost() {
        let words = MAX_COUNTED_KEYS + 5000;
        let text = distinct_words(words);
        for per_word in [false, true] {
            let mut pairs = std::collections::HashMap::new();
            let mut before_drop = 0;
            {
                let mut sink = |k: &[u8], v: &[u8]| {
                    let n: u64 = std::str::from_utf8(v).unwrap().parse().unwrap();
                    *pairs.entry(k.to_vec()).or_insert(0) += n;
                };
                let mut emit = Emitter::new(&mut sink);
                // Every word twice: the second pass adds to counts emitted or held.
                for _ in 0..2 {
                    if per_word {
                        crate::text::for_each_word(&text, |w| emit.count(w, 1));
                    } else {
                        assert_eq!(emit.count_words(&text), words as u64);
                    }
                }
                before_drop += emit.counts.len();
            }
            assert!(before_drop < MAX_COUNTED_KEYS, "the table was flushed when it filled (per word: {per_word})");
            assert_eq!(pairs.len(), words, "per word: {per_word}");
            assert!(pairs.values().all(|&n| n == 2), "per word: {per_word}");
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
