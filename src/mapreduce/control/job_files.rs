//! What the coordinator serves to workers that do not share its
//! filesystem (see [`crate::files`]): the lines of an input split, read
//! from the input file by the same rule a map uses, and raw byte ranges of
//! an input (for an app's constructor), after checking the file is as it
//! was when the job was planned.

use crate::files::{Catalog, FileRange, FileRequest};
use crate::inputs::check_unchanged;
use crate::rpc::{InputFile, InputSplit};
use crate::split::owned_range;

/// The coordinator's catalog: the job's inputs, by index.
pub struct JobFiles {
    inputs: Vec<InputFile>,
}

impl JobFiles {
    /// Serves `inputs`.
    pub fn new(inputs: Vec<InputFile>) -> JobFiles {
        JobFiles { inputs }
    }
}

impl Catalog for JobFiles {
    fn resolve(&self, request: &FileRequest) -> Result<FileRange, String> {
        match *request {
            FileRequest::InputSplit { input, start, end } => {
                let file = self.inputs.get(input as usize).ok_or_else(|| format!("the job has no input number {input}"))?;
                let split = InputSplit { file: file.clone(), start, end: (end != u64::MAX).then_some(end) };
                let (begin, end) = owned_range(&split).map_err(|e| format!("input {}: {e}", file.name))?;
                Ok(FileRange { path: file.path.clone(), offset: begin, len: end - begin })
            }
            FileRequest::InputRange { input, offset, len } => {
                let file = self.inputs.get(input as usize).ok_or_else(|| format!("the job has no input number {input}"))?;
                let meta = std::fs::metadata(&file.path).map_err(|e| format!("input {}: {e}", file.name))?;
                check_unchanged(file, &meta).map_err(|e| format!("input {}: {e}", file.name))?;
                let offset = offset.min(meta.len());
                Ok(FileRange { path: file.path.clone(), offset, len: len.min(meta.len() - offset) })
            }
            FileRequest::AttemptOutput { .. } | FileRequest::Plugin => Err("the coordinator serves only the job's inputs".into()),
        }
    }
}
