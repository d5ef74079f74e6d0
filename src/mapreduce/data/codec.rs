//! Compressed inputs: which input files are compressed, and reading them
//! back as the text they hold.
//!
//! As in Hadoop, the codec is chosen by the file's extension (`.gz`,
//! `.zst`, `.bz2`, in any case), and a compressed file is never cut into
//! several map tasks: where a piece of it begins cannot be found without
//! reading everything before. Its map task reads it in *pieces* of whole
//! lines instead, calling the app's map once per piece, so that a map's
//! memory stays bounded by the piece size however large the file unpacks
//! (a "zip bomb" costs time, not memory; a line longer than
//! [`MAX_LINE_FACTOR`] pieces fails the attempt rather than growing without
//! end, as Hadoop's `linerecordreader.line.maxlength` bounds lines).
//! Concatenated streams (`cat a.gz
//! b.gz`, `pigz`, `pbzip2`, multi-frame zstd) read as one. Offsets are
//! positions in the unpacked text.

use std::io::{self, Read};
use std::path::Path;

/// How an input file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// gzip (`.gz`), any number of members.
    Gzip,
    /// Zstandard (`.zst`, `.zstd`), any number of frames.
    Zstd,
    /// bzip2 (`.bz2`), any number of streams.
    Bzip2,
}

impl Codec {
    /// The codec a file's name says it is compressed with, if any.
    pub fn of(path: &Path) -> Option<Codec> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "gz" => Some(Codec::Gzip),
            "zst" | "zstd" => Some(Codec::Zstd),
            "bz2" => Some(Codec::Bzip2),
            _ => None,
        }
    }

    /// The codec's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
            Codec::Bzip2 => "bzip2",
        }
    }

    /// `compressed`, unpacked as it is read. A damaged stream fails a read
    /// with an error that names the codec.
    pub fn decoder<'a>(self, compressed: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
        let reader: Box<dyn Read + 'a> = match self {
            Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(compressed)?),
            Codec::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(compressed)),
        };
        Ok(Box::new(Named { codec: self, inner: reader }))
    }
}

/// A decoder whose errors say which codec failed ("not gzip data" alone
/// does not tell a user which of their files, or why).
struct Named<'a> {
    codec: Codec,
    inner: Box<dyn Read + 'a>,
}

impl Read for Named<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::Interrupted => e,
            kind => io::Error::new(kind, format!("damaged {} data: {e}", self.codec.name())),
        })
    }
}

/// How many pieces long a line may be before reading it fails, unless the
/// caller says otherwise.
pub const MAX_LINE_FACTOR: usize = 4;

