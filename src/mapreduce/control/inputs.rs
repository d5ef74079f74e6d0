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
//!
//! An argument may also be an object URL, `s3://BUCKET/KEY` (see
//! [`crate::remote`]): an object, or a prefix taken as a directory (every
//! object under `KEY/`, sorted, hidden names left out), or a pattern whose
//! glob characters are matched against keys (`s3://b/logs/2026-*/*.gz`).
//! Each object is named by its URL and read where it is, by every worker.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::remote::{self, ObjectInfo, ObjectUrl};
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
    /// An object URL that names no object, or cannot be read.
    #[error("input {0}")]
    Remote(#[from] crate::remote::RemoteError),
}

/// Resolves input arguments to input files, in argument order.
pub fn resolve_inputs(args: &[PathBuf]) -> Result<Vec<InputFile>, InputError> {
    let mut inputs = Vec::new();
    for arg in args {
        if remote::is_url(arg) {
            add_remote(&arg.to_string_lossy(), &mut inputs)?;
            continue;
        }
        match std::fs::metadata(arg) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && is_pattern(arg) => expand_pattern(arg, &mut inputs)?,
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

/// How patterns match, on files and keys alike: `*` does not cross `/`.
const GLOB_OPTIONS: glob::MatchOptions =
    glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };

fn is_pattern(arg: &Path) -> bool {
    arg.to_str().is_some_and(|text| text.contains(['*', '?', '[']))
}

/// Adds what `pattern` matches, sorted: its files, and the files under
/// the directories it matches, each once. Hidden names (`.`, `_`) below
/// the pattern's literal start are left out, as a walk leaves them out; an
/// error if nothing is left. The tree is walked here (not by `glob::glob`,
/// which panics on names that are not UTF-8): only as deep as the pattern
/// reaches, unless it holds `**`.
fn expand_pattern(pattern: &Path, inputs: &mut Vec<InputFile>) -> Result<(), InputError> {
    let text = pattern.to_string_lossy().into_owned();
    let compiled = glob::Pattern::new(&text).map_err(|source| InputError::BadPattern { pattern: text.clone(), source })?;
    let options = GLOB_OPTIONS;
    let root: PathBuf = pattern.components().take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '['])).collect();
    let depth = pattern.components().count() - root.components().count();
    let unbounded = text.contains("**");
    let start = if root.as_os_str().is_empty() { Path::new(".") } else { root.as_path() };
    let walk = walkdir::WalkDir::new(start).min_depth(1).follow_links(true).sort_by_file_name();
    let walk = if unbounded { walk } else { walk.max_depth(depth) };
    let mut matched = std::collections::BTreeSet::new();
    for entry in walk.into_iter().filter_entry(|entry| !is_hidden(entry.path())) {
        let entry = entry.map_err(|source| InputError::Walk { path: start.to_owned(), source })?;
        // Named as the pattern names them: "*.txt" finds "a.txt", not "./a.txt".
        let path = if root.as_os_str().is_empty() { entry.path().strip_prefix(".").unwrap_or(entry.path()) } else { entry.path() };
        if compiled.matches_path_with(path, options) {
            matched.insert(path.to_owned());
        }
    }
    let before = inputs.len();
    // Sorted by components, a directory comes just before what is under it.
    let mut walked: Option<PathBuf> = None;
    for path in matched {
        if walked.as_ref().is_some_and(|dir| path.starts_with(dir)) {
            continue;
        }
        let metadata = std::fs::metadata(&path).map_err(|source| InputError::Unreadable { path: path.clone(), source })?;
        if metadata.is_dir() {
            walked = Some(path.clone());
        }
        add_input(&path, &metadata, inputs)?;
    }
    if inputs.len() == before {
        return Err(InputError::NoMatch { pattern: text });
    }
    Ok(())
}

