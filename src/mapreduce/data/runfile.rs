#![warn(clippy::indexing_slicing)]

//! The intermediate file format: a key-sorted run of key/value records.
//!
//! This module alone encodes and decodes runs; the shuffle sees records only.
//! A map task writes one run per non-empty reduce partition, all into one
//! file, back to back; a reduce task merges the runs of its partition
//! ([`crate::merge`]). Where each run lies in its file is a [`RunRange`]
//! that the writer returns and the shuffle passes on; the file itself has
//! no index.
//!
//! ```text
//! file    = run*
//! run     = header block* end
//! header  = "MRRUN\0" version:u8 flags:u8          (version 1; flags 0 = plain, 1 = lz4)
//! block   = len:u32le crc:u32le payload[len]       (flags 0: len > 0; crc = CRC-32 of payload)
//!         | len:u32le crc:u32le raw_len:u32le lz4[len]
//!                                                   (flags 1: lz4 = LZ4 block compression of the
//!                                                    raw_len-byte payload; crc = CRC-32 of
//!                                                    raw_len's 4 bytes then lz4)
//! payload = record+                                 (a record never spans blocks)
//! record  = varint(key_len) varint(value_len) key value
//! end     = 0:u32le records:u64le crc:u32le         (crc = CRC-32 of the 8 count bytes)
//! ```
//!
//! Varints are unsigned LEB128. Blocks hold about [`BLOCK_BYTES`] each, so
//! a reader needs one block of memory however large the run. A reader tells
//! a *truncated* run (the file ends before its end marker: a writer died, or
//! a copy was cut) from a *corrupt* one (a checksum or structure mismatch),
//! and never returns a record it has not verified.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A key's first 8 bytes as a big-endian, zero-padded integer: ordering
/// these orders keys, except that equal prefixes need the bytes compared.
#[inline]
pub fn key_prefix(key: &[u8]) -> u64 {
    crate::small_copy::load_partial(key.get(..8).unwrap_or(key)).swap_bytes()
}

/// How the blocks of a run are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    /// Payloads as they are (the default: see `mr-master --compress`).
    #[default]
    None,
    /// Each payload compressed with LZ4 (block format).
    Lz4,
}

impl Compression {
    fn flags(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            _ => Err(format!("'{text}' is not a compression (none or lz4)")),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
        })
    }
}

const MAGIC: &[u8; 6] = b"MRRUN\0";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 8;

/// The most an LZ4 block can grow when decompressed, per compressed byte
/// (a match's length byte of 255 stands for 255 bytes): a block claiming
/// more is corrupt, and is not given the memory it claims.
const MAX_LZ4_EXPANSION: u64 = 255;

/// Target payload size of a block: large enough to amortise the per-block
/// checksum, small enough that a reader per run costs little memory when a
/// reduce merges hundreds of runs.
pub const BLOCK_BYTES: usize = 64 * 1024;

/// A failure reading or writing a run. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named by their messages
pub enum RunError {
    /// The operating system refused a read or write.
    #[error("intermediate file {}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    /// The file ends before its end marker.
    #[error("intermediate file {} is truncated: {detail}", .path.display())]
    Truncated { path: PathBuf, detail: String },
    /// The file's bytes are not a valid run.
    #[error("intermediate file {} is corrupt: {detail}", .path.display())]
    Corrupt { path: PathBuf, detail: String },
}

impl RunError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            RunError::Io { path, .. } | RunError::Truncated { path, .. } | RunError::Corrupt { path, .. } => path,
        }
    }
}

/// Where one run sits in its file: a map task writes the runs of all its
/// partitions into one file, back to back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunRange {
    /// Byte offset of the run's header.
    pub offset: u64,
    /// Bytes from the header through the end marker.
    pub len: u64,
}

/// Writes a file of runs, one after another, to a temporary file beside
/// its destination and renames it into place on
/// [`finish`](RunWriter::finish), so a reader never sees a partial file.
/// One file for all of a map's partitions costs one file creation, not one
/// per partition (on ext4 that creation was a fifth of a word count's time).
pub struct RunWriter {
    file: BufWriter<tempfile::NamedTempFile>,
    dest: PathBuf,
    compression: Compression,
    block: Vec<u8>,
    /// Scratch for a compressed block.
    packed: Vec<u8>,
    /// Records in the open run.
    records: u64,
    /// Bytes written to the file so far.
    written: u64,
    /// Where the open run started, if one is open.
    run_start: Option<u64>,
}

