//! Where a job's inputs are stored, behind one trait: files on a
//! filesystem this process sees ([`LocalFiles`]) or objects on S3-compatible
//! object storage ([`ObjectStorage`]). The code that reads inputs (a map's
//! split, a range for an app's constructor, the reference run's whole
//! input) asks [`store_for`] an input's path and reads byte ranges from
//! what it gets, without knowing which store it is. Every read checks that
//! the input is as it was when the job was planned, so that no task mixes
//! two versions of a file.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

use crate::inputs::check_unchanged;
use crate::remote::{self, ObjectUrl, Planned};
use crate::rpc::InputFile;

/// A place inputs are read from.
pub trait InputStore: Sync {
    /// Appends bytes `range` of `input` to `out` (fewer where the input
    /// ends), failing if it changed since the job was planned.
    fn read_range(&self, input: &InputFile, range: Range<u64>, out: &mut Vec<u8>) -> io::Result<()>;

    /// Whether a split of its inputs may be read in place, mapped into
    /// memory ([`crate::split::map_split`]), rather than by ranges.
    fn maps_in_place(&self) -> bool;

    /// Checks, after a read that did not check as it went (in place),
    /// that `input` is still as planned.
    fn check_unchanged(&self, input: &InputFile) -> io::Result<()>;
}

/// Files on a filesystem this process sees.
pub struct LocalFiles;

/// Objects on object storage, named by `s3://` URLs ([`crate::remote`]).
pub struct ObjectStorage;

/// The store that holds the input at `path`.
pub fn store_for(path: &Path) -> &'static dyn InputStore {
    match remote::is_url(path) {
        true => &ObjectStorage,
        false => &LocalFiles,
    }
}

/// Opens an input file, checking it is as it was when the job was planned.
pub fn open_unchanged(input: &InputFile) -> io::Result<File> {
    let file = File::open(&input.path)?;
    check_unchanged(input, &file.metadata()?)?;
    Ok(file)
}

impl InputStore for LocalFiles {
    fn read_range(&self, input: &InputFile, range: Range<u64>, out: &mut Vec<u8>) -> io::Result<()> {
        let mut file = open_unchanged(input)?;
        let end = range.end.min(file.metadata()?.len());
        out.reserve(end.saturating_sub(range.start) as usize);
        file.seek(SeekFrom::Start(range.start))?;
        file.take(end.saturating_sub(range.start)).read_to_end(out)?;
        Ok(())
    }

    fn maps_in_place(&self) -> bool {
        true
    }

    fn check_unchanged(&self, input: &InputFile) -> io::Result<()> {
        check_unchanged(input, &std::fs::metadata(&input.path)?)
    }
}

impl InputStore for ObjectStorage {
    fn read_range(&self, input: &InputFile, range: Range<u64>, out: &mut Vec<u8>) -> io::Result<()> {
        let url = ObjectUrl::parse(&input.path.to_string_lossy()).map_err(io::Error::other)?;
        let planned = Planned { size: input.size, modified: input.modified };
        let range = range.start.min(input.size)..range.end.min(input.size);
        remote::read_range(&url, range, Some(planned), out).map_err(io::Error::other)
    }

    fn maps_in_place(&self) -> bool {
        false
    }

    fn check_unchanged(&self, _input: &InputFile) -> io::Result<()> {
        // Every ranged read checked the object's size and time.
        Ok(())
    }
}

/// Bytes `range` of an input as a [`Read`], fetched from its store a
/// chunk at a time (each read checks the input is as planned): for inputs
/// read in pieces, never whole, to stay within a task's memory.
pub struct RangeReader<'a> {
    store: &'a dyn InputStore,
    input: &'a InputFile,
    /// The next offset to fetch, and where to stop.
    at: u64,
    end: u64,
    /// The most bytes one fetch asks for.
    chunk_bytes: usize,
    /// Fetched and not yet read: `chunk[taken..]`.
    chunk: Vec<u8>,
    taken: usize,
}

/// The least a [`RangeReader`] fetches at once: each fetch of a local file
/// opens it, and each of an object is a request.
const MIN_CHUNK_BYTES: usize = 64 << 10;
/// The most a [`RangeReader`] fetches at once: its memory.
const MAX_CHUNK_BYTES: usize = 8 << 20;

impl<'a> RangeReader<'a> {
    /// Reads `range` of `input` from `store`, up to `chunk_bytes` (at
    /// least [`MIN_CHUNK_BYTES`], at most [`MAX_CHUNK_BYTES`]) per fetch.
    pub fn new(store: &'a dyn InputStore, input: &'a InputFile, range: Range<u64>, chunk_bytes: usize) -> RangeReader<'a> {
        let chunk_bytes = chunk_bytes.clamp(MIN_CHUNK_BYTES, MAX_CHUNK_BYTES);
        RangeReader { store, input, at: range.start, end: range.end, chunk_bytes, chunk: Vec::new(), taken: 0 }
    }
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.taken == self.chunk.len() && self.at < self.end {
            self.chunk.clear();
            self.taken = 0;
            let to = self.end.min(self.at.saturating_add(self.chunk_bytes as u64));
            if let Err(e) = self.store.read_range(self.input, self.at..to, &mut self.chunk) {
                // Nothing of a failed fetch is served: a retry fetches it again.
                self.chunk.clear();
                return Err(e);
            }
            if self.chunk.is_empty() {
                // The input ends before the range does: the reader's caller
                // sees the short count.
                self.at = self.end;
            }
            self.at += self.chunk.len() as u64;
        }
        let unread = self.chunk.get(self.taken..).unwrap_or_default();
        let n = unread.len().min(buf.len());
        buf[..n].copy_from_slice(&unread[..n]);
        self.taken += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_range_is_read_whole_cut_at_the_end_and_refused_once_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, "0123456789").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let input = InputFile { name: "in.txt".into(), path: path.clone(), size: 10, modified: meta.modified().ok() };
        let store = store_for(&path);
        let mut out = b"x".to_vec();
        store.read_range(&input, 3..7, &mut out).unwrap();
        assert_eq!(out, b"x3456");
        out.clear();
        store.read_range(&input, 8..100, &mut out).unwrap();
        assert_eq!(out, b"89");
        std::fs::write(&path, "0123456789ab").unwrap();
        let changed = store.read_range(&input, 0..2, &mut out).unwrap_err();
        assert!(changed.to_string().contains("changed since the job was planned"), "{changed}");
        assert!(store.check_unchanged(&input).is_err());
        assert!(!store_for(Path::new("s3://bucket/key")).maps_in_place());
    }
}