/// Adds the objects `url` names: itself, what lies under it as under a
/// directory, or what it matches as a pattern (see the module's
/// documentation); an error if there is nothing.
fn add_remote(url: &str, inputs: &mut Vec<InputFile>) -> Result<(), InputError> {
    let parsed = ObjectUrl::parse(url)?;
    let before = inputs.len();
    if is_pattern(Path::new(&parsed.key)) {
        let compiled = glob::Pattern::new(&parsed.key).map_err(|source| InputError::BadPattern { pattern: url.to_owned(), source })?;
        let options = GLOB_OPTIONS;
        // Listed from the last whole folder before the first glob character.
        let literal = parsed.key.split(['*', '?', '[']).next().unwrap_or_default();
        let folder = ObjectUrl { bucket: parsed.bucket.clone(), key: literal.rsplit_once('/').map_or("", |(folder, _)| folder).to_owned() };
        for object in remote::list(&folder)? {
            let key = object.url.key.as_str();
            // The key itself, or a folder it lies in, matches.
            let matched = !hidden_below(key, folder.key.len())
                && !is_folder_marker(&object)
                && key.match_indices('/').filter_map(|(at, _)| key.get(..at)).chain([key]).any(|candidate| compiled.matches_with(candidate, options));
            if matched {
                inputs.push(remote_input(object));
            }
        }
        if inputs.len() == before {
            return Err(InputError::NoMatch { pattern: url.to_owned() });
        }
        return Ok(());
    }
    if !parsed.key.is_empty() && !parsed.key.ends_with('/') {
        if let Some(object) = remote::head(&parsed)? {
            inputs.push(remote_input(object));
            return Ok(());
        }
    }
    let folder_length = parsed.key.trim_end_matches('/').len();
    for object in remote::list(&parsed)? {
        if !hidden_below(&object.url.key, folder_length) && !is_folder_marker(&object) {
            inputs.push(remote_input(object));
        }
    }
    if inputs.len() == before {
        return Err(remote::RemoteError::NotFound { url: url.to_owned() }.into());
    }
    Ok(())
}

/// Whether a name in `key` past its first `folder_length` bytes starts
/// with `.` or `_` (`_SUCCESS`, `_temporary/`), as a walk of a directory
/// leaves such names out.
fn hidden_below(key: &str, folder_length: usize) -> bool {
    key.get(folder_length..).unwrap_or_default().split('/').any(|name| is_hidden(Path::new(name)))
}

/// Whether an object is the empty `name/` that consoles and tools make to
/// show a folder, not data.
fn is_folder_marker(object: &ObjectInfo) -> bool {
    object.url.key.ends_with('/') && object.size == 0
}

/// The input an object is, named by its URL.
fn remote_input(object: ObjectInfo) -> InputFile {
    let url = object.url.to_string();
    InputFile { name: url.clone(), path: PathBuf::from(url), size: object.size, modified: Some(object.modified) }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|name| matches!(name.as_encoded_bytes().first(), Some(b'.' | b'_')))
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
        // Files and the directories holding them match "**/*" and "**": each file once.
        let all = ["a.txt", "b.txt", "c.log", "logs/day1.txt", "logs/day2/late.txt"];
        assert_eq!(names(&[root.join("**/*")]), all);
        assert_eq!(names(&[root.join("**")]), all);
        // Hidden directories are left out below the pattern's start too.
        std::fs::create_dir_all(root.join("_tmp")).unwrap();
        std::fs::write(root.join("_tmp/x.txt"), "x").unwrap();
        assert_eq!(names(&[root.join("*/*.txt")]), ["logs/day1.txt"]);
        // A name that is not UTF-8 beside the matches is passed over, not a panic.
        use std::os::unix::ffi::OsStrExt;
        std::fs::write(root.join(std::ffi::OsStr::from_bytes(b"latin-\xe9.txt")), "x").unwrap();
        assert_eq!(names(&[root.join("[ab].txt")]), ["a.txt", "b.txt"]);
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