impl RunWriter {
    /// Starts a file of runs that will be published at `dest`.
    pub fn create(dest: &Path, compression: Compression) -> Result<RunWriter, RunError> {
        let io_err = |source| RunError::Io { path: dest.to_owned(), source };
        let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let temp = crate::output::publishable_temp_file(dir, ".run-").map_err(io_err)?;
        Ok(RunWriter {
            file: BufWriter::with_capacity(BLOCK_BYTES + 16, temp),
            dest: dest.to_owned(),
            compression,
            block: Vec::with_capacity(BLOCK_BYTES + 64),
            packed: Vec::new(),
            records: 0,
            written: 0,
            run_start: None,
        })
    }

    /// Starts the next run: the records appended until
    /// [`end_run`](RunWriter::end_run) are its records.
    pub fn begin_run(&mut self) -> Result<(), RunError> {
        assert!(self.run_start.is_none(), "a run is already open");
        self.run_start = Some(self.written);
        self.records = 0;
        let mut header = [0u8; HEADER_LEN];
        header[..6].copy_from_slice(MAGIC);
        header[6] = VERSION;
        header[7] = self.compression.flags();
        self.write(&header)
    }

    /// Appends a record to the open run. Callers append in key order; the
    /// format itself does not check order, the merge relies on it.
    pub fn append(&mut self, key: &[u8], value: &[u8]) -> Result<(), RunError> {
        debug_assert!(self.run_start.is_some(), "append outside a run");
        encode_record(&mut self.block, key, value);
        self.record_added()
    }

    /// Appends a record already encoded by [`encode_record`].
    pub(crate) fn append_encoded(&mut self, record: &[u8]) -> Result<(), RunError> {
        debug_assert!(self.run_start.is_some(), "append outside a run");
        crate::small_copy::extend(&mut self.block, record);
        self.record_added()
    }

    #[inline]
    fn record_added(&mut self) -> Result<(), RunError> {
        self.records += 1;
        if self.block.len() >= BLOCK_BYTES {
            self.flush_block()?;
        }
        Ok(())
    }

    /// Ends the open run with its end marker; returns where it lies in the file.
    pub fn end_run(&mut self) -> Result<RunRange, RunError> {
        let offset = self.run_start.expect("no run is open");
        self.flush_block()?;
        let count = self.records.to_le_bytes();
        let mut end = [0u8; 16];
        end[4..12].copy_from_slice(&count);
        end[12..].copy_from_slice(&crc32fast::hash(&count).to_le_bytes());
        self.write(&end)?;
        self.run_start = None;
        Ok(RunRange { offset, len: self.written - offset })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), RunError> {
        self.written += bytes.len() as u64;
        self.file.write_all(bytes).map_err(|source| RunError::Io { path: self.dest.clone(), source })
    }

    fn flush_block(&mut self) -> Result<(), RunError> {
        if self.block.is_empty() {
            return Ok(());
        }
        let len = u32::try_from(self.block.len()).map_err(|_| RunError::Corrupt {
            path: self.dest.clone(),
            detail: format!("a single record of {} bytes exceeds the 4 GiB block limit", self.block.len()),
        })?;
        let block = std::mem::take(&mut self.block);
        let result = match self.compression {
            Compression::None => {
                let mut head = [0u8; 8];
                head[..4].copy_from_slice(&len.to_le_bytes());
                head[4..].copy_from_slice(&crc32fast::hash(&block).to_le_bytes());
                self.write(&head).and_then(|()| self.write(&block))
            }
            Compression::Lz4 => {
                let raw_len = len.to_le_bytes();
                let mut packed = std::mem::take(&mut self.packed);
                packed.resize(lz4_flex::block::get_maximum_output_size(block.len()), 0);
                let packed_len = lz4_flex::block::compress_into(&block, &mut packed).expect("the buffer has the maximum compressed size");
                let mut crc = crc32fast::Hasher::new();
                crc.update(&raw_len);
                packed.truncate(packed_len);
                crc.update(&packed);
                let mut head = [0u8; 12];
                head[..4].copy_from_slice(&(packed_len as u32).to_le_bytes());
                head[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
                head[8..].copy_from_slice(&raw_len);
                let result = self.write(&head).and_then(|()| self.write(&packed));
                self.packed = packed;
                result
            }
        };
        self.block = block;
        self.block.clear();
        result
    }

    /// Atomically publishes the file at its destination. Dropping a writer
    /// without finishing removes its temp file.
    pub fn finish(self) -> Result<PathBuf, RunError> {
        assert!(self.run_start.is_none(), "a run is still open");
        let io_err = |source| RunError::Io { path: self.dest.clone(), source };
        let temp = self.file.into_inner().map_err(|e| io_err(e.into_error()))?;
        temp.persist(&self.dest).map_err(|e| io_err(e.error))?;
        Ok(self.dest)
    }
}

/// Reads a run record by record, verifying each block before use.
///
/// Blocks carry their length, so the reader reads each straight into its
/// block buffer, with no buffered reader in between: a reduce merging
/// thousands of small runs holds one block per run, not 64 KiB each.
pub struct RunReader {
    source: RunSource,
    path: PathBuf,
    compression: Compression,
    block: Vec<u8>,
    /// Scratch for a compressed block as read.
    packed: Vec<u8>,
    pos: usize,
    /// The current record (the one [`advance`](RunReader::advance) moved
    /// to): its key is `block[key_start..key_end]`, its value
    /// `block[key_end..value_end]`.
    key_start: usize,
    key_end: usize,
    value_end: usize,
    records: u64,
    ended: bool,
    /// Bytes of the file not yet read: bounds a block's length before the
    /// reader allocates for it, so a corrupt length cannot ask for 4 GiB.
    unread: u64,
}

/// Where a reader's bytes come from: a file, or a run held in memory (one
/// fetched from another worker).
enum RunSource {
    File(File),
    Memory(io::Cursor<SharedBytes>),
}

/// Bytes shared between the run they hold and its readers.
#[derive(Clone)]
struct SharedBytes(std::sync::Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Read for RunSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            RunSource::File(file) => file.read(buf),
            RunSource::Memory(bytes) => bytes.read(buf),
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self {
            RunSource::File(file) => file.read_exact(buf),
            RunSource::Memory(bytes) => bytes.read_exact(buf),
        }
    }
}

