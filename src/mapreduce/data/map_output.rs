//! Where a map task's output lives, and reading it back: the one type
//! that both the RPC contract (a completed map reports its runs' locations)
//! and the data path (a reduce opens them) need, kept apart from both so
//! that neither imports the other. Today a location is a byte range of a
//! file on a filesystem every worker shares; served locations fit here.

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
}

impl MapOutputLocation {
    /// Whether the location is a file under `dir` (a path with no `..` in
    /// it, so that it cannot climb out). A report of a map output elsewhere
    /// is refused: reducers must only ever read the job's own files.
    pub fn lies_under(&self, dir: &Path) -> bool {
        match self {
            MapOutputLocation::SharedFile { path, .. } => {
                path.starts_with(dir) && path.components().all(|c| !matches!(c, std::path::Component::ParentDir))
            }
        }
    }
}

/// Opens the run at `location` for reading.
pub fn open_run(location: &MapOutputLocation) -> Result<RunReader, RunError> {
    match location {
        MapOutputLocation::SharedFile { path, range } => RunReader::open_range(path, *range),
    }
}

/// Whether the run at `location` is still there, whole as far as its size
/// tells (a restarted coordinator checks the runs its journal names).
pub fn run_is_present(location: &MapOutputLocation) -> bool {
    match location {
        MapOutputLocation::SharedFile { path, range } => {
            std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() >= range.offset.saturating_add(range.len))
        }
    }
}

/// The stored size of the run at `location`, in bytes (as counted in
/// [`crate::counters::Counters::intermediate_bytes`]).
pub fn stored_size(location: &MapOutputLocation) -> u64 {
    match location {
        MapOutputLocation::SharedFile { range, .. } => range.len,
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
