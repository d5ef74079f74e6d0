//! Skipping bad records (Google MR section 4.6), for jobs that allow it
//! (`mr-master --skip-bad-records N`).
//!
//! A record that crashes or hangs the app whenever it is read stops the job
//! at the attempt bound, however many good records surround it. With
//! skipping allowed, a record that two attempts died on is skipped by every
//! later attempt of its task, counted (`skipped_records`) and listed in the
//! job summary; at most N records per task, beyond which the bound applies
//! as usual.
//!
//! How a record is found: an attempt that tracks its records keeps a
//! [`RecordCursor`], a small file in the job directory mapped into its
//! memory, saying which record the app is handling (set before each call,
//! cleared after). Stores to a shared mapping are in the page cache at
//! once, so the file tells the truth after the process dies in any way (an
//! abort, a segfault, `kill -9` of a hung attempt) short of the machine going
//! down. When an attempt ends without success the coordinator reads its
//! cursor ([`read_cursor`]): a record in the app's hands is blamed.
//!
//! - Reduce attempts always track, a key group being a record: two memory
//!   stores per key.
//! - A map gets a whole split, so its first attempts cannot say which line
//!   killed them. After two unsuccessful attempts a map task's next
//!   attempts call map once per line, tracking each (slower, and only for
//!   that task); then two more deaths on one line skip it.
//!
//! Records are named by a number that is the same in every attempt: a
//! map's line by its byte offset in the input file, a reduce's key group by
//! its position in the partition's sorted keys (maps being deterministic).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The cursor file's size: a header and the start of the record.
const CURSOR_BYTES: usize = 512;
const MAGIC: &[u8; 4] = b"MRC1";
/// Bytes of a record kept in the cursor to show it in the summary.
pub const PREVIEW_BYTES: usize = 200;
// Layout: magic, state (u32: 1 while the app handles the record), record
// id (u64), preview length (u32), preview.
const STATE_AT: usize = 4;
const ID_AT: usize = 8;
const PREVIEW_LEN_AT: usize = 16;
const PREVIEW_AT: usize = 20;
const IN_CALL: u32 = 1;

/// A record an attempt was handling when it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRecord {
    /// The record's number (a map's line: its byte offset in the input
    /// file; a reduce's key group: its position among the partition's keys).
    pub id: u64,
    /// Its first bytes (at most [`PREVIEW_BYTES`]).
    pub preview: Vec<u8>,
}

impl BadRecord {
    /// The record as the summary shows it: `line at byte 120 of in-3.txt:
    /// "text"` or `key 17 "text"`.
    pub fn describe(&self, map_input: Option<&str>) -> String {
        let mut preview = String::from_utf8_lossy(&self.preview).trim_end_matches(['\n', '\r']).to_string();
        if self.preview.len() >= PREVIEW_BYTES {
            preview.push_str("...");
        }
        match map_input {
            Some(file) => format!("line at byte {} of {file}: {preview:?}", self.id),
            None => format!("key {} {preview:?}", self.id),
        }
    }
}

/// What an attempt that tracks its records is told: where its cursor goes
/// and which records to skip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipPlan {
    /// The attempt's cursor file.
    pub cursor: std::path::PathBuf,
    /// Records to skip, by number, sorted.
    pub skip: Vec<u64>,
}

impl SkipPlan {
    /// Whether record `id` is to be skipped.
    pub fn skips(&self, id: u64) -> bool {
        self.skip.binary_search(&id).is_ok()
    }
}

/// The record an attempt's app is handling, kept in a file mapped into
/// memory (see the module docs).
pub struct RecordCursor {
    map: *mut u8,
}

// SAFETY: the mapping is owned by the cursor and only written through
// `&mut self`.
unsafe impl Send for RecordCursor {}