impl RunReader {
    /// Opens a file holding a single run and checks the run's header.
    pub fn open(path: &Path) -> Result<RunReader, RunError> {
        let io_err = |source| RunError::Io { path: path.to_owned(), source };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        Self::start(RunSource::File(file), path, len)
    }

    /// Reads the run held whole in `bytes`, and checks its header; `name`
    /// says where it came from, in errors.
    pub fn from_memory(bytes: std::sync::Arc<Vec<u8>>, name: &Path) -> Result<RunReader, RunError> {
        let len = bytes.len() as u64;
        Self::start(RunSource::Memory(io::Cursor::new(SharedBytes(bytes))), name, len)
    }

    /// Opens the run at `range` of the file at `path` and checks its header.
    pub fn open_range(path: &Path, range: RunRange) -> Result<RunReader, RunError> {
        let io_err = |source| RunError::Io { path: path.to_owned(), source };
        let mut file = File::open(path).map_err(io_err)?;
        file.seek(SeekFrom::Start(range.offset)).map_err(io_err)?;
        Self::start(RunSource::File(file), path, range.len)
    }

    /// Reads the header of the run of `unread` bytes where `source` stands.
    fn start(source: RunSource, path: &Path, unread: u64) -> Result<RunReader, RunError> {
        let mut reader = RunReader {
            source,
            path: path.to_owned(),
            compression: Compression::None,
            block: Vec::new(),
            packed: Vec::new(),
            pos: 0,
            key_start: 0,
            key_end: 0,
            value_end: 0,
            records: 0,
            ended: false,
            unread,
        };
        let mut header = [0u8; HEADER_LEN];
        reader.read_exact_or_truncated(&mut header, "missing header")?;
        if &header[..6] != MAGIC {
            return Err(reader.corrupt("bad magic: not an intermediate run file".to_string()));
        }
        reader.compression = match (header[6], header[7]) {
            (VERSION, 0) => Compression::None,
            (VERSION, 1) => Compression::Lz4,
            (version, flags) => return Err(reader.corrupt(format!("unsupported version {version} / flags {flags}"))),
        };
        Ok(reader)
    }

    /// Moves to the next record, which [`key`](RunReader::key) and
    /// [`value`](RunReader::value) then show without copying it. Returns
    /// false at the verified end of the run.
    #[inline]
    pub fn advance(&mut self) -> Result<bool, RunError> {
        // No current record until one is read whole.
        (self.key_start, self.key_end, self.value_end) = (0, 0, 0);
        if self.pos == self.block.len() && !self.load_block()? {
            return Ok(false);
        }
        // Most keys and values are shorter than 128 bytes: one-byte
        // varints, and one bounds check for the whole record.
        if let Some(&[k, v]) = self.block.get(self.pos..self.pos + 2) {
            let key_start = self.pos + 2;
            let key_end = key_start + usize::from(k);
            let value_end = key_end + usize::from(v);
            if (k | v) < 0x80 && value_end <= self.block.len() {
                self.pos = value_end;
                (self.key_start, self.key_end, self.value_end) = (key_start, key_end, value_end);
                self.records += 1;
                return Ok(true);
            }
        }
        let key_len = self.block_varint()?;
        let value_len = self.block_varint()?;
        let key_start = self.pos;
        let key_end = self.checked_end(key_len)?;
        self.pos = key_end;
        let value_end = self.checked_end(value_len)?;
        self.pos = value_end;
        (self.key_start, self.key_end, self.value_end) = (key_start, key_end, value_end);
        self.records += 1;
        Ok(true)
    }

