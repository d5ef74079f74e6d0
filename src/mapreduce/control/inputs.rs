//! Turning the input arguments of `mr-master` and `mr-sequential` into the
//! job's input files.
//!
//! Each argument is a file or a directory. A directory is walked recursively
//! in sorted order, and each regular file found is named by the directory
//! argument joined with its relative path. As in Hadoop, files and
//! directories found in a walk whose names start with `.` or `_` are skipped
//! (editor droppings, `_SUCCESS` markers); a file named explicitly is always
//! used. Every file is opened once here, so an unreadable input is reported
//! before any work starts, and paths are made absolute against the current
//! directory, so workers running elsewhere read the same files.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::rpc::InputFile;

/// An input argument that cannot be used.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named by their messages
pub enum InputError {
    /// The file or directory cannot be read.
    #[error("input {}: {source}", .path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    /// A walk of a directory failed.
    #[error("input directory {}: {source}", .path.display())]
    Walk { path: PathBuf, source: walkdir::Error },
    /// Neither a regular file nor a directory (a socket, a FIFO, ...).
    #[error("input {}: not a regular file or directory", .path.display())]
    NotAFile { path: PathBuf },
}

/// Resolves input arguments to input files, in argument order.
pub fn resolve_inputs(args: &[PathBuf]) -> Result<Vec<InputFile>, InputError> {
    let mut inputs = Vec::new();
    for arg in args {
        let metadata = std::fs::metadata(arg).map_err(|source| InputError::Unreadable { path: arg.clone(), source })?;
        if metadata.is_dir() {
            walk_directory(arg, &mut inputs)?;
        } else if metadata.is_file() {
            inputs.push(checked_input(arg, arg)?);
        } else {
            return Err(InputError::NotAFile { path: arg.clone() });
        }
    }
    Ok(inputs)
}

fn walk_directory(dir: &Path, inputs: &mut Vec<InputFile>) -> Result<(), InputError> {
    let hidden =
        |entry: &walkdir::DirEntry| entry.depth() > 0 && entry.file_name().to_str().is_some_and(|n| n.starts_with('.') || n.starts_with('_'));
    let walk = walkdir::WalkDir::new(dir).follow_links(true).sort_by_file_name().into_iter().filter_entry(|e| !hidden(e));
    for entry in walk {
        let entry = entry.map_err(|source| InputError::Walk { path: dir.to_owned(), source })?;
        if entry.file_type().is_file() {
            let relative = entry.path().strip_prefix(dir).expect("walk stays under its root");
            inputs.push(checked_input(&dir.join(relative), entry.path())?);
        }
    }
    Ok(())
}

/// An input named `name`, checked readable by opening `path`.
fn checked_input(name: &Path, path: &Path) -> Result<InputFile, InputError> {
    let unreadable = |source| InputError::Unreadable { path: name.to_owned(), source };
    let metadata = File::open(path).and_then(|f| f.metadata()).map_err(unreadable)?;
    Ok(InputFile {
        name: name.to_string_lossy().into_owned(),
        path: std::path::absolute(path).map_err(unreadable)?,
        size: metadata.len(),
        modified: metadata.modified().ok(),
    })
}

/// Checks that `input`, whose file now has `metadata`, still has the size
/// and modification time it had when the job was planned. The error names
/// what changed; it is meant to fail the attempt that reads the file.
pub fn check_unchanged(input: &InputFile, metadata: &std::fs::Metadata) -> io::Result<()> {
    let now = metadata.len();
    if now != input.size {
        return Err(io::Error::other(format!("changed since the job was planned: {} bytes then, {now} now", input.size)));
    }
    if let (Some(then), Ok(now)) = (input.modified, metadata.modified()) {
        if then != now {
            return Err(io::Error::other("changed since the job was planned: modified again (same size)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_walked_sorted_and_named_by_the_argument() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("in");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(root.join("_logs")).unwrap();
        for name in ["b.txt", "a.txt", "sub/c.txt", ".hidden", "_SUCCESS", "_logs/x"] {
            std::fs::write(root.join(name), "x").unwrap();
        }
        let explicit = dir.path().join(".explicit");
        std::fs::write(&explicit, "x").unwrap();
        let inputs = resolve_inputs(&[root.clone(), explicit.clone()]).unwrap();
        let names: Vec<_> = inputs.iter().map(|i| i.name.clone()).collect();
        let expected: Vec<_> = ["a.txt", "b.txt", "sub/c.txt"]
            .iter()
            .map(|n| root.join(n).to_string_lossy().into_owned())
            .chain([explicit.to_string_lossy().into_owned()])
            .collect();
        assert_eq!(names, expected);
        assert!(inputs.iter().all(|i| i.path.is_absolute()));
    }

    #[test]
    fn a_missing_input_is_named_in_the_error() {
        let err = resolve_inputs(&[PathBuf::from("/no/such/input.txt")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/no/such/input.txt") && text.contains("No such file"), "{text}");
    }
}
