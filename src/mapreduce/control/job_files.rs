//! What the coordinator serves to workers that do not share its
//! filesystem (see [`crate::files`]): the lines of an input split, read
//! from the input file by the same rule a map uses, and raw byte ranges of
//! an input (for an app's constructor), after checking the file is as it
//! was when the job was planned; the app plugin (`mr-master --app`); and
//! the files shipped with the job (`--files`).

use std::path::PathBuf;

use crate::files::{Catalog, FileRange, FileRequest};
use crate::inputs::check_unchanged;
use crate::rpc::{InputFile, InputSplit, ShippedFile};
use crate::split::owned_range;

/// The coordinator's catalog: the job's inputs, by index, the app, and
/// the shipped files, by index.
pub struct JobFiles {
    inputs: Vec<InputFile>,
    app: Option<PathBuf>,
    shipped: Vec<(PathBuf, ShippedFile)>,
}

impl JobFiles {
    /// Serves `inputs`, the app plugin at `app` if there is one, and the
    /// `shipped` files.
    pub fn new(inputs: Vec<InputFile>, app: Option<PathBuf>, shipped: Vec<(PathBuf, ShippedFile)>) -> JobFiles {
        JobFiles { inputs, app, shipped }
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
            FileRequest::Plugin { .. } => {
                let path = self.app.clone().ok_or("the job names no app (mr-master --app)")?;
                let len = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?.len();
                Ok(FileRange { path, offset: 0, len })
            }
            FileRequest::Shipped { index, .. } => {
                let (path, file) = self.shipped.get(index as usize).ok_or_else(|| format!("the job ships no file number {index}"))?;
                let len = std::fs::metadata(path).map_err(|e| format!("shipped file {}: {e}", path.display()))?.len();
                if len != file.size {
                    return Err(format!("shipped file {} changed since the job was planned: {} bytes then, {len} now", path.display(), file.size));
                }
                Ok(FileRange { path: path.clone(), offset: 0, len })
            }
            FileRequest::AttemptOutput { .. } => Err("the coordinator serves no attempt's output".into()),
        }
    }
}