    /// The current record's key (empty before the first and after the last).
    #[inline]
    pub fn key(&self) -> &[u8] {
        self.block.get(self.key_start..self.key_end).unwrap_or_default()
    }

    /// The current record's value (empty before the first and after the last).
    #[inline]
    pub fn value(&self) -> &[u8] {
        self.block.get(self.key_end..self.value_end).unwrap_or_default()
    }

    /// Reads the next record into `key` and `value` (replacing their
    /// contents). Returns false at the verified end of the run.
    pub fn next_into(&mut self, key: &mut Vec<u8>, value: &mut Vec<u8>) -> Result<bool, RunError> {
        if !self.advance()? {
            return Ok(false);
        }
        key.clear();
        crate::small_copy::extend(key, self.key());
        value.clear();
        crate::small_copy::extend(value, self.value());
        Ok(true)
    }

    /// Loads the next block; at the end marker, verifies the record count and
    /// that nothing follows, and returns false.
    fn load_block(&mut self) -> Result<bool, RunError> {
        if self.ended {
            return Ok(false);
        }
        let mut head = [0u8; 8];
        self.read_exact_or_truncated(&mut head[..4], "no end marker")?;
        let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
        if len == 0 {
            return self.read_end().map(|()| false);
        }
        self.read_exact_or_truncated(&mut head[4..], "block header cut short")?;
        let crc = u32::from_le_bytes(head[4..].try_into().unwrap());
        let raw_len = match self.compression {
            Compression::None => None,
            Compression::Lz4 => {
                let mut raw_len = [0u8; 4];
                self.read_exact_or_truncated(&mut raw_len, "block header cut short")?;
                Some(raw_len)
            }
        };
        if len as u64 > self.unread {
            return Err(RunError::Truncated { path: self.path.clone(), detail: "block longer than the rest of the file".to_string() });
        }
        self.pos = 0;
        let mut stored = std::mem::take(if raw_len.is_some() { &mut self.packed } else { &mut self.block });
        stored.resize(len, 0);
        let read = self.read_exact_or_truncated(&mut stored, "block cut short");
        let mut hasher = crc32fast::Hasher::new();
        if let Some(raw_len) = &raw_len {
            hasher.update(raw_len);
        }
        hasher.update(&stored);
        let checksum_ok = hasher.finalize() == crc;
        match raw_len {
            None => self.block = stored,
            Some(raw_len) => {
                self.packed = stored;
                if read.is_ok() && checksum_ok {
                    let raw_len = u32::from_le_bytes(raw_len);
                    if u64::from(raw_len) > len as u64 * MAX_LZ4_EXPANSION {
                        return Err(self.corrupt(format!("a compressed block of {len} bytes claims to hold {raw_len}")));
                    }
                    self.block.resize(raw_len as usize, 0);
                    let unpacked = lz4_flex::block::decompress_into(&self.packed, &mut self.block);
                    if !matches!(unpacked, Ok(n) if n == self.block.len()) {
                        return Err(self.corrupt("compressed block does not decompress to its length".to_string()));
                    }
                }
            }
        }
        read?;
        if !checksum_ok {
            return Err(self.corrupt("block checksum mismatch".to_string()));
        }
        Ok(true)
    }

    fn read_end(&mut self) -> Result<(), RunError> {
        let mut end = [0u8; 12];
        self.read_exact_or_truncated(&mut end, "end marker cut short")?;
        let (count, crc) = end.split_at(8);
        if crc32fast::hash(count) != u32::from_le_bytes(crc.try_into().unwrap()) {
            return Err(self.corrupt("end marker checksum mismatch".to_string()));
        }
        let count = u64::from_le_bytes(count.try_into().unwrap());
        if count != self.records {
            return Err(self.corrupt(format!("end marker says {count} records, read {}", self.records)));
        }
        if self.unread != 0 {
            return Err(self.corrupt("bytes after the end marker".to_string()));
        }
        self.block.clear();
        self.pos = 0;
        self.ended = true;
        Ok(())
    }

