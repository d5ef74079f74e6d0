//! The single-process reference run: the oracle the tests compare against.
//!
//! Deliberately simple and independent of the distributed data path: map
//! every input in order, sort all pairs by key (stably, so values keep their
//! emission order), reduce each key, and write one output file. It shares
//! only the app boundary ([`crate::plugin`]) and the output line format
//! ([`crate::output`]) with the framework.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::app::{OutputFormat, Params, VecValues};
use crate::counters::{count_lines, Counters, UserCounters};
use crate::output::{AtomicFile, OutputCompression};
use crate::plugin::{AppFailure, Plugin};
use crate::rpc::{app_context, InputFile};

/// Why the reference run failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named by their messages
pub enum SequentialError {
    /// An input could not be read.
    #[error("cannot read input {}: {source}", .path.display())]
    Input { path: PathBuf, source: std::io::Error },
    /// The app failed on an input or a key.
    #[error("{what}: {failure}")]
    App { what: String, failure: AppFailure },
    /// The output could not be written.
    #[error("writing {}: {source}", .path.display())]
    Output { path: PathBuf, source: std::io::Error },
}

/// What a reference run did.
#[derive(Debug, Clone)]
pub struct SequentialRun {
    /// The output file, `mr-out-0`.
    pub output: PathBuf,
    /// Seconds spent mapping every input.
    pub map_secs: f64,
    /// Seconds spent sorting, reducing and writing the output.
    pub reduce_secs: f64,
    /// The built-in counters and the app's, as a job counts them; with no
    /// shuffle, the intermediate and reduce-input bytes are 0, and map
    /// output is counted per whole file rather than per split.
    pub counters: Counters,
}

/// The size of `input` as stored, and its text: its bytes, unpacked if it
/// is compressed.
fn read_input(input: &InputFile) -> std::io::Result<(u64, Vec<u8>)> {
    let mut bytes = Vec::new();
    crate::input_store::store_for(&input.path).read_range(input, 0..input.size, &mut bytes)?;
    match crate::codec::Codec::of(&input.path) {
        None => Ok((bytes.len() as u64, bytes)),
        Some(codec) => Ok((bytes.len() as u64, crate::codec::decompress_all(codec, &bytes[..])?)),
    }
}

/// A map-only job's reference (`mr-sequential --reduces 0`): maps each of
/// `inputs` in order and writes its pairs, as emitted, in the app's output
/// format, to `mr-out-I` for input I, as a map-only job whose every input
/// is one split writes them, compressed as `compression` says. Returns the
/// output files.
pub fn run_sequential_map_only(
    plugin: &Plugin,
    inputs: &[InputFile],
    params: Params,
    output_dir: &Path,
    compression: OutputCompression,
) -> Result<Vec<PathBuf>, SequentialError> {
    let capabilities = plugin
        .init(&app_context(params, inputs, 0))
        .map_err(|failure| SequentialError::App { what: "the app's constructor".to_string(), failure })?;
    let counters = UserCounters::default();
    let mut outputs = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        let (_, contents) = read_input(input).map_err(|source| SequentialError::Input { path: input.path.clone(), source })?;
        let path = output_dir.join(compression.output_file_name(index as u32));
        let mut output =
            AtomicFile::create_compressed(&path, compression).map_err(|source| SequentialError::Output { path: path.clone(), source })?;
        let mut written: std::io::Result<()> = Ok(());
        let mut emit = |key: &[u8], value: &[u8]| {
            if written.is_ok() {
                written = output.write_reduce_output(capabilities.output, key, value);
            }
        };
        let app_err = |failure| SequentialError::App { what: format!("map of {}", input.name), failure };
        plugin.start_task(true, index as u32, &counters).map_err(app_err)?;
        plugin.map(&input.name, &contents, 0, &mut emit, &counters).map_err(app_err)?;
        plugin.finish_map(&mut emit, &counters).map_err(app_err)?;
        written.and_then(|()| output.commit().map(|_| ())).map_err(|source| SequentialError::Output { path: path.clone(), source })?;
        outputs.push(path);
    }
    Ok(outputs)
}

