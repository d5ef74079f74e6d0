//! Final output files: their line format and atomic publication.
//!
//! An output file `mr-out-<r>` holds one line per key of partition `r`, in
//! key byte order: `<key> <value>\n`, key and value written as raw bytes.
//! Every file this framework publishes (outputs, intermediate runs, the
//! master's address file) is written to a temporary file in the destination's
//! directory and renamed into place, so a reader sees the whole file or none.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::app::OutputFormat;

/// How the temporary files of [`AtomicFile`] are named, before a random
/// suffix: hidden, and recognisable as orphans when their writer died.
pub const TEMP_PREFIX: &str = ".mr-tmp-";

/// Where an [`AtomicFile`]'s bytes go until it is committed: a temporary
/// file beside the destination, or another process that keeps them (a
/// reduce output sent to the coordinator, [`crate::upload`]).
pub trait Staging: Write + Send {
    /// Makes the bytes written the destination's, whole.
    fn commit(self: Box<Self>) -> io::Result<()>;
}

/// A temporary file that is renamed to `dest` on commit.
struct TempStaging {
    temp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl Write for TempStaging {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.temp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.temp.flush()
    }
}

impl Staging for TempStaging {
    fn commit(self: Box<Self>) -> io::Result<()> {
        self.temp.persist(&self.dest).map(|_| ()).map_err(|e| e.error)
    }
}

/// A file being written that appears at its destination only on `commit`.
/// Dropping it uncommitted removes the temporary file (or abandons the
/// staging).
pub struct AtomicFile {
    writer: BufWriter<Box<dyn Staging>>,
    /// Lines and bytes written by `write_record` and `write_reduce_output`.
    written: (u64, u64),
}

impl AtomicFile {
    /// Starts a file to be published at `dest`; its directory must exist.
    pub fn create(dest: &Path) -> io::Result<AtomicFile> {
        let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let temp = publishable_temp_file(dir, TEMP_PREFIX)?;
        Ok(AtomicFile::staged_in(Box::new(TempStaging { temp, dest: dest.to_owned() })))
    }

    /// Starts a file whose bytes go to `staging` until the commit.
    pub fn staged_in(staging: Box<dyn Staging>) -> AtomicFile {
        AtomicFile { writer: BufWriter::with_capacity(256 * 1024, staging), written: (0, 0) }
    }

    /// Writes one output line: `<key> <value>\n`.
    pub fn write_record(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.write_line(key, b' ', value)
    }

    fn write_line(&mut self, key: &[u8], separator: u8, value: &[u8]) -> io::Result<()> {
        self.written.0 += 1;
        self.written.1 += (key.len() + value.len() + 2) as u64;
        self.writer.write_all(key)?;
        self.writer.write_all(&[separator])?;
        self.writer.write_all(value)?;
        self.writer.write_all(b"\n")
    }

    /// Writes one reduce call's output as `format` says: the line
    /// `<key> <value>\n` or `<key>\t<value>\n`, or the value verbatim for
    /// an app that writes its own lines.
    pub fn write_reduce_output(&mut self, format: OutputFormat, key: &[u8], value: &[u8]) -> io::Result<()> {
        match format {
            OutputFormat::KeyValue => self.write_line(key, b' ', value),
            OutputFormat::KeyTabValue => self.write_line(key, b'\t', value),
            OutputFormat::Raw => {
                self.written.0 += crate::counters::count_lines(value);
                self.written.1 += value.len() as u64;
                self.writer.write_all(value)
            }
        }
    }

    /// Output lines and bytes written so far by
    /// [`write_record`](AtomicFile::write_record) and
    /// [`write_reduce_output`](AtomicFile::write_reduce_output).
    pub fn lines_and_bytes_written(&self) -> (u64, u64) {
        self.written
    }

    /// Flushes and atomically puts the file in place (renames it to its
    /// destination, or has its staging commit it).
    pub fn commit(self) -> io::Result<()> {
        self.writer.into_inner().map_err(|e| e.into_error())?.commit()
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// A temporary file in `dir` that, once renamed into place, has the
/// permissions of any newly created file (0666 less the umask) rather than
/// tempfile's private 0600.
pub fn publishable_temp_file(dir: &Path, prefix: &str) -> io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new().prefix(prefix).permissions(std::fs::Permissions::from_mode(0o666)).tempfile_in(dir)
}

/// The name of reduce partition `r`'s output file.
pub fn output_file_name(r: u32) -> String {
    format!("mr-out-{r}")
}

/// The marker of a whole output directory or prefix (Hadoop's): its first
/// line names the job whose outputs are there.
pub const SUCCESS_MARKER: &str = "_SUCCESS";

/// The first line of a `_SUCCESS` marker for job `id`.
pub fn success_line(id: &str) -> String {
    format!("job {id}\n")
}

/// The job a `_SUCCESS` marker's text names (cut to 64 characters: the
/// text may be anyone's).
pub fn marked_job(marker: &str) -> Option<String> {
    marker.lines().next()?.trim().strip_prefix("job ").map(|id| id.chars().take(64).collect())
}

/// Whether `name` is a job's output file's, `mr-out-<r>`.
pub fn is_output_name(name: &str) -> bool {
    name.strip_prefix("mr-out-").is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
}

/// The partition of an output file name (`mr-out-<r>` gives `r`).
pub fn parse_output_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("mr-out-")?;
    // Only canonical numbers: `mr-out-01` is not ours.
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    digits.parse().ok()
}

/// The `mr-out-<r>` files in `dir` for `r >= reduces`, by name: outputs of
/// an earlier job with more reduces, which `cat mr-out-*` would otherwise
/// mix into a job's with `reduces`.
pub fn stale_outputs(dir: &Path, reduces: u32) -> io::Result<Vec<String>> {
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if parse_output_file_name(&name).is_some_and(|r| r >= reduces) && entry.file_type()?.is_file() {
            stale.push(name);
        }
    }
    stale.sort();
    Ok(stale)
}

/// Writes `contents` to `dest` atomically.
pub fn write_atomically(dest: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = AtomicFile::create(dest)?;
    file.write_all(contents)?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_outputs_of_a_bigger_job_are_found_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["mr-out-0", "mr-out-1", "mr-out-2", "mr-out-10", "mr-out-01", "mr-out-x", "notes"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        assert_eq!(stale_outputs(dir.path(), 2).unwrap(), ["mr-out-10", "mr-out-2"]);
    }

    #[test]
    fn nothing_appears_until_commit_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("mr-out-0");
        let mut file = AtomicFile::create(&dest).unwrap();
        file.write_record(b"key", b"value").unwrap();
        assert!(!dest.exists());
        file.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"key value\n");

        let other = dir.path().join("mr-out-1");
        let mut file = AtomicFile::create(&other).unwrap();
        file.write_record(b"a", b"b").unwrap();
        drop(file);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("mr-out-0")]);
    }
}
