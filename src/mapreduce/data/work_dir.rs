//! A worker's work directory, and the removal of those dead workers left.
//!
//! Each worker makes `mr-worker-XXXXXX` in its base directory (`--work-dir`,
//! or the system's temporary directory) for the map output it serves, the
//! runs it fetches and its attempts' cursors, and removes it at exit. A
//! worker killed (`kill -9`, a machine's OOM killer, a chaos run) cannot:
//! its directory stays, with gigabytes of runs in it. So a worker holds an
//! exclusive `flock` on its directory as long as it lives, which the kernel
//! drops when the process dies however it dies, and a worker starting
//! removes every `mr-worker-*` directory in its base on which it can take
//! that lock without waiting: its owner is gone.
//!
//! A directory is made under a name the sweep ignores (`.mr-worker-new-*`),
//! locked and marked (an [`OWNER`] file), and only then renamed to
//! `mr-worker-*`, so that a sweep never sees a live worker's directory
//! unlocked. A directory without the mark was made by an older mr-worker
//! that took no lock, and may be in use: it is removed only once untouched
//! for [`UNMARKED_AGE`]. Locks on a network filesystem may not be shared
//! between machines: give each machine a base of its own.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The prefix of every worker's directory.
const PREFIX: &str = "mr-worker-";
/// The prefix of a directory being made, before it is locked.
const NEW_PREFIX: &str = ".mr-worker-new-";
/// The file that marks a directory as locked by its owner while it lives
/// (it holds the owner's pid, for people).
pub const OWNER: &str = ".owner";
/// How long a directory without [`OWNER`] must have been left untouched
/// before a sweep removes it.
pub const UNMARKED_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A live worker's work directory: locked while it lives, removed on drop.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    /// Holds the lock; the kernel drops it with the process.
    _lock: File,
}

impl WorkDir {
    /// Removes the directories dead workers left in `base`, then makes and
    /// locks this worker's. Returns it and how many were removed.
    pub fn create(base: &Path) -> io::Result<(WorkDir, usize)> {
        let removed = remove_dead(base);
        let new = tempfile::Builder::new().prefix(NEW_PREFIX).tempdir_in(base)?;
        let lock = File::open(new.path())?;
        try_lock(&lock)?.then_some(()).ok_or_else(|| io::Error::other("a fresh work directory was locked by another process"))?;
        std::fs::write(new.path().join(OWNER), format!("{}\n", std::process::id()))?;
        let suffix = new.path().file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix(NEW_PREFIX)).expect("named by us").to_owned();
        let path = base.join(format!("{PREFIX}{suffix}"));
        rename_no_replace(new.path(), &path)?;
        // Renamed: the guard's path no longer exists, and must not be removed.
        let _ = new.keep();
        Ok((WorkDir { path, _lock: lock }, removed))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Still locked while removed: no sweep races this.
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!("cannot remove the work directory {}: {e}", self.path.display());
        }
    }
}

/// Removes every `mr-worker-*` directory in `base` whose lock is free;
/// returns how many. One that cannot be opened (another user's) is left.
pub fn remove_dead(base: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || !entry.file_name().to_str().is_some_and(|n| n.starts_with(PREFIX)) {
            continue;
        }
        let path = entry.path();
        if !path.join(OWNER).exists() && !untouched_for(&path, UNMARKED_AGE) {
            continue;
        }
        let Ok(dir) = File::open(&path) else { continue };
        match try_lock(&dir) {
            Ok(true) => match std::fs::remove_dir_all(&path) {
                Ok(()) => removed += 1,
                Err(e) => tracing::debug!("cannot remove the dead worker's directory {}: {e}", path.display()),
            },
            Ok(false) => {}
            Err(e) => tracing::debug!("cannot lock {}: {e}", path.display()),
        }
    }
    if removed > 0 {
        tracing::info!("removed {removed} work directories that dead workers left in {}", base.display());
    }
    removed
}

/// Whether `path` was last modified at least `age` ago.
fn untouched_for(path: &Path, age: std::time::Duration) -> bool {
    let modified = std::fs::metadata(path).and_then(|m| m.modified());
    modified.is_ok_and(|at| at.elapsed().is_ok_and(|elapsed| elapsed >= age))
}

/// Takes an exclusive lock on `file` without waiting; `false` if another
/// open file holds it. Also the lock of a job directory (`control::job_dir`)
/// and of the cluster's state directory (`control::cluster::history`).
pub(crate) fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

/// Renames `from` to `to`, failing if `to` exists (a plain rename would
/// replace an empty directory there).
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let result = unsafe { libc::renameat2(libc::AT_FDCWD, from_c.as_ptr(), libc::AT_FDCWD, to_c.as_ptr(), libc::RENAME_NOREPLACE) };
    if result == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    // A filesystem without RENAME_NOREPLACE: the random name makes a
    // collision all but impossible.
    if error.raw_os_error() == Some(libc::EINVAL) {
        return std::fs::rename(from, to);
    }
    Err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_workers_directories_are_removed_and_live_ones_kept() {
        let base = tempfile::tempdir().unwrap();
        let dead = base.path().join("mr-worker-dead01");
        std::fs::create_dir_all(dead.join("sub")).unwrap();
        std::fs::write(dead.join("sub/map-1.attempt-2"), b"runs").unwrap();
        std::fs::write(dead.join(OWNER), b"1234\n").unwrap();
        // An older worker's (no mark), perhaps alive: kept, being recent.
        let unmarked = base.path().join("mr-worker-older1");
        std::fs::create_dir(&unmarked).unwrap();
        // A file of that name (the lab's apps make some) is not a directory.
        std::fs::write(base.path().join("mr-worker-map-123"), b"x").unwrap();
        std::fs::create_dir(base.path().join("other")).unwrap();
        let (live, removed) = WorkDir::create(base.path()).unwrap();
        assert_eq!(removed, 1);
        assert!(!dead.exists() && base.path().join("mr-worker-map-123").exists() && base.path().join("other").exists());
        assert!(unmarked.is_dir(), "a recent unmarked directory is kept");
        assert!(live.path().join(OWNER).is_file());
        assert!(live.path().file_name().unwrap().to_str().unwrap().starts_with(PREFIX));
        // A second worker's sweep leaves the live one (flock is per open file).
        let (second, removed) = WorkDir::create(base.path()).unwrap();
        assert_eq!(removed, 0);
        assert!(live.path().is_dir() && second.path().is_dir());
        let live_path = live.path().to_owned();
        drop(live);
        assert!(!live_path.exists(), "removed at drop");
        // Left by a process that died: unlocked, so removed by the next sweep.
        let (crashed, _) = WorkDir::create(base.path()).unwrap();
        let crashed_path = crashed.path().to_owned();
        std::mem::forget(crashed);
        // The forgotten lock is still held by this process's open file.
        assert_eq!(remove_dead(base.path()), 0);
        assert!(crashed_path.is_dir());
    }

    #[test]
    fn a_directory_is_swept_once_its_lock_is_dropped() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("mr-worker-abc123");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join(OWNER), b"1234\n").unwrap();
        let lock = File::open(&path).unwrap();
        assert!(try_lock(&lock).unwrap());
        assert_eq!(remove_dead(base.path()), 0);
        // As the kernel does for a killed process.
        drop(lock);
        assert_eq!(remove_dead(base.path()), 1);
        assert!(!path.exists());
    }
}