/// Runs the app over `inputs` with `params` and writes `mr-out-0` into
/// `output_dir` (`mr-out-0.gz` or `.zst` when `compression` says so). The
/// app is made for a job with one reduce partition; its combiner and
/// partitioner are not used.
pub fn run_sequential(
    plugin: &Plugin,
    inputs: &[InputFile],
    params: Params,
    output_dir: &Path,
    compression: OutputCompression,
) -> Result<SequentialRun, SequentialError> {
    let started = Instant::now();
    let capabilities = plugin
        .init(&app_context(params, inputs, 1))
        .map_err(|failure| SequentialError::App { what: "the app's constructor".to_string(), failure })?;
    let counters = UserCounters::default();
    let mut totals = Counters::default();
    // Pairs live back to back in one arena; `pairs` holds (offset, key length, value length).
    let mut arena = Vec::new();
    let mut pairs: Vec<(usize, usize, usize)> = Vec::new();
    let mut emit = |key: &[u8], value: &[u8]| {
        pairs.push((arena.len(), key.len(), value.len()));
        arena.extend_from_slice(key);
        arena.extend_from_slice(value);
    };
    for (index, input) in inputs.iter().enumerate() {
        let (stored_bytes, contents) = read_input(input).map_err(|source| SequentialError::Input { path: input.path.clone(), source })?;
        totals.map_input_records += count_lines(&contents);
        totals.map_input_bytes += stored_bytes;
        let app_err = |failure| SequentialError::App { what: format!("map of {}", input.name), failure };
        plugin.start_task(true, index as u32, &counters).map_err(app_err)?;
        plugin.map(&input.name, &contents, 0, &mut emit, &counters).map_err(app_err)?;
        plugin.finish_map(&mut emit, &counters).map_err(app_err)?;
    }
    let key = |&(offset, key_len, _): &(usize, usize, usize)| &arena[offset..offset + key_len];
    let value = |&(offset, key_len, value_len): &(usize, usize, usize)| arena[offset + key_len..offset + key_len + value_len].to_vec();
    totals.map_output_records = pairs.len() as u64;
    totals.map_output_bytes = arena.len() as u64;
    let mapped = Instant::now();
    pairs.sort_by(|a, b| key(a).cmp(key(b)));

    let path = output_dir.join(compression.output_file_name(0));
    let output_err = |source| SequentialError::Output { path: path.clone(), source };
    let mut output = AtomicFile::create_compressed(&path, compression).map_err(output_err)?;
    let mut result = Vec::new();
    let reduce_err = |what: String| move |failure| SequentialError::App { what, failure };
    plugin.start_task(false, 0, &counters).map_err(reduce_err("the reduce task".to_string()))?;
    for group in pairs.chunk_by(|a, b| key(a) == key(b)) {
        let k = key(&group[0]);
        let mut values = VecValues::new(group.iter().map(value));
        result.clear();
        plugin.reduce(k, &mut values, &mut result, &counters).map_err(reduce_err(format!("reduce of key {}", String::from_utf8_lossy(k))))?;
        output.write_reduce_output(capabilities.output, k, &result).map_err(output_err)?;
        totals.reduce_input_groups += 1;
    }
    result.clear();
    plugin.finish_reduce(&mut result, &counters).map_err(reduce_err("the end of the reduce task".to_string()))?;
    output.write_reduce_output(OutputFormat::Raw, &[], &result).map_err(output_err)?;
    totals.reduce_input_records = pairs.len() as u64;
    totals.user = counters.take();
    let written = output.commit().map_err(output_err)?;
    (totals.output_records, totals.output_bytes) = (written.lines, written.bytes);
    let (map_secs, reduce_secs) = ((mapped - started).as_secs_f64(), mapped.elapsed().as_secs_f64());
    Ok(SequentialRun { output: path, map_secs, reduce_secs, counters: totals })
}
