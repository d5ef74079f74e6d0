//! Running one task attempt on a worker: the synchronous data path.
//!
//! [`TaskRunner::run_map`] reads an input, calls the app's map, and writes
//! the sorted runs ([`crate::shuffle`]), or in a map-only job the staged
//! output file, as a reduce does; [`TaskRunner::run_reduce`] merges a
//! partition's runs ([`crate::merge`]), calls the app's reduce per key, and
//! writes the staged output file that the coordinator commits. A slot's task
//! process ([`crate::task_host`]) runs these on its main thread; the worker
//! ([`crate::worker`]) reports the result.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::app::{OutputFormat, ValueSource};
use crate::codec::{for_each_piece, Codec, PieceError, MAX_LINE_FACTOR};
use crate::counters::{Counters, UserCounters};
use crate::fan_in::{copy_merged, open_with_bounded_fan_in, Scratch, SCRATCH_LABEL};
use crate::input_store::{open_unchanged, store_for, RangeReader};
use crate::map_output::{stored_size, MapOutputLocation};
use crate::memory_budget::{self, SlotMemory};
use crate::merge::{MergeError, RunMerger};
use crate::output::{AtomicFile, OutputCompression};
use crate::partition::Partitions;
use crate::plugin::{AppFailure, Capabilities, Plugin};
use crate::rpc::{JobSpec, MapTask, ReduceTask};
use crate::runfile::{Compression, RunError};
use crate::shuffle::{release_spare_buffers, Combiner, MapOutputConfig, MapOutputWriter, ShuffleError};
use crate::skipping::{for_each_line, RecordCursor, SkipPlan};
use crate::split::{map_split, read_split_in_pieces, read_split_into, split_span, MappedSplit};
use crate::storage::{FetchProgress, LocalRun, WorkerStorage};

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named by their messages
pub enum TaskError {
    /// The map input could not be read, or changed since the job was planned.
    #[error("input {}: {source}", .path.display())]
    Input { path: PathBuf, source: io::Error },
    /// The app's map, reduce, combiner or partitioner returned an error or panicked.
    #[error(transparent)]
    App(#[from] AppFailure),
    /// The app's constructor refused the job (e.g. a missing parameter).
    #[error("the app could not start for this job: {0}")]
    AppInit(AppFailure),
    /// Writing this map attempt's runs failed.
    #[error("writing map output: {0}")]
    MapOutput(RunError),
    /// A run of map task `map_task` could not be read: that map must be re-run.
    #[error("reading the output of map task {map_task}: {source}")]
    MapOutputLost { map_task: u32, source: RunError },
    /// Writing or reading back a reduce's scratch run (a merge pass) failed.
    #[error("merging map output through a scratch run: {0}")]
    Scratch(RunError),
    /// Writing the reduce output failed.
    #[error("writing output {}: {source}", .path.display())]
    Output { path: PathBuf, source: io::Error },
    /// The file that tracks the record in the app's hands could not be made.
    #[error("record cursor {}: {source}", .path.display())]
    Cursor { path: PathBuf, source: io::Error },
    /// The coordinator said the attempt no longer matters.
    #[error("stopped: the coordinator gave the attempt up, or another attempt finished the task")]
    Cancelled,
}

impl From<ShuffleError> for TaskError {
    fn from(e: ShuffleError) -> Self {
        match e {
            ShuffleError::Run(e) => TaskError::MapOutput(e),
            ShuffleError::Combine(e) => TaskError::App(e),
        }
    }
}

impl From<MergeError> for TaskError {
    fn from(e: MergeError) -> Self {
        match e.label {
            SCRATCH_LABEL => TaskError::Scratch(e.source),
            map_task => TaskError::MapOutputLost { map_task, source: e.source },
        }
    }
}

/// How far a running attempt has got, in units of work that only grow:
/// records emitted, keys and values reduced, counter updates, phases
/// finished. The attempt's thread ticks it, its task process sends it to
/// the worker ([`crate::task_protocol`]), and the worker's heartbeat reads it,
/// so the coordinator can tell a slow attempt that is moving from a stuck one.
///
/// It also carries the coordinator's word that the attempt no longer
/// matters ([`TaskProgress::cancel`]): it was given up, or another attempt
/// of its task won. The attempt stops at its next check (between fetches,
/// keys, records) rather than run to its end for nothing.
#[derive(Debug, Clone, Default)]
pub struct TaskProgress {
    units: Arc<AtomicU64>,
    cancelled: Arc<AtomicBool>,
}

impl TaskProgress {
    /// One more unit of work done.
    #[inline]
    pub fn tick(&self) {
        // One writer (the attempt's thread): a plain load and store, no
        // locked add on the hot path.
        self.units.store(self.units.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// Raises the count to `units` (reported by the attempt's task
    /// process); a lower number, from a confused process, changes nothing.
    pub fn raise_to(&self, units: u64) {
        self.units.fetch_max(units, Ordering::Relaxed);
    }

    /// Units done so far.
    pub fn units(&self) -> u64 {
        self.units.load(Ordering::Relaxed)
    }

    /// The count itself, for the app's counters to tick (from this
    /// attempt's thread only).
    pub fn shared(&self) -> Arc<AtomicU64> {
        self.units.clone()
    }

    /// Asks the attempt to stop: the coordinator no longer counts on it.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether the attempt was asked to stop.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// What a reduce's fetches tick and check.
    fn fetch_progress(&self) -> FetchProgress<'_> {
        FetchProgress { units: &self.units, cancelled: &self.cancelled }
    }

    /// [`TaskError::Cancelled`] if the attempt was asked to stop.
    fn check(&self) -> Result<(), TaskError> {
        if self.is_cancelled() {
            Err(TaskError::Cancelled)
        } else {
            Ok(())
        }
    }
}

thread_local! {
    /// The last map input's memory, kept for the next map task on this
    /// thread: allocating and first touching a fresh buffer for every task
    /// costs page faults and zeroing on every page (~5% of a word count).
    static INPUT_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// How much of a compressed input's text one call of the app's map gets
/// (whole lines, so a little more): the map's memory for it, however large
/// the file unpacks.
const UNPACKED_PIECE_BYTES: usize = 64 << 20;

/// Largest input buffer kept for reuse; a larger one (a big split) is freed
/// before the map's output is merged, keeping the task's peak memory down.
const REUSED_INPUT_MAX: usize = 32 << 20;

/// Runs attempts for one job with one app; shared by a worker's task slots.
pub struct TaskRunner {
    plugin: Arc<Plugin>,
    map_buffer_bytes: usize,
    /// The job allows the app's combiner (it may still have none).
    combine: bool,
    compression: Compression,
    /// How the job's outputs are compressed.
    output_compression: OutputCompression,
    /// Why the app could not be made for this job, if it could not.
    init_error: Option<AppFailure>,
    /// Where attempts' files go, and how runs and inputs are fetched.
    storage: Arc<WorkerStorage>,
    /// What an attempt may buffer: its slot's share of the worker's memory.
    memory: SlotMemory,
}

impl TaskRunner {
    /// Makes the app for `job` (calls its constructor once), for attempts
    /// that buffer within `memory`. A constructor failure is kept and
    /// reported as the failure of every task.
    pub fn new(plugin: Arc<Plugin>, job: &JobSpec, storage: Arc<WorkerStorage>, memory: SlotMemory) -> TaskRunner {
        let read_input = |input, offset, len| storage.read_input(input, offset, len);
        let init_error = plugin.init_with_inputs(&job.app_context(), &read_input).err();
        if let Some(e) = &init_error {
            tracing::error!("the app refused this job: {e}");
        }
        let map_buffer_bytes = usize::try_from(job.map_buffer_bytes.min(memory.map_buffer_bytes)).unwrap_or(usize::MAX);
        TaskRunner {
            plugin,
            map_buffer_bytes,
            combine: job.combine,
            compression: job.compression,
            output_compression: job.output_compression,
            init_error,
            storage,
            memory,
        }
    }

    /// Where attempts' files go.
    pub fn storage(&self) -> &WorkerStorage {
        &self.storage
    }

    /// What the app can do, or why every task fails.
    fn capabilities(&self) -> Result<Capabilities, TaskError> {
        match &self.init_error {
            Some(e) => Err(TaskError::AppInit(e.clone())),
            None => Ok(self.plugin.capabilities()),
        }
    }

    /// Runs one map attempt; returns its runs, one per non-empty partition,
    /// and the attempt's counters. The task's files go where the storage
    /// puts them ([`WorkerStorage::adapt_map`]).
    pub fn run_map(&self, task: &MapTask, progress: &TaskProgress) -> Result<(Vec<(u32, MapOutputLocation)>, Counters), TaskError> {
        let capabilities = self.capabilities()?;
        let plugin = &*self.plugin;
        let split = &task.input;
        let input_err = |source| TaskError::Input { path: split.file.path.clone(), source };
        // A file this machine does not have comes from the coordinator.
        // An object on object storage is read where it is, by ranges. A
        // split larger than the slot's memory holds is read in pieces.
        let store = store_for(&split.file.path);
        let in_pieces = split_span(split) > self.memory.input_bytes;
        let mapped = match (store.maps_in_place(), in_pieces) {
            (true, false) => map_split(split),
            // Read below; here only whether it can be read at all.
            (true, true) => open_unchanged(&split.file).map(|_| None),
            (false, _) => Ok(None),
        };
        let (mapped, served_input) = match mapped {
            Ok(mapped) => (mapped, None),
            Err(e) => match self.storage.served_input(&split.file.path, &e) {
                Some(input) => (None, Some(input)),
                None => return Err(input_err(e)),
            },
        };
        let fetched = served_input.is_some();
        let mut buffer = Vec::new();
        // The input held whole, and where in the file it starts; `None`
        // for one read in pieces.
        let whole = match (&mapped, served_input) {
            (Some(mapped), _) => Some((mapped.offset(), mapped.bytes())),
            (None, Some(input)) => {
                buffer = INPUT_BUFFER.take();
                let offset = self
                    .storage
                    .fetch_input(input, split, &mut buffer)
                    .map_err(|e| input_err(io::Error::other(format!("not readable here, and fetching it from the coordinator failed: {e}"))))?;
                Some((offset, &buffer[..]))
            }
            // Within a budget, also a local split whose edge line was too
            // long to map: read whole, that line would be held however
            // long. (An object's split that fits is read whole, in one
            // request rather than one per piece.)
            (None, None) if in_pieces || (self.memory.is_bounded() && store.maps_in_place()) => None,
            (None, None) => {
                buffer = INPUT_BUFFER.take();
                Some((read_split_into(split, &mut buffer).map_err(input_err)?, &buffer[..]))
            }
        };
        let mut counters = Counters::default();
        let config = MapOutputConfig {
            reduces: task.reduces,
            buffer_bytes: self.map_buffer_bytes,
            dir: task.job_dir.clone(),
            map: task.index,
            attempt: task.attempt,
            compression: self.compression,
            fan_in: self.memory.fan_in,
        };
        let user_counters = UserCounters::reporting_to(progress.shared());
        let app_combiner = AppCombiner { plugin, counters: &user_counters };
        let combiner = (self.combine && capabilities.combiner).then_some(&app_combiner as &dyn Combiner);
        let mut output = match &task.staged_output {
            None => MapSink::Runs { writer: MapOutputWriter::new(config, combiner), partitions: Partitions::new(task.reduces) },
            Some(path) => MapSink::Output {
                file: self
                    .storage
                    .create_output(task.index, task.attempt, path, self.output_compression)
                    .map_err(|source| TaskError::Output { path: path.clone(), source })?,
                format: capabilities.output,
                path: path.clone(),
            },
        };
        // The emit callback cannot return an error to the app, so the first
        // one is kept and ends the attempt once map returns.
        let mut failure: Option<TaskError> = None;
        let (mut records, mut bytes) = (0u64, 0u64);
        let emit = &mut |key: &[u8], value: &[u8]| {
            progress.tick();
            records += 1;
            bytes += (key.len() + value.len()) as u64;
            // Checked once per 4096 records: the app's map call cannot be
            // stopped, but its output need not be sorted and written.
            if records % 4096 == 0 && failure.is_none() && progress.is_cancelled() {
                failure = Some(TaskError::Cancelled);
            }
            if failure.is_none() {
                failure = output.push(plugin, key, value).err();
            }
        };
        plugin.start_task(true, task.index, &user_counters)?;
        let (mut input_records, mut skipped) = (0u64, 0u64);
        let mut map_piece = |piece: &[u8], at: u64| -> Result<(), TaskError> {
            // A piece of a compressed file shows progress however rarely
            // the app emits, and a given-up attempt stops between pieces.
            progress.check()?;
            progress.tick();
            input_records += crate::counters::count_lines(piece);
            match &task.skip {
                None => plugin.map(&split.file.name, piece, at, &mut *emit, &user_counters)?,
                Some(plan) => skipped += map_line_by_line(plugin, &split.file.name, (piece, at), plan, &mut *emit, &user_counters)?,
            }
            Ok(())
        };
        let stopped = |stopped: PieceError<TaskError>| stopped.into_io().map_or_else(|e| e, input_err);
        let (file_piece, unpacked_piece) = (self.memory.input_piece_bytes(), UNPACKED_PIECE_BYTES.min(self.memory.input_piece_bytes()));
        let longest_line = self.memory.longest_line_bytes().unwrap_or(unpacked_piece.saturating_mul(MAX_LINE_FACTOR));
        // Pieces go in the buffer a whole input would have used.
        let mut pieces = if whole.is_none() { INPUT_BUFFER.take() } else { Vec::new() };
        // Bytes read from the input file (stored, compressed or not), as
        // Hadoop counts them: what the phase's progress is measured in.
        let input_bytes = match (whole, Codec::of(&split.file.path)) {
            (Some((offset, contents)), None) => {
                map_piece(contents, offset)?;
                contents.len() as u64
            }
            (Some((_, contents)), Some(codec)) => {
                let mut text = codec.decoder(contents).map_err(input_err)?;
                for_each_piece(&mut *text, unpacked_piece, longest_line, &mut pieces, |at, piece| map_piece(piece, at)).map_err(stopped)?;
                contents.len() as u64
            }
            (None, None) => read_split_in_pieces(split, file_piece, longest_line, &mut pieces, |at, piece| map_piece(piece, at)).map_err(stopped)?,
            (None, Some(codec)) => {
                let mut compressed = RangeReader::new(store, &split.file, 0..split.file.size, file_piece);
                let mut text = codec.decoder(&mut compressed).map_err(input_err)?;
                for_each_piece(&mut *text, unpacked_piece, longest_line, &mut pieces, |at, piece| map_piece(piece, at)).map_err(stopped)?;
                split.file.size
            }
        };
        (counters.map_input_bytes, counters.map_input_records, counters.skipped_records) = (input_bytes, input_records, skipped);
        plugin.finish_map(emit, &user_counters)?;
        if mapped.as_ref().is_some_and(MappedSplit::changed) {
            return Err(input_err(io::Error::other("the file shrank while the map read it")));
        }
        // Changed in place while the map read it (same or larger size)?
        // (The coordinator checks a file it serves.)
        if !fetched {
            store.check_unchanged(&split.file).map_err(input_err)?;
        }
        if let Some(e) = failure {
            return Err(e);
        }
        drop(mapped);
        progress.tick();
        // A buffer taken for reading goes back for the next task; large
        // ones give their memory back before the output is merged.
        for kept in [buffer, pieces] {
            if (1..=REUSED_INPUT_MAX).contains(&kept.capacity()) {
                INPUT_BUFFER.set(kept);
            }
        }
        (counters.map_output_records, counters.map_output_bytes) = (records, bytes);
        let runs = match output {
            MapSink::Runs { writer, .. } => self.storage.serve_map_output(task.attempt, writer.finish()?),
            MapSink::Output { file, path, .. } => {
                let written = file.commit().map_err(|source| TaskError::Output { path, source })?;
                (counters.output_records, counters.output_bytes) = (written.lines, written.bytes);
                Vec::new()
            }
        };
        for (_, location) in &runs {
            counters.intermediate_bytes += stored_size(location);
        }
        counters.user = user_counters.take();
        Ok((runs, counters))
    }

    /// Runs one reduce attempt, leaving its output at `task.staged_output`
    /// in the job directory (see [`WorkerStorage::create_reduce_output`]);
    /// returns the attempt's counters.
    pub fn run_reduce(&self, task: &ReduceTask, progress: &TaskProgress) -> Result<Counters, TaskError> {
        let capabilities = self.capabilities()?;
        // Nothing the maps on this thread kept for reuse is needed here:
        // the reduce's buffers take its place within the slot's memory.
        release_spare_buffers();
        drop(INPUT_BUFFER.take());
        memory_budget::release_freed();
        let mut counters = Counters { reduce_input_bytes: task.runs.iter().map(|(_, location)| stored_size(location)).sum(), ..Counters::default() };
        progress.tick();
        let (runs, _fetched) = self.storage.localize(task.attempt, &task.runs, progress.fetch_progress()).map_err(|lost| match lost {
            Some((map_task, source)) => TaskError::MapOutputLost { map_task, source },
            None => TaskError::Cancelled,
        })?;
        let scratch_prefix = self.storage.scratch_prefix(task);
        let scratch = Scratch { prefix: &scratch_prefix, compression: self.compression, fan_in: self.memory.fan_in };
        let open = |map_task, run: &&LocalRun| {
            progress.tick();
            run.open().map_err(|source| TaskError::MapOutputLost { map_task, source })
        };
        let copy = |readers, writer: &mut _| {
            progress.tick();
            Ok(copy_merged(readers, writer)?)
        };
        let readers = open_with_bounded_fan_in(runs.iter().map(|(m, location)| (*m, location)).collect(), &scratch, open, copy)?;
        let mut merger = RunMerger::new(readers)?;
        let path = &task.staged_output;
        let output_err = |source| TaskError::Output { path: path.clone(), source };
        let mut output = self.storage.create_reduce_output(task, self.output_compression).map_err(output_err)?;
        let user_counters = UserCounters::reporting_to(progress.shared());
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let mut cursor = task.skip.as_ref().map(open_cursor).transpose()?;
        let mut key_number = 0u64;
        self.plugin.start_task(false, task.partition, &user_counters)?;
        while let Some(next) = merger.next_key()? {
            progress.tick();
            progress.check()?;
            key_number += 1;
            if task.skip.as_ref().is_some_and(|plan| plan.skips(key_number - 1)) {
                counters.skipped_records += 1;
                continue;
            }
            counters.reduce_input_groups += 1;
            // The merger lends out the key and the values; the app needs both.
            key.clear();
            key.extend_from_slice(next);
            value.clear();
            let mut values = merger.values();
            if let Some(cursor) = &mut cursor {
                cursor.enter(key_number - 1, &key);
            }
            let result = self.plugin.reduce(&key, &mut TickingValues { values: &mut values, progress }, &mut value, &user_counters);
            // A read error cuts the values short, so it outranks what the
            // app made of them, and is not the key's fault.
            if let Some(e) = values.error {
                cursor.as_mut().map(RecordCursor::leave);
                return Err(e.into());
            }
            // The cursor keeps showing a key whose reduce failed: it is blamed.
            result?;
            cursor.as_mut().map(RecordCursor::leave);
            output.write_reduce_output(capabilities.output, &key, &value).map_err(output_err)?;
        }
        value.clear();
        self.plugin.finish_reduce(&mut value, &user_counters)?;
        output.write_reduce_output(OutputFormat::Raw, &[], &value).map_err(output_err)?;
        counters.reduce_input_records = merger.records_read();
        let written = output.commit().map_err(output_err)?;
        (counters.output_records, counters.output_bytes) = (written.lines, written.bytes);
        counters.user = user_counters.take();
        Ok(counters)
    }
}

/// Where a map attempt's pairs go: sorted runs for the reduces, or, in a
/// map-only job, the job's output, in the order they were emitted.
enum MapSink<'c> {
    Runs { writer: MapOutputWriter<'c>, partitions: Partitions },
    Output { file: AtomicFile, format: OutputFormat, path: PathBuf },
}

impl MapSink<'_> {
    fn push(&mut self, plugin: &Plugin, key: &[u8], value: &[u8]) -> Result<(), TaskError> {
        match self {
            MapSink::Runs { writer, partitions } => {
                let partition = plugin.partition(key, partitions)?;
                Ok(writer.push(partition, key, value)?)
            }
            MapSink::Output { file, format, path } => {
                file.write_reduce_output(*format, key, value).map_err(|source| TaskError::Output { path: path.clone(), source })
            }
        }
    }
}

/// Makes the cursor a tracking attempt keeps.
fn open_cursor(plan: &SkipPlan) -> Result<RecordCursor, TaskError> {
    RecordCursor::create(&plan.cursor).map_err(|source| TaskError::Cursor { path: plan.cursor.clone(), source })
}

/// Maps `contents` (which start at byte `offset` of file `name`) one line
/// at a time, each under the cursor, skipping the plan's lines; returns how
/// many were skipped. A line whose map fails is left on the cursor.
fn map_line_by_line(
    plugin: &Plugin,
    name: &str,
    (contents, offset): (&[u8], u64),
    plan: &SkipPlan,
    emit: &mut dyn FnMut(&[u8], &[u8]),
    counters: &UserCounters,
) -> Result<u64, TaskError> {
    let mut cursor = open_cursor(plan)?;
    let mut skipped = 0;
    for_each_line(contents, offset, |line, at| {
        if plan.skips(at) {
            skipped += 1;
            return Ok(());
        }
        cursor.enter(at, line);
        plugin.map(name, line, at, emit, counters)?;
        cursor.leave();
        Ok::<(), TaskError>(())
    })?;
    Ok(skipped)
}

/// A key's values as the app reads them, each one a tick of progress (a
/// key may have millions).
struct TickingValues<'a, V> {
    values: &'a mut V,
    progress: &'a TaskProgress,
}

impl<V: ValueSource> ValueSource for TickingValues<'_, V> {
    fn next_value(&mut self) -> Option<&[u8]> {
        self.progress.tick();
        self.values.next_value()
    }
}

/// The app's combiner, counting into the attempt's user counters.
struct AppCombiner<'a> {
    plugin: &'a Plugin,
    counters: &'a UserCounters,
}

impl Combiner for AppCombiner<'_> {
    fn combine(&self, key: &[u8], values: &mut dyn ValueSource, out: &mut Vec<u8>) -> Result<(), AppFailure> {
        self.plugin.combine(key, values, out, self.counters)
    }
}
