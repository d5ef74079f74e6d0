//! Where a map task's output lives, and reading it back: the one type
//! that both the RPC contract (a completed map reports its runs' locations)
//! and the data path (a reduce opens them) need, kept apart from both so
//! that neither imports the other.
//!
//! A completed map reports [`MapOutputLocation::Served`] runs: byte ranges
//! of a file its worker serves (see [`crate::files`]), also readable in
//! place by workers that share the job directory when the file is in it.
//! [`MapOutputLocation::SharedFile`] is a run in a file this process can
//! open: what a map writes, and what a reducer reads once it has the run
//! (in place, or fetched; see [`crate::storage`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runfile::{RunError, RunRange, RunReader};

/// Where one map task's sorted run for one partition can be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapOutputLocation {
    /// A run at `range` of a file on a filesystem shared by every worker.
    SharedFile {
        /// The map task's output file.
        path: PathBuf,
        /// Where the partition's run lies in it.
        range: RunRange,
    },
    /// A run at `range` of the output file of map attempt `attempt`, served
    /// by its worker's file server at `server`.
    Served {
        /// The worker's file server, `HOST:PORT`.
        server: String,
        /// The map attempt whose output file it is.
        attempt: u64,
        /// Where the partition's run lies in the file.
        range: RunRange,
        /// The file's path in the job directory, when the worker wrote it
        /// there: a reducer that shares the directory reads it in place
        /// (and so even after the map's worker is gone).
        shared_path: Option<PathBuf>,
    },
}

impl MapOutputLocation {
    /// Whether the location is a file under `dir` (a path with no `..` in
    /// it, so that it cannot climb out). A report of a map output elsewhere
    /// is refused: reducers must only ever read the job's own files.
    pub fn lies_under(&self, dir: &Path) -> bool {
        match self {
            MapOutputLocation::SharedFile { path, .. } | MapOutputLocation::Served { shared_path: Some(path), .. } => {
                path.starts_with(dir) && path.components().all(|c| !matches!(c, std::path::Component::ParentDir))
            }
            MapOutputLocation::Served { shared_path: None, .. } => true,
        }
    }

    /// Whether a reducer can only get the run from its worker's server: it
    /// is lost with that worker.
    pub fn only_served(&self) -> bool {
        matches!(self, MapOutputLocation::Served { shared_path: None, .. })
    }
}

/// Opens the run at `location` for reading.
pub fn open_run(location: &MapOutputLocation) -> Result<RunReader, RunError> {
    match location {
        MapOutputLocation::SharedFile { path, range } | MapOutputLocation::Served { shared_path: Some(path), range, .. } => {
            RunReader::open_range(path, *range)
        }
        MapOutputLocation::Served { server, attempt, .. } => Err(RunError::Io {
            path: PathBuf::from(format!("{server}/attempt-{attempt}")),
            source: std::io::Error::other("served by another worker and not fetched"),
        }),
    }
}

/// Whether the run at `location` is still there, whole as far as its size
/// tells (a restarted coordinator checks the runs its journal names).
pub fn run_is_present(location: &MapOutputLocation) -> bool {
    match location {
        MapOutputLocation::SharedFile { path, range } | MapOutputLocation::Served { shared_path: Some(path), range, .. } => {
            std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() >= range.offset.saturating_add(range.len))
        }
        // Only its server can tell; a reducer that cannot fetch it has the
        // map run again.
        MapOutputLocation::Served { shared_path: None, .. } => true,
    }
}

/// The stored size of the run at `location`, in bytes (as counted in
/// [`crate::counters::Counters::intermediate_bytes`]).
pub fn stored_size(location: &MapOutputLocation) -> u64 {
    match location {
        MapOutputLocation::SharedFile { range, .. } | MapOutputLocation::Served { range, .. } => range.len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_inside_the_job_directory_lie_under_it() {
        let at = |path: &str| MapOutputLocation::SharedFile { path: path.into(), range: RunRange { offset: 0, len: 1 } };
        let dir = Path::new("/out/.mr-job");
        assert!(at("/out/.mr-job/mr-map-1-2").lies_under(dir));
        assert!(!at("/etc/passwd").lies_under(dir));
        assert!(!at("/out/.mr-job/../secret").lies_under(dir));
        assert!(!at("/out/.mr-job-other/x").lies_under(dir));
        assert!(!at("relative/x").lies_under(dir));
    }
}
