//! Input splits: cutting input files into map tasks, and reading one.
//!
//! The master plans splits ([`plan_splits`]) from file sizes alone; a worker
//! reads its split ([`read_split`]) by Hadoop's rule: a split owns every
//! line that *starts* in its byte range. So it skips the partial line at its
//! start (the previous split owns it) and finishes the line that crosses its
//! end. No line is cut, each is read by exactly one split, and splitting
//! changes no result (apps that need whole documents, like the indexer,
//! still see every line under the document's name). A split is read in
//! place from its file mapped into memory ([`map_split`]) where it can be,
//! and copied into a buffer by ranges from its input's store
//! ([`read_split`], [`crate::input_store`]) otherwise.

use std::io;

use crate::codec::{for_each_piece, Codec, PieceError};
use crate::input_store::{open_unchanged, store_for, InputStore, RangeReader};
use crate::mapped_input::{self, MappedInput};
use crate::rpc::{InputFile, InputSplit};

/// How much larger than `split_bytes` a file (or its last split) may be
/// and still be one split, as in Hadoop (`SPLIT_SLOP`): a file of 65 MiB
/// with 64 MiB splits is one task, not a 64 MiB task and a 1 MiB one.
const SPLIT_SLOP: f64 = 1.1;

/// Cuts the inputs into map tasks of about `split_bytes` each; 0 means one
/// task per file (the lab's behaviour). Every file, even an empty one, gives
/// at least one task, in input order. A compressed file is one task
/// whatever its size ([`crate::codec`]).
pub fn plan_splits(inputs: &[InputFile], split_bytes: u64) -> Vec<InputSplit> {
    let mut splits = Vec::new();
    for file in inputs {
        let whole = split_bytes == 0 || Codec::of(&file.path).is_some();
        if whole || file.size as f64 <= split_bytes as f64 * SPLIT_SLOP {
            splits.push(InputSplit::whole(file.clone()));
            continue;
        }
        let mut start = 0;
        while (file.size - start) as f64 > split_bytes as f64 * SPLIT_SLOP {
            splits.push(InputSplit { file: file.clone(), start, end: Some(start + split_bytes) });
            start += split_bytes;
        }
        // The last split reads to the end of the file.
        splits.push(InputSplit { file: file.clone(), start, end: None });
    }
    splits
}

/// Reads the lines `split` owns; returns them and the file offset at
/// which they begin.
pub fn read_split(split: &InputSplit) -> io::Result<(u64, Vec<u8>)> {
    let mut contents = Vec::new();
    let offset = read_split_into(split, &mut contents)?;
    Ok((offset, contents))
}

/// [`read_split`] into `contents` (cleared first), reusing its memory;
/// returns the file offset at which the lines begin. The split is read
/// from its input's store ([`store_for`]) by ranges: one of the split,
/// from the byte before it (does a line start at its start?) through
/// [`LINE_SLACK`] past its end (the line that crosses it), and more only
/// for a line longer than that.
pub fn read_split_into(split: &InputSplit, contents: &mut Vec<u8>) -> io::Result<u64> {
    contents.clear();
    let size = split.file.size;
    let from = split.start.min(size).saturating_sub(1);
    // Read straight into `contents`, trimmed to the lines at the end: no
    // second buffer of the split's size.
    let mut window = Window { store: store_for(&split.file.path), input: &split.file, from, data: contents };
    window.read_to(split.end.map_or(size, |end| end.saturating_add(LINE_SLACK)))?;
    let begin = if split.start == 0 { 0 } else { window.past_newline_from(from)? };
    let stop = match split.end.map(|end| end.min(size)) {
        None => {
            window.read_to(size)?;
            size
        }
        // No line starts in this split (a line longer than the split).
        Some(end) if begin >= end => begin,
        Some(end) => window.past_newline_from((end - 1).max(begin))?,
    };
    window.keep(begin, stop);
    Ok(begin)
}

/// Bytes `from..from + data.len()` of an input, read on as needed from its
/// store, each read checking the input is as planned.
struct Window<'a> {
    store: &'a dyn InputStore,
    input: &'a InputFile,
    from: u64,
    data: &'a mut Vec<u8>,
}

