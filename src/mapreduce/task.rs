//! Running one task attempt on a worker: the synchronous data path.
//!
//! [`run_map`] reads an input, calls the app's map, and writes the sorted
//! runs ([`crate::shuffle`]); [`run_reduce`] merges a partition's runs
//! ([`crate::merge`]), calls the app's reduce per key, and writes the staged
//! output file that the coordinator commits. The worker loop
//! ([`crate::worker`]) runs these on a blocking thread and reports the result.

use std::io;
use std::path::PathBuf;

use crate::merge::{MergeError, RunMerger};
use crate::output::AtomicFile;
use crate::plugin::{AppFailure, Plugin};
use crate::rpc::{MapTask, ReduceTask};
use crate::runfile::RunError;
use crate::shuffle::{open_run, MapOutputBuffer, MapOutputLocation};

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named by their messages
pub enum TaskError {
    /// The map input could not be read.
    #[error("cannot read input {}: {source}", .path.display())]
    Input { path: PathBuf, source: io::Error },
    /// The app's map or reduce returned an error or panicked.
    #[error(transparent)]
    App(#[from] AppFailure),
    /// Writing this map attempt's runs failed.
    #[error("writing map output: {0}")]
    MapOutput(RunError),
    /// A run of map task `map_task` could not be read: that map must be re-run.
    #[error("reading the output of map task {map_task}: {source}")]
    MapOutputLost { map_task: u32, source: RunError },
    /// Writing the reduce output failed.
    #[error("writing output {}: {source}", .path.display())]
    Output { path: PathBuf, source: io::Error },
}

impl From<MergeError> for TaskError {
    fn from(e: MergeError) -> Self {
        TaskError::MapOutputLost { map_task: e.label, source: e.source }
    }
}

/// Runs one map attempt; returns its runs, one per non-empty partition.
pub fn run_map(plugin: &Plugin, task: &MapTask) -> Result<Vec<(u32, MapOutputLocation)>, TaskError> {
    let path = &task.input.path;
    let contents = std::fs::read(path).map_err(|source| TaskError::Input { path: path.clone(), source })?;
    let mut buffer = MapOutputBuffer::new(task.reduces);
    plugin.map(&task.input.name, &contents, &mut |key, value| buffer.push(key, value))?;
    drop(contents);
    buffer.write_runs(&task.job_dir, task.index, task.attempt).map_err(TaskError::MapOutput)
}

/// Runs one reduce attempt, leaving its output at `task.staged_output`.
pub fn run_reduce(plugin: &Plugin, task: &ReduceTask) -> Result<(), TaskError> {
    let mut readers = Vec::with_capacity(task.runs.len());
    for (map_task, location) in &task.runs {
        let reader = open_run(location).map_err(|source| TaskError::MapOutputLost { map_task: *map_task, source })?;
        readers.push((*map_task, reader));
    }
    let mut merger = RunMerger::new(readers)?;
    let path = &task.staged_output;
    let output_err = |source| TaskError::Output { path: path.clone(), source };
    let mut output = AtomicFile::create(path).map_err(output_err)?;
    let (mut key, mut value) = (Vec::new(), Vec::new());
    while let Some(next) = merger.next_key()? {
        // The merger lends out the key and the values; the app needs both.
        key.clear();
        key.extend_from_slice(next);
        value.clear();
        let mut values = merger.values();
        let result = plugin.reduce(&key, &mut values, &mut value);
        // A read error cuts the values short, so it outranks what the app made of them.
        if let Some(e) = values.error {
            return Err(e.into());
        }
        result?;
        output.write_record(&key, &value).map_err(output_err)?;
    }
    output.commit().map_err(output_err)?;
    Ok(())
}
