//! Turning the input arguments of `mr-master` and `mr-sequential` into the
//! job's input files.
//!
//! Each argument is a file, a directory or a glob pattern. A directory is
//! walked recursively in sorted order, and each regular file found is named
//! by the directory argument joined with its relative path. An argument
//! that names nothing but holds a glob character (`*`, `?`, `[`) is a
//! pattern (`**` crosses directories): what it matches, in sorted order, is
//! used as if named one by one, and a pattern that matches nothing is an
//! error, so a quoted glob works as the shell's would (and a mistyped one
//! does not silently make a smaller job). As in Hadoop, files and
//! directories found in a walk or by a pattern whose names start with `.`
//! or `_` are skipped (editor droppings, `_SUCCESS` markers); a file named
//! explicitly is always used. Every file is opened once here, so an unreadable input is reported
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
    /// A glob pattern that is not one.
    #[error("input pattern {pattern}: {source}")]
    BadPattern { pattern: String, source: glob::PatternError },
    /// A glob pattern that matches no input.
    #[error("input pattern {pattern}: matches no files")]
    NoMatch { pattern: String },
}

/// Resolves input arguments to input files, in argument order.
pub fn resolve_inputs(args: &[PathBuf]) -> Result<Vec<InputFile>, InputError> {
    let mut inputs = Vec::new();
    for arg in args {
        match std::fs::metadata(arg) {
            Err(_) if is_pattern(arg) => expand_pattern(arg, &mut inputs)?,
            Err(source) => return Err(InputError::Unreadable { path: arg.clone(), source }),
            Ok(metadata) => add_input(arg, &metadata, &mut inputs)?,
        }
    }
    Ok(inputs)
}

fn add_input(path: &Path, metadata: &std::fs::Metadata, inputs: &mut Vec<InputFile>) -> Result<(), InputError> {
    if metadata.is_dir() {
        walk_directory(path, inputs)
    } else if metadata.is_file() {
        inputs.push(checked_input(path, path)?);
        Ok(())
    } else {
        Err(InputError::NotAFile { path: path.to_owned() })
    }
}

fn is_pattern(arg: &Path) -> bool {
    arg.to_str().is_some_and(|text| text.contains(['*', '?', '[']))
}

/// Adds what `pattern` matches, sorted, leaving out hidden names (as a walk
/// does); an error if nothing is left.
fn expand_pattern(pattern: &Path, inputs: &mut Vec<InputFile>) -> Result<(), InputError> {
    let text = pattern.to_string_lossy().into_owned();
    let options = glob::MatchOptions { require_literal_leading_dot: true, ..glob::MatchOptions::new() };
    let matches = glob::glob_with(&text, options).map_err(|source| InputError::BadPattern { pattern: text.clone(), source })?;
    let before = inputs.len();
    for found in matches {
        let path = found.map_err(|e| InputError::Unreadable { path: e.path().to_owned(), source: e.into() })?;
        if is_hidden(&path) {
            continue;
        }
        let metadata = std::fs::metadata(&path).map_err(|source| InputError::Unreadable { path: path.clone(), source })?;
        add_input(&path, &metadata, inputs)?;
    }
    if inputs.len() == before {
        return Err(InputError::NoMatch { pattern: text });
    }
    Ok(())
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with('.') || name.starts_with('_'))
}

fn walk_directory(dir: &Path, inputs: &mut Vec<InputFile>) -> Result<(), InputError> {
    let hidden = |entry: &walkdir::DirEntry| entry.depth() > 0 && is_hidden(entry.path());
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
    fn patterns_expand_sorted_walk_directories_and_leave_out_hidden_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("logs/day2")).unwrap();
        for name in ["b.txt", "a.txt", "c.log", "_SUCCESS.txt", ".x.txt", "logs/day1.txt", "logs/day2/late.txt", "logs/_tmp.txt"] {
            std::fs::write(root.join(name), "x").unwrap();
        }
        let names = |args: &[PathBuf]| -> Vec<String> {
            let prefix = format!("{}/", root.display());
            resolve_inputs(args).unwrap().into_iter().map(|i| i.name.strip_prefix(&prefix).unwrap().to_owned()).collect()
        };
        assert_eq!(names(&[root.join("*.txt")]), ["a.txt", "b.txt"]);
        assert_eq!(names(&[root.join("[ac].*")]), ["a.txt", "c.log"]);
        assert_eq!(names(&[root.join("log?")]), ["logs/day1.txt", "logs/day2/late.txt"], "a matched directory is walked");
        assert_eq!(names(&[root.join("**/*.txt")]), ["a.txt", "b.txt", "logs/day1.txt", "logs/day2/late.txt"]);
        // A name that exists is itself, glob characters or not.
        std::fs::write(root.join("odd[1].txt"), "x").unwrap();
        assert_eq!(names(&[root.join("odd[1].txt")]), ["odd[1].txt"]);
    }

    #[test]
    fn a_pattern_that_matches_nothing_or_is_malformed_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("_hidden.gz"), "x").unwrap();
        let none = dir.path().join("*.gz");
        let err = resolve_inputs(std::slice::from_ref(&none)).unwrap_err();
        assert_eq!(err.to_string(), format!("input pattern {}: matches no files", none.display()));
        let bad = dir.path().join("[z-a");
        let err = resolve_inputs(&[bad]).unwrap_err();
        assert!(err.to_string().starts_with("input pattern "), "{err}");
    }

    #[test]
    fn a_missing_input_is_named_in_the_error() {
        let err = resolve_inputs(&[PathBuf::from("/no/such/input.txt")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/no/such/input.txt") && text.contains("No such file"), "{text}");
    }
}
