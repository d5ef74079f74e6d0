//! Final output files: their names, line format, compression and atomic
//! publication.
//!
//! An output file `mr-out-<r>` holds one line per key of partition `r`, in
//! key byte order: `<key> <value>\n`, key and value written as raw bytes.
//! A job asked for compressed outputs (`--output-compression gz|zst`)
//! writes the same lines compressed, named `mr-out-<r>.gz` or
//! `mr-out-<r>.zst`, so that a later job reads them back by extension.
//! Every file this framework publishes (outputs, intermediate runs, the
//! master's address file) is written to a temporary file in the destination's
//! directory and renamed into place, so a reader sees the whole file or none.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::app::OutputFormat;

/// How a job's outputs are compressed (`--output-compression`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputCompression {
    /// Plain text, `mr-out-<r>`.
    #[default]
    None,
    /// gzip at zlib's default level, `mr-out-<r>.gz`.
    Gzip,
    /// Zstandard at its default level, `mr-out-<r>.zst`.
    Zstd,
}

impl OutputCompression {
    /// Parses the flag's value: `none`, `gz` or `zst`.
    pub fn parse(text: &str) -> Result<OutputCompression, String> {
        match text {
            "none" => Ok(OutputCompression::None),
            "gz" | "gzip" => Ok(OutputCompression::Gzip),
            "zst" | "zstd" => Ok(OutputCompression::Zstd),
            other => Err(format!("unknown output compression {other:?}: expected none, gz or zst")),
        }
    }

    /// The extension its files get, with its dot (empty for none).
    pub fn extension(self) -> &'static str {
        match self {
            OutputCompression::None => "",
            OutputCompression::Gzip => ".gz",
            OutputCompression::Zstd => ".zst",
        }
    }

    /// The name of reduce partition `r`'s output file.
    pub fn output_file_name(self, r: u32) -> String {
        format!("{}{}", output_file_name(r), self.extension())
    }
}

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
    writer: BufWriter<Encoder>,
    /// Lines written by `write_record` and `write_reduce_output`.
    lines: u64,
}

/// What an [`AtomicFile`]'s bytes pass through on their way to the
/// staging: nothing, or a compressor.
enum Encoder {
    Plain(Counted),
    Gzip(flate2::write::GzEncoder<Counted>),
    Zstd(zstd::stream::write::Encoder<'static, Counted>),
}

impl Encoder {
    fn new(staging: Box<dyn Staging>, compression: OutputCompression) -> io::Result<Encoder> {
        let counted = Counted { staging, bytes: 0 };
        Ok(match compression {
            OutputCompression::None => Encoder::Plain(counted),
            OutputCompression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(counted, flate2::Compression::default())),
            OutputCompression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(counted, 0)?),
        })
    }

    /// Ends the compressed stream and gives back what it was written to.
    fn finish(self) -> io::Result<Counted> {
        match self {
            Encoder::Plain(counted) => Ok(counted),
            Encoder::Gzip(encoder) => encoder.finish(),
            Encoder::Zstd(encoder) => encoder.finish(),
        }
    }

    fn inner(&mut self) -> &mut dyn Write {
        match self {
            Encoder::Plain(counted) => counted,
            Encoder::Gzip(encoder) => encoder,
            Encoder::Zstd(encoder) => encoder,
        }
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner().flush()
    }
}

/// A staging that counts the bytes stored in it.
struct Counted {
    staging: Box<dyn Staging>,
    bytes: u64,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.staging.write(buf)?;
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.staging.flush()
    }
}

/// What a committed [`AtomicFile`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Output lines.
    pub lines: u64,
    /// Bytes as stored (compressed, for a compressed file).
    pub bytes: u64,
}

impl AtomicFile {
    /// Starts a plain file to be published at `dest`; its directory must exist.
    pub fn create(dest: &Path) -> io::Result<AtomicFile> {
        AtomicFile::create_compressed(dest, OutputCompression::None)
    }

    /// Starts a file to be published at `dest`, compressed as `compression` says.
    pub fn create_compressed(dest: &Path, compression: OutputCompression) -> io::Result<AtomicFile> {
        let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let temp = publishable_temp_file(dir, TEMP_PREFIX)?;
        AtomicFile::staged_in(Box::new(TempStaging { temp, dest: dest.to_owned() }), compression)
    }

    /// Starts a file whose bytes go to `staging` until the commit,
    /// compressed as `compression` says.
    pub fn staged_in(staging: Box<dyn Staging>, compression: OutputCompression) -> io::Result<AtomicFile> {
        Ok(AtomicFile { writer: BufWriter::with_capacity(256 * 1024, Encoder::new(staging, compression)?), lines: 0 })
    }