impl Window<'_> {
    /// Reads on to offset `to` (or the input's planned end). An input
    /// shorter than planned has changed since.
    fn read_to(&mut self, to: u64) -> io::Result<()> {
        let (have, to) = (self.from + self.data.len() as u64, to.min(self.input.size));
        if to <= have {
            return Ok(());
        }
        self.store.read_range(self.input, have..to, self.data)?;
        if self.from + (self.data.len() as u64) < to {
            return Err(io::Error::other(format!("changed since the job was planned: shorter than its {} bytes", self.input.size)));
        }
        Ok(())
    }

    /// Just past the first newline at or after offset `at`; the input's
    /// size if there is none.
    fn past_newline_from(&mut self, at: u64) -> io::Result<u64> {
        let mut searched = at;
        loop {
            let have = self.from + self.data.len() as u64;
            let unsearched = self.data.get((searched - self.from) as usize..).unwrap_or_default();
            if let Some(i) = unsearched.iter().position(|&b| b == b'\n') {
                return Ok(searched + i as u64 + 1);
            }
            if have >= self.input.size {
                return Ok(self.input.size);
            }
            searched = have;
            self.read_to(have + LINE_SLACK)?;
        }
    }

    /// Keeps bytes `begin..end` of the input (read already), and nothing else.
    fn keep(self, begin: u64, end: u64) {
        let (begin, end) = ((begin - self.from) as usize, (end - self.from) as usize);
        self.data.truncate(end.max(begin));
        self.data.drain(..begin.min(self.data.len()));
    }
}

/// The byte range of the lines `split` owns, `(begin, end)`, by the same
/// rule as [`read_split`]: what the coordinator sends a worker that cannot
/// read the file, and what a map reads in pieces
/// ([`read_split_in_pieces`]). Found by ranged reads from the input's
/// store, which check that it is as planned.
pub fn owned_range(split: &InputSplit) -> io::Result<(u64, u64)> {
    let (store, input) = (store_for(&split.file.path), &split.file);
    store.check_unchanged(input)?;
    let size = input.size;
    let begin = if split.start == 0 { 0 } else { line_start_at_or_after(store, input, split.start)? };
    let end = match split.end {
        None => size,
        // No line starts in the split (a line longer than the split).
        Some(end) if begin >= end => begin,
        Some(end) => line_start_at_or_after(store, input, end)?,
    };
    Ok((begin, end.max(begin)))
}

/// The bytes of the input a split's lines may span: what reading it whole
/// takes, before the line that crosses its end is cut.
pub fn split_span(split: &InputSplit) -> u64 {
    let size = split.file.size;
    let end = split.end.map_or(size, |end| end.saturating_add(LINE_SLACK).min(size));
    end.saturating_sub(split.start.min(size))
}

