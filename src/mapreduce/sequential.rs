//! The single-process reference run: the oracle the tests compare against.
//!
//! Deliberately simple and independent of the distributed data path: map
//! every input in order, sort all pairs by key (stably, so values keep their
//! emission order), reduce each key, and write one output file. It shares
//! only the app boundary ([`crate::plugin`]) and the output line format
//! ([`crate::output`]) with the framework.

use std::path::{Path, PathBuf};

use crate::app::{Params, VecValues};
use crate::counters::UserCounters;
use crate::output::{output_file_name, AtomicFile};
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

/// Runs the app over `inputs` with `params` and writes `mr-out-0` into
/// `output_dir`. The app is made for a job with one reduce partition; its
/// combiner and partitioner are not used.
pub fn run_sequential(plugin: &Plugin, inputs: &[InputFile], params: Params, output_dir: &Path) -> Result<PathBuf, SequentialError> {
    let capabilities = plugin
        .init(&app_context(params, inputs, 1)).map_err(|failure| SequentialError::App { what: "the app's constructor".to_string(), failure })?;
    // The app's counters are not reported by the reference run.
    let counters = UserCounters::default();
    // Pairs live back to back in one arena; `pairs` holds (offset, key length, value length).
    let mut arena = Vec::new();
    let mut pairs: Vec<(usize, usize, usize)> = Vec::new();
    for input in inputs {
        let contents = std::fs::read(&input.path)
            .map_err(|source| SequentialError::Input { path: input.path.clone(), source })?;
        plugin
            .map(
                &input.name,
                &contents,
                0,
                &mut |key, value| {
                    pairs.push((arena.len(), key.len(), value.len()));
                    arena.extend_from_slice(key);
                    arena.extend_from_slice(value);
                },
                &counters,
            )
            .map_err(|failure| SequentialError::App { what: format!("map of {}", input.name), failure })?;
    }
    let key = |&(offset, key_len, _): &(usize, usize, usize)| &arena[offset..offset + key_len];
    let value = |&(offset, key_len, value_len): &(usize, usize, usize)| {
        arena[offset + key_len..offset + key_len + value_len].to_vec()
    };
    pairs.sort_by(|a, b| key(a).cmp(key(b)));

    let path = output_dir.join(output_file_name(0));
    let output_err = |source| SequentialError::Output { path: path.clone(), source };
    let mut output = AtomicFile::create(&path).map_err(output_err)?;
    let mut result = Vec::new();
    for group in pairs.chunk_by(|a, b| key(a) == key(b)) {
        let k = key(&group[0]);
        let mut values = VecValues::new(group.iter().map(value));
        result.clear();
        plugin.reduce(k, &mut values, &mut result, &counters).map_err(|failure| SequentialError::App {
            what: format!("reduce of key {}", String::from_utf8_lossy(k)),
            failure,
        })?;
        output.write_reduce_output(capabilities.raw_output, k, &result).map_err(output_err)?;
    }
    output.commit().map_err(output_err)
}