    fn block_varint(&mut self) -> Result<usize, RunError> {
        match get_varint(self.block.get(self.pos..).unwrap_or_default()) {
            Some((v, used)) => {
                self.pos += used;
                usize::try_from(v).map_err(|_| self.corrupt("record length out of range".to_string()))
            }
            None => Err(self.corrupt("record header runs past its block".to_string())),
        }
    }

    fn checked_end(&self, len: usize) -> Result<usize, RunError> {
        self.pos.checked_add(len).filter(|&end| end <= self.block.len()).ok_or_else(|| self.corrupt("record runs past its block".to_string()))
    }

    /// Reads exactly `buf.len()` bytes of the run; fewer left in the run
    /// (or in the file) means it was cut short.
    fn read_exact_or_truncated(&mut self, buf: &mut [u8], what: &str) -> Result<(), RunError> {
        let Some(unread) = self.unread.checked_sub(buf.len() as u64) else {
            return Err(RunError::Truncated { path: self.path.clone(), detail: what.to_string() });
        };
        self.unread = unread;
        self.source.read_exact(buf).map_err(|source| match source.kind() {
            io::ErrorKind::UnexpectedEof => RunError::Truncated { path: self.path.clone(), detail: what.to_string() },
            _ => RunError::Io { path: self.path.clone(), source },
        })
    }

    fn corrupt(&self, detail: String) -> RunError {
        RunError::Corrupt { path: self.path.clone(), detail }
    }
}

/// Appends a record as a run's payload holds it: `varint(key_len)
/// varint(value_len) key value`.
#[inline]
pub(crate) fn encode_record(buf: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    put_varint(buf, key.len() as u64);
    put_varint(buf, value.len() as u64);
    crate::small_copy::extend(buf, key);
    crate::small_copy::extend(buf, value);
}

/// The record [`encode_record`] wrote at the start of `bytes`: its key, its
/// value and its encoded length; `None` if `bytes` does not start with one.
#[inline]
pub(crate) fn decode_record(bytes: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    let (key_len, a) = get_varint(bytes)?;
    let (value_len, b) = get_varint(bytes.get(a..)?)?;
    let key_start = a + b;
    let key_end = key_start.checked_add(usize::try_from(key_len).ok()?)?;
    let end = key_end.checked_add(usize::try_from(value_len).ok()?)?;
    Some((bytes.get(key_start..key_end)?, bytes.get(key_end..end)?, end))
}