    /// Writes one output line: `<key> <value>\n`.
    pub fn write_record(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.write_line(key, b' ', value)
    }

    fn write_line(&mut self, key: &[u8], separator: u8, value: &[u8]) -> io::Result<()> {
        self.lines += 1;
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
                self.lines += crate::counters::count_lines(value);
                self.writer.write_all(value)
            }
        }
    }

    /// Flushes, ends the compression, and atomically puts the file in
    /// place (renames it to its destination, or has its staging commit
    /// it); returns its lines and stored bytes.
    pub fn commit(self) -> io::Result<Written> {
        let lines = self.lines;
        let counted = self.writer.into_inner().map_err(|e| e.into_error())?.finish()?;
        let bytes = counted.bytes;
        counted.staging.commit()?;
        Ok(Written { lines, bytes })
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

/// Whether `name` is a job's output file's: `mr-out-<r>`, plain or
/// compressed (`.gz`, `.zst`).
pub fn is_output_name(name: &str) -> bool {
    parse_output_file_name(name).is_some()
}

/// The partition and compression of an output file name (`mr-out-<r>`
/// gives `r`, `mr-out-<r>.gz` gives `r` and gzip).
pub fn parse_output_file_name(name: &str) -> Option<(u32, OutputCompression)> {
    let rest = name.strip_prefix("mr-out-")?;
    let (digits, compression) = [OutputCompression::Gzip, OutputCompression::Zstd]
        .into_iter()
        .find_map(|c| Some((rest.strip_suffix(c.extension())?, c)))
        .unwrap_or((rest, OutputCompression::None));
    // Only canonical numbers: `mr-out-01` is not ours.
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, compression))
}

/// The output files in `dir` that a job with `reduces` partitions
/// compressed as `compression` does not write, by name: outputs of an
/// earlier job with more reduces or another compression, which `cat
/// mr-out-*` would otherwise mix into this job's.
pub fn stale_outputs(dir: &Path, reduces: u32, compression: OutputCompression) -> io::Result<Vec<String>> {
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        let ours = |(r, c): (u32, OutputCompression)| r < reduces && c == compression;
        if parse_output_file_name(&name).is_some_and(|parsed| !ours(parsed)) && entry.file_type()?.is_file() {
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
    file.commit().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_outputs_of_a_bigger_job_are_found_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["mr-out-0", "mr-out-1", "mr-out-2", "mr-out-10", "mr-out-01", "mr-out-x", "mr-out-.gz", "mr-out-1.gz", "mr-out-1.bz2", "notes"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        assert_eq!(stale_outputs(dir.path(), 2, OutputCompression::None).unwrap(), ["mr-out-1.gz", "mr-out-10", "mr-out-2"]);
        assert_eq!(stale_outputs(dir.path(), 2, OutputCompression::Gzip).unwrap(), ["mr-out-0", "mr-out-1", "mr-out-10", "mr-out-2"]);
    }

    #[test]
    fn nothing_appears_until_commit_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("mr-out-0");
        let mut file = AtomicFile::create(&dest).unwrap();
        file.write_record(b"key", b"value").unwrap();
        assert!(!dest.exists());
        assert_eq!(file.commit().unwrap(), Written { lines: 1, bytes: 10 });
        assert_eq!(std::fs::read(&dest).unwrap(), b"key value\n");

        let other = dir.path().join("mr-out-1");
        let mut file = AtomicFile::create(&other).unwrap();
        file.write_record(b"a", b"b").unwrap();
        drop(file);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("mr-out-0")]);
    }

    #[test]
    fn compressed_outputs_unpack_to_the_plain_lines() {
        let dir = tempfile::tempdir().unwrap();
        for (compression, codec) in [(OutputCompression::Gzip, crate::codec::Codec::Gzip), (OutputCompression::Zstd, crate::codec::Codec::Zstd)] {
            let dest = dir.path().join(compression.output_file_name(3));
            assert_eq!(crate::codec::Codec::of(&dest), Some(codec), "a later job reads it back by its name");
            let mut file = AtomicFile::create_compressed(&dest, compression).unwrap();
            for i in 0..1000 {
                file.write_record(format!("key{i}").as_bytes(), b"1").unwrap();
            }
            let written = file.commit().unwrap();
            let stored = std::fs::read(&dest).unwrap();
            assert_eq!(written, Written { lines: 1000, bytes: stored.len() as u64 });
            let mut text = String::new();
            std::io::Read::read_to_string(&mut codec.decoder(&stored[..]).unwrap(), &mut text).unwrap();
            let expected: String = (0..1000).map(|i| format!("key{i} 1\n")).collect();
            assert_eq!(text, expected);
            assert_eq!(parse_output_file_name(&compression.output_file_name(3)), Some((3, compression)));
        }
    }
}