/// Reads the lines `split` owns in pieces of about `piece_bytes` (whole
/// lines: each ends at the first line end past the size), calling
/// `each(file offset, piece)`; for a split too large to hold whole in a
/// task's memory. Returns the bytes read. A line longer than
/// `longest_line` is an error.
pub fn read_split_in_pieces<E>(
    split: &InputSplit,
    piece_bytes: usize,
    longest_line: usize,
    buffer: &mut Vec<u8>,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<u64, PieceError<E>> {
    let store = store_for(&split.file.path);
    let (begin, end) = owned_range(split).map_err(PieceError::Read)?;
    let mut reader = RangeReader::new(store, &split.file, begin..end, piece_bytes);
    let read = for_each_piece(&mut reader, piece_bytes, longest_line, buffer, |at, piece| each(begin + at, piece)).map_err(|e| match e {
        // Where in the file, not in the split's lines.
        PieceError::LineTooLong { offset, limit } => PieceError::LineTooLong { offset: begin + offset, limit },
        other => other,
    })?;
    if read != end - begin {
        return Err(PieceError::Read(io::Error::other("the file shrank while the map read it")));
    }
    Ok(read)
}

/// A split's lines, read in place from its file mapped into memory.
pub struct MappedSplit {
    input: MappedInput,
    /// Where the mapping starts in the file.
    base: u64,
    /// The lines, as offsets into the mapping.
    begin: usize,
    end: usize,
}

impl MappedSplit {
    /// The lines the split owns (as [`read_split`] returns them).
    pub fn bytes(&self) -> &[u8] {
        &self.input.bytes()[self.begin..self.end]
    }

    /// The file offset at which the lines begin.
    pub fn offset(&self) -> u64 {
        self.base + self.begin as u64
    }

    /// True if the file shrank while mapped and the bytes read past its new
    /// end were zeros, not the file: the split must be read again.
    pub fn changed(&self) -> bool {
        self.input.changed()
    }
}

/// How far past its end a split's mapping reaches, for the line that
/// crosses the end; a longer line makes the split be read instead.
const LINE_SLACK: u64 = 1 << 20;

/// Maps the part of `split`'s file that holds the split's lines and finds
/// them, by the same rule as [`read_split`], without copying them. `None`
/// if the file cannot be mapped ([`MappedInput::open`]) or a line at the
/// split's edges is longer than [`LINE_SLACK`]: read the split instead.
pub fn map_split(split: &InputSplit) -> io::Result<Option<MappedSplit>> {
    let file = open_unchanged(&split.file)?;
    let file_len = file.metadata()?.len();
    let start = split.start.min(file_len);
    // From the byte before the split (is a line starting at `start`?)
    // through the line that crosses its end.
    let from = start.saturating_sub(1);
    let to = split.end.map_or(file_len, |end| end.saturating_add(LINE_SLACK).min(file_len));
    let base = from / mapped_input::ALIGNMENT * mapped_input::ALIGNMENT;
    let Some(input) = MappedInput::open(&file, base, to - base) else {
        return Ok(None);
    };
    let data = input.bytes();
    let reaches_file_end = to == file_len;
    // Just past the first newline at or after file offset `at`; the end of
    // the data if there is none and the data is the rest of the file.
    let past_newline = |at: u64| {
        let from = (at - base) as usize;
        match data[from..].iter().position(|&b| b == b'\n') {
            Some(i) => Some(from + i + 1),
            None => reaches_file_end.then_some(data.len()),
        }
    };
    let Some(begin) = (if start == 0 { Some(0) } else { past_newline(start - 1) }) else {
        return Ok(None);
    };
    let end = match split.end.map(|end| end.min(file_len)) {
        None => data.len(),
        // No line starts in the split (a line longer than the split).
        Some(end) if base + begin as u64 >= end => begin,
        Some(end) => match past_newline(end - 1) {
            Some(end) => end,
            None => return Ok(None),
        },
    };
    Ok(Some(MappedSplit { input, base, begin, end }))
}

/// The offset of the first line that starts at or after `offset` (> 0):
/// just past the first newline at or after `offset - 1`, or the end of
/// the input.
fn line_start_at_or_after(store: &dyn InputStore, input: &InputFile, offset: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut position = offset - 1;
    let mut chunk = Vec::new();
    loop {
        chunk.clear();
        store.read_range(input, position..position.saturating_add(CHUNK), &mut chunk)?;
        if chunk.is_empty() {
            return Ok(position);
        }
        if let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            return Ok(position + i as u64 + 1);
        }
        position += chunk.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn file(name: &str, size: u64) -> InputFile {
        InputFile { name: name.to_string(), path: PathBuf::from(format!("/in/{name}")), size, modified: None }
    }

    #[test]
    fn small_files_stay_whole_and_large_ones_are_cut_with_slop() {
        let inputs = [file("empty", 0), file("small", 100), file("slop", 110), file("big", 250)];
        let splits = plan_splits(&inputs, 100);
        let shape: Vec<_> = splits.iter().map(|s| (s.file.name.as_str(), s.start, s.end)).collect();
        assert_eq!(
            shape,
            [("empty", 0, None), ("small", 0, None), ("slop", 0, None), ("big", 0, Some(100)), ("big", 100, Some(200)), ("big", 200, None)]
        );
        // 0 means one task per file.
        assert_eq!(plan_splits(&inputs, 0).len(), 4);
        // The last split absorbs a remainder within the slop.
        let shape: Vec<_> = plan_splits(&[file("f", 305)], 100).iter().map(|s| (s.start, s.end)).collect();
        assert_eq!(shape, [(0, Some(100)), (100, Some(200)), (200, None)]);
    }

    /// Every split size from 1 byte up must partition the file's lines exactly.
    #[test]
    fn splits_read_every_line_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let texts: [&[u8]; 5] = [
            b"alpha beta\ngamma\n\nlongest line of them all here\nx\nno newline at end",
            b"ends with newline\n",
            b"\n\n\n",
            b"one line without newline",
            b"",
        ];
        for (t, text) in texts.iter().enumerate() {
            let path = dir.path().join(format!("f{t}"));
            std::fs::write(&path, text).unwrap();
            let input = InputFile { name: "f".into(), path: path.clone(), size: text.len() as u64, modified: None };
            for split_bytes in 1..=text.len() as u64 + 2 {
                let mut joined = Vec::new();
                let splits = plan_splits(std::slice::from_ref(&input), split_bytes);
                for split in &splits {
                    let (offset, part) = read_split(split).unwrap();
                    assert_eq!(offset, joined.len() as u64, "file {t}, split size {split_bytes}: {split:?}");
                    match map_split(split).unwrap() {
                        Some(mapped) => assert_eq!((mapped.offset(), mapped.bytes()), (offset, &part[..]), "mapped, file {t}: {split:?}"),
                        None => assert!(text.is_empty(), "file {t} was not mapped"),
                    }
                    joined.extend_from_slice(&part);
                    // Whole lines: only a split that reaches the end of the
                    // file may end without a newline.
                    assert!(
                        part.is_empty() || part.ends_with(b"\n") || joined.len() == text.len(),
                        "file {t}, split size {split_bytes}: {split:?} ends mid-line"
                    );
                }
                assert_eq!(String::from_utf8_lossy(&joined), String::from_utf8_lossy(text), "file {t}, split size {split_bytes}: {splits:?}");
            }
        }
    }

    #[test]
    fn mapped_splits_deep_in_a_file_equal_read_ones_and_long_lines_fall_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut text = Vec::new();
        for i in 0..60_000u32 {
            text.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, (i % 97) as usize));
            text.push(b'\n');
        }
        // A line that reaches more than LINE_SLACK past the ends of the
        // splits it crosses.
        let long_line = text.len() as u64..text.len() as u64 + 3 * LINE_SLACK;
        text.extend(std::iter::repeat_n(b'z', 3 * LINE_SLACK as usize));
        text.push(b'\n');
        text.extend_from_slice(b"tail\n");
        std::fs::write(&path, &text).unwrap();
        let input = InputFile { name: "f".into(), path, size: text.len() as u64, modified: None };
        let mut fell_back = 0;
        for split in plan_splits(&[input], 100_000) {
            let (offset, read) = read_split(&split).unwrap();
            match map_split(&split).unwrap() {
                Some(mapped) => assert_eq!((mapped.offset(), mapped.bytes()), (offset, &read[..]), "{split:?}"),
                None => {
                    fell_back += 1;
                    let end = split.end.expect("the last split reaches the end of the file");
                    assert!(end > long_line.start && split.start < long_line.end, "only splits the long line crosses: {split:?}");
                }
            }
        }
        assert!(fell_back > 0);
    }

    #[test]
    fn a_file_changed_since_planning_is_refused_by_both_readers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "aaaa\nbbbb\n").unwrap();
        let planned = crate::inputs::resolve_inputs(std::slice::from_ref(&path)).unwrap().remove(0);
        let split = InputSplit::whole(planned.clone());
        assert!(read_split(&split).is_ok() && map_split(&split).is_ok());
        // Same size, later modification time.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_modified(planned.modified.unwrap() + std::time::Duration::from_secs(5)).unwrap();
        for result in [read_split(&split).map(|_| ()), map_split(&split).map(|_| ())] {
            let error = result.expect_err("a modified file must be refused").to_string();
            assert_eq!(error, "changed since the job was planned: modified again (same size)");
        }
        // Longer.
        std::fs::write(&path, "aaaa\nbbbb\ncc\n").unwrap();
        let error = read_split(&split).expect_err("a grown file must be refused").to_string();
        assert_eq!(error, "changed since the job was planned: 10 bytes then, 13 now");
    }

    #[test]
    fn owned_ranges_hold_what_read_split_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        let text: String = (0..2000).map(|i| format!("line {i} {}\n", "x".repeat(i % 37))).collect();
        std::fs::write(&path, &text).unwrap();
        let input = InputFile { name: "in.txt".into(), path: path.clone(), size: text.len() as u64, modified: None };
        for split in plan_splits(std::slice::from_ref(&input), 997) {
            let (offset, lines) = read_split(&split).unwrap();
            let (begin, end) = owned_range(&split).unwrap();
            assert_eq!((begin, &text.as_bytes()[begin as usize..end as usize]), (offset, &lines[..]), "{split}");
        }
    }

    #[test]
    fn a_split_read_in_pieces_is_the_split_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        // Lines of 0 to 300 bytes, some empty, and no newline at the end.
        let mut text: String = (0..1500).map(|i| format!("{}\n", "y".repeat((i * 37) % 301))).collect();
        text.push_str("last");
        std::fs::write(&path, &text).unwrap();
        let input = InputFile { name: "in.txt".into(), path, size: text.len() as u64, modified: None };
        for split_bytes in [0, 1000, 4096, 65_536] {
            for split in plan_splits(std::slice::from_ref(&input), split_bytes) {
                let (offset, whole) = read_split(&split).unwrap();
                for piece_bytes in [1, 7, 500, 1 << 20] {
                    let (mut joined, mut next) = (Vec::new(), offset);
                    let read = read_split_in_pieces::<()>(&split, piece_bytes, 4096, &mut Vec::new(), |at, piece| {
                        assert_eq!(at, next, "{split}: a piece starts where the last ended");
                        assert!(piece.ends_with(b"\n") || at + piece.len() as u64 == input.size, "{split}: pieces are whole lines");
                        next += piece.len() as u64;
                        joined.extend_from_slice(piece);
                        Ok(())
                    });
                    assert_eq!(read.ok(), Some(whole.len() as u64), "{split} in pieces of {piece_bytes}");
                    assert_eq!(joined, whole, "{split} in pieces of {piece_bytes}");
                }
            }
        }
        // A line longer than the limit is refused, at an offset in the file
        // (past the split's start), not in the split.
        let split = InputSplit { file: input.clone(), start: 1000, end: None };
        let error = read_split_in_pieces::<()>(&split, 10, 100, &mut Vec::new(), |_, _| Ok(())).unwrap_err();
        let begin = owned_range(&split).unwrap().0;
        assert!(matches!(error, PieceError::LineTooLong { offset, .. } if offset >= begin && offset < input.size), "{error:?}");
    }

    #[test]
    fn a_split_starts_at_a_line_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "aaaa\nbbbb\ncccc\n").unwrap();
        let file = InputFile { name: "f".into(), path, size: 15, modified: None };
        let read = |start, end| {
            let split = InputSplit { file: file.clone(), start, end };
            let read = String::from_utf8(read_split(&split).unwrap().1).unwrap();
            let mapped = map_split(&split).unwrap().expect("mapped");
            assert_eq!(mapped.bytes(), read.as_bytes(), "mapped {start}..{end:?}");
            read
        };
        // A split starting mid-line skips to the next line; one ending
        // mid-line finishes it.
        assert_eq!(read(0, Some(2)), "aaaa\n");
        assert_eq!(read(2, Some(7)), "bbbb\n");
        // Starting right after a newline: that line is ours.
        assert_eq!(read(5, Some(6)), "bbbb\n");
        // No line starts in 6..9 (bbbb starts at 5, cccc at 10).
        assert_eq!(read(6, Some(9)), "");
        assert_eq!(read(6, Some(11)), "cccc\n");
        assert_eq!(read(11, None), "");
        assert_eq!(read(10, None), "cccc\n");
    }
}