/// Reads `text` to its end in pieces of whole lines, each at least
/// `piece_bytes` long unless it is the last (a line longer than that is
/// one piece, up to `longest_line` bytes), calling `each(offset,
/// piece)` with the piece's position in the text. `buffer` holds the pieces
/// (kept for reuse). Returns how many bytes there were. An error from
/// `each` stops the reading.
pub fn for_each_piece<E>(
    text: &mut dyn Read,
    piece_bytes: usize,
    longest_line: usize,
    buffer: &mut Vec<u8>,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<u64, PieceError<E>> {
    let piece_bytes = piece_bytes.max(1);
    buffer.clear();
    let mut offset = 0u64;
    loop {
        // The first line end at or past the piece size ends the piece.
        let mut scanned = 0;
        let end = loop {
            let from = scanned.max(piece_bytes - 1);
            if let Some(newline) = buffer.get(from..).and_then(|rest| rest.iter().position(|&b| b == b'\n')) {
                break Some(from + newline + 1);
            }
            scanned = buffer.len();
            if scanned >= longest_line.max(piece_bytes) {
                return Err(PieceError::LineTooLong { offset, limit: scanned });
            }
            if read_some(text, buffer, piece_bytes).map_err(PieceError::Read)? == 0 {
                break None;
            }
        };
        let Some(end) = end else { break };
        each(offset, buffer.get(..end).unwrap_or_default()).map_err(PieceError::Stopped)?;
        offset += end as u64;
        buffer.drain(..end);
    }
    if !buffer.is_empty() {
        each(offset, buffer).map_err(PieceError::Stopped)?;
        offset += buffer.len() as u64;
        buffer.clear();
    }
    Ok(offset)
}

/// Why [`for_each_piece`] stopped early.
#[derive(Debug)]
pub enum PieceError<E> {
    /// Reading (unpacking) the text failed.
    Read(io::Error),
    /// The caller's function failed.
    Stopped(E),
    /// No line end within `limit` bytes from `offset`.
    LineTooLong {
        /// Where the line starts in the text.
        offset: u64,
        /// How far it was read without an end.
        limit: usize,
    },
}

impl<E> PieceError<E> {
    /// The error as an I/O error, or what `each` failed with.
    pub fn into_io(self) -> Result<io::Error, E> {
        match self {
            PieceError::Read(e) => Ok(e),
            PieceError::Stopped(e) => Err(e),
            PieceError::LineTooLong { offset, limit } => {
                Ok(io::Error::new(io::ErrorKind::InvalidData, format!("a line longer than {limit} bytes at offset {offset} of the text (unpacked, for a compressed input): more than a map task holds at once")))
            }
        }
    }
}

/// Appends up to `at_most` bytes read from `text`; 0 at its end.
fn read_some(text: &mut dyn Read, buffer: &mut Vec<u8>, at_most: usize) -> io::Result<usize> {
    let start = buffer.len();
    buffer.resize(start + at_most.min(1 << 20), 0);
    let read = loop {
        match text.read(buffer.get_mut(start..).unwrap_or_default()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    buffer.truncate(start + *read.as_ref().unwrap_or(&0));
    read
}

/// The whole text of `compressed` (for the one-process reference run,
/// which maps each file in one call).
pub fn decompress_all(codec: Codec, compressed: impl Read) -> io::Result<Vec<u8>> {
    let mut text = Vec::new();
    codec.decoder(compressed)?.read_to_end(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(text: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(text).unwrap();
        encoder.finish().unwrap()
    }

    fn compress(codec: Codec, text: &[u8]) -> Vec<u8> {
        match codec {
            Codec::Gzip => gzip(text),
            Codec::Zstd => zstd::stream::encode_all(text, 1).unwrap(),
            Codec::Bzip2 => {
                let mut encoder = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                encoder.write_all(text).unwrap();
                encoder.finish().unwrap()
            }
        }
    }

    fn pieces(text: &[u8], piece_bytes: usize) -> Vec<(u64, Vec<u8>)> {
        let mut found = Vec::new();
        let mut buffer = Vec::new();
        let total = for_each_piece::<()>(&mut &text[..], piece_bytes, piece_bytes * MAX_LINE_FACTOR, &mut buffer, |offset, piece| {
            found.push((offset, piece.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(total, text.len() as u64);
        found
    }

    #[test]
    fn codecs_are_chosen_by_extension_in_any_case() {
        assert_eq!(Codec::of(Path::new("a/b.txt.gz")), Some(Codec::Gzip));
        assert_eq!(Codec::of(Path::new("B.GZ")), Some(Codec::Gzip));
        assert_eq!(Codec::of(Path::new("x.zst")), Some(Codec::Zstd));
        assert_eq!(Codec::of(Path::new("x.zstd")), Some(Codec::Zstd));
        assert_eq!(Codec::of(Path::new("x.bz2")), Some(Codec::Bzip2));
        for plain in ["x.txt", "gz", "x.gz.txt", "x.", "x.tgz"] {
            assert_eq!(Codec::of(Path::new(plain)), None, "{plain}");
        }
    }

    #[test]
    fn every_codec_reads_back_concatenated_streams() {
        for codec in [Codec::Gzip, Codec::Zstd, Codec::Bzip2] {
            let mut both = compress(codec, b"first part\n");
            both.extend(compress(codec, b"second part\n"));
            assert_eq!(decompress_all(codec, &both[..]).unwrap(), b"first part\nsecond part\n", "{codec:?}");
        }
    }

    #[test]
    fn damaged_data_is_an_error_naming_the_codec() {
        for codec in [Codec::Gzip, Codec::Zstd, Codec::Bzip2] {
            let mut data = compress(codec, &b"some text that compresses\n".repeat(1000));
            let middle = data.len() / 2;
            data.truncate(middle);
            let err = decompress_all(codec, &data[..]).unwrap_err();
            assert!(err.to_string().starts_with(&format!("damaged {} data", codec.name())), "{codec:?}: {err}");
        }
    }

    #[test]
    fn pieces_are_whole_lines_at_least_the_piece_size_and_cover_the_text() {
        let text = b"aa\nbbbb\nc\n\ndddddddddd\ne";
        let got = pieces(text, 4);
        assert_eq!(got, [(0, b"aa\nbbbb\n".to_vec()), (8, b"c\n\ndddddddddd\n".to_vec()), (22, b"e".to_vec())]);
        assert_eq!(pieces(text, 1000), [(0, text.to_vec())]);
        assert_eq!(pieces(b"", 4), []);
        assert_eq!(pieces(b"no newline at all", 5), [(0, b"no newline at all".to_vec())]);
    }

    #[test]
    fn pieces_of_a_large_text_join_up_to_it() {
        let text: Vec<u8> = (0..200_000u32).flat_map(|i| format!("line {i} {}\n", "x".repeat((i % 97) as usize)).into_bytes()).collect();
        let got = pieces(&text, 64 * 1024);
        assert!(got.len() > 10);
        let mut joined = Vec::new();
        for (offset, piece) in &got {
            assert_eq!(*offset, joined.len() as u64);
            assert!(piece.ends_with(b"\n"));
            joined.extend_from_slice(piece);
        }
        assert_eq!(joined, text);
    }

    #[test]
    fn a_line_without_end_fails_instead_of_growing_without_bound() {
        let mut endless = std::io::repeat(b'x');
        let mut buffer = Vec::new();
        let result = for_each_piece::<()>(&mut endless, 1000, 4000, &mut buffer, |_, _| Ok(()));
        assert!(matches!(result, Err(PieceError::LineTooLong { offset: 0, limit }) if limit >= 4000), "{result:?}");
        assert!(buffer.capacity() < 4000 + (1 << 20) + 1000);
        let mut reader = (&b"ok\n"[..]).chain(std::io::repeat(b'y'));
        let err = for_each_piece::<()>(&mut reader, 10, 40, &mut buffer, |_, _| Ok(())).unwrap_err();
        let message = err.into_io().unwrap().to_string();
        assert!(
            message.starts_with("a line longer than 4")
                && message.ends_with("bytes at offset 0 of the text (unpacked, for a compressed input): more than a map task holds at once"),
            "{message}"
        );
    }

    #[test]
    fn an_error_from_the_caller_stops_the_reading() {
        let mut buffer = Vec::new();
        let mut calls = 0;
        let result = for_each_piece(&mut &b"a\nb\nc\n"[..], 1, 4, &mut buffer, |_, _| {
            calls += 1;
            Err("stop")
        });
        assert!(matches!(result, Err(PieceError::Stopped("stop"))));
        assert_eq!(calls, 1);
    }
}
