//! Streaming: MapReduce apps written in any language, as Hadoop Streaming
//! runs them. Parameters (`--param KEY=VALUE`):
//!
//! - `map=CMD` (required): a shell command (run with `sh -c`, in the
//!   directory of the files shipped with the job if it ships any, else in
//!   the worker's), started once per map task attempt. The task's
//!   input (a whole file or a split of one, whole lines; a compressed file
//!   unpacked) is its standard input, and each line it prints is a pair.
//!   Its environment names its input as Hadoop's does:
//!   `mapreduce_map_input_file` (also `map_input_file`), the input file's
//!   path; `mapreduce_map_input_start`, where in the file the task's lines
//!   begin; `mapreduce_map_input_length`, how many bytes the task reads
//!   (a compressed file is read whole: 0 and its stored size). Every
//!   command also has `mapreduce_task_partition`, the task's number.
//! - `reduce=CMD` (required unless the job has `--reduces 0`): started
//!   once per reduce task attempt; its standard input is every pair of
//!   the partition as `key SEPARATOR value` lines, sorted by key (the
//!   values of one key in a row), and what it prints is the task's output,
//!   verbatim.
//! - `combiner=CMD`: run on a map task's pairs before they are shuffled,
//!   as Hadoop's `-combiner`: it reads them sorted by key, as a reduce
//!   command does, and prints pairs, as a map command does, which are
//!   shuffled in their place. It is run once per buffer of pairs (16 MiB)
//!   and at the task's end, so it may see a key more than once per task,
//!   and its output must be a valid input to itself and to the reduce.
//! - `separator=SEP` (a tab; `\t` is read as a tab), `key_fields=N` (1):
//!   a printed line's key is the line up to its N-th separator, its value
//!   the rest after it (a line with fewer separators is all key, with an
//!   empty value), as Hadoop's `stream.map.output.field.separator` and
//!   `stream.num.map.output.key.fields`.
//! - `partition_fields=M` (all the key's fields): the reduce of a pair is
//!   chosen by the key's first M fields only, as Hadoop's
//!   `KeyFieldBasedPartitioner` with `-k1,M`; the reduce still sees keys
//!   sorted by all their fields.
//!
//! A map command's pairs are passed on as it prints them, and its lines
//! counted (`map_command_lines`): the attempt's progress while it computes.
//! Every command may write Hadoop Streaming's reporter lines on its
//! standard error: `reporter:counter:GROUP,COUNTER,AMOUNT` (the counter
//! `GROUP.COUNTER`) and `reporter:status:MESSAGE` (counted in
//! `reporter_status_lines`); both are progress.
//!
//! A command that exits with a non-zero status fails the task attempt: the
//! message names the command, its status and its last lines of standard
//! error, which also go to the worker's, each line after the task's name.
//! A command that stops reading its input early is judged by its status
//! alone. With skipping (`--skip-bad-records`), a task running again to
//! skip records feeds its map command line by line, and a bad record is
//! found only where the command fails while it is being fed.

mod command;
mod fields;

use std::cell::RefCell;
use std::collections::HashMap;

use mapreduce::{App, AppError, AppResult, Emitter, JobContext, MapInput, OutputFormat, TaskInfo, TaskKind, Values};

use command::{run_over, Report, Running, FEED_CHUNK};
use fields::Fields;

/// How often a map command that has all its input is looked at, for what
/// it printed and whether it exited.
const PRINTED_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Bytes of pairs a map task holds for its combiner before running it.
const COMBINE_BUFFER: usize = 16 << 20;

/// The streaming app: its commands and how their lines are split.
pub struct Streaming {
    map_command: String,
    reduce_command: String,
    combiner_command: Option<String>,
    fields: Fields,
    /// The stored size of each compressed input, by name: a compressed
    /// file is one map task, whose length is the whole file's.
    compressed_sizes: HashMap<String, u64>,
}

impl Streaming {
    /// Reads the parameters (see the crate's documentation).
    pub fn new(job: &JobContext) -> Result<Streaming, AppError> {
        let params = &job.params;
        let reduce_command = match (params.get("reduce"), job.reduces) {
            (Some(command), _) => command.to_owned(),
            (None, 0) => String::new(),
            (None, _) => return Err("--param reduce=CMD is needed (or --reduces 0 for a map-only job)".into()),
        };
        let compressed_sizes = job
            .inputs
            .iter()
            .zip(&job.input_sizes)
            .filter(|((_, path), _)| is_compressed(path))
            .map(|((name, _), size)| (name.clone(), *size))
            .collect();
        Ok(Streaming {
            map_command: params.require("map")?.to_owned(),
            reduce_command,
            combiner_command: params.get("combiner").map(str::to_owned),
            fields: Fields::new(params.get("separator"), params.get("key_fields"), params.get("partition_fields"))?,
            compressed_sizes,
        })
    }