impl RecordCursor {
    /// Creates the cursor file at `path` (between records) and maps it.
    pub fn create(path: &Path) -> io::Result<RecordCursor> {
        let file = File::options().read(true).write(true).create(true).truncate(true).open(path)?;
        file.set_len(CURSOR_BYTES as u64)?;
        // SAFETY: a fresh shared mapping of a file we just sized; unmapped in Drop.
        let map =
            unsafe { libc::mmap(std::ptr::null_mut(), CURSOR_BYTES, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut cursor = RecordCursor { map: map.cast() };
        cursor.bytes()[..4].copy_from_slice(MAGIC);
        Ok(cursor)
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is CURSOR_BYTES long and lives as long as self.
        unsafe { std::slice::from_raw_parts_mut(self.map, CURSOR_BYTES) }
    }

    /// The app is about to handle record `id`, which starts with `record`.
    #[inline]
    pub fn enter(&mut self, id: u64, record: &[u8]) {
        let preview = &record[..record.len().min(PREVIEW_BYTES)];
        let bytes = self.bytes();
        bytes[ID_AT..ID_AT + 8].copy_from_slice(&id.to_le_bytes());
        bytes[PREVIEW_LEN_AT..PREVIEW_LEN_AT + 4].copy_from_slice(&(preview.len() as u32).to_le_bytes());
        bytes[PREVIEW_AT..PREVIEW_AT + preview.len()].copy_from_slice(preview);
        bytes[STATE_AT..STATE_AT + 4].copy_from_slice(&IN_CALL.to_le_bytes());
    }

    /// The app is done with the record.
    #[inline]
    pub fn leave(&mut self) {
        self.bytes()[STATE_AT..STATE_AT + 4].copy_from_slice(&0u32.to_le_bytes());
    }
}

impl Drop for RecordCursor {
    fn drop(&mut self) {
        // SAFETY: mapped in `create`, not used after this.
        unsafe { libc::munmap(self.map.cast(), CURSOR_BYTES) };
    }
}

/// The record whose handling an attempt's cursor file at `path` shows,
/// if the app was handling one when the attempt ended.
pub fn read_cursor(path: &Path) -> Option<BadRecord> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < CURSOR_BYTES || &bytes[..4] != MAGIC {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if u32_at(STATE_AT) != IN_CALL {
        return None;
    }
    let id = u64::from_le_bytes(bytes[ID_AT..ID_AT + 8].try_into().expect("8 bytes"));
    let len = (u32_at(PREVIEW_LEN_AT) as usize).min(PREVIEW_BYTES);
    Some(BadRecord { id, preview: bytes[PREVIEW_AT..PREVIEW_AT + len].to_vec() })
}

/// Calls `f` with each line of `contents` (with its newline) and the line's
/// byte offset in the file, given that `contents` starts at `offset`.
pub fn for_each_line<E>(contents: &[u8], offset: u64, mut f: impl FnMut(&[u8], u64) -> Result<(), E>) -> Result<(), E> {
    let mut start = 0;
    while start < contents.len() {
        let end = memchr_newline(&contents[start..]).map_or(contents.len(), |i| start + i + 1);
        f(&contents[start..end], offset + start as u64)?;
        start = end;
    }
    Ok(())
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_shows_the_record_in_hand_and_nothing_between_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map-0.attempt-3.cursor");
        let mut cursor = RecordCursor::create(&path).unwrap();
        assert_eq!(read_cursor(&path), None, "between records");
        cursor.enter(120, b"a bad line\n");
        assert_eq!(read_cursor(&path), Some(BadRecord { id: 120, preview: b"a bad line\n".to_vec() }));
        cursor.leave();
        assert_eq!(read_cursor(&path), None);
        let long = vec![b'x'; 1000];
        cursor.enter(7, &long);
        drop(cursor); // as if the process died: the file still says so
        let record = read_cursor(&path).unwrap();
        assert_eq!((record.id, record.preview.len()), (7, PREVIEW_BYTES));
        assert!(record.describe(None).starts_with("key 7 \"xxx") && record.describe(None).ends_with("...\""));
        assert_eq!(read_cursor(&dir.path().join("missing")), None);
        std::fs::write(&path, b"garbage").unwrap();
        assert_eq!(read_cursor(&path), None);
    }

    #[test]
    fn lines_come_with_their_file_offsets() {
        let mut seen = Vec::new();
        for_each_line(b"ab\n\ncd", 100, |line, at| {
            seen.push((line.to_vec(), at));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(seen, vec![(b"ab\n".to_vec(), 100), (b"\n".to_vec(), 103), (b"cd".to_vec(), 104)]);
        let record = BadRecord { id: 103, preview: b"boom\n".to_vec() };
        assert_eq!(record.describe(Some("in.txt")), "line at byte 103 of in.txt: \"boom\"");
    }

    #[test]
    fn plans_skip_exactly_their_records() {
        let plan = SkipPlan { cursor: "c".into(), skip: vec![3, 90] };
        assert!(plan.skips(3) && plan.skips(90) && !plan.skips(4));
    }
}