#[inline]
fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Decodes a varint at the start of `bytes`: (value, bytes used), or None if
/// it is cut short or longer than a u64 allows.
#[inline]
fn get_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        // The tenth byte holds the 64th bit alone: more would be lost.
        if i == 9 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [Compression; 2] = [Compression::None, Compression::Lz4];

    fn write_run(path: &Path, records: &[(Vec<u8>, Vec<u8>)]) {
        write_run_with(path, records, Compression::None)
    }

    fn write_run_with(path: &Path, records: &[(Vec<u8>, Vec<u8>)], compression: Compression) {
        let mut w = RunWriter::create(path, compression).unwrap();
        append_run(&mut w, records);
        w.finish().unwrap();
    }

    fn append_run(w: &mut RunWriter, records: &[(Vec<u8>, Vec<u8>)]) -> RunRange {
        w.begin_run().unwrap();
        for (k, v) in records {
            w.append(k, v).unwrap();
        }
        w.end_run().unwrap()
    }

    type Records = Vec<(Vec<u8>, Vec<u8>)>;

    /// Every record `reader` has left.
    fn read_all(mut reader: RunReader) -> Result<Records, RunError> {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut out = Vec::new();
        while reader.next_into(&mut k, &mut v)? {
            out.push((k.clone(), v.clone()));
        }
        Ok(out)
    }

    fn read_range(path: &Path, range: RunRange) -> Result<Records, RunError> {
        read_all(RunReader::open_range(path, range)?)
    }

    #[test]
    fn runs_of_one_file_are_read_by_their_ranges() {
        for compression in BOTH {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("runs");
            let mut w = RunWriter::create(&path, compression).unwrap();
            let runs: Vec<_> = [0, 1, 2000, 7].into_iter().map(sample).collect();
            let ranges: Vec<RunRange> = runs.iter().map(|records| append_run(&mut w, records)).collect();
            w.finish().unwrap();
            assert_eq!(ranges.iter().map(|r| r.len).sum::<u64>(), std::fs::metadata(&path).unwrap().len());
            for (records, range) in runs.iter().zip(&ranges) {
                assert_eq!(&read_range(&path, *range).unwrap(), records, "{compression}, {range:?}");
            }
            // A range that ends early is a truncated run; one that runs into
            // the next run has bytes after its end marker.
            let run = ranges[2];
            let short = RunRange { len: run.len - 1, ..run };
            assert!(matches!(read_range(&path, short), Err(RunError::Truncated { .. })), "{compression}");
            let long = RunRange { len: run.len + 1, ..run };
            assert!(matches!(read_range(&path, long), Err(RunError::Corrupt { .. })), "{compression}");
            // A file cut inside the last run.
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
            assert!(matches!(read_range(&path, ranges[3]), Err(RunError::Truncated { .. })), "{compression}");
            assert_eq!(read_range(&path, ranges[2]).unwrap(), runs[2], "{compression}: runs before the cut are whole");
        }
    }

    #[test]
    fn a_run_held_in_memory_reads_as_from_its_file() {
        for compression in BOTH {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("run");
            let records = sample(2000);
            write_run_with(&path, &records, compression);
            let bytes = std::fs::read(&path).unwrap();
            let read = |bytes: &[u8]| read_all(RunReader::from_memory(std::sync::Arc::new(bytes.to_vec()), Path::new("server/attempt-3"))?);
            assert_eq!(read(&bytes).unwrap(), records, "{compression}");
            let cut = read(&bytes[..bytes.len() - 5]);
            assert!(matches!(&cut, Err(RunError::Truncated { path, .. }) if path == Path::new("server/attempt-3")), "{compression}: {cut:?}");
            let mut damaged = bytes.clone();
            damaged[bytes.len() / 2] ^= 1;
            assert!(matches!(read(&damaged), Err(RunError::Corrupt { .. })), "{compression}");
        }
    }

    fn read_run(path: &Path) -> Result<Records, RunError> {
        read_all(RunReader::open(path)?)
    }

    fn sample(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n).map(|i| (format!("key{i:08}").into_bytes(), vec![(i % 251) as u8; i % 300])).collect()
    }

    #[test]
    fn round_trips_empty_small_and_multi_block_runs() {
        let dir = tempfile::tempdir().unwrap();
        for compression in BOTH {
            for n in [0, 1, 5, 2000] {
                let path = dir.path().join(format!("run-{n}-{compression}"));
                let records = sample(n);
                write_run_with(&path, &records, compression);
                assert_eq!(read_run(&path).unwrap(), records, "{n} records, {compression}");
            }
        }
        // Binary keys and values, including empty ones and non-UTF-8 bytes.
        let path = dir.path().join("binary");
        let records = vec![(vec![], vec![]), (vec![0, 0xff], vec![0x80; 200]), (vec![0xff; 3], vec![])];
        write_run(&path, &records);
        assert_eq!(read_run(&path).unwrap(), records);
    }

    #[test]
    fn a_record_larger_than_a_block_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let records = vec![(b"a".to_vec(), vec![7u8; 3 * BLOCK_BYTES]), (b"b".to_vec(), b"x".to_vec())];
        write_run(&path, &records);
        assert_eq!(read_run(&path).unwrap(), records);
    }

    #[test]
    fn every_truncation_is_detected_as_truncated() {
        for compression in BOTH {
            every_truncation_is_detected(compression);
        }
    }

    fn every_truncation_is_detected(compression: Compression) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run");
        write_run_with(&path, &sample(3000), compression);
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut");
        // Every cut point in the first and last few hundred bytes, and a stride between.
        let points = (0..bytes.len()).filter(|&i| i < 300 || i + 300 > bytes.len() || i % 997 == 0);
        for len in points {
            std::fs::write(&cut, &bytes[..len]).unwrap();
            match read_run(&cut) {
                Err(RunError::Truncated { .. }) => {}
                other => panic!("{compression}: cut at {len} of {}: expected Truncated, got {other:?}", bytes.len()),
            }
        }
    }

    #[test]
    fn flipped_bytes_are_detected_as_corrupt() {
        for compression in BOTH {
            flipped_bytes_are_detected(compression);
        }
    }

    fn flipped_bytes_are_detected(compression: Compression) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run");
        write_run_with(&path, &sample(500), compression);
        let bytes = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad");
        // Skip length fields, whose corruption may legitimately read as a
        // truncation; every other byte must be caught as corrupt. Read from
        // memory: thousands of files of 80 KiB took 20 s (the file path is the
        // same reader, checked below).
        for i in (0..bytes.len()).step_by(7) {
            let mut copy = bytes.clone();
            copy[i] ^= 0x5a;
            match RunReader::from_memory(std::sync::Arc::new(copy), &bad).and_then(read_all) {
                Err(RunError::Corrupt { .. }) | Err(RunError::Truncated { .. }) => {}
                other => panic!("{compression}: byte {i} flipped: expected an error, got {other:?}"),
            }
        }
        let mut copy = bytes.clone();
        let first_payload_byte = HEADER_LEN + if compression == Compression::Lz4 { 12 } else { 8 };
        copy[first_payload_byte] ^= 1;
        std::fs::write(&bad, &copy).unwrap();
        assert!(matches!(read_run(&bad), Err(RunError::Corrupt { .. })));
        let mut copy = bytes;
        copy.push(0);
        std::fs::write(&bad, &copy).unwrap();
        assert!(matches!(read_run(&bad), Err(RunError::Corrupt { .. })), "trailing garbage");
    }

    #[test]
    fn a_file_that_is_not_a_run_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("text");
        std::fs::write(&path, "hello world, not a run").unwrap();
        assert!(matches!(read_run(&path), Err(RunError::Corrupt { .. })));
    }

    #[test]
    fn an_unfinished_writer_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run");
        let mut w = RunWriter::create(&path, Compression::Lz4).unwrap();
        w.begin_run().unwrap();
        w.append(b"k", b"v").unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [0, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(get_varint(&buf), Some((v, buf.len())), "{v}");
            assert_eq!(get_varint(&buf[..buf.len() - 1]), None, "{v} cut short");
        }
        let mut too_long = vec![0xff; 9];
        too_long.push(0x02);
        assert_eq!(get_varint(&too_long), None, "a 65th bit is not dropped silently");
    }

    #[test]
    fn a_compressed_block_claiming_more_than_lz4_can_hold_is_corrupt() {
        // A valid checksum over a raw length of 4 GiB - 1 for 3 bytes.
        let mut run = MAGIC.to_vec();
        run.extend_from_slice(&[VERSION, 1]);
        let (packed, raw_len) = ([0x10u8, b'a', 0], u32::MAX.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&raw_len);
        crc.update(&packed);
        run.extend_from_slice(&(packed.len() as u32).to_le_bytes());
        run.extend_from_slice(&crc.finalize().to_le_bytes());
        run.extend_from_slice(&raw_len);
        run.extend_from_slice(&packed);
        let read = read_all(RunReader::from_memory(std::sync::Arc::new(run), Path::new("peer")).unwrap());
        assert!(matches!(&read, Err(RunError::Corrupt { detail, .. }) if detail.contains("claims to hold")), "{read:?}");
    }

    /// Fuzz-style properties of the run decoder, which reads runs fetched
    /// from other workers: valid runs round trip; truncations read as
    /// truncated; damage never passes; garbage never panics.
    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn records() -> impl Strategy<Value = Records> {
            let bytes = |max| prop::collection::vec(any::<u8>(), 0..max);
            prop::collection::vec((bytes(40), bytes(200)), 0..120)
        }

        fn compression() -> impl Strategy<Value = Compression> {
            prop_oneof![Just(Compression::None), Just(Compression::Lz4)]
        }

        thread_local! {
            /// A directory per test thread for the runs it encodes (one per
            /// case cost a third of the time).
            static DIR: tempfile::TempDir = tempfile::tempdir().unwrap();
        }

        /// `records` as one run's bytes (written through a file, as a map
        /// writes them).
        fn encode(records: &Records, compression: Compression) -> Vec<u8> {
            DIR.with(|dir| {
                let path = dir.path().join("run");
                write_run_with(&path, records, compression);
                std::fs::read(&path).unwrap()
            })
        }

        fn decode(bytes: &[u8]) -> Result<Records, RunError> {
            read_all(RunReader::from_memory(std::sync::Arc::new(bytes.to_vec()), Path::new("peer"))?)
        }

        /// Where the run's 4-byte block lengths (and the end marker's zero)
        /// lie: damage there may read as a cut, anywhere else as corrupt.
        fn length_fields(run: &[u8], compression: Compression) -> Vec<std::ops::Range<usize>> {
            let mut fields = Vec::new();
            let mut at = HEADER_LEN;
            loop {
                let len = u32::from_le_bytes(run[at..at + 4].try_into().unwrap()) as usize;
                fields.push(at..at + 4);
                if len == 0 {
                    return fields;
                }
                at += 8 + if compression == Compression::Lz4 { 4 } else { 0 } + len;
            }
        }

        proptest! {
            // Fewer: each case writes its run to a file, as a map does.
            #![proptest_config(crate::test_rng::proptest_config(500))]

            #[test]
            fn valid_runs_round_trip(records in records(), compression in compression()) {
                prop_assert_eq!(decode(&encode(&records, compression)).unwrap(), records);
            }

            #[test]
            fn every_cut_is_truncated_and_damage_never_passes(
                records in records(),
                compression in compression(),
                cut in any::<prop::sample::Index>(),
                flip in any::<prop::sample::Index>(),
                bit in 0u8..8,
            ) {
                let run = encode(&records, compression);
                let cut = decode(&run[..cut.index(run.len())]);
                prop_assert!(matches!(cut, Err(RunError::Truncated { .. })), "{:?}", cut);
                let at = flip.index(run.len());
                let mut damaged = run.clone();
                damaged[at] ^= 1 << bit;
                let read = decode(&damaged);
                if records.is_empty() && at == HEADER_LEN - 1 {
                    // The compression flag of a run without blocks: it
                    // reads as the same empty run either way.
                    prop_assert!(matches!(&read, Ok(r) if r.is_empty()) || read.is_err(), "{:?}", read);
                } else if length_fields(&run, compression).iter().any(|field| field.contains(&at)) {
                    prop_assert!(read.is_err(), "damage at byte {} passed", at);
                } else {
                    prop_assert!(matches!(read, Err(RunError::Corrupt { .. })), "byte {}: {:?}", at, read);
                }
                let mut longer = run;
                longer.push(0);
                prop_assert!(matches!(decode(&longer), Err(RunError::Corrupt { .. })), "bytes after the end marker");
            }
        }

        proptest! {
            #![proptest_config(crate::test_rng::proptest_config(3000))]

            #[test]
            fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
                let _ = decode(&bytes);
            }

            #[test]
            fn garbage_after_a_valid_header_never_panics(flags in 0u8..2, body in prop::collection::vec(any::<u8>(), 0..600)) {
                let mut bytes = MAGIC.to_vec();
                bytes.extend_from_slice(&[VERSION, flags]);
                bytes.extend_from_slice(&body);
                let _ = decode(&bytes);
            }

            #[test]
            fn blocks_with_valid_checksums_and_garbage_inside_never_panic(
                flags in 0u8..2,
                blocks in prop::collection::vec((any::<u32>(), prop::collection::vec(any::<u8>(), 0..200)), 0..4),
            ) {
                // Past every checksum: the payload's records, or the LZ4
                // stream and the length it claims, are arbitrary.
                let mut bytes = MAGIC.to_vec();
                bytes.extend_from_slice(&[VERSION, flags]);
                for (raw_len, payload) in blocks.iter().filter(|(_, p)| !p.is_empty()) {
                    let mut crc = crc32fast::Hasher::new();
                    let raw_len = raw_len.to_le_bytes();
                    if flags == 1 {
                        crc.update(&raw_len);
                    }
                    crc.update(payload);
                    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                    bytes.extend_from_slice(&crc.finalize().to_le_bytes());
                    if flags == 1 {
                        bytes.extend_from_slice(&raw_len);
                    }
                    bytes.extend_from_slice(payload);
                }
                bytes.extend_from_slice(&0u32.to_le_bytes());
                let count = 0u64.to_le_bytes();
                bytes.extend_from_slice(&count);
                bytes.extend_from_slice(&crc32fast::hash(&count).to_le_bytes());
                let _ = decode(&bytes);
            }

            #[test]
            fn records_decode_as_encoded_and_garbage_never_panics(key in prop::collection::vec(any::<u8>(), 0..200), value in prop::collection::vec(any::<u8>(), 0..200), garbage in prop::collection::vec(any::<u8>(), 0..40)) {
                let mut encoded = Vec::new();
                encode_record(&mut encoded, &key, &value);
                let whole = encoded.len();
                encoded.extend_from_slice(&garbage);
                prop_assert_eq!(decode_record(&encoded), Some((&key[..], &value[..], whole)));
                prop_assert_eq!(decode_record(&encoded[..whole - 1]), None);
                if let Some((k, v, used)) = decode_record(&garbage) {
                    let mut again = Vec::new();
                    encode_record(&mut again, k, v);
                    prop_assert!(used <= garbage.len() && again.len() <= used);
                }
            }

            #[test]
            fn varints_decode_as_encoded(v: u64, garbage in prop::collection::vec(any::<u8>(), 0..12)) {
                let mut buf = Vec::new();
                put_varint(&mut buf, v);
                prop_assert_eq!(get_varint(&buf), Some((v, buf.len())));
                if let Some((decoded, used)) = get_varint(&garbage) {
                    prop_assert!(used <= 10 && used <= garbage.len());
                    let mut again = Vec::new();
                    put_varint(&mut again, decoded);
                    prop_assert!(again.len() <= used);
                }
            }
        }
    }
}
