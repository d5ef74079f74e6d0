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
//! and copied into a buffer ([`read_split`]) otherwise.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use crate::mapped_input::MappedInput;
use crate::rpc::{InputFile, InputSplit};

/// How much larger than `split_bytes` a file (or its last split) may be
/// and still be one split, as in Hadoop (`SPLIT_SLOP`): a file of 65 MiB
/// with 64 MiB splits is one task, not a 64 MiB task and a 1 MiB one.
const SPLIT_SLOP: f64 = 1.1;

/// Cuts the inputs into map tasks of about `split_bytes` each; 0 means one
/// task per file (the lab's behaviour). Every file, even an empty one, gives
/// at least one task, in input order.
pub fn plan_splits(inputs: &[InputFile], split_bytes: u64) -> Vec<InputSplit> {
    let mut splits = Vec::new();
    for file in inputs {
        if split_bytes == 0 || file.size as f64 <= split_bytes as f64 * SPLIT_SLOP {
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
/// returns the file offset at which the lines begin.
pub fn read_split_into(split: &InputSplit, contents: &mut Vec<u8>) -> io::Result<u64> {
    contents.clear();
    let mut file = File::open(&split.file.path)?;
    let begin = if split.start == 0 { 0 } else { line_start_at_or_after(&mut file, split.start)? };
    let Some(end) = split.end else {
        file.seek(SeekFrom::Start(begin))?;
        contents.reserve(split.file.size.saturating_sub(begin) as usize);
        file.read_to_end(contents)?;
        return Ok(begin);
    };
    if begin >= end {
        // No line starts in this split (a line longer than the split).
        return Ok(begin);
    }
    file.seek(SeekFrom::Start(begin))?;
    contents.reserve((end - begin) as usize);
    (&mut file).take(end - begin).read_to_end(contents)?;
    if contents.len() as u64 == end - begin && contents.last() != Some(&b'\n') {
        finish_line(&mut file, contents)?;
    }
    Ok(begin)
}

/// A split's lines, read in place from its file mapped into memory.
pub struct MappedSplit {
    input: MappedInput,
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
        self.begin as u64
    }

    /// True if the file shrank while mapped and the bytes read past its new
    /// end were zeros, not the file: the split must be read again.
    pub fn changed(&self) -> bool {
        self.input.changed()
    }
}

/// Maps `split`'s file into memory and finds the lines the split owns, by
/// the same rule as [`read_split`], without copying them. `None` if the
/// file cannot be mapped (see [`MappedInput::open`]): read it instead.
pub fn map_split(split: &InputSplit) -> io::Result<Option<MappedSplit>> {
    let file = File::open(&split.file.path)?;
    let len = file.metadata()?.len();
    let Some(input) = MappedInput::open(&file, len) else {
        return Ok(None);
    };
    let data = input.bytes();
    let clamp = |offset: u64| usize::try_from(offset).map_or(data.len(), |o| o.min(data.len()));
    let start = clamp(split.start);
    let begin = if start == 0 { 0 } else { past_newline(data, start - 1) };
    let end = match split.end.map(clamp) {
        None => data.len(),
        // No line starts in the split (a line longer than the split).
        Some(end) if begin >= end => begin,
        Some(end) => past_newline(data, end - 1),
    };
    Ok(Some(MappedSplit { input, begin, end }))
}

/// Just past the first newline at or after `from`, or the end of `data`.
fn past_newline(data: &[u8], from: usize) -> usize {
    data[from..].iter().position(|&b| b == b'\n').map_or(data.len(), |i| from + i + 1)
}

/// The offset of the first line that starts at or after `offset` (> 0):
/// just past the first newline at or after `offset - 1`, or the end of file.
fn line_start_at_or_after(file: &mut File, offset: u64) -> io::Result<u64> {
    file.seek(SeekFrom::Start(offset - 1))?;
    let mut position = offset - 1;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            return Ok(position);
        }
        if let Some(i) = chunk[..n].iter().position(|&b| b == b'\n') {
            return Ok(position + i as u64 + 1);
        }
        position += n as u64;
    }
}

/// Appends the rest of the current line (through its newline, or to the end
/// of the file).
fn finish_line(file: &mut File, contents: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        if let Some(i) = chunk[..n].iter().position(|&b| b == b'\n') {
            contents.extend_from_slice(&chunk[..=i]);
            return Ok(());
        }
        contents.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn file(name: &str, size: u64) -> InputFile {
        InputFile { name: name.to_string(), path: PathBuf::from(format!("/in/{name}")), size }
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
            let input = InputFile { name: "f".into(), path: path.clone(), size: text.len() as u64 };
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
                assert_eq!(
                    String::from_utf8_lossy(&joined),
                    String::from_utf8_lossy(text),
                    "file {t}, split size {split_bytes}: {splits:?}"
                );
            }
        }
    }

    #[test]
    fn a_split_starts_at_a_line_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "aaaa\nbbbb\ncccc\n").unwrap();
        let file = InputFile { name: "f".into(), path, size: 15 };
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
