//! Files shipped with a job (`--files`, as Hadoop Streaming's `-files`):
//! the coordinator checks and describes them when the job is submitted
//! ([`plan`]), copies them into the job's directory when the job starts
//! ([`stage`]: a file changed since fails the job there, naming it) and
//! serves the copies ([`crate::job_files`]); every worker fetches them
//! into a directory of the job's own before its first task, checks each
//! against its size and SHA-256, keeps them read-only, and its task
//! processes name that directory to the app in [`FILES_DIR_VAR`]
//! (`MR_JOB_FILES`; Streaming runs its commands there).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::plugin::file_sha256;
use crate::rpc::ShippedFile;
use crate::storage::WorkerStorage;

/// How many files a job may ship.
pub const MAX_FILES: usize = 256;

/// How many bytes a job may ship, all files together: every worker
/// fetches all of them.
pub const MAX_BYTES: u64 = 1 << 30;

/// The environment variable that names, in a task process, the directory
/// that holds the job's shipped files (set only for a job that ships any).
pub use mapreduce_app::app::JOB_FILES_VAR as FILES_DIR_VAR;

/// Checks and describes the files to ship: each a regular file, no two
/// with the same name, within [`MAX_FILES`] and [`MAX_BYTES`]. `Err` says
/// which file, and why, in one line.
pub fn plan(paths: &[PathBuf]) -> Result<Vec<(PathBuf, ShippedFile)>, String> {
    if paths.len() > MAX_FILES {
        return Err(format!("--files: {} files given, at most {MAX_FILES} may be shipped", paths.len()));
    }
    let mut planned: Vec<(PathBuf, ShippedFile)> = Vec::with_capacity(paths.len());
    let mut total = 0u64;
    for path in paths {
        let refuse = |why: String| format!("--files {}: {why}", path.display());
        let name = path.file_name().and_then(|name| name.to_str()).filter(|name| is_plain_name(name));
        let name = name.ok_or_else(|| refuse("not a file name a task's directory can hold".into()))?.to_owned();
        let meta = std::fs::metadata(path).map_err(|e| refuse(e.to_string()))?;
        if !meta.is_file() {
            return Err(refuse("not a regular file".into()));
        }
        if let Some((other, _)) = planned.iter().find(|(_, file)| file.name == name) {
            return Err(refuse(format!("has the same name as {}: a task's directory holds one file of a name", other.display())));
        }
        total += meta.len();
        if total > MAX_BYTES {
            return Err(refuse(format!("the shipped files come to more than {MAX_BYTES} bytes, which every worker would fetch")));
        }
        let sha256 = file_sha256(path).map_err(|e| refuse(e.to_string()))?;
        let executable = meta.permissions().mode() & 0o111 != 0;
        planned.push((path.clone(), ShippedFile { name, size: meta.len(), sha256, executable }));
    }
    Ok(planned)
}

/// Copies the `planned` files into `dir` (made here, emptied first) as the
/// job starts, each checked to be as it was planned (its SHA-256), and
/// returns where the copies are: what the coordinator serves, so that a
/// file changed while the job runs cannot reach some workers and not
/// others. `Err` names a file that changed or could not be copied.
pub fn stage(planned: &[(PathBuf, ShippedFile)], dir: &Path) -> Result<Vec<(PathBuf, ShippedFile)>, String> {
    if planned.is_empty() {
        return Ok(Vec::new());
    }
    let io = |path: &Path| {
        let shown = path.display().to_string();
        move |e: std::io::Error| format!("shipped file {shown}: {e}")
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut staged = Vec::with_capacity(planned.len());
    for (source, file) in planned {
        let copy = dir.join(&file.name);
        std::fs::copy(source, &copy).map_err(io(source))?;
        if file_sha256(&copy).map_err(io(&copy))? != file.sha256 {
            return Err(format!("shipped file {}: changed since the job was submitted", source.display()));
        }
        staged.push((copy, file.clone()));
    }
    Ok(staged)
}

/// Whether `name` is one file name: not empty, `.` or `..`, and without
/// a `/` or a NUL. A name comes from the coordinator, so a worker checks
/// it too before making a path of it.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// Fetches the job's shipped `files` from the coordinator into `dir`
/// (made here), each checked by its size and SHA-256. `Err` names the
/// file and what went wrong.
pub async fn fetch(storage: &WorkerStorage, files: &[ShippedFile], dir: &Path) -> Result<(), String> {
    if files.len() > MAX_FILES {
        return Err(format!("the coordinator ships {} files, more than {MAX_FILES}", files.len()));
    }
    let total = files.iter().fold(0u64, |total, file| total.saturating_add(file.size));
    if total > MAX_BYTES {
        return Err(format!("the coordinator ships {total} bytes of files, more than {MAX_BYTES}"));
    }
    tokio::fs::create_dir_all(dir).await.map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    for (index, file) in files.iter().enumerate() {
        if !is_plain_name(&file.name) {
            return Err(format!("the coordinator ships a file named {:?}, which is not one file name", file.name));
        }
        let dest = dir.join(&file.name);
        if dest.exists() {
            return Err(format!("the coordinator ships two files named {}", file.name));
        }
        storage.fetch_shipped(index as u32, file, &dest).await?;
        // Read-only: every slot's commands share them, and no attempt may
        // change what a later one reads.
        let mode = if file.executable { 0o555 } else { 0o444 };
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", dest.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_files_are_described_and_bad_ones_refused_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.txt"), dir.path().join("sub/a.txt"));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(&a, "abc").unwrap();
        std::fs::write(&b, "x").unwrap();
        let planned = plan(std::slice::from_ref(&a)).unwrap();
        let sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string();
        assert_eq!(planned, vec![(a.clone(), ShippedFile { name: "a.txt".into(), size: 3, sha256, executable: false })]);
        // Staged as copies, checked against the plan.
        let staged = stage(&planned, &dir.path().join("staged")).unwrap();
        assert_eq!(std::fs::read(&staged[0].0).unwrap(), b"abc");
        std::fs::write(&a, "abd").unwrap();
        let changed = stage(&planned, &dir.path().join("staged")).unwrap_err();
        assert_eq!(changed, format!("shipped file {}: changed since the job was submitted", a.display()));
        std::fs::write(&a, "abc").unwrap();
        let twice = plan(&[a.clone(), b.clone()]).unwrap_err();
        assert!(twice.contains(&format!("--files {}: has the same name as {}", b.display(), a.display())), "{twice}");
        let missing = plan(&[dir.path().join("none")]).unwrap_err();
        assert!(missing.starts_with(&format!("--files {}: No such file", dir.path().join("none").display())), "{missing}");
        assert!(plan(&[dir.path().join("sub")]).unwrap_err().ends_with("not a regular file"));
        assert!(plan(&[PathBuf::from("/")]).unwrap_err().contains("not a file name"));
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }
}