    /// The map command's environment for the input `input` begins
    /// (the combiner's too).
    fn map_env(&self, task: u32, input: &MapInput<'_>) -> Vec<(&'static str, String)> {
        let (start, length) = match self.compressed_sizes.get(input.filename) {
            Some(size) => (0, *size),
            None => (input.offset, input.contents.len() as u64),
        };
        vec![
            ("mapreduce_map_input_file", input.filename.to_owned()),
            ("map_input_file", input.filename.to_owned()),
            ("mapreduce_map_input_start", start.to_string()),
            ("mapreduce_map_input_length", length.to_string()),
            ("mapreduce_task_partition", task.to_string()),
        ]
    }

    /// Hands the whole lines of `printed` to `sink` as pairs, keeping a
    /// last line without its newline in `printed` (unless `at_end`).
    fn take_lines(&self, printed: &mut Vec<u8>, at_end: bool, mut sink: impl FnMut(&[u8], &[u8])) {
        let whole = match printed.iter().rposition(|&b| b == b'\n') {
            _ if at_end => printed.len(),
            Some(newline) => newline + 1,
            None => return,
        };
        // Every line is a pair, an empty one too (an empty key and value,
        // as Hadoop Streaming reads it).
        for line in printed.get(..whole).unwrap_or_default().split_inclusive(|&b| b == b'\n') {
            let (key, value) = self.fields.split(line.strip_suffix(b"\n").unwrap_or(line));
            sink(key, value);
        }
        printed.drain(..whole);
    }
}

/// Counts the lines a map command printed (`map_command_lines`, before
/// any combiner): the attempt's progress even while a combiner holds its
/// pairs back.
fn count_printed(printed: &[u8]) {
    let lines = printed.iter().filter(|&&b| b == b'\n').count() as u64;
    if lines > 0 {
        mapreduce::counters::increment("map_command_lines", lines);
    }
}

/// Applies a command's reports: its counters are added to the app's, and
/// a status line counts in `reporter_status_lines`; either is progress.
fn apply(reports: &[Report]) {
    for report in reports {
        match report {
            Report::Counter(name, amount) => mapreduce::counters::increment(name, *amount),
            Report::Status => mapreduce::counters::increment("reporter_status_lines", 1),
        }
    }
}

/// Whether `path` names a compressed file (which the framework unpacks).
fn is_compressed(path: &std::path::Path) -> bool {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(extension.as_deref(), Some("gz" | "bz2" | "zst" | "zstd"))
}

/// A map task attempt's state on its thread.
struct Mapper {
    task: u32,
    /// The map command, once the first input has come.
    running: Option<Running>,
    /// The map command's environment, for the combiner.
    env: Vec<(&'static str, String)>,
    /// What the command printed after its last whole line.
    printed: Vec<u8>,
    /// Pairs held for the combiner, as `key SEPARATOR value` lines, with
    /// where each key ends.
    held: Held,
}

/// Pairs held for a combiner: their bytes, and each pair's (start, key
/// end, end) in them.
#[derive(Default)]
struct Held {
    bytes: Vec<u8>,
    pairs: Vec<(usize, usize, usize)>,
}

impl Held {
    fn push(&mut self, fields: &Fields, key: &[u8], value: &[u8]) {
        let start = self.bytes.len();
        fields.write_pair(key, value, &mut self.bytes);
        self.pairs.push((start, start + key.len(), self.bytes.len()));
    }

    /// The held pairs as lines sorted by key (equal keys in the order they
    /// came), emptying the buffer.
    fn sorted_lines(&mut self) -> Vec<u8> {
        let bytes = &self.bytes;
        let key = |&(start, key_end, _): &(usize, usize, usize)| bytes.get(start..key_end).unwrap_or_default();
        self.pairs.sort_by(|a, b| key(a).cmp(key(b)));
        let mut lines = Vec::with_capacity(bytes.len());
        for &(start, _, end) in &self.pairs {
            lines.extend_from_slice(bytes.get(start..end).unwrap_or_default());
        }
        self.bytes.clear();
        self.pairs.clear();
        lines
    }
}

/// What a task attempt holds between calls.
enum Task {
    Map(Mapper),
    Reduce { running: Running, lines: Vec<u8> },
}

thread_local! {
    /// Every call of a task attempt runs on the thread that started it.
    static TASK: RefCell<Option<Task>> = const { RefCell::new(None) };
}

impl Streaming {
    /// Passes the pairs in `printed` on: to `emit`, or to the combiner's
    /// buffer, running the combiner when it is full (or `at_end`).
    fn pass_on(&self, mapper: &mut Mapper, at_end: bool, emit: &mut Emitter<'_>) -> AppResult {
        let Mapper { task, printed, held, env, .. } = mapper;
        match &self.combiner_command {
            None => self.take_lines(printed, at_end, |key, value| emit.emit(key, value)),
            Some(combiner) => {
                self.take_lines(printed, at_end, |key, value| held.push(&self.fields, key, value));
                if held.bytes.len() >= COMBINE_BUFFER || (at_end && !held.pairs.is_empty()) {
                    let mut combined = run_over(combiner, env, &format!("map task {task} combiner: "), &held.sorted_lines())?;
                    self.take_lines(&mut combined, true, |key, value| emit.emit(key, value));
                }
            }
        }
        Ok(())
    }
}

impl App for Streaming {
    fn start_task(&self, task: TaskInfo) -> AppResult {
        // What an attempt that failed on this thread left goes first (its
        // command is killed as it is dropped).
        TASK.take();
        let started = match task.kind {
            TaskKind::Map => Task::Map(Mapper { task: task.index, running: None, env: Vec::new(), printed: Vec::new(), held: Held::default() }),
            TaskKind::Reduce => {
                let env = [("mapreduce_task_partition", task.index.to_string())];
                let running = Running::start(&self.reduce_command, &env, &format!("reduce task {}: ", task.index))?;
                Task::Reduce { running, lines: Vec::new() }
            }
        };
        TASK.set(Some(started));
        Ok(())
    }

    fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        TASK.with_borrow_mut(|task| {
            let Some(Task::Map(mapper)) = task else { return Err("map called outside a map task".into()) };
            if mapper.running.is_none() {
                mapper.env = self.map_env(mapper.task, input);
                let tag = format!("map task {}: ", mapper.task);
                mapper.running = Some(Running::start(&self.map_command, &mapper.env, &tag)?);
            }
            for chunk in input.contents.chunks(FEED_CHUNK) {
                let running = mapper.running.as_mut().ok_or("the map command is gone")?;
                running.feed(chunk)?;
                let before = mapper.printed.len();
                running.take_printed(&mut mapper.printed);
                count_printed(&mapper.printed[before..]);
                apply(&running.take_reports());
                self.pass_on(mapper, false, emit)?;
            }
            Ok(())
        })
    }

    fn finish_map(&self, emit: &mut Emitter<'_>) -> AppResult {
        let Some(Task::Map(mut mapper)) = TASK.take() else { return Err("no map task was started".into()) };
        if let Some(mut running) = mapper.running.take() {
            // Pairs go on as the command prints them, not only at its exit:
            // they are the attempt's progress while it computes (one that
            // reads all its input before it prints would otherwise look
            // hung for as long as it computes).
            loop {
                let before = mapper.printed.len();
                let exited = running.run_on(PRINTED_POLL, &mut mapper.printed);
                count_printed(&mapper.printed[before..]);
                apply(&running.take_reports());
                if exited {
                    break;
                }
                self.pass_on(&mut mapper, false, emit)?;
            }
            let before = mapper.printed.len();
            apply(&running.finish(&mut mapper.printed)?);
            count_printed(&mapper.printed[before..]);
        }
        self.pass_on(&mut mapper, true, emit)
    }

    fn has_partitioner(&self) -> bool {
        self.fields.partitions_by_prefix()
    }

    fn partition(&self, key: &[u8], partitions: u32) -> u32 {
        mapreduce::partition::partition_of(self.fields.partition_key(key), partitions)
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        TASK.with_borrow_mut(|task| {
            let Some(Task::Reduce { running, lines }) = task else { return Err("reduce called outside a reduce task".into()) };
            while let Some(value) = values.next() {
                self.fields.write_pair(key, value, lines);
                if lines.len() >= FEED_CHUNK {
                    running.feed(lines)?;
                    lines.clear();
                }
            }
            running.take_printed(out);
            apply(&running.take_reports());
            Ok(())
        })
    }

    fn finish_reduce(&self, out: &mut Vec<u8>) -> AppResult {
        let Some(Task::Reduce { mut running, lines }) = TASK.take() else { return Err("no reduce command was started".into()) };
        running.feed(&lines)?;
        // Its reports are its progress while it computes after its last
        // input (its output is the reduce's file, written at the end).
        while !running.run_on(PRINTED_POLL, out) {
            apply(&running.take_reports());
        }
        apply(&running.finish(out)?);
        Ok(())
    }

    fn output_format(&self) -> OutputFormat {
        OutputFormat::Raw
    }
}

mapreduce::export_app!(Streaming, Streaming::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_lines_become_pairs_an_empty_one_too_and_a_cut_line_waits_for_its_end() {
        let app = Streaming {
            map_command: String::new(),
            reduce_command: String::new(),
            combiner_command: None,
            fields: Fields::new(None, None, None).unwrap(),
            compressed_sizes: HashMap::new(),
        };
        let mut pairs = Vec::new();
        let mut printed = b"a\t1\n\nno tab\ncut".to_vec();
        app.take_lines(&mut printed, false, |k, v| pairs.push((k.to_vec(), v.to_vec())));
        assert_eq!(printed, b"cut", "the cut line waits");
        printed.extend_from_slice(b" line\t2");
        app.take_lines(&mut printed, true, |k, v| pairs.push((k.to_vec(), v.to_vec())));
        assert!(printed.is_empty());
        let expected: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"", b""), (b"no tab", b""), (b"cut line", b"2")];
        assert_eq!(pairs, expected.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect::<Vec<_>>());
    }
}
